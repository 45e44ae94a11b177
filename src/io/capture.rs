//! The packet tap behind `tunwall capture` (SPEC §12): workers hand copies
//! of packets to it only while a capture client is connected, checked with
//! one relaxed load per batch; otherwise it costs nothing. A packet the
//! capture's filter (`--filter`) rejects is not copied at all. It holds at
//! most [`LIMIT`] bytes of packets: when the reader is slower than the
//! traffic, packets are dropped here and counted (`capture_lost`), never
//! queued without bound.

use crate::packet::pcap_filter::CaptureFilter;
use crate::policy::Layer;
use crate::reason::DropReason;
use arc_swap::ArcSwapOption;
use crossbeam_channel::{Receiver, Sender};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

/// Bytes of packets the tap holds at most.
pub const LIMIT: usize = 4 << 20;
/// The most bytes of one packet kept (pcapng snap length).
pub const SNAPLEN: usize = 65_535;

/// What the workers hand over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum CaptureMode {
    /// Nothing (no client).
    Off = 0,
    /// Only dropped packets (`--discards`).
    Discards = 1,
    /// Every packet read.
    All = 2,
}

/// Why a captured packet was dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DropNote {
    /// The reason.
    pub reason: DropReason,
    /// The layer that blocked it, if a layer did.
    pub layer: Option<Layer>,
    /// The deciding filter, if any.
    pub filter: Option<Arc<str>>,
}

/// One captured packet.
#[derive(Clone, Debug)]
pub struct CaptureRecord {
    /// When the worker read it.
    pub at: SystemTime,
    /// The arrival port.
    pub port: u8,
    /// Its length on the wire.
    pub len: usize,
    /// Its first [`SNAPLEN`] bytes (the IP packet).
    pub bytes: Vec<u8>,
    /// For a dropped packet, why.
    pub dropped: Option<DropNote>,
}

/// The tap the workers and the capture session share.
pub struct CaptureTap {
    mode: AtomicU8,
    queued: AtomicUsize,
    lost: AtomicU64,
    filter: ArcSwapOption<CaptureFilter>,
    tx: Sender<CaptureRecord>,
    rx: Receiver<CaptureRecord>,
}

impl Default for CaptureTap {
    fn default() -> Self {
        let (tx, rx) = crossbeam_channel::unbounded();
        CaptureTap {
            mode: AtomicU8::new(CaptureMode::Off as u8),
            queued: AtomicUsize::new(0),
            lost: AtomicU64::new(0),
            filter: ArcSwapOption::empty(),
            tx,
            rx,
        }
    }
}

impl CaptureTap {
    /// What the workers should hand over now (one relaxed load).
    #[inline]
    pub fn mode(&self) -> CaptureMode {
        match self.mode.load(Ordering::Relaxed) {
            1 => CaptureMode::Discards,
            2 => CaptureMode::All,
            _ => CaptureMode::Off,
        }
    }

    /// Starts (or, with `Off`, stops) handing packets over; while on, only
    /// the packets `filter` passes (all with `None`).
    pub fn set_mode(&self, mode: CaptureMode, filter: Option<CaptureFilter>) {
        if mode == CaptureMode::Off {
            self.mode.store(mode as u8, Ordering::Relaxed);
            self.filter.store(None);
            while self.next(Duration::ZERO).is_some() {}
        } else {
            // The filter first: no packet slips through unfiltered.
            self.filter.store(filter.map(Arc::new));
            self.mode.store(mode as u8, Ordering::Relaxed);
        }
    }

    /// Packets lost because the reader was behind.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    /// Queues a copy of `packet` if the filter passes it, or counts it
    /// lost when the tap is full.
    pub fn offer(&self, at: SystemTime, port: u8, packet: &[u8], dropped: Option<DropNote>) {
        if let Some(filter) = &*self.filter.load()
            && !filter.matches(packet)
        {
            return;
        }
        let take = packet.len().min(SNAPLEN);
        let admitted = self
            .queued
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| {
                (q + take <= LIMIT).then_some(q + take)
            })
            .is_ok();
        if !admitted {
            self.lost.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let record = CaptureRecord {
            at,
            port,
            len: packet.len(),
            bytes: packet[..take].to_vec(),
            dropped,
        };
        // The tap owns the receiver too, so the send cannot fail.
        let _ = self.tx.send(record);
    }

    /// The next packet, waiting up to `wait`.
    pub fn next(&self, wait: Duration) -> Option<CaptureRecord> {
        let record = self.rx.recv_timeout(wait).ok()?;
        self.queued.fetch_sub(record.bytes.len(), Ordering::Relaxed);
        Some(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_tap_counts_what_it_loses_and_off_empties_it() {
        let tap = CaptureTap::default();
        tap.set_mode(CaptureMode::All, None);
        let packet = vec![0x45u8; SNAPLEN + 100];
        let fit = LIMIT / SNAPLEN;
        for _ in 0..fit + 3 {
            tap.offer(SystemTime::now(), 0, &packet, None);
        }
        assert_eq!(tap.lost(), 3);
        let first = tap.next(Duration::ZERO).expect("a packet");
        assert_eq!((first.len, first.bytes.len()), (SNAPLEN + 100, SNAPLEN));
        tap.set_mode(CaptureMode::Off, None);
        assert!(tap.next(Duration::ZERO).is_none());
        assert_eq!(tap.mode(), CaptureMode::Off);
        tap.offer(SystemTime::now(), 0, &packet, None);
        assert!(tap.next(Duration::ZERO).is_some(), "room again");
    }

    #[test]
    fn the_filter_decides_what_is_copied() {
        use crate::testkit::{ep, udp};
        let tap = CaptureTap::default();
        let filter = CaptureFilter::parse("udp dst port 53").unwrap();
        tap.set_mode(CaptureMode::All, Some(filter));
        let query = udp(ep("198.18.1.10", 5353), ep("198.18.2.20", 53), b"q");
        let answer = udp(ep("198.18.2.20", 53), ep("198.18.1.10", 5353), b"a");
        tap.offer(SystemTime::now(), 0, &answer, None);
        tap.offer(SystemTime::now(), 0, &query, None);
        assert_eq!(tap.next(Duration::ZERO).map(|r| r.bytes), Some(query));
        assert!(tap.next(Duration::ZERO).is_none());
        // A new capture without a filter takes everything again.
        tap.set_mode(CaptureMode::Off, None);
        tap.set_mode(CaptureMode::All, None);
        tap.offer(SystemTime::now(), 0, &answer, None);
        assert!(tap.next(Duration::ZERO).is_some());
    }
}
