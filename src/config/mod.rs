//! The configuration file (SPEC §6): TOML, read strictly, validated whole.
//!
//! Every key is known (unknown keys are errors), durations are strings with a
//! unit, and every cross-reference (sublayer, port, identity, callout) is
//! checked before anything is compiled, so that `tunwall check`, `tunwall
//! run` and a reload reject a bad file with one message naming the file,
//! the line and column, and what is wrong — and a running gateway keeps its
//! policy.

mod conditions;
mod live;

use crate::engine::{GatewayConfig, HostModel};
use crate::flow::{FlowConfig, MAX_TIMEOUT, Zone};
use crate::policy::{
    Action, CalloutParams, CalloutRegistry, DefaultPolicy, FilterSpec, FlowOptions, Layer,
    PolicySpec, SpecAction, Sublayer,
};
use crate::route::PortSpec;
use ipnet::IpNet;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

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

/// `[events]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventsConfig {
    /// JSON-lines event log.
    pub file: Option<PathBuf>,
    /// Discard events per second (the first of each reason always goes out).
    pub discard_rate: u32,
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
    /// `[defaults]`, `[[sublayer]]`, `[[filter]]` (identities resolved).
    pub policy: PolicySpec,
    /// `[events]`.
    pub events: EventsConfig,
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path, registry: &CalloutRegistry) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            message: format!("cannot read: {e}"),
        })?;
        Config::parse(path, &text, registry)
    }

    /// Validates `text`; `path` names the file in messages.
    pub fn parse(path: &Path, text: &str, registry: &CalloutRegistry) -> Result<Config> {
        let loader = Loader { path, text };
        let raw: Raw = toml::from_str(text).map_err(|e| {
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    gateway: RawGateway,
    #[serde(default, rename = "port")]
    ports: Vec<RawPort>,
    #[serde(default)]
    flows: RawFlows,
    #[serde(default)]
    defaults: RawDefaults,
    #[serde(default)]
    identities: BTreeMap<Spanned<String>, Vec<Spanned<String>>>,
    #[serde(default, rename = "sublayer")]
    sublayers: Vec<RawSublayer>,
    #[serde(default, rename = "filter")]
    filters: Vec<RawFilter>,
    #[serde(default)]
    events: RawEvents,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    workers: Option<Spanned<toml::Value>>,
    host_model: Option<HostModelName>,
    control_socket: Option<PathBuf>,
    control_socket_group: Option<String>,
    offload: Option<bool>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum HostModelName {
    Weak,
    Strong,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum ZoneName {
    Inside,
    Outside,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPort {
    name: Spanned<String>,
    device: Spanned<String>,
    zone: ZoneName,
    netns: Option<Spanned<String>>,
    #[serde(default)]
    addresses: Vec<Spanned<String>>,
    mtu: Option<Spanned<i64>>,
    #[serde(default)]
    routes: Vec<Spanned<String>>,
    #[serde(default)]
    kernel_routes: Vec<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFlows {
    max_flows: Option<Spanned<i64>>,
    udp_idle: Option<Spanned<toml::Value>>,
    icmp_idle: Option<Spanned<toml::Value>>,
    other_idle: Option<Spanned<toml::Value>>,
    mcast_bcast_lifetime: Option<Spanned<toml::Value>>,
    tcp_opening: Option<Spanned<toml::Value>>,
    tcp_established: Option<Spanned<toml::Value>>,
    tcp_closing: Option<Spanned<toml::Value>>,
    tcp_time_wait: Option<Spanned<toml::Value>>,
    tcp_closed: Option<Spanned<toml::Value>>,
    adaptive_start: Option<Spanned<i64>>,
    adaptive_end: Option<Spanned<i64>>,
    tcp_window_tracking: Option<bool>,
    tcp_loose_pickup: Option<bool>,
    max_fragments: Option<Spanned<i64>>,
    fragment_timeout: Option<Spanned<toml::Value>>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum ActionName {
    Permit,
    Block,
}

impl From<ActionName> for Action {
    fn from(a: ActionName) -> Action {
        match a {
            ActionName::Permit => Action::Permit,
            ActionName::Block => Action::Block,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    auth_connect: Option<ActionName>,
    auth_recv_accept: Option<ActionName>,
    icmp_error: Option<ActionName>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSublayer {
    name: Spanned<String>,
    #[serde(default)]
    weight: Option<Spanned<i64>>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum LayerName {
    AuthConnect,
    AuthRecvAccept,
    FlowEstablished,
    EndpointClosure,
    IcmpError,
}

impl From<LayerName> for Layer {
    fn from(l: LayerName) -> Layer {
        match l {
            LayerName::AuthConnect => Layer::AuthConnect,
            LayerName::AuthRecvAccept => Layer::AuthRecvAccept,
            LayerName::FlowEstablished => Layer::FlowEstablished,
            LayerName::EndpointClosure => Layer::EndpointClosure,
            LayerName::IcmpError => Layer::IcmpError,
        }
    }
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum FilterActionName {
    Permit,
    Block,
    Callout,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFilter {
    name: Spanned<String>,
    layer: Spanned<LayerName>,
    sublayer: Option<Spanned<String>>,
    weight: Option<Spanned<i64>>,
    action: Spanned<FilterActionName>,
    hard: Option<Spanned<bool>>,
    callout: Option<Spanned<String>>,
    rate: Option<Spanned<String>>,
    protocol: Option<Spanned<toml::Value>>,
    ip_version: Option<Spanned<toml::Value>>,
    local_address: Option<Spanned<toml::Value>>,
    remote_address: Option<Spanned<toml::Value>>,
    local_port: Option<Spanned<toml::Value>>,
    remote_port: Option<Spanned<toml::Value>>,
    icmp_type: Option<Spanned<toml::Value>>,
    icmp_code: Option<Spanned<toml::Value>>,
    arrival_port: Option<Spanned<toml::Value>>,
    local_identity: Option<Spanned<toml::Value>>,
    remote_identity: Option<Spanned<toml::Value>>,
    flags: Option<Spanned<toml::Value>>,
    not_flags: Option<Spanned<toml::Value>>,
    unicast_lifetime: Option<Spanned<toml::Value>>,
    mcast_bcast_lifetime: Option<Spanned<toml::Value>>,
    deny_multicast_state: Option<Spanned<bool>>,
    loose_source_mapping: Option<Spanned<bool>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawEvents {
    file: Option<PathBuf>,
    discard_rate: Option<Spanned<i64>>,
}

/// The default control socket path.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/tunwall/control.sock";

/// Validation context: the file, for turning byte spans into line:column.
pub(crate) struct Loader<'a> {
    path: &'a Path,
    text: &'a str,
}

type Result<T> = std::result::Result<T, ConfigError>;

impl Loader<'_> {
    pub(crate) fn error(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        let mut offset = span.start.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        ConfigError {
            file: self.path.to_path_buf(),
            line,
            column,
            message: message.into(),
        }
    }

    fn prefix(&self, s: &Spanned<String>, what: &str) -> Result<IpNet> {
        parse_prefix(s.get_ref()).ok_or_else(|| {
            self.error(
                s.span(),
                format!("{what}: \"{}\" is not an IP address or prefix", s.get_ref()),
            )
        })
    }

    fn duration(
        &self,
        v: &Option<Spanned<toml::Value>>,
        key: &str,
        default: Duration,
    ) -> Result<Duration> {
        let Some(v) = v else { return Ok(default) };
        let d = self.duration_value(v, key)?;
        if d.is_zero() {
            return Err(self.error(v.span(), format!("{key} must be longer than zero")));
        }
        if d > MAX_TIMEOUT {
            return Err(self.error(v.span(), format!("{key} must be at most 24 days")));
        }
        Ok(d)
    }

    pub(crate) fn duration_value(&self, v: &Spanned<toml::Value>, key: &str) -> Result<Duration> {
        match v.get_ref() {
            toml::Value::String(s) => humantime::parse_duration(s).map_err(|e| {
                self.error(v.span(), format!("{key}: \"{s}\" is not a duration ({e}); write e.g. \"30s\", \"5m\" or \"2h\""))
            }),
            toml::Value::Integer(n) => Err(self.error(
                v.span(),
                format!("{key}: a bare number is not a duration; write it with a unit, e.g. \"{n}s\""),
            )),
            other => Err(self.error(
                v.span(),
                format!("{key}: expected a duration string like \"30s\", found {}", other.type_str()),
            )),
        }
    }

    fn count(
        &self,
        v: &Option<Spanned<i64>>,
        key: &str,
        min: i64,
        max: i64,
        default: i64,
    ) -> Result<i64> {
        match v {
            None => Ok(default),
            Some(v) if (min..=max).contains(v.get_ref()) => Ok(*v.get_ref()),
            Some(v) => Err(self.error(
                v.span(),
                format!("{key} must be between {min} and {max}, not {}", v.get_ref()),
            )),
        }
    }

    fn validate(&self, raw: Raw, registry: &CalloutRegistry) -> Result<Config> {
        let gateway = self.gateway(&raw.gateway)?;
        let ports = self.ports(&raw.ports)?;
        let flows = self.flows(&raw.flows)?;
        let identities = self.identities(&raw.identities)?;
        let policy = self.policy(&raw, &ports, &identities, registry)?;
        let discard_rate =
            self.count(&raw.events.discard_rate, "discard_rate", 0, 1_000_000, 100)? as u32;
        Ok(Config {
            path: self.path.to_path_buf(),
            gateway,
            ports,
            flows,
            policy,
            events: EventsConfig {
                file: raw.events.file.clone(),
                discard_rate,
            },
        })
    }

    fn gateway(&self, g: &RawGateway) -> Result<GatewaySettings> {
        let workers = match &g.workers {
            None => Workers::Count(1),
            Some(v) => match v.get_ref() {
                toml::Value::String(s) if s == "auto" => Workers::Auto,
                toml::Value::Integer(n) if (1..=256).contains(n) => Workers::Count(*n as usize),
                _ => {
                    return Err(self.error(
                        v.span(),
                        "workers must be a number from 1 to 256 or \"auto\"",
                    ));
                }
            },
        };
        Ok(GatewaySettings {
            workers,
            host_model: match g.host_model {
                Some(HostModelName::Strong) => HostModel::Strong,
                _ => HostModel::Weak,
            },
            control_socket: g
                .control_socket
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_CONTROL_SOCKET)),
            control_socket_group: g.control_socket_group.clone(),
            offload: g.offload.unwrap_or(true),
        })
    }

    fn ports(&self, raw: &[RawPort]) -> Result<Vec<PortConfig>> {
        if raw.len() > 255 {
            return Err(self.error(raw[255].name.span(), "at most 255 ports"));
        }
        let mut names: HashMap<&str, ()> = HashMap::new();
        let mut devices: HashMap<(&str, Option<&str>), ()> = HashMap::new();
        let mut routes: HashMap<IpNet, &str> = HashMap::new();
        let mut out = Vec::new();
        for p in raw {
            let name = p.name.get_ref();
            if !valid_name(name) {
                return Err(self.error(
                    p.name.span(),
                    format!("port name \"{name}\" must be letters, digits, '-' or '_'"),
                ));
            }
            if names.insert(name, ()).is_some() {
                return Err(self.error(p.name.span(), format!("duplicate port name \"{name}\"")));
            }
            if name == "empty" {
                return Err(self.error(
                    p.name.span(),
                    "\"empty\" is reserved for arrival_port = \"empty\"",
                ));
            }
            let device = p.device.get_ref();
            if device.is_empty()
                || device.len() > 15
                || device.contains(['/', ' '])
                || device == "."
                || device == ".."
            {
                return Err(self.error(
                    p.device.span(),
                    format!("device \"{device}\" is not a valid interface name (1 to 15 characters, no '/' or spaces)"),
                ));
            }
            let netns = p.netns.as_ref().map(|n| n.get_ref().as_str());
            if let Some(ns) = &p.netns
                && !valid_name(ns.get_ref())
            {
                return Err(self.error(
                    ns.span(),
                    format!(
                        "netns \"{}\" must be letters, digits, '-' or '_'",
                        ns.get_ref()
                    ),
                ));
            }
            if devices.insert((device, netns), ()).is_some() {
                return Err(self.error(
                    p.device.span(),
                    format!("device \"{device}\" is used by two ports"),
                ));
            }
            let mut addresses = Vec::new();
            for a in &p.addresses {
                addresses.push(self.prefix(a, "addresses")?);
            }
            let mtu = match &p.mtu {
                None => None,
                Some(m) if (576..=65535).contains(m.get_ref()) => Some(*m.get_ref() as u32),
                Some(m) => {
                    return Err(self.error(
                        m.span(),
                        format!("mtu must be between 576 and 65535, not {}", m.get_ref()),
                    ));
                }
            };
            let mut port_routes = Vec::new();
            for r in &p.routes {
                let net = self.prefix(r, "routes")?.trunc();
                if let Some(other) = routes.insert(net, name) {
                    return Err(self.error(
                        r.span(),
                        format!("route {net} is on both port \"{other}\" and port \"{name}\" (nested prefixes are fine, the same prefix is not)"),
                    ));
                }
                port_routes.push(net);
            }
            let mut kernel_routes = Vec::new();
            for r in &p.kernel_routes {
                kernel_routes.push(self.prefix(r, "kernel_routes")?.trunc());
            }
            out.push(PortConfig {
                name: name.clone(),
                device: device.clone(),
                zone: match p.zone {
                    ZoneName::Inside => Zone::Inside,
                    ZoneName::Outside => Zone::Outside,
                },
                netns: netns.map(str::to_string),
                addresses,
                mtu,
                routes: port_routes,
                kernel_routes,
            });
        }
        Ok(out)
    }

    fn flows(&self, f: &RawFlows) -> Result<FlowConfig> {
        let max_flows = self.count(&f.max_flows, "max_flows", 1, 100_000_000, 1_000_000)? as usize;
        let mut c = FlowConfig::with_max_flows(max_flows);
        c.udp_idle = self.duration(&f.udp_idle, "udp_idle", c.udp_idle)?;
        c.icmp_idle = self.duration(&f.icmp_idle, "icmp_idle", c.icmp_idle)?;
        c.other_idle = self.duration(&f.other_idle, "other_idle", c.other_idle)?;
        c.mcast_bcast_lifetime = self.duration(
            &f.mcast_bcast_lifetime,
            "mcast_bcast_lifetime",
            c.mcast_bcast_lifetime,
        )?;
        c.tcp_opening = self.duration(&f.tcp_opening, "tcp_opening", c.tcp_opening)?;
        c.tcp_established =
            self.duration(&f.tcp_established, "tcp_established", c.tcp_established)?;
        c.tcp_closing = self.duration(&f.tcp_closing, "tcp_closing", c.tcp_closing)?;
        c.tcp_time_wait = self.duration(&f.tcp_time_wait, "tcp_time_wait", c.tcp_time_wait)?;
        c.tcp_closed = self.duration(&f.tcp_closed, "tcp_closed", c.tcp_closed)?;
        c.fragment_timeout =
            self.duration(&f.fragment_timeout, "fragment_timeout", c.fragment_timeout)?;
        let limit = i64::MAX;
        c.adaptive_start = self.count(
            &f.adaptive_start,
            "adaptive_start",
            0,
            limit,
            c.adaptive_start as i64,
        )? as usize;
        c.adaptive_end = self.count(
            &f.adaptive_end,
            "adaptive_end",
            1,
            limit,
            c.adaptive_end as i64,
        )? as usize;
        if c.adaptive_start >= c.adaptive_end {
            let span = f
                .adaptive_start
                .as_ref()
                .or(f.adaptive_end.as_ref())
                .map_or(0..0, |s| s.span());
            return Err(self.error(
                span,
                format!(
                    "adaptive_start ({}) must be below adaptive_end ({})",
                    c.adaptive_start, c.adaptive_end
                ),
            ));
        }
        c.max_fragments = self.count(
            &f.max_fragments,
            "max_fragments",
            1,
            10_000_000,
            c.max_fragments as i64,
        )? as usize;
        c.tcp_window_tracking = f.tcp_window_tracking.unwrap_or(true);
        c.tcp_loose_pickup = f.tcp_loose_pickup.unwrap_or(false);
        Ok(c)
    }

    fn identities(
        &self,
        raw: &BTreeMap<Spanned<String>, Vec<Spanned<String>>>,
    ) -> Result<HashMap<String, crate::policy::AddrSet>> {
        let mut out = HashMap::new();
        for (name, members) in raw {
            let mut set = crate::policy::AddrSet::default();
            for m in members {
                conditions::add_address(self, &mut set, m.get_ref()).map_err(|msg| {
                    self.error(m.span(), format!("identity \"{}\": {msg}", name.get_ref()))
                })?;
            }
            if set.is_empty() {
                return Err(self.error(
                    name.span(),
                    format!("identity \"{}\" is empty", name.get_ref()),
                ));
            }
            out.insert(name.get_ref().clone(), set);
        }
        Ok(out)
    }

    fn policy(
        &self,
        raw: &Raw,
        ports: &[PortConfig],
        identities: &HashMap<String, crate::policy::AddrSet>,
        registry: &CalloutRegistry,
    ) -> Result<PolicySpec> {
        let d = &raw.defaults;
        let defaults = DefaultPolicy {
            auth_connect: d.auth_connect.map_or(Action::Permit, Action::from),
            auth_recv_accept: d.auth_recv_accept.map_or(Action::Block, Action::from),
            icmp_error: d.icmp_error.map_or(Action::Block, Action::from),
        };
        let mut sublayers = vec![Sublayer {
            name: "default".into(),
            weight: 0,
        }];
        for s in &raw.sublayers {
            let name = s.name.get_ref();
            if name == "default" {
                return Err(self.error(
                    s.name.span(),
                    "sublayer \"default\" always exists with weight 0; give yours another name",
                ));
            }
            if !valid_name(name) {
                return Err(self.error(
                    s.name.span(),
                    format!("sublayer name \"{name}\" must be letters, digits, '-' or '_'"),
                ));
            }
            if sublayers.iter().any(|x| &x.name == name) {
                return Err(self.error(s.name.span(), format!("duplicate sublayer \"{name}\"")));
            }
            let weight = self.count(&s.weight, "weight", 0, 65535, 0)? as u16;
            sublayers.push(Sublayer {
                name: name.clone(),
                weight,
            });
        }
        let port_names: Vec<&str> = ports.iter().map(|p| p.name.as_str()).collect();
        let mut names: HashMap<&str, ()> = HashMap::new();
        let mut filters = Vec::new();
        for f in &raw.filters {
            let name = f.name.get_ref();
            if name.is_empty() {
                return Err(self.error(f.name.span(), "filter name must not be empty"));
            }
            if name == "." || name == ".." {
                return Err(self.error(
                    f.name.span(),
                    format!("filter name \"{name}\" is a path component, not a name"),
                ));
            }
            if names.insert(name, ()).is_some() {
                return Err(self.error(f.name.span(), format!("duplicate filter name \"{name}\"")));
            }
            filters.push(self.filter(f, &sublayers, &port_names, identities, registry)?);
        }
        Ok(PolicySpec {
            defaults,
            sublayers,
            filters,
        })
    }

    fn filter(
        &self,
        f: &RawFilter,
        sublayers: &[Sublayer],
        ports: &[&str],
        identities: &HashMap<String, crate::policy::AddrSet>,
        registry: &CalloutRegistry,
    ) -> Result<FilterSpec> {
        let name = f.name.get_ref().clone();
        let here =
            |span: Range<usize>, msg: String| self.error(span, format!("filter \"{name}\": {msg}"));
        let layer = Layer::from(*f.layer.get_ref());
        let callout_only = matches!(layer, Layer::FlowEstablished | Layer::EndpointClosure);
        let sublayer = match &f.sublayer {
            None => 0,
            Some(s) => sublayers
                .iter()
                .position(|x| &x.name == s.get_ref())
                .ok_or_else(|| {
                    here(
                        s.span(),
                        format!(
                            "unknown sublayer \"{}\" (define it with [[sublayer]])",
                            s.get_ref()
                        ),
                    )
                })?,
        };
        let weight = match &f.weight {
            None => 0,
            Some(w) if *w.get_ref() >= 0 => *w.get_ref() as u64,
            Some(w) => return Err(here(w.span(), "weight must not be negative".into())),
        };
        let kind = *f.action.get_ref();
        if callout_only && kind != FilterActionName::Callout {
            return Err(here(
                f.action.span(),
                format!(
                    "layer {} takes only callout filters, not permit or block",
                    layer.as_str()
                ),
            ));
        }
        let action = match kind {
            FilterActionName::Permit | FilterActionName::Block => {
                if let Some(c) = &f.callout {
                    return Err(here(
                        c.span(),
                        "`callout` needs action = \"callout\"".into(),
                    ));
                }
                if let Some(r) = &f.rate {
                    return Err(here(
                        r.span(),
                        "`rate` belongs to a rate_limit callout filter".into(),
                    ));
                }
                let hard = f.hard.as_ref().map(|h| *h.get_ref());
                if kind == FilterActionName::Permit {
                    SpecAction::Permit {
                        hard: hard.unwrap_or(false),
                    }
                } else {
                    SpecAction::Block {
                        hard: hard.unwrap_or(true),
                    }
                }
            }
            FilterActionName::Callout => {
                if let Some(h) = &f.hard {
                    return Err(here(
                        h.span(),
                        "a callout's permit and block are always soft: remove `hard`".into(),
                    ));
                }
                let Some(callout) = &f.callout else {
                    return Err(here(
                        f.action.span(),
                        "action = \"callout\" needs `callout = \"NAME\"`".into(),
                    ));
                };
                let rate = match &f.rate {
                    None => None,
                    Some(r) => Some(parse_rate(r.get_ref()).ok_or_else(|| {
                        here(r.span(), format!("rate \"{}\" must look like \"100/s\" (a positive number per second)", r.get_ref()))
                    })?),
                };
                let params = CalloutParams { rate };
                match registry.build(callout.get_ref(), &params) {
                    None => {
                        let known: Vec<&str> = registry.names().collect();
                        return Err(here(
                            callout.span(),
                            format!(
                                "unknown callout \"{}\" (known: {})",
                                callout.get_ref(),
                                known.join(", ")
                            ),
                        ));
                    }
                    Some(Err(msg)) => return Err(here(callout.span(), msg)),
                    Some(Ok(_)) => {}
                }
                SpecAction::Callout {
                    name: callout.get_ref().clone(),
                    params,
                }
            }
        };
        let options_allowed = kind == FilterActionName::Permit
            && matches!(layer, Layer::AuthConnect | Layer::AuthRecvAccept);
        for (key, present) in [
            (
                "unicast_lifetime",
                f.unicast_lifetime.as_ref().map(|v| v.span()),
            ),
            (
                "mcast_bcast_lifetime",
                f.mcast_bcast_lifetime.as_ref().map(|v| v.span()),
            ),
            (
                "deny_multicast_state",
                f.deny_multicast_state.as_ref().map(|v| v.span()),
            ),
            (
                "loose_source_mapping",
                f.loose_source_mapping.as_ref().map(|v| v.span()),
            ),
        ] {
            if let Some(span) = present
                && !options_allowed
            {
                return Err(here(
                    span,
                    format!(
                        "{key} is a classify option: only permit filters at auth_connect or auth_recv_accept take it"
                    ),
                ));
            }
        }
        let lifetime = |v: &Option<Spanned<toml::Value>>, key: &str| -> Result<Option<Duration>> {
            match v {
                None => Ok(None),
                Some(v) => {
                    let d = self.duration_value(v, key).map_err(|e| ConfigError {
                        message: format!("filter \"{name}\": {}", e.message),
                        ..e
                    })?;
                    if d.is_zero() || d > MAX_TIMEOUT {
                        return Err(here(
                            v.span(),
                            format!("{key} must be between 1ms and 24 days"),
                        ));
                    }
                    Ok(Some(d))
                }
            }
        };
        let options = FlowOptions {
            unicast_lifetime: lifetime(&f.unicast_lifetime, "unicast_lifetime")?,
            mcast_bcast_lifetime: lifetime(&f.mcast_bcast_lifetime, "mcast_bcast_lifetime")?,
            deny_multicast_state: f
                .deny_multicast_state
                .as_ref()
                .is_some_and(|v| *v.get_ref()),
            loose_source_mapping: f
                .loose_source_mapping
                .as_ref()
                .is_some_and(|v| *v.get_ref()),
        };
        let (conditions, summary) = conditions::parse(self, f, &name, ports, identities)?;
        Ok(FilterSpec {
            name,
            layer,
            sublayer,
            weight,
            action,
            conditions,
            options,
            summary,
        })
    }
}

fn valid_name(s: &str) -> bool {
    // `.` and `..` are path components, not names (port names reach file
    // systems and output that operators read).
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

/// An address (a host prefix) or a CIDR prefix; host bits are kept.
pub(crate) fn parse_prefix(s: &str) -> Option<IpNet> {
    let s = s.trim();
    if let Ok(net) = s.parse::<IpNet>() {
        return Some(net);
    }
    s.parse::<std::net::IpAddr>().ok().map(IpNet::from)
}

fn parse_rate(s: &str) -> Option<u32> {
    let n = s.trim().strip_suffix("/s")?.trim();
    n.parse::<u32>().ok().filter(|n| *n > 0)
}

#[cfg(test)]
mod tests;
