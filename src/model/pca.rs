//! PCA reconstruction error: the part of a standardised vector that the device's normal
//! relations between features do not explain, each residual in units of its training spread.

use linfa::traits::Fit;
use linfa::DatasetBase;
use linfa_reduction::Pca;
use ndarray::Array2;
use serde::{Deserialize, Serialize};

use super::{Matrix, ModelError};

/// Share of the variance the kept components must explain.
const EXPLAINED: f64 = 0.95;

/// A fitted PCA, stored as plain numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PcaBody {
    pub mean: Vec<f64>,
    /// k × d, orthonormal rows.
    pub components: Matrix,
    /// Spread of each feature's residual on the training data: a residual is judged against
    /// what is usual for that feature, so well-explained features (tight relations) weigh most.
    pub residual_std: Vec<f64>,
}

impl PcaBody {
    /// Fits on standardised rows (n × d).
    pub fn fit(x: &Array2<f64>) -> Result<PcaBody, ModelError> {
        let d = x.ncols();
        let full = Pca::params(d.saturating_sub(1).max(1))
            .fit(&DatasetBase::from(x.clone()))
            .map_err(|e| ModelError::Fit(e.to_string()))?;
        let var = full.explained_variance();
        let total: f64 = var.sum();
        let mut k = 1;
        let mut acc = 0.0;
        for (i, v) in var.iter().enumerate() {
            acc += v;
            if acc >= EXPLAINED * total {
                k = i + 1;
                break;
            }
            k = i + 1;
        }
        let comps = full.components();
        let components = Matrix::from_rows(k, d, comps.rows().into_iter().take(k).flat_map(|r| r.to_vec()).collect());
        let mut body = PcaBody { mean: full.mean().to_vec(), components, residual_std: vec![1.0; d] };
        let mut sq = vec![0.0; d];
        for row in x.rows() {
            let r = body.residual(row.as_slice().unwrap_or(&[]));
            for (s, v) in sq.iter_mut().zip(&r) {
                *s += v * v;
            }
        }
        let n = x.nrows().max(1) as f64;
        body.residual_std = sq.iter().map(|s| (s / n).sqrt().max(1e-3)).collect();
        Ok(body)
    }

    fn residual(&self, z: &[f64]) -> Vec<f64> {
        let centred: Vec<f64> = z.iter().zip(&self.mean).map(|(a, m)| a - m).collect();
        let mut recon = vec![0.0; centred.len()];
        for c in 0..self.components.rows {
            let row = self.components.row(c);
            let proj: f64 = row.iter().zip(&centred).map(|(a, b)| a * b).sum();
            for (r, a) in recon.iter_mut().zip(row) {
                *r += proj * a;
            }
        }
        centred.iter().zip(&recon).map(|(c, r)| c - r).collect()
    }

    /// Mean squared standardised residual, and each feature's share of it.
    pub fn score(&self, z: &[f64]) -> (f64, Vec<f64>) {
        let parts: Vec<f64> = self.residual(z).iter().zip(&self.residual_std).map(|(r, s)| (r / s) * (r / s)).collect();
        (parts.iter().sum::<f64>() / parts.len().max(1) as f64, parts)
    }
}
