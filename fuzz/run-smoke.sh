#!/usr/bin/env bash
# Builds every fuzz target and runs each for a short, bounded time (FUZZ_SECONDS, default 20).
# A crash or panic fails the run. Works on a stable toolchain through RUSTC_BOOTSTRAP (cargo-fuzz
# passes -Z sanitizer flags).
set -euo pipefail
cd "$(dirname "$0")"
secs="${FUZZ_SECONDS:-20}"
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked --quiet
fi
export RUSTC_BOOTSTRAP=1
targets=$(cargo fuzz list)
cargo fuzz build --release
for t in $targets; do
    echo "fuzz: $t for ${secs}s"
    cargo fuzz run --release "$t" -- -max_total_time="$secs" -rss_limit_mb=2048 >/tmp/fuzz-"$t".log 2>&1 || {
        tail -40 /tmp/fuzz-"$t".log
        echo "fuzz target $t failed"
        exit 1
    }
    grep -E "^Done|#[0-9]+.*DONE" /tmp/fuzz-"$t".log | tail -1 || true
done
