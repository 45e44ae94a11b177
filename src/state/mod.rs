//! The flow-table container (SPEC §13): what a clean stop writes to
//! `[gateway] state_file` and what `tunwall upgrade` streams to the new
//! process, and what an HA peer's bulk resync (§15) carries.
//!
//! ```text
//! magic    "TWSTATE\n"                     8 bytes
//! version  u32 LE                          FORMAT_VERSION
//! header   u32 LE length + JSON            Header: node, pid, time, ports, policy lineage, …
//! records  kind u8, length u32 LE, payload one per flow (kind FLOW, crate::flow::record),
//!                                          a translated flow's followed by its
//!                                          TRANSLATION record (same module),
//!                                          then one per pending flow (kind PENDING)
//! end      kind END, length 12: u64 LE record count, u32 LE CRC-32 of every byte before the CRC
//! ```
//!
//! Records are self-contained and streamed: a writer never holds more than
//! one shard's records. Record kinds below [`OPTIONAL`] must be understood
//! by the reader (a later version adding per-flow translations or pending
//! decisions uses a new required kind after the flow's record, and readers
//! that do not know it refuse the file rather than drop that state);
//! kinds from [`OPTIONAL`] up may be skipped. A reader trusts nothing
//! before the checksum is verified: [`Container::parse`] checks the whole
//! buffer first, then hands out records.

pub mod file;

use crate::flow::{Zone, record::FLOW_RECORD_LEN};
use crate::policy::Lineage;
use serde::{Deserialize, Serialize};
use std::io::{self, Write};

/// The file magic.
pub const MAGIC: &[u8; 8] = b"TWSTATE\n";
/// The format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// A flow record ([`crate::flow::record`]).
pub const FLOW: u8 = 1;
/// A pending flow's place in the pend store (SPEC §10), after every flow.
pub const PENDING: u8 = 2;
/// A translated flow's translation (SPEC §9, [`crate::flow::record::encode_translation`]),
/// right after its flow record. A reader from before translations were
/// carried refuses a container holding one ("needs a newer tunwall").
pub const TRANSLATION: u8 = 3;
/// The end record: record count and checksum.
pub const END: u8 = 0x7f;
/// Record kinds from here up may be skipped by a reader that does not know them.
pub const OPTIONAL: u8 = 0x80;

/// The largest header accepted.
const MAX_HEADER: usize = 1 << 20;
/// The largest record payload accepted.
const MAX_RECORD: usize = 1 << 16;

/// A port as the state knows it: a carried flow's arrival port is an index
/// into these, so the reader's ports must be the same.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortId {
    /// The port's name.
    pub name: String,
    /// Its device.
    pub device: String,
    /// `inside` or `outside`.
    pub zone: String,
    /// Its network namespace.
    pub netns: Option<String>,
    /// The writer created the device and made it persistent so it outlives
    /// the process (a clean stop with a state file): the next start owns it.
    #[serde(default)]
    pub persisted: bool,
}

impl PortId {
    /// A port's identity.
    pub fn new(name: &str, device: &str, zone: Zone, netns: Option<&str>) -> PortId {
        PortId {
            name: name.to_string(),
            device: device.to_string(),
            zone: zone.as_str().to_string(),
            netns: netns.map(str::to_string),
            persisted: false,
        }
    }

    /// Whether `other` is the same port (ignoring `persisted`).
    pub fn same_as(&self, other: &PortId) -> bool {
        (&self.name, &self.device, &self.zone, &self.netns)
            == (&other.name, &other.device, &other.zone, &other.netns)
    }
}

/// What the container says about its records. The default is an
/// anonymous header (tests, benchmarks): no node, no ports, no policy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// The writer's host name.
    pub node: String,
    /// The writer's process id.
    pub pid: u32,
    /// When the records were taken, in milliseconds since the Unix epoch:
    /// the reader advances every timer by the time since.
    pub saved_at_ms: u64,
    /// The number of flow records.
    pub flows: u64,
    /// The writer's next flow id: the reader never hands out a lower one.
    pub next_id: u64,
    /// The writer's ports, in order.
    pub ports: Vec<PortId>,
    /// The writer's policy generations, if it ran a compiled policy.
    pub policy: Option<Lineage>,
}

impl Header {
    /// Why a gateway with `ports` cannot take these records, if it cannot.
    pub fn ports_mismatch(&self, ports: &[PortId]) -> Option<String> {
        let same = self.ports.len() == ports.len()
            && self.ports.iter().zip(ports).all(|(a, b)| a.same_as(b));
        (!same).then(|| {
            let names = |p: &[PortId]| {
                p.iter()
                    .map(|p| format!("{}={}({})", p.name, p.device, p.zone))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            format!(
                "its ports [{}] are not this configuration's [{}]",
                names(&self.ports),
                names(ports)
            )
        })
    }
}

/// Why a container was refused. Its text says what is wrong; the caller
/// adds where it came from and that it was ignored.
#[derive(Debug, PartialEq, Eq)]
pub enum StateError {
    /// There is no such file.
    Missing,
    /// Reading or writing failed.
    Io(String),
    /// The data does not start with the magic.
    NotState,
    /// A format this build does not read.
    Version(u32),
    /// The data ends early.
    Truncated,
    /// The checksum does not match.
    Checksum,
    /// Something inside is invalid (after the checksum matched).
    Corrupt(String),
}

impl std::fmt::Display for StateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StateError::Missing => write!(f, "no such file"),
            StateError::Io(e) => write!(f, "{e}"),
            StateError::NotState => write!(f, "not a tunwall state file (bad magic)"),
            StateError::Version(v) => write!(
                f,
                "format version {v}, this tunwall reads version {FORMAT_VERSION}"
            ),
            StateError::Truncated => write!(f, "truncated"),
            StateError::Checksum => write!(f, "checksum mismatch (corrupt)"),
            StateError::Corrupt(e) => write!(f, "corrupt: {e}"),
        }
    }
}

impl std::error::Error for StateError {}

impl From<io::Error> for StateError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::NotFound {
            StateError::Missing
        } else {
            StateError::Io(e.to_string())
        }
    }
}

/// Writes a container to `W`, computing the checksum as it goes.
pub struct Writer<W: Write> {
    out: W,
    crc: crc32fast::Hasher,
    records: u64,
}

impl<W: Write> Writer<W> {
    /// Writes the magic, version and `header`.
    pub fn new(out: W, header: &Header) -> io::Result<Writer<W>> {
        let mut w = Writer {
            out,
            crc: crc32fast::Hasher::new(),
            records: 0,
        };
        let json = serde_json::to_vec(header).map_err(io::Error::other)?;
        w.put(MAGIC)?;
        w.put(&FORMAT_VERSION.to_le_bytes())?;
        w.put(&(json.len() as u32).to_le_bytes())?;
        w.put(&json)?;
        Ok(w)
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.crc.update(bytes);
        self.out.write_all(bytes)
    }

    /// Appends `records`: a run of payloads of kind `kind`, each `len` bytes.
    pub fn records(&mut self, kind: u8, len: usize, records: &[u8]) -> io::Result<()> {
        for payload in records.chunks(len) {
            self.put(&[kind])?;
            self.put(&(payload.len() as u32).to_le_bytes())?;
            self.put(payload)?;
            self.records += 1;
        }
        Ok(())
    }

    /// Appends `count` records already framed by [`frame`].
    pub fn framed(&mut self, records: &[u8], count: u64) -> io::Result<()> {
        self.put(records)?;
        self.records += count;
        Ok(())
    }

    /// Writes the end record and returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        self.put(&[END])?;
        self.put(&12u32.to_le_bytes())?;
        self.put(&self.records.to_le_bytes())?;
        let crc = self.crc.clone().finalize();
        self.out.write_all(&crc.to_le_bytes())?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// A verified container in memory.
pub struct Container<'a> {
    /// Its header.
    pub header: Header,
    records: &'a [u8],
    count: u64,
}

impl<'a> Container<'a> {
    /// Checks magic, version and checksum of `data` and reads the header.
    pub fn parse(data: &'a [u8]) -> Result<Container<'a>, StateError> {
        if data.len() < MAGIC.len() {
            return Err(if MAGIC.starts_with(data) {
                StateError::Truncated
            } else {
                StateError::NotState
            });
        }
        if &data[..MAGIC.len()] != MAGIC {
            return Err(StateError::NotState);
        }
        let version = u32_at(data, 8).ok_or(StateError::Truncated)?;
        if version != FORMAT_VERSION {
            return Err(StateError::Version(version));
        }
        // The end record's 17 bytes plus the checksum close every container.
        let tail = 1 + 4 + 12;
        let header_len = u32_at(data, 12).ok_or(StateError::Truncated)? as usize;
        let body = 16usize.saturating_add(header_len);
        if header_len > MAX_HEADER || data.len() < body + tail {
            return Err(if header_len > MAX_HEADER {
                StateError::Corrupt("header too long".into())
            } else {
                StateError::Truncated
            });
        }
        let (signed, crc) = data.split_at(data.len() - 4);
        let crc = u32::from_le_bytes(crc.try_into().map_err(|_| StateError::Truncated)?);
        let end = &signed[signed.len() - (tail - 4)..];
        if end[0] != END || u32_at(end, 1) != Some(12) {
            // Either cut short or damaged: the end record is not where the
            // length says it should be.
            return Err(StateError::Truncated);
        }
        if checksum(signed) != crc {
            return Err(StateError::Checksum);
        }
        let header: Header = serde_json::from_slice(&data[16..body])
            .map_err(|e| StateError::Corrupt(format!("header: {e}")))?;
        let records = &signed[body..signed.len() - (tail - 4)];
        let count = u64::from_le_bytes(end[5..13].try_into().unwrap_or([0; 8]));
        let container = Container {
            header,
            records,
            count,
        };
        if container
            .records()
            .try_fold(0u64, |n, r| r.map(|_| n + 1))?
            != count
        {
            return Err(StateError::Corrupt("record count mismatch".into()));
        }
        Ok(container)
    }

    /// The number of records (of every kind).
    pub fn len(&self) -> u64 {
        self.count
    }

    /// Whether there is no record.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The records in order, as (kind, payload); unknown optional kinds are
    /// left out, an unknown required kind is an error.
    pub fn records(&self) -> impl Iterator<Item = Result<(u8, &'a [u8]), StateError>> + 'a {
        let mut rest = self.records;
        std::iter::from_fn(move || {
            loop {
                if rest.is_empty() {
                    return None;
                }
                let Some(len) = u32_at(rest, 1) else {
                    rest = &[];
                    return Some(Err(StateError::Corrupt("record header cut".into())));
                };
                let (kind, len) = (rest[0], len as usize);
                if len > MAX_RECORD || rest.len() < 5 + len {
                    rest = &[];
                    return Some(Err(StateError::Corrupt("record length".into())));
                }
                let payload = &rest[5..5 + len];
                rest = &rest[5 + len..];
                match kind {
                    FLOW if len == FLOW_RECORD_LEN => return Some(Ok((kind, payload))),
                    FLOW => {
                        rest = &[];
                        return Some(Err(StateError::Corrupt("flow record length".into())));
                    }
                    PENDING | TRANSLATION => return Some(Ok((kind, payload))),
                    k if k >= OPTIONAL => continue,
                    k => {
                        rest = &[];
                        return Some(Err(StateError::Corrupt(format!(
                            "record kind {k} needs a newer tunwall"
                        ))));
                    }
                }
            }
        })
    }
}

/// Appends one record of `kind` to `out`, its payload written by `payload`
/// (for [`Writer::framed`]: a run of records of mixed kinds in one write).
pub fn frame(out: &mut Vec<u8>, kind: u8, payload: impl FnOnce(&mut Vec<u8>)) {
    out.push(kind);
    let len_at = out.len();
    out.extend_from_slice(&[0; 4]);
    payload(out);
    let len = (out.len() - len_at - 4) as u32;
    out[len_at..len_at + 4].copy_from_slice(&len.to_le_bytes());
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        data.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

/// The checksum a container ends with, over every byte before it.
pub fn checksum(signed: &[u8]) -> u32 {
    crc32fast::hash(signed)
}

/// This host's name, for headers.
pub fn node_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default()
}

/// Milliseconds since the Unix epoch now.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, crate::time::millis)
}
