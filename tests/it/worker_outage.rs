//! Issue 10: the blob endpoint cut for longer than `--max-dequeue-count` × `--max-retry-delay`
//! with ten messages queued or in flight. The worker pauses (no receives, probes only),
//! `/readyz` turns 503 though queue calls still succeed, and it resumes by itself: every
//! message completes, nothing is poisoned.

use std::time::{Duration, Instant};

use crate::support::{Azurite, TcpProxy};
use crate::worker_support::*;

const MESSAGES: u64 = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_outage_pauses_the_worker_and_every_message_completes_after() {
    let az = Azurite::start();
    let conn = az.connect().await;
    let (queue, container) = fresh_queue_and_container(&conn).await;
    let blob_proxy = TcpProxy::start(az.blob_addr());
    let mut worker = WorkerProc::spawn_with(
        az.rollq_via(blob_proxy.addr(), az.queue_addr()),
        queue.name(),
        &container,
        &[
            "--max-dequeue-count",
            "2",
            "--retry-delay",
            "200ms",
            "--max-retry-delay",
            "1s",
            "--max-in-flight",
            "4",
            "--storage-timeout",
            "2s",
        ],
    );
    eventually("ready before the cut", PATIENCE, || async {
        (worker.status("/readyz").await == 200).then_some(())
    })
    .await;
    let mut inputs = Vec::new();
    for i in 0..MESSAGES {
        let body = seed_csv(40 + i, 60);
        upload(
            &conn.blobs,
            &container,
            &format!("cut{i}.csv"),
            body.clone(),
        )
        .await;
        inputs.push(body);
    }

    // Only the blob side goes down: Get Messages keeps succeeding, so before the pause the
    // worker would lease messages only to defer them, and /readyz stayed 200.
    blob_proxy.cut();
    let cut_at = Instant::now();
    for i in 0..MESSAGES {
        queue.send(&format!("cut{i}.csv")).await.unwrap();
    }
    eventually("readiness 503 during the cut", PATIENCE, || async {
        (worker.status("/readyz").await == 503).then_some(())
    })
    .await;
    let m = worker.metrics().await;
    assert_eq!(sample(&m, "rollq_worker_paused", &[]), Some(1.0));
    // Longer than --max-dequeue-count × --max-retry-delay (2 × 1 s).
    let cut_for = Duration::from_secs(4);
    tokio::time::sleep(cut_for.saturating_sub(cut_at.elapsed())).await;
    assert_eq!(
        worker.status("/readyz").await,
        503,
        "still paused: every probe meets the cut"
    );
    assert!(worker.alive(), "the worker died during the cut");
    blob_proxy.restore();

    for (i, input) in inputs.iter().enumerate() {
        let name = format!("cut{i}_aggregated.csv");
        let got = eventually("every output after the cut", PATIENCE, || async {
            download(&conn.blobs, &container, &name).await
        })
        .await;
        assert!(got == expected_output(input), "output {name} is wrong");
    }
    eventually("ready again", PATIENCE, || async {
        (worker.status("/readyz").await == 200).then_some(())
    })
    .await;
    eventually("queue empty", PATIENCE, || async {
        (queue.approximate_count().await.unwrap() == 0).then_some(())
    })
    .await;
    assert_queue_and_poison_empty(&conn, &queue).await;
    let m = worker.metrics().await;
    assert_eq!(sample(&m, "rollq_worker_paused", &[]), Some(0.0));
    assert!(sample(&m, "rollq_worker_pauses_total", &[]).is_some_and(|n| n >= 1.0));
    assert_eq!(
        sample(&m, "rollq_messages_total", &[("outcome", "completed")]),
        Some(MESSAGES as f64)
    );
    let log = worker.log();
    assert!(log.contains("pausing: no receives"), "{log}");
    assert!(log.contains("resuming"), "{log}");
    assert!(!log.contains("message poisoned"), "{log}");
}
