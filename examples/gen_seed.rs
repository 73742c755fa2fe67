//! Writes seed-format benchmark input: `Datetime,Temperature` then one row a minute
//! (`YYYY-MM-DD HH:MM:SS,16.7`) from 1950-01-01, deterministic values with one decimal.
//!
//! Run with `cargo run --release --example gen_seed -- bench-data/big.csv 40000000`.

use std::io::{BufWriter, Write};

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args.next().unwrap_or_else(|| "bench-data/big.csv".into());
    let rows: u64 = args
        .next()
        .map_or(40_000_000, |r| r.parse().expect("rows: an integer"));
    if let Some(dir) = std::path::Path::new(&path).parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(&path)?);
    rollq::aggregate::bench_support::write_seed_rows(rows, &mut out)?;
    out.flush()
}
