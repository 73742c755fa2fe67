//! `rollq aggregate --threads N` end to end: the built binary on files large enough to be
//! split, against `--threads 1`: the same bytes from the flag, from `ROLLQ_THREADS` and from
//! the default, and the single-threaded path for files it must not split.

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_rollq");

/// Runs `rollq aggregate` with `args` in `dir`, with no `ROLLQ_*` variables inherited.
fn rollq(args: &[&str], envs: &[(&str, &str)], dir: &Path) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("aggregate").args(args).current_dir(dir);
    for (k, _) in std::env::vars() {
        if k.starts_with("ROLLQ_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(envs.iter().copied())
        .output()
        .expect("running rollq")
}

/// The bytes read that the summary line on stderr reports.
fn bytes_read(out: &Output) -> u64 {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    let before = err.split(" bytes read").next().expect("a summary line");
    before
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no byte count in {err:?}"))
}

/// 150,000 seed rows (3.7 MB, three parts of a MiB or more).
fn seed(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("seed.csv");
    let mut file = std::fs::File::create(&path).unwrap();
    rollq::aggregate::bench_support::write_seed_rows(150_000, &mut file).unwrap();
    path
}

#[test]
fn threads_from_the_flag_the_env_and_the_default_give_one_threads_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let input = seed(dir.path());
    let len = std::fs::metadata(&input).unwrap().len();
    let one = rollq(
        &["seed.csv", "-o", "one.csv", "--threads", "1"],
        &[],
        dir.path(),
    );
    // One thread reads the file once.
    assert_eq!(bytes_read(&one), len);
    let want = std::fs::read(dir.path().join("one.csv")).unwrap();
    assert_eq!(want.iter().filter(|&&b| b == b'\n').count(), 2501);
    for (name, args, env) in [
        ("three.csv", &["--threads", "3"][..], &[][..]),
        ("env.csv", &[][..], &[("ROLLQ_THREADS", "2")][..]),
    ] {
        let mut all = vec!["seed.csv", "-o", name];
        all.extend_from_slice(args);
        let out = rollq(&all, env, dir.path());
        // More than once over the heads: the parallel path ran.
        assert!(bytes_read(&out) > len, "{name}: the file was not split");
        let got = std::fs::read(dir.path().join(name)).unwrap();
        assert!(got == want, "{name} differs from --threads 1");
    }
    // The default (the CPUs this process may use, perhaps one) and standard output.
    let out = rollq(&["seed.csv", "-o", "-"], &[], dir.path());
    assert!(out.status.success());
    assert!(out.stdout == want, "the default differs from --threads 1");
}

#[test]
fn quoted_crlf_and_out_of_order_files_take_one_thread_and_agree() {
    let dir = tempfile::tempdir().unwrap();
    let input = seed(dir.path());
    let text = std::fs::read_to_string(&input).unwrap();
    // CRLF with a quoted cell in the middle: a seam could fall inside quotes.
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let mid = lines.len() / 2;
    let t = lines[mid].split(',').next().unwrap().to_string();
    lines[mid] = format!("\"{t}\",\"12.5\"");
    std::fs::write(dir.path().join("quoted.csv"), lines.join("\r\n") + "\r\n").unwrap();
    // Out of order: the last row moved to the middle (holding mode, as with one thread).
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let last = lines.pop().unwrap();
    lines.insert(mid, last);
    std::fs::write(dir.path().join("unordered.csv"), lines.join("\n") + "\n").unwrap();
    for input in ["quoted.csv", "unordered.csv"] {
        let one = rollq(&[input, "-o", "one.csv", "--threads", "1"], &[], dir.path());
        let four = rollq(
            &[input, "-o", "four.csv", "--threads", "4"],
            &[],
            dir.path(),
        );
        assert_eq!(bytes_read(&one), bytes_read(&four), "{input}");
        let (a, b) = (
            std::fs::read(dir.path().join("one.csv")).unwrap(),
            std::fs::read(dir.path().join("four.csv")).unwrap(),
        );
        assert!(a == b, "{input}: --threads 4 differs from --threads 1");
    }
}

#[test]
fn zero_threads_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    seed(dir.path());
    let out = rollq(&["seed.csv", "--threads", "0"], &[], dir.path());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--threads"));
}
