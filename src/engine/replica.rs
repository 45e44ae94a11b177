//! The HA peer's flows in this gateway's table (SPEC §15): records applied
//! as they arrive, closures, and the walk that finds refreshed flows.
//!
//! A replicated flow is marked synced: it counts toward `max_flows`, it is
//! never indicated (no `flow_created`/`flow_closed`: the peer indicates
//! it), it runs its own expiry timer here, and its first packet here
//! reauthorizes it with trigger `failover` (see the pipeline). The lock
//! order is the restore's: one shard at a time.

use super::Gateway;
use super::report::replicated;
use crate::flow::FlowEntry;
use crate::flow::record::{self, Carried};
use crate::time::Instant;

/// What applying one record did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// A new flow.
    Inserted,
    /// A flow already here, replaced by the newer record.
    Updated,
    /// A flow this node has seen at least as recently as the record: kept
    /// as it is (the peer's echo of what this node sent it).
    Kept,
    /// A closure removed the flow.
    Removed,
    /// Not applied: the table is full, the key is held by another flow of
    /// this node, or a closure found nothing.
    Refused,
}

impl Gateway {
    /// The group (shard lock) holding the flow of `entry`'s key, if any.
    fn holder(&self, entry: &FlowEntry, hash: u64) -> Option<usize> {
        let key = entry.table_key();
        (0..self.table.groups()).find(|&g| self.table.lock(g, hash).find(hash, &key).is_some())
    }

    /// Applies a flow record from the peer at `now`: inserts the flow or
    /// replaces the peer's older record of it. A flow this node holds
    /// under another id keeps its place. Errors are the record's.
    pub fn apply_synced(&self, now: Instant, payload: &[u8]) -> Result<Applied, &'static str> {
        let carried: Carried = record::decode(payload, self.config.ports.len())?;
        let mut entry = carried.place(now, carried.idle, carried.age);
        entry.set_synced();
        let key = entry.table_key();
        let hash = self.table.hash(&key);
        let home = usize::from(carried.group) % self.table.groups();
        let group = self.holder(&entry, hash).unwrap_or(home);
        let mut shard = self.table.lock(group, hash);
        let mut applied = Applied::Inserted;
        if let Some(slot) = shard.find(hash, &key) {
            let here = shard.entry(slot);
            if here.id() != entry.id() {
                return Ok(Applied::Refused);
            }
            if !here.synced() && here.idle(now) <= carried.idle {
                return Ok(Applied::Kept);
            }
            shard.remove(slot);
            applied = Applied::Updated;
        }
        if !shard.insert_carried(hash, entry, carried.parent) {
            return Ok(Applied::Refused);
        }
        drop(shard);
        if applied == Applied::Inserted {
            self.add_carried_wildcard(&entry, now);
        }
        Ok(applied)
    }

    /// Applies a closure from the peer: removes the flow if this node holds
    /// it under the same id, without indicating it.
    pub fn apply_closure(&self, payload: &[u8]) -> Result<Applied, &'static str> {
        let carried = record::decode(payload, self.config.ports.len())?;
        let entry = carried.entry;
        let key = entry.table_key();
        let hash = self.table.hash(&key);
        for group in 0..self.table.groups() {
            let mut shard = self.table.lock(group, hash);
            if let Some(slot) = shard.find(hash, &key)
                && shard.entry(slot).id() == entry.id()
            {
                let removed = shard.remove(slot);
                drop(shard);
                if removed.entry.is_wildcard_owner() {
                    self.wildcards.remove(
                        &super::admission::wildcard_key(&removed.entry.key()),
                        removed.entry.id(),
                    );
                }
                return Ok(Applied::Removed);
            }
        }
        Ok(Applied::Refused)
    }

    /// Calls `each` with the record of every flow of shard `idx` that this
    /// node has seen (not merely replicated) and that was refreshed at or
    /// after `since`, or of every flow when `since` is `None` (a bulk
    /// resync). Holds the shard's lock while it runs.
    pub fn walk_shard(
        &self,
        idx: usize,
        since: Option<Instant>,
        now: Instant,
        out: &mut Vec<u8>,
        mut each: impl FnMut(&mut Vec<u8>),
    ) {
        let group = self.table.group_of_shard(idx) as u16;
        let shard = self.table.lock_shard(idx);
        for (slot, entry) in shard.iter() {
            let wanted = replicated(entry, shard.translation(slot).is_some())
                && match since {
                    None => true,
                    Some(t) => !entry.synced() && entry.last_seen(now) >= t,
                };
            if wanted {
                out.clear();
                record::encode(entry, shard.parent(slot), group, now, out);
                each(out);
            }
        }
    }
}
