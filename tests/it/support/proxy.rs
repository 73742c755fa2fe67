//! A tiny TCP proxy in front of Azurite that a test can cut and restore, to simulate a
//! storage outage (connection refused/reset) without touching the emulator.
//!
//! Plain threads, so it works under any test runtime. While cut, every open connection is shut
//! down and new ones are closed as soon as they are accepted.

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

struct State {
    target: SocketAddr,
    up: AtomicBool,
    stop: AtomicBool,
    /// Both ends of every proxied connection, so `cut` can shut them all down.
    conns: Mutex<Vec<TcpStream>>,
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
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let state = Arc::new(State {
            target,
            up: AtomicBool::new(true),
            stop: AtomicBool::new(false),
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
                let Ok(server) = TcpStream::connect(st.target) else {
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
        self.state.up.store(false, Ordering::SeqCst);
        for c in self.state.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    /// Forwards connections again.
    pub fn restore(&self) {
        self.state.up.store(true, Ordering::SeqCst);
    }
}

fn pipe(st: &Arc<State>, client: TcpStream, server: TcpStream) -> io::Result<()> {
    {
        let mut conns = st.conns.lock().unwrap();
        conns.push(client.try_clone()?);
        conns.push(server.try_clone()?);
    }
    let (mut c_read, mut c_write) = (client.try_clone()?, client);
    let (mut s_read, mut s_write) = (server.try_clone()?, server);
    std::thread::spawn(move || {
        let _ = io::copy(&mut c_read, &mut s_write);
        let _ = s_write.shutdown(Shutdown::Write);
    });
    std::thread::spawn(move || {
        let _ = io::copy(&mut s_read, &mut c_write);
        let _ = c_write.shutdown(Shutdown::Write);
    });
    Ok(())
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
