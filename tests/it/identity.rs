//! Entra ID, exercised end to end: a `rollq worker` child with no key, authorised by bearer
//! tokens against Azurite over HTTPS (`--oauth basic`), its tokens coming from local HTTPS
//! endpoints that a test CA made at test time vouches for (`SSL_CERT_FILE`).
//!
//! Workload identity is configured as `deploy/aks` does it (client id, tenant id, federated
//! token file, authority host, account name), except that the endpoints and the authority
//! point at loopback. Managed identity uses the App Service source (`IDENTITY_ENDPOINT` /
//! `IDENTITY_HEADER`); the SDK's IMDS source is fixed to 169.254.169.254 and is never
//! exercised. Every child routes any non-loopback request to a tripwire proxy that counts
//! connections, so nothing here can reach a real identity service unnoticed.
//!
//! The test process itself has no token and does not trust the test CA: it sets things up
//! and inspects them through `rollq` children with the account key over HTTPS.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::support::tls::TestCa;
use crate::support::token_server::{TokenPolicy, TokenServer};
use crate::support::{Azurite, TcpProxy, unique_name};
use crate::worker_support::{PATIENCE, WorkerProc, eventually, expected_output, sample, seed_csv};

const TENANT_ID: &str = "3f1c2a7e-5b8d-4c1e-9a6f-0d2b4e6a8c10";
const CLIENT_ID: &str = "9b2d7c41-8e3a-4f5b-a1c6-7d8e9f0a1b2c";
/// What the AKS webhook projects into the pod: a Kubernetes service-account token.
const FEDERATED_TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.projected-service-account-token.sig";
const IDENTITY_SECRET: &str = "local-identity-header-secret";
const STORAGE_SCOPE: &str = "https://storage.azure.com/.default";

/// Counts connections on a loopback port, keeps each one's first line and drops it: the
/// proxy every child is given for anything that is not loopback, so an attempt to reach IMDS
/// or Entra ID fails here, visibly.
struct Tripwire {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    /// The request line of each connection (`GET http://169.254.169.254/… HTTP/1.1` for a
    /// forwarded request, `CONNECT host:443 …` for a tunnel).
    lines: Arc<Mutex<Vec<String>>>,
}

impl Tripwire {
    fn start() -> Tripwire {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (h, l) = (hits.clone(), lines.clone());
        // Detached: it only records, and the listener dies with the test binary.
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let mut line = String::new();
                let _ = BufReader::new(&conn).read_line(&mut line);
                l.lock().unwrap().push(line.trim().to_owned());
                h.fetch_add(1, Ordering::SeqCst);
            }
        });
        Tripwire { addr, hits, lines }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// One test's world: CA, HTTPS Azurite, token endpoints, tripwire, a queue and a container.
struct World {
    /// Its PEM files must outlive every child that reads them.
    _ca: TestCa,
    az: Azurite,
    tokens: TokenServer,
    tripwire: Tripwire,
    /// Input files and the federated token file.
    dir: tempfile::TempDir,
    queue: String,
    container: String,
}

impl World {
    fn new(policy: TokenPolicy) -> World {
        let ca = TestCa::new();
        let az = Azurite::start_https(&ca);
        let tokens = TokenServer::start(&ca, policy, IDENTITY_SECRET);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("federated-token"), FEDERATED_TOKEN).unwrap();
        let (queue, container) = (unique_name("iq"), unique_name("ic"));
        az.rollq_ok(&["queue", "create", "--queue", &queue]);
        az.rollq_ok(&["blob", "create-container", "--container", &container]);
        World {
            _ca: ca,
            az,
            tokens,
            tripwire: Tripwire::start(),
            dir,
            queue,
            container,
        }
    }

    /// Uploads `body` as `name` and enqueues it (`rollq submit`, account key).
    fn submit(&self, name: &str, body: &[u8]) {
        let path = self.dir.path().join(name);
        std::fs::write(&path, body).unwrap();
        let path = path.to_str().unwrap();
        self.az.rollq_ok(&[
            "submit",
            path,
            "--container",
            &self.container,
            "--queue",
            &self.queue,
        ]);
    }

    /// A blob's bytes, read with the account key.
    fn blob(&self, name: &str) -> String {
        self.az
            .rollq_ok(&["blob", "get", "--container", &self.container, name])
            .0
    }

    /// (approximate messages, poison approximate messages) from `rollq queue stats`.
    fn counts(&self) -> (u64, u64) {
        let (out, _) = self
            .az
            .rollq_ok(&["queue", "stats", "--queue", &self.queue]);
        let field = |k: &str| -> u64 {
            out.lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("no {k} in {out}"))
        };
        (
            field("approximate_messages:"),
            field("poison_approximate_messages:"),
        )
    }

    /// A `rollq` child with no key: account name and endpoints (blob through `blob_via` if
    /// given), the test CA trusted, any identity variable of the developer's shell removed,
    /// and non-loopback traffic sent to the tripwire.
    fn keyless(&self, blob_via: Option<SocketAddr>) -> Command {
        let mut cmd = self.az.rollq();
        cmd.env_remove("AZURE_STORAGE_CONNECTION_STRING")
            .env("AZURE_STORAGE_ACCOUNT", "devstoreaccount1")
            .env(
                "ROLLQ_BLOB_ENDPOINT",
                match blob_via {
                    Some(a) => format!("https://{a}/devstoreaccount1"),
                    None => self.az.blob_endpoint(),
                },
            )
            .env("ROLLQ_QUEUE_ENDPOINT", self.az.queue_endpoint());
        for var in [
            "AZURE_AUTHORITY_HOST",
            "IDENTITY_ENDPOINT",
            "IDENTITY_HEADER",
            "IDENTITY_SERVER_THUMBPRINT",
            "IMDS_ENDPOINT",
            "MSI_ENDPOINT",
            "MSI_SECRET",
            "http_proxy",
            "https_proxy",
            "all_proxy",
            "no_proxy",
        ] {
            cmd.env_remove(var);
        }
        // reqwest honours these (the SDK's default transport and ours alike): loopback goes
        // direct, anything else, 169.254.169.254 included, to the tripwire.
        let trip = format!("http://{}", self.tripwire.addr);
        cmd.env("HTTP_PROXY", &trip)
            .env("HTTPS_PROXY", &trip)
            .env("ALL_PROXY", &trip)
            .env("NO_PROXY", "127.0.0.1,localhost");
        cmd
    }

    /// As `deploy/aks` configures the worker (the webhook's four variables and the account),
    /// with the authority host at the local token endpoint.
    fn workload_identity(&self, blob_via: Option<SocketAddr>) -> Command {
        let mut cmd = self.keyless(blob_via);
        cmd.env("AZURE_CLIENT_ID", CLIENT_ID)
            .env("AZURE_TENANT_ID", TENANT_ID)
            .env("AZURE_FEDERATED_TOKEN_FILE", self.token_file())
            .env("AZURE_AUTHORITY_HOST", self.tokens.authority_host());
        cmd
    }

    fn token_file(&self) -> PathBuf {
        self.dir.path().join("federated-token")
    }

    fn worker(&self, cmd: Command, args: &[&str]) -> WorkerProc {
        WorkerProc::spawn_with(cmd, &self.queue, &self.container, args)
    }
}

async fn completed(w: &WorkerProc) -> f64 {
    let m = w.metrics().await;
    sample(&m, "rollq_messages_total", &[("outcome", "completed")]).unwrap_or(0.0)
}

async fn outcome(w: &WorkerProc, outcome: &str) -> Option<f64> {
    sample(
        &w.metrics().await,
        "rollq_messages_total",
        &[("outcome", outcome)],
    )
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn expected(body: &[u8]) -> String {
    String::from_utf8(expected_output(body)).unwrap()
}

/// Test 1: a worker with workload identity and no key drains the queue; the exchange is
/// the one `deploy/aks` relies on (tenant in the path, client id, the projected token as the
/// assertion, the storage scope), and its token is cached for the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_identity_drains_the_queue_without_a_key() {
    let world = World::new(TokenPolicy::default());
    let (a, b) = (seed_csv(1, 300), seed_csv(2, 200));
    world.submit("wi-a.csv", &a);
    world.submit("wi-b.csv", &b);
    let worker = world.worker(world.workload_identity(None), &[]);
    eventually("both messages completed", PATIENCE, || async {
        (completed(&worker).await == 2.0).then_some(())
    })
    .await;
    assert_eq!(world.blob("wi-a_aggregated.csv"), expected(&a));
    assert_eq!(world.blob("wi-b_aggregated.csv"), expected(&b));
    eventually("the queue drained", PATIENCE, || async {
        (world.counts() == (0, 0)).then_some(())
    })
    .await;
    assert!(
        worker
            .log()
            .contains(&format!("workload identity (client id {CLIENT_ID})")),
        "the connection line names the credential: {}",
        worker.log()
    );

    let requests = world.tokens.requests();
    assert_eq!(
        requests.len(),
        1,
        "one exchange, then the cached token: {requests:?}"
    );
    let r = &requests[0];
    assert_eq!(r.path, format!("/{TENANT_ID}/oauth2/v2.0/token"));
    assert_eq!(r.params["client_id"], CLIENT_ID);
    assert_eq!(r.params["client_assertion"], FEDERATED_TOKEN);
    assert_eq!(r.params["scope"], STORAGE_SCOPE);
    assert_eq!(world.tripwire.hits(), 0, "nothing left loopback");
}

/// Test 2: tokens that expire during the run are refreshed. Each JWT dies (for Azurite) 7 s
/// after issue while the SDK is told 302 s, so with its 5-minute margin it refreshes after
/// 2 s (the 5 s between keep a request signed just before the refresh valid on a busy
/// machine); a message submitted after the first token died still completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_token_is_refreshed_during_the_run() {
    let world = World::new(TokenPolicy {
        audience: None,
        jwt_lifetime: Duration::from_secs(7),
        reported_lifetime: Duration::from_secs(302),
    });
    let a = seed_csv(3, 120);
    world.submit("early.csv", &a);
    let worker = world.worker(world.workload_identity(None), &[]);
    eventually("the first message completed", PATIENCE, || async {
        (completed(&worker).await == 1.0).then_some(())
    })
    .await;
    let first_exp = world.tokens.requests()[0].issued.expect("a token").1;
    // Real time has to pass for a real expiry; this waits for a condition, with a deadline.
    eventually("the first token expired", PATIENCE, || async {
        (unix_now() > first_exp).then_some(())
    })
    .await;

    let b = seed_csv(4, 120);
    world.submit("late.csv", &b);
    eventually("the late message completed", PATIENCE, || async {
        (completed(&worker).await == 2.0).then_some(())
    })
    .await;
    assert_eq!(world.blob("late_aggregated.csv"), expected(&b));
    assert_eq!(world.blob("early_aggregated.csv"), expected(&a));
    let issued = world.tokens.tokens_issued();
    assert!(issued >= 2, "refreshed: {issued} tokens issued");
    assert_eq!(
        outcome(&worker, "retried").await,
        Some(0.0),
        "never refused"
    );
    assert_eq!(world.tripwire.hits(), 0);
}

/// Test 3: a token for the wrong audience, handed out mid-job, is an auth failure of the
/// platform: the job is not an attempt (nothing poisoned even at `--max-dequeue-count 1`),
/// the log says why, `/readyz` goes 503, the worker stays up and the message stays queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_for_the_wrong_audience_is_a_platform_failure() {
    let world = World::new(TokenPolicy {
        audience: None,
        jwt_lifetime: Duration::from_secs(3600),
        // Refreshed every 2 s, so a changed audience reaches the worker within the job.
        reported_lifetime: Duration::from_secs(302),
    });
    let rate = 40 * 1024;
    // About 20 s at `rate`: the job is still reading when the audience changes.
    let body = seed_csv(5, (rate * 20 / 26) as u64);
    world.submit("refused.csv", &body);
    let slow = TcpProxy::throttled(world.az.blob_addr(), rate);
    let worker = world.worker(
        world.workload_identity(Some(slow.addr())),
        &[
            "--visibility-timeout",
            "20s",
            "--max-dequeue-count",
            "1",
            "--unready-after",
            "1s",
            "--download-block-size",
            "64KiB",
            "--download-parallel",
            "1",
        ],
    );
    worker.wait_reading("the worker reading the input").await;
    assert_eq!(worker.status("/readyz").await, 200);
    world.tokens.set_policy(TokenPolicy {
        audience: Some("https://vault.azure.net".into()),
        jwt_lifetime: Duration::from_secs(3600),
        reported_lifetime: Duration::from_secs(302),
    });
    let log = eventually("the job failing on the new token", PATIENCE, || async {
        (outcome(&worker, "retried").await == Some(1.0)).then(|| worker.log())
    })
    .await;
    let line = log
        .lines()
        .find(|l| l.contains("message will be retried"))
        .expect("the outcome line");
    assert!(
        line.contains("auth (HTTP 403 AuthenticationFailed: Invalid token audience.)"),
        "the error names the auth failure and the audience: {line}"
    );
    assert_eq!(outcome(&worker, "poisoned").await, Some(0.0));
    assert!(!log.contains("poison the message"), "{log}");
    eventually("readiness 503", PATIENCE, || async {
        (worker.status("/readyz").await == 503).then_some(())
    })
    .await;
    let mut worker = worker;
    assert!(worker.alive(), "a bad token is no reason to exit");
    worker.kill9();
    assert_eq!(world.counts(), (1, 0), "still queued, nothing poisoned");
    assert!(
        world.tokens.requests().iter().any(|r| r.issued.is_some()
            && r.params.get("scope").map(String::as_str) == Some(STORAGE_SCOPE)),
    );
    assert_eq!(world.tripwire.hits(), 0);
}

/// Test 4: managed identity through the source that reads `IDENTITY_ENDPOINT` and
/// `IDENTITY_HEADER` (App Service protocol 2019-08-01), user-assigned by client id, against
/// the loopback endpoint; the IMDS address is never tried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_identity_from_the_identity_endpoint_drains_the_queue() {
    let world = World::new(TokenPolicy::default());
    let a = seed_csv(6, 200);
    world.submit("mi.csv", &a);
    let mut cmd = world.keyless(None);
    cmd.env("AZURE_CLIENT_ID", CLIENT_ID)
        .env("IDENTITY_ENDPOINT", world.tokens.identity_endpoint())
        .env("IDENTITY_HEADER", IDENTITY_SECRET);
    let worker = world.worker(cmd, &[]);
    eventually("the message completed", PATIENCE, || async {
        (completed(&worker).await == 1.0).then_some(())
    })
    .await;
    assert_eq!(world.blob("mi_aggregated.csv"), expected(&a));
    assert!(
        worker.log().contains(&format!(
            "user-assigned managed identity (client id {CLIENT_ID})"
        )),
        "{}",
        worker.log()
    );
    let requests = world.tokens.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    let r = &requests[0];
    assert_eq!((r.method.as_str(), r.path.as_str()), ("GET", "/msi/token"));
    assert_eq!(r.params["api-version"], "2019-08-01");
    assert_eq!(r.params["resource"], "https://storage.azure.com");
    assert_eq!(r.params["client_id"], CLIENT_ID);
    assert_eq!(r.headers["x-identity-header"], IDENTITY_SECRET);
    assert_eq!(world.tripwire.hits(), 0, "IMDS never tried");
}

/// The guard behind test 4: without `IDENTITY_ENDPOINT` the SDK picks its IMDS source
/// (169.254.169.254, fixed in the SDK), and that request lands on the tripwire instead of the
/// network. So the managed-identity test above could not have reached IMDS unnoticed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_identity_endpoint_imds_is_caught_by_the_tripwire() {
    let world = World::new(TokenPolicy::default());
    let mut worker = {
        let mut cmd = world.keyless(None);
        cmd.args([
            "worker",
            "--queue",
            &world.queue,
            "--container",
            &world.container,
        ])
        .args(["--http-addr", "127.0.0.1:0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
        crate::support::ChildGuard(cmd.spawn().expect("spawn rollq worker"))
    };
    eventually("the IMDS request caught", PATIENCE, || async {
        (world.tripwire.hits() > 0).then_some(())
    })
    .await;
    let _ = worker.0.kill();
    let lines = world.tripwire.lines();
    assert!(
        lines
            .iter()
            .all(|l| l.contains("169.254.169.254/metadata/identity/oauth2/token")),
        "only IMDS was tried: {lines:?}"
    );
    assert!(world.tokens.requests().is_empty(), "no token was issued");
    assert_eq!(world.counts(), (0, 0));
}
