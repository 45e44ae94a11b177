//! The answer to a packet blocked by a `reject = true` filter (SPEC §12,
//! pf's `block return`): a TCP RST for TCP (RFC 793, "Reset Generation"),
//! an ICMP destination unreachable, administratively prohibited (type 3
//! code 13, RFC 1812) or an ICMPv6 one (type 1 code 1, RFC 4443) for the
//! rest, quoting as much of the packet as fits in the minimum MTU (576 and
//! 1280 bytes). It comes from the packet's destination, as the refusing
//! host would answer. Checksums are computed by the builder.

use super::IcmpClass;
use super::{Fragment, IpVersion, Packet, Transport, tcp_flags, to_ip_addr};
use etherparse::{Icmpv4Type, Icmpv6Type, PacketBuilder, icmpv4, icmpv6};
use std::net::IpAddr;

/// The IPv4 minimum reassembly size (RFC 791) an ICMP error stays within.
const MIN_MTU_V4: usize = 576;
/// The IPv6 minimum MTU (RFC 8200).
const MIN_MTU_V6: usize = 1280;

/// The answer to `packet` (whose bytes are `bytes`), or `None` where none
/// may be sent: to a RST, an ICMP error, a later fragment, or a multicast
/// or broadcast destination (`to_group`) (RFC 1122 3.2.2, RFC 4443 2.4).
pub fn reject(packet: &Packet, bytes: &[u8], to_group: bool) -> Option<Vec<u8>> {
    if to_group || matches!(packet.fragment, Fragment::Later { .. }) {
        return None;
    }
    let from = to_ip_addr(packet.version, &packet.dst);
    let to = to_ip_addr(packet.version, &packet.src);
    let builder = match (from, to) {
        (IpAddr::V4(f), IpAddr::V4(t)) => PacketBuilder::ipv4(f.octets(), t.octets(), 64),
        (IpAddr::V6(f), IpAddr::V6(t)) => PacketBuilder::ipv6(f.octets(), t.octets(), 64),
        _ => return None,
    };
    let mut out = Vec::new();
    let written = match packet.transport {
        Transport::Tcp {
            src_port,
            dst_port,
            segment,
        } => {
            if segment.has(tcp_flags::RST) {
                return None;
            }
            if segment.has(tcp_flags::ACK) {
                // <SEQ=SEG.ACK><CTL=RST>
                builder
                    .tcp(dst_port, src_port, segment.ack, 0)
                    .rst()
                    .write(&mut out, &[])
            } else {
                // <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>; SYN and FIN count.
                let len = segment.payload_len
                    + u32::from(segment.has(tcp_flags::SYN))
                    + u32::from(segment.has(tcp_flags::FIN));
                builder
                    .tcp(dst_port, src_port, 0, 0)
                    .rst()
                    .ack(segment.seq.wrapping_add(len))
                    .write(&mut out, &[])
            }
        }
        Transport::Icmp {
            class: IcmpClass::Error,
            ..
        } => return None,
        _ => match packet.version {
            IpVersion::V4 => {
                let quote = &bytes[..bytes.len().min(MIN_MTU_V4 - 20 - 8)];
                let prohibited = icmpv4::DestUnreachableHeader::from_values(13, 0)?;
                builder
                    .icmpv4(Icmpv4Type::DestinationUnreachable(prohibited))
                    .write(&mut out, quote)
            }
            IpVersion::V6 => {
                let quote = &bytes[..bytes.len().min(MIN_MTU_V6 - 40 - 8)];
                builder
                    .icmpv6(Icmpv6Type::DestinationUnreachable(
                        icmpv6::DestUnreachableCode::Prohibited,
                    ))
                    .write(&mut out, quote)
            }
        },
    };
    written.ok()?;
    Some(out)
}
