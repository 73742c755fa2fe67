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
//! the newest receipt.

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
}

impl Lease {
    /// Starts renewing `msg`'s visibility in the background.
    pub fn hold(
        queue: Arc<dyn Queue>,
        msg: &Received,
        params: LeaseParams,
        metrics: Metrics,
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

    async fn stop_renewal(&mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
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
        // timeout.
        let sent = Instant::now();
        let e = match r
            .queue
            .update(id, &held.receipt, params.visibility, None)
            .await
        {
            Ok(fresh) => {
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
        let lease = Lease::hold(q.clone(), &msg, LeaseParams::new(vis), metrics.clone());
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
        let lease = Lease::hold(q.clone(), &msg, LeaseParams::new(vis), metrics.clone());
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
        let lease = Lease::hold(q.clone(), &msg, LeaseParams::new(vis), metrics);
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
        let lease = Lease::hold(q.clone(), &msg, LeaseParams::new(vis), metrics);
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
        let lease = Lease::hold(q.clone(), &msg, LeaseParams::new(vis), metrics);
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
        let lease = Lease::hold(q.clone(), &msg, LeaseParams::new(vis), metrics);
        tokio::time::sleep(Duration::from_secs(9)).await;
        lease
            .update(Duration::ZERO, Some("rewritten"))
            .await
            .unwrap();
        let again = q.receive(1, vis).await.unwrap().remove(0);
        assert_eq!(again.text, "rewritten");
    }
}
