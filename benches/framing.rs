//! The line framing alone: how fast a read buffer becomes lines.
//! Run: `cargo bench --bench framing`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sockline::connection::split_line;
use std::hint::black_box;

fn lines(data: &[u8]) -> usize {
    let mut rest = data;
    let mut count = 0;
    while let Some((line, used)) = split_line(rest) {
        count += line.len();
        rest = &rest[used..];
    }
    count
}

fn framing(c: &mut Criterion) {
    let mut group = c.benchmark_group("split_line");
    for (name, line) in [
        ("short", &b"hello\r\n"[..]),
        ("120 bytes", &[b'x'; 120][..]),
    ] {
        let mut one = line.to_vec();
        if !one.ends_with(b"\n") {
            one.push(b'\n');
        }
        let data = one.repeat(16 * 1024 / one.len());
        group.throughput(Throughput::Bytes(data.len() as u64));
        group.bench_function(name, |b| b.iter(|| lines(black_box(&data))));
    }
    group.finish();
}

criterion_group!(benches, framing);
criterion_main!(benches);
