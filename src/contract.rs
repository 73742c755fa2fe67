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

/// The output name for an input name: the name without a `.gz`, then without its last
/// extension, plus [`OUTPUT_SUFFIX`] (`dir.v2/t.csv.gz` → `dir.v2/t_aggregated.csv`).
pub fn output_name(input: &str) -> String {
    let base = input.strip_suffix(".gz").unwrap_or(input);
    let stem = match base.rfind('.') {
        Some(dot) if dot > base.rfind('/').map_or(0, |s| s + 1) => &base[..dot],
        _ => base,
    };
    format!("{stem}{OUTPUT_SUFFIX}")
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
    // Azure compares metadata names without regard to case; some tools quote values.
    let get = |key: &str| {
        metadata
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| unquote(v))
    };
    let spec_matches = get(META_SPEC)
        .is_some_and(|v| v == spec_fingerprint(spec) || v == legacy_spec_fingerprint(spec));
    get(META_SOURCE) == Some(encoded_source(source).as_str())
        && get(META_SOURCE_ETAG) == Some(unquote(&source_etag.0))
        && get(META_FORMAT) == Some(OUTPUT_FORMAT_VERSION.to_string().as_str())
        && spec_matches
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

    #[test]
    fn output_names() {
        assert_eq!(
            output_name("temperature1.csv"),
            "temperature1_aggregated.csv"
        );
        assert_eq!(output_name("dir.v2/t.csv.gz"), "dir.v2/t_aggregated.csv");
        assert_eq!(output_name("dir.v2/noext"), "dir.v2/noext_aggregated.csv");
        assert_eq!(output_name("dir/t1.csv"), "dir/t1_aggregated.csv");
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
        for input in ["t.csv", "a/b.csv.gz", "noext", "x.tsv"] {
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
