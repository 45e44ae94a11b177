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
    // The redirect filter counts the flows it translated.
    let counters = &stats["filters"]["masquerade"];
    assert!(counters["matches"].as_u64().unwrap() >= 4, "{stats}");
    assert!(counters["decisions"].as_u64().unwrap() >= 4, "{stats}");
    // The text forms: a translated flow's outside endpoints under its
    // line, and the nat section of stats.
    let text = String::from_utf8_lossy(&t.cli(&["flows"]).stdout).to_string();
    let nat_line = text
        .lines()
        .find(|l| l.contains(" nat ") && l.contains(&format!("{PUBLIC4}:")))
        .unwrap_or_else(|| panic!("no nat line for {PUBLIC4}:\n{text}"));
    assert!(nat_line.contains("masquerade"), "{nat_line}");
    assert!(text.contains(&format!("[{PUBLIC6}]:")), "{text}");
    let text = String::from_utf8_lossy(&t.cli(&["stats"]).stdout).to_string();
    assert!(text.contains("nat: "), "{text}");
    assert!(text.contains("ports in use"), "{text}");
}

#[test]
fn port_forward_reaches_the_inside_server_v4_and_v6() {
    require_netns!();
    let forward = r#"
[[filter]]
name = "forward"
layer = "bind_redirect"
action = "redirect"
arrival_port = "wan"
local_address = ["198.18.2.1", "fd00:2::1"]
local_port = 8080
to_address = ["198.18.1.10", "fd00:1::10"]
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
    for (inside, outside, public) in [(CLIENT4, SERVER4, PUBLIC4), (CLIENT6, SERVER6, PUBLIC6)] {
        t.spawn(&client_ns, &["python3", "-c", &whoami_server(inside, 8000)]);
        // From the server's side: connect to the public address and port.
        let seen = stdout(&t.python(&t.server, &ask_tcp(public, 8080)));
        assert!(
            seen.starts_with(&format!("{outside} ")),
            "inside saw {seen:?} (from {outside} to {public})"
        );
        let client_port: u16 = seen.split(' ').nth(1).unwrap().parse().unwrap();
        let flow = translated_flow(&t, |f| {
            f["remote_port"] == client_port && f["remote_addr"] == outside
        });
        assert_eq!(flow["local_addr"], inside);
        assert_eq!(flow["local_port"], 8000);
        assert_eq!(flow["translation"]["local_addr"], public);
        assert_eq!(flow["translation"]["local_port"], 8080);
        // The inside server itself stays closed to direct connections.
        let direct = stdout(&t.python(&t.server, &ask_udp(inside, 8000)));
        assert_eq!(direct, "timeout", "direct to {inside}");
    }
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

/// A UDP datagram with TTL (hop limit) 1, traceroute's first probe, from a
/// connected socket with IP_RECVERR: prints the ICMP error the kernel
/// matched to the socket (its type, code and the router's address) — it
/// matches only if the quoted header came back with the client's own
/// addresses and ports.
fn udp_probe(dst: &str, port: u16) -> String {
    let v6 = dst.contains(':');
    // Numbers from <linux/in.h>, <linux/in6.h>: not every Python names them.
    let (level, ttl, recverr) = if v6 {
        ("socket.IPPROTO_IPV6", 16, 25)
    } else {
        ("socket.IPPROTO_IP", 2, 11)
    };
    let offender = if v6 { 24 } else { 20 };
    format!(
        "import socket,struct,time,ipaddress
s=socket.socket({f},socket.SOCK_DGRAM);s.connect(('{dst}',{port}))
s.setsockopt({level},{ttl},1);s.setsockopt({level},{recverr},1)
for i in range(6):
 try:
  s.send(b'probe')
 except OSError:
  pass
 time.sleep(0.3)
 try:
  d,anc,fl,a=s.recvmsg(512,512,socket.MSG_ERRQUEUE|socket.MSG_DONTWAIT)
 except BlockingIOError:
  continue
 for lvl,typ,data in anc:
  errno,origin,t,c,pad,info,dat=struct.unpack_from('IBBBBII',data)
  fam=struct.unpack_from('H',data,16)[0]
  addr=data[{offender}:{offender}+{alen}] if fam else b''
  print(t,c,ipaddress.ip_address(addr) if addr else '-')
 break
else:
 print('none')
",
        f = family(dst),
        alen = if v6 { 16 } else { 4 },
    )
}

#[test]
fn time_exceeded_comes_back_through_masquerade() {
    require_netns!();
    // The server's namespace routes on to 198.18.3.0/24 and fd00:3::/64
    // (a veth pair of its own): a router behind the gateway, which answers
    // an expiring packet with a time-exceeded error to the public address.
    let mut t = Topology::prepare(true, false, "max_flows = 1000", MASQUERADE);
    t.rewrite_config(|c| {
        c.replace(
            "\nroutes = [\"198.18.2.0/24\", \"fd00:2::/64\"]",
            "\nroutes = [\"198.18.2.0/24\", \"fd00:2::/64\", \"198.18.3.0/24\", \"fd00:3::/64\"]",
        )
    });
    t.start();
    let (server, client) = (t.server.clone(), t.client.clone());
    let far = format!("twf{}", t.lan_dev.trim_start_matches("twl"));
    for args in [
        vec![
            "ip", "link", "add", &far, "type", "veth", "peer", "name", "twfar",
        ],
        vec!["ip", "addr", "add", "198.18.3.1/24", "dev", &far],
        vec!["ip", "addr", "add", "fd00:3::1/64", "dev", &far, "nodad"],
        vec!["ip", "link", "set", "twfar", "up"],
        vec!["ip", "link", "set", &far, "up"],
        vec!["sysctl", "-qw", "net.ipv4.ip_forward=1"],
        vec!["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"],
    ] {
        let out = t.exec(&server, &args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for net in ["198.18.3.0/24", "fd00:3::/64"] {
        let out = t.exec(&client, &["ip", "route", "add", net, "dev", &t.lan_dev]);
        assert!(
            out.status.success(),
            "route {net}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for (far_host, router, v6) in [("198.18.3.9", SERVER4, false), ("fd00:3::9", SERVER6, true)] {
        // ping -t 1: the echo request expires at the router; the error
        // quotes it with the public address and the translated id.
        let out = t.in_client(&["ping", "-c", "1", "-t", "1", "-W", "2", far_host]);
        let text = stdout(&out);
        let expected = if v6 {
            "Time exceeded"
        } else {
            "Time to live exceeded"
        };
        assert!(
            text.contains(expected) && text.contains(router),
            "ping -t 1 {far_host}: {text}\nevents: {:#?}",
            t.events()
        );
        // traceroute's UDP probe: the error reaches the client's socket.
        let out = t.python(&client, &udp_probe(far_host, 33434));
        let seen = stdout(&out);
        let (ty, code) = if v6 { (3, 0) } else { (11, 0) };
        assert_eq!(
            seen,
            format!("{ty} {code} {router}"),
            "UDP probe to {far_host}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(
        t.stats()["related_icmp"].as_u64().unwrap() >= 4,
        "{}",
        t.stats()
    );
}
