//! Identity conditions (SPEC §11): the addresses of the groups a filter
//! names, and the WireGuard rule that a packet's SOURCE address belongs to
//! a tunnel identity only when the packet arrived on that tunnel's port.

use super::ClassifyRequest;
use super::filter::AddrSet;
use crate::packet::{IpVersion, RawAddr};

/// Where the packet's source came in: which endpoint of the request it is
/// and the port it arrived on. On reauthorization this is the flow's
/// initiator and the port the flow was authorized on, whichever way the
/// triggering packet travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceArrival {
    /// The source is the request's local address (else its remote one).
    pub local: bool,
    /// The port it arrived on.
    pub port: u8,
}

/// The addresses of one or more identities.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdentityAddrs {
    /// Addresses that match by address alone (address groups, and WireGuard
    /// interfaces without a `port`).
    pub any: AddrSet,
    /// Addresses that match as a packet's source only when it arrived on
    /// the port (a WireGuard interface's `port`); as a destination, by
    /// address alone.
    pub bound: Vec<(u8, AddrSet)>,
}

impl IdentityAddrs {
    /// Adds every address of `other`.
    pub fn extend(&mut self, other: &IdentityAddrs) {
        self.any.extend(&other.any);
        for (port, set) in &other.bound {
            match self.bound.iter_mut().find(|(p, _)| p == port) {
                Some((_, mine)) => mine.extend(set),
                None => self.bound.push((*port, set.clone())),
            }
        }
    }

    /// Every address, whatever the arrival (the index files filters by it).
    pub fn all(&self) -> AddrSet {
        let mut all = self.any.clone();
        for (_, set) in &self.bound {
            all.extend(set);
        }
        all
    }

    /// Whether `addr` belongs: `source` is the port it arrived on when it is
    /// the packet's source, `None` when it is the destination (or unknown).
    pub fn contains(&self, version: IpVersion, addr: &RawAddr, source: Option<u8>) -> bool {
        self.any.contains(version, addr)
            || self.bound.iter().any(|(port, set)| {
                source.is_none_or(|arrived| arrived == *port) && set.contains(version, addr)
            })
    }

    /// Whether no address belongs.
    pub fn is_empty(&self) -> bool {
        self.any.is_empty() && self.bound.iter().all(|(_, s)| s.is_empty())
    }
}

/// A `local_identity` / `remote_identity` condition: the groups named and
/// their current addresses (re-resolved when a WireGuard identity changes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdentityCond {
    /// The group names, as written.
    pub groups: Vec<String>,
    /// The union of their addresses.
    pub addrs: IdentityAddrs,
}

impl IdentityCond {
    /// Whether the request's local (`local`) or remote address matches.
    pub fn matches(&self, r: &ClassifyRequest, local: bool) -> bool {
        let addr = if local { &r.local_addr } else { &r.remote_addr };
        let source = r.source.filter(|s| s.local == local).map(|s| s.port);
        self.addrs.contains(r.version, addr, source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::raw_addr;

    fn raw(s: &str) -> RawAddr {
        raw_addr(s.parse().unwrap()).1
    }

    #[test]
    fn a_bound_address_matches_as_source_only_on_its_port() {
        let mut set = AddrSet::default();
        set.add_net("198.18.100.2/32".parse().unwrap());
        let ids = IdentityAddrs {
            any: AddrSet::default(),
            bound: vec![(0, set)],
        };
        let a = raw("198.18.100.2");
        assert!(ids.contains(IpVersion::V4, &a, Some(0)));
        assert!(!ids.contains(IpVersion::V4, &a, Some(1)), "spoofed");
        assert!(ids.contains(IpVersion::V4, &a, None), "as destination");
        assert!(!ids.contains(IpVersion::V4, &raw("198.18.100.3"), None));
    }
}
