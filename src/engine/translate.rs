//! Address translation in the engine (SPEC §9): redirect classification of
//! a new flow, port allocation and release, and the rewrite of every packet
//! of a translated flow (ICMP errors about it included).
//!
//! Keys of translated flows are cross-zone keys, whose local end is the
//! inside-side endpoint as the packet shows it. The flow is stored under
//! the key its creating packet carried; its [`Translation`] holds the key
//! the other side of the gateway sees. A packet is rewritten from the view
//! it arrived in to the other view, and leaves through the port cached in
//! the translation.

use super::pipeline::Arrival;
use super::report::Dropped;
use super::{Gateway, Local};
use crate::event::{EventKind, PortMapping};
use crate::flow::{Direction, FlowKey, Zone};
use crate::flow::{shard::Removed, table::ShardGuard, table::SlotId};
use crate::nat::{Affinity, MapKey, Translation, endpoints};
use crate::packet::rewrite::{self, Deltas, Endpoints, FlowRewrite, Ports4};
use crate::packet::{Packet, RawAddr, proto};
use crate::policy::{ClassifyRequest, Layer, RedirectAddress};
use crate::reason::DropReason;
use crate::time::Instant;
use std::sync::Arc;

/// The default range masquerade allocates from (SPEC §9).
const DEFAULT_RANGE: (u16, u16) = (1024, 65535);

/// A rewrite decided while processing a packet, applied once it is forwarded.
#[derive(Clone, Copy, Debug)]
pub(super) enum Rewrite {
    /// The packet's endpoints become these.
    Packet(Endpoints),
    /// A packet of an established translated flow: it carries the flow's
    /// endpoints, so the checksum deltas are the flow's precomputed ones.
    Flow(Endpoints, Deltas),
    /// [`Rewrite::Flow`] for an IPv4 TCP or UDP packet, the common case.
    Ports4(Ports4),
    /// An ICMP error: outer (source, destination) and the quoted packet.
    IcmpError {
        outer: (RawAddr, RawAddr),
        quoted: Endpoints,
    },
}

impl Rewrite {
    /// The (source, destination) a translated packet leaves with, which
    /// its later fragments follow; `None` for an ICMP error.
    pub(super) fn addresses(&self) -> Option<(RawAddr, RawAddr)> {
        match self {
            Rewrite::Packet(e) | Rewrite::Flow(e, _) => Some((e.src, e.dst)),
            Rewrite::Ports4(p) => {
                let e = p.endpoints();
                Some((e.src, e.dst))
            }
            Rewrite::IcmpError { .. } => None,
        }
    }

    pub(super) fn apply(&self, bytes: &mut [u8], packet: &Packet, partial: bool) -> Option<()> {
        match self {
            Rewrite::Packet(to) => rewrite::translate(bytes, packet, to, partial),
            Rewrite::Flow(to, deltas) => {
                // The flow's deltas hold only for the endpoints of its key.
                debug_assert_eq!(
                    *deltas,
                    Deltas::between(packet.version, packet.protocol, &Endpoints::of(packet), to)
                );
                rewrite::translate_with(bytes, packet, to, *deltas, partial)
            }
            Rewrite::Ports4(rewrite) => {
                debug_assert!(
                    packet.version == crate::packet::IpVersion::V4
                        && has_ports(packet.protocol)
                        && !matches!(packet.fragment, crate::packet::Fragment::Later { .. })
                );
                debug_assert_eq!(
                    rewrite.deltas(),
                    Deltas::between(
                        packet.version,
                        packet.protocol,
                        &Endpoints::of(packet),
                        &rewrite.endpoints()
                    )
                );
                rewrite.apply(bytes, usize::from(packet.l4_offset), partial)
            }
            Rewrite::IcmpError { outer, quoted } => {
                rewrite::translate_icmp_error(bytes, packet, *outer, quoted)
            }
        }
    }
}

/// What the redirect layers decided for a new flow.
pub(super) struct Plan {
    /// The translated key (its port or id still the original where one is
    /// to be allocated).
    pub key: FlowKey,
    /// A mapping to acquire: (key, range, the port to keep if free); the
    /// port lands in the key.
    pub allocate: Option<(MapKey, (u16, u16), Option<u16>)>,
    pub filter: Arc<str>,
    /// Egress toward [0] the outside and [1] the inside.
    pub egress: [u8; 2],
}

/// Whether translation rewrites the transport ports of this protocol.
fn has_ports(protocol: u8) -> bool {
    matches!(protocol, proto::TCP | proto::UDP)
}

impl Local {
    /// Classifies a new cross-zone flow at `bind_redirect` and (outbound)
    /// `connect_redirect`; `key` is the flow as its first packet shows it.
    pub(super) fn plan(
        &mut self,
        gw: &Gateway,
        a: &Arrival<'_>,
        key: &FlowKey,
        request: &ClassifyRequest,
    ) -> Result<Option<Plan>, Dropped> {
        let direction = a.direction();
        let icmp_query = key.icmp().is_some_and(|i| i.id.is_some());
        let ports = has_ports(key.protocol);
        let mut translated = *key;
        let mut allocate = None;
        let mut filters: Vec<Arc<str>> = Vec::new();
        let pick = |address: RedirectAddress, keep: RawAddr| match address {
            RedirectAddress::Keep => Ok(keep),
            RedirectAddress::To(addr) => Ok(addr),
            RedirectAddress::Missing => Err(Dropped::from(DropReason::NatNoAddress)),
        };
        let mut bind = *request;
        bind.layer = Layer::BindRedirect;
        if let Some(r) = self.policy.redirect(&bind) {
            translated.local = pick(r.address, key.local)?;
            match direction {
                Direction::Outbound if ports || icmp_query => {
                    let inside_port = if ports {
                        key.local_port
                    } else {
                        key.remote_port
                    };
                    let map = MapKey {
                        protocol: key.protocol,
                        inside: key.local,
                        inside_port,
                        translated: translated.local,
                    };
                    // SPEC §9: without to_port the original port is kept when
                    // free; with one, only if it lies in the range.
                    let range = r.to_port.unwrap_or(DEFAULT_RANGE);
                    let keep = (r.to_port.is_none() || (range.0..=range.1).contains(&inside_port))
                        .then_some(inside_port);
                    allocate = Some((map, range, keep));
                }
                Direction::Inbound if ports => {
                    translated.local_port = r.target_port(key.local_port)
                }
                _ => {}
            }
            filters.push(r.filter);
        }
        if direction == Direction::Outbound {
            let mut connect = *request;
            connect.layer = Layer::ConnectRedirect;
            if let Some(r) = self.policy.redirect(&connect) {
                translated.remote = pick(r.address, key.remote)?;
                if ports {
                    translated.remote_port = r.target_port(key.remote_port);
                }
                filters.push(r.filter);
            }
        }
        if filters.is_empty() {
            return Ok(None);
        }
        let filter = match filters.as_slice() {
            [one] => Arc::clone(one),
            many => Arc::from(many.join(",")),
        };
        let (inside, outside) = match direction {
            Direction::Outbound => (key, &translated),
            Direction::Inbound => (&translated, key),
        };
        let route = |addr: &RawAddr| {
            gw.routes
                .lookup(key.version(), addr)
                .ok_or(Dropped::from(DropReason::NoRoute))
        };
        let egress = [route(&outside.remote)?, route(&inside.local)?];
        Ok(Some(Plan {
            key: translated,
            allocate,
            filter,
            egress,
        }))
    }

    /// Acquires the plan's mapping and puts its port into the plan's key.
    /// Returns whether a new mapping was assigned.
    /// A new port is chosen, where one is free, so that the translated
    /// tuple falls in the flow's shard `shard_index` ([`crate::flow::hash`]):
    /// packets carrying it then take one lock, as the flow's own do.
    pub(super) fn acquire(
        &mut self,
        gw: &Gateway,
        plan: &mut Plan,
        shard_index: usize,
    ) -> Result<bool, Dropped> {
        let Some((map, range, keep)) = plan.allocate else {
            return Ok(false);
        };
        let ports = has_ports(plan.key.protocol);
        let table = &gw.table;
        let group = table.group_of_shard(shard_index);
        let side = table.hasher().remote_side(&plan.key);
        let shard_of = |port| {
            let bits = table.hasher().shard_bits(side, port);
            table.shard_index(group, u64::from(bits) << 24)
        };
        let fits = |port| shard_of(port) == shard_index;
        // One more port is (about) one shard further on.
        let stride = table.group_shards(group).len();
        let residue = (shard_index + stride - shard_of(0)) % stride;
        let affinity = Affinity {
            stride: stride as u16,
            residue: residue as u16,
            fits: &fits,
        };
        let (port, new) = gw
            .nat
            .allocator()
            .acquire(map, range, keep, ports.then_some(&affinity))
            .map_err(|_| Dropped::from(DropReason::NatPortsExhausted))?;
        if ports {
            plan.key.local_port = port;
        } else {
            plan.key.remote_port = port;
        }
        Ok(new)
    }

    /// Gives back a mapping acquired for a flow that was then not created.
    pub(super) fn unacquire(gw: &Gateway, plan: &Plan) {
        if let Some((map, ..)) = plan.allocate {
            gw.nat.allocator().release(&map);
        }
    }

    /// Makes the just-inserted flow in `slot` translated: its side data,
    /// its alias, and the NAT log. Returns the creating packet's egress.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn translated(
        &mut self,
        gw: &Gateway,
        a: &Arrival<'_>,
        shard: &mut ShardGuard<'_>,
        shard_index: usize,
        slot: SlotId,
        plan: Plan,
        assigned: bool,
    ) -> u8 {
        let entry = *shard.entry(slot);
        let egress = plan.egress;
        // Only outbound flows allocate: their translated key is the outside view.
        let mapping = plan.allocate.map(|(map, ..)| {
            let port = if has_ports(plan.key.protocol) {
                plan.key.local_port
            } else {
                plan.key.remote_port
            };
            (map, port)
        });
        gw.nat.aliases.add(
            plan.key,
            crate::nat::AliasTarget {
                shard: shard_index as u32,
                slot,
                id: entry.id(),
            },
        );
        shard.set_translation(
            slot,
            Translation {
                key: plan.key,
                egress,
                mapping,
                filter: plan.filter,
            },
        );
        if let Some((map, port)) = mapping
            && assigned
        {
            self.port_event(gw, a.now, shard, slot, map, port, true);
        }
        let (zone_index, to) = match entry.direction() {
            Direction::Outbound => (0, plan.key),
            Direction::Inbound => (1, plan.key),
        };
        self.rewrite = Some(Rewrite::Packet(endpoints(&to, a.zone)));
        egress[zone_index]
    }

    #[allow(clippy::too_many_arguments)]
    fn port_event(
        &mut self,
        gw: &Gateway,
        now: Instant,
        shard: &ShardGuard<'_>,
        slot: SlotId,
        map: MapKey,
        port: u16,
        assigned: bool,
    ) {
        let flow = shard.info(slot, now, &gw.config.flows, gw.table.adaptive_factor());
        self.port_log(now, &flow, map, port, assigned);
    }

    fn port_log(
        &mut self,
        now: Instant,
        flow: &crate::flow::FlowInfo,
        map: MapKey,
        port: u16,
        assigned: bool,
    ) {
        let layer = if assigned {
            Layer::ResourceAssignment
        } else {
            Layer::ResourceRelease
        };
        self.policy.indicate(layer, flow, now, &mut self.notes);
        self.take_notes();
        let log = PortMapping {
            version: flow.key.version(),
            protocol: map.protocol,
            inside_addr: map.inside,
            inside_port: map.inside_port,
            translated_addr: map.translated,
            translated_port: port,
        };
        let kind = if assigned {
            EventKind::PortAssigned(log)
        } else {
            EventKind::PortReleased(log)
        };
        self.emit(now, kind);
    }

    /// A translated flow was removed: its alias goes, and its mapping's
    /// port is released with the mapping's last flow.
    pub(super) fn untranslate(
        &mut self,
        gw: &Gateway,
        now: Instant,
        removed: &Removed,
        flow: &crate::flow::FlowInfo,
    ) {
        if let Some((map, port)) = gw.release_translation(removed) {
            self.port_log(now, flow, map, port, false);
        }
    }

    /// The rewrite of a packet riding translated flow `slot` (of
    /// `direction`), and its egress. `on_alias`: whether the packet was
    /// found under the flow's translated key (`Some(false)`: under its
    /// table key; `None`: not known).
    #[inline]
    pub(super) fn ride_translated(
        &mut self,
        a: &Arrival<'_>,
        shard: &ShardGuard<'_>,
        slot: SlotId,
        direction: Direction,
        on_alias: Option<bool>,
    ) -> Option<u8> {
        // Only the view the packet goes to: an answer (against the flow's
        // direction) goes to the table key's, the flow's own packets to the
        // translated key's.
        let outbound = direction == Direction::Outbound;
        let (i, to_table_key) = match a.zone {
            Zone::Inside => (0, !outbound),
            Zone::Outside => (1, outbound),
        };
        let (t, flow_rewrite) = shard.translation_rewrite(slot, i)?;
        // The flow's rewrite holds for packets carrying the view expected
        // on this side; anything else (a packet on the other view, a
        // fragment whose ports are not those of the key) takes the general
        // rewrite. A TCP or UDP packet found under a cross-zone key carries
        // exactly that key's addresses and ports (the key is built from
        // them, oriented by the arrival zone), so the key it was found
        // under tells; an ICMP packet may carry an id its key does not hold.
        if let (FlowRewrite::Ports4(ports4), Some(on_alias)) = (flow_rewrite, on_alias)
            && on_alias == to_table_key
        {
            // Written in place: the rewrite is the size of its largest kind.
            self.rewrite = Some(Rewrite::Ports4(*ports4));
            return Some(t.egress[i]);
        }
        let entry = shard.entry(slot);
        let view = |table_key| match table_key {
            true => entry.table_key_ref(),
            false => &t.key,
        };
        let carried = match on_alias {
            Some(on_alias) if has_ports(t.key.protocol) => on_alias == to_table_key,
            _ => rewrite::carries(a.packet, &endpoints(view(!to_table_key), a.zone)),
        };
        let to = endpoints(view(to_table_key), a.zone);
        self.rewrite = Some(match (carried, flow_rewrite) {
            (true, FlowRewrite::Ports4(ports4)) => Rewrite::Ports4(*ports4),
            (true, FlowRewrite::Deltas(deltas)) => Rewrite::Flow(to, *deltas),
            (false, _) => Rewrite::Packet(to),
        });
        Some(t.egress[i])
    }

    /// An ICMP error quoting a packet of translated flow `slot`, the quote
    /// lying on the flow's table key (`on_alias` false) or its translated
    /// key: translated into the other view, outer addresses and quote.
    pub(super) fn error_translated(
        &mut self,
        a: &Arrival<'_>,
        shard: &ShardGuard<'_>,
        slot: SlotId,
        on_alias: bool,
    ) -> Option<u8> {
        let entry = shard.entry(slot);
        let t = shard.translation(slot)?;
        let (q, to) = if on_alias {
            (t.key, entry.table_key())
        } else {
            (entry.table_key(), t.key)
        };
        let packet = a.packet;
        // The quoted packet left through the error's arrival zone.
        let (quoted, outer_dst, src_match, src_new, egress) = match a.zone {
            Zone::Outside => {
                let e = endpoints(&to, Zone::Inside);
                (e, to.local, q.remote, to.remote, t.egress[1])
            }
            Zone::Inside => {
                let e = endpoints(&to, Zone::Outside);
                (e, to.remote, q.local, to.local, t.egress[0])
            }
        };
        let outer_src = if packet.src == src_match {
            src_new
        } else {
            packet.src
        };
        self.rewrite = Some(Rewrite::IcmpError {
            outer: (outer_src, outer_dst),
            quoted,
        });
        Some(egress)
    }
}

/// The translated flow whose translated tuple is `key` (`hash` its flow
/// table hash), its shard locked.
pub(super) fn find_alias<'g>(
    gw: &'g Gateway,
    key: &FlowKey,
    hash: u64,
) -> Option<(ShardGuard<'g>, SlotId)> {
    let target = gw.nat.aliases.find_hashed(hash)?;
    let shard = gw.table.lock_shard(target.shard as usize);
    // The slot may have been reused (or its chunk given back), and the
    // alias holds only the hash.
    let live = shard.holds_translated(target.slot, target.id, key);
    live.then_some((shard, target.slot))
}
