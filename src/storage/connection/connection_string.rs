//! The connection-string parser: Azure's `Key=Value;…` syntax becomes a [`Source`] (account,
//! endpoints, credential). `resolve` calls it for `--connection-string` and for the emulator
//! default; it also holds the emulator's well-known account and key.

use secrecy::SecretString;
use url::Url;

use super::credential::{Auth, CredentialKind};
use super::error::ConnectError;

/// The emulator's well-known account (public, documented by Microsoft; not a secret).
pub const DEV_ACCOUNT: &str = "devstoreaccount1";
/// The emulator's well-known key (public, documented by Microsoft; not a secret).
pub const DEV_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const DEV_BLOB: &str = "http://127.0.0.1:10000/devstoreaccount1";
const DEV_QUEUE: &str = "http://127.0.0.1:10001/devstoreaccount1";

/// What one source of settings says: a connection string here, or an account name with an
/// Entra ID identity in `resolve`. Endpoint flags override its endpoints afterwards.
#[derive(Clone, Debug)]
pub(crate) struct Source {
    pub account: String,
    pub blob_endpoint: Url,
    pub queue_endpoint: Url,
    pub credential: CredentialKind,
    pub auth: Auth,
}

/// The values read so far, one field per recognised key; a repeated key keeps its last value.
#[derive(Default)]
struct Fields {
    dev: bool,
    protocol: Option<String>,
    account: Option<String>,
    key: Option<String>,
    sas: Option<String>,
    suffix: Option<String>,
    blob: Option<Url>,
    queue: Option<Url>,
}

/// Checks one trimmed value and stores it in [`Fields`]. A refusal may name its key but
/// never echo the value: any value may be a secret.
type Store = fn(&mut Fields, &str) -> Result<(), String>;

/// Every key rollq recognises, spelt as Azure documents it; keys match case-insensitively.
static KEYS: [(&str, Store); 15] = [
    ("UseDevelopmentStorage", |f, v| {
        if !v.eq_ignore_ascii_case("true") {
            return Err("UseDevelopmentStorage must be true".to_owned());
        }
        f.dev = true;
        Ok(())
    }),
    ("DefaultEndpointsProtocol", |f, v| {
        let p = v.to_ascii_lowercase();
        if p != "https" && p != "http" {
            return Err("DefaultEndpointsProtocol must be https or http".to_owned());
        }
        f.protocol = Some(p);
        Ok(())
    }),
    ("AccountName", |f, v| {
        f.account = Some(v.to_owned());
        Ok(())
    }),
    ("AccountKey", |f, v| {
        f.key = Some(v.to_owned());
        Ok(())
    }),
    // Portal SAS strings may keep the URL's leading `?`; requests append the bare query.
    ("SharedAccessSignature", |f, v| {
        f.sas = Some(v.trim_start_matches('?').to_owned());
        Ok(())
    }),
    ("EndpointSuffix", |f, v| {
        f.suffix = Some(v.to_owned());
        Ok(())
    }),
    ("BlobEndpoint", |f, v| {
        f.blob = Some(Url::parse(v).map_err(|e| format!("BlobEndpoint is not a URL ({e})"))?);
        Ok(())
    }),
    ("QueueEndpoint", |f, v| {
        f.queue = Some(Url::parse(v).map_err(|e| format!("QueueEndpoint is not a URL: {e}"))?);
        Ok(())
    }),
    // Portal strings carry these; rollq does not use the table or file services.
    ("TableEndpoint", ignore),
    ("FileEndpoint", ignore),
    ("BlobSecondaryEndpoint", ignore),
    ("QueueSecondaryEndpoint", ignore),
    ("TableSecondaryEndpoint", ignore),
    ("FileSecondaryEndpoint", ignore),
    ("DevelopmentStorageProxyUri", ignore),
];

fn ignore(_: &mut Fields, _: &str) -> Result<(), String> {
    Ok(())
}

/// Parses Azure's connection-string syntax: `Key=Value` pairs separated by `;`, keys matched
/// case-insensitively, values kept verbatim (keys and SAS tokens contain `=`).
pub(crate) fn parse_connection_string(s: &str) -> Result<Source, ConnectError> {
    let bad = ConnectError::ConnectionString;
    let mut fields = Fields::default();
    // Only keys are ever echoed back in an error: any value may be a secret.
    for (index, part) in s
        .split(';')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .enumerate()
    {
        let Some((k, v)) = part.split_once('=') else {
            return Err(bad(format!(
                "segment {} is not Key=Value (segments are separated by ';')",
                index + 1
            )));
        };
        let k = k.trim();
        let Some((_, store)) = KEYS.iter().find(|(name, _)| name.eq_ignore_ascii_case(k)) else {
            return Err(bad(format!(
                "unknown key {:?} (expected DefaultEndpointsProtocol, AccountName, \
                 AccountKey, EndpointSuffix, BlobEndpoint, QueueEndpoint, \
                 SharedAccessSignature or UseDevelopmentStorage)",
                k.to_ascii_lowercase()
            )));
        };
        store(&mut fields, v.trim()).map_err(bad)?;
    }
    fields.finish()
}

impl Fields {
    /// Applies the defaults and the rules that span keys, once every key has been read.
    fn finish(self) -> Result<Source, ConnectError> {
        let bad = ConnectError::ConnectionString;
        if self.dev {
            return Ok(development_storage(self.blob, self.queue));
        }
        if self.key.is_some() && self.sas.is_some() {
            return Err(bad(
                "both AccountKey and SharedAccessSignature are set: keep one".to_owned(),
            ));
        }
        let protocol = self.protocol.as_deref().unwrap_or("https");
        let suffix = self.suffix.as_deref().unwrap_or("core.windows.net");
        let named = self.account.as_deref();
        // An explicit BlobEndpoint/QueueEndpoint wins; else the account name implies one.
        let service_endpoint = |explicit: Option<Url>, service: &str, key: &str| match explicit {
            Some(u) => Ok(u),
            None => match named {
                Some(a) => endpoint(protocol, a, service, suffix),
                None => Err(bad(format!("neither AccountName nor {key} is set"))),
            },
        };
        let blob = service_endpoint(self.blob, "blob", "BlobEndpoint")?;
        let queue = service_endpoint(self.queue, "queue", "QueueEndpoint")?;
        let account = match self.account {
            Some(a) => a,
            None => account_from_endpoint(&blob).ok_or_else(|| {
                bad("AccountName is missing and cannot be read from BlobEndpoint".to_owned())
            })?,
        };
        let (auth, credential) = credential(self.key, self.sas)?;
        Ok(Source {
            account,
            blob_endpoint: blob,
            queue_endpoint: queue,
            credential,
            auth,
        })
    }
}

/// `UseDevelopmentStorage=true`: the emulator's account and key, at its default ports unless
/// the string names other endpoints.
fn development_storage(blob: Option<Url>, queue: Option<Url>) -> Source {
    Source {
        account: DEV_ACCOUNT.to_owned(),
        blob_endpoint: blob.unwrap_or_else(|| Url::parse(DEV_BLOB).expect("constant URL")),
        queue_endpoint: queue.unwrap_or_else(|| Url::parse(DEV_QUEUE).expect("constant URL")),
        credential: CredentialKind::DevelopmentStorage,
        auth: Auth::SharedKey {
            key: SecretString::from(DEV_KEY),
        },
    }
}

/// The one credential a connection string may carry, checked for shape (never echoed).
fn credential(
    key: Option<String>,
    sas: Option<String>,
) -> Result<(Auth, CredentialKind), ConnectError> {
    let bad = ConnectError::ConnectionString;
    match (key, sas) {
        (Some(k), None) => {
            use base64::Engine as _;
            if base64::engine::general_purpose::STANDARD
                .decode(&k)
                .is_err()
            {
                return Err(bad("AccountKey is not valid base64".to_owned()));
            }
            Ok((
                Auth::SharedKey {
                    key: SecretString::from(k),
                },
                CredentialKind::AccountKey,
            ))
        }
        (None, Some(t)) => {
            if !t.contains("sig=") {
                return Err(bad("SharedAccessSignature has no sig= parameter".to_owned()));
            }
            Ok((
                Auth::Sas {
                    token: SecretString::from(t),
                },
                CredentialKind::SharedAccessSignature,
            ))
        }
        // Both set was refused before the endpoints were formed; this is neither.
        _ => Err(bad(
            "no credential: set AccountKey or SharedAccessSignature (or use \
             AZURE_STORAGE_ACCOUNT with an Entra ID identity instead)"
                .to_owned(),
        )),
    }
}

/// `{scheme}://{account}.{service}.{suffix}`, the public endpoint of one service.
pub(super) fn endpoint(
    scheme: &str,
    account: &str,
    service: &str,
    suffix: &str,
) -> Result<Url, ConnectError> {
    Url::parse(&format!("{scheme}://{account}.{service}.{suffix}")).map_err(|e| {
        ConnectError::Settings(format!(
            "cannot form the {service} endpoint for account {account} with suffix {suffix}: {e}"
        ))
    })
}

/// `https://acct.blob.core.windows.net` → `acct`; path-style `http://host:port/acct` → `acct`.
fn account_from_endpoint(u: &Url) -> Option<String> {
    let host = u.host_str()?;
    let is_ip = host.parse::<std::net::IpAddr>().is_ok() || host == "localhost";
    if is_ip {
        u.path_segments()?
            .find(|s| !s.is_empty())
            .map(str::to_owned)
    } else {
        host.split('.').next().map(str::to_owned)
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    const KEY: &str = "c2VjcmV0LWtleS1ieXRlcw==";

    #[test]
    fn full_azure_syntax() {
        let cs = format!(
            "DefaultEndpointsProtocol=https;AccountName=acme;AccountKey={KEY};EndpointSuffix=core.chinacloudapi.cn"
        );
        let p = parse_connection_string(&cs).unwrap();
        assert_eq!(p.account, "acme");
        assert_eq!(
            p.blob_endpoint.as_str(),
            "https://acme.blob.core.chinacloudapi.cn/"
        );
        assert_eq!(
            p.queue_endpoint.as_str(),
            "https://acme.queue.core.chinacloudapi.cn/"
        );
        assert_eq!(p.credential, CredentialKind::AccountKey);
    }

    #[test]
    fn explicit_endpoints_and_sas() {
        let cs = "BlobEndpoint=https://x.example/b;QueueEndpoint=https://q.example/;SharedAccessSignature=?sv=2022-11-02&ss=bq&sig=abc%2B%3D;TableEndpoint=https://t/";
        let p = parse_connection_string(cs).unwrap();
        assert_eq!(p.blob_endpoint.as_str(), "https://x.example/b");
        assert_eq!(p.account, "x");
        assert_eq!(p.credential, CredentialKind::SharedAccessSignature);
        match p.auth {
            Auth::Sas { token } => {
                assert_eq!(token.expose_secret(), "sv=2022-11-02&ss=bq&sig=abc%2B%3D")
            }
            other => panic!("expected SAS, got {other:?}"),
        }
    }

    #[test]
    fn development_storage() {
        let p = parse_connection_string("UseDevelopmentStorage=true").unwrap();
        assert_eq!(p.account, DEV_ACCOUNT);
        assert_eq!(p.blob_endpoint.as_str(), DEV_BLOB);
        assert_eq!(p.queue_endpoint.as_str(), DEV_QUEUE);
        assert_eq!(p.credential, CredentialKind::DevelopmentStorage);
    }

    #[test]
    fn emulator_style_path_account() {
        let cs = format!(
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={KEY};BlobEndpoint=http://127.0.0.1:4000/devstoreaccount1;QueueEndpoint=http://127.0.0.1:4001/devstoreaccount1;"
        );
        let p = parse_connection_string(&cs).unwrap();
        assert_eq!(p.queue_endpoint.port(), Some(4001));
        assert_eq!(
            account_from_endpoint(&p.blob_endpoint).as_deref(),
            Some("devstoreaccount1")
        );
    }

    #[test]
    fn errors_are_clear_and_secret_free() {
        let secret = "c3VwZXJzZWNyZXRrZXk=";
        let cases = [
            format!("AccountName=a1b;AccountKey={secret};Bogus=1"),
            format!("AccountName=a1b;{secret}"),
            format!("AccountName=a1b;AccountKey={secret};SharedAccessSignature=sig={secret}"),
            "AccountName=a1b".to_owned(),
            format!("AccountKey={secret}"),
            "AccountName=a1b;AccountKey=not base64!".to_owned(),
            format!("UseDevelopmentStorage={secret}x"),
        ];
        for cs in cases {
            let err = parse_connection_string(&cs).unwrap_err().to_string();
            assert!(!err.contains(secret), "secret leaked in {err:?}");
            assert!(
                err.starts_with("invalid storage connection string: "),
                "{err}"
            );
        }
        let err = parse_connection_string("AccountName=a1b")
            .unwrap_err()
            .to_string();
        assert!(err.contains("no credential"), "{err}");
    }
}
