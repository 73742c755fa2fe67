//! `rollq worker` reading through a proxy that cuts blob GET responses short (issue 11,
//! "Reads"), or alters them: a read that delivers other bytes than the blob holds is retried as a platform
//! failure, nothing is committed while the fault lasts, and the message completes after.

use crate::support::HttpProxy;
use crate::support::http_proxy::{Action, Cut, Kind, Rule, Seen, When};
use crate::worker_support::*;

/// Runs one message through a worker whose blob traffic goes through `proxy`, with a
/// `--max-dequeue-count 1` that poisons at the first failure counted as an attempt: the
/// message must complete without any. Returns the worker's log and the proxy's record.
async fn run_behind(proxy_rules: Vec<Rule>, name: &str, body: Vec<u8>) -> (String, Vec<Seen>) {
    run_behind_with(proxy_rules, name, body, Md5::Stored).await
}

/// Whether the input blob carries a Content-MD5.
#[derive(Clone, Copy, PartialEq)]
enum Md5 {
    /// Put Blob: the service stores the body's MD5.
    Stored,
    /// Staged blocks committed without `x-ms-blob-content-md5`: the blob has none.
    None,
}

async fn run_behind_with(
    proxy_rules: Vec<Rule>,
    name: &str,
    body: Vec<u8>,
    md5: Md5,
) -> (String, Vec<Seen>) {
    let az = crate::support::Azurite::start();
    let conn = az.connect().await;
    let (queue, container) = fresh_queue_and_container(&conn).await;
    let proxy = HttpProxy::start(az.blob_addr(), 11, proxy_rules);
    let expected = expected_output(&body);
    match md5 {
        Md5::Stored => upload(&conn.blobs, &container, name, body).await,
        Md5::None => {
            let path = rollq::storage::BlobPath::new(&container, name);
            let mut up = conn
                .blobs
                .start_upload(&path, Default::default())
                .await
                .unwrap();
            up.stage(bytes::Bytes::from(body)).await.unwrap();
            up.commit().await.unwrap();
            let props = conn.blobs.properties(&path).await.unwrap();
            assert_eq!(props.content_md5, None, "the input must have no MD5");
        }
    }
    queue.send(name).await.unwrap();
    let mut worker = WorkerProc::spawn_with(
        az.rollq_via(proxy.addr(), az.queue_addr()),
        queue.name(),
        &container,
        &[
            "--exit-when-idle",
            "2s",
            "--max-dequeue-count",
            "1",
            "--retry-delay",
            "100ms",
            "--max-retry-delay",
            "400ms",
            // Small blocks: the output is staged while the input is read, so the commit
            // (Put Block List) is the one request that must wait for a good read.
            "--upload-block-size",
            "1KiB",
        ],
    );
    let status = worker.wait_exit(PATIENCE).await;
    let log = worker.log();
    assert!(status.success(), "exit {status}; log:\n{log}");
    let output = name.replace(".csv", "_aggregated.csv");
    let got = download(&conn.blobs, &container, &output).await;
    assert!(got.as_ref() == Some(&expected), "output missing or wrong");
    assert_queue_and_poison_empty(&conn, &queue).await;
    assert!(!log.contains("message poisoned"), "{log}");
    (log, proxy.seen())
}

/// How many retries the worker logged whose error contains `text`.
fn retries_with(log: &str, text: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("message will be retried") && l.contains(text))
        .count()
}

/// Every faulted GET came before the first Put Block List: nothing was committed while the
/// fault lasted. Returns how many GETs were faulted.
fn committed_only_after_the_faults(seen: &[Seen]) -> usize {
    let faulted: Vec<usize> = (0..seen.len())
        .filter(|&i| seen[i].kind == Kind::BlobGet && seen[i].action.is_some())
        .collect();
    let commits: Vec<usize> = (0..seen.len())
        .filter(|&i| seen[i].kind == Kind::PutBlockList)
        .collect();
    assert!(!faulted.is_empty(), "no GET was cut: {seen:?}");
    assert_eq!(commits.len(), 1, "one commit, after the faults: {seen:?}");
    assert!(
        commits[0] > *faulted.last().unwrap(),
        "committed while reads were cut: {seen:?}"
    );
    assert!(
        seen.iter().any(|s| s.kind == Kind::PutBlock),
        "the output was staged in blocks"
    );
    faulted.len()
}

/// The first two blob GETs come back as a valid response for a blob half the size: two
/// short reads (logged with expected and received bytes), then the third read completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_blob_gets_are_retried_and_commit_nothing_until_a_full_read() {
    let body = seed_csv(31, 6000);
    let len = body.len();
    let rules = vec![Rule {
        kind: Kind::BlobGet,
        when: When::FirstN(2),
        action: Action::ShortBody(Cut::Blob),
    }];
    let (log, seen) = run_behind(rules, "short.csv", body).await;
    assert_eq!(committed_only_after_the_faults(&seen), 2);
    // Issue 14: the size comes from the GET's own Content-Range, which the cut response
    // rewrites to agree with itself; the blob's MD5 (x-ms-blob-content-md5 on the same GET)
    // is what catches it. A blob without an MD5 gets its size from a HEAD instead.
    let text = format!("over {} bytes", len / 2);
    assert_eq!(
        retries_with(&log, "content-md5 mismatch"),
        2,
        "two MD5 failures in:\n{log}"
    );
    assert_eq!(retries_with(&log, &text), 2, "{text:?} twice in:\n{log}");
    assert_eq!(
        seen.iter().filter(|s| s.kind == Kind::BlobGet).count(),
        3,
        "one GET per read: two cut, one whole"
    );
}

/// Issue 14: the same cut GETs of a blob without a Content-MD5. The response's own
/// Content-Range agrees with its cut body, so only a second answer can tell: the worker takes
/// such a blob's size from a HEAD, and the count catches both short reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_gets_of_a_blob_without_md5_are_caught_by_the_size_from_a_head() {
    let body = seed_csv(34, 6000);
    let len = body.len();
    let rules = vec![Rule {
        kind: Kind::BlobGet,
        when: When::FirstN(2),
        action: Action::ShortBody(Cut::Blob),
    }];
    let (log, seen) = run_behind_with(rules, "nomd5.csv", body, Md5::None).await;
    assert_eq!(committed_only_after_the_faults(&seen), 2);
    let text = format!("short read: expected {len} bytes, received {}", len / 2);
    assert_eq!(retries_with(&log, &text), 2, "{text:?} twice in:\n{log}");
}

/// The first blob GET comes back as a valid but shorter range of the same blob. The SDK
/// plans the rest from that response and fetches it, but hands on the first range padded to
/// a full partition with zeros: more bytes than the blob holds, which the count catches (the
/// reducer would otherwise read NUL bytes as data). Retried, then complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_range_is_caught_as_a_long_read_and_retried() {
    let body = seed_csv(32, 6000);
    let len = body.len();
    let rules = vec![Rule {
        kind: Kind::BlobGet,
        when: When::Nth(1),
        action: Action::ShortBody(Cut::Range),
    }];
    let (log, seen) = run_behind(rules, "range.csv", body).await;
    assert_eq!(committed_only_after_the_faults(&seen), 1);
    let text = format!("long read: expected {len} bytes");
    assert_eq!(retries_with(&log, &text), 1, "{text:?} once in:\n{log}");
}

/// The first blob GET delivers the right number of bytes but one digit changed: the blob's
/// Content-MD5 (Azurite stores it at Put Blob) does not match, the read is retried, then
/// complete with the right output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn altered_bytes_fail_the_content_md5_and_are_retried() {
    let body = seed_csv(33, 6000);
    let rules = vec![Rule {
        kind: Kind::BlobGet,
        when: When::Nth(1),
        action: Action::CorruptBody,
    }];
    let (log, seen) = run_behind(rules, "altered.csv", body).await;
    assert_eq!(committed_only_after_the_faults(&seen), 1);
    assert_eq!(retries_with(&log, "content-md5 mismatch"), 1, "{log}");
}
