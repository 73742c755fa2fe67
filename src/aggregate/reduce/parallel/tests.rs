//! Parallel mode against the single-threaded pass: seams at random offsets (so buckets span
//! them, CRLF line ends straddle them, quoted fields contain them), rows out of order and
//! malformed rows; the output, the counts and the error must be the same, byte for byte.

use std::path::PathBuf;

use proptest::prelude::*;

use super::super::super::{BytesSource, Report, Spec, run, run_parallel};
use super::{Split, run as run_split};

/// A file in the temp directory, removed on drop (also when a case fails).
struct TempCsv(PathBuf);

impl TempCsv {
    fn new(bytes: &[u8]) -> TempCsv {
        let name = format!("rollq-par-{}.csv", uuid::Uuid::new_v4().simple());
        let path = std::env::temp_dir().join(name);
        std::fs::write(&path, bytes).unwrap();
        TempCsv(path)
    }
}

impl Drop for TempCsv {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// What a run leaves behind, for comparing: the output or the error's text, and the counts
/// (bytes read differ by design: the heads are read twice).
type Outcome = Result<(String, u64, u64, u64, Option<super::super::super::Mode>), String>;

fn outcome(result: Result<Report, super::super::super::AggregateError>, out: Vec<u8>) -> Outcome {
    result
        .map(|r| {
            let text = String::from_utf8(out).unwrap();
            (text, r.rows, r.bad_rows, r.buckets, r.mode)
        })
        .map_err(|e| e.to_string())
}

fn sequential(spec: &Spec, bytes: &[u8]) -> Outcome {
    let mut out = Vec::new();
    let r = run(spec, &mut BytesSource(bytes), &mut out);
    outcome(r, out)
}

/// The parallel path alone: `None` when it handed the input back.
fn split_at(spec: &Spec, bytes: &[u8], offsets: &[u64]) -> Option<Outcome> {
    let file = TempCsv::new(bytes);
    let mut out = Vec::new();
    let split = Split::At(offsets.to_vec());
    match run_split(spec, &file.0, &split, &mut out) {
        Ok(None) => None,
        r => Some(outcome(r.map(|r| r.expect("a report")), out)),
    }
}

/// What `run_parallel` gives: the parallel path, or the single-threaded one it falls back to.
fn parallel_or_fallback(spec: &Spec, bytes: &[u8], offsets: &[u64]) -> Outcome {
    match split_at(spec, bytes, offsets) {
        Some(o) => o,
        None => sequential(spec, bytes),
    }
}

/// Rows in time order: a few seconds to a few minutes apart, so 1m buckets often span a
/// seam and some buckets are empty. Values: decimals whose sums round (0.1 steps, long
/// fractions, magnitudes), missing cells.
fn sorted_rows() -> impl Strategy<Value = Vec<(i64, String)>> {
    let value = prop_oneof![
        4 => (-500i64..500).prop_map(|v| format!("{}.{}", v / 10, (v % 10).abs())),
        2 => any::<f64>().prop_filter("finite", |v| v.is_finite()).prop_map(|v| format!("{v}")),
        1 => (0u32..1000).prop_map(|v| format!("1000000000.{v:03}")),
        1 => Just(String::new()),
        1 => Just("NaN".to_string()),
    ];
    let step = prop_oneof![3 => 0i64..20, 1 => 20i64..400];
    proptest::collection::vec((step, value), 1..300).prop_map(|rows| {
        let mut t = 1_609_459_200; // 2021-01-01 00:00:00 UTC
        rows.into_iter()
            .map(|(dt, v)| {
                t += dt;
                (t, v)
            })
            .collect()
    })
}

fn render(rows: &[(i64, String)], crlf: bool) -> Vec<u8> {
    let eol: &[u8] = if crlf { b"\r\n" } else { b"\n" };
    let mut out = b"Datetime,T".to_vec();
    out.extend_from_slice(eol);
    for (t, v) in rows {
        super::super::super::time::push_datetime(&mut out, *t);
        out.push(b',');
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(eol);
    }
    out
}

/// Seams as fractions of the file, turned into byte offsets (anywhere: mid-line, on the
/// `\r` of a CRLF, inside the header, at the end).
fn offsets(len: usize, at: &[f64]) -> Vec<u64> {
    at.iter().map(|f| (f * len as f64) as u64).collect()
}

fn spec_1m() -> Spec {
    Spec {
        bucket: "1m".parse().unwrap(),
        ..Spec::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Clean sorted input: the parallel path runs (it does not hand the input back) and
    /// gives the single-threaded bytes, buckets spanning seams included.
    #[test]
    fn sorted_input_splits_anywhere_and_matches_one_thread(
        rows in sorted_rows(),
        crlf in any::<bool>(),
        at in proptest::collection::vec(0.0f64..1.0, 1..6),
    ) {
        let bytes = render(&rows, crlf);
        let spec = spec_1m();
        let want = sequential(&spec, &bytes);
        let got = split_at(&spec, &bytes, &offsets(bytes.len(), &at));
        prop_assert!(got.is_some(), "parallel mode gave up on clean sorted input");
        prop_assert_eq!(got.unwrap(), want);
    }

    /// The same in a zone with DST and other widths: the grid's anchor (local midnight of
    /// the first row's day) must be the same in every part.
    #[test]
    fn zones_and_widths_match_one_thread(
        rows in sorted_rows(),
        width in prop::sample::select(vec!["1m", "5m", "15m", "1h", "6h", "1d"]),
        zone in prop::sample::select(vec!["UTC", "Europe/Berlin", "Asia/Kolkata", "America/St_Johns"]),
        at in proptest::collection::vec(0.0f64..1.0, 1..4),
    ) {
        let bytes = render(&rows, false);
        let spec = Spec {
            bucket: width.parse().unwrap(),
            timezone: zone.parse().unwrap(),
            ..Spec::default()
        };
        let want = sequential(&spec, &bytes);
        let got = split_at(&spec, &bytes, &offsets(bytes.len(), &at));
        prop_assert!(got.is_some(), "parallel mode gave up on clean sorted input");
        prop_assert_eq!(got.unwrap(), want);
    }

    /// Hostile input: rows swapped out of order, malformed rows (bad time, bad value, extra
    /// fields), blank lines, a quoted field with a line break inside, under various
    /// `--max-bad-rows`. Whatever path it takes, the result is the single-threaded one: the
    /// same output, or the same first error by line number.
    #[test]
    fn hostile_input_gives_the_single_threaded_result(
        rows in sorted_rows(),
        edits in proptest::collection::vec((0.0f64..1.0, 0u8..6), 0..6),
        crlf in any::<bool>(),
        max_bad_rows in 0u64..4,
        at in proptest::collection::vec(0.0f64..1.0, 1..6),
    ) {
        let mut lines: Vec<String> = render(&rows, false)
            .split(|&b| b == b'\n')
            .map(|l| String::from_utf8(l.to_vec()).unwrap())
            .filter(|l| !l.is_empty())
            .collect();
        for (where_, what) in edits {
            let i = 1 + ((lines.len() - 1) as f64 * where_) as usize;
            let i = i.min(lines.len() - 1).max(1);
            match what {
                0 => lines.insert(i, "2021-01-01 00:00:00,1.5".into()), // out of order
                1 => lines.insert(i, "not a time,1".into()),
                2 => lines.insert(i, "2021-01-01 12:00:00,abc".into()),
                3 => lines.insert(i, "2021-01-01 12:00:00,1,2".into()),
                4 => lines.insert(i, String::new()),
                _ => {
                    let t = lines[i].split(',').next().unwrap().to_string();
                    lines.insert(i, format!("{t},\"1\n2\""));
                }
            }
        }
        let eol = if crlf { "\r\n" } else { "\n" };
        let bytes = (lines.join(eol) + eol).into_bytes();
        let spec = Spec { max_bad_rows, ..spec_1m() };
        let want = sequential(&spec, &bytes);
        prop_assert_eq!(parallel_or_fallback(&spec, &bytes, &offsets(bytes.len(), &at)), want);
    }
}

/// A seam inside a quoted field that holds a line break: the part after it would start
/// mid-field, so parallel mode must hand the file back (and the result is one thread's).
#[test]
fn a_seam_inside_a_quoted_field_falls_back() {
    let mut bytes = b"Datetime,T,Note\n".to_vec();
    for m in 0..50 {
        bytes.extend_from_slice(format!("2021-01-01 00:{m:02}:00,{m}.5,plain\n").as_bytes());
    }
    let quoted_at = bytes.len();
    bytes.extend_from_slice(b"2021-01-01 00:50:00,7,\"two\n2021-01-01 00:51:00,9\"\n");
    bytes.extend_from_slice(b"2021-01-01 00:52:00,3,plain\n");
    let spec = Spec {
        columns: Some(vec!["T".into()]),
        ..spec_1m()
    };
    // The seam's next line start is inside the quotes ("2021-01-01 00:51:00,9\"" is not a row).
    let seam = [quoted_at as u64 + 30];
    assert_eq!(split_at(&spec, &bytes, &seam), None);
    let want = sequential(&spec, &bytes);
    assert!(
        want.as_ref()
            .unwrap()
            .0
            .contains("2021-01-01 00:50:00,1,7.0,")
    );
    assert_eq!(parallel_or_fallback(&spec, &bytes, &seam), want);
}

/// Two malformed rows in different parts: the error is the first one's, with its line.
#[test]
fn the_first_bad_row_by_line_is_reported() {
    let mut lines = vec!["Datetime,T".to_string()];
    for s in 0..400 {
        lines.push(format!("2021-01-01 00:{:02}:{:02},{s}", s / 60, s % 60));
    }
    lines[100] = "2021-01-01 00:01:39,x1".into();
    lines[300] = "2021-01-01 00:04:59,x2".into();
    let bytes = (lines.join("\n") + "\n").into_bytes();
    let spec = spec_1m();
    let want = sequential(&spec, &bytes);
    let err = want.clone().unwrap_err();
    assert!(err.starts_with("line 101: "), "{err}");
    let half = [bytes.len() as u64 / 2];
    assert_eq!(split_at(&spec, &bytes, &half), None);
    assert_eq!(parallel_or_fallback(&spec, &bytes, &half), want);
    // Under --max-bad-rows 2 both are skipped and the parallel path runs.
    let spec = Spec {
        max_bad_rows: 2,
        ..spec_1m()
    };
    let got = split_at(&spec, &bytes, &half).expect("the parallel path");
    assert_eq!(got, sequential(&spec, &bytes));
    assert_eq!(got.unwrap().2, 2);
}

/// One bucket across three parts (1d over a few hours): each head continues the same
/// accumulator, so the std comes out bit-identical.
#[test]
fn one_bucket_over_many_parts_is_one_fold() {
    let rows: Vec<(i64, String)> = (0..3000)
        .map(|i| (1_609_459_200 + i, format!("{}.{}", 1000 + i % 7, i % 10)))
        .collect();
    let bytes = render(&rows, false);
    let spec = Spec {
        bucket: "1d".parse().unwrap(),
        ..Spec::default()
    };
    let len = bytes.len() as u64;
    let got = split_at(&spec, &bytes, &[len / 4, len / 2, 3 * len / 4]).expect("the parallel path");
    assert_eq!(got, sequential(&spec, &bytes));
}

/// `run_parallel` on a file too small to split takes one thread and gives its result.
#[test]
fn small_files_take_one_thread() {
    let bytes = render(&[(1_609_459_200, "1.5".into())], false);
    let file = TempCsv::new(&bytes);
    let mut out = Vec::new();
    let mut source = BytesSource(&bytes);
    let r = run_parallel(&spec_1m(), &file.0, 8, &mut source, &mut out);
    assert_eq!(outcome(r, out), sequential(&spec_1m(), &bytes));
}
