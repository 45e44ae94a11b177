//! What a worker runs each packet through: the engine, or (to measure the
//! I/O path alone, `tunwall-copy`) a plain copy; and how a frame read from
//! a TUN queue reaches it.

use crate::engine::{Engine, Stats, Verdict};
use crate::event::Event;
use crate::flow::FlowSelector;
use crate::policy::Layer;
use crate::reason::CloseReason;
use crate::time::Instant;
use std::sync::Arc;

/// What a worker runs each packet through: the engine, or (to measure the
/// I/O path alone) a plain copy.
pub trait Processor: Send {
    /// The verdict for one packet that arrived on `port`.
    fn process(&mut self, now: Instant, port: u8, packet: &mut [u8]) -> Verdict;
    /// The verdict for a packet read behind a frame header (`header` is
    /// empty without offload).
    fn process_framed(
        &mut self,
        now: Instant,
        port: u8,
        _header: &[u8],
        packet: &mut [u8],
    ) -> Verdict {
        self.process(now, port, packet)
    }
    /// Periodic work (expiry).
    fn handle_timeout(&mut self, _now: Instant) {}
    /// Applies decisions on held packets made elsewhere (pending flows).
    fn apply_completions(&mut self, _now: Instant) {}
    /// Hands the packets released since the last call to `out` (egress
    /// port, frame as it was read).
    fn drain_released(&mut self, _out: &mut dyn FnMut(u8, &[u8])) {}
    /// Moves the pending events to `out`.
    fn drain_events(&mut self, _out: &mut Vec<Event>) {}
    /// The start of a batch: pick up the gateway's policy.
    fn begin_batch(&mut self) {}
    /// The counters.
    fn stats(&self) -> Stats {
        Stats::new(0)
    }
    /// Shutdown: close what the processor owns.
    fn close_all(&mut self, _now: Instant) {}
    /// The shards whose flows this processor closes (`tunwall kill`).
    fn owned_shards(&self) -> Vec<usize> {
        Vec::new()
    }
    /// Closes the flows of shard `idx` that `selector` picks with reason
    /// `admin`; returns how many.
    fn kill(&mut self, _now: Instant, _idx: usize, _selector: &FlowSelector) -> usize {
        0
    }
    /// Keep the layer and filter of drops for [`Processor::take_drop`].
    fn note_drops(&mut self, _on: bool) {}
    /// Build the flow lifecycle events (something takes them).
    fn flow_events(&mut self, _on: bool) {}
    /// The layer and filter of the last drop.
    fn take_drop(&mut self) -> Option<(Option<Layer>, Option<Arc<str>>)> {
        None
    }
    /// The answer to a rejected packet: (port, packet).
    fn take_reply(&mut self) -> Option<(u8, Vec<u8>)> {
        None
    }
}

impl Processor for Engine {
    fn process(&mut self, now: Instant, port: u8, packet: &mut [u8]) -> Verdict {
        Engine::process(self, now, port, packet)
    }

    fn process_framed(
        &mut self,
        now: Instant,
        port: u8,
        header: &[u8],
        packet: &mut [u8],
    ) -> Verdict {
        Engine::process_framed(self, now, port, header, packet)
    }

    fn handle_timeout(&mut self, now: Instant) {
        Engine::handle_timeout(self, now);
    }

    fn apply_completions(&mut self, now: Instant) {
        Engine::apply_completions(self, now);
    }

    fn drain_released(&mut self, out: &mut dyn FnMut(u8, &[u8])) {
        Engine::drain_released(self, out);
    }

    fn drain_events(&mut self, out: &mut Vec<Event>) {
        out.extend(Engine::drain_events(self));
    }

    fn begin_batch(&mut self) {
        Engine::refresh_policy(self);
    }

    fn stats(&self) -> Stats {
        Engine::stats(self).clone()
    }

    fn close_all(&mut self, now: Instant) {
        Engine::close_all(self, now, false);
    }

    fn owned_shards(&self) -> Vec<usize> {
        Engine::owned_shards(self)
    }

    fn kill(&mut self, now: Instant, idx: usize, selector: &FlowSelector) -> usize {
        self.close_in_shard(now, idx, selector, CloseReason::Admin)
    }

    fn flow_events(&mut self, on: bool) {
        Engine::flow_events(self, on);
    }

    fn note_drops(&mut self, on: bool) {
        Engine::note_drops(self, on);
    }

    fn take_drop(&mut self) -> Option<(Option<Layer>, Option<Arc<str>>)> {
        Engine::take_drop(self)
    }

    fn take_reply(&mut self) -> Option<(u8, Vec<u8>)> {
        Engine::take_reply(self)
    }
}

/// One frame as a queue returns it: `header` bytes of virtio-net header
/// (0 without offload), then the IP packet. The processor sees the IP packet
/// only: a TCP or UDP GSO superframe (gso_type TCPV4/TCPV6/UDP_L4) is one IP
/// packet whose length fields cover all its segments, so it is classified
/// and counted once, and leaves whole with its header unchanged (the egress
/// queue has the same offloads, and the receiving kernel segments it).
/// `None` for a frame shorter than its header.
pub fn process_frame<P: Processor>(
    processor: &mut P,
    now: Instant,
    port: u8,
    header: usize,
    frame: &mut [u8],
) -> Option<Verdict> {
    if frame.len() < header {
        return None;
    }
    let (header, packet) = frame.split_at_mut(header);
    Some(processor.process_framed(now, port, header, packet))
}
