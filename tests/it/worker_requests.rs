//! Issue 14: `rollq_storage_requests_total{op}` against what really went over the wire. A
//! worker runs through an HTTP proxy on both endpoints (blob and queue); its counter, summed
//! over ops, must equal the requests the proxies saw, SDK retries of 503s included, and the
//! per-op series must match the proxies' request kinds.

use std::time::Duration;

use rollq::storage::Op;

use crate::support::HttpProxy;
use crate::support::http_proxy::{Action, Kind, Rule, Seen, When};
use crate::support::{Azurite, unique_name};
use crate::worker_support::*;

/// One-day files: 1,440 one-minute rows, as in the figures.
const ROWS: u64 = 1440;

/// The worker's counter for `op`.
fn requests(scrape: &prometheus_parse::Scrape, op: &str) -> u64 {
    sample(scrape, "rollq_storage_requests_total", &[("op", op)]).unwrap_or(0.0) as u64
}

/// The worker's counter summed over every `op` label (`other` included).
fn requests_total(scrape: &prometheus_parse::Scrape) -> u64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == "rollq_storage_requests_total")
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v as u64,
            _ => 0,
        })
        .sum()
}

/// A scrape and the proxies' request lists taken at one quiet moment.
///
/// The worker counts a request before sending it, so at any instant the proxies have seen
/// at most what the counter says. Reading the proxies, then the counter, then the proxies
/// again, and finding all three equal means that at the scrape every counted request had
/// arrived: an exact comparison without stopping the worker's idle polling. Retried until
/// such a moment comes (the worker idles between polls).
async fn quiet_snapshot(
    worker: &WorkerProc,
    proxies: &[&HttpProxy],
) -> (prometheus_parse::Scrape, Vec<Seen>) {
    let seen = |ps: &[&HttpProxy]| -> Vec<Seen> { ps.iter().flat_map(|p| p.seen()).collect() };
    let mut last = (0, 0, 0);
    for _ in 0..200 {
        let before = seen(proxies).len();
        let scrape = worker.metrics().await;
        let after = seen(proxies);
        let counted = requests_total(&scrape);
        if before as u64 == counted && after.len() == before {
            return (scrape, after);
        }
        last = (before, counted, after.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "no quiet moment: proxies saw {} then {}, the worker counted {}",
        last.0, last.2, last.1
    );
}

fn of_kind(seen: &[Seen], kind: Kind) -> u64 {
    seen.iter().filter(|s| s.kind == kind).count() as u64
}

/// Queues `n` one-day files, runs a worker through proxies with `blob_rules` and
/// `queue_rules`, waits for every file to complete, and checks the counter against the
/// proxies. Returns the requests counted, the files completed and what the proxies saw.
async fn run_and_compare(
    tag: &str,
    n: u64,
    blob_rules: Vec<Rule>,
    queue_rules: Vec<Rule>,
) -> (u64, u64, Vec<Seen>) {
    let az = Azurite::start();
    let conn = az.connect().await;
    let (queue, container) = fresh_queue_and_container(&conn).await;
    let prefix = unique_name(tag);
    let mut want = Vec::new();
    for i in 0..n {
        let body = seed_csv(i, ROWS);
        want.push(expected_output(&body));
        let name = format!("{prefix}-{i}.csv");
        upload(&conn.blobs, &container, &name, body).await;
        queue.send(&name).await.unwrap();
    }
    let blob_proxy = HttpProxy::start(az.blob_addr(), 14, blob_rules);
    let queue_proxy = HttpProxy::start(az.queue_addr(), 15, queue_rules);
    let worker = WorkerProc::spawn_with(
        az.rollq_via(blob_proxy.addr(), queue_proxy.addr()),
        queue.name(),
        &container,
        &["--storage-timeout", "10s"],
    );
    eventually("every file completed", PATIENCE, || async {
        let m = worker.metrics().await;
        let done = sample(&m, "rollq_messages_total", &[("outcome", "completed")])?;
        (done as u64 == n).then_some(())
    })
    .await;
    for (i, want) in want.iter().enumerate() {
        let got = download(
            &conn.blobs,
            &container,
            &format!("{prefix}-{i}_aggregated.csv"),
        )
        .await;
        assert!(got.as_ref() == Some(want), "output {i} missing or wrong");
    }

    let (m, seen) = quiet_snapshot(&worker, &[&blob_proxy, &queue_proxy]).await;
    let total = requests_total(&m);
    assert_eq!(
        total,
        seen.len() as u64,
        "the counter equals the requests that reached storage"
    );
    assert_eq!(requests(&m, "other"), 0, "every request carries its op");
    // Labelled by the operation that sent them: each kind the proxy tells apart matches.
    for (op, kind) in [
        (Op::Download, Kind::BlobGet),
        (Op::Receive, Kind::Receive),
        (Op::Delete, Kind::Delete),
        (Op::Peek, Kind::Peek),
        (Op::StageBlock, Kind::PutBlock),
        (Op::CommitBlockList, Kind::PutBlockList),
    ] {
        assert_eq!(
            requests(&m, op.as_str()),
            of_kind(&seen, kind),
            "{op} requests vs the proxy's {kind:?}"
        );
    }
    assert!(
        requests(&m, Op::Download.as_str()) >= n,
        "at least one download per file"
    );
    let completed = sample(&m, "rollq_messages_total", &[("outcome", "completed")]).unwrap();
    let mut by_op: Vec<_> = m
        .samples
        .iter()
        .filter(|s| s.metric == "rollq_storage_requests_total")
        .filter_map(|s| {
            let v = match s.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
                _ => return None,
            };
            (v > 0.0).then(|| format!("{}={v}", s.labels.get("op").unwrap_or("?")))
        })
        .collect();
    by_op.sort();
    // A figure to read, not a threshold: it includes the start-up check and idle polls.
    println!(
        "{tag}: {total} storage requests for {completed} completed files = {:.2} per file ({})",
        total as f64 / completed,
        by_op.join(", ")
    );
    (total, completed as u64, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_counted_equal_requests_sent() {
    run_and_compare("reqs", 20, Vec::new(), Vec::new()).await;
}

/// The most storage requests one completed one-day file may cost while a backlog drains:
/// one GET, one conditional Put Blob, one Delete Message, and receives of up to 32 messages
/// amortised over their batch (issue 14).
const MAX_REQUESTS_PER_FILE: f64 = 3.2;

/// Issue 14: a backlog of one-day files (all queued before the worker starts) drains at no
/// more than [`MAX_REQUESTS_PER_FILE`] requests per file, counted by the proxies, not by the
/// worker. The window is the drain: from the first Get Messages to the last Delete Message,
/// every request of either proxy in it (the queue gauges' samples included); the start-up
/// checks before it and the idle polls after it are once per process, not per file, and are
/// printed as the whole run's figure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_drains_at_most_3_2_requests_per_file() {
    // Two receives' worth at the default prefetch: the fixed costs of a drain (the gauges'
    // first sample, the receives of its tail) weigh as they would in a longer backlog.
    let n = 64;
    let (_, completed, mut seen) = run_and_compare("backlog", n, Vec::new(), Vec::new()).await;
    assert_eq!(completed, n);
    seen.sort_by_key(|s| s.at);
    let first = seen
        .iter()
        .position(|s| s.kind == Kind::Receive)
        .expect("a receive");
    let last = seen
        .iter()
        .rposition(|s| s.kind == Kind::Delete)
        .expect("a delete");
    let window = &seen[first..=last];
    let per_file = window.len() as f64 / n as f64;
    let mut kinds: Vec<String> = [
        Kind::Receive,
        Kind::BlobGet,
        Kind::Head,
        Kind::Other,
        Kind::Delete,
        Kind::Peek,
        Kind::Update,
    ]
    .iter()
    .map(|k| format!("{k:?}={}", of_kind(window, *k)))
    .collect();
    kinds.retain(|k| !k.ends_with("=0"));
    println!(
        "drain: {} requests for {n} files = {per_file:.2} per file ({}); whole run {} = {:.2} per file",
        window.len(),
        kinds.join(", "),
        seen.len(),
        seen.len() as f64 / n as f64
    );
    assert!(
        per_file <= MAX_REQUESTS_PER_FILE,
        "{per_file:.2} requests per file while draining ({}), more than {MAX_REQUESTS_PER_FILE}",
        kinds.join(", ")
    );
}

/// The same with the proxies answering some requests 503 themselves: the SDK retries them,
/// and every try is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_retries_are_counted_per_try() {
    let busy = |kind| Rule {
        kind,
        when: When::FirstN(3),
        action: Action::Answer {
            status: 503,
            retry_after: None,
        },
    };
    let (_, _, seen) = run_and_compare(
        "reqs503",
        6,
        vec![busy(Kind::BlobGet)],
        vec![busy(Kind::Receive), busy(Kind::Delete)],
    )
    .await;
    let answered = seen.iter().filter(|s| s.action.is_some()).count();
    assert_eq!(answered, 9, "every injected 503 was sent, and so counted");
}

/// The blob requests the proxy saw for one blob, in order, as `(kind, is_output)` pairs
/// where a Put Blob shows as `Kind::Other` (the proxy has no kind of its own for it).
fn requests_for(seen: &[Seen], input: &str) -> Vec<(Kind, bool)> {
    let output = input.replace(".csv", "_aggregated.csv");
    seen.iter()
        .filter_map(|s| {
            let path = s.target.split('?').next().unwrap_or("");
            if path.ends_with(&format!("/{output}")) {
                Some((s.kind, true))
            } else if path.ends_with(&format!("/{input}")) {
                Some((s.kind, false))
            } else {
                None
            }
        })
        .collect()
}

/// Issue 14, the request pattern around an existing output, against Azurite, with the
/// proxy's record of each blob's requests:
/// - a first delivery whose output is already current (a duplicate message): one GET, the
///   `If-None-Match: *` Put Blob refused, one HEAD of the output, skipped, its ETag unchanged;
/// - a first delivery whose output is stale (made from another input version): the refused
///   Put Blob, a HEAD of the output, a HEAD of the input (still the version read), then the
///   Put Blob with If-Match on the stale output's ETag: replaced, current;
/// - a redelivery (dequeue count 2) whose output is current: the output HEAD right after
///   the first GET, before any work, and no Put Blob at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_outputs_are_settled_by_the_conditional_write_or_checked_on_redelivery() {
    use rollq::aggregate::Spec;
    use rollq::contract;
    use rollq::storage::{BlobPath, PutOptions};

    let az = Azurite::start();
    let conn = az.connect().await;
    let (queue, container) = fresh_queue_and_container(&conn).await;
    let prefix = unique_name("exist");
    let [current, stale, redelivered] =
        ["current", "stale", "redelivered"].map(|k| format!("{prefix}-{k}.csv"));
    let mut outputs = Vec::new();
    for (i, name) in [&current, &stale, &redelivered].into_iter().enumerate() {
        let body = seed_csv(40 + i as u64, ROWS);
        let input = BlobPath::new(&container, name.as_str());
        upload(&conn.blobs, &container, name, body.clone()).await;
        let etag = conn.blobs.properties(&input).await.unwrap().etag;
        // The stale output records another version of the input.
        let recorded = if name == &stale {
            rollq::storage::ETag("\"0x8D0000000000000\"".into())
        } else {
            etag
        };
        let out = contract::output_path(&input, None);
        let opts = PutOptions {
            metadata: contract::output_metadata(&input, &recorded, &Spec::default()),
            content_type: Some("text/csv".into()),
            ..Default::default()
        };
        conn.blobs
            .put(&out, expected_output(&body).into(), opts)
            .await
            .unwrap();
        let before = conn.blobs.properties(&out).await.unwrap().etag;
        outputs.push((input, out, before, expected_output(&body)));
    }
    // The redelivery: received once and let go (its lease lapses), so the worker's receive
    // is its second.
    queue.send(&redelivered).await.unwrap();
    let taken = queue.receive(1, Duration::from_secs(1)).await.unwrap();
    assert_eq!(taken.len(), 1);
    eventually("the first receive's lease lapsed", PATIENCE, || async {
        let peeked = queue.peek(1).await.unwrap();
        (!peeked.is_empty()).then_some(())
    })
    .await;
    queue.send(&current).await.unwrap();
    queue.send(&stale).await.unwrap();

    let blob_proxy = HttpProxy::start(az.blob_addr(), 41, Vec::new());
    let worker = WorkerProc::spawn_with(
        az.rollq_via(blob_proxy.addr(), az.queue_addr()),
        queue.name(),
        &container,
        &[],
    );
    eventually("two skipped, one completed", PATIENCE, || async {
        let m = worker.metrics().await;
        let get = |o: &str| sample(&m, "rollq_messages_total", &[("outcome", o)]).unwrap_or(0.0);
        (get("skipped") == 2.0 && get("completed") == 1.0).then_some(())
    })
    .await;
    let seen = blob_proxy.seen();
    let (get, head, put) = (Kind::BlobGet, Kind::Head, Kind::Other);

    assert_eq!(
        requests_for(&seen, &current),
        [(get, false), (put, true), (head, true)],
        "current output, first delivery"
    );
    assert_eq!(
        requests_for(&seen, &stale),
        [
            (get, false),
            (put, true),
            (head, true),
            (head, false),
            (put, true)
        ],
        "stale output"
    );
    assert_eq!(
        requests_for(&seen, &redelivered),
        [(get, false), (head, true)],
        "current output, redelivery"
    );
    for (i, (input, out, before, want)) in outputs.iter().enumerate() {
        let now = conn.blobs.properties(out).await.unwrap();
        let got = download(&conn.blobs, &container, &out.name).await.unwrap();
        assert_eq!(&got, want, "output {i}");
        let input_etag = conn.blobs.properties(input).await.unwrap().etag;
        assert!(
            contract::is_current(&now.metadata, input, &input_etag, &Spec::default()),
            "output {i} is current: {:?}",
            now.metadata
        );
        if input.name == stale {
            assert_ne!(&now.etag, before, "the stale output was replaced");
        } else {
            assert_eq!(&now.etag, before, "a current output is left as it is");
        }
    }
    assert!(
        worker
            .log()
            .matches("written by another replica or an earlier delivery")
            .count()
            == 1,
        "the duplicate took the conflict path"
    );
}

/// Issue 14: lease renewals are Update Message requests labelled `renew`, the op name the
/// error counter uses for them, not `update` (retries and releases). A slow input keeps one
/// job running through several renewals; every Update Message the queue proxy saw is one of
/// the worker's `renew` requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_are_counted_as_renew() {
    let az = Azurite::start();
    let conn = az.connect().await;
    let (queue, container) = fresh_queue_and_container(&conn).await;
    let body = seed_csv(50, 3000);
    let name = unique_name("renew") + ".csv";
    upload(&conn.blobs, &container, &name, body.clone()).await;
    queue.send(&name).await.unwrap();
    // About 5 s of download at this rate: renewals every second (half of 2 s).
    let rate = body.len() / 5;
    let queue_proxy = HttpProxy::start(az.queue_addr(), 51, Vec::new());
    let slow = crate::support::TcpProxy::throttled(az.blob_addr(), rate);
    let worker = WorkerProc::spawn_with(
        az.rollq_via(slow.addr(), queue_proxy.addr()),
        queue.name(),
        &container,
        &[
            "--visibility-timeout",
            "2s",
            "--download-block-size",
            "256KiB",
            "--download-parallel",
            "1",
        ],
    );
    eventually("the file completed", PATIENCE, || async {
        let m = worker.metrics().await;
        let done = sample(&m, "rollq_messages_total", &[("outcome", "completed")])?;
        (done == 1.0).then_some(())
    })
    .await;
    let m = worker.metrics().await;
    let updates = of_kind(&queue_proxy.seen(), Kind::Update);
    assert!(updates >= 2, "the job ran through renewals: {updates}");
    assert_eq!(
        requests(&m, Op::Renew.as_str()),
        updates,
        "each renewal is renew"
    );
    assert_eq!(
        requests(&m, Op::Update.as_str()),
        0,
        "no retry or release happened"
    );
}
