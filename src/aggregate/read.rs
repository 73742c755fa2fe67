//! Bytes to records: splits the input into CSV records and fields, and parses values.
//!
//! Why hand-rolled: a general CSV parser (the `csv` crate) copies every field into a record
//! and runs a byte-at-a-time state machine, which tops out far below the 1 GB/s target. The
//! common shape (`YYYY-MM-DD HH:MM:SS,16.7`, no quotes) only needs `memchr` over a large
//! buffer to find line ends and delimiters, so that is the fast path. Any record containing a
//! quote goes to the `csv` crate, which handles quoting, escaped quotes and line breaks
//! inside quotes; a property test keeps the two paths agreeing.

use std::io::{self, Read};
use std::ops::Range;

use memchr::{memchr, memchr_iter};

use super::AggregateError;

const INITIAL_BUFFER: usize = 256 * 1024;

/// One record: where it starts and its bytes (line break excluded).
#[derive(Debug)]
pub struct Record<'a> {
    /// 1-based line number of the record's first line in the input.
    pub line: u64,
    /// The record's bytes, without the trailing `\n` or `\r\n`.
    pub bytes: &'a [u8],
    /// Whether the record contains a quote (and needs the general parser).
    pub quoted: bool,
}

/// Reads records from a byte stream with a bounded buffer.
pub struct Records<'r> {
    inner: Box<dyn Read + 'r>,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
    next_line: u64,
    max_line: usize,
    /// Bytes read from `inner` so far.
    pub bytes_read: u64,
    /// Quote cache: `buf[q_from..q_to]` was searched and its first quote is at `q_pos`
    /// (`q_pos == q_to` when there is none), so quote-free lines cost no extra scan.
    q_from: usize,
    q_to: usize,
    q_pos: usize,
}

impl<'r> Records<'r> {
    /// Wraps a reader; records longer than `max_line` bytes are an error.
    pub fn new(inner: Box<dyn Read + 'r>, max_line: usize) -> Self {
        Records {
            inner,
            buf: vec![0; INITIAL_BUFFER.min(max_line.saturating_add(2)).max(64)],
            start: 0,
            end: 0,
            eof: false,
            next_line: 1,
            max_line,
            bytes_read: 0,
            q_from: 0,
            q_to: 0,
            q_pos: 0,
        }
    }

    /// Whether `buf[from..to]` holds a quote (absolute indices, `from >= self.start`).
    #[inline]
    fn quote_in(&mut self, from: usize, to: usize) -> bool {
        if from >= self.q_from && from <= self.q_pos {
            if self.q_pos < self.q_to {
                return self.q_pos < to;
            }
            if to <= self.q_to {
                return false;
            }
        }
        self.q_from = from;
        self.q_to = self.end;
        self.q_pos = memchr(b'"', &self.buf[from..self.end]).map_or(self.end, |i| from + i);
        self.q_pos < to
    }

    /// The buffered, not yet consumed input (for the reducer's fast lane).
    #[inline]
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Consumes `n` buffered bytes that the caller parsed as `lines` whole lines, line breaks
    /// included.
    #[inline]
    pub fn consume_lines(&mut self, n: usize, lines: u64) {
        debug_assert!(self.start + n <= self.end);
        self.start += n;
        self.next_line += lines;
    }

    /// Strips a UTF-8 byte order mark at the very start of the input.
    pub fn skip_bom(&mut self) -> Result<(), AggregateError> {
        while self.end - self.start < 3 && !self.eof {
            self.fill()?;
        }
        if self.buf[self.start..self.end].starts_with(b"\xEF\xBB\xBF") {
            self.start += 3;
        }
        Ok(())
    }

    /// Reads more input, making room first; `Ok(false)` at end of input.
    fn fill(&mut self) -> io::Result<bool> {
        if self.eof {
            return Ok(false);
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            // Shift a valid cache window that survives the move (`q_from <= q_pos <= q_to`);
            // the reset state `(1, 0, 0)` is not one, and shifting it would underflow.
            if self.q_from >= self.start && self.q_from <= self.q_to {
                self.q_from -= self.start;
                self.q_to -= self.start;
                self.q_pos -= self.start;
            } else {
                // Forces a fresh search next time (`q_pos < from` for any `from > 0`).
                (self.q_from, self.q_to, self.q_pos) = (1, 0, 0);
            }
            self.start = 0;
        }
        if self.end == self.buf.len() {
            // The buffer only grows while one record does not fit; the caller's line limit
            // bounds it to about twice `max_line`.
            let grown =
                (self.buf.len() * 2).min(self.max_line.saturating_add(2).max(self.buf.len() + 1));
            self.buf.resize(grown, 0);
        }
        loop {
            match self.inner.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(false);
                }
                Ok(n) => {
                    self.end += n;
                    self.bytes_read += n as u64;
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The next record, or `None` at end of input.
    #[inline]
    pub fn next_record(&mut self) -> Result<Option<Record<'_>>, AggregateError> {
        // Fast path: a complete, quote-free line in the buffer.
        if let Some(i) = memchr(b'\n', &self.buf[self.start..self.end]) {
            let nl = self.start + i;
            if !self.quote_in(self.start, nl) {
                let mut bytes = &self.buf[self.start..nl];
                if let [rest @ .., b'\r'] = bytes {
                    bytes = rest;
                }
                if bytes.len() > self.max_line {
                    return Err(AggregateError::LineTooLong {
                        line: self.next_line,
                        limit: self.max_line,
                    });
                }
                let line = self.next_line;
                self.next_line += 1;
                self.start = nl + 1;
                return Ok(Some(Record {
                    line,
                    bytes,
                    quoted: false,
                }));
            }
        }
        self.next_record_slow()
    }

    /// Records with quotes, records across a buffer refill, and the last record.
    fn next_record_slow(&mut self) -> Result<Option<Record<'_>>, AggregateError> {
        // `scan` is where the search for the record's end resumes after a refill; quote parity
        // says whether that position is inside a quoted field.
        let mut scan = 0usize;
        let mut in_quotes = false;
        let mut quoted = false;
        let (len, consumed) = loop {
            let avail = &self.buf[self.start..self.end];
            let mut found = None;
            let mut pos = scan;
            while let Some(i) = memchr(b'\n', &avail[pos..]) {
                let nl = pos + i;
                let segment = &avail[pos..nl];
                if memchr(b'"', segment).is_some() {
                    quoted = true;
                    let quotes = memchr_iter(b'"', segment).count();
                    in_quotes ^= quotes % 2 == 1;
                }
                if !in_quotes {
                    found = Some(nl);
                    break;
                }
                pos = nl + 1;
            }
            if let Some(nl) = found {
                break (nl, nl + 1);
            }
            // Not complete yet: remember how far we looked (quote parity included).
            let tail = &avail[pos..];
            if memchr(b'"', tail).is_some() {
                // Parity of a partial segment is recounted after the refill.
                scan = pos;
            } else {
                scan = avail.len();
            }
            let pending = avail.len();
            if pending > self.max_line.saturating_add(1) {
                return Err(AggregateError::LineTooLong {
                    line: self.next_line,
                    limit: self.max_line,
                });
            }
            if !self.fill()? {
                let avail = &self.buf[self.start..self.end];
                if avail.is_empty() {
                    return Ok(None);
                }
                if memchr(b'"', &avail[scan.min(avail.len())..]).is_some() {
                    quoted = true;
                }
                break (avail.len(), avail.len());
            }
        };
        let record_start = self.start;
        let mut bytes = &self.buf[record_start..record_start + len];
        if let [rest @ .., b'\r'] = bytes {
            bytes = rest;
        }
        if bytes.len() > self.max_line {
            return Err(AggregateError::LineTooLong {
                line: self.next_line,
                limit: self.max_line,
            });
        }
        let line = self.next_line;
        self.next_line += 1 + memchr_iter(b'\n', bytes).count() as u64;
        self.start += consumed;
        Ok(Some(Record {
            line,
            bytes,
            quoted,
        }))
    }
}

/// Splits an unquoted record at `delim` into byte ranges.
#[inline]
pub fn split_plain(bytes: &[u8], delim: u8, out: &mut Vec<Range<usize>>) {
    out.clear();
    let mut start = 0;
    if bytes.len() <= 64 {
        // Short lines (the common shape): a plain loop beats setting up a SIMD search.
        for (i, &b) in bytes.iter().enumerate() {
            if b == delim {
                out.push(start..i);
                start = i + 1;
            }
        }
    } else {
        for i in memchr_iter(delim, bytes) {
            out.push(start..i);
            start = i + 1;
        }
    }
    out.push(start..bytes.len());
}

/// Splits a record with quotes using the `csv` crate; returns the unquoted fields' bytes
/// (concatenated) and their ranges.
pub fn split_quoted(
    bytes: &[u8],
    delim: u8,
    out: &mut Vec<Range<usize>>,
) -> Result<Vec<u8>, String> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .delimiter(delim)
        .flexible(true)
        .from_reader(bytes);
    let mut record = csv::ByteRecord::new();
    match reader.read_byte_record(&mut record) {
        Ok(true) => {}
        Ok(false) => {
            out.clear();
            out.push(0..0);
            return Ok(Vec::new());
        }
        Err(e) => return Err(e.to_string()),
    }
    out.clear();
    out.extend((0..record.len()).filter_map(|i| record.range(i)));
    Ok(record.as_slice().to_vec())
}

/// Trims ASCII spaces and tabs on both sides.
#[inline]
pub fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// A value cell.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    /// A number.
    Number(f64),
    /// Empty, or one of pandas' default missing markers (`NaN`, `nan`, `NA`, `null`, ...).
    Missing,
    /// Not a number.
    Bad,
}

/// The strings pandas `read_csv` reads as missing by default.
const MISSING: [&[u8]; 18] = [
    b"#N/A",
    b"#N/A N/A",
    b"#NA",
    b"-1.#IND",
    b"-1.#QNAN",
    b"-NaN",
    b"-nan",
    b"1.#IND",
    b"1.#QNAN",
    b"<NA>",
    b"N/A",
    b"NA",
    b"NULL",
    b"NaN",
    b"None",
    b"n/a",
    b"nan",
    b"null",
];

const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// Parses a value cell (surrounding spaces allowed).
///
/// Fast path: `-?digits[.digits]` with at most 15 significant digits. The digits form an
/// integer below 2^53 and the scale is a power of ten up to 1e22, both exact in f64, so one
/// IEEE division is correctly rounded (Clinger's fast path). Anything else goes to
/// `str::parse::<f64>`, which is correctly rounded too.
#[inline]
pub fn parse_value(cell: &[u8]) -> Value {
    let s = trim(cell);
    if s.is_empty() {
        return Value::Missing;
    }
    match parse_simple(s) {
        Some((v, used)) if used == s.len() => Value::Number(v),
        _ => slow_value(s),
    }
}

/// The fast path of [`parse_value`]: parses `-?digits[.digits]` with at most 15 digits up to
/// the first byte that cannot belong to it, and returns the value and the bytes used (`None`
/// when there are no digits or too many). No spaces: the caller trims, or checks what follows.
///
/// One function for both callers: [`parse_value`] wants the whole cell (it checks that the
/// length used is the cell's), the reducer's fast lane a prefix of the buffered line.
#[inline(always)]
pub fn parse_simple(s: &[u8]) -> Option<(f64, usize)> {
    let neg = s.first() == Some(&b'-');
    let mut i = usize::from(neg);
    let mut mantissa: u64 = 0;
    // Two digit loops, before and after the point, rather than one loop that also asks
    // "is this the point?" per byte: fewer branches per digit (about 4 instructions per
    // value byte fewer under callgrind). A second point ends the number, as before.
    let int_from = i;
    while let Some(d) = s.get(i).map(|b| b.wrapping_sub(b'0')).filter(|&d| d <= 9) {
        mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(d));
        i += 1;
    }
    let mut n_digits = i - int_from;
    let mut frac_digits = 0;
    if s.get(i) == Some(&b'.') {
        i += 1;
        let frac_from = i;
        while let Some(d) = s.get(i).map(|b| b.wrapping_sub(b'0')).filter(|&d| d <= 9) {
            mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(d));
            i += 1;
        }
        frac_digits = i - frac_from;
        n_digits += frac_digits;
    }
    if n_digits == 0 || n_digits > 15 {
        return None;
    }
    let m = mantissa as f64;
    let v = if frac_digits == 0 {
        m
    } else {
        m / POW10[frac_digits]
    };
    Some((if neg { -v } else { v }, i))
}

/// The value and line break of a fast-lane line: `-?digits[.digits]` at `AT`, then `\n` or
/// `\r\n`. Returns the value, where the value ends (the line break's index) and where the
/// next line starts, or says that the value needs [`parse_line_value_wide`]. Together they
/// give `None` exactly when [`parse_simple`] on `line[AT..]` is `None` or the byte after what
/// it used is no line break (the property tests hold them to that).
///
/// SWAR, as in the One Billion Row Challenge. The common value (sign, digits and point in at
/// most 7 bytes, like `-12.5`) and its line break sit in one 8-byte word: a byte-mask trick
/// finds the point and the value's end, the point is squeezed out, and three multiplies
/// combine the digits. Longer values are left to the caller, so that the loop around
/// this one calls nothing (a call would cost it the accumulator's registers). The value is the same
/// formula on the same mantissa as [`parse_simple`]'s, `mantissa / 10^frac_digits`, so the
/// same bits.
#[inline(always)]
pub fn parse_line_value<const AT: usize>(line: &[u8; 64]) -> LineValue {
    // A sign moves the word one byte on: one more load for negative values only.
    let neg = line[AT] == b'-';
    let at = AT + usize::from(neg);
    let w = line_word(line, at);
    let mut unused = ValueShape::NONE;
    parse_line_value_at::<AT>(line, neg, at, w, &mut unused)
}

/// [`parse_line_value`] from the word `w` at `at` (after the sign, if `neg`); notes the
/// value's shape in `shape` when it and its line break fit the word.
#[inline(always)]
fn parse_line_value_at<const AT: usize>(
    line: &[u8; 64],
    neg: bool,
    at: usize,
    w: u64,
    shape: &mut ValueShape,
) -> LineValue {
    let x = w ^ ZEROS;
    let non_digits = non_digits(x);
    if non_digits == 0 {
        return LineValue::Wide;
    }
    let first = (non_digits.trailing_zeros() / 8) as usize;
    // The digits with the point squeezed out, how many bytes they take (at most 7), where
    // the value ends, and how many digits follow the point.
    let (digits, len, end, frac_len) = if (w >> (8 * first)) as u8 == b'.' {
        // Bytes before the point (`first` is at most 7, so no shift overflows).
        let before = (1u64 << (8 * first)) - 1;
        let after = non_digits & !(before << 8 | 0xFF);
        if after == 0 {
            return LineValue::Wide;
        }
        let end = (after.trailing_zeros() / 8) as usize;
        // The fraction's digits moved down one byte, over the point.
        let digits = (x & before) | ((x >> 8) & !before);
        (digits, end - 1, end, end - first - 1)
    } else {
        (x, first, first, 0)
    };
    if len == 0 {
        return LineValue::Invalid;
    }
    let next = match (w >> (8 * end)) as u8 {
        b'\n' => end + 1,
        b'\r' if line[at + end + 1] == b'\n' => end + 2,
        _ => return LineValue::Invalid,
    };
    // `len` is 1..=7 here, so the shift is 8..=56.
    let shift = 64 - 8 * len as u32;
    let mantissa = digits_value_at_top(digits << shift);
    let m = mantissa as i64 as f64;
    // At most 6 digits after the point in one word.
    let v = if frac_len == 0 {
        m
    } else {
        m / POW10[frac_len & 7]
    };
    // The line break's last byte is `next - 1`: in this word, or no shape to remember.
    if next <= 8 {
        let point = (frac_len > 0 || end > first).then_some(first);
        *shape = ValueShape::new(w, point, end, next, shift, frac_len);
    }
    LineValue::Parsed(if neg { -v } else { v }, at + end, at + next)
}

/// The layout of the last value [`parse_line_value`] read in one word, after any sign: where
/// its digits, point and line break are. Most files write every value alike (`dd.d` in the
/// seed), so the next value is first checked against it with one masked compare, and its
/// digits combined with the offsets known, instead of searching for the point and the end.
#[derive(Clone, Copy, Debug)]
pub struct ValueShape {
    /// The bytes expected: `0` at digits, the point and the line break themselves.
    pattern: u64,
    /// The low seven bits of every byte checked (the value and its line break).
    low7: u64,
    /// `0x7F - limit` of every byte checked: 9 at digits, 0 where the byte is exact.
    limits: u64,
    /// Bit 7 of every byte checked.
    high: u64,
    /// The bytes before the point (all bytes when there is none).
    before: u64,
    /// The left shift that puts the digits, the point squeezed out, at the top of a word.
    shift: u32,
    /// `10^digits after the point` (1 without a fraction: dividing by it changes nothing).
    scale: f64,
    /// From the value's first digit byte to its line break, and to the next line.
    end: usize,
    next: usize,
}

impl ValueShape {
    /// Matches no value: bit 7 of byte 0 is set whatever the byte.
    pub const NONE: ValueShape = ValueShape {
        pattern: 0,
        low7: 0,
        limits: 0x80,
        high: 0x80,
        before: 0,
        shift: 0,
        scale: 1.0,
        end: 0,
        next: 0,
    };

    /// The shape of the value in `w`: digits up to `end` but at `point`, the line break at
    /// `end..next` (`next` at most 8), the digits put at the top by `shift`.
    #[inline(always)]
    fn new(
        w: u64,
        point: Option<usize>,
        end: usize,
        next: usize,
        shift: u32,
        frac_len: usize,
    ) -> Self {
        // Bytes 0..next; `next` is 1..=8.
        let keep = u64::MAX >> (64 - 8 * next);
        let mut exact = keep & !((1u64 << (8 * end)) - 1);
        let mut before = u64::MAX;
        if let Some(p) = point {
            exact |= 0xFF << (8 * p);
            before = (1u64 << (8 * p)) - 1;
        }
        ValueShape {
            pattern: (ZEROS & !exact) | (w & exact),
            low7: 0x7F7F_7F7F_7F7F_7F7F & keep,
            limits: ((0x7676_7676_7676_7676 & !exact) | (0x7F7F_7F7F_7F7F_7F7F & exact)) & keep,
            high: 0x8080_8080_8080_8080 & keep,
            before,
            shift,
            scale: POW10[frac_len],
            end,
            next,
        }
    }
}

/// [`parse_line_value`] with the last value's shape tried first: the same answers, whatever
/// `shape` holds (it is only ever a shape that [`parse_line_value`] saw), and `shape`
/// updated when the value has another one.
#[inline(always)]
pub fn parse_line_value_shaped<const AT: usize>(
    line: &[u8; 64],
    shape: &mut ValueShape,
) -> LineValue {
    let neg = line[AT] == b'-';
    let at = AT + usize::from(neg);
    let w = line_word(line, at);
    // As for the timestamp: XOR with the expected bytes leaves digits 0..=9 and exact bytes
    // 0, and one masked add finds any byte out of its range.
    let y = w ^ shape.pattern;
    if (((y & shape.low7) + shape.limits) | y) & shape.high == 0 {
        let digits = (y & shape.before) | ((y >> 8) & !shape.before);
        let m = digits_value_at_top(digits << shape.shift) as i64 as f64;
        let v = m / shape.scale;
        return LineValue::Parsed(if neg { -v } else { v }, at + shape.end, at + shape.next);
    }
    parse_line_value_at::<AT>(line, neg, at, w, shape)
}

/// What [`parse_line_value`] found.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LineValue {
    /// The value, the line break's index and the next line's start.
    Parsed(f64, usize, usize),
    /// More than one word to look at: [`parse_line_value_wide`] decides.
    Wide,
    /// No value followed by a line break.
    Invalid,
}

/// `mantissa / 10^frac_len`, negated for `neg`: [`parse_simple`]'s formula. The mantissa
/// has at most 15 digits, so it converts to f64 exactly through i64 (one instruction,
/// where u64 takes several).
#[inline(always)]
fn scaled(mantissa: u64, frac_len: usize, neg: bool) -> f64 {
    let m = mantissa as i64 as f64;
    let v = if frac_len == 0 {
        m
    } else {
        m / POW10[frac_len]
    };
    if neg { -v } else { v }
}

/// [`parse_line_value`] for values longer than one word: one word for the integer part
/// and one for the fraction, or [`parse_simple`] for parts of 8 digits or more. The same
/// contract for any line (`None`: no value and line break).
#[inline(never)]
pub fn parse_line_value_wide<const AT: usize>(line: &[u8; 64]) -> Option<(f64, usize, usize)> {
    let neg = line[AT] == b'-';
    let int_at = AT + usize::from(neg);
    let int = line_word(line, int_at) ^ ZEROS;
    let int_len = first_non_digit(int);
    if int_len == 8 {
        return parse_line_value_slow::<AT>(line);
    }
    let (mantissa, frac_len, end) = if line[int_at + int_len] == b'.' {
        let frac_at = int_at + int_len + 1;
        let frac = line_word(line, frac_at) ^ ZEROS;
        let frac_len = first_non_digit(frac);
        if frac_len == 8 {
            return parse_line_value_slow::<AT>(line);
        }
        let m = digits_value(int, int_len) * POW10_U64[frac_len] + digits_value(frac, frac_len);
        (m, frac_len, frac_at + frac_len)
    } else {
        (digits_value(int, int_len), 0, int_at + int_len)
    };
    if int_len + frac_len == 0 {
        return None;
    }
    let next = match line[end] {
        b'\n' => end + 1,
        b'\r' if line[end + 1] == b'\n' => end + 2,
        _ => return None,
    };
    Some((scaled(mantissa, frac_len, neg), end, next))
}

/// [`parse_line_value`] for values with a part of 8 digits or more: [`parse_simple`] and a
/// byte check of the line break.
#[cold]
fn parse_line_value_slow<const AT: usize>(line: &[u8; 64]) -> Option<(f64, usize, usize)> {
    let (v, len) = parse_simple(&line[AT..])?;
    let end = AT + len;
    // `end` is below 64 - 1: at most a sign, 15 digits and a point after `AT` (at most 21).
    let next = match line[end] {
        b'\n' => end + 1,
        b'\r' if line[end + 1] == b'\n' => end + 2,
        _ => return None,
    };
    Some((v, end, next))
}

/// `b'0'` in every byte: XOR maps digits to 0..=9 and every other byte above 9.
const ZEROS: u64 = 0x3030_3030_3030_3030;

const POW10_U64: [u64; 8] = [1, 10, 100, 1000, 10_000, 100_000, 1_000_000, 10_000_000];

/// Bytes `at..at + 8` of a line window as one little-endian word (the first byte lowest).
/// The fast lane's stamp check (`time::HourCache`) reads its words the same way.
#[inline(always)]
pub(super) fn line_word(line: &[u8; 64], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&line[at..at + 8]);
    u64::from_le_bytes(w)
}

/// Bit 7 of every byte of `x` (a word XOR [`ZEROS`]) that is no digit. Adding 0x76 to a
/// byte's low seven bits sets bit 7 when they exceed 9 (no carry into the next byte); OR-ing
/// the byte itself catches bytes with bit 7 already set.
#[inline(always)]
fn non_digits(x: u64) -> u64 {
    (((x & 0x7F7F_7F7F_7F7F_7F7F) + 0x7676_7676_7676_7676) | x) & 0x8080_8080_8080_8080
}

/// How many leading bytes of `x` (a word XOR [`ZEROS`]) are digits, 0..=8.
#[inline(always)]
fn first_non_digit(x: u64) -> usize {
    (non_digits(x).trailing_zeros() / 8) as usize
}

/// The number written by the first `len` (0..=7) bytes of `x`, digits 0..=9 each, first
/// byte most significant. Shifting them to the top leaves zero bytes below as leading
/// zeros; then pairs, quads and the halves are combined (Lemire's 8-digit multiply trick).
#[inline(always)]
fn digits_value(x: u64, len: usize) -> u64 {
    x.checked_shl(64 - 8 * len as u32)
        .map_or(0, digits_value_at_top)
}

/// The 8-digit number in `v`, one digit 0..=9 a byte, first byte most significant.
#[inline(always)]
fn digits_value_at_top(v: u64) -> u64 {
    let v = (v.wrapping_mul(10 << 8 | 1) >> 8) & 0x00FF_00FF_00FF_00FF;
    let v = (v.wrapping_mul(100 << 16 | 1) >> 16) & 0x0000_FFFF_0000_FFFF;
    v.wrapping_mul(10_000 << 32 | 1) >> 32
}

#[cold]
fn slow_value(s: &[u8]) -> Value {
    if MISSING.contains(&s) {
        return Value::Missing;
    }
    match std::str::from_utf8(s)
        .ok()
        .and_then(|t| t.parse::<f64>().ok())
    {
        // `NAN`, `+nan`, `nAn` parse as NaN in Rust but are text to pandas (only the markers
        // above are missing), so they are not numbers. Infinities (`inf`, `-Infinity`,
        // `1e400`) are numbers to both.
        Some(v) if v.is_nan() => Value::Bad,
        Some(v) => Value::Number(v),
        None => Value::Bad,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(input: &[u8], max_line: usize) -> Result<Vec<(u64, String, bool)>, AggregateError> {
        let mut r = Records::new(Box::new(input), max_line);
        r.skip_bom()?;
        let mut out = Vec::new();
        while let Some(rec) = r.next_record()? {
            out.push((
                rec.line,
                String::from_utf8_lossy(rec.bytes).into_owned(),
                rec.quoted,
            ));
        }
        Ok(out)
    }

    #[test]
    fn lines_crlf_bom_and_quoted_breaks() {
        let got = records(b"\xEF\xBB\xBFa,b\r\n\"x\ny\",1\n\nlast", 100).unwrap();
        assert_eq!(
            got,
            vec![
                (1, "a,b".into(), false),
                (2, "\"x\ny\",1".into(), true),
                (4, "".into(), false),
                (5, "last".into(), false),
            ]
        );
    }

    #[test]
    fn long_lines_are_an_error() {
        assert!(records(b"a,b\n0123456789\n", 10).is_ok());
        match records(b"a,b\n0123456789A\n", 10) {
            Err(AggregateError::LineTooLong { line: 2, limit: 10 }) => {}
            other => panic!("{other:?}"),
        }
        // With no newline at all, the reader stops at the limit instead of buffering on.
        let endless = std::io::repeat(b'x').take(10 << 20);
        let mut r = Records::new(Box::new(endless), 1000);
        assert!(matches!(
            r.next_record(),
            Err(AggregateError::LineTooLong { line: 1, .. })
        ));
        assert!(r.bytes_read < 1 << 20, "read {}", r.bytes_read);
    }

    #[test]
    fn values() {
        assert_eq!(parse_value(b"16.7"), Value::Number(16.7));
        assert_eq!(parse_value(b" -0.5 "), Value::Number(-0.5));
        assert_eq!(parse_value(b"1e3"), Value::Number(1000.0));
        assert_eq!(
            parse_value(b"1234567890.123456789"),
            Value::Number("1234567890.123456789".parse().unwrap())
        );
        assert_eq!(parse_value(b".5"), Value::Number(0.5));
        assert_eq!(parse_value(b"+2"), Value::Number(2.0));
        for missing in [&b""[..], b"  ", b"NaN", b"nan", b"NA", b"null"] {
            assert_eq!(parse_value(missing), Value::Missing);
        }
        // pandas reads these as infinities.
        for (text, v) in [
            (&b"inf"[..], f64::INFINITY),
            (b"-Infinity", f64::NEG_INFINITY),
            (b"+INF", f64::INFINITY),
            (b"1e400", f64::INFINITY),
        ] {
            assert_eq!(parse_value(text), Value::Number(v), "{text:?}");
        }
        // NaN spellings outside pandas' marker list are text to pandas.
        for bad in [
            &b"abc"[..],
            b"1.2.3",
            b"-",
            b"12a",
            b".",
            b"NAN",
            b"+nan",
            b"nAn",
        ] {
            assert_eq!(parse_value(bad), Value::Bad, "{bad:?}");
        }
    }
}
