//! pcapng (draft-ietf-opsawg-pcapng) for `tunwall capture`: a section
//! header, one interface (raw IP, nanosecond timestamps), and an enhanced
//! packet block per packet with a comment naming its arrival port
//! (`port=…`), for a dropped one `reason=… layer=… filter=… port=…`
//! (pflog's job). One interface and not one per port: libpcap (tcpdump)
//! refuses a second raw-IP interface in a file.

use crate::io::capture::{CaptureRecord, SNAPLEN};
use std::io::Write;
use std::time::UNIX_EPOCH;

/// LINKTYPE_RAW: the packet starts with its IPv4 or IPv6 header.
const LINKTYPE_RAW: u16 = 101;

fn option(out: &mut Vec<u8>, code: u16, value: &[u8]) {
    out.extend_from_slice(&code.to_le_bytes());
    out.extend_from_slice(&(value.len() as u16).to_le_bytes());
    out.extend_from_slice(value);
    pad(out);
}

fn pad(out: &mut Vec<u8>) {
    while out.len() % 4 != 0 {
        out.push(0);
    }
}

/// Writes one block: type, total length, body, total length again.
fn block(out: &mut impl Write, kind: u32, body: &[u8]) -> std::io::Result<()> {
    let total = (body.len() + 12) as u32;
    out.write_all(&kind.to_le_bytes())?;
    out.write_all(&total.to_le_bytes())?;
    out.write_all(body)?;
    out.write_all(&total.to_le_bytes())
}

/// The section header and the interface description.
pub fn header(out: &mut impl Write) -> std::io::Result<()> {
    let mut shb = Vec::new();
    shb.extend_from_slice(&0x1A2B_3C4Du32.to_le_bytes());
    shb.extend_from_slice(&1u16.to_le_bytes());
    shb.extend_from_slice(&0u16.to_le_bytes());
    shb.extend_from_slice(&u64::MAX.to_le_bytes());
    option(&mut shb, 4, b"tunwall"); // shb_userappl
    option(&mut shb, 0, &[]);
    block(out, 0x0A0D_0D0A, &shb)?;
    let mut idb = Vec::new();
    idb.extend_from_slice(&LINKTYPE_RAW.to_le_bytes());
    idb.extend_from_slice(&0u16.to_le_bytes());
    idb.extend_from_slice(&(SNAPLEN as u32).to_le_bytes());
    option(&mut idb, 2, b"tunwall"); // if_name
    option(&mut idb, 9, &[9]); // if_tsresol: nanoseconds
    option(&mut idb, 0, &[]);
    block(out, 1, &idb)
}

/// The comment of a packet: its arrival port and, for a dropped one, why.
pub fn comment(record: &CaptureRecord, ports: &[String]) -> String {
    let port = ports
        .get(usize::from(record.port))
        .map_or("-", String::as_str);
    match &record.dropped {
        Some(d) => format!(
            "reason={} layer={} filter={} port={port}",
            d.reason,
            d.layer.map_or("-", |l| l.as_str()),
            d.filter.as_deref().unwrap_or("-")
        ),
        None => format!("port={port}"),
    }
}

/// One packet as an enhanced packet block; `ports` names the arrival port.
pub fn packet(
    out: &mut impl Write,
    record: &CaptureRecord,
    ports: &[String],
) -> std::io::Result<()> {
    let ns = record
        .at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut epb = Vec::with_capacity(record.bytes.len() + 96);
    epb.extend_from_slice(&0u32.to_le_bytes());
    epb.extend_from_slice(&((ns >> 32) as u32).to_le_bytes());
    epb.extend_from_slice(&(ns as u32).to_le_bytes());
    epb.extend_from_slice(&(record.bytes.len() as u32).to_le_bytes());
    epb.extend_from_slice(&(record.len as u32).to_le_bytes());
    epb.extend_from_slice(&record.bytes);
    pad(&mut epb);
    // epb_flags: inbound (every captured packet was read from a port).
    option(&mut epb, 2, &1u32.to_le_bytes());
    option(&mut epb, 1, comment(record, ports).as_bytes()); // opt_comment
    option(&mut epb, 0, &[]);
    block(out, 6, &epb)
}
