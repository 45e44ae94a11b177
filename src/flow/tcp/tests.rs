//! The TCP tracker, segment by segment, from SPEC §2.

use super::*;
use crate::packet::tcp_flags::{ACK, FIN, RST, SYN};

fn seg(flags: u8, seq: u32, ack: u32, window: u16, wscale: Option<u8>, len: u32) -> TcpSegment {
    TcpSegment {
        seq,
        ack,
        flags,
        window,
        wscale,
        payload_len: len,
    }
}

const C: u32 = 1000;
const S: u32 = 500_000;

/// A tracker through the handshake, both sides with window scale 7.
fn established() -> TcpTracker {
    let mut t = TcpTracker::from_syn(&seg(SYN, C, 0, 64240, Some(7), 0));
    t.track(false, &seg(SYN | ACK, S, C + 1, 65160, Some(7), 0), true)
        .unwrap();
    t.track(true, &seg(ACK, C + 1, S + 1, 502, None, 0), true)
        .unwrap();
    t
}

#[test]
fn the_handshake_completes_only_with_the_initiators_ack() {
    let mut t = TcpTracker::from_syn(&seg(SYN, C, 0, 64240, Some(7), 0));
    assert_eq!(t.state(), TcpState::SynSent);
    assert!(!t.handshake_done());
    assert_eq!(
        t.track(false, &seg(SYN | ACK, S, C + 1, 65160, Some(7), 0), true),
        Ok(TcpState::SynReceived)
    );
    assert!(!t.handshake_done());
    assert_eq!(
        t.track(true, &seg(ACK, C + 1, S + 1, 502, None, 0), true),
        Ok(TcpState::Established)
    );
    assert!(t.handshake_done());
}

#[test]
fn retransmitted_syn_and_syn_ack_are_accepted() {
    let mut t = TcpTracker::from_syn(&seg(SYN, C, 0, 64240, Some(7), 0));
    assert_eq!(
        t.track(true, &seg(SYN, C, 0, 64240, Some(7), 0), true),
        Ok(TcpState::SynSent)
    );
    let syn_ack = seg(SYN | ACK, S, C + 1, 65160, Some(7), 0);
    assert_eq!(t.track(false, &syn_ack, true), Ok(TcpState::SynReceived));
    assert_eq!(t.track(false, &syn_ack, true), Ok(TcpState::SynReceived));
    assert_eq!(
        t.track(true, &seg(SYN, C, 0, 64240, Some(7), 0), true),
        Ok(TcpState::SynReceived)
    );
    assert_eq!(
        t.track(true, &seg(ACK, C + 1, S + 1, 502, None, 0), true),
        Ok(TcpState::Established)
    );
}

#[test]
fn a_new_isn_before_any_answer_restarts_tracking() {
    let mut t = TcpTracker::from_syn(&seg(SYN, C, 0, 64240, Some(7), 0));
    let other = 3_000_000_000;
    assert_eq!(
        t.track(true, &seg(SYN, other, 0, 64240, Some(7), 0), true),
        Ok(TcpState::SynSent)
    );
    // The answer to the new ISN completes the handshake.
    assert_eq!(
        t.track(
            false,
            &seg(SYN | ACK, S, other + 1, 65160, Some(7), 0),
            true
        ),
        Ok(TcpState::SynReceived)
    );
    assert_eq!(
        t.track(true, &seg(ACK, other + 1, S + 1, 502, None, 0), true),
        Ok(TcpState::Established)
    );
}

#[test]
fn simultaneous_open_reaches_established() {
    let mut t = TcpTracker::from_syn(&seg(SYN, C, 0, 64240, Some(7), 0));
    // The other side's SYN crosses ours.
    assert!(
        t.track(false, &seg(SYN, S, 0, 65160, Some(7), 0), true)
            .is_ok()
    );
    assert!(!t.handshake_done());
    assert!(
        t.track(true, &seg(SYN | ACK, C, S + 1, 64240, Some(7), 0), true)
            .is_ok()
    );
    assert!(
        t.track(false, &seg(SYN | ACK, S, C + 1, 65160, Some(7), 0), true)
            .is_ok()
    );
    assert!(t.handshake_done());
    assert_eq!(t.state(), TcpState::Established);
}

#[test]
fn data_within_the_windows_passes_and_far_data_does_not() {
    let mut t = established();
    // The server's SYN-ACK window (65160, unscaled in a SYN) bounds the client's first data.
    assert!(
        t.track(true, &seg(ACK, C + 1, S + 1, 502, None, 1400), true)
            .is_ok()
    );
    assert_eq!(
        t.track(
            true,
            &seg(ACK, C + 1 + 1400 + 100_000, S + 1, 502, None, 1400),
            true
        ),
        Err(DropReason::TcpOutOfWindow),
        "beyond what the server allowed"
    );
    assert_eq!(
        t.track(
            false,
            &seg(
                ACK,
                (S + 1).wrapping_sub(20_000_000),
                C + 1401,
                509,
                None,
                10
            ),
            true
        ),
        Err(DropReason::TcpOutOfWindow),
        "more than a (scaled) maximum window behind"
    );
    // Rejections change nothing: the next in-window segment passes.
    let before = t;
    assert!(
        t.track(
            true,
            &seg(ACK, C + 1 + 1400 + 100_000, S + 1, 502, None, 1400),
            true
        )
        .is_err()
    );
    assert_eq!(t, before);
    assert!(
        t.track(false, &seg(ACK, S + 1, C + 1401, 509, None, 0), true)
            .is_ok()
    );
    // Without enforcement the far segment is accepted.
    let mut loose = established();
    assert!(
        loose
            .track(
                true,
                &seg(ACK, C + 1 + 100_000_000, S + 1, 502, None, 10),
                false
            )
            .is_ok()
    );
}

#[test]
fn window_scaling_needs_the_option_on_both_syns() {
    // Both SYNs scale by 7: the server's ACK with window 1000 allows 128 000 bytes.
    let mut t = established();
    assert!(
        t.track(false, &seg(ACK, S + 1, C + 1, 1000, None, 0), true)
            .is_ok()
    );
    assert!(
        t.track(true, &seg(ACK, C + 1, S + 1, 502, None, 100_000), true)
            .is_ok()
    );
    // Only the client offered scaling: windows are unscaled, 1000 bytes only.
    let mut t = TcpTracker::from_syn(&seg(SYN, C, 0, 64240, Some(7), 0));
    t.track(false, &seg(SYN | ACK, S, C + 1, 1000, None, 0), true)
        .unwrap();
    t.track(true, &seg(ACK, C + 1, S + 1, 502, None, 0), true)
        .unwrap();
    t.track(false, &seg(ACK, S + 1, C + 1, 1000, None, 0), true)
        .unwrap();
    assert_eq!(
        t.track(true, &seg(ACK, C + 1, S + 1, 502, None, 100_000), true),
        Err(DropReason::TcpOutOfWindow)
    );
}

#[test]
fn fin_teardown_walks_through_the_closing_states() {
    let mut t = established();
    assert_eq!(
        t.track(true, &seg(FIN | ACK, C + 1, S + 1, 502, None, 0), true),
        Ok(TcpState::FinWait)
    );
    assert_eq!(
        t.track(false, &seg(ACK, S + 1, C + 2, 509, None, 0), true),
        Ok(TcpState::FinWait)
    );
    assert_eq!(
        t.track(false, &seg(FIN | ACK, S + 1, C + 2, 509, None, 0), true),
        Ok(TcpState::Closing)
    );
    assert_eq!(
        t.track(true, &seg(ACK, C + 2, S + 2, 502, None, 0), true),
        Ok(TcpState::TimeWait)
    );
}

#[test]
fn rst_must_be_in_the_window() {
    let mut t = established();
    assert_eq!(
        t.track(false, &seg(RST, S + 1 + 50_000_000, 0, 0, None, 0), true),
        Err(DropReason::TcpRstOutOfWindow)
    );
    assert_eq!(t.state(), TcpState::Established);
    assert_eq!(
        t.track(false, &seg(RST, S + 1, 0, 0, None, 0), true),
        Ok(TcpState::Closed)
    );
    // Stray segments of the connection after the RST still pass, but the
    // RST does not switch window tracking off (issue 8): a segment far out
    // of the window is still dropped.
    assert!(
        t.track(true, &seg(ACK, C + 1, S + 1, 502, None, 5), true)
            .is_ok()
    );
    assert_eq!(
        t.track(
            true,
            &seg(ACK, C + 1 + 9_999_999, S + 1, 502, None, 5),
            true
        ),
        Err(DropReason::TcpOutOfWindow)
    );
}

#[test]
fn a_refused_connection_closes_on_the_rst_ack() {
    let mut t = TcpTracker::from_syn(&seg(SYN, C, 0, 64240, None, 0));
    assert_eq!(
        t.track(false, &seg(RST | ACK, 0, C + 1, 0, None, 0), true),
        Ok(TcpState::Closed)
    );
    let mut t = TcpTracker::from_syn(&seg(SYN, C, 0, 64240, None, 0));
    assert_eq!(
        t.track(false, &seg(RST | ACK, 0, C + 77, 0, None, 0), true),
        Err(DropReason::TcpRstOutOfWindow)
    );
    assert_eq!(
        t.track(false, &seg(RST, 0, 0, 0, None, 0), true),
        Err(DropReason::TcpRstOutOfWindow)
    );
    assert_eq!(t.state(), TcpState::SynSent);
}

#[test]
fn impossible_flag_combinations_are_dropped() {
    let mut t = established();
    for flags in [SYN | RST, SYN | FIN, 0] {
        assert_eq!(
            t.track(true, &seg(flags, C + 1, S + 1, 502, None, 0), true),
            Err(DropReason::TcpBadFlags)
        );
    }
}

#[test]
fn the_responders_first_segment_must_answer_the_syn() {
    let mut t = TcpTracker::from_syn(&seg(SYN, C, 0, 64240, None, 0));
    assert_eq!(
        t.track(false, &seg(ACK, S, C + 1, 509, None, 0), true),
        Err(DropReason::TcpInvalidState)
    );
}

#[test]
fn a_picked_up_flow_is_established_and_never_enforced() {
    let mut t = TcpTracker::picked_up(&seg(ACK, C, S, 502, None, 100));
    assert_eq!(t.state(), TcpState::Established);
    assert!(t.handshake_done());
    assert!(
        t.track(false, &seg(ACK, S + 3_000_000_000, C, 509, None, 10), true)
            .is_ok()
    );
    assert!(
        t.track(true, &seg(ACK, C + 2_000_000_000, S, 509, None, 10), true)
            .is_ok()
    );
}

#[test]
fn sequence_numbers_wrap() {
    let c = u32::MAX - 100;
    let mut t = TcpTracker::from_syn(&seg(SYN, c, 0, 64240, Some(7), 0));
    t.track(
        false,
        &seg(SYN | ACK, S, c.wrapping_add(1), 65160, Some(7), 0),
        true,
    )
    .unwrap();
    t.track(
        true,
        &seg(ACK, c.wrapping_add(1), S + 1, 502, None, 0),
        true,
    )
    .unwrap();
    let mut seq = c.wrapping_add(1);
    for _ in 0..10 {
        assert!(
            t.track(true, &seg(ACK, seq, S + 1, 502, None, 1000), true)
                .is_ok(),
            "seq {seq}"
        );
        seq = seq.wrapping_add(1000);
        t.track(false, &seg(ACK, S + 1, seq, 509, None, 0), true)
            .unwrap();
    }
    assert!(seq < 10_000, "crossed the wrap");
    assert_eq!(t.state(), TcpState::Established);
}

#[test]
fn rst_in_already_acknowledged_space_is_dropped_and_changes_nothing() {
    let mut t = established();
    // The responder has sent S+1..S+1001 and the initiator acknowledged it.
    t.track(false, &seg(ACK, S + 1, C + 1, 509, None, 1000), true)
        .expect("data");
    t.track(true, &seg(ACK, C + 1, S + 1001, 502, None, 0), true)
        .expect("ack");
    let before = t;
    // pf's loose window accepted this (a blind attacker's guess behind
    // the next expected sequence number); RFC 5961 does not.
    assert_eq!(
        t.track(false, &seg(RST, S + 500, 0, 0, None, 0), true),
        Err(DropReason::TcpRstOutOfWindow)
    );
    assert_eq!(t, before);
    assert_eq!(t.state(), TcpState::Established);
    // At the next expected sequence number it is accepted.
    assert_eq!(
        t.track(false, &seg(RST, S + 1001, 0, 0, None, 0), true),
        Ok(TcpState::Closed)
    );
}
