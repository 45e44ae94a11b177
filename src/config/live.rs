//! What a reload may change: the policy only (SPEC §14).
//!
//! The running gateway keeps its devices, workers, flow table and event
//! sinks, and its compiled policy refers to ports by index: a file that
//! changes anything else is refused, naming what changed, and the running
//! configuration stays. `tunwall upgrade` or a restart applies such changes.

use super::{Config, PortConfig};

impl Config {
    /// Checks that `new` differs from `self` only in what a reload applies
    /// (`[defaults]`, `[identities]`, `[[sublayer]]`, `[[filter]]`). The
    /// error names every section or port that changed.
    pub fn reloadable_from(&self, new: &Config) -> Result<(), String> {
        let mut changes = port_changes(&self.ports, &new.ports);
        if self.gateway != new.gateway {
            changes.push("[gateway]".to_string());
        }
        if self.flows != new.flows {
            changes.push("[flows]".to_string());
        }
        if self.events != new.events {
            changes.push("[events]".to_string());
        }
        if self.sync != new.sync {
            changes.push("[sync]".to_string());
        }
        if self.metrics_listen != new.metrics_listen {
            changes.push("[metrics]".to_string());
        }
        // The identity watcher reads the interfaces it started with.
        if self.wireguard != new.wireguard {
            changes.push("[[wireguard]]".to_string());
        }
        if changes.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{}: a reload applies only [defaults], [identities], [[sublayer]] and [[filter]]; \
                 this file also changes {} (restart or `tunwall upgrade` to apply them); \
                 the running configuration and policy stay",
                new.path.display(),
                changes.join(", ")
            ))
        }
    }
}

impl Config {
    /// Checks that a new process running `new` can take over from one
    /// running `self` (SPEC §13): the ports (their queues move as they are)
    /// and the worker count and offload (the queues' number and framing)
    /// stay; everything else may change.
    pub fn upgradable_to(&self, new: &Config) -> Result<(), String> {
        let mut changes = port_changes(&self.ports, &new.ports);
        if self.gateway.workers.count() != new.gateway.workers.count() {
            changes.push("[gateway] workers".to_string());
        }
        if self.gateway.offload != new.gateway.offload {
            changes.push("[gateway] offload".to_string());
        }
        if self.gateway.state_file.is_none() && new.gateway.state_file.is_some() {
            // The devices tunwall created are not persistent: handed over as
            // they are, the new process's stop could not keep them.
            changes.push(
                "[gateway] state_file added (the devices it needs persistent were created without it)"
                    .to_string(),
            );
        }
        if changes.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{}: an upgrade keeps the ports, their queues and their framing; \
                 this file changes {} (stop and start to apply them); the running gateway stays",
                new.path.display(),
                changes.join(", ")
            ))
        }
    }
}

/// What changed in `[[port]]`: ports added, removed or reordered, and the
/// settings changed on a port that kept its name and place.
fn port_changes(old: &[PortConfig], new: &[PortConfig]) -> Vec<String> {
    let names = |ports: &[PortConfig]| ports.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
    let (old_names, new_names) = (names(old), names(new));
    let mut changes = Vec::new();
    for name in new_names.iter().filter(|n| !old_names.contains(n)) {
        changes.push(format!("port \"{name}\" added"));
    }
    for name in old_names.iter().filter(|n| !new_names.contains(n)) {
        changes.push(format!("port \"{name}\" removed"));
    }
    if changes.is_empty() && old_names != new_names {
        changes.push(format!(
            "the order of the ports ({} instead of {})",
            new_names.join(", "),
            old_names.join(", ")
        ));
    }
    for (o, n) in old.iter().zip(new).filter(|(o, n)| o.name == n.name) {
        let fields = [
            ("device", o.device != n.device),
            ("zone", o.zone != n.zone),
            ("netns", o.netns != n.netns),
            ("addresses", o.addresses != n.addresses),
            ("mtu", o.mtu != n.mtu),
            ("routes", o.routes != n.routes),
            ("kernel_routes", o.kernel_routes != n.kernel_routes),
        ];
        let changed: Vec<&str> = fields
            .iter()
            .filter(|(_, changed)| *changed)
            .map(|(f, _)| *f)
            .collect();
        if !changed.is_empty() {
            changes.push(format!("port \"{}\" ({})", o.name, changed.join(", ")));
        }
    }
    changes
}
