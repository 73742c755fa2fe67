//! Holding mode's state: the buckets that hold data, in pages kept in a sorted map, written
//! at the end with the empty buckets between them. Constructed by [`super::pass`] for
//! [`Mode::Holding`](super::super::Mode) (rows out of order, or a source or sink that allows
//! one attempt only), whose row loop feeds it through [`Buckets`]. Memory is bounded by
//! `--max-held-cells` (what is held), output by `--max-buckets` (the span).

use std::collections::BTreeMap;

use chrono_tz::Tz;

use super::super::acc::Acc;
use super::super::time::Grid;
use super::super::{AggregateError, Bucket, Spec, output};
use super::header::Layout;
use super::lane::Lane;
use super::{Buckets, Out, PassEnd};

pub(super) struct Holding<'s> {
    out: Out<'s>,
    time_name: String,
    value_names: Vec<String>,
    n_cols: usize,
    /// `--max-buckets`: the span from the first to the last bucket.
    limit: usize,
    held: Held,
    /// The earliest row: pandas anchors sub-day grids to its day.
    earliest: Option<i64>,
    bucket: Bucket,
    tz: Tz,
    /// Whether the pass may end in [`PassEnd::Reanchor`] instead of writing output anchored
    /// to another day than the earliest row's (set when the grid's anchor was the first row
    /// and the input can be read again).
    may_reanchor: bool,
    /// Whether the layout lets the fast lane run (and it is not switched off for a test).
    fast: bool,
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
            held: Held::new(layout.value_idx.len(), spec.max_held_cells),
            earliest: None,
            bucket: spec.bucket,
            tz: spec.timezone,
            may_reanchor,
            fast: layout.is_time_value() && super::lane::enabled(),
        }
    }
}

impl Buckets for Holding<'_> {
    type Lane<'l>
        = HeldLane<'l>
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
        let accs = self.held.slot(key, self.limit)?;
        Acc::push_row(accs, values);
        Ok(None)
    }

    /// The held bucket `key`, when it is held already. It always is when the lane can take
    /// a row: `key` is the bucket of the previous general-path row, which [`Holding::add`]
    /// paged in (or failed the pass). So the lane never allocates, and a row it takes
    /// changes neither the span (`--max-buckets`) nor the cells held (`--max-held-cells`),
    /// exactly as that row would not through the general path. Before the first row (an
    /// empty window, key 0) nothing is held and there is no lane.
    #[inline(always)]
    fn lane(&mut self, key: i64) -> Option<HeldLane<'_>> {
        if !self.fast {
            return None;
        }
        let earliest = self.earliest.as_mut()?;
        let acc = &mut self.held.held(key)?[0];
        Some(HeldLane { acc, earliest })
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
            let blank = vec![Acc::default(); self.n_cols];
            let h = &self.held;
            if let Some((min, max)) = h.span {
                // Pages in key order; the buckets between them are empty and written from
                // one blank row, so nothing proportional to the span is ever held.
                let mut next = min;
                for (&page, &at) in &h.index {
                    let start = (page << h.shift).max(min);
                    let end = ((page + 1) << h.shift).min(max + 1);
                    for key in next..start {
                        self.out.emit(&grid, key, &blank)?;
                    }
                    let cells = &h.pages[at as usize];
                    for key in start..end {
                        let off = ((key - (page << h.shift)) as usize) * self.n_cols;
                        self.out.emit(&grid, key, &cells[off..off + self.n_cols])?;
                    }
                    next = end;
                }
                buckets = (max - min + 1) as u64;
            }
        } else {
            // Header-only input: no grid, no buckets, just the header.
            output::push_header(&mut self.out.buf, &self.time_name, &self.value_names);
        }
        self.out.finish()?;
        Ok((PassEnd::Done, buckets))
    }
}

/// Holding mode's lane: a held bucket's accumulator, and the earliest row (pandas anchors
/// sub-day grids to its day, so a row the lane takes must be able to move it).
pub(super) struct HeldLane<'l> {
    acc: &'l mut Acc,
    earliest: &'l mut i64,
}

impl Lane for HeldLane<'_> {
    const NOTES_TIME: bool = true;

    #[inline(always)]
    fn acc(&mut self) -> &mut Acc {
        self.acc
    }

    #[inline(always)]
    fn note(&mut self, t: i64) {
        if t < *self.earliest {
            *self.earliest = t;
        }
    }
}

/// Cells (accumulators) a page aims at: small enough that sparse data (one row per page)
/// wastes little, large enough that dense data rarely leaves its page.
const PAGE_CELLS: usize = 1024;
/// The most buckets in one page.
const MAX_PAGE_BUCKETS: usize = 64;

/// The buckets of holding mode: pages of `1 << shift` consecutive buckets, allocated where a
/// row falls and found through a sorted map, so memory follows the buckets that hold data
/// and a gap of any length costs nothing.
pub(super) struct Held {
    n_cols: usize,
    /// log2 of the buckets per page (a power of two, so a key's page is a shift, also for
    /// negative keys).
    shift: u32,
    /// `--max-held-cells`.
    max_cells: usize,
    /// Page number → index into `pages`.
    index: BTreeMap<i64, u32>,
    /// Each `(1 << shift) * n_cols` accumulators.
    pages: Vec<Box<[Acc]>>,
    /// The page of the previous row and its index: consecutive rows mostly share a page, so
    /// the map is consulted only when a row leaves it.
    last: Option<(i64, usize)>,
    /// Smallest and largest key with a row.
    span: Option<(i64, i64)>,
}

impl Held {
    pub(super) fn new(n_cols: usize, max_cells: usize) -> Self {
        let buckets = (PAGE_CELLS / n_cols.max(1)).clamp(1, MAX_PAGE_BUCKETS);
        Held {
            n_cols,
            // Round down to a power of two.
            shift: usize::BITS - 1 - buckets.leading_zeros(),
            max_cells,
            index: BTreeMap::new(),
            pages: Vec::new(),
            last: None,
            span: None,
        }
    }

    /// Cells held: allocated pages × buckets per page × value columns.
    pub(super) fn cells(&self) -> u64 {
        (self.pages.len() << self.shift) as u64 * self.n_cols as u64
    }

    /// The accumulators of bucket `key`, allocating its page when it has none. Fails when the
    /// span would exceed `limit` buckets (`--max-buckets`) or a new page would hold more than
    /// `--max-held-cells`. Inlined into the row loop: it runs for every general-path row of
    /// holding mode.
    #[inline]
    pub(super) fn slot(&mut self, key: i64, limit: usize) -> Result<&mut [Acc], AggregateError> {
        let (min, max) = self
            .span
            .map_or((key, key), |(lo, hi)| (lo.min(key), hi.max(key)));
        let reached = max.abs_diff(min) + 1;
        if reached > limit as u64 {
            return Err(AggregateError::TooManyBuckets { limit, reached });
        }
        self.span = Some((min, max));
        let page = key >> self.shift;
        let at = match self.last {
            Some((p, at)) if p == page => at,
            _ => {
                let at = match self.index.get(&page) {
                    Some(&at) => at as usize,
                    None => self.allocate(page)?,
                };
                self.last = Some((page, at));
                at
            }
        };
        let off = (key - (page << self.shift)) as usize * self.n_cols;
        Ok(&mut self.pages[at][off..off + self.n_cols])
    }

    /// The accumulators of bucket `key` if its page is held and it lies in the span (never
    /// allocates, never moves the span). For the fast lane, before every stint of it.
    #[inline]
    pub(super) fn held(&mut self, key: i64) -> Option<&mut [Acc]> {
        let (min, max) = self.span?;
        if key < min || key > max {
            return None;
        }
        let page = key >> self.shift;
        let at = match self.last {
            Some((p, at)) if p == page => at,
            _ => {
                let at = *self.index.get(&page)? as usize;
                self.last = Some((page, at));
                at
            }
        };
        let off = (key - (page << self.shift)) as usize * self.n_cols;
        Some(&mut self.pages[at][off..off + self.n_cols])
    }

    #[cold]
    fn allocate(&mut self, page: i64) -> Result<usize, AggregateError> {
        let page_cells = (1usize << self.shift) * self.n_cols;
        let reached = self.cells() + page_cells as u64;
        if reached > self.max_cells as u64 {
            return Err(AggregateError::TooManyHeldCells {
                limit: self.max_cells,
                reached,
            });
        }
        let at = self.pages.len();
        self.pages
            .push(vec![Acc::default(); page_cells].into_boxed_slice());
        self.index.insert(page, at as u32);
        Ok(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An hour's key in a grid whose key 0 is 2017-01-01.
    const YEAR: i64 = 8766;

    #[test]
    fn a_gap_of_ninety_years_costs_one_page() {
        let mut h = Held::new(8, 1_000_000);
        // 2,000 hours from 2017 in reverse order, then one row in 2107.
        for key in (0..2000).rev() {
            h.slot(key, 1_000_000).unwrap()[3].push(1.0);
        }
        h.slot(90 * YEAR, 1_000_000).unwrap()[0].push(2.0);
        let per_page = 1 << h.shift;
        assert_eq!(per_page, 64);
        // ⌈2000 / 64⌉ = 32 pages for the dense part, one for the lone row.
        assert_eq!(h.pages.len(), 2000usize.div_ceil(per_page) + 1);
        assert_eq!(h.cells(), (h.pages.len() * per_page * 8) as u64);
        assert!(h.cells() < 20_000, "{}", h.cells());
        assert_eq!(h.span, Some((0, 90 * YEAR)));
    }

    #[test]
    fn negative_keys_and_wide_rows_page_correctly() {
        // 10,000 columns: one bucket per page.
        let mut wide = Held::new(10_000, 1_000_000);
        assert_eq!(wide.shift, 0);
        wide.slot(-5, 100).unwrap()[9_999].push(1.0);
        wide.slot(5, 100).unwrap()[0].push(1.0);
        assert_eq!(wide.cells(), 20_000);
        let mut h = Held::new(1, 1_000_000);
        for key in [-65, -64, -1, 0, 63, 64] {
            h.slot(key, 1_000).unwrap()[0].push(key as f64);
        }
        // Pages -2, -1, 0, 1.
        assert_eq!(h.index.keys().copied().collect::<Vec<_>>(), [-2, -1, 0, 1]);
    }

    /// The row the fast lane takes can be the earliest one, and holding mode re-anchors to
    /// exactly that row: the lane must note it as `add` would.
    #[test]
    fn the_lane_notes_the_earliest_row() {
        use super::super::super::read::Records;
        use super::super::super::{Bucket, Mode};
        use super::super::{pass, without_fast_lane};
        // 6-hour buckets in Berlin: the first row (December, CET) anchors the grid at 23:00
        // UTC; the others are on 2020-03-30 (CEST, midnight at 22:00 UTC), another phase, so
        // the pass asks to re-anchor to the earliest row. The first 00:xx row goes through the
        // general path and caches its hour; the lane takes the rest of that hour, among them
        // the earliest, 00:10 CEST (2020-03-29 22:10:00 UTC).
        let input = b"Datetime,T\n\
            2020-12-01 00:30:00,1\n\
            2020-03-30 00:40:00,2\n\
            2020-03-30 00:10:00,3\n\
            2020-03-30 00:20:00,4\n\
            2020-03-30 00:50:00,5\n\
            2020-03-30 00:55:00,6\n\
            2020-03-30 00:59:00,7\n\
            2020-03-30 00:58:00,8\n";
        let spec = Spec {
            bucket: Bucket::Hour6,
            timezone: chrono_tz::Europe::Berlin,
            ..Spec::default()
        };
        let run = || {
            let mut records = Records::new(Box::new(&input[..]), spec.max_line_bytes);
            let mut sink = Vec::new();
            match pass(&spec, &mut records, &mut sink, Mode::Holding, None, true) {
                Ok((PassEnd::Reanchor(e), stats)) => (e, stats.rows),
                Ok(_) => panic!("expected a re-anchoring"),
                Err(e) => panic!("{e}"),
            }
        };
        let earliest = 1_585_519_800; // 2020-03-29 22:10:00 UTC
        assert_eq!(run(), (earliest, 8));
        assert_eq!(without_fast_lane(run), (earliest, 8));
    }

    #[test]
    fn limits_name_the_value_reached() {
        let mut h = Held::new(1, 1_000_000);
        h.slot(0, 10).unwrap();
        match h.slot(10, 10) {
            Err(AggregateError::TooManyBuckets {
                limit: 10,
                reached: 11,
            }) => {}
            other => panic!("{:?}", other.map(|_| ())),
        }
        // 64 cells per page: the third page passes 128 cells.
        let mut h = Held::new(1, 128);
        h.slot(0, 1_000_000).unwrap();
        h.slot(1_000, 1_000_000).unwrap();
        match h.slot(2_000, 1_000_000) {
            Err(AggregateError::TooManyHeldCells {
                limit: 128,
                reached: 192,
            }) => {}
            other => panic!("{:?}", other.map(|_| ())),
        }
    }
}
