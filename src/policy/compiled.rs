//! The compiled policy: immutable, indexed, swapped whole on reload.
//!
//! Each layer keeps its filters in evaluation order (sublayers by weight,
//! highest first; filters by weight, highest first, then file order) and an
//! index (`policy::layer_index`) that, for a request, yields the few filters
//! that can match it. The candidates are then evaluated in order with WFP
//! arbitration, which gives exactly the result of evaluating every filter in
//! order (a property test checks this).

use super::PolicyNote;
use super::arbitration::{Arbiter, SublayerResult};
use super::callout::{Callout, CalloutParams, CalloutResult};
use super::counters::{FilterCounters, FilterCounts};
use super::filter::{Filter, FilterAction, ValueSet};
use super::layer_index::LayerIndex;
use super::spec::Sublayer;
use super::trace::{Trace, TraceStep};
use super::{
    Action, Authorizer, ClassifyFlags, ClassifyRequest, Decision, DefaultPolicy, FlowOptions,
    Layer, Pend, Redirect, RedirectAddress,
};
use crate::flow::FlowInfo;
use crate::packet::IpVersion;
use crate::time::Instant;
use std::collections::HashMap;
use std::sync::Arc;

/// The compiled policy.
pub struct Policy {
    pub(super) generation: u64,
    pub(super) layer_generations: [u32; Layer::COUNT],
    /// Per layer, the generation of its last change by a reload (the later
    /// ones came from identities changing).
    pub(super) reloaded_at: [u32; Layer::COUNT],
    pub(super) changed: Vec<Layer>,
    pub(super) defaults: DefaultPolicy,
    pub(super) sublayers: Vec<Sublayer>,
    pub(super) filters: Vec<Filter>,
    pub(super) summaries: Vec<String>,
    pub(super) callouts: Vec<CompiledCallout>,
    pub(super) layers: Vec<LayerIndex>,
    /// Per filter, by index: shared with the previous policy for a filter
    /// that kept its name.
    pub(super) counters: Vec<Arc<FilterCounters>>,
    pub(super) by_name: HashMap<Arc<str>, usize, ahash::RandomState>,
}

/// A callout instance and what it was built for: a reload reuses the
/// instance of a filter whose name, callout and parameters are unchanged,
/// so its state (a rate limit's buckets) carries over.
pub(super) struct CompiledCallout {
    pub(super) filter: String,
    pub(super) name: String,
    pub(super) params: CalloutParams,
    pub(super) callout: Arc<dyn Callout>,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("generation", &self.generation)
            .field("layer_generations", &self.layer_generations)
            .field("filters", &self.filters.len())
            .finish()
    }
}

impl Policy {
    /// The policy generation: 1 for the first policy, +1 per reload.
    pub fn policy_generation(&self) -> u64 {
        self.generation
    }

    /// Marks this policy, compiled against `previous`, as changed only by
    /// identities' addresses: its flows are reauthorized with the trigger
    /// `identity_change` (unless a reload changed their layer meanwhile).
    pub fn identity_change(mut self, previous: &Policy) -> Policy {
        for &layer in &self.changed {
            self.reloaded_at[layer.index()] = previous.reloaded_at[layer.index()];
        }
        self
    }

    /// The layers whose definition changed relative to the previous policy.
    pub fn changed_layers(&self) -> &[Layer] {
        &self.changed
    }

    /// The number of filters.
    pub fn filter_count(&self) -> usize {
        self.filters.len()
    }

    /// Classifies with arbitration over the candidates from the index,
    /// reporting every step to `trace`.
    fn arbitrate<T: Trace>(
        &self,
        request: &ClassifyRequest,
        ranks: &[u32],
        notes: &mut Vec<PolicyNote>,
        trace: &mut T,
    ) -> Decision {
        let layer = &self.layers[request.layer.index()];
        trace.step(TraceStep::Candidates {
            layer: request.layer,
            ranks,
        });
        let mut arbiter = Arbiter::default();
        let mut decided_sublayer = None;
        // SPEC §10: only an auth layer's initial authorization may pend.
        let may_pend = matches!(request.layer, Layer::AuthConnect | Layer::AuthRecvAccept)
            && !request.flags.contains(ClassifyFlags::REAUTHORIZE);
        let mut pended: Option<(usize, Pend)> = None;
        for &rank in ranks {
            let rank = rank as usize;
            let sublayer = layer.sublayer_of_rank[rank];
            let index = layer.order[rank];
            let filter = &self.filters[index];
            let sublayer_name = &self.sublayers[sublayer].name;
            if decided_sublayer == Some(sublayer) {
                trace.step(TraceStep::SublayerDecided {
                    filter: &filter.name,
                    sublayer: sublayer_name,
                });
                continue;
            }
            if let Some(condition) = filter.conditions.mismatch(request) {
                trace.step(TraceStep::Mismatch {
                    filter: &filter.name,
                    sublayer: sublayer_name,
                    condition,
                });
                continue;
            }
            self.counters[index].matched();
            let result = match filter.action {
                FilterAction::Permit { hard } => Some((Action::Permit, hard, false)),
                FilterAction::Block { hard } => Some((Action::Block, hard, false)),
                FilterAction::Callout(c) => {
                    match self.callouts[c]
                        .callout
                        .classify(&filter.name, request, notes)
                    {
                        CalloutResult::Permit => Some((Action::Permit, false, true)),
                        CalloutResult::Block => Some((Action::Block, false, true)),
                        CalloutResult::Continue => None,
                        // The pending callout ends its sublayer without a
                        // result; the other sublayers arbitrate as usual.
                        CalloutResult::Pend if may_pend => {
                            pended.get_or_insert((index, self.callouts[c].params.pend));
                            decided_sublayer = Some(sublayer);
                            trace.step(TraceStep::Pended {
                                filter: &filter.name,
                                sublayer: sublayer_name,
                            });
                            continue;
                        }
                        // At a reauthorization the pending callout returns
                        // the flow's completed decision, or continues.
                        CalloutResult::Pend => request.completed.map(|a| (a, false, true)),
                    }
                }
                // Validation keeps redirects at the redirect layers.
                FilterAction::Redirect(_) => None,
            };
            trace.step(TraceStep::Matched {
                filter: &filter.name,
                sublayer: sublayer_name,
                result,
            });
            if let Some((action, hard, callout)) = result {
                let before = arbiter.current_action();
                let vetoed_before = arbiter.vetoed();
                arbiter.merge(SublayerResult {
                    action,
                    hard,
                    callout,
                    filter: index,
                });
                trace.step(TraceStep::Arbitrated {
                    filter: &filter.name,
                    before,
                    after: arbiter.current_action(),
                    veto: !vetoed_before && arbiter.vetoed(),
                });
                decided_sublayer = Some(sublayer);
            }
        }
        // A hard block decided elsewhere is final: nothing to wait for.
        if let Some((index, pend)) = pended
            && arbiter.current_action() != Some((Action::Block, true))
        {
            self.counters[index].decided();
            return Decision {
                action: Action::Block,
                filter: Some(Arc::clone(&self.filters[index].name)),
                options: FlowOptions::default(),
                vetoed: false,
                reject: false,
                pend: Some(pend),
            };
        }
        let Some(verdict) = arbiter.finish() else {
            let action = self.defaults.action(request.layer);
            trace.step(TraceStep::Default { action });
            return Decision::default_action(action);
        };
        self.counters[verdict.filter].decided();
        let filter = &self.filters[verdict.filter];
        if let Some(overridden) = verdict.vetoed {
            notes.push(PolicyNote::Veto {
                at: request.now,
                layer: request.layer,
                filter: Arc::clone(&filter.name),
                overridden_filter: Arc::clone(&self.filters[overridden].name),
            });
        }
        let options = match (verdict.action, &filter.action) {
            (Action::Permit, FilterAction::Permit { .. }) => filter.options,
            _ => FlowOptions::default(),
        };
        Decision {
            action: verdict.action,
            filter: Some(Arc::clone(&filter.name)),
            options,
            vetoed: verdict.vetoed.is_some(),
            reject: verdict.action == Action::Block && filter.reject,
            pend: None,
        }
    }

    /// Classifies `request` exactly as the gateway does (the index, then
    /// arbitration), reporting each step to `trace` (`tunwall explain`).
    pub fn classify_traced<T: Trace>(
        &self,
        request: &ClassifyRequest,
        notes: &mut Vec<PolicyNote>,
        trace: &mut T,
    ) -> Decision {
        let layer = &self.layers[request.layer.index()];
        if layer.order.is_empty() {
            let action = self.defaults.action(request.layer);
            trace.step(TraceStep::Candidates {
                layer: request.layer,
                ranks: &[],
            });
            trace.step(TraceStep::Default { action });
            return Decision::default_action(action);
        }
        let mut candidates = Vec::with_capacity(16);
        layer.candidates(request, &mut candidates);
        self.arbitrate(request, &candidates, notes, trace)
    }

    /// Classifies `request` at a redirect layer as the gateway does (the
    /// index, then the first matching filter in order decides), reporting
    /// each step to `trace`: the redirect it asks for, or `None` (no
    /// filter matched, or a permit exempts the flow).
    pub fn redirect_traced<T: Trace>(
        &self,
        request: &ClassifyRequest,
        trace: &mut T,
    ) -> Option<Redirect> {
        let layer = &self.layers[request.layer.index()];
        if layer.order.is_empty() {
            trace.step(TraceStep::Candidates {
                layer: request.layer,
                ranks: &[],
            });
            return None;
        }
        let mut candidates = Vec::with_capacity(16);
        layer.candidates(request, &mut candidates);
        self.first_match(request, &candidates, trace)
    }

    /// The reference redirect classification: every filter of the layer in
    /// order, no index. The indexed path must always agree with it.
    pub fn redirect_unindexed(&self, request: &ClassifyRequest) -> Option<Redirect> {
        let n = self.layers[request.layer.index()].order.len() as u32;
        let ranks: Vec<u32> = (0..n).collect();
        self.first_match(request, &ranks, &mut ())
    }

    /// The first of the filters at `ranks` that matches decides a redirect
    /// layer.
    fn first_match<T: Trace>(
        &self,
        request: &ClassifyRequest,
        ranks: &[u32],
        trace: &mut T,
    ) -> Option<Redirect> {
        let layer = &self.layers[request.layer.index()];
        trace.step(TraceStep::Candidates {
            layer: request.layer,
            ranks,
        });
        for &rank in ranks {
            let index = layer.order[rank as usize];
            let filter = &self.filters[index];
            let sublayer = &self.sublayers[filter.sublayer].name;
            if let Some(condition) = filter.conditions.mismatch(request) {
                trace.step(TraceStep::Mismatch {
                    filter: &filter.name,
                    sublayer,
                    condition,
                });
                continue;
            }
            trace.step(TraceStep::FirstMatch {
                filter: &filter.name,
                sublayer,
                translates: matches!(filter.action, FilterAction::Redirect(_)),
            });
            // The first match decides the layer, a redirect or an exemption.
            self.counters[index].matched();
            self.counters[index].decided();
            let FilterAction::Redirect(target) = filter.action else {
                // A permit exempts the flow from translation.
                return None;
            };
            let address = match (target.v4, target.v6) {
                (None, None) => RedirectAddress::Keep,
                (v4, v6) => match request.version {
                    IpVersion::V4 => v4.map_or(RedirectAddress::Missing, RedirectAddress::To),
                    IpVersion::V6 => v6.map_or(RedirectAddress::Missing, RedirectAddress::To),
                },
            };
            let (condition, port) = match request.layer {
                Layer::ConnectRedirect => (&filter.conditions.remote_port, request.remote_port),
                _ => (&filter.conditions.local_port, request.local_port),
            };
            return Some(Redirect {
                filter: Arc::clone(&filter.name),
                address,
                to_port: target.port,
                port_base: range_base(condition, port),
            });
        }
        None
    }

    /// The filters of `layer` in evaluation order: (name, sublayer name).
    pub fn layer_filters(&self, layer: Layer) -> Vec<(&str, &str)> {
        self.layers[layer.index()]
            .order
            .iter()
            .map(|&i| {
                let f = &self.filters[i];
                (&*f.name, self.sublayers[f.sublayer].name.as_str())
            })
            .collect()
    }

    /// Every filter's counters: (name, layer, counts), in file order.
    pub fn filter_counts(&self) -> Vec<(&str, Layer, FilterCounts)> {
        self.filters
            .iter()
            .zip(&self.counters)
            .map(|(f, c)| (&*f.name, f.layer, c.get()))
            .collect()
    }

    /// The reference classification: every filter of the layer in order, no
    /// index. The indexed path must always agree with it.
    pub fn classify_unindexed(
        &self,
        request: &ClassifyRequest,
        notes: &mut Vec<PolicyNote>,
    ) -> Decision {
        let n = self.layers[request.layer.index()].order.len() as u32;
        let ranks: Vec<u32> = (0..n).collect();
        self.arbitrate(request, &ranks, notes, &mut ())
    }
}

/// The first port of the range of `set` that holds `port`, if that range
/// is wider than one port.
fn range_base(set: &Option<ValueSet>, port: u16) -> Option<u16> {
    set.as_ref()?
        .ranges
        .iter()
        .find(|&&(lo, hi)| lo <= port && port <= hi && lo < hi)
        .map(|&(lo, _)| lo)
}

impl Authorizer for Policy {
    fn generation(&self, layer: Layer) -> u32 {
        self.layer_generations[layer.index()]
    }

    fn has_redirects(&self) -> bool {
        [Layer::BindRedirect, Layer::ConnectRedirect]
            .iter()
            .any(|l| !self.layers[l.index()].order.is_empty())
    }

    fn redirect(&self, request: &ClassifyRequest) -> Option<Redirect> {
        self.redirect_traced(request, &mut ())
    }

    fn identity_change_only(&self, layer: Layer, since: u32) -> bool {
        // Wrapping order, as the engine compares generations.
        let reloaded = self.reloaded_at[layer.index()];
        (since.wrapping_sub(reloaded) as i32) >= 0
    }

    fn classify(&self, request: &ClassifyRequest, notes: &mut Vec<PolicyNote>) -> Decision {
        self.classify_traced(request, notes, &mut ())
    }

    fn flow_created(&self, filter: &Arc<str>) {
        if let Some(&i) = self.by_name.get(filter) {
            self.counters[i].created();
        }
    }

    fn indicates(&self, layer: Layer) -> bool {
        !self.layers[layer.index()].order.is_empty()
    }

    fn may_pend(&self, layer: Layer) -> bool {
        self.layers[layer.index()]
            .order
            .iter()
            .any(|&f| matches!(self.filters[f].action, FilterAction::Callout(_)))
    }

    fn indicate(&self, layer: Layer, flow: &FlowInfo, now: Instant, notes: &mut Vec<PolicyNote>) {
        let index = &self.layers[layer.index()];
        if index.order.is_empty() {
            return;
        }
        let mut request = ClassifyRequest::for_flow(layer, &flow.key, now);
        request.arrival_port = Some(flow.arrival_port);
        request.source = Some(super::SourceArrival {
            local: flow.direction == crate::flow::Direction::Outbound,
            port: flow.arrival_port,
        });
        let mut candidates = Vec::new();
        index.candidates(&request, &mut candidates);
        for rank in candidates {
            let filter = &self.filters[index.order[rank as usize]];
            if let FilterAction::Callout(c) = filter.action
                && filter.conditions.matches(&request)
            {
                self.callouts[c]
                    .callout
                    .notify(&filter.name, layer, flow, now, notes);
            }
        }
    }
}
