//! Secret hygiene: nothing rollq prints — logs at `trace` (the SDK's and the HTTP client's
//! records included), error messages, `/readyz`, `/metrics` — carries the account key or a
//! SAS signature, in plain, URL-encoded or base64 form. Every subcommand and the worker run
//! against an Azurite whose account has a non-default key, once with the key and once with a
//! SAS, including failing calls (wrong key, expired SAS, missing blob).

use std::process::{Command, Output};
use std::time::Duration;

use base64::Engine as _;

use crate::support::azurite::{account_sas_with, connection_string_for};
use crate::support::{Azurite, unique_name};
use crate::worker_support::{WorkerProc, eventually};

/// A non-default account key (base64 of 64 bytes), so a leak cannot hide behind the
/// emulator's well-known key appearing in a fixture.
fn test_key() -> String {
    base64::engine::general_purpose::STANDARD.encode(
        (0..64u8)
            .map(|i| i.wrapping_mul(37).wrapping_add(11))
            .collect::<Vec<u8>>(),
    )
}

/// A producer's blob URL carrying a SAS signature of its own.
const PRODUCER_URL: &str = "https://elsewhere.blob.core.windows.net/in/t.csv?sv=2022-11-02&sp=r&sig=PRODUCERSIGNATURE0123456789";

/// The forms a secret could leak in.
fn forms(secret: &str) -> Vec<String> {
    let url: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    let b64 = base64::engine::general_purpose::STANDARD.encode(secret);
    // A distinctive prefix too: a truncated secret is still a leak.
    vec![secret.to_owned(), url, b64, secret[..20].to_owned()]
}

/// Everything a run printed, with the secrets checked against it.
struct Scan {
    secrets: Vec<String>,
    printed: String,
}

impl Scan {
    fn new(secrets: &[&str]) -> Scan {
        Scan {
            secrets: secrets.iter().flat_map(|s| forms(s)).collect(),
            printed: String::new(),
        }
    }

    /// Runs `rollq ARGS…` with `conn` and trace-level JSON logs; keeps its output.
    fn run(&mut self, az: &Azurite, conn: &str, args: &[&str]) -> Output {
        let out = rollq(az, conn).args(args).output().expect("run rollq");
        // Labelled by subcommand only: the arguments may hold what the scan looks for.
        let what = args[..2.min(args.len())].join(" ");
        self.keep(&format!("rollq {what}"), &out.stdout);
        self.keep(&format!("rollq {what} (stderr)"), &out.stderr);
        out
    }

    fn keep(&mut self, what: &str, bytes: &[u8]) {
        self.printed.push_str(&format!("\n=== {what}\n"));
        self.printed.push_str(&String::from_utf8_lossy(bytes));
    }

    /// The scan cannot pass on empty logs: trace records of the SDK and of the HTTP client
    /// must be there, then none of the secrets may be.
    fn assert_clean(&self) {
        let has_target = |prefix: &str| {
            self.printed
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .any(|v| {
                    v["target"].as_str().is_some_and(|t| t.starts_with(prefix))
                        && v["level"] == "TRACE"
                })
        };
        assert!(
            has_target("typespec_client_core") || has_target("azure_core"),
            "no SDK trace records were captured"
        );
        assert!(
            has_target("hyper") || has_target("reqwest"),
            "no HTTP client trace records were captured"
        );
        for s in &self.secrets {
            if self.printed.contains(s.as_str()) {
                // Show where, with the secret itself masked.
                let masked = self.printed.replace(s.as_str(), "<SECRET>");
                let context: String = masked[..masked.find("<SECRET>").unwrap_or(0)]
                    .chars()
                    .rev()
                    .take(300)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                panic!(
                    "a secret form ({} chars) was printed: …{context}<SECRET>…",
                    s.len()
                );
            }
        }
    }
}

fn rollq(az: &Azurite, conn: &str) -> Command {
    let mut cmd = az.rollq();
    cmd.env("AZURE_STORAGE_CONNECTION_STRING", conn)
        .env("ROLLQ_LOG", "trace")
        .env("ROLLQ_LOG_FORMAT", "json");
    cmd
}

/// Every subcommand that talks to storage, succeeding and failing.
async fn run_every_command(scan: &mut Scan, az: &Azurite, conn: &str, dir: &std::path::Path) {
    let (c, q) = (unique_name("sec"), unique_name("sec"));
    let ok = |out: Output, what: &str| {
        assert!(
            out.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let d = dir.to_str().unwrap();
    let succeeding: [&[&str]; 8] = [
        &["blob", "create-container", "--container", &c],
        &["submit", d, "--container", &c, "--queue", &q],
        &["queue", "stats", "--queue", &q],
        &["queue", "send", "--queue", &q, "nope.csv"],
        // A producer's message naming a blob by a SAS URL of another account: refused and
        // poisoned, and its signature appears nowhere.
        &["queue", "send", "--queue", &q, PRODUCER_URL],
        &["backfill", "--container", &c, "--queue", &q, "--dry-run"],
        &["blob", "list", "--container", &c],
        &["blob", "get", "--container", &c, "a.csv"],
    ];
    for args in succeeding {
        ok(scan.run(az, conn, args), &args[..2].join(" "));
    }
    let missing = scan.run(az, conn, &["blob", "get", "--container", &c, "missing.csv"]);
    assert!(!missing.status.success(), "a missing blob fails");

    // The worker: completes a.csv, poisons nope.csv (missing input); /readyz and /metrics are
    // scanned too.
    let mut worker = WorkerProc::spawn_with(
        rollq(az, conn),
        &q,
        &c,
        &["--exit-when-idle", "2s", "--max-dequeue-count", "1"],
    );
    let (_, readyz) = eventually("ready", Duration::from_secs(60), || async {
        worker.get("/readyz").await.ok().filter(|(s, _)| *s == 200)
    })
    .await;
    let (_, metrics) = worker.get("/metrics").await.unwrap();
    scan.keep("/readyz", readyz.as_bytes());
    scan.keep("/metrics", metrics.as_bytes());
    let exit = worker.wait_exit(Duration::from_secs(120)).await;
    assert!(exit.success(), "worker: {}", worker.log());
    scan.keep("worker", worker.log().as_bytes());

    let listed = scan.run(az, conn, &["poison", "list", "--queue", &q]);
    let shown = String::from_utf8_lossy(&listed.stdout).into_owned();
    ok(listed, "poison list");
    // The producer's URL was poisoned and is listed, without its signature.
    assert!(shown.contains("elsewhere.blob.core.windows.net"), "{shown}");
    ok(
        scan.run(az, conn, &["poison", "requeue", "--queue", &q]),
        "poison requeue",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_or_signature_is_ever_printed() {
    let key = test_key();
    let az = Azurite::start_with_key(&key);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.csv"), "t,v\n2024-01-01 00:00:00,1\n").unwrap();
    let (blob, queue) = (az.blob_endpoint(), az.queue_endpoint());

    // Account key: successful and failing calls, then a wrong key.
    let mut scan = Scan::new(&[&key, "PRODUCERSIGNATURE0123456789"]);
    run_every_command(&mut scan, &az, &az.connection_string(), dir.path()).await;
    let wrong_key = test_key().chars().rev().collect::<String>();
    let wrong = connection_string_for(&blob, &queue, &wrong_key);
    let mut wrong_scan = Scan::new(&[&key, &wrong_key]);
    let out = wrong_scan.run(&az, &wrong, &["queue", "stats", "--queue", "any"]);
    assert!(!out.status.success(), "a wrong key fails");
    scan.printed.push_str(&wrong_scan.printed);
    scan.secrets.extend(wrong_scan.secrets);
    scan.assert_clean();

    // SAS: its signature (and the key that signed it) never printed, even when it expired.
    let sas = account_sas_with(&key, "rwdlacup", "2099-01-01T00:00:00Z");
    let sig = sas_signature(&sas);
    let with_sas = format!("BlobEndpoint={blob};QueueEndpoint={queue};SharedAccessSignature={sas}");
    let mut scan = Scan::new(&[&key, &sig, "PRODUCERSIGNATURE0123456789"]);
    run_every_command(&mut scan, &az, &with_sas, dir.path()).await;
    let expired = account_sas_with(&key, "rwdlacup", "2000-01-01T00:00:00Z");
    let expired_sig = sas_signature(&expired);
    let old = format!("BlobEndpoint={blob};QueueEndpoint={queue};SharedAccessSignature={expired}");
    scan.secrets.extend(forms(&expired_sig));
    let out = scan.run(&az, &old, &["queue", "stats", "--queue", "any"]);
    assert!(!out.status.success(), "an expired SAS fails");
    scan.assert_clean();
}

/// The decoded `sig` value of a SAS query.
fn sas_signature(sas: &str) -> String {
    url::form_urlencoded::parse(sas.as_bytes())
        .find(|(k, _)| k == "sig")
        .map(|(_, v)| v.into_owned())
        .expect("a SAS has a signature")
}

/// The scan is not vacuous: text that a run really prints (its queue name, in every form the
/// scan looks for) is found.
#[tokio::test]
async fn the_scan_finds_what_a_run_printed() {
    let az = Azurite::start();
    let q = unique_name("printed");
    let mut scan = Scan::new(&[&q]);
    let out = scan.run(
        &az,
        &az.connection_string(),
        &["queue", "create", "--queue", &q],
    );
    assert!(out.status.success());
    let caught = std::panic::catch_unwind(|| scan.assert_clean());
    assert!(
        caught.is_err(),
        "the queue name was printed, and the scan must say so"
    );
}
