//! Blocking bridges between the sync reducer and async blob storage.
//!
//! `process_one` runs the reducer in `spawn_blocking` with a [`BlobSource`] (a re-openable
//! download, counted for `rollq_bytes_read_total`, gunzipped by `.gz` suffix) and a
//! [`BlobSink`] (a few MiB buffered, then staged as blocks while the output is produced).
//! Both call async storage through `Handle::block_on` from the blocking thread, and both stop
//! at the next chunk once the work's cancellation token fires.

use std::io::{self, Read, Write};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use crate::aggregate::{Sink, Source, maybe_gunzip};
use crate::storage::Op;
use crate::storage::{
    BlobPath, BlobStore, BlockUpload, ByteStream, ETag, PutOptions, ReadOptions, StorageError,
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

/// The input blob as a re-openable `Source`, pinned to the ETag read before the work began:
/// a blob replaced mid-read fails with `PreconditionFailed` instead of mixing two versions.
pub struct BlobSource {
    pub blobs: Arc<dyn BlobStore>,
    pub path: BlobPath,
    pub etag: ETag,
    pub opts: ReadOptions,
    pub handle: Handle,
    pub cancel: CancellationToken,
    pub observe: Arc<dyn Observe>,
}

impl Source for BlobSource {
    fn open(&mut self) -> io::Result<Box<dyn Read + '_>> {
        let stream = block_on_cancellable(&self.handle, &self.cancel, async {
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
    source: &'a BlobSource,
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
                None => return Ok(0),
                Some(b) => {
                    src.observe.bytes_read(b.len() as u64);
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
    /// the buffer, else the last block and Put Block List. Returns the output's ETag.
    pub fn finish(mut self) -> io::Result<ETag> {
        let blobs = self.blobs.clone();
        let observe = self.observe.clone();
        match self.upload.take() {
            None => {
                let body = Bytes::from(std::mem::take(&mut self.buf));
                block_on_cancellable(&self.handle, &self.cancel, async {
                    let r = blobs.put(&self.path, body, self.opts.clone()).await;
                    observe.storage_result(Op::Upload, r.as_ref().err());
                    r
                })
            }
            Some(up) => {
                self.upload = Some(up);
                if !self.buf.is_empty() {
                    self.stage_buffer()?;
                }
                let up = self.upload.take().expect("staged above");
                block_on_cancellable(&self.handle, &self.cancel, async {
                    let r = up.commit().await;
                    observe.storage_result(Op::CommitBlockList, r.as_ref().err());
                    r
                })
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
                opts: ReadOptions {
                    partition_bytes: 3,
                    parallel: 1,
                },
                handle: h2.clone(),
                cancel: CancellationToken::new(),
                observe: c2.clone(),
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
            sink.finish().unwrap()
        })
        .await
        .unwrap();
        assert_eq!(count.0.load(Ordering::SeqCst), 20);
        assert_eq!(store.get(&out).unwrap(), Bytes::from_static(b"abcdefghij"));
        assert_eq!(store.properties(&out).await.unwrap().etag, etag_out);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cancellation_stops_a_read_and_a_conflict_surfaces_as_storage_error() {
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
                opts: ReadOptions::default(),
                handle: h.clone(),
                cancel,
                observe: o.clone(),
            };
            let err = src.open().err().unwrap();
            assert!(matches!(BridgeError::take(err), Ok(BridgeError::Cancelled)));
            let opts = PutOptions {
                condition: Condition::IfNotExists,
                ..Default::default()
            };
            let mut sink = BlobSink::new(b, p, opts, 1024, h, CancellationToken::new(), o);
            sink.write_all(b"x").unwrap();
            let err = sink.finish().unwrap_err();
            match BridgeError::take(err) {
                Ok(BridgeError::Storage(se)) => assert_eq!(se.kind, ErrorKind::Conflict),
                other => panic!("expected a storage error, got {other:?}"),
            }
        })
        .await
        .unwrap();
    }
}
