//! Compiling a policy spec into a [`Policy`]: filters in evaluation order
//! per layer, their indexes, callouts, and the layer generations carried
//! over from the previous policy.

use super::Layer;
use super::callout::CalloutRegistry;
use super::compiled::{CompiledCallout, Policy};
use super::filter::{Filter, FilterAction};
use super::layer_index::LayerIndex;
use super::spec::{PolicySpec, SpecAction};
use std::fmt::Write as _;
use std::sync::Arc;

/// Why a policy could not be compiled (only callout construction can fail
/// once the configuration is validated).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompileError {
    /// The filter at fault.
    pub filter: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for CompileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "filter \"{}\": {}", self.filter, self.message)
    }
}

impl std::error::Error for CompileError {}

impl Policy {
    /// Compiles `spec`. With `previous`, the generation of every layer whose
    /// definition did not change is kept, so its flows are not reauthorized.
    pub fn compile(
        spec: &PolicySpec,
        registry: &CalloutRegistry,
        previous: Option<&Policy>,
    ) -> Result<Policy, CompileError> {
        let mut callouts = Vec::new();
        let mut filters = Vec::with_capacity(spec.filters.len());
        for (position, f) in spec.filters.iter().enumerate() {
            let action = match &f.action {
                SpecAction::Permit { hard } => FilterAction::Permit { hard: *hard },
                SpecAction::Block { hard } => FilterAction::Block { hard: *hard },
                SpecAction::Redirect(target) => FilterAction::Redirect(*target),
                SpecAction::Callout { name, params } => {
                    let kept = previous.and_then(|p| {
                        p.callouts
                            .iter()
                            .find(|c| c.filter == f.name && c.name == *name && c.params == *params)
                            .map(|c| Arc::clone(&c.callout))
                    });
                    let callout = match kept {
                        Some(callout) => callout,
                        None => registry
                            .build(name, params)
                            .ok_or_else(|| CompileError {
                                filter: f.name.clone(),
                                message: format!("unknown callout \"{name}\""),
                            })?
                            .map_err(|message| CompileError {
                                filter: f.name.clone(),
                                message,
                            })?,
                    };
                    callouts.push(CompiledCallout {
                        filter: f.name.clone(),
                        name: name.clone(),
                        params: params.clone(),
                        callout,
                    });
                    FilterAction::Callout(callouts.len() - 1)
                }
            };
            filters.push(Filter {
                name: Arc::from(f.name.as_str()),
                layer: f.layer,
                sublayer: f.sublayer,
                weight: f.weight,
                position,
                action,
                conditions: f.conditions.clone(),
                options: f.options,
                reject: f.reject,
            });
        }

        let mut layers: Vec<LayerIndex> =
            (0..Layer::COUNT).map(|_| LayerIndex::default()).collect();
        let mut order: Vec<usize> = (0..filters.len()).collect();
        // Sublayers by weight (ties: definition order), filters by weight, then file order.
        order.sort_by(|&a, &b| {
            let (fa, fb) = (&filters[a], &filters[b]);
            let (sa, sb) = (&spec.sublayers[fa.sublayer], &spec.sublayers[fb.sublayer]);
            sb.weight
                .cmp(&sa.weight)
                .then(fa.sublayer.cmp(&fb.sublayer))
                .then(fb.weight.cmp(&fa.weight))
                .then(fa.position.cmp(&fb.position))
        });
        for index in order {
            let f = &filters[index];
            let layer = &mut layers[f.layer.index()];
            let rank = layer.order.len() as u32;
            layer.order.push(index);
            layer.sublayer_of_rank.push(f.sublayer);
            layer.add(rank, &f.conditions);
            let spec_f = &spec.filters[index];
            let sub = &spec.sublayers[f.sublayer];
            let _ = writeln!(
                layer.canonical,
                "{}|{}:{}|{}|{:?}|{:?}|{:?}|{}",
                f.name,
                sub.name,
                sub.weight,
                f.weight,
                spec_f.action,
                f.conditions,
                f.options,
                f.reject
            );
        }
        for &layer in Layer::ALL {
            let _ = write!(
                layers[layer.index()].canonical,
                "default {:?}",
                spec.defaults.action(layer)
            );
        }

        let mut layer_generations = [1u32; Layer::COUNT];
        let mut changed = Vec::new();
        if let Some(prev) = previous {
            for &layer in Layer::ALL {
                let i = layer.index();
                layer_generations[i] = if prev.layers[i].canonical == layers[i].canonical {
                    prev.layer_generations[i]
                } else {
                    changed.push(layer);
                    prev.layer_generations[i].wrapping_add(1)
                };
            }
        } else {
            changed.extend(Layer::ALL);
        }
        let mut reloaded_at = layer_generations;
        if let Some(prev) = previous {
            for &layer in Layer::ALL {
                if !changed.contains(&layer) {
                    reloaded_at[layer.index()] = prev.reloaded_at[layer.index()];
                }
            }
        }
        let counters = filters
            .iter()
            .map(|f| {
                previous
                    .and_then(|p| p.by_name.get(&f.name).map(|&i| Arc::clone(&p.counters[i])))
                    .unwrap_or_default()
            })
            .collect();
        let by_name = filters
            .iter()
            .enumerate()
            .map(|(i, f)| (Arc::clone(&f.name), i))
            .collect();
        Ok(Policy {
            counters,
            by_name,
            generation: previous.map_or(1, |p| p.generation + 1),
            layer_generations,
            reloaded_at,
            changed,
            defaults: spec.defaults,
            sublayers: spec.sublayers.clone(),
            summaries: spec.filters.iter().map(|f| f.summary.clone()).collect(),
            filters,
            callouts,
            layers,
        })
    }
}
