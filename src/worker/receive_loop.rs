//! The receive loop: lease batches while slots are free, spawn each message, back off when
//! idle or failing, pause on account-wide failures, sample the queue gauges, and drain at the
//! end.
//!
//! `startup::App` calls [`Worker::run`]; the loop selects on waiting (a slot, a receive, a
//! sleep), never on working: in-flight messages get the drain deadline instead.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rand::RngExt;
use rand::rngs::StdRng;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Worker;
use super::backoff::{ProbeBackoff, Suspect};
use super::envelope::Envelope;
use crate::metrics::OutcomeLabel;
use crate::shutdown::Shutdown;
use crate::storage::{ErrorKind, Op, Received, Service, StorageError};

/// Azure returns at most 32 messages per receive.
const MAX_BATCH: usize = 32;

/// How long a receive in flight at the stop signal may still take: what it returns is
/// released at once. Inside the drain deadline, which counts from the signal.
const RECEIVE_GRACE: Duration = Duration::from_secs(5);

/// How long releases may take after the drain deadline before the worker exits anyway
/// (a release that does not happen only means the message reappears after its timeout).
/// Every wait after the stop signal ends by the drain deadline plus this, so with the admin
/// server's own short stop the process exits within `--drain-timeout` + 10 s, the bound the
/// deploy checks hold `terminationGracePeriodSeconds` to, even when storage answers late.
const RELEASE_GRACE: Duration = Duration::from_secs(3);

/// What `run` stopped for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunEnd {
    /// A shutdown signal.
    Stopped,
    /// `--exit-when-idle`: the queue stayed empty long enough.
    Idle,
    /// `--max-messages` were received and processed.
    MaxMessages,
}

impl Worker {
    /// Samples queue figures for the gauges (every replica reports the same queue).
    pub async fn sample_queue_stats(&self) {
        let ctx = &self.ctx;
        let count = ctx.queue.approximate_count().await;
        ctx.observer.record(Op::QueueProperties, &count);
        let poison = ctx.poison.approximate_count().await;
        ctx.observer.record(Op::QueueProperties, &poison);
        let peek = ctx.queue.peek(1).await;
        ctx.observer.record(Op::Peek, &peek);
        if let (Ok(count), Ok(poison), Ok(peek)) = (count, poison, peek) {
            ctx.readiness.queue_ok();
            let oldest = peek
                .first()
                .and_then(|m| m.inserted_on)
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .map_or(0.0, |d| d.as_secs_f64());
            ctx.metrics.queue_stats(count, poison, oldest);
        }
    }

    /// Receives and processes messages until `shutdown`, `--exit-when-idle` or
    /// `--max-messages`, then drains: in-flight work gets `--drain-timeout`, after which (or
    /// at a second signal) it is released.
    pub async fn run(&self, shutdown: Shutdown) -> RunEnd {
        let stats = self.spawn_queue_stats();
        let mut state = LoopState::new(&self.ctx.settings);
        let end = loop {
            match self.next_batch(&mut state, &shutdown.stop).await {
                Step::Batch(batch) => {
                    state.note_starts(batch.len(), Instant::now());
                    self.spawn(&state.tracker, batch, &shutdown)
                }
                Step::Wait => {}
                Step::End(end) => break end,
            }
        };
        self.release_waiting(&mut state).await;
        self.drain(end, &state, &shutdown).await;
        stats.stop().await;
        tracing::info!(reason = ?end, "worker stopped");
        end
    }

    /// One turn of the loop. Messages waiting locally start as slots free up; a receive is
    /// sent when what this worker holds (running + waiting) has dropped to the prefetch
    /// threshold, sized to the room left under `--max-in-flight` + the prefetch the recent
    /// start rate allows ([`LoopState::prefetch_now`], at most `--prefetch`), at most 32.
    /// An empty or failed receive sleeps the poll backoff (and may end the run when idle).
    async fn next_batch(&self, state: &mut LoopState, stop: &CancellationToken) -> Step {
        let s = &self.ctx.settings;
        let quota_left = s.max_messages.map(|max| max.saturating_sub(state.received));
        if quota_left == Some(0) && state.waiting.is_empty() {
            return Step::End(RunEnd::MaxMessages);
        }
        if let Some(batch) = state.start_waiting() {
            return Step::Batch(batch);
        }
        let held = state.held();
        let prefetch = state.prefetch_now(Instant::now());
        let room = (state.in_flight + prefetch).saturating_sub(held);
        // After a receive that came back short the queue had nothing more: polling again
        // while every slot still has work only costs requests (a backlog's tail would be
        // polled at the idle backoff's 50 ms once per freed slot). The next receive waits
        // until a slot would otherwise idle.
        let dry = state.queue_dry && held >= state.in_flight;
        // Azure Functions' `newBatchThreshold` is half its `batchSize`: a receive goes out
        // while half the prefetch is still there to keep the slots busy.
        let threshold = state.in_flight + prefetch / 2;
        if room == 0 || held > threshold || quota_left == Some(0) || dry {
            // Enough is held: wait for a slot for the next waiting message.
            return self.wait(state, stop, None).await;
        }
        // A job met a failure that stops every message: do not receive more only to defer
        // them. Checked with a slot free or the threshold reached: a failing job reports
        // before it frees its slot.
        if let Some(suspect) = self.ctx.pause.take()
            && let Some(step) = self.pause(state, stop, suspect).await
        {
            return step;
        }
        let mut want = room.min(MAX_BATCH);
        if let Some(left) = quota_left {
            want = want.min(usize::try_from(left).unwrap_or(usize::MAX));
        }
        let receive = self.ctx.queue.receive(want as u8, s.visibility_timeout);
        tokio::pin!(receive);
        let r = tokio::select! {
            // A stop that has arrived wins over a receive completing in the same poll: what it
            // returns is released rather than started.
            biased;
            _ = stop.cancelled() => {
                let stopped_at = Instant::now();
                state.stopped_at = Some(stopped_at);
                // A receive in flight may have leased messages already: let it finish (for a
                // bounded time) and release what it returns at once, so nothing waits out its
                // visibility timeout or is charged an attempt. Both waits end by the
                // shutdown's last moment, whatever storage does.
                let release_by = release_deadline(stopped_at, s.drain_timeout);
                let answered_by = (stopped_at + RECEIVE_GRACE).min(release_by);
                if let Ok(r) = tokio::time::timeout_at(answered_by, &mut receive).await {
                    self.ctx.observer.record(Op::Receive, &r);
                    if let Ok(msgs) = r {
                        self.release_unstarted(msgs, release_by, "received during shutdown").await;
                    }
                }
                return Step::End(RunEnd::Stopped);
            }
            r = &mut receive => r,
        };
        self.ctx.observer.record(Op::Receive, &r);
        if r.is_ok() {
            self.ctx.readiness.queue_ok();
        }
        let msgs = match r {
            Ok(msgs) if !msgs.is_empty() => msgs,
            Ok(_) => {
                state.queue_dry = true;
                if self.idle_long_enough(state).await {
                    return Step::End(RunEnd::Idle);
                }
                return self.sleep(state, stop).await;
            }
            Err(e) if e.is_account_wide() => {
                let suspect = Suspect {
                    service: Service::Queue,
                    error: e,
                };
                return match self.pause(state, stop, suspect).await {
                    Some(step) => step,
                    // The queue answers a probe but not Get Messages: back off as for any
                    // failed receive, so the loop never spins.
                    None => self.sleep(state, stop).await,
                };
            }
            Err(e) => {
                tracing::warn!(error.message = %e, "receive failed; backing off");
                return self.sleep(state, stop).await;
            }
        };
        state.poll.reset();
        state.idle_since = None;
        state.queue_dry = msgs.len() < want;
        state.received += msgs.len() as u64;
        let now = Instant::now();
        state
            .waiting
            .extend(msgs.into_iter().map(|msg| Waiting { msg, since: now }));
        match state.start_waiting() {
            Some(batch) => Step::Batch(batch),
            None => Step::Wait,
        }
    }

    /// Waits for a slot for the oldest waiting message, the stop, the moment a waiting
    /// message has waited too long (it is released), or `until` (the poll backoff).
    async fn wait(
        &self,
        state: &mut LoopState,
        stop: &CancellationToken,
        until: Option<Instant>,
    ) -> Step {
        let oldest = state.waiting.front().map(|w| w.since + state.max_wait);
        let slots = state.slots.clone();
        // A freed slot matters when a message waits for it, or when everything is running
        // and there is no other reason to wake up (then the next turn may receive). During
        // a poll backoff with nothing waiting it must not end the sleep.
        let wants_slot = !state.waiting.is_empty() || until.is_none();
        let slot = async move {
            if wants_slot {
                slots.acquire_owned().await.ok()
            } else {
                std::future::pending().await
            }
        };
        let at = |t: Option<Instant>| async move {
            match t {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => {
                state.stopped_at = Some(Instant::now());
                Step::End(RunEnd::Stopped)
            }
            Some(permit) = slot => match state.waiting.pop_front() {
                Some(w) => Step::Batch(vec![(w.msg, permit)]),
                // A slot is free: the next turn decides whether to receive.
                None => Step::Wait,
            },
            _ = at(oldest) => {
                self.release_stale(state).await;
                Step::Wait
            }
            _ = at(until) => Step::Wait,
        }
    }

    /// Releases the messages that have waited locally longer than [`LoopState::max_wait`]
    /// (a quarter of the visibility timeout): another replica with a free slot takes them at
    /// once, and none starts with less than three quarters of its lease left, so its first
    /// renewal (at half the timeout after the start) still comes before the receive's expiry.
    async fn release_stale(&self, state: &mut LoopState) {
        let now = Instant::now();
        let mut stale = Vec::new();
        while state
            .waiting
            .front()
            .is_some_and(|w| now >= w.since + state.max_wait)
        {
            stale.push(state.waiting.pop_front().expect("checked").msg);
        }
        if !stale.is_empty() {
            let release_by = now + RELEASE_GRACE;
            self.release_unstarted(stale, release_by, "prefetched, waited too long for a slot")
                .await;
        }
    }

    /// Releases messages received but never started (a receive that returned after the stop
    /// signal, prefetched messages at shutdown or after waiting too long): visible again at once, each release recorded so it is not an attempt. Gives
    /// up at `release_by`: an unsent release only means the message reappears after its
    /// visibility timeout.
    async fn release_unstarted(&self, msgs: Vec<Received>, release_by: Instant, why: &str) {
        if msgs.is_empty() {
            return;
        }
        tracing::info!(count = msgs.len(), why, "releasing messages never started");
        let releases = msgs.iter().map(|msg| async move {
            let mut envelope = Envelope::open(&msg.text);
            envelope.clamp(msg.dequeue_count);
            let text = envelope.released_once_more();
            let r = self
                .ctx
                .queue
                .update(&msg.id, &msg.pop_receipt, Duration::ZERO, text.as_deref())
                .await;
            self.ctx.observer.record(Op::Update, &r);
            if let Err(e) = r {
                tracing::warn!(message_id = %msg.id, error.message = %e, "could not release; the message reappears when its timeout lapses");
            }
            self.ctx.metrics.outcome(OutcomeLabel::Released);
        });
        // Bounded like every wait on the way out.
        if tokio::time::timeout_at(release_by, futures::future::join_all(releases))
            .await
            .is_err()
        {
            tracing::warn!(
                "releases of messages never started did not finish; they reappear when their timeout lapses"
            );
        }
    }

    /// At the end of the loop, prefetched messages that never got a slot go back at once
    /// (recorded as releases, not attempts), within the shutdown's bound.
    async fn release_waiting(&self, state: &mut LoopState) {
        let waiting: Vec<Received> = state.waiting.drain(..).map(|w| w.msg).collect();
        let release_by = match state.stopped_at {
            Some(at) => release_deadline(at, self.ctx.settings.drain_timeout),
            None => Instant::now() + RELEASE_GRACE,
        };
        self.release_unstarted(waiting, release_by, "prefetched, the run is over")
            .await;
    }

    /// An account-wide failure was met: confirm it with a probe, and if storage is unusable
    /// stop receiving (messages in flight meet the failure and are deferred as usual), turn
    /// `/readyz` 503, and probe with [`ProbeBackoff`] until a probe succeeds or a stop comes.
    /// A probe that succeeds at once means the failure was one blob's after all (a reset
    /// mid-read, a hot partition answering `ServerBusy`) or a 404 that did not last: no
    /// pause, `None`. A missing main queue or `--container` pauses the same way; the log
    /// lines then name what is missing and when it exists again.
    async fn pause(
        &self,
        state: &mut LoopState,
        stop: &CancellationToken,
        suspect: Suspect,
    ) -> Option<Step> {
        let ctx = &self.ctx;
        let Err(mut failed) = self.probe(&suspect).await else {
            tracing::debug!(error.message = %suspect.error, "a probe succeeded: not pausing");
            return None;
        };
        let since = Instant::now();
        let service = service_name(suspect.service);
        // Named from the probe that confirmed the pause, so the line says what an operator
        // must recreate (the queue or container), not just that storage failed.
        let missing = missing_resource(&failed);
        match &missing {
            Some(what) => tracing::warn!(
                service,
                missing = %what,
                error.message = %suspect.error,
                probe.error = %failed,
                "{what} is missing; pausing: no receives until it exists again"
            ),
            None => tracing::warn!(
                service,
                error.message = %suspect.error,
                probe.error = %failed,
                "storage unusable for every message; pausing: no receives until a probe succeeds"
            ),
        }
        ctx.readiness.set_paused(true);
        ctx.metrics.paused(true);
        let mut backoff = ProbeBackoff::new();
        let end = loop {
            let delay = backoff.next(&ctx.settings, failed.retry_after);
            tokio::select! {
                _ = stop.cancelled() => {
                    state.stopped_at = Some(Instant::now());
                    break Step::End(RunEnd::Stopped);
                }
                _ = tokio::time::sleep(delay) => {}
            }
            match self.probe(&suspect).await {
                Ok(()) => break Step::Wait,
                Err(e) => failed = e,
            }
        };
        ctx.readiness.set_paused(false);
        ctx.metrics.paused(false);
        match (&end, &missing) {
            (Step::Wait, Some(what)) => tracing::info!(
                service,
                missing = %what,
                paused_for = ?since.elapsed(),
                "{what} exists again; resuming"
            ),
            (Step::Wait, None) => tracing::info!(
                service,
                paused_for = ?since.elapsed(),
                "storage answers again; resuming"
            ),
            _ => {}
        }
        // Jobs that met the same outage while paused reported it: that is this pause.
        let _ = ctx.pause.take();
        state.poll.reset();
        Some(end)
    }

    /// One call to the suspect's service that leases nothing: Get Queue Metadata, or Get
    /// Container Properties of `--container` (the container start-up checked: a message
    /// naming a container the worker may not read must not keep every other message
    /// waiting). Storage is usable again when the call answers anything but an account-wide
    /// failure. A missing container is an answer, except when the suspect is that container
    /// missing: then the probe fails until it exists again (a missing queue is account-wide
    /// by itself).
    async fn probe(&self, suspect: &Suspect) -> Result<(), StorageError> {
        let ctx = &self.ctx;
        let r = match suspect.service {
            Service::Queue => {
                let r = ctx.queue.approximate_count().await;
                ctx.observer.record(Op::QueueProperties, &r);
                r.map(drop)
            }
            Service::Blob => {
                let missing = suspect.error.missing_container();
                let container = missing.unwrap_or(&ctx.settings.container);
                let r = ctx.blobs.container_exists(container).await;
                ctx.observer.record(Op::ContainerProperties, &r);
                match r {
                    // `container_exists` turned the service's 404 into `false`; as an error
                    // again it is the same failure the suspect met.
                    Ok(false) if missing.is_some() => {
                        return Err(StorageError::new(
                            ErrorKind::NotFound,
                            Op::ContainerProperties,
                            container,
                            "HTTP 404 ContainerNotFound",
                        ));
                    }
                    r => r.map(drop),
                }
            }
        };
        match r {
            Err(e) if e.is_account_wide() => Err(e),
            _ => Ok(()),
        }
    }

    /// Sleeps the next poll backoff, unless a stop comes first; a slot freed meanwhile
    /// starts the next waiting message (the sleep is about the queue, not about them).
    async fn sleep(&self, state: &mut LoopState, stop: &CancellationToken) -> Step {
        let until = Instant::now() + state.poll.next();
        self.wait(state, stop, Some(until)).await
    }

    /// `--exit-when-idle`: nothing in flight, nothing received for that long, and the queue
    /// (invisible messages included) is empty.
    async fn idle_long_enough(&self, state: &mut LoopState) -> bool {
        let Some(limit) = self.ctx.settings.exit_when_idle else {
            return false;
        };
        if !state.tracker.is_empty() || !state.waiting.is_empty() {
            state.idle_since = None;
            return false;
        }
        let since = *state.idle_since.get_or_insert_with(Instant::now);
        since.elapsed() >= limit && self.queue_is_empty().await
    }

    /// Starts each message of the batch on its own task, holding its slot until its outcome.
    fn spawn(&self, tracker: &TaskTracker, batch: Batch, shutdown: &Shutdown) {
        for (msg, permit) in batch {
            let worker = self.clone();
            let (stop, interrupt) = (shutdown.stop.clone(), shutdown.interrupt.clone());
            tracker.spawn(async move {
                let _slot = permit; // freed when the message reaches its outcome
                worker.process_until(msg, stop, interrupt).await;
            });
        }
    }

    /// Waits for in-flight work: until it finishes, the drain deadline (then it is
    /// interrupted and released) or a second signal, and then at most [`RELEASE_GRACE`]
    /// for the releases, never past the drain deadline plus [`RELEASE_GRACE`]. The
    /// interrupt also stops leases waiting for a renewal in flight (see `lease`), so a
    /// brownout cannot hold a release for a whole storage timeout.
    async fn drain(&self, end: RunEnd, state: &LoopState, shutdown: &Shutdown) {
        let ctx = &self.ctx;
        let tracker = &state.tracker;
        let drain_timeout = ctx.settings.drain_timeout;
        // The drain deadline counts from the signal, not from the end of the loop (which may
        // have waited for a receive in flight).
        let stopped_at = state.stopped_at.unwrap_or_else(Instant::now);
        if end == RunEnd::Stopped {
            ctx.readiness.set_draining();
        }
        tracker.close();
        tracing::info!(in_flight = tracker.len(), reason = ?end, "stopped receiving; draining");
        let deadline = async {
            if end != RunEnd::Stopped {
                // Batch exits finish their work, unless a signal arrives; then the drain
                // deadline applies from that moment.
                shutdown.stop.cancelled().await;
                ctx.readiness.set_draining();
                tokio::time::sleep(drain_timeout).await;
            } else {
                tokio::time::sleep_until(stopped_at + drain_timeout).await;
            }
        };
        tokio::select! {
            _ = tracker.wait() => {}
            _ = deadline => {
                tracing::warn!(in_flight = tracker.len(), "drain timeout: releasing in-flight messages");
                shutdown.interrupt.cancel();
            }
            _ = shutdown.interrupt.cancelled() => {
                tracing::warn!(in_flight = tracker.len(), "second signal: releasing in-flight messages");
            }
        }
        let mut release_by = Instant::now() + RELEASE_GRACE;
        if end == RunEnd::Stopped {
            // The loop may have ended late (a receive in flight at the signal): the bound
            // still counts from the signal.
            release_by = release_by.min(release_deadline(stopped_at, drain_timeout));
        }
        if tokio::time::timeout_at(release_by, tracker.wait())
            .await
            .is_err()
        {
            tracing::error!(
                in_flight = tracker.len(),
                "releases did not finish; exiting anyway"
            );
        }
    }

    /// Samples the queue gauges every `--queue-stats-interval` until stopped.
    fn spawn_queue_stats(&self) -> StatsTask {
        let stop = CancellationToken::new();
        let worker = self.clone();
        let every = self.ctx.settings.queue_stats_interval;
        let task = {
            let stop = stop.clone();
            tokio::spawn(async move {
                loop {
                    worker.sample_queue_stats().await;
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(every) => {}
                    }
                }
            })
        };
        StatsTask { stop, task }
    }

    async fn queue_is_empty(&self) -> bool {
        // Invisible messages (retries waiting out their delay) count: the queue is not done.
        let r = self.ctx.queue.approximate_count().await;
        self.ctx.observer.record(Op::QueueProperties, &r);
        matches!(r, Ok(0))
    }
}

/// The last moment of a shutdown signalled at `stopped_at`: the drain deadline plus
/// [`RELEASE_GRACE`]. Nothing on the way out is awaited beyond it.
fn release_deadline(stopped_at: Instant, drain_timeout: Duration) -> Instant {
    stopped_at + drain_timeout + RELEASE_GRACE
}

/// What a confirming probe found missing, for the pause's log lines: `queue NAME` or
/// `container NAME`; `None` for an outage.
fn missing_resource(e: &StorageError) -> Option<String> {
    if e.kind != ErrorKind::NotFound {
        return None;
    }
    Some(match e.op.service() {
        Service::Queue => format!("queue {}", e.target),
        Service::Blob => format!("container {}", e.missing_container().unwrap_or(&e.target)),
    })
}

/// The service's name in the pause's log lines.
fn service_name(service: Service) -> &'static str {
    match service {
        Service::Queue => "queue",
        Service::Blob => "blob",
    }
}

/// Leased messages with the slot each one holds.
type Batch = Vec<(Received, OwnedSemaphorePermit)>;

/// What one turn of the loop produced.
enum Step {
    /// Messages to start.
    Batch(Batch),
    /// Nothing this turn (an empty or failed receive, after its backoff sleep).
    Wait,
    /// The loop is over.
    End(RunEnd),
}

/// A prefetched message waiting locally for a slot.
struct Waiting {
    msg: Received,
    /// When the receive returned it (its lease runs from about then).
    since: Instant,
}

/// The loop's state across turns.
struct LoopState {
    /// One permit per message in flight: `--max-in-flight` of them.
    slots: Arc<Semaphore>,
    /// `--max-in-flight`, the number of permits.
    in_flight: usize,
    /// Received ahead (`--prefetch`), oldest first; they start as slots free up.
    waiting: VecDeque<Waiting>,
    /// `--prefetch`: the most messages waiting locally, whatever the start rate.
    prefetch: usize,
    /// When the latest messages started, oldest first: at most `2 × --prefetch` kept, those
    /// younger than `max_wait` count (see [`LoopState::prefetch_now`]).
    starts: VecDeque<Instant>,
    /// How long a message may wait locally before it is released: a quarter of
    /// `--visibility-timeout`.
    max_wait: Duration,
    /// The last receive returned fewer messages than it asked for (or none).
    queue_dry: bool,
    /// Every spawned message; the drain waits on it.
    tracker: TaskTracker,
    poll: PollBackoff,
    /// Messages received so far (for `--max-messages`).
    received: u64,
    /// When the queue was first found empty with nothing in flight (for `--exit-when-idle`).
    idle_since: Option<Instant>,
    /// When the loop saw the stop signal (the drain deadline counts from it).
    stopped_at: Option<Instant>,
}

impl LoopState {
    fn new(s: &super::Settings) -> Self {
        LoopState {
            slots: Arc::new(Semaphore::new(s.max_in_flight)),
            in_flight: s.max_in_flight,
            waiting: VecDeque::new(),
            prefetch: s.prefetch,
            starts: VecDeque::with_capacity(2 * s.prefetch),
            max_wait: s.visibility_timeout / 4,
            queue_dry: false,
            tracker: TaskTracker::new(),
            poll: PollBackoff::new(s.max_poll_interval),
            received: 0,
            idle_since: None,
            stopped_at: None,
        }
    }
}

impl LoopState {
    /// Messages held: running (slots taken) and waiting.
    fn held(&self) -> usize {
        (self.in_flight - self.slots.available_permits()) + self.waiting.len()
    }

    /// Records `n` messages started at `now`, for the start rate.
    fn note_starts(&mut self, n: usize, now: Instant) {
        let keep = 2 * self.prefetch;
        for _ in 0..n.min(keep) {
            if self.starts.len() == keep {
                self.starts.pop_front();
            }
            self.starts.push_back(now);
        }
    }

    /// How many messages may wait locally now: half the messages that started within the
    /// last `max_wait`, at most `--prefetch`.
    ///
    /// A fixed prefetch hoards when jobs are slow: with large inputs, or a storage brownout
    /// stretching every job, the waiting messages outlast `max_wait` and are released, each
    /// release an Update request, a delivery on the dequeue count, and an attempt if the
    /// release itself fails (the 1,000-message fault soak poisoned messages that way). As
    /// many starts as in the last `max_wait` are to be expected in the next one, so a
    /// message at position `p` in the waiting line starts after about `p × max_wait /
    /// starts`; at most `starts / 2` waiting means each starts within half of `max_wait`.
    /// With no recent starts (an idle worker, or every slot held by long jobs) nothing is
    /// prefetched: receives are sized to the free slots, as with `--prefetch 0`.
    fn prefetch_now(&mut self, now: Instant) -> usize {
        while self
            .starts
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) >= self.max_wait)
        {
            self.starts.pop_front();
        }
        (self.starts.len() / 2).min(self.prefetch)
    }

    /// Starts as many waiting messages as there are free slots, oldest first.
    fn start_waiting(&mut self) -> Option<Batch> {
        let mut batch = Vec::new();
        while !self.waiting.is_empty() {
            let Ok(permit) = self.slots.clone().try_acquire_owned() else {
                break;
            };
            let w = self.waiting.pop_front().expect("checked");
            batch.push((w.msg, permit));
        }
        (!batch.is_empty()).then_some(batch)
    }
}

/// The queue-gauge task; [`StatsTask::stop`] ends it.
struct StatsTask {
    /// Cancelled to end the sampling loop.
    stop: CancellationToken,
    /// Aborted at stop: a sample in flight is not worth waiting for.
    task: tokio::task::JoinHandle<()>,
}

impl StatsTask {
    /// Cancels the task, a sample in flight included: in a brownout its three calls could
    /// take three storage timeouts, and the gauges of a stopping worker matter to nobody.
    async fn stop(self) {
        self.stop.cancel();
        self.task.abort();
        // Returns promptly: an aborted task is dropped at its current await.
        let _ = self.task.await;
    }
}

/// Idle polling: exponential from 50 ms up to `--max-poll-interval`, with jitter so replicas
/// do not poll in lockstep.
#[derive(Debug)]
pub(super) struct PollBackoff {
    current: Duration,
    max: Duration,
    /// The jitter's source: seeded from the OS in production, from a fixed seed in tests.
    rng: StdRng,
}

impl PollBackoff {
    pub(super) const MIN: Duration = Duration::from_millis(50);

    pub(super) fn new(max: Duration) -> Self {
        Self::with_rng(max, rand::make_rng::<StdRng>())
    }

    pub(super) fn with_rng(max: Duration, rng: StdRng) -> Self {
        PollBackoff {
            current: Duration::ZERO,
            max: max.max(Self::MIN),
            rng,
        }
    }

    pub(super) fn reset(&mut self) {
        self.current = Duration::ZERO;
    }

    /// The next sleep: a random value in [d/2, d] where d doubles up to the maximum.
    pub(super) fn next(&mut self) -> Duration {
        self.current = (self.current * 2).clamp(Self::MIN, self.max);
        let d = self.current;
        let low = d / 2;
        low + self.rng.random_range(Duration::ZERO..=d - low)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(in_flight: usize, prefetch: usize, visibility: Duration) -> LoopState {
        let mut s = super::super::Settings::with_defaults("q", "acct", "in").unwrap();
        s.max_in_flight = in_flight;
        s.prefetch = prefetch;
        s.visibility_timeout = visibility;
        LoopState::new(&s)
    }

    #[test]
    fn prefetch_follows_the_recent_start_rate_up_to_the_setting() {
        let mut st = state(4, 32, Duration::from_secs(40));
        let t0 = Instant::now();
        assert_eq!(
            st.prefetch_now(t0),
            0,
            "no starts yet: receives fill the slots"
        );
        st.note_starts(10, t0);
        assert_eq!(
            st.prefetch_now(t0),
            5,
            "half the starts of the last max_wait"
        );
        st.note_starts(200, t0 + Duration::from_secs(1));
        assert_eq!(
            st.prefetch_now(t0 + Duration::from_secs(1)),
            32,
            "at most --prefetch"
        );
        assert!(st.starts.len() <= 64, "the history stays bounded");
        // max_wait is 10 s: the starts at t0 + 1 s no longer count at t0 + 11 s.
        assert_eq!(st.prefetch_now(t0 + Duration::from_secs(11)), 0);
    }

    #[test]
    fn no_prefetch_setting_means_none_whatever_the_rate() {
        let mut st = state(4, 0, Duration::from_secs(40));
        let t0 = Instant::now();
        st.note_starts(100, t0);
        assert_eq!(st.prefetch_now(t0), 0);
    }
}
