//! The HA peer's flows in this gateway's table (SPEC §15): records applied
//! as they arrive, closures, and the walk that finds refreshed flows.
//!
//! A replicated flow is marked synced: it counts toward `max_flows`, it is
//! never indicated (no `flow_created`/`flow_closed`: the peer indicates
//! it), it runs its own expiry timer here, and its first packet here
//! reauthorizes it with trigger `failover` (see the pipeline). The lock
//! order is the restore's: one shard at a time, the NAT aliases and the
//! allocator inside it.
//!
//! A translated flow (SPEC §9) comes with its translation record and is
//! applied as a restore applies it ([`Gateway::attach_translation`]): its
//! alias, and its port mapping reserved in this node's allocator once per
//! flow, released when the flow goes here (a replicated closure, its own
//! expiry, eviction).

use super::Gateway;
use super::report::replicated;
use crate::flow::FlowEntry;
use crate::flow::record::{self, Carried, FilterNames};
use crate::nat::Translation;
use crate::sync::wire::MAX_SYNC_FILTER_NAME;
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
    /// this node, its translation does not fit this node's (a translated
    /// tuple or port held by another flow), or a closure found nothing.
    Refused,
}

/// A flow's records as replicated (SPEC §15): its flow record and, when it
/// is translated, its translation record (the §13 formats).
#[derive(Default)]
pub struct FlowRecords {
    /// The flow record.
    pub flow: Vec<u8>,
    /// The translation record; empty when the flow is not translated.
    pub translation: Vec<u8>,
}

impl FlowRecords {
    /// Encodes `entry` (and its translation `t`) at `now`.
    pub fn encode(
        &mut self,
        entry: &FlowEntry,
        parent: Option<u64>,
        group: u16,
        t: Option<&Translation>,
        now: Instant,
    ) {
        self.flow.clear();
        record::encode(entry, parent, group, now, &mut self.flow);
        self.translation.clear();
        if let Some(t) = t {
            record::encode_translation_capped(
                entry.id(),
                t,
                MAX_SYNC_FILTER_NAME,
                &mut self.translation,
            );
        }
    }

    /// The translation record, if the flow is translated.
    pub fn translation(&self) -> Option<&[u8]> {
        (!self.translation.is_empty()).then_some(&self.translation[..])
    }
}

impl Gateway {
    /// The group (shard lock) holding the flow of `entry`'s key, if any.
    fn holder(&self, entry: &FlowEntry, hash: u64) -> Option<usize> {
        let key = entry.table_key();
        (0..self.table.groups()).find(|&g| self.table.lock(g, hash).find(hash, &key).is_some())
    }

    /// The translation of flow `entry` as the table holds it now, if the
    /// flow is still there (the sync thread replicates it with the flow).
    pub fn translation_of(&self, entry: &FlowEntry) -> Option<Translation> {
        let key = entry.table_key();
        let hash = self.table.hash(&key);
        (0..self.table.groups()).find_map(|g| {
            let shard = self.table.lock(g, hash);
            let slot = shard.find(hash, &key)?;
            (shard.entry(slot).id() == entry.id())
                .then(|| shard.translation(slot).cloned())
                .flatten()
        })
    }

    /// Applies a flow record from the peer at `now`, with its translation
    /// record if the flow is translated: inserts the flow (its translation's
    /// alias and port mapping taken here, as a restore takes them) or
    /// replaces the peer's older record of it. A flow this node holds
    /// under another id keeps its place. Errors are the records': then
    /// nothing is applied (a translated flow is never applied without its
    /// translation).
    pub fn apply_synced(
        &self,
        now: Instant,
        payload: &[u8],
        translation: Option<&[u8]>,
        names: &mut FilterNames,
    ) -> Result<Applied, &'static str> {
        let ports = self.config.ports.len();
        let carried: Carried = record::decode(payload, ports)?;
        let translation = match translation {
            None => None,
            Some(bytes) => {
                let (id, t) = record::decode_translation(bytes, ports, names)?;
                let key = carried.entry.key();
                if id != carried.entry.id() {
                    return Err("translation of another flow");
                }
                if t.key.protocol != key.protocol || t.key.version() != key.version() {
                    return Err("translation of another protocol or IP version");
                }
                Some(t)
            }
        };
        let mut entry = carried.place(now, carried.idle, carried.age);
        entry.set_synced();
        let key = entry.table_key();
        let hash = self.table.hash(&key);
        let home = usize::from(carried.group) % self.table.groups();
        let group = self.holder(&entry, hash).unwrap_or(home);
        let mut shard = self.table.lock(group, hash);
        let mut applied = Applied::Inserted;
        let mut old = None;
        if let Some(slot) = shard.find(hash, &key) {
            let here = shard.entry(slot);
            if here.id() != entry.id() {
                return Ok(Applied::Refused);
            }
            if !here.synced() && here.idle(now) <= carried.idle {
                return Ok(Applied::Kept);
            }
            old = Some(shard.remove(slot));
            applied = Applied::Updated;
        }
        // The old copy's alias goes before the new one's is added; its
        // port mapping after the new one took its share, so a port that
        // stays never becomes free in between.
        if let Some(t) = old.as_ref().and_then(|o| o.translation.as_ref()) {
            self.nat.aliases.remove(&t.key, entry.id());
        }
        let release_old = |old: Option<crate::flow::shard::Removed>| {
            if let Some((map, _)) = old.and_then(|o| o.translation).and_then(|t| t.mapping) {
                self.nat.allocator().release(&map);
            }
        };
        let Some(slot) = shard.insert_carried_at(hash, entry, carried.parent) else {
            release_old(old);
            return Ok(Applied::Refused);
        };
        let translated = match translation {
            Some(t) => {
                let index = self.table.shard_index(group, hash);
                self.attach_translation(&mut shard, index, slot, entry.id(), t)
            }
            None => true,
        };
        drop(shard);
        release_old(old);
        if !translated {
            return Ok(Applied::Refused);
        }
        if applied == Applied::Inserted {
            self.add_carried_wildcard(&entry, now);
        }
        Ok(applied)
    }

    /// Applies a closure from the peer: removes the flow if this node holds
    /// it under the same id, without indicating it, and gives back its
    /// translation's alias and port.
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
                self.release_translation(&removed);
                return Ok(Applied::Removed);
            }
        }
        Ok(Applied::Refused)
    }

    /// Calls `each` with the records of every flow of shard `idx` that this
    /// node has seen (not merely replicated) and that was refreshed at or
    /// after `since`, or of every flow when `since` is `None` (a bulk
    /// resync). Holds the shard's lock while it runs.
    pub fn walk_shard(
        &self,
        idx: usize,
        since: Option<Instant>,
        now: Instant,
        out: &mut FlowRecords,
        mut each: impl FnMut(&FlowRecords),
    ) {
        let group = self.table.group_of_shard(idx) as u16;
        let shard = self.table.lock_shard(idx);
        for (slot, entry) in shard.iter() {
            let wanted = replicated(entry)
                && match since {
                    None => true,
                    Some(t) => !entry.synced() && entry.last_seen(now) >= t,
                };
            if wanted {
                out.encode(
                    entry,
                    shard.parent(slot),
                    group,
                    shard.translation(slot),
                    now,
                );
                each(out);
            }
        }
    }
}
