//! An HA pair (SPEC §15) on one virtual clock: two harnesses, each with
//! its replicator, joined by an in-memory wire that can lose datagrams.

use super::harness::Harness;
use crate::flow::FlowConfig;
use crate::sync::SyncConfig;
use crate::sync::replicator::Replicator;
use serde_json::Value;
use std::net::SocketAddr;

/// Node A's sync endpoint (node 1: the lower one).
pub const A: &str = "198.18.9.1:7946";
/// Node B's (node 2).
pub const B: &str = "198.18.9.2:7946";

/// `[sync]` of a node at `listen` with `peer`, the key all `key` bytes.
pub fn sync_config(listen: &str, peer: &str, key: u8) -> SyncConfig {
    SyncConfig {
        listen: listen.parse::<SocketAddr>().expect("listen"),
        peer: peer.parse().expect("peer"),
        key_file: "sync.key".into(),
        key: [key; 32],
        key_shared: false,
    }
}

/// The pair's default flow settings.
pub fn pair_flows() -> FlowConfig {
    FlowConfig::with_max_flows(1024)
}

/// A node: a harness (gateway, engine, virtual clock) and its replicator.
pub struct Node {
    pub h: Harness,
    pub r: Replicator,
}

impl Node {
    pub fn new(listen: &str, peer: &str, key: u8, session: u64, flows: FlowConfig) -> Node {
        Node::of(Harness::new(flows), listen, peer, key, session)
    }

    /// Replication turned on for harness `h`.
    pub fn of(h: Harness, listen: &str, peer: &str, key: u8, session: u64) -> Node {
        let r = Replicator::new(&sync_config(listen, peer, key), h.gw.clone(), session)
            .expect("replicator");
        Node { h, r }
    }

    pub fn status(&self) -> Value {
        self.r.status(self.h.now)
    }
}

/// The pair, on one clock.
pub struct Pair {
    pub a: Node,
    pub b: Node,
    /// Drops a datagram when it returns true (argument: a running count).
    pub lose: Box<dyn FnMut(u64) -> bool>,
    pub sent: u64,
}

impl Pair {
    /// Nodes A and B with the same key, [`pair_flows`].
    pub fn new() -> Pair {
        Pair::of(
            Node::new(A, B, 7, 1, pair_flows()),
            Node::new(B, A, 7, 1, pair_flows()),
        )
    }

    /// `a` and `b`, on `a`'s clock.
    pub fn of(a: Node, mut b: Node) -> Pair {
        b.h.now = a.h.now;
        Pair {
            a,
            b,
            lose: Box::new(|_| false),
            sent: 0,
        }
    }

    /// One round on both nodes, moving the datagrams across, `ms` later.
    pub fn step(&mut self, ms: u64) {
        for n in [&mut self.a, &mut self.b] {
            n.h.advance_ms(ms);
        }
        let mut to_b = Vec::new();
        let mut to_a = Vec::new();
        self.a.r.round(self.a.h.now, |d| to_b.push(d.to_vec()));
        self.b.r.round(self.b.h.now, |d| to_a.push(d.to_vec()));
        for mut d in to_b {
            self.sent += 1;
            if !(self.lose)(self.sent) {
                self.b.r.receive(self.b.h.now, &mut d);
            }
        }
        for mut d in to_a {
            self.sent += 1;
            if !(self.lose)(self.sent) {
                self.a.r.receive(self.a.h.now, &mut d);
            }
        }
    }

    /// A second of rounds.
    pub fn settle(&mut self) {
        for _ in 0..20 {
            self.step(50);
        }
    }

    /// Rounds until both send queues are empty (at most a minute).
    pub fn drain(&mut self) {
        for _ in 0..60 {
            self.settle();
            if self.a.status()["queued"] == 0 && self.b.status()["queued"] == 0 {
                return;
            }
        }
    }
}

impl Default for Pair {
    fn default() -> Self {
        Pair::new()
    }
}

/// The replication bandwidth workload (docs/ha.md): on `p.a`, 1000 TCP
/// connections opened, used and closed, then 1000 one-packet UDP flows
/// that expire, from `inside` (an address of the inside); `outside` is how
/// the servers see it (the same address, or a masquerade's, which keeps
/// the ports). Returns the bytes A sent B per TCP connection and per UDP
/// flow.
pub fn replication_bytes(p: &mut Pair, inside: &str, outside: &str) -> (u64, u64) {
    use super::harness::{S4, TcpConn};
    use super::packets::{ep, udp};
    use std::time::Duration;
    p.settle();
    let base = p.a.status()["sent_bytes"].as_u64().unwrap_or(0);
    for i in 0..1000u16 {
        let mut conn = TcpConn::new(ep(inside, 10_000 + i), ep(S4, 443));
        let mut seen = TcpConn::new(ep(outside, 10_000 + i), ep(S4, 443));
        let h = &mut p.a.h;
        h.out(conn.syn());
        h.inb(seen.syn_ack());
        h.out(conn.ack());
        for c in [&mut conn, &mut seen] {
            c.c_seq += 1;
            c.s_seq += 1;
        }
        h.out(conn.client_data(100));
        seen.c_seq = conn.c_seq;
        h.inb(seen.server_data(1000));
        conn.s_seq = seen.s_seq;
        h.out(conn.client_fin());
        seen.c_seq = conn.c_seq;
        h.inb(seen.server_fin());
        conn.s_seq = seen.s_seq;
        h.out(conn.client_ack());
        if i % 100 == 99 {
            p.step(100);
        }
    }
    p.a.h.advance(Duration::from_secs(300));
    p.drain();
    let tcp = p.a.status()["sent_bytes"].as_u64().unwrap_or(0) - base;
    for i in 0..1000u16 {
        p.a.h.out(udp(ep(inside, 30_000 + i), ep(S4, 53), b"q"));
        if i % 100 == 99 {
            p.step(100);
        }
    }
    p.a.h.advance(Duration::from_secs(10));
    p.drain();
    let udp = p.a.status()["sent_bytes"].as_u64().unwrap_or(0) - base - tcp;
    (tcp / 1000, udp / 1000)
}
