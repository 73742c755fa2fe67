//! Delays after platform failures: each message's own deferral delay, and the worker-wide
//! pause that account-wide failures start ([`PauseSignal`], [`ProbeBackoff`]).
//!
//! A platform failure (storage unreachable, throttled, refusing the credential) is no fault of
//! the message, so the message is hidden for [`deferral_delay`] without counting an attempt.
//! The delay is the message's own: it grows with the deferrals its `$rollq` envelope records,
//! so N jobs meeting one outage each take one step, not N steps of a shared counter. Jobs
//! report account-wide failures on the [`PauseSignal`]; the receive loop (`receive_loop.rs`)
//! takes the report, stops receiving, and probes with [`ProbeBackoff`] until storage answers.

use std::sync::Mutex;
use std::time::Duration;

use rand::RngExt;
use rand::rngs::StdRng;

use super::settings::Settings;
use crate::storage::{Service, StorageError};

/// The delay a platform failure hides a message for: the backoff of its own deferrals so far
/// plus this one (`--retry-delay` doubled per deferral, capped at `--max-retry-delay`), or
/// the service's `Retry-After` when that is longer (itself capped at `--max-retry-delay`, so
/// a bad header cannot park work for days). `deferred` is the envelope's clamped count, so a
/// forged one can only lengthen the delay up to the cap.
pub(super) fn deferral_delay(
    s: &Settings,
    deferred: u64,
    retry_after: Option<Duration>,
) -> Duration {
    let asked = retry_after.map_or(Duration::ZERO, |d| d.min(s.max_retry_delay));
    s.backoff(deferred.saturating_add(1)).max(asked)
}

/// An account-wide failure a job met, waiting for the receive loop to act on it.
#[derive(Clone, Debug)]
pub(super) struct Suspect {
    /// The service to probe: the one the failing call went to.
    pub service: Service,
    /// The failure, for the pause's log line.
    pub error: StorageError,
}

/// Jobs report account-wide failures here; the receive loop takes the report before its next
/// receive. Only the latest report is kept: one outage seen by N jobs is one pause.
#[derive(Debug, Default)]
pub(super) struct PauseSignal {
    suspect: Mutex<Option<Suspect>>,
}

impl PauseSignal {
    /// Records an account-wide failure (a job's; the loop pauses on its own failed receives).
    pub(super) fn report(&self, error: &StorageError) {
        *self
            .suspect
            .lock()
            .expect("never poisoned: no panics under it") = Some(Suspect {
            service: error.op.service(),
            error: error.clone(),
        });
    }

    /// The pending report, if any, clearing it.
    pub(super) fn take(&self) -> Option<Suspect> {
        self.suspect
            .lock()
            .expect("never poisoned: no panics under it")
            .take()
    }
}

/// Delays between probes while paused: `--retry-delay` doubled per failed probe up to
/// `--max-retry-delay`, jittered to [d/2, d] so replicas do not probe in lockstep, and at
/// least the service's `Retry-After` (capped like the deferral delay).
#[derive(Debug)]
pub(super) struct ProbeBackoff {
    failed: u64,
    /// The jitter's source: seeded from the OS in production, from a fixed seed in tests.
    rng: StdRng,
}

impl ProbeBackoff {
    pub(super) fn new() -> Self {
        Self::with_rng(rand::make_rng::<StdRng>())
    }

    pub(super) fn with_rng(rng: StdRng) -> Self {
        ProbeBackoff { failed: 0, rng }
    }

    /// The wait before the next probe, after one more failed probe.
    pub(super) fn next(&mut self, s: &Settings, retry_after: Option<Duration>) -> Duration {
        self.failed += 1;
        let d = s.backoff(self.failed);
        let low = d / 2;
        let jittered = low + self.rng.random_range(Duration::ZERO..=d - low);
        let asked = retry_after.map_or(Duration::ZERO, |d| d.min(s.max_retry_delay));
        jittered.max(asked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{ErrorKind, Op};
    use rand::SeedableRng;

    fn settings() -> Settings {
        let mut s = Settings::with_defaults("q", "acct", "c").unwrap();
        s.retry_delay = Duration::from_secs(1);
        s.max_retry_delay = Duration::from_secs(8);
        s
    }

    #[test]
    fn a_deferral_waits_by_the_messages_own_count_and_honours_retry_after() {
        let s = settings();
        let got: Vec<u64> = (0..5)
            .map(|deferred| deferral_delay(&s, deferred, None).as_secs())
            .collect();
        assert_eq!(got, [1, 2, 4, 8, 8]);
        assert_eq!(
            deferral_delay(&s, 0, Some(Duration::from_secs(6))),
            Duration::from_secs(6)
        );
        assert_eq!(
            deferral_delay(&s, 0, Some(Duration::from_secs(3600))),
            Duration::from_secs(8),
            "Retry-After is capped"
        );
        assert_eq!(deferral_delay(&s, u64::MAX, None), Duration::from_secs(8));
    }

    #[test]
    fn probes_back_off_jittered_capped_and_honour_retry_after() {
        let s = settings();
        let mut b = ProbeBackoff::with_rng(StdRng::seed_from_u64(7));
        for want in [1u64, 2, 4, 8, 8, 8] {
            let d = b.next(&s, None);
            let full = Duration::from_secs(want);
            assert!(
                d >= full / 2 && d <= full,
                "{d:?} not in [{want}/2, {want}] s"
            );
        }
        let d = b.next(&s, Some(Duration::from_secs(60)));
        assert_eq!(d, Duration::from_secs(8), "Retry-After, capped");
    }

    #[test]
    fn one_report_pending_at_a_time() {
        let p = PauseSignal::default();
        assert!(p.take().is_none());
        for _ in 0..3 {
            p.report(&StorageError::new(
                ErrorKind::Transient,
                Op::Download,
                "c/b",
                "refused",
            ));
        }
        let s = p.take().expect("reported");
        assert_eq!(s.service, Service::Blob);
        assert!(p.take().is_none(), "three reports are one pause");
    }
}
