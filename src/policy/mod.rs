//! The decisions the engine asks for: layers, classify requests and the
//! [`Authorizer`] that answers them.
//!
//! The engine consults an authorizer at the auth layers for the first packet
//! of a flow and for reauthorization, at `icmp_error` for unrelated ICMP
//! errors, and notifies it at `flow_established` and `endpoint_closure`. The
//! compiled WFP policy of the configuration file is one authorizer;
//! [`DefaultPolicy`] (the `[defaults]` actions alone) and [`FnPolicy`] (any
//! closure) are others, used by tests and embedders.

pub mod arbitration;
pub mod callout;
mod compile;
pub mod compiled;
pub mod counters;
mod describe;
pub mod filter;
pub mod identity;
pub mod identity_table;
mod layer_index;
pub mod lineage;
pub mod rate_limit;
pub mod spec;
pub mod trace;

pub use callout::{AskCallout, Callout, CalloutParams, CalloutRegistry, CalloutResult};
pub use compile::CompileError;
pub use compiled::Policy;
pub use filter::{AddrSet, ArrivalPort, Conditions, RedirectTarget, ValueSet};
pub use identity::{IdentityAddrs, IdentityCond, SourceArrival};
pub use identity_table::{
    Identities, IdentitySource, Peer, PeerSnapshot, PublicKey, key_base64, parse_key,
};
pub use lineage::Lineage;
pub use spec::{FilterSpec, PolicySpec, SpecAction, Sublayer};

use crate::flow::FlowInfo;
use crate::flow::FlowKey;
use crate::packet::{IpVersion, RawAddr};
use crate::reason::named_enum;
use crate::time::Instant;
use std::sync::Arc;
use std::time::Duration;

named_enum! {
    /// The layers of SPEC §3.
    pub enum Layer {
        /// First packet of an outbound flow; reauthorization of outbound flows.
        AuthConnect => "auth_connect",
        /// First packet of an inbound flow; reauthorization of inbound flows.
        AuthRecvAccept => "auth_recv_accept",
        /// A flow's handshake completed (TCP) or it was permitted (others).
        FlowEstablished => "flow_established",
        /// A flow was removed.
        EndpointClosure => "endpoint_closure",
        /// An ICMP error that matches no flow.
        IcmpError => "icmp_error",
        /// First packet of a flow, before its auth layer: may rewrite the
        /// flow's local endpoint (masquerade, port forwarding).
        BindRedirect => "bind_redirect",
        /// First packet of an outbound flow, after `bind_redirect`: may
        /// rewrite its remote endpoint.
        ConnectRedirect => "connect_redirect",
        /// A translated port was allocated (callouts only).
        ResourceAssignment => "resource_assignment",
        /// A translated port was released (callouts only).
        ResourceRelease => "resource_release",
    }
}

impl FlowInfo {
    /// The layer that authorized the flow.
    pub fn layer(&self) -> Layer {
        Layer::auth(self.direction)
    }
}

/// What the policy reports besides its decisions; the engine turns each
/// note into an event.
#[derive(Clone, Debug, PartialEq)]
// Notes are rare (vetoes, log callouts) and moved straight into events.
#[allow(clippy::large_enum_variant)]
pub enum PolicyNote {
    /// A callout blocked against a hard permit.
    Veto {
        /// When.
        at: Instant,
        /// The layer.
        layer: Layer,
        /// The vetoing callout filter.
        filter: Arc<str>,
        /// The hard permit it overrode.
        overridden_filter: Arc<str>,
    },
    /// The `log` callout ran.
    CalloutLog {
        /// When.
        at: Instant,
        /// The layer.
        layer: Layer,
        /// The callout filter.
        filter: Arc<str>,
        /// The flow, at `flow_established` and `endpoint_closure`.
        flow: Option<FlowInfo>,
        /// What was classified, at the auth and `icmp_error` layers.
        request: Option<ClassifyRequest>,
    },
}

impl Layer {
    /// The auth layer that authorizes flows of `direction`.
    pub fn auth(direction: crate::flow::Direction) -> Layer {
        match direction {
            crate::flow::Direction::Outbound => Layer::AuthConnect,
            crate::flow::Direction::Inbound => Layer::AuthRecvAccept,
        }
    }
}

/// Permit or block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Let the packet (and its flow) through.
    Permit,
    /// Drop it.
    Block,
}

impl Action {
    /// `"permit"` or `"block"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Permit => "permit",
            Action::Block => "block",
        }
    }
}

/// The condition flags of SPEC §4.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ClassifyFlags(u8);

impl ClassifyFlags {
    /// The flow is being reauthorized.
    pub const REAUTHORIZE: ClassifyFlags = ClassifyFlags(1);
    /// The packet is a (first) fragment.
    pub const FRAGMENT: ClassifyFlags = ClassifyFlags(2);
    /// The destination is a multicast address.
    pub const MULTICAST: ClassifyFlags = ClassifyFlags(4);
    /// The destination is a broadcast address.
    pub const BROADCAST: ClassifyFlags = ClassifyFlags(8);
    /// The flow is translated (FWP_CONDITION_FLAG_IS_CONNECTION_REDIRECTED).
    pub const REDIRECTED: ClassifyFlags = ClassifyFlags(16);

    /// No flag.
    pub const fn empty() -> Self {
        ClassifyFlags(0)
    }

    /// Whether every flag of `other` is set.
    pub const fn contains(self, other: ClassifyFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether any flag of `other` is set.
    pub const fn intersects(self, other: ClassifyFlags) -> bool {
        self.0 & other.0 != 0
    }

    /// Sets the flags of `other`.
    pub fn insert(&mut self, other: ClassifyFlags) {
        self.0 |= other.0;
    }
}

impl std::ops::BitOr for ClassifyFlags {
    type Output = ClassifyFlags;
    fn bitor(self, rhs: ClassifyFlags) -> ClassifyFlags {
        ClassifyFlags(self.0 | rhs.0)
    }
}

/// What a layer classifies: the fields filters can match on (SPEC §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClassifyRequest {
    /// The layer being classified.
    pub layer: Layer,
    /// IP version.
    pub version: IpVersion,
    /// IP protocol.
    pub protocol: u8,
    /// The inside host's address.
    pub local_addr: RawAddr,
    /// The other host's address.
    pub remote_addr: RawAddr,
    /// The inside host's port (0 where the protocol has none).
    pub local_port: u16,
    /// The other host's port (0 where the protocol has none).
    pub remote_port: u16,
    /// ICMP type and code, for ICMP.
    pub icmp: Option<(u8, u8)>,
    /// The arrival port, or `None` when unknown (`arrival_port = "empty"`).
    pub arrival_port: Option<u8>,
    /// Condition flags.
    pub flags: ClassifyFlags,
    /// The untranslated endpoints of a translated flow (`original_*`
    /// conditions); `None`: the same as the translated ones.
    pub original: Option<Original>,
    /// Where the packet's source came in (SPEC §11), `None` when unknown:
    /// WireGuard identities with a `port` then match by address alone.
    pub source: Option<SourceArrival>,
    /// The time of the packet (for rate limits).
    pub now: Instant,
    /// The flow's id: the id a new flow will get at its initial
    /// authorization, the flow's own at a reauthorization (a callout that
    /// pends keeps it to complete the flow later); `None` at `icmp_error`.
    pub flow_id: Option<u64>,
    /// The completed decision of a flow that was pending (SPEC §10): a
    /// callout that answers `pend` at a reauthorization of this flow
    /// returns it instead, for the flow's whole life.
    pub completed: Option<Action>,
}

/// The endpoints of a flow before translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Original {
    /// Local address.
    pub local_addr: RawAddr,
    /// Remote address.
    pub remote_addr: RawAddr,
    /// Local port (0 for ICMP).
    pub local_port: u16,
    /// Remote port (0 for ICMP).
    pub remote_port: u16,
}

impl Original {
    /// The endpoints of `key` as a classify request shows them.
    pub fn of(key: &FlowKey) -> Original {
        let r = ClassifyRequest::for_flow(Layer::AuthConnect, key, Instant::ZERO);
        Original {
            local_addr: r.local_addr,
            remote_addr: r.remote_addr,
            local_port: r.local_port,
            remote_port: r.remote_port,
        }
    }
}

/// Where a redirect sends the address it rewrites.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedirectAddress {
    /// No `to_address`: the address stays.
    Keep,
    /// The `to_address` of the flow's family.
    To(RawAddr),
    /// `to_address` has none of the flow's family (`nat_no_address`).
    Missing,
}

/// The answer of a redirect layer that translates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redirect {
    /// The redirect filter.
    pub filter: Arc<str>,
    /// The new address.
    pub address: RedirectAddress,
    /// `to_port`: the allocation range (masquerade) or target range.
    pub to_port: Option<(u16, u16)>,
    /// The first port of the match range the rewritten port fell in, when
    /// that range is wider than one port (it maps onto `to_port` in order).
    pub port_base: Option<u16>,
}

impl Redirect {
    /// The target port for `port` (port forwarding, connect redirection).
    pub fn target_port(&self, port: u16) -> u16 {
        match (self.to_port, self.port_base) {
            (None, _) => port,
            (Some((lo, hi)), Some(base)) => {
                let p = u32::from(lo) + u32::from(port.saturating_sub(base));
                if p <= u32::from(hi) { p as u16 } else { lo }
            }
            (Some((lo, _)), None) => lo,
        }
    }
}

impl ClassifyRequest {
    /// The request describing an existing flow at `layer`: its key's fields,
    /// no arrival port (unknown) and no flags.
    pub fn for_flow(layer: Layer, key: &FlowKey, now: Instant) -> ClassifyRequest {
        let icmp = key.icmp();
        ClassifyRequest {
            layer,
            version: key.version(),
            protocol: key.protocol,
            local_addr: key.local,
            remote_addr: key.remote,
            local_port: if icmp.is_some() { 0 } else { key.local_port },
            remote_port: if icmp.is_some() { 0 } else { key.remote_port },
            icmp: icmp.map(|i| (i.icmp_type, i.code)),
            arrival_port: None,
            flags: ClassifyFlags::empty(),
            original: None,
            source: None,
            now,
            flow_id: None,
            completed: None,
        }
    }
}

/// Classify options a permit can attach to the flow it creates (ALE flow customization).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowOptions {
    /// Idle timeout for the unicast (non-TCP) flow created.
    pub unicast_lifetime: Option<Duration>,
    /// Lifetime of multicast/broadcast state created.
    pub mcast_bcast_lifetime: Option<Duration>,
    /// Permit an outbound multicast/broadcast packet without creating state.
    pub deny_multicast_state: bool,
    /// UDP responses may come from any remote address to the flow's local port.
    pub loose_source_mapping: bool,
}

/// The answer of a layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Permit or block.
    pub action: Action,
    /// The deciding filter, or `None` for the layer's default action.
    pub filter: Option<Arc<str>>,
    /// Options for the flow a permit creates.
    pub options: FlowOptions,
    /// Whether a callout vetoed a hard permit.
    pub vetoed: bool,
    /// A block by a `reject = true` filter: the gateway answers the packet.
    pub reject: bool,
    /// A callout pended the flow (SPEC §10): `action` is block and `filter`
    /// the pending callout's filter; the engine holds the flow instead.
    pub pend: Option<Pend>,
}

/// How a pended flow completes when nobody decides (a callout filter's
/// `pend_timeout` and `timeout_action`, SPEC §10).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pend {
    /// How long the flow may stay pending.
    pub timeout: Duration,
    /// The decision when the timeout passes.
    pub timeout_action: Action,
}

impl Default for Pend {
    /// SPEC §10: 10 s, then block.
    fn default() -> Self {
        Pend {
            timeout: Duration::from_secs(10),
            timeout_action: Action::Block,
        }
    }
}

impl Decision {
    /// The layer default, without a filter.
    pub fn default_action(action: Action) -> Decision {
        Decision {
            action,
            filter: None,
            options: FlowOptions::default(),
            vetoed: false,
            reject: false,
            pend: None,
        }
    }
}

/// Whoever decides: the compiled policy, or a test's closure.
///
/// `classify` and `indicate` may report notes (callout logs, vetoes) in
/// `notes`; they must not block for long: the engine holds the flow's shard
/// lock while it classifies.
pub trait Authorizer: Send + Sync {
    /// The policy generation of `layer`. A flow authorized under another
    /// generation of its layer is reauthorized on its next packet. Fixed
    /// for the life of the object (a change is a new policy object): the
    /// engine reads it once when it loads the policy.
    fn generation(&self, layer: Layer) -> u32;

    /// Whether classifying at `layer` could pend a new flow (SPEC §10): a
    /// callout sits there. When not, the engine skips telling the pend
    /// store which flow it classifies. Fixed for the life of the object.
    fn may_pend(&self, _layer: Layer) -> bool {
        true
    }

    /// Whether every change of `layer` since generation `since` came from
    /// an identity's addresses changing (SPEC §11), not from a reload: the
    /// reauthorization's trigger is then `identity_change`.
    fn identity_change_only(&self, _layer: Layer, _since: u32) -> bool {
        false
    }

    /// Classifies at `request.layer`.
    fn classify(&self, request: &ClassifyRequest, notes: &mut Vec<PolicyNote>) -> Decision;

    /// Classifies at a redirect layer: the first matching filter in
    /// arbitration order decides; `None` for no match or an exempting permit.
    fn redirect(&self, _request: &ClassifyRequest) -> Option<Redirect> {
        None
    }

    /// Whether any filter sits at a redirect layer.
    fn has_redirects(&self) -> bool {
        false
    }

    /// A flow was admitted with `filter` as the deciding filter (its
    /// `flows_created` counter).
    fn flow_created(&self, _filter: &Arc<str>) {}

    /// Whether [`Authorizer::indicate`] at `layer` could run anything: when
    /// not, the engine skips building the flow's snapshot for it.
    fn indicates(&self, _layer: Layer) -> bool {
        true
    }

    /// Runs the callouts of a callout-only layer (`flow_established`,
    /// `endpoint_closure`, `resource_assignment`, `resource_release`) for
    /// `flow` at `now`.
    fn indicate(
        &self,
        _layer: Layer,
        _flow: &FlowInfo,
        _now: Instant,
        _notes: &mut Vec<PolicyNote>,
    ) {
    }
}

/// The `[defaults]` actions and nothing else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DefaultPolicy {
    /// Default of `auth_connect`.
    pub auth_connect: Action,
    /// Default of `auth_recv_accept`.
    pub auth_recv_accept: Action,
    /// Default of `icmp_error`.
    pub icmp_error: Action,
}

impl Default for DefaultPolicy {
    /// SPEC §4: outbound permitted, inbound and unrelated ICMP errors blocked.
    fn default() -> Self {
        DefaultPolicy {
            auth_connect: Action::Permit,
            auth_recv_accept: Action::Block,
            icmp_error: Action::Block,
        }
    }
}

impl DefaultPolicy {
    /// The default action of `layer` (callout-only layers permit).
    pub fn action(&self, layer: Layer) -> Action {
        match layer {
            Layer::AuthConnect => self.auth_connect,
            Layer::AuthRecvAccept => self.auth_recv_accept,
            Layer::IcmpError => self.icmp_error,
            Layer::FlowEstablished
            | Layer::EndpointClosure
            | Layer::BindRedirect
            | Layer::ConnectRedirect
            | Layer::ResourceAssignment
            | Layer::ResourceRelease => Action::Permit,
        }
    }
}

impl Authorizer for DefaultPolicy {
    fn generation(&self, _layer: Layer) -> u32 {
        0
    }

    fn classify(&self, request: &ClassifyRequest, _notes: &mut Vec<PolicyNote>) -> Decision {
        Decision::default_action(self.action(request.layer))
    }

    fn may_pend(&self, _layer: Layer) -> bool {
        false
    }

    fn indicates(&self, _layer: Layer) -> bool {
        false
    }
}

/// An authorizer made of a closure and a fixed generation per layer.
pub struct FnPolicy<F> {
    classify: F,
    generations: [u32; Layer::COUNT],
}

impl<F> FnPolicy<F>
where
    F: Fn(&ClassifyRequest) -> Decision + Send + Sync,
{
    /// Wraps `classify`; every layer is at generation `generation`.
    pub fn new(generation: u32, classify: F) -> Self {
        FnPolicy {
            classify,
            generations: [generation; Layer::COUNT],
        }
    }

    /// Sets the generation of one layer.
    pub fn with_generation(mut self, layer: Layer, generation: u32) -> Self {
        self.generations[layer.index()] = generation;
        self
    }
}

impl<F> Authorizer for FnPolicy<F>
where
    F: Fn(&ClassifyRequest) -> Decision + Send + Sync,
{
    fn generation(&self, layer: Layer) -> u32 {
        self.generations[layer.index()]
    }

    fn classify(&self, request: &ClassifyRequest, _notes: &mut Vec<PolicyNote>) -> Decision {
        (self.classify)(request)
    }

    fn indicates(&self, _layer: Layer) -> bool {
        false
    }
}
