//! What the engine reports: flow snapshots and typed events.
//!
//! Events are plain values pushed to the engine's queue; the shell drains the
//! queue after every batch and renders them ([`crate::render`]: JSON lines,
//! logs, the `events` stream) with the field names of SPEC §7. The policy
//! reports its notes (vetoes, callout logs) as [`PolicyNote`]s, which the
//! engine turns into events here.

use crate::packet::{IpVersion, Packet, RawAddr};
use crate::policy::{Action, Layer, PolicyNote};
use crate::reason::{CloseReason, DropReason, named_enum};
use crate::time::Instant;
use std::sync::Arc;

pub use crate::flow::info::FlowInfo;

/// The addresses and ports of a dropped packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketSummary {
    /// IP version.
    pub version: IpVersion,
    /// Protocol.
    pub protocol: u8,
    /// Source address.
    pub src: RawAddr,
    /// Destination address.
    pub dst: RawAddr,
    /// Source and destination port, if any.
    pub ports: Option<(u16, u16)>,
    /// Length in bytes.
    pub len: u32,
}

impl PacketSummary {
    /// Summarises a parsed packet.
    pub fn of(packet: &Packet) -> PacketSummary {
        PacketSummary {
            version: packet.version,
            protocol: packet.protocol,
            src: packet.src,
            dst: packet.dst,
            ports: packet.ports(),
            len: packet.len,
        }
    }
}

/// One line of the NAT log: a port mapping assigned or released.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortMapping {
    /// IP version.
    pub version: IpVersion,
    /// Protocol.
    pub protocol: u8,
    /// The inside host.
    pub inside_addr: RawAddr,
    /// Its port (or ICMP query id).
    pub inside_port: u16,
    /// The translated address.
    pub translated_addr: RawAddr,
    /// The translated port (or ICMP query id).
    pub translated_port: u16,
}

named_enum! {
    /// Why a flow was reauthorized.
    pub enum ReauthTrigger {
        /// The policy of the flow's layer changed.
        PolicyChange => "policy_change",
        /// A packet arrived on another port of the flow's direction.
        ArrivalInterface => "arrival_interface",
        /// A pending flow was completed (SPEC §10).
        PendComplete => "pend_complete",
        /// The addresses of an identity a filter of the flow's layer names
        /// changed (SPEC §11).
        IdentityChange => "identity_change",
        /// The first packet here of a flow replicated from the HA peer (SPEC §15).
        Failover => "failover",
    }
}

/// One event, stamped with the engine time it happened at.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// When.
    pub at: Instant,
    /// What.
    pub kind: EventKind,
}

/// The events of SPEC §7 that the core produces.
#[derive(Clone, Debug, PartialEq)]
pub enum EventKind {
    /// A flow was created.
    FlowCreated(FlowInfo),
    /// A flow was indicated at `flow_established`.
    FlowEstablished(FlowInfo),
    /// A callout pended a new flow (SPEC §10).
    FlowPending {
        /// The flow, in state `pending`.
        flow: FlowInfo,
        /// The pending callout's filter.
        filter: Option<Arc<str>>,
        /// The layer.
        layer: Layer,
        /// When the pend timeout completes it, and how.
        timeout: crate::policy::Pend,
    },
    /// A flow was classified again.
    FlowReauthorized {
        /// The flow after reauthorization.
        flow: FlowInfo,
        /// What caused it.
        trigger: ReauthTrigger,
        /// The outcome.
        result: Action,
        /// The deciding filter.
        filter: Option<Arc<str>>,
    },
    /// A flow was removed (its `endpoint_closure` indication).
    FlowClosed {
        /// The flow as it was.
        flow: FlowInfo,
        /// Why.
        reason: CloseReason,
    },
    /// A packet was dropped.
    Discard {
        /// The layer that decided, if a layer did.
        layer: Option<Layer>,
        /// Why.
        reason: DropReason,
        /// The deciding filter, if any.
        filter: Option<Arc<str>>,
        /// The arrival port.
        port: u8,
        /// The packet, if it could be parsed.
        packet: Option<PacketSummary>,
    },
    /// A callout vetoed a hard permit.
    Veto {
        /// The layer.
        layer: Layer,
        /// The vetoing callout filter.
        filter: Arc<str>,
        /// The hard permit it overrode.
        overridden_filter: Arc<str>,
    },
    /// A translated port was allocated (a new mapping).
    PortAssigned(PortMapping),
    /// A mapping's last flow closed: its port is free again.
    PortReleased(PortMapping),
    /// The `log` callout ran.
    CalloutLog {
        /// The layer.
        layer: Layer,
        /// The callout filter.
        filter: Arc<str>,
        /// The flow, at `flow_established` and `endpoint_closure`.
        flow: Option<FlowInfo>,
        /// What was classified, at the auth and `icmp_error` layers.
        request: Option<crate::policy::ClassifyRequest>,
    },
}

impl Event {
    /// The event name of SPEC §7.
    pub fn name(&self) -> &'static str {
        match self.kind {
            EventKind::FlowCreated(_) => "flow_created",
            EventKind::FlowEstablished(_) => "flow_established",
            EventKind::FlowPending { .. } => "flow_pending",
            EventKind::FlowReauthorized { .. } => "flow_reauthorized",
            EventKind::FlowClosed { .. } => "flow_closed",
            EventKind::Discard { .. } => "discard",
            EventKind::Veto { .. } => "veto",
            EventKind::CalloutLog { .. } => "callout_log",
            EventKind::PortAssigned(_) => "port_assigned",
            EventKind::PortReleased(_) => "port_released",
        }
    }

    /// The flow the event is about, if any.
    pub fn flow(&self) -> Option<&FlowInfo> {
        match &self.kind {
            EventKind::FlowCreated(f) | EventKind::FlowEstablished(f) => Some(f),
            EventKind::FlowReauthorized { flow, .. }
            | EventKind::FlowClosed { flow, .. }
            | EventKind::FlowPending { flow, .. } => Some(flow),
            EventKind::CalloutLog { flow, .. } => flow.as_ref(),
            _ => None,
        }
    }
}

impl From<PolicyNote> for Event {
    fn from(note: PolicyNote) -> Event {
        match note {
            PolicyNote::Veto {
                at,
                layer,
                filter,
                overridden_filter,
            } => Event {
                at,
                kind: EventKind::Veto {
                    layer,
                    filter,
                    overridden_filter,
                },
            },
            PolicyNote::CalloutLog {
                at,
                layer,
                filter,
                flow,
                request,
            } => Event {
                at,
                kind: EventKind::CalloutLog {
                    layer,
                    filter,
                    flow,
                    request,
                },
            },
        }
    }
}
