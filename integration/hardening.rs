//! Engine scenarios for the hardening of SPEC §14: same-zone topologies,
//! atomic and monotonic reloads, one flow per connection across workers,
//! and the flows admitted by loose-source state.

mod common;

use common::*;
use std::sync::{Arc, Barrier};
use tunwall::engine::{Gateway, GatewayConfig, HostModel, Verdict};
use tunwall::event::EventKind;
use tunwall::flow::{Direction, FlowConfig, FlowState, TcpState};
use tunwall::policy::{Action, Decision, FlowOptions, FnPolicy, Layer};
use tunwall::time::Instant;

fn permit_all(generation: u32) -> Arc<dyn tunwall::policy::Authorizer> {
    Arc::new(FnPolicy::new(generation, |_| {
        Decision::default_action(Action::Permit)
    }))
}

/// A gateway of two workers permitting everything.
fn two_workers(max_flows: usize) -> Arc<Gateway> {
    Gateway::new(
        GatewayConfig {
            ports: ports(),
            flows: FlowConfig::with_max_flows(max_flows),
            host_model: HostModel::Weak,
            shards: None,
        },
        permit_all(1),
        2,
    )
}

fn harness_permitting_all() -> Harness {
    Harness::with(
        FlowConfig::with_max_flows(1024),
        HostModel::Weak,
        permit_all(1),
    )
}

const LAN2_HOST: &str = "198.18.3.30";
const WAN2_HOST: &str = "198.19.2.20";
const WAN2_HOST6: &str = "fd00:9::20";

/// A TCP handshake and data both ways between `a` (arriving on `pa`) and
/// `b` (arriving on `pb`): every segment is forwarded and one flow exists.
fn tcp_between(h: &mut Harness, a: Ep, pa: u8, b: Ep, pb: u8) {
    let mut c = TcpConn::new(a, b);
    assert_eq!(h.send(pa, c.syn()), Verdict::Forward(pb), "SYN");
    assert_eq!(h.send(pb, c.syn_ack()), Verdict::Forward(pa), "SYN-ACK");
    assert_eq!(h.send(pa, c.ack()), Verdict::Forward(pb), "ACK");
    c.c_seq += 1;
    c.s_seq += 1;
    let data = c.client_data(100);
    assert_eq!(h.send(pa, data), Verdict::Forward(pb));
    let data = c.server_data(200);
    assert_eq!(h.send(pb, data), Verdict::Forward(pa));
    assert_eq!(h.send(pa, c.client_ack()), Verdict::Forward(pb));
    let flow = h.only_flow();
    assert_eq!(flow.state, FlowState::Tcp(TcpState::Established));
    assert!(flow.established);
    // Counters are from the local host's side: out for an outbound flow's
    // initiator, in for an inbound one's.
    let (initiator, responder) = match flow.direction {
        Direction::Outbound => (flow.out.0, flow.inbound.0),
        Direction::Inbound => (flow.inbound.0, flow.out.0),
    };
    assert_eq!((initiator, responder), (4, 2));
    assert_eq!(h.established(), vec![flow.id]);
}

#[test]
fn tcp_between_two_inside_ports_is_one_flow_in_both_address_orders() {
    // 198.18.1.10 < 198.18.3.30: the key keeps the initiator first…
    let mut h = Harness::default_flows();
    tcp_between(&mut h, ep(C4, 40000), LAN, ep(LAN2_HOST, 80), LAN2);
    let flow = h.only_flow();
    assert_eq!(flow.direction, Direction::Outbound);
    assert_eq!(flow.layer(), Layer::AuthConnect);
    assert_eq!(flow.arrival_port, LAN);
    assert_eq!(flow.key.local_port, 40000);
    assert_eq!(flow.key.remote_port, 80);
    assert_eq!(h.discards(tunwall::reason::DropReason::TcpNoFlow), 0);
    // …and swaps it when the initiator has the higher address: local and
    // remote still follow the first packet.
    let mut h = Harness::default_flows();
    tcp_between(&mut h, ep(LAN2_HOST, 40000), LAN2, ep(C4, 80), LAN);
    let flow = h.only_flow();
    assert_eq!(flow.arrival_port, LAN2);
    assert_eq!(flow.key.local_port, 40000);
    assert_eq!(flow.key.remote_port, 80);
    let json = tunwall::render::json::flow(&flow, &["lan", "wan", "lan2", "wan2"], h.now);
    assert_eq!(json["local_addr"], LAN2_HOST);
    assert_eq!(json["remote_addr"], C4);
    assert_eq!(json["arrival_port"], "lan2");
}

#[test]
fn tcp_between_two_outside_ports_is_one_inbound_flow() {
    let mut h = harness_permitting_all();
    tcp_between(&mut h, ep(S4, 40000), WAN, ep(WAN2_HOST, 443), WAN2);
    let flow = h.only_flow();
    assert_eq!(flow.direction, Direction::Inbound);
    assert_eq!(flow.layer(), Layer::AuthRecvAccept);
    assert_eq!(flow.arrival_port, WAN);
    // Inbound: the local host is the destination of the first packet.
    assert_eq!(flow.key.local_port, 443);
    assert_eq!(flow.key.remote_port, 40000);
    let mut h = harness_permitting_all();
    tcp_between(&mut h, ep(S6, 40000), WAN, ep(WAN2_HOST6, 443), WAN2);
    assert_eq!(h.only_flow().key.local_port, 443);
}

#[test]
fn udp_and_icmp_replies_between_ports_of_one_zone_ride_the_request_flow() {
    for (a, pa, b, pb, permit) in [
        (C4, LAN, LAN2_HOST, LAN2, false),
        (LAN2_HOST, LAN2, C4, LAN, false),
        (S4, WAN, WAN2_HOST, WAN2, true),
        (WAN2_HOST, WAN2, S4, WAN, true),
    ] {
        let mut h = if permit {
            harness_permitting_all()
        } else {
            Harness::default_flows()
        };
        assert_eq!(
            h.send(pa, udp(ep(a, 5000), ep(b, 53), b"q")),
            Verdict::Forward(pb)
        );
        assert_eq!(
            h.send(pb, udp(ep(b, 53), ep(a, 5000), b"a")),
            Verdict::Forward(pa)
        );
        let flow = h.only_flow();
        assert_eq!((flow.out.0, flow.inbound.0), (1, 1), "{a} → {b}");
        assert_eq!(flow.arrival_port, pa);
        h.advance_ms(61_000);
        assert!(h.flows().is_empty());

        assert_eq!(h.send(pa, echo(a, b, true, 7, 1)), Verdict::Forward(pb));
        assert_eq!(h.send(pb, echo(b, a, false, 7, 1)), Verdict::Forward(pa));
        let flow = h.only_flow();
        assert_eq!((flow.out.0, flow.inbound.0), (1, 1), "echo {a} → {b}");
        // A request the other way is not the same flow.
        h.send(pb, echo(b, a, true, 7, 1));
        assert_eq!(h.flows().len(), 2);
    }
}

#[test]
fn a_worker_on_an_older_policy_never_reauthorizes_a_newer_flow() {
    let gw = two_workers(64);
    let mut w0 = gw.engine(0);
    let mut w1 = gw.engine(1);
    let now = Instant::ZERO;
    // Generation 1 permits new flows but blocks every reauthorization.
    let old: Arc<dyn tunwall::policy::Authorizer> = Arc::new(FnPolicy::new(1, |r| {
        let reauth = r
            .flags
            .contains(tunwall::policy::ClassifyFlags::REAUTHORIZE);
        Decision::default_action(if reauth {
            Action::Block
        } else {
            Action::Permit
        })
    }));
    w0.set_policy(Arc::clone(&old));
    w1.refresh_policy();
    let q = || udp(ep(C4, 5000), ep(S4, 53), b"q");
    assert_eq!(w0.process(now, LAN, &mut q()), Verdict::Forward(WAN));
    // A reload: w0 starts a batch on generation 2 and reauthorizes the
    // flow; w1 is still in a batch it began on generation 1.
    gw.set_policy(permit_all(2));
    w0.refresh_policy();
    assert_eq!(w0.process(now, LAN, &mut q()), Verdict::Forward(WAN));
    assert_eq!(w0.stats().reauthorizations, 1);
    assert_eq!(gw.flows(now)[0].policy_generation, 2);
    assert_eq!(
        w1.process(now, WAN, &mut udp(ep(S4, 53), ep(C4, 5000), b"a")),
        Verdict::Forward(LAN),
        "the older policy must not be asked about a flow the newer one permitted"
    );
    assert_eq!(w1.stats().reauthorizations, 0);
    assert_eq!(gw.flows_active(), 1);
}

#[test]
fn engines_of_one_gateway_share_one_policy() {
    let gw = two_workers(64);
    let mut w0 = gw.engine(0);
    let mut w1 = gw.engine(1);
    w0.set_policy(permit_all(7));
    w1.refresh_policy();
    assert!(Arc::ptr_eq(w0.policy(), w1.policy()));
    assert_eq!(w1.policy().generation(Layer::AuthConnect), 7);
}

#[test]
fn workers_racing_on_first_packets_create_each_flow_once() {
    const FLOWS: u16 = 4000;
    for round in 0..5u16 {
        let gw = two_workers(100_000);
        let barrier = Arc::new(Barrier::new(2));
        let threads: Vec<_> = (0..2)
            .map(|w| {
                let mut engine = gw.engine(w);
                let barrier = Arc::clone(&barrier);
                std::thread::spawn(move || {
                    barrier.wait();
                    let mut created = 0;
                    for i in 0..FLOWS {
                        // Both workers see the same first packets: one the
                        // request, the other the reply (steered elsewhere).
                        let mut p = if w == 0 {
                            udp(ep(C4, 1024 + i), ep(S4, 53 + round), b"q")
                        } else {
                            udp(ep(S4, 53 + round), ep(C4, 1024 + i), b"a")
                        };
                        engine.process(Instant::ZERO, if w == 0 { LAN } else { WAN }, &mut p);
                        created += engine
                            .drain_events()
                            .filter(|e| matches!(e.kind, EventKind::FlowCreated(_)))
                            .count();
                    }
                    created
                })
            })
            .collect();
        let created: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(gw.flows_active(), usize::from(FLOWS), "round {round}");
        assert_eq!(created, usize::from(FLOWS), "round {round}");
    }
}

#[test]
fn a_tcp_flow_whose_directions_go_to_different_workers_is_one_flow() {
    let gw = two_workers(64);
    let mut w0 = gw.engine(0);
    let mut w1 = gw.engine(1);
    let now = Instant::ZERO;
    let mut c = TcpConn::new(ep(C4, 40000), ep(S4, 80));
    assert_eq!(w0.process(now, LAN, &mut c.syn()), Verdict::Forward(WAN));
    assert_eq!(
        w1.process(now, WAN, &mut c.syn_ack()),
        Verdict::Forward(LAN)
    );
    assert_eq!(w0.process(now, LAN, &mut c.ack()), Verdict::Forward(WAN));
    c.c_seq += 1;
    c.s_seq += 1;
    assert_eq!(
        w1.process(now, WAN, &mut c.server_data(10)),
        Verdict::Forward(LAN)
    );
    assert_eq!(
        w0.process(now, LAN, &mut c.client_ack()),
        Verdict::Forward(WAN)
    );
    assert_eq!(gw.flows_active(), 1);
    assert_eq!(
        gw.flows(now)[0].state,
        FlowState::Tcp(TcpState::Established)
    );
}

#[test]
fn loose_source_children_take_the_owners_direction_layer_and_port() {
    let policy: Arc<dyn tunwall::policy::Authorizer> = Arc::new(FnPolicy::new(1, |r| {
        let mut d = Decision::default_action(Action::Permit);
        if r.layer == Layer::AuthRecvAccept {
            d.options = FlowOptions {
                loose_source_mapping: true,
                ..FlowOptions::default()
            };
        }
        d
    }));
    let mut h = Harness::with(FlowConfig::with_max_flows(64), HostModel::Weak, policy);
    // An inbound flow to the inside host's port 5353 with loose source mapping.
    assert_eq!(
        h.inb(udp(ep(S4, 7000), ep(C4, 5353), b"hello")),
        Verdict::Forward(LAN)
    );
    let owner = h.only_flow();
    assert_eq!(owner.direction, Direction::Inbound);
    // Another remote reaches the same local port: admitted as a child.
    assert_eq!(
        h.inb(udp(ep("198.18.2.99", 7001), ep(C4, 5353), b"hi")),
        Verdict::Forward(LAN)
    );
    let child = h
        .flows()
        .into_iter()
        .find(|f| f.id != owner.id)
        .expect("child flow");
    assert_eq!(child.parent_id, Some(owner.id));
    assert_eq!(child.direction, Direction::Inbound);
    assert_eq!(child.layer(), Layer::AuthRecvAccept);
    assert_eq!(child.arrival_port, WAN);
    assert_eq!(child.key.local_port, 5353);
    assert_eq!((child.out.0, child.inbound.0), (0, 1));
}

fn rate_limited_policy(
    rate: u32,
    extra: &str,
    previous: Option<&tunwall::policy::Policy>,
) -> tunwall::policy::Policy {
    let registry = tunwall::policy::CalloutRegistry::default();
    let text = format!(
        r#"{PORTS_TOML}
[[filter]]
name = "limit"
layer = "auth_connect"
action = "callout"
callout = "rate_limit"
rate = "{rate}/s"
{extra}
"#
    );
    let config =
        tunwall::config::Config::parse(std::path::Path::new("rate.toml"), &text, &registry)
            .unwrap_or_else(|e| panic!("{e}"));
    tunwall::policy::Policy::compile(&config.policy, &registry, previous).expect("compile")
}

#[test]
fn a_reload_keeps_the_buckets_of_an_unchanged_rate_limit_filter() {
    use tunwall::policy::Authorizer;
    let decide = |p: &tunwall::policy::Policy, port: u16| {
        let key = tunwall::flow::FlowKey::new(
            tunwall::packet::IpVersion::V4,
            17,
            tunwall::packet::raw_addr(C4.parse().unwrap()).1,
            tunwall::packet::raw_addr(S4.parse().unwrap()).1,
            port,
            53,
        );
        let request =
            tunwall::policy::ClassifyRequest::for_flow(Layer::AuthConnect, &key, Instant::ZERO);
        p.classify(&request, &mut Vec::new()).action
    };
    let v1 = rate_limited_policy(2, "", None);
    assert_eq!(decide(&v1, 1), Action::Permit);
    assert_eq!(decide(&v1, 2), Action::Permit);
    assert_eq!(decide(&v1, 3), Action::Block, "the burst of 2 is spent");
    // Another filter changes, the limit does not: its buckets stay spent.
    let other = "\n[[filter]]\nname = \"other\"\nlayer = \"auth_connect\"\naction = \"block\"\nprotocol = \"tcp\"\nremote_port = 23\n";
    let v2 = rate_limited_policy(2, other, Some(&v1));
    assert_eq!(
        decide(&v2, 4),
        Action::Block,
        "a reload is no way around the limit"
    );
    // A changed rate is a new limit, with new buckets.
    let v3 = rate_limited_policy(3, other, Some(&v2));
    assert_eq!(decide(&v3, 5), Action::Permit);
}

#[test]
fn memory_returns_toward_the_live_flow_count_after_a_flood() {
    let mut h = Harness::new(FlowConfig::with_max_flows(100_000));
    let empty = h.gw.table().heap_bytes();
    for i in 0..30_000u32 {
        let src = format!("198.18.1.{}", 10 + i % 200);
        h.out(udp(ep(&src, 1024 + (i / 200) as u16), ep(S4, 53), b"q"));
    }
    assert_eq!(h.flows().len(), 30_000);
    let flooded = h.gw.table().heap_bytes();
    // The flood idles out; a few flows stay.
    h.advance(std::time::Duration::from_secs(61));
    for _ in 0..20 {
        h.advance_ms(100);
    }
    assert!(h.flows().is_empty());
    for i in 0..10u16 {
        h.out(udp(ep(C4, 40_000 + i), ep(S4, 53), b"q"));
    }
    h.advance_ms(100);
    let after = h.gw.table().heap_bytes();
    assert!(
        after < empty + (flooded - empty) / 10,
        "empty {empty}, flooded {flooded}, after {after}"
    );
}
