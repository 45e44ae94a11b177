//! What the engine reports: flow snapshots and typed events.
//!
//! Events are plain values pushed to the engine's queue; the shell drains the
//! queue after every batch and renders them (JSON lines, logs, the `events`
//! stream) with the field names of SPEC §7.

use crate::flow::table::Removed;
use crate::flow::{Direction, FlowClass, FlowConfig, FlowEntry, FlowKey, FlowState};
use crate::packet::{IpVersion, Packet, RawAddr, protocol_name, to_ip_addr};
use crate::policy::{Action, Layer};
use crate::reason::{CloseReason, DropReason};
use crate::time::Instant;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

/// A snapshot of one flow.
#[derive(Clone, Debug, PartialEq)]
pub struct FlowInfo {
    /// Unique id.
    pub id: u64,
    /// The flow that caused this one (multicast state, loose source mapping).
    pub parent_id: Option<u64>,
    /// Identity.
    pub key: FlowKey,
    /// Direction of the creating packet.
    pub direction: Direction,
    /// Ordinary flow or multicast/broadcast state.
    pub class: FlowClass,
    /// TCP state or `Active`.
    pub state: FlowState,
    /// Indicated at `flow_established`.
    pub established: bool,
    /// The port the flow was (last) authorized on.
    pub arrival_port: u8,
    /// Creation time.
    pub created: Instant,
    /// Last refresh.
    pub last_seen: Instant,
    /// The idle timeout in force when the snapshot was taken.
    pub timeout: Duration,
    /// (packets, bytes) from the local host.
    pub out: (u64, u64),
    /// (packets, bytes) to the local host.
    pub inbound: (u64, u64),
    /// Policy generation of the flow's layer at its last authorization.
    pub policy_generation: u32,
}

impl FlowInfo {
    /// Snapshots `entry` at `now` with adaptive `factor`.
    pub fn of(
        entry: &FlowEntry,
        parent_id: Option<u64>,
        now: Instant,
        config: &FlowConfig,
        factor: f64,
    ) -> FlowInfo {
        FlowInfo {
            id: entry.id(),
            parent_id,
            key: entry.key(),
            direction: entry.direction(),
            class: entry.class(),
            state: entry.state(),
            established: entry.established(),
            arrival_port: entry.arrival_port(),
            created: entry.created(),
            last_seen: entry.last_seen(now),
            timeout: entry.timeout(config, factor),
            out: entry.counters(Direction::Outbound),
            inbound: entry.counters(Direction::Inbound),
            policy_generation: entry.generation(),
        }
    }

    /// Snapshots a removed flow.
    pub fn of_removed(
        removed: &Removed,
        now: Instant,
        config: &FlowConfig,
        factor: f64,
    ) -> FlowInfo {
        FlowInfo::of(&removed.entry, removed.parent, now, config, factor)
    }

    /// The layer that authorized the flow.
    pub fn layer(&self) -> Layer {
        Layer::auth(self.direction)
    }

    /// The flow's fields as in `flows --json` (SPEC §7). `ports` maps port
    /// indices to names.
    pub fn to_json(&self, ports: &[impl AsRef<str>], now: Instant) -> Value {
        let version = self.key.version();
        let icmp = self.key.icmp();
        let idle = now.saturating_since(self.last_seen);
        let (local_port, remote_port) = match icmp {
            Some(_) => (Value::Null, Value::Null),
            None => (json!(self.key.local_port), json!(self.key.remote_port)),
        };
        json!({
            "id": self.id,
            "parent_id": self.parent_id,
            "protocol": protocol_json(self.key.protocol),
            "ip_version": version.number(),
            "direction": self.direction.as_str(),
            "layer": self.layer().as_str(),
            "local_addr": to_ip_addr(version, &self.key.local).to_string(),
            "local_port": local_port,
            "remote_addr": to_ip_addr(version, &self.key.remote).to_string(),
            "remote_port": remote_port,
            "icmp_type": icmp.map(|i| i.icmp_type),
            "icmp_code": icmp.map(|i| i.code),
            "icmp_id": icmp.and_then(|i| i.id),
            "state": self.state.as_str(),
            "established": self.established,
            "multicast_state": self.class == FlowClass::McastBcastState,
            "arrival_port": ports.get(usize::from(self.arrival_port)).map(|p| p.as_ref()),
            "age_ms": millis(now.saturating_since(self.created)),
            "idle_ms": millis(idle),
            "expires_in_ms": millis(self.timeout.saturating_sub(idle)),
            "packets_out": self.out.0,
            "packets_in": self.inbound.0,
            "bytes_out": self.out.1,
            "bytes_in": self.inbound.1,
            "policy_generation": self.policy_generation,
        })
    }
}

fn millis(d: Duration) -> u64 {
    crate::time::millis(d)
}

/// `"tcp"`, `"udp"`, `"icmp"`, `"icmpv6"` or the protocol number.
pub fn protocol_json(protocol: u8) -> Value {
    match protocol {
        6 | 17 | 1 | 58 => json!(protocol_name(protocol)),
        n => json!(n),
    }
}

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

/// Why a flow was reauthorized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReauthTrigger {
    /// The policy of the flow's layer changed.
    PolicyChange,
    /// A packet arrived on another port of the flow's direction.
    ArrivalInterface,
}

impl ReauthTrigger {
    /// `"policy_change"` or `"arrival_interface"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ReauthTrigger::PolicyChange => "policy_change",
            ReauthTrigger::ArrivalInterface => "arrival_interface",
        }
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
            EventKind::FlowReauthorized { .. } => "flow_reauthorized",
            EventKind::FlowClosed { .. } => "flow_closed",
            EventKind::Discard { .. } => "discard",
            EventKind::Veto { .. } => "veto",
            EventKind::CalloutLog { .. } => "callout_log",
        }
    }

    /// The flow the event is about, if any.
    pub fn flow(&self) -> Option<&FlowInfo> {
        match &self.kind {
            EventKind::FlowCreated(f) | EventKind::FlowEstablished(f) => Some(f),
            EventKind::FlowReauthorized { flow, .. } | EventKind::FlowClosed { flow, .. } => {
                Some(flow)
            }
            EventKind::CalloutLog { flow, .. } => flow.as_ref(),
            _ => None,
        }
    }

    /// The event as a JSON object (without `ts`, which the shell adds from
    /// the wall clock). `ports` maps port indices to names.
    pub fn to_json(&self, ports: &[impl AsRef<str>]) -> Value {
        let mut object = match self.flow() {
            Some(flow) => flow.to_json(ports, self.at),
            None => json!({}),
        };
        let map = object.as_object_mut().expect("json! of an object");
        map.insert("event".into(), json!(self.name()));
        match &self.kind {
            EventKind::FlowCreated(_) | EventKind::FlowEstablished(_) => {}
            EventKind::FlowReauthorized {
                trigger,
                result,
                filter,
                ..
            } => {
                map.insert("trigger".into(), json!(trigger.as_str()));
                map.insert("result".into(), json!(result.as_str()));
                map.insert("filter".into(), json!(filter.as_deref()));
            }
            EventKind::FlowClosed { flow, reason } => {
                map.insert("reason".into(), json!(reason.as_str()));
                map.insert(
                    "duration_ms".into(),
                    json!(millis(self.at.saturating_since(flow.created))),
                );
            }
            EventKind::Discard {
                layer,
                reason,
                filter,
                port,
                packet,
            } => {
                map.insert("layer".into(), json!(layer.map(|l| l.as_str())));
                map.insert("reason".into(), json!(reason.as_str()));
                map.insert("filter".into(), json!(filter.as_deref()));
                map.insert(
                    "arrival_port".into(),
                    json!(ports.get(usize::from(*port)).map(|p| p.as_ref())),
                );
                if let Some(p) = packet {
                    map.insert("ip_version".into(), json!(p.version.number()));
                    map.insert("protocol".into(), protocol_json(p.protocol));
                    map.insert(
                        "src_addr".into(),
                        json!(to_ip_addr(p.version, &p.src).to_string()),
                    );
                    map.insert(
                        "dst_addr".into(),
                        json!(to_ip_addr(p.version, &p.dst).to_string()),
                    );
                    map.insert("src_port".into(), json!(p.ports.map(|(s, _)| s)));
                    map.insert("dst_port".into(), json!(p.ports.map(|(_, d)| d)));
                    map.insert("length".into(), json!(p.len));
                }
            }
            EventKind::Veto {
                layer,
                filter,
                overridden_filter,
            } => {
                map.insert("layer".into(), json!(layer.as_str()));
                map.insert("filter".into(), json!(&**filter));
                map.insert("overridden_filter".into(), json!(&**overridden_filter));
            }
            EventKind::CalloutLog {
                layer,
                filter,
                request,
                ..
            } => {
                map.insert("layer".into(), json!(layer.as_str()));
                map.insert("filter".into(), json!(&**filter));
                if let Some(r) = request {
                    map.insert("ip_version".into(), json!(r.version.number()));
                    map.insert("protocol".into(), protocol_json(r.protocol));
                    map.insert(
                        "local_addr".into(),
                        json!(to_ip_addr(r.version, &r.local_addr).to_string()),
                    );
                    map.insert(
                        "remote_addr".into(),
                        json!(to_ip_addr(r.version, &r.remote_addr).to_string()),
                    );
                    let (local_port, remote_port) = match r.icmp {
                        Some(_) => (Value::Null, Value::Null),
                        None => (json!(r.local_port), json!(r.remote_port)),
                    };
                    map.insert("local_port".into(), local_port);
                    map.insert("remote_port".into(), remote_port);
                    map.insert("icmp_type".into(), json!(r.icmp.map(|(t, _)| t)));
                    map.insert("icmp_code".into(), json!(r.icmp.map(|(_, c)| c)));
                    map.insert(
                        "arrival_port".into(),
                        json!(
                            r.arrival_port
                                .and_then(|p| ports.get(usize::from(p)).map(|p| p.as_ref()))
                        ),
                    );
                    map.insert(
                        "reauthorize".into(),
                        json!(r.flags.contains(crate::policy::ClassifyFlags::REAUTHORIZE)),
                    );
                }
            }
        }
        object
    }
}
