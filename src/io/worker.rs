//! A worker: one thread owning queue *i* of every port and one engine.
//!
//! The kernel's TUN queue selection sends both directions of a flow to the
//! same queue index almost always, so worker *i* sees both directions of its
//! flows and the shard locks it takes are nearly never contended. Packets
//! never cross a thread: a worker reads a packet, asks its engine, and writes
//! it to its own queue of the egress port. Control messages (a new policy, a
//! stats request, shutdown) arrive on a channel with a mio `Waker`; the same
//! waker tells the worker that a pending flow it holds was decided, and the
//! worker itself releases that flow's held packets (SPEC §10).
//!
//! The loop reads in bounded batches per port (fairness between ports),
//! reads the clock once per batch, and drives expiry from the same loop. The
//! read calls are in `Worker::pump` only; every write goes through the
//! worker's [`Writer`], which queues a loop turn's writes and hands them to
//! the kernel together (one `io_uring_enter`, [`super::uring`]).

use super::capture::{CaptureMode, CaptureTap, DropNote};
pub use super::clock::Clock;
use super::coalesce::UdpCoalescer;
pub use super::processor::{Processor, process_frame};
use super::uring::{self, Writer};
use super::{Offload, Queue};
use crate::control::queue::EventSender;
use crate::engine::{Engine, Stats, Verdict};
use crate::flow::FlowSelector;
use crate::time::Instant;
use crossbeam_channel::{Receiver, Sender};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tracing::{debug, warn};

/// The token of the control waker.
pub const WAKE: Token = Token(usize::MAX);
/// Packets read from one port before the others get a turn.
const BATCH: usize = 64;
/// How often expiry runs.
const TICK: Duration = Duration::from_millis(100);
/// The largest read: a 64 KiB GSO superframe behind its virtio header.
const MAX_READ: usize = tun_rs::VIRTIO_NET_HDR_LEN + 65_535;

/// I/O counters of one worker, beside the engine's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoStats {
    /// Reads that failed with something other than "would block".
    pub read_errors: u64,
    /// Writes that failed (the packet is lost).
    pub write_errors: u64,
    /// Packets a capture lost because its reader was behind (for the
    /// whole gateway, filled in by the daemon).
    pub capture_lost: u64,
    /// UDP superframes written, merged from forwarded datagrams.
    pub coalesced_superframes: u64,
    /// The datagrams that left inside them.
    pub coalesced_datagrams: u64,
}

impl IoStats {
    /// Adds a worker's counters (the capture's are the gateway's).
    pub fn merge(&mut self, other: &IoStats) {
        self.read_errors += other.read_errors;
        self.write_errors += other.write_errors;
        self.coalesced_superframes += other.coalesced_superframes;
        self.coalesced_datagrams += other.coalesced_datagrams;
    }
}

/// What the control thread asks of a worker.
pub enum Control {
    /// Send a copy of the counters.
    Stats(Sender<(Stats, IoStats)>),
    /// Close the selected flows of the owned shards (reason `admin`) and
    /// send how many.
    Kill(Arc<FlowSelector>, Sender<usize>),
    /// Close every flow of the owned shards (reason shutdown) and exit.
    Shutdown,
    /// Stop reading (packets wait in the TUN queues) and answer once
    /// stopped; then only control messages are handled, until `Resume`,
    /// `Detach` or `Shutdown`.
    Pause(Sender<()>),
    /// Read again after a `Pause`.
    Resume,
    /// Exit without closing any flow: another process, or the state file,
    /// carries them on (SPEC §13).
    Detach,
}

/// One worker.
pub struct Worker<P: Processor = Engine> {
    engine: P,
    queues: Vec<Queue>,
    poll: Poll,
    control: Receiver<Control>,
    events: EventSender,
    clock: Clock,
    io: IoStats,
    /// Bytes of virtio-net header in front of every packet (0 without offload).
    header: usize,
    /// One per port when the ports took UDP segmentation offload: the
    /// datagrams a batch forwards there, merged into superframes.
    coalescers: Vec<UdpCoalescer>,
    /// Where packets go while `tunwall capture` runs.
    capture: Arc<CaptureTap>,
    /// The writes, batched per loop turn through io_uring where it works.
    out: Writer,
}

impl Worker {
    /// Creates the poll and its waker for a worker.
    pub fn poll_and_waker() -> io::Result<(Poll, Arc<Waker>)> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
        Ok((poll, waker))
    }
}

impl<P: Processor> Worker<P> {
    /// A worker over `queues` (its queue of every port, by port index).
    pub fn new(
        engine: P,
        queues: Vec<Queue>,
        poll: Poll,
        control: Receiver<Control>,
        events: EventSender,
        clock: Clock,
        offload: Offload,
    ) -> Worker<P> {
        let coalescers = match offload.udp_gso {
            true => queues.iter().map(|_| UdpCoalescer::default()).collect(),
            false => Vec::new(),
        };
        Worker {
            engine,
            queues,
            poll,
            control,
            events,
            clock,
            io: IoStats::default(),
            header: if offload.vnet_hdr {
                tun_rs::VIRTIO_NET_HDR_LEN
            } else {
                0
            },
            coalescers,
            capture: Arc::new(CaptureTap::default()),
            out: Writer::new(uring::allowed()),
        }
    }

    /// Writes each frame at once (`write(2)`) instead of batching through
    /// io_uring: what a kernel without io_uring gets.
    pub fn with_plain_writes(mut self) -> Worker<P> {
        self.out = Writer::new(false);
        self
    }

    /// Hands packets to `tap` while a capture runs.
    pub fn with_capture(mut self, tap: Arc<CaptureTap>) -> Worker<P> {
        self.capture = tap;
        self
    }

    /// Runs until told to shut down.
    pub fn run(mut self) -> io::Result<()> {
        for (i, q) in self.queues.iter().enumerate() {
            self.poll.registry().register(
                &mut SourceFd(&q.as_raw_fd()),
                Token(i),
                Interest::READABLE,
            )?;
        }
        let mut events = Events::with_capacity(64);
        let mut buf = vec![0u8; MAX_READ];
        // Edge-triggered readiness: a port stays pending until a read would block.
        let mut pending = vec![true; self.queues.len()];
        let mut next_tick = self.clock.now() + TICK;
        let mut capturing = CaptureMode::Off;
        loop {
            let now = self.clock.now();
            let timeout = if pending.iter().any(|p| *p) {
                Duration::ZERO
            } else {
                Duration::from_millis(next_tick.as_millis().saturating_sub(now.as_millis()))
            };
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let mut woken = false;
            for event in events.iter() {
                if event.token() == WAKE {
                    if self.handle_control() {
                        return Ok(());
                    }
                    // After a pause the queues filled without a new edge.
                    pending.fill(true);
                    woken = true;
                } else if let Some(p) = pending.get_mut(event.token().0) {
                    *p = true;
                }
            }
            let now = self.clock.now();
            self.engine.begin_batch();
            self.engine
                .flow_events(self.events.counters().flow_events_wanted());
            // The one look at the capture per batch.
            let mode = self.capture.mode();
            if mode != capturing {
                self.engine.note_drops(mode != CaptureMode::Off);
                capturing = mode;
            }
            let wall = if mode == CaptureMode::Off {
                SystemTime::UNIX_EPOCH
            } else {
                SystemTime::now()
            };
            for (port, pending) in pending.iter_mut().enumerate() {
                if *pending {
                    *pending = self.pump(now, port, &mut buf, mode, wall);
                }
            }
            // Nothing waits to be coalesced past its batch.
            for out in 0..self.coalescers.len() {
                self.flush(out);
            }
            if now >= next_tick {
                self.engine.handle_timeout(now);
                next_tick = now + TICK;
            } else if woken {
                // A pending flow of this worker may have been decided.
                self.engine.apply_completions(now);
            }
            self.release();
            // The turn's writes leave together: one io_uring_enter.
            self.out.submit(&mut self.io.write_errors);
            self.flush_events();
        }
    }

    /// Reads up to a batch from `port`, forwarding what the engine permits.
    /// Returns whether the port may still have packets.
    ///
    /// With offload, a read is a virtio header and a GSO superframe: up to
    /// 64 KiB of one flow's data in one IP packet whose length fields cover
    /// it all. The engine classifies and tracks it once, over its whole
    /// sequence range, and the superframe leaves whole, header and all,
    /// through the egress queue, which has the same offloads: nothing is
    /// split and re-coalesced in between.
    fn pump(
        &mut self,
        now: Instant,
        port: usize,
        buf: &mut [u8],
        capture: CaptureMode,
        wall: SystemTime,
    ) -> bool {
        for _ in 0..BATCH {
            let n = match self.queues[port].recv(buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.io.read_errors += 1;
                    debug!(port, error = %e, "read");
                    return false;
                }
            };
            let Some(verdict) = process_frame(
                &mut self.engine,
                now,
                port as u8,
                self.header,
                &mut buf[..n],
            ) else {
                self.io.read_errors += 1;
                continue;
            };
            if capture != CaptureMode::Off
                && let Some(packet) = buf.get(self.header..n)
            {
                self.capture(capture, wall, port as u8, packet, verdict);
            }
            if let Verdict::Drop(_) = verdict
                && let Some((out, answer)) = self.engine.take_reply()
            {
                self.send_reply(out, &answer);
            }
            if let Verdict::Forward(out) = verdict {
                self.forward(usize::from(out), &buf[..n]);
            }
        }
        true
    }

    /// Writes a forwarded frame to port `out`, or keeps it to leave with
    /// its flow's next datagrams as one superframe.
    fn forward(&mut self, out: usize, frame: &[u8]) {
        if let Some(coalescer) = self.coalescers.get_mut(out) {
            if coalescer.push(frame) {
                return;
            }
            if !coalescer.is_empty() {
                self.flush(out);
                if self.coalescers[out].push(frame) {
                    return;
                }
            }
        }
        self.write(out, frame);
    }

    /// Writes what waits for port `out` to be coalesced.
    fn flush(&mut self, out: usize) {
        let Some(coalescer) = self.coalescers.get_mut(out) else {
            return;
        };
        let datagrams = coalescer.len();
        let Some(frame) = coalescer.take() else {
            return;
        };
        self.out
            .send(&self.queues[out], frame, &mut self.io.write_errors);
        if datagrams > 1 {
            self.io.coalesced_superframes += 1;
            self.io.coalesced_datagrams += datagrams as u64;
        }
    }

    /// Writes one frame to port `out`, after what waits there.
    fn write(&mut self, out: usize, frame: &[u8]) {
        self.flush(out);
        if let Some(queue) = self.queues.get(out) {
            self.out.send(queue, frame, &mut self.io.write_errors);
        }
    }

    /// Writes the answer to a rejected packet (behind a zeroed virtio
    /// header with offload: no GSO, checksums already complete).
    fn send_reply(&mut self, port: u8, answer: &[u8]) {
        let mut frame = vec![0u8; self.header];
        frame.extend_from_slice(answer);
        self.write(usize::from(port), &frame);
    }

    /// Hands a copy of a packet to the capture.
    fn capture(
        &mut self,
        mode: CaptureMode,
        at: SystemTime,
        port: u8,
        packet: &[u8],
        verdict: Verdict,
    ) {
        let dropped = match verdict {
            Verdict::Drop(reason) => {
                let (layer, filter) = self.engine.take_drop().unwrap_or((None, None));
                Some(DropNote {
                    reason,
                    layer,
                    filter,
                })
            }
            Verdict::Forward(_) | Verdict::Held => None,
        };
        if mode == CaptureMode::Discards && dropped.is_none() {
            return;
        }
        self.capture.offer(at, port, packet, dropped);
    }

    /// Writes the packets of pending flows this worker permitted: they
    /// leave from the worker that held them, as any other packet does.
    fn release(&mut self) {
        let (queues, io, writer) = (&self.queues, &mut self.io, &mut self.out);
        self.engine.drain_released(&mut |out, frame| {
            if let Some(queue) = queues.get(usize::from(out)) {
                writer.send(queue, frame, &mut io.write_errors);
            }
        });
    }

    fn flush_events(&mut self) {
        let mut batch = Vec::new();
        self.engine.drain_events(&mut batch);
        // A full queue drops the batch and counts it in the queue's counters.
        self.events.send(batch);
    }

    /// Handles queued control messages; returns true when the worker exits.
    fn handle_control(&mut self) -> bool {
        let mut paused = false;
        loop {
            let message = if paused {
                match self.control.recv() {
                    Ok(m) => m,
                    Err(_) => return true,
                }
            } else {
                match self.control.try_recv() {
                    Ok(m) => m,
                    Err(_) => return false,
                }
            };
            match message {
                Control::Stats(reply) => {
                    let _ = reply.send((self.engine.stats(), self.io));
                }
                Control::Kill(selector, reply) => {
                    let now = self.clock.now();
                    let mut closed = 0;
                    for idx in self.engine.owned_shards() {
                        closed += self.engine.kill(now, idx, &selector);
                        self.flush_events();
                    }
                    let _ = reply.send(closed);
                }
                Control::Shutdown => {
                    let now = self.clock.now();
                    self.release();
                    self.out.submit(&mut self.io.write_errors);
                    self.engine.close_all(now);
                    self.flush_events();
                    return true;
                }
                Control::Pause(done) => {
                    self.flush_events();
                    paused = true;
                    let _ = done.send(());
                }
                Control::Resume => paused = false,
                Control::Detach => {
                    self.flush_events();
                    return true;
                }
            }
        }
    }
}

/// A worker thread as the control side holds it.
pub struct WorkerHandle {
    /// Control messages.
    pub control: Sender<Control>,
    /// Wakes the worker's poll.
    pub waker: Arc<Waker>,
    /// The thread.
    pub thread: Option<std::thread::JoinHandle<()>>,
}

impl WorkerHandle {
    /// Sends a message and wakes the worker.
    pub fn send(&self, message: Control) {
        if self.control.send(message).is_ok()
            && let Err(e) = self.waker.wake()
        {
            warn!(error = %e, "waking a worker");
        }
    }
}
