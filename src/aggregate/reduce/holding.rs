//! Holding mode's state: every bucket of the span in a dense array, written at the end.
//! Constructed by [`super::pass`] for [`Mode::Holding`](super::super::Mode) (rows out of
//! order, or a source or sink that allows one attempt only), whose row loop feeds it
//! through [`Buckets`]. Memory is bounded by `--max-buckets`.

use chrono_tz::Tz;

use super::super::acc::Acc;
use super::super::time::Grid;
use super::super::{AggregateError, Bucket, Spec, output};
use super::header::Layout;
use super::{Buckets, Out, PassEnd};

pub(super) struct Holding<'s> {
    out: Out<'s>,
    time_name: String,
    value_names: Vec<String>,
    n_cols: usize,
    limit: usize,
    held: Option<Held>,
    /// The earliest row: pandas anchors sub-day grids to its day.
    earliest: Option<i64>,
    bucket: Bucket,
    tz: Tz,
    /// Whether the pass may end in [`PassEnd::Reanchor`] instead of writing output anchored
    /// to another day than the earliest row's (set when the grid's anchor was the first row
    /// and the input can be read again).
    may_reanchor: bool,
}

impl<'s> Holding<'s> {
    /// Writes nothing yet: the pass may still decide to re-anchor.
    pub fn new(out: Out<'s>, layout: &Layout, spec: &Spec, may_reanchor: bool) -> Self {
        Holding {
            out,
            time_name: layout.time_name.clone(),
            value_names: layout.value_names.clone(),
            n_cols: layout.value_idx.len(),
            limit: spec.max_buckets,
            held: None,
            earliest: None,
            bucket: spec.bucket,
            tz: spec.timezone,
            may_reanchor,
        }
    }
}

impl Buckets for Holding<'_> {
    type Lane<'l>
        = &'l mut Acc
    where
        Self: 'l;

    #[inline]
    fn add(
        &mut self,
        _grid: &Grid,
        t: i64,
        key: i64,
        values: &[f64],
    ) -> Result<Option<PassEnd>, AggregateError> {
        self.earliest = Some(self.earliest.map_or(t, |e| e.min(t)));
        let n_cols = self.n_cols;
        let h = self.held.get_or_insert_with(|| Held {
            n_cols,
            base: key,
            accs: vec![Acc::default(); n_cols],
            min: key,
            max: key,
        });
        let accs = h.slot(key, self.limit)?;
        for (acc, &v) in accs.iter_mut().zip(values) {
            if !v.is_nan() {
                acc.push(v);
            }
        }
        Ok(None)
    }

    /// No fast lane in holding mode yet, although [`super::lane::run`] would take a lane
    /// that also notes `earliest`: the property test `fast_lane_agrees_with_the_general_path`
    /// uses holding mode as the lane-free reference, so enabling it here needs another
    /// reference in that test first.
    #[inline(always)]
    fn lane(&mut self, _key: i64) -> Option<&mut Acc> {
        None
    }

    fn finish(mut self, grid: Option<Grid>) -> Result<(PassEnd, u64), AggregateError> {
        let mut buckets = 0;
        if let Some(grid) = grid {
            if self.may_reanchor
                && let Some(e) = self.earliest
                && !grid.same_phase(&Grid::new(self.bucket, self.tz, e))
            {
                return Ok((PassEnd::Reanchor(e), 0));
            }
            output::push_header(&mut self.out.buf, &self.time_name, &self.value_names);
            if let Some(h) = &self.held {
                for key in h.min..=h.max {
                    let at = (key - h.base) as usize * h.n_cols;
                    self.out.emit(&grid, key, &h.accs[at..at + h.n_cols])?;
                }
                buckets = (h.max - h.min + 1) as u64;
            }
        } else {
            // Header-only input: no grid, no buckets, just the header.
            output::push_header(&mut self.out.buf, &self.time_name, &self.value_names);
        }
        self.out.finish()?;
        Ok((PassEnd::Done, buckets))
    }
}

/// The buckets of holding mode: a dense array over the span seen so far.
struct Held {
    n_cols: usize,
    /// Key of slot 0.
    base: i64,
    /// `slots * n_cols` accumulators.
    accs: Vec<Acc>,
    /// Smallest and largest key with a row.
    min: i64,
    max: i64,
}

impl Held {
    fn slots(&self) -> i64 {
        (self.accs.len() / self.n_cols) as i64
    }

    /// The accumulators of bucket `key`, growing the array (at least doubling, never past
    /// the `limit`-bucket span) when the key is outside it. Inlined into the row loop: it
    /// runs for every general-path row of holding mode.
    #[inline]
    fn slot(&mut self, key: i64, limit: usize) -> Result<&mut [Acc], AggregateError> {
        let (min, max) = (self.min.min(key), self.max.max(key));
        if max.abs_diff(min) >= limit as u64 {
            return Err(AggregateError::TooManyBuckets { limit });
        }
        let limit = limit as i64;
        let end = self.base + self.slots();
        if key < self.base || key >= end {
            let grow = self.slots().max(64);
            let new_base = if key < self.base {
                (self.base - grow).max(max - limit + 1).min(key)
            } else {
                self.base
            };
            let new_end = if key >= end {
                (end + grow).min(min + limit).max(key + 1)
            } else {
                end
            };
            let new_len = (new_end - new_base) as usize * self.n_cols;
            if new_base == self.base {
                // Growing to the right (the common case, rows mostly ascending): extend in
                // place, so old and new arrays never coexist.
                self.accs.reserve_exact(new_len - self.accs.len());
                self.accs.resize(new_len, Acc::default());
            } else {
                let mut accs = vec![Acc::default(); new_len];
                let off = (self.base - new_base) as usize * self.n_cols;
                accs[off..off + self.accs.len()].copy_from_slice(&self.accs);
                self.accs = accs;
                self.base = new_base;
            }
        }
        self.min = min;
        self.max = max;
        let at = (key - self.base) as usize * self.n_cols;
        Ok(&mut self.accs[at..at + self.n_cols])
    }
}
