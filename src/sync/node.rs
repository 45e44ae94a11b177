//! The sync thread of one node (SPEC §15): one UDP socket bound to
//! `[sync] listen`, talking to `[sync] peer`.
//!
//! Every few milliseconds it applies what the peer sent, turns the
//! workers' exports into flow records (creations, forwarding changes and
//! closures go out at once), walks the table every [`WALK`] for flows
//! refreshed since the last walk (so a refresh is at most about a second
//! late, and TCP windows follow), and sends a bulk resync of the whole
//! table when the peer (re)joins or messages were lost. Its status is
//! shared with the control socket through [`Shared`].

use super::link::{DOWN_AFTER, Link, REJECTED_NAMES};
use super::wire::{self, BULK_BEGIN, BULK_END, CLOSE, FLOW, Key};
use super::{Export, SyncConfig};
use crate::engine::{Applied, Gateway};
use crate::flow::record::{self, FLOW_RECORD_LEN};
use crate::io::clock::Clock;
use crate::time::Instant;
use crossbeam_channel::Receiver;
use serde_json::{Value, json};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use tracing::{info, warn};

/// How often the table is walked for refreshed flows.
pub const WALK: Duration = Duration::from_millis(250);
/// The longest the thread waits for a datagram.
const POLL: Duration = Duration::from_millis(5);
/// Exports taken from the workers' queue per round.
const EXPORTS_PER_ROUND: usize = 4096;
/// Flow records per message.
const RECORDS_PER_MESSAGE: usize = wire::MAX_ITEMS_LEN / (1 + FLOW_RECORD_LEN);

/// What `sync status` shows, updated by the sync thread every round.
#[derive(Default)]
pub struct Shared {
    status: Mutex<Value>,
}

impl Shared {
    /// The status as JSON (SPEC §15 `sync status --json`).
    pub fn status(&self) -> Value {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The running sync thread.
pub struct SyncHandle {
    /// Its status.
    pub shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SyncHandle {
    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The send queue's bound for a gateway of `max_flows` in `shards` shards:
/// room for a bulk resync's shard on top of half a queue, at least 1024.
pub fn queue_limit(max_flows: usize, shards: usize) -> usize {
    let per_shard = max_flows / shards.max(1) / RECORDS_PER_MESSAGE + 1;
    (per_shard * 4).max(1024)
}

/// Binds `[sync] listen` and starts replicating `gateway`, whose
/// replication must not be on yet.
pub fn spawn(config: &SyncConfig, gateway: Arc<Gateway>, clock: Clock) -> anyhow::Result<SyncHandle> {
    let (node, peer) = config.node_ids();
    let exports = gateway
        .enable_sync(node)
        .ok_or_else(|| anyhow::anyhow!("replication is already on"))?;
    let socket = UdpSocket::bind(config.listen)
        .map_err(|e| anyhow::anyhow!("[sync] listen {}: {e}", config.listen))?;
    socket.set_read_timeout(Some(POLL))?;
    let session = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_millis() as u64);
    let table = gateway.table();
    let limit = queue_limit(table.config().max_flows, table.shard_count());
    let shared = Arc::new(Shared::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut state = Node {
        link: Link::new(Key::new(&config.key), node, peer, session, limit),
        socket,
        peer_addr: config.peer,
        gateway,
        clock,
        exports,
        shared: Arc::clone(&shared),
        bulk_out: None,
        bulk_in: false,
        last_walk: None,
        counts: Counts::default(),
        was_up: false,
    };
    info!(node, peer = %config.peer, listen = %config.listen, "sync running");
    let stopping = Arc::clone(&stop);
    let thread = std::thread::Builder::new()
        .name("tunwall-sync".into())
        .spawn(move || state.run(&stopping))?;
    Ok(SyncHandle {
        shared,
        stop,
        thread: Some(thread),
    })
}

#[derive(Default)]
struct Counts {
    applied: u64,
    refused: u64,
    invalid_records: u64,
    bulk_sent: u64,
    bulk_received: u64,
}

struct Node {
    link: Link,
    socket: UdpSocket,
    peer_addr: SocketAddr,
    gateway: Arc<Gateway>,
    clock: Clock,
    exports: Receiver<Export>,
    shared: Arc<Shared>,
    /// The next shard of the bulk resync being sent.
    bulk_out: Option<usize>,
    /// A bulk resync from the peer is being received.
    bulk_in: bool,
    last_walk: Option<Instant>,
    counts: Counts,
    was_up: bool,
}

impl Node {
    fn run(&mut self, stop: &AtomicBool) {
        let mut buf = vec![0u8; 65_536];
        let mut record = Vec::with_capacity(FLOW_RECORD_LEN);
        while !stop.load(Ordering::Relaxed) {
            self.receive(&mut buf);
            let now = self.clock.now();
            self.drain_exports(now, &mut record);
            self.walk(now, &mut record);
            self.bulk(now, &mut record);
            self.link.flush(now);
            let (socket, peer) = (&self.socket, self.peer_addr);
            self.link.transmit(now, |d| {
                let _ = socket.send_to(d, peer);
            });
            self.publish(now);
        }
    }

    /// Takes every datagram waiting (the first wait bounded by [`POLL`]).
    fn receive(&mut self, buf: &mut [u8]) {
        let mut first = true;
        loop {
            let got = if first {
                self.socket.recv_from(buf)
            } else {
                self.socket.set_nonblocking(true).ok();
                let r = self.socket.recv_from(buf);
                self.socket.set_nonblocking(false).ok();
                r
            };
            first = false;
            let Ok((n, _)) = got else { return };
            let now = self.clock.now();
            let gateway = &self.gateway;
            let counts = &mut self.counts;
            let bulk_in = &mut self.bulk_in;
            let _ = self.link.receive(now, &mut buf[..n], |kind, payload| {
                let result = match kind {
                    FLOW => gateway.apply_synced(now, payload),
                    CLOSE => gateway.apply_closure(payload),
                    BULK_BEGIN => {
                        *bulk_in = true;
                        return;
                    }
                    BULK_END => {
                        *bulk_in = false;
                        counts.bulk_received += 1;
                        return;
                    }
                    _ => return,
                };
                match result {
                    Ok(Applied::Refused) => counts.refused += 1,
                    Ok(_) => counts.applied += 1,
                    Err(_) => counts.invalid_records += 1,
                }
            });
        }
    }

    fn drain_exports(&mut self, now: Instant, record: &mut Vec<u8>) {
        for export in self.exports.try_iter().take(EXPORTS_PER_ROUND) {
            let (kind, entry, parent, group) = match export {
                Export::Flow {
                    entry,
                    parent,
                    group,
                } => (FLOW, entry, parent, group),
                Export::Closed {
                    entry,
                    parent,
                    group,
                } => (CLOSE, entry, parent, group),
            };
            record.clear();
            record::encode(&entry, parent, group, now, record);
            self.link.push(now, kind, record);
        }
        if let Some(e) = self.gateway.exporter()
            && e.lost.swap(false, Ordering::Relaxed)
        {
            self.link.resync_needed = true;
        }
    }

    /// Every [`WALK`], the flows refreshed since the last walk (skipped
    /// while the peer is down: the resync at its return covers them).
    fn walk(&mut self, now: Instant, record: &mut Vec<u8>) {
        let since = match self.last_walk {
            Some(t) if now.saturating_since(t) < WALK => return,
            Some(t) => t,
            None => now,
        };
        self.last_walk = Some(now);
        if !self.link.up(now) {
            return;
        }
        let link = &mut self.link;
        for idx in 0..self.gateway.table().shard_count() {
            self.gateway
                .walk_shard(idx, Some(since), now, record, |r| link.push(now, FLOW, r));
        }
    }

    /// Starts or continues a bulk resync, a shard at a time while the
    /// queue has room for it.
    fn bulk(&mut self, now: Instant, record: &mut Vec<u8>) {
        let up = self.link.up(now);
        if up && !self.was_up {
            info!(peer = %self.peer_addr, "sync peer up");
        } else if !up && self.was_up {
            warn!(peer = %self.peer_addr, "sync peer down");
        }
        self.was_up = up;
        if !up {
            return;
        }
        if self.link.resync_needed {
            self.link.resync_needed = false;
            self.link.push(now, BULK_BEGIN, &[]);
            self.bulk_out = Some(0);
        }
        let shards = self.gateway.table().shard_count();
        let limit = self.link.queue_limit();
        while let Some(idx) = self.bulk_out {
            if idx == shards {
                self.link.push(now, BULK_END, &[]);
                self.link.flush(now);
                self.bulk_out = None;
                self.counts.bulk_sent += 1;
                break;
            }
            let len = self.gateway.table().lock_shard(idx).len();
            let needed = len / RECORDS_PER_MESSAGE + 2;
            if self.link.queued() > limit / 2 || self.link.queued() + needed > limit {
                break;
            }
            let link = &mut self.link;
            self.gateway
                .walk_shard(idx, None, now, record, |r| link.push(now, FLOW, r));
            self.bulk_out = Some(idx + 1);
        }
    }

    fn publish(&self, now: Instant) {
        let c = &self.link.counters;
        let state = if self.bulk_in || self.bulk_out.is_some() {
            "resyncing"
        } else if self.link.up(now) {
            "up"
        } else {
            "down"
        };
        let rejected_by: serde_json::Map<String, Value> = REJECTED_NAMES
            .iter()
            .zip(c.rejected)
            .map(|(n, v)| (n.to_string(), json!(v)))
            .collect();
        let export_dropped = self
            .gateway
            .exporter()
            .map_or(0, |e| e.dropped.load(Ordering::Relaxed));
        let status = json!({
            "peer": self.peer_addr.to_string(),
            "state": state,
            "sent": c.sent,
            "received": c.received,
            "retransmitted": c.retransmitted,
            "rejected": c.rejected_total(),
            "rejected_by": rejected_by,
            "lag_ms": self.link.lag(now).as_millis() as u64,
            "queued": self.link.queued(),
            "queue_limit": self.link.queue_limit(),
            "overflowed": c.overflowed,
            "export_dropped": export_dropped,
            "applied": self.counts.applied,
            "refused": self.counts.refused,
            "invalid_records": self.counts.invalid_records,
            "bulk_sent": self.counts.bulk_sent,
            "bulk_received": self.counts.bulk_received,
            "down_after_ms": DOWN_AFTER.as_millis() as u64,
        });
        *self.shared.status.lock().unwrap_or_else(|p| p.into_inner()) = status;
    }
}
