//! Filters and their conditions (SPEC §4).
//!
//! All conditions given on a filter must match; a list inside one condition
//! matches if any element does. Addresses and ports are stored as prefix
//! blocks (an `a-b` range becomes the few prefixes that cover it exactly), so
//! the same representation serves matching and the classification index.

use super::identity::IdentityCond;
use super::{Action, ClassifyFlags, ClassifyRequest, FlowOptions, Layer};
use crate::packet::{IpVersion, RawAddr};
use ipnet::IpNet;
use std::net::IpAddr;
use std::sync::Arc;

/// A block of values sharing their top `len` bits: an address prefix (32 or
/// 128 bits wide) or a port block (16 bits wide). Values are right-aligned in
/// a `u128`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Block {
    /// The value with the bits below the prefix cleared.
    pub value: u128,
    /// Prefix length.
    pub len: u8,
}

impl Block {
    /// The mask of a `len`-bit prefix of a `width`-bit value.
    pub fn mask(len: u8, width: u8) -> u128 {
        if len == 0 {
            0
        } else {
            (u128::MAX << (128 - u32::from(len))) >> (128 - u32::from(width))
        }
    }

    /// Whether `value` (of `width` bits) lies in the block.
    pub fn contains(&self, value: u128, width: u8) -> bool {
        value & Self::mask(self.len, width) == self.value
    }
}

/// Splits the inclusive range `lo..=hi` of `width`-bit values into the
/// fewest prefix blocks that cover exactly it.
pub fn range_blocks(lo: u128, hi: u128, width: u8) -> Vec<Block> {
    let span = |bits: u32| -> u128 {
        if bits >= 128 {
            u128::MAX
        } else {
            (1u128 << bits) - 1
        }
    };
    let mut out = Vec::new();
    let mut lo = lo;
    loop {
        // The largest aligned block starting at `lo` that does not pass `hi`.
        let mut bits = lo.trailing_zeros().min(u32::from(width));
        while bits > 0 && lo.checked_add(span(bits)).is_none_or(|last| last > hi) {
            bits -= 1;
        }
        out.push(Block {
            value: lo,
            len: width - bits as u8,
        });
        let last = lo + span(bits);
        if last >= hi {
            return out;
        }
        lo = last + 1;
    }
}

/// A set of addresses of both families.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddrSet {
    /// IPv4 prefixes (32-bit values).
    pub v4: Vec<Block>,
    /// IPv6 prefixes (128-bit values).
    pub v6: Vec<Block>,
}

/// The value of an address as matched: right-aligned bits and width.
pub fn addr_value(version: IpVersion, addr: &RawAddr) -> (u128, u8) {
    match version {
        IpVersion::V4 => (
            u128::from(u32::from_be_bytes([addr[0], addr[1], addr[2], addr[3]])),
            32,
        ),
        IpVersion::V6 => (u128::from_be_bytes(*addr), 128),
    }
}

fn ip_value(addr: IpAddr) -> (u128, u8) {
    match addr {
        IpAddr::V4(a) => (u128::from(u32::from(a)), 32),
        IpAddr::V6(a) => (u128::from(a), 128),
    }
}

impl AddrSet {
    /// Adds a prefix.
    pub fn add_net(&mut self, net: IpNet) {
        let (value, width) = ip_value(net.network());
        let block = Block {
            value,
            len: net.prefix_len(),
        };
        if width == 32 {
            self.v4.push(block);
        } else {
            self.v6.push(block);
        }
    }

    /// Adds an inclusive range of addresses of one family.
    pub fn add_range(&mut self, lo: IpAddr, hi: IpAddr) {
        let (l, width) = ip_value(lo);
        let (h, _) = ip_value(hi);
        let blocks = range_blocks(l, h, width);
        if width == 32 {
            self.v4.extend(blocks);
        } else {
            self.v6.extend(blocks);
        }
    }

    /// Adds every prefix of another set.
    pub fn extend(&mut self, other: &AddrSet) {
        self.v4.extend_from_slice(&other.v4);
        self.v6.extend_from_slice(&other.v6);
    }

    /// The prefixes of one family.
    pub fn blocks(&self, version: IpVersion) -> &[Block] {
        match version {
            IpVersion::V4 => &self.v4,
            IpVersion::V6 => &self.v6,
        }
    }

    /// Whether `addr` is in the set.
    pub fn contains(&self, version: IpVersion, addr: &RawAddr) -> bool {
        let (value, width) = addr_value(version, addr);
        self.blocks(version)
            .iter()
            .any(|b| b.contains(value, width))
    }

    /// The set as prefixes, IPv4 first.
    pub fn prefixes(&self) -> Vec<IpNet> {
        let v4 = self.v4.iter().filter_map(|b| {
            let a = std::net::Ipv4Addr::from(u32::try_from(b.value).ok()?);
            ipnet::Ipv4Net::new(a, b.len).ok().map(IpNet::V4)
        });
        let v6 = self.v6.iter().filter_map(|b| {
            let a = std::net::Ipv6Addr::from(b.value);
            ipnet::Ipv6Net::new(a, b.len).ok().map(IpNet::V6)
        });
        v4.chain(v6).collect()
    }

    /// Whether the set holds no address of either family.
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }
}

/// A set of 16-bit (ports) or 8-bit (ICMP type/code, protocol) values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ValueSet {
    /// Inclusive ranges.
    pub ranges: Vec<(u16, u16)>,
}

impl ValueSet {
    /// Whether `v` is in the set.
    pub fn contains(&self, v: u16) -> bool {
        self.ranges.iter().any(|&(lo, hi)| lo <= v && v <= hi)
    }

    /// The set as 16-bit prefix blocks (for the index).
    pub fn blocks(&self) -> Vec<Block> {
        self.ranges
            .iter()
            .flat_map(|&(lo, hi)| range_blocks(u128::from(lo), u128::from(hi), 16))
            .collect()
    }
}

/// An `arrival_port` element: a port index, or `"empty"` (unknown).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArrivalPort {
    /// A configured port.
    Port(u8),
    /// FWP_EMPTY: the arrival interface is unknown (reauthorization against
    /// the flow's direction).
    Empty,
}

/// Every condition of SPEC §4; `None` = not given (matches anything).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Conditions {
    /// IP protocol numbers.
    pub protocol: Option<ValueSet>,
    /// 4 or 6.
    pub ip_version: Option<IpVersion>,
    /// Local addresses.
    pub local_address: Option<AddrSet>,
    /// Remote addresses.
    pub remote_address: Option<AddrSet>,
    /// Local ports.
    pub local_port: Option<ValueSet>,
    /// Remote ports.
    pub remote_port: Option<ValueSet>,
    /// ICMP types.
    pub icmp_type: Option<ValueSet>,
    /// ICMP codes.
    pub icmp_code: Option<ValueSet>,
    /// Arrival ports.
    pub arrival_port: Option<Vec<ArrivalPort>>,
    /// Local identity (the union of the groups listed).
    pub local_identity: Option<IdentityCond>,
    /// Remote identity (the union of the groups listed).
    pub remote_identity: Option<IdentityCond>,
    /// Flags that must all be set.
    pub flags: ClassifyFlags,
    /// Flags that must all be clear.
    pub not_flags: ClassifyFlags,
    /// Untranslated local addresses (SPEC §9).
    pub original_local_address: Option<AddrSet>,
    /// Untranslated remote addresses.
    pub original_remote_address: Option<AddrSet>,
    /// Untranslated local ports.
    pub original_local_port: Option<ValueSet>,
    /// Untranslated remote ports.
    pub original_remote_port: Option<ValueSet>,
}

impl Conditions {
    /// Whether every given condition matches `r`.
    #[inline]
    pub fn matches(&self, r: &ClassifyRequest) -> bool {
        self.mismatch(r).is_none()
    }

    /// The first given condition that does not match `r` (its name in the
    /// configuration file), or `None` when all match: `matches` and
    /// `tunwall explain` share this one evaluation.
    #[inline]
    pub fn mismatch(&self, r: &ClassifyRequest) -> Option<&'static str> {
        if let Some(v) = self.ip_version
            && v != r.version
        {
            return Some("ip_version");
        }
        if let Some(p) = &self.protocol
            && !p.contains(u16::from(r.protocol))
        {
            return Some("protocol");
        }
        if let Some(ports) = &self.local_port
            && (r.icmp.is_some() || !ports.contains(r.local_port))
        {
            return Some("local_port");
        }
        if let Some(ports) = &self.remote_port
            && (r.icmp.is_some() || !ports.contains(r.remote_port))
        {
            return Some("remote_port");
        }
        if let Some(types) = &self.icmp_type
            && !r.icmp.is_some_and(|(t, _)| types.contains(u16::from(t)))
        {
            return Some("icmp_type");
        }
        if let Some(codes) = &self.icmp_code
            && !r.icmp.is_some_and(|(_, c)| codes.contains(u16::from(c)))
        {
            return Some("icmp_code");
        }
        if !r.flags.contains(self.flags) {
            return Some("flags");
        }
        if r.flags.intersects(self.not_flags) {
            return Some("not_flags");
        }
        if let Some(ports) = &self.arrival_port {
            let arrival = match r.arrival_port {
                Some(p) => ArrivalPort::Port(p),
                None => ArrivalPort::Empty,
            };
            if !ports.contains(&arrival) {
                return Some("arrival_port");
            }
        }
        let original = r.original.unwrap_or(super::Original {
            local_addr: r.local_addr,
            remote_addr: r.remote_addr,
            local_port: r.local_port,
            remote_port: r.remote_port,
        });
        for (name, ports, port) in [
            (
                "original_local_port",
                &self.original_local_port,
                original.local_port,
            ),
            (
                "original_remote_port",
                &self.original_remote_port,
                original.remote_port,
            ),
        ] {
            if let Some(ports) = ports
                && (r.icmp.is_some() || !ports.contains(port))
            {
                return Some(name);
            }
        }
        for (name, set, addr) in [
            ("local_address", &self.local_address, &r.local_addr),
            ("remote_address", &self.remote_address, &r.remote_addr),
            (
                "original_local_address",
                &self.original_local_address,
                &original.local_addr,
            ),
            (
                "original_remote_address",
                &self.original_remote_address,
                &original.remote_addr,
            ),
        ] {
            if let Some(set) = set
                && !set.contains(r.version, addr)
            {
                return Some(name);
            }
        }
        for (name, cond, local) in [
            ("local_identity", &self.local_identity, true),
            ("remote_identity", &self.remote_identity, false),
        ] {
            if let Some(cond) = cond
                && !cond.matches(r, local)
            {
                return Some(name);
            }
        }
        None
    }
}

/// What a filter does when it matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FilterAction {
    /// Permit; `hard` clears the write right.
    Permit {
        /// A hard permit can only be overridden by a callout veto.
        hard: bool,
    },
    /// Block; hard unless `hard = false`.
    Block {
        /// A hard block cannot be overridden.
        hard: bool,
    },
    /// Run the callout with this index in the policy's callout list.
    Callout(usize),
    /// Translate (at a redirect layer).
    Redirect(RedirectTarget),
}

/// `to_address` and `to_port` of a redirect filter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RedirectTarget {
    /// The IPv4 target address.
    pub v4: Option<RawAddr>,
    /// The IPv6 target address.
    pub v6: Option<RawAddr>,
    /// A port or an inclusive range.
    pub port: Option<(u16, u16)>,
}

/// A filter as compiled.
#[derive(Clone, Debug)]
pub struct Filter {
    /// Unique name.
    pub name: Arc<str>,
    /// Its layer.
    pub layer: Layer,
    /// Index of its sublayer in the policy's sublayer list.
    pub sublayer: usize,
    /// Weight within the sublayer (higher first).
    pub weight: u64,
    /// Position in the file (ties on weight: earlier first).
    pub position: usize,
    /// What it does.
    pub action: FilterAction,
    /// When it matches.
    pub conditions: Conditions,
    /// Classify options attached to the flows its permit creates.
    pub options: FlowOptions,
    /// A block answered with a TCP RST or an ICMP error (`reject = true`).
    pub reject: bool,
}

impl Filter {
    /// The action a plain permit/block filter returns.
    pub fn terminal(&self) -> Option<(Action, bool)> {
        match self.action {
            FilterAction::Permit { hard } => Some((Action::Permit, hard)),
            FilterAction::Block { hard } => Some((Action::Block, hard)),
            FilterAction::Callout(_) | FilterAction::Redirect(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_split_into_exact_blocks() {
        let blocks = range_blocks(1, 6, 16);
        let covered: Vec<u128> = (0..10)
            .filter(|v| blocks.iter().any(|b| b.contains(*v, 16)))
            .collect();
        assert_eq!(covered, vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(range_blocks(0, 65535, 16), vec![Block { value: 0, len: 0 }]);
        assert_eq!(range_blocks(80, 80, 16), vec![Block { value: 80, len: 16 }]);
        let all_v6 = range_blocks(0, u128::MAX, 128);
        assert_eq!(all_v6, vec![Block { value: 0, len: 0 }]);
        let top = range_blocks(u128::MAX - 1, u128::MAX, 128);
        assert_eq!(
            top,
            vec![Block {
                value: u128::MAX - 1,
                len: 127
            }]
        );
    }

    #[test]
    fn address_ranges_match_exactly_their_members() {
        let mut set = AddrSet::default();
        set.add_range(
            "198.18.1.10".parse().unwrap(),
            "198.18.1.20".parse().unwrap(),
        );
        let raw = |s: &str| crate::packet::raw_addr(s.parse().unwrap()).1;
        assert!(set.contains(IpVersion::V4, &raw("198.18.1.10")));
        assert!(set.contains(IpVersion::V4, &raw("198.18.1.20")));
        assert!(!set.contains(IpVersion::V4, &raw("198.18.1.9")));
        assert!(!set.contains(IpVersion::V4, &raw("198.18.1.21")));
        assert!(!set.contains(IpVersion::V6, &raw("fd00::1")));
    }
}
