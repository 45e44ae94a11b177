//! The bounded event pipeline between the workers and the hub (SPEC §14).
//!
//! Workers hand over a batch of events per loop; the queue holds at most
//! `limit` events in all, and a batch that does not fit is dropped and
//! counted, so a stalled hub or a flood of flow churn never grows memory.
//! The same counter takes the events the hub loses at a slow reader, so
//! `events_dropped` counts every event lost after the engine.

use crate::event::Event;
use crossbeam_channel::{Receiver, Sender};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// The default bound: about 16 MB of events at the largest event size.
pub const DEFAULT_LIMIT: usize = 65_536;

/// What both ends share.
#[derive(Debug, Default)]
pub struct EventCounters {
    queued: AtomicUsize,
    dropped: AtomicU64,
    /// Whether the hub has a taker for flow events (set by the hub as its
    /// sinks come and go; read by the workers once per batch).
    flow_events_unwanted: AtomicBool,
}

impl EventCounters {
    /// Whether anything takes flow lifecycle events.
    pub fn flow_events_wanted(&self) -> bool {
        !self.flow_events_unwanted.load(Ordering::Relaxed)
    }

    /// Says whether anything takes flow lifecycle events.
    pub fn set_flow_events_wanted(&self, wanted: bool) {
        self.flow_events_unwanted.store(!wanted, Ordering::Relaxed);
    }

    /// Events lost in the pipeline or at a slow reader.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Counts `n` lost events.
    pub fn count_dropped(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
    }

    /// Events waiting for the hub.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }
}

/// The workers' end.
#[derive(Clone)]
pub struct EventSender {
    tx: Sender<Vec<Event>>,
    counters: Arc<EventCounters>,
    limit: usize,
}

/// The hub's end.
pub struct EventReceiver {
    rx: Receiver<Vec<Event>>,
    counters: Arc<EventCounters>,
}

/// A queue of at most `limit` events.
pub fn event_queue(limit: usize) -> (EventSender, EventReceiver) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let counters = Arc::new(EventCounters::default());
    (
        EventSender {
            tx,
            counters: Arc::clone(&counters),
            limit,
        },
        EventReceiver { rx, counters },
    )
}

impl EventSender {
    /// Queues `batch`, or drops and counts it when it does not fit.
    pub fn send(&self, batch: Vec<Event>) {
        let n = batch.len();
        if n == 0 {
            return;
        }
        let admitted = self
            .counters
            .queued
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| {
                (q + n <= self.limit).then_some(q + n)
            })
            .is_ok();
        if !admitted {
            self.counters.count_dropped(n as u64);
            return;
        }
        if let Err(e) = self.tx.send(batch) {
            // The hub is gone (teardown): what it would have taken is lost.
            self.counters.queued.fetch_sub(n, Ordering::Relaxed);
            self.counters.count_dropped(e.0.len() as u64);
        }
    }

    /// The shared counters.
    pub fn counters(&self) -> &Arc<EventCounters> {
        &self.counters
    }
}

impl EventReceiver {
    /// The channel to select on; every batch taken must be passed to [`EventReceiver::taken`].
    pub fn channel(&self) -> &Receiver<Vec<Event>> {
        &self.rx
    }

    /// Releases the places of a batch taken off the channel.
    pub fn taken(&self, batch: &[Event]) {
        self.counters
            .queued
            .fetch_sub(batch.len(), Ordering::Relaxed);
    }

    /// The shared counters.
    pub fn counters(&self) -> &Arc<EventCounters> {
        &self.counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventKind;
    use crate::reason::DropReason;
    use crate::time::Instant;

    fn batch(n: usize) -> Vec<Event> {
        (0..n)
            .map(|_| Event {
                at: Instant::ZERO,
                kind: EventKind::Discard {
                    layer: None,
                    reason: DropReason::Truncated,
                    filter: None,
                    port: 0,
                    packet: None,
                },
            })
            .collect()
    }

    #[test]
    fn batches_beyond_the_limit_are_dropped_and_counted() {
        let (tx, rx) = event_queue(10);
        tx.send(batch(6));
        tx.send(batch(6));
        assert_eq!(tx.counters().dropped(), 6);
        assert_eq!(tx.counters().queued(), 6);
        let taken = rx.channel().try_recv().expect("a batch");
        rx.taken(&taken);
        tx.send(batch(10));
        assert_eq!(tx.counters().queued(), 10);
        assert_eq!(tx.counters().dropped(), 6);
        assert!(rx.channel().try_recv().is_ok());
        assert!(rx.channel().try_recv().is_err());
    }
}
