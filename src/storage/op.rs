//! [`Op`]: the storage operations rollq performs, one vocabulary for the adapter, the fake,
//! error messages and the `op` label of `rollq_storage_errors_total`.
//!
//! The label strings are a contract with recorded series and dashboards: keep them.

use std::fmt;

/// A storage operation, named for what the worker or a tool is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// Get Messages (lease a batch).
    Receive,
    /// Put Message.
    Send,
    /// Update Message to retry or release (sets visibility, may rewrite the text).
    Update,
    /// Update Message to extend a lease while work runs.
    Renew,
    /// Delete Message.
    Delete,
    /// Peek Messages.
    Peek,
    /// Get Queue Metadata (the approximate count).
    QueueProperties,
    /// Create Queue.
    CreateQueue,
    /// Get Container Properties (does it exist?).
    ContainerProperties,
    /// Create Container.
    CreateContainer,
    /// List Blobs.
    List,
    /// Get Blob Properties.
    BlobProperties,
    /// Get Blob (a ranged, ETag-pinned read).
    Download,
    /// Put Blob (the whole blob in one request).
    Upload,
    /// Put Block.
    StageBlock,
    /// Put Block List (makes a staged upload visible).
    CommitBlockList,
    /// Delete Blob.
    DeleteBlob,
}

/// Which service an operation talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    /// Queue Storage.
    Queue,
    /// Blob Storage.
    Blob,
}

impl Op {
    /// Every operation.
    pub const ALL: [Op; 17] = [
        Op::Receive,
        Op::Send,
        Op::Update,
        Op::Renew,
        Op::Delete,
        Op::Peek,
        Op::QueueProperties,
        Op::CreateQueue,
        Op::ContainerProperties,
        Op::CreateContainer,
        Op::List,
        Op::BlobProperties,
        Op::Download,
        Op::Upload,
        Op::StageBlock,
        Op::CommitBlockList,
        Op::DeleteBlob,
    ];

    /// The label value (`rollq_storage_errors_total{op}`) and the word used in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Receive => "receive",
            Op::Send => "send",
            Op::Update => "update",
            Op::Renew => "renew",
            Op::Delete => "delete",
            Op::Peek => "peek",
            Op::QueueProperties => "queue properties",
            Op::CreateQueue => "create queue",
            Op::ContainerProperties => "container properties",
            Op::CreateContainer => "create container",
            Op::List => "list",
            Op::BlobProperties => "blob properties",
            Op::Download => "download",
            Op::Upload => "upload",
            Op::StageBlock => "stage block",
            Op::CommitBlockList => "commit block list",
            Op::DeleteBlob => "delete blob",
        }
    }

    /// The service the operation's request goes to.
    pub fn service(self) -> Service {
        match self {
            Op::Receive
            | Op::Send
            | Op::Update
            | Op::Renew
            | Op::Delete
            | Op::Peek
            | Op::QueueProperties
            | Op::CreateQueue => Service::Queue,
            Op::ContainerProperties
            | Op::CreateContainer
            | Op::List
            | Op::BlobProperties
            | Op::Download
            | Op::Upload
            | Op::StageBlock
            | Op::CommitBlockList
            | Op::DeleteBlob => Service::Blob,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_distinct() {
        let mut labels: Vec<_> = Op::ALL.iter().map(|o| o.as_str()).collect();
        labels.sort();
        labels.dedup();
        assert_eq!(labels.len(), Op::ALL.len());
    }

    /// The deploy checks read metric series from this stand-in scrape: its `op` labels must
    /// be ones the code emits.
    #[test]
    fn the_metrics_fixture_uses_real_op_labels() {
        let fixture = include_str!("../../deploy/tests/fixtures/metrics.contract-fixture.prom");
        let mut seen = 0;
        for (_, rest) in fixture
            .match_indices("op=\"")
            .map(|(i, _)| fixture.split_at(i + 4))
        {
            let label = &rest[..rest.find('"').expect("a closed label")];
            assert!(
                Op::ALL.iter().any(|o| o.as_str() == label),
                "op={label:?} in the fixture is no operation the code emits"
            );
            seen += 1;
        }
        assert!(seen > 0, "the fixture has no op label");
    }
}
