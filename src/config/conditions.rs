//! Filter conditions as written in TOML → [`Conditions`].

use super::schema::{LayerName, RawFilter};
use super::{ConfigError, Loader, parse_prefix};
use crate::packet::IpVersion;
use crate::policy::{
    Action, AddrSet, ArrivalPort, ClassifyFlags, Conditions, Identities, IdentityCond, ValueSet,
};
use toml::{Spanned, Value};

type Result<T> = std::result::Result<T, ConfigError>;

/// The elements of a value that may be one item or a list of items.
fn items(v: &Value) -> Vec<&Value> {
    match v {
        Value::Array(a) => a.iter().collect(),
        other => vec![other],
    }
}

/// Adds an address, a CIDR prefix or an `a-b` range to `set`.
pub(super) fn add_address(
    _loader: &Loader<'_>,
    set: &mut AddrSet,
    s: &str,
) -> std::result::Result<(), String> {
    if let Some((lo, hi)) = s.split_once('-') {
        let lo: std::net::IpAddr = lo
            .trim()
            .parse()
            .map_err(|_| format!("\"{s}\": \"{}\" is not an IP address", lo.trim()))?;
        let hi: std::net::IpAddr = hi
            .trim()
            .parse()
            .map_err(|_| format!("\"{s}\": \"{}\" is not an IP address", hi.trim()))?;
        if lo.is_ipv4() != hi.is_ipv4() {
            return Err(format!("\"{s}\": a range cannot mix IPv4 and IPv6"));
        }
        if lo > hi {
            return Err(format!("\"{s}\": the range ends before it starts"));
        }
        set.add_range(lo, hi);
        return Ok(());
    }
    let net =
        parse_prefix(s).ok_or_else(|| format!("\"{s}\" is not an IP address, prefix or range"))?;
    set.add_net(net.trunc());
    Ok(())
}

/// Parses numbers and `a-b` ranges (as integers or strings) up to `max`.
fn values(v: &Value, max: u16, what: &str) -> std::result::Result<ValueSet, String> {
    let mut set = ValueSet::default();
    for item in items(v) {
        let range = match item {
            Value::Integer(n) => {
                let n = u16::try_from(*n)
                    .ok()
                    .filter(|n| *n <= max)
                    .ok_or_else(|| format!("{n} is not a valid {what} (0-{max})"))?;
                (n, n)
            }
            Value::String(s) => {
                let parse = |t: &str| {
                    t.trim()
                        .parse::<u16>()
                        .ok()
                        .filter(|n| *n <= max)
                        .ok_or_else(|| format!("\"{s}\" is not a valid {what} or range (0-{max})"))
                };
                match s.split_once('-') {
                    Some((lo, hi)) => {
                        let (lo, hi) = (parse(lo)?, parse(hi)?);
                        if lo > hi {
                            return Err(format!("\"{s}\": the range ends before it starts"));
                        }
                        (lo, hi)
                    }
                    None => {
                        let n = parse(s)?;
                        (n, n)
                    }
                }
            }
            other => {
                return Err(format!(
                    "expected a {what} (number or \"a-b\"), found {}",
                    other.type_str()
                ));
            }
        };
        set.ranges.push(range);
    }
    if set.ranges.is_empty() {
        return Err(format!("an empty list of {what}s matches nothing"));
    }
    Ok(set)
}

fn strings<'v>(v: &'v Value, what: &str) -> std::result::Result<Vec<&'v str>, String> {
    let list: Vec<&str> = items(v)
        .into_iter()
        .map(|i| {
            i.as_str()
                .ok_or_else(|| format!("expected {what} as a string, found {}", i.type_str()))
        })
        .collect::<std::result::Result<_, _>>()?;
    if list.is_empty() {
        return Err(format!("an empty list of {what}s matches nothing"));
    }
    Ok(list)
}

fn protocol_number(name: &str) -> Option<u8> {
    Some(match name.to_ascii_lowercase().as_str() {
        "icmp" => 1,
        "igmp" => 2,
        "ipip" | "ipv4" => 4,
        "tcp" => 6,
        "udp" => 17,
        "ipv6" => 41,
        "gre" => 47,
        "esp" => 50,
        "ah" => 51,
        "icmpv6" | "ipv6-icmp" => 58,
        "ospf" => 89,
        "pim" => 103,
        "vrrp" => 112,
        "sctp" => 132,
        "udplite" => 136,
        "dccp" => 33,
        other => return other.parse().ok(),
    })
}

const ORIGINAL_AT_AUTH: &str =
    "original_* conditions match at the auth layers (auth_connect, auth_recv_accept) only";

/// Parses every condition of `f` and renders them for `tunwall check`.
pub(super) fn parse(
    loader: &Loader<'_>,
    f: &RawFilter,
    name: &str,
    ports: &[&str],
    identities: &Identities,
) -> Result<(Conditions, String)> {
    let err = |v: &Spanned<Value>, key: &str, msg: String| {
        loader.error(v.span(), format!("filter \"{name}\": {key}: {msg}"))
    };
    let mut c = Conditions::default();
    let mut summary = Vec::new();
    let mut show = |key: &str, v: &Spanned<Value>| summary.push(format!("{key} = {}", v.get_ref()));

    if let Some(v) = &f.protocol {
        show("protocol", v);
        let mut set = ValueSet::default();
        for item in items(v.get_ref()) {
            let n = match item {
                Value::Integer(n) => u8::try_from(*n).ok(),
                Value::String(s) => protocol_number(s),
                _ => None,
            }
            .ok_or_else(|| {
                err(
                    v,
                    "protocol",
                    format!("{item} is not a protocol name or number (0-255)"),
                )
            })?;
            set.ranges.push((u16::from(n), u16::from(n)));
        }
        if set.ranges.is_empty() {
            return Err(err(v, "protocol", "an empty list matches nothing".into()));
        }
        c.protocol = Some(set);
    }
    if let Some(v) = &f.ip_version {
        show("ip_version", v);
        c.ip_version = Some(match v.get_ref() {
            Value::Integer(4) => IpVersion::V4,
            Value::Integer(6) => IpVersion::V6,
            other => return Err(err(v, "ip_version", format!("must be 4 or 6, not {other}"))),
        });
    }
    let address = |v: &Spanned<Value>, key: &str| -> Result<AddrSet> {
        let mut set = AddrSet::default();
        for s in strings(v.get_ref(), "address").map_err(|m| err(v, key, m))? {
            add_address(loader, &mut set, s).map_err(|m| err(v, key, m))?;
        }
        Ok(set)
    };
    if let Some(v) = &f.local_address {
        show("local_address", v);
        c.local_address = Some(address(v, "local_address")?);
    }
    if let Some(v) = &f.remote_address {
        show("remote_address", v);
        c.remote_address = Some(address(v, "remote_address")?);
    }
    if let Some(v) = &f.local_port {
        show("local_port", v);
        c.local_port =
            Some(values(v.get_ref(), u16::MAX, "port").map_err(|m| err(v, "local_port", m))?);
    }
    if let Some(v) = &f.remote_port {
        show("remote_port", v);
        c.remote_port =
            Some(values(v.get_ref(), u16::MAX, "port").map_err(|m| err(v, "remote_port", m))?);
    }
    let auth_layer = matches!(
        f.layer.get_ref(),
        LayerName::AuthConnect | LayerName::AuthRecvAccept
    );
    for (key, value, slot) in [
        (
            "original_local_address",
            &f.original_local_address,
            &mut c.original_local_address,
        ),
        (
            "original_remote_address",
            &f.original_remote_address,
            &mut c.original_remote_address,
        ),
    ] {
        if let Some(v) = value {
            show(key, v);
            if !auth_layer {
                return Err(err(v, key, ORIGINAL_AT_AUTH.into()));
            }
            *slot = Some(address(v, key)?);
        }
    }
    for (key, value, slot) in [
        (
            "original_local_port",
            &f.original_local_port,
            &mut c.original_local_port,
        ),
        (
            "original_remote_port",
            &f.original_remote_port,
            &mut c.original_remote_port,
        ),
    ] {
        if let Some(v) = value {
            show(key, v);
            if !auth_layer {
                return Err(err(v, key, ORIGINAL_AT_AUTH.into()));
            }
            *slot = Some(values(v.get_ref(), u16::MAX, "port").map_err(|m| err(v, key, m))?);
        }
    }
    let icmp_only = c.protocol.as_ref().is_some_and(|p| {
        !p.ranges.is_empty() && p.ranges.iter().all(|&(lo, _)| lo == 1 || lo == 58)
    }) || *f.layer.get_ref() == LayerName::IcmpError;
    // ICMP has no ports: such a condition would silently never match.
    for (key, value) in [
        ("local_port", &f.local_port),
        ("remote_port", &f.remote_port),
    ] {
        if let Some(v) = value
            && icmp_only
        {
            return Err(err(
                v,
                key,
                "this filter can only match ICMP, which has no ports (use icmp_type / icmp_code)"
                    .into(),
            ));
        }
    }
    for (key, value, slot) in [
        ("icmp_type", &f.icmp_type, &mut c.icmp_type),
        ("icmp_code", &f.icmp_code, &mut c.icmp_code),
    ] {
        if let Some(v) = value {
            show(key, v);
            if !icmp_only {
                return Err(err(
                    v,
                    key,
                    "needs protocol = \"icmp\" or \"icmpv6\" on the same filter".into(),
                ));
            }
            *slot = Some(values(v.get_ref(), 255, key).map_err(|m| err(v, key, m))?);
        }
    }
    if let Some(v) = &f.arrival_port {
        show("arrival_port", v);
        let mut list = Vec::new();
        for s in strings(v.get_ref(), "port name").map_err(|m| err(v, "arrival_port", m))? {
            if s == "empty" {
                list.push(ArrivalPort::Empty);
            } else {
                let i = ports.iter().position(|p| *p == s).ok_or_else(|| {
                    err(
                        v,
                        "arrival_port",
                        format!(
                            "unknown port \"{s}\" (ports: {}; or \"empty\")",
                            ports.join(", ")
                        ),
                    )
                })?;
                list.push(ArrivalPort::Port(i as u8));
            }
        }
        c.arrival_port = Some(list);
    }
    for (key, value, slot) in [
        ("local_identity", &f.local_identity, &mut c.local_identity),
        (
            "remote_identity",
            &f.remote_identity,
            &mut c.remote_identity,
        ),
    ] {
        if let Some(v) = value {
            show(key, v);
            let mut groups = Vec::new();
            for group in strings(v.get_ref(), "identity").map_err(|m| err(v, key, m))? {
                if !identities.defs.contains_key(group) {
                    return Err(err(
                        v,
                        key,
                        format!("unknown identity \"{group}\" (define it under [identities])"),
                    ));
                }
                groups.push(group.to_string());
            }
            *slot = Some(IdentityCond {
                groups,
                addrs: Default::default(),
            });
        }
    }
    for (key, value, slot) in [
        ("flags", &f.flags, &mut c.flags),
        ("not_flags", &f.not_flags, &mut c.not_flags),
    ] {
        if let Some(v) = value {
            show(key, v);
            let list = match v.get_ref() {
                Value::Array(_) => strings(v.get_ref(), "flag").map_err(|m| err(v, key, m))?,
                _ => {
                    return Err(err(
                        v,
                        key,
                        "expected a list of flags, e.g. [\"reauthorize\"]".into(),
                    ));
                }
            };
            for flag in list {
                slot.insert(match flag {
                    "reauthorize" => ClassifyFlags::REAUTHORIZE,
                    "fragment" => ClassifyFlags::FRAGMENT,
                    "multicast" => ClassifyFlags::MULTICAST,
                    "broadcast" => ClassifyFlags::BROADCAST,
                    "redirected" => ClassifyFlags::REDIRECTED,
                    other => {
                        return Err(err(
                            v,
                            key,
                            format!("unknown flag \"{other}\" (reauthorize, fragment, multicast, broadcast, redirected)"),
                        ));
                    }
                });
            }
        }
    }
    if c.flags.intersects(c.not_flags) {
        let v = f.not_flags.as_ref().or(f.flags.as_ref());
        if let Some(v) = v {
            return Err(err(
                v,
                "not_flags",
                "a flag cannot be both required and forbidden".into(),
            ));
        }
    }
    if let Some(version) = c.ip_version {
        for (key, value, set) in [
            ("local_address", &f.local_address, &c.local_address),
            ("remote_address", &f.remote_address, &c.remote_address),
        ] {
            if let (Some(v), Some(set)) = (value, set)
                && set.blocks(version).is_empty()
            {
                return Err(err(
                    v,
                    key,
                    format!(
                        "no address of IPv{} although ip_version = {}",
                        version.number(),
                        version.number()
                    ),
                ));
            }
        }
    }
    for option in [
        f.unicast_lifetime.as_ref().map(|v| ("unicast_lifetime", v)),
        f.pend_timeout.as_ref().map(|v| ("pend_timeout", v)),
        f.mcast_bcast_lifetime
            .as_ref()
            .map(|v| ("mcast_bcast_lifetime", v)),
    ]
    .into_iter()
    .flatten()
    {
        show(option.0, option.1);
    }
    if f.deny_multicast_state
        .as_ref()
        .is_some_and(|v| *v.get_ref())
    {
        summary.push("deny_multicast_state".into());
    }
    if f.loose_source_mapping
        .as_ref()
        .is_some_and(|v| *v.get_ref())
    {
        summary.push("loose_source_mapping".into());
    }
    if let Some(a) = &f.timeout_action {
        summary.push(format!(
            "timeout_action = \"{}\"",
            Action::from(*a.get_ref()).as_str()
        ));
    }
    if let Some(r) = &f.rate {
        summary.push(format!("rate = \"{}\"", r.get_ref()));
    }
    Ok((c, summary.join(", ")))
}
