//! One node's replication, without I/O (SPEC §15): the sync thread
//! ([`super::node`]) feeds it the datagrams that arrived and sends what it
//! produces; tests drive two of them on a virtual clock.
//!
//! Each round it turns the workers' exports into flow records (creations,
//! forwarding changes and closures go out at once), walks the table every
//! [`WALK`] for flows refreshed since the last walk (a refresh is at most
//! about a second late, and TCP windows follow), and sends a bulk resync of
//! the whole table when the peer (re)joins or messages were lost, a shard at
//! a time while the send queue has room.

use super::link::{DOWN_AFTER, Link, REJECTED_NAMES};
use super::wire::{self, BULK_BEGIN, BULK_END, CLOSE, FLOW, Key, TRANSLATION};
use super::{Export, SyncConfig};
use crate::engine::{Applied, FlowRecords, Gateway};
use crate::flow::record::{FLOW_RECORD_LEN, FilterNames, TRANSLATION_FIXED_LEN};
use crate::time::Instant;
use crossbeam_channel::Receiver;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tracing::{info, warn};

/// How often the table is walked for refreshed flows.
pub const WALK: Duration = Duration::from_millis(250);
/// Exports taken from the workers' queue per round.
const EXPORTS_PER_ROUND: usize = 4096;
/// Distinct filter names kept for sharing among received translations;
/// beyond, the cache starts again (the names come from the peer's policy).
const MAX_NAMES: usize = 4096;
/// Flows per message, counted as translated flows whose filter name is 64
/// bytes (an untranslated flow takes less than half the room): the bulk
/// resync sizes a shard's messages by it, so a shard of translated flows
/// never overflows the send queue (which would start the resync again).
const RECORDS_PER_MESSAGE: usize = wire::MAX_ITEMS_LEN
    / (1 + FLOW_RECORD_LEN + wire::item_size(TRANSLATION, TRANSLATION_FIXED_LEN + 64));

/// The send queue's bound for a gateway of `max_flows` in `shards` shards:
/// room for a bulk resync's shard on top of half a queue, at least 1024.
pub fn queue_limit(max_flows: usize, shards: usize) -> usize {
    let per_shard = max_flows / shards.max(1) / RECORDS_PER_MESSAGE + 1;
    (per_shard * 4).max(1024)
}

#[derive(Default)]
struct Counts {
    applied: u64,
    refused: u64,
    invalid_records: u64,
    bulk_sent: u64,
    bulk_received: u64,
}

/// One node's side of the pair.
pub struct Replicator {
    link: Link,
    peer: String,
    gateway: Arc<Gateway>,
    exports: Receiver<Export>,
    /// The next shard of the bulk resync being sent.
    bulk_out: Option<usize>,
    last_walk: Option<Instant>,
    counts: Counts,
    was_up: bool,
    records: FlowRecords,
    inbound: Inbound,
}

/// What arrives from the peer, item by item: a flow record is held until
/// the next item says whether its translation follows.
#[derive(Default)]
struct Inbound {
    /// The flow record waiting for its translation (empty: none).
    held: Vec<u8>,
    names: FilterNames,
    /// A bulk resync from the peer is being received.
    bulk: bool,
}

impl Inbound {
    fn item(
        &mut self,
        gateway: &Gateway,
        counts: &mut Counts,
        now: Instant,
        kind: u8,
        payload: &[u8],
    ) {
        if kind == TRANSLATION {
            if self.held.is_empty() {
                counts.invalid_records += 1;
            } else {
                self.apply(gateway, counts, now, Some(payload));
            }
            return;
        }
        self.flush(gateway, counts, now);
        let result = match kind {
            FLOW => {
                self.held.extend_from_slice(payload);
                return;
            }
            CLOSE => gateway.apply_closure(payload),
            BULK_BEGIN => {
                self.bulk = true;
                return;
            }
            BULK_END => {
                self.bulk = false;
                counts.bulk_received += 1;
                return;
            }
            _ => return,
        };
        counts.count(result);
    }

    /// Applies the held flow record, without a translation.
    fn flush(&mut self, gateway: &Gateway, counts: &mut Counts, now: Instant) {
        if !self.held.is_empty() {
            self.apply(gateway, counts, now, None);
        }
    }

    fn apply(
        &mut self,
        gateway: &Gateway,
        counts: &mut Counts,
        now: Instant,
        translation: Option<&[u8]>,
    ) {
        if self.names.len() > MAX_NAMES {
            self.names = FilterNames::default();
        }
        let result = gateway.apply_synced(now, &self.held, translation, &mut self.names);
        self.held.clear();
        counts.count(result);
    }
}

impl Counts {
    fn count(&mut self, result: Result<Applied, &'static str>) {
        match result {
            Ok(Applied::Refused) => self.refused += 1,
            Ok(_) => self.applied += 1,
            Err(_) => self.invalid_records += 1,
        }
    }
}

impl Replicator {
    /// Turns on replication of `gateway` (before any packet) as the node
    /// `config` makes it; `session` must grow from one start to the next.
    pub fn new(
        config: &SyncConfig,
        gateway: Arc<Gateway>,
        session: u64,
    ) -> anyhow::Result<Replicator> {
        let (node, peer) = config.node_ids();
        let exports = gateway
            .enable_sync(node)
            .ok_or_else(|| anyhow::anyhow!("replication is already on"))?;
        let table = gateway.table();
        let limit = queue_limit(table.config().max_flows, table.shard_count());
        Ok(Replicator {
            link: Link::new(Key::new(&config.key), node, peer, session, limit),
            peer: config.peer.to_string(),
            gateway,
            exports,
            bulk_out: None,
            last_walk: None,
            counts: Counts::default(),
            was_up: false,
            records: FlowRecords::default(),
            inbound: Inbound::default(),
        })
    }

    /// Takes one datagram from the peer: applies what it carries if it is
    /// authentic, fresh and next in order; anything else is counted.
    pub fn receive(&mut self, now: Instant, datagram: &mut [u8]) {
        let gateway = &self.gateway;
        let counts = &mut self.counts;
        let inbound = &mut self.inbound;
        let _ = self.link.receive(now, datagram, |kind, payload| {
            inbound.item(gateway, counts, now, kind, payload)
        });
        inbound.flush(gateway, counts, now);
    }

    /// Queues what the workers exported and what is due, and sends it.
    pub fn round(&mut self, now: Instant, send: impl FnMut(&[u8])) {
        self.drain_exports(now);
        self.walk(now);
        self.bulk(now);
        self.link.flush(now);
        self.link.transmit(now, send);
    }

    fn drain_exports(&mut self, now: Instant) {
        for export in self.exports.try_iter().take(EXPORTS_PER_ROUND) {
            let (kind, entry, parent, group, translated) = match export {
                Export::Flow {
                    entry,
                    parent,
                    group,
                    translated,
                } => (FLOW, entry, parent, group, translated),
                Export::Closed {
                    entry,
                    parent,
                    group,
                } => (CLOSE, entry, parent, group, false),
            };
            // A translated flow goes with its translation, as the table
            // holds it now; gone already, it is not sent (its closure
            // follows in the queue).
            let translation = match translated {
                true => match self.gateway.translation_of(&entry) {
                    Some(t) => Some(t),
                    None => continue,
                },
                false => None,
            };
            self.records
                .encode(&entry, parent, group, translation.as_ref(), now);
            push(&mut self.link, now, kind, &self.records);
        }
        if let Some(e) = self.gateway.exporter()
            && e.lost.swap(false, Ordering::Relaxed)
        {
            self.link.resync_needed = true;
        }
    }

    /// Every [`WALK`], the flows refreshed since the last walk (skipped
    /// while the peer is down: the resync at its return covers them).
    fn walk(&mut self, now: Instant) {
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
                .walk_shard(idx, Some(since), now, &mut self.records, |r| {
                    push(link, now, FLOW, r)
                });
        }
    }

    fn bulk(&mut self, now: Instant) {
        let up = self.link.up(now);
        if up && !self.was_up {
            info!(peer = %self.peer, "sync peer up");
        } else if !up && self.was_up {
            warn!(peer = %self.peer, "sync peer down");
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
                .walk_shard(idx, None, now, &mut self.records, |r| {
                    push(link, now, FLOW, r)
                });
            self.bulk_out = Some(idx + 1);
        }
    }

    /// `up`, `down` or `resyncing` (a bulk resync on its way in or out).
    pub fn state(&self, now: Instant) -> &'static str {
        if self.inbound.bulk || self.bulk_out.is_some() {
            "resyncing"
        } else if self.link.up(now) {
            "up"
        } else {
            "down"
        }
    }

    /// The status (SPEC §15 `sync status --json`).
    pub fn status(&self, now: Instant) -> Value {
        let c = &self.link.counters;
        let rejected_by: serde_json::Map<String, Value> = REJECTED_NAMES
            .iter()
            .zip(c.rejected)
            .map(|(n, v)| (n.to_string(), json!(v)))
            .collect();
        let export_dropped = self
            .gateway
            .exporter()
            .map_or(0, |e| e.dropped.load(Ordering::Relaxed));
        json!({
            "peer": self.peer,
            "state": self.state(now),
            "sent": c.sent,
            "sent_bytes": c.sent_bytes,
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
        })
    }
}

/// Queues a flow's records as one item of `kind` (FLOW or CLOSE) and, for
/// a translated flow's FLOW, its translation in the same message.
fn push(link: &mut Link, now: Instant, kind: u8, records: &FlowRecords) {
    match records.translation() {
        Some(t) if kind == FLOW => {
            link.push_together(now, &[(FLOW, &records.flow), (TRANSLATION, t)])
        }
        _ => link.push(now, kind, &records.flow),
    }
}
