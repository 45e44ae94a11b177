//! Flow admission: the first packet of a would-be flow, and the flows
//! admitted by multicast/broadcast or loose-source state.

use super::pend::PendRequest;
use super::pipeline::{Arrival, tcp_segment};
use super::report::Dropped;
use super::{Gateway, Local};
use crate::event::EventKind;
use crate::flow::key::PacketKey;
use crate::flow::table::{ShardGuard, SlotId};
use crate::flow::wildcard::{Wildcard, WildcardKey};
use crate::flow::{Direction, FlowClass, FlowEntry, FlowKey, TcpTracker};
use crate::packet::Transport;
use crate::policy::{Action, ClassifyFlags, ClassifyRequest, Layer, Original, SourceArrival};
use crate::reason::DropReason;

pub(super) fn wildcard_key(key: &FlowKey) -> WildcardKey {
    WildcardKey {
        version: key.version(),
        protocol: key.protocol,
        local_port: key.local_port,
    }
}

impl Local {
    /// The first packet of a would-be flow, with `shard` (the key's shard in
    /// this worker's group) locked.
    pub(super) fn new_flow(
        &mut self,
        gw: &Gateway,
        a: &Arrival<'_>,
        shard: &mut ShardGuard<'_>,
        shard_index: usize,
        hash: u64,
        pk: PacketKey,
    ) -> Result<u8, Dropped> {
        let packet = a.packet;
        let key = pk.key;
        let direction = a.direction();
        let config = &gw.config.flows;
        let tcp = match tcp_segment(packet) {
            Some(segment) => Some(TcpTracker::open(segment, config.tcp_loose_pickup)?),
            None => None,
        };
        // The packet's flags say whether it goes to a group (computed once:
        // the broadcast check walks the ports' addresses).
        let flags = self.packet_flags(gw, packet);
        let group = flags.intersects(ClassifyFlags::MULTICAST | ClassifyFlags::BROADCAST);

        if direction == Direction::Inbound
            && tcp.is_none()
            && a.route_error.is_none()
            && let Some(w) = self.wildcard_match(gw, a, &key, group)
        {
            return self.admit_child(gw, a, shard, hash, pk, w);
        }

        let layer = Layer::auth(direction);
        // The request describes the packet: local is its source when it
        // arrived on an inside port, its destination on an outside one.
        let flow_key = if pk.swapped == (direction == Direction::Inbound) {
            key
        } else {
            key.reversed()
        };
        let mut request = ClassifyRequest::for_flow(layer, &flow_key, a.now);
        if let Transport::Icmp {
            icmp_type, code, ..
        } = packet.transport
        {
            request.icmp = Some((icmp_type, code));
        }
        request.arrival_port = Some(a.port);
        request.source = Some(SourceArrival {
            local: direction == Direction::Outbound,
            port: a.port,
        });
        request.flags = flags;
        // SPEC §9: the redirect layers first; the auth layer then sees the
        // translated tuple, and the original one in `original_*`.
        let mut plan = match key.same_zone() || group {
            true => None,
            false if self.policy.has_redirects() => self.plan(gw, a, &flow_key, &request)?,
            false => None,
        };
        if plan.is_none() && a.route_error.is_some() {
            return Err(a.unrouted());
        }
        let mut assigned = false;
        if let Some(plan) = plan.as_mut() {
            assigned = self.acquire(gw, plan, shard_index)?;
            if gw.nat.aliases.find(&plan.key).is_some() {
                Self::unacquire(gw, plan);
                return Err(DropReason::NatConflict.into());
            }
            let mut translated = ClassifyRequest::for_flow(layer, &plan.key, a.now);
            translated.icmp = request.icmp;
            translated.arrival_port = request.arrival_port;
            translated.source = request.source;
            translated.flags = request.flags | ClassifyFlags::REDIRECTED;
            translated.original = Some(Original::of(&flow_key));
            request = translated;
        }
        let id = self.peek_id(gw);
        request.flow_id = Some(id);
        // A callout may hand the id to another thread that completes the
        // flow before it is pending: the store remembers such a decision.
        // Without a callout at the layer nothing can (two SeqCst stores saved).
        let may_pend = self.facts.may_pend(direction);
        if may_pend {
            gw.pend.classifying(self.worker, id);
        }
        let decision = self.classify(&request);
        if may_pend && decision.pend.is_none() {
            gw.pend.classifying(self.worker, 0);
        }
        if let Some(plan) = &plan
            && (decision.pend.is_some() || decision.action == Action::Block)
        {
            // Nothing is allocated for a flow that is not created; a
            // translated flow is not pended (docs/deviations.md).
            Self::unacquire(gw, plan);
            if decision.pend.is_some() {
                gw.pend.classifying(self.worker, 0);
                return Err(DropReason::NatPended.into());
            }
        }
        if let Some(pend) = decision.pend {
            let request = PendRequest {
                tcp,
                layer,
                filter: decision.filter,
                pend,
                flags: request.flags,
            };
            return self.pend_new_flow(gw, a, shard, hash, pk, request);
        }
        if decision.action == Action::Block {
            return Err(Dropped::blocked(layer, decision));
        }
        let mcast_state = direction == Direction::Outbound && group;
        let loose_source = !mcast_state
            && plan.is_none()
            && decision.options.loose_source_mapping
            && packet.protocol == crate::packet::proto::UDP;
        if mcast_state && decision.options.deny_multicast_state {
            return Ok(a.egress);
        }
        let (class, lifetime) = if mcast_state {
            (
                FlowClass::McastBcastState,
                Some(
                    decision
                        .options
                        .mcast_bcast_lifetime
                        .unwrap_or(config.mcast_bcast_lifetime),
                ),
            )
        } else if tcp.is_none() {
            (FlowClass::Unicast, decision.options.unicast_lifetime)
        } else {
            (FlowClass::Unicast, None)
        };
        let id = self.next_id(gw);
        let mut entry = FlowEntry::new(
            id,
            key,
            direction,
            class,
            tcp,
            a.now,
            a.port,
            self.facts.generation(direction),
            lifetime,
        );
        entry.orient(pk.swapped, true);
        entry.count(direction, packet.len);
        if mcast_state || loose_source {
            entry.set_wildcard_owner();
        }
        let slot = match self.insert_entry(gw, a, shard, hash, entry, None) {
            Ok(slot) => slot,
            Err(dropped) => {
                if let Some(plan) = &plan {
                    Self::unacquire(gw, plan);
                }
                return Err(dropped);
            }
        };
        let egress = match plan {
            Some(plan) => self.translated(gw, a, shard, shard_index, slot, plan, assigned),
            None => a.egress,
        };
        self.announce(gw, a, shard, slot);
        if let Some(filter) = &decision.filter {
            self.policy.flow_created(filter);
        }
        if mcast_state || loose_source {
            let owner_key = entry.key();
            gw.wildcards.add(
                wildcard_key(&owner_key),
                Wildcard {
                    local: owner_key.local,
                    any_group: mcast_state,
                    parent_id: id,
                    direction,
                    arrival_port: a.port,
                    refreshed: a.now,
                    lifetime: entry.timeout(config, 1.0),
                },
            );
        }
        Ok(egress)
    }

    /// The multicast/broadcast or loose-source state that admits an inbound
    /// packet without a flow, if any.
    fn wildcard_match(
        &self,
        gw: &Gateway,
        a: &Arrival<'_>,
        key: &FlowKey,
        group: bool,
    ) -> Option<Wildcard> {
        if gw.wildcards.is_empty() || key.same_zone() {
            return None;
        }
        let wild_key = WildcardKey {
            version: a.packet.version,
            protocol: a.packet.protocol,
            local_port: key.local_port,
        };
        gw.wildcards.find(
            &wild_key,
            &a.packet.dst,
            group,
            a.now,
            gw.table.adaptive_factor(),
        )
    }

    /// A flow admitted by its owner's wildcard: it takes the owner's
    /// direction, layer, policy generation and arrival port, and has the
    /// owner as parent.
    fn admit_child(
        &mut self,
        gw: &Gateway,
        a: &Arrival<'_>,
        shard: &mut ShardGuard<'_>,
        hash: u64,
        pk: PacketKey,
        w: Wildcard,
    ) -> Result<u8, Dropped> {
        let generation = self.facts.generation(w.direction);
        let id = self.next_id(gw);
        let mut entry = FlowEntry::new(
            id,
            pk.key,
            w.direction,
            FlowClass::Unicast,
            None,
            a.now,
            w.arrival_port,
            generation,
            None,
        );
        // The admitting packet arrived inbound: with an inbound owner it
        // travels with the flow, with an outbound one it is a response.
        let with_flow = w.direction == Direction::Inbound;
        entry.orient(pk.swapped, with_flow);
        entry.count(Direction::Inbound, a.packet.len);
        self.insert(gw, a, shard, hash, entry, Some(w.parent_id))
    }

    /// Inserts a new flow and indicates it (created; established unless it
    /// is a TCP flow still in its handshake or pending).
    pub(super) fn insert(
        &mut self,
        gw: &Gateway,
        a: &Arrival<'_>,
        shard: &mut ShardGuard<'_>,
        hash: u64,
        entry: FlowEntry,
        parent: Option<u64>,
    ) -> Result<u8, Dropped> {
        let slot = self.insert_entry(gw, a, shard, hash, entry, parent)?;
        self.announce(gw, a, shard, slot);
        Ok(a.egress)
    }

    /// Inserts a new flow (making room if the table is full).
    #[inline]
    fn insert_entry(
        &mut self,
        gw: &Gateway,
        a: &Arrival<'_>,
        shard: &mut ShardGuard<'_>,
        hash: u64,
        entry: FlowEntry,
        parent: Option<u64>,
    ) -> Result<SlotId, Dropped> {
        let slot = shard.insert(hash, entry, parent, a.now, |removed, reason| {
            let factor = gw.table.adaptive_factor();
            self.closed(gw, a.now, factor, &removed, reason);
        });
        slot.ok_or_else(|| DropReason::FlowTableFull.into())
    }

    /// Indicates a new flow: created; established unless it is a TCP flow
    /// still in its handshake or pending.
    fn announce(
        &mut self,
        gw: &Gateway,
        a: &Arrival<'_>,
        shard: &mut ShardGuard<'_>,
        slot: SlotId,
    ) {
        self.stats.flows_created += 1;
        if self.flow_events {
            let factor = gw.table.adaptive_factor();
            let flow = shard.info(slot, a.now, &gw.config.flows, factor);
            self.emit(a.now, EventKind::FlowCreated(flow));
        }
        let entry = shard.entry(slot);
        // A pending flow is indicated at `flow_established` once permitted.
        if (!entry.is_tcp() || entry.tcp().handshake_done())
            && !entry.is_pending()
            && shard.mark_established(slot)
        {
            self.established(gw, a.now, shard, slot);
        }
        self.export(gw, shard, slot);
    }
}
