//! Operator commands at the engine (SPEC §12): the filtered, streamed flow
//! listing, closing flows with reason `admin`, per-filter counters and
//! every reason in `stats --json`.

mod common;

use common::*;
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use tunwall::config::Config;
use tunwall::control::flows::{Listing, write_flows};
use tunwall::engine::{HostModel, Verdict};
use tunwall::flow::{FlowConfig, FlowSelector};
use tunwall::io::worker::IoStats;
use tunwall::policy::{Action, CalloutRegistry, DefaultPolicy, Policy};
use tunwall::reason::{CloseReason, DropReason};

/// A harness whose default policy permits both directions, holding a TCP
/// flow lan→wan:22, a UDP flow lan→wan:53, an ICMP echo flow, an IPv6 UDP
/// flow and an inbound TCP flow wan→lan:80.
fn populated() -> Harness {
    let policy = DefaultPolicy {
        auth_recv_accept: Action::Permit,
        ..DefaultPolicy::default()
    };
    let mut h = Harness::with(
        FlowConfig::with_max_flows(1024),
        HostModel::Weak,
        Arc::new(policy),
    );
    let mut ssh = TcpConn::new(ep(C4, 40000), ep(S4, 22));
    ssh.handshake(&mut h);
    assert!(matches!(
        h.out(udp(ep(C4, 40001), ep(S4, 53), b"q")),
        Verdict::Forward(_)
    ));
    assert!(matches!(
        h.out(echo(C4, S4, true, 7, 1)),
        Verdict::Forward(_)
    ));
    assert!(matches!(
        h.out(udp(ep(C6, 40002), ep(S6, 53), b"q")),
        Verdict::Forward(_)
    ));
    let inbound = TcpConn::new(ep("198.18.7.7", 50000), ep("198.18.1.11", 80));
    assert!(matches!(h.inb(inbound.syn()), Verdict::Forward(_)));
    assert_eq!(h.flows().len(), 5);
    h
}

fn select(h: &Harness, request: Value) -> Result<FlowSelector, String> {
    let mut identities = HashMap::new();
    let mut admins = tunwall::policy::AddrSet::default();
    admins.add_net("198.18.7.0/24".parse().unwrap());
    identities.insert("admins".to_string(), admins);
    FlowSelector::from_json(Some(&request), &h.gw.port_names(), &identities)
}

/// The listing as the daemon writes it, parsed back.
fn listing(h: &Harness, request: Value, limit: Option<u64>) -> Value {
    let listing = Listing {
        selector: select(h, request).expect("selector"),
        limit,
        count: false,
        identities: Default::default(),
    };
    let mut out = Vec::new();
    write_flows(&h.gw, h.now, &listing, &mut out).expect("write");
    let text = String::from_utf8(out).expect("utf-8");
    // One flow per line between the brackets: the CLI renders line by line.
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.first(), Some(&"["), "{text}");
    assert_eq!(lines.last(), Some(&"]"), "{text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn ids(v: &Value) -> Vec<u64> {
    let mut ids: Vec<u64> = v
        .as_array()
        .expect("array")
        .iter()
        .map(|f| f["id"].as_u64().unwrap())
        .collect();
    ids.sort();
    ids
}

#[test]
fn flows_filters_all_must_match() {
    let h = populated();
    let all = listing(&h, serde_json::json!({}), None);
    assert_eq!(all.as_array().unwrap().len(), 5);
    let count = |request: Value| listing(&h, request, None).as_array().unwrap().len();
    assert_eq!(count(serde_json::json!({"protocol": "tcp"})), 2);
    assert_eq!(count(serde_json::json!({"protocol": "17"})), 2);
    assert_eq!(count(serde_json::json!({"protocol": "icmp"})), 1);
    assert_eq!(count(serde_json::json!({"state": "established"})), 1);
    assert_eq!(count(serde_json::json!({"state": "active"})), 3);
    assert_eq!(count(serde_json::json!({"direction": "inbound"})), 1);
    assert_eq!(count(serde_json::json!({"layer": "auth_connect"})), 4);
    // Either endpoint.
    assert_eq!(count(serde_json::json!({"addr": S4})), 3);
    assert_eq!(count(serde_json::json!({"addr": "198.18.1.11"})), 1);
    assert_eq!(count(serde_json::json!({"addr": S6})), 1);
    assert_eq!(count(serde_json::json!({"port": 53})), 2);
    assert_eq!(count(serde_json::json!({"port": 40000})), 1);
    assert_eq!(count(serde_json::json!({"arrival_port": "wan"})), 1);
    assert_eq!(count(serde_json::json!({"arrival_port": "lan2"})), 0);
    assert_eq!(count(serde_json::json!({"identity": "admins"})), 1);
    // All given filters must match.
    assert_eq!(
        count(serde_json::json!({"protocol": "udp", "port": 53, "addr": S6})),
        1
    );
    assert_eq!(
        count(serde_json::json!({"protocol": "tcp", "direction": "inbound", "port": 22})),
        0
    );
    let tcp = listing(&h, serde_json::json!({"protocol": "tcp", "port": 22}), None);
    assert_eq!(tcp[0]["remote_port"], 22);
    assert_eq!(tcp[0]["state"], "established");
}

#[test]
fn flows_bad_filters_are_named() {
    let h = populated();
    for (request, needle) in [
        (serde_json::json!({"protocol": "tcpp"}), "protocol"),
        (serde_json::json!({"state": "open"}), "state"),
        (serde_json::json!({"direction": "up"}), "direction"),
        (serde_json::json!({"layer": "flow_established"}), "layer"),
        (serde_json::json!({"addr": "198.18.1"}), "IP address"),
        (serde_json::json!({"port": 70000}), "port"),
        (serde_json::json!({"arrival_port": "dmz"}), "dmz"),
        (serde_json::json!({"identity": "nobody"}), "nobody"),
    ] {
        let e = select(&h, request.clone()).expect_err("refused");
        assert!(e.contains(needle), "{request}: {e}");
    }
}

#[test]
fn flows_limit_and_count() {
    let h = populated();
    assert_eq!(
        listing(&h, serde_json::json!({}), Some(2))
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        listing(&h, serde_json::json!({}), Some(0))
            .as_array()
            .unwrap()
            .len(),
        0
    );
    let mut out = Vec::new();
    let n = write_flows(
        &h.gw,
        h.now,
        &Listing {
            selector: select(&h, serde_json::json!({"protocol": "udp"})).unwrap(),
            limit: None,
            count: true,
            identities: Default::default(),
        },
        &mut out,
    )
    .unwrap();
    assert_eq!(n, 2);
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["count"], 2);
}

#[test]
fn a_listing_of_many_shards_is_streamed_shard_by_shard() {
    // 4 096 flows over 16 shards; the writer sees them in many writes and
    // every flow exactly once.
    let gw = tunwall::engine::Gateway::new(
        tunwall::engine::GatewayConfig {
            ports: ports(),
            flows: FlowConfig::with_max_flows(8192),
            host_model: HostModel::Weak,
            shards: Some(16),
        },
        Arc::new(DefaultPolicy::default()),
        1,
    );
    let mut engine = gw.engine(0);
    let now = tunwall::time::Instant::ZERO;
    for i in 0..4096u16 {
        let mut p = udp(ep(C4, 10000 + i), ep(S4, 53), b"q");
        assert!(matches!(
            engine.process(now, LAN, &mut p),
            Verdict::Forward(_)
        ));
    }
    struct Counting(Vec<u8>, usize);
    impl std::io::Write for Counting {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.1 += 1;
            self.0.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut out = Counting(Vec::new(), 0);
    let n = write_flows(&gw, now, &Listing::default(), &mut out).unwrap();
    assert_eq!(n, 4096);
    let v: Value = serde_json::from_slice(&out.0).unwrap();
    let mut ids = ids(&v);
    ids.dedup();
    assert_eq!(ids.len(), 4096);
    assert!(out.1 > 4096, "written flow by flow, not as one value");
}

#[test]
fn kill_closes_the_selected_flows_with_reason_admin() {
    let mut h = populated();
    let before = h.flows();
    let udp_ids: Vec<u64> = before
        .iter()
        .filter(|f| f.key.protocol == 17)
        .map(|f| f.id)
        .collect();
    let selector = select(&h, serde_json::json!({"protocol": "udp"})).unwrap();
    let closed = h
        .engine
        .close_matching(h.now, false, &selector, CloseReason::Admin);
    h.events.extend(h.engine.drain_events());
    assert_eq!(closed, 2);
    let mut admin: Vec<u64> = h
        .closed()
        .into_iter()
        .filter(|(_, r)| *r == CloseReason::Admin)
        .map(|(id, _)| id)
        .collect();
    admin.sort();
    assert_eq!(admin, udp_ids);
    assert_eq!(h.flows().len(), 3);
    assert_eq!(h.engine.stats().closed(CloseReason::Admin), 2);
    // By id.
    let id = h.flows()[0].id;
    let by_id = select(&h, serde_json::json!({"id": id})).unwrap();
    assert_eq!(
        h.engine
            .close_matching(h.now, false, &by_id, CloseReason::Admin),
        1
    );
    assert!(h.flows().iter().all(|f| f.id != id));
    // A closed UDP flow is new again: its next packet is classified anew.
    assert!(matches!(
        h.out(udp(ep(C4, 40001), ep(S4, 53), b"q")),
        Verdict::Forward(_)
    ));
    assert_eq!(h.flows().len(), 3);
}

fn compile(policy: &str) -> Policy {
    compile_policy(policy, None)
}

const COUNTED: &str = r#"
[[sublayer]]
name = "high"
weight = 10

[[filter]]
name = "see-udp"
layer = "auth_connect"
sublayer = "high"
action = "permit"
protocol = "udp"

[[filter]]
name = "no-dns"
layer = "auth_connect"
action = "block"
remote_port = 53

[[filter]]
name = "web-in"
layer = "auth_recv_accept"
action = "permit"
protocol = "tcp"
local_port = 80
"#;

#[test]
fn per_filter_counters() {
    let policy = Arc::new(compile(COUNTED));
    let mut h = Harness::with(
        FlowConfig::with_max_flows(1024),
        HostModel::Weak,
        Arc::clone(&policy) as _,
    );
    // UDP to 53: both filters match, the block of the lower sublayer decides.
    assert!(matches!(
        h.out(udp(ep(C4, 1000), ep(S4, 53), b"q")),
        Verdict::Drop(DropReason::AuthConnectBlocked)
    ));
    // UDP elsewhere: the permit matches and decides, a flow is created.
    for port in [1001, 1002] {
        assert!(matches!(
            h.out(udp(ep(C4, port), ep(S4, 5353), b"q")),
            Verdict::Forward(_)
        ));
    }
    // Its next packet rides the flow: not classified, not counted.
    assert!(matches!(
        h.out(udp(ep(C4, 1001), ep(S4, 5353), b"q")),
        Verdict::Forward(_)
    ));
    let web = TcpConn::new(ep("198.18.7.7", 50000), ep("198.18.1.11", 80));
    assert!(matches!(h.inb(web.syn()), Verdict::Forward(_)));
    let counts: HashMap<String, (String, [u64; 3])> = policy
        .filter_counts()
        .into_iter()
        .map(|(name, layer, c)| {
            (
                name.to_string(),
                (
                    layer.as_str().to_string(),
                    [c.matches, c.decisions, c.flows_created],
                ),
            )
        })
        .collect();
    assert_eq!(counts["see-udp"], ("auth_connect".into(), [3, 2, 2]));
    assert_eq!(counts["no-dns"], ("auth_connect".into(), [1, 1, 0]));
    assert_eq!(counts["web-in"], ("auth_recv_accept".into(), [1, 1, 1]));

    // A reload keeps the counters of filters that keep their name.
    let next = Policy::compile(
        &Config::parse(
            Path::new("ops.toml"),
            &format!("{PORTS_TOML}\n{}", COUNTED.replace("5353", "1")),
            &CalloutRegistry::default(),
        )
        .unwrap()
        .policy,
        &CalloutRegistry::default(),
        Some(&policy),
    )
    .unwrap();
    let kept = next
        .filter_counts()
        .into_iter()
        .find(|(n, _, _)| *n == "see-udp")
        .unwrap()
        .2;
    assert_eq!(kept.matches, 3);

    // stats --json: the filters object, every reason at zero, the I/O counters.
    let stats = tunwall::render::json::stats(
        h.engine.stats(),
        &IoStats::default(),
        &h.gw,
        policy.policy_generation(),
        1,
        &policy.filter_counts(),
    );
    assert_eq!(stats["filters"]["see-udp"]["matches"], 3);
    assert_eq!(stats["filters"]["web-in"]["layer"], "auth_recv_accept");
    assert_eq!(stats["filters"]["no-dns"]["decisions"], 1);
    for r in DropReason::ALL {
        assert!(stats["discards"][r.as_str()].is_u64(), "{r}");
    }
    for r in CloseReason::ALL {
        assert!(stats["flows_closed"][r.as_str()].is_u64(), "{r}");
    }
    assert_eq!(stats["flows_closed"]["admin"], 0);
    for k in ["read_errors", "write_errors", "events_dropped"] {
        assert!(stats[k].is_u64(), "{k}");
    }
    let prom = tunwall::render::prometheus::prometheus(&stats);
    assert!(
        prom.contains(
            "tunwall_filter_matches_total{layer=\"auth_connect\",filter=\"see-udp\"} 3\n"
        ),
        "{prom}"
    );
    assert!(prom.contains(
        "tunwall_filter_flows_created_total{layer=\"auth_recv_accept\",filter=\"web-in\"} 1\n"
    ));
    assert!(prom.contains("tunwall_discards_total{reason=\"vetoed\"} 0\n"));
    assert!(prom.contains("tunwall_flows_closed_total{reason=\"admin\"} 0\n"));
    for k in ["read_errors", "write_errors", "events_dropped"] {
        assert!(prom.contains(&format!("tunwall_{k}_total 0\n")), "{k}");
    }
}

#[test]
fn metrics_listen_must_be_an_address_and_port() {
    let registry = CalloutRegistry::default();
    let text = format!("{PORTS_TOML}\n[metrics]\nlisten = \"localhost\"\n");
    let e = Config::parse(Path::new("m.toml"), &text, &registry)
        .expect_err("refused")
        .to_string();
    assert!(e.contains("m.toml") && e.contains("ADDRESS:PORT"), "{e}");
    let text = format!("{PORTS_TOML}\n[metrics]\nlisten = \"[::1]:9560\"\n");
    let c = Config::parse(Path::new("m.toml"), &text, &registry).unwrap();
    assert_eq!(c.metrics_listen, Some("[::1]:9560".parse().unwrap()));
    // A reload cannot move it.
    let moved = Config::parse(
        Path::new("m.toml"),
        &text.replace("9560", "9561"),
        &registry,
    )
    .unwrap();
    assert!(c.reloadable_from(&moved).unwrap_err().contains("[metrics]"));
}

#[test]
fn flows_and_kill_match_translated_endpoints() {
    let policy = compile(&masquerade_filter(&["198.18.2.1"], None));
    let mut h = Harness::with(
        FlowConfig::with_max_flows(1024),
        HostModel::Weak,
        Arc::new(policy),
    );
    let mut p = udp(ep(C4, 40001), ep(S4, 53), b"q");
    assert!(matches!(
        h.send(LAN, std::mem::take(&mut p)),
        Verdict::Forward(_)
    ));
    assert_eq!(h.flows().len(), 1);
    // The public address appears only in the translated key.
    let public = select(&h, serde_json::json!({"addr": "198.18.2.1"})).unwrap();
    assert_eq!(
        listing(&h, serde_json::json!({"addr": "198.18.2.1"}), None)
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        listing(&h, serde_json::json!({"addr": "198.18.2.2"}), None)
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_eq!(
        h.engine
            .close_matching(h.now, false, &public, CloseReason::Admin),
        1
    );
    assert!(h.flows().is_empty());
}
