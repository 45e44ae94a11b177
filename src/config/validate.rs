//! Validation of the schema into the typed configuration: the gateway,
//! ports and routes, flow settings and events, with every error located at
//! its line and column. The policy sections are validated in `policy`.

use super::schema::*;
use super::{
    Config, ConfigError, DEFAULT_CONTROL_SOCKET, EventsConfig, GatewaySettings, PortConfig, Result,
    Workers,
};
use crate::engine::HostModel;
use crate::flow::{FlowConfig, MAX_TIMEOUT, Zone};
use crate::policy::CalloutRegistry;
use ipnet::IpNet;
use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// Validation context: the file, for turning byte spans into line:column.
pub(crate) struct Loader<'a> {
    pub(super) path: &'a Path,
    pub(super) text: &'a str,
}

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

    /// Where `needle` first occurs inside `span` (the start of `span` if
    /// nowhere): values inside arrays and inline tables have no span of
    /// their own.
    pub(super) fn within(&self, span: Range<usize>, needle: &str) -> Range<usize> {
        let start = self
            .text
            .get(span.clone())
            .and_then(|t| t.find(needle))
            .map_or(span.start, |i| span.start + i);
        start..start
    }

    pub(super) fn prefix(&self, s: &Spanned<String>, what: &str) -> Result<IpNet> {
        parse_prefix(s.get_ref()).ok_or_else(|| {
            self.error(
                s.span(),
                format!("{what}: \"{}\" is not an IP address or prefix", s.get_ref()),
            )
        })
    }

    pub(super) fn duration(
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

    pub(super) fn count(
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

    pub(super) fn validate(&self, raw: Raw, registry: &CalloutRegistry) -> Result<Config> {
        let gateway = self.gateway(&raw.gateway)?;
        let ports = self.ports(&raw.ports)?;
        let flows = self.flows(&raw.flows)?;
        let wireguard = self.wireguard(&raw.wireguard, &ports)?;
        let identities = self.identities(&raw.identities, &wireguard)?;
        let mut policy = self.policy(&raw, &ports, identities, registry)?;
        policy.resolve_identities(&Default::default());
        let discard_rate =
            self.count(&raw.events.discard_rate, "discard_rate", 0, 1_000_000, 100)? as u32;
        let sync = self.sync(&raw.sync)?;
        let reject_rate =
            self.count(&raw.events.reject_rate, "reject_rate", 0, 1_000_000, 100)? as u32;
        let metrics_listen = match &raw.metrics.listen {
            None => None,
            Some(l) => Some(l.get_ref().parse().map_err(|_| {
                self.error(
                    l.span(),
                    format!(
                        "[metrics] listen \"{}\" must be ADDRESS:PORT, e.g. \"127.0.0.1:9560\" or \"[::1]:9560\"",
                        l.get_ref()
                    ),
                )
            })?),
        };
        Ok(Config {
            path: self.path.to_path_buf(),
            gateway,
            ports,
            flows,
            policy,
            wireguard,
            events: EventsConfig {
                file: raw.events.file.clone(),
                discard_rate,
                reject_rate,
            },
            sync,
            metrics_listen,
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
                .as_ref()
                .map(|s| s.get_ref().clone())
                .unwrap_or_else(|| PathBuf::from(DEFAULT_CONTROL_SOCKET)),
            control_socket_group: g.control_socket_group.clone(),
            offload: g.offload.unwrap_or(true),
            state_file: g.state_file.clone(),
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
        c.pend_queue_packets = self.count(
            &f.pend_queue_packets,
            "pend_queue_packets",
            1,
            65_536,
            c.pend_queue_packets as i64,
        )? as usize;
        c.pend_queue_bytes = self.count(
            &f.pend_queue_bytes,
            "pend_queue_bytes",
            1,
            16 << 20,
            c.pend_queue_bytes as i64,
        )? as usize;
        c.pend_max_flows = self.count(
            &f.pend_max_flows,
            "pend_max_flows",
            0,
            1_000_000,
            c.pend_max_flows as i64,
        )? as usize;
        c.tcp_window_tracking = f.tcp_window_tracking.unwrap_or(true);
        c.tcp_loose_pickup = f.tcp_loose_pickup.unwrap_or(false);
        Ok(c)
    }
}

pub(super) fn valid_name(s: &str) -> bool {
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

pub(super) fn parse_rate(s: &str) -> Option<u32> {
    let n = s.trim().strip_suffix("/s")?.trim();
    n.parse::<u32>().ok().filter(|n| *n > 0)
}
