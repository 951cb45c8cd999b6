#!/usr/bin/env bash
# TUN I/O benchmark (run as root): iperf3 single-stream TCP between two network namespaces over
#   1. a raw veth pair (the physical reference),
#   2. the TUN-to-TUN forwarder with offloads (crates/tun/examples/forwarder.rs),
#   3. the same forwarder with --no-offload,
# interleaved run by run in the same invocation, then prints medians and ratios.
#
#   RUNS=5 SECS=5 scripts/bench-forwarder.sh
#
# NICE=-10 runs the measured processes (iperf3 and the forwarder) at that priority, which
# approximates a quiet machine when other work shares the cores (the same for every path).
#
# Traffic stays inside the two namespaces this script creates (fd00::/8 addresses only); both are
# deleted on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-5}
SECS=${SECS:-5}
NICE=${NICE:-0}
TARGET=${CARGO_TARGET_DIR:-target}

[ "$(id -u)" -eq 0 ] || { echo "needs root (network namespaces)" >&2; exit 1; }
for t in ip iperf3 python3; do command -v $t >/dev/null || { echo "missing $t" >&2; exit 1; }; done

cargo build --release -q -p hypha-tun --example forwarder
FWD="$TARGET/release/examples/forwarder"

NA="hy-bench-a-$$"
NB="hy-bench-b-$$"
VA="hvb$$a"
VB="hvb$$b"
WORK=$(mktemp -d)
SRV_PID=""

cleanup() {
    [ -n "$SRV_PID" ] && kill "$SRV_PID" 2>/dev/null && wait "$SRV_PID" 2>/dev/null || true
    ip netns del "$NA" 2>/dev/null || true
    ip netns del "$NB" 2>/dev/null || true
    ip link del "$VA" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

ip netns add "$NA"
ip netns add "$NB"
ip -n "$NA" link set lo up
ip -n "$NB" link set lo up
ip link add "$VA" netns "$NA" type veth peer name "$VB" netns "$NB"
ip -n "$NA" addr add fd00:2::1/64 dev "$VA" nodad
ip -n "$NB" addr add fd00:2::2/64 dev "$VB" nodad
ip -n "$NA" link set "$VA" up
ip -n "$NB" link set "$VB" up

nice -n "$NICE" ip netns exec "$NB" iperf3 -s -p 5201 >/dev/null 2>&1 &
SRV_PID=$!

wait_for() { # wait_for <seconds> <command...>
    local deadline=$((SECONDS + $1)); shift
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || { echo "timed out waiting for: $*" >&2; return 1; }
        sleep 0.1
    done
}

iperf() { # iperf <dst> <label> <run>: prints Gbit/s received (the JSON stays in $WORK)
    local json="$WORK/$2-$3.json"
    nice -n "$NICE" ip netns exec "$NA" timeout $((SECS + 30)) iperf3 -c "$1" -p 5201 -t "$SECS" -J >"$json" || return 1
    python3 -c 'import json,sys; print("%.3f" % (json.load(open(sys.argv[1]))["end"]["sum_received"]["bits_per_second"]/1e9))' "$json"
}

wait_for 10 ip netns exec "$NA" iperf3 -c fd00:2::2 -p 5201 -t 1 -J

forwarded() { # forwarded <label> <run> [forwarder flags]: prints Gbit/s received
    local label=$1 run=$2 pid r
    shift 2
    nice -n "$NICE" "$FWD" --ns-a "$NA" --ns-b "$NB" "$@" >"$WORK/fwd-$label-$run.log" 2>&1 &
    pid=$!
    if wait_for 10 ip netns exec "$NA" ping -6 -c 1 -W 1 fd00:1::2 &&
        r=$(iperf fd00:1::2 "$label" "$run"); then
        kill -INT "$pid"
        wait "$pid"
        echo "$r"
    else
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        cat "$WORK/fwd-$label-$run.log" >&2
        return 1
    fi
}

echo "$(date -u '+%F %T') UTC, $(nproc) cores, kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg), nice $NICE"
printf "%-4s %10s %10s %10s   (Gbit/s, %s s single-stream TCP)\n" run veth offload plain "$SECS"
for run in $(seq 1 "$RUNS"); do
    v=$(iperf fd00:2::2 veth "$run") || { echo "veth run failed" >&2; exit 1; }
    o=$(forwarded offload "$run") || { echo "offloaded forwarder run failed" >&2; exit 1; }
    p=$(forwarded plain "$run" --no-offload) || { echo "plain forwarder run failed" >&2; exit 1; }
    printf "%-4s %10s %10s %10s\n" "$run" "$v" "$o" "$p"
    echo "$v $o $p" >>"$WORK/results"
done

echo
echo "forwarder counters, last runs:"
sed -n 's/^/  offload  /p' "$WORK/fwd-offload-$RUNS.log" | grep -v ready
sed -n 's/^/  plain    /p' "$WORK/fwd-plain-$RUNS.log" | grep -v ready
echo

python3 - "$WORK/results" "$SECS" "$RUNS" "$WORK" <<'PY'
import json, re, statistics, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1])]
veth, off, plain = (statistics.median(c) for c in zip(*rows))

def cpu_per_gb(label):
    """Forwarder CPU seconds (user+sys) per GB delivered, median over the runs."""
    out = []
    for run in range(1, int(sys.argv[3]) + 1):
        log = open(f"{sys.argv[4]}/fwd-{label}-{run}.log").read()
        m = re.search(r"cpu user ([0-9.]+) s sys ([0-9.]+) s", log)
        gb = json.load(open(f"{sys.argv[4]}/{label}-{run}.json"))["end"]["sum_received"]["bytes"] / 1e9
        if m and gb > 0:
            out.append((float(m.group(1)) + float(m.group(2))) / gb)
    return statistics.median(out) if out else float("nan")

print(f"| path (iperf3 -t {sys.argv[2]}, median of {sys.argv[3]}) | Gbit/s |")
print("|---|---|")
print(f"| raw veth between the namespaces | {veth:.2f} |")
print(f"| TUN forwarder, offloads | {off:.2f} |")
print(f"| TUN forwarder, --no-offload | {plain:.2f} |")
print()
co, cp = cpu_per_gb("offload"), cpu_per_gb("plain")
print(f"forwarder CPU per GB forwarded (user+sys, median): offloads {co:.2f} s, no-offload {cp:.2f} s ({cp / co:.1f}x)")
print()
print(f"offloaded / veth       = {off / veth:.2f}  (target >= 0.50)")
print(f"offloaded / no-offload = {off / plain:.2f}  (target >= 3.0)")
PY
