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
//! Events and counters are kept by `report`.

mod admission;
mod carry;
mod gateway;
mod pipeline;
mod replica;
mod report;
mod stats;

pub use carry::Restored;
pub use gateway::{Gateway, GatewayConfig, HostModel};
pub use replica::Applied;
pub use stats::{PortCounters, Stats};

use crate::event::Event;
use crate::flow::table::SlotId;
use crate::policy::Authorizer;
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
}

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
    /// The flow-table shard group this worker creates its flows in.
    group: usize,
    stats: Stats,
    events: Vec<Event>,
    /// Scratch space for the policy's notes, turned into events at once.
    notes: Vec<crate::policy::PolicyNote>,
    queued_discards: usize,
    ids: std::ops::Range<u64>,
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
        let packet = match crate::packet::parse(bytes) {
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
