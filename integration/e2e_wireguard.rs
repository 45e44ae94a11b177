//! End to end with real WireGuard (SPEC §1 shape (b), §11): tunwall on a
//! VPN gateway behind wireguard-go, identities from the WireGuard peers.
//! alice may reach the server's port A (7001) and not B (7002), bob the
//! reverse, carol (a peer of no identity) neither; a peer removed from the
//! interface loses its established connection within one refresh; a packet
//! entering the inside port from outside every peer's allowed-ips matches
//! no identity. Fails (does not skip) without wireguard-go, /dev/net/tun
//! or CAP_NET_ADMIN.

mod netns;

use netns::vpn::{ALICE, BOB, CAROL, SERVER, VpnLab};
use serde_json::Value;
use std::collections::HashMap;
use std::time::{Duration, Instant};

const PORT_A: u16 = 7001;
const PORT_B: u16 = 7002;
const IPERF: u16 = 5201;

fn policy(env: &HashMap<String, String>) -> String {
    let wg = &env["WG_GW"];
    format!(
        r#"
[defaults]
auth_connect = "block"

[identities]
alice = {{ wireguard = "{wg}", peer = "{alice}" }}
bob = {{ wireguard = "{wg}", peer = "{bob}" }}

[[filter]]
name = "alice-a"
layer = "auth_connect"
action = "permit"
local_identity = "alice"
remote_port = [{PORT_A}, {IPERF}]

[[filter]]
name = "bob-b"
layer = "auth_connect"
action = "permit"
local_identity = "bob"
remote_port = {PORT_B}
"#,
        alice = env["KEY_ALICE"],
        bob = env["KEY_BOB"],
    )
}

/// A TCP server on `port` that echoes, and with `tick` also sends a byte
/// every 0.1 s of its own.
fn server(port: u16, tick: bool) -> String {
    format!(
        "import socket,threading,time\n\
s=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
s.bind(('{SERVER}',{port}))\ns.listen(8)\n\
def ticks(c):\n while {tick}:\n  try: c.send(b't')\n  except Exception: return\n  time.sleep(0.1)\n\
def h(c):\n threading.Thread(target=ticks,args=(c,),daemon=True).start()\n while True:\n  try: d=c.recv(4096)\n  except Exception: return\n  if not d: return\n  c.sendall(d)\n\
while True:\n c,_=s.accept()\n threading.Thread(target=h,args=(c,),daemon=True).start()\n",
        tick = if tick { "True" } else { "False" }
    )
}

/// Connects to the server's `port` and exchanges a message: "ok" or the error.
fn connect(port: u16) -> String {
    format!(
        "import socket\ntry:\n s=socket.create_connection(('{SERVER}',{port}),timeout=1)\n s.sendall(b'hi')\n print('ok' if s.recv(16).startswith(b'hi') else 'bad')\nexcept Exception as e:\n print(type(e).__name__)\n"
    )
}

fn wait_listening(lab: &VpnLab, port: u16) {
    for _ in 0..50 {
        let out = lab.exec("NS_SRV", &["ss", "-Hltn"]);
        if String::from_utf8_lossy(&out.stdout).contains(&format!(":{port} ")) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the server did not listen on {port}");
}

fn reaches(lab: &VpnLab, client: &str, port: u16) -> bool {
    let out = lab.exec(client, &["python3", "-c", &connect(port)]);
    String::from_utf8_lossy(&out.stdout).trim() == "ok"
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// iperf3 from alice to the server; the sender's bits per second.
fn iperf(lab: &mut VpnLab) -> f64 {
    let srv = lab.var("NS_SRV").to_string();
    lab.gw().spawn(
        &srv,
        &["iperf3", "-s", "-1", "-B", SERVER, "-p", &IPERF.to_string()],
    );
    wait_listening(lab, IPERF);
    let out = lab.exec(
        "NS_ALICE",
        &[
            "iperf3",
            "-c",
            SERVER,
            "-p",
            &IPERF.to_string(),
            "-t",
            "2",
            "-J",
        ],
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v["end"]["sum_sent"]["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("iperf3: {}", String::from_utf8_lossy(&out.stdout)))
}

/// Sends one UDP datagram into the inside TUN port from the gateway itself,
/// with a source address of our choosing (as if WireGuard had delivered it).
fn inject(lab: &VpnLab, src: &str, sport: u16) {
    let code = format!(
        "import socket,struct\n\
udp=struct.pack('!HHHH',{sport},{PORT_A},12,0)+b'ping'\n\
ip=struct.pack('!BBHHHBBH4s4s',0x45,0,20+len(udp),1,0,64,17,0,socket.inet_aton('{src}'),socket.inet_aton('{SERVER}'))\n\
s=socket.socket(socket.AF_INET,socket.SOCK_RAW,socket.IPPROTO_RAW)\n\
s.setsockopt(socket.SOL_SOCKET,socket.SO_BINDTODEVICE,b'{dev}')\n\
s.sendto(ip+udp,('{SERVER}',0))\n",
        dev = lab.var("TUN_VPN"),
    );
    let out = lab.exec("NS_GW", &["python3", "-c", &code]);
    assert!(out.status.success(), "inject: {out:?}");
}

#[test]
fn identities_from_wireguard_peers_decide_who_reaches_what() {
    let mut lab = VpnLab::new("5s", policy);
    let srv = lab.var("NS_SRV").to_string();
    for port in [PORT_A, PORT_B] {
        lab.gw()
            .spawn(&srv, &["python3", "-c", &server(port, false)]);
        wait_listening(&lab, port);
    }
    let table = [
        ("NS_ALICE", PORT_A, true),
        ("NS_ALICE", PORT_B, false),
        ("NS_BOB", PORT_A, false),
        ("NS_BOB", PORT_B, true),
        ("NS_CAROL", PORT_A, false),
        ("NS_CAROL", PORT_B, false),
    ];
    for (client, port, expected) in table {
        assert_eq!(reaches(&lab, client, port), expected, "{client} → {port}");
    }

    // Each refused attempt is blocked by auth_connect's default, and the
    // flows that exist carry their endpoints' identities.
    let gw = lab.gw();
    assert!(gw.discards("auth_connect_blocked") >= 4);
    let ids = gw.cli(&["identities", "--json"]);
    let ids: Value = serde_json::from_slice(&ids.stdout).expect("identities json");
    let by_name = |n: &str| {
        ids.as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == n)
            .cloned()
    };
    let alice = by_name("alice").expect("alice");
    assert_eq!(alice["source"], "wireguard");
    assert_eq!(alice["port"], "vpn");
    assert_eq!(strings(&alice["addresses"]), vec![format!("{ALICE}/32")]);
    assert_eq!(
        strings(&by_name("bob").unwrap()["addresses"]),
        vec![format!("{BOB}/32")]
    );
    let flows = gw.flows();
    let of = |addr: &str| flows.iter().find(|f| f["local_addr"] == addr).cloned();
    let a = of(ALICE).expect("alice's flow");
    assert_eq!(strings(&a["local_identity"]), vec!["alice"]);
    assert!(strings(&a["remote_identity"]).is_empty());
    assert_eq!(
        strings(&of(BOB).expect("bob's flow")["local_identity"]),
        vec!["bob"]
    );
    assert!(of(CAROL).is_none());

    // Into the inside port from an address no peer has: no identity, blocked;
    // from alice's address (what WireGuard delivers for her): permitted.
    let blocked = lab.gw().discards("auth_connect_blocked");
    inject(&lab, "198.18.100.99", 45000);
    inject(&lab, ALICE, 45001);
    let gw = lab.gw();
    let deadline = Instant::now() + Duration::from_secs(5);
    while gw.discards("auth_connect_blocked") == blocked && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(gw.discards("auth_connect_blocked"), blocked + 1);
    let flows = gw.flows();
    assert!(!flows.iter().any(|f| f["local_addr"] == "198.18.100.99"));
    let injected = flows
        .iter()
        .find(|f| f["local_port"] == 45001)
        .expect("the datagram from alice's address made a flow");
    assert_eq!(strings(&injected["local_identity"]), vec!["alice"]);

    // A reload resolves the file's identities against the peers last read:
    // alice keeps her address (and port A), the new filter is in force.
    let gw = lab.gw();
    gw.rewrite_config(|text| {
        format!("{text}\n[[filter]]\nname = \"bob-a\"\nlayer = \"auth_connect\"\naction = \"permit\"\nlocal_identity = \"bob\"\nremote_port = {PORT_A}\n")
    });
    let out = gw.cli(&["reload"]);
    assert!(out.status.success(), "reload: {out:?}");
    assert!(reaches(&lab, "NS_ALICE", PORT_A));
    assert!(reaches(&lab, "NS_BOB", PORT_A));
    assert!(!reaches(&lab, "NS_CAROL", PORT_A));

    // Throughput over WireGuard, through tunwall and around it (not asserted).
    let through = iperf(&mut lab);
    lab.bypass(true);
    let around = iperf(&mut lab);
    lab.bypass(false);
    println!(
        "iperf3 alice → server over wireguard-go: {:.0} Mbit/s through tunwall, {:.0} Mbit/s without",
        through / 1e6,
        around / 1e6
    );
}

#[test]
fn removing_a_peer_cuts_its_established_connection_within_one_refresh() {
    let refresh = Duration::from_millis(500);
    let mut lab = VpnLab::new("500ms", policy);
    let srv = lab.var("NS_SRV").to_string();
    let alice_ns = lab.var("NS_ALICE").to_string();
    lab.gw()
        .spawn(&srv, &["python3", "-c", &server(PORT_A, true)]);
    wait_listening(&lab, PORT_A);
    // alice holds a connection open, reading the server's ticks.
    let hold = format!(
        "import socket,time\ns=socket.create_connection(('{SERVER}',{PORT_A}),timeout=30)\ntime.sleep(30)\n"
    );
    lab.gw().spawn(&alice_ns, &["python3", "-c", &hold]);
    let gw = lab.gw();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gw
        .flows()
        .iter()
        .any(|f| f["local_addr"] == ALICE && f["established"] == true)
    {
        assert!(
            Instant::now() < deadline,
            "alice's connection did not come up"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let removed = Instant::now();
    let out = lab.exec(
        "NS_GW",
        &[
            "wg",
            "set",
            lab.var("WG_GW"),
            "peer",
            lab.var("KEY_ALICE"),
            "remove",
        ],
    );
    assert!(out.status.success(), "wg set: {out:?}");
    let gw = lab.gw();
    let changed = gw.wait_event("identities_changed", |e| {
        e["event"] == "identities_changed" && strings(&e["identities"]) == ["alice"]
    });
    assert_eq!(strings(&changed["changed_layers"]), vec!["auth_connect"]);
    let reauth = gw.wait_event("flow_reauthorized", |e| {
        e["event"] == "flow_reauthorized" && e["local_addr"] == ALICE
    });
    assert_eq!(reauth["trigger"], "identity_change");
    assert_eq!(reauth["result"], "block");
    gw.wait_event("flow_closed", |e| {
        e["event"] == "flow_closed" && e["local_addr"] == ALICE && e["reason"] == "reauth_blocked"
    });
    let took = removed.elapsed();
    println!("alice's connection cut {took:?} after her peer was removed (refresh {refresh:?})");
    // One refresh, plus the next tick and the event file's latency.
    assert!(took < refresh + Duration::from_secs(2), "took {took:?}");
    assert!(!gw.flows().iter().any(|f| f["local_addr"] == ALICE));
    // The server's later segments find no flow: tunwall, not WireGuard alone, cut it.
    let dropped = gw.discards("tcp_no_flow");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(gw.discards("tcp_no_flow") > dropped);

    // The gateway's wireguard-go goes away: reads fail, are counted, and
    // the last known peers stay in force.
    let pids = std::fs::read_to_string(lab.dir.join("pids")).expect("pids");
    let gateway_wg = pids.lines().next().expect("the gateway's wireguard-go");
    assert!(
        std::process::Command::new("kill")
            .arg(gateway_wg)
            .status()
            .unwrap()
            .success()
    );
    let gw = lab.gw();
    let deadline = Instant::now() + Duration::from_secs(5);
    while gw.stats()["wireguard_read_errors"].as_u64().unwrap_or(0) < 2 {
        assert!(
            Instant::now() < deadline,
            "no failed read counted:\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let ids = gw.cli(&["identities", "--json"]);
    let ids: Value = serde_json::from_slice(&ids.stdout).expect("identities json");
    let bob = ids
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "bob")
        .unwrap();
    assert_eq!(strings(&bob["addresses"]), vec![format!("{BOB}/32")]);
    assert!(gw.log().contains("wireguard read failed"));
}

#[test]
fn an_unreadable_interface_stops_the_start_before_any_device() {
    let tag = std::process::id() % 100_000;
    let (iface, dev) = (format!("twnx{tag}"), format!("twnd{tag}"));
    let dir = std::env::temp_dir().join(format!("tunwall-wgstart-{tag}"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("t.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\ncontrol_socket = \"{}\"\n\n[[port]]\nname = \"vpn\"\ndevice = \"{dev}\"\nzone = \"inside\"\nroutes = [\"198.18.100.0/24\"]\n\n\
             [[wireguard]]\ninterface = \"{iface}\"\n",
            dir.join("control.sock").display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tunwall"))
        .args(["run", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("wireguard interface \"{iface}\"")),
        "{stderr}"
    );
    let link = std::process::Command::new("ip")
        .args(["link", "show", &dev])
        .output()
        .unwrap();
    assert!(!link.status.success(), "the device was created");
}
