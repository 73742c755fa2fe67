//! `rollq submit`, `backfill`, `queue stats` and `poison list|requeue`, run as the built
//! binary against Azurite with the connection string in the environment.

use std::path::Path;

use std::time::Duration;

use bytes::Bytes;
use rollq::aggregate::Spec;
use rollq::contract;
use rollq::storage::{BlobPath, ErrorKind, PutOptions, poison_queue_name};

use crate::support::{
    Azurite, azurite::connection_string_for, md5, peek_texts, run_err, run_ok, unique_name,
};

fn write(dir: &Path, rel: &str, data: &[u8]) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

#[tokio::test]
async fn submit_uploads_enqueues_and_reruns_skip_identical_blobs() {
    let az = Azurite::start();
    let conn = az.connect().await;
    let (c, q) = (unique_name("in"), unique_name("jobs"));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let small = b"time,temperature1\n2024-01-01 00:00:00,1.5\n".to_vec();
    // Larger than one Put Blob (8 MiB): goes up as staged blocks with its MD5 set at commit.
    let big: Vec<u8> = (0..(9 << 20) + 7)
        .map(|i: u32| b'0' + (i % 10) as u8)
        .collect();
    write(d, "a.csv", &small);
    write(d, "sub/b.csv", b"t,v\n");
    write(d, "sub/c.csv.gz", b"not really gzip");
    write(d, "big.csv", &big);
    write(d, "skip.txt", b"ignored");
    write(d, "a_aggregated.csv", b"an output");

    let submit = || {
        az.rollq()
            .args([
                "submit",
                "--container",
                &c,
                "--queue",
                &q,
                "--prefix",
                "in/",
            ])
            .arg(d)
            .output()
            .unwrap()
    };
    let (stdout, stderr) = run_ok(submit());
    assert!(
        stdout.contains("uploaded 4, skipped 0 (identical), enqueued 4"),
        "{stdout}"
    );
    // Not a terminal: plain log lines, one per file, instead of a progress bar.
    for name in ["in/a.csv", "in/big.csv", "in/sub/b.csv", "in/sub/c.csv.gz"] {
        assert!(stderr.contains(name), "{name} not logged: {stderr}");
    }

    let props = conn
        .blobs
        .properties(&BlobPath::new(&c, "in/big.csv"))
        .await
        .unwrap();
    assert_eq!(props.size, big.len() as u64);
    assert_eq!(props.content_md5, Some(md5(&big)));
    let props = conn
        .blobs
        .properties(&BlobPath::new(&c, "in/a.csv"))
        .await
        .unwrap();
    assert_eq!(props.content_md5, Some(md5(&small)));
    assert_eq!(conn.blobs.list(&c, "").await.unwrap().len(), 4);

    let queue = conn.queues.queue(&q);
    let mut texts = peek_texts(&queue).await;
    texts.sort();
    assert_eq!(
        texts,
        ["in/a.csv", "in/big.csv", "in/sub/b.csv", "in/sub/c.csv.gz"]
    );

    // Re-run: nothing uploaded, every message sent again.
    let etag_before = conn
        .blobs
        .properties(&BlobPath::new(&c, "in/big.csv"))
        .await
        .unwrap()
        .etag;
    let (stdout, _) = run_ok(submit());
    assert!(
        stdout.contains("uploaded 0, skipped 4 (identical), enqueued 4"),
        "{stdout}"
    );
    let etag_after = conn
        .blobs
        .properties(&BlobPath::new(&c, "in/big.csv"))
        .await
        .unwrap()
        .etag;
    assert_eq!(etag_before, etag_after, "an identical blob was rewritten");
    assert_eq!(queue.approximate_count().await.unwrap(), 8);

    // A changed file (same length, other bytes) is uploaded again.
    let mut changed = small.clone();
    changed[0] = b'T';
    write(d, "a.csv", &changed);
    let (stdout, _) = run_ok(submit());
    assert!(
        stdout.contains("uploaded 1, skipped 3 (identical), enqueued 4"),
        "{stdout}"
    );
}

#[tokio::test]
async fn submit_json_and_base64_message_formats() {
    use base64::Engine as _;
    let az = Azurite::start();
    let conn = az.connect().await;
    let (c, q) = (unique_name("fmt"), unique_name("fmt"));
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "temperature1.csv", b"t,v\n");
    let file = dir.path().join("temperature1.csv");

    run_ok(
        az.rollq()
            .args(["submit", "--container", &c, "--queue", &q])
            .args(["--message-format", "json"])
            .arg(&file)
            .output()
            .unwrap(),
    );
    run_ok(
        az.rollq()
            .args(["submit", "--container", &c, "--queue", &q, "--base64"])
            .args(["--message-format", "json"])
            .arg(&file)
            .output()
            .unwrap(),
    );
    run_ok(
        az.rollq()
            .args(["submit", "--container", &c, "--queue", &q, "--base64"])
            .arg(&file)
            .output()
            .unwrap(),
    );
    let texts = peek_texts(&conn.queues.queue(&q)).await;
    assert_eq!(texts.len(), 3);
    let json: serde_json::Value = serde_json::from_str(&texts[0]).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"container": c, "blob": "temperature1.csv"})
    );
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(&texts[1])
        .unwrap();
    let json2: serde_json::Value = serde_json::from_slice(&decoded).unwrap();
    assert_eq!(json2, json);
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(&texts[2])
        .unwrap();
    assert_eq!(decoded, b"temperature1.csv");
}

#[tokio::test]
async fn submit_bad_input_fails_clearly_and_changes_nothing() {
    let az = Azurite::start();
    let conn = az.connect().await;
    let (c, q) = (unique_name("bad"), unique_name("bad"));
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "ok.csv", b"t,v\n");

    let stderr = run_err(
        &az.rollq()
            .args(["submit", "--container", &c, "--queue", &q])
            .arg(dir.path().join("ok.csv"))
            .arg(dir.path().join("missing.csv"))
            .output()
            .unwrap(),
    );
    assert!(stderr.contains("missing.csv"), "{stderr}");
    // Checked before any request: neither the container nor the queue was created.
    assert!(!conn.blobs.container_exists(&c).await.unwrap());
    assert_eq!(
        conn.queues
            .queue(&q)
            .approximate_count()
            .await
            .unwrap_err()
            .kind,
        ErrorKind::NotFound
    );

    let stderr = run_err(
        &az.rollq()
            .args(["submit", "--container", &c, "--queue", "Bad_Queue"])
            .arg(dir.path())
            .output()
            .unwrap(),
    );
    assert!(
        stderr.contains("invalid queue name \"Bad_Queue\""),
        "{stderr}"
    );
}

#[tokio::test]
async fn submit_with_a_wrong_key_says_what_to_check_without_the_key() {
    let az = Azurite::start();
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.csv", b"t,v\n");
    let wrong = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktd3Jvbmcta2V5LXdyb25nLWtleQ==";
    let out = az
        .rollq()
        .env(
            "AZURE_STORAGE_CONNECTION_STRING",
            connection_string_for(&az.blob_endpoint(), &az.queue_endpoint(), wrong),
        )
        .args(["submit", "--container", "wrongkey", "--queue", "wrongkey"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = run_err(&out);
    let line = stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .expect("an error line");
    for needle in [
        "auth",
        "devstoreaccount1",
        &az.blob_endpoint(),
        "account key",
        "check",
    ] {
        assert!(line.contains(needle), "{needle:?} missing: {line}");
    }
    assert!(
        !stderr.contains(wrong) && !stderr.contains(&wrong[..16]),
        "{stderr}"
    );
}

#[tokio::test]
async fn backfill_enqueues_inputs_without_a_current_output() {
    let az = Azurite::start();
    let conn = az.connect().await;
    let (c, q) = (unique_name("bf"), unique_name("bf"));
    let blobs = &conn.blobs;
    blobs.create_container_if_missing(&c).await.unwrap();
    let put = |name: &str, meta: Vec<(String, String)>| {
        let path = BlobPath::new(&c, name);
        async move {
            blobs
                .put(
                    &path,
                    Bytes::from_static(b"t,v\n"),
                    PutOptions {
                        metadata: meta,
                        ..Default::default()
                    },
                )
                .await
                .unwrap()
        }
    };
    let a = put("2024/a.csv", vec![]).await;
    put("2024/b.csv", vec![]).await;
    put("2024/c.csv", vec![]).await;
    put("other/d.csv", vec![]).await;
    put("2024/notes.txt", vec![]).await;
    // a has a current output (the worker's metadata for this version of a, default options);
    // b's output was made from an older version of b; c's output carries no rollq metadata,
    // so nothing says it is current.
    let spec = Spec::default();
    let meta = |name: &str, etag: &rollq::storage::ETag| {
        contract::output_metadata(&BlobPath::new(&c, name), etag, &spec)
    };
    put("2024/a_aggregated.csv", meta("2024/a.csv", &a)).await;
    let old = rollq::storage::ETag("\"0x8D0000000000000\"".into());
    put("2024/b_aggregated.csv", meta("2024/b.csv", &old)).await;
    put("2024/c_aggregated.csv", vec![]).await;

    let (stdout, _) = az.rollq_ok(&[
        "backfill",
        "--container",
        &c,
        "--queue",
        &q,
        "--prefix",
        "2024/",
        "--dry-run",
    ]);
    assert!(stdout.contains("would enqueue 2 of 3 inputs"), "{stdout}");
    assert_eq!(
        conn.queues
            .queue(&q)
            .approximate_count()
            .await
            .unwrap_err()
            .kind,
        ErrorKind::NotFound,
        "a dry run sends nothing"
    );

    let (stdout, _) = az.rollq_ok(&[
        "backfill",
        "--container",
        &c,
        "--queue",
        &q,
        "--prefix",
        "2024/",
    ]);
    assert!(
        stdout.contains("enqueued 2 of 3 inputs") && stdout.contains("1 already have"),
        "{stdout}"
    );
    let mut texts = peek_texts(&conn.queues.queue(&q)).await;
    texts.sort();
    assert_eq!(texts, ["2024/b.csv", "2024/c.csv"]);
}

/// `backfill` judges "current" exactly as the worker does, under the same reducer options
/// (flags or `ROLLQ_*`): after a worker rolls everything up with non-default options,
/// `backfill` with those options enqueues nothing; with other options, everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_and_the_worker_agree_on_outputs_made_with_non_default_options() {
    use crate::worker_support::{WorkerProc, seed_csv, upload};
    let az = Azurite::start();
    let conn = az.connect().await;
    let (c, q) = (unique_name("agree"), unique_name("agree"));
    conn.blobs.create_container_if_missing(&c).await.unwrap();
    let queue = conn.queues.queue(&q);
    queue.create_if_missing().await.unwrap();
    for i in 1..=3u64 {
        let name = format!("t{i}.csv");
        upload(&conn.blobs, &c, &name, seed_csv(i, 3000)).await;
        queue.send(&name).await.unwrap();
    }
    let options = [
        "--bucket",
        "1d",
        "--max-bad-rows",
        "2",
        "--max-buckets",
        "5000",
    ];
    let mut args = vec!["--exit-when-idle", "2s"];
    args.extend(options);
    let mut worker = WorkerProc::spawn(&az, &q, &c, &args);
    let status = worker.wait_exit(Duration::from_secs(120)).await;
    assert!(
        status.success(),
        "worker exit {status}; log:\n{}",
        worker.log()
    );
    for i in 1..=3 {
        let out = BlobPath::new(&c, format!("t{i}_aggregated.csv"));
        conn.blobs
            .properties(&out)
            .await
            .expect("the worker wrote it");
    }

    let backfill = |extra: &[&str], env: &[(&str, &str)]| {
        let mut cmd = az.rollq();
        cmd.args(["backfill", "--container", &c, "--queue", &q, "--dry-run"])
            .args(extra);
        for (k, v) in env {
            cmd.env(k, v);
        }
        run_ok(cmd.output().unwrap()).0
    };
    // The worker's options as flags, and as environment variables; a raised limit is not an
    // output option, so it does not make outputs stale.
    let out = backfill(&options, &[]);
    assert!(out.contains("would enqueue 0 of 3"), "{out}");
    let out = backfill(
        &["--max-buckets", "9000"],
        &[("ROLLQ_BUCKET", "1d"), ("ROLLQ_MAX_BAD_ROWS", "2")],
    );
    assert!(out.contains("would enqueue 0 of 3"), "{out}");
    // Default options are not what the outputs were made with.
    let out = backfill(&[], &[]);
    assert!(out.contains("would enqueue 3 of 3"), "{out}");
    // A replaced input needs work again; the others stay current.
    upload(&conn.blobs, &c, "t2.csv", seed_csv(9, 3000)).await;
    let out = backfill(&options, &[]);
    assert!(out.contains("would enqueue 1 of 3"), "{out}");
    assert!(out.contains("would enqueue t2.csv"), "{out}");
}

#[tokio::test]
async fn queue_stats_and_poison_list_and_requeue() {
    let az = Azurite::start();
    let conn = az.connect().await;
    let q = unique_name("tools");
    let main = conn.queues.queue(&q);
    let poison = conn.queues.queue(&poison_queue_name(&q));

    // Before anything was poisoned the poison queue may not exist.
    main.create_if_missing().await.unwrap();
    main.send("m1").await.unwrap();
    let (stdout, _) = az.rollq_ok(&["queue", "stats", "--queue", &q]);
    assert!(stdout.contains("approximate_messages: 1\n"), "{stdout}");
    assert!(stdout.contains("visible_messages: 1 "), "{stdout}");
    assert!(
        stdout.contains("poison_approximate_messages: 0 (queue does not exist)"),
        "{stdout}"
    );
    let (stdout, _) = az.rollq_ok(&["poison", "list", "--queue", &q]);
    assert!(stdout.contains("does not exist"), "{stdout}");

    poison.create_if_missing().await.unwrap();
    poison.send("bad/one.csv").await.unwrap();
    poison
        .send("{\"container\":\"c\",\n\"blob\":\"two.csv\"}")
        .await
        .unwrap();
    let leased = main
        .receive(1, std::time::Duration::from_secs(300))
        .await
        .unwrap();
    assert_eq!(leased.len(), 1);

    let (stdout, _) = az.rollq_ok(&["queue", "stats", "--queue", &q]);
    assert!(stdout.contains("approximate_messages: 1\n"), "{stdout}");
    assert!(
        stdout.contains("visible_messages: 0 "),
        "invisible not visible: {stdout}"
    );
    assert!(
        stdout.contains("poison_approximate_messages: 2\n"),
        "{stdout}"
    );

    let (stdout, _) = az.rollq_ok(&["poison", "list", "--queue", &q]);
    assert!(stdout.contains("2 message(s)"), "{stdout}");
    assert!(stdout.contains("\"bad/one.csv\""), "{stdout}");
    assert!(stdout.contains(r#"\"blob\":\"two.csv\""#), "{stdout}");
    assert_eq!(stdout.lines().count(), 3, "one line per message: {stdout}");
    // Listing changes nothing.
    assert_eq!(poison.peek(32).await.unwrap().len(), 2);

    let (stdout, _) = az.rollq_ok(&["poison", "requeue", "--queue", &q]);
    assert!(stdout.contains("requeued 2 message(s)"), "{stdout}");
    assert_eq!(poison.approximate_count().await.unwrap(), 0);
    let mut texts = peek_texts(&main).await;
    texts.sort();
    assert_eq!(
        texts,
        [
            "bad/one.csv",
            "{\"container\":\"c\",\n\"blob\":\"two.csv\"}"
        ],
        "bodies verbatim"
    );
}

#[tokio::test]
async fn trace_logs_carry_no_secrets() {
    let az = Azurite::start();
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.csv", b"t,v\n");
    let (c, q) = (unique_name("logs"), unique_name("logs"));

    // Shared Key: the key never travels, and the per-request signature is not logged.
    let out = az
        .rollq()
        .env("RUST_LOG", "trace")
        .args(["submit", "--container", &c, "--queue", &q])
        .arg(dir.path())
        .output()
        .unwrap();
    let (_, stderr) = run_ok(out);
    assert!(stderr.contains("a.csv"), "the run was logged: {stderr}");
    let key = rollq::storage::connection::DEV_KEY;
    assert!(
        !stderr.contains(key) && !stderr.contains(&key[..16]),
        "key in logs"
    );
    assert!(
        !stderr.contains("SharedKey devstoreaccount1:"),
        "signature in logs"
    );
}

#[test]
fn help_never_shows_the_connection_string() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rollq"))
        .env(
            "AZURE_STORAGE_CONNECTION_STRING",
            "AccountName=a1b;AccountKey=SECRETVALUE1",
        )
        .args(["submit", "--help"])
        .output()
        .unwrap();
    let (stdout, _) = run_ok(out);
    assert!(
        stdout.contains("AZURE_STORAGE_CONNECTION_STRING"),
        "{stdout}"
    );
    assert!(!stdout.contains("SECRETVALUE1"), "{stdout}");
}
