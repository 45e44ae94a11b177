//! Per-worker counters: plain integers owned by one worker, summed on request.

use crate::policy::Layer;
use crate::reason::{CloseReason, DropReason};

/// Packets and bytes through one port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortCounters {
    /// Packets read from the port (dropped or not).
    pub rx_packets: u64,
    /// Bytes read from the port.
    pub rx_bytes: u64,
    /// Packets written to the port.
    pub tx_packets: u64,
    /// Bytes written to the port.
    pub tx_bytes: u64,
}

impl PortCounters {
    pub(crate) fn rx(&mut self, len: u64) {
        self.rx_packets += 1;
        self.rx_bytes += len;
    }

    pub(crate) fn tx(&mut self, len: u64) {
        self.tx_packets += 1;
        self.tx_bytes += len;
    }
}

/// One worker's counters (SPEC §7 `stats`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stats {
    /// Per port, by index.
    pub ports: Vec<PortCounters>,
    /// Drops by reason.
    pub discards: [u64; DropReason::COUNT],
    /// Flows created.
    pub flows_created: u64,
    /// Flows closed, by reason.
    pub flows_closed: [u64; CloseReason::COUNT],
    /// Permits per layer.
    pub layer_permit: [u64; Layer::COUNT],
    /// Blocks per layer.
    pub layer_block: [u64; Layer::COUNT],
    /// Pends per layer (a callout put a new flow in state pending).
    pub layer_pend: [u64; Layer::COUNT],
    /// Reauthorizations performed.
    pub reauthorizations: u64,
    /// Callout vetoes of hard permits.
    pub vetoes: u64,
    /// ICMP errors forwarded as related to a flow.
    pub related_icmp: u64,
    /// Answers sent to packets blocked by `reject = true` filters.
    pub rejects_sent: u64,
    /// Such answers not sent: over `reject_rate`.
    pub rejects_limited: u64,
    /// Discard events not queued because too many were waiting (the counters above still count them).
    pub events_dropped: u64,
}

impl Stats {
    /// Zeroed counters for `ports` ports.
    pub fn new(ports: usize) -> Stats {
        Stats {
            ports: vec![PortCounters::default(); ports],
            discards: [0; DropReason::COUNT],
            flows_created: 0,
            flows_closed: [0; CloseReason::COUNT],
            layer_permit: [0; Layer::COUNT],
            layer_block: [0; Layer::COUNT],
            layer_pend: [0; Layer::COUNT],
            reauthorizations: 0,
            vetoes: 0,
            related_icmp: 0,
            rejects_sent: 0,
            rejects_limited: 0,
            events_dropped: 0,
        }
    }

    /// Adds another worker's counters to these.
    pub fn merge(&mut self, other: &Stats) {
        if self.ports.len() < other.ports.len() {
            self.ports
                .resize(other.ports.len(), PortCounters::default());
        }
        for (mine, theirs) in self.ports.iter_mut().zip(&other.ports) {
            mine.rx_packets += theirs.rx_packets;
            mine.rx_bytes += theirs.rx_bytes;
            mine.tx_packets += theirs.tx_packets;
            mine.tx_bytes += theirs.tx_bytes;
        }
        fn add<const N: usize>(a: &mut [u64; N], b: &[u64; N]) {
            a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
        }
        add(&mut self.discards, &other.discards);
        add(&mut self.flows_closed, &other.flows_closed);
        add(&mut self.layer_permit, &other.layer_permit);
        add(&mut self.layer_block, &other.layer_block);
        add(&mut self.layer_pend, &other.layer_pend);
        self.flows_created += other.flows_created;
        self.reauthorizations += other.reauthorizations;
        self.vetoes += other.vetoes;
        self.related_icmp += other.related_icmp;
        self.rejects_sent += other.rejects_sent;
        self.rejects_limited += other.rejects_limited;
        self.events_dropped += other.events_dropped;
    }

    /// Total drops.
    pub fn discards_total(&self) -> u64 {
        self.discards.iter().sum()
    }

    /// Drops of one reason.
    pub fn discarded(&self, reason: DropReason) -> u64 {
        self.discards[reason.index()]
    }

    /// Closures of one reason.
    pub fn closed(&self, reason: CloseReason) -> u64 {
        self.flows_closed[reason.index()]
    }
}
