//! `rollq aggregate` end to end: the built binary against pandas-made fixtures, plus the
//! command line's files, streams, naming, gzip, env vars and every error it reports.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_rollq");

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Runs `rollq aggregate` with `args`, feeding `stdin`, with no `ROLLQ_*` variables inherited.
fn rollq(args: &[&str], stdin: &[u8], envs: &[(&str, &str)], dir: &Path) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("aggregate").args(args).current_dir(dir);
    for (k, _) in std::env::vars() {
        if k.starts_with("ROLLQ_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(envs.iter().copied());
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning rollq");
    // Write from a thread: a large stdin and a large stdout must not deadlock each other.
    let mut pipe = child.stdin.take().expect("piped stdin");
    let input = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = pipe.write_all(&input);
    });
    let out = child.wait_with_output().expect("waiting for rollq");
    writer.join().expect("stdin writer");
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

// === pandas fixtures ===

#[derive(serde::Deserialize)]
struct Case {
    name: String,
    input: String,
    bucket: Option<String>,
    timezone: Option<String>,
    columns: Option<Vec<String>>,
    time_column: Option<String>,
    delimiter: Option<String>,
}

/// Compares one output cell: exact for timestamps, counts and empty cells; floats within
/// 1e-9 relative or 1e-9 absolute.
fn cell_matches(header: &str, got: &str, want: &str) -> bool {
    if got == want {
        return true;
    }
    if header.ends_with("_count") || got.is_empty() || want.is_empty() {
        return false;
    }
    match (got.parse::<f64>(), want.parse::<f64>()) {
        (Ok(g), Ok(w)) => (g - w).abs() <= 1e-9 || (g - w).abs() <= 1e-9 * w.abs().max(g.abs()),
        _ => false,
    }
}

#[test]
fn matches_pandas_on_every_fixture() {
    let dir = fixtures();
    let cases: Vec<Case> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    assert!(cases.len() >= 20, "the fixture list shrank");
    let mut failures = Vec::new();
    for case in &cases {
        let input = dir.join("inputs").join(&case.input);
        let mut args: Vec<String> = vec![
            input.to_string_lossy().into_owned(),
            "-o".into(),
            "-".into(),
        ];
        let mut opt = |flag: &str, v: &Option<String>| {
            if let Some(v) = v {
                args.push(flag.into());
                args.push(v.clone());
            }
        };
        opt("--bucket", &case.bucket);
        opt("--timezone", &case.timezone);
        opt("--time-column", &case.time_column);
        opt("--delimiter", &case.delimiter);
        opt("--columns", &case.columns.as_ref().map(|c| c.join(",")));
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = rollq(&argv, b"", &[], &dir);
        assert!(out.status.success(), "{}: {}", case.name, stderr(&out));
        let got = String::from_utf8(out.stdout.clone()).unwrap();
        // stdout cannot take output back, so that run held every bucket; a file output
        // streams (re-reading in holding mode only for unordered input). Same bytes.
        let tmp = tempfile::tempdir().unwrap();
        let file_out = tmp.path().join("out.csv");
        args[2] = file_out.to_string_lossy().into_owned();
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let streamed = rollq(&argv, b"", &[], &dir);
        assert!(
            streamed.status.success(),
            "{}: {}",
            case.name,
            stderr(&streamed)
        );
        assert_eq!(
            std::fs::read_to_string(&file_out).unwrap(),
            got,
            "{}: streaming != holding",
            case.name
        );
        let want = std::fs::read_to_string(dir.join("expected").join(format!("{}.csv", case.name)))
            .unwrap();
        let (got_lines, want_lines): (Vec<&str>, Vec<&str>) =
            (got.lines().collect(), want.lines().collect());
        if got_lines.len() != want_lines.len() {
            failures.push(format!(
                "{}: {} lines, pandas {}",
                case.name,
                got_lines.len(),
                want_lines.len()
            ));
            continue;
        }
        if got_lines[0] != want_lines[0] {
            failures.push(format!(
                "{}: header {:?}, pandas {:?}",
                case.name, got_lines[0], want_lines[0]
            ));
            continue;
        }
        let headers: Vec<&str> = want_lines[0].split(',').collect();
        for (i, (g, w)) in got_lines.iter().zip(&want_lines).enumerate().skip(1) {
            let (gc, wc): (Vec<&str>, Vec<&str>) = (g.split(',').collect(), w.split(',').collect());
            let ok = gc.len() == wc.len()
                && gc[0] == wc[0]
                && gc
                    .iter()
                    .zip(&wc)
                    .zip(&headers)
                    .skip(1)
                    .all(|((g, w), h)| cell_matches(h, g, w));
            if !ok {
                failures.push(format!("{} line {}: {g:?}, pandas {w:?}", case.name, i + 1));
                break;
            }
        }
    }
    assert!(
        failures.is_empty(),
        "differences from pandas:\n{}",
        failures.join("\n")
    );
}

// === the command line ===

// The std is exact for the f64 inputs: (17.1 - 16.7 in f64 = 0.40000000000000213) / sqrt(2).
// pandas prints 0.28284271247461906 (Welford), 5e-15 relative away; the fixtures allow 1e-9.
const SAMPLE: &str = "Datetime,Temperature\n2021-01-01 00:00:00,16.7\n2021-01-01 00:30:00,17.1\n2021-01-01 02:00:00,15.0\n";
const SAMPLE_OUT: &str = "Datetime,Temperature_count,Temperature_mean,Temperature_std,Temperature_min,Temperature_max\n\
2021-01-01 00:00:00,2,16.9,0.2828427124746205,16.7,17.1\n\
2021-01-01 01:00:00,0,,,,\n\
2021-01-01 02:00:00,1,15.0,,15.0,15.0\n";

#[test]
fn stdin_to_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let out = rollq(&["-"], SAMPLE.as_bytes(), &[], dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8(out.stdout.clone()).unwrap(), SAMPLE_OUT);
    assert!(stderr(&out).contains("3 rows"), "{}", stderr(&out));
}

#[test]
fn default_output_name_beside_the_input() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("temperature1.csv"), SAMPLE).unwrap();
    let out = rollq(&["temperature1.csv"], b"", &[], dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let written = std::fs::read_to_string(dir.path().join("temperature1_aggregated.csv")).unwrap();
    assert_eq!(written, SAMPLE_OUT);
    // Nothing else is left behind (no temporary files).
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
}

#[test]
fn gzip_input_is_decompressed() {
    let dir = tempfile::tempdir().unwrap();
    let file = std::fs::File::create(dir.path().join("t.csv.gz")).unwrap();
    let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    gz.write_all(SAMPLE.as_bytes()).unwrap();
    gz.finish().unwrap();
    let out = rollq(&["t.csv.gz"], b"", &[], dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("t.csv.gz_aggregated_aggregated.csv")).unwrap(),
        SAMPLE_OUT
    );
}

#[test]
fn out_of_order_file_is_reread_and_matches_sorted() {
    let dir = tempfile::tempdir().unwrap();
    let mut lines: Vec<&str> = SAMPLE.lines().collect();
    lines[1..].reverse();
    std::fs::write(dir.path().join("r.csv"), lines.join("\n")).unwrap();
    let out = rollq(&["r.csv", "-o", "out.csv"], b"", &[], dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("holding"), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out.csv")).unwrap(),
        SAMPLE_OUT
    );
}

#[test]
fn settings_from_env_vars() {
    let dir = tempfile::tempdir().unwrap();
    let input = "when;station;temp\n2021-01-01 00:00:00;A;1\n2021-01-01 00:20:00;A;3\n";
    let env = [
        ("ROLLQ_DELIMITER", ";"),
        ("ROLLQ_COLUMNS", "temp"),
        ("ROLLQ_BUCKET", "15m"),
        ("ROLLQ_TIME_COLUMN", "when"),
    ];
    let out = rollq(&["-"], input.as_bytes(), &env, dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8(out.stdout.clone()).unwrap(),
        "when,temp_count,temp_mean,temp_std,temp_min,temp_max\n\
         2021-01-01 00:00:00,1,1.0,,1.0,1.0\n\
         2021-01-01 00:15:00,1,3.0,,3.0,3.0\n"
    );
}

#[test]
fn help_lists_every_setting_with_its_env_var() {
    let dir = tempfile::tempdir().unwrap();
    let out = rollq(&["--help"], b"", &[], dir.path());
    let help = String::from_utf8(out.stdout.clone()).unwrap();
    for var in [
        "ROLLQ_TIME_COLUMN",
        "ROLLQ_COLUMNS",
        "ROLLQ_BUCKET",
        "ROLLQ_DELIMITER",
        "ROLLQ_TIME_FORMAT",
        "ROLLQ_TIMEZONE",
        "ROLLQ_MAX_BAD_ROWS",
        "ROLLQ_MAX_BUCKETS",
        "ROLLQ_MAX_LINE_BYTES",
    ] {
        assert!(help.contains(var), "--help lacks {var}:\n{help}");
    }
}

/// Runs a failing case and returns stderr; checks that no output file was left behind.
fn fails(input: &str, args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.csv"), input).unwrap();
    let mut argv = vec!["in.csv"];
    argv.extend_from_slice(args);
    let out = rollq(&argv, b"", &[], dir.path());
    assert!(!out.status.success(), "expected failure for {args:?}");
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        vec!["in.csv".to_string()],
        "a failed run left files behind"
    );
    stderr(&out)
}

#[test]
fn bad_row_fails_with_line_and_text() {
    let input = "Datetime,T\n2021-01-01 00:00:00,1\n2021-01-01 00:10:00,2\nyesterday,3\n";
    let err = fails(input, &[]);
    assert!(err.contains("line 4"), "{err}");
    assert!(err.contains("yesterday"), "{err}");
    assert!(err.contains("\"Datetime\""), "names the time column: {err}");
    assert!(err.contains("--max-bad-rows"), "{err}");
}

#[test]
fn bad_rows_are_skipped_and_counted_up_to_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let input = "Datetime,T\n2021-01-01 00:00:00,1\nyesterday,3\n2021-01-01 00:10:00,oops\n2021-01-01 00:20:00,5\n";
    let out = rollq(
        &["-", "--max-bad-rows", "2"],
        input.as_bytes(),
        &[],
        dir.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("2 bad rows skipped"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        String::from_utf8(out.stdout.clone())
            .unwrap()
            .lines()
            .nth(1),
        Some("2021-01-01 00:00:00,2,3.0,2.8284271247461903,1.0,5.0")
    );
    let err = fails(input, &["--max-bad-rows", "1"]);
    assert!(err.contains("line 4") && err.contains("oops"), "{err}");
}

#[test]
fn text_column_suggests_columns() {
    let input = "Datetime,Station,T\n2021-01-01 00:00:00,Berlin,1\n";
    let err = fails(input, &[]);
    assert!(
        err.contains("\"Station\"") && err.contains("--columns") && err.contains("line 2"),
        "{err}"
    );
}

#[test]
fn oversized_line_is_an_error() {
    let input = format!("Datetime,T\n2021-01-01 00:00:00,{}\n", "1".repeat(200));
    let err = fails(&input, &["--max-line-bytes", "100"]);
    assert!(
        err.contains("line 2") && err.contains("--max-line-bytes"),
        "{err}"
    );
}

#[test]
fn too_many_buckets_is_an_error() {
    let input = "Datetime,T\n2021-01-01 00:00:00,1\n2021-01-01 10:00:00,1\n";
    let err = fails(input, &["--max-buckets", "10"]);
    assert!(err.contains("--max-buckets"), "{err}");
    // Exactly at the limit is fine.
    let dir = tempfile::tempdir().unwrap();
    let out = rollq(
        &["-", "--max-buckets", "11"],
        input.as_bytes(),
        &[],
        dir.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn zero_byte_input_is_an_error() {
    let err = fails("", &[]);
    assert!(err.contains("empty"), "{err}");
}

#[test]
fn missing_input_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = rollq(&["nope.csv"], b"", &[], dir.path());
    assert!(!out.status.success());
    assert!(stderr(&out).contains("nope.csv"), "{}", stderr(&out));
}

// === bounded memory, counted ===

/// Counts the bytes each thread holds on the heap (and its peak), so a test can measure what
/// one `aggregate::run` call holds without the noise of tests running on other threads.
/// This is the binary's global allocator; it only adds two thread-local updates per call.
/// Hand-written (the library itself forbids unsafe code) because the counting-allocator crates
/// looked at (`stats_alloc`) keep only process-wide totals, with no per-thread peak, and the
/// tests in this binary run in parallel.
mod counting {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    pub struct Counting;

    thread_local! {
        static HELD: Cell<isize> = const { Cell::new(0) };
        static PEAK: Cell<isize> = const { Cell::new(0) };
    }

    fn add(delta: isize) {
        // `try_with`: allocations during thread teardown find the cells gone; skip them.
        let _ = HELD.try_with(|held| {
            let now = held.get() + delta;
            held.set(now);
            let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
        });
    }

    // SAFETY: every call is forwarded unchanged to the system allocator; only sizes are
    // recorded.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let p = unsafe { System.alloc(layout) };
            if !p.is_null() {
                add(layout.size() as isize);
            }
            p
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            unsafe { System.dealloc(ptr, layout) };
            add(-(layout.size() as isize));
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            let p = unsafe { System.realloc(ptr, layout, new_size) };
            if !p.is_null() {
                add(new_size as isize - layout.size() as isize);
            }
            p
        }
    }

    /// Runs `f` and returns its result and the most heap bytes it held at once on this thread.
    pub fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
        let start = HELD.with(Cell::get);
        PEAK.with(|p| p.set(start));
        let out = f();
        (out, (PEAK.with(Cell::get) - start).max(0) as usize)
    }
}

#[global_allocator]
static ALLOC: counting::Counting = counting::Counting;

/// A source read once, forcing holding mode.
struct Once<'a>(&'a [u8]);

impl rollq::aggregate::Source for Once<'_> {
    fn open(&mut self) -> std::io::Result<Box<dyn std::io::Read + '_>> {
        Ok(Box::new(self.0))
    }
    fn can_reopen(&self) -> bool {
        false
    }
}

/// Discards output (so output bytes are not counted as held).
struct Discard;

impl Write for Discard {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl rollq::aggregate::Sink for Discard {
    fn restart(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn streaming_memory_does_not_grow_with_rows_or_span() {
    use rollq::aggregate::{self, BytesSource, Mode, Spec, bench_support};
    let spec = Spec::default();
    let mut peaks = Vec::new();
    for rows in [100_000u64, 2_000_000] {
        let mut input = Vec::new();
        bench_support::write_seed_rows(rows, &mut input).unwrap();
        let (report, peak) = counting::peak_during(|| {
            aggregate::run(&spec, &mut BytesSource(&input), &mut Discard).unwrap()
        });
        assert_eq!(report.mode, Some(Mode::Streaming));
        assert_eq!(report.rows, rows);
        peaks.push(peak);
    }
    // 2M rows span 33,334 hours; 100k rows span 1,667. The peak is the read buffer and the
    // output buffer, whatever the size: well under 1 MiB, and the same for both inputs.
    assert!(peaks[1] < 1 << 20, "streaming held {} bytes", peaks[1]);
    assert!(
        peaks[1] <= peaks[0] + 4096,
        "streaming memory grew with input: {peaks:?}"
    );

    // Holding mode holds the buckets: proportional to the span, bounded by 2 x buckets x 48 B
    // plus the buffers.
    let mut input = Vec::new();
    bench_support::write_seed_rows(2_000_000, &mut input).unwrap();
    let (report, peak) =
        counting::peak_during(|| aggregate::run(&spec, &mut Once(&input), &mut Discard).unwrap());
    assert_eq!(report.mode, Some(Mode::Holding));
    let bound = 2 * report.buckets as usize * 48 + (1 << 20);
    assert!(peak <= bound, "holding held {peak} bytes, bound {bound}");
    assert!(
        peak > report.buckets as usize * 48,
        "holding must hold every bucket: {peak}"
    );
}
