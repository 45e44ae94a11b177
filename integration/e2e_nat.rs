//! Address translation end to end (SPEC §9): the real binary between a
//! client and a server namespace, with real clients. The public address is
//! 198.18.2.1 / fd00:2::1: inside the server's on-link prefix, so the
//! server's kernel sends its answers to it into tunwall, where it routes
//! nowhere until translated back.

mod netns;

use netns::{CLIENT4, CLIENT6, SERVER4, SERVER6, Topology};
use serde_json::Value;

const PUBLIC4: &str = "198.18.2.1";
const PUBLIC6: &str = "fd00:2::1";

const MASQUERADE: &str = r#"
[[filter]]
name = "masquerade"
layer = "bind_redirect"
action = "redirect"
arrival_port = "lan"
to_address = ["198.18.2.1", "fd00:2::1"]
to_port = "20000-20999"
"#;

fn family(addr: &str) -> &'static str {
    if addr.contains(':') {
        "socket.AF_INET6"
    } else {
        "socket.AF_INET"
    }
}

/// A server that answers every TCP connection and UDP datagram with the
/// peer address it sees, then keeps serving.
fn whoami_server(addr: &str, port: u16) -> String {
    format!(
        "import socket,threading
f={f}
t=socket.socket(f);t.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);t.bind(('{addr}',{port}));t.listen(8)
u=socket.socket(f,socket.SOCK_DGRAM);u.bind(('{addr}',{port}))
def udp():
 while True:
  d,a=u.recvfrom(2048);u.sendto(('%s %d'%(a[0],a[1])).encode(),a)
threading.Thread(target=udp,daemon=True).start()
while True:
 c,a=t.accept();c.sendall(('%s %d'%(a[0],a[1])).encode());c.close()
",
        f = family(addr)
    )
}

/// Connects by TCP (retrying while the server starts) and prints the answer.
fn ask_tcp(dst: &str, port: u16) -> String {
    format!(
        "import socket,time
for i in range(40):
 try:
  s=socket.create_connection(('{dst}',{port}),timeout=2);print(s.recv(100).decode());break
 except (ConnectionRefusedError,socket.timeout):
  time.sleep(0.1)
"
    )
}

/// Asks by UDP from a connected socket (answers from another source are
/// ignored by the kernel) and prints the answer, "timeout" or "refused".
fn ask_udp(dst: &str, port: u16) -> String {
    format!(
        "import socket
s=socket.socket({f},socket.SOCK_DGRAM);s.settimeout(0.5);s.connect(('{dst}',{port}))
for i in range(6):
 s.send(b'?')
 try:
  print(s.recv(100).decode());break
 except socket.timeout:
  pass
 except ConnectionRefusedError:
  print('refused');break
else:
 print('timeout')
",
        f = family(dst)
    )
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The translated flow that `pred` picks.
fn translated_flow(t: &Topology, pred: impl Fn(&Value) -> bool) -> Value {
    t.flows()
        .into_iter()
        .find(|f| !f["translation"].is_null() && pred(f))
        .unwrap_or_else(|| panic!("no such translated flow: {:#?}", t.flows()))
}

#[test]
fn masquerade_v4_and_v6_the_server_sees_only_the_public_address() {
    require_netns!();
    let mut t = Topology::new("max_flows = 1000", MASQUERADE);
    let server_ns = t.server.clone();
    for (server, client, public, port) in [
        (SERVER4, CLIENT4, PUBLIC4, 7100),
        (SERVER6, CLIENT6, PUBLIC6, 7106),
    ] {
        t.spawn(&server_ns, &["python3", "-c", &whoami_server(server, port)]);
        let seen = stdout(&t.python(&t.client, &ask_tcp(server, port)));
        let (addr, peer_port) = seen.split_once(' ').unwrap_or_else(|| panic!("{seen:?}"));
        assert_eq!(addr, public, "the server's view of its peer");
        let peer_port: u16 = peer_port.parse().unwrap();
        assert!((20000..=20999).contains(&peer_port), "{peer_port}");
        let flow = translated_flow(&t, |f| {
            f["translation"]["local_port"] == peer_port && f["remote_port"] == port
        });
        assert_eq!(flow["local_addr"], client);
        assert_eq!(flow["translation"]["local_addr"], public);
        assert_eq!(flow["translation"]["local_port"], peer_port);
        t.wait_event("port_assigned", |e| {
            e["event"] == "port_assigned" && e["translated_port"] == peer_port
        });
        // UDP too, from a fixed port: the answer comes back to the client.
        let seen = stdout(&t.python(&t.client, &ask_udp(server, port)));
        assert!(seen.starts_with(&format!("{public} ")), "{seen}");
    }
    let stats = t.stats();
    assert!(
        stats["nat"]["ports_in_use"].as_u64().unwrap() >= 2,
        "{stats}"
    );
}

#[test]
fn port_forward_reaches_the_inside_server() {
    require_netns!();
    let forward = r#"
[[filter]]
name = "forward"
layer = "bind_redirect"
action = "redirect"
arrival_port = "wan"
local_address = "198.18.2.1"
local_port = 8080
to_address = "198.18.1.10"
to_port = 8000

[[filter]]
name = "forward-in"
layer = "auth_recv_accept"
action = "permit"
local_port = 8000
flags = ["redirected"]
"#;
    let mut t = Topology::new("max_flows = 1000", forward);
    let client_ns = t.client.clone();
    t.spawn(
        &client_ns,
        &["python3", "-c", &whoami_server(CLIENT4, 8000)],
    );
    // From the server's side: connect to the public address and port.
    let seen = stdout(&t.python(&t.server, &ask_tcp(PUBLIC4, 8080)));
    assert!(
        seen.starts_with(&format!("{SERVER4} ")),
        "inside saw {seen:?}"
    );
    let client_port: u16 = seen.split(' ').nth(1).unwrap().parse().unwrap();
    let flow = translated_flow(&t, |f| f["remote_port"] == client_port);
    assert_eq!(flow["local_port"], 8000);
    assert_eq!(flow["translation"]["local_addr"], PUBLIC4);
    assert_eq!(flow["translation"]["local_port"], 8080);
    // The inside server itself stays closed to direct connections.
    let direct = stdout(&t.python(&t.server, &ask_udp(CLIENT4, 8000)));
    assert_eq!(direct, "timeout");
}

#[test]
fn dns_connect_redirect_answers_come_from_the_address_asked() {
    require_netns!();
    let dns = r#"
[[filter]]
name = "dns"
layer = "connect_redirect"
action = "redirect"
protocol = "udp"
remote_port = 53
to_address = ["198.18.2.20", "fd00:2::20"]
to_port = 5353
"#;
    let mut t = Topology::new("max_flows = 1000", dns);
    let server_ns = t.server.clone();
    for (server, asked) in [(SERVER4, "198.18.2.99"), (SERVER6, "fd00:2::99")] {
        t.spawn(&server_ns, &["python3", "-c", &whoami_server(server, 5353)]);
        // The connected socket accepts the answer only from what it asked
        // ("refused": the resolver is not up yet).
        let mut seen = String::new();
        for _ in 0..20 {
            seen = stdout(&t.python(&t.client, &ask_udp(asked, 53)));
            if seen != "refused" {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let client = if server.contains(':') {
            CLIENT6
        } else {
            CLIENT4
        };
        assert!(seen.starts_with(&format!("{client} ")), "{seen:?}");
    }
    let flow = translated_flow(&t, |f| f["remote_port"] == 53);
    assert_eq!(flow["translation"]["remote_port"], 5353);
}

#[test]
fn ping_and_port_unreachable_through_masquerade() {
    require_netns!();
    let t = Topology::new("max_flows = 1000", MASQUERADE);
    for server in [SERVER4, SERVER6] {
        let out = t.in_client(&["ping", "-c", "2", "-i", "0.2", "-W", "2", server]);
        assert!(out.status.success(), "ping {server}: {}", stdout(&out));
        // Nothing listens on port 9: the server's port unreachable is about
        // the public address and comes back translated to the client.
        let seen = stdout(&t.python(&t.client, &ask_udp(server, 9)));
        assert_eq!(seen, "refused", "to {server}");
    }
    let flows = t.flows();
    let ping = flows
        .iter()
        .find(|f| f["icmp_id"].is_number() && !f["translation"].is_null())
        .expect("a translated ping flow");
    assert!(ping["translation"]["icmp_id"].is_number());
    assert!(t.stats()["related_icmp"].as_u64().unwrap() >= 2);
}

#[test]
fn iperf3_through_masquerade_with_offload() {
    require_netns!();
    let mut t = Topology::with_offload(true, "max_flows = 1000", MASQUERADE);
    let server_ns = t.server.clone();
    t.spawn(&server_ns, &["iperf3", "-s", "-1", "-B", SERVER4]);
    let mut report = Value::Null;
    for _ in 0..30 {
        let out = t.in_client(&["iperf3", "-c", SERVER4, "-t", "1", "-J"]);
        report = serde_json::from_slice(&out.stdout).unwrap_or_default();
        // "Connection refused" until the server listens.
        if out.status.success() && report["error"].is_null() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let bytes = report["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0);
    assert!(
        bytes > 1_000_000,
        "only {bytes} bytes arrived: {report}\nstats: {}\nevents: {:#?}",
        t.stats(),
        t.events()
            .into_iter()
            .filter(|e| e["event"] != "discard" || e["reason"] != "no_route")
            .collect::<Vec<_>>()
    );
    let peer = report["start"]["connected"][0]["remote_host"].clone();
    assert_eq!(peer, SERVER4);
    assert_eq!(t.discards("tcp_out_of_window"), 0);
}
