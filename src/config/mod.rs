//! The configuration file (SPEC §6): TOML, read strictly, validated whole.
//!
//! Every key is known (unknown keys are errors), durations are strings with a
//! unit, and every cross-reference (sublayer, port, identity, callout) is
//! checked before anything is compiled, so that `tunwall check`, `tunwall
//! run` and a reload reject a bad file with one message naming the file,
//! the line and column, and what is wrong — and a running gateway keeps its
//! policy.

mod conditions;
mod identities;
mod lint;
mod live;
mod policy;
mod redirect;
mod schema;
mod sync;
mod validate;

pub use lint::warnings;
pub(crate) use validate::{Loader, parse_prefix};

use crate::engine::{GatewayConfig, HostModel};
use crate::flow::{FlowConfig, Zone};
use crate::policy::{CalloutRegistry, PolicySpec};
use crate::route::PortSpec;
use ipnet::IpNet;
use std::fmt;
use std::path::{Path, PathBuf};

/// A configuration error: where and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line, 0 when the error is about the whole file.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.column,
                self.message
            )
        }
    }
}

impl std::error::Error for ConfigError {}

fn cannot_read(path: &Path, e: std::io::Error) -> ConfigError {
    ConfigError {
        file: path.to_path_buf(),
        line: 0,
        column: 0,
        message: format!("cannot read: {e}"),
    }
}

/// `workers`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workers {
    /// One per CPU.
    Auto,
    /// A fixed number.
    Count(usize),
}

impl Workers {
    /// The number of worker threads on this machine.
    pub fn count(self) -> usize {
        match self {
            Workers::Count(n) => n,
            Workers::Auto => std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// `[gateway]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewaySettings {
    /// Worker threads.
    pub workers: Workers,
    /// Weak or strong host model.
    pub host_model: HostModel,
    /// The control socket's path.
    pub control_socket: PathBuf,
    /// A group allowed to use the control socket (mode 0660 instead of 0600).
    pub control_socket_group: Option<String>,
    /// TUN offloads where the kernel supports them.
    pub offload: bool,
    /// Where a clean stop saves the flow table and the next start reads
    /// it back (SPEC §13); `None`: flows end at a stop.
    pub state_file: Option<PathBuf>,
}

/// One `[[port]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortConfig {
    /// Name used by filters and output.
    pub name: String,
    /// TUN device name.
    pub device: String,
    /// Inside or outside.
    pub zone: Zone,
    /// Network namespace (`/run/netns/NAME`) to create the device in.
    pub netns: Option<String>,
    /// Addresses assigned at start.
    pub addresses: Vec<IpNet>,
    /// MTU.
    pub mtu: Option<u32>,
    /// Prefixes forwarded out of this port.
    pub routes: Vec<IpNet>,
    /// Routes installed in the device's namespace pointing into the device.
    pub kernel_routes: Vec<IpNet>,
}

/// One `[[wireguard]]` (SPEC §11).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireguardConfig {
    /// The WireGuard interface.
    pub interface: String,
    /// The network namespace it lives in.
    pub netns: Option<String>,
    /// How often its peers are read.
    pub refresh: std::time::Duration,
    /// The index of the port its traffic arrives on, if bound to one.
    pub port: Option<u8>,
}

/// `[events]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventsConfig {
    /// JSON-lines event log.
    pub file: Option<PathBuf>,
    /// Discard events per second (the first of each reason always goes out).
    pub discard_rate: u32,
    /// `reject_rate`: rejections (RSTs, ICMP errors) sent per second at most.
    pub reject_rate: u32,
}

/// A validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The file it came from.
    pub path: PathBuf,
    /// `[gateway]`.
    pub gateway: GatewaySettings,
    /// `[[port]]`s.
    pub ports: Vec<PortConfig>,
    /// `[flows]`.
    pub flows: FlowConfig,
    /// `[defaults]`, `[identities]`, `[[sublayer]]`, `[[filter]]` (address
    /// groups resolved; WireGuard identities once their peers are read).
    pub policy: PolicySpec,
    /// `[[wireguard]]`.
    pub wireguard: Vec<WireguardConfig>,
    /// `[events]`.
    pub events: EventsConfig,
    /// `[sync]` (SPEC §15), if this node is one of an HA pair.
    pub sync: Option<crate::sync::SyncConfig>,
    /// `[metrics] listen`: where Prometheus reads `GET /metrics`.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path, registry: &CalloutRegistry) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| cannot_read(path, e))?;
        Config::parse(path, &text, registry)
    }

    /// The text of `path` for `tunwall check`, where `-` is standard input,
    /// and the name to give it in messages (`<stdin>`).
    pub fn read_text(path: &Path) -> Result<(PathBuf, String)> {
        if path.as_os_str() != "-" {
            let text = std::fs::read_to_string(path).map_err(|e| cannot_read(path, e))?;
            return Ok((path.to_path_buf(), text));
        }
        let name = PathBuf::from("<stdin>");
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .map_err(|e| cannot_read(&name, e))?;
        Ok((name, text))
    }

    /// Validates `text`; `path` names the file in messages.
    pub fn parse(path: &Path, text: &str, registry: &CalloutRegistry) -> Result<Config> {
        let loader = Loader { path, text };
        let raw: schema::Raw = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            loader.error(span, e.message().trim_end().to_string())
        })?;
        loader.validate(raw, registry)
    }

    /// What the engine needs: ports with routes and broadcast addresses, flow settings.
    pub fn gateway_config(&self) -> GatewayConfig {
        GatewayConfig {
            ports: self
                .ports
                .iter()
                .map(|p| PortSpec {
                    name: p.name.clone(),
                    zone: p.zone,
                    routes: p.routes.clone(),
                    broadcast: p
                        .addresses
                        .iter()
                        .filter(|a| matches!(a, IpNet::V4(n) if n.prefix_len() < 31))
                        .map(|a| a.broadcast())
                        .collect(),
                })
                .collect(),
            flows: self.flows.clone(),
            host_model: self.gateway.host_model,
            shards: None,
        }
    }

    /// Port names by index.
    pub fn port_names(&self) -> Vec<String> {
        self.ports.iter().map(|p| p.name.clone()).collect()
    }
}

/// The default control socket path.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/tunwall/control.sock";

type Result<T> = std::result::Result<T, ConfigError>;

#[cfg(test)]
mod identity_tests;
#[cfg(test)]
mod tests;
