//! One pass over the input: header, rows, buckets, output.
//!
//! Streaming mode writes each bucket as soon as a later one starts and keeps one bucket in
//! memory; it gives up (returns [`PassEnd::OutOfOrder`]) at the first row for an earlier
//! bucket. Holding mode keeps every bucket of the span in a dense array, bounded by
//! `--max-buckets`, and writes them all at the end.

use std::ops::Range;

use chrono_tz::Tz;

use super::acc::Acc;
use super::read::{self, Records, Value};
use super::time::{self, Grid, HourCache};
use super::{AggregateError, Mode, Sink, Spec, output};

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
    /// Buckets written.
    pub buckets: u64,
}

/// Where the time and value columns are.
struct Layout {
    n_fields: usize,
    time_idx: usize,
    value_idx: Vec<usize>,
    value_names: Vec<String>,
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

fn header_layout(spec: &Spec, names: &[String]) -> Result<(String, Layout), AggregateError> {
    let err = |m: String| Err(AggregateError::Header(m));
    let listed = || names.join(", ");
    for (i, n) in names.iter().enumerate() {
        if names[..i].contains(n) {
            return err(format!(
                "the header names column {n:?} twice (columns: {})",
                listed()
            ));
        }
    }
    let time_idx = match &spec.time_column {
        None => 0,
        Some(t) => match names.iter().position(|n| n == t) {
            Some(i) => i,
            None => {
                return err(format!(
                    "time column {t:?} (--time-column) is not in the header; columns: {}",
                    listed()
                ));
            }
        },
    };
    let value_idx: Vec<usize> = match &spec.columns {
        None => (0..names.len()).filter(|&i| i != time_idx).collect(),
        Some(cols) => {
            let mut idx = Vec::new();
            for c in cols {
                match names.iter().position(|n| n == c) {
                    Some(i) if i == time_idx => {
                        return err(format!(
                            "column {c:?} is the time column; it cannot also be a value column (--columns)"
                        ));
                    }
                    Some(i) if idx.contains(&i) => {
                        return err(format!("column {c:?} is listed twice in --columns"));
                    }
                    Some(i) => idx.push(i),
                    None => {
                        return err(format!(
                            "column {c:?} (--columns) is not in the header; columns: {}",
                            listed()
                        ));
                    }
                }
            }
            idx
        }
    };
    if value_idx.is_empty() {
        return err(format!(
            "no value column: the header has only the time column {:?}",
            names[time_idx]
        ));
    }
    let value_names = value_idx.iter().map(|&i| names[i].clone()).collect();
    Ok((
        names[time_idx].clone(),
        Layout {
            n_fields: names.len(),
            time_idx,
            value_idx,
            value_names,
        },
    ))
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
    /// the `limit`-bucket span) when the key is outside it.
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

/// Output buffered in memory and handed to the sink in large writes.
struct Out<'s> {
    sink: &'s mut dyn Sink,
    buf: Vec<u8>,
}

impl Out<'_> {
    fn flush_if_full(&mut self) -> Result<(), AggregateError> {
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

/// Per-row state.
struct Pass<'a> {
    spec: &'a Spec,
    time_name: String,
    tz: Tz,
    layout: Layout,
    grid: Option<Grid>,
    cache: HourCache,
    /// Whether each value column has produced a number yet (to tell a text column from a bad
    /// value in a numeric column).
    numeric: Vec<bool>,
    values: Vec<f64>,
    stats: PassStats,
}

/// A row's outcome before it touches any bucket.
enum Row {
    /// Aggregate into the bucket at this UTC second.
    At(i64),
    /// Skipped (blank line, or a bad row under `--max-bad-rows`).
    Skip,
}

impl Pass<'_> {
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
        let column = || format!("column {:?}", self.time_name);
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
                "cannot parse the timestamp in {} ({hint})",
                column()
            ));
        };
        let t = time::to_utc(parsed, self.tz).map_err(|_| {
            format!(
                "the local time does not exist in {} (skipped by a clock change; --timezone)",
                self.tz.name()
            )
        })?;
        if self.spec.time_format.is_none() {
            self.cache.remember(cell, parsed, self.tz);
        }
        Ok(t)
    }
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
    records.skip_bom()?;
    let mut fields: Vec<Range<usize>> = Vec::new();
    // Header: the first non-blank record.
    let names: Vec<String> = loop {
        let Some(rec) = records.next_record()? else {
            return Err(AggregateError::EmptyInput);
        };
        if rec.bytes.is_empty() {
            continue;
        }
        let backing = if rec.quoted {
            read::split_quoted(rec.bytes, spec.delimiter, &mut fields).map_err(|e| {
                AggregateError::Header(format!("line {}: cannot read the header: {e}", rec.line))
            })?
        } else {
            read::split_plain(rec.bytes, spec.delimiter, &mut fields);
            rec.bytes.to_vec()
        };
        // Names are echoed into the output header, so they must be text: a header that is
        // not UTF-8 (a Latin-1 export, a binary file) is refused rather than mangled.
        break fields
            .iter()
            .map(|r| {
                std::str::from_utf8(read::trim(&backing[r.clone()]))
                    .map(str::to_owned)
                    .map_err(|_| {
                        AggregateError::Header(format!(
                            "line {}: the header is not valid UTF-8 (convert the file to UTF-8): {:?}",
                            rec.line,
                            String::from_utf8_lossy(rec.bytes)
                        ))
                    })
            })
            .collect::<Result<_, _>>()?;
    };
    let (time_name, layout) = header_layout(spec, &names)?;
    let n_cols = layout.value_idx.len();
    let mut out = Out {
        sink,
        buf: Vec::with_capacity(128 * 1024),
    };
    // Holding mode writes nothing before the end (it may still decide to re-anchor).
    if mode == Mode::Streaming {
        output::push_header(&mut out.buf, &time_name, &layout.value_names);
    }
    let value_names = layout.value_names.clone();
    // The earliest row (holding mode): pandas anchors sub-day grids to its day.
    let mut earliest: Option<i64> = None;
    let mut p = Pass {
        spec,
        time_name: time_name.clone(),
        tz: spec.timezone,
        numeric: vec![false; n_cols],
        values: vec![0.0; n_cols],
        layout,
        grid: None,
        cache: HourCache::default(),
        stats: PassStats::default(),
    };
    let limit = spec.max_buckets;

    // Streaming state: the open bucket and the first key (for the span limit).
    let mut current: Option<i64> = None;
    let mut first_key = 0i64;
    let mut open = vec![Acc::default(); n_cols];
    let blank = vec![Acc::default(); n_cols];
    // Holding state.
    let mut held: Option<Held> = None;

    // The last fixed-width bucket's bounds: most rows land in the same bucket as the previous.
    let (mut key_lo, mut key_hi, mut key_hit) = (1i64, 0i64, 0i64);
    // The fast lane: for the common two-column `time,value` layout in streaming mode, a row
    // whose timestamp hits the hour cache, whose value is a plain decimal and whose bucket is
    // the open one skips field splitting and the general checks. It only takes rows the
    // general path would treat identically; everything else falls through to it.
    let fast_lane = mode == Mode::Streaming
        && p.layout.n_fields == 2
        && p.layout.time_idx == 0
        && p.layout.value_idx == [1];
    let delim = spec.delimiter;
    let mut quoted_backing;
    let max_line = spec.max_line_bytes;
    loop {
        // The fast lane works straight on the read buffer: a line it accepts has a cached
        // 19-byte timestamp in the open bucket, the delimiter, a plain decimal and a line
        // break, so it holds no quote and needs no newline search. It stops at anything else
        // (and near the end of the buffer), leaving the line to the general path.
        if fast_lane && current == Some(key_hit) {
            loop {
                let rest = records.buffered();
                if rest.len() < 64 || rest[19] != delim {
                    break;
                }
                let Some(t) = p.cache.lookup(&rest[..19]) else {
                    break;
                };
                if t < key_lo || t >= key_hi {
                    break;
                }
                let Some((v, len)) = read::parse_simple(&rest[20..]) else {
                    break;
                };
                let end = 20 + len;
                let consumed = match rest[end] {
                    b'\n' => end + 1,
                    b'\r' if rest.get(end + 1) == Some(&b'\n') => end + 2,
                    _ => break,
                };
                if end > max_line {
                    break;
                }
                records.consume_line(consumed);
                p.stats.rows += 1;
                p.numeric[0] = true;
                open[0].push(v);
            }
        }
        let Some(rec) = records.next_record()? else {
            break;
        };
        if rec.bytes.is_empty() {
            continue;
        }
        let backing: &[u8] = if rec.quoted {
            match read::split_quoted(rec.bytes, spec.delimiter, &mut fields) {
                Ok(b) => {
                    quoted_backing = b;
                    &quoted_backing
                }
                Err(e) => {
                    let (line, bytes) = (rec.line, rec.bytes);
                    p.bad(line, bytes, format!("malformed CSV ({e})"))?;
                    continue;
                }
            }
        } else {
            read::split_plain(rec.bytes, spec.delimiter, &mut fields);
            rec.bytes
        };
        let t = match p.row(rec.line, backing, &fields)? {
            Row::At(t) => t,
            Row::Skip => continue,
        };
        let grid = *p
            .grid
            .get_or_insert_with(|| Grid::new(spec.bucket, spec.timezone, anchor.unwrap_or(t)));
        let key = if t >= key_lo && t < key_hi {
            key_hit
        } else {
            let k = grid.key(t);
            if let Some((lo, hi)) = grid.bounds(k) {
                (key_lo, key_hi, key_hit) = (lo, hi, k);
            }
            k
        };
        p.stats.rows += 1;
        if mode == Mode::Streaming {
            match current {
                Some(k) if k == key => {}
                Some(k) if key > k => {
                    if key.abs_diff(first_key) >= limit as u64 {
                        return Err(AggregateError::TooManyBuckets { limit });
                    }
                    emit(&mut out, &grid, k, &open)?;
                    open.fill(Acc::default());
                    for empty in k + 1..key {
                        emit(&mut out, &grid, empty, &blank)?;
                    }
                    p.stats.buckets += (key - k) as u64;
                    current = Some(key);
                }
                Some(_) => return Ok((PassEnd::OutOfOrder, p.stats)),
                None => {
                    first_key = key;
                    current = Some(key);
                }
            }
            for (acc, &v) in open.iter_mut().zip(&p.values) {
                if !v.is_nan() {
                    acc.push(v);
                }
            }
            continue;
        }
        // Holding mode.
        earliest = Some(earliest.map_or(t, |e| e.min(t)));
        let h = held.get_or_insert_with(|| Held {
            n_cols,
            base: key,
            accs: vec![Acc::default(); n_cols],
            min: key,
            max: key,
        });
        let accs = h.slot(key, limit)?;
        for (acc, &v) in accs.iter_mut().zip(&p.values) {
            if !v.is_nan() {
                acc.push(v);
            }
        }
    }
    if let Some(grid) = p.grid {
        match mode {
            Mode::Streaming => {
                if let Some(k) = current {
                    emit(&mut out, &grid, k, &open)?;
                    p.stats.buckets += 1;
                }
            }
            Mode::Holding => {
                if may_reanchor
                    && anchor.is_none()
                    && let Some(e) = earliest
                    && !grid.same_phase(&Grid::new(spec.bucket, spec.timezone, e))
                {
                    return Ok((PassEnd::Reanchor(e), p.stats));
                }
                output::push_header(&mut out.buf, &time_name, &value_names);
                if let Some(h) = &held {
                    for key in h.min..=h.max {
                        let at = (key - h.base) as usize * n_cols;
                        emit(&mut out, &grid, key, &h.accs[at..at + n_cols])?;
                    }
                    p.stats.buckets += (h.max - h.min + 1) as u64;
                }
            }
        }
    }
    if mode == Mode::Holding && p.grid.is_none() {
        // Header-only input: no grid, no buckets, just the header.
        output::push_header(&mut out.buf, &time_name, &value_names);
    }
    out.finish()?;
    Ok((PassEnd::Done, p.stats))
}

fn emit(out: &mut Out<'_>, grid: &Grid, key: i64, accs: &[Acc]) -> Result<(), AggregateError> {
    grid.push_label(key, &mut out.buf);
    output::push_stats(&mut out.buf, accs);
    out.flush_if_full()
}
