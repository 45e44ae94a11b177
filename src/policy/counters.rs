//! Per-filter counters (SPEC §12, `stats --json` `filters`, pfctl -vsr).
//!
//! They are touched only while classifying a first packet (or
//! reauthorizing), never on the established-flow path, so relaxed atomics
//! shared by the workers cost less than per-worker arrays that every stats
//! request would have to gather. A reload hands the counters of a filter
//! that keeps its name to the new policy, so they survive reloads.

use std::sync::atomic::{AtomicU64, Ordering};

/// One filter's counters.
#[derive(Debug, Default)]
pub struct FilterCounters {
    matches: AtomicU64,
    decisions: AtomicU64,
    flows_created: AtomicU64,
}

/// A snapshot of one filter's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FilterCounts {
    /// Times its conditions matched a packet being classified.
    pub matches: u64,
    /// Times its action was the layer's final result.
    pub decisions: u64,
    /// Flows admitted with it as the deciding filter.
    pub flows_created: u64,
}

impl FilterCounters {
    #[inline]
    pub(super) fn matched(&self) {
        self.matches.fetch_add(1, Ordering::Relaxed);
    }

    #[inline]
    pub(super) fn decided(&self) {
        self.decisions.fetch_add(1, Ordering::Relaxed);
    }

    #[inline]
    pub(super) fn created(&self) {
        self.flows_created.fetch_add(1, Ordering::Relaxed);
    }

    /// The current values.
    pub fn get(&self) -> FilterCounts {
        FilterCounts {
            matches: self.matches.load(Ordering::Relaxed),
            decisions: self.decisions.load(Ordering::Relaxed),
            flows_created: self.flows_created.load(Ordering::Relaxed),
        }
    }
}
