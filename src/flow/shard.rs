//! One shard of the flow table: a slab of fixed-size chunks (no
//! reallocation and copy under the lock as it grows, no `Box` per flow),
//! its hash index of slot numbers, and its bookkeeping (free slots,
//! embryos, parents, translations, sweep cursor). Everything here is
//! guarded by the shard's lock ([`super::table`]).

use super::FlowConfig;
use super::entry::{F_EMBRYONIC, F_ESTABLISHED, F_HAS_PARENT, F_TRANSLATED, FlowEntry};
use super::hash::{FlowHasher, index_bits, index_hash, index_hash_of_bits};
use super::key::FlowKey;
use super::translated::Translations;
use crate::nat::Translation;
use crate::packet::rewrite::FlowRewrite;
use crate::time::Instant;
use hashbrown::HashTable;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

/// A slot number inside one shard.
pub type SlotId = u32;

/// Slab chunk size: small enough that the unused tail of a shard's last
/// chunk stays under a byte per flow in a full table (the translations'
/// chunks are aligned with it).
pub(super) const CHUNK: usize = 64;

/// An index entry: a slot and the [`index_bits`] of its key's hash, so the
/// index grows (re-hashing every entry it moves) without touching the slab:
/// reading each key back to hash it again cost a new flow ~80 instructions
/// and a cache miss or two.
#[derive(Clone, Copy)]
struct Indexed {
    slot: SlotId,
    bits: u32,
}

impl Indexed {
    #[inline]
    fn new(hash: u64, slot: SlotId) -> Indexed {
        Indexed {
            slot,
            bits: index_bits(hash),
        }
    }

    /// The hash the index files this entry under.
    #[inline]
    fn hash(&self) -> u64 {
        index_hash_of_bits(self.bits)
    }
}

/// One shard: a slab of entries, its index and its bookkeeping.
pub struct Shard {
    index: HashTable<Indexed>,
    /// The translated tuples of this shard's translated flows that belong
    /// in this shard ([`super::hash`]), by the flows' slots.
    aliases: HashTable<Indexed>,
    /// Fixed-size chunks: indexing inside one needs no length check.
    chunks: Vec<Box<[FlowEntry; CHUNK]>>,
    /// Free slots below `high_water`, lowest first: new flows fill the
    /// slab from the bottom, so after a flood the top chunks empty out and
    /// can be given back.
    free: BinaryHeap<Reverse<SlotId>>,
    /// Live entries per chunk.
    live: Vec<u8>,
    /// Slots handed out so far; slots at or above it were never used.
    pub(super) high_water: u32,
    len: usize,
    /// TCP flows not yet established, oldest first, as (slot, low 32 bits of
    /// the id); stale records are skipped lazily and compacted when they pile up.
    embryos: VecDeque<(SlotId, u32)>,
    embryo_count: usize,
    parents: hashbrown::HashMap<u64, u64, ahash::RandomState>,
    /// The translated side of translated flows, by slot.
    translations: Translations,
    pub(super) sweep_cursor: SlotId,
    hasher: FlowHasher,
}

impl Shard {
    pub(super) fn new(hasher: FlowHasher) -> Shard {
        Shard {
            index: HashTable::new(),
            aliases: HashTable::new(),
            chunks: Vec::new(),
            free: BinaryHeap::new(),
            live: Vec::new(),
            high_water: 0,
            len: 0,
            embryos: VecDeque::new(),
            embryo_count: 0,
            parents: hashbrown::HashMap::default(),
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

    /// The slot of the flow whose key is `key`, if present.
    #[inline]
    pub fn find(&self, hash: u64, key: &FlowKey) -> Option<SlotId> {
        self.index
            .find(index_hash(hash), |i| {
                Self::at(&self.chunks, i.slot).key == *key
            })
            .map(|i| i.slot)
    }

    /// The slot and entry of the flow whose key or translated tuple (when
    /// that is indexed in this shard) is `key`, and whether it was the
    /// translated one. The translated tuples have an index of their own, so
    /// a packet of an untranslated flow pays nothing for them. The entry
    /// comes with the slot so the caller does not index the slab again.
    #[inline]
    pub fn find_any(&self, hash: u64, key: &FlowKey) -> Option<(SlotId, &FlowEntry, bool)> {
        let chunks = &self.chunks;
        let mut found = None;
        let index = index_hash(hash);
        if let Some(&Indexed { slot, .. }) = self.index.find(index, |i| {
            let entry = Self::at(chunks, i.slot);
            let hit = entry.key == *key;
            if hit {
                found = Some(entry);
            }
            hit
        }) && let Some(entry) = found
        {
            return Some((slot, entry, false));
        }
        if self.aliases.is_empty() {
            return None;
        }
        let translations = &self.translations;
        self.aliases
            .find(index, |i| {
                translations
                    .get(i.slot as usize)
                    .is_some_and(|t| t.key == *key)
            })
            .map(|i| (i.slot, Self::at(chunks, i.slot), true))
    }

    #[inline]
    fn at(chunks: &[Box<[FlowEntry; CHUNK]>], slot: SlotId) -> &FlowEntry {
        let slot = slot as usize;
        &chunks[slot / CHUNK][slot % CHUNK]
    }

    /// A chunk of vacant entries, written in place on the heap (an array
    /// built on the stack first would be copied: 8 KiB).
    #[cold]
    fn vacant_chunk() -> Box<[FlowEntry; CHUNK]> {
        let chunk: Box<[FlowEntry]> = vec![FlowEntry::VACANT; CHUNK].into_boxed_slice();
        // The length is CHUNK by construction, so the conversion cannot fail.
        chunk
            .try_into()
            .unwrap_or_else(|_| Box::new([FlowEntry::VACANT; CHUNK]))
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

    /// The translation of the flow in `slot` and the rewrite of its
    /// packets arriving inside (`way` 0) or outside (`way` 1). Unlike
    /// [`Self::translation`] it does not look at the entry first: it is
    /// for a flow known to be translated.
    #[inline]
    pub fn translation_rewrite(
        &self,
        slot: SlotId,
        way: usize,
    ) -> Option<(&Translation, &FlowRewrite)> {
        self.translations.get_with_rewrite(slot as usize, way)
    }

    /// Makes the flow in `slot` a translated one, its translated tuple
    /// indexed here too when `alias_hash` (the tuple's hash) is given.
    pub(super) fn set_translation(
        &mut self,
        slot: SlotId,
        translation: Translation,
        alias_hash: Option<u64>,
    ) {
        self.entry_mut(slot).flags |= F_TRANSLATED;
        let rewrites = crate::nat::rewrites(self.entry(slot), &translation);
        self.translations.set(slot as usize, translation, rewrites);
        if let Some(hash) = alias_hash {
            let alias = Indexed::new(hash, slot);
            self.aliases
                .insert_unique(alias.hash(), alias, Indexed::hash);
        }
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

    // Inlined into its callers so the entry is written once, into its slot.
    #[inline(always)]
    pub(super) fn insert(
        &mut self,
        hash: u64,
        mut entry: FlowEntry,
        parent: Option<u64>,
    ) -> SlotId {
        let slot = match self.free.pop() {
            Some(Reverse(slot)) => slot,
            None => {
                if self.high_water as usize == self.chunks.len() * CHUNK {
                    self.chunks.push(Self::vacant_chunk());
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
        let indexed = Indexed::new(hash, slot);
        self.index
            .insert_unique(indexed.hash(), indexed, Indexed::hash);
        self.len += 1;
        slot
    }

    pub(super) fn remove(&mut self, slot: SlotId) -> Removed {
        let entry = *self.entry(slot);
        let hash = index_hash(self.hasher.hash(&entry.key));
        if let Ok(found) = self.index.find_entry(hash, |i| i.slot == slot) {
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
        if let Some(t) = &translation {
            let hash = index_hash(self.hasher.hash(&t.key));
            if let Ok(found) = self.aliases.find_entry(hash, |i| i.slot == slot) {
                found.remove();
            }
        }
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
    pub(super) fn shrink(&mut self) {
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
        self.index.shrink_to(self.len, Indexed::hash);
        self.aliases.shrink_to(self.aliases.len(), Indexed::hash);
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
    pub(super) fn next_expired(
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
            + self.chunks.capacity() * std::mem::size_of::<Box<[FlowEntry; CHUNK]>>()
            + self.index.allocation_size()
            + self.aliases.allocation_size()
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
