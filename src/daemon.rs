//! `tunwall run`: wiring the configuration, ports, workers, the event hub,
//! the control socket and signals together, and taking them apart again.
//!
//! Start-up validates and compiles everything before touching a device; a
//! failure after some ports are open closes them again. SIGHUP reloads,
//! SIGUSR1 reopens the event file (logrotate). Shutdown (SIGINT or
//! SIGTERM) stops the workers — each closes the flows of its shards with
//! reason `shutdown` — flushes the events, removes the socket and the
//! devices tunwall created, and exits 0. With `[gateway] state_file`, a
//! stop saves the flows instead and keeps the devices, and a start carries
//! the saved flows on; `tunwall upgrade` hands everything to a new process
//! (SPEC §13, [`crate::restart`], [`crate::handover`]).

use crate::config::Config;
use crate::control::capture::Capture;
use crate::control::flows::{Listing, write_flows};
use crate::control::hub::{self, Hub, HubConfig, HubMessage};
use crate::control::metrics::MetricsListener;
use crate::control::queue::{self, EventCounters, event_queue};
use crate::control::{BoundSocket, ControlHandler};
use crate::engine::{Gateway, Stats};
use crate::flow::FlowSelector;
use crate::handover::{self, Incoming};
use crate::io::Port;
use crate::io::capture::CaptureTap;
use crate::io::worker::{Clock, Control, IoStats, Worker, WorkerHandle};
use crate::policy::{Action, Authorizer, CalloutRegistry, PeerSnapshot, Policy};
use crate::render;
use crate::restart;
use crate::wireguard::{self, Watch};
use serde_json::{Value, json};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{error, info, warn};

/// The running gateway as the control socket and signals see it.
pub struct Daemon {
    pub(crate) path: PathBuf,
    pub(crate) registry: CalloutRegistry,
    pub(crate) config: Mutex<Config>,
    pub(crate) policy: Mutex<Arc<Policy>>,
    pub(crate) gateway: Arc<Gateway>,
    pub(crate) workers: Vec<WorkerHandle>,
    pub(crate) clock: Clock,
    pub(crate) hub: Hub,
    events: Arc<EventCounters>,
    capture: Capture,
    /// The open ports (their queues are handed over by an upgrade).
    pub(crate) ports: Vec<Port>,
    /// A copy of the listening control socket, to hand over.
    pub(crate) listener: Option<std::os::fd::OwnedFd>,
    /// Set once an upgrade handed everything over: the gateway exits.
    pub(crate) handed_over: AtomicBool,
    /// Ends the signal loop.
    pub(crate) signals: signal_hook::iterator::Handle,
    /// The HA sync thread's status (SPEC §15), with `[sync]`.
    pub(crate) sync: Option<Arc<crate::sync::node::Shared>>,
    /// The WireGuard peers last read (SPEC §11).
    peers: Mutex<PeerSnapshot>,
    /// WireGuard reads that failed since start.
    wireguard_errors: Arc<AtomicU64>,
    /// The offloads each port got from the kernel ([`crate::io::Port::offload`]), by port index.
    offloads: Vec<&'static str>,
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
        io.capture_lost = self.capture.lost();
        // Events lost after the engines: a full queue, a slow reader.
        total.events_dropped += self.events.dropped();
        (total, io)
    }

    /// Reloads the file: compile, refuse what cannot change live, swap the
    /// one policy of every worker, reauthorize through generations.
    pub fn reload(&self) -> Value {
        let config = match Config::load(&self.path, &self.registry) {
            Ok(c) => c,
            Err(e) => return self.reload_failed(e.to_string()),
        };
        let mut config = config;
        let mut running = self.config.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = running.reloadable_from(&config) {
            return self.reload_failed(e);
        }
        config
            .policy
            .resolve_identities(&self.peers.lock().unwrap_or_else(|p| p.into_inner()));
        let mut current = self.policy.lock().unwrap_or_else(|p| p.into_inner());
        let policy = match Policy::compile(&config.policy, &self.registry, Some(&current)) {
            Ok(p) => Arc::new(p),
            Err(e) => return self.reload_failed(format!("{}: {e}", self.path.display())),
        };
        *current = Arc::clone(&policy);
        self.gateway
            .set_policy(Arc::clone(&policy) as Arc<dyn Authorizer>);
        let changed: Vec<&str> = policy.changed_layers().iter().map(|l| l.as_str()).collect();
        info!(generation = policy.policy_generation(), changed_layers = ?changed, "policy reloaded");
        running.policy = config.policy;
        self.hub.emit(json!({
            "event": "policy_reloaded",
            "generation": policy.policy_generation(),
            "changed_layers": changed,
        }));
        json!({
            "ok": true,
            "generation": policy.policy_generation(),
            "changed_layers": changed,
        })
    }

    /// A WireGuard interface's peers changed: the identities naming its
    /// peers get new addresses, a policy change of the layers whose filters
    /// name them, installed as a reload installs one.
    pub fn peers_changed(&self, peers: &PeerSnapshot) {
        let mut running = self.config.lock().unwrap_or_else(|p| p.into_inner());
        let mut current = self.policy.lock().unwrap_or_else(|p| p.into_inner());
        *self.peers.lock().unwrap_or_else(|p| p.into_inner()) = peers.clone();
        let mut spec = running.policy.clone();
        let identities = spec.resolve_identities(peers);
        if identities.is_empty() {
            return;
        }
        let policy = match Policy::compile(&spec, &self.registry, Some(&current)) {
            Ok(p) => Arc::new(p.identity_change(&current)),
            Err(e) => {
                error!(error = %e, "identities changed but the policy did not compile; the running policy stays");
                return;
            }
        };
        *current = Arc::clone(&policy);
        self.gateway
            .set_policy(Arc::clone(&policy) as Arc<dyn Authorizer>);
        running.policy = spec;
        let changed: Vec<&str> = policy.changed_layers().iter().map(|l| l.as_str()).collect();
        info!(?identities, generation = policy.policy_generation(), changed_layers = ?changed, "identities changed");
        self.hub.emit(json!({
            "event": "identities_changed",
            "identities": identities,
            "generation": policy.policy_generation(),
            "changed_layers": changed,
        }));
    }

    fn reload_failed(&self, error: String) -> Value {
        error!(%error, "reload failed; the running policy stays");
        self.hub
            .emit(json!({"event": "reload_failed", "error": error}));
        json!({"ok": false, "error": error})
    }
}

impl Daemon {
    /// The flows a request's `select` object picks, names resolved against
    /// the running configuration.
    fn selector(&self, request: &Value) -> Result<FlowSelector, String> {
        let config = self.config.lock().unwrap_or_else(|p| p.into_inner());
        FlowSelector::from_json(
            request.get("select"),
            &self.gateway.port_names(),
            &config.policy.identities.address_groups(),
        )
    }
}

impl ControlHandler for Daemon {
    fn flows(&self, request: &Value, out: &mut dyn Write) -> std::io::Result<()> {
        let selector = match self.selector(request) {
            Ok(s) => s,
            Err(error) => return writeln!(out, "{}", json!({"ok": false, "error": error})),
        };
        let mut listing = Listing::of_request(request, selector);
        listing.identities = self
            .config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .policy
            .identities
            .clone();
        write_flows(&self.gateway, self.clock.now(), &listing, out).map(|_| ())
    }

    fn kill(&self, request: &Value) -> Value {
        let selector = match self.selector(request) {
            Ok(s) => Arc::new(s),
            Err(error) => return json!({"ok": false, "error": error}),
        };
        let (tx, rx) = crossbeam_channel::unbounded();
        for w in &self.workers {
            w.send(Control::Kill(Arc::clone(&selector), tx.clone()));
        }
        let mut closed = 0;
        for _ in &self.workers {
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(n) => closed += n,
                Err(_) => warn!("a worker did not answer a kill request"),
            }
        }
        info!(closed, "flows closed by the operator");
        json!({"ok": true, "closed": closed})
    }

    fn identities(&self) -> Value {
        let config = self.config.lock().unwrap_or_else(|p| p.into_inner());
        render::json::identities(&config.policy.identities, &config.port_names())
    }

    fn stats(&self) -> Value {
        let (s, io) = self.gather();
        let policy = Arc::clone(&self.policy.lock().unwrap_or_else(|p| p.into_inner()));
        let mut stats = render::json::stats(
            &s,
            &io,
            &self.gateway,
            policy.policy_generation(),
            self.workers.len(),
            &policy.filter_counts(),
        );
        render::json::wireguard_stats(&mut stats, self.wireguard_errors.load(Ordering::Relaxed));
        render::json::offload_stats(&mut stats, &self.gateway.port_names(), &self.offloads);
        if let Some(sync) = &self.sync {
            stats["sync"] = sync.status();
        }
        stats
    }

    fn sync_status(&self) -> Value {
        match &self.sync {
            Some(sync) => sync.status(),
            None => json!({"ok": false, "error": "this gateway has no [sync] section"}),
        }
    }

    fn reload(&self) -> Value {
        Daemon::reload(self)
    }

    fn capture(&self, stream: UnixStream, request: &Value) {
        self.capture.start(stream, request);
    }

    fn decide(&self, id: u64, decision: Action) -> Value {
        match self.gateway.complete(id, decision) {
            Ok(()) => json!({"ok": true, "id": id, "decision": decision.as_str()}),
            Err(e) => json!({"ok": false, "error": format!("flow {id}: {e}")}),
        }
    }

    fn pending(&self) -> Value {
        let now = self.clock.now();
        let ports = self.gateway.port_names();
        Value::Array(
            self.gateway
                .pending()
                .iter()
                .map(|p| render::json::pending(p, &ports, now))
                .collect(),
        )
    }

    fn subscribe(&self, stream: UnixStream) {
        let _ = self.hub.control.send(HubMessage::Subscribe(stream));
    }

    fn upgrade(&self, binary: Option<PathBuf>) -> Value {
        Daemon::upgrade(self, binary)
    }

    fn serving(&self) -> bool {
        !self.handed_over.load(Ordering::Relaxed)
    }
}

/// Notices a worker thread that ends other than by shutdown (an error or a
/// panic) and stops the whole gateway: a gateway missing a worker would
/// silently drop the flows steered to its queues.
struct WorkerWatch {
    worker: usize,
    failed: Arc<AtomicBool>,
    done: bool,
}

impl Drop for WorkerWatch {
    fn drop(&mut self) {
        if !self.done {
            error!(worker = self.worker, "worker died; stopping the gateway");
            self.failed.store(true, Ordering::Relaxed);
            let _ = signal_hook::low_level::raise(signal_hook::consts::SIGTERM);
        }
    }
}

/// Runs the gateway from `path` until SIGINT/SIGTERM (or until an upgrade
/// handed it over). Errors before the gateway runs come back as `Err` with
/// a message for the operator.
pub fn run(path: &Path) -> anyhow::Result<()> {
    let registry = CalloutRegistry::default();
    let mut config = Config::load(path, &registry).map_err(|e| anyhow::anyhow!("{e}"))?;
    // The first read of the WireGuard peers, before any device is touched.
    let peers = wireguard::read_all(&config.wireguard).map_err(|e| anyhow::anyhow!("{e}"))?;
    config.policy.resolve_identities(&peers);
    let mut policy = Policy::compile(&config.policy, &registry, None)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGHUP,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGUSR1,
    ])?;
    let workers = config.gateway.workers.count();
    let socket = config.gateway.control_socket.clone();
    let persist = config.gateway.state_file.is_some();

    // What is carried over: from the process handing over, or from the
    // state file (read before any port opens).
    let incoming = match std::env::var_os(handover::ENV) {
        Some(p) => Some(Incoming::connect(Path::new(&p))?),
        None => None,
    };
    let (carried, bound, mut ports) = if let Some(incoming) = &incoming {
        match take_over(incoming, &config, workers) {
            Ok(t) => t,
            Err(e) => {
                incoming.failed(&format!("{e:#}"));
                return Err(e);
            }
        }
    } else {
        let carried = config
            .gateway
            .state_file
            .as_deref()
            .and_then(|p| restart::read_state_file(p, &config));
        // Everything that can fail without a device is checked before the
        // first device is touched: the control socket and the event file.
        let bound = BoundSocket::bind(&socket, config.gateway.control_socket_group.as_deref())?;
        let ports =
            match crate::io::open_ports(&config.ports, workers, config.gateway.offload, persist) {
                Ok(p) => p,
                Err(e) => {
                    bound.remove();
                    return Err(e.into());
                }
            };
        (carried, bound, ports)
    };
    let header = carried
        .as_deref()
        .and_then(|data| restart::check(data, &config).ok());
    if let Some(header) = &header {
        // Devices the previous process made persistent are tunwall's.
        for (port, saved) in ports.iter_mut().zip(&header.ports) {
            if saved.persisted && incoming.is_none() {
                port.created = true;
                port.persistent = true;
            }
        }
        if let Some(lineage) = &header.policy {
            policy.continue_lineage(lineage);
        }
    }
    let policy = Arc::new(policy);
    let fail = |ports: Vec<Port>, bound: BoundSocket, keep: bool| {
        for port in ports {
            if keep { port.keep() } else { port.close() }
        }
        if keep { drop(bound) } else { bound.remove() }
    };
    let event_file = match &config.events.file {
        Some(path) => match hub::open_event_file(path) {
            Ok(f) => Some(f),
            Err(e) => {
                fail(ports, bound, incoming.is_some());
                return Err(e.into());
            }
        },
        None => None,
    };
    let metrics = match config.metrics_listen.map(MetricsListener::bind).transpose() {
        Ok(m) => m,
        // During an upgrade the old process still listens: the new one
        // goes without metrics rather than failing the hand-over.
        Err(e) if incoming.is_some() => {
            warn!(error = %e, "metrics not served after the upgrade");
            None
        }
        Err(e) => {
            fail(ports, bound, false);
            return Err(e.into());
        }
    };
    let vnet_hdr = ports.first().is_some_and(|p| p.vnet_hdr);
    info!(offload = vnet_hdr, "I/O mode");
    let offloads = ports.iter().map(crate::io::Port::offload).collect();

    let clock = Clock::start();
    let gateway = Gateway::new(
        config.gateway_config(),
        Arc::clone(&policy) as Arc<dyn Authorizer>,
        workers,
    );
    gateway.set_reject_rate(config.events.reject_rate);
    let mut carried_flows = 0;
    if let Some(data) = &carried {
        match restart::restore(&gateway, &clock, data) {
            Ok(done) => carried_flows = done.flows,
            Err(e) if incoming.is_some() => {
                fail(ports, bound, true);
                return Err(anyhow::anyhow!("the handed-over flow table: {e}"));
            }
            Err(e) => warn!(error = %e, "state file refused: ignored, starting without flows"),
        }
        if incoming.is_none()
            && let Some(p) = &config.gateway.state_file
        {
            // Used once: a crash later must not bring back stale flows.
            let _ = std::fs::remove_file(p);
        }
    }
    // Replication starts before any packet, so every flow is exported.
    let sync = match &config.sync {
        Some(settings) => {
            if settings.key_shared {
                warn!(key_file = %settings.key_file.display(), "the sync key file is readable by its group or others; make it mode 0600");
            }
            match crate::sync::node::spawn(settings, Arc::clone(&gateway), clock) {
                Ok(handle) => Some(handle),
                Err(e) => {
                    fail(ports, bound, incoming.is_some());
                    return Err(e);
                }
            }
        }
        None => None,
    };
    let (events_tx, events_rx) = event_queue(queue::DEFAULT_LIMIT);
    let event_counters = Arc::clone(events_tx.counters());
    let (hub_tx, hub_rx) = crossbeam_channel::unbounded();
    let hub_thread = hub::spawn(
        HubConfig {
            ports: config.port_names(),
            file: event_file,
            discard_rate: config.events.discard_rate,
            clock,
        },
        events_rx,
        hub_rx,
    )?;
    let hub = Hub { control: hub_tx };

    let tap = Arc::new(CaptureTap::default());
    let worker_failed = Arc::new(AtomicBool::new(false));
    let queues_by_worker = crate::io::queues_by_worker(&ports, workers)?;
    let mut handles = Vec::new();
    for (i, queues) in queues_by_worker.into_iter().enumerate() {
        let (poll, waker) = Worker::poll_and_waker()?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let engine = gateway.engine(i);
        let wake = Arc::clone(&waker);
        gateway.set_waker(i, move || {
            if let Err(e) = wake.wake() {
                warn!(error = %e, "waking a worker");
            }
        });
        let worker = Worker::new(engine, queues, poll, rx, events_tx.clone(), clock, vnet_hdr)
            .with_capture(Arc::clone(&tap));
        let watch = WorkerWatch {
            worker: i,
            failed: Arc::clone(&worker_failed),
            done: false,
        };
        let thread = std::thread::Builder::new()
            .name(format!("tunwall-worker-{i}"))
            .spawn(move || {
                let mut watch = watch;
                match worker.run() {
                    Ok(()) => watch.done = true,
                    Err(e) => error!(worker = i, error = %e, "worker stopped"),
                }
            })?;
        handles.push(WorkerHandle {
            control: tx,
            waker,
            thread: Some(thread),
        });
    }
    drop(events_tx);

    let config_ports = config.port_names();
    let listener = bound
        .listener()
        .try_clone()
        .ok()
        .map(std::os::fd::OwnedFd::from);
    let wireguard_configs = config.wireguard.clone();
    let wireguard_errors = Arc::new(AtomicU64::new(0));
    let daemon = Arc::new(Daemon {
        path: path.to_path_buf(),
        registry,
        config: Mutex::new(config),
        peers: Mutex::new(peers.clone()),
        wireguard_errors: Arc::clone(&wireguard_errors),
        offloads,
        policy: Mutex::new(Arc::clone(&policy)),
        gateway,
        workers: handles,
        clock,
        hub: hub.clone(),
        events: event_counters,
        capture: Capture::new(tap, config_ports),
        ports,
        listener,
        handed_over: AtomicBool::new(false),
        signals: signals.handle(),
        sync: sync.as_ref().map(|h| Arc::clone(&h.shared)),
    });
    let server = match bound.serve(Arc::clone(&daemon) as Arc<dyn ControlHandler>) {
        Ok(s) => Some(s),
        Err(e) => {
            error!(error = %e, "control socket");
            None
        }
    };
    let metrics = match metrics.map(|m| m.serve(Arc::clone(&daemon) as Arc<dyn ControlHandler>)) {
        Some(Ok(m)) => Some(m),
        Some(Err(e)) => {
            error!(error = %e, "metrics");
            None
        }
        None => None,
    };
    let weak = Arc::downgrade(&daemon);
    let watch = if wireguard_configs.is_empty() {
        None
    } else {
        // The watch holds the daemon weakly: shutdown stops it first.
        let watch = Watch::spawn(wireguard_configs, peers, wireguard_errors, move |peers| {
            if let Some(daemon) = weak.upgrade() {
                daemon.peers_changed(peers);
            }
        })?;
        Some(watch)
    };
    info!(workers, socket = %socket.display(), "tunwall running");
    if let Some(incoming) = &incoming {
        // The service manager learns the new main pid from the old process.
        daemon.announce_takeover(incoming, carried_flows, header.as_ref());
    } else if server.is_some()
        && let Err(e) = crate::io::notify::notify("READY=1\nSTATUS=forwarding")
    {
        // Every port is up and the policy loaded: only now is the service ready
        // for systemd (`Type=notify`), so units ordered after it find a gateway.
        warn!(error = %e, "telling the service manager we are ready");
    }

    let mut failed = server.is_none();
    if !failed {
        for signal in signals.forever() {
            match signal {
                signal_hook::consts::SIGHUP => {
                    daemon.reload();
                }
                signal_hook::consts::SIGUSR1 => {
                    let config = daemon.config.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(path) = &config.events.file {
                        let _ = hub.control.send(HubMessage::Reopen(path.clone()));
                    }
                }
                _ => {
                    info!(signal, "shutting down");
                    break;
                }
            }
        }
    }
    let handed_over = daemon.handed_over.load(Ordering::Relaxed);
    if !handed_over {
        // Handed over, this process is no longer the service's.
        let _ = crate::io::notify::notify("STOPPING=1");
    }
    if worker_failed.load(Ordering::Relaxed) {
        error!("a worker stopped: the gateway stopped with it");
        failed = true;
    }
    // Shutdown: the control thread goes first (it holds the daemon), then
    // the workers close (or keep) their flows, then everything else goes.
    if let Some(server) = server {
        if handed_over {
            server.release();
        } else {
            server.stop();
        }
    }
    if let Some(metrics) = metrics {
        metrics.stop();
    }
    if let Some(watch) = watch {
        watch.stop();
    }
    // With a state file the flows are saved and the devices kept.
    let saved = !handed_over && !failed && daemon.save_state();
    let daemon =
        Arc::try_unwrap(daemon).map_err(|_| anyhow::anyhow!("the control thread did not stop"))?;
    let Daemon {
        workers: handles,
        ports,
        ..
    } = daemon;
    let carry_on = handed_over || saved;
    for w in &handles {
        w.send(if carry_on {
            Control::Detach
        } else {
            Control::Shutdown
        });
    }
    for mut w in handles {
        if let Some(t) = w.thread.take()
            && t.join().is_err()
        {
            failed = true;
        }
    }
    if let Some(sync) = sync {
        sync.stop();
    }
    let _ = hub.control.send(HubMessage::Stop);
    let _ = hub_thread.join();
    for port in ports {
        if carry_on { port.keep() } else { port.close() }
    }
    if !handed_over {
        let _ = std::fs::remove_file(&socket);
    }
    if failed {
        anyhow::bail!("tunwall stopped after an error (see the log)");
    }
    info!(handed_over, saved, "stopped");
    Ok(())
}

/// The new side of an upgrade, before the gateway is built: receives the
/// queues, the control listener and the flow table, and checks that they
/// fit this configuration.
fn take_over(
    incoming: &Incoming,
    config: &Config,
    workers: usize,
) -> anyhow::Result<(Option<Vec<u8>>, BoundSocket, Vec<Port>)> {
    let received = incoming.ready()?;
    let offer = &received.offer;
    let names: Vec<&str> = offer.ports.iter().map(|p| p.name.as_str()).collect();
    anyhow::ensure!(
        names
            == config
                .ports
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>(),
        "the ports handed over ({}) are not this configuration's",
        names.join(", ")
    );
    anyhow::ensure!(
        offer.queues == workers && received.fds.len() == offer.ports.len() * workers + 1,
        "{} descriptors for {} ports of {} queues, this configuration runs {workers} workers",
        received.fds.len(),
        offer.ports.len(),
        offer.queues
    );
    let mut fds = received.fds.into_iter();
    let mut ports = Vec::new();
    for (offered, port) in offer.ports.iter().zip(&config.ports) {
        let queues = fds
            .by_ref()
            .take(workers)
            .map(crate::io::Queue::from)
            .collect();
        ports.push(Port::adopt(
            port,
            queues,
            offered.created,
            offered.persistent,
            offer.vnet_hdr,
            offer.udp_gso,
        ));
    }
    let listener = std::os::unix::net::UnixListener::from(
        fds.next()
            .ok_or_else(|| anyhow::anyhow!("no control socket handed over"))?,
    );
    let socket = &config.gateway.control_socket;
    let bound = if *socket == offer.socket {
        BoundSocket::adopt(socket, listener)?
    } else {
        BoundSocket::bind(socket, config.gateway.control_socket_group.as_deref())?
    };
    restart::check(&received.state, config)?;
    Ok((Some(received.state), bound, ports))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_that_dies_stops_the_gateway_and_one_that_finishes_does_not() {
        // The gateway's main thread waits for SIGTERM; here a flag stands in.
        let term = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(signal_hook::consts::SIGTERM, Arc::clone(&term))
            .expect("SIGTERM handler");
        let failed = Arc::new(AtomicBool::new(false));
        let finishing = WorkerWatch {
            worker: 0,
            failed: Arc::clone(&failed),
            done: true,
        };
        drop(finishing);
        assert!(!failed.load(Ordering::Relaxed) && !term.load(Ordering::Relaxed));
        let dying = WorkerWatch {
            worker: 1,
            failed: Arc::clone(&failed),
            done: false,
        };
        let worker = std::thread::spawn(move || {
            let _watch = dying;
            panic!("a bug in a worker");
        });
        assert!(worker.join().is_err());
        assert!(failed.load(Ordering::Relaxed), "the gateway exits 1");
        assert!(term.load(Ordering::Relaxed), "the gateway is asked to stop");
    }
}
