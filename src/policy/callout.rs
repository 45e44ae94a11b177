//! Callouts: named classify functions a filter can run (WFP callouts).
//!
//! A callout returns permit, block or continue at the auth and `icmp_error`
//! layers; its permit and block are soft, and a block against a hard permit
//! is a veto. At `flow_established` and `endpoint_closure` it is notified of
//! the flow. Built in: `log` and `rate_limit`; an embedder registers its own
//! in a [`CalloutRegistry`] before compiling the policy. A callout may also
//! pend a new flow and have it completed later (`ask`, or an embedder's
//! callout calling [`crate::engine::Gateway::complete`]).

use super::rate_limit::RateLimit;
use super::{ClassifyRequest, Layer};
use super::{Pend, PolicyNote};
use crate::flow::FlowInfo;
use crate::time::Instant;
use std::collections::BTreeMap;
use std::sync::Arc;

/// What a callout decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CalloutResult {
    /// Soft permit.
    Permit,
    /// Soft block (a veto against a hard permit).
    Block,
    /// No decision: evaluation continues with the next filter.
    Continue,
    /// Decide later (SPEC §10): at an auth layer's initial authorization the
    /// flow waits, its packets held, until it is completed; anywhere else
    /// (a reauthorization, `icmp_error`) it counts as `Continue`.
    Pend,
}

/// A classify function.
pub trait Callout: Send + Sync {
    /// Classifies at an auth layer or `icmp_error`. `filter` is the name of
    /// the filter that runs it.
    fn classify(
        &self,
        filter: &Arc<str>,
        request: &ClassifyRequest,
        notes: &mut Vec<PolicyNote>,
    ) -> CalloutResult;

    /// Notified at `flow_established` or `endpoint_closure`.
    fn notify(
        &self,
        _filter: &Arc<str>,
        _layer: Layer,
        _flow: &FlowInfo,
        _now: Instant,
        _notes: &mut Vec<PolicyNote>,
    ) {
    }
}

/// The per-filter parameters a callout is built with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CalloutParams {
    /// `rate = "N/s"`, as N.
    pub rate: Option<u32>,
    /// `pend_timeout` and `timeout_action`: how a flow this filter's callout
    /// pends completes when nobody decides.
    pub pend: Pend,
}

/// Builds a callout instance for one filter, or says why its parameters are wrong.
pub type CalloutFactory =
    Arc<dyn Fn(&CalloutParams) -> Result<Arc<dyn Callout>, String> + Send + Sync>;

/// The callouts filters may name.
#[derive(Clone)]
pub struct CalloutRegistry {
    factories: BTreeMap<String, CalloutFactory>,
}

impl Default for CalloutRegistry {
    /// The built-ins: `log`, `rate_limit` and `ask`.
    fn default() -> Self {
        let mut registry = CalloutRegistry {
            factories: BTreeMap::new(),
        };
        registry.register("log", |params| {
            if params.rate.is_some() {
                return Err("the log callout takes no `rate`".into());
            }
            Ok(Arc::new(LogCallout) as Arc<dyn Callout>)
        });
        registry.register("rate_limit", |params| match params.rate {
            Some(rate) => Ok(Arc::new(RateLimit::new(rate)) as Arc<dyn Callout>),
            None => Err("the rate_limit callout needs `rate = \"N/s\"`".into()),
        });
        registry.register("ask", |params| {
            if params.rate.is_some() {
                return Err("the ask callout takes no `rate`".into());
            }
            Ok(Arc::new(AskCallout) as Arc<dyn Callout>)
        });
        registry
    }
}

impl CalloutRegistry {
    /// Registers (or replaces) a callout.
    pub fn register(
        &mut self,
        name: &str,
        factory: impl Fn(&CalloutParams) -> Result<Arc<dyn Callout>, String> + Send + Sync + 'static,
    ) {
        self.factories.insert(name.to_string(), Arc::new(factory));
    }

    /// Builds the callout `name` for a filter.
    pub fn build(
        &self,
        name: &str,
        params: &CalloutParams,
    ) -> Option<Result<Arc<dyn Callout>, String>> {
        self.factories.get(name).map(|f| f(params))
    }

    /// The registered names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.factories.keys().map(String::as_str)
    }
}

/// `log`: emits a `callout_log` event and continues.
pub struct LogCallout;

impl Callout for LogCallout {
    fn classify(
        &self,
        filter: &Arc<str>,
        request: &ClassifyRequest,
        notes: &mut Vec<PolicyNote>,
    ) -> CalloutResult {
        notes.push(PolicyNote::CalloutLog {
            at: request.now,
            layer: request.layer,
            filter: Arc::clone(filter),
            flow: None,
            request: Some(*request),
        });
        CalloutResult::Continue
    }

    fn notify(
        &self,
        filter: &Arc<str>,
        layer: Layer,
        flow: &FlowInfo,
        now: Instant,
        notes: &mut Vec<PolicyNote>,
    ) {
        notes.push(PolicyNote::CalloutLog {
            at: now,
            layer,
            filter: Arc::clone(filter),
            flow: Some(flow.clone()),
            request: None,
        });
    }
}

/// `ask`: pends every initial authorization it sees; `tunwall decide` (or
/// the filter's `pend_timeout`) completes the flow.
pub struct AskCallout;

impl Callout for AskCallout {
    fn classify(
        &self,
        _filter: &Arc<str>,
        _request: &ClassifyRequest,
        _notes: &mut Vec<PolicyNote>,
    ) -> CalloutResult {
        CalloutResult::Pend
    }
}
