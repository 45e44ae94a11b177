//! The event hub: one thread that renders every event once and sends it to
//! the log, the JSON-lines event file and every `tunwall events` subscriber.
//!
//! Discard events are rate-limited here (`[events] discard_rate` per second,
//! the first of each reason always emitted); the counters in the engines are
//! never limited.

use crate::event::{Event, EventKind};
use crate::io::worker::Clock;
use crate::reason::DropReason;
use crossbeam_channel::{Receiver, Sender, select};
use serde_json::{Value, json};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;
use tracing::{debug, info, warn};

/// What the hub is told besides engine events.
pub enum HubMessage {
    /// An event that does not come from an engine (`policy_reloaded`, `reload_failed`).
    Control(Value),
    /// Stream every later event to this client.
    Subscribe(UnixStream),
    /// Flush and stop.
    Stop,
}

/// The hub's settings.
pub struct HubConfig {
    /// Port names by index.
    pub ports: Vec<String>,
    /// The JSON-lines event file, if any.
    pub file: Option<PathBuf>,
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

/// Starts the hub thread.
pub fn spawn(
    config: HubConfig,
    events: Receiver<Vec<Event>>,
    control: Receiver<HubMessage>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let mut file = match &config.file {
        Some(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let f = File::options()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| {
                    std::io::Error::new(e.kind(), format!("event file {}: {e}", path.display()))
                })?;
            Some(BufWriter::new(f))
        }
        None => None,
    };
    std::thread::Builder::new()
        .name("tunwall-events".into())
        .spawn(move || {
            let mut subscribers: Vec<UnixStream> = Vec::new();
            let mut limiter = DiscardLimiter {
                rate: config.discard_rate,
                second: 0,
                sent_this_second: 0,
                seen: [false; DropReason::COUNT],
                suppressed: 0,
            };
            let emit = |line: String,
                        file: &mut Option<BufWriter<File>>,
                        subscribers: &mut Vec<UnixStream>| {
                if let Some(f) = file.as_mut()
                    && let Err(e) = writeln!(f, "{line}")
                {
                    warn!(error = %e, "writing the event file");
                }
                subscribers.retain_mut(|s| writeln!(s, "{line}").is_ok());
            };
            loop {
                select! {
                    recv(events) -> batch => {
                        let Ok(batch) = batch else { break };
                        for event in batch {
                            if let EventKind::Discard { reason, .. } = event.kind
                                && !limiter.allow(reason, event.at.as_millis())
                            {
                                continue;
                            }
                            let mut value = event.to_json(&config.ports);
                            stamp(&mut value, config.clock.wall(event.at));
                            log(&event, &value);
                            emit(value.to_string(), &mut file, &mut subscribers);
                        }
                    }
                    recv(control) -> message => match message {
                        Ok(HubMessage::Control(mut value)) => {
                            stamp(&mut value, std::time::SystemTime::now());
                            info!(event = %value, "control event");
                            emit(value.to_string(), &mut file, &mut subscribers);
                        }
                        Ok(HubMessage::Subscribe(stream)) => {
                            // A stuck reader must not stall the hub: it is dropped instead.
                            let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
                            subscribers.push(stream);
                        }
                        Ok(HubMessage::Stop) | Err(_) => {
                            // Workers have stopped: take what they left in the channel.
                            while let Ok(batch) = events.try_recv() {
                                for event in batch {
                                    let mut value = event.to_json(&config.ports);
                                    stamp(&mut value, config.clock.wall(event.at));
                                    emit(value.to_string(), &mut file, &mut subscribers);
                                }
                            }
                            break;
                        }
                    },
                }
                if let Some(f) = file.as_mut() {
                    let _ = f.flush();
                }
            }
            if let Some(f) = file.as_mut() {
                let _ = f.flush();
            }
            if limiter.suppressed > 0 {
                info!(
                    suppressed = limiter.suppressed,
                    "discard events over the rate limit were not emitted"
                );
            }
        })
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
