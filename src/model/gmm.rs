//! Gaussian mixture density: how improbable a standardised vector is under the device's normal
//! operating states. linfa fits the mixture; the per-sample log-likelihood is computed here from
//! its weights, means and precisions (linfa exposes no per-sample score).

use linfa::traits::Fit;
use linfa::DatasetBase;
use linfa_clustering::GaussianMixtureModel;
use ndarray::Array2;
use serde::{Deserialize, Serialize};

use super::{Matrix, ModelError};

/// Operating states (mixture components).
const COMPONENTS: usize = 3;

/// A fitted mixture, stored as plain numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GmmBody {
    pub weights: Vec<f64>,
    /// k × d.
    pub means: Matrix,
    /// One d × d precision matrix per component.
    pub precisions: Vec<Matrix>,
    /// Per component: ln w + ½ ln det P − d/2 ln 2π, so scoring is one quadratic form each.
    pub log_norm: Vec<f64>,
}

/// ln det of a symmetric positive definite matrix via Cholesky; `None` if it is not.
fn ln_det_spd(m: &Matrix) -> Option<f64> {
    let n = m.rows;
    let mut l = vec![0.0; n * n];
    let mut ln_det = 0.0;
    for i in 0..n {
        for j in 0..=i {
            let mut s = m.data[i * n + j];
            for k in 0..j {
                s -= l[i * n + k] * l[j * n + k];
            }
            if i == j {
                if s <= 0.0 {
                    return None;
                }
                l[i * n + i] = s.sqrt();
                ln_det += 2.0 * s.sqrt().ln();
            } else {
                l[i * n + j] = s / l[j * n + j];
            }
        }
    }
    Some(ln_det)
}

impl GmmBody {
    /// Fits on standardised rows (n × d).
    pub fn fit(x: &Array2<f64>) -> Result<GmmBody, ModelError> {
        let d = x.ncols();
        // `params` seeds its generator with a constant: the same history gives the same model.
        let gmm = GaussianMixtureModel::params(COMPONENTS)
            .reg_covariance(1e-3)
            .max_n_iterations(200)
            .fit(&DatasetBase::from(x.clone()))
            .map_err(|e| ModelError::Fit(e.to_string()))?;
        let k = gmm.weights().len();
        let means = Matrix::from_rows(k, d, gmm.means().iter().copied().collect());
        let mut precisions = Vec::with_capacity(k);
        let mut log_norm = Vec::with_capacity(k);
        for c in 0..k {
            let p = Matrix::from_rows(d, d, gmm.precisions().index_axis(ndarray::Axis(0), c).iter().copied().collect());
            let ln_det = ln_det_spd(&p).ok_or_else(|| ModelError::Fit("a precision matrix is not positive".into()))?;
            let w = gmm.weights()[c].max(1e-300);
            log_norm.push(w.ln() + 0.5 * ln_det - 0.5 * d as f64 * std::f64::consts::TAU.ln());
            precisions.push(p);
        }
        Ok(GmmBody { weights: gmm.weights().to_vec(), means, precisions, log_norm })
    }

    /// Negative log-likelihood of `z`, and each feature's share of the Mahalanobis distance to
    /// the most likely component.
    pub fn score(&self, z: &[f64]) -> (f64, Vec<f64>) {
        let d = z.len();
        let mut best = (f64::NEG_INFINITY, 0usize);
        let mut terms = Vec::with_capacity(self.weights.len());
        for c in 0..self.weights.len() {
            let diff: Vec<f64> = z.iter().zip(self.means.row(c)).map(|(a, m)| a - m).collect();
            let p = &self.precisions[c];
            let mut q = 0.0;
            for i in 0..d {
                let pi: f64 = p.row(i).iter().zip(&diff).map(|(a, b)| a * b).sum();
                q += diff[i] * pi;
            }
            let t = self.log_norm[c] - 0.5 * q;
            if t > best.0 {
                best = (t, c);
            }
            terms.push(t);
        }
        let max = best.0;
        let ll = max + terms.iter().map(|t| (t - max).exp()).sum::<f64>().ln();
        let c = best.1;
        let diff: Vec<f64> = z.iter().zip(self.means.row(c)).map(|(a, m)| a - m).collect();
        let parts = (0..d)
            .map(|i| {
                let pi: f64 = self.precisions[c].row(i).iter().zip(&diff).map(|(a, b)| a * b).sum();
                (diff[i] * pi).max(0.0)
            })
            .collect();
        (-ll, parts)
    }
}
