//! Address translation state (SPEC §9): the translated side of flows, the
//! alias index that finds a translated flow from its translated tuple, and
//! port allocation.
//!
//! A translated flow is stored once in the flow table, under the key of the
//! packet that created it (its *original* tuple), with a flag bit; its
//! [`Translation`] (the translated tuple) lives in a side map of its shard,
//! so untranslated flows carry nothing for NAT. Packets on the other side
//! of the gateway carry the translated tuple. Where that tuple hashes to
//! the flow's own shard (masquerade keeps or picks such a port:
//! [`crate::flow::hash`], [`Affinity`]), the shard indexes it beside the
//! flow ([`crate::flow::shard`]) and one lookup finds it from either side.
//! Every translated tuple is also in the [`Aliases`] index, which maps it
//! to the flow's shard and slot: it keeps tuples unique across groups,
//! finds the flows whose tuple lives in another shard (port forwarding,
//! connect redirect, ICMP ids) and those ICMP errors quote. It is
//! consulted only when the flow table misses, with the hash the table
//! lookup computed, so established untranslated flows never look at it.
//! The per-packet rewrite of a translated flow is worked out once, when
//! its translation is set ([`rewrites`]).
//!
//! Lock order: a flow-table shard, then an alias shard or the allocator;
//! an alias lookup holds its alias shard alone and lets go before locking
//! the flow's table shard (and checks the flow id there, as the slot may
//! have been reused meanwhile).

pub mod alloc;

use crate::flow::hash::FlowHasher;
use crate::flow::{Direction, FlowEntry, FlowKey, Zone};
use crate::packet::rewrite::{Deltas, Endpoints, FlowRewrite, Ports4};
use crate::packet::{IpVersion, proto};
use crossbeam_utils::CachePadded;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

pub use alloc::{Affinity, Allocator, Exhausted, MapKey};

/// The translated side of a flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Translation {
    /// The flow's key as packets on the other side of the gateway carry it,
    /// oriented like every cross-zone key (local = the inside-side end).
    pub key: FlowKey,
    /// Egress port of packets leaving toward the outside (index 0) and the
    /// inside (index 1).
    pub egress: [u8; 2],
    /// The port mapping this flow holds (masquerade), released at its closure.
    pub mapping: Option<(MapKey, u16)>,
    /// The redirect filter(s) that decided it.
    pub filter: Arc<str>,
}

/// The endpoints a packet that arrived in `zone` carries once moved into
/// the view of `to` (the other side's key).
pub fn endpoints(to: &FlowKey, zone: Zone) -> Endpoints {
    let (src, dst, ports) = match zone {
        Zone::Inside => (to.local, to.remote, (to.local_port, to.remote_port)),
        Zone::Outside => (to.remote, to.local, (to.remote_port, to.local_port)),
    };
    Endpoints {
        src,
        dst,
        ports,
        icmp_id: to.remote_port,
    }
}

/// [`endpoints`] as the fixed-offset rewrite of an IPv4 TCP or UDP packet
/// carrying the view `deltas` start from; `None` for other flows.
fn ports4(to: &FlowKey, zone: Zone, deltas: Deltas) -> Option<Ports4> {
    let udp = match to.protocol {
        proto::UDP => true,
        proto::TCP => false,
        _ => return None,
    };
    if to.version() != IpVersion::V4 {
        return None;
    }
    let to = endpoints(to, zone);
    Some(Ports4::new(&to.src, &to.dst, to.ports, udp, deltas))
}

/// The inside and the outside view of a translated flow.
pub fn views(entry: &FlowEntry, t: &Translation) -> (FlowKey, FlowKey) {
    match entry.direction() {
        Direction::Outbound => (entry.table_key(), t.key),
        Direction::Inbound => (t.key, entry.table_key()),
    }
}

/// The rewrites of a translated flow's packets arriving inside (index 0,
/// into the outside view) and outside (index 1).
pub fn rewrites(entry: &FlowEntry, t: &Translation) -> [FlowRewrite; 2] {
    let (inside, outside) = views(entry, t);
    let (version, protocol) = (inside.version(), inside.protocol);
    let way = |from: &FlowKey, to: &FlowKey, zone| {
        let deltas = Deltas::between(
            version,
            protocol,
            &endpoints(from, zone),
            &endpoints(to, zone),
        );
        match ports4(to, zone, deltas) {
            Some(ports4) => FlowRewrite::Ports4(ports4),
            None => FlowRewrite::Deltas(deltas),
        }
    };
    [
        way(&inside, &outside, Zone::Inside),
        way(&outside, &inside, Zone::Outside),
    ]
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

/// One alias: the flow table's hash of the translated tuple, kept whole as
/// the tuple's fingerprint, and where the flow lives. The tuple itself is
/// the flow's [`Translation::key`], compared under the flow's shard lock
/// ([`crate::engine`]'s alias lookup), so an alias costs 24 bytes.
#[derive(Clone, Copy, Debug)]
struct Alias {
    hash: u64,
    target: AliasTarget,
}

type AliasShard = hashbrown::HashTable<Alias>;

/// Translated tuple → flow. Bounded by the flow table: one alias per
/// translated flow, removed with it. Keyed by the flow table's own hash,
/// so a packet that missed in the table looks here with the hash it has.
///
/// Two translated tuples with the same 64-bit keyed hash cannot both have
/// an alias (the second is refused, as a held tuple is): with random keys
/// that takes about 2^32 live translated flows to become likely.
pub struct Aliases {
    shards: Box<[CachePadded<Mutex<AliasShard>>]>,
    /// The flow table's hasher.
    hasher: FlowHasher,
    len: AtomicUsize,
}

impl Aliases {
    /// An empty index hashing with the flow table's `hasher`.
    pub fn new(hasher: FlowHasher) -> Aliases {
        Aliases {
            shards: (0..ALIAS_SHARDS)
                .map(|_| CachePadded::new(Mutex::new(AliasShard::new())))
                .collect(),
            hasher,
            len: AtomicUsize::new(0),
        }
    }

    fn shard(&self, hash: u64) -> std::sync::MutexGuard<'_, AliasShard> {
        // Shard bits ([`crate::flow::hash`]): hashbrown uses the low bits
        // and the top seven; the upper ones move with every port.
        let i = (hash >> 48) as usize % ALIAS_SHARDS;
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

    /// The flow whose translated tuple is probably `key` (its hash matches:
    /// check the flow's translation).
    pub fn find(&self, key: &FlowKey) -> Option<AliasTarget> {
        self.find_hashed(self.hasher.hash(key))
    }

    /// [`Aliases::find`] by the flow table's hash of the tuple.
    #[inline]
    pub fn find_hashed(&self, hash: u64) -> Option<AliasTarget> {
        self.shard(hash)
            .find(hash, |a| a.hash == hash)
            .map(|a| a.target)
    }

    /// Adds an alias; `false` if another flow holds the tuple (or its hash).
    pub fn add(&self, key: FlowKey, target: AliasTarget) -> bool {
        let hash = self.hasher.hash(&key);
        let mut shard = self.shard(hash);
        if shard.find(hash, |a| a.hash == hash).is_some() {
            return false;
        }
        shard.insert_unique(hash, Alias { hash, target }, |a| a.hash);
        self.len.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Removes the alias of flow `id`.
    pub fn remove(&self, key: &FlowKey, id: u64) {
        let hash = self.hasher.hash(key);
        let mut shard = self.shard(hash);
        if let Ok(entry) = shard.find_entry(hash, |a| a.hash == hash && a.target.id == id) {
            entry.remove();
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
pub struct Nat {
    /// Translated tuple → flow.
    pub aliases: Aliases,
    allocator: Mutex<Allocator>,
}

impl Nat {
    /// Empty, its alias index hashing with the flow table's `hasher`.
    pub fn new(hasher: FlowHasher) -> Nat {
        Nat {
            aliases: Aliases::new(hasher),
            allocator: Mutex::default(),
        }
    }

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
