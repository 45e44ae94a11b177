//! GSO superframes through the worker's frame path and the engine, on the
//! virtual clock: a crafted UDP_L4 frame (what a TUN queue with UDP
//! segmentation offload returns for a sender's UDP_SEGMENT write) is
//! classified once, counted once with all its bytes, and leaves unchanged.

mod common;

use common::*;
use tunwall::engine::Verdict;
use tunwall::io::worker::process_frame;
use tunwall::reason::DropReason;
use tunwall::time::Instant;

const HDR: usize = tun_rs::VIRTIO_NET_HDR_LEN;

/// 40 datagrams of 1200 bytes and one of 500 in one superframe.
fn payload() -> Vec<u8> {
    vec![b'q'; 40 * 1200 + 500]
}

fn frame_through(h: &mut Harness, port: u8, frame: &mut [u8]) -> Verdict {
    let verdict = process_frame(&mut h.engine, h.now, port, HDR, frame).expect("a whole frame");
    h.events.extend(h.engine.drain_events());
    verdict
}

#[test]
fn a_udp_superframe_is_classified_once_and_leaves_unchanged() {
    for (c, s) in [(C4, S4), (C6, S6)] {
        let mut h = Harness::default_flows();
        let mut frame = udp_superframe(ep(c, 4433), ep(s, 443), 1200, &payload());
        let sent = frame.clone();
        assert_eq!(
            frame_through(&mut h, LAN, &mut frame),
            Verdict::Forward(WAN)
        );
        assert_eq!(frame, sent, "header and packet leave as they came");
        let flow = h.only_flow();
        let ip_len = (frame.len() - HDR) as u64;
        assert_eq!(flow.out, (1, ip_len), "one packet of all the bytes");
        // The server's superframe back rides the flow.
        let mut reply = udp_superframe(ep(s, 443), ep(c, 4433), 1200, &payload());
        assert_eq!(
            frame_through(&mut h, WAN, &mut reply),
            Verdict::Forward(LAN)
        );
        assert_eq!(h.only_flow().inbound, (1, ip_len));
        assert_eq!(h.created().len(), 1);
    }
}

#[test]
fn an_unsolicited_udp_superframe_is_dropped_once() {
    let mut h = Harness::default_flows();
    let mut frame = udp_superframe(ep(S4, 443), ep(C4, 4433), 1200, &payload());
    assert_eq!(
        frame_through(&mut h, WAN, &mut frame),
        Verdict::Drop(DropReason::AuthRecvAcceptBlocked)
    );
    assert_eq!(h.discards(DropReason::AuthRecvAcceptBlocked), 1);
    assert!(h.flows().is_empty());
}

#[test]
fn a_superframe_whose_udp_length_exceeds_its_bytes_is_malformed() {
    let mut h = Harness::default_flows();
    let mut frame = udp_superframe(ep(C4, 4433), ep(S4, 443), 1200, &payload());
    // Cut the last datagram off: the IP and UDP lengths now claim more than
    // the frame holds.
    frame.truncate(frame.len() - 500);
    assert!(matches!(
        frame_through(&mut h, LAN, &mut frame),
        Verdict::Drop(DropReason::Truncated | DropReason::MalformedTransport)
    ));
    assert!(h.flows().is_empty());
}

#[test]
fn a_frame_shorter_than_its_header_is_refused_before_the_engine() {
    let mut h = Harness::default_flows();
    let mut short = vec![0u8; HDR - 1];
    assert_eq!(
        process_frame(&mut h.engine, Instant::ZERO, LAN, HDR, &mut short),
        None
    );
    assert_eq!(h.engine.stats().ports[usize::from(LAN)].rx_packets, 0);
}
