//! The Azure adapter against Azurite: every queue and blob operation, error classification,
//! signatures, conditional writes and streaming reads.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use rollq::storage::{
    BlobPath, Condition, CredentialKind, ErrorKind, PutOptions, ReadOptions, StorageArgs, connect,
};
use rollq::worker::error::{Class, JobError};
use secrecy::SecretString;

use crate::support::{Azurite, TcpProxy, azurite::connection_string_for, md5, unique_name};

#[tokio::test]
async fn queue_operations_round_trip() {
    let az = Azurite::start();
    let conn = az.connect().await;
    let q = conn.queues.queue(&unique_name("ops"));

    q.create_if_missing().await.unwrap();
    q.create_if_missing()
        .await
        .expect("existing queue is success");
    assert_eq!(q.approximate_count().await.unwrap(), 0);

    let text = r#"{"container":"c","blob":"a <&> é.csv"}"#;
    let id = q.send(text).await.unwrap();
    q.send("second").await.unwrap();
    assert_eq!(q.approximate_count().await.unwrap(), 2);

    let peeked = q.peek(32).await.unwrap();
    assert_eq!(peeked.len(), 2);
    assert_eq!(peeked[0].id, id);
    assert_eq!(peeked[0].text, text, "text comes back exactly as sent");
    assert_eq!(peeked[0].dequeue_count, 0);

    let got = q.receive(1, Duration::from_secs(60)).await.unwrap();
    assert_eq!(got.len(), 1);
    let m = &got[0];
    assert_eq!(m.id, id);
    assert_eq!(m.text, text);
    assert_eq!(m.dequeue_count, 1);
    assert!(m.next_visible_on.is_some() && m.inserted_on.is_some());

    // Invisible messages are counted but not peeked.
    assert_eq!(q.approximate_count().await.unwrap(), 2);
    let visible = q.peek(32).await.unwrap();
    assert_eq!(visible.len(), 1);
    assert_eq!(visible[0].text, "second");

    // Update returns a new receipt; the old one is stale from then on.
    let r2 = q
        .update(
            &m.id,
            &m.pop_receipt,
            Duration::from_secs(60),
            Some("rewritten"),
        )
        .await
        .unwrap();
    assert_ne!(r2, m.pop_receipt);
    let stale = q.delete(&m.id, &m.pop_receipt).await.unwrap_err();
    assert_eq!(stale.kind, ErrorKind::LeaseLost, "{stale}");
    let stale = q
        .update(&m.id, &m.pop_receipt, Duration::ZERO, None)
        .await
        .unwrap_err();
    assert_eq!(stale.kind, ErrorKind::LeaseLost, "{stale}");

    // Visibility 0 releases the message at once, with its rewritten text.
    let r3 = q.update(&m.id, &r2, Duration::ZERO, None).await.unwrap();
    let again = q.receive(32, Duration::from_secs(60)).await.unwrap();
    assert_eq!(again.len(), 2);
    let back = again.iter().find(|r| r.id == id).expect("released message");
    assert_eq!(back.text, "rewritten");
    assert_eq!(back.dequeue_count, 2);
    // The receipt from the release is stale after the new receive.
    assert_eq!(
        q.delete(&id, &r3).await.unwrap_err().kind,
        ErrorKind::LeaseLost
    );
    for r in &again {
        q.delete(&r.id, &r.pop_receipt).await.unwrap();
    }
    assert_eq!(q.approximate_count().await.unwrap(), 0);
    assert!(
        q.receive(32, Duration::from_secs(1))
            .await
            .unwrap()
            .is_empty()
    );

    // Out-of-range batch sizes are refused before any request.
    assert_eq!(q.peek(33).await.unwrap_err().kind, ErrorKind::Other);
    assert_eq!(
        q.receive(0, Duration::from_secs(1)).await.unwrap_err().kind,
        ErrorKind::Other
    );
}

#[tokio::test]
async fn receive_batches_up_to_32() {
    let az = Azurite::start();
    let conn = az.connect().await;
    let q = conn.queues.queue(&unique_name("batch"));
    q.create_if_missing().await.unwrap();
    for i in 0..40 {
        q.send(&format!("m{i}")).await.unwrap();
    }
    let got = q.receive(32, Duration::from_secs(30)).await.unwrap();
    assert_eq!(got.len(), 32);
    let rest = q.receive(32, Duration::from_secs(30)).await.unwrap();
    assert_eq!(rest.len(), 8);
    assert_eq!(q.approximate_count().await.unwrap(), 40);
}

#[tokio::test]
async fn messages_never_expire() {
    use azure_core::http::ClientOptions;
    use azure_storage_queue::{QueueClient, QueueClientOptions};
    use rollq::storage::azure::shared_key::SharedKeyPolicy;
    use rollq::storage::connection::{DEV_ACCOUNT, DEV_KEY};

    let az = Azurite::start();
    let conn = az.connect().await;
    let name = unique_name("ttl");
    let q = conn.queues.queue(&name);
    q.create_if_missing().await.unwrap();
    q.send("keep me").await.unwrap();

    // Our traits do not expose the expiry, so read it with the SDK directly (signed by our
    // policy): a TTL of -1 shows as the maximum date, not insertion + 7 days.
    let opts = QueueClientOptions {
        client_options: ClientOptions {
            per_try_policies: vec![SharedKeyPolicy::new(DEV_ACCOUNT, DEV_KEY.to_owned())],
            ..Default::default()
        },
        ..Default::default()
    };
    let url = format!("{}/{name}", az.queue_endpoint()).parse().unwrap();
    let raw = QueueClient::new(url, None, Some(opts)).unwrap();
    let peeked = raw.peek_messages(None).await.unwrap().into_model().unwrap();
    let m = &peeked.items.unwrap()[0];
    let expiry = m.expiration_time.expect("expiration time");
    let inserted = m.insertion_time.expect("insertion time");
    assert!(
        expiry - inserted > azure_core::time::Duration::days(365 * 100),
        "inserted {inserted}, expires {expiry}"
    );
}

#[tokio::test]
async fn missing_queue_is_not_found_with_a_clear_explanation() {
    let az = Azurite::start();
    let conn = az.connect().await;
    let name = unique_name("absent");
    let err = conn.queues.queue(&name).send("x").await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound, "{err}");
    let line = conn.info.explain(&err);
    assert!(line.contains(&name), "{line}");
    assert!(line.contains("devstoreaccount1"), "{line}");
    assert!(line.contains(&az.queue_endpoint()), "{line}");
    assert!(!line.contains('\n'));

    let err = conn
        .blobs
        .properties(&BlobPath::new(unique_name("nocontainer"), "x.csv"))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound, "{err}");
    assert!(conn.info.explain(&err).contains(&az.blob_endpoint()));
}

#[tokio::test]
async fn wrong_key_is_an_auth_error_and_never_leaks_the_key() {
    let az = Azurite::start();
    // Valid base64, wrong bytes: Azurite checks the signature and refuses it.
    let wrong = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktd3Jvbmcta2V5LXdyb25nLWtleQ==";
    let args = StorageArgs {
        connection_string: Some(SecretString::from(connection_string_for(
            &az.blob_endpoint(),
            &az.queue_endpoint(),
            wrong,
        ))),
        storage_timeout: Duration::from_secs(10),
        ..Default::default()
    };
    let conn = connect(&args).await.unwrap();
    assert_eq!(conn.info.credential, CredentialKind::AccountKey);

    let q = conn.queues.queue(&unique_name("auth"));
    let err = q.create_if_missing().await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Auth, "{err}");
    let line = conn.info.explain(&err);
    for needle in [
        "devstoreaccount1",
        &az.queue_endpoint(),
        "account key",
        "check",
    ] {
        assert!(line.contains(needle), "{needle:?} missing in {line}");
    }
    let berr = conn
        .blobs
        .create_container_if_missing(&unique_name("auth"))
        .await
        .unwrap_err();
    assert_eq!(berr.kind, ErrorKind::Auth, "{berr}");

    for text in [
        line,
        err.to_string(),
        format!("{err:?}"),
        format!("{berr:?}"),
        format!("{conn:?}"),
        format!("{args:?}"),
        conn.info.to_string(),
    ] {
        assert!(!text.contains(wrong), "key leaked: {text}");
        assert!(!text.contains(&wrong[..20]), "key leaked: {text}");
    }
}

#[tokio::test]
async fn unreachable_endpoint_is_transient() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dead = format!("http://127.0.0.1:{port}/devstoreaccount1");
    let args = StorageArgs {
        connection_string: Some(SecretString::from(connection_string_for(
            &dead,
            &dead,
            rollq::storage::connection::DEV_KEY,
        ))),
        storage_timeout: Duration::from_secs(5),
        ..Default::default()
    };
    let conn = connect(&args).await.unwrap();
    let started = std::time::Instant::now();
    let err = conn
        .queues
        .queue("any-queue")
        .approximate_count()
        .await
        .unwrap_err();
    eprintln!("dead endpoint failed after {:?}: {err}", started.elapsed());
    assert_eq!(err.kind, ErrorKind::Transient, "{err}");
    assert!(err.kind.is_unreachable());
    let line = conn.info.explain(&err);
    assert!(line.contains(&dead), "{line}");
    assert!(line.contains("reachable"), "{line}");
}

#[tokio::test]
async fn outage_through_a_proxy_is_transient_then_recovers() {
    let az = Azurite::start();
    let proxy = TcpProxy::start(az.queue_addr());
    let args = StorageArgs {
        connection_string: Some(SecretString::from(
            az.connection_string_via(az.blob_addr(), proxy.addr()),
        )),
        storage_timeout: Duration::from_secs(5),
        ..Default::default()
    };
    let conn = connect(&args).await.unwrap();
    let q = conn.queues.queue(&unique_name("outage"));
    q.create_if_missing().await.unwrap();
    q.send("before").await.unwrap();

    proxy.cut();
    let err = q.approximate_count().await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Transient, "{err}");

    proxy.restore();
    assert_eq!(q.approximate_count().await.unwrap(), 1);
}

#[tokio::test]
async fn blob_operations_round_trip() {
    let az = Azurite::start();
    let conn = az.connect().await;
    let blobs = &conn.blobs;
    let c = unique_name("blobs");
    blobs.create_container_if_missing(&c).await.unwrap();
    blobs
        .create_container_if_missing(&c)
        .await
        .expect("existing container is success");
    assert!(blobs.container_exists(&c).await.unwrap());
    assert!(!blobs.container_exists(&unique_name("nope")).await.unwrap());

    let data = Bytes::from("time,temperature1\n2024-01-01 00:00:00,1.5\n");
    // A name that needs percent-encoding in the path (and in the signature).
    let path = BlobPath::new(&c, "dir/with space+plus&amp%25.csv");
    let etag = blobs
        .put(
            &path,
            data.clone(),
            PutOptions {
                content_type: Some("text/csv".into()),
                metadata: vec![("origin".into(), "test".into())],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let props = blobs.properties(&path).await.unwrap();
    assert_eq!(props.etag, etag);
    assert_eq!(props.size, data.len() as u64);
    assert_eq!(props.content_md5, Some(md5(&data)));
    assert_eq!(
        props.metadata,
        vec![("origin".to_owned(), "test".to_owned())]
    );

    let mut stream = blobs
        .open_read(&path, Some(&etag), ReadOptions::default())
        .await
        .unwrap();
    let mut got = Vec::new();
    while let Some(chunk) = stream.next().await {
        got.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(got, data);

    blobs
        .put(
            &BlobPath::new(&c, "other/x.csv"),
            Bytes::from_static(b"x"),
            PutOptions::default(),
        )
        .await
        .unwrap();
    let listed = blobs.list(&c, "dir/").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, path.name);
    assert_eq!(listed[0].size, data.len() as u64);
    assert_eq!(listed[0].etag, etag);
    assert_eq!(blobs.list(&c, "").await.unwrap().len(), 2);

    // An empty blob reads as zero bytes.
    let empty = BlobPath::new(&c, "empty.csv");
    blobs
        .put(&empty, Bytes::new(), PutOptions::default())
        .await
        .unwrap();
    let mut s = blobs
        .open_read(&empty, None, ReadOptions::default())
        .await
        .unwrap();
    let mut n = 0;
    while let Some(chunk) = s.next().await {
        n += chunk.unwrap().len();
    }
    assert_eq!(n, 0);

    blobs.delete(&path).await.unwrap();
    assert_eq!(
        blobs.properties(&path).await.unwrap_err().kind,
        ErrorKind::NotFound
    );
    assert_eq!(
        blobs.delete(&path).await.unwrap_err().kind,
        ErrorKind::NotFound
    );
    assert_eq!(
        blobs
            .open_read(&path, None, ReadOptions::default())
            .await
            .err()
            .map(|e| e.kind),
        Some(ErrorKind::NotFound)
    );
}

#[tokio::test]
async fn multi_partition_read_returns_every_byte_in_order() {
    let az = Azurite::start();
    let conn = az.connect().await;
    let c = unique_name("parts");
    conn.blobs.create_container_if_missing(&c).await.unwrap();
    let data: Vec<u8> = (0..(3 << 20) + 12345)
        .map(|i: u32| (i % 251) as u8)
        .collect();
    let path = BlobPath::new(&c, "big.bin");
    conn.blobs
        .put(&path, Bytes::from(data.clone()), PutOptions::default())
        .await
        .unwrap();
    let opts = ReadOptions {
        partition_bytes: 256 << 10,
        parallel: 3,
    };
    let mut s = conn.blobs.open_read(&path, None, opts).await.unwrap();
    let mut got = Vec::with_capacity(data.len());
    let mut chunks = 0;
    while let Some(chunk) = s.next().await {
        let chunk = chunk.unwrap();
        assert!(
            chunk.len() <= opts.partition_bytes,
            "chunk of {}",
            chunk.len()
        );
        got.extend_from_slice(&chunk);
        chunks += 1;
    }
    assert_eq!(got.len(), data.len());
    assert!(got == data, "bytes differ");
    assert!(
        chunks >= data.len() / opts.partition_bytes,
        "{chunks} chunks"
    );
}

#[tokio::test]
async fn conditional_writes_conflict_and_precondition() {
    let az = Azurite::start();
    let conn = az.connect().await;
    let blobs = &conn.blobs;
    let c = unique_name("cond");
    blobs.create_container_if_missing(&c).await.unwrap();
    let path = BlobPath::new(&c, "out.csv");
    let if_not_exists = PutOptions {
        condition: Condition::IfNotExists,
        ..Default::default()
    };

    let first = blobs
        .put(&path, Bytes::from_static(b"one"), if_not_exists.clone())
        .await
        .unwrap();
    let err = blobs
        .put(&path, Bytes::from_static(b"two"), if_not_exists.clone())
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Conflict, "{err}");

    // If-Match: the current ETag wins, a stale one fails.
    let second = blobs
        .put(
            &path,
            Bytes::from_static(b"three"),
            PutOptions {
                condition: Condition::IfMatch(first.clone()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_ne!(first, second);
    let err = blobs
        .put(
            &path,
            Bytes::from_static(b"four"),
            PutOptions {
                condition: Condition::IfMatch(first.clone()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::PreconditionFailed, "{err}");
    // The worker retries a job whose input changed under it, as a failed attempt.
    assert_eq!(JobError::from(err.clone()).class(), Class::Attempt);

    // Staged uploads apply the condition at commit; nothing is visible before it.
    let mut up = blobs
        .start_upload(&path, if_not_exists.clone())
        .await
        .unwrap();
    up.stage(Bytes::from_static(b"staged")).await.unwrap();
    assert_eq!(
        up.commit().await.unwrap_err().kind,
        ErrorKind::Conflict,
        "commit under If-None-Match on an existing blob"
    );
    let mut up = blobs
        .start_upload(
            &path,
            PutOptions {
                condition: Condition::IfMatch(first),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    up.stage(Bytes::from_static(b"x")).await.unwrap();
    assert_eq!(
        up.commit().await.unwrap_err().kind,
        ErrorKind::PreconditionFailed
    );
    assert_eq!(blobs.properties(&path).await.unwrap().etag, second);
}

#[tokio::test]
async fn staged_upload_commits_blocks_in_order_with_metadata() {
    let az = Azurite::start();
    let conn = az.connect().await;
    let blobs = &conn.blobs;
    let c = unique_name("staged");
    blobs.create_container_if_missing(&c).await.unwrap();
    let path = BlobPath::new(&c, "temperature1_aggregated.csv");
    let opts = PutOptions {
        condition: Condition::IfNotExists,
        content_type: Some("text/csv".into()),
        metadata: vec![("source_etag".into(), "\"0x1\"".into())],
    };
    let mut up = blobs.start_upload(&path, opts).await.unwrap();
    let mut expected = Vec::new();
    for i in 0..12u8 {
        let block = vec![b'a' + i; 1000 + usize::from(i)];
        expected.extend_from_slice(&block);
        up.stage(Bytes::from(block)).await.unwrap();
    }
    // Not visible before commit.
    assert_eq!(
        blobs.properties(&path).await.unwrap_err().kind,
        ErrorKind::NotFound
    );
    let etag = up.commit().await.unwrap();
    let props = blobs.properties(&path).await.unwrap();
    assert_eq!(props.etag, etag);
    assert_eq!(props.size, expected.len() as u64);
    assert_eq!(
        props.metadata,
        vec![("source_etag".to_owned(), "\"0x1\"".to_owned())]
    );
    let mut s = blobs
        .open_read(&path, None, ReadOptions::default())
        .await
        .unwrap();
    let mut got = Vec::new();
    while let Some(chunk) = s.next().await {
        got.extend_from_slice(&chunk.unwrap());
    }
    assert!(got == expected, "content differs");
}

#[tokio::test]
async fn source_changed_mid_read_ends_the_stream_with_precondition_failed() {
    let az = Azurite::start();
    let conn = az.connect().await;
    let blobs = &conn.blobs;
    let c = unique_name("midread");
    blobs.create_container_if_missing(&c).await.unwrap();
    let path = BlobPath::new(&c, "input.csv");
    let etag = blobs
        .put(
            &path,
            Bytes::from(vec![b'x'; 2 << 20]),
            PutOptions::default(),
        )
        .await
        .unwrap();

    // A stale ETag fails at open.
    let err = blobs
        .open_read(&path, Some(&ETagOf::stale()), ReadOptions::default())
        .await
        .err()
        .expect("stale etag must fail");
    assert_eq!(err.kind, ErrorKind::PreconditionFailed, "{err}");

    // 32 partitions, at most 2 buffered: replacing the blob after the first chunk must
    // surface as an error before the stream ends, never as a silently short or mixed read.
    let opts = ReadOptions {
        partition_bytes: 64 << 10,
        parallel: 1,
    };
    let mut s = blobs.open_read(&path, Some(&etag), opts).await.unwrap();
    let first = s.next().await.unwrap().unwrap();
    assert!(!first.is_empty());
    blobs
        .put(
            &path,
            Bytes::from(vec![b'y'; 2 << 20]),
            PutOptions::default(),
        )
        .await
        .unwrap();
    let mut failure = None;
    while let Some(item) = s.next().await {
        match item {
            Ok(chunk) => assert!(chunk.iter().all(|b| *b == b'x'), "mixed content"),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let e = failure.expect("the stream must end with an error");
    assert_eq!(e.kind, ErrorKind::PreconditionFailed, "{e}");
}

/// A syntactically valid ETag that no blob has.
struct ETagOf;
impl ETagOf {
    fn stale() -> rollq::storage::ETag {
        rollq::storage::ETag("\"0x8D000000000DEAD\"".into())
    }
}

#[tokio::test]
async fn sas_connection_string_appends_the_token_instead_of_signing() {
    let az = Azurite::start();
    let sas = crate::support::azurite::account_sas("rwdlacup");
    let cs = format!(
        "BlobEndpoint={};QueueEndpoint={};SharedAccessSignature={sas}",
        az.blob_endpoint(),
        az.queue_endpoint()
    );
    let args = StorageArgs {
        connection_string: Some(SecretString::from(cs)),
        storage_timeout: Duration::from_secs(10),
        ..Default::default()
    };
    let conn = connect(&args).await.unwrap();
    assert_eq!(conn.info.credential, CredentialKind::SharedAccessSignature);
    assert_eq!(conn.info.account, "devstoreaccount1");

    let q = conn.queues.queue(&unique_name("sas"));
    q.create_if_missing().await.unwrap();
    q.send("via sas").await.unwrap();
    let got = q.receive(1, Duration::from_secs(30)).await.unwrap();
    assert_eq!(got[0].text, "via sas");
    let r = q
        .update(
            &got[0].id,
            &got[0].pop_receipt,
            Duration::from_secs(30),
            None,
        )
        .await
        .unwrap();
    q.delete(&got[0].id, &r).await.unwrap();

    let c = unique_name("sas");
    conn.blobs.create_container_if_missing(&c).await.unwrap();
    let path = BlobPath::new(&c, "dir/a b.csv");
    conn.blobs
        .put(&path, Bytes::from_static(b"t,v\n"), PutOptions::default())
        .await
        .unwrap();
    assert_eq!(conn.blobs.properties(&path).await.unwrap().size, 4);
    assert_eq!(conn.blobs.list(&c, "dir/").await.unwrap().len(), 1);
    // Ranged (partitioned) reads are separate requests: each one carries the token.
    let big = BlobPath::new(&c, "big.bin");
    conn.blobs
        .put(&big, Bytes::from(vec![7u8; 300_000]), PutOptions::default())
        .await
        .unwrap();
    let opts = ReadOptions {
        partition_bytes: 64 << 10,
        parallel: 2,
    };
    let mut s = conn.blobs.open_read(&big, None, opts).await.unwrap();
    let mut n = 0;
    while let Some(chunk) = s.next().await {
        n += chunk.unwrap().len();
    }
    assert_eq!(n, 300_000);

    // A tampered signature is refused, and neither token appears in what we print.
    let forged = sas.replace("sig=", "sig=AAAA");
    let cs = format!(
        "BlobEndpoint={};QueueEndpoint={};SharedAccessSignature={forged}",
        az.blob_endpoint(),
        az.queue_endpoint()
    );
    let args = StorageArgs {
        connection_string: Some(SecretString::from(cs)),
        storage_timeout: Duration::from_secs(10),
        ..Default::default()
    };
    let bad = connect(&args).await.unwrap();
    let err = bad
        .queues
        .queue(&unique_name("sas"))
        .create_if_missing()
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Auth, "{err}");
    let line = bad.info.explain(&err);
    assert!(line.contains("SAS token"), "{line}");
    let sig = sas.split("sig=").nth(1).unwrap();
    for text in [
        line,
        format!("{err:?}"),
        format!("{bad:?}"),
        format!("{args:?}"),
    ] {
        assert!(!text.contains(sig), "signature leaked: {text}");
    }
}

fn args_for(endpoint: &str, timeout: Duration) -> StorageArgs {
    StorageArgs {
        connection_string: Some(SecretString::from(connection_string_for(
            endpoint,
            endpoint,
            rollq::storage::connection::DEV_KEY,
        ))),
        storage_timeout: timeout,
        ..Default::default()
    }
}

#[tokio::test]
async fn server_busy_is_throttled_with_retry_after_after_bounded_retries() {
    let server = crate::support::FakeHttp::start(
        503,
        &[("retry-after", "1"), ("x-ms-error-code", "ServerBusy")],
    );
    let conn = connect(&args_for(&server.endpoint(), Duration::from_secs(6)))
        .await
        .unwrap();
    let err = conn.queues.queue("busy-queue").send("x").await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Throttled, "{err}");
    assert_eq!(err.retry_after, Some(Duration::from_secs(1)), "{err:?}");
    assert!(
        err.message.contains("503") && err.message.contains("ServerBusy"),
        "{err}"
    );
    assert!(err.kind.is_unreachable());
    // The SDK retried (honouring Retry-After) before giving up within the call's bound.
    assert!(server.hits() >= 2, "{} requests", server.hits());
}

#[tokio::test]
async fn server_errors_are_transient_and_client_errors_are_not_retried() {
    let server = crate::support::FakeHttp::start(500, &[("x-ms-error-code", "InternalError")]);
    let conn = connect(&args_for(&server.endpoint(), Duration::from_secs(4)))
        .await
        .unwrap();
    let err = conn.blobs.container_exists("c-500").await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Transient, "{err}");

    let server =
        crate::support::FakeHttp::start(400, &[("x-ms-error-code", "InvalidQueryParameterValue")]);
    let conn = connect(&args_for(&server.endpoint(), Duration::from_secs(4)))
        .await
        .unwrap();
    let err = conn
        .queues
        .queue("q-400")
        .approximate_count()
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Other, "{err}");
    assert!(!err.kind.is_outage());
    assert_eq!(server.hits(), 1, "a 400 is not retried");
}

#[tokio::test]
async fn azure_style_message_not_found_on_delete_is_lease_lost() {
    // Azure (unlike Azurite) may answer a stale pop receipt with 404 MessageNotFound.
    let server = crate::support::FakeHttp::start(404, &[("x-ms-error-code", "MessageNotFound")]);
    let conn = connect(&args_for(&server.endpoint(), Duration::from_secs(4)))
        .await
        .unwrap();
    let q = conn.queues.queue("lease-queue");
    let id = rollq::storage::MessageId("m1".into());
    let receipt = rollq::storage::PopReceipt("r1".into());
    assert_eq!(
        q.delete(&id, &receipt).await.unwrap_err().kind,
        ErrorKind::LeaseLost
    );
    assert_eq!(
        q.update(&id, &receipt, Duration::ZERO, None)
            .await
            .unwrap_err()
            .kind,
        ErrorKind::LeaseLost
    );
    // Without a receipt, a 404 is just "not found".
    assert_eq!(q.peek(1).await.unwrap_err().kind, ErrorKind::NotFound);
}

#[tokio::test]
async fn entra_id_settings_build_https_clients_without_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "projected-service-account-token").unwrap();
    let mut args = StorageArgs {
        account: Some("prodacct".into()),
        client_id: Some("00000000-0000-0000-0000-000000000001".into()),
        tenant_id: Some("00000000-0000-0000-0000-000000000002".into()),
        federated_token_file: Some(token),
        ..Default::default()
    };
    let conn = connect(&args).await.unwrap();
    assert_eq!(
        conn.info.credential,
        CredentialKind::WorkloadIdentity {
            client_id: args.client_id.clone()
        }
    );
    assert_eq!(
        conn.info.blob_endpoint.as_str(),
        "https://prodacct.blob.core.windows.net/"
    );
    let shown = conn.info.to_string();
    assert!(
        shown.contains("workload identity") && shown.contains("prodacct"),
        "{shown}"
    );
    assert!(!format!("{conn:?}").contains("projected-service-account-token"));

    args.federated_token_file = None;
    let conn = connect(&args).await.unwrap();
    assert!(
        conn.info.to_string().contains(
            "user-assigned managed identity (client id 00000000-0000-0000-0000-000000000001)"
        ),
        "{}",
        conn.info
    );
}

#[tokio::test]
async fn an_unacknowledged_message_reappears_after_its_visibility_timeout() {
    let az = Azurite::start();
    let conn = az.connect().await;
    let q = conn.queues.queue(&unique_name("vis"));
    q.create_if_missing().await.unwrap();
    let id = q.send("work").await.unwrap();
    let first = q.receive(1, Duration::from_secs(1)).await.unwrap();
    assert_eq!(first.len(), 1);
    // Poll with a generous deadline instead of sleeping for an exact time.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let again = loop {
        let got = q.receive(1, Duration::from_secs(30)).await.unwrap();
        if let Some(m) = got.into_iter().next() {
            break m;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "message did not reappear within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(again.id, id);
    assert_eq!(again.dequeue_count, 2);
    // The first lease is gone: its receipt no longer deletes.
    assert_eq!(
        q.delete(&id, &first[0].pop_receipt).await.unwrap_err().kind,
        ErrorKind::LeaseLost
    );
    q.delete(&id, &again.pop_receipt).await.unwrap();
}
