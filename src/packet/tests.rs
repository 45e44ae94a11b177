//! Byte fixtures per header.

use super::*;
use crate::testkit::{ep, udp};
use etherparse::PacketBuilder;

/// An IPv4 TCP SYN from 198.18.1.10:40000 to 198.18.2.20:80, written out
/// byte by byte: MSS 1460, SACK permitted, timestamps, NOP, window scale 7.
const SYN_V4: [u8; 60] = [
    0x45, 0x00, 0x00, 0x3c, 0x1c, 0x46, 0x40, 0x00, 0x40, 0x06, 0x00,
    0x00, // ver/ihl … proto, csum
    198, 18, 1, 10, // source
    198, 18, 2, 20, // destination
    0x9c, 0x40, 0x00, 0x50, // ports 40000 → 80
    0x00, 0x00, 0x03, 0xe8, // seq 1000
    0x00, 0x00, 0x00, 0x00, // ack 0
    0xa0, 0x02, 0xfa, 0xf0, // data offset 10, SYN, window 64240
    0x00, 0x00, 0x00, 0x00, // checksum, urgent
    0x02, 0x04, 0x05, 0xb4, // MSS 1460
    0x04, 0x02, // SACK permitted
    0x08, 0x0a, 0, 0, 0, 1, 0, 0, 0, 0,    // timestamps
    0x01, // NOP
    0x03, 0x03, 0x07, // window scale 7
];

fn raw(s: &str) -> RawAddr {
    raw_addr(s.parse().unwrap()).1
}

#[test]
fn ipv4_tcp_syn_fixture() {
    let p = parse(&SYN_V4).unwrap();
    assert_eq!(p.version, IpVersion::V4);
    assert_eq!(p.src, raw("198.18.1.10"));
    assert_eq!(p.dst, raw("198.18.2.20"));
    assert_eq!(p.protocol, proto::TCP);
    assert_eq!(p.len, 60);
    assert_eq!(p.l4_offset, 20);
    assert_eq!(p.fragment, Fragment::No);
    let Transport::Tcp {
        src_port,
        dst_port,
        segment,
    } = p.transport
    else {
        panic!("not TCP: {:?}", p.transport);
    };
    assert_eq!((src_port, dst_port), (40000, 80));
    assert_eq!(segment.seq, 1000);
    assert_eq!(segment.flags, tcp_flags::SYN);
    assert_eq!(segment.window, 64240);
    assert_eq!(segment.wscale, Some(7));
    assert_eq!(segment.payload_len, 0);
}

#[test]
fn window_scale_is_read_from_syns_only_and_capped() {
    let mut p = SYN_V4;
    p[59] = 20; // RFC 7323: larger shifts are treated as 14
    let Transport::Tcp { segment, .. } = parse(&p).unwrap().transport else {
        panic!()
    };
    assert_eq!(segment.wscale, Some(14));
    let mut ack = SYN_V4;
    ack[33] = tcp_flags::ACK;
    let Transport::Tcp { segment, .. } = parse(&ack).unwrap().transport else {
        panic!()
    };
    assert_eq!(segment.wscale, None);
}

#[test]
fn tcp_payload_length_excludes_headers() {
    let mut out = Vec::new();
    PacketBuilder::ipv4([198, 18, 1, 10], [198, 18, 2, 20], 64)
        .tcp(1, 2, 7, 100)
        .ack(9)
        .write(&mut out, &[0u8; 333])
        .unwrap();
    let Transport::Tcp { segment, .. } = parse(&out).unwrap().transport else {
        panic!()
    };
    assert_eq!((segment.seq, segment.ack, segment.payload_len), (7, 9, 333));
    assert_eq!(segment.flags, tcp_flags::ACK);
}

#[test]
fn ipv4_options_are_skipped() {
    let mut out = udp(ep("198.18.1.10", 5), ep("198.18.2.20", 6), b"hi");
    // Rebuild with a 4-byte option (NOP NOP NOP EOL): ihl 6.
    let mut with_opt = out[..20].to_vec();
    with_opt[0] = 0x46;
    with_opt.extend_from_slice(&[1, 1, 1, 0]);
    with_opt.extend_from_slice(&out[20..]);
    let total = with_opt.len() as u16;
    with_opt[2..4].copy_from_slice(&total.to_be_bytes());
    out = with_opt;
    let p = parse(&out).unwrap();
    assert_eq!(p.l4_offset, 24);
    assert_eq!(p.ports(), Some((5, 6)));
}

#[test]
fn udp_and_its_bad_lengths() {
    let good = udp(ep("198.18.1.10", 5353), ep("198.18.2.20", 53), b"query");
    let p = parse(&good).unwrap();
    assert_eq!(
        p.transport,
        Transport::Ports {
            src_port: 5353,
            dst_port: 53
        }
    );
    let mut short = good.clone();
    short[24..26].copy_from_slice(&4u16.to_be_bytes());
    assert_eq!(parse(&short), Err(DropReason::MalformedTransport));
    let mut long = good.clone();
    long[24..26].copy_from_slice(&500u16.to_be_bytes());
    assert_eq!(parse(&long), Err(DropReason::MalformedTransport));
}

#[test]
fn icmp_classes_and_ids() {
    let mut out = Vec::new();
    PacketBuilder::ipv4([198, 18, 1, 10], [198, 18, 2, 20], 64)
        .icmpv4_echo_request(0x1234, 1)
        .write(&mut out, b"ping")
        .unwrap();
    assert_eq!(
        parse(&out).unwrap().transport,
        Transport::Icmp {
            icmp_type: 8,
            code: 0,
            id: 0x1234,
            class: IcmpClass::Query {
                request: true,
                request_type: 8
            }
        }
    );
    assert_eq!(
        icmp_class(IpVersion::V4, 0),
        IcmpClass::Query {
            request: false,
            request_type: 8
        }
    );
    assert_eq!(
        icmp_class(IpVersion::V4, 14),
        IcmpClass::Query {
            request: false,
            request_type: 13
        }
    );
    assert_eq!(
        icmp_class(IpVersion::V4, 17),
        IcmpClass::Query {
            request: true,
            request_type: 17
        }
    );
    for error in [3, 4, 5, 11, 12] {
        assert_eq!(icmp_class(IpVersion::V4, error), IcmpClass::Error);
    }
    assert_eq!(icmp_class(IpVersion::V4, 9), IcmpClass::Info);
    assert_eq!(
        icmp_class(IpVersion::V6, 128),
        IcmpClass::Query {
            request: true,
            request_type: 128
        }
    );
    assert_eq!(
        icmp_class(IpVersion::V6, 129),
        IcmpClass::Query {
            request: false,
            request_type: 128
        }
    );
    for error in [1, 2, 3, 4] {
        assert_eq!(icmp_class(IpVersion::V6, error), IcmpClass::Error);
    }
    assert_eq!(icmp_class(IpVersion::V6, 133), IcmpClass::Info);
    let mut v6 = Vec::new();
    PacketBuilder::ipv6(raw("fd00:1::10"), raw("fd00:2::20"), 64)
        .icmpv6_echo_reply(77, 2)
        .write(&mut v6, b"pong")
        .unwrap();
    let p = parse(&v6).unwrap();
    assert_eq!(p.protocol, proto::ICMPV6);
    assert!(matches!(
        p.transport,
        Transport::Icmp {
            icmp_type: 129,
            id: 77,
            ..
        }
    ));
}

/// An IPv6 packet with hop-by-hop, destination options and routing headers
/// before a UDP header, written out byte by byte.
#[test]
fn ipv6_extension_headers_are_walked() {
    let mut p = vec![
        0x60, 0, 0, 0, // version 6
        0, 32, 0, 64, // payload length 32, next header hop-by-hop, hop limit
    ];
    p.extend_from_slice(&raw("fd00:1::10"));
    p.extend_from_slice(&raw("fd00:2::20"));
    p.extend_from_slice(&[60, 0, 1, 4, 0, 0, 0, 0]); // hop-by-hop → dest options (PadN)
    p.extend_from_slice(&[43, 0, 1, 4, 0, 0, 0, 0]); // dest options → routing
    p.extend_from_slice(&[17, 0, 0, 0, 0, 0, 0, 0]); // routing type 0, 0 segments left → UDP
    p.extend_from_slice(&[0x13, 0x88, 0x00, 0x35, 0, 8, 0, 0]); // UDP 5000 → 53, length 8
    let parsed = parse(&p).unwrap();
    assert_eq!(parsed.protocol, proto::UDP);
    assert_eq!(parsed.l4_offset, 64);
    assert_eq!(parsed.ports(), Some((5000, 53)));
}

fn v4_fragment(offset_units: u16, more: bool, payload: &[u8]) -> Vec<u8> {
    let mut h = etherparse::Ipv4Header::new(
        payload.len() as u16,
        64,
        etherparse::IpNumber::UDP,
        [198, 18, 1, 10],
        [198, 18, 2, 20],
    )
    .unwrap();
    h.identification = 0xbeef;
    h.more_fragments = more;
    h.fragment_offset = etherparse::IpFragOffset::try_new(offset_units).unwrap();
    let mut out = Vec::new();
    h.write(&mut out).unwrap();
    out.extend_from_slice(payload);
    out
}

#[test]
fn ipv4_fragments() {
    let first = v4_fragment(
        0,
        true,
        &[
            0x13, 0x88, 0x00, 0x35, 0x0b, 0xb8, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8,
        ],
    );
    let p = parse(&first).unwrap();
    assert_eq!(p.fragment, Fragment::First { id: 0xbeef });
    assert_eq!(
        p.ports(),
        Some((5000, 53)),
        "a first fragment is classified with its ports"
    );
    let later = v4_fragment(2, false, &[9; 8]);
    let p = parse(&later).unwrap();
    assert_eq!(p.fragment, Fragment::Later { id: 0xbeef });
    assert_eq!(p.transport, Transport::None);
    let tiny = v4_fragment(0, true, &[0x13, 0x88, 0, 0x35]);
    assert_eq!(parse(&tiny), Err(DropReason::FragmentTooSmall));
}

fn v6_fragment(offset_units: u16, more: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    etherparse::Ipv6Header {
        payload_length: (payload.len() + 8) as u16,
        next_header: etherparse::IpNumber::IPV6_FRAGMENTATION_HEADER,
        hop_limit: 64,
        source: raw("fd00:1::10"),
        destination: raw("fd00:2::20"),
        ..Default::default()
    }
    .write(&mut out)
    .unwrap();
    let frag = etherparse::Ipv6FragmentHeader::new(
        etherparse::IpNumber::UDP,
        etherparse::IpFragOffset::try_new(offset_units).unwrap(),
        more,
        0xdead_beef,
    );
    out.extend_from_slice(&frag.to_bytes());
    out.extend_from_slice(payload);
    out
}

#[test]
fn ipv6_fragments_and_atomic_fragments() {
    let udp = [0x13, 0x88, 0x00, 0x35, 0x0b, 0xb8, 0, 0];
    let p = parse(&v6_fragment(0, true, &udp)).unwrap();
    assert_eq!(p.fragment, Fragment::First { id: 0xdead_beef });
    assert_eq!(p.ports(), Some((5000, 53)));
    let p = parse(&v6_fragment(100, false, &[1; 8])).unwrap();
    assert_eq!(p.fragment, Fragment::Later { id: 0xdead_beef });
    assert_eq!(p.protocol, proto::UDP);
    // Offset 0 without more fragments: an atomic fragment is a whole packet.
    let whole = [0x13, 0x88, 0x00, 0x35, 0, 8, 0, 0];
    let p = parse(&v6_fragment(0, false, &whole)).unwrap();
    assert_eq!(p.fragment, Fragment::No);
    assert_eq!(p.ports(), Some((5000, 53)));
}

#[test]
fn protocols_without_ports_and_with_ports() {
    let mut gre = Vec::new();
    etherparse::Ipv4Header::new(
        4,
        64,
        etherparse::IpNumber(47),
        [198, 18, 1, 10],
        [198, 18, 2, 20],
    )
    .unwrap()
    .write(&mut gre)
    .unwrap();
    gre.extend_from_slice(&[0, 0, 0x08, 0x00]);
    assert_eq!(parse(&gre).unwrap().transport, Transport::None);
    let mut sctp = Vec::new();
    etherparse::Ipv4Header::new(
        12,
        64,
        etherparse::IpNumber(132),
        [198, 18, 1, 10],
        [198, 18, 2, 20],
    )
    .unwrap()
    .write(&mut sctp)
    .unwrap();
    sctp.extend_from_slice(&[0x0b, 0xb8, 0x0f, 0xa0, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(parse(&sctp).unwrap().ports(), Some((3000, 4000)));
}

#[test]
fn malformed_and_truncated_input() {
    assert_eq!(parse(&[]), Err(DropReason::Truncated));
    assert_eq!(parse(&[0x50; 40]), Err(DropReason::BadIpVersion));
    assert_eq!(
        parse(&SYN_V4[..50]),
        Err(DropReason::Truncated),
        "total length beyond the slice"
    );
    let mut short_ihl = SYN_V4;
    short_ihl[0] = 0x44;
    assert!(matches!(
        parse(&short_ihl),
        Err(DropReason::MalformedIp | DropReason::Truncated)
    ));
    assert_eq!(parse(&short_ihl), Err(DropReason::MalformedIp));
    let mut bad_offset = SYN_V4;
    bad_offset[32] = 0x40; // TCP data offset 4 < 5
    assert_eq!(parse(&bad_offset), Err(DropReason::MalformedTransport));
    let mut cut = SYN_V4[..30].to_vec();
    cut[2..4].copy_from_slice(&30u16.to_be_bytes());
    assert_eq!(parse(&cut), Err(DropReason::MalformedTransport));
}

#[test]
fn quoted_packets_of_icmp_errors() {
    let udp = udp(ep("198.18.1.10", 5000), ep("198.18.2.20", 9), b"probe");
    // Routers quote the IP header and 8 bytes of transport.
    let q = parse_quoted(IpVersion::V4, &udp[..28]).unwrap();
    assert_eq!((q.src, q.dst), (raw("198.18.1.10"), raw("198.18.2.20")));
    assert_eq!((q.protocol, q.src_port, q.dst_port), (proto::UDP, 5000, 9));
    let q = parse_quoted(IpVersion::V4, &SYN_V4[..28]).unwrap();
    assert_eq!(
        (q.protocol, q.src_port, q.dst_port),
        (proto::TCP, 40000, 80)
    );
    let mut echo = Vec::new();
    PacketBuilder::ipv4([198, 18, 1, 10], [198, 18, 2, 20], 64)
        .icmpv4_echo_request(42, 1)
        .write(&mut echo, b"ping")
        .unwrap();
    let q = parse_quoted(IpVersion::V4, &echo[..28]).unwrap();
    assert_eq!(
        q.icmp,
        Some((
            8,
            0,
            42,
            IcmpClass::Query {
                request: true,
                request_type: 8
            }
        ))
    );
    let mut error = Vec::new();
    PacketBuilder::ipv4([198, 18, 1, 10], [198, 18, 2, 20], 64)
        .icmpv4_raw(3, 3, [0; 4])
        .write(&mut error, &udp[..28])
        .unwrap();
    assert_eq!(
        parse_quoted(IpVersion::V4, &error[..28]),
        None,
        "an error about an error"
    );
    assert_eq!(
        parse_quoted(IpVersion::V6, &udp[..28]),
        None,
        "another IP version"
    );
    assert_eq!(
        parse_quoted(IpVersion::V4, &udp[..22]),
        None,
        "too short for the ports"
    );
}

/// The direct IPv4 read and etherparse's walk agree on every input: valid
/// packets of each kind, then with bytes overwritten and the tail cut.
mod direct_read {
    use super::*;
    use proptest::prelude::*;

    fn seeds() -> Vec<Vec<u8>> {
        let mut seeds = vec![
            SYN_V4.to_vec(),
            udp(ep("198.18.1.10", 5000), ep("198.19.0.1", 53), &[7; 40]),
            crate::testkit::tcp(
                ep("198.18.1.10", 40000),
                ep("198.19.0.1", 443),
                crate::testkit::ACK,
                1,
                2,
                512,
                None,
                &[1; 64],
            ),
            v4_fragment(0, true, &[3; 24]),
            v4_fragment(3, false, &[3; 24]),
        ];
        let mut icmp = Vec::new();
        PacketBuilder::ipv4([198, 18, 1, 10], [198, 18, 2, 20], 64)
            .icmpv4_echo_request(9, 1)
            .write(&mut icmp, &[0; 8])
            .unwrap();
        seeds.push(icmp);
        // An authentication header in front of UDP.
        let mut auth = udp(ep("198.18.1.10", 5000), ep("198.19.0.1", 53), &[7; 8]);
        auth[9] = AUTH;
        seeds.push(auth);
        seeds
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn agrees_with_the_walk(
            seed in 0usize..7,
            edits in proptest::collection::vec((0usize..80, any::<u8>()), 0..4),
            cut in 0usize..24,
        ) {
            let mut bytes = seeds()[seed].clone();
            for (at, value) in edits {
                if let Some(b) = bytes.get_mut(at) {
                    *b = value;
                }
            }
            bytes.truncate(bytes.len().saturating_sub(cut));
            if bytes.first().is_some_and(|b| b >> 4 == 4) {
                prop_assert_eq!(parse(&bytes), parse_walked(&bytes));
            }
        }

        #[test]
        fn agrees_on_any_bytes(mut bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Some(b) = bytes.first_mut() {
                *b = 0x40 | (*b & 0x0f);
            }
            prop_assert_eq!(parse(&bytes), parse_walked(&bytes));
        }
    }
}
