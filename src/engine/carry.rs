//! Carrying the flow table from one process to the next (SPEC §13): the
//! snapshot a clean stop or an upgrade writes, and the restore at start.
//!
//! Carried flows keep their ids, counters, TCP windows and policy
//! generations; their timers go on from where they were, advanced by the
//! time the flows spent outside a process. Nothing is indicated for them:
//! they were created in the old process, and whichever process finally
//! removes one indicates it at `endpoint_closure`. A flow whose timer ran
//! out in between is dropped without an event, as if it had expired
//! unobserved.

use super::Gateway;
use super::admission::wildcard_key;
use crate::flow::record::{self, FLOW_RECORD_LEN};
use crate::flow::wildcard::Wildcard;
use crate::flow::{FlowClass, FlowEntry};
use crate::state::{Container, FLOW, Header, StateError, Writer};
use crate::time::Instant;
use std::io::{self, Write};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// What a restore did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Restored {
    /// Flows carried on.
    pub flows: usize,
    /// Flows whose timer ran out while they were outside a process.
    pub expired: usize,
    /// Flows that did not fit (`max_flows`) or whose key was already present.
    pub refused: usize,
}

impl Gateway {
    /// The header of a snapshot taken now: the flow count and next id
    /// filled in, the rest (`node`, `pid`, ports, policy) from `base`.
    pub fn snapshot_header(&self, base: Header) -> Header {
        Header {
            flows: self.table.len() as u64,
            next_id: self.next_id.load(Ordering::Relaxed),
            ..base
        }
    }

    /// Writes every flow at `now` into a container with `header` (see
    /// [`Gateway::snapshot_header`]). One shard is locked at a time: for a
    /// consistent table the workers must not be processing packets.
    pub fn snapshot<W: Write>(&self, now: Instant, header: &Header, out: W) -> io::Result<W> {
        let mut writer = Writer::new(out, header)?;
        let mut buf = Vec::new();
        for idx in 0..self.table.shard_count() {
            buf.clear();
            let group = self.table.group_of_shard(idx) as u16;
            {
                let shard = self.table.lock_shard(idx);
                buf.reserve(shard.len() * FLOW_RECORD_LEN);
                for (slot, entry) in shard.iter() {
                    record::encode(entry, shard.parent(slot), group, now, &mut buf);
                }
            }
            writer.records(FLOW, FLOW_RECORD_LEN, &buf)?;
        }
        writer.finish()
    }

    /// Restores the flows of `container` at `now`, `elapsed` after the
    /// snapshot was taken, into this gateway, which must hold no flow yet
    /// and hand out no id before the restore. Every record is checked
    /// before any is applied: an invalid one refuses the whole container.
    pub fn restore(
        &self,
        now: Instant,
        container: &Container<'_>,
        elapsed: Duration,
    ) -> Result<Restored, StateError> {
        if !self.table.is_empty() {
            return Err(StateError::Io(
                "flows can only be restored into an empty table".into(),
            ));
        }
        if container.header.next_id >= record::MAX_ID {
            return Err(StateError::Corrupt("next flow id out of range".into()));
        }
        let ports = self.config.ports.len();
        let mut ids = std::collections::HashSet::with_capacity(container.len() as usize);
        for record in container.records() {
            let (_, payload) = record?;
            let carried =
                record::decode(payload, ports).map_err(|e| StateError::Corrupt(e.into()))?;
            if !ids.insert(carried.entry.id()) {
                return Err(StateError::Corrupt(format!(
                    "flow id {} twice",
                    carried.entry.id()
                )));
            }
        }
        drop(ids);
        let config = &self.config.flows;
        let factor = config.adaptive_factor(container.header.flows as usize);
        let groups = self.table.groups();
        let mut done = Restored::default();
        let mut max_id = 0;
        for record in container.records() {
            let (_, payload) = record?;
            let carried =
                record::decode(payload, ports).map_err(|e| StateError::Corrupt(e.into()))?;
            max_id = max_id.max(carried.entry.id());
            let idle = carried.idle + elapsed;
            if idle >= carried.entry.timeout(config, factor) {
                done.expired += 1;
                continue;
            }
            let entry = carried.place(now, idle, carried.age + elapsed);
            let key = entry.table_key();
            let hash = self.table.hash(&key);
            let present = (0..groups).any(|g| self.table.lock(g, hash).find(hash, &key).is_some());
            let group = usize::from(carried.group) % groups;
            if present
                || !self
                    .table
                    .lock(group, hash)
                    .insert_carried(hash, entry, carried.parent)
            {
                done.refused += 1;
                continue;
            }
            self.add_carried_wildcard(&entry, now);
            done.flows += 1;
        }
        let next = container.header.next_id.max(max_id.saturating_add(1));
        self.next_id.fetch_max(next, Ordering::Relaxed);
        Ok(done)
    }

    /// The wildcard state a carried or replicated flow owns, if it owns any.
    pub(super) fn add_carried_wildcard(&self, entry: &FlowEntry, now: Instant) {
        if entry.is_wildcard_owner() {
            let key = entry.key();
            self.wildcards.add(
                wildcard_key(&key),
                Wildcard {
                    local: key.local,
                    any_group: entry.class() == FlowClass::McastBcastState,
                    parent_id: entry.id(),
                    direction: entry.direction(),
                    arrival_port: entry.arrival_port(),
                    refreshed: entry.last_seen(now),
                    lifetime: entry.timeout(&self.config.flows, 1.0),
                },
            );
        }
    }
}
