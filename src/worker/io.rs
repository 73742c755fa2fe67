//! Blocking bridges between the sync reducer and async blob storage.
//!
//! `process_one` runs the reducer in `spawn_blocking` with a [`BlobSource`] (a re-openable
//! download, counted for `rollq_bytes_read_total`, gunzipped by `.gz` suffix) and a
//! [`BlobSink`] (a few MiB buffered, then staged as blocks while the output is produced).
//! Both call async storage through `Handle::block_on` from the blocking thread, and both stop
//! at the next chunk once the work's cancellation token fires.
//!
//! Every read of the source is checked by a [`ReadCheck`]: the bytes delivered are counted
//! against the blob's size at the pinned ETag and, when the blob has a Content-MD5, hashed
//! against it. A mismatch is an [`ErrorKind::Integrity`] storage error raised at the end of
//! the input (or at the first byte too many), so it reaches the reducer as a failed read,
//! before the reducer returns and therefore before the sink's commit.

use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use md5::{Digest, Md5};

use crate::aggregate::{Sink, Source, maybe_gunzip};
use crate::storage::Op;
use crate::storage::{
    BlobPath, BlobProperties, BlobStore, BlockUpload, ByteStream, Condition, ETag, ErrorKind,
    PutOptions, ReadOptions, StorageError,
};

/// Reports storage failures (metrics, readiness) from the blocking thread.
pub trait Observe: Send + Sync {
    /// Called with every storage call's result.
    fn storage_result(&self, op: Op, error: Option<&StorageError>);
    /// Called with every downloaded chunk's size.
    fn bytes_read(&self, n: u64);
}

/// What the bridges put inside the `io::Error`s they return, so that a storage failure or a
/// cancellation survives the trip through the reducer (whose interface is `std::io`).
/// [`BridgeError::take`] is the one place that unpacks it.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// A storage call failed.
    #[error(transparent)]
    Storage(StorageError),
    /// The work's cancellation token fired; whoever cancelled knows why.
    #[error("work cancelled")]
    Cancelled,
}

impl BridgeError {
    fn into_io(self) -> io::Error {
        io::Error::other(self)
    }

    /// The payload of an error a bridge raised, or the error unchanged when it came from
    /// elsewhere (the gzip decoder's own complaints about its input).
    pub fn take(e: io::Error) -> Result<BridgeError, io::Error> {
        if !e.get_ref().is_some_and(|inner| inner.is::<BridgeError>()) {
            return Err(e);
        }
        let inner = e.into_inner().expect("checked above");
        Ok(*inner.downcast::<BridgeError>().expect("checked above"))
    }
}

/// Runs `fut` on the runtime from a blocking thread, unless `cancel` fires first.
fn block_on_cancellable<T>(
    handle: &Handle,
    cancel: &CancellationToken,
    fut: impl Future<Output = Result<T, StorageError>>,
) -> io::Result<T> {
    handle.block_on(async {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => Err(BridgeError::Cancelled.into_io()),
            r = fut => r.map_err(|e| BridgeError::Storage(e).into_io()),
        }
    })
}

// === impl ReadCheck ===

/// What one read of the input must deliver, at the pinned ETag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expected {
    /// The blob's size in bytes (compressed size for `.gz`: the check runs under the
    /// decoder, on the bytes as stored).
    pub size: u64,
    /// The blob's Content-MD5, when it has one (Put Blob sets it; a block upload only when the
    /// uploader supplied it, as `rollq submit` does). `None` skips the hash.
    pub content_md5: Option<[u8; 16]>,
}

impl Expected {
    /// From the properties of the read that pinned the ETag: the first GET's own headers
    /// (`Content-Range` total, `x-ms-blob-content-md5`), see [`BlobStore::download`].
    pub fn from_properties(p: &BlobProperties) -> Self {
        Expected {
            size: p.size,
            content_md5: p.content_md5,
        }
    }
}

/// How the bytes delivered differ from what was expected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    /// The input ended early.
    #[error("short read: expected {expected} bytes, received {received}")]
    Short { expected: u64, received: u64 },
    /// More bytes arrived than the blob holds (stopped at the first chunk past the size).
    #[error("long read: expected {expected} bytes, received at least {received}")]
    Long { expected: u64, received: u64 },
    /// The right number of bytes, but not the blob's bytes.
    #[error("content-md5 mismatch: expected {expected}, computed {computed} over {size} bytes")]
    Md5 {
        expected: String,
        computed: String,
        size: u64,
    },
}

/// Counts (and hashes, when there is a Content-MD5) the bytes of one read from its first byte.
/// Sync and free of storage, so the cost can be measured alone (`examples/read_check.rs`).
pub struct ReadCheck {
    expected: Expected,
    received: u64,
    /// `None` when the blob has no Content-MD5.
    md5: Option<Md5>,
}

impl ReadCheck {
    /// A check of a read that starts at the blob's first byte.
    pub fn new(expected: Expected) -> Self {
        ReadCheck {
            expected,
            received: 0,
            md5: expected.content_md5.map(|_| Md5::new()),
        }
    }

    /// Takes the next chunk; fails as soon as the count passes the size, so a runaway
    /// response is not read to its end.
    pub fn update(&mut self, chunk: &[u8]) -> Result<(), Mismatch> {
        self.received += chunk.len() as u64;
        if self.received > self.expected.size {
            return Err(Mismatch::Long {
                expected: self.expected.size,
                received: self.received,
            });
        }
        if let Some(h) = &mut self.md5 {
            h.update(chunk);
        }
        Ok(())
    }

    /// At the end of the input: the count first (a short read cannot match the hash either,
    /// and the count is the clearer message), then the hash.
    pub fn finish(self) -> Result<(), Mismatch> {
        let (expected, received) = (self.expected.size, self.received);
        if received < expected {
            return Err(Mismatch::Short { expected, received });
        }
        if received > expected {
            return Err(Mismatch::Long { expected, received });
        }
        match (self.md5, self.expected.content_md5) {
            (Some(h), Some(want)) => {
                let got: [u8; 16] = h.finalize().into();
                if got == want {
                    Ok(())
                } else {
                    Err(Mismatch::Md5 {
                        expected: hex(&want),
                        computed: hex(&got),
                        size: self.received,
                    })
                }
            }
            _ => Ok(()),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// === impl BlobSource ===

/// The input blob as a re-openable `Source`, pinned to the ETag read before the work began:
/// a blob replaced mid-read fails with `PreconditionFailed` instead of mixing two versions,
/// and every read is checked against `expect` (see [`ReadCheck`]).
pub struct BlobSource {
    pub blobs: Arc<dyn BlobStore>,
    pub path: BlobPath,
    pub etag: ETag,
    /// Size and Content-MD5 at `etag`.
    pub expect: Expected,
    pub opts: ReadOptions,
    pub handle: Handle,
    pub cancel: CancellationToken,
    pub observe: Arc<dyn Observe>,
    /// The last read's unread stream and its check, left here when the reducer drops a read
    /// before its end (an input error, or a streaming pass giving way to holding mode), so
    /// [`BlobSource::verify_rest`] can finish the check. Replaced by every `open`.
    pub rest: Mutex<Option<(ByteStream, ReadCheck)>>,
    /// The stream of the GET that pinned `etag` (the pipeline's first request for the job),
    /// used by the first `open` so the input's first bytes are not asked for twice; later
    /// opens (a re-read) send a new GET with If-Match on `etag`.
    pub first: Option<ByteStream>,
}

impl BlobSource {
    /// Finishes the check of a read the reducer stopped early, by reading the rest of it.
    ///
    /// Called before an input error poisons the message: bytes altered on the way fail the
    /// Content-MD5 only at the end, while the reducer may trip over them (a bad row, a corrupt
    /// gzip stream) long before. Then the integrity error, a retried one, is what happened,
    /// and the input error is not. A blob without Content-MD5 has nothing more to tell (a
    /// count cannot go wrong before the end), so nothing is read.
    pub fn verify_rest(&self) -> io::Result<()> {
        let Some((stream, check)) = self.rest.lock().unwrap().take() else {
            return Ok(());
        };
        if check.md5.is_none() {
            return Ok(());
        }
        let mut reader = StreamRead {
            stream,
            chunk: Bytes::new(),
            check: Some(check),
            source: self,
        };
        let drained = io::copy(&mut reader, &mut io::sink()).map(|_| ());
        // Nothing is left to verify, whatever happened.
        reader.check = None;
        drained
    }
}

impl Source for BlobSource {
    fn open(&mut self) -> io::Result<Box<dyn Read + '_>> {
        *self.rest.lock().unwrap() = None;
        let first = self.first.take();
        let stream = block_on_cancellable(&self.handle, &self.cancel, async {
            if let Some(stream) = first {
                return Ok(stream);
            }
            let r = self
                .blobs
                .open_read(&self.path, Some(&self.etag), self.opts)
                .await;
            self.observe.storage_result(Op::Download, r.as_ref().err());
            r
        })?;
        let reader = StreamRead {
            stream,
            chunk: Bytes::new(),
            check: Some(ReadCheck::new(self.expect)),
            source: self,
        };
        let name = reader.source.path.name.clone();
        Ok(maybe_gunzip(&name, Box::new(reader)))
    }

    fn can_reopen(&self) -> bool {
        true
    }
}

/// Pulls one downloaded chunk at a time; holds at most one chunk.
struct StreamRead<'a> {
    stream: ByteStream,
    chunk: Bytes,
    /// Until the end of the stream was checked; `None` after, so a reader asked again after
    /// its end answers end of input instead of checking twice.
    check: Option<ReadCheck>,
    source: &'a BlobSource,
}

impl Drop for StreamRead<'_> {
    fn drop(&mut self) {
        // Dropped before its end was checked: keep the rest for `verify_rest`.
        if let Some(check) = self.check.take() {
            let stream = std::mem::replace(&mut self.stream, Box::pin(futures::stream::empty()));
            *self.source.rest.lock().unwrap() = Some((stream, check));
        }
    }
}

impl StreamRead<'_> {
    /// A mismatch as the storage error the rest of the worker classifies, counted like any
    /// other failed download.
    fn integrity(&self, m: Mismatch) -> io::Error {
        let src = self.source;
        let e = StorageError::new(
            ErrorKind::Integrity,
            Op::Download,
            src.path.to_string(),
            format!("{m} at ETag {}", src.etag),
        );
        src.observe.storage_result(Op::Download, Some(&e));
        BridgeError::Storage(e).into_io()
    }
}

impl Read for StreamRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            let src = self.source;
            let next = block_on_cancellable(&src.handle, &src.cancel, async {
                match self.stream.next().await {
                    None => Ok(None),
                    Some(Ok(b)) => Ok(Some(b)),
                    Some(Err(e)) => {
                        src.observe.storage_result(Op::Download, Some(&e));
                        Err(e)
                    }
                }
            })?;
            match next {
                None => {
                    // The end of the input is the one place a short read shows: check before
                    // the reducer sees end of input, so it fails instead of finishing.
                    return match self.check.take().map(ReadCheck::finish) {
                        Some(Err(m)) => Err(self.integrity(m)),
                        _ => Ok(0),
                    };
                }
                Some(b) => {
                    src.observe.bytes_read(b.len() as u64);
                    // The check stays: a caller that reads on after the error keeps getting it.
                    if let Some(Err(m)) = self.check.as_mut().map(|c| c.update(&b)) {
                        return Err(self.integrity(m));
                    }
                    self.chunk = b;
                }
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        let _ = self.chunk.split_to(n);
        Ok(n)
    }
}

/// The output blob as a `Sink`: buffers `block_bytes`, then stages blocks; nothing becomes
/// visible until [`BlobSink::finish`] commits under the write condition in `opts`.
pub struct BlobSink {
    blobs: Arc<dyn BlobStore>,
    path: BlobPath,
    opts: PutOptions,
    block_bytes: usize,
    buf: Vec<u8>,
    /// The upload in progress, started at the first full block. Dropping it (restart, error)
    /// leaves nothing visible.
    upload: Option<Box<dyn BlockUpload>>,
    handle: Handle,
    cancel: CancellationToken,
    observe: Arc<dyn Observe>,
}

impl BlobSink {
    /// A sink writing `path` under `opts` (condition and metadata).
    pub fn new(
        blobs: Arc<dyn BlobStore>,
        path: BlobPath,
        opts: PutOptions,
        block_bytes: usize,
        handle: Handle,
        cancel: CancellationToken,
        observe: Arc<dyn Observe>,
    ) -> Self {
        BlobSink {
            blobs,
            path,
            opts,
            block_bytes: block_bytes.max(1),
            buf: Vec::new(),
            upload: None,
            handle,
            cancel,
            observe,
        }
    }

    fn stage_buffer(&mut self) -> io::Result<()> {
        // A full-size buffer up front: growing a fresh Vec by doubling for every block
        // churns the allocator and raises the peak for no benefit.
        let next = Vec::with_capacity(self.block_bytes);
        let block = Bytes::from(std::mem::replace(&mut self.buf, next));
        let blobs = self.blobs.clone();
        let observe = self.observe.clone();
        let (path, opts) = (self.path.clone(), self.opts.clone());
        let mut upload = self.upload.take();
        let upload = block_on_cancellable(&self.handle, &self.cancel, async move {
            let mut up = match upload.take() {
                Some(up) => up,
                None => {
                    let r = blobs.start_upload(&path, opts).await;
                    observe.storage_result(Op::StageBlock, r.as_ref().err());
                    r?
                }
            };
            let r = up.stage(block).await;
            observe.storage_result(Op::StageBlock, r.as_ref().err());
            r.map(|()| up)
        })?;
        self.upload = Some(upload);
        Ok(())
    }

    /// Writes what is left and makes the output visible: one Put Blob when it all fit in
    /// the buffer, else the last block and Put Block List. Returns the output's ETag, or,
    /// when the write was `IfNotExists` and an output is already there, the unwritten output
    /// ([`Finish::Exists`]) for the caller to decide about.
    pub fn finish(mut self) -> io::Result<Finish> {
        let blobs = self.blobs.clone();
        let observe = self.observe.clone();
        let pending = match self.upload.take() {
            None => Unwritten::Body(Bytes::from(std::mem::take(&mut self.buf))),
            Some(up) => {
                self.upload = Some(up);
                if !self.buf.is_empty() {
                    self.stage_buffer()?;
                }
                Unwritten::Staged(self.upload.take().expect("staged above"))
            }
        };
        let mut pending = Pending {
            blobs,
            path: self.path.clone(),
            opts: self.opts.clone(),
            observe,
            unwritten: pending,
        };
        let condition = self.opts.condition.clone();
        let r = block_on_cancellable(&self.handle, &self.cancel, async {
            match pending.write(condition.clone()).await {
                Err(e) if condition == Condition::IfNotExists && e.is_existing_blob() => Ok(None),
                r => r.map(Some),
            }
        })?;
        Ok(match r {
            Some(etag) => Finish::Written(etag),
            None => Finish::Exists(pending),
        })
    }
}

/// How [`BlobSink::finish`] ended.
#[derive(Debug)]
pub enum Finish {
    /// The output is committed with this ETag.
    Written(ETag),
    /// `IfNotExists` found an output already there; nothing was written. The caller looks at
    /// the existing output and either leaves it or writes over it with [`Pending::write`].
    Exists(Pending),
}

/// An output produced but not committed because its `IfNotExists` write met an existing
/// blob: the whole body (small outputs) or the staged blocks (large ones), so writing it
/// over the existing output is one request, without redoing the work.
pub struct Pending {
    blobs: Arc<dyn BlobStore>,
    path: BlobPath,
    opts: PutOptions,
    observe: Arc<dyn Observe>,
    unwritten: Unwritten,
}

enum Unwritten {
    Body(Bytes),
    /// Dropping it leaves the blocks uncommitted (collected by the service).
    Staged(Box<dyn BlockUpload>),
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Pending {
    /// Writes the output under `condition` (one Put Blob or one Put Block List); may be
    /// called again after a refusal.
    pub async fn write(&mut self, condition: Condition) -> Result<ETag, StorageError> {
        match &mut self.unwritten {
            Unwritten::Body(body) => {
                let opts = PutOptions {
                    condition,
                    ..self.opts.clone()
                };
                let r = self.blobs.put(&self.path, body.clone(), opts).await;
                self.observe.storage_result(Op::Upload, r.as_ref().err());
                r
            }
            Unwritten::Staged(up) => {
                let r = up.commit_with(condition).await;
                self.observe
                    .storage_result(Op::CommitBlockList, r.as_ref().err());
                r
            }
        }
    }
}

impl Write for BlobSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = self.block_bytes - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= self.block_bytes {
            self.stage_buffer()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        // Blocks are staged when full; the rest goes out in `finish`.
        Ok(())
    }
}

impl Sink for BlobSink {
    fn restart(&mut self) -> io::Result<()> {
        // The staged blocks were never committed: dropping the upload discards them.
        self.upload = None;
        self.buf.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::memory::MemoryBlobStore;
    use crate::storage::{Condition, ErrorKind};
    use crate::worker::error::JobError;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[derive(Default)]
    struct Count(AtomicU64, AtomicU64);
    impl Observe for Count {
        fn storage_result(&self, _op: Op, e: Option<&StorageError>) {
            if e.is_some() {
                self.1.fetch_add(1, Ordering::SeqCst);
            }
        }
        fn bytes_read(&self, n: u64) {
            self.0.fetch_add(n, Ordering::SeqCst);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn source_reads_counts_and_reopens_and_sink_stages_blocks() {
        let store = MemoryBlobStore::new();
        store.create_container_if_missing("c").await.unwrap();
        let input = BlobPath::new("c", "in.csv");
        let etag = store
            .put(
                &input,
                Bytes::from_static(b"0123456789"),
                PutOptions::default(),
            )
            .await
            .unwrap();
        let blobs: Arc<dyn BlobStore> = Arc::new(store.clone());
        let count = Arc::new(Count::default());
        let handle = Handle::current();
        let (b2, c2, h2) = (blobs.clone(), count.clone(), handle.clone());
        let out = BlobPath::new("c", "out.csv");
        let out2 = out.clone();
        let etag_out = tokio::task::spawn_blocking(move || {
            let mut src = BlobSource {
                blobs: b2.clone(),
                path: input,
                etag,
                expect: Expected {
                    size: 10,
                    content_md5: None,
                },
                opts: ReadOptions {
                    partition_bytes: 3,
                    parallel: 1,
                },
                handle: h2.clone(),
                cancel: CancellationToken::new(),
                observe: c2.clone(),
                rest: Mutex::default(),
                first: None,
            };
            let mut text = String::new();
            src.open().unwrap().read_to_string(&mut text).unwrap();
            assert_eq!(text, "0123456789");
            let mut again = String::new();
            src.open().unwrap().read_to_string(&mut again).unwrap();
            assert_eq!(again, text);
            let opts = PutOptions {
                condition: Condition::IfNotExists,
                ..Default::default()
            };
            let mut sink = BlobSink::new(b2, out2, opts, 4, h2, CancellationToken::new(), c2);
            sink.write_all(b"discarded output").unwrap();
            sink.restart().unwrap();
            sink.write_all(b"abcdefghij").unwrap();
            match sink.finish().unwrap() {
                Finish::Written(etag) => etag,
                other => panic!("expected a write, got {other:?}"),
            }
        })
        .await
        .unwrap();
        assert_eq!(count.0.load(Ordering::SeqCst), 20);
        assert_eq!(store.get(&out).unwrap(), Bytes::from_static(b"abcdefghij"));
        assert_eq!(store.properties(&out).await.unwrap().etag, etag_out);
    }

    #[test]
    fn read_check_counts_and_hashes() {
        let body = b"Datetime,T\n2020-01-01 00:00:00,1\n";
        let md5: [u8; 16] = Md5::digest(body).into();
        let exact = Expected {
            size: body.len() as u64,
            content_md5: Some(md5),
        };
        let run = |expected: Expected, chunks: &[&[u8]]| {
            let mut c = ReadCheck::new(expected);
            for ch in chunks {
                c.update(ch)?;
            }
            c.finish()
        };
        let (a, b) = body.split_at(7);
        assert_eq!(run(exact, &[a, b]), Ok(()));
        assert_eq!(
            run(
                Expected {
                    content_md5: None,
                    ..exact
                },
                &[body]
            ),
            Ok(())
        );
        assert_eq!(
            run(exact, &[a]),
            Err(Mismatch::Short {
                expected: body.len() as u64,
                received: 7
            })
        );
        assert_eq!(
            run(exact, &[body, b"x"]),
            Err(Mismatch::Long {
                expected: body.len() as u64,
                received: body.len() as u64 + 1
            })
        );
        let mut flipped = body.to_vec();
        flipped[12] ^= 1;
        let err = run(exact, &[&flipped]).unwrap_err();
        assert!(matches!(err, Mismatch::Md5 { .. }), "{err:?}");
        assert!(err.to_string().contains(&hex(&md5)), "{err}");
    }

    /// Runs the worker's reduce over `input` (as the pipeline does: source, reducer, then the
    /// sink's commit only when the reducer succeeded) into `c/out.csv`.
    async fn reduce_into_out(
        store: &MemoryBlobStore,
        input: &BlobPath,
    ) -> Result<crate::aggregate::Report, JobError> {
        let props = store.properties(input).await.unwrap();
        let blobs: Arc<dyn BlobStore> = Arc::new(store.clone());
        let observe: Arc<dyn Observe> = Arc::new(Count::default());
        let handle = Handle::current();
        let input = input.clone();
        tokio::task::spawn_blocking(move || {
            let mut src = BlobSource {
                blobs: blobs.clone(),
                path: input,
                etag: props.etag.clone(),
                expect: Expected::from_properties(&props),
                opts: ReadOptions {
                    partition_bytes: 64,
                    parallel: 1,
                },
                handle: handle.clone(),
                cancel: CancellationToken::new(),
                observe: observe.clone(),
                rest: Mutex::default(),
                first: None,
            };
            // Small blocks: the output is staged while the input is read, so "nothing
            // committed" is about the commit, not about nothing having been written.
            let mut sink = BlobSink::new(
                blobs,
                BlobPath::new("c", "out.csv"),
                PutOptions::default(),
                16,
                handle,
                CancellationToken::new(),
                observe,
            );
            let spec = crate::aggregate::Spec::default();
            let report = crate::aggregate::run(&spec, &mut src, &mut sink)
                .map_err(|e| JobError::from_aggregate(e, || JobError::Shutdown))?;
            sink.finish()
                .map_err(|e| JobError::from_aggregate(e.into(), || JobError::Shutdown))?;
            Ok(report)
        })
        .await
        .unwrap()
    }

    fn seed(hours: u64) -> Vec<u8> {
        let mut v = Vec::new();
        crate::aggregate::bench_support::write_seed_rows(hours * 60, &mut v).unwrap();
        v
    }

    /// Issue 11: bytes that are not the blob's (same size, one digit changed) fail the read
    /// with an integrity error, retried as a platform failure, and no output is committed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn content_md5_mismatch_is_a_retried_read_failure_and_commits_nothing() {
        let store = MemoryBlobStore::new();
        store.create_container_if_missing("c").await.unwrap();
        let input = BlobPath::new("c", "in.csv");
        let body = seed(5);
        store
            .put(&input, Bytes::from(body.clone()), PutOptions::default())
            .await
            .unwrap();
        let props = store.properties(&input).await.unwrap();
        let want: [u8; 16] = Md5::digest(&body).into();
        assert_eq!(
            props.content_md5,
            Some(want),
            "the fake stores Put Blob's MD5"
        );

        let mut bad = body.clone();
        let last_digit = bad.len() - 2;
        bad[last_digit] = if bad[last_digit] == b'1' { b'2' } else { b'1' };
        store.tamper(&input, Bytes::from(bad));
        let err = reduce_into_out(&store, &input).await.unwrap_err();
        match &err {
            JobError::Storage(se) => {
                assert_eq!(se.kind, ErrorKind::Integrity);
                assert!(se.message.contains("content-md5 mismatch"), "{se}");
            }
            other => panic!("expected an integrity error, got {other:?}"),
        }
        assert_eq!(err.class(), super::super::error::Class::Platform);
        assert!(store.get(&BlobPath::new("c", "out.csv")).is_none());

        // The same blob read intact completes.
        store.tamper(&input, Bytes::from(body));
        let report = reduce_into_out(&store, &input).await.unwrap();
        assert_eq!(report.rows, 5 * 60);
        assert!(store.get(&BlobPath::new("c", "out.csv")).is_some());
    }

    /// Issue 11: a short read of a `.gz` input is the read's failure, not a corrupt file: the
    /// count fails before the decoder can call the stream truncated (which would poison it).
    /// Same for plain CSV, where a read cut at a line end would otherwise go unnoticed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn short_reads_of_gzip_and_csv_are_integrity_errors_and_commit_nothing() {
        use std::io::Write as _;
        let store = MemoryBlobStore::new();
        store.create_container_if_missing("c").await.unwrap();
        let csv = seed(3);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&csv).unwrap();
        let gz = gz.finish().unwrap();
        // The CSV cut at a line end: a well-formed, shorter file.
        let cut = csv[..csv.len() / 2]
            .iter()
            .rposition(|&b| b == b'\n')
            .unwrap()
            + 1;
        for (name, body, short) in [
            ("in.csv.gz", gz.clone(), gz[..gz.len() / 2].to_vec()),
            ("in.csv", csv.clone(), csv[..cut].to_vec()),
        ] {
            let input = BlobPath::new("c", name);
            store
                .put(&input, Bytes::from(body.clone()), PutOptions::default())
                .await
                .unwrap();
            store.tamper(&input, Bytes::from(short.clone()));
            let err = reduce_into_out(&store, &input).await.unwrap_err();
            match &err {
                JobError::Storage(se) => {
                    assert_eq!(se.kind, ErrorKind::Integrity, "{name}");
                    let text = format!(
                        "short read: expected {} bytes, received {}",
                        body.len(),
                        short.len()
                    );
                    assert!(se.message.contains(&text), "{name}: {se}");
                }
                other => panic!("{name}: expected an integrity error, got {other:?}"),
            }
            assert_eq!(err.class(), super::super::error::Class::Platform, "{name}");
            assert!(
                store.get(&BlobPath::new("c", "out.csv")).is_none(),
                "{name}"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cancellation_stops_a_read_and_an_existing_output_comes_back_unwritten() {
        let store = MemoryBlobStore::new();
        store.create_container_if_missing("c").await.unwrap();
        let input = BlobPath::new("c", "in.csv");
        let etag = store
            .put(&input, Bytes::from_static(b"abc"), PutOptions::default())
            .await
            .unwrap();
        let blobs: Arc<dyn BlobStore> = Arc::new(store.clone());
        let observe: Arc<dyn Observe> = Arc::new(Count::default());
        let handle = Handle::current();
        let cancel = CancellationToken::new();
        cancel.cancel();
        let (b, o, h, p) = (
            blobs.clone(),
            observe.clone(),
            handle.clone(),
            input.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let mut src = BlobSource {
                blobs: b.clone(),
                path: p.clone(),
                etag,
                expect: Expected {
                    size: 3,
                    content_md5: None,
                },
                opts: ReadOptions::default(),
                handle: h.clone(),
                cancel,
                observe: o.clone(),
                rest: Mutex::default(),
                first: None,
            };
            let err = src.open().err().unwrap();
            assert!(matches!(BridgeError::take(err), Ok(BridgeError::Cancelled)));
            let opts = PutOptions {
                condition: Condition::IfNotExists,
                ..Default::default()
            };
            // One Put Blob (1 KiB blocks) and one staged upload (2-byte blocks), each
            // `IfNotExists` over the existing input: nothing is written, the output comes back
            // unwritten, and it can be written over the existing blob with its ETag only.
            for (block_bytes, body) in [(1024, &b"x"[..]), (2, &b"xyz"[..])] {
                let before = h.block_on(b.properties(&p)).unwrap();
                let mut sink = BlobSink::new(
                    b.clone(),
                    p.clone(),
                    opts.clone(),
                    block_bytes,
                    h.clone(),
                    CancellationToken::new(),
                    o.clone(),
                );
                sink.write_all(body).unwrap();
                let Finish::Exists(mut pending) = sink.finish().unwrap() else {
                    panic!("an existing blob must not be written over by IfNotExists");
                };
                let after = h.block_on(b.properties(&p)).unwrap();
                assert_eq!(after.etag, before.etag, "nothing written");
                let stale = Condition::IfMatch(ETag("\"stale\"".into()));
                let err = h.block_on(pending.write(stale)).unwrap_err();
                assert_eq!(err.kind, ErrorKind::PreconditionFailed);
                let etag = h
                    .block_on(pending.write(Condition::IfMatch(before.etag.clone())))
                    .unwrap();
                assert_ne!(etag, before.etag);
                let mut got = Vec::new();
                let mut stream = h
                    .block_on(b.open_read(&p, Some(&etag), ReadOptions::default()))
                    .unwrap();
                while let Some(chunk) = h.block_on(stream.next()) {
                    got.extend_from_slice(&chunk.unwrap());
                }
                assert_eq!(got, body, "block size {block_bytes}");
            }
        })
        .await
        .unwrap();
    }
}
