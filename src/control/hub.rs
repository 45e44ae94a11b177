//! The event hub: one thread that renders every event once and sends it to
//! the log, the JSON-lines event file and every `tunwall events` subscriber.
//! Nothing is rendered when nothing would take it, and a slow subscriber is
//! cut off rather than allowed to stall the hub (SPEC §14).
//!
//! Discard events are rate-limited here (`[events] discard_rate` per second,
//! the first of each reason always emitted); the counters in the engines are
//! never limited.

use super::queue::{EventCounters, EventReceiver};
use crate::event::{Event, EventKind};
use crate::io::clock::Clock;
use crate::reason::DropReason;
use crossbeam_channel::{Receiver, Sender, select};
use serde_json::{Value, json};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, info, warn};

/// What the hub is told besides engine events.
pub enum HubMessage {
    /// An event that does not come from an engine (`policy_reloaded`, `reload_failed`).
    Control(Value),
    /// Stream every later event to this client.
    Subscribe(UnixStream),
    /// Flush the event file and open it again at this path (logrotate has
    /// moved it away; SIGUSR1).
    Reopen(std::path::PathBuf),
    /// Flush and stop.
    Stop,
}

/// The hub's settings.
pub struct HubConfig {
    /// Port names by index.
    pub ports: Vec<String>,
    /// The JSON-lines event file, opened (see [`open_event_file`]), if any.
    pub file: Option<File>,
    /// Discard events per second.
    pub discard_rate: u32,
    /// The process clock (for `ts`).
    pub clock: Clock,
}

struct DiscardLimiter {
    rate: u32,
    second: u64,
    sent_this_second: u32,
    seen: [bool; DropReason::COUNT],
    suppressed: u64,
}

impl DiscardLimiter {
    fn allow(&mut self, reason: DropReason, at_ms: u64) -> bool {
        let second = at_ms / 1000;
        if second != self.second {
            self.second = second;
            self.sent_this_second = 0;
        }
        let first = !std::mem::replace(&mut self.seen[reason.index()], true);
        if first || self.sent_this_second < self.rate {
            self.sent_this_second += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

/// Bytes a subscriber may have waiting before it is cut off.
const SUBSCRIBER_BUFFER: usize = 1 << 20;
/// How often the hub retries writing to subscribers that are behind.
const RETRY: Duration = Duration::from_millis(50);

/// An `events` client. Writes never block the hub: what the socket does not
/// take waits in a bounded buffer, and a reader that lets it overflow is
/// cut off (its lost events are counted in `events_dropped`).
struct Subscriber {
    stream: UnixStream,
    pending: Vec<u8>,
    pending_lines: u64,
}

impl Subscriber {
    fn new(stream: UnixStream) -> std::io::Result<Subscriber> {
        stream.set_nonblocking(true)?;
        Ok(Subscriber {
            stream,
            pending: Vec::new(),
            pending_lines: 0,
        })
    }

    /// Writes what is waiting; false when the reader is gone.
    fn flush(&mut self) -> bool {
        while !self.pending.is_empty() {
            match self.stream.write(&self.pending) {
                Ok(0) => return false,
                Ok(n) => {
                    let lines = self.pending[..n].iter().filter(|b| **b == b'\n').count();
                    self.pending_lines -= lines as u64;
                    self.pending.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        true
    }

    /// Queues one line; false when the reader is gone or too far behind.
    fn push(&mut self, line: &str) -> bool {
        if self.pending.len() + line.len() + 1 > SUBSCRIBER_BUFFER {
            return false;
        }
        self.pending.extend_from_slice(line.as_bytes());
        self.pending.push(b'\n');
        self.pending_lines += 1;
        self.flush()
    }
}

/// Where events go.
struct Sinks {
    file: Option<BufWriter<File>>,
    subscribers: Vec<Subscriber>,
    counters: Arc<EventCounters>,
}

impl Sinks {
    /// Whether anything would take an event of `kind`: the file, a
    /// subscriber, or the log at the level the event is logged at.
    fn wanted(&self, kind: &EventKind) -> bool {
        self.file.is_some()
            || !self.subscribers.is_empty()
            || match kind {
                EventKind::Veto { .. } => tracing::enabled!(tracing::Level::WARN),
                _ => tracing::enabled!(tracing::Level::DEBUG),
            }
    }

    /// Tells the workers whether to build flow events at all: a new UDP
    /// flow's two snapshots are a third of its cost (docs/benchmarks.md).
    fn publish_wanted(&self) {
        self.counters.set_flow_events_wanted(
            self.file.is_some()
                || !self.subscribers.is_empty()
                || tracing::enabled!(tracing::Level::DEBUG),
        );
    }

    fn emit(&mut self, line: &str) {
        if let Some(f) = self.file.as_mut()
            && let Err(e) = writeln!(f, "{line}")
        {
            warn!(error = %e, "writing the event file");
        }
        let counters = &self.counters;
        self.subscribers.retain_mut(|s| {
            let alive = s.push(line);
            if !alive {
                // The line that did not fit is lost too.
                counters.count_dropped(s.pending_lines + 1);
                info!("an events reader fell behind or left: disconnected");
            }
            alive
        });
    }

    fn retry(&mut self) {
        let counters = &self.counters;
        self.subscribers.retain_mut(|s| {
            let alive = s.flush();
            if !alive {
                counters.count_dropped(s.pending_lines);
            }
            alive
        });
        if let Some(f) = self.file.as_mut() {
            let _ = f.flush();
        }
    }

    /// Closes the event file and opens `path` afresh; on failure the old
    /// file stays (events keep landing somewhere the operator can find).
    fn reopen(&mut self, path: &std::path::Path) {
        let Some(old) = self.file.as_mut() else {
            return;
        };
        let _ = old.flush();
        match open_event_file(path) {
            Ok(f) => {
                self.file = Some(BufWriter::new(f));
                info!(file = %path.display(), "event file reopened");
            }
            Err(e) => warn!(error = %e, "reopening the event file; still writing the old one"),
        }
    }

    /// Renders and emits an engine event, if anything wants it.
    fn event(&mut self, event: &Event, config: &HubConfig) {
        if !self.wanted(&event.kind) {
            return;
        }
        let mut value = crate::render::json::event(event, &config.ports);
        stamp(&mut value, config.clock.wall(event.at));
        log(event, &value);
        if self.file.is_some() || !self.subscribers.is_empty() {
            self.emit(&value.to_string());
        }
    }
}

/// Starts the hub thread.
pub fn spawn(
    config: HubConfig,
    events: EventReceiver,
    control: Receiver<HubMessage>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let mut config = config;
    let mut sinks = Sinks {
        file: config.file.take().map(BufWriter::new),
        subscribers: Vec::new(),
        counters: Arc::clone(events.counters()),
    };
    std::thread::Builder::new()
        .name("tunwall-events".into())
        .spawn(move || {
            let mut limiter = DiscardLimiter {
                rate: config.discard_rate,
                second: 0,
                sent_this_second: 0,
                seen: [false; DropReason::COUNT],
                suppressed: 0,
            };
            sinks.publish_wanted();
            loop {
                select! {
                    recv(events.channel()) -> batch => {
                        let Ok(batch) = batch else { break };
                        events.taken(&batch);
                        for event in &batch {
                            if let EventKind::Discard { reason, .. } = event.kind
                                && !limiter.allow(reason, event.at.as_millis())
                            {
                                continue;
                            }
                            sinks.event(event, &config);
                        }
                    }
                    recv(control) -> message => match message {
                        Ok(HubMessage::Control(mut value)) => {
                            stamp(&mut value, std::time::SystemTime::now());
                            info!(event = %value, "control event");
                            sinks.emit(&value.to_string());
                        }
                        Ok(HubMessage::Subscribe(stream)) => match Subscriber::new(stream) {
                            Ok(s) => sinks.subscribers.push(s),
                            Err(e) => warn!(error = %e, "events subscriber"),
                        },
                        Ok(HubMessage::Reopen(path)) => sinks.reopen(&path),
                        Ok(HubMessage::Stop) | Err(_) => {
                            // Workers have stopped: take what they left in the channel.
                            while let Ok(batch) = events.channel().try_recv() {
                                events.taken(&batch);
                                for event in &batch {
                                    sinks.event(event, &config);
                                }
                            }
                            break;
                        }
                    },
                    default(RETRY) => {}
                }
                sinks.retry();
                sinks.publish_wanted();
            }
            sinks.retry();
            if limiter.suppressed > 0 {
                info!(
                    suppressed = limiter.suppressed,
                    "discard events over the rate limit were not emitted"
                );
            }
        })
}

/// Opens (creating it 0640, whatever the umask) the JSON-lines event file.
pub fn open_event_file(path: &std::path::Path) -> std::io::Result<File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)?;
    }
    let existed = path.exists();
    let file = File::options()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .map_err(|e| {
            std::io::Error::new(e.kind(), format!("event file {}: {e}", path.display()))
        })?;
    // The umask narrows `mode`; a file tunwall creates is 0640 exactly,
    // an existing one keeps what the operator gave it.
    if !existed {
        file.set_permissions(std::fs::Permissions::from_mode(0o640))?;
    }
    Ok(file)
}

fn stamp(value: &mut Value, at: std::time::SystemTime) {
    if let Some(map) = value.as_object_mut() {
        map.insert(
            "ts".into(),
            json!(humantime::format_rfc3339_millis(at).to_string()),
        );
    }
}

fn log(event: &Event, value: &Value) {
    match &event.kind {
        EventKind::Veto { .. } => warn!(event = %value, "veto"),
        EventKind::Discard { .. } => debug!(event = %value, "discard"),
        _ => debug!(event = %value, "{}", event.name()),
    }
}

/// A handle to send the hub control messages.
#[derive(Clone)]
pub struct Hub {
    /// The channel.
    pub control: Sender<HubMessage>,
}

impl Hub {
    /// Emits a control event.
    pub fn emit(&self, value: Value) {
        let _ = self.control.send(HubMessage::Control(value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_that_never_reads_is_cut_off_without_stalling_the_hub() {
        let (writer, _reader) = UnixStream::pair().expect("pair");
        let counters = Arc::new(EventCounters::default());
        let mut sinks = Sinks {
            file: None,
            subscribers: vec![Subscriber::new(writer).expect("subscriber")],
            counters: Arc::clone(&counters),
        };
        let line = "x".repeat(500);
        let start = std::time::Instant::now();
        let mut sent = 0u64;
        while !sinks.subscribers.is_empty() {
            sinks.emit(&line);
            sent += 1;
            assert!(sent < 100_000, "the slow reader was never cut off");
        }
        // Nothing blocked: the socket buffer and the bounded pending buffer
        // filled, then the reader was dropped and its backlog counted.
        assert!(start.elapsed() < Duration::from_secs(5));
        let dropped = counters.dropped();
        assert!(dropped > 0 && dropped <= sent, "{dropped} of {sent}");
        assert!(dropped as usize * line.len() <= SUBSCRIBER_BUFFER + line.len() + 1);
    }

    #[test]
    fn nothing_is_rendered_without_a_sink() {
        let sinks = Sinks {
            file: None,
            subscribers: Vec::new(),
            counters: Arc::new(EventCounters::default()),
        };
        // No file, no subscriber, and no subscriber to tracing in this test.
        assert!(!sinks.wanted(&EventKind::Discard {
            layer: None,
            reason: DropReason::Truncated,
            filter: None,
            port: 0,
            packet: None,
        }));
    }

    #[test]
    fn the_workers_build_flow_events_only_while_something_takes_them() {
        let counters = Arc::new(EventCounters::default());
        assert!(counters.flow_events_wanted(), "on until the hub says");
        let mut sinks = Sinks {
            file: None,
            subscribers: Vec::new(),
            counters: Arc::clone(&counters),
        };
        sinks.publish_wanted();
        assert!(!counters.flow_events_wanted());
        let (writer, _reader) = UnixStream::pair().expect("pair");
        sinks
            .subscribers
            .push(Subscriber::new(writer).expect("subscriber"));
        sinks.publish_wanted();
        assert!(counters.flow_events_wanted());
        sinks.subscribers.clear();
        sinks.file = Some(BufWriter::new(tempfile_in_tmp()));
        sinks.publish_wanted();
        assert!(counters.flow_events_wanted());
    }

    fn tempfile_in_tmp() -> File {
        let path = std::env::temp_dir().join(format!("tunwall-hub-{}", std::process::id()));
        let file = File::create(&path).expect("file");
        let _ = std::fs::remove_file(&path);
        file
    }
}
