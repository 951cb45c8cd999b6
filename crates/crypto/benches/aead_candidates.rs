//! AES-256-GCM candidates side by side, with `openssl speed` measured in the same run.
//!
//! `cargo bench -p hypha-crypto --features bench-candidates --bench aead_candidates`
//!
//! Times are the thread's CPU time (see `common/cpu_time.rs`), as `openssl speed` measures.
//! Each candidate seals (encrypts and tags) a buffer in place with a 32-byte key and empty AAD,
//! which is all the data path does per packet. Sizes: 1024 and 16384 (what `openssl speed` is
//! given), 1400 (a full TUN packet) and 65536.

use std::process::Command;
use std::time::Duration;

use criterion::{black_box, criterion_group, BenchmarkId, Criterion, Throughput};

#[path = "common/cpu_time.rs"]
mod cpu_time;
use cpu_time::CpuTime;

const SIZES: [usize; 4] = [1024, 1400, 16384, 65536];
const KEY: [u8; 32] = [0x5a; 32];
// A fixed nonce is fine here: nothing is ever decrypted or sent.
const NONCE: [u8; 12] = [7; 12];

fn candidates(c: &mut Criterion<CpuTime>) {
    let mut g = c.benchmark_group("aes256gcm_seal");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    for size in SIZES {
        g.throughput(Throughput::Bytes(size as u64));
        let mut buf = vec![0u8; size];

        let ring_key = ring::aead::LessSafeKey::new(
            ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &KEY).unwrap(),
        );
        g.bench_with_input(BenchmarkId::new("ring", size), &size, |b, _| {
            b.iter(|| {
                ring_key
                    .seal_in_place_separate_tag(
                        ring::aead::Nonce::assume_unique_for_key(NONCE),
                        ring::aead::Aad::empty(),
                        black_box(&mut buf[..]),
                    )
                    .unwrap()
            })
        });

        let lc_key = aws_lc_rs::aead::LessSafeKey::new(
            aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::AES_256_GCM, &KEY).unwrap(),
        );
        g.bench_with_input(BenchmarkId::new("aws-lc-rs", size), &size, |b, _| {
            b.iter(|| {
                lc_key
                    .seal_in_place_separate_tag(
                        aws_lc_rs::aead::Nonce::assume_unique_for_key(NONCE),
                        aws_lc_rs::aead::Aad::empty(),
                        black_box(&mut buf[..]),
                    )
                    .unwrap()
            })
        });

        use aes_gcm::aead::{AeadInPlace, KeyInit};
        let rc = aes_gcm::Aes256Gcm::new_from_slice(&KEY).unwrap();
        g.bench_with_input(BenchmarkId::new("aes-gcm", size), &size, |b, _| {
            b.iter(|| {
                rc.encrypt_in_place_detached(&NONCE.into(), b"", black_box(&mut buf[..]))
                    .unwrap()
            })
        });
    }
    g.finish();
}

/// `openssl speed -evp aes-256-gcm` (user CPU time, its default) for the sizes it is compared at,
/// printed in the units criterion uses (GiB/s).
fn openssl_baseline() {
    for size in [1024, 16384] {
        let out = Command::new("openssl")
            .args(["speed", "-evp", "aes-256-gcm", "-seconds", "3", "-bytes"])
            .arg(size.to_string())
            .output();
        let Ok(out) = out else {
            println!("openssl baseline: `openssl` not runnable");
            return;
        };
        let text = String::from_utf8_lossy(&out.stdout);
        // Last line: "AES-256-GCM    1234567.89k" in 1000s of bytes per second.
        let kbps = text
            .lines()
            .filter(|l| l.to_ascii_lowercase().starts_with("aes-256-gcm"))
            .filter_map(|l| l.split_whitespace().next_back())
            .filter_map(|v| v.trim_end_matches('k').parse::<f64>().ok())
            .next_back();
        match kbps {
            Some(k) => println!(
                "openssl speed -evp aes-256-gcm -bytes {size}: {:.3} GiB/s",
                k * 1000.0 / (1u64 << 30) as f64
            ),
            None => println!("openssl baseline {size}: could not parse output:\n{text}"),
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(CpuTime);
    targets = candidates
}

fn main() {
    openssl_baseline();
    benches();
    Criterion::default()
        .with_measurement(CpuTime)
        .configure_from_args()
        .final_summary();
    openssl_baseline();
}
