//! Packet builders: TCP, UDP, ICMP echo and errors, other protocols and
//! fragments, as raw IP bytes. They panic on impossible requests (mixed
//! address families): they build test input, never parse it.

use etherparse::{Icmpv4Type, Icmpv6Type, PacketBuilder, TcpOptionElement};
use std::net::IpAddr;

/// An endpoint: address and port.
#[derive(Clone, Copy, Debug)]
pub struct Ep(pub IpAddr, pub u16);

pub fn ep(addr: &str, port: u16) -> Ep {
    Ep(addr.parse().expect("address"), port)
}

fn ip(src: IpAddr, dst: IpAddr) -> etherparse::PacketBuilderStep<etherparse::IpHeaders> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => PacketBuilder::ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => PacketBuilder::ipv6(s.octets(), d.octets(), 64),
        _ => panic!("mixed address families"),
    }
}

/// TCP flag bits.
pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;
pub const FIN: u8 = 0x01;
pub const RST: u8 = 0x04;

/// A TCP segment with the given flags; `wscale` adds MSS + window-scale options.
#[allow(clippy::too_many_arguments)]
pub fn tcp(
    from: Ep,
    to: Ep,
    flags: u8,
    seq: u32,
    ack: u32,
    window: u16,
    wscale: Option<u8>,
    payload: &[u8],
) -> Vec<u8> {
    let mut b = ip(from.0, to.0).tcp(from.1, to.1, seq, window);
    if flags & SYN != 0 {
        b = b.syn();
    }
    if flags & ACK != 0 {
        b = b.ack(ack);
    }
    if flags & FIN != 0 {
        b = b.fin();
    }
    if flags & RST != 0 {
        b = b.rst();
    }
    if let Some(s) = wscale {
        b = b
            .options(&[
                TcpOptionElement::MaximumSegmentSize(1460),
                TcpOptionElement::WindowScale(s),
            ])
            .expect("options fit");
    }
    let mut out = Vec::new();
    b.write(&mut out, payload).expect("write");
    out
}

pub fn udp(from: Ep, to: Ep, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    ip(from.0, to.0)
        .udp(from.1, to.1)
        .write(&mut out, payload)
        .expect("write");
    out
}

/// An ICMP(v6) echo request or reply.
pub fn echo(from: &str, to: &str, request: bool, id: u16, seq: u16) -> Vec<u8> {
    let (src, dst): (IpAddr, IpAddr) = (from.parse().unwrap(), to.parse().unwrap());
    let b = ip(src, dst);
    let mut out = Vec::new();
    match (src.is_ipv4(), request) {
        (true, true) => b.icmpv4_echo_request(id, seq).write(&mut out, b"ping"),
        (true, false) => b.icmpv4_echo_reply(id, seq).write(&mut out, b"ping"),
        (false, true) => b.icmpv6_echo_request(id, seq).write(&mut out, b"ping"),
        (false, false) => b.icmpv6_echo_reply(id, seq).write(&mut out, b"ping"),
    }
    .expect("write");
    out
}

/// An ICMP error from `from` to `to` quoting the first bytes of `quoted`.
/// IPv4: destination unreachable with `code` (3 = port unreachable);
/// IPv6: `code` 255 means packet too big (MTU 1280), else destination unreachable.
pub fn icmp_error(from: &str, to: &str, code: u8, quoted: &[u8]) -> Vec<u8> {
    let (src, dst): (IpAddr, IpAddr) = (from.parse().unwrap(), to.parse().unwrap());
    let b = ip(src, dst);
    let quote = &quoted[..quoted.len().min(if src.is_ipv4() { 28 } else { 48 })];
    let mut out = Vec::new();
    if src.is_ipv4() {
        let ty = Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::from_values(code, 0).expect("code"),
        );
        b.icmpv4(ty).write(&mut out, quote).expect("write");
    } else {
        let ty = if code == 255 {
            Icmpv6Type::PacketTooBig { mtu: 1280 }
        } else {
            Icmpv6Type::DestinationUnreachable(
                etherparse::icmpv6::DestUnreachableCode::from_u8(code).expect("code"),
            )
        };
        b.icmpv6(ty).write(&mut out, quote).expect("write");
    }
    out
}

/// A packet of another protocol (no ports), e.g. GRE = 47.
pub fn raw(from: &str, to: &str, protocol: u8) -> Vec<u8> {
    let (src, dst): (IpAddr, IpAddr) = (from.parse().unwrap(), to.parse().unwrap());
    let payload = b"raw!";
    let mut out = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            etherparse::Ipv4Header::new(
                payload.len() as u16,
                64,
                etherparse::IpNumber(protocol),
                s.octets(),
                d.octets(),
            )
            .expect("header")
            .write(&mut out)
            .expect("write");
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            etherparse::Ipv6Header {
                payload_length: payload.len() as u16,
                next_header: etherparse::IpNumber(protocol),
                hop_limit: 64,
                source: s.octets(),
                destination: d.octets(),
                ..Default::default()
            }
            .write(&mut out)
            .expect("write");
        }
        _ => panic!("mixed families"),
    }
    out.extend_from_slice(payload);
    out
}

/// Splits a full IP packet into fragments carrying `chunk` bytes of IP
/// payload each (a multiple of 8), with fragment identification `id`.
pub fn fragments(packet: &[u8], chunk: usize, id: u32) -> Vec<Vec<u8>> {
    assert_eq!(chunk % 8, 0);
    let v4 = packet[0] >> 4 == 4;
    let header_len = if v4 {
        usize::from(packet[0] & 0x0f) * 4
    } else {
        40
    };
    let payload = &packet[header_len..];
    let mut out = Vec::new();
    let mut offset = 0;
    while offset < payload.len() {
        let end = (offset + chunk).min(payload.len());
        let more = end < payload.len();
        let data = &payload[offset..end];
        let mut f = Vec::new();
        if v4 {
            let mut h = etherparse::Ipv4HeaderSlice::from_slice(packet)
                .expect("v4")
                .to_header();
            h.identification = id as u16;
            h.more_fragments = more;
            h.fragment_offset =
                etherparse::IpFragOffset::try_new((offset / 8) as u16).expect("offset");
            h.set_payload_len(data.len()).expect("len");
            h.header_checksum = h.calc_header_checksum();
            h.write(&mut f).expect("write");
        } else {
            let mut h = etherparse::Ipv6HeaderSlice::from_slice(packet)
                .expect("v6")
                .to_header();
            let next = h.next_header;
            h.next_header = etherparse::IpNumber::IPV6_FRAGMENTATION_HEADER;
            h.payload_length = (data.len() + 8) as u16;
            h.write(&mut f).expect("write");
            let frag = etherparse::Ipv6FragmentHeader::new(
                next,
                etherparse::IpFragOffset::try_new((offset / 8) as u16).expect("offset"),
                more,
                id,
            );
            f.extend_from_slice(&frag.to_bytes());
        }
        f.extend_from_slice(data);
        out.push(f);
        offset = end;
    }
    out
}

/// A UDP GSO superframe as a TUN queue with UDP segmentation offload
/// returns it: the virtio-net header (gso_type UDP_L4, `segment` bytes of
/// payload a datagram, checksum left to the receiver: NEEDS_CSUM with only
/// the pseudo-header sum in place) and one IP packet whose IP and UDP
/// lengths cover all of `payload`.
pub fn udp_superframe(from: Ep, to: Ep, segment: u16, payload: &[u8]) -> Vec<u8> {
    use tun_rs::{VIRTIO_NET_HDR_GSO_UDP_L4, VIRTIO_NET_HDR_LEN};
    // virtio_net.h: use csum_start and csum_offset (tun-rs does not export it).
    const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
    let packet = udp(from, to, payload);
    let l4 = packet.len() - payload.len() - 8;
    let header = tun_rs::VirtioNetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type: VIRTIO_NET_HDR_GSO_UDP_L4,
        hdr_len: u16::try_from(l4 + 8).expect("header length"),
        gso_size: segment,
        csum_start: u16::try_from(l4).expect("header length"),
        csum_offset: 6,
    };
    let mut frame = vec![0u8; VIRTIO_NET_HDR_LEN];
    header.encode(&mut frame).expect("header fits");
    frame.extend_from_slice(&packet);
    // The sender's kernel leaves the UDP checksum partial: any value the
    // engine must not check.
    frame[VIRTIO_NET_HDR_LEN + l4 + 6..VIRTIO_NET_HDR_LEN + l4 + 8].copy_from_slice(&[0x12, 0x34]);
    frame
}

/// The packet with every checksum (IPv4 header; TCP, UDP, ICMP, ICMPv6 of
/// an unfragmented packet) computed from scratch: equal to the input
/// exactly when the input's checksums are right. A UDP/IPv4 checksum of
/// zero ("none") is kept.
pub fn recompute(b: &[u8]) -> Vec<u8> {
    use crate::packet::rewrite::{finish, pseudo_sum, sum};
    use crate::packet::{Fragment, IpVersion, parse, proto};
    let mut b = b.to_vec();
    let p = parse(&b).expect("parses");
    if p.version == IpVersion::V4 {
        let ihl = usize::from(b[0] & 0x0f) * 4;
        b[10..12].fill(0);
        let c = finish(sum(&b[..ihl]));
        b[10..12].copy_from_slice(&c.to_be_bytes());
    }
    if p.fragment != Fragment::No {
        return b;
    }
    let l4 = usize::from(p.l4_offset);
    let end = p.len as usize;
    let at = match (p.protocol, p.version) {
        (proto::TCP, _) => l4 + 16,
        (proto::UDP, _) => l4 + 6,
        (proto::ICMP, IpVersion::V4) | (proto::ICMPV6, IpVersion::V6) => l4 + 2,
        _ => return b,
    };
    if p.protocol == proto::UDP && p.version == IpVersion::V4 && b[at..at + 2] == [0, 0] {
        return b;
    }
    b[at..at + 2].fill(0);
    let mut s = sum(&b[l4..end]);
    if p.protocol != proto::ICMP {
        s += pseudo_sum(p.version, &p.src, &p.dst, p.protocol, (end - l4) as u32);
    }
    let mut c = finish(s);
    if c == 0 && p.protocol == proto::UDP {
        c = 0xffff;
    }
    b[at..at + 2].copy_from_slice(&c.to_be_bytes());
    b
}
