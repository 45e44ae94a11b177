//! Pended classification (SPEC §10) on the virtual clock: a callout pends a
//! new flow, its packets are held in order within their bounds, and a
//! completion — decided, timed out, from another thread, racing a reload
//! or at shutdown — reauthorizes it and releases or drops what it held.
//! Completions from outside the worker (an embedder's thread, a carry to
//! another process) are in `pend/embedder.rs`.

mod common;
#[path = "pend/embedder.rs"]
mod embedder;

use common::*;
use std::sync::Arc;
use std::time::Duration;
use tunwall::engine::{HostModel, PendError, Verdict};
use tunwall::event::{EventKind, ReauthTrigger};
use tunwall::flow::{FlowConfig, FlowState};
use tunwall::policy::{Action, Authorizer, CalloutRegistry, Layer, Policy};
use tunwall::reason::{CloseReason, DropReason};

/// Outbound flows to port 22 and inbound flows to port 8080 are asked about.
const ASK: &str = r#"
[[filter]]
name = "ask-ssh"
layer = "auth_connect"
action = "callout"
callout = "ask"
remote_port = 22
pend_timeout = "10s"

[[filter]]
name = "ask-web"
layer = "auth_recv_accept"
action = "callout"
callout = "ask"
local_port = 8080
protocol = "tcp"
"#;

/// `ASK` plus, in a sublayer above it, a (hard) block filter `name` of
/// `auth_connect` with `conditions`.
fn ask_and_guard(name: &str, conditions: &str) -> String {
    format!(
        "{ASK}\n[[sublayer]]\nname = \"guard\"\nweight = 10\n\n[[filter]]\nname = \"{name}\"\nlayer = \"auth_connect\"\nsublayer = \"guard\"\naction = \"block\"\n{conditions}\n"
    )
}

fn compile_with(text: &str, registry: &CalloutRegistry, previous: Option<&Policy>) -> Arc<Policy> {
    let text = format!("{PORTS_TOML}\n{text}");
    let config = tunwall::config::Config::parse(std::path::Path::new("pend.toml"), &text, registry)
        .unwrap_or_else(|e| panic!("{e}"));
    Arc::new(Policy::compile(&config.policy, registry, previous).expect("compile"))
}

fn compile(text: &str, previous: Option<&Policy>) -> Arc<Policy> {
    compile_with(text, &CalloutRegistry::default(), previous)
}

fn harness(flows: FlowConfig, policy: Arc<Policy>) -> Harness {
    Harness::with(flows, HostModel::Weak, policy as Arc<dyn Authorizer>)
}

fn asked() -> Harness {
    harness(FlowConfig::with_max_flows(1024), compile(ASK, None))
}

fn pending_id(h: &Harness) -> u64 {
    let pending = h.gw.pending();
    assert_eq!(pending.len(), 1, "{pending:#?}");
    pending[0].flow.id
}

fn reauthorized(h: &Harness) -> Vec<(ReauthTrigger, Action, Option<String>)> {
    h.events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::FlowReauthorized {
                trigger,
                result,
                filter,
                ..
            } => Some((*trigger, *result, filter.as_deref().map(str::to_string))),
            _ => None,
        })
        .collect()
}

/// (reason, layer, filter) of every discard event.
fn discards(h: &Harness) -> Vec<(DropReason, Option<Layer>, Option<String>)> {
    h.events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Discard {
                reason,
                layer,
                filter,
                ..
            } => Some((*reason, *layer, filter.as_deref().map(str::to_string))),
            _ => None,
        })
        .collect()
}

fn ssh() -> TcpConn {
    TcpConn::new(ep(C4, 40_000), ep(S4, 22))
}

#[test]
fn a_pended_flow_holds_both_directions_in_order_and_permit_releases_them() {
    let mut h = asked();
    let (client, server) = (ep(C4, 5000), ep(S4, 22));
    let sent: Vec<(u8, Vec<u8>)> = vec![
        (LAN, udp(client, server, b"one")),
        (LAN, udp(client, server, b"two")),
        (WAN, udp(server, client, b"reply")),
        (LAN, udp(client, server, b"three")),
    ];
    for (port, packet) in &sent {
        assert_eq!(h.send(*port, packet.clone()), Verdict::Held);
    }
    let flow = h.only_flow();
    assert_eq!(flow.state, FlowState::Pending);
    assert!(!flow.established);
    let created = h.named("flow_created");
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].flow().unwrap().state, FlowState::Pending);
    let pended = h.named("flow_pending");
    assert_eq!(pended.len(), 1);
    match &pended[0].kind {
        EventKind::FlowPending {
            flow: f,
            filter,
            layer,
            timeout,
        } => {
            assert_eq!(f.id, flow.id);
            assert_eq!(filter.as_deref(), Some("ask-ssh"));
            assert_eq!(*layer, Layer::AuthConnect);
            assert_eq!(timeout.timeout, Duration::from_secs(10));
            assert_eq!(timeout.timeout_action, Action::Block);
        }
        other => panic!("{other:?}"),
    }
    let info = &h.gw.pending()[0];
    assert_eq!(info.packets, 4);
    assert_eq!(
        info.bytes,
        sent.iter().map(|(_, p)| p.len()).sum::<usize>(),
        "IP packet lengths"
    );
    assert!(h.released.is_empty());

    assert_eq!(h.gw.complete(flow.id, Action::Permit), Ok(()));
    assert_eq!(
        h.gw.complete(flow.id, Action::Block),
        Err(PendError::Decided),
        "a flow is decided once"
    );
    assert_eq!(
        h.gw.complete(flow.id + 100, Action::Permit),
        Err(PendError::Unknown)
    );
    assert!(h.released.is_empty(), "the worker applies the completion");
    h.apply_completions();
    let expected: Vec<(u8, Vec<u8>)> = sent
        .iter()
        .map(|(port, p)| (if *port == LAN { WAN } else { LAN }, p.clone()))
        .collect();
    assert_eq!(h.released, expected, "in arrival order, to their egress");
    assert_eq!(
        reauthorized(&h),
        vec![(
            ReauthTrigger::PendComplete,
            Action::Permit,
            Some("ask-ssh".into())
        )]
    );
    let flow = h.only_flow();
    assert_eq!(flow.state, FlowState::Active);
    assert!(flow.established);
    assert_eq!(flow.out.0, 3, "held packets are counted as they leave");
    assert_eq!(flow.inbound.0, 1);
    assert!(h.gw.pending().is_empty());
    assert_eq!(
        h.gw.complete(flow.id, Action::Permit),
        Err(PendError::Unknown)
    );
    // The flow now proceeds like any other.
    assert_eq!(h.out(udp(client, server, b"four")), Verdict::Forward(WAN));
}

#[test]
fn released_tcp_segments_go_through_tracking() {
    let mut h = asked();
    let mut c = ssh();
    assert_eq!(h.out(c.syn()), Verdict::Held);
    assert_eq!(h.out(c.syn()), Verdict::Held, "a retransmitted SYN");
    let id = pending_id(&h);
    h.gw.complete(id, Action::Permit).unwrap();
    h.apply_completions();
    assert_eq!(h.released.len(), 2);
    assert!(
        h.released
            .iter()
            .all(|(port, p)| *port == WAN && *p == c.syn())
    );
    assert_eq!(h.only_flow().state.as_str(), "syn_sent");
    assert!(h.established().is_empty());
    assert_eq!(h.inb(c.syn_ack()), Verdict::Forward(LAN));
    assert_eq!(h.out(c.ack()), Verdict::Forward(WAN));
    assert_eq!(h.only_flow().state.as_str(), "established");
    assert_eq!(h.established(), vec![id]);
    c.c_seq += 1;
    c.s_seq += 1;
    let data = c.client_data(100);
    assert_eq!(h.out(data), Verdict::Forward(WAN));
}

#[test]
fn block_drops_the_held_packets_and_closes_the_flow() {
    let mut h = asked();
    let c = ssh();
    assert_eq!(h.out(c.syn()), Verdict::Held);
    assert_eq!(h.out(c.syn()), Verdict::Held);
    let id = pending_id(&h);
    h.gw.complete(id, Action::Block).unwrap();
    h.apply_completions();
    assert!(h.released.is_empty());
    assert!(h.flows().is_empty());
    assert_eq!(h.closed(), vec![(id, CloseReason::ReauthBlocked)]);
    assert_eq!(
        discards(&h),
        vec![
            (
                DropReason::ReauthBlocked,
                Some(Layer::AuthConnect),
                Some("ask-ssh".into())
            );
            2
        ]
    );
    assert_eq!(h.discards(DropReason::ReauthBlocked), 2);
    assert_eq!(
        reauthorized(&h),
        vec![(
            ReauthTrigger::PendComplete,
            Action::Block,
            Some("ask-ssh".into())
        )]
    );
    // A new SYN is asked about again.
    assert_eq!(h.out(c.syn()), Verdict::Held);
}

#[test]
fn per_flow_bounds_drop_with_pend_queue_full() {
    let mut flows = FlowConfig::with_max_flows(1024);
    flows.pend_queue_packets = 3;
    let mut h = harness(flows.clone(), compile(ASK, None));
    let (client, server) = (ep(C4, 5000), ep(S4, 22));
    for i in 0..5u8 {
        let verdict = h.out(udp(client, server, &[i]));
        let expected = if i < 3 {
            Verdict::Held
        } else {
            Verdict::Drop(DropReason::PendQueueFull)
        };
        assert_eq!(verdict, expected, "packet {i}");
    }
    assert_eq!(h.discards(DropReason::PendQueueFull), 2);
    assert_eq!(h.gw.pending()[0].packets, 3);

    flows.pend_queue_bytes = 100;
    let mut h = harness(flows, compile(ASK, None));
    let first = udp(client, server, &[1; 40]);
    let second = udp(client, server, &[2; 40]);
    assert_eq!(first.len() + second.len(), 136);
    assert_eq!(h.out(first.clone()), Verdict::Held);
    assert_eq!(h.out(second), Verdict::Drop(DropReason::PendQueueFull));
    let small = udp(client, server, &[3; 4]);
    assert_eq!(
        h.out(small.clone()),
        Verdict::Held,
        "what fits is still held"
    );
    h.gw.complete(pending_id(&h), Action::Permit).unwrap();
    h.apply_completions();
    assert_eq!(h.released, vec![(WAN, first), (WAN, small)]);
}

#[test]
fn pend_max_flows_blocks_new_flows_and_pending_flows_are_never_evicted() {
    let mut flows = FlowConfig::with_max_flows(3);
    flows.pend_max_flows = 2;
    let mut h = harness(flows, compile(ASK, None));
    for port in [40_001, 40_002] {
        let c = TcpConn::new(ep(C4, port), ep(S4, 22));
        assert_eq!(h.out(c.syn()), Verdict::Held);
    }
    let third = TcpConn::new(ep(C4, 40_003), ep(S4, 22));
    assert_eq!(h.out(third.syn()), Verdict::Drop(DropReason::PendLimit));
    assert_eq!(
        discards(&h),
        vec![(
            DropReason::PendLimit,
            Some(Layer::AuthConnect),
            Some("ask-ssh".into())
        )]
    );
    assert_eq!(h.gw.pending().len(), 2);
    let stats = h.engine.stats();
    let layer = Layer::AuthConnect.index();
    assert_eq!((stats.layer_pend[layer], stats.layer_block[layer]), (2, 1));
    // The table holds 3: one ordinary embryonic flow fits, and the next
    // new flow evicts it, never a pending one.
    let web = |port| TcpConn::new(ep(C4, port), ep(S4, 443));
    assert_eq!(h.out(web(50_001).syn()), Verdict::Forward(WAN));
    assert_eq!(h.out(web(50_002).syn()), Verdict::Forward(WAN));
    assert_eq!(h.flows().len(), 3);
    // With the table full the adaptive factor is 0: the ordinary flow has
    // expired and goes; the pending ones neither expire nor are evicted.
    let pending: Vec<u64> = h.gw.pending().iter().map(|p| p.flow.id).collect();
    assert_eq!(h.closed().len(), 1);
    assert!(!pending.contains(&h.closed()[0].0));
    assert_eq!(pending.len(), 2);
    // Pending flows do not idle out either: only their pend timeout ends them.
    h.advance(Duration::from_secs(9));
    assert_eq!(h.gw.pending().len(), 2);
    assert_eq!(
        h.flows()
            .iter()
            .filter(|f| f.state == FlowState::Pending)
            .count(),
        2
    );
}

#[test]
fn a_new_flow_beyond_max_flows_is_not_pended() {
    let mut flows = FlowConfig::with_max_flows(1);
    flows.pend_max_flows = 4;
    let mut h = harness(flows, compile(ASK, None));
    assert_eq!(h.out(ssh().syn()), Verdict::Held);
    let other = TcpConn::new(ep(C4, 40_100), ep(S4, 22));
    assert_eq!(
        h.out(other.syn()),
        Verdict::Drop(DropReason::FlowTableFull),
        "a pending flow counts toward max_flows and is not evicted"
    );
    assert_eq!(h.gw.pending().len(), 1);
}

#[test]
fn the_pend_timeout_completes_with_its_timeout_action() {
    for (action, timeout) in [("block", None), ("permit", Some("3s"))] {
        let text = format!(
            r#"
[[filter]]
name = "ask"
layer = "auth_connect"
action = "callout"
callout = "ask"
timeout_action = "{action}"
{}
"#,
            timeout.map_or(String::new(), |t| format!("pend_timeout = \"{t}\""))
        );
        let mut h = harness(FlowConfig::with_max_flows(64), compile(&text, None));
        let packet = udp(ep(C4, 5000), ep(S4, 53), b"q");
        assert_eq!(h.out(packet.clone()), Verdict::Held);
        let wait = timeout.map_or(10, |_| 3);
        h.advance(Duration::from_millis(wait * 1000 - 1));
        assert_eq!(h.gw.pending().len(), 1, "{action}: not yet");
        h.advance(Duration::from_millis(1));
        assert!(h.gw.pending().is_empty(), "{action}: timed out");
        if action == "permit" {
            assert_eq!(h.released, vec![(WAN, packet)]);
            assert_eq!(h.only_flow().state, FlowState::Active);
        } else {
            assert!(h.released.is_empty());
            assert!(h.flows().is_empty());
            assert_eq!(h.discards(DropReason::ReauthBlocked), 1);
            assert_eq!(h.closed()[0].1, CloseReason::ReauthBlocked);
        }
        let triggers = reauthorized(&h);
        assert_eq!(triggers.len(), 1);
        assert_eq!(triggers[0].0, ReauthTrigger::PendComplete);
    }
}

/// A hard block that matches only at reauthorization: the initial
/// authorization pends, and the permitted completion is still blocked.
#[test]
fn a_hard_block_elsewhere_wins_over_a_permitted_completion() {
    let text = ask_and_guard("no-reauth", "remote_port = 22\nflags = [\"reauthorize\"]");
    let mut h = harness(FlowConfig::with_max_flows(64), compile(&text, None));
    assert_eq!(h.out(ssh().syn()), Verdict::Held);
    h.gw.complete(pending_id(&h), Action::Permit).unwrap();
    h.apply_completions();
    assert!(h.released.is_empty());
    assert!(h.flows().is_empty());
    assert_eq!(
        reauthorized(&h),
        vec![(
            ReauthTrigger::PendComplete,
            Action::Block,
            Some("no-reauth".into())
        )]
    );
    assert_eq!(
        discards(&h),
        vec![(
            DropReason::ReauthBlocked,
            Some(Layer::AuthConnect),
            Some("no-reauth".into())
        )]
    );
}

#[test]
fn a_hard_block_at_the_initial_authorization_is_final() {
    let text = ask_and_guard(
        "no-ssh-to-s4",
        &format!("remote_address = \"{S4}\"\nremote_port = 22"),
    );
    let mut h = harness(FlowConfig::with_max_flows(64), compile(&text, None));
    assert_eq!(
        h.out(ssh().syn()),
        Verdict::Drop(DropReason::AuthConnectBlocked)
    );
    assert!(h.gw.pending().is_empty());
    assert!(h.flows().is_empty());
}

#[test]
fn pend_at_a_reauthorization_counts_as_continue() {
    // Inbound to 8080 is permitted; a reload asks about it instead.
    let permit = r#"
[[filter]]
name = "web"
layer = "auth_recv_accept"
action = "permit"
local_port = 8080
"#;
    let first = compile(permit, None);
    let mut h = harness(FlowConfig::with_max_flows(64), Arc::clone(&first));
    let (client, server) = (ep(S4, 40_000), ep(C4, 8080));
    assert_eq!(h.inb(udp(client, server, b"a")), Verdict::Forward(LAN));
    let text = format!(
        "{ASK}\n[[filter]]\nname = \"ask-udp\"\nlayer = \"auth_recv_accept\"\naction = \"callout\"\ncallout = \"ask\"\nlocal_port = 8080\nweight = 5\n{}",
        &permit[1..]
    );
    h.engine.set_policy(compile(&text, Some(&first)));
    // The flow is reauthorized: `ask` counts as continue, `web` permits.
    assert_eq!(h.inb(udp(client, server, b"b")), Verdict::Forward(LAN));
    assert!(h.gw.pending().is_empty());
    assert_eq!(
        reauthorized(&h),
        vec![(
            ReauthTrigger::PolicyChange,
            Action::Permit,
            Some("web".into())
        )]
    );
    // A new flow is asked about.
    assert_eq!(h.inb(udp(ep(S4, 40_001), server, b"c")), Verdict::Held);
}

#[test]
fn the_decision_is_remembered_across_later_reauthorizations() {
    let first = compile(ASK, None);
    let mut h = harness(FlowConfig::with_max_flows(64), Arc::clone(&first));
    let mut c = TcpConn::new(ep(S4, 40_000), ep(C4, 8080));
    assert_eq!(h.inb(c.syn()), Verdict::Held, "inbound: default block");
    h.gw.complete(pending_id(&h), Action::Permit).unwrap();
    h.apply_completions();
    assert_eq!(h.released, vec![(LAN, c.syn())]);
    assert_eq!(h.out(c.syn_ack()), Verdict::Forward(WAN));
    assert_eq!(h.inb(c.ack()), Verdict::Forward(LAN));
    c.c_seq += 1;
    c.s_seq += 1;
    // A reload changes auth_recv_accept: the flow is reauthorized, and the
    // pending callout answers with the person's decision again.
    let text = format!(
        "{ASK}\n[[filter]]\nname = \"other\"\nlayer = \"auth_recv_accept\"\naction = \"block\"\nlocal_port = 9999\n"
    );
    h.engine.set_policy(compile(&text, Some(&first)));
    let data = c.client_data(10);
    assert_eq!(h.inb(data), Verdict::Forward(LAN));
    let reauths = reauthorized(&h);
    assert_eq!(
        reauths.last(),
        Some(&(
            ReauthTrigger::PolicyChange,
            Action::Permit,
            Some("ask-web".into())
        ))
    );
}

#[test]
fn a_reload_keeps_pending_flows_pending_and_the_completion_meets_the_new_policy() {
    let first = compile(ASK, None);
    let mut h = harness(FlowConfig::with_max_flows(64), Arc::clone(&first));
    let c = ssh();
    assert_eq!(h.out(c.syn()), Verdict::Held);
    let id = pending_id(&h);
    let text = ask_and_guard("no-ssh", "remote_port = 22");
    // Another thread reloads: the worker picks the policy up at its next
    // batch. The pending flow stays pending and keeps holding.
    h.gw.set_policy(compile(&text, Some(&first)) as Arc<dyn Authorizer>);
    assert_eq!(h.out(c.syn()), Verdict::Held);
    assert_eq!(h.gw.pending()[0].packets, 2);
    h.gw.complete(id, Action::Permit).unwrap();
    h.apply_completions();
    assert!(h.released.is_empty(), "the new hard block wins");
    assert_eq!(h.closed(), vec![(id, CloseReason::ReauthBlocked)]);
    assert_eq!(
        reauthorized(&h),
        vec![(
            ReauthTrigger::PendComplete,
            Action::Block,
            Some("no-ssh".into())
        )]
    );
}

#[test]
fn shutdown_completes_pending_flows_as_blocked() {
    let mut h = asked();
    assert_eq!(h.out(ssh().syn()), Verdict::Held);
    let id = pending_id(&h);
    h.engine.close_all(h.now, false);
    h.events.extend(h.engine.drain_events());
    assert_eq!(h.closed(), vec![(id, CloseReason::Shutdown)]);
    assert_eq!(h.discards(DropReason::ReauthBlocked), 1);
    assert!(h.gw.pending().is_empty());
    assert_eq!(h.gw.complete(id, Action::Permit), Err(PendError::Unknown));
}

#[test]
fn kill_closes_pending_flows_and_drops_what_they_hold() {
    let mut h = asked();
    assert_eq!(h.out(ssh().syn()), Verdict::Held);
    assert_eq!(
        h.out(udp(ep(C4, 5000), ep(S4, 443), b"not asked")),
        Verdict::Forward(WAN)
    );
    let id = pending_id(&h);
    let selector = tunwall::flow::FlowSelector {
        state: Some("pending"),
        ..Default::default()
    };
    let closed = h
        .engine
        .close_matching(h.now, false, &selector, CloseReason::Admin);
    h.events.extend(h.engine.drain_events());
    assert_eq!(closed, 1, "only the pending flow");
    assert_eq!(h.closed(), vec![(id, CloseReason::Admin)]);
    assert_eq!(h.discards(DropReason::ReauthBlocked), 1);
    assert!(h.gw.pending().is_empty());
    assert_eq!(h.flows().len(), 1);
}
