//! The bare-client ceiling for the end-to-end bench (`benches/e2e.py`): drains a queue doing
//! nothing but the storage requests the job needs, so rollq's drain rate can be judged
//! against what the same SDK and the same emulator allow.
//!
//! Usage: `bare_client --queue Q --container C [--concurrency 8] [--mode full|download]
//! [--partition-bytes 4194304] [--parallel 2]` with `AZURE_STORAGE_CONNECTION_STRING` set
//! (Shared Key: `AccountName`, `AccountKey`, `BlobEndpoint`, `QueueEndpoint`). Each message
//! text is a blob name in `--container` (what `rollq submit` sends by default).
//!
//! Per message, `full` does GET input → PUT output → DELETE message; `download` (the one-year
//! ceiling: "an example that merely downloads them") does GET → DELETE. Receives take up to
//! 32 messages at once. The output stands in for rollq's: `input length / 24` bytes (one
//! ~60-byte row per hour for ~24-byte input rows a minute), written with one Put Blob beside
//! the input as `<name>.bare-out`.
//!
//! Prints one line of JSON: files, drain seconds (start of the first receive → end of the last
//! delete), files/s, input bytes, and p50/p95 message age (insertion → delete) in seconds.
//! Uses the same Azure SDK crates, signing policy and default reqwest transport settings as
//! rollq (HTTP/1.1, keep-alive, unbounded idle pool), on tokio's multi-thread runtime.

use std::num::NonZero;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use azure_core::http::{ClientOptions, Transport, Url};
use azure_storage_blob::models::{BlobClientDownloadOptions, BlockBlobClientUploadOptions};
use azure_storage_blob::{BlobContainerClient, BlobServiceClient, BlobServiceClientOptions};
use azure_storage_queue::models::QueueClientReceiveMessagesOptions;
use azure_storage_queue::{QueueClient, QueueClientOptions};
use bytes::Bytes;
use futures::StreamExt;
use rollq::storage::azure::shared_key::SharedKeyPolicy;
use tokio::sync::{Mutex, mpsc};

/// One received message, handed from the receiver to a worker task.
struct Msg {
    id: String,
    receipt: String,
    name: String,
    inserted: Option<SystemTime>,
}

/// What each worker task measured; merged at the end.
#[derive(Default)]
struct Tally {
    files: u64,
    bytes: u64,
    ages: Vec<f64>,
    last_delete: Option<Instant>,
    /// `(message id, unix seconds)` of every delete, for `--deletes`.
    deletes: Vec<(String, f64)>,
}

struct Args {
    queue: String,
    container: String,
    concurrency: usize,
    download_only: bool,
    partition_bytes: usize,
    parallel: usize,
    visibility: i32,
    deletes: Option<String>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        queue: String::new(),
        container: String::new(),
        concurrency: 8,
        download_only: false,
        // rollq worker's defaults (--download-block-size 4MiB, --download-parallel 2).
        partition_bytes: 4 << 20,
        parallel: 2,
        visibility: 300,
        deletes: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--queue" => a.queue = value()?,
            "--container" => a.container = value()?,
            "--concurrency" => a.concurrency = value()?.parse()?,
            "--mode" => {
                a.download_only = match value()?.as_str() {
                    "full" => false,
                    "download" => true,
                    m => bail!("--mode full|download, got {m}"),
                }
            }
            "--partition-bytes" => a.partition_bytes = value()?.parse()?,
            "--parallel" => a.parallel = value()?.parse()?,
            "--visibility-secs" => a.visibility = value()?.parse()?,
            "--deletes" => a.deletes = Some(value()?),
            f => bail!("unknown flag {f}"),
        }
    }
    if a.queue.is_empty() || a.container.is_empty() || a.concurrency == 0 {
        bail!(
            "usage: bare_client --queue Q --container C [--concurrency N] [--mode full|download]"
        );
    }
    Ok(a)
}

/// `Key=Value;…` → the value of `key` (connection-string keys are case-insensitive).
fn conn_field<'a>(conn: &'a str, key: &str) -> Option<&'a str> {
    conn.split(';').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        k.trim().eq_ignore_ascii_case(key).then_some(v.trim())
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let conn = std::env::var("AZURE_STORAGE_CONNECTION_STRING")
        .context("AZURE_STORAGE_CONNECTION_STRING must be set")?;
    let field =
        |k: &str| conn_field(&conn, k).with_context(|| format!("connection string lacks {k}"));
    let account = field("AccountName")?.to_owned();
    let key = field("AccountKey")?.to_owned();
    let blob_url = Url::parse(field("BlobEndpoint")?.trim_end_matches('/'))?;
    let queue_url = Url::parse(&format!(
        "{}/{}",
        field("QueueEndpoint")?.trim_end_matches('/'),
        args.queue
    ))?;

    // The same transport rollq builds (src/storage/azure): reqwest without transparent
    // decompression, otherwise reqwest's defaults (HTTP/1.1 keep-alive, unbounded idle pool).
    let http = reqwest::Client::builder().no_gzip().no_deflate().build()?;
    let options = ClientOptions {
        per_try_policies: vec![SharedKeyPolicy::new(account, key)],
        transport: Some(Transport::new(Arc::new(http))),
        ..Default::default()
    };
    let queue = Arc::new(QueueClient::new(
        queue_url,
        None,
        Some(QueueClientOptions {
            client_options: options.clone(),
            ..Default::default()
        }),
    )?);
    let blobs = BlobServiceClient::new(
        blob_url,
        None,
        Some(BlobServiceClientOptions {
            client_options: options,
            ..Default::default()
        }),
    )?;
    let container = Arc::new(blobs.blob_container_client(&args.container));

    // A channel as deep as one receive: the receiver fetches the next batch while the
    // workers still hold up to `concurrency` messages, so no worker waits on a receive.
    let (tx, rx) = mpsc::channel::<Msg>(32);
    let rx = Arc::new(Mutex::new(rx));
    let args = Arc::new(args);
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.concurrency {
        let (rx, queue, container, args) =
            (rx.clone(), queue.clone(), container.clone(), args.clone());
        workers.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            loop {
                let next = rx.lock().await.recv().await;
                let Some(msg) = next else { break };
                tally.bytes += handle(&queue, &container, &args, &msg).await?;
                tally.files += 1;
                tally.last_delete = Some(Instant::now());
                tally.deletes.push((msg.id.clone(), unix_now()));
                if let Some(age) = msg
                    .inserted
                    .and_then(|t| SystemTime::now().duration_since(t).ok())
                {
                    tally.ages.push(age.as_secs_f64());
                }
            }
            anyhow::Ok(tally)
        }));
    }

    // Until a receive comes back empty: with no failures, every message still invisible is
    // held by a worker here, so the queue is drained once they finish.
    loop {
        let opts = QueueClientReceiveMessagesOptions {
            number_of_messages: Some(32),
            visibility_timeout: Some(args.visibility),
            ..Default::default()
        };
        let got = queue.receive_messages(Some(opts)).await?.into_model()?;
        let items = got.items.unwrap_or_default();
        if items.is_empty() {
            break;
        }
        for m in items {
            let (Some(id), Some(receipt)) = (m.message_id, m.pop_receipt) else {
                bail!("a received message lacks its id or pop receipt");
            };
            let msg = Msg {
                id,
                receipt,
                name: m.message_text.unwrap_or_default(),
                inserted: m.insertion_time.map(SystemTime::from),
            };
            if tx.send(msg).await.is_err() {
                bail!("every worker task has stopped");
            }
        }
    }
    drop(tx);

    let mut all = Tally::default();
    for w in workers {
        let t = w.await??;
        all.files += t.files;
        all.bytes += t.bytes;
        all.ages.extend(t.ages);
        all.last_delete = all.last_delete.max(t.last_delete);
        all.deletes.extend(t.deletes);
    }
    if let Some(path) = &args.deletes {
        let lines: String = all
            .deletes
            .iter()
            .map(|(id, t)| format!("{id} {t:.6}\n"))
            .collect();
        std::fs::write(path, lines).with_context(|| format!("writing {path}"))?;
    }
    let secs = all
        .last_delete
        .map_or(Duration::ZERO, |t| t.duration_since(started))
        .as_secs_f64();
    all.ages.sort_by(f64::total_cmp);
    println!(
        "{{\"files\":{},\"seconds\":{secs:.4},\"files_per_s\":{:.2},\"bytes\":{},\"age_p50\":{:.4},\"age_p95\":{:.4},\"concurrency\":{},\"mode\":\"{}\"}}",
        all.files,
        if secs > 0.0 {
            all.files as f64 / secs
        } else {
            0.0
        },
        all.bytes,
        quantile(&all.ages, 0.50),
        quantile(&all.ages, 0.95),
        args.concurrency,
        if args.download_only {
            "download"
        } else {
            "full"
        },
    );
    Ok(())
}

/// GET the input (streamed and counted, as rollq streams it), PUT a stand-in output, DELETE the
/// message. Returns the input's length.
async fn handle(
    queue: &QueueClient,
    container: &BlobContainerClient,
    args: &Args,
    msg: &Msg,
) -> anyhow::Result<u64> {
    let blob = container.blob_client(&msg.name);
    let dl = BlobClientDownloadOptions {
        partition_size: NonZero::new(args.partition_bytes.max(1)),
        parallel: NonZero::new(args.parallel.max(1)),
        ..Default::default()
    };
    let mut body = blob.download(Some(dl)).await?.body;
    let mut len = 0u64;
    while let Some(chunk) = body.next().await {
        len += chunk?.len() as u64;
    }
    if !args.download_only {
        let out = Bytes::from(vec![b'0'; (len / 24).max(1) as usize]);
        let up = BlockBlobClientUploadOptions {
            // One partition as large as the body: a single Put Blob, as rollq writes outputs.
            partition_size: NonZero::new(out.len() as u64),
            ..Default::default()
        };
        container
            .blob_client(&format!("{}.bare-out", msg.name))
            .block_blob_client()
            .upload(out.into(), Some(up))
            .await?;
    }
    queue.delete_message(&msg.id, &msg.receipt, None).await?;
    Ok(len)
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Nearest-rank quantile of sorted values (0 when empty).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}
