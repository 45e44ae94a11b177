//! `[identities]` with WireGuard sources and `[[wireguard]]` (SPEC §11):
//! one test per rule, asserting where and what.

use super::tests::{PORTS, fails, parse};
use crate::policy::{IdentitySource, key_base64};
use std::time::Duration;

const ALICE: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
const BOB: &str = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=";

/// PORTS, then `body` starting on the returned line number.
fn with_ports(body: &str) -> (String, usize) {
    (format!("{PORTS}{body}"), PORTS.matches('\n').count() + 1)
}

#[test]
fn wireguard_identities_and_sections_parse() {
    let (text, _) = with_ports(&format!(
        "[[wireguard]]\ninterface = \"wg0\"\nnetns = \"gw\"\nport = \"lan\"\n\n\
         [[wireguard]]\ninterface = \"wg1\"\nrefresh = \"250ms\"\n\n\
         [identities]\nalice = {{ wireguard = \"wg0\", peer = \"{ALICE}\" }}\n\
         staff = {{ wireguard = \"wg1\", peers = [\"{ALICE}\", \"{BOB}\"] }}\n\
         admins = [\"198.18.1.10\"]\n\n\
         [[filter]]\nname = \"f\"\nlayer = \"auth_connect\"\naction = \"permit\"\nlocal_identity = [\"alice\", \"admins\"]\n"
    ));
    let c = parse(&text).unwrap();
    assert_eq!(c.wireguard.len(), 2);
    assert_eq!(c.wireguard[0].netns.as_deref(), Some("gw"));
    assert_eq!(c.wireguard[0].port, Some(0));
    assert_eq!(c.wireguard[0].refresh, Duration::from_secs(5));
    assert_eq!(c.wireguard[1].refresh, Duration::from_millis(250));
    assert_eq!(c.wireguard[1].port, None);
    let ids = &c.policy.identities;
    match &ids.defs["staff"] {
        IdentitySource::WireGuard { interface, peers } => {
            assert_eq!(interface, "wg1");
            assert_eq!(
                peers.iter().map(key_base64).collect::<Vec<_>>(),
                vec![ALICE, BOB]
            );
        }
        other => panic!("{other:?}"),
    }
    let cond = c.policy.filters[0]
        .conditions
        .local_identity
        .as_ref()
        .unwrap();
    assert_eq!(cond.groups, vec!["alice", "admins"]);
    // Before the interfaces are read, a WireGuard identity has no address.
    assert_eq!(cond.addrs.all().prefixes().len(), 1);
}

#[test]
fn wireguard_mistakes_are_located() {
    let wg = "[[wireguard]]\ninterface = \"wg0\"\n";
    let cases: Vec<(String, usize, usize, &str)> = vec![
        (
            format!("{wg}[identities]\na = {{ wireguard = \"wg9\", peer = \"{ALICE}\" }}\n"),
            3,
            19,
            "unknown wireguard interface \"wg9\"",
        ),
        (
            format!("{wg}[identities]\na = {{ wireguard = \"wg0\", peer = \"AAAA\" }}\n"),
            3,
            33,
            "not a WireGuard public key",
        ),
        (
            format!(
                "{wg}[identities]\na = {{ wireguard = \"wg0\", peer = \"{ALICE}\", peers = [] }}\n"
            ),
            3,
            81,
            "not both",
        ),
        (
            format!("{wg}[identities]\na = {{ wireguard = \"wg0\" }}\n"),
            3,
            5,
            "missing peer",
        ),
        (
            format!("{wg}[identities]\na = {{ wireguard = \"wg0\", peers = [] }}\n"),
            3,
            26,
            "empty list of peers",
        ),
        (
            format!("{wg}[identities]\na = {{ wireguard = \"wg0\", pear = \"{ALICE}\" }}\n"),
            3,
            26,
            "unknown key \"pear\"",
        ),
        (
            format!("{wg}[identities]\na = 3\n"),
            3,
            5,
            "expected a list of addresses",
        ),
        (
            format!("{wg}[[wireguard]]\ninterface = \"wg0\"\n"),
            3,
            13,
            "appears twice",
        ),
        (
            "[[wireguard]]\ninterface = \"a/b\"\n".into(),
            1,
            13,
            "not a valid interface name",
        ),
        (
            "[[wireguard]]\ninterface = \"wg0\"\nport = \"vpn\"\n".into(),
            2,
            8,
            "unknown port \"vpn\"",
        ),
        (
            "[[wireguard]]\ninterface = \"wg0\"\nrefresh = 5\n".into(),
            2,
            11,
            "bare number",
        ),
        (
            "[[wireguard]]\ninterface = \"wg0\"\nrefresh = \"1ms\"\n".into(),
            2,
            11,
            "at least 10ms",
        ),
        (
            "[[wireguard]]\ninterface = \"wg0\"\nnetns = \"a b\"\n".into(),
            2,
            9,
            "netns",
        ),
        (
            "[[wireguard]]\ninterface = \"wg0\"\nmtu = 3\n".into(),
            2,
            1,
            "unknown field",
        ),
    ];
    for (body, line, column, what) in cases {
        let (text, first) = with_ports(&body);
        fails(&text, first + line, column, what);
    }
}

#[test]
fn the_vpn_gateway_example_parses() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/vpn-gateway.toml");
    let c = super::Config::load(&path, &crate::policy::CalloutRegistry::default()).unwrap();
    assert_eq!(c.wireguard.len(), 1);
    assert_eq!(c.wireguard[0].port, Some(0));
    match &c.policy.identities.defs["staff"] {
        IdentitySource::WireGuard { peers, .. } => assert_eq!(peers.len(), 2),
        other => panic!("{other:?}"),
    }
}
