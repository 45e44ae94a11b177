//! The compiled policy (SPEC §3–5): conditions, arbitration through real
//! configuration files, callouts, classify options, reauthorization on
//! reload, and the index agreeing with in-order evaluation.

mod common;

use common::*;
use proptest::prelude::*;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tunwall::config::Config;
use tunwall::engine::{HostModel, Verdict};
use tunwall::event::EventKind;
use tunwall::explain::Outcome;
use tunwall::flow::FlowConfig;
use tunwall::packet::{IpVersion, raw_addr};
use tunwall::policy::{
    Action, Authorizer, CalloutRegistry, ClassifyFlags, ClassifyRequest, Layer, Policy, PolicyNote,
};
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

const BASE: &str = r#"
[[filter]]
name = "udp-in-9000"
layer = "auth_recv_accept"
action = "permit"
protocol = "udp"
local_port = 9000
"#;

fn reauthorized(h: &Harness) -> Vec<(u64, Action)> {
    h.events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::FlowReauthorized { flow, result, .. } => Some((flow.id, *result)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_reload_changes_the_generations_of_changed_layers_only() {
    let v1 = compile(BASE, None);
    let same = compile(BASE, Some(&v1));
    assert_eq!(same.changed_layers(), &[] as &[Layer]);
    assert_eq!(
        same.generation(Layer::AuthConnect),
        v1.generation(Layer::AuthConnect)
    );
    let v2 = compile(
        &format!(
            "{BASE}\n[[filter]]\nname = \"no-ssh-out\"\nlayer = \"auth_connect\"\naction = \"block\"\nremote_port = 22\n"
        ),
        Some(&v1),
    );
    assert_eq!(v2.changed_layers(), &[Layer::AuthConnect]);
    assert_eq!(
        v2.generation(Layer::AuthConnect),
        v1.generation(Layer::AuthConnect) + 1
    );
    assert_eq!(
        v2.generation(Layer::AuthRecvAccept),
        v1.generation(Layer::AuthRecvAccept)
    );

    let v1 = Arc::new(v1);
    let mut h = Harness::with(FlowConfig::with_max_flows(64), HostModel::Weak, v1.clone());
    let mut ssh = TcpConn::new(ep(C4, 40000), ep(S4, 22));
    ssh.handshake(&mut h);
    let mut web = TcpConn::new(ep(C4, 40001), ep(S4, 443));
    web.handshake(&mut h);
    assert_eq!(
        h.inb(udp(ep(S4, 7000), ep(C4, 9000), b"in")),
        Verdict::Forward(LAN)
    );
    let ids: Vec<u64> = h.flows().iter().map(|f| f.id).collect();
    let (ssh_id, web_id, in_id) = (ids[0], ids[1], ids[2]);
    // An identical reload reauthorizes nothing.
    h.engine.set_policy(Arc::new(compile(BASE, Some(&v1))));
    let d = ssh.client_data(10);
    assert_eq!(h.out(d), Verdict::Forward(WAN));
    assert!(reauthorized(&h).is_empty());
    // A block at auth_connect tears the ssh flow down on its next packet, with the filter named.
    h.engine.set_policy(Arc::new(v2));
    let d = ssh.client_data(10);
    assert_eq!(h.out(d), Verdict::Drop(DropReason::ReauthBlocked));
    assert!(h.closed().contains(&(ssh_id, CloseReason::ReauthBlocked)));
    let discard = h.events.iter().rev().find_map(|e| match &e.kind {
        EventKind::Discard {
            layer,
            filter,
            reason,
            ..
        } => Some((*layer, filter.as_deref().map(str::to_string), *reason)),
        _ => None,
    });
    assert_eq!(
        discard,
        Some((
            Some(Layer::AuthConnect),
            Some("no-ssh-out".into()),
            DropReason::ReauthBlocked
        ))
    );
    // A permit keeps the web flow and its TCP state.
    let d = web.client_data(10);
    assert_eq!(h.out(d), Verdict::Forward(WAN));
    let web_flow = h.flows().into_iter().find(|f| f.id == web_id).unwrap();
    assert_eq!(web_flow.state.as_str(), "established");
    // The inbound flow's layer did not change: no reauthorization.
    assert_eq!(
        h.inb(udp(ep(S4, 7000), ep(C4, 9000), b"in")),
        Verdict::Forward(LAN)
    );
    let r = reauthorized(&h);
    assert!(r.contains(&(ssh_id, Action::Block)));
    assert!(r.contains(&(web_id, Action::Permit)));
    assert!(!r.iter().any(|(id, _)| *id == in_id));
}

#[test]
fn a_new_arrival_port_is_reauthorized_with_that_port_in_the_weak_model() {
    let text = "[[filter]]\nname = \"no-lan2-reauth\"\nlayer = \"auth_connect\"\naction = \"block\"\narrival_port = \"lan2\"\nflags = [\"reauthorize\"]\n";
    for model in [HostModel::Weak, HostModel::Strong] {
        let p = Arc::new(compile(text, None));
        let mut h = Harness::with(FlowConfig::with_max_flows(64), model, p);
        let host = "198.18.3.10";
        // Created on lan2 (the filter only matches reauthorizations): permitted.
        assert_eq!(
            h.send(LAN2, udp(ep(host, 1000), ep(S4, 53), b"q")),
            Verdict::Forward(WAN)
        );
        // Another flow created on lan, then seen on lan2.
        assert_eq!(
            h.send(LAN, udp(ep(host, 1001), ep(S4, 53), b"q")),
            Verdict::Forward(WAN)
        );
        let id = h
            .flows()
            .into_iter()
            .find(|f| f.key.local_port == 1001)
            .unwrap()
            .id;
        let v = h.send(LAN2, udp(ep(host, 1001), ep(S4, 53), b"q"));
        match model {
            HostModel::Weak => {
                assert_eq!(v, Verdict::Drop(DropReason::ReauthBlocked));
                assert!(h.closed().contains(&(id, CloseReason::ReauthBlocked)));
            }
            HostModel::Strong => {
                assert_eq!(v, Verdict::Drop(DropReason::WrongInterface));
                assert!(h.flows().iter().any(|f| f.id == id));
            }
        }
    }
}

#[test]
fn a_reauthorization_against_the_flow_sees_an_empty_arrival_port() {
    let v1 = Arc::new(compile("", None));
    let mut h = Harness::with(FlowConfig::with_max_flows(64), HostModel::Weak, v1.clone());
    h.out(udp(ep(C4, 1000), ep(S4, 53), b"q"));
    h.out(udp(ep(C4, 1001), ep(S4, 53), b"q"));
    let empty = compile(
        "[[filter]]\nname = \"cut-empty\"\nlayer = \"auth_connect\"\naction = \"block\"\narrival_port = \"empty\"\nlocal_port = 1000\n\n[[filter]]\nname = \"cut-lan\"\nlayer = \"auth_connect\"\naction = \"block\"\narrival_port = \"lan\"\nflags = [\"reauthorize\"]\nlocal_port = 1001\n",
        Some(&v1),
    );
    h.engine.set_policy(Arc::new(empty));
    // Replies trigger the reauthorization: the arrival interface is unknown.
    assert_eq!(
        h.inb(udp(ep(S4, 53), ep(C4, 1000), b"a")),
        Verdict::Drop(DropReason::ReauthBlocked)
    );
    assert_eq!(
        h.inb(udp(ep(S4, 53), ep(C4, 1001), b"a")),
        Verdict::Forward(LAN),
        "a named port does not match FWP_EMPTY"
    );
}

#[test]
fn a_reauthorize_flag_filter_blocks_reauthorizations_but_not_new_flows() {
    let v1 = Arc::new(compile("", None));
    let mut h = Harness::with(FlowConfig::with_max_flows(64), HostModel::Weak, v1.clone());
    h.out(udp(ep(C4, 1000), ep(S4, 53), b"q"));
    let v2 = compile(
        "[[filter]]\nname = \"no-reauth\"\nlayer = \"auth_connect\"\naction = \"block\"\nflags = [\"reauthorize\"]\n",
        Some(&v1),
    );
    h.engine.set_policy(Arc::new(v2));
    assert_eq!(
        h.out(udp(ep(C4, 1001), ep(S4, 53), b"q")),
        Verdict::Forward(WAN),
        "new flows pass"
    );
    assert_eq!(
        h.out(udp(ep(C4, 1000), ep(S4, 53), b"q")),
        Verdict::Drop(DropReason::ReauthBlocked)
    );
}

/// A random filter over small value domains, as TOML.
fn filter_text() -> impl Strategy<Value = String> {
    let layer = prop::sample::select(vec!["auth_connect", "auth_recv_accept", "icmp_error"]);
    let action = prop::sample::select(vec![
        "action = \"permit\"",
        "action = \"permit\"\nhard = true",
        "action = \"block\"",
        "action = \"block\"\nhard = false",
        "action = \"callout\"\ncallout = \"log\"",
    ]);
    let sublayer = prop::sample::select(vec!["default", "a", "b"]);
    let pick =
        |values: Vec<&'static str>| prop::option::weighted(0.3, prop::sample::select(values));
    let cond = (
        pick(vec!["protocol = \"tcp\"", "protocol = [\"udp\", 1]"]),
        pick(vec!["ip_version = 4"]),
        pick(vec![
            "remote_address = \"198.18.2.0/30\"",
            "remote_address = [\"198.18.2.1\", \"198.18.2.4-198.18.2.6\"]",
        ]),
        pick(vec!["local_address = \"198.18.1.0/31\""]),
        pick(vec!["remote_port = [1, \"3-5\"]"]),
        pick(vec!["local_port = 2", "local_port = \"1-3\""]),
        pick(vec![
            "arrival_port = [\"lan\", \"empty\"]",
            "arrival_port = \"lan2\"",
        ]),
        pick(vec!["flags = [\"reauthorize\"]"]),
        pick(vec!["not_flags = [\"fragment\"]"]),
        pick(vec!["remote_identity = \"group\""]),
    )
        .prop_map(|(a, b, c, d, e, f, g, h, i, j)| {
            [a, b, c, d, e, f, g, h, i, j]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
        });
    (layer, action, sublayer, 0u8..3, cond).prop_map(|(layer, action, sublayer, weight, cond)| {
        // icmp_error sees only ICMP, which has no ports: such conditions are
        // a configuration error (SPEC §14).
        let cond: Vec<_> = cond
            .into_iter()
            .filter(|c| {
                layer != "icmp_error"
                    || !(c.starts_with("remote_port") || c.starts_with("local_port"))
            })
            .collect();
        format!(
            "layer = \"{layer}\"\nsublayer = \"{sublayer}\"\nweight = {weight}\n{action}\n{}\n",
            cond.join("\n")
        )
    })
}

fn request() -> impl Strategy<Value = ClassifyRequest> {
    (
        prop::sample::select(vec![
            Layer::AuthConnect,
            Layer::AuthRecvAccept,
            Layer::IcmpError,
        ]),
        prop::sample::select(vec![6u8, 17, 1]),
        0u8..8,
        0u8..3,
        0u16..7,
        0u16..7,
        prop::option::of(0u8..3),
        0u8..8,
    )
        .prop_map(
            |(layer, protocol, remote, local, lport, rport, arrival, flags)| ClassifyRequest {
                layer,
                version: IpVersion::V4,
                protocol,
                local_addr: raw_addr(std::net::IpAddr::from([198, 18, 1, local])).1,
                remote_addr: raw_addr(std::net::IpAddr::from([198, 18, 2, remote])).1,
                local_port: lport,
                remote_port: rport,
                icmp: (protocol == 1).then_some((8, 0)),
                arrival_port: arrival,
                source: None,
                flags: [
                    ClassifyFlags::empty(),
                    ClassifyFlags::REAUTHORIZE,
                    ClassifyFlags::FRAGMENT,
                ][usize::from(flags % 3)],
                original: None,
                now: Instant::ZERO,
                flow_id: None,
                completed: None,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, .. ProptestConfig::default() })]

    #[test]
    fn the_index_agrees_with_in_order_evaluation(
        filters in prop::collection::vec(filter_text(), 1..60),
        requests in prop::collection::vec(request(), 20),
    ) {
        let mut text = String::from("[identities]\ngroup = [\"198.18.2.2\", \"198.18.2.7\"]\n\n[[sublayer]]\nname = \"a\"\nweight = 5\n\n[[sublayer]]\nname = \"b\"\nweight = 7\n");
        for (i, f) in filters.iter().enumerate() {
            text.push_str(&format!("\n[[filter]]\nname = \"f{i}\"\n{f}"));
        }
        let policy = compile(&text, None);
        for r in &requests {
            let mut e1: Vec<PolicyNote> = Vec::new();
            let mut e2: Vec<PolicyNote> = Vec::new();
            let indexed = policy.classify(r, &mut e1);
            let naive = policy.classify_unindexed(r, &mut e2);
            prop_assert_eq!((indexed.action, indexed.filter, indexed.vetoed), (naive.action, naive.filter, naive.vetoed), "request {:?}", r);
            prop_assert_eq!(e1, e2);
        }
    }
}

#[test]
fn ten_thousand_filters_agree_with_in_order_evaluation() {
    let mut text = String::new();
    for i in 0..10_000u32 {
        let (b, c) = (i / 250 % 250, i % 250);
        let body = match i % 4 {
            0 => format!("remote_address = \"198.19.{b}.{c}\""),
            1 => format!(
                "remote_address = \"198.19.{b}.0/24\"\nremote_port = {}",
                1000 + i % 100
            ),
            2 => format!("local_port = \"{}-{}\"", 2000 + i % 300, 2005 + i % 300),
            _ => format!("protocol = {}", if i % 8 == 3 { 17 } else { 6 }),
        };
        let action = if i % 3 == 0 { "block" } else { "permit" };
        text.push_str(&format!("\n[[filter]]\nname = \"f{i}\"\nlayer = \"auth_connect\"\naction = \"{action}\"\nweight = {}\n{body}\n", i % 5));
    }
    let policy = compile(&text, None);
    let mut seed = 7u64;
    for _ in 0..500 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let r = ClassifyRequest {
            layer: Layer::AuthConnect,
            version: IpVersion::V4,
            protocol: if seed >> 60 & 1 == 0 { 6 } else { 17 },
            local_addr: raw_addr(C4.parse().unwrap()).1,
            remote_addr: raw_addr(std::net::IpAddr::from([
                198,
                19,
                (seed >> 8) as u8 % 45,
                (seed >> 16) as u8 % 250,
            ]))
            .1,
            local_port: 1990 + (seed >> 24) as u16 % 320,
            remote_port: 995 + (seed >> 40) as u16 % 110,
            icmp: None,
            arrival_port: Some(LAN),
            source: None,
            flags: ClassifyFlags::empty(),
            original: None,
            now: Instant::ZERO,
            flow_id: None,
            completed: None,
        };
        let a = policy.classify(&r, &mut Vec::new());
        let b = policy.classify_unindexed(&r, &mut Vec::new());
        assert_eq!((a.action, a.filter), (b.action, b.filter), "{r:?}");
    }
}

/// A random first packet in `tunwall explain` syntax, over the addresses
/// and ports the random filters use.
fn explain_packet() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec!["tcp", "udp", "icmp"]),
        prop::bool::ANY,
        0u8..8,
        0u8..3,
        0u16..7,
        0u16..7,
        prop::sample::select(vec!["lan", "wan", "lan2"]),
        prop::bool::ANY,
    )
        .prop_map(
            |(proto, outbound, remote, local, lport, rport, arrival, reauth)| {
                let (local, remote) = (format!("198.18.1.{local}"), format!("198.18.2.{remote}"));
                let (src, dst, sport, dport) = if outbound {
                    (local, remote, lport, rport)
                } else {
                    (remote, local, rport, lport)
                };
                let flags = if reauth { " flags reauthorize" } else { "" };
                match proto {
                    "icmp" => {
                        format!("icmp {src} -> {dst} type 8 code 0 id 7 arrival {arrival}{flags}")
                    }
                    p => format!("{p} {src}:{sport} -> {dst}:{dport} arrival {arrival}{flags}"),
                }
            },
        )
}

/// A random filter of the translation (SPEC §9): at a redirect layer (a
/// redirect or an exemption), or at an auth layer on the translated flow
/// (`original_*` conditions, the `redirected` flag).
fn translation_filter_text() -> impl Strategy<Value = String> {
    let pick =
        |values: Vec<&'static str>| prop::option::weighted(0.3, prop::sample::select(values));
    let cond = (
        pick(vec!["protocol = \"tcp\"", "protocol = [\"udp\", 1]"]),
        pick(vec!["remote_address = \"198.18.2.0/30\""]),
        pick(vec!["local_address = \"198.18.1.0/31\""]),
        pick(vec!["remote_port = [1, \"3-5\"]"]),
        pick(vec!["local_port = \"1-3\""]),
        pick(vec!["arrival_port = \"lan\"", "arrival_port = \"wan\""]),
    )
        .prop_map(|(a, b, c, d, e, f)| {
            [a, b, c, d, e, f].into_iter().flatten().collect::<Vec<_>>()
        });
    let what = prop::sample::select(vec![
        "layer = \"bind_redirect\"\naction = \"redirect\"\nto_address = [\"198.18.2.100\", \"fd00:9::100\"]",
        "layer = \"bind_redirect\"\naction = \"redirect\"\nto_address = \"198.18.2.101\"\nto_port = \"20000-20003\"",
        "layer = \"bind_redirect\"\naction = \"redirect\"\nto_address = \"198.18.1.1\"\nto_port = 6",
        "layer = \"bind_redirect\"\naction = \"permit\"",
        "layer = \"connect_redirect\"\naction = \"redirect\"\nto_address = \"198.18.2.5\"\nto_port = 3",
        "layer = \"connect_redirect\"\naction = \"redirect\"\nto_port = \"1-2\"",
        "layer = \"connect_redirect\"\naction = \"permit\"",
        "layer = \"auth_connect\"\naction = \"block\"\nflags = [\"redirected\"]",
        "layer = \"auth_connect\"\naction = \"permit\"\nhard = true\noriginal_remote_port = \"3-5\"",
        "layer = \"auth_recv_accept\"\naction = \"permit\"\noriginal_local_address = \"198.18.2.100\"",
        "layer = \"auth_recv_accept\"\naction = \"block\"\nnot_flags = [\"redirected\"]\noriginal_remote_address = \"198.18.2.0/29\"",
    ]);
    let sublayer = prop::sample::select(vec!["default", "a", "b"]);
    (what, sublayer, 0u8..3, cond).prop_map(|(what, sublayer, weight, cond)| {
        format!(
            "{what}\nsublayer = \"{sublayer}\"\nweight = {weight}\n{}\n",
            cond.join("\n")
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, .. ProptestConfig::default() })]

    /// `tunwall explain` decides as the gateway does: its verdict is the
    /// engine's for the same packet under the same policy (without the
    /// reauthorize flag, which a first packet never carries), and every
    /// classification it shows is the policy's in-order decision.
    #[test]
    fn explain_agrees_with_the_engine(
        filters in prop::collection::vec(filter_text(), 0..40),
        translations in prop::collection::vec(translation_filter_text(), 0..12),
        packets in prop::collection::vec(explain_packet(), 10),
    ) {
        let mut text = String::from("[identities]\ngroup = [\"198.18.2.2\", \"198.18.2.7\"]\n\n[[sublayer]]\nname = \"a\"\nweight = 5\n\n[[sublayer]]\nname = \"b\"\nweight = 7\n");
        for (i, f) in filters.iter().chain(&translations).enumerate() {
            text.push_str(&format!("\n[[filter]]\nname = \"f{i}\"\n{f}"));
        }
        let registry = CalloutRegistry::default();
        let config = Config::parse(Path::new("explain.toml"), &format!("{PORTS_TOML}\n{text}"), &registry)
            .unwrap_or_else(|e| panic!("{e}"));
        for line in &packets {
            let packet = tunwall::explain::ExplainPacket::parse(line).expect("packet");
            let policy = Arc::new(Policy::compile(&config.policy, &registry, None).unwrap());
            let explained = tunwall::explain::explain(&config, Arc::clone(&policy), &packet).unwrap();
            for c in &explained.classifications {
                let shown = tunwall::render::explain::json(&explained);
                let decision = match &c.outcome {
                    Outcome::Decision(d) => d,
                    Outcome::Redirect(r) => {
                        let reference = policy.redirect_unindexed(&c.request);
                        prop_assert_eq!(r, &reference, "{} {:?}", line, c.request);
                        continue;
                    }
                };
                let reference = policy.classify_unindexed(&c.request, &mut Vec::new());
                prop_assert_eq!(
                    (decision.action, &decision.filter),
                    (reference.action, &reference.filter),
                    "{} {:?}", line, c.request
                );
                if let Some(filter) = decision.filter.as_deref() {
                    let layer = shown["layers"].as_array().unwrap().iter()
                        .find(|l| l["layer"] == c.request.layer.as_str()).unwrap();
                    let entry = layer["filters"].as_array().unwrap().iter()
                        .find(|f| f["filter"] == filter).unwrap();
                    prop_assert_eq!(&entry["matched"], &serde_json::json!(true), "{}", line);
                }
            }
            if packet.reauthorize {
                continue;
            }
            let fresh = Arc::new(Policy::compile(&config.policy, &registry, None).unwrap());
            let mut h = Harness::with(FlowConfig::with_max_flows(64), HostModel::Weak, fresh);
            let arrival = explained.ports.iter().position(|p| *p == packet.arrival).unwrap() as u8;
            let verdict = h.send(arrival, packet.bytes());
            prop_assert_eq!(explained.verdict, verdict, "{}", line);
            // The translation explain shows is the one the gateway makes.
            let made = h.flows().into_iter().find_map(|f| f.translation);
            prop_assert_eq!(&explained.translation, &made, "{}", line);
        }
    }
}
