//! A tiny fault-injecting TCP proxy in front of Azurite: a test can cut and restore it (a
//! storage outage: connection refused/reset, without touching the emulator), slow the
//! server→client direction down (a deliberately slow input), or have it cut itself once the
//! server has sent a given number of bytes (a transfer broken at a known point).
//!
//! Plain threads, so it works under any test runtime. While cut, every open connection is shut
//! down and new ones are closed as soon as they are accepted. Its target can be switched
//! ([`TcpProxy::retarget`]): a restarted emulator listens on new ports, and the proxy keeps
//! the address the worker was given.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the proxy does to the server→client bytes, fixed at start.
#[derive(Clone, Copy, Default)]
struct Faults {
    /// Forward at most this many bytes a second (in ten slices a second).
    bytes_per_sec: Option<usize>,
    /// Cut everything once the server has sent this many bytes over all connections.
    cut_after: Option<u64>,
}

struct State {
    /// Where new connections go; switched by [`TcpProxy::retarget`].
    target: Mutex<SocketAddr>,
    faults: Faults,
    up: AtomicBool,
    stop: AtomicBool,
    /// Server→client bytes forwarded so far, over all connections.
    sent: AtomicU64,
    /// Both ends of every proxied connection, so `cut` can shut them all down.
    conns: Mutex<Vec<TcpStream>>,
}

impl State {
    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

/// A running proxy: `addr()` forwards to the target while up.
pub struct TcpProxy {
    addr: SocketAddr,
    state: Arc<State>,
    /// The accept loop; stopped and joined on drop.
    accept: Option<JoinHandle<()>>,
}

impl TcpProxy {
    /// Listens on 127.0.0.1:0 and forwards every connection to `target`.
    pub fn start(target: SocketAddr) -> TcpProxy {
        Self::with(target, Faults::default())
    }

    /// Like [`TcpProxy::start`], but forwards server→client bytes at `bytes_per_sec`.
    pub fn throttled(target: SocketAddr, bytes_per_sec: usize) -> TcpProxy {
        Self::with(
            target,
            Faults {
                bytes_per_sec: Some(bytes_per_sec),
                ..Faults::default()
            },
        )
    }

    /// Like [`TcpProxy::start`], but forwards only the first `limit` server→client bytes (over
    /// all connections), then cuts itself: every connection is shut and new ones refused.
    pub fn cut_after(target: SocketAddr, limit: u64) -> TcpProxy {
        Self::with(
            target,
            Faults {
                cut_after: Some(limit),
                ..Faults::default()
            },
        )
    }

    fn with(target: SocketAddr, faults: Faults) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let state = Arc::new(State {
            target: Mutex::new(target),
            faults,
            up: AtomicBool::new(true),
            stop: AtomicBool::new(false),
            sent: AtomicU64::new(0),
            conns: Mutex::new(Vec::new()),
        });
        let st = state.clone();
        let accept = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = conn else { continue };
                if !st.up.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let target = *st.target.lock().unwrap();
                let Ok(server) = TcpStream::connect(target) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                if let Err(e) = pipe(&st, client, server) {
                    eprintln!("proxy: {e}");
                }
            }
        });
        TcpProxy {
            addr,
            state,
            accept: Some(accept),
        }
    }

    /// The address to connect to instead of the target.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every open connection and refuses new ones until [`TcpProxy::restore`].
    pub fn cut(&self) {
        self.state.cut();
    }

    /// Forwards connections again.
    pub fn restore(&self) {
        self.state.up.store(true, Ordering::SeqCst);
    }

    /// Sends new connections to `target` from now on (open ones stay where they are: cut
    /// first to move everything).
    pub fn retarget(&self, target: SocketAddr) {
        *self.state.target.lock().unwrap() = target;
    }

    /// Whether the proxy is cut (by [`TcpProxy::cut`] or by reaching its byte limit).
    pub fn is_cut(&self) -> bool {
        !self.state.up.load(Ordering::SeqCst)
    }
}

fn pipe(st: &Arc<State>, client: TcpStream, server: TcpStream) -> io::Result<()> {
    {
        let mut conns = st.conns.lock().unwrap();
        conns.push(client.try_clone()?);
        conns.push(server.try_clone()?);
    }
    let (mut c_read, c_write) = (client.try_clone()?, client);
    let (s_read, mut s_write) = (server.try_clone()?, server);
    std::thread::spawn(move || {
        let _ = io::copy(&mut c_read, &mut s_write);
        let _ = s_write.shutdown(Shutdown::Write);
    });
    let st = st.clone();
    std::thread::spawn(move || server_to_client(&st, s_read, c_write));
    Ok(())
}

/// Forwards the server's bytes to the client, applying the proxy's faults.
fn server_to_client(st: &State, mut s_read: TcpStream, mut c_write: TcpStream) {
    const SLICE: Duration = Duration::from_millis(100);
    let limit = st.faults.cut_after.unwrap_or(u64::MAX);
    // Throttled: 10 slices a second, each at most a tenth of the rate.
    let buf_len = match st.faults.bytes_per_sec {
        Some(rate) => (rate / 10).max(1),
        None => 64 << 10,
    };
    let mut buf = vec![0u8; buf_len];
    loop {
        let started = Instant::now();
        let n = match s_read.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n as u64,
        };
        let before = st.sent.fetch_add(n, Ordering::SeqCst);
        let allowed = limit.saturating_sub(before).min(n);
        if c_write.write_all(&buf[..allowed as usize]).is_err() {
            break;
        }
        if allowed < n {
            st.cut();
            break;
        }
        if st.faults.bytes_per_sec.is_some() {
            let spent = started.elapsed();
            if spent < SLICE {
                std::thread::sleep(SLICE - spent);
            }
        }
    }
    let _ = c_write.shutdown(Shutdown::Write);
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
        self.state.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept so the loop sees `stop`.
        let _ = TcpStream::connect(self.addr);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}
