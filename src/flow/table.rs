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
use super::entry::{F_EMBRYONIC, F_ESTABLISHED, F_HAS_PARENT, F_TRANSLATED, FlowEntry};
use super::key::FlowKey;
use super::translated::Translations;
use crate::nat::Translation;
use crate::packet::rewrite::Deltas;
use crate::reason::CloseReason;
use crate::time::Instant;
use crossbeam_utils::CachePadded;
use hashbrown::HashTable;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

/// A slot number inside one shard.
pub type SlotId = u32;

/// Slab chunk size: small enough that the unused tail of a shard's last
/// chunk stays under a byte per flow in a full table (the translations'
/// chunks are aligned with it).
pub(super) const CHUNK: usize = 64;

/// One shard: a slab of entries, its index and its bookkeeping.
pub struct Shard {
    index: HashTable<SlotId>,
    chunks: Vec<Box<[FlowEntry]>>,
    /// Free slots below `high_water`, lowest first: new flows fill the
    /// slab from the bottom, so after a flood the top chunks empty out and
    /// can be given back.
    free: BinaryHeap<Reverse<SlotId>>,
    /// Live entries per chunk.
    live: Vec<u8>,
    /// Slots handed out so far; slots at or above it were never used.
    high_water: u32,
    len: usize,
    /// TCP flows not yet established, oldest first, as (slot, low 32 bits of
    /// the id); stale records are skipped lazily and compacted when they pile up.
    embryos: VecDeque<(SlotId, u32)>,
    embryo_count: usize,
    parents: hashbrown::HashMap<u64, u64, ahash::RandomState>,
    /// The translated side of translated flows, by slot.
    translations: Translations,
    sweep_cursor: SlotId,
    hasher: ahash::RandomState,
}

impl Shard {
    fn new(hasher: ahash::RandomState) -> Shard {
        Shard {
            index: HashTable::new(),
            chunks: Vec::new(),
            free: BinaryHeap::new(),
            live: Vec::new(),
            high_water: 0,
            len: 0,
            embryos: VecDeque::new(),
            embryo_count: 0,
            parents: hashbrown::HashMap::with_hasher(hasher.clone()),
            translations: Translations::default(),
            sweep_cursor: 0,
            hasher,
        }
    }

    /// Number of flows in this shard.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the shard holds no flow.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The slot of `key`, if present.
    #[inline]
    pub fn find(&self, hash: u64, key: &FlowKey) -> Option<SlotId> {
        self.index
            .find(hash, |&slot| Self::at(&self.chunks, slot).key == *key)
            .copied()
    }

    #[inline]
    fn at(chunks: &[Box<[FlowEntry]>], slot: SlotId) -> &FlowEntry {
        let slot = slot as usize;
        &chunks[slot / CHUNK][slot % CHUNK]
    }

    /// The entry in `slot`.
    #[inline]
    pub fn entry(&self, slot: SlotId) -> &FlowEntry {
        Self::at(&self.chunks, slot)
    }

    /// The entry in `slot`, mutably.
    #[inline]
    pub fn entry_mut(&mut self, slot: SlotId) -> &mut FlowEntry {
        let slot = slot as usize;
        &mut self.chunks[slot / CHUNK][slot % CHUNK]
    }

    /// The parent id of the flow in `slot`.
    pub fn parent(&self, slot: SlotId) -> Option<u64> {
        let entry = self.entry(slot);
        if entry.has_parent() {
            self.parents.get(&entry.id()).copied()
        } else {
            None
        }
    }

    /// Whether `slot` holds flow `id`, translated to `key` (an alias found
    /// without this shard's lock is checked here under it: the flow may
    /// have gone meanwhile, and its chunk with it).
    #[inline]
    pub fn holds_translated(&self, slot: SlotId, id: u64, key: &FlowKey) -> bool {
        let slot = slot as usize;
        let Some(entry) = self
            .chunks
            .get(slot / CHUNK)
            .and_then(|c| c.get(slot % CHUNK))
        else {
            return false;
        };
        entry.id == id
            && entry.is_translated()
            && self.translations.get(slot).is_some_and(|t| t.key == *key)
    }

    /// The translation of the flow in `slot`, if it is translated.
    #[inline]
    pub fn translation(&self, slot: SlotId) -> Option<&Translation> {
        if !self.entry(slot).is_translated() {
            return None;
        }
        self.translations.get(slot as usize)
    }

    /// The translation of the flow in `slot` and its checksum deltas for
    /// packets arriving [0] inside or [1] outside (`way`).
    #[inline]
    pub fn translation_deltas(&self, slot: SlotId, way: usize) -> Option<(&Translation, Deltas)> {
        if !self.entry(slot).is_translated() {
            return None;
        }
        self.translations.get_with_deltas(slot as usize, way)
    }

    /// Makes the flow in `slot` a translated one.
    pub fn set_translation(&mut self, slot: SlotId, translation: Translation) {
        self.entry_mut(slot).flags |= F_TRANSLATED;
        let deltas = crate::nat::deltas(self.entry(slot), &translation);
        self.translations.set(slot as usize, translation, deltas);
    }

    fn take_translation(&mut self, slot: SlotId) -> Option<Translation> {
        self.translations.take(slot as usize)
    }

    /// A snapshot of the flow in `slot`.
    pub fn info(
        &self,
        slot: SlotId,
        now: Instant,
        config: &FlowConfig,
        factor: f64,
    ) -> super::FlowInfo {
        super::FlowInfo::of(
            self.entry(slot),
            self.parent(slot),
            self.translation(slot),
            now,
            config,
            factor,
        )
    }

    fn insert(&mut self, hash: u64, mut entry: FlowEntry, parent: Option<u64>) -> SlotId {
        let slot = match self.free.pop() {
            Some(Reverse(slot)) => slot,
            None => {
                if self.high_water as usize == self.chunks.len() * CHUNK {
                    self.chunks
                        .push(vec![FlowEntry::VACANT; CHUNK].into_boxed_slice());
                    self.live.push(0);
                }
                self.high_water += 1;
                self.high_water - 1
            }
        };
        if let Some(parent) = parent {
            entry.flags |= F_HAS_PARENT;
            self.parents.insert(entry.id, parent);
        }
        // Pending flows are never evicted; they become evictable embryos
        // when they are permitted (`complete_pending`).
        if entry.is_tcp() && !entry.tcp.handshake_done() && !entry.is_pending() {
            entry.flags |= F_EMBRYONIC;
            self.embryos.push_back((slot, entry.id as u32));
            self.embryo_count += 1;
            self.compact_embryos();
        }
        *self.entry_mut(slot) = entry;
        self.live[slot as usize / CHUNK] += 1;
        let (chunks, hasher) = (&self.chunks, &self.hasher);
        self.index
            .insert_unique(hash, slot, |&s| hasher.hash_one(Self::at(chunks, s).key));
        self.len += 1;
        slot
    }

    fn remove(&mut self, slot: SlotId) -> Removed {
        let entry = *self.entry(slot);
        let hash = self.hasher.hash_one(entry.key);
        if let Ok(found) = self.index.find_entry(hash, |&s| s == slot) {
            found.remove();
        }
        if entry.flags & F_EMBRYONIC != 0 {
            self.embryo_count -= 1;
        }
        let parent = if entry.has_parent() {
            self.parents.remove(&entry.id())
        } else {
            None
        };
        let translation = if entry.is_translated() {
            self.take_translation(slot)
        } else {
            None
        };
        *self.entry_mut(slot) = FlowEntry::VACANT;
        self.free.push(Reverse(slot));
        self.live[slot as usize / CHUNK] -= 1;
        self.len -= 1;
        Removed {
            entry,
            parent,
            translation,
        }
    }

    /// Records that the flow in `slot` completed its handshake (it may no
    /// longer be evicted) and returns whether this is the first time.
    pub fn mark_established(&mut self, slot: SlotId) -> bool {
        let entry = self.entry_mut(slot);
        if entry.flags & F_ESTABLISHED != 0 {
            return false;
        }
        let was_embryonic = entry.flags & F_EMBRYONIC != 0;
        entry.flags = (entry.flags | F_ESTABLISHED) & !F_EMBRYONIC;
        if was_embryonic {
            self.embryo_count -= 1;
        }
        true
    }

    /// Records a pending flow's decision; a permitted TCP flow still in its
    /// handshake joins the evictable embryos from now on.
    pub fn complete_pending(&mut self, slot: SlotId, decision: crate::policy::Action) {
        let entry = self.entry_mut(slot);
        entry.set_completed(decision);
        if entry.is_tcp()
            && !entry.tcp.handshake_done()
            && entry.flags & (F_EMBRYONIC | F_ESTABLISHED) == 0
        {
            entry.flags |= F_EMBRYONIC;
            let id = entry.id as u32;
            self.embryos.push_back((slot, id));
            self.embryo_count += 1;
            self.compact_embryos();
        }
    }

    /// Gives back the empty chunks at the top of the slab once the shard
    /// holds less than half of what it once did (after a flood), with the
    /// spare capacity of the index and the bookkeeping: memory returns
    /// toward the live flow count.
    fn shrink(&mut self) {
        let used = self.high_water as usize;
        if used <= 4 * CHUNK || self.len * 2 >= used {
            return;
        }
        while self.chunks.len() > 1 && self.live.last() == Some(&0) {
            self.chunks.pop();
            self.live.pop();
        }
        let top = (self.chunks.len() * CHUNK).min(used) as u32;
        if top as usize == used {
            return;
        }
        self.high_water = top;
        self.free.retain(|Reverse(slot)| *slot < top);
        self.free.shrink_to_fit();
        self.chunks.shrink_to_fit();
        self.live.shrink_to_fit();
        // Records of the chunks given back are stale (those chunks were empty).
        self.embryos.retain(|&(slot, _)| slot < top);
        self.embryos.shrink_to_fit();
        let (chunks, hasher) = (&self.chunks, &self.hasher);
        self.index
            .shrink_to(self.len, |&s| hasher.hash_one(Self::at(chunks, s).key));
        self.parents.shrink_to_fit();
        self.translations.truncate(self.chunks.len());
    }

    fn compact_embryos(&mut self) {
        if self.embryos.len() > 2 * self.embryo_count + 1024 {
            let chunks = &self.chunks;
            self.embryos.retain(|&(slot, id)| {
                let e = Self::at(chunks, slot);
                e.flags & F_EMBRYONIC != 0 && e.id as u32 == id
            });
        }
    }

    /// The oldest flow that has not completed its TCP handshake.
    pub fn oldest_embryonic(&mut self) -> Option<SlotId> {
        while let Some(&(slot, id)) = self.embryos.front() {
            let e = self.entry(slot);
            if e.flags & F_EMBRYONIC != 0 && e.id as u32 == id {
                return Some(slot);
            }
            self.embryos.pop_front();
        }
        None
    }

    /// Looks at up to `budget` slots from the sweep cursor for an expired flow.
    fn next_expired(
        &mut self,
        now: Instant,
        config: &FlowConfig,
        factor: f64,
        budget: usize,
    ) -> Option<SlotId> {
        let limit = self.high_water;
        if limit == 0 {
            return None;
        }
        for _ in 0..budget.min(limit as usize) {
            let slot = self.sweep_cursor % limit;
            self.sweep_cursor = (slot + 1) % limit;
            let e = self.entry(slot);
            if !e.is_vacant() && e.expired(now, config, factor) {
                return Some(slot);
            }
        }
        None
    }

    /// Every live entry with its slot.
    pub fn iter(&self) -> impl Iterator<Item = (SlotId, &FlowEntry)> {
        self.chunks
            .iter()
            .flat_map(|c| c.iter())
            .take(self.high_water as usize)
            .enumerate()
            .filter(|(_, e)| !e.is_vacant())
            .map(|(i, e)| (i as SlotId, e))
    }

    /// Heap bytes this shard holds (entries, index, bookkeeping).
    pub fn heap_bytes(&self) -> usize {
        self.chunks.len() * CHUNK * std::mem::size_of::<FlowEntry>()
            + self.chunks.capacity() * std::mem::size_of::<Box<[FlowEntry]>>()
            + self.index.allocation_size()
            + self.free.capacity() * 4
            + self.embryos.capacity() * 8
            + self.parents.allocation_size()
            + self.translations.heap_bytes()
    }
}

/// A flow removed from the table, with what its closure indication needs.
#[derive(Clone)]
pub struct Removed {
    /// The entry as it was.
    pub entry: FlowEntry,
    /// Its parent id, if any.
    pub parent: Option<u64>,
    /// Its translation, if it was translated.
    pub translation: Option<Translation>,
}

/// The flow table shared by every worker.
pub struct FlowTable {
    shards: Box<[CachePadded<Mutex<Shard>>]>,
    /// Shards come in one group per worker; a worker creates flows only in
    /// its own group, so the shard locks it takes for its flows are touched
    /// by no other core (the kernel steers both directions of a flow to the
    /// same worker).
    groups: usize,
    per_group: usize,
    hasher: ahash::RandomState,
    count: CachePadded<AtomicUsize>,
    config: FlowConfig,
}

/// A locked shard plus the table, so adding and removing keep the global count.
pub struct ShardGuard<'a> {
    shard: MutexGuard<'a, Shard>,
    table: &'a FlowTable,
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
    /// flow). Returns the slot and the flow removed to make room, or `None`
    /// when nothing could go (`flow_table_full`).
    pub fn insert(
        &mut self,
        hash: u64,
        entry: FlowEntry,
        parent: Option<u64>,
        now: Instant,
    ) -> Option<(SlotId, Option<(Removed, CloseReason)>)> {
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
        Some((self.shard.insert(hash, entry, parent), made_room))
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
        let hasher = ahash::RandomState::new();
        let groups = groups.clamp(1, 256);
        let per_group = shards.clamp(1, 4096).div_ceil(groups);
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
    pub fn hasher(&self) -> &ahash::RandomState {
        &self.hasher
    }

    /// The keyed hash of a flow key.
    #[inline]
    pub fn hash(&self, key: &FlowKey) -> u64 {
        self.hasher.hash_one(key)
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
        (group % self.groups) * self.per_group + within as usize
    }

    /// Locks shard number `idx`.
    pub fn lock_shard(&self, idx: usize) -> ShardGuard<'_> {
        // A panic while holding a shard lock is a bug; the data is still
        // consistent enough to keep forwarding, so poisoning is ignored.
        let shard = self.shards[idx]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        ShardGuard { shard, table: self }
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
