//! Validation of the policy sections: `[identities]`, `[defaults]`,
//! `[[sublayer]]` and `[[filter]]` (conditions in `conditions`), with every
//! cross-reference checked.

use super::schema::*;
use super::validate::{Loader, parse_rate, valid_name};
use super::{ConfigError, PortConfig, Result, conditions, redirect};
use crate::flow::MAX_TIMEOUT;
use crate::policy::{
    Action, CalloutParams, CalloutRegistry, DefaultPolicy, FilterSpec, FlowOptions, Identities,
    Layer, Pend, PolicySpec, SpecAction, Sublayer,
};
use std::collections::HashMap;
use std::ops::Range;
use std::time::Duration;
use toml::Spanned;

impl Loader<'_> {
    pub(super) fn policy(
        &self,
        raw: &Raw,
        ports: &[PortConfig],
        identities: Identities,
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
            filters.push(self.filter(f, &sublayers, &port_names, &identities, registry)?);
        }
        Ok(PolicySpec {
            defaults,
            sublayers,
            filters,
            identities,
        })
    }

    fn filter(
        &self,
        f: &RawFilter,
        sublayers: &[Sublayer],
        ports: &[&str],
        identities: &Identities,
        registry: &CalloutRegistry,
    ) -> Result<FilterSpec> {
        let name = f.name.get_ref().clone();
        let here =
            |span: Range<usize>, msg: String| self.error(span, format!("filter \"{name}\": {msg}"));
        let layer = Layer::from(*f.layer.get_ref());
        let callout_only = matches!(
            layer,
            Layer::FlowEstablished
                | Layer::EndpointClosure
                | Layer::ResourceAssignment
                | Layer::ResourceRelease
        );
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
        let pend_keys = [
            ("pend_timeout", f.pend_timeout.as_ref().map(|v| v.span())),
            (
                "timeout_action",
                f.timeout_action.as_ref().map(|v| v.span()),
            ),
        ];
        for (key, span) in pend_keys {
            if let Some(span) = span
                && (kind != FilterActionName::Callout
                    || !matches!(layer, Layer::AuthConnect | Layer::AuthRecvAccept))
            {
                return Err(here(
                    span,
                    format!(
                        "{key} belongs to a callout filter at auth_connect or auth_recv_accept (only there may a callout pend a flow)"
                    ),
                ));
            }
        }
        let action = match kind {
            FilterActionName::Permit | FilterActionName::Block | FilterActionName::Redirect => {
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
                if kind == FilterActionName::Redirect {
                    // Filled in below, once the conditions are known.
                    SpecAction::Redirect(Default::default())
                } else if kind == FilterActionName::Permit {
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
                let mut pend = Pend::default();
                pend.timeout = self
                    .duration(&f.pend_timeout, "pend_timeout", pend.timeout)
                    .map_err(|e| ConfigError {
                        message: format!("filter \"{name}\": {}", e.message),
                        ..e
                    })?;
                if let Some(a) = &f.timeout_action {
                    pend.timeout_action = (*a.get_ref()).into();
                }
                let params = CalloutParams { rate, pend };
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
        let reject = match &f.reject {
            Some(r) if *r.get_ref() => {
                if kind != FilterActionName::Block
                    || !matches!(layer, Layer::AuthConnect | Layer::AuthRecvAccept)
                {
                    return Err(here(
                        r.span(),
                        "reject = true answers a blocked packet: only block filters at auth_connect or auth_recv_accept take it".into(),
                    ));
                }
                true
            }
            _ => false,
        };
        let (conditions, mut summary) = conditions::parse(self, f, &name, ports, identities)?;
        if reject {
            summary = if summary.is_empty() {
                "reject".to_string()
            } else {
                format!("{summary} reject")
            };
        }
        let mut action = action;
        if let Some(target) = redirect::target(self, f, &name, layer, &conditions)? {
            action = SpecAction::Redirect(target);
            for (key, v) in [("to_address", &f.to_address), ("to_port", &f.to_port)] {
                if let Some(v) = v {
                    let sep = if summary.is_empty() { "" } else { ", " };
                    summary = format!("{summary}{sep}{key} = {}", v.get_ref());
                }
            }
        }
        Ok(FilterSpec {
            name,
            layer,
            sublayer,
            weight,
            action,
            conditions,
            options,
            summary,
            reject,
        })
    }
}
