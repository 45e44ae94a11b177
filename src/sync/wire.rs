//! The sync datagram (SPEC §15): one UDP datagram, authenticated and
//! encrypted with the pair's pre-shared key.
//!
//! ```text
//! header (clear, authenticated)   magic "TWSY", version u8, node u32 LE, session u64 LE, counter u64 LE
//! sealed body (XChaCha20-Poly1305, nonce = node ‖ session ‖ counter ‖ 0000, header as associated data)
//!   ack u64 LE    the highest message sequence number applied in order (cumulative)
//!   base u64 LE   the sender's oldest message still waiting for an acknowledgement
//!   seq u64 LE    this message's sequence number; 0: an acknowledgement or keepalive only
//!   items         kind u8 + payload, until the end:
//!                 FLOW  + a flow record (crate::flow::record, the §13 format): created, changed or refreshed
//!                 CLOSE + a flow record: the flow was removed
//!                 TRANSLATION + u16 LE length + a translation record
//!                       (crate::flow::record::encode_translation): the
//!                       translation (SPEC §9) of the flow of the FLOW item
//!                       right before it, in the same message
//!                 BULK_BEGIN, BULK_END: a bulk resync of the whole table starts / is complete
//! tag             16 bytes
//! ```
//!
//! `session` is the sender's start time in milliseconds (strictly
//! increasing across its restarts) and `counter` counts every datagram it
//! sends, retransmissions included, so a (key, nonce) pair is never reused
//! and the receiver's replay window ([`Replay`]) refuses any datagram seen
//! before or from an older session. Nothing in a datagram is looked at
//! before its tag has been verified.

use crate::flow::record::{FLOW_RECORD_LEN, TRANSLATION_FIXED_LEN};
use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};

/// The datagram magic.
pub const MAGIC: &[u8; 4] = b"TWSY";
/// The protocol version this build speaks.
pub const VERSION: u8 = 1;
/// The clear header's length.
pub const HEADER_LEN: usize = 4 + 1 + 4 + 8 + 8;
/// The AEAD tag's length.
pub const TAG_LEN: usize = 16;
/// The body's fixed part: ack, base, seq.
pub const BODY_HEAD: usize = 24;
/// The largest datagram sent: small enough for one Ethernet frame.
pub const MAX_DATAGRAM: usize = 1400;
/// The largest sequence of items in one message.
pub const MAX_ITEMS_LEN: usize = MAX_DATAGRAM - HEADER_LEN - TAG_LEN - BODY_HEAD;

/// Item kinds.
pub const FLOW: u8 = 1;
/// A closure.
pub const CLOSE: u8 = 2;
/// A bulk resync begins.
pub const BULK_BEGIN: u8 = 3;
/// A bulk resync is complete.
pub const BULK_END: u8 = 4;

/// A translation record (variable length: a u16 length precedes it).
pub const TRANSLATION: u8 = 5;

/// The longest filter name a replicated translation carries (longer ones
/// are cut at a character boundary): a flow and its translation always
/// fit one message.
pub const MAX_SYNC_FILTER_NAME: usize = 512;

/// The payload length of an item of fixed-size `kind`.
fn fixed_len(kind: u8) -> Option<usize> {
    match kind {
        FLOW | CLOSE => Some(FLOW_RECORD_LEN),
        BULK_BEGIN | BULK_END => Some(0),
        _ => None,
    }
}

/// The encoded size of an item of `kind` with a payload of `len` bytes.
pub const fn item_size(kind: u8, len: usize) -> usize {
    match kind {
        TRANSLATION => 3 + len,
        _ => 1 + len,
    }
}

/// Appends an item (kind, payload) to `out`.
pub fn put_item(kind: u8, payload: &[u8], out: &mut Vec<u8>) {
    out.push(kind);
    if kind == TRANSLATION {
        out.extend_from_slice(&(payload.len() as u16).to_le_bytes());
    }
    out.extend_from_slice(payload);
}

/// The item at the start of `items`: its kind, payload and encoded size;
/// `None` if it is unknown, cut, or a translation of an impossible length.
fn split_item(items: &[u8]) -> Option<(u8, &[u8], usize)> {
    let kind = *items.first()?;
    let (start, len) = match fixed_len(kind) {
        Some(len) => (1, len),
        None if kind == TRANSLATION => {
            let len = usize::from(u16::from_le_bytes([*items.get(1)?, *items.get(2)?]));
            let max = TRANSLATION_FIXED_LEN + MAX_SYNC_FILTER_NAME;
            if !(TRANSLATION_FIXED_LEN..=max).contains(&len) {
                return None;
            }
            (3, len)
        }
        None => return None,
    };
    let payload = items.get(start..start + len)?;
    Some((kind, payload, start + len))
}

/// The pre-shared key, ready to seal and open.
pub struct Key(XChaCha20Poly1305);

impl Key {
    /// The cipher of a 32-byte key.
    pub fn new(key: &[u8; 32]) -> Key {
        Key(XChaCha20Poly1305::new(key.into()))
    }
}

/// The clear header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The sender's node id.
    pub node: u32,
    /// The sender's session (its start time in ms).
    pub session: u64,
    /// The sender's datagram counter.
    pub counter: u64,
}

impl Header {
    fn bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0; HEADER_LEN];
        out[..4].copy_from_slice(MAGIC);
        out[4] = VERSION;
        out[5..9].copy_from_slice(&self.node.to_le_bytes());
        out[9..17].copy_from_slice(&self.session.to_le_bytes());
        out[17..25].copy_from_slice(&self.counter.to_le_bytes());
        out
    }

    fn nonce(&self) -> XNonce {
        let mut n = [0; 24];
        n[..4].copy_from_slice(&self.node.to_le_bytes());
        n[4..12].copy_from_slice(&self.session.to_le_bytes());
        n[12..20].copy_from_slice(&self.counter.to_le_bytes());
        n.into()
    }
}

/// Why a datagram was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejected {
    /// Too short, wrong magic or version.
    Malformed,
    /// The tag does not verify (another key, or altered on the way).
    Unauthenticated,
    /// Authentic but from an unexpected node (our own datagram reflected).
    WrongNode,
    /// Seen before, or from an older session of the peer.
    Replayed,
    /// Authentic but the body does not parse.
    BadBody,
}

impl Rejected {
    /// The reason as the status output names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejected::Malformed => "malformed",
            Rejected::Unauthenticated => "unauthenticated",
            Rejected::WrongNode => "wrong_node",
            Rejected::Replayed => "replayed",
            Rejected::BadBody => "bad_body",
        }
    }
}

/// A message's body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Body<'a> {
    /// Cumulative acknowledgement.
    pub ack: u64,
    /// The sender's oldest unacknowledged sequence number.
    pub base: u64,
    /// This message's sequence number (0: no items, not acknowledged).
    pub seq: u64,
    /// The items, checked to be a whole number of known items.
    pub items: &'a [u8],
}

impl<'a> Body<'a> {
    /// The items one by one: (kind, payload).
    pub fn items(&self) -> Items<'a> {
        Items(self.items)
    }
}

/// Iterates over checked items.
pub struct Items<'a>(&'a [u8]);

impl<'a> Iterator for Items<'a> {
    type Item = (u8, &'a [u8]);
    fn next(&mut self) -> Option<(u8, &'a [u8])> {
        let (kind, payload, size) = split_item(self.0)?;
        self.0 = &self.0[size..];
        Some((kind, payload))
    }
}

/// Checks that `items` is a sequence of whole known items.
fn check_items(mut items: &[u8]) -> bool {
    while !items.is_empty() {
        match split_item(items) {
            Some((_, _, size)) => items = &items[size..],
            None => return false,
        }
    }
    true
}

/// Seals a message into `out` (cleared first).
pub fn seal(
    key: &Key,
    header: Header,
    ack: u64,
    base: u64,
    seq: u64,
    items: &[u8],
    out: &mut Vec<u8>,
) {
    out.clear();
    out.extend_from_slice(&header.bytes());
    out.extend_from_slice(&ack.to_le_bytes());
    out.extend_from_slice(&base.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(items);
    let (head, body) = out.split_at_mut(HEADER_LEN);
    // Encryption cannot fail for messages this small.
    let tag = key
        .0
        .encrypt_inout_detached(&header.nonce(), head, body.into())
        .unwrap_or_default();
    out.extend_from_slice(&tag);
}

/// Opens a datagram in place: verifies the tag and decrypts the body.
/// Returns the header and the body; nothing is trusted before this
/// succeeds, and nothing in `datagram` can make it panic.
pub fn open<'a>(key: &Key, datagram: &'a mut [u8]) -> Result<(Header, Body<'a>), Rejected> {
    if datagram.len() < HEADER_LEN + BODY_HEAD + TAG_LEN
        || &datagram[..4] != MAGIC
        || datagram[4] != VERSION
    {
        return Err(Rejected::Malformed);
    }
    let u64_at = |b: &[u8], at: usize| {
        let mut v = [0; 8];
        v.copy_from_slice(&b[at..at + 8]);
        u64::from_le_bytes(v)
    };
    let header = Header {
        node: u32::from_le_bytes([datagram[5], datagram[6], datagram[7], datagram[8]]),
        session: u64_at(datagram, 9),
        counter: u64_at(datagram, 17),
    };
    let (head, rest) = datagram.split_at_mut(HEADER_LEN);
    let (body, tag) = rest.split_at_mut(rest.len() - TAG_LEN);
    let tag = Tag::try_from(&*tag).map_err(|_| Rejected::Malformed)?;
    key.0
        .decrypt_inout_detached(&header.nonce(), head, (&mut *body).into(), &tag)
        .map_err(|_| Rejected::Unauthenticated)?;
    let body: &'a [u8] = body;
    let items = &body[BODY_HEAD..];
    if !check_items(items) {
        return Err(Rejected::BadBody);
    }
    Ok((
        header,
        Body {
            ack: u64_at(body, 0),
            base: u64_at(body, 8),
            seq: u64_at(body, 16),
            items,
        },
    ))
}

/// The receiver's replay window over the peer's (session, counter): a
/// datagram is accepted once, and only from the newest session seen.
#[derive(Clone, Copy, Debug, Default)]
pub struct Replay {
    session: u64,
    top: u64,
    /// Bit i: counter `top - i` was seen.
    seen: u64,
}

/// What the replay window says about a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fresh {
    /// New, in the current session.
    Yes,
    /// New, and the first of a newer session: the peer restarted.
    NewSession,
    /// Seen before, too old, or from an older session.
    Replayed,
}

impl Replay {
    /// Checks and records `header`'s (session, counter).
    pub fn check(&mut self, header: &Header) -> Fresh {
        if header.session > self.session {
            *self = Replay {
                session: header.session,
                top: header.counter,
                seen: 1,
            };
            return Fresh::NewSession;
        }
        if header.session < self.session {
            return Fresh::Replayed;
        }
        if header.counter > self.top {
            let shift = header.counter - self.top;
            self.seen = if shift >= 64 { 0 } else { self.seen << shift };
            self.seen |= 1;
            self.top = header.counter;
            return Fresh::Yes;
        }
        let back = self.top - header.counter;
        if back >= 64 || self.seen & (1 << back) != 0 {
            return Fresh::Replayed;
        }
        self.seen |= 1 << back;
        Fresh::Yes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(counter: u64) -> Header {
        Header {
            node: 1,
            session: 1000,
            counter,
        }
    }

    #[test]
    fn a_sealed_message_opens_and_any_change_is_refused() {
        let key = Key::new(&[7; 32]);
        let items = [BULK_BEGIN, BULK_END];
        let mut out = Vec::new();
        seal(&key, header(5), 3, 4, 9, &items, &mut out);
        let mut copy = out.clone();
        let (h, body) = open(&key, &mut copy).expect("opens");
        assert_eq!(h, header(5));
        assert_eq!((body.ack, body.base, body.seq), (3, 4, 9));
        assert_eq!(body.items().map(|(k, _)| k).collect::<Vec<_>>(), items);
        for i in 0..out.len() {
            let mut bad = out.clone();
            bad[i] ^= 1;
            assert!(open(&key, &mut bad).is_err(), "byte {i} altered");
        }
        for len in 0..out.len() {
            assert!(open(&key, &mut out.clone()[..len]).is_err());
        }
        let other = Key::new(&[8; 32]);
        assert_eq!(
            open(&other, &mut out.clone()).err(),
            Some(Rejected::Unauthenticated)
        );
    }

    #[test]
    fn an_authentic_body_with_a_cut_item_is_refused() {
        let key = Key::new(&[1; 32]);
        let mut out = Vec::new();
        seal(&key, header(1), 0, 1, 1, &[FLOW, 0, 0], &mut out);
        assert_eq!(open(&key, &mut out).err(), Some(Rejected::BadBody));
        seal(&key, header(2), 0, 1, 1, &[99], &mut out);
        assert_eq!(open(&key, &mut out).err(), Some(Rejected::BadBody));
        // A translation shorter than its fixed part, or cut.
        seal(
            &key,
            header(3),
            0,
            1,
            1,
            &[TRANSLATION, 4, 0, 1, 2, 3, 4],
            &mut out,
        );
        assert_eq!(open(&key, &mut out).err(), Some(Rejected::BadBody));
        let mut cut = Vec::new();
        put_item(TRANSLATION, &[0; TRANSLATION_FIXED_LEN], &mut cut);
        cut.pop();
        seal(&key, header(4), 0, 1, 1, &cut, &mut out);
        assert_eq!(open(&key, &mut out).err(), Some(Rejected::BadBody));
        cut.push(0);
        put_item(BULK_END, &[], &mut cut);
        seal(&key, header(5), 0, 1, 1, &cut, &mut out);
        let (_, body) = open(&key, &mut out).expect("whole items");
        let kinds: Vec<_> = body.items().map(|(k, p)| (k, p.len())).collect();
        assert_eq!(kinds, [(TRANSLATION, TRANSLATION_FIXED_LEN), (BULK_END, 0)]);
    }

    #[test]
    fn the_replay_window_accepts_each_counter_once_and_no_older_session() {
        let mut r = Replay::default();
        assert_eq!(r.check(&header(10)), Fresh::NewSession);
        assert_eq!(r.check(&header(10)), Fresh::Replayed);
        assert_eq!(r.check(&header(12)), Fresh::Yes);
        assert_eq!(r.check(&header(11)), Fresh::Yes);
        assert_eq!(r.check(&header(11)), Fresh::Replayed);
        assert_eq!(r.check(&header(200)), Fresh::Yes);
        assert_eq!(r.check(&header(100)), Fresh::Replayed, "behind the window");
        let newer = Header {
            session: 2000,
            ..header(1)
        };
        assert_eq!(r.check(&newer), Fresh::NewSession);
        assert_eq!(r.check(&header(500)), Fresh::Replayed, "older session");
    }
}
