//! The `tunwall` command line.

// Every `print!`/`println!` of the command line (simulate's too, declared
// after these) goes through `stdout_or_quit`: `tunwall … | head` must end
// quietly when the reader closes the pipe, not panic as std's macros do.
macro_rules! print {
    ($($arg:tt)*) => { $crate::stdout_or_quit(format_args!($($arg)*)) };
}
macro_rules! println {
    () => { $crate::stdout_or_quit(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::stdout_or_quit(format_args!("{}\n", format_args!($($arg)*))) };
}

mod client;
mod simulate;

use clap::{CommandFactory, Parser, Subcommand};
use client::{DecisionArg, FlowFilterArgs};
use std::path::PathBuf;
use std::process::ExitCode;
use tunwall::config::Config;
use tunwall::policy::{CalloutRegistry, Policy};

#[derive(Parser)]
#[command(
    name = "tunwall",
    version,
    about = "A userspace stateful firewall over TUN devices with WFP ALE flow semantics",
    after_long_help = "Signals to `tunwall run`: SIGHUP reloads the configuration; SIGUSR1 reopens the event file (logrotate); SIGINT and SIGTERM stop the gateway, closing every flow.\n\nEnvironment: RUST_LOG filters the log (e.g. RUST_LOG=debug); NOTIFY_SOCKET (set by systemd) receives READY=1 once every port is up and the policy loaded.\n\nFiles: /etc/tunwall/tunwall.toml, the configuration of the packaged service; /run/tunwall/control.sock, the default control socket."
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
    /// Lists the flows, like `conntrack -L`, streamed from the gateway.
    Flows {
        #[command(flatten)]
        socket: SocketArg,
        /// One JSON array (one flow per line).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        filter: FlowFilterArgs,
        /// Print only the number of matching flows.
        #[arg(long)]
        count: bool,
        /// List at most N flows.
        #[arg(long, value_name = "N")]
        limit: Option<u64>,
    },
    /// Closes the matching flows now (closure reason `admin`) and prints how
    /// many, like `conntrack -D`. At least one filter, --id or --all.
    Kill {
        #[command(flatten)]
        socket: SocketArg,
        #[command(flatten)]
        filter: FlowFilterArgs,
        /// The flow with this id.
        #[arg(long, value_name = "N")]
        id: Option<u64>,
        /// Every flow.
        #[arg(long, conflicts_with = "id")]
        all: bool,
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
    /// Streams packets as pcapng (to FILE or standard output, for
    /// `tcpdump -r -` or Wireshark) until interrupted; a dropped packet
    /// carries the comment `reason=… layer=… filter=…`. The daemon applies
    /// --filter before copying a packet.
    Capture {
        #[command(flatten)]
        socket: SocketArg,
        /// Write to FILE instead of standard output.
        #[arg(short = 'w', long = "write", value_name = "FILE")]
        file: Option<PathBuf>,
        /// Only the dropped packets.
        #[arg(long)]
        discards: bool,
        /// Stop after N packets.
        #[arg(short = 'c', long, value_name = "N")]
        count: Option<u64>,
        /// Only the packets EXPR passes: pcap-filter(7) syntax, the part
        /// that applies to IP packets — host, net ADDR/LEN, port, portrange,
        /// src/dst, ip, ip6, tcp, udp, icmp, icmp6, proto N, and, or, not,
        /// parentheses — e.g. 'tcp port 22 and not host 198.18.1.10'.
        #[arg(long, value_name = "EXPR")]
        filter: Option<String>,
    },
    /// Lists the flows a callout pended (waiting for `tunwall decide`), with
    /// their age, the packets they hold and their pend timeout.
    Pending {
        #[command(flatten)]
        socket: SocketArg,
        /// One JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Completes a pending flow: `permit` releases its held packets, `block`
    /// drops them and closes it. Exits 1 if no pending flow has the id or it
    /// was already decided.
    Decide {
        #[command(flatten)]
        socket: SocketArg,
        /// The flow id (from `tunwall pending` or a `flow_pending` event).
        id: u64,
        /// The decision.
        #[arg(value_enum)]
        decision: DecisionArg,
    },
    /// Lists the identities: each one's source (addresses, or a WireGuard
    /// interface and peers) and its current addresses.
    Identities {
        #[command(flatten)]
        socket: SocketArg,
        /// One JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Streams events as JSON lines until interrupted, like `conntrack -E`.
    Events {
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Validates a configuration file and prints the compiled policy
    /// (layers → sublayers → filters in evaluation order). Exits 1 if invalid.
    Check {
        /// The configuration file; `-` reads it from standard input.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Offline, no daemon: what the policy in FILE decides for one first
    /// packet, layer by layer, filter by filter, with the arbitration steps
    /// and the verdict, e.g. 'tcp 198.18.1.10:5555 -> 198.18.2.20:22 arrival lan'
    /// ('udp …', 'icmp A -> B type 8 code 0 id 7 arrival lan', IPv6 in
    /// brackets, a trailing 'flags reauthorize').
    Explain {
        /// The configuration file.
        #[arg(short, long)]
        config: PathBuf,
        /// The packet.
        packet: String,
        /// The explanation as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Replays a scripted client/server exchange through the engine on a
    /// virtual clock and prints the verdicts, the flow table and the counters.
    /// Needs no privileges and touches no device.
    Simulate {
        /// Print the flow table and counters as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Prints the shell completion script for SHELL, e.g.
    /// `tunwall completions bash > /usr/share/bash-completion/completions/tunwall`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Prints the man page tunwall(1) (roff), generated from this command
    /// line; with --dir, writes it and one page per command (tunwall-run(1), …)
    /// into DIR.
    Man {
        /// Write every page into this directory instead.
        #[arg(long)]
        dir: Option<PathBuf>,
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
        Command::Reload { socket } => client::reload(&socket.socket),
        Command::Upgrade { socket, binary } => client::upgrade(&socket.socket, binary),
        Command::Flows {
            socket,
            json,
            filter,
            count,
            limit,
        } => client::flows(&socket.socket, &filter, json, count, limit),
        Command::Kill {
            socket,
            filter,
            id,
            all,
        } => client::kill(&socket.socket, filter.select(id), all),
        Command::Stats {
            socket,
            json,
            prometheus,
        } => client::query(&socket.socket, "stats", |v| {
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
        } => client::sync_status(&socket.socket, json),
        Command::Capture {
            socket,
            file,
            discards,
            count,
            filter,
        } => client::capture(&socket.socket, file.as_deref(), discards, count, filter),
        Command::Pending { socket, json } => client::query(&socket.socket, "pending", |v| {
            if json {
                v.to_string() + "\n"
            } else {
                tunwall::render::text::pending(v)
            }
        }),
        Command::Decide {
            socket,
            id,
            decision,
        } => client::decide(&socket.socket, id, decision),
        Command::Identities { socket, json } => client::query(&socket.socket, "identities", |v| {
            if json {
                v.to_string() + "\n"
            } else {
                tunwall::render::text::identities(v)
            }
        }),
        Command::Events { socket } => client::events(&socket.socket),
        Command::Simulate { json } => simulate::run(json),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "tunwall", &mut script);
            print!("{}", String::from_utf8_lossy(&script));
            ExitCode::SUCCESS
        }
        Command::Man { dir } => {
            let mut page = Vec::new();
            let rendered = match &dir {
                Some(dir) => clap_mangen::generate_to(Cli::command(), dir),
                None => clap_mangen::Man::new(Cli::command()).render(&mut page),
            };
            match rendered {
                Ok(()) => {
                    print!("{}", String::from_utf8_lossy(&page));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("tunwall: writing the man pages: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Explain {
            config,
            packet,
            json,
        } => explain(&config, &packet, json),
    }
}

/// Writes to standard output; a reader that has gone away (EPIPE) ends the
/// command with success, as nothing more can be shown to anyone.
fn stdout_or_quit(text: std::fmt::Arguments) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_fmt(text).and_then(|()| out.flush()) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("tunwall: writing to standard output: {e}");
            std::process::exit(1);
        }
    }
}

/// `tunwall check -c FILE` (`-c -`: standard input, named `<stdin>` in messages).
fn check(path: &std::path::Path) -> ExitCode {
    let (name, text) = match Config::read_text(path) {
        Ok(read) => read,
        Err(e) => {
            eprintln!("tunwall: {e}");
            return ExitCode::FAILURE;
        }
    };
    let registry = CalloutRegistry::default();
    let config = match Config::parse(&name, &text, &registry) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("tunwall: {e}");
            return ExitCode::FAILURE;
        }
    };
    let policy = match Policy::compile(&config.policy, &registry, None) {
        Ok(policy) => policy,
        Err(e) => {
            eprintln!("tunwall: {}: {e}", name.display());
            return ExitCode::FAILURE;
        }
    };
    for warning in tunwall::config::warnings(&name, &text) {
        eprintln!("warning: {warning}");
    }
    print!("{}", tunwall::render::text::check(&config, &policy));
    ExitCode::SUCCESS
}

fn explain(path: &std::path::Path, packet: &str, json: bool) -> ExitCode {
    let registry = CalloutRegistry::default();
    let explained = Config::load(path, &registry)
        .map_err(|e| e.to_string())
        .and_then(|config| {
            let policy = Policy::compile(&config.policy, &registry, None)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            let packet = tunwall::explain::ExplainPacket::parse(packet)?;
            tunwall::explain::explain(&config, std::sync::Arc::new(policy), &packet)
        });
    match explained {
        Ok(e) => {
            let v = tunwall::render::explain::json(&e);
            if json {
                println!("{v}");
            } else {
                print!("{}", tunwall::render::explain::text(&v));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tunwall: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(path: &std::path::Path, format: LogFormat) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour codes only for a person at a terminal, never into journald or a file.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
