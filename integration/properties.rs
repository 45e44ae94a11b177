//! Property tests of the core: what must hold for any input.
//!
//! * random bytes never panic the parser or the engine;
//! * the flow key is symmetric: a packet and its reply build the same key;
//! * every created flow is indicated at closure exactly once, whatever the
//!   traffic, timing and table pressure;
//! * the table never holds more than `max_flows` flows.

use proptest::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tunwall::engine::{Gateway, GatewayConfig, HostModel};
use tunwall::event::EventKind;
use tunwall::flow::key::Orientation;
use tunwall::flow::{FlowConfig, FlowKey, Zone};
use tunwall::packet::parse;
use tunwall::policy::{Action, Decision, FnPolicy};
use tunwall::route::PortSpec;
use tunwall::testkit::{self, ep};
use tunwall::time::Instant;

fn gateway(max_flows: usize, shards: usize) -> Arc<Gateway> {
    gateway_for(max_flows, shards, 1)
}

fn gateway_for(max_flows: usize, shards: usize, workers: usize) -> Arc<Gateway> {
    let mut flows = FlowConfig::with_max_flows(max_flows);
    flows.udp_idle = Duration::from_secs(5);
    flows.icmp_idle = Duration::from_secs(3);
    flows.tcp_opening = Duration::from_secs(4);
    flows.tcp_closing = Duration::from_secs(4);
    flows.tcp_time_wait = Duration::from_secs(2);
    flows.tcp_closed = Duration::from_secs(1);
    flows.fragment_timeout = Duration::from_secs(2);
    Gateway::new(
        GatewayConfig {
            ports: vec![
                PortSpec::new("lan", Zone::Inside, &["198.18.1.0/24", "fd00:1::/64"]),
                PortSpec::new("lan2", Zone::Inside, &["198.18.3.0/24"]),
                PortSpec::new("wan", Zone::Outside, &["0.0.0.0/0", "::/0"]),
            ],
            flows,
            host_model: HostModel::Weak,
            shards: Some(shards),
        },
        Arc::new(tunwall::policy::DefaultPolicy::default()),
        workers,
    )
}

/// One step of random traffic between a few inside and outside hosts.
#[derive(Clone, Debug)]
enum Step {
    Packet {
        inbound: bool,
        v6: bool,
        protocol: u8,
        host: u8,
        port: u16,
        flags: u8,
        seq: u32,
        via_lan2: bool,
        worker: bool,
    },
    Advance(u16),
    Tick,
    NewPolicy(bool),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (any::<bool>(), any::<bool>(), prop::sample::select(vec![6u8, 17, 1, 47]), 0u8..4, 1u16..4,
              prop::sample::select(vec![0x02u8, 0x12, 0x10, 0x11, 0x04, 0x14, 0x18]), any::<u32>(), any::<bool>(), any::<bool>())
            .prop_map(|(inbound, v6, protocol, host, port, flags, seq, via_lan2, worker)| Step::Packet {
                inbound, v6, protocol, host, port, flags, seq, via_lan2, worker,
            }),
        2 => (0u16..3000).prop_map(Step::Advance),
        1 => Just(Step::Tick),
        1 => any::<bool>().prop_map(Step::NewPolicy),
    ]
}

fn build(
    inbound: bool,
    v6: bool,
    protocol: u8,
    host: u8,
    port: u16,
    flags: u8,
    seq: u32,
) -> Vec<u8> {
    let inside = if v6 {
        format!("fd00:1::{:x}", 10 + host)
    } else {
        format!("198.18.1.{}", 10 + host)
    };
    let outside = if v6 { "fd00:2::14" } else { "198.18.2.20" };
    let (src, dst) = if inbound {
        (outside, inside.as_str())
    } else {
        (inside.as_str(), outside)
    };
    let (sport, dport) = if inbound {
        (80 + port, 40000 + port)
    } else {
        (40000 + port, 80 + port)
    };
    match protocol {
        6 => testkit::tcp(
            ep(src, sport),
            ep(dst, dport),
            flags,
            seq,
            seq.rotate_left(7),
            65535,
            None,
            b"data",
        ),
        17 => testkit::udp(ep(src, sport), ep(dst, dport), b"data"),
        1 => testkit::echo(src, dst, !inbound, port, 1),
        _ => testkit::raw(src, dst, protocol),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200), port in 0u8..4) {
        let _ = parse(&bytes);
        let gw = gateway(16, 1);
        let mut engine = gw.engine(0);
        let mut copy = bytes.clone();
        let _ = engine.process(Instant::ZERO, port, &mut copy);
        engine.handle_timeout(Instant::from_secs(1));
    }

    #[test]
    fn mutated_valid_packets_never_panic(
        protocol in prop::sample::select(vec![6u8, 17, 1, 47]),
        v6 in any::<bool>(),
        flips in prop::collection::vec((0usize..80, any::<u8>()), 1..6),
        cut in 0usize..80,
    ) {
        let mut packet = build(false, v6, protocol, 0, 1, 0x02, 1);
        for (at, value) in flips {
            if let Some(byte) = packet.get_mut(at) {
                *byte = value;
            }
        }
        packet.truncate(packet.len().saturating_sub(cut));
        let gw = gateway(16, 1);
        let mut engine = gw.engine(0);
        let _ = engine.process(Instant::ZERO, 0, &mut packet);
    }

    #[test]
    fn config_text_never_panics(
        cuts in prop::collection::vec((0usize..6000, 0usize..40), 1..5),
        noise in prop::collection::vec(any::<char>(), 0..40),
    ) {
        // The shipped example, cut and spliced with noise: every outcome is Ok or a located error.
        let mut text = include_str!("../configs/example.toml").to_string();
        for (at, len) in cuts {
            let at = at.min(text.len());
            let end = (at + len).min(text.len());
            if text.is_char_boundary(at) && text.is_char_boundary(end) {
                text.replace_range(at..end, &noise.iter().collect::<String>());
            }
        }
        let registry = tunwall::policy::CalloutRegistry::default();
        if let Err(e) = tunwall::config::Config::parse(std::path::Path::new("fuzz.toml"), &text, &registry) {
            prop_assert!(e.line >= 1 && !e.message.is_empty(), "{e}");
        }
    }

    #[test]
    fn flow_key_is_symmetric(
        v6 in any::<bool>(),
        protocol in prop::sample::select(vec![6u8, 17, 1, 47]),
        host in 0u8..4,
        port in 1u16..100,
    ) {
        let out = parse(&build(false, v6, protocol, host, port, 0x02, 9)).unwrap();
        let back = parse(&build(true, v6, protocol, host, port, 0x12, 9)).unwrap();
        let a = FlowKey::of_packet(&out, Orientation::Outbound).unwrap();
        let b = FlowKey::of_packet(&back, Orientation::Inbound).unwrap();
        prop_assert_eq!(a.key, b.key);
        prop_assert!(!a.swapped && b.swapped);
        // The same packet seen from the other zone is another flow.
        let c = FlowKey::of_packet(&out, Orientation::Inbound).unwrap();
        prop_assert_ne!(a.key, c.key);
        // Between two ports of one zone both directions find one key too,
        // lying on it the opposite ways, and it is not a between-zones key.
        let d = FlowKey::of_packet(&out, Orientation::SameZone).unwrap();
        let e = FlowKey::of_packet(&back, Orientation::SameZone).unwrap();
        prop_assert_eq!(d.key, e.key);
        prop_assert_ne!(d.swapped, e.swapped);
        prop_assert_ne!(d.key, a.key);
    }

    #[test]
    fn every_flow_closes_exactly_once_and_the_limit_holds(
        steps in prop::collection::vec(step(), 1..120),
        max_flows in 1usize..12,
        shards in 1usize..4,
        permit_inbound in any::<bool>(),
        workers in 1usize..3,
    ) {
        // With two workers every packet goes to a random one of them: flows
        // created by one worker are found and closed by the other.
        let gw = gateway_for(max_flows, shards, workers);
        let policy = |generation: u32, permit_inbound: bool| {
            Arc::new(FnPolicy::new(generation, move |req: &tunwall::policy::ClassifyRequest| {
                let inbound = req.layer == tunwall::policy::Layer::AuthRecvAccept;
                Decision::default_action(if inbound && !permit_inbound { Action::Block } else { Action::Permit })
            }))
        };
        gw.set_policy(policy(0, permit_inbound));
        let mut engines: Vec<_> = (0..workers).map(|w| gw.engine(w)).collect();
        let mut now = 0u64;
        let mut generation = 0;
        let mut created: HashMap<u64, u32> = HashMap::new();
        let mut closed: HashMap<u64, u32> = HashMap::new();
        let mut record = |engine: &mut tunwall::engine::Engine| -> Result<(), TestCaseError> {
            for event in engine.drain_events() {
                match event.kind {
                    EventKind::FlowCreated(f) => *created.entry(f.id).or_default() += 1,
                    EventKind::FlowClosed { flow, .. } => {
                        prop_assert!(created.contains_key(&flow.id), "flow {} closed before it was created", flow.id);
                        *closed.entry(flow.id).or_default() += 1;
                    }
                    _ => {}
                }
            }
            Ok(())
        };
        for step in steps {
            match step {
                Step::Packet { inbound, v6, protocol, host, port, flags, seq, via_lan2, worker } => {
                    let mut packet = build(inbound, v6, protocol, host, port, flags, seq);
                    let arrival = if inbound { 2 } else if via_lan2 && !v6 { 1 } else { 0 };
                    let engine = &mut engines[usize::from(worker) % workers];
                    let _ = engine.process(Instant::from_millis(now), arrival, &mut packet);
                }
                Step::Advance(ms) => now += u64::from(ms),
                Step::Tick => {
                    for engine in &mut engines {
                        engine.handle_timeout(Instant::from_millis(now));
                    }
                }
                Step::NewPolicy(permit) => {
                    generation += 1;
                    for engine in &mut engines {
                        engine.set_policy(policy(generation, permit));
                    }
                }
            }
            for engine in &mut engines {
                record(engine)?;
            }
            prop_assert!(gw.flows_active() <= max_flows);
            prop_assert_eq!(gw.flows(Instant::from_millis(now)).len(), gw.flows_active());
        }
        for engine in &mut engines {
            engine.close_all(Instant::from_millis(now), false);
            record(engine)?;
        }
        prop_assert_eq!(gw.flows_active(), 0);
        for (id, n) in &created {
            prop_assert_eq!(*n, 1, "flow {} created {} times", id, n);
            prop_assert_eq!(closed.get(id).copied(), Some(1), "flow {} closed {:?} times", id, closed.get(id));
        }
        prop_assert_eq!(created.len(), closed.len());
    }
}
