//! End-to-end tests of the operator commands (SPEC §12) through the real
//! binary: filtered flow listings, `kill`, per-filter counters.

mod netns;

use netns::{CLIENT4, SERVER4, Topology};
use serde_json::Value;

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

const UDP_FILTER: &str = r#"
[[filter]]
name = "udp-out"
layer = "auth_connect"
action = "permit"
protocol = "udp"
"#;

/// Sends one datagram from the client to each of `ports` of the server.
fn udp_to(t: &Topology, ports: &[u16]) {
    let code = format!(
        "import socket\nfor p in {ports:?}:\n s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n s.sendto(b'x',('{SERVER4}',p))\n"
    );
    let out = t.python(&t.client, &code);
    assert!(out.status.success(), "{}", text(&out));
}

fn json_flows(t: &Topology, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["flows", "--json"];
    all.extend_from_slice(args);
    let out = t.cli(&all);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice::<Value>(&out.stdout)
        .unwrap_or_else(|e| panic!("flows --json is not JSON ({e}): {}", text(&out)))
        .as_array()
        .cloned()
        .expect("an array")
}

#[test]
fn flows_filters_kill_and_filter_counters() {
    require_netns!();
    let t = Topology::new("max_flows = 1000", UDP_FILTER);
    udp_to(&t, &[5300, 5301, 5302]);
    let out = t.in_client(&["ping", "-c", "1", "-W", "2", SERVER4]);
    assert!(out.status.success(), "{}", text(&out));

    assert_eq!(json_flows(&t, &[]).len(), 4);
    let one = json_flows(&t, &["--protocol", "udp", "--port", "5301"]);
    assert_eq!(one.len(), 1, "{one:?}");
    assert_eq!(one[0]["remote_port"], 5301);
    assert_eq!(one[0]["local_addr"], CLIENT4);
    assert_eq!(json_flows(&t, &["--protocol", "icmp"]).len(), 1);
    assert_eq!(
        json_flows(
            &t,
            &[
                "--addr",
                SERVER4,
                "--arrival-port",
                "lan",
                "--direction",
                "outbound"
            ]
        )
        .len(),
        4
    );
    assert_eq!(json_flows(&t, &["--arrival-port", "wan"]).len(), 0);
    assert_eq!(json_flows(&t, &["--limit", "2"]).len(), 2);
    let count = t.cli(&["flows", "--count", "--protocol", "udp"]);
    assert_eq!(
        String::from_utf8_lossy(&count.stdout).trim(),
        "3",
        "{}",
        text(&count)
    );
    let table = text(&t.cli(&["flows", "--protocol", "udp"]));
    assert!(
        table.contains("PROTO") && table.contains("3 flows"),
        "{table}"
    );
    let bad = t.cli(&["flows", "--arrival-port", "dmz"]);
    assert!(!bad.status.success());
    assert!(
        text(&bad).contains("unknown port \"dmz\""),
        "{}",
        text(&bad)
    );

    // kill: by filter, then by id; flow_closed events with reason admin.
    let killed = t.cli(&["kill", "--protocol", "udp", "--port", "5300"]);
    assert!(killed.status.success(), "{}", text(&killed));
    assert_eq!(text(&killed).trim(), "1 flows closed");
    let closed = t.wait_event("flow_closed admin", |e| {
        e["event"] == "flow_closed" && e["reason"] == "admin"
    });
    assert_eq!(closed["remote_port"], 5300);
    let id = json_flows(&t, &["--protocol", "icmp"])[0]["id"]
        .as_u64()
        .unwrap();
    let killed = t.cli(&["kill", "--id", &id.to_string()]);
    assert_eq!(text(&killed).trim(), "1 flows closed");
    assert_eq!(json_flows(&t, &[]).len(), 2);
    let refused = t.cli(&["kill"]);
    assert!(!refused.status.success(), "kill without a filter refuses");
    let all = t.cli(&["kill", "--all"]);
    assert_eq!(text(&all).trim(), "2 flows closed");

    let stats = t.stats();
    assert_eq!(stats["flows_closed"]["admin"], 4, "{stats}");
    assert_eq!(
        stats["flows_closed"]["evicted"], 0,
        "every reason, at zero too"
    );
    let udp = &stats["filters"]["udp-out"];
    assert_eq!(udp["layer"], "auth_connect");
    assert_eq!(udp["matches"], 3, "{stats}");
    assert_eq!(udp["decisions"], 3);
    assert_eq!(udp["flows_created"], 3);
    let prom = text(&t.cli(&["stats", "--prometheus"]));
    assert!(
        prom.contains(
            "tunwall_filter_flows_created_total{layer=\"auth_connect\",filter=\"udp-out\"} 3"
        ),
        "{prom}"
    );
    assert!(prom.contains("tunwall_events_dropped_total 0"), "{prom}");
}

/// Starts `tunwall capture` with `args` against the gateway.
fn start_capture(t: &Topology, args: &[&str]) -> std::process::Child {
    let started = t.log().matches("capture started").count();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_tunwall"))
        .arg("capture")
        .arg("-s")
        .arg(&t.socket)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn capture");
    // The capture is on once the daemon logged it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while t.log().matches("capture started").count() == started {
        assert!(
            std::time::Instant::now() < deadline,
            "no capture:\n{}",
            t.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child
}

/// `tcpdump -n -r FILE`.
fn tcpdump_read(file: &std::path::Path) -> std::process::Output {
    std::process::Command::new("tcpdump")
        .args(["-n", "-r"])
        .arg(file)
        .output()
        .expect("tcpdump")
}

fn finish(child: std::process::Child) -> std::process::Output {
    let mut child = child;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("capture did not end after its count");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

#[test]
fn capture_streams_pcapng_that_tcpdump_and_tshark_read() {
    require_netns!();
    let t = Topology::new("max_flows = 1000", "");
    // Dropped packets, to a file, with their reasons.
    let file = t.dir.join("drops.pcapng");
    let capture = start_capture(&t, &["--discards", "-c", "2", "-w", file.to_str().unwrap()]);
    let refused = t.in_server(&["ping", "-c", "2", "-i", "0.2", "-W", "1", CLIENT4]);
    assert!(!refused.status.success(), "inbound ping is blocked");
    let out = finish(capture);
    assert!(out.status.success(), "{}", text(&out));
    let read = tcpdump_read(&file);
    let shown = text(&read);
    assert!(read.status.success(), "{shown}");
    assert_eq!(
        shown
            .matches(&format!("{SERVER4} > {CLIENT4}: ICMP echo request"))
            .count(),
        2,
        "{shown}"
    );
    let comments = std::process::Command::new("tshark")
        .args(["-r"])
        .arg(&file)
        .args(["-T", "fields", "-e", "frame.comment"])
        .output()
        .expect("tshark");
    let shown = text(&comments);
    assert!(comments.status.success(), "{shown}");
    assert_eq!(
        shown
            .matches("reason=auth_recv_accept_blocked layer=auth_recv_accept filter=- port=wan")
            .count(),
        2,
        "{shown}"
    );

    // Everything, to standard output, piped into tcpdump -r -; the capture
    // is interrupted (it writes whole blocks, so the stream stays readable).
    let mut capture = start_capture(&t, &[]);
    let ok = t.in_client(&["ping", "-c", "1", "-W", "2", SERVER4]);
    assert!(ok.status.success(), "{}", text(&ok));
    std::thread::sleep(std::time::Duration::from_millis(500));
    capture.kill().expect("interrupt the capture");
    let out = capture.wait_with_output().expect("output");
    let mut tcpdump = std::process::Command::new("tcpdump")
        .args(["-n", "-r", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("tcpdump");
    use std::io::Write;
    tcpdump
        .stdin
        .take()
        .unwrap()
        .write_all(&out.stdout)
        .unwrap();
    let read = tcpdump.wait_with_output().unwrap();
    let shown = text(&read);
    assert!(shown.contains("ICMP echo request"), "{shown}");
    assert!(shown.contains("ICMP echo reply"), "{shown}");
    assert_eq!(t.stats()["capture_lost"], 0);
}

/// `capture --filter`: the daemon copies only the packets the expression
/// passes; a bad expression is refused with its column, by the command and
/// by the daemon.
#[test]
fn capture_filter_keeps_only_the_matching_packets() {
    require_netns!();
    let t = Topology::new("max_flows = 1000", UDP_FILTER);
    let bad = t.cli(&["capture", "--filter", "icmp and port"]);
    assert!(!bad.status.success());
    assert!(
        text(&bad).contains("capture filter: at the end: expected a port number"),
        "{}",
        text(&bad)
    );
    // The daemon checks it too (a client that skips the check).
    use std::io::{BufRead, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(&t.socket).expect("connect");
    writeln!(
        stream,
        "{}",
        serde_json::json!({"command": "capture", "filter": "tcp or (udp"})
    )
    .unwrap();
    let mut answer = String::new();
    std::io::BufReader::new(&stream)
        .read_line(&mut answer)
        .unwrap();
    let answer: Value = serde_json::from_str(&answer).expect("a JSON answer");
    assert_eq!(answer["ok"], false, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap_or("")
            .contains("at the end: expected \")\""),
        "{answer}"
    );

    // If the filter were not applied, the UDP datagrams and the IPv6 pings
    // sent first would fill the two packets the capture waits for.
    let file = t.dir.join("filtered.pcapng");
    let filter = format!("icmp and dst host {SERVER4}");
    let capture = start_capture(
        &t,
        &["-c", "2", "-w", file.to_str().unwrap(), "--filter", &filter],
    );
    udp_to(&t, &[5000, 5001, 5002]);
    let ping6 = t.in_client(&["ping", "-c", "2", "-i", "0.2", "-W", "2", netns::SERVER6]);
    assert!(ping6.status.success(), "{}", text(&ping6));
    let ping = t.in_client(&["ping", "-c", "3", "-i", "0.2", "-W", "2", SERVER4]);
    assert!(ping.status.success(), "{}", text(&ping));
    let out = finish(capture);
    assert!(out.status.success(), "{}", text(&out));
    let read = tcpdump_read(&file);
    assert!(read.status.success(), "{}", text(&read));
    let shown = String::from_utf8_lossy(&read.stdout);
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.len(), 2, "{shown}");
    for line in lines {
        assert!(
            line.contains(&format!("{CLIENT4} > {SERVER4}: ICMP echo request")),
            "{shown}"
        );
    }
    assert_eq!(t.stats()["capture_lost"], 0);
}

/// Rejecting filters (`reject_rate` keeps its default, 100/s).
const REJECT: &str = r#"
[[filter]]
name = "no-2323"
layer = "auth_connect"
action = "block"
reject = true
protocol = "tcp"
remote_port = 2323

[[filter]]
name = "no-udp-9999"
layer = "auth_connect"
action = "block"
reject = true
protocol = "udp"
remote_port = 9999
"#;

#[test]
fn rejected_connections_are_refused_at_once() {
    require_netns!();
    let t = Topology::new("max_flows = 1000", REJECT);
    // TCP: the SYN is answered with a RST: "connection refused", not a time-out.
    let code = format!(
        "import socket\ntry:\n socket.create_connection(('{SERVER4}',2323),timeout=5)\n print('connected')\nexcept ConnectionRefusedError:\n print('refused')\nexcept socket.timeout:\n print('timeout')\n"
    );
    let out = t.python(&t.client, &code);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "refused",
        "{}",
        text(&out)
    );
    // UDP: the ICMP error reaches the connected socket (administratively
    // prohibited is EHOSTUNREACH for IPv4, EACCES for IPv6 on Linux).
    for (dst, v6, errno) in [(SERVER4, false, 113), (netns::SERVER6, true, 13)] {
        let family = if v6 {
            "socket.AF_INET6"
        } else {
            "socket.AF_INET"
        };
        let code = format!(
            "import socket\ns=socket.socket({family},socket.SOCK_DGRAM)\ns.settimeout(5)\ns.connect(('{dst}',9999))\ns.send(b'x')\ntry:\n s.recv(100)\n print('answer')\nexcept socket.timeout:\n print('timeout')\nexcept OSError as e:\n print('errno', e.errno)\n"
        );
        let out = t.python(&t.client, &code);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("errno {errno}"),
            "{dst}: {}",
            text(&out)
        );
    }
    let stats = t.stats();
    assert_eq!(stats["rejects"]["sent"], 3, "{stats}");
    assert_eq!(stats["discards"]["auth_connect_blocked"], 3, "{stats}");
}

/// A namespace of the test's own, removed on drop, with the gateway
/// process started in it (so its loopback is the namespace's).
struct Isolated {
    ns: String,
    dir: std::path::PathBuf,
    child: Option<std::process::Child>,
}

impl Drop for Isolated {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while c.try_wait().ok().flatten().is_none() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "log:\n{}",
                std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
            );
        }
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.ns])
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn metrics_are_served_over_http() {
    require_netns!();
    let tag = std::process::id() % 100_000;
    let t = Isolated {
        ns: format!("twm{tag}"),
        dir: std::env::temp_dir().join(format!("tunwall-metrics-{tag}")),
        child: None,
    };
    let mut t = t;
    std::fs::create_dir_all(&t.dir).unwrap();
    let ip = |args: &[&str]| {
        let out = std::process::Command::new("ip")
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "ip {args:?}: {}", text(&out));
    };
    ip(&["netns", "add", &t.ns]);
    ip(&["-n", &t.ns, "link", "set", "lo", "up"]);
    let socket = t.dir.join("control.sock");
    let config = t.dir.join("tunwall.toml");
    std::fs::write(
        &config,
        format!(
            r#"[gateway]
control_socket = "{socket}"

[[port]]
name = "lan"
device = "twml{tag}"
zone = "inside"
addresses = ["198.18.1.1/24"]
routes = ["198.18.1.0/24"]

[[port]]
name = "wan"
device = "twmw{tag}"
zone = "outside"
addresses = ["198.18.2.1/24"]
routes = ["198.18.2.0/24"]

[metrics]
listen = "127.0.0.1:9560"

{UDP_FILTER}
"#,
            socket = socket.display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(t.dir.join("log")).unwrap();
    t.child = Some(
        std::process::Command::new("ip")
            .args(["netns", "exec", &t.ns])
            .arg(env!("CARGO_BIN_EXE_tunwall"))
            .arg("run")
            .arg("-c")
            .arg(&config)
            .stderr(log)
            .spawn()
            .expect("tunwall"),
    );
    let curl = |path: &str| {
        std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &t.ns,
                "curl",
                "-sS",
                "-i",
                "--max-time",
                "5",
            ])
            .arg(format!("http://127.0.0.1:9560{path}"))
            .output()
            .unwrap()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let out = loop {
        let out = curl("/metrics");
        if out.status.success() || std::time::Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let page = text(&out);
    assert!(out.status.success(), "{page}");
    assert!(page.starts_with("HTTP/1.1 200 OK"), "{page}");
    assert!(
        page.contains("Content-Type: text/plain; version=0.0.4"),
        "{page}"
    );
    assert!(page.contains("# TYPE tunwall_flows_active gauge"), "{page}");
    assert!(
        page.contains("tunwall_filter_matches_total{layer=\"auth_connect\",filter=\"udp-out\"} 0"),
        "{page}"
    );
    assert!(
        page.contains("tunwall_discards_total{reason=\"vetoed\"} 0"),
        "{page}"
    );
    let missing = text(&curl("/"));
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
}

/// Without an event file, subscriber or debug log the workers build no
/// flow events (a third of a new flow's cost); the counters still count,
/// and a subscriber that connects gets the flow events from then on.
#[test]
fn flow_events_are_built_once_a_subscriber_connects() {
    require_netns!();
    let mut t = Topology::prepare(true, false, "", UDP_FILTER);
    t.rewrite_config(|c| c.replace("[events]\nfile = ", "[events]\n# file = "));
    t.start_with_env(&[("RUST_LOG", "info")]);
    udp_to(&t, &[7001, 7002]);
    let created = |t: &Topology| t.stats()["flows_created"].as_u64().unwrap_or(0);
    assert_eq!(created(&t), 2, "{}", t.stats());

    let mut events = std::process::Command::new(env!("CARGO_BIN_EXE_tunwall"))
        .args(["events", "-s"])
        .arg(&t.socket)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("tunwall events");
    // The hub takes the subscriber and the workers see it at their next batch.
    std::thread::sleep(std::time::Duration::from_millis(500));
    udp_to(&t, &[7003]);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let _ = events.kill();
    let streamed =
        String::from_utf8_lossy(&events.wait_with_output().expect("events").stdout).to_string();
    let created_ports: Vec<u64> = streamed
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["event"] == "flow_created")
        .filter_map(|e| e["remote_port"].as_u64())
        .collect();
    assert_eq!(created_ports, vec![7003], "{streamed}");
    assert_eq!(created(&t), 3);
}
