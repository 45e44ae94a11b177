//! What the engine reports: events, counters, and the drops it explains.

use super::{Gateway, ID_BLOCK, Local, MAX_QUEUED_DISCARDS};
use crate::event::{Event, EventKind, FlowInfo, PacketSummary};
use crate::flow::table::{Removed, ShardGuard, SlotId};
use crate::packet::Packet;
use crate::policy::{Action, ClassifyRequest, Decision, Layer};
use crate::reason::{CloseReason, DropReason};
use crate::sync::Export;
use crate::time::Instant;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// A drop with what the discard event reports.
pub(super) struct Dropped {
    pub reason: DropReason,
    pub layer: Option<Layer>,
    pub filter: Option<Arc<str>>,
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
        }
    }
}

impl Local {
    pub(super) fn emit(&mut self, at: Instant, kind: EventKind) {
        self.events.push(Event { at, kind });
    }

    /// Turns what the policy noted (vetoes, callout logs) into events.
    fn take_notes(&mut self) {
        self.events.extend(self.notes.drain(..).map(Event::from));
    }

    pub(super) fn discard(
        &mut self,
        now: Instant,
        port: u8,
        packet: Option<&Packet>,
        dropped: Dropped,
    ) {
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

    pub(super) fn next_id(&mut self, gw: &Gateway) -> u64 {
        if self.ids.is_empty() {
            let start = gw.next_id.fetch_add(ID_BLOCK, Ordering::Relaxed);
            self.ids = start..start + ID_BLOCK;
        }
        let id = self.ids.start;
        self.ids.start += 1;
        id
    }

    /// Classifies and counts the layer's verdict.
    pub(super) fn classify(&mut self, request: &ClassifyRequest) -> Decision {
        let decision = self.policy.classify(request, &mut self.notes);
        self.take_notes();
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
            // Replicated and never seen here: the peer indicates it (SPEC §15).
            return;
        }
        self.stats.flows_closed[reason.index()] += 1;
        if let Some(sync) = gw.sync.get() {
            sync.send(Export::Closed {
                entry: removed.entry,
                parent: removed.parent,
                group: self.group as u16,
            });
        }
        let flow = FlowInfo::of_removed(removed, now, &gw.config.flows, factor);
        self.policy
            .indicate(Layer::EndpointClosure, &flow, now, &mut self.notes);
        self.take_notes();
        self.emit(now, EventKind::FlowClosed { flow, reason });
    }

    /// Tells the HA peer about a new flow or a change that matters for
    /// forwarding (SPEC §15), if replication is on.
    #[inline]
    pub(super) fn export(&self, gw: &Gateway, shard: &ShardGuard<'_>, slot: SlotId) {
        if let Some(sync) = gw.sync.get() {
            sync.send(Export::Flow {
                entry: *shard.entry(slot),
                parent: shard.parent(slot),
                group: self.group as u16,
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
        let flow = FlowInfo::of(
            shard.entry(slot),
            shard.parent(slot),
            now,
            &gw.config.flows,
            gw.table.adaptive_factor(),
        );
        self.policy
            .indicate(Layer::FlowEstablished, &flow, now, &mut self.notes);
        self.take_notes();
        self.emit(now, EventKind::FlowEstablished(flow));
    }
}
