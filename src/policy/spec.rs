//! The validated policy, before compilation: what the configuration
//! produces and [`super::Policy::compile`] consumes.

use super::callout::CalloutParams;
use super::filter::{Conditions, RedirectTarget};
use super::{DefaultPolicy, FlowOptions, Layer};

/// A sublayer: a name and a weight (higher is evaluated first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sublayer {
    /// Name.
    pub name: String,
    /// Weight (WFP's UINT16).
    pub weight: u16,
}

/// The action of a filter as written in the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpecAction {
    /// `action = "permit"`.
    Permit {
        /// `hard = true`.
        hard: bool,
    },
    /// `action = "block"`.
    Block {
        /// Unless `hard = false`.
        hard: bool,
    },
    /// `action = "callout"`.
    Callout {
        /// `callout = "…"`.
        name: String,
        /// Its parameters.
        params: CalloutParams,
    },
    /// `action = "redirect"` (redirect layers).
    Redirect(RedirectTarget),
}

/// A validated filter, before compilation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilterSpec {
    /// Unique name.
    pub name: String,
    /// Layer.
    pub layer: Layer,
    /// Index into [`PolicySpec::sublayers`].
    pub sublayer: usize,
    /// Weight.
    pub weight: u64,
    /// Action.
    pub action: SpecAction,
    /// Conditions.
    pub conditions: Conditions,
    /// Classify options.
    pub options: FlowOptions,
    /// The conditions and options as written, for `tunwall check`.
    pub summary: String,
    /// A block that answers the blocked first packet (`reject = true`).
    pub reject: bool,
}

/// A validated policy, before compilation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicySpec {
    /// `[defaults]`.
    pub defaults: DefaultPolicy,
    /// Sublayers, the implicit `default` (weight 0) included.
    pub sublayers: Vec<Sublayer>,
    /// Filters in file order.
    pub filters: Vec<FilterSpec>,
    /// `[identities]`, which the filters' identity conditions name.
    pub identities: super::Identities,
}

impl Default for PolicySpec {
    fn default() -> Self {
        PolicySpec {
            defaults: DefaultPolicy::default(),
            sublayers: vec![Sublayer {
                name: "default".into(),
                weight: 0,
            }],
            filters: Vec::new(),
            identities: super::Identities::default(),
        }
    }
}
