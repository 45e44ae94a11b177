//! The `tunwall` command line.

mod simulate;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use tunwall::config::Config;
use tunwall::policy::{CalloutRegistry, Policy};

#[derive(Parser)]
#[command(
    name = "tunwall",
    version,
    about = "A userspace stateful firewall over TUN devices with WFP ALE flow semantics"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the control socket is, for the client commands.
#[derive(clap::Args)]
struct SocketArg {
    /// The control socket of the running gateway.
    #[arg(short, long, default_value = tunwall::config::DEFAULT_CONTROL_SOCKET)]
    socket: PathBuf,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Starts the gateway in the foreground. SIGHUP reloads the file;
    /// SIGINT/SIGTERM shut down cleanly. Logs go to stderr (RUST_LOG filters).
    Run {
        /// The configuration file.
        #[arg(short, long)]
        config: PathBuf,
        /// Log format.
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
    },
    /// Asks the running gateway to reload its file; prints the new policy
    /// generation and the layers that changed. Exits 1 if the file is invalid
    /// (the old policy stays in force).
    Reload {
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Hands the running gateway over to a new process (the same or a new
    /// binary) without losing a flow: the new process re-reads the file and
    /// takes the TUN queues, the control socket and the flow table. Exits 1
    /// (the running gateway stays) if the ports changed or the new process
    /// fails or has not taken over within 10 s.
    Upgrade {
        #[command(flatten)]
        socket: SocketArg,
        /// The binary to start (default: the running one).
        #[arg(long)]
        binary: Option<PathBuf>,
    },
    /// Lists the flows, like `conntrack -L`.
    Flows {
        #[command(flatten)]
        socket: SocketArg,
        /// One JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Prints the counters.
    Stats {
        #[command(flatten)]
        socket: SocketArg,
        /// One JSON object.
        #[arg(long, conflicts_with = "prometheus")]
        json: bool,
        /// The Prometheus text format.
        #[arg(long)]
        prometheus: bool,
    },
    /// The HA pair's flow replication (SPEC §15).
    Sync {
        #[command(subcommand)]
        command: SyncCommand,
    },
    /// Streams events as JSON lines until interrupted, like `conntrack -E`.
    Events {
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Validates a configuration file and prints the compiled policy
    /// (layers → sublayers → filters in evaluation order). Exits 1 if invalid.
    Check {
        /// The configuration file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Replays a scripted client/server exchange through the engine on a
    /// virtual clock and prints the verdicts, the flow table and the counters.
    /// Needs no privileges and touches no device.
    Simulate {
        /// Print the flow table and counters as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum SyncCommand {
    /// The peer, the link's state (up, down or resyncing), its message
    /// counters and the replication lag. Exits 1 if the gateway has no
    /// [sync] section.
    Status {
        #[command(flatten)]
        socket: SocketArg,
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Run { config, log_format } => run(&config, log_format),
        Command::Reload { socket } => reload(&socket.socket),
        Command::Upgrade { socket, binary } => upgrade(&socket.socket, binary),
        Command::Flows { socket, json } => client(&socket.socket, "flows", |v| {
            if json {
                v.to_string() + "\n"
            } else {
                tunwall::render::text::flows(v)
            }
        }),
        Command::Stats {
            socket,
            json,
            prometheus,
        } => client(&socket.socket, "stats", |v| {
            if json {
                v.to_string() + "\n"
            } else if prometheus {
                tunwall::render::prometheus::prometheus(v)
            } else {
                tunwall::render::text::stats(v)
            }
        }),
        Command::Sync {
            command: SyncCommand::Status { socket, json },
        } => sync_status(&socket.socket, json),
        Command::Events { socket } => {
            match tunwall::control::stream_events(&socket.socket, &mut std::io::stdout().lock()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("tunwall: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Simulate { json } => simulate::run(json),
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    let registry = CalloutRegistry::default();
    let config = match Config::load(path, &registry) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("tunwall: {e}");
            return ExitCode::FAILURE;
        }
    };
    let policy = match Policy::compile(&config.policy, &registry, None) {
        Ok(policy) => policy,
        Err(e) => {
            eprintln!("tunwall: {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    print!("{}", tunwall::render::text::check(&config, &policy));
    ExitCode::SUCCESS
}

fn run(path: &std::path::Path, format: LogFormat) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    match tunwall::daemon::run(path) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tunwall: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn reload(socket: &std::path::Path) -> ExitCode {
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

fn upgrade(socket: &std::path::Path, binary: Option<PathBuf>) -> ExitCode {
    let mut request = serde_json::json!({"command": "upgrade"});
    if let Some(binary) = binary {
        // The gateway starts it: a relative path means the caller's.
        let binary = std::path::absolute(&binary).unwrap_or(binary);
        request["binary"] = binary.to_string_lossy().into();
    }
    match tunwall::control::request_with(socket, request) {
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

fn sync_status(socket: &std::path::Path, json: bool) -> ExitCode {
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

fn client(
    socket: &std::path::Path,
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
