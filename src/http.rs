//! The admin HTTP edge: `/healthz` (liveness), `/readyz` (readiness), `/metrics`.
//!
//! `startup` serves [`router`] on `--http-addr` until the worker has drained, so probes and
//! metrics stay up during shutdown. It knows [`Readiness`] and the metrics registry only,
//! never the worker or storage.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio::time::Instant;

/// Whether this replica should get traffic, in Kubernetes' sense: false until the first
/// successful queue call, false while storage has been unreachable for `unready_after`, false
/// while the worker is paused on an account-wide failure, and false for good once draining
/// starts. Clones share one state.
#[derive(Clone, Debug)]
pub struct Readiness {
    inner: Arc<ReadinessInner>,
}

#[derive(Debug)]
struct ReadinessInner {
    /// The origin of the millisecond clock below.
    epoch: Instant,
    unready_after: Duration,
    initialized: AtomicBool,
    draining: AtomicBool,
    /// The worker stopped receiving because storage is unusable for every message. Unready at
    /// once, not after `unready_after`: a failed probe has confirmed the outage, and a paused
    /// replica does no work whatever its other calls say (with only the blob endpoint down,
    /// queue calls still succeed and would keep `failing_since` at 0).
    paused: AtomicBool,
    /// Milliseconds since `epoch`, plus one, of the first failure in the current run of
    /// storage failures; 0 while storage answers.
    failing_since: AtomicU64,
}

impl Readiness {
    /// Not ready yet; storage counts as unreachable after `unready_after` of failures.
    pub fn new(unready_after: Duration) -> Self {
        Readiness {
            inner: Arc::new(ReadinessInner {
                epoch: Instant::now(),
                unready_after,
                initialized: AtomicBool::new(false),
                draining: AtomicBool::new(false),
                paused: AtomicBool::new(false),
                failing_since: AtomicU64::new(0),
            }),
        }
    }

    fn now_ms(&self) -> u64 {
        self.inner.epoch.elapsed().as_millis() as u64 + 1
    }

    /// A queue call succeeded: the worker is initialised and storage is reachable.
    pub fn queue_ok(&self) {
        self.inner.initialized.store(true, Ordering::SeqCst);
        self.storage_ok();
    }

    /// A storage call succeeded: storage is reachable.
    pub fn storage_ok(&self) {
        self.inner.failing_since.store(0, Ordering::SeqCst);
    }

    /// A storage call failed in a way that means "unreachable" (timeouts, 5xx, throttling).
    pub fn storage_failed(&self) {
        let now = self.now_ms();
        let _ =
            self.inner
                .failing_since
                .compare_exchange(0, now, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// Shutdown began: not ready from now on.
    pub fn set_draining(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
    }

    /// The worker paused (true) on an account-wide failure, or resumed (false).
    pub fn set_paused(&self, paused: bool) {
        self.inner.paused.store(paused, Ordering::SeqCst);
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        if self.inner.draining.load(Ordering::SeqCst)
            || self.inner.paused.load(Ordering::SeqCst)
            || !self.inner.initialized.load(Ordering::SeqCst)
        {
            return false;
        }
        match self.inner.failing_since.load(Ordering::SeqCst) {
            0 => true,
            since => {
                let failing = Duration::from_millis(self.now_ms().saturating_sub(since));
                failing < self.inner.unready_after
            }
        }
    }
}

/// What the admin handlers read.
#[derive(Clone, Debug)]
pub struct AdminState {
    pub readiness: Readiness,
    /// Encoded on every scrape; the worker's metrics share their values with it.
    pub registry: Arc<Registry>,
}

/// The admin router.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Liveness: the process answers, so it is alive. Never tied to Azure reachability, or an
/// outage would become a restart storm.
async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    if state.readiness.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        crate::metrics::encode(&state.registry),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn get_status(app: &Router, path: &str) -> (StatusCode, String) {
        let rsp = app
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = rsp.status();
        let body = axum::body::to_bytes(rsp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    fn app() -> (Router, Readiness) {
        let mut registry = Registry::default();
        crate::metrics::Metrics::register(&mut registry);
        let readiness = Readiness::new(Duration::from_secs(30));
        let state = AdminState {
            readiness: readiness.clone(),
            registry: Arc::new(registry),
        };
        (router(state), readiness)
    }

    #[tokio::test(start_paused = true)]
    async fn readiness_lifecycle() {
        let (app, readiness) = app();
        assert_eq!(get_status(&app, "/healthz").await.0, StatusCode::OK);
        assert_eq!(
            get_status(&app, "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        // A blob call alone does not initialise; the first queue call does.
        readiness.storage_ok();
        assert_eq!(
            get_status(&app, "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        readiness.queue_ok();
        assert_eq!(get_status(&app, "/readyz").await.0, StatusCode::OK);
        // Failures shorter than --unready-after keep it ready.
        readiness.storage_failed();
        tokio::time::advance(Duration::from_secs(29)).await;
        readiness.storage_failed();
        assert_eq!(get_status(&app, "/readyz").await.0, StatusCode::OK);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(
            get_status(&app, "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        // Liveness is not tied to storage.
        assert_eq!(get_status(&app, "/healthz").await.0, StatusCode::OK);
        readiness.storage_ok();
        assert_eq!(get_status(&app, "/readyz").await.0, StatusCode::OK);
        // A pause is unready at once, whatever other calls succeed meanwhile.
        readiness.set_paused(true);
        readiness.queue_ok();
        assert_eq!(
            get_status(&app, "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        readiness.set_paused(false);
        assert_eq!(get_status(&app, "/readyz").await.0, StatusCode::OK);
        readiness.set_draining();
        readiness.storage_ok();
        assert_eq!(
            get_status(&app, "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[tokio::test]
    async fn metrics_endpoint_serves_the_registry() {
        let (app, _) = app();
        let (status, body) = get_status(&app, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            body.contains("rollq_messages_total{outcome=\"completed\"} 0"),
            "{body}"
        );
    }

    #[tokio::test]
    async fn serves_over_a_real_socket() {
        let (app, readiness) = app();
        readiness.queue_ok();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream
            .write_all(b"GET /readyz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut rsp = String::new();
        stream.read_to_string(&mut rsp).await.unwrap();
        assert!(rsp.starts_with("HTTP/1.1 200"), "{rsp}");
        server.abort();
    }
}
