//! Ports and the routes that pick a packet's egress port (SPEC §1).

use crate::flow::Zone;
use crate::packet::{IpVersion, RawAddr, raw_addr};
use ipnet::IpNet;
use std::net::IpAddr;

/// A port as the core sees it: a name, a zone, what it routes, and the
/// directed-broadcast addresses of the subnets assigned to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSpec {
    /// Name used by filters and output.
    pub name: String,
    /// Inside or outside.
    pub zone: Zone,
    /// Prefixes forwarded out of this port.
    pub routes: Vec<IpNet>,
    /// Subnet broadcast addresses of the port's assigned addresses.
    pub broadcast: Vec<IpAddr>,
}

impl PortSpec {
    /// A port with routes and no assigned addresses, for ports built in code.
    ///
    /// # Panics
    ///
    /// On a route that is not a prefix: routes from a configuration file go
    /// through the loader, which reports them with their line instead.
    pub fn new(name: impl Into<String>, zone: Zone, routes: &[&str]) -> PortSpec {
        PortSpec {
            name: name.into(),
            zone,
            routes: routes
                .iter()
                .map(|r| r.parse().unwrap_or_else(|e| panic!("bad route {r}: {e}")))
                .collect(),
            broadcast: Vec::new(),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Route {
    prefix: u128,
    mask: u128,
    port: u8,
}

/// Longest-prefix match over every port's routes, per IP version. Routes are
/// few (a handful per port), so a list sorted by prefix length, longest first,
/// beats a trie: the first match is the longest.
#[derive(Clone, Debug, Default)]
pub struct RouteTable {
    v4: Vec<Route>,
    v6: Vec<Route>,
}

fn addr_bits(version: IpVersion, addr: &RawAddr) -> u128 {
    match version {
        IpVersion::V4 => u128::from(u32::from_be_bytes([addr[0], addr[1], addr[2], addr[3]])),
        IpVersion::V6 => u128::from_be_bytes(*addr),
    }
}

impl RouteTable {
    /// Builds the table from the ports' routes (port index = position).
    pub fn new(ports: &[PortSpec]) -> RouteTable {
        let mut table = RouteTable::default();
        let mut entries: Vec<(u8, IpNet, u8)> = Vec::new();
        for (i, port) in ports.iter().enumerate() {
            for net in &port.routes {
                entries.push((net.prefix_len(), *net, i as u8));
            }
        }
        entries.sort_by_key(|e| std::cmp::Reverse(e.0));
        for (len, net, port) in entries {
            let (version, raw) = raw_addr(net.network());
            let (bits, width) = match version {
                IpVersion::V4 => (addr_bits(version, &raw), 32),
                IpVersion::V6 => (addr_bits(version, &raw), 128),
            };
            let mask = if len == 0 {
                0
            } else {
                (u128::MAX << (128 - u32::from(len))) >> (128 - width)
            };
            let route = Route {
                prefix: bits & mask,
                mask,
                port,
            };
            match version {
                IpVersion::V4 => table.v4.push(route),
                IpVersion::V6 => table.v6.push(route),
            }
        }
        table
    }

    /// The port that routes `dst`.
    #[inline]
    pub fn lookup(&self, version: IpVersion, dst: &RawAddr) -> Option<u8> {
        let bits = addr_bits(version, dst);
        let routes = match version {
            IpVersion::V4 => &self.v4,
            IpVersion::V6 => &self.v6,
        };
        routes
            .iter()
            .find(|r| bits & r.mask == r.prefix)
            .map(|r| r.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> (IpVersion, RawAddr) {
        raw_addr(s.parse().unwrap())
    }

    #[test]
    fn longest_prefix_wins_per_version() {
        let ports = vec![
            PortSpec::new("lan", Zone::Inside, &["198.18.1.0/24", "fd00:1::/64"]),
            PortSpec::new("wan", Zone::Outside, &["0.0.0.0/0", "::/0"]),
            PortSpec::new("dmz", Zone::Outside, &["198.18.1.128/25"]),
        ];
        let table = RouteTable::new(&ports);
        let (v, a) = raw("198.18.1.5");
        assert_eq!(table.lookup(v, &a), Some(0));
        let (v, a) = raw("198.18.1.200");
        assert_eq!(table.lookup(v, &a), Some(2));
        let (v, a) = raw("198.19.0.1");
        assert_eq!(table.lookup(v, &a), Some(1));
        let (v, a) = raw("fd00:1::9");
        assert_eq!(table.lookup(v, &a), Some(0));
        let (v, a) = raw("fd00:2::9");
        assert_eq!(table.lookup(v, &a), Some(1));
    }

    #[test]
    fn no_route_without_default() {
        let table = RouteTable::new(&[PortSpec::new("lan", Zone::Inside, &["198.18.1.0/24"])]);
        let (v, a) = raw("198.18.2.1");
        assert_eq!(table.lookup(v, &a), None);
        let (v, a) = raw("fd00::1");
        assert_eq!(table.lookup(v, &a), None);
    }
}
