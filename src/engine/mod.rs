//! The engine: the deterministic state machine the shell drives.
//!
//! A [`Gateway`] holds what every worker shares (ports, routes, the flow
//! table, the fragment table). Each worker owns an [`Engine`]: its policy
//! handle, counters, event queue and a block of flow ids. The shell calls
//! [`Engine::process`] for every packet with the time it read once for the
//! batch, and [`Engine::handle_timeout`] periodically; tests do the same with
//! a virtual clock. Nothing here reads a clock, sleeps or does I/O.
//!
//! The path of a packet (SPEC §1–5):
//!
//! 1. parse (drop reasons for anything malformed);
//! 2. route: the longest matching port route picks the egress port;
//! 3. a later fragment follows its first fragment's verdict;
//! 4. an ICMP error is forwarded if the packet it quotes belongs to a flow
//!    ("related", without refreshing it), else classified at `icmp_error`;
//! 5. the flow key is looked up under its shard's lock:
//!    * hit: reauthorize if the layer's policy generation changed or the
//!      packet came in on another port of the flow's direction; track TCP;
//!      refresh and count;
//!    * miss: only a SYN may create a TCP flow; inbound packets may be
//!      admitted by multicast/broadcast state; otherwise classify at
//!      `auth_connect` (inside port) or `auth_recv_accept` (outside port) and
//!      on permit create the flow, making room if the table is full.

mod stats;

pub use stats::{PortCounters, Stats};

use crate::event::{Event, EventKind, FlowInfo, PacketSummary, ReauthTrigger};
use crate::flow::fragment::{FirstVerdict, FragmentKey, FragmentTable};
use crate::flow::table::{Removed, ShardGuard, SlotId};
use crate::flow::wildcard::{Wildcard, WildcardKey, Wildcards};
use crate::flow::{
    Direction, FlowClass, FlowConfig, FlowEntry, FlowKey, FlowState, FlowTable, TcpState,
    TcpTracker, Zone,
};
use crate::packet::tcp_flags::{ACK, FIN, RST, SYN};
use crate::packet::{
    Fragment, IcmpClass, Packet, RawAddr, Transport, parse, parse_quoted, raw_addr,
};
use crate::policy::{Action, Authorizer, ClassifyFlags, ClassifyRequest, Decision, Layer};
use crate::reason::{CloseReason, DropReason};
use crate::route::{PortSpec, RouteTable};
use crate::time::Instant;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// What to do with a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Write it out of this port.
    Forward(u8),
    /// Drop it.
    Drop(DropReason),
}

/// `host_model` (SPEC §5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HostModel {
    /// A packet of a flow arriving on another port of its direction is reauthorized.
    #[default]
    Weak,
    /// Such a packet is dropped (`wrong_interface`).
    Strong,
}

/// What the core needs to know about the gateway.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// Ports, indexed by position (at most 255).
    pub ports: Vec<PortSpec>,
    /// Flow limits and lifetimes.
    pub flows: FlowConfig,
    /// Weak or strong.
    pub host_model: HostModel,
    /// Flow-table shards; `None` picks [`FlowTable::default_shards`].
    pub shards: Option<usize>,
}

/// State shared by every worker.
pub struct Gateway {
    config: GatewayConfig,
    table: FlowTable,
    fragments: FragmentTable,
    routes: RouteTable,
    wildcards: Wildcards,
    broadcast: Vec<RawAddr>,
    next_id: AtomicU64,
}

/// Flow ids are taken from the shared counter in blocks so that creating a
/// flow does not touch a shared cache line.
const ID_BLOCK: u64 = 1024;
/// Most discard events queued between two drains; counters are never limited.
const MAX_QUEUED_DISCARDS: usize = 4096;
/// Slots each owned shard's sweep inspects per `handle_timeout`.
pub const DEFAULT_SWEEP_BUDGET: usize = 4096;

impl Gateway {
    /// Builds the shared state for one worker. Ports beyond 255 are a
    /// configuration error caught by the config loader; here they are ignored.
    pub fn new(config: GatewayConfig) -> Arc<Gateway> {
        Gateway::with_workers(config, 1)
    }

    /// Builds the shared state for `workers` workers: the flow table gets
    /// one group of shards per worker.
    pub fn with_workers(mut config: GatewayConfig, workers: usize) -> Arc<Gateway> {
        config.ports.truncate(255);
        let shards = config
            .shards
            .unwrap_or_else(|| FlowTable::default_shards(config.flows.max_flows));
        let broadcast = config
            .ports
            .iter()
            .flat_map(|p| p.broadcast.iter())
            .map(|a| raw_addr(*a).1)
            .collect();
        Arc::new(Gateway {
            table: FlowTable::new(config.flows.clone(), shards, workers),
            fragments: FragmentTable::new(
                config.flows.max_fragments,
                config.flows.fragment_timeout,
            ),
            routes: RouteTable::new(&config.ports),
            wildcards: Wildcards::default(),
            broadcast,
            next_id: AtomicU64::new(1),
            config,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }

    /// The port names, by index.
    pub fn port_names(&self) -> Vec<String> {
        self.config.ports.iter().map(|p| p.name.clone()).collect()
    }

    /// The flow table.
    pub fn table(&self) -> &FlowTable {
        &self.table
    }

    /// The fragment table.
    pub fn fragments(&self) -> &FragmentTable {
        &self.fragments
    }

    /// Number of flows.
    pub fn flows_active(&self) -> usize {
        self.table.len()
    }

    /// The current adaptive timeout factor.
    pub fn adaptive_factor(&self) -> f64 {
        self.table.adaptive_factor()
    }

    /// Snapshots every flow (one shard lock at a time).
    pub fn flows(&self, now: Instant) -> Vec<FlowInfo> {
        let factor = self.table.adaptive_factor();
        let mut out = Vec::with_capacity(self.table.len());
        for i in 0..self.table.shard_count() {
            let shard = self.table.lock_shard(i);
            for (slot, entry) in shard.iter() {
                out.push(FlowInfo::of(
                    entry,
                    shard.parent(slot),
                    now,
                    &self.config.flows,
                    factor,
                ));
            }
        }
        out.sort_by_key(|f| f.id);
        out
    }

    /// Creates the engine of worker `worker` out of `workers`.
    pub fn engine(
        self: &Arc<Self>,
        policy: Arc<dyn Authorizer>,
        worker: usize,
        workers: usize,
    ) -> Engine {
        Engine {
            gw: Arc::clone(self),
            local: Local {
                policy,
                group: worker % self.table.groups(),
                stats: Stats::new(self.config.ports.len()),
                events: Vec::new(),
                queued_discards: 0,
                ids: 0..0,
            },
            worker,
            workers: workers.max(1),
            sweep_budget: DEFAULT_SWEEP_BUDGET,
        }
    }

    fn is_broadcast(&self, packet: &Packet) -> bool {
        packet.dst_is_limited_broadcast()
            || (packet.version == crate::packet::IpVersion::V4
                && self.broadcast.contains(&packet.dst))
    }
}

/// One worker's engine.
pub struct Engine {
    gw: Arc<Gateway>,
    local: Local,
    worker: usize,
    workers: usize,
    sweep_budget: usize,
}

/// The worker-owned half of the engine, kept apart from the shared
/// [`Gateway`] so a shard guard borrowed from the gateway can live alongside
/// mutable access to counters and events.
struct Local {
    policy: Arc<dyn Authorizer>,
    /// The flow-table shard group this worker creates its flows in.
    group: usize,
    stats: Stats,
    events: Vec<Event>,
    queued_discards: usize,
    ids: std::ops::Range<u64>,
}

/// A drop with what the discard event reports.
struct Dropped {
    reason: DropReason,
    layer: Option<Layer>,
    filter: Option<Arc<str>>,
}

impl From<DropReason> for Dropped {
    fn from(reason: DropReason) -> Dropped {
        Dropped {
            reason,
            layer: None,
            filter: None,
        }
    }
}

/// Facts about the packet being processed, computed once.
struct Arrival<'p> {
    now: Instant,
    port: u8,
    zone: Zone,
    packet: &'p Packet,
    egress: u8,
}

impl Arrival<'_> {
    fn direction(&self) -> Direction {
        self.zone.direction()
    }
}

impl Engine {
    /// The shared state.
    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gw
    }

    /// Replaces the authorizer (after a reload). Flows notice the change
    /// through the layers' generations on their next packet.
    pub fn set_policy(&mut self, policy: Arc<dyn Authorizer>) {
        self.local.policy = policy;
    }

    /// The authorizer in use.
    pub fn policy(&self) -> &Arc<dyn Authorizer> {
        &self.local.policy
    }

    /// Sets how many slots per owned shard each `handle_timeout` inspects.
    pub fn set_sweep_budget(&mut self, budget: usize) {
        self.sweep_budget = budget.max(1);
    }

    /// This worker's counters.
    pub fn stats(&self) -> &Stats {
        &self.local.stats
    }

    /// Takes the queued events.
    pub fn drain_events(&mut self) -> std::vec::Drain<'_, Event> {
        self.local.queued_discards = 0;
        self.local.events.drain(..)
    }

    /// Decides what happens to one packet that arrived on port `port` at `now`.
    pub fn process(&mut self, now: Instant, port: u8, bytes: &mut [u8]) -> Verdict {
        let gw = &*self.gw;
        let local = &mut self.local;
        let len = bytes.len() as u64;
        let Some(spec) = gw.config.ports.get(usize::from(port)) else {
            local.discard(now, port, None, DropReason::UnknownPort.into());
            return Verdict::Drop(DropReason::UnknownPort);
        };
        local.stats.ports[usize::from(port)].rx(len);
        let packet = match parse(bytes) {
            Ok(packet) => packet,
            Err(reason) => {
                local.discard(now, port, None, reason.into());
                return Verdict::Drop(reason);
            }
        };
        match local.route_and_process(gw, now, port, spec.zone, &packet, bytes) {
            Ok(egress) => {
                local.stats.ports[usize::from(egress)].tx(len);
                Verdict::Forward(egress)
            }
            Err(dropped) => {
                let reason = dropped.reason;
                local.discard(now, port, Some(&packet), dropped);
                Verdict::Drop(reason)
            }
        }
    }

    /// The shards this worker sweeps and closes at shutdown: its group, or,
    /// when workers share one group, every `workers`-th shard of it.
    fn owned_shards(&self) -> Vec<usize> {
        let table = &self.gw.table;
        let group = table.group_shards(self.local.group);
        let sharing = self.workers.div_ceil(table.groups());
        let rank = self.worker / table.groups();
        group.skip(rank).step_by(sharing.max(1)).collect()
    }

    /// Expires idle flows and fragments in the shards this worker owns.
    pub fn handle_timeout(&mut self, now: Instant) {
        let shards = self.owned_shards();
        let gw = &*self.gw;
        let local = &mut self.local;
        let factor = gw.table.adaptive_factor();
        for idx in shards {
            let mut shard = gw.table.lock_shard(idx);
            shard.sweep(now, self.sweep_budget, |removed, reason| {
                local.closed(gw, now, factor, &removed, reason);
            });
        }
        gw.fragments.expire(now, self.worker, self.workers);
    }

    /// Removes every flow of the shards this worker owns with reason
    /// `shutdown` (or all shards when `all`).
    pub fn close_all(&mut self, now: Instant, all: bool) {
        let shards: Vec<usize> = if all {
            (0..self.gw.table.shard_count()).collect()
        } else {
            self.owned_shards()
        };
        let gw = &*self.gw;
        let local = &mut self.local;
        let factor = gw.table.adaptive_factor();
        for idx in shards {
            let mut shard = gw.table.lock_shard(idx);
            let slots: Vec<SlotId> = shard.iter().map(|(slot, _)| slot).collect();
            for slot in slots {
                let removed = shard.remove(slot);
                local.closed(gw, now, factor, &removed, CloseReason::Shutdown);
            }
        }
    }
}

fn tcp_segment(packet: &Packet) -> Option<&crate::packet::TcpSegment> {
    match &packet.transport {
        Transport::Tcp { segment, .. } => Some(segment),
        _ => None,
    }
}

impl Local {
    fn emit(&mut self, at: Instant, kind: EventKind) {
        self.events.push(Event { at, kind });
    }

    fn discard(&mut self, now: Instant, port: u8, packet: Option<&Packet>, dropped: Dropped) {
        self.stats.discards[dropped.reason.index()] += 1;
        if self.queued_discards >= MAX_QUEUED_DISCARDS {
            self.stats.events_dropped += 1;
            return;
        }
        self.queued_discards += 1;
        self.emit(
            now,
            EventKind::Discard {
                layer: dropped.layer,
                reason: dropped.reason,
                filter: dropped.filter,
                port,
                packet: packet.map(PacketSummary::of),
            },
        );
    }

    fn next_id(&mut self, gw: &Gateway) -> u64 {
        if self.ids.is_empty() {
            let start = gw.next_id.fetch_add(ID_BLOCK, Ordering::Relaxed);
            self.ids = start..start + ID_BLOCK;
        }
        let id = self.ids.start;
        self.ids.start += 1;
        id
    }

    fn classify(&mut self, request: &ClassifyRequest) -> Decision {
        let decision = self.policy.classify(request, &mut self.events);
        let layer = request.layer.index();
        match decision.action {
            Action::Permit => self.stats.layer_permit[layer] += 1,
            Action::Block => self.stats.layer_block[layer] += 1,
        }
        if decision.vetoed {
            self.stats.vetoes += 1;
        }
        decision
    }

    /// Indicates a removed flow at `endpoint_closure`.
    fn closed(
        &mut self,
        gw: &Gateway,
        now: Instant,
        factor: f64,
        removed: &Removed,
        reason: CloseReason,
    ) {
        self.stats.flows_closed[reason.index()] += 1;
        let entry = &removed.entry;
        if entry.is_wildcard_owner() {
            gw.wildcards.remove(&wildcard_key(&entry.key()), entry.id());
        }
        let flow = FlowInfo::of_removed(removed, now, &gw.config.flows, factor);
        self.policy
            .indicate(Layer::EndpointClosure, &flow, now, &mut self.events);
        self.emit(now, EventKind::FlowClosed { flow, reason });
    }

    /// Indicates a flow at `flow_established`.
    fn established(&mut self, gw: &Gateway, now: Instant, shard: &ShardGuard<'_>, slot: SlotId) {
        let flow = FlowInfo::of(
            shard.entry(slot),
            shard.parent(slot),
            now,
            &gw.config.flows,
            gw.table.adaptive_factor(),
        );
        self.policy
            .indicate(Layer::FlowEstablished, &flow, now, &mut self.events);
        self.emit(now, EventKind::FlowEstablished(flow));
    }

    fn route_and_process(
        &mut self,
        gw: &Gateway,
        now: Instant,
        port: u8,
        zone: Zone,
        packet: &Packet,
        bytes: &[u8],
    ) -> Result<u8, Dropped> {
        let egress = gw
            .routes
            .lookup(packet.version, &packet.dst)
            .ok_or(DropReason::NoRoute)?;
        if egress == port {
            return Err(DropReason::RouteLoop.into());
        }
        let arrival = Arrival {
            now,
            port,
            zone,
            packet,
            egress,
        };
        if let Fragment::Later { id } = packet.fragment {
            return match gw.fragments.lookup(&fragment_key(packet, id), now) {
                Some(FirstVerdict::Forwarded(_)) => Ok(egress),
                Some(FirstVerdict::Dropped) => Err(DropReason::FragmentOfDropped.into()),
                None => Err(DropReason::FragmentWithoutFirst.into()),
            };
        }
        if let Transport::Icmp {
            class: IcmpClass::Error,
            ..
        } = packet.transport
        {
            return self.icmp_error(gw, &arrival, bytes);
        }
        let key = FlowKey::of_packet(packet, zone).ok_or(DropReason::MalformedTransport)?;
        let result = self.flow_packet(gw, &arrival, key);
        if let Fragment::First { id } = packet.fragment {
            let verdict = match result {
                Ok(port) => FirstVerdict::Forwarded(port),
                Err(_) => FirstVerdict::Dropped,
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

    /// An ICMP error: related to a flow, or classified at `icmp_error`.
    fn icmp_error(&mut self, gw: &Gateway, a: &Arrival<'_>, bytes: &[u8]) -> Result<u8, Dropped> {
        let packet = a.packet;
        let quote = bytes
            .get(usize::from(packet.l4_offset) + 8..)
            .unwrap_or(&[]);
        if let Some(quoted) = parse_quoted(packet.version, quote)
            // An error goes back to the sender of the packet it quotes.
            && quoted.src == packet.dst
            && let Some(key) = FlowKey::of_quoted(&quoted, a.zone)
        {
            let hash = gw.table.hash(&key);
            let factor = gw.table.adaptive_factor();
            let related = (0..gw.table.groups()).any(|group| {
                let shard = gw.table.lock(group, hash);
                shard
                    .find(hash, &key)
                    .is_some_and(|slot| !shard.entry(slot).expired(a.now, &gw.config.flows, factor))
            });
            if related {
                self.stats.related_icmp += 1;
                return Ok(a.egress);
            }
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
            now: a.now,
        };
        let decision = self.classify(&request);
        match decision.action {
            Action::Permit => Ok(a.egress),
            Action::Block => Err(Dropped {
                reason: block_reason(Layer::IcmpError, &decision),
                layer: Some(Layer::IcmpError),
                filter: decision.filter,
            }),
        }
    }

    fn packet_flags(&self, gw: &Gateway, packet: &Packet) -> ClassifyFlags {
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
    fn flow_packet(&mut self, gw: &Gateway, a: &Arrival<'_>, key: FlowKey) -> Result<u8, Dropped> {
        let hash = gw.table.hash(&key);
        let own = self.group;
        let mut shard = gw.table.lock(own, hash);
        if let Some(verdict) = self.find_and_ride(gw, a, &mut shard, hash, &key) {
            return verdict;
        }
        if gw.table.groups() > 1 {
            // Not in this worker's group: the flow may have been created by
            // another worker (a packet steered to another queue). Look there,
            // one lock at a time, before creating it here.
            drop(shard);
            for group in (0..gw.table.groups()).filter(|g| *g != own) {
                let mut other = gw.table.lock(group, hash);
                if let Some(verdict) = self.find_and_ride(gw, a, &mut other, hash, &key) {
                    return verdict;
                }
            }
            shard = gw.table.lock(own, hash);
            // Only this worker creates flows in its group, but engines may
            // outnumber groups: look once more under the lock that inserts.
            if let Some(verdict) = self.find_and_ride(gw, a, &mut shard, hash, &key) {
                return verdict;
            }
        }
        self.new_flow(gw, a, shard, hash, key)
    }

    /// Rides the flow of `key` in `shard` if it is there and alive. A flow
    /// found expired (before the sweep got to it), or a finished TCP
    /// connection whose tuple a new SYN reuses, is closed here and `None`
    /// returned, as for a flow that is not there.
    fn find_and_ride(
        &mut self,
        gw: &Gateway,
        a: &Arrival<'_>,
        shard: &mut ShardGuard<'_>,
        hash: u64,
        key: &FlowKey,
    ) -> Option<Result<u8, Dropped>> {
        let slot = shard.find(hash, key)?;
        let entry = shard.entry(slot);
        let factor = gw.table.adaptive_factor();
        let reopen = tcp_segment(a.packet).is_some_and(|s| s.flags & (SYN | ACK) == SYN)
            && matches!(
                entry.state(),
                FlowState::Tcp(TcpState::TimeWait | TcpState::Closed)
            );
        if !reopen && !entry.expired(a.now, &gw.config.flows, factor) {
            return Some(self.ride(gw, a, shard, slot));
        }
        let reason = entry.expiry_reason();
        let removed = shard.remove(slot);
        self.closed(gw, a.now, factor, &removed, reason);
        None
    }

    /// A packet of an existing flow.
    fn ride(
        &mut self,
        gw: &Gateway,
        a: &Arrival<'_>,
        shard: &mut ShardGuard<'_>,
        slot: SlotId,
    ) -> Result<u8, Dropped> {
        let entry = shard.entry(slot);
        let (flow_direction, arrival_port, flow_generation, is_tcp, established) = (
            entry.direction(),
            entry.arrival_port(),
            entry.generation(),
            entry.is_tcp(),
            entry.established(),
        );
        let direction = a.direction();
        let layer = Layer::auth(flow_direction);
        let generation = self.policy.generation(layer);
        let with_flow = direction == flow_direction;
        let port_changed = with_flow && a.port != arrival_port;
        if port_changed && gw.config.host_model == HostModel::Strong {
            return Err(DropReason::WrongInterface.into());
        }
        let trigger = if flow_generation != generation {
            Some(ReauthTrigger::PolicyChange)
        } else if port_changed {
            Some(ReauthTrigger::ArrivalInterface)
        } else {
            None
        };
        if let Some(trigger) = trigger {
            self.reauthorize(gw, a, shard, slot, trigger, generation)?;
        }
        if let Some(segment) = tcp_segment(a.packet)
            && is_tcp
        {
            shard
                .entry_mut(slot)
                .track_tcp(with_flow, segment, gw.config.flows.tcp_window_tracking)
                .map_err(Dropped::from)?;
            if !established
                && shard.entry(slot).tcp().handshake_done()
                && shard.mark_established(slot)
            {
                self.established(gw, a.now, shard, slot);
            }
        }
        let entry = shard.entry_mut(slot);
        // Multicast/broadcast state is kept alive only by outbound traffic.
        if entry.class() == FlowClass::Unicast || direction == Direction::Outbound {
            entry.touch(a.now);
            if entry.is_wildcard_owner() {
                gw.wildcards
                    .refresh(&wildcard_key(&entry.key()), entry.id(), a.now);
            }
        }
        entry.count(direction, a.packet.len);
        Ok(a.egress)
    }

    /// SPEC §5: classify a live flow again at the layer that created it.
    fn reauthorize(
        &mut self,
        gw: &Gateway,
        a: &Arrival<'_>,
        shard: &mut ShardGuard<'_>,
        slot: SlotId,
        trigger: ReauthTrigger,
        generation: u32,
    ) -> Result<(), Dropped> {
        let entry = *shard.entry(slot);
        let layer = Layer::auth(entry.direction());
        let with_flow = a.direction() == entry.direction();
        let mut request = ClassifyRequest::for_flow(layer, &entry.key(), a.now);
        // Against the flow's direction the arrival interface is unknown (FWP_EMPTY).
        request.arrival_port = with_flow.then_some(a.port);
        request.flags = self.packet_flags(gw, a.packet) | ClassifyFlags::REAUTHORIZE;
        let decision = self.classify(&request);
        self.stats.reauthorizations += 1;
        let factor = gw.table.adaptive_factor();
        match decision.action {
            Action::Permit => {
                shard
                    .entry_mut(slot)
                    .authorize(generation, with_flow.then_some(a.port));
                let flow = FlowInfo::of(
                    shard.entry(slot),
                    shard.parent(slot),
                    a.now,
                    &gw.config.flows,
                    factor,
                );
                self.emit(
                    a.now,
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
                let flow = FlowInfo::of_removed(&removed, a.now, &gw.config.flows, factor);
                self.emit(
                    a.now,
                    EventKind::FlowReauthorized {
                        flow,
                        trigger,
                        result: Action::Block,
                        filter: decision.filter.clone(),
                    },
                );
                self.closed(gw, a.now, factor, &removed, CloseReason::ReauthBlocked);
                Err(Dropped {
                    reason: if decision.vetoed {
                        DropReason::Vetoed
                    } else {
                        DropReason::ReauthBlocked
                    },
                    layer: Some(layer),
                    filter: decision.filter,
                })
            }
        }
    }

    /// The first packet of a would-be flow.
    fn new_flow(
        &mut self,
        gw: &Gateway,
        a: &Arrival<'_>,
        mut shard: ShardGuard<'_>,
        hash: u64,
        key: FlowKey,
    ) -> Result<u8, Dropped> {
        let packet = a.packet;
        let direction = a.direction();
        let config = &gw.config.flows;
        let tcp = match tcp_segment(packet) {
            Some(segment) => {
                let flags = segment.flags;
                if flags & (SYN | ACK | RST | FIN) == SYN {
                    Some(TcpTracker::from_syn(segment))
                } else if config.tcp_loose_pickup
                    && flags & (SYN | RST) == 0
                    && flags & (ACK | FIN) != 0
                {
                    Some(TcpTracker::picked_up(segment))
                } else {
                    return Err(DropReason::TcpNoFlow.into());
                }
            }
            None => None,
        };
        let group = packet.dst_is_multicast() || gw.is_broadcast(packet);

        // Inbound traffic admitted by multicast/broadcast state.
        if direction == Direction::Inbound && tcp.is_none() && !gw.wildcards.is_empty() {
            let wild_key = WildcardKey {
                version: packet.version,
                protocol: packet.protocol,
                local_port: key.local_port,
            };
            if let Some(w) = gw.wildcards.find(
                &wild_key,
                &packet.dst,
                group,
                a.now,
                gw.table.adaptive_factor(),
            ) {
                let generation = self.policy.generation(Layer::AuthConnect);
                let id = self.next_id(gw);
                let mut entry = FlowEntry::new(
                    id,
                    key,
                    Direction::Outbound,
                    FlowClass::Unicast,
                    None,
                    a.now,
                    w.arrival_port,
                    generation,
                    None,
                );
                entry.count(direction, packet.len);
                return self.insert(gw, a, &mut shard, hash, entry, Some(w.parent_id));
            }
        }

        let layer = Layer::auth(direction);
        let mut request = ClassifyRequest::for_flow(layer, &key, a.now);
        if let Transport::Icmp {
            icmp_type, code, ..
        } = packet.transport
        {
            request.icmp = Some((icmp_type, code));
        }
        request.arrival_port = Some(a.port);
        request.flags = self.packet_flags(gw, packet);
        let decision = self.classify(&request);
        if decision.action == Action::Block {
            return Err(Dropped {
                reason: block_reason(layer, &decision),
                layer: Some(layer),
                filter: decision.filter,
            });
        }
        let mcast_state = direction == Direction::Outbound && group;
        let loose_source = !mcast_state
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
            self.policy.generation(layer),
            lifetime,
        );
        entry.count(direction, packet.len);
        if mcast_state || loose_source {
            entry.set_wildcard_owner();
        }
        let egress = self.insert(gw, a, &mut shard, hash, entry, None)?;
        if mcast_state || loose_source {
            gw.wildcards.add(
                wildcard_key(&key),
                Wildcard {
                    local: key.local,
                    any_group: mcast_state,
                    parent_id: id,
                    arrival_port: a.port,
                    refreshed: a.now,
                    lifetime: entry.timeout(config, 1.0),
                },
            );
        }
        Ok(egress)
    }

    /// Inserts a new flow and indicates it (created; established unless it
    /// is a TCP flow still in its handshake).
    fn insert(
        &mut self,
        gw: &Gateway,
        a: &Arrival<'_>,
        shard: &mut ShardGuard<'_>,
        hash: u64,
        entry: FlowEntry,
        parent: Option<u64>,
    ) -> Result<u8, Dropped> {
        let (slot, made_room) = shard
            .insert(hash, entry, parent, a.now)
            .ok_or(DropReason::FlowTableFull)?;
        let factor = gw.table.adaptive_factor();
        if let Some((removed, reason)) = made_room {
            self.closed(gw, a.now, factor, &removed, reason);
        }
        self.stats.flows_created += 1;
        let flow = FlowInfo::of(shard.entry(slot), parent, a.now, &gw.config.flows, factor);
        self.emit(a.now, EventKind::FlowCreated(flow));
        if (!entry.is_tcp() || entry.tcp().handshake_done()) && shard.mark_established(slot) {
            self.established(gw, a.now, shard, slot);
        }
        Ok(a.egress)
    }
}

fn block_reason(layer: Layer, decision: &Decision) -> DropReason {
    if decision.vetoed {
        return DropReason::Vetoed;
    }
    match layer {
        Layer::AuthConnect => DropReason::AuthConnectBlocked,
        Layer::AuthRecvAccept => DropReason::AuthRecvAcceptBlocked,
        _ => DropReason::IcmpErrorBlocked,
    }
}

fn wildcard_key(key: &FlowKey) -> WildcardKey {
    WildcardKey {
        version: key.version(),
        protocol: key.protocol,
        local_port: key.local_port,
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
