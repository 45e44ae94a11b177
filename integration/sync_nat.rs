//! HA replication (SPEC §15) of translated (§9) and pended (§10) flows, on
//! the virtual clock: a masqueraded flow reaches the standby with its
//! translation and its port mapping reserved there, is forwarded
//! translated with the same outside port after failover, and gives the
//! port back when it closes there; a malformed translation item is
//! dropped and counted; a pended flow is replicated once it is decided
//! and not before.

mod common;

use common::*;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;
use tunwall::engine::{FlowRecords, Verdict};
use tunwall::event::{EventKind, ReauthTrigger};
use tunwall::flow::{FlowConfig, FlowState};
use tunwall::policy::{Action, Authorizer};
use tunwall::sync::wire::{self, FLOW, Header, Key, TRANSLATION};
use tunwall::testkit::pair::*;
use tunwall::time::Instant;

const PUBLIC: &str = "198.18.2.1";

fn compile(filters: &str) -> Arc<dyn Authorizer> {
    Arc::new(compile_policy(filters, None))
}

/// Masquerade of the inside to PUBLIC, ports from `range`.
fn masquerade(range: &str) -> Arc<dyn Authorizer> {
    compile(&masquerade_filter(&[PUBLIC], Some(range)))
}

fn flows() -> FlowConfig {
    FlowConfig {
        udp_idle: Duration::from_secs(20),
        ..FlowConfig::with_max_flows(1024)
    }
}

fn node(policy: &Arc<dyn Authorizer>, listen: &str, peer: &str) -> Node {
    node_in_session(policy, listen, peer, 1)
}

fn node_in_session(policy: &Arc<dyn Authorizer>, listen: &str, peer: &str, session: u64) -> Node {
    let mut h = Harness::with(
        flows(),
        tunwall::engine::HostModel::Weak,
        Arc::clone(policy),
    );
    h.now = Instant::from_secs(100);
    Node::of(h, listen, peer, 7, session)
}

fn pair(policy: &Arc<dyn Authorizer>) -> Pair {
    let mut p = Pair::of(node(policy, A, B), node(policy, B, A));
    p.settle();
    p
}

/// (source, source port, destination, destination port) of an IPv4
/// TCP or UDP packet.
fn endpoints(packet: &[u8]) -> (Ipv4Addr, u16, Ipv4Addr, u16) {
    let addr =
        |at: usize| Ipv4Addr::new(packet[at], packet[at + 1], packet[at + 2], packet[at + 3]);
    let port = |at: usize| u16::from_be_bytes([packet[at], packet[at + 1]]);
    (addr(12), port(20), addr(16), port(22))
}

fn v4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

#[test]
fn a_masqueraded_flow_is_forwarded_translated_by_the_standby_after_failover() {
    let policy = masquerade("50000-50100");
    let mut p = pair(&policy);
    // The connection on A: the inside view and the outside (translated) one.
    let mut inside = TcpConn::new(ep(C4, 40_000), ep(S4, 443));
    let (v, syn) = p.a.h.pass(LAN, inside.syn());
    assert_eq!(v, Verdict::Forward(WAN));
    let (from, port, ..) = endpoints(&syn);
    assert_eq!(from, v4(PUBLIC));
    assert!((50_000..=50_100).contains(&port), "{port}");
    let mut outside = TcpConn::new(ep(PUBLIC, port), ep(S4, 443));
    assert_eq!(p.a.h.inb(outside.syn_ack()), Verdict::Forward(LAN));
    assert_eq!(p.a.h.out(inside.ack()), Verdict::Forward(WAN));
    for c in [&mut inside, &mut outside] {
        c.c_seq += 1;
        c.s_seq += 1;
    }
    let data = inside.client_data(100);
    outside.c_seq = inside.c_seq;
    assert_eq!(p.a.h.out(data), Verdict::Forward(WAN));
    p.step(10);

    // B holds it, translated, its port taken in B's allocator.
    let on_b = p.b.h.only_flow();
    assert!(on_b.synced);
    assert_eq!(on_b.id, p.a.h.only_flow().id);
    let t = on_b.translation.expect("replicated with its translation");
    assert_eq!(t, p.a.h.only_flow().translation.unwrap());
    assert_eq!(p.b.h.gw.nat().ports_in_use(), 1);
    assert_eq!(p.b.h.gw.nat().aliases.len(), 1);

    // A dies; the server's next segment reaches B: translated back to the
    // inside, and the client's answer leaves with the same outside port.
    p.b.h.advance_ms(2000);
    let reply = outside.server_data(200);
    inside.s_seq = outside.s_seq;
    let (v, back) = p.b.h.pass(WAN, reply);
    assert_eq!(v, Verdict::Forward(LAN));
    assert_eq!(endpoints(&back), (v4(S4), 443, v4(C4), 40_000));
    let (v, out) = p.b.h.pass(LAN, inside.client_ack());
    assert_eq!(v, Verdict::Forward(WAN));
    assert_eq!(endpoints(&out), (v4(PUBLIC), port, v4(S4), 443));
    let reauth: Vec<_> =
        p.b.h
            .events
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::FlowReauthorized { trigger, .. } => Some(*trigger),
                _ => None,
            })
            .collect();
    assert_eq!(reauth, [ReauthTrigger::Failover]);
    assert!(!p.b.h.only_flow().synced);

    // B's own traffic never takes the port the flow holds.
    let (v, other) = p.b.h.pass(
        LAN,
        TcpConn::new(ep("198.18.1.11", 40_000), ep(S4, 443)).syn(),
    );
    assert_eq!(v, Verdict::Forward(WAN));
    assert_ne!(endpoints(&other).1, port);

    // The connection ends on B: its port is free again there.
    assert_eq!(p.b.h.out(inside.client_rst()), Verdict::Forward(WAN));
    p.b.h.advance(Duration::from_secs(300));
    assert_eq!(p.b.h.gw.flows_active(), 0);
    assert_eq!(p.b.h.gw.nat().ports_in_use(), 0);
    assert_eq!(p.b.h.gw.nat().aliases.len(), 0);
}

#[test]
fn the_standbys_port_is_shared_like_the_active_nodes_and_released_with_its_last_flow() {
    let policy = masquerade("50000-50001");
    let mut p = pair(&policy);
    // One inside endpoint to two servers: one mapping, two flows.
    let client = ep(C4, 5000);
    let (_, first) = p.a.h.pass(LAN, udp(client, ep(S4, 53), b"q"));
    let (_, second) = p.a.h.pass(LAN, udp(client, ep("198.18.2.21", 53), b"q"));
    let port = endpoints(&first).1;
    assert_eq!(endpoints(&second).1, port, "one mapping");
    // Another inside host, whose flow B will expire on its own.
    let (_, third) =
        p.a.h
            .pass(LAN, udp(ep("198.18.1.11", 6000), ep(S4, 53), b"q"));
    p.step(10);
    assert_eq!(p.b.h.gw.flows_active(), 3);
    assert_eq!(p.b.h.gw.nat().ports_in_use(), 2);

    // A keeps the first flow and the third alive; the second expires on A
    // and its closure reaches B before B's own timer: the shared port stays.
    for _ in 0..3 {
        p.step(8000);
        p.a.h.out(udp(client, ep(S4, 53), b"q"));
        p.a.h.out(udp(ep("198.18.1.11", 6000), ep(S4, 53), b"q"));
    }
    p.settle();
    assert_eq!(p.b.h.gw.flows_active(), 2, "{:#?}", p.b.h.flows());
    assert_eq!(p.b.h.gw.nat().ports_in_use(), 2);
    // The first flow is closed on A (it expires there while B is behind);
    // the third lives on.
    for _ in 0..2 {
        p.a.h.advance(Duration::from_secs(12));
        p.a.h.out(udp(ep("198.18.1.11", 6000), ep(S4, 53), b"q"));
    }
    p.step(1);
    assert_eq!(p.b.h.gw.flows_active(), 1);
    assert!(
        p.b.h
            .flows()
            .iter()
            .all(|f| f.key.local_port != 5000 && f.key.remote_port != 5000)
    );
    assert_eq!(
        p.b.h.gw.nat().ports_in_use(),
        1,
        "released with its last flow"
    );
    // The sync stops (A is gone): B's own timer ends the third flow and
    // gives its port back, without an event.
    p.b.h.advance(Duration::from_secs(25));
    assert_eq!(p.b.h.gw.flows_active(), 0);
    assert_eq!(p.b.h.gw.nat().ports_in_use(), 0);
    assert_eq!(p.b.h.gw.nat().aliases.len(), 0);
    assert!(p.b.h.events.is_empty(), "{:#?}", p.b.h.events);
    // Both ports of the range are B's to hand out again.
    let mut ports = Vec::new();
    for host in ["198.18.1.12", "198.18.1.13"] {
        let (v, out) = p.b.h.pass(LAN, udp(ep(host, 7000), ep(S4, 53), b"q"));
        assert_eq!(v, Verdict::Forward(WAN));
        ports.push(endpoints(&out).1);
    }
    ports.sort();
    let mut held = vec![port, endpoints(&third).1];
    held.sort();
    assert_eq!(ports, held);
}

/// The records of the only flow of `h`.
fn records_of(h: &Harness) -> FlowRecords {
    let mut records = FlowRecords::default();
    for idx in 0..h.gw.table().shard_count() {
        h.gw.walk_shard(idx, None, h.now, &mut FlowRecords::default(), |r| {
            records.flow = r.flow.clone();
            records.translation = r.translation.clone();
        });
    }
    assert!(!records.flow.is_empty() && records.translation().is_some());
    records
}

#[test]
fn a_malformed_translation_item_is_dropped_and_counted() {
    let policy = masquerade("50000-50100");
    let mut a = node(&policy, A, B);
    a.h.out(udp(ep(C4, 5000), ep(S4, 53), b"q"));
    let records = records_of(&a.h);
    let mut b = node(&policy, B, A);
    let key = Key::new(&[7; 32]);
    let mut seq = 0;
    // Node 1's messages, in order, with `items`.
    let mut deliver = |b: &mut Node, items: &[(u8, &[u8])]| {
        seq += 1;
        let mut body = Vec::new();
        for (kind, payload) in items {
            wire::put_item(*kind, payload, &mut body);
        }
        let header = Header {
            node: 1,
            session: 5,
            counter: seq,
        };
        let mut datagram = Vec::new();
        wire::seal(&key, header, 0, 1, seq, &body, &mut datagram);
        b.r.receive(b.h.now, &mut datagram);
    };
    let flow = &records.flow[..];
    let translation = records.translation().unwrap();
    let mut bad_mapping = translation.to_vec();
    bad_mapping[48] = 2;
    let mut other_flow = translation.to_vec();
    other_flow[0] ^= 1;
    let mut bad_egress = translation.to_vec();
    bad_egress[46] = 9;
    for (n, bad) in [bad_mapping, other_flow, bad_egress].iter().enumerate() {
        deliver(&mut b, &[(FLOW, flow), (TRANSLATION, bad)]);
        let st = b.status();
        assert_eq!(st["invalid_records"], n as u64 + 1, "{st}");
        assert_eq!(
            b.h.gw.flows_active(),
            0,
            "a translated flow applied without its translation"
        );
    }
    // A translation without its flow.
    deliver(&mut b, &[(TRANSLATION, translation)]);
    assert_eq!(b.status()["invalid_records"], 4);
    assert_eq!(b.h.gw.nat().ports_in_use(), 0);
    assert_eq!(b.h.gw.nat().aliases.len(), 0);
    // The flow with its own translation is applied.
    deliver(&mut b, &[(FLOW, flow), (TRANSLATION, translation)]);
    let st = b.status();
    assert_eq!(
        (st["applied"].as_u64(), st["invalid_records"].as_u64()),
        (Some(1), Some(4)),
        "{st}"
    );
    assert!(b.h.only_flow().translation.is_some());
    assert_eq!(b.h.gw.nat().ports_in_use(), 1);
    assert_eq!(
        st["rejected"], 0,
        "authentic datagrams: only the items are refused"
    );
}

/// Outbound flows to port 22 are asked about (SPEC §10).
fn asking() -> Arc<dyn Authorizer> {
    compile(
        r#"
[[filter]]
name = "ask-ssh"
layer = "auth_connect"
action = "callout"
callout = "ask"
remote_port = 22
pend_timeout = "10s"
"#,
    )
}

#[test]
fn a_pended_flow_is_replicated_once_decided_and_not_before() {
    let policy = asking();
    let mut p = pair(&policy);
    let (permitted, blocked) = (ep(C4, 5000), ep(C4, 5001));
    assert_eq!(p.a.h.out(udp(permitted, ep(S4, 22), b"one")), Verdict::Held);
    assert_eq!(p.a.h.out(udp(blocked, ep(S4, 22), b"one")), Verdict::Held);
    assert_eq!(p.a.h.gw.pending().len(), 2);
    p.settle();
    assert_eq!(
        p.b.h.gw.flows_active(),
        0,
        "a pending flow is not replicated"
    );
    let pending = p.a.h.gw.pending();
    let id_of = |port: u16| {
        pending
            .iter()
            .find(|i| i.flow.key.local_port == port || i.flow.key.remote_port == port)
            .expect("pending")
            .flow
            .id
    };
    let (yes, no) = (id_of(5000), id_of(5001));
    p.a.h.gw.complete(yes, Action::Permit).unwrap();
    p.a.h.gw.complete(no, Action::Block).unwrap();
    p.a.h.apply_completions();
    p.step(10);
    let on_b = p.b.h.only_flow();
    assert_eq!(
        on_b.id, yes,
        "the permitted flow, at once; never the blocked one"
    );
    assert!(on_b.synced);
    assert_eq!(on_b.state, FlowState::Active);
    p.settle();
    assert_eq!(p.b.h.gw.flows_active(), 1);
    // It fails over like any other.
    p.b.h.advance_ms(1000);
    assert_eq!(
        p.b.h.out(udp(permitted, ep(S4, 22), b"two")),
        Verdict::Forward(WAN)
    );
    assert_eq!(
        p.b.h.out(udp(blocked, ep(S4, 22), b"two")),
        Verdict::Held,
        "asked about on B"
    );
}

/// Replication bandwidth of masqueraded flows (docs/ha.md): the workload
/// of `replication_bytes_per_flow` in integration/sync.rs, translated.
#[test]
fn replication_bytes_per_masqueraded_flow() {
    // The masquerade keeps the inside ports (no range).
    let policy = compile(&format!(
        "[[filter]]\nname = \"masq\"\nlayer = \"bind_redirect\"\naction = \"redirect\"\n\
         arrival_port = \"lan\"\nto_address = \"{PUBLIC}\"\n"
    ));
    let churn = FlowConfig {
        udp_idle: Duration::from_secs(2),
        ..FlowConfig::with_max_flows(4096)
    };
    let node = |listen, peer| {
        let h = Harness::with(
            churn.clone(),
            tunwall::engine::HostModel::Weak,
            Arc::clone(&policy),
        );
        Node::of(h, listen, peer, 7, 1)
    };
    let mut p = Pair::of(node(A, B), node(B, A));
    let (tcp, udp_bytes) = replication_bytes(&mut p, C4, PUBLIC);
    assert_eq!(p.a.h.engine.stats().flows_created, 2000);
    assert_eq!(p.b.h.gw.flows_active(), 0, "every closure replicated");
    assert_eq!(p.b.h.gw.nat().ports_in_use(), 0);
    eprintln!(
        "replication (masqueraded): {tcp} bytes per TCP connection, {udp_bytes} bytes per UDP flow"
    );
    assert!(tcp < 2000 && udp_bytes < 900);
}

#[test]
fn a_rejoining_node_gets_every_translated_flow_in_its_bulk_resync() {
    let policy = masquerade("20000-29999");
    let mut p = pair(&policy);
    for i in 0..900u16 {
        let host = format!("198.18.1.{}", 10 + i % 100);
        let (v, _) = p.a.h.pass(LAN, udp(ep(&host, 5000 + i), ep(S4, 53), b"q"));
        assert_eq!(v, Verdict::Forward(WAN));
    }
    // B restarts (a new session) with an empty table.
    p.b = node_in_session(&policy, B, A, 2);
    p.b.h.now = p.a.h.now;
    p.drain();
    assert_eq!(p.b.h.gw.flows_active(), 900);
    assert_eq!(p.b.h.gw.nat().ports_in_use(), 900);
    assert_eq!(p.b.h.gw.nat().aliases.len(), 900);
    let (a, b) = (p.a.status(), p.b.status());
    assert_eq!(a["overflowed"], 0, "{a}");
    assert_eq!(b["bulk_received"], 1, "{b}");
    assert_eq!(b["refused"], 0, "{b}");
}
