//! The streaming roll-up reducer: CSV rows in, per-bucket count/mean/std/min/max out.
//!
//! Called by `rollq aggregate` (files, stdin) and by the worker (blobs). Sync and free of
//! async/Azure: it reads a [`Source`] and writes a [`Sink`], so it runs in `spawn_blocking`
//! in the worker and under criterion in the benches.
//!
//! NOTE: this file is the public contract; the implementation is being built.

use std::io::{self, Read, Write};

pub mod args;
pub use args::ReducerArgs;

/// Bucket width.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Bucket {
    Minute1,
    Minute5,
    Minute15,
    Minute30,
    #[default]
    Hour1,
    Hour6,
    Day1,
}

/// Everything that decides the output for a given input (validated settings).
#[derive(Clone, Debug)]
pub struct Spec {
    /// The time column's name; `None` means the first column.
    pub time_column: Option<String>,
    /// Value columns; `None` means every column but the time column.
    pub columns: Option<Vec<String>>,
    pub bucket: Bucket,
    pub delimiter: u8,
    /// A strftime-style format; `None` accepts the documented default forms.
    pub time_format: Option<String>,
    /// Bucket boundaries are computed in this zone; naive timestamps are taken as local to it.
    pub timezone: chrono_tz::Tz,
    pub max_bad_rows: u64,
    pub max_buckets: usize,
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
            max_line_bytes: 1 << 20,
        }
    }
}

impl Spec {
    /// A stable hex digest of every option that changes the output (recorded in the output
    /// blob's metadata so the worker can skip work it has already done).
    pub fn fingerprint(&self) -> String {
        String::new()
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
    fn restart(&mut self) -> io::Result<()>;
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
    Io(#[from] io::Error),
    #[error("the input is empty (zero bytes): expected a CSV header line")]
    EmptyInput,
    /// A problem with the header or the options (unknown column, duplicate names, ...).
    #[error("{0}")]
    Header(String),
    #[error("line {line}: {reason}: {text:?}")]
    BadRow {
        line: u64,
        text: String,
        reason: String,
    },
    #[error(
        "line {line}: column {column:?} is not numeric ({text:?}); choose value columns with --columns"
    )]
    NonNumericColumn {
        column: String,
        line: u64,
        text: String,
    },
    #[error("more than {limit} buckets: raise --max-buckets or use a wider --bucket")]
    TooManyBuckets { limit: usize },
    #[error("line {line} is longer than {limit} bytes (--max-line-bytes)")]
    LineTooLong { line: u64, limit: usize },
}

impl AggregateError {
    /// True when the input itself is at fault (poison it; do not retry).
    pub fn is_input_error(&self) -> bool {
        !matches!(self, AggregateError::Io(_))
    }
}

/// Rolls `source` up into `sink` under `spec`.
pub fn run(
    _spec: &Spec,
    _source: &mut dyn Source,
    _sink: &mut dyn Sink,
) -> Result<Report, AggregateError> {
    Err(AggregateError::Header(
        "the reducer is not built yet".into(),
    ))
}

/// The output blob/file name for an input: `temperature1.csv` → `temperature1_aggregated.csv`
/// (the name without its last extension, after dropping a `.gz`, plus `_aggregated.csv`).
pub fn output_name(input: &str) -> String {
    let base = input.strip_suffix(".gz").unwrap_or(input);
    let stem = match base.rfind('.') {
        Some(dot) if dot > base.rfind('/').map_or(0, |s| s + 1) => &base[..dot],
        _ => base,
    };
    format!("{stem}_aggregated.csv")
}

/// Wraps a reader in a gzip decoder when `name` ends in `.gz`.
pub fn maybe_gunzip<'a>(name: &str, reader: Box<dyn Read + 'a>) -> Box<dyn Read + 'a> {
    if name.ends_with(".gz") {
        Box::new(flate2::read::MultiGzDecoder::new(reader))
    } else {
        reader
    }
}
