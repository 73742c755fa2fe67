//! Starts the Azure Storage emulator (the project's pinned npm `azurite`) on free loopback
//! ports for one test, and kills it when the handle drops.
//!
//! Each test owns its own instance: no shared state between tests, and no orphan process (the
//! child is `node` itself, never `npx`, so killing it stops the server). A test that restarts
//! the emulator keeps its data on disk ([`Azurite::start_on_disk`], in a [`DataDir`]), stops
//! it with SIGTERM so it flushes ([`Azurite::terminate`]), and starts it again on the same
//! directory; the new instance has new ports, so such a test reaches it through proxies it can
//! retarget ([`super::TcpProxy::retarget`]).

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rollq::storage::{Connection, StorageArgs, connection::DEV_KEY};
use secrecy::SecretString;

/// How long Azurite may take to print its three "listening" lines (1.3–3 s seen; CI is slower).
const START_DEADLINE: Duration = Duration::from_secs(60);

/// A running Azurite with blob, queue and table services on their own ports.
pub struct Azurite {
    /// Killed and reaped on drop, so no emulator outlives its test.
    child: Child,
    /// The account key this instance accepts (the emulator's well-known key unless a test
    /// chose another with [`Azurite::start_with_key`]).
    pub key: String,
    pub blob_port: u16,
    pub queue_port: u16,
    pub table_port: u16,
    /// `http`, or `https` for an instance started with [`Azurite::start_https`].
    scheme: &'static str,
    /// The CA a client must trust (`SSL_CERT_FILE` for a `rollq` child) when over HTTPS.
    ca_file: Option<PathBuf>,
}

impl Azurite {
    /// Spawns `node node_modules/azurite/dist/src/azurite.js` in memory on port 0 for every
    /// service and waits until all three report their real ports.
    pub fn start() -> Azurite {
        Self::start_with_key(DEV_KEY)
    }

    /// [`Azurite::start`] with `devstoreaccount1` keyed by `key` (base64), through the
    /// emulator's `AZURITE_ACCOUNTS` variable.
    pub fn start_with_key(key: &str) -> Azurite {
        Self::spawn(key, None, None)
    }

    /// [`Azurite::start`] with its data in `dir` (`--location`) instead of in memory: a later
    /// instance started on the same directory finds every queue, message and blob this one
    /// had when it was [terminated](Azurite::terminate).
    pub fn start_on_disk(dir: &DataDir) -> Azurite {
        Self::spawn(DEV_KEY, Some(dir.path()), None)
    }

    /// Stops the emulator with SIGTERM (sent to this child only, by its pid) and waits for it
    /// to exit: Azurite closes its servers and saves its databases on SIGTERM, where a kill
    /// would lose what its autosave had not written yet. Panics if it does not exit in time.
    pub fn terminate(&mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM azurite failed");
        let deadline = Instant::now() + START_DEADLINE;
        while self.child.try_wait().expect("try_wait azurite").is_none() {
            assert!(
                Instant::now() < deadline,
                "Azurite did not exit within {START_DEADLINE:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// [`Azurite::start`] over HTTPS with `ca`'s server certificate and `--oauth basic`: it
    /// then accepts bearer tokens as well as the account key, checking a token's expiry,
    /// issuer and audience but not its signature. [`Azurite::rollq`] children trust `ca`.
    pub fn start_https(ca: &super::tls::TestCa) -> Azurite {
        Self::spawn(DEV_KEY, None, Some(ca))
    }

    fn spawn(key: &str, location: Option<&Path>, tls: Option<&super::tls::TestCa>) -> Azurite {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let script = root.join("node_modules/azurite/dist/src/azurite.js");
        assert!(
            script.exists(),
            "Azurite is not installed at {}: run `npm ci` in the repository root first \
             (scripts/test.sh does)",
            script.display()
        );
        let mut cmd = Command::new("node");
        cmd.arg(&script);
        match location {
            Some(dir) => cmd.arg("--location").arg(dir),
            None => cmd.arg("--inMemoryPersistence"),
        };
        let mut child = cmd
            .args([
                "--silent",
                "--disableTelemetry",
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                "0",
                "--queueHost",
                "127.0.0.1",
                "--queuePort",
                "0",
                "--tableHost",
                "127.0.0.1",
                "--tablePort",
                "0",
            ])
            .args(tls.iter().flat_map(|ca| {
                [
                    "--oauth".into(),
                    "basic".into(),
                    "--cert".into(),
                    ca.server_cert_file().into_os_string(),
                    "--key".into(),
                    ca.server_key_file().into_os_string(),
                ]
            }))
            .current_dir(&root)
            .env("AZURITE_ACCOUNTS", format!("devstoreaccount1:{key}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run `node` to start Azurite: {e}"));

        // Reader threads keep draining both pipes for the child's whole life, so a chatty
        // emulator can never block on a full pipe.
        let (tx, rx) = mpsc::channel::<String>();
        let stdout = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let (etx, erx) = mpsc::channel::<String>();
        let mut stderr = child.stderr.take().expect("piped stderr");
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let _ = etx.send(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        });

        let deadline = Instant::now() + START_DEADLINE;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let listening = format!("{scheme}://127.0.0.1:");
        let (mut blob, mut queue, mut table) = (None, None, None);
        while blob.is_none() || queue.is_none() || table.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let port = line
                        .rsplit_once(listening.as_str())
                        .and_then(|(_, p)| p.trim().parse::<u16>().ok());
                    if let Some(port) = port {
                        if line.contains("Blob service") {
                            blob = Some(port);
                        } else if line.contains("Queue service") {
                            queue = Some(port);
                        } else if line.contains("Table service") {
                            table = Some(port);
                        }
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let err: String = erx.try_iter().collect();
                    panic!(
                        "Azurite did not report its three ports within {START_DEADLINE:?} \
                         (blob {blob:?}, queue {queue:?}, table {table:?}); stderr: {err}"
                    );
                }
            }
        }
        Azurite {
            child,
            key: key.to_owned(),
            blob_port: blob.unwrap(),
            queue_port: queue.unwrap(),
            table_port: table.unwrap(),
            scheme,
            ca_file: tls.map(|ca| ca.ca_file()),
        }
    }

    /// `http://127.0.0.1:PORT/devstoreaccount1` for the blob service (`https` when started
    /// with [`Azurite::start_https`]).
    pub fn blob_endpoint(&self) -> String {
        format!(
            "{}://127.0.0.1:{}/devstoreaccount1",
            self.scheme, self.blob_port
        )
    }

    /// `http://127.0.0.1:PORT/devstoreaccount1` for the queue service (`https` when started
    /// with [`Azurite::start_https`]).
    pub fn queue_endpoint(&self) -> String {
        format!(
            "{}://127.0.0.1:{}/devstoreaccount1",
            self.scheme, self.queue_port
        )
    }

    /// The blob service's socket address (e.g. a proxy's target).
    pub fn blob_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.blob_port))
    }

    /// The queue service's socket address (e.g. a proxy's target).
    pub fn queue_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.queue_port))
    }

    /// A full connection string for this instance (the emulator's public well-known key).
    pub fn connection_string(&self) -> String {
        connection_string_for(&self.blob_endpoint(), &self.queue_endpoint(), &self.key)
    }

    /// A connection string for this instance's account with the blob endpoint at `blob` and
    /// the queue endpoint at `queue` (e.g. proxies in front of the emulator).
    pub fn connection_string_via(&self, blob: SocketAddr, queue: SocketAddr) -> String {
        connection_string_for(
            &format!("http://{blob}/devstoreaccount1"),
            &format!("http://{queue}/devstoreaccount1"),
            &self.key,
        )
    }

    /// Settings pointing at this instance, for tests to mutate (e.g. a wrong key).
    pub fn storage_args(&self) -> StorageArgs {
        StorageArgs {
            connection_string: Some(SecretString::from(self.connection_string())),
            storage_timeout: Duration::from_secs(10),
            ..Default::default()
        }
    }

    /// A connected `Connection` (clients only; no request is made).
    pub async fn connect(&self) -> Connection {
        rollq::storage::connect(&self.storage_args())
            .await
            .expect("connect to Azurite")
    }

    /// The `rollq` binary with this emulator's connection string in its environment (and
    /// every other storage setting cleared, so the developer's shell cannot leak in).
    pub fn rollq(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rollq"));
        for var in [
            "AZURE_STORAGE_ACCOUNT",
            "ROLLQ_BLOB_ENDPOINT",
            "ROLLQ_QUEUE_ENDPOINT",
            "AZURE_CLIENT_ID",
            "AZURE_TENANT_ID",
            "AZURE_FEDERATED_TOKEN_FILE",
            "RUST_LOG",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("AZURE_STORAGE_CONNECTION_STRING", self.connection_string());
        if let Some(ca) = &self.ca_file {
            // Over HTTPS the child trusts the test's own CA (and nothing else).
            cmd.env("SSL_CERT_FILE", ca).env_remove("SSL_CERT_DIR");
        }
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Runs `rollq ARGS…` against this emulator and asserts it succeeded: (stdout, stderr).
    pub fn rollq_ok(&self, args: &[&str]) -> (String, String) {
        super::run_ok(self.rollq().args(args).output().expect("run rollq"))
    }

    /// Runs `rollq ARGS…` against this emulator and asserts it failed: its stderr.
    pub fn rollq_err(&self, args: &[&str]) -> String {
        super::run_err(&self.rollq().args(args).output().expect("run rollq"))
    }

    /// [`Azurite::rollq`] reaching the blob service at `blob` and the queue service at
    /// `queue` (see [`Azurite::connection_string_via`]).
    pub fn rollq_via(&self, blob: SocketAddr, queue: SocketAddr) -> Command {
        let mut cmd = self.rollq();
        cmd.env(
            "AZURE_STORAGE_CONNECTION_STRING",
            self.connection_string_via(blob, queue),
        );
        cmd
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh directory for an emulator's data ([`Azurite::start_on_disk`]), removed on drop.
/// Drop it after the emulators that use it.
pub struct DataDir {
    path: PathBuf,
}

impl DataDir {
    /// Creates `<temp>/rollq-azurite-<random>`.
    pub fn create() -> DataDir {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let path = std::env::temp_dir().join(format!("rollq-azurite-{}", &id[..12]));
        std::fs::create_dir_all(&path).expect("create the Azurite data directory");
        DataDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A connection string in the emulator's shape with any endpoints and key.
pub fn connection_string_for(blob: &str, queue: &str, key: &str) -> String {
    format!(
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={key};\
         BlobEndpoint={blob};QueueEndpoint={queue};"
    )
}

/// A fresh queue/container name: `prefix-` and 12 random hex digits (valid for both).
pub fn unique_name(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let name = format!("{prefix}-{}", &id[..12]);
    assert!(
        rollq::storage::validate_queue_name(&name).is_ok(),
        "prefix {prefix:?} makes an invalid name {name:?}"
    );
    name
}

/// An account SAS for the emulator account, signed per Microsoft's account-SAS rules
/// (version 2020-12-06 and later: nine fields plus the encryption scope, each ending in \n).
pub fn account_sas(permissions: &str) -> String {
    account_sas_with(DEV_KEY, permissions, "2099-01-01T00:00:00Z")
}

/// [`account_sas`] signed with `key`, expiring at `se` (ISO 8601, e.g. in the past).
pub fn account_sas_with(key: &str, permissions: &str, se: &str) -> String {
    use azure_core::credentials::Secret;
    use rollq::storage::connection::DEV_ACCOUNT;
    let (sv, ss, srt, spr) = ("2022-11-02", "bq", "sco", "https,http");
    let sts = format!("{DEV_ACCOUNT}\n{permissions}\n{ss}\n{srt}\n\n{se}\n\n{spr}\n{sv}\n\n");
    let sig = azure_core::hmac::hmac_sha256(&sts, &Secret::new(key.to_owned())).unwrap();
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    format!(
        "sv={sv}&ss={ss}&srt={srt}&sp={permissions}&se={}&spr={}&sig={}",
        enc(se),
        enc(spr),
        enc(&sig)
    )
}
