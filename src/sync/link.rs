//! The reliable link to the peer over [`super::wire`] datagrams: message
//! sequence numbers, cumulative acknowledgements, retransmission, peer
//! liveness, and a bounded send queue. Pure: the caller passes the time,
//! the datagrams that arrived and a function that sends.
//!
//! Messages are applied in order: the receiver takes only the message it
//! expects next and acknowledges the highest one applied; the sender
//! retransmits what stays unacknowledged. The queue holds at most
//! `queue_limit` messages: when a dead peer lets it fill, the oldest
//! message is dropped and a bulk resync is marked as needed; every
//! datagram carries the sender's oldest queued sequence number, so the
//! receiver skips over what was dropped instead of waiting for it.

use super::wire::{self, Body, Fresh, Header, Key, MAX_ITEMS_LEN, Rejected, Replay};
use crate::time::Instant;
use std::collections::VecDeque;
use std::time::Duration;

/// Messages sent and not yet acknowledged at a time.
const WINDOW: usize = 64;
/// Retransmission timeout while the peer answers.
const RTO: Duration = Duration::from_millis(250);
/// A silent peer is probed this often.
const PROBE: Duration = Duration::from_secs(1);
/// An acknowledgement or keepalive goes out at least this often.
const KEEPALIVE: Duration = Duration::from_millis(300);
/// A peer not heard from for this long is down.
pub const DOWN_AFTER: Duration = Duration::from_millis(1500);

/// The link's counters (SPEC §15 `sync status`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Datagrams sent (retransmissions included).
    pub sent: u64,
    /// Their bytes (UDP payload).
    pub sent_bytes: u64,
    /// Datagrams received and accepted.
    pub received: u64,
    /// Messages sent again.
    pub retransmitted: u64,
    /// Datagrams refused, by [`Rejected`] reason (malformed,
    /// unauthenticated, wrong node, replayed, bad body).
    pub rejected: [u64; 5],
    /// Messages dropped from a full queue.
    pub overflowed: u64,
}

impl Counters {
    /// Every datagram refused.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.iter().sum()
    }
}

fn reason_index(r: Rejected) -> usize {
    match r {
        Rejected::Malformed => 0,
        Rejected::Unauthenticated => 1,
        Rejected::WrongNode => 2,
        Rejected::Replayed => 3,
        Rejected::BadBody => 4,
    }
}

/// The reason names, in [`Counters::rejected`] order.
pub const REJECTED_NAMES: [&str; 5] = [
    "malformed",
    "unauthenticated",
    "wrong_node",
    "replayed",
    "bad_body",
];

struct Pending {
    seq: u64,
    items: Vec<u8>,
    queued: Instant,
    sent: Option<Instant>,
}

/// One side of the link.
pub struct Link {
    key: Key,
    node: u32,
    peer: u32,
    session: u64,
    counter: u64,
    next_seq: u64,
    queue: VecDeque<Pending>,
    queue_limit: usize,
    building: Vec<u8>,
    replay: Replay,
    /// The peer's next message to apply; 0 before the first.
    expected: u64,
    ack_due: bool,
    last_heard: Option<Instant>,
    last_sent: Option<Instant>,
    scratch: Vec<u8>,
    /// A bulk resync must be sent: the peer (re)joined or messages were lost.
    pub resync_needed: bool,
    /// The counters.
    pub counters: Counters,
}

impl Link {
    /// A link of node `node` (session `session`, strictly increasing
    /// across this node's starts) to node `peer`.
    pub fn new(key: Key, node: u32, peer: u32, session: u64, queue_limit: usize) -> Link {
        Link {
            key,
            node,
            peer,
            session,
            counter: 0,
            next_seq: 1,
            queue: VecDeque::new(),
            queue_limit: queue_limit.max(2),
            building: Vec::with_capacity(MAX_ITEMS_LEN),
            replay: Replay::default(),
            expected: 0,
            ack_due: false,
            last_heard: None,
            last_sent: None,
            scratch: Vec::with_capacity(wire::MAX_DATAGRAM),
            resync_needed: true,
            counters: Counters::default(),
        }
    }

    /// Whether the peer was heard from recently.
    pub fn up(&self, now: Instant) -> bool {
        self.last_heard
            .is_some_and(|t| now.saturating_since(t) < DOWN_AFTER)
    }

    /// Messages queued (sent or not, unacknowledged).
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// The queue's bound.
    pub fn queue_limit(&self) -> usize {
        self.queue_limit
    }

    /// How long the oldest unacknowledged message has waited.
    pub fn lag(&self, now: Instant) -> Duration {
        self.queue
            .front()
            .map_or(Duration::ZERO, |p| now.saturating_since(p.queued))
    }

    /// Adds an item (kind and payload) to the message being built; a full
    /// message is queued first.
    pub fn push(&mut self, now: Instant, kind: u8, payload: &[u8]) {
        self.push_together(now, &[(kind, payload)]);
    }

    /// Adds items that must arrive in one message (a flow and its
    /// translation); the message being built is queued first if they do
    /// not fit in it.
    pub fn push_together(&mut self, now: Instant, items: &[(u8, &[u8])]) {
        let size: usize = items
            .iter()
            .map(|(k, p)| wire::item_size(*k, p.len()))
            .sum();
        if self.building.len() + size > MAX_ITEMS_LEN {
            self.flush(now);
        }
        for (kind, payload) in items {
            wire::put_item(*kind, payload, &mut self.building);
        }
    }

    /// Queues the message being built, if it has items.
    pub fn flush(&mut self, now: Instant) {
        if self.building.is_empty() {
            return;
        }
        if self.queue.len() >= self.queue_limit {
            self.queue.pop_front();
            self.counters.overflowed += 1;
            self.resync_needed = true;
        }
        let items = std::mem::replace(&mut self.building, Vec::with_capacity(MAX_ITEMS_LEN));
        self.queue.push_back(Pending {
            seq: self.next_seq,
            items,
            queued: now,
            sent: None,
        });
        self.next_seq += 1;
    }

    fn our_ack(&self) -> u64 {
        self.expected.saturating_sub(1)
    }

    fn header(&mut self) -> Header {
        self.counter += 1;
        Header {
            node: self.node,
            session: self.session,
            counter: self.counter,
        }
    }

    /// Sends what is due at `now`: new and timed-out messages (only the
    /// oldest, as a probe, while the peer is down) and acknowledgements.
    pub fn transmit(&mut self, now: Instant, mut send: impl FnMut(&[u8])) {
        let up = self.up(now);
        let base = self.queue.front().map_or(self.next_seq, |p| p.seq);
        let ack = self.our_ack();
        let limit = if up { WINDOW } else { 1 };
        let timeout = if up { RTO } else { PROBE };
        let mut sent_any = false;
        for i in 0..self.queue.len().min(limit) {
            let due = self.queue[i]
                .sent
                .is_none_or(|t| now.saturating_since(t) >= timeout);
            if !due {
                continue;
            }
            let header = self.header();
            let p = &mut self.queue[i];
            if p.sent.is_some() {
                self.counters.retransmitted += 1;
            }
            p.sent = Some(now);
            wire::seal(
                &self.key,
                header,
                ack,
                base,
                p.seq,
                &p.items,
                &mut self.scratch,
            );
            send(&self.scratch);
            self.counters.sent += 1;
            self.counters.sent_bytes += self.scratch.len() as u64;
            sent_any = true;
        }
        let quiet = self
            .last_sent
            .is_none_or(|t| now.saturating_since(t) >= KEEPALIVE);
        if !sent_any && (self.ack_due || quiet) {
            let header = self.header();
            wire::seal(&self.key, header, ack, base, 0, &[], &mut self.scratch);
            send(&self.scratch);
            self.counters.sent += 1;
            self.counters.sent_bytes += self.scratch.len() as u64;
            sent_any = true;
        }
        if sent_any {
            self.ack_due = false;
            self.last_sent = Some(now);
        }
    }

    /// Takes one datagram from the network: authenticates it, takes its
    /// acknowledgement, and hands the items of the next in-order message to
    /// `apply` (kind, payload). A refused datagram is counted and changes
    /// nothing.
    pub fn receive(
        &mut self,
        now: Instant,
        datagram: &mut [u8],
        apply: impl FnMut(u8, &[u8]),
    ) -> Result<(), Rejected> {
        let result = self.accept(now, datagram, apply);
        if let Err(r) = result {
            self.counters.rejected[reason_index(r)] += 1;
        }
        result
    }

    fn accept(
        &mut self,
        now: Instant,
        datagram: &mut [u8],
        mut apply: impl FnMut(u8, &[u8]),
    ) -> Result<(), Rejected> {
        let (header, body): (Header, Body<'_>) = wire::open(&self.key, datagram)?;
        if header.node != self.peer {
            return Err(Rejected::WrongNode);
        }
        match self.replay.check(&header) {
            Fresh::Replayed => return Err(Rejected::Replayed),
            Fresh::NewSession => {
                // The peer (re)started: it has lost what we sent before.
                self.expected = 0;
                self.resync_needed = true;
            }
            Fresh::Yes => {}
        }
        self.counters.received += 1;
        self.last_heard = Some(now);
        while self.queue.front().is_some_and(|p| p.seq <= body.ack) {
            self.queue.pop_front();
        }
        if body.seq == 0 {
            return Ok(());
        }
        self.ack_due = true;
        if self.expected < body.base {
            // First contact, or the sender dropped messages from its full
            // queue: they will never come (a bulk resync replaces them).
            self.expected = body.base;
        }
        if body.seq == self.expected {
            self.expected += 1;
            for (kind, payload) in body.items() {
                apply(kind, payload);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::wire::{BULK_BEGIN, BULK_END, FLOW};

    fn pair(limit: usize) -> (Link, Link) {
        let a = Link::new(Key::new(&[3; 32]), 1, 2, 100, limit);
        let b = Link::new(Key::new(&[3; 32]), 2, 1, 200, limit);
        (a, b)
    }

    /// Moves every datagram `from` sends to `to`, dropping those `lose` picks.
    fn exchange(
        now: Instant,
        from: &mut Link,
        to: &mut Link,
        got: &mut Vec<u8>,
        mut lose: impl FnMut(usize) -> bool,
    ) -> usize {
        let mut wire = Vec::new();
        from.transmit(now, |d| wire.push(d.to_vec()));
        let n = wire.len();
        for (i, mut d) in wire.into_iter().enumerate() {
            if !lose(i) {
                to.receive(now, &mut d, |kind, _| got.push(kind))
                    .expect("accepted");
            }
        }
        n
    }

    #[test]
    fn lost_messages_are_retransmitted_and_applied_once_in_order() {
        let (mut a, mut b) = pair(16);
        let mut t = Instant::from_secs(1);
        let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
        for kind in [BULK_BEGIN, BULK_END, BULK_BEGIN] {
            a.push(t, kind, &[]);
            a.flush(t);
        }
        // The peer is unknown: one probe goes, and is lost.
        assert_eq!(exchange(t, &mut a, &mut b, &mut got_b, |_| true), 1);
        // The peer's keepalive shows it up: the whole window goes, and
        // the first message is lost, so the others cannot be applied yet.
        exchange(t, &mut b, &mut a, &mut got_a, |_| false);
        t = t + RTO;
        assert_eq!(exchange(t, &mut a, &mut b, &mut got_b, |i| i == 0), 3);
        assert!(got_b.is_empty());
        exchange(t, &mut b, &mut a, &mut got_a, |_| false);
        assert_eq!(a.queued(), 3);
        t = t + RTO;
        exchange(t, &mut a, &mut b, &mut got_b, |_| false);
        exchange(t, &mut b, &mut a, &mut got_a, |_| false);
        assert_eq!(got_b, [BULK_BEGIN, BULK_END, BULK_BEGIN]);
        assert_eq!(a.queued(), 0);
        assert_eq!(a.counters.retransmitted, 4);
        assert!(got_a.is_empty());
    }

    #[test]
    fn a_dead_peer_never_grows_the_queue_and_a_resync_is_marked() {
        let (mut a, _) = pair(8);
        a.resync_needed = false;
        let mut t = Instant::from_secs(1);
        for _ in 0..10_000 {
            a.push(t, FLOW, &[0; crate::flow::record::FLOW_RECORD_LEN]);
            a.transmit(t, |_| {});
            t = t + Duration::from_millis(1);
        }
        a.flush(t);
        assert!(a.queued() <= 8);
        assert!(a.counters.overflowed > 0);
        assert!(a.resync_needed);
    }

    #[test]
    fn after_an_overflow_the_receiver_skips_what_was_dropped() {
        let (mut a, mut b) = pair(2);
        let t = Instant::from_secs(1);
        let mut got = Vec::new();
        let mut ignore = Vec::new();
        a.push(t, BULK_BEGIN, &[]);
        a.flush(t);
        exchange(t, &mut a, &mut b, &mut got, |_| false);
        exchange(t, &mut b, &mut a, &mut ignore, |_| false);
        assert_eq!((got.as_slice(), a.queued()), ([BULK_BEGIN].as_slice(), 0));
        a.resync_needed = false;
        for _ in 0..5 {
            a.push(t, BULK_END, &[]);
            a.flush(t);
        }
        assert_eq!(a.queued(), 2);
        assert!(
            a.resync_needed,
            "three messages are lost: a bulk resync follows"
        );
        exchange(t, &mut a, &mut b, &mut got, |_| false);
        exchange(t, &mut b, &mut a, &mut ignore, |_| false);
        assert_eq!(got, [BULK_BEGIN, BULK_END, BULK_END]);
        assert_eq!(a.queued(), 0);
    }

    #[test]
    fn replays_reflections_and_strangers_are_refused_and_counted() {
        let (mut a, mut b) = pair(8);
        let t = Instant::from_secs(1);
        a.push(t, BULK_END, &[]);
        a.flush(t);
        let mut sent = Vec::new();
        a.transmit(t, |d| sent.push(d.to_vec()));
        let mut applied = 0;
        b.receive(t, &mut sent[0].clone(), |_, _| applied += 1)
            .unwrap();
        assert_eq!(
            b.receive(t, &mut sent[0].clone(), |_, _| applied += 1),
            Err(Rejected::Replayed)
        );
        // A's own datagram sent back to A: authentic, but not from its peer.
        assert_eq!(
            a.receive(t, &mut sent[0].clone(), |_, _| applied += 1),
            Err(Rejected::WrongNode)
        );
        let mut stranger = Link::new(Key::new(&[4; 32]), 1, 2, 300, 8);
        stranger.push(t, BULK_END, &[]);
        stranger.flush(t);
        stranger.transmit(t, |d| {
            assert_eq!(
                b.receive(t, &mut d.to_vec(), |_, _| applied += 1),
                Err(Rejected::Unauthenticated)
            );
        });
        assert_eq!(applied, 1);
        assert_eq!(b.counters.rejected_total(), 2);
        assert_eq!(a.counters.rejected_total(), 1);
    }
}
