//! Worker logic against the in-memory fakes: outcomes, poison, retry, release, idempotency.
//!
//! The reducer here is a double (`test_reducer`): it copies its input, fails on `BAD`, and
//! spins on `SPIN` until its source is cancelled, so these tests exercise the worker's
//! control flow, not CSV. The Azurite tests in `tests/it/` run the real reducer.

use std::io::Read;
use std::time::Duration;

use bytes::Bytes;
use prometheus_client::registry::Registry;

use super::receive_loop::PollBackoff;
use super::*;
use crate::aggregate::{AggregateError, Sink, Source};
use crate::contract::{META_FORMAT, META_SOURCE, META_SOURCE_ETAG, OUTPUT_FORMAT_VERSION};
use crate::metrics::OutcomeLabel;
use crate::shutdown::Shutdown;
use crate::storage::memory::{MemoryBlobStore, MemoryQueue, MemoryQueueService, MessageSnapshot};
use crate::storage::{BlobPath, ErrorKind, PutOptions};

const ACCOUNT: &str = "devstoreaccount1";

fn test_reducer(
    _spec: &Spec,
    source: &mut dyn Source,
    sink: &mut dyn Sink,
) -> Result<Report, AggregateError> {
    let mut text = String::new();
    source.open()?.read_to_string(&mut text)?;
    if text.starts_with("SPIN") {
        // Re-read until cancellation makes `open` fail: a job that never finishes by itself.
        loop {
            std::thread::sleep(Duration::from_millis(2));
            let mut r = source.open()?;
            std::io::copy(&mut r, &mut std::io::sink())?;
        }
    }
    if text.contains("BAD") {
        return Err(AggregateError::BadRow {
            line: 2,
            text: "BAD".into(),
            reason: "not a row".into(),
        });
    }
    sink.write_all(text.to_uppercase().as_bytes())?;
    Ok(Report {
        rows: text.lines().count().saturating_sub(1) as u64,
        ..Report::default()
    })
}

struct Fixture {
    blobs: MemoryBlobStore,
    queue: Arc<MemoryQueue>,
    poison: Arc<MemoryQueue>,
    worker: Worker,
    metrics: Metrics,
    readiness: Readiness,
}

impl Fixture {
    async fn new(tweak: impl FnOnce(&mut Settings)) -> Fixture {
        let queues = MemoryQueueService::new();
        let blobs = MemoryBlobStore::new();
        blobs.create_container_if_missing("in").await.unwrap();
        blobs.create_container_if_missing("out").await.unwrap();
        queues.queue("jobs").create_if_missing().await.unwrap();
        let mut settings = Settings::with_defaults("jobs", ACCOUNT, "in").unwrap();
        settings.visibility_timeout = Duration::from_secs(30);
        settings.retry_delay = Duration::from_secs(5);
        tweak(&mut settings);
        let metrics = Metrics::register(&mut Registry::default());
        let readiness = Readiness::new(Duration::from_secs(30));
        let worker = Worker::new(
            settings,
            &queues,
            Arc::new(blobs.clone()),
            metrics.clone(),
            readiness.clone(),
        )
        .with_reducer(test_reducer);
        worker.check().await.unwrap();
        Fixture {
            queue: queues.memory_queue("jobs"),
            poison: queues.memory_queue("jobs-poison"),
            blobs,
            worker,
            metrics,
            readiness,
        }
    }

    async fn put(&self, name: &str, body: &'static str) {
        self.blobs
            .put(
                &BlobPath::new("in", name),
                Bytes::from_static(body.as_bytes()),
                PutOptions::default(),
            )
            .await
            .unwrap();
    }

    async fn send_and_process(&self, text: &str) -> Outcome {
        self.queue.send(text).await.unwrap();
        let msg = self.receive().await;
        self.worker.process_one(msg, CancellationToken::new()).await
    }

    async fn receive(&self) -> Received {
        let mut got = self
            .queue
            .receive(1, self.worker.settings().visibility_timeout)
            .await
            .unwrap();
        assert_eq!(got.len(), 1, "one visible message expected");
        got.remove(0)
    }

    fn output(&self, name: &str) -> Option<String> {
        self.blobs
            .get(&BlobPath::new("in", name))
            .map(|b| String::from_utf8(b.to_vec()).unwrap())
    }

    /// The original texts in the poison queue (each copy unwrapped from its envelope).
    fn poison_texts(&self) -> Vec<String> {
        self.poison
            .snapshot()
            .into_iter()
            .map(|m| Envelope::open(&m.text).original)
            .collect()
    }

    /// What each poison copy says about why.
    fn poison_notes(&self) -> Vec<envelope::PoisonNote> {
        self.poison
            .snapshot()
            .into_iter()
            .map(|m| Envelope::open(&m.text).poison.expect("an enveloped copy"))
            .collect()
    }
}

#[tokio::test]
async fn completes_writes_metadata_and_deletes_last() {
    let f = Fixture::new(|_| {}).await;
    f.put("t1.csv", "time,v\n1,2\n").await;
    let outcome = f.send_and_process("t1.csv").await;
    assert!(
        matches!(outcome, Outcome::Completed { rows: 1 }),
        "{outcome:?}"
    );
    assert_eq!(f.output("t1_aggregated.csv").unwrap(), "TIME,V\n1,2\n");
    assert!(f.queue.snapshot().is_empty());
    let props = f
        .blobs
        .properties(&BlobPath::new("in", "t1_aggregated.csv"))
        .await
        .unwrap();
    let input = f
        .blobs
        .properties(&BlobPath::new("in", "t1.csv"))
        .await
        .unwrap();
    let meta = |k: &str| {
        props
            .metadata
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(
        meta(META_SOURCE_ETAG).unwrap(),
        input.etag.0.trim_matches('"')
    );
    assert_eq!(
        meta(META_FORMAT).unwrap(),
        OUTPUT_FORMAT_VERSION.to_string()
    );
    assert_eq!(meta(META_SOURCE).unwrap(), "in%2Ft1.csv");
    assert_eq!(f.metrics.outcome_count(OutcomeLabel::Completed), 1);
    assert!(f.readiness.is_ready());
}

#[tokio::test]
async fn a_gz_name_holding_no_gzip_is_poisoned_as_corrupt() {
    let f = Fixture::new(|_| {}).await;
    f.put("a.csv.gz", "x").await;
    // Not gzip: the gunzip wrapper fails to decode, a permanent input error.
    assert!(matches!(
        f.send_and_process("a.csv.gz").await,
        Outcome::Poisoned(JobError::Input(AggregateError::CorruptGzip(_)))
    ));
}

#[tokio::test]
async fn output_container_setting_is_used() {
    let f = Fixture::new(|s| s.output_container = Some("out".into())).await;
    f.put("b.csv", "x\n").await;
    assert!(matches!(
        f.send_and_process("b.csv").await,
        Outcome::Completed { .. }
    ));
    assert!(
        f.blobs
            .get(&BlobPath::new("out", "in/b_aggregated.csv"))
            .is_some(),
        "the input's container is kept under the output container"
    );
    assert!(
        f.blobs
            .get(&BlobPath::new("in", "b_aggregated.csv"))
            .is_none(),
        "nothing is written beside the input"
    );
}

/// Issue 14: a duplicate first delivery reads the input once (the GET that pins its ETag)
/// and finds the output with its `If-None-Match: *` write: skipped, the output untouched.
/// A new version of the input makes the output stale: it is rewritten (If-Match).
#[tokio::test]
async fn an_up_to_date_output_is_skipped_unchanged_and_a_stale_one_is_replaced() {
    let f = Fixture::new(|_| {}).await;
    f.put("t.csv", "h\n1\n").await;
    assert!(matches!(
        f.send_and_process("t.csv").await,
        Outcome::Completed { .. }
    ));
    let out = BlobPath::new("in", "t_aggregated.csv");
    let written = f.blobs.properties(&out).await.unwrap().etag;
    let reads = f.blobs.reads();
    let again = f.send_and_process("t.csv").await;
    assert!(matches!(again, Outcome::Skipped(_)), "{again:?}");
    assert_eq!(
        f.blobs.reads(),
        reads + 1,
        "one GET, the one that gives the ETag"
    );
    assert_eq!(
        f.blobs.properties(&out).await.unwrap().etag,
        written,
        "the current output is left as it is"
    );
    assert!(f.queue.snapshot().is_empty());
    f.put("t.csv", "h\n1\n2\n").await;
    assert!(matches!(
        f.send_and_process("t.csv").await,
        Outcome::Completed { rows: 2 }
    ));
    assert_eq!(f.output("t_aggregated.csv").unwrap(), "H\n1\n2\n");
    assert_eq!(f.metrics.outcome_count(OutcomeLabel::Skipped), 1);
}

#[tokio::test]
async fn permanent_failures_go_to_the_poison_queue_at_once() {
    let f = Fixture::new(|_| {}).await;
    f.put("bad.csv", "h\nBAD\n").await;
    let cases = [
        "{garbage",
        "https://evil.blob.core.windows.net/in/a.csv",
        "missing.csv",
        "bad.csv",
        r#"{"container": "private", "blob": "a.csv"}"#,
    ];
    for text in cases {
        let outcome = f.send_and_process(text).await;
        assert!(
            matches!(outcome, Outcome::Poisoned(_)),
            "{text}: {outcome:?}"
        );
    }
    assert_eq!(f.poison_texts(), cases);
    assert!(f.queue.snapshot().is_empty());
    assert_eq!(
        f.metrics.outcome_count(OutcomeLabel::Poisoned),
        cases.len() as u64
    );
}

#[tokio::test]
async fn events_that_need_no_work_are_acknowledged() {
    let f = Fixture::new(|_| {}).await;
    let deleted = r#"{"eventType":"Microsoft.Storage.BlobDeleted","topic":"/x/storageAccounts/devstoreaccount1","subject":"/blobServices/default/containers/in/blobs/a.csv","data":{}}"#;
    for text in [deleted, "a_aggregated.csv"] {
        assert!(matches!(
            f.send_and_process(text).await,
            Outcome::Skipped(_)
        ));
    }
    assert!(f.queue.snapshot().is_empty());
    assert!(f.poison_texts().is_empty());
}

#[tokio::test]
async fn the_messages_own_failures_back_off_then_poison_after_max_attempts() {
    let f = Fixture::new(|s| {
        s.max_dequeue_count = 3;
        s.max_processing_time = Duration::from_millis(50);
    })
    .await;
    // Never finishes: every attempt exceeds --max-processing-time, the message's own failure.
    f.put("t.csv", "SPIN\n").await;
    f.queue.send("t.csv").await.unwrap();
    for attempt in 1..=3u64 {
        // Visible: just sent, or (later attempts) the clock was moved past its backoff below.
        let msg = f.receive().await;
        assert_eq!(msg.dequeue_count, attempt);
        let outcome = f.worker.process_one(msg, CancellationToken::new()).await;
        if attempt < 3 {
            assert!(
                matches!(outcome, Outcome::Retried(JobError::TimedOut(_))),
                "{outcome:?}"
            );
            let snap = &f.queue.snapshot()[0];
            assert!(!snap.visible);
            let (_, delay, _) = f.queue.updates().last().cloned().unwrap();
            assert_eq!(delay, f.worker.settings().backoff(attempt));
            let id = snap.id.clone();
            skip(delay).await;
            assert!(f.queue.snapshot().iter().any(|m| m.id == id && m.visible));
        } else {
            assert!(
                matches!(
                    outcome,
                    Outcome::Poisoned(JobError::TooManyAttempts {
                        attempts: 3,
                        max: 3
                    })
                ),
                "{outcome:?}"
            );
        }
    }
    assert_eq!(f.poison_texts(), ["t.csv"]);
    assert_eq!(f.metrics.outcome_count(OutcomeLabel::Retried), 2);
}

#[tokio::test]
async fn a_message_received_too_often_is_poisoned_before_work() {
    let f = Fixture::new(|s| s.max_dequeue_count = 2).await;
    f.put("t.csv", "h\n").await;
    f.queue.send("t.csv").await.unwrap();
    // Two attempts that died without an outcome (crashes): receive and let go.
    for _ in 0..2 {
        let m = f.receive().await;
        f.queue
            .update(&m.id, &m.pop_receipt, Duration::ZERO, None)
            .await
            .unwrap();
    }
    let msg = f.receive().await;
    assert_eq!(msg.dequeue_count, 3);
    let reads = f.blobs.reads();
    let outcome = f.worker.process_one(msg, CancellationToken::new()).await;
    assert!(
        matches!(
            outcome,
            Outcome::Poisoned(JobError::TooManyAttempts {
                attempts: 2,
                max: 2
            })
        ),
        "{outcome:?}"
    );
    assert_eq!(f.blobs.reads(), reads);
    assert_eq!(f.poison_texts(), ["t.csv"]);
}

#[tokio::test]
async fn a_shutdown_release_does_not_count_as_an_attempt() {
    let f = Fixture::new(|s| s.max_dequeue_count = 1).await;
    f.put("slow.csv", "SPIN\n").await;
    f.queue.send("slow.csv").await.unwrap();
    let msg = f.receive().await;
    let interrupt = CancellationToken::new();
    let work = tokio::spawn({
        let (worker, interrupt) = (f.worker.clone(), interrupt.clone());
        async move { worker.process_one(msg, interrupt).await }
    });
    // Wait until the job is really reading, then interrupt it (the drain deadline).
    let deadline = Instant::now() + Duration::from_secs(30);
    while f.blobs.reads() < 2 {
        assert!(Instant::now() < deadline, "the job never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    interrupt.cancel();
    let outcome = work.await.unwrap();
    assert!(matches!(outcome, Outcome::Released), "{outcome:?}");
    let snap = f.queue.snapshot();
    assert!(snap[0].visible, "released with visibility 0");
    assert_eq!(Envelope::open(&snap[0].text).original, "slow.csv");

    // With --max-dequeue-count 1 the second delivery is still allowed: the release did not
    // count. The input is fixed meanwhile, so it completes.
    f.put("slow.csv", "h\n1\n").await;
    let again = f.receive().await;
    assert_eq!(again.dequeue_count, 2);
    let outcome = f.worker.process_one(again, CancellationToken::new()).await;
    assert!(
        matches!(outcome, Outcome::Completed { rows: 1 }),
        "{outcome:?}"
    );
    assert_eq!(f.metrics.outcome_count(OutcomeLabel::Released), 1);
}

#[tokio::test]
async fn the_poison_copy_is_the_original_text_not_the_envelope() {
    let f = Fixture::new(|s| s.max_dequeue_count = 1).await;
    let original = "nope.csv";
    let wrapped = Envelope::open(original).released_once_more().unwrap();
    f.queue.send(&wrapped).await.unwrap();
    let msg = f.receive().await;
    assert!(matches!(
        f.worker.process_one(msg, CancellationToken::new()).await,
        Outcome::Poisoned(JobError::InputNotFound(_))
    ));
    assert_eq!(f.poison_texts(), [original]);
}

#[tokio::test]
async fn max_processing_time_cancels_and_counts_as_a_failure() {
    let f = Fixture::new(|s| s.max_processing_time = Duration::from_millis(200)).await;
    f.put("slow.csv", "SPIN\n").await;
    let outcome = f.send_and_process("slow.csv").await;
    assert!(
        matches!(outcome, Outcome::Retried(JobError::TimedOut(_))),
        "{outcome:?}"
    );
    let (_, delay, _) = f.queue.updates().last().cloned().unwrap();
    assert_eq!(delay, f.worker.settings().backoff(1));
    let snap = &f.queue.snapshot()[0];
    let envelope = Envelope::open(&snap.text);
    assert_eq!(
        (envelope.released, envelope.deferred),
        (0, 0),
        "a timeout is an attempt, not a release"
    );
    assert_eq!(envelope.attempts(2), 2);
}

#[tokio::test]
async fn a_lost_lease_stops_the_work_and_touches_nothing() {
    let f = Fixture::new(|s| s.visibility_timeout = Duration::from_secs(2)).await;
    f.put("slow.csv", "SPIN\n").await;
    f.queue.send("slow.csv").await.unwrap();
    let msg = f.receive().await;
    // Another consumer takes the message over before our first renewal (at 1 s).
    f.queue
        .update(&msg.id, &msg.pop_receipt, Duration::from_secs(60), None)
        .await
        .unwrap();
    let outcome = f.worker.process_one(msg, CancellationToken::new()).await;
    assert!(matches!(outcome, Outcome::LeaseLost), "{outcome:?}");
    assert_eq!(f.queue.snapshot().len(), 1, "not deleted");
    assert!(f.poison_texts().is_empty());
}

#[tokio::test]
async fn run_processes_everything_then_exits_when_idle() {
    let f = Fixture::new(|s| {
        s.exit_when_idle = Some(Duration::from_millis(300));
        s.max_poll_interval = Duration::from_millis(100);
        s.max_in_flight = 3;
    })
    .await;
    for i in 0..10 {
        let name = format!("f{i}.csv");
        f.blobs
            .put(
                &BlobPath::new("in", &name),
                Bytes::from(format!("h\n{i}\n")),
                PutOptions::default(),
            )
            .await
            .unwrap();
        f.queue.send(&name).await.unwrap();
    }
    let end = tokio::time::timeout(Duration::from_secs(60), f.worker.run(Shutdown::new()))
        .await
        .expect("the worker exits when idle");
    assert_eq!(end, RunEnd::Idle);
    for i in 0..10 {
        assert_eq!(
            f.output(&format!("f{i}_aggregated.csv")).unwrap(),
            format!("H\n{i}\n")
        );
    }
    assert!(f.queue.snapshot().is_empty());
    assert_eq!(f.metrics.outcome_count(OutcomeLabel::Completed), 10);
}

#[tokio::test]
async fn run_stops_after_max_messages() {
    let f = Fixture::new(|s| {
        s.max_messages = Some(2);
        s.max_in_flight = 1;
    })
    .await;
    for name in ["a.csv", "b.csv", "c.csv"] {
        f.put(name, "h\n").await;
        f.queue.send(name).await.unwrap();
    }
    let end = tokio::time::timeout(Duration::from_secs(60), f.worker.run(Shutdown::new()))
        .await
        .unwrap();
    assert_eq!(end, RunEnd::MaxMessages);
    assert_eq!(f.queue.snapshot().len(), 1);
    assert_eq!(f.metrics.outcome_count(OutcomeLabel::Completed), 2);
}

#[tokio::test]
async fn shutdown_drains_then_releases_what_is_still_running() {
    let f = Fixture::new(|s| {
        s.drain_timeout = Duration::from_millis(300);
        s.max_poll_interval = Duration::from_millis(50);
    })
    .await;
    f.put("slow.csv", "SPIN\n").await;
    f.queue.send("slow.csv").await.unwrap();
    let shutdown = Shutdown::new();
    let run = tokio::spawn({
        let (worker, shutdown) = (f.worker.clone(), shutdown.clone());
        async move { worker.run(shutdown).await }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while f.blobs.reads() < 2 {
        assert!(Instant::now() < deadline, "the job never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(f.readiness.is_ready());
    shutdown.trigger();
    let end = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(end, RunEnd::Stopped);
    assert!(
        !f.readiness.is_ready(),
        "not ready while and after draining"
    );
    let snap = f.queue.snapshot();
    assert_eq!(snap.len(), 1);
    assert!(snap[0].visible);
    assert_eq!(Envelope::open(&snap[0].text).released, 1);
    assert_eq!(f.metrics.outcome_count(OutcomeLabel::Released), 1);
}

#[tokio::test]
async fn a_storage_outage_keeps_the_loop_alive_and_flips_readiness() {
    let queues = MemoryQueueService::new();
    let blobs = MemoryBlobStore::new();
    blobs.create_container_if_missing("in").await.unwrap();
    queues.queue("jobs").create_if_missing().await.unwrap();
    let mut settings = Settings::with_defaults("jobs", ACCOUNT, "in").unwrap();
    settings.max_poll_interval = Duration::from_millis(50);
    // A queue outage pauses the worker; its probes start at --retry-delay.
    settings.retry_delay = Duration::from_millis(50);
    settings.max_retry_delay = Duration::from_millis(200);
    let metrics = Metrics::register(&mut Registry::default());
    let readiness = Readiness::new(Duration::from_millis(200));
    let worker = Worker::new(
        settings,
        &queues,
        Arc::new(blobs.clone()),
        metrics,
        readiness.clone(),
    )
    .with_reducer(test_reducer);
    worker.check().await.unwrap();
    let shutdown = Shutdown::new();
    let run = tokio::spawn({
        let (worker, shutdown) = (worker.clone(), shutdown.clone());
        async move { worker.run(shutdown).await }
    });
    let wait_for = |want: bool| {
        let readiness = readiness.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            while readiness.is_ready() != want {
                assert!(Instant::now() < deadline, "readiness never became {want}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    wait_for(true).await;
    queues.set_outage(true);
    wait_for(false).await;
    queues.set_outage(false);
    wait_for(true).await;
    blobs
        .put(
            &BlobPath::new("in", "x.csv"),
            Bytes::from_static(b"h\n"),
            PutOptions::default(),
        )
        .await
        .unwrap();
    queues.queue("jobs").send("x.csv").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while blobs
        .get(&BlobPath::new("in", "x_aggregated.csv"))
        .is_none()
    {
        assert!(Instant::now() < deadline, "the worker did not resume");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shutdown.trigger();
    assert_eq!(run.await.unwrap(), RunEnd::Stopped);
}

#[test]
fn backoff_grows_and_is_capped() {
    let mut s = Settings::with_defaults("q", ACCOUNT, "c").unwrap();
    s.retry_delay = Duration::from_secs(5);
    s.max_retry_delay = Duration::from_secs(60);
    let got: Vec<u64> = (1..=6).map(|a| s.backoff(a).as_secs()).collect();
    assert_eq!(got, [5, 10, 20, 40, 60, 60]);
    assert_eq!(s.backoff(u64::MAX).as_secs(), 60);
}

#[test]
fn settings_refuse_a_queue_whose_poison_twin_is_too_long() {
    let ok = Settings::with_defaults(&"q".repeat(MAX_QUEUE_NAME), ACCOUNT, "c").unwrap();
    assert_eq!(ok.poison_queue().len(), 63);
    let long = Settings::with_defaults(&"q".repeat(MAX_QUEUE_NAME + 1), ACCOUNT, "c");
    assert!(long.unwrap_err().contains("63"));
}

#[test]
fn poll_backoff_is_jittered_and_capped() {
    use rand::SeedableRng;
    let max = Duration::from_secs(5);
    let sleeps = |seed: u64| {
        let mut p = PollBackoff::with_rng(max, rand::rngs::StdRng::seed_from_u64(seed));
        (0..40).map(|_| p.next()).collect::<Vec<_>>()
    };
    let a = sleeps(1);
    // Doubling from 50 ms reaches the cap after 7 steps; every sleep then lies in [max/2, max].
    for (i, d) in a.iter().enumerate() {
        let nominal = (PollBackoff::MIN * (1 << i.min(20))).min(max);
        assert!(
            *d >= nominal / 2 && *d <= nominal,
            "sleep {i}: {d:?} vs {nominal:?}"
        );
    }
    // Jitter: at the cap the sleeps vary, and two replicas (seeds) do not poll in lockstep.
    let capped = &a[10..];
    assert!(capped.iter().any(|d| *d != capped[0]), "{capped:?}");
    assert_ne!(a, sleeps(2));
    // Reset starts again from the minimum.
    let mut p = PollBackoff::with_rng(max, rand::rngs::StdRng::seed_from_u64(3));
    for _ in 0..10 {
        p.next();
    }
    p.reset();
    assert!(p.next() <= PollBackoff::MIN);
}

#[tokio::test]
async fn start_up_check_names_what_is_missing() {
    let queues = MemoryQueueService::new();
    let blobs = MemoryBlobStore::new();
    let metrics = Metrics::register(&mut Registry::default());
    let build = |s: Settings| {
        Worker::new(
            s,
            &queues,
            Arc::new(blobs.clone()),
            metrics.clone(),
            Readiness::new(Duration::from_secs(30)),
        )
    };
    let err = build(Settings::with_defaults("jobs", ACCOUNT, "in").unwrap())
        .check()
        .await
        .unwrap_err();
    assert!(
        matches!(err, StartupError::Storage { ref source, .. } if source.kind == ErrorKind::NotFound),
        "{err}"
    );
    assert!(err.to_string().contains("jobs"), "{err}");
    queues.queue("jobs").create_if_missing().await.unwrap();
    let err = build(Settings::with_defaults("jobs", ACCOUNT, "in").unwrap())
        .check()
        .await
        .unwrap_err();
    assert!(
        matches!(err, StartupError::MissingContainer(ref c) if c == "in"),
        "{err}"
    );
    blobs.create_container_if_missing("in").await.unwrap();
    let mut s = Settings::with_defaults("jobs", ACCOUNT, "in").unwrap();
    s.output_container = Some("results".into());
    build(s).check().await.unwrap();
    assert!(
        blobs.container_exists("results").await.unwrap(),
        "output container created"
    );
    assert!(
        queues
            .memory_queue("jobs-poison")
            .approximate_count()
            .await
            .is_ok(),
        "poison queue created"
    );
}

/// Moves the paused clock past `delay`, after which the fakes show hidden messages again.
async fn skip(delay: Duration) {
    tokio::time::pause();
    tokio::time::advance(delay + Duration::from_millis(1)).await;
    tokio::time::resume();
}

#[tokio::test]
async fn a_blob_outage_longer_than_max_dequeue_count_never_poisons() {
    let f = Fixture::new(|s| s.max_dequeue_count = 2).await;
    f.put("t.csv", "h\n1\n").await;
    f.queue.send("t.csv").await.unwrap();
    f.blobs.set_outage(true);
    // Three times the attempts allowed: every delivery meets the outage.
    for delivery in 1..=6u64 {
        let msg = f.receive().await;
        assert_eq!(msg.dequeue_count, delivery);
        let outcome = f.worker.process_one(msg, CancellationToken::new()).await;
        assert!(f.poison_texts().is_empty(), "{delivery}: {outcome:?}");
        assert!(
            matches!(outcome, Outcome::Retried(JobError::Storage(_))),
            "{outcome:?}"
        );
        let snap = &f.queue.snapshot()[0];
        assert!(
            !snap.visible,
            "hidden for a backoff delay, not released at 0"
        );
        // The worker's backoff grows with each platform failure in a row.
        let (_, delay, rewritten) = f.queue.updates().last().cloned().unwrap();
        assert_eq!(delay, f.worker.settings().backoff(delivery));
        assert!(rewritten, "the deferral is recorded");
        let envelope = Envelope::open(&snap.text);
        assert_eq!(
            (envelope.original.as_str(), envelope.deferred),
            ("t.csv", delivery)
        );
        skip(snap.invisible_for).await;
    }
    f.blobs.set_outage(false);
    let msg = f.receive().await;
    let outcome = f.worker.process_one(msg, CancellationToken::new()).await;
    assert!(
        matches!(outcome, Outcome::Completed { rows: 1 }),
        "{outcome:?}"
    );
    assert_eq!(f.output("t_aggregated.csv").unwrap(), "H\n1\n");
    assert!(f.queue.snapshot().is_empty());
    assert!(f.poison_texts().is_empty());
}

#[tokio::test]
async fn a_forged_release_count_cannot_postpone_poisoning() {
    let f = Fixture::new(|s| {
        s.max_dequeue_count = 2;
        s.max_processing_time = Duration::from_millis(50);
    })
    .await;
    f.put("t.csv", "SPIN\n").await;
    // Anyone who can write to the queue can claim a thousand shutdown releases.
    f.queue
        .send(r#"{"$rollq":{"released":1000},"body":"t.csv"}"#)
        .await
        .unwrap();
    let mut poisoned_at = None;
    for delivery in 1..=6u64 {
        let msg = f.receive().await;
        let outcome = f.worker.process_one(msg, CancellationToken::new()).await;
        if let Outcome::Poisoned(e) = outcome {
            assert!(matches!(e, JobError::TooManyAttempts { .. }), "{e:?}");
            poisoned_at = Some(delivery);
            break;
        }
        skip(f.queue.snapshot()[0].invisible_for).await;
    }
    assert_eq!(poisoned_at, Some(2), "poisoned after --max-dequeue-count");
}

#[tokio::test]
async fn max_deliveries_ends_crash_loops_forged_counts_and_outages() {
    let f = Fixture::new(|s| s.max_deliveries = Some(3)).await;
    f.put("t.csv", "h\n1\n").await;
    // A forged envelope whose deliveries die without an outcome (crashes): receive, let go.
    f.queue
        .send(r#"{"$rollq":{"released":1000},"body":"t.csv"}"#)
        .await
        .unwrap();
    for _ in 0..3 {
        let m = f.receive().await;
        f.queue
            .update(&m.id, &m.pop_receipt, Duration::ZERO, None)
            .await
            .unwrap();
    }
    let msg = f.receive().await;
    assert_eq!(msg.dequeue_count, 4);
    let outcome = f.worker.process_one(msg, CancellationToken::new()).await;
    assert!(
        matches!(
            outcome,
            Outcome::Poisoned(JobError::MaxDeliveries {
                deliveries: 3,
                max: 3
            })
        ),
        "{outcome:?}"
    );
    // Platform failures never count as attempts, but they are deliveries: the third one ends.
    f.queue.send("t.csv").await.unwrap();
    f.blobs.set_outage(true);
    for delivery in 1..=3u64 {
        let msg = f.receive().await;
        let outcome = f.worker.process_one(msg, CancellationToken::new()).await;
        if delivery < 3 {
            assert!(matches!(outcome, Outcome::Retried(_)), "{outcome:?}");
            skip(f.queue.snapshot()[0].invisible_for).await;
        } else {
            assert!(
                matches!(
                    outcome,
                    Outcome::Poisoned(JobError::MaxDeliveries {
                        deliveries: 3,
                        max: 3
                    })
                ),
                "{outcome:?}"
            );
        }
    }
    assert!(f.queue.snapshot().is_empty());
    assert_eq!(f.poison_texts().len(), 2);
}

#[tokio::test]
async fn the_poison_copy_says_why() {
    let f = Fixture::new(|s| {
        s.max_dequeue_count = 2;
        s.max_processing_time = Duration::from_millis(50);
        s.worker_name = "worker-7".into();
    })
    .await;
    f.put("t.csv", "SPIN\n").await;
    f.put("bad.csv", "h\nBAD\n").await;
    f.queue.send("t.csv").await.unwrap();
    let msg = f.receive().await;
    f.worker.process_one(msg, CancellationToken::new()).await;
    let first = Envelope::open(&f.queue.snapshot()[0].text).first_failure;
    assert!(
        first.is_some(),
        "the first failure is recorded in the bookkeeping"
    );
    skip(f.queue.snapshot()[0].invisible_for).await;
    let msg = f.receive().await;
    let outcome = f.worker.process_one(msg, CancellationToken::new()).await;
    assert!(matches!(outcome, Outcome::Poisoned(_)), "{outcome:?}");
    assert!(matches!(
        f.send_and_process("bad.csv").await,
        Outcome::Poisoned(JobError::Input(_))
    ));
    assert_eq!(f.poison_texts(), ["t.csv", "bad.csv"]);
    let notes = f.poison_notes();
    let n = &notes[0];
    assert_eq!(
        (
            n.reason.as_str(),
            n.class.as_str(),
            n.deliveries,
            n.attempts
        ),
        ("too_many_attempts", "message", 2, 2)
    );
    assert_eq!(Some(&n.first_failure), first.as_ref());
    assert!(n.last_failure >= n.first_failure, "{n:?}");
    assert_eq!(n.worker, "worker-7");
    assert!(n.error.contains("--max-dequeue-count 2"), "{}", n.error);
    let n = &notes[1];
    assert_eq!(
        (
            n.reason.as_str(),
            n.class.as_str(),
            n.deliveries,
            n.attempts
        ),
        ("invalid_input", "permanent", 1, 1)
    );
    assert_eq!(n.first_failure, n.last_failure, "failed once");
}

#[tokio::test]
async fn verbatim_poison_format_and_texts_too_long_for_the_envelope_are_copied_as_they_are() {
    let f = Fixture::new(|s| s.poison_format = PoisonFormat::Verbatim).await;
    f.send_and_process("{garbage").await;
    assert_eq!(
        f.poison.snapshot()[0].text,
        "{garbage",
        "Azure Functions' behaviour"
    );
    let f = Fixture::new(|_| {}).await;
    let long = format!("{{{}", "x".repeat(envelope::MAX_ENVELOPE_BYTES));
    assert!(matches!(
        f.send_and_process(&long).await,
        Outcome::Poisoned(JobError::BadMessage(_))
    ));
    assert_eq!(f.poison.snapshot()[0].text, long);
}

#[tokio::test]
async fn a_deleted_poison_queue_is_created_and_the_message_ends() {
    let f = Fixture::new(|_| {}).await;
    f.poison.delete_queue();
    assert!(matches!(
        f.send_and_process("{garbage").await,
        Outcome::Poisoned(JobError::BadMessage(_))
    ));
    assert_eq!(f.poison_texts(), ["{garbage"]);
    assert!(f.queue.snapshot().is_empty());
    assert_eq!(
        f.metrics.storage_error_count(Op::Send, ErrorKind::NotFound),
        1
    );
}

#[tokio::test]
async fn a_poison_queue_that_refuses_sends_leaves_the_message_for_its_timeout() {
    let f = Fixture::new(|_| {}).await;
    f.poison.refuse_sends(true);
    let outcome = f.send_and_process("{garbage").await;
    assert!(
        matches!(outcome, Outcome::Retried(JobError::Storage(ref e)) if e.op == Op::Send),
        "{outcome:?}"
    );
    assert_eq!(
        f.metrics
            .storage_error_count(Op::Send, ErrorKind::Transient),
        u64::from(POISON_SEND_TRIES),
        "bounded tries, each counted"
    );
    let snap = &f.queue.snapshot()[0];
    assert_eq!(snap.text, "{garbage", "not deleted, not rewritten");
    assert!(
        !snap.visible && snap.invisible_for > Duration::from_secs(20),
        "left for its visibility timeout, not a short retry: {:?}",
        snap.invisible_for
    );
    // When it reappears and the poison queue works again, it ends.
    f.poison.refuse_sends(false);
    skip(snap.invisible_for).await;
    assert!(matches!(
        f.worker
            .process_one(f.receive().await, CancellationToken::new())
            .await,
        Outcome::Poisoned(_)
    ));
    assert_eq!(f.poison_texts(), ["{garbage"]);
    assert!(f.queue.snapshot().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_message_whose_lease_is_lost_is_never_poisoned() {
    // Renewal every 250 ms (paused clock): it finds the takeover while the poison copy is
    // still being retried, before the third try at 600 ms.
    let f = Fixture::new(|s| s.visibility_timeout = Duration::from_millis(500)).await;
    f.poison.refuse_sends(true);
    f.queue.send("{garbage").await.unwrap();
    let msg = f.receive().await;
    // Another consumer takes the message over.
    f.queue
        .update(&msg.id, &msg.pop_receipt, Duration::from_secs(60), None)
        .await
        .unwrap();
    let outcome = f.worker.process_one(msg, CancellationToken::new()).await;
    assert!(matches!(outcome, Outcome::LeaseLost), "{outcome:?}");
    assert!(
        f.metrics
            .storage_error_count(Op::Send, ErrorKind::Transient)
            < u64::from(POISON_SEND_TRIES),
        "stopped trying once the lease was lost"
    );
    f.poison.refuse_sends(false);
    assert!(f.poison_texts().is_empty());
    assert_eq!(f.queue.snapshot().len(), 1, "left to its new owner");
}

/// A Get Messages in flight at SIGTERM: the worker lets it finish and releases what it
/// returns at once (visible again, the release recorded, no attempt charged, nothing started).
#[tokio::test]
async fn a_receive_in_flight_at_shutdown_is_released_not_charged() {
    let queues = MemoryQueueService::new();
    let blobs = MemoryBlobStore::new();
    blobs.create_container_if_missing("in").await.unwrap();
    let q = queues.memory_queue("jobs");
    q.create_if_missing().await.unwrap();
    for i in 0..3 {
        q.send(&format!("m{i}.csv")).await.unwrap();
    }
    // The first receive leases all three (four free slots), and its answer is held back.
    q.hold_receives(true);
    let mut settings = Settings::with_defaults("jobs", ACCOUNT, "in").unwrap();
    settings.max_in_flight = 4;
    let metrics = Metrics::register(&mut Registry::default());
    let worker = Worker::new(
        settings,
        &queues,
        Arc::new(blobs.clone()),
        metrics.clone(),
        Readiness::new(Duration::from_secs(30)),
    )
    .with_reducer(test_reducer);
    worker.check().await.unwrap();
    let shutdown = Shutdown::new();
    let run = tokio::spawn({
        let (worker, shutdown) = (worker.clone(), shutdown.clone());
        async move { worker.run(shutdown).await }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while q.receives_started() == 0 || q.snapshot().iter().any(|m| m.visible) {
        assert!(Instant::now() < deadline, "no receive leased the messages");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    shutdown.trigger();
    q.hold_receives(false);
    let end = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the worker stops")
        .unwrap();
    assert_eq!(end, RunEnd::Stopped);
    let snap = q.snapshot();
    assert_eq!(snap.len(), 3);
    for m in &snap {
        assert!(m.visible, "released at once: {m:?}");
        let envelope = Envelope::open(&m.text);
        assert_eq!(envelope.released, 1, "{m:?}");
        assert_eq!(
            envelope.attempts(m.dequeue_count),
            0,
            "not an attempt: {m:?}"
        );
    }
    assert_eq!(metrics.outcome_count(OutcomeLabel::Released), 3);
    assert_eq!(metrics.outcome_count(OutcomeLabel::Completed), 0);
    assert!(
        blobs
            .get(&BlobPath::new("in", "m0_aggregated.csv"))
            .is_none()
    );
}

#[tokio::test]
async fn inputs_whose_names_differ_only_in_extension_write_their_own_outputs() {
    // The old rule sent all three to `t_aggregated.csv`, each run overwriting the last.
    for out in [None, Some("out")] {
        let f = Fixture::new(|s| s.output_container = out.map(Into::into)).await;
        let inputs = [("t.csv", "h\n1\n"), ("t.tsv", "h\n2\n"), ("t", "h\n3\n")];
        for (name, body) in inputs {
            f.put(name, body).await;
            let outcome = f.send_and_process(name).await;
            assert!(matches!(outcome, Outcome::Completed { .. }), "{outcome:?}");
        }
        for (name, body) in inputs {
            let path = crate::contract::output_path(&BlobPath::new("in", name), out);
            let got = f.blobs.get(&path).expect("output written");
            assert_eq!(got, body.to_uppercase().as_bytes(), "{path}");
        }
    }
}
// === pause and per-blob backoff ===

/// Polls `done` every 5 ms until it holds, panicking with `what` after 30 s.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// One outage seen by N jobs at once is one step for each: every message waits by its own
/// deferral count, not by a counter the other jobs have raised meanwhile.
#[tokio::test]
async fn an_outage_seen_by_concurrent_jobs_is_one_step_for_each() {
    let f = Fixture::new(|s| s.max_in_flight = 4).await;
    for i in 0..4 {
        let name = format!("c{i}.csv");
        f.blobs
            .put(
                &BlobPath::new("in", &name),
                Bytes::from(format!("h\n{i}\n")),
                PutOptions::default(),
            )
            .await
            .unwrap();
        f.queue.send(&name).await.unwrap();
    }
    f.blobs.set_outage(true);
    let msgs = f
        .queue
        .receive(4, f.worker.settings().visibility_timeout)
        .await
        .unwrap();
    assert_eq!(msgs.len(), 4);
    let outcomes = futures::future::join_all(
        msgs.into_iter()
            .map(|m| f.worker.process_one(m, CancellationToken::new())),
    )
    .await;
    assert!(
        outcomes.iter().all(|o| matches!(o, Outcome::Retried(_))),
        "{outcomes:?}"
    );
    let first = f.worker.settings().backoff(1);
    let delays: Vec<Duration> = f.queue.updates().iter().map(|u| u.1).collect();
    assert_eq!(delays, [first; 4], "each message's first deferral");
    // The next deferral of one message is its second step, whatever the others did.
    skip(first).await;
    let msg = f.receive().await;
    f.worker.process_one(msg, CancellationToken::new()).await;
    assert_eq!(
        f.queue.updates().last().unwrap().1,
        f.worker.settings().backoff(2)
    );
}

/// With the blob endpoint down, the worker pauses: it sends no Get Messages (only probes of
/// the container), `/readyz` is 503 at once although queue calls succeed, and it resumes by
/// itself when a probe succeeds.
#[tokio::test]
async fn while_paused_the_worker_sends_no_get_messages_only_probes() {
    let f = Fixture::new(|s| {
        s.retry_delay = Duration::from_millis(20);
        s.max_retry_delay = Duration::from_millis(80);
        s.max_poll_interval = Duration::from_millis(50);
        s.exit_when_idle = Some(Duration::from_millis(200));
    })
    .await;
    f.put("t.csv", "h\n1\n").await;
    f.queue.send("t.csv").await.unwrap();
    f.blobs.set_outage(true);
    let run = tokio::spawn({
        let worker = f.worker.clone();
        async move { worker.run(Shutdown::new()).await }
    });
    until("the pause (readiness 503)", || !f.readiness.is_ready()).await;
    let receives = f.queue.receives_started();
    let probes = || {
        f.metrics
            .storage_error_count(Op::ContainerProperties, ErrorKind::Transient)
    };
    let probed = probes();
    assert!(probed >= 1, "the pause was confirmed by a probe");
    until("three more probes", || probes() >= probed + 3).await;
    assert_eq!(
        f.queue.receives_started(),
        receives,
        "no Get Messages while paused"
    );
    assert!(!f.readiness.is_ready());
    assert_eq!(f.metrics.pause_count(), 1, "one pause, however many probes");
    f.blobs.set_outage(false);
    let end = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("resumes, finishes and exits when idle")
        .unwrap();
    assert_eq!(end, RunEnd::Idle);
    assert_eq!(f.output("t_aggregated.csv").unwrap(), "H\n1\n");
    assert!(f.readiness.is_ready(), "ready again after the pause");
    assert!(f.poison_texts().is_empty());
}

/// A blob store in which one blob is hot: its first `failures` property reads are throttled
/// with `ServerBusy` (the code Azure gives a hot partition and a throttled account alike).
#[derive(Debug)]
struct HotBlob {
    inner: MemoryBlobStore,
    hot: BlobPath,
    failures: std::sync::atomic::AtomicU64,
}

#[async_trait::async_trait]
impl BlobStore for HotBlob {
    async fn create_container_if_missing(&self, c: &str) -> Result<(), StorageError> {
        self.inner.create_container_if_missing(c).await
    }
    async fn container_exists(&self, c: &str) -> Result<bool, StorageError> {
        self.inner.container_exists(c).await
    }
    async fn properties(
        &self,
        path: &BlobPath,
    ) -> Result<crate::storage::BlobProperties, StorageError> {
        use std::sync::atomic::Ordering;
        if path == &self.hot
            && self
                .failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            return Err(StorageError::new(
                ErrorKind::Throttled,
                Op::BlobProperties,
                path.to_string(),
                "HTTP 503 ServerBusy",
            ));
        }
        self.inner.properties(path).await
    }
    async fn open_read(
        &self,
        path: &BlobPath,
        if_match: Option<&crate::storage::ETag>,
        opts: crate::storage::ReadOptions,
    ) -> Result<crate::storage::ByteStream, StorageError> {
        self.inner.open_read(path, if_match, opts).await
    }
    async fn put(
        &self,
        path: &BlobPath,
        body: Bytes,
        opts: PutOptions,
    ) -> Result<crate::storage::ETag, StorageError> {
        self.inner.put(path, body, opts).await
    }
    async fn start_upload(
        &self,
        path: &BlobPath,
        opts: PutOptions,
    ) -> Result<Box<dyn crate::storage::BlockUpload>, StorageError> {
        self.inner.start_upload(path, opts).await
    }
    async fn list(
        &self,
        c: &str,
        prefix: &str,
    ) -> Result<Vec<crate::storage::BlobItem>, StorageError> {
        self.inner.list(c, prefix).await
    }
    async fn delete(&self, path: &BlobPath) -> Result<(), StorageError> {
        self.inner.delete(path).await
    }
}

/// A hot blob is retried alone, with its own backoff: the probe its `ServerBusy` triggers
/// succeeds, so the worker does not pause, and another message completes meanwhile.
#[tokio::test]
async fn a_hot_blob_is_retried_alone_and_does_not_stop_another_message() {
    let queues = MemoryQueueService::new();
    let inner = MemoryBlobStore::new();
    inner.create_container_if_missing("in").await.unwrap();
    for (name, body) in [("hot.csv", "h\n1\n"), ("cold.csv", "h\n2\n")] {
        inner
            .put(
                &BlobPath::new("in", name),
                Bytes::from_static(body.as_bytes()),
                PutOptions::default(),
            )
            .await
            .unwrap();
    }
    let q = queues.memory_queue("jobs");
    q.create_if_missing().await.unwrap();
    q.send("hot.csv").await.unwrap();
    q.send("cold.csv").await.unwrap();
    let hot = Arc::new(HotBlob {
        inner: inner.clone(),
        hot: BlobPath::new("in", "hot.csv"),
        failures: 4.into(),
    });
    let mut settings = Settings::with_defaults("jobs", ACCOUNT, "in").unwrap();
    settings.max_in_flight = 2;
    settings.max_dequeue_count = 2;
    settings.retry_delay = Duration::from_millis(200);
    settings.max_retry_delay = Duration::from_secs(1);
    settings.max_poll_interval = Duration::from_millis(50);
    settings.exit_when_idle = Some(Duration::from_millis(200));
    let metrics = Metrics::register(&mut Registry::default());
    let readiness = Readiness::new(Duration::from_secs(30));
    let worker = Worker::new(
        settings,
        &queues,
        hot.clone(),
        metrics.clone(),
        readiness.clone(),
    )
    .with_reducer(test_reducer);
    worker.check().await.unwrap();
    let run = tokio::spawn({
        let worker = worker.clone();
        async move { worker.run(Shutdown::new()).await }
    });
    until("the cold message's output", || {
        inner
            .get(&BlobPath::new("in", "cold_aggregated.csv"))
            .is_some()
    })
    .await;
    assert!(
        hot.failures.load(std::sync::atomic::Ordering::SeqCst) > 0,
        "the cold message completed while the hot blob was still throttled"
    );
    let end = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the hot message completes too")
        .unwrap();
    assert_eq!(end, RunEnd::Idle);
    let out = inner
        .get(&BlobPath::new("in", "hot_aggregated.csv"))
        .unwrap();
    assert_eq!(&out[..], b"H\n1\n");
    assert_eq!(metrics.pause_count(), 0, "a hot blob pauses nothing");
    assert!(readiness.is_ready());
    // Its own backoff: one step per deferral of this message, past --max-dequeue-count.
    let s = worker.settings();
    let delays: Vec<Duration> = q.updates().iter().map(|u| u.1).collect();
    assert_eq!(
        delays,
        [s.backoff(1), s.backoff(2), s.backoff(3), s.backoff(4)]
    );
    assert!(queues.memory_queue("jobs-poison").snapshot().is_empty());
}

/// A missing allowed container is the platform's: the message is deferred (never poisoned,
/// never an attempt) and completes once the container is back; a missing blob is poisoned.
#[tokio::test]
async fn a_missing_allowed_container_defers_the_message_until_it_returns() {
    let f = Fixture::new(|s| {
        s.max_dequeue_count = 1;
        s.allowed_containers = vec!["out".into()];
    })
    .await;
    f.blobs.delete_container("out");
    let text = r#"{"container": "out", "blob": "t.csv"}"#;
    let outcome = f.send_and_process(text).await;
    assert!(
        matches!(&outcome, Outcome::Retried(JobError::Storage(e)) if e.is_missing_container()),
        "{outcome:?}"
    );
    assert!(f.poison_texts().is_empty());
    let snap = &f.queue.snapshot()[0];
    assert_eq!(
        Envelope::open(&snap.text).deferred,
        1,
        "recorded as a deferral"
    );
    skip(snap.invisible_for).await;

    f.blobs.create_container_if_missing("out").await.unwrap();
    f.blobs
        .put(
            &BlobPath::new("out", "t.csv"),
            Bytes::from_static(b"h\n1\n"),
            PutOptions::default(),
        )
        .await
        .unwrap();
    let msg = f.receive().await;
    let outcome = f.worker.process_one(msg, CancellationToken::new()).await;
    assert!(matches!(outcome, Outcome::Completed { .. }), "{outcome:?}");
    assert!(f.poison_texts().is_empty());

    // The container exists, the blob does not: the message's own fault.
    let outcome = f
        .send_and_process(r#"{"container": "out", "blob": "gone.csv"}"#)
        .await;
    assert!(
        matches!(outcome, Outcome::Poisoned(JobError::InputNotFound(_))),
        "{outcome:?}"
    );
}

/// A missing `--container` is reported for a pause, but a 404 that does not last (the
/// container exists again when the probe asks) pauses nothing and never touches readiness;
/// the deferred message completes.
#[tokio::test]
async fn a_missing_input_container_that_returns_before_the_probe_pauses_nothing() {
    let f = Fixture::new(|s| {
        s.retry_delay = Duration::from_millis(20);
        s.max_retry_delay = Duration::from_millis(80);
        s.max_poll_interval = Duration::from_millis(50);
        s.exit_when_idle = Some(Duration::from_millis(200));
    })
    .await;
    f.blobs.delete_container("in");
    let outcome = f.send_and_process("t.csv").await;
    assert!(
        matches!(&outcome, Outcome::Retried(JobError::Storage(e)) if e.is_missing_container()),
        "{outcome:?}"
    );
    let reported = f.worker.ctx.pause.take().expect("reported for a pause");
    assert_eq!(reported.error.missing_container(), Some("in"));
    f.worker.ctx.pause.report(&reported.error);

    f.blobs.create_container_if_missing("in").await.unwrap();
    f.put("t.csv", "h\n1\n").await;
    let end = tokio::time::timeout(Duration::from_secs(30), f.worker.run(Shutdown::new()))
        .await
        .expect("finishes and exits when idle");
    assert_eq!(end, RunEnd::Idle);
    assert_eq!(f.metrics.pause_count(), 0, "the probe found the container");
    assert!(f.readiness.is_ready());
    assert_eq!(f.output("t_aggregated.csv").unwrap(), "H\n1\n");
    assert!(f.poison_texts().is_empty());
}

/// A `--container` that stays missing pauses the loop (`/readyz` 503 at once: the probe
/// confirmed it), and the loop resumes when the container exists again.
#[tokio::test]
async fn a_missing_input_container_pauses_until_it_exists_again() {
    let f = Fixture::new(|s| {
        s.retry_delay = Duration::from_millis(20);
        s.max_retry_delay = Duration::from_millis(80);
        s.max_poll_interval = Duration::from_millis(50);
        s.exit_when_idle = Some(Duration::from_millis(200));
    })
    .await;
    f.blobs.delete_container("in");
    f.queue.send("t.csv").await.unwrap();
    let run = tokio::spawn({
        let worker = f.worker.clone();
        async move { worker.run(Shutdown::new()).await }
    });
    until("the pause (readiness 503)", || !f.readiness.is_ready()).await;
    assert_eq!(f.metrics.pause_count(), 1);
    f.blobs.create_container_if_missing("in").await.unwrap();
    f.put("t.csv", "h\n1\n").await;
    let end = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("resumes, finishes and exits when idle")
        .unwrap();
    assert_eq!(end, RunEnd::Idle);
    assert_eq!(f.output("t_aggregated.csv").unwrap(), "H\n1\n");
    assert!(f.readiness.is_ready(), "ready again after the pause");
    assert!(f.poison_texts().is_empty());
}

/// Issue 14: a prefetched message that waits for a slot longer than a quarter of the
/// visibility timeout is released while the worker runs (not only at shutdown), recorded as a
/// release and not an attempt, so another replica can take it. Fast jobs first, so the start
/// rate lets the worker prefetch; once the slow job holds the only slot nothing starts, the
/// prefetch shrinks to nothing, and the backlog behind it is not received (and released)
/// over and over: each such round trip is an Update request and a delivery on the dequeue
/// count.
#[tokio::test]
async fn a_prefetched_message_that_waits_too_long_is_released() {
    let f = Fixture::new(|s| {
        s.max_in_flight = 1;
        s.prefetch = 4;
        s.visibility_timeout = Duration::from_secs(2);
        s.max_poll_interval = Duration::from_millis(50);
        s.drain_timeout = Duration::from_millis(300);
    })
    .await;
    for i in 0..8 {
        let name = format!("fast{i}.csv");
        f.put(&name, "h\n1\n").await;
        f.queue.send(&name).await.unwrap();
    }
    f.put("slow.csv", "SPIN\n").await;
    f.queue.send("slow.csv").await.unwrap();
    for i in 0..8 {
        let name = format!("b{i}.csv");
        f.put(&name, "h\n1\n").await;
        f.queue.send(&name).await.unwrap();
    }
    let shutdown = Shutdown::new();
    let run = tokio::spawn({
        let (worker, shutdown) = (f.worker.clone(), shutdown.clone());
        async move { worker.run(shutdown).await }
    });
    // The slow job holds the only slot; the prefetched messages wait locally, then go back.
    let released = |snap: &[MessageSnapshot]| -> usize {
        snap.iter()
            .filter(|m| {
                let e = Envelope::open(&m.text);
                e.original.starts_with('b') && e.released >= 1 && e.attempts(m.dequeue_count) == 0
            })
            .count()
    };
    // However many the start rate let it prefetch (at most 4), all of them go back. The stop
    // comes before any assertion: the slow job only ends when it is cancelled.
    let deadline = Instant::now() + Duration::from_secs(30);
    let n = loop {
        let n = f.metrics.outcome_count(OutcomeLabel::Released);
        if n >= 1 && released(&f.queue.snapshot()) as u64 == n {
            break Some(n);
        }
        if Instant::now() >= deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    shutdown.trigger();
    let end = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(end, RunEnd::Stopped);
    let snap = f.queue.snapshot();
    let n = n.unwrap_or_else(|| panic!("the waiting messages were never released: {snap:?}"));
    assert!(n <= 4, "at most --prefetch waited: {n}");
    assert_eq!(snap.len(), 9, "only the fast ones deleted: {snap:?}");
    assert!(snap.iter().all(|m| m.visible), "all released: {snap:?}");
    let deliveries: u64 = snap
        .iter()
        .filter(|m| Envelope::open(&m.text).original.starts_with('b'))
        .map(|m| m.dequeue_count)
        .sum();
    assert_eq!(
        deliveries, n,
        "with no job starting, nothing more was received after the release: {snap:?}"
    );
    // The slow job, still running at the drain deadline, is released too.
    assert_eq!(f.metrics.outcome_count(OutcomeLabel::Released), n + 1);
    assert!(
        (0..8).all(|i| f.output(&format!("b{i}_aggregated.csv")).is_none()),
        "none of them started"
    );
}

/// Issue 14: a message waiting for its memory reservation at the stop signal is released at
/// once, recorded as a release and not an attempt, while the job holding the budget goes on
/// draining; before, it stayed leased until that job ended and then started after the signal.
#[tokio::test]
async fn a_message_waiting_for_memory_is_released_at_the_stop_signal() {
    let f = Fixture::new(|s| {
        // Room for one job's reservation, not two.
        s.memory_budget = budget::Need::before_size(s).bytes();
        s.max_in_flight = 2;
        s.max_poll_interval = Duration::from_millis(50);
        s.drain_timeout = Duration::from_secs(60);
    })
    .await;
    f.put("slow.csv", "SPIN\n").await;
    f.put("b.csv", "h\n1\n").await;
    f.queue.send("slow.csv").await.unwrap();
    let shutdown = Shutdown::new();
    let run = tokio::spawn({
        let (worker, shutdown) = (f.worker.clone(), shutdown.clone());
        async move { worker.run(shutdown).await }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while f.blobs.reads() < 2 {
        assert!(Instant::now() < deadline, "the job never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    f.queue.send("b.csv").await.unwrap();
    let (_, _, waiting) = f.metrics.memory();
    while waiting.get() != 1 {
        assert!(Instant::now() < deadline, "b.csv never waited for memory");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    shutdown.trigger();
    // Released long before the 60 s drain deadline, with slow.csv still running.
    let deadline = Instant::now() + Duration::from_secs(10);
    let released = loop {
        let released = f.queue.snapshot().iter().any(|m| {
            let e = Envelope::open(&m.text);
            m.visible
                && e.original == "b.csv"
                && e.released == 1
                && e.attempts(m.dequeue_count) == 0
        });
        if released || Instant::now() >= deadline {
            break released;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let draining = !run.is_finished();
    let (still_waiting, started) = (waiting.get(), f.output("b_aggregated.csv").is_some());
    let snap = f.queue.snapshot();
    // The second signal releases slow.csv, whose spinning reducer would otherwise keep the
    // runtime from shutting down after a failed assertion below.
    shutdown.trigger();
    let end = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .unwrap()
        .unwrap();
    assert!(
        released,
        "the message waiting for memory was not released at the stop: {snap:?}"
    );
    assert!(draining, "slow.csv was still draining");
    assert_eq!(still_waiting, 0);
    assert!(!started, "b.csv never started");
    assert_eq!(end, RunEnd::Stopped);
    assert_eq!(f.metrics.outcome_count(OutcomeLabel::Released), 2);
}
