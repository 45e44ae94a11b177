//! Address translation in place, with incremental checksums (RFC 1624).
//!
//! Only the changed 16-bit words enter a checksum update: `HC' = ~(~HC +
//! ~m + m')` (RFC 1624 eqn. 3), so a 64 KiB superframe costs what a small
//! packet does. Every rewritten field (addresses, ports, the ICMP query id)
//! sits at an even offset of the data its checksum covers, so word
//! arithmetic applies directly.
//!
//! Special cases:
//! * a UDP/IPv4 checksum of zero means "none" and stays zero; a computed
//!   zero is sent as `0xffff`;
//! * a partial checksum (an offloaded frame whose virtio header says
//!   `NEEDS_CSUM`) holds the folded pseudo-header sum, not its complement,
//!   and the device adds the transport header and payload itself: only the
//!   pseudo-header (address) changes enter it, uncomplemented (Linux's
//!   `inet_proto_csum_replace4` with `CHECKSUM_PARTIAL`);
//! * a later fragment has no transport header: only its IP header changes;
//! * an ICMP error has its quoted header translated too: the quoted IP
//!   header's checksum and the quoted transport checksum (when the quote
//!   holds it) are updated incrementally, the error's own ICMP checksum is
//!   recomputed (the message is small and rare).

use super::{Fragment, IpVersion, Packet, RawAddr, proto};

/// What a packet's endpoints become.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoints {
    /// Source address.
    pub src: RawAddr,
    /// Destination address.
    pub dst: RawAddr,
    /// Source and destination port (TCP and UDP).
    pub ports: (u16, u16),
    /// The ICMP query id (ICMP echo and other queries).
    pub icmp_id: u16,
}

impl Endpoints {
    /// The endpoints `packet` carries.
    pub fn of(packet: &Packet) -> Endpoints {
        Endpoints {
            src: packet.src,
            dst: packet.dst,
            ports: packet.ports().unwrap_or_default(),
            icmp_id: match packet.transport {
                super::Transport::Icmp { id, .. } => id,
                _ => 0,
            },
        }
    }
}

/// Whether `packet` carries `from` in every field [`Deltas::between`] reads
/// (so deltas computed from `from` hold for it).
#[inline]
pub fn carries(packet: &Packet, from: &Endpoints) -> bool {
    packet.src == from.src
        && packet.dst == from.dst
        && match packet.transport {
            super::Transport::Icmp { id, .. } => id == from.icmp_id,
            _ => packet.ports().is_none_or(|ports| ports == from.ports),
        }
}

/// A running one's-complement checksum delta: the sum of `~old + new` over
/// every changed word.
#[derive(Clone, Copy, Debug, Default)]
struct Delta(u32);

impl Delta {
    /// Adds the change of `old` to `new` (of equal, even length).
    #[inline]
    fn add(&mut self, old: &[u8], new: &[u8]) {
        let mut s = self.0;
        for i in (0..old.len().min(new.len()) & !1).step_by(2) {
            s += u32::from(!u16::from_be_bytes([old[i], old[i + 1]]));
            s += u32::from(u16::from_be_bytes([new[i], new[i + 1]]));
        }
        self.0 = fold32(s);
    }

    fn merged(self, other: Delta) -> Delta {
        Delta(fold32(self.0 + other.0))
    }

    /// Applies the delta to a stored checksum (`~sum`).
    fn apply(self, check: u16) -> u16 {
        !fold(u32::from(!check) + self.0)
    }

    /// Applies the delta to a partial checksum (the uncomplemented sum).
    fn apply_partial(self, partial: u16) -> u16 {
        fold(u32::from(partial) + self.0)
    }
}

fn word(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], *b.get(1).unwrap_or(&0)])
}

fn fold32(mut s: u32) -> u32 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s
}

fn fold(s: u32) -> u16 {
    fold32(s) as u16
}

/// The one's-complement sum of `data` as big-endian words (an odd last byte
/// is padded with zero), unfolded.
pub fn sum(data: &[u8]) -> u32 {
    let mut s = 0u64;
    for w in data.chunks(2) {
        s += u64::from(word(w));
    }
    while s > 0xffff_ffff {
        s = (s & 0xffff_ffff) + (s >> 32);
    }
    fold32((s & 0xffff) as u32 + (s >> 16) as u32)
}

/// The folded one's-complement sum of a pseudo-header.
pub fn pseudo_sum(version: IpVersion, src: &RawAddr, dst: &RawAddr, protocol: u8, len: u32) -> u32 {
    let n = addr_len(version);
    let mut s = sum(&src[..n]) + sum(&dst[..n]) + u32::from(protocol);
    s += (len >> 16) + (len & 0xffff);
    fold32(s)
}

/// The checksum (`~sum`) of a finished sum.
pub fn finish(s: u32) -> u16 {
    !fold(s)
}

fn addr_len(version: IpVersion) -> usize {
    match version {
        IpVersion::V4 => 4,
        IpVersion::V6 => 16,
    }
}

fn addr_offsets(version: IpVersion) -> (usize, usize) {
    match version {
        IpVersion::V4 => (12, 16),
        IpVersion::V6 => (8, 24),
    }
}

/// An address field as a [`RawAddr`] (IPv4 in the first four bytes).
fn raw(field: &[u8]) -> RawAddr {
    let mut a = RawAddr::default();
    a[..field.len()].copy_from_slice(field);
    a
}

fn read16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn write16(b: &mut [u8], at: usize, v: u16) {
    if let Some(s) = b.get_mut(at..at + 2) {
        s.copy_from_slice(&v.to_be_bytes());
    }
}

/// Replaces `len` bytes at `at` with `new`, adding the change to `delta`.
fn replace(b: &mut [u8], at: usize, new: &[u8], delta: &mut Delta) -> Option<()> {
    let field = b.get_mut(at..at + new.len())?;
    delta.add(field, new);
    field.copy_from_slice(new);
    Some(())
}

/// Rewrites an IP header's addresses (and the IPv4 header checksum) and
/// returns the pseudo-header delta.
fn rewrite_ip(b: &mut [u8], version: IpVersion, src: &RawAddr, dst: &RawAddr) -> Option<Delta> {
    let n = addr_len(version);
    let (s, d) = addr_offsets(version);
    let mut delta = Delta::default();
    replace(b, s, &src[..n], &mut delta)?;
    replace(b, d, &dst[..n], &mut delta)?;
    if version == IpVersion::V4 {
        let check = read16(b, 10)?;
        write16(b, 10, delta.apply(check));
    }
    Some(delta)
}

/// Where a transport protocol keeps what translation changes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum L4 {
    /// Ports at 0 and 2, checksum at `check` (with the pseudo-header).
    Ports { check: usize, udp: bool },
    /// An ICMP query: id at 4, checksum at 2; `pseudo` for ICMPv6.
    IcmpQuery { pseudo: bool },
    /// ICMPv6 without an id: only the pseudo-header changes its checksum.
    Icmpv6,
    /// Nothing translation touches beyond the IP header.
    Opaque,
}

fn l4_kind(version: IpVersion, protocol: u8, icmp_type: Option<u8>) -> L4 {
    match (protocol, version) {
        (proto::TCP, _) => L4::Ports {
            check: 16,
            udp: false,
        },
        (proto::UDP, _) => L4::Ports {
            check: 6,
            udp: true,
        },
        (proto::ICMP, IpVersion::V4) | (proto::ICMPV6, IpVersion::V6) => {
            let pseudo = version == IpVersion::V6;
            match icmp_type.map(|t| super::icmp_class(version, t)) {
                Some(super::IcmpClass::Query { .. }) => L4::IcmpQuery { pseudo },
                _ if pseudo => L4::Icmpv6,
                _ => L4::Opaque,
            }
        }
        _ => L4::Opaque,
    }
}

fn port_bytes(ports: (u16, u16)) -> [u8; 4] {
    let mut b = [0u8; 4];
    b[..2].copy_from_slice(&ports.0.to_be_bytes());
    b[2..].copy_from_slice(&ports.1.to_be_bytes());
    b
}

/// The checksum changes of rewriting packets from one set of endpoints to
/// another. Both views of a translated flow are fixed for its life, so the
/// engine computes these once per flow and direction: the per-packet
/// rewrite then writes the new fields and adds (RFC 1624), reading nothing
/// but the checksums.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Deltas {
    /// The pseudo-header (address) change, which is also the IPv4 header's.
    pseudo: u16,
    /// The transport checksum's: the pseudo-header's plus that of the ports
    /// (TCP, UDP) or of the query id (ICMP; ICMPv4 has no pseudo-header).
    l4: u16,
}

impl Deltas {
    /// From packets carrying `from` to `to`, for the flow's protocol.
    pub fn between(version: IpVersion, protocol: u8, from: &Endpoints, to: &Endpoints) -> Deltas {
        let n = addr_len(version);
        let mut pseudo = Delta::default();
        pseudo.add(&from.src[..n], &to.src[..n]);
        pseudo.add(&from.dst[..n], &to.dst[..n]);
        let mut l4 = Delta::default();
        match (protocol, version) {
            (proto::TCP | proto::UDP, _) => {
                l4.add(&port_bytes(from.ports), &port_bytes(to.ports));
                l4 = l4.merged(pseudo);
            }
            (proto::ICMP, IpVersion::V4) => {
                l4.add(&from.icmp_id.to_be_bytes(), &to.icmp_id.to_be_bytes());
            }
            (proto::ICMPV6, IpVersion::V6) => {
                l4.add(&from.icmp_id.to_be_bytes(), &to.icmp_id.to_be_bytes());
                l4 = l4.merged(pseudo);
            }
            _ => l4 = pseudo,
        }
        Deltas {
            pseudo: pseudo.0 as u16,
            l4: l4.0 as u16,
        }
    }

    fn pseudo(self) -> Delta {
        Delta(u32::from(self.pseudo))
    }

    fn l4(self) -> Delta {
        Delta(u32::from(self.l4))
    }
}

/// Rewrites the transport header at `l4` (ports or query id, then the
/// checksum by `d`). `partial`: the checksum field holds a partial
/// (pseudo-header) sum.
fn rewrite_l4(
    b: &mut [u8],
    l4: usize,
    kind: L4,
    to: &Endpoints,
    d: Deltas,
    partial: bool,
) -> Option<()> {
    let (at, new) = match kind {
        L4::Ports { check, udp } => {
            b.get_mut(l4..l4 + 4)?
                .copy_from_slice(&port_bytes(to.ports));
            let old = read16(b, l4 + check)?;
            let new = if partial {
                // The device sums the header (ports included) itself.
                d.pseudo().apply_partial(old)
            } else if udp && old == 0 {
                // UDP/IPv4 without a checksum stays without one.
                0
            } else {
                match d.l4().apply(old) {
                    0 if udp => 0xffff,
                    c => c,
                }
            };
            (l4 + check, new)
        }
        L4::IcmpQuery { .. } => {
            b.get_mut(l4 + 4..l4 + 6)?
                .copy_from_slice(&to.icmp_id.to_be_bytes());
            let old = read16(b, l4 + 2)?;
            let new = if partial {
                d.pseudo().apply_partial(old)
            } else {
                d.l4().apply(old)
            };
            (l4 + 2, new)
        }
        L4::Icmpv6 => {
            let old = read16(b, l4 + 2)?;
            let new = if partial {
                d.pseudo().apply_partial(old)
            } else {
                d.pseudo().apply(old)
            };
            (l4 + 2, new)
        }
        L4::Opaque => return Some(()),
    };
    write16(b, at, new);
    Some(())
}

fn icmp_type(packet: &Packet) -> Option<u8> {
    match packet.transport {
        super::Transport::Icmp { icmp_type, .. } => Some(icmp_type),
        _ => None,
    }
}

/// Translates a parsed packet in place to `to`. Returns `None` (the packet
/// may be half-rewritten) only if the bytes do not hold what `packet` says.
pub fn translate(b: &mut [u8], packet: &Packet, to: &Endpoints, partial: bool) -> Option<()> {
    let d = Deltas::between(packet.version, packet.protocol, &Endpoints::of(packet), to);
    translate_with(b, packet, to, d, partial)
}

/// Translates a parsed packet in place to `to` with deltas computed for
/// the endpoints it carries (`Deltas::between` them and `to`): the
/// established path of a translated flow, whose packets carry exactly the
/// endpoints of its key.
#[inline(always)]
pub fn translate_with(
    b: &mut [u8],
    packet: &Packet,
    to: &Endpoints,
    d: Deltas,
    partial: bool,
) -> Option<()> {
    let (check, udp) = match packet.protocol {
        proto::UDP => (6, true),
        proto::TCP => (16, false),
        _ => return translate_general(b, packet, to, d, partial),
    };
    if matches!(packet.fragment, Fragment::Later { .. }) {
        return translate_general(b, packet, to, d, partial);
    }
    // TCP and UDP, the established path's common case: every field at a
    // fixed offset, bounds checked once before anything is written.
    let (ip, l4) = b.split_at_mut_checked(usize::from(packet.l4_offset))?;
    let l4 = l4.get_mut(..check + 2)?;
    match packet.version {
        IpVersion::V4 => {
            let h: &mut [u8; 20] = ip.get_mut(..20)?.try_into().ok()?;
            h[12..16].copy_from_slice(&to.src[..4]);
            h[16..20].copy_from_slice(&to.dst[..4]);
            let old = u16::from_be_bytes([h[10], h[11]]);
            h[10..12].copy_from_slice(&(!add1c(!old, d.pseudo)).to_be_bytes());
        }
        IpVersion::V6 => {
            let h: &mut [u8; 40] = ip.get_mut(..40)?.try_into().ok()?;
            h[8..24].copy_from_slice(&to.src);
            h[24..40].copy_from_slice(&to.dst);
        }
    }
    l4[..4].copy_from_slice(&port_bytes(to.ports));
    update_transport_check(l4, check, udp, d, partial);
    Some(())
}

/// Updates the TCP or UDP checksum at `check` of `l4` (at least `check + 2`
/// bytes) by `d`, with a single fold (a delta and a checksum are both at
/// most 0xffff, so their sum needs one carry).
#[inline(always)]
fn update_transport_check(l4: &mut [u8], check: usize, udp: bool, d: Deltas, partial: bool) {
    let old = u16::from_be_bytes([l4[check], l4[check + 1]]);
    let new = if partial {
        // The device sums the header (ports included) itself.
        add1c(old, d.pseudo)
    } else if udp && old == 0 {
        // UDP/IPv4 without a checksum stays without one.
        0
    } else {
        match !add1c(!old, d.l4) {
            0 if udp => 0xffff,
            c => c,
        }
    };
    l4[check..check + 2].copy_from_slice(&new.to_be_bytes());
}

/// How a translated flow's packets that carry its endpoints are rewritten
/// one way, worked out once per flow: both views are fixed for its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowRewrite {
    /// IPv4 TCP and UDP, the common case: the new header fields as laid out.
    Ports4(Ports4),
    /// Any other flow: the checksum deltas (the fields come from its key).
    Deltas(Deltas),
}

/// The rewrite of an IPv4 TCP or UDP packet that carries the endpoints its
/// deltas were computed from (a translated flow's established path), kept
/// as the header lays it out: the two addresses are one 8-byte field at
/// offset 12, the ports one 4-byte field, applied without looking at the
/// protocol or the version again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ports4 {
    addrs: [u8; 8],
    ports: [u8; 4],
    deltas: Deltas,
    udp: bool,
}

impl Ports4 {
    /// To source `src`, destination `dst` (IPv4, in the first four bytes)
    /// and `ports`, for a TCP (`udp` false) or UDP packet.
    #[inline]
    pub fn new(src: &RawAddr, dst: &RawAddr, ports: (u16, u16), udp: bool, deltas: Deltas) -> Self {
        let mut addrs = [0u8; 8];
        addrs[..4].copy_from_slice(&src[..4]);
        addrs[4..].copy_from_slice(&dst[..4]);
        Ports4 {
            addrs,
            ports: port_bytes(ports),
            deltas,
            udp,
        }
    }

    /// The endpoints this rewrite gives a packet.
    pub fn endpoints(&self) -> Endpoints {
        let (src, dst) = self.addrs.split_at(4);
        Endpoints {
            src: raw(src),
            dst: raw(dst),
            ports: (
                u16::from_be_bytes([self.ports[0], self.ports[1]]),
                u16::from_be_bytes([self.ports[2], self.ports[3]]),
            ),
            icmp_id: 0,
        }
    }

    /// The checksum deltas it applies.
    pub fn deltas(&self) -> Deltas {
        self.deltas
    }

    /// Rewrites an IPv4 TCP or UDP packet (not a later fragment) whose
    /// transport header starts at `l4_offset`: the same bytes as
    /// [`translate_with`]; `None`, with nothing written, if the bytes are
    /// too short.
    #[inline(always)]
    pub fn apply(&self, b: &mut [u8], l4_offset: usize, partial: bool) -> Option<()> {
        let check = if self.udp { 6 } else { 16 };
        let (ip, l4) = b.split_at_mut_checked(l4_offset)?;
        let h: &mut [u8; 20] = ip.get_mut(..20)?.try_into().ok()?;
        let l4 = l4.get_mut(..check + 2)?;
        h[12..20].copy_from_slice(&self.addrs);
        let old = u16::from_be_bytes([h[10], h[11]]);
        h[10..12].copy_from_slice(&(!add1c(!old, self.deltas.pseudo)).to_be_bytes());
        l4[..4].copy_from_slice(&self.ports);
        update_transport_check(l4, check, self.udp, self.deltas, partial);
        Some(())
    }
}

/// The one's-complement sum of two 16-bit values (one carry folds it).
#[inline]
fn add1c(a: u16, b: u16) -> u16 {
    let s = u32::from(a) + u32::from(b);
    ((s & 0xffff) + (s >> 16)) as u16
}

/// [`translate_with`] for every protocol and fragment.
fn translate_general(
    b: &mut [u8],
    packet: &Packet,
    to: &Endpoints,
    d: Deltas,
    partial: bool,
) -> Option<()> {
    let version = packet.version;
    // Fixed-size copies per family (a length known at compile time is a
    // move, not a call).
    match version {
        IpVersion::V4 => {
            let h: &mut [u8; 20] = b.get_mut(..20)?.try_into().ok()?;
            h[12..16].copy_from_slice(&to.src[..4]);
            h[16..20].copy_from_slice(&to.dst[..4]);
            let check = d.pseudo().apply(u16::from_be_bytes([h[10], h[11]]));
            h[10..12].copy_from_slice(&check.to_be_bytes());
        }
        IpVersion::V6 => {
            let h: &mut [u8; 40] = b.get_mut(..40)?.try_into().ok()?;
            h[8..24].copy_from_slice(&to.src);
            h[24..40].copy_from_slice(&to.dst);
        }
    }
    if matches!(packet.fragment, Fragment::Later { .. }) {
        return Some(());
    }
    let kind = l4_kind(version, packet.protocol, icmp_type(packet));
    rewrite_l4(b, usize::from(packet.l4_offset), kind, to, d, partial)
}

/// Translates an ICMP error in place: the outer source and destination
/// become `outer` (source, destination) and the quoted packet's endpoints
/// `quoted`; the ICMP checksum is recomputed.
pub fn translate_icmp_error(
    b: &mut [u8],
    packet: &Packet,
    outer: (RawAddr, RawAddr),
    quoted: &Endpoints,
) -> Option<()> {
    let version = packet.version;
    rewrite_ip(b, version, &outer.0, &outer.1)?;
    let l4 = usize::from(packet.l4_offset);
    let end = (packet.len as usize).min(b.len());
    let inner = l4 + 8;
    let quote = b.get(inner..end)?;
    let (ip, _) = etherparse::LaxIpSlice::from_slice(quote).ok()?;
    let inner_protocol = ip.payload().ip_number.0;
    let inner_l4 = inner + (ip.payload().payload.as_ptr() as usize - quote.as_ptr() as usize);
    let inner_type = b.get(inner_l4).copied();
    let (s, t) = addr_offsets(version);
    let n = addr_len(version);
    // The quote's own endpoints (what the fields read now; zero where cut).
    let quote = &b[inner..end];
    let from = Endpoints {
        src: quote.get(s..s + n).map(raw).unwrap_or_default(),
        dst: quote.get(t..t + n).map(raw).unwrap_or_default(),
        ports: (
            read16(b, inner_l4).unwrap_or(0),
            read16(b, inner_l4 + 2).unwrap_or(0),
        ),
        icmp_id: read16(b, inner_l4 + 4).unwrap_or(0),
    };
    rewrite_ip(&mut b[inner..end], version, &quoted.src, &quoted.dst)?;
    // The quote is usually cut short: translate what it holds.
    let kind = l4_kind(version, inner_protocol, inner_type);
    let d = Deltas::between(version, inner_protocol, &from, quoted);
    let _ = rewrite_l4(&mut b[..end], inner_l4, kind, quoted, d, false).or_else(|| {
        // Too short for the checksum: the ports or id alone, if present.
        match kind {
            L4::Ports { .. } => {
                b.get_mut(inner_l4..inner_l4 + 4)?
                    .copy_from_slice(&port_bytes(quoted.ports));
            }
            L4::IcmpQuery { .. } => {
                write16(b, inner_l4 + 4, quoted.icmp_id);
            }
            _ => {}
        }
        Some(())
    });
    write16(b, l4 + 2, 0);
    let mut s = sum(b.get(l4..end)?);
    if version == IpVersion::V6 {
        s += pseudo_sum(
            version,
            &outer.0,
            &outer.1,
            proto::ICMPV6,
            (end - l4) as u32,
        );
    }
    write16(b, l4 + 2, finish(s));
    Some(())
}

#[cfg(test)]
#[path = "rewrite_tests.rs"]
mod tests;
