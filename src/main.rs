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

mod simulate;

use clap::{CommandFactory, Parser, Subcommand};
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Run { config, log_format } => run(&config, log_format),
        Command::Reload { socket } => reload(&socket.socket),
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
