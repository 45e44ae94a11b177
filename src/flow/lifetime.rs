//! Flow lifetimes, in one place: the `[flows]` settings and their defaults
//! (SPEC §2, §6), pf's adaptive factor, and which timeout applies to a flow.
//! A new timeout is a field here (with its default and its rule below) and
//! its key in the configuration schema.

use super::entry::FlowEntry;
use super::{FlowClass, FlowState, TcpState};
use crate::reason::CloseReason;
use crate::time::Instant;
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
    /// Most packets held for one pending flow (SPEC §10).
    pub pend_queue_packets: usize,
    /// Most bytes (IP packet lengths) held for one pending flow.
    pub pend_queue_bytes: usize,
    /// Most pending flows in the gateway.
    pub pend_max_flows: usize,
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
            pend_queue_packets: 16,
            pend_queue_bytes: 65_536,
            pend_max_flows: 1024,
        }
    }

    /// Every setting under its `[flows]` key, as `tunwall check` shows it.
    /// A new setting is listed here, beside its field and default.
    pub fn settings(&self) -> Vec<(&'static str, String)> {
        let d = |d: Duration| humantime::format_duration(d).to_string();
        vec![
            ("max_flows", self.max_flows.to_string()),
            ("adaptive_start", self.adaptive_start.to_string()),
            ("adaptive_end", self.adaptive_end.to_string()),
            ("udp_idle", d(self.udp_idle)),
            ("icmp_idle", d(self.icmp_idle)),
            ("other_idle", d(self.other_idle)),
            ("mcast_bcast_lifetime", d(self.mcast_bcast_lifetime)),
            ("tcp_opening", d(self.tcp_opening)),
            ("tcp_established", d(self.tcp_established)),
            ("tcp_closing", d(self.tcp_closing)),
            ("tcp_time_wait", d(self.tcp_time_wait)),
            ("tcp_closed", d(self.tcp_closed)),
            ("tcp_window_tracking", self.tcp_window_tracking.to_string()),
            ("tcp_loose_pickup", self.tcp_loose_pickup.to_string()),
            ("max_fragments", self.max_fragments.to_string()),
            ("fragment_timeout", d(self.fragment_timeout)),
            ("pend_queue_packets", self.pend_queue_packets.to_string()),
            ("pend_queue_bytes", self.pend_queue_bytes.to_string()),
            ("pend_max_flows", self.pend_max_flows.to_string()),
        ]
    }

    /// pf's adaptive factor for `flows` flows: 1.0 up to `adaptive_start`,
    /// falling linearly to 0.0 at `adaptive_end`.
    #[inline]
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

impl FlowEntry {
    /// The idle timeout before adaptive scaling, and whether scaling applies.
    #[inline]
    fn base_timeout(&self, config: &FlowConfig) -> (Duration, bool) {
        if self.class() == FlowClass::McastBcastState {
            return (self.lifetime().unwrap_or(config.mcast_bcast_lifetime), true);
        }
        match self.tracked_state() {
            FlowState::Tcp(state) => match state {
                TcpState::SynSent | TcpState::SynReceived => (config.tcp_opening, true),
                TcpState::Established => (config.tcp_established, false),
                TcpState::FinWait | TcpState::Closing => (config.tcp_closing, true),
                TcpState::TimeWait => (config.tcp_time_wait, true),
                TcpState::Closed => (config.tcp_closed, true),
            },
            FlowState::Active | FlowState::Pending => {
                let default = if self.key.is_icmp() {
                    config.icmp_idle
                } else if self.key.protocol == crate::packet::proto::UDP {
                    config.udp_idle
                } else {
                    config.other_idle
                };
                (self.lifetime().unwrap_or(default), true)
            }
        }
    }

    /// The idle timeout in force at adaptive `factor`.
    #[inline]
    pub fn timeout(&self, config: &FlowConfig, factor: f64) -> Duration {
        let (base, scaled) = self.base_timeout(config);
        if scaled && factor < 1.0 {
            base.mul_f64(factor.max(0.0))
        } else {
            base
        }
    }

    /// How long the flow has been idle at `now`.
    #[inline]
    pub fn idle(&self, now: Instant) -> Duration {
        // Workers read the clock once per batch: another worker may have
        // touched the flow after this one's `now` (common for translated
        // flows, whose two sides the kernel steers to different queues).
        // That is no idle time, not 49 days of it.
        let idle = (now.as_millis() as u32).wrapping_sub(self.last_seen) as i32;
        Duration::from_millis(idle.max(0) as u64)
    }

    /// Whether the flow's idle timeout has passed at `now`.
    #[inline]
    pub fn expired(&self, now: Instant, config: &FlowConfig, factor: f64) -> bool {
        // A pending flow ends by its completion or its pend timeout only.
        !self.is_pending() && self.idle(now) >= self.timeout(config, factor)
    }

    /// The closure reason if the flow is removed because its timer ran out.
    #[inline]
    pub fn expiry_reason(&self) -> CloseReason {
        match self.state() {
            FlowState::Tcp(TcpState::TimeWait) => CloseReason::TcpFin,
            FlowState::Tcp(TcpState::Closed) => CloseReason::TcpRst,
            _ => CloseReason::IdleTimeout,
        }
    }
}
