//! `rollq aggregate`: roll up one local CSV file or stdin.
//!
//! Output goes to a temporary file beside the target, renamed into place only after the run
//! succeeds, so a failed run leaves no output file and never a half-written one.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::aggregate::{self, Mode, ReducerArgs, Sink, Source};

/// Arguments of `rollq aggregate`.
#[derive(Debug, clap::Args)]
pub struct AggregateArgs {
    /// Input CSV file (`.gz` is decompressed on the fly), or `-` for stdin (gzip or plain).
    #[arg(value_name = "INPUT")]
    pub input: String,

    /// Output file, or `-` for stdout [default: beside the input, named as the worker names
    /// outputs: `t.csv` → `t_aggregated.csv`, any other name kept whole, `t.csv.gz` →
    /// `t.csv.gz_aggregated_aggregated.csv`].
    #[arg(short, long, env = "ROLLQ_OUTPUT", value_name = "OUTPUT")]
    pub output: Option<String>,

    /// Threads for a local file (an uncompressed one is split at line boundaries, a `.gz`
    /// one is decompressed on a thread of its own; the output is the same for any value)
    /// [default: the CPUs this process may use]. Standard input is read on one thread.
    #[arg(long, env = "ROLLQ_THREADS", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub threads: Option<u32>,

    #[command(flatten)]
    pub reducer: ReducerArgs,
}

/// A local file, re-readable for holding mode.
struct FileSource {
    path: PathBuf,
    /// `--threads`: above 1, a `.gz` file is decompressed on a thread of its own.
    threads: usize,
}

impl Source for FileSource {
    fn open(&mut self) -> io::Result<Box<dyn Read + '_>> {
        let file = File::open(&self.path)?;
        let name = self.path.to_string_lossy();
        if self.threads > 1 && name.ends_with(".gz") {
            return Ok(aggregate::gunzip_on_thread(file));
        }
        Ok(aggregate::maybe_gunzip(&name, Box::new(file)))
    }
    fn can_reopen(&self) -> bool {
        true
    }
}

/// Standard input: read once, so the reducer holds buckets from the start.
struct StdinSource {
    used: bool,
}

impl Source for StdinSource {
    fn open(&mut self) -> io::Result<Box<dyn Read + '_>> {
        if std::mem::replace(&mut self.used, true) {
            return Err(io::Error::other("standard input cannot be read twice"));
        }
        // Unnamed, so a gzip stream is recognised by its magic bytes rather than a `.gz`.
        aggregate::sniff_gunzip(Box::new(io::stdin().lock()))
    }
    fn can_reopen(&self) -> bool {
        false
    }
}

/// A temporary file in the output's directory, renamed over the output by `commit`; removed
/// on drop if never committed.
struct TempFileSink {
    tmp: PathBuf,
    file: BufWriter<File>,
    committed: bool,
}

impl TempFileSink {
    fn create(target: &Path) -> io::Result<Self> {
        let dir = target
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = target
            .file_name()
            .map_or_else(|| "output".into(), |n| n.to_string_lossy().into_owned());
        let tmp = dir.join(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
        let file = File::options().write(true).create_new(true).open(&tmp)?;
        Ok(Self {
            tmp,
            file: BufWriter::with_capacity(256 * 1024, file),
            committed: false,
        })
    }

    fn commit(mut self, target: &Path) -> io::Result<()> {
        self.file.flush()?;
        self.file.get_ref().sync_all()?;
        fs::rename(&self.tmp, target)?;
        self.committed = true;
        Ok(())
    }
}

impl Write for TempFileSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Sink for TempFileSink {
    fn restart(&mut self) -> io::Result<()> {
        self.file.flush()?;
        let f = self.file.get_mut();
        f.set_len(0)?;
        f.rewind()?;
        Ok(())
    }
}

impl Drop for TempFileSink {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Standard output; cannot take back what it wrote, so the reducer holds buckets and writes
/// only complete output.
struct StdoutSink(io::StdoutLock<'static>);

impl Write for StdoutSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl Sink for StdoutSink {
    fn restart(&mut self) -> io::Result<()> {
        Err(io::Error::other("standard output cannot be restarted"))
    }
    fn can_restart(&self) -> bool {
        false
    }
}

/// Runs `rollq aggregate`.
pub fn run(args: AggregateArgs) -> anyhow::Result<()> {
    let spec = args.reducer.to_spec().map_err(anyhow::Error::msg)?;
    let output = match (&args.output, args.input.as_str()) {
        (Some(o), _) => o.clone(),
        (None, "-") => "-".to_string(),
        (None, input) => crate::contract::output_name(input),
    };
    let threads = args
        .threads
        .map_or_else(aggregate::default_threads, |n| n as usize);
    let (mut source, local): (Box<dyn Source>, _) = if args.input == "-" {
        (Box::new(StdinSource { used: false }), None)
    } else {
        let path = PathBuf::from(&args.input);
        // Open once up front so a missing file is reported before any output is created.
        File::open(&path).with_context(|| format!("cannot open {}", args.input))?;
        let source = FileSource {
            path: path.clone(),
            threads,
        };
        (Box::new(source), Some(path))
    };
    // A local file may be split across threads; standard input is read once, in order.
    let mut reduce = |sink: &mut dyn Sink| match &local {
        Some(path) => aggregate::run_parallel(&spec, path, threads, source.as_mut(), sink),
        None => aggregate::run(&spec, source.as_mut(), sink),
    };
    let what = if args.input == "-" {
        "standard input"
    } else {
        args.input.as_str()
    };
    let report = if output == "-" {
        let mut sink = StdoutSink(io::stdout().lock());
        reduce(&mut sink).with_context(|| format!("rolling up {what}"))?
    } else {
        let target = PathBuf::from(&output);
        let mut sink = TempFileSink::create(&target)
            .with_context(|| format!("cannot create the output beside {output}"))?;
        let report = reduce(&mut sink).with_context(|| format!("rolling up {what}"))?;
        sink.commit(&target)
            .with_context(|| format!("cannot write {output}"))?;
        report
    };
    let mode = match report.mode {
        Some(Mode::Streaming) => "streaming",
        _ => "holding",
    };
    eprintln!(
        "rollq: {} rows, {} bad rows skipped, {} buckets ({mode}), {} bytes read -> {}",
        report.rows,
        report.bad_rows,
        report.buckets,
        report.bytes_read,
        if output == "-" {
            "standard output"
        } else {
            output.as_str()
        }
    );
    Ok(())
}
