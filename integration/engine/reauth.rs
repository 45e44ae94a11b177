//! Reauthorization mechanics (SPEC §5): a flow is classified again on its
//! next packet only when something it depends on changed — the generation
//! of its own layer or its arrival interface — so these tests control the
//! policy's generations and decisions directly through `FnPolicy`.

use crate::common::*;
use std::sync::{Arc, Mutex};
use tunwall::engine::{HostModel, Verdict};
use tunwall::event::{EventKind, ReauthTrigger};
use tunwall::flow::FlowConfig;
use tunwall::policy::{Action, ClassifyRequest, Decision, FnPolicy, Layer};
use tunwall::reason::{CloseReason, DropReason};

/// A policy whose decisions and generations the test controls.
fn policy(
    generation: u32,
    block_port: Option<u16>,
    seen: Arc<Mutex<Vec<ClassifyRequest>>>,
) -> Arc<FnPolicy<impl Fn(&ClassifyRequest) -> Decision + Send + Sync>> {
    Arc::new(FnPolicy::new(generation, move |r: &ClassifyRequest| {
        seen.lock().unwrap().push(*r);
        let blocked =
            block_port.is_some_and(|p| r.remote_port == p) || r.layer == Layer::AuthRecvAccept;
        Decision::default_action(if blocked {
            Action::Block
        } else {
            Action::Permit
        })
    }))
}

#[test]
fn a_policy_change_reauthorizes_on_the_next_packet() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut h = Harness::with(
        FlowConfig::with_max_flows(64),
        HostModel::Weak,
        policy(1, None, seen.clone()),
    );
    let mut conn = TcpConn::new(ep(C4, 40060), ep(S4, 22));
    conn.handshake(&mut h);
    // A permit keeps the flow and its TCP state.
    h.engine.set_policy(policy(2, None, seen.clone()));
    let d = conn.client_data(10);
    assert_eq!(h.send(LAN, d), Verdict::Forward(WAN));
    assert_eq!(
        h.reauthorizations(),
        vec![(ReauthTrigger::PolicyChange, Action::Permit)]
    );
    assert!(
        seen.lock()
            .unwrap()
            .last()
            .unwrap()
            .flags
            .contains(tunwall::policy::ClassifyFlags::REAUTHORIZE)
    );
    let f = h.only_flow();
    assert_eq!(f.state.as_str(), "established");
    assert_eq!(f.policy_generation, 2);
    // A block tears it down on its next packet.
    h.engine.set_policy(policy(3, Some(22), seen.clone()));
    let d = conn.client_data(10);
    assert_eq!(h.send(LAN, d), Verdict::Drop(DropReason::ReauthBlocked));
    assert_eq!(h.closed(), vec![(f.id, CloseReason::ReauthBlocked)]);
    assert!(h.flows().is_empty());
}

#[test]
fn a_change_at_one_layer_leaves_the_other_layers_flows_alone() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let permit_all = move |generation: u32, recv_generation: u32| {
        let s = s.clone();
        Arc::new(
            FnPolicy::new(generation, move |r: &ClassifyRequest| {
                s.lock().unwrap().push(*r);
                Decision::default_action(Action::Permit)
            })
            .with_generation(Layer::AuthRecvAccept, recv_generation),
        )
    };
    let mut h = Harness::with(
        FlowConfig::with_max_flows(64),
        HostModel::Weak,
        permit_all(1, 1),
    );
    h.out(udp(ep(C4, 1000), ep(S4, 53), b"out"));
    h.inb(udp(ep(S4, 2000), ep(C4, 9000), b"in"));
    assert_eq!(h.flows().len(), 2);
    // Only auth_recv_accept changes: the outbound flow is not reauthorized.
    h.engine.set_policy(permit_all(1, 2));
    seen.lock().unwrap().clear();
    h.out(udp(ep(C4, 1000), ep(S4, 53), b"out"));
    assert!(
        seen.lock().unwrap().is_empty(),
        "outbound flow reauthorized by an inbound-layer change"
    );
    h.inb(udp(ep(S4, 2000), ep(C4, 9000), b"in"));
    let requests = seen.lock().unwrap().clone();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].layer, Layer::AuthRecvAccept);
}

#[test]
fn arrival_interface_change_weak_reauthorizes_strong_drops() {
    for model in [HostModel::Weak, HostModel::Strong] {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut h = Harness::with(
            FlowConfig::with_max_flows(64),
            model,
            policy(1, None, seen.clone()),
        );
        let client = "198.18.3.10";
        h.send(LAN, udp(ep(client, 1000), ep(S4, 53), b"q"));
        let id = h.only_flow().id;
        let verdict = h.send(LAN2, udp(ep(client, 1000), ep(S4, 53), b"q"));
        match model {
            HostModel::Weak => {
                assert_eq!(verdict, Verdict::Forward(WAN));
                let last = *seen.lock().unwrap().last().unwrap();
                assert_eq!(last.arrival_port, Some(LAN2));
                assert!(
                    last.flags
                        .contains(tunwall::policy::ClassifyFlags::REAUTHORIZE)
                );
                assert_eq!(h.only_flow().arrival_port, LAN2);
                assert!(h.events.iter().any(|e| matches!(&e.kind,
                    EventKind::FlowReauthorized { trigger: ReauthTrigger::ArrivalInterface, flow, .. } if flow.id == id)));
            }
            HostModel::Strong => {
                assert_eq!(verdict, Verdict::Drop(DropReason::WrongInterface));
                assert_eq!(h.only_flow().id, id);
                assert_eq!(h.only_flow().arrival_port, LAN);
            }
        }
    }
}

#[test]
fn reauthorization_against_the_flow_direction_has_an_empty_arrival_port() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut h = Harness::with(
        FlowConfig::with_max_flows(64),
        HostModel::Weak,
        policy(1, None, seen.clone()),
    );
    h.out(udp(ep(C4, 1000), ep(S4, 53), b"q"));
    h.engine.set_policy(policy(2, None, seen.clone()));
    assert_eq!(
        h.inb(udp(ep(S4, 53), ep(C4, 1000), b"a")),
        Verdict::Forward(LAN)
    );
    let last = *seen.lock().unwrap().last().unwrap();
    assert_eq!(last.layer, Layer::AuthConnect);
    assert_eq!(last.arrival_port, None);
}
