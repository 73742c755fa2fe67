//! The streaming roll-up reducer: CSV rows in, per-bucket count/mean/std/min/max out.
//!
//! Called by `rollq aggregate` (files, stdin) and by the worker (blobs). Sync and free of
//! async/Azure: it reads a [`Source`] and writes a [`Sink`], so it runs in `spawn_blocking`
//! in the worker and under criterion in the benches.
//!
//! Semantics and memory model: `docs/reducer.md`. Submodules: `read` (bytes to records and
//! values), `time` (timestamps and the bucket grid), `acc` (the accumulator), `output`
//! (formatting), `reduce` (one streaming or holding pass).

use std::io::{self, Read, Write};
use std::str::FromStr;

pub mod acc;
pub mod args;
#[doc(hidden)]
pub mod bench_support;
mod gzip;
pub mod output;
pub mod read;
mod reduce;
pub mod time;
pub use args::ReducerArgs;
pub use gzip::{gunzip_on_thread, maybe_gunzip, sniff_gunzip};
/// The lane-free reference for the reducer's property tests and fuzz target.
#[doc(hidden)]
pub use reduce::without_fast_lane;

#[cfg(test)]
mod tests;

/// Bucket width.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Bucket {
    /// One minute (`1m`).
    Minute1,
    /// Five minutes (`5m`).
    Minute5,
    /// Fifteen minutes (`15m`).
    Minute15,
    /// Thirty minutes (`30m`).
    Minute30,
    /// One hour (`1h`, the default; pandas `'h'`).
    #[default]
    Hour1,
    /// Six hours (`6h`).
    Hour6,
    /// One day (`1d`; a local calendar day with `--timezone`).
    Day1,
}

impl Bucket {
    /// Every width with its canonical name.
    pub const ALL: [(Bucket, &'static str); 7] = [
        (Bucket::Minute1, "1m"),
        (Bucket::Minute5, "5m"),
        (Bucket::Minute15, "15m"),
        (Bucket::Minute30, "30m"),
        (Bucket::Hour1, "1h"),
        (Bucket::Hour6, "6h"),
        (Bucket::Day1, "1d"),
    ];

    /// Nominal width in seconds (a local day may be 23 or 25 hours long).
    pub fn seconds(self) -> i64 {
        match self {
            Bucket::Minute1 => 60,
            Bucket::Minute5 => 300,
            Bucket::Minute15 => 900,
            Bucket::Minute30 => 1800,
            Bucket::Hour1 => 3600,
            Bucket::Hour6 => 6 * 3600,
            Bucket::Day1 => 86_400,
        }
    }

    /// The canonical name (`1h`).
    pub fn name(self) -> &'static str {
        Bucket::ALL
            .iter()
            .find(|(b, _)| *b == self)
            .map_or("1h", |(_, n)| n)
    }
}

impl FromStr for Bucket {
    type Err = String;

    /// Accepts the canonical names, case-insensitively, plus `60m`, `24h`, `h`, `d`, `min`.
    fn from_str(s: &str) -> Result<Self, String> {
        let lower = s.trim().to_ascii_lowercase();
        let alias = match lower.as_str() {
            "min" | "1min" => "1m",
            "h" | "60m" => "1h",
            "d" | "24h" => "1d",
            other => other,
        };
        Bucket::ALL
            .iter()
            .find(|(_, n)| *n == alias)
            .map(|(b, _)| *b)
            .ok_or_else(|| {
                format!("unknown bucket {s:?}: expected one of 1m, 5m, 15m, 30m, 1h, 6h, 1d")
            })
    }
}

/// Everything that decides the output for a given input (validated settings).
#[derive(Clone, Debug)]
pub struct Spec {
    /// The time column's name; `None` means the first column.
    pub time_column: Option<String>,
    /// Value columns; `None` means every column but the time column.
    pub columns: Option<Vec<String>>,
    /// Bucket width.
    pub bucket: Bucket,
    /// Field delimiter of the input (output is always comma-separated).
    pub delimiter: u8,
    /// A strftime-style format; `None` accepts the documented default forms.
    pub time_format: Option<String>,
    /// Bucket boundaries are computed in this zone; naive timestamps are taken as local to it.
    pub timezone: chrono_tz::Tz,
    /// Unparseable rows that may be skipped (and counted) before the run fails.
    pub max_bad_rows: u64,
    /// Most buckets from the first to the last (output rows).
    pub max_buckets: usize,
    /// Most cells (held buckets × value columns) holding mode keeps in memory at once.
    pub max_held_cells: usize,
    /// Longest record in bytes (line break excluded); bounds the read buffer.
    pub max_line_bytes: usize,
}

impl Default for Spec {
    fn default() -> Self {
        Self {
            time_column: None,
            columns: None,
            bucket: Bucket::Hour1,
            delimiter: b',',
            time_format: None,
            timezone: chrono_tz::UTC,
            max_bad_rows: 0,
            max_buckets: 1_000_000,
            max_held_cells: 1_000_000,
            max_line_bytes: 1 << 20,
        }
    }
}

/// Input bytes the reducer may read more than once: holding mode re-reads from the start.
pub trait Source {
    /// Opens the input from its first byte (decompressed already, if it was gzip).
    fn open(&mut self) -> io::Result<Box<dyn Read + '_>>;
    /// Whether `open` may be called again (false for stdin: holding mode from the start).
    fn can_reopen(&self) -> bool;
}

/// Output bytes; `restart` discards everything written so far (used when streaming mode
/// meets an out-of-order row and the input is read again in holding mode).
pub trait Sink: Write {
    /// Discards everything written so far; the next write starts the output again.
    fn restart(&mut self) -> io::Result<()>;
    /// Whether `restart` works. A sink that cannot restart (stdout) gets holding mode from
    /// the start, so nothing it receives is ever taken back.
    fn can_restart(&self) -> bool {
        true
    }
}

impl Sink for Vec<u8> {
    fn restart(&mut self) -> io::Result<()> {
        self.clear();
        Ok(())
    }
}

/// A [`Source`] over bytes in memory (tests, benches, small blobs).
#[derive(Clone, Debug)]
pub struct BytesSource<'a>(pub &'a [u8]);

impl Source for BytesSource<'_> {
    fn open(&mut self) -> io::Result<Box<dyn Read + '_>> {
        Ok(Box::new(self.0))
    }
    fn can_reopen(&self) -> bool {
        true
    }
}

/// How the output was produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// One pass, buckets written as they closed.
    Streaming,
    /// Buckets held in memory (rows out of order, or a source that cannot be re-read).
    Holding,
}

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Data rows aggregated (bad rows excluded), counted on the pass that produced the output.
    pub rows: u64,
    /// Rows skipped under `max_bad_rows`.
    pub bad_rows: u64,
    /// Output rows (buckets, empty ones included).
    pub buckets: u64,
    /// Input bytes read, over every pass.
    pub bytes_read: u64,
    /// `Some(Mode)` once a run succeeded.
    pub mode: Option<Mode>,
}

/// Why a run failed. Everything but `Io` is a property of the input: retrying cannot help.
#[derive(Debug, thiserror::Error)]
pub enum AggregateError {
    /// Reading the input or writing the output failed (the worker looks inside for a
    /// `StorageError` to decide whether to retry).
    #[error("i/o error: {0}")]
    Io(io::Error),
    /// A `.gz` input that is truncated or corrupt (the decoder's error).
    #[error("the gzip input is truncated or corrupt: {0}")]
    CorruptGzip(String),
    /// The input has no header line (zero bytes, only a byte order mark, or only blank lines).
    #[error(
        "the input is empty: expected a CSV header line (it has zero bytes, or only a byte order mark or blank lines)"
    )]
    EmptyInput,
    /// A problem with the header or the options (unknown column, duplicate names, ...).
    #[error("{0}")]
    Header(String),
    /// A row that cannot be parsed (beyond `--max-bad-rows`).
    #[error("line {line}: {reason}: {text:?}")]
    BadRow {
        line: u64,
        text: String,
        reason: String,
    },
    /// A value column whose first value is not a number (a text column).
    #[error(
        "line {line}: column {column:?} is not numeric ({text:?}); choose value columns with --columns"
    )]
    NonNumericColumn {
        column: String,
        line: u64,
        text: String,
    },
    /// The span from the first to the last bucket exceeds `--max-buckets`; `reached` is the
    /// span (in buckets) of the row that crossed it.
    #[error(
        "the span from the first to the last bucket reached {reached} buckets, more than --max-buckets {limit}: raise --max-buckets or use a wider --bucket"
    )]
    TooManyBuckets { limit: usize, reached: u64 },
    /// Holding mode would hold more than `--max-held-cells` cells (held buckets × value
    /// columns); `reached` is what the row that crossed it would have made it hold.
    #[error(
        "holding mode reached {reached} held cells (buckets × value columns), more than --max-held-cells {limit}: raise --max-held-cells, sort the input by time, or use a wider --bucket"
    )]
    TooManyHeldCells { limit: usize, reached: u64 },
    /// A record exceeds `--max-line-bytes`.
    #[error("line {line} is longer than {limit} bytes: raise --max-line-bytes if it is real data")]
    LineTooLong { line: u64, limit: usize },
}

/// Rolls `source` up into `sink` under `spec`.
///
/// Streams when both sides allow a second attempt (`source.can_reopen()` and
/// `sink.can_restart()`): buckets are written as they close, and the first row for an
/// already-closed bucket restarts the sink and re-reads the source in holding mode. Otherwise
/// holding mode runs from the start. Both modes produce the same bytes.
pub fn run(
    spec: &Spec,
    source: &mut dyn Source,
    sink: &mut dyn Sink,
) -> Result<Report, AggregateError> {
    let mut report = Report::default();
    if source.can_reopen() && sink.can_restart() {
        let mut records = read::Records::new(source.open()?, spec.max_line_bytes);
        let result = reduce::pass(spec, &mut records, sink, Mode::Streaming, None, false);
        report.bytes_read += records.bytes_read;
        drop(records);
        match result? {
            (reduce::PassEnd::Done, stats) => return Ok(finish(report, stats, Mode::Streaming)),
            (reduce::PassEnd::OutOfOrder | reduce::PassEnd::Reanchor(_), _) => {
                tracing::debug!("rows out of order: re-reading the input in holding mode");
                sink.restart()?;
            }
        }
    }
    let mut anchor = None;
    let may_reanchor = source.can_reopen();
    loop {
        let mut records = read::Records::new(source.open()?, spec.max_line_bytes);
        let result = reduce::pass(
            spec,
            &mut records,
            sink,
            Mode::Holding,
            anchor,
            may_reanchor,
        );
        report.bytes_read += records.bytes_read;
        drop(records);
        match result? {
            // pandas anchors sub-day buckets in a zone to the earliest row's local midnight;
            // when that puts boundaries elsewhere than the first row's day did, read again.
            // A source read once keeps the first row's anchor (documented in docs/reducer.md).
            (reduce::PassEnd::Reanchor(earliest), _) => {
                tracing::debug!("re-reading the input with the grid anchored to the earliest row");
                anchor = Some(earliest);
            }
            (_, stats) => return Ok(finish(report, stats, Mode::Holding)),
        }
    }
}

/// Rolls the local file at `path` up into `sink` on up to `threads` threads
/// (`rollq aggregate --threads N`), with the same bytes, report counts and errors as
/// [`run`] over `source` (the same file).
///
/// The file is split at line boundaries into parts of at least a MiB, each reduced on its
/// own thread; `docs/reducer.md` says how the parts are joined. What parallel mode cannot
/// reproduce exactly (a quote after the header, rows out of order, any bad row beyond
/// `--max-bad-rows` or other error, a gzip file) goes to [`run`] before anything is written,
/// so the first error by line number is the one reported, as with one thread.
pub fn run_parallel(
    spec: &Spec,
    path: &std::path::Path,
    threads: usize,
    source: &mut dyn Source,
    sink: &mut dyn Sink,
) -> Result<Report, AggregateError> {
    // Gzip has no seams to split at; its decompression is sequential.
    let gzip = path.to_string_lossy().ends_with(".gz");
    if threads > 1 && !gzip {
        let split = reduce::parallel::Split::Threads(threads);
        if let Some(report) = reduce::parallel::run(spec, path, &split, sink)? {
            return Ok(report);
        }
        tracing::debug!("parallel mode cannot split this input: one thread");
    }
    run(spec, source, sink)
}

/// The threads `--threads` defaults to: the CPUs this process may use (affinity and cgroup
/// quota aware, as `std::thread::available_parallelism` is), 1 when unknown.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

fn finish(mut report: Report, stats: reduce::PassStats, mode: Mode) -> Report {
    report.rows = stats.rows;
    report.bad_rows = stats.bad_rows;
    report.buckets = stats.buckets;
    report.mode = Some(mode);
    report
}
