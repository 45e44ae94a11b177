#!/usr/bin/env bash
# A VPN gateway topology (SPEC §1 shape (b), §11) for `make demo-vpn` and
# the WireGuard end-to-end tests; README "Deploying as a VPN gateway"
# explains the routing commands below.
#
#   vpn-topology.sh up DIR TAG    build it; names end in TAG (unique per run)
#   vpn-topology.sh down DIR      tear it down (also after a failed up)
#   vpn-topology.sh bypass DIR on|off   route around tunwall (for a baseline)
#
# Namespaces: a gateway (WireGuard interface, tunwall's two TUN ports,
# policy routing), a server behind it on a veth, and three VPN clients —
# alice, bob and carol — each with its own wireguard-go and underlay veth.
# `up` writes DIR/env (names, keys) for the caller, who writes tunwall's
# configuration and starts it in the gateway namespace. wireguard-go runs
# in the foreground; its PIDs are in DIR/pids, and `down` kills only those.
#
# Addresses (all from 198.18.0.0/15):
#   underlay  198.19.N.1 (gateway) ↔ 198.19.N.2 (client N), N = 1, 2, 3
#   VPN       198.18.100.1 (gateway), .2 alice, .3 bob, .4 carol
#   servers   198.18.200.1 (gateway) ↔ 198.18.200.2 (server)
set -euo pipefail

cmd=${1:?usage: vpn-topology.sh up DIR TAG | down DIR | bypass DIR on/off}
dir=${2:?directory}

if [ "$cmd" = up ]; then
    tag=${3:?tag}
    mkdir -p "$dir"
    cat > "$dir/env" <<EOF
NS_GW=twg$tag
NS_SRV=tws$tag
NS_ALICE=twa$tag
NS_BOB=twb$tag
NS_CAROL=twc$tag
WG_GW=wgg$tag
TUN_VPN=twi$tag
TUN_SRV=two$tag
VETH_SRV=tsv$tag
EOF
fi
# shellcheck source=/dev/null
. "$dir/env"
clients="alice bob carol"
client_ns() { case $1 in alice) echo "$NS_ALICE";; bob) echo "$NS_BOB";; carol) echo "$NS_CAROL";; esac; }
client_wg() { echo "wg${1:0:1}${NS_GW#twg}"; }
client_n() { case $1 in alice) echo 1;; bob) echo 2;; carol) echo 3;; esac; }

# Steers VPN traffic into tunwall's inside port and the servers' replies
# into its outside port; tunwall writes each packet out of the other port,
# and the main table takes it from there.
steer() {
    local op=$1
    ip -n "$NS_GW" rule "$op" iif "$WG_GW" lookup 100 pref 100
    ip -n "$NS_GW" rule "$op" iif "$VETH_SRV" lookup 101 pref 101
}

case "$cmd" in
up)
    for ns in "$NS_GW" "$NS_SRV" "$NS_ALICE" "$NS_BOB" "$NS_CAROL"; do
        ip netns add "$ns"
        ip -n "$ns" link set lo up
    done
    : > "$dir/pids"
    umask 077 # private keys
    start_wg() { # NS IFACE
        WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1 \
            ip netns exec "$1" wireguard-go -f "$2" > "$dir/$2.log" 2>&1 &
        echo $! >> "$dir/pids"
        for _ in $(seq 100); do [ -S "/var/run/wireguard/$2.sock" ] && return; sleep 0.05; done
        echo "wireguard-go $2 did not start:" >&2; cat "$dir/$2.log" >&2; exit 1
    }

    # The server network.
    ip link add "$VETH_SRV" netns "$NS_GW" type veth peer name eth0 netns "$NS_SRV"
    ip -n "$NS_GW" addr add 198.18.200.1/24 dev "$VETH_SRV"
    ip -n "$NS_GW" link set "$VETH_SRV" up
    ip -n "$NS_SRV" addr add 198.18.200.2/24 dev eth0
    ip -n "$NS_SRV" link set eth0 up
    ip -n "$NS_SRV" route add default via 198.18.200.1

    # The gateway's WireGuard interface.
    wg genkey > "$dir/gw.key"
    wg pubkey < "$dir/gw.key" > "$dir/gw.pub"
    start_wg "$NS_GW" "$WG_GW"
    ip netns exec "$NS_GW" wg set "$WG_GW" private-key "$dir/gw.key" listen-port 51820
    ip -n "$NS_GW" addr add 198.18.100.1/24 dev "$WG_GW"
    ip -n "$NS_GW" link set "$WG_GW" up

    # The clients: a peer on the gateway each (first, so that their first
    # handshake finds it), an underlay veth, their own wireguard-go.
    for c in $clients; do
        n=$(client_n "$c")
        wg genkey > "$dir/$c.key"
        wg pubkey < "$dir/$c.key" > "$dir/$c.pub"
        ip netns exec "$NS_GW" wg set "$WG_GW" peer "$(cat "$dir/$c.pub")" \
            allowed-ips "198.18.100.$((n + 1))/32"
        echo "KEY_${c^^}=$(cat "$dir/$c.pub")" >> "$dir/env"
    done
    for c in $clients; do
        ns=$(client_ns "$c"); wg=$(client_wg "$c"); n=$(client_n "$c")
        ip link add "u$c${NS_GW#twg}" netns "$NS_GW" type veth peer name eth0 netns "$ns"
        ip -n "$NS_GW" addr add "198.19.$n.1/24" dev "u$c${NS_GW#twg}"
        ip -n "$NS_GW" link set "u$c${NS_GW#twg}" up
        ip -n "$ns" addr add "198.19.$n.2/24" dev eth0
        ip -n "$ns" link set eth0 up
        start_wg "$ns" "$wg"
        ip netns exec "$ns" wg set "$wg" private-key "$dir/$c.key" \
            peer "$(cat "$dir/gw.pub")" endpoint "198.19.$n.1:51820" \
            allowed-ips 198.18.100.0/24,198.18.200.0/24
        ip -n "$ns" addr add "198.18.100.$((n + 1))/24" dev "$wg"
        ip -n "$ns" link set "$wg" up
        ip -n "$ns" route add 198.18.200.0/24 dev "$wg"
    done
    # Every client's handshake done before anyone relies on the tunnel.
    for c in $clients; do
        ip netns exec "$(client_ns "$c")" ping -c 1 -W 5 -q 198.18.100.1 > /dev/null
    done

    # tunwall's ports, created here so that the routes below can name
    # them before tunwall starts (tunwall attaches to existing devices).
    for tun in "$TUN_VPN" "$TUN_SRV"; do
        ip -n "$NS_GW" tuntap add dev "$tun" mode tun multi_queue
        ip -n "$NS_GW" link set "$tun" up
    done
    # Forwarding on; reverse-path filtering off: a packet from a VPN client
    # comes back out of tunwall's outside port, not out of the WireGuard
    # interface its source routes to (the kernel uses the larger of "all"
    # and the device's value, so both are set).
    ip netns exec "$NS_GW" sysctl -qw net.ipv4.ip_forward=1 \
        net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0 \
        "net.ipv4.conf.$TUN_VPN.rp_filter=0" "net.ipv4.conf.$TUN_SRV.rp_filter=0"
    ip -n "$NS_GW" route add 198.18.200.0/24 dev "$TUN_VPN" table 100
    ip -n "$NS_GW" route add 198.18.100.0/24 dev "$TUN_SRV" table 101
    steer add
    ;;
down)
    if [ -f "$dir/pids" ]; then
        while read -r pid; do kill "$pid" 2>/dev/null || true; done < "$dir/pids"
        while read -r pid; do
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.02; done
        done < "$dir/pids"
    fi
    for wg in "$WG_GW" $(for c in $clients; do client_wg "$c"; done); do
        rm -f "/var/run/wireguard/$wg.sock"
    done
    for ns in "$NS_GW" "$NS_SRV" "$NS_ALICE" "$NS_BOB" "$NS_CAROL"; do
        ip netns del "$ns" 2>/dev/null || true
    done
    ;;
bypass)
    case ${3:?on or off} in
        on) steer del ;;
        off) steer add ;;
    esac
    ;;
*)
    echo "usage: vpn-topology.sh up DIR TAG | down DIR | bypass DIR on/off" >&2
    exit 2
    ;;
esac
