//! The text renderings: `tunwall flows` and `tunwall stats` (read from
//! their JSON, so every field comes from [`super::json`]) and the summary
//! `tunwall check` prints.

use crate::config::{Config, Workers};
use crate::policy::Policy;
use serde_json::Value;
use std::fmt::Write as _;

/// `tunwall flows` without `--json`: one line per flow, like `conntrack -L`.
pub fn flows(flows: &Value) -> String {
    let mut out = String::new();
    let Some(list) = flows.as_array() else {
        return out;
    };
    out.push_str(&format!(
        "{:>6} {:<6} {:<8} {:<30} {:<34} {:<12} {:>9} {:>9} {:>8} {:<6}\n",
        "ID", "PROTO", "DIR", "LOCAL", "REMOTE", "STATE", "PKTS OUT", "PKTS IN", "EXPIRES", "PORT"
    ));
    for f in list {
        let s = |k: &str| {
            f.get(k)
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string())
                })
                .unwrap_or_default()
        };
        let endpoint = |addr: &str, port: &str| {
            let a = s(addr);
            match f.get(port) {
                Some(Value::Number(p)) if a.contains(':') => format!("[{a}]:{p}"),
                Some(Value::Number(p)) => format!("{a}:{p}"),
                _ => a,
            }
        };
        let mut remote = endpoint("remote_addr", "remote_port");
        if let Some(t) = f.get("icmp_type").and_then(Value::as_u64) {
            remote.push_str(&format!(" type {t}"));
            if let Some(id) = f.get("icmp_id").and_then(Value::as_u64) {
                remote.push_str(&format!(" id {id}"));
            }
        }
        let expires = f.get("expires_in_ms").and_then(Value::as_u64).unwrap_or(0);
        out.push_str(&format!(
            "{:>6} {:<6} {:<8} {:<30} {:<34} {:<12} {:>9} {:>9} {:>7}s {:<6}\n",
            s("id"),
            s("protocol"),
            s("direction"),
            endpoint("local_addr", "local_port"),
            remote,
            s("state"),
            s("packets_out"),
            s("packets_in"),
            expires / 1000,
            s("arrival_port"),
        ));
    }
    out.push_str(&format!("{} flows\n", list.len()));
    out
}

/// `tunwall sync status` without `--json`.
pub fn sync_status(status: &Value) -> String {
    let get = |k: &str| status.get(k).cloned().unwrap_or(Value::Null);
    let plain = |k: &str| match get(k) {
        Value::String(s) => s,
        v => v.to_string(),
    };
    format!(
        "peer {} {}; lag {} ms; queued {}/{}\n\
         sent {}, received {}, retransmitted {}, rejected {} {}\n\
         applied {}, refused {}, bulk resyncs sent {}, received {}; overflowed {}, exports dropped {}\n",
        plain("peer"),
        plain("state"),
        get("lag_ms"),
        get("queued"),
        get("queue_limit"),
        get("sent"),
        get("received"),
        get("retransmitted"),
        get("rejected"),
        get("rejected_by"),
        get("applied"),
        get("refused"),
        get("bulk_sent"),
        get("bulk_received"),
        get("overflowed"),
        get("export_dropped"),
    )
}

/// `tunwall stats` without flags.
pub fn stats(stats: &Value) -> String {
    let mut out = String::new();
    let get = |k: &str| stats.get(k).cloned().unwrap_or(Value::Null);
    out.push_str(&format!(
        "flows: {} active, {} created; workers {}; policy generation {}; adaptive factor {}\n",
        get("flows_active"),
        get("flows_created"),
        get("workers"),
        get("policy_generation"),
        get("adaptive_factor")
    ));
    out.push_str(&format!(
        "reauthorizations {}, vetoes {}\n",
        get("reauthorizations"),
        get("vetoes")
    ));
    for (title, key) in [("closed flows", "flows_closed"), ("discards", "discards")] {
        if let Some(map) = stats.get(key).and_then(Value::as_object)
            && !map.is_empty()
        {
            out.push_str(&format!("{title}:\n"));
            for (k, v) in map {
                out.push_str(&format!("  {k:<28} {v}\n"));
            }
        }
    }
    if let Some(layers) = stats.get("layers").and_then(Value::as_object) {
        out.push_str("layers:\n");
        for (layer, v) in layers {
            out.push_str(&format!(
                "  {layer:<28} permit {:<10} block {}\n",
                v.get("permit").cloned().unwrap_or(Value::Null),
                v.get("block").cloned().unwrap_or(Value::Null)
            ));
        }
    }
    if let Some(ports) = stats.get("ports").and_then(Value::as_object) {
        out.push_str("ports:\n");
        for (port, v) in ports {
            let g = |k: &str| v.get(k).cloned().unwrap_or(Value::Null);
            out.push_str(&format!(
                "  {port:<10} rx {} packets / {} bytes, tx {} packets / {} bytes\n",
                g("rx_packets"),
                g("rx_bytes"),
                g("tx_packets"),
                g("tx_bytes")
            ));
        }
    }
    out
}

/// `tunwall check`: the file's gateway, ports, flow settings and the
/// compiled policy.
pub fn check(config: &Config, policy: &Policy) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}: valid", config.path.display());
    let workers = match config.gateway.workers {
        Workers::Auto => "auto (one per CPU)".to_string(),
        Workers::Count(n) => n.to_string(),
    };
    let _ = writeln!(
        out,
        "gateway: {} workers, host_model {:?}, offload {}, control socket {}",
        workers,
        config.gateway.host_model,
        config.gateway.offload,
        config.gateway.control_socket.display()
    );
    for p in &config.ports {
        let list = |nets: &[ipnet::IpNet]| {
            nets.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            out,
            "port {} ({}): device {}{}, routes [{}]{}{}",
            p.name,
            p.zone.as_str(),
            p.device,
            p.netns
                .as_ref()
                .map(|n| format!(" in netns {n}"))
                .unwrap_or_default(),
            list(&p.routes),
            if p.addresses.is_empty() {
                String::new()
            } else {
                format!(", addresses [{}]", list(&p.addresses))
            },
            if p.kernel_routes.is_empty() {
                String::new()
            } else {
                format!(", kernel_routes [{}]", list(&p.kernel_routes))
            },
        );
    }
    let settings: Vec<String> = config
        .flows
        .settings()
        .into_iter()
        .map(|(key, value)| format!("{key} {value}"))
        .collect();
    let _ = writeln!(out, "flows: {}", settings.join(", "));
    let _ = write!(out, "\n{}", policy.describe());
    out
}
