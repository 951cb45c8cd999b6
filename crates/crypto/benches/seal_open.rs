//! Seal and open throughput of the shipped cipher, in place, for a full TUN packet and a 64 KiB
//! payload, in thread CPU time. `cargo bench -p hypha-crypto --bench seal_open`

use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

#[path = "common/cpu_time.rs"]
mod cpu_time;
use cpu_time::CpuTime;
use hypha_crypto::{SharedSecret, SEAL_OVERHEAD};

fn seal_open(c: &mut Criterion<CpuTime>) {
    let cipher = SharedSecret::from_bytes([0x5a; 32]).cipher();
    let mut g = c.benchmark_group("peer_cipher");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    for size in [1400usize, 65536] {
        g.throughput(Throughput::Bytes(size as u64));
        let mut buf = vec![0u8; size + SEAL_OVERHEAD];
        g.bench_with_input(BenchmarkId::new("seal", size), &size, |b, &size| {
            b.iter(|| cipher.seal_in_place(black_box(&mut buf), size).unwrap())
        });
        let mut sealed = vec![0u8; size + SEAL_OVERHEAD];
        cipher.seal_in_place(&mut sealed, size).unwrap();
        let mut work = sealed.clone();
        g.bench_with_input(BenchmarkId::new("open", size), &size, |b, _| {
            b.iter(|| {
                // Opening decrypts in place, so each round starts from the sealed bytes; the
                // copy is measured too and makes this a slight underestimate.
                work.copy_from_slice(&sealed);
                cipher
                    .open_in_place(black_box(&mut work))
                    .map(|p| p.len())
                    .unwrap()
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(CpuTime);
    targets = seal_open
}
criterion_main!(benches);
