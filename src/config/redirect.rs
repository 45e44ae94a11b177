//! The keys of redirect filters (SPEC §9): `to_address` and `to_port`.

use super::schema::{FilterActionName, RawFilter};
use super::{ConfigError, Loader};
use crate::packet::{IpVersion, raw_addr};
use crate::policy::{Conditions, Layer, RedirectTarget};
use toml::{Spanned, Value};

type Result<T> = std::result::Result<T, ConfigError>;

/// Checks what only redirect layers and redirect filters may carry, and
/// reads `to_address` / `to_port` of a redirect filter.
pub(super) fn target(
    loader: &Loader<'_>,
    f: &RawFilter,
    name: &str,
    layer: Layer,
    conditions: &Conditions,
) -> Result<Option<RedirectTarget>> {
    let here = |span: std::ops::Range<usize>, msg: String| {
        loader.error(span, format!("filter \"{name}\": {msg}"))
    };
    let kind = *f.action.get_ref();
    let redirect_layer = matches!(layer, Layer::BindRedirect | Layer::ConnectRedirect);
    if redirect_layer {
        if !matches!(kind, FilterActionName::Permit | FilterActionName::Redirect) {
            return Err(here(
                f.action.span(),
                format!(
                    "layer {} takes only action = \"redirect\" or \"permit\" (exempt from translation)",
                    layer.as_str()
                ),
            ));
        }
        if let Some(h) = &f.hard {
            return Err(here(
                h.span(),
                "`hard` has no meaning at a redirect layer: the first matching filter decides"
                    .into(),
            ));
        }
    } else if kind == FilterActionName::Redirect {
        return Err(here(
            f.action.span(),
            format!(
                "action = \"redirect\" belongs to bind_redirect or connect_redirect, not {}",
                layer.as_str()
            ),
        ));
    }
    if kind != FilterActionName::Redirect {
        for (key, v) in [("to_address", &f.to_address), ("to_port", &f.to_port)] {
            if let Some(v) = v {
                return Err(here(v.span(), format!("{key} needs action = \"redirect\"")));
            }
        }
        return Ok(None);
    }
    if f.to_address.is_none() && f.to_port.is_none() {
        return Err(here(
            f.action.span(),
            "a redirect needs to_address and/or to_port".into(),
        ));
    }
    let mut target = RedirectTarget::default();
    if let Some(v) = &f.to_address {
        addresses(v, &mut target).map_err(|m| here(v.span(), format!("to_address: {m}")))?;
        if let Some(version) = family(conditions) {
            let has = match version {
                IpVersion::V4 => target.v4.is_some(),
                IpVersion::V6 => target.v6.is_some(),
            };
            if !has {
                return Err(here(
                    v.span(),
                    format!(
                        "to_address: the filter matches IPv{} only but has no IPv{} address",
                        version.number(),
                        version.number()
                    ),
                ));
            }
        }
    }
    if let Some(v) = &f.to_port {
        target.port = Some(port_range(v).map_err(|m| here(v.span(), format!("to_port: {m}")))?);
    }
    Ok(Some(target))
}

fn addresses(v: &Spanned<Value>, target: &mut RedirectTarget) -> std::result::Result<(), String> {
    let items: Vec<&Value> = match v.get_ref() {
        Value::Array(a) => a.iter().collect(),
        other => vec![other],
    };
    if items.is_empty() {
        return Err("an empty list translates to nothing".into());
    }
    for item in items {
        let s = item
            .as_str()
            .ok_or_else(|| format!("expected an address string, found {}", item.type_str()))?;
        let addr: std::net::IpAddr = s
            .trim()
            .parse()
            .map_err(|_| format!("\"{s}\" is not an IP address"))?;
        let (version, raw) = raw_addr(addr);
        let slot = match version {
            IpVersion::V4 => &mut target.v4,
            IpVersion::V6 => &mut target.v6,
        };
        if slot.replace(raw).is_some() {
            return Err(format!(
                "one address per IP family; IPv{} is given twice",
                version.number()
            ));
        }
    }
    Ok(())
}

fn port_range(v: &Spanned<Value>) -> std::result::Result<(u16, u16), String> {
    let parse = |t: &str| {
        t.trim()
            .parse::<u16>()
            .map_err(|_| format!("\"{t}\" is not a port (0-65535)"))
    };
    match v.get_ref() {
        Value::Integer(n) => u16::try_from(*n)
            .map(|p| (p, p))
            .map_err(|_| format!("{n} is not a port (0-65535)")),
        Value::String(s) => {
            let (lo, hi) = match s.split_once('-') {
                Some((lo, hi)) => (parse(lo)?, parse(hi)?),
                None => (parse(s)?, parse(s)?),
            };
            if lo > hi {
                return Err(format!("\"{s}\": the range ends before it starts"));
            }
            Ok((lo, hi))
        }
        other => Err(format!(
            "expected a port or \"a-b\", found {}",
            other.type_str()
        )),
    }
}

/// The one IP family a filter is limited to, if it is (SPEC §9: by
/// `ip_version` or an address condition of one family).
fn family(c: &Conditions) -> Option<IpVersion> {
    if c.ip_version.is_some() {
        return c.ip_version;
    }
    for set in [&c.local_address, &c.remote_address].into_iter().flatten() {
        match (set.v4.is_empty(), set.v6.is_empty()) {
            (false, true) => return Some(IpVersion::V4),
            (true, false) => return Some(IpVersion::V6),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{fails, filter, parse};
    use crate::policy::{Layer, SpecAction};

    #[test]
    fn redirect_filters_parse() {
        let c = parse(&filter(
            "name = \"masq\"\nlayer = \"bind_redirect\"\naction = \"redirect\"\narrival_port = \"lan\"\nto_address = [\"198.18.2.1\", \"fd00:2::1\"]\nto_port = \"20000-30000\"",
        ))
        .unwrap();
        let f = &c.policy.filters[0];
        assert_eq!(f.layer, Layer::BindRedirect);
        let SpecAction::Redirect(t) = f.action else {
            panic!("{:?}", f.action)
        };
        assert_eq!(t.port, Some((20000, 30000)));
        assert!(t.v4.is_some() && t.v6.is_some());
        parse(&filter(
            "name = \"dns\"\nlayer = \"connect_redirect\"\naction = \"redirect\"\nremote_port = 53\nto_port = 5353",
        ))
        .unwrap();
        parse(&filter(
            "name = \"exempt\"\nlayer = \"bind_redirect\"\naction = \"permit\"\nlocal_address = \"198.18.1.9\"",
        ))
        .unwrap();
        parse(&filter(
            "name = \"a\"\nlayer = \"auth_connect\"\naction = \"block\"\noriginal_remote_port = 53\nflags = [\"redirected\"]",
        ))
        .unwrap();
        parse(&filter(
            "name = \"n\"\nlayer = \"resource_assignment\"\naction = \"callout\"\ncallout = \"log\"",
        ))
        .unwrap();
    }

    #[test]
    fn redirect_config_errors_are_located() {
        let head = "name = \"r\"\nlayer = \"bind_redirect\"\n";
        fails(
            &filter(&format!("{head}action = \"block\"")),
            18,
            10,
            "takes only action = \"redirect\" or \"permit\"",
        );
        fails(
            &filter(&format!(
                "{head}action = \"redirect\"\nto_port = 1\nhard = true"
            )),
            20,
            8,
            "`hard` has no meaning at a redirect layer",
        );
        fails(
            &filter(&format!("{head}action = \"redirect\"")),
            18,
            10,
            "needs to_address and/or to_port",
        );
        fails(
            &filter(&format!(
                "{head}action = \"redirect\"\nip_version = 6\nto_address = \"198.18.2.1\""
            )),
            20,
            14,
            "matches IPv6 only but has no IPv6 address",
        );
        fails(
            &filter(&format!(
                "{head}action = \"redirect\"\nlocal_address = \"198.18.1.0/24\"\nto_address = \"fd00::1\""
            )),
            20,
            14,
            "IPv4 only",
        );
        fails(
            &filter(&format!(
                "{head}action = \"redirect\"\nto_address = [\"198.18.2.1\", \"198.18.2.2\"]"
            )),
            19,
            14,
            "one address per IP family",
        );
        fails(
            &filter(&format!("{head}action = \"redirect\"\nto_port = \"9-3\"")),
            19,
            11,
            "ends before it starts",
        );
        fails(
            &filter("name = \"r\"\nlayer = \"auth_connect\"\naction = \"redirect\"\nto_port = 1"),
            18,
            10,
            "belongs to bind_redirect or connect_redirect",
        );
        fails(
            &filter("name = \"r\"\nlayer = \"auth_connect\"\naction = \"permit\"\nto_port = 1"),
            19,
            11,
            "to_port needs action = \"redirect\"",
        );
        fails(
            &filter("name = \"r\"\nlayer = \"resource_release\"\naction = \"permit\""),
            18,
            10,
            "takes only callout filters",
        );
        fails(
            &filter(&format!(
                "{head}action = \"permit\"\noriginal_local_port = 5"
            )),
            19,
            23,
            "original_* conditions match at the auth layers",
        );
    }
}
