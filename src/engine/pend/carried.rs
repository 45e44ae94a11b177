//! Pending flows carried to another process (SPEC §13): their place in
//! the pend store, without the packets they held.

use super::{Pending, Queue, queue_for};
use crate::engine::Gateway;
use crate::event::FlowInfo;
use crate::flow::FlowKey;
use crate::policy::{Action, ClassifyFlags, Layer};
use crate::time::Instant;
use std::sync::Arc;

/// A pending flow as carried to another process (SPEC §13): its place in
/// the pend store, without its held packets.
#[derive(Clone, Debug, PartialEq)]
pub struct CarriedPend {
    /// The flow.
    pub id: u64,
    /// The layer that pended it.
    pub layer: Layer,
    /// The pending callout's filter.
    pub filter: Option<Arc<str>>,
    /// The classify flags of its first packet.
    pub flags: ClassifyFlags,
    /// When the pend timeout completes it.
    pub deadline: Instant,
    /// How the pend timeout completes it.
    pub timeout_action: Action,
    /// A decision made but not applied yet.
    pub decision: Option<Action>,
}

impl Gateway {
    /// The pending flows to carry over.
    pub(in crate::engine) fn carried_pending(&self) -> Vec<CarriedPend> {
        let inner = self.pend.lock();
        inner
            .flows
            .iter()
            .map(|(&id, p)| CarriedPend {
                id,
                layer: p.layer,
                filter: p.filter.clone(),
                flags: p.flags,
                deadline: p.deadline,
                timeout_action: p.timeout_action,
                decision: p.decision,
            })
            .collect()
    }

    /// Makes a carried flow pending again, owned by worker `owner`, with
    /// an empty queue (its held packets stayed behind).
    pub(in crate::engine) fn restore_pending(
        &self,
        owner: usize,
        table_key: FlowKey,
        hash: u64,
        flow: FlowInfo,
        c: CarriedPend,
    ) {
        let mut inner = self.pend.lock();
        let queue = inner
            .spare
            .pop()
            .unwrap_or_else(|| Queue::new(&self.config.flows));
        if c.decision.is_some() {
            queue_for(&mut inner.completed, owner, c.id);
        }
        inner.flows.insert(
            c.id,
            Pending {
                owner,
                table_key,
                hash,
                flow,
                layer: c.layer,
                filter: c.filter,
                flags: c.flags,
                deadline: c.deadline,
                timeout_action: c.timeout_action,
                decision: c.decision,
                queue,
            },
        );
    }
}
