//! Output names against Azurite: inputs whose names differ only in their extension, and
//! same-named inputs in two containers, each get an output of their own (with and without
//! `--output-container`); outputs written under the old name rule are listed as orphans by
//! `backfill --dry-run`, their inputs redone once, and never deleted.

use std::io::Write as _;

use rollq::aggregate::Spec;
use rollq::contract;
use rollq::storage::{BlobPath, Connection, PutOptions};

use crate::support::{Azurite, peek_texts, run_ok, unique_name};
use crate::worker_support::*;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

/// The worker once over everything queued, with `extra` flags, until idle.
async fn run_worker(az: &Azurite, queue: &str, container: &str, extra: &[&str]) {
    let mut args = vec!["--exit-when-idle", "2s"];
    args.extend(extra);
    let mut worker = WorkerProc::spawn(az, queue, container, &args);
    let status = worker.wait_exit(PATIENCE).await;
    assert!(status.success(), "exit {status}; log:\n{}", worker.log());
}

/// `rollq backfill` over `container` with `extra` flags; its standard output.
fn backfill(az: &Azurite, container: &str, queue: &str, extra: &[&str]) -> String {
    let mut cmd = az.rollq();
    cmd.args(["backfill", "--container", container, "--queue", queue])
        .args(extra);
    run_ok(cmd.output().unwrap()).0
}

/// Asserts that every input's output (where `contract::output_path` puts it) holds exactly
/// what the reducer makes of that input's plain CSV.
async fn assert_outputs(conn: &Connection, inputs: &[(BlobPath, Vec<u8>)], out: Option<&str>) {
    for (input, csv) in inputs {
        let path = contract::output_path(input, out);
        let got = download(&conn.blobs, &path.container, &path.name).await;
        assert!(
            got.as_deref() == Some(&expected_output(csv)[..]),
            "{path} (the output of {input}) is missing or holds another input's result"
        );
    }
}

/// Issue 11, output names: `t.csv`, `t.csv.gz` and `t.tsv` in one container and `t.csv` in
/// another, each of different data → four outputs, each its own input's roll-up, beside the
/// inputs and under `--output-container`; `backfill --dry-run` afterwards enqueues nothing.
/// Under the old rule (`t.csv.gz` and `t.tsv` → `t_aggregated.csv`) the last writer won.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn look_alike_names_and_containers_get_outputs_of_their_own() {
    let az = Azurite::start();
    let conn = az.connect().await;
    let (a, b, out, q) = (
        unique_name("na"),
        unique_name("nb"),
        unique_name("nout"),
        unique_name("nq"),
    );
    for c in [&a, &b] {
        conn.blobs.create_container_if_missing(c).await.unwrap();
    }
    let queue = conn.queues.queue(&q);
    queue.create_if_missing().await.unwrap();
    // Different data in each (seeds start in different years), so a mix-up shows.
    let inputs = [
        (BlobPath::new(&a, "t.csv"), seed_csv(1, 600)),
        (BlobPath::new(&a, "t.csv.gz"), seed_csv(2, 600)),
        (BlobPath::new(&a, "t.tsv"), seed_csv(3, 600)),
        (BlobPath::new(&b, "t.csv"), seed_csv(4, 600)),
    ];
    for (path, csv) in &inputs {
        let body = if path.name.ends_with(".gz") {
            gzip(csv)
        } else {
            csv.clone()
        };
        upload(&conn.blobs, &path.container, &path.name, body).await;
    }
    for output_container in [None, Some(out.as_str())] {
        for (path, _) in &inputs {
            let msg = serde_json::json!({ "container": path.container, "blob": path.name });
            queue.send(&msg.to_string()).await.unwrap();
        }
        let mut flags = vec!["--allowed-containers", b.as_str()];
        if let Some(o) = output_container {
            flags.extend(["--output-container", o]);
        }
        run_worker(&az, &q, &a, &flags).await;
        assert_queue_and_poison_empty(&conn, &queue).await;
        assert_outputs(&conn, &inputs, output_container).await;
        let paths: std::collections::HashSet<_> = inputs
            .iter()
            .map(|(p, _)| contract::output_path(p, output_container))
            .collect();
        assert_eq!(
            paths.len(),
            inputs.len(),
            "four distinct outputs: {paths:?}"
        );

        // Nothing left to do: the listings find 2 inputs in A (`t.tsv` is not one a listing
        // picks up) and 1 in B, every one with a current output, and no orphan.
        let mut dry = vec!["--dry-run"];
        if let Some(o) = output_container {
            dry.extend(["--output-container", o]);
        }
        for (c, n) in [(&a, 2), (&b, 1)] {
            let said = backfill(&az, c, &q, &dry);
            assert!(
                said.contains(&format!("would enqueue 0 of {n} inputs")),
                "{said}"
            );
            assert!(said.contains("0 orphaned outputs"), "{said}");
        }
        assert!(
            peek_texts(&queue).await.is_empty(),
            "a dry run sends nothing"
        );
    }
}

/// The migration note in `docs/worker.md`: an output the old rule wrote for `t.csv.gz` at
/// `t_aggregated.csv`, and one written under `--output-container` at `OUT/<name>`, are
/// listed as orphans; `t.csv` (whose output there names another source) and `t.csv.gz` are
/// enqueued once, and after one run nothing is left to do. rollq deletes no orphan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_of_the_old_rule_are_orphans_and_their_inputs_are_redone_once() {
    let az = Azurite::start();
    let conn = az.connect().await;
    let (a, out, q) = (unique_name("ma"), unique_name("mout"), unique_name("mq"));
    for c in [&a, &out] {
        conn.blobs.create_container_if_missing(c).await.unwrap();
    }
    let inputs = [
        (BlobPath::new(&a, "t.csv"), seed_csv(1, 300)),
        (BlobPath::new(&a, "t.csv.gz"), seed_csv(2, 300)),
    ];
    let mut etags = Vec::new();
    for (path, csv) in &inputs {
        let body = if path.name.ends_with(".gz") {
            gzip(csv)
        } else {
            csv.clone()
        };
        upload(&conn.blobs, &path.container, &path.name, body).await;
        etags.push(conn.blobs.properties(path).await.unwrap().etag);
    }
    // What the old rule left: `t.csv.gz`'s roll-up at A/t_aggregated.csv (it was the last
    // writer), and `t.csv`'s at OUT/t_aggregated.csv, each with the metadata rollq writes.
    let old_beside = BlobPath::new(&a, "t_aggregated.csv");
    let old_under_out = BlobPath::new(&out, "t_aggregated.csv");
    for (old, i) in [(&old_beside, 1), (&old_under_out, 0)] {
        let metadata = contract::output_metadata(&inputs[i].0, &etags[i], &Spec::default());
        let opts = PutOptions {
            metadata,
            ..PutOptions::default()
        };
        let body = expected_output(&inputs[i].1).into();
        conn.blobs.put(old, body, opts).await.unwrap();
    }

    for output_container in [None, Some(out.as_str())] {
        let (old, source) = match output_container {
            None => (&old_beside, &inputs[1].0),
            Some(_) => (&old_under_out, &inputs[0].0),
        };
        let mut flags = vec![];
        if let Some(o) = output_container {
            flags.extend(["--output-container", o]);
        }
        let dry: Vec<&str> = [&["--dry-run"][..], &flags].concat();
        let said = backfill(&az, &a, &q, &dry);
        assert!(said.contains("would enqueue 2 of 2 inputs"), "{said}");
        let orphan_line = format!(
            "orphan {old} (made from {source}, whose output is now {})",
            contract::output_path(source, output_container)
        );
        assert!(said.contains(&orphan_line), "{said}");
        assert!(said.contains("1 orphaned outputs"), "{said}");

        let said = backfill(&az, &a, &q, &flags);
        assert!(said.contains("enqueued 2 of 2 inputs"), "{said}");
        run_worker(&az, &q, &a, &flags).await;
        assert_outputs(&conn, &inputs, output_container).await;

        let said = backfill(&az, &a, &q, &dry);
        assert!(said.contains("would enqueue 0 of 2 inputs"), "{said}");
        if output_container.is_none() {
            // `t.csv`'s new output is the old orphan's path: overwritten, no orphan left.
            assert!(said.contains("0 orphaned outputs"), "{said}");
        } else {
            // The orphan under OUT stays, and stays listed, until the user deletes it.
            assert!(said.contains("1 orphaned outputs"), "{said}");
            assert!(download(&conn.blobs, &out, &old.name).await.is_some());
        }
    }
}
