//! Output formatting: the header, bucket rows and floats printed the way Python prints them.
//!
//! pandas `to_csv` writes floats as numpy's shortest round-trip repr (`16.0`, `0.0001`,
//! `1e-05`, `1e+16`, `1.2345678901234568e+17`), so that is what we write too.

use super::acc::Acc;

/// Appends `x` as Python's `repr(float)`: shortest digits that round-trip, fixed notation
/// with a `.0` for integral values when the decimal exponent is in -4..16, scientific
/// (`1.5e+16`, `1e-05`) otherwise.
pub fn push_float(out: &mut Vec<u8>, x: f64) {
    if !x.is_finite() {
        out.extend_from_slice(match () {
            _ if x.is_nan() => b"nan",
            _ if x > 0.0 => b"inf",
            _ => b"-inf",
        });
        return;
    }
    // zmij gives the shortest round-trip digits, the same ones as ryu (ties included), in
    // ryu's layout except for the exponent's sign: `16.7`, `0.0001`, `1.5e-7`, `1e+16`. Its
    // fixed notation (no `e`) is Python's for every decimal exponent from -4 up to 15 (`-0.0`
    // and `16.0` included); those are copied as they are, the common case. Which layout zmij
    // chose follows from `x` itself: exponents -4..=15 are exactly the doubles in [1e-4, 1e16)
    // (both bounds' shortest digits are the one-digit `1e-4` and `1e16`, so no double on
    // either side prints across them), which saves searching the text for an `e` per float.
    // zmij rather than ryu: about a third of ryu's instructions per float (callgrind), and
    // the tests keep the ryu-based version as the reference for every layout.
    let mut buf = zmij::Buffer::new();
    let text = buf.format_finite(x).as_bytes();
    let abs = x.abs();
    if x == 0.0 || (1e-4..1e16).contains(&abs) {
        out.extend_from_slice(text);
        return;
    }
    if (1e-5..1e-4).contains(&abs) {
        // Exponent -5, the one fixed layout Python does not share: zmij writes `0.0000ddd`
        // (at least one significant digit, no trailing zero), Python `d.dde-05`.
        let (sign, unsigned) = match text.strip_prefix(b"-") {
            Some(rest) => (&b"-"[..], rest),
            None => (&b""[..], text),
        };
        let digits = &unsigned[b"0.0000".len()..];
        out.extend_from_slice(sign);
        out.push(digits[0]);
        if digits.len() > 1 {
            out.push(b'.');
            out.extend_from_slice(&digits[1..]);
        }
        out.extend_from_slice(b"e-05");
        return;
    }
    // Scientific: zmij's mantissa (`1`, `1.5`: no trailing zero, no `.0`) and exponent sign
    // are Python's; only a one-digit exponent needs Python's leading zero (`e-7` to `e-07`).
    // The exponent has 1 to 3 digits, so searching from the end finds the `e` within five bytes.
    let Some(e) = text.iter().rposition(|&b| b == b'e') else {
        out.extend_from_slice(text);
        return;
    };
    let exp_digits = text.len() - e - 2;
    out.extend_from_slice(&text[..e + 2]);
    if exp_digits == 1 {
        out.push(b'0');
    }
    out.extend_from_slice(&text[e + 2..]);
}

/// Appends a count in decimal, without the `String` that `to_string` would allocate per
/// bucket.
fn push_count(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Appends one CSV field, quoted when it holds a comma, quote or line break.
pub fn push_field(out: &mut Vec<u8>, field: &str) {
    if field
        .bytes()
        .any(|b| matches!(b, b',' | b'"' | b'\n' | b'\r'))
    {
        out.push(b'"');
        out.extend_from_slice(field.replace('"', "\"\"").as_bytes());
        out.push(b'"');
    } else {
        out.extend_from_slice(field.as_bytes());
    }
}

/// Appends the header line.
pub fn push_header(out: &mut Vec<u8>, time: &str, columns: &[String]) {
    push_field(out, time);
    for c in columns {
        for stat in ["count", "mean", "std", "min", "max"] {
            out.push(b',');
            push_field(out, &format!("{c}_{stat}"));
        }
    }
    out.push(b'\n');
}

/// Appends the statistics of one bucket (after its label): count, mean, std, min, max per
/// column; empty cells where pandas has NaN.
pub fn push_stats(out: &mut Vec<u8>, accs: &[Acc]) {
    for acc in accs {
        out.push(b',');
        push_count(out, acc.count());
        let Some((min, max)) = acc.min_max() else {
            out.extend_from_slice(b",,,,");
            continue;
        };
        out.push(b',');
        // No mean with values means both `inf` and `-inf` occurred: pandas' NaN, empty.
        if let Some(mean) = acc.mean() {
            push_float(out, mean);
        }
        out.push(b',');
        if let Some(std) = acc.std() {
            push_float(out, std);
        }
        out.push(b',');
        push_float(out, min);
        out.push(b',');
        push_float(out, max);
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repr(x: f64) -> String {
        let mut out = Vec::new();
        push_float(&mut out, x);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn python_repr() {
        // Expected strings are what CPython's repr() prints for these values.
        let cases = [
            (16.0, "16.0"),
            (16.7, "16.7"),
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.5e17, "1.5e+17"),
            (123456789012345680.0, "1.2345678901234568e+17"),
            (-2.5, "-2.5"),
            (0.1 + 0.2, "0.30000000000000004"),
            (1e300, "1e+300"),
            (5e-324, "5e-324"),
            (1000000000.0000001, "1000000000.0000001"),
            (f64::INFINITY, "inf"),
        ];
        for (x, want) in cases {
            assert_eq!(repr(x), want, "{x:e}");
        }
    }

    #[test]
    fn fields_are_quoted_when_needed() {
        let mut out = Vec::new();
        push_header(&mut out, "t", &["a,b".to_string(), "c\"d".to_string()]);
        let line = String::from_utf8(out).unwrap();
        assert!(line.starts_with("t,\"a,b_count\",\"a,b_mean\""));
        assert!(line.contains("\"c\"\"d_max\"\n"));
    }
}
