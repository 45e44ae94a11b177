//! The fragment table: later fragments follow their first fragment's verdict.
//!
//! tunwall does not reassemble. The first fragment carries the ports and is
//! classified like any packet; its verdict is remembered here for a short
//! time under (version, source, destination, protocol, identification), and
//! later fragments of the same datagram get the same verdict. A later
//! fragment that arrives before its first one, or after the entry expired, is
//! dropped (`fragment_without_first`). The table is bounded: when it is full
//! an expired entry is reused, or the new first fragment is dropped.

use crate::packet::{IpVersion, RawAddr};
use crate::time::Instant;
use crossbeam_utils::CachePadded;
use hashbrown::HashTable;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::Duration;

/// The identity of a fragmented datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragmentKey {
    /// IP version.
    pub version: IpVersion,
    /// Source address.
    pub src: RawAddr,
    /// Destination address.
    pub dst: RawAddr,
    /// Protocol.
    pub protocol: u8,
    /// IPv4 identification or IPv6 fragment identification.
    pub id: u32,
}

impl Hash for FragmentKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u128(u128::from_ne_bytes(self.src));
        state.write_u128(u128::from_ne_bytes(self.dst));
        state.write_u64(
            u64::from(self.id)
                | u64::from(self.protocol) << 32
                | u64::from(self.version.number()) << 40,
        );
    }
}

/// What happened to a datagram's first fragment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirstVerdict {
    /// Forwarded out of this port.
    Forwarded(u8),
    /// Translated to these addresses and forwarded out of `port`.
    Translated {
        /// The egress port.
        port: u8,
        /// The translated source.
        src: RawAddr,
        /// The translated destination.
        dst: RawAddr,
    },
    /// Dropped.
    Dropped,
}

#[derive(Clone, Copy)]
struct Entry {
    key: FragmentKey,
    verdict: FirstVerdict,
    expires: Instant,
}

/// Why a first fragment could not be remembered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragmentTableFull;

const SHARDS: usize = 16;

/// The bounded fragment table shared by every worker.
pub struct FragmentTable {
    shards: Box<[CachePadded<Mutex<HashTable<Entry>>>]>,
    hasher: ahash::RandomState,
    per_shard: usize,
    timeout: Duration,
}

impl FragmentTable {
    /// A table remembering at most `max` datagrams for `timeout` each.
    pub fn new(max: usize, timeout: Duration) -> FragmentTable {
        FragmentTable {
            shards: (0..SHARDS)
                .map(|_| CachePadded::new(Mutex::new(HashTable::new())))
                .collect(),
            hasher: ahash::RandomState::new(),
            per_shard: max.div_ceil(SHARDS).max(1),
            timeout,
        }
    }

    fn shard(&self, hash: u64) -> std::sync::MutexGuard<'_, HashTable<Entry>> {
        self.shards[(hash >> 32) as usize % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Remembers the verdict of a datagram's first fragment.
    pub fn record(
        &self,
        key: FragmentKey,
        verdict: FirstVerdict,
        now: Instant,
    ) -> Result<(), FragmentTableFull> {
        let hash = self.hasher.hash_one(key);
        let mut shard = self.shard(hash);
        let entry = Entry {
            key,
            verdict,
            expires: now + self.timeout,
        };
        if let Some(existing) = shard.find_mut(hash, |e| e.key == key) {
            *existing = entry;
            return Ok(());
        }
        if shard.len() >= self.per_shard {
            shard.retain(|e| e.expires > now);
            if shard.len() >= self.per_shard {
                return Err(FragmentTableFull);
            }
        }
        shard.insert_unique(hash, entry, |e| self.hasher.hash_one(e.key));
        Ok(())
    }

    /// The verdict of the first fragment of `key`'s datagram, if it was seen
    /// and has not expired.
    pub fn lookup(&self, key: &FragmentKey, now: Instant) -> Option<FirstVerdict> {
        let hash = self.hasher.hash_one(key);
        let shard = self.shard(hash);
        shard
            .find(hash, |e| e.key == *key)
            .filter(|e| e.expires > now)
            .map(|e| e.verdict)
    }

    /// Drops expired entries of the shards `worker` owns among `workers`.
    pub fn expire(&self, now: Instant, worker: usize, workers: usize) {
        for (i, shard) in self.shards.iter().enumerate() {
            if i % workers.max(1) == worker {
                shard
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .retain(|e| e.expires > now);
            }
        }
    }

    /// The number of datagrams remembered.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
