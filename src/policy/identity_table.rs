//! The `[identities]` of a configuration (SPEC §6, §11): address groups
//! and WireGuard identities, and their resolution into the addresses the
//! filters match — for a WireGuard identity, its peers' allowed-ips as last
//! read from the interface, resolved as WireGuard routes (longest prefix
//! wins among the interface's peers).

use super::filter::AddrSet;
use super::identity::IdentityAddrs;
use super::{Conditions, PolicySpec};
use crate::flow::{Direction, FlowInfo};
use crate::packet::{IpVersion, RawAddr};
use ipnet::IpNet;
use std::collections::BTreeMap;

/// A WireGuard public key (Curve25519, 32 bytes).
pub type PublicKey = [u8; 32];

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// A key in WireGuard's base64 form (44 characters, one `=`), or `None`.
pub fn parse_key(s: &str) -> Option<PublicKey> {
    let s = s.as_bytes();
    if s.len() != 44 || s[43] != b'=' {
        return None;
    }
    let mut bits = 0u32;
    let mut count = 0;
    let mut key = [0u8; 32];
    let mut n = 0;
    for &c in &s[..43] {
        let v = BASE64.iter().position(|&b| b == c)? as u32;
        bits = (bits << 6) | v;
        count += 6;
        if count >= 8 {
            count -= 8;
            if n < 32 {
                key[n] = (bits >> count) as u8;
            }
            n += 1;
            bits &= (1 << count) - 1;
        }
    }
    // 43 characters carry 258 bits: the last 2 must be zero (canonical form).
    (n == 32 && bits == 0).then_some(key)
}

/// A key in WireGuard's base64 form.
pub fn key_base64(key: &PublicKey) -> String {
    let mut out = String::with_capacity(44);
    for chunk in key.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let v = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(char::from(BASE64[((v >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out.push('=');
    out
}

/// A peer as read from an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// Its public key.
    pub key: PublicKey,
    /// Its allowed-ips.
    pub allowed_ips: Vec<IpNet>,
}

/// The peers of each WireGuard interface, as last read.
pub type PeerSnapshot = BTreeMap<String, Vec<Peer>>;

/// Where an identity's addresses come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdentitySource {
    /// A fixed list of addresses, prefixes and ranges.
    Addresses(AddrSet),
    /// The allowed-ips of these peers of a WireGuard interface.
    WireGuard {
        /// The interface (a `[[wireguard]]` section).
        interface: String,
        /// The peers' public keys.
        peers: Vec<PublicKey>,
    },
}

/// The identities of a configuration and their current addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identities {
    /// Definitions by name.
    pub defs: BTreeMap<String, IdentitySource>,
    /// `[[wireguard]]` interfaces and the port each one's traffic arrives
    /// on (`port`), if bound to one.
    pub ports: BTreeMap<String, Option<u8>>,
    /// The addresses of each identity, as last resolved.
    pub resolved: BTreeMap<String, IdentityAddrs>,
}

impl Identities {
    /// Resolves every identity against `peers` and returns the names of
    /// those whose addresses changed. A WireGuard interface missing from
    /// `peers` contributes no address.
    pub fn resolve(&mut self, peers: &PeerSnapshot) -> Vec<String> {
        let mut resolved = BTreeMap::new();
        for (name, source) in &self.defs {
            let addrs = match source {
                IdentitySource::Addresses(set) => IdentityAddrs {
                    any: set.clone(),
                    bound: Vec::new(),
                },
                IdentitySource::WireGuard {
                    interface,
                    peers: keys,
                } => {
                    let mut owned = peers
                        .get(interface)
                        .map(|list| owned_prefixes(list, keys))
                        .unwrap_or_default();
                    // One set, one form: the order of the peers must not
                    // look like a change.
                    owned.sort_unstable();
                    owned.dedup();
                    let mut set = AddrSet::default();
                    for net in owned {
                        set.add_net(net);
                    }
                    match self.ports.get(interface).copied().flatten() {
                        Some(port) => IdentityAddrs {
                            any: AddrSet::default(),
                            bound: vec![(port, set)],
                        },
                        None => IdentityAddrs {
                            any: set,
                            bound: Vec::new(),
                        },
                    }
                }
            };
            resolved.insert(name.clone(), addrs);
        }
        let changed = resolved
            .iter()
            .filter(|(name, addrs)| self.resolved.get(*name) != Some(addrs))
            .map(|(name, _)| name.clone())
            .collect();
        self.resolved = resolved;
        changed
    }

    /// The identities `addr` belongs to; `source` is the port it arrived on
    /// when it is a packet's (or flow initiator's) source.
    pub fn groups_of(&self, version: IpVersion, addr: &RawAddr, source: Option<u8>) -> Vec<String> {
        self.resolved
            .iter()
            .filter(|(_, addrs)| addrs.contains(version, addr, source))
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// The identities of a flow's local and remote address; its initiator
    /// is the source, arrived on the flow's arrival port.
    pub fn of_flow(&self, f: &FlowInfo) -> (Vec<String>, Vec<String>) {
        let version = f.key.version();
        let outbound = f.direction == Direction::Outbound;
        let source = |local: bool| (local == outbound).then_some(f.arrival_port);
        (
            self.groups_of(version, &f.key.local, source(true)),
            self.groups_of(version, &f.key.remote, source(false)),
        )
    }

    /// Each identity's current addresses, whatever the arrival port
    /// (`tunwall flows --identity`).
    pub fn address_groups(&self) -> std::collections::HashMap<String, AddrSet> {
        self.resolved
            .iter()
            .map(|(name, addrs)| (name.clone(), addrs.all()))
            .collect()
    }

    /// The interfaces whose peers an identity names.
    pub fn interfaces(&self) -> impl Iterator<Item = &str> {
        self.ports.keys().map(String::as_str)
    }
}

impl PolicySpec {
    /// Re-resolves the identities against `peers` and rewrites the identity
    /// conditions of every filter; returns the identities that changed.
    pub fn resolve_identities(&mut self, peers: &PeerSnapshot) -> Vec<String> {
        let changed = self.identities.resolve(peers);
        for f in &mut self.filters {
            resolve_conditions(&mut f.conditions, &self.identities);
        }
        changed
    }
}

fn resolve_conditions(c: &mut Conditions, identities: &Identities) {
    for cond in [&mut c.local_identity, &mut c.remote_identity]
        .into_iter()
        .flatten()
    {
        let mut addrs = IdentityAddrs::default();
        for group in &cond.groups {
            if let Some(a) = identities.resolved.get(group) {
                addrs.extend(a);
            }
        }
        cond.addrs = addrs;
    }
}

/// The prefixes through which WireGuard would route to one of `keys`: each
/// of their allowed-ips minus the more specific allowed-ips of the
/// interface's other peers (longest prefix wins).
pub fn owned_prefixes(peers: &[Peer], keys: &[PublicKey]) -> Vec<IpNet> {
    let mut out = Vec::new();
    for peer in peers.iter().filter(|p| keys.contains(&p.key)) {
        for net in &peer.allowed_ips {
            let net = net.trunc();
            let holes: Vec<IpNet> = peers
                .iter()
                .filter(|other| other.key != peer.key)
                .flat_map(|other| other.allowed_ips.iter().map(IpNet::trunc))
                .filter(|h| h.prefix_len() > net.prefix_len() && net.contains(h))
                .collect();
            subtract(net, &holes, &mut out);
        }
    }
    out
}

/// `net` minus `holes` (each inside `net`), as prefixes: at most
/// (prefix length difference) prefixes per hole.
fn subtract(net: IpNet, holes: &[IpNet], out: &mut Vec<IpNet>) {
    if holes.is_empty() {
        out.push(net);
        return;
    }
    if holes.contains(&net) {
        return;
    }
    let Ok(halves) = net.subnets(net.prefix_len() + 1) else {
        return;
    };
    for half in halves {
        let inside: Vec<IpNet> = holes
            .iter()
            .filter(|h| half.contains(*h))
            .copied()
            .collect();
        subtract(half, &inside, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::raw_addr;

    fn peer(n: u8, ips: &[&str]) -> Peer {
        Peer {
            key: [n; 32],
            allowed_ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn the_longest_prefix_among_the_peers_owns_an_address() {
        let peers = vec![
            peer(1, &["198.18.0.0/16"]),
            peer(2, &["198.18.5.0/24", "fd00:5::/64"]),
        ];
        let mut ids = Identities::default();
        ids.ports.insert("wg0".into(), None);
        for n in [1, 2] {
            ids.defs.insert(
                format!("p{n}"),
                IdentitySource::WireGuard {
                    interface: "wg0".into(),
                    peers: vec![[n; 32]],
                },
            );
        }
        let snapshot = PeerSnapshot::from([("wg0".to_string(), peers)]);
        assert_eq!(ids.resolve(&snapshot), vec!["p1", "p2"]);
        let of = |ids: &Identities, s: &str| {
            let (v, a) = raw_addr(s.parse().unwrap());
            ids.groups_of(v, &a, None)
        };
        assert_eq!(of(&ids, "198.18.5.7"), vec!["p2"]);
        assert_eq!(of(&ids, "198.18.4.255"), vec!["p1"]);
        assert_eq!(of(&ids, "198.18.6.0"), vec!["p1"]);
        assert_eq!(of(&ids, "fd00:5::1"), vec!["p2"]);
        assert!(of(&ids, "198.19.0.1").is_empty());
        assert!(ids.resolve(&snapshot).is_empty(), "unchanged");
        let mut reordered = snapshot.clone();
        reordered.get_mut("wg0").unwrap().reverse();
        assert!(
            ids.resolve(&reordered).is_empty(),
            "the same peers in another order"
        );
        assert_eq!(ids.resolve(&PeerSnapshot::new()), vec!["p1", "p2"]);
        assert!(
            of(&ids, "198.18.5.7").is_empty(),
            "interface gone: no address"
        );
    }

    #[test]
    fn keys_round_trip_and_bad_ones_are_refused() {
        let key: PublicKey = std::array::from_fn(|i| (i * 37 + 11) as u8);
        let text = key_base64(&key);
        assert_eq!(text.len(), 44);
        assert_eq!(parse_key(&text), Some(key));
        assert_eq!(
            key_base64(&[0; 32]),
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
        );
        for bad in [
            "",
            "AAAA",
            &text[..43],
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB=",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA*=",
        ] {
            assert_eq!(parse_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn subtraction_covers_exactly_the_rest() {
        let mut out = Vec::new();
        subtract(
            "198.18.0.0/24".parse().unwrap(),
            &[
                "198.18.0.16/28".parse().unwrap(),
                "198.18.0.200/32".parse().unwrap(),
            ],
            &mut out,
        );
        let mut set = AddrSet::default();
        for n in &out {
            set.add_net(*n);
        }
        for i in 0..=255u8 {
            let a = [198, 18, 0, i, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
            let hole = (16..32).contains(&i) || i == 200;
            assert_eq!(set.contains(IpVersion::V4, &a), !hole, "198.18.0.{i}");
        }
    }
}
