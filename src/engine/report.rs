//! What the engine reports: events, counters, and the drops it explains.

use super::{Gateway, ID_BLOCK, Local, MAX_QUEUED_DISCARDS};
use crate::event::{Event, EventKind, FlowInfo, PacketSummary};
use crate::flow::FlowEntry;
use crate::flow::{shard::Removed, table::ShardGuard, table::SlotId};
use crate::packet::Packet;
use crate::policy::{Action, ClassifyRequest, Decision, Layer};
use crate::reason::{CloseReason, DropReason};
use crate::sync::Export;
use crate::time::Instant;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// A drop with what the discard event reports.
#[derive(Clone)]
pub(super) struct Dropped {
    pub reason: DropReason,
    pub layer: Option<Layer>,
    pub filter: Option<Arc<str>>,
    /// Blocked by a `reject = true` filter: answer the packet.
    pub reject: bool,
}

impl From<DropReason> for Dropped {
    fn from(reason: DropReason) -> Dropped {
        Dropped {
            reason,
            layer: None,
            filter: None,
            reject: false,
        }
    }
}

impl Dropped {
    /// The drop of a packet blocked at `layer` by `decision`.
    pub fn blocked(layer: Layer, decision: Decision) -> Dropped {
        let reason = if decision.vetoed {
            DropReason::Vetoed
        } else {
            match layer {
                Layer::AuthConnect => DropReason::AuthConnectBlocked,
                Layer::AuthRecvAccept => DropReason::AuthRecvAcceptBlocked,
                _ => DropReason::IcmpErrorBlocked,
            }
        };
        Dropped {
            reason,
            layer: Some(layer),
            filter: decision.filter,
            reject: decision.reject && !decision.vetoed,
        }
    }
}

impl Local {
    pub(super) fn emit(&mut self, at: Instant, kind: EventKind) {
        self.events.push(Event { at, kind });
    }

    /// Turns what the policy noted (vetoes, callout logs) into events.
    pub(super) fn take_notes(&mut self) {
        // Most classifications note nothing: skip the drain and extend
        // (~170 instructions for an empty list).
        if !self.notes.is_empty() {
            self.events.extend(self.notes.drain(..).map(Event::from));
        }
    }

    pub(super) fn discard(
        &mut self,
        now: Instant,
        port: u8,
        packet: Option<&Packet>,
        dropped: Dropped,
    ) {
        self.stats.discards[dropped.reason.index()] += 1;
        if self.note_drops {
            self.last_drop = Some((dropped.layer, dropped.filter.clone()));
        }
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

    /// Answers a first packet a `reject = true` filter blocked, out of its
    /// arrival port, within the gateway's `reject_rate` (split between the
    /// workers; one second of burst).
    pub(super) fn reject(
        &mut self,
        gw: &Gateway,
        now: Instant,
        port: u8,
        packet: &Packet,
        bytes: &[u8],
    ) {
        let workers = gw.workers().max(1) as f64;
        let rate = f64::from(gw.reject_rate()) / workers;
        let elapsed = now.saturating_since(self.reject_refilled).as_secs_f64();
        self.reject_refilled = now;
        self.reject_tokens = (self.reject_tokens + elapsed * rate).min(rate.max(1.0));
        if self.reject_tokens < 1.0 || rate <= 0.0 {
            self.stats.rejects_limited += 1;
            return;
        }
        let to_group = packet.dst_is_multicast() || gw.is_broadcast(packet);
        if let Some(answer) = crate::packet::reject::reject(packet, bytes, to_group) {
            self.reject_tokens -= 1.0;
            self.stats.rejects_sent += 1;
            self.reply = Some((port, answer));
        }
    }

    pub(super) fn next_id(&mut self, gw: &Gateway) -> u64 {
        let id = self.peek_id(gw);
        self.ids.start += 1;
        id
    }

    /// The id the next flow this worker creates will get.
    pub(super) fn peek_id(&mut self, gw: &Gateway) -> u64 {
        if self.ids.is_empty() {
            let start = gw.next_id.fetch_add(ID_BLOCK, Ordering::Relaxed);
            self.ids = start..start + ID_BLOCK;
        }
        self.ids.start
    }

    /// Classifies and counts the layer's verdict.
    pub(super) fn classify(&mut self, request: &ClassifyRequest) -> Decision {
        let decision = self.policy.classify(request, &mut self.notes);
        self.take_notes();
        let layer = request.layer.index();
        match decision.action {
            // A pend is counted by the engine once the flow is pending (or
            // blocked, beyond `pend_max_flows`).
            _ if decision.pend.is_some() => {}
            Action::Permit => self.stats.layer_permit[layer] += 1,
            Action::Block => self.stats.layer_block[layer] += 1,
        }
        if decision.vetoed {
            self.stats.vetoes += 1;
        }
        decision
    }

    /// Indicates a removed flow at `endpoint_closure`.
    pub(super) fn closed(
        &mut self,
        gw: &Gateway,
        now: Instant,
        factor: f64,
        removed: &Removed,
        reason: CloseReason,
    ) {
        let entry = &removed.entry;
        if entry.is_wildcard_owner() {
            gw.wildcards
                .remove(&super::admission::wildcard_key(&entry.key()), entry.id());
        }
        if entry.synced() {
            // Replicated and never seen here: the peer indicates it (SPEC
            // §15); its alias and port mapping go quietly.
            gw.release_translation(removed);
            return;
        }
        self.stats.flows_closed[reason.index()] += 1;
        if let Some(sync) = gw.sync.get()
            && replicated(entry)
        {
            sync.send(Export::Closed {
                entry: removed.entry,
                parent: removed.parent,
                group: self.group as u16,
            });
        }
        let callouts = self.policy.indicates(Layer::EndpointClosure);
        if !callouts && !self.flow_events && removed.translation.is_none() {
            return;
        }
        let flow = FlowInfo::of_removed(removed, now, &gw.config.flows, factor);
        if callouts {
            self.policy
                .indicate(Layer::EndpointClosure, &flow, now, &mut self.notes);
            self.take_notes();
        }
        self.untranslate(gw, now, removed, &flow);
        if self.flow_events {
            self.emit(now, EventKind::FlowClosed { flow, reason });
        }
    }

    /// Tells the HA peer about a new flow or a change that matters for
    /// forwarding (SPEC §15), if replication is on.
    #[inline]
    pub(super) fn export(&self, gw: &Gateway, shard: &ShardGuard<'_>, slot: SlotId) {
        if let Some(sync) = gw.sync.get()
            && replicated(shard.entry(slot))
        {
            sync.send(Export::Flow {
                entry: *shard.entry(slot),
                parent: shard.parent(slot),
                group: self.group as u16,
                translated: shard.translation(slot).is_some(),
            });
        }
    }

    /// Indicates a flow at `flow_established`.
    pub(super) fn established(
        &mut self,
        gw: &Gateway,
        now: Instant,
        shard: &ShardGuard<'_>,
        slot: SlotId,
    ) {
        let callouts = self.policy.indicates(Layer::FlowEstablished);
        if !callouts && !self.flow_events {
            return;
        }
        let flow = shard.info(slot, now, &gw.config.flows, gw.table.adaptive_factor());
        if callouts {
            self.policy
                .indicate(Layer::FlowEstablished, &flow, now, &mut self.notes);
            self.take_notes();
        }
        if self.flow_events {
            self.emit(now, EventKind::FlowEstablished(flow));
        }
    }
}

/// Whether the HA peer is told about a flow (SPEC §15): not while it is
/// pending (it is replicated when it is decided), never when a pend
/// blocked it (the peer never had it). A translated flow goes with its
/// translation.
pub(super) fn replicated(entry: &FlowEntry) -> bool {
    !entry.is_pending() && entry.completed() != Some(Action::Block)
}
