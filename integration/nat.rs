//! Address translation (SPEC §9) on the virtual clock: masquerade of many
//! inside hosts, port reuse and exhaustion, port forwarding, connect
//! redirection, ICMP queries and errors through NAT, fragments, offloaded
//! frames, the auth layers on the translated tuple, and the JSON.

use std::sync::Arc;
use tunwall::engine::Verdict;
use tunwall::event::EventKind;
use tunwall::flow::{FlowConfig, FlowInfo};
use tunwall::packet::{Transport, parse, raw_addr, to_ip_addr};
use tunwall::reason::{CloseReason, DropReason};
use tunwall::testkit::compile_policy as compile;
use tunwall::testkit::*;

const PUBLIC: &str = "198.18.2.1";
const PUBLIC6: &str = "fd00:2::1";

/// Masquerade of everything from `lan` to the public addresses, from `range`.
fn masquerade(range: Option<&str>) -> String {
    masquerade_filter(&[PUBLIC, PUBLIC6], range)
}

fn harness(policy: &str) -> Harness {
    harness_with(policy, FlowConfig::with_max_flows(100_000))
}

fn harness_with(policy: &str, flows: FlowConfig) -> Harness {
    let policy = compile(policy, None);
    Harness::with(flows, tunwall::engine::HostModel::Weak, Arc::new(policy))
}

/// (src, src port, dst, dst port) of a packet, checking its checksums.
fn endpoints(b: &[u8]) -> (String, u16, String, u16) {
    assert_eq!(recompute(b), b, "checksums of {b:02x?}");
    let p = parse(b).unwrap();
    let (sp, dp) = match p.transport {
        Transport::Icmp { id, .. } => (id, id),
        _ => p.ports().unwrap_or((0, 0)),
    };
    (
        to_ip_addr(p.version, &p.src).to_string(),
        sp,
        to_ip_addr(p.version, &p.dst).to_string(),
        dp,
    )
}

fn ep_of(e: &(String, u16, String, u16)) -> (Ep, Ep) {
    (ep(&e.0, e.1), ep(&e.2, e.3))
}

/// (inside address, inside port, translated port) of one NAT log line.
type LogLine = (String, u16, u16);

fn port_events(h: &Harness) -> (Vec<LogLine>, Vec<LogLine>) {
    let mut assigned = Vec::new();
    let mut released = Vec::new();
    for e in &h.events {
        match &e.kind {
            EventKind::PortAssigned(m) | EventKind::PortReleased(m) => {
                let row = (
                    to_ip_addr(m.version, &m.inside_addr).to_string(),
                    m.inside_port,
                    m.translated_port,
                );
                if matches!(e.kind, EventKind::PortAssigned(_)) {
                    assigned.push(row);
                } else {
                    released.push(row);
                }
            }
            _ => {}
        }
    }
    (assigned, released)
}

fn json(h: &Harness, f: &FlowInfo) -> serde_json::Value {
    tunwall::render::json::flow(f, &h.gw.port_names(), h.now)
}

#[test]
fn masquerade_rewrites_both_directions_and_shows_the_translation() {
    let mut h = harness(&masquerade(None));
    let (v, out) = h.pass(LAN, udp(ep(C4, 5000), ep(S4, 53), b"query"));
    assert_eq!(v, Verdict::Forward(WAN));
    let seen = endpoints(&out);
    assert_eq!(
        seen,
        (PUBLIC.into(), 5000, S4.into(), 53),
        "original port kept"
    );
    let (v, back) = h.pass(WAN, udp(ep(S4, 53), ep(PUBLIC, 5000), b"answer"));
    assert_eq!(v, Verdict::Forward(LAN));
    assert_eq!(endpoints(&back), (S4.into(), 53, C4.into(), 5000));
    let flow = h.only_flow();
    assert_eq!((flow.out.0, flow.inbound.0), (1, 1));
    let j = json(&h, &flow);
    assert_eq!(j["local_addr"], C4);
    assert_eq!(j["translation"]["local_addr"], PUBLIC);
    assert_eq!(j["translation"]["local_port"], 5000);
    assert_eq!(j["translation"]["remote_addr"], S4);
    assert_eq!(j["translation"]["filter"], "masq");
    assert_eq!(port_events(&h).0, vec![(C4.to_string(), 5000, 5000)]);
    assert_eq!(h.gw.nat().ports_in_use(), 1);
    // Untranslated flows show null.
    let mut plain = harness("");
    plain.out(udp(ep(C4, 5000), ep(S4, 53), b"q"));
    assert!(json(&plain, &plain.only_flow())["translation"].is_null());
}

#[test]
fn many_inside_hosts_get_unique_ports_mapped_endpoint_independently() {
    let mut h = harness(&masquerade(None));
    let mut seen = std::collections::HashSet::new();
    for host in 10..60 {
        let client = format!("198.18.1.{host}");
        let (v, out) = h.pass(LAN, udp(ep(&client, 4000), ep(S4, 53), b"q"));
        assert_eq!(v, Verdict::Forward(WAN));
        let (src, port, ..) = endpoints(&out);
        assert_eq!(src, PUBLIC);
        assert!(seen.insert(port), "port {port} given twice");
        // The same inside endpoint to another remote: the same mapping.
        let (_, again) = h.pass(LAN, udp(ep(&client, 4000), ep("198.18.7.7", 53), b"q"));
        assert_eq!(endpoints(&again).1, port);
    }
    assert_eq!(h.gw.nat().ports_in_use(), 50);
    assert_eq!(h.flows().len(), 100);
    // A remote that was never contacted reaches a mapped port only as a
    // new inbound flow, which auth_recv_accept blocks by default.
    let (v, _) = h.pass(WAN, udp(ep("198.18.8.8", 53), ep(PUBLIC, 4000), b"x"));
    assert_ne!(v, Verdict::Forward(LAN));
}

#[test]
fn a_port_is_released_with_its_last_flow_and_reused() {
    let mut h = harness(&masquerade(Some("40000-40000")));
    let (_, out) = h.pass(LAN, udp(ep(C4, 5000), ep(S4, 53), b"q"));
    assert_eq!(endpoints(&out).1, 40000);
    h.advance_ms(30_000);
    h.pass(LAN, udp(ep(C4, 5000), ep("198.18.7.7", 53), b"q"));
    let (v, _) = h.pass(LAN, udp(ep("198.18.1.11", 5000), ep(S4, 53), b"q"));
    assert_eq!(v, Verdict::Drop(DropReason::NatPortsExhausted));
    // The first flow expires; the mapping lives on with the second.
    h.advance_ms(31_000);
    assert_eq!(h.flows().len(), 1);
    assert!(port_events(&h).1.is_empty());
    h.advance_ms(30_000);
    assert!(h.flows().is_empty());
    assert_eq!(port_events(&h).1, vec![(C4.to_string(), 5000, 40000)]);
    assert_eq!(h.gw.nat().ports_in_use(), 0);
    let (v, out) = h.pass(LAN, udp(ep("198.18.1.11", 5000), ep(S4, 53), b"q"));
    assert_eq!(v, Verdict::Forward(WAN));
    assert_eq!(endpoints(&out).1, 40000);
}

#[test]
fn exhaustion_drops_and_counts() {
    let mut h = harness(&masquerade(Some("40000-40001")));
    for host in 10..12 {
        let (v, _) = h.pass(LAN, tcp_syn(&format!("198.18.1.{host}"), 1234));
        assert_eq!(v, Verdict::Forward(WAN));
    }
    let (v, _) = h.pass(LAN, tcp_syn("198.18.1.12", 1234));
    assert_eq!(v, Verdict::Drop(DropReason::NatPortsExhausted));
    let stats =
        tunwall::render::json::stats(h.engine.stats(), &Default::default(), &h.gw, 1, 1, &[]);
    assert_eq!(stats["nat"]["ports_in_use"], 2);
    assert_eq!(stats["nat"]["ports_exhausted"], 1);
    let metrics = tunwall::render::prometheus::prometheus(&stats);
    assert!(
        metrics.contains("tunwall_nat_ports_in_use 2\n"),
        "{metrics}"
    );
    assert!(metrics.contains("tunwall_nat_ports_exhausted_total 1\n"));
    // Closing a connection frees its port for the waiting host.
    h.engine.close_all(h.now, true);
    h.events.extend(h.engine.drain_events());
    assert_eq!(port_events(&h).1.len(), 2);
    let (v, _) = h.pass(LAN, tcp_syn("198.18.1.12", 1234));
    assert_eq!(v, Verdict::Forward(WAN));
}

fn tcp_syn(client: &str, port: u16) -> Vec<u8> {
    tcp(ep(client, port), ep(S4, 80), SYN, 100, 0, 1000, None, b"")
}

const FORWARD: &str = r#"
[[filter]]
name = "web-forward"
layer = "bind_redirect"
action = "redirect"
arrival_port = "wan"
local_address = "198.18.2.1"
local_port = 8080
protocol = "tcp"
to_address = "198.18.1.10"
to_port = 80

[[filter]]
name = "web-in"
layer = "auth_recv_accept"
action = "permit"
local_address = "198.18.1.10"
local_port = 80
original_local_port = 8080
flags = ["redirected"]
"#;

#[test]
fn port_forwarding_reaches_the_inside_server_and_its_replies_leave_translated() {
    let mut h = harness(FORWARD);
    // The client talks to the public address; the server sees itself addressed.
    let public = TcpConn::new(ep(S4, 3333), ep(PUBLIC, 8080));
    let inside = TcpConn::new(ep(S4, 3333), ep(C4, 80));
    let (v, syn) = h.pass(WAN, public.syn());
    assert_eq!(v, Verdict::Forward(LAN));
    assert_eq!(syn, recompute(&inside.syn()));
    // The server answers from its own address; it leaves as the public one.
    let (v, out) = h.pass(LAN, inside.syn_ack());
    assert_eq!(v, Verdict::Forward(WAN));
    assert_eq!(out, recompute(&public.syn_ack()));
    let (v, ack) = h.pass(WAN, public.ack());
    assert_eq!(v, Verdict::Forward(LAN));
    assert_eq!(ack, inside.ack());
    let flow = h.only_flow();
    assert!(flow.established);
    let j = json(&h, &flow);
    assert_eq!(
        (j["local_addr"].as_str(), j["local_port"].as_u64()),
        (Some(C4), Some(80))
    );
    assert_eq!(j["translation"]["local_addr"], PUBLIC);
    assert_eq!(j["translation"]["local_port"], 8080);
    assert_eq!(j["direction"], "inbound");
    // Without the permit at auth_recv_accept a forward is blocked, and
    // nothing is left behind.
    let mut closed =
        harness(&FORWARD.replace("original_local_port = 8080", "original_local_port = 9"));
    let (v, _) = closed.pass(WAN, TcpConn::new(ep(S4, 3333), ep(PUBLIC, 8080)).syn());
    assert_eq!(v, Verdict::Drop(DropReason::AuthRecvAcceptBlocked));
    assert!(closed.flows().is_empty());
    assert_eq!(closed.gw.nat().ports_in_use(), 0);
}

const DNS: &str = r#"
[[filter]]
name = "dns-to-resolver"
layer = "connect_redirect"
action = "redirect"
protocol = "udp"
remote_port = 53
to_address = ["198.18.2.53", "fd00:2::53"]
to_port = 5353
"#;

#[test]
fn connect_redirect_sends_dns_to_the_resolver_and_answers_come_from_the_original() {
    let mut h = harness(DNS);
    for (client, asked, resolver) in [
        (C4, "198.18.9.9", "198.18.2.53"),
        (C6, "fd00:5::9", "fd00:2::53"),
    ] {
        let (v, out) = h.pass(LAN, udp(ep(client, 6000), ep(asked, 53), b"q"));
        assert_eq!(v, Verdict::Forward(WAN));
        assert_eq!(
            endpoints(&out),
            (client.into(), 6000, resolver.into(), 5353)
        );
        let (v, back) = h.pass(WAN, udp(ep(resolver, 5353), ep(client, 6000), b"a"));
        assert_eq!(v, Verdict::Forward(LAN));
        assert_eq!(endpoints(&back), (asked.into(), 53, client.into(), 6000));
    }
    let flows = h.flows();
    let j = json(&h, &flows[0]);
    assert_eq!(j["remote_addr"], "198.18.9.9");
    assert_eq!(j["translation"]["remote_addr"], "198.18.2.53");
    assert_eq!(j["translation"]["remote_port"], 5353);
}

#[test]
fn ping_ids_are_translated_like_ports() {
    let mut h = harness(&masquerade(None));
    let mut ids = Vec::new();
    for client in ["198.18.1.10", "198.18.1.11"] {
        let (v, out) = h.pass(LAN, echo(client, S4, true, 7, 1));
        assert_eq!(v, Verdict::Forward(WAN));
        let (src, id, ..) = endpoints(&out);
        assert_eq!(src, PUBLIC);
        ids.push(id);
        let (v, back) = h.pass(WAN, echo(S4, PUBLIC, false, id, 1));
        assert_eq!(v, Verdict::Forward(LAN));
        assert_eq!(endpoints(&back), (S4.into(), 7, client.into(), 7));
    }
    assert_eq!(ids[0], 7, "the original id is kept when free");
    assert_ne!(ids[0], ids[1]);
    let (v, out) = h.pass(LAN, echo(C6, S6, true, 9, 1));
    assert_eq!(v, Verdict::Forward(WAN));
    assert_eq!(endpoints(&out).0, PUBLIC6);
    let j = json(&h, &h.flows()[0]);
    assert!(j["translation"]["local_port"].is_null());
    assert_eq!(j["translation"]["icmp_id"], 7);
}

#[test]
fn icmp_errors_come_back_through_nat_with_the_quote_translated() {
    let mut h = harness(&masquerade(Some("41000-41000")));
    let (_, sent) = h.pass(LAN, udp(ep(C4, 5000), ep(S4, 33434), b"probe"));
    // The server's port unreachable, and a router's time exceeded-like
    // unreachable from elsewhere: both reach the client, about its own packet.
    for from in [S4, "198.18.6.6"] {
        let (v, err) = h.pass(WAN, icmp_error(from, PUBLIC, 3, &sent));
        assert_eq!(v, Verdict::Forward(LAN), "from {from}");
        assert_eq!(recompute(&err), err);
        let p = parse(&err).unwrap();
        assert_eq!(p.dst, raw_addr(C4.parse().unwrap()).1);
        assert_eq!(p.src, raw_addr(from.parse().unwrap()).1);
        let quote = &err[28..];
        let q = tunwall::packet::parse_quoted(p.version, quote).unwrap();
        assert_eq!((q.src, q.src_port), (raw_addr(C4.parse().unwrap()).1, 5000));
        assert_eq!(
            &quote[..20],
            &recompute(&udp(ep(C4, 5000), ep(S4, 33434), b"probe"))[..20]
        );
    }
    // IPv6, and an error from the client about a reply it got: out through NAT.
    let (_, sent6) = h.pass(LAN, udp(ep(C6, 5000), ep(S6, 33434), b"probe"));
    let (v, err6) = h.pass(WAN, icmp_error(S6, PUBLIC6, 4, &sent6));
    assert_eq!(v, Verdict::Forward(LAN));
    assert_eq!(recompute(&err6), err6);
    let (_, reply) = h.pass(WAN, udp(ep(S4, 33434), ep(PUBLIC, 41000), b"r"));
    let (v, err) = h.pass(LAN, icmp_error(C4, S4, 3, &reply));
    assert_eq!(v, Verdict::Forward(WAN));
    assert_eq!(recompute(&err), err);
    let p = parse(&err).unwrap();
    assert_eq!(p.src, raw_addr(PUBLIC.parse().unwrap()).1);
    assert_eq!(h.engine.stats().related_icmp, 4);
}

#[test]
fn later_fragments_follow_the_first_fragments_translation() {
    let mut h = harness(&masquerade(None));
    let big = udp(ep(C4, 7000), ep(S4, 9), &[5u8; 200]);
    let frags = fragments(&big, 64, 4242);
    let mut out = Vec::new();
    for f in frags {
        let (v, b) = h.pass(LAN, f);
        assert_eq!(v, Verdict::Forward(WAN));
        assert_eq!(recompute(&b), b);
        out.push(b);
    }
    for b in &out {
        assert_eq!(parse(b).unwrap().src, raw_addr(PUBLIC.parse().unwrap()).1);
    }
    // Reassembled, the datagram's UDP checksum is right for the new source.
    let mut whole = out[0][..20].to_vec();
    for b in &out {
        whole.extend_from_slice(&b[20..]);
    }
    let total = whole.len() as u16;
    whole[2..4].copy_from_slice(&total.to_be_bytes());
    whole[6..8].fill(0);
    let fixed = recompute(&whole);
    whole[10..12].copy_from_slice(&fixed[10..12]);
    assert_eq!(recompute(&whole), whole);
}

#[test]
fn offloaded_frames_update_the_partial_checksum_as_a_pseudo_header_sum() {
    let mut h = harness(&masquerade(None));
    let mut syn = tcp(
        ep(C4, 40000),
        ep(S4, 80),
        SYN,
        1,
        0,
        1000,
        None,
        &[0u8; 3000],
    );
    let partial = |b: &[u8]| {
        let p = parse(b).unwrap();
        let len = p.len - u32::from(p.l4_offset);
        let s = tunwall::packet::rewrite::pseudo_sum(p.version, &p.src, &p.dst, 6, len);
        (!tunwall::packet::rewrite::finish(s)).to_be_bytes()
    };
    let field = partial(&syn);
    syn[36..38].copy_from_slice(&field);
    // A virtio-net header whose flags say NEEDS_CSUM.
    let header = [1u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let verdict = h.engine.process_framed(h.now, LAN, &header, &mut syn);
    assert_eq!(verdict, Verdict::Forward(WAN));
    assert_eq!(
        syn[36..38],
        partial(&syn),
        "the partial sum of the new pseudo-header"
    );
    assert_eq!(
        parse(&syn).unwrap().src,
        raw_addr(PUBLIC.parse().unwrap()).1
    );
}

#[test]
fn the_auth_layer_sees_the_translated_tuple_and_nothing_is_allocated_on_block() {
    let policy = format!(
        "{}{}",
        masquerade(None),
        r#"
[[filter]]
name = "no-dns-from-public"
layer = "auth_connect"
action = "block"
local_address = "198.18.2.1"
original_local_address = "198.18.1.10"
remote_port = 53
flags = ["redirected"]
"#
    );
    let mut h = harness(&policy);
    let (v, _) = h.pass(LAN, udp(ep(C4, 5000), ep(S4, 53), b"q"));
    assert_eq!(v, Verdict::Drop(DropReason::AuthConnectBlocked));
    assert_eq!(h.gw.nat().ports_in_use(), 0);
    assert!(port_events(&h).0.is_empty());
    let (v, _) = h.pass(LAN, udp(ep("198.18.1.11", 5000), ep(S4, 53), b"q"));
    assert_eq!(v, Verdict::Forward(WAN));
}

#[test]
fn a_missing_address_of_the_family_drops_with_nat_no_address() {
    let policy = r#"
[[filter]]
name = "masq4"
layer = "bind_redirect"
action = "redirect"
arrival_port = "lan"
to_address = "198.18.2.1"
"#;
    let mut h = harness(policy);
    let (v, _) = h.pass(LAN, udp(ep(C6, 5000), ep(S6, 53), b"q"));
    assert_eq!(v, Verdict::Drop(DropReason::NatNoAddress));
    let (v, _) = h.pass(LAN, udp(ep(C4, 5000), ep(S4, 53), b"q"));
    assert_eq!(v, Verdict::Forward(WAN));
}

#[test]
fn reauthorization_keeps_the_translation_and_a_block_releases_the_port() {
    let first = compile(&masquerade(None), None);
    let mut h = Harness::with(
        FlowConfig::with_max_flows(1000),
        tunwall::engine::HostModel::Weak,
        Arc::new(compile(&masquerade(None), None)),
    );
    let (_, out) = h.pass(LAN, udp(ep(C4, 5000), ep(S4, 53), b"q"));
    let seen = endpoints(&out);
    // A reload that still permits: the flow keeps its translation.
    let permit = format!(
        "{}\n[[filter]]\nname = \"x\"\nlayer = \"auth_connect\"\naction = \"permit\"\n",
        masquerade(None)
    );
    let permit = compile(&permit, Some(&first));
    h.engine
        .set_policy(Arc::new(compile(&masquerade(None), None)));
    let second = Arc::new(permit);
    h.engine.set_policy(second.clone());
    let (v, again) = h.pass(LAN, udp(ep(C4, 5000), ep(S4, 53), b"q"));
    assert_eq!(v, Verdict::Forward(WAN));
    assert_eq!(endpoints(&again), seen);
    assert_eq!(h.engine.stats().reauthorizations, 1);
    // A reload that blocks the translated tuple tears the flow down.
    let block = format!(
        "{}\n[[filter]]\nname = \"stop\"\nlayer = \"auth_connect\"\naction = \"block\"\nlocal_address = \"198.18.2.1\"\nflags = [\"redirected\"]\n",
        masquerade(None)
    );
    h.engine
        .set_policy(Arc::new(compile(&block, Some(&second))));
    let (v, _) = h.pass(WAN, udp(ep(S4, 53), ep(PUBLIC, 5000), b"a"));
    assert_eq!(v, Verdict::Drop(DropReason::ReauthBlocked));
    assert_eq!(
        h.closed().last().map(|c| c.1),
        Some(CloseReason::ReauthBlocked)
    );
    assert_eq!(port_events(&h).1.len(), 1);
    assert_eq!(h.gw.nat().ports_in_use(), 0);
    assert!(h.gw.nat().aliases.is_empty());
}

#[test]
fn untranslated_flows_are_untouched_when_nat_is_configured() {
    let policy = format!(
        "{}{}",
        r#"
[[filter]]
name = "no-nat-for-admin"
layer = "bind_redirect"
action = "permit"
local_address = "198.18.1.99"
"#,
        masquerade(None)
    );
    let mut h = harness(&policy);
    let packet = udp(ep("198.18.1.99", 5000), ep(S4, 53), b"q");
    let (v, out) = h.pass(LAN, packet.clone());
    assert_eq!(v, Verdict::Forward(WAN));
    assert_eq!(out, packet);
    let (_, back) = h.pass(WAN, udp(ep(S4, 53), ep("198.18.1.99", 5000), b"a"));
    assert_eq!(ep_of(&endpoints(&back)).1.0.to_string(), "198.18.1.99");
    assert!(json(&h, &h.only_flow())["translation"].is_null());
}

#[test]
fn a_worker_whose_batch_began_before_the_last_packet_still_rides_the_flow() {
    // The two sides of a translated flow reach different workers, each
    // with the time its batch began: "now" may lie before the flow's last
    // packet. That is no idle time.
    let mut h = harness(&masquerade(None));
    h.now = h.now + std::time::Duration::from_secs(5);
    let (v, out) = h.pass(LAN, udp(ep(C4, 5000), ep(S4, 53), b"q"));
    assert_eq!(v, Verdict::Forward(WAN));
    let public_port = endpoints(&out).1;
    h.now = tunwall::time::Instant::from_millis(4_990);
    let (v, _) = h.pass(WAN, udp(ep(S4, 53), ep(PUBLIC, public_port), b"a"));
    assert_eq!(v, Verdict::Forward(LAN));
    assert!(h.closed().is_empty());
}

#[test]
fn packets_carrying_the_other_sides_view_still_leave_with_valid_checksums() {
    // The established path's precomputed checksum deltas hold for a packet
    // carrying the view expected on its side; one found under the other
    // view's key takes the general rewrite (deltas from its own bytes).
    // (Debug builds also assert the deltas of every fast rewrite.)
    for (c, s, public) in [(C4, S4, PUBLIC), (C6, S6, PUBLIC6)] {
        let mut h = harness(&masquerade(Some("2000-2000")));
        let (v, out) = h.pass(LAN, udp(ep(c, 5000), ep(s, 80), b"payload"));
        assert_eq!(v, Verdict::Forward(WAN));
        assert_eq!(endpoints(&out), (public.into(), 2000, s.into(), 80));
        // From outside, addressed to the inside view (the flow's own key).
        let (v, back) = h.pass(WAN, udp(ep(s, 80), ep(c, 5000), b"x"));
        assert_eq!(v, Verdict::Forward(LAN));
        assert_eq!(endpoints(&back), (s.into(), 80, c.into(), 5000));
        // From inside, carrying the translated view (the alias).
        let (v, out) = h.pass(LAN, udp(ep(public, 2000), ep(s, 80), b"y"));
        assert_eq!(v, Verdict::Forward(WAN));
        assert_eq!(endpoints(&out), (public.into(), 2000, s.into(), 80));
        // And the expected views still translate, both ways.
        let (v, back) = h.pass(WAN, udp(ep(s, 80), ep(public, 2000), b"a"));
        assert_eq!(v, Verdict::Forward(LAN));
        assert_eq!(endpoints(&back), (s.into(), 80, c.into(), 5000));
        let (v, out) = h.pass(LAN, udp(ep(c, 5000), ep(s, 80), b"b"));
        assert_eq!(v, Verdict::Forward(WAN));
        assert_eq!(endpoints(&out), (public.into(), 2000, s.into(), 80));
        assert_eq!(h.only_flow().out.0, 3);
    }
}

#[test]
fn an_alias_to_a_slot_gone_with_its_chunk_is_not_live() {
    // An alias is read without the flow's shard lock; by the time that lock
    // is held the flow may be gone and its chunk given back: the check
    // under the lock must say "not live", not index out of the slab.
    let table = tunwall::flow::FlowTable::new(FlowConfig::with_max_flows(1000), 1, 1);
    let shard = table.lock_shard(0);
    let key = tunwall::flow::FlowKey::ZERO;
    for slot in [0, 63, 64, 1 << 20, u32::MAX] {
        assert!(!shard.holds_translated(slot, 1, &key));
    }
}
