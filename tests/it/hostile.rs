//! Hostile inputs (issue 11): message texts and input files a producer could send on purpose
//! or by accident, each run through a real `rollq worker` against Azurite, each asserting one
//! outcome (completed with the right output, skipped, or poisoned with its reason) and never a
//! crash, a hang or unbounded memory. The kinds and outcomes are listed in
//! `docs/RELIABILITY.md` ("Hostile inputs").
//!
//! Most kinds share one worker per group (many messages, `--exit-when-idle`), which keeps CI
//! time low; every message's outcome is found by its message id in the worker's log (the
//! per-message span carries `message_id`), and poisoned ones are checked in the poison copy.

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rollq::storage::{BlobPath, Connection, PutOptions, Queue};
use rollq::worker::envelope::{Envelope, PoisonNote};

use crate::support::{Azurite, peak_rss_bytes};
use crate::worker_support::*;

const TOPIC_PREFIX: &str =
    "/subscriptions/0000/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts";

/// The output blob name for an input name: the contract's rule, never spelled out here.
fn output_of(name: &str) -> String {
    rollq::contract::output_name(name)
}

/// What one hostile message must end as.
enum Want {
    /// Completed: `container/output_of(blob)` holds `expected`.
    Completed {
        container: String,
        blob: String,
        expected: Vec<u8>,
    },
    /// Acknowledged without work and without a poison copy.
    Skipped,
    /// Poisoned with this reason label; the error (in the poison note, or the log line when
    /// the copy is verbatim because the envelope would not fit) contains `error_has`.
    Poisoned {
        reason: &'static str,
        error_has: &'static str,
    },
}

/// One kind: its name (named by a failing assertion), the message text, the outcome.
struct Case {
    kind: &'static str,
    text: String,
    want: Want,
}

impl Case {
    fn poisoned(kind: &'static str, text: String, reason: &'static str, has: &'static str) -> Case {
        Case {
            kind,
            text,
            want: Want::Poisoned {
                reason,
                error_has: has,
            },
        }
    }

    fn completed(
        kind: &'static str,
        text: String,
        container: &str,
        blob: &str,
        input: &[u8],
    ) -> Case {
        Case {
            kind,
            text,
            want: Want::Completed {
                container: container.into(),
                blob: blob.into(),
                expected: expected_output(input),
            },
        }
    }
}

/// Sends every case's text, runs one worker over the queue until it is idle, and checks each
/// case's outcome. `args` are extra worker flags.
async fn run_group(
    az: &Azurite,
    conn: &Connection,
    queue: &std::sync::Arc<dyn Queue>,
    container: &str,
    args: &[&str],
    cases: &[Case],
) -> String {
    let mut ids = Vec::new();
    for c in cases {
        let id = queue
            .send(&c.text)
            .await
            .unwrap_or_else(|e| panic!("{}: send ({} bytes): {e}", c.kind, c.text.len()));
        ids.push(id.0);
    }
    let mut all_args = vec!["--exit-when-idle", "2s", "--max-in-flight", "2"];
    all_args.extend_from_slice(args);
    let mut worker = WorkerProc::spawn(az, queue.name(), container, &all_args);
    let status = worker.wait_exit(PATIENCE).await;
    let log = worker.log();
    assert!(
        status.success(),
        "worker exit {status} (a crash?); log:\n{log}"
    );

    let poison = conn.queues.queue(&format!("{}-poison", queue.name()));
    let copies: Vec<String> = all_visible(&poison).await;
    let mut notes: HashMap<String, Option<PoisonNote>> = HashMap::new();
    for t in &copies {
        let e = Envelope::open(t);
        notes.insert(e.original, e.poison);
    }
    let want_poisoned = cases
        .iter()
        .filter(|c| matches!(c.want, Want::Poisoned { .. }))
        .count();
    assert_eq!(copies.len(), want_poisoned, "poison copies");

    for (c, id) in cases.iter().zip(&ids) {
        // The outcome line of this message (its span names the message id).
        let tag = format!("message_id={id}");
        let line = log
            .lines()
            .find(|l| l.contains(&tag) && l.contains("outcome="))
            .unwrap_or_else(|| panic!("{}: no outcome logged for {id}", c.kind));
        match &c.want {
            Want::Completed {
                container,
                blob,
                expected,
            } => {
                assert!(line.contains("message completed"), "{}: {line}", c.kind);
                let got = download(&conn.blobs, container, &output_of(blob)).await;
                assert!(
                    got.as_ref() == Some(expected),
                    "{}: output {container}/{} missing or wrong",
                    c.kind,
                    output_of(blob)
                );
            }
            Want::Skipped => {
                assert!(line.contains("message skipped"), "{}: {line}", c.kind);
                assert!(!notes.contains_key(&c.text), "{}: poisoned", c.kind);
            }
            Want::Poisoned { reason, error_has } => {
                assert!(line.contains("message poisoned"), "{}: {line}", c.kind);
                assert!(
                    line.contains(&format!("reason=\"{reason}\""))
                        || line.contains(&format!("reason={reason}")),
                    "{}: want reason {reason}: {line}",
                    c.kind
                );
                let note = notes.get(&c.text).unwrap_or_else(|| {
                    panic!("{}: no poison copy holds the original text", c.kind)
                });
                match note {
                    Some(n) => {
                        assert_eq!(n.reason, *reason, "{}: {n:?}", c.kind);
                        assert!(
                            n.error.contains(error_has),
                            "{}: want {error_has:?} in {:?}",
                            c.kind,
                            n.error
                        );
                    }
                    // Too long for the envelope: copied verbatim, the reason only in the log.
                    None => {
                        // The note adds well under 2 KiB (its error text is bounded by Echo).
                        let escaped = serde_json::to_string(&c.text).unwrap().len();
                        assert!(
                            escaped + 2048 > rollq::worker::envelope::MAX_ENVELOPE_BYTES,
                            "{}: verbatim copy of a short text",
                            c.kind
                        );
                        assert!(
                            line.contains(error_has),
                            "{}: want {error_has:?} in {line}",
                            c.kind
                        );
                    }
                }
            }
        }
    }
    assert_eq!(queue.approximate_count().await.unwrap(), 0, "queue drained");
    log
}

/// Every message in `queue` (peek shows at most 32 at a time: receive and hide them).
async fn all_visible(queue: &std::sync::Arc<dyn Queue>) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        let got = queue.receive(32, Duration::from_secs(600)).await.unwrap();
        if got.is_empty() {
            return out;
        }
        out.extend(got.into_iter().map(|m| m.text));
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

fn event_grid(
    account: &str,
    event_type: &str,
    container: &str,
    blob: &str,
    url_base: &str,
    len: u64,
) -> String {
    serde_json::json!({
        "topic": format!("{TOPIC_PREFIX}/{account}"),
        "subject": format!("/blobServices/default/containers/{container}/blobs/{blob}"),
        "eventType": event_type,
        "id": uuid::Uuid::new_v4().to_string(),
        "eventTime": "2026-12-01T10:00:00Z",
        "dataVersion": "",
        "metadataVersion": "1",
        "data": {
            "api": "PutBlob",
            "contentLength": len,
            "blobType": "BlockBlob",
            "url": format!("{url_base}/{container}/{blob}"),
        }
    })
    .to_string()
}

/// Uploads `len` bytes produced by `fill` in 8 MiB staged blocks, never holding the blob.
async fn upload_blocks(conn: &Connection, path: &BlobPath, len: usize, byte: u8) {
    let block = 8 << 20;
    let mut up = conn
        .blobs
        .start_upload(path, PutOptions::default())
        .await
        .unwrap();
    let mut left = len;
    while left > 0 {
        let n = left.min(block);
        up.stage(Bytes::from(vec![byte; n])).await.unwrap();
        left -= n;
    }
    up.commit().await.unwrap();
}

/// Message-level kinds: none of them reaches a blob except the ones meant to complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_messages() {
    let az = Azurite::start();
    let conn = az.connect().await;
    let (queue, c) = fresh_queue_and_container(&conn).await;
    let url = az.blob_endpoint();
    let mut rng = StdRng::seed_from_u64(11);
    let fine = seed_csv(3, 200);
    upload(&conn.blobs, &c, "fine.csv", fine.clone()).await;

    // 48 KiB of random bytes, base64-encoded: a 64 KiB text (the largest message there is;
    // raw bytes cannot travel in a queue message's XML).
    let random: Vec<u8> = (0..48 * 1024).map(|_| rng.random::<u8>()).collect();
    let random_b64 = b64(&random);
    assert_eq!(random_b64.len(), 64 * 1024);
    // 60 KB of random printable characters (multi-byte ones too).
    let alphabet: Vec<char> = "abcXYZ019 -_./%{}[]\"'\\<>&é温🌡".chars().collect();
    let mut random_text = String::new();
    while random_text.len() < 60_000 {
        random_text.push(alphabet[rng.random_range(0..alphabet.len())]);
    }
    // Deeply nested JSON, each about 60 KB.
    let nested_array = format!("{}{}", "[".repeat(30_000), "]".repeat(30_000));
    let nested_object = format!("{}1{}", "{\"a\":".repeat(10_000), "}".repeat(10_000));
    // 60 KB of JSON around a valid job: the padding is ignored and the job completes.
    let padded = serde_json::json!({"blob": "fine.csv", "pad": "p".repeat(60_000)}).to_string();
    let long_json_name = serde_json::json!({"blob": "n".repeat(60_000)}).to_string();
    // Base64 that decodes to bytes that are neither UTF-8 nor JSON: in auto mode it is a
    // (strange) blob name, which does not exist.
    let garbage_b64 = b64(b"\xff\xfe\x00\x01garbage!");

    let cases = vec![
        Case::poisoned(
            "64 KiB of random bytes (base64)",
            random_b64,
            "bad_message",
            "longer than 1024",
        ),
        Case::poisoned("60 KB of random text", random_text, "bad_message", ""),
        Case::poisoned(
            "JSON nested 30,000 arrays deep",
            nested_array,
            "bad_message",
            "invalid JSON",
        ),
        Case::poisoned(
            "JSON nested 10,000 objects deep",
            nested_object,
            "bad_message",
            "invalid JSON",
        ),
        Case::completed(
            "60 KB JSON around a valid job",
            padded,
            &c,
            "fine.csv",
            &fine,
        ),
        Case::poisoned(
            "60 KB JSON naming a 60,000-character blob",
            long_json_name,
            "bad_message",
            "longer than 1024",
        ),
        Case::poisoned(
            "Event Grid event for another account",
            event_grid(
                "someoneelse",
                "Microsoft.Storage.BlobCreated",
                &c,
                "fine.csv",
                "https://someoneelse.blob.core.windows.net",
                10,
            ),
            "refused",
            "someoneelse",
        ),
        Case::poisoned(
            "a container not allowed",
            serde_json::json!({"container": "secrets", "blob": "fine.csv"}).to_string(),
            "refused",
            "--allowed-containers",
        ),
        Case::poisoned(
            "a `..` name",
            "../fine.csv".into(),
            "bad_message",
            "\"..\" path segment",
        ),
        Case::poisoned(
            "a `%2e%2e` name in a URL",
            format!("{url}/{c}/%2e%2e/fine.csv"),
            "bad_message",
            "path segment",
        ),
        Case::poisoned(
            "a 1,025-character name",
            "x".repeat(1025),
            "bad_message",
            "longer than 1024",
        ),
        Case::poisoned(
            "base64 that decodes to garbage (auto)",
            garbage_b64,
            "input_not_found",
            "not found",
        ),
        Case {
            kind: "a BlobDeleted event",
            text: event_grid(
                "devstoreaccount1",
                "Microsoft.Storage.BlobDeleted",
                &c,
                "fine.csv",
                &url,
                10,
            ),
            want: Want::Skipped,
        },
        Case {
            kind: "a BlobCreated event with contentLength 0",
            text: event_grid(
                "devstoreaccount1",
                "Microsoft.Storage.BlobCreated",
                &c,
                "fine.csv",
                &url,
                0,
            ),
            want: Want::Skipped,
        },
    ];
    run_group(&az, &conn, &queue, &c, &[], &cases).await;

    // Under `--message-encoding base64` (Azure Functions' default), base64 of garbage is
    // refused as such; a valid base64 job still completes.
    upload(&conn.blobs, &c, "fine64.csv", fine.clone()).await;
    let q64 = conn.queues.queue(&crate::support::unique_name("wq"));
    q64.create_if_missing().await.unwrap();
    let cases = vec![
        Case::poisoned(
            "base64 that decodes to non-UTF-8 (base64 encoding)",
            b64(&random[..300]),
            "bad_message",
            "not base64 of UTF-8",
        ),
        Case::poisoned(
            "text that is not base64 (base64 encoding)",
            "fine.csv!".into(),
            "bad_message",
            "not base64",
        ),
        Case::poisoned(
            "base64 of truncated JSON (base64 encoding)",
            b64(b"{\"blob\": \"fine.csv\""),
            "bad_message",
            "invalid JSON",
        ),
        Case::completed(
            "base64 of a name (base64 encoding)",
            b64(b"fine64.csv"),
            &c,
            "fine64.csv",
            &fine,
        ),
    ];
    run_group(
        &az,
        &conn,
        &q64,
        &c,
        &["--message-encoding", "base64"],
        &cases,
    )
    .await;
}

/// A small valid CSV, distinct per `seed`.
fn small(seed: u64) -> Vec<u8> {
    seed_csv(seed, 150)
}

/// File-level kinds: each a blob named by a bare-name message (or a URL), one worker for all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_files() {
    let az = Azurite::start();
    let conn = az.connect().await;
    let (queue, c) = fresh_queue_and_container(&conn).await;
    let url = az.blob_endpoint();
    let mut blobs: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut cases = Vec::new();
    let header = "Datetime,Temperature\n";

    // 100 MB with no newline: the reader stops at --max-line-bytes (1 MiB), so the worker
    // reads a few MiB of it, never the whole blob. Uploaded in blocks.
    let started = Instant::now();
    upload_blocks(
        &conn,
        &BlobPath::new(&c, "no-newline.csv"),
        100_000_000,
        b'7',
    )
    .await;
    eprintln!("uploaded 100 MB to Azurite in {:?}", started.elapsed());
    cases.push(Case::poisoned(
        "100 MB with no newline",
        "no-newline.csv".into(),
        "invalid_input",
        "line 1 is longer than 1048576 bytes",
    ));

    let long_row = format!("{header}2024-01-01 00:00:00,{}\n", "1".repeat(1 << 20));
    blobs.push(("long-line.csv", long_row.into_bytes()));
    cases.push(Case::poisoned(
        "a line over --max-line-bytes",
        "long-line.csv".into(),
        "invalid_input",
        "line 2 is longer than",
    ));

    let mut wide = String::from("Datetime");
    for i in 0..100_000 {
        wide.push_str(&format!(",c{i}"));
    }
    wide.push('\n');
    for (t, v) in [
        ("2024-01-01 00:10:00", "1"),
        ("2024-01-01 00:20:00", "2"),
        ("2024-01-01 01:05:00", "3"),
    ] {
        wide.push_str(t);
        for _ in 0..100_000 {
            wide.push(',');
            wide.push_str(v);
        }
        wide.push('\n');
    }
    let wide = wide.into_bytes();
    cases.push(Case::completed(
        "100,000 columns",
        "wide.csv".into(),
        &c,
        "wide.csv",
        &wide,
    ));
    blobs.push(("wide.csv", wide));

    // 50,000 distinct names and one repeated at the end: found, and the error stays short
    // (it lists 20 names), so the poison copy keeps its envelope.
    let mut dup = String::from("Datetime");
    for i in 0..50_000 {
        dup.push_str(&format!(",c{i}"));
    }
    dup.push_str(",c7\n2024-01-01 00:00:00");
    dup.push_str(&",1".repeat(50_001));
    dup.push('\n');
    blobs.push(("dup.csv", dup.into_bytes()));
    cases.push(Case::poisoned(
        "a header with duplicate column names",
        "dup.csv".into(),
        "invalid_input",
        "names column \"c7\" twice",
    ));

    // Years 1 and 9999, in order and out of order: both exceed --max-buckets (the span).
    blobs.push((
        "years.csv",
        b"Datetime,T\n0001-01-01 00:00:00,1\n9999-12-31 23:00:00,2\n".to_vec(),
    ));
    cases.push(Case::poisoned(
        "years 1 to 9999",
        "years.csv".into(),
        "invalid_input",
        "--max-buckets 1000000",
    ));
    blobs.push((
        "years-rev.csv",
        b"Datetime,T\n9999-12-31 23:00:00,2\n0001-01-01 00:00:00,1\n".to_vec(),
    ));
    cases.push(Case::poisoned(
        "years 9999 then 1 (out of order)",
        "years-rev.csv".into(),
        "invalid_input",
        "--max-buckets 1000000",
    ));

    blobs.push((
        "latin1-header.csv",
        b"Datetime,Temp \xb0C\n2024-01-01 00:00:00,1\n".to_vec(),
    ));
    cases.push(Case::poisoned(
        "non-UTF-8 bytes in the header",
        "latin1-header.csv".into(),
        "invalid_input",
        "not valid UTF-8",
    ));
    blobs.push((
        "latin1-value.csv",
        b"Datetime,T\n2024-01-01 00:00:00,1\n2024-01-01 00:01:00,2\xff\n".to_vec(),
    ));
    cases.push(Case::poisoned(
        "non-UTF-8 bytes in a value",
        "latin1-value.csv".into(),
        "invalid_input",
        "line 3",
    ));
    blobs.push((
        "nul.csv",
        b"Datetime,T\n2024-01-01 00:00:00,1\x002\n".to_vec(),
    ));
    cases.push(Case::poisoned(
        "NUL bytes",
        "nul.csv".into(),
        "invalid_input",
        "line 2",
    ));
    blobs.push((
        "mid-bom.csv",
        b"Datetime,T\n2024-01-01 00:00:00,1\n\xef\xbb\xbf2024-01-01 00:01:00,2\n".to_vec(),
    ));
    cases.push(Case::poisoned(
        "a BOM in the middle of the file",
        "mid-bom.csv".into(),
        "invalid_input",
        "line 3",
    ));

    let inf =
        b"Datetime,T\n2024-01-01 00:00:00,1\n2024-01-01 00:01:00,1e400\n2024-01-01 01:00:00,2\n"
            .to_vec();
    cases.push(Case::completed(
        "1e400",
        "inf.csv".into(),
        &c,
        "inf.csv",
        &inf,
    ));
    blobs.push(("inf.csv", inf));

    blobs.push(("empty.csv", Vec::new()));
    cases.push(Case::poisoned(
        "an empty blob",
        "empty.csv".into(),
        "invalid_input",
        "the input is empty",
    ));

    let plain = small(4);
    blobs.push(("gzip-named.csv", gzip(&plain)));
    cases.push(Case::poisoned(
        "a gzip file named .csv",
        "gzip-named.csv".into(),
        "invalid_input",
        "not valid UTF-8",
    ));
    let gz = gzip(&seed_csv(5, 5_000));
    blobs.push(("truncated.csv.gz", gz[..gz.len() / 2].to_vec()));
    cases.push(Case::poisoned(
        "a truncated .gz",
        "truncated.csv.gz".into(),
        "invalid_input",
        "gzip",
    ));

    // A .gz that expands over 1,000-fold: 80 MB of rows padded with spaces (trimmed, as
    // around any value), as concatenated gzip members (one compressed row, repeated), so the
    // test compresses only a few rows. The output is that of the same rows unpadded.
    let pad = " ".repeat(1_000_000);
    let mut bomb = gzip(header.as_bytes());
    let mut unpadded = String::from(header);
    let mut expanded = header.len();
    for h in 0..4 {
        let row = format!("2024-01-01 0{h}:30:00,2{h}.5");
        let padded = format!("{row}{pad}\n");
        // Five rows a member, the member five times: 25 rows an hour.
        let member = gzip(padded.repeat(5).as_bytes());
        for _ in 0..5 {
            bomb.extend_from_slice(&member);
            expanded += 5 * padded.len();
        }
        for _ in 0..25 {
            unpadded.push_str(&row);
            unpadded.push('\n');
        }
    }
    assert!(
        expanded / bomb.len() >= 1000,
        "ratio {}",
        expanded / bomb.len()
    );
    cases.push(Case::completed(
        "a .gz that expands 1,000-fold",
        "bomb.csv.gz".into(),
        &c,
        "bomb.csv.gz",
        unpadded.as_bytes(),
    ));
    blobs.push(("bomb.csv.gz", bomb));

    // Names: a literal `%2F` (a bare name is not decoded), a `%2F` in a URL (decoded: the
    // blob `dir/url.csv`), unicode.
    let pct = small(6);
    cases.push(Case::completed(
        "a `%2F` in a bare name",
        "dir%2Fbare.csv".into(),
        &c,
        "dir%2Fbare.csv",
        &pct,
    ));
    blobs.push(("dir%2Fbare.csv", pct));
    let pct_url = small(7);
    cases.push(Case::completed(
        "a `%2F` in a URL",
        format!("{url}/{c}/dir%2Furl.csv"),
        &c,
        "dir/url.csv",
        &pct_url,
    ));
    blobs.push(("dir/url.csv", pct_url));
    let uni = small(8);
    let uni_name = "données/温度 🌡 Ω.csv";
    cases.push(Case::completed(
        "a unicode name",
        uni_name.into(),
        &c,
        uni_name,
        &uni,
    ));
    blobs.push((uni_name, uni));

    for (name, body) in blobs {
        upload(&conn.blobs, &c, name, body).await;
    }
    let started = Instant::now();
    run_group(&az, &conn, &queue, &c, &[], &cases).await;
    eprintln!("{} file kinds in {:?}", cases.len(), started.elapsed());
}

/// `rows` rows, one for each of `rows` distinct hours from 2020-01-01, in an order shuffled by
/// `seed`: every row opens a new bucket, and the rows are out of order (holding mode).
fn shuffled_hours(rows: usize, seed: u64) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut hours: Vec<usize> = (0..rows).collect();
    for i in (1..hours.len()).rev() {
        hours.swap(i, rng.random_range(0..=i));
    }
    let start = chrono::NaiveDate::from_ymd_opt(2020, 1, 1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap();
    let mut out = String::from("Datetime,Temperature\n");
    for h in hours {
        let t = start + chrono::Duration::hours(h as i64);
        out.push_str(&format!("{},{}.5\n", t.format("%Y-%m-%d %H:%M:%S"), h % 40));
    }
    out.into_bytes()
}

/// The held-bucket limit: with `--max-held-cells 1000` (a page holds 64 one-column buckets,
/// so at most 15 pages), 5,000 distinct hours in random order are poisoned naming the flag,
/// while 500 (8 pages) complete with the output of the default settings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_a_new_hour_in_random_order_meets_max_held_cells() {
    let az = Azurite::start();
    let conn = az.connect().await;
    let (queue, c) = fresh_queue_and_container(&conn).await;
    let many = shuffled_hours(5_000, 1);
    let few = shuffled_hours(500, 2);
    let cases = vec![
        Case::poisoned(
            "every row a new hour, random order (over --max-held-cells)",
            "many-hours.csv".into(),
            "invalid_input",
            "more than --max-held-cells 1000",
        ),
        Case::completed(
            "every row a new hour, random order (within --max-held-cells)",
            "few-hours.csv".into(),
            &c,
            "few-hours.csv",
            &few,
        ),
    ];
    upload(&conn.blobs, &c, "many-hours.csv", many).await;
    upload(&conn.blobs, &c, "few-hours.csv", few).await;
    run_group(
        &az,
        &conn,
        &queue,
        &c,
        &["--max-held-cells", "1000"],
        &cases,
    )
    .await;
}

/// The typo-year file of issue 11: 2,000 rows × 8 columns a minute apart in 2017, one of
/// them (in the middle) in 2107. The span is 90 years of hours (under `--max-buckets`), the
/// rows are out of order, and holding mode keeps only the pages that hold rows.
fn typo_year_file() -> Vec<u8> {
    let start = chrono::NaiveDate::from_ymd_opt(2017, 3, 1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap();
    let mut out = String::from("Datetime,a,b,c,d,e,f,g\n");
    for i in 0..2_000i64 {
        let t = start + chrono::Duration::minutes(i);
        let mut when = t.format("%Y-%m-%d %H:%M:%S").to_string();
        if i == 1_000 {
            when.replace_range(0..4, "2107");
        }
        out.push_str(&when);
        for col in 0..7 {
            out.push_str(&format!(",{}.{}", (i + col) % 50, col));
        }
        out.push('\n');
    }
    out.into_bytes()
}

/// Issue 11's pinned outcome in the worker: the typo-year file completes, correct, with the
/// worker's peak RSS growing less than 64 MiB over its baseline, while a normal message in
/// the same process (`--max-in-flight 2`) completes too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typo_year_file_in_the_worker_is_bounded_and_a_co_resident_message_completes() {
    if peak_rss_bytes(std::process::id()).is_none() {
        eprintln!("skipped: /proc/<pid>/status has no VmHWM on this system");
        return;
    }
    let az = Azurite::start();
    let conn = az.connect().await;
    let (queue, c) = fresh_queue_and_container(&conn).await;
    let typo = typo_year_file();
    let normal = seed_csv(9, 30_000);
    upload(&conn.blobs, &c, "warm-up.csv", small(1)).await;
    upload(&conn.blobs, &c, "typo.csv", typo.clone()).await;
    upload(&conn.blobs, &c, "normal.csv", normal.clone()).await;

    let worker = WorkerProc::spawn(&az, queue.name(), &c, &["--max-in-flight", "2"]);
    let completed = |n: f64| {
        let w = &worker;
        async move {
            let m = w.metrics().await;
            (sample(&m, "rollq_messages_total", &[("outcome", "completed")]) == Some(n))
                .then_some(())
        }
    };
    // The baseline: the worker after one small message (buffers allocated, code paged in).
    queue.send("warm-up.csv").await.unwrap();
    eventually("warm-up.csv completed", PATIENCE, || completed(1.0)).await;
    let baseline = peak_rss_bytes(worker.pid()).unwrap();
    queue.send("typo.csv").await.unwrap();
    queue.send("normal.csv").await.unwrap();
    eventually("typo.csv and normal.csv completed", PATIENCE, || {
        completed(3.0)
    })
    .await;
    let peak = peak_rss_bytes(worker.pid()).unwrap();
    let growth = peak.saturating_sub(baseline);
    eprintln!(
        "typo-year file in the worker: peak RSS {} MiB, baseline {} MiB (+{} MiB)",
        peak >> 20,
        baseline >> 20,
        growth >> 20
    );
    assert!(growth < 64 << 20, "peak RSS grew by {} MiB", growth >> 20);
    for (name, input) in [("typo.csv", &typo), ("normal.csv", &normal)] {
        let got = download(&conn.blobs, &c, &output_of(name)).await;
        assert!(
            got == Some(expected_output(input)),
            "{name}: output missing or wrong"
        );
    }
    assert_queue_and_poison_empty(&conn, &queue).await;
}

/// A blob replaced while the worker reads it (through a throttled link, so the read takes
/// seconds): the read is pinned to the ETag it started with, so the next range fails
/// (412), the attempt is retried, and the retry rolls up the new version, never a mix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_replaced_mid_read_is_retried_and_rolls_up_the_new_version() {
    let az = Azurite::start();
    let conn = az.connect().await;
    let (queue, c) = fresh_queue_and_container(&conn).await;
    let old = seed_csv(1, 120_000); // about 3 MB: about 6 s at 512 KB/s
    let new = seed_csv(2, 5_000);
    upload(&conn.blobs, &c, "moving.csv", old).await;
    queue.send("moving.csv").await.unwrap();
    let (_slow, worker) =
        spawn_slow_worker(&az, 512 * 1024, queue.name(), &c, &["--retry-delay", "1s"]);
    // Replace the blob once the worker has read some of it, not all.
    eventually("the worker reading moving.csv", PATIENCE, || async {
        let m = worker.metrics().await;
        sample(&m, "rollq_bytes_read_total", &[])
            .filter(|&b| b > 0.0)
            .map(|_| ())
    })
    .await;
    upload(&conn.blobs, &c, "moving.csv", new.clone()).await;
    eventually("moving.csv completed", PATIENCE, || async {
        let m = worker.metrics().await;
        (sample(&m, "rollq_messages_total", &[("outcome", "completed")]) == Some(1.0)).then_some(())
    })
    .await;
    let m = worker.metrics().await;
    assert_eq!(
        sample(&m, "rollq_messages_total", &[("outcome", "retried")]),
        Some(1.0),
        "one retried attempt; log:\n{}",
        worker.log()
    );
    let log = worker.log();
    assert!(
        log.lines()
            .any(|l| l.contains("message will be retried") && l.contains("HTTP 412")),
        "the retry was the pinned read's 412; log:\n{log}"
    );
    let got = download(&conn.blobs, &c, &output_of("moving.csv")).await;
    assert!(
        got == Some(expected_output(&new)),
        "the output is the new version's"
    );
    assert_queue_and_poison_empty(&conn, &queue).await;
}
