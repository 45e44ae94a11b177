//! Port (and ICMP query id) allocation with endpoint-independent mapping
//! (RFC 4787): while any flow uses a mapping, the same inside address:port
//! gets the same translated address:port for every remote.
//!
//! Each (translated address, protocol) has a pool: a 65 536-bit bitmap plus
//! a summary of its full words, searched next-fit from a cursor. A search
//! skips full words 64 at a time through the summary, so it reads at most
//! 16 summary words and a few bitmap words: O(1) however many of the ports
//! are taken (the benchmark and a test fill 60 000 of 64 000). A pool's
//! bitmap is given back when its last port is released; mappings live only
//! while a flow uses them, so memory is bounded by the flow table.

use crate::packet::RawAddr;
use std::collections::HashMap;

const WORDS: usize = 65_536 / 64;

/// One (translated address, protocol)'s ports.
struct Pool {
    bits: Box<[u64; WORDS]>,
    /// Bit `w` set: bitmap word `w` is full.
    full: [u64; WORDS / 64],
    used: u32,
    cursor: u16,
}

impl Pool {
    fn new() -> Pool {
        Pool {
            bits: Box::new([0; WORDS]),
            full: [0; WORDS / 64],
            used: 0,
            cursor: 0,
        }
    }

    fn is_free(&self, port: u16) -> bool {
        self.bits[usize::from(port) / 64] & (1 << (port % 64)) == 0
    }

    fn take(&mut self, port: u16) {
        let w = usize::from(port) / 64;
        self.bits[w] |= 1 << (port % 64);
        if self.bits[w] == u64::MAX {
            self.full[w / 64] |= 1 << (w % 64);
        }
        self.used += 1;
        self.cursor = port.wrapping_add(1);
    }

    fn free(&mut self, port: u16) {
        let w = usize::from(port) / 64;
        if self.bits[w] & (1 << (port % 64)) != 0 {
            self.bits[w] &= !(1 << (port % 64));
            self.full[w / 64] &= !(1 << (w % 64));
            self.used -= 1;
        }
    }

    /// The first non-full word at or after `w` and at most `last`.
    fn next_open_word(&self, mut w: usize, last: usize) -> Option<usize> {
        while w <= last {
            let open = !self.full[w / 64] >> (w % 64);
            if open != 0 {
                let found = w + open.trailing_zeros() as usize;
                return (found <= last).then_some(found);
            }
            w = (w / 64 + 1) * 64;
        }
        None
    }

    /// The first free port in `lo..=hi`.
    fn find(&self, lo: u16, hi: u16) -> Option<u16> {
        let (lo, hi) = (usize::from(lo), usize::from(hi));
        let mut w = lo / 64;
        while let Some(open) = self.next_open_word(w, hi / 64) {
            let mut word = self.bits[open];
            if open == lo / 64 {
                word |= (1u64 << (lo % 64)) - 1;
            }
            if open == hi / 64 && hi % 64 != 63 {
                word |= !((1u64 << (hi % 64 + 1)) - 1);
            }
            if word != u64::MAX {
                return Some((open * 64 + word.trailing_ones() as usize) as u16);
            }
            w = open + 1;
        }
        None
    }

    /// A free port in `lo..=hi` that fits `affinity`, next-fit from the
    /// cursor among the candidates, else any free one.
    fn alloc_near(&mut self, lo: u16, hi: u16, affinity: &Affinity<'_>) -> Option<u16> {
        let (lo32, hi32) = (u32::from(lo), u32::from(hi));
        let stride = u32::from(affinity.stride.max(1));
        let residue = u32::from(affinity.residue) % stride;
        // The first port at or after `from` congruent to the residue.
        let first = |from: u32| from + (residue + stride - from % stride) % stride;
        let mut port = first(u32::from(self.cursor.clamp(lo, hi)));
        let mut wrapped = false;
        for _ in 0..AFFINITY_TRIES {
            if port > hi32 {
                if wrapped {
                    break;
                }
                wrapped = true;
                port = first(lo32);
                if port > hi32 {
                    break;
                }
            }
            let candidate = port as u16;
            if self.is_free(candidate) && (affinity.fits)(candidate) {
                self.take(candidate);
                return Some(candidate);
            }
            port += stride;
        }
        self.alloc(lo, hi)
    }

    /// A free port in `lo..=hi`, next-fit from the cursor.
    fn alloc(&mut self, lo: u16, hi: u16) -> Option<u16> {
        let start = self.cursor.clamp(lo, hi);
        let port = self
            .find(start, hi)
            .or_else(|| (start > lo).then(|| self.find(lo, start - 1)).flatten())?;
        self.take(port);
        Some(port)
    }
}

/// Where a new mapping's port had better fall: the flow table puts the
/// translated tuple in the flow's own shard only for some ports
/// ([`crate::flow::hash`]). Ports congruent to `residue` modulo `stride`
/// are tried first, next-fit, and the first free one that `fits` is
/// taken; after [`AFFINITY_TRIES`] candidates any free port will do.
pub struct Affinity<'a> {
    /// Ports that fit come (almost only) every `stride` ports.
    pub stride: u16,
    /// ... from this one.
    pub residue: u16,
    /// Whether a port fits.
    pub fits: &'a dyn Fn(u16) -> bool,
}

/// Candidates an [`Affinity`] looks at: with 60 000 of 64 000 ports taken
/// one in 16 is free, so a fitting free port is almost always among them,
/// and the search stays bounded whatever the pool's state.
pub const AFFINITY_TRIES: usize = 64;

/// The identity of a mapping: protocol, inside address and port (or ICMP
/// id), translated address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MapKey {
    /// IP protocol.
    pub protocol: u8,
    /// The inside host.
    pub inside: RawAddr,
    /// Its port or ICMP query id.
    pub inside_port: u16,
    /// The address it is translated to.
    pub translated: RawAddr,
}

struct Mapping {
    port: u16,
    flows: u32,
}

/// No port of the range is free.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exhausted;

/// Every pool and mapping.
#[derive(Default)]
pub struct Allocator {
    pools: HashMap<(RawAddr, u8), Pool, ahash::RandomState>,
    mappings: HashMap<MapKey, Mapping, ahash::RandomState>,
    in_use: usize,
}

impl Allocator {
    /// The translated port of `key` for one more flow: the mapping's port if
    /// it exists, else `prefer` when it is free, else any free port of
    /// `range` (one that fits `affinity` if there is one). Returns the port
    /// and whether the mapping is new (a port was assigned).
    pub fn acquire(
        &mut self,
        key: MapKey,
        range: (u16, u16),
        prefer: Option<u16>,
        affinity: Option<&Affinity<'_>>,
    ) -> Result<(u16, bool), Exhausted> {
        if let Some(m) = self.mappings.get_mut(&key) {
            m.flows += 1;
            return Ok((m.port, false));
        }
        let pool = self
            .pools
            .entry((key.translated, key.protocol))
            .or_insert_with(Pool::new);
        let (lo, hi) = range;
        let port = if let Some(prefer) = prefer.filter(|p| pool.is_free(*p)) {
            pool.take(prefer);
            prefer
        } else {
            let port = match affinity {
                Some(affinity) => pool.alloc_near(lo, hi, affinity),
                None => pool.alloc(lo, hi),
            };
            match port {
                Some(port) => port,
                None => {
                    if pool.used == 0 {
                        self.pools.remove(&(key.translated, key.protocol));
                    }
                    return Err(Exhausted);
                }
            }
        };
        self.mappings.insert(key, Mapping { port, flows: 1 });
        self.in_use += 1;
        Ok((port, true))
    }

    /// Takes `port` for `key` again for one more flow carried over from
    /// another process (SPEC §13): a mapping already taken again is shared
    /// (its flow count goes up). Returns whether the mapping is new; an
    /// error if `key` has another port or another mapping holds `port`.
    pub fn reserve(&mut self, key: MapKey, port: u16) -> Result<bool, &'static str> {
        if let Some(m) = self.mappings.get_mut(&key) {
            if m.port != port {
                return Err("one mapping with two ports");
            }
            m.flows += 1;
            return Ok(false);
        }
        let pool = self
            .pools
            .entry((key.translated, key.protocol))
            .or_insert_with(Pool::new);
        if !pool.is_free(port) {
            return Err("a port held by two mappings");
        }
        pool.take(port);
        self.mappings.insert(key, Mapping { port, flows: 1 });
        self.in_use += 1;
        Ok(true)
    }

    /// One flow of `key` is gone; returns the port if that was the last one
    /// (the port is free again).
    pub fn release(&mut self, key: &MapKey) -> Option<u16> {
        let m = self.mappings.get_mut(key)?;
        m.flows -= 1;
        if m.flows > 0 {
            return None;
        }
        let port = m.port;
        self.mappings.remove(key);
        self.in_use -= 1;
        let pool_key = (key.translated, key.protocol);
        if let Some(pool) = self.pools.get_mut(&pool_key) {
            pool.free(port);
            if pool.used == 0 {
                self.pools.remove(&pool_key);
            }
        }
        Some(port)
    }

    /// Ports held by mappings, all addresses together.
    pub fn in_use(&self) -> usize {
        self.in_use
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(host: u8, port: u16) -> MapKey {
        let mut inside = [0u8; 16];
        inside[..4].copy_from_slice(&[198, 18, 1, host]);
        let mut translated = [0u8; 16];
        translated[..4].copy_from_slice(&[198, 18, 9, 1]);
        MapKey {
            protocol: 17,
            inside,
            inside_port: port,
            translated,
        }
    }

    #[test]
    fn keeps_the_original_port_when_free_and_maps_endpoint_independently() {
        let mut a = Allocator::default();
        assert_eq!(
            a.acquire(key(1, 5000), (1024, 65535), Some(5000), None),
            Ok((5000, true))
        );
        // Another flow of the same inside endpoint: same mapping.
        assert_eq!(
            a.acquire(key(1, 5000), (1024, 65535), Some(5000), None),
            Ok((5000, false))
        );
        // Another host with the same port: a different port.
        let (p, new) = a
            .acquire(key(2, 5000), (1024, 65535), Some(5000), None)
            .unwrap();
        assert!(new && p != 5000 && p >= 1024);
        assert_eq!(a.in_use(), 2);
        assert_eq!(a.release(&key(1, 5000)), None, "one flow still uses it");
        assert_eq!(a.release(&key(1, 5000)), Some(5000));
        assert_eq!(
            a.acquire(key(3, 5000), (1024, 65535), Some(5000), None),
            Ok((5000, true))
        );
    }

    #[test]
    fn a_reserved_mapping_is_shared_never_handed_out_again_and_freed_with_its_last_flow() {
        let mut a = Allocator::default();
        assert_eq!(a.reserve(key(1, 5000), 2000), Ok(true));
        assert_eq!(a.reserve(key(1, 5000), 2000), Ok(false), "shared");
        assert!(a.reserve(key(1, 5000), 2001).is_err());
        assert!(a.reserve(key(2, 5000), 2000).is_err(), "taken");
        assert_eq!(
            a.acquire(key(1, 5000), (2000, 2001), None, None),
            Ok((2000, false))
        );
        assert_eq!(
            a.acquire(key(3, 1), (2000, 2001), None, None),
            Ok((2001, true))
        );
        assert_eq!(
            a.acquire(key(4, 1), (2000, 2001), None, None),
            Err(Exhausted)
        );
        assert_eq!(a.release(&key(1, 5000)), None);
        assert_eq!(a.release(&key(1, 5000)), None);
        assert_eq!(
            a.release(&key(1, 5000)),
            Some(2000),
            "the last of three flows"
        );
        assert_eq!(a.in_use(), 1);
    }

    #[test]
    fn a_small_range_exhausts_and_a_release_frees_its_port() {
        let mut a = Allocator::default();
        for host in 0..4 {
            let (p, _) = a.acquire(key(host, 7), (2000, 2003), None, None).unwrap();
            assert!((2000..=2003).contains(&p));
        }
        assert_eq!(
            a.acquire(key(9, 7), (2000, 2003), None, None),
            Err(Exhausted)
        );
        let freed = a.release(&key(2, 7)).unwrap();
        assert_eq!(
            a.acquire(key(9, 7), (2000, 2003), None, None),
            Ok((freed, true))
        );
    }

    #[test]
    fn every_port_of_the_range_is_handed_out_once() {
        let mut a = Allocator::default();
        let mut seen = std::collections::HashSet::new();
        for i in 0..64_512u32 {
            let k = key((i % 250) as u8, (i / 250) as u16);
            let (p, _) = a.acquire(k, (1024, 65535), None, None).unwrap();
            assert!(seen.insert(p), "port {p} handed out twice");
        }
        assert_eq!(
            a.acquire(key(251, 1), (1024, 65535), None, None),
            Err(Exhausted)
        );
        assert_eq!(a.in_use(), 64_512);
    }

    #[test]
    fn churn_at_60000_of_64000_stays_correct() {
        let mut a = Allocator::default();
        let mut live = std::collections::VecDeque::new();
        for i in 0..60_000u32 {
            let k = key((i % 250) as u8, (i / 250) as u16);
            a.acquire(k, (1024, 65535), None, None).unwrap();
            live.push_back(k);
        }
        // Release the oldest, take a new one: the free ports are scattered.
        for i in 0..100_000u32 {
            let old = live.pop_front().unwrap();
            assert!(a.release(&old).is_some());
            let k = key((i % 250) as u8, 1000 + (i / 250) as u16);
            a.acquire(k, (1024, 65535), None, None).unwrap();
            live.push_back(k);
        }
        assert_eq!(a.in_use(), 60_000);
    }

    #[test]
    fn an_affinity_gets_a_fitting_port_while_one_is_free_then_any_port() {
        let mut a = Allocator::default();
        let fits = |p: u16| p % 8 == 3;
        let affinity = Affinity {
            stride: 8,
            residue: 3,
            fits: &fits,
        };
        // 2000..=2063 holds 8 fitting ports.
        for host in 0..8 {
            let (p, _) = a
                .acquire(key(host, 7), (2000, 2063), None, Some(&affinity))
                .unwrap();
            assert!(fits(p), "port {p}");
        }
        let (p, _) = a
            .acquire(key(8, 7), (2000, 2063), None, Some(&affinity))
            .unwrap();
        assert!(!fits(p), "none fits any more: any free port");
        // No candidate fits: the search gives up and takes any port.
        let never = |_: u16| false;
        let none_fit = Affinity {
            stride: 1000,
            residue: 0,
            fits: &never,
        };
        assert!(
            a.acquire(key(9, 7), (2000, 2063), None, Some(&none_fit))
                .is_ok()
        );
        assert_eq!(a.in_use(), 10);
    }

    #[test]
    fn with_60000_of_64000_ports_taken_an_affinity_still_finds_fitting_ports() {
        let mut a = Allocator::default();
        let fits = |p: u16| p % 64 == 5;
        let affinity = Affinity {
            stride: 64,
            residue: 5,
            fits: &fits,
        };
        let mut live = Vec::new();
        for i in 0..64_512u32 {
            let k = key((i % 250) as u8, (i / 250) as u16);
            a.acquire(k, (1024, 65535), None, None).unwrap();
            live.push(k);
        }
        // Free 4 512 ports scattered over the range (a fixed xorshift).
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut freed = 0;
        while freed < 4_512 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = (x >> 11) as usize % live.len();
            if a.release(&live.swap_remove(i)).is_some() {
                freed += 1;
            }
        }
        assert_eq!(a.in_use(), 60_000);
        let mut fitting = 0;
        let mut seen = std::collections::HashSet::new();
        for i in 0..40u32 {
            let (p, new) = a
                .acquire(key(251, i as u16), (1024, 65535), None, Some(&affinity))
                .unwrap();
            assert!(new && seen.insert(p));
            fitting += usize::from(fits(p));
        }
        // About 70 free ports fit, one in 16 of the candidates is free.
        assert!(fitting >= 34, "{fitting} of 40 fit");
        assert_eq!(a.in_use(), 60_040);
    }
}
