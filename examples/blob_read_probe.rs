//! Test helper: streams one blob through `BlobStore::open_read` and reports how much memory
//! the process held, so a test can check that a download is bounded by partition size ×
//! parallelism rather than the blob size.
//!
//! Usage: `blob_read_probe CONTAINER BLOB PARTITION_BYTES PARALLEL` with
//! `AZURE_STORAGE_CONNECTION_STRING` set. Prints one line of JSON:
//! `{"bytes":N,"pattern_ok":bool,"rss_before_kib":N,"hwm_after_kib":N}`. The peak resident
//! set (`VmHWM`) comes from `/proc/self/status`, so the numbers are Linux-only.

use futures::StreamExt;
use rollq::storage::{BlobPath, ReadOptions, StorageArgs, connect};
use secrecy::SecretString;

fn status_kib(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, container, blob, partition, parallel] = args.as_slice() else {
        anyhow::bail!("usage: blob_read_probe CONTAINER BLOB PARTITION_BYTES PARALLEL");
    };
    let storage = StorageArgs {
        connection_string: std::env::var("AZURE_STORAGE_CONNECTION_STRING")
            .ok()
            .map(SecretString::from),
        ..Default::default()
    };
    let conn = connect(&storage).await?;
    let opts = ReadOptions {
        partition_bytes: partition.parse()?,
        parallel: parallel.parse()?,
    };
    let path = BlobPath::new(container.as_str(), blob.as_str());
    let rss_before = status_kib("VmRSS:").unwrap_or(0);
    let mut stream = conn.blobs.open_read(&path, None, opts).await?;
    let mut bytes = 0u64;
    let mut pattern_ok = true;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        // The writer filled byte i with i % 251: checks order and completeness cheaply.
        for (i, b) in chunk.iter().enumerate() {
            if u64::from(*b) != (bytes + i as u64) % 251 {
                pattern_ok = false;
                break;
            }
        }
        bytes += chunk.len() as u64;
    }
    let hwm_after = status_kib("VmHWM:").unwrap_or(0);
    println!(
        "{{\"bytes\":{bytes},\"pattern_ok\":{pattern_ok},\"rss_before_kib\":{rss_before},\"hwm_after_kib\":{hwm_after}}}"
    );
    Ok(())
}
