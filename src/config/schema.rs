//! The configuration file's schema as serde reads it: every table and key
//! of SPEC §6, strict (unknown keys are errors), with spans for messages.
//! Validation into the typed [`super::Config`] is in `validate` and `policy`.

use crate::policy::{Action, Layer};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Raw {
    #[serde(default)]
    pub(super) gateway: RawGateway,
    #[serde(default, rename = "port")]
    pub(super) ports: Vec<RawPort>,
    #[serde(default)]
    pub(super) flows: RawFlows,
    #[serde(default)]
    pub(super) defaults: RawDefaults,
    #[serde(default)]
    pub(super) identities: BTreeMap<Spanned<String>, Spanned<toml::Value>>,
    #[serde(default)]
    pub(super) wireguard: Vec<RawWireguard>,
    #[serde(default, rename = "sublayer")]
    pub(super) sublayers: Vec<RawSublayer>,
    #[serde(default, rename = "filter")]
    pub(super) filters: Vec<RawFilter>,
    #[serde(default)]
    pub(super) events: RawEvents,
    pub(super) sync: Option<Spanned<RawSync>>,
    #[serde(default)]
    pub(super) metrics: RawMetrics,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    pub(super) listen: Option<Spanned<String>>,
}

/// `[sync]` (SPEC §15).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSync {
    pub(super) listen: Spanned<String>,
    pub(super) peer: Spanned<String>,
    pub(super) key_file: Spanned<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGateway {
    pub(super) workers: Option<Spanned<toml::Value>>,
    pub(super) host_model: Option<HostModelName>,
    pub(super) control_socket: Option<Spanned<PathBuf>>,
    pub(super) control_socket_group: Option<String>,
    pub(super) offload: Option<bool>,
    pub(super) state_file: Option<PathBuf>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub(super) enum HostModelName {
    Weak,
    Strong,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub(super) enum ZoneName {
    Inside,
    Outside,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPort {
    pub(super) name: Spanned<String>,
    pub(super) device: Spanned<String>,
    pub(super) zone: ZoneName,
    pub(super) netns: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) addresses: Vec<Spanned<String>>,
    pub(super) mtu: Option<Spanned<i64>>,
    #[serde(default)]
    pub(super) routes: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) kernel_routes: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWireguard {
    pub(super) interface: Spanned<String>,
    pub(super) netns: Option<Spanned<String>>,
    pub(super) refresh: Option<Spanned<toml::Value>>,
    pub(super) port: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFlows {
    pub(super) max_flows: Option<Spanned<i64>>,
    pub(super) udp_idle: Option<Spanned<toml::Value>>,
    pub(super) icmp_idle: Option<Spanned<toml::Value>>,
    pub(super) other_idle: Option<Spanned<toml::Value>>,
    pub(super) mcast_bcast_lifetime: Option<Spanned<toml::Value>>,
    pub(super) tcp_opening: Option<Spanned<toml::Value>>,
    pub(super) tcp_established: Option<Spanned<toml::Value>>,
    pub(super) tcp_closing: Option<Spanned<toml::Value>>,
    pub(super) tcp_time_wait: Option<Spanned<toml::Value>>,
    pub(super) tcp_closed: Option<Spanned<toml::Value>>,
    pub(super) adaptive_start: Option<Spanned<i64>>,
    pub(super) adaptive_end: Option<Spanned<i64>>,
    pub(super) tcp_window_tracking: Option<bool>,
    pub(super) tcp_loose_pickup: Option<bool>,
    pub(super) max_fragments: Option<Spanned<i64>>,
    pub(super) fragment_timeout: Option<Spanned<toml::Value>>,
    pub(super) pend_queue_packets: Option<Spanned<i64>>,
    pub(super) pend_queue_bytes: Option<Spanned<i64>>,
    pub(super) pend_max_flows: Option<Spanned<i64>>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(super) enum ActionName {
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
pub(super) struct RawDefaults {
    pub(super) auth_connect: Option<ActionName>,
    pub(super) auth_recv_accept: Option<ActionName>,
    pub(super) icmp_error: Option<ActionName>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSublayer {
    pub(super) name: Spanned<String>,
    #[serde(default)]
    pub(super) weight: Option<Spanned<i64>>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(super) enum LayerName {
    AuthConnect,
    AuthRecvAccept,
    FlowEstablished,
    EndpointClosure,
    IcmpError,
    BindRedirect,
    ConnectRedirect,
    ResourceAssignment,
    ResourceRelease,
}

impl From<LayerName> for Layer {
    fn from(l: LayerName) -> Layer {
        match l {
            LayerName::AuthConnect => Layer::AuthConnect,
            LayerName::AuthRecvAccept => Layer::AuthRecvAccept,
            LayerName::FlowEstablished => Layer::FlowEstablished,
            LayerName::EndpointClosure => Layer::EndpointClosure,
            LayerName::IcmpError => Layer::IcmpError,
            LayerName::BindRedirect => Layer::BindRedirect,
            LayerName::ConnectRedirect => Layer::ConnectRedirect,
            LayerName::ResourceAssignment => Layer::ResourceAssignment,
            LayerName::ResourceRelease => Layer::ResourceRelease,
        }
    }
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(super) enum FilterActionName {
    Permit,
    Block,
    Callout,
    Redirect,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFilter {
    pub(super) name: Spanned<String>,
    pub(super) layer: Spanned<LayerName>,
    pub(super) sublayer: Option<Spanned<String>>,
    pub(super) weight: Option<Spanned<i64>>,
    pub(super) action: Spanned<FilterActionName>,
    pub(super) hard: Option<Spanned<bool>>,
    pub(super) reject: Option<Spanned<bool>>,
    pub(super) callout: Option<Spanned<String>>,
    pub(super) rate: Option<Spanned<String>>,
    pub(super) pend_timeout: Option<Spanned<toml::Value>>,
    pub(super) timeout_action: Option<Spanned<ActionName>>,
    pub(super) protocol: Option<Spanned<toml::Value>>,
    pub(super) ip_version: Option<Spanned<toml::Value>>,
    pub(super) local_address: Option<Spanned<toml::Value>>,
    pub(super) remote_address: Option<Spanned<toml::Value>>,
    pub(super) local_port: Option<Spanned<toml::Value>>,
    pub(super) remote_port: Option<Spanned<toml::Value>>,
    pub(super) icmp_type: Option<Spanned<toml::Value>>,
    pub(super) icmp_code: Option<Spanned<toml::Value>>,
    pub(super) arrival_port: Option<Spanned<toml::Value>>,
    pub(super) local_identity: Option<Spanned<toml::Value>>,
    pub(super) remote_identity: Option<Spanned<toml::Value>>,
    pub(super) flags: Option<Spanned<toml::Value>>,
    pub(super) not_flags: Option<Spanned<toml::Value>>,
    pub(super) unicast_lifetime: Option<Spanned<toml::Value>>,
    pub(super) mcast_bcast_lifetime: Option<Spanned<toml::Value>>,
    pub(super) deny_multicast_state: Option<Spanned<bool>>,
    pub(super) loose_source_mapping: Option<Spanned<bool>>,
    pub(super) to_address: Option<Spanned<toml::Value>>,
    pub(super) to_port: Option<Spanned<toml::Value>>,
    pub(super) original_local_address: Option<Spanned<toml::Value>>,
    pub(super) original_remote_address: Option<Spanned<toml::Value>>,
    pub(super) original_local_port: Option<Spanned<toml::Value>>,
    pub(super) original_remote_port: Option<Spanned<toml::Value>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEvents {
    pub(super) file: Option<PathBuf>,
    pub(super) discard_rate: Option<Spanned<i64>>,
    pub(super) reject_rate: Option<Spanned<i64>>,
}
