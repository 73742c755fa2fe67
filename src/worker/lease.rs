//! `Lease`: keeps one received message invisible while it is processed.
//!
//! `process_one` holds a lease for every message. A background task extends the visibility
//! timeout at half of it, always with the newest pop receipt. The lease is *held* while every
//! renewal is answered; *lost* when the service says a receipt known to be current is not
//! (another consumer owns the message: [`Lease::ended`] stops the work); *uncertain* when a
//! renewal got no answer, so it may have been applied and our receipt may be stale. An
//! uncertain lease sends nothing more with that receipt: renewal stops, the work goes on
//! until the last visibility deadline known for sure (minus a margin, then [`Lease::ended`]
//! stops it), and the final call is skipped, so the message reappears by itself. The final
//! call (`complete` deletes, `update` retries or releases) first stops renewal, so it uses
//! the newest receipt; once the shutdown's `interrupt` has come, it does not wait for a
//! renewal in flight (a brownout can hold one for a whole storage timeout) but abandons it,
//! which leaves the lease uncertain like any other renewal without an answer.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::error::StopReason;
use crate::metrics::{Metrics, RenewalResult};
use crate::storage::Op;
use crate::storage::{
    ErrorKind, MessageId, PopReceipt, Queue, ReceiptFailure, Received, StorageError,
};

/// Timing of renewals.
#[derive(Clone, Copy, Debug)]
pub struct LeaseParams {
    /// The visibility timeout set at receive and at every renewal.
    pub visibility: Duration,
    /// Time between renewals (half the visibility timeout, so one failed renewal still
    /// leaves time for another).
    pub renew_every: Duration,
    /// How long before the last deadline known for sure an uncertain lease stops the work:
    /// room for clock skew between us and the service and for the stopped work to wind down
    /// before another consumer can receive the message.
    pub margin: Duration,
}

impl LeaseParams {
    /// Renews at half of `visibility`; the margin is a tenth of it, within 200 ms..30 s.
    pub fn new(visibility: Duration) -> Self {
        LeaseParams {
            visibility,
            renew_every: visibility / 2,
            margin: (visibility / 10).clamp(Duration::from_millis(200), Duration::from_secs(30)),
        }
    }
}

/// What [`Lease::complete`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ack {
    /// The message was deleted with a receipt known to be current.
    Deleted,
    /// The lease was uncertain, so no delete was sent: the message reappears when its timeout
    /// lapses, and the redelivery finds the output current.
    LeftToReappear,
}

/// The lease's receipt and what is known about it, behind one lock.
#[derive(Debug)]
struct Held {
    /// The newest pop receipt we were given.
    receipt: PopReceipt,
    /// The latest time the message is known for sure to stay invisible: receive or the last
    /// answered renewal, plus the visibility timeout (measured from before the request left).
    known_until: Instant,
    /// A renewal got no answer: `receipt` may be stale and nothing more is sent with it.
    /// Set before each renewal leaves and cleared by its answer, so a renewal abandoned in
    /// flight (see [`Lease::stop_renewal`]) leaves it set.
    uncertain: bool,
}

/// Keeps one received message invisible while it is processed.
#[must_use = "call `complete` after the output is written, or `update` to retry or release"]
#[derive(Debug)]
pub struct Lease {
    queue: Arc<dyn Queue>,
    id: MessageId,
    /// The receipt and its state. The renewal task holds the lock across each Update Message,
    /// so a final call never races a renewal with a receipt about to go stale.
    held: Arc<Mutex<Held>>,
    /// Cancelled by the renewal task when the lease is lost; work watches it and stops.
    lost: CancellationToken,
    /// Cancelled by the renewal task when an uncertain lease reaches its last known deadline
    /// (minus the margin); work watches it and stops.
    expired: CancellationToken,
    /// Stops the renewal task; `Drop` cancels it too, so an abandoned lease stops renewing.
    stop: CancellationToken,
    /// The renewal task; awaited by the final call so no renewal is in progress then.
    task: Option<JoinHandle<()>>,
    /// The shutdown's interrupt (drain deadline or second signal): from then on the final
    /// call aborts a renewal in flight instead of waiting for its answer.
    interrupt: CancellationToken,
}

impl Lease {
    /// Starts renewing `msg`'s visibility in the background. `interrupt` bounds how long the
    /// final call waits for a renewal in flight.
    pub fn hold(
        queue: Arc<dyn Queue>,
        msg: &Received,
        params: LeaseParams,
        metrics: Metrics,
        interrupt: CancellationToken,
    ) -> Lease {
        let held = Arc::new(Mutex::new(Held {
            receipt: msg.pop_receipt.clone(),
            known_until: deadline_at_receive(msg, params.visibility),
            uncertain: false,
        }));
        let lost = CancellationToken::new();
        let expired = CancellationToken::new();
        let stop = CancellationToken::new();
        let task = tokio::spawn(renew(
            Renewal {
                queue: queue.clone(),
                id: msg.id.clone(),
                held: held.clone(),
                params,
                metrics,
                lost: lost.clone(),
                expired: expired.clone(),
            },
            stop.clone(),
        ));
        Lease {
            queue,
            id: msg.id.clone(),
            held,
            lost,
            expired,
            stop,
            task: Some(task),
            interrupt,
        }
    }

    /// Cancelled once renewal learns that another consumer owns the message.
    pub fn lost(&self) -> &CancellationToken {
        &self.lost
    }

    /// Resolves when the work must stop for the lease's sake: it was lost, or it is uncertain
    /// and its last known deadline came. Pending for as long as the lease is held.
    pub async fn ended(&self) -> StopReason {
        tokio::select! {
            _ = self.lost.cancelled() => StopReason::LeaseLost,
            _ = self.expired.cancelled() => StopReason::LeaseExpired,
        }
    }

    /// Stops the renewal task and waits until no renewal is in progress: for its answer
    /// normally, not beyond the interrupt. An aborted renewal in flight leaves the lease
    /// uncertain (its Update may still be applied), so the final call then sends nothing.
    async fn stop_renewal(&mut self) {
        self.stop.cancel();
        let Some(mut task) = self.task.take() else {
            return;
        };
        tokio::select! {
            // A task between renewals returns at once on `stop`.
            biased;
            _ = &mut task => {}
            _ = self.interrupt.cancelled() => {
                task.abort();
                // Returns promptly: the task is dropped at its current await.
                let _ = task.await;
            }
        }
    }

    /// Deletes the message with the newest receipt: the work is done. An uncertain lease
    /// sends nothing (a delete with a stale receipt fails, and one whose answer is lost again
    /// tells nothing) and answers [`Ack::LeftToReappear`].
    pub async fn complete(mut self) -> Result<Ack, StorageError> {
        self.stop_renewal().await;
        if self.lost.is_cancelled() {
            return Err(lost_error(Op::Delete, self.queue.name()));
        }
        let receipt = {
            let held = self.held.lock().await;
            if held.uncertain {
                tracing::info!(message_id = %self.id, "lease uncertain: delete skipped; the message reappears when its timeout lapses");
                return Ok(Ack::LeftToReappear);
            }
            held.receipt.clone()
        };
        self.queue
            .delete(&self.id, &receipt)
            .await
            .map(|()| Ack::Deleted)
    }

    /// Makes the message visible again after `visibility` (0 releases it at once), optionally
    /// rewriting its text; ends the lease. An uncertain lease sends nothing: the message
    /// reappears when its timeout lapses, without the rewrite.
    pub async fn update(
        mut self,
        visibility: Duration,
        new_text: Option<&str>,
    ) -> Result<(), StorageError> {
        self.stop_renewal().await;
        if self.lost.is_cancelled() {
            return Err(lost_error(Op::Update, self.queue.name()));
        }
        let receipt = {
            let held = self.held.lock().await;
            if held.uncertain {
                tracing::warn!(message_id = %self.id, "lease uncertain: update skipped; the message reappears when its timeout lapses");
                return Ok(());
            }
            held.receipt.clone()
        };
        self.queue
            .update(&self.id, &receipt, visibility, new_text)
            .await
            .map(|_| ())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Without a final call the message simply reappears when its timeout lapses.
        self.stop.cancel();
    }
}

fn lost_error(op: Op, queue: &str) -> StorageError {
    StorageError::new(ErrorKind::LeaseLost, op, queue, "lease lost during renewal")
}

/// The receive's deadline as far as we can know it: the earlier of now plus the timeout
/// (the receive left before now) and the service's own next-visible time (which carries the
/// clock skew between us and the service; the margin covers small skews).
fn deadline_at_receive(msg: &Received, visibility: Duration) -> Instant {
    let now = Instant::now();
    let local = now + visibility;
    match msg.next_visible_on {
        Some(t) => match t.duration_since(SystemTime::now()) {
            Ok(left) => local.min(now + left),
            Err(_) => now,
        },
        None => local,
    }
}

/// Everything the renewal task works with.
struct Renewal {
    queue: Arc<dyn Queue>,
    id: MessageId,
    held: Arc<Mutex<Held>>,
    params: LeaseParams,
    metrics: Metrics,
    lost: CancellationToken,
    expired: CancellationToken,
}

async fn renew(r: Renewal, stop: CancellationToken) {
    let params = r.params;
    let id = &r.id;
    let mut wait = params.renew_every;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let mut held = r.held.lock().await;
        if stop.is_cancelled() {
            return;
        }
        // Before the request leaves: the service's new deadline is at least this plus the
        // timeout. Uncertain until answered: if this task is aborted mid-request, the
        // final call finds the lease uncertain.
        let sent = Instant::now();
        held.uncertain = true;
        let e = match r.queue.renew(id, &held.receipt, params.visibility).await {
            Ok(fresh) => {
                held.uncertain = false;
                held.receipt = fresh;
                held.known_until = sent + params.visibility;
                r.metrics.renewal(RenewalResult::Ok);
                tracing::debug!(message_id = %id, "lease renewed");
                wait = params.renew_every;
                continue;
            }
            Err(e) => e,
        };
        r.metrics.storage_error(Op::Renew, e.kind);
        match e.receipt_failure() {
            // Our receipt was current (every earlier renewal was answered), so the service's
            // refusal means another consumer holds the message.
            ReceiptFailure::Lost => {
                r.metrics.renewal(RenewalResult::Lost);
                tracing::warn!(message_id = %id, error.message = %e, "lease lost; stopping work");
                r.lost.cancel();
                return;
            }
            ReceiptFailure::Unknown => {
                held.uncertain = true;
                let deadline = held
                    .known_until
                    .checked_sub(params.margin)
                    .unwrap_or(sent)
                    .max(sent);
                drop(held);
                r.metrics.renewal(RenewalResult::Uncertain);
                tracing::warn!(
                    message_id = %id,
                    error.message = %e,
                    seconds_left = deadline.saturating_duration_since(Instant::now()).as_secs_f64(),
                    "lease renewal got no answer; lease uncertain: renewal stops, work goes on until the last known deadline, the message is not deleted"
                );
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep_until(deadline) => {}
                }
                tracing::warn!(message_id = %id, "uncertain lease reached its last known deadline; stopping work");
                r.expired.cancel();
                return;
            }
            ReceiptFailure::Failed => {
                // Refused before any work: the receipt is still current.
                held.uncertain = false;
                // Retry sooner: the current timeout still has about half of its time left.
                r.metrics.renewal(RenewalResult::Error);
                tracing::warn!(message_id = %id, error.message = %e, "lease renewal failed; retrying");
                wait = (params.renew_every / 4).max(Duration::from_millis(100));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Peeked;
    use crate::storage::QueueService;
    use crate::storage::memory::MemoryQueueService;
    use prometheus_client::registry::Registry;

    async fn setup() -> (MemoryQueueService, Arc<dyn Queue>, Metrics) {
        let svc = MemoryQueueService::new();
        let q = svc.queue("q");
        q.create_if_missing().await.unwrap();
        q.send("work").await.unwrap();
        let metrics = Metrics::register(&mut Registry::default());
        (svc, q, metrics)
    }

    #[tokio::test(start_paused = true)]
    async fn renewal_keeps_the_message_invisible_and_delete_uses_the_newest_receipt() {
        let (_svc, q, metrics) = setup().await;
        let vis = Duration::from_secs(10);
        let msg = q.receive(1, vis).await.unwrap().remove(0);
        let lease = Lease::hold(
            q.clone(),
            &msg,
            LeaseParams::new(vis),
            metrics.clone(),
            CancellationToken::new(),
        );
        // Ten timeouts later nobody else has seen it.
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_secs(5)).await;
            assert!(q.receive(32, vis).await.unwrap().is_empty());
        }
        // The original receipt is stale by now, yet complete() works.
        let stale = q.delete(&msg.id, &msg.pop_receipt).await.unwrap_err();
        assert_eq!(stale.kind, ErrorKind::LeaseLost);
        lease.complete().await.unwrap();
        assert_eq!(q.approximate_count().await.unwrap(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_renewal_is_retried_before_expiry() {
        let (svc, q, metrics) = setup().await;
        let vis = Duration::from_secs(8);
        let msg = q.receive(1, vis).await.unwrap().remove(0);
        let lease = Lease::hold(
            q.clone(),
            &msg,
            LeaseParams::new(vis),
            metrics.clone(),
            CancellationToken::new(),
        );
        svc.set_outage(true);
        tokio::time::sleep(Duration::from_millis(4500)).await; // the first renewal failed
        svc.set_outage(false);
        tokio::time::sleep(Duration::from_secs(2)).await; // a quicker retry succeeded
        assert!(q.receive(32, vis).await.unwrap().is_empty());
        tokio::time::sleep(Duration::from_secs(6)).await; // past the original expiry
        assert!(q.receive(32, vis).await.unwrap().is_empty());
        assert!(!lease.lost().is_cancelled());
        lease.complete().await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn losing_the_message_cancels_the_lost_token() {
        let (_svc, q, metrics) = setup().await;
        let vis = Duration::from_secs(10);
        let msg = q.receive(1, vis).await.unwrap().remove(0);
        // Someone else releases and takes it (as after an expiry we did not notice).
        q.update(&msg.id, &msg.pop_receipt, Duration::ZERO, None)
            .await
            .unwrap();
        let other = q.receive(1, vis).await.unwrap().remove(0);
        let lease = Lease::hold(
            q.clone(),
            &msg,
            LeaseParams::new(vis),
            metrics,
            CancellationToken::new(),
        );
        tokio::time::timeout(Duration::from_secs(6), lease.lost().cancelled())
            .await
            .expect("renewal notices the loss");
        assert_eq!(
            lease.complete().await.unwrap_err().kind,
            ErrorKind::LeaseLost
        );
        // The other consumer's lease is intact.
        q.delete(&other.id, &other.pop_receipt).await.unwrap();
    }

    /// Receives with a 10 s timeout (renewals every 5 s, margin 1 s) and holds the lease; the
    /// second renewal (at 10 s) is applied but its answer is lost.
    async fn uncertain_at_ten_seconds() -> (MemoryQueueService, Arc<dyn Queue>, Lease, Instant) {
        let (svc, q, metrics) = setup().await;
        let vis = Duration::from_secs(10);
        let t0 = Instant::now();
        let msg = q.receive(1, vis).await.unwrap().remove(0);
        let lease = Lease::hold(
            q.clone(),
            &msg,
            LeaseParams::new(vis),
            metrics,
            CancellationToken::new(),
        );
        tokio::time::sleep(Duration::from_secs(6)).await;
        svc.memory_queue("q").lose_update_answers(1);
        tokio::time::sleep_until(t0 + Duration::from_millis(10_100)).await;
        assert_eq!(
            svc.memory_queue("q").updates().len(),
            2,
            "two renewals sent"
        );
        (svc, q, lease, t0)
    }

    #[tokio::test(start_paused = true)]
    async fn an_unanswered_renewal_stops_renewing_and_ends_the_work_at_the_known_deadline() {
        let (svc, q, lease, t0) = uncertain_at_ten_seconds().await;
        // The first renewal (sent at 5 s) is the last answered one: known until 15 s, so the
        // work may go on until 14 s and no longer.
        let early = tokio::time::timeout_at(t0 + Duration::from_millis(13_900), lease.ended());
        assert!(early.await.is_err(), "stopped before the known deadline");
        let reason = tokio::time::timeout_at(t0 + Duration::from_millis(14_100), lease.ended())
            .await
            .expect("stopped at the known deadline");
        assert_eq!(reason, StopReason::LeaseExpired);
        assert!(!lease.lost().is_cancelled(), "uncertain is not lost");
        assert_eq!(
            svc.memory_queue("q").updates().len(),
            2,
            "nothing more sent with a receipt that may be stale"
        );
        // The final update is skipped too; the applied renewal keeps the message hidden until
        // 20 s, then it comes back by itself.
        lease
            .update(Duration::ZERO, Some("rewritten"))
            .await
            .unwrap();
        assert_eq!(svc.memory_queue("q").updates().len(), 2);
        assert!(
            q.receive(32, Duration::from_secs(10))
                .await
                .unwrap()
                .is_empty()
        );
        tokio::time::sleep_until(t0 + Duration::from_millis(20_100)).await;
        let again = q
            .receive(1, Duration::from_secs(10))
            .await
            .unwrap()
            .remove(0);
        assert_eq!((again.text.as_str(), again.dequeue_count), ("work", 2));
    }

    #[tokio::test(start_paused = true)]
    async fn work_done_under_an_uncertain_lease_is_not_acknowledged() {
        let (svc, q, lease, t0) = uncertain_at_ten_seconds().await;
        tokio::time::sleep_until(t0 + Duration::from_secs(12)).await;
        assert_eq!(lease.complete().await.unwrap(), Ack::LeftToReappear);
        let left = svc.memory_queue("q").snapshot();
        assert_eq!(left.len(), 1, "no delete was sent");
        assert!(!left[0].visible);
        tokio::time::sleep_until(t0 + Duration::from_millis(20_100)).await;
        assert_eq!(
            q.receive(1, Duration::from_secs(10)).await.unwrap().len(),
            1
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_refused_without_being_applied_is_retried_not_uncertain() {
        // Control for the two tests above: a definite failure keeps the lease held.
        let (svc, q, metrics) = setup().await;
        let vis = Duration::from_secs(10);
        let msg = q.receive(1, vis).await.unwrap().remove(0);
        let lease = Lease::hold(
            q.clone(),
            &msg,
            LeaseParams::new(vis),
            metrics,
            CancellationToken::new(),
        );
        svc.set_outage(true);
        tokio::time::sleep(Duration::from_millis(5_100)).await;
        svc.set_outage(false);
        let ended = tokio::time::timeout(Duration::from_secs(30), lease.ended());
        assert!(ended.await.is_err(), "a held lease never ends the work");
        assert_eq!(lease.complete().await.unwrap(), Ack::Deleted);
        assert!(svc.memory_queue("q").snapshot().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn update_releases_with_the_newest_receipt() {
        let (_svc, q, metrics) = setup().await;
        let vis = Duration::from_secs(4);
        let msg = q.receive(1, vis).await.unwrap().remove(0);
        let lease = Lease::hold(
            q.clone(),
            &msg,
            LeaseParams::new(vis),
            metrics,
            CancellationToken::new(),
        );
        tokio::time::sleep(Duration::from_secs(9)).await;
        lease
            .update(Duration::ZERO, Some("rewritten"))
            .await
            .unwrap();
        let again = q.receive(1, vis).await.unwrap().remove(0);
        assert_eq!(again.text, "rewritten");
    }

    /// The memory queue, but Update Message answers only after `delay` once `slow` is set
    /// (a brownout), for the bound on stopping renewal.
    #[derive(Debug)]
    struct SlowUpdates {
        inner: Arc<dyn Queue>,
        slow: std::sync::atomic::AtomicBool,
        delay: Duration,
    }

    #[async_trait::async_trait]
    impl Queue for SlowUpdates {
        fn name(&self) -> &str {
            self.inner.name()
        }
        async fn create_if_missing(&self) -> Result<(), StorageError> {
            self.inner.create_if_missing().await
        }
        async fn send(&self, text: &str) -> Result<MessageId, StorageError> {
            self.inner.send(text).await
        }
        async fn receive(
            &self,
            max: u8,
            visibility: Duration,
        ) -> Result<Vec<Received>, StorageError> {
            self.inner.receive(max, visibility).await
        }
        async fn update(
            &self,
            id: &MessageId,
            receipt: &PopReceipt,
            visibility: Duration,
            new_text: Option<&str>,
        ) -> Result<PopReceipt, StorageError> {
            if self.slow.load(std::sync::atomic::Ordering::SeqCst) {
                tokio::time::sleep(self.delay).await;
            }
            self.inner.update(id, receipt, visibility, new_text).await
        }
        async fn delete(&self, id: &MessageId, receipt: &PopReceipt) -> Result<(), StorageError> {
            self.inner.delete(id, receipt).await
        }
        async fn peek(&self, max: u8) -> Result<Vec<Peeked>, StorageError> {
            self.inner.peek(max).await
        }
        async fn approximate_count(&self) -> Result<u64, StorageError> {
            self.inner.approximate_count().await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_interrupt_abandons_a_renewal_in_flight_and_leaves_the_lease_uncertain() {
        let (svc, q, metrics) = setup().await;
        let slow = Arc::new(SlowUpdates {
            inner: q.clone(),
            slow: true.into(),
            delay: Duration::from_secs(30),
        });
        let vis = Duration::from_secs(10);
        let msg = q.receive(1, vis).await.unwrap().remove(0);
        let interrupt = CancellationToken::new();
        let lease = Lease::hold(
            slow.clone(),
            &msg,
            LeaseParams::new(vis),
            metrics,
            interrupt.clone(),
        );
        // The first renewal leaves at 5 s and would be answered at 35 s.
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert!(
            svc.memory_queue("q").updates().is_empty(),
            "renewal still in flight"
        );
        let t = Instant::now();
        let release = tokio::spawn(lease.update(Duration::ZERO, None));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            !release.is_finished(),
            "without the interrupt it waits for the answer"
        );
        interrupt.cancel();
        tokio::time::timeout(Duration::from_millis(10), release)
            .await
            .expect("the interrupt ends the wait at once")
            .unwrap()
            .unwrap();
        assert!(t.elapsed() < Duration::from_secs(3));
        // Uncertain: no release was sent with a receipt the abandoned renewal may replace.
        assert!(svc.memory_queue("q").updates().is_empty());
        assert!(
            q.receive(1, vis).await.unwrap().is_empty(),
            "still hidden until its timeout"
        );
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(
            q.receive(1, vis).await.unwrap().len(),
            1,
            "reappears by itself"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_interrupt_between_renewals_still_releases_with_the_newest_receipt() {
        // Control: nothing in flight at the interrupt, so the lease is held and the release
        // is sent.
        let (_svc, q, metrics) = setup().await;
        let vis = Duration::from_secs(10);
        let msg = q.receive(1, vis).await.unwrap().remove(0);
        let interrupt = CancellationToken::new();
        let lease = Lease::hold(
            q.clone(),
            &msg,
            LeaseParams::new(vis),
            metrics,
            interrupt.clone(),
        );
        tokio::time::sleep(Duration::from_secs(7)).await; // one renewal answered
        interrupt.cancel();
        lease.update(Duration::ZERO, None).await.unwrap();
        assert_eq!(
            q.receive(1, vis).await.unwrap().len(),
            1,
            "released at once"
        );
    }
}
