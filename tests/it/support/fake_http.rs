//! A canned-response HTTP server: answers every request with the same status, headers and
//! body, to test exact failure responses (429/503 with Retry-After, 500) without Azurite.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;

/// A running server; stopped and joined on drop.
pub struct FakeHttp {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    hits: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl FakeHttp {
    /// Serves `status` with `headers` and an empty body to every request.
    pub fn start(status: u16, headers: &[(&str, &str)]) -> FakeHttp {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fake server");
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let hits = Arc::new(AtomicUsize::new(0));
        let mut head =
            format!("HTTP/1.1 {status} Canned\r\ncontent-length: 0\r\nconnection: close\r\n");
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let (st, h) = (stop.clone(), hits.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                if drain_request(&mut conn).is_ok() {
                    h.fetch_add(1, Ordering::SeqCst);
                    let _ = conn.write_all(head.as_bytes());
                }
            }
        });
        FakeHttp {
            addr,
            stop,
            hits,
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT/devstoreaccount1`, shaped like an emulator endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://{}/devstoreaccount1", self.addr)
    }

    /// Requests answered so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// Reads one request's head and body (by content-length) so the client sees a clean reply.
fn drain_request(conn: &mut TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)
}

impl Drop for FakeHttp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
