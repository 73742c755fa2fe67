//! The admin HTTP edge: `/healthz` (liveness), `/readyz` (readiness), `/metrics`.
//!
//! `startup` serves [`router`] on `--http-addr` until the worker has drained, so probes and
//! metrics stay up during shutdown. It knows [`Readiness`] and the metrics registry only,
//! never the worker or storage.
//!
//! [`serve`] is the admin server's accept loop: hyper's HTTP/1 connection with a header-read
//! timeout and a cap on open connections that evicts an idle connection rather than refusing a
//! probe (see [`AdminLimits`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

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
    /// The worker stopped receiving because storage is unusable for every message (an outage,
    /// or the main queue or `--container` missing). Unready at once, not after
    /// `unready_after`: a failed probe has confirmed the outage, and a paused
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

// === serving ===

/// Limits of the admin server (`--admin-header-timeout`, `--admin-max-connections`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdminLimits {
    /// A connection that has not sent a complete request head this long after it opened (or
    /// after its previous response, for keep-alive) is closed. Without it, a client that
    /// connects and sends nothing holds a socket and a task forever.
    pub header_read_timeout: Duration,
    /// Connections open at once. At the cap, a new connection evicts the oldest one that is
    /// not serving a request (the oldest of all when every one is), so the newest arrival,
    /// which is what a kubelet probe is, is always served: refusing it or making it wait
    /// would let idle sockets fail the liveness probe into a restart.
    pub max_connections: usize,
}

/// One open connection, as the accept loop sees it.
struct Tracked {
    /// Requests being served on it; only connections at 0 are evicted first.
    busy: Arc<AtomicU64>,
    /// Cancelled to evict: the connection task drops the socket at once.
    evict: CancellationToken,
}

/// Open connections by accept order (the lowest id is the oldest).
type OpenConnections = Arc<std::sync::Mutex<BTreeMap<u64, Tracked>>>;

/// Serves `router` on `listener` within `limits` until `stop` is cancelled, then stops
/// accepting, lets each connection finish its request in progress (hyper's graceful
/// shutdown) and returns once all have closed.
///
/// Hand-rolled rather than `axum::serve`, which offers neither a header timeout (it builds
/// hyper's connection without a timer, so hyper's own `header_read_timeout` never fires) nor
/// a connection cap; `tower::limit::ConcurrencyLimit` limits requests, not idle sockets. The
/// protocol work stays hyper's: this loop only accepts, counts and evicts.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: AdminLimits,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let open: OpenConnections = Arc::default();
    let tasks = TaskTracker::new();
    let mut next_id = 0u64;
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                // Per-connection failures (a reset before accept, EMFILE) must not end the
                // server; back off briefly so a full fd table is not a busy loop.
                Err(e) => {
                    tracing::warn!(error.message = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let id = next_id;
        next_id += 1;
        let busy = Arc::new(AtomicU64::new(0));
        let evict = CancellationToken::new();
        {
            let mut open = open.lock().expect("admin connection registry");
            while open.len() >= limits.max_connections.max(1) {
                let victim = open
                    .iter()
                    .find(|(_, t)| t.busy.load(Ordering::SeqCst) == 0)
                    .or_else(|| open.iter().next())
                    .map(|(&id, _)| id)
                    .expect("a full registry has an entry");
                if let Some(t) = open.remove(&victim) {
                    tracing::debug!(%peer, "admin connection cap reached; evicting the oldest idle one");
                    t.evict.cancel();
                }
            }
            open.insert(
                id,
                Tracked {
                    busy: busy.clone(),
                    evict: evict.clone(),
                },
            );
        }
        let service = Counted {
            inner: TowerToHyperService::new(router.clone()),
            busy,
        };
        let conn = http.serve_connection(TokioIo::new(stream), service);
        let (open, stop) = (open.clone(), stop.clone());
        tasks.spawn(async move {
            let mut conn = std::pin::pin!(conn);
            let mut draining = false;
            loop {
                tokio::select! {
                    result = conn.as_mut() => {
                        if let Err(e) = result {
                            // A header timeout lands here; it is the client's doing.
                            tracing::debug!(%peer, error.message = %e, "admin connection ended");
                        }
                        break;
                    }
                    // Dropping `conn` closes the socket.
                    _ = evict.cancelled() => break,
                    _ = stop.cancelled(), if !draining => {
                        draining = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
            open.lock().expect("admin connection registry").remove(&id);
        });
    }
    tasks.close();
    tasks.wait().await;
    Ok(())
}

/// The router as a hyper service that counts the requests in progress on its connection, so
/// the cap evicts idle connections before busy ones.
#[derive(Clone)]
struct Counted {
    inner: TowerToHyperService<Router>,
    busy: Arc<AtomicU64>,
}

/// Decrements `busy` when the request's future completes or is dropped.
struct BusyGuard(Arc<AtomicU64>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl hyper::service::Service<hyper::Request<hyper::body::Incoming>> for Counted {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn call(&self, req: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        self.busy.fetch_add(1, Ordering::SeqCst);
        let guard = BusyGuard(self.busy.clone());
        let fut = self.inner.call(req);
        Box::pin(async move {
            let rsp = fut.await;
            drop(guard);
            rsp
        })
    }
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

    fn app_state() -> AdminState {
        let mut registry = Registry::default();
        crate::metrics::Metrics::register(&mut registry);
        let readiness = Readiness::new(Duration::from_secs(30));
        readiness.queue_ok();
        AdminState {
            readiness,
            registry: Arc::new(registry),
        }
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
    // === serve ===

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// Serves `router` on a fresh port within `limits`; the token stops it.
    async fn spawn_serve(
        router: Router,
        limits: AdminLimits,
    ) -> (std::net::SocketAddr, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(serve(listener, router, limits, stop.clone()));
        (addr, stop)
    }

    /// Whether the server closed `s` within `wait` (end of file or reset); false if still open.
    async fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
        let mut buf = [0u8; 256];
        match tokio::time::timeout(wait, s.read(&mut buf)).await {
            Err(_) => false,
            Ok(Ok(0)) | Ok(Err(_)) => true,
            Ok(Ok(n)) => panic!("unexpected bytes {:?}", String::from_utf8_lossy(&buf[..n])),
        }
    }

    async fn get_close(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut rsp = String::new();
        s.read_to_string(&mut rsp).await.unwrap();
        rsp
    }

    #[tokio::test]
    async fn at_the_cap_a_probe_evicts_the_oldest_idle_connection_not_a_busy_one() {
        // A route that holds its request until told, to have a busy connection on demand.
        let entered = Arc::new(tokio::sync::Notify::new());
        let release = Arc::new(tokio::sync::Notify::new());
        let (e, r) = (entered.clone(), release.clone());
        let router = router(app_state()).route(
            "/hold",
            get(move || async move {
                e.notify_one();
                r.notified().await;
                "held\n"
            }),
        );
        let limits = AdminLimits {
            header_read_timeout: Duration::from_secs(600),
            max_connections: 2,
        };
        let (addr, stop) = spawn_serve(router, limits).await;

        // Oldest: busy serving /hold. Next: idle, nothing sent.
        let mut busy = TcpStream::connect(addr).await.unwrap();
        busy.write_all(b"GET /hold HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        entered.notified().await;
        let mut idle = TcpStream::connect(addr).await.unwrap();
        assert!(
            !closed_within(&mut idle, Duration::from_millis(200)).await,
            "below the cap"
        );

        // The server is full; a probe still gets its answer and the idle one makes room.
        assert!(
            get_close(addr, "/healthz")
                .await
                .starts_with("HTTP/1.1 200")
        );
        assert!(
            closed_within(&mut idle, Duration::from_secs(10)).await,
            "idle one evicted"
        );

        // The busy one was spared and finishes its response.
        release.notify_one();
        let mut rsp = String::new();
        busy.read_to_string(&mut rsp).await.unwrap();
        assert!(
            rsp.starts_with("HTTP/1.1 200") && rsp.ends_with("held\n"),
            "{rsp}"
        );
        stop.cancel();
    }

    #[tokio::test]
    async fn a_connection_without_a_request_head_is_closed_at_the_header_timeout() {
        let limits = AdminLimits {
            header_read_timeout: Duration::from_millis(300),
            max_connections: 8,
        };
        let (addr, stop) = spawn_serve(router(app_state()), limits).await;
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /healthz HTTP/1.1\r\nhost:")
            .await
            .unwrap();
        // Open until the timer fires (nothing else would close them: far below the cap).
        assert!(!closed_within(&mut silent, Duration::from_millis(100)).await);
        assert!(closed_within(&mut silent, Duration::from_secs(10)).await);
        assert!(closed_within(&mut slow, Duration::from_secs(10)).await);
        // A complete request is still served.
        assert!(
            get_close(addr, "/healthz")
                .await
                .starts_with("HTTP/1.1 200")
        );
        stop.cancel();
    }

    #[tokio::test]
    async fn stop_ends_serve_after_the_request_in_progress() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let limits = AdminLimits {
            header_read_timeout: Duration::from_secs(600),
            max_connections: 8,
        };
        let server = tokio::spawn(serve(listener, router(app_state()), limits, stop.clone()));
        // An idle keep-alive connection must not hold the server open after stop.
        let mut keep = TcpStream::connect(addr).await.unwrap();
        keep.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let n = keep.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("serve returns after stop")
            .unwrap()
            .unwrap();
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "the port is closed"
        );
    }
}
