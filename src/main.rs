//! The `tunwall` command line.

mod simulate;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use tunwall::config::{Config, Workers};
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

#[derive(Subcommand)]
enum Command {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => check(&config),
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
    println!("{}: valid", path.display());
    let workers = match config.gateway.workers {
        Workers::Auto => "auto (one per CPU)".to_string(),
        Workers::Count(n) => n.to_string(),
    };
    println!(
        "gateway: {} workers, host_model {:?}, offload {}, control socket {}",
        workers,
        config.gateway.host_model,
        config.gateway.offload,
        config.gateway.control_socket.display()
    );
    for p in &config.ports {
        let list = |nets: &[ipnet::IpNet]| {
            nets.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "port {} ({}): device {}{}, routes [{}]{}{}",
            p.name,
            p.zone.as_str(),
            p.device,
            p.netns
                .as_ref()
                .map(|n| format!(" in netns {n}"))
                .unwrap_or_default(),
            list(&p.routes),
            if p.addresses.is_empty() {
                String::new()
            } else {
                format!(", addresses [{}]", list(&p.addresses))
            },
            if p.kernel_routes.is_empty() {
                String::new()
            } else {
                format!(", kernel_routes [{}]", list(&p.kernel_routes))
            },
        );
    }
    let f = &config.flows;
    println!(
        "flows: max {} (adaptive {}..{}), udp {}, icmp {}, other {}, tcp opening {} / established {} / closing {} / time_wait {} / closed {}, window tracking {}, loose pickup {}",
        f.max_flows,
        f.adaptive_start,
        f.adaptive_end,
        humantime::format_duration(f.udp_idle),
        humantime::format_duration(f.icmp_idle),
        humantime::format_duration(f.other_idle),
        humantime::format_duration(f.tcp_opening),
        humantime::format_duration(f.tcp_established),
        humantime::format_duration(f.tcp_closing),
        humantime::format_duration(f.tcp_time_wait),
        humantime::format_duration(f.tcp_closed),
        f.tcp_window_tracking,
        f.tcp_loose_pickup
    );
    print!("\n{}", policy.describe());
    ExitCode::SUCCESS
}
