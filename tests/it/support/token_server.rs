//! Local HTTPS identity endpoints for the Entra ID tests: the OAuth 2.0 token endpoint that
//! workload identity exchanges its federated token at (`{AZURE_AUTHORITY_HOST}/{tenant}/
//! oauth2/v2.0/token`) and the App Service managed-identity endpoint (`IDENTITY_ENDPOINT`,
//! 2019-08-01 protocol with the `X-IDENTITY-HEADER` secret).
//!
//! Both hand out JWTs that Azurite's `--oauth basic` accepts: an issuer under
//! `https://sts.windows.net/`, an audience, `nbf`/`exp`; the signature is a placeholder
//! because Azurite does not check it. A test chooses the audience and two lifetimes: the
//! JWT's own `exp` (what Azurite enforces) and the one the SDK is told (`expires_in` /
//! `expires_on`, which drives its refresh), and sees every request made.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::tls::TestCa;

/// What the endpoints hand out; a test may change it while the server runs.
#[derive(Clone, Debug)]
pub struct TokenPolicy {
    /// The JWT's `aud`; `None` means the resource asked for (the scope without `/.default`),
    /// which is what Entra ID does.
    pub audience: Option<String>,
    /// From issue to the JWT's `exp`: after this Azurite answers "The token is expired".
    pub jwt_lifetime: Duration,
    /// The lifetime the SDK is told; the SDK refreshes 5 minutes before it ends.
    pub reported_lifetime: Duration,
}

impl Default for TokenPolicy {
    /// An hour, told truthfully, for the resource asked for.
    fn default() -> Self {
        TokenPolicy {
            audience: None,
            jwt_lifetime: Duration::from_secs(3600),
            reported_lifetime: Duration::from_secs(3600),
        }
    }
}

/// One request an endpoint answered.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    pub method: String,
    /// The path without the query.
    pub path: String,
    /// The form fields (token endpoint) or query parameters (managed identity).
    pub params: HashMap<String, String>,
    /// Header names lowercased.
    pub headers: HashMap<String, String>,
    /// When the token was issued (unix seconds) and its JWT `exp`, if one was issued.
    pub issued: Option<(u64, u64)>,
}

struct State {
    policy: Mutex<TokenPolicy>,
    requests: Mutex<Vec<TokenRequest>>,
    /// The `X-IDENTITY-HEADER` value the managed-identity endpoint requires.
    identity_header: String,
}

/// A running HTTPS server on a loopback port; stopped and joined on drop.
pub struct TokenServer {
    addr: SocketAddr,
    state: Arc<State>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// The tenant a managed-identity token names (the endpoint is not asked for one).
pub const MSI_TENANT: &str = "72f988bf-0000-4000-8000-00000000a11e";

impl TokenServer {
    /// Serves with `ca`'s server certificate; the managed-identity endpoint requires
    /// `identity_header`.
    pub fn start(ca: &TestCa, policy: TokenPolicy, identity_header: &str) -> TokenServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind token server");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            policy: Mutex::new(policy),
            requests: Mutex::new(Vec::new()),
            identity_header: identity_header.to_owned(),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let config = ca.server_config();
        let (st, stop2) = (state.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (st, config) = (st.clone(), config.clone());
                // One thread per connection: a TLS handshake must not hold up the next client.
                std::thread::spawn(move || {
                    let _ = serve(conn, config, &st);
                });
            }
        });
        TokenServer {
            addr,
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// `https://127.0.0.1:PORT`: the `AZURE_AUTHORITY_HOST` for workload identity.
    pub fn authority_host(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// `https://127.0.0.1:PORT/msi/token`: the `IDENTITY_ENDPOINT` for managed identity.
    pub fn identity_endpoint(&self) -> String {
        format!("https://{}/msi/token", self.addr)
    }

    /// Replaces what the endpoints hand out from the next request on.
    pub fn set_policy(&self, policy: TokenPolicy) {
        *self.state.policy.lock().unwrap() = policy;
    }

    /// Every request answered so far, oldest first.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.state.requests.lock().unwrap().clone()
    }

    /// How many tokens were issued so far.
    pub fn tokens_issued(&self) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.issued.is_some())
            .count()
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(conn: TcpStream, config: Arc<rustls::ServerConfig>, state: &State) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let tls = rustls::ServerConnection::new(config).map_err(std::io::Error::other)?;
    let mut stream = rustls::StreamOwned::new(tls, conn);
    let (method, target, headers, body) = read_request(&mut stream)?;
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let mut req = TokenRequest {
        method: method.clone(),
        path: path.to_owned(),
        params: HashMap::new(),
        headers,
        issued: None,
    };
    let policy = state.policy.lock().unwrap().clone();
    let (status, json) = if method == "POST" && path.ends_with("/oauth2/v2.0/token") {
        req.params = form(&body);
        token_exchange(&mut req, &policy)
    } else if method == "GET" && path == "/msi/token" {
        req.params = form(query.as_bytes());
        managed_identity(&mut req, &policy, &state.identity_header)
    } else {
        (404, r#"{"error":"not_found"}"#.to_owned())
    };
    state.requests.lock().unwrap().push(req);
    let reason = if status == 200 { "OK" } else { "Error" };
    write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{json}",
        json.len()
    )?;
    stream.flush()?;
    stream.conn.send_close_notify();
    let _ = stream.flush();
    Ok(())
}

type Request = (String, String, HashMap<String, String>, Vec<u8>);

fn read_request(stream: &mut impl Read) -> std::io::Result<Request> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let target = parts.next().unwrap_or_default().to_owned();
    let mut headers = HashMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let len = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0usize);
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    Ok((method, target, headers, body))
}

fn form(bytes: &[u8]) -> HashMap<String, String> {
    url::form_urlencoded::parse(bytes).into_owned().collect()
}

/// The client-credentials grant with a client assertion (what `ClientAssertionCredential`,
/// and so `WorkloadIdentityCredential`, sends): Entra ID's v2 response shape.
fn token_exchange(req: &mut TokenRequest, policy: &TokenPolicy) -> (u16, String) {
    let p = &req.params;
    let complete = p.get("grant_type").map(String::as_str) == Some("client_credentials")
        && p.get("client_assertion_type").map(String::as_str)
            == Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        && p.get("client_assertion").is_some_and(|a| !a.is_empty())
        && p.get("client_id").is_some_and(|c| !c.is_empty());
    let Some(scope) = p.get("scope").filter(|_| complete) else {
        return (
            400,
            r#"{"error":"invalid_request","error_description":"AADSTS900144: incomplete client assertion request"}"#
                .to_owned(),
        );
    };
    let resource = scope.strip_suffix("/.default").unwrap_or(scope).to_owned();
    let tenant = req.path.split('/').nth(1).unwrap_or_default().to_owned();
    let (jwt, iat, exp) = jwt(policy, &resource, &tenant);
    req.issued = Some((iat, exp));
    let lifetime = policy.reported_lifetime.as_secs();
    (
        200,
        serde_json::json!({
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": jwt,
        })
        .to_string(),
    )
}

/// The App Service managed-identity protocol (api-version 2019-08-01): a GET with the
/// resource in the query and the secret in `X-IDENTITY-HEADER`; `expires_on` is a string.
fn managed_identity(
    req: &mut TokenRequest,
    policy: &TokenPolicy,
    identity_header: &str,
) -> (u16, String) {
    if req.headers.get("x-identity-header").map(String::as_str) != Some(identity_header) {
        return (
            401,
            r#"{"error":"unauthorized","error_description":"X-IDENTITY-HEADER missing or wrong"}"#
                .to_owned(),
        );
    }
    let (Some(resource), Some("2019-08-01")) = (
        req.params.get("resource").cloned(),
        req.params.get("api-version").map(String::as_str),
    ) else {
        return (400, r#"{"error":"invalid_request"}"#.to_owned());
    };
    let (jwt, iat, exp) = jwt(policy, &resource, MSI_TENANT);
    req.issued = Some((iat, exp));
    let expires_on = iat + policy.reported_lifetime.as_secs();
    (
        200,
        serde_json::json!({
            "access_token": jwt,
            "expires_on": expires_on.to_string(),
            "resource": resource,
            "token_type": "Bearer",
        })
        .to_string(),
    )
}

/// An unsigned-in-effect JWT (HS256 header, placeholder signature): (token, iat, exp).
fn jwt(policy: &TokenPolicy, resource: &str, tenant: &str) -> (String, u64, u64) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let exp = now + policy.jwt_lifetime.as_secs();
    let aud = policy
        .audience
        .clone()
        .unwrap_or_else(|| resource.to_owned());
    let header = serde_json::json!({"alg": "HS256", "typ": "JWT"});
    let claims = serde_json::json!({
        "aud": aud,
        "iss": format!("https://sts.windows.net/{tenant}/"),
        "tid": tenant,
        // A little slack before now: Azurite rejects a token whose nbf is in its future.
        "iat": now - 5,
        "nbf": now - 5,
        "exp": exp,
        "sub": "rollq-test",
    });
    let enc = |v: &serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let token = format!(
        "{}.{}.{}",
        enc(&header),
        enc(&claims),
        URL_SAFE_NO_PAD.encode("not-a-signature")
    );
    (token, now, exp)
}
