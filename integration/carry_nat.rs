//! Translated flows carried across processes (SPEC §13 with §9) on the
//! virtual clock: a gateway restored from a snapshot translates every
//! carried flow exactly as the original does, both ways, for any traffic
//! (property-tested); a mapping shared by several flows comes back shared
//! and its port is released with its last flow; a restored port is never
//! handed out twice; a container whose translations do not fit is refused
//! whole.

mod common;

use common::*;
use proptest::prelude::*;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tunwall::config::Config;
use tunwall::engine::{Restored, Verdict};
use tunwall::event::{Event, EventKind, FlowInfo};
use tunwall::flow::FlowConfig;
use tunwall::policy::{Authorizer, CalloutRegistry, Policy};
use tunwall::reason::DropReason;
use tunwall::state::{Container, FLOW, StateError, TRANSLATION, Writer, frame};
use tunwall::time::Instant;

const PUBLIC: &str = "198.18.2.1";

/// Masquerade of the inside (ports from `range`, or the original port when
/// free) and a port forward of PUBLIC:8080 to C4:80.
fn policy(range: Option<&str>) -> Arc<dyn Authorizer> {
    let masq = masquerade_filter(&[PUBLIC, "fd00:2::1"], range);
    let text = format!(
        r#"{PORTS_TOML}
{masq}
[[filter]]
name = "web-forward"
layer = "bind_redirect"
action = "redirect"
arrival_port = "wan"
local_address = "{PUBLIC}"
local_port = 8080
protocol = "tcp"
to_address = "{C4}"
to_port = 80

[[filter]]
name = "web-in"
layer = "auth_recv_accept"
action = "permit"
local_address = "{C4}"
local_port = 80
original_local_port = 8080
flags = ["redirected"]
"#
    );
    let registry = CalloutRegistry::default();
    let config = Config::parse(Path::new("carry_nat.toml"), &text, &registry)
        .unwrap_or_else(|e| panic!("{e}"));
    Arc::new(Policy::compile(&config.policy, &registry, None).expect("compile"))
}

fn flows() -> FlowConfig {
    FlowConfig {
        udp_idle: Duration::from_secs(20),
        icmp_idle: Duration::from_secs(10),
        ..FlowConfig::with_max_flows(1024)
    }
}

fn harness(policy: &Arc<dyn Authorizer>) -> Harness {
    let mut h = Harness::with(
        flows(),
        tunwall::engine::HostModel::Weak,
        Arc::clone(policy),
    );
    h.now = Instant::from_secs(100);
    h
}

/// A fresh gateway restored from `bytes` at the same instant.
fn restored(bytes: &[u8], policy: &Arc<dyn Authorizer>, now: Instant) -> (Harness, Restored) {
    let container = Container::parse(bytes).expect("container");
    let mut h = harness(policy);
    h.now = now;
    let done =
        h.gw.restore(now, &container, Duration::ZERO)
            .expect("restore");
    (h, done)
}

/// The `i`th inside host.
fn host(i: u8) -> String {
    format!("198.18.1.{}", 10 + i)
}

/// One step of traffic through the translations.
#[derive(Clone, Debug)]
enum Step {
    /// UDP from inside host `host`'s port `port` to server `server`, or the
    /// server's answer to the translated endpoint. Each host has ports of
    /// its own, so masquerade keeps them and the ports do not depend on
    /// the allocator's search order.
    Udp {
        host: u8,
        port: u8,
        server: u8,
        reply: bool,
    },
    /// A TCP move on masqueraded connection `conn` (0..2).
    Tcp { conn: usize, what: u8, len: u16 },
    /// A TCP move on the forwarded connection.
    Forward { what: u8, len: u16 },
    /// An echo request of host `host`, or its reply.
    Echo { host: u8, reply: bool },
    /// Time passes.
    Wait(u32),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0..3u8, 0..2u8, 0..2u8, any::<bool>())
            .prop_map(|(host, port, server, reply)| Step::Udp { host, port, server, reply }),
        3 => (0..2usize, 0..9u8, 0..1400u16).prop_map(|(conn, what, len)| Step::Tcp { conn, what, len }),
        2 => (0..9u8, 0..1400u16).prop_map(|(what, len)| Step::Forward { what, len }),
        1 => (0..3u8, any::<bool>()).prop_map(|(host, reply)| Step::Echo { host, reply }),
        2 => prop_oneof![Just(500u32), Just(6_000), Just(12_000), Just(25_000)].prop_map(Step::Wait),
    ]
}

/// Turns steps into packets; each TCP connection's sequence numbers are
/// kept in its inside view and copied into the outside view.
struct Traffic {
    /// (inside view, outside view) of each connection.
    conns: Vec<(TcpConn, TcpConn)>,
}

impl Traffic {
    fn new() -> Traffic {
        let masq = (0..2u16).map(|i| {
            let client = ep(&host(i as u8), 40_000 + i);
            let server = ep(S4, 443);
            (
                TcpConn::new(client, server),
                TcpConn::new(ep(PUBLIC, 40_000 + i), server),
            )
        });
        // Forwarded: the remote is the client, the inside server answers.
        let forward = (
            TcpConn::new(ep(S4, 3333), ep(C4, 80)),
            TcpConn::new(ep(S4, 3333), ep(PUBLIC, 8080)),
        );
        Traffic {
            conns: masq.chain([forward]).collect(),
        }
    }

    /// A TCP move on `conn` whose client sends from `client_zone`. A
    /// packet is built in the view of the zone it is sent from (inside:
    /// `.0`, outside: `.1`); the sequence numbers live in the inside view.
    fn tcp(&mut self, conn: usize, what: u8, len: u16, client_zone: u8) -> (u8, Vec<u8>) {
        let server_zone = if client_zone == LAN { WAN } else { LAN };
        let sender = match what {
            0 | 2 | 3 | 5 | 7 => client_zone,
            _ => server_zone,
        };
        let (inside, outside) = &mut self.conns[conn];
        let (c_seq, s_seq) = (inside.c_seq, inside.s_seq);
        let view = if sender == LAN {
            &mut *inside
        } else {
            &mut *outside
        };
        view.c_seq = c_seq;
        view.s_seq = s_seq;
        let len = usize::from(len);
        let packet = match what {
            0 => view.syn(),
            1 => view.syn_ack(),
            2 => {
                let p = view.ack();
                view.c_seq = view.c_seq.wrapping_add(1);
                view.s_seq = view.s_seq.wrapping_add(1);
                p
            }
            3 => view.client_data(len),
            4 => view.server_data(len),
            5 => view.client_ack(),
            6 => view.server_ack(),
            7 => view.client_fin(),
            _ => view.server_fin(),
        };
        let (c_seq, s_seq) = (view.c_seq, view.s_seq);
        inside.c_seq = c_seq;
        inside.s_seq = s_seq;
        (sender, packet)
    }

    fn action(&mut self, step: &Step) -> Option<(u8, Vec<u8>)> {
        match *step {
            Step::Udp {
                host: i,
                port,
                server,
                reply,
            } => {
                let port = 4000 + u16::from(i) + 100 * u16::from(port);
                let server = ep(["198.18.2.20", "198.18.2.21"][usize::from(server)], 9000);
                Some(if reply {
                    (WAN, udp(server, ep(PUBLIC, port), b"r"))
                } else {
                    (LAN, udp(ep(&host(i), port), server, b"q"))
                })
            }
            Step::Tcp { conn, what, len } => Some(self.tcp(conn, what, len, LAN)),
            Step::Forward { what, len } => Some(self.tcp(2, what, len, WAN)),
            Step::Echo { host: i, reply } => Some(if reply {
                (WAN, echo(S4, PUBLIC, false, 7 + u16::from(i), 1))
            } else {
                (LAN, echo(&host(i), S4, true, 7 + u16::from(i), 1))
            }),
            Step::Wait(_) => None,
        }
    }
}

/// Sends or waits; returns the verdict and packet (if one was sent) and the
/// events.
fn apply(
    h: &mut Harness,
    step: &Step,
    packet: &Option<(u8, Vec<u8>)>,
) -> (Option<(Verdict, Vec<u8>)>, Vec<Event>) {
    let before = h.events.len();
    let sent = match (step, packet) {
        (Step::Wait(ms), _) => {
            h.advance_ms(u64::from(*ms));
            None
        }
        (_, Some((port, bytes))) => Some(h.pass(*port, bytes.clone())),
        (_, None) => None,
    };
    (sent, h.events[before..].to_vec())
}

fn sorted(ids: &mut Ids, flows: Vec<FlowInfo>) -> Vec<FlowInfo> {
    let mut flows: Vec<FlowInfo> = flows.iter().map(|f| ids.flow(f)).collect();
    flows.sort_by_key(|f| f.id);
    flows
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Run `before`, carry the table (translations and all) into a fresh
    /// gateway, run `after` on both: every verdict, translated packet,
    /// event (port releases included), flow and port count is the same.
    #[test]
    fn a_restored_gateway_translates_as_the_original(
        before in proptest::collection::vec(step(), 0..40),
        after in proptest::collection::vec(step(), 1..40),
    ) {
        let policy = policy(None);
        let mut traffic = Traffic::new();
        let mut a = harness(&policy);
        for s in &before {
            let packet = traffic.action(s);
            apply(&mut a, s, &packet);
        }
        let bytes = a.snapshot();
        let (mut b, done) = restored(&bytes, &policy, a.now);
        prop_assert_eq!(done.flows, a.flows().len());
        prop_assert!(b.events.is_empty(), "no event for carried flows");
        prop_assert_eq!(b.gw.nat().ports_in_use(), a.gw.nat().ports_in_use());
        let carried = a.flows().iter().map(|f| f.id).max().unwrap_or(0);
        let (mut ia, mut ib) = (Ids::new(carried), Ids::new(carried));
        prop_assert_eq!(sorted(&mut ia, a.flows()), sorted(&mut ib, b.flows()));
        for s in &after {
            let packet = traffic.action(s);
            let (va, ea) = apply(&mut a, s, &packet);
            let (vb, eb) = apply(&mut b, s, &packet);
            prop_assert_eq!(va, vb, "verdict and packet of {:?}", s);
            prop_assert_eq!(ia.events(&ea), ib.events(&eb), "events of {:?}", s);
            prop_assert_eq!(sorted(&mut ia, a.flows()), sorted(&mut ib, b.flows()), "flows after {:?}", s);
            prop_assert_eq!(b.gw.nat().ports_in_use(), a.gw.nat().ports_in_use());
        }
        // Everything closes in the end, and every port with it.
        a.advance_ms(3_600_000 * 3);
        b.advance_ms(3_600_000 * 3);
        prop_assert!(b.flows().is_empty() == a.flows().is_empty());
        prop_assert_eq!(b.gw.nat().ports_in_use(), a.gw.nat().ports_in_use());
    }
}

/// (inside port, translated port) of port events.
type Ports = Vec<(u16, u16)>;

/// The port events among `events`: assigned, released.
fn port_events(events: &[Event]) -> (Ports, Ports) {
    let (mut assigned, mut released) = (Vec::new(), Vec::new());
    for e in events {
        match &e.kind {
            EventKind::PortAssigned(m) => assigned.push((m.inside_port, m.translated_port)),
            EventKind::PortReleased(m) => released.push((m.inside_port, m.translated_port)),
            _ => {}
        }
    }
    (assigned, released)
}

#[test]
fn a_shared_mapping_comes_back_shared_and_is_released_with_its_last_flow() {
    let policy = policy(Some("40000-40001"));
    let mut a = harness(&policy);
    // One inside endpoint to two remotes: one mapping, two flows.
    let (v, _) = a.pass(LAN, udp(ep(C4, 5000), ep(S4, 53), b"q"));
    assert_eq!(v, Verdict::Forward(WAN));
    a.advance_ms(5_000);
    a.pass(LAN, udp(ep(C4, 5000), ep("198.18.2.21", 53), b"q"));
    assert_eq!(a.gw.nat().ports_in_use(), 1);
    let bytes = a.snapshot();
    let (mut b, done) = restored(&bytes, &policy, a.now);
    assert_eq!(done.flows, 2);
    assert_eq!(b.gw.nat().ports_in_use(), 1);
    // Both directions translated as before.
    let (v, out) = b.pass(LAN, udp(ep(C4, 5000), ep(S4, 53), b"q"));
    assert_eq!(v, Verdict::Forward(WAN));
    assert_eq!(out, recompute(&udp(ep(PUBLIC, 40000), ep(S4, 53), b"q")));
    let (v, back) = b.pass(WAN, udp(ep("198.18.2.21", 53), ep(PUBLIC, 40000), b"a"));
    assert_eq!(v, Verdict::Forward(LAN));
    assert_eq!(
        back,
        recompute(&udp(ep("198.18.2.21", 53), ep(C4, 5000), b"a"))
    );
    // The first flow is refreshed, the second expires: the port stays.
    b.advance_ms(15_000);
    b.pass(LAN, udp(ep(C4, 5000), ep(S4, 53), b"q"));
    b.advance_ms(6_000);
    assert_eq!(b.flows().len(), 1);
    assert!(
        port_events(&b.events).1.is_empty(),
        "one flow still holds the port"
    );
    assert_eq!(b.gw.nat().ports_in_use(), 1);
    b.advance_ms(15_000);
    assert!(b.flows().is_empty());
    assert_eq!(
        port_events(&b.events).1,
        vec![(5000, 40000)],
        "released once"
    );
    assert_eq!(b.gw.nat().ports_in_use(), 0);
}

#[test]
fn a_restored_port_is_never_handed_out_again() {
    let policy = policy(Some("40000-40001"));
    let mut a = harness(&policy);
    a.pass(LAN, udp(ep(C4, 5000), ep(S4, 53), b"q"));
    let bytes = a.snapshot();
    let (mut b, _) = restored(&bytes, &policy, a.now);
    let (v, out) = b.pass(LAN, udp(ep(&host(1), 5000), ep(S4, 53), b"q"));
    assert_eq!(v, Verdict::Forward(WAN));
    assert_eq!(
        out,
        recompute(&udp(ep(PUBLIC, 40001), ep(S4, 53), b"q")),
        "the other port of the range"
    );
    let (v, _) = b.pass(LAN, udp(ep(&host(2), 5000), ep(S4, 53), b"q"));
    assert_eq!(v, Verdict::Drop(DropReason::NatPortsExhausted));
    assert_eq!(port_events(&b.events).0, vec![(5000, 40001)]);
}

#[test]
fn a_translated_flow_that_expired_outside_holds_no_port() {
    let policy = policy(Some("40000-40000"));
    let mut a = harness(&policy);
    a.pass(LAN, udp(ep(C4, 5000), ep(S4, 53), b"q"));
    let bytes = a.snapshot();
    let container = Container::parse(&bytes).unwrap();
    let mut b = harness(&policy);
    b.now = a.now;
    let done =
        b.gw.restore(b.now, &container, Duration::from_secs(30))
            .unwrap();
    assert_eq!((done.flows, done.expired), (0, 1));
    assert_eq!(b.gw.nat().ports_in_use(), 0);
    assert!(b.events.is_empty());
    let (v, _) = b.pass(LAN, udp(ep(&host(1), 6000), ep(S4, 53), b"q"));
    assert_eq!(v, Verdict::Forward(WAN), "the port is free again");
}

/// The records of `bytes` rearranged by `change`, in a new container.
fn rewritten(bytes: &[u8], change: impl FnOnce(&mut Vec<(u8, Vec<u8>)>)) -> Vec<u8> {
    let container = Container::parse(bytes).unwrap();
    let mut records: Vec<(u8, Vec<u8>)> = container
        .records()
        .map(|r| r.map(|(k, p)| (k, p.to_vec())).unwrap())
        .collect();
    change(&mut records);
    let mut writer = Writer::new(Vec::new(), &container.header).unwrap();
    let mut framed = Vec::new();
    for (kind, payload) in &records {
        frame(&mut framed, *kind, |out| out.extend_from_slice(payload));
    }
    writer.framed(&framed, records.len() as u64).unwrap();
    writer.finish().unwrap()
}

#[test]
fn translations_that_do_not_fit_refuse_the_whole_container() {
    let policy = policy(None);
    let mut a = harness(&policy);
    a.pass(LAN, udp(ep(C4, 5000), ep(S4, 53), b"q"));
    a.pass(LAN, udp(ep(&host(1), 5001), ep(S4, 53), b"q"));
    a.pass(LAN, udp(ep(&host(2), 6000), ep(S4, 53), b"q"));
    let bytes = a.snapshot();
    let kinds = |b: &[u8]| -> Vec<u8> {
        Container::parse(b)
            .unwrap()
            .records()
            .map(|r| r.unwrap().0)
            .collect()
    };
    assert_eq!(kinds(&bytes), [FLOW, TRANSLATION].repeat(3));
    let refused = |bytes: Vec<u8>, why: &str| {
        let container = Container::parse(&bytes).expect("a valid container");
        let b = harness(&policy);
        match b.gw.restore(b.now, &container, Duration::ZERO) {
            Err(StateError::Corrupt(e)) => assert!(e.contains(why), "{e}"),
            other => panic!("{why}: {other:?}"),
        }
        assert!(b.flows().is_empty() && b.gw.nat().ports_in_use() == 0);
    };
    // A translation away from its flow.
    refused(
        rewritten(&bytes, |r| {
            let t = r.iter().position(|(k, _)| *k == TRANSLATION).unwrap();
            let moved = r.remove(t);
            r.push(moved);
        }),
        "not right after its flow record",
    );
    // Two translations with one tuple, and two mappings on one port.
    let translation_of = |r: &Vec<(u8, Vec<u8>)>, n: usize| {
        r.iter()
            .enumerate()
            .filter(|(_, (k, _))| *k == TRANSLATION)
            .nth(n)
            .unwrap()
            .0
    };
    refused(
        rewritten(&bytes, |r| {
            let (first, second) = (translation_of(r, 0), translation_of(r, 1));
            let tuple = r[first].1[8..46].to_vec();
            r[second].1[8..46].copy_from_slice(&tuple);
        }),
        "translated tuple held by another flow",
    );
    refused(
        rewritten(&bytes, |r| {
            let (first, second) = (translation_of(r, 0), translation_of(r, 1));
            // The second mapping's translated port becomes the first's.
            let port = r[first].1[84..86].to_vec();
            r[second].1[84..86].copy_from_slice(&port);
        }),
        "its port is another mapping's",
    );
    // A translation of another protocol than its flow's.
    refused(
        rewritten(&bytes, |r| {
            let t = translation_of(r, 0);
            r[t].1[44] = 6;
            r[t].1[49] = 6;
        }),
        "protocol or IP version",
    );
}
