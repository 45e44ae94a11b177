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
//!
//! A start opens its ports afresh (`fresh`) or takes them over
//! (`takeover`); [`run`] builds the gateway on them, `workers` runs
//! its threads, and `stop` serves signals until the gateway stops.

mod fresh;
mod run;
mod stop;
mod takeover;
mod workers;

pub use run::run;

use crate::config::Config;
use crate::control::capture::Capture;
use crate::control::flows::{Listing, write_flows};
use crate::control::hub::{Hub, HubMessage};
use crate::control::queue::EventCounters;
use crate::control::{BoundSocket, ControlHandler};
use crate::engine::{Gateway, Stats};
use crate::flow::FlowSelector;
use crate::io::Port;
use crate::io::worker::{Clock, Control, IoStats, WorkerHandle};
use crate::policy::{Action, Authorizer, CalloutRegistry, PeerSnapshot, Policy};
use crate::render;
use serde_json::{Value, json};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{error, info, warn};

/// What a start has before the gateway is built: the carried flow table
/// (if any), the control socket and the open ports.
struct Opened {
    carried: Option<Vec<u8>>,
    bound: BoundSocket,
    ports: Vec<Port>,
    /// The metrics listener handed over by the process taken over from.
    metrics: Option<crate::control::metrics::MetricsListener>,
    /// The sync socket handed over by it (SPEC §15), bound to `[sync] listen`.
    sync: Option<std::net::UdpSocket>,
}

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
    /// The metrics address and a copy of its listening socket, to hand over.
    pub(crate) metrics: Option<(std::net::SocketAddr, std::os::fd::OwnedFd)>,
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
                    io.merge(&i);
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
    /// one policy of every worker, reauthorize through generations. The
    /// service manager is told a reload runs (`RELOADING=1`) and that the
    /// gateway is ready again after it, whether the new policy or the old
    /// one is in force (`READY=1`).
    pub fn reload(&self) -> Value {
        if let Err(e) = crate::io::notify::reloading() {
            warn!(error = %e, "telling the service manager we reload");
        }
        let answer = self.reload_file();
        if let Err(e) = crate::io::notify::notify("READY=1") {
            warn!(error = %e, "telling the service manager we are ready again");
        }
        answer
    }

    fn reload_file(&self) -> Value {
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
