//! The text renderings: `tunwall flows` and `tunwall stats` (read from
//! their JSON, so every field comes from [`super::json`]) and the summary
//! `tunwall check` prints.

use crate::config::{Config, Workers};
use crate::policy::Policy;
use serde_json::Value;
use std::fmt::Write as _;

/// `tunwall pending` without `--json`: one line per pending flow.
pub fn pending(pending: &Value) -> String {
    let mut out = String::new();
    let Some(list) = pending.as_array() else {
        return out;
    };
    out.push_str(&format!(
        "{:>6} {:<6} {:<8} {:<30} {:<30} {:>7} {:>6} {:>7} {:>8} {:<7} {}\n",
        "ID",
        "PROTO",
        "DIR",
        "LOCAL",
        "REMOTE",
        "AGE",
        "PKTS",
        "BYTES",
        "TIMEOUT",
        "THEN",
        "FILTER"
    ));
    for p in list {
        let s = |k: &str| match p.get(k) {
            Some(Value::String(v)) => v.clone(),
            Some(Value::Null) | None => "-".to_string(),
            Some(v) => v.to_string(),
        };
        let endpoint = |addr: &str, port: &str| match p.get(port) {
            Some(Value::Number(n)) if s(addr).contains(':') => format!("[{}]:{n}", s(addr)),
            Some(Value::Number(n)) => format!("{}:{n}", s(addr)),
            _ => s(addr),
        };
        let secs = |k: &str| {
            format!(
                "{:.1}s",
                p.get(k).and_then(Value::as_u64).unwrap_or(0) as f64 / 1000.0
            )
        };
        out.push_str(&format!(
            "{:>6} {:<6} {:<8} {:<30} {:<30} {:>7} {:>6} {:>7} {:>8} {:<7} {}\n",
            s("id"),
            s("protocol"),
            s("direction"),
            endpoint("local_addr", "local_port"),
            endpoint("remote_addr", "remote_port"),
            secs("age_ms"),
            s("queued_packets"),
            s("queued_bytes"),
            secs("expires_in_ms"),
            s("timeout_action"),
            s("filter"),
        ));
    }
    out.push_str(&format!("{} pending flows\n", list.len()));
    out
}

/// `tunwall flows` without `--json`: one line per flow, like `conntrack -L`.
pub fn flows(flows: &Value) -> String {
    let mut out = flows_header();
    let Some(list) = flows.as_array() else {
        return out;
    };
    for f in list {
        out.push_str(&flow_line(f));
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

/// The column headings of `tunwall flows`.
pub fn flows_header() -> String {
    format!(
        "{:>6} {:<6} {:<8} {:<30} {:<34} {:<12} {:>9} {:>9} {:>8} {:<6} {}\n",
        "ID",
        "PROTO",
        "DIR",
        "LOCAL",
        "REMOTE",
        "STATE",
        "PKTS OUT",
        "PKTS IN",
        "EXPIRES",
        "PORT",
        "IDENTITY (LOCAL/REMOTE)"
    )
}

/// One flow (its `flows --json` object) as a line of `tunwall flows`.
pub fn flow_line(f: &Value) -> String {
    let s = |k: &str| {
        f.get(k)
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string())
            })
            .unwrap_or_default()
    };
    let endpoint = |addr: &str, port: &str| endpoint(f, addr, port);
    let mut remote = endpoint("remote_addr", "remote_port");
    if let Some(t) = f.get("icmp_type").and_then(Value::as_u64) {
        remote.push_str(&format!(" type {t}"));
        if let Some(id) = f.get("icmp_id").and_then(Value::as_u64) {
            remote.push_str(&format!(" id {id}"));
        }
    }
    let expires = f.get("expires_in_ms").and_then(Value::as_u64).unwrap_or(0);
    let mut line = format!(
        "{:>6} {:<6} {:<8} {:<30} {:<34} {:<12} {:>9} {:>9} {:>7}s {:<6} {}/{}\n",
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
        names(f.get("local_identity")),
        names(f.get("remote_identity")),
    );
    if let Some(t) = f.get("translation").filter(|t| t.is_object()) {
        line.push_str(&translation_line(t));
    }
    line
}

/// A translated flow's second line: its endpoints as the outside port sees
/// them (SPEC §9 `translation`), under LOCAL and REMOTE, and the filter.
fn translation_line(t: &Value) -> String {
    let endpoint = |addr: &str, port: &str| endpoint(t, addr, port);
    let mut remote = endpoint("remote_addr", "remote_port");
    if let Some(id) = t.get("icmp_id").and_then(Value::as_u64) {
        remote.push_str(&format!(" id {id}"));
    }
    format!(
        "{:>6} {:<6} {:<8} {:<30} {:<34} {}\n",
        "",
        "",
        "nat",
        endpoint("local_addr", "local_port"),
        remote,
        t.get("filter").and_then(Value::as_str).unwrap_or("?")
    )
}

/// `addr` and `port` of the JSON object `v` as `a:p`, `[a]:p` or `a`.
fn endpoint(v: &Value, addr: &str, port: &str) -> String {
    let a = v
        .get(addr)
        .and_then(Value::as_str)
        .unwrap_or("?")
        .to_string();
    match v.get(port) {
        Some(Value::Number(p)) if a.contains(':') => format!("[{a}]:{p}"),
        Some(Value::Number(p)) => format!("{a}:{p}"),
        _ => a,
    }
}

/// A list of names, comma-separated, or "-".
fn names(v: Option<&Value>) -> String {
    let list: Vec<&str> = v
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if list.is_empty() {
        "-".into()
    } else {
        list.join(",")
    }
}

/// `tunwall identities` without `--json`: one block per identity.
pub fn identities(list: &Value) -> String {
    let mut out = String::new();
    for i in list.as_array().into_iter().flatten() {
        let s = |k: &str| i.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let source = match s("source").as_str() {
            "wireguard" => {
                let port = match s("port") {
                    p if p.is_empty() => String::new(),
                    p => format!(", port {p}"),
                };
                format!(
                    "wireguard {} ({} peer(s){port})",
                    s("interface"),
                    i.get("peers").and_then(Value::as_array).map_or(0, Vec::len)
                )
            }
            other => other.to_string(),
        };
        let _ = writeln!(out, "{:<20} {source}", s("name"));
        if let Some(peers) = i.get("peers").and_then(Value::as_array) {
            for p in peers.iter().filter_map(Value::as_str) {
                let _ = writeln!(out, "{:<20}   peer {p}", "");
            }
        }
        let _ = writeln!(out, "{:<20}   addresses {}", "", names(i.get("addresses")));
    }
    out
}

/// `tunwall stats` without flags.
pub fn stats(stats: &Value) -> String {
    let mut out = String::new();
    let get = |k: &str| stats.get(k).cloned().unwrap_or(Value::Null);
    out.push_str(&format!(
        "flows: {} active ({} pending), {} created; workers {}; policy generation {}; adaptive factor {}\n",
        get("flows_active"),
        get("flows_pending"),
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
    if stats
        .get("wireguard_read_errors")
        .and_then(Value::as_u64)
        .is_some_and(|n| n > 0)
    {
        out.push_str(&format!(
            "wireguard reads failed {} (the last known peers stay)
",
            get("wireguard_read_errors")
        ));
    }
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
    if let Some(nat) = stats.get("nat").filter(|n| n.is_object()) {
        out.push_str(&format!(
            "nat: {} ports in use, {} allocations refused (ports exhausted)\n",
            nat.get("ports_in_use").cloned().unwrap_or(Value::Null),
            nat.get("ports_exhausted").cloned().unwrap_or(Value::Null)
        ));
    }
    if let Some(layers) = stats.get("layers").and_then(Value::as_object) {
        out.push_str("layers:\n");
        for (layer, v) in layers {
            out.push_str(&format!(
                "  {layer:<28} permit {:<10} block {:<10} pend {}\n",
                v.get("permit").cloned().unwrap_or(Value::Null),
                v.get("block").cloned().unwrap_or(Value::Null),
                v.get("pend").cloned().unwrap_or(Value::from(0))
            ));
        }
    }
    if let Some(ports) = stats.get("ports").and_then(Value::as_object) {
        out.push_str("ports:\n");
        for (port, v) in ports {
            let g = |k: &str| v.get(k).cloned().unwrap_or(Value::Null);
            let offload = v
                .get("offload")
                .and_then(Value::as_str)
                .map(|o| format!(", offload {o}"))
                .unwrap_or_default();
            out.push_str(&format!(
                "  {port:<10} rx {} packets / {} bytes, tx {} packets / {} bytes{offload}\n",
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
    for w in &config.wireguard {
        let port = w.port.and_then(|i| config.ports.get(usize::from(i)));
        let _ = writeln!(
            out,
            "wireguard {}{}: peers read every {}{}",
            w.interface,
            w.netns
                .as_ref()
                .map(|n| format!(" in netns {n}"))
                .unwrap_or_default(),
            humantime::format_duration(w.refresh),
            port.map(|p| format!(", traffic arrives on port {}", p.name))
                .unwrap_or_default(),
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
