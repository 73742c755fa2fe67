//! [`PlatformBackoff`]: the worker's current backoff delay after platform failures.
//!
//! A platform failure (storage unreachable, throttled, refusing the credential) is no fault of
//! the message, so the message is hidden for this delay without counting an attempt. The delay
//! belongs to the worker, not to the message: every platform failure in a row doubles it (from
//! `--retry-delay`, capped at `--max-retry-delay`) and a completed message resets it, so during
//! an outage each message is delivered at most once per delay, whichever replica holds it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::settings::Settings;

/// Consecutive platform failures seen by this worker.
#[derive(Debug, Default)]
pub(super) struct PlatformBackoff {
    failures: AtomicU64,
}

impl PlatformBackoff {
    /// Records one more platform failure and returns the delay to hide the message for: the
    /// backoff of the failures so far, or the service's `Retry-After` when that is longer
    /// (itself capped at `--max-retry-delay`, so a bad header cannot park work for days).
    pub(super) fn failed(&self, s: &Settings, retry_after: Option<Duration>) -> Duration {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let asked = retry_after.map_or(Duration::ZERO, |d| d.min(s.max_retry_delay));
        s.backoff(n).max(asked)
    }

    /// Storage worked end to end for a message: start again from `--retry-delay`.
    pub(super) fn succeeded(&self) {
        self.failures.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_per_failure_honours_retry_after_and_resets() {
        let mut s = Settings::with_defaults("q", "acct", "c").unwrap();
        s.retry_delay = Duration::from_secs(1);
        s.max_retry_delay = Duration::from_secs(8);
        let b = PlatformBackoff::default();
        let got: Vec<u64> = (0..5).map(|_| b.failed(&s, None).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 8]);
        b.succeeded();
        assert_eq!(b.failed(&s, None), Duration::from_secs(1));
        assert_eq!(
            b.failed(&s, Some(Duration::from_secs(6))),
            Duration::from_secs(6)
        );
        assert_eq!(
            b.failed(&s, Some(Duration::from_secs(3600))),
            Duration::from_secs(8),
            "Retry-After is capped"
        );
    }
}
