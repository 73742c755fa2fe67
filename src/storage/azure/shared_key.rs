//! Shared Key request signing (the 1.x SDK crates have none) and SAS query appending.
//!
//! Both are pipeline policies installed by `azure::build`. Shared Key runs per try (each retry
//! gets a fresh `x-ms-date` and signature); the SAS policy runs once per call, and names the
//! token's expiry when the service refuses a request after it.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use azure_core::credentials::Secret;
use azure_core::http::headers::HeaderName;
use azure_core::http::policies::{Policy, PolicyResult};
use azure_core::http::{Context, Request, Url};
use azure_core::time::{OffsetDateTime, to_rfc7231};

/// The standard headers in the order Microsoft's string-to-sign lists them (API 2009-09-19+).
const SIGNED_HEADERS: [&str; 11] = [
    "content-encoding",
    "content-language",
    "content-length",
    "content-md5",
    "content-type",
    "date",
    "if-modified-since",
    "if-match",
    "if-none-match",
    "if-unmodified-since",
    "range",
];

/// Builds the Shared Key string-to-sign.
///
/// `header` looks up a standard header (lowercase name); `ms_headers` are every `x-ms-*`
/// header (any order). `content_length` is the value to sign: the empty string when the body is
/// empty, as the service requires for API versions from 2015-02-21 on.
pub fn string_to_sign(
    verb: &str,
    header: impl Fn(&str) -> Option<String>,
    content_length: &str,
    ms_headers: &[(String, String)],
    account: &str,
    url: &Url,
) -> String {
    let mut s = String::with_capacity(256);
    s.push_str(&verb.to_ascii_uppercase());
    s.push('\n');
    for name in SIGNED_HEADERS {
        if name == "content-length" {
            s.push_str(content_length);
        } else if let Some(v) = header(name) {
            s.push_str(v.trim());
        }
        s.push('\n');
    }
    let mut ms: Vec<(String, String)> = ms_headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    ms.sort();
    for (k, v) in ms {
        s.push_str(&k);
        s.push(':');
        s.push_str(&v);
        s.push('\n');
    }
    // Canonicalized resource: the path exactly as sent (still percent-encoded), then each
    // query key lowercased with its *decoded* values sorted and comma-joined.
    s.push('/');
    s.push_str(account);
    s.push_str(url.path());
    let mut query: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in url.query_pairs() {
        query
            .entry(k.to_ascii_lowercase())
            .or_default()
            .push(v.into_owned());
    }
    for (k, mut values) in query {
        values.sort();
        s.push('\n');
        s.push_str(&k);
        s.push(':');
        s.push_str(&values.join(","));
    }
    s
}

/// Signs every try with the account key (`Authorization: SharedKey account:signature`).
pub struct SharedKeyPolicy {
    account: String,
    key: Secret,
}

impl std::fmt::Debug for SharedKeyPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedKeyPolicy")
            .field("account", &self.account)
            .finish_non_exhaustive()
    }
}

impl SharedKeyPolicy {
    pub fn new(account: impl Into<String>, key: String) -> Arc<Self> {
        Arc::new(Self {
            account: account.into(),
            key: Secret::new(key),
        })
    }
}

// `Context` has a lifetime the trait declares elided; naming it breaks `async_trait`'s match.
#[allow(elided_lifetimes_in_paths)]
#[async_trait]
impl Policy for SharedKeyPolicy {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        // The date must be set before signing and be part of what is signed.
        request.insert_header("x-ms-date", to_rfc7231(&OffsetDateTime::now_utc()));
        let headers = request.headers();
        let lookup = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k.as_str() == name)
                .map(|(_, v)| v.as_str().to_owned())
        };
        // The transport adds `content-length: 0` to empty PUT/POST after this policy runs;
        // the service expects an empty string for a zero length either way.
        let length = lookup("content-length")
            .or_else(|| request.body().len().map(|n| n.to_string()))
            .filter(|v| v != "0")
            .unwrap_or_default();
        let ms: Vec<(String, String)> = headers
            .iter()
            .filter(|(k, _)| k.as_str().starts_with("x-ms-"))
            .map(|(k, v)| (k.as_str().to_owned(), v.as_str().to_owned()))
            .collect();
        let sts = string_to_sign(
            request.method().as_ref(),
            lookup,
            &length,
            &ms,
            &self.account,
            request.url(),
        );
        let signature = azure_core::hmac::hmac_sha256(&sts, &self.key)?;
        request.insert_header(
            "authorization",
            format!("SharedKey {}:{signature}", self.account),
        );
        next[0].send(ctx, request, &next[1..]).await
    }
}

/// Appends a SAS token's parameters to every request (once per call: retries reuse the URL).
pub struct SasPolicy {
    pairs: Vec<(String, String)>,
    /// The token's signed expiry (`se`) as written and parsed, when it parses as RFC 3339.
    expiry: Option<(String, OffsetDateTime)>,
}

impl std::fmt::Debug for SasPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SasPolicy(..)")
    }
}

impl SasPolicy {
    pub fn new(token: &str) -> Arc<Self> {
        let pairs = url::form_urlencoded::parse(token.trim_start_matches('?').as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect::<Vec<(String, String)>>();
        let expiry = pairs
            .iter()
            .find(|(k, _)| k == "se")
            .and_then(|(_, v)| Some((v.clone(), azure_core::time::parse_rfc3339(v).ok()?)));
        Arc::new(Self { pairs, expiry })
    }

    /// The token's `se` when `now` is past it. A 403 then is the expiry: the service does not
    /// always say so (Azurite answers a bare `AuthorizationFailure`; Azure puts it in the
    /// body's `AuthenticationErrorDetail`, which the error mapping does not read), and the operator's fix is a new token, not a role.
    fn expired(&self, now: OffsetDateTime) -> Option<&str> {
        self.expiry
            .as_ref()
            .filter(|(_, at)| now >= *at)
            .map(|(text, _)| text.as_str())
    }
}

// `Context` has a lifetime the trait declares elided; naming it breaks `async_trait`'s match.
#[allow(elided_lifetimes_in_paths)]
#[async_trait]
impl Policy for SasPolicy {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        let already = request.url().query_pairs().any(|(k, _)| k == "sig");
        if !already {
            let url = request.url_mut();
            let mut q = url.query_pairs_mut();
            for (k, v) in &self.pairs {
                q.append_pair(k, v);
            }
        }
        let rsp = next[0].send(ctx, request, &next[1..]).await?;
        if u16::from(rsp.status()) == 403
            && let Some(se) = self.expired(OffsetDateTime::now_utc())
        {
            let code = rsp
                .headers()
                .get_optional_str(&HeaderName::from_static("x-ms-error-code"))
                .unwrap_or("refused");
            // A credential error (the `Auth` kind, like any 403), worded for the fix.
            return Err(azure_core::Error::with_message(
                azure_core::error::ErrorKind::Credential,
                format!(
                    "HTTP 403 {code}: the SAS token expired at {se}; give the worker a new one"
                ),
            ));
        }
        Ok(rsp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Microsoft's documented example ("Authorize with Shared Key", Blob service, version
    /// 2009-09-19 and later): Get Container Metadata with `x-ms-date` and `x-ms-version`.
    #[test]
    fn matches_microsoft_documented_string_to_sign() {
        let url = Url::parse(
            "https://myaccount.blob.core.windows.net/mycontainer?restype=container&comp=metadata&timeout=20",
        )
        .unwrap();
        let ms = vec![
            ("x-ms-version".to_owned(), "2009-09-19".to_owned()),
            (
                "x-ms-date".to_owned(),
                "Sun, 11 Oct 2009 21:49:13 GMT".to_owned(),
            ),
        ];
        let sts = string_to_sign("GET", |_| None, "", &ms, "myaccount", &url);
        let expected = "GET\n\n\n\n\n\n\n\n\n\n\n\n\
x-ms-date:Sun, 11 Oct 2009 21:49:13 GMT\nx-ms-version:2009-09-19\n\
/myaccount/mycontainer\ncomp:metadata\nrestype:container\ntimeout:20";
        assert_eq!(sts, expected);
    }

    /// The documented canonicalized-resource example with a repeated query key.
    #[test]
    fn canonical_resource_groups_and_sorts_repeated_keys() {
        let url = Url::parse(
            "https://myaccount.blob.core.windows.net/mycontainer?restype=container&comp=list&include=snapshots&include=metadata&include=uncommittedblobs",
        )
        .unwrap();
        let sts = string_to_sign("GET", |_| None, "", &[], "myaccount", &url);
        assert!(
            sts.ends_with(
                "\n/myaccount/mycontainer\ncomp:list\ninclude:metadata,snapshots,uncommittedblobs\nrestype:container"
            ),
            "{sts}"
        );
    }

    #[test]
    fn standard_headers_in_order_and_decoded_query_values() {
        let url = Url::parse(
            "http://127.0.0.1:10000/devstoreaccount1/c/b%20x?comp=block&blockid=%2B%2F8%3D",
        )
        .unwrap();
        let headers = |name: &str| match name {
            "content-type" => Some("text/csv".to_owned()),
            "if-none-match" => Some("*".to_owned()),
            "range" => Some("bytes=0-9".to_owned()),
            _ => None,
        };
        let sts = string_to_sign("put", headers, "11", &[], "devstoreaccount1", &url);
        assert_eq!(
            sts,
            "PUT\n\n\n11\n\ntext/csv\n\n\n\n*\n\nbytes=0-9\n\
/devstoreaccount1/devstoreaccount1/c/b%20x\nblockid:+/8=\ncomp:block"
        );
    }

    #[test]
    fn sas_expiry_is_known_from_the_token() {
        let p = SasPolicy::new("?sv=2022-11-02&se=2026-12-01T13%3A00%3A00Z&sp=r&sig=abc");
        let at = |t: &str| azure_core::time::parse_rfc3339(t).unwrap();
        assert_eq!(p.expired(at("2026-12-01T12:59:59Z")), None);
        assert_eq!(
            p.expired(at("2026-12-01T13:00:00Z")),
            Some("2026-12-01T13:00:00Z")
        );
        // No `se`, or one in a form we do not parse: a 403 stays a plain 403.
        let none = SasPolicy::new("sv=2022-11-02&sig=abc");
        assert_eq!(none.expired(at("2100-01-01T00:00:00Z")), None);
        let date_only = SasPolicy::new("se=2026-12-01&sig=abc");
        assert_eq!(date_only.expired(at("2100-01-01T00:00:00Z")), None);
    }
}
