//! End-to-end tests: the real `tunwall` binary between a client and a
//! server namespace, with real clients (ping, iperf3, python sockets).
//! They fail, naming the reason, when /dev/net/tun or CAP_NET_ADMIN is missing.

mod netns;

use netns::{CLIENT4, CLIENT6, SERVER4, SERVER6, Topology};
use serde_json::Value;
use std::time::Duration;

const DEFAULT_FLOWS: &str = "max_flows = 10000";

fn ok(out: &std::process::Output) -> bool {
    out.status.success()
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn family(v6: bool) -> &'static str {
    if v6 {
        "socket.AF_INET6"
    } else {
        "socket.AF_INET"
    }
}

/// A UDP echo server on `addr:port`, optionally answering `delay` seconds late.
fn udp_echo(addr: &str, port: u16, v6: bool, delay: f64) -> String {
    format!(
        "import socket,time\ns=socket.socket({f},socket.SOCK_DGRAM)\ns.bind(('{addr}',{port}))\nwhile True:\n d,a=s.recvfrom(65535)\n time.sleep({delay})\n s.sendto(d,a)\n",
        f = family(v6)
    )
}

/// Sends `size` bytes by UDP from a fixed source port and prints the size of
/// the answer, or "timeout" / "refused".
fn udp_ask(dst: &str, port: u16, v6: bool, size: usize, wait: f64) -> String {
    format!(
        "import socket\ns=socket.socket({f},socket.SOCK_DGRAM)\ns.settimeout({wait})\ns.connect(('{dst}',{port}))\ns.send(b'x'*{size})\ntry:\n print(len(s.recv(65535)))\nexcept socket.timeout:\n print('timeout')\nexcept ConnectionRefusedError:\n print('refused')\n",
        f = family(v6)
    )
}

fn tcp_echo_server(addr: &str, port: u16, v6: bool) -> String {
    format!(
        "import socket,threading\ns=socket.socket({f})\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('{addr}',{port}))\ns.listen(8)\ndef h(c):\n while True:\n  d=c.recv(65536)\n  if not d: break\n  c.sendall(d)\n c.close()\nwhile True:\n c,_=s.accept()\n threading.Thread(target=h,args=(c,),daemon=True).start()\n",
        f = family(v6)
    )
}

/// Connects, exchanges a message every 0.2 s for `secs` seconds, prints
/// "ok N" if every exchange worked or "broken after N: ERROR".
fn tcp_chatter(dst: &str, port: u16, secs: f64) -> String {
    format!(
        "import socket,time\ns=socket.create_connection(('{dst}',{port}),timeout=2)\nn=0\nend=time.time()+{secs}\ntry:\n while time.time()<end:\n  s.sendall(b'ping')\n  if s.recv(16)!=b'ping': raise Exception('bad echo')\n  n+=1\n  time.sleep(0.2)\n print('ok',n)\nexcept Exception as e:\n print('broken after',n,':',type(e).__name__)\ns.close()\n",
    )
}

fn wait_listening(t: &Topology, ns_is_server: bool, port: u16, udp: bool) {
    for _ in 0..50 {
        let args = if udp {
            ["ss", "-Hlun"]
        } else {
            ["ss", "-Hltn"]
        };
        let out = if ns_is_server {
            t.in_server(&args)
        } else {
            t.in_client(&args)
        };
        if String::from_utf8_lossy(&out.stdout).contains(&format!(":{port} ")) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("nothing listens on port {port}");
}

fn ping_out_permitted_in_refused(v6: bool) {
    let t = Topology::with_offload(!v6, DEFAULT_FLOWS, "");
    let (server, client) = if v6 {
        (SERVER6, CLIENT6)
    } else {
        (SERVER4, CLIENT4)
    };
    let out = t.in_client(&["ping", "-c", "2", "-W", "2", server]);
    assert!(ok(&out), "ping out failed: {}\n{}", text(&out), t.log());
    let out = t.in_server(&["ping", "-c", "1", "-W", "1", client]);
    assert!(!ok(&out), "inbound ping must be refused");
    assert!(t.discards("auth_recv_accept_blocked") >= 1);
    let flows = t.flows();
    let echo = flows
        .iter()
        .find(|f| f["icmp_type"] == if v6 { 128 } else { 8 })
        .expect("an echo flow");
    assert_eq!(echo["direction"], "outbound");
    assert_eq!(echo["local_addr"], client);
    assert_eq!(echo["remote_addr"], server);
    assert_eq!(echo["packets_out"], 2);
    assert_eq!(echo["packets_in"], 2);
}

#[test]
fn ping_v4() {
    require_netns!();
    ping_out_permitted_in_refused(false);
}

#[test]
fn ping_v6() {
    require_netns!();
    ping_out_permitted_in_refused(true);
}

fn tcp_out_permitted_in_refused(v6: bool, offload: bool) {
    let mut t = Topology::with_offload(offload, "tcp_time_wait = \"1s\"", "");
    let (server, client) = if v6 {
        (SERVER6, CLIENT6)
    } else {
        (SERVER4, CLIENT4)
    };
    // A transfer with a real client.
    let server_ns = t.server.clone();
    t.spawn(&server_ns, &["iperf3", "-s", "-1", "-B", server]);
    wait_listening(&t, true, 5201, false);
    let out = t.in_client(&["iperf3", "-c", server, "-t", "1", "-J"]);
    assert!(ok(&out), "iperf3 through tunwall failed: {}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("iperf3 json");
    let bytes = report["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0);
    assert!(bytes > 1_000_000, "only {bytes} bytes arrived");

    // A connection held open: the flow is established with the right fields.
    t.spawn(
        &server_ns,
        &["python3", "-c", &tcp_echo_server(server, 7000, v6)],
    );
    wait_listening(&t, true, 7000, false);
    let client_ns = t.client.clone();
    t.spawn(
        &client_ns,
        &["python3", "-c", &tcp_chatter(server, 7000, 1.5)],
    );
    std::thread::sleep(Duration::from_millis(700));
    let flows = t.flows();
    let flow = flows
        .iter()
        .find(|f| f["protocol"] == "tcp" && f["remote_port"] == 7000)
        .unwrap_or_else(|| panic!("no TCP flow to port 7000 in {flows:#?}"));
    assert_eq!(flow["state"], "established");
    assert_eq!(flow["established"], true);
    assert_eq!(flow["direction"], "outbound");
    assert_eq!(flow["layer"], "auth_connect");
    assert_eq!(flow["local_addr"], client);
    assert_eq!(flow["remote_addr"], server);
    assert_eq!(flow["arrival_port"], "lan");
    let id = flow["id"].as_u64().expect("id");
    // After the close and time_wait the flow is gone with reason tcp_fin.
    let closed = t.wait_event("flow_closed tcp_fin", |e| {
        e["event"] == "flow_closed" && e["id"] == id
    });
    assert_eq!(closed["reason"], "tcp_fin");
    assert!(t.flows().iter().all(|f| f["id"] != id));

    // An inbound connection to a listening client is refused by the default policy.
    t.spawn(
        &client_ns,
        &["python3", "-c", &tcp_echo_server(client, 8080, v6)],
    );
    wait_listening(&t, false, 8080, false);
    let before = t.discards("auth_recv_accept_blocked");
    let out = t.python(
        &t.server,
        &format!("import socket\ntry:\n socket.create_connection(('{client}',8080),timeout=2)\n print('connected')\nexcept Exception as e:\n print('refused',type(e).__name__)\n"),
    );
    assert!(
        text(&out).starts_with("refused"),
        "inbound connect must fail: {}",
        text(&out)
    );
    assert!(t.discards("auth_recv_accept_blocked") > before);
}

#[test]
fn tcp_v4() {
    require_netns!();
    tcp_out_permitted_in_refused(false, true);
}

#[test]
fn tcp_v6() {
    require_netns!();
    tcp_out_permitted_in_refused(true, true);
}

#[test]
fn tcp_v4_without_offload() {
    require_netns!();
    tcp_out_permitted_in_refused(false, false);
}

#[test]
fn tcp_v6_without_offload() {
    require_netns!();
    tcp_out_permitted_in_refused(true, false);
}

fn udp_out_permitted_in_refused(v6: bool) {
    // One family per I/O mode, so both modes carry UDP.
    let mut t = Topology::with_offload(v6, DEFAULT_FLOWS, "");
    let (server, client) = if v6 {
        (SERVER6, CLIENT6)
    } else {
        (SERVER4, CLIENT4)
    };
    let server_ns = t.server.clone();
    t.spawn(
        &server_ns,
        &["python3", "-c", &udp_echo(server, 5300, v6, 0.0)],
    );
    wait_listening(&t, true, 5300, true);
    let out = t.python(&t.client, &udp_ask(server, 5300, v6, 100, 2.0));
    assert_eq!(
        text(&out).trim(),
        "100",
        "UDP request/response out: {}",
        text(&out)
    );
    // Unsolicited inbound UDP to a listening client never arrives.
    let client_ns = t.client.clone();
    t.spawn(
        &client_ns,
        &["python3", "-c", &udp_echo(client, 5400, v6, 0.0)],
    );
    wait_listening(&t, false, 5400, true);
    let out = t.python(&t.server, &udp_ask(client, 5400, v6, 10, 1.5));
    assert_eq!(
        text(&out).trim(),
        "timeout",
        "unsolicited inbound UDP must be dropped"
    );
    assert!(t.discards("auth_recv_accept_blocked") >= 1);
}

#[test]
fn udp_v4() {
    require_netns!();
    udp_out_permitted_in_refused(false);
}

#[test]
fn udp_v6() {
    require_netns!();
    udp_out_permitted_in_refused(true);
}

#[test]
fn udp_flow_expires_and_a_late_reply_is_refused() {
    require_netns!();
    let mut t = Topology::new("udp_idle = \"1s\"", "");
    let server_ns = t.server.clone();
    t.spawn(
        &server_ns,
        &["python3", "-c", &udp_echo(SERVER4, 5301, false, 2.5)],
    );
    wait_listening(&t, true, 5301, true);
    let out = t.python(&t.client, &udp_ask(SERVER4, 5301, false, 10, 4.0));
    assert_eq!(
        text(&out).trim(),
        "timeout",
        "the late reply must be refused"
    );
    let closed = t.wait_event("udp idle close", |e| {
        e["event"] == "flow_closed" && e["remote_port"] == 5301
    });
    assert_eq!(closed["reason"], "idle_timeout");
    let discard = t.wait_event("late reply discard", |e| {
        e["event"] == "discard" && e["src_port"] == 5301
    });
    assert_eq!(discard["reason"], "auth_recv_accept_blocked");
    assert_eq!(discard["layer"], "auth_recv_accept");
}

#[test]
fn reload_blocking_a_port_tears_down_its_flow_but_not_the_other_layer() {
    require_netns!();
    let permit_inbound = r#"
[[filter]]
name = "udp-in-9000"
layer = "auth_recv_accept"
action = "permit"
protocol = "udp"
local_port = 9000
"#;
    let mut t = Topology::new(DEFAULT_FLOWS, permit_inbound);
    let server_ns = t.server.clone();
    let client_ns = t.client.clone();
    t.spawn(
        &server_ns,
        &["python3", "-c", &tcp_echo_server(SERVER4, 7000, false)],
    );
    t.spawn(
        &client_ns,
        &["python3", "-c", &udp_echo(CLIENT4, 9000, false, 0.0)],
    );
    wait_listening(&t, true, 7000, false);
    wait_listening(&t, false, 9000, true);
    // An inbound flow (auth_recv_accept) before the reload.
    let out = t.python(&t.server, &udp_ask(CLIENT4, 9000, false, 10, 2.0));
    assert_eq!(
        text(&out).trim(),
        "10",
        "permitted inbound UDP: {}",
        text(&out)
    );
    let inbound_id = t
        .flows()
        .iter()
        .find(|f| f["local_port"] == 9000)
        .and_then(|f| f["id"].as_u64())
        .expect("inbound flow");

    let chatter = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &t.client,
            "python3",
            "-c",
            &tcp_chatter(SERVER4, 7000, 4.0),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("chatter");
    std::thread::sleep(Duration::from_millis(1000));
    t.rewrite_config(|c| {
        c + r#"
[[filter]]
name = "block-7000"
layer = "auth_connect"
action = "block"
protocol = "tcp"
remote_port = 7000
"#
    });
    let out = t.cli(&["reload"]);
    assert!(ok(&out), "reload: {}", text(&out));
    assert!(
        text(&out).contains("auth_connect"),
        "changed layers: {}",
        text(&out)
    );
    assert!(
        !text(&out).contains("auth_recv_accept"),
        "only auth_connect changed: {}",
        text(&out)
    );
    let result = chatter.wait_with_output().expect("chatter output");
    let said = String::from_utf8_lossy(&result.stdout).to_string();
    assert!(
        said.starts_with("broken after"),
        "the connection must be cut: {said}"
    );
    let closed = t.wait_event("reauth close", |e| {
        e["event"] == "flow_closed" && e["remote_port"] == 7000
    });
    assert_eq!(closed["reason"], "reauth_blocked");
    let discard = t.wait_event("reauth discard", |e| {
        e["event"] == "discard" && e["reason"] == "reauth_blocked"
    });
    assert_eq!(discard["filter"], "block-7000");
    assert_eq!(discard["layer"], "auth_connect");
    // The inbound flow rides on without reauthorization.
    let out = t.python(&t.server, &udp_ask(CLIENT4, 9000, false, 10, 2.0));
    assert_eq!(text(&out).trim(), "10");
    assert!(
        t.events()
            .iter()
            .all(|e| !(e["event"] == "flow_reauthorized" && e["id"] == inbound_id)),
        "the inbound flow must not be reauthorized"
    );
    assert!(t.events().iter().any(|e| e["event"] == "policy_reloaded"));
}

#[test]
fn an_invalid_reload_keeps_the_policy_and_the_traffic() {
    require_netns!();
    let t = Topology::new(DEFAULT_FLOWS, "");
    t.rewrite_config(|c| c + "\n[[filter]]\nname = \"broken\"\nlayer = \"auth_connect\"\naction = \"permit\"\nremote_port = 70000\n");
    let out = t.cli(&["reload"]);
    assert!(!ok(&out), "an invalid reload must exit 1");
    let msg = text(&out);
    assert!(
        msg.contains("tunwall.toml:") && msg.contains("70000"),
        "the error names file, line and value: {msg}"
    );
    let out = t.in_client(&["ping", "-c", "1", "-W", "2", SERVER4]);
    assert!(ok(&out), "traffic must keep flowing");
    t.wait_event("reload_failed", |e| e["event"] == "reload_failed");
    assert_eq!(t.stats()["policy_generation"], 1);
}

#[test]
fn port_unreachable_for_a_udp_probe_reaches_the_client() {
    require_netns!();
    let t = Topology::new(DEFAULT_FLOWS, "");
    let out = t.python(&t.client, &udp_ask(SERVER4, 9, false, 10, 2.0));
    assert_eq!(
        text(&out).trim(),
        "refused",
        "the ICMP port unreachable must arrive: {}",
        text(&out)
    );
    assert!(t.stats()["related_icmp"].as_u64().unwrap_or(0) >= 1);
}

#[test]
fn a_udp_datagram_larger_than_the_mtu_passes_fragmented() {
    require_netns!();
    fragmented_udp(true);
}

#[test]
fn a_udp_datagram_larger_than_the_mtu_passes_fragmented_without_offload() {
    require_netns!();
    fragmented_udp(false);
}

fn fragmented_udp(offload: bool) {
    let mut t = Topology::with_offload(offload, DEFAULT_FLOWS, "");
    let server_ns = t.server.clone();
    t.spawn(
        &server_ns,
        &["python3", "-c", &udp_echo(SERVER4, 5302, false, 0.0)],
    );
    wait_listening(&t, true, 5302, true);
    let out = t.python(&t.client, &udp_ask(SERVER4, 5302, false, 4000, 2.0));
    assert_eq!(
        text(&out).trim(),
        "4000",
        "the fragmented datagram and its echo: {}",
        text(&out)
    );
    let out = t.python(&t.client, &udp_ask(SERVER6, 5303, true, 4000, 2.0));
    // No IPv6 server on 5303: the answer is a port unreachable, which also proves the fragments passed.
    assert_eq!(text(&out).trim(), "refused", "{}", text(&out));
}

#[test]
fn sigterm_leaves_nothing_behind() {
    require_netns!();
    let mut t = Topology::new(DEFAULT_FLOWS, "");
    let out = t.in_client(&["ping", "-c", "1", "-W", "2", SERVER4]);
    assert!(ok(&out));
    let status = t.stop();
    assert!(status.success(), "exit status {status}");
    assert!(!t.socket.exists(), "control socket left behind");
    assert!(
        !t.device_exists(&t.client, &t.lan_dev),
        "lan device left behind"
    );
    assert!(
        !t.device_exists(&t.server, &t.wan_dev),
        "wan device left behind"
    );
    let closed: Vec<Value> = t
        .events()
        .into_iter()
        .filter(|e| e["event"] == "flow_closed")
        .collect();
    assert!(
        !closed.is_empty() && closed.iter().all(|e| e["reason"] == "shutdown"),
        "{closed:#?}"
    );
    let created = t
        .events()
        .iter()
        .filter(|e| e["event"] == "flow_created")
        .count();
    assert_eq!(created, closed.len(), "every flow closed exactly once");
}

#[test]
fn sighup_reloads_and_the_events_stream_and_prometheus_work() {
    require_netns!();
    let mut t = Topology::new(DEFAULT_FLOWS, "");
    // `tunwall events` streams JSON lines to a subscriber.
    let mut events = std::process::Command::new(env!("CARGO_BIN_EXE_tunwall"))
        .args(["events", "-s"])
        .arg(&t.socket)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("tunwall events");
    std::thread::sleep(Duration::from_millis(300));
    let out = t.in_client(&["ping", "-c", "1", "-W", "2", SERVER4]);
    assert!(ok(&out));
    // SIGHUP reloads the file: a new filter blocks pings from now on.
    t.rewrite_config(|c| c + "\n[[filter]]\nname = \"no-ping\"\nlayer = \"auth_connect\"\naction = \"block\"\nprotocol = \"icmp\"\n");
    let pid = t.pid();
    let _ = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status();
    let reloaded = t.wait_event("policy_reloaded", |e| e["event"] == "policy_reloaded");
    assert_eq!(reloaded["generation"], 2);
    assert_eq!(
        reloaded["changed_layers"],
        serde_json::json!(["auth_connect"])
    );
    let out = t.in_client(&["ping", "-c", "1", "-W", "1", SERVER4]);
    assert!(
        !ok(&out),
        "the reloaded policy blocks the existing echo flow"
    );
    let _ = events.kill();
    let streamed =
        String::from_utf8_lossy(&events.wait_with_output().expect("events output").stdout)
            .to_string();
    let lines: Vec<Value> = streamed
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        lines
            .iter()
            .any(|e| e["event"] == "flow_created" && e["protocol"] == "icmp"),
        "{streamed}"
    );
    assert!(
        lines.iter().any(|e| e["event"] == "policy_reloaded"),
        "{streamed}"
    );
    assert!(
        lines
            .iter()
            .all(|e| e["ts"].as_str().is_some_and(|ts| ts.ends_with('Z'))),
        "{streamed}"
    );
    // Prometheus text format.
    let prom = text(&t.cli(&["stats", "--prometheus"]));
    assert!(prom.contains("# TYPE tunwall_flows_active gauge"), "{prom}");
    assert!(
        prom.contains("tunwall_layer_decisions_total{layer=\"auth_connect\",action=\"block\"}"),
        "{prom}"
    );
    assert!(prom.contains("tunwall_policy_generation 2"), "{prom}");
    // The human-readable tables.
    assert!(text(&t.cli(&["flows"])).contains("icmp"));
    assert!(text(&t.cli(&["stats"])).contains("policy generation 2"));
    // The control socket is private to its owner.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&t.socket)
        .expect("socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    assert!(t.stop().success());
}

#[test]
fn check_prints_the_policy_or_one_located_error() {
    // No namespace needed: `tunwall check` touches no device.
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/example.toml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tunwall"))
        .args(["check", "-c", example])
        .output()
        .expect("check");
    assert!(ok(&out), "{}", text(&out));
    let printed = text(&out);
    let order: Vec<usize> = [
        "layer auth_connect",
        "sublayer admin",
        "ssh-from-admins",
        "sublayer inspection",
        "limit-new-ssh",
    ]
    .iter()
    .map(|s| {
        printed
            .find(s)
            .unwrap_or_else(|| panic!("{s} missing from:\n{printed}"))
    })
    .collect();
    assert!(
        order[1] < order[2] && order[2] < order[3] && order[3] < order[4],
        "evaluation order:\n{printed}"
    );
    let dir = std::env::temp_dir().join(format!("tunwall-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[flows]\nudp_idle = 60\n").expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tunwall"))
        .args(["check", "-c"])
        .arg(&bad)
        .output()
        .expect("check");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(1));
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(
        msg.contains("bad.toml:2:12:") && msg.contains("a bare number is not a duration"),
        "{msg}"
    );
    assert_eq!(msg.lines().count(), 1, "one clear message: {msg}");
}

#[test]
fn an_existing_device_is_attached_and_left_as_it_was() {
    require_netns!();
    let mut t = Topology::with_existing_lan_device(DEFAULT_FLOWS, "");
    let out = t.in_client(&["ping", "-c", "1", "-W", "2", SERVER4]);
    assert!(
        ok(&out),
        "traffic through an attached device: {}",
        text(&out)
    );
    assert!(t.stop().success());
    // The device stays (tunwall did not create it), without what tunwall added.
    assert!(
        t.device_exists(&t.client, &t.lan_dev),
        "the persistent device must stay"
    );
    let addrs = t.in_client(&["ip", "-o", "addr", "show", "dev", &t.lan_dev]);
    assert!(
        !text(&addrs).contains(CLIENT4),
        "address left behind: {}",
        text(&addrs)
    );
    let routes = t.in_client(&["ip", "route", "show", "198.18.2.0/24"]);
    assert!(
        text(&routes).trim().is_empty(),
        "kernel route left behind: {}",
        text(&routes)
    );
    assert!(
        !t.device_exists(&t.server, &t.wan_dev),
        "the created device must go"
    );
}
