//! `tunwall run`: from the configuration to a forwarding gateway. The
//! ports, the control socket and the carried flows come from a fresh start
//! ([`super::fresh`]) or from the process handing over
//! ([`super::takeover`]); everything after is the same for both.

use super::stop::Running;
use super::{Daemon, Opened, fresh, takeover, workers};
use crate::config::Config;
use crate::control::capture::Capture;
use crate::control::hub::{self, Hub, HubConfig};
use crate::control::metrics::MetricsListener;
use crate::control::queue::{self, event_queue};
use crate::control::{BoundSocket, ControlHandler};
use crate::engine::Gateway;
use crate::handover::{self, Incoming};
use crate::io::Port;
use crate::io::capture::CaptureTap;
use crate::io::worker::Clock;
use crate::policy::{Authorizer, CalloutRegistry, Policy};
use crate::restart;
use crate::wireguard::{self, Watch};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use tracing::{info, warn};

/// Runs the gateway from `path` until SIGINT/SIGTERM (or until an upgrade
/// handed it over). Errors before the gateway runs come back as `Err` with
/// a message for the operator.
pub fn run(path: &Path) -> anyhow::Result<()> {
    let registry = CalloutRegistry::default();
    let mut config = Config::load(path, &registry).map_err(|e| anyhow::anyhow!("{e}"))?;
    // The first read of the WireGuard peers, before any device is touched.
    let peers = wireguard::read_all(&config.wireguard).map_err(|e| anyhow::anyhow!("{e}"))?;
    config.policy.resolve_identities(&peers);
    let policy = Policy::compile(&config.policy, &registry, None)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGHUP,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGUSR1,
    ])?;
    let workers = config.gateway.workers.count();

    // What is carried over: from the process handing over, or from the
    // state file (read before any port opens).
    let incoming = match std::env::var_os(handover::ENV) {
        Some(p) => Some(Incoming::connect(Path::new(&p))?),
        None => None,
    };
    let opened = match &incoming {
        Some(incoming) => match takeover::take_over(incoming, &config, workers) {
            Ok(t) => t,
            Err(e) => {
                incoming.failed(&format!("{e:#}"));
                return Err(e);
            }
        },
        None => fresh::open(&config, workers)?,
    };
    let start = Start {
        path,
        registry,
        config,
        peers,
        policy,
        signals,
        incoming,
    };
    start.run(opened)?.serve_until_stopped()
}

/// A configuration loaded and compiled, its ports open.
struct Start<'a> {
    path: &'a Path,
    registry: CalloutRegistry,
    config: Config,
    peers: crate::policy::PeerSnapshot,
    policy: Policy,
    signals: signal_hook::iterator::Signals,
    incoming: Option<Incoming>,
}

/// Closes (or, handed over, keeps) what a start that failed had opened.
fn give_up(ports: Vec<Port>, bound: BoundSocket, keep: bool) {
    for port in ports {
        if keep { port.keep() } else { port.close() }
    }
    if keep { drop(bound) } else { bound.remove() }
}

impl Start<'_> {
    /// Restores the carried flows, starts the event hub, the workers, the
    /// control socket and metrics, and says the gateway is running.
    fn run(self, opened: Opened) -> anyhow::Result<Running> {
        let Start {
            path,
            registry,
            config,
            peers,
            mut policy,
            signals,
            incoming,
        } = self;
        let Opened {
            carried,
            bound,
            mut ports,
            metrics: handed_metrics,
            sync: handed_sync,
        } = opened;
        let taking_over = incoming.is_some();
        let workers = config.gateway.workers.count();
        let socket = config.gateway.control_socket.clone();
        let header = carried
            .as_deref()
            .and_then(|data| restart::check(data, &config).ok());
        if let Some(header) = &header {
            // Devices the previous process made persistent are tunwall's.
            for (port, saved) in ports.iter_mut().zip(&header.ports) {
                if saved.persisted && !taking_over {
                    port.created = true;
                    port.persistent = true;
                }
            }
            if let Some(lineage) = &header.policy {
                policy.continue_lineage(lineage);
            }
        }
        let policy = Arc::new(policy);
        let event_file = match &config.events.file {
            Some(path) => match hub::open_event_file(path) {
                Ok(f) => Some(f),
                Err(e) => {
                    give_up(ports, bound, taking_over);
                    return Err(e.into());
                }
            },
            None => None,
        };
        let bound_metrics = match handed_metrics {
            Some(m) => Ok(Some(m)),
            None => config.metrics_listen.map(MetricsListener::bind).transpose(),
        };
        let metrics = match bound_metrics {
            Ok(m) => m,
            // An upgrade moving metrics to an address the old process (or
            // another) still holds: the new one goes without metrics
            // rather than failing the hand-over.
            Err(e) if taking_over => {
                warn!(error = %e, "metrics not served after the upgrade");
                None
            }
            Err(e) => {
                give_up(ports, bound, false);
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
        if let Some(settings) = &config.sync {
            // Before the restore: the restored next id stays in this node's range.
            gateway.set_sync_node(settings.node_ids().0);
        }
        if let Some(data) = &carried {
            match restart::restore(&gateway, &clock, data) {
                Ok(done) => carried_flows = done.flows,
                Err(e) if taking_over => {
                    give_up(ports, bound, true);
                    return Err(anyhow::anyhow!("the handed-over flow table: {e}"));
                }
                Err(e) => warn!(error = %e, "state file refused: ignored, starting without flows"),
            }
            if !taking_over && let Some(p) = &config.gateway.state_file {
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
                match crate::sync::node::spawn(settings, Arc::clone(&gateway), clock, handed_sync) {
                    Ok(handle) => Some(handle),
                    Err(e) => {
                        give_up(ports, bound, taking_over);
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
        let handles = workers::spawn(
            &gateway,
            &ports,
            workers,
            &events_tx,
            clock,
            &tap,
            &worker_failed,
        )?;
        drop(events_tx);

        let config_ports = config.port_names();
        let listener = bound
            .listener()
            .try_clone()
            .ok()
            .map(std::os::fd::OwnedFd::from);
        let metrics_fd = metrics
            .as_ref()
            .and_then(|m| Some((m.addr(), m.handover_fd().ok()?)));
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
            metrics: metrics_fd,
            handed_over: AtomicBool::new(false),
            signals: signals.handle(),
            sync: sync.as_ref().map(|h| Arc::clone(&h.shared)),
        });
        let server = match bound.serve(Arc::clone(&daemon) as Arc<dyn ControlHandler>) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "control socket");
                None
            }
        };
        let metrics = match metrics.map(|m| m.serve(Arc::clone(&daemon) as Arc<dyn ControlHandler>))
        {
            Some(Ok(m)) => Some(m),
            Some(Err(e)) => {
                tracing::error!(error = %e, "metrics");
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
        Ok(Running {
            daemon,
            signals,
            server,
            metrics,
            watch,
            hub,
            hub_thread,
            worker_failed,
            socket,
            sync,
        })
    }
}
