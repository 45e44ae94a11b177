//! The sharded flow table.
//!
//! Layout, chosen so that a million flows fit in about 120 bytes each:
//!
//! * Each shard stores its entries in a slab of fixed-size chunks (no
//!   reallocation and copy under the lock as it grows, no `Box` per flow) and
//!   indexes them with a `hashbrown::HashTable<u32>` of slot numbers.
//! * A [`FlowEntry`] ([`super::entry`]) is 124 bytes, and the rare parent id
//!   lives in a side map of its shard.
//!
//! Concurrency ("lock legend"):
//!
//! | data | guarded by |
//! |---|---|
//! | a shard's entries, index, free list, embryo queue, parents, sweep cursor | that shard's `Mutex` |
//! | which flows a shard holds | flows are created only by the worker owning the shard's group; any worker may ride or remove them under the lock |
//! | the flow count | `AtomicUsize`, changed only while holding the shard lock of the flow added or removed |
//! | wildcard (multicast/broadcast and loose-source) state | a `Mutex` per wildcard shard, taken only while a table shard lock may be held, never the other way round |
//! | a `rate_limit` filter's sources | a `Mutex` per source shard, taken while classifying (under table shard locks) and never held while taking another lock |
//! | the policy in force | an `ArcSwap` in the gateway, loaded once per batch: no lock |
//!
//! A packet of an existing flow takes one shard lock. A first packet that
//! misses in its worker's group takes the key's shard in every group, in
//! group order (the one order all creators use, so none waits on another in
//! a cycle; riders hold one lock at a time), and may add a wildcard shard
//! lock and a rate-limit shard lock after them. No global lock sits on the
//! established-flow path. The hasher is aHash with random keys: flow keys are
//! chosen by attackers.

use super::FlowConfig;
use super::entry::FlowEntry;
use super::hash::FlowHasher;
use super::key::FlowKey;
use super::shard::Removed;
pub use super::shard::{Shard, SlotId};
use crate::nat::Translation;
use crate::reason::CloseReason;
use crate::time::Instant;
use crossbeam_utils::CachePadded;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

/// The flow table shared by every worker.
pub struct FlowTable {
    shards: Box<[CachePadded<Mutex<Shard>>]>,
    /// Shards come in one group per worker; a worker creates flows only in
    /// its own group, so the shard locks it takes for its flows are touched
    /// by no other core (the kernel steers both directions of a flow to the
    /// same worker).
    groups: usize,
    per_group: usize,
    hasher: FlowHasher,
    count: CachePadded<AtomicUsize>,
    config: FlowConfig,
}

/// A locked shard plus the table, so adding and removing keep the global count.
pub struct ShardGuard<'a> {
    shard: MutexGuard<'a, Shard>,
    table: &'a FlowTable,
    /// Which shard this is.
    index: usize,
}

impl std::ops::Deref for ShardGuard<'_> {
    type Target = Shard;
    fn deref(&self) -> &Shard {
        &self.shard
    }
}

impl std::ops::DerefMut for ShardGuard<'_> {
    fn deref_mut(&mut self) -> &mut Shard {
        &mut self.shard
    }
}

/// How many slots a make-room attempt inspects for an expired flow.
const EVICT_SCAN: usize = 64;

impl ShardGuard<'_> {
    /// Inserts a new flow, making room first if the table is full (SPEC §2:
    /// an expired flow of this shard, else its oldest not-yet-established
    /// flow), and hands the flow removed to make room to `evicted`. Returns
    /// the slot, or `None` when nothing could go (`flow_table_full`). (The
    /// removed flow goes to a callback rather than back with the slot: a
    /// return value that large was copied on every insert.)
    #[inline]
    pub fn insert(
        &mut self,
        hash: u64,
        entry: FlowEntry,
        parent: Option<u64>,
        now: Instant,
        evicted: impl FnOnce(Removed, CloseReason),
    ) -> Option<SlotId> {
        let mut made_room = None;
        if !self.table.admit() {
            let config = &self.table.config;
            let factor = self.table.adaptive_factor();
            let victim = match self.shard.next_expired(now, config, factor, EVICT_SCAN) {
                Some(slot) => Some((slot, self.shard.entry(slot).expiry_reason())),
                None => self
                    .shard
                    .oldest_embryonic()
                    .map(|slot| (slot, CloseReason::Evicted)),
            };
            let (slot, reason) = victim?;
            // Removing and re-adding under this shard's lock keeps the count
            // at or below the limit: the freed place goes to this flow.
            made_room = Some((self.shard.remove(slot), reason));
        }
        let slot = self.shard.insert(hash, entry, parent);
        if let Some((removed, reason)) = made_room {
            evicted(removed, reason);
        }
        Some(slot)
    }

    /// Inserts a flow carried over from another process (SPEC §13): it
    /// never makes room, and a key already present is refused. Returns
    /// whether the flow was inserted.
    pub fn insert_carried(&mut self, hash: u64, entry: FlowEntry, parent: Option<u64>) -> bool {
        self.insert_carried_at(hash, entry, parent).is_some()
    }

    /// [`ShardGuard::insert_carried`], returning the flow's slot.
    pub fn insert_carried_at(
        &mut self,
        hash: u64,
        entry: FlowEntry,
        parent: Option<u64>,
    ) -> Option<SlotId> {
        if self.shard.find(hash, &entry.key).is_some() || !self.table.admit() {
            return None;
        }
        Some(self.shard.insert(hash, entry, parent))
    }

    /// Makes the flow in `slot` a translated one. Its translated tuple is
    /// indexed in this shard too when that is the tuple's shard in this
    /// group (the port allocator arranges it for masquerade,
    /// [`super::hash`]): packets carrying it then find the flow with this
    /// one lock and probe.
    pub fn set_translation(&mut self, slot: SlotId, translation: Translation) {
        let hash = self.table.hash(&translation.key);
        let group = self.table.group_of_shard(self.index);
        let home = self.table.shard_index(group, hash) == self.index;
        self.shard
            .set_translation(slot, translation, home.then_some(hash));
    }

    /// Removes the flow in `slot`.
    pub fn remove(&mut self, slot: SlotId) -> Removed {
        let removed = self.shard.remove(slot);
        self.table.count.fetch_sub(1, Ordering::Relaxed);
        removed
    }

    /// Inspects up to `budget` slots from the sweep cursor and removes the
    /// expired flows among them, calling `closed` for each.
    pub fn sweep(
        &mut self,
        now: Instant,
        budget: usize,
        mut closed: impl FnMut(Removed, CloseReason),
    ) {
        let factor = self.table.adaptive_factor();
        let limit = self.shard.high_water;
        for _ in 0..budget.min(limit as usize) {
            let slot = self.shard.sweep_cursor % limit;
            self.shard.sweep_cursor = (slot + 1) % limit;
            let entry = self.shard.entry(slot);
            if !entry.is_vacant() && entry.expired(now, &self.table.config, factor) {
                let reason = entry.expiry_reason();
                let removed = self.remove(slot);
                closed(removed, reason);
            }
        }
        self.shard.shrink();
    }
}

impl FlowTable {
    /// A table for `config.max_flows` flows in about `shards` shards, split
    /// into `groups` equal groups (one per worker).
    pub fn new(config: FlowConfig, shards: usize, groups: usize) -> FlowTable {
        let groups = groups.clamp(1, 256);
        let per_group = shards.clamp(1, 4096).div_ceil(groups);
        let hasher = FlowHasher::new(per_group);
        let n = per_group * groups;
        FlowTable {
            groups,
            per_group,
            shards: (0..n)
                .map(|_| CachePadded::new(Mutex::new(Shard::new(hasher.clone()))))
                .collect(),
            hasher,
            count: CachePadded::new(AtomicUsize::new(0)),
            config,
        }
    }

    /// A shard count suited to `max_flows`: one shard per 256 flows, at most 64.
    ///
    /// Small tables get one shard per 256 flows. Large ones get at least 64
    /// shards, and a count chosen so that a full shard (with four standard
    /// deviations of hash imbalance) still fits in 7/8 of a power-of-two
    /// index, hashbrown's load limit: otherwise every shard's index would
    /// double just before the table is full, costing 5 bytes per flow.
    pub fn default_shards(max_flows: usize) -> usize {
        if max_flows < 64 * 256 {
            return (max_flows / 256).max(1);
        }
        let buckets = (max_flows / 64).next_power_of_two();
        let usable = buckets as f64 * 7.0 / 8.0 - 4.0 * (buckets as f64).sqrt();
        (max_flows as f64 / usable).ceil() as usize
    }

    /// The lifetime settings.
    pub fn config(&self) -> &FlowConfig {
        &self.config
    }

    /// The hasher of [`FlowTable::hash`] (the alias index shares it).
    pub fn hasher(&self) -> &FlowHasher {
        &self.hasher
    }

    /// The keyed hash of a flow key.
    #[inline]
    pub fn hash(&self, key: &FlowKey) -> u64 {
        self.hasher.hash(key)
    }

    /// The number of shards.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The number of shard groups (workers).
    pub fn groups(&self) -> usize {
        self.groups
    }

    /// The shards of `group`.
    pub fn group_shards(&self, group: usize) -> std::ops::Range<usize> {
        let start = (group % self.groups) * self.per_group;
        start..start + self.per_group
    }

    /// The group shard `idx` belongs to.
    pub fn group_of_shard(&self, idx: usize) -> usize {
        idx / self.per_group
    }

    /// Locks the shard of `group` that holds keys of `hash`.
    #[inline]
    pub fn lock(&self, group: usize, hash: u64) -> ShardGuard<'_> {
        self.lock_shard(self.shard_index(group, hash))
    }

    /// The index of the shard of `group` that holds keys of `hash`.
    #[inline]
    pub fn shard_index(&self, group: usize, hash: u64) -> usize {
        // Bits 24..56: hashbrown uses the low bits for the bucket and the top
        // seven as the tag, so the shard choice stays independent of both.
        let within = ((hash >> 24) as u32 as u64 * self.per_group as u64) >> 32;
        // Callers pass a group below `groups` (their own, or one of a loop
        // over all): the modulo, a division of tens of cycles on every
        // packet, only guards the others.
        let group = if group < self.groups {
            group
        } else {
            group % self.groups
        };
        group * self.per_group + within as usize
    }

    /// Locks shard number `idx`.
    pub fn lock_shard(&self, idx: usize) -> ShardGuard<'_> {
        // A panic while holding a shard lock is a bug; the data is still
        // consistent enough to keep forwarding, so poisoning is ignored.
        let shard = self.shards[idx]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        ShardGuard {
            shard,
            table: self,
            index: idx,
        }
    }

    /// The number of flows in the whole table.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Whether the table holds no flow.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The adaptive timeout factor at the current fill level.
    pub fn adaptive_factor(&self) -> f64 {
        self.config.adaptive_factor(self.len())
    }

    /// Takes one place in the table if the limit allows.
    fn admit(&self) -> bool {
        self.count
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.config.max_flows).then_some(n + 1)
            })
            .is_ok()
    }

    /// Heap bytes of the whole table.
    pub fn heap_bytes(&self) -> usize {
        std::mem::size_of_val(&*self.shards)
            + (0..self.shards.len())
                .map(|i| self.lock_shard(i).heap_bytes())
                .sum::<usize>()
    }
}
