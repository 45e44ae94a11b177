//! `tunwall capture` over the control socket (SPEC §12). One capture runs
//! at a time, on a thread of its own: it answers `{"ok": true}` on a line,
//! then streams pcapng ([`crate::render::pcapng`]) from the tap until the
//! client goes away or `count` packets were sent; with a `filter` (the
//! pcap-filter subset of [`CaptureFilter`]) only the packets it passes. A reader that falls
//! behind loses packets at the tap (counted in `capture_lost`); one that
//! stops reading is cut off after the write timeout.

use crate::io::capture::{CaptureMode, CaptureTap};
use crate::packet::pcap_filter::CaptureFilter;
use crate::render::pcapng;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tracing::{debug, info};

/// The largest pcapng block the client accepts (a packet is at most 64 KiB).
const MAX_BLOCK: usize = 1 << 20;

/// The capture side of the daemon.
pub struct Capture {
    tap: Arc<CaptureTap>,
    busy: Arc<AtomicBool>,
    ports: Vec<String>,
}

impl Capture {
    /// A capture of `tap`, whose interfaces are `ports`.
    pub fn new(tap: Arc<CaptureTap>, ports: Vec<String>) -> Capture {
        Capture {
            tap,
            busy: Arc::new(AtomicBool::new(false)),
            ports,
        }
    }

    /// Packets lost at the tap so far.
    pub fn lost(&self) -> u64 {
        self.tap.lost()
    }

    /// Serves a `capture` request on `stream` (on a thread of its own).
    pub fn start(&self, mut stream: UnixStream, request: &Value) {
        let filter = match request.get("filter").and_then(Value::as_str) {
            Some(text) => match CaptureFilter::parse(text) {
                Ok(filter) => Some(filter),
                Err(error) => {
                    let _ = writeln!(stream, "{}", json!({"ok": false, "error": error}));
                    return;
                }
            },
            None => None,
        };
        if self.busy.swap(true, Ordering::Relaxed) {
            let _ = writeln!(
                stream,
                "{}",
                json!({"ok": false, "error": "another capture is running"})
            );
            return;
        }
        let mode = if request.get("discards").and_then(Value::as_bool) == Some(true) {
            CaptureMode::Discards
        } else {
            CaptureMode::All
        };
        let count = request.get("count").and_then(Value::as_u64);
        let (tap, busy, ports) = (
            Arc::clone(&self.tap),
            Arc::clone(&self.busy),
            self.ports.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name("tunwall-capture".into())
            .spawn(move || {
                info!(?mode, filtered = filter.is_some(), "capture started");
                if let Err(e) = session(&tap, &ports, mode, filter, count, &stream) {
                    debug!(error = %e, "capture ended");
                }
                tap.set_mode(CaptureMode::Off, None);
                busy.store(false, Ordering::Relaxed);
                info!(lost = tap.lost(), "capture stopped");
            });
        if spawned.is_err() {
            self.busy.store(false, Ordering::Relaxed);
        }
    }
}

fn session(
    tap: &CaptureTap,
    ports: &[String],
    mode: CaptureMode,
    filter: Option<CaptureFilter>,
    count: Option<u64>,
    stream: &UnixStream,
) -> std::io::Result<()> {
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    // Reads only notice the client closing its end.
    stream.set_read_timeout(Some(Duration::from_millis(1)))?;
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, stream);
    writeln!(out, "{}", json!({"ok": true}))?;
    pcapng::header(&mut out)?;
    out.flush()?;
    tap.set_mode(mode, filter);
    let mut sent = 0u64;
    while count.is_none_or(|c| sent < c) {
        match tap.next(Duration::from_millis(200)) {
            Some(record) => {
                pcapng::packet(&mut out, &record, ports)?;
                sent += 1;
                continue;
            }
            None => out.flush()?,
        }
        let mut probe = [0u8; 1];
        match (&*stream).read(&mut probe) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e),
        }
    }
    out.flush()
}

/// Sends a capture request and copies the pcapng stream to `out`, a
/// whole block per write, so an interrupted capture still ends on a
/// block boundary.
pub fn print_capture(socket: &Path, request: &Value, out: &mut impl Write) -> std::io::Result<()> {
    let mut stream = super::connect(socket)?;
    writeln!(stream, "{request}")?;
    let mut reader = BufReader::new(stream);
    let mut first = String::new();
    reader.read_line(&mut first)?;
    let answer: Value = serde_json::from_str(&first)
        .map_err(|e| std::io::Error::other(format!("bad answer from {}: {e}", socket.display())))?;
    if answer.get("ok") != Some(&Value::Bool(true)) {
        let error = answer.get("error").and_then(Value::as_str).unwrap_or("");
        return Err(std::io::Error::other(error.to_string()));
    }
    let mut block = Vec::new();
    loop {
        let mut head = [0u8; 8];
        match reader.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let total = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
        if !(12..=MAX_BLOCK).contains(&total) {
            return Err(std::io::Error::other("bad pcapng block from the daemon"));
        }
        block.clear();
        block.extend_from_slice(&head);
        block.resize(total, 0);
        reader.read_exact(&mut block[8..])?;
        out.write_all(&block)?;
        out.flush()?;
    }
}
