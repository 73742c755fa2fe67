//! Gzip input: the decoder wrappers that tell a corrupt stream (an input error) from a failed
//! read under it (an I/O error), and a decoder on its own thread for local files.

use std::io::{self, Read};
use std::sync::mpsc;

use super::AggregateError;

/// Wraps a reader in a gzip decoder when `name` ends in `.gz`.
///
/// A truncated or corrupt gzip stream is a property of the input, not a failed read: the
/// decoder's own errors come out as [`AggregateError::CorruptGzip`] (never retried), while
/// errors of the underlying reader (a dropped connection) stay [`AggregateError::Io`].
pub fn maybe_gunzip<'a>(name: &str, reader: Box<dyn Read + 'a>) -> Box<dyn Read + 'a> {
    if name.ends_with(".gz") {
        Box::new(Gunzip(flate2::read::MultiGzDecoder::new(MarkErrors(
            reader,
        ))))
    } else {
        reader
    }
}

/// Wraps an unnamed stream (standard input) in a gzip decoder when it starts with the gzip
/// magic bytes `1f 8b`, which no CSV text starts with; other streams pass through unchanged.
pub fn sniff_gunzip<'a>(mut reader: Box<dyn Read + 'a>) -> io::Result<Box<dyn Read + 'a>> {
    // Read the first two bytes (a pipe may hand them out one at a time), then put them back
    // in front of the rest.
    let mut magic = [0u8; 2];
    let mut got = 0;
    while got < 2 {
        match reader.read(&mut magic[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let whole = io::Cursor::new(magic[..got].to_vec()).chain(reader);
    Ok(if magic[..got] == [0x1f, 0x8b] {
        Box::new(Gunzip(flate2::read::MultiGzDecoder::new(MarkErrors(whole))))
    } else {
        Box::new(whole)
    })
}

/// An error of the reader under the gzip decoder, carried through it unchanged.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
struct UnderlyingError(io::Error);

/// What the decoder itself rejected (the text is flate2's: `corrupt deflate stream`, ...).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct GzipDataError(String);

/// Tags the errors of the compressed reader so [`Gunzip`] can tell them from the decoder's.
struct MarkErrors<R>(R);

impl<R: Read> Read for MarkErrors<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0
            .read(buf)
            .map_err(|e| io::Error::new(e.kind(), UnderlyingError(e)))
    }
}

/// A gzip decoder whose own failures become [`GzipDataError`]s.
struct Gunzip<R: Read>(flate2::read::MultiGzDecoder<MarkErrors<R>>);

impl<R: Read> Read for Gunzip<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf).map_err(|e| {
            if e.get_ref()
                .is_some_and(|inner| inner.is::<UnderlyingError>())
            {
                match e
                    .into_inner()
                    .map(|inner| inner.downcast::<UnderlyingError>())
                {
                    Some(Ok(underlying)) => underlying.0,
                    _ => io::Error::other("gzip: lost the underlying error"),
                }
            } else {
                io::Error::new(io::ErrorKind::InvalidData, GzipDataError(e.to_string()))
            }
        })
    }
}

impl From<io::Error> for AggregateError {
    fn from(e: io::Error) -> Self {
        match e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<GzipDataError>())
        {
            Some(GzipDataError(what)) => AggregateError::CorruptGzip(what.clone()),
            None => AggregateError::Io(e),
        }
    }
}

/// How much decompressed text one hand-over between the decoder thread and the reducer
/// carries; the reducer's own read buffer is as large.
const CHUNK: usize = 256 * 1024;

/// Chunks decoded ahead of the reducer: enough that neither thread waits for the other on
/// a steady stream, little enough that memory stays at a few chunks (1 MiB).
const AHEAD: usize = 4;

/// Decompresses `file` on a thread of its own and hands the text over in chunks, so the
/// decoder and the reducer each get a core: for a `.gz` input the decoder is about three
/// quarters of the single-threaded instructions (callgrind, see docs/BENCHMARKS.md).
///
/// Errors keep their class: the decoder's own failures still come out as
/// [`AggregateError::CorruptGzip`] and the file's read errors as I/O errors, because the
/// thread runs the same [`maybe_gunzip`] decoder and forwards its `io::Error` unchanged.
/// Dropping the reader (the reducer stops early) ends the thread at its next hand-over.
/// Hand-rolled rather than a crate: two bounded channels (chunks one way, emptied buffers
/// back) are all it takes, and the error classes above must survive the crossing.
pub fn gunzip_on_thread<R: Read + Send + 'static>(file: R) -> Box<dyn Read + Send> {
    let (full_tx, full_rx) = mpsc::sync_channel::<io::Result<Option<Vec<u8>>>>(AHEAD);
    let (empty_tx, empty_rx) = mpsc::sync_channel::<Vec<u8>>(AHEAD + 2);
    let thread = std::thread::spawn(move || {
        let mut decoder = maybe_gunzip(".gz", Box::new(file));
        loop {
            let mut buf = empty_rx.try_recv().unwrap_or_else(|_| vec![0; CHUNK]);
            buf.resize(CHUNK, 0);
            let mut filled = 0;
            // Fill the chunk (a deflate block boundary may end a read early), or stop at
            // the end or at an error, which goes over after the text before it.
            let end = loop {
                match decoder.read(&mut buf[filled..]) {
                    Ok(0) => break Ok(true),
                    Ok(n) => {
                        filled += n;
                        if filled == CHUNK {
                            break Ok(false);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => break Err(e),
                }
            };
            buf.truncate(filled);
            if !buf.is_empty() && full_tx.send(Ok(Some(buf))).is_err() {
                return;
            }
            match end {
                Ok(false) => {}
                Ok(true) => {
                    let _ = full_tx.send(Ok(None));
                    return;
                }
                Err(e) => {
                    let _ = full_tx.send(Err(e));
                    return;
                }
            }
        }
    });
    Box::new(ChunkReader {
        full: Some(full_rx),
        empty: empty_tx,
        chunk: Vec::new(),
        at: 0,
        done: false,
        thread: Some(thread),
    })
}

/// The reducer's end of [`gunzip_on_thread`].
struct ChunkReader {
    /// Chunks in order, then `Ok(None)` at the end of the text or one error. `None` only
    /// while dropping.
    full: Option<mpsc::Receiver<io::Result<Option<Vec<u8>>>>>,
    empty: mpsc::SyncSender<Vec<u8>>,
    chunk: Vec<u8>,
    at: usize,
    done: bool,
    /// Joined on drop, so no decoder outlives its reader.
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for ChunkReader {
    fn drop(&mut self) {
        // Closing our end first makes the thread's next hand-over fail, and it returns.
        drop(self.full.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.at == self.chunk.len() {
            if self.done {
                return Ok(0);
            }
            let Some(full) = &self.full else {
                return Ok(0);
            };
            match full.recv() {
                Ok(Ok(Some(next))) => {
                    let used = std::mem::replace(&mut self.chunk, next);
                    self.at = 0;
                    // Back to the decoder for reuse; a full return line only means a fresh
                    // allocation there.
                    let _ = self.empty.try_send(used);
                }
                Ok(Ok(None)) => self.done = true,
                Ok(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                // Gone without saying the end (a panic in the decoder): the text is cut
                // short, which must not pass for the end of the file.
                Err(mpsc::RecvError) => {
                    self.done = true;
                    return Err(io::Error::other("the gzip decoder thread stopped early"));
                }
            }
        }
        let n = out.len().min(self.chunk.len() - self.at);
        out[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// Several chunks' worth, two gzip members (as `cat a.gz b.gz` makes), read back through
    /// the thread in odd-sized reads: the same text as the one-thread decoder gives.
    #[test]
    fn the_thread_hands_over_the_same_text() {
        let a: Vec<u8> = (0..700_000u32)
            .flat_map(|i| format!("{i},x\n").into_bytes())
            .collect();
        let b = b"tail,1\n".repeat(10_000);
        let mut both = gz(&a);
        both.extend(gz(&b));
        let mut want = Vec::new();
        maybe_gunzip(".gz", Box::new(&both[..]))
            .read_to_end(&mut want)
            .unwrap();
        assert_eq!(want.len(), a.len() + b.len());
        let mut r = gunzip_on_thread(io::Cursor::new(both));
        let mut got = Vec::new();
        let mut buf = vec![0; 10_007];
        loop {
            let n = r.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got == want, "{} bytes against {}", got.len(), want.len());
        assert_eq!(r.read(&mut buf).unwrap(), 0, "the end stays the end");
    }

    /// A truncated stream is still a corrupt input after crossing threads, with the text
    /// before the cut delivered first; a failing file is still an I/O error.
    #[test]
    fn errors_keep_their_class_across_the_thread() {
        let text = b"t,1\n".repeat(200_000);
        let whole = gz(&text);
        let cut = whole[..whole.len() / 2].to_vec();
        let mut got = Vec::new();
        let e = gunzip_on_thread(io::Cursor::new(cut))
            .read_to_end(&mut got)
            .unwrap_err();
        assert!(!got.is_empty() && text.starts_with(&got));
        assert!(
            matches!(AggregateError::from(e), AggregateError::CorruptGzip(_)),
            "a cut stream is corrupt input"
        );

        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::new(io::ErrorKind::ConnectionReset, "gone"))
            }
        }
        let e = gunzip_on_thread(Failing)
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
        assert!(matches!(AggregateError::from(e), AggregateError::Io(_)));
    }

    /// A reader dropped half-way ends the decoder thread (the drop joins it) instead of
    /// leaving it blocked on a full hand-over line.
    #[test]
    fn dropping_the_reader_ends_the_thread() {
        let text = b"t,1\n".repeat(2_000_000);
        let mut r = gunzip_on_thread(io::Cursor::new(gz(&text)));
        let mut buf = [0u8; 1000];
        r.read_exact(&mut buf).unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            drop(r);
            tx.send(()).unwrap();
        });
        rx.recv_timeout(std::time::Duration::from_secs(60))
            .expect("the decoder thread ended when its reader was dropped");
    }
}
