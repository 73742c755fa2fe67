//! One pass over the input: header, rows, buckets, output. Called by
//! [`super::run`], once in streaming mode and, if that gives up, again in holding mode.
//!
//! A pass reads the header ([`header`]), then feeds every row to a state behind the
//! [`Buckets`] interface (add a row, finish): [`Streaming`] writes each bucket as soon as a
//! later one starts and keeps one bucket in memory; it gives up (returns
//! [`PassEnd::OutOfOrder`]) at the first row for an earlier bucket. [`Holding`] keeps the
//! buckets that hold data in pages (bounded by `--max-held-cells`) and writes the whole span
//! at the end, bounded by `--max-buckets`. Rows go through the general path ([`rows`]) or,
//! when the state offers a [`Lane`](lane::Lane) (both do for the `time,value` layout), the
//! fast lane ([`lane`]).
//!
//! [`parallel`] reuses the row loop with states of its own for `--threads N`.
//!
//! The row loop is generic over the state, so each mode gets its own monomorphised copy
//! and the per-row calls into the state inline (no dynamic dispatch on the hot path).

mod header;
mod holding;
mod lane;
pub(super) mod parallel;
mod rows;
mod streaming;

use super::acc::Acc;
use super::read::Records;
use super::time::{DateCache, Grid};
use super::{AggregateError, Mode, Sink, Spec, output};
use holding::Holding;
use lane::Window;
#[doc(hidden)]
pub use lane::without_fast_lane;
use rows::{Fields, Row, Rows};
use streaming::Streaming;

/// How a pass ended.
pub enum PassEnd {
    /// The output is complete.
    Done,
    /// Streaming met a row for a bucket it had already passed.
    OutOfOrder,
    /// Holding mode read everything but wrote nothing: the grid must be anchored to this
    /// earlier row's day (sub-day buckets in a zone whose offset differs between that day and
    /// the first row's day). Run again with it as the anchor.
    Reanchor(i64),
}

/// Counters of one pass.
#[derive(Default)]
pub struct PassStats {
    /// Rows aggregated.
    pub rows: u64,
    /// Rows skipped under `--max-bad-rows`.
    pub bad_rows: u64,
    /// Buckets written (counted when the pass ends in [`PassEnd::Done`]).
    pub buckets: u64,
}

/// What a mode does with rows, the one interface between the row loop and a state.
trait Buckets {
    /// Where the fast lane adds rows of one bucket.
    type Lane<'l>: lane::Lane
    where
        Self: 'l;

    /// Adds a parsed row at UTC second `t`, in bucket `key` of `grid`, with `values` (NaN
    /// where missing). `Some(end)` ends the pass early, writing nothing more.
    fn add(
        &mut self,
        grid: &Grid,
        t: i64,
        key: i64,
        values: &[f64],
    ) -> Result<Option<PassEnd>, AggregateError>;

    /// The fast lane's target when it may add rows of bucket `key` (the bucket of the
    /// previous general-path row) and the layout is `time,value`; `None` otherwise.
    fn lane(&mut self, key: i64) -> Option<Self::Lane<'_>>;

    /// Writes what is still to be written (`grid` is `None` when no row was aggregated) and
    /// says how the pass ended, with the number of buckets written.
    fn finish(self, grid: Option<Grid>) -> Result<(PassEnd, u64), AggregateError>;
}

/// Runs one pass in `mode`. `anchor` is the UTC second whose day anchors the bucket grid
/// (default: the first row). `may_reanchor` lets holding mode return
/// [`PassEnd::Reanchor`] instead of writing output anchored to the wrong day.
pub fn pass(
    spec: &Spec,
    records: &mut Records<'_>,
    sink: &mut dyn Sink,
    mode: Mode,
    anchor: Option<i64>,
    may_reanchor: bool,
) -> Result<(PassEnd, PassStats), AggregateError> {
    let layout = header::read(spec, records)?;
    let out = Out {
        sink,
        buf: Vec::with_capacity(128 * 1024),
        dates: DateCache::default(),
    };
    match mode {
        Mode::Streaming => {
            let state = Streaming::new(out, &layout, spec.max_buckets);
            rows_into(spec, records, Rows::new(spec, layout), state, anchor)
        }
        Mode::Holding => {
            // A given anchor is the earliest row's already: no second re-anchoring.
            let state = Holding::new(out, &layout, spec, may_reanchor && anchor.is_none());
            rows_into(spec, records, Rows::new(spec, layout), state, anchor)
        }
    }
}

/// The row loop: every data record into `state`, through the fast lane where it offers one.
fn rows_into<B: Buckets>(
    spec: &Spec,
    records: &mut Records<'_>,
    mut rows: Rows<'_>,
    mut state: B,
    anchor: Option<i64>,
) -> Result<(PassEnd, PassStats), AggregateError> {
    let mut fields = Fields::default();
    let mut grid: Option<Grid> = None;
    let mut window = Window::EMPTY;
    loop {
        if let Some(mut target) = state.lane(window.key) {
            let (delim, max_line) = (spec.delimiter, spec.max_line_bytes);
            let taken = lane::run(records, &rows.cache, window, delim, max_line, &mut target);
            if taken > 0 {
                rows.stats.rows += taken;
                rows.numeric[0] = true;
            }
        }
        let Some(rec) = records.next_record()? else {
            break;
        };
        if rec.bytes.is_empty() {
            continue;
        }
        let t = match rows.parse(rec, &mut fields)? {
            Row::At(t) => t,
            Row::Skip => continue,
        };
        let grid =
            *grid.get_or_insert_with(|| Grid::new(spec.bucket, spec.timezone, anchor.unwrap_or(t)));
        let key = if window.contains(t) {
            window.key
        } else {
            let key = grid.key(t);
            if let Some((lo, hi)) = grid.bounds(key) {
                window = Window { lo, hi, key };
            }
            key
        };
        rows.stats.rows += 1;
        if let Some(end) = state.add(&grid, t, key, &rows.values)? {
            return Ok((end, rows.stats));
        }
    }
    let (end, buckets) = state.finish(grid)?;
    rows.stats.buckets = buckets;
    Ok((end, rows.stats))
}

/// Output buffered in memory and handed to the sink in large writes.
struct Out<'s> {
    sink: &'s mut dyn Sink,
    buf: Vec<u8>,
    /// The last label's date, for the next label of the same day.
    dates: DateCache,
}

impl Out<'_> {
    /// Appends one bucket's output row.
    fn emit(&mut self, grid: &Grid, key: i64, accs: &[Acc]) -> Result<(), AggregateError> {
        grid.push_label(key, &mut self.buf, &mut self.dates);
        output::push_stats(&mut self.buf, accs);
        if self.buf.len() >= 64 * 1024 {
            self.sink.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }

    fn finish(mut self) -> Result<(), AggregateError> {
        self.sink.write_all(&self.buf)?;
        self.sink.flush()?;
        self.buf.clear();
        Ok(())
    }
}
