//! Connection tracking: flow keys, the sharded flow table, TCP tracking,
//! lifetimes with pf's adaptive shrinking, and the fragment table.

pub mod fragment;
pub mod key;
pub mod table;
pub mod tcp;
pub mod wildcard;

pub use key::{Direction, FlowKey, IcmpIdentity, Zone};
pub use table::{FlowEntry, FlowTable, Shard, SlotId};
pub use tcp::{TcpState, TcpTracker};

use std::time::Duration;

/// The lifetime settings of `[flows]` (SPEC §2, §6).
#[derive(Clone, Debug, PartialEq)]
pub struct FlowConfig {
    /// Hard limit on the number of flows in the whole gateway.
    pub max_flows: usize,
    /// Idle timeout of UDP flows.
    pub udp_idle: Duration,
    /// Idle timeout of ICMP flows.
    pub icmp_idle: Duration,
    /// Idle timeout of flows of other protocols.
    pub other_idle: Duration,
    /// Lifetime of the state an outbound multicast/broadcast packet creates.
    pub mcast_bcast_lifetime: Duration,
    /// syn_sent and syn_received.
    pub tcp_opening: Duration,
    /// established.
    pub tcp_established: Duration,
    /// fin_wait and closing.
    pub tcp_closing: Duration,
    /// time_wait.
    pub tcp_time_wait: Duration,
    /// closed (after an in-window RST).
    pub tcp_closed: Duration,
    /// Flow count above which idle timeouts start to shrink.
    pub adaptive_start: usize,
    /// Flow count at which idle timeouts reach zero.
    pub adaptive_end: usize,
    /// Enforce TCP sequence windows.
    pub tcp_window_tracking: bool,
    /// Create flows from mid-stream TCP segments.
    pub tcp_loose_pickup: bool,
    /// Most fragmented datagrams remembered at once.
    pub max_fragments: usize,
    /// How long a first fragment's verdict is remembered for its later fragments.
    pub fragment_timeout: Duration,
}

/// The longest timeout a flow can have: last-seen times are 32-bit
/// millisecond counters, so an idle period must stay well inside 2^32 ms.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 86_400);

impl Default for FlowConfig {
    fn default() -> Self {
        FlowConfig::with_max_flows(1_000_000)
    }
}

impl FlowConfig {
    /// Defaults of SPEC §6 for a table of `max_flows` (adaptive bounds at 60 % and 120 %).
    pub fn with_max_flows(max_flows: usize) -> Self {
        FlowConfig {
            max_flows,
            udp_idle: Duration::from_secs(60),
            icmp_idle: Duration::from_secs(60),
            other_idle: Duration::from_secs(60),
            mcast_bcast_lifetime: Duration::from_secs(4),
            tcp_opening: Duration::from_secs(30),
            tcp_established: Duration::from_secs(24 * 3600),
            tcp_closing: Duration::from_secs(120),
            tcp_time_wait: Duration::from_secs(30),
            tcp_closed: Duration::from_secs(10),
            adaptive_start: max_flows * 6 / 10,
            adaptive_end: max_flows * 12 / 10,
            tcp_window_tracking: true,
            tcp_loose_pickup: false,
            max_fragments: 8192,
            fragment_timeout: Duration::from_secs(10),
        }
    }

    /// pf's adaptive factor for `flows` flows: 1.0 up to `adaptive_start`,
    /// falling linearly to 0.0 at `adaptive_end`.
    pub fn adaptive_factor(&self, flows: usize) -> f64 {
        if flows <= self.adaptive_start {
            return 1.0;
        }
        if flows >= self.adaptive_end || self.adaptive_end <= self.adaptive_start {
            return 0.0;
        }
        (self.adaptive_end - flows) as f64 / (self.adaptive_end - self.adaptive_start) as f64
    }
}

/// What a flow is for, beyond its protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FlowClass {
    /// An ordinary flow.
    Unicast,
    /// State created by an outbound multicast or broadcast packet: admits
    /// inbound traffic to its local port from anyone, refreshed only outbound.
    McastBcastState,
}

/// The state shown for a flow: a TCP state, or `active` for other protocols.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FlowState {
    /// A TCP flow's state.
    Tcp(TcpState),
    /// Any flow that is not TCP.
    Active,
}

impl FlowState {
    /// The name used in `flows` output.
    pub fn as_str(self) -> &'static str {
        match self {
            FlowState::Tcp(s) => s.as_str(),
            FlowState::Active => "active",
        }
    }
}
