//! ICMP message classes and the packet quoted inside an ICMP error.

use super::{IpVersion, RawAddr, proto};
use etherparse::LaxIpSlice;

/// What role an ICMP message plays for flow tracking (SPEC §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IcmpClass {
    /// A query/response pair (echo, timestamp, information, address mask).
    Query {
        /// True for the request, false for the reply.
        request: bool,
        /// The request's type: both halves of a pair key the flow by it.
        request_type: u8,
    },
    /// An error quoting the packet that caused it; never creates a flow.
    Error,
    /// Any other non-error message: a flow keyed by type and code, no id.
    Info,
}

/// Classifies an ICMP (v4) or ICMPv6 (v6) type.
pub fn icmp_class(version: IpVersion, icmp_type: u8) -> IcmpClass {
    let query = |request, request_type| IcmpClass::Query {
        request,
        request_type,
    };
    match version {
        IpVersion::V4 => match icmp_type {
            8 | 13 | 15 | 17 => query(true, icmp_type),
            0 => query(false, 8),
            14 | 16 | 18 => query(false, icmp_type - 1),
            3 | 4 | 5 | 11 | 12 => IcmpClass::Error,
            _ => IcmpClass::Info,
        },
        IpVersion::V6 => match icmp_type {
            128 => query(true, 128),
            129 => query(false, 128),
            0..=127 => IcmpClass::Error,
            _ => IcmpClass::Info,
        },
    }
}

/// The header of the packet an ICMP error quotes: enough to find its flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotedPacket {
    /// The quoted packet's IP version (always that of the error).
    pub version: IpVersion,
    /// Its source: the host the error is addressed to.
    pub src: RawAddr,
    /// Its destination.
    pub dst: RawAddr,
    /// Its protocol.
    pub protocol: u8,
    /// Source and destination port, or for ICMP (type, code) and id packed as
    /// in [`super::Transport::Icmp`].
    pub src_port: u16,
    /// See `src_port`.
    pub dst_port: u16,
    /// For a quoted ICMP query: type, code, id and whether it was the request.
    pub icmp: Option<(u8, u8, u16, super::IcmpClass)>,
}

/// Reads the packet quoted in an ICMP error's payload (the bytes after the
/// 8-byte ICMP header). The quote is usually cut short, so this is lax about
/// lengths but insists on the fields that identify the flow.
pub fn parse_quoted(version: IpVersion, quote: &[u8]) -> Option<QuotedPacket> {
    let (ip, _) = LaxIpSlice::from_slice(quote).ok()?;
    let (qversion, src, dst) = match &ip {
        LaxIpSlice::Ipv4(v4) => {
            let h = v4.header();
            let mut src = [0u8; 16];
            let mut dst = [0u8; 16];
            src[..4].copy_from_slice(&h.source());
            dst[..4].copy_from_slice(&h.destination());
            (IpVersion::V4, src, dst)
        }
        LaxIpSlice::Ipv6(v6) => {
            let h = v6.header();
            (IpVersion::V6, h.source(), h.destination())
        }
    };
    if qversion != version {
        return None;
    }
    let payload = ip.payload();
    // A quoted non-first fragment has no transport header to match on.
    if payload.fragmented && !is_first_fragment(&ip) {
        return None;
    }
    let protocol = payload.ip_number.0;
    let l4 = payload.payload;
    let mut quoted = QuotedPacket {
        version,
        src,
        dst,
        protocol,
        src_port: 0,
        dst_port: 0,
        icmp: None,
    };
    match protocol {
        proto::TCP | proto::UDP | 33 | 132 | 136 => {
            let ports = l4.get(..4)?;
            quoted.src_port = u16::from_be_bytes([ports[0], ports[1]]);
            quoted.dst_port = u16::from_be_bytes([ports[2], ports[3]]);
        }
        proto::ICMP | proto::ICMPV6 => {
            let head = l4.get(..8)?;
            let class = icmp_class(version, head[0]);
            let id = match class {
                IcmpClass::Query { .. } => u16::from_be_bytes([head[4], head[5]]),
                // An error about an error is never related to a flow (RFC 1122 forbids it anyway).
                IcmpClass::Error => return None,
                IcmpClass::Info => 0,
            };
            quoted.icmp = Some((head[0], head[1], id, class));
        }
        _ => {}
    }
    Some(quoted)
}

fn is_first_fragment(ip: &LaxIpSlice<'_>) -> bool {
    match ip {
        LaxIpSlice::Ipv4(v4) => v4.header().fragments_offset().value() == 0,
        // Re-parsed with bounds checks: the lax slice keeps the headers it
        // could read and names the one it could not, and etherparse's
        // iterator over it reads that missing header unchecked (found by
        // fuzzing: fuzz/regressions/parse/etherparse-lax-ipv6-ext-*).
        LaxIpSlice::Ipv6(v6) => {
            let exts = v6.extensions();
            exts.first_header().is_none_or(|first| {
                etherparse::Ipv6Extensions::from_slice_lax(first, exts.slice())
                    .0
                    .fragment
                    .is_none_or(|f| f.fragment_offset.value() == 0)
            })
        }
    }
}
