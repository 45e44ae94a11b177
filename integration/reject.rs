//! `reject = true` (SPEC §12): a blocked first packet is answered out of
//! its arrival port with a TCP RST (RFC 793) or an ICMP/ICMPv6
//! administratively-prohibited unreachable quoting it (RFC 792/1812/4443),
//! with correct checksums, within `[events] reject_rate`.

mod common;

use common::*;
use std::path::Path;
use std::sync::Arc;
use tunwall::config::Config;
use tunwall::engine::{HostModel, Verdict};
use tunwall::flow::FlowConfig;
use tunwall::policy::{CalloutRegistry, Policy};
use tunwall::reason::DropReason;

const REJECTING: &str = r#"
[[filter]]
name = "no-telnet"
layer = "auth_recv_accept"
action = "block"
reject = true
local_port = 23

[[filter]]
name = "no-udp-out"
layer = "auth_connect"
action = "block"
reject = true
protocol = "udp"
remote_port = 9

[[filter]]
name = "quiet"
layer = "auth_connect"
action = "block"
protocol = "udp"
remote_port = 10
"#;

fn harness(rate: u32) -> Harness {
    let registry = CalloutRegistry::default();
    let config = Config::parse(
        Path::new("reject.toml"),
        &format!("{PORTS_TOML}\n{REJECTING}"),
        &registry,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let policy = Policy::compile(&config.policy, &registry, None).unwrap();
    let h = Harness::with(
        FlowConfig::with_max_flows(64),
        HostModel::Weak,
        Arc::new(policy),
    );
    h.gw.set_reject_rate(rate);
    h
}

/// The one's-complement sum of `chunks`: 0xffff over data that carries
/// its correct checksum.
fn sum(chunks: &[&[u8]]) -> u16 {
    let mut total = 0u32;
    for chunk in chunks {
        for pair in chunk.chunks(2) {
            let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            total += u32::from(word);
        }
    }
    while total > 0xffff {
        total = (total & 0xffff) + (total >> 16);
    }
    total as u16
}

/// Checks the IP and transport checksums of an IPv4 packet.
fn checksums_v4(p: &[u8]) {
    let ihl = usize::from(p[0] & 0xf) * 4;
    assert_eq!(sum(&[&p[..ihl]]), 0xffff, "IPv4 header checksum");
    let l4 = &p[ihl..];
    match p[9] {
        1 => assert_eq!(sum(&[l4]), 0xffff, "ICMP checksum"),
        proto => {
            let len = (l4.len() as u16).to_be_bytes();
            let pseudo = [&p[12..20], &[0, proto], &len[..]].concat();
            assert_eq!(sum(&[&pseudo, l4]), 0xffff, "transport checksum");
        }
    }
}

/// Checks the transport checksum of an IPv6 packet (no extension headers).
fn checksums_v6(p: &[u8]) {
    let l4 = &p[40..];
    let len = (l4.len() as u32).to_be_bytes();
    let pseudo = [&p[8..40], &len[..], &[0, 0, 0, p[6]]].concat();
    assert_eq!(sum(&[&pseudo, l4]), 0xffff, "transport checksum");
}

#[test]
fn a_rejected_syn_is_answered_with_a_rst_ack() {
    let mut h = harness(100);
    let client = TcpConn::new(ep("198.18.7.7", 50000), ep("198.18.1.11", 23));
    let syn = client.syn();
    assert_eq!(
        h.inb(syn.clone()),
        Verdict::Drop(DropReason::AuthRecvAcceptBlocked)
    );
    let (port, rst) = h.engine.take_reply().expect("a RST");
    assert_eq!(port, WAN, "out of the arrival port");
    checksums_v4(&rst);
    assert_eq!(&rst[12..16], &[198, 18, 1, 11], "from the refusing host");
    assert_eq!(&rst[16..20], &[198, 18, 7, 7]);
    let tcp = &rst[20..];
    assert_eq!(u16::from_be_bytes([tcp[0], tcp[1]]), 23);
    assert_eq!(u16::from_be_bytes([tcp[2], tcp[3]]), 50000);
    let syn_seq = u32::from_be_bytes([syn[24], syn[25], syn[26], syn[27]]);
    assert_eq!(
        u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
        0,
        "SEQ=0"
    );
    assert_eq!(
        u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]),
        syn_seq.wrapping_add(1),
        "ACK=SEG.SEQ+SEG.LEN, the SYN counting one"
    );
    assert_eq!(tcp[13], 0x14, "RST+ACK");
    assert_eq!(h.engine.stats().rejects_sent, 1);
    // A packet blocked without reject is dropped silently.
    assert_eq!(
        h.out(udp(ep(C4, 1000), ep(S4, 10), b"q")),
        Verdict::Drop(DropReason::AuthConnectBlocked)
    );
    assert!(h.engine.take_reply().is_none());
}

#[test]
fn a_segment_with_ack_gets_a_rst_with_its_ack_as_sequence() {
    let seg = tcp(
        ep(S4, 80),
        ep(C4, 1000),
        ACK,
        5000,
        777_777,
        1000,
        None,
        b"data",
    );
    let packet = tunwall::packet::parse(&seg).unwrap();
    let rst = tunwall::packet::reject::reject(&packet, &seg, false).expect("a RST");
    checksums_v4(&rst);
    let tcp = &rst[20..];
    assert_eq!(
        u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
        777_777
    );
    assert_eq!(tcp[13], 0x04, "RST alone");
    // Never a RST to a RST, nor an answer to a group address.
    let rst_in = tcp_rst(&seg);
    let p = tunwall::packet::parse(&rst_in).unwrap();
    assert!(tunwall::packet::reject::reject(&p, &rst_in, false).is_none());
    assert!(tunwall::packet::reject::reject(&packet, &seg, true).is_none());
}

fn tcp_rst(_like: &[u8]) -> Vec<u8> {
    tcp(ep(S4, 80), ep(C4, 1000), RST, 5000, 0, 0, None, b"")
}

#[test]
fn a_rejected_datagram_gets_an_icmp_prohibited_quoting_it() {
    let mut h = harness(100);
    let big = vec![7u8; 1000];
    let datagram = udp(ep(C4, 1000), ep(S4, 9), &big);
    assert_eq!(
        h.out(datagram.clone()),
        Verdict::Drop(DropReason::AuthConnectBlocked)
    );
    let (port, icmp) = h.engine.take_reply().expect("an ICMP error");
    assert_eq!(port, LAN);
    checksums_v4(&icmp);
    assert!(icmp.len() <= 576, "within the minimum MTU: {}", icmp.len());
    assert_eq!(icmp[9], 1);
    assert_eq!(&icmp[12..16], &[198, 18, 2, 20]);
    assert_eq!((icmp[20], icmp[21]), (3, 13), "administratively prohibited");
    assert_eq!(
        &icmp[28..],
        &datagram[..icmp.len() - 28],
        "quotes the packet"
    );
    // The gateway's own parser sees it as an error relating to that datagram.
    let parsed = tunwall::packet::parse(&icmp).unwrap();
    assert!(matches!(
        parsed.transport,
        tunwall::packet::Transport::Icmp {
            class: tunwall::packet::IcmpClass::Error,
            ..
        }
    ));

    let v6 = udp(ep(C6, 1000), ep(S6, 9), &vec![1u8; 2000]);
    assert_eq!(
        h.out(v6.clone()),
        Verdict::Drop(DropReason::AuthConnectBlocked)
    );
    let (_, icmp6) = h.engine.take_reply().expect("an ICMPv6 error");
    checksums_v6(&icmp6);
    assert!(icmp6.len() <= 1280, "{}", icmp6.len());
    assert_eq!(icmp6.len(), 1280, "as much as fits");
    assert_eq!((icmp6[6], icmp6[40], icmp6[41]), (58, 1, 1));
    assert_eq!(&icmp6[48..], &v6[..icmp6.len() - 48]);
}

#[test]
fn rejects_are_rate_limited() {
    let mut h = harness(2);
    let mut sent = 0;
    for port in 0..5u16 {
        h.out(udp(ep(C4, 2000 + port), ep(S4, 9), b"q"));
        sent += usize::from(h.engine.take_reply().is_some());
    }
    assert_eq!(sent, 2);
    assert_eq!(h.engine.stats().rejects_limited, 3);
    h.advance_ms(1000);
    h.out(udp(ep(C4, 3000), ep(S4, 9), b"q"));
    assert!(h.engine.take_reply().is_some(), "the bucket refills");
    // Multicast destinations are never answered.
    h.advance_ms(1000);
    h.out(udp(ep(C4, 3001), ep("239.1.1.1", 9), b"q"));
    assert!(h.engine.take_reply().is_none());
}

#[test]
fn reject_is_only_for_block_filters_at_the_auth_layers() {
    let registry = CalloutRegistry::default();
    for (filter, needle) in [
        (
            "layer = \"auth_connect\"\naction = \"permit\"\nreject = true",
            "reject = true",
        ),
        (
            "layer = \"icmp_error\"\naction = \"block\"\nreject = true",
            "only block filters at auth_connect or auth_recv_accept",
        ),
    ] {
        let text = format!("{PORTS_TOML}\n[[filter]]\nname = \"r\"\n{filter}\n");
        let e = Config::parse(Path::new("r.toml"), &text, &registry).expect_err(filter);
        let e = e.to_string();
        assert!(e.contains(needle) && e.contains("r.toml"), "{e}");
    }
    let text = format!("{PORTS_TOML}\n[events]\nreject_rate = -1\n");
    assert!(Config::parse(Path::new("r.toml"), &text, &registry).is_err());
    let text = format!("{PORTS_TOML}\n[events]\nreject_rate = 5\n");
    assert_eq!(
        Config::parse(Path::new("r.toml"), &text, &registry)
            .unwrap()
            .events
            .reject_rate,
        5
    );
}
