//! Where a masqueraded flow's translated tuple is indexed
//! (`tunwall::flow::hash`): in the flow's own shard, whether the original
//! port is kept or another one allocated, so that a packet from either
//! side of the gateway finds the flow with one lock and one probe; gone
//! with the flow; found again after the shard's index grows.

use std::sync::Arc;
use tunwall::engine::{Gateway, GatewayConfig, HostModel, Verdict};
use tunwall::flow::key::Orientation;
use tunwall::flow::{FlowConfig, FlowKey};
use tunwall::packet::{parse, raw_addr};
use tunwall::testkit::*;

const PUBLIC: &str = "198.18.2.1";
const PUBLIC6: &str = "fd00:2::1";

fn harness(range: Option<&str>) -> Harness {
    let policy = compile_policy(&masquerade_filter(&[PUBLIC, PUBLIC6], range), None);
    // Two workers, so two shard groups of 32 shards.
    let gw = Gateway::new(
        GatewayConfig {
            ports: ports(),
            flows: FlowConfig::with_max_flows(100_000),
            host_model: HostModel::Weak,
            shards: Some(64),
        },
        Arc::new(policy),
        2,
    );
    let engine = gw.engine(0);
    Harness {
        gw,
        engine,
        now: tunwall::time::Instant::ZERO,
        events: Vec::new(),
        released: Vec::new(),
    }
}

/// The key a reply from the server carries, as the table sees it.
fn reply_key(reply: &[u8]) -> FlowKey {
    FlowKey::of_packet(&parse(reply).unwrap(), Orientation::Inbound)
        .unwrap()
        .key
}

/// Where the reply's key is indexed: (found as a translated tuple, the
/// flow's own key), looking in every group's shard for it.
fn indexed(h: &Harness, key: &FlowKey) -> Option<(bool, FlowKey)> {
    let table = h.gw.table();
    let hash = table.hash(key);
    (0..table.groups()).find_map(|group| {
        let shard = table.lock(group, hash);
        shard
            .find_any(hash, key)
            .map(|(_, entry, on_alias)| (on_alias, entry.key()))
    })
}

/// A client's datagram through masquerade; returns the server's reply
/// as it arrives at the gateway and checks that it reaches the client.
fn exchange(h: &mut Harness, client: Ep, server: Ep) -> Vec<u8> {
    let (v, out) = h.pass(LAN, udp(client, server, b"q"));
    assert_eq!(v, Verdict::Forward(WAN));
    let p = parse(&out).unwrap();
    let (sport, _) = p.ports().unwrap();
    let public = if p.version == tunwall::packet::IpVersion::V4 {
        PUBLIC
    } else {
        PUBLIC6
    };
    let reply = udp(server, ep(public, sport), b"a");
    let (v, back) = h.pass(WAN, reply.clone());
    assert_eq!(v, Verdict::Forward(LAN));
    let b = parse(&back).unwrap();
    assert_eq!(
        (b.dst, b.ports().unwrap().1),
        (raw_addr(client.0).1, client.1)
    );
    reply
}

#[test]
fn a_masqueraded_flows_translated_tuple_lives_in_its_shard_with_the_port_kept_or_not() {
    let mut h = harness(None);
    assert_eq!(h.gw.table().group_shards(0).len(), 32);
    let mut in_shard = 0;
    for host in 10..110 {
        for (client, server) in [
            (ep(&format!("198.18.1.{host}"), 4000), ep(S4, 53)),
            (ep(&format!("fd00:1::{host:x}"), 4000), ep(S6, 53)),
        ] {
            // All take source port 4000: the first keeps it, the others
            // get a port chosen for their shard.
            let reply = exchange(&mut h, client, server);
            let key = reply_key(&reply);
            let (on_alias, flow_key) = indexed(&h, &key).expect("the reply's key is indexed");
            assert!(on_alias, "found as the translated tuple");
            assert_eq!(flow_key.local, raw_addr(client.0).1, "of the client's flow");
            assert_eq!(flow_key.local_port, 4000);
            in_shard += 1;
        }
    }
    assert_eq!(in_shard, 200);
    assert_eq!(h.gw.nat().ports_in_use(), 200);
}

#[test]
fn a_closed_flows_translated_tuple_is_gone_from_its_shard_and_its_port_reused() {
    let mut h = harness(None);
    let reply = exchange(&mut h, ep(C4, 5000), ep(S4, 53));
    let key = reply_key(&reply);
    assert!(indexed(&h, &key).is_some_and(|(alias, _)| alias));
    h.advance_ms(61_000);
    assert!(h.flows().is_empty());
    assert_eq!(indexed(&h, &key), None, "nothing left behind");
    // Another host keeps the same port, free again: the same translated
    // tuple, now of its flow.
    let again = exchange(&mut h, ep("198.18.1.11", 5000), ep(S4, 53));
    assert_eq!(reply_key(&again), key);
    let (alias, flow_key) = indexed(&h, &key).unwrap();
    assert!(alias);
    assert_eq!(flow_key.local, raw_addr("198.18.1.11".parse().unwrap()).1);
}

#[test]
fn translated_tuples_are_found_again_after_the_shards_indexes_grow() {
    let mut h = harness(None);
    let mut replies = Vec::new();
    for i in 0..3000u32 {
        let client = ep(
            &format!("198.18.1.{}", 10 + i % 200),
            2000 + (i / 200) as u16,
        );
        replies.push((client, exchange(&mut h, client, ep(S4, 53))));
    }
    for (client, reply) in &replies {
        let (alias, flow_key) = indexed(&h, &reply_key(reply)).expect("still indexed");
        assert!(alias);
        assert_eq!(
            (flow_key.local, flow_key.local_port),
            (raw_addr(client.0).1, client.1)
        );
        let (v, back) = h.pass(WAN, reply.clone());
        assert_eq!(v, Verdict::Forward(LAN));
        assert_eq!(parse(&back).unwrap().dst, raw_addr(client.0).1);
    }
    assert_eq!(h.flows().len(), 3000);
}

#[test]
fn a_reply_reaching_another_worker_still_rides_the_flow() {
    let mut h = harness(None);
    let mut replies = Vec::new();
    for host in 10..40 {
        let client = ep(&format!("198.18.1.{host}"), 4000);
        replies.push((client, exchange(&mut h, client, ep(S4, 53))));
    }
    // The other worker looks in its own group first, then in the others.
    h.engine = h.gw.engine(1);
    for (client, reply) in &replies {
        let (v, back) = h.pass(WAN, reply.clone());
        assert_eq!(v, Verdict::Forward(LAN));
        assert_eq!(parse(&back).unwrap().dst, raw_addr(client.0).1);
    }
    assert_eq!(h.flows().len(), 30);
}

#[test]
fn ports_allocated_from_a_range_are_chosen_for_the_flows_shard() {
    let mut h = harness(Some("40000-49999"));
    for host in 10..110 {
        let client = ep(&format!("198.18.1.{host}"), 4000);
        let reply = exchange(&mut h, client, ep(S4, 53));
        let port = parse(&reply).unwrap().ports().unwrap().1;
        assert!((40000..=49999).contains(&port));
        let (on_alias, flow_key) = indexed(&h, &reply_key(&reply)).expect("indexed");
        assert!(on_alias);
        assert_eq!(flow_key.local, raw_addr(client.0).1);
    }
}
