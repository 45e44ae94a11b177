//! Every rewrite against checksums computed from scratch.

use super::*;
use crate::packet::{Transport, parse, raw_addr};

use crate::testkit::{Ep, echo, ep, fragments, icmp_error, recompute, tcp, udp};
use proptest::prelude::*;

fn raw(s: &str) -> RawAddr {
    raw_addr(s.parse().unwrap()).1
}

fn to(src: &str, sp: u16, dst: &str, dp: u16, id: u16) -> Endpoints {
    Endpoints {
        src: raw(src),
        dst: raw(dst),
        ports: (sp, dp),
        icmp_id: id,
    }
}

fn translated(mut b: Vec<u8>, e: &Endpoints) -> Vec<u8> {
    let p = parse(&b).unwrap();
    translate(&mut b, &p, e, false).expect("translates");
    b
}

fn check(b: Vec<u8>, e: Endpoints) {
    assert_eq!(recompute(&b), b, "fixture checksums");
    let out = translated(b, &e);
    assert_eq!(recompute(&out), out, "incremental == from scratch");
    let p = parse(&out).unwrap();
    assert_eq!((p.src, p.dst), (e.src, e.dst));
    if let Some(ports) = p.ports() {
        assert_eq!(ports, e.ports);
    }
    if let Transport::Icmp { id, .. } = p.transport
        && id != 0
    {
        assert_eq!(id, e.icmp_id);
    }
}

#[test]
fn tcp_v4_and_v6() {
    let syn = tcp(
        ep("198.18.1.10", 40000),
        ep("198.18.2.20", 80),
        0x02,
        7,
        0,
        1000,
        Some(7),
        b"",
    );
    check(syn, to("198.18.9.1", 1024, "198.18.2.20", 80, 0));
    let data = tcp(
        ep("fd00:1::10", 40000),
        ep("fd00:2::20", 443),
        0x10,
        7,
        9,
        1000,
        None,
        b"hello",
    );
    check(data, to("fd00:9::1", 61000, "fd00:2::99", 8443, 0));
}

#[test]
fn udp_v4_v6_and_the_zero_checksum() {
    let dns = udp(ep("198.18.1.10", 5353), ep("198.18.2.53", 53), b"query?");
    check(dns.clone(), to("198.18.9.1", 2000, "198.18.7.7", 5300, 0));
    let mut zero = dns;
    zero[26..28].fill(0);
    let out = translated(zero, &to("198.18.9.1", 2000, "198.18.7.7", 5300, 0));
    assert_eq!(
        out[26..28],
        [0, 0],
        "UDP/IPv4 without checksum stays without"
    );
    assert_eq!(recompute(&out), out);
    check(
        udp(ep("fd00:1::10", 5353), ep("fd00:2::53", 53), b"query?"),
        to("fd00:9::1", 2000, "fd00:2::53", 53, 0),
    );
}

#[test]
fn udp_result_zero_is_sent_as_ffff() {
    // Search a source port whose translation sums to 0xffff (checksum 0).
    let base = udp(ep("198.18.1.10", 1), ep("198.18.2.53", 53), b"x");
    let hit = (1..=u16::MAX).find_map(|port| {
        let out = translated(base.clone(), &to("198.18.9.1", port, "198.18.2.53", 53, 0));
        (out[26..28] == [0xff, 0xff]).then_some(out)
    });
    let out = hit.expect("some port gives a zero sum");
    assert_eq!(recompute(&out), out);
}

#[test]
fn icmp_echo_ids_v4_and_v6() {
    check(
        echo("198.18.1.10", "198.18.2.20", true, 77, 1),
        to("198.18.9.1", 0, "198.18.2.20", 0, 1099),
    );
    check(
        echo("fd00:2::20", "fd00:9::1", false, 1099, 1),
        to("fd00:2::20", 0, "fd00:1::10", 0, 77),
    );
}

#[test]
fn later_fragments_change_only_the_ip_header() {
    let big = udp(ep("198.18.1.10", 4000), ep("198.18.2.20", 9), &[7u8; 100]);
    let e = to("198.18.9.1", 3000, "198.18.2.20", 9, 0);
    let frags = fragments(&big, 48, 99);
    let later = translated(frags[1].clone(), &e);
    assert_eq!(recompute(&later), later);
    assert_eq!(later[20..], frags[1][20..], "payload untouched");
    // The first fragment's transport checksum covers the whole datagram:
    // it must equal the unfragmented packet's after translation.
    let first = translated(frags[0].clone(), &e);
    let whole = translated(big, &e);
    assert_eq!(first[26..28], whole[26..28]);
    assert_eq!(recompute(&whole), whole);
}

#[test]
fn partial_checksums_take_only_the_pseudo_header() {
    for (a, b, na) in [
        ("198.18.1.10", "198.18.2.20", "198.18.9.1"),
        ("fd00:1::10", "fd00:2::20", "fd00:9::1"),
    ] {
        let mut seg = tcp(ep(a, 40000), ep(b, 80), 0x10, 1, 1, 100, None, &[1u8; 1000]);
        let p = parse(&seg).unwrap();
        let l4 = usize::from(p.l4_offset);
        let len = (p.len as usize - l4) as u32;
        let partial = |src: &RawAddr, dst: &RawAddr| {
            fold(pseudo_sum(p.version, src, dst, proto::TCP, len)).to_be_bytes()
        };
        seg[l4 + 16..l4 + 18].copy_from_slice(&partial(&p.src, &p.dst));
        let e = to(na, 1500, b, 80, 0);
        translate(&mut seg, &p, &e, true).unwrap();
        assert_eq!(seg[l4 + 16..l4 + 18], partial(&e.src, &e.dst));
        assert_eq!(u16::from_be_bytes([seg[l4], seg[l4 + 1]]), 1500);
    }
}

/// An ICMP error quoting `quoted` translated so the quote reads `inner`:
/// the outer checksum recomputes, the quoted IP header checksum and the
/// quoted transport checksum are those of the translated original.
fn check_error(from: &str, to_addr: &str, quoted: Vec<u8>, outer: (&str, &str), inner: Endpoints) {
    let mut err = icmp_error(from, to_addr, 3, &quoted);
    let p = parse(&err).unwrap();
    translate_icmp_error(&mut err, &p, (raw(outer.0), raw(outer.1)), &inner).unwrap();
    assert_eq!(recompute(&err), err, "outer checksums");
    let p = parse(&err).unwrap();
    assert_eq!((p.src, p.dst), (raw(outer.0), raw(outer.1)));
    let expected = translated(quoted, &inner);
    let start = usize::from(p.l4_offset) + 8;
    let quote = &err[start..];
    assert_eq!(
        quote,
        &expected[..quote.len()],
        "quoted packet translated back"
    );
}

#[test]
fn icmp_errors_translate_the_quoted_header() {
    let sent = udp(ep("198.18.9.1", 1024), ep("198.18.2.53", 53), b"query?");
    check_error(
        "198.18.2.53",
        "198.18.9.1",
        sent,
        ("198.18.2.53", "198.18.1.10"),
        to("198.18.1.10", 5353, "198.18.2.53", 53, 0),
    );
    let sent6 = udp(ep("fd00:9::1", 1024), ep("fd00:2::53", 53), b"query?");
    check_error(
        "fd00:2::1",
        "fd00:9::1",
        sent6,
        ("fd00:2::1", "fd00:1::10"),
        to("fd00:1::10", 5353, "fd00:2::53", 53, 0),
    );
    let ping = echo("198.18.9.1", "198.18.2.20", true, 1099, 3);
    check_error(
        "198.18.5.5",
        "198.18.9.1",
        ping,
        ("198.18.5.5", "198.18.1.10"),
        to("198.18.1.10", 0, "198.18.2.20", 0, 77),
    );
}

fn endpoint(v6: bool, a: u128, port: u16) -> Ep {
    let addr: std::net::IpAddr = if v6 {
        std::net::Ipv6Addr::from(a).into()
    } else {
        std::net::Ipv4Addr::from(a as u32).into()
    };
    Ep(addr, port)
}

fn raw_of(e: Ep) -> RawAddr {
    raw_addr(e.0).1
}

proptest! {
    /// Rewrite then full recompute agree, for random packets and endpoints.
    #[test]
    fn incremental_equals_recomputed(
        v6 in any::<bool>(),
        kind in 0u8..4,
        addrs in any::<[u128; 4]>(),
        ports in any::<[u16; 4]>(),
        payload in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let (s, d) = (endpoint(v6, addrs[0], ports[0]), endpoint(v6, addrs[1], ports[1]));
        let (ns, nd) = (endpoint(v6, addrs[2], ports[2]), endpoint(v6, addrs[3], ports[3]));
        let b = match kind {
            0 => tcp(s, d, 0x10, ports[0].into(), 5, 100, None, &payload),
            1 => udp(s, d, &payload),
            _ => echo(&s.0.to_string(), &d.0.to_string(), kind == 2, ports[0], 1),
        };
        let e = Endpoints { src: raw_of(ns), dst: raw_of(nd), ports: (ns.1, nd.1), icmp_id: ports[2] };
        let out = translated(b, &e);
        prop_assert_eq!(recompute(&out), out);
    }
}

#[test]
fn deltas_from_endpoints_equal_deltas_from_the_bytes_only_for_what_they_carry() {
    let b = udp(ep("198.18.1.10", 5353), ep("198.18.2.53", 53), b"query?");
    let p = parse(&b).unwrap();
    let from = Endpoints::of(&p);
    let e = to("198.18.9.1", 2000, "198.18.2.53", 53, 0);
    assert!(carries(&p, &from));
    let mut fast = b.clone();
    let d = Deltas::between(p.version, p.protocol, &from, &e);
    translate_with(&mut fast, &p, &e, d, false).unwrap();
    assert_eq!(fast, translated(b.clone(), &e));
    // Another view (here: the translated one) is not carried.
    assert!(!carries(&parse(&fast).unwrap(), &from));
    let ping = echo("198.18.1.10", "198.18.2.20", true, 77, 1);
    let p = parse(&ping).unwrap();
    assert!(carries(&p, &Endpoints::of(&p)));
    assert!(!carries(
        &p,
        &Endpoints {
            icmp_id: 78,
            ..Endpoints::of(&p)
        }
    ));
}

#[test]
fn the_fixed_offset_rewrite_refuses_short_bytes_and_writes_nothing() {
    let packets = [
        udp(ep("198.18.1.10", 5353), ep("198.18.2.53", 53), b""),
        udp(ep("fd00:1::10", 5353), ep("fd00:2::53", 53), b""),
        tcp(
            ep("198.18.1.10", 40000),
            ep("198.18.2.20", 80),
            0x10,
            1,
            1,
            100,
            None,
            b"",
        ),
        tcp(
            ep("fd00:1::10", 40000),
            ep("fd00:2::20", 80),
            0x10,
            1,
            1,
            100,
            None,
            b"",
        ),
    ];
    for b in packets {
        let p = parse(&b).unwrap();
        let v6 = p.version == IpVersion::V6;
        let e = if v6 {
            to("fd00:9::1", 2000, "fd00:2::99", 53, 0)
        } else {
            to("198.18.9.1", 2000, "198.18.2.99", 53, 0)
        };
        let d = Deltas::between(p.version, p.protocol, &Endpoints::of(&p), &e);
        let check_end = usize::from(p.l4_offset) + if p.protocol == proto::UDP { 8 } else { 18 };
        // Bytes cut anywhere before the transport checksum's end: refused
        // before anything is written (the parsed packet says more than the
        // bytes hold, which only a bug could bring about).
        for len in 0..check_end {
            let mut cut = b[..len].to_vec();
            assert_eq!(translate_with(&mut cut, &p, &e, d, false), None, "{len}");
            assert_eq!(cut, b[..len], "{len}");
        }
        let mut whole = b.clone();
        translate_with(&mut whole, &p, &e, d, false).unwrap();
        assert_eq!(whole, translated(b, &e));
    }
}

proptest! {
    /// The precomputed IPv4 rewrite of a translated flow writes exactly
    /// what the general fixed-offset rewrite does (full and partial
    /// checksums, UDP without a checksum), and refuses cut bytes without
    /// writing anything.
    #[test]
    fn ports4_equals_the_fixed_offset_rewrite(
        is_tcp in any::<bool>(),
        addrs in any::<[u32; 4]>(),
        ports in any::<[u16; 4]>(),
        partial in any::<bool>(),
        no_udp_checksum in any::<bool>(),
        payload in proptest::collection::vec(any::<u8>(), 0..64),
        cut in 0usize..40,
    ) {
        let ep4 = |i: usize| endpoint(false, u128::from(addrs[i]), ports[i]);
        let mut b = if is_tcp {
            tcp(ep4(0), ep4(1), 0x10, 1, 5, 100, None, &payload)
        } else {
            udp(ep4(0), ep4(1), &payload)
        };
        let p = parse(&b).unwrap();
        if !is_tcp && no_udp_checksum {
            let at = usize::from(p.l4_offset) + 6;
            b[at..at + 2].fill(0);
        }
        let e = Endpoints {
            src: raw_of(ep4(2)),
            dst: raw_of(ep4(3)),
            ports: (ports[2], ports[3]),
            icmp_id: 0,
        };
        let d = Deltas::between(p.version, p.protocol, &Endpoints::of(&p), &e);
        let ports4 = Ports4::new(&e.src, &e.dst, e.ports, !is_tcp, d);
        prop_assert_eq!(ports4.endpoints(), e);
        let (mut general, mut fast) = (b.clone(), b.clone());
        translate_with(&mut general, &p, &e, d, partial).unwrap();
        ports4.apply(&mut fast, usize::from(p.l4_offset), partial).unwrap();
        prop_assert_eq!(&fast, &general);
        let check_end = usize::from(p.l4_offset) + if is_tcp { 18 } else { 8 };
        let mut short = b[..cut.min(check_end - 1)].to_vec();
        prop_assert_eq!(ports4.apply(&mut short, usize::from(p.l4_offset), partial), None);
        prop_assert_eq!(&short[..], &b[..short.len()]);
    }
}
