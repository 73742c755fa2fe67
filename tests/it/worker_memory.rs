//! Bounded memory of `rollq worker`, measured as the child's peak RSS (VmHWM): rolling up an
//! input many times larger than the download and upload buffers must not raise the peak by
//! more than those buffers (plus slack), whatever the input's size. And `--memory-budget` in a
//! real worker: a budget for one large job runs large jobs one at a time (read from the
//! worker's JSON log), and a message waiting for memory at SIGTERM is released at once.

use std::time::{Duration, Instant};

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

// === the memory budget ===

/// Flags that make one job's reservation small and exact (the sizing rule in `budget.rs`):
/// download 2 × 1 × 1 MiB, output 2 × 1 MiB, held state 16,384 cells × 48 B = 768 KiB, so
/// 4,864 KiB before the size is known and for any input of 1 MiB or more.
const SMALL_BUFFERS: [&str; 8] = [
    "--download-block-size",
    "1MiB",
    "--download-parallel",
    "1",
    "--upload-block-size",
    "1MiB",
    "--max-held-cells",
    "16384",
];

/// One job's reservation under [`SMALL_BUFFERS`], in KiB.
const ONE_JOB_KIB: u64 = 2 * 1024 + 2 * 1024 + 16_384 * 48 / 1024;

/// From the worker's JSON log: for each message id, the order (line number) at which it
/// reserved its memory and returned it, and the blob it named (from its outcome line).
#[derive(Debug, Default)]
struct Holding {
    reserved: Option<usize>,
    /// What it reserved (before its size was known).
    bytes: Option<u64>,
    returned: Option<usize>,
    blob: Option<String>,
    completed: bool,
}

fn holdings(log: &str) -> std::collections::HashMap<String, Holding> {
    let mut by_id = std::collections::HashMap::<String, Holding>::new();
    for (n, line) in log.lines().enumerate() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let Some(id) = v["span"]["message_id"].as_str() else {
            continue;
        };
        let h = by_id.entry(id.to_owned()).or_default();
        match v["message"].as_str() {
            Some("memory reserved") => {
                h.reserved = Some(n);
                h.bytes = v["bytes"].as_u64();
            }
            Some("memory returned") => h.returned = Some(n),
            Some("message completed") => {
                h.completed = true;
                h.blob = v["span"]["blob"].as_str().map(str::to_owned);
            }
            _ => {}
        }
    }
    by_id
}

/// Pairs of large inputs (by blob name) whose memory was held at the same time.
fn overlapping_large(by_id: &std::collections::HashMap<String, Holding>) -> Vec<(String, String)> {
    let large: Vec<(&str, usize, usize)> = by_id
        .values()
        .filter_map(|h| {
            let blob = h.blob.as_deref()?;
            blob.contains("large").then(|| {
                (
                    blob,
                    h.reserved.expect("reserved"),
                    h.returned.expect("returned"),
                )
            })
        })
        .collect();
    assert_eq!(
        large.len(),
        4,
        "every large job found in the log: {by_id:#?}"
    );
    // The worker reserved what the sizing rule says, so the budgets below mean what they say.
    assert!(
        by_id.values().all(|h| h.bytes == Some(ONE_JOB_KIB * 1024)),
        "each job reserves {ONE_JOB_KIB} KiB: {by_id:#?}"
    );
    let mut pairs = Vec::new();
    for (i, a) in large.iter().enumerate() {
        for b in &large[i + 1..] {
            // Held at once unless one returned its memory before the other reserved.
            if !(a.2 < b.1 || b.2 < a.1) {
                pairs.push((a.0.to_owned(), b.0.to_owned()));
            }
        }
    }
    pairs
}

/// Runs one worker over four large and four small inputs, all queued before it starts, with
/// `--max-in-flight 4` and `budget`; checks every output against the reducer's and returns
/// the pairs of large jobs that held memory at once, and the most jobs seen waiting.
async fn drain_mixed_backlog(budget: &str) -> (Vec<(String, String)>, f64) {
    let az = Azurite::start();
    let conn = az.connect().await;
    let (queue, container) = fresh_queue_and_container(&conn).await;
    let mut expected = Vec::new();
    for i in 0..4u64 {
        // About 4 MB each (150,000 rows): well over the 1 MiB download buffers, so each
        // keeps its whole reservation, and a second or more of work in a debug build.
        let large = seed_csv(10 + i, 150_000);
        let small = seed_csv(20 + i, 1_440);
        for (name, body) in [(format!("large{i}"), large), (format!("small{i}"), small)] {
            expected.push((format!("{name}_aggregated.csv"), expected_output(&body)));
            upload(&conn.blobs, &container, &format!("{name}.csv"), body).await;
        }
    }
    // Large first, so all four large jobs are in the first batch and would start together.
    for i in 0..4 {
        queue.send(&format!("large{i}.csv")).await.unwrap();
    }
    for i in 0..4 {
        queue.send(&format!("small{i}.csv")).await.unwrap();
    }
    let mut args = vec![
        "--max-in-flight",
        "4",
        "--memory-budget",
        budget,
        "--exit-when-idle",
        "1s",
        "--log-format",
        "json",
    ];
    args.extend(SMALL_BUFFERS);
    let mut worker = WorkerProc::spawn(&az, queue.name(), &container, &args);
    // The waiting gauge, sampled while the backlog drains (a sample, not a proof: the log
    // below is the proof).
    let mut most_waiting: f64 = 0.0;
    let deadline = Instant::now() + PATIENCE;
    while worker.alive() {
        assert!(Instant::now() < deadline, "the backlog did not drain");
        if let Ok((200, body)) = worker.get("/metrics").await {
            let lines = body.lines().map(|l| Ok(l.to_owned()));
            if let Ok(m) = prometheus_parse::Scrape::parse(lines) {
                let w = sample(&m, "rollq_worker_memory_waiting", &[]).unwrap_or(0.0);
                most_waiting = most_waiting.max(w);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = worker.wait_exit(PATIENCE).await;
    assert!(status.success(), "exit {status}; log:\n{}", worker.log());
    for (name, want) in &expected {
        let got = download(&conn.blobs, &container, name).await;
        assert!(got.as_ref() == Some(want), "{name} missing or wrong");
    }
    assert_queue_and_poison_empty(&conn, &queue).await;
    let by_id = holdings(&worker.log());
    let completed = by_id.values().filter(|h| h.completed).count();
    assert_eq!(completed, 8, "every input completed once: {by_id:#?}");
    (overlapping_large(&by_id), most_waiting)
}

/// Issue 14: `--memory-budget` bounds concurrency by memory in a real worker. A budget that
/// fits one large job's reservation but not two runs the four large inputs one at a time
/// although four slots are free, and the small inputs queued behind them still complete
/// (the budget's semaphore is fair; nothing is starved). The same backlog under a budget
/// for all four does run large jobs at once, so the first half can fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_for_one_large_job_runs_large_jobs_one_at_a_time() {
    // 6 MiB: one reservation (4,864 KiB) fits, two (9,728 KiB) do not.
    let budget = "6MiB";
    const { assert!(ONE_JOB_KIB <= 6 * 1024 && 2 * ONE_JOB_KIB > 6 * 1024) };
    let (overlaps, most_waiting) = drain_mixed_backlog(budget).await;
    assert!(
        overlaps.is_empty(),
        "large jobs held memory at once under a budget for one: {overlaps:?}"
    );
    eprintln!("budget {budget}: at most {most_waiting} jobs seen waiting for memory");

    // Control: room for four reservations. Without it the assertion above proves nothing.
    let (overlaps, most_waiting) = drain_mixed_backlog("64MiB").await;
    assert!(
        !overlaps.is_empty(),
        "with room for four, large jobs should have run at once"
    );
    assert_eq!(most_waiting, 0.0, "nothing waits under a budget for four");
}

/// Issue 14: a message waiting for memory at SIGTERM is released at once (a release, not an
/// attempt) instead of being held through the drain, and never starts its work after the
/// signal; the job holding the budget drains and completes; the worker exits 0 within
/// `--drain-timeout` + 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_releases_a_message_waiting_for_memory() {
    let az = Azurite::start();
    let conn = az.connect().await;
    let (queue, container) = fresh_queue_and_container(&conn).await;
    // Through the slow link (256 KiB blocks, one at a time) at 128 KiB/s, 1.5 MiB takes
    // about 12 s: still running at the signal, finished well inside the drain.
    let rate = 128 * 1024;
    let first = seed_csv(30, 60_000);
    let second = seed_csv(31, 60_000);
    let (want_first, want_second) = (expected_output(&first), expected_output(&second));
    upload(&conn.blobs, &container, "first.csv", first).await;
    upload(&conn.blobs, &container, "second.csv", second).await;
    queue.send("first.csv").await.unwrap();
    // Reservation under these flags: download 2 × 256 KiB, output 2 × 1 MiB, held state
    // 768 KiB = 3,328 KiB; a 4 MiB budget holds one, not two.
    let drain = Duration::from_secs(30);
    let (_slow, mut worker) = spawn_slow_worker(
        &az,
        rate,
        queue.name(),
        &container,
        &[
            "--max-in-flight",
            "2",
            "--memory-budget",
            "4MiB",
            "--upload-block-size",
            "1MiB",
            "--max-held-cells",
            "16384",
            "--drain-timeout",
            "30s",
        ],
    );
    worker.wait_reading("first.csv under way").await;
    queue.send("second.csv").await.unwrap();
    eventually("second.csv waiting for memory", PATIENCE, || async {
        let m = worker.metrics().await;
        (sample(&m, "rollq_worker_memory_waiting", &[]) == Some(1.0)).then_some(())
    })
    .await;
    worker.sigterm();
    let signalled = Instant::now();

    // Released at once: visible again while first.csv is still draining. (Before the fix it
    // stayed leased until first.csv finished, then started its own work after the signal.)
    eventually(
        "second.csv visible again",
        Duration::from_secs(5),
        || async {
            let texts = peek_texts(&queue).await;
            texts.iter().any(|t| t.contains("second.csv")).then_some(())
        },
    )
    .await;
    assert!(worker.alive(), "still draining first.csv");
    let status = worker.wait_exit(drain + Duration::from_secs(10)).await;
    assert!(status.success(), "exit {status}; log:\n{}", worker.log());
    assert!(
        signalled.elapsed() < drain + Duration::from_secs(10),
        "took {:?} to stop",
        signalled.elapsed()
    );
    let got = download(&conn.blobs, &container, "first_aggregated.csv").await;
    assert!(
        got.as_ref() == Some(&want_first),
        "first.csv drained and completed"
    );
    assert!(
        download(&conn.blobs, &container, "second_aggregated.csv")
            .await
            .is_none(),
        "second.csv never started"
    );

    // The release was not an attempt: a `--max-dequeue-count 1` worker still completes it.
    drain_allowing_one_attempt(&az, queue.name(), &container).await;
    let got = download(&conn.blobs, &container, "second_aggregated.csv").await;
    assert!(
        got.as_ref() == Some(&want_second),
        "second.csv output missing or wrong"
    );
    assert_queue_and_poison_empty(&conn, &queue).await;
}
