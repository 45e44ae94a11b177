//! Validation of `[identities]` and `[[wireguard]]` (SPEC §6, §11).

use super::schema::RawWireguard;
use super::validate::{Loader, valid_name};
use super::{PortConfig, Result, WireguardConfig, conditions};
use crate::policy::{AddrSet, Identities, IdentitySource, PublicKey, parse_key};
use std::collections::BTreeMap;
use std::time::Duration;
use toml::{Spanned, Value};

/// The shortest refresh interval: a shorter one would keep a core busy
/// asking the interface.
const MIN_REFRESH: Duration = Duration::from_millis(10);

impl Loader<'_> {
    pub(super) fn wireguard(
        &self,
        raw: &[RawWireguard],
        ports: &[PortConfig],
    ) -> Result<Vec<WireguardConfig>> {
        let mut out: Vec<WireguardConfig> = Vec::new();
        for w in raw {
            let interface = w.interface.get_ref();
            if interface.is_empty()
                || interface.len() > 15
                || !interface
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                || interface == "."
                || interface == ".."
            {
                return Err(self.error(
                    w.interface.span(),
                    format!("wireguard: \"{interface}\" is not a valid interface name (1 to 15 letters, digits, '-', '_' or '.')"),
                ));
            }
            // wireguard-go's sockets share one directory whatever the namespace.
            if out.iter().any(|o| o.interface == *interface) {
                return Err(self.error(
                    w.interface.span(),
                    format!("wireguard: interface \"{interface}\" appears twice"),
                ));
            }
            if let Some(ns) = &w.netns
                && !valid_name(ns.get_ref())
            {
                return Err(self.error(
                    ns.span(),
                    format!(
                        "wireguard: netns \"{}\" must be letters, digits, '-' or '_'",
                        ns.get_ref()
                    ),
                ));
            }
            let refresh = self.duration(&w.refresh, "refresh", Duration::from_secs(5))?;
            if refresh < MIN_REFRESH
                && let Some(r) = &w.refresh
            {
                return Err(self.error(r.span(), "refresh must be at least 10ms"));
            }
            let port = match &w.port {
                None => None,
                Some(p) => Some(
                    ports
                        .iter()
                        .position(|x| x.name == *p.get_ref())
                        .ok_or_else(|| {
                            self.error(
                                p.span(),
                                format!(
                                    "wireguard: unknown port \"{}\" (ports: {})",
                                    p.get_ref(),
                                    ports
                                        .iter()
                                        .map(|x| x.name.as_str())
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                ),
                            )
                        })? as u8,
                ),
            };
            out.push(WireguardConfig {
                interface: interface.clone(),
                netns: w.netns.as_ref().map(|n| n.get_ref().clone()),
                refresh,
                port,
            });
        }
        Ok(out)
    }

    pub(super) fn identities(
        &self,
        raw: &BTreeMap<Spanned<String>, Spanned<Value>>,
        wireguard: &[WireguardConfig],
    ) -> Result<Identities> {
        let mut out = Identities {
            ports: wireguard
                .iter()
                .map(|w| (w.interface.clone(), w.port))
                .collect(),
            ..Identities::default()
        };
        for (name, value) in raw {
            let at = |needle: &str, msg: String| {
                self.error(
                    self.within(value.span(), needle),
                    format!("identity \"{}\": {msg}", name.get_ref()),
                )
            };
            let here = |msg: String| at("", msg);
            let source = match value.get_ref() {
                Value::Array(members) => {
                    let mut set = AddrSet::default();
                    for m in members {
                        let s = m.as_str().ok_or_else(|| {
                            here(format!(
                                "expected an address as a string, found {}",
                                m.type_str()
                            ))
                        })?;
                        conditions::add_address(self, &mut set, s)
                            .map_err(|msg| at(&format!("\"{s}\""), msg))?;
                    }
                    if set.is_empty() {
                        return Err(self.error(
                            name.span(),
                            format!("identity \"{}\" is empty", name.get_ref()),
                        ));
                    }
                    IdentitySource::Addresses(set)
                }
                Value::Table(t) => {
                    wireguard_identity(t, wireguard).map_err(|(needle, msg)| at(&needle, msg))?
                }
                other => {
                    return Err(here(format!(
                        "expected a list of addresses or {{ wireguard = \"IFACE\", peer = \"KEY\" }}, found {}",
                        other.type_str()
                    )));
                }
            };
            out.defs.insert(name.get_ref().clone(), source);
        }
        Ok(out)
    }
}

fn wireguard_identity(
    t: &toml::Table,
    wireguard: &[WireguardConfig],
) -> std::result::Result<IdentitySource, (String, String)> {
    if let Some(k) = t
        .keys()
        .find(|k| !["wireguard", "peer", "peers"].contains(&k.as_str()))
    {
        return Err((
            k.clone(),
            format!("unknown key \"{k}\" (expected wireguard and peer or peers)"),
        ));
    }
    let interface = match t.get("wireguard") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err((
                "wireguard".into(),
                format!(
                    "wireguard: expected an interface name, found {}",
                    other.type_str()
                ),
            ));
        }
        None => return Err((String::new(), "missing wireguard = \"IFACE\"".into())),
    };
    if !wireguard.iter().any(|w| w.interface == interface) {
        return Err((
            format!("\"{interface}\""),
            format!(
                "unknown wireguard interface \"{interface}\" (add a [[wireguard]] section with interface = \"{interface}\")"
            ),
        ));
    }
    let written: Vec<&Value> = match (t.get("peer"), t.get("peers")) {
        (Some(_), Some(_)) => {
            return Err(("peers".into(), "give peer or peers, not both".into()));
        }
        (Some(one), None) => vec![one],
        (None, Some(Value::Array(list))) => list.iter().collect(),
        (None, Some(other)) => {
            return Err((
                "peers".into(),
                format!("peers: expected a list of keys, found {}", other.type_str()),
            ));
        }
        (None, None) => {
            return Err((
                String::new(),
                "missing peer = \"KEY\" or peers = [...]".into(),
            ));
        }
    };
    if written.is_empty() {
        return Err((
            "peers".into(),
            "an empty list of peers matches nothing".into(),
        ));
    }
    let mut peers: Vec<PublicKey> = Vec::new();
    for v in written {
        let key = v.as_str().and_then(parse_key).ok_or_else(|| {
            (
                v.as_str().map_or_else(String::new, |s| format!("\"{s}\"")),
                format!("{v} is not a WireGuard public key (44 characters of base64)"),
            )
        })?;
        if !peers.contains(&key) {
            peers.push(key);
        }
    }
    Ok(IdentitySource::WireGuard { interface, peers })
}
