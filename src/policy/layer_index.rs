//! The per-layer index of the compiled policy.
//!
//! Every filter is filed under one of its address or port conditions as
//! prefix blocks (ranges are split into blocks), so a lookup is a handful of
//! hash probes — one per prefix length in use — instead of a scan. Filters
//! without an indexable condition are always candidates.

use super::ClassifyRequest;
use super::filter::{AddrSet, Block, Conditions, addr_value};
use super::identity::IdentityCond;
use crate::packet::IpVersion;
use std::collections::HashMap;

// Index dimensions, in order of preference for filing a filter.
const DIM_REMOTE_ADDR: u8 = 0;
const DIM_LOCAL_ADDR: u8 = 1;
const DIM_REMOTE_PORT: u8 = 2;
const DIM_LOCAL_PORT: u8 = 3;
/// Value kinds: IPv4 address, IPv6 address, port.
const KIND_V4: u8 = 0;
const KIND_V6: u8 = 1;
const KIND_PORT: u8 = 2;

fn width(kind: u8) -> u8 {
    match kind {
        KIND_V4 => 32,
        KIND_V6 => 128,
        _ => 16,
    }
}

/// One layer, ready to classify.
#[derive(Default)]
pub(super) struct LayerIndex {
    /// Filter indices in evaluation order; a filter's rank is its position here.
    pub(super) order: Vec<usize>,
    /// The sublayer of each rank.
    pub(super) sublayer_of_rank: Vec<usize>,
    /// Prefix lengths in use per (dimension, kind).
    lengths: HashMap<(u8, u8), Vec<u8>>,
    /// (dimension, kind, prefix length, masked value) → ranks.
    blocks: HashMap<(u8, u8, u8, u128), Vec<u32>, ahash::RandomState>,
    /// Ranks of filters with no indexable condition.
    unindexed: Vec<u32>,
    /// The layer's definition as text: a change means a new generation.
    pub(super) canonical: String,
}

impl LayerIndex {
    fn file(&mut self, rank: u32, dim: u8, kind: u8, block: Block) {
        let lengths = self.lengths.entry((dim, kind)).or_default();
        if !lengths.contains(&block.len) {
            lengths.push(block.len);
        }
        self.blocks
            .entry((dim, kind, block.len, block.value))
            .or_default()
            .push(rank);
    }

    /// Files a filter under its most selective condition.
    pub(super) fn add(&mut self, rank: u32, conditions: &Conditions) {
        let addr = |set: &Option<AddrSet>| {
            set.as_ref()
                .filter(|s| !s.is_empty() && !s.v4.iter().chain(&s.v6).any(|b| b.len == 0))
                .cloned()
        };
        let identity = |c: &Option<IdentityCond>| addr(&c.as_ref().map(|c| c.addrs.all()));
        let remote =
            addr(&conditions.remote_address).or_else(|| identity(&conditions.remote_identity));
        let local =
            addr(&conditions.local_address).or_else(|| identity(&conditions.local_identity));
        for (dim, set) in [(DIM_REMOTE_ADDR, remote), (DIM_LOCAL_ADDR, local)] {
            if let Some(set) = set {
                for b in &set.v4 {
                    self.file(rank, dim, KIND_V4, *b);
                }
                for b in &set.v6 {
                    self.file(rank, dim, KIND_V6, *b);
                }
                return;
            }
        }
        for (dim, ports) in [
            (DIM_REMOTE_PORT, &conditions.remote_port),
            (DIM_LOCAL_PORT, &conditions.local_port),
        ] {
            if let Some(ports) = ports {
                let blocks = ports.blocks();
                if !blocks.is_empty() && blocks.iter().all(|b| b.len > 0) {
                    for b in blocks {
                        self.file(rank, dim, KIND_PORT, b);
                    }
                    return;
                }
            }
        }
        self.unindexed.push(rank);
    }

    /// The ranks of the filters that may match `r`, in evaluation order.
    pub(super) fn candidates(&self, r: &ClassifyRequest, out: &mut Vec<u32>) {
        out.clear();
        out.extend_from_slice(&self.unindexed);
        let kind = match r.version {
            IpVersion::V4 => KIND_V4,
            IpVersion::V6 => KIND_V6,
        };
        let mut probe = |dim: u8, kind: u8, value: u128| {
            if let Some(lengths) = self.lengths.get(&(dim, kind)) {
                for &len in lengths {
                    let key = (dim, kind, len, value & Block::mask(len, width(kind)));
                    if let Some(ranks) = self.blocks.get(&key) {
                        out.extend_from_slice(ranks);
                    }
                }
            }
        };
        probe(
            DIM_REMOTE_ADDR,
            kind,
            addr_value(r.version, &r.remote_addr).0,
        );
        probe(DIM_LOCAL_ADDR, kind, addr_value(r.version, &r.local_addr).0);
        if r.icmp.is_none() {
            probe(DIM_REMOTE_PORT, KIND_PORT, u128::from(r.remote_port));
            probe(DIM_LOCAL_PORT, KIND_PORT, u128::from(r.local_port));
        }
        out.sort_unstable();
        out.dedup();
    }
}
