//! Deployment files (Dockerfile, `deploy/`, `keda/`) checked offline by the project's scripts.
//!
//! The checks live in `scripts/check-deploy.sh` (Kubernetes and CRD schemas, kustomize builds
//! without warnings, promtool rule tests, hadolint, shellcheck, cross-checks and a self-test
//! proving each check rejects a broken copy) and `scripts/e2e-prometheus.sh` (a real Prometheus server with
//! the alert rules loaded). These tests run them so `cargo test` covers the deployment too; the
//! tools they use are installed beforehand by `scripts/setup-deploy-tools.sh` (`scripts/test.sh`
//! runs it), so these tests install nothing.

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

/// One script at a time: each is CPU-heavy (kustomize, promtool, Prometheus, Azurite).
static SERIAL: Mutex<()> = Mutex::new(());

/// Runs `bash script args..` from the repository root and fails the test with its output.
fn run_script(script: &str, args: &[&str]) -> String {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(root.join(script))
        .args(args)
        .current_dir(root)
        .output()
        .unwrap_or_else(|e| panic!("cannot run bash {script}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{script} {args:?} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    stdout
}

/// Every offline check passes on the real files, and every check rejects its broken copy.
#[test]
fn deploy_files_pass_every_offline_check() {
    let stdout = run_script(
        "scripts/check-deploy.sh",
        &["--rollq", env!("CARGO_BIN_EXE_rollq")],
    );
    // The closing line counts checks and self-test rejections; a run that skipped them would
    // report far fewer.
    let summary = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with("check-deploy: "))
        .expect("summary line");
    let passed: usize = summary
        .trim_start_matches("check-deploy: ")
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("passed count");
    assert!(passed >= 40, "only {passed} checks ran: {summary}");
    assert!(summary.ends_with(" 0 failed"), "{summary}");
    // scripts/test.sh adds the checks to its closing `N passed, N failed` count.
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("check-deploy.summary");
    std::fs::write(&out, format!("{summary}\n"))
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", out.display()));
}

/// A real Prometheus server loads the PrometheusRule's groups and, scraping metrics in which the
/// poison queue is not empty, turns RollqPoisonQueueNotEmpty `pending`. The metrics come from the
/// contract fixture served by a stand-in, so this checks the rules and the harness; the worker
/// itself is covered by `poison_alert_goes_pending_against_a_real_worker`.
#[test]
fn prometheus_turns_the_poison_alert_pending_on_stand_in_metrics() {
    let stdout = run_script(
        "scripts/e2e-prometheus.sh",
        &[
            // The binary sets up Azurite (queue and container tools); the stand-in replaces
            // only the worker.
            "--rollq",
            env!("CARGO_BIN_EXE_rollq"),
            "--stand-in-metrics",
            "deploy/tests/fixtures/metrics.contract-fixture.prom",
        ],
    );
    assert!(
        stdout.contains("RollqPoisonQueueNotEmpty is pending"),
        "{stdout}"
    );
}

/// The end-to-end test of the issue: a worker against Azurite poisons a bad message, Prometheus
/// scrapes it with the alert rules loaded, the poison alert goes pending, and every rollq_* name
/// in the dashboard and alerts is in the worker's real scrape.
#[test]
fn poison_alert_goes_pending_against_a_real_worker() {
    let stdout = run_script(
        "scripts/e2e-prometheus.sh",
        &["--rollq", env!("CARGO_BIN_EXE_rollq")],
    );
    assert!(stdout.contains("e2e: 1 passed, 0 failed"), "{stdout}");
}
