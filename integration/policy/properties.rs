//! Property tests against reference implementations: the filter index
//! and `tunwall explain` are both shortcuts whose only contract is to
//! decide exactly as in-order evaluation and the engine do, so random
//! filters and packets check them against those references.

use crate::common::*;
use proptest::prelude::*;
use std::path::Path;
use std::sync::Arc;
use tunwall::config::Config;
use tunwall::engine::HostModel;
use tunwall::explain::Outcome;
use tunwall::flow::FlowConfig;
use tunwall::packet::{IpVersion, raw_addr};
use tunwall::policy::{
    Authorizer, CalloutRegistry, ClassifyFlags, ClassifyRequest, Layer, Policy, PolicyNote,
};
use tunwall::testkit::compile_policy as compile;
use tunwall::time::Instant;

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
