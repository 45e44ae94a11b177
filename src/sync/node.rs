//! The sync thread of one node (SPEC §15): one UDP socket bound to
//! `[sync] listen`, datagrams to and from `[sync] peer`, a
//! [`Replicator`] round every few milliseconds, and the status the control
//! socket shows.

use super::SyncConfig;
use super::replicator::Replicator;
use crate::engine::Gateway;
use crate::io::clock::Clock;
use serde_json::Value;
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use tracing::info;

/// The longest the thread waits for a datagram before a round.
const POLL: Duration = Duration::from_millis(5);
/// How often the shared status is renewed.
const PUBLISH: Duration = Duration::from_millis(50);

/// What `sync status` shows, renewed by the sync thread; and what
/// `tunwall upgrade` needs of it (SPEC §13): its socket, and a pause while
/// the new process takes over.
#[derive(Default)]
pub struct Shared {
    status: Mutex<Value>,
    /// The sync socket, for the hand-over to a new process (which cannot
    /// bind the address while this one holds it).
    socket: Option<UdpSocket>,
    /// The listen address of [`Shared::socket`].
    listen: Option<std::net::SocketAddr>,
    /// The thread neither reads nor sends while set.
    paused: AtomicBool,
}

impl Shared {
    /// The sync socket (another descriptor of it) and its address, for a
    /// hand-over.
    pub fn socket(&self) -> std::io::Result<(std::net::SocketAddr, std::os::fd::OwnedFd)> {
        match (&self.socket, self.listen) {
            (Some(s), Some(listen)) => Ok((listen, s.try_clone()?.into())),
            _ => Err(std::io::Error::other("no sync socket")),
        }
    }

    /// Stops (`true`) or resumes the thread's reading and sending: while an
    /// upgrade's new process takes over the socket, the datagrams wait in
    /// it for the new process.
    pub fn pause(&self, paused: bool) {
        self.paused.store(paused, Ordering::Relaxed);
    }

    /// The status as JSON (SPEC §15 `sync status --json`).
    pub fn status(&self) -> Value {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The running sync thread.
pub struct SyncHandle {
    /// Its status.
    pub shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SyncHandle {
    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Binds `[sync] listen` (or goes on with `adopted`, the socket an
/// upgrade handed over, already bound there) and starts replicating
/// `gateway`, whose replication must not be on yet.
pub fn spawn(
    config: &SyncConfig,
    gateway: Arc<Gateway>,
    clock: Clock,
    adopted: Option<UdpSocket>,
) -> anyhow::Result<SyncHandle> {
    let socket = match adopted {
        Some(socket) => socket,
        None => UdpSocket::bind(config.listen)
            .map_err(|e| anyhow::anyhow!("[sync] listen {}: {e}", config.listen))?,
    };
    socket.set_read_timeout(Some(POLL))?;
    socket.set_nonblocking(false)?;
    let session = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_millis() as u64);
    let mut replicator = Replicator::new(config, gateway, session)?;
    let shared = Arc::new(Shared {
        socket: Some(socket.try_clone()?),
        listen: Some(config.listen),
        ..Shared::default()
    });
    let stop = Arc::new(AtomicBool::new(false));
    info!(node = config.node_ids().0, peer = %config.peer, listen = %config.listen, "sync running");
    let (stopping, publish, peer) = (Arc::clone(&stop), Arc::clone(&shared), config.peer);
    let thread = std::thread::Builder::new()
        .name("tunwall-sync".into())
        .spawn(move || {
            let mut buf = vec![0u8; 65_536];
            let mut published = None;
            while !stopping.load(Ordering::Relaxed) {
                if publish.paused.load(Ordering::Relaxed) {
                    std::thread::sleep(POLL);
                    continue;
                }
                // The first wait is bounded by POLL, the rest take what is there.
                let mut got = socket.recv_from(&mut buf);
                socket.set_nonblocking(true).ok();
                while let Ok((n, _)) = got {
                    replicator.receive(clock.now(), &mut buf[..n]);
                    got = socket.recv_from(&mut buf);
                }
                socket.set_nonblocking(false).ok();
                let now = clock.now();
                replicator.round(now, |d| {
                    let _ = socket.send_to(d, peer);
                });
                if published.is_none_or(|t| now.saturating_since(t) >= PUBLISH) {
                    *publish.status.lock().unwrap_or_else(|p| p.into_inner()) =
                        replicator.status(now);
                    published = Some(now);
                }
            }
        })?;
    Ok(SyncHandle {
        shared,
        stop,
        thread: Some(thread),
    })
}
