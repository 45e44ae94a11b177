#!/usr/bin/env bash
# `make demo`: a client and a server network namespace joined only through
# tunwall (configs/demo.toml), permitted and blocked traffic, the flow table
# and the counters, then everything torn down.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=./target/release/tunwall
suffix=$$
client="tw-demo-c$suffix"
server="tw-demo-s$suffix"
work=$(mktemp -d /tmp/tunwall-demo.XXXXXX)
config="$work/demo.toml"
socket="$work/control.sock"
pid=""

cleanup() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    for p in $(ip netns pids "$client" 2>/dev/null) $(ip netns pids "$server" 2>/dev/null); do
        kill "$p" 2>/dev/null || true
    done
    ip netns del "$client" 2>/dev/null || true
    ip netns del "$server" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
in_client() { ip netns exec "$client" "$@"; }
in_server() { ip netns exec "$server" "$@"; }

# The demo policy with names unique to this run.
sed -e "s/tw-demo-client/$client/; s/tw-demo-server/$server/" \
    -e "s/tw-demo-lan/twdl$suffix/; s/tw-demo-wan/twdw$suffix/" \
    -e "s#/run/tunwall/demo.sock#$socket#" configs/demo.toml > "$config"

step "the policy (tunwall check -c configs/demo.toml)"
$bin check -c "$config" | sed -n '/^policy/,$p'

step "namespaces $client (client, 198.18.1.10) and $server (server, 198.18.2.20), joined only through tunwall"
ip netns add "$client"
ip netns add "$server"
ip -n "$client" link set lo up
ip -n "$server" link set lo up
$bin run -c "$config" 2>"$work/tunwall.log" &
pid=$!
for _ in $(seq 100); do [ -S "$socket" ] && break; sleep 0.1; done
[ -S "$socket" ] || { cat "$work/tunwall.log"; echo "tunwall did not start" >&2; exit 1; }
grep -h "port open\|running" "$work/tunwall.log" | sed 's/^/  /' || true

step "ping client → server (permitted: auth_connect default permit)"
in_client ping -c 3 -i 0.2 198.18.2.20
in_client ping -6 -c 2 -i 0.2 fd00:2::20

step "TCP transfer client → server with iperf3 (permitted)"
in_server iperf3 -s -1 -B 198.18.2.20 >/dev/null 2>&1 &
disown
sleep 0.5
in_client iperf3 -c 198.18.2.20 -t 3 | grep -E "sender|receiver"

step "telnet client → server:23 (refused by the filter no-telnet)"
in_server python3 -c 'import socket;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.bind(("198.18.2.20",23));s.listen();s.accept()' &
disown
sleep 0.5
in_client python3 -c 'import socket
try:
    socket.create_connection(("198.18.2.20", 23), timeout=2); print("  connected?!")
except Exception as e:
    print("  refused:", type(e).__name__)'

step "inbound attempts server → client (refused: auth_recv_accept default block)"
in_client python3 -c 'import socket;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.bind(("198.18.1.10",8080));s.listen();s.accept()' &
disown
sleep 0.5
in_server python3 -c 'import socket
try:
    socket.create_connection(("198.18.1.10", 8080), timeout=2); print("  connected?!")
except Exception as e:
    print("  TCP connect to 198.18.1.10:8080 refused:", type(e).__name__)'
in_server ping -c 1 -W 1 198.18.1.10 >/dev/null && echo "  ping answered?!" || echo "  ping to 198.18.1.10: no answer"

step "tunwall flows"
$bin flows -s "$socket"

step "tunwall stats"
$bin stats -s "$socket"

step "shutting down (SIGTERM): every flow closed with reason shutdown, devices removed"
kill -TERM "$pid"
wait "$pid" && echo "  tunwall exited 0"
pid=""
ip -n "$client" link show "twdl$suffix" >/dev/null 2>&1 && echo "  device left behind?!" || echo "  devices removed"
