//! Parsing raw IP packets into a compact descriptor (pf's `pf_pdesc`).
//!
//! A TUN port hands us bare IPv4 or IPv6 packets. [`parse`] walks the IP
//! header and IPv6 extension headers with etherparse's zero-copy slices and
//! reads the transport fields the flow table and the policy need. It never
//! copies the payload and never panics: anything it cannot make sense of is a
//! [`DropReason`].
//!
//! etherparse gives no transport slice for a first fragment, so the transport
//! header is always read here from the IP payload, which treats a first
//! fragment and an unfragmented packet alike.

mod icmp;
pub mod pcap_filter;
pub mod reject;
pub mod rewrite;

pub use icmp::{IcmpClass, QuotedPacket, icmp_class, parse_quoted};

use crate::reason::DropReason;
use etherparse::{IpNumber, IpSlice, Ipv6ExtensionSlice, TcpHeaderSlice, TcpOptionElement};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// IP protocol numbers tunwall treats specially.
pub mod proto {
    /// ICMP for IPv4.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// ICMP for IPv6.
    pub const ICMPV6: u8 = 58;
}

/// IPv4 or IPv6.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IpVersion {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl IpVersion {
    /// 4 or 6.
    pub fn number(self) -> u8 {
        match self {
            IpVersion::V4 => 4,
            IpVersion::V6 => 6,
        }
    }
}

/// An IP address stored the way the flow key stores it: IPv4 in the first four
/// bytes, the rest zero.
pub type RawAddr = [u8; 16];

/// Turns a raw address back into an [`IpAddr`].
pub fn to_ip_addr(version: IpVersion, raw: &RawAddr) -> IpAddr {
    match version {
        IpVersion::V4 => IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3])),
        IpVersion::V6 => IpAddr::V6(Ipv6Addr::from(*raw)),
    }
}

/// Stores an [`IpAddr`] as a raw address.
pub fn raw_addr(addr: IpAddr) -> (IpVersion, RawAddr) {
    let mut raw = [0u8; 16];
    match addr {
        IpAddr::V4(a) => {
            raw[..4].copy_from_slice(&a.octets());
            (IpVersion::V4, raw)
        }
        IpAddr::V6(a) => (IpVersion::V6, a.octets()),
    }
}

/// TCP flag bits as they appear in the header's 13th byte.
pub mod tcp_flags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// PSH.
    pub const PSH: u8 = 0x08;
    /// ACK.
    pub const ACK: u8 = 0x10;
}

/// The TCP fields the tracker needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSegment {
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number (meaningful only with ACK).
    pub ack: u32,
    /// The flag byte (see [`tcp_flags`]).
    pub flags: u8,
    /// The advertised window, unscaled.
    pub window: u16,
    /// The window-scale option, if the segment carried one (SYNs only matter).
    pub wscale: Option<u8>,
    /// Bytes of payload after the TCP header.
    pub payload_len: u32,
}

impl TcpSegment {
    /// Whether every bit of `mask` is set.
    pub fn has(&self, mask: u8) -> bool {
        self.flags & mask == mask
    }
}

/// The transport part of a packet, as far as classification cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// TCP with its ports and the fields the tracker needs.
    Tcp {
        /// Source port.
        src_port: u16,
        /// Destination port.
        dst_port: u16,
        /// Sequence, flags, window.
        segment: TcpSegment,
    },
    /// UDP (and UDP-Lite, SCTP, DCCP: any protocol whose first four bytes are ports).
    Ports {
        /// Source port.
        src_port: u16,
        /// Destination port.
        dst_port: u16,
    },
    /// ICMP or ICMPv6.
    Icmp {
        /// Type.
        icmp_type: u8,
        /// Code.
        code: u8,
        /// The identifier of a query message (echo, timestamp, …), else 0.
        id: u16,
        /// Query, error or other informational message.
        class: IcmpClass,
    },
    /// A protocol without ports, or a later fragment (which carries no transport header).
    None,
}

/// Where a packet sits in a fragmented datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fragment {
    /// Not fragmented (an IPv6 atomic fragment counts as not fragmented).
    No,
    /// Offset 0 with more fragments to come: classified with its ports.
    First {
        /// IPv4 identification or IPv6 fragment identification.
        id: u32,
    },
    /// Offset > 0: follows the verdict of its first fragment.
    Later {
        /// IPv4 identification or IPv6 fragment identification.
        id: u32,
    },
}

/// The parsed descriptor of one IP packet. Small and `Copy`: it holds offsets
/// and header fields, never the payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    /// IPv4 or IPv6.
    pub version: IpVersion,
    /// Source address (IPv4 in the first four bytes).
    pub src: RawAddr,
    /// Destination address (IPv4 in the first four bytes).
    pub dst: RawAddr,
    /// The transport protocol (after IPv6 extension headers).
    pub protocol: u8,
    /// Length of the whole IP packet in bytes.
    pub len: u32,
    /// Offset of the transport header (or of the fragment's data) in the packet.
    pub l4_offset: u16,
    /// Fragment position.
    pub fragment: Fragment,
    /// Transport fields.
    pub transport: Transport,
}

impl Packet {
    /// Source and destination ports, if the packet has them (ICMP has none).
    pub fn ports(&self) -> Option<(u16, u16)> {
        match self.transport {
            Transport::Tcp {
                src_port, dst_port, ..
            }
            | Transport::Ports { src_port, dst_port } => Some((src_port, dst_port)),
            _ => None,
        }
    }

    /// The destination is a multicast address (224.0.0.0/4, ff00::/8).
    pub fn dst_is_multicast(&self) -> bool {
        match self.version {
            IpVersion::V4 => self.dst[0] & 0xf0 == 0xe0,
            IpVersion::V6 => self.dst[0] == 0xff,
        }
    }

    /// The destination is the limited broadcast address 255.255.255.255.
    /// Directed broadcasts depend on port addresses and are recognised by the engine.
    pub fn dst_is_limited_broadcast(&self) -> bool {
        self.version == IpVersion::V4 && self.dst[..4] == [255; 4]
    }
}

/// Parses one raw IP packet. Never panics; malformed input gives the reason it
/// is dropped.
pub fn parse(bytes: &[u8]) -> Result<Packet, DropReason> {
    let Some(&first) = bytes.first() else {
        return Err(DropReason::Truncated);
    };
    match first >> 4 {
        4 => parse_ipv4(bytes),
        6 => parse_walked(bytes),
        _ => Err(DropReason::BadIpVersion),
    }
}

/// The IP authentication header (RFC 4302), which etherparse walks.
const AUTH: u8 = 51;

/// An IPv4 packet read directly: the checks etherparse's `IpSlice` makes, in
/// its order, without its slices (a third of the parse's instructions). A
/// packet with an authentication header goes the walked way.
fn parse_ipv4(bytes: &[u8]) -> Result<Packet, DropReason> {
    let ihl = bytes.first().map_or(0, |b| b & 0x0f);
    if ihl < 5 {
        return Err(DropReason::MalformedIp);
    }
    let header_len = usize::from(ihl) * 4;
    let Some(header) = bytes.get(..header_len) else {
        return Err(DropReason::Truncated);
    };
    let total_len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    if total_len < header_len || bytes.len() < total_len {
        return Err(DropReason::Truncated);
    }
    let protocol = header[9];
    if protocol == AUTH {
        return parse_walked(bytes);
    }
    let id = u32::from(u16::from_be_bytes([header[4], header[5]]));
    let flags_offset = u16::from_be_bytes([header[6], header[7]]);
    // More fragments (0x2000) or an offset: a fragment.
    let fragment = match (flags_offset & 0x2000 != 0, flags_offset & 0x1fff) {
        (false, 0) => Fragment::No,
        (true, 0) => Fragment::First { id },
        _ => Fragment::Later { id },
    };
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src[..4].copy_from_slice(&header[12..16]);
    dst[..4].copy_from_slice(&header[16..20]);
    let l4 = &bytes[header_len..total_len];
    let transport = match fragment {
        Fragment::Later { .. } => Transport::None,
        Fragment::First { .. } => parse_transport(IpVersion::V4, protocol, l4, true)?,
        Fragment::No => parse_transport(IpVersion::V4, protocol, l4, false)?,
    };
    Ok(Packet {
        version: IpVersion::V4,
        src,
        dst,
        protocol,
        len: total_len as u32,
        l4_offset: header_len as u16,
        fragment,
        transport,
    })
}

/// Any IP packet, its headers walked by etherparse (IPv6 extension headers,
/// IPv4 authentication headers).
fn parse_walked(bytes: &[u8]) -> Result<Packet, DropReason> {
    let ip = IpSlice::from_slice(bytes).map_err(|e| match e {
        etherparse::err::ip::SliceError::Len(_) => DropReason::Truncated,
        etherparse::err::ip::SliceError::IpHeaders(_) => DropReason::MalformedIp,
    })?;
    let (version, src, dst, fragment) = match &ip {
        IpSlice::Ipv4(v4) => {
            let h = v4.header();
            let mut src = [0u8; 16];
            let mut dst = [0u8; 16];
            src[..4].copy_from_slice(&h.source());
            dst[..4].copy_from_slice(&h.destination());
            let fragment = if !h.is_fragmenting_payload() {
                Fragment::No
            } else if h.fragments_offset().value() == 0 {
                Fragment::First {
                    id: u32::from(h.identification()),
                }
            } else {
                Fragment::Later {
                    id: u32::from(h.identification()),
                }
            };
            (IpVersion::V4, src, dst, fragment)
        }
        IpSlice::Ipv6(v6) => {
            let h = v6.header();
            let mut fragment = Fragment::No;
            for ext in v6.extensions().clone() {
                if let Ipv6ExtensionSlice::Fragment(f) = ext {
                    if f.is_fragmenting_payload() {
                        let id = f.identification();
                        fragment = if f.fragment_offset().value() == 0 {
                            Fragment::First { id }
                        } else {
                            Fragment::Later { id }
                        };
                    }
                }
            }
            (IpVersion::V6, h.source(), h.destination(), fragment)
        }
    };
    let payload = ip.payload();
    let protocol = payload.ip_number.0;
    let l4 = payload.payload;
    // etherparse stops at headers it cannot walk (ESP, HIP, …) and reports
    // that header as the payload: it is then simply an "other" protocol.
    let l4_offset = (l4.as_ptr() as usize).wrapping_sub(bytes.as_ptr() as usize);
    let transport = match fragment {
        Fragment::Later { .. } => Transport::None,
        Fragment::First { .. } => parse_transport(version, protocol, l4, true)?,
        Fragment::No => parse_transport(version, protocol, l4, false)?,
    };
    Ok(Packet {
        version,
        src,
        dst,
        protocol,
        len: u32::try_from(ip_total_len(&ip, bytes.len())).unwrap_or(u32::MAX),
        l4_offset: u16::try_from(l4_offset).unwrap_or(u16::MAX),
        fragment,
        transport,
    })
}

fn ip_total_len(ip: &IpSlice<'_>, slice_len: usize) -> usize {
    match ip {
        IpSlice::Ipv4(v4) => usize::from(v4.header().total_len()).min(slice_len),
        IpSlice::Ipv6(v6) => (40 + usize::from(v6.header().payload_length())).min(slice_len),
    }
}

/// Reads the transport header at the start of `l4`. For a first fragment the
/// header may be all there is; for an unfragmented packet the header lengths
/// must also fit the payload.
fn parse_transport(
    version: IpVersion,
    protocol: u8,
    l4: &[u8],
    first_fragment: bool,
) -> Result<Transport, DropReason> {
    let short = if first_fragment {
        DropReason::FragmentTooSmall
    } else {
        DropReason::MalformedTransport
    };
    match (protocol, version) {
        (proto::TCP, _) => {
            // TcpHeaderSlice's checks, read directly; its options only on a SYN.
            let header_len = usize::from(l4.get(12).map_or(0, |b| b >> 4)) * 4;
            if l4.len() < 20 || header_len < 20 || l4.len() < header_len {
                return Err(short);
            }
            let flags = l4[13];
            let be16 = |at: usize| u16::from_be_bytes([l4[at], l4[at + 1]]);
            let be32 = |at: usize| u32::from_be_bytes([l4[at], l4[at + 1], l4[at + 2], l4[at + 3]]);
            let mut wscale = None;
            if flags & tcp_flags::SYN != 0 {
                let tcp = TcpHeaderSlice::from_slice(l4).map_err(|_| short)?;
                for option in tcp.options_iterator() {
                    match option {
                        Ok(TcpOptionElement::WindowScale(s)) => wscale = Some(s.min(14)),
                        Ok(_) => {}
                        // A malformed option list ends the walk; the segment itself is still valid TCP.
                        Err(_) => break,
                    }
                }
            }
            Ok(Transport::Tcp {
                src_port: be16(0),
                dst_port: be16(2),
                segment: TcpSegment {
                    seq: be32(4),
                    ack: be32(8),
                    flags,
                    window: be16(14),
                    wscale,
                    payload_len: u32::try_from(l4.len().saturating_sub(header_len))
                        .unwrap_or(u32::MAX),
                },
            })
        }
        (proto::UDP, _) => {
            if l4.len() < 8 {
                return Err(short);
            }
            let udp_len = usize::from(u16::from_be_bytes([l4[4], l4[5]]));
            // UDP length 0 is legal only for IPv6 jumbograms, which a TUN never carries.
            if !first_fragment && (udp_len < 8 || udp_len > l4.len()) {
                return Err(DropReason::MalformedTransport);
            }
            Ok(Transport::Ports {
                src_port: u16::from_be_bytes([l4[0], l4[1]]),
                dst_port: u16::from_be_bytes([l4[2], l4[3]]),
            })
        }
        (proto::ICMP, IpVersion::V4) | (proto::ICMPV6, IpVersion::V6) => {
            if l4.len() < 8 {
                return Err(short);
            }
            let (icmp_type, code) = (l4[0], l4[1]);
            let class = icmp_class(version, icmp_type);
            let id = match class {
                IcmpClass::Query { .. } => u16::from_be_bytes([l4[4], l4[5]]),
                _ => 0,
            };
            Ok(Transport::Icmp {
                icmp_type,
                code,
                id,
                class,
            })
        }
        // Protocols whose first four bytes are a source and destination port.
        (33 | 132 | 136, _) => {
            if l4.len() < 4 {
                return Err(short);
            }
            Ok(Transport::Ports {
                src_port: u16::from_be_bytes([l4[0], l4[1]]),
                dst_port: u16::from_be_bytes([l4[2], l4[3]]),
            })
        }
        _ => Ok(Transport::None),
    }
}

/// The IP protocol number as etherparse names it, for display.
pub fn protocol_name(protocol: u8) -> Option<&'static str> {
    match protocol {
        proto::TCP => Some("tcp"),
        proto::UDP => Some("udp"),
        proto::ICMP => Some("icmp"),
        proto::ICMPV6 => Some("icmpv6"),
        _ => IpNumber(protocol).keyword_str(),
    }
}

#[cfg(test)]
mod tests;
