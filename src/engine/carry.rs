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
//!
//! A translated flow (SPEC §9) is carried with its translation: its alias
//! comes back, and its port mapping is taken again in the allocator once
//! per flow, so a mapping shared by several flows is shared again and
//! released with its last flow. A translated flow that expired meanwhile
//! holds nothing: its port is free in the new process.

use super::Gateway;
use super::admission::wildcard_key;
use super::pend::CarriedPend;
use crate::flow::record::{self, FLOW_RECORD_LEN, FilterNames};
use crate::flow::wildcard::Wildcard;
use crate::flow::{FlowClass, FlowEntry, FlowInfo, FlowKey};
use crate::flow::{shard::Removed, table::ShardGuard, table::SlotId};
use crate::nat::{AliasTarget, MapKey, Translation};
use crate::packet::RawAddr;
use crate::policy::{Action, ClassifyFlags, Layer};
use crate::state::{Container, FLOW, Header, PENDING, StateError, TRANSLATION, Writer, frame};
use crate::time::Instant;
use std::collections::{HashMap, HashSet};
use std::io::{self, Write};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// The flags a pending record keeps, in bit order.
const FLAGS: [ClassifyFlags; 4] = [
    ClassifyFlags::REAUTHORIZE,
    ClassifyFlags::FRAGMENT,
    ClassifyFlags::MULTICAST,
    ClassifyFlags::BROADCAST,
];
/// The longest filter name a pending record carries.
const MAX_FILTER: usize = 4096;

/// A pending flow's record: id, layer, flags, time left, timeout action,
/// decision, filter name.
fn encode_pending(p: &CarriedPend, now: Instant, out: &mut Vec<u8>) {
    out.extend_from_slice(&p.id.to_le_bytes());
    out.push(p.layer.index() as u8);
    out.push(
        FLAGS
            .iter()
            .enumerate()
            .filter(|(_, f)| p.flags.contains(**f))
            .fold(0, |bits, (i, _)| bits | 1 << i),
    );
    let left = p.deadline.as_millis().saturating_sub(now.as_millis());
    out.extend_from_slice(&left.to_le_bytes());
    out.push(action_byte(Some(p.timeout_action)));
    out.push(action_byte(p.decision));
    let filter = p.filter.as_deref().unwrap_or("").as_bytes();
    let filter = &filter[..filter.len().min(MAX_FILTER)];
    out.extend_from_slice(&(filter.len() as u16).to_le_bytes());
    out.extend_from_slice(filter);
}

fn action_byte(action: Option<Action>) -> u8 {
    match action {
        None => 0,
        Some(Action::Permit) => 1,
        Some(Action::Block) => 2,
    }
}

fn byte_action(byte: u8) -> Result<Option<Action>, StateError> {
    match byte {
        0 => Ok(None),
        1 => Ok(Some(Action::Permit)),
        2 => Ok(Some(Action::Block)),
        _ => Err(StateError::Corrupt("bad pending action".into())),
    }
}

/// Decodes a pending record; its deadline is the time left, as an instant
/// after zero (the caller places it).
fn decode_pending(b: &[u8]) -> Result<(CarriedPend, Duration), StateError> {
    let bad = || StateError::Corrupt("bad pending record".into());
    let fixed = b.get(..22).ok_or_else(bad)?;
    let id = u64::from_le_bytes(fixed[..8].try_into().map_err(|_| bad())?);
    let layer = *Layer::ALL
        .get(usize::from(fixed[8]))
        .filter(|l| matches!(l, Layer::AuthConnect | Layer::AuthRecvAccept))
        .ok_or_else(bad)?;
    if fixed[9] >> FLAGS.len() != 0 {
        return Err(bad());
    }
    let flags = FLAGS
        .iter()
        .enumerate()
        .filter(|(i, _)| fixed[9] & 1 << i != 0)
        .fold(ClassifyFlags::empty(), |all, (_, f)| all | *f);
    let left = Duration::from_millis(u64::from_le_bytes(
        fixed[10..18].try_into().map_err(|_| bad())?,
    ));
    let timeout_action = byte_action(fixed[18])?.ok_or_else(bad)?;
    let decision = byte_action(fixed[19])?;
    let len = usize::from(u16::from_le_bytes([fixed[20], fixed[21]]));
    let name = b
        .get(22..)
        .filter(|n| n.len() == len && len <= MAX_FILTER)
        .ok_or_else(bad)?;
    let filter = match len {
        0 => None,
        _ => Some(std::str::from_utf8(name).map_err(|_| bad())?.into()),
    };
    Ok((
        CarriedPend {
            id,
            layer,
            filter,
            flags,
            deadline: Instant::ZERO,
            timeout_action,
            decision,
        },
        left,
    ))
}

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
            let mut records = 0;
            {
                let shard = self.table.lock_shard(idx);
                buf.reserve(shard.len() * (5 + FLOW_RECORD_LEN));
                for (slot, entry) in shard.iter() {
                    frame(&mut buf, FLOW, |out| {
                        record::encode(entry, shard.parent(slot), group, now, out)
                    });
                    records += 1;
                    if let Some(t) = shard.translation(slot) {
                        frame(&mut buf, TRANSLATION, |out| {
                            record::encode_translation(entry.id(), t, out)
                        });
                        records += 1;
                    }
                }
            }
            writer.framed(&buf, records)?;
        }
        for pending in self.carried_pending() {
            buf.clear();
            encode_pending(&pending, now, &mut buf);
            writer.records(PENDING, buf.len(), &buf)?;
        }
        writer.finish()
    }

    /// Restores the flows of `container` at `now`, `elapsed` after the
    /// snapshot was taken, into this gateway, which must hold no flow yet
    /// and hand out no id before the restore; on a node of an HA pair, its
    /// node ([`Gateway::set_sync_node`]) must be set before. Every record is checked
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
        let mut ids =
            HashSet::with_capacity_and_hasher(container.len() as usize, ahash::RandomState::new());
        let mut waiting = HashSet::new();
        let mut pendings = Vec::new();
        let mut names = FilterNames::default();
        let mut translations = TranslationCheck::default();
        for record in container.records() {
            let (kind, payload) = record?;
            if kind == TRANSLATION {
                let (id, t) = record::decode_translation(payload, ports, &mut names)
                    .map_err(|e| StateError::Corrupt(e.into()))?;
                translations.check(id, &t)?;
                continue;
            }
            translations.last = None;
            if kind == PENDING {
                let (pending, left) = decode_pending(payload)?;
                if !waiting.remove(&pending.id) {
                    return Err(StateError::Corrupt(format!(
                        "pending record of flow {}, which is not pending",
                        pending.id
                    )));
                }
                pendings.push((pending, left));
                continue;
            }
            let carried =
                record::decode(payload, ports).map_err(|e| StateError::Corrupt(e.into()))?;
            let id = carried.entry.id();
            if !ids.insert(id) {
                return Err(StateError::Corrupt(format!("flow id {id} twice")));
            }
            if carried.entry.is_pending() {
                waiting.insert(id);
            }
            translations.last = Some((id, carried.entry.key()));
        }
        if let Some(id) = waiting.iter().next() {
            return Err(StateError::Corrupt(format!(
                "pending flow {id} without its pending record"
            )));
        }
        drop((ids, translations));
        let config = &self.config.flows;
        let factor = config.adaptive_factor(container.header.flows as usize);
        let groups = self.table.groups();
        let mut done = Restored::default();
        // This node's ids (SPEC §15): a table restored on a node of an HA
        // pair holds the peer's flows too, whose ids must not move the
        // next id out of this node's range.
        let node = self.node.load(Ordering::Relaxed);
        let own = crate::sync::id_range(node);
        let mut max_id = 0;
        let mut placed: HashMap<u64, (usize, FlowKey, u64)> = HashMap::new();
        // The flow just placed: (id, shard, slot), for its translation.
        let mut last: Option<(u64, usize, SlotId)> = None;
        for record in container.records() {
            let (kind, payload) = record?;
            if kind == TRANSLATION {
                let (id, t) = record::decode_translation(payload, ports, &mut names)
                    .map_err(|e| StateError::Corrupt(e.into()))?;
                if let Some((_, shard, slot)) = last.take().filter(|l| l.0 == id)
                    && !self.restore_translation(shard, slot, id, t)
                {
                    done.flows -= 1;
                    done.refused += 1;
                }
                continue;
            }
            last = None;
            if kind != FLOW {
                continue;
            }
            let carried =
                record::decode(payload, ports).map_err(|e| StateError::Corrupt(e.into()))?;
            if node == 0 || own.contains(&carried.entry.id()) {
                max_id = max_id.max(carried.entry.id());
            }
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
            let slot = match present {
                true => None,
                false => {
                    self.table
                        .lock(group, hash)
                        .insert_carried_at(hash, entry, carried.parent)
                }
            };
            let Some(slot) = slot else {
                done.refused += 1;
                continue;
            };
            last = Some((entry.id(), self.table.shard_index(group, hash), slot));
            if entry.is_pending() {
                placed.insert(entry.id(), (group, key, hash));
            }
            self.add_carried_wildcard(&entry, now);
            done.flows += 1;
        }
        // Pending flows wait again for the rest of their pend timeout
        // (their held packets stayed behind: the senders retransmit).
        for (mut pending, left) in pendings {
            let Some((group, key, hash)) = placed.remove(&pending.id) else {
                continue;
            };
            let shard = self.table.lock(group, hash);
            let Some(slot) = shard.find(hash, &key) else {
                continue;
            };
            let flow = FlowInfo::of(
                shard.entry(slot),
                shard.parent(slot),
                shard.translation(slot),
                now,
                config,
                self.table.adaptive_factor(),
            );
            drop(shard);
            pending.deadline = now + left.saturating_sub(elapsed);
            self.restore_pending(group % self.workers(), key, hash, flow, pending);
        }
        let saved = container.header.next_id;
        let saved = if node == 0 || own.contains(&saved) {
            saved
        } else {
            0
        };
        let next = saved.max(max_id.saturating_add(1));
        self.next_id.fetch_max(next, Ordering::Relaxed);
        Ok(done)
    }

    /// Makes restored flow `id` in `slot` of `shard` translated again: its
    /// mapping taken in the allocator, its alias, its side data. A
    /// translation that does not fit (checked not to happen before the
    /// restore began) removes the flow, and `false` says so. A replica
    /// applying a translated flow (SPEC §15) calls this after inserting
    /// the flow ([`crate::flow::table::ShardGuard::insert_carried_at`]).
    pub(super) fn restore_translation(
        &self,
        shard: usize,
        slot: SlotId,
        id: u64,
        t: Translation,
    ) -> bool {
        let mut guard = self.table.lock_shard(shard);
        self.attach_translation(&mut guard, shard, slot, id, t)
    }

    /// [`Gateway::restore_translation`] with shard `shard` locked as
    /// `shard_guard`.
    pub(super) fn attach_translation(
        &self,
        shard_guard: &mut ShardGuard<'_>,
        shard: usize,
        slot: SlotId,
        id: u64,
        t: Translation,
    ) -> bool {
        if let Some((map, port)) = t.mapping
            && self.nat.allocator().reserve(map, port).is_err()
        {
            shard_guard.remove(slot);
            return false;
        }
        let target = AliasTarget {
            shard: shard as u32,
            slot,
            id,
        };
        if !self.nat.aliases.add(t.key, target) {
            if let Some((map, _)) = t.mapping {
                self.nat.allocator().release(&map);
            }
            shard_guard.remove(slot);
            return false;
        }
        shard_guard.set_translation(slot, t);
        true
    }

    /// Gives back what removed flow `removed` held as a translated flow:
    /// its alias, and its mapping's share of the port. Returns the mapping
    /// and port when that was the mapping's last flow (the port is free).
    pub(super) fn release_translation(&self, removed: &Removed) -> Option<(MapKey, u16)> {
        let t = removed.translation.as_ref()?;
        self.nat.aliases.remove(&t.key, removed.entry.id());
        let (map, port) = t.mapping?;
        self.nat.allocator().release(&map).map(|_| (map, port))
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

/// The checks of a container's translation records before any is applied:
/// each right after its flow's record, of the flow's protocol and IP
/// version, no translated tuple twice, and every port mapping consistent
/// (one port per mapping, one mapping per port).
#[derive(Default)]
struct TranslationCheck {
    /// The flow record just read and not yet translated: id, key.
    last: Option<(u64, FlowKey)>,
    tuples: HashSet<FlowKey, ahash::RandomState>,
    mappings: HashMap<MapKey, u16, ahash::RandomState>,
    ports: HashMap<(RawAddr, u8, u16), MapKey, ahash::RandomState>,
}

impl TranslationCheck {
    fn check(&mut self, id: u64, t: &Translation) -> Result<(), StateError> {
        let corrupt = |why: &str| {
            Err(StateError::Corrupt(format!(
                "translation of flow {id}: {why}"
            )))
        };
        let Some((_, key)) = self.last.take().filter(|l| l.0 == id) else {
            return corrupt("not right after its flow record");
        };
        if t.key.protocol != key.protocol || t.key.version() != key.version() {
            return corrupt("protocol or IP version differs from the flow's");
        }
        if !self.tuples.insert(t.key) {
            return corrupt("translated tuple held by another flow");
        }
        if let Some((map, port)) = t.mapping {
            if *self.mappings.entry(map).or_insert(port) != port {
                return corrupt("its mapping has another port in another flow");
            }
            let taken = self
                .ports
                .entry((map.translated, map.protocol, port))
                .or_insert(map);
            if *taken != map {
                return corrupt("its port is another mapping's");
            }
        }
        Ok(())
    }
}
