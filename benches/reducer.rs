//! Criterion bench of the reducer over seed-format rows (`YYYY-MM-DD HH:MM:SS,16.7`, one a
//! minute): reports bytes/s and rows/s, streaming and holding mode.

use std::io::{self, Read};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rollq::aggregate::{self, BytesSource, Source, Spec, bench_support};

/// Bytes in memory that may be read once, like standard input: holding mode from the start.
struct Once<'a>(&'a [u8]);

impl Source for Once<'_> {
    fn open(&mut self) -> io::Result<Box<dyn Read + '_>> {
        Ok(Box::new(self.0))
    }
    fn can_reopen(&self) -> bool {
        false
    }
}

const ROWS: u64 = 1_000_000;

fn reducer(c: &mut Criterion) {
    let mut input = Vec::new();
    bench_support::write_seed_rows(ROWS, &mut input).expect("writing to a Vec");
    let spec = Spec::default();
    let mut out = Vec::with_capacity(4 << 20);

    let mut group = c.benchmark_group("reducer");
    group.sample_size(20);
    group.throughput(Throughput::Bytes(input.len() as u64));
    group.bench_function("seed_1h_bytes", |b| {
        b.iter(|| {
            out.clear();
            aggregate::run(&spec, &mut BytesSource(&input), &mut out).expect("bench input is valid")
        })
    });
    group.throughput(Throughput::Elements(ROWS));
    group.bench_function("seed_1h_rows", |b| {
        b.iter(|| {
            out.clear();
            aggregate::run(&spec, &mut BytesSource(&input), &mut out).expect("bench input is valid")
        })
    });
    group.throughput(Throughput::Bytes(input.len() as u64));
    group.bench_function("seed_1h_holding_bytes", |b| {
        b.iter(|| {
            out.clear();
            aggregate::run(&spec, &mut Once(&input), &mut out).expect("bench input is valid")
        })
    });
    group.finish();
}

criterion_group!(benches, reducer);
criterion_main!(benches);
