//! `rollq worker` shutdown during a storage brownout (issue 12): every wait on the way out is
//! bounded, so a worker whose queue service answers seconds late still exits within
//! `--drain-timeout` + 10 s, and the message it held is not lost.

use std::time::{Duration, Instant};

use crate::support::http_proxy::{Action, Kind, Rule, When};
use crate::support::{Azurite, HttpProxy, TcpProxy};
use crate::worker_support::*;

/// The worker's drain timeout in this test.
const DRAIN: Duration = Duration::from_secs(2);

/// The service's contract: a SIGTERM'd worker is gone within `--drain-timeout` + 10 s (what
/// the deploy checks require of `terminationGracePeriodSeconds`). A bound, not a benchmark.
const EXIT_BOUND: Duration = Duration::from_secs(DRAIN.as_secs() + 10);

/// SIGTERM while a slow file is in flight and its lease renewal is held by the proxy for
/// longer than the drain has left (8 s, with `--storage-timeout 30s` so the storage timeout
/// alone would not save it), the final Update and Delete held as long, and the queue-stats
/// sample's Peek held for 30 s: the worker abandons the renewal at the drain deadline (the
/// lease becomes uncertain, so no release is sent with a receipt that may be stale), cancels
/// the stats task, exits 0 within the bound, and the message reappears by itself and is
/// completed by a second worker; nothing is poisoned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_brownout_exits_within_the_drain_bound() {
    let az = Azurite::start();
    let conn = az.connect().await;
    let (queue, container) = fresh_queue_and_container(&conn).await;
    let rate = 40 * 1024;
    let body = seed_csv(7, (rate * 60 / 26) as u64); // about a minute through the slow link
    let expected = expected_output(&body);
    upload(&conn.blobs, &container, "long.csv", body).await;
    queue.send("long.csv").await.unwrap();

    let hold = |kind, d| Rule {
        kind,
        when: When::Rate(1.0),
        action: Action::Hold(d),
    };
    let brownout = Duration::from_secs(8);
    // Receive stays fast (the worker must get the message); everything else the way out
    // touches answers late. Get Queue Metadata is left alone so the start-up check is quick.
    let queue_proxy = HttpProxy::start(
        az.queue_addr(),
        12,
        vec![
            hold(Kind::Update, brownout),
            hold(Kind::Delete, brownout),
            hold(Kind::Peek, Duration::from_secs(30)),
        ],
    );
    let slow_blobs = TcpProxy::throttled(az.blob_addr(), rate);
    let cmd = az.rollq_via(slow_blobs.addr(), queue_proxy.addr());
    let mut worker = WorkerProc::spawn_with(
        cmd,
        queue.name(),
        &container,
        &[
            "--drain-timeout",
            "2s",
            "--storage-timeout",
            "30s",
            // Renewals every 3 s: one is sent early in the job and then held.
            "--visibility-timeout",
            "6s",
            "--max-in-flight",
            "1",
            "--download-block-size",
            "256KiB",
            "--download-parallel",
            "1",
        ],
    );
    worker.wait_reading("the worker reading the input").await;
    // A renewal has left and is held for 8 s: it is in flight when the signal arrives, and
    // so is the stats task's first Peek (held 30 s, sent at start).
    eventually("a renewal in flight", PATIENCE, || async {
        (queue_proxy.count(Kind::Update).0 >= 1).then_some(())
    })
    .await;
    assert!(queue_proxy.count(Kind::Peek).0 >= 1, "a stats sample sent");
    worker.sigterm();
    let signalled = Instant::now();
    let status = worker.wait_exit(EXIT_BOUND).await;
    assert!(status.success(), "exit {status}; log:\n{}", worker.log());
    let log = worker.log();
    assert!(log.contains("releasing in-flight"), "{log}");
    assert!(
        log.contains("lease uncertain: update skipped"),
        "the abandoned renewal makes the lease uncertain; log:\n{log}"
    );
    eprintln!("exited {:?} after SIGTERM", signalled.elapsed());
    assert!(
        download(&conn.blobs, &container, "long_aggregated.csv")
            .await
            .is_none()
    );
    drop(slow_blobs);

    // Not lost: it reappears once the last renewal Azurite applied lapses, and a worker
    // straight to Azurite completes it (`--exit-when-idle` counts invisible messages too).
    let mut finisher =
        WorkerProc::spawn(&az, queue.name(), &container, &["--exit-when-idle", "2s"]);
    let status = finisher.wait_exit(PATIENCE).await;
    assert!(status.success(), "exit {status}; log:\n{}", finisher.log());
    let got = download(&conn.blobs, &container, "long_aggregated.csv").await;
    assert!(
        got.as_ref() == Some(&expected),
        "long.csv output missing or wrong"
    );
    assert_queue_and_poison_empty(&conn, &queue).await;
}

/// The other way out: SIGTERM while a slow file is in flight and *no* renewal is (the lease
/// is held for sure), the drain runs out, and the release (an Update Message setting the
/// visibility to 0) is held by the proxy for 30 s. The release gets the drain deadline plus
/// its grace and no more: the worker logs that the releases did not finish, exits 0 within
/// `--drain-timeout` + 10 s, and the message reappears when the visibility Azurite last
/// applied lapses; a second worker completes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_held_past_the_drain_deadline_does_not_hold_the_exit() {
    let az = Azurite::start();
    let conn = az.connect().await;
    let (queue, container) = fresh_queue_and_container(&conn).await;
    let rate = 40 * 1024;
    let body = seed_csv(8, (rate * 60 / 26) as u64); // about a minute through the slow link
    let expected = expected_output(&body);
    upload(&conn.blobs, &container, "held.csv", body).await;
    queue.send("held.csv").await.unwrap();

    // Every Update is held: with a 20 s lease the first renewal would leave at 10 s, after the
    // signal and the drain (64 KiB reads at 40 KiB/s: bytes arrive within about 2 s), so the
    // only Update sent before the exit is the release.
    let queue_proxy = HttpProxy::start(
        az.queue_addr(),
        13,
        vec![Rule {
            kind: Kind::Update,
            when: When::Rate(1.0),
            action: Action::Hold(Duration::from_secs(30)),
        }],
    );
    let slow_blobs = TcpProxy::throttled(az.blob_addr(), rate);
    let cmd = az.rollq_via(slow_blobs.addr(), queue_proxy.addr());
    let mut worker = WorkerProc::spawn_with(
        cmd,
        queue.name(),
        &container,
        &[
            "--drain-timeout",
            "2s",
            "--storage-timeout",
            "30s",
            "--visibility-timeout",
            "20s",
            "--max-in-flight",
            "1",
            "--download-block-size",
            "64KiB",
            "--download-parallel",
            "1",
        ],
    );
    worker.wait_reading("the worker reading the input").await;
    assert_eq!(
        queue_proxy.count(Kind::Update).0,
        0,
        "no renewal has left yet: the lease is held for sure"
    );
    worker.sigterm();
    let signalled = Instant::now();
    let status = worker.wait_exit(EXIT_BOUND).await;
    assert!(status.success(), "exit {status}; log:\n{}", worker.log());
    let log = worker.log();
    eprintln!("exited {:?} after SIGTERM", signalled.elapsed());
    assert!(log.contains("releasing in-flight"), "{log}");
    assert!(
        !log.contains("lease uncertain"),
        "no renewal was in flight, so the lease was certain; log:\n{log}"
    );
    assert!(
        queue_proxy.count(Kind::Update).0 >= 1,
        "the release was sent (and held); log:\n{log}"
    );
    assert!(
        log.contains("releases did not finish"),
        "the held release met its deadline; log:\n{log}"
    );
    drop(slow_blobs);

    let mut finisher =
        WorkerProc::spawn(&az, queue.name(), &container, &["--exit-when-idle", "2s"]);
    let status = finisher.wait_exit(PATIENCE).await;
    assert!(status.success(), "exit {status}; log:\n{}", finisher.log());
    let got = download(&conn.blobs, &container, "held_aggregated.csv").await;
    assert!(
        got.as_ref() == Some(&expected),
        "held.csv output missing or wrong"
    );
    assert_queue_and_poison_empty(&conn, &queue).await;
}
