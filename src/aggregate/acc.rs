//! The per-bucket, per-column accumulator: count, mean, sample variance, min, max.
//!
//! Welford's update for single values and Chan's formula for merging two partial results.
//! Both keep the running mean and the sum of squared deviations from it, never a raw sum of
//! squares, so 1e9 plus small noise keeps its full variance precision.
//!
//! The streaming hot path uses [`ChunkAcc`] instead: Welford needs a division per value on
//! a loop-carried dependency, which caps throughput; buffering 32 values and reducing them
//! exactly (shifted, corrected two-pass) before a Chan merge costs a few additions each.

/// Running statistics of the non-missing values of one column in one bucket.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Acc {
    /// Number of values seen.
    pub n: u64,
    /// Running mean (meaningless while `n == 0`).
    pub mean: f64,
    /// Sum of squared deviations from the running mean.
    pub m2: f64,
    /// Smallest value seen.
    pub min: f64,
    /// Largest value seen.
    pub max: f64,
}

impl Acc {
    /// Adds one value (Welford).
    #[inline]
    pub fn push(&mut self, x: f64) {
        self.n += 1;
        if self.n == 1 {
            self.mean = x;
            self.m2 = 0.0;
            self.min = x;
            self.max = x;
        } else {
            let delta = x - self.mean;
            self.mean += delta / self.n as f64;
            self.m2 += delta * (x - self.mean);
            // Written as comparisons rather than f64::min so a NaN can never win (NaN never
            // reaches here: missing values are filtered before).
            if x < self.min {
                self.min = x;
            }
            if x > self.max {
                self.max = x;
            }
        }
    }

    /// Merges another partial result into this one (Chan et al.).
    pub fn merge(&mut self, other: &Acc) {
        if other.n == 0 {
            return;
        }
        if self.n == 0 {
            *self = *other;
            return;
        }
        let n = self.n + other.n;
        let delta = other.mean - self.mean;
        let (na, nb) = (self.n as f64, other.n as f64);
        self.mean += delta * nb / n as f64;
        self.m2 += other.m2 + delta * delta * na * nb / n as f64;
        self.n = n;
        if other.min < self.min {
            self.min = other.min;
        }
        if other.max > self.max {
            self.max = other.max;
        }
    }

    /// Sample standard deviation (ddof = 1); `None` when fewer than two values.
    pub fn std(&self) -> Option<f64> {
        (self.n >= 2).then(|| (self.m2.max(0.0) / (self.n - 1) as f64).sqrt())
    }
}

/// Values buffered per chunk before they are reduced and merged.
const CHUNK: usize = 32;

/// An [`Acc`] fed in chunks: values are buffered and every full chunk is reduced with the
/// corrected two-pass algorithm around its first value, then merged with Chan's formula.
#[derive(Clone, Debug)]
pub struct ChunkAcc {
    acc: Acc,
    len: usize,
    buf: [f64; CHUNK],
}

impl Default for ChunkAcc {
    fn default() -> Self {
        Self {
            acc: Acc::default(),
            len: 0,
            buf: [0.0; CHUNK],
        }
    }
}

impl ChunkAcc {
    /// Adds one value.
    #[inline]
    pub fn push(&mut self, x: f64) {
        self.buf[self.len] = x;
        self.len += 1;
        if self.len == CHUNK {
            self.flush();
        }
    }

    fn flush(&mut self) {
        let xs = &self.buf[..self.len];
        if xs.is_empty() {
            return;
        }
        let n = xs.len() as f64;
        // Shifting by a sample makes `x - x0` small (and exact for nearby values), so 1e9 +
        // noise sums without cancellation; the `c` term corrects the mean's rounding error.
        let x0 = xs[0];
        let (mut sum, mut min, mut max) = (0.0, x0, x0);
        for &x in xs {
            sum += x - x0;
            if x < min {
                min = x;
            }
            if x > max {
                max = x;
            }
        }
        let shift = sum / n;
        let (mut m2, mut c) = (0.0, 0.0);
        for &x in xs {
            let d = (x - x0) - shift;
            m2 += d * d;
            c += d;
        }
        let chunk = Acc {
            n: xs.len() as u64,
            mean: x0 + shift,
            m2: (m2 - c * c / n).max(0.0),
            min,
            max,
        };
        self.acc.merge(&chunk);
        self.len = 0;
    }

    /// The statistics of everything pushed; the accumulator starts empty again.
    pub fn take(&mut self) -> Acc {
        self.flush();
        std::mem::take(&mut self.acc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_offset_keeps_variance_precision() {
        let mut acc = Acc::default();
        for x in [1e9 + 4.0, 1e9 + 7.0, 1e9 + 13.0, 1e9 + 16.0] {
            acc.push(x);
        }
        // Deviations from the mean 1e9 + 10 are -6, -3, 3, 6: sum of squares 90, / 3 = 30.
        assert_eq!(acc.mean, 1e9 + 10.0);
        assert!((acc.std().unwrap() - 30f64.sqrt()).abs() < 1e-12);
        assert_eq!((acc.min, acc.max), (1e9 + 4.0, 1e9 + 16.0));
    }

    #[test]
    fn merge_equals_sequential_push() {
        let xs = [3.5, -2.0, 8.25, 1e3, 0.0, 7.0, 7.0];
        let mut all = Acc::default();
        xs.iter().for_each(|&x| all.push(x));
        for split in 0..=xs.len() {
            let (mut a, mut b) = (Acc::default(), Acc::default());
            xs[..split].iter().for_each(|&x| a.push(x));
            xs[split..].iter().for_each(|&x| b.push(x));
            a.merge(&b);
            assert_eq!(a.n, all.n);
            assert!((a.mean - all.mean).abs() < 1e-12);
            assert!((a.m2 - all.m2).abs() < 1e-9);
            assert_eq!((a.min, a.max), (all.min, all.max));
        }
    }

    #[test]
    fn chunked_equals_welford() {
        for len in [0usize, 1, 2, 31, 32, 33, 100] {
            let xs: Vec<f64> = (0..len).map(|i| 1e9 + ((i * 37) % 11) as f64 * 1e-3).collect();
            let (mut w, mut c) = (Acc::default(), ChunkAcc::default());
            for &x in &xs {
                w.push(x);
                c.push(x);
            }
            let c = c.take();
            assert_eq!((c.n, c.min, c.max), (w.n, w.min, w.max));
            if len > 0 {
                assert!((c.mean - w.mean).abs() <= 1e-15 * w.mean.abs(), "{len}");
                assert!((c.m2 - w.m2).abs() <= 1e-9 * w.m2.abs().max(1e-300), "{len}: {} {}", c.m2, w.m2);
            }
        }
    }

    #[test]
    fn std_needs_two_values() {
        let mut acc = Acc::default();
        assert_eq!(acc.std(), None);
        acc.push(1.0);
        assert_eq!(acc.std(), None);
        acc.push(3.0);
        assert_eq!(acc.std(), Some(2f64.sqrt()));
    }
}
