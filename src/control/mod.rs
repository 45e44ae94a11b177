//! The control socket: a Unix socket speaking one JSON request per
//! connection (`{"command": "flows"}`, `kill`, `stats`, `reload`,
//! `upgrade`, `events`, `pending`,
//! `{"command": "decide", "id": N, "decision": "permit"}`), and the
//! client side the CLI uses, with the human-readable renderings.

pub mod capture;
pub mod flows;
pub mod hub;
pub mod metrics;
pub mod queue;

use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tracing::{debug, warn};

/// What the control server asks of the daemon.
pub trait ControlHandler: Send + Sync + 'static {
    /// `flows`: writes the answer to `request` (see [`flows`]) to `out`.
    fn flows(&self, request: &Value, out: &mut dyn Write) -> std::io::Result<()>;
    /// `kill`: closes the flows `request` selects;
    /// `{"ok": true, "closed": N}` or `{"ok": false, "error"}`.
    fn kill(&self, request: &Value) -> Value;
    /// `stats --json`: the counters object.
    fn stats(&self) -> Value;
    /// `reload`: `{"ok": true, "generation", "changed_layers"}` or `{"ok": false, "error"}`.
    fn reload(&self) -> Value;
    /// `capture`: stream packets as pcapng to this connection.
    fn capture(&self, stream: UnixStream, request: &Value);
    /// `identities`: each identity with its source and current addresses
    /// (none unless the handler has a configuration).
    fn identities(&self) -> Value {
        Value::Array(Vec::new())
    }
    /// `events`: stream every later event to this connection.
    fn subscribe(&self, stream: UnixStream);
    /// `decide`: completes pending flow `id`; `{"ok": true, …}` or `{"ok": false, "error"}`.
    fn decide(&self, id: u64, decision: crate::policy::Action) -> Value;
    /// `pending --json`: the JSON array of pending flows.
    fn pending(&self) -> Value;
    /// `upgrade`: hand over to a new process running `binary` (SPEC §13);
    /// `{"ok": true, "flows", "to_pid"}` or `{"ok": false, "error"}`.
    fn upgrade(&self, _binary: Option<PathBuf>) -> Value {
        json!({"ok": false, "error": "upgrade is not supported here"})
    }
    /// `tunwall sync status` (SPEC §15).
    fn sync_status(&self) -> Value {
        json!({"ok": false, "error": "no [sync]"})
    }
    /// Whether to go on accepting connections (false once handed over:
    /// the socket belongs to the new process).
    fn serving(&self) -> bool {
        true
    }
}

/// The listening control socket.
pub struct ControlServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The control socket, bound but not yet served: start-up binds it before
/// it touches any device, so a socket problem stops it early. It is bound
/// under a temporary name beside its path and renamed into place when it is
/// served, so the socket's appearing at its path still means the gateway is
/// up (scripts wait for it).
pub struct BoundSocket {
    path: PathBuf,
    temporary: PathBuf,
    listener: UnixListener,
}

/// The longest request line a client may send.
const MAX_REQUEST: u64 = 64 * 1024;

impl BoundSocket {
    /// Binds `path` with mode 0600 (0660 and group `group` when given).
    /// A live socket there means another tunwall runs; a stale socket is
    /// replaced; any other file there is refused and left in place.
    pub fn bind(path: &Path, group: Option<&str>) -> std::io::Result<BoundSocket> {
        use std::os::unix::fs::FileTypeExt;
        let gid = match group {
            Some(name) => Some(
                nix::unistd::Group::from_name(name)
                    .ok()
                    .flatten()
                    .ok_or_else(|| {
                        std::io::Error::other(format!("control_socket_group: no group \"{name}\""))
                    })?
                    .gid,
            ),
            None => None,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!(
                        "control socket {}: a file that is not a socket is in the way (left in place)",
                        path.display()
                    ),
                ));
            }
            if UnixStream::connect(path).is_ok() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    format!(
                        "control socket {} is in use: is another tunwall running?",
                        path.display()
                    ),
                ));
            }
            std::fs::remove_file(path)?;
        }
        let name = path.file_name().map_or_else(
            || "control.sock".into(),
            |n| n.to_string_lossy().into_owned(),
        );
        let temporary = path.with_file_name(format!(".{name}.{}", std::process::id()));
        let _ = std::fs::remove_file(&temporary);
        // The socket must never exist with a wider mode, not even between
        // bind and chmod: bind under a umask that leaves only the owner.
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
        let bound = UnixListener::bind(&temporary);
        nix::sys::stat::umask(old);
        let listener = bound.map_err(|e| {
            std::io::Error::new(e.kind(), format!("control socket {}: {e}", path.display()))
        })?;
        let socket = BoundSocket {
            path: path.to_path_buf(),
            temporary,
            listener,
        };
        if let Some(gid) = gid {
            let owned = nix::unistd::chown(&socket.temporary, None, Some(gid))
                .map_err(std::io::Error::from)
                .and_then(|()| {
                    std::fs::set_permissions(
                        &socket.temporary,
                        std::fs::Permissions::from_mode(0o660),
                    )
                });
            if let Err(e) = owned {
                socket.remove();
                return Err(e);
            }
        }
        socket.listener.set_nonblocking(true)?;
        Ok(socket)
    }

    /// Serves `handler` on a thread of its own.
    pub fn serve(self, handler: Arc<dyn ControlHandler>) -> std::io::Result<ControlServer> {
        if let Err(e) = std::fs::rename(&self.temporary, &self.path) {
            let _ = std::fs::remove_file(&self.temporary);
            return Err(std::io::Error::new(
                e.kind(),
                format!("control socket {}: {e}", self.path.display()),
            ));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let listener = self.listener;
        let thread = std::thread::Builder::new()
            .name("tunwall-control".into())
            .spawn(move || serve(listener, handler, stop2))?;
        Ok(ControlServer {
            path: self.path,
            stop,
            thread: Some(thread),
        })
    }

    /// A socket another process listened on and handed over (SPEC §13):
    /// it is already at `path`.
    pub fn adopt(path: &Path, listener: UnixListener) -> std::io::Result<BoundSocket> {
        listener.set_nonblocking(true)?;
        Ok(BoundSocket {
            path: path.to_path_buf(),
            temporary: path.to_path_buf(),
            listener,
        })
    }

    /// The listening socket, to hand over.
    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }

    /// Removes the socket without serving it (start-up failed later).
    pub fn remove(self) {
        let _ = std::fs::remove_file(&self.temporary);
    }
}

impl ControlServer {
    /// Binds `path` (see [`BoundSocket::bind`]) and serves `handler`.
    pub fn start(
        path: &Path,
        group: Option<&str>,
        handler: Arc<dyn ControlHandler>,
    ) -> std::io::Result<ControlServer> {
        BoundSocket::bind(path, group)?.serve(handler)
    }

    /// Stops serving and removes the socket file.
    pub fn stop(self) {
        let path = self.path.clone();
        self.release();
        let _ = std::fs::remove_file(&path);
    }

    /// Stops serving and leaves the socket file: another process serves it.
    pub fn release(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(listener: UnixListener, handler: Arc<dyn ControlHandler>, stop: Arc<AtomicBool>) {
    accept_until(
        &stop,
        "control socket",
        || listener.accept().map(|(s, _)| s),
        |stream| answer(stream, &*handler),
        || handler.serving(),
    );
}

/// Accepts connections from a non-blocking listener and answers each in
/// turn until `stop` is set or `serving` says no more (the control socket,
/// the metrics listener).
pub(crate) fn accept_until<S>(
    stop: &AtomicBool,
    what: &str,
    mut accept: impl FnMut() -> std::io::Result<S>,
    mut answer: impl FnMut(S) -> std::io::Result<()>,
    serving: impl Fn() -> bool,
) {
    while !stop.load(Ordering::Relaxed) && serving() {
        match accept() {
            Ok(stream) => {
                if let Err(e) = answer(stream) {
                    debug!(error = %e, "{what} connection");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                warn!(error = %e, "{what} accept");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn answer(stream: UnixStream, handler: &dyn ControlHandler) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new(std::io::Read::take(&stream, MAX_REQUEST)).read_line(&mut line)?;
    let request: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
    let command = request.get("command").and_then(Value::as_str).unwrap_or("");
    let response = match command {
        "flows" => {
            // A reader that stops reading is cut off after the timeout.
            stream.set_write_timeout(Some(Duration::from_secs(10)))?;
            let mut out = std::io::BufWriter::with_capacity(flows::OUTPUT_BUFFER, &stream);
            return handler.flows(&request, &mut out);
        }
        "kill" => handler.kill(&request),
        "capture" => {
            handler.capture(stream, &request);
            return Ok(());
        }
        "stats" => handler.stats(),
        "sync_status" => handler.sync_status(),
        "reload" => handler.reload(),
        "upgrade" => handler.upgrade(
            request
                .get("binary")
                .and_then(Value::as_str)
                .map(PathBuf::from),
        ),
        "pending" => handler.pending(),
        "decide" => decide(&request, handler),
        "identities" => handler.identities(),
        "events" => {
            handler.subscribe(stream);
            return Ok(());
        }
        other => json!({"ok": false, "error": format!("unknown command {other:?}")}),
    };
    let mut stream = stream;
    writeln!(stream, "{response}")
}

/// `{"command": "decide", "id": N, "decision": "permit"|"block"}`.
fn decide(request: &Value, handler: &dyn ControlHandler) -> Value {
    use crate::policy::Action;
    let id = request.get("id").and_then(Value::as_u64);
    let decision = match request.get("decision").and_then(Value::as_str) {
        Some("permit") => Some(Action::Permit),
        Some("block") => Some(Action::Block),
        _ => None,
    };
    match (id, decision) {
        (Some(id), Some(decision)) => handler.decide(id, decision),
        _ => {
            json!({"ok": false, "error": "decide needs \"id\" (a flow id) and \"decision\" (\"permit\" or \"block\")"})
        }
    }
}

/// Sends `command` to the daemon at `socket` and returns its answer.
pub fn request(socket: &Path, command: &str) -> std::io::Result<Value> {
    send(socket, &json!({ "command": command }))
}

/// Sends a whole request object to the daemon and returns its answer.
pub fn send(socket: &Path, request: &Value) -> std::io::Result<Value> {
    let mut stream = connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    writeln!(stream, "{request}")?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    serde_json::from_str(&line)
        .map_err(|e| std::io::Error::other(format!("bad answer from {}: {e}", socket.display())))
}

/// Connects to the control socket with a clear error.
pub fn connect(socket: &Path) -> std::io::Result<UnixStream> {
    UnixStream::connect(socket).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "cannot reach tunwall at {}: {e} (is `tunwall run` running? -s selects the socket)",
                socket.display()
            ),
        )
    })
}

/// Streams events from the daemon to `out` until the connection ends.
pub fn stream_events(socket: &Path, out: &mut impl Write) -> std::io::Result<()> {
    let mut stream = connect(socket)?;
    writeln!(stream, "{}", json!({"command": "events"}))?;
    for line in BufReader::new(stream).lines() {
        writeln!(out, "{}", line?)?;
        out.flush()?;
    }
    Ok(())
}
