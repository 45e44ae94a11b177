//! The compiled policy as text, for `tunwall check`.

use super::Layer;
use super::compiled::Policy;
use super::filter::FilterAction;
use std::fmt::Write as _;

impl Policy {
    /// The compiled policy, readably: layers → sublayers → filters in
    /// evaluation order.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "policy: {} filters, {} sublayers",
            self.filters.len(),
            self.sublayers.len()
        );
        for &layer in Layer::ALL {
            let index = &self.layers[layer.index()];
            let default = match layer {
                Layer::FlowEstablished
                | Layer::EndpointClosure
                | Layer::ResourceAssignment
                | Layer::ResourceRelease => "callouts only".to_string(),
                Layer::BindRedirect | Layer::ConnectRedirect => "first match decides".to_string(),
                _ => format!("default {}", self.defaults.action(layer).as_str()),
            };
            let _ = writeln!(
                out,
                "\nlayer {} ({default}, generation {})",
                layer.as_str(),
                self.layer_generations[layer.index()]
            );
            if index.order.is_empty() {
                let _ = writeln!(out, "  (no filters)");
                continue;
            }
            let mut current = None;
            for (rank, &f) in index.order.iter().enumerate() {
                let filter = &self.filters[f];
                if current != Some(filter.sublayer) {
                    current = Some(filter.sublayer);
                    let sub = &self.sublayers[filter.sublayer];
                    let _ = writeln!(out, "  sublayer {} (weight {})", sub.name, sub.weight);
                }
                let action = match &filter.action {
                    FilterAction::Permit { hard: true } => "permit (hard)".to_string(),
                    FilterAction::Permit { hard: false } => "permit".to_string(),
                    FilterAction::Block { hard: true } => "block".to_string(),
                    FilterAction::Block { hard: false } => "block (soft)".to_string(),
                    FilterAction::Callout(c) => format!("callout {}", self.callouts[*c].name),
                    FilterAction::Redirect(_) => "redirect".to_string(),
                };
                let summary = &self.summaries[f];
                let _ = writeln!(
                    out,
                    "    {:>3}. {:<28} weight {:<6} {:<18} {}",
                    rank + 1,
                    filter.name,
                    filter.weight,
                    action,
                    if summary.is_empty() {
                        "(matches everything)"
                    } else {
                        summary
                    }
                );
            }
        }
        out
    }
}
