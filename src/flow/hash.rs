//! The flow table's keyed hash.
//!
//! hashbrown takes a hash's low bits (the bucket) and its top seven (the
//! tag); bits 24..56 choose the shard ([`super::table::FlowTable::shard_index`]).
//! Those 32 shard bits are not a hash of the whole key: they are a keyed
//! hash of the key's remote side (remote address and port, protocol,
//! family) plus the local port times a step of about 2^32 / shards. So a
//! key and its masqueraded form, whose local address (and maybe port) is
//! rewritten while the remote side stays, fall in one shard when the port
//! is kept, and the port allocator can pick another port that keeps the
//! shard ([`FlowHasher::shard_bits`]): a masqueraded flow and its translated
//! tuple then live under one lock, and a packet from either side takes
//! one lock and one probe. The other 32 bits hash the whole key, so keys
//! differing anywhere still spread over buckets and tags; consecutive
//! ports of one remote side spread evenly over the shards.

use super::key::FlowKey;
use std::hash::{BuildHasher, Hasher};

/// Bits 24..56: the shard bits.
const SHARD_BITS: u64 = 0xFFFF_FFFF << 24;

/// The 32 bits of a flow hash a shard's indexes keep beside each slot: the
/// low 24 and the top 8, none of them shard bits. With them an index grows
/// without reading each key back from the slab to hash it again;
/// [`index_hash`] rebuilds what the index needs.
#[inline]
pub fn index_bits(hash: u64) -> u32 {
    (hash as u32 & 0xFF_FFFF) | ((hash >> 56) as u32) << 24
}

/// The hash a shard's index files a key under: its flow hash without the
/// shard bits (every key of a shard has nearly the same ones), from the
/// flow hash or from its [`index_bits`]. hashbrown takes the bucket from
/// the low bits and the tag from the top seven, so both still come from
/// the key's own bits, independent of each other up to 2^24 buckets (a
/// shard holds at most a few million flows, [`super::table::FlowTable::default_shards`]).
#[inline]
pub fn index_hash(hash: u64) -> u64 {
    hash & !SHARD_BITS
}

/// [`index_hash`] from the [`index_bits`] an index keeps.
#[inline]
pub fn index_hash_of_bits(bits: u32) -> u64 {
    u64::from(bits & 0xFF_FFFF) | u64::from(bits >> 24) << 56
}

/// The keyed hash of flow keys shared by the table and the alias index.
#[derive(Clone)]
pub struct FlowHasher {
    state: ahash::RandomState,
    /// What one more local port adds to the shard bits.
    step: u32,
}

impl FlowHasher {
    /// A hasher with random keys for a table of `per_group` shards per group.
    pub fn new(per_group: usize) -> FlowHasher {
        Self::with_state(per_group, ahash::RandomState::new())
    }

    fn with_state(per_group: usize, state: ahash::RandomState) -> FlowHasher {
        // ceil(2^32 / n): adding n ports moves the shard bits by a whole
        // turn plus less than n, so ports congruent modulo n almost always
        // share a shard (the allocator checks, [`FlowHasher::shard_bits`]).
        // Not always: every port of a remote side sits at nearly the same
        // place within its shard, so for the few keys whose place is just
        // below a shard's end, ports far apart cross it.
        let per_group = per_group.max(1) as u64;
        let step = (1u64 << 32).div_ceil(per_group);
        FlowHasher {
            state,
            step: u32::try_from(step).unwrap_or(0x9E37_79B9),
        }
    }

    /// The hash of `key`.
    #[inline]
    pub fn hash(&self, key: &FlowKey) -> u64 {
        let mut state = self.state.build_hasher();
        key.hash_remote_side(&mut state);
        let side = state.finish();
        key.hash_local_side(&mut state);
        let whole = state.finish();
        (whole & !SHARD_BITS) | u64::from(self.shard_bits(side, key.local_port)) << 24
    }

    /// The keyed hash of `key`'s remote side, from which
    /// [`FlowHasher::shard_bits`] derives the shard bits of every key with
    /// that remote side.
    pub fn remote_side(&self, key: &FlowKey) -> u64 {
        let mut state = self.state.build_hasher();
        key.hash_remote_side(&mut state);
        state.finish()
    }

    /// The shard bits of a key with remote side `side` and `local_port`.
    #[inline]
    pub fn shard_bits(&self, side: u64, local_port: u16) -> u32 {
        ((side >> 24) as u32).wrapping_add(u32::from(local_port).wrapping_mul(self.step))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::IpVersion;

    fn key(local: [u8; 4], local_port: u16, remote_port: u16) -> FlowKey {
        let mut l = [0u8; 16];
        l[..4].copy_from_slice(&local);
        let mut r = [0u8; 16];
        r[..4].copy_from_slice(&[198, 19, 0, 1]);
        FlowKey::new(IpVersion::V4, 6, l, r, local_port, remote_port)
    }

    fn within(hash: u64, n: usize) -> u64 {
        ((hash >> 24) as u32 as u64 * n as u64) >> 32
    }

    #[test]
    fn a_key_and_its_masqueraded_form_with_the_same_port_share_the_shard_bits() {
        let h = FlowHasher::new(37);
        let inside = key([198, 18, 0, 2], 40000, 443);
        let outside = key([198, 18, 9, 1], 40000, 443);
        let (a, b) = (h.hash(&inside), h.hash(&outside));
        assert_eq!(a & SHARD_BITS, b & SHARD_BITS);
        assert_ne!(
            a & !SHARD_BITS,
            b & !SHARD_BITS,
            "the rest hashes the whole key"
        );
        assert_eq!(
            (a >> 24) as u32,
            h.shard_bits(h.remote_side(&outside), 40000)
        );
    }

    #[test]
    fn ports_congruent_modulo_the_shard_count_almost_always_share_a_shard() {
        // Over many keys (fixed ones: for a rare key, one whose ports sit
        // just below a shard's end, most pairs cross it, and a test on one
        // random key would fail about once in a hundred runs).
        for n in [1usize, 2, 7, 37, 64, 73, 1000] {
            let mut same = 0;
            let mut total = 0;
            for seed in 0..64u64 {
                let state = ahash::RandomState::with_seeds(seed, !seed, seed << 7, 0x5EED);
                let h = FlowHasher::with_state(n, state);
                for p in (1024u16..65535).step_by(61) {
                    let q = p - (p - 1024) / n as u16 * n as u16;
                    total += 1;
                    same += usize::from(
                        within(h.hash(&key([198, 18, 0, 2], p, 80)), n)
                            == within(h.hash(&key([198, 18, 0, 2], q, 80)), n),
                    );
                }
            }
            assert!(same * 100 >= total * 98, "n={n}: {same} of {total}");
        }
    }

    #[test]
    fn the_index_bits_rebuild_the_index_hash_without_the_shard_bits() {
        let h = FlowHasher::new(64);
        for p in 0..4096u16 {
            let hash = h.hash(&key([198, 18, 0, 2], p, 80));
            let index = index_hash(hash);
            assert_eq!(index_hash_of_bits(index_bits(hash)), index);
            assert_eq!(index | SHARD_BITS, hash | SHARD_BITS);
            assert_eq!(index_hash(hash ^ SHARD_BITS), index);
        }
    }

    #[test]
    fn consecutive_ports_spread_evenly_over_the_shards() {
        let n = 64;
        let h = FlowHasher::new(n);
        let mut count = vec![0usize; n];
        for p in 0..6400u16 {
            count[within(h.hash(&key([198, 18, 0, 2], p, 80)), n) as usize] += 1;
        }
        assert!(count.iter().all(|&c| (99..=101).contains(&c)), "{count:?}");
    }
}
