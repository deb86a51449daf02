//! PCA reconstruction error: the part of a standardised vector that the device's normal
//! relations between features do not explain, each residual in units of its training spread.

use linfa::traits::Fit;
use linfa::DatasetBase;
use linfa_reduction::Pca;
use ndarray::Array2;
use serde::{Deserialize, Serialize};

use super::{Matrix, ModelError};

/// A fitted PCA, stored as plain numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PcaBody {
    pub mean: Vec<f64>,
    /// k × d, orthonormal rows.
    pub components: Matrix,
    /// Spread of each feature's residual on the training data: a residual is judged against
    /// what is usual for that feature, so well-explained features (tight relations) weigh most.
    pub residual_std: Vec<f64>,
    /// Variance of each kept component's score on the training data (for Hotelling's T²).
    pub variances: Vec<f64>,
}

impl PcaBody {
    /// Fits on standardised rows (n × d), keeping the components that explain `explained` of
    /// the variance.
    pub fn fit(x: &Array2<f64>, explained: f64) -> Result<PcaBody, ModelError> {
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
            if acc >= explained * total {
                k = i + 1;
                break;
            }
            k = i + 1;
        }
        let comps = full.components();
        let components = Matrix::from_rows(k, d, comps.rows().into_iter().take(k).flat_map(|r| r.to_vec()).collect());
        let variances = var.iter().take(k).map(|v| v.max(1e-9)).collect();
        let mut body = PcaBody { mean: full.mean().to_vec(), components, residual_std: vec![1.0; d], variances };
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

    /// The residual of `z` off the kept components, and Hotelling's T² of its projection.
    fn project(&self, z: &[f64]) -> (Vec<f64>, f64) {
        let centred: Vec<f64> = z.iter().zip(&self.mean).map(|(a, m)| a - m).collect();
        let mut recon = vec![0.0; centred.len()];
        let mut t2 = 0.0;
        for c in 0..self.components.rows {
            let row = self.components.row(c);
            let proj: f64 = row.iter().zip(&centred).map(|(a, b)| a * b).sum();
            t2 += proj * proj / self.variances.get(c).copied().unwrap_or(1.0);
            for (r, a) in recon.iter_mut().zip(row) {
                *r += proj * a;
            }
        }
        (centred.iter().zip(&recon).map(|(c, r)| c - r).collect(), t2)
    }

    fn residual(&self, z: &[f64]) -> Vec<f64> {
        self.project(z).0
    }

    /// Mean squared standardised residual (Q), Hotelling's T² over the kept components, and
    /// each feature's share of Q.
    pub fn score(&self, z: &[f64]) -> (f64, f64, Vec<f64>) {
        let (residual, t2) = self.project(z);
        let parts: Vec<f64> = residual.iter().zip(&self.residual_std).map(|(r, s)| (r / s) * (r / s)).collect();
        (parts.iter().sum::<f64>() / parts.len().max(1) as f64, t2, parts)
    }
}
