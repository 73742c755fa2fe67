//! Name rules for queues and containers, checked before any request so a typo gets a clear
//! message instead of an opaque 400 from the service.

/// The poison twin of a queue: `<queue>-poison` (Azure Functions' convention).
pub fn poison_queue_name(queue: &str) -> String {
    format!("{queue}-poison")
}

/// Checks an Azure queue name: 3–63 characters, lowercase letters, digits and single hyphens,
/// starting and ending with a letter or digit.
pub fn validate_queue_name(name: &str) -> Result<(), NameError> {
    validate("queue", name)
}

/// Checks an Azure blob container name (same rules as queue names).
pub fn validate_container_name(name: &str) -> Result<(), NameError> {
    validate("container", name)
}

/// A queue or container name that Azure would refuse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid {what} name {name:?}: {reason} (3-63 characters: lowercase letters, digits and single hyphens, starting and ending with a letter or digit)"
)]
pub struct NameError {
    pub what: &'static str,
    pub name: String,
    pub reason: &'static str,
}

fn validate(what: &'static str, name: &str) -> Result<(), NameError> {
    let err = |reason| {
        Err(NameError {
            what,
            name: name.to_owned(),
            reason,
        })
    };
    if name.len() < 3 {
        return err("too short");
    }
    if name.len() > 63 {
        return err("too long");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return err("only lowercase letters, digits and hyphens are allowed");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return err("it must start and end with a letter or digit");
    }
    if name.contains("--") {
        return err("consecutive hyphens are not allowed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_names() {
        for n in ["abc", "rollq-input", "q1-2-3", &"a".repeat(63)] {
            assert_eq!(validate_queue_name(n), Ok(()), "{n}");
        }
    }

    #[test]
    fn rejects_invalid_names_with_reason() {
        for (n, reason) in [
            ("ab", "too short"),
            (&"a".repeat(64) as &str, "too long"),
            ("Rollq", "only lowercase"),
            ("a_b", "only lowercase"),
            ("-abc", "start and end"),
            ("abc-", "start and end"),
            ("a--b", "consecutive"),
        ] {
            let e = validate_queue_name(n).unwrap_err();
            assert!(e.reason.contains(reason), "{n}: {e}");
            assert!(e.to_string().contains("invalid queue name"), "{e}");
        }
    }

    #[test]
    fn poison_twin_may_be_too_long() {
        let q = "a".repeat(60);
        assert!(validate_queue_name(&q).is_ok());
        assert!(validate_queue_name(&poison_queue_name(&q)).is_err());
    }
}
