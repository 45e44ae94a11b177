//! Flow identity: zones, directions and the symmetric flow key (SPEC §1–2).
//!
//! Between zones the key is oriented by the arrival port's zone, not by the
//! packet's direction on the wire: a packet arriving on an inside port has
//! the local address as its source, one arriving on an outside port as its
//! destination, so both directions build the same key without sorting
//! endpoints. Between two ports of one zone (two inside networks, two
//! outside links) both directions arrive on the same zone, so the key orders
//! the endpoints canonically instead (the lower address and port first) and
//! is marked as a same-zone key. The flow entry remembers whether its
//! creating packet was swapped, which defines local and remote for such
//! flows: local is the creating packet's source when it arrived on an inside
//! port, its destination when it arrived on an outside one, as in SPEC §1.

use crate::packet::{IcmpClass, IpVersion, Packet, QuotedPacket, RawAddr, Transport, proto};
use std::hash::{Hash, Hasher};

/// Which side of the gateway a port faces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Zone {
    /// The protected network: packets arriving here travel outbound.
    Inside,
    /// Everything else: packets arriving here travel inbound.
    Outside,
}

impl Zone {
    /// The direction of a packet that arrives on a port of this zone.
    pub fn direction(self) -> Direction {
        match self {
            Zone::Inside => Direction::Outbound,
            Zone::Outside => Direction::Inbound,
        }
    }

    /// `"inside"` or `"outside"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Zone::Inside => "inside",
            Zone::Outside => "outside",
        }
    }
}

/// The direction of a flow (that of the packet that created it) or of a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the inside host to a remote one; authorized at `auth_connect`.
    Outbound,
    /// From a remote host to the inside one; authorized at `auth_recv_accept`.
    Inbound,
}

impl Direction {
    /// The other direction.
    pub fn reverse(self) -> Direction {
        match self {
            Direction::Outbound => Direction::Inbound,
            Direction::Inbound => Direction::Outbound,
        }
    }

    /// `"outbound"` or `"inbound"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

const META_V6: u8 = 1;
/// An ICMP query flow whose requests are sent by the key's remote endpoint
/// (between zones: requests travel inbound): a request travelling the other
/// way builds a different key and so does not ride the flow.
const META_INBOUND_QUERY: u8 = 2;
/// Both endpoints lie behind ports of one zone; the endpoints are in canonical order.
const META_SAME_ZONE: u8 = 4;

/// How a packet's source and destination map to a key's local and remote.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Orientation {
    /// Between zones, arriving on an inside port: local is the source.
    Outbound,
    /// Between zones, arriving on an outside port: local is the destination.
    Inbound,
    /// Both ports in one zone: the endpoints in canonical order.
    SameZone,
}

impl Orientation {
    /// The orientation of a packet that arrived on a port of `arrival` and
    /// leaves through a port of `egress`.
    #[inline]
    pub fn of(arrival: Zone, egress: Zone) -> Orientation {
        match (arrival, egress) {
            (a, e) if a == e => Orientation::SameZone,
            (Zone::Inside, _) => Orientation::Outbound,
            (Zone::Outside, _) => Orientation::Inbound,
        }
    }

    /// Whether the key's local endpoint is the packet's destination.
    #[inline]
    fn swaps<T: Ord>(self, src: (&RawAddr, T), dst: (&RawAddr, T)) -> bool {
        match self {
            Orientation::Outbound => false,
            Orientation::Inbound => true,
            Orientation::SameZone => src > dst,
        }
    }
}

/// A packet's key and how the packet lies on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketKey {
    /// The flow key.
    pub key: FlowKey,
    /// The key's local endpoint is the packet's destination.
    pub swapped: bool,
}

/// The identity of a flow. 38 bytes, compared and hashed as plain bytes.
///
/// For TCP, UDP and other protocols the ports are the transport ports (0 when
/// the protocol has none). For ICMP the local port holds the type and code of
/// the request form (`type << 8 | code`) and the remote port the query id.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowKey {
    /// The inside host's address.
    pub local: RawAddr,
    /// The other host's address.
    pub remote: RawAddr,
    /// The inside host's port, or ICMP `type << 8 | code`.
    pub local_port: u16,
    /// The other host's port, or the ICMP query id.
    pub remote_port: u16,
    /// IP protocol number.
    pub protocol: u8,
    meta: u8,
}

// The flow table hashes the two sides apart (`super::hash`).
impl FlowKey {
    /// Hashes what masquerade leaves alone: the remote side.
    #[inline]
    pub(super) fn hash_remote_side<H: Hasher>(&self, state: &mut H) {
        // Whole words: ahash has fast paths for them.
        state.write_u128(u128::from_ne_bytes(self.remote));
        state.write_u64(
            u64::from(self.remote_port)
                | u64::from(self.protocol) << 16
                | u64::from(self.meta) << 24,
        );
    }

    /// Hashes the rest: the local address and port.
    #[inline]
    pub(super) fn hash_local_side<H: Hasher>(&self, state: &mut H) {
        state.write_u128(u128::from_ne_bytes(self.local));
        state.write_u16(self.local_port);
    }
}

impl Hash for FlowKey {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.hash_remote_side(state);
        self.hash_local_side(state);
    }
}

/// The ICMP identity of a flow key, for display.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcmpIdentity {
    /// Type of the request form (8 for an echo flow).
    pub icmp_type: u8,
    /// Code.
    pub code: u8,
    /// The query id, for query messages only.
    pub id: Option<u16>,
}

impl FlowKey {
    /// The all-zero key (the value of a vacant table slot).
    pub const ZERO: FlowKey = FlowKey {
        local: [0; 16],
        remote: [0; 16],
        local_port: 0,
        remote_port: 0,
        protocol: 0,
        meta: 0,
    };

    /// Builds a key from its parts.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub fn new(
        version: IpVersion,
        protocol: u8,
        local: RawAddr,
        remote: RawAddr,
        local_port: u16,
        remote_port: u16,
    ) -> Self {
        FlowKey {
            local,
            remote,
            local_port,
            remote_port,
            protocol,
            meta: if version == IpVersion::V6 { META_V6 } else { 0 },
        }
    }

    /// The key of the flow `packet` belongs to, oriented by `orientation`.
    /// `None` for ICMP errors, which never belong to a flow of their own.
    #[inline]
    pub fn of_packet(packet: &Packet, orientation: Orientation) -> Option<PacketKey> {
        let (ports, icmp) = match packet.transport {
            Transport::Tcp {
                src_port, dst_port, ..
            }
            | Transport::Ports { src_port, dst_port } => ((src_port, dst_port), None),
            Transport::Icmp {
                icmp_type,
                code,
                id,
                class,
            } => ((0, 0), Some((icmp_type, code, id, class))),
            Transport::None => ((0, 0), None),
        };
        let (src, dst) = ((packet.src, ports.0), (packet.dst, ports.1));
        FlowKey::build(packet.version, packet.protocol, src, dst, icmp, orientation)
    }

    /// The key of the flow a quoted packet (inside an ICMP error) belongs
    /// to. `orientation` is that of the quoted packet's own travel: the
    /// error came back the other way.
    pub fn of_quoted(quoted: &QuotedPacket, orientation: Orientation) -> Option<FlowKey> {
        let ports = match quoted.icmp {
            Some(_) => (0, 0),
            None => (quoted.src_port, quoted.dst_port),
        };
        let (src, dst) = ((quoted.src, ports.0), (quoted.dst, ports.1));
        FlowKey::build(
            quoted.version,
            quoted.protocol,
            src,
            dst,
            quoted.icmp,
            orientation,
        )
        .map(|pk| pk.key)
    }

    #[inline]
    fn build(
        version: IpVersion,
        protocol: u8,
        src: (RawAddr, u16),
        dst: (RawAddr, u16),
        icmp: Option<(u8, u8, u16, IcmpClass)>,
        orientation: Orientation,
    ) -> Option<PacketKey> {
        let swapped = orientation.swaps((&src.0, src.1), (&dst.0, dst.1));
        let mut key = FlowKey::endpoints(version, protocol, src, dst, swapped);
        if orientation == Orientation::SameZone {
            key.meta |= META_SAME_ZONE;
        }
        if let Some((icmp_type, code, id, class)) = icmp {
            key.set_icmp(swapped, icmp_type, code, id, class)?;
        }
        Some(PacketKey { key, swapped })
    }

    #[inline]
    fn endpoints(
        version: IpVersion,
        protocol: u8,
        src: (RawAddr, u16),
        dst: (RawAddr, u16),
        swapped: bool,
    ) -> FlowKey {
        let (local, remote) = if swapped { (dst, src) } else { (src, dst) };
        FlowKey::new(version, protocol, local.0, remote.0, local.1, remote.1)
    }

    fn set_icmp(
        &mut self,
        swapped: bool,
        icmp_type: u8,
        code: u8,
        id: u16,
        class: IcmpClass,
    ) -> Option<()> {
        match class {
            IcmpClass::Query {
                request,
                request_type,
            } => {
                // The request's sender is the packet's source for a request,
                // its destination for a reply; it is the key's remote end
                // exactly when that side was swapped into the remote place.
                if request == swapped {
                    self.meta |= META_INBOUND_QUERY;
                }
                self.local_port = u16::from(request_type) << 8 | u16::from(code);
                self.remote_port = id;
            }
            IcmpClass::Info => self.local_port = u16::from(icmp_type) << 8 | u16::from(code),
            IcmpClass::Error => return None,
        }
        Some(())
    }

    /// The key with local and remote exchanged (ICMP type, code and id stay).
    pub fn reversed(&self) -> FlowKey {
        let mut key = FlowKey {
            local: self.remote,
            remote: self.local,
            ..*self
        };
        if self.is_icmp() {
            key.meta ^= META_INBOUND_QUERY;
        } else {
            (key.local_port, key.remote_port) = (self.remote_port, self.local_port);
        }
        key
    }

    /// The key's flag bits (IP version, inbound query, same zone), for the
    /// flow record ([`super::record`]).
    pub(super) fn meta(&self) -> u8 {
        self.meta
    }

    /// A key from a flow record's fields; `None` if `meta` has unknown bits.
    pub(super) fn from_record(
        local: RawAddr,
        remote: RawAddr,
        local_port: u16,
        remote_port: u16,
        protocol: u8,
        meta: u8,
    ) -> Option<FlowKey> {
        (meta & !(META_V6 | META_INBOUND_QUERY | META_SAME_ZONE) == 0).then_some(FlowKey {
            local,
            remote,
            local_port,
            remote_port,
            protocol,
            meta,
        })
    }

    /// Whether both endpoints lie behind ports of one zone.
    #[inline]
    pub fn same_zone(&self) -> bool {
        self.meta & META_SAME_ZONE != 0
    }

    /// IPv4 or IPv6.
    #[inline]
    pub fn version(&self) -> IpVersion {
        if self.meta & META_V6 != 0 {
            IpVersion::V6
        } else {
            IpVersion::V4
        }
    }

    /// Whether the protocol is ICMP of the key's IP version.
    #[inline]
    pub fn is_icmp(&self) -> bool {
        matches!(
            (self.protocol, self.version()),
            (proto::ICMP, IpVersion::V4) | (proto::ICMPV6, IpVersion::V6)
        )
    }

    /// The ICMP type, code and (for queries) id; `None` for other protocols.
    pub fn icmp(&self) -> Option<IcmpIdentity> {
        if !self.is_icmp() {
            return None;
        }
        let icmp_type = (self.local_port >> 8) as u8;
        let query = matches!(
            crate::packet::icmp_class(self.version(), icmp_type),
            IcmpClass::Query { .. }
        );
        Some(IcmpIdentity {
            icmp_type,
            code: self.local_port as u8,
            id: query.then_some(self.remote_port),
        })
    }
}
