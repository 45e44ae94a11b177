//! The engine: the deterministic state machine the shell drives.
//!
//! A [`Gateway`] holds what every worker shares (ports, routes, the flow
//! table, the fragment table, the policy in force). Each worker owns an
//! [`Engine`]: its copy of the policy handle, counters, event queue and a
//! block of flow ids. The shell calls [`Engine::refresh_policy`] once per
//! batch, [`Engine::process`] for every packet with the time it read once for
//! the batch, and [`Engine::handle_timeout`] periodically; tests do the same
//! with a virtual clock. Nothing here reads a clock, sleeps or does I/O.
//!
//! The path of a packet (SPEC §1–5), in [`pipeline`](self):
//!
//! 1. parse (drop reasons for anything malformed);
//! 2. route: the longest matching port route picks the egress port;
//! 3. a later fragment follows its first fragment's verdict;
//! 4. an ICMP error is forwarded if the packet it quotes belongs to a flow
//!    ("related", without refreshing it), else classified at `icmp_error`;
//! 5. the flow key (oriented by the arrival and egress zones) is looked up
//!    under its shard's lock:
//!    * hit: reauthorize if the layer's policy is newer than the flow's or
//!      the packet came in on another port of the flow's direction; track
//!      TCP; refresh and count;
//!    * miss (flow admission, in `admission`): the TCP tracker decides
//!      whether the packet may open a flow; inbound packets may be admitted
//!      by multicast/broadcast or loose-source state; otherwise classify at
//!      `auth_connect` (inside port) or `auth_recv_accept` (outside port) and
//!      on permit create the flow, making room if the table is full.
//!
//! A callout may pend a new flow instead (`pend`): its packets are held
//! until the flow is completed, then released or dropped by the worker that
//! holds them (SPEC §10).
//!
//! Events and counters are kept by `report`.

mod admission;
mod carry;
mod gateway;
mod pend;
mod pipeline;
mod replica;
mod report;
mod stats;
mod translate;

pub use carry::Restored;
pub use gateway::{Gateway, GatewayConfig, HostModel};
pub use pend::{PendError, PendingInfo};
pub use replica::{Applied, FlowRecords};
pub use stats::{PortCounters, Stats};

use crate::event::Event;
use crate::flow::table::SlotId;
use crate::flow::{Direction, FlowSelector};
use crate::policy::{Authorizer, Layer};
use crate::reason::{CloseReason, DropReason};
use crate::time::Instant;
use std::sync::Arc;

/// What to do with a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Write it out of this port.
    Forward(u8),
    /// Drop it.
    Drop(DropReason),
    /// The engine copied it: its flow is pending (SPEC §10). It leaves
    /// later through [`Engine::drain_released`], or is dropped and counted.
    Held,
}

/// The egress the pipeline reports for a held packet: no port has this
/// index (ports are at most 255, numbered from 0).
pub(crate) const HELD: u8 = u8::MAX;

/// Flow ids are taken from the shared counter in blocks so that creating a
/// flow does not touch a shared cache line.
const ID_BLOCK: u64 = 1024;
/// Most discard events queued between two drains; counters are never limited.
const MAX_QUEUED_DISCARDS: usize = 4096;
/// Slots each owned shard's sweep inspects per `handle_timeout`.
pub const DEFAULT_SWEEP_BUDGET: usize = 4096;

/// One worker's engine.
pub struct Engine {
    gw: Arc<Gateway>,
    local: Local,
    worker: usize,
    sweep_budget: usize,
}

/// The worker-owned half of the engine, kept apart from the shared
/// [`Gateway`] so a shard guard borrowed from the gateway can live alongside
/// mutable access to counters and events.
struct Local {
    /// The gateway's policy as loaded at the start of the current batch.
    policy: Arc<dyn Authorizer>,
    /// What every packet asks of `policy`, read when it was loaded.
    facts: PolicyFacts,
    /// The flow-table shard group this worker creates its flows in.
    group: usize,
    /// This worker's index: the owner of the flows it pends.
    worker: usize,
    stats: Stats,
    events: Vec<Event>,
    /// Scratch space for the policy's notes, turned into events at once.
    notes: Vec<crate::policy::PolicyNote>,
    /// The rewrite of the packet being processed (translated flows).
    rewrite: Option<translate::Rewrite>,
    queued_discards: usize,
    ids: std::ops::Range<u64>,
    /// Whether to keep the layer and filter of the last drop (a capture
    /// client wants them).
    note_drops: bool,
    /// Whether anything takes the flow events (created, established,
    /// closed): without a taker their snapshots are not built (SPEC §12's
    /// counters and the callouts do not depend on them).
    flow_events: bool,
    last_drop: Option<(Option<crate::policy::Layer>, Option<Arc<str>>)>,
    /// The answer to a rejected packet: (port, packet), taken by the shell.
    reply: Option<(u8, Vec<u8>)>,
    /// The reject rate limit's bucket.
    reject_tokens: f64,
    reject_refilled: Instant,
    /// Permitted pending flows' packets, ready to be written.
    released: Vec<pend::Queue>,
    /// Scratch list of the completions being applied.
    completing: Vec<(u64, crate::flow::FlowKey, u64)>,
}

/// The answers of a loaded policy that the engine needs per packet or per
/// new flow, by flow direction (outbound, inbound: the two auth layers).
/// A policy object's answers are fixed ([`Authorizer::generation`]), so
/// they are read once per policy instead of by a dynamic call per packet.
#[derive(Clone, Copy)]
struct PolicyFacts {
    generation: [u32; 2],
    may_pend: [bool; 2],
}

impl PolicyFacts {
    fn of(policy: &dyn Authorizer) -> PolicyFacts {
        let [out, inb] = [Direction::Outbound, Direction::Inbound].map(Layer::auth);
        PolicyFacts {
            generation: [policy.generation(out), policy.generation(inb)],
            may_pend: [policy.may_pend(out), policy.may_pend(inb)],
        }
    }

    /// The generation of the auth layer of flows in `direction`.
    #[inline]
    fn generation(&self, direction: Direction) -> u32 {
        self.generation[direction as usize]
    }

    /// Whether classifying a new flow in `direction` could pend it.
    #[inline]
    fn may_pend(&self, direction: Direction) -> bool {
        self.may_pend[direction as usize]
    }
}

impl Engine {
    /// The shared state.
    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gw
    }

    /// Loads the gateway's policy; the shell calls this once per batch, so
    /// a batch is decided by one policy.
    pub fn refresh_policy(&mut self) {
        let current = self.gw.policy();
        if !Arc::ptr_eq(&current, &self.local.policy) {
            self.local.facts = PolicyFacts::of(&*current);
            self.local.policy = current;
        }
    }

    /// Puts `policy` in force for the whole gateway and uses it from now on
    /// (the other workers pick it up at their next batch).
    pub fn set_policy(&mut self, policy: Arc<dyn Authorizer>) {
        self.gw.set_policy(policy);
        self.refresh_policy();
    }

    /// The authorizer this engine uses.
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

    /// Keeps (or stops keeping) the layer and filter of each drop for
    /// [`Engine::take_drop`]; the shell turns it on while a capture runs.
    pub fn note_drops(&mut self, on: bool) {
        self.local.note_drops = on;
    }

    /// Builds (or stops building) the flow_created, flow_established and
    /// flow_closed events; the shell turns them off while no event file,
    /// subscriber or debug log would take them. On by default.
    pub fn flow_events(&mut self, on: bool) {
        self.local.flow_events = on;
    }

    /// The layer and deciding filter of the last dropped packet, when
    /// [`Engine::note_drops`] is on.
    pub fn take_drop(&mut self) -> Option<(Option<crate::policy::Layer>, Option<Arc<str>>)> {
        self.local.last_drop.take()
    }

    /// The answer to the last packet, if a `reject = true` filter blocked
    /// it: the port to write it to and the packet (SPEC §12).
    pub fn take_reply(&mut self) -> Option<(u8, Vec<u8>)> {
        self.local.reply.take()
    }

    /// Takes the queued events.
    pub fn drain_events(&mut self) -> std::vec::Drain<'_, Event> {
        self.local.queued_discards = 0;
        self.local.events.drain(..)
    }

    /// Decides what happens to one packet that arrived on port `port` at
    /// `now`; a packet of a translated flow is rewritten in place.
    pub fn process(&mut self, now: Instant, port: u8, bytes: &mut [u8]) -> Verdict {
        self.process_framed(now, port, &[], bytes)
    }

    /// [`Engine::process`] for a packet that came behind a frame header (the
    /// virtio-net header): a held packet keeps its header, so it is released
    /// exactly as it came; a header with `NEEDS_CSUM` says the transport
    /// checksum field holds the pseudo-header sum, which translation updates
    /// as such.
    pub fn process_framed(
        &mut self,
        now: Instant,
        port: u8,
        header: &[u8],
        bytes: &mut [u8],
    ) -> Verdict {
        let gw = &*self.gw;
        let local = &mut self.local;
        let len = bytes.len() as u64;
        let Some(spec) = gw.config.ports.get(usize::from(port)) else {
            local.discard(now, port, None, DropReason::UnknownPort.into());
            return Verdict::Drop(DropReason::UnknownPort);
        };
        local.stats.ports[usize::from(port)].rx(len);
        let packet = match crate::packet::parse(bytes) {
            Ok(packet) => packet,
            Err(reason) => {
                local.discard(now, port, None, reason.into());
                return Verdict::Drop(reason);
            }
        };
        let frame = pipeline::Frame { header, bytes };
        match local.route_and_process(gw, now, port, spec.zone, &packet, frame) {
            Ok(HELD) => Verdict::Held,
            Ok(egress) => {
                local.stats.ports[usize::from(egress)].tx(len);
                Verdict::Forward(egress)
            }
            Err(dropped) => {
                let reason = dropped.reason;
                if dropped.reject
                    && matches!(
                        reason,
                        DropReason::AuthConnectBlocked | DropReason::AuthRecvAcceptBlocked
                    )
                {
                    local.reject(gw, now, port, &packet, bytes);
                }
                local.discard(now, port, Some(&packet), dropped);
                Verdict::Drop(reason)
            }
        }
    }

    /// The shards this worker sweeps and closes at shutdown: its group, or,
    /// when workers share one group, every `workers`-th shard of it.
    pub fn owned_shards(&self) -> Vec<usize> {
        let table = &self.gw.table;
        let group = table.group_shards(self.local.group);
        let sharing = self.gw.workers().div_ceil(table.groups());
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
        gw.fragments.expire(now, self.worker, gw.workers());
        local.expire_pending(gw, now);
        self.apply_completions(now);
    }

    /// Applies the completions of the pending flows this worker holds
    /// (decided by `tunwall decide`, [`Gateway::complete`] or their pend
    /// timeout): each is reauthorized, and a permitted flow's held packets
    /// go through its normal path, to be written by
    /// [`Engine::drain_released`]. The shell calls this when woken (see
    /// [`Gateway::set_waker`]); [`Engine::handle_timeout`] calls it too.
    pub fn apply_completions(&mut self, now: Instant) {
        self.refresh_policy();
        self.local.apply_completions(&self.gw, now);
    }

    /// Hands every released packet to `out` as (egress port, frame), in
    /// the order its flow held them.
    pub fn drain_released(&mut self, out: impl FnMut(u8, &[u8])) {
        self.local.drain_released(&self.gw, out);
    }

    /// Removes every flow of the shards this worker owns with reason
    /// `shutdown` (or all shards when `all`).
    pub fn close_all(&mut self, now: Instant, all: bool) {
        self.close_matching(now, all, &FlowSelector::default(), CloseReason::Shutdown);
    }

    /// Closes the flows `selector` picks in the shards this worker owns (or
    /// all shards when `all`) with `reason`; returns how many.
    pub fn close_matching(
        &mut self,
        now: Instant,
        all: bool,
        selector: &FlowSelector,
        reason: CloseReason,
    ) -> usize {
        let shards: Vec<usize> = if all {
            (0..self.gw.table.shard_count()).collect()
        } else {
            self.owned_shards()
        };
        shards
            .into_iter()
            .map(|idx| self.close_in_shard(now, idx, selector, reason))
            .sum()
    }

    /// Closes the flows `selector` picks in shard `idx` with `reason`,
    /// indicating each at `endpoint_closure`; returns how many. A worker
    /// closing many flows (`tunwall kill`) goes shard by shard and flushes
    /// the events in between, so they never pile up.
    pub fn close_in_shard(
        &mut self,
        now: Instant,
        idx: usize,
        selector: &FlowSelector,
        reason: CloseReason,
    ) -> usize {
        let gw = &*self.gw;
        let local = &mut self.local;
        let factor = gw.table.adaptive_factor();
        let mut shard = gw.table.lock_shard(idx);
        let slots: Vec<SlotId> = shard
            .iter()
            .filter(|(slot, entry)| {
                selector.matches_translated(entry, shard.translation(*slot).map(|t| &t.key))
            })
            .map(|(slot, _)| slot)
            .collect();
        for &slot in &slots {
            let removed = shard.remove(slot);
            if removed.entry.is_pending() {
                // SPEC §10: a pending flow closed here (shutdown, `kill`)
                // completes as blocked: its held packets are dropped.
                local.drop_pending(gw, now, removed.entry.id());
            }
            local.closed(gw, now, factor, &removed, reason);
        }
        slots.len()
    }
}
