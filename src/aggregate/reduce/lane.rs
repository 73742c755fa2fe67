//! The fast lane: for the common two-column `time,value` layout, parses lines straight from
//! the read buffer into one bucket's accumulator, skipping field splitting and the general
//! checks. Called by [`super::pass`]'s row loop before each record, for whichever state
//! (streaming or holding) offers a [`Lane`] for the bucket of the previous row.
//!
//! It only takes rows the general path would treat identically; it stops at anything else
//! and leaves the line to the general path.

use std::cell::Cell;

use super::super::acc::Acc;
use super::super::read::{self, Records};
use super::super::time::HourCache;

thread_local! {
    /// Set while [`without_fast_lane`] runs: the lane-free reference of the property tests
    /// and the fuzz target. Read once per pass, never per row.
    static OFF: Cell<bool> = const { Cell::new(false) };
}

/// Whether a pass that starts now may use the fast lane (always, outside
/// [`without_fast_lane`]).
pub(super) fn enabled() -> bool {
    !OFF.with(Cell::get)
}

/// Runs `f` with the fast lane switched off on this thread, so every row takes the general
/// path: the reference that the tests and the reducer's fuzz target compare the lane with.
/// A thread-local rather than a [`Spec`](super::super::Spec) field, because it must not
/// reach the spec's fingerprint or any setting; not meant for anything but tests.
#[doc(hidden)]
pub fn without_fast_lane<T>(f: impl FnOnce() -> T) -> T {
    /// Restores the previous setting, also when `f` panics (a failing proptest case).
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            OFF.with(|off| off.set(self.0));
        }
    }
    let _restore = Restore(OFF.with(|off| off.replace(true)));
    f()
}

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
/// timestamp, or 20-byte with Z><delim><plain decimal><line break>` with the timestamp inside `window`, and
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
    // Walks a local slice and consumes the lines it took once, at the end: the per-line
    // bookkeeping is then an index into a slice rather than stores through `records`.
    let rest = records.buffered();
    // The cached hour's timestamp length (19, or 20 for `…Z`): at most 20, so with the
    // value's at most 17 bytes every index below stays under 64.
    let ts = cache.stamp_len();
    let mut at = 0;
    let mut taken = 0;
    loop {
        let line = &rest[at..];
        if line.len() < 64 || line[ts] != delim {
            break;
        }
        let Some(t) = cache.lookup(&line[..ts]) else {
            break;
        };
        if !window.contains(t) {
            break;
        }
        let Some((v, len)) = read::parse_simple(&line[ts + 1..]) else {
            break;
        };
        let end = ts + 1 + len;
        let consumed = match line[end] {
            b'\n' => end + 1,
            b'\r' if line[end + 1] == b'\n' => end + 2,
            _ => break,
        };
        if end > max_line {
            break;
        }
        at += consumed;
        taken += 1;
        lane.push(t, v);
    }
    records.consume_lines(at, taken);
    taken
}
