#!/bin/sh
# A/B comparison of node binaries (see docs/datapath.md, "What each step bought").
#
#   sudo scripts/ab-nodes.sh ROUNDS BINARY... [-- NODE FLAGS]
#
# For each round and each binary in turn: two namespaces joined by a veth pair (198.18.90.1/24 –
# .2/24), node A and node B (B dials A), one iperf3 TCP stream A -> B through the overlay for $SECS
# seconds (default 5) with 100 pings A -> B during the flow (and 200 before it, idle), then each node's CPU seconds per Gbit
# moved (/proc/PID/stat) and A's peak RSS. Binaries alternate, so a noisy machine hits all alike.
# Everything it creates is removed on exit. Needs root, iproute2, iperf3, ping, python3.
set -eu
. "$(dirname "$0")/lib/pair.sh"

ROUNDS=$1
shift
BINS=""
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
    BINS="$BINS $(realpath "$1")"
    shift
done
[ "${1:-}" = "--" ] && shift
FLAGS="$*"
SECS=${SECS:-5}
A=hyab-a-$$
B=hyab-b-$$
DIR=$(mktemp -d /tmp/hyab.XXXXXX)
PIDS=""

stop_nodes() {
    for p in $PIDS; do kill "$p" 2>/dev/null || true; done
    for p in $PIDS; do
        i=0
        while kill -0 "$p" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    done
    PIDS=""
}
cleanup() {
    stop_nodes
    ip netns del "$A" 2>/dev/null || true
    ip netns del "$B" 2>/dev/null || true
    rm -rf "$DIR"
}
trap cleanup EXIT INT TERM

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

pair_net hyab 198.18.90

for r in $(seq "$ROUNDS"); do
    for BIN in $BINS; do
        rm -f "$DIR"/*
        # shellcheck disable=SC2086 # FLAGS is a list of flags
        pair_start "$BIN" "$DIR" 198.18.90 $FLAGS
        pair_wait 10 || { echo "with $BIN" >&2; exit 1; }
        IDLE=$(ip netns exec "$A" ping -6 -q -c 200 -i 0.01 "$ADDR_B" | tail -1 | cut -d/ -f5)
        ip netns exec "$B" iperf3 -s -1 >/dev/null 2>&1 &
        SRV=$!
        i=0
        until ip netns exec "$B" ss -ltn | grep -q ':5201 '; do
            i=$((i + 1)); [ $i -lt 100 ] || exit 1; sleep 0.05
        done
        a0=$(ticks "$PA"); b0=$(ticks "$PB")
        ip netns exec "$A" iperf3 -c "$ADDR_B" -t "$SECS" -J >"$DIR/iperf3.json" &
        CLI=$!
        sleep 1
        RTT=$(ip netns exec "$A" ping -6 -c 100 -i 0.02 "$ADDR_B" | tail -1 | cut -d/ -f5)
        wait "$CLI"
        wait "$SRV" || true
        a1=$(ticks "$PA"); b1=$(ticks "$PB")
        HWM=$(awk '/VmHWM/ {print $2}' "/proc/$PA/status")
        python3 - "$DIR/iperf3.json" "$BIN $FLAGS" "$IDLE" "$RTT" "$a0" "$a1" "$b0" "$b1" "$HWM" "$(getconf CLK_TCK)" <<'PY'
import json, sys
f, name, idle, rtt, a0, a1, b0, b1, hwm, hz = sys.argv[1:]
end = json.load(open(f))["end"]["sum_received"]
gbit = end["bytes"] * 8 / 1e9
hz = float(hz)
print(f"{name}: {end['bits_per_second'] / 1e9:.2f} Gbit/s  rtt idle {idle} ms, under load {rtt} ms  "
      f"CPU s/Gbit A {(float(a1) - float(a0)) / hz / gbit:.3f} B {(float(b1) - float(b0)) / hz / gbit:.3f}  "
      f"A peak RSS {int(hwm) / 1024:.1f} MB")
PY
        stop_nodes
    done
done
