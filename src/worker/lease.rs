//! `Lease`: keeps one received message invisible while it is processed.
//!
//! `process_one` holds a lease for every message. A background task extends the visibility
//! timeout at half of it, always with the newest pop receipt, and cancels [`Lease::lost`] when
//! the service says another consumer owns the message. The final call (`complete` deletes,
//! `update` retries or releases) first stops renewal, so it uses the newest receipt too.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::metrics::{Metrics, RenewalResult};
use crate::storage::Op;
use crate::storage::{ErrorKind, MessageId, PopReceipt, Queue, Received, StorageError};

/// Timing of renewals.
#[derive(Clone, Copy, Debug)]
pub struct LeaseParams {
    /// The visibility timeout set at receive and at every renewal.
    pub visibility: Duration,
    /// Time between renewals (half the visibility timeout, so one failed renewal still
    /// leaves time for another).
    pub renew_every: Duration,
}

impl LeaseParams {
    /// Renews at half of `visibility`.
    pub fn new(visibility: Duration) -> Self {
        LeaseParams {
            visibility,
            renew_every: visibility / 2,
        }
    }
}

/// Keeps one received message invisible while it is processed.
#[must_use = "call `complete` after the output is written, or `update` to retry or release"]
#[derive(Debug)]
pub struct Lease {
    queue: Arc<dyn Queue>,
    id: MessageId,
    /// The newest pop receipt. The renewal task holds the lock across each Update Message, so
    /// a final call never races a renewal with a receipt about to go stale.
    receipt: Arc<Mutex<PopReceipt>>,
    /// Cancelled by the renewal task when the lease is lost; work watches it and stops.
    lost: CancellationToken,
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
        let receipt = Arc::new(Mutex::new(msg.pop_receipt.clone()));
        let lost = CancellationToken::new();
        let stop = CancellationToken::new();
        let task = tokio::spawn(renew(
            queue.clone(),
            msg.id.clone(),
            receipt.clone(),
            params,
            metrics,
            lost.clone(),
            stop.clone(),
        ));
        Lease {
            queue,
            id: msg.id.clone(),
            receipt,
            lost,
            stop,
            task: Some(task),
        }
    }

    /// Cancelled once renewal learns that another consumer owns the message.
    pub fn lost(&self) -> &CancellationToken {
        &self.lost
    }

    async fn stop_renewal(&mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Deletes the message with the newest receipt: the work is done.
    pub async fn complete(mut self) -> Result<(), StorageError> {
        self.stop_renewal().await;
        if self.lost.is_cancelled() {
            return Err(lost_error(Op::Delete, self.queue.name()));
        }
        let receipt = self.receipt.lock().await.clone();
        self.queue.delete(&self.id, &receipt).await
    }

    /// Makes the message visible again after `visibility` (0 releases it at once), optionally
    /// rewriting its text; ends the lease.
    pub async fn update(
        mut self,
        visibility: Duration,
        new_text: Option<&str>,
    ) -> Result<(), StorageError> {
        self.stop_renewal().await;
        if self.lost.is_cancelled() {
            return Err(lost_error(Op::Update, self.queue.name()));
        }
        let receipt = self.receipt.lock().await.clone();
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

async fn renew(
    queue: Arc<dyn Queue>,
    id: MessageId,
    receipt: Arc<Mutex<PopReceipt>>,
    params: LeaseParams,
    metrics: Metrics,
    lost: CancellationToken,
    stop: CancellationToken,
) {
    let mut wait = params.renew_every;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let mut current = receipt.lock().await;
        if stop.is_cancelled() {
            return;
        }
        match queue.update(&id, &current, params.visibility, None).await {
            Ok(fresh) => {
                *current = fresh;
                metrics.renewal(RenewalResult::Ok);
                tracing::debug!(message_id = %id, "lease renewed");
                wait = params.renew_every;
            }
            Err(e) if e.kind.is_lease_lost() => {
                metrics.renewal(RenewalResult::Lost);
                metrics.storage_error(Op::Renew, e.kind);
                tracing::warn!(message_id = %id, error.message = %e, "lease lost; stopping work");
                lost.cancel();
                return;
            }
            Err(e) => {
                // Retry sooner: the current timeout still has about half of its time left.
                metrics.renewal(RenewalResult::Error);
                metrics.storage_error(Op::Renew, e.kind);
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
