//! The client commands: each sends one request to the running gateway's
//! control socket and prints the answer.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tunwall::packet::pcap_filter::CaptureFilter;

/// The flow filters of `flows` and `kill`: every one given must match.
#[derive(clap::Args)]
pub(crate) struct FlowFilterArgs {
    /// Protocol: tcp, udp, icmp, icmpv6 or a number.
    #[arg(long)]
    pub(crate) protocol: Option<String>,
    /// State: active (not TCP), pending (held by a callout) or a TCP state (established, syn_sent, …).
    #[arg(long)]
    pub(crate) state: Option<String>,
    /// outbound or inbound.
    #[arg(long)]
    pub(crate) direction: Option<String>,
    /// auth_connect or auth_recv_accept.
    #[arg(long)]
    pub(crate) layer: Option<String>,
    /// An address of either endpoint.
    #[arg(long)]
    pub(crate) addr: Option<String>,
    /// A port of either endpoint.
    #[arg(long)]
    pub(crate) port: Option<u16>,
    /// The port the flow arrived on (its name).
    #[arg(long)]
    pub(crate) arrival_port: Option<String>,
    /// An identity of [identities]: either endpoint in its address group.
    #[arg(long)]
    pub(crate) identity: Option<String>,
}

impl FlowFilterArgs {
    /// The `select` object of the control request.
    pub(crate) fn select(&self, id: Option<u64>) -> serde_json::Value {
        let text = |v: &Option<String>| v.clone().map(serde_json::Value::from);
        tunwall::flow::select::request_select(&[
            ("protocol", text(&self.protocol)),
            ("state", text(&self.state)),
            ("direction", text(&self.direction)),
            ("layer", text(&self.layer)),
            ("addr", text(&self.addr)),
            ("port", self.port.map(serde_json::Value::from)),
            ("arrival_port", text(&self.arrival_port)),
            ("identity", text(&self.identity)),
            ("id", id.map(serde_json::Value::from)),
        ])
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum DecisionArg {
    Permit,
    Block,
}

pub(crate) fn reload(socket: &Path) -> ExitCode {
    match tunwall::control::request(socket, "reload") {
        Ok(v) if v.get("ok") == Some(&serde_json::Value::Bool(true)) => {
            let changed: Vec<String> = v
                .get("changed_layers")
                .and_then(|l| l.as_array())
                .map(|l| {
                    l.iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            println!(
                "policy generation {}; changed layers: {}",
                v.get("generation").cloned().unwrap_or_default(),
                if changed.is_empty() {
                    "none".to_string()
                } else {
                    changed.join(", ")
                }
            );
            for w in v
                .get("warnings")
                .and_then(|w| w.as_array())
                .into_iter()
                .flatten()
            {
                eprintln!("tunwall: warning: {}", w.as_str().unwrap_or_default());
            }
            ExitCode::SUCCESS
        }
        Ok(v) => {
            eprintln!(
                "tunwall: reload failed, the running policy stays: {}",
                v.get("error")
                    .and_then(|e| e.as_str())
                    .unwrap_or("unknown error")
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("tunwall: {e}");
            ExitCode::FAILURE
        }
    }
}

pub(crate) fn capture(
    socket: &Path,
    file: Option<&Path>,
    discards: bool,
    count: Option<u64>,
    filter: Option<String>,
) -> ExitCode {
    // The daemon parses it again; checked here, a mistake is shown before
    // the gateway is asked (or even when none runs).
    if let Some(Err(e)) = filter.as_deref().map(CaptureFilter::parse) {
        eprintln!("tunwall: {e}");
        return ExitCode::FAILURE;
    }
    let request = serde_json::json!({
        "command": "capture",
        "discards": discards,
        "count": count,
        "filter": filter,
    });
    let copied = match file {
        Some(path) => std::fs::File::create(path)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
            .and_then(|mut f| tunwall::control::capture::print_capture(socket, &request, &mut f)),
        None => tunwall::control::capture::print_capture(socket, &request, &mut std::io::stdout()),
    };
    quiet_on_closed_pipe("capture: ", copied)
}

pub(crate) fn upgrade(socket: &Path, binary: Option<PathBuf>) -> ExitCode {
    let mut request = serde_json::json!({"command": "upgrade"});
    if let Some(binary) = binary {
        // The gateway starts it: a relative path means the caller's.
        let binary = std::path::absolute(&binary).unwrap_or(binary);
        request["binary"] = binary.to_string_lossy().into();
    }
    match tunwall::control::send(socket, &request) {
        Ok(v) if v.get("ok") == Some(&serde_json::Value::Bool(true)) => {
            println!(
                "handed over to pid {}: {} flows carried",
                v.get("to_pid").cloned().unwrap_or_default(),
                v.get("flows").cloned().unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Ok(v) => {
            eprintln!(
                "tunwall: {}",
                v.get("error")
                    .and_then(|e| e.as_str())
                    .unwrap_or("upgrade failed")
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("tunwall: {e}");
            ExitCode::FAILURE
        }
    }
}

pub(crate) fn decide(socket: &Path, id: u64, decision: DecisionArg) -> ExitCode {
    let decision = match decision {
        DecisionArg::Permit => "permit",
        DecisionArg::Block => "block",
    };
    let request = serde_json::json!({"command": "decide", "id": id, "decision": decision});
    command(socket, &request, "decide", |_| {
        format!("flow {id}: {decision}")
    })
}

pub(crate) fn kill(socket: &Path, select: serde_json::Value, all: bool) -> ExitCode {
    if !all && select.as_object().is_some_and(|m| m.is_empty()) {
        eprintln!("tunwall: kill: give a filter, --id N, or --all to close every flow");
        return ExitCode::FAILURE;
    }
    let request = serde_json::json!({"command": "kill", "select": select});
    command(socket, &request, "kill", |v| {
        let closed = v.get("closed").and_then(|n| n.as_u64()).unwrap_or(0);
        format!("{closed} flows closed")
    })
}

/// Sends a command that answers `{"ok": true, …}` or `{"ok": false,
/// "error"}`; prints `done(answer)`, or the error and exits 1.
fn command(
    socket: &Path,
    request: &serde_json::Value,
    name: &str,
    done: impl Fn(&serde_json::Value) -> String,
) -> ExitCode {
    match tunwall::control::send(socket, request) {
        Ok(v) if v.get("ok") == Some(&serde_json::Value::Bool(true)) => {
            println!("{}", done(&v));
            ExitCode::SUCCESS
        }
        Ok(v) => {
            eprintln!(
                "tunwall: {name}: {}",
                v.get("error").and_then(|e| e.as_str()).unwrap_or("failed")
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("tunwall: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `tunwall sync status`: exits 1 if the gateway has no `[sync]`.
pub(crate) fn sync_status(socket: &Path, json: bool) -> ExitCode {
    match tunwall::control::request(socket, "sync_status") {
        Ok(v) if v.get("ok") == Some(&serde_json::Value::Bool(false)) => {
            eprintln!(
                "tunwall: {}",
                v.get("error").and_then(|e| e.as_str()).unwrap_or("error")
            );
            ExitCode::FAILURE
        }
        Ok(v) => {
            if json {
                println!("{v}");
            } else {
                print!("{}", tunwall::render::text::sync_status(&v));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tunwall: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Sends `command`; prints `render(answer)`, or the error and exits 1.
pub(crate) fn query(
    socket: &Path,
    command: &str,
    render: impl Fn(&serde_json::Value) -> String,
) -> ExitCode {
    match tunwall::control::request(socket, command) {
        Ok(v) => {
            print!("{}", render(&v));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tunwall: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `tunwall flows`: the listing streamed from the gateway straight to stdout.
pub(crate) fn flows(
    socket: &Path,
    filter: &FlowFilterArgs,
    json: bool,
    count: bool,
    limit: Option<u64>,
) -> ExitCode {
    let request = serde_json::json!({
        "command": "flows",
        "select": filter.select(None),
        "count": count,
        "limit": limit,
    });
    let mut out = std::io::stdout().lock();
    quiet_on_closed_pipe(
        "",
        tunwall::control::flows::print_flows(socket, &request, json, &mut out),
    )
}

/// `tunwall events`: the event stream, as JSON lines, until interrupted.
pub(crate) fn events(socket: &Path) -> ExitCode {
    quiet_on_closed_pipe(
        "",
        tunwall::control::stream_events(socket, &mut std::io::stdout().lock()),
    )
}

/// The end of a streaming command: a reader that went away (EPIPE) is
/// success, any other error is printed and exits 1.
fn quiet_on_closed_pipe(what: &str, result: std::io::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tunwall: {what}{e}");
            ExitCode::FAILURE
        }
    }
}
