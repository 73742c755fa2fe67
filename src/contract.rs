//! The output contract: which blob an input rolls up into, which blobs are outputs or inputs,
//! the metadata an output carries, and whether an existing output is current.
//!
//! Written once here and called by the worker (skip or overwrite), `rollq submit` and
//! `rollq backfill` (which blobs are inputs, which need work) and `rollq aggregate` (the
//! default output file). Pure: no storage calls, no async.

use crate::aggregate::Spec;
use crate::storage::{BlobPath, ETag};

/// The suffix of every output name: `temperature1.csv` → `temperature1_aggregated.csv`.
pub const OUTPUT_SUFFIX: &str = "_aggregated.csv";

/// Version of the output format; bump it whenever the same input and options would produce
/// different bytes, so that old outputs are rewritten instead of skipped.
pub const OUTPUT_FORMAT_VERSION: u32 = 1;

/// Output metadata: the input's path, percent-encoded (metadata values must be ASCII).
pub const META_SOURCE: &str = "rollq_source";
/// Output metadata: the input's ETag (without quotes) the output was made from.
pub const META_SOURCE_ETAG: &str = "rollq_source_etag";
/// Output metadata: [`spec_fingerprint`] of the options the output was made with.
pub const META_SPEC: &str = "rollq_spec";
/// Output metadata: [`OUTPUT_FORMAT_VERSION`].
pub const META_FORMAT: &str = "rollq_format";

/// The output name for an input name, injective over every name that is not itself an
/// output ([`is_output`]):
///
/// | input | output |
/// | --- | --- |
/// | `temperature1.csv` | `temperature1_aggregated.csv` |
/// | `dir.v2/t.csv` | `dir.v2/t_aggregated.csv` |
/// | `t.csv.gz` | `t.csv.gz_aggregated_aggregated.csv` |
/// | `t.tsv` | `t.tsv_aggregated_aggregated.csv` |
/// | `t.CSV` | `t.CSV_aggregated_aggregated.csv` |
/// | `t` | `t_aggregated_aggregated.csv` |
///
/// A name ending in `.csv` (exactly: Azure names are case-sensitive) loses it and gains
/// [`OUTPUT_SUFFIX`]; any other name is kept whole and gains `_aggregated` + [`OUTPUT_SUFFIX`].
/// Why it cannot collide: within each branch the input is the output minus a fixed suffix;
/// across the branches, `S_aggregated.csv` (first) equals `N_aggregated_aggregated.csv`
/// (second) only when `S` is `N_aggregated`, and then the first input `N_aggregated.csv` is an
/// output, which nothing rolls up. Every output ends in [`OUTPUT_SUFFIX`], so the Event Grid
/// suffix filter still stops loops.
pub fn output_name(input: &str) -> String {
    match input.strip_suffix(".csv") {
        Some(stem) => format!("{stem}{OUTPUT_SUFFIX}"),
        None => format!("{input}_aggregated{OUTPUT_SUFFIX}"),
    }
}

/// Where the output of `input` is written: `<output container>/<input container>/<output
/// name>` under `--output-container`, else `<input container>/<output name>` beside the input.
///
/// Keeping the input's container in the path makes same-named inputs of two containers write
/// two outputs; a container name holds no `/`, so the path still tells both parts apart. The
/// worker and `rollq backfill` both call this, so they agree on every path.
pub fn output_path(input: &BlobPath, output_container: Option<&str>) -> BlobPath {
    let name = output_name(&input.name);
    match output_container {
        Some(out) => BlobPath::new(out, format!("{}/{name}", input.container)),
        None => BlobPath::new(&input.container, name),
    }
}

/// Whether a blob or file is an output (or a gzipped copy of one), compared without regard to
/// ASCII case as Event Grid's `StringNotEndsWith` filter compares: never rolled up again, so
/// a subscription that sees outputs cannot loop.
pub fn is_output(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    let lower = lower.strip_suffix(".gz").unwrap_or(&lower);
    lower.ends_with(OUTPUT_SUFFIX)
}

/// Whether `submit` and `backfill` pick up a blob or file when they list a folder or a
/// container: `*.csv` or `*.csv.gz` (any case) that is not an output. The worker itself
/// rolls up any name a message gives it, except an output.
pub fn is_input(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    (lower.ends_with(".csv") || lower.ends_with(".csv.gz")) && !is_output(name)
}

/// A stable hex digest of every option that can change the bytes of a successful output.
///
/// Limits that only decide whether a run succeeds (`max_buckets`, `max_line_bytes`,
/// `max_held_cells`, and any later limit) stay out: raising one must not make every existing output stale.
/// `max_bad_rows` is in, since skipped rows change the result.
pub fn spec_fingerprint(spec: &Spec) -> String {
    // A canonical, versioned text form; field separators cannot occur inside the
    // Debug-quoted strings, so distinct specs give distinct texts.
    md5_hex(&format!(
        "rollq-spec/2;format={OUTPUT_FORMAT_VERSION};{}",
        output_options(spec)
    ))
}

/// The fingerprint rollq wrote before limits left it (`rollq-spec/1`): the same spec, with
/// its current limits, in the old canonical form. Accepted by [`is_current`] so that an
/// upgrade does not reprocess every input already rolled up.
fn legacy_spec_fingerprint(spec: &Spec) -> String {
    md5_hex(&format!(
        "rollq-spec/1;format={OUTPUT_FORMAT_VERSION};{};max_buckets={};max_line_bytes={}",
        output_options(spec),
        spec.max_buckets,
        spec.max_line_bytes,
    ))
}

/// The options that change output bytes, in the canonical order both forms share.
fn output_options(spec: &Spec) -> String {
    format!(
        "time={:?};columns={:?};bucket={};delimiter={};time_format={:?};timezone={};max_bad_rows={}",
        spec.time_column,
        spec.columns,
        spec.bucket.name(),
        spec.delimiter,
        spec.time_format,
        spec.timezone.name(),
        spec.max_bad_rows,
    )
}

fn md5_hex(text: &str) -> String {
    use md5::{Digest, Md5};
    Md5::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The metadata written with the output of `source` (at `source_etag`) under `spec`.
pub fn output_metadata(
    source: &BlobPath,
    source_etag: &ETag,
    spec: &Spec,
) -> Vec<(String, String)> {
    vec![
        (META_SOURCE.into(), encoded_source(source)),
        (META_SOURCE_ETAG.into(), unquote(&source_etag.0).to_owned()),
        (META_SPEC.into(), spec_fingerprint(spec)),
        (META_FORMAT.into(), OUTPUT_FORMAT_VERSION.to_string()),
    ]
}

/// Whether an output with `metadata` is what rolling up `source` at `source_etag` under
/// `spec` would write now: same source, same input version, same options (in today's or the
/// legacy fingerprint), same format. An output without rollq's metadata is not current.
pub fn is_current(
    metadata: &[(String, String)],
    source: &BlobPath,
    source_etag: &ETag,
    spec: &Spec,
) -> bool {
    let get = |key: &str| meta_value(metadata, key);
    let spec_matches = get(META_SPEC)
        .is_some_and(|v| v == spec_fingerprint(spec) || v == legacy_spec_fingerprint(spec));
    get(META_SOURCE) == Some(encoded_source(source).as_str())
        && get(META_SOURCE_ETAG) == Some(unquote(&source_etag.0))
        && get(META_FORMAT) == Some(OUTPUT_FORMAT_VERSION.to_string().as_str())
        && spec_matches
}

/// The input an output says it was made from (its [`META_SOURCE`]); `None` when the output
/// carries no such metadata or it is not a `container/name` path.
pub fn recorded_source(metadata: &[(String, String)]) -> Option<BlobPath> {
    let encoded = meta_value(metadata, META_SOURCE)?;
    // The value is form-urlencoded (`byte_serialize`), so it holds no raw `&` or `=`: parsed
    // as a query it is one key, the decoded path.
    let (decoded, _) = url::form_urlencoded::parse(encoded.as_bytes()).next()?;
    let (container, name) = decoded.split_once('/')?;
    (!container.is_empty() && !name.is_empty()).then(|| BlobPath::new(container, name))
}

/// If the output at `path` (with `metadata`) is an orphan, the input it was made from: an
/// output rollq made from an input whose output, under today's [`output_path`] with
/// `output_container`, is somewhere else. Typically written under the earlier name rule (see
/// `docs/worker.md`); rollq never deletes one. An output without [`META_SOURCE`] is not
/// judged (`None`).
pub fn orphaned_source(
    path: &BlobPath,
    metadata: &[(String, String)],
    output_container: Option<&str>,
) -> Option<BlobPath> {
    recorded_source(metadata).filter(|src| output_path(src, output_container) != *path)
}

/// A metadata value by name: Azure compares metadata names without regard to case; some tools
/// quote values.
fn meta_value<'a>(metadata: &'a [(String, String)], key: &str) -> Option<&'a str> {
    metadata
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| unquote(v))
}

fn encoded_source(source: &BlobPath) -> String {
    url::form_urlencoded::byte_serialize(source.to_string().as_bytes()).collect()
}

fn unquote(s: &str) -> &str {
    s.trim_matches('"')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::Bucket;
    use proptest::prelude::{Strategy, prop, prop_assert, prop_assert_ne, prop_assume};

    #[test]
    fn output_names() {
        for (input, output) in [
            ("temperature1.csv", "temperature1_aggregated.csv"),
            ("dir/t1.csv", "dir/t1_aggregated.csv"),
            ("dir.v2/t.csv", "dir.v2/t_aggregated.csv"),
            ("t.csv.gz", "t.csv.gz_aggregated_aggregated.csv"),
            ("t.tsv", "t.tsv_aggregated_aggregated.csv"),
            ("t.CSV", "t.CSV_aggregated_aggregated.csv"),
            ("t.csv.GZ", "t.csv.GZ_aggregated_aggregated.csv"),
            ("dir.v2/noext", "dir.v2/noext_aggregated_aggregated.csv"),
        ] {
            assert_eq!(output_name(input), output, "{input}");
        }
    }

    #[test]
    fn output_paths_keep_the_input_container_under_an_output_container() {
        let input = BlobPath::new("in", "2024/t.csv");
        assert_eq!(
            output_path(&input, None),
            BlobPath::new("in", "2024/t_aggregated.csv")
        );
        assert_eq!(
            output_path(&input, Some("out")),
            BlobPath::new("out", "in/2024/t_aggregated.csv")
        );
        // Same-named inputs of two containers: two outputs, with or without OUT.
        let other = BlobPath::new("in2", "2024/t.csv");
        for out in [None, Some("out")] {
            assert_ne!(output_path(&input, out), output_path(&other, out));
        }
    }

    /// Name families where a rule that strips extensions collides: `x.csv` / `x.csv.gz` /
    /// `x` / `x.tsv` / `x.CSV`, and `x_aggregated` (whose `.csv` form is an output).
    const SUFFIXES: [&str; 12] = [
        "",
        ".csv",
        ".csv.gz",
        ".CSV",
        ".csv.GZ",
        ".tsv",
        ".gz",
        "_aggregated",
        "_aggregated.csv",
        "_aggregated.tsv",
        "_aggregated_aggregated",
        ".csv_aggregated",
    ];

    #[test]
    fn no_two_accepted_inputs_of_the_name_families_share_an_output() {
        // Exhaustive over the families: every (container, name) the worker would roll up.
        for out in [None, Some("out"), Some("a")] {
            let mut seen = std::collections::HashMap::new();
            let mut inputs = std::collections::HashSet::new();
            for container in ["a", "b", "out"] {
                for dir in ["", "d/", "d/e/", "a/", "t.csv/"] {
                    for stem in ["t", "t_aggregated", "T", ".csv", ""] {
                        for suffix in SUFFIXES {
                            let name = format!("{dir}{stem}{suffix}");
                            if name.is_empty() || name.ends_with('/') || is_output(&name) {
                                continue;
                            }
                            let input = BlobPath::new(container, name);
                            if !inputs.insert(input.clone()) {
                                continue; // the families spell some names twice
                            }
                            let output = output_path(&input, out);
                            assert!(is_output(&output.name), "{output}");
                            assert!(!is_input(&output.name), "{output}");
                            if let Some(before) = seen.insert(output.clone(), input.clone()) {
                                panic!("{before} and {input} both write {output} ({out:?})");
                            }
                        }
                    }
                }
            }
        }
    }

    /// A folder-and-stem prefix and a family ending for a name.
    fn base() -> impl Strategy<Value = String> {
        (
            prop::collection::vec("[a-z]{1,2}", 0..3),
            "[a-zA-Z0-9._-]{0,6}",
        )
            .prop_map(|(dirs, stem)| {
                let mut name: String = dirs.iter().map(|d| format!("{d}/")).collect();
                name.push_str(&stem);
                name
            })
    }

    fn ending() -> impl Strategy<Value = String> {
        (
            prop::sample::select(SUFFIXES.to_vec()),
            prop::sample::select(SUFFIXES.to_vec()),
        )
            .prop_map(|(a, b)| format!("{a}{b}"))
    }

    /// Two names biased toward collisions: mostly one shared prefix with two family endings
    /// (`x.csv` against `x.csv.gz`, `x_aggregated` against `x`), sometimes unrelated names.
    fn name_pair() -> impl Strategy<Value = (String, String)> {
        (
            base(),
            base(),
            ending(),
            ending(),
            proptest::bool::weighted(0.8),
        )
            .prop_map(|(p, q, ea, eb, shared)| {
                let other = if shared { p.clone() } else { q };
                (format!("{p}{ea}"), format!("{other}{eb}"))
            })
    }

    proptest::proptest! {
        // About a third of the generated names are outputs and are rejected.
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 2000,
            max_global_rejects: 20_000,
            ..proptest::prelude::ProptestConfig::default()
        })]

        #[test]
        fn distinct_accepted_inputs_have_distinct_outputs(
            (a, b) in name_pair(),
            ca in prop::sample::select(vec!["a", "b"]),
            cb in prop::sample::select(vec!["a", "b"]),
            out in prop::sample::select(vec![None, Some("out"), Some("a")]),
        ) {
            // Blob names: not empty, not a folder. Outputs are never rolled up (the worker
            // skips them, listings leave them out).
            for n in [&a, &b] {
                prop_assume!(!n.is_empty() && !n.ends_with('/') && !is_output(n));
            }
            let (a, b) = (BlobPath::new(ca, a), BlobPath::new(cb, b));
            prop_assume!(a != b);
            let (oa, ob) = (output_path(&a, out), output_path(&b, out));
            prop_assert_ne!(&oa, &ob, "{} and {} collide", a, b);
            for o in [&oa, &ob] {
                prop_assert!(is_output(&o.name), "{} is not an output", o);
                prop_assert!(!is_input(&o.name), "{} is an input", o);
            }
        }
    }

    #[test]
    fn the_recorded_source_decodes_what_output_metadata_wrote() {
        let src = BlobPath::new("in", "a b/t+1&x=y%.csv.gz");
        let written = output_metadata(&src, &ETag("\"0x1\"".into()), &Spec::default());
        assert_eq!(recorded_source(&written), Some(src.clone()));
        assert_eq!(recorded_source(&[]), None);
        assert_eq!(recorded_source(&meta(&[(META_SOURCE, "no-slash")])), None);
        // The output where today's rule puts it is not an orphan; the name the old rule gave
        // `t.csv.gz`, or an output at OUT/<name> without the container, is.
        let here = output_path(&src, None);
        assert_eq!(orphaned_source(&here, &written, None), None);
        let old_beside = BlobPath::new("in", "a b/t_aggregated.csv");
        assert_eq!(
            orphaned_source(&old_beside, &written, None),
            Some(src.clone())
        );
        let under_out = output_path(&src, Some("out"));
        assert_eq!(orphaned_source(&under_out, &written, Some("out")), None);
        let old_under_out = BlobPath::new("out", output_name(&src.name));
        assert_eq!(
            orphaned_source(&old_under_out, &written, Some("out")),
            Some(src.clone())
        );
        assert_eq!(
            orphaned_source(&here, &[], None),
            None,
            "no metadata: not judged"
        );
    }

    #[test]
    fn inputs_and_outputs() {
        assert!(is_input("a/temperature1.csv"));
        assert!(is_input("x.CSV.gz"));
        assert!(!is_input("readme.txt"));
        for output in [
            "temperature1_aggregated.csv",
            "T_AGGREGATED.CSV",
            "t_aggregated.csv.gz",
        ] {
            assert!(is_output(output), "{output}");
            assert!(!is_input(output), "{output}");
        }
        assert!(!is_output("t_aggregated.csv.bak"));
        // Every output name is recognised as an output.
        for input in ["t.csv", "a/b.csv.gz", "noext", "x.tsv", "t_aggregated"] {
            assert!(is_output(&output_name(input)), "{input}");
        }
    }

    #[test]
    fn fingerprint_is_stable_and_sensitive() {
        let a = Spec::default();
        assert_eq!(spec_fingerprint(&a), spec_fingerprint(&Spec::default()));
        assert_eq!(spec_fingerprint(&a).len(), 32);
        let b = Spec {
            bucket: Bucket::Day1,
            ..Spec::default()
        };
        let c = Spec {
            columns: Some(vec!["a".into()]),
            ..Spec::default()
        };
        let d = Spec {
            max_bad_rows: 3,
            ..Spec::default()
        };
        for other in [&b, &c, &d] {
            assert_ne!(spec_fingerprint(&a), spec_fingerprint(other));
        }
    }

    #[test]
    fn limits_do_not_change_the_fingerprint() {
        let raised = Spec {
            max_buckets: 5_000_000,
            max_held_cells: 7,
            max_line_bytes: 8 << 20,
            ..Spec::default()
        };
        assert_eq!(
            spec_fingerprint(&raised),
            spec_fingerprint(&Spec::default())
        );
    }

    #[test]
    fn the_legacy_fingerprint_is_what_rollq_wrote_before() {
        // md5 of the `rollq-spec/1` text of the default spec, as earlier releases wrote it.
        assert_eq!(
            legacy_spec_fingerprint(&Spec::default()),
            "2a08b8e699cdc5d4b013aa1a73dd0a04"
        );
    }

    fn meta(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn currency() {
        let src = BlobPath::new("in", "a b/t.csv");
        let etag = ETag("\"0x1\"".into());
        let spec = Spec::default();
        let written = output_metadata(&src, &etag, &spec);
        assert!(is_current(&written, &src, &etag, &spec));
        // Names compare without case, values with or without quotes.
        let shouted: Vec<_> = written
            .iter()
            .map(|(k, v)| (k.to_ascii_uppercase(), format!("\"{v}\"")))
            .collect();
        assert!(is_current(&shouted, &src, &etag, &spec));
        // Another input version, another source, other options, no metadata: not current.
        assert!(!is_current(&written, &src, &ETag("\"0x2\"".into()), &spec));
        assert!(!is_current(
            &written,
            &BlobPath::new("in2", "a b/t.csv"),
            &etag,
            &spec
        ));
        let daily = Spec {
            bucket: Bucket::Day1,
            ..Spec::default()
        };
        assert!(!is_current(&written, &src, &etag, &daily));
        assert!(!is_current(&[], &src, &etag, &spec));
        // An output written by an older rollq (legacy fingerprint) is current.
        let legacy = meta(&[
            (META_SOURCE, "in%2Fa+b%2Ft.csv"),
            (META_SOURCE_ETAG, "0x1"),
            (META_SPEC, "2a08b8e699cdc5d4b013aa1a73dd0a04"),
            (META_FORMAT, "1"),
        ]);
        assert!(is_current(&legacy, &src, &etag, &spec));
        let mut other_format = legacy.clone();
        other_format[3].1 = "2".into();
        assert!(!is_current(&other_format, &src, &etag, &spec));
    }
}
