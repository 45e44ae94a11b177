//! The packet pipeline: routing, fragments, ICMP errors, and the packets of
//! existing flows (riding, TCP tracking, reauthorization).

use super::report::Dropped;
use super::translate::{Rewrite, find_alias};
use super::{Gateway, HostModel, Local};
use crate::event::{EventKind, FlowInfo, ReauthTrigger};
use crate::flow::fragment::{FirstVerdict, FragmentKey};
use crate::flow::key::{Orientation, PacketKey};
use crate::flow::table::{ShardGuard, SlotId};
use crate::flow::{Direction, FlowClass, FlowKey, Zone};
use crate::packet::rewrite::Endpoints;
use crate::packet::{Fragment, IcmpClass, Packet, TcpSegment, Transport, parse_quoted};
use crate::policy::{Action, ClassifyFlags, ClassifyRequest, Layer, SourceArrival};
use crate::reason::{CloseReason, DropReason};
use crate::time::Instant;

/// Facts about the packet being processed, computed once.
pub(super) struct Arrival<'p> {
    pub now: Instant,
    pub port: u8,
    pub zone: Zone,
    pub packet: &'p Packet,
    pub egress: u8,
    pub egress_zone: Zone,
    /// The packet's frame header and bytes, copied if its flow is pending.
    pub header: &'p [u8],
    pub bytes: &'p [u8],
    /// Why the destination does not route as it is (only while NAT is in
    /// use: a translated flow may still take it).
    pub route_error: Option<DropReason>,
}

/// A packet as it was read: its frame header (empty without offload) and
/// the IP packet (rewritten in place if its flow is translated).
pub(super) struct Frame<'p> {
    pub header: &'p [u8],
    pub bytes: &'p mut [u8],
}

impl Arrival<'_> {
    /// The direction of a flow this packet would create.
    pub fn direction(&self) -> Direction {
        self.zone.direction()
    }

    pub fn orientation(&self) -> Orientation {
        Orientation::of(self.zone, self.egress_zone)
    }

    /// The drop of a packet that does not route and was not translated.
    pub fn unrouted(&self) -> Dropped {
        self.route_error.unwrap_or(DropReason::NoRoute).into()
    }
}

#[inline]
pub(super) fn tcp_segment(packet: &Packet) -> Option<&TcpSegment> {
    match &packet.transport {
        Transport::Tcp { segment, .. } => Some(segment),
        _ => None,
    }
}

fn fragment_key(packet: &Packet, id: u32) -> FragmentKey {
    FragmentKey {
        version: packet.version,
        src: packet.src,
        dst: packet.dst,
        protocol: packet.protocol,
        id,
    }
}

/// Whether `policy` is newer than `flow` (generations wrap).
#[inline]
fn newer(policy: u32, flow: u32) -> bool {
    (policy.wrapping_sub(flow) as i32) > 0
}

impl Local {
    #[inline]
    pub(super) fn route_and_process(
        &mut self,
        gw: &Gateway,
        now: Instant,
        port: u8,
        zone: Zone,
        packet: &Packet,
        frame: Frame<'_>,
    ) -> Result<u8, Dropped> {
        self.rewrite = None;
        let routed = match gw.routes.lookup(packet.version, &packet.dst) {
            None => Err(DropReason::NoRoute),
            Some(egress) if egress == port => Err(DropReason::RouteLoop),
            Some(egress) => Ok(egress),
        };
        // A packet to a translated address routes only once translated: with
        // NAT in use an unroutable packet may still belong to (or create) a
        // translated flow, which is always a cross-zone one.
        let (egress, egress_zone, route_error) = match routed {
            Ok(egress) => (egress, gw.config.ports[usize::from(egress)].zone, None),
            Err(reason) if !gw.nat.aliases.is_empty() || self.policy.has_redirects() => {
                let other = match zone {
                    Zone::Inside => Zone::Outside,
                    Zone::Outside => Zone::Inside,
                };
                (port, other, Some(reason))
            }
            Err(reason) => return Err(reason.into()),
        };
        let arrival = Arrival {
            now,
            port,
            zone,
            packet,
            egress,
            egress_zone,
            header: frame.header,
            bytes: &*frame.bytes,
            route_error,
        };
        let egress = self.dispatch(gw, &arrival)?;
        // By reference: the rewrite is a few dozen bytes, and the next
        // packet clears it first.
        if let Some(rewrite) = &self.rewrite {
            // virtio_net_hdr.flags bit 0: VIRTIO_NET_HDR_F_NEEDS_CSUM.
            let partial = frame.header.first().is_some_and(|f| f & 1 != 0);
            rewrite
                .apply(frame.bytes, packet, partial)
                .ok_or(DropReason::MalformedTransport)?;
        }
        Ok(egress)
    }

    #[inline]
    fn dispatch(&mut self, gw: &Gateway, a: &Arrival<'_>) -> Result<u8, Dropped> {
        let packet = a.packet;
        let now = a.now;
        if let Fragment::Later { id } = packet.fragment {
            return match gw.fragments.lookup(&fragment_key(packet, id), now) {
                Some(FirstVerdict::Translated { port, src, dst }) => {
                    self.rewrite = Some(Rewrite::Packet(Endpoints {
                        src,
                        dst,
                        ports: (0, 0),
                        icmp_id: 0,
                    }));
                    Ok(port)
                }
                _ if a.route_error.is_some() => Err(a.unrouted()),
                Some(FirstVerdict::Forwarded(_)) => Ok(a.egress),
                Some(FirstVerdict::Dropped) => Err(DropReason::FragmentOfDropped.into()),
                None => Err(DropReason::FragmentWithoutFirst.into()),
            };
        }
        if let Transport::Icmp {
            class: IcmpClass::Error,
            ..
        } = packet.transport
        {
            return self.icmp_error(gw, a);
        }
        let key =
            FlowKey::of_packet(packet, a.orientation()).ok_or(DropReason::MalformedTransport)?;
        let result = self.flow_packet(gw, a, key);
        if let Fragment::First { id } = packet.fragment {
            let addresses = self.rewrite.as_ref().and_then(Rewrite::addresses);
            let verdict = match (&result, addresses) {
                // Later fragments of a held first fragment cannot follow it.
                (Ok(port), _) if *port == super::HELD => FirstVerdict::Dropped,
                (Ok(port), Some((src, dst))) => FirstVerdict::Translated {
                    port: *port,
                    src,
                    dst,
                },
                (Ok(port), _) => FirstVerdict::Forwarded(*port),
                (Err(_), _) => FirstVerdict::Dropped,
            };
            if gw
                .fragments
                .record(fragment_key(packet, id), verdict, now)
                .is_err()
                && result.is_ok()
            {
                // Without a record its later fragments would all be dropped:
                // better to drop the datagram now than to send a useless head.
                return Err(DropReason::FragmentTableFull.into());
            }
        }
        result
    }

    /// An ICMP error: related to a flow (translated back through NAT for a
    /// translated one), or classified at `icmp_error`.
    fn icmp_error(&mut self, gw: &Gateway, a: &Arrival<'_>) -> Result<u8, Dropped> {
        let (packet, bytes) = (a.packet, a.bytes);
        let quote = bytes
            .get(usize::from(packet.l4_offset) + 8..)
            .unwrap_or(&[]);
        // The quoted packet travelled the other way: it arrived where the
        // error leaves, and left where the error arrived.
        if let Some(quoted) = parse_quoted(packet.version, quote)
            // An error goes back to the sender of the packet it quotes.
            && quoted.src == packet.dst
            && let Some(key) = FlowKey::of_quoted(&quoted, Orientation::of(a.egress_zone, a.zone))
        {
            let hash = gw.table.hash(&key);
            let factor = gw.table.adaptive_factor();
            let mut related = None;
            for group in 0..gw.table.groups() {
                let shard = gw.table.lock(group, hash);
                if let Some(slot) = shard.find(hash, &key)
                    && !shard.entry(slot).expired(a.now, &gw.config.flows, factor)
                {
                    related = Some(match shard.entry(slot).is_translated() {
                        true => self.error_translated(a, &shard, slot, false),
                        false => Some(a.egress),
                    });
                    break;
                }
            }
            if related.is_none()
                && !gw.nat.aliases.is_empty()
                && let Some((shard, slot)) = find_alias(gw, &key, hash)
                && !shard.entry(slot).expired(a.now, &gw.config.flows, factor)
            {
                related = Some(self.error_translated(a, &shard, slot, true));
            }
            match related {
                Some(Some(egress)) if a.route_error.is_none() || self.rewrite.is_some() => {
                    self.stats.related_icmp += 1;
                    return Ok(egress);
                }
                Some(_) => return Err(a.unrouted()),
                None => {}
            }
        }
        if a.route_error.is_some() {
            return Err(a.unrouted());
        }
        let Transport::Icmp {
            icmp_type, code, ..
        } = packet.transport
        else {
            return Err(DropReason::MalformedTransport.into());
        };
        let (local_addr, remote_addr) = match a.direction() {
            Direction::Outbound => (packet.src, packet.dst),
            Direction::Inbound => (packet.dst, packet.src),
        };
        let request = ClassifyRequest {
            layer: Layer::IcmpError,
            version: packet.version,
            protocol: packet.protocol,
            local_addr,
            remote_addr,
            local_port: 0,
            remote_port: 0,
            icmp: Some((icmp_type, code)),
            arrival_port: Some(a.port),
            flags: self.packet_flags(gw, packet),
            source: Some(SourceArrival {
                local: a.direction() == Direction::Outbound,
                port: a.port,
            }),
            now: a.now,
            flow_id: None,
            completed: None,
            original: None,
        };
        let decision = self.classify(&request);
        match decision.action {
            Action::Permit => Ok(a.egress),
            Action::Block => Err(Dropped::blocked(Layer::IcmpError, decision)),
        }
    }

    pub(super) fn packet_flags(&self, gw: &Gateway, packet: &Packet) -> ClassifyFlags {
        let mut flags = ClassifyFlags::empty();
        if matches!(packet.fragment, Fragment::First { .. }) {
            flags.insert(ClassifyFlags::FRAGMENT);
        }
        if packet.dst_is_multicast() {
            flags.insert(ClassifyFlags::MULTICAST);
        }
        if gw.is_broadcast(packet) {
            flags.insert(ClassifyFlags::BROADCAST);
        }
        flags
    }

    /// A packet that belongs to (or would create) a flow.
    ///
    /// The established path takes one lock: the key's shard in this worker's
    /// group, where the flows of the packets the kernel steers here live.
    /// On a miss, the key's shard of every group is locked in group order
    /// (the one order every creator uses, so creators never wait on each
    /// other in a cycle; riders hold one lock at a time) and searched; with
    /// all of them held nobody else can create the key, so a flow is created
    /// once whichever worker sees its first packets (SPEC §14).
    #[inline]
    fn flow_packet(&mut self, gw: &Gateway, a: &Arrival<'_>, pk: PacketKey) -> Result<u8, Dropped> {
        let hash = gw.table.hash(&pk.key);
        let own = self.group;
        let groups = gw.table.groups();
        {
            let mut shard = gw.table.lock(own, hash);
            if let Some(verdict) = self.find_and_ride(gw, a, &mut shard, hash, pk) {
                return verdict;
            }
            if groups == 1 && gw.nat.aliases.is_empty() {
                let index = gw.table.shard_index(own, hash);
                return self.new_flow(gw, a, &mut shard, index, hash, pk);
            }
        }
        // Not under its own tuple: a packet of a translated flow carries
        // the translated one. (No table lock is held here: see `crate::nat`.)
        if !gw.nat.aliases.is_empty()
            && !pk.key.same_zone()
            && let Some(verdict) = self.ride_alias(gw, a, pk, hash)
        {
            return verdict;
        }
        let mut held = Vec::with_capacity(groups);
        for group in 0..groups {
            let mut shard = gw.table.lock(group, hash);
            if let Some(verdict) = self.find_and_ride(gw, a, &mut shard, hash, pk) {
                return verdict;
            }
            held.push(shard);
        }
        let index = gw.table.shard_index(own, hash);
        self.new_flow(gw, a, &mut held[own], index, hash, pk)
    }

    /// Rides the translated flow whose translated tuple is `pk`'s key.
    fn ride_alias(
        &mut self,
        gw: &Gateway,
        a: &Arrival<'_>,
        pk: PacketKey,
        hash: u64,
    ) -> Option<Result<u8, Dropped>> {
        let (mut shard, slot) = find_alias(gw, &pk.key, hash)?;
        let factor = gw.table.adaptive_factor();
        let entry = shard.entry(slot);
        let reopened = entry.is_tcp()
            && tcp_segment(a.packet).is_some_and(|segment| entry.tcp().reopened_by(segment));
        if !reopened && !entry.expired(a.now, &gw.config.flows, factor) {
            // Both keys are cross-zone keys: the packet lies on the flow's
            // key as it lies on the translated one.
            return Some(self.ride(gw, a, &mut shard, slot, pk.swapped, Some(true)));
        }
        let reason = entry.expiry_reason();
        let removed = shard.remove(slot);
        self.closed(gw, a.now, factor, &removed, reason);
        None
    }

    /// Rides the flow of `pk` in `shard` if it is there and alive. A flow
    /// found expired (before the sweep got to it), or a finished TCP
    /// connection whose tuple a new SYN reuses, is closed here and `None`
    /// returned, as for a flow that is not there.
    #[inline]
    fn find_and_ride(
        &mut self,
        gw: &Gateway,
        a: &Arrival<'_>,
        shard: &mut ShardGuard<'_>,
        hash: u64,
        pk: PacketKey,
    ) -> Option<Result<u8, Dropped>> {
        // A masqueraded flow's translated tuple is indexed in its shard
        // ([`crate::flow::hash`]): both keys are cross-zone keys, so the
        // packet lies on the flow's key as it lies on the translated one.
        let (slot, entry, on_alias) = shard.find_any(hash, &pk.key)?;
        let factor = gw.table.adaptive_factor();
        let reopened = entry.is_tcp()
            && tcp_segment(a.packet).is_some_and(|segment| entry.tcp().reopened_by(segment));
        if !reopened && !entry.expired(a.now, &gw.config.flows, factor) {
            return Some(self.ride(gw, a, shard, slot, pk.swapped, Some(on_alias)));
        }
        let reason = entry.expiry_reason();
        let removed = shard.remove(slot);
        self.closed(gw, a.now, factor, &removed, reason);
        None
    }

    /// A packet of an existing flow; `swapped` says how it lies on the key,
    /// `on_alias` whether it was found under the flow's translated key
    /// (`None`: not known, as for a held packet).
    #[inline]
    pub(super) fn ride(
        &mut self,
        gw: &Gateway,
        a: &Arrival<'_>,
        shard: &mut ShardGuard<'_>,
        slot: SlotId,
        swapped: bool,
        on_alias: Option<bool>,
    ) -> Result<u8, Dropped> {
        let entry = shard.entry(slot);
        if a.route_error.is_some() && !entry.is_translated() {
            return Err(a.unrouted());
        }
        if entry.is_pending() {
            return self.hold(gw, a, entry.id(), swapped);
        }
        let flow_direction = entry.direction();
        let with_flow = entry.with_flow(swapped);
        let (arrival_port, flow_generation, is_tcp, established) = (
            entry.arrival_port(),
            entry.generation(),
            entry.is_tcp(),
            entry.established(),
        );
        let layer = Layer::auth(flow_direction);
        let generation = self.facts.generation(flow_direction);
        let port_changed = with_flow && a.port != arrival_port;
        if port_changed && gw.config.host_model == HostModel::Strong {
            return Err(DropReason::WrongInterface.into());
        }
        // Monotonic: a worker still on an older policy (its batch began
        // before a reload) never reauthorizes a flow stamped with a newer one.
        let synced = entry.synced();
        let trigger = if synced {
            // SPEC §15: the first packet here of a flow the peer created.
            Some(ReauthTrigger::Failover)
        } else if newer(generation, flow_generation) {
            Some(
                if self.policy.identity_change_only(layer, flow_generation) {
                    ReauthTrigger::IdentityChange
                } else {
                    ReauthTrigger::PolicyChange
                },
            )
        } else if port_changed {
            Some(ReauthTrigger::ArrivalInterface)
        } else {
            None
        };
        if let Some(trigger) = trigger {
            // Against the flow's direction the arrival interface is unknown (FWP_EMPTY).
            let flags = self.packet_flags(gw, a.packet);
            self.reauthorize(
                gw,
                a.now,
                shard,
                slot,
                with_flow.then_some(a.port),
                flags,
                trigger,
            )?;
        }
        let mut changed = synced;
        // One borrow of the entry for the common packet; the shard is
        // needed again only when the flow changed (events, HA export).
        let entry = shard.entry_mut(slot);
        let mut now_established = false;
        if let Some(segment) = tcp_segment(a.packet)
            && is_tcp
        {
            // A replicated flow's windows are checked loosely until each
            // direction has been seen here (SPEC §15). (Not pending: held above.)
            let enforce = gw.config.flows.tcp_window_tracking && entry.strict_windows();
            changed |= entry
                .track_tcp(with_flow, segment, enforce)
                .map_err(Dropped::from)?;
            now_established = !established && entry.tcp().handshake_done();
        }
        let entry = if changed || now_established {
            if now_established && shard.mark_established(slot) {
                self.established(gw, a.now, shard, slot);
                changed = true;
            }
            shard.entry_mut(slot).seen_here(with_flow);
            if changed {
                self.export(gw, shard, slot);
            }
            shard.entry_mut(slot)
        } else {
            entry.seen_here(with_flow);
            entry
        };
        // The packet's direction as seen from the flow's local host.
        let direction = if with_flow {
            flow_direction
        } else {
            flow_direction.reverse()
        };
        // Multicast/broadcast state is kept alive only by outbound traffic.
        if entry.class() == FlowClass::Unicast || direction == Direction::Outbound {
            entry.touch(a.now);
            if entry.is_wildcard_owner() {
                gw.wildcards.refresh(
                    &super::admission::wildcard_key(&entry.key()),
                    entry.id(),
                    a.now,
                );
            }
        }
        entry.count(direction, a.packet.len);
        // Read again rather than kept: a flag held across the ride costs
        // every untranslated packet a register.
        if entry.is_translated() {
            return self
                .ride_translated(a, shard, slot, flow_direction, on_alias)
                .ok_or_else(|| a.unrouted());
        }
        Ok(a.egress)
    }

    /// SPEC §5: classify a live flow again at the layer that created it,
    /// with `arrival_port` (`None`: unknown) and the packet's `flags`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn reauthorize(
        &mut self,
        gw: &Gateway,
        now: Instant,
        shard: &mut ShardGuard<'_>,
        slot: SlotId,
        arrival_port: Option<u8>,
        flags: ClassifyFlags,
        trigger: ReauthTrigger,
    ) -> Result<(), Dropped> {
        let entry = *shard.entry(slot);
        let layer = Layer::auth(entry.direction());
        let generation = self.facts.generation(entry.direction());
        // A translated flow is classified on its translated tuple.
        let translated = shard.translation(slot).map(|t| t.key);
        let mut request = ClassifyRequest::for_flow(layer, &translated.unwrap_or(entry.key()), now);
        request.arrival_port = arrival_port;
        // Against the flow's direction the packet's source arrived where
        // the flow was authorized.
        request.source = Some(SourceArrival {
            local: entry.direction() == Direction::Outbound,
            port: arrival_port.unwrap_or(entry.arrival_port()),
        });
        request.flags = flags | ClassifyFlags::REAUTHORIZE;
        if translated.is_some() {
            request.flags.insert(ClassifyFlags::REDIRECTED);
            request.original = Some(crate::policy::Original::of(&entry.key()));
        }
        request.flow_id = Some(entry.id());
        request.completed = entry.completed();
        let decision = self.classify(&request);
        self.stats.reauthorizations += 1;
        let factor = gw.table.adaptive_factor();
        match decision.action {
            Action::Permit => {
                shard.entry_mut(slot).authorize(generation, arrival_port);
                let flow = shard.info(slot, now, &gw.config.flows, factor);
                self.emit(
                    now,
                    EventKind::FlowReauthorized {
                        flow,
                        trigger,
                        result: Action::Permit,
                        filter: decision.filter,
                    },
                );
                Ok(())
            }
            Action::Block => {
                let removed = shard.remove(slot);
                let flow = FlowInfo::of_removed(&removed, now, &gw.config.flows, factor);
                self.emit(
                    now,
                    EventKind::FlowReauthorized {
                        flow,
                        trigger,
                        result: Action::Block,
                        filter: decision.filter.clone(),
                    },
                );
                self.closed(gw, now, factor, &removed, CloseReason::ReauthBlocked);
                let mut dropped = Dropped::blocked(layer, decision);
                if dropped.reason != DropReason::Vetoed {
                    dropped.reason = DropReason::ReauthBlocked;
                }
                Err(dropped)
            }
        }
    }
}
