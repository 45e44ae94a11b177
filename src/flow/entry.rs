//! The packed flow entry: one flow in 124 bytes.
//!
//! Times are 32-bit millisecond counters (last-seen) and a 48-bit creation
//! time, counters are packed 40-bit packets / 56-bit bytes, and the rare
//! parent id lives in the shard's side map. Which timeout applies to an
//! entry is decided in [`super::lifetime`].

use super::key::{Direction, FlowKey};
use super::tcp::{TcpState, TcpTracker};
use super::{FlowClass, FlowState};
use crate::policy::Action;
use crate::time::{Instant, millis};
use std::time::Duration;

pub(super) const F_INBOUND: u8 = 0x01;
pub(super) const F_ESTABLISHED: u8 = 0x02;
pub(super) const F_HAS_PARENT: u8 = 0x04;
pub(super) const F_MCAST_STATE: u8 = 0x08;
pub(super) const F_EMBRYONIC: u8 = 0x10;
pub(super) const F_WILDCARD_OWNER: u8 = 0x20;
/// The flow's local host is the key's remote endpoint (same-zone keys are in
/// canonical order, not the flow's).
pub(super) const F_REVERSED: u8 = 0x40;
/// The flow is translated; its [`crate::nat::Translation`] is in the shard's side map.
pub(super) const F_TRANSLATED: u8 = 0x80;

pub(super) const STATE_ACTIVE: u8 = 0xff;

// The `marks` byte holds two things that never share a bit.
// Its low two bits are the pend state (SPEC §10): never pended, pending, or
// completed with a decision the pending callout returns for the flow's
// whole life. The state file (SPEC §13) carries only these.
const PEND_MASK: u8 = 0x03;
const PEND_NONE: u8 = 0;
pub(super) const PEND_WAITING: u8 = 1;
const PEND_PERMIT: u8 = 2;
pub(super) const PEND_BLOCK: u8 = 3;
// Its high bits are the HA marks (SPEC §15) of a flow replicated from the
// peer; all clear for a flow of this node.
/// Replicated from the HA peer and not yet seen by a packet here.
const SYNCED: u8 = 0x10;
/// Replicated, and no packet of the flow's direction seen here yet.
const LOOSE_FWD: u8 = 0x20;
/// Replicated, and no packet against the flow's direction seen here yet.
const LOOSE_REV: u8 = 0x40;

const MASK40: u64 = (1 << 40) - 1;
const MASK56: u64 = (1 << 56) - 1;

/// One flow. 124 bytes, packed to 4-byte alignment so no padding is wasted.
#[derive(Clone, Copy)]
#[repr(C, packed(4))]
pub struct FlowEntry {
    pub(super) id: u64,
    /// Per direction (out, in) three words: packets in the low 40 bits of the
    /// 96-bit value, bytes in the high 56.
    pub(super) counters: [u32; 6],
    pub(super) tcp: TcpTracker,
    pub(super) last_seen: u32,
    /// Idle-timeout override in ms (classify options); 0 = the protocol default.
    pub(super) lifetime_ms: u32,
    pub(super) generation: u32,
    pub(super) created: [u16; 3],
    pub(super) key: FlowKey,
    pub(super) state: u8,
    pub(super) flags: u8,
    pub(super) arrival_port: u8,
    /// The pend state (`PEND_MASK`) and the HA marks (`SYNCED`, `LOOSE_*`).
    pub(super) marks: u8,
}

const _: () = assert!(std::mem::size_of::<FlowEntry>() == 124);

impl FlowEntry {
    pub(super) const VACANT: FlowEntry = FlowEntry {
        id: 0,
        counters: [0; 6],
        tcp: TcpTracker::EMPTY,
        last_seen: 0,
        lifetime_ms: 0,
        generation: 0,
        created: [0; 3],
        key: FlowKey::ZERO,
        state: 0,
        flags: 0,
        arrival_port: 0,
        marks: PEND_NONE,
    };

    /// A new flow. `tcp` is `Some` for TCP flows.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub fn new(
        id: u64,
        key: FlowKey,
        direction: Direction,
        class: FlowClass,
        tcp: Option<TcpTracker>,
        now: Instant,
        arrival_port: u8,
        generation: u32,
        lifetime: Option<Duration>,
    ) -> FlowEntry {
        let ms = now.as_millis();
        let mut flags = 0;
        if direction == Direction::Inbound {
            flags |= F_INBOUND;
        }
        if class == FlowClass::McastBcastState {
            flags |= F_MCAST_STATE;
        }
        let (state, tracker) = match tcp {
            Some(t) => (t.state() as u8, t),
            None => (STATE_ACTIVE, TcpTracker::EMPTY),
        };
        FlowEntry {
            id,
            counters: [0; 6],
            tcp: tracker,
            last_seen: ms as u32,
            lifetime_ms: lifetime.map_or(0, |d| millis(d).clamp(1, u64::from(u32::MAX)) as u32),
            generation,
            created: [ms as u16, (ms >> 16) as u16, (ms >> 32) as u16],
            key,
            state,
            flags,
            arrival_port,
            marks: PEND_NONE,
        }
    }

    /// The unique id.
    #[inline]
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The key as the flow sees it: local is the flow's local host.
    #[inline]
    pub fn key(&self) -> FlowKey {
        if self.flags & F_REVERSED != 0 {
            self.key.reversed()
        } else {
            self.key
        }
    }

    /// The key the table indexes the flow by.
    #[inline]
    pub fn table_key(&self) -> FlowKey {
        self.key
    }

    /// [`FlowEntry::table_key`], borrowed (a copy is not free: the key is
    /// 40 bytes aligned to 2).
    #[inline]
    pub fn table_key_ref(&self) -> &FlowKey {
        &self.key
    }

    /// Records how the creating packet lay on the key (`swapped`: its
    /// destination is the key's local end) and whether it travelled with
    /// the flow's direction, which fixes the flow's local host.
    pub fn orient(&mut self, swapped: bool, with_flow: bool) {
        let inbound = self.direction() == Direction::Inbound;
        if swapped ^ inbound ^ !with_flow {
            self.flags |= F_REVERSED;
        } else {
            self.flags &= !F_REVERSED;
        }
    }

    /// Whether a packet lying on the key as `swapped` travels in the flow's
    /// direction (from the initiator).
    #[inline]
    pub fn with_flow(&self, swapped: bool) -> bool {
        let reversed = self.flags & F_REVERSED != 0;
        swapped == (reversed ^ (self.flags & F_INBOUND != 0))
    }

    /// The direction of the packet that created the flow.
    #[inline]
    pub fn direction(&self) -> Direction {
        if self.flags & F_INBOUND != 0 {
            Direction::Inbound
        } else {
            Direction::Outbound
        }
    }

    /// Ordinary flow or multicast/broadcast state.
    #[inline]
    pub fn class(&self) -> FlowClass {
        if self.flags & F_MCAST_STATE != 0 {
            FlowClass::McastBcastState
        } else {
            FlowClass::Unicast
        }
    }

    /// Whether the flow was indicated at `flow_established`.
    #[inline]
    pub fn established(&self) -> bool {
        self.flags & F_ESTABLISHED != 0
    }

    /// Marks the flow as owning wildcard state (multicast/broadcast state or
    /// loose source mapping) that must follow its refreshes and removal.
    pub fn set_wildcard_owner(&mut self) {
        self.flags |= F_WILDCARD_OWNER;
    }

    /// Whether the flow owns wildcard state.
    #[inline]
    pub fn is_wildcard_owner(&self) -> bool {
        self.flags & F_WILDCARD_OWNER != 0
    }

    /// Whether the flow is translated (SPEC §9).
    #[inline]
    pub fn is_translated(&self) -> bool {
        self.flags & F_TRANSLATED != 0
    }

    /// Whether the flow has a parent (see [`super::shard::Shard::parent`]).
    #[inline]
    pub fn has_parent(&self) -> bool {
        self.flags & F_HAS_PARENT != 0
    }

    /// The state shown: `Pending`, a TCP state, or `Active`.
    #[inline]
    pub fn state(&self) -> FlowState {
        if self.is_pending() {
            return FlowState::Pending;
        }
        self.tracked_state()
    }

    /// The TCP state, or `Active`, also while the flow is pending (which
    /// timeout applies once it is not).
    #[inline]
    pub(super) fn tracked_state(&self) -> FlowState {
        match self.state {
            STATE_ACTIVE => FlowState::Active,
            // The byte caches the tracker's state (kept by `new`,
            // `track_tcp` and the record reader): deriving it from the
            // peers' flags again costs ~20 instructions, several times a
            // packet.
            cached => {
                let state = match TcpState::ALL.get(usize::from(cached)) {
                    Some(&state) => state,
                    None => self.tcp.state(),
                };
                debug_assert_eq!(state, self.tcp.state(), "stale cached TCP state");
                FlowState::Tcp(state)
            }
        }
    }

    /// The TCP tracker (meaningless for other protocols).
    #[inline]
    pub fn tcp(&self) -> TcpTracker {
        self.tcp
    }

    /// Whether this is a TCP flow.
    #[inline]
    pub fn is_tcp(&self) -> bool {
        self.state != STATE_ACTIVE
    }

    /// The port the flow was (last) authorized on.
    #[inline]
    pub fn arrival_port(&self) -> u8 {
        self.arrival_port
    }

    /// The policy generation of the flow's layer when it was (last) authorized.
    #[inline]
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// When the flow was created.
    pub fn created(&self) -> Instant {
        let c = self.created;
        Instant::from_millis(u64::from(c[0]) | u64::from(c[1]) << 16 | u64::from(c[2]) << 32)
    }

    /// When the last packet refreshed the flow, given the current time.
    pub fn last_seen(&self, now: Instant) -> Instant {
        Instant::from_millis(now.as_millis().saturating_sub(millis(self.idle(now))))
    }

    /// The idle-timeout override set by classify options.
    #[inline]
    pub fn lifetime(&self) -> Option<Duration> {
        (self.lifetime_ms != 0).then(|| Duration::from_millis(u64::from(self.lifetime_ms)))
    }

    /// (packets, bytes) sent by the local host (`Outbound`) or received (`Inbound`).
    #[inline]
    pub fn counters(&self, direction: Direction) -> (u64, u64) {
        let i = match direction {
            Direction::Outbound => 0,
            Direction::Inbound => 3,
        };
        let c = self.counters;
        let v = u128::from(c[i]) | u128::from(c[i + 1]) << 32 | u128::from(c[i + 2]) << 64;
        ((v as u64) & MASK40, (v >> 40) as u64 & MASK56)
    }

    /// Counts one packet of `len` bytes travelling in `direction`.
    #[inline]
    pub fn count(&mut self, direction: Direction, len: u32) {
        let (packets, bytes) = self.counters(direction);
        self.set_counters(direction, packets + 1, bytes + u64::from(len));
    }

    /// Sets the (packets, bytes) of `direction`, wrapping at 40 and 56 bits.
    #[inline]
    pub(super) fn set_counters(&mut self, direction: Direction, packets: u64, bytes: u64) {
        let v = u128::from(packets & MASK40) | u128::from(bytes & MASK56) << 40;
        let i = match direction {
            Direction::Outbound => 0,
            Direction::Inbound => 3,
        };
        let mut c = self.counters;
        c[i] = v as u32;
        c[i + 1] = (v >> 32) as u32;
        c[i + 2] = (v >> 64) as u32;
        self.counters = c;
    }

    /// Marks the flow as refreshed by a packet at `now`.
    #[inline]
    pub fn touch(&mut self, now: Instant) {
        self.last_seen = now.as_millis() as u32;
    }

    /// Records the outcome of a (re)authorization.
    pub fn authorize(&mut self, generation: u32, arrival_port: Option<u8>) {
        self.generation = generation;
        if let Some(port) = arrival_port {
            self.arrival_port = port;
        }
    }

    /// Whether the flow waits for a pending callout's decision.
    #[inline]
    pub fn is_pending(&self) -> bool {
        self.marks & PEND_MASK == PEND_WAITING
    }

    /// Puts the flow in state `pending`.
    pub fn set_pending(&mut self) {
        self.set_pend_state(PEND_WAITING);
    }

    /// Records a pending flow's completed decision.
    pub(super) fn set_completed(&mut self, decision: Action) {
        self.set_pend_state(match decision {
            Action::Permit => PEND_PERMIT,
            Action::Block => PEND_BLOCK,
        });
    }

    /// The pend state alone (what the state file carries).
    #[inline]
    pub(super) fn pend_state(&self) -> u8 {
        self.marks & PEND_MASK
    }

    /// Sets the pend state (`PEND_*`), keeping the HA marks.
    #[inline]
    pub(super) fn set_pend_state(&mut self, pend: u8) {
        self.marks = (self.marks & !PEND_MASK) | (pend & PEND_MASK);
    }

    /// The decision a pending flow was completed with, if it was pended.
    #[inline]
    pub fn completed(&self) -> Option<Action> {
        match self.marks & PEND_MASK {
            PEND_PERMIT => Some(Action::Permit),
            PEND_BLOCK => Some(Action::Block),
            _ => None,
        }
    }

    /// Tracks a TCP segment (see [`TcpTracker::track`]), keeps the cached
    /// state and returns whether the segment changed it (the state known
    /// before tracking is at hand here: deriving it again before and after
    /// cost every established segment a dozen instructions).
    #[inline]
    pub fn track_tcp(
        &mut self,
        from_initiator: bool,
        seg: &crate::packet::TcpSegment,
        enforce: bool,
    ) -> Result<bool, crate::reason::DropReason> {
        let known = match self.tracked_state() {
            FlowState::Tcp(state) => state,
            _ => self.tcp.state(),
        };
        // In place: the tracker is 4-aligned, as the packing keeps it.
        let state = self.tcp.track_from(known, from_initiator, seg, enforce)?;
        self.state = state as u8;
        Ok(state != known)
    }

    /// Marks the flow as replicated from the HA peer (SPEC §15): its first
    /// packet here reauthorizes it, and its TCP windows are checked
    /// loosely until each direction has been seen here.
    pub fn set_synced(&mut self) {
        self.marks |= SYNCED | LOOSE_FWD | LOOSE_REV;
    }

    /// Whether the flow was replicated from the peer and no packet of it
    /// has been seen here since.
    #[inline]
    pub fn synced(&self) -> bool {
        self.marks & SYNCED != 0
    }

    /// Whether the flow's TCP windows are checked strictly: each direction
    /// has been seen here since it was replicated, if it was.
    #[inline]
    pub fn strict_windows(&self) -> bool {
        self.marks & (LOOSE_FWD | LOOSE_REV) == 0
    }

    /// A packet of the flow was seen here (`with_flow`: in its direction).
    #[inline]
    pub fn seen_here(&mut self, with_flow: bool) {
        self.marks &= !(SYNCED | if with_flow { LOOSE_FWD } else { LOOSE_REV });
    }

    #[inline]
    pub(super) fn is_vacant(&self) -> bool {
        self.id == 0
    }
}

impl TcpTracker {
    pub(super) const EMPTY: TcpTracker = TcpTracker::zeroed();
}
