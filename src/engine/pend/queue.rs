//! The packets held for one pending flow: one buffer per flow, bounded by
//! `pend_queue_packets` and `pend_queue_bytes`, frame headers kept so that
//! a released packet leaves exactly as it came.

use crate::engine::pipeline::Arrival;
use crate::flow::FlowConfig;

/// The longest frame header (the virtio-net header) a held packet may carry.
const MAX_FRAME_HEADER: usize = 16;
/// One held packet: where it lies in its queue's buffer and how it arrived.
#[derive(Clone, Copy)]
pub(super) struct Held {
    pub(super) port: u8,
    pub(super) egress: u8,
    pub(super) swapped: bool,
    pub(super) sent: bool,
    pub(super) start: u32,
    pub(super) header: u16,
    pub(super) len: u32,
}

/// The packets held for one pending flow, in arrival order, frame headers
/// included (a released packet leaves exactly as it came).
pub(in crate::engine) struct Queue {
    pub(super) data: Vec<u8>,
    pub(super) packets: Vec<Held>,
    pub(super) ip_bytes: usize,
}

impl Queue {
    pub(super) fn new(config: &FlowConfig) -> Queue {
        Queue {
            data: Vec::with_capacity(
                config.pend_queue_bytes + config.pend_queue_packets * MAX_FRAME_HEADER,
            ),
            packets: Vec::with_capacity(config.pend_queue_packets),
            ip_bytes: 0,
        }
    }

    /// Copies the packet in; the bounds keep `data` within its capacity.
    pub(super) fn push(&mut self, config: &FlowConfig, a: &Arrival<'_>, swapped: bool) -> bool {
        let (header, bytes) = (a.header, a.bytes);
        if self.packets.len() >= config.pend_queue_packets
            || self.ip_bytes + bytes.len() > config.pend_queue_bytes
            || header.len() > MAX_FRAME_HEADER
        {
            return false;
        }
        let start = self.data.len() as u32;
        self.data.extend_from_slice(header);
        self.data.extend_from_slice(bytes);
        self.packets.push(Held {
            port: a.port,
            egress: a.egress,
            swapped,
            sent: false,
            start,
            header: header.len() as u16,
            len: bytes.len() as u32,
        });
        self.ip_bytes += bytes.len();
        true
    }

    pub(super) fn frame(&self, h: &Held) -> &[u8] {
        let start = h.start as usize;
        &self.data[start..start + usize::from(h.header) + h.len as usize]
    }

    pub(super) fn ip(&self, h: &Held) -> &[u8] {
        &self.frame(h)[usize::from(h.header)..]
    }

    pub(super) fn clear(&mut self) {
        self.data.clear();
        self.packets.clear();
        self.ip_bytes = 0;
    }
}
