//! Shared test helpers: the Azurite harness, unique names, a fault-injecting TCP proxy and an
//! HTTP-aware one, a
//! `rollq` command builder pointed at an emulator, checks on a finished command, a large
//! patterned blob, a child's peak RSS, and for the Entra ID tests a test CA made at test time
//! and local HTTPS token endpoints.
#![allow(dead_code)] // Not every test module uses every helper.

pub mod azurite;
pub mod fake_http;
pub mod http_proxy;
pub mod proxy;
pub mod tls;
pub mod token_server;

pub use azurite::{Azurite, unique_name};
pub use fake_http::FakeHttp;
pub use http_proxy::HttpProxy;
pub use proxy::TcpProxy;

/// Owns a spawned child process: killed and reaped on drop, even if the test panics.
pub struct ChildGuard(pub std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Asserts that a finished command succeeded; returns its (stdout, stderr), both shown if not.
pub fn run_ok(out: std::process::Output) -> (String, String) {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    (stdout, stderr)
}

/// Asserts that a finished command failed; returns its stderr.
pub fn run_err(out: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "expected failure; stderr: {stderr}");
    stderr
}

/// The MD5 digest Blob Storage keeps as `Content-MD5`.
pub fn md5(data: &[u8]) -> [u8; 16] {
    use md5::{Digest, Md5};
    Md5::digest(data).into()
}

/// Uploads `len` bytes of `i % 251` (position-dependent, so a reordered or dropped range
/// shows) to `path` as staged blocks of `block` bytes, never holding the whole blob.
pub async fn upload_patterned(
    blobs: &std::sync::Arc<dyn rollq::storage::BlobStore>,
    path: &rollq::storage::BlobPath,
    len: usize,
    block: usize,
) {
    let mut up = blobs
        .start_upload(path, rollq::storage::PutOptions::default())
        .await
        .unwrap();
    for start in (0..len).step_by(block) {
        let block: Vec<u8> = (start..(start + block).min(len))
            .map(|i| (i % 251) as u8)
            .collect();
        up.stage(bytes::Bytes::from(block)).await.unwrap();
    }
    up.commit().await.unwrap();
}

/// A process's peak resident set size (VmHWM in /proc/PID/status, Linux), in bytes; `None`
/// where that is not available (another OS, or the process is gone).
pub fn peak_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Every message text in a queue (peek sees visible ones only; the caller waits for that).
pub async fn peek_texts(queue: &std::sync::Arc<dyn rollq::storage::Queue>) -> Vec<String> {
    queue
        .peek(32)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.text)
        .collect()
}
