//! PCA reconstruction error: the part of a standardised vector that the device's normal
//! relations between features do not explain, each residual in units of its training spread.

use linfa::traits::Fit;
use linfa::DatasetBase;
use linfa_reduction::Pca;
use ndarray::{Array1, Array2, Axis};
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

/// A PCA's mean, its leading components (rows) and their explained variances.
type Fitted = (Array1<f64>, Array2<f64>, Array1<f64>);

/// The mean, the `keep` leading components and their explained variances, as linfa's PCA gives
/// them: a truncated SVD of the centred rows by LOBPCG, seeded.
fn lobpcg_pca(x: &Array2<f64>, keep: usize) -> Result<Fitted, ModelError> {
    let pca = Pca::params(keep).fit(&DatasetBase::from(x.clone())).map_err(|e| ModelError::Fit(e.to_string()))?;
    Ok((pca.mean().clone(), pca.components().clone(), pca.explained_variance()))
}

/// [`lobpcg_pca`] by the dense eigendecomposition of the centred rows' scatter matrix (d × d),
/// in linfa's own scaling: singular values `σ = √λ` (at least 1e-8) and explained variances
/// `σ² / (keep − 1)`. LOBPCG can fail on a near-singular history (linfa-linalg 0.2.1 then
/// panics sorting the NaN it produced); this cannot. It gives the exact eigenvectors, which
/// can differ from LOBPCG's approximate ones (by a few degrees on the unit test's data).
fn dense_pca(x: &Array2<f64>, keep: usize) -> Result<Fitted, ModelError> {
    use linfa_linalg::eigh::{EigSort, Eigh};
    let mean = x.mean_axis(Axis(0)).ok_or_else(|| ModelError::Fit("no rows".into()))?;
    let centred = x - &mean;
    let scatter = centred.t().dot(&centred);
    if scatter.iter().any(|v| !v.is_finite()) {
        return Err(ModelError::Fit("the history holds values that are not finite".into()));
    }
    let (values, vectors) = scatter.eigh().map_err(|e| ModelError::Fit(e.to_string()))?.sort_eig_desc();
    let keep = keep.min(values.len());
    let sigma = values.slice(ndarray::s![..keep]).mapv(|v| v.max(0.0).sqrt().max(1e-8));
    let variance = sigma.mapv(|s| s * s / (keep as f64 - 1.0));
    let components = vectors.slice(ndarray::s![.., ..keep]).t().to_owned();
    Ok((mean, components, variance))
}

impl PcaBody {
    /// Fits on standardised rows (n × d), keeping the components that explain `explained` of
    /// the variance.
    pub fn fit(x: &Array2<f64>, explained: f64) -> Result<PcaBody, ModelError> {
        let d = x.ncols();
        let keep = d.saturating_sub(1).max(1);
        let (mean, comps, var) = match crate::worker::catch_expected("PCA by LOBPCG", || lobpcg_pca(x, keep)) {
            Ok(fitted) => fitted?,
            Err(panic) => {
                let why = crate::worker::panic_message(&*panic).unwrap_or("a panic");
                tracing::warn!(
                    why,
                    "PCA by LOBPCG failed on this history; fitted by a dense eigendecomposition instead"
                );
                dense_pca(x, keep)?
            }
        };
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
        let components = Matrix::from_rows(k, d, comps.rows().into_iter().take(k).flat_map(|r| r.to_vec()).collect());
        let variances = var.iter().take(k).map(|v| v.max(1e-9)).collect();
        let mut body = PcaBody { mean: mean.to_vec(), components, residual_std: vec![1.0; d], variances };
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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    #[test]
    fn the_dense_fallback_gives_eigenvectors_of_the_scatter_matrix_in_linfas_scaling() {
        let mut rng = StdRng::seed_from_u64(7);
        let rows: Vec<f64> = (0..400)
            .flat_map(|_| {
                let (a, b): (f64, f64) = (rng.gen_range(-1.0..1.0), rng.gen_range(-1.0..1.0));
                let noise: f64 = rng.gen_range(-0.05..0.05);
                [a, 2.0 * a + noise, 0.5 * b, a - b]
            })
            .collect();
        let x = Array2::from_shape_vec((400, 4), rows).unwrap();
        let (mean, components, variance) = dense_pca(&x, 3).unwrap();
        assert_eq!(components.dim(), (3, 4));
        let centred = &x - &mean;
        let scatter = centred.t().dot(&centred);
        for (i, row) in components.rows().into_iter().enumerate() {
            // Orthonormal rows, in decreasing order of variance.
            for (j, other) in components.rows().into_iter().enumerate() {
                let dot: f64 = row.iter().zip(other.iter()).map(|(a, b)| a * b).sum();
                assert!((dot - f64::from(u8::from(i == j))).abs() < 1e-9, "rows {i} and {j}: {dot}");
            }
            assert!(i == 0 || variance[i] <= variance[i - 1]);
            // scatter · v = λ v, with λ = σ² = variance × (keep − 1) as linfa scales it.
            let lambda = variance[i] * 2.0;
            let sv = scatter.dot(&row);
            for (a, b) in sv.iter().zip(row.iter()) {
                assert!(
                    (a - lambda * b).abs() < 1e-6 * lambda.max(1.0),
                    "component {i}: {sv} against {lambda} × {row}"
                );
            }
        }
    }
}
