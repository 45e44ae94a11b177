//! UDP coalescing on write (issue 15): consecutive datagrams of one flow
//! that a batch forwards to the same port leave as one UDP GSO superframe
//! (virtio gso_type UDP_L4). The receiving kernel takes the superframe
//! through its stack once and splits it only at the socket (or at its own
//! egress): one write, one pass through routing and netfilter, one wake-up of
//! the reader, instead of one of each per datagram. Under a flood of small
//! datagrams those per-write costs, not the firewall, are what overflows the
//! TUN queue.
//!
//! wireguard-go and tun-rs coalesce their TUN writes the same way; tun-rs's
//! `handle_gro` is not reused because it takes plain IP packets and re-heads
//! each with a zeroed virtio header (a datagram whose checksum the sender's
//! kernel left partial would leave with a wrong one) and groups by flow
//! across the whole batch. Here only neighbours merge, so the order of
//! packets on a port is exactly the order they were forwarded in.
//!
//! A datagram joins only if its checksum is known good or left to the
//! device (virtio NEEDS_CSUM or DATA_VALID, or verified here): the
//! superframe's checksums are computed by the receiving kernel, which must
//! not make a corrupt datagram look right.

use crate::packet::rewrite::{finish, sum};
use tun_rs::{VIRTIO_NET_HDR_GSO_UDP_L4, VIRTIO_NET_HDR_LEN, VirtioNetHdr};

// virtio_net.h flags and gso types tun-rs does not export.
/// The checksum is left to the device (csum_start, csum_offset).
const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
/// The device validated the checksum (tun sets it for CHECKSUM_UNNECESSARY).
const VIRTIO_NET_HDR_F_DATA_VALID: u8 = 2;
const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;
/// Datagrams per superframe: the kernel refuses more than UDP_MAX_SEGMENTS
/// (64 before Linux 6.11, 128 since).
const MAX_SEGMENTS: usize = 64;
/// The largest IP packet (IPv4 total length, IPv6 payload length).
const MAX_PACKET: usize = 65_535;
const UDP: u8 = 17;
const UDP_HEADER: usize = 8;

/// One datagram's headers as far as coalescing needs them.
struct Datagram {
    /// IP header length (20 for IPv4 without options, 40 for IPv6 without
    /// extension headers; anything else is not coalesced).
    ip_header: usize,
    /// Payload bytes after the UDP header.
    payload: usize,
}

/// The datagram in `frame` (virtio header, then the IP packet) if it may
/// join a superframe: a whole unfragmented UDP datagram, not itself a
/// superframe, with a payload, whose checksum is left to the device or good.
fn datagram(frame: &[u8]) -> Option<Datagram> {
    let (header, packet) = frame.split_at_checked(VIRTIO_NET_HDR_LEN)?;
    let (flags, gso_type) = (header[0], header[1]);
    if gso_type != VIRTIO_NET_HDR_GSO_NONE {
        return None;
    }
    let ip_header = match packet.first()? >> 4 {
        4 if packet[0] == 0x45
            && packet.len() >= 20 + UDP_HEADER
            && usize::from(u16::from_be_bytes([packet[2], packet[3]])) == packet.len()
            // Neither more fragments nor an offset.
            && packet[6] & 0x3f == 0
            && packet[7] == 0
            && packet[9] == UDP =>
        {
            20
        }
        6 if packet.len() >= 40 + UDP_HEADER
            && usize::from(u16::from_be_bytes([packet[4], packet[5]])) + 40 == packet.len()
            && packet[6] == UDP =>
        {
            40
        }
        _ => return None,
    };
    let udp = &packet[ip_header..];
    if usize::from(u16::from_be_bytes([udp[4], udp[5]])) != udp.len() || udp.len() == UDP_HEADER {
        return None;
    }
    let checked = if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
        let start = u16::from_le_bytes([header[6], header[7]]);
        let offset = u16::from_le_bytes([header[8], header[9]]);
        usize::from(start) == ip_header && offset == 6
    } else {
        flags & VIRTIO_NET_HDR_F_DATA_VALID != 0 || checksum_is_good(packet, ip_header)
    };
    checked.then_some(Datagram {
        ip_header,
        payload: udp.len() - UDP_HEADER,
    })
}

/// Whether a complete UDP checksum verifies. A UDP/IPv4 datagram without
/// one (zero) is left alone: coalescing would give it one.
fn checksum_is_good(packet: &[u8], ip_header: usize) -> bool {
    let udp = &packet[ip_header..];
    if udp[6..8] == [0, 0] {
        return false;
    }
    finish(pseudo_header(packet, ip_header, udp.len()) + sum(udp)) == 0
}

/// The unfolded sum of the UDP pseudo-header of `packet` with length `len`.
fn pseudo_header(packet: &[u8], ip_header: usize, len: usize) -> u32 {
    let addresses = if ip_header == 20 {
        &packet[12..20]
    } else {
        &packet[8..40]
    };
    sum(addresses) + u32::from(UDP) + (len >> 16) as u32 + (len & 0xffff) as u32
}

/// Whether two packets with `ip_header` bytes of IP header belong in one
/// superframe: every field the kernel copies into each segment equal (IPv4:
/// version, TOS/ECN, DF, TTL, protocol, addresses; IPv6: traffic class, flow
/// label, next header, hop limit, addresses) and the same ports. The IPv4
/// identification is not compared: the kernel numbers the segments from the
/// first one's.
fn same_flow(a: &[u8], b: &[u8], ip_header: usize) -> bool {
    let fields = if ip_header == 20 {
        a[..2] == b[..2] && a[6] == b[6] && a[8..10] == b[8..10] && a[12..20] == b[12..20]
    } else {
        a[..4] == b[..4] && a[6..40] == b[6..40]
    };
    fields && a[ip_header..ip_header + 4] == b[ip_header..ip_header + 4]
}

/// The superframe being built for one egress port.
#[derive(Default)]
pub struct UdpCoalescer {
    /// The first datagram's frame with the later ones' payloads appended.
    frame: Vec<u8>,
    segments: usize,
    ip_header: usize,
    /// The payload of a full segment (the first datagram's).
    segment: usize,
    /// A shorter datagram joined: it must be the last.
    closed: bool,
}

impl UdpCoalescer {
    /// Whether datagrams wait to be written.
    pub fn is_empty(&self) -> bool {
        self.segments == 0
    }

    /// How many datagrams wait.
    pub fn len(&self) -> usize {
        self.segments
    }

    /// Takes `frame` (virtio header and IP packet) into the superframe, or
    /// starts one with it when none waits. False if it cannot join: the
    /// caller writes what waits ([`UdpCoalescer::take`]) and offers the
    /// frame again, or writes it alone.
    pub fn push(&mut self, frame: &[u8]) -> bool {
        let Some(d) = datagram(frame) else {
            return false;
        };
        if self.segments == 0 {
            self.frame.clear();
            self.frame.extend_from_slice(frame);
            self.segments = 1;
            self.ip_header = d.ip_header;
            self.segment = d.payload;
            self.closed = false;
            return true;
        }
        let packet = &frame[VIRTIO_NET_HDR_LEN..];
        let fits = !self.closed
            && self.segments < MAX_SEGMENTS
            && d.ip_header == self.ip_header
            && d.payload <= self.segment
            && self.frame.len() - VIRTIO_NET_HDR_LEN + d.payload <= MAX_PACKET
            && same_flow(&self.frame[VIRTIO_NET_HDR_LEN..], packet, d.ip_header);
        if !fits {
            return false;
        }
        self.frame
            .extend_from_slice(&packet[d.ip_header + UDP_HEADER..]);
        self.segments += 1;
        self.closed = d.payload < self.segment;
        true
    }

    /// The frame to write for what waits: the datagram as it came if it
    /// is alone, else the superframe with its lengths, IPv4 header checksum,
    /// partial UDP checksum and virtio header. Empties the coalescer; `None`
    /// when nothing waits.
    pub fn take(&mut self) -> Option<&[u8]> {
        let segments = std::mem::take(&mut self.segments);
        match segments {
            0 => return None,
            1 => return Some(&self.frame),
            _ => {}
        }
        let ip_header = self.ip_header;
        let (header, packet) = self.frame.split_at_mut(VIRTIO_NET_HDR_LEN);
        let len = packet.len();
        let udp_len = len - ip_header;
        if ip_header == 20 {
            packet[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            packet[10..12].fill(0);
            let check = finish(sum(&packet[..20]));
            packet[10..12].copy_from_slice(&check.to_be_bytes());
        } else {
            packet[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
        }
        packet[ip_header + 4..ip_header + 6].copy_from_slice(&(udp_len as u16).to_be_bytes());
        // CHECKSUM_PARTIAL: the folded pseudo-header sum, not its complement.
        let partial = !finish(pseudo_header(packet, ip_header, udp_len));
        packet[ip_header + 6..ip_header + 8].copy_from_slice(&partial.to_be_bytes());
        let virtio = VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type: VIRTIO_NET_HDR_GSO_UDP_L4,
            hdr_len: (ip_header + UDP_HEADER) as u16,
            gso_size: self.segment as u16,
            csum_start: ip_header as u16,
            csum_offset: 6,
        };
        virtio.encode(header).ok()?;
        Some(&self.frame)
    }
}
