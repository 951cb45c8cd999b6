#!/bin/bash
# Soak: one node (A, the hub) under mixed load for SECS seconds (default 1800), sampling its RSS,
# file descriptors and threads, and its peers, links and unproven connections, every minute.
#
#   sudo bash scripts/soak.sh [HYPHA_BIN] [SECS]
#
# Namespaces (removed at the end, also on Ctrl-C): A hub; B and C peers of A with traffic between
# them through A (iperf3 at 100 Mbit/s in 50 s rounds, echoes every 0.2 s); D a peer killed and
# started again every 45 s; F an attacker: every minute 3,000 idle connections (every other
# having sent one byte) held 20 s, and, each from an address of its own, 50 connections of
# random bytes, 100 connections of random bytes after one valid frame, and a connection sending
# 20,000 route requests for random subnets. Every 90 s the B-A link goes down for 3 s. Underlay 198.18.71-74.0/24.
# Prints one line a minute and, at the end, start, end and the largest value of each figure.
set -u
H=${1:-./target/release/hypha}
SECS=${2:-1800}
H=$(readlink -f "$H")
W=$(mktemp -d /tmp/hypha-soak.XXXXXX)
NS="sk-a sk-b sk-c sk-d sk-f"
cleanup() {
    pkill -f "$W/" 2>/dev/null
    for n in $NS; do ip netns pids "$n" 2>/dev/null | xargs -r kill -9 2>/dev/null; done
    sleep 0.5
    for n in $NS; do ip netns del "$n" 2>/dev/null; done
}
trap 'cleanup; exit 130' INT TERM
cleanup
for n in $NS; do ip netns add "$n"; ip -n "$n" link set lo up; done
veth() { # veth NET NS_A NS_B: 198.18.NET.1 in NS_A, .2 in NS_B
    ip link add "s$1a" type veth peer name "s$1b"
    ip link set "s$1a" netns "$2"; ip link set "s$1b" netns "$3"
    ip -n "$2" addr add "198.18.$1.1/24" dev "s$1a"; ip -n "$3" addr add "198.18.$1.2/24" dev "s$1b"
    ip -n "$2" link set "s$1a" up; ip -n "$3" link set "s$1b" up
}
veth 71 sk-a sk-b; veth 72 sk-a sk-c; veth 73 sk-a sk-d; veth 74 sk-a sk-f
ip -n sk-f addr add 198.18.74.3/24 dev s74b; ip -n sk-f addr add 198.18.74.4/24 dev s74b
node() { # node NS NAME [args]: a hypha in NS, key and log in $W
    local ns=$1 name=$2; shift 2
    ip netns exec "$ns" "$H" -k "$W/$name.key" --disable-peer-discovery --tun-name hysk "$@" \
        >>"$W/$name.log" 2>&1 &
    echo $!
}
addr_of() { "$H" -k "$W/$1.key" inspect --json | python3 -c 'import json,sys;print(json.load(sys.stdin)["address"])'; }
for k in a b c d; do "$H" -k "$W/$k.key" generate-keys >/dev/null; done
APID=$(node sk-a a)
sleep 1
node sk-b b --peers tcp://198.18.71.1:9651 >/dev/null
node sk-c c --peers tcp://198.18.72.1:9651 >/dev/null
DPID=$(node sk-d d --peers tcp://198.18.73.1:9651)
CADDR=$(addr_of c)

# Traffic B -> C through A, and echoes.
ip netns exec sk-c sh -c "while :; do iperf3 -s -1 -p 5301 >/dev/null 2>&1; done" &
ip netns exec sk-b sh -c "while :; do iperf3 -c $CADDR -p 5301 -t 50 -b 100M >/dev/null 2>&1; sleep 1; done" &
ip netns exec sk-b sh -c "while :; do ping -6 -q -i 0.2 -c 300 $CADDR >/dev/null 2>&1; done" &

# The attacker.
cat >"$W/attack.py" <<'PY'
import os, random, socket, struct, sys, time
T = ("198.18.74.1", 9651)
# Each kind of attack from its own address, so the per-source cap on idle connections does not
# keep the garbage and the route requests away from the node.
IDLE, GARBAGE, REQUESTS = "198.18.74.2", "198.18.74.3", "198.18.74.4"
def conn(src=IDLE):
    s = socket.socket(); s.settimeout(3); s.bind((src, 0)); s.connect(T); return s
def rr(subnet):
    tlv = bytes([9, 11, 0, 2, 64]) + subnet
    return bytes([1, 1, 0, 0, 42, 3]) + struct.pack(">H", len(tlv)) + tlv
while True:
    held = []
    for i in range(3000):
        try:
            s = conn()
            if i % 2 == 0: s.send(b"\x01")
            held.append(s)
        except OSError: pass
    for _ in range(50):
        try: conn(GARBAGE).send(os.urandom(random.randint(1, 4000)))
        except OSError: pass
    for _ in range(100):
        try: conn(GARBAGE).send(rr(os.urandom(8)) + os.urandom(500))
        except OSError: pass
    try:
        s = conn(REQUESTS)
        for _ in range(20000):
            s.sendall(rr(bytes([4 + random.randint(0, 1)]) + os.urandom(7)))
        s.close()
    except OSError: pass
    time.sleep(20)
    for s in held: s.close()
    time.sleep(35)
PY
ip netns exec sk-f python3 "$W/attack.py" >/dev/null 2>&1 &

sample() {
    local rss fds thr peers unproven
    rss=$(awk '/VmRSS/{print $2}' /proc/$APID/status 2>/dev/null)
    fds=$(ls /proc/$APID/fd 2>/dev/null | wc -l)
    thr=$(awk '/Threads/{print $2}' /proc/$APID/status 2>/dev/null)
    peers=$(ip netns exec sk-a "$H" peers list --json 2>/dev/null | python3 -c 'import json,sys;print(len(json.load(sys.stdin)))' 2>/dev/null)
    unproven=$(ip netns exec sk-a "$H" stats --json 2>/dev/null | python3 -c 'import json,sys;print(json.load(sys.stdin)["peering"]["inboundUnproven"])' 2>/dev/null)
    echo "$1 ${rss:-0} ${fds:-0} ${thr:-0} ${peers:-0} ${unproven:-0}"
}
echo "# min rss_kib fds threads peers unproven" | tee "$W/samples"
sample 0 | tee -a "$W/samples"
start=$(date +%s); next_min=60; next_d=45; next_link=90
while :; do
    t=$(( $(date +%s) - start ))
    [ "$t" -ge "$SECS" ] && break
    if [ ! -d /proc/$APID ]; then echo "node A died"; tail -20 "$W/a.log"; cleanup; exit 1; fi
    if [ "$t" -ge "$next_d" ]; then
        kill -9 "$DPID" 2>/dev/null; DPID=$(node sk-d d --peers tcp://198.18.73.1:9651); next_d=$((next_d + 45))
    fi
    if [ "$t" -ge "$next_link" ]; then
        ip -n sk-a link set s71a down; sleep 3; ip -n sk-a link set s71a up; next_link=$((next_link + 90))
    fi
    if [ "$t" -ge "$next_min" ]; then
        sample $((t / 60)) | tee -a "$W/samples"; next_min=$((next_min + 60))
    fi
    sleep 1
done
sample end | tee -a "$W/samples"
ip netns exec sk-a "$H" stats 2>/dev/null | grep -E "^(drops|inbound|limits|links)"
python3 - "$W/samples" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1]) if not l.startswith("#")]
names = ["rss_kib", "fds", "threads", "peers", "unproven"]
for i, n in enumerate(names, 1):
    v = [int(r[i]) for r in rows]
    print(f"{n:>9}: start {v[0]}, end {v[-1]}, largest {max(v)}; second half largest {max(v[len(v)//2:])}")
PY
cleanup
rm -rf "$W"
