//! The compiled policy (SPEC §3–5): conditions, arbitration through real
//! configuration files, callouts and classify options. Reauthorization on
//! reload is in `policy/reauth.rs`; the index and `tunwall explain` agreeing
//! with their references, in `policy/properties.rs`.

mod common;
#[path = "policy/properties.rs"]
mod properties;
#[path = "policy/reauth.rs"]
mod reauth;

use common::*;
use std::sync::Arc;
use std::time::Duration;
use tunwall::engine::{HostModel, Verdict};
use tunwall::event::EventKind;
use tunwall::flow::FlowConfig;
use tunwall::packet::raw_addr;
use tunwall::policy::{Action, Authorizer, ClassifyFlags, ClassifyRequest, Layer, Policy};
use tunwall::reason::{CloseReason, DropReason};
use tunwall::testkit::compile_policy as compile;
use tunwall::time::Instant;

/// A request at `layer` for the given endpoints.
fn req(
    layer: Layer,
    local: &str,
    remote: &str,
    protocol: u8,
    lport: u16,
    rport: u16,
) -> ClassifyRequest {
    let (version, local_addr) = raw_addr(local.parse().unwrap());
    ClassifyRequest {
        layer,
        version,
        protocol,
        local_addr,
        remote_addr: raw_addr(remote.parse().unwrap()).1,
        local_port: lport,
        remote_port: rport,
        icmp: None,
        arrival_port: Some(LAN),
        source: None,
        flags: ClassifyFlags::empty(),
        original: None,
        now: Instant::ZERO,
        flow_id: None,
        completed: None,
    }
}

/// (action, deciding filter) for a request.
fn decide(p: &Policy, r: &ClassifyRequest) -> (Action, Option<String>) {
    let d = p.classify(r, &mut Vec::new());
    (d.action, d.filter.map(|f| f.to_string()))
}

fn blocked_by(p: &Policy, r: &ClassifyRequest, name: &str) -> bool {
    decide(p, r) == (Action::Block, Some(name.to_string()))
}

fn one(cond: &str) -> Policy {
    compile(
        &format!(
            "[identities]\nadmins = [\"198.18.2.10\", \"198.18.2.11/32\"]\nwebs = [\"198.18.9.0/24\"]\n\n[[filter]]\nname = \"x\"\nlayer = \"auth_connect\"\naction = \"block\"\n{cond}\n"
        ),
        None,
    )
}

#[test]
fn each_condition_type() {
    let tcp = |l: &str, r: &str, lp, rp| req(Layer::AuthConnect, l, r, 6, lp, rp);
    let p = one("protocol = \"tcp\"");
    assert!(blocked_by(&p, &tcp(C4, S4, 1, 2), "x"));
    assert!(!blocked_by(
        &p,
        &req(Layer::AuthConnect, C4, S4, 17, 1, 2),
        "x"
    ));
    let p = one("protocol = [17, \"gre\"]");
    assert!(blocked_by(
        &p,
        &req(Layer::AuthConnect, C4, S4, 47, 0, 0),
        "x"
    ));
    assert!(blocked_by(
        &p,
        &req(Layer::AuthConnect, C4, S4, 17, 0, 0),
        "x"
    ));
    assert!(!blocked_by(&p, &tcp(C4, S4, 1, 2), "x"));
    let p = one("ip_version = 6");
    assert!(blocked_by(&p, &tcp(C6, S6, 1, 2), "x"));
    assert!(!blocked_by(&p, &tcp(C4, S4, 1, 2), "x"));
    let p = one(
        "remote_address = [\"198.18.2.0/28\", \"198.18.5.5-198.18.5.9\"]\nlocal_address = \"198.18.1.10\"",
    );
    assert!(blocked_by(&p, &tcp(C4, "198.18.2.15", 1, 2), "x"));
    assert!(blocked_by(&p, &tcp(C4, "198.18.5.9", 1, 2), "x"));
    assert!(!blocked_by(&p, &tcp(C4, "198.18.2.16", 1, 2), "x"));
    assert!(
        !blocked_by(&p, &tcp("198.18.1.11", "198.18.2.15", 1, 2), "x"),
        "all conditions must match"
    );
    let p = one("remote_port = [22, \"80\", \"8000-8100\"]\nlocal_port = \"1024-65535\"");
    for (rp, hit) in [
        (22, true),
        (80, true),
        (8050, true),
        (8101, false),
        (23, false),
    ] {
        assert_eq!(
            blocked_by(&p, &tcp(C4, S4, 40000, rp), "x"),
            hit,
            "port {rp}"
        );
    }
    assert!(!blocked_by(&p, &tcp(C4, S4, 1000, 22), "x"));
    let p = one("protocol = \"icmp\"\nicmp_type = [8, 13]\nicmp_code = 0");
    let mut echo = req(Layer::AuthConnect, C4, S4, 1, 0, 0);
    echo.icmp = Some((8, 0));
    assert!(blocked_by(&p, &echo, "x"));
    echo.icmp = Some((8, 1));
    assert!(!blocked_by(&p, &echo, "x"));
    echo.icmp = Some((0, 0));
    assert!(!blocked_by(&p, &echo, "x"));
    let p = one("arrival_port = [\"lan2\", \"empty\"]");
    let mut r = tcp(C4, S4, 1, 2);
    assert!(!blocked_by(&p, &r, "x"));
    r.arrival_port = Some(LAN2);
    assert!(blocked_by(&p, &r, "x"));
    r.arrival_port = None;
    assert!(
        blocked_by(&p, &r, "x"),
        "\"empty\" matches an unknown arrival port"
    );
    let p = one("arrival_port = \"lan\"");
    r.arrival_port = None;
    assert!(
        !blocked_by(&p, &r, "x"),
        "a named port never matches FWP_EMPTY"
    );
    let p = one("remote_identity = [\"admins\", \"webs\"]");
    assert!(blocked_by(&p, &tcp(C4, "198.18.2.11", 1, 2), "x"));
    assert!(blocked_by(&p, &tcp(C4, "198.18.9.77", 1, 2), "x"));
    assert!(!blocked_by(&p, &tcp(C4, "198.18.2.12", 1, 2), "x"));
    let p = one("local_identity = \"webs\"");
    assert!(blocked_by(&p, &tcp("198.18.9.1", S4, 1, 2), "x"));
    let p = one("flags = [\"reauthorize\", \"fragment\"]\nnot_flags = [\"multicast\"]");
    let mut r = tcp(C4, S4, 1, 2);
    r.flags = ClassifyFlags::REAUTHORIZE;
    assert!(!blocked_by(&p, &r, "x"), "all listed flags must be set");
    r.flags = ClassifyFlags::REAUTHORIZE | ClassifyFlags::FRAGMENT;
    assert!(blocked_by(&p, &r, "x"));
    r.flags = ClassifyFlags::REAUTHORIZE | ClassifyFlags::FRAGMENT | ClassifyFlags::MULTICAST;
    assert!(!blocked_by(&p, &r, "x"), "not_flags");
    let p = one("flags = [\"broadcast\"]");
    r.flags = ClassifyFlags::BROADCAST;
    assert!(blocked_by(&p, &r, "x"));
}

#[test]
fn arbitration_through_config_files() {
    let p = compile(
        r#"
[[sublayer]]
name = "high"
weight = 100

[[sublayer]]
name = "low"
weight = 10

[[filter]]
name = "low-block-22"
layer = "auth_recv_accept"
sublayer = "low"
action = "block"
protocol = "tcp"
local_port = 22

[[filter]]
name = "high-hard-permit-22"
layer = "auth_recv_accept"
sublayer = "high"
action = "permit"
hard = true
protocol = "tcp"
local_port = 22

[[filter]]
name = "high-soft-permit-80"
layer = "auth_recv_accept"
sublayer = "high"
action = "permit"
protocol = "tcp"
local_port = 80

[[filter]]
name = "low-block-80"
layer = "auth_recv_accept"
sublayer = "low"
action = "block"
protocol = "tcp"
local_port = 80

[[filter]]
name = "soft-block-443"
layer = "auth_recv_accept"
sublayer = "high"
action = "block"
hard = false
local_port = 443

[[filter]]
name = "low-permit-443"
layer = "auth_recv_accept"
sublayer = "low"
action = "permit"
local_port = 443

[[filter]]
name = "first-in-file"
layer = "auth_recv_accept"
action = "block"
local_port = 8080

[[filter]]
name = "second-in-file"
layer = "auth_recv_accept"
action = "permit"
local_port = 8080

[[filter]]
name = "heavier"
layer = "auth_recv_accept"
action = "permit"
weight = 5
local_port = 9090

[[filter]]
name = "lighter"
layer = "auth_recv_accept"
action = "block"
weight = 1
local_port = 9090
"#,
        None,
    );
    let inbound = |port| req(Layer::AuthRecvAccept, C4, S4, 6, port, 50000);
    assert_eq!(
        decide(&p, &inbound(22)),
        (Action::Permit, Some("high-hard-permit-22".into()))
    );
    assert_eq!(
        decide(&p, &inbound(80)),
        (Action::Block, Some("low-block-80".into()))
    );
    assert_eq!(
        decide(&p, &inbound(443)),
        (Action::Permit, Some("low-permit-443".into()))
    );
    assert_eq!(
        decide(&p, &inbound(8080)),
        (Action::Block, Some("first-in-file".into()))
    );
    assert_eq!(
        decide(&p, &inbound(9090)),
        (Action::Permit, Some("heavier".into()))
    );
    assert_eq!(
        decide(&p, &inbound(7)),
        (Action::Block, None),
        "no match: [defaults]"
    );
    assert_eq!(
        decide(&p, &req(Layer::AuthConnect, C4, S4, 6, 22, 50000)),
        (Action::Permit, None)
    );
}

#[test]
fn a_rate_limit_callout_vetoes_a_hard_permit() {
    let text = r#"
[[sublayer]]
name = "admin"
weight = 100

[[filter]]
name = "ssh-hard"
layer = "auth_recv_accept"
sublayer = "admin"
action = "permit"
hard = true
local_port = 22

[[filter]]
name = "ssh-rate"
layer = "auth_recv_accept"
action = "callout"
callout = "rate_limit"
rate = "2/s"
local_port = 22

[[filter]]
name = "log-it"
layer = "auth_recv_accept"
action = "callout"
callout = "log"
weight = 10
"#;
    let p = Arc::new(compile(text, None));
    let mut h = Harness::with(FlowConfig::with_max_flows(64), HostModel::Weak, p.clone());
    for port in [50000, 50001] {
        let syn = tcp(ep(S4, port), ep(C4, 22), SYN, 1, 0, 1000, None, b"");
        assert_eq!(h.inb(syn), Verdict::Forward(LAN));
    }
    let syn = tcp(ep(S4, 50002), ep(C4, 22), SYN, 1, 0, 1000, None, b"");
    assert_eq!(h.inb(syn), Verdict::Drop(DropReason::Vetoed));
    let veto = h.events.iter().find_map(|e| match &e.kind {
        EventKind::Veto {
            filter,
            overridden_filter,
            ..
        } => Some((filter.to_string(), overridden_filter.to_string())),
        _ => None,
    });
    assert_eq!(veto, Some(("ssh-rate".into(), "ssh-hard".into())));
    assert_eq!(h.engine.stats().vetoes, 1);
    // The log callout ran for every classification and continued.
    let logs = h
        .events
        .iter()
        .filter(
            |e| matches!(&e.kind, EventKind::CalloutLog { filter, .. } if &**filter == "log-it"),
        )
        .count();
    assert_eq!(logs, 3);
}

#[test]
fn classify_options_shape_the_flows_they_create() {
    let p = Arc::new(compile(
        r#"
[[filter]]
name = "dns"
layer = "auth_connect"
action = "permit"
protocol = "udp"
remote_port = 53
unicast_lifetime = "3s"
loose_source_mapping = true

[[filter]]
name = "mdns-quiet"
layer = "auth_connect"
action = "permit"
protocol = "udp"
remote_port = 5353
deny_multicast_state = true

[[filter]]
name = "ssdp-long"
layer = "auth_connect"
action = "permit"
protocol = "udp"
remote_port = 1900
mcast_bcast_lifetime = "10s"
"#,
        None,
    ));
    let mut h = Harness::with(FlowConfig::with_max_flows(64), HostModel::Weak, p);
    // unicast_lifetime and loose source mapping.
    assert_eq!(
        h.out(udp(ep(C4, 4000), ep(S4, 53), b"q")),
        Verdict::Forward(WAN)
    );
    let dns = h.only_flow();
    assert_eq!(dns.timeout, Duration::from_secs(3));
    assert_eq!(
        h.inb(udp(ep("198.18.2.99", 53), ep(C4, 4000), b"a")),
        Verdict::Forward(LAN)
    );
    let child = h
        .flows()
        .into_iter()
        .find(|f| f.id != dns.id)
        .expect("loose-source child");
    assert_eq!(child.parent_id, Some(dns.id));
    h.advance(Duration::from_millis(3100));
    assert!(h.closed().contains(&(dns.id, CloseReason::IdleTimeout)));
    // Without the option (another port) an answer from elsewhere is refused.
    h.out(udp(ep(C4, 4001), ep(S4, 123), b"ntp"));
    assert_eq!(
        h.inb(udp(ep("198.18.2.98", 123), ep(C4, 4001), b"a")),
        Verdict::Drop(DropReason::AuthRecvAcceptBlocked)
    );
    // deny_multicast_state: permitted, no state, replies refused.
    let before = h.gw.flows_active();
    assert_eq!(
        h.out(udp(ep(C4, 5353), ep("239.255.255.250", 5353), b"q")),
        Verdict::Forward(WAN)
    );
    assert_eq!(h.gw.flows_active(), before);
    assert_eq!(
        h.inb(udp(ep(S4, 5353), ep(C4, 5353), b"a")),
        Verdict::Drop(DropReason::AuthRecvAcceptBlocked)
    );
    // mcast_bcast_lifetime: the state lives 10 s instead of 4.
    h.out(udp(ep(C4, 1900), ep("239.255.255.250", 1900), b"M-SEARCH"));
    h.advance(Duration::from_secs(8));
    assert_eq!(
        h.inb(udp(ep(S4, 1900), ep(C4, 1900), b"reply")),
        Verdict::Forward(LAN)
    );
}

#[test]
fn established_and_closure_callouts_run_at_their_moments() {
    let p = Arc::new(compile(
        r#"
[[filter]]
name = "log-established"
layer = "flow_established"
action = "callout"
callout = "log"
protocol = "tcp"

[[filter]]
name = "log-closed"
layer = "endpoint_closure"
action = "callout"
callout = "log"
"#,
        None,
    ));
    let mut h = Harness::with(FlowConfig::with_max_flows(64), HostModel::Weak, p);
    let logged = |h: &Harness, name: &str| {
        h.events
            .iter()
            .filter(|e| matches!(&e.kind, EventKind::CalloutLog { filter, flow: Some(_), .. } if &**filter == name))
            .count()
    };
    let conn = TcpConn::new(ep(C4, 40000), ep(S4, 80));
    h.out(conn.syn());
    h.inb(conn.syn_ack());
    assert_eq!(
        logged(&h, "log-established"),
        0,
        "not before the handshake completes"
    );
    h.out(conn.ack());
    assert_eq!(logged(&h, "log-established"), 1);
    h.out(udp(ep(C4, 1000), ep(S4, 53), b"q"));
    assert_eq!(
        logged(&h, "log-established"),
        1,
        "protocol = tcp keeps UDP out"
    );
    assert_eq!(logged(&h, "log-closed"), 0);
    h.engine.close_all(h.now, true);
    h.events.extend(h.engine.drain_events());
    assert_eq!(logged(&h, "log-closed"), 2);
}

#[test]
fn without_a_taker_for_flow_events_the_callouts_and_counters_still_run() {
    let p = Arc::new(compile(
        r#"
[[filter]]
name = "log-established"
layer = "flow_established"
action = "callout"
callout = "log"

[[filter]]
name = "log-closed"
layer = "endpoint_closure"
action = "callout"
callout = "log"
"#,
        None,
    ));
    let mut h = Harness::with(FlowConfig::with_max_flows(64), HostModel::Weak, p);
    h.engine.flow_events(false);
    let conn = TcpConn::new(ep(C4, 40000), ep(S4, 80));
    h.out(conn.syn());
    h.inb(conn.syn_ack());
    h.out(conn.ack());
    h.out(udp(ep(C4, 1000), ep(S4, 53), b"q"));
    h.engine.close_all(h.now, true);
    h.events.extend(h.engine.drain_events());
    let names: Vec<&str> = h.events.iter().map(|e| e.name()).collect();
    for lifecycle in ["flow_created", "flow_established", "flow_closed"] {
        assert!(!names.contains(&lifecycle), "{lifecycle} built: {names:?}");
    }
    let logs = |h: &Harness| {
        h.events
            .iter()
            .filter(|e| matches!(&e.kind, EventKind::CalloutLog { flow: Some(_), .. }))
            .count()
    };
    // Two established (TCP after its handshake, UDP at once), two closed.
    assert_eq!(logs(&h), 4, "{names:?}");
    assert_eq!(h.engine.stats().flows_created, 2);
    assert_eq!(h.engine.stats().flows_closed.iter().sum::<u64>(), 2);

    // Turned back on, the next flow is indicated as before.
    h.events.clear();
    h.engine.flow_events(true);
    h.out(udp(ep(C4, 1001), ep(S4, 53), b"q"));
    assert_eq!(h.created().len(), 1);
    assert_eq!(h.established().len(), 1);
}

#[test]
fn unrelated_icmp_errors_go_through_icmp_error() {
    let probe = udp(ep(C4, 5000), ep(S4, 9), b"x");
    let mut h = Harness::with(
        FlowConfig::with_max_flows(64),
        HostModel::Weak,
        Arc::new(compile("", None)),
    );
    assert_eq!(
        h.inb(icmp_error(S4, C4, 3, &probe)),
        Verdict::Drop(DropReason::IcmpErrorBlocked)
    );
    let layer = h.events.iter().find_map(|e| match &e.kind {
        EventKind::Discard { layer, .. } => Some(*layer),
        _ => None,
    });
    assert_eq!(layer, Some(Some(Layer::IcmpError)));
    h.engine.set_policy(Arc::new(compile(
        "[[filter]]\nname = \"unreachables\"\nlayer = \"icmp_error\"\naction = \"permit\"\nprotocol = \"icmp\"\nicmp_type = 3\n",
        None,
    )));
    assert_eq!(h.inb(icmp_error(S4, C4, 3, &probe)), Verdict::Forward(LAN));
}
