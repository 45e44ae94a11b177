//! The `rate_limit` callout: a token bucket per remote address.
//!
//! Its state is bounded (SPEC §14): at most [`DEFAULT_TRACKED`] sources,
//! split over shards with a lock each (no lock shared by every new flow),
//! each shard a least-recently-seen list in a fixed slab, so looking a
//! source up, adding it and forgetting the least recently seen one when the
//! shard is full are all O(1). A forgotten source comes back with a full
//! bucket, as one idle for a second would.

use super::callout::{Callout, CalloutResult};
use super::{ClassifyFlags, ClassifyRequest, PolicyNote};
use crate::packet::{IpVersion, RawAddr};
use crate::time::Instant;
use hashbrown::HashMap;
use std::sync::{Arc, Mutex};

/// Most remote addresses one `rate_limit` filter tracks at once.
pub const DEFAULT_TRACKED: usize = 65_536;
/// Shards of the source table.
const SHARDS: usize = 16;
const NIL: u32 = u32::MAX;

type Source = (IpVersion, RawAddr);

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
}

struct Node {
    source: Source,
    bucket: Bucket,
    /// Toward the most recently seen.
    newer: u32,
    /// Toward the least recently seen.
    older: u32,
}

/// One shard: the sources by address, and a list from the most recently
/// seen (`newest`) to the least (`oldest`) threaded through the slab.
struct Lru {
    index: HashMap<Source, u32, ahash::RandomState>,
    nodes: Vec<Node>,
    newest: u32,
    oldest: u32,
    capacity: usize,
}

impl Lru {
    fn new(capacity: usize, hasher: ahash::RandomState) -> Lru {
        Lru {
            index: HashMap::with_hasher(hasher),
            nodes: Vec::new(),
            newest: NIL,
            oldest: NIL,
            capacity: capacity.max(1),
        }
    }

    fn unlink(&mut self, i: u32) {
        let (newer, older) = {
            let n = &self.nodes[i as usize];
            (n.newer, n.older)
        };
        match newer {
            NIL => self.newest = older,
            n => self.nodes[n as usize].older = older,
        }
        match older {
            NIL => self.oldest = newer,
            o => self.nodes[o as usize].newer = newer,
        }
    }

    fn push_newest(&mut self, i: u32) {
        let node = &mut self.nodes[i as usize];
        node.newer = NIL;
        node.older = self.newest;
        match self.newest {
            NIL => self.oldest = i,
            n => self.nodes[n as usize].newer = i,
        }
        self.newest = i;
    }

    /// The bucket of `source`, marked as the most recently seen; a new
    /// source gets a full bucket, in the place of the least recently seen
    /// one when the shard is full.
    fn touch(&mut self, source: Source, full: Bucket) -> &mut Bucket {
        let i = match self.index.get(&source) {
            Some(&i) => {
                self.unlink(i);
                i
            }
            None if self.nodes.len() < self.capacity => {
                self.nodes.push(Node {
                    source,
                    bucket: full,
                    newer: NIL,
                    older: NIL,
                });
                let i = (self.nodes.len() - 1) as u32;
                self.index.insert(source, i);
                i
            }
            None => {
                let i = self.oldest;
                self.unlink(i);
                let node = &mut self.nodes[i as usize];
                self.index.remove(&node.source);
                node.source = source;
                node.bucket = full;
                self.index.insert(source, i);
                i
            }
        };
        self.push_newest(i);
        &mut self.nodes[i as usize].bucket
    }

    fn len(&self) -> usize {
        self.index.len()
    }
}

/// `rate_limit`: a token bucket per remote address, refilled at `rate` per
/// second with a burst of `rate`; blocks a new flow when empty, continues
/// otherwise. Reauthorization spends no token: the limit is on new flows.
pub struct RateLimit {
    rate: f64,
    hasher: ahash::RandomState,
    shards: Box<[Mutex<Lru>]>,
}

impl RateLimit {
    /// A limiter of `rate` new flows per second per remote address.
    pub fn new(rate: u32) -> RateLimit {
        RateLimit::with_capacity(rate, DEFAULT_TRACKED)
    }

    /// A limiter tracking at most `tracked` sources (rounded up to a
    /// multiple of the shard count).
    pub fn with_capacity(rate: u32, tracked: usize) -> RateLimit {
        let hasher = ahash::RandomState::new();
        let per_shard = tracked.div_ceil(SHARDS);
        RateLimit {
            rate: f64::from(rate),
            shards: (0..SHARDS)
                .map(|_| Mutex::new(Lru::new(per_shard, hasher.clone())))
                .collect(),
            hasher,
        }
    }

    fn shard(&self, source: &Source) -> std::sync::MutexGuard<'_, Lru> {
        let i = (self.hasher.hash_one(source) >> 32) as usize % SHARDS;
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a token for `remote` at `now`; false when the bucket is empty.
    pub fn take(&self, version: IpVersion, remote: RawAddr, now: Instant) -> bool {
        let rate = self.rate;
        let source = (version, remote);
        let mut shard = self.shard(&source);
        let bucket = shard.touch(
            source,
            Bucket {
                tokens: rate,
                refilled: now,
            },
        );
        let elapsed = now.saturating_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(rate);
        bucket.refilled = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Sources tracked now.
    pub fn tracked(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }
}

impl Callout for RateLimit {
    fn classify(
        &self,
        _filter: &Arc<str>,
        request: &ClassifyRequest,
        _notes: &mut Vec<PolicyNote>,
    ) -> CalloutResult {
        if request.flags.contains(ClassifyFlags::REAUTHORIZE)
            || self.take(request.version, request.remote_addr, request.now)
        {
            CalloutResult::Continue
        } else {
            CalloutResult::Block
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: u32) -> RawAddr {
        crate::packet::raw_addr(std::net::Ipv4Addr::from(0xc612_0000 | i).into()).1
    }

    #[test]
    fn rate_limit_allows_a_burst_then_refills_per_second() {
        let limit = RateLimit::new(3);
        let (a, b) = (addr(1), addr(2));
        let t0 = Instant::ZERO;
        assert!(limit.take(IpVersion::V4, a, t0));
        assert!(limit.take(IpVersion::V4, a, t0));
        assert!(limit.take(IpVersion::V4, a, t0));
        assert!(!limit.take(IpVersion::V4, a, t0));
        // Buckets are per remote address.
        assert!(limit.take(IpVersion::V4, b, t0));
        // A third of a second refills one token at 3/s.
        assert!(!limit.take(IpVersion::V4, a, Instant::from_millis(300)));
        assert!(limit.take(IpVersion::V4, a, Instant::from_millis(340)));
        assert!(!limit.take(IpVersion::V4, a, Instant::from_millis(340)));
        // The burst never exceeds the rate.
        let later = Instant::from_secs(100);
        for _ in 0..3 {
            assert!(limit.take(IpVersion::V4, a, later));
        }
        assert!(!limit.take(IpVersion::V4, a, later));
    }

    #[test]
    fn a_flood_of_sources_stays_bounded_and_forgets_the_least_recently_seen() {
        let limit = RateLimit::with_capacity(1, SHARDS * 4);
        let t0 = Instant::ZERO;
        // A busy source keeps being seen; a flood of others passes by.
        let busy = addr(1);
        assert!(limit.take(IpVersion::V4, busy, t0));
        for i in 0..200_000u32 {
            limit.take(IpVersion::V4, addr(1000 + i), t0);
            if i % 2 == 0 {
                // Seen again: never the least recently seen of its shard.
                assert!(!limit.take(IpVersion::V4, busy, t0), "source {i}");
            }
        }
        assert!(limit.tracked() <= SHARDS * 4);
        // The flood's first sources were forgotten: a full bucket again.
        assert!(limit.take(IpVersion::V4, addr(1000), t0));
    }

    #[test]
    fn reauthorization_spends_no_token() {
        let limit = RateLimit::new(1);
        let mut request = ClassifyRequest::for_flow(
            super::super::Layer::AuthRecvAccept,
            &crate::flow::FlowKey::new(IpVersion::V4, 17, addr(1), addr(2), 53, 5000),
            Instant::ZERO,
        );
        let name: Arc<str> = Arc::from("limit");
        let mut events = Vec::new();
        assert_eq!(
            limit.classify(&name, &request, &mut events),
            CalloutResult::Continue
        );
        request.flags = ClassifyFlags::REAUTHORIZE;
        for _ in 0..10 {
            assert_eq!(
                limit.classify(&name, &request, &mut events),
                CalloutResult::Continue
            );
        }
        request.flags = ClassifyFlags::empty();
        assert_eq!(
            limit.classify(&name, &request, &mut events),
            CalloutResult::Block
        );
    }
}
