//! The bookkeeping envelope: how releases and platform failures are told apart from failed
//! attempts.
//!
//! Azure's dequeue count grows on every receive, whether the attempt failed, was interrupted
//! by a shutdown or scale-in, or met a storage outage. When the worker releases a message on
//! shutdown, or hides it after a platform failure, it rewrites the text (Update Message can)
//! into `{"$rollq":{"released":N,"deferred":M},"body":"<original>"}`; failed attempts are then
//! `dequeue_count - released - deferred`. Zero counts are left out. The first failure's time
//! is recorded too (`first_failure`, RFC 3339), so the poison copy can say when trouble began.
//! The original text is what is parsed.
//!
//! The poison copy uses the same envelope with a `poison` object
//! (`{"$rollq":{"poison":{"reason":…,"class":…,"deliveries":…}},"body":"<original>"}`, see
//! [`PoisonNote`]); a verbatim copy has none. Every reader unwraps both the same way.

use serde::{Deserialize, Serialize};

/// Texts longer than this are released without rewriting (the release then counts as an
/// attempt): a message may hold 64 KiB, and the envelope's JSON escaping adds to it.
pub const MAX_ENVELOPE_BYTES: usize = 60 * 1024;

/// A received message text, unwrapped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// The producer's text, exactly as sent.
    pub original: String,
    /// How many times a shutdown released this message.
    pub released: u64,
    /// How many times a platform failure hid this message without counting an attempt.
    pub deferred: u64,
    /// When the first failure of this message was recorded (RFC 3339), if one was.
    pub first_failure: Option<String>,
    /// Why the message was poisoned, on a poison copy.
    pub poison: Option<PoisonNote>,
}

/// What a poison copy says about why it was poisoned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoisonNote {
    /// The stable reason label (`too_many_attempts`, `max_deliveries`, `invalid_input`, …).
    pub reason: String,
    /// The error, as logged.
    pub error: String,
    /// The class of the failure that ended it: `permanent`, `message` or `platform`.
    pub class: String,
    /// Deliveries (the dequeue count), this one included.
    pub deliveries: u64,
    /// Failed attempts (deliveries minus releases and platform failures).
    pub attempts: u64,
    #[serde(default)]
    pub released: u64,
    #[serde(default)]
    pub deferred: u64,
    /// The first failure (RFC 3339): recorded in the bookkeeping, or this one.
    pub first_failure: String,
    /// This, the last, failure (RFC 3339).
    pub last_failure: String,
    /// The worker that poisoned it (`--worker-name`).
    pub worker: String,
}

#[derive(Serialize, Deserialize)]
struct Wire {
    #[serde(rename = "$rollq")]
    rollq: Meta,
    body: String,
}

#[derive(Serialize, Deserialize, Default)]
struct Meta {
    #[serde(default, skip_serializing_if = "is_zero")]
    released: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    deferred: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    first_failure: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    poison: Option<PoisonNote>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Envelope {
    /// Unwraps a received text; a text that is not an envelope is the original itself.
    pub fn open(text: &str) -> Envelope {
        if text.starts_with("{\"$rollq\"")
            && let Ok(wire) = serde_json::from_str::<Wire>(text)
        {
            return Envelope {
                original: wire.body,
                released: wire.rollq.released,
                deferred: wire.rollq.deferred,
                first_failure: wire.rollq.first_failure,
                poison: wire.rollq.poison,
            };
        }
        Envelope {
            original: text.to_owned(),
            released: 0,
            deferred: 0,
            first_failure: None,
            poison: None,
        }
    }

    /// This envelope with a failure at `now` recorded: the first one's time is kept.
    pub fn failed_at(&self, now: &str) -> Envelope {
        Envelope {
            first_failure: Some(self.first_failure.clone().unwrap_or_else(|| now.to_owned())),
            ..self.clone()
        }
    }

    /// The poison copy's text, or `None` if the envelope would be too long (the copy is then
    /// verbatim and the reason only in the log).
    pub fn poisoned(&self, note: PoisonNote) -> Option<String> {
        self.wrap(Meta {
            poison: Some(note),
            ..Meta::default()
        })
    }

    /// Clamps the counts a message claims to what its deliveries allow: every release or
    /// deferral happened on an earlier delivery, so together they are at most
    /// `dequeue_count - 1`. A forged envelope (`{"$rollq":{"released":1000},…}`) then gains at
    /// most the deliveries it really had, and `--max-deliveries` ends it whatever it claims.
    pub fn clamp(&mut self, dequeue_count: u64) {
        let earlier = dequeue_count.saturating_sub(1);
        self.released = self.released.min(earlier);
        self.deferred = self.deferred.min(earlier - self.released);
    }

    /// The text to write back with the bookkeeping as it is (after a failed attempt), or
    /// `None` if it would be too long.
    pub fn rewritten(&self) -> Option<String> {
        self.wrap(self.meta())
    }

    /// The text to write back when releasing once more, or `None` if it would be too long.
    pub fn released_once_more(&self) -> Option<String> {
        self.wrap(Meta {
            released: self.released + 1,
            ..self.meta()
        })
    }

    /// The text to write back after one more platform failure, or `None` if too long.
    pub fn deferred_once_more(&self) -> Option<String> {
        self.wrap(Meta {
            deferred: self.deferred + 1,
            ..self.meta()
        })
    }

    fn meta(&self) -> Meta {
        Meta {
            released: self.released,
            deferred: self.deferred,
            first_failure: self.first_failure.clone(),
            poison: None,
        }
    }

    fn wrap(&self, meta: Meta) -> Option<String> {
        let wire = Wire {
            rollq: meta,
            body: self.original.clone(),
        };
        let text = serde_json::to_string(&wire).ok()?;
        (text.len() <= MAX_ENVELOPE_BYTES).then_some(text)
    }

    /// Failed attempts so far, this one included, given the service's dequeue count.
    pub fn attempts(&self, dequeue_count: u64) -> u64 {
        dequeue_count.saturating_sub(self.released.saturating_add(self.deferred))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_the_original_verbatim() {
        for original in [
            "t.csv",
            "{\"blob\":\"a \\\"q\\\".csv\"}",
            "eyJibG9iIjoieCJ9",
            "  spaced \n",
        ] {
            let first = Envelope::open(original);
            assert_eq!(first.original, original);
            assert_eq!(first.released, 0);
            let wrapped = first.released_once_more().unwrap();
            let second = Envelope::open(&wrapped);
            assert_eq!(second.original, original);
            assert_eq!(second.released, 1);
            let third = Envelope::open(&second.released_once_more().unwrap());
            assert_eq!(
                third,
                Envelope {
                    original: original.into(),
                    released: 2,
                    deferred: 0,
                    first_failure: None,
                    poison: None,
                }
            );
            assert_eq!(third.attempts(5), 3);
            let fourth = Envelope::open(&third.deferred_once_more().unwrap());
            assert_eq!((fourth.released, fourth.deferred), (2, 1));
            assert_eq!(fourth.original, original);
            assert_eq!(fourth.attempts(5), 2);
        }
    }

    #[test]
    fn the_documented_release_form_still_reads_and_is_still_written() {
        let e = Envelope::open(r#"{"$rollq":{"released":1},"body":"t.csv"}"#);
        assert_eq!(
            (e.original.as_str(), e.released, e.deferred),
            ("t.csv", 1, 0)
        );
        let fresh = Envelope::open("t.csv");
        assert_eq!(
            fresh.released_once_more().unwrap(),
            r#"{"$rollq":{"released":1},"body":"t.csv"}"#
        );
    }

    #[test]
    fn a_producer_json_is_not_mistaken_for_an_envelope() {
        let text = r#"{"container":"c","blob":"$rollq"}"#;
        assert_eq!(Envelope::open(text).original, text);
        let odd = r#"{"$rollq": "not ours"}"#;
        assert_eq!(Envelope::open(odd).original, odd);
    }

    #[test]
    fn the_first_failure_is_kept_and_a_poison_note_round_trips() {
        let once = Envelope::open("t.csv").failed_at("2026-01-01T00:00:00Z");
        let twice = Envelope::open(&once.rewritten().unwrap()).failed_at("2026-01-02T00:00:00Z");
        assert_eq!(twice.first_failure.as_deref(), Some("2026-01-01T00:00:00Z"));
        let deferred = Envelope::open(&twice.deferred_once_more().unwrap());
        assert_eq!(deferred.first_failure, twice.first_failure);
        let note = PoisonNote {
            reason: "too_many_attempts".into(),
            error: "failed 5 times".into(),
            class: "message".into(),
            deliveries: 6,
            attempts: 5,
            released: 1,
            deferred: 0,
            first_failure: "2026-01-01T00:00:00Z".into(),
            last_failure: "2026-01-02T00:00:00Z".into(),
            worker: "pod-1".into(),
        };
        let copy = Envelope::open(&deferred.poisoned(note.clone()).unwrap());
        assert_eq!(copy.original, "t.csv");
        assert_eq!(copy.poison, Some(note));
        assert_eq!(
            (copy.released, copy.deferred),
            (0, 0),
            "counts live in the note"
        );
        // A verbatim copy has no note and is its own original.
        assert_eq!(Envelope::open("t.csv").poison, None);
    }

    #[test]
    fn claimed_counts_are_clamped_to_earlier_deliveries() {
        let mut forged = Envelope::open(r#"{"$rollq":{"released":1000,"deferred":7},"body":"x"}"#);
        forged.clamp(1);
        assert_eq!((forged.released, forged.deferred), (0, 0));
        assert_eq!(forged.attempts(1), 1);
        let mut forged = Envelope::open(r#"{"$rollq":{"released":2,"deferred":1000},"body":"x"}"#);
        forged.clamp(5);
        assert_eq!((forged.released, forged.deferred), (2, 2));
        assert_eq!(forged.attempts(5), 1, "never below one: this delivery");
        let mut honest = Envelope::open(r#"{"$rollq":{"released":1,"deferred":2},"body":"x"}"#);
        honest.clamp(4);
        assert_eq!((honest.released, honest.deferred), (1, 2));
    }

    #[test]
    fn too_long_texts_are_not_wrapped() {
        let big = "x".repeat(MAX_ENVELOPE_BYTES);
        assert!(Envelope::open(&big).released_once_more().is_none());
    }
}
