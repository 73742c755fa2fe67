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

use crate::http::{AdminState, Readiness};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::storage::{BlobStore, QueueService};
use crate::worker::{RunEnd, Settings, Worker};

/// A built worker process, not yet running.
#[must_use = "call run_until_stopped"]
#[derive(Debug)]
pub struct App {
    worker: Worker,
    listener: TcpListener,
    admin: AdminState,
    metrics: Metrics,
}

impl App {
    /// Binds `http_addr`, registers the metrics and builds the worker. `unready_after` is how
    /// long storage may fail before `/readyz` turns 503.
    pub async fn build(
        settings: Settings,
        http_addr: SocketAddr,
        unready_after: Duration,
        queues: &dyn QueueService,
        blobs: Arc<dyn BlobStore>,
    ) -> anyhow::Result<App> {
        settings.validate().map_err(anyhow::Error::msg)?;
        let listener = TcpListener::bind(http_addr)
            .await
            .with_context(|| format!("binding the admin port {http_addr} (--http-addr)"))?;
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let readiness = Readiness::new(unready_after);
        let worker = Worker::new(settings, queues, blobs, metrics.clone(), readiness.clone());
        Ok(App {
            worker,
            listener,
            admin: AdminState {
                readiness,
                registry: Arc::new(registry),
            },
            metrics,
        })
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
            ..
        } = self;
        let addr = listener.local_addr()?;
        let admin_stop = CancellationToken::new();
        let server = {
            let stop = admin_stop.clone();
            tokio::spawn(
                axum::serve(listener, crate::http::router(admin))
                    .with_graceful_shutdown(async move { stop.cancelled().await })
                    .into_future(),
            )
        };
        tracing::info!(%addr, "admin http listening (/healthz /readyz /metrics)");

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
