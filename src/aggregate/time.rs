//! Timestamps and buckets: parsing the time column, converting to UTC seconds, and the bucket
//! grid (which bucket a second falls in, and how a bucket start is printed).
//!
//! Used only by the reducer. Seconds are enough: every bucket width is a whole number of
//! seconds, so a fractional part never changes the bucket.

use chrono::{NaiveDate, NaiveDateTime, Offset, TimeZone};
use chrono_tz::Tz;

use super::Bucket;
use super::read::line_word;

const DAY: i64 = 86_400;

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

/// Appends `secs` (seconds since the epoch, read as wall-clock time) as `YYYY-MM-DD HH:MM:SS`.
pub fn push_datetime(out: &mut Vec<u8>, secs: i64) {
    let (y, m, d) = civil_from_days(secs.div_euclid(DAY));
    let sod = secs.rem_euclid(DAY);
    let (hh, mm, ss) = (sod / 3600, sod / 60 % 60, sod % 60);
    if (0..=9999).contains(&y) {
        let y = y as u32;
        let digits = [
            b'0' + (y / 1000) as u8,
            b'0' + (y / 100 % 10) as u8,
            b'0' + (y / 10 % 10) as u8,
            b'0' + (y % 10) as u8,
        ];
        out.extend_from_slice(&digits);
    } else {
        out.extend_from_slice(format!("{y:04}").as_bytes());
    }
    for (sep, v) in [
        (b'-', m as i64),
        (b'-', d as i64),
        (b' ', hh),
        (b':', mm),
        (b':', ss),
    ] {
        out.extend_from_slice(&[sep, b'0' + (v / 10) as u8, b'0' + (v % 10) as u8]);
    }
}

/// The last day [`push_datetime_cached`] wrote, as its `YYYY-MM-DD` text: consecutive bucket
/// labels share their day (24 hourly buckets a day), so most labels skip the calendar
/// arithmetic. Empty (`None`) until the first label.
#[derive(Clone, Copy, Debug, Default)]
pub struct DateCache(Option<(i64, [u8; 10])>);

/// [`push_datetime`], the date's text taken from `cache` when the day is the same.
pub fn push_datetime_cached(out: &mut Vec<u8>, secs: i64, cache: &mut DateCache) {
    let day = secs.div_euclid(DAY);
    let date = match cache.0 {
        Some((d, text)) if d == day => text,
        _ => {
            let (y, m, d) = civil_from_days(day);
            // Years outside 0..=9999 are not four digits: the general writer.
            if !(0..=9999).contains(&y) {
                return push_datetime(out, secs);
            }
            let two = |v: u32| [b'0' + (v / 10) as u8, b'0' + (v % 10) as u8];
            let y = y as u32;
            let ([y1, y2], [y3, y4], [m1, m2], [d1, d2]) =
                (two(y / 100), two(y % 100), two(m), two(d));
            let text = [y1, y2, y3, y4, b'-', m1, m2, b'-', d1, d2];
            cache.0 = Some((day, text));
            text
        }
    };
    out.extend_from_slice(&date);
    let sod = secs.rem_euclid(DAY);
    let (hh, mm, ss) = (sod / 3600, sod / 60 % 60, sod % 60);
    for (sep, v) in [(b' ', hh), (b':', mm), (b':', ss)] {
        out.extend_from_slice(&[sep, b'0' + (v / 10) as u8, b'0' + (v % 10) as u8]);
    }
}

/// A parsed timestamp: wall-clock seconds (as if UTC) and the offset it carried, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parsed {
    /// Seconds since the epoch of the written date and time, ignoring any offset.
    pub wall: i64,
    /// The written UTC offset in seconds (`Z` is 0); `None` for a naive timestamp.
    pub offset: Option<i32>,
}

fn digits(s: &[u8], at: usize, n: usize) -> Option<u32> {
    let part = s.get(at..at + n)?;
    let mut v = 0u32;
    for &b in part {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u32::from(b - b'0');
    }
    Some(v)
}

/// Parses the default forms: `YYYY-MM-DD`, then optionally `T` or a space, `HH`, `:MM`, `:SS`,
/// a fraction, and `Z` or an offset `±HH`, `±HHMM`, `±HH:MM` (a space before it is allowed).
pub fn parse_default(s: &[u8]) -> Option<Parsed> {
    let (y, mo, d) = (digits(s, 0, 4)?, digits(s, 5, 2)?, digits(s, 8, 2)?);
    if s[4] != b'-' || s[7] != b'-' || !(1..=12).contains(&mo) {
        return None;
    }
    if d == 0 || d > days_in_month(i64::from(y), mo) {
        return None;
    }
    let days = days_from_civil(i64::from(y), mo, d);
    let mut i = 10;
    let mut sod = 0i64;
    if i < s.len()
        && matches!(s[i], b'T' | b't' | b' ')
        && s.get(i + 1).is_some_and(u8::is_ascii_digit)
    {
        let hh = digits(s, i + 1, 2)?;
        // `THH` alone is ISO 8601's reduced precision (pandas accepts it too).
        let hour_only = s.get(i + 3) != Some(&b':');
        let mm = if hour_only { 0 } else { digits(s, i + 4, 2)? };
        i += if hour_only { 3 } else { 6 };
        let mut ss = 0;
        if !hour_only && s.get(i) == Some(&b':') {
            ss = digits(s, i + 1, 2)?;
            i += 3;
            if matches!(s.get(i), Some(b'.' | b',')) {
                i += 1;
                let start = i;
                while s.get(i).is_some_and(u8::is_ascii_digit) {
                    i += 1;
                }
                if i == start {
                    return None;
                }
            }
        }
        if hh > 23 || mm > 59 || ss > 59 {
            return None;
        }
        sod = i64::from(hh * 3600 + mm * 60 + ss);
    }
    if s.get(i) == Some(&b' ') && matches!(s.get(i + 1), Some(b'Z' | b'z' | b'+' | b'-')) {
        i += 1;
    }
    let offset = match s.get(i) {
        None => None,
        Some(b'Z' | b'z') if i + 1 == s.len() => Some(0),
        Some(&sign @ (b'+' | b'-')) => {
            let hh = digits(s, i + 1, 2)?;
            let rest = &s[i + 3..];
            let mm = match rest {
                [] => 0,
                [b':', a, b] | [a, b] => digits(&[*a, *b], 0, 2)?,
                _ => return None,
            };
            if hh > 23 || mm > 59 {
                return None;
            }
            let secs = (hh * 3600 + mm * 60) as i32;
            Some(if sign == b'-' { -secs } else { secs })
        }
        Some(_) => return None,
    };
    Some(Parsed {
        wall: days * DAY + sod,
        offset,
    })
}

/// Parses with a user-supplied chrono strftime format. A format with `%z`-like items gives an
/// offset; a format without a time of day gives midnight.
pub fn parse_with_format(s: &str, format: &str) -> Option<Parsed> {
    if let Ok(dt) = chrono::DateTime::parse_from_str(s, format) {
        return Some(Parsed {
            wall: dt.naive_local().and_utc().timestamp(),
            offset: Some(dt.offset().local_minus_utc()),
        });
    }
    if let Ok(dt) = NaiveDateTime::parse_from_str(s, format) {
        return Some(Parsed {
            wall: dt.and_utc().timestamp(),
            offset: None,
        });
    }
    NaiveDate::parse_from_str(s, format).ok().map(|d| Parsed {
        wall: d.and_time(chrono::NaiveTime::MIN).and_utc().timestamp(),
        offset: None,
    })
}

/// Why a naive local time has no instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Nonexistent;

/// Converts a parsed timestamp to UTC seconds. Naive timestamps are wall-clock time in `tz`:
/// an ambiguous one (the repeated hour when clocks go back) takes the earlier instant, and
/// one inside the gap when clocks go forward does not exist (an error, like pandas).
pub fn to_utc(p: Parsed, tz: Tz) -> Result<i64, Nonexistent> {
    if let Some(off) = p.offset {
        return Ok(p.wall - i64::from(off));
    }
    if tz == chrono_tz::UTC {
        return Ok(p.wall);
    }
    let naive = chrono::DateTime::from_timestamp(p.wall, 0)
        .ok_or(Nonexistent)?
        .naive_utc();
    match tz.from_local_datetime(&naive) {
        chrono::LocalResult::Single(dt) => Ok(dt.timestamp()),
        chrono::LocalResult::Ambiguous(a, b) => Ok(a.timestamp().min(b.timestamp())),
        chrono::LocalResult::None => Err(Nonexistent),
    }
}

/// Local wall-clock seconds of a UTC instant in `tz`.
pub fn to_local(t: i64, tz: Tz) -> i64 {
    if tz == chrono_tz::UTC {
        return t;
    }
    match chrono::DateTime::from_timestamp(t, 0) {
        Some(dt) => {
            let off = tz.offset_from_utc_datetime(&dt.naive_utc()).fix();
            t + i64::from(off.local_minus_utc())
        }
        None => t,
    }
}

/// Remembers the UTC second of `YYYY-MM-DD HH:00:00` for the last 13-byte prefix seen, so the
/// common `YYYY-MM-DD HH:MM:SS` row costs a 13-byte compare and four digits. The same holds
/// for the ISO UTC form `YYYY-MM-DDTHH:MM:SSZ` (20 bytes), which is UTC whatever the zone.
#[derive(Debug, Default)]
pub struct HourCache {
    /// Bytes 0..8 and 5..13 of the cached prefix, as [`word`]s.
    head: u64,
    tail: u64,
    base: i64,
    valid: bool,
    /// The cached hour was written with a trailing `Z` (20 bytes): it is UTC, and only
    /// timestamps with that `Z` share it.
    zulu: bool,
}

impl HourCache {
    /// The length of the timestamps the cached hour matches: 19 (naive), 20 (`…Z`).
    #[inline(always)]
    pub fn stamp_len(&self) -> usize {
        19 + usize::from(self.zulu)
    }

    /// The UTC second of a 19-byte naive `YYYY-MM-DD?HH:MM:SS` (or, when the cached hour is
    /// one, a 20-byte `…Z`) whose hour is cached.
    #[inline]
    pub fn lookup(&self, s: &[u8]) -> Option<i64> {
        let s: &[u8; 19] = match (self.zulu, s) {
            (false, s) => s.try_into().ok()?,
            (true, [s @ .., b'Z']) => s.try_into().ok()?,
            (true, _) => return None,
        };
        // The 13-byte prefix as two overlapping 8-byte words (bytes 0..8 and 5..13): two
        // compares instead of a byte loop.
        if !self.valid || word(s, 0) != self.head || word(s, 5) != self.tail {
            return None;
        }
        let (m1, m0, s1, s0) = (
            s[14].wrapping_sub(b'0'),
            s[15].wrapping_sub(b'0'),
            s[17].wrapping_sub(b'0'),
            s[18].wrapping_sub(b'0'),
        );
        if s[13] != b':' || s[16] != b':' || m1 > 5 || m0 > 9 || s1 > 5 || s0 > 9 {
            return None;
        }
        Some(self.base + i64::from(m1 * 10 + m0) * 60 + i64::from(s1 * 10 + s0))
    }

    /// Caches the hour of `s` (19 bytes, naive, already parsed into `p`) when every second of
    /// that local hour maps to UTC with one and the same offset; or of a 20-byte `…Z` `s`
    /// (always: it is UTC).
    pub fn remember(&mut self, s: &[u8], p: Parsed, tz: Tz) {
        if let ([naive @ .., b'Z'], Some(0)) = (s, p.offset) {
            if let Ok(naive) = <&[u8; 19]>::try_from(naive) {
                (self.head, self.tail) = (word(naive, 0), word(naive, 5));
                self.base = p.wall - p.wall.rem_euclid(3600);
                self.valid = true;
                self.zulu = true;
            }
            return;
        }
        if s.len() != 19 || p.offset.is_some() {
            return;
        }
        let hour = p.wall - p.wall.rem_euclid(3600);
        let start = to_utc(
            Parsed {
                wall: hour,
                offset: None,
            },
            tz,
        );
        let end = to_utc(
            Parsed {
                wall: hour + 3599,
                offset: None,
            },
            tz,
        );
        // An hour that is (even partly) repeated when clocks go back is left to the
        // per-row path, which resolves each second on its own.
        let ambiguous =
            start.ok() != to_utc_latest(hour, tz) || end.ok() != to_utc_latest(hour + 3599, tz);
        match (start, end) {
            (Ok(a), Ok(b)) if b - a == 3599 && !ambiguous => {
                let s: &[u8; 19] = s.try_into().expect("checked: 19 bytes");
                (self.head, self.tail) = (word(s, 0), word(s, 5));
                self.base = a;
                self.valid = true;
                self.zulu = false;
            }
            _ => self.valid = false,
        }
    }
}

/// A valid [`HourCache`] entry, copied out for the fast lane: the lane reads whole 64-byte
/// line windows, so it checks the timestamp, its delimiter and (for `…Z`) the `Z` with three
/// word loads instead of byte by byte. Copied so the loop keeps it in registers.
#[derive(Clone, Copy, Debug)]
pub struct HourKey {
    head: u64,
    tail: u64,
    base: i64,
}

impl HourCache {
    /// The cached hour for the fast lane, and whether it is a `…Z` hour (20-byte stamps);
    /// `None` when nothing is cached (then [`HourCache::lookup`] matches nothing either).
    #[inline(always)]
    pub fn key(&self) -> Option<(HourKey, bool)> {
        self.valid.then_some((
            HourKey {
                head: self.head,
                tail: self.tail,
                base: self.base,
            },
            self.zulu,
        ))
    }
}

impl HourKey {
    /// The UTC second of the line's leading timestamp when its hour is this one and
    /// `delim` follows it: exactly when `lookup(&line[..ts])` is `Some` and
    /// `line[ts] == delim`, for `ts` 19 (naive, `ZULU` false) or 20 (`…Z`, `ZULU` true).
    ///
    /// Bytes 13..21 hold `:MM:SS` and then the delimiter (naive: `:MM:SS,x`) or `Z` and the
    /// delimiter (`:MM:SSZ,`), so one word checks both colons, the four digits with their
    /// ranges (`M` and `S` tens at most 5) and what follows the stamp.
    #[inline(always)]
    pub fn lookup_line<const ZULU: bool>(&self, line: &[u8; 64], delim: u8) -> Option<i64> {
        self.match_line::<ZULU>(line, delim).map(|m| self.second(m))
    }

    /// The first second of the hour.
    #[inline(always)]
    pub fn base(&self) -> i64 {
        self.base
    }

    /// The check of [`HourKey::lookup_line`] without the arithmetic: `Some` (the minutes and
    /// seconds for [`HourKey::second`]) exactly when `lookup_line` is. For a caller that
    /// needs no second when the whole hour is inside its bucket.
    #[inline(always)]
    pub fn match_line<const ZULU: bool>(&self, line: &[u8; 64], delim: u8) -> Option<MinSec> {
        if line_word(line, 0) != self.head || line_word(line, 5) != self.tail {
            return None;
        }
        // XOR with the expected bytes (digits as `0`) leaves 0 in every separator byte, the
        // digit's value in every digit byte, and something larger wherever a byte is wrong.
        let expected = u64::from_le_bytes(if ZULU {
            [b':', b'0', b'0', b':', b'0', b'0', b'Z', delim]
        } else {
            [b':', b'0', b'0', b':', b'0', b'0', delim, 0]
        });
        let x = line_word(line, 13) ^ expected;
        // Per byte, adding `0x7F - limit` to the low seven bits sets bit 7 exactly when they
        // exceed the limit (0 for separators, 5 for tens, 9 for units), with no carry into
        // the next byte (at most 0x7F + 0x7F); OR-ing the byte itself catches those with bit
        // 7 set. A naive stamp's byte 7 is the value's first byte: not checked.
        let (low7, high) = if ZULU {
            (0x7F7F_7F7F_7F7F_7F7F_u64, 0x8080_8080_8080_8080_u64)
        } else {
            (0x007F_7F7F_7F7F_7F7F, 0x0080_8080_8080_8080)
        };
        let limits = u64::from_le_bytes([0x7F, 0x7A, 0x76, 0x7F, 0x7A, 0x76, 0x7F, 0x7F]) & low7;
        if (((x & low7) + limits) | x) & high != 0 {
            return None;
        }
        Some(MinSec(x & 0x00FF_FFFF_FFFF_FFFF))
    }

    /// The UTC second of a stamp that [`HourKey::match_line`] accepted.
    #[inline(always)]
    pub fn second(&self, m: MinSec) -> i64 {
        // Every byte is 0 but the four digits. Tens times ten plus units lands in bytes 1
        // (minutes) and 4 (seconds); every byte stays below 100, so no carries.
        let d = m.0;
        let pairs = d * 10 + (d >> 8);
        let minutes = (pairs >> 8) & 0xFF;
        let seconds = (pairs >> 32) & 0xFF;
        self.base + (minutes * 60 + seconds) as i64
    }
}

/// A matched stamp's minute and second digits (bytes 14, 15, 17, 18 as values 0..=9 in
/// bytes 1, 2, 4, 5 of the word; every other byte 0).
#[derive(Clone, Copy, Debug)]
pub struct MinSec(u64);

/// Bytes `at..at + 8` of a timestamp as one little-endian word.
#[inline(always)]
fn word(s: &[u8; 19], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&s[at..at + 8]);
    u64::from_le_bytes(w)
}

fn to_utc_latest(wall: i64, tz: Tz) -> Option<i64> {
    if tz == chrono_tz::UTC {
        return Some(wall);
    }
    let naive = chrono::DateTime::from_timestamp(wall, 0)?.naive_utc();
    match tz.from_local_datetime(&naive) {
        chrono::LocalResult::Single(dt) => Some(dt.timestamp()),
        chrono::LocalResult::Ambiguous(a, b) => Some(a.timestamp().max(b.timestamp())),
        chrono::LocalResult::None => None,
    }
}

/// Which bucket a UTC second belongs to, as an integer key; consecutive buckets have
/// consecutive keys.
#[derive(Clone, Copy, Debug)]
pub enum Grid {
    /// Buckets of `width` seconds from `origin` (a UTC second). Sub-day buckets, and days in
    /// UTC. As in pandas (`origin='start_day'`), the origin is local midnight of the first
    /// row's day and steps are absolute, so a 6h grid keeps its phase across a DST change.
    Fixed { width: i64, origin: i64, tz: Tz },
    /// Local calendar days in a zone other than UTC (23 or 25 hours long across DST), keyed
    /// by local days since 1970-01-01; pandas bins `'D'` the same way.
    LocalDays { tz: Tz },
}

impl Grid {
    /// The grid for a run whose first row falls at UTC second `first`.
    pub fn new(bucket: Bucket, tz: Tz, first: i64) -> Grid {
        let width = bucket.seconds();
        if tz == chrono_tz::UTC {
            return Grid::Fixed {
                width,
                origin: 0,
                tz,
            };
        }
        if bucket == Bucket::Day1 {
            return Grid::LocalDays { tz };
        }
        let local = to_local(first, tz);
        let midnight = local - local.rem_euclid(DAY);
        // Local midnight may not exist (zones that change clocks at 00:00): take the first
        // existing hour of that day, which is where such a day begins.
        let origin = (0..24)
            .find_map(|h| {
                to_utc(
                    Parsed {
                        wall: midnight + h * 3600,
                        offset: None,
                    },
                    tz,
                )
                .ok()
            })
            .unwrap_or(first);
        Grid::Fixed { width, origin, tz }
    }

    /// Whether both grids put bucket boundaries at the same instants (keys may differ).
    pub fn same_phase(&self, other: &Grid) -> bool {
        match (*self, *other) {
            (Grid::Fixed { width, origin, .. }, Grid::Fixed { origin: o2, .. }) => {
                (origin - o2).rem_euclid(width) == 0
            }
            _ => true,
        }
    }

    /// The bucket key of a UTC second.
    #[inline]
    pub fn key(&self, t: i64) -> i64 {
        match *self {
            Grid::Fixed { width, origin, .. } => (t - origin).div_euclid(width),
            Grid::LocalDays { tz } => to_local(t, tz).div_euclid(DAY),
        }
    }

    /// The UTC seconds `[start, end)` of a fixed-width bucket (`None` for local days), so a
    /// caller can skip the division for the many rows that fall in the same bucket.
    #[inline]
    pub fn bounds(&self, key: i64) -> Option<(i64, i64)> {
        match *self {
            Grid::Fixed { width, origin, .. } => {
                Some((origin + key * width, origin + (key + 1) * width))
            }
            Grid::LocalDays { .. } => None,
        }
    }

    /// Appends the bucket start as local `YYYY-MM-DD HH:MM:SS` (pandas' label with its UTC
    /// offset dropped).
    pub fn push_label(&self, key: i64, out: &mut Vec<u8>, dates: &mut DateCache) {
        match *self {
            Grid::Fixed { width, origin, tz } => {
                push_datetime_cached(out, to_local(origin + key * width, tz), dates)
            }
            Grid::LocalDays { .. } => push_datetime_cached(out, key * DAY, dates),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_round_trip() {
        for z in [-800_000, -719_468, -1, 0, 1, 59, 11_016, 2_932_896] {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
        assert_eq!(
            days_from_civil(2000, 3, 1) - days_from_civil(2000, 2, 28),
            2
        );
        assert_eq!(civil_from_days(0), (1970, 1, 1));
    }

    #[test]
    fn default_forms() {
        let base = days_from_civil(2024, 2, 29) * DAY;
        let naive = |wall| Some(Parsed { wall, offset: None });
        assert_eq!(parse_default(b"2024-02-29"), naive(base));
        assert_eq!(parse_default(b"2024-02-29 13:05"), naive(base + 47_100));
        // Hour only (ISO 8601 reduced precision), as pandas' ISO8601 parser reads it.
        assert_eq!(parse_default(b"2024-02-29T13"), naive(base + 46_800));
        assert_eq!(
            parse_default(b"2024-02-29 13+05:30"),
            Some(Parsed {
                wall: base + 46_800,
                offset: Some(19_800)
            })
        );
        assert_eq!(parse_default(b"2024-02-29T13:05:07"), naive(base + 47_107));
        assert_eq!(
            parse_default(b"2024-02-29T13:05:07.125"),
            naive(base + 47_107)
        );
        assert_eq!(
            parse_default(b"2024-02-29T13:05:07Z"),
            Some(Parsed {
                wall: base + 47_107,
                offset: Some(0)
            })
        );
        assert_eq!(
            parse_default(b"2024-02-29 13:05:07.5-05:30")
                .unwrap()
                .offset,
            Some(-19_800)
        );
        assert_eq!(
            parse_default(b"2024-02-29 13:05:07+0100").unwrap().offset,
            Some(3600)
        );
        assert_eq!(
            parse_default(b"2024-02-29 13:05:07 +01").unwrap().offset,
            Some(3600)
        );
        for bad in [
            &b"2023-02-29 00:00:00"[..],
            b"2024-13-01",
            b"2024-01-01 24:00:00",
            b"2024-01-01 10:00:00x",
            b"2024-01-01 10:00:00.",
            b"2024-01-01 10:0",
            b"2024-01-01 10x",
            b"2024-01-01 1",
            b"24-01-01",
            b"",
            b"hello",
        ] {
            assert_eq!(
                parse_default(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn hour_cache_agrees_with_parser() {
        let tz: Tz = "Europe/Berlin".parse().unwrap();
        let mut cache = HourCache::default();
        let a = b"2021-06-01 10:00:00";
        cache.remember(a, parse_default(a).unwrap(), tz);
        let b = b"2021-06-01 10:59:31";
        assert_eq!(cache.lookup(b), to_utc(parse_default(b).unwrap(), tz).ok());
        assert_eq!(cache.lookup(b"2021-06-01 11:00:00"), None);
        assert_eq!(cache.lookup(b"2021-06-01 10:60:00"), None);
        // The repeated hour when clocks go back is never cached.
        let c = b"2021-10-31 02:10:00";
        cache.remember(c, parse_default(c).unwrap(), tz);
        assert_eq!(cache.lookup(c), None);
    }

    #[test]
    fn hour_cache_takes_utc_z_stamps_whatever_the_zone() {
        let tz: Tz = "Europe/Berlin".parse().unwrap();
        let mut cache = HourCache::default();
        let a = b"2021-10-31T02:10:00Z"; // a repeated local hour in Berlin, but this is UTC
        cache.remember(a, parse_default(a).unwrap(), tz);
        assert_eq!(cache.stamp_len(), 20);
        for s in [&b"2021-10-31T02:59:59Z"[..], b"2021-10-31T02:00:00Z", a] {
            assert_eq!(cache.lookup(s), to_utc(parse_default(s).unwrap(), tz).ok());
            assert!(cache.lookup(s).is_some());
        }
        // The naive form of the same hour is local time: never the Z hour's seconds.
        assert_eq!(cache.lookup(b"2021-10-31T02:10:00"), None);
        assert_eq!(cache.lookup(b"2021-10-31T02:10:00+"), None);
        assert_eq!(cache.lookup(b"2021-10-31T03:10:00Z"), None);
        // A naive hour replaces it, and then Z stamps miss.
        let b = b"2021-06-01 10:00:00";
        cache.remember(b, parse_default(b).unwrap(), tz);
        assert_eq!(cache.stamp_len(), 19);
        assert_eq!(cache.lookup(b"2021-06-01 10:00:00Z"), None);
        assert_eq!(cache.lookup(b), to_utc(parse_default(b).unwrap(), tz).ok());
    }

    #[test]
    fn naive_local_times() {
        let tz: Tz = "Europe/Berlin".parse().unwrap();
        let gap = parse_default(b"2021-03-28 02:30:00").unwrap();
        assert_eq!(to_utc(gap, tz), Err(Nonexistent));
        let twice = parse_default(b"2021-10-31 02:30:00").unwrap();
        // The earlier of 00:30 and 01:30 UTC.
        assert_eq!(to_utc(twice, tz), Ok(twice.wall - 7200));
    }

    #[test]
    fn local_day_grid_spans_dst() {
        let tz: Tz = "Europe/Berlin".parse().unwrap();
        let t = |s: &[u8]| to_utc(parse_default(s).unwrap(), tz).unwrap();
        let grid = Grid::new(Bucket::Day1, tz, t(b"2021-03-27 12:00:00"));
        assert_eq!(
            grid.key(t(b"2021-03-28 00:00:00")),
            grid.key(t(b"2021-03-28 23:59:59"))
        );
        assert_eq!(
            grid.key(t(b"2021-03-29 00:00:00")),
            grid.key(t(b"2021-03-28 00:00:00")) + 1
        );
        let mut label = Vec::new();
        grid.push_label(
            grid.key(t(b"2021-03-28 05:00:00")),
            &mut label,
            &mut DateCache::default(),
        );
        assert_eq!(label, b"2021-03-28 00:00:00");
    }
}
