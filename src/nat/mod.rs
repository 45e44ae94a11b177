//! Address translation state (SPEC §9): the translated side of flows, the
//! alias index that finds a translated flow from its translated tuple, and
//! port allocation.
//!
//! A translated flow is stored once in the flow table, under the key of the
//! packet that created it (its *original* tuple), with a flag bit; its
//! [`Translation`] (the translated tuple) lives in a side map of its shard,
//! so untranslated flows carry nothing for NAT. Packets on the other side
//! of the gateway carry the translated tuple: the [`Aliases`] index maps it
//! to the flow's shard and slot. It is consulted only when the flow table
//! misses, so established untranslated flows never look at it.
//!
//! Lock order: a flow-table shard, then an alias shard or the allocator;
//! an alias lookup holds its alias shard alone and lets go before locking
//! the flow's table shard (and checks the flow id there, as the slot may
//! have been reused meanwhile).

pub mod alloc;

use crate::flow::FlowKey;
use crossbeam_utils::CachePadded;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

pub use alloc::{Allocator, Exhausted, MapKey};

/// The translated side of a flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Translation {
    /// The flow's key as packets on the other side of the gateway carry it,
    /// oriented like every cross-zone key (local = the inside-side end).
    pub key: FlowKey,
    /// Egress port of packets leaving toward [0] the outside and [1] the inside.
    pub egress: [u8; 2],
    /// The port mapping this flow holds (masquerade), released at its closure.
    pub mapping: Option<(MapKey, u16)>,
    /// The redirect filter(s) that decided it.
    pub filter: Arc<str>,
}

/// Where a translated flow lives in the flow table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AliasTarget {
    /// Flow-table shard index.
    pub shard: u32,
    /// Slot in that shard.
    pub slot: u32,
    /// The flow id (the slot may be reused once the flow is gone).
    pub id: u64,
}

const ALIAS_SHARDS: usize = 64;

type AliasShard = hashbrown::HashMap<FlowKey, AliasTarget, ahash::RandomState>;

/// Translated tuple → flow. Bounded by the flow table: one alias per
/// translated flow, removed with it.
pub struct Aliases {
    shards: Box<[CachePadded<Mutex<AliasShard>>]>,
    hasher: ahash::RandomState,
    len: AtomicUsize,
}

impl Default for Aliases {
    fn default() -> Self {
        let hasher = ahash::RandomState::new();
        Aliases {
            shards: (0..ALIAS_SHARDS)
                .map(|_| CachePadded::new(Mutex::new(AliasShard::with_hasher(hasher.clone()))))
                .collect(),
            hasher,
            len: AtomicUsize::new(0),
        }
    }
}

impl Aliases {
    fn shard(&self, key: &FlowKey) -> std::sync::MutexGuard<'_, AliasShard> {
        let i = (self.hasher.hash_one(key) >> 40) as usize % ALIAS_SHARDS;
        self.shards[i]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether no flow is translated (the common case costs one load).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len.load(Ordering::Relaxed) == 0
    }

    /// Number of aliases.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// The flow whose translated tuple is `key`.
    pub fn find(&self, key: &FlowKey) -> Option<AliasTarget> {
        self.shard(key).get(key).copied()
    }

    /// Adds an alias; `false` if another flow holds the tuple.
    pub fn add(&self, key: FlowKey, target: AliasTarget) -> bool {
        let mut shard = self.shard(&key);
        if shard.contains_key(&key) {
            return false;
        }
        shard.insert(key, target);
        self.len.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Removes the alias of flow `id`.
    pub fn remove(&self, key: &FlowKey, id: u64) {
        let mut shard = self.shard(key);
        if shard.get(key).is_some_and(|t| t.id == id) {
            shard.remove(key);
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Heap bytes (for the memory figures).
    pub fn heap_bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .allocation_size()
            })
            .sum()
    }
}

/// The gateway's NAT state.
#[derive(Default)]
pub struct Nat {
    /// Translated tuple → flow.
    pub aliases: Aliases,
    allocator: Mutex<Allocator>,
}

impl Nat {
    /// The allocator, locked (new flows and closures only).
    pub fn allocator(&self) -> std::sync::MutexGuard<'_, Allocator> {
        self.allocator
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Ports held by mappings (the `nat.ports_in_use` gauge).
    pub fn ports_in_use(&self) -> usize {
        self.allocator().in_use()
    }
}
