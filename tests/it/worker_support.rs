//! Helpers for the worker tests: a `rollq worker` child process (killed on drop), a tiny HTTP
//! client for its admin port, a worker behind a bandwidth-throttling proxy (a deliberately
//! slow input), CSV generators, and polling with deadlines.
#![allow(dead_code)] // Not every test file uses every helper.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rollq::aggregate::{self, Sink, Source, Spec};
use rollq::storage::{BlobPath, BlobStore, Connection, PutOptions, Queue};

pub use crate::support::peek_texts;
use crate::support::{Azurite, TcpProxy};

/// Generous bound for anything a test waits on (CI machines are slow and shared).
pub const PATIENCE: Duration = Duration::from_secs(120);

/// Polls `check` every 100 ms until it returns `Some`, panicking with `what` after `limit`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A running `rollq worker`; killed (SIGKILL) and reaped on drop.
pub struct WorkerProc {
    child: Child,
    /// The admin address the worker printed on stdout.
    pub http: SocketAddr,
    /// Everything the worker logged so far (stderr), for diagnostics.
    log: Arc<Mutex<String>>,
}

impl WorkerProc {
    /// Starts `rollq worker --queue Q --container C --http-addr 127.0.0.1:0 ARGS…` with
    /// `cmd`'s environment and waits for its "listening" line.
    pub fn spawn_with(mut cmd: Command, queue: &str, container: &str, args: &[&str]) -> WorkerProc {
        cmd.args(["worker", "--queue", queue, "--container", container])
            .args(["--http-addr", "127.0.0.1:0", "--max-poll-interval", "500ms"])
            .args(args)
            .env("RUST_LOG", "rollq=debug,warn")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn rollq worker");
        let log = Arc::new(Mutex::new(String::new()));
        let mut stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + PATIENCE;
        let http = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = line.strip_prefix("rollq worker listening on http://") {
                        break addr.trim().parse().expect("a socket address");
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "rollq worker did not start; its log:\n{}",
                        log.lock().unwrap()
                    );
                }
            }
        };
        WorkerProc { child, http, log }
    }

    /// Starts a worker connected straight to `az`.
    pub fn spawn(az: &Azurite, queue: &str, container: &str, args: &[&str]) -> WorkerProc {
        Self::spawn_with(az.rollq(), queue, container, args)
    }

    /// The process id (for signals).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM to this worker (and only this one, by its own pid).
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// SIGKILL, no chance to clean up (`kill -9`).
    pub fn kill9(&mut self) {
        self.child.kill().expect("kill -9 the worker");
        let _ = self.child.wait();
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Waits for the process to exit, up to `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the worker did not exit within {limit:?}; its log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The worker's log so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// GET `path` on the admin port: (status, body).
    pub async fn get(&self, path: &str) -> io::Result<(u16, String)> {
        let addr = self.http;
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || http_get(addr, &path))
            .await
            .expect("join")
    }

    /// The status code of GET `path`, 0 when the request failed.
    pub async fn status(&self, path: &str) -> u16 {
        self.get(path).await.map(|(s, _)| s).unwrap_or(0)
    }

    /// `/metrics` parsed with a Prometheus text parser.
    pub async fn metrics(&self) -> prometheus_parse::Scrape {
        let (status, body) = self.get("/metrics").await.expect("scrape /metrics");
        assert_eq!(status, 200);
        let lines = body.lines().map(|l| Ok(l.to_owned()));
        prometheus_parse::Scrape::parse(lines).expect("parse /metrics")
    }

    /// Waits (up to [`PATIENCE`]) until the worker has read input bytes: a job is under way.
    pub async fn wait_reading(&self, what: &str) {
        eventually(what, PATIENCE, || async {
            let m = self.metrics().await;
            (sample(&m, "rollq_bytes_read_total", &[]).unwrap_or(0.0) > 0.0).then_some(())
        })
        .await;
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- worker {} log ---\n{}", self.child.id(), self.log());
        }
    }
}

fn http_get(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut rsp = String::new();
    s.read_to_string(&mut rsp)?;
    let status = rsp
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad response {rsp:?}")))?;
    let body = rsp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    // axum answers small bodies with Content-Length; chunked only for streams.
    Ok((status, body))
}

/// The value of one sample: metric name and label pairs that must match.
pub fn sample(
    scrape: &prometheus_parse::Scrape,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

// === data ===

/// Seed-like CSV: `Datetime,Temperature` and one row a minute for `rows` minutes from a
/// start that depends on `seed`, values with one decimal.
pub fn seed_csv(seed: u64, rows: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(rows as usize * 26 + 32);
    out.extend_from_slice(b"Datetime,Temperature\n");
    let start = chrono::NaiveDate::from_ymd_opt(2000 + seed as i32, 1, 1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap();
    for i in 0..rows {
        let t = start + chrono::Duration::minutes(i as i64);
        let tenths = 100 + (i * 7919 + seed * 31 + i / 60 * 13) % 300;
        writeln!(
            out,
            "{},{}.{}",
            t.format("%Y-%m-%d %H:%M:%S"),
            tenths / 10,
            tenths % 10
        )
        .unwrap();
    }
    out
}

struct MemSource(Vec<u8>);
impl Source for MemSource {
    fn open(&mut self) -> io::Result<Box<dyn Read + '_>> {
        Ok(Box::new(&self.0[..]))
    }
    fn can_reopen(&self) -> bool {
        true
    }
}

struct MemSink(Vec<u8>);
impl Write for MemSink {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.write(b)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
impl Sink for MemSink {
    fn restart(&mut self) -> io::Result<()> {
        self.0.clear();
        Ok(())
    }
}

/// What the reducer makes of `input` with the default options (the library `rollq
/// aggregate` uses).
pub fn expected_output(input: &[u8]) -> Vec<u8> {
    let mut sink = MemSink(Vec::new());
    aggregate::run(&Spec::default(), &mut MemSource(input.to_vec()), &mut sink).expect("reduce");
    sink.0
}

// === storage set-up ===

/// A queue and a container with fresh names, both created.
pub async fn fresh_queue_and_container(conn: &Connection) -> (Arc<dyn Queue>, String) {
    let queue_name = crate::support::unique_name("wq");
    let container = crate::support::unique_name("wc");
    let queue = conn.queues.queue(&queue_name);
    queue.create_if_missing().await.unwrap();
    conn.blobs
        .create_container_if_missing(&container)
        .await
        .unwrap();
    (queue, container)
}

/// Uploads a blob.
pub async fn upload(blobs: &Arc<dyn BlobStore>, container: &str, name: &str, body: Vec<u8>) {
    blobs
        .put(
            &BlobPath::new(container, name),
            Bytes::from(body),
            PutOptions::default(),
        )
        .await
        .unwrap();
}

/// Downloads a blob, or `None` when it does not exist.
pub async fn download(blobs: &Arc<dyn BlobStore>, container: &str, name: &str) -> Option<Vec<u8>> {
    use futures::TryStreamExt;
    let path = BlobPath::new(container, name);
    match blobs.open_read(&path, None, Default::default()).await {
        Ok(stream) => {
            let chunks: Vec<Bytes> = stream.try_collect().await.unwrap();
            Some(chunks.concat())
        }
        Err(e) if e.kind == rollq::storage::ErrorKind::NotFound => None,
        Err(e) => panic!("download {path}: {e}"),
    }
}

/// Drains `queue` with a worker that allows each message one attempt (`--max-dequeue-count
/// 1`) and exits when idle: a failing message is poisoned at once, and a message delivered
/// before completes only if every earlier delivery was a release, not an attempt.
pub async fn drain_allowing_one_attempt(az: &Azurite, queue: &str, container: &str) {
    let mut finisher = WorkerProc::spawn(
        az,
        queue,
        container,
        &["--exit-when-idle", "2s", "--max-dequeue-count", "1"],
    );
    let status = finisher.wait_exit(PATIENCE).await;
    assert!(status.success(), "exit {status}");
}

/// Asserts that `queue` holds no message and that its `<queue>-poison` twin (the worker
/// creates it) holds none either: everything was completed, nothing poisoned.
pub async fn assert_queue_and_poison_empty(conn: &Connection, queue: &Arc<dyn Queue>) {
    assert_eq!(queue.approximate_count().await.unwrap(), 0);
    let poison = conn.queues.queue(&format!("{}-poison", queue.name()));
    assert_eq!(
        poison.approximate_count().await.unwrap(),
        0,
        "nothing poisoned"
    );
}

// === a slow link ===

/// A worker whose blob service sits behind a proxy that forwards downloads at `bytes_per_sec`
/// (a deliberately slow input), reading 256 KiB blocks one at a time so the bytes trickle in
/// steadily; the queue service is reached directly. Keep the proxy alive as long as the
/// worker needs its input.
pub fn spawn_slow_worker(
    az: &Azurite,
    bytes_per_sec: usize,
    queue: &str,
    container: &str,
    args: &[&str],
) -> (TcpProxy, WorkerProc) {
    let slow = TcpProxy::throttled(az.blob_addr(), bytes_per_sec);
    let cmd = az.rollq_via(slow.addr(), az.queue_addr());
    let small_blocks = [
        "--download-block-size",
        "256KiB",
        "--download-parallel",
        "1",
    ];
    let args: Vec<&str> = args.iter().copied().chain(small_blocks).collect();
    let worker = WorkerProc::spawn_with(cmd, queue, container, &args);
    (slow, worker)
}

// === credentials ===

/// A connection string for the emulator account with these endpoints and an account SAS
/// (`tests/it/support/azurite.rs` signs one) instead of the key.
pub fn sas_connection_string(blob: SocketAddr, queue: SocketAddr, sas: &str) -> String {
    format!(
        "BlobEndpoint=http://{blob}/devstoreaccount1;QueueEndpoint=http://{queue}/devstoreaccount1;\
         SharedAccessSignature={sas}"
    )
}

/// An expiry `secs` from now in the form a SAS carries (`se`, RFC 3339, whole seconds).
pub fn sas_expiry_in(secs: u64) -> String {
    let at = std::time::SystemTime::now() + Duration::from_secs(secs);
    humantime::format_rfc3339_seconds(at).to_string()
}

/// [`expected_output`] under another reducer spec (e.g. `--bucket 1m` for an output that
/// grows with the input, so blocks are staged while the input is still arriving).
pub fn expected_output_for(input: &[u8], spec: &Spec) -> Vec<u8> {
    let mut sink = MemSink(Vec::new());
    aggregate::run(spec, &mut MemSource(input.to_vec()), &mut sink).expect("reduce");
    sink.0
}
