# Two hypha nodes in two namespaces joined by a veth pair, for the measurement scripts
# (ab-nodes.sh, profile-node.sh). Source it; the caller owns the cleanup (stop $PIDS, delete $A and
# $B) and must have set A, B (namespace names) before calling.

# pair_net DEV_PREFIX NET: namespaces $A and $B, veth DEV_PREFIX-a/-b with NET.1/24 and NET.2/24.
pair_net() {
    ip netns add "$A"
    ip netns add "$B"
    ip link add "$1-a" netns "$A" type veth peer name "$1-b" netns "$B"
    ip -n "$A" addr add "$2.1/24" dev "$1-a"
    ip -n "$B" addr add "$2.2/24" dev "$1-b"
    for ns in "$A" "$B"; do ip -n "$ns" link set lo up; done
    ip -n "$A" link set "$1-a" up
    ip -n "$B" link set "$1-b" up
}

# pair_start BIN DIR NET FLAGS...: fresh keys in DIR, node A listening and node B dialling it at
# NET.1, logs in DIR/{a,b}.log. Sets ADDR_B (B's overlay address), PA and PB (the nodes' pids, as
# `ip netns exec` execs the program) and adds them to PIDS.
pair_start() {
    bin=$1 dir=$2 net=$3
    shift 3
    "$bin" -k "$dir/a.key" generate-keys --force >/dev/null
    "$bin" -k "$dir/b.key" generate-keys --force >/dev/null
    ADDR_B=$("$bin" -k "$dir/b.key" inspect --json | sed -n 's/.*"address": *"\([^"]*\)".*/\1/p')
    ip netns exec "$A" "$bin" -k "$dir/a.key" --disable-peer-discovery "$@" 2>"$dir/a.log" &
    PA=$!
    ip netns exec "$B" "$bin" -k "$dir/b.key" --disable-peer-discovery \
        --peers "tcp://$net.1:9651" "$@" 2>"$dir/b.log" &
    PB=$!
    PIDS="${PIDS:-} $PA $PB"
}

# pair_wait SECS: waits until A reaches B over the overlay, at most SECS seconds; fails otherwise.
pair_wait() {
    i=0
    until ip netns exec "$A" ping -6 -c 1 -W 1 "$ADDR_B" >/dev/null 2>&1; do
        i=$((i + 1))
        [ $i -lt $(($1 * 10)) ] || { echo "no overlay route from A to B in $1 s" >&2; return 1; }
        sleep 0.1
    done
}
