//! End-to-end tests of what SPEC §13 carries besides plain flows, with the
//! real binary between two namespaces: a TCP connection through
//! masquerade (§9) across `tunwall upgrade` and across a stop and start
//! with `state_file`; the metrics socket, a moved control socket and the
//! service manager's main pid across an upgrade.

mod netns;

use netns::{SERVER4, Topology};
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::mem::MaybeUninit;
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const FLOWS: &str = "max_flows = 1000\ntcp_loose_pickup = false";

const MASQUERADE: &str = r#"
[[filter]]
name = "masquerade"
layer = "bind_redirect"
action = "redirect"
arrival_port = "lan"
to_address = ["198.18.2.1", "fd00:2::1"]
to_port = "20000-20999"
"#;

/// A TCP server that first tells each client the address it sees, then
/// echoes.
const WHOAMI_ECHO: &str = "import socket,threading\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('198.18.2.20',7000))\ns.listen(4)\ndef serve(c,a):\n c.sendall(('%s %d\\n'%a).encode())\n while True:\n  d=c.recv(100)\n  if not d: break\n  c.sendall(d)\nwhile True:\n c,a=s.accept()\n threading.Thread(target=serve,args=(c,a),daemon=True).start()\n";

/// A client that prints what the server saw, then for each line on stdin
/// makes one exchange and prints "ok" or what went wrong.
const CLIENT: &str = "import socket,sys\ns=socket.create_connection(('198.18.2.20',7000),timeout=5)\nf=s.makefile('rb')\nprint(f.readline().decode().strip(),flush=True)\nfor line in sys.stdin:\n try:\n  s.sendall(b'ping')\n  d=s.recv(16)\n  print('ok' if d==b'ping' else 'bad echo %r'%d,flush=True)\n except Exception as e:\n  print('broken',type(e).__name__,flush=True)\n";

/// One long-lived TCP connection from the inside, driven line by line.
struct Conn {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Conn {
    fn open(t: &mut Topology) -> (Conn, String) {
        let server = t.server.clone();
        t.spawn(&server, &["python3", "-c", WHOAMI_ECHO]);
        std::thread::sleep(Duration::from_millis(600));
        let mut child = Command::new("ip")
            .args(["netns", "exec", &t.client, "python3", "-u", "-c", CLIENT])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("client");
        let out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut conn = Conn { child, out };
        let seen = conn.line();
        (conn, seen)
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.out.read_line(&mut line).expect("client output");
        line.trim().to_string()
    }

    /// One exchange on the connection.
    fn exchange(&mut self) -> String {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        writeln!(stdin).expect("poke the client");
        self.line()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The translated TCP flow to the server.
fn translated(t: &Topology) -> Value {
    t.flows()
        .into_iter()
        .find(|f| f["protocol"] == "tcp" && f["remote_port"] == 7000)
        .unwrap_or_else(|| panic!("no flow to the server: {:#?}", t.flows()))
}

#[test]
fn a_masqueraded_connection_survives_an_upgrade_and_a_restart() {
    require_netns!();
    let mut t = Topology::with_gateway("state_file = \"{dir}/flows.state\"", FLOWS, MASQUERADE);
    let (mut conn, seen) = Conn::open(&mut t);
    let (addr, port) = seen.split_once(' ').unwrap_or_else(|| panic!("{seen:?}"));
    assert_eq!(
        addr, "198.18.2.1",
        "the server sees only the public address"
    );
    let port: u64 = port.parse().expect("port");
    let before = translated(&t);
    assert_eq!(before["translation"]["local_port"], port);
    assert_eq!(before["remote_addr"], SERVER4);

    let out = t.upgrade(&[]);
    assert!(out.status.success(), "upgrade: {out:?}\n{}", t.log());
    assert_eq!(conn.exchange(), "ok", "after the upgrade:\n{}", t.log());
    let after = translated(&t);
    assert_eq!(after["id"], before["id"], "the same flow");
    assert_eq!(after["translation"], before["translation"]);
    assert_eq!(t.stats()["nat"]["ports_in_use"], 1);

    t.stop_adopted();
    assert!(t.dir.join("flows.state").exists(), "{}", t.log());
    t.start();
    assert_eq!(conn.exchange(), "ok", "after the restart:\n{}", t.log());
    let restarted = translated(&t);
    assert_eq!(restarted["id"], before["id"]);
    assert_eq!(restarted["translation"], before["translation"]);
    assert!(
        restarted["packets_out"].as_u64() > before["packets_out"].as_u64(),
        "{before} → {restarted}"
    );
    assert_eq!(t.stats()["nat"]["ports_in_use"], 1);
    assert_eq!(t.discards("tcp_no_flow"), 0);
    let events = t.events();
    assert!(
        !events
            .iter()
            .any(|e| e["event"] == "flow_closed" && e["id"] == before["id"]),
        "the carried flow was never indicated closed"
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| e["event"] == "port_assigned")
            .count(),
        1,
        "the port was assigned once, in the first process"
    );
}

/// A notify socket like systemd's that learns each sender's pid.
struct Notify {
    socket: UnixDatagram,
    path: String,
}

impl Notify {
    fn bind(t: &Topology) -> Notify {
        let path = t.dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        rustix::net::sockopt::set_socket_passcred(&socket, true).expect("SO_PASSCRED");
        Notify {
            socket,
            path: path.display().to_string(),
        }
    }

    /// The next notification and the pid that sent it.
    fn receive(&self) -> (u32, String) {
        let mut buf = [0u8; 512];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmCredentials(1))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let got = rustix::net::recvmsg(&self.socket, &mut iov, &mut control, RecvFlags::empty())
            .expect("a notification");
        let pid = control
            .drain()
            .find_map(|m| match m {
                RecvAncillaryMessage::ScmCredentials(c) => {
                    Some(c.pid.as_raw_nonzero().get() as u32)
                }
                _ => None,
            })
            .expect("the sender's credentials");
        let n = got.bytes;
        (pid, String::from_utf8_lossy(&buf[..n]).into_owned())
    }
}

/// A TCP port free on the loopback now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn curl(port: u16) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5"])
        .arg(format!("http://127.0.0.1:{port}/metrics"))
        .output()
        .expect("curl");
    assert!(out.status.success(), "curl: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn an_upgrade_carries_metrics_a_moved_socket_and_the_service_to_the_new_process() {
    require_netns!();
    let port = free_port();
    let metrics = format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n");
    let mut t = Topology::prepare(true, false, FLOWS, &metrics);
    let notify = Notify::bind(&t);
    t.start_with_env(&[("NOTIFY_SOCKET", &notify.path)]);
    let old = t.pid();
    let (from, ready) = notify.receive();
    assert_eq!((from, ready.as_str()), (old, "READY=1\nSTATUS=forwarding"));
    assert!(curl(port).contains("# TYPE tunwall_flows_active gauge"));

    // Adding state_file needs persistent devices: refused, the gateway stays.
    let config = std::fs::read_to_string(&t.config).expect("config");
    let state = format!(
        "[gateway]\nstate_file = \"{}/flows.state\"\n",
        t.dir.display()
    );
    t.rewrite_config(|c| c.replacen("[gateway]\n", &state, 1));
    let out = t.upgrade(&[]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success() && said.contains("state_file added"),
        "{said}"
    );
    assert_eq!(t.pid(), old);

    // A new control socket path: the old file goes.
    let moved = t.dir.join("moved.sock");
    let old_socket = t.socket.clone();
    std::fs::write(
        &t.config,
        config.replace(
            &old_socket.display().to_string(),
            &moved.display().to_string(),
        ),
    )
    .expect("config");
    let out = t.upgrade(&[]);
    assert!(out.status.success(), "upgrade: {out:?}\n{}", t.log());
    let new = t.pid();
    assert_ne!(new, old);
    assert!(!old_socket.exists(), "the old socket file is removed");
    t.socket = moved;
    assert!(t.cli(&["stats", "--json"]).status.success());

    // The old process names the new main pid, then the new one is ready.
    assert_eq!(notify.receive(), (old, format!("MAINPID={new}")));
    let (from, ready) = notify.receive();
    assert_eq!(from, new);
    assert!(ready.starts_with("READY=1\n"), "{ready:?}");
    // The metrics socket was handed over: served by the new process.
    let page = curl(port);
    assert!(page.contains("# TYPE tunwall_flows_active gauge"), "{page}");
    assert!(!t.log().contains("metrics not served"), "{}", t.log());

    t.stop_adopted();
    assert_eq!(notify.receive(), (new, "STOPPING=1".to_string()));
}
