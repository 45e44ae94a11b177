//! Callouts: named classify functions a filter can run (WFP callouts).
//!
//! A callout returns permit, block or continue at the auth and `icmp_error`
//! layers; its permit and block are soft, and a block against a hard permit
//! is a veto. At `flow_established` and `endpoint_closure` it is notified of
//! the flow. Built in: `log` and `rate_limit`; an embedder registers its own
//! in a [`CalloutRegistry`] before compiling the policy.

use super::{ClassifyRequest, Layer};
use crate::event::{Event, EventKind, FlowInfo};
use crate::packet::{IpVersion, RawAddr};
use crate::time::Instant;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a callout decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CalloutResult {
    /// Soft permit.
    Permit,
    /// Soft block (a veto against a hard permit).
    Block,
    /// No decision: evaluation continues with the next filter.
    Continue,
}

/// A classify function.
pub trait Callout: Send + Sync {
    /// Classifies at an auth layer or `icmp_error`. `filter` is the name of
    /// the filter that runs it.
    fn classify(
        &self,
        filter: &Arc<str>,
        request: &ClassifyRequest,
        events: &mut Vec<Event>,
    ) -> CalloutResult;

    /// Notified at `flow_established` or `endpoint_closure`.
    fn notify(
        &self,
        _filter: &Arc<str>,
        _layer: Layer,
        _flow: &FlowInfo,
        _now: Instant,
        _events: &mut Vec<Event>,
    ) {
    }
}

/// The per-filter parameters a callout is built with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CalloutParams {
    /// `rate = "N/s"`, as N.
    pub rate: Option<u32>,
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
    /// The built-ins: `log` and `rate_limit`.
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
        events: &mut Vec<Event>,
    ) -> CalloutResult {
        events.push(Event {
            at: request.now,
            kind: EventKind::CalloutLog {
                layer: request.layer,
                filter: Arc::clone(filter),
                flow: None,
                request: Some(*request),
            },
        });
        CalloutResult::Continue
    }

    fn notify(
        &self,
        filter: &Arc<str>,
        layer: Layer,
        flow: &FlowInfo,
        now: Instant,
        events: &mut Vec<Event>,
    ) {
        events.push(Event {
            at: now,
            kind: EventKind::CalloutLog {
                layer,
                filter: Arc::clone(filter),
                flow: Some(flow.clone()),
                request: None,
            },
        });
    }
}

/// Most remote addresses a `rate_limit` callout tracks at once.
const RATE_LIMIT_TRACKED: usize = 65_536;

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
}

/// `rate_limit`: a token bucket per remote address, refilled at `rate` per
/// second with a burst of `rate`; blocks when empty, continues otherwise.
pub struct RateLimit {
    rate: f64,
    buckets: Mutex<HashMap<(IpVersion, RawAddr), Bucket, ahash::RandomState>>,
}

impl RateLimit {
    /// A limiter of `rate` new flows per second per remote address.
    pub fn new(rate: u32) -> RateLimit {
        RateLimit {
            rate: f64::from(rate),
            buckets: Mutex::new(HashMap::with_hasher(ahash::RandomState::new())),
        }
    }

    /// Takes a token for `remote` at `now`; false when the bucket is empty.
    pub fn take(&self, version: IpVersion, remote: RawAddr, now: Instant) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= RATE_LIMIT_TRACKED && !buckets.contains_key(&(version, remote)) {
            // A bucket idle for a second is full again: forgetting it changes nothing.
            buckets.retain(|_, b| now.saturating_since(b.refilled) < Duration::from_secs(1));
            if buckets.len() >= RATE_LIMIT_TRACKED {
                // Too many distinct sources at once to track fairly: refuse
                // newcomers rather than let a spoofed flood bypass the limit.
                return false;
            }
        }
        let rate = self.rate;
        let bucket = buckets.entry((version, remote)).or_insert(Bucket {
            tokens: rate,
            refilled: now,
        });
        let elapsed = now.saturating_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(rate);
        bucket.refilled = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Callout for RateLimit {
    fn classify(
        &self,
        _filter: &Arc<str>,
        request: &ClassifyRequest,
        _events: &mut Vec<Event>,
    ) -> CalloutResult {
        if self.take(request.version, request.remote_addr, request.now) {
            CalloutResult::Continue
        } else {
            CalloutResult::Block
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_allows_a_burst_then_refills_per_second() {
        let limit = RateLimit::new(3);
        let a = crate::packet::raw_addr("198.18.2.1".parse().unwrap()).1;
        let b = crate::packet::raw_addr("198.18.2.2".parse().unwrap()).1;
        let t0 = Instant::ZERO;
        assert!(limit.take(IpVersion::V4, a, t0));
        assert!(limit.take(IpVersion::V4, a, t0));
        assert!(limit.take(IpVersion::V4, a, t0));
        assert!(!limit.take(IpVersion::V4, a, t0));
        // Buckets are per remote address.
        assert!(limit.take(IpVersion::V4, b, t0));
        // A third of a second refills one token at 3/s.
        assert!(!limit.take(IpVersion::V4, a, Instant::from_millis(300)));
        assert!(limit.take(IpVersion::V4, a, Instant::from_millis(340)));
        assert!(!limit.take(IpVersion::V4, a, Instant::from_millis(340)));
        // The burst never exceeds the rate.
        let later = Instant::from_secs(100);
        for _ in 0..3 {
            assert!(limit.take(IpVersion::V4, a, later));
        }
        assert!(!limit.take(IpVersion::V4, a, later));
    }
}
