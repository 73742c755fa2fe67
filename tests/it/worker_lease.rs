//! Ambiguous renewals against Azurite (issue 10): an Update Message that the service applied
//! but whose answer was lost is not retried blindly, leaves the lease *uncertain*, and good
//! work done under it is kept: the output is committed, the message is not deleted with the
//! stale receipt, and its redelivery is skipped as current.

use std::time::Duration;

use rollq::storage::{ErrorKind, StorageArgs};
use secrecy::SecretString;

use crate::support::http_proxy::{Action, Kind, Rule, Seen, When};
use crate::support::{Azurite, HttpProxy, unique_name};
use crate::worker_support::*;

/// The `popreceipt` query value of a request the proxy saw.
fn receipt_of(seen: &Seen) -> Option<&str> {
    let (_, query) = seen.target.split_once('?')?;
    query.split('&').find_map(|p| p.strip_prefix("popreceipt="))
}

/// The adapter on its own: a dropped answer to Update Message is reported as an unknown
/// outcome after exactly one request (no SDK retry with the receipt the service replaced),
/// while a 503 (refused before any work) is retried by hand and succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_message_is_not_retried_blindly() {
    let az = Azurite::start();
    let proxy = HttpProxy::start(
        az.queue_addr(),
        11,
        vec![
            Rule {
                kind: Kind::Update,
                when: When::Nth(1),
                action: Action::DropResponse,
            },
            Rule {
                kind: Kind::Update,
                when: When::Nth(2),
                action: Action::Answer {
                    status: 503,
                    retry_after: None,
                },
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
    let q = conn.queues.queue(&unique_name("upd"));
    q.create_if_missing().await.unwrap();
    q.send("first").await.unwrap();
    q.send("second").await.unwrap();
    let vis = Duration::from_secs(30);
    let got = q.receive(2, vis).await.unwrap();
    assert_eq!(got.len(), 2);

    let e = q
        .update(&got[0].id, &got[0].pop_receipt, vis, None)
        .await
        .unwrap_err();
    assert!(e.outcome_unknown, "{e}");
    assert_eq!(e.kind, ErrorKind::Transient, "{e}");
    assert_eq!(proxy.count(Kind::Update), (1, 1), "sent once, not retried");
    // It was applied: the receipt we hold is stale now.
    let stale = q.delete(&got[0].id, &got[0].pop_receipt).await.unwrap_err();
    assert_eq!(stale.kind, ErrorKind::LeaseLost, "{stale}");

    q.update(&got[1].id, &got[1].pop_receipt, vis, None)
        .await
        .expect("a 503 is retried with the same receipt");
    assert_eq!(
        proxy.count(Kind::Update),
        (3, 2),
        "503, then the retry passed"
    );
}

/// The test: the second Update Message (the second renewal) is forwarded and its
/// answer dropped, while the input's download is held past that renewal (and well before the
/// last deadline the worker knows for sure). The output is written once and correct, no
/// Delete is sent with the stale receipt, the redelivered message ends `skipped` as current,
/// and nothing is poisoned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_renewal_keeps_good_work() {
    let az = Azurite::start();
    let conn = az.connect().await;
    let (queue, container) = fresh_queue_and_container(&conn).await;
    let body = seed_csv(5, 300);
    let expected = expected_output(&body);
    upload(&conn.blobs, &container, "held.csv", body).await;

    // Visibility 10 s: renewals at 5 s (answered: known until 15 s) and 10 s (answer dropped),
    // so the uncertain lease may work until 14 s (a 1 s margin). The download is answered at
    // about 12 s: after the dropped renewal, before the known deadline.
    let queue_proxy = HttpProxy::start(
        az.queue_addr(),
        12,
        vec![Rule {
            kind: Kind::Update,
            when: When::Nth(2),
            action: Action::DropResponse,
        }],
    );
    let blob_proxy = HttpProxy::start(
        az.blob_addr(),
        13,
        vec![Rule {
            kind: Kind::BlobGet,
            when: When::Nth(1),
            action: Action::Hold(Duration::from_secs(12)),
        }],
    );
    queue.send("held.csv").await.unwrap();
    let worker = WorkerProc::spawn_with(
        az.rollq_via(blob_proxy.addr(), queue_proxy.addr()),
        queue.name(),
        &container,
        &["--visibility-timeout", "10s"],
    );

    // The dropped renewal was applied, so the message comes back about 20 s in.
    eventually("the message skipped on redelivery", PATIENCE, || async {
        let m = worker.metrics().await;
        let skipped = sample(&m, "rollq_messages_total", &[("outcome", "skipped")]);
        (skipped == Some(1.0)).then_some(())
    })
    .await;
    eventually("the message deleted", PATIENCE, || async {
        (queue.approximate_count().await.unwrap() == 0).then_some(())
    })
    .await;

    let got = download(&conn.blobs, &container, "held_aggregated.csv").await;
    assert!(got.as_ref() == Some(&expected), "output missing or wrong");
    let writes = blob_proxy
        .seen()
        .into_iter()
        .filter(|s| {
            s.target.contains("held_aggregated.csv")
                && matches!(s.kind, Kind::Other | Kind::PutBlockList)
        })
        .count();
    assert_eq!(writes, 1, "the output is written once");

    let seen = queue_proxy.seen();
    let dropped: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.action == Some(Action::DropResponse))
        .collect();
    assert_eq!(dropped.len(), 1, "the second renewal's answer was dropped");
    let stale = receipt_of(dropped[0]).expect("an update carries its receipt");
    let with_stale: Vec<&Seen> = seen
        .iter()
        .filter(|s| receipt_of(s) == Some(stale))
        .collect();
    assert_eq!(
        with_stale.len(),
        1,
        "nothing sent again with the stale receipt (no retry, no delete): {with_stale:?}"
    );
    let deletes: Vec<&Seen> = seen.iter().filter(|s| s.kind == Kind::Delete).collect();
    assert_eq!(deletes.len(), 1, "only the redelivery deletes: {deletes:?}");

    let m = worker.metrics().await;
    let count = |name: &str, labels: &[(&str, &str)]| sample(&m, name, labels).unwrap_or(0.0);
    assert_eq!(
        count("rollq_lease_renewals_total", &[("result", "uncertain")]),
        1.0
    );
    assert_eq!(
        count("rollq_lease_renewals_total", &[("result", "lost")]),
        0.0
    );
    assert_eq!(
        count("rollq_messages_total", &[("outcome", "completed")]),
        0.0
    );
    assert_eq!(
        count("rollq_messages_total", &[("outcome", "poisoned")]),
        0.0
    );
    assert!(
        worker.log().contains("lease_uncertain"),
        "the first delivery's outcome names the uncertain lease"
    );
    assert_queue_and_poison_empty(&conn, &queue).await;
}
