//! State that admits inbound packets from any remote address.
//!
//! An outbound multicast or broadcast packet creates state that admits
//! inbound traffic (unicast, multicast or broadcast) from any remote address
//! to its local port (ALE Multicast/Broadcast Traffic); loose source mapping
//! does the same for unicast UDP. Such state cannot be found by the exact
//! flow key, so it is indexed here by (IP version, protocol, local port).
//!
//! The map is split into shards by key, each with its own lock, so no lock
//! is shared by every packet: a shard lock is taken on the new-flow path of
//! inbound packets while any wildcard exists (one look-up), and when a flow
//! that owns a wildcard is refreshed or removed. It is always taken after a
//! flow-table shard lock, never before.

use super::Direction;
use crate::packet::{IpVersion, RawAddr};
use crate::time::Instant;
use crossbeam_utils::CachePadded;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Where wildcard state is indexed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WildcardKey {
    /// IP version.
    pub version: IpVersion,
    /// Protocol.
    pub protocol: u8,
    /// The local port inbound packets must be addressed to.
    pub local_port: u16,
}

/// One owner's wildcard.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Wildcard {
    /// The local address unicast packets must be addressed to.
    pub local: RawAddr,
    /// Multicast and broadcast destinations match too (multicast/broadcast state).
    pub any_group: bool,
    /// The owning flow, the parent of the flows the wildcard admits.
    pub parent_id: u64,
    /// The owner's direction, which the flows it admits take (and so its layer).
    pub direction: Direction,
    /// The port the owner was authorized on.
    pub arrival_port: u8,
    /// Last refresh of the owner.
    pub refreshed: Instant,
    /// The owner's idle lifetime before adaptive scaling.
    pub lifetime: Duration,
}

/// Shards of the wildcard index.
const SHARDS: usize = 64;

type Shard = HashMap<WildcardKey, Vec<Wildcard>, ahash::RandomState>;

/// The wildcard index.
pub struct Wildcards {
    shards: Box<[CachePadded<Mutex<Shard>>]>,
    hasher: ahash::RandomState,
    count: AtomicUsize,
}

impl Default for Wildcards {
    fn default() -> Self {
        let hasher = ahash::RandomState::new();
        Wildcards {
            shards: (0..SHARDS)
                .map(|_| CachePadded::new(Mutex::new(HashMap::with_hasher(hasher.clone()))))
                .collect(),
            hasher,
            count: AtomicUsize::new(0),
        }
    }
}

impl Wildcards {
    fn map(&self, key: &WildcardKey) -> std::sync::MutexGuard<'_, Shard> {
        let i = (self.hasher.hash_one(key) >> 32) as usize % SHARDS;
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether any wildcard exists (checked before taking the lock).
    pub fn is_empty(&self) -> bool {
        self.count.load(Ordering::Relaxed) == 0
    }

    /// Adds the wildcard of a new owner flow.
    pub fn add(&self, key: WildcardKey, wildcard: Wildcard) {
        self.map(&key).entry(key).or_default().push(wildcard);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// The owner `parent_id` was refreshed at `now`.
    pub fn refresh(&self, key: &WildcardKey, parent_id: u64, now: Instant) {
        if let Some(list) = self.map(key).get_mut(key) {
            for w in list.iter_mut().filter(|w| w.parent_id == parent_id) {
                w.refreshed = now;
            }
        }
    }

    /// The owner `parent_id` was removed.
    pub fn remove(&self, key: &WildcardKey, parent_id: u64) {
        let mut map = self.map(key);
        if let Some(list) = map.get_mut(key) {
            let before = list.len();
            list.retain(|w| w.parent_id != parent_id);
            self.count.fetch_sub(before - list.len(), Ordering::Relaxed);
            if list.is_empty() {
                map.remove(key);
            }
        }
    }

    /// A live wildcard admitting a packet to `dst` (`dst_is_group`: a
    /// multicast or broadcast address) at `now`, with adaptive `factor`.
    pub fn find(
        &self,
        key: &WildcardKey,
        dst: &RawAddr,
        dst_is_group: bool,
        now: Instant,
        factor: f64,
    ) -> Option<Wildcard> {
        let map = self.map(key);
        map.get(key)?
            .iter()
            .find(|w| {
                (w.local == *dst || (w.any_group && dst_is_group))
                    && now.saturating_since(w.refreshed)
                        < w.lifetime.mul_f64(factor.clamp(0.0, 1.0))
            })
            .copied()
    }
}
