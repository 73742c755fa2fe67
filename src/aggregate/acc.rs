//! The per-bucket, per-column accumulator: count, mean, sample variance, min, max.
//!
//! Shifted sums: the bucket's first value `k` is subtracted from every value, and the sums of
//! the differences and of their squares are kept. Three reasons:
//! - Precision. For 1e9 plus small noise the differences are small and exact, so the variance
//!   keeps full precision. A raw sum of squares would lose all of it, and plain Welford
//!   around a mean of 1e9 loses about 5 digits (pandas' own `std` does; see the fixtures'
//!   README).
//! - A bounded error. `k` is a data point, so `(k - mean)^2 <= m2` and the final
//!   `s2 - s1^2/n` cancels at most a factor `n + 1`: a relative error of about `n * 2^-53`.
//! - Speed. A value costs a subtraction, an addition and a multiply-add, with no division on
//!   a loop-carried chain. Streaming and holding mode run the same operations in the same
//!   order, so their outputs are identical to the bit.
//!
//! [`Acc::merge`] combines partial results with Chan's formula, so the accumulator is
//! mergeable, though not to the bit: parallel mode (`reduce/parallel.rs`) folds a bucket
//! that spans a seam again instead, so its output equals one thread's.
//!
//! Infinities (`inf`, `-Infinity`, `1e400`: numbers to pandas) follow pandas: they count, the
//! mean is the sum's infinity (or missing when both signs occur), the std is missing, and
//! min/max take them. A first value that is infinite shifts by 0 so that the sums, not the
//! shift, carry it; from then on `s1` is `±inf` or NaN and the std is reported missing.

/// Running statistics of the non-missing values of one column in one bucket.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Acc {
    n: u64,
    /// The shift: the first value pushed.
    k: f64,
    /// Sum of `x - k`.
    s1: f64,
    /// Sum of `(x - k)^2`.
    s2: f64,
    min: f64,
    max: f64,
}

impl Acc {
    /// Adds one row's values to its bucket's accumulators, one per value column; a missing
    /// value (NaN) is skipped, as pandas' count and mean skip it. The one place that rule lives
    /// for every reducer mode.
    #[inline(always)]
    pub fn push_row(accs: &mut [Acc], values: &[f64]) {
        for (acc, &v) in accs.iter_mut().zip(values) {
            if !v.is_nan() {
                acc.push(v);
            }
        }
    }

    /// Adds one value.
    #[inline(always)]
    pub fn push(&mut self, x: f64) {
        if self.n == 0 {
            // An infinite shift would turn every later difference into NaN or the wrong sign.
            let (k, s1) = if x.is_finite() { (x, 0.0) } else { (0.0, x) };
            *self = Acc {
                n: 1,
                k,
                s1,
                s2: 0.0,
                min: x,
                max: x,
            };
            return;
        }
        self.n += 1;
        let d = x - self.k;
        self.s1 += d;
        self.s2 += d * d;
        // Comparisons rather than f64::min: NaN never reaches here (missing values are
        // filtered out before), and this compiles to two branch-free selects.
        if x < self.min {
            self.min = x;
        }
        if x > self.max {
            self.max = x;
        }
    }

    /// Number of values.
    pub fn count(&self) -> u64 {
        self.n
    }

    /// The mean (`None` without values, or when both `inf` and `-inf` occurred: pandas' NaN).
    pub fn mean(&self) -> Option<f64> {
        let mean = self.k + self.s1 / self.n as f64;
        (self.n > 0 && !mean.is_nan()).then_some(mean)
    }

    /// Sum of squared deviations from the mean.
    pub fn m2(&self) -> f64 {
        if self.n == 0 {
            return 0.0;
        }
        // Squares beyond f64 (values above ~1e154 apart): the true m2 may still be finite, but
        // it is lost; say infinity, as pandas' Welford does there, never a false 0.
        if self.s2 == f64::INFINITY {
            return f64::INFINITY;
        }
        // `s1 * (s1 / n)` rather than `s1 * s1 / n`: the square of the sum overflows ~n times
        // sooner than the sum of squares does.
        (self.s2 - self.s1 * (self.s1 / self.n as f64)).max(0.0)
    }

    /// Smallest and largest value (`None` without values).
    pub fn min_max(&self) -> Option<(f64, f64)> {
        (self.n > 0).then_some((self.min, self.max))
    }

    /// Sample standard deviation (ddof = 1); `None` when fewer than two values or when an
    /// infinite value occurred (pandas gives NaN there).
    pub fn std(&self) -> Option<f64> {
        (self.n >= 2 && self.s1.is_finite()).then(|| (self.m2() / (self.n - 1) as f64).sqrt())
    }

    /// Merges another partial result into this one (Chan et al.).
    pub fn merge(&mut self, other: &Acc) {
        let (Some(ma), Some(mb)) = (self.mean(), other.mean()) else {
            if self.n == 0 {
                *self = *other;
            }
            return;
        };
        if !(self.s1.is_finite() && other.s1.is_finite()) {
            // An infinity dominates every finite part; opposite infinities give NaN.
            *self = Acc {
                n: self.n + other.n,
                k: 0.0,
                s1: (self.k + self.s1) + (other.k + other.s1),
                s2: f64::NAN,
                min: self.min.min(other.min),
                max: self.max.max(other.max),
            };
            return;
        }
        let (na, nb) = (self.n as f64, other.n as f64);
        let n = na + nb;
        let delta = mb - ma;
        let m2 = self.m2() + other.m2() + delta * delta * na * nb / n;
        *self = Acc {
            n: self.n + other.n,
            k: ma + delta * nb / n,
            s1: 0.0,
            s2: m2,
            min: self.min.min(other.min),
            max: self.max.max(other.max),
        };
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
        assert_eq!(acc.mean(), Some(1e9 + 10.0));
        assert_eq!(acc.std(), Some(30f64.sqrt()));
        assert_eq!(acc.min_max(), Some((1e9 + 4.0, 1e9 + 16.0)));
        // Noise far below 1: the exact sample std of these four values is 0.001 * sqrt(10/3).
        let mut acc = Acc::default();
        for d in [1.0, 2.0, 4.0, 5.0] {
            acc.push(1e9 + d * 1e-3);
        }
        let xs: Vec<f64> = [1.0, 2.0, 4.0, 5.0]
            .iter()
            .map(|d| 1e9 + d * 1e-3)
            .collect();
        // Reference from the exactly representable differences (x - 1e9 is exact here).
        let ds: Vec<f64> = xs.iter().map(|x| x - 1e9).collect();
        let mean = ds.iter().sum::<f64>() / 4.0;
        let sd = (ds.iter().map(|d| (d - mean) * (d - mean)).sum::<f64>() / 3.0).sqrt();
        assert!(
            (acc.std().unwrap() - sd).abs() <= 1e-12 * sd,
            "{:?} vs {sd}",
            acc.std()
        );
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
            assert_eq!(a.count(), all.count());
            assert!((a.mean().unwrap() - all.mean().unwrap()).abs() < 1e-12);
            assert!((a.m2() - all.m2()).abs() < 1e-9);
            assert_eq!(a.min_max(), all.min_max());
        }
    }

    #[test]
    fn infinities_follow_pandas() {
        // pandas: [1, inf] -> mean inf, std NaN; [inf, -inf] -> mean NaN; [-inf, 5, 6] -> -inf.
        let run = |xs: &[f64]| {
            let mut acc = Acc::default();
            xs.iter().for_each(|&x| acc.push(x));
            (acc.count(), acc.mean(), acc.std(), acc.min_max())
        };
        let inf = f64::INFINITY;
        assert_eq!(run(&[1.0, inf]), (2, Some(inf), None, Some((1.0, inf))));
        assert_eq!(run(&[inf, 1.0]), (2, Some(inf), None, Some((1.0, inf))));
        assert_eq!(run(&[inf, inf]), (2, Some(inf), None, Some((inf, inf))));
        assert_eq!(run(&[inf, -inf]), (2, None, None, Some((-inf, inf))));
        assert_eq!(
            run(&[-inf, 5.0, 6.0]),
            (3, Some(-inf), None, Some((-inf, 6.0)))
        );
        assert_eq!(run(&[inf]), (1, Some(inf), None, Some((inf, inf))));
        // Merging keeps the same answers whichever side holds the infinity.
        for (a, b, mean) in [
            (&[1.0, 2.0][..], &[inf][..], Some(inf)),
            (&[inf][..], &[1.0, 2.0][..], Some(inf)),
            (&[-inf][..], &[inf, 3.0][..], None),
        ] {
            let (mut x, mut y) = (Acc::default(), Acc::default());
            a.iter().for_each(|&v| x.push(v));
            b.iter().for_each(|&v| y.push(v));
            x.merge(&y);
            assert_eq!((x.count(), x.mean(), x.std()), (3, mean, None));
        }
    }

    #[test]
    fn huge_magnitudes_do_not_collapse_to_zero() {
        // Deviations around 1e153: each square fits in f64 but the square of their sum would
        // not; the std must still come out right (pandas: 8.26e152 here).
        let xs: Vec<f64> = (0..20).map(|i| f64::from(i % 3) * 1e153).collect();
        let mut acc = Acc::default();
        xs.iter().for_each(|&x| acc.push(x));
        let mean = xs.iter().sum::<f64>() / 20.0;
        let sd = (xs
            .iter()
            .map(|x| (x / 1e153 - mean / 1e153).powi(2))
            .sum::<f64>()
            / 19.0)
            .sqrt()
            * 1e153;
        let got = acc.std().unwrap();
        assert!((got - sd).abs() <= 1e-12 * sd, "{got} vs {sd}");
        // Squares beyond f64: infinity (as pandas), never 0.
        let mut acc = Acc::default();
        [1e200, 2e200].iter().for_each(|&x| acc.push(x));
        assert_eq!(acc.std(), Some(f64::INFINITY));
    }

    #[test]
    fn std_needs_two_values() {
        let mut acc = Acc::default();
        assert_eq!((acc.std(), acc.mean()), (None, None));
        acc.push(1.0);
        assert_eq!(acc.std(), None);
        acc.push(3.0);
        assert_eq!(acc.std(), Some(2f64.sqrt()));
    }
}
