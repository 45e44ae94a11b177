//! The daemon's side of carrying flows over (SPEC §13): the state file at
//! start and stop, and the header every snapshot carries. The container
//! is [`crate::state`], the snapshot and restore [`crate::engine::Gateway`].

use crate::config::Config;
use crate::daemon::Daemon;
use crate::engine::{Gateway, Restored};
use crate::handover::{self, Incoming, Offer, OfferedPort, Payload};
use crate::io::Port;
use crate::io::clock::Clock;
use crate::io::worker::Control;
use crate::policy::Policy;
use crate::state::{self, Container, Header, PortId, StateError};
use serde_json::{Value, json};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tracing::{error, info, warn};

/// The ports of `config` as a snapshot names them; `ports`, when open,
/// say which devices tunwall made persistent.
pub fn port_ids(config: &Config, ports: &[Port]) -> Vec<PortId> {
    config
        .ports
        .iter()
        .enumerate()
        .map(|(i, p)| PortId {
            persisted: ports.get(i).is_some_and(|port| port.persistent),
            ..PortId::new(&p.name, &p.device, p.zone, p.netns.as_deref())
        })
        .collect()
}

/// The header of a snapshot of `gateway` taken now.
pub fn header(gateway: &Gateway, config: &Config, ports: &[Port], policy: &Policy) -> Header {
    gateway.snapshot_header(Header {
        node: state::node_name(),
        pid: std::process::id(),
        saved_at_ms: state::unix_ms(),
        flows: 0,
        next_id: 0,
        ports: port_ids(config, ports),
        policy: Some(policy.lineage()),
    })
}

/// Checks `data` as carried state for `config`: a valid container whose
/// ports are the configuration's.
pub fn check(data: &[u8], config: &Config) -> Result<Header, StateError> {
    let container = Container::parse(data)?;
    if let Some(why) = container.header.ports_mismatch(&port_ids(config, &[])) {
        return Err(StateError::Corrupt(why));
    }
    Ok(container.header)
}

/// Reads the state file at start: its bytes if they can be trusted, else
/// `None` with the reason logged (a missing file quietly).
pub fn read_state_file(path: &Path, config: &Config) -> Option<Vec<u8>> {
    let data = match state::file::read(path) {
        Ok(d) => d,
        Err(StateError::Missing) => {
            info!(state_file = %path.display(), "no state file: starting without flows");
            return None;
        }
        Err(e) => {
            warn!(state_file = %path.display(), error = %e, "state file unreadable: ignored");
            return None;
        }
    };
    match check(&data, config) {
        Ok(_) => Some(data),
        Err(e) => {
            warn!(state_file = %path.display(), error = %e, "state file refused: ignored, starting without flows");
            None
        }
    }
}

/// Restores checked state `data` into `gateway` (before any worker runs).
pub fn restore(gateway: &Gateway, clock: &Clock, data: &[u8]) -> Result<Restored, StateError> {
    let container = Container::parse(data)?;
    let elapsed =
        Duration::from_millis(state::unix_ms().saturating_sub(container.header.saved_at_ms));
    let done = gateway.restore(clock.now(), &container, elapsed)?;
    info!(
        flows = done.flows,
        expired = done.expired,
        refused = done.refused,
        from_pid = container.header.pid,
        stopped_ms = elapsed.as_millis() as u64,
        "flows carried over"
    );
    Ok(done)
}

impl Daemon {
    /// Stops every worker from reading and waits until each has.
    fn pause_workers(&self) -> Result<(), String> {
        let (tx, rx) = crossbeam_channel::unbounded();
        for w in &self.workers {
            w.send(Control::Pause(tx.clone()));
        }
        for _ in &self.workers {
            rx.recv_timeout(Duration::from_secs(2))
                .map_err(|_| "a worker did not stop reading".to_string())?;
        }
        Ok(())
    }

    fn resume_workers(&self) {
        for w in &self.workers {
            w.send(Control::Resume);
        }
    }

    fn snapshot_header(&self) -> Header {
        let config = self.config.lock().unwrap_or_else(|p| p.into_inner());
        let policy = self.policy.lock().unwrap_or_else(|p| p.into_inner());
        header(&self.gateway, &config, &self.ports, &policy)
    }

    /// At a clean stop with `state_file`: stops the workers and writes the
    /// flows. Returns whether they were saved (then the workers detach and
    /// the devices stay); on failure the stop goes on as without a state
    /// file, closing every flow.
    pub(crate) fn save_state(&self) -> bool {
        let path = {
            let config = self.config.lock().unwrap_or_else(|p| p.into_inner());
            match &config.gateway.state_file {
                Some(p) => p.clone(),
                None => return false,
            }
        };
        if let Err(e) = self.pause_workers() {
            error!(error = %e, "state file not written");
            return false;
        }
        let header = self.snapshot_header();
        let now = self.clock.now();
        let started = std::time::Instant::now();
        let written = state::file::write_atomic(&path, |out| {
            self.gateway.snapshot(now, &header, out).map(|_| ())
        });
        match written {
            Ok(()) => {
                info!(
                    state_file = %path.display(),
                    flows = header.flows,
                    ms = started.elapsed().as_millis() as u64,
                    "flows saved; devices kept"
                );
                true
            }
            Err(e) => {
                error!(state_file = %path.display(), error = %e, "state file not written: closing the flows");
                false
            }
        }
    }

    /// `tunwall upgrade`: re-reads the file, refuses changed ports, and
    /// hands over to a new process (see [`crate::handover`]).
    pub(crate) fn upgrade(&self, binary: Option<PathBuf>) -> Value {
        let refuse = |error: String| {
            error!(%error, "upgrade refused; this gateway keeps running");
            json!({"ok": false, "error": error})
        };
        let new = match Config::load(&self.path, &self.registry) {
            Ok(c) => c,
            Err(e) => return refuse(e.to_string()),
        };
        let socket = {
            let running = self.config.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = running.upgradable_to(&new) {
                return refuse(e);
            }
            running.gateway.control_socket.clone()
        };
        let moved = new.gateway.control_socket != socket;
        let binary = match binary.map_or_else(current_binary, Ok) {
            Ok(b) => b,
            Err(e) => return refuse(format!("the running binary: {e}")),
        };
        info!(binary = %binary.display(), "upgrade: starting the new process");
        // Under systemd (`Type=notify`, `NotifyAccess=main`) this process,
        // the main one, names the new main pid; only then does the new one
        // say READY=1 (see [`crate::handover`]).
        let main_pid = |pid: u32| {
            if let Err(e) = crate::io::notify::notify(&format!("MAINPID={pid}")) {
                warn!(error = %e, "telling the service manager the new main pid");
            }
        };
        match handover::hand_over(&binary, &socket, || self.pack(), main_pid) {
            Ok(done) => {
                info!(to_pid = done.pid, flows = done.flows, "handed over");
                if moved {
                    // The new process listens elsewhere: this path is stale.
                    let _ = std::fs::remove_file(&socket);
                }
                self.hub.emit(json!({
                    "event": "handover",
                    "flows": done.flows,
                    "to_pid": done.pid,
                }));
                self.handed_over.store(true, Ordering::Relaxed);
                self.signals.close();
                json!({"ok": true, "flows": done.flows, "to_pid": done.pid})
            }
            Err(failed) => {
                if failed.paused {
                    self.resume_workers();
                }
                if let Some(shared) = &self.sync {
                    shared.pause(false);
                }
                refuse(format!("upgrade failed: {}", failed.reason))
            }
        }
    }

    /// Stops the workers and gathers what the new process takes over.
    fn pack(&self) -> Result<Payload, String> {
        self.pause_workers()?;
        let header = self.snapshot_header();
        let state = self
            .gateway
            .snapshot(self.clock.now(), &header, Vec::new())
            .map_err(|e| format!("snapshot: {e}"))?;
        let mut fds = Vec::new();
        for port in &self.ports {
            for q in &port.queues {
                fds.push(q.as_fd().try_clone_to_owned().map_err(|e| e.to_string())?);
            }
        }
        let listener = self
            .listener
            .as_ref()
            .ok_or("no control socket to hand over")?;
        fds.push(listener.try_clone().map_err(|e| e.to_string())?);
        if let Some((_, metrics)) = &self.metrics {
            fds.push(metrics.try_clone().map_err(|e| e.to_string())?);
        }
        // The sync socket goes too: the new process cannot bind its address
        // while this one holds it. This sync thread stops first, so what the
        // peer sends next waits in the socket for the new process.
        let sync = match &self.sync {
            Some(shared) => {
                let (listen, fd) = shared.socket().map_err(|e| format!("sync socket: {e}"))?;
                shared.pause(true);
                fds.push(fd);
                Some(listen)
            }
            None => None,
        };
        let config = self.config.lock().unwrap_or_else(|p| p.into_inner());
        Ok(Payload {
            offer: Offer {
                from_pid: std::process::id(),
                ports: self
                    .ports
                    .iter()
                    .map(|p| OfferedPort {
                        name: p.config.name.clone(),
                        created: p.created,
                        persistent: p.persistent,
                    })
                    .collect(),
                queues: self.ports.first().map_or(0, |p| p.queues.len()),
                vnet_hdr: self.ports.first().is_some_and(|p| p.vnet_hdr),
                udp_gso: self.ports.first().is_some_and(|p| p.udp_gso),
                socket: config.gateway.control_socket.clone(),
                metrics: self.metrics.as_ref().map(|(addr, _)| *addr),
                sync,
                state_len: state.len() as u64,
            },
            fds,
            state,
        })
    }

    /// The new side, once it forwards: the `handover` event (and
    /// `policy_reloaded` if the re-read file changed the policy), then
    /// `running` to the old process.
    pub(crate) fn announce_takeover(
        &self,
        incoming: &Incoming,
        flows: usize,
        from: Option<&Header>,
    ) {
        let policy = Arc::clone(&self.policy.lock().unwrap_or_else(|p| p.into_inner()));
        self.hub.emit(json!({
            "event": "handover",
            "flows": flows,
            "from_pid": from.map(|h| h.pid),
            "to_pid": std::process::id(),
        }));
        let changed: Vec<&str> = policy.changed_layers().iter().map(|l| l.as_str()).collect();
        if from.is_some_and(|h| h.policy.is_some()) && !changed.is_empty() {
            self.hub.emit(json!({
                "event": "policy_reloaded",
                "generation": policy.policy_generation(),
                "changed_layers": changed,
            }));
        }
        if let Err(e) = incoming.running(flows) {
            warn!(error = %e, "telling the old process");
        }
        if !incoming.wait_main() {
            warn!("the old process did not confirm the hand-over to the service manager");
        }
        if let Err(e) = crate::io::notify::notify(&format!(
            "READY=1\nSTATUS=forwarding (took over from pid {})",
            from.map_or(0, |h| h.pid)
        )) {
            warn!(error = %e, "telling the service manager we are ready");
        }
        info!(flows, "took over");
    }
}

/// This process's binary, as `upgrade` restarts it by default: the path it
/// was started from (a binary replaced in place shows as "(deleted)").
fn current_binary() -> std::io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let text = exe.to_string_lossy();
    Ok(match text.strip_suffix(" (deleted)") {
        Some(path) => PathBuf::from(path),
        None => exe,
    })
}
