//! [`Echo`]: how producer text (message texts, names, URLs, event fields) appears in logs and
//! error messages: at most [`MAX_ECHO_CHARS`] characters, any `sig=` value removed, quoted.
//!
//! `job.rs` wraps every producer value it puts into a [`JobError`](super::error::JobError)
//! text; those texts reach the outcome log line and the poison log. A producer controls these
//! bytes, so they must not flood the logs, and a SAS URL in a message must not leak its
//! signature into them.

use std::fmt;

/// The most characters of one producer value shown; the rest is summarised by its length.
pub const MAX_ECHO_CHARS: usize = 256;

/// Displays producer text safely: Debug-quoted (control characters escaped), any `sig=`
/// value replaced, truncated to [`MAX_ECHO_CHARS`] characters.
pub struct Echo<'a>(pub &'a str);

impl fmt::Display for Echo<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let clean = strip_sig(self.0);
        let total = clean.chars().count();
        if total <= MAX_ECHO_CHARS {
            return write!(f, "{clean:?}");
        }
        let head: String = clean.chars().take(MAX_ECHO_CHARS).collect();
        write!(f, "{head:?}… ({} more characters)", total - MAX_ECHO_CHARS)
    }
}

/// Replaces the value of every `sig=` query parameter (any case; a SAS signature) with
/// `<redacted>`, up to the next `&`, whitespace or quote.
fn strip_sig(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while let Some(found) = lower[i..].find("sig=") {
        let start = i + found;
        // Only a parameter named exactly `sig` (not `xsig=`): start of text, `?`, `&` or `;`.
        let at_boundary =
            start == 0 || matches!(text.as_bytes()[start - 1], b'?' | b'&' | b';' | b' ' | b'"');
        let value = start + 4;
        out.push_str(&text[i..value]);
        if at_boundary {
            let end = text[value..]
                .find(|c: char| c == '&' || c.is_whitespace() || c == '"' || c == '\'')
                .map_or(text.len(), |n| value + n);
            out.push_str("<redacted>");
            i = end;
        } else {
            i = value;
        }
    }
    out.push_str(&text[i..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_removed() {
        let url = "https://a.blob.core.windows.net/c/t.csv?sv=2024&SIG=abc%2Bdef&se=x";
        let shown = Echo(url).to_string();
        assert!(!shown.contains("abc"), "{shown}");
        assert!(shown.contains("SIG=<redacted>&se=x"), "{shown}");
        assert_eq!(
            Echo("sig=secret").to_string(),
            "\"sig=<redacted>\"".to_string()
        );
        // A parameter that merely ends in `sig` is not a signature.
        assert_eq!(Echo("?xsig=1").to_string(), "\"?xsig=1\"");
    }

    #[test]
    fn long_text_is_truncated_and_control_characters_escaped() {
        let long = "x".repeat(10_000);
        let shown = Echo(&long).to_string();
        assert!(
            shown.chars().count() < MAX_ECHO_CHARS + 40,
            "{}",
            shown.len()
        );
        assert!(shown.ends_with("(9744 more characters)"), "{shown}");
        assert_eq!(Echo("a\nb").to_string(), "\"a\\nb\"");
        // Truncation counts characters, never splitting one.
        let wide = "é".repeat(300);
        assert!(Echo(&wide).to_string().contains("(44 more characters)"));
    }
}
