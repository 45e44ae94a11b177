//! WireGuard identities in the engine (SPEC §11), on the virtual clock:
//! peers' allowed-ips as identity addresses, the `port` rule for source
//! addresses, longest-prefix ownership, and a change of a peer's addresses
//! as a policy change of the layers naming it (trigger `identity_change`).

mod common;

use common::*;
use std::path::Path;
use std::sync::Arc;
use tunwall::config::Config;
use tunwall::engine::{HostModel, Verdict};
use tunwall::event::ReauthTrigger;
use tunwall::flow::FlowConfig;
use tunwall::policy::{
    Action, Authorizer, CalloutRegistry, Layer, Peer, PeerSnapshot, Policy, PolicySpec,
};
use tunwall::reason::{CloseReason, DropReason};

const ALICE: [u8; 32] = [1; 32];
const BOB: [u8; 32] = [2; 32];

/// `[[wireguard]]` wg0 bound to port "lan"; alice may reach port 80, bob
/// port 22 (both outbound); inbound to alice's address on 8080 is permitted.
fn spec() -> PolicySpec {
    let alice = tunwall::policy::key_base64(&ALICE);
    let bob = tunwall::policy::key_base64(&BOB);
    let text = format!(
        "{PORTS_TOML}\n[[wireguard]]\ninterface = \"wg0\"\nport = \"lan\"\n\n\
         [defaults]\nauth_connect = \"block\"\n\n\
         [identities]\nalice = {{ wireguard = \"wg0\", peer = \"{alice}\" }}\n\
         bob = {{ wireguard = \"wg0\", peer = \"{bob}\" }}\n\n\
         [[filter]]\nname = \"alice-web\"\nlayer = \"auth_connect\"\naction = \"permit\"\nlocal_identity = \"alice\"\nremote_port = 80\n\n\
         [[filter]]\nname = \"bob-ssh\"\nlayer = \"auth_connect\"\naction = \"permit\"\nlocal_identity = \"bob\"\nremote_port = 22\n\n\
         [[filter]]\nname = \"to-alice\"\nlayer = \"auth_recv_accept\"\naction = \"permit\"\nlocal_identity = \"alice\"\nlocal_port = 8080\n"
    );
    Config::parse(Path::new("wg.toml"), &text, &CalloutRegistry::default())
        .unwrap_or_else(|e| panic!("{e}"))
        .policy
}

fn peers(list: &[([u8; 32], &[&str])]) -> PeerSnapshot {
    let peers = list
        .iter()
        .map(|(key, ips)| Peer {
            key: *key,
            allowed_ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
        })
        .collect();
    PeerSnapshot::from([("wg0".to_string(), peers)])
}

fn compile(spec: &mut PolicySpec, snapshot: &PeerSnapshot, previous: Option<&Policy>) -> Policy {
    spec.resolve_identities(snapshot);
    let p = Policy::compile(spec, &CalloutRegistry::default(), previous).expect("compile");
    match previous {
        Some(prev) => p.identity_change(prev),
        None => p,
    }
}

const ALICE_IP: &str = "198.18.1.10";
const BOB_IP: &str = "198.18.1.11";

#[test]
fn removing_a_peer_cuts_its_flows_with_trigger_identity_change() {
    let mut spec = spec();
    let both = peers(&[(ALICE, &["198.18.1.10/32"]), (BOB, &["198.18.1.11/32"])]);
    let v1 = Arc::new(compile(&mut spec, &both, None));
    let mut h = Harness::with(FlowConfig::with_max_flows(64), HostModel::Weak, v1.clone());
    let mut web = TcpConn::new(ep(ALICE_IP, 40000), ep(S4, 80));
    web.handshake(&mut h);
    let mut ssh = TcpConn::new(ep(BOB_IP, 40001), ep(S4, 22));
    ssh.handshake(&mut h);
    // alice may not reach 22, bob not 80; an address of no peer reaches neither.
    let denied = |from: &str, port: u16| TcpConn::new(ep(from, 41000), ep(S4, port)).syn();
    for (from, port) in [
        (ALICE_IP, 22),
        (BOB_IP, 80),
        ("198.18.1.12", 80),
        ("198.18.1.12", 22),
    ] {
        assert!(
            matches!(
                h.out(denied(from, port)),
                Verdict::Drop(DropReason::AuthConnectBlocked)
            ),
            "{from} → {port}"
        );
    }

    // bob is removed from the interface: only auth_connect names him.
    let only_alice = peers(&[(ALICE, &["198.18.1.10/32"])]);
    let v2 = compile(&mut spec, &only_alice, Some(&v1));
    assert_eq!(v2.changed_layers(), &[Layer::AuthConnect]);
    assert_eq!(v2.policy_generation(), v1.policy_generation() + 1);
    assert_eq!(
        v2.generation(Layer::AuthRecvAccept),
        v1.generation(Layer::AuthRecvAccept)
    );
    h.engine.set_policy(Arc::new(v2));
    // alice's flow survives its reauthorization, triggered by a reply.
    let d = web.server_data(10);
    assert_eq!(h.inb(d), Verdict::Forward(LAN));
    let d = ssh.client_data(10);
    assert_eq!(h.out(d), Verdict::Drop(DropReason::ReauthBlocked));
    assert_eq!(
        h.reauthorizations(),
        vec![
            (ReauthTrigger::IdentityChange, Action::Permit),
            (ReauthTrigger::IdentityChange, Action::Block)
        ]
    );
    assert!(
        h.closed()
            .iter()
            .any(|(_, r)| *r == CloseReason::ReauthBlocked)
    );
    assert_eq!(h.flows().len(), 1);
}

#[test]
fn a_source_matches_only_on_the_wireguard_port_a_destination_anywhere() {
    let mut spec = spec();
    let p = Arc::new(compile(
        &mut spec,
        &peers(&[(ALICE, &["198.18.3.10/32", "198.18.1.10/32"])]),
        None,
    ));
    let mut h = Harness::with(FlowConfig::with_max_flows(64), HostModel::Weak, p);
    // alice's address arriving on lan2, not on wg0's port: spoofed.
    let spoofed = TcpConn::new(ep("198.18.3.10", 40000), ep(S4, 80)).syn();
    assert_eq!(
        h.send(LAN2, spoofed),
        Verdict::Drop(DropReason::AuthConnectBlocked)
    );
    let genuine = TcpConn::new(ep(ALICE_IP, 40000), ep(S4, 80)).syn();
    assert_eq!(h.out(genuine), Verdict::Forward(WAN));
    // As the destination of an inbound packet, her address matches anywhere.
    let inbound = TcpConn::new(ep(S4, 50000), ep(ALICE_IP, 8080)).syn();
    assert_eq!(h.inb(inbound), Verdict::Forward(LAN));
}

#[test]
fn the_longest_allowed_ip_owns_an_address_as_wireguard_routes() {
    let mut spec = spec();
    // bob's /24 covers alice's /32: 198.18.1.10 is alice's, .11 is bob's.
    let p = Arc::new(compile(
        &mut spec,
        &peers(&[(ALICE, &["198.18.1.10/32"]), (BOB, &["198.18.1.0/24"])]),
        None,
    ));
    let mut h = Harness::with(FlowConfig::with_max_flows(64), HostModel::Weak, p);
    let syn = |from: &str, port: u16| TcpConn::new(ep(from, 40000), ep(S4, port)).syn();
    assert_eq!(h.out(syn(ALICE_IP, 80)), Verdict::Forward(WAN));
    assert_eq!(
        h.out(syn(ALICE_IP, 22)),
        Verdict::Drop(DropReason::AuthConnectBlocked)
    );
    assert_eq!(h.out(syn(BOB_IP, 22)), Verdict::Forward(WAN));
    assert_eq!(
        h.out(syn(BOB_IP, 80)),
        Verdict::Drop(DropReason::AuthConnectBlocked)
    );
}

#[test]
fn a_reload_after_an_identity_change_is_a_policy_change() {
    let mut spec = spec();
    let v1 = Arc::new(compile(
        &mut spec,
        &peers(&[(ALICE, &["198.18.1.10/32"])]),
        None,
    ));
    let mut h = Harness::with(FlowConfig::with_max_flows(64), HostModel::Weak, v1.clone());
    let mut web = TcpConn::new(ep(ALICE_IP, 40000), ep(S4, 80));
    web.handshake(&mut h);
    let moved = peers(&[(ALICE, &["198.18.1.10/32", "198.18.1.20/32"])]);
    let v2 = Arc::new(compile(&mut spec, &moved, Some(&v1)));
    // The same file again, as a reload compiles it: a change of its own.
    spec.filters.retain(|f| f.name != "bob-ssh");
    let v3 = Policy::compile(&spec, &CalloutRegistry::default(), Some(&v2)).unwrap();
    h.engine.set_policy(Arc::new(v3));
    let d = web.client_data(5);
    assert_eq!(h.out(d), Verdict::Forward(WAN));
    assert_eq!(
        h.reauthorizations(),
        vec![(ReauthTrigger::PolicyChange, Action::Permit)]
    );
}
