//! A running gateway until it stops: signals (SIGHUP reloads, SIGUSR1
//! reopens the event file, SIGINT/SIGTERM stop), then the shutdown — or,
//! after `tunwall upgrade`, the quiet exit of the process that handed over.

use super::Daemon;
use crate::control::ControlServer;
use crate::control::hub::{Hub, HubMessage};
use crate::control::metrics::MetricsServer;
use crate::io::worker::Control;
use crate::wireguard::Watch;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing::{error, info};

/// Everything a running gateway owns besides its [`Daemon`].
pub(super) struct Running {
    pub(super) daemon: Arc<Daemon>,
    pub(super) signals: signal_hook::iterator::Signals,
    pub(super) server: Option<ControlServer>,
    pub(super) metrics: Option<MetricsServer>,
    pub(super) watch: Option<Watch>,
    pub(super) hub: Hub,
    pub(super) hub_thread: std::thread::JoinHandle<()>,
    pub(super) worker_failed: Arc<AtomicBool>,
    pub(super) socket: PathBuf,
    pub(super) sync: Option<crate::sync::node::SyncHandle>,
}

impl Running {
    /// Serves signals until a stop (or a hand-over), then takes everything
    /// apart: with a state file the flows are saved and the devices kept,
    /// handed over they are left to the new process.
    pub(super) fn serve_until_stopped(self) -> anyhow::Result<()> {
        let Running {
            daemon,
            mut signals,
            server,
            metrics,
            watch,
            hub,
            hub_thread,
            worker_failed,
            socket,
            sync,
        } = self;
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
        let daemon = Arc::try_unwrap(daemon)
            .map_err(|_| anyhow::anyhow!("the control thread did not stop"))?;
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
}
