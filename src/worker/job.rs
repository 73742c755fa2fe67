//! `Job::parse`: one queue message's text → the input blob it names, or a reason to skip it.
//!
//! Called by `process_one` before any storage call; pure, so every message form is unit-tested
//! here. Accepted forms: a bare blob name (relative to `--container`), a blob URL in the
//! configured account, JSON `{"container": .., "blob": ..}`, and an Event Grid
//! `Microsoft.Storage.BlobCreated` event in the Event Grid or CloudEvents 1.0 schema; each raw
//! or base64-encoded.

use base64::Engine;
use serde_json::{Map, Value};

use super::echo::Echo;
use super::error::JobError;
use crate::contract::{self, OUTPUT_SUFFIX};
use crate::storage::BlobPath;

/// The event type the worker processes; other event types are acknowledged and skipped.
pub const BLOB_CREATED: &str = "Microsoft.Storage.BlobCreated";

/// How message text is encoded (`--message-encoding`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum MessageEncoding {
    /// JSON if the text starts with `{`; else a base64-encoded JSON object; else a blob name.
    #[default]
    Auto,
    /// The text as it is: JSON if it starts with `{`, else a blob name.
    Plain,
    /// Always base64 (Azure Functions' default); the decoded text follows the `plain` rules.
    Base64,
}

/// What a message may name: the configured account and containers.
#[derive(Clone, Debug)]
pub struct JobRules {
    /// The storage account the worker is connected to (compared case-insensitively).
    pub account: String,
    /// `--container`: where bare names live.
    pub container: String,
    /// `--allowed-containers`: further containers messages may name.
    pub allowed_containers: Vec<String>,
    pub encoding: MessageEncoding,
}

impl JobRules {
    fn allows_container(&self, c: &str) -> bool {
        c == self.container || self.allowed_containers.iter().any(|a| a == c)
    }

    fn check_account(&self, account: &str, from: &str) -> Result<(), JobError> {
        if account.eq_ignore_ascii_case(&self.account) {
            Ok(())
        } else {
            Err(JobError::Refused(format!(
                "{from} names account {}, not the configured account {:?}",
                Echo(account),
                self.account
            )))
        }
    }
}

/// A validated message: the input blob to roll up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    pub input: BlobPath,
}

/// Why a well-formed message needs no work (acknowledged, never poisoned).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// An event of another type (BlobDeleted, ...).
    NotBlobCreated(String),
    /// A BlobCreated with `contentLength` 0 (Data Lake's CreateFile precedes the real write).
    EmptyBlob,
    /// The blob is itself an output ([`contract::is_output`]).
    OutputBlob,
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SkipReason::NotBlobCreated(t) => {
                write!(f, "event type {} is not {BLOB_CREATED}", Echo(t))
            }
            SkipReason::EmptyBlob => f.write_str("BlobCreated with contentLength 0"),
            SkipReason::OutputBlob => write!(f, "the blob is an output ({OUTPUT_SUFFIX})"),
        }
    }
}

/// The result of parsing: work to do, or a reason to acknowledge without work.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    Job(Job),
    Skip(SkipReason),
}

impl Job {
    /// Parses message text under `rules`. Errors are permanent: the message is poisoned.
    pub fn parse(text: &str, rules: &JobRules) -> Result<Parsed, JobError> {
        let text = text.trim();
        match rules.encoding {
            MessageEncoding::Plain => parse_plain(text, rules),
            MessageEncoding::Base64 => {
                let decoded = decode_base64(text).ok_or_else(|| {
                    bad("--message-encoding base64: the text is not base64 of UTF-8")
                })?;
                parse_plain(decoded.trim(), rules)
            }
            MessageEncoding::Auto => {
                if starts_json(text) {
                    return parse_json(text, rules);
                }
                // Only a base64 text that decodes to a JSON object is decoded: a blob name such
                // as `2024/jan` is valid base64 too, and must stay a name.
                if let Some(decoded) = decode_base64(text) {
                    let decoded = decoded.trim();
                    if decoded.starts_with('{')
                        && matches!(serde_json::from_str::<Value>(decoded), Ok(Value::Object(_)))
                    {
                        return parse_json(decoded, rules);
                    }
                }
                parse_name(text, rules)
            }
        }
    }
}

fn bad(why: impl Into<String>) -> JobError {
    JobError::BadMessage(why.into())
}

fn starts_json(text: &str) -> bool {
    text.starts_with('{') || text.starts_with('[')
}

fn decode_base64(text: &str) -> Option<String> {
    if text.is_empty() {
        return None;
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .ok()?;
    String::from_utf8(bytes).ok()
}

fn parse_plain(text: &str, rules: &JobRules) -> Result<Parsed, JobError> {
    if starts_json(text) {
        parse_json(text, rules)
    } else {
        parse_name(text, rules)
    }
}

/// A bare name relative to `--container`, or an `http(s)://` blob URL.
fn parse_name(text: &str, rules: &JobRules) -> Result<Parsed, JobError> {
    if text.starts_with("http://") || text.starts_with("https://") {
        let (account, path) = parse_blob_url(text)?;
        rules.check_account(&account, "the URL")?;
        return finish(path, rules);
    }
    finish(BlobPath::new(rules.container.clone(), text), rules)
}

fn parse_json(text: &str, rules: &JobRules) -> Result<Parsed, JobError> {
    let value: Value = serde_json::from_str(text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    let obj = match value {
        Value::Object(obj) => obj,
        // Event Grid writes one event per queue message; tolerate a one-element batch.
        Value::Array(mut items) if items.len() == 1 => match items.pop() {
            Some(Value::Object(obj)) => obj,
            _ => return Err(bad("a JSON array must hold one event object")),
        },
        Value::Array(items) => {
            return Err(bad(format!(
                "a JSON array of {} items: send one event per message",
                items.len()
            )));
        }
        _ => return Err(bad("JSON must be an object")),
    };
    if obj.contains_key("specversion") || obj.contains_key("eventType") {
        return parse_event(&obj, rules);
    }
    let blob = str_field(&obj, "blob")?
        .ok_or_else(|| bad("JSON needs \"blob\" (and optionally \"container\"), or an event"))?;
    let container = str_field(&obj, "container")?.unwrap_or(&rules.container);
    finish(BlobPath::new(container, blob), rules)
}

fn str_field<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, JobError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(bad(format!("\"{key}\" must be a string"))),
    }
}

/// An Event Grid event: `eventType`/`topic` (Event Grid schema) or `type`/`source` (CloudEvents).
fn parse_event(obj: &Map<String, Value>, rules: &JobRules) -> Result<Parsed, JobError> {
    let cloud = obj.contains_key("specversion");
    let (type_key, topic_key) = if cloud {
        ("type", "source")
    } else {
        ("eventType", "topic")
    };
    let event_type =
        str_field(obj, type_key)?.ok_or_else(|| bad(format!("event without \"{type_key}\"")))?;
    if event_type != BLOB_CREATED {
        return Ok(Parsed::Skip(SkipReason::NotBlobCreated(
            event_type.to_owned(),
        )));
    }
    let data = match obj.get("data") {
        Some(Value::Object(d)) => d,
        _ => return Err(bad("BlobCreated event without a \"data\" object")),
    };
    if data.get("contentLength").and_then(Value::as_u64) == Some(0) {
        return Ok(Parsed::Skip(SkipReason::EmptyBlob));
    }

    let mut account_seen = false;
    if let Some(topic) = str_field(obj, topic_key)? {
        let account = topic_account(topic).ok_or_else(|| {
            JobError::Refused(format!(
                "{topic_key} {} is not a storage account",
                Echo(topic)
            ))
        })?;
        rules.check_account(account, topic_key)?;
        account_seen = true;
    }
    let from_url = match str_field(data, "url")? {
        Some(url) => {
            let (account, path) = parse_blob_url(url)?;
            rules.check_account(&account, "data.url")?;
            account_seen = true;
            Some(path)
        }
        None => None,
    };
    if !account_seen {
        return Err(bad(format!(
            "event names no account (no \"{topic_key}\" and no data.url)"
        )));
    }
    let path = match str_field(obj, "subject")? {
        Some(subject) => subject_path(subject)?,
        None => from_url.ok_or_else(|| bad("event without \"subject\" or data.url"))?,
    };
    finish(path, rules)
}

/// `/subscriptions/../providers/Microsoft.Storage/storageAccounts/{account}` → account.
fn topic_account(topic: &str) -> Option<&str> {
    let mut parts = topic.split('/');
    parts.find(|p| p.eq_ignore_ascii_case("storageAccounts"))?;
    parts.next().filter(|a| !a.is_empty())
}

/// `/blobServices/default/containers/{container}/blobs/{name}` → path.
fn subject_path(subject: &str) -> Result<BlobPath, JobError> {
    let rest = subject
        .strip_prefix("/blobServices/default/containers/")
        .ok_or_else(|| bad(format!("subject {} is not a blob subject", Echo(subject))))?;
    let (container, name) = rest
        .split_once("/blobs/")
        .ok_or_else(|| bad(format!("subject {} has no /blobs/ part", Echo(subject))))?;
    Ok(BlobPath::new(container, name))
}

/// A blob URL → (account, path). Host-style on Azure (`acct.blob.core.windows.net`,
/// `acct.dfs.core.windows.net` on Data Lake, other clouds alike); path-style otherwise
/// (`http://127.0.0.1:10000/devstoreaccount1/container/blob`, the emulator's form).
fn parse_blob_url(text: &str) -> Result<(String, BlobPath), JobError> {
    // The URL parser resolves `.` and `..` (and `%2e%2e`) before the segments below can be
    // seen, turning `in/a/../b.csv` into `in/b.csv`: look at the path as written first.
    // Backslashes count as slashes, as the parser reads them in http(s) URLs.
    let written = text.split_once("://").map_or("", |(_, rest)| rest);
    let written = written.split(['?', '#']).next().unwrap_or_default();
    if let Some(seg) = written
        .split(['/', '\\'])
        .skip(1)
        .find(|s| is_dot_segment(s))
    {
        return Err(bad(format!(
            "URL {} has a {seg:?} path segment",
            Echo(text)
        )));
    }
    let url = url::Url::parse(text).map_err(|e| bad(format!("invalid URL {}: {e}", Echo(text))))?;
    let mut segments: Vec<String> = url
        .path_segments()
        .map(|s| {
            s.map(|seg| {
                percent_decode(seg).ok_or_else(|| bad(format!("URL {} is not UTF-8", Echo(text))))
            })
            .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?
        .unwrap_or_default();
    let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
    let labels: Vec<&str> = host.split('.').collect();
    let host_style = labels.len() >= 3 && matches!(labels[1], "blob" | "dfs");
    let account = if host_style {
        labels[0].to_owned()
    } else {
        if segments.is_empty() {
            return Err(bad(format!(
                "URL {} has no account in its path",
                Echo(text)
            )));
        }
        segments.remove(0)
    };
    if segments.len() < 2 {
        return Err(bad(format!(
            "URL {} names no container and blob",
            Echo(text)
        )));
    }
    let container = segments.remove(0);
    Ok((account, BlobPath::new(container, segments.join("/"))))
}

fn percent_decode(seg: &str) -> Option<String> {
    let bytes = seg.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
            if let Ok(b) = u8::from_str_radix(hex, 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Whether a path segment is `.` or `..` once percent-decoded (`%2e%2e`, `.%2E`): a URL
/// built from such a name resolves it, so the request would reach another blob (a `..`
/// under `<container>/` lands in `$root`). Empty segments (`a//b`) are legal Azure names.
fn is_dot_segment(segment: &str) -> bool {
    segment.len() <= 6
        && matches!(
            segment.to_ascii_lowercase().replace("%2e", ".").as_str(),
            "." | ".."
        )
}

/// Last checks shared by every form: allowed container, valid name, not an output.
fn finish(path: BlobPath, rules: &JobRules) -> Result<Parsed, JobError> {
    if !rules.allows_container(&path.container) {
        return Err(JobError::Refused(format!(
            "container {} is not --container or in --allowed-containers",
            Echo(&path.container)
        )));
    }
    let name = path.name.as_str();
    if name.is_empty() {
        return Err(bad("empty blob name"));
    }
    if name.chars().count() > 1024 {
        return Err(bad("blob name longer than 1024 characters"));
    }
    if name.chars().any(char::is_control) {
        return Err(bad(format!(
            "blob name {} contains control characters",
            Echo(name)
        )));
    }
    if name.ends_with('/') {
        return Err(bad(format!("blob name {} ends with '/'", Echo(name))));
    }
    if let Some(seg) = name.split('/').find(|s| is_dot_segment(s)) {
        return Err(bad(format!(
            "blob name {} has a {seg:?} path segment",
            Echo(name)
        )));
    }
    if contract::is_output(name) {
        return Ok(Parsed::Skip(SkipReason::OutputBlob));
    }
    Ok(Parsed::Job(Job { input: path }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(encoding: MessageEncoding) -> JobRules {
        JobRules {
            account: "devstoreaccount1".into(),
            container: "in".into(),
            allowed_containers: vec!["other".into()],
            encoding,
        }
    }

    fn auto(text: &str) -> Result<Parsed, JobError> {
        Job::parse(text, &rules(MessageEncoding::Auto))
    }

    fn job(container: &str, name: &str) -> Parsed {
        Parsed::Job(Job {
            input: BlobPath::new(container, name),
        })
    }

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    const TOPIC: &str = "/subscriptions/s/resourceGroups/g/providers/Microsoft.Storage/storageAccounts/devstoreaccount1";

    fn event_grid(event_type: &str, subject: &str, len: u64, url: &str) -> String {
        serde_json::json!({
            "topic": TOPIC,
            "subject": subject,
            "eventType": event_type,
            "id": "1",
            "eventTime": "2026-01-01T00:00:00Z",
            "dataVersion": "",
            "metadataVersion": "1",
            "data": {"api": "PutBlob", "contentLength": len, "url": url, "blobType": "BlockBlob"}
        })
        .to_string()
    }

    fn cloud_event(subject: &str, url: &str) -> String {
        serde_json::json!({
            "specversion": "1.0",
            "source": TOPIC,
            "subject": subject,
            "type": BLOB_CREATED,
            "id": "2",
            "time": "2026-01-01T00:00:00Z",
            "data": {"api": "PutBlockList", "contentLength": 10, "url": url}
        })
        .to_string()
    }

    #[test]
    fn bare_names_stay_names_even_when_they_look_like_base64() {
        assert_eq!(
            auto("temperature1.csv").unwrap(),
            job("in", "temperature1.csv")
        );
        // `2024/jan` decodes as base64 (to bytes that are not JSON): it is a name.
        assert!(
            base64::engine::general_purpose::STANDARD
                .decode("2024/jan")
                .is_ok()
        );
        assert_eq!(auto("2024/jan").unwrap(), job("in", "2024/jan"));
        assert_eq!(auto("abcd").unwrap(), job("in", "abcd"));
        assert_eq!(auto("  dir/x.csv.gz\n").unwrap(), job("in", "dir/x.csv.gz"));
        // base64 of a name (not of JSON) is not decoded in auto mode.
        assert_eq!(auto(&b64("a.csv")).unwrap(), job("in", &b64("a.csv")));
    }

    #[test]
    fn json_forms_raw_and_base64() {
        let raw = r#"{"container": "other", "blob": "d/t.csv"}"#;
        assert_eq!(auto(raw).unwrap(), job("other", "d/t.csv"));
        assert_eq!(auto(&b64(raw)).unwrap(), job("other", "d/t.csv"));
        assert_eq!(auto(r#"{"blob": "t.csv"}"#).unwrap(), job("in", "t.csv"));
        assert!(matches!(
            auto(r#"{"container": "in"}"#),
            Err(JobError::BadMessage(_))
        ));
        assert!(matches!(
            auto(r#"{"blob": 3}"#),
            Err(JobError::BadMessage(_))
        ));
        assert!(matches!(auto("{not json"), Err(JobError::BadMessage(_))));
        assert!(matches!(auto("[1, 2]"), Err(JobError::BadMessage(_))));
    }

    #[test]
    fn containers_outside_the_allowed_set_are_refused() {
        let err = auto(r#"{"container": "secret", "blob": "t.csv"}"#).unwrap_err();
        assert!(matches!(err, JobError::Refused(_)), "{err}");
    }

    #[test]
    fn explicit_encodings() {
        let plain = rules(MessageEncoding::Plain);
        let raw = r#"{"blob": "t.csv"}"#;
        // plain never decodes: the base64 text is a (strange) name.
        assert_eq!(Job::parse(&b64(raw), &plain).unwrap(), job("in", &b64(raw)));
        let base = rules(MessageEncoding::Base64);
        assert_eq!(Job::parse(&b64(raw), &base).unwrap(), job("in", "t.csv"));
        assert_eq!(
            Job::parse(&b64("a/b.csv"), &base).unwrap(),
            job("in", "a/b.csv")
        );
        assert!(matches!(
            Job::parse("not base64!", &base),
            Err(JobError::BadMessage(_))
        ));
    }

    #[test]
    fn event_grid_and_cloud_events_raw_and_base64() {
        let url = "https://devstoreaccount1.blob.core.windows.net/in/x%20y.csv";
        let eg = event_grid(
            BLOB_CREATED,
            "/blobServices/default/containers/in/blobs/x y.csv",
            5,
            url,
        );
        assert_eq!(auto(&eg).unwrap(), job("in", "x y.csv"));
        assert_eq!(auto(&b64(&eg)).unwrap(), job("in", "x y.csv"));
        let ce = cloud_event(
            "/blobServices/default/containers/other/blobs/a/b.csv",
            "http://127.0.0.1:10000/devstoreaccount1/other/a/b.csv",
        );
        assert_eq!(auto(&ce).unwrap(), job("other", "a/b.csv"));
        assert_eq!(auto(&b64(&ce)).unwrap(), job("other", "a/b.csv"));
        // A one-element batch is accepted.
        assert_eq!(auto(&format!("[{eg}]")).unwrap(), job("in", "x y.csv"));
        // Data Lake host.
        let dfs = event_grid(
            BLOB_CREATED,
            "/blobServices/default/containers/in/blobs/f.csv",
            5,
            "https://devstoreaccount1.dfs.core.windows.net/in/f.csv",
        );
        assert_eq!(auto(&dfs).unwrap(), job("in", "f.csv"));
    }

    #[test]
    fn events_that_need_no_work_are_skipped() {
        let url = "https://devstoreaccount1.blob.core.windows.net/in/a.csv";
        let deleted = event_grid(
            "Microsoft.Storage.BlobDeleted",
            "/blobServices/default/containers/in/blobs/a.csv",
            5,
            url,
        );
        assert_eq!(
            auto(&deleted).unwrap(),
            Parsed::Skip(SkipReason::NotBlobCreated(
                "Microsoft.Storage.BlobDeleted".into()
            ))
        );
        let create_file = event_grid(
            BLOB_CREATED,
            "/blobServices/default/containers/in/blobs/a.csv",
            0,
            url,
        );
        assert_eq!(
            auto(&create_file).unwrap(),
            Parsed::Skip(SkipReason::EmptyBlob)
        );
        let output = event_grid(
            BLOB_CREATED,
            "/blobServices/default/containers/in/blobs/a_aggregated.csv",
            9,
            url,
        );
        assert_eq!(auto(&output).unwrap(), Parsed::Skip(SkipReason::OutputBlob));
        assert_eq!(
            auto("t_aggregated.csv").unwrap(),
            Parsed::Skip(SkipReason::OutputBlob)
        );
    }

    #[test]
    fn foreign_accounts_are_refused() {
        let foreign_url = event_grid(
            BLOB_CREATED,
            "/blobServices/default/containers/in/blobs/a.csv",
            5,
            "https://evil.blob.core.windows.net/in/a.csv",
        );
        assert!(matches!(auto(&foreign_url), Err(JobError::Refused(_))));
        let foreign_topic = event_grid(
            BLOB_CREATED,
            "/blobServices/default/containers/in/blobs/a.csv",
            5,
            "https://devstoreaccount1.blob.core.windows.net/in/a.csv",
        )
        .replace("storageAccounts/devstoreaccount1", "storageAccounts/evil");
        assert!(matches!(auto(&foreign_topic), Err(JobError::Refused(_))));
        assert!(matches!(
            auto("https://evil.blob.core.windows.net/in/a.csv"),
            Err(JobError::Refused(_))
        ));
        assert!(matches!(
            auto("http://127.0.0.1:10000/evil/in/a.csv"),
            Err(JobError::Refused(_))
        ));
        assert_eq!(
            auto("https://DevStoreAccount1.blob.core.windows.net/in/a.csv").unwrap(),
            job("in", "a.csv")
        );
        assert_eq!(
            auto("http://127.0.0.1:10000/devstoreaccount1/in/d/a%2Bb.csv").unwrap(),
            job("in", "d/a+b.csv")
        );
    }

    fn is_bad(r: Result<Parsed, JobError>) -> bool {
        matches!(r, Err(JobError::BadMessage(_)))
    }

    #[test]
    fn dot_segments_are_rejected_in_every_form() {
        const URL: &str = "http://127.0.0.1:10000/devstoreaccount1/in";
        const HOST: &str = "https://devstoreaccount1.blob.core.windows.net/in";
        for name in [
            "..",
            ".",
            "../t.csv",
            "a/../t.csv",
            "./t.csv",
            "a/.",
            "a/..",
            "%2e%2e/t.csv",
            "%2E%2E/t.csv",
            "a/%2E/t.csv",
            ".%2e/t.csv",
            "%2e./t.csv",
            "a/%2e",
        ] {
            let json = serde_json::json!({"container": "in", "blob": name}).to_string();
            let subject = format!("/blobServices/default/containers/in/blobs/{name}");
            let eg = event_grid(BLOB_CREATED, &subject, 5, &format!("{HOST}/x.csv"));
            let ce = cloud_event(&subject, &format!("{URL}/x.csv"));
            let base = rules(MessageEncoding::Base64);
            let forms = [
                ("bare", auto(name)),
                ("json", auto(&json)),
                ("base64 json", auto(&b64(&json))),
                ("base64 encoding", Job::parse(&b64(name), &base)),
                ("path-style url", auto(&format!("{URL}/{name}"))),
                ("host-style url", auto(&format!("{HOST}/{name}"))),
                ("event grid subject", auto(&eg)),
                ("cloud event subject", auto(&ce)),
            ];
            for (form, r) in forms {
                let shown = format!("{r:?}");
                assert!(is_bad(r), "{form} {name:?}: {shown}");
            }
        }
        // An event whose subject is fine but whose URL is not.
        let eg = event_grid(
            BLOB_CREATED,
            "/blobServices/default/containers/in/blobs/x.csv",
            5,
            &format!("{HOST}/a/%2e%2e/x.csv"),
        );
        assert!(is_bad(auto(&eg)));
        assert!(is_bad(auto(&format!("{URL}/a\\..\\x.csv"))));
    }

    #[test]
    fn names_that_only_look_like_dot_segments_stay_accepted() {
        for name in [
            "a//b.csv",
            "...",
            ".a.csv",
            "a/..b",
            "a/.../b.csv",
            "%2e%2e%2e",
            "a..csv",
        ] {
            assert_eq!(auto(name).unwrap(), job("in", name), "{name}");
            let json = serde_json::json!({"blob": name}).to_string();
            assert_eq!(auto(&json).unwrap(), job("in", name), "{name}");
        }
        assert_eq!(
            auto("http://127.0.0.1:10000/devstoreaccount1/in/a//b.csv").unwrap(),
            job("in", "a//b.csv")
        );
    }

    #[test]
    fn bad_names_and_events_are_permanent_errors() {
        assert!(matches!(auto(""), Err(JobError::BadMessage(_))));
        assert!(matches!(auto("a\u{1}b"), Err(JobError::BadMessage(_))));
        assert!(matches!(auto("dir/"), Err(JobError::BadMessage(_))));
        assert!(matches!(
            auto(&"x".repeat(1025)),
            Err(JobError::BadMessage(_))
        ));
        let no_subject = r#"{"eventType": "Microsoft.Storage.BlobCreated", "topic": "/x/storageAccounts/devstoreaccount1", "subject": "/nope", "data": {"contentLength": 3}}"#;
        assert!(matches!(auto(no_subject), Err(JobError::BadMessage(_))));
        let no_account = r#"{"eventType": "Microsoft.Storage.BlobCreated", "subject": "/blobServices/default/containers/in/blobs/a.csv", "data": {"contentLength": 3}}"#;
        assert!(matches!(auto(no_account), Err(JobError::BadMessage(_))));
    }

    #[test]
    fn producer_text_in_errors_is_bounded_and_loses_its_signature() {
        // Another account's SAS URL: refused, and the refusal does not carry the signature.
        let url = "https://other.blob.core.windows.net/in/t.csv?sv=2024&sig=SECRETSIG";
        let err = auto(url).unwrap_err().to_string();
        assert!(err.contains("other"), "{err}");
        let bad_url = format!("https://{}/x?sig=SECRETSIG", "h".repeat(70_000));
        let err = auto(&bad_url).unwrap_err().to_string();
        assert!(!err.contains("SECRETSIG"), "{err}");
        assert!(err.len() < 1_000, "{} bytes", err.len());
        // A long name with a control character: the error quotes only its head.
        let name = format!("{}\u{7}", "n".repeat(1000));
        let err = auto(&name).unwrap_err().to_string();
        assert!(err.contains("more characters"), "{err}");
        assert!(err.len() < 1_000, "{} bytes", err.len());
    }
}
