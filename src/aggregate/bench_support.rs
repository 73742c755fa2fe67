//! Seed-format input for benchmarks and the 1 GB generator (`examples/gen_seed.rs`).

use std::io::{self, Write};

use super::time::push_datetime;

/// Writes the header `Datetime,Temperature` and `rows` rows `YYYY-MM-DD HH:MM:SS,dd.d`, one a
/// minute from 1950-01-01 00:00:00; values cycle deterministically through 10.0..=39.9.
pub fn write_seed_rows(rows: u64, out: &mut dyn Write) -> io::Result<()> {
    let start = -631_152_000i64; // 1950-01-01 00:00:00 UTC
    let mut buf = Vec::with_capacity(1 << 20);
    buf.extend_from_slice(b"Datetime,Temperature\n");
    for i in 0..rows {
        push_datetime(&mut buf, start + 60 * i as i64);
        let tenths = 100 + (i * 7919 + i / 60 * 13) % 300;
        buf.extend_from_slice(format!(",{}.{}\n", tenths / 10, tenths % 10).as_bytes());
        if buf.len() >= 1 << 20 {
            out.write_all(&buf)?;
            buf.clear();
        }
    }
    out.write_all(&buf)
}
