//! Reauthorization on reload (SPEC §5): a reload must bump only the
//! generations of the layers it changed, so that only the flows those
//! layers decided are classified again — with the arrival port the host
//! model calls for — and a `reauthorize`-flag filter touches them alone.

use crate::common::*;
use std::sync::Arc;
use tunwall::engine::{HostModel, Verdict};
use tunwall::event::EventKind;
use tunwall::flow::FlowConfig;
use tunwall::policy::{Action, Authorizer, Layer};
use tunwall::reason::{CloseReason, DropReason};
use tunwall::testkit::compile_policy as compile;

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
