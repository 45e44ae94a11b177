//! `tunwall upgrade` (SPEC §13): the running gateway hands its open TUN
//! queues, its listening control socket and its flow table to a new
//! process.
//!
//! The old process binds a one-off Unix socket beside the control socket
//! (mode 0600), starts the new process with the same arguments and the
//! socket's path in `TUNWALL_HANDOVER`, and accepts one connection, from
//! that child only (its peer credentials are checked). Then:
//!
//! ```text
//! new → old   {"ready": pid}                         config loaded, policy compiled
//!             (old: workers and the sync thread stop; the flow table is snapshot)
//! old → new   frame: Offer JSON + SCM_RIGHTS [queues port by port…, control listener,
//!             metrics listener?, sync socket?]
//! old → new   the state container (Offer::state_len bytes)
//!             (new: restores, starts its workers, serves the control socket)
//! new → old   {"running": flows}
//!             (old: tells the service manager the new main pid)
//! old → new   {"main": pid}                          (new: READY=1 to the service manager)
//! ```
//!
//! Either side reports a failure as `{"error": "…"}`. The old process gives
//! the whole exchange [`DEADLINE`]; if the child fails or is late, it is
//! killed and the old workers read again, having lost nothing: until the
//! child answers `running`, no packet was read by anybody.

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::io::{self, BufRead, BufReader, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The environment variable that tells a new process to take over.
pub const ENV: &str = "TUNWALL_HANDOVER";
/// How long the new process has to take over.
pub const DEADLINE: Duration = Duration::from_secs(10);
/// The most descriptors one hand-over carries (255 ports × 256 queues would
/// not fit a control message; the kernel's limit is 253 per message).
pub const MAX_FDS: usize = 253;
/// The largest offer.
const MAX_OFFER: usize = 1 << 20;

/// One port as handed over.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct OfferedPort {
    /// The port's name.
    pub name: String,
    /// tunwall created the device.
    pub created: bool,
    /// tunwall made it persistent.
    pub persistent: bool,
}

/// What the old process hands over besides the descriptors.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Offer {
    /// The old process.
    pub from_pid: u32,
    /// The ports, in order.
    pub ports: Vec<OfferedPort>,
    /// Queues per port (the descriptors come port by port).
    pub queues: usize,
    /// The queues carry a virtio-net header.
    pub vnet_hdr: bool,
    /// They carry UDP superframes too (USO granted).
    #[serde(default)]
    pub udp_gso: bool,
    /// The control socket the descriptor after the queues listens on.
    pub socket: PathBuf,
    /// The metrics address (`[metrics] listen`) the last descriptor listens
    /// on, if the old process serves metrics: the new one serves on the
    /// same socket, so the port is never closed.
    #[serde(default)]
    pub metrics: Option<std::net::SocketAddr>,
    /// The HA sync address (`[sync] listen`, SPEC §15) the descriptor after
    /// the metrics listener is bound to, if the old process runs a sync: the
    /// new one cannot bind it while the old one holds it.
    #[serde(default)]
    pub sync: Option<std::net::SocketAddr>,
    /// The length of the state container that follows.
    pub state_len: u64,
}

/// What the old process has to hand over, gathered once its workers stopped.
pub struct Payload {
    /// The offer.
    pub offer: Offer,
    /// Queues port by port, then the control listener, then the metrics
    /// listener if [`Offer::metrics`], then the sync socket if
    /// [`Offer::sync`].
    pub fds: Vec<OwnedFd>,
    /// The state container.
    pub state: Vec<u8>,
}

/// A hand-over that went through.
#[derive(Debug)]
pub struct Done {
    /// The new process.
    pub pid: u32,
    /// Flows it carries.
    pub flows: u64,
}

/// A hand-over that failed.
#[derive(Debug)]
pub struct Failed {
    /// Why, for the operator.
    pub reason: String,
    /// Whether the old workers were paused (and must read again).
    pub paused: bool,
}

fn fail(reason: impl Into<String>, paused: bool) -> Failed {
    Failed {
        reason: reason.into(),
        paused,
    }
}

/// The old side: starts `binary` with this process's arguments and hands
/// over what `pause` gathers (it stops the workers first). Once the new
/// process runs, `running` is called with its pid (the service manager
/// learns its new main pid) before the new process hears it is the main
/// one. On failure the child is killed; the caller resumes its workers if
/// `paused`.
pub fn hand_over(
    binary: &Path,
    socket: &Path,
    pause: impl FnOnce() -> Result<Payload, String>,
    running: impl FnOnce(u32),
) -> Result<Done, Failed> {
    let path = socket.with_file_name(format!(
        ".{}.handover.{}",
        socket
            .file_name()
            .map_or_else(|| "control.sock".into(), |n| n.to_string_lossy()),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&path);
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(&path);
    nix::sys::stat::umask(old);
    let listener =
        bound.map_err(|e| fail(format!("handover socket {}: {e}", path.display()), false))?;
    let started = Instant::now();
    let child = Command::new(binary)
        .args(std::env::args_os().skip(1))
        .env(ENV, &path)
        .stdin(Stdio::null())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            return Err(fail(format!("starting {}: {e}", binary.display()), false));
        }
    };
    let result = converse(&listener, &mut child, started, pause, running);
    let _ = std::fs::remove_file(&path);
    if result.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    result
}

fn converse(
    listener: &UnixListener,
    child: &mut Child,
    started: Instant,
    pause: impl FnOnce() -> Result<Payload, String>,
    on_running: impl FnOnce(u32),
) -> Result<Done, Failed> {
    let pid = child.id();
    let stream = accept(listener, child, started)?;
    let left = |paused| {
        DEADLINE
            .checked_sub(started.elapsed())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                fail(
                    format!("the new process (pid {pid}) did not take over within 10 s"),
                    paused,
                )
            })
    };
    stream
        .set_read_timeout(Some(left(false)?))
        .map_err(|e| fail(e.to_string(), false))?;
    let mut reader = BufReader::new(&stream);
    let ready = read_message(&mut reader).map_err(|e| fail(e, false))?;
    if ready.get("ready").is_none() {
        return Err(fail("the new process did not say it was ready", false));
    }
    let payload = pause().map_err(|e| fail(e, true))?;
    let sent = send_offer(&stream, &payload).and_then(|()| (&stream).write_all(&payload.state));
    sent.map_err(|e| fail(format!("handing over: {e}"), true))?;
    stream
        .set_read_timeout(Some(left(true)?))
        .map_err(|e| fail(e.to_string(), true))?;
    let running = read_message(&mut reader).map_err(|e| fail(e, true))?;
    let flows = running
        .get("running")
        .and_then(Value::as_u64)
        .ok_or_else(|| fail("the new process did not say it was running", true))?;
    on_running(pid);
    // Past this point the new process forwards: a lost answer changes nothing.
    let _ = writeln!(&stream, "{}", json!({ "main": pid }));
    Ok(Done { pid, flows })
}

/// Accepts the child's connection, watching for its early death.
fn accept(
    listener: &UnixListener,
    child: &mut Child,
    started: Instant,
) -> Result<UnixStream, Failed> {
    listener
        .set_nonblocking(true)
        .map_err(|e| fail(e.to_string(), false))?;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                let peer = nix::sys::socket::getsockopt(
                    &stream,
                    nix::sys::socket::sockopt::PeerCredentials,
                );
                if peer.is_ok_and(|c| c.pid() as u32 == child.id()) {
                    stream
                        .set_nonblocking(false)
                        .map_err(|e| fail(e.to_string(), false))?;
                    return Ok(stream);
                }
                // Someone else: not ours to talk to.
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(fail(format!("handover socket: {e}"), false)),
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(fail(
                format!("the new process exited ({status}) before taking over"),
                false,
            ));
        }
        if started.elapsed() >= DEADLINE {
            return Err(fail(
                format!(
                    "the new process (pid {}) did not take over within 10 s",
                    child.id()
                ),
                false,
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads one JSON line; `{"error": …}` becomes the error.
fn read_message(reader: &mut impl BufRead) -> Result<Value, String> {
    let mut line = String::new();
    match reader.take(64 * 1024).read_line(&mut line) {
        Ok(0) => return Err("the new process closed the handover connection".into()),
        Ok(_) => {}
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            return Err("the new process did not take over within 10 s".into());
        }
        Err(e) => return Err(format!("handover: {e}")),
    }
    let value: Value =
        serde_json::from_str(&line).map_err(|e| format!("handover: bad message: {e}"))?;
    match value.get("error").and_then(Value::as_str) {
        Some(error) => Err(format!("the new process failed: {error}")),
        None => Ok(value),
    }
}

fn send_offer(stream: &UnixStream, payload: &Payload) -> io::Result<()> {
    if payload.fds.len() > MAX_FDS {
        return Err(io::Error::other(format!(
            "{} descriptors do not fit one hand-over (at most {MAX_FDS})",
            payload.fds.len()
        )));
    }
    let json = serde_json::to_vec(&payload.offer).map_err(io::Error::other)?;
    let len = (json.len() as u32).to_le_bytes();
    let fds: Vec<BorrowedFd<'_>> = payload.fds.iter().map(|f| f.as_fd()).collect();
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(io::Error::other("control message too small"));
    }
    let iov = [IoSlice::new(&len), IoSlice::new(&json)];
    let sent = rustix::net::sendmsg(stream, &iov, &mut control, SendFlags::empty())?;
    // The descriptors went with the first byte; the rest is plain data.
    let whole: Vec<u8> = len.iter().chain(&json).copied().collect();
    (&*stream).write_all(&whole[sent..])
}

/// The new side: the connection to the old process.
pub struct Incoming {
    stream: UnixStream,
}

/// What the new process received.
pub struct Received {
    /// The offer.
    pub offer: Offer,
    /// Queues port by port, then the control listener.
    pub fds: Vec<OwnedFd>,
    /// The state container.
    pub state: Vec<u8>,
}

impl Incoming {
    /// Connects to the old process at `path` (from [`ENV`]).
    pub fn connect(path: &Path) -> io::Result<Incoming> {
        let stream = UnixStream::connect(path).map_err(|e| {
            io::Error::new(e.kind(), format!("handover socket {}: {e}", path.display()))
        })?;
        stream.set_read_timeout(Some(DEADLINE))?;
        Ok(Incoming { stream })
    }

    fn say(&self, value: Value) -> io::Result<()> {
        writeln!(&self.stream, "{value}")
    }

    /// Says the config is loaded, and receives the queues, the listener
    /// and the flow table.
    pub fn ready(&self) -> io::Result<Received> {
        self.say(json!({"ready": std::process::id()}))?;
        let mut head = [0u8; 4096];
        let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut iov = [IoSliceMut::new(&mut head)];
        let got = rustix::net::recvmsg(
            &self.stream,
            &mut iov,
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )?;
        let mut fds = Vec::new();
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = message {
                fds.extend(received);
            }
        }
        let mut data = head[..got.bytes].to_vec();
        if data.len() < 4 {
            let mut rest = vec![0u8; 4 - data.len()];
            (&self.stream).read_exact(&mut rest)?;
            data.extend(rest);
        }
        let len = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as usize;
        if len > MAX_OFFER {
            return Err(io::Error::other("handover offer too long"));
        }
        if data.len() < 4 + len {
            let mut rest = vec![0u8; 4 + len - data.len()];
            (&self.stream).read_exact(&mut rest)?;
            data.extend(rest);
        }
        let offer: Offer = serde_json::from_slice(&data[4..4 + len])
            .map_err(|e| io::Error::other(format!("handover offer: {e}")))?;
        let mut state = data.split_off(4 + len);
        let want = usize::try_from(offer.state_len).map_err(io::Error::other)?;
        if state.len() > want {
            return Err(io::Error::other("handover: more data than announced"));
        }
        let have = state.len();
        state.resize(want, 0);
        (&self.stream).read_exact(&mut state[have..])?;
        Ok(Received { offer, fds, state })
    }

    /// Tells the old process this one forwards, carrying `flows` flows.
    pub fn running(&self, flows: usize) -> io::Result<()> {
        self.say(json!({"running": flows}))
    }

    /// Waits (at most 2 s) until the old process says this one is the
    /// service's main process now; `false` if it did not say so (an old
    /// process from before this message, or one that went away).
    pub fn wait_main(&self) -> bool {
        let _ = self.stream.set_read_timeout(Some(Duration::from_secs(2)));
        let mut reader = BufReader::new(&self.stream);
        read_message(&mut reader).is_ok_and(|m| m.get("main").is_some())
    }

    /// Tells the old process this one failed.
    pub fn failed(&self, error: &str) {
        let _ = self.say(json!({"error": error}));
    }
}
