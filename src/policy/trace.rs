//! What `tunwall explain` sees of a classification: the compiled policy's
//! own evaluation reports each step to a [`Trace`]. The gateway passes
//! `()`, whose empty `step` compiles away.

use super::{Action, Layer};

/// A sublayer's or the running result: the action and whether it is hard.
pub type Standing = Option<(Action, bool)>;

/// One step of a classification, in evaluation order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TraceStep<'a> {
    /// The layer's index picked these filters (ranks in evaluation order)
    /// as the only ones that can match; the others were not looked at.
    Candidates {
        /// The layer.
        layer: Layer,
        /// Ranks of the candidates.
        ranks: &'a [u32],
    },
    /// A filter was not evaluated: its sublayer had already decided.
    SublayerDecided {
        /// The filter.
        filter: &'a str,
        /// Its sublayer.
        sublayer: &'a str,
    },
    /// A filter's condition did not match.
    Mismatch {
        /// The filter.
        filter: &'a str,
        /// Its sublayer.
        sublayer: &'a str,
        /// The first condition (as named in the file) that failed.
        condition: &'static str,
    },
    /// A filter's conditions matched; `result` is what it returned (`None`:
    /// a callout returned continue).
    Matched {
        /// The filter.
        filter: &'a str,
        /// Its sublayer.
        sublayer: &'a str,
        /// (action, hard, from a callout).
        result: Option<(Action, bool, bool)>,
    },
    /// At a redirect layer, the first filter whose conditions match decides:
    /// it translates the flow (`redirect`) or exempts it (`permit`).
    FirstMatch {
        /// The filter.
        filter: &'a str,
        /// Its sublayer.
        sublayer: &'a str,
        /// `redirect` (else `permit`).
        translates: bool,
    },
    /// A callout pended the flow (SPEC §10): its sublayer has no result.
    Pended {
        /// The filter.
        filter: &'a str,
        /// Its sublayer.
        sublayer: &'a str,
    },
    /// Arbitration merged a sublayer's result.
    Arbitrated {
        /// The sublayer's deciding filter.
        filter: &'a str,
        /// The running result before.
        before: Standing,
        /// The running result after.
        after: Standing,
        /// The merge was a callout veto of a hard permit.
        veto: bool,
    },
    /// No sublayer decided: the layer's default action applies.
    Default {
        /// The default.
        action: Action,
    },
}

/// Receives the steps of a classification.
pub trait Trace {
    /// One step.
    fn step(&mut self, step: TraceStep<'_>);
}

impl Trace for () {
    #[inline(always)]
    fn step(&mut self, _step: TraceStep<'_>) {}
}

impl Trace for Vec<String> {
    fn step(&mut self, step: TraceStep<'_>) {
        self.push(format!("{step:?}"));
    }
}
