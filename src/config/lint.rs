//! `tunwall check`'s warnings: what is valid but most likely not what the
//! operator meant. They never stop a gateway; each is located like an error
//! ([`ConfigError`], line 0 when it concerns the whole file).

use super::schema::Raw;
use super::validate::{Loader, parse_prefix};
use super::{ConfigError, DEFAULT_CONTROL_SOCKET};
use std::path::Path;
use toml::Spanned;

/// The warnings for `text`, a file that [`super::Config::parse`] accepted
/// (anything it would reject gives no warning here).
pub fn warnings(path: &Path, text: &str) -> Vec<ConfigError> {
    let Ok(raw) = toml::from_str::<Raw>(text) else {
        return Vec::new();
    };
    let loader = Loader { path, text };
    let mut out = Vec::new();
    if raw.ports.is_empty() {
        out.push(ConfigError {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            message: "no [[port]]: the gateway would forward nothing".into(),
        });
    }
    for p in &raw.ports {
        if p.routes.is_empty() {
            out.push(loader.error(
                p.name.span(),
                format!(
                    "port \"{}\" has no routes: nothing is forwarded out of it",
                    p.name.get_ref()
                ),
            ));
        }
        for r in p.routes.iter().chain(&p.kernel_routes) {
            host_bits(&loader, r.get_ref(), r.span(), &mut out);
        }
    }
    if let Some(socket) = &raw.gateway.control_socket
        && socket.get_ref().is_relative()
    {
        out.push(loader.error(
            socket.span(),
            format!(
                "control_socket \"{}\" is relative: it depends on the directory tunwall is started in (e.g. {DEFAULT_CONTROL_SOCKET})",
                socket.get_ref().display()
            ),
        ));
    }
    for value in raw.identities.values() {
        for m in value.get_ref().as_array().into_iter().flatten() {
            if let Some(m) = m.as_str() {
                let span = loader.within(value.span(), &format!("\"{m}\""));
                host_bits(&loader, m, span, &mut out);
            }
        }
    }
    for f in &raw.filters {
        for value in [&f.local_address, &f.remote_address].into_iter().flatten() {
            addresses(&loader, value, &mut out);
        }
    }
    out.sort_by_key(|w| (w.line, w.column));
    out
}

fn addresses(loader: &Loader, value: &Spanned<toml::Value>, out: &mut Vec<ConfigError>) {
    let strings: Vec<&str> = match value.get_ref() {
        toml::Value::String(s) => vec![s.as_str()],
        toml::Value::Array(a) => a.iter().filter_map(toml::Value::as_str).collect(),
        _ => Vec::new(),
    };
    for s in strings {
        host_bits(loader, s, value.span(), out);
    }
}

/// "198.18.1.5/24" is read as 198.18.1.0/24: say so.
fn host_bits(loader: &Loader, s: &str, span: std::ops::Range<usize>, out: &mut Vec<ConfigError>) {
    if let Some(net) = parse_prefix(s)
        && net.trunc() != net
    {
        out.push(loader.error(
            span,
            format!("\"{s}\" has host bits set: it means {}", net.trunc()),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PORT: &str = "[[port]]\nname = \"lan\"\ndevice = \"tw-lan\"\nzone = \"inside\"\n";

    /// The warnings of `text` as `line:column: message`.
    fn warned(text: &str) -> Vec<String> {
        let registry = crate::policy::CalloutRegistry::default();
        let path = Path::new("w.toml");
        super::super::Config::parse(path, text, &registry).expect("a valid config");
        warnings(path, text)
            .iter()
            .map(|w| w.to_string().trim_start_matches("w.toml:").to_string())
            .collect()
    }

    #[test]
    fn a_config_with_no_ports() {
        assert_eq!(
            warned("[flows]\nmax_flows = 10\n"),
            [" no [[port]]: the gateway would forward nothing"],
            "a warning about the whole file has no line: `w.toml: no [[port]]…`"
        );
    }

    #[test]
    fn a_port_with_no_routes() {
        assert_eq!(
            warned(PORT),
            ["2:8: port \"lan\" has no routes: nothing is forwarded out of it"]
        );
    }

    #[test]
    fn a_relative_control_socket() {
        let text =
            format!("[gateway]\ncontrol_socket = \"run/c.sock\"\n{PORT}routes = [\"0.0.0.0/0\"]\n");
        let w = warned(&text);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("2:18: control_socket \"run/c.sock\" is relative"),
            "{w:?}"
        );
        let absolute = text.replace("run/c.sock", "/run/c.sock");
        assert_eq!(warned(&absolute), Vec::<String>::new());
    }

    #[test]
    fn host_bits_in_routes_kernel_routes_identities_and_filters() {
        let text = format!(
            "{PORT}routes = [\"198.18.1.5/24\", \"fd00:1::/64\"]\nkernel_routes = [\"fd00:2::1/64\"]\n\
             [identities]\nadmins = [\"198.18.3.7/30\", \"198.18.3.9\"]\n\
             [[filter]]\nname = \"f\"\nlayer = \"auth_connect\"\naction = \"block\"\nremote_address = [\"198.18.4.1/16\"]\n"
        );
        assert_eq!(
            warned(&text),
            [
                "5:11: \"198.18.1.5/24\" has host bits set: it means 198.18.1.0/24",
                "6:18: \"fd00:2::1/64\" has host bits set: it means fd00:2::/64",
                "8:11: \"198.18.3.7/30\" has host bits set: it means 198.18.3.4/30",
                "13:18: \"198.18.4.1/16\" has host bits set: it means 198.18.0.0/16",
            ]
        );
    }

    #[test]
    fn an_address_on_a_port_may_have_host_bits() {
        let text = format!("{PORT}addresses = [\"198.18.1.1/24\"]\nroutes = [\"198.18.1.0/24\"]\n");
        assert_eq!(warned(&text), Vec::<String>::new());
    }
}
