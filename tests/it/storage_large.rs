//! A 256 MiB blob uploaded as staged blocks and streamed back with bounded memory, measured
//! by the peak resident set of a child process that does nothing but read it.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use rollq::storage::BlobPath;

use crate::support::{Azurite, ChildGuard, unique_name, upload_patterned};

const BLOB_BYTES: usize = 256 << 20;
const BLOCK: usize = 8 << 20;

/// The example binary `cargo build --examples` puts next to this test binary's folder
/// (`cargo test` builds examples only as test harnesses, which is why scripts/test.sh builds
/// them first).
fn probe_path() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let probe = dir
        .join("examples")
        .join(format!("blob_read_probe{}", std::env::consts::EXE_SUFFIX));
    assert!(
        probe.exists(),
        "{} is missing: run the tests with scripts/test.sh (it builds the examples first), \
         or build it first with `cargo build --example blob_read_probe`",
        probe.display()
    );
    probe
}

fn json_u64(line: &str, key: &str) -> u64 {
    let v: serde_json::Value = serde_json::from_str(line).expect("probe JSON");
    v[key].as_u64().unwrap_or_else(|| panic!("{key} in {line}"))
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn large_blob_streams_with_memory_bounded_by_partitions() {
    let az = Azurite::start();
    let conn = az.connect().await;
    let c = unique_name("large");
    conn.blobs.create_container_if_missing(&c).await.unwrap();
    let path = BlobPath::new(&c, "big.csv");
    upload_patterned(&conn.blobs, &path, BLOB_BYTES, BLOCK).await;
    assert_eq!(
        conn.blobs.properties(&path).await.unwrap().size,
        BLOB_BYTES as u64
    );

    let partition = 4usize << 20;
    let parallel = 2usize;
    let child = Command::new(probe_path())
        .args([&c, "big.csv", &partition.to_string(), &parallel.to_string()])
        .env("AZURE_STORAGE_CONNECTION_STRING", az.connection_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut child = ChildGuard(child);
    let mut out = String::new();
    child
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let status = child.0.wait().unwrap();
    assert!(status.success(), "probe failed: {out}");
    let line = out.trim();

    assert_eq!(json_u64(line, "bytes"), BLOB_BYTES as u64, "{line}");
    assert!(
        line.contains("\"pattern_ok\":true"),
        "bytes out of order: {line}"
    );
    let grown_kib = json_u64(line, "hwm_after_kib") - json_u64(line, "rss_before_kib");
    // The SDK buffers at most 2 × parallel partitions (16 MiB here); allow generous room
    // for allocator slack and HTTP buffers, still far below the 256 MiB blob.
    let bound_kib = 64 * 1024;
    eprintln!(
        "streamed {} MiB with partition {} MiB × parallel {parallel}: peak RSS grew {} MiB",
        BLOB_BYTES >> 20,
        partition >> 20,
        grown_kib / 1024
    );
    assert!(
        grown_kib < bound_kib,
        "peak RSS grew {grown_kib} KiB while streaming a {} MiB blob: {line}",
        BLOB_BYTES >> 20
    );
}
