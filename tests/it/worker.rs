//! `rollq worker` end to end against Azurite: the seed-like batch, three workers racing over
//! 300 messages, and `/metrics` counters checked against what happened.

use std::process::Command;
use std::time::Duration;

use crate::support::Azurite;
use crate::worker_support::*;

/// Issue 4, test 1: six seed-like files (one year of minutes each) submitted and processed;
/// outputs equal `rollq aggregate`'s; the queue is empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_seed_files_match_rollq_aggregate() {
    let az = Azurite::start();
    let conn = az.connect().await;
    let (queue, container) = fresh_queue_and_container(&conn).await;
    let dir = tempfile::tempdir().unwrap();
    let minutes_per_year = 365 * 24 * 60;
    for i in 1..=6u64 {
        let name = format!("temperature{i}.csv");
        let body = seed_csv(i, minutes_per_year);
        std::fs::write(dir.path().join(&name), &body).unwrap();
        upload(&conn.blobs, &container, &name, body).await;
        queue.send(&name).await.unwrap();
    }
    let mut worker = WorkerProc::spawn(&az, queue.name(), &container, &["--exit-when-idle", "3s"]);
    let status = worker.wait_exit(Duration::from_secs(600)).await;
    assert!(
        status.success(),
        "worker exit {status}; log:\n{}",
        worker.log()
    );

    for i in 1..=6u64 {
        let input = dir.path().join(format!("temperature{i}.csv"));
        let expected = dir.path().join(format!("expected{i}.csv"));
        let out = Command::new(env!("CARGO_BIN_EXE_rollq"))
            .arg("aggregate")
            .arg(&input)
            .arg("--output")
            .arg(&expected)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "rollq aggregate: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got = download(
            &conn.blobs,
            &container,
            &format!("temperature{i}_aggregated.csv"),
        )
        .await
        .unwrap_or_else(|| panic!("no output for temperature{i}.csv"));
        assert!(
            got == std::fs::read(&expected).unwrap(),
            "temperature{i}: output differs from rollq aggregate"
        );
        // One row per hour of the year plus the header.
        assert_eq!(got.iter().filter(|&&b| b == b'\n').count(), 365 * 24 + 1);
    }
    assert_queue_and_poison_empty(&conn, &queue).await;
}

/// Issue 4, test 6: three worker processes × 300 messages: 300 correct outputs, none
/// poisoned, queue empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_share_three_hundred_messages() {
    let az = Azurite::start();
    let conn = az.connect().await;
    let (queue, container) = fresh_queue_and_container(&conn).await;
    let n = 300u64;
    let mut expected = Vec::new();
    for i in 0..n {
        let body = seed_csv(i % 20, 120 + i);
        expected.push(expected_output(&body));
        upload(&conn.blobs, &container, &format!("m/{i:03}.csv"), body).await;
    }
    for i in 0..n {
        queue.send(&format!("m/{i:03}.csv")).await.unwrap();
    }
    let args = ["--exit-when-idle", "3s", "--max-in-flight", "4"];
    let mut workers: Vec<WorkerProc> = (0..3)
        .map(|_| WorkerProc::spawn(&az, queue.name(), &container, &args))
        .collect();
    for w in &mut workers {
        let status = w.wait_exit(Duration::from_secs(600)).await;
        assert!(status.success(), "worker exit {status}; log:\n{}", w.log());
    }
    for (i, want) in expected.iter().enumerate() {
        let got = download(&conn.blobs, &container, &format!("m/{i:03}_aggregated.csv")).await;
        assert!(got.as_ref() == Some(want), "output {i} missing or wrong");
    }
    assert_queue_and_poison_empty(&conn, &queue).await;
}

/// Issue 4, test 8: `/metrics` parsed with a Prometheus text parser; counters equal what
/// happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_happened() {
    let az = Azurite::start();
    let conn = az.connect().await;
    let (queue, container) = fresh_queue_and_container(&conn).await;
    let rows = 600u64;
    let mut bytes = 0usize;
    for i in 0..3u64 {
        let body = seed_csv(i, rows);
        bytes += body.len();
        upload(&conn.blobs, &container, &format!("g{i}.csv"), body).await;
        queue.send(&format!("g{i}.csv")).await.unwrap();
    }
    queue.send("{this is not json").await.unwrap();
    queue.send("already_aggregated.csv").await.unwrap();

    let worker = WorkerProc::spawn(
        &az,
        queue.name(),
        &container,
        &["--queue-stats-interval", "1s"],
    );
    let total = |s: &prometheus_parse::Scrape| {
        ["completed", "poisoned", "skipped", "retried", "released"]
            .iter()
            .map(|o| sample(s, "rollq_messages_total", &[("outcome", o)]).unwrap_or(0.0))
            .sum::<f64>()
    };
    let scrape = eventually(
        "five outcomes and sampled queue gauges",
        PATIENCE,
        || async {
            let s = worker.metrics().await;
            let settled = total(&s) == 5.0
                && sample(&s, "rollq_queue_messages", &[]) == Some(0.0)
                && sample(&s, "rollq_poison_queue_messages", &[]) == Some(1.0);
            settled.then_some(s)
        },
    )
    .await;
    let get = |name: &str, labels: &[(&str, &str)]| {
        sample(&scrape, name, labels).unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
    };
    assert_eq!(
        get("rollq_messages_total", &[("outcome", "completed")]),
        3.0
    );
    assert_eq!(get("rollq_messages_total", &[("outcome", "poisoned")]), 1.0);
    assert_eq!(get("rollq_messages_total", &[("outcome", "skipped")]), 1.0);
    assert_eq!(get("rollq_messages_total", &[("outcome", "retried")]), 0.0);
    assert_eq!(get("rollq_messages_total", &[("outcome", "released")]), 0.0);
    assert_eq!(get("rollq_rows_total", &[]), (3 * rows) as f64);
    assert_eq!(get("rollq_bad_rows_total", &[]), 0.0);
    assert_eq!(get("rollq_bytes_read_total", &[]), bytes as f64);
    assert_eq!(get("rollq_messages_in_flight", &[]), 0.0);
    assert_eq!(get("rollq_processing_duration_seconds_count", &[]), 5.0);
    assert_eq!(get("rollq_message_age_seconds_count", &[]), 3.0);
    assert_eq!(get("rollq_oldest_message_age_seconds", &[]), 0.0);
    assert!(get("rollq_last_success_timestamp_seconds", &[]) > 1.7e9);
    assert_eq!(
        get(
            "rollq_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    let (status, _) = worker.get("/healthz").await.unwrap();
    assert_eq!(status, 200);
    let (status, _) = worker.get("/readyz").await.unwrap();
    assert_eq!(status, 200);
}
