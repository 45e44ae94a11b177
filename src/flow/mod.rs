//! Connection tracking: flow keys, the sharded flow table, TCP tracking,
//! lifetimes with pf's adaptive shrinking, and the fragment table.

pub mod entry;
pub mod fragment;
pub mod hash;
pub mod info;
pub mod key;
pub mod lifetime;
pub mod record;
pub mod select;
pub mod shard;
pub mod table;
pub mod tcp;
mod translated;
pub mod wildcard;

pub use entry::FlowEntry;
pub use info::FlowInfo;
pub use key::{Direction, FlowKey, IcmpIdentity, Zone};
pub use lifetime::{FlowConfig, MAX_TIMEOUT};
pub use select::FlowSelector;
pub use table::{FlowTable, Shard, SlotId};
pub use tcp::{TcpState, TcpTracker};

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
    /// Waiting for a pending callout's decision (SPEC §10).
    Pending,
}

impl FlowState {
    /// The name used in `flows` output.
    pub fn as_str(self) -> &'static str {
        match self {
            FlowState::Tcp(s) => s.as_str(),
            FlowState::Active => "active",
            FlowState::Pending => "pending",
        }
    }
}
