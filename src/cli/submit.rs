//! `rollq submit`: upload CSV files to a container and enqueue one message per blob.
//!
//! The producer side of the pipeline. Re-running is safe: a blob that already exists with the
//! same length and MD5 is not uploaded again, but its message is still sent (the worker skips
//! work it has already done). Files are uploaded in parallel; each file's message is sent as
//! soon as its blob is in place.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use bytes::Bytes;
use futures::StreamExt;
use md5::{Digest, Md5};
use tokio::io::AsyncReadExt;

use crate::cli::common::{connected, explained};
use crate::contract;
use crate::storage::{
    BlobPath, BlobStore, Connection, ErrorKind, PutOptions, Queue, StorageArgs, StorageError,
    validate_container_name, validate_queue_name,
};

/// Files up to this size go up in one Put Blob request; larger ones as staged blocks.
const SINGLE_PUT_MAX: u64 = 8 << 20;
/// Block size for staged uploads (memory per file in flight).
const BLOCK_BYTES: usize = 8 << 20;

/// What a queue message names the blob with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum MessageFormat {
    /// The bare blob name, relative to the container (the original pipeline's form).
    #[default]
    Name,
    /// `{"container": "...", "blob": "..."}`.
    Json,
}

/// Upload CSV files and enqueue one message per blob.
#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    /// CSV files, or directories searched recursively for `*.csv` and `*.csv.gz`
    /// (`*_aggregated.csv` outputs are left out).
    #[arg(required = true, value_name = "FILE|DIR")]
    pub paths: Vec<PathBuf>,
    /// Container to upload to (created if missing).
    #[arg(long, env = "ROLLQ_CONTAINER")]
    pub container: String,
    /// Queue to enqueue to (created if missing).
    #[arg(long, env = "ROLLQ_QUEUE")]
    pub queue: String,
    /// Prepended verbatim to every blob name (`incoming/` puts the files in a folder).
    #[arg(long, default_value = "")]
    pub prefix: String,
    #[command(flatten)]
    pub message: MessageArgs,
    /// Files uploaded at the same time.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub parallel: u16,
    #[command(flatten)]
    pub storage: StorageArgs,
}

/// How messages are written (shared by `submit` and `backfill`).
#[derive(Clone, Copy, Debug, clap::Args)]
pub struct MessageArgs {
    /// Message body: the bare blob name, or JSON naming container and blob.
    #[arg(long, value_enum, default_value_t = MessageFormat::Name)]
    pub message_format: MessageFormat,
    /// Base64-encode message bodies (what Azure Functions' queue trigger expects by default).
    #[arg(long)]
    pub base64: bool,
}

impl MessageArgs {
    /// The message text naming `blob` in `container`.
    pub fn body(&self, container: &str, blob: &str) -> String {
        let text = match self.message_format {
            MessageFormat::Name => blob.to_owned(),
            MessageFormat::Json => {
                serde_json::json!({ "container": container, "blob": blob }).to_string()
            }
        };
        if self.base64 {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(text)
        } else {
            text
        }
    }
}

/// One local file and the blob it becomes.
#[derive(Clone, Debug)]
struct Item {
    file: PathBuf,
    blob: String,
}

/// What happened to one file.
enum Done {
    Uploaded,
    Skipped,
}

/// Runs `rollq submit`.
pub fn run(args: SubmitArgs) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(submit(args))
}

async fn submit(args: SubmitArgs) -> anyhow::Result<()> {
    validate_queue_name(&args.queue)?;
    validate_container_name(&args.container)?;
    // Everything local is checked before the first request: a typo loses nothing.
    let items = collect(&args.paths, &args.prefix)?;
    let conn = connected(&args.storage).await?;
    let queue = conn.queues.queue(&args.queue);
    let explain = explained(&conn);
    conn.blobs
        .create_container_if_missing(&args.container)
        .await
        .map_err(&explain)?;
    queue.create_if_missing().await.map_err(&explain)?;
    // The explainer borrows `conn`, which moves into an `Arc` for the uploads below.
    drop(explain);

    let bar = progress_bar(items.len());
    let total = items.len();
    let conn = Arc::new(conn);
    let results: Vec<(Item, anyhow::Result<Done>)> = futures::stream::iter(items)
        .map(|item| {
            let conn = conn.clone();
            let queue = queue.clone();
            let container = args.container.clone();
            let message = args.message;
            async move {
                let r = submit_one(&conn, &*queue, &container, &item, message).await;
                (item, r)
            }
        })
        .buffer_unordered(usize::from(args.parallel))
        .inspect(|(item, r)| report_progress(bar.as_ref(), item, r))
        .collect()
        .await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    summarise(&results, total, &args.queue)
}

/// A progress bar on a terminal; elsewhere `None`, and one log line per file instead.
fn progress_bar(files: usize) -> Option<indicatif::ProgressBar> {
    std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(files as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} files  {elapsed_precise}  {wide_msg}",
            )
            .expect("valid template"),
        );
        bar
    })
}

fn report_progress(bar: Option<&indicatif::ProgressBar>, item: &Item, r: &anyhow::Result<Done>) {
    let what = match r {
        Ok(Done::Uploaded) => "uploaded",
        Ok(Done::Skipped) => "unchanged, not uploaded",
        Err(_) => "failed",
    };
    match bar {
        Some(bar) => {
            bar.inc(1);
            bar.set_message(format!("{} {what}", item.blob));
        }
        None => match r {
            Ok(_) => {
                tracing::info!(file = %item.file.display(), blob = %item.blob, "{what}, enqueued")
            }
            Err(e) => tracing::error!(file = %item.file.display(), blob = %item.blob, "{e:#}"),
        },
    }
}

/// Prints the one summary line; fails naming the first failed file, if any.
fn summarise(
    results: &[(Item, anyhow::Result<Done>)],
    total: usize,
    queue: &str,
) -> anyhow::Result<()> {
    let uploaded = results
        .iter()
        .filter(|(_, r)| matches!(r, Ok(Done::Uploaded)))
        .count();
    let skipped = results
        .iter()
        .filter(|(_, r)| matches!(r, Ok(Done::Skipped)))
        .count();
    let failed: Vec<_> = results
        .iter()
        .filter_map(|(i, r)| r.as_ref().err().map(|e| (i, e)))
        .collect();
    println!(
        "uploaded {uploaded}, skipped {skipped} (identical), enqueued {} to queue {queue}",
        uploaded + skipped,
    );
    if let Some((item, first)) = failed.first() {
        bail!(
            "{} of {total} files failed (nothing was enqueued for them); first: {}: {first:#}",
            failed.len(),
            item.file.display()
        );
    }
    Ok(())
}

async fn submit_one(
    conn: &Connection,
    queue: &dyn Queue,
    container: &str,
    item: &Item,
    message: MessageArgs,
) -> anyhow::Result<Done> {
    let explain = explained(conn);
    let path = BlobPath::new(container, &item.blob);
    let (len, md5) = hash_file(&item.file).await?;
    let same = match conn.blobs.properties(&path).await {
        Ok(p) => p.size == len && p.content_md5 == Some(md5),
        Err(e) if e.kind == ErrorKind::NotFound => false,
        Err(e) => return Err(explain(e)),
    };
    let done = if same {
        Done::Skipped
    } else {
        upload(&*conn.blobs, &path, &item.file, len, md5)
            .await
            .map_err(|e| match e.downcast::<StorageError>() {
                Ok(se) => explain(se),
                Err(e) => e,
            })?;
        Done::Uploaded
    };
    // The message goes out only once the blob is in place, so a worker never sees a name
    // whose blob is missing or half-written.
    queue
        .send(&message.body(container, &item.blob))
        .await
        .map_err(&explain)?;
    Ok(done)
}

/// Length and MD5 of a file, read in blocks on a blocking thread.
async fn hash_file(file: &Path) -> anyhow::Result<(u64, [u8; 16])> {
    let file = file.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut f =
            std::fs::File::open(&file).with_context(|| format!("opening {}", file.display()))?;
        let mut h = Md5::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut len = 0u64;
        loop {
            let n = f
                .read(&mut buf)
                .with_context(|| format!("reading {}", file.display()))?;
            if n == 0 {
                break;
            }
            len += n as u64;
            h.update(&buf[..n]);
        }
        Ok((len, h.finalize().into()))
    })
    .await
    .context("hashing task")?
}

fn content_type(name: &str) -> &'static str {
    if name.ends_with(".gz") {
        "application/gzip"
    } else {
        "text/csv"
    }
}

/// Uploads a file: one request when small, staged blocks (bounded memory) when large.
async fn upload(
    blobs: &dyn BlobStore,
    path: &BlobPath,
    file: &Path,
    len: u64,
    md5: [u8; 16],
) -> anyhow::Result<()> {
    let opts = PutOptions {
        content_type: Some(content_type(&path.name).to_owned()),
        ..Default::default()
    };
    let mut f = tokio::fs::File::open(file)
        .await
        .with_context(|| format!("opening {}", file.display()))?;
    if len <= SINGLE_PUT_MAX {
        let mut body = Vec::with_capacity(len as usize);
        f.read_to_end(&mut body)
            .await
            .with_context(|| format!("reading {}", file.display()))?;
        blobs.put(path, Bytes::from(body), opts).await?;
        return Ok(());
    }
    let mut up = blobs.start_upload(path, opts).await?;
    let mut h = Md5::new();
    loop {
        let mut block = Vec::with_capacity(BLOCK_BYTES);
        (&mut f)
            .take(BLOCK_BYTES as u64)
            .read_to_end(&mut block)
            .await
            .with_context(|| format!("reading {}", file.display()))?;
        if block.is_empty() {
            break;
        }
        h.update(&block);
        up.stage(Bytes::from(block)).await?;
    }
    // The file is hashed again as it is sent: if it changed since the first pass, the MD5
    // stored with the blob must describe what was actually uploaded.
    let sent: [u8; 16] = h.finalize().into();
    if sent != md5 {
        bail!("{} changed while it was being uploaded", file.display());
    }
    up.set_content_md5(sent);
    up.commit().await?;
    Ok(())
}

/// Expands files and directories into (file, blob name) pairs, sorted, without duplicates.
fn collect(paths: &[PathBuf], prefix: &str) -> anyhow::Result<Vec<Item>> {
    let mut items = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).with_context(|| format!("cannot read {}", p.display()))?;
        if meta.is_dir() {
            let before = items.len();
            walk(p, p, prefix, &mut items)?;
            if items.len() == before {
                bail!("no CSV files (*.csv, *.csv.gz) found under {}", p.display());
            }
        } else {
            let name = p
                .file_name()
                .and_then(|n| n.to_str())
                .with_context(|| format!("{} has no UTF-8 file name", p.display()))?;
            items.push(Item {
                file: p.clone(),
                blob: format!("{prefix}{name}"),
            });
        }
    }
    items.sort_by(|a, b| a.blob.cmp(&b.blob));
    for pair in items.windows(2) {
        if pair[0].blob == pair[1].blob {
            bail!(
                "{} and {} would both become blob {:?}",
                pair[0].file.display(),
                pair[1].file.display(),
                pair[0].blob
            );
        }
    }
    for i in &items {
        if i.blob.len() > 1024 || i.blob.ends_with('/') || i.blob.ends_with('.') {
            bail!("{:?} is not a valid blob name", i.blob);
        }
    }
    Ok(items)
}

fn walk(root: &Path, dir: &Path, prefix: &str, out: &mut Vec<Item>) -> anyhow::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("cannot list {}", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let meta =
            std::fs::metadata(&path).with_context(|| format!("cannot read {}", path.display()))?;
        if meta.is_dir() {
            walk(root, &path, prefix, out)?;
            continue;
        }
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if !meta.is_file() || !contract::is_input(name) {
            continue;
        }
        let rel = path.strip_prefix(root).expect("walked under root");
        let parts: Option<Vec<&str>> = rel.components().map(|c| c.as_os_str().to_str()).collect();
        let parts = parts.with_context(|| format!("{} has no UTF-8 path", path.display()))?;
        out.push(Item {
            file: path.clone(),
            blob: format!("{prefix}{}", parts.join("/")),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_bodies() {
        let name = MessageArgs {
            message_format: MessageFormat::Name,
            base64: false,
        };
        assert_eq!(name.body("c", "2024/jan.csv"), "2024/jan.csv");
        let json = MessageArgs {
            message_format: MessageFormat::Json,
            base64: false,
        };
        let v: serde_json::Value = serde_json::from_str(&json.body("c", "a\"b.csv")).unwrap();
        assert_eq!(v, serde_json::json!({"container": "c", "blob": "a\"b.csv"}));
        let b64 = MessageArgs {
            message_format: MessageFormat::Name,
            base64: true,
        };
        assert_eq!(b64.body("c", "t.csv"), "dC5jc3Y=");
    }

    #[test]
    fn collects_dirs_recursively_and_files_verbatim() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("sub/deeper")).unwrap();
        for f in [
            "a.csv",
            "b.CSV",
            "notes.txt",
            "a_aggregated.csv",
            "sub/c.csv.gz",
            "sub/deeper/d.csv",
        ] {
            std::fs::write(d.join(f), "t,v\n").unwrap();
        }
        let items = collect(&[d.to_path_buf()], "in/").unwrap();
        let names: Vec<_> = items.iter().map(|i| i.blob.as_str()).collect();
        assert_eq!(
            names,
            [
                "in/a.csv",
                "in/b.CSV",
                "in/sub/c.csv.gz",
                "in/sub/deeper/d.csv"
            ]
        );
        // An explicit file is taken as given, whatever its name.
        let items = collect(&[d.join("notes.txt")], "").unwrap();
        assert_eq!(items[0].blob, "notes.txt");
    }

    #[test]
    fn collect_errors_are_clear() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let err = collect(&[d.join("missing.csv")], "").unwrap_err();
        assert!(format!("{err:#}").contains("missing.csv"), "{err:#}");
        std::fs::create_dir(d.join("empty")).unwrap();
        let err = collect(&[d.join("empty")], "").unwrap_err();
        assert!(err.to_string().contains("no CSV files"), "{err}");
        std::fs::create_dir(d.join("x")).unwrap();
        std::fs::write(d.join("a.csv"), "t\n").unwrap();
        std::fs::write(d.join("x/a.csv"), "t\n").unwrap();
        let err = collect(&[d.join("a.csv"), d.join("x")], "").unwrap_err();
        assert!(err.to_string().contains("would both become"), "{err}");
    }
}
