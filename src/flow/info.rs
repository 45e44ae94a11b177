//! A snapshot of one flow: what events, `flows` and callouts see of it.

use super::shard::Removed;
use super::{Direction, FlowClass, FlowConfig, FlowEntry, FlowKey, FlowState};
use crate::nat::Translation;
use crate::time::Instant;
use std::sync::Arc;
use std::time::Duration;

/// A translated flow's endpoints as seen on the outside port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TranslationInfo {
    /// The outside view (local = the public end).
    pub key: FlowKey,
    /// The redirect filter.
    pub filter: Arc<str>,
}

/// A snapshot of one flow.
#[derive(Clone, Debug, PartialEq)]
pub struct FlowInfo {
    /// Unique id.
    pub id: u64,
    /// The flow that caused this one (multicast state, loose source mapping).
    pub parent_id: Option<u64>,
    /// Identity, as seen on the inside port (SPEC §9).
    pub key: FlowKey,
    /// For a translated flow, its endpoints as seen on the outside port.
    pub translation: Option<TranslationInfo>,
    /// Direction of the creating packet.
    pub direction: Direction,
    /// Ordinary flow or multicast/broadcast state.
    pub class: FlowClass,
    /// TCP state or `Active`.
    pub state: FlowState,
    /// Indicated at `flow_established`.
    pub established: bool,
    /// The port the flow was (last) authorized on.
    pub arrival_port: u8,
    /// Creation time.
    pub created: Instant,
    /// Last refresh.
    pub last_seen: Instant,
    /// The idle timeout in force when the snapshot was taken.
    pub timeout: Duration,
    /// (packets, bytes) from the local host.
    pub out: (u64, u64),
    /// (packets, bytes) to the local host.
    pub inbound: (u64, u64),
    /// Policy generation of the flow's layer at its last authorization.
    pub policy_generation: u32,
    /// Replicated from the HA peer and not yet seen here (SPEC §15).
    pub synced: bool,
}

impl FlowInfo {
    /// Snapshots `entry` at `now` with adaptive `factor`.
    pub fn of(
        entry: &FlowEntry,
        parent_id: Option<u64>,
        translation: Option<&Translation>,
        now: Instant,
        config: &FlowConfig,
        factor: f64,
    ) -> FlowInfo {
        // The entry holds the creating packet's view: the inside one for
        // an outbound flow, the outside one for an inbound flow.
        let (key, translation) = match translation {
            None => (entry.key(), None),
            Some(t) => {
                let (inside, outside) = match entry.direction() {
                    Direction::Outbound => (entry.key(), t.key),
                    Direction::Inbound => (t.key, entry.key()),
                };
                let info = TranslationInfo {
                    key: outside,
                    filter: Arc::clone(&t.filter),
                };
                (inside, Some(info))
            }
        };
        FlowInfo {
            id: entry.id(),
            parent_id,
            key,
            translation,
            direction: entry.direction(),
            class: entry.class(),
            state: entry.state(),
            established: entry.established(),
            arrival_port: entry.arrival_port(),
            created: entry.created(),
            last_seen: entry.last_seen(now),
            timeout: entry.timeout(config, factor),
            out: entry.counters(Direction::Outbound),
            inbound: entry.counters(Direction::Inbound),
            policy_generation: entry.generation(),
            synced: entry.synced(),
        }
    }

    /// Snapshots a removed flow.
    pub fn of_removed(
        removed: &Removed,
        now: Instant,
        config: &FlowConfig,
        factor: f64,
    ) -> FlowInfo {
        FlowInfo::of(
            &removed.entry,
            removed.parent,
            removed.translation.as_ref(),
            now,
            config,
            factor,
        )
    }
}
