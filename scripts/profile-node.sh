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
. "$(dirname "$0")/lib/pair.sh"

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

pair_net hyprof 198.18.70
# shellcheck disable=SC2086 # OFFLOAD is empty or one flag
pair_start "$BIN" "$OUT" 198.18.70 $OFFLOAD
pair_wait 30 || { echo "see $OUT/a.log" >&2; exit 1; }

ip netns exec "$B" iperf3 -s -1 -B "$ADDR_B" >/dev/null 2>&1 &
PIDS="$PIDS $!"
sleep 1
ip netns exec "$A" "$BIN" stats --json >"$OUT/stats-a-before.json"
ip netns exec "$B" "$BIN" stats --json >"$OUT/stats-b-before.json"

# Skip iperf3's first second (slow start), sample the rest.
ip netns exec "$A" iperf3 -c "$ADDR_B" -t $((SECS + 2)) ${IPERF_ARGS:-} -J >"$OUT/iperf3.json" &
IPERF=$!
sleep 1
perf record -F "$FREQ" --call-graph dwarf,16384 -p "$PA" -o "$OUT/a.perf.data" -- sleep "$SECS" 2>"$OUT/perf-a.log" &
PERF_A=$!
perf record -F "$FREQ" --call-graph dwarf,16384 -p "$PB" -o "$OUT/b.perf.data" -- sleep "$SECS" 2>"$OUT/perf-b.log" &
PERF_B=$!
wait "$PERF_A" "$PERF_B" "$IPERF"

ip netns exec "$A" "$BIN" stats --json >"$OUT/stats-a-after.json"
ip netns exec "$B" "$BIN" stats --json >"$OUT/stats-b-after.json"
ip netns exec "$A" "$BIN" stats
ip netns exec "$B" "$BIN" stats
jq -r '.end.sum_received | "iperf3 A -> B: \(.bits_per_second / 1e9 * 100 | round / 100) Gbit/s over \(.seconds | round) s"' \
    "$OUT/iperf3.json"
echo "profiles: $OUT/a.perf.data (sender), $OUT/b.perf.data (receiver)"
