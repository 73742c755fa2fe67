//! `rollq queue send|create` and `rollq blob list|get|create-container`, run as the built
//! binary against Azurite with the connection string in the environment.

use std::io::{Read, Write};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rollq::storage::{BlobPath, ErrorKind, PutOptions, poison_queue_name};

use crate::support::{
    Azurite, ChildGuard, TcpProxy, peak_rss_bytes, run_err, run_ok, unique_name, upload_patterned,
};

/// Sorted file names in a directory.
fn dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Bytes that differ from position to position, so a reordered or dropped range shows.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

#[tokio::test]
async fn queue_send_sends_texts_verbatim_in_order_and_prints_their_ids() {
    let az = Azurite::start();
    let conn = az.connect().await;
    let q = unique_name("send");
    // An Event Grid-shaped payload: quotes, markup characters and non-ASCII survive as given.
    let event = r#"[{"eventType":"Microsoft.Storage.BlobCreated","subject":"/blobServices/default/containers/in/blobs/a <&> é.csv","data":{"url":"http://x/in/a.csv"}}]"#;
    let out = az
        .rollq()
        .args([
            "queue",
            "send",
            "--queue",
            &q,
            "plain.csv",
            event,
            "two\nlines\ttab",
        ])
        .output()
        .unwrap();
    let ids: Vec<String> = run_ok(out).0.lines().map(str::to_owned).collect();
    assert_eq!(ids.len(), 3, "{ids:?}");

    // base64, and `-` between arguments reads stdin's lines in its place (blank lines skipped).
    let mut child = az
        .rollq()
        .args([
            "queue", "send", "--queue", &q, "--base64", "first", "-", "last",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"from stdin\r\n\n   \nsecond line")
        .unwrap();
    let ids2: Vec<String> = run_ok(child.wait_with_output().unwrap())
        .0
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(ids2.len(), 4, "{ids2:?}");

    let peeked = conn.queues.queue(&q).peek(32).await.unwrap();
    let texts: Vec<&str> = peeked.iter().map(|m| m.text.as_str()).collect();
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    assert_eq!(
        texts,
        [
            "plain.csv".to_owned(),
            event.to_owned(),
            "two\nlines\ttab".to_owned(),
            b64("first"),
            b64("from stdin"),
            b64("second line"),
            b64("last"),
        ]
    );
    let peeked_ids: Vec<String> = peeked.iter().map(|m| m.id.0.clone()).collect();
    let printed: Vec<String> = ids.into_iter().chain(ids2).collect();
    assert_eq!(peeked_ids, printed, "the printed ids are the messages' ids");
}

#[tokio::test]
async fn queue_send_rejects_bad_input_before_sending_anything() {
    let az = Azurite::start();
    let conn = az.connect().await;
    let q = unique_name("bad");
    let send = |texts: &[&str]| {
        az.rollq()
            .args(["queue", "send", "--queue", &q])
            .args(texts)
            .output()
            .unwrap()
    };
    let out = send(&["fine", "bell\x07"]);
    let err = run_err(&out);
    assert!(
        err.contains("argument 2") && err.contains("control character") && err.contains("--base64"),
        "{err}"
    );
    let big = "x".repeat(64 * 1024 + 1);
    let err = run_err(&send(&["fine", &big]));
    assert!(err.contains("at most 65536"), "{err}");
    let err = run_err(&send(&["-", "-"]));
    assert!(err.contains("only once"), "{err}");
    // Nothing was sent: the queue was not even created.
    let e = conn.queues.queue(&q).approximate_count().await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");

    // The same control character goes through base64 untouched.
    az.rollq_ok(&["queue", "send", "--queue", &q, "--base64", "bell\x07"]);
    assert_eq!(conn.queues.queue(&q).approximate_count().await.unwrap(), 1);
}

#[tokio::test]
async fn queue_create_makes_the_queue_and_its_poison_queue() {
    let az = Azurite::start();
    let conn = az.connect().await;
    let q = unique_name("mk");
    for _ in 0..2 {
        // Twice: creating what exists is success.
        let (out, _) = az.rollq_ok(&["queue", "create", "--queue", &q]);
        assert!(out.contains(&poison_queue_name(&q)), "{out}");
    }
    assert_eq!(conn.queues.queue(&q).approximate_count().await.unwrap(), 0);
    let poison = conn.queues.queue(&poison_queue_name(&q));
    assert_eq!(poison.approximate_count().await.unwrap(), 0);
}

#[tokio::test]
async fn blob_list_prints_name_size_and_etag_under_a_prefix() {
    let az = Azurite::start();
    let conn = az.connect().await;
    let c = unique_name("list");
    let (out, _) = az.rollq_ok(&["blob", "create-container", "--container", &c]);
    assert!(out.contains(&c), "{out}");
    for (name, len) in [
        ("2024/a.csv", 10),
        ("2024/a_aggregated.csv", 0),
        ("2024/sub/b.csv", 3),
        ("2025/c.csv", 5),
    ] {
        let path = BlobPath::new(&c, name);
        conn.blobs
            .put(&path, Bytes::from(pattern(len)), PutOptions::default())
            .await
            .unwrap();
    }
    let (out, _) = az.rollq_ok(&["blob", "list", "--container", &c, "--prefix", "2024/"]);
    let mut expected = String::new();
    for name in ["2024/a.csv", "2024/a_aggregated.csv", "2024/sub/b.csv"] {
        let p = conn
            .blobs
            .properties(&BlobPath::new(&c, name))
            .await
            .unwrap();
        expected.push_str(&format!("{name}\t{}\t{}\n", p.size, p.etag));
    }
    assert_eq!(out, expected);

    let (all, _) = az.rollq_ok(&["blob", "list", "--container", &c]);
    assert_eq!(all.lines().count(), 4, "{all}");
    assert!(all.starts_with("2024/a.csv\t10\t"), "{all}");

    let missing = unique_name("nope");
    let err = az.rollq_err(&["blob", "list", "--container", &missing]);
    assert!(err.contains("not_found") && err.contains(&missing), "{err}");
}

#[tokio::test]
async fn blob_get_streams_to_stdout_and_to_a_file() {
    let az = Azurite::start();
    let conn = az.connect().await;
    let c = unique_name("get");
    conn.blobs.create_container_if_missing(&c).await.unwrap();
    // Three download partitions of 4 MiB, the last one short.
    let big = pattern((9 << 20) + 123);
    let small = b"time,value\n2024-01-01 00:00:00,1\n".to_vec();
    for (name, data) in [("out/big.csv", &big), ("small.csv", &small)] {
        conn.blobs
            .put(
                &BlobPath::new(&c, name),
                Bytes::from(data.clone()),
                PutOptions::default(),
            )
            .await
            .unwrap();
    }

    for (name, data) in [("out/big.csv", &big), ("small.csv", &small)] {
        let out = az
            .rollq()
            .args(["blob", "get", "--container", &c, name])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.stdout == *data, "{name}: stdout differs from the blob");
    }

    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("big.csv");
    std::fs::write(&dest, b"an older file that is replaced").unwrap();
    let (out, _) = run_ok(
        az.rollq()
            .args(["blob", "get", "--container", &c, "out/big.csv", "-o"])
            .arg(&dest)
            .output()
            .unwrap(),
    );
    assert!(out.contains(&format!("{} bytes", big.len())), "{out}");
    assert!(
        std::fs::read(&dest).unwrap() == big,
        "file differs from the blob"
    );
    assert_eq!(
        dir_names(dir.path()),
        ["big.csv"],
        "no temporary file is left"
    );
}

#[tokio::test]
async fn blob_get_of_a_missing_blob_fails_clearly_and_writes_nothing() {
    let az = Azurite::start();
    let conn = az.connect().await;
    let c = unique_name("miss");
    conn.blobs.create_container_if_missing(&c).await.unwrap();

    let out = az
        .rollq()
        .args(["blob", "get", "--container", &c, "no/such.csv"])
        .output()
        .unwrap();
    let err = run_err(&out);
    assert!(out.stdout.is_empty(), "nothing on stdout");
    assert!(
        err.contains("not_found")
            && err.contains(&format!("{c}/no/such.csv"))
            && err.contains("check the container or blob name"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("keep.csv");
    std::fs::write(&dest, b"previous content").unwrap();
    let out = az
        .rollq()
        .args(["blob", "get", "--container", &c, "no/such.csv", "-o"])
        .arg(&dest)
        .output()
        .unwrap();
    let err = run_err(&out);
    assert!(err.contains("not_found"), "{err}");
    assert_eq!(std::fs::read(&dest).unwrap(), b"previous content");
    assert_eq!(
        dir_names(dir.path()),
        ["keep.csv"],
        "no temporary file is left"
    );

    let err = run_err(
        &az.rollq()
            .args(["blob", "get", "--container", &c, "x.csv", "-o"])
            .arg(dir.path())
            .output()
            .unwrap(),
    );
    assert!(err.contains("is a directory"), "{err}");
}

/// A connection that breaks in the middle of the download (after the first partition has
/// arrived) fails the command and leaves neither the destination nor a partial file.
#[tokio::test]
async fn blob_get_broken_mid_download_leaves_no_partial_file() {
    let az = Azurite::start();
    let conn = az.connect().await;
    let c = unique_name("cut");
    conn.blobs.create_container_if_missing(&c).await.unwrap();
    let big = pattern(24 << 20);
    conn.blobs
        .put(
            &BlobPath::new(&c, "big.csv"),
            Bytes::from(big),
            PutOptions::default(),
        )
        .await
        .unwrap();

    // Past the properties call and the first 4 MiB partition, well before the 24 MiB end.
    let proxy = TcpProxy::cut_after(az.blob_addr(), (6 << 20) + 1000);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("big.csv");
    let child = az
        .rollq_via(proxy.addr(), az.queue_addr())
        .args([
            "blob",
            "get",
            "--container",
            &c,
            "big.csv",
            "--storage-timeout",
            "5s",
            "-o",
        ])
        .arg(&dest)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = ChildGuard(child);
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "rollq blob get did not finish");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!status.success(), "expected failure; stderr: {stderr}");
    assert!(proxy.is_cut(), "the proxy never reached its byte limit");
    assert!(stderr.contains("download"), "{stderr}");
    assert!(
        dir_names(dir.path()).is_empty(),
        "left behind: {:?}",
        dir_names(dir.path())
    );
}

/// `blob get -o FILE` of a 128 MiB blob never holds the blob: the child's peak resident set
/// (VmHWM, sampled until it exits; a high-water mark, so late samples lose nothing that
/// happened before them) stays far below the blob's size.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn blob_get_memory_stays_bounded_for_a_large_blob() {
    const BLOB_BYTES: usize = 128 << 20;
    const BLOCK: usize = 8 << 20;
    let az = Azurite::start();
    let conn = az.connect().await;
    let c = unique_name("hwm");
    conn.blobs.create_container_if_missing(&c).await.unwrap();
    let path = BlobPath::new(&c, "big.csv");
    upload_patterned(&conn.blobs, &path, BLOB_BYTES, BLOCK).await;

    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("big.csv");
    let child = az
        .rollq()
        .args(["blob", "get", "--container", &c, "big.csv", "-o"])
        .arg(&dest)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = ChildGuard(child);
    let pid = child.0.id();
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut peak_kib = 0u64;
    let status = loop {
        // Read before try_wait: once reaped, the /proc entry is gone.
        if let Some(bytes) = peak_rss_bytes(pid) {
            peak_kib = peak_kib.max(bytes / 1024);
        }
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "rollq blob get did not finish");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(status.success(), "rollq blob get failed: {status}");
    assert_eq!(
        std::fs::metadata(&dest).unwrap().len(),
        BLOB_BYTES as u64,
        "the whole blob arrived"
    );
    let peak_mib = peak_kib / 1024;
    eprintln!(
        "rollq blob get of {} MiB: peak RSS {peak_mib} MiB",
        BLOB_BYTES >> 20
    );
    assert!(peak_kib > 0, "no VmHWM sample was read");
    // Partitions of 4 MiB × 2 in flight (about 16 MiB) plus the process itself (about 22 MiB
    // for `blob list`): 80 MiB leaves room for allocator slack, and is well under the blob.
    assert!(
        peak_mib < 80,
        "peak RSS {peak_mib} MiB for a {} MiB blob",
        BLOB_BYTES >> 20
    );
}
