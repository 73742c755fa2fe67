//! Issue 12: the main queue or the input container (`--container`) deleted while the worker
//! runs. `/readyz` turns 503 once a probe confirms the resource is missing, the log names it,
//! nothing is poisoned, and the worker resumes by itself when the resource is back: every
//! message sent meanwhile completes.

use azure_core::http::ClientOptions;
use azure_storage_blob::{BlobContainerClient, BlobContainerClientOptions};
use azure_storage_queue::{QueueClient, QueueClientOptions};
use rollq::storage::azure::shared_key::SharedKeyPolicy;
use rollq::storage::connection::DEV_ACCOUNT;

use crate::support::Azurite;
use crate::worker_support::*;

/// Short waits: a missing resource is probed every 100–400 ms.
const ARGS: &[&str] = &[
    "--retry-delay",
    "100ms",
    "--max-retry-delay",
    "400ms",
    "--max-in-flight",
    "4",
    "--max-dequeue-count",
    "2",
];

fn client_options(az: &Azurite) -> ClientOptions {
    ClientOptions {
        per_try_policies: vec![SharedKeyPolicy::new(DEV_ACCOUNT, az.key.clone())],
        ..Default::default()
    }
}

/// Deletes a queue with the SDK (our `Queue` trait has no delete: the worker never needs one).
async fn delete_queue(az: &Azurite, name: &str) {
    let url = format!("{}/{name}", az.queue_endpoint()).parse().unwrap();
    let opts = QueueClientOptions {
        client_options: client_options(az),
        ..Default::default()
    };
    let q = QueueClient::new(url, None, Some(opts)).unwrap();
    q.delete(None).await.expect("delete the queue");
}

/// Deletes a container, and every blob in it, with the SDK.
async fn delete_container(az: &Azurite, name: &str) {
    let url = format!("{}/{name}", az.blob_endpoint()).parse().unwrap();
    let opts = BlobContainerClientOptions {
        client_options: client_options(az),
        ..Default::default()
    };
    let c = BlobContainerClient::new(url, None, Some(opts)).unwrap();
    c.delete(None).await.expect("delete the container");
}

async fn wait_ready(worker: &WorkerProc, want: u16, what: &str) {
    eventually(what, PATIENCE, || async {
        (worker.status("/readyz").await == want).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_main_queue_turns_readiness_503_and_the_worker_resumes_when_it_is_back() {
    let az = Azurite::start();
    let conn = az.connect().await;
    let (queue, container) = fresh_queue_and_container(&conn).await;
    let mut worker = WorkerProc::spawn(&az, queue.name(), &container, ARGS);
    wait_ready(&worker, 200, "ready at start").await;

    delete_queue(&az, queue.name()).await;
    wait_ready(&worker, 503, "readiness 503 while the queue is missing").await;
    let log = eventually("a log line naming the missing queue", PATIENCE, || async {
        let log = worker.log();
        log.contains(&format!("queue {} is missing", queue.name()))
            .then_some(log)
    })
    .await;
    assert!(log.contains("pausing: no receives"), "{log}");
    let m = worker.metrics().await;
    assert_eq!(sample(&m, "rollq_worker_paused", &[]), Some(1.0));
    assert!(worker.alive(), "the worker died without its queue");

    // The queue comes back (empty: deleting a queue deletes its messages) and gets new work.
    queue.create_if_missing().await.unwrap();
    let mut inputs = Vec::new();
    for i in 0..4u64 {
        let body = seed_csv(10 + i, 30);
        upload(&conn.blobs, &container, &format!("q{i}.csv"), body.clone()).await;
        queue.send(&format!("q{i}.csv")).await.unwrap();
        inputs.push(body);
    }
    wait_ready(&worker, 200, "ready again once the queue exists").await;
    for (i, input) in inputs.iter().enumerate() {
        let name = format!("q{i}_aggregated.csv");
        let got = eventually("every output after the queue is back", PATIENCE, || async {
            download(&conn.blobs, &container, &name).await
        })
        .await;
        assert!(got == expected_output(input), "output {name} is wrong");
    }
    eventually("queue empty", PATIENCE, || async {
        (queue.approximate_count().await.unwrap() == 0).then_some(())
    })
    .await;
    assert_queue_and_poison_empty(&conn, &queue).await;
    assert!(worker.alive());
    let log = worker.log();
    assert!(
        log.contains(&format!("queue {} exists again", queue.name())),
        "{log}"
    );
    assert!(!log.contains("message poisoned"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_input_container_turns_readiness_503_and_no_message_is_lost() {
    const MESSAGES: u64 = 6;
    let az = Azurite::start();
    let conn = az.connect().await;
    let (queue, container) = fresh_queue_and_container(&conn).await;
    let mut worker = WorkerProc::spawn(&az, queue.name(), &container, ARGS);
    wait_ready(&worker, 200, "ready at start").await;

    // The container goes while the worker runs, and messages naming it keep arriving.
    delete_container(&az, &container).await;
    for i in 0..MESSAGES {
        queue.send(&format!("c{i}.csv")).await.unwrap();
    }
    wait_ready(&worker, 503, "readiness 503 while the container is missing").await;
    let log = eventually(
        "a log line naming the missing container",
        PATIENCE,
        || async {
            let log = worker.log();
            log.contains(&format!("container {container} is missing"))
                .then_some(log)
        },
    )
    .await;
    assert!(log.contains("pausing: no receives"), "{log}");
    let m = worker.metrics().await;
    assert_eq!(sample(&m, "rollq_worker_paused", &[]), Some(1.0));
    assert_eq!(
        sample(&m, "rollq_messages_total", &[("outcome", "poisoned")]).unwrap_or(0.0),
        0.0,
        "nothing poisoned while the container is missing"
    );
    assert!(worker.alive());

    // The container comes back with its inputs: every message completes. The worker is
    // stopped (SIGSTOP, by its own pid) while the container is recreated and filled, so no
    // message is received between the two: a blob still missing is poisoned at once, as it
    // should be, and would fail this test for a reason it is not about.
    let signal = |sig: &str| {
        let status = std::process::Command::new("kill")
            .args([sig, &worker.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {sig} failed");
    };
    signal("-STOP");
    conn.blobs
        .create_container_if_missing(&container)
        .await
        .unwrap();
    let mut inputs = Vec::new();
    for i in 0..MESSAGES {
        let body = seed_csv(20 + i, 30);
        upload(&conn.blobs, &container, &format!("c{i}.csv"), body.clone()).await;
        inputs.push(body);
    }
    signal("-CONT");
    wait_ready(&worker, 200, "ready again once the container exists").await;
    for (i, input) in inputs.iter().enumerate() {
        let name = format!("c{i}_aggregated.csv");
        let got = eventually(
            "every output after the container is back",
            PATIENCE,
            || async { download(&conn.blobs, &container, &name).await },
        )
        .await;
        assert!(got == expected_output(input), "output {name} is wrong");
    }
    eventually("queue empty", PATIENCE, || async {
        (queue.approximate_count().await.unwrap() == 0).then_some(())
    })
    .await;
    assert_queue_and_poison_empty(&conn, &queue).await;
    let m = worker.metrics().await;
    assert_eq!(
        sample(&m, "rollq_messages_total", &[("outcome", "completed")]),
        Some(MESSAGES as f64)
    );
    let log = worker.log();
    assert!(
        log.contains(&format!("container {container} exists again")),
        "{log}"
    );
    assert!(!log.contains("message poisoned"), "{log}");
}
