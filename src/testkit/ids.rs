//! Comparing a gateway restored from a snapshot (SPEC §13) with the
//! original: flow ids of flows created after the snapshot differ between
//! the two (each process hands out its own), so they are renumbered by
//! first appearance before comparing.

use crate::event::{Event, EventKind, FlowInfo};
use std::collections::HashMap;

/// Flow ids above `carried` renumbered by first appearance: the two
/// processes hand out new ids from different blocks.
pub struct Ids {
    carried: u64,
    map: HashMap<u64, u64>,
}

impl Ids {
    /// Ids up to `carried` (the carried flows') stay as they are.
    pub fn new(carried: u64) -> Ids {
        Ids {
            carried,
            map: HashMap::new(),
        }
    }

    pub fn id(&mut self, id: u64) -> u64 {
        if id <= self.carried {
            return id;
        }
        let next = self.carried + 1 + self.map.len() as u64;
        *self.map.entry(id).or_insert(next)
    }

    pub fn flow(&mut self, f: &FlowInfo) -> FlowInfo {
        let mut f = f.clone();
        f.id = self.id(f.id);
        f.parent_id = f.parent_id.map(|p| self.id(p));
        f
    }

    /// The events of one step, normalized and in a stable order (a sweep
    /// visits slots in table order, which differs between the two tables).
    pub fn events(&mut self, events: &[Event]) -> Vec<String> {
        let mut out: Vec<String> = events
            .iter()
            .map(|e| {
                let mut e = e.clone();
                match &mut e.kind {
                    EventKind::FlowCreated(f) | EventKind::FlowEstablished(f) => *f = self.flow(f),
                    EventKind::FlowReauthorized { flow, .. }
                    | EventKind::FlowClosed { flow, .. } => *flow = self.flow(flow),
                    _ => {}
                }
                format!("{e:?}")
            })
            .collect();
        out.sort();
        out
    }
}
