//! `tunwall run`: wiring the configuration, ports, workers, the event hub,
//! the control socket and signals together, and taking them apart again.
//!
//! Start-up validates and compiles everything before touching a device; a
//! failure after some ports are open closes them again. Shutdown (SIGINT or
//! SIGTERM) stops the workers — each closes the flows of its shards with
//! reason `shutdown` — flushes the events, removes the socket and the
//! devices tunwall created, and exits 0.

use crate::config::Config;
use crate::control::hub::{self, Hub, HubConfig, HubMessage};
use crate::control::{ControlHandler, ControlServer};
use crate::engine::{Gateway, Stats};
use crate::io::worker::{Clock, Control, IoStats, Worker, WorkerHandle};
use crate::policy::{Authorizer, CalloutRegistry, Layer, Policy};
use crate::reason::{CloseReason, DropReason};
use serde_json::{Map, Value, json};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{error, info, warn};

/// The running gateway as the control socket and signals see it.
pub struct Daemon {
    path: PathBuf,
    registry: CalloutRegistry,
    config: Mutex<Config>,
    policy: Mutex<Arc<Policy>>,
    gateway: Arc<Gateway>,
    workers: Vec<WorkerHandle>,
    clock: Clock,
    hub: Hub,
}

impl Daemon {
    fn gather(&self) -> (Stats, IoStats) {
        let mut total = Stats::new(self.gateway.config().ports.len());
        let mut io = IoStats::default();
        let (tx, rx) = crossbeam_channel::unbounded();
        for w in &self.workers {
            w.send(Control::Stats(tx.clone()));
        }
        for _ in &self.workers {
            match rx.recv_timeout(Duration::from_secs(2)) {
                Ok((s, i)) => {
                    total.merge(&s);
                    io.read_errors += i.read_errors;
                    io.write_errors += i.write_errors;
                }
                Err(_) => warn!("a worker did not answer a stats request"),
            }
        }
        (total, io)
    }

    /// Reloads the file: compile, swap, reauthorize through generations.
    pub fn reload(&self) -> Value {
        let config = match Config::load(&self.path, &self.registry) {
            Ok(c) => c,
            Err(e) => return self.reload_failed(e.to_string()),
        };
        let mut current = self.policy.lock().unwrap_or_else(|p| p.into_inner());
        let policy = match Policy::compile(&config.policy, &self.registry, Some(&current)) {
            Ok(p) => Arc::new(p),
            Err(e) => return self.reload_failed(format!("{}: {e}", self.path.display())),
        };
        let mut warnings = Vec::new();
        {
            let old = self.config.lock().unwrap_or_else(|p| p.into_inner());
            if old.ports != config.ports
                || old.flows != config.flows
                || old.gateway != config.gateway
                || old.events != config.events
            {
                warnings.push("changes to [gateway], [[port]], [flows] and [events] take effect at the next start; only the policy was reloaded".to_string());
            }
        }
        *current = Arc::clone(&policy);
        for w in &self.workers {
            w.send(Control::SetPolicy(
                Arc::clone(&policy) as Arc<dyn Authorizer>
            ));
        }
        let changed: Vec<&str> = policy.changed_layers().iter().map(|l| l.as_str()).collect();
        info!(generation = policy.policy_generation(), changed_layers = ?changed, "policy reloaded");
        for w in &warnings {
            warn!("{w}");
        }
        self.config.lock().unwrap_or_else(|p| p.into_inner()).policy = config.policy;
        self.hub.emit(json!({
            "event": "policy_reloaded",
            "generation": policy.policy_generation(),
            "changed_layers": changed,
        }));
        json!({
            "ok": true,
            "generation": policy.policy_generation(),
            "changed_layers": changed,
            "warnings": warnings,
        })
    }

    fn reload_failed(&self, error: String) -> Value {
        error!(%error, "reload failed; the running policy stays");
        self.hub
            .emit(json!({"event": "reload_failed", "error": error}));
        json!({"ok": false, "error": error})
    }
}

impl ControlHandler for Daemon {
    fn flows(&self) -> Value {
        let now = self.clock.now();
        let ports = self.gateway.port_names();
        Value::Array(
            self.gateway
                .flows(now)
                .iter()
                .map(|f| f.to_json(&ports, now))
                .collect(),
        )
    }

    fn stats(&self) -> Value {
        let (s, io) = self.gather();
        let generation = self
            .policy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .policy_generation();
        stats_json(&s, &io, &self.gateway, generation, self.workers.len())
    }

    fn reload(&self) -> Value {
        Daemon::reload(self)
    }

    fn subscribe(&self, stream: UnixStream) {
        let _ = self.hub.control.send(HubMessage::Subscribe(stream));
    }
}

/// The `stats --json` object of SPEC §7.
pub fn stats_json(s: &Stats, io: &IoStats, gw: &Gateway, generation: u64, workers: usize) -> Value {
    let by_reason =
        |counts: &[u64], names: &mut dyn Iterator<Item = &'static str>| -> Map<String, Value> {
            names
                .zip(counts)
                .filter(|(_, n)| **n > 0)
                .map(|(k, n)| (k.to_string(), json!(n)))
                .collect()
        };
    let closed = by_reason(
        &s.flows_closed,
        &mut CloseReason::ALL.iter().map(|r| r.as_str()),
    );
    let discards = by_reason(&s.discards, &mut DropReason::ALL.iter().map(|r| r.as_str()));
    let layers: Map<String, Value> = [Layer::AuthConnect, Layer::AuthRecvAccept, Layer::IcmpError]
        .iter()
        .map(|l| {
            (
                l.as_str().to_string(),
                json!({"permit": s.layer_permit[l.index()], "block": s.layer_block[l.index()]}),
            )
        })
        .collect();
    let ports: Map<String, Value> = gw
        .port_names()
        .into_iter()
        .zip(&s.ports)
        .map(|(name, p)| {
            (
                name,
                json!({"rx_packets": p.rx_packets, "tx_packets": p.tx_packets, "rx_bytes": p.rx_bytes, "tx_bytes": p.tx_bytes}),
            )
        })
        .collect();
    json!({
        "flows_active": gw.flows_active(),
        "flows_created": s.flows_created,
        "flows_closed": closed,
        "discards": discards,
        "layers": layers,
        "reauthorizations": s.reauthorizations,
        "vetoes": s.vetoes,
        "related_icmp": s.related_icmp,
        "adaptive_factor": gw.adaptive_factor(),
        "policy_generation": generation,
        "ports": ports,
        "workers": workers,
        "fragments_tracked": gw.fragments().len(),
        "events_dropped": s.events_dropped,
        "read_errors": io.read_errors,
        "write_errors": io.write_errors,
    })
}

/// Runs the gateway from `path` until SIGINT/SIGTERM. Errors before the
/// gateway runs come back as `Err` with a message for the operator.
pub fn run(path: &Path) -> anyhow::Result<()> {
    let registry = CalloutRegistry::default();
    let config = Config::load(path, &registry).map_err(|e| anyhow::anyhow!("{e}"))?;
    let policy = Arc::new(
        Policy::compile(&config.policy, &registry, None)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
    );
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGHUP,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])?;
    let workers = config.gateway.workers.count();
    let mut ports = crate::io::open_ports(&config.ports, workers, config.gateway.offload)?;
    let vnet_hdr = ports.first().is_some_and(|p| p.vnet_hdr);
    info!(offload = vnet_hdr, "I/O mode");

    let clock = Clock::start();
    let gateway = Gateway::with_workers(config.gateway_config(), workers);
    let (events_tx, events_rx) = crossbeam_channel::unbounded();
    let (hub_tx, hub_rx) = crossbeam_channel::unbounded();
    let hub_thread = hub::spawn(
        HubConfig {
            ports: config.port_names(),
            file: config.events.file.clone(),
            discard_rate: config.events.discard_rate,
            clock,
        },
        events_rx,
        hub_rx,
    )?;
    let hub = Hub { control: hub_tx };

    let queues_by_worker = crate::io::queues_by_worker(&mut ports, workers);
    let mut handles = Vec::new();
    for (i, queues) in queues_by_worker.into_iter().enumerate() {
        let (poll, waker) = Worker::poll_and_waker()?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let engine = gateway.engine(Arc::clone(&policy) as Arc<dyn Authorizer>, i, workers);
        let worker = Worker::new(engine, queues, poll, rx, events_tx.clone(), clock, vnet_hdr);
        let thread = std::thread::Builder::new()
            .name(format!("tunwall-worker-{i}"))
            .spawn(move || {
                if let Err(e) = worker.run() {
                    error!(worker = i, error = %e, "worker stopped");
                }
            })?;
        handles.push(WorkerHandle {
            control: tx,
            waker,
            thread: Some(thread),
        });
    }
    drop(events_tx);

    let socket = config.gateway.control_socket.clone();
    let group = config.gateway.control_socket_group.clone();
    let daemon = Arc::new(Daemon {
        path: path.to_path_buf(),
        registry,
        config: Mutex::new(config),
        policy: Mutex::new(policy),
        gateway,
        workers: handles,
        clock,
        hub: hub.clone(),
    });
    let server = match ControlServer::start(
        &socket,
        group.as_deref(),
        Arc::clone(&daemon) as Arc<dyn ControlHandler>,
    ) {
        Ok(s) => Some(s),
        Err(e) => {
            error!(error = %e, "control socket");
            None
        }
    };
    info!(workers, socket = %socket.display(), "tunwall running");

    let mut failed = server.is_none();
    if !failed {
        for signal in signals.forever() {
            match signal {
                signal_hook::consts::SIGHUP => {
                    daemon.reload();
                }
                _ => {
                    info!(signal, "shutting down");
                    break;
                }
            }
        }
    }

    // Shutdown: the control thread goes first (it holds the daemon), then
    // the workers close their flows, then everything else goes.
    if let Some(server) = server {
        server.stop();
    }
    let daemon =
        Arc::try_unwrap(daemon).map_err(|_| anyhow::anyhow!("the control thread did not stop"))?;
    let Daemon {
        workers: handles, ..
    } = daemon;
    for w in &handles {
        w.send(Control::Shutdown);
    }
    for mut w in handles {
        if let Some(t) = w.thread.take()
            && t.join().is_err()
        {
            failed = true;
        }
    }
    let _ = hub.control.send(HubMessage::Stop);
    let _ = hub_thread.join();
    for port in ports {
        port.close();
    }
    let _ = std::fs::remove_file(&socket);
    if failed {
        anyhow::bail!("tunwall stopped after an error (see the log)");
    }
    info!("stopped");
    Ok(())
}
