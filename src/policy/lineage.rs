//! A policy's generations across processes (SPEC §13): a new process that
//! carries flows over continues the old one's numbering, so a flow's
//! generation keeps its meaning. A layer whose definition is the same in
//! the new process keeps its generation (its flows ride on untouched);
//! a changed layer gets the next one (its flows are reauthorized on their
//! next packet, as after a reload).

use super::Layer;
use super::compiled::Policy;
use serde::{Deserialize, Serialize};

/// The generations of a policy and a fingerprint of each layer's definition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lineage {
    /// The policy generation (`stats`' `policy_generation`).
    pub generation: u64,
    /// Per layer, by name.
    pub layers: Vec<LayerLineage>,
}

/// One layer's generation and fingerprint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerLineage {
    /// The layer's name.
    pub layer: String,
    /// Its generation.
    pub generation: u32,
    /// FNV-1a of the layer's canonical definition: stable across builds,
    /// unlike the standard library's hasher.
    pub fingerprint: u64,
}

fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Policy {
    /// This policy's lineage.
    pub fn lineage(&self) -> Lineage {
        Lineage {
            generation: self.generation,
            layers: Layer::ALL
                .iter()
                .map(|&layer| LayerLineage {
                    layer: layer.as_str().to_string(),
                    generation: self.layer_generations[layer.index()],
                    fingerprint: fnv1a(&self.layers[layer.index()].canonical),
                })
                .collect(),
        }
    }

    /// Continues `previous` (the lineage of the process this one takes
    /// over from): each layer keeps its old generation if its definition
    /// is unchanged and takes the next one otherwise (then it is listed in
    /// [`Policy::changed_layers`]); the policy generation goes up by one if
    /// any layer changed. A layer `previous` does not know counts as changed.
    pub fn continue_lineage(&mut self, previous: &Lineage) {
        let mine = self.lineage();
        self.changed.clear();
        for (&layer, now) in Layer::ALL.iter().zip(&mine.layers) {
            let old = previous.layers.iter().find(|l| l.layer == now.layer);
            self.layer_generations[layer.index()] = match old {
                Some(old) if old.fingerprint == now.fingerprint => old.generation,
                Some(old) => {
                    self.changed.push(layer);
                    old.generation.wrapping_add(1)
                }
                None => {
                    self.changed.push(layer);
                    1
                }
            };
        }
        self.generation = previous.generation + u64::from(!self.changed.is_empty());
    }
}
