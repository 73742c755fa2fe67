//! Start-up checks: the queue exists, the poison queue and the output container are created,
//! the input containers exist.
//!
//! `cli::worker` calls [`Worker::check`] once before [`Worker::run`]; an auth or not-found
//! error becomes a [`StartupError`] that says what to fix, an unreachable storage is left to
//! the receive loop's retries.

use super::Worker;
use crate::storage::{ErrorKind, Op, StorageError};

/// Why the worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("{what}: {source}\n  fix: {fix}")]
    Storage {
        what: String,
        fix: String,
        #[source]
        source: Box<StorageError>,
    },
    #[error(
        "container {0:?} does not exist\n  fix: create it or correct --container / --allowed-containers"
    )]
    MissingContainer(String),
}

impl Worker {
    /// Start-up checks: the queue exists, the poison queue is created, the input containers
    /// exist and the output container is created. Auth and not-found errors are returned
    /// with what to fix; a transient error is logged and left to the loop's retries.
    pub async fn check(&self) -> Result<(), StartupError> {
        let s = &self.ctx.settings;
        let fatal = |what: String, fix: &str, e: StorageError| -> Result<(), StartupError> {
            if e.kind.is_unreachable() {
                tracing::warn!(error.message = %e, "{what}: storage not reachable yet; will keep trying");
                return Ok(());
            }
            let fix = if e.kind == ErrorKind::Auth {
                "check the connection string or the identity's roles (Storage Queue Data Message Processor, Storage Blob Data Contributor)"
            } else {
                fix
            };
            Err(StartupError::Storage {
                what,
                fix: fix.into(),
                source: Box::new(e),
            })
        };
        let r = self.ctx.queue.approximate_count().await;
        self.ctx.observer.record(Op::QueueProperties, &r);
        match r {
            Ok(_) => self.ctx.readiness.queue_ok(),
            Err(e) => fatal(
                format!("queue {:?}", s.queue),
                "create the queue (rollq submit creates it) or correct --queue",
                e,
            )?,
        }
        let r = self.ctx.poison.create_if_missing().await;
        self.ctx.observer.record(Op::CreateQueue, &r);
        if let Err(e) = r {
            fatal(
                format!("poison queue {:?}", s.poison_queue()),
                "allow creating queues, or create it",
                e,
            )?;
        }
        let mut inputs = vec![s.container.clone()];
        inputs.extend(s.allowed_containers.iter().cloned());
        for c in inputs {
            let r = self.ctx.blobs.container_exists(&c).await;
            self.ctx.observer.record(Op::ContainerProperties, &r);
            match r {
                Ok(true) => {}
                Ok(false) => return Err(StartupError::MissingContainer(c)),
                Err(e) => fatal(format!("container {c:?}"), "correct the container name", e)?,
            }
        }
        if let Some(out) = &s.output_container {
            let r = self.ctx.blobs.create_container_if_missing(out).await;
            self.ctx.observer.record(Op::CreateContainer, &r);
            if let Err(e) = r {
                fatal(
                    format!("output container {out:?}"),
                    "create it or correct --output-container",
                    e,
                )?;
            }
        }
        Ok(())
    }
}
