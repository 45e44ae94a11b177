//! The `tunwall` command line.

mod simulate;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

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
        Command::Simulate { json } => simulate::run(json),
    }
}
