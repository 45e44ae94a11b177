//! WFP filter arbitration across the sublayers of one layer (SPEC §4).
//!
//! Within a sublayer the first matching filter that returns permit or block
//! decides the sublayer's result (a callout may return continue). Every
//! sublayer is evaluated, highest weight first, even after a block. The
//! running result carries the write right:
//!
//! * a soft result may be overridden by a lower sublayer, a hard one may not;
//! * a filter permit is soft unless `hard = true`; a filter block is hard
//!   unless `hard = false`; a callout's permit and block are soft;
//! * block overrides a soft permit; permit overrides only a soft block;
//! * a callout block against a hard permit is a veto: the packet is blocked
//!   and the veto names both filters.

use super::Action;

/// One sublayer's result: what the deciding filter returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SublayerResult {
    /// Permit or block.
    pub action: Action,
    /// Whether the write right was cleared (hard).
    pub hard: bool,
    /// Whether a callout returned it.
    pub callout: bool,
    /// The deciding filter.
    pub filter: usize,
}

/// The outcome of arbitration at one layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The final action.
    pub action: Action,
    /// The filter whose action stands.
    pub filter: usize,
    /// For a veto: the hard permit that was overridden.
    pub vetoed: Option<usize>,
}

/// Folds sublayer results, highest sublayer first.
#[derive(Clone, Copy, Debug, Default)]
pub struct Arbiter {
    current: Option<(SublayerResult, Option<usize>)>,
}

impl Arbiter {
    /// Merges the result of the next (lower) sublayer.
    pub fn merge(&mut self, new: SublayerResult) {
        let Some((cur, vetoed)) = self.current else {
            self.current = Some((new, None));
            return;
        };
        if cur.hard {
            if cur.action == Action::Permit && new.action == Action::Block && new.callout {
                // A veto clears the write right for good: nothing below may permit again.
                self.current = Some((
                    SublayerResult {
                        action: Action::Block,
                        hard: true,
                        callout: true,
                        filter: new.filter,
                    },
                    Some(cur.filter),
                ));
            }
            return;
        }
        let replace = match (cur.action, new.action) {
            (Action::Permit, Action::Block) | (Action::Block, Action::Permit) => true,
            // The same action again only matters if it now becomes hard.
            _ => new.hard,
        };
        if replace {
            self.current = Some((new, vetoed));
        }
    }

    /// Whether the result can no longer change except by a veto. Callers
    /// still visit the remaining sublayers: their callouts may veto, and
    /// they see every classification (inspection, logging).
    pub fn is_hard(&self) -> bool {
        self.current.is_some_and(|(r, _)| r.hard)
    }

    /// Whether a callout vetoed a hard permit.
    pub fn vetoed(&self) -> bool {
        self.current.is_some_and(|(_, v)| v.is_some())
    }

    /// The current result, if any sublayer decided.
    pub fn current_action(&self) -> Option<(Action, bool)> {
        self.current.map(|(r, _)| (r.action, r.hard))
    }

    /// The final verdict; `None` when no sublayer decided (the layer default applies).
    pub fn finish(self) -> Option<Verdict> {
        self.current.map(|(r, vetoed)| Verdict {
            action: r.action,
            filter: r.filter,
            vetoed,
        })
    }
}

#[cfg(test)]
mod tests {
    //! The table of SPEC §4, written from the rules before the code.
    use super::*;
    use Action::{Block, Permit};

    /// A sublayer's result in table shorthand: (action, hard, callout, filter).
    fn r(action: Action, hard: bool, callout: bool, filter: usize) -> SublayerResult {
        SublayerResult {
            action,
            hard,
            callout,
            filter,
        }
    }

    fn run(results: &[SublayerResult]) -> Option<Verdict> {
        let mut arbiter = Arbiter::default();
        for result in results {
            arbiter.merge(*result);
        }
        arbiter.finish()
    }

    fn v(action: Action, filter: usize, vetoed: Option<usize>) -> Option<Verdict> {
        Some(Verdict {
            action,
            filter,
            vetoed,
        })
    }

    #[test]
    fn arbitration_table() {
        let soft_permit = |f| r(Permit, false, false, f);
        let hard_permit = |f| r(Permit, true, false, f);
        let hard_block = |f| r(Block, true, false, f);
        let soft_block = |f| r(Block, false, false, f);
        let callout_permit = |f| r(Permit, false, true, f);
        let callout_block = |f| r(Block, false, true, f);
        let table: &[(&str, Vec<SublayerResult>, Option<Verdict>)] = &[
            ("no sublayer decides: layer default", vec![], None),
            (
                "a single soft permit",
                vec![soft_permit(1)],
                v(Permit, 1, None),
            ),
            (
                "a single hard block",
                vec![hard_block(1)],
                v(Block, 1, None),
            ),
            (
                "block overrides a soft permit",
                vec![soft_permit(1), hard_block(2)],
                v(Block, 2, None),
            ),
            (
                "soft block overrides a soft permit",
                vec![soft_permit(1), soft_block(2)],
                v(Block, 2, None),
            ),
            (
                "a hard permit resists a filter block",
                vec![hard_permit(1), hard_block(2)],
                v(Permit, 1, None),
            ),
            (
                "a hard permit resists a soft block",
                vec![hard_permit(1), soft_block(2)],
                v(Permit, 1, None),
            ),
            (
                "permit overrides a soft block",
                vec![soft_block(1), soft_permit(2)],
                v(Permit, 2, None),
            ),
            (
                "permit does not override a hard block",
                vec![hard_block(1), soft_permit(2)],
                v(Block, 1, None),
            ),
            (
                "hard permit does not override a hard block",
                vec![hard_block(1), hard_permit(2)],
                v(Block, 1, None),
            ),
            (
                "evaluation continues after a block",
                vec![soft_block(1), hard_permit(2), hard_block(3)],
                v(Permit, 2, None),
            ),
            (
                "callout permit is soft",
                vec![callout_permit(1), hard_block(2)],
                v(Block, 2, None),
            ),
            (
                "callout block is soft",
                vec![callout_block(1), soft_permit(2)],
                v(Permit, 2, None),
            ),
            (
                "callout block over soft permit is no veto",
                vec![soft_permit(1), callout_block(2)],
                v(Block, 2, None),
            ),
            (
                "callout block against a hard permit is a veto",
                vec![hard_permit(1), callout_block(2)],
                v(Block, 2, Some(1)),
            ),
            (
                "a veto cannot be undone below",
                vec![hard_permit(1), callout_block(2), hard_permit(3)],
                v(Block, 2, Some(1)),
            ),
            (
                "callout block against a hard block changes nothing",
                vec![hard_block(1), callout_block(2)],
                v(Block, 1, None),
            ),
            (
                "a soft permit made hard by a lower sublayer",
                vec![soft_permit(1), hard_permit(2), hard_block(3)],
                v(Permit, 2, None),
            ),
            (
                "the first soft permit stands against another soft permit",
                vec![soft_permit(1), soft_permit(2)],
                v(Permit, 1, None),
            ),
            (
                "callout permit over a soft block",
                vec![soft_block(1), callout_permit(2)],
                v(Permit, 2, None),
            ),
        ];
        for (name, results, expected) in table {
            assert_eq!(run(results), *expected, "{name}");
        }
    }
}
