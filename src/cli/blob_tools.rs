//! `rollq blob list|get|create-container`: look at what is in a container (inputs and the
//! worker's outputs) and download a blob, without another Azure client.
//!
//! `get` streams: memory is bounded by the download's partition size × parallelism
//! ([`ReadOptions`]), never the blob's size. With `-o FILE` the bytes go to a temporary file
//! beside FILE that is renamed into place only once the whole blob has arrived, so a failure
//! leaves FILE as it was and no partial file behind.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::cli::common::{connected, explained, runtime};
use crate::storage::{BlobPath, ReadOptions, StorageArgs, validate_container_name};

/// Blob inspection.
#[derive(Debug, clap::Args)]
pub struct BlobArgs {
    #[command(subcommand)]
    pub command: BlobCommand,
}

/// `rollq blob ...`
#[derive(Debug, clap::Subcommand)]
pub enum BlobCommand {
    /// List blobs: name, size in bytes and ETag, tab-separated, one per line.
    List(ListArgs),
    /// Download one blob to stdout or a file, streaming.
    Get(GetArgs),
    /// Create a container if it does not exist.
    CreateContainer(ContainerTarget),
}

/// A container and the connection to reach it.
#[derive(Debug, clap::Args)]
pub struct ContainerTarget {
    /// The container.
    #[arg(long, env = "ROLLQ_CONTAINER")]
    pub container: String,
    #[command(flatten)]
    pub storage: StorageArgs,
}

/// `rollq blob list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Only blobs whose names start with this.
    #[arg(long, default_value = "")]
    pub prefix: String,
    #[command(flatten)]
    pub target: ContainerTarget,
}

/// `rollq blob get`.
#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// The blob's full name in the container (e.g. `2024/temperature1_aggregated.csv`).
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Where to write: a file (replaced only once the whole blob has arrived), or `-` for
    /// stdout (the default).
    #[arg(short, long, value_name = "FILE|-", default_value = "-")]
    pub output: PathBuf,
    #[command(flatten)]
    pub target: ContainerTarget,
}

/// Runs `rollq blob ...`.
pub fn blob(args: BlobArgs) -> anyhow::Result<()> {
    let rt = runtime()?;
    match args.command {
        BlobCommand::List(a) => rt.block_on(list(a)),
        BlobCommand::Get(a) => rt.block_on(get(a)),
        BlobCommand::CreateContainer(t) => rt.block_on(create_container(t)),
    }
}

async fn list(a: ListArgs) -> anyhow::Result<()> {
    validate_container_name(&a.target.container)?;
    let conn = connected(&a.target.storage).await?;
    let items = conn
        .blobs
        .list(&a.target.container, &a.prefix)
        .await
        .map_err(explained(&conn))?;
    let mut out = std::io::stdout().lock();
    for b in &items {
        if let Err(e) = writeln!(out, "{}\t{}\t{}", b.name, b.size, b.etag) {
            return stdout_error(e);
        }
    }
    out.flush().or_else(stdout_error)
}

/// A closed stdout (`rollq blob list | head`) ends the command quietly, like other Unix
/// tools; any other write failure is an error.
fn stdout_error(e: std::io::Error) -> anyhow::Result<()> {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        Ok(())
    } else {
        Err(anyhow::Error::new(e).context("writing to stdout"))
    }
}

async fn create_container(t: ContainerTarget) -> anyhow::Result<()> {
    validate_container_name(&t.container)?;
    let conn = connected(&t.storage).await?;
    conn.blobs
        .create_container_if_missing(&t.container)
        .await
        .map_err(explained(&conn))?;
    println!("container {} exists", t.container);
    Ok(())
}

async fn get(a: GetArgs) -> anyhow::Result<()> {
    validate_container_name(&a.target.container)?;
    if a.name.is_empty() {
        bail!("the blob name is empty");
    }
    let to_stdout = a.output.as_os_str() == "-";
    // The temporary file is made before the first request: an unwritable destination fails
    // without touching the network.
    let mut tmp = if to_stdout {
        None
    } else {
        Some(temp_beside(&a.output)?)
    };
    let conn = connected(&a.target.storage).await?;
    let explain = explained(&conn);
    let path = BlobPath::new(&a.target.container, &a.name);
    // Properties first: a clear "not found", and the size and ETag the download must match.
    let props = conn.blobs.properties(&path).await.map_err(&explain)?;
    let mut stream = conn
        .blobs
        .open_read(&path, Some(&props.etag), ReadOptions::default())
        .await
        .map_err(&explain)?;

    let mut written = 0u64;
    if let Some(tmp) = &mut tmp {
        let file = tmp
            .as_file()
            .try_clone()
            .context("opening the temporary file")?;
        let mut file = tokio::fs::File::from_std(file);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(&explain)?;
            file.write_all(&chunk)
                .await
                .with_context(|| format!("writing {}", tmp.path().display()))?;
            written += chunk.len() as u64;
        }
        file.flush().await?;
        file.sync_all()
            .await
            .with_context(|| format!("writing {}", tmp.path().display()))?;
    } else {
        let mut out = tokio::io::stdout();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(&explain)?;
            if let Err(e) = out.write_all(&chunk).await {
                return stdout_error(e);
            }
            written += chunk.len() as u64;
        }
        if let Err(e) = out.flush().await {
            return stdout_error(e);
        }
    }
    // The SDK pins every range to the first response's ETag, so a shorter stream means a
    // truncated transfer, not a changed blob: never rename a short file into place.
    if written != props.size {
        bail!(
            "downloaded {written} of {} bytes of {path}; nothing was written",
            props.size
        );
    }
    if let Some(tmp) = tmp {
        tmp.persist(&a.output)
            .with_context(|| format!("moving the download into place at {}", a.output.display()))?;
        println!(
            "wrote {path} ({written} bytes, ETag {}) to {}",
            props.etag,
            a.output.display()
        );
    }
    Ok(())
}

/// A temporary file in the destination's directory (so the final rename stays on one file
/// system), deleted when dropped unless it is persisted.
fn temp_beside(dest: &Path) -> anyhow::Result<tempfile::NamedTempFile> {
    if dest.is_dir() {
        bail!("{} is a directory; give a file name", dest.display());
    }
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let stem = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    tempfile::Builder::new()
        .prefix(&format!(".{stem}."))
        .suffix(".partial")
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a file in {}", dir.display()))
}
