//! Offload throughput (filled in with split/coalesce benchmarks).
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn checksum(c: &mut Criterion) {
    let data: Vec<u8> = (0..65536u32).map(|i| i as u8).collect();
    let mut g = c.benchmark_group("checksum");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("fast", |b| b.iter(|| wire::checksum::sum(&data)));
    g.bench_function("rfc1071_reference", |b| {
        b.iter(|| wire::checksum::reference::sum(&data))
    });
    g.finish();
}

criterion_group!(benches, checksum);
criterion_main!(benches);
