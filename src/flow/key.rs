//! Flow identity: zones, directions and the symmetric flow key (SPEC §1–2).
//!
//! The key is oriented by the arrival port's zone, not by the packet's
//! direction on the wire: a packet arriving on an inside port has the local
//! address as its source, one arriving on an outside port as its destination.
//! Both directions of a flow therefore build the same key without sorting
//! endpoints.

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
/// An ICMP query flow whose requests travel inbound: a request travelling the
/// other way builds a different key and so does not ride the flow.
const META_INBOUND_QUERY: u8 = 2;

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

impl Hash for FlowKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Whole words: ahash has fast paths for them, and the derived impl
        // would hash the arrays as length-prefixed slices.
        state.write_u128(u128::from_ne_bytes(self.local));
        state.write_u128(u128::from_ne_bytes(self.remote));
        state.write_u64(
            u64::from(self.local_port)
                | u64::from(self.remote_port) << 16
                | u64::from(self.protocol) << 32
                | u64::from(self.meta) << 40,
        );
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

    /// The key of the flow `packet` belongs to when it arrives on a port of
    /// `zone`. `None` for ICMP errors, which never belong to a flow of their own.
    pub fn of_packet(packet: &Packet, zone: Zone) -> Option<FlowKey> {
        let direction = zone.direction();
        let (local, remote) = orient(direction, packet.src, packet.dst);
        let mut key = FlowKey::new(packet.version, packet.protocol, local, remote, 0, 0);
        match packet.transport {
            Transport::Tcp {
                src_port, dst_port, ..
            }
            | Transport::Ports { src_port, dst_port } => {
                (key.local_port, key.remote_port) = orient(direction, src_port, dst_port);
            }
            Transport::Icmp {
                icmp_type,
                code,
                id,
                class,
            } => key.set_icmp(direction, icmp_type, code, id, class)?,
            Transport::None => {}
        }
        Some(key)
    }

    /// The key of the flow a quoted packet (inside an ICMP error that arrived
    /// on a port of `error_zone`) belongs to. The quoted packet travelled the
    /// other way, so it is oriented by the opposite zone.
    pub fn of_quoted(quoted: &QuotedPacket, error_zone: Zone) -> Option<FlowKey> {
        let direction = error_zone.direction().reverse();
        let (local, remote) = orient(direction, quoted.src, quoted.dst);
        let mut key = FlowKey::new(quoted.version, quoted.protocol, local, remote, 0, 0);
        match quoted.icmp {
            Some((icmp_type, code, id, class)) => {
                key.set_icmp(direction, icmp_type, code, id, class)?;
            }
            None => {
                (key.local_port, key.remote_port) =
                    orient(direction, quoted.src_port, quoted.dst_port);
            }
        }
        Some(key)
    }

    fn set_icmp(
        &mut self,
        direction: Direction,
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
                let request_direction = if request {
                    direction
                } else {
                    direction.reverse()
                };
                if request_direction == Direction::Inbound {
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

    /// IPv4 or IPv6.
    pub fn version(&self) -> IpVersion {
        if self.meta & META_V6 != 0 {
            IpVersion::V6
        } else {
            IpVersion::V4
        }
    }

    /// Whether the protocol is ICMP of the key's IP version.
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

/// Orders a (source, destination) pair as (local, remote).
fn orient<T>(direction: Direction, src: T, dst: T) -> (T, T) {
    match direction {
        Direction::Outbound => (src, dst),
        Direction::Inbound => (dst, src),
    }
}
