//! An HTTP-aware fault-injecting proxy in front of Azurite: it reads each request, tells its
//! kind (receive, update, delete, blob GET, Put Block, Put Block List, HEAD, …) and, on the
//! Nth request of a kind or at a seeded rate, forwards it and drops the response, holds it,
//! resets the connection, answers 5xx itself with or without `Retry-After`, or passes on a
//! well-framed response whose body was cut short (the framing rewritten to match); or, as a
//! fault injector for the soak, cuts the connection in the middle of the response head,
//! delays the response, or sends fewer body bytes than its untouched `Content-Length` says.
//! It counts the faults it injected and the errors Azurite itself answered, per kind.
//!
//! Plain threads and HTTP/1.1 only (what the SDK speaks to Azurite): one upstream connection
//! per client connection, bodies framed by `content-length` or chunked. A rate rule decides
//! the Nth request of a kind from the seed, the kind, N and the rule alone (not from a shared
//! stream), so which requests are faulted does not depend on how concurrent requests of
//! different kinds interleave: a run is repeatable from its seed.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// What a request is, from its method, path and query.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Get Messages.
    Receive,
    /// Peek Messages.
    Peek,
    /// Put Message.
    Send,
    /// Update Message (a renewal, retry or release).
    Update,
    /// Delete Message.
    Delete,
    /// Get Blob.
    BlobGet,
    /// Put Block.
    PutBlock,
    /// Put Block List.
    PutBlockList,
    /// Any HEAD (blob, container or queue properties).
    Head,
    /// Anything else.
    Other,
}

impl Kind {
    /// Classifies a request line's method and target (`/account/...?query`).
    pub fn of(method: &str, target: &str) -> Kind {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let has = |k: &str| {
            query
                .split('&')
                .any(|p| p == k || p.starts_with(&format!("{k}=")))
        };
        let comp = |v: &str| query.split('&').any(|p| p == format!("comp={v}"));
        let messages = path.split('/').any(|s| s == "messages");
        match method {
            "HEAD" => Kind::Head,
            "GET" if messages && query.contains("peekonly=true") => Kind::Peek,
            "GET" if messages => Kind::Receive,
            "POST" if messages => Kind::Send,
            "PUT" if messages && has("popreceipt") => Kind::Update,
            "DELETE" if messages && has("popreceipt") => Kind::Delete,
            "PUT" if comp("block") => Kind::PutBlock,
            "PUT" if comp("blocklist") => Kind::PutBlockList,
            "GET" if !has("comp") && !has("restype") => Kind::BlobGet,
            _ => Kind::Other,
        }
    }
}

/// What the proxy does to a matching request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Forward it, then close the client's connection without its response: the request
    /// may have been applied, the client cannot know.
    DropResponse,
    /// Wait this long, then forward it.
    Hold(Duration),
    /// Close the client's connection without forwarding.
    Reset,
    /// Answer it without forwarding: this status, and `Retry-After: secs` if given.
    Answer {
        status: u16,
        retry_after: Option<u32>,
    },
    /// Forward it and pass on a 2xx response with the first half of its body only, framed as
    /// a valid response: `Content-Length` rewritten (a chunked body is sent de-chunked with
    /// one), `Content-Range` rewritten as `Cut` says, `Content-MD5` dropped (a cut body cannot
    /// match it). Other statuses and bodies under 2 bytes pass untouched.
    ShortBody(Cut),
    /// Forward it and pass on a 2xx response with the ASCII digit nearest the middle of its
    /// body changed (`d` → `d + 1 mod 10`), framing untouched: the right number of bytes, not
    /// the blob's (CSV stays valid, one value differs). Chunked bodies pass untouched.
    CorruptBody,
    /// Forward it, then send the response's status line and the first half of its header
    /// lines and close: the connection breaks while the response is arriving (the request was
    /// applied), unlike [`Action::DropResponse`], where nothing comes back.
    ResetMidResponse,
    /// Forward it, then wait this long before passing the response on (latency on the way
    /// back: the request was applied before the client sees anything, unlike
    /// [`Action::Hold`]).
    Delay(Duration),
    /// Forward it and pass on the head untouched (its `Content-Length` still promising the
    /// whole body) with only the first half of the body, then close: a body truncated in
    /// transit, unlike [`Action::ShortBody`], which rewrites the framing to match. Responses
    /// with a body under 2 bytes or without a `Content-Length` pass untouched.
    TruncateBody,
}

impl Action {
    /// A short name for this kind of fault, for counters and messages.
    pub fn name(self) -> &'static str {
        match self {
            Action::DropResponse => "drop response",
            Action::Hold(_) => "hold",
            Action::Reset => "reset",
            Action::Answer { .. } => "answer",
            Action::ShortBody(_) => "short body",
            Action::CorruptBody => "corrupt body",
            Action::ResetMidResponse => "reset mid-response",
            Action::Delay(_) => "delay",
            Action::TruncateBody => "truncate body",
        }
    }
}

/// How a [`Action::ShortBody`] response describes the bytes it kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// As the whole of a shorter blob: `Content-Range: bytes a-(a+kept-1)/(a+kept)`, so a
    /// client sees nothing more to fetch. The client gets fewer bytes than the blob holds.
    Blob,
    /// As a shorter range of the same blob: the total in `Content-Range` is kept, so a client
    /// that plans its ranges from the first response fetches the rest itself.
    Range,
}

/// When a rule applies to a request of its kind.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum When {
    /// The Nth request of the kind (1-based) and no other.
    Nth(usize),
    /// The first N requests of the kind.
    FirstN(usize),
    /// Each request with this probability, decided from the seed, the kind, the request's
    /// number within its kind and the rule's position.
    Rate(f64),
}

/// One fault: requests of `kind`, `when`, get `action`.
#[derive(Clone, Copy, Debug)]
pub struct Rule {
    pub kind: Kind,
    pub when: When,
    pub action: Action,
}

/// A request the proxy saw, and what it did (`None`: forwarded untouched).
#[derive(Clone, Debug)]
pub struct Seen {
    pub kind: Kind,
    pub target: String,
    pub action: Option<Action>,
    /// When it arrived, so the lists of two proxies can be put in one order.
    pub at: std::time::Instant,
}

/// What the proxy counted: faults actually injected, and Azurite's own error answers.
#[derive(Default)]
struct Counters {
    /// (kind, [`Action::name`]) → faults injected. A rule that matched but left the response
    /// untouched (a short-body rule on an error answer, say) is not counted here.
    injected: HashMap<(Kind, &'static str), usize>,
    /// (kind, status) → responses from Azurite with a status of 300 or more, whatever the
    /// proxy then did with them.
    upstream_errors: HashMap<(Kind, u16), usize>,
    /// Messages in Get Messages responses passed on to the client whole (a 2xx answer
    /// forwarded, or delayed, with its body intact): what the workers were handed.
    delivered_messages: usize,
    /// kind → requests whose client had closed its connection before the answer could be
    /// passed on (the client's own timeout, e.g. under injected latency): a failure the
    /// client saw that neither the proxy's faults nor Azurite caused.
    abandoned: HashMap<Kind, usize>,
}

struct State {
    target: SocketAddr,
    seed: u64,
    rules: Vec<Rule>,
    seen: Mutex<Vec<Seen>>,
    counters: Mutex<Counters>,
    stop: AtomicBool,
}

impl State {
    /// Records the request and decides what to do with it.
    fn decide(&self, kind: Kind, target: &str) -> Option<Action> {
        let mut seen = self.seen.lock().unwrap();
        let nth = seen.iter().filter(|s| s.kind == kind).count() + 1;
        let action = self
            .rules
            .iter()
            .enumerate()
            .filter(|(_, r)| r.kind == kind)
            .find(|(i, r)| match r.when {
                When::Nth(n) => nth == n,
                When::FirstN(n) => nth <= n,
                When::Rate(p) => self.draw(kind, nth, *i).random_bool(p),
            })
            .map(|(_, r)| r.action);
        seen.push(Seen {
            kind,
            target: target.to_owned(),
            action,
            at: std::time::Instant::now(),
        });
        action
    }

    /// The generator for rule `rule` on the `nth` request of `kind`: a pure function of the
    /// seed and those three, so concurrent clients cannot shift one another's draws.
    fn draw(&self, kind: Kind, nth: usize, rule: usize) -> StdRng {
        let mut h = DefaultHasher::new();
        (self.seed, kind, nth, rule).hash(&mut h);
        StdRng::seed_from_u64(h.finish())
    }

    fn injected(&self, kind: Kind, action: Action) {
        *self
            .counters
            .lock()
            .unwrap()
            .injected
            .entry((kind, action.name()))
            .or_default() += 1;
    }
}

/// A running proxy; stopped on drop.
pub struct HttpProxy {
    addr: SocketAddr,
    state: Arc<State>,
    accept: Option<JoinHandle<()>>,
}

impl HttpProxy {
    /// Listens on 127.0.0.1:0 and forwards to `target`, applying `rules` (the first matching
    /// rule wins) with rates drawn from `seed`.
    pub fn start(target: SocketAddr, seed: u64, rules: Vec<Rule>) -> HttpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            target,
            seed,
            rules,
            seen: Mutex::default(),
            counters: Mutex::default(),
            stop: AtomicBool::new(false),
        });
        let st = state.clone();
        let accept = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                std::thread::spawn(move || {
                    let _ = serve(&st, conn);
                });
            }
        });
        HttpProxy {
            addr,
            state,
            accept: Some(accept),
        }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request seen so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// How many requests of `kind` were seen, and how many of those a rule acted on.
    pub fn count(&self, kind: Kind) -> (usize, usize) {
        let seen = self.seen();
        let of_kind = seen.iter().filter(|s| s.kind == kind);
        (
            of_kind.clone().count(),
            of_kind.filter(|s| s.action.is_some()).count(),
        )
    }

    /// Faults of this action's kind (its [`Action::name`]; durations and statuses are not told
    /// apart) actually injected into requests of `kind`.
    pub fn injected(&self, kind: Kind, action: Action) -> usize {
        let c = self.state.counters.lock().unwrap();
        c.injected.get(&(kind, action.name())).copied().unwrap_or(0)
    }

    /// Faults of any action injected into requests of `kind`.
    pub fn injected_into(&self, kind: Kind) -> usize {
        let c = self.state.counters.lock().unwrap();
        c.injected
            .iter()
            .filter(|((k, _), _)| *k == kind)
            .map(|(_, n)| n)
            .sum()
    }

    /// Every (kind, action name) → faults injected, for reports.
    pub fn injected_all(&self) -> HashMap<(Kind, &'static str), usize> {
        self.state.counters.lock().unwrap().injected.clone()
    }

    /// Answers from Azurite itself with a status of 300 or more to requests of `kind`, by
    /// status.
    pub fn upstream_errors(&self, kind: Kind) -> HashMap<u16, usize> {
        let c = self.state.counters.lock().unwrap();
        c.upstream_errors
            .iter()
            .filter(|((k, _), _)| *k == kind)
            .map(|((_, status), n)| (*status, *n))
            .collect()
    }

    /// Requests of `kind` whose client hung up before its answer was passed on.
    pub fn abandoned(&self, kind: Kind) -> usize {
        let c = self.state.counters.lock().unwrap();
        c.abandoned.get(&kind).copied().unwrap_or(0)
    }

    /// Messages handed to clients in whole Get Messages responses.
    pub fn delivered_messages(&self) -> usize {
        self.state.counters.lock().unwrap().delivered_messages
    }
}

impl Drop for HttpProxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// One HTTP message head and body as raw bytes.
struct Message {
    head: Vec<u8>,
    body: Vec<u8>,
    /// The first line, e.g. `GET /acct/q/messages?numofmessages=1 HTTP/1.1`.
    first_line: String,
}

/// Reads one HTTP/1.1 message (`None` at a clean end of stream). `no_body` for responses to
/// HEAD, which carry a content-length but no body.
fn read_message(r: &mut impl BufRead, no_body: bool) -> io::Result<Option<Message>> {
    let mut head = Vec::new();
    let mut first_line = String::new();
    let (mut length, mut chunked) = (None::<usize>, false);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            if head.is_empty() {
                return Ok(None);
            }
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(line.as_bytes());
        if first_line.is_empty() {
            first_line = line.trim_end().to_owned();
            continue;
        }
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        if let Some((k, v)) = trimmed.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            if k == "content-length" {
                length = v.parse().ok();
            } else if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
                chunked = true;
            }
        }
    }
    let mut body = Vec::new();
    if no_body {
    } else if chunked {
        // Copy the chunks as they are, framing included.
        loop {
            let mut size_line = String::new();
            r.read_line(&mut size_line)?;
            body.extend_from_slice(size_line.as_bytes());
            let size = usize::from_str_radix(size_line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
            let mut chunk = vec![0; size + 2];
            r.read_exact(&mut chunk)?;
            body.extend_from_slice(&chunk);
            if size == 0 {
                break;
            }
        }
    } else if let Some(n) = length {
        body.resize(n, 0);
        r.read_exact(&mut body)?;
    }
    Ok(Some(Message {
        head,
        body,
        first_line,
    }))
}

/// Serves one client connection: request by request, forwarded over one upstream connection.
fn serve(st: &State, client: TcpStream) -> io::Result<()> {
    let mut from_client = BufReader::new(client.try_clone()?);
    let mut to_client = client;
    let mut upstream: Option<(BufReader<TcpStream>, TcpStream)> = None;
    while let Some(req) = read_message(&mut from_client, false)? {
        let mut words = req.first_line.split(' ');
        let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        let kind = Kind::of(method, target);
        let action = st.decide(kind, target);
        // Faults that act before or instead of forwarding are injected for sure; the others
        // are counted once they changed a response.
        if let Some(a @ (Action::Reset | Action::Answer { .. } | Action::Hold(_))) = action {
            st.injected(kind, a);
        }
        match action {
            Some(Action::Reset) => {
                let _ = to_client.shutdown(Shutdown::Both);
                return Ok(());
            }
            Some(Action::Answer {
                status,
                retry_after,
            }) => {
                let mut head = format!("HTTP/1.1 {status} Injected\r\ncontent-length: 0\r\n");
                if let Some(s) = retry_after {
                    head.push_str(&format!("retry-after: {s}\r\n"));
                }
                head.push_str("\r\n");
                to_client.write_all(head.as_bytes())?;
                continue;
            }
            Some(Action::Hold(d)) => std::thread::sleep(d),
            Some(
                Action::DropResponse
                | Action::ShortBody(_)
                | Action::CorruptBody
                | Action::ResetMidResponse
                | Action::Delay(_)
                | Action::TruncateBody,
            )
            | None => {}
        }
        // Azurite closes a connection idle for 5 s; a client connection the SDK pooled for
        // longer must not inherit that as a fault nobody injected: a closed upstream
        // connection is replaced before the request goes out, and a reused one that ends
        // before any answer (closed just as the request left; Azurite had not read it) is
        // replaced and the request sent once more.
        if upstream.as_ref().is_some_and(|(_, s)| closed(s)) {
            upstream = None;
        }
        let mut resp = None;
        for _ in 0..2 {
            let fresh = upstream.is_none();
            if fresh {
                let s = TcpStream::connect(st.target)?;
                upstream = Some((BufReader::new(s.try_clone()?), s));
            }
            let (up_reader, up_writer) = upstream.as_mut().expect("connected above");
            up_writer.write_all(&req.head)?;
            up_writer.write_all(&req.body)?;
            match read_message(up_reader, method == "HEAD") {
                Ok(Some(r)) => {
                    resp = Some(r);
                    break;
                }
                Ok(None) | Err(_) if !fresh => upstream = None,
                Ok(None) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        let Some(resp) = resp else {
            return Ok(());
        };
        if closed(&to_client) {
            *st.counters
                .lock()
                .unwrap()
                .abandoned
                .entry(kind)
                .or_default() += 1;
            return Ok(());
        }
        let status = status_of(&resp);
        if status >= 300 {
            *st.counters
                .lock()
                .unwrap()
                .upstream_errors
                .entry((kind, status))
                .or_default() += 1;
        }
        match action {
            Some(a @ Action::DropResponse) => {
                // The server applied the request; the client sees its connection close.
                st.injected(kind, a);
                let _ = to_client.shutdown(Shutdown::Both);
                return Ok(());
            }
            Some(a @ Action::ResetMidResponse) => {
                // The status line and half the header lines, no blank line: the client is
                // reading the head when the connection goes.
                st.injected(kind, a);
                let lines: Vec<&[u8]> = resp.head.split_inclusive(|&b| b == b'\n').collect();
                let headers = lines.len().saturating_sub(2); // minus status line and blank
                for line in &lines[..1 + headers / 2] {
                    to_client.write_all(line)?;
                }
                let _ = to_client.flush();
                let _ = to_client.shutdown(Shutdown::Both);
                return Ok(());
            }
            Some(a @ Action::TruncateBody) if truncatable(&resp) => {
                st.injected(kind, a);
                to_client.write_all(&resp.head)?;
                to_client.write_all(&resp.body[..resp.body.len() / 2])?;
                let _ = to_client.flush();
                let _ = to_client.shutdown(Shutdown::Both);
                return Ok(());
            }
            Some(a @ Action::Delay(d)) => {
                st.injected(kind, a);
                std::thread::sleep(d);
                if closed(&to_client) {
                    *st.counters
                        .lock()
                        .unwrap()
                        .abandoned
                        .entry(kind)
                        .or_default() += 1;
                    return Ok(());
                }
            }
            _ => {}
        }
        let resp = match action {
            Some(a @ Action::ShortBody(cut)) => {
                let before = resp.body.len();
                let cut = cut_short(resp, cut)?;
                if cut.body.len() != before {
                    st.injected(kind, a);
                }
                cut
            }
            Some(a @ Action::CorruptBody) => {
                let before = resp.body.clone();
                let changed = corrupt(resp);
                if changed.body != before {
                    st.injected(kind, a);
                }
                changed
            }
            _ => resp,
        };
        to_client.write_all(&resp.head)?;
        to_client.write_all(&resp.body)?;
        if kind == Kind::Receive && (200..300).contains(&status) {
            // Counted once the whole response is written: the client was handed these.
            let body = String::from_utf8_lossy(&resp.body);
            st.counters.lock().unwrap().delivered_messages +=
                body.matches("<QueueMessage>").count();
        }
    }
    Ok(())
}

/// Whether the peer has closed `s` (an orderly end of stream is waiting to be read); data
/// waiting or nothing yet means open.
fn closed(s: &TcpStream) -> bool {
    if s.set_nonblocking(true).is_err() {
        return true;
    }
    let mut b = [0u8; 1];
    let r = s.peek(&mut b);
    let _ = s.set_nonblocking(false);
    match r {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != io::ErrorKind::WouldBlock,
    }
}

/// A response's status code (0 when the status line is malformed).
fn status_of(resp: &Message) -> u16 {
    resp.first_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Whether [`Action::TruncateBody`] can cut this response: a body of at least 2 bytes framed
/// by `Content-Length` (a chunked body is left alone).
fn truncatable(resp: &Message) -> bool {
    let head = String::from_utf8_lossy(&resp.head).to_ascii_lowercase();
    resp.body.len() >= 2 && head.contains("content-length:") && !head.contains("chunked")
}

/// The body of a chunked message without its framing (trailers are dropped).
fn dechunk(raw: &[u8]) -> io::Result<Vec<u8>> {
    let bad = || io::Error::from(io::ErrorKind::InvalidData);
    let mut r = raw;
    let mut body = Vec::new();
    loop {
        let line_end = r.windows(2).position(|w| w == b"\r\n").ok_or_else(bad)?;
        let size_text = std::str::from_utf8(&r[..line_end]).map_err(|_| bad())?;
        let size = usize::from_str_radix(size_text.trim().split(';').next().unwrap_or(""), 16)
            .map_err(|_| bad())?;
        r = &r[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        body.extend_from_slice(r.get(..size).ok_or_else(bad)?);
        r = r.get(size + 2..).ok_or_else(bad)?;
    }
}

/// A 2xx response of known length with its middle digit changed (see [`Action::CorruptBody`]).
fn corrupt(mut resp: Message) -> Message {
    let ok = resp
        .first_line
        .split(' ')
        .nth(1)
        .is_some_and(|s| s.starts_with('2'));
    let chunked = String::from_utf8_lossy(&resp.head)
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    if ok && !chunked {
        let mid = resp.body.len() / 2;
        let nearest = (0..resp.body.len())
            .filter(|&i| resp.body[i].is_ascii_digit())
            .min_by_key(|&i| i.abs_diff(mid));
        if let Some(i) = nearest {
            resp.body[i] = b'0' + (resp.body[i] - b'0' + 1) % 10;
        }
    }
    resp
}

/// A 2xx response with the first half of its body, its framing rewritten to match.
fn cut_short(resp: Message, cut: Cut) -> io::Result<Message> {
    let status: u16 = resp
        .first_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let text = String::from_utf8_lossy(&resp.head).into_owned();
    let chunked = text.lines().any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding")
                && v.trim().eq_ignore_ascii_case("chunked")
        })
    });
    let body = if chunked {
        dechunk(&resp.body)?
    } else {
        resp.body.clone()
    };
    if !(200..300).contains(&status) || body.len() < 2 {
        return Ok(resp);
    }
    let kept = body.len() / 2;
    let mut head = format!("{}\r\n", resp.first_line);
    for line in text.lines().skip(1) {
        let Some((k, v)) = line.split_once(':') else {
            continue; // the blank line that ends the head
        };
        match k.trim().to_ascii_lowercase().as_str() {
            "content-length" | "transfer-encoding" | "content-md5" => {}
            "content-range" => {
                // `bytes a-b/total`
                let start: u64 = v
                    .trim()
                    .trim_start_matches("bytes ")
                    .split('-')
                    .next()
                    .and_then(|a| a.parse().ok())
                    .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidData))?;
                let total = match cut {
                    Cut::Blob => (start + kept as u64).to_string(),
                    Cut::Range => v.rsplit('/').next().unwrap_or("*").trim().to_owned(),
                };
                let end = start + kept as u64 - 1;
                head.push_str(&format!("{}: bytes {start}-{end}/{total}\r\n", k.trim()));
            }
            _ => head.push_str(&format!("{line}\r\n")),
        }
    }
    head.push_str(&format!("content-length: {kept}\r\n\r\n"));
    Ok(Message {
        head: head.into_bytes(),
        body: body[..kept].to_vec(),
        first_line: resp.first_line,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::support::Azurite;
    use crate::support::azurite::unique_name;
    use rollq::storage::StorageArgs;
    use secrecy::SecretString;

    /// The three faults that forward or cut, against Azurite through the SDK, which retries
    /// what failed: a dropped Put Message response was applied (the retry sends a duplicate),
    /// a reset peek is simply retried, a held receive arrives late.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn drop_reset_and_hold_against_azurite() {
        let az = Azurite::start();
        let hold = Duration::from_millis(300);
        let proxy = HttpProxy::start(
            az.queue_addr(),
            1,
            vec![
                Rule {
                    kind: Kind::Send,
                    when: When::Nth(1),
                    action: Action::DropResponse,
                },
                Rule {
                    kind: Kind::Peek,
                    when: When::Nth(1),
                    action: Action::Reset,
                },
                Rule {
                    kind: Kind::Receive,
                    when: When::Nth(1),
                    action: Action::Hold(hold),
                },
            ],
        );
        let args = StorageArgs {
            connection_string: Some(SecretString::from(
                az.connection_string_via(az.blob_addr(), proxy.addr()),
            )),
            storage_timeout: Duration::from_secs(10),
            ..Default::default()
        };
        let conn = rollq::storage::connect(&args).await.unwrap();
        let q = conn.queues.queue(&unique_name("proxy"));
        q.create_if_missing().await.unwrap();
        q.send("once").await.unwrap();
        assert_eq!(proxy.count(Kind::Send), (2, 1), "dropped, then retried");
        let peeked = q.peek(32).await.unwrap();
        assert_eq!(peeked.len(), 2, "the dropped send was applied: a duplicate");
        assert_eq!(proxy.count(Kind::Peek), (2, 1), "reset, then retried");
        let started = std::time::Instant::now();
        let got = q.receive(1, Duration::from_secs(30)).await.unwrap();
        assert_eq!(got.len(), 1);
        assert!(started.elapsed() >= hold, "{:?}", started.elapsed());
        assert_eq!(proxy.count(Kind::Receive), (1, 1));
    }

    #[test]
    fn short_body_rewrites_the_framing_it_cuts() {
        let msg = |head: &str, body: &[u8]| Message {
            head: head.as_bytes().to_vec(),
            body: body.to_vec(),
            first_line: head.lines().next().unwrap().to_owned(),
        };
        let ranged = "HTTP/1.1 206 Partial Content\r\nContent-Length: 10\r\n\
            Content-Range: bytes 0-9/10\r\nContent-MD5: eA==\r\nETag: \"x\"\r\n\r\n";
        let text = |m: &Message| String::from_utf8(m.head.clone()).unwrap();
        let cut = cut_short(msg(ranged, b"0123456789"), Cut::Blob).unwrap();
        assert_eq!(cut.body, b"01234");
        assert_eq!(
            text(&cut),
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-4/5\r\n\
             ETag: \"x\"\r\ncontent-length: 5\r\n\r\n"
        );
        let cut = cut_short(msg(ranged, b"0123456789"), Cut::Range).unwrap();
        assert!(
            text(&cut).contains("Content-Range: bytes 0-4/10\r\n"),
            "{}",
            text(&cut)
        );
        // A chunked body is cut after de-chunking and sent with a length.
        let chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        let cut = cut_short(
            msg(chunked, b"3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n"),
            Cut::Blob,
        )
        .unwrap();
        assert_eq!(cut.body, b"abc");
        assert_eq!(text(&cut), "HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n");
        let c = corrupt(msg(ranged, b"ab,12,cd"));
        assert_eq!(c.body, b"ab,13,cd");
        assert_eq!(c.head, ranged.as_bytes());
        // Errors pass untouched.
        let err = "HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\n";
        let same = cut_short(msg(err, b"gone"), Cut::Blob).unwrap();
        assert_eq!(
            (text(&same).as_str(), same.body.as_slice()),
            (err, &b"gone"[..])
        );
    }

    #[test]
    fn kinds_from_azure_request_lines() {
        let cases = [
            (
                "GET",
                "/acct/q/messages?numofmessages=1&visibilitytimeout=30",
                Kind::Receive,
            ),
            ("GET", "/acct/q/messages?peekonly=true", Kind::Peek),
            ("POST", "/acct/q/messages?messagettl=-1", Kind::Send),
            (
                "PUT",
                "/acct/q/messages/id1?popreceipt=abc&visibilitytimeout=5",
                Kind::Update,
            ),
            (
                "DELETE",
                "/acct/q/messages/id1?popreceipt=abc",
                Kind::Delete,
            ),
            ("GET", "/acct/c/t.csv", Kind::BlobGet),
            (
                "PUT",
                "/acct/c/o.csv?comp=block&blockid=AAA",
                Kind::PutBlock,
            ),
            ("PUT", "/acct/c/o.csv?comp=blocklist", Kind::PutBlockList),
            ("HEAD", "/acct/c/t.csv", Kind::Head),
            ("GET", "/acct/c?restype=container&comp=list", Kind::Other),
        ];
        for (method, target, want) in cases {
            assert_eq!(Kind::of(method, target), want, "{method} {target}");
        }
    }
}
