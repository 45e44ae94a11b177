//! Carrying the flow table across processes (SPEC §13) on the virtual
//! clock: a gateway restored from another's snapshot behaves exactly as
//! the original would have (same verdicts, events, timers and TCP window
//! checks), for any traffic (property-tested); timers go on from where
//! they were, advanced by the time spent outside a process; flows that
//! expired meanwhile vanish without an event; ids are never reused; a
//! damaged container is refused whole.

mod common;

use common::*;
use proptest::prelude::*;
use std::sync::Arc;
use std::time::Duration;
use tunwall::engine::{Restored, Verdict};
use tunwall::event::{Event, FlowInfo};
use tunwall::flow::{FlowConfig, TcpState};
use tunwall::policy::{Action, Authorizer, ClassifyRequest, Decision, FnPolicy};
use tunwall::reason::CloseReason;
use tunwall::state::{Container, StateError};
use tunwall::time::Instant;

/// A policy that permits everything but, when `strict`, UDP to port 53;
/// every layer at `generation`.
fn policy(generation: u32, strict: bool) -> Arc<dyn Authorizer> {
    Arc::new(FnPolicy::new(generation, move |r: &ClassifyRequest| {
        let dns = r.protocol == 17 && (r.remote_port == 53 || r.local_port == 53);
        Decision::default_action(if strict && dns {
            Action::Block
        } else {
            Action::Permit
        })
    }))
}

/// Lifetimes short enough for the steps below to expire flows.
fn flows() -> FlowConfig {
    let secs = Duration::from_secs;
    FlowConfig {
        udp_idle: secs(20),
        icmp_idle: secs(10),
        tcp_opening: secs(15),
        tcp_closing: secs(15),
        tcp_time_wait: secs(5),
        tcp_closed: secs(3),
        ..FlowConfig::with_max_flows(1024)
    }
}

/// A fresh harness at `now` restored from `bytes`, `elapsed` after they were taken.
fn restored(
    bytes: &[u8],
    policy: Arc<dyn Authorizer>,
    now: Instant,
    elapsed: Duration,
) -> (Harness, Restored) {
    let container = Container::parse(bytes).expect("container");
    let mut h = Harness::with(flows(), tunwall::engine::HostModel::Weak, policy);
    h.now = now;
    let done = h.gw.restore(now, &container, elapsed).expect("restore");
    (h, done)
}

/// One step of traffic among a few TCP connections, UDP and ICMP flows and
/// a multicast state with its children.
#[derive(Clone, Debug)]
enum Step {
    /// A TCP move on connection `conn` (0..3).
    Tcp { conn: usize, what: u8, len: u16 },
    /// A UDP datagram between client port `port` and the server's `dst`.
    Udp { port: u16, dst: u16, reply: bool },
    /// An echo request or reply.
    Echo { id: u16, reply: bool },
    /// Multicast out of the inside, or a unicast answer to it.
    Mcast { answer: bool, from: u8 },
    /// Time passes.
    Wait(u32),
    /// A new policy (DNS blocked or not) at the next generation.
    Reload(bool),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        5 => (0..3usize, 0..12u8, 0..1400u16).prop_map(|(conn, what, len)| Step::Tcp { conn, what, len }),
        2 => (prop_oneof![Just(53u16), Just(4000)], prop_oneof![Just(53u16), Just(9000)], any::<bool>())
            .prop_map(|(port, dst, reply)| Step::Udp { port, dst, reply }),
        1 => (0..3u16, any::<bool>()).prop_map(|(id, reply)| Step::Echo { id, reply }),
        1 => (any::<bool>(), 0..3u8).prop_map(|(answer, from)| Step::Mcast { answer, from }),
        2 => prop_oneof![Just(200u32), Just(2_500), Just(6_000), Just(12_000), Just(25_000)].prop_map(Step::Wait),
        1 => any::<bool>().prop_map(Step::Reload),
    ]
}

/// Turns steps into packets, keeping each TCP connection's sequence numbers.
struct Traffic {
    conns: Vec<TcpConn>,
    generation: u32,
}

enum Action2 {
    Send(u8, Vec<u8>),
    Wait(Duration),
    Policy(Arc<dyn Authorizer>),
}

impl Traffic {
    fn new() -> Traffic {
        Traffic {
            conns: (0..3)
                .map(|i| TcpConn::new(ep(C4, 40_000 + i), ep(S4, 443)))
                .collect(),
            generation: 1,
        }
    }

    fn action(&mut self, step: &Step) -> Action2 {
        match *step {
            Step::Tcp { conn, what, len } => {
                let c = &mut self.conns[conn];
                let len = usize::from(len);
                let (port, packet) = match what {
                    0 => (LAN, c.syn()),
                    1 => (WAN, c.syn_ack()),
                    2 => {
                        let p = (LAN, c.ack());
                        c.c_seq = c.c_seq.wrapping_add(1);
                        c.s_seq = c.s_seq.wrapping_add(1);
                        p
                    }
                    3 | 4 => (LAN, c.client_data(len)),
                    5 | 6 => (WAN, c.server_data(len)),
                    7 => (LAN, c.client_ack()),
                    8 => (WAN, c.server_ack()),
                    9 => (LAN, c.client_fin()),
                    10 => (WAN, c.server_fin()),
                    _ => {
                        // Far out of window: must be dropped by both.
                        let mut far = TcpConn::new(c.client, c.server);
                        far.c_seq = c.c_seq.wrapping_add(0x4000_0000);
                        far.s_seq = c.s_seq;
                        (LAN, far.client_data(len.max(1)))
                    }
                };
                Action2::Send(port, packet)
            }
            Step::Udp { port, dst, reply } => {
                let (c, s) = (ep(C4, port), ep(S4, dst));
                if reply {
                    Action2::Send(WAN, udp(s, c, b"r"))
                } else {
                    Action2::Send(LAN, udp(c, s, b"q"))
                }
            }
            Step::Echo { id, reply } => Action2::Send(
                if reply { WAN } else { LAN },
                if reply {
                    echo(S4, C4, false, id, 1)
                } else {
                    echo(C4, S4, true, id, 1)
                },
            ),
            Step::Mcast { answer, from } => {
                if answer {
                    let src = ["198.18.2.1", "198.18.2.2", "198.18.2.3"][usize::from(from)];
                    Action2::Send(WAN, udp(ep(src, 5353), ep(C4, 5353), b"a"))
                } else {
                    Action2::Send(LAN, udp(ep(C4, 5353), ep("224.0.0.251", 5353), b"m"))
                }
            }
            Step::Wait(ms) => Action2::Wait(Duration::from_millis(u64::from(ms))),
            Step::Reload(strict) => {
                self.generation += 1;
                Action2::Policy(policy(self.generation, strict))
            }
        }
    }
}

/// Applies `action` to `h`; returns the verdict (if a packet) and the events.
fn apply(h: &mut Harness, action: &Action2) -> (Option<Verdict>, Vec<Event>) {
    let before = h.events.len();
    let verdict = match action {
        Action2::Send(port, packet) => Some(h.send(*port, packet.clone())),
        Action2::Wait(d) => {
            h.advance(*d);
            None
        }
        Action2::Policy(p) => {
            h.engine.set_policy(Arc::clone(p));
            None
        }
    };
    (verdict, h.events[before..].to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Run `before`, carry the table into a fresh gateway, run `after` on
    /// both: every verdict, event and flow is the same.
    #[test]
    fn a_restored_gateway_behaves_as_the_original(
        before in proptest::collection::vec(step(), 0..40),
        after in proptest::collection::vec(step(), 1..40),
    ) {
        let mut traffic = Traffic::new();
        let mut a = Harness::with(flows(), tunwall::engine::HostModel::Weak, policy(1, false));
        a.now = Instant::from_secs(100);
        for s in &before {
            let action = traffic.action(s);
            apply(&mut a, &action);
        }
        let bytes = a.snapshot();
        let (mut b, done) = restored(&bytes, a.engine.policy().clone(), a.now, Duration::ZERO);
        prop_assert_eq!(done.flows, a.flows().len());
        prop_assert!(b.events.is_empty(), "no event for carried flows");
        let carried = a.flows().iter().map(|f| f.id).max().unwrap_or(0);
        let (mut ia, mut ib) = (Ids::new(carried), Ids::new(carried));
        prop_assert_eq!(a.flows(), b.flows());
        for s in &after {
            let action = traffic.action(s);
            let (va, ea) = apply(&mut a, &action);
            let (vb, eb) = apply(&mut b, &action);
            prop_assert_eq!(va, vb, "verdict of {:?}", s);
            prop_assert_eq!(ia.events(&ea), ib.events(&eb), "events of {:?}", s);
            let fa: Vec<FlowInfo> = a.flows().iter().map(|f| ia.flow(f)).collect();
            let mut fb: Vec<FlowInfo> = b.flows().iter().map(|f| ib.flow(f)).collect();
            fb.sort_by_key(|f| f.id);
            let mut fa = fa;
            fa.sort_by_key(|f| f.id);
            prop_assert_eq!(fa, fb, "flows after {:?}", s);
        }
    }
}

#[test]
fn timers_advance_by_the_time_outside_and_expired_flows_vanish_without_events() {
    let mut a = Harness::with(flows(), tunwall::engine::HostModel::Weak, policy(1, false));
    a.now = Instant::from_secs(50);
    let mut conn = TcpConn::new(ep(C4, 40_000), ep(S4, 443));
    conn.handshake(&mut a);
    let data = conn.client_data(100);
    a.out(data);
    a.out(udp(ep(C4, 4000), ep(S4, 9000), b"q")); // udp_idle 20 s
    a.advance(Duration::from_secs(4));
    a.out(echo(C4, S4, true, 7, 1)); // icmp_idle 10 s
    let before = a.flows();
    let bytes = a.snapshot();

    // 12 s outside: the UDP flow (idle 16 s of 20) and the TCP flow stay, the echo flow (12 s of 10) is gone.
    let (mut b, done) = restored(
        &bytes,
        policy(1, false),
        Instant::from_secs(1_000),
        Duration::from_secs(12),
    );
    assert_eq!(
        done,
        Restored {
            flows: 2,
            expired: 1,
            refused: 0
        }
    );
    assert!(b.events.is_empty());
    let tcp = b.flows().into_iter().find(|f| f.key.protocol == 6).unwrap();
    let was = before.iter().find(|f| f.id == tcp.id).unwrap();
    assert_eq!(tcp.state, was.state);
    assert_eq!(
        (tcp.out, tcp.inbound),
        (was.out, was.inbound),
        "counters carried"
    );
    assert_eq!(tcp.established, was.established);
    assert_eq!(
        b.now.saturating_since(tcp.created),
        a.now.saturating_since(was.created) + Duration::from_secs(12),
        "the age counts the time outside"
    );
    let udp_flow = b
        .flows()
        .into_iter()
        .find(|f| f.key.protocol == 17)
        .unwrap();
    assert_eq!(
        b.now.saturating_since(udp_flow.last_seen),
        Duration::from_secs(16)
    );
    // The UDP flow expires 4 s later, not 20 s later, with its closure.
    b.advance(Duration::from_millis(3_900));
    assert!(b.closed().is_empty());
    b.advance(Duration::from_millis(200));
    assert_eq!(b.closed(), vec![(udp_flow.id, CloseReason::IdleTimeout)]);

    // The TCP connection goes on: data in window passes, far data does not.
    let data = conn.server_data(10);
    assert_eq!(b.inb(data), Verdict::Forward(LAN));
    let mut far = TcpConn::new(conn.client, conn.server);
    far.c_seq = conn.c_seq.wrapping_add(0x4000_0000);
    far.s_seq = conn.s_seq;
    assert!(matches!(b.out(far.client_data(10)), Verdict::Drop(_)));
    assert_eq!(
        b.flows().iter().find(|f| f.id == tcp.id).unwrap().state,
        tunwall::flow::FlowState::Tcp(TcpState::Established)
    );

    // A new flow never reuses a carried id.
    b.out(udp(ep(C4, 4001), ep(S4, 9000), b"q"));
    let new = b.created();
    assert_eq!(new.len(), 1);
    assert!(
        before.iter().all(|f| f.id < new[0]),
        "{new:?} after {before:?}"
    );
}

#[test]
fn a_changed_layer_reauthorizes_carried_flows_an_unchanged_one_does_not() {
    let mut a = Harness::with(flows(), tunwall::engine::HostModel::Weak, policy(3, false));
    a.now = Instant::from_secs(10);
    a.out(udp(ep(C4, 4000), ep(S4, 53), b"q"));
    let bytes = a.snapshot();
    // Same generation: no reauthorization.
    let (mut same, _) = restored(&bytes, policy(3, false), a.now, Duration::ZERO);
    same.out(udp(ep(C4, 4000), ep(S4, 53), b"q"));
    assert!(same.events.is_empty());
    // The next generation blocks DNS: the carried flow is reauthorized and closed.
    let (mut next, _) = restored(&bytes, policy(4, true), a.now, Duration::ZERO);
    assert!(matches!(
        next.out(udp(ep(C4, 4000), ep(S4, 53), b"q")),
        Verdict::Drop(_)
    ));
    assert_eq!(next.closed().len(), 1);
    assert_eq!(next.closed()[0].1, CloseReason::ReauthBlocked);
}

#[test]
fn damaged_containers_are_refused_whole() {
    let mut a = Harness::with(flows(), tunwall::engine::HostModel::Weak, policy(1, false));
    for port in 0..20 {
        a.out(udp(ep(C4, 4000 + port), ep(S4, 9000), b"q"));
    }
    assert_eq!(
        a.inb(udp(ep(S4, 7000), ep(C4, 7000), b"x")),
        Verdict::Forward(LAN)
    );
    let bytes = a.snapshot();
    assert!(Container::parse(&bytes).is_ok());
    for len in [0, 3, 8, 11, 15, 16, 40, bytes.len() / 2, bytes.len() - 1] {
        let err = Container::parse(&bytes[..len]).err();
        assert!(
            matches!(err, Some(StateError::Truncated | StateError::NotState)),
            "cut at {len}: {err:?}"
        );
    }
    for at in (0..bytes.len()).step_by(7) {
        let mut bad = bytes.clone();
        bad[at] ^= 0x20;
        assert!(Container::parse(&bad).is_err(), "a flipped bit at {at}");
    }
    let mut old = bytes.clone();
    old[8] = 0;
    assert_eq!(
        Container::parse(&old).err(),
        Some(StateError::Version(0)),
        "an old version is named"
    );
    assert_eq!(
        Container::parse(b"hello world, this is not it").err(),
        Some(StateError::NotState)
    );
    // Restoring into a gateway with fewer ports fails before any flow is applied.
    let container = Container::parse(&bytes).unwrap();
    let small = tunwall::engine::Gateway::new(
        tunwall::engine::GatewayConfig {
            ports: ports()[..1].to_vec(),
            flows: flows(),
            host_model: tunwall::engine::HostModel::Weak,
            shards: Some(1),
        },
        policy(1, false),
        1,
    );
    assert!(matches!(
        small.restore(Instant::ZERO, &container, Duration::ZERO),
        Err(StateError::Corrupt(_))
    ));
    assert!(small.table().is_empty());
}
