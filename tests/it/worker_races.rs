//! `rollq worker` processes racing and dying at the worst moments, against Azurite through
//! the HTTP-aware proxy: three replicas on one input (the conditional commit's conflict
//! path), `kill -9` between staging blocks and committing them, `kill -9` between committing
//! and deleting the message, and a SAS that expires while a job runs.

use std::time::Duration;

use rollq::aggregate::Spec;
use rollq::storage::BlobPath;

use crate::support::http_proxy::{Action, Kind, Rule, When};
use crate::support::{Azurite, HttpProxy, TcpProxy};
use crate::worker_support::*;

/// Hold of each replica's first Put Block List in the race test: every replica must have
/// passed its existing-output check before the first commit lands. Reaching Put Block List
/// takes well under a second once the message is received (all replicas are polling every
/// 500 ms before it is sent); the test checks that the race happened rather than trusting
/// this margin. Kept under Azurite's 5 s keep-alive timeout: a longer hold finds the proxy's
/// idle upstream connection closed, the held request gets no response and the SDK sends it
/// again (seen as a second Put Block List with a 6 s hold).
const RACE_HOLD: Duration = Duration::from_secs(4);

/// Issue 10: three workers take three messages naming the same blob at once; each one's
/// first Put Block List is held so all three have checked for an existing output (and found
/// none) before any commits. Exactly one commit wins; the other two meet the `If-None-Match`
/// condition, find the winner's output current and end `skipped`. Serial processing cannot
/// pass: a replica that starts after the winner committed finds the output up to date and
/// never sends Put Block List, which the proxies' counts would show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_racing_on_one_input_write_one_output() {
    let az = Azurite::start();
    let conn = az.connect().await;
    let (queue, container) = fresh_queue_and_container(&conn).await;
    // 2000 minutes: 34 hourly rows, about 2.5 KiB of output, staged as 1 KiB blocks so the
    // commit is a Put Block List the proxy can hold.
    let body = seed_csv(3, 2000);
    let expected = expected_output(&body);
    assert!(expected.len() > 2048, "the output must need several blocks");
    upload(&conn.blobs, &container, "race.csv", body).await;

    let proxies: Vec<HttpProxy> = (0..3)
        .map(|i| {
            HttpProxy::start(
                az.blob_addr(),
                30 + i,
                vec![Rule {
                    kind: Kind::PutBlockList,
                    when: When::Nth(1),
                    action: Action::Hold(RACE_HOLD),
                }],
            )
        })
        .collect();
    let workers: Vec<WorkerProc> = proxies
        .iter()
        .map(|p| {
            WorkerProc::spawn_with(
                az.rollq_via(p.addr(), az.queue_addr()),
                queue.name(),
                &container,
                &[
                    "--max-in-flight",
                    "1",
                    // One message per replica: with a prefetch, the first replica to poll
                    // would take all three and run them one after another.
                    "--prefetch",
                    "0",
                    "--upload-block-size",
                    "1KiB",
                    "--visibility-timeout",
                    "30s",
                ],
            )
        })
        .collect();
    for w in &workers {
        eventually("every replica ready and polling", PATIENCE, || async {
            (w.status("/readyz").await == 200).then_some(())
        })
        .await;
    }
    for _ in 0..3 {
        queue.send("race.csv").await.unwrap();
    }

    let outcomes = eventually("three outcomes", PATIENCE, || async {
        let mut done = Vec::new();
        for w in &workers {
            let m = w.metrics().await;
            let get = |o: &str| {
                sample(&m, "rollq_messages_total", &[("outcome", o)]).unwrap_or(0.0) as u64
            };
            done.push((
                get("completed"),
                get("skipped"),
                get("retried"),
                get("poisoned"),
            ));
        }
        let finished: u64 = done.iter().map(|(c, s, r, p)| c + s + r + p).sum();
        (finished >= 3).then_some(done)
    })
    .await;

    // The race was real: each replica reached its `If-None-Match: *` commit (a first
    // delivery of a small input sends no output check before the work).
    for (i, p) in proxies.iter().enumerate() {
        assert_eq!(
            p.count(Kind::PutBlockList),
            (1, 1),
            "replica {i} did not reach its commit: it found the output already written, so \
             the replicas ran one after another (outcomes {outcomes:?}; requests {:?})",
            p.seen()
        );
    }
    let completed: u64 = outcomes.iter().map(|o| o.0).sum();
    let skipped: u64 = outcomes.iter().map(|o| o.1).sum();
    assert_eq!(
        (completed, skipped),
        (1, 2),
        "one winner, two skips (completed, skipped, retried, poisoned per replica: {outcomes:?})"
    );
    // The losers took the conflict path: their commit failed its condition, and they found
    // the winner's output current.
    let mut conflicts = 0.0;
    let mut replica_lines = 0;
    for w in &workers {
        let m = w.metrics().await;
        conflicts += ["conflict", "precondition_failed"]
            .iter()
            .map(|k| {
                sample(
                    &m,
                    "rollq_storage_errors_total",
                    &[("op", "commit block list"), ("kind", k)],
                )
                .unwrap_or(0.0)
            })
            .sum::<f64>();
        replica_lines += w.log().matches("written by another replica").count();
    }
    assert_eq!(
        conflicts, 2.0,
        "two failed conditional commits were counted"
    );
    assert_eq!(replica_lines, 2, "two replicas logged the conflict path");

    let got = download(&conn.blobs, &container, "race_aggregated.csv").await;
    assert!(got.as_ref() == Some(&expected), "output missing or wrong");
    let input = BlobPath::new(&container, "race.csv");
    let input_etag = conn.blobs.properties(&input).await.unwrap().etag;
    let output = conn
        .blobs
        .properties(&BlobPath::new(&container, "race_aggregated.csv"))
        .await
        .unwrap();
    assert!(
        rollq::contract::is_current(&output.metadata, &input, &input_etag, &Spec::default()),
        "the output is current for the input: {:?}",
        output.metadata
    );
    let mut names: Vec<String> = conn
        .blobs
        .list(&container, "")
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.name)
        .collect();
    names.sort();
    assert_eq!(names, ["race.csv", "race_aggregated.csv"], "one output");
    assert_queue_and_poison_empty(&conn, &queue).await;
}

/// Seed rows whose download at `rate` bytes/s takes about `secs`.
fn slow_input(rate: usize, secs: usize) -> Vec<u8> {
    seed_csv(11, (rate * secs / 26) as u64)
}

/// Issue 10: `kill -9` after the worker staged output blocks and before it sent Put Block
/// List. The input trickles in through a throttled link for 12 s and `--bucket 1m` makes one
/// output row per input row, so the reducer hands the sink 64 KiB at a time and blocks are
/// staged within the first second or two, long before the input ends and the commit can
/// follow. The kill lands while the proxy has seen Put Block and no Put Block List. Nothing
/// was visible; the redelivery writes the output exactly once, correct.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_between_staging_and_commit_writes_the_output_once() {
    let az = Azurite::start();
    let conn = az.connect().await;
    let (queue, container) = fresh_queue_and_container(&conn).await;
    let rate = 40 * 1024;
    let body = slow_input(rate, 12);
    let minutes = Spec {
        bucket: "1m".parse().unwrap(),
        ..Spec::default()
    };
    let expected = expected_output_for(&body, &minutes);
    upload(&conn.blobs, &container, "staged.csv", body).await;
    queue.send("staged.csv").await.unwrap();

    // worker → HTTP proxy (sees each request) → throttled TCP proxy → Azurite.
    let slow = TcpProxy::throttled(az.blob_addr(), rate);
    let first_blob = HttpProxy::start(slow.addr(), 41, vec![]);
    let mut first = WorkerProc::spawn_with(
        az.rollq_via(first_blob.addr(), az.queue_addr()),
        queue.name(),
        &container,
        &[
            "--bucket",
            "1m",
            "--visibility-timeout",
            "5s",
            "--upload-block-size",
            "64KiB",
            "--download-block-size",
            "64KiB",
            "--download-parallel",
            "1",
        ],
    );
    eventually("a block staged, no commit yet", PATIENCE, || async {
        let staged = first_blob.count(Kind::PutBlock).0;
        (staged >= 1).then_some(())
    })
    .await;
    first.kill9();
    assert_eq!(
        first_blob.count(Kind::PutBlockList).0,
        0,
        "the kill came after the commit; the input was not slow enough"
    );
    assert!(
        download(&conn.blobs, &container, "staged_aggregated.csv")
            .await
            .is_none(),
        "staged blocks are invisible"
    );

    let second_blob = HttpProxy::start(az.blob_addr(), 42, vec![]);
    let second = WorkerProc::spawn_with(
        az.rollq_via(second_blob.addr(), az.queue_addr()),
        queue.name(),
        &container,
        &[
            "--bucket",
            "1m",
            "--visibility-timeout",
            "5s",
            "--upload-block-size",
            "64KiB",
        ],
    );
    eventually("the redelivered message completed", PATIENCE, || async {
        let m = second.metrics().await;
        let done = sample(&m, "rollq_messages_total", &[("outcome", "completed")]);
        (done == Some(1.0)).then_some(())
    })
    .await;
    let got = download(&conn.blobs, &container, "staged_aggregated.csv").await;
    assert!(got.as_ref() == Some(&expected), "output missing or wrong");
    assert_eq!(
        second_blob.count(Kind::PutBlockList).0,
        1,
        "written once by the redelivery"
    );
    eventually("the message deleted", PATIENCE, || async {
        (queue.approximate_count().await.unwrap() == 0).then_some(())
    })
    .await;
    assert_queue_and_poison_empty(&conn, &queue).await;
}

/// Issue 10: `kill -9` after the output was committed and before the message was deleted:
/// the queue proxy resets every Delete Message, and the kill comes once one was seen. The
/// redelivery finds the output current and ends `skipped` without writing: no Put Block,
/// no Put Block List, the output's ETag unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_between_commit_and_delete_skips_the_redelivery() {
    let az = Azurite::start();
    let conn = az.connect().await;
    let (queue, container) = fresh_queue_and_container(&conn).await;
    let body = seed_csv(12, 2000);
    let expected = expected_output(&body);
    upload(&conn.blobs, &container, "done.csv", body).await;
    queue.send("done.csv").await.unwrap();

    let first_blob = HttpProxy::start(az.blob_addr(), 51, vec![]);
    let first_queue = HttpProxy::start(
        az.queue_addr(),
        52,
        vec![Rule {
            kind: Kind::Delete,
            when: When::FirstN(usize::MAX),
            action: Action::Reset,
        }],
    );
    let mut first = WorkerProc::spawn_with(
        az.rollq_via(first_blob.addr(), first_queue.addr()),
        queue.name(),
        &container,
        &["--visibility-timeout", "5s", "--upload-block-size", "1KiB"],
    );
    eventually("the worker trying to delete", PATIENCE, || async {
        (first_queue.count(Kind::Delete).0 >= 1).then_some(())
    })
    .await;
    first.kill9();
    assert_eq!(first_blob.count(Kind::PutBlockList).0, 1, "committed once");
    let output = BlobPath::new(&container, "done_aggregated.csv");
    let committed = conn.blobs.properties(&output).await.unwrap().etag;
    let got = download(&conn.blobs, &container, "done_aggregated.csv").await;
    assert!(got.as_ref() == Some(&expected), "output missing or wrong");
    assert_eq!(
        queue.approximate_count().await.unwrap(),
        1,
        "the message was not deleted"
    );

    let second_blob = HttpProxy::start(az.blob_addr(), 53, vec![]);
    let second = WorkerProc::spawn_with(
        az.rollq_via(second_blob.addr(), az.queue_addr()),
        queue.name(),
        &container,
        &["--visibility-timeout", "5s", "--upload-block-size", "1KiB"],
    );
    eventually("the redelivered message skipped", PATIENCE, || async {
        let m = second.metrics().await;
        let skipped = sample(&m, "rollq_messages_total", &[("outcome", "skipped")]);
        (skipped == Some(1.0)).then_some(())
    })
    .await;
    assert!(
        second.log().contains("done_aggregated.csv is up to date"),
        "skipped as current"
    );
    assert_eq!(second_blob.count(Kind::PutBlock).0, 0, "nothing staged");
    assert_eq!(
        second_blob.count(Kind::PutBlockList).0,
        0,
        "nothing committed"
    );
    let now = conn.blobs.properties(&output).await.unwrap().etag;
    assert_eq!(now, committed, "the output was not written again");
    let m = second.metrics().await;
    assert_eq!(
        sample(&m, "rollq_messages_total", &[("outcome", "completed")]),
        Some(0.0)
    );
    eventually("the message deleted", PATIENCE, || async {
        (queue.approximate_count().await.unwrap() == 0).then_some(())
    })
    .await;
    assert_queue_and_poison_empty(&conn, &queue).await;
}

/// Issue 10: the worker's SAS expires while a job reads its (throttled) input. Azurite then
/// refuses every request with a 403 (`AuthorizationFailure` from blobs, `AuthenticationFailed`
/// from queues) that says nothing about expiry; the worker knows the token's `se` and says
/// the SAS expired. It is the platform's
/// failure: with `--max-dequeue-count 1` a failure counted against the message would try to
/// poison it at once, and nothing does. The message stays in the queue, and a worker with a
/// valid credential completes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sas_expiring_mid_job_is_a_platform_failure_naming_the_expiry() {
    let az = Azurite::start();
    let conn = az.connect().await;
    let (queue, container) = fresh_queue_and_container(&conn).await;
    let rate = 40 * 1024;
    let body = slow_input(rate, 25);
    let expected = expected_output(&body);
    upload(&conn.blobs, &container, "expiring.csv", body).await;
    queue.send("expiring.csv").await.unwrap();

    let slow = TcpProxy::throttled(az.blob_addr(), rate);
    // Long enough for the start-up check and the first reads on a busy machine, far shorter
    // than the 25 s the input takes to arrive.
    let se = sas_expiry_in(8);
    let sas = crate::support::azurite::account_sas_with(&az.key, "rwdlacup", &se);
    let mut cmd = az.rollq();
    cmd.env(
        "AZURE_STORAGE_CONNECTION_STRING",
        sas_connection_string(slow.addr(), az.queue_addr(), &sas),
    );
    let mut first = WorkerProc::spawn_with(
        cmd,
        queue.name(),
        &container,
        &[
            "--visibility-timeout",
            "20s",
            "--max-dequeue-count",
            "1",
            "--unready-after",
            "1s",
            "--download-block-size",
            "64KiB",
            "--download-parallel",
            "1",
        ],
    );
    first
        .wait_reading("the first worker reading the input")
        .await;
    let retried = eventually("the job failing once the SAS expired", PATIENCE, || async {
        let m = first.metrics().await;
        let n = sample(&m, "rollq_messages_total", &[("outcome", "retried")]);
        (n == Some(1.0)).then(|| first.log())
    })
    .await;
    let line = retried
        .lines()
        .find(|l| l.contains("message will be retried"))
        .expect("the outcome line");
    assert!(
        line.contains("SAS token expired") && line.contains(&se),
        "the error names the expiry: {line}"
    );
    let m = first.metrics().await;
    assert_eq!(
        sample(&m, "rollq_messages_total", &[("outcome", "poisoned")]),
        Some(0.0)
    );
    assert!(!retried.contains("poison the message"), "{retried}");
    eventually(
        "readiness 503 with an expired credential",
        PATIENCE,
        || async { (first.status("/readyz").await == 503).then_some(()) },
    )
    .await;
    assert!(first.alive(), "an expired credential is no reason to exit");
    first.kill9();
    assert_eq!(queue.approximate_count().await.unwrap(), 1, "still queued");
    let poison = conn.queues.queue(&format!("{}-poison", queue.name()));
    assert_eq!(
        poison.approximate_count().await.unwrap(),
        0,
        "nothing poisoned"
    );

    // A renewed credential (the key here) finishes the work.
    let second = WorkerProc::spawn(&az, queue.name(), &container, &[]);
    eventually("the message completed", PATIENCE, || async {
        let m = second.metrics().await;
        let done = sample(&m, "rollq_messages_total", &[("outcome", "completed")]);
        (done == Some(1.0)).then_some(())
    })
    .await;
    let got = download(&conn.blobs, &container, "expiring_aggregated.csv").await;
    assert!(got.as_ref() == Some(&expected), "output missing or wrong");
    eventually("the message deleted", PATIENCE, || async {
        (queue.approximate_count().await.unwrap() == 0).then_some(())
    })
    .await;
    assert_queue_and_poison_empty(&conn, &queue).await;
}
