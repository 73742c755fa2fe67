//! `App`: wires settings, storage, metrics, readiness, the admin server and the worker.
//!
//! `cli::worker` builds an [`App`] from the command line and the Azure adapter; tests build
//! one over the in-memory fakes. [`App::build`] binds the admin port (so port 0 works and the
//! real address is known before anything runs); [`App::run_until_stopped`] drives the worker
//! until shutdown and keeps the admin server up through the drain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::http::{AdminLimits, AdminState, Readiness};
use crate::metrics::{Metrics, StorageRequests};
use crate::shutdown::Shutdown;
use crate::storage::{BlobStore, QueueService};
use crate::worker::{RunEnd, Settings, Worker, WorkerArgs};

/// A built worker process, not yet running.
#[must_use = "call run_until_stopped"]
#[derive(Debug)]
pub struct App {
    worker: Worker,
    listener: TcpListener,
    admin: AdminState,
    admin_limits: AdminLimits,
    metrics: Metrics,
}

impl App {
    /// Binds `http_addr`, registers the metrics and builds the worker. `unready_after` is how
    /// long storage may fail before `/readyz` turns 503; `requests` is the connection's request
    /// counter, exported as `rollq_storage_requests_total` (a fresh one over the fakes).
    pub async fn build(
        settings: Settings,
        http_addr: SocketAddr,
        unready_after: Duration,
        queues: &dyn QueueService,
        blobs: Arc<dyn BlobStore>,
        requests: StorageRequests,
    ) -> anyhow::Result<App> {
        let listener = TcpListener::bind(http_addr)
            .await
            .with_context(|| format!("binding the admin port {http_addr} (--http-addr)"))?;
        let mut registry = Registry::default();
        let metrics = Metrics::register_with_requests(&mut registry, requests);
        let readiness = Readiness::new(unready_after);
        // The flags' defaults, written once in `WorkerArgs`; `with_admin_limits` overrides them.
        let admin_limits =
            WorkerArgs::defaults(&settings.queue, &settings.container).admin_limits();
        let worker = Worker::new(settings, queues, blobs, metrics.clone(), readiness.clone());
        Ok(App {
            worker,
            listener,
            admin: AdminState {
                readiness,
                registry: Arc::new(registry),
            },
            admin_limits,
            metrics,
        })
    }

    /// The admin server's header-read timeout and connection cap (`--admin-*` flags).
    pub fn with_admin_limits(mut self, limits: AdminLimits) -> App {
        self.admin_limits = limits;
        self
    }

    /// The admin server's bound address.
    pub fn http_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The worker (for tests that drive `process_one`).
    pub fn worker(&self) -> &Worker {
        &self.worker
    }

    /// The metrics (for tests).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Runs the worker until `shutdown`, `--exit-when-idle` or `--max-messages`; the admin
    /// server stops only after the worker has drained. Call `worker().check()` first.
    pub async fn run_until_stopped(self, shutdown: Shutdown) -> anyhow::Result<RunEnd> {
        let App {
            worker,
            listener,
            admin,
            admin_limits,
            ..
        } = self;
        let addr = listener.local_addr()?;
        let admin_stop = CancellationToken::new();
        let server = {
            let stop = admin_stop.clone();
            tokio::spawn(crate::http::serve(
                listener,
                crate::http::router(admin),
                admin_limits,
                stop,
            ))
        };
        tracing::info!(
            %addr,
            header_read_timeout = ?admin_limits.header_read_timeout,
            max_connections = admin_limits.max_connections,
            "admin http listening (/healthz /readyz /metrics)"
        );

        let s = worker.settings();
        tracing::info!(
            queue = %s.queue,
            poison_queue = %s.poison_queue(),
            container = %s.container,
            max_in_flight = s.max_in_flight,
            visibility_timeout = ?s.visibility_timeout,
            "worker started"
        );
        let end = worker.run(shutdown).await;
        admin_stop.cancel();
        // A scraper holding a connection open must not keep the process alive.
        match tokio::time::timeout(Duration::from_secs(5), server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error.message = %e, "admin server failed"),
            Ok(Err(e)) => tracing::warn!(error.message = %e, "admin server task failed"),
            Err(_) => tracing::warn!("admin server did not stop within 5s; exiting anyway"),
        }
        Ok(end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::memory::{MemoryBlobStore, MemoryQueueService};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn status(addr: SocketAddr, path: &str) -> std::io::Result<u16> {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut rsp = String::new();
        s.read_to_string(&mut rsp).await?;
        Ok(rsp
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0))
    }

    #[tokio::test]
    async fn serves_probes_until_the_worker_has_stopped() {
        let queues = MemoryQueueService::new();
        let blobs = MemoryBlobStore::new();
        blobs.create_container_if_missing("in").await.unwrap();
        queues.queue("jobs").create_if_missing().await.unwrap();
        let mut settings = Settings::with_defaults("jobs", "acct", "in").unwrap();
        settings.max_poll_interval = Duration::from_millis(50);
        let app = App::build(
            settings,
            "127.0.0.1:0".parse().unwrap(),
            Duration::from_secs(30),
            &queues,
            Arc::new(blobs),
            StorageRequests::default(),
        )
        .await
        .unwrap();
        let addr = app.http_addr();
        app.worker().check().await.unwrap();
        let shutdown = Shutdown::new();
        let run = tokio::spawn(app.run_until_stopped(shutdown.clone()));
        assert_eq!(status(addr, "/healthz").await.unwrap(), 200);
        assert_eq!(status(addr, "/readyz").await.unwrap(), 200);
        shutdown.trigger();
        let end = tokio::time::timeout(Duration::from_secs(30), run)
            .await
            .expect("stops")
            .unwrap()
            .unwrap();
        assert_eq!(end, RunEnd::Stopped);
        assert!(
            status(addr, "/healthz").await.is_err(),
            "the admin port is closed after the drain"
        );
    }

    #[test]
    fn refuses_a_queue_without_room_for_its_poison_twin() {
        // Validation happens once, when the settings are made; App::build gets valid ones.
        let err = Settings::with_defaults(&"q".repeat(57), "acct", "in").unwrap_err();
        assert!(err.contains("-poison"), "{err}");
    }
}
