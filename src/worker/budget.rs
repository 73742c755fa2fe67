//! The memory budget (`--memory-budget`): a byte semaphore from which each job reserves what
//! it can need before it allocates, so concurrency is bounded by memory as well as by count.
//!
//! `Worker::process` reserves [`Need::before_size`] right after the message's lease is held
//! (a message waiting for memory keeps renewing its lease, and is released if the stop
//! signal comes first), runs the job inside [`Reservation::scope`], and the pipeline calls
//! [`fit_to_size`] once it knows the input's size. Dropping the [`Reservation`] gives the
//! bytes back.
//!
//! # Sizing
//!
//! What a job can hold at once, by part:
//! - download buffers: `2 × --download-parallel × --download-block-size` (the partitions in
//!   flight and the ones the reducer has not consumed yet), or the input's size if smaller;
//! - output: two blocks of `--upload-block-size` (one filling, one being staged);
//! - held state: `--max-held-cells × HELD_CELL_BYTES` (holding mode's bound; a streaming
//!   pass holds far less, but whether a pass streams is known only once rows arrive).
//!
//! Before the size is known (before the first storage answer about the input) a job
//! reserves the most it can need whatever the size; [`fit_to_size`] then gives back what a
//! smaller input cannot use. Adjusting only ever shrinks, so a job never waits for memory
//! while it holds some: no hold-and-wait, no deadlock.
//!
//! A job whose need exceeds the whole budget reserves the whole budget: it waits until
//! nothing else is reserved and then runs alone (logged), rather than never.

use std::cell::RefCell;
use std::sync::Arc;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::Settings;

/// Bytes one held cell (accumulator) takes: a count and five `f64`s (shift, two sums, min,
/// max), the figure `--max-held-cells --help` states. Written here because the reducer's
/// accumulator type is private to `aggregate`.
pub const HELD_CELL_BYTES: u64 = 48;

/// The default budget's share of the memory limit: 3/4. The remaining quarter covers the
/// process baseline (runtime, TLS, SDK clients, admin server, metrics: about 25 MiB measured
/// idle) and allocator slack, which per-job reservations do not count.
pub const DEFAULT_FRACTION: (u64, u64) = (3, 4);

/// Permits are KiB: `acquire_many` takes a `u32`, so bytes would cap a budget at 4 GiB.
const UNIT: u64 = 1024;

/// Bytes → permits, rounded up (a reservation never undercounts), at least one.
fn permits(bytes: u64) -> u64 {
    bytes.div_ceil(UNIT).max(1)
}

// === impl Need ===

/// What one job may hold at once, by the sizing rule in the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Need {
    pub download: u64,
    pub output: u64,
    pub held: u64,
}

impl Need {
    /// Before the input's size is known: the largest download buffering.
    pub fn before_size(s: &Settings) -> Need {
        Need {
            download: 2 * s.read.parallel.max(1) as u64 * s.read.partition_bytes as u64,
            output: 2 * s.upload_block_bytes as u64,
            held: s.spec.max_held_cells as u64 * HELD_CELL_BYTES,
        }
    }

    /// Once the input is known to be `size` bytes (as stored: compressed for `.gz`, which is
    /// what the download buffers hold).
    pub fn for_size(s: &Settings, size: u64) -> Need {
        let mut need = Need::before_size(s);
        need.download = need.download.min(size);
        need
    }

    /// The sum of the parts.
    pub fn bytes(&self) -> u64 {
        self.download + self.output + self.held
    }
}

// === impl Budget ===

/// The budget shared by every job of one worker. Cheap to clone; clones share the semaphore.
#[derive(Clone, Debug)]
pub struct Budget {
    /// One permit per KiB. Tokio's semaphore is fair (first come, first served), so a large
    /// job at the head of the line is not overtaken for ever by small ones.
    sem: Arc<Semaphore>,
    /// The whole budget in permits: the most one reservation takes.
    total: u64,
    /// `rollq_worker_memory_reserved_bytes`.
    reserved: Gauge,
    /// `rollq_worker_memory_waiting`: jobs waiting for their reservation.
    waiting: Gauge,
}

impl Budget {
    /// A budget of `bytes`, reported on the given gauges (`budget` is set once here).
    pub fn new(bytes: u64, budget: &Gauge, reserved: Gauge, waiting: Gauge) -> Budget {
        let total = permits(bytes).min(u64::from(u32::MAX));
        budget.set(i64::try_from(total * UNIT).unwrap_or(i64::MAX));
        Budget {
            sem: Arc::new(Semaphore::new(total as usize)),
            total,
            reserved,
            waiting,
        }
    }

    /// The budget in bytes (rounded up to whole KiB).
    pub fn bytes(&self) -> u64 {
        self.total * UNIT
    }

    /// Waits until `bytes` are free, then holds them until the reservation is dropped.
    /// More than the whole budget is capped at the whole budget: the job runs alone.
    pub async fn reserve(&self, bytes: u64) -> Reservation {
        let want = permits(bytes);
        if want > self.total {
            tracing::warn!(
                need_bytes = bytes,
                budget_bytes = self.bytes(),
                "a job needs more than the whole memory budget; it runs alone"
            );
        }
        let n = want.min(self.total) as u32;
        let asked = tokio::time::Instant::now();
        // Counted as waiting only when it has to: most reservations are granted at once.
        let permit = match self.sem.clone().try_acquire_many_owned(n) {
            Ok(p) => p,
            Err(_) => {
                self.waiting.inc();
                let _waiting = scopeguard(&self.waiting);
                self.sem
                    .clone()
                    .acquire_many_owned(n)
                    .await
                    .expect("the budget's semaphore is never closed")
            }
        };
        self.reserved.inc_by(i64::from(n) * UNIT as i64);
        // With `Reservation`'s "memory returned" these bracket the time a job holds memory,
        // in the message's span: how long it waited, and (for the tests) which jobs ran at
        // once. Logged after the permits are taken, and the return before they are given
        // back, so the log's order never shows two holders the semaphore did not allow.
        tracing::debug!(
            bytes = u64::from(n) * UNIT,
            waited_seconds = asked.elapsed().as_secs_f64(),
            "memory reserved"
        );
        Reservation {
            permit,
            reserved: self.reserved.clone(),
        }
    }
}

/// Decrements `g` when dropped, so a reservation cancelled while waiting (lease lost,
/// shutdown) stops counting as waiting too.
fn scopeguard(g: &Gauge) -> impl Drop + '_ {
    struct Dec<'a>(&'a Gauge);
    impl Drop for Dec<'_> {
        fn drop(&mut self) {
            self.0.dec();
        }
    }
    Dec(g)
}

// === impl Reservation ===

/// Bytes of the budget one job holds. Dropping it returns them (and lowers the gauge).
#[must_use = "the reservation must live as long as the job's buffers"]
#[derive(Debug)]
pub struct Reservation {
    permit: OwnedSemaphorePermit,
    reserved: Gauge,
}

impl Reservation {
    /// The bytes held (whole KiB).
    pub fn bytes(&self) -> u64 {
        self.permit.num_permits() as u64 * UNIT
    }

    /// Gives back what exceeds `bytes`; never grows (see the module docs: growing while
    /// holding is how two jobs would deadlock).
    pub fn shrink_to(&mut self, bytes: u64) {
        let keep = permits(bytes) as usize;
        let held = self.permit.num_permits();
        if keep < held
            && let Some(extra) = self.permit.split(held - keep)
        {
            self.reserved
                .dec_by((extra.num_permits() as u64 * UNIT) as i64);
            drop(extra);
        }
    }

    /// Runs `fut` with this reservation as the task's current one (see [`fit_to_size`]),
    /// dropping it when `fut` ends.
    pub async fn scope<F: Future>(self, fut: F) -> F::Output {
        CURRENT.scope(RefCell::new(Some(self)), fut).await
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let bytes = self.permit.num_permits() as u64 * UNIT;
        // Runs before the permit field is dropped, so this line precedes any reservation
        // the returned bytes make possible.
        tracing::debug!(bytes, "memory returned");
        self.reserved.dec_by(bytes as i64);
    }
}

tokio::task_local! {
    /// The reservation of the job this task runs. A task-local rather than a parameter so
    /// that the pipeline, whose signatures belong to the request-pattern work, needs one call
    /// where it learns the input's size and nothing else.
    static CURRENT: RefCell<Option<Reservation>>;
}

/// Shrinks the current job's reservation to [`Need::for_size`]. A no-op outside
/// [`Reservation::scope`] (the in-memory tests that call the pipeline without a budget).
pub fn fit_to_size(s: &Settings, size: u64) {
    let _ = CURRENT.try_with(|r| {
        if let Some(r) = r.borrow_mut().as_mut() {
            r.shrink_to(Need::for_size(s, size).bytes());
        }
    });
}

/// The default budget: [`DEFAULT_FRACTION`] of the cgroup's memory limit (v2 `memory.max`,
/// v1 `memory.limit_in_bytes`), or of physical memory where there is none. `None` when
/// neither can be read (then the budget is unbounded in practice: `--max-in-flight` rules).
pub fn default_bytes() -> Option<(u64, &'static str)> {
    let physical = physical_memory();
    let (limit, from) = match cgroup_limit() {
        // v1 reports "no limit" as a huge number: anything above physical memory is none.
        Some(l) if physical.is_none_or(|p| l < p) => (l, "the cgroup's memory limit"),
        _ => (physical?, "physical memory"),
    };
    let (num, den) = DEFAULT_FRACTION;
    Some((limit / den * num, from))
}

/// The cgroup's memory limit, v2 first, then v1; `None` when unlimited or unreadable.
fn cgroup_limit() -> Option<u64> {
    [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .filter_map(|p| std::fs::read_to_string(p).ok())
    // v2 writes "max" for no limit, which does not parse.
    .find_map(|s| s.trim().parse::<u64>().ok())
}

/// `MemTotal` from /proc/meminfo, in bytes.
fn physical_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_meminfo(&info)
}

fn parse_meminfo(info: &str) -> Option<u64> {
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line
        .trim_start_matches("MemTotal:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const MIB: u64 = 1 << 20;

    fn budget(bytes: u64) -> (Budget, Gauge, Gauge, Gauge) {
        let (total, reserved, waiting) = (Gauge::default(), Gauge::default(), Gauge::default());
        let b = Budget::new(bytes, &total, reserved.clone(), waiting.clone());
        (b, total, reserved, waiting)
    }

    #[tokio::test]
    async fn reservations_count_and_release_on_drop() {
        let (b, total, reserved, _) = budget(10 * MIB);
        assert_eq!(total.get(), (10 * MIB) as i64);
        let r1 = b.reserve(3 * MIB).await;
        let r2 = b.reserve(3 * MIB + 1).await;
        assert_eq!(r2.bytes(), 3 * MIB + 1024, "rounded up to whole KiB");
        assert_eq!(reserved.get(), (6 * MIB + 1024) as i64);
        drop(r1);
        assert_eq!(reserved.get(), (3 * MIB + 1024) as i64);
        drop(r2);
        assert_eq!(reserved.get(), 0);
        assert_eq!(b.sem.available_permits() as u64, b.total);
    }

    #[tokio::test]
    async fn a_job_waits_while_the_budget_is_taken_and_counts_as_waiting() {
        let (b, _, reserved, waiting) = budget(4 * MIB);
        let first = b.reserve(3 * MIB).await;
        let b2 = b.clone();
        let second = tokio::spawn(async move { b2.reserve(2 * MIB).await });
        // Waiting: the gauge says so, and the task cannot finish while `first` is held.
        while waiting.get() != 1 {
            tokio::task::yield_now().await;
        }
        assert!(!second.is_finished());
        drop(first);
        let second = second.await.unwrap();
        assert_eq!(waiting.get(), 0);
        assert_eq!(reserved.get(), (2 * MIB) as i64);
        drop(second);
    }

    #[tokio::test]
    async fn shrinking_frees_room_for_the_next_job() {
        let (b, _, reserved, _) = budget(4 * MIB);
        let mut big = b.reserve(4 * MIB).await;
        let b2 = b.clone();
        let next = tokio::spawn(async move { b2.reserve(2 * MIB).await });
        tokio::task::yield_now().await;
        assert!(!next.is_finished());
        big.shrink_to(MIB);
        let next = next.await.unwrap();
        assert_eq!(reserved.get(), (3 * MIB) as i64);
        // Never grows.
        big.shrink_to(8 * MIB);
        assert_eq!(big.bytes(), MIB);
        drop((big, next));
        assert_eq!(reserved.get(), 0);
    }

    #[tokio::test]
    async fn an_oversize_job_runs_alone_instead_of_never() {
        let (b, _, reserved, _) = budget(4 * MIB);
        let small = b.reserve(MIB).await;
        let b2 = b.clone();
        let huge = tokio::spawn(async move { b2.reserve(100 * MIB).await });
        tokio::task::yield_now().await;
        assert!(!huge.is_finished(), "waits until nothing else is reserved");
        drop(small);
        let huge = tokio::time::timeout(Duration::from_secs(10), huge)
            .await
            .expect("an oversize job must not wait for ever")
            .unwrap();
        assert_eq!(huge.bytes(), 4 * MIB, "capped at the whole budget");
        assert_eq!(reserved.get(), (4 * MIB) as i64);
    }

    #[tokio::test]
    async fn many_jobs_all_finish() {
        // More jobs than fit at once, random sizes, some oversize: every one gets its turn.
        let (b, _, reserved, waiting) = budget(8 * MIB);
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..64u64 {
            let b = b.clone();
            tasks.spawn(async move {
                let mut r = b.reserve((i % 11) * MIB + 1).await;
                tokio::task::yield_now().await;
                r.shrink_to(MIB);
                tokio::task::yield_now().await;
            });
        }
        let done = tokio::time::timeout(Duration::from_secs(30), tasks.join_all()).await;
        assert_eq!(done.expect("no deadlock").len(), 64);
        assert_eq!((reserved.get(), waiting.get()), (0, 0));
    }

    #[tokio::test]
    async fn fit_to_size_shrinks_the_scoped_reservation() {
        let mut s = Settings::with_defaults("jobs", "acct", "in").unwrap();
        s.read.partition_bytes = MIB as usize;
        s.read.parallel = 2;
        s.upload_block_bytes = MIB as usize;
        s.spec.max_held_cells = 1024;
        let before = Need::before_size(&s);
        assert_eq!(before.bytes(), 4 * MIB + 2 * MIB + 1024 * HELD_CELL_BYTES);
        assert_eq!(
            Need::for_size(&s, 100 * MIB),
            before,
            "large inputs keep it all"
        );
        let (b, _, reserved, _) = budget(64 * MIB);
        let r = b.reserve(before.bytes()).await;
        r.scope(async {
            fit_to_size(&s, 10_000);
        })
        .await;
        assert_eq!(reserved.get(), 0, "dropped with the scope");
        let r = b.reserve(before.bytes()).await;
        let seen = r
            .scope(async {
                fit_to_size(&s, 10_000);
                CURRENT.with(|r| r.borrow().as_ref().unwrap().bytes())
            })
            .await;
        assert_eq!(
            seen,
            permits(10_000 + 2 * MIB + 1024 * HELD_CELL_BYTES) * UNIT
        );
        // Outside a scope: nothing to shrink, no panic.
        fit_to_size(&s, 1);
    }

    #[test]
    fn meminfo_and_default() {
        let info = "MemTotal:        8036920 kB\nMemFree:          123 kB\n";
        assert_eq!(parse_meminfo(info), Some(8_036_920 * 1024));
        assert_eq!(parse_meminfo("nothing"), None);
        let (bytes, _) = default_bytes().expect("Linux has /proc/meminfo");
        assert!(bytes > 0);
    }
}
