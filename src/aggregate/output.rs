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
    // ryu gives the shortest round-trip digits, as `16.7`, `0.0001` or `1.5e-7`. Its fixed
    // notation (no `e`) is Python's for every decimal exponent from -4 up to 15 (`-0.0` and
    // `16.0` included); the one fixed layout Python does not share is exponent -5, which ryu
    // writes `0.0000…` and Python `1e-05`. Those are copied as they are: the common case,
    // and a third of the instructions of the digit shuffle below (callgrind).
    //
    // Which layout ryu chose follows from `x` itself: exponents -4..=15 are exactly the
    // doubles in [1e-4, 1e16) (both bounds' shortest digits are the one-digit `1e-4` and
    // `1e16`, so no double on either side prints across them), which saves searching the
    // text for an `e` per float.
    let mut ryu_buf = ryu::Buffer::new();
    let text = ryu_buf.format_finite(x).as_bytes();
    if x == 0.0 || (1e-4..1e16).contains(&x.abs()) {
        out.extend_from_slice(text);
        return;
    }
    let unsigned = text.strip_prefix(b"-").unwrap_or(text);
    // Otherwise take out the digits and the decimal exponent of the first one, then lay
    // them out like Python.
    let text = unsigned;
    let (mantissa, e) = match text.iter().position(|&b| b == b'e') {
        Some(i) => (
            &text[..i],
            std::str::from_utf8(&text[i + 1..])
                .ok()
                .and_then(|t| t.parse::<i32>().ok())
                .unwrap_or(0),
        ),
        None => (text, 0),
    };
    let int_len = mantissa
        .iter()
        .position(|&b| b == b'.')
        .unwrap_or(mantissa.len()) as i32;
    let mut all = [0u8; 40];
    let mut n = 0;
    for &b in mantissa.iter().filter(|b| b.is_ascii_digit()) {
        all[n] = b;
        n += 1;
    }
    let lead = all[..n].iter().take_while(|&&d| d == b'0').count();
    let (digits, exp): (&[u8], i32) = if lead == n {
        (b"0", 0)
    } else {
        let mut end = n;
        while end > lead + 1 && all[end - 1] == b'0' {
            end -= 1;
        }
        (&all[lead..end], int_len - 1 - lead as i32 + e)
    };
    if x.is_sign_negative() {
        out.push(b'-');
    }
    if (-4..16).contains(&exp) {
        if exp >= 0 {
            let int_len = exp as usize + 1;
            for i in 0..int_len {
                out.push(*digits.get(i).unwrap_or(&b'0'));
            }
            out.push(b'.');
            if digits.len() > int_len {
                out.extend_from_slice(&digits[int_len..]);
            } else {
                out.push(b'0');
            }
        } else {
            out.extend_from_slice(b"0.");
            out.extend(std::iter::repeat_n(b'0', (-exp - 1) as usize));
            out.extend_from_slice(digits);
        }
    } else {
        out.push(digits[0]);
        if digits.len() > 1 {
            out.push(b'.');
            out.extend_from_slice(&digits[1..]);
        }
        out.push(b'e');
        out.push(if exp < 0 { b'-' } else { b'+' });
        let e = exp.unsigned_abs();
        if e < 10 {
            out.push(b'0');
        }
        out.extend_from_slice(e.to_string().as_bytes());
    }
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
