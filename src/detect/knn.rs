//! Lag-vector nearest neighbours: how far is the shape of the last few readings from every shape
//! the series has drawn before?

/// The k-nearest-neighbour novelty of a scalar stream's lag vectors.
///
/// The lag vector at step t is the last `lag` values `y[t-lag+1..=t]`. Its score is the mean
/// Euclidean distance to its `k` nearest neighbours among the lag vectors of steps
/// `t-exclude-memory+1 ..= t-exclude`, divided by `sqrt(lag)` and by the range of every value seen
/// so far, so that scores of different series share a scale. The `exclude` most recent vectors are
/// left out because they overlap the current one and would always look familiar.
///
/// Lag vectors overlap, so only the scalars are kept: a vector is a slice of the window. The
/// window is a `Vec` that is compacted when it reaches twice its capacity, so every slice is
/// contiguous and the memory is bounded by `2 × (memory + lag + exclude)` values.
pub struct LagKnn {
    lag: usize,
    memory: usize,
    k: usize,
    exclude: usize,
    /// The values the searchable vectors and the current vector are made of, oldest first.
    window: Vec<f64>,
    /// Values pushed so far.
    seen: u64,
    min: f64,
    max: f64,
    /// The k smallest squared distances of the current search, ascending.
    nearest: Vec<f64>,
}

impl LagKnn {
    /// A search over the last `memory` lag vectors of length `lag`; all three sizes must be ≥ 1.
    pub fn new(lag: usize, memory: usize, k: usize, exclude: usize) -> LagKnn {
        let (lag, memory, k) = (lag.max(1), memory.max(1), k.max(1));
        LagKnn {
            lag,
            memory,
            k,
            exclude,
            window: Vec::with_capacity(2 * (memory + lag + exclude)),
            seen: 0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            nearest: Vec::with_capacity(k),
        }
    }

    fn capacity(&self) -> usize {
        self.memory + self.lag + self.exclude - 1
    }

    /// Number of lag vectors that can be searched now.
    pub fn stored(&self) -> usize {
        let complete = self.seen.saturating_sub(self.lag as u64 - 1);
        complete.saturating_sub(self.exclude as u64).min(self.memory as u64) as usize
    }

    /// Pushes the next value and returns the novelty of the lag vector it completes (0 until
    /// `k` vectors can be searched).
    pub fn update(&mut self, y: f64) -> f64 {
        self.min = self.min.min(y);
        self.max = self.max.max(y);
        if self.window.len() >= 2 * self.capacity() {
            let drop = self.window.len() - self.capacity();
            self.window.drain(..drop);
        }
        self.window.push(y);
        self.seen += 1;
        let stored = self.stored();
        if self.seen < self.lag as u64 || stored < self.k {
            return 0.0;
        }
        let n = self.window.len();
        let query = &self.window[n - self.lag..];
        // The newest searchable vector ends `exclude` steps before the current one.
        let last_end = n - 1 - self.exclude;
        self.nearest.clear();
        for end in (last_end + 1 - stored)..=last_end {
            let candidate = &self.window[end + 1 - self.lag..=end];
            let d2: f64 = candidate.iter().zip(query).map(|(a, b)| (a - b) * (a - b)).sum();
            insert_smallest(&mut self.nearest, self.k, d2);
        }
        let mean = self.nearest.iter().map(|d2| d2.sqrt()).sum::<f64>() / self.nearest.len() as f64;
        let range = (self.max - self.min).max(1e-12);
        mean / (range * (self.lag as f64).sqrt())
    }
}

/// Keeps the `k` smallest values seen, ascending.
fn insert_smallest(nearest: &mut Vec<f64>, k: usize, d: f64) {
    if nearest.len() == k {
        match nearest.last() {
            Some(&worst) if d < worst => {
                nearest.pop();
            }
            _ => return,
        }
    }
    let at = nearest.partition_point(|&x| x <= d);
    nearest.insert(at, d);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The score by brute force over an explicit history, as the definition reads.
    fn reference(ys: &[f64], lag: usize, memory: usize, k: usize, exclude: usize) -> Vec<f64> {
        let mut out = Vec::new();
        for t in 0..ys.len() {
            if t + 1 < lag {
                out.push(0.0);
                continue;
            }
            let v = &ys[t + 1 - lag..=t];
            let first = (lag - 1).max((t + 1).saturating_sub(exclude + memory));
            let mut ds: Vec<f64> = (first..=t.saturating_sub(exclude))
                .filter(|&j| j + exclude <= t)
                .map(|j| ys[j + 1 - lag..=j].iter().zip(v).map(|(a, b)| (a - b) * (a - b)).sum::<f64>().sqrt())
                .collect();
            if ds.len() < k {
                out.push(0.0);
                continue;
            }
            ds.sort_by(|a, b| a.total_cmp(b));
            let seen = &ys[..=t];
            let range = seen.iter().cloned().fold(f64::NEG_INFINITY, f64::max)
                - seen.iter().cloned().fold(f64::INFINITY, f64::min);
            out.push(ds[..k].iter().sum::<f64>() / k as f64 / (range.max(1e-12) * (lag as f64).sqrt()));
        }
        out
    }

    #[test]
    fn matches_brute_force_across_window_compactions() {
        let ys: Vec<f64> = (0..400).map(|i| ((i * 37 % 101) as f64).sin() * 3.0 + (i / 50) as f64).collect();
        let mut knn = LagKnn::new(4, 30, 3, 4);
        let got: Vec<f64> = ys.iter().map(|&y| knn.update(y)).collect();
        let want = reference(&ys, 4, 30, 3, 4);
        for (t, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!((g - w).abs() < 1e-12, "step {t}: {g} != {w}");
        }
        assert!(knn.window.len() <= 2 * knn.capacity());
    }

    #[test]
    fn a_repeated_shape_is_familiar_and_a_new_one_is_not() {
        let mut knn = LagKnn::new(3, 100, 1, 3);
        let mut last = 0.0;
        for i in 0..60 {
            last = knn.update([0.0, 1.0, 0.0, -1.0][i % 4]);
        }
        assert_eq!(last, 0.0, "a periodic series repeats its shapes exactly");
        assert!(knn.update(5.0) > 0.1);
    }

    #[test]
    fn keeps_the_k_smallest_in_order() {
        let mut v = Vec::new();
        for d in [5.0, 1.0, 4.0, 1.0, 3.0, 0.5] {
            insert_smallest(&mut v, 3, d);
        }
        assert_eq!(v, vec![0.5, 1.0, 1.0]);
    }
}
