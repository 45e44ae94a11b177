//! The state every worker shares: ports, routes, the flow table, the
//! fragment table, wildcard state, flow ids and the policy in force.

use super::{Engine, Local, Stats};
use crate::event::FlowInfo;
use crate::flow::fragment::FragmentTable;
use crate::flow::wildcard::Wildcards;
use crate::flow::{FlowConfig, FlowSelector, FlowTable};
use crate::nat::Nat;
use crate::packet::{IpVersion, Packet, RawAddr, raw_addr};
use crate::policy::Authorizer;
use crate::route::{PortSpec, RouteTable};
use crate::sync::{EXPORT_QUEUE, Export, Exporter};
use crate::time::Instant;
use arc_swap::ArcSwap;
use crossbeam_channel::Receiver;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// `[events] reject_rate` unless configured.
pub const DEFAULT_REJECT_RATE: u32 = 100;

/// `host_model` (SPEC §5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HostModel {
    /// A packet of a flow arriving on another port of its direction is reauthorized.
    #[default]
    Weak,
    /// Such a packet is dropped (`wrong_interface`).
    Strong,
}

/// What the core needs to know about the gateway.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// Ports, indexed by position (at most 255).
    pub ports: Vec<PortSpec>,
    /// Flow limits and lifetimes.
    pub flows: FlowConfig,
    /// Weak or strong.
    pub host_model: HostModel,
    /// Flow-table shards; `None` picks [`FlowTable::default_shards`].
    pub shards: Option<usize>,
}

/// State shared by every worker.
///
/// Lock legend, beside the flow table's ([`crate::flow::table`]): the policy
/// is an `ArcSwap` (no lock: a reload stores a new value, each worker loads
/// it once per batch); flow ids are an atomic counter handed out in blocks.
pub struct Gateway {
    pub(super) config: GatewayConfig,
    pub(super) table: FlowTable,
    pub(super) fragments: FragmentTable,
    pub(super) routes: RouteTable,
    pub(super) wildcards: Wildcards,
    pub(super) nat: Nat,
    broadcast: Vec<RawAddr>,
    pub(super) next_id: AtomicU64,
    /// This node's id in an HA pair (SPEC §15), 0 without one: flow ids
    /// come from [`crate::sync::id_range`] of it.
    pub(super) node: AtomicU32,
    /// The one policy of every worker (SPEC §14: a reload is atomic across
    /// workers). `ArcSwap` needs a sized value, hence the inner `Arc`.
    policy: ArcSwap<Arc<dyn Authorizer>>,
    workers: usize,
    /// The HA export queue (SPEC §15), set once before traffic flows.
    pub(super) sync: OnceLock<Exporter>,
    /// `[events] reject_rate`: answers to rejected packets per second.
    reject_rate: AtomicU32,
    /// Pending flows and their held packets (SPEC §10).
    pub(super) pend: super::pend::PendStore,
}

impl Gateway {
    /// Builds the shared state for `workers` workers deciding with `policy`:
    /// the flow table gets one group of shards per worker. Ports beyond 255
    /// are a configuration error caught by the config loader; here they are
    /// ignored.
    pub fn new(
        mut config: GatewayConfig,
        policy: Arc<dyn Authorizer>,
        workers: usize,
    ) -> Arc<Gateway> {
        config.ports.truncate(255);
        let workers = workers.max(1);
        let shards = config
            .shards
            .unwrap_or_else(|| FlowTable::default_shards(config.flows.max_flows));
        let broadcast = config
            .ports
            .iter()
            .flat_map(|p| p.broadcast.iter())
            .map(|a| raw_addr(*a).1)
            .collect();
        let table = FlowTable::new(config.flows.clone(), shards, workers);
        Arc::new(Gateway {
            nat: Nat::new(table.hasher().clone()),
            table,
            fragments: FragmentTable::new(
                config.flows.max_fragments,
                config.flows.fragment_timeout,
            ),
            routes: RouteTable::new(&config.ports),
            wildcards: Wildcards::default(),
            broadcast,
            next_id: AtomicU64::new(1),
            node: AtomicU32::new(0),
            policy: ArcSwap::from_pointee(policy),
            workers,
            pend: super::pend::PendStore::new(workers),
            config,
            sync: OnceLock::new(),
            reject_rate: AtomicU32::new(DEFAULT_REJECT_RATE),
        })
    }

    /// Makes this gateway node `node` of an HA pair (SPEC §15): the ids it
    /// hands out from now on are in the node's range. Set before a restore
    /// (SPEC §13), so the restored table's next id stays in the range
    /// whatever ids of the peer's flows it holds.
    pub fn set_sync_node(&self, node: u32) {
        self.node.store(node, Ordering::Relaxed);
        let range = crate::sync::id_range(node);
        if !range.contains(&self.next_id.load(Ordering::Relaxed)) {
            self.next_id.store(range.start, Ordering::Relaxed);
        }
    }

    /// Turns on replication as node `node` of an HA pair (SPEC §15),
    /// before any packet: flow ids continue from the node's own range
    /// ([`Gateway::set_sync_node`]) and the workers export their flows'
    /// changes into the returned queue. `None` if it was already on.
    pub fn enable_sync(&self, node: u32) -> Option<Receiver<Export>> {
        let (exporter, rx) = Exporter::new(EXPORT_QUEUE);
        self.sync.set(exporter).ok()?;
        if self.node.load(Ordering::Relaxed) != node {
            self.set_sync_node(node);
        }
        Some(rx)
    }

    /// The export queue's end, if replication is on.
    pub fn exporter(&self) -> Option<&Exporter> {
        self.sync.get()
    }

    /// The configuration.
    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }

    /// The number of workers the gateway was built for.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// The port names, by index.
    pub fn port_names(&self) -> Vec<String> {
        self.config.ports.iter().map(|p| p.name.clone()).collect()
    }

    /// The flow table.
    pub fn table(&self) -> &FlowTable {
        &self.table
    }

    /// The NAT state.
    pub fn nat(&self) -> &Nat {
        &self.nat
    }

    /// The fragment table.
    pub fn fragments(&self) -> &FragmentTable {
        &self.fragments
    }

    /// Number of flows.
    pub fn flows_active(&self) -> usize {
        self.table.len()
    }

    /// The current adaptive timeout factor.
    pub fn adaptive_factor(&self) -> f64 {
        self.table.adaptive_factor()
    }

    /// Answers to rejected packets sent per second at most (all workers).
    pub fn reject_rate(&self) -> u32 {
        self.reject_rate.load(Ordering::Relaxed)
    }

    /// Sets [`Gateway::reject_rate`].
    pub fn set_reject_rate(&self, rate: u32) {
        self.reject_rate.store(rate, Ordering::Relaxed);
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<dyn Authorizer> {
        Arc::clone(&self.policy.load())
    }

    /// Puts `policy` in force for every worker at once: each picks it up at
    /// the start of its next batch, and flows notice the change through the
    /// layers' generations on their next packet.
    pub fn set_policy(&self, policy: Arc<dyn Authorizer>) {
        self.policy.store(Arc::new(policy));
    }

    /// Snapshots every flow (one shard lock at a time), by id.
    pub fn flows(&self, now: Instant) -> Vec<FlowInfo> {
        let mut out = Vec::with_capacity(self.table.len());
        for i in 0..self.table.shard_count() {
            self.shard_flows(i, now, &FlowSelector::default(), &mut out);
        }
        out.sort_by_key(|f| f.id);
        out
    }

    /// Appends snapshots of the flows of shard `idx` that `selector` picks
    /// to `out` (the lock is held only while copying them).
    pub fn shard_flows(
        &self,
        idx: usize,
        now: Instant,
        selector: &FlowSelector,
        out: &mut Vec<FlowInfo>,
    ) {
        let factor = self.table.adaptive_factor();
        let shard = self.table.lock_shard(idx);
        for (slot, entry) in shard.iter() {
            if selector.matches_translated(entry, shard.translation(slot).map(|t| &t.key)) {
                out.push(shard.info(slot, now, &self.config.flows, factor));
            }
        }
    }

    /// Creates the engine of worker `worker` (of [`Gateway::workers`]).
    pub fn engine(self: &Arc<Self>, worker: usize) -> Engine {
        let policy = self.policy();
        Engine {
            gw: Arc::clone(self),
            local: Local {
                facts: super::PolicyFacts::of(&*policy),
                policy,
                group: worker % self.table.groups(),
                worker,
                stats: Stats::new(self.config.ports.len()),
                events: Vec::new(),
                notes: Vec::new(),
                rewrite: None,
                queued_discards: 0,
                ids: 0..0,
                note_drops: false,
                flow_events: true,
                last_drop: None,
                reply: None,
                reject_tokens: f64::from(self.reject_rate()),
                reject_refilled: Instant::ZERO,
                released: Vec::new(),
                completing: Vec::new(),
            },
            worker,
            sweep_budget: super::DEFAULT_SWEEP_BUDGET,
        }
    }

    pub(super) fn is_broadcast(&self, packet: &Packet) -> bool {
        packet.dst_is_limited_broadcast()
            || (packet.version == IpVersion::V4 && self.broadcast.contains(&packet.dst))
    }
}
