//! Pended classification (SPEC §10): the flows a callout pended, the
//! packets they hold, and their completion.
//!
//! The store is shared by the workers behind one mutex that only pending
//! flows touch — never a packet of a flow that is not pending. Each pending
//! flow belongs to the worker that created it (its entry lives in that
//! worker's shard group). Its packets, from whichever worker they arrive on,
//! are copied into one buffer sized by `pend_queue_packets` and
//! `pend_queue_bytes`, taken from a pool when the flow is pended and given
//! back after it completes: one allocation per pending flow at most, never
//! one per packet, and at most `pend_max_flows` of them.
//!
//! A completion — `tunwall decide`, an embedder's [`Gateway::complete`] on
//! any thread, or the pend timeout found by the owner's `handle_timeout` —
//! only records the decision, queues the flow for its owner and wakes it.
//! The owner then reauthorizes the flow and runs the held packets through
//! the normal path of the flow in its own loop: no packet crosses a thread.
//!
//! Lock order: a table shard, then the store.

mod carried;
mod queue;
pub use carried::CarriedPend;
pub(super) use queue::Queue;

use super::pipeline::Arrival;
use super::report::Dropped;
use super::{Gateway, HELD, Local};
use crate::event::{EventKind, FlowInfo, ReauthTrigger};
use crate::flow::key::PacketKey;
use crate::flow::table::{ShardGuard, SlotId};
use crate::flow::{FlowClass, FlowEntry, FlowKey, TcpTracker};
use crate::policy::{Action, ClassifyFlags, Layer, Pend};
use crate::reason::DropReason;
use crate::time::Instant;
use crossbeam_utils::CachePadded;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

/// Buffers kept for later pends once their flows completed; more are freed.
const SPARE_QUEUES: usize = 64;

/// A pending flow as the store keeps it.
struct Pending {
    owner: usize,
    table_key: FlowKey,
    hash: u64,
    flow: FlowInfo,
    layer: Layer,
    filter: Option<Arc<str>>,
    flags: ClassifyFlags,
    deadline: Instant,
    timeout_action: Action,
    decision: Option<Action>,
    queue: Queue,
}

#[derive(Default)]
struct Inner {
    flows: HashMap<u64, Pending>,
    /// Completed flows waiting for their owner, per worker; a flow is
    /// completed once, so each list is bounded by `pend_max_flows`.
    completed: Vec<Vec<u64>>,
    /// Decisions on flows still being classified (a callout handed the id
    /// to another thread that was quick): at most one per worker.
    early: Vec<(u64, Action)>,
    spare: Vec<Queue>,
}

/// Wakes one worker's loop.
type Wake = Box<dyn Fn() + Send + Sync>;

/// The pending flows of the gateway.
pub(super) struct PendStore {
    inner: Mutex<Inner>,
    /// How to wake each worker's loop when one of its flows completes.
    wakers: Box<[OnceLock<Wake>]>,
    /// The id of the new flow each worker is classifying (0: none).
    classifying: Box<[CachePadded<AtomicU64>]>,
}

impl PendStore {
    pub fn new(workers: usize) -> PendStore {
        PendStore {
            inner: Mutex::new(Inner {
                completed: vec![Vec::new(); workers],
                ..Inner::default()
            }),
            wakers: (0..workers).map(|_| OnceLock::new()).collect(),
            classifying: (0..workers).map(|_| CachePadded::default()).collect(),
        }
    }

    /// Wakes `worker`'s loop, if the shell set a waker.
    fn wake(&self, worker: usize) {
        if let Some(wake) = self.wakers.get(worker).and_then(OnceLock::get) {
            wake();
        }
    }

    /// Records that `worker` classifies the new flow `id` (0: done).
    pub fn classifying(&self, worker: usize, id: u64) {
        if let Some(slot) = self.classifying.get(worker) {
            slot.store(id, Ordering::SeqCst);
        }
    }

    /// A completion for a flow not (yet) pending: kept if a worker is
    /// classifying that very flow, for `pend_new_flow` to apply.
    fn complete_early(
        &self,
        inner: &mut Inner,
        id: u64,
        decision: Action,
    ) -> Result<(), PendError> {
        inner.early.retain(|(early, _)| self.is_classifying(*early));
        if id == 0 || !self.is_classifying(id) {
            return Err(PendError::Unknown);
        }
        if inner.early.iter().any(|(early, _)| *early == id) {
            return Err(PendError::Decided);
        }
        inner.early.push((id, decision));
        Ok(())
    }

    fn is_classifying(&self, id: u64) -> bool {
        self.classifying
            .iter()
            .any(|slot| slot.load(Ordering::SeqCst) == id)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take(&self, id: u64) -> Option<Pending> {
        self.lock().flows.remove(&id)
    }

    fn recycle(&self, queues: impl IntoIterator<Item = Queue>) {
        let mut inner = self.lock();
        for mut queue in queues {
            if inner.spare.len() < SPARE_QUEUES {
                queue.clear();
                inner.spare.push(queue);
            }
        }
    }
}

/// Queues completed flow `id` for worker `owner` (an engine made for a
/// worker index beyond the gateway's count gets its list on first use).
fn queue_for(completed: &mut Vec<Vec<u64>>, owner: usize, id: u64) {
    if completed.len() <= owner {
        completed.resize(owner + 1, Vec::new());
    }
    completed[owner].push(id);
}

/// Why a completion was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PendError {
    /// No pending flow has the id.
    Unknown,
    /// The flow was already decided.
    Decided,
}

impl std::fmt::Display for PendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PendError::Unknown => "no pending flow has this id",
            PendError::Decided => "the flow was already decided",
        })
    }
}

impl std::error::Error for PendError {}

/// A pending flow as `tunwall pending` shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct PendingInfo {
    /// The flow when it was pended.
    pub flow: FlowInfo,
    /// The pending callout's layer.
    pub layer: Layer,
    /// The pending callout's filter.
    pub filter: Option<Arc<str>>,
    /// When the pend timeout completes it.
    pub deadline: Instant,
    /// How the pend timeout completes it.
    pub timeout_action: Action,
    /// Packets held.
    pub packets: usize,
    /// Bytes held (IP packet lengths).
    pub bytes: usize,
    /// The decision, once made and until the owner applies it.
    pub decision: Option<Action>,
}

impl Gateway {
    /// Completes a pending flow with `decision`, from any thread: the worker
    /// that holds the flow reauthorizes it and releases or drops its packets.
    pub fn complete(&self, id: u64, decision: Action) -> Result<(), PendError> {
        let owner = {
            let mut inner = self.pend.lock();
            if !inner.flows.contains_key(&id) {
                return self.pend.complete_early(&mut inner, id, decision);
            }
            let Inner {
                flows, completed, ..
            } = &mut *inner;
            let pending = flows.get_mut(&id).ok_or(PendError::Unknown)?;
            if pending.decision.is_some() {
                return Err(PendError::Decided);
            }
            pending.decision = Some(decision);
            queue_for(completed, pending.owner, id);
            pending.owner
        };
        self.pend.wake(owner);
        Ok(())
    }

    /// Sets how to wake worker `worker` when one of its pending flows is
    /// completed from another thread (its loop then calls
    /// [`super::Engine::apply_completions`]). Set once; later calls are ignored.
    pub fn set_waker(&self, worker: usize, wake: impl Fn() + Send + Sync + 'static) {
        if let Some(slot) = self.pend.wakers.get(worker) {
            let _ = slot.set(Box::new(wake));
        }
    }

    /// The pending flows, by id.
    pub fn pending(&self) -> Vec<PendingInfo> {
        let inner = self.pend.lock();
        let mut out: Vec<PendingInfo> = inner
            .flows
            .values()
            .map(|p| PendingInfo {
                flow: p.flow.clone(),
                layer: p.layer,
                filter: p.filter.clone(),
                deadline: p.deadline,
                timeout_action: p.timeout_action,
                packets: p.queue.packets.len(),
                bytes: p.queue.ip_bytes,
                decision: p.decision,
            })
            .collect();
        out.sort_by_key(|p| p.flow.id);
        out
    }

    /// The number of pending flows.
    pub fn pending_count(&self) -> usize {
        self.pend.lock().flows.len()
    }
}

/// What the pending callout's decision says about a new flow.
pub(super) struct PendRequest {
    pub tcp: Option<TcpTracker>,
    pub layer: Layer,
    pub filter: Option<Arc<str>>,
    pub pend: Pend,
    pub flags: ClassifyFlags,
}

impl Local {
    /// Creates a pending flow for the first packet of `pk` and holds the
    /// packet (SPEC §10); beyond `pend_max_flows` the flow is blocked.
    pub(super) fn pend_new_flow(
        &mut self,
        gw: &Gateway,
        a: &Arrival<'_>,
        shard: &mut ShardGuard<'_>,
        hash: u64,
        pk: PacketKey,
        request: PendRequest,
    ) -> Result<u8, Dropped> {
        let config = &gw.config.flows;
        let layer = request.layer.index();
        let mut inner = gw.pend.lock();
        // Under the store's lock: a completion that came during the
        // classification is in `early`, any later one finds the flow.
        gw.pend.classifying(self.worker, 0);
        let id = self.peek_id(gw);
        let early = inner
            .early
            .iter()
            .position(|(e, _)| *e == id)
            .map(|i| inner.early.swap_remove(i).1);
        if inner.flows.len() >= config.pend_max_flows {
            self.stats.layer_block[layer] += 1;
            return Err(Dropped {
                reason: DropReason::PendLimit,
                layer: Some(request.layer),
                filter: request.filter,
                reject: false,
            });
        }
        self.next_id(gw);
        let mut entry = FlowEntry::new(
            id,
            pk.key,
            a.direction(),
            FlowClass::Unicast,
            request.tcp,
            a.now,
            a.port,
            self.facts.generation(a.direction()),
            None,
        );
        entry.orient(pk.swapped, true);
        // Held packets are counted when they leave.
        entry.set_pending();
        if let Err(dropped) = self.insert(gw, a, shard, hash, entry, None) {
            self.stats.layer_block[layer] += 1;
            return Err(dropped);
        }
        self.stats.layer_pend[layer] += 1;
        if let Some(filter) = &request.filter {
            self.policy.flow_created(filter);
        }
        let slot = shard.find(hash, &pk.key).expect("just inserted");
        let factor = gw.table.adaptive_factor();
        let flow = shard.info(slot, a.now, config, factor);
        self.emit(
            a.now,
            EventKind::FlowPending {
                flow: flow.clone(),
                filter: request.filter.clone(),
                layer: request.layer,
                timeout: request.pend,
            },
        );
        let mut queue = inner.spare.pop().unwrap_or_else(|| Queue::new(config));
        let held = queue.push(config, a, pk.swapped);
        inner.flows.insert(
            id,
            Pending {
                owner: self.worker,
                table_key: pk.key,
                hash,
                flow,
                layer: request.layer,
                filter: request.filter,
                flags: request.flags,
                deadline: a.now + request.pend.timeout,
                timeout_action: request.pend.timeout_action,
                decision: early,
                queue,
            },
        );
        if early.is_some() {
            queue_for(&mut inner.completed, self.worker, id);
            drop(inner);
            // The loop applies it as soon as this batch ends.
            gw.pend.wake(self.worker);
        }
        if held {
            Ok(HELD)
        } else {
            Err(DropReason::PendQueueFull.into())
        }
    }

    /// Holds a packet of the pending flow `id`.
    pub(super) fn hold(
        &mut self,
        gw: &Gateway,
        a: &Arrival<'_>,
        id: u64,
        swapped: bool,
    ) -> Result<u8, Dropped> {
        let mut inner = gw.pend.lock();
        let held = inner
            .flows
            .get_mut(&id)
            .is_some_and(|p| p.queue.push(&gw.config.flows, a, swapped));
        if held {
            Ok(HELD)
        } else {
            Err(DropReason::PendQueueFull.into())
        }
    }

    /// Completes this worker's pending flows whose pend timeout passed.
    pub(super) fn expire_pending(&mut self, gw: &Gateway, now: Instant) {
        let worker = self.worker;
        let mut inner = gw.pend.lock();
        let Inner {
            flows, completed, ..
        } = &mut *inner;
        for (id, p) in flows.iter_mut() {
            if p.owner == worker && p.decision.is_none() && now >= p.deadline {
                p.decision = Some(p.timeout_action);
                queue_for(completed, worker, *id);
            }
        }
    }

    /// Applies the completions of this worker's pending flows.
    pub(super) fn apply_completions(&mut self, gw: &Gateway, now: Instant) {
        let worker = self.worker;
        let mut todo = std::mem::take(&mut self.completing);
        {
            let mut inner = gw.pend.lock();
            let Inner {
                flows, completed, ..
            } = &mut *inner;
            let Some(mine) = completed.get_mut(worker) else {
                return;
            };
            todo.extend(
                mine.drain(..)
                    .filter_map(|id| flows.get(&id).map(|p| (id, p.table_key, p.hash))),
            );
        }
        for (id, key, hash) in todo.drain(..) {
            self.complete_one(gw, now, id, key, hash);
        }
        self.completing = todo;
    }

    /// SPEC §10: the completion reauthorizes the flow; the pending callout
    /// returns the decision and arbitration runs as usual.
    fn complete_one(&mut self, gw: &Gateway, now: Instant, id: u64, key: FlowKey, hash: u64) {
        let mut shard = gw.table.lock(self.group, hash);
        let Some(pending) = gw.pend.take(id) else {
            return;
        };
        let slot = shard
            .find(hash, &key)
            .filter(|&s| shard.entry(s).id() == id && shard.entry(s).is_pending());
        let Some(slot) = slot else {
            gw.pend.recycle([pending.queue]);
            return;
        };
        let decision = pending.decision.unwrap_or(pending.timeout_action);
        shard.complete_pending(slot, decision);
        let port = shard.entry(slot).arrival_port();
        let result = self.reauthorize(
            gw,
            now,
            &mut shard,
            slot,
            Some(port),
            pending.flags,
            ReauthTrigger::PendComplete,
        );
        let mut queue = pending.queue;
        match result {
            Ok(()) => {
                let entry = shard.entry(slot);
                if (!entry.is_tcp() || entry.tcp().handshake_done()) && shard.mark_established(slot)
                {
                    self.established(gw, now, &shard, slot);
                }
                self.release(gw, now, &mut shard, slot, id, &mut queue);
                // Decided: now the HA peer learns of the flow (SPEC §15).
                if shard.entry(slot).id() == id {
                    self.export(gw, &shard, slot);
                }
                drop(shard);
                self.released.push(queue);
            }
            Err(dropped) => {
                drop(shard);
                self.drop_held(now, &queue, &dropped);
                gw.pend.recycle([queue]);
            }
        }
    }

    /// Runs the held packets of a permitted flow through its normal path
    /// (TCP tracking, counters), in order, under its shard lock; the ones
    /// that pass are written by [`Local::drain_released`].
    fn release(
        &mut self,
        gw: &Gateway,
        now: Instant,
        shard: &mut ShardGuard<'_>,
        slot: SlotId,
        id: u64,
        queue: &mut Queue,
    ) {
        let Queue { data, packets, .. } = queue;
        for held in packets.iter_mut() {
            let start = held.start as usize + usize::from(held.header);
            let bytes = &data[start..start + held.len as usize];
            let Ok(packet) = crate::packet::parse(bytes) else {
                continue;
            };
            if shard.entry(slot).id() != id {
                // An earlier held packet's reauthorization (another arrival
                // port) closed the flow.
                self.discard(
                    now,
                    held.port,
                    Some(&packet),
                    DropReason::ReauthBlocked.into(),
                );
                continue;
            }
            let a = Arrival {
                now,
                port: held.port,
                zone: gw.config.ports[usize::from(held.port)].zone,
                packet: &packet,
                egress: held.egress,
                egress_zone: gw.config.ports[usize::from(held.egress)].zone,
                header: &[],
                bytes,
                route_error: None,
            };
            match self.ride(gw, &a, shard, slot, held.swapped, None) {
                Ok(egress) => {
                    held.sent = true;
                    self.stats.ports[usize::from(egress)].tx(u64::from(held.len));
                }
                Err(dropped) => self.discard(now, held.port, Some(&packet), dropped),
            }
        }
    }

    /// Drops every held packet of a flow that will not pass.
    fn drop_held(&mut self, now: Instant, queue: &Queue, dropped: &Dropped) {
        for held in &queue.packets {
            let packet = crate::packet::parse(queue.ip(held)).ok();
            self.discard(now, held.port, packet.as_ref(), dropped.clone());
        }
    }

    /// A pending flow removed at shutdown: it completes as blocked.
    pub(super) fn drop_pending(&mut self, gw: &Gateway, now: Instant, id: u64) {
        if let Some(pending) = gw.pend.take(id) {
            let dropped = Dropped {
                reason: DropReason::ReauthBlocked,
                layer: Some(pending.layer),
                filter: pending.filter,
                reject: false,
            };
            self.drop_held(now, &pending.queue, &dropped);
            gw.pend.recycle([pending.queue]);
        }
    }

    /// Hands the released packets to `out` (egress port, frame) and gives
    /// their buffers back.
    pub(super) fn drain_released(&mut self, gw: &Gateway, mut out: impl FnMut(u8, &[u8])) {
        if self.released.is_empty() {
            return;
        }
        for queue in &self.released {
            for held in queue.packets.iter().filter(|h| h.sent) {
                out(held.egress, queue.frame(held));
            }
        }
        gw.pend.recycle(self.released.drain(..));
    }
}

#[cfg(test)]
mod tests;
