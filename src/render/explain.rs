//! `tunwall explain`: the explanation as JSON (`--json`) and as text (read
//! from the JSON, so both say the same).

use crate::engine::Verdict;
use crate::explain::{Classification, Explanation, Outcome, Step};
use crate::packet::{IpVersion, to_ip_addr};
use crate::policy::trace::Standing;
use crate::policy::{Action, RedirectAddress};
use serde_json::{Value, json};
use std::fmt::Write as _;

fn standing(s: Standing) -> Value {
    match s {
        None => Value::Null,
        Some((action, hard)) => json!({"action": action.as_str(), "hard": hard}),
    }
}

fn result(r: Option<(Action, bool, bool)>) -> Value {
    match r {
        None => json!("continue"),
        Some((action, hard, callout)) => {
            json!({"action": action.as_str(), "hard": hard, "callout": callout})
        }
    }
}

fn classification(c: &Classification, ports: &[String]) -> Value {
    let r = &c.request;
    let find = |name: &str| {
        c.steps.iter().find(|s| match s {
            Step::SublayerDecided(f)
            | Step::Mismatch(f, _)
            | Step::Matched(f, _)
            | Step::Pended(f)
            | Step::FirstMatch(f, _) => f == name,
            _ => false,
        })
    };
    let first_match = c.steps.iter().any(|s| matches!(s, Step::FirstMatch(..)));
    let filters: Vec<Value> = c
        .filters
        .iter()
        .enumerate()
        .map(|(rank, (name, sublayer))| {
            let candidate = c.candidates.contains(&(rank as u32));
            let (evaluated, matched, why) = match find(name) {
                Some(Step::Matched(_, res)) => (true, json!(true), result(*res)),
                Some(Step::FirstMatch(_, translates)) => (
                    true,
                    json!(true),
                    json!(if *translates { "redirect" } else { "permit" }),
                ),
                Some(Step::Pended(_)) => (true, json!(true), json!("pend")),
                Some(Step::Mismatch(_, cond)) => {
                    (true, json!(false), json!(format!("{cond} does not match")))
                }
                Some(Step::SublayerDecided(_)) => (
                    false,
                    Value::Null,
                    json!("its sublayer had already decided"),
                ),
                _ if !candidate => (
                    false,
                    Value::Null,
                    json!("not a candidate: the index rules out its address or port condition"),
                ),
                _ if first_match => (
                    false,
                    Value::Null,
                    json!("an earlier filter matched: the first match decides"),
                ),
                _ => (false, Value::Null, Value::Null),
            };
            json!({
                "filter": name,
                "sublayer": sublayer,
                "evaluated": evaluated,
                "matched": matched,
                if matched == json!(true) { "result" } else { "why_not" }: why,
            })
        })
        .collect();
    let arbitration: Vec<Value> = c
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::Arbitrated {
                filter,
                before,
                after,
                veto,
            } => Some(json!({
                "filter": filter,
                "before": standing(*before),
                "after": standing(*after),
                "veto": veto,
            })),
            _ => None,
        })
        .collect();
    let default = c.steps.iter().any(|s| matches!(s, Step::Default(_)));
    let mut flags = Vec::new();
    for (flag, name) in [
        (crate::policy::ClassifyFlags::REAUTHORIZE, "reauthorize"),
        (crate::policy::ClassifyFlags::FRAGMENT, "fragment"),
        (crate::policy::ClassifyFlags::MULTICAST, "multicast"),
        (crate::policy::ClassifyFlags::BROADCAST, "broadcast"),
        (crate::policy::ClassifyFlags::REDIRECTED, "redirected"),
    ] {
        if r.flags.contains(flag) {
            flags.push(name);
        }
    }
    json!({
        "layer": r.layer.as_str(),
        "request": {
            "protocol": super::json::protocol(r.protocol),
            "local_addr": to_ip_addr(r.version, &r.local_addr).to_string(),
            "remote_addr": to_ip_addr(r.version, &r.remote_addr).to_string(),
            "local_port": r.icmp.is_none().then_some(r.local_port),
            "remote_port": r.icmp.is_none().then_some(r.remote_port),
            "icmp_type": r.icmp.map(|i| i.0),
            "icmp_code": r.icmp.map(|i| i.1),
            "arrival_port": r.arrival_port.and_then(|p| ports.get(usize::from(p))),
            "flags": flags,
        },
        "filters": filters,
        "arbitration": arbitration,
        "original": r.original.map(|o| json!({
            "local_addr": to_ip_addr(r.version, &o.local_addr).to_string(),
            "remote_addr": to_ip_addr(r.version, &o.remote_addr).to_string(),
            "local_port": r.icmp.is_none().then_some(o.local_port),
            "remote_port": r.icmp.is_none().then_some(o.remote_port),
        })),
        "decision": decision(c, default, r.version),
    })
}

/// A layer's result: an auth layer's action, or a redirect layer's
/// translation (`redirect`), exemption (`permit`) or `none`.
fn decision(c: &Classification, default: bool, version: IpVersion) -> Value {
    match &c.outcome {
        Outcome::Decision(d) => json!({
            "action": if d.pend.is_some() { "pend" } else { d.action.as_str() },
            "filter": d.filter.as_deref(),
            "default": default,
            "vetoed": d.vetoed,
        }),
        Outcome::Redirect(Some(r)) => json!({
            "action": "redirect",
            "filter": &*r.filter,
            "to_address": match r.address {
                RedirectAddress::Keep => json!("keep"),
                RedirectAddress::To(a) => json!(to_ip_addr(version, &a).to_string()),
                RedirectAddress::Missing => json!("none of this family"),
            },
            "to_port": r.to_port.map(|(lo, hi)| if lo == hi { json!(lo) } else { json!(format!("{lo}-{hi}")) }),
        }),
        Outcome::Redirect(None) => {
            let exempt = c.steps.iter().find_map(|s| match s {
                Step::FirstMatch(f, false) => Some(f.as_str()),
                _ => None,
            });
            json!({
                "action": if exempt.is_some() { "permit" } else { "none" },
                "filter": exempt,
            })
        }
    }
}

/// `tunwall explain --json`.
pub fn json(e: &Explanation) -> Value {
    let verdict = match e.verdict {
        Verdict::Forward(port) => json!({
            "action": "forward",
            "egress_port": e.ports.get(usize::from(port)),
        }),
        Verdict::Held => json!({
            "action": "hold",
            "filter": e.classifications.last().and_then(|c| c.decision()?.filter.as_deref()),
        }),
        Verdict::Drop(reason) => {
            let (layer, filter) = e.discard.clone().unwrap_or((None, None));
            json!({
                "action": "drop",
                "reason": reason.as_str(),
                "layer": layer.map(|l| l.as_str()),
                "filter": filter.as_deref(),
            })
        }
    };
    json!({
        "packet": {
            "protocol": super::json::protocol(e.packet.protocol),
            "src": e.packet.src.to_string(),
            "dst": e.packet.dst.to_string(),
            "arrival_port": e.packet.arrival,
            "reauthorize": e.packet.reauthorize,
        },
        "layers": e.classifications.iter().map(|c| classification(c, &e.ports)).collect::<Vec<_>>(),
        "translation": e.translation.as_ref().map(super::json::translation),
        "notes": e.notes.iter().map(|(kind, filter)| json!({"event": kind, "filter": filter})).collect::<Vec<_>>(),
        "verdict": verdict,
    })
}

fn standing_text(v: &Value) -> String {
    match v.get("action").and_then(Value::as_str) {
        None => "nothing".into(),
        Some(a) if v["hard"] == json!(true) => format!("{a} (hard)"),
        Some(a) => format!("{a} (soft)"),
    }
}

/// `tunwall explain` without `--json`.
pub fn text(v: &Value) -> String {
    let mut out = String::new();
    let s = |v: &Value| {
        v.as_str()
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string())
    };
    let no_layer = v["layers"].as_array().is_none_or(|l| l.is_empty());
    for layer in v["layers"].as_array().into_iter().flatten() {
        let r = &layer["request"];
        let port = |p: &Value| {
            if p.is_null() {
                String::new()
            } else {
                format!(":{p}")
            }
        };
        let _ = writeln!(
            out,
            "layer {}: {} {}{} (local) <-> {}{} (remote), arrival {}{}",
            s(&layer["layer"]),
            s(&r["protocol"]),
            s(&r["local_addr"]),
            port(&r["local_port"]),
            s(&r["remote_addr"]),
            port(&r["remote_port"]),
            s(&r["arrival_port"]),
            match r["flags"].as_array() {
                Some(f) if !f.is_empty() =>
                    format!(", flags {}", f.iter().map(s).collect::<Vec<_>>().join(",")),
                _ => String::new(),
            }
        );
        let o = &layer["original"];
        if !o.is_null() {
            let _ = writeln!(
                out,
                "  original (original_* conditions): {}{} (local) <-> {}{} (remote)",
                s(&o["local_addr"]),
                port(&o["local_port"]),
                s(&o["remote_addr"]),
                port(&o["remote_port"]),
            );
        }
        let mut sublayer = None;
        for f in layer["filters"].as_array().into_iter().flatten() {
            if sublayer != Some(&f["sublayer"]) {
                sublayer = Some(&f["sublayer"]);
                let _ = writeln!(out, "  sublayer {}", s(&f["sublayer"]));
            }
            let what = if f["matched"] == json!(true) {
                let res = &f["result"];
                if res == "pend" {
                    "matched: its callout pended the flow".to_string()
                } else if res == "redirect" {
                    "matched: redirect (the first match decides)".to_string()
                } else if res == "permit" {
                    "matched: permit, no translation (the first match decides)".to_string()
                } else if res.is_string() {
                    "matched: callout returned continue".to_string()
                } else {
                    format!(
                        "matched: {}{}",
                        standing_text(res),
                        if res["callout"] == json!(true) {
                            " from its callout"
                        } else {
                            ""
                        }
                    )
                }
            } else if f["evaluated"] == json!(true) {
                format!("no match: {}", s(&f["why_not"]))
            } else {
                format!("skipped: {}", s(&f["why_not"]))
            };
            let _ = writeln!(out, "    {:<28} {what}", s(&f["filter"]));
        }
        for a in layer["arbitration"].as_array().into_iter().flatten() {
            let (before, after) = (&a["before"], &a["after"]);
            let how = if a["veto"] == json!(true) {
                format!(
                    "vetoes {}: now {}",
                    standing_text(before),
                    standing_text(after)
                )
            } else if before.is_null() {
                format!("sets {}", standing_text(after))
            } else if before == after && before["hard"] == json!(true) {
                format!("cannot override {} (hard)", standing_text(before))
            } else if before == after {
                format!("leaves {} (same action, not hard)", standing_text(before))
            } else {
                format!(
                    "overrides {} with {}",
                    standing_text(before),
                    standing_text(after)
                )
            };
            let _ = writeln!(out, "  arbitration: {} {how}", s(&a["filter"]));
        }
        let d = &layer["decision"];
        if d["action"] == "redirect" {
            let _ = writeln!(
                out,
                "  result: redirect by filter {} (to_address {}, to_port {})",
                s(&d["filter"]),
                s(&d["to_address"]),
                if d["to_port"].is_null() {
                    "keep".to_string()
                } else {
                    s(&d["to_port"])
                }
            );
        } else if d["action"] == "none" {
            let _ = writeln!(out, "  result: no translation (no filter matched)");
        } else if layer["layer"] == "bind_redirect" || layer["layer"] == "connect_redirect" {
            let _ = writeln!(
                out,
                "  result: no translation (exempted by filter {})",
                s(&d["filter"])
            );
        } else if d["default"] == json!(true) {
            let _ = writeln!(out, "  result: {} (the layer's default)", s(&d["action"]));
        } else {
            let _ = writeln!(
                out,
                "  result: {} by filter {}{}",
                s(&d["action"]),
                s(&d["filter"]),
                if d["vetoed"] == json!(true) {
                    " (vetoed)"
                } else {
                    ""
                }
            );
        }
    }
    if no_layer {
        let _ = writeln!(out, "no layer classified the packet");
    }
    let t = &v["translation"];
    if !t.is_null() {
        let endpoint = |addr: &Value, port: &Value| {
            if port.is_null() {
                s(addr)
            } else {
                format!("{}:{port}", s(addr))
            }
        };
        let _ = writeln!(
            out,
            "translation (filter {}): seen outside as {} (local) <-> {} (remote){}",
            s(&t["filter"]),
            endpoint(&t["local_addr"], &t["local_port"]),
            endpoint(&t["remote_addr"], &t["remote_port"]),
            if t["icmp_id"].is_null() {
                String::new()
            } else {
                format!(", icmp id {}", t["icmp_id"])
            }
        );
    }
    let verdict = &v["verdict"];
    if verdict["action"] == "forward" {
        let _ = writeln!(
            out,
            "verdict: permit, forwarded out of {}",
            s(&verdict["egress_port"])
        );
    } else if verdict["action"] == "hold" {
        let _ = writeln!(
            out,
            "verdict: held, the flow pending until decided (filter {})",
            s(&verdict["filter"])
        );
    } else {
        let _ = writeln!(
            out,
            "verdict: drop ({}{})",
            s(&verdict["reason"]),
            if verdict["filter"].is_null() {
                String::new()
            } else {
                format!(", filter {}", s(&verdict["filter"]))
            }
        );
    }
    out
}
