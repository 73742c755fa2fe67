//! The fast lane: for the common two-column `time,value` layout, parses lines straight from
//! the read buffer into one bucket's accumulator, skipping field splitting and the general
//! checks. Called by [`super::pass`]'s row loop before each record, for whichever state
//! (streaming or holding) offers a [`Lane`] for the bucket of the previous row.
//!
//! It only takes rows the general path would treat identically; it stops at anything else
//! and leaves the line to the general path.

use super::super::acc::Acc;
use super::super::read::{self, Records};
use super::super::time::HourCache;

/// Where the fast lane puts a row it takes: one bucket's accumulator of the only value
/// column. A state may also note the row's time (holding mode tracks the earliest row).
pub(super) trait Lane {
    /// Adds a row at UTC second `t` with the (non-missing) value `v`.
    fn push(&mut self, t: i64, v: f64);
}

/// Streaming mode's lane: the open bucket's accumulator, nothing else to note.
impl Lane for &mut Acc {
    #[inline(always)]
    fn push(&mut self, _t: i64, v: f64) {
        Acc::push(self, v);
    }
}

/// The UTC seconds `[lo, hi)` of the bucket `key` that the last general-path row fell in
/// (fixed-width grids only; empty until then and for local days). Most rows land in the same
/// bucket as the previous one, so a hit saves the key's division, and it is the one bucket
/// the fast lane fills.
#[derive(Clone, Copy)]
pub(super) struct Window {
    pub lo: i64,
    pub hi: i64,
    pub key: i64,
}

impl Window {
    /// Matches no second.
    pub const EMPTY: Window = Window {
        lo: 1,
        hi: 0,
        key: 0,
    };

    #[inline(always)]
    pub fn contains(&self, t: i64) -> bool {
        t >= self.lo && t < self.hi
    }
}

/// Takes lines from the front of the buffer while each one is `<cached 19-byte
/// timestamp><delim><plain decimal><line break>` with the timestamp inside `window`, and
/// returns how many it took.
///
/// A line it accepts holds no quote and needs no newline search. It stops at anything else,
/// and within 64 bytes of the buffer's end (so every index below is in bounds and a line is
/// never cut by a refill).
#[inline(always)]
pub(super) fn run(
    records: &mut Records<'_>,
    cache: &HourCache,
    window: Window,
    delim: u8,
    max_line: usize,
    lane: &mut impl Lane,
) -> u64 {
    let mut taken = 0;
    loop {
        let rest = records.buffered();
        if rest.len() < 64 || rest[19] != delim {
            break;
        }
        let Some(t) = cache.lookup(&rest[..19]) else {
            break;
        };
        if !window.contains(t) {
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
        taken += 1;
        lane.push(t, v);
    }
    taken
}
