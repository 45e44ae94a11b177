//! The JSON of SPEC §7: flows (`flows --json`, flow events), events, and
//! the `stats --json` object. Every field name is written here and nowhere
//! else; the text and Prometheus renderings read these values.

use crate::engine::{Gateway, Stats};
use crate::event::{Event, EventKind, FlowInfo};
use crate::flow::FlowClass;
use crate::io::worker::IoStats;
use crate::packet::{protocol_name, to_ip_addr};
use crate::policy::Layer;
use crate::reason::{CloseReason, DropReason};
use crate::time::Instant;
use serde_json::{Map, Value, json};
use std::time::Duration;

/// A flow's fields as in `flows --json` (SPEC §7). `ports` maps port
/// indices to names.
pub fn flow(f: &FlowInfo, ports: &[impl AsRef<str>], now: Instant) -> Value {
    let version = f.key.version();
    let icmp = f.key.icmp();
    let idle = now.saturating_since(f.last_seen);
    let (local_port, remote_port) = match icmp {
        Some(_) => (Value::Null, Value::Null),
        None => (json!(f.key.local_port), json!(f.key.remote_port)),
    };
    json!({
        "id": f.id,
        "parent_id": f.parent_id,
        "protocol": protocol(f.key.protocol),
        "ip_version": version.number(),
        "direction": f.direction.as_str(),
        "layer": f.layer().as_str(),
        "local_addr": to_ip_addr(version, &f.key.local).to_string(),
        "local_port": local_port,
        "remote_addr": to_ip_addr(version, &f.key.remote).to_string(),
        "remote_port": remote_port,
        "icmp_type": icmp.map(|i| i.icmp_type),
        "icmp_code": icmp.map(|i| i.code),
        "icmp_id": icmp.and_then(|i| i.id),
        "state": f.state.as_str(),
        "established": f.established,
        "multicast_state": f.class == FlowClass::McastBcastState,
        "arrival_port": ports.get(usize::from(f.arrival_port)).map(|p| p.as_ref()),
        "age_ms": millis(now.saturating_since(f.created)),
        "idle_ms": millis(idle),
        "expires_in_ms": millis(f.timeout.saturating_sub(idle)),
        "packets_out": f.out.0,
        "packets_in": f.inbound.0,
        "bytes_out": f.out.1,
        "bytes_in": f.inbound.1,
        "policy_generation": f.policy_generation,
        "synced": f.synced,
    })
}

/// An event as a JSON object (without `ts`, which the shell adds from the
/// wall clock). `ports` maps port indices to names.
pub fn event(e: &Event, ports: &[impl AsRef<str>]) -> Value {
    let mut object = match e.flow() {
        Some(f) => flow(f, ports, e.at),
        None => json!({}),
    };
    let map = object.as_object_mut().expect("json! of an object");
    map.insert("event".into(), json!(e.name()));
    match &e.kind {
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
                json!(millis(e.at.saturating_since(flow.created))),
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
                map.insert("protocol".into(), protocol(p.protocol));
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
                map.insert("protocol".into(), protocol(r.protocol));
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

/// `"tcp"`, `"udp"`, `"icmp"`, `"icmpv6"` or the protocol number.
pub fn protocol(number: u8) -> Value {
    match number {
        6 | 17 | 1 | 58 => json!(protocol_name(number)),
        n => json!(n),
    }
}

fn millis(d: Duration) -> u64 {
    crate::time::millis(d)
}

/// The `stats --json` object of SPEC §7.
pub fn stats(s: &Stats, io: &IoStats, gw: &Gateway, generation: u64, workers: usize) -> Value {
    let by_reason =
        |counts: &[u64], names: &mut dyn Iterator<Item = &'static str>| -> Map<String, Value> {
            names
                .zip(counts)
                .filter(|(_, n)| **n > 0)
                .map(|(k, n)| (k.to_string(), json!(n)))
                .collect()
        };
    let closed = by_reason(
        &s.flows_closed,
        &mut CloseReason::ALL.iter().map(|r| r.as_str()),
    );
    let discards = by_reason(&s.discards, &mut DropReason::ALL.iter().map(|r| r.as_str()));
    let layers: Map<String, Value> = [Layer::AuthConnect, Layer::AuthRecvAccept, Layer::IcmpError]
        .iter()
        .map(|l| {
            (
                l.as_str().to_string(),
                json!({"permit": s.layer_permit[l.index()], "block": s.layer_block[l.index()]}),
            )
        })
        .collect();
    let ports: Map<String, Value> = gw
        .port_names()
        .into_iter()
        .zip(&s.ports)
        .map(|(name, p)| {
            (
                name,
                json!({"rx_packets": p.rx_packets, "tx_packets": p.tx_packets, "rx_bytes": p.rx_bytes, "tx_bytes": p.tx_bytes}),
            )
        })
        .collect();
    json!({
        "flows_active": gw.flows_active(),
        "flows_created": s.flows_created,
        "flows_closed": closed,
        "discards": discards,
        "layers": layers,
        "reauthorizations": s.reauthorizations,
        "vetoes": s.vetoes,
        "related_icmp": s.related_icmp,
        "adaptive_factor": gw.adaptive_factor(),
        "policy_generation": generation,
        "ports": ports,
        "workers": workers,
        "fragments_tracked": gw.fragments().len(),
        "events_dropped": s.events_dropped,
        "read_errors": io.read_errors,
        "write_errors": io.write_errors,
    })
}
