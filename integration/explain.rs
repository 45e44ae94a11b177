//! `tunwall explain` (SPEC §12): the redirect layers, the auth layers with
//! their filters and arbitration steps, the translation and the verdict of
//! one first packet, offline, from the gateway's own compiled policy.

mod common;

use common::*;
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;
use tunwall::config::Config;
use tunwall::policy::{CalloutRegistry, Policy};

const EXPLAINED: &str = r#"
[[sublayer]]
name = "admin"
weight = 100

[[filter]]
name = "ssh-ok"
layer = "auth_connect"
sublayer = "admin"
action = "permit"
hard = true
remote_port = 22

[[filter]]
name = "no-tcp"
layer = "auth_connect"
action = "block"
protocol = "tcp"

[[filter]]
name = "web"
layer = "auth_connect"
action = "permit"
remote_address = "198.18.9.0/24"
"#;

fn explain_json(packet: &str) -> Value {
    explain_with(EXPLAINED, packet)
}

fn explain_with(policy: &str, packet: &str) -> Value {
    let registry = CalloutRegistry::default();
    let config = Config::parse(
        Path::new("explain.toml"),
        &format!("{PORTS_TOML}\n{policy}"),
        &registry,
    )
    .unwrap();
    let policy = Arc::new(Policy::compile(&config.policy, &registry, None).unwrap());
    let packet = tunwall::explain::ExplainPacket::parse(packet).expect("packet");
    let e = tunwall::explain::explain(&config, policy, &packet).expect("explain");
    tunwall::render::explain::json(&e)
}

#[test]
fn explain_shows_filters_arbitration_and_verdict() {
    let v = explain_json("tcp 198.18.1.10:5555 -> 198.18.2.20:22 arrival lan");
    let layer = &v["layers"][0];
    assert_eq!(layer["layer"], "auth_connect");
    assert_eq!(layer["request"]["remote_port"], 22);
    let filters = layer["filters"].as_array().unwrap();
    assert_eq!(filters[0]["filter"], "ssh-ok");
    assert_eq!(filters[0]["matched"], true);
    assert_eq!(filters[1]["filter"], "no-tcp");
    assert_eq!(filters[1]["result"]["action"], "block");
    assert_eq!(filters[2]["evaluated"], false, "web is no candidate");
    let arbitration = layer["arbitration"].as_array().unwrap();
    assert_eq!(arbitration.len(), 2);
    assert_eq!(
        arbitration[1]["before"], arbitration[1]["after"],
        "a hard permit stands"
    );
    assert_eq!(layer["decision"]["filter"], "ssh-ok");
    assert_eq!(v["verdict"]["action"], "forward");
    assert_eq!(v["verdict"]["egress_port"], "wan");

    let v = explain_json("tcp 198.18.1.10:5555 -> 198.18.9.20:80 arrival lan");
    let filters = v["layers"][0]["filters"].as_array().unwrap();
    assert_eq!(filters[2]["why_not"], "its sublayer had already decided");
    assert_eq!(v["verdict"]["reason"], "auth_connect_blocked");
    assert_eq!(v["verdict"]["filter"], "no-tcp");

    let v = explain_json("udp 198.18.1.10:5555 -> 198.18.2.20:53 arrival lan");
    assert_eq!(
        v["layers"][0]["filters"][1]["why_not"],
        "protocol does not match"
    );
    assert_eq!(v["layers"][0]["decision"]["default"], true);

    let v = explain_json(
        "icmp [fd00:2::20] -> fd00:1::10 type 128 code 0 id 7 arrival wan flags reauthorize",
    );
    assert_eq!(v["layers"][0]["layer"], "auth_recv_accept");
    assert_eq!(v["layers"][0]["request"]["icmp_type"], 128);
    assert_eq!(v["layers"][0]["request"]["flags"][0], "reauthorize");
    assert_eq!(v["verdict"]["reason"], "auth_recv_accept_blocked");

    let text = tunwall::render::explain::text(&explain_json(
        "tcp 198.18.1.10:5555 -> 198.18.2.20:22 arrival lan",
    ));
    assert!(
        text.contains("no-tcp cannot override permit (hard)"),
        "{text}"
    );
    assert!(
        text.contains("verdict: permit, forwarded out of wan"),
        "{text}"
    );
}

#[test]
fn explain_packet_errors_say_what_is_wrong() {
    use tunwall::explain::ExplainPacket;
    for (packet, needle) in [
        (
            "tcp 198.18.1.10 -> 198.18.2.20:22 arrival lan",
            "ADDRESS:PORT",
        ),
        (
            "tcp 198.18.1.10:1 -> fd00::1:22 arrival lan",
            "ADDRESS:PORT",
        ),
        (
            "tcp 198.18.1.10:1 -> [fd00::1]:22 arrival lan",
            "different families",
        ),
        (
            "tcp 198.18.1.10:1 -> 198.18.2.20:22",
            "arrival port is missing",
        ),
        (
            "gre 198.18.1.10 -> 198.18.2.20 arrival lan",
            "unknown protocol",
        ),
        (
            "udp 198.18.1.10:1 -> 198.18.2.20:2 type 3 arrival lan",
            "for ICMP",
        ),
        (
            "icmp 198.18.1.10 -> 198.18.2.20 type 300 arrival lan",
            "type 300",
        ),
        (
            "tcp 198.18.1.10:1 -> 198.18.2.20:2 arrival lan flags fast",
            "unknown flag",
        ),
        ("tcp 198.18.1.10:1 => 198.18.2.20:2", "PROTO SRC -> DST"),
    ] {
        let e = ExplainPacket::parse(packet).expect_err(packet);
        assert!(e.contains(needle), "{packet}: {e}");
    }
    let p = ExplainPacket::parse("47 198.18.1.10 -> 198.18.2.20 arrival lan").unwrap();
    assert_eq!(p.protocol, 47);
}

#[test]
fn explain_command_line() {
    let dir = std::env::temp_dir().join(format!("tunwall-explain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("f.toml");
    std::fs::write(&file, format!("{PORTS_TOML}\n{EXPLAINED}")).unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tunwall"))
            .arg("explain")
            .arg("-c")
            .arg(&file)
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["tcp 198.18.1.10:5555 -> 198.18.9.20:80 arrival lan"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("verdict: drop (auth_connect_blocked, filter no-tcp)"),
        "{text}"
    );
    let out = run(&[
        "--json",
        "udp 198.18.1.10:5555 -> 198.18.2.20:53 arrival lan",
    ]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["verdict"]["egress_port"], "wan");
    let out = run(&["udp 198.18.1.10:5555 -> 198.18.2.20:53 arrival dmz"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown arrival port \"dmz\""));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Masquerade with an exemption, port forwarding, DNS redirection and auth
/// filters on the translated flow.
const TRANSLATED: &str = r#"
[[filter]]
name = "no-nat-admin"
layer = "bind_redirect"
action = "permit"
local_address = "198.18.1.99"

[[filter]]
name = "masq"
layer = "bind_redirect"
action = "redirect"
arrival_port = "lan"
to_address = "198.18.2.1"
to_port = "20000-20100"

[[filter]]
name = "web-forward"
layer = "bind_redirect"
action = "redirect"
arrival_port = "wan"
local_address = "198.18.2.1"
local_port = 8080
protocol = "tcp"
to_address = "198.18.1.10"
to_port = 80

[[filter]]
name = "dns-to-resolver"
layer = "connect_redirect"
action = "redirect"
protocol = "udp"
remote_port = 53
to_address = "198.18.2.53"

[[filter]]
name = "web-in"
layer = "auth_recv_accept"
action = "permit"
local_port = 80
original_local_port = 8080

[[filter]]
name = "no-dns-elsewhere"
layer = "auth_connect"
action = "block"
remote_port = 53
not_flags = ["redirected"]
"#;

#[test]
fn explain_shows_the_redirect_layers_and_the_translation() {
    let v = explain_with(
        TRANSLATED,
        "udp 198.18.1.10:5353 -> 198.18.2.20:53 arrival lan",
    );
    let layers = v["layers"].as_array().unwrap();
    let names: Vec<&str> = layers
        .iter()
        .map(|l| l["layer"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["bind_redirect", "connect_redirect", "auth_connect"]);
    let bind = &layers[0];
    assert_eq!(bind["filters"][0]["filter"], "no-nat-admin");
    assert_eq!(
        bind["filters"][0]["evaluated"], false,
        "the index rules it out"
    );
    assert_eq!(bind["filters"][1]["result"], "redirect");
    assert_eq!(bind["decision"]["action"], "redirect");
    assert_eq!(bind["decision"]["to_address"], "198.18.2.1");
    assert_eq!(bind["decision"]["to_port"], "20000-20100");
    assert_eq!(layers[1]["decision"]["filter"], "dns-to-resolver");
    assert_eq!(layers[1]["decision"]["to_port"], Value::Null);
    // The auth layer classifies the translated tuple; original_* see the
    // one the client sent.
    let auth = &layers[2];
    assert_eq!(auth["request"]["local_addr"], "198.18.2.1");
    assert_eq!(auth["request"]["local_port"], 20000);
    assert_eq!(auth["request"]["remote_addr"], "198.18.2.53");
    assert_eq!(auth["request"]["flags"][0], "redirected");
    assert_eq!(auth["original"]["local_addr"], "198.18.1.10");
    assert_eq!(auth["original"]["remote_addr"], "198.18.2.20");
    assert_eq!(auth["filters"][0]["why_not"], "not_flags does not match");
    assert_eq!(
        v["translation"],
        serde_json::json!({
            "local_addr": "198.18.2.1", "local_port": 20000,
            "remote_addr": "198.18.2.53", "remote_port": 53,
            "icmp_id": null, "filter": "masq,dns-to-resolver",
        })
    );
    assert_eq!(v["verdict"]["egress_port"], "wan");

    // An exemption: the first match decides, the later filters are not asked.
    let v = explain_with(
        TRANSLATED,
        "tcp 198.18.1.99:5555 -> 198.18.2.20:443 arrival lan",
    );
    let bind = &v["layers"][0];
    assert_eq!(bind["decision"]["action"], "permit");
    assert_eq!(bind["decision"]["filter"], "no-nat-admin");
    assert_eq!(
        bind["filters"][1]["why_not"],
        "an earlier filter matched: the first match decides"
    );
    assert_eq!(v["layers"][1]["decision"]["action"], "none");
    assert_eq!(v["layers"][2]["original"], Value::Null);
    assert_eq!(v["translation"], Value::Null);

    // Port forwarding, as text.
    let text = tunwall::render::explain::text(&explain_with(
        TRANSLATED,
        "tcp 198.18.9.9:4444 -> 198.18.2.1:8080 arrival wan",
    ));
    for line in [
        "layer bind_redirect: tcp 198.18.2.1:8080 (local) <-> 198.18.9.9:4444 (remote), arrival wan",
        "    masq                         no match: arrival_port does not match",
        "    web-forward                  matched: redirect (the first match decides)",
        "  result: redirect by filter web-forward (to_address 198.18.1.10, to_port 80)",
        "layer auth_recv_accept: tcp 198.18.1.10:80 (local) <-> 198.18.9.9:4444 (remote), arrival wan, flags redirected",
        "  original (original_* conditions): 198.18.2.1:8080 (local) <-> 198.18.9.9:4444 (remote)",
        "  result: permit by filter web-in",
        "translation (filter web-forward): seen outside as 198.18.2.1:8080 (local) <-> 198.18.9.9:4444 (remote)",
        "verdict: permit, forwarded out of lan",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    // A redirect with no address of the packet's family drops it.
    let v = explain_with(
        TRANSLATED,
        "udp [fd00:1::10]:5353 -> [fd00:2::20]:53 arrival lan",
    );
    assert_eq!(
        v["layers"][0]["decision"]["to_address"],
        "none of this family"
    );
    assert_eq!(v["verdict"]["reason"], "nat_no_address");
}
