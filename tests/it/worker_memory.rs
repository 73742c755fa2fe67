//! Bounded memory of `rollq worker`, measured as the child's peak RSS (VmHWM): rolling up an
//! input many times larger than the download and upload buffers must not raise the peak by
//! more than those buffers (plus slack), whatever the input's size.

use std::time::Duration;

use crate::support::{Azurite, peak_rss_bytes};
use crate::worker_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peak_rss_does_not_grow_with_the_input() {
    if peak_rss_bytes(std::process::id()).is_none() {
        eprintln!("skipped: /proc/<pid>/status has no VmHWM on this system");
        return;
    }
    let az = Azurite::start();
    let conn = az.connect().await;
    let (queue, container) = fresh_queue_and_container(&conn).await;
    let small = seed_csv(1, 20_000); // about 0.5 MB
    let big = seed_csv(2, 4_000_000); // about 100 MB: 100 hours of buffers over
    let big_len = big.len() as u64;
    upload(&conn.blobs, &container, "small.csv", small).await;
    upload(&conn.blobs, &container, "big.csv", big).await;

    // One message at a time, default buffer sizes (2 × 2 × 4 MiB download, 4 MiB upload).
    let worker = WorkerProc::spawn(&az, queue.name(), &container, &["--max-in-flight", "1"]);
    let done = |n: f64| {
        let w = &worker;
        async move {
            let m = w.metrics().await;
            (sample(&m, "rollq_messages_total", &[("outcome", "completed")]) == Some(n))
                .then_some(())
        }
    };
    queue.send("small.csv").await.unwrap();
    eventually("small.csv completed", PATIENCE, || done(1.0)).await;
    let after_small = peak_rss_bytes(worker.pid()).unwrap();
    queue.send("big.csv").await.unwrap();
    eventually("big.csv completed", Duration::from_secs(600), || done(2.0)).await;
    let after_big = peak_rss_bytes(worker.pid()).unwrap();
    let growth = after_big.saturating_sub(after_small);
    eprintln!(
        "peak RSS: {} MiB after a 0.5 MB input, {} MiB after a {} MB input (+{} MiB)",
        after_small >> 20,
        after_big >> 20,
        big_len / 1_000_000,
        growth >> 20
    );
    // Buffers: 16 MiB download + 4 MiB output block + one block being staged + one chunk
    // being parsed; 48 MiB leaves room for allocator slack, far below the 100 MB input.
    assert!(growth < 48 << 20, "peak RSS grew by {} MiB", growth >> 20);
    assert!(
        download(&conn.blobs, &container, "big_aggregated.csv")
            .await
            .is_some(),
        "big.csv produced an output"
    );
}
