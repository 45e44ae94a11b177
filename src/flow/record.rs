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
//! goes into records of its own kind that follow the flow's, not into this
//! layout: a translated flow's [`Translation`] (SPEC §9) is a translation
//! record ([`encode_translation`], [`decode_translation`]) right after the
//! flow record of the same id.
//!
//! A reader places a flow and then its translation: the translation's
//! mapping (masquerade port or ICMP id) is taken again in the reader's
//! allocator, once per flow that holds it, so an endpoint-independent
//! mapping shared by several flows comes back shared and is released with
//! its last flow.

use super::entry::{
    F_ESTABLISHED, F_INBOUND, F_MCAST_STATE, F_REVERSED, F_WILDCARD_OWNER, PEND_BLOCK,
};
use super::key::{Direction, FlowKey};
use super::tcp::TcpPeer;
use super::{FlowEntry, TcpTracker};
use crate::nat::{MapKey, Translation};
use crate::packet::proto;
use crate::time::Instant;
use std::collections::HashMap;
use std::sync::Arc;
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

/// The fixed part of a translation record; the filter name follows.
///
/// ```text
/// id        u64          the translated flow (its flow record comes just before)
/// key       38 bytes     the translated tuple, laid out as in the flow record
/// egress    u8 u8        egress port toward the outside, toward the inside
/// mapping   u8           0 none, 1 a port mapping (masquerade) follows
///           u8 [16] u16 [16] u16   protocol, inside address, inside port or
///                        ICMP id, translated address, translated port or id
/// filter    u16 + UTF-8  the redirect filter(s) that decided it
/// ```
pub const TRANSLATION_FIXED_LEN: usize = 88;
/// The longest filter name a translation record carries.
pub const MAX_FILTER_NAME: usize = 4096;

fn put_key(key: &FlowKey, out: &mut Vec<u8>) {
    out.extend_from_slice(&key.local);
    out.extend_from_slice(&key.remote);
    out.extend_from_slice(&key.local_port.to_le_bytes());
    out.extend_from_slice(&key.remote_port.to_le_bytes());
    out.push(key.protocol);
    out.push(key.meta());
}

/// Appends the translation record of flow `id` to `out`.
pub fn encode_translation(id: u64, t: &Translation, out: &mut Vec<u8>) {
    encode_translation_capped(id, t, MAX_FILTER_NAME, out);
}

/// [`encode_translation`] with the filter name cut to at most `max_name`
/// bytes (at a character boundary): an HA sync message (SPEC §15) has
/// room for less than a state file.
pub fn encode_translation_capped(id: u64, t: &Translation, max_name: usize, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&id.to_le_bytes());
    put_key(&t.key, out);
    out.extend_from_slice(&t.egress);
    match &t.mapping {
        Some((map, port)) => {
            out.push(1);
            out.push(map.protocol);
            out.extend_from_slice(&map.inside);
            out.extend_from_slice(&map.inside_port.to_le_bytes());
            out.extend_from_slice(&map.translated);
            out.extend_from_slice(&port.to_le_bytes());
        }
        None => out.extend_from_slice(&[0; 38]),
    }
    let filter = t.filter.as_bytes();
    let mut len = filter.len().min(max_name.min(MAX_FILTER_NAME));
    while !t.filter.is_char_boundary(len) {
        len -= 1;
    }
    out.extend_from_slice(&(len as u16).to_le_bytes());
    out.extend_from_slice(&filter[..len]);
    debug_assert_eq!(out.len() - start, TRANSLATION_FIXED_LEN + len);
}

/// Filter names shared between decoded translations: a million flows of
/// one masquerade filter hold one name.
#[derive(Default)]
pub struct FilterNames {
    names: HashMap<Box<str>, Arc<str>, ahash::RandomState>,
    /// The name last asked for: flows come in runs of the same filter.
    last: Option<Arc<str>>,
}

impl FilterNames {
    /// How many distinct names are kept.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether no name is kept.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The shared copy of `name`.
    pub fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(last) = self.last.as_ref().filter(|l| ***l == *name) {
            return Arc::clone(last);
        }
        let shared = match self.names.get(name) {
            Some(shared) => Arc::clone(shared),
            None => {
                let shared: Arc<str> = Arc::from(name);
                self.names.insert(name.into(), Arc::clone(&shared));
                shared
            }
        };
        self.last = Some(Arc::clone(&shared));
        shared
    }
}

/// Decodes a translation record of a gateway with `ports` ports: the flow
/// id and its translation. The error says which field is invalid; nothing
/// in `bytes` can make this panic. That the flow exists and has the same
/// protocol and IP version is the reader's to check.
pub fn decode_translation(
    bytes: &[u8],
    ports: usize,
    names: &mut FilterNames,
) -> Result<(u64, Translation), &'static str> {
    if bytes.len() < TRANSLATION_FIXED_LEN {
        return Err("translation record too short");
    }
    let mut f = Fields(bytes);
    let id = f.u64();
    if id == 0 || id >= MAX_ID {
        return Err("translated flow id out of range");
    }
    let (local, remote) = (f.take::<16>(), f.take::<16>());
    let (local_port, remote_port) = (f.u16(), f.u16());
    let protocol = f.u8();
    let key = FlowKey::from_record(local, remote, local_port, remote_port, protocol, f.u8())
        .ok_or("unknown translated key flags")?;
    let egress = [f.u8(), f.u8()];
    if egress.iter().any(|e| usize::from(*e) >= ports) {
        return Err("translation egress port out of range");
    }
    let has_mapping = f.u8();
    let map = MapKey {
        protocol: f.u8(),
        inside: f.take(),
        inside_port: f.u16(),
        translated: f.take(),
    };
    let port = f.u16();
    let mapping = match has_mapping {
        0 => None,
        1 if map.protocol == protocol => Some((map, port)),
        _ => return Err("bad translation mapping"),
    };
    let len = usize::from(f.u16());
    if len > MAX_FILTER_NAME || f.0.len() != len {
        return Err("translation filter name length");
    }
    let filter = std::str::from_utf8(f.0).map_err(|_| "translation filter name not UTF-8")?;
    Ok((
        id,
        Translation {
            key,
            egress,
            mapping,
            filter: names.get(filter),
        },
    ))
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

    #[test]
    fn a_translation_round_trips_and_every_cut_or_bad_field_is_an_error() {
        let key = FlowKey::new(
            crate::packet::IpVersion::V4,
            proto::TCP,
            [9; 16],
            [2; 16],
            61_000,
            443,
        );
        let map = MapKey {
            protocol: proto::TCP,
            inside: [1; 16],
            inside_port: 40_000,
            translated: [9; 16],
        };
        let t = Translation {
            key,
            egress: [1, 0],
            mapping: Some((map, 61_000)),
            filter: Arc::from("masq"),
        };
        let mut out = Vec::new();
        encode_translation(5, &t, &mut out);
        assert_eq!(out.len(), TRANSLATION_FIXED_LEN + 4);
        let mut names = FilterNames::default();
        let (id, back) = decode_translation(&out, 2, &mut names).expect("decodes");
        assert_eq!((id, &back), (5, &t));
        let (_, again) = decode_translation(&out, 2, &mut names).expect("decodes");
        assert!(Arc::ptr_eq(&back.filter, &again.filter), "one shared name");
        for len in 0..out.len() {
            assert!(decode_translation(&out[..len], 2, &mut names).is_err());
        }
        assert_eq!(
            decode_translation(&out, 1, &mut names).err(),
            Some("translation egress port out of range")
        );
        let mut bad = out.clone();
        bad[48] = 2;
        assert_eq!(
            decode_translation(&bad, 2, &mut names).err(),
            Some("bad translation mapping")
        );
        let none = Translation { mapping: None, ..t };
        out.clear();
        encode_translation(6, &none, &mut out);
        assert_eq!(decode_translation(&out, 2, &mut names), Ok((6, none)));
    }
}
