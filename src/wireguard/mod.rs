//! Reading WireGuard peers for identities (SPEC §11): the userspace API
//! socket where one exists (wireguard-go, boringtun), else the kernel's
//! generic netlink; and the watcher thread that reads every `[[wireguard]]`
//! interface at its refresh interval and reports changed peer sets.
//!
//! A read that fails after start-up keeps the last known peers: it is
//! counted and logged, and nothing changes for the policy.

pub mod netlink;
pub mod uapi;

use crate::config::WireguardConfig;
use crate::policy::{Peer, PeerSnapshot};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// How long one read may take.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// Reads the peers of one interface.
pub fn read(w: &WireguardConfig) -> Result<Vec<Peer>, String> {
    let socket = uapi::socket_path(&w.interface);
    let result = if socket.exists() {
        uapi::get(&w.interface, READ_TIMEOUT)
    } else {
        let interface = w.interface.clone();
        crate::io::in_netns(w.netns.as_deref(), move || {
            netlink::get(&interface).map_err(std::io::Error::other)
        })
        .map_err(|e| {
            format!(
                "no userspace API socket at {} and the kernel answered: {e}",
                socket.display()
            )
        })
    };
    let mut peers = result.map_err(|e| format!("wireguard interface \"{}\": {e}", w.interface))?;
    // wireguard-go lists its peers in a different order on every read.
    for p in &mut peers {
        p.allowed_ips.sort_unstable();
    }
    peers.sort_unstable_by_key(|p| p.key);
    Ok(peers)
}

/// Reads every interface: the first read, before any device is touched.
pub fn read_all(configs: &[WireguardConfig]) -> Result<PeerSnapshot, String> {
    configs
        .iter()
        .map(|w| Ok((w.interface.clone(), read(w)?)))
        .collect()
}

/// The watcher thread; stops when dropped.
pub struct Watch {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Watch {
    /// Starts reading `configs` from `initial`, calling `changed` with the
    /// whole snapshot whenever an interface's peers differ from the last
    /// read, and counting failed reads in `errors`.
    pub fn spawn(
        configs: Vec<WireguardConfig>,
        initial: PeerSnapshot,
        errors: Arc<AtomicU64>,
        changed: impl Fn(&PeerSnapshot) + Send + 'static,
    ) -> std::io::Result<Watch> {
        let (stop, stopped) = crossbeam_channel::bounded(1);
        let thread = std::thread::Builder::new()
            .name("tunwall-wireguard".into())
            .spawn(move || watch(configs, initial, stopped, &errors, changed))?;
        Ok(Watch {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn watch(
    configs: Vec<WireguardConfig>,
    mut snapshot: PeerSnapshot,
    stopped: Receiver<()>,
    errors: &AtomicU64,
    changed: impl Fn(&PeerSnapshot),
) {
    let start = Instant::now();
    let mut due: Vec<Instant> = configs.iter().map(|w| start + w.refresh).collect();
    let mut failing = vec![false; configs.len()];
    loop {
        let Some((i, &next)) = due.iter().enumerate().min_by_key(|(_, d)| **d) else {
            // No interface: wait for the stop.
            let _ = stopped.recv();
            return;
        };
        match stopped.recv_timeout(next.saturating_duration_since(Instant::now())) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        let w = &configs[i];
        due[i] = Instant::now() + w.refresh;
        match read(w) {
            Ok(peers) => {
                if failing[i] {
                    info!(interface = %w.interface, "wireguard interface readable again");
                    failing[i] = false;
                }
                if snapshot.get(&w.interface) != Some(&peers) {
                    snapshot.insert(w.interface.clone(), peers);
                    changed(&snapshot);
                }
            }
            Err(error) => {
                errors.fetch_add(1, Ordering::Relaxed);
                // Logged when it starts failing, then every 60th failure.
                if !failing[i] || errors.load(Ordering::Relaxed) % 60 == 0 {
                    warn!(%error, "wireguard read failed; keeping the last known peers");
                }
                failing[i] = true;
            }
        }
    }
}
