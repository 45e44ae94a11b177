//! TCP connection tracking: handshake, teardown and sequence windows.
//!
//! The window check is pf's (`pf_tcp_track_full`, after Guido van Rooij's
//! "Real Stateful TCP Packet Filtering in IP Filter"): each peer keeps the
//! highest sequence end it sent (`seqlo`), the highest end the other side
//! allows it to send (`seqhi`, from the other side's ACK plus window) and its
//! largest advertised window. A segment passes when
//!
//! 1. its last octet is inside the receiver's advertised window
//!    (`end <= src.seqhi`),
//! 2. it starts at most one maximum window before `src.seqlo` (retransmits),
//! 3. its ACK is at most one maximum window (plus a segment) behind or ahead
//!    of what the other side has sent.
//!
//! Window scaling applies only when both SYNs carried the option, and never to
//! the window of a SYN itself (RFC 7323). The flow-level state is derived from
//! per-peer flags, which makes simultaneous open, retransmitted SYNs and
//! half-closes fall out without special cases.

use crate::packet::TcpSegment;
use crate::packet::tcp_flags::{ACK, FIN, RST, SYN};
use crate::reason::{DropReason, named_enum};

/// Slack on the ACK check: one maximum window plus one segment (pf's MAXACKWINDOW).
const MAX_ACK_WINDOW: i64 = 0xffff + 1500;

const INIT: u8 = 0x01;
const SYN_SEEN: u8 = 0x02;
const SYN_ACKED: u8 = 0x04;
const FIN_SEEN: u8 = 0x08;
const FIN_ACKED: u8 = 0x10;
const RST_SEEN: u8 = 0x20;
const HAS_WSCALE: u8 = 0x40;
/// Set on the initiator: windows are not enforced for this flow (picked up mid-stream).
const LIBERAL: u8 = 0x80;

/// One direction's sequence-space bookkeeping. 16 bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct TcpPeer {
    /// Highest sequence end this peer has sent.
    pub seqlo: u32,
    /// Highest sequence end this peer may send (other's ack + window).
    pub seqhi: u32,
    /// Highest acknowledgment this peer has sent: the next sequence number
    /// it expects from the other side, where a RST to it must start (0
    /// until it sent one).
    pub acked: u32,
    /// Largest window this peer advertised, unscaled.
    pub max_win: u16,
    /// Window-scale shift from this peer's SYN.
    pub wscale: u8,
    pub(super) flags: u8,
}

impl TcpPeer {
    const UNSEEN: TcpPeer = TcpPeer {
        seqlo: 0,
        seqhi: 1,
        acked: 0,
        max_win: 1,
        wscale: 0,
        flags: 0,
    };

    fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

named_enum! {
    /// The states of SPEC §2, derived from both peers' flags.
    pub enum TcpState {
        /// The initiator's SYN was seen.
        SynSent => "syn_sent",
        /// The responder's SYN (-ACK) was seen.
        SynReceived => "syn_received",
        /// Both SYNs were acknowledged.
        Established => "established",
        /// One side sent FIN.
        FinWait => "fin_wait",
        /// Both sides sent FIN.
        Closing => "closing",
        /// Both FINs were acknowledged.
        TimeWait => "time_wait",
        /// An in-window RST was seen.
        Closed => "closed",
    }
}

/// The tracker of one connection: the initiator's and the responder's peer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct TcpTracker {
    pub(super) peers: [TcpPeer; 2],
}

fn seq_gt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

fn seq_geq(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) >= 0
}

impl TcpTracker {
    /// A tracker with no peer seen (the value of non-TCP flows).
    pub const fn zeroed() -> TcpTracker {
        TcpTracker {
            peers: [TcpPeer {
                seqlo: 0,
                seqhi: 0,
                acked: 0,
                max_win: 0,
                wscale: 0,
                flags: 0,
            }; 2],
        }
    }

    /// A tracker for a connection opened by `syn` (a segment with SYN and no ACK).
    pub fn from_syn(syn: &TcpSegment) -> TcpTracker {
        let mut tracker = TcpTracker {
            peers: [TcpPeer::UNSEEN; 2],
        };
        // The first segment of a fresh tracker always passes.
        let _ = tracker.track(true, syn, true);
        tracker
    }

    /// A tracker for a connection picked up mid-stream (`tcp_loose_pickup`):
    /// treated as established, with windows learned but never enforced because
    /// the window scale of the handshake is unknown.
    pub fn picked_up(first: &TcpSegment) -> TcpTracker {
        let mut tracker = TcpTracker {
            peers: [TcpPeer::UNSEEN; 2],
        };
        tracker.peers[0].flags = LIBERAL | SYN_SEEN | SYN_ACKED;
        tracker.peers[1].flags = SYN_SEEN | SYN_ACKED;
        let _ = tracker.track(true, first, false);
        tracker
    }

    /// The tracker of a flow `first` may open: a SYN opens one; with
    /// `loose_pickup` (conntrack's loose mode) a mid-stream segment does
    /// too; anything else matches no flow and opens none (`tcp_no_flow`).
    pub fn open(first: &TcpSegment, loose_pickup: bool) -> Result<TcpTracker, DropReason> {
        let flags = first.flags;
        if flags & (SYN | ACK | RST | FIN) == SYN {
            Ok(TcpTracker::from_syn(first))
        } else if loose_pickup && flags & (SYN | RST) == 0 && flags & (ACK | FIN) != 0 {
            Ok(TcpTracker::picked_up(first))
        } else {
            Err(DropReason::TcpNoFlow)
        }
    }

    /// Whether `seg` is a new connection's SYN reusing the tuple of this
    /// finished one (`time_wait` or `closed`): the old flow ends and the SYN
    /// is authorized as a new flow (SPEC §2).
    #[inline]
    pub fn reopened_by(&self, seg: &TcpSegment) -> bool {
        seg.flags & (SYN | ACK) == SYN
            && matches!(self.state(), TcpState::TimeWait | TcpState::Closed)
    }

    /// The flow-level state.
    #[inline]
    pub fn state(&self) -> TcpState {
        let [a, b] = &self.peers;
        if a.has(RST_SEEN) || b.has(RST_SEEN) {
            TcpState::Closed
        } else if a.has(FIN_ACKED) && b.has(FIN_ACKED) {
            TcpState::TimeWait
        } else if a.has(FIN_SEEN) && b.has(FIN_SEEN) {
            TcpState::Closing
        } else if a.has(FIN_SEEN) || b.has(FIN_SEEN) {
            TcpState::FinWait
        } else if a.has(SYN_ACKED) && b.has(SYN_ACKED) {
            TcpState::Established
        } else if b.has(SYN_SEEN) {
            TcpState::SynReceived
        } else {
            TcpState::SynSent
        }
    }

    /// Whether the handshake has completed (established, or any later state
    /// reached after it).
    #[inline]
    pub fn handshake_done(&self) -> bool {
        self.peers[0].has(SYN_ACKED) && self.peers[1].has(SYN_ACKED)
    }

    /// The initiator's and responder's bookkeeping, for inspection.
    pub fn peers(&self) -> &[TcpPeer; 2] {
        &self.peers
    }

    /// Tracks one segment. `from_initiator` says which peer sent it;
    /// `enforce` is `tcp_window_tracking`. On error the segment is dropped and
    /// the tracker is unchanged.
    pub fn track(
        &mut self,
        from_initiator: bool,
        seg: &TcpSegment,
        enforce: bool,
    ) -> Result<TcpState, DropReason> {
        self.track_from(self.state(), from_initiator, seg, enforce)
    }

    /// [`TcpTracker::track`] for a tracker whose [`TcpTracker::state`] is
    /// `state` (a flow entry caches it).
    #[inline]
    pub(crate) fn track_from(
        &mut self,
        state: TcpState,
        from_initiator: bool,
        seg: &TcpSegment,
        enforce: bool,
    ) -> Result<TcpState, DropReason> {
        let flags = seg.flags;
        if (flags & SYN != 0 && flags & (RST | FIN) != 0) || flags & (SYN | RST | FIN | ACK) == 0 {
            return Err(DropReason::TcpBadFlags);
        }
        let si = usize::from(!from_initiator);

        // A new attempt from the initiator before any answer (a different ISN
        // on the same tuple) restarts the tracker instead of failing the window.
        if from_initiator
            && state == TcpState::SynSent
            && !self.peers[1].has(INIT)
            && flags & (SYN | ACK) == SYN
            && seg.seq.wrapping_add(1).wrapping_add(seg.payload_len) != self.peers[0].seqlo
        {
            let liberal = self.peers[0].flags & LIBERAL;
            self.peers = [TcpPeer::UNSEEN; 2];
            self.peers[0].flags = liberal;
        }

        // The responder's first segment must answer the SYN: a SYN(-ACK), or a
        // RST that acknowledges the SYN (connection refused, RFC 793).
        if !from_initiator && !self.peers[1].has(INIT) && !self.liberal() {
            if flags & RST != 0 {
                if flags & ACK != 0 && seg.ack == self.peers[0].seqlo {
                    self.peers[1].flags |= RST_SEEN | INIT;
                    return Ok(TcpState::Closed);
                }
                return Err(DropReason::TcpRstOutOfWindow);
            }
            if flags & SYN == 0 {
                return Err(DropReason::TcpInvalidState);
            }
        }

        let liberal = !enforce || self.liberal();
        // Before the window check only a peer's first segment (or a SYN)
        // changes the tracker: any other segment is checked and updated in
        // place; those go through a copy, discarded if they fail.
        if flags & SYN == 0 && self.peers[si].has(INIT) {
            self.window(from_initiator, seg, false, liberal)?;
        } else {
            let mut copy = *self;
            copy.window(from_initiator, seg, true, liberal)?;
            *self = copy;
        }
        // An established connection stays established through a segment
        // without SYN, FIN or RST: such a segment can only set SYN_ACKED
        // (set on both peers already) or FIN_ACKED (only after a FIN).
        if state == TcpState::Established && flags & (SYN | FIN | RST) == 0 {
            debug_assert_eq!(self.state(), TcpState::Established);
            return Ok(TcpState::Established);
        }
        Ok(self.state())
    }

    fn liberal(&self) -> bool {
        self.peers[0].has(LIBERAL)
    }

    /// pf's window check and update (after `learn`ing the sender's first
    /// segment or SYN). A segment out of window leaves the tracker unchanged
    /// unless `liberal`, which updates it anyway. Inlined, as are the
    /// `Window` steps: as calls they cost an established segment ~25
    /// instructions of register saves and restores.
    #[inline(always)]
    fn window(
        &mut self,
        from_initiator: bool,
        seg: &TcpSegment,
        learn: bool,
        liberal: bool,
    ) -> Result<(), DropReason> {
        let [a, b] = &mut self.peers;
        let (src, dst) = if from_initiator { (a, b) } else { (b, a) };
        let mut window = Window::of(src, dst, seg);
        if learn {
            window.learn(src, seg);
        }
        if !window.passes(src, dst, seg) && !liberal {
            return Err(if seg.flags & RST != 0 {
                DropReason::TcpRstOutOfWindow
            } else {
                DropReason::TcpOutOfWindow
            });
        }
        window.apply(src, dst, seg);
        Ok(())
    }
}

/// pf's window check and update of one segment from `src` to `dst`.
struct Window {
    seq: u32,
    /// The sequence number after the segment (data, SYN and FIN count).
    end: u32,
    /// The acknowledgment it carries (without ACK: what `dst` has sent).
    ack: u32,
    /// The sender's window scale, if both SYNs carried the option.
    sws: u32,
    /// The receiver's largest window, scaled.
    dst_max_win: u32,
}

impl Window {
    #[inline(always)]
    fn of(src: &TcpPeer, dst: &TcpPeer, seg: &TcpSegment) -> Window {
        let flags = seg.flags;
        let syn = flags & SYN != 0;
        let (sws, dws) = if !syn && src.has(HAS_WSCALE) && dst.has(HAS_WSCALE) {
            (u32::from(src.wscale), u32::from(dst.wscale))
        } else {
            (0, 0)
        };
        let end = seg
            .seq
            .wrapping_add(seg.payload_len)
            .wrapping_add(u32::from(syn))
            .wrapping_add(u32::from(flags & FIN != 0));
        Window {
            seq: seg.seq,
            end,
            ack: if flags & ACK != 0 { seg.ack } else { dst.seqlo },
            sws,
            dst_max_win: u32::from(dst.max_win) << dws,
        }
    }

    /// The sender's first segment, or a SYN after it: its sequence space
    /// and window scale.
    #[inline(always)]
    fn learn(&self, src: &mut TcpPeer, seg: &TcpSegment) {
        let syn = seg.flags & SYN != 0;
        if !src.has(INIT) {
            src.flags |= INIT;
            if syn && let Some(scale) = seg.wscale {
                src.flags |= HAS_WSCALE;
                src.wscale = scale;
            }
            src.seqlo = self.seq;
            let hi = self.end.wrapping_add(self.dst_max_win.max(1));
            if src.seqhi == 1 || seq_geq(hi, src.seqhi) {
                src.seqhi = hi;
            }
            src.max_win = seg.window.max(1);
        } else if syn
            && !src.has(SYN_SEEN)
            && let Some(scale) = seg.wscale
        {
            // Simultaneous open: this side's first packet was not its SYN.
            src.flags |= HAS_WSCALE;
            src.wscale = scale;
        }
    }

    /// Whether the segment is in window.
    #[inline(always)]
    fn passes(&mut self, src: &TcpPeer, dst: &TcpPeer, seg: &TcpSegment) -> bool {
        if self.seq == self.end {
            // No data, SYN or FIN: only the ACK matters.
            self.seq = src.seqlo;
            self.end = self.seq;
        }
        let (seq, end) = (self.seq, self.end);
        let ackskew = i64::from(dst.seqlo.wrapping_sub(self.ack) as i32);
        let mut in_window = seq_geq(src.seqhi, end)
            && seq_geq(seq, src.seqlo.wrapping_sub(self.dst_max_win))
            && ackskew >= -MAX_ACK_WINDOW
            && ackskew <= MAX_ACK_WINDOW << self.sws;
        if seg.flags & RST != 0 {
            // A RST carries no data, so the easing above would accept any
            // sequence number. It must lie in the receive window (RFC 5961):
            // from the next sequence number the receiver expects (its
            // highest ACK; before it sent one, the sender's highest end) to
            // the window's end. pf's looser check also took RSTs up to a
            // window behind, where a blind attacker's guesses land.
            let floor = if dst.acked != 0 { dst.acked } else { src.seqlo };
            in_window &= seq_geq(seg.seq, floor) && seq_geq(src.seqhi, seg.seq);
        }
        in_window
    }

    /// The update after the check (applied to a liberal flow's segment
    /// whether it passed or not).
    #[inline(always)]
    fn apply(&self, src: &mut TcpPeer, dst: &mut TcpPeer, seg: &TcpSegment) {
        let flags = seg.flags;
        let syn = flags & SYN != 0;
        let (end, ack) = (self.end, self.ack);
        let win = if syn {
            u32::from(seg.window)
        } else {
            u32::from(seg.window) << self.sws
        };
        if seg.window > src.max_win {
            src.max_win = seg.window;
        }
        if seq_gt(end, src.seqlo) {
            src.seqlo = end;
        }
        if syn {
            src.flags |= SYN_SEEN;
        }
        if flags & FIN != 0 {
            src.flags |= FIN_SEEN;
        }
        if flags & RST != 0 {
            src.flags |= RST_SEEN;
        }
        if flags & ACK != 0 {
            if src.acked == 0 || seq_gt(ack, src.acked) {
                src.acked = ack;
            }
            if seq_geq(ack.wrapping_add(win), dst.seqhi) {
                dst.seqhi = ack.wrapping_add(win.max(1));
            }
            if dst.has(SYN_SEEN) && !dst.has(SYN_ACKED) && seq_geq(ack, dst.seqlo) {
                dst.flags |= SYN_ACKED;
            }
            if dst.has(FIN_SEEN) && !dst.has(FIN_ACKED) && seq_geq(ack, dst.seqlo) {
                dst.flags |= FIN_ACKED;
            }
        }
    }
}

#[cfg(test)]
mod tests;
