//! Event Grid messages end to end against Azurite: BlobCreated in the Event Grid and
//! CloudEvents schemas, raw and base64, are processed; other events, zero-length CreateFile
//! events and output-named blobs are acknowledged and skipped.

use base64::Engine;

use crate::support::Azurite;
use crate::worker_support::*;

const TOPIC: &str = "/subscriptions/0000/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/devstoreaccount1";

fn event_grid(
    event_type: &str,
    container: &str,
    blob: &str,
    url_base: &str,
    len: usize,
    api: &str,
) -> String {
    serde_json::json!({
        "topic": TOPIC,
        "subject": format!("/blobServices/default/containers/{container}/blobs/{blob}"),
        "eventType": event_type,
        "id": uuid::Uuid::new_v4().to_string(),
        "eventTime": "2026-11-23T10:00:00.0000000Z",
        "dataVersion": "",
        "metadataVersion": "1",
        "data": {
            "api": api,
            "contentType": "text/csv",
            "contentLength": len,
            "blobType": "BlockBlob",
            "url": format!("{url_base}/{container}/{blob}"),
        }
    })
    .to_string()
}

fn cloud_event(container: &str, blob: &str, url_base: &str, len: usize) -> String {
    serde_json::json!({
        "specversion": "1.0",
        "source": TOPIC,
        "subject": format!("/blobServices/default/containers/{container}/blobs/{blob}"),
        "type": "Microsoft.Storage.BlobCreated",
        "id": uuid::Uuid::new_v4().to_string(),
        "time": "2026-11-23T10:00:00.0000000Z",
        "data": {
            "api": "PutBlockList",
            "contentLength": len,
            "blobType": "BlockBlob",
            "url": format!("{url_base}/{container}/{blob}"),
        }
    })
    .to_string()
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Issue 4, test 9.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_grid_and_cloud_events() {
    let az = Azurite::start();
    let conn = az.connect().await;
    let (queue, container) = fresh_queue_and_container(&conn).await;
    let url = az.blob_endpoint();
    let mut processed = Vec::new();
    for (i, name) in ["eg-raw.csv", "eg-b64.csv", "ce-raw.csv", "ce-b64.csv"]
        .iter()
        .enumerate()
    {
        let body = seed_csv(i as u64, 90);
        processed.push((name.to_string(), expected_output(&body)));
        upload(&conn.blobs, &container, name, body).await;
    }
    let len = 100;
    let messages = [
        event_grid(
            "Microsoft.Storage.BlobCreated",
            &container,
            "eg-raw.csv",
            &url,
            len,
            "PutBlob",
        ),
        b64(&event_grid(
            "Microsoft.Storage.BlobCreated",
            &container,
            "eg-b64.csv",
            &url,
            len,
            "PutBlob",
        )),
        cloud_event(&container, "ce-raw.csv", &url, len),
        b64(&cloud_event(&container, "ce-b64.csv", &url, len)),
        // Skipped: another event type, a zero-length CreateFile, an output-named blob.
        event_grid(
            "Microsoft.Storage.BlobDeleted",
            &container,
            "eg-raw.csv",
            &url,
            len,
            "DeleteBlob",
        ),
        event_grid(
            "Microsoft.Storage.BlobCreated",
            &container,
            "adls.csv",
            &url,
            0,
            "CreateFile",
        ),
        event_grid(
            "Microsoft.Storage.BlobCreated",
            &container,
            "eg-raw_aggregated.csv",
            &url,
            len,
            "PutBlob",
        ),
    ];
    for m in &messages {
        queue.send(m).await.unwrap();
    }
    let mut worker = WorkerProc::spawn(&az, queue.name(), &container, &["--exit-when-idle", "2s"]);
    let status = worker.wait_exit(PATIENCE).await;
    assert!(status.success(), "exit {status}; log:\n{}", worker.log());
    for (name, expected) in &processed {
        let out = name.replace(".csv", "_aggregated.csv");
        let got = download(&conn.blobs, &container, &out).await;
        assert!(got.as_ref() == Some(expected), "{out} missing or wrong");
    }
    assert!(
        download(&conn.blobs, &container, "adls_aggregated.csv")
            .await
            .is_none()
    );
    assert!(
        download(&conn.blobs, &container, "eg-raw_aggregated_aggregated.csv")
            .await
            .is_none()
    );
    assert_queue_and_poison_empty(&conn, &queue).await;
    let log = worker.log();
    assert_eq!(log.matches("message completed").count(), 4, "{log}");
    assert_eq!(log.matches("message skipped").count(), 3, "{log}");
}
