#!/usr/bin/env bash
# Flow churn against the daemon's memory (SPEC §14): N UDP flows, each a
# new source port, through a gateway whose table holds far fewer, with an
# `events` subscriber that never reads. Prints the daemon's RSS after each
# tenth of the flows; bounded pipelines keep it flat once the table is full.
#
#   sudo bench/churn.sh [FLOWS] [TUNWALL]      (defaults: 1000000, target/release/tunwall)
set -euo pipefail
flows=${1:-1000000}
bin=${2:-target/release/tunwall}
tag=$$
client=twcc$tag server=twcs$tag dir=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    ip netns del "$client" 2>/dev/null || true
    ip netns del "$server" 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT
ip netns add "$client"
ip netns add "$server"
cat >"$dir/churn.toml" <<CONF
[gateway]
workers = 2
control_socket = "$dir/control.sock"

[[port]]
name = "lan"
device = "twcl$tag"
zone = "inside"
netns = "$client"
addresses = ["198.18.1.10/24"]
kernel_routes = ["198.18.2.0/24"]
routes = ["198.18.1.0/24"]

[[port]]
name = "wan"
device = "twcw$tag"
zone = "outside"
netns = "$server"
addresses = ["198.18.2.20/24"]
kernel_routes = ["198.18.1.0/24"]
routes = ["198.18.2.0/24"]

[flows]
max_flows = 20000
udp_idle = "2s"
CONF
RUST_LOG=warn "$bin" run -c "$dir/churn.toml" 2>"$dir/log" &
pid=$!
pids+=("$pid")
for _ in $(seq 50); do [ -S "$dir/control.sock" ] && break; sleep 0.1; done
# A subscriber that never reads: the hub must cut it off, not stall or grow.
python3 -c "
import socket,time,sys
s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.send(b'{\"command\":\"events\"}\n'); time.sleep(3600)
" "$dir/control.sock" &
pids+=($!)
rss() { awk '/VmRSS/ {print $2}' "/proc/$pid/status"; }
echo "flows sent,daemon RSS (KiB),flows active,events dropped"
echo "0,$(rss),0,0"
step=$((flows / 10))
for i in $(seq 0 9); do
    ip netns exec "$client" python3 -c "
import socket,sys
start,n=int(sys.argv[1]),int(sys.argv[2])
for k in range(start,start+n):
    s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)
    s.sendto(b'x',('198.18.2.20',1024+k%60000))
    s.close()
" $((i * step)) "$step"
    stats=$("$bin" stats -s "$dir/control.sock" --json)
    active=$(python3 -c "import json,sys; s=json.loads(sys.argv[1]); print(s['flows_active'], s['events_dropped'])" "$stats")
    echo "$(((i + 1) * step)),$(rss),${active// /,}"
done
