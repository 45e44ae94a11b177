//! HA replication (SPEC §15) on the virtual clock: two gateways, each with
//! its replicator, joined by an in-memory wire that can lose datagrams or
//! carry another key's. The standby holds every flow of the active node
//! (marked synced, no events), follows its changes, refreshes and
//! closures, takes a flow over with a `failover` reauthorization and loose
//! windows until each direction has been seen, and a node that rejoins
//! gets the whole table again.

mod common;

use common::*;
use std::time::Duration;
use tunwall::engine::Verdict;
use tunwall::event::{EventKind, ReauthTrigger};
use tunwall::flow::{FlowConfig, TcpState};
use tunwall::reason::DropReason;
use tunwall::sync::replicator::Replicator;
use tunwall::sync::{NODE_SHIFT, SyncConfig};
use tunwall::testkit::pair::*;

fn config(listen: &str, peer: &str, key: u8) -> SyncConfig {
    sync_config(listen, peer, key)
}

fn flows() -> FlowConfig {
    pair_flows()
}

#[test]
fn the_standby_holds_the_active_nodes_flows_and_takes_them_over() {
    let mut p = Pair::new();
    p.settle();
    assert_eq!(p.a.status()["state"], "up");
    let mut conn = TcpConn::new(ep(C4, 40000), ep(S4, 443));
    conn.handshake(&mut p.a.h);
    let data = conn.client_data(100);
    assert_eq!(p.a.h.out(data), Verdict::Forward(WAN));
    p.step(10);
    // Creations go at once (one round), as the engine exported them.
    let on_b = p.b.h.only_flow();
    let on_a = p.a.h.only_flow();
    assert_eq!(on_b.id, on_a.id);
    assert_eq!(on_a.id >> NODE_SHIFT, 1, "node 1's ids");
    assert!(on_b.synced && !on_a.synced);
    assert!(on_b.established);
    assert_eq!(
        on_b.state,
        tunwall::flow::FlowState::Tcp(TcpState::Established)
    );
    assert!(
        p.b.h.events.is_empty(),
        "nothing is indicated for a replicated flow"
    );
    assert_eq!(p.b.h.gw.flows_active(), 1, "it counts toward max_flows");

    // The active node forwards 400 kB more that never reach the standby
    // (no rounds: the sync is behind), then dies.
    for _ in 0..400 {
        assert_eq!(p.a.h.inb(conn.server_data(1000)), Verdict::Forward(LAN));
        assert_eq!(p.a.h.out(conn.client_ack()), Verdict::Forward(WAN));
    }
    p.b.h.advance_ms(3000);
    // The standby's record of the windows is stale: checked strictly, the
    // server's next segment would be far beyond them. It is checked
    // loosely until each direction has been seen here.
    let reply = conn.server_data(200);
    assert_eq!(p.b.h.inb(reply), Verdict::Forward(LAN));
    let reauth: Vec<_> =
        p.b.h
            .events
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::FlowReauthorized { flow, trigger, .. } => Some((flow.id, *trigger)),
                _ => None,
            })
            .collect();
    assert_eq!(reauth, [(on_a.id, ReauthTrigger::Failover)]);
    assert!(!p.b.h.only_flow().synced);
    assert!(p.b.h.created().is_empty());
    assert_eq!(p.b.h.out(conn.client_ack()), Verdict::Forward(WAN));
    assert_eq!(p.b.h.inb(conn.server_data(100)), Verdict::Forward(LAN));
    // Both directions seen here: strict again.
    let mut far = TcpConn::new(ep(C4, 40000), ep(S4, 443));
    far.s_seq = conn.s_seq.wrapping_add(900_000_000);
    far.c_seq = conn.c_seq;
    assert_eq!(
        p.b.h.inb(far.server_data(10)),
        Verdict::Drop(DropReason::TcpOutOfWindow)
    );
    assert_eq!(p.b.h.engine.stats().reauthorizations, 1);
}

#[test]
fn changes_refreshes_and_closures_follow_and_lost_datagrams_are_recovered() {
    let mut p = Pair::new();
    // Every third datagram is lost, both ways.
    p.lose = Box::new(|n| n % 3 == 0);
    p.settle();
    let mut conn = TcpConn::new(ep(C4, 40001), ep(S4, 80));
    assert_eq!(p.a.h.out(conn.syn()), Verdict::Forward(WAN));
    p.settle();
    let f = p.b.h.only_flow();
    assert_eq!(f.state, tunwall::flow::FlowState::Tcp(TcpState::SynSent));
    assert!(!f.established);
    assert_eq!(p.a.h.inb(conn.syn_ack()), Verdict::Forward(LAN));
    assert_eq!(p.a.h.out(conn.ack()), Verdict::Forward(WAN));
    conn.c_seq += 1;
    conn.s_seq += 1;
    p.settle();
    assert!(p.b.h.only_flow().established, "establishment replicated");

    // Refreshes: a UDP flow kept alive on A stays alive on B, whose own
    // timer would otherwise end it.
    let (c, s) = (ep(C4, 5353), ep(S4, 53));
    assert_eq!(p.a.h.out(udp(c, s, b"q")), Verdict::Forward(WAN));
    for _ in 0..10 {
        p.step(4000);
        assert_eq!(p.a.h.out(udp(c, s, b"q")), Verdict::Forward(WAN));
    }
    p.settle();
    let udp_on_b =
        p.b.h
            .flows()
            .into_iter()
            .find(|f| f.key.protocol == 17)
            .expect("the UDP flow outlived its idle timeout on B");
    assert!(p.b.h.now.saturating_since(udp_on_b.last_seen) < Duration::from_millis(1500));

    // Closure: A's flow ends; B removes it without an event.
    let fin = conn.client_fin();
    assert_eq!(p.a.h.out(fin), Verdict::Forward(WAN));
    let rst = tcp(
        conn.server,
        conn.client,
        RST | ACK,
        conn.s_seq,
        conn.c_seq,
        0,
        None,
        b"",
    );
    assert_eq!(p.a.h.inb(rst), Verdict::Forward(LAN));
    p.a.h.advance(Duration::from_secs(120));
    assert!(p.a.h.flows().iter().all(|f| f.key.protocol != 6));
    p.settle();
    assert!(p.b.h.flows().iter().all(|f| f.key.protocol != 6));
    assert!(p.b.h.closed().is_empty());
    let st = p.a.status();
    assert!(st["retransmitted"].as_u64().unwrap() > 0, "{st}");
    assert_eq!(st["queued"], 0, "{st}");
}

#[test]
fn a_node_that_rejoins_receives_the_whole_table_and_a_wrong_key_is_refused() {
    let mut p = Pair::new();
    for port in 0..900u16 {
        assert_eq!(
            p.a.h.out(udp(ep(C4, 10_000 + port), ep(S4, 53), b"q")),
            Verdict::Forward(WAN)
        );
    }
    // B restarts (a new session) with an empty table.
    p.b = Node::new(B, A, 7, 2, flows());
    p.b.h.now = p.a.h.now;
    let mut seen = Vec::new();
    for _ in 0..10 {
        p.step(10);
        seen.push(p.b.status()["state"].as_str().unwrap().to_string());
    }
    assert!(seen.contains(&"resyncing".to_string()), "{seen:?}");
    p.settle();
    assert_eq!(p.b.h.gw.flows_active(), 900);
    assert_eq!(p.b.status()["bulk_received"], 1);
    assert_eq!(p.b.status()["state"], "up");

    // A third party with another key: every datagram refused and counted.
    let mut stranger = Node::new(A, B, 8, 9, flows());
    stranger.h.now = p.b.h.now;
    assert_eq!(
        stranger.h.out(udp(ep(C4, 999), ep(S4, 53), b"q")),
        Verdict::Forward(WAN)
    );
    let before = p.b.h.gw.flows_active();
    for _ in 0..5 {
        stranger.h.advance_ms(300);
        let now = p.b.h.now;
        let b = &mut p.b.r;
        stranger
            .r
            .round(stranger.h.now, |d| b.receive(now, &mut d.to_vec()));
    }
    assert_eq!(p.b.h.gw.flows_active(), before);
    let st = p.b.status();
    assert!(
        st["rejected_by"]["unauthenticated"].as_u64().unwrap() >= 5,
        "{st}"
    );
}

#[test]
fn a_dead_peer_never_grows_the_queue() {
    // Flow churn: every flow lives a second, so creations and closures
    // keep coming while the peer never answers.
    let churn = FlowConfig {
        udp_idle: Duration::from_secs(1),
        ..FlowConfig::with_max_flows(2048)
    };
    let mut a = Node::new(A, B, 7, 1, churn);
    let limit = a.status()["queue_limit"].as_u64().unwrap();
    for round in 0..200u32 {
        for i in 0..100u32 {
            let port = (round * 100 + i) as u16;
            let src = format!("198.18.1.{}", 1 + (round % 200));
            a.h.out(udp(ep(&src, port), ep(S4, 53), b"q"));
        }
        a.h.advance_ms(100);
        a.r.round(a.h.now, |_| {});
    }
    let st = a.status();
    assert_eq!(st["state"], "down");
    assert!(st["queued"].as_u64().unwrap() <= limit, "{st}");
    assert!(st["overflowed"].as_u64().unwrap() > 0, "{st}");
}

#[test]
fn replicated_flows_count_toward_max_flows() {
    let mut a = Node::new(A, B, 7, 1, FlowConfig::with_max_flows(1024));
    let mut b = Node::new(B, A, 7, 1, FlowConfig::with_max_flows(256));
    for port in 0..400u16 {
        a.h.out(udp(ep(C4, 20_000 + port), ep(S4, 53), b"q"));
    }
    for _ in 0..40 {
        for n in [&mut a, &mut b] {
            n.h.advance_ms(50);
        }
        let mut to_b = Vec::new();
        let mut to_a = Vec::new();
        a.r.round(a.h.now, |d| to_b.push(d.to_vec()));
        b.r.round(b.h.now, |d| to_a.push(d.to_vec()));
        to_b.iter_mut().for_each(|d| b.r.receive(b.h.now, d));
        to_a.iter_mut().for_each(|d| a.r.receive(a.h.now, d));
    }
    assert_eq!(b.h.gw.flows_active(), 256);
    assert!(b.status()["refused"].as_u64().unwrap() >= 144);
    // B's own traffic finds the table full like any other.
    assert_eq!(
        b.h.out(udp(ep(C4, 1), ep(S4, 53), b"q")),
        Verdict::Drop(DropReason::FlowTableFull)
    );
}

#[test]
fn a_peers_older_copy_of_a_flow_seen_here_does_not_replace_it() {
    let mut a = Node::new(A, B, 7, 1, flows());
    a.h.now = tunwall::time::Instant::from_secs(100);
    assert_eq!(
        a.h.out(udp(ep(C4, 7000), ep(S4, 53), b"q")),
        Verdict::Forward(WAN)
    );
    let record = |h: &Harness, at: tunwall::time::Instant| {
        let shard = h.gw.table().lock_shard(0);
        let (slot, entry) = shard.iter().next().expect("the flow");
        let mut out = Vec::new();
        tunwall::flow::record::encode(entry, shard.parent(slot), 0, at, &mut out);
        out
    };
    // The peer's copy, taken when the flow had been idle 2 s (the echo of
    // a bulk resync): this node saw the flow more recently.
    let echo = record(&a.h, a.h.now + Duration::from_secs(2));
    assert_eq!(
        a.h.gw
            .apply_synced(a.h.now, &echo, None, &mut Default::default()),
        Ok(tunwall::engine::Applied::Kept)
    );
    assert!(!a.h.only_flow().synced);
    // A copy fresher than this node's (the peer forwarded the flow since):
    // taken over, and marked synced until a packet is seen here again.
    a.h.advance_ms(5000);
    let fresher = record(&a.h, a.h.now - Duration::from_secs(4));
    assert_eq!(
        a.h.gw
            .apply_synced(a.h.now, &fresher, None, &mut Default::default()),
        Ok(tunwall::engine::Applied::Updated)
    );
    assert!(a.h.only_flow().synced);
}

/// Replication bandwidth (docs/benchmarks.md): 1000 TCP connections
/// opened, used and closed, and 1000 one-packet UDP flows that expire, on
/// the active node; the bytes it sent the standby per connection.
#[test]
fn replication_bytes_per_flow() {
    let churn = FlowConfig {
        udp_idle: Duration::from_secs(2),
        ..FlowConfig::with_max_flows(4096)
    };
    let mut p = Pair::of(
        Node::new(A, B, 7, 1, churn.clone()),
        Node::new(B, A, 7, 1, churn),
    );
    let (tcp, udp_bytes) = replication_bytes(&mut p, C4, C4);
    assert_eq!(p.b.h.gw.flows_active(), 0, "every closure replicated");
    eprintln!("replication: {tcp} bytes per TCP connection, {udp_bytes} bytes per UDP flow");
    assert!(tcp < 1500 && udp_bytes < 600);
}

/// A node restored from a state file, or an upgrade's carried table (SPEC
/// §13), as the daemon does it: its node set, the table restored, then
/// replication on.
fn restored_node(
    listen: &str,
    peer: &str,
    session: u64,
    bytes: &[u8],
    now: tunwall::time::Instant,
) -> Node {
    let mut h = Harness::new(flows());
    h.now = now;
    h.gw.set_sync_node(config(listen, peer, 7).node_ids().0);
    let container = tunwall::state::Container::parse(bytes).expect("container");
    h.gw.restore(now, &container, Duration::ZERO)
        .expect("restore");
    let r = Replicator::new(&config(listen, peer, 7), h.gw.clone(), session).unwrap();
    Node { h, r }
}

#[test]
fn a_restored_state_file_keeps_the_ids_in_this_nodes_range() {
    let mut p = Pair::new();
    p.settle();
    // Node 1 (A) has flows of its own and holds node 2's (B's).
    assert_eq!(
        p.a.h.out(udp(ep(C4, 5000), ep(S4, 53), b"q")),
        Verdict::Forward(WAN)
    );
    assert_eq!(
        p.b.h.out(udp(ep(C4, 6000), ep(S4, 53), b"q")),
        Verdict::Forward(WAN)
    );
    p.settle();
    let held: Vec<u64> = p.a.h.flows().iter().map(|f| f.id >> NODE_SHIFT).collect();
    assert_eq!(held.len(), 2);
    assert!(held.contains(&1) && held.contains(&2), "{held:?}");

    // A stops with a state file and starts again: its new flows' ids stay
    // node 1's, above every id it handed out before, and never reach
    // into node 2's.
    let bytes = p.a.h.snapshot();
    let old_max =
        p.a.h
            .flows()
            .iter()
            .map(|f| f.id)
            .filter(|id| id >> NODE_SHIFT == 1)
            .max()
            .unwrap();
    let now = p.a.h.now;
    p.a = restored_node(A, B, 2, &bytes, now);
    assert_eq!(p.a.h.gw.flows_active(), 2);
    assert_eq!(
        p.a.h.out(udp(ep(C4, 5001), ep(S4, 53), b"q")),
        Verdict::Forward(WAN)
    );
    let new =
        p.a.h
            .flows()
            .into_iter()
            .find(|f| f.key.local_port == 5001 || f.key.remote_port == 5001)
            .expect("the new flow");
    assert_eq!(
        new.id >> NODE_SHIFT,
        1,
        "id {:#x} out of node 1's range",
        new.id
    );
    assert!(new.id > old_max, "an id handed out before");

    // B, restored from a file written without [sync] (ids from 1), hands
    // out node 2's ids.
    let mut plain = Harness::new(flows());
    plain.now = now;
    assert_eq!(
        plain.out(udp(ep(C4, 7000), ep(S4, 53), b"q")),
        Verdict::Forward(WAN)
    );
    let mut b = restored_node(B, A, 3, &plain.snapshot(), now);
    assert_eq!(
        b.h.out(udp(ep(C4, 7001), ep(S4, 53), b"q")),
        Verdict::Forward(WAN)
    );
    let ids: Vec<u64> = b.h.flows().iter().map(|f| f.id >> NODE_SHIFT).collect();
    assert!(ids.contains(&0) && ids.contains(&2), "{ids:?}");
}
