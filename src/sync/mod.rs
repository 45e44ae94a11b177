//! High availability (SPEC §15): the flow table replicated to the peer of
//! an active/standby pair.
//!
//! * [`wire`]: the authenticated datagram (UDP, XChaCha20-Poly1305 with the
//!   pre-shared key, node id, replay window) and its items, which carry
//!   §13 flow records ([`crate::flow::record`]);
//! * [`link`]: sequence numbers, cumulative acknowledgements,
//!   retransmission and the bounded send queue;
//! * [`node`]: the sync thread: drains what the workers export, walks the
//!   table for refreshes, sends bulk resyncs, applies what the peer sends;
//! * the workers' side is [`Exporter`]: creations, closures and forwarding
//!   state changes go into a bounded queue without allocating, and never
//!   wait (a full queue is counted and turns into a bulk resync).

pub mod link;
pub mod node;
pub mod replicator;
pub mod wire;

use crate::flow::FlowEntry;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Flow ids carry the creating node in these bits (SPEC §15: the ids of
/// the pair never collide): node n hands out ids from `n << NODE_SHIFT`,
/// which keeps them below 2^53 for JSON readers.
pub const NODE_SHIFT: u32 = 48;

/// The flow ids node `node` hands out (node 0: a gateway without `[sync]`,
/// whose ids start at 1).
pub fn id_range(node: u32) -> std::ops::Range<u64> {
    let base = u64::from(node) << NODE_SHIFT;
    base.max(1)..base + (1 << NODE_SHIFT)
}

/// How many exports the workers may queue for the sync thread.
pub const EXPORT_QUEUE: usize = 65_536;

/// `[sync]` as validated.
#[derive(Clone, PartialEq, Eq)]
pub struct SyncConfig {
    /// This node's UDP endpoint.
    pub listen: SocketAddr,
    /// The peer's.
    pub peer: SocketAddr,
    /// The key file, for messages.
    pub key_file: std::path::PathBuf,
    /// The 32-byte pre-shared key.
    pub key: [u8; 32],
    /// The key file may be read by its group or others (a warning).
    pub key_shared: bool,
}

impl std::fmt::Debug for SyncConfig {
    // Never the key itself.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncConfig")
            .field("listen", &self.listen)
            .field("peer", &self.peer)
            .field("key_file", &self.key_file)
            .finish_non_exhaustive()
    }
}

impl SyncConfig {
    /// (this node's id, the peer's): the node with the lower endpoint is 1,
    /// the other 2, so the two nodes' files need no node setting.
    pub fn node_ids(&self) -> (u32, u32) {
        if (self.listen.ip(), self.listen.port()) < (self.peer.ip(), self.peer.port()) {
            (1, 2)
        } else {
            (2, 1)
        }
    }
}

/// What a worker tells the sync thread.
#[derive(Clone, Copy)]
pub enum Export {
    /// A flow was created or changed in a way that matters for forwarding.
    Flow {
        /// The entry as it is now.
        entry: FlowEntry,
        /// Its parent.
        parent: Option<u64>,
        /// Its shard group.
        group: u16,
        /// It is translated: its translation goes with it (the sync thread
        /// takes it from the table, so the queue stays small and `Copy`).
        translated: bool,
    },
    /// A flow was removed.
    Closed {
        /// The entry as it was.
        entry: FlowEntry,
        /// Its parent.
        parent: Option<u64>,
        /// Its shard group.
        group: u16,
    },
}

/// The workers' end of the export queue.
pub struct Exporter {
    tx: Sender<Export>,
    /// Exports that did not fit.
    pub dropped: AtomicU64,
    /// Set when an export was dropped: the sync thread sends a bulk resync.
    pub lost: AtomicBool,
}

impl Exporter {
    /// A bounded export queue.
    pub fn new(limit: usize) -> (Exporter, Receiver<Export>) {
        let (tx, rx) = crossbeam_channel::bounded(limit);
        (
            Exporter {
                tx,
                dropped: AtomicU64::new(0),
                lost: AtomicBool::new(false),
            },
            rx,
        )
    }

    /// Queues `export` without waiting; a full queue counts it and marks
    /// the table for a bulk resync.
    #[inline]
    pub fn send(&self, export: Export) {
        match self.tx.try_send(export) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                self.lost.store(true, Ordering::Relaxed);
            }
        }
    }
}
