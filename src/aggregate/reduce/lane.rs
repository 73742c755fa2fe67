//! The fast lane: for the common two-column `time,value` layout, parses lines straight from
//! the read buffer into one bucket's accumulator, skipping field splitting and the general
//! checks. Called by [`super::pass`]'s row loop before each record, for whichever state
//! (streaming or holding) offers a [`Lane`] for the bucket of the previous row.
//!
//! It only takes rows the general path would treat identically; it stops at anything else
//! and leaves the line to the general path.

use std::cell::Cell;

use super::super::acc::Acc;
use super::super::read::{self, LineValue, Records, ValueShape};
use super::super::time::{HourCache, HourKey};

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

/// Where the fast lane puts the rows it takes: one bucket's accumulator of the only value
/// column. A state may also note the rows' times (holding mode tracks the earliest row).
///
/// The lane copies the accumulator into a local for a stint and writes it back at the end,
/// so the loop keeps it in registers rather than storing it per row; the pushes are the
/// same, in the same order, so the bits are too.
pub(super) trait Lane {
    /// Whether [`Lane::note`] wants the rows' times (the loop skips the minimum otherwise).
    const NOTES_TIME: bool;

    /// The accumulator the rows go to.
    fn acc(&mut self) -> &mut Acc;

    /// Notes that rows as early as UTC second `t` were added (only when
    /// [`Lane::NOTES_TIME`], and only after rows were taken).
    fn note(&mut self, t: i64);
}

/// Streaming mode's lane: the open bucket's accumulator, nothing else to note.
impl Lane for &mut Acc {
    const NOTES_TIME: bool = false;

    #[inline(always)]
    fn acc(&mut self) -> &mut Acc {
        self
    }

    #[inline(always)]
    fn note(&mut self, _t: i64) {}
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
/// timestamp, or 20-byte with Z><delim><plain decimal><line break>` with the timestamp inside
/// `window`, and returns how many it took.
///
/// A line it accepts holds no quote and needs no newline search. It stops at anything else,
/// and within 64 bytes of the buffer's end (so a line is never cut by a refill).
#[inline(always)]
pub(super) fn run(
    records: &mut Records<'_>,
    cache: &HourCache,
    window: Window,
    delim: u8,
    max_line: usize,
    lane: &mut impl Lane,
) -> u64 {
    // Nothing cached: no line can be taken (the per-row lookup would miss every time).
    let Some((hour, zulu)) = cache.key() else {
        return 0;
    };
    // One copy of the loop per timestamp length, so every offset below is a constant.
    let (at, taken) = if zulu {
        lines::<true, 21, _>(records.buffered(), hour, window, delim, max_line, lane)
    } else {
        lines::<false, 20, _>(records.buffered(), hour, window, delim, max_line, lane)
    };
    records.consume_lines(at, taken);
    taken
}

/// [`run`]'s loop for one timestamp form (`ZULU`: `…Z`, 20 bytes), the value at `AT` (the
/// stamp's length plus the delimiter). Returns the bytes and lines taken.
///
/// Walks a local slice and lets [`run`] consume the lines once, at the end: the per-line
/// bookkeeping is then an index into a slice rather than stores through `records`. The
/// accumulator is a local copy for the same reason. Each line is seen as a `&[u8; 64]`
/// window, so the timestamp and value parsers index and load without bounds checks.
#[inline(always)]
fn lines<const ZULU: bool, const AT: usize, L: Lane>(
    rest: &[u8],
    hour: HourKey,
    window: Window,
    delim: u8,
    max_line: usize,
    lane: &mut L,
) -> (usize, u64) {
    let mut stint = Stint {
        at: 0,
        taken: 0,
        acc: *lane.acc(),
        earliest: i64::MAX,
        shape: ValueShape::NONE,
    };
    // When the cached hour lies inside the bucket (hourly buckets and wider, in the seed),
    // every stamp it matches is in the window: the loop then needs no second at all, unless
    // the state notes times.
    let whole_hour = window.lo <= hour.base() && hour.base() + 3600 <= window.hi;
    let run = if whole_hour {
        Stint::run::<ZULU, AT, L, true>
    } else {
        Stint::run::<ZULU, AT, L, false>
    };
    // The inner loop takes the lines whose value fits one word and calls nothing; a longer
    // value stops it, is parsed here, and the inner loop resumes after it.
    while let Some(t) = run(&mut stint, rest, hour, window, delim, max_line) {
        let Some(line) = rest.get(stint.at..).and_then(<[u8]>::first_chunk::<64>) else {
            break;
        };
        match read::parse_line_value_wide::<AT>(line) {
            Some((v, end, next)) if end <= max_line => stint.take::<L>(t, v, next),
            _ => break,
        }
    }
    *lane.acc() = stint.acc;
    if L::NOTES_TIME && stint.taken > 0 {
        lane.note(stint.earliest);
    }
    (stint.at, stint.taken)
}

/// What [`lines`] has taken so far: bytes, lines, their values and earliest time, and the
/// last value's shape.
#[derive(Clone, Copy)]
struct Stint {
    at: usize,
    taken: u64,
    acc: Acc,
    earliest: i64,
    shape: ValueShape,
}

impl Stint {
    /// Takes one line: the value `v` at time `t`, the next line at `next` bytes on.
    #[inline(always)]
    fn take<L: Lane>(&mut self, t: i64, v: f64, next: usize) {
        self.at += next;
        self.taken += 1;
        self.acc.push(v);
        if L::NOTES_TIME {
            self.earliest = self.earliest.min(t);
        }
    }

    /// Takes lines while they are the lane's and their values fit one word. Returns the time
    /// of the line it stopped at when only the value's length stopped it (the caller parses
    /// that value), `None` for anything else.
    ///
    /// Not inlined: on its own, with no call inside, its loop keeps the accumulator and the
    /// position in registers and stores them once, on the way out.
    /// `WHOLE_HOUR`: every second of `hour` is inside `window`.
    #[inline(never)]
    fn run<const ZULU: bool, const AT: usize, L: Lane, const WHOLE_HOUR: bool>(
        &mut self,
        rest: &[u8],
        hour: HourKey,
        window: Window,
        delim: u8,
        max_line: usize,
    ) -> Option<i64> {
        // A local copy, written back once: stores through `self` would stay in the loop.
        let mut s = *self;
        let mut wide = None;
        while let Some(line) = rest.get(s.at..).and_then(<[u8]>::first_chunk::<64>) {
            let Some(m) = hour.match_line::<ZULU>(line, delim) else {
                break;
            };
            // Only the window and holding mode's earliest row need the second (a constant
            // folds away for the others).
            let t = if WHOLE_HOUR && !L::NOTES_TIME {
                0
            } else {
                hour.second(m)
            };
            if !WHOLE_HOUR && !window.contains(t) {
                break;
            }
            match read::parse_line_value_shaped::<AT>(line, &mut s.shape) {
                LineValue::Parsed(v, end, next) if end <= max_line => s.take::<L>(t, v, next),
                LineValue::Wide => {
                    wide = Some(hour.second(m));
                    break;
                }
                _ => break,
            }
        }
        *self = s;
        wide
    }
}
