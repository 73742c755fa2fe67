//! The general path for one data row: splits a record into fields, parses its timestamp and
//! values, and applies `--max-bad-rows`. Called by [`super::pass`]'s row loop for every row
//! the fast lane does not take; it touches no bucket.

use std::ops::Range;

use super::super::read::{self, Record, Value};
use super::super::time::{self, HourCache};
use super::super::{AggregateError, Spec};
use super::PassStats;
use super::header::Layout;

/// A row's outcome before it touches any bucket.
pub(super) enum Row {
    /// Aggregate [`Rows::values`] into the bucket at this UTC second.
    At(i64),
    /// Skipped (blank line, or a bad row under `--max-bad-rows`).
    Skip,
}

/// Per-row state shared by both modes.
pub(super) struct Rows<'a> {
    spec: &'a Spec,
    pub layout: Layout,
    /// Timestamps of the last hour parsed (the fast lane reads it too).
    pub cache: HourCache,
    /// Whether each value column has produced a number yet (to tell a text column from a bad
    /// value in a numeric column).
    pub numeric: Vec<bool>,
    /// The last row's values, NaN where missing.
    pub values: Vec<f64>,
    pub stats: PassStats,
}

/// Reused buffers for splitting records into fields (no allocation per row).
#[derive(Default)]
pub(super) struct Fields {
    ranges: Vec<Range<usize>>,
    /// The unquoted bytes of a quoted record (`ranges` index into them).
    quoted_backing: Vec<u8>,
}

impl<'a> Rows<'a> {
    pub fn new(spec: &'a Spec, layout: Layout) -> Self {
        let n_cols = layout.value_idx.len();
        Rows {
            spec,
            layout,
            cache: HourCache::default(),
            numeric: vec![false; n_cols],
            values: vec![0.0; n_cols],
            stats: PassStats::default(),
        }
    }

    /// Splits and parses a non-blank record into [`Rows::values`] and a UTC second.
    ///
    /// Always inlined into the row loop, as the code was before it had a name: a call would
    /// return the large `Result` through memory on every row (holding mode took 7 % more
    /// instructions that way).
    #[inline(always)]
    pub fn parse(&mut self, rec: Record<'_>, fields: &mut Fields) -> Result<Row, AggregateError> {
        let backing: &[u8] = if rec.quoted {
            match read::split_quoted(rec.bytes, self.spec.delimiter, &mut fields.ranges) {
                Ok(b) => {
                    fields.quoted_backing = b;
                    &fields.quoted_backing
                }
                Err(e) => return self.bad(rec.line, rec.bytes, format!("malformed CSV ({e})")),
            }
        } else {
            read::split_plain(rec.bytes, self.spec.delimiter, &mut fields.ranges);
            rec.bytes
        };
        self.row(rec.line, backing, &fields.ranges)
    }

    fn bad(&mut self, line: u64, text: &[u8], reason: String) -> Result<Row, AggregateError> {
        if self.stats.bad_rows < self.spec.max_bad_rows {
            self.stats.bad_rows += 1;
            return Ok(Row::Skip);
        }
        let reason = if self.spec.max_bad_rows == 0 {
            format!("{reason} (to skip such rows, set --max-bad-rows)")
        } else {
            format!(
                "{reason} (more than --max-bad-rows {} bad rows)",
                self.spec.max_bad_rows
            )
        };
        Err(AggregateError::BadRow {
            line,
            text: excerpt(text),
            reason,
        })
    }

    /// Parses the fields of one record into `self.values` and a UTC second.
    #[inline(always)]
    fn row(
        &mut self,
        line: u64,
        backing: &[u8],
        fields: &[Range<usize>],
    ) -> Result<Row, AggregateError> {
        // A short row is what pandas reads with NaN for the absent trailing fields, so it is
        // accepted as long as it reaches the time column; an overlong row is an error there.
        if fields.len() > self.layout.n_fields || fields.len() <= self.layout.time_idx {
            return self.bad(
                line,
                backing,
                format!(
                    "expected {} fields, found {}",
                    self.layout.n_fields,
                    fields.len()
                ),
            );
        }
        let raw = &backing[fields[self.layout.time_idx].clone()];
        let cell = read::trim(raw);
        let t = match self.cache.lookup(cell) {
            Some(t) => t,
            None => match self.parse_time(cell) {
                Ok(t) => t,
                Err(reason) => return self.bad(line, raw, reason),
            },
        };
        for (c, &i) in self.layout.value_idx.iter().enumerate() {
            let cell = fields.get(i).map_or(&b""[..], |f| &backing[f.clone()]);
            self.values[c] = match read::parse_value(cell) {
                Value::Number(v) => v,
                Value::Missing => f64::NAN,
                Value::Bad if !self.numeric[c] => {
                    return Err(AggregateError::NonNumericColumn {
                        column: self.layout.value_names[c].clone(),
                        line,
                        text: excerpt(cell),
                    });
                }
                Value::Bad => {
                    let reason = format!("not a number in column {:?}", self.layout.value_names[c]);
                    return self.bad(line, cell, reason);
                }
            };
        }
        for (c, v) in self.values.iter().enumerate() {
            if !v.is_nan() {
                self.numeric[c] = true;
            }
        }
        Ok(Row::At(t))
    }

    #[cold]
    fn parse_time(&mut self, cell: &[u8]) -> Result<i64, String> {
        let tz = self.spec.timezone;
        let parsed = match &self.spec.time_format {
            None => time::parse_default(cell),
            Some(f) => std::str::from_utf8(cell)
                .ok()
                .and_then(|s| time::parse_with_format(s, f)),
        };
        let Some(parsed) = parsed else {
            let hint = match &self.spec.time_format {
                None => "expected YYYY-MM-DD HH:MM:SS or ISO 8601; see --time-format".to_string(),
                Some(f) => format!("does not match --time-format {f:?}"),
            };
            return Err(format!(
                "cannot parse the timestamp in column {:?} ({hint})",
                self.layout.time_name
            ));
        };
        let t = time::to_utc(parsed, tz).map_err(|_| {
            format!(
                "the local time does not exist in {} (skipped by a clock change; --timezone)",
                tz.name()
            )
        })?;
        if self.spec.time_format.is_none() {
            self.cache.remember(cell, parsed, tz);
        }
        Ok(t)
    }
}

const MAX_TEXT: usize = 120;

/// Shortens offending text for an error message (on a character boundary).
fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    if text.chars().count() <= MAX_TEXT {
        return text.into_owned();
    }
    let cut: String = text.chars().take(MAX_TEXT).collect();
    format!("{cut}…")
}
