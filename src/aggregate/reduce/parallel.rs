//! Parallel mode: a local file split at line boundaries, each part reduced on its own
//! thread, the parts' buckets joined in file order. Called by
//! [`run_parallel`](super::super::run_parallel) for `rollq aggregate --threads N`.
//!
//! The output must be byte-identical to the single-threaded pass, and [`Acc`]'s shifted
//! sums are a left fold in floating point (the shift is a bucket's first value), so a bucket
//! that spans a seam cannot be merged from two partial results without changing the last
//! bits. Instead no accumulator is ever merged: each part but the first leaves its first
//! bucket (the *head*) unwritten, and after all threads are done the heads are reduced once
//! more, in file order, continuing the previous part's last accumulator (the *tail*) when it
//! is the same bucket. Every bucket is then the same fold over the same values in the same
//! order as in one pass. The re-read costs one bucket's rows per seam.
//!
//! Whatever parallel mode cannot prove equal to the single-threaded pass it hands back as
//! [`None`] before writing anything, and the caller runs that pass instead: a quote anywhere
//! after the header (a seam could fall inside a quoted field), any error in a part (the
//! single-threaded pass reports the first one by line number, with its text), more bad rows
//! than `--max-bad-rows` in total, rows out of order within or across parts (holding mode),
//! or a span beyond `--max-buckets`. A part's output waits for the join in memory up to
//! [`PART_SPILL`] bytes, and in an unnamed temporary file beyond.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

use memchr::memchr;

use super::super::acc::Acc;
use super::super::read::Records;
use super::super::time::{DateCache, Grid};
use super::super::{AggregateError, Mode, Report, Sink, Spec, output};
use super::header::{self, Layout};
use super::rows::Rows;
use super::{Buckets, Out, PassEnd, rows_into};

/// Smallest part worth a thread: below it, thread start-up and the head re-read cost more
/// than they save (and tiny inputs stay on the well-trodden path).
pub const MIN_PART_BYTES: u64 = 1 << 20;

/// Most output bytes one part keeps in memory until the parts are joined; beyond it, the
/// part's output goes to a temporary file. With the read buffer (256 KiB, up to about twice
/// `--max-line-bytes` for long lines) this bounds a thread's memory.
pub const PART_SPILL: usize = 1 << 20;

/// Longest prefix (byte order mark, blank lines, header) copied in front of every part.
const MAX_PREFIX: u64 = 4 << 20;

/// Where the seams go.
#[derive(Clone, Debug)]
pub enum Split {
    /// Up to this many parts of equal size, each at least [`MIN_PART_BYTES`].
    Threads(usize),
    /// A seam at the first line start at or after each offset, however small the parts
    /// (the property tests place seams anywhere).
    #[cfg_attr(not(test), allow(dead_code))]
    At(Vec<u64>),
}

/// Rolls the file at `path` up into `sink`, one thread per part. `Ok(None)`: nothing was
/// written, run the single-threaded pass (see the module docs for when). `Err` only for a
/// failed write to `sink`.
pub fn run(
    spec: &Spec,
    path: &Path,
    split: &Split,
    sink: &mut dyn Sink,
) -> Result<Option<Report>, AggregateError> {
    // The fast lane's switch is a thread-local (tests turn it off): carry it to the parts.
    let fast = super::lane::enabled();
    let Ok(Some(plan)) = plan(spec, path, split) else {
        return Ok(None);
    };
    let parts: Vec<Result<PartEnd, AggregateError>> = std::thread::scope(|s| {
        let handles: Vec<_> = plan
            .bounds
            .windows(2)
            .enumerate()
            .map(|(i, w)| {
                let plan = &plan;
                let (start, end) = (w[0], w[1]);
                s.spawn(move || run_part(spec, path, plan, start, end, i > 0, fast))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let mut ends = Vec::with_capacity(parts.len());
    for part in parts {
        match part {
            Ok(end) => ends.push(end),
            Err(e) => {
                tracing::debug!(error = %e, "parallel part gave up: one thread instead");
                return Ok(None);
            }
        }
    }
    let Some((pieces, reread)) = join(spec, path, &plan, &ends, fast) else {
        return Ok(None);
    };
    let mut report = write(spec, &plan, &mut ends, pieces, sink)?;
    report.bytes_read += reread;
    Ok(Some(report))
}

/// Where the parts are, and what every part needs to know before it starts.
struct Plan {
    /// The bytes before the first data line: every part's reader starts with them, so each
    /// pass reads (and checks) the same header.
    prefix: Vec<u8>,
    layout: Layout,
    /// The first aggregated row's UTC second: the grid's anchor in every part, as in one
    /// pass (sub-day buckets in a zone start at local midnight of that row's day).
    anchor: i64,
    /// Part `i` is `bounds[i]..bounds[i + 1]`; each bound but the last starts a line.
    bounds: Vec<u64>,
}

/// Reads the header and the first row, and places the seams. `Ok(None)` when the file is
/// too small to split or has no data row.
fn plan(spec: &Spec, path: &Path, split: &Split) -> Result<Option<Plan>, AggregateError> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut records = Records::new(Box::new(file), spec.max_line_bytes);
    let layout = header::read(spec, &mut records)?;
    let header_end = records.bytes_read - records.buffered().len() as u64;
    if header_end > MAX_PREFIX {
        return Ok(None);
    }
    let mut anchor = None;
    let probe = Probe { t: &mut anchor };
    rows_into(spec, &mut records, Rows::new(spec, layout), probe, None)?;
    drop(records);
    let Some(anchor) = anchor else {
        return Ok(None);
    };
    let data = len.saturating_sub(header_end);
    let mut offsets: Vec<u64> = match split {
        Split::Threads(threads) => {
            let n = (*threads as u64).min(data / MIN_PART_BYTES);
            (1..n).map(|k| header_end + data * k / n).collect()
        }
        Split::At(offsets) => offsets.clone(),
    };
    if offsets.is_empty() {
        return Ok(None);
    }
    offsets.sort_unstable();
    let mut file = File::open(path)?;
    let mut prefix = vec![0; header_end as usize];
    file.read_exact(&mut prefix)?;
    let mut bounds = vec![header_end];
    for off in offsets {
        // In order, as the offsets are; a seam that lands on another makes an empty part.
        bounds.push(line_start_after(&mut file, off.max(header_end), len)?);
    }
    bounds.push(len);
    // A second header read: `layout` went into the probe's rows.
    let layout = header::read(
        spec,
        &mut Records::new(Box::new(&prefix[..]), spec.max_line_bytes),
    )?;
    Ok(Some(Plan {
        prefix,
        layout,
        anchor,
        bounds,
    }))
}

/// The offset just after the first `\n` at or after `from` (`len` when there is none).
fn line_start_after(file: &mut File, from: u64, len: u64) -> io::Result<u64> {
    file.seek(SeekFrom::Start(from))?;
    let mut buf = vec![0; 64 * 1024];
    let mut at = from;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(len);
        }
        if let Some(i) = memchr(b'\n', &buf[..n]) {
            return Ok(at + i as u64 + 1);
        }
        at += n as u64;
    }
}

/// What one part found.
struct PartEnd {
    /// Its buckets' output rows: from the second bucket on for every part but the first,
    /// without the last bucket (the tail), empty buckets between included.
    out: Option<PartOut>,
    /// First and last bucket, and the tail's accumulators (`None`: no row in the part).
    span: Option<(i64, i64, Vec<Acc>)>,
    rows: u64,
    bad_rows: u64,
    bytes_read: u64,
}

/// Reduces `start..end` of the file (after the header prefix) into a [`PartEnd`].
fn run_part(
    spec: &Spec,
    path: &Path,
    plan: &Plan,
    start: u64,
    end: u64,
    skip_head: bool,
    fast: bool,
) -> Result<PartEnd, AggregateError> {
    let mut part = PartOut {
        mem: Vec::new(),
        file: None,
    };
    let mut span = None;
    let mut records = open_part(spec, path, plan, start, end)?;
    let layout = header::read(spec, &mut records)?;
    let n_cols = layout.value_idx.len();
    let state = Part {
        out: Out {
            sink: &mut part,
            buf: Vec::with_capacity(64 * 1024),
            dates: DateCache::default(),
        },
        skip_head,
        first: 0,
        current: None,
        open: vec![Acc::default(); n_cols],
        blank: vec![Acc::default(); n_cols],
        limit: spec.max_buckets,
        fast: fast && layout.is_time_value(),
        span: &mut span,
    };
    let (pass_end, stats) = rows_into(
        spec,
        &mut records,
        Rows::new(spec, layout),
        state,
        Some(plan.anchor),
    )?;
    if !matches!(pass_end, PassEnd::Done) {
        return Err(AggregateError::Header("rows out of order".into()));
    }
    let bytes_read = records.bytes_read - plan.prefix.len() as u64;
    drop(records);
    Ok(PartEnd {
        out: Some(part),
        span,
        rows: stats.rows,
        bad_rows: stats.bad_rows,
        bytes_read,
    })
}

/// A reader of the header prefix followed by `start..end` of the file, which fails at the
/// first quote in the file's bytes.
fn open_part<'p>(
    spec: &Spec,
    path: &Path,
    plan: &'p Plan,
    start: u64,
    end: u64,
) -> Result<Records<'p>, AggregateError> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(start))?;
    let body = NoQuotes(file.take(end - start));
    let reader = (&plan.prefix[..]).chain(body);
    Ok(Records::new(Box::new(reader), spec.max_line_bytes))
}

/// One piece of the output, in file order.
enum Piece {
    /// A bucket reduced by [`join`]: a part's head (perhaps continuing the previous tail),
    /// or a tail no later part continued.
    Bucket(i64, Vec<Acc>),
    /// Part `part`'s own output rows, which end just before bucket `upto` (its tail).
    Rows { part: usize, upto: i64 },
}

/// Puts the parts together: every head is folded again in file order, continuing the
/// previous tail when it is the same bucket. `None`: fall back to one thread.
fn join(
    spec: &Spec,
    path: &Path,
    plan: &Plan,
    ends: &[PartEnd],
    fast: bool,
) -> Option<(Vec<Piece>, u64)> {
    let bad: u64 = ends.iter().map(|e| e.bad_rows).sum();
    if bad > spec.max_bad_rows {
        return None;
    }
    let spans: Vec<_> = ends.iter().filter_map(|e| e.span.as_ref()).collect();
    let (first, last) = (spans.first()?.0, spans.last()?.1);
    if last.abs_diff(first) + 1 > spec.max_buckets as u64 {
        return None;
    }
    // Across seams: each part must start at or after the bucket the previous one ended in,
    // or one pass would have met an earlier bucket (holding mode).
    if spans.windows(2).any(|w| w[1].0 < w[0].1) {
        return None;
    }
    let mut pieces = Vec::with_capacity(2 * ends.len() + 1);
    let mut reread = 0;
    // The last bucket so far, still open: its key and accumulators.
    let mut tail: Option<(i64, Vec<Acc>)> = None;
    for (i, end) in ends.iter().enumerate() {
        let Some((head, last, part_tail)) = &end.span else {
            continue;
        };
        if i > 0 {
            let mut accs = match tail.take() {
                Some((key, accs)) if key == *head => accs,
                Some((key, accs)) => {
                    pieces.push(Piece::Bucket(key, accs));
                    vec![Acc::default(); part_tail.len()]
                }
                None => vec![Acc::default(); part_tail.len()],
            };
            let (start, stop) = (plan.bounds[i], plan.bounds[i + 1]);
            reread += continue_head(spec, path, plan, start, stop, *head, &mut accs, fast).ok()?;
            if head == last {
                // The whole part is one bucket: still open, a later part may continue it.
                tail = Some((*head, accs));
                continue;
            }
            pieces.push(Piece::Bucket(*head, accs));
        }
        pieces.push(Piece::Rows {
            part: i,
            upto: *last,
        });
        tail = Some((*last, part_tail.clone()));
    }
    let (key, accs) = tail?;
    pieces.push(Piece::Bucket(key, accs));
    Some((pieces, reread))
}

/// Folds the rows of bucket `key` at the start of `start..stop` into `accs`; returns the
/// bytes of the file it read.
#[allow(clippy::too_many_arguments)]
fn continue_head(
    spec: &Spec,
    path: &Path,
    plan: &Plan,
    start: u64,
    stop: u64,
    key: i64,
    accs: &mut [Acc],
    fast: bool,
) -> Result<u64, AggregateError> {
    let mut records = open_part(spec, path, plan, start, stop)?;
    let layout = header::read(spec, &mut records)?;
    let state = Continue {
        key,
        fast: fast && layout.is_time_value(),
        accs,
    };
    rows_into(
        spec,
        &mut records,
        Rows::new(spec, layout),
        state,
        Some(plan.anchor),
    )?;
    Ok(records.bytes_read - plan.prefix.len() as u64)
}

/// Writes the header and the pieces, with the empty buckets between them.
fn write(
    spec: &Spec,
    plan: &Plan,
    ends: &mut [PartEnd],
    pieces: Vec<Piece>,
    sink: &mut dyn Sink,
) -> Result<Report, AggregateError> {
    let grid = Grid::new(spec.bucket, spec.timezone, plan.anchor);
    let mut out = Out {
        sink,
        buf: Vec::with_capacity(64 * 1024),
        dates: DateCache::default(),
    };
    let layout = &plan.layout;
    output::push_header(&mut out.buf, &layout.time_name, &layout.value_names);
    let blank = vec![Acc::default(); layout.value_idx.len()];
    // The bucket after the last one written.
    let mut next: Option<i64> = None;
    let mut first = None;
    for piece in pieces {
        match piece {
            Piece::Bucket(key, accs) => {
                for empty in next.unwrap_or(key)..key {
                    out.emit(&grid, empty, &blank)?;
                }
                out.emit(&grid, key, &accs)?;
                first.get_or_insert(key);
                next = Some(key + 1);
            }
            Piece::Rows { part, upto } => {
                // A part's rows begin right after what was written before them (its head,
                // or nothing for the first part) and end just before its tail.
                out.sink.write_all(&out.buf)?;
                out.buf.clear();
                if let Some(rows) = ends[part].out.take() {
                    rows.copy_into(out.sink)?;
                }
                if let Some((f, _, _)) = &ends[part].span {
                    first.get_or_insert(*f);
                }
                next = Some(upto);
            }
        }
    }
    out.finish()?;
    let (first, next) = (first.unwrap_or(0), next.unwrap_or(0));
    Ok(Report {
        rows: ends.iter().map(|e| e.rows).sum(),
        bad_rows: ends.iter().map(|e| e.bad_rows).sum(),
        buckets: (next - first) as u64,
        // The header once and the parts (`run` adds the heads' second reading).
        bytes_read: plan.prefix.len() as u64 + ends.iter().map(|e| e.bytes_read).sum::<u64>(),
        mode: Some(Mode::Streaming),
    })
}

#[cfg(test)]
mod tests;

/// Finds the first row's time, then ends the pass.
struct Probe<'a> {
    t: &'a mut Option<i64>,
}

impl Buckets for Probe<'_> {
    type Lane<'l>
        = &'l mut Acc
    where
        Self: 'l;

    fn add(
        &mut self,
        _grid: &Grid,
        t: i64,
        _key: i64,
        _values: &[f64],
    ) -> Result<Option<PassEnd>, AggregateError> {
        *self.t = Some(t);
        Ok(Some(PassEnd::Done))
    }

    fn lane(&mut self, _key: i64) -> Option<&mut Acc> {
        None
    }

    fn finish(self, _grid: Option<Grid>) -> Result<(PassEnd, u64), AggregateError> {
        Ok((PassEnd::Done, 0))
    }
}

/// One part's state: streaming mode's, except that the head bucket is not written when
/// another part precedes this one, and the tail is kept for [`join`] instead of written.
struct Part<'s, 'r> {
    out: Out<'s>,
    skip_head: bool,
    /// The head bucket's key (valid once `current` is `Some`).
    first: i64,
    current: Option<i64>,
    open: Vec<Acc>,
    blank: Vec<Acc>,
    /// `--max-buckets`, checked within the part (and over all parts in [`join`]).
    limit: usize,
    fast: bool,
    /// Where `finish` leaves the first and last key and the tail's accumulators.
    span: &'r mut Option<(i64, i64, Vec<Acc>)>,
}

impl Buckets for Part<'_, '_> {
    type Lane<'l>
        = &'l mut Acc
    where
        Self: 'l;

    #[inline]
    fn add(
        &mut self,
        grid: &Grid,
        _t: i64,
        key: i64,
        values: &[f64],
    ) -> Result<Option<PassEnd>, AggregateError> {
        match self.current {
            Some(k) if k == key => {}
            Some(k) if key > k => {
                let reached = key.abs_diff(self.first) + 1;
                if reached > self.limit as u64 {
                    return Err(AggregateError::TooManyBuckets {
                        limit: self.limit,
                        reached,
                    });
                }
                if !(self.skip_head && k == self.first) {
                    self.out.emit(grid, k, &self.open)?;
                }
                self.open.fill(Acc::default());
                for empty in k + 1..key {
                    self.out.emit(grid, empty, &self.blank)?;
                }
                self.current = Some(key);
            }
            Some(_) => return Ok(Some(PassEnd::OutOfOrder)),
            None => {
                self.first = key;
                self.current = Some(key);
            }
        }
        Acc::push_row(&mut self.open, values);
        Ok(None)
    }

    #[inline(always)]
    fn lane(&mut self, key: i64) -> Option<&mut Acc> {
        if self.fast && self.current == Some(key) {
            Some(&mut self.open[0])
        } else {
            None
        }
    }

    fn finish(self, _grid: Option<Grid>) -> Result<(PassEnd, u64), AggregateError> {
        if let Some(k) = self.current {
            *self.span = Some((self.first, k, self.open));
        }
        self.out.finish()?;
        Ok((PassEnd::Done, 0))
    }
}

/// Continues one bucket's accumulators over the rows at the start of a part, and ends the
/// pass at the first row of another bucket.
struct Continue<'a> {
    key: i64,
    fast: bool,
    accs: &'a mut [Acc],
}

impl Buckets for Continue<'_> {
    type Lane<'l>
        = &'l mut Acc
    where
        Self: 'l;

    #[inline]
    fn add(
        &mut self,
        _grid: &Grid,
        _t: i64,
        key: i64,
        values: &[f64],
    ) -> Result<Option<PassEnd>, AggregateError> {
        if key != self.key {
            return Ok(Some(PassEnd::Done));
        }
        Acc::push_row(self.accs, values);
        Ok(None)
    }

    #[inline(always)]
    fn lane(&mut self, key: i64) -> Option<&mut Acc> {
        if self.fast && key == self.key {
            Some(&mut self.accs[0])
        } else {
            None
        }
    }

    fn finish(self, _grid: Option<Grid>) -> Result<(PassEnd, u64), AggregateError> {
        Ok((PassEnd::Done, 0))
    }
}

/// A part's output: in memory up to [`PART_SPILL`], then in an unnamed temporary file (the
/// seed file's 40 MB of output must not become anonymous memory while the parts run).
struct PartOut {
    mem: Vec<u8>,
    file: Option<File>,
}

impl PartOut {
    /// Copies everything written into `sink` through a bounded buffer.
    fn copy_into(self, sink: &mut dyn Sink) -> io::Result<()> {
        match self.file {
            None => sink.write_all(&self.mem),
            Some(mut file) => {
                file.seek(SeekFrom::Start(0))?;
                let mut buf = vec![0; 256 * 1024];
                loop {
                    match file.read(&mut buf)? {
                        0 => return Ok(()),
                        n => sink.write_all(&buf[..n])?,
                    }
                }
            }
        }
    }
}

impl Write for PartOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.file.is_none() && self.mem.len() + buf.len() > PART_SPILL {
            let mut file = tempfile::tempfile()?;
            file.write_all(&self.mem)?;
            self.mem = Vec::new();
            self.file = Some(file);
        }
        match &mut self.file {
            Some(file) => file.write_all(buf)?,
            None => self.mem.extend_from_slice(buf),
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Sink for PartOut {
    fn restart(&mut self) -> io::Result<()> {
        self.mem.clear();
        if let Some(file) = &mut self.file {
            file.set_len(0)?;
            file.seek(SeekFrom::Start(0))?;
        }
        Ok(())
    }
}

/// The file's bytes of a part; fails at the first quote, because a seam may have fallen
/// inside a quoted field (a line break inside quotes does not end a record), and telling
/// that apart would need the file read from the start.
struct NoQuotes<R>(R);

impl<R: Read> Read for NoQuotes<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.0.read(buf)?;
        if memchr(b'"', &buf[..n]).is_some() {
            return Err(io::Error::other(
                "a quote after the header: parallel mode does not split quoted files",
            ));
        }
        Ok(n)
    }
}
