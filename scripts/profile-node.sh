#!/bin/sh
# Profiles two hypha nodes under a bulk TCP flow (see docs/profiling.md).
#
#   cargo build --profile profiling -p hypha
#   sudo scripts/profile-node.sh [--no-offload] [SECS]
#
# Two namespaces joined by a veth pair (198.18.70.1/24 – .2/24), node A listening, node B dialling
# it, iperf3 from A to B's overlay address for SECS seconds (default 10) while `perf record`
# samples both node processes. Leaves in $OUT (default /tmp/hypha-profile[-no-offload]):
# a.perf.data (sender) and b.perf.data (receiver), iperf3.json, stats-{a,b}-{before,after}.json
# and the node logs. Everything it creates is removed on exit.
set -eu

BIN=${BIN:-target/profiling/hypha}
OFFLOAD=""
if [ "${1:-}" = "--no-offload" ]; then
    OFFLOAD="--no-offload"
    shift
fi
SECS=${1:-10}
OUT=${OUT:-/tmp/hypha-profile${OFFLOAD:+-no-offload}}
FREQ=${FREQ:-499}
A=hyprof-a-$$
B=hyprof-b-$$

[ -x "$BIN" ] || { echo "no $BIN: cargo build --profile profiling -p hypha" >&2; exit 1; }
BIN=$(realpath "$BIN")
mkdir -p "$OUT"
rm -f "$OUT"/*.perf.data

PIDS=""
cleanup() {
    for p in $PIDS; do kill "$p" 2>/dev/null || true; done
    sleep 1
    ip netns del "$A" 2>/dev/null || true
    ip netns del "$B" 2>/dev/null || true
}
trap cleanup EXIT INT TERM

ip netns add "$A"
ip netns add "$B"
ip link add hyprof-a netns "$A" type veth peer name hyprof-b netns "$B"
ip -n "$A" addr add 198.18.70.1/24 dev hyprof-a
ip -n "$B" addr add 198.18.70.2/24 dev hyprof-b
for ns in "$A" "$B"; do
    ip -n "$ns" link set lo up
done
ip -n "$A" link set hyprof-a up
ip -n "$B" link set hyprof-b up

"$BIN" -k "$OUT/a.key" generate-keys --force >/dev/null
"$BIN" -k "$OUT/b.key" generate-keys --force >/dev/null
addr_of() { "$BIN" -k "$1" inspect --json | sed -n 's/.*"address": *"\([^"]*\)".*/\1/p'; }
ADDR_B=$(addr_of "$OUT/b.key")

# `ip netns exec` execs the program, so $! is the node's pid.
ip netns exec "$A" "$BIN" -k "$OUT/a.key" --disable-peer-discovery $OFFLOAD 2>"$OUT/a.log" &
PID_A=$!
PIDS="$PID_A"
ip netns exec "$B" "$BIN" -k "$OUT/b.key" --disable-peer-discovery $OFFLOAD \
    --peers tcp://198.18.70.1:9651 2>"$OUT/b.log" &
PID_B=$!
PIDS="$PIDS $PID_B"

i=0
until ip netns exec "$A" ping -6 -c 1 -W 1 "$ADDR_B" >/dev/null 2>&1; do
    i=$((i + 1))
    [ $i -lt 30 ] || { echo "no route from A to B in 30 s; see $OUT/a.log" >&2; exit 1; }
    sleep 1
done

ip netns exec "$B" iperf3 -s -1 -B "$ADDR_B" >/dev/null 2>&1 &
PIDS="$PIDS $!"
sleep 1
ip netns exec "$A" "$BIN" stats --json >"$OUT/stats-a-before.json"
ip netns exec "$B" "$BIN" stats --json >"$OUT/stats-b-before.json"

# Skip iperf3's first second (slow start), sample the rest.
ip netns exec "$A" iperf3 -c "$ADDR_B" -t $((SECS + 2)) -J >"$OUT/iperf3.json" &
IPERF=$!
sleep 1
perf record -F "$FREQ" --call-graph dwarf,16384 -p "$PID_A" -o "$OUT/a.perf.data" -- sleep "$SECS" 2>"$OUT/perf-a.log" &
PERF_A=$!
perf record -F "$FREQ" --call-graph dwarf,16384 -p "$PID_B" -o "$OUT/b.perf.data" -- sleep "$SECS" 2>"$OUT/perf-b.log" &
PERF_B=$!
wait "$PERF_A" "$PERF_B" "$IPERF"

ip netns exec "$A" "$BIN" stats --json >"$OUT/stats-a-after.json"
ip netns exec "$B" "$BIN" stats --json >"$OUT/stats-b-after.json"
ip netns exec "$A" "$BIN" stats
ip netns exec "$B" "$BIN" stats
jq -r '.end.sum_received | "iperf3 A -> B: \(.bits_per_second / 1e9 * 100 | round / 100) Gbit/s over \(.seconds | round) s"' \
    "$OUT/iperf3.json"
echo "profiles: $OUT/a.perf.data (sender), $OUT/b.perf.data (receiver)"
