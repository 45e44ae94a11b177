//! The JSON of SPEC §7: flows (`flows --json`, flow events), events, and
//! the `stats --json` object. Every field name is written here and nowhere
//! else; the text and Prometheus renderings read these values.

use crate::engine::{Gateway, PendingInfo, Stats};
use crate::event::{Event, EventKind, FlowInfo};
use crate::flow::FlowClass;
use crate::flow::info::TranslationInfo;
use crate::io::worker::IoStats;
use crate::packet::{protocol_name, to_ip_addr};
use crate::policy::counters::FilterCounts;
use crate::policy::{Identities, IdentitySource, Layer, key_base64};
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
        "translation": f.translation.as_ref().map(translation),
        "synced": f.synced,
    })
}

/// A flow's `translation` (SPEC §9): its endpoints as seen on the outside
/// port, all four even where unchanged, and the redirect filter.
pub fn translation(t: &TranslationInfo) -> Value {
    let k = &t.key;
    let version = k.version();
    let ports = |p: u16| {
        if k.icmp().is_some() {
            Value::Null
        } else {
            json!(p)
        }
    };
    json!({
        "local_addr": to_ip_addr(version, &k.local).to_string(),
        "local_port": ports(k.local_port),
        "remote_addr": to_ip_addr(version, &k.remote).to_string(),
        "remote_port": ports(k.remote_port),
        "icmp_id": k.icmp().and_then(|i| i.id),
        "filter": &*t.filter,
    })
}

/// A pending flow as in `pending --json` (SPEC §10): the flow's fields,
/// its age, what it holds and when its pend timeout completes it.
pub fn pending(p: &PendingInfo, ports: &[impl AsRef<str>], now: Instant) -> Value {
    let mut object = flow(&p.flow, ports, now);
    let map = object.as_object_mut().expect("json! of an object");
    map.insert("state".into(), json!("pending"));
    map.insert("filter".into(), json!(p.filter.as_deref()));
    map.insert("queued_packets".into(), json!(p.packets));
    map.insert("queued_bytes".into(), json!(p.bytes));
    map.insert(
        "expires_in_ms".into(),
        json!(millis(p.deadline.saturating_since(now))),
    );
    map.insert("timeout_action".into(), json!(p.timeout_action.as_str()));
    map.insert("decision".into(), json!(p.decision.map(|d| d.as_str())));
    for key in [
        "idle_ms",
        "packets_out",
        "packets_in",
        "bytes_out",
        "bytes_in",
    ] {
        map.remove(key);
    }
    object
}

/// Adds the identities of a flow's endpoints (SPEC §11) to its JSON.
pub fn flow_identities(flow: &mut Value, local: Vec<String>, remote: Vec<String>) {
    if let Some(map) = flow.as_object_mut() {
        map.insert("local_identity".into(), json!(local));
        map.insert("remote_identity".into(), json!(remote));
    }
}

/// `identities --json`: each identity, its source and current addresses.
pub fn identities(ids: &Identities, ports: &[impl AsRef<str>]) -> Value {
    let list: Vec<Value> = ids
        .defs
        .iter()
        .map(|(name, source)| {
            let resolved = ids.resolved.get(name).cloned().unwrap_or_default();
            let addresses: Vec<String> = resolved
                .all()
                .prefixes()
                .iter()
                .map(ToString::to_string)
                .collect();
            let mut v = json!({"name": name, "addresses": addresses});
            let map = v.as_object_mut().expect("json! of an object");
            match source {
                IdentitySource::Addresses(_) => {
                    map.insert("source".into(), json!("addresses"));
                }
                IdentitySource::WireGuard { interface, peers } => {
                    let port = ids.ports.get(interface).copied().flatten();
                    map.insert("source".into(), json!("wireguard"));
                    map.insert("interface".into(), json!(interface));
                    map.insert(
                        "peers".into(),
                        json!(peers.iter().map(key_base64).collect::<Vec<_>>()),
                    );
                    map.insert(
                        "port".into(),
                        json!(port.and_then(|p| ports.get(usize::from(p)).map(|p| p.as_ref()))),
                    );
                }
            }
            v
        })
        .collect();
    Value::Array(list)
}

/// Adds the WireGuard counters to `stats --json`.
pub fn wireguard_stats(stats: &mut Value, read_errors: u64) {
    if let Some(map) = stats.as_object_mut() {
        map.insert("wireguard_read_errors".into(), json!(read_errors));
    }
}

/// Adds each port's offloads (`tcp+udp`, `tcp`, `off`) to its entry in
/// `stats --json`: `tcp` alone means the kernel refused UDP segmentation
/// offload and UDP superframes are split before tunwall reads them.
pub fn offload_stats(stats: &mut Value, names: &[String], offloads: &[&str]) {
    if let Some(ports) = stats.get_mut("ports").and_then(Value::as_object_mut) {
        for (name, offload) in names.iter().zip(offloads) {
            if let Some(port) = ports.get_mut(name).and_then(Value::as_object_mut) {
                port.insert("offload".into(), json!(offload));
            }
        }
    }
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
        EventKind::FlowPending {
            filter,
            layer,
            timeout,
            ..
        } => {
            map.insert("layer".into(), json!(layer.as_str()));
            map.insert("filter".into(), json!(filter.as_deref()));
            map.insert("pend_timeout_ms".into(), json!(millis(timeout.timeout)));
            map.insert(
                "timeout_action".into(),
                json!(timeout.timeout_action.as_str()),
            );
        }
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
        EventKind::PortAssigned(m) | EventKind::PortReleased(m) => {
            map.insert("ip_version".into(), json!(m.version.number()));
            map.insert("protocol".into(), protocol(m.protocol));
            map.insert(
                "inside_addr".into(),
                json!(to_ip_addr(m.version, &m.inside_addr).to_string()),
            );
            map.insert("inside_port".into(), json!(m.inside_port));
            map.insert(
                "translated_addr".into(),
                json!(to_ip_addr(m.version, &m.translated_addr).to_string()),
            );
            map.insert("translated_port".into(), json!(m.translated_port));
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

/// Per-filter counters as `stats --json` reports them: (name, layer, counts).
pub type FilterStats<'a> = [(&'a str, Layer, FilterCounts)];

/// The `stats --json` object of SPEC §7 and §12. Every known drop and
/// closure reason is present, at zero too.
pub fn stats(
    s: &Stats,
    io: &IoStats,
    gw: &Gateway,
    generation: u64,
    workers: usize,
    filter_stats: &FilterStats<'_>,
) -> Value {
    let by_reason =
        |counts: &[u64], names: &mut dyn Iterator<Item = &'static str>| -> Map<String, Value> {
            names
                .zip(counts)
                .map(|(k, n)| (k.to_string(), json!(n)))
                .collect()
        };
    let filters: Map<String, Value> = filter_stats
        .iter()
        .map(|(name, layer, c)| {
            (
                name.to_string(),
                json!({
                    "layer": layer.as_str(),
                    "matches": c.matches,
                    "decisions": c.decisions,
                    "flows_created": c.flows_created,
                }),
            )
        })
        .collect();
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
                json!({"permit": s.layer_permit[l.index()], "block": s.layer_block[l.index()], "pend": s.layer_pend[l.index()]}),
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
        "flows_pending": gw.pending_count(),
        "flows_created": s.flows_created,
        "flows_closed": closed,
        "discards": discards,
        "layers": layers,
        "reauthorizations": s.reauthorizations,
        "vetoes": s.vetoes,
        "related_icmp": s.related_icmp,
        "rejects": {"sent": s.rejects_sent, "rate_limited": s.rejects_limited},
        "adaptive_factor": gw.adaptive_factor(),
        "policy_generation": generation,
        "ports": ports,
        "workers": workers,
        "fragments_tracked": gw.fragments().len(),
        "events_dropped": s.events_dropped,
        "read_errors": io.read_errors,
        "write_errors": io.write_errors,
        "capture_lost": io.capture_lost,
        "coalesced": {
            "superframes": io.coalesced_superframes,
            "datagrams": io.coalesced_datagrams,
        },
        "filters": filters,
        "nat": {
            "ports_in_use": gw.nat().ports_in_use(),
            "ports_exhausted": s.discarded(DropReason::NatPortsExhausted),
        },
    })
}
