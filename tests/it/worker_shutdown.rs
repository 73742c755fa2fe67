//! `rollq worker` shutdown against Azurite: SIGTERM mid-file drains or releases within the
//! drain timeout, exits 0, and loses nothing.

use std::time::{Duration, Instant};

use crate::support::Azurite;
use crate::worker_support::*;

/// Issue 4, test 5: SIGTERM while a slow file is in flight: readiness goes false, the worker
/// releases the message at the drain deadline and exits 0; the release does not count as an
/// attempt (a `--max-dequeue-count 1` worker still completes it); nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_file_releases_and_exits_zero() {
    let az = Azurite::start();
    let conn = az.connect().await;
    let (queue, container) = fresh_queue_and_container(&conn).await;
    let rate = 40 * 1024;
    let body = seed_csv(3, (rate * 60 / 26) as u64); // about a minute through the slow link
    let expected = expected_output(&body);
    upload(&conn.blobs, &container, "long.csv", body).await;
    upload(&conn.blobs, &container, "short.csv", seed_csv(4, 50)).await;
    queue.send("long.csv").await.unwrap();

    let (_slow, mut worker) = spawn_slow_worker(
        &az,
        rate,
        queue.name(),
        &container,
        &["--drain-timeout", "2s", "--max-in-flight", "1"],
    );
    worker.wait_reading("the worker reading the input").await;
    // Submitted after the work began: must stay in the queue for someone else.
    queue.send("short.csv").await.unwrap();
    worker.sigterm();
    let signalled = Instant::now();
    // Draining: not ready, still serving probes.
    eventually(
        "readiness 503 while draining",
        Duration::from_secs(2),
        || async { matches!(worker.get("/readyz").await, Ok((503, _))).then_some(()) },
    )
    .await;
    let status = worker.wait_exit(PATIENCE).await;
    assert!(status.success(), "exit {status}; log:\n{}", worker.log());
    assert!(
        signalled.elapsed() < Duration::from_secs(15),
        "took {:?} to stop",
        signalled.elapsed()
    );
    assert!(
        worker.log().contains("releasing in-flight"),
        "{}",
        worker.log()
    );
    assert!(
        download(&conn.blobs, &container, "long_aggregated.csv")
            .await
            .is_none()
    );

    // Released with visibility 0: both messages are visible at once.
    eventually("both messages visible", PATIENCE, || async {
        (queue.peek(32).await.unwrap().len() == 2).then_some(())
    })
    .await;
    drain_allowing_one_attempt(&az, queue.name(), &container).await;
    let got = download(&conn.blobs, &container, "long_aggregated.csv").await;
    assert!(
        got.as_ref() == Some(&expected),
        "long.csv output missing or wrong"
    );
    assert!(
        download(&conn.blobs, &container, "short_aggregated.csv")
            .await
            .is_some()
    );
    assert_queue_and_poison_empty(&conn, &queue).await;
}
