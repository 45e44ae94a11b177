//! UDP coalescing on write (issue 15): forwarded datagrams merged into one
//! UDP GSO superframe per run of a flow. Each superframe is split here as
//! the receiving kernel splits it (`__udp_gso_segment`, then the checksum
//! the device would complete) and must give back exactly the datagrams that
//! went in, in order, with checksums equal to ones computed from scratch.

mod common;

use common::*;
use proptest::prelude::*;
use tunwall::io::coalesce::UdpCoalescer;
use tunwall::packet::rewrite::{finish, sum};

const HDR: usize = tun_rs::VIRTIO_NET_HDR_LEN;
const NEEDS_CSUM: u8 = 1;
const DATA_VALID: u8 = 2;

/// How a datagram's checksum arrives from the sender's kernel.
#[derive(Clone, Copy, Debug)]
enum Csum {
    /// Left to the device: only the pseudo-header sum in place.
    Partial,
    /// Complete, and the device says it checked it.
    Valid,
    /// Complete, nothing said.
    Plain,
}

fn ip_header(packet: &[u8]) -> usize {
    if packet[0] >> 4 == 4 { 20 } else { 40 }
}

fn pseudo(packet: &[u8], len: usize) -> u32 {
    let ih = ip_header(packet);
    let addrs = if ih == 20 {
        &packet[12..20]
    } else {
        &packet[8..40]
    };
    sum(addrs) + 17 + len as u32
}

/// A datagram as a TUN queue with offload returns it.
fn frame(from: Ep, to: Ep, payload: &[u8], csum: Csum) -> Vec<u8> {
    let mut packet = udp(from, to, payload);
    let ih = ip_header(&packet);
    let mut header = tun_rs::VirtioNetHdr::default();
    match csum {
        Csum::Partial => {
            let partial = !finish(pseudo(&packet, packet.len() - ih));
            packet[ih + 6..ih + 8].copy_from_slice(&partial.to_be_bytes());
            header.flags = NEEDS_CSUM;
            header.csum_start = ih as u16;
            header.csum_offset = 6;
        }
        Csum::Valid => header.flags = DATA_VALID,
        Csum::Plain => {}
    }
    let mut f = vec![0u8; HDR];
    header.encode(&mut f).unwrap();
    f.extend_from_slice(&packet);
    f
}

/// The datagram a frame stands for, with its checksum complete.
fn complete(frame: &[u8]) -> Vec<u8> {
    recompute(&frame[HDR..])
}

/// Splits a written frame as the receiving kernel does and completes
/// each segment's checksum as a device would.
fn split(frame: &[u8]) -> Vec<Vec<u8>> {
    let h = tun_rs::VirtioNetHdr::decode(&frame[..HDR]).unwrap();
    let packet = &frame[HDR..];
    if h.gso_type == 0 {
        return vec![complete(frame)];
    }
    assert_eq!(h.gso_type, tun_rs::VIRTIO_NET_HDR_GSO_UDP_L4);
    assert_eq!(h.flags, NEEDS_CSUM);
    let ih = ip_header(packet);
    assert_eq!(
        (h.csum_start as usize, h.csum_offset, h.hdr_len as usize),
        (ih, 6, ih + 8)
    );
    // The IP header the kernel checks before it splits anything.
    if ih == 20 {
        assert_eq!(finish(sum(&packet[..20])), 0, "IPv4 header checksum");
        assert_eq!(
            u16::from_be_bytes([packet[2], packet[3]]) as usize,
            packet.len()
        );
    } else {
        assert_eq!(
            u16::from_be_bytes([packet[4], packet[5]]) as usize + 40,
            packet.len()
        );
    }
    let udp_len = packet.len() - ih;
    assert_eq!(
        u16::from_be_bytes([packet[ih + 4], packet[ih + 5]]) as usize,
        udp_len
    );
    let check = u16::from_be_bytes([packet[ih + 6], packet[ih + 7]]);
    assert_eq!(
        check,
        !finish(pseudo(packet, udp_len)),
        "partial pseudo-header sum"
    );
    let id = u16::from_be_bytes([packet[4], packet[5]]);
    let payload = &packet[ih + 8..];
    assert!(
        payload.len() > h.gso_size as usize,
        "a superframe holds two segments at least"
    );
    payload
        .chunks(h.gso_size as usize)
        .enumerate()
        .map(|(i, chunk)| {
            let mut s = packet[..ih + 8].to_vec();
            s.extend_from_slice(chunk);
            let len = s.len();
            if ih == 20 {
                s[2..4].copy_from_slice(&(len as u16).to_be_bytes());
                s[4..6].copy_from_slice(&id.wrapping_add(i as u16).to_be_bytes());
                s[10..12].fill(0);
                let c = finish(sum(&s[..20]));
                s[10..12].copy_from_slice(&c.to_be_bytes());
            } else {
                s[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
            }
            s[ih + 4..ih + 6].copy_from_slice(&((len - ih) as u16).to_be_bytes());
            // The segment's partial sum, then the device's completion.
            let partial = !finish(pseudo(&s, len - ih));
            s[ih + 6..ih + 8].copy_from_slice(&partial.to_be_bytes());
            let mut c = finish(sum(&s[ih..]));
            if c == 0 {
                c = 0xffff;
            }
            s[ih + 6..ih + 8].copy_from_slice(&c.to_be_bytes());
            s
        })
        .collect()
}

/// The worker's use of a coalescer: what it writes for `frames`, in order.
fn written(frames: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut c = UdpCoalescer::default();
    let mut out = Vec::new();
    for f in frames {
        if c.push(f) {
            continue;
        }
        if !c.is_empty() {
            out.push(c.take().unwrap().to_vec());
            if c.push(f) {
                continue;
            }
        }
        out.push(f.clone());
    }
    out.extend(c.take().map(<[u8]>::to_vec));
    out
}

/// What arrives: every written frame split, datagrams with IPv4 ids
/// numbered as the kernel numbers them.
fn arrived(frames: &[Vec<u8>]) -> Vec<Vec<u8>> {
    written(frames).iter().flat_map(|f| split(f)).collect()
}

fn without_id(mut packet: Vec<u8>) -> Vec<u8> {
    if packet[0] >> 4 == 4 {
        packet[4..6].fill(0);
        packet[10..12].fill(0);
    }
    packet
}

#[test]
fn a_run_of_datagrams_leaves_as_one_superframe_and_splits_back() {
    for (c, s) in [(C4, S4), (C6, S6)] {
        for csum in [Csum::Partial, Csum::Valid, Csum::Plain] {
            let frames: Vec<_> = (0..10u8)
                .map(|i| frame(ep(c, 5000), ep(s, 53), &[i; 64], csum))
                .chain([frame(ep(c, 5000), ep(s, 53), &[99; 20], csum)])
                .collect();
            let out = written(&frames);
            assert_eq!(out.len(), 1, "{csum:?}: one write");
            let h = tun_rs::VirtioNetHdr::decode(&out[0][..HDR]).unwrap();
            assert_eq!(h.gso_size, 64);
            let got: Vec<_> = arrived(&frames).into_iter().map(without_id).collect();
            let want: Vec<_> = frames.iter().map(|f| without_id(complete(f))).collect();
            assert_eq!(got, want, "{csum:?}: the datagrams, checksums right");
        }
    }
}

#[test]
fn the_superframe_is_what_a_queue_with_udp_offload_returns() {
    let payload: Vec<u8> = (0..(5 * 100 + 30)).map(|i| i as u8).collect();
    let frames: Vec<_> = payload
        .chunks(100)
        .map(|chunk| frame(ep(C4, 4433), ep(S4, 443), chunk, Csum::Partial))
        .collect();
    let out = written(&frames);
    let mut want = udp_superframe(ep(C4, 4433), ep(S4, 443), 100, &payload);
    // udp_superframe leaves an arbitrary partial checksum.
    let ih = HDR + 20;
    let partial = !finish(pseudo(&want[HDR..], want.len() - ih));
    want[ih + 6..ih + 8].copy_from_slice(&partial.to_be_bytes());
    assert_eq!(out, vec![want]);
}

#[test]
fn a_single_datagram_leaves_as_it_came() {
    let f = frame(ep(C4, 5000), ep(S4, 53), b"alone", Csum::Partial);
    assert_eq!(written(std::slice::from_ref(&f)), vec![f]);
}

#[test]
fn only_neighbours_of_one_flow_merge_and_order_is_kept() {
    let a = |p: &[u8]| frame(ep(C4, 5000), ep(S4, 53), p, Csum::Partial);
    let b = |p: &[u8]| frame(ep(C4, 5001), ep(S4, 53), p, Csum::Partial);
    let frames = vec![
        a(&[1; 50]),
        a(&[2; 50]),
        b(&[3; 50]),
        a(&[4; 50]),
        a(&[5; 50]),
    ];
    let out = written(&frames);
    assert_eq!(out.len(), 3, "a a | b | a a");
    let want: Vec<_> = frames.iter().map(|f| without_id(complete(f))).collect();
    let got: Vec<_> = arrived(&frames).into_iter().map(without_id).collect();
    assert_eq!(got, want);
}

#[test]
fn a_shorter_datagram_ends_the_superframe_and_a_longer_one_starts_another() {
    let a = |n: usize| frame(ep(C6, 5000), ep(S6, 53), &vec![7; n], Csum::Partial);
    let frames = vec![a(100), a(100), a(40), a(100), a(120), a(120)];
    let out = written(&frames);
    assert_eq!(out.len(), 3, "100 100 40 | 100 | 120 120");
    assert_eq!(
        tun_rs::VirtioNetHdr::decode(&out[0][..HDR])
            .unwrap()
            .gso_size,
        100
    );
    assert_eq!(out[1], frames[3]);
    let want: Vec<_> = frames.iter().map(|f| without_id(complete(f))).collect();
    let got: Vec<_> = arrived(&frames).into_iter().map(without_id).collect();
    assert_eq!(got, want);
}

#[test]
fn what_may_not_merge_leaves_alone() {
    let good = frame(ep(C4, 5000), ep(S4, 53), &[1; 64], Csum::Plain);
    let mut bad_checksum = good.clone();
    bad_checksum[HDR + 20 + 6] ^= 0x40;
    let mut no_checksum = good.clone();
    no_checksum[HDR + 26..HDR + 28].fill(0);
    let mut fragment = good.clone();
    fragment[HDR + 6] |= 0x20; // more fragments
    let mut options = good.clone();
    options[HDR] = 0x46;
    let mut ttl = good.clone();
    ttl[HDR + 8] -= 1;
    let superframe = udp_superframe(ep(C4, 5000), ep(S4, 53), 64, &[1; 128]);
    let tcp_frame = {
        let mut f = vec![0u8; HDR];
        f.extend(tcp(
            ep(C4, 5000),
            ep(S4, 53),
            ACK,
            1,
            1,
            100,
            None,
            &[1; 64],
        ));
        f
    };
    let mut short = good.clone();
    short.truncate(HDR + 24);
    for (name, other) in [
        ("a bad checksum", bad_checksum),
        ("no checksum", no_checksum),
        ("a fragment", fragment),
        ("IP options", options),
        ("another TTL", ttl),
        ("a superframe", superframe),
        ("TCP", tcp_frame),
        ("a truncated packet", short),
    ] {
        let frames = vec![good.clone(), good.clone(), other.clone(), good.clone()];
        let out = written(&frames);
        assert_eq!(out.len(), 3, "{name}: good good | other | good");
        assert_eq!(out[1], other, "{name} leaves unchanged");
    }
}

#[test]
fn a_superframe_stops_at_64_datagrams_and_at_64_kib() {
    let small: Vec<_> = (0..130)
        .map(|_| frame(ep(C4, 5000), ep(S4, 53), &[3; 10], Csum::Partial))
        .collect();
    let out = written(&small);
    assert_eq!(out.len(), 3, "64 + 64 + 2");
    let big: Vec<_> = (0..10)
        .map(|_| frame(ep(C4, 5000), ep(S4, 53), &[4; 8000], Csum::Partial))
        .collect();
    let out = written(&big);
    assert!(out.iter().all(|f| f.len() - HDR <= 65_535));
    assert_eq!(out.len(), 2, "8 datagrams fit in 65 535 bytes");
    let want: Vec<_> = big.iter().map(|f| without_id(complete(f))).collect();
    let got: Vec<_> = arrived(&big).into_iter().map(without_id).collect();
    assert_eq!(got, want);
}

fn any_frame() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<bool>(),
        0..3usize,
        prop_oneof![Just(1usize), Just(64), 1..1400usize],
        0..3u8,
        any::<u8>(),
    )
        .prop_map(|(v6, flow, len, csum, fill)| {
            let (c, s) = if v6 { (C6, S6) } else { (C4, S4) };
            let csum = [Csum::Partial, Csum::Valid, Csum::Plain][usize::from(csum)];
            frame(ep(c, 5000 + flow as u16), ep(s, 53), &vec![fill; len], csum)
        })
}

proptest! {
    #[test]
    fn whatever_is_written_splits_back_into_the_datagrams_in_order(
        frames in proptest::collection::vec(any_frame(), 1..80)
    ) {
        let want: Vec<_> = frames.iter().map(|f| without_id(complete(f))).collect();
        let got: Vec<_> = arrived(&frames).into_iter().map(without_id).collect();
        prop_assert_eq!(got, want);
    }
}
