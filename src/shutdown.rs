//! Shutdown signalling: a first SIGTERM/SIGINT stops receiving and starts the drain; a second
//! releases in-flight work at once.
//!
//! `startup` creates a [`Shutdown`], hands clones to the worker and spawns [`listen`]; tests
//! cancel the tokens themselves.

use tokio_util::sync::CancellationToken;

/// The two stages of shutdown. Clones share the tokens.
#[derive(Clone, Debug, Default)]
#[must_use = "pass the shutdown handle to the worker"]
pub struct Shutdown {
    /// Cancelled by the first signal: readiness goes false and receiving stops; in-flight
    /// messages keep running until the drain deadline.
    pub stop: CancellationToken,
    /// Cancelled by a second signal (or the drain deadline): in-flight work is cancelled and
    /// its messages released with visibility 0.
    pub interrupt: CancellationToken,
}

impl Shutdown {
    /// A handle with nothing cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Advances one stage: the first call stops receiving, the second interrupts work.
    pub fn trigger(&self) {
        if self.stop.is_cancelled() {
            self.interrupt.cancel();
        } else {
            self.stop.cancel();
        }
    }
}

/// Waits for SIGTERM or SIGINT (Ctrl-C) twice, advancing `shutdown` each time; returns after
/// the second signal. Errors installing the handlers are returned at once.
pub async fn listen(shutdown: Shutdown) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        for stage in ["stop receiving and drain", "release in-flight messages now"] {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            tracing::info!(signal = name, "shutdown signal: {stage}");
            shutdown.trigger();
        }
    }
    #[cfg(not(unix))]
    {
        for _ in 0..2 {
            tokio::signal::ctrl_c().await?;
            shutdown.trigger();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_stages() {
        let s = Shutdown::new();
        assert!(!s.stop.is_cancelled());
        s.trigger();
        assert!(s.stop.is_cancelled() && !s.interrupt.is_cancelled());
        s.clone().trigger();
        assert!(s.interrupt.is_cancelled());
    }
}
