//! End-to-end tests of SPEC §13 with the real binary between two
//! namespaces: an iperf3 transfer, an idle TCP connection and a UDP flow
//! go on across `tunwall upgrade` and across a stop and start with
//! `[gateway] state_file` (loose pickup off, so only the carried state can
//! carry them); an upgrade that cannot happen leaves the gateway running.

mod netns;

use netns::{SERVER4, Topology};
use serde_json::Value;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const FLOWS: &str = "max_flows = 1000\ntcp_loose_pickup = false\nudp_idle = \"30s\"";

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A TCP echo server.
const ECHO: &str = "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('198.18.2.20',7000))\ns.listen(4)\nwhile True:\n c,_=s.accept()\n while True:\n  d=c.recv(100)\n  if not d: break\n  c.sendall(d)\n";

/// An idle connection: one exchange, then nothing until a line on stdin,
/// then another exchange; prints "ok" or the error.
const IDLE: &str = "import socket,sys\ns=socket.create_connection(('198.18.2.20',7000),timeout=5)\ns.sendall(b'one')\nassert s.recv(16)==b'one'\nprint('first',flush=True)\nsys.stdin.readline()\ntry:\n s.sendall(b'two')\n print('ok' if s.recv(16)==b'two' else 'bad echo',flush=True)\nexcept Exception as e:\n print('broken',type(e).__name__,flush=True)\n";

struct Traffic {
    idle: Child,
    iperf: Child,
}

impl Traffic {
    /// Starts the servers, the idle connection, a UDP flow and a 5 s iperf3 transfer.
    fn start(t: &mut Topology) -> Traffic {
        let server = t.server.clone();
        t.spawn(&server, &["python3", "-c", ECHO]);
        t.spawn(&server, &["iperf3", "-s", "-1", "-B", SERVER4]);
        std::thread::sleep(Duration::from_millis(600));
        let mut idle = Command::new("ip")
            .args(["netns", "exec", &t.client, "python3", "-u", "-c", IDLE])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("idle client");
        let mut first = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(idle.stdout.as_mut().expect("stdout")),
            &mut first,
        )
        .expect("first exchange");
        assert_eq!(first.trim(), "first", "the idle connection opened");
        let out = t.python(
            &t.client,
            "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('198.18.1.10',5555))\ns.sendto(b'x',('198.18.2.20',5556))\n",
        );
        assert!(out.status.success(), "udp: {}", text(&out));
        let iperf = Command::new("ip")
            .args([
                "netns", "exec", &t.client, "iperf3", "-c", SERVER4, "-t", "5", "-J",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("iperf3 client");
        std::thread::sleep(Duration::from_millis(1500));
        Traffic { idle, iperf }
    }

    /// Checks the idle connection still works and the transfer finished.
    fn finish(mut self) {
        use std::io::Write;
        let mut stdin = self.idle.stdin.take().expect("stdin");
        writeln!(stdin).expect("poke the idle client");
        drop(stdin);
        let idle = self.idle.wait_with_output().expect("idle client");
        assert_eq!(
            String::from_utf8_lossy(&idle.stdout).trim(),
            "ok",
            "the idle connection: {}",
            text(&idle)
        );
        let out = self.iperf.wait_with_output().expect("iperf3");
        assert!(out.status.success(), "iperf3: {}", text(&out));
        let report: Value = serde_json::from_slice(&out.stdout).expect("iperf3 json");
        let bytes = report["end"]["sum_received"]["bytes"]
            .as_f64()
            .unwrap_or(0.0);
        assert!(bytes > 1e6, "the transfer carried data: {bytes}");
    }
}

fn by_id(flows: &[Value]) -> std::collections::BTreeMap<u64, Value> {
    flows
        .iter()
        .map(|f| (f["id"].as_u64().expect("id"), f.clone()))
        .collect()
}

fn udp_flow(flows: &[Value]) -> Value {
    flows
        .iter()
        .find(|f| f["protocol"] == "udp" && f["local_port"] == 5555)
        .cloned()
        .expect("the UDP flow")
}

/// What must hold after the carry: the same flows (ids, states, counters
/// that only grow), the UDP flow's idle timer not reset, no closure.
fn same_flows(before: &[Value], after: &[Value], waited_ms: u64) {
    let (b, a) = (by_id(before), by_id(after));
    for (id, f) in &b {
        let g = a
            .get(id)
            .unwrap_or_else(|| panic!("flow {id} lost: before {f}, after {after:#?}"));
        assert_eq!(f["local_port"], g["local_port"]);
        assert_eq!(f["remote_port"], g["remote_port"]);
        assert!(
            g["packets_out"].as_u64() >= f["packets_out"].as_u64(),
            "{f} → {g}"
        );
    }
    let (u0, u1) = (udp_flow(before), udp_flow(after));
    assert_eq!(u0["id"], u1["id"]);
    let (i0, i1) = (
        u0["idle_ms"].as_u64().unwrap(),
        u1["idle_ms"].as_u64().unwrap(),
    );
    assert!(
        i1 >= i0 + waited_ms && u1["expires_in_ms"].as_u64() < u0["expires_in_ms"].as_u64(),
        "the UDP idle timer went on: {u0} → {u1}"
    );
}

#[test]
fn connections_and_timers_survive_an_upgrade() {
    require_netns!();
    let mut t = Topology::new(FLOWS, "");
    let traffic = Traffic::start(&mut t);
    let old_pid = t.pid();
    let before = t.flows();
    std::thread::sleep(Duration::from_millis(300));
    let out = t.upgrade(&[]);
    assert!(out.status.success(), "upgrade: {}\n{}", text(&out), t.log());
    assert_ne!(t.pid(), old_pid);
    let after = t.flows();
    same_flows(&before, &after, 300);
    // A second upgrade, from the new process, works the same way.
    let out = t.upgrade(&[]);
    assert!(out.status.success(), "second upgrade: {}", text(&out));
    traffic.finish();

    let events = t.events();
    let handovers: Vec<&Value> = events.iter().filter(|e| e["event"] == "handover").collect();
    assert_eq!(
        handovers.len(),
        4,
        "old and new emit handover, twice: {handovers:#?}"
    );
    assert!(handovers.iter().any(|e| e["to_pid"] == t.pid()));
    // Nothing is indicated for the carried flows: no creation after the
    // first hand-over, no closure at all.
    let carried = by_id(&before);
    let first = events
        .iter()
        .position(|e| e["event"] == "handover")
        .expect("handover");
    for (i, e) in events.iter().enumerate() {
        let id = e["id"].as_u64().unwrap_or(0);
        let created_again = i > first && e["event"] == "flow_created";
        assert!(
            !(carried.contains_key(&id) && (created_again || e["event"] == "flow_closed")),
            "carried flow {id} indicated: {e}"
        );
    }
    assert_eq!(
        t.stats()["discards"]["tcp_no_flow"].as_u64().unwrap_or(0),
        0
    );
}

#[test]
fn connections_survive_a_stop_and_start_with_a_state_file() {
    require_netns!();
    let mut t = Topology::with_gateway("state_file = \"{dir}/flows.state\"", FLOWS, "");
    let traffic = Traffic::start(&mut t);
    let before = t.flows();
    let status = t.stop();
    assert!(status.success(), "{}", t.log());
    let state = t.dir.join("flows.state");
    let meta = std::fs::metadata(&state).expect("the state file is written");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o600
    );
    assert!(
        t.device_exists(&t.client.clone(), &t.lan_dev.clone()),
        "devices kept"
    );
    assert!(
        !t.events().iter().any(|e| e["event"] == "flow_closed"),
        "nothing indicated for saved flows"
    );
    std::thread::sleep(Duration::from_millis(300));
    t.start();
    let after = t.flows();
    same_flows(&before, &after, 300);
    assert!(!state.exists(), "a state file is used once");
    traffic.finish();
    assert_eq!(
        t.stats()["discards"]["tcp_no_flow"].as_u64().unwrap_or(0),
        0
    );
    // Without flows to carry, a stop with a state file still keeps the
    // devices; a start without the file starts empty.
    let status = t.stop();
    assert!(status.success());
    std::fs::write(&state, b"TWSTATE\ngarbage").expect("corrupt");
    t.start();
    assert!(t.log().contains("state file refused"), "{}", t.log());
}

#[test]
fn an_upgrade_that_cannot_happen_leaves_the_gateway_running() {
    require_netns!();
    let mut t = Topology::new(FLOWS, "");
    let pid = t.pid();
    let server = t.server.clone();
    t.spawn(&server, &["python3", "-c", ECHO]);
    std::thread::sleep(Duration::from_millis(400));

    let out = t.upgrade(&["--binary", "/bin/false"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("exited"), "{}", text(&out));

    // A binary that never takes over is stopped after 10 s.
    let stuck = t.dir.join("stuck.sh");
    // (absolute: the gateway runs with an empty PATH)
    std::fs::write(&stuck, "#!/bin/sh\nexec /bin/sleep 60\n").expect("script");
    std::fs::set_permissions(&stuck, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let started = std::time::Instant::now();
    let out = t.upgrade(&["--binary", &stuck.display().to_string()]);
    assert!(!out.status.success());
    assert!(text(&out).contains("within 10 s"), "{}", text(&out));
    assert!(started.elapsed() < Duration::from_secs(15));

    // Changed ports are refused before anything starts.
    t.rewrite_config(|c| {
        c.replace(
            "routes = [\"198.18.2.0/24\", \"fd00:2::/64\"]",
            "routes = [\"198.18.2.0/25\"]",
        )
    });
    let out = t.upgrade(&[]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("port \"wan\" (routes)"),
        "{}",
        text(&out)
    );

    assert_eq!(t.pid(), pid);
    let out = t.python(
        &t.client,
        "import socket\ns=socket.create_connection(('198.18.2.20',7000),timeout=3)\ns.sendall(b'hi')\nprint(s.recv(8).decode())\n",
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "hi",
        "{}",
        text(&out)
    );
}
