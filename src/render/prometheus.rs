//! `tunwall stats --prometheus`: the Prometheus text exposition format,
//! read from the `stats --json` object.

use serde_json::{Value, json};

/// `tunwall stats --prometheus`: the Prometheus text exposition format.
pub fn prometheus(stats: &Value) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: Vec<(String, Value)>| {
        out.push_str(&format!(
            "# HELP tunwall_{name} {help}\n# TYPE tunwall_{name} {kind}\n"
        ));
        for (labels, v) in samples {
            out.push_str(&format!(
                "tunwall_{name}{labels} {}\n",
                v.as_f64().unwrap_or(0.0)
            ));
        }
    };
    let plain = |k: &str| vec![(String::new(), stats.get(k).cloned().unwrap_or(json!(0)))];
    let labelled = |k: &str, label: &str| -> Vec<(String, Value)> {
        stats
            .get(k)
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(name, v)| (format!("{{{label}=\"{name}\"}}"), v.clone()))
                    .collect()
            })
            .unwrap_or_default()
    };
    metric(
        "flows_active",
        "gauge",
        "Flows in the table.",
        plain("flows_active"),
    );
    metric(
        "flows_pending",
        "gauge",
        "Flows waiting for a pending callout's decision.",
        plain("flows_pending"),
    );
    metric(
        "flows_created_total",
        "counter",
        "Flows created.",
        plain("flows_created"),
    );
    metric(
        "flows_closed_total",
        "counter",
        "Flows closed, by reason.",
        labelled("flows_closed", "reason"),
    );
    metric(
        "discards_total",
        "counter",
        "Packets dropped, by reason.",
        labelled("discards", "reason"),
    );
    let mut decisions = Vec::new();
    if let Some(layers) = stats.get("layers").and_then(Value::as_object) {
        for (layer, v) in layers {
            for action in ["permit", "block", "pend"] {
                decisions.push((
                    format!("{{layer=\"{layer}\",action=\"{action}\"}}"),
                    v.get(action).cloned().unwrap_or(json!(0)),
                ));
            }
        }
    }
    metric(
        "layer_decisions_total",
        "counter",
        "Classifications, by layer and action.",
        decisions,
    );
    metric(
        "reauthorizations_total",
        "counter",
        "Flows reauthorized.",
        plain("reauthorizations"),
    );
    metric(
        "wireguard_read_errors_total",
        "counter",
        "Reads of a WireGuard interface's peers that failed (the last known peers stay).",
        plain("wireguard_read_errors"),
    );
    metric(
        "vetoes_total",
        "counter",
        "Hard permits vetoed by a callout.",
        plain("vetoes"),
    );
    metric(
        "adaptive_factor",
        "gauge",
        "Scale of idle timeouts (1 when not shrinking).",
        plain("adaptive_factor"),
    );
    metric(
        "policy_generation",
        "gauge",
        "Policy generation.",
        plain("policy_generation"),
    );
    metric("workers", "gauge", "Worker threads.", plain("workers"));
    let nat = |k: &str| vec![(String::new(), stats["nat"][k].clone())];
    metric(
        "nat_ports_in_use",
        "gauge",
        "Translated ports (and ICMP ids) held by mappings.",
        nat("ports_in_use"),
    );
    metric(
        "nat_ports_exhausted_total",
        "counter",
        "Allocations refused: no free port.",
        nat("ports_exhausted"),
    );
    let coalesced = |k: &str| vec![(String::new(), stats["coalesced"][k].clone())];
    metric(
        "coalesced_superframes_total",
        "counter",
        "UDP superframes written, merged from forwarded datagrams.",
        coalesced("superframes"),
    );
    metric(
        "coalesced_datagrams_total",
        "counter",
        "Forwarded datagrams that left inside a merged UDP superframe.",
        coalesced("datagrams"),
    );
    for (key, help) in [
        ("read_errors", "Failed reads from the ports."),
        (
            "write_errors",
            "Failed writes to the ports (the packet is lost).",
        ),
        (
            "events_dropped",
            "Events lost: a full queue or a slow reader.",
        ),
    ] {
        metric(&format!("{key}_total"), "counter", help, plain(key));
    }
    for (key, help) in [
        (
            "matches",
            "Times the filter's conditions matched a packet being classified.",
        ),
        (
            "decisions",
            "Times the filter's action was its layer's final result.",
        ),
        ("flows_created", "Flows admitted with the filter deciding."),
    ] {
        let samples = stats
            .get("filters")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(filter, v)| {
                        let layer = v.get("layer").and_then(Value::as_str).unwrap_or("");
                        (
                            format!("{{layer=\"{layer}\",filter=\"{}\"}}", label(filter)),
                            v.get(key).cloned().unwrap_or(json!(0)),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        metric(&format!("filter_{key}_total"), "counter", help, samples);
    }
    for (key, help) in [
        ("rx_packets", "Packets read from the port."),
        ("rx_bytes", "Bytes read from the port."),
        ("tx_packets", "Packets written to the port."),
        ("tx_bytes", "Bytes written to the port."),
    ] {
        let samples = stats
            .get("ports")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(port, v)| {
                        (
                            format!("{{port=\"{port}\"}}"),
                            v.get(key).cloned().unwrap_or(json!(0)),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        metric(&format!("port_{key}_total"), "counter", help, samples);
    }
    if let Some(sync) = stats.get("sync") {
        let value = |k: &str| vec![(String::new(), sync.get(k).cloned().unwrap_or(json!(0)))];
        for (key, kind, help) in [
            ("sent", "counter", "Sync datagrams sent to the HA peer."),
            ("sent_bytes", "counter", "Bytes of the sync datagrams sent."),
            (
                "received",
                "counter",
                "Sync datagrams accepted from the HA peer.",
            ),
            ("retransmitted", "counter", "Sync messages sent again."),
            (
                "overflowed",
                "counter",
                "Sync messages dropped from a full send queue.",
            ),
            (
                "export_dropped",
                "counter",
                "Flow changes the workers could not queue for sync.",
            ),
            ("applied", "counter", "Replicated flow records applied."),
            ("bulk_sent", "counter", "Bulk resyncs sent."),
            ("bulk_received", "counter", "Bulk resyncs received."),
            (
                "queued",
                "gauge",
                "Sync messages waiting for an acknowledgement.",
            ),
            (
                "lag_ms",
                "gauge",
                "Age of the oldest unacknowledged sync message, ms.",
            ),
        ] {
            let name = if kind == "counter" && !key.ends_with("_ms") {
                format!("sync_{key}_total")
            } else {
                format!("sync_{key}")
            };
            metric(&name, kind, help, value(key));
        }
        let rejected = sync
            .get("rejected_by")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(r, v)| (format!("{{reason=\"{r}\"}}"), v.clone()))
                    .collect()
            })
            .unwrap_or_default();
        metric(
            "sync_rejected_total",
            "counter",
            "Sync datagrams refused, by reason.",
            rejected,
        );
        let up =
            ["up", "resyncing"].contains(&sync.get("state").and_then(Value::as_str).unwrap_or(""));
        metric(
            "sync_peer_up",
            "gauge",
            "Whether the HA peer answers.",
            vec![(String::new(), json!(u8::from(up)))],
        );
    }
    out
}

/// A label value escaped as the exposition format asks (`\\`, `\"`, `\n`):
/// filter names come from the configuration file.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
