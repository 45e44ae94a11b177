//! End-to-end tests of pended classification (SPEC §10): the real binary
//! holds new flows under the `ask` callout until `tunwall decide` (or the
//! decider script of the README, reading `tunwall events`) completes them.

mod netns;

use netns::{CLIENT4, SERVER4, Topology};
use serde_json::Value;
use std::process::Output;
use std::time::{Duration, Instant};

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// An inside TCP server on 8080 that echoes what one connection sends.
fn inside_echo(port: u16) -> String {
    format!(
        "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('{CLIENT4}',{port}))\ns.listen(4)\nwhile True:\n c,_=s.accept()\n c.sendall(c.recv(1024))\n c.close()\n"
    )
}

/// Connects from outside, sends a line, prints the echo or why it failed.
fn outside_connect(port: u16, timeout: u32) -> String {
    format!(
        "import socket\ntry:\n s=socket.create_connection(('{CLIENT4}',{port}),timeout={timeout})\n s.sendall(b'decided by a person')\n print(s.recv(1024).decode())\nexcept Exception as e:\n print('failed',type(e).__name__)\n"
    )
}

fn wait_until(what: &str, t: &Topology, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            t.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_listening(t: &Topology, inside: bool, port: u16, udp: bool) {
    let args = if udp {
        ["ss", "-Hlun"]
    } else {
        ["ss", "-Hltn"]
    };
    wait_until(&format!("a listener on {port}"), t, || {
        let out = if inside {
            t.in_client(&args)
        } else {
            t.in_server(&args)
        };
        String::from_utf8_lossy(&out.stdout).contains(&format!(":{port} "))
    });
}

fn pending(t: &Topology) -> Vec<Value> {
    let out = t.cli(&["pending", "--json"]);
    assert!(out.status.success(), "pending: {}", text(&out));
    serde_json::from_slice::<Value>(&out.stdout)
        .expect("pending json")
        .as_array()
        .cloned()
        .unwrap_or_default()
}

const ASK_INBOUND_WEB: &str = r#"
[[filter]]
name = "ask-web"
layer = "auth_recv_accept"
action = "callout"
callout = "ask"
protocol = "tcp"
local_port = 8080
"#;

/// The scripted decider of the README: permit whatever is asked.
fn decider(t: &Topology) -> String {
    let bin = env!("CARGO_BIN_EXE_tunwall");
    let socket = t.socket.display();
    format!(
        "{bin} events -s {socket} | jq --unbuffered -r 'select(.event == \"flow_pending\") | .id' |\nwhile read -r id; do {bin} decide -s {socket} \"$id\" permit; done"
    )
}

#[test]
fn an_inbound_connection_held_by_ask_completes_once_permitted() {
    require_netns!();
    let mut t = Topology::new("max_flows = 1000", ASK_INBOUND_WEB);
    let client_ns = t.client.clone();
    t.spawn(&client_ns, &["python3", "-c", &inside_echo(8080)]);
    wait_listening(&t, true, 8080, false);
    let script = decider(&t);
    t.spawn(&client_ns, &["sh", "-c", &script]);
    // The decider subscribes before the connection is tried.
    std::thread::sleep(Duration::from_millis(500));
    let out = t.python(&t.server, &outside_connect(8080, 10));
    assert_eq!(
        text(&out).trim(),
        "decided by a person",
        "the held connection must complete\n{}",
        t.log()
    );
    let pended = t.wait_event("flow_pending", |e| e["event"] == "flow_pending");
    assert_eq!(pended["filter"], "ask-web");
    assert_eq!(pended["layer"], "auth_recv_accept");
    assert_eq!(pended["state"], "pending");
    assert_eq!(pended["direction"], "inbound");
    let id = pended["id"].as_u64().expect("id");
    let reauth = t.wait_event("flow_reauthorized", |e| {
        e["event"] == "flow_reauthorized" && e["id"] == id
    });
    assert_eq!(reauth["trigger"], "pend_complete");
    assert_eq!(reauth["result"], "permit");
    // Decided once: a second decision, or one for an unknown id, exits 1.
    let again = t.cli(&["decide", &id.to_string(), "block"]);
    assert!(!again.status.success(), "{}", text(&again));
    assert!(text(&again).contains("no pending flow"), "{}", text(&again));
    assert!(!t.cli(&["decide", "999999", "permit"]).status.success());
    assert!(!t.cli(&["decide", "x", "permit"]).status.success());
}

#[test]
fn an_inbound_connection_blocked_by_decision_fails() {
    require_netns!();
    let mut t = Topology::new("max_flows = 1000", ASK_INBOUND_WEB);
    let client_ns = t.client.clone();
    t.spawn(&client_ns, &["python3", "-c", &inside_echo(8080)]);
    wait_listening(&t, true, 8080, false);
    let answer = std::thread::scope(|scope| {
        let client = scope.spawn(|| t.python(&t.server, &outside_connect(8080, 4)));
        let pended = t.wait_event("flow_pending", |e| e["event"] == "flow_pending");
        let id = pended["id"].as_u64().expect("id");
        wait_until("the flow in `tunwall pending`", &t, || {
            pending(&t).iter().any(|p| p["id"] == id)
        });
        let listed = t.cli(&["pending"]);
        assert!(text(&listed).contains("ask-web"), "{}", text(&listed));
        let out = t.cli(&["decide", &id.to_string(), "block"]);
        assert!(out.status.success(), "decide: {}", text(&out));
        let closed = t.wait_event("flow_closed", |e| {
            e["event"] == "flow_closed" && e["id"] == id
        });
        assert_eq!(closed["reason"], "reauth_blocked");
        client.join().expect("client thread")
    });
    assert!(
        text(&answer).starts_with("failed"),
        "a blocked connection must fail: {}",
        text(&answer)
    );
    assert!(t.discards("reauth_blocked") >= 1);
}

#[test]
fn a_held_udp_flow_is_released_in_order() {
    require_netns!();
    let t = Topology::new(
        "max_flows = 1000",
        r#"
[[filter]]
name = "ask-udp"
layer = "auth_connect"
action = "callout"
callout = "ask"
protocol = "udp"
remote_port = 6000
"#,
    );
    let receiver = format!(
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('{SERVER4}',6000))\ns.settimeout(15)\ngot=[]\nwhile len(got)<8:\n got.append(s.recvfrom(100)[0].decode())\nprint(' '.join(got))\n"
    );
    let sender = format!(
        "import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nfor i in range(8):\n s.sendto(str(i).encode(),('{SERVER4}',6000))\n time.sleep(0.01)\n"
    );
    let received = std::thread::scope(|scope| {
        let server = scope.spawn(|| t.python(&t.server, &receiver));
        wait_listening(&t, false, 6000, true);
        let out = t.python(&t.client, &sender);
        assert!(out.status.success(), "{}", text(&out));
        wait_until("eight held packets", &t, || {
            pending(&t)
                .first()
                .is_some_and(|p| p["queued_packets"] == 8)
        });
        let id = pending(&t)[0]["id"].as_u64().expect("id");
        let out = t.cli(&["decide", &id.to_string(), "permit"]);
        assert!(out.status.success(), "decide: {}", text(&out));
        server.join().expect("receiver thread")
    });
    assert_eq!(text(&received).trim(), "0 1 2 3 4 5 6 7");
    let flow = t
        .flows()
        .into_iter()
        .find(|f| f["remote_port"] == 6000)
        .expect("the released flow");
    assert_eq!(flow["state"], "active");
    assert_eq!(flow["packets_out"], 8);
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[test]
fn a_flood_of_new_flows_under_ask_stays_within_the_bounds() {
    require_netns!();
    let mut t = Topology::new(
        "max_flows = 10000\npend_max_flows = 64",
        r#"
[[filter]]
name = "ask-flood"
layer = "auth_connect"
action = "callout"
callout = "ask"
protocol = "udp"
remote_port = 7000
pend_timeout = "1m"
"#,
    );
    let before = rss_kib(t.pid());
    let flood = format!(
        "import socket\nfor i in range(8000):\n s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n for _ in range(3):\n  s.sendto(b'x'*1400,('{SERVER4}',7000))\n s.close()\n"
    );
    let out = t.python(&t.client, &flood);
    assert!(out.status.success(), "{}", text(&out));
    wait_until("the flood to be classified", &t, || {
        t.discards("pend_limit") >= 20_000
    });
    let stats = t.stats();
    assert_eq!(stats["flows_pending"], 64, "{stats:#}");
    assert_eq!(pending(&t).len(), 64);
    // Each pending flow holds its three packets and nothing more is kept:
    // about 64 × 4 KiB, where holding the whole flood would take 33 MB.
    let grown = rss_kib(t.pid()).saturating_sub(before);
    assert!(grown < 16 * 1024, "RSS grew by {grown} KiB");
    // Later sockets may reuse a source port: their packets join the flow.
    let queued: Vec<u64> = pending(&t)
        .iter()
        .map(|p| p["queued_packets"].as_u64().unwrap_or(0))
        .collect();
    assert!(queued.iter().all(|q| (3..=16).contains(q)), "{queued:?}");
    assert_eq!(stats["layers"]["auth_connect"]["pend"], 64);
    // Shutdown completes the pending flows as blocked.
    let status = t.stop();
    assert!(status.success(), "{status}");
    let shut = t
        .events()
        .into_iter()
        .filter(|e| {
            e["event"] == "flow_closed" && e["reason"] == "shutdown" && e["state"] == "pending"
        })
        .count();
    assert_eq!(shut, 64);
}
