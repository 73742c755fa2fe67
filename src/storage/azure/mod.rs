//! The Azure SDK adapter: [`connect`] resolves the storage settings and builds
//! [`QueueService`] and [`BlobStore`] implementations on `azure_storage_queue` /
//! `azure_storage_blob` 1.x. The CLI and `startup` call it (through `crate::storage`).
//!
//! This folder is the only place in rollq that imports the Azure SDK; callers see the traits
//! in [`crate::storage`] and [`StorageError`]. Every call is bounded by the connection's
//! timeout (SDK retries included), so a dead endpoint fails in seconds. Update Message alone
//! goes without the SDK's retries (see [`UPDATE_TRIES`]): its failures say whether the request
//! may have been applied (`StorageError::outcome_unknown`).

mod errors;
mod requests;
pub mod shared_key;

use std::collections::HashMap;
use std::future::Future;
use std::num::NonZero;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use azure_core::http::headers::HeaderName;
use azure_core::http::pager::PagerOptions;
use azure_core::http::policies::Policy;
use azure_core::http::{
    ClientOptions, Etag, ExponentialRetryOptions, RequestContent, RetryOptions, Transport, Url,
};
use azure_identity::{
    ManagedIdentityCredential, ManagedIdentityCredentialOptions, UserAssignedId,
    WorkloadIdentityCredential, WorkloadIdentityCredentialOptions,
};
use azure_storage_blob::models::{
    BlobClientDeleteOptions, BlobClientDownloadOptions, BlobClientGetPropertiesOptions,
    BlobClientGetPropertiesResultHeaders, BlobContainerClientCreateOptions,
    BlobContainerClientGetPropertiesOptions, BlobContainerClientListBlobsOptions,
    BlockBlobClientCommitBlockListOptions, BlockBlobClientCommitBlockListResultHeaders,
    BlockBlobClientStageBlockOptions, BlockBlobClientUploadOptions, BlockLookupList,
};
use azure_storage_blob::{BlobClient, BlobServiceClient, BlobServiceClientOptions};
use azure_storage_queue::models::{
    QueueClientCreateOptions, QueueClientDeleteMessageOptions, QueueClientGetPropertiesOptions,
    QueueClientGetPropertiesResultHeaders, QueueClientPeekMessagesOptions,
    QueueClientReceiveMessagesOptions, QueueClientSendMessageOptions,
    QueueClientUpdateMessageOptions, QueueMessage,
};
use azure_storage_queue::{QueueClient, QueueClientOptions};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use secrecy::ExposeSecret;

use errors::classify;
pub use errors::redact;
use requests::{CountRequests, labelled};

use super::connection::{Auth, ConnectError, ConnectionInfo, Resolved, StorageArgs, resolve};
use super::{
    BlobItem, BlobPath, BlobProperties, BlobStore, BlockUpload, ByteStream, Condition, Download,
    ETag, ErrorKind, MessageId, Peeked, PopReceipt, PutOptions, Queue, QueueService, ReadOptions,
    Received, StorageError,
};
use crate::metrics::StorageRequests;
use crate::storage::Op;

/// Everything a client needs, shared by every queue and blob handle of one connection.
#[derive(Clone)]
struct Shared {
    options: ClientOptions,
    credential: Option<Arc<dyn TokenCredential>>,
    timeout: Duration,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// A ready connection: queue and blob handles for one account, plus a loggable description.
#[derive(Clone, Debug)]
pub struct Connection {
    pub queues: Arc<dyn QueueService>,
    pub blobs: Arc<dyn BlobStore>,
    pub info: ConnectionInfo,
    /// Every request the handles above send, one per try, by operation. Counted whether or
    /// not a registry exports it (the worker does; the CLI tools do not).
    pub requests: StorageRequests,
}

/// Resolves `args` (connection string, account, or the emulator default) and builds the clients.
pub async fn connect(args: &StorageArgs) -> Result<Connection, ConnectError> {
    let resolved = resolve(args)?;
    build(resolved)
}

/// Builds queue and blob handles for resolved settings (no network traffic yet).
fn build(resolved: Resolved) -> Result<Connection, ConnectError> {
    let Resolved {
        info,
        auth,
        timeout,
    } = resolved;
    let mut authorisation = authorisation(&info.account, &auth)?;
    let requests = StorageRequests::default();
    // Last of the per-try policies, so it sees each try as it goes to the transport.
    authorisation
        .per_try
        .push(CountRequests::policy(requests.clone()));
    let options = ClientOptions {
        per_call_policies: authorisation.per_call,
        per_try_policies: authorisation.per_try,
        retry: bounded_retries(timeout),
        transport: Some(http_transport(timeout)?),
        ..Default::default()
    };
    let shared = Shared {
        options,
        credential: authorisation.credential,
        timeout,
    };
    let blobs = AzureBlobStore {
        service: blob_service(&info.blob_endpoint, &shared)?,
        timeout,
    };
    let queues = queue_service(&info.queue_endpoint, shared)?;
    Ok(Connection {
        queues: Arc::new(queues),
        blobs: Arc::new(blobs),
        info,
        requests,
    })
}

/// How requests are authorised: signing policies for a key or SAS, or an Entra ID token
/// credential that the SDK clients use themselves.
struct Authorisation {
    per_call: Vec<Arc<dyn Policy>>,
    per_try: Vec<Arc<dyn Policy>>,
    credential: Option<Arc<dyn TokenCredential>>,
}

fn authorisation(account: &str, auth: &Auth) -> Result<Authorisation, ConnectError> {
    let mut out = Authorisation {
        per_call: Vec::new(),
        per_try: Vec::new(),
        credential: None,
    };
    match auth {
        Auth::SharedKey { key } => out.per_try.push(shared_key::SharedKeyPolicy::new(
            account.to_owned(),
            key.expose_secret().to_owned(),
        )),
        Auth::Sas { token } => out
            .per_call
            .push(shared_key::SasPolicy::new(token.expose_secret())),
        Auth::Workload {
            client_id,
            tenant_id,
            token_file,
        } => {
            let opts = WorkloadIdentityCredentialOptions {
                client_id: client_id.clone(),
                tenant_id: tenant_id.clone(),
                token_file_path: Some(token_file.clone()),
                ..Default::default()
            };
            let cred = WorkloadIdentityCredential::new(Some(opts)).map_err(|e| {
                ConnectError::Client(format!("workload identity: {}", redact(&e.to_string())))
            })?;
            out.credential = Some(cred);
        }
        Auth::Managed { client_id } => {
            let opts = ManagedIdentityCredentialOptions {
                user_assigned_id: client_id.clone().map(UserAssignedId::ClientId),
                ..Default::default()
            };
            let cred = ManagedIdentityCredential::new(Some(opts)).map_err(|e| {
                ConnectError::Client(format!("managed identity: {}", redact(&e.to_string())))
            })?;
            out.credential = Some(cred);
        }
    }
    Ok(out)
}

/// Bounded retries: the SDK's default allows a minute of retrying per call; the worker has
/// its own backoff, so one call gives up within the configured timeout.
fn bounded_retries(timeout: Duration) -> RetryOptions {
    RetryOptions::exponential(ExponentialRetryOptions {
        initial_delay: azure_core::time::Duration::milliseconds(200),
        max_retries: 4,
        // Half the call's deadline, so the SDK reports the real cause (refused, reset, 503)
        // before our own timeout fires with a bare "timed out".
        max_total_elapsed: azure_core::time::Duration::try_from(timeout / 2)
            .unwrap_or(azure_core::time::Duration::seconds(15)),
        max_delay: azure_core::time::Duration::seconds(4),
    })
}

/// Our own reqwest client: connect and read timeouts shorter than the SDK's 20 s / 60 s,
/// and no transparent decompression (partitioned blob downloads need raw bytes).
fn http_transport(timeout: Duration) -> Result<Transport, ConnectError> {
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5).min(timeout))
        .read_timeout(Duration::from_secs(30).min(timeout.max(Duration::from_secs(1))))
        .redirect(reqwest::redirect::Policy::none())
        .no_gzip()
        .no_deflate()
        .build()
        .map_err(|e| ConnectError::Client(format!("http client: {e}")))?;
    Ok(Transport::new(Arc::new(http)))
}

fn blob_service(endpoint: &Url, shared: &Shared) -> Result<BlobServiceClient, ConnectError> {
    BlobServiceClient::new(
        service_url(endpoint),
        shared.credential.clone(),
        Some(BlobServiceClientOptions {
            client_options: shared.options.clone(),
            ..Default::default()
        }),
    )
    .map_err(|e| ConnectError::Client(format!("blob client: {}", redact(&e.to_string()))))
}

/// Builds one queue client now so a bad endpoint/credential combination fails at connect
/// (`queue()` later relies on it and cannot return an error).
fn queue_service(endpoint: &Url, shared: Shared) -> Result<AzureQueueService, ConnectError> {
    let queues = AzureQueueService {
        endpoint: service_url(endpoint),
        shared,
    };
    QueueClient::new(
        queues.queue_url("probe"),
        queues.shared.credential.clone(),
        Some(queues.client_options()),
    )
    .map_err(|e| ConnectError::Client(format!("queue client: {}", redact(&e.to_string()))))?;
    Ok(queues)
}

/// A service URL with a trailing slash-free path and no query (SAS goes through the policy).
fn service_url(u: &Url) -> Url {
    let mut u = u.clone();
    u.set_query(None);
    let path = u.path().trim_end_matches('/').to_owned();
    u.set_path(&path);
    u
}

/// Runs one SDK call under the connection's deadline and classifies its error.
async fn bounded<T>(
    timeout: Duration,
    op: Op,
    target: &str,
    with_receipt: bool,
    fut: impl Future<Output = azure_core::Result<T>>,
) -> Result<T, StorageError> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(classify(&e, op, target, with_receipt)),
        // The request may have been sent and applied while we waited.
        Err(_) => Err(StorageError::new(
            ErrorKind::Transient,
            op,
            target,
            format!("timed out after {}", humantime::format_duration(timeout)),
        )
        .with_unknown_outcome()),
    }
}

/// Tries at one Update Message. The SDK does not retry it: a blind retry of a request that
/// was applied but whose answer was lost sends a receipt the service has already replaced,
/// and its refusal would look like a lost lease. We retry only what the service refused
/// before any work (429, 503) or what never left (connection refused).
const UPDATE_TRIES: u32 = 3;

/// Pause before the second try (doubled before the third) unless the service asked for one.
const UPDATE_PAUSE: Duration = Duration::from_millis(200);

/// Whether an Update Message that failed with `e` may be sent again with the same receipt.
fn update_is_safe_to_retry(e: &StorageError) -> bool {
    !e.outcome_unknown && matches!(e.kind, ErrorKind::Transient | ErrorKind::Throttled)
}

fn secs_ceil(d: Duration) -> i32 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i32::try_from(s).unwrap_or(i32::MAX)
}

fn system_time(t: Option<azure_core::time::OffsetDateTime>) -> Option<SystemTime> {
    t.map(SystemTime::from)
}

fn other(op: Op, target: &str, msg: impl Into<String>) -> StorageError {
    StorageError::new(ErrorKind::Other, op, target, msg)
}

// === impl AzureQueueService ===

/// Queue handles for one account.
#[derive(Debug)]
struct AzureQueueService {
    endpoint: Url,
    shared: Shared,
}

impl AzureQueueService {
    fn queue_url(&self, name: &str) -> Url {
        let mut u = self.endpoint.clone();
        u.path_segments_mut()
            .expect("validated base URL")
            .push(name);
        u
    }

    fn client_options(&self) -> QueueClientOptions {
        QueueClientOptions {
            client_options: self.shared.options.clone(),
            ..Default::default()
        }
    }

    /// The same options without the SDK's retry policy, for Update Message (see
    /// [`UPDATE_TRIES`]).
    fn client_options_without_retry(&self) -> QueueClientOptions {
        let mut options = self.client_options();
        options.client_options.retry = RetryOptions::none();
        options
    }

    fn client(&self, name: &str, options: QueueClientOptions) -> QueueClient {
        QueueClient::new(
            self.queue_url(name),
            self.shared.credential.clone(),
            Some(options),
        )
        // Same endpoint and credential as the probe client built (and checked) in `build`.
        .expect("queue client for a checked endpoint")
    }
}

impl QueueService for AzureQueueService {
    fn queue(&self, name: &str) -> Arc<dyn Queue> {
        Arc::new(AzureQueue {
            name: name.to_owned(),
            client: self.client(name, self.client_options()),
            update_client: self.client(name, self.client_options_without_retry()),
            timeout: self.shared.timeout,
        })
    }
}

/// One queue.
struct AzureQueue {
    name: String,
    client: QueueClient,
    /// The same queue with the SDK's retries off: Update Message only, retried by hand.
    update_client: QueueClient,
    timeout: Duration,
}

impl std::fmt::Debug for AzureQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureQueue")
            .field("name", &self.name)
            .finish()
    }
}

fn message_body(
    text: &str,
) -> azure_core::Result<RequestContent<QueueMessage, azure_core::http::XmlFormat>> {
    QueueMessage {
        message_text: Some(text.to_owned()),
    }
    .try_into()
}

fn check_max(op: Op, target: &str, max: u8) -> Result<i32, StorageError> {
    if (1..=32).contains(&max) {
        Ok(i32::from(max))
    } else {
        Err(other(op, target, format!("max must be 1..=32, got {max}")))
    }
}

impl AzureQueue {
    /// Update Message, labelled `op` (a retry or release is `update`, a lease extension
    /// `renew`, as the error counter names them), retried by hand (see [`UPDATE_TRIES`]).
    async fn update_message(
        &self,
        op: Op,
        id: &MessageId,
        receipt: &PopReceipt,
        visibility: Duration,
        new_text: Option<&str>,
    ) -> Result<PopReceipt, StorageError> {
        let target = format!("{}/{}", self.name, id);
        let mut opts = QueueClientUpdateMessageOptions {
            method_options: labelled(op),
            ..Default::default()
        };
        if let Some(t) = new_text {
            opts.queue_message =
                Some(message_body(t).map_err(|e| classify(&e, op, &target, true))?);
        }
        // One deadline for every try, like the SDK's retries under `bounded` elsewhere.
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut pause = UPDATE_PAUSE;
        let mut tries = 0;
        let rsp = loop {
            tries += 1;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let r = bounded(left, op, &target, true, async {
                self.update_client
                    .update_message(&id.0, &receipt.0, secs_ceil(visibility), Some(opts.clone()))
                    .await
            })
            .await;
            match r {
                Ok(rsp) => break rsp,
                Err(e) if tries < UPDATE_TRIES && update_is_safe_to_retry(&e) => {
                    let wait = e.retry_after.unwrap_or(pause);
                    if tokio::time::Instant::now() + wait >= deadline {
                        return Err(e);
                    }
                    tracing::debug!(error.message = %e, tries, "update message refused; retrying");
                    tokio::time::sleep(wait).await;
                    pause *= 2;
                }
                Err(e) => return Err(e),
            }
        };
        // The new receipt only comes back as a header (no typed accessor in the 1.1 crate).
        rsp.headers()
            .get_optional_string(&HeaderName::from_static("x-ms-popreceipt"))
            .map(PopReceipt)
            .ok_or_else(|| other(op, &target, "the service returned no new pop receipt"))
    }
}

#[async_trait]
impl Queue for AzureQueue {
    fn name(&self) -> &str {
        &self.name
    }

    async fn create_if_missing(&self) -> Result<(), StorageError> {
        // 201 created, 204 exists with the same metadata; 409 exists with other metadata.
        match bounded(
            self.timeout,
            Op::CreateQueue,
            &self.name,
            false,
            self.client.create(Some(QueueClientCreateOptions {
                method_options: labelled(Op::CreateQueue),
                ..Default::default()
            })),
        )
        .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.kind == ErrorKind::Conflict => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn send(&self, text: &str) -> Result<MessageId, StorageError> {
        let op = Op::Send;
        let body = message_body(text).map_err(|e| classify(&e, op, &self.name, false))?;
        // Time-to-live -1: Azure's default of 7 days would silently drop a backlog.
        let opts = QueueClientSendMessageOptions {
            message_time_to_live: Some(-1),
            method_options: labelled(op),
            ..Default::default()
        };
        let sent = bounded(self.timeout, op, &self.name, false, async {
            self.client
                .send_message(body, Some(opts))
                .await?
                .into_model()?
                .into_message()
        })
        .await?;
        sent.message_id
            .map(MessageId)
            .ok_or_else(|| other(op, &self.name, "the service returned no message id"))
    }

    async fn receive(&self, max: u8, visibility: Duration) -> Result<Vec<Received>, StorageError> {
        let op = Op::Receive;
        let n = check_max(op, &self.name, max)?;
        let opts = QueueClientReceiveMessagesOptions {
            number_of_messages: Some(n),
            // The service's minimum for Get Messages is 1 s.
            visibility_timeout: Some(secs_ceil(visibility).max(1)),
            method_options: labelled(op),
            ..Default::default()
        };
        let got = bounded(self.timeout, op, &self.name, false, async {
            self.client.receive_messages(Some(opts)).await?.into_model()
        })
        .await?;
        let mut out = Vec::new();
        for m in got.items.unwrap_or_default() {
            let (Some(id), Some(receipt)) = (m.message_id, m.pop_receipt) else {
                return Err(other(
                    op,
                    &self.name,
                    "a received message lacks its id or pop receipt",
                ));
            };
            out.push(Received {
                id: MessageId(id),
                pop_receipt: PopReceipt(receipt),
                text: m.message_text.unwrap_or_default(),
                dequeue_count: m.dequeue_count.unwrap_or(0).max(0) as u64,
                inserted_on: system_time(m.insertion_time),
                next_visible_on: system_time(m.time_next_visible),
            });
        }
        Ok(out)
    }

    async fn update(
        &self,
        id: &MessageId,
        receipt: &PopReceipt,
        visibility: Duration,
        new_text: Option<&str>,
    ) -> Result<PopReceipt, StorageError> {
        self.update_message(Op::Update, id, receipt, visibility, new_text)
            .await
    }

    async fn renew(
        &self,
        id: &MessageId,
        receipt: &PopReceipt,
        visibility: Duration,
    ) -> Result<PopReceipt, StorageError> {
        self.update_message(Op::Renew, id, receipt, visibility, None)
            .await
    }

    async fn delete(&self, id: &MessageId, receipt: &PopReceipt) -> Result<(), StorageError> {
        let target = format!("{}/{}", self.name, id);
        bounded(self.timeout, Op::Delete, &target, true, async {
            let opts = QueueClientDeleteMessageOptions {
                method_options: labelled(Op::Delete),
                ..Default::default()
            };
            self.client
                .delete_message(&id.0, &receipt.0, Some(opts))
                .await
        })
        .await
        .map(|_| ())
    }

    async fn peek(&self, max: u8) -> Result<Vec<Peeked>, StorageError> {
        let op = Op::Peek;
        let n = check_max(op, &self.name, max)?;
        let opts = QueueClientPeekMessagesOptions {
            number_of_messages: Some(n),
            method_options: labelled(op),
            ..Default::default()
        };
        let got = bounded(self.timeout, op, &self.name, false, async {
            self.client.peek_messages(Some(opts)).await?.into_model()
        })
        .await?;
        Ok(got
            .items
            .unwrap_or_default()
            .into_iter()
            .map(|m| Peeked {
                id: MessageId(m.message_id.unwrap_or_default()),
                text: m.message_text.unwrap_or_default(),
                dequeue_count: m.dequeue_count.unwrap_or(0).max(0) as u64,
                inserted_on: system_time(m.insertion_time),
            })
            .collect())
    }

    async fn approximate_count(&self) -> Result<u64, StorageError> {
        let op = Op::QueueProperties;
        let rsp = bounded(
            self.timeout,
            op,
            &self.name,
            false,
            self.client
                .get_properties(Some(QueueClientGetPropertiesOptions {
                    method_options: labelled(op),
                    ..Default::default()
                })),
        )
        .await?;
        let n = rsp
            .approximate_messages_count()
            .map_err(|e| classify(&e, op, &self.name, false))?;
        Ok(n.unwrap_or(0).max(0) as u64)
    }
}

// === impl AzureBlobStore ===

/// Blob storage for one account.
struct AzureBlobStore {
    service: BlobServiceClient,
    timeout: Duration,
}

impl std::fmt::Debug for AzureBlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureBlobStore").finish_non_exhaustive()
    }
}

impl AzureBlobStore {
    fn blob(&self, path: &BlobPath) -> BlobClient {
        self.service.blob_client(&path.container, &path.name)
    }
}

fn metadata_map(md: &[(String, String)]) -> Option<HashMap<String, String>> {
    if md.is_empty() {
        None
    } else {
        Some(md.iter().cloned().collect())
    }
}

/// ETags in rollq are always quoted, as in response headers (listings return them bare).
fn quoted_etag(s: String) -> ETag {
    if s.starts_with('"') || s.starts_with("W/") {
        ETag(s)
    } else {
        ETag(format!("\"{s}\""))
    }
}

fn etag_of(op: Op, target: &str, e: Option<Etag>) -> Result<ETag, StorageError> {
    e.map(|e| quoted_etag(e.to_string()))
        .ok_or_else(|| other(op, target, "the service returned no ETag"))
}

/// The total of a `Content-Range` value (`bytes 0-1048575/10485760` → 10485760).
fn range_total(value: &str) -> Option<u64> {
    value.rsplit_once('/')?.1.trim().parse().ok()
}

/// If-Match / If-None-Match headers for a condition.
fn condition_headers(c: &Condition) -> (Option<Etag>, Option<Etag>) {
    match c {
        Condition::None => (None, None),
        Condition::IfNotExists => (None, Some(Etag::from("*"))),
        Condition::IfMatch(tag) => (Some(Etag::from(tag.0.as_str())), None),
    }
}

#[async_trait]
impl BlobStore for AzureBlobStore {
    async fn create_container_if_missing(&self, container: &str) -> Result<(), StorageError> {
        let c = self.service.blob_container_client(container);
        match bounded(
            self.timeout,
            Op::CreateContainer,
            container,
            false,
            c.create(Some(BlobContainerClientCreateOptions {
                method_options: labelled(Op::CreateContainer),
                ..Default::default()
            })),
        )
        .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.kind == ErrorKind::Conflict => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn container_exists(&self, container: &str) -> Result<bool, StorageError> {
        let op = Op::ContainerProperties;
        let c = self.service.blob_container_client(container);
        // The SDK's `exists()` sends Get Container Properties without options, so the request
        // could not carry its label: the same call, with the 404 mapped here.
        let opts = BlobContainerClientGetPropertiesOptions {
            method_options: labelled(op),
            ..Default::default()
        };
        match bounded(
            self.timeout,
            op,
            container,
            false,
            c.get_properties(Some(opts)),
        )
        .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.kind == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn properties(&self, path: &BlobPath) -> Result<BlobProperties, StorageError> {
        let op = Op::BlobProperties;
        let target = path.to_string();
        let rsp = bounded(
            self.timeout,
            op,
            &target,
            false,
            self.blob(path)
                .get_properties(Some(BlobClientGetPropertiesOptions {
                    method_options: labelled(op),
                    ..Default::default()
                })),
        )
        .await?;
        let map = |e: azure_core::Error| classify(&e, op, &target, false);
        let etag = etag_of(op, &target, rsp.etag().map_err(map)?)?;
        let size = rsp.content_length().map_err(map)?.unwrap_or(0);
        let content_md5 = rsp
            .content_md5()
            .map_err(map)?
            .and_then(|v| <[u8; 16]>::try_from(v.as_slice()).ok());
        let mut metadata: Vec<(String, String)> =
            rsp.metadata().map_err(map)?.into_iter().collect();
        metadata.sort();
        Ok(BlobProperties {
            etag,
            size,
            content_md5,
            metadata,
        })
    }

    async fn open_read(
        &self,
        path: &BlobPath,
        if_match: Option<&ETag>,
        opts: ReadOptions,
    ) -> Result<ByteStream, StorageError> {
        let op = Op::Download;
        let target = path.to_string();
        // The SDK pins every range after the first to the first response's ETag (If-Match),
        // so a blob replaced mid-read ends the stream with 412 → PreconditionFailed.
        let dl = BlobClientDownloadOptions {
            if_match: if_match.map(|t| Etag::from(t.0.as_str())),
            parallel: NonZero::new(opts.parallel.max(1)),
            partition_size: NonZero::new(opts.partition_bytes.max(1)),
            // Cloned into every range request, so each range is counted as a download.
            method_options: labelled(op),
            ..Default::default()
        };
        let result = bounded(
            self.timeout,
            op,
            &target,
            false,
            self.blob(path).download(Some(dl)),
        )
        .await?;
        let stream = result
            .body
            .map_err(move |e| classify(&e, op, &target, false));
        Ok(stream.boxed())
    }

    async fn download(&self, path: &BlobPath, opts: ReadOptions) -> Result<Download, StorageError> {
        let op = Op::Download;
        let target = path.to_string();
        // No If-Match on the first range: its answer is what pins the ETag, and the SDK sends
        // every later range with If-Match on it, so a blob replaced mid-read ends the stream
        // with 412 → PreconditionFailed, as with `open_read`.
        let dl = BlobClientDownloadOptions {
            parallel: NonZero::new(opts.parallel.max(1)),
            partition_size: NonZero::new(opts.partition_bytes.max(1)),
            method_options: labelled(op),
            ..Default::default()
        };
        let result = bounded(
            self.timeout,
            op,
            &target,
            false,
            self.blob(path).download(Some(dl)),
        )
        .await?;
        let p = &result.properties;
        let etag = etag_of(op, &target, p.etag.clone())?;
        // The first response covers one partition: `Content-Length` is that range's length,
        // the blob's size is the total of `Content-Range` (absent when the whole blob came
        // back as a plain 200, e.g. an empty blob).
        let size = result
            .headers
            .get_optional_string(&HeaderName::from_static("content-range"))
            .and_then(|r| range_total(&r))
            .or(p.content_length)
            .unwrap_or(0);
        // A ranged GET reports the whole blob's MD5 as x-ms-blob-content-md5; Content-MD5 is
        // the whole blob's only when the response holds the whole blob.
        let whole = p.content_length == Some(size);
        let content_md5 = p
            .blob_content_md5
            .clone()
            .or_else(|| p.content_md5.clone().filter(|_| whole))
            .and_then(|v| <[u8; 16]>::try_from(v.as_slice()).ok());
        let mut metadata: Vec<(String, String)> = p.metadata.clone().into_iter().collect();
        metadata.sort();
        let properties = BlobProperties {
            etag,
            size,
            content_md5,
            metadata,
        };
        let stream = result
            .body
            .map_err(move |e| classify(&e, op, &target, false))
            .boxed();
        Ok(Download { properties, stream })
    }

    async fn put(
        &self,
        path: &BlobPath,
        body: Bytes,
        opts: PutOptions,
    ) -> Result<ETag, StorageError> {
        let op = Op::Upload;
        let target = path.to_string();
        let (if_match, if_none_match) = condition_headers(&opts.condition);
        let len = body.len() as u64;
        let up = BlockBlobClientUploadOptions {
            if_match,
            if_none_match,
            blob_content_type: opts.content_type.clone(),
            metadata: metadata_map(&opts.metadata),
            // One partition as large as the body: a single Put Blob request.
            partition_size: NonZero::new(len.max(1)),
            method_options: labelled(op),
            ..Default::default()
        };
        let client = self.blob(path).block_blob_client();
        let result = bounded(
            self.timeout,
            op,
            &target,
            false,
            client.upload(body.into(), Some(up)),
        )
        .await?;
        etag_of(op, &target, result.etag)
    }

    async fn start_upload(
        &self,
        path: &BlobPath,
        opts: PutOptions,
    ) -> Result<Box<dyn BlockUpload>, StorageError> {
        Ok(Box::new(AzureBlockUpload {
            client: self.blob(path),
            target: path.to_string(),
            // A per-upload prefix keeps two writers of the same blob from overwriting each
            // other's staged blocks; every id has the same length, as the service requires.
            prefix: uuid::Uuid::new_v4().simple().to_string(),
            ids: Vec::new(),
            opts,
            content_md5: None,
            timeout: self.timeout,
        }))
    }

    async fn list(&self, container: &str, prefix: &str) -> Result<Vec<BlobItem>, StorageError> {
        let op = Op::List;
        let c = self.service.blob_container_client(container);
        let opts = BlobContainerClientListBlobsOptions {
            prefix: (!prefix.is_empty()).then(|| prefix.to_owned()),
            // Each page's request carries the pager's context.
            method_options: PagerOptions {
                context: labelled(op).context,
                ..Default::default()
            },
            ..Default::default()
        };
        let pager = c
            .list_blobs(Some(opts))
            .map_err(|e| classify(&e, op, container, false))?;
        let items = bounded(
            self.timeout.saturating_mul(10),
            op,
            container,
            false,
            pager.try_collect::<Vec<_>>(),
        )
        .await?;
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            let Some(name) = item.name else { continue };
            let props = item.properties.unwrap_or_default();
            out.push(BlobItem {
                name,
                size: props.content_length.unwrap_or(0),
                etag: quoted_etag(props.etag.map(|e| e.to_string()).unwrap_or_default()),
            });
        }
        Ok(out)
    }

    async fn delete(&self, path: &BlobPath) -> Result<(), StorageError> {
        let target = path.to_string();
        bounded(
            self.timeout,
            Op::DeleteBlob,
            &target,
            false,
            self.blob(path).delete(Some(BlobClientDeleteOptions {
                method_options: labelled(Op::DeleteBlob),
                ..Default::default()
            })),
        )
        .await
        .map(|_| ())
    }
}

// === impl AzureBlockUpload ===

/// A staged-block upload: blocks are invisible until `commit` applies the condition.
struct AzureBlockUpload {
    client: BlobClient,
    target: String,
    prefix: String,
    ids: Vec<Vec<u8>>,
    opts: PutOptions,
    content_md5: Option<[u8; 16]>,
    timeout: Duration,
}

#[async_trait]
impl BlockUpload for AzureBlockUpload {
    async fn stage(&mut self, block: Bytes) -> Result<(), StorageError> {
        // The service refuses empty blocks; an empty stage adds nothing to the blob anyway.
        if block.is_empty() {
            return Ok(());
        }
        let id = format!("{}{:08}", self.prefix, self.ids.len()).into_bytes();
        let len = block.len() as u64;
        let client = self.client.block_blob_client();
        bounded(self.timeout, Op::StageBlock, &self.target, false, async {
            let opts = BlockBlobClientStageBlockOptions {
                method_options: labelled(Op::StageBlock),
                ..Default::default()
            };
            client.stage_block(&id, len, block.into(), Some(opts)).await
        })
        .await?;
        self.ids.push(id);
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
        let op = Op::CommitBlockList;
        let (if_match, if_none_match) = condition_headers(&condition);
        let list: RequestContent<BlockLookupList, azure_core::http::XmlFormat> = BlockLookupList {
            latest: Some(self.ids.clone()),
            ..Default::default()
        }
        .try_into()
        .map_err(|e| classify(&e, op, &self.target, false))?;
        let opts = BlockBlobClientCommitBlockListOptions {
            if_match,
            if_none_match,
            blob_content_type: self.opts.content_type.clone(),
            blob_content_md5: self.content_md5.map(|m| m.to_vec()),
            metadata: metadata_map(&self.opts.metadata),
            method_options: labelled(op),
            ..Default::default()
        };
        let client = self.client.block_blob_client();
        let rsp = bounded(
            self.timeout,
            op,
            &self.target,
            false,
            client.commit_block_list(list, Some(opts)),
        )
        .await?;
        let etag = rsp
            .etag()
            .map_err(|e| classify(&e, op, &self.target, false))?;
        etag_of(op, &self.target, etag)
    }
}
