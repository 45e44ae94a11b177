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
    /// `range`. Returns the port and whether the mapping is new (a port
    /// was assigned).
    pub fn acquire(
        &mut self,
        key: MapKey,
        range: (u16, u16),
        prefer: Option<u16>,
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
            match pool.alloc(lo, hi) {
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
            a.acquire(key(1, 5000), (1024, 65535), Some(5000)),
            Ok((5000, true))
        );
        // Another flow of the same inside endpoint: same mapping.
        assert_eq!(
            a.acquire(key(1, 5000), (1024, 65535), Some(5000)),
            Ok((5000, false))
        );
        // Another host with the same port: a different port.
        let (p, new) = a.acquire(key(2, 5000), (1024, 65535), Some(5000)).unwrap();
        assert!(new && p != 5000 && p >= 1024);
        assert_eq!(a.in_use(), 2);
        assert_eq!(a.release(&key(1, 5000)), None, "one flow still uses it");
        assert_eq!(a.release(&key(1, 5000)), Some(5000));
        assert_eq!(
            a.acquire(key(3, 5000), (1024, 65535), Some(5000)),
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
            a.acquire(key(1, 5000), (2000, 2001), None),
            Ok((2000, false))
        );
        assert_eq!(a.acquire(key(3, 1), (2000, 2001), None), Ok((2001, true)));
        assert_eq!(a.acquire(key(4, 1), (2000, 2001), None), Err(Exhausted));
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
            let (p, _) = a.acquire(key(host, 7), (2000, 2003), None).unwrap();
            assert!((2000..=2003).contains(&p));
        }
        assert_eq!(a.acquire(key(9, 7), (2000, 2003), None), Err(Exhausted));
        let freed = a.release(&key(2, 7)).unwrap();
        assert_eq!(a.acquire(key(9, 7), (2000, 2003), None), Ok((freed, true)));
    }

    #[test]
    fn every_port_of_the_range_is_handed_out_once() {
        let mut a = Allocator::default();
        let mut seen = std::collections::HashSet::new();
        for i in 0..64_512u32 {
            let k = key((i % 250) as u8, (i / 250) as u16);
            let (p, _) = a.acquire(k, (1024, 65535), None).unwrap();
            assert!(seen.insert(p), "port {p} handed out twice");
        }
        assert_eq!(a.acquire(key(251, 1), (1024, 65535), None), Err(Exhausted));
        assert_eq!(a.in_use(), 64_512);
    }

    #[test]
    fn churn_at_60000_of_64000_stays_correct() {
        let mut a = Allocator::default();
        let mut live = std::collections::VecDeque::new();
        for i in 0..60_000u32 {
            let k = key((i % 250) as u8, (i / 250) as u16);
            a.acquire(k, (1024, 65535), None).unwrap();
            live.push_back(k);
        }
        // Release the oldest, take a new one: the free ports are scattered.
        for i in 0..100_000u32 {
            let old = live.pop_front().unwrap();
            assert!(a.release(&old).is_some());
            let k = key((i % 250) as u8, 1000 + (i / 250) as u16);
            a.acquire(k, (1024, 65535), None).unwrap();
            live.push_back(k);
        }
        assert_eq!(a.in_use(), 60_000);
    }
}
