//! One flow as a self-contained record: what a restarted or new process
//! (SPEC §13), or the peer of an HA pair (§15), needs to carry the flow on
//! exactly as it was. The container around the records (magic, version,
//! header, checksum) is [`crate::state`].
//!
//! The record is fixed-size little-endian binary, [`FLOW_RECORD_LEN`] bytes:
//! a million flows encode and decode without an allocation per flow. Times
//! are relative (how long the flow has been idle and alive when the record
//! was taken), so the reader places them on its own clock and adds the time
//! the flow spent in the file. Whatever a later version adds per flow
//! (translations, pending decisions) goes into records of its own kind
//! that follow the flow's, not into this layout.

use super::entry::{
    F_ESTABLISHED, F_INBOUND, F_MCAST_STATE, F_REVERSED, F_WILDCARD_OWNER, PEND_BLOCK,
};
use super::key::{Direction, FlowKey};
use super::tcp::TcpPeer;
use super::{FlowEntry, TcpTracker};
use crate::packet::proto;
use crate::time::Instant;
use std::time::Duration;

/// Flow ids stay below this (2^62), so a carried id can never bring the
/// id counter near wrapping.
pub const MAX_ID: u64 = 1 << 62;

/// The payload length of a flow record.
pub const FLOW_RECORD_LEN: usize = 144;

/// Entry flags a record carries; the others are table bookkeeping that the
/// table derives again on insertion.
const CARRIED_FLAGS: u8 = F_INBOUND | F_ESTABLISHED | F_MCAST_STATE | F_WILDCARD_OWNER | F_REVERSED;

const STATE_TCP: u8 = 1;
const STATE_ACTIVE: u8 = 0;

/// A decoded flow record: the entry with its times not yet placed on the
/// reader's clock.
#[derive(Clone, Copy)]
pub struct Carried {
    /// The entry (its last-seen and creation times are meaningless until
    /// [`Carried::place`]).
    pub entry: FlowEntry,
    /// The parent flow's id.
    pub parent: Option<u64>,
    /// The flow-table shard group (worker) the flow lived in.
    pub group: u16,
    /// How long the flow had been idle when the record was taken.
    pub idle: Duration,
    /// How long the flow had existed when the record was taken.
    pub age: Duration,
}

impl Carried {
    /// The entry placed on the reader's clock at `now`, with `idle` and
    /// `age` as they are now (the record's plus the time since it was taken).
    pub fn place(&self, now: Instant, idle: Duration, age: Duration) -> FlowEntry {
        let mut entry = self.entry;
        let now_ms = now.as_millis();
        entry.last_seen = now_ms.wrapping_sub(crate::time::millis(idle)) as u32;
        let created = now_ms.saturating_sub(crate::time::millis(age));
        entry.created = [
            created as u16,
            (created >> 16) as u16,
            (created >> 32) as u16,
        ];
        entry
    }
}

/// Appends the record of `entry` (parent `parent`, in shard group `group`)
/// taken at `now` to `out`.
pub fn encode(entry: &FlowEntry, parent: Option<u64>, group: u16, now: Instant, out: &mut Vec<u8>) {
    let start = out.len();
    let key = entry.key;
    out.extend_from_slice(&entry.id.to_le_bytes());
    out.extend_from_slice(&parent.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&group.to_le_bytes());
    out.extend_from_slice(&key.local);
    out.extend_from_slice(&key.remote);
    out.extend_from_slice(&key.local_port.to_le_bytes());
    out.extend_from_slice(&key.remote_port.to_le_bytes());
    out.push(key.protocol);
    out.push(key.meta());
    out.push(entry.flags & CARRIED_FLAGS);
    out.push(if entry.is_tcp() {
        STATE_TCP
    } else {
        STATE_ACTIVE
    });
    out.push(entry.arrival_port);
    out.push(entry.pend_state());
    out.extend_from_slice(&entry.generation.to_le_bytes());
    out.extend_from_slice(&entry.lifetime_ms.to_le_bytes());
    let idle = entry.idle(now).as_millis() as u32;
    out.extend_from_slice(&idle.to_le_bytes());
    let age = now.as_millis().saturating_sub(entry.created().as_millis());
    out.extend_from_slice(&age.to_le_bytes());
    for direction in [Direction::Outbound, Direction::Inbound] {
        let (packets, bytes) = entry.counters(direction);
        out.extend_from_slice(&packets.to_le_bytes());
        out.extend_from_slice(&bytes.to_le_bytes());
    }
    for peer in entry.tcp.peers {
        out.extend_from_slice(&peer.seqlo.to_le_bytes());
        out.extend_from_slice(&peer.seqhi.to_le_bytes());
        out.extend_from_slice(&peer.acked.to_le_bytes());
        out.extend_from_slice(&peer.max_win.to_le_bytes());
        out.push(peer.wscale);
        out.push(peer.flags);
    }
    debug_assert_eq!(out.len() - start, FLOW_RECORD_LEN);
}

/// Reads fixed-size fields off a byte slice.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let (head, rest) = self.0.split_at(N);
        self.0 = rest;
        head.try_into().unwrap_or([0; N])
    }
    fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.take())
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }
}

/// Decodes a flow record of a gateway with `ports` ports. The error says
/// which field is invalid; nothing in `bytes` can make this panic.
pub fn decode(bytes: &[u8], ports: usize) -> Result<Carried, &'static str> {
    if bytes.len() != FLOW_RECORD_LEN {
        return Err("flow record of the wrong length");
    }
    let mut f = Fields(bytes);
    let id = f.u64();
    if id == 0 || id >= MAX_ID {
        return Err("flow id out of range");
    }
    let parent = match f.u64() {
        0 => None,
        p => Some(p),
    };
    let group = f.u16();
    let (local, remote) = (f.take::<16>(), f.take::<16>());
    let (local_port, remote_port) = (f.u16(), f.u16());
    let protocol = f.u8();
    let key = FlowKey::from_record(local, remote, local_port, remote_port, protocol, f.u8())
        .ok_or("unknown flow key flags")?;
    let flags = f.u8();
    if flags & !CARRIED_FLAGS != 0 {
        return Err("unknown flow flags");
    }
    let is_tcp = match f.u8() {
        STATE_TCP if protocol == proto::TCP => true,
        STATE_ACTIVE => false,
        _ => return Err("bad flow state"),
    };
    let arrival_port = f.u8();
    if usize::from(arrival_port) >= ports {
        return Err("arrival port out of range");
    }
    let pend = f.u8();
    if pend > PEND_BLOCK {
        return Err("bad pend state");
    }
    let generation = f.u32();
    let lifetime_ms = f.u32();
    let idle = Duration::from_millis(u64::from(f.u32()));
    let age = Duration::from_millis(f.u64());
    let counters = [(f.u64(), f.u64()), (f.u64(), f.u64())];
    let mut tcp = TcpTracker::zeroed();
    for peer in &mut tcp.peers {
        *peer = TcpPeer {
            seqlo: f.u32(),
            seqhi: f.u32(),
            acked: f.u32(),
            max_win: f.u16(),
            wscale: f.u8(),
            flags: f.u8(),
        };
    }
    let mut entry = FlowEntry::VACANT;
    entry.id = id;
    entry.key = key;
    entry.flags = flags;
    entry.state = if is_tcp {
        tcp.state() as u8
    } else {
        super::entry::STATE_ACTIVE
    };
    entry.tcp = if is_tcp { tcp } else { TcpTracker::EMPTY };
    entry.arrival_port = arrival_port;
    entry.set_pend_state(pend);
    entry.generation = generation;
    entry.lifetime_ms = lifetime_ms;
    for (direction, (packets, bytes)) in [Direction::Outbound, Direction::Inbound]
        .into_iter()
        .zip(counters)
    {
        entry.set_counters(direction, packets, bytes);
    }
    Ok(Carried {
        entry,
        parent,
        group,
        idle,
        age,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_truncation_and_bad_field_is_an_error_not_a_panic() {
        let key = FlowKey::new(
            crate::packet::IpVersion::V4,
            proto::UDP,
            [1; 16],
            [2; 16],
            53,
            4000,
        );
        let entry = FlowEntry::new(
            7,
            key,
            Direction::Outbound,
            super::super::FlowClass::Unicast,
            None,
            Instant::from_secs(5),
            1,
            3,
            None,
        );
        let mut out = Vec::new();
        encode(&entry, Some(2), 0, Instant::from_secs(9), &mut out);
        let back = decode(&out, 2).expect("decodes");
        assert_eq!(back.entry.id(), 7);
        assert_eq!(back.parent, Some(2));
        assert_eq!(back.idle, Duration::from_secs(4));
        for len in 0..out.len() {
            assert!(decode(&out[..len], 2).is_err());
        }
        assert_eq!(decode(&out, 1).err(), Some("arrival port out of range"));
        let mut zero = out.clone();
        zero[..8].fill(0);
        assert_eq!(decode(&zero, 2).err(), Some("flow id out of range"));
    }
}
