//! Engine scenarios on a virtual clock: every flow rule of SPEC §2,
//! through `Engine::process` with crafted packets. The reauthorization
//! mechanics of §5 are in `engine/reauth.rs`; routing drops and the table
//! shared by workers, in `engine/gateway.rs`.

mod common;
#[path = "engine/gateway.rs"]
mod gateway;
#[path = "engine/reauth.rs"]
mod reauth;

use common::*;
use std::collections::HashMap;
use std::time::Duration;
use tunwall::engine::Verdict;
use tunwall::event::EventKind;
use tunwall::flow::{Direction, FlowConfig};
use tunwall::policy::Layer;
use tunwall::reason::{CloseReason, DropReason};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn short_timeouts() -> FlowConfig {
    let mut f = FlowConfig::with_max_flows(1024);
    f.udp_idle = secs(10);
    f.icmp_idle = secs(8);
    f.other_idle = secs(6);
    f.tcp_opening = secs(5);
    f.tcp_established = secs(100);
    f.tcp_closing = secs(7);
    f.tcp_time_wait = secs(3);
    f.tcp_closed = secs(2);
    f
}

#[test]
fn outbound_udp_creates_a_flow_the_reply_rides() {
    for (c, s) in [(C4, S4), (C6, S6)] {
        let mut h = Harness::default_flows();
        assert_eq!(
            h.out(udp(ep(c, 5353), ep(s, 53), b"q")),
            Verdict::Forward(WAN)
        );
        assert_eq!(
            h.inb(udp(ep(s, 53), ep(c, 5353), b"answer")),
            Verdict::Forward(LAN)
        );
        let f = h.only_flow();
        assert_eq!(f.direction, Direction::Outbound);
        assert_eq!(f.layer(), Layer::AuthConnect);
        assert_eq!((f.key.local_port, f.key.remote_port), (5353, 53));
        assert_eq!(f.out.0, 1);
        assert_eq!(f.inbound.0, 1);
        assert!(f.established, "non-TCP flows are established at once");
        assert_eq!(h.established(), vec![f.id]);
        // Unsolicited inbound UDP is refused at auth_recv_accept with a discard event.
        assert_eq!(
            h.inb(udp(ep(s, 9999), ep(c, 7), b"x")),
            Verdict::Drop(DropReason::AuthRecvAcceptBlocked)
        );
        let discard = h.events.iter().rev().find_map(|e| match &e.kind {
            EventKind::Discard { layer, reason, .. } => Some((*layer, *reason)),
            _ => None,
        });
        assert_eq!(
            discard,
            Some((
                Some(Layer::AuthRecvAccept),
                DropReason::AuthRecvAcceptBlocked
            ))
        );
        assert_eq!(h.flows().len(), 1);
    }
}

#[test]
fn tcp_is_established_only_after_the_handshake() {
    let mut h = Harness::default_flows();
    let conn = TcpConn::new(ep(C4, 40000), ep(S4, 80));
    assert_eq!(h.out(conn.syn()), Verdict::Forward(WAN));
    assert_eq!(h.created().len(), 1);
    assert_eq!(h.only_flow().state.as_str(), "syn_sent");
    assert!(h.established().is_empty());
    assert_eq!(h.inb(conn.syn_ack()), Verdict::Forward(LAN));
    assert_eq!(h.only_flow().state.as_str(), "syn_received");
    assert!(
        h.established().is_empty(),
        "the SYN-ACK alone does not establish"
    );
    assert_eq!(h.out(conn.ack()), Verdict::Forward(WAN));
    let f = h.only_flow();
    assert_eq!(f.state.as_str(), "established");
    assert!(f.established);
    assert_eq!(h.established(), vec![f.id]);
}

#[test]
fn retransmitted_syn_and_syn_ack_pass() {
    let mut h = Harness::default_flows();
    let conn = TcpConn::new(ep(C4, 40001), ep(S4, 80));
    h.out(conn.syn());
    assert_eq!(h.out(conn.syn()), Verdict::Forward(WAN));
    h.inb(conn.syn_ack());
    assert_eq!(h.inb(conn.syn_ack()), Verdict::Forward(LAN));
    assert_eq!(h.out(conn.ack()), Verdict::Forward(WAN));
    assert_eq!(h.created().len(), 1);
    assert_eq!(h.only_flow().state.as_str(), "established");
}

#[test]
fn fin_teardown_then_time_wait_expiry_closes_with_tcp_fin() {
    let mut h = Harness::new(short_timeouts());
    let mut conn = TcpConn::new(ep(C4, 40002), ep(S4, 443));
    conn.handshake(&mut h);
    let d = conn.client_data(100);
    assert_eq!(h.out(d), Verdict::Forward(WAN));
    let a = conn.server_ack();
    assert_eq!(h.inb(a), Verdict::Forward(LAN));
    let fin = conn.client_fin();
    h.out(fin);
    assert_eq!(h.only_flow().state.as_str(), "fin_wait");
    let fin = conn.server_fin();
    h.inb(fin);
    assert_eq!(h.only_flow().state.as_str(), "closing");
    let ack = conn.client_ack();
    h.out(ack);
    let f = h.only_flow();
    assert_eq!(f.state.as_str(), "time_wait");
    // A stray retransmitted ACK still passes in time_wait.
    assert_eq!(h.out(conn.client_ack()), Verdict::Forward(WAN));
    h.advance_ms(2_900);
    assert_eq!(h.flows().len(), 1);
    h.advance_ms(200);
    assert_eq!(h.closed(), vec![(f.id, CloseReason::TcpFin)]);
    assert!(h.flows().is_empty());
}

#[test]
fn in_window_rst_closes_and_expires_with_tcp_rst() {
    let mut h = Harness::new(short_timeouts());
    let mut conn = TcpConn::new(ep(C4, 40003), ep(S4, 443));
    conn.handshake(&mut h);
    assert_eq!(h.out(conn.client_rst()), Verdict::Forward(WAN));
    let f = h.only_flow();
    assert_eq!(f.state.as_str(), "closed");
    h.advance_ms(2_100);
    assert_eq!(h.closed(), vec![(f.id, CloseReason::TcpRst)]);
}

#[test]
fn a_blind_rst_outside_the_window_is_dropped() {
    let mut h = Harness::default_flows();
    let mut conn = TcpConn::new(ep(C4, 40004), ep(S4, 443));
    conn.handshake(&mut h);
    let blind = tcp(
        conn.server,
        conn.client,
        RST,
        conn.s_seq.wrapping_add(50_000_000),
        0,
        0,
        None,
        b"",
    );
    assert_eq!(h.inb(blind), Verdict::Drop(DropReason::TcpRstOutOfWindow));
    assert_eq!(h.only_flow().state.as_str(), "established");
}

#[test]
fn a_new_syn_during_time_wait_replaces_the_flow() {
    let mut h = Harness::new(short_timeouts());
    let mut conn = TcpConn::new(ep(C4, 40005), ep(S4, 80));
    conn.handshake(&mut h);
    conn.close(&mut h);
    let old = h.only_flow().id;
    let mut again = TcpConn::new(ep(C4, 40005), ep(S4, 80));
    again.c_seq = 77_000_000;
    assert_eq!(h.out(again.syn()), Verdict::Forward(WAN));
    assert_eq!(h.closed(), vec![(old, CloseReason::TcpFin)]);
    let new = h.only_flow();
    assert_ne!(new.id, old);
    assert_eq!(new.state.as_str(), "syn_sent");
}

#[test]
fn a_non_syn_segment_creates_no_flow_unless_loose_pickup() {
    let mut h = Harness::default_flows();
    let ack = tcp(ep(C4, 40006), ep(S4, 80), ACK, 5, 6, 500, None, b"mid");
    assert_eq!(h.out(ack.clone()), Verdict::Drop(DropReason::TcpNoFlow));
    let syn_ack = tcp(ep(S4, 80), ep(C4, 40006), SYN | ACK, 5, 6, 500, None, b"");
    assert_eq!(h.inb(syn_ack), Verdict::Drop(DropReason::TcpNoFlow));
    assert!(h.flows().is_empty());

    let mut f = FlowConfig::with_max_flows(64);
    f.tcp_loose_pickup = true;
    let mut h = Harness::new(f);
    assert_eq!(h.out(ack), Verdict::Forward(WAN));
    let flow = h.only_flow();
    assert_eq!(flow.state.as_str(), "established");
    assert!(flow.established);
    // Windows of a picked-up flow are unknown: a far-off segment still passes.
    let far = tcp(
        ep(S4, 80),
        ep(C4, 40006),
        ACK,
        3_000_000_000,
        9,
        500,
        None,
        b"x",
    );
    assert_eq!(h.inb(far), Verdict::Forward(LAN));
}

#[test]
fn out_of_window_segments_are_dropped_unless_tracking_is_off() {
    for tracking in [true, false] {
        let mut f = FlowConfig::with_max_flows(64);
        f.tcp_window_tracking = tracking;
        let mut h = Harness::new(f);
        let mut conn = TcpConn::new(ep(C4, 40007), ep(S4, 80));
        conn.handshake(&mut h);
        let far = tcp(
            conn.server,
            conn.client,
            ACK,
            conn.s_seq.wrapping_add(500_000_000),
            conn.c_seq,
            509,
            None,
            b"x",
        );
        let expected = if tracking {
            Verdict::Drop(DropReason::TcpOutOfWindow)
        } else {
            Verdict::Forward(LAN)
        };
        assert_eq!(h.inb(far), expected);
        // The flow is kept and in-window traffic still passes.
        let d = conn.client_data(10);
        assert_eq!(h.out(d), Verdict::Forward(WAN));
    }
}

#[test]
fn every_idle_timeout_ends_its_flow_just_after_not_before() {
    // (packet builder, inside→outside, timeout in seconds)
    type Setup = Box<dyn Fn(&mut Harness)>;
    let cases: Vec<(&str, Setup, u64)> = vec![
        (
            "udp",
            Box::new(|h| {
                assert_eq!(
                    h.out(udp(ep(C4, 1000), ep(S4, 53), b"q")),
                    Verdict::Forward(WAN)
                )
            }),
            10,
        ),
        (
            "icmp",
            Box::new(|h| assert_eq!(h.out(echo(C4, S4, true, 7, 1)), Verdict::Forward(WAN))),
            8,
        ),
        (
            "gre",
            Box::new(|h| assert_eq!(h.out(raw(C4, S4, 47)), Verdict::Forward(WAN))),
            6,
        ),
        (
            "tcp opening",
            Box::new(|h| {
                let c = TcpConn::new(ep(C4, 41000), ep(S4, 80));
                assert_eq!(h.out(c.syn()), Verdict::Forward(WAN));
            }),
            5,
        ),
        (
            "tcp established",
            Box::new(|h| {
                let mut c = TcpConn::new(ep(C4, 41001), ep(S4, 80));
                c.handshake(h);
            }),
            100,
        ),
        (
            "tcp fin_wait",
            Box::new(|h| {
                let mut c = TcpConn::new(ep(C4, 41002), ep(S4, 80));
                c.handshake(h);
                let fin = c.client_fin();
                h.out(fin);
            }),
            7,
        ),
    ];
    for (name, setup, timeout) in cases {
        let mut h = Harness::new(short_timeouts());
        setup(&mut h);
        let id = h.only_flow().id;
        h.advance_ms(timeout * 1000 - 100);
        assert_eq!(h.flows().len(), 1, "{name}: closed too early");
        h.advance_ms(200);
        assert_eq!(h.closed(), vec![(id, CloseReason::IdleTimeout)], "{name}");
    }
}

#[test]
fn packets_refresh_the_idle_timer() {
    let mut h = Harness::new(short_timeouts());
    h.out(udp(ep(C4, 1000), ep(S4, 53), b"q"));
    for _ in 0..5 {
        h.advance(secs(9));
        assert_eq!(
            h.inb(udp(ep(S4, 53), ep(C4, 1000), b"a")),
            Verdict::Forward(LAN)
        );
    }
    assert!(h.closed().is_empty());
    assert_eq!(h.only_flow().inbound.0, 5);
}

#[test]
fn the_adaptive_factor_follows_pfs_formula() {
    let mut f = FlowConfig::with_max_flows(100);
    f.adaptive_start = 10;
    f.adaptive_end = 30;
    f.udp_idle = secs(100);
    f.tcp_established = secs(1000);
    let mut h = Harness::new(f);
    assert_eq!(h.gw.adaptive_factor(), 1.0);
    let mut conn = TcpConn::new(ep(C4, 40010), ep(S4, 80));
    conn.handshake(&mut h);
    for port in 0..9 {
        h.out(udp(ep(C4, 2000 + port), ep(S4, 53), b"q"));
    }
    assert_eq!(h.gw.flows_active(), 10);
    assert_eq!(
        h.gw.adaptive_factor(),
        1.0,
        "at adaptive_start: no shrinking"
    );
    for port in 9..19 {
        h.out(udp(ep(C4, 2000 + port), ep(S4, 53), b"q"));
    }
    assert_eq!(h.gw.flows_active(), 20);
    assert_eq!(h.gw.adaptive_factor(), 0.5, "halfway");
    let flows = h.flows();
    let udp_flow = flows.iter().find(|f| f.key.protocol == 17).unwrap();
    assert_eq!(udp_flow.timeout, secs(50), "UDP idle timeout halves");
    let tcp_flow = flows.iter().find(|f| f.key.protocol == 6).unwrap();
    assert_eq!(
        tcp_flow.timeout,
        secs(1000),
        "TCP established never shrinks"
    );
    // At half the timeout the UDP flows go, the TCP flow stays.
    h.advance(secs(51));
    assert_eq!(h.gw.flows_active(), 1);
    for port in 0..29 {
        h.out(udp(ep(C4, 3000 + port), ep(S4, 53), b"q"));
    }
    assert_eq!(h.gw.flows_active(), 30);
    assert_eq!(h.gw.adaptive_factor(), 0.0, "at adaptive_end");
}

#[test]
fn a_full_table_evicts_expired_then_embryonic_never_established() {
    let mut f = FlowConfig::with_max_flows(3);
    f.adaptive_start = 100;
    f.adaptive_end = 200;
    f.udp_idle = secs(5);
    let mut h = Harness::new(f);
    // An established TCP flow, a UDP flow that will expire, an embryonic TCP flow.
    let mut est = TcpConn::new(ep(C4, 40020), ep(S4, 80));
    est.handshake(&mut h);
    h.out(udp(ep(C4, 1000), ep(S4, 53), b"q"));
    let udp_id = h.created()[1];
    h.advance_ms(1000);
    let emb = TcpConn::new(ep(C4, 40021), ep(S4, 80));
    h.out(emb.syn());
    let emb_id = h.created()[2];
    assert_eq!(h.gw.flows_active(), 3);
    // Expired UDP flow is found lazily when room is needed (no sweep ran yet).
    h.now = h.now + secs(5);
    assert_eq!(
        h.out(udp(ep(C4, 1001), ep(S4, 53), b"q")),
        Verdict::Forward(WAN)
    );
    assert!(h.closed().contains(&(udp_id, CloseReason::IdleTimeout)));
    assert_eq!(h.gw.flows_active(), 3);
    // Nothing expired: the oldest embryonic TCP flow makes room.
    let third = TcpConn::new(ep(C4, 40022), ep(S4, 80));
    assert_eq!(h.out(third.syn()), Verdict::Forward(WAN));
    assert!(h.closed().contains(&(emb_id, CloseReason::Evicted)));
    // Complete the third handshake: only established flows remain.
    assert_eq!(h.inb(third.syn_ack()), Verdict::Forward(LAN));
    assert_eq!(h.out(third.ack()), Verdict::Forward(WAN));
    // Now every flow is established (UDP flows are established at once) and
    // none has expired: nothing may go.
    assert_eq!(
        h.out(udp(ep(C4, 1002), ep(S4, 53), b"q")),
        Verdict::Drop(DropReason::FlowTableFull)
    );
    assert_eq!(h.gw.flows_active(), 3);
}

#[test]
fn established_flows_are_never_evicted() {
    let mut f = FlowConfig::with_max_flows(2);
    f.adaptive_start = 100;
    f.adaptive_end = 200;
    let mut h = Harness::new(f);
    for port in [40030, 40031] {
        let mut c = TcpConn::new(ep(C4, port), ep(S4, 80));
        c.handshake(&mut h);
    }
    assert_eq!(
        h.out(udp(ep(C4, 1000), ep(S4, 53), b"q")),
        Verdict::Drop(DropReason::FlowTableFull)
    );
    let syn = TcpConn::new(ep(C4, 40032), ep(S4, 80)).syn();
    assert_eq!(h.out(syn), Verdict::Drop(DropReason::FlowTableFull));
    assert_eq!(h.gw.flows_active(), 2);
    assert!(h.closed().is_empty());
}

#[test]
fn icmp_echo_pairs_request_and_reply_by_id_and_direction() {
    for (c, s) in [(C4, S4), (C6, S6)] {
        let mut h = Harness::default_flows();
        assert_eq!(h.out(echo(c, s, true, 7, 1)), Verdict::Forward(WAN));
        assert_eq!(h.inb(echo(s, c, false, 7, 1)), Verdict::Forward(LAN));
        let f = h.only_flow();
        let icmp = f.key.icmp().unwrap();
        assert_eq!(icmp.id, Some(7));
        assert_eq!((f.out.0, f.inbound.0), (1, 1));
        // Another id is another flow.
        assert_eq!(h.out(echo(c, s, true, 8, 1)), Verdict::Forward(WAN));
        assert_eq!(h.flows().len(), 2);
        // A request against the flow's direction does not ride it.
        assert_eq!(
            h.inb(echo(s, c, true, 7, 2)),
            Verdict::Drop(DropReason::AuthRecvAcceptBlocked)
        );
        // A reply with an unknown id creates nothing either.
        assert_eq!(
            h.inb(echo(s, c, false, 99, 1)),
            Verdict::Drop(DropReason::AuthRecvAcceptBlocked)
        );
    }
}

#[test]
fn related_icmp_errors_pass_without_refreshing_their_flow() {
    let mut h = Harness::new(short_timeouts());
    let probe = udp(ep(C4, 5000), ep(S4, 9), b"probe");
    h.out(probe.clone());
    h.advance(secs(4));
    let unreachable = icmp_error(S4, C4, 3, &probe);
    assert_eq!(h.inb(unreachable), Verdict::Forward(LAN));
    assert_eq!(h.engine.stats().related_icmp, 1);
    let f = h.only_flow();
    assert_eq!(
        h.now.saturating_since(f.last_seen),
        secs(4),
        "not refreshed"
    );
    assert_eq!(f.inbound.0, 0);
    // An error quoting nothing we know goes to icmp_error and is blocked.
    let unknown = icmp_error(S4, C4, 3, &udp(ep(C4, 5001), ep(S4, 9), b"x"));
    assert_eq!(h.inb(unknown), Verdict::Drop(DropReason::IcmpErrorBlocked));
    // IPv6 packet too big quoting a TCP segment of a live flow.
    let mut conn = TcpConn::new(ep(C6, 40040), ep(S6, 443));
    conn.handshake(&mut h);
    let big = conn.client_data(1400);
    assert_eq!(h.out(big.clone()), Verdict::Forward(WAN));
    assert_eq!(h.inb(icmp_error(S6, C6, 255, &big)), Verdict::Forward(LAN));
    assert_eq!(h.engine.stats().related_icmp, 2);
}

#[test]
fn fragments_follow_their_first_fragment() {
    for (c, s) in [(C4, S4), (C6, S6)] {
        let mut f = FlowConfig::with_max_flows(64);
        f.fragment_timeout = secs(2);
        let mut h = Harness::new(f);
        let big = udp(ep(c, 6000), ep(s, 7000), &[0x55; 3000]);
        let frags = fragments(&big, 1024, 4242);
        assert_eq!(frags.len(), 3);
        // A later fragment before its first one is an orphan.
        assert_eq!(
            h.out(frags[1].clone()),
            Verdict::Drop(DropReason::FragmentWithoutFirst)
        );
        // The first fragment is classified with its ports and creates the flow.
        assert_eq!(h.out(frags[0].clone()), Verdict::Forward(WAN));
        assert_eq!(h.only_flow().key.remote_port, 7000);
        // Later fragments follow, in any order.
        assert_eq!(h.out(frags[2].clone()), Verdict::Forward(WAN));
        assert_eq!(h.out(frags[1].clone()), Verdict::Forward(WAN));
        // After fragment_timeout they are orphans again.
        h.advance(secs(3));
        assert_eq!(
            h.out(frags[2].clone()),
            Verdict::Drop(DropReason::FragmentWithoutFirst)
        );
        // The fragments of a blocked first fragment are dropped too.
        let inbound = udp(ep(s, 7000), ep(c, 6001), &[0x66; 3000]);
        let frags = fragments(&inbound, 1024, 4343);
        assert_eq!(
            h.inb(frags[0].clone()),
            Verdict::Drop(DropReason::AuthRecvAcceptBlocked)
        );
        assert_eq!(
            h.inb(frags[1].clone()),
            Verdict::Drop(DropReason::FragmentOfDropped)
        );
    }
}

#[test]
fn multicast_state_admits_replies_from_anyone_for_four_seconds() {
    for group in ["239.1.2.3", "255.255.255.255"] {
        let mut h = Harness::default_flows();
        assert_eq!(
            h.out(udp(ep(C4, 5353), ep(group, 5353), b"who?")),
            Verdict::Forward(WAN)
        );
        let state = h.only_flow();
        assert_eq!(state.timeout, secs(4));
        // A unicast reply from any remote address is admitted, as a child.
        h.advance_ms(1000);
        assert_eq!(
            h.inb(udp(ep("198.18.2.77", 5353), ep(C4, 5353), b"me")),
            Verdict::Forward(LAN)
        );
        let child = h
            .flows()
            .into_iter()
            .find(|f| f.id != state.id)
            .expect("child flow");
        assert_eq!(child.parent_id, Some(state.id));
        // Inbound traffic does not refresh the state: it expires 4 s after the request.
        h.advance_ms(2000);
        assert_eq!(
            h.inb(udp(ep("198.18.2.78", 5353), ep(C4, 5353), b"me too")),
            Verdict::Forward(LAN)
        );
        h.advance_ms(1100);
        assert!(
            h.closed()
                .iter()
                .any(|(id, r)| *id == state.id && *r == CloseReason::IdleTimeout)
        );
        assert_eq!(
            h.inb(udp(ep("198.18.2.79", 5353), ep(C4, 5353), b"late")),
            Verdict::Drop(DropReason::AuthRecvAcceptBlocked)
        );
    }
    // Outbound traffic refreshes it.
    let mut h = Harness::default_flows();
    h.out(udp(ep(C4, 5353), ep("239.1.2.3", 5353), b"who?"));
    h.advance_ms(3000);
    h.out(udp(ep(C4, 5353), ep("239.1.2.3", 5353), b"who?"));
    h.advance_ms(3000);
    assert_eq!(
        h.inb(udp(ep("198.18.2.77", 5353), ep(C4, 5353), b"me")),
        Verdict::Forward(LAN)
    );
}

#[test]
fn every_created_flow_is_closed_exactly_once_at_shutdown() {
    let mut h = Harness::new(short_timeouts());
    let mut conn = TcpConn::new(ep(C4, 40050), ep(S4, 80));
    conn.handshake(&mut h);
    h.out(udp(ep(C4, 1000), ep(S4, 53), b"q"));
    h.out(echo(C4, S4, true, 3, 1));
    h.advance(secs(9));
    h.out(udp(ep(C4, 1001), ep(S4, 53), b"q"));
    h.engine.close_all(h.now, true);
    h.events.extend(h.engine.drain_events());
    let mut closed: HashMap<u64, Vec<CloseReason>> = HashMap::new();
    for (id, reason) in h.closed() {
        closed.entry(id).or_default().push(reason);
    }
    for id in h.created() {
        assert_eq!(closed.get(&id).map(Vec::len), Some(1), "flow {id}");
    }
    assert_eq!(closed.len(), h.created().len());
    assert!(h.flows().is_empty());
    assert_eq!(h.gw.flows_active(), 0);
}
