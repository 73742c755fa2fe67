//! The cost of the worker's read check: the reducer over a file held in memory, its bytes
//! handed on in download-sized chunks through the same `ReadCheck` the worker's blob source
//! uses (`worker::io`), without Azure. Modes:
//!
//! - `off`: no check (the reducer alone, the baseline);
//! - `count`: the byte count only (a blob without Content-MD5);
//! - `md5`: the byte count and the MD5 (a blob with Content-MD5, the default for uploads);
//! - `md5-only`: count and MD5 over the bytes copied out without the reducer;
//! - `setup`: reading the file and the uploader's digest only (subtract it from the others).
//!
//! Run with `cargo run --release --example read_check -- FILE md5`. It prints the output's
//! size so the reducer's work cannot be optimised away.

use std::io::{self, Read};

use md5::{Digest, Md5};
use rollq::aggregate::{self, Sink, Source, Spec};
use rollq::worker::io::{Expected, ReadCheck};

/// The worker's default download partition: the check sees chunks this large.
const CHUNK: usize = 4 << 20;

struct Checked<'a> {
    data: &'a [u8],
    expect: Option<Expected>,
}

impl Source for Checked<'_> {
    fn open(&mut self) -> io::Result<Box<dyn Read + '_>> {
        Ok(Box::new(ChunkRead {
            rest: self.data,
            chunk: &[],
            check: self.expect.map(ReadCheck::new),
        }))
    }
    fn can_reopen(&self) -> bool {
        true
    }
}

/// Like the worker's stream reader: takes one chunk at a time, checks it on arrival and
/// checks the whole at the end.
struct ChunkRead<'a> {
    rest: &'a [u8],
    chunk: &'a [u8],
    check: Option<ReadCheck>,
}

impl Read for ChunkRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.chunk.is_empty() {
            if self.rest.is_empty() {
                if let Some(c) = self.check.take() {
                    c.finish().map_err(io::Error::other)?;
                }
                return Ok(0);
            }
            let n = CHUNK.min(self.rest.len());
            (self.chunk, self.rest) = self.rest.split_at(n);
            if let Some(c) = &mut self.check {
                c.update(self.chunk).map_err(io::Error::other)?;
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        self.chunk = &self.chunk[n..];
        Ok(n)
    }
}

struct Out(Vec<u8>);
impl io::Write for Out {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
impl Sink for Out {
    fn restart(&mut self) -> io::Result<()> {
        self.0.clear();
        Ok(())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: read_check FILE off|count|md5|md5-only")?;
    let mode = args.next().unwrap_or_else(|| "md5".into());
    let data = std::fs::read(&path)?;
    let size = data.len() as u64;
    let md5: [u8; 16] = Md5::digest(&data).into();
    // The digest above is the uploader's (the service computes it at Put Blob). It is set-up,
    // computed in every mode, so differences between the modes are the check's own cost.
    let expect = match mode.as_str() {
        "off" => None,
        "count" => Some(Expected {
            size,
            content_md5: None,
        }),
        "setup" => {
            println!("{size} bytes, md5 {:02x?}", md5);
            return Ok(());
        }
        "md5" | "md5-only" => Some(Expected {
            size,
            content_md5: Some(md5),
        }),
        other => return Err(format!("unknown mode {other:?}").into()),
    };
    let mut src = Checked {
        data: &data,
        expect,
    };
    if mode == "md5-only" {
        let n = io::copy(&mut src.open()?, &mut io::sink())?;
        println!("checked {n} bytes");
        return Ok(());
    }
    let mut out = Out(Vec::new());
    let report = aggregate::run(&Spec::default(), &mut src, &mut out)?;
    println!("{} rows, {} output bytes", report.rows, out.0.len());
    Ok(())
}
