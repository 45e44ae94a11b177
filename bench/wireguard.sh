#!/bin/bash
# `make release && bench/wireguard.sh` (root): iperf3 from a VPN client to the
# server over wireguard-go (scripts/vpn-topology.sh, configs/vpn-gateway.toml),
# through tunwall and around it (`bypass`), alternated three times.
set -e
cd "$(dirname "$0")/.."
D=$(mktemp -d /tmp/tunwall-wgbench.XXXXXX)
trap '[ -n "$TW" ] && kill $TW 2>/dev/null; sleep 0.5; scripts/vpn-topology.sh down $D; rm -rf $D' EXIT
scripts/vpn-topology.sh up $D "$$" 2>/dev/null
. $D/env
sed -e "s/\"tw-vpn\"/\"$TUN_VPN\"/; s/\"tw-srv\"/\"$TUN_SRV\"/; s/\"wg0\"/\"$WG_GW\"/g" \
    -e "s#QUxJQ0VBTElDRUFMSUNFQUxJQ0VBTElDRUFMSUNFQUw=#$KEY_ALICE#g" \
    -e "s#Qk9CQk9CQk9CQk9CQk9CQk9CQk9CQk9CQk9CQk9CQk8=#$KEY_BOB#g" \
    -e "s#/run/tunwall/control.sock#$D/c.sock#" configs/vpn-gateway.toml > $D/t.toml
ip netns exec $NS_GW target/release/tunwall run -c $D/t.toml 2>$D/log &
TW=$!
sleep 1
run() { ip netns exec $NS_SRV iperf3 -s -1 -B 198.18.200.2 >/dev/null 2>&1 & sleep 0.4; ip netns exec $NS_ALICE iperf3 -c 198.18.200.2 -t 4 -J | python3 -c "import json,sys; print(round(json.load(sys.stdin)['end']['sum_sent']['bits_per_second']/1e6))"; }
for i in 1 2 3; do
  t=$(run); scripts/vpn-topology.sh bypass $D on; b=$(run); scripts/vpn-topology.sh bypass $D off
  echo "round $i: through tunwall $t Mbit/s, without $b Mbit/s"
done
