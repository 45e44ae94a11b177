//! One test per validation rule of SPEC §6, asserting where and what.

use super::*;
use crate::policy::DefaultPolicy;
use std::path::Path;
use std::time::Duration;

pub(super) const PORTS: &str = r#"
[[port]]
name = "lan"
device = "tw-lan"
zone = "inside"
routes = ["198.18.1.0/24"]

[[port]]
name = "wan"
device = "tw-wan"
zone = "outside"
routes = ["0.0.0.0/0"]
"#;

pub(super) fn parse(text: &str) -> std::result::Result<Config, ConfigError> {
    Config::parse(Path::new("test.toml"), text, &CalloutRegistry::default())
}

/// Asserts that `text` fails at `line:column` with a message containing `what`.
#[track_caller]
pub(super) fn fails(text: &str, line: usize, column: usize, what: &str) {
    let e = parse(text).expect_err("the config must be rejected");
    assert_eq!((e.line, e.column), (line, column), "position of: {e}");
    assert!(
        e.message.contains(what),
        "message {:?} lacks {what:?}",
        e.message
    );
    assert!(
        e.to_string()
            .starts_with(&format!("test.toml:{line}:{column}: ")),
        "{e}"
    );
}

/// A config with the two ports and one filter of the given body (the filter
/// starts at line 15; its first body line is line 16).
pub(super) fn filter(body: &str) -> String {
    format!("{PORTS}\n\n[[filter]]\n{body}\n")
}

#[test]
fn toml_syntax_error() {
    fails("[flows]\nmax_flows = = 3\n", 2, 13, "");
}

#[test]
fn unknown_keys_everywhere() {
    fails("bogus = 1\n", 1, 1, "unknown field `bogus`");
    fails("[gateway]\nworker = 2\n", 2, 1, "unknown field `worker`");
    fails(
        "[[port]]\nname = \"a\"\ndevice = \"a\"\nzone = \"inside\"\nroute = []\n",
        5,
        1,
        "unknown field `route`",
    );
    fails(
        "[flows]\nudp_idl = \"60s\"\n",
        2,
        1,
        "unknown field `udp_idl`",
    );
    fails(
        &filter("name = \"f\"\nlayer = \"auth_connect\"\naction = \"block\"\nport = 22"),
        19,
        1,
        "unknown field `port`",
    );
}

#[test]
fn bad_prefixes() {
    fails(
        "[[port]]\nname = \"a\"\ndevice = \"a\"\nzone = \"inside\"\nroutes = [\"198.18.1.0/33\"]\n",
        5,
        11,
        "\"198.18.1.0/33\" is not an IP address or prefix",
    );
    fails(
        "[[port]]\nname = \"a\"\ndevice = \"a\"\nzone = \"inside\"\naddresses = [\"x\"]\n",
        5,
        14,
        "addresses: \"x\"",
    );
    fails(
        "[[port]]\nname = \"a\"\ndevice = \"a\"\nzone = \"inside\"\nkernel_routes = [\"1.2.3\"]\n",
        5,
        18,
        "kernel_routes",
    );
    fails(
        "[identities]\nadmins = [\"198.18.1.300\"]\n",
        2,
        11,
        "identity \"admins\"",
    );
    fails(
        &filter(
            "name = \"f\"\nlayer = \"auth_connect\"\naction = \"block\"\nremote_address = \"fd00::1/129\"",
        ),
        19,
        18,
        "remote_address",
    );
}

#[test]
fn durations_need_a_unit() {
    fails(
        "[flows]\nudp_idle = 60\n",
        2,
        12,
        "a bare number is not a duration",
    );
    fails(
        "[flows]\nudp_idle = \"60\"\n",
        2,
        12,
        "\"60\" is not a duration",
    );
    fails("[flows]\ntcp_closed = \"0s\"\n", 2, 14, "longer than zero");
    fails(
        "[flows]\ntcp_established = \"30d\"\n",
        2,
        19,
        "at most 24 days",
    );
}

#[test]
fn gateway_values() {
    fails("[gateway]\nworkers = 0\n", 2, 11, "workers must be");
    fails("[gateway]\nworkers = \"many\"\n", 2, 11, "workers must be");
    fails(
        "[gateway]\nhost_model = \"medium\"\n",
        2,
        14,
        "unknown variant `medium`",
    );
    assert_eq!(
        parse("[gateway]\nworkers = \"auto\"\n")
            .unwrap()
            .gateway
            .workers,
        Workers::Auto
    );
}

#[test]
fn port_rules() {
    let port = |name: &str, device: &str, zone: &str, routes: &str| {
        format!(
            "[[port]]\nname = \"{name}\"\ndevice = \"{device}\"\nzone = \"{zone}\"\nroutes = [{routes}]\n"
        )
    };
    fails(&port("a", "a", "dmz", ""), 4, 8, "unknown variant `dmz`");
    fails(
        &(port("a", "a", "inside", "") + &port("a", "b", "outside", "")),
        7,
        8,
        "duplicate port name \"a\"",
    );
    fails(&port("empty", "a", "inside", ""), 2, 8, "reserved");
    fails(
        &port("a", "a-device-name-too-long", "inside", ""),
        3,
        10,
        "not a valid interface name",
    );
    fails(
        &(port("a", "x", "inside", "") + &port("b", "x", "outside", "")),
        8,
        10,
        "used by two ports",
    );
    fails(
        &(port("a", "a", "inside", "\"198.18.0.0/16\"")
            + &port("b", "b", "outside", "\"198.18.0.0/16\"")),
        10,
        11,
        "route 198.18.0.0/16 is on both port \"a\" and port \"b\"",
    );
    // Nested prefixes on two ports are fine: the longest match wins.
    let nested = port("a", "a", "inside", "\"198.18.1.0/24\"")
        + &port("b", "b", "outside", "\"198.18.0.0/16\"");
    assert_eq!(parse(&nested).unwrap().ports.len(), 2);
    fails(
        "[[port]]\nname = \"a\"\ndevice = \"a\"\nzone = \"inside\"\nmtu = 70000\n",
        5,
        7,
        "mtu must be between",
    );
}

#[test]
fn flow_limits() {
    fails(
        "[flows]\nmax_flows = 0\n",
        2,
        13,
        "max_flows must be between",
    );
    fails(
        "[flows]\nadaptive_start = 100\nadaptive_end = 100\n",
        2,
        18,
        "adaptive_start (100) must be below adaptive_end (100)",
    );
}

#[test]
fn sublayer_rules() {
    fails(
        &filter("name = \"f\"\nlayer = \"auth_connect\"\nsublayer = \"nope\"\naction = \"block\""),
        18,
        12,
        "unknown sublayer \"nope\"",
    );
    fails("[[sublayer]]\nname = \"default\"\n", 2, 8, "always exists");
    fails(
        "[[sublayer]]\nname = \"a\"\n[[sublayer]]\nname = \"a\"\n",
        4,
        8,
        "duplicate sublayer \"a\"",
    );
    fails(
        "[[sublayer]]\nname = \"a\"\nweight = 70000\n",
        3,
        10,
        "weight must be between 0 and 65535",
    );
}

#[test]
fn filter_identity_and_layer_rules() {
    let two = "[[filter]]\nname = \"f\"\nlayer = \"auth_connect\"\naction = \"block\"\n".repeat(2);
    fails(&two, 6, 8, "duplicate filter name \"f\"");
    fails(
        &filter("name = \"f\"\nlayer = \"flow_established\"\naction = \"permit\""),
        18,
        10,
        "takes only callout filters",
    );
    fails(
        &filter("name = \"f\"\nlayer = \"endpoint_closure\"\naction = \"block\""),
        18,
        10,
        "takes only callout filters",
    );
    fails(
        &filter("name = \"f\"\nlayer = \"auth_sideways\"\naction = \"block\""),
        17,
        9,
        "unknown variant `auth_sideways`",
    );
    fails(
        &filter("name = \"f\"\nlayer = \"auth_connect\"\naction = \"block\"\nweight = -1"),
        19,
        10,
        "weight must not be negative",
    );
    fails(
        &filter("layer = \"auth_connect\"\naction = \"block\""),
        15,
        1,
        "missing field `name`",
    );
    fails(
        &filter("name = \"f\"\naction = \"block\""),
        15,
        1,
        "missing field `layer`",
    );
    fails(
        &filter("name = \"f\"\nlayer = \"auth_connect\""),
        15,
        1,
        "missing field `action`",
    );
}

#[test]
fn callout_rules() {
    let f = |body: &str| {
        filter(&format!(
            "name = \"f\"\nlayer = \"auth_recv_accept\"\n{body}"
        ))
    };
    fails(
        &f("action = \"callout\""),
        18,
        10,
        "needs `callout = \"NAME\"`",
    );
    fails(
        &f("action = \"permit\"\ncallout = \"log\""),
        19,
        11,
        "needs action = \"callout\"",
    );
    fails(
        &f("action = \"callout\"\ncallout = \"dpi\""),
        19,
        11,
        "unknown callout \"dpi\" (known: ask, log, rate_limit)",
    );
    fails(
        &f("action = \"callout\"\ncallout = \"rate_limit\""),
        19,
        11,
        "needs `rate = \"N/s\"`",
    );
    fails(
        &f("action = \"callout\"\ncallout = \"rate_limit\"\nrate = \"fast\""),
        20,
        8,
        "rate \"fast\" must look like",
    );
    fails(
        &f("action = \"callout\"\ncallout = \"rate_limit\"\nrate = \"0/s\""),
        20,
        8,
        "must look like",
    );
    fails(
        &f("action = \"block\"\nrate = \"5/s\""),
        19,
        8,
        "belongs to a rate_limit callout",
    );
    fails(
        &f("action = \"callout\"\ncallout = \"log\"\nhard = true"),
        20,
        8,
        "always soft",
    );
    // A callout an embedder registers is accepted.
    let mut registry = CalloutRegistry::default();
    registry.register("dpi", |_| {
        Ok(std::sync::Arc::new(crate::policy::callout::LogCallout) as _)
    });
    let text = f("action = \"callout\"\ncallout = \"dpi\"");
    assert!(Config::parse(Path::new("test.toml"), &text, &registry).is_ok());
}

#[test]
fn classify_options_only_on_permits_at_auth_layers() {
    for (option, column) in [
        ("unicast_lifetime = \"5s\"", 20),
        ("mcast_bcast_lifetime = \"5s\"", 24),
        ("deny_multicast_state = true", 24),
        ("loose_source_mapping = true", 24),
    ] {
        let block = filter(&format!(
            "name = \"f\"\nlayer = \"auth_connect\"\naction = \"block\"\n{option}"
        ));
        fails(&block, 19, column, "classify option");
        let icmp = filter(&format!(
            "name = \"f\"\nlayer = \"icmp_error\"\naction = \"permit\"\n{option}"
        ));
        fails(&icmp, 19, column, "classify option");
    }
    let ok = filter(
        "name = \"f\"\nlayer = \"auth_connect\"\naction = \"permit\"\nunicast_lifetime = \"5s\"\nloose_source_mapping = true",
    );
    let c = parse(&ok).unwrap();
    assert_eq!(
        c.policy.filters[0].options.unicast_lifetime,
        Some(Duration::from_secs(5))
    );
    assert!(c.policy.filters[0].options.loose_source_mapping);
}

#[test]
fn condition_rules() {
    let f = |cond: &str| {
        filter(&format!(
            "name = \"f\"\nlayer = \"auth_connect\"\naction = \"block\"\n{cond}"
        ))
    };
    fails(&f("arrival_port = \"dmz\""), 19, 16, "unknown port \"dmz\"");
    fails(
        &f("remote_identity = \"nobody\""),
        19,
        19,
        "unknown identity \"nobody\"",
    );
    fails(
        "[identities]\nnobody = []\n",
        2,
        1,
        "identity \"nobody\" is empty",
    );
    fails(&f("icmp_type = 8"), 19, 13, "needs protocol = \"icmp\"");
    fails(&f("flags = [\"sticky\"]"), 19, 9, "unknown flag \"sticky\"");
    fails(
        &f("flags = [\"fragment\"]\nnot_flags = [\"fragment\"]"),
        20,
        13,
        "both required and forbidden",
    );
    fails(&f("ip_version = 5"), 19, 14, "must be 4 or 6");
    fails(
        &f("ip_version = 4\nremote_address = \"fd00::/8\""),
        20,
        18,
        "no address of IPv4",
    );
    fails(
        &f("remote_port = 70000"),
        19,
        15,
        "70000 is not a valid port",
    );
    fails(
        &f("remote_port = \"90-80\""),
        19,
        15,
        "the range ends before it starts",
    );
    fails(
        &f("protocol = \"bogus\""),
        19,
        12,
        "not a protocol name or number",
    );
}

#[test]
fn the_shipped_configs_parse_as_written() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let registry = CalloutRegistry::default();
    let example = Config::load(&root.join("configs/example.toml"), &registry).unwrap();
    assert_eq!(example.gateway.workers, Workers::Count(2));
    assert_eq!(example.ports.len(), 2);
    assert_eq!(example.ports[0].netns.as_deref(), Some("client"));
    assert_eq!(example.ports[0].routes[0].to_string(), "198.18.1.0/24");
    assert_eq!(example.ports[1].zone, Zone::Outside);
    assert_eq!(example.flows.tcp_time_wait, Duration::from_secs(30));
    assert_eq!(
        example
            .policy
            .sublayers
            .iter()
            .map(|s| (s.name.as_str(), s.weight))
            .collect::<Vec<_>>(),
        vec![("default", 0), ("admin", 100), ("inspection", 50)]
    );
    let telnet = example
        .policy
        .filters
        .iter()
        .find(|f| f.name == "no-telnet")
        .unwrap();
    let ports = telnet.conditions.remote_port.as_ref().unwrap();
    assert!(ports.contains(23) && ports.contains(2323) && !ports.contains(24));
    let demo = Config::load(&root.join("configs/demo.toml"), &registry).unwrap();
    assert_eq!(
        demo.ports.iter().map(|p| p.zone).collect::<Vec<_>>(),
        vec![Zone::Inside, Zone::Outside]
    );
}

#[test]
fn an_empty_file_gives_every_default() {
    let c = parse("").unwrap();
    assert_eq!(c.flows, FlowConfig::with_max_flows(1_000_000));
    assert_eq!(
        (c.flows.adaptive_start, c.flows.adaptive_end),
        (600_000, 1_200_000)
    );
    assert_eq!(c.flows.udp_idle, Duration::from_secs(60));
    assert_eq!(c.flows.tcp_established, Duration::from_secs(86_400));
    assert_eq!(c.policy.defaults, DefaultPolicy::default());
    assert_eq!(c.gateway.workers, Workers::Count(1));
    assert_eq!(c.gateway.host_model, HostModel::Weak);
    assert!(c.gateway.offload);
    assert_eq!(c.events.discard_rate, 100);
    assert_eq!(
        c.gateway.control_socket,
        PathBuf::from(DEFAULT_CONTROL_SOCKET)
    );
}

#[test]
fn address_forms() {
    let f = filter(
        "name = \"f\"\nlayer = \"auth_connect\"\naction = \"block\"\nremote_address = [\"198.18.1.10-198.18.1.20\", \"fd00::1-fd00::ff\", \"198.19.0.0/16\", \"198.18.9.9\"]",
    );
    let c = parse(&f).unwrap();
    let set = c.policy.filters[0]
        .conditions
        .remote_address
        .as_ref()
        .unwrap();
    let raw = |s: &str| crate::packet::raw_addr(s.parse().unwrap());
    for (addr, inside) in [
        ("198.18.1.15", true),
        ("198.18.1.21", false),
        ("fd00::ff", true),
        ("fd00::100", false),
        ("198.19.7.7", true),
        ("198.18.9.9", true),
    ] {
        let (v, a) = raw(addr);
        assert_eq!(set.contains(v, &a), inside, "{addr}");
    }
}

#[test]
fn a_failed_parse_leaves_nothing_behind() {
    assert!(parse("[flows]\nudp_idle = 1\n").is_err());
    assert_eq!(
        parse("[flows]\nudp_idle = \"1s\"\n")
            .unwrap()
            .flows
            .udp_idle,
        Duration::from_secs(1)
    );
}

#[test]
fn arbitrary_text_never_panics() {
    for text in [
        "\u{feff}[flows]\nudp_idle = \"ü\"",
        "[[filter]]\nname = \"é\"\nlayer = \"ä\"",
        "\u{0}",
        "[a.b.c]\nx = [1, \"two\", {}]",
        "ää = ö",
    ] {
        let _ = parse(text);
    }
}

#[test]
fn dot_names_and_ports_on_icmp_only_filters_are_refused() {
    let port = |name: &str| {
        format!("[[port]]\nname = \"{name}\"\ndevice = \"a\"\nzone = \"inside\"\nroutes = []\n")
    };
    fails(&port("."), 2, 8, "");
    fails(&port(".."), 2, 8, "");
    fails(
        &filter("name = \"..\"\nlayer = \"auth_connect\"\naction = \"block\""),
        16,
        8,
        "",
    );
    fails(
        &filter(
            "name = \"x\"\nlayer = \"auth_connect\"\naction = \"block\"\nprotocol = \"icmp\"\nlocal_port = 22",
        ),
        20,
        14,
        "can only match ICMP",
    );
    fails(
        &filter(
            "name = \"x\"\nlayer = \"auth_connect\"\naction = \"block\"\nprotocol = [\"icmp\", \"icmpv6\"]\nremote_port = 22",
        ),
        20,
        15,
        "no ports",
    );
    fails(
        &filter("name = \"x\"\nlayer = \"icmp_error\"\naction = \"block\"\nremote_port = 22"),
        19,
        15,
        "can only match ICMP",
    );
    // With another protocol in the list, ports can match.
    assert!(parse(&filter("name = \"x\"\nlayer = \"auth_connect\"\naction = \"block\"\nprotocol = [\"icmp\", \"udp\"]\nremote_port = 22")).is_ok());
}

/// `[sync]` (SPEC §15): endpoints, and a key file of exactly 32 bytes,
/// every error located at its key.
#[test]
fn sync_section() {
    let dir = std::env::temp_dir().join(format!("tunwall-sync-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.key");
    std::fs::write(&good, [9u8; 32]).unwrap();
    std::fs::set_permissions(&good, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let short = dir.join("short.key");
    std::fs::write(&short, [9u8; 31]).unwrap();
    std::fs::set_permissions(&short, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let section = |listen: &str, peer: &str, key: &Path| {
        format!(
            "{PORTS}\n[sync]\nlisten = \"{listen}\"\npeer = \"{peer}\"\nkey_file = \"{}\"\n",
            key.display()
        )
    };
    let config = parse(&section("198.18.9.1:7946", "198.18.9.2:7946", &good)).unwrap();
    let sync = config.sync.as_ref().expect("[sync]");
    assert_eq!(sync.key, [9; 32]);
    assert_eq!(sync.node_ids(), (1, 2));
    assert!(!sync.key_shared);
    assert!(
        !format!("{sync:?}").contains("9, 9"),
        "the key is never printed"
    );
    // The section starts on line 14.
    fails(
        &section("198.18.9.1", "198.18.9.2:7946", &good),
        15,
        10,
        "not an address and port",
    );
    fails(
        &section("198.18.9.1:1", "198.18.9.1:1", &good),
        16,
        8,
        "own listen address",
    );
    fails(
        &section("198.18.9.1:1", "198.18.9.2:1", &short),
        17,
        12,
        "holds 31 bytes",
    );
    fails(
        &section("198.18.9.1:1", "198.18.9.2:1", &dir.join("missing")),
        17,
        12,
        "cannot read",
    );
    fails(
        &format!("{PORTS}\n[sync]\nlisten = \"198.18.9.1:1\"\n"),
        14,
        1,
        "missing field",
    );
    std::fs::write(&short, [1u8; 32]).unwrap();
    let shared = parse(&section("198.18.9.2:1", "198.18.9.1:1", &short)).unwrap();
    let sync = shared.sync.unwrap();
    assert!(sync.key_shared, "a 0644 key file is reported");
    assert_eq!(sync.node_ids(), (2, 1));
    // A reload cannot change [sync].
    let other = parse(&section("198.18.9.1:7946", "198.18.9.3:7946", &good)).unwrap();
    let e = config.reloadable_from(&other).unwrap_err();
    assert!(e.contains("[sync]"), "{e}");
    assert!(config.reloadable_from(&config.clone()).is_ok());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn pend_rules() {
    let f = |layer: &str, body: &str| filter(&format!("name = \"f\"\nlayer = \"{layer}\"\n{body}"));
    let config = parse(&f(
        "auth_recv_accept",
        "action = \"callout\"\ncallout = \"ask\"\npend_timeout = \"30s\"\ntimeout_action = \"permit\"",
    ))
    .expect("valid");
    match &config.policy.filters[0].action {
        crate::policy::SpecAction::Callout { params, .. } => {
            assert_eq!(params.pend.timeout, Duration::from_secs(30));
            assert_eq!(params.pend.timeout_action, crate::policy::Action::Permit);
        }
        other => panic!("{other:?}"),
    }
    let config = parse(&f(
        "auth_connect",
        "action = \"callout\"\ncallout = \"ask\"",
    ))
    .expect("valid");
    match &config.policy.filters[0].action {
        crate::policy::SpecAction::Callout { params, .. } => {
            assert_eq!(params.pend, crate::policy::Pend::default());
        }
        other => panic!("{other:?}"),
    }
    fails(
        &f("auth_connect", "action = \"permit\"\npend_timeout = \"5s\""),
        19,
        16,
        "pend_timeout belongs to a callout filter at auth_connect or auth_recv_accept",
    );
    fails(
        &f(
            "flow_established",
            "action = \"callout\"\ncallout = \"log\"\ntimeout_action = \"permit\"",
        ),
        20,
        18,
        "timeout_action belongs to a callout filter",
    );
    fails(
        &f(
            "auth_connect",
            "action = \"callout\"\ncallout = \"ask\"\npend_timeout = \"soon\"",
        ),
        20,
        16,
        "filter \"f\": pend_timeout: \"soon\" is not a duration",
    );
    fails(
        &f(
            "auth_connect",
            "action = \"callout\"\ncallout = \"ask\"\ntimeout_action = \"maybe\"",
        ),
        20,
        18,
        "unknown variant `maybe`",
    );
    fails(
        &f(
            "auth_connect",
            "action = \"callout\"\ncallout = \"ask\"\nrate = \"5/s\"",
        ),
        19,
        11,
        "the ask callout takes no `rate`",
    );
    fails(
        "[flows]\npend_queue_packets = 0\n",
        2,
        22,
        "pend_queue_packets must be between 1 and 65536, not 0",
    );
    let config = parse(&format!(
        "{PORTS}\n[flows]\npend_queue_packets = 4\npend_queue_bytes = 3000\npend_max_flows = 7\n"
    ))
    .expect("valid");
    assert_eq!(
        (
            config.flows.pend_queue_packets,
            config.flows.pend_queue_bytes,
            config.flows.pend_max_flows
        ),
        (4, 3000, 7)
    );
}
