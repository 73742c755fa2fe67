//! In-memory fakes of [`QueueService`] and [`BlobStore`], for fast unit tests of worker logic.
//!
//! They keep the semantics the worker relies on: visibility timeouts (on tokio's clock, so
//! `tokio::time::pause()` drives them), a new pop receipt on every receive and update, dequeue
//! counts, ETags that change on every write, write conditions, and a switch that makes every
//! call fail as if the account were unreachable. Anything that claims the service works is
//! tested against Azurite instead; these fakes are deliberately small.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::time::Instant;

use super::{
    BlobItem, BlobPath, BlobProperties, BlobStore, BlockUpload, ByteStream, Condition, Download,
    ETag, ErrorKind, MessageId, Peeked, PopReceipt, PutOptions, Queue, QueueService, ReadOptions,
    Received, StorageError,
};
use crate::storage::Op;

/// Shared switches and counters of one fake account.
#[derive(Debug, Default)]
struct Account {
    /// While set, every call fails with `ErrorKind::Transient` (a storage outage).
    outage: AtomicBool,
    /// Source of receipts and ETags, unique within the account.
    counter: AtomicU64,
}

impl Account {
    fn check(&self, op: Op, target: &str) -> Result<(), StorageError> {
        if self.outage.load(Ordering::SeqCst) {
            return Err(StorageError::new(
                ErrorKind::Transient,
                op,
                target,
                "connection refused (simulated outage)",
            ));
        }
        Ok(())
    }

    fn next(&self) -> u64 {
        self.counter.fetch_add(1, Ordering::SeqCst) + 1
    }
}

// === queues ===

/// An in-memory queue account: hands out one shared [`MemoryQueue`] per name.
#[derive(Debug, Default, Clone)]
pub struct MemoryQueueService {
    account: Arc<Account>,
    queues: Arc<Mutex<HashMap<String, Arc<MemoryQueue>>>>,
}

impl MemoryQueueService {
    /// An empty account with no queues.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every queue call fail (true) or work again (false).
    pub fn set_outage(&self, down: bool) {
        self.account.outage.store(down, Ordering::SeqCst);
    }

    /// The concrete queue, for test inspection.
    pub fn memory_queue(&self, name: &str) -> Arc<MemoryQueue> {
        let mut queues = self.queues.lock().unwrap();
        queues
            .entry(name.to_owned())
            .or_insert_with(|| {
                Arc::new(MemoryQueue {
                    name: name.to_owned(),
                    account: self.account.clone(),
                    state: Mutex::default(),
                })
            })
            .clone()
    }
}

impl QueueService for MemoryQueueService {
    fn queue(&self, name: &str) -> Arc<dyn Queue> {
        self.memory_queue(name)
    }
}

#[derive(Debug)]
struct StoredMessage {
    id: MessageId,
    text: String,
    dequeue_count: u64,
    inserted_on: SystemTime,
    visible_at: Instant,
    receipt: String,
}

#[derive(Debug, Default)]
struct QueueState {
    exists: bool,
    messages: Vec<StoredMessage>,
    /// Every update's visibility and whether it rewrote the text, for test assertions.
    updates: Vec<(MessageId, Duration, bool)>,
    /// While set, every send fails with `ErrorKind::Transient` (this queue alone is sick).
    refuse_sends: bool,
    /// While set, a receive leases its messages and then waits for the gate to open: a Get
    /// Messages whose response is still on its way (for shutdown tests).
    hold_receives: bool,
    /// Receives started so far (tests wait for one to be in flight).
    receives_started: u64,
    /// The next this many updates are applied and then fail with an unknown outcome: an
    /// Update Message whose answer was lost on the way back.
    lose_update_answers: u64,
}

/// One in-memory queue.
#[derive(Debug)]
pub struct MemoryQueue {
    name: String,
    account: Arc<Account>,
    state: Mutex<QueueState>,
}

/// A snapshot of one stored message, for test assertions.
#[derive(Clone, Debug)]
pub struct MessageSnapshot {
    pub id: MessageId,
    pub text: String,
    pub dequeue_count: u64,
    /// Whether a receive would return it now.
    pub visible: bool,
    /// Time left until it becomes visible (zero when visible).
    pub invisible_for: Duration,
}

impl MemoryQueue {
    /// Every stored message, in queue order.
    pub fn snapshot(&self) -> Vec<MessageSnapshot> {
        let now = Instant::now();
        let state = self.state.lock().unwrap();
        state
            .messages
            .iter()
            .map(|m| MessageSnapshot {
                id: m.id.clone(),
                text: m.text.clone(),
                dequeue_count: m.dequeue_count,
                visible: m.visible_at <= now,
                invisible_for: m.visible_at.saturating_duration_since(now),
            })
            .collect()
    }

    /// Every `update` call so far: message, visibility, whether the text was rewritten.
    pub fn updates(&self) -> Vec<(MessageId, Duration, bool)> {
        self.state.lock().unwrap().updates.clone()
    }

    /// Deletes the queue and its messages, as someone clearing it by hand would.
    pub fn delete_queue(&self) {
        let mut state = self.state.lock().unwrap();
        state.exists = false;
        state.messages.clear();
    }

    /// Makes every send to this queue fail (true) or work again (false).
    pub fn refuse_sends(&self, refuse: bool) {
        self.state.lock().unwrap().refuse_sends = refuse;
    }

    /// Holds every receive after it has leased its messages (true) until released (false).
    pub fn hold_receives(&self, hold: bool) {
        self.state.lock().unwrap().hold_receives = hold;
    }

    /// Applies the next `n` updates but fails them as if their answers were lost (transient,
    /// outcome unknown): the service holds a new receipt the caller never learns.
    pub fn lose_update_answers(&self, n: u64) {
        self.state.lock().unwrap().lose_update_answers = n;
    }

    /// How many receives have started.
    pub fn receives_started(&self) -> u64 {
        self.state.lock().unwrap().receives_started
    }

    /// Leases up to `max` visible messages (the body of `receive`).
    fn lease(&self, max: u8, visibility: Duration) -> Result<Vec<Received>, StorageError> {
        let mut state = self.locked(Op::Receive)?;
        let now = Instant::now();
        let mut out = Vec::new();
        for m in state.messages.iter_mut() {
            if out.len() == usize::from(max) {
                break;
            }
            if m.visible_at > now {
                continue;
            }
            m.dequeue_count += 1;
            m.receipt = format!("r{}", self.account.next());
            m.visible_at = now + visibility;
            out.push(Received {
                id: m.id.clone(),
                pop_receipt: PopReceipt(m.receipt.clone()),
                text: m.text.clone(),
                dequeue_count: m.dequeue_count,
                inserted_on: Some(m.inserted_on),
                next_visible_on: Some(SystemTime::now() + visibility),
            });
        }
        Ok(out)
    }

    fn not_found(&self, op: Op) -> StorageError {
        StorageError::new(ErrorKind::NotFound, op, &self.name, "QueueNotFound")
    }

    fn locked(&self, op: Op) -> Result<std::sync::MutexGuard<'_, QueueState>, StorageError> {
        self.account.check(op, &self.name)?;
        let state = self.state.lock().unwrap();
        if !state.exists {
            return Err(self.not_found(op));
        }
        Ok(state)
    }

    /// Finds a message by id and checks the receipt, as Update and Delete Message do.
    fn find(
        &self,
        state: &QueueState,
        op: Op,
        id: &MessageId,
        receipt: &PopReceipt,
    ) -> Result<usize, StorageError> {
        let idx = state
            .messages
            .iter()
            .position(|m| &m.id == id)
            .ok_or_else(|| {
                StorageError::new(ErrorKind::NotFound, op, &self.name, "MessageNotFound")
            })?;
        if state.messages[idx].receipt != receipt.0 {
            return Err(StorageError::new(
                ErrorKind::LeaseLost,
                op,
                &self.name,
                "PopReceiptMismatch",
            ));
        }
        Ok(idx)
    }
}

#[async_trait]
impl Queue for MemoryQueue {
    fn name(&self) -> &str {
        &self.name
    }

    async fn create_if_missing(&self) -> Result<(), StorageError> {
        self.account.check(Op::CreateQueue, &self.name)?;
        self.state.lock().unwrap().exists = true;
        Ok(())
    }

    async fn send(&self, text: &str) -> Result<MessageId, StorageError> {
        let mut state = self.locked(Op::Send)?;
        if state.refuse_sends {
            return Err(StorageError::new(
                ErrorKind::Transient,
                Op::Send,
                &self.name,
                "500 InternalError (simulated)",
            ));
        }
        if text.len() > 64 * 1024 {
            return Err(StorageError::new(
                ErrorKind::Other,
                Op::Send,
                &self.name,
                "RequestBodyTooLarge",
            ));
        }
        let id = MessageId(format!("m{}", self.account.next()));
        state.messages.push(StoredMessage {
            id: id.clone(),
            text: text.to_owned(),
            dequeue_count: 0,
            inserted_on: SystemTime::now(),
            visible_at: Instant::now(),
            receipt: String::new(),
        });
        Ok(id)
    }

    async fn receive(&self, max: u8, visibility: Duration) -> Result<Vec<Received>, StorageError> {
        assert!((1..=32).contains(&max), "receive takes 1..=32 messages");
        self.state.lock().unwrap().receives_started += 1;
        let leased = self.lease(max, visibility)?;
        // Polling is enough for a test gate; it never runs in production.
        while self.state.lock().unwrap().hold_receives {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(leased)
    }

    async fn update(
        &self,
        id: &MessageId,
        receipt: &PopReceipt,
        visibility: Duration,
        new_text: Option<&str>,
    ) -> Result<PopReceipt, StorageError> {
        let mut state = self.locked(Op::Update)?;
        let idx = self.find(&state, Op::Update, id, receipt)?;
        let fresh = format!("r{}", self.account.next());
        let m = &mut state.messages[idx];
        m.receipt = fresh.clone();
        m.visible_at = Instant::now() + visibility;
        if let Some(text) = new_text {
            m.text = text.to_owned();
        }
        state
            .updates
            .push((id.clone(), visibility, new_text.is_some()));
        if state.lose_update_answers > 0 {
            state.lose_update_answers -= 1;
            return Err(StorageError::new(
                ErrorKind::Transient,
                Op::Update,
                &self.name,
                "connection closed before the answer (simulated)",
            )
            .with_unknown_outcome());
        }
        Ok(PopReceipt(fresh))
    }

    async fn delete(&self, id: &MessageId, receipt: &PopReceipt) -> Result<(), StorageError> {
        let mut state = self.locked(Op::Delete)?;
        let idx = self.find(&state, Op::Delete, id, receipt)?;
        state.messages.remove(idx);
        Ok(())
    }

    async fn peek(&self, max: u8) -> Result<Vec<Peeked>, StorageError> {
        let state = self.locked(Op::Peek)?;
        let now = Instant::now();
        Ok(state
            .messages
            .iter()
            .filter(|m| m.visible_at <= now)
            .take(usize::from(max))
            .map(|m| Peeked {
                id: m.id.clone(),
                text: m.text.clone(),
                dequeue_count: m.dequeue_count,
                inserted_on: Some(m.inserted_on),
            })
            .collect())
    }

    async fn approximate_count(&self) -> Result<u64, StorageError> {
        let state = self.locked(Op::QueueProperties)?;
        Ok(state.messages.len() as u64)
    }
}

// === blobs ===

#[derive(Clone, Debug)]
struct StoredBlob {
    data: Bytes,
    etag: ETag,
    /// What properties report. Equal to `data.len()` and its MD5 (or `None`) unless a test
    /// tampered with `data`, which is how the fake delivers other bytes than it describes.
    size: u64,
    content_md5: Option<[u8; 16]>,
    metadata: Vec<(String, String)>,
}

#[derive(Debug, Default)]
struct BlobState {
    containers: HashMap<String, BTreeMap<String, StoredBlob>>,
    /// How many `open_read` calls succeeded, for tests of "skip the work".
    reads: u64,
}

/// An in-memory blob account.
#[derive(Debug, Default, Clone)]
pub struct MemoryBlobStore {
    account: Arc<Account>,
    state: Arc<Mutex<BlobState>>,
}

impl MemoryBlobStore {
    /// An empty account with no containers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every blob call fail (true) or work again (false).
    pub fn set_outage(&self, down: bool) {
        self.account.outage.store(down, Ordering::SeqCst);
    }

    /// Deletes a container and its blobs, as an operator might while the worker runs.
    pub fn delete_container(&self, container: &str) {
        self.state.lock().unwrap().containers.remove(container);
    }

    /// A blob's bytes, for test assertions.
    pub fn get(&self, path: &BlobPath) -> Option<Bytes> {
        let state = self.state.lock().unwrap();
        state
            .containers
            .get(&path.container)
            .and_then(|c| c.get(&path.name))
            .map(|b| b.data.clone())
    }

    /// Replaces a blob's bytes but not its properties (ETag, size, Content-MD5): every read
    /// after this delivers bytes the blob's properties do not describe, as a faulty path
    /// would. Panics when the blob does not exist.
    pub fn tamper(&self, path: &BlobPath, data: Bytes) {
        let mut state = self.state.lock().unwrap();
        let blob = state
            .containers
            .get_mut(&path.container)
            .and_then(|c| c.get_mut(&path.name))
            .expect("tamper: no such blob");
        blob.data = data;
    }

    /// How many reads were opened so far.
    pub fn reads(&self) -> u64 {
        self.state.lock().unwrap().reads
    }

    fn write(
        &self,
        op: Op,
        path: &BlobPath,
        data: Bytes,
        content_md5: Option<[u8; 16]>,
        opts: &PutOptions,
    ) -> Result<ETag, StorageError> {
        self.account.check(op, &path.to_string())?;
        let etag = ETag(format!("\"0x{:X}\"", self.account.next()));
        let mut state = self.state.lock().unwrap();
        let container = state.containers.get_mut(&path.container).ok_or_else(|| {
            StorageError::new(
                ErrorKind::NotFound,
                op,
                path.to_string(),
                "ContainerNotFound",
            )
        })?;
        let existing = container.get(&path.name);
        match (&opts.condition, existing) {
            (Condition::IfNotExists, Some(_)) => {
                return Err(StorageError::new(
                    ErrorKind::Conflict,
                    op,
                    path.to_string(),
                    "BlobAlreadyExists",
                ));
            }
            (Condition::IfMatch(want), found) if found.map(|b| &b.etag) != Some(want) => {
                return Err(StorageError::new(
                    ErrorKind::PreconditionFailed,
                    op,
                    path.to_string(),
                    "ConditionNotMet",
                ));
            }
            _ => {}
        }
        container.insert(
            path.name.clone(),
            StoredBlob {
                size: data.len() as u64,
                data,
                etag: etag.clone(),
                content_md5,
                metadata: opts.metadata.clone(),
            },
        );
        Ok(etag)
    }

    fn blob(&self, op: Op, path: &BlobPath) -> Result<StoredBlob, StorageError> {
        self.account.check(op, &path.to_string())?;
        let state = self.state.lock().unwrap();
        // The codes the adapter writes (`HTTP 404 <code>`), so callers can tell them apart.
        let missing = |code| StorageError::new(ErrorKind::NotFound, op, path.to_string(), code);
        let container = state
            .containers
            .get(&path.container)
            .ok_or_else(|| missing("HTTP 404 ContainerNotFound"))?;
        container
            .get(&path.name)
            .cloned()
            .ok_or_else(|| missing("HTTP 404 BlobNotFound"))
    }
}

#[async_trait]
impl BlobStore for MemoryBlobStore {
    async fn create_container_if_missing(&self, container: &str) -> Result<(), StorageError> {
        self.account.check(Op::CreateContainer, container)?;
        let mut state = self.state.lock().unwrap();
        state.containers.entry(container.to_owned()).or_default();
        Ok(())
    }

    async fn container_exists(&self, container: &str) -> Result<bool, StorageError> {
        self.account.check(Op::ContainerProperties, container)?;
        Ok(self
            .state
            .lock()
            .unwrap()
            .containers
            .contains_key(container))
    }

    async fn properties(&self, path: &BlobPath) -> Result<BlobProperties, StorageError> {
        let blob = self.blob(Op::BlobProperties, path)?;
        Ok(BlobProperties {
            etag: blob.etag,
            size: blob.size,
            content_md5: blob.content_md5,
            metadata: blob.metadata,
        })
    }

    /// The fake snapshots the blob at open: a change after that is not seen mid-stream.
    async fn open_read(
        &self,
        path: &BlobPath,
        if_match: Option<&ETag>,
        opts: ReadOptions,
    ) -> Result<ByteStream, StorageError> {
        let blob = self.blob(Op::Download, path)?;
        if let Some(want) = if_match
            && want != &blob.etag
        {
            return Err(StorageError::new(
                ErrorKind::PreconditionFailed,
                Op::Download,
                path.to_string(),
                "ConditionNotMet",
            ));
        }
        self.state.lock().unwrap().reads += 1;
        let size = opts.partition_bytes.max(1);
        let chunks: Vec<Result<Bytes, StorageError>> = (0..blob.data.len())
            .step_by(size)
            .map(|start| Ok(blob.data.slice(start..(start + size).min(blob.data.len()))))
            .collect();
        Ok(Box::pin(futures::stream::iter(chunks)))
    }

    /// One snapshot for properties and bytes, as one GET gives both.
    async fn download(&self, path: &BlobPath, opts: ReadOptions) -> Result<Download, StorageError> {
        let blob = self.blob(Op::Download, path)?;
        let properties = BlobProperties {
            etag: blob.etag.clone(),
            size: blob.size,
            content_md5: blob.content_md5,
            metadata: blob.metadata.clone(),
        };
        let stream = self.open_read(path, Some(&blob.etag), opts).await?;
        Ok(Download { properties, stream })
    }

    async fn put(
        &self,
        path: &BlobPath,
        body: Bytes,
        opts: PutOptions,
    ) -> Result<ETag, StorageError> {
        // Like Put Blob, which stores the MD5 of the body it received.
        let md5: [u8; 16] = <md5::Md5 as md5::Digest>::digest(&body).into();
        self.write(Op::Upload, path, body, Some(md5), &opts)
    }

    async fn start_upload(
        &self,
        path: &BlobPath,
        opts: PutOptions,
    ) -> Result<Box<dyn BlockUpload>, StorageError> {
        self.account.check(Op::StageBlock, &path.to_string())?;
        Ok(Box::new(MemoryUpload {
            store: self.clone(),
            path: path.clone(),
            opts,
            blocks: Vec::new(),
            content_md5: None,
        }))
    }

    async fn list(&self, container: &str, prefix: &str) -> Result<Vec<BlobItem>, StorageError> {
        self.account.check(Op::List, container)?;
        let state = self.state.lock().unwrap();
        let c = state.containers.get(container).ok_or_else(|| {
            StorageError::new(
                ErrorKind::NotFound,
                Op::List,
                container,
                "ContainerNotFound",
            )
        })?;
        Ok(c.iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(name, b)| BlobItem {
                name: name.clone(),
                size: b.data.len() as u64,
                etag: b.etag.clone(),
            })
            .collect())
    }

    async fn delete(&self, path: &BlobPath) -> Result<(), StorageError> {
        self.account.check(Op::DeleteBlob, &path.to_string())?;
        let mut state = self.state.lock().unwrap();
        state
            .containers
            .get_mut(&path.container)
            .and_then(|c| c.remove(&path.name))
            .map(|_| ())
            .ok_or_else(|| {
                StorageError::new(
                    ErrorKind::NotFound,
                    Op::DeleteBlob,
                    path.to_string(),
                    "BlobNotFound",
                )
            })
    }
}

/// Staged blocks held until commit, which applies the write condition (as Put Block List does).
struct MemoryUpload {
    store: MemoryBlobStore,
    path: BlobPath,
    opts: PutOptions,
    blocks: Vec<Bytes>,
    /// Stored at commit, as Put Block List stores `x-ms-blob-content-md5`; none otherwise.
    content_md5: Option<[u8; 16]>,
}

#[async_trait]
impl BlockUpload for MemoryUpload {
    async fn stage(&mut self, block: Bytes) -> Result<(), StorageError> {
        self.store
            .account
            .check(Op::StageBlock, &self.path.to_string())?;
        self.blocks.push(block);
        Ok(())
    }

    fn set_content_md5(&mut self, md5: [u8; 16]) {
        self.content_md5 = Some(md5);
    }

    async fn commit(mut self: Box<Self>) -> Result<ETag, StorageError> {
        let condition = self.opts.condition.clone();
        self.commit_with(condition).await
    }

    async fn commit_with(&mut self, condition: Condition) -> Result<ETag, StorageError> {
        let data: Vec<u8> = self.blocks.iter().flat_map(|b| b.iter().copied()).collect();
        let opts = PutOptions {
            condition,
            ..self.opts.clone()
        };
        self.store.write(
            Op::CommitBlockList,
            &self.path,
            Bytes::from(data),
            self.content_md5,
            &opts,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;

    #[tokio::test(start_paused = true)]
    async fn visibility_receipts_and_dequeue_counts() {
        let svc = MemoryQueueService::new();
        let q = svc.queue("q");
        assert_eq!(q.send("x").await.unwrap_err().kind, ErrorKind::NotFound);
        q.create_if_missing().await.unwrap();
        q.send("a").await.unwrap();
        let got = q.receive(32, Duration::from_secs(10)).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].dequeue_count, 1);
        assert!(
            q.receive(32, Duration::from_secs(10))
                .await
                .unwrap()
                .is_empty()
        );
        let fresh = q
            .update(
                &got[0].id,
                &got[0].pop_receipt,
                Duration::from_secs(20),
                None,
            )
            .await
            .unwrap();
        assert_ne!(fresh, got[0].pop_receipt);
        let stale = q.delete(&got[0].id, &got[0].pop_receipt).await.unwrap_err();
        assert_eq!(stale.kind, ErrorKind::LeaseLost);
        tokio::time::advance(Duration::from_secs(19)).await;
        assert!(
            q.receive(1, Duration::from_secs(10))
                .await
                .unwrap()
                .is_empty()
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        let again = q.receive(1, Duration::from_secs(10)).await.unwrap();
        assert_eq!(again[0].dequeue_count, 2);
        // The receipt from before the redelivery no longer works.
        let lost = q.delete(&got[0].id, &fresh).await.unwrap_err();
        assert_eq!(lost.kind, ErrorKind::LeaseLost);
        q.delete(&again[0].id, &again[0].pop_receipt).await.unwrap();
        assert_eq!(q.approximate_count().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn blob_conditions_and_etags() {
        let store = MemoryBlobStore::new();
        store.create_container_if_missing("c").await.unwrap();
        let p = BlobPath::new("c", "b");
        let opts = |condition| PutOptions {
            condition,
            ..Default::default()
        };
        let e1 = store
            .put(&p, Bytes::from_static(b"one"), opts(Condition::IfNotExists))
            .await
            .unwrap();
        let again = store
            .put(&p, Bytes::from_static(b"two"), opts(Condition::IfNotExists))
            .await
            .unwrap_err();
        assert_eq!(again.kind, ErrorKind::Conflict);
        let e2 = store
            .put(
                &p,
                Bytes::from_static(b"two"),
                opts(Condition::IfMatch(e1.clone())),
            )
            .await
            .unwrap();
        assert_ne!(e1, e2);
        let stale = store
            .put(
                &p,
                Bytes::from_static(b"three"),
                opts(Condition::IfMatch(e1.clone())),
            )
            .await
            .unwrap_err();
        assert_eq!(stale.kind, ErrorKind::PreconditionFailed);
        let err = store
            .open_read(&p, Some(&e1), ReadOptions::default())
            .await
            .err()
            .unwrap();
        assert_eq!(err.kind, ErrorKind::PreconditionFailed);
        let mut up = store
            .start_upload(&p, opts(Condition::IfMatch(e2)))
            .await
            .unwrap();
        up.stage(Bytes::from_static(b"ab")).await.unwrap();
        up.stage(Bytes::from_static(b"cd")).await.unwrap();
        up.commit().await.unwrap();
        let read: Vec<Bytes> = store
            .open_read(
                &p,
                None,
                ReadOptions {
                    partition_bytes: 3,
                    parallel: 1,
                },
            )
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert_eq!(
            read,
            vec![Bytes::from_static(b"abc"), Bytes::from_static(b"d")]
        );
    }
}
