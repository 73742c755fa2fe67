//! `rollq worker` under failure against Azurite: poison paths, lease renewal over a slow
//! input, `kill -9` mid-file, and a storage outage through a TCP proxy.

use std::time::Duration;

use rollq::worker::envelope::Envelope;

use crate::support::http_proxy::{Action, Kind, Rule, When};
use crate::support::{Azurite, HttpProxy, TcpProxy};
use crate::worker_support::*;

/// Issue 4, test 2: a garbage message, a foreign URL, a missing blob, a malformed CSV and a
/// message over the dequeue limit all land in `<queue>-poison`, each copy an envelope holding
/// the original text and why; nothing is left. Then (issue 10) `rollq poison list` shows each
/// reason and `rollq poison requeue` sends the original texts back without the envelope.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_paths() {
    let az = Azurite::start();
    let conn = az.connect().await;
    let (queue, container) = fresh_queue_and_container(&conn).await;
    upload(
        &conn.blobs,
        &container,
        "malformed.csv",
        b"Datetime,Temperature\nnot a time,1\n".to_vec(),
    )
    .await;
    upload(&conn.blobs, &container, "fine.csv", seed_csv(1, 10)).await;
    // A message already received twice, with --max-dequeue-count 1 below: poisoned unread.
    queue.send("fine.csv").await.unwrap();
    for _ in 0..2 {
        let got = eventually("fine.csv visible", PATIENCE, || async {
            queue
                .receive(1, Duration::from_secs(30))
                .await
                .unwrap()
                .pop()
        })
        .await;
        queue
            .update(&got.id, &got.pop_receipt, Duration::ZERO, None)
            .await
            .unwrap();
    }
    let texts = [
        "{\"garbage\": true",
        "https://someoneelse.blob.core.windows.net/data/t.csv",
        "does-not-exist.csv",
        "malformed.csv",
    ];
    for t in texts {
        queue.send(t).await.unwrap();
    }

    let mut worker = WorkerProc::spawn(
        &az,
        queue.name(),
        &container,
        &["--exit-when-idle", "2s", "--max-dequeue-count", "1"],
    );
    let status = worker.wait_exit(PATIENCE).await;
    assert!(status.success(), "exit {status}");
    let poison = conn.queues.queue(&format!("{}-poison", queue.name()));
    let copies = peek_texts(&poison).await;
    let mut got: Vec<String> = copies.iter().map(|t| Envelope::open(t).original).collect();
    got.sort();
    let mut reasons: Vec<String> = copies
        .iter()
        .map(|t| Envelope::open(t).poison.expect("an enveloped copy").reason)
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            "bad_message",
            "input_not_found",
            "invalid_input",
            "refused",
            "too_many_attempts"
        ]
    );
    let mut want: Vec<String> = texts.iter().map(|s| s.to_string()).collect();
    want.push("fine.csv".into());
    want.sort();
    assert_eq!(got, want);
    assert_eq!(queue.approximate_count().await.unwrap(), 0);
    assert!(
        download(&conn.blobs, &container, "fine_aggregated.csv")
            .await
            .is_none(),
        "poisoned before work"
    );
    assert!(
        download(&conn.blobs, &container, "malformed_aggregated.csv")
            .await
            .is_none()
    );
    let log = worker.log();
    assert!(
        log.contains("too_many_attempts")
            && log.contains("invalid_input")
            && log.contains("refused"),
        "{log}"
    );

    let (listed, _) = az.rollq_ok(&["poison", "list", "--queue", queue.name()]);
    assert!(listed.contains("5 message(s)"), "{listed}");
    assert!(
        listed.contains("reason too_many_attempts (message, ")
            && listed.contains("deliveries 3 attempts 3")
            && listed.contains("reason invalid_input (permanent, ")
            && listed.contains("\"does-not-exist.csv\""),
        "{listed}"
    );
    let (out, _) = az.rollq_ok(&["poison", "requeue", "--queue", queue.name()]);
    assert!(out.contains("requeued 5 message(s)"), "{out}");
    let mut back = peek_texts(&queue).await;
    back.sort();
    assert_eq!(back, want, "the original texts, without the envelope");
    assert_eq!(poison.approximate_count().await.unwrap(), 0);
}

/// Seed rows whose size at `rate` bytes/s takes about `secs` to download.
fn slow_input(rate: usize, secs: usize) -> Vec<u8> {
    let rows = (rate * secs / 26) as u64;
    seed_csv(7, rows)
}

/// Issue 4, test 3: with a 5 s visibility timeout and an input that takes over three timeouts
/// to read, no second consumer ever sees the message while the first works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_keeps_a_slow_message_leased() {
    let az = Azurite::start();
    let conn = az.connect().await;
    let (queue, container) = fresh_queue_and_container(&conn).await;
    let rate = 40 * 1024;
    let body = slow_input(rate, 18);
    let expected = expected_output(&body);
    upload(&conn.blobs, &container, "slow.csv", body).await;
    queue.send("slow.csv").await.unwrap();

    let (_slow, worker) = spawn_slow_worker(
        &az,
        rate,
        queue.name(),
        &container,
        &["--visibility-timeout", "5s"],
    );
    let started = std::time::Instant::now();
    eventually("the worker holding the message", PATIENCE, || async {
        let m = worker.metrics().await;
        (sample(&m, "rollq_messages_in_flight", &[]) == Some(1.0)).then_some(())
    })
    .await;
    // From now on a competing consumer polls all along; it must never get the message.
    loop {
        let stolen = queue.receive(32, Duration::from_secs(1)).await.unwrap();
        assert!(
            stolen.is_empty(),
            "a second consumer received {:?} after {:?}",
            stolen[0].text,
            started.elapsed()
        );
        if download(&conn.blobs, &container, "slow_aggregated.csv")
            .await
            .is_some()
        {
            break;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "the slow message never finished"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        started.elapsed() > Duration::from_secs(15),
        "the input was not slow enough to prove renewal"
    );
    let got = download(&conn.blobs, &container, "slow_aggregated.csv")
        .await
        .unwrap();
    assert!(got == expected);
    eventually("the message deleted", PATIENCE, || async {
        (queue.approximate_count().await.unwrap() == 0).then_some(())
    })
    .await;
    let m = worker.metrics().await;
    assert!(sample(&m, "rollq_lease_renewals_total", &[("result", "ok")]).unwrap_or(0.0) >= 3.0);
    assert_eq!(
        sample(&m, "rollq_lease_renewals_total", &[("result", "lost")]).unwrap_or(0.0),
        0.0
    );
}

/// Issue 4, test 4: `kill -9` of a worker mid-file; another worker finishes it after the
/// visibility timeout, and the output is correct.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_file_is_finished_by_another_worker() {
    let az = Azurite::start();
    let conn = az.connect().await;
    let (queue, container) = fresh_queue_and_container(&conn).await;
    let rate = 40 * 1024;
    let body = slow_input(rate, 30);
    let expected = expected_output(&body);
    upload(&conn.blobs, &container, "big.csv", body).await;
    queue.send("big.csv").await.unwrap();

    let (_slow, mut first) = spawn_slow_worker(
        &az,
        rate,
        queue.name(),
        &container,
        &["--visibility-timeout", "5s"],
    );
    first
        .wait_reading("the first worker reading the input")
        .await;
    first.kill9();
    assert!(
        download(&conn.blobs, &container, "big_aggregated.csv")
            .await
            .is_none()
    );

    let mut second = WorkerProc::spawn(
        &az,
        queue.name(),
        &container,
        &["--visibility-timeout", "5s", "--exit-when-idle", "2s"],
    );
    let status = second.wait_exit(PATIENCE).await;
    assert!(status.success(), "exit {status}");
    let got = download(&conn.blobs, &container, "big_aggregated.csv").await;
    assert!(got.as_ref() == Some(&expected), "output missing or wrong");
    assert_queue_and_poison_empty(&conn, &queue).await;
}

/// Issue 4, test 7: a TCP proxy between worker and Azurite is cut for ~10 s and restored: the
/// worker survives, readiness flips to 503 and back, liveness stays 200, nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_outage_flips_readiness_and_loses_nothing() {
    let az = Azurite::start();
    let conn = az.connect().await;
    let (queue, container) = fresh_queue_and_container(&conn).await;
    let blob_proxy = TcpProxy::start(az.blob_addr());
    let queue_proxy = TcpProxy::start(az.queue_addr());
    let mut worker = WorkerProc::spawn_with(
        az.rollq_via(blob_proxy.addr(), queue_proxy.addr()),
        queue.name(),
        &container,
        &[
            "--unready-after",
            "2s",
            "--visibility-timeout",
            "5s",
            "--storage-timeout",
            "2s",
            "--queue-stats-interval",
            "1s",
        ],
    );
    eventually("ready before the outage", PATIENCE, || async {
        (worker.status("/readyz").await == 200).then_some(())
    })
    .await;
    for i in 0..3u64 {
        upload(
            &conn.blobs,
            &container,
            &format!("before{i}.csv"),
            seed_csv(i, 100),
        )
        .await;
        queue.send(&format!("before{i}.csv")).await.unwrap();
    }
    eventually("the first three done", PATIENCE, || async {
        (download(&conn.blobs, &container, "before2_aggregated.csv")
            .await
            .is_some()
            && queue.approximate_count().await.unwrap() == 0)
            .then_some(())
    })
    .await;

    blob_proxy.cut();
    queue_proxy.cut();
    let cut_at = std::time::Instant::now();
    // Work submitted during the outage (straight to Azurite) must not be lost.
    for i in 0..3u64 {
        upload(
            &conn.blobs,
            &container,
            &format!("during{i}.csv"),
            seed_csv(10 + i, 100),
        )
        .await;
        queue.send(&format!("during{i}.csv")).await.unwrap();
    }
    eventually("readiness 503 during the outage", PATIENCE, || async {
        (worker.status("/readyz").await == 503).then_some(())
    })
    .await;
    assert_eq!(
        worker.status("/healthz").await,
        200,
        "liveness must not follow storage"
    );
    let outage = Duration::from_secs(10).saturating_sub(cut_at.elapsed());
    tokio::time::sleep(outage).await;
    assert!(worker.alive(), "the worker died during the outage");
    blob_proxy.restore();
    queue_proxy.restore();
    eventually("ready again", PATIENCE, || async {
        (worker.status("/readyz").await == 200).then_some(())
    })
    .await;

    for i in 0..3u64 {
        let name = format!("during{i}_aggregated.csv");
        let got = eventually(
            "outputs of work sent during the outage",
            PATIENCE,
            || async { download(&conn.blobs, &container, &name).await },
        )
        .await;
        assert!(got == expected_output(&seed_csv(10 + i, 100)));
    }
    eventually("queue empty", PATIENCE, || async {
        (queue.approximate_count().await.unwrap() == 0).then_some(())
    })
    .await;
    let poison = conn.queues.queue(&format!("{}-poison", queue.name()));
    assert_eq!(poison.approximate_count().await.unwrap(), 0);
    let m = worker.metrics().await;
    assert!(
        sample(&m, "rollq_storage_errors_total", &[("op", "receive")]).is_some(),
        "receive errors were counted"
    );
    assert!(worker.alive());
}

/// Issue 10: blob storage answering 503 for longer than `--max-dequeue-count` attempts is a
/// platform failure: nothing is poisoned, every message completes once it passes. The HTTP
/// proxy answers the first 24 Get Blob requests (every job's first blob call) with 503 itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_503s_longer_than_max_dequeue_count_poison_nothing() {
    let az = Azurite::start();
    let conn = az.connect().await;
    let (queue, container) = fresh_queue_and_container(&conn).await;
    let busy = 24;
    let blob_proxy = HttpProxy::start(
        az.blob_addr(),
        10,
        vec![Rule {
            kind: Kind::BlobGet,
            when: When::FirstN(busy),
            action: Action::Answer {
                status: 503,
                retry_after: None,
            },
        }],
    );
    let mut bodies = Vec::new();
    for i in 0..3u64 {
        let body = seed_csv(20 + i, 50);
        bodies.push(expected_output(&body));
        upload(&conn.blobs, &container, &format!("busy{i}.csv"), body).await;
        queue.send(&format!("busy{i}.csv")).await.unwrap();
    }
    let mut worker = WorkerProc::spawn_with(
        az.rollq_via(blob_proxy.addr(), az.queue_addr()),
        queue.name(),
        &container,
        &[
            "--exit-when-idle",
            "2s",
            "--max-dequeue-count",
            "2",
            "--retry-delay",
            "100ms",
            "--max-retry-delay",
            "400ms",
            "--storage-timeout",
            "2s",
        ],
    );
    let status = worker.wait_exit(PATIENCE).await;
    assert!(status.success(), "exit {status}; log:\n{}", worker.log());
    for (i, want) in bodies.iter().enumerate() {
        let got = download(&conn.blobs, &container, &format!("busy{i}_aggregated.csv")).await;
        assert!(got.as_ref() == Some(want), "output {i} missing or wrong");
    }
    assert_queue_and_poison_empty(&conn, &queue).await;
    let log = worker.log();
    assert!(!log.contains("message poisoned"), "{log}");
    let (_, answered) = blob_proxy.count(Kind::BlobGet);
    assert_eq!(answered, busy, "every injected 503 was served");
}
