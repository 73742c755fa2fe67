//! The admin server under idle connections (issue 12): a worker with a small connection cap and
//! a short header timeout keeps answering its probes while more idle sockets than the cap are
//! open, closes those sockets at the header timeout, and still completes a message.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::support::Azurite;
use crate::worker_support::*;

const CAP: usize = 4;

/// Opens `n` connections that never finish a request head: even ones send nothing, odd ones
/// half a request line (a slowloris).
fn open_idle(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|i| {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
            if i % 2 == 1 {
                s.write_all(b"GET /healthz HT")
                    .expect("half a request line");
            }
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            s
        })
        .collect()
}

/// Whether the server has closed `s`: a read returns end of file or a reset. A read that
/// times out means the socket is still open. Nothing was requested, so no byte may arrive.
fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(n) => panic!(
            "the server answered an incomplete request: {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
        Err(_) => true,
    }
}

/// Polls until every socket in `socks` is closed by the server.
async fn all_closed(what: &str, limit: Duration, socks: Vec<TcpStream>) {
    let mut open = socks;
    eventually(what, limit, move || {
        open.retain_mut(|s| !closed_by_server(s));
        let left = open.len();
        async move { (left == 0).then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_neither_starve_probes_nor_stay_open() {
    let az = Azurite::start();
    let conn = az.connect().await;
    let (queue, container) = fresh_queue_and_container(&conn).await;
    let body = seed_csv(7, 500);
    let expected = expected_output(&body);
    upload(&conn.blobs, &container, "admin.csv", body).await;

    let worker = WorkerProc::spawn(
        &az,
        queue.name(),
        &container,
        &[
            "--admin-max-connections",
            &CAP.to_string(),
            "--admin-header-timeout",
            "1s",
        ],
    );
    eventually("the worker ready", PATIENCE, || async {
        (worker.status("/readyz").await == 200).then_some(())
    })
    .await;

    // Probe rounds, each with more idle sockets freshly opened than the cap: every probe is a
    // new connection arriving at a full server, as a kubelet's would.
    let mut idle = Vec::new();
    for round in 0..5 {
        idle.extend(open_idle(worker.http, CAP + 2));
        assert_eq!(worker.status("/healthz").await, 200, "round {round}");
        assert_eq!(worker.status("/readyz").await, 200, "round {round}");
    }
    assert_eq!(
        worker.get("/metrics").await.expect("a scrape").0,
        200,
        "/metrics too"
    );

    // A message sent while idle sockets are held completes with the right output.
    let held = open_idle(worker.http, CAP + 2);
    queue.send("admin.csv").await.unwrap();
    let got = eventually("the output", PATIENCE, || async {
        download(&conn.blobs, &container, "admin_aggregated.csv").await
    })
    .await;
    assert!(got == expected, "output differs from rollq aggregate");
    idle.extend(held);

    // None of them stays open: evicted at the cap or timed out.
    all_closed(
        "every idle connection closed",
        Duration::from_secs(30),
        idle,
    )
    .await;

    // Below the cap, with no other traffic, nothing evicts: only the header timeout closes
    // these. Not before most of it has passed (the lower bound shows it is the timer), and
    // within a generous bound.
    let opened = Instant::now();
    let below_cap = open_idle(worker.http, CAP - 1);
    all_closed(
        "idle connections below the cap closed by the header timeout",
        Duration::from_secs(30),
        below_cap,
    )
    .await;
    let waited = opened.elapsed();
    assert!(
        waited >= Duration::from_millis(800),
        "closed after {waited:?}, before the 1s header timeout"
    );

    assert_eq!(worker.status("/healthz").await, 200, "still serving");
    assert_queue_and_poison_empty(&conn, &queue).await;
}
