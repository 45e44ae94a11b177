#!/usr/bin/env bash
# `make demo-vpn`: tunwall as a VPN gateway (configs/vpn-gateway.toml) in
# network namespaces — a gateway with wireguard-go and policy routing, a
# server behind it, VPN clients alice, bob and carol (a peer of no
# identity) — then permitted and refused traffic per identity, iperf3,
# `tunwall identities` and `tunwall flows`, a peer removed live, and
# everything torn down, also on failure.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=$PWD/target/release/tunwall
work=$(mktemp -d /tmp/tunwall-demo-vpn.XXXXXX)
tunwall=""   # its PID while it runs
socket="$work/control.sock"
config="$work/vpn-gateway.toml"

cleanup() {
    [ -z "$tunwall" ] || { kill -TERM "$tunwall" && wait "$tunwall"; } 2>/dev/null || true
    if [ -f "$work/env" ]; then
        for ns in "$NS_SRV" "$NS_ALICE" "$NS_BOB" "$NS_CAROL"; do
            for p in $(ip netns pids "$ns" 2>/dev/null); do
                grep -qx "$p" "$work/pids" 2>/dev/null || kill "$p" 2>/dev/null || true
            done
        done
    fi
    ./scripts/vpn-topology.sh down "$work" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

step "the topology (scripts/vpn-topology.sh): gateway, server 198.18.200.2, VPN clients alice .2, bob .3, carol .4 on 198.18.100.0/24"
./scripts/vpn-topology.sh up "$work" "$$"
# shellcheck source=/dev/null
. "$work/env"
ip -n "$NS_GW" rule show | sed 's/^/  /'
echo "  table 100: $(ip -n "$NS_GW" route show table 100)"
echo "  table 101: $(ip -n "$NS_GW" route show table 101)"

# The example with this run's names and keys; tunwall runs inside the
# gateway namespace, which plays the gateway host.
sed -e "s/\"tw-vpn\"/\"$TUN_VPN\"/; s/\"tw-srv\"/\"$TUN_SRV\"/; s/\"wg0\"/\"$WG_GW\"/g" \
    -e "s#QUxJQ0VBTElDRUFMSUNFQUxJQ0VBTElDRUFMSUNFQUw=#$KEY_ALICE#g" \
    -e "s#Qk9CQk9CQk9CQk9CQk9CQk9CQk9CQk9CQk9CQk9CQk8=#$KEY_BOB#g" \
    -e "s#/run/tunwall/control.sock#$socket#" configs/vpn-gateway.toml > "$config"

step "the policy (tunwall check -c configs/vpn-gateway.toml)"
$bin check -c "$config" | grep -E "^(port|wireguard)|^ +[0-9]+\."

step "tunwall in the gateway namespace; identities read from $WG_GW"
ip netns exec "$NS_GW" "$bin" run -c "$config" 2>"$work/tunwall.log" &
tunwall=$!
for _ in $(seq 100); do [ -S "$socket" ] && break; sleep 0.1; done
[ -S "$socket" ] || { cat "$work/tunwall.log"; echo "tunwall did not start" >&2; exit 1; }
$bin identities -s "$socket"

step "servers on 198.18.200.2: app A on 7001, app B on 7002"
for port in 7001 7002; do
    in_ns "$NS_SRV" python3 -c "import socket
s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.bind(('198.18.200.2',$port));s.listen(16)
while True: s.accept()[0].close()" &
    disown
done
sleep 0.5

step "who reaches what over WireGuard (alice: A only, bob: B only, carol: nothing)"
for c in alice bob carol; do
    ns_var="NS_${c^^}"
    for port in 7001 7002; do
        printf '  %-6s → 198.18.200.2:%s  ' "$c" "$port"
        in_ns "${!ns_var}" python3 -c "import socket
try:
    socket.create_connection(('198.18.200.2', $port), timeout=1); print('connected')
except Exception as e:
    print('refused (' + type(e).__name__ + ')')"
    done
    printf '  %-6s ping 198.18.200.2       ' "$c"
    in_ns "${!ns_var}" ping -c 1 -W 1 -q 198.18.200.2 >/dev/null && echo "answered" || echo "no answer"
done

step "iperf3 alice → server through WireGuard and tunwall"
in_ns "$NS_SRV" iperf3 -s -1 -B 198.18.200.2 >/dev/null 2>&1 &
disown
sleep 0.5
in_ns "$NS_ALICE" iperf3 -c 198.18.200.2 -t 2 | grep -E "sender|receiver"

step "tunwall flows (identities of each endpoint in the last column)"
$bin flows -s "$socket"

step "bob's peer removed from $WG_GW (wg set … remove): his identity empties within one refresh"
in_ns "$NS_GW" wg set "$WG_GW" peer "$KEY_BOB" remove
for _ in $(seq 70); do
    $bin identities -s "$socket" --json | grep -q '"addresses":\[\],[^]]*"name":"bob"' && break
    sleep 0.1
done
sed 's/\x1b\[[0-9;]*m//g' "$work/tunwall.log" | grep -o 'identities changed.*' | sed 's/^/  /' || true
$bin identities -s "$socket"

step "tunwall stats"
$bin stats -s "$socket"

step "shutting down"
kill -TERM "$tunwall"
wait "$tunwall" && echo "  tunwall exited 0"
tunwall=""
