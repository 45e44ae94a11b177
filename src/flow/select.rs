//! Which flows `tunwall flows` lists and `tunwall kill` closes (SPEC §12):
//! every given filter must match; an address or port matches either
//! endpoint of the flow.

use super::{Direction, FlowEntry, FlowKey, TcpState};
use crate::packet::{IpVersion, RawAddr, raw_addr};
use crate::policy::{AddrSet, Layer};
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::net::IpAddr;

/// The filters of `flows`/`kill`, resolved against the running config.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowSelector {
    /// IP protocol number.
    pub protocol: Option<u8>,
    /// State name (`established`, `active`, …).
    pub state: Option<&'static str>,
    /// Direction of the flow.
    pub direction: Option<Direction>,
    /// The layer that authorized the flow.
    pub layer: Option<Layer>,
    /// Either endpoint's address.
    pub addr: Option<(IpVersion, RawAddr)>,
    /// Either endpoint's port (not ICMP flows).
    pub port: Option<u16>,
    /// Port index the flow was (last) authorized on.
    pub arrival_port: Option<u8>,
    /// Either endpoint's address is in this identity's address group.
    pub identity: Option<AddrSet>,
    /// One flow by id (`kill --id`).
    pub id: Option<u64>,
}

/// The state names a flow can show.
fn state_name(name: &str) -> Option<&'static str> {
    if let Some(name) = ["active", "pending"].into_iter().find(|n| *n == name) {
        return Some(name);
    }
    TcpState::ALL
        .iter()
        .map(|s| s.as_str())
        .find(|s| *s == name)
}

/// A protocol by name (`tcp`, `udp`, `icmp`, `icmpv6`) or number.
fn protocol_number(name: &str) -> Option<u8> {
    match name {
        "tcp" => Some(6),
        "udp" => Some(17),
        "icmp" => Some(1),
        "icmpv6" => Some(58),
        n => n.parse().ok(),
    }
}

impl FlowSelector {
    /// Whether no filter is given (every flow matches).
    pub fn is_empty(&self) -> bool {
        *self == FlowSelector::default()
    }

    /// The selector of a control request's `select` object: names resolved
    /// against the running `ports` and `identities`; an unknown name is an
    /// error the client prints.
    pub fn from_json(
        select: Option<&Value>,
        ports: &[String],
        identities: &HashMap<String, AddrSet>,
    ) -> Result<FlowSelector, String> {
        let mut s = FlowSelector::default();
        let Some(select) = select.and_then(Value::as_object) else {
            return Ok(s);
        };
        let text = |key: &str| select.get(key).and_then(Value::as_str);
        if let Some(p) = text("protocol") {
            s.protocol =
                Some(protocol_number(p).ok_or_else(|| format!("unknown protocol \"{p}\""))?);
        }
        if let Some(st) = text("state") {
            s.state = Some(state_name(st).ok_or_else(|| {
                format!(
                    "unknown state \"{st}\" (active, {})",
                    TcpState::ALL
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?);
        }
        if let Some(d) = text("direction") {
            s.direction = Some(match d {
                "outbound" => Direction::Outbound,
                "inbound" => Direction::Inbound,
                _ => return Err(format!("unknown direction \"{d}\" (outbound, inbound)")),
            });
        }
        if let Some(l) = text("layer") {
            s.layer = Some(
                [Layer::AuthConnect, Layer::AuthRecvAccept]
                    .into_iter()
                    .find(|x| x.as_str() == l)
                    .ok_or_else(|| {
                        format!("unknown layer \"{l}\" (auth_connect, auth_recv_accept)")
                    })?,
            );
        }
        if let Some(a) = text("addr") {
            let addr: IpAddr = a
                .parse()
                .map_err(|_| format!("\"{a}\" is not an IP address"))?;
            s.addr = Some(raw_addr(addr));
        }
        if let Some(p) = select.get("port").filter(|v| !v.is_null()) {
            s.port = Some(
                p.as_u64()
                    .and_then(|p| u16::try_from(p).ok())
                    .ok_or_else(|| format!("bad port {p}"))?,
            );
        }
        if let Some(name) = text("arrival_port") {
            let index = ports
                .iter()
                .position(|p| p == name)
                .ok_or_else(|| format!("unknown port \"{name}\""))?;
            s.arrival_port = Some(index as u8);
        }
        if let Some(name) = text("identity") {
            s.identity = Some(
                identities
                    .get(name)
                    .cloned()
                    .ok_or_else(|| format!("unknown identity \"{name}\""))?,
            );
        }
        if let Some(id) = select.get("id").filter(|v| !v.is_null()) {
            s.id = Some(id.as_u64().ok_or_else(|| format!("bad flow id {id}"))?);
        }
        Ok(s)
    }

    /// Whether `entry` is selected.
    pub fn matches(&self, entry: &FlowEntry) -> bool {
        self.matches_translated(entry, None)
    }

    /// Whether `entry` is selected; an address or port also matches the
    /// endpoints of its translated key (`translated`, SPEC §9), the one
    /// packets carry on the other side of the gateway.
    pub fn matches_translated(&self, entry: &FlowEntry, translated: Option<&FlowKey>) -> bool {
        if self.id.is_some_and(|id| id != entry.id()) {
            return false;
        }
        let key = entry.key();
        if self.protocol.is_some_and(|p| p != key.protocol)
            || self.direction.is_some_and(|d| d != entry.direction())
            || self
                .layer
                .is_some_and(|l| l != Layer::auth(entry.direction()))
            || self.state.is_some_and(|s| s != entry.state().as_str())
            || self.arrival_port.is_some_and(|p| p != entry.arrival_port())
        {
            return false;
        }
        let version = key.version();
        let keys = || std::iter::once(&key).chain(translated);
        if let Some((v, addr)) = &self.addr
            && (*v != version || !keys().any(|k| k.local == *addr || k.remote == *addr))
        {
            return false;
        }
        if let Some(port) = self.port
            && (key.is_icmp() || !keys().any(|k| k.local_port == port || k.remote_port == port))
        {
            return false;
        }
        if let Some(set) = &self.identity
            && !set.contains(version, &key.local)
            && !set.contains(version, &key.remote)
        {
            return false;
        }
        true
    }
}

/// The `select` object of a control request, as the CLI builds it from its
/// flags (`None` values are left out).
pub fn request_select(fields: &[(&str, Option<Value>)]) -> Value {
    let map: Map<String, Value> = fields
        .iter()
        .filter_map(|(k, v)| v.clone().map(|v| (k.to_string(), v)))
        .collect();
    json!(map)
}
