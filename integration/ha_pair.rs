//! The HA pair of the end-to-end tests (SPEC §15): two real `tunwall
//! run` nodes in namespaces, keepalived, the client and server, torn down
//! on drop (see integration/e2e_ha.rs for the picture).
#![allow(dead_code)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicUsize = AtomicUsize::new(0);
pub const BIN: &str = env!("CARGO_BIN_EXE_tunwall");
pub const NODES: [&str; 2] = ["a", "b"];

pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

pub fn sh(script: &str) {
    let out = run(Command::new("sh").args(["-ec", script]));
    assert!(
        out.status.success(),
        "{script}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub struct Pair {
    pub tag: String,
    pub dir: PathBuf,
    pub namespaces: Vec<String>,
    pub tunwall: [Option<Child>; 2],
    pub keepalived: Vec<Child>,
    pub background: Vec<Child>,
}

impl Pair {
    pub fn ns(&self, name: &str) -> String {
        format!("tw{name}{}", self.tag)
    }

    pub fn build() -> Pair {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}{}", std::process::id() % 100_000, n);
        let dir = std::env::temp_dir().join(format!("tunwall-ha-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut p = Pair {
            tag,
            dir,
            namespaces: Vec::new(),
            tunwall: [None, None],
            keepalived: Vec::new(),
            background: Vec::new(),
        };
        for ns in ["c", "s", "li", "lo", "ai", "ao", "bi", "bo"] {
            let name = p.ns(ns);
            sh(&format!("ip netns add {name}; ip -n {name} link set lo up"));
            p.namespaces.push(name);
        }
        let t = p.tag.clone();
        for lan in ["li", "lo"] {
            sh(&format!(
                "ip -n {0} link add br0 type bridge; ip -n {0} link set br0 up",
                p.ns(lan)
            ));
        }
        // One veth per host on its LAN's bridge.
        for (host, lan, port) in [
            ("c", "li", "pc"),
            ("ai", "li", "pa"),
            ("bi", "li", "pb"),
            ("s", "lo", "ps"),
            ("ao", "lo", "pa"),
            ("bo", "lo", "pb"),
        ] {
            let (h, l) = (p.ns(host), p.ns(lan));
            sh(&format!(
                "ip link add twva{t} type veth peer name twvb{t}
                 ip link set twva{t} netns {h}; ip -n {h} link set twva{t} name eth0; ip -n {h} link set eth0 up
                 ip link set twvb{t} netns {l}; ip -n {l} link set twvb{t} name {port}; ip -n {l} link set {port} master br0 up"
            ));
        }
        sh(&format!(
            "ip -n {c} addr add 198.18.1.10/24 dev eth0; ip -n {c} route add default via 198.18.1.1
             ip -n {s} addr add 198.18.2.20/24 dev eth0; ip -n {s} route add default via 198.18.2.1",
            c = p.ns("c"),
            s = p.ns("s")
        ));
        std::fs::write(p.dir.join("sync.key"), [0x5a; 32]).expect("key");
        std::fs::write(p.dir.join("wrong.key"), [0xa5; 32]).expect("key");
        for (i, node) in NODES.iter().enumerate() {
            let (me, peer) = if i == 0 { (2, 3) } else { (3, 2) };
            let (inside, outside) = (p.ns(&format!("{node}i")), p.ns(&format!("{node}o")));
            for ns in [&inside, &outside] {
                sh(&format!(
                    "ip netns exec {ns} sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0"
                ));
            }
            sh(&format!(
                "ip -n {inside} addr add 198.18.1.{me}/24 dev eth0; ip -n {outside} addr add 198.18.2.{me}/24 dev eth0"
            ));
            let config = format!(
                r#"[gateway]
workers = 1
control_socket = "{dir}/{node}.sock"

[[port]]
name = "lan"
device = "tw{node}l{t}"
zone = "inside"
kernel_routes = ["198.18.2.0/24"]
routes = ["198.18.1.0/24"]

[[port]]
name = "wan"
device = "tw{node}w{t}"
zone = "outside"
netns = "{outside}"
kernel_routes = ["198.18.1.0/24"]
routes = ["198.18.2.0/24"]

[flows]
max_flows = 65536
tcp_loose_pickup = false

[sync]
listen = "198.18.1.{me}:7946"
peer = "198.18.1.{peer}:7946"
key_file = "{dir}/sync.key"
"#,
                dir = p.dir.display()
            );
            std::fs::write(p.dir.join(format!("{node}.toml")), config).expect("config");
            let priority = if i == 0 { 150 } else { 100 };
            for (side, vip, vrid) in [("i", "198.18.1.1", 51), ("o", "198.18.2.1", 52)] {
                let conf = keepalived_conf(
                    &format!("tw{node}{side}{t}"),
                    &format!("{BIN} stats -s {}/{node}.sock", p.dir.display()),
                    vrid,
                    priority,
                    vip,
                );
                std::fs::write(p.dir.join(format!("ka-{node}{side}.conf")), conf).expect("conf");
            }
        }
        p
    }

    pub fn socket(&self, node: usize) -> PathBuf {
        self.dir.join(format!("{}.sock", NODES[node]))
    }

    pub fn start(&mut self, node: usize) {
        let name = NODES[node];
        let socket = self.socket(node);
        let _ = std::fs::remove_file(&socket);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{name}.log")))
            .expect("log");
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns(&format!("{name}i")),
                BIN,
                "run",
                "-c",
            ])
            .arg(self.dir.join(format!("{name}.toml")))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn tunwall");
        self.tunwall[node] = Some(child);
        wait_until(&format!("tunwall {name}"), Duration::from_secs(10), || {
            socket.exists() && self.cli(node, &["stats", "--json"]).status.success()
        });
    }

    pub fn start_keepalived(&mut self, node: usize) {
        let name = NODES[node];
        for side in ["i", "o"] {
            let d = &self.dir;
            let log = std::fs::File::create(d.join(format!("ka-{name}{side}.log"))).expect("log");
            let child = Command::new("ip")
                .args(["netns", "exec", &self.ns(&format!("{name}{side}"))])
                .args(["keepalived", "-n", "-l", "-P", "-f"])
                .arg(d.join(format!("ka-{name}{side}.conf")))
                .arg("-p")
                .arg(d.join(format!("ka-{name}{side}.pid")))
                .arg("-r")
                .arg(d.join(format!("ka-{name}{side}.vrrp.pid")))
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("spawn keepalived (make deps installs it)");
            self.keepalived.push(child);
        }
    }

    /// SIGKILL: the node's tunwall dies without a word.
    pub fn kill(&mut self, node: usize) {
        let mut child = self.tunwall[node].take().expect("running");
        child.kill().expect("kill");
        child.wait().expect("wait");
    }

    pub fn cli(&self, node: usize, args: &[&str]) -> Output {
        run(Command::new(BIN)
            .args(args)
            .arg("-s")
            .arg(self.socket(node)))
    }

    pub fn json(&self, node: usize, args: &[&str]) -> Value {
        let out = self.cli(node, args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("json")
    }

    pub fn sync(&self, node: usize) -> Value {
        self.json(node, &["sync", "status", "--json"])
    }

    /// Whether node `node` lists a flow to server port `port` with this
    /// `synced` mark (and state), printing its flows if not.
    pub fn has_flow(&self, node: usize, port: u16, synced: bool, state: Option<&str>) -> bool {
        let flows = self.json(node, &["flows", "--json"]);
        let found = flows.as_array().unwrap().iter().any(|f| {
            f["remote_port"] == port
                && f["synced"] == synced
                && state.is_none_or(|s| f["state"] == s)
        });
        if !found {
            eprintln!("node {}: {flows}", NODES[node]);
        }
        found
    }

    /// Whether node `node` holds both gateway addresses.
    pub fn holds_vips(&self, node: usize) -> bool {
        [("i", "198.18.1.1/24"), ("o", "198.18.2.1/24")]
            .iter()
            .all(|(side, vip)| {
                let out = run(Command::new("ip").args([
                    "-n",
                    &self.ns(&format!("{}{side}", NODES[node])),
                    "addr",
                    "show",
                    "eth0",
                ]));
                String::from_utf8_lossy(&out.stdout).contains(vip)
            })
    }

    pub fn spawn(&mut self, ns: &str, args: &[&str], out: &Path) -> usize {
        let log = std::fs::File::create(out).expect("output");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(ns)])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn");
        self.background.push(child);
        self.background.len() - 1
    }

    pub fn logs(&self) -> String {
        let mut all = String::new();
        for f in ["a.log", "b.log", "ka-ai.log", "ka-bi.log"] {
            let text = std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            all += &format!(
                "--- {f}\n{}\n",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        all
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        let children = self
            .background
            .iter_mut()
            .chain(self.tunwall.iter_mut().flatten())
            .chain(self.keepalived.iter_mut());
        for c in children {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .stderr(Stdio::null())
                .status();
        }
        // keepalived reaps its VRRP child when it stops: give it the time.
        let deadline = Instant::now() + Duration::from_secs(5);
        for c in self
            .background
            .iter_mut()
            .chain(self.tunwall.iter_mut().flatten())
            .chain(self.keepalived.iter_mut())
        {
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        // Whatever still runs in the namespaces this test made (keepalived's
        // VRRP children, iperf3 daemons) was started by it.
        for ns in &self.namespaces {
            let out = run(Command::new("ip").args(["netns", "pids", ns]));
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill")
                    .args(["-KILL", pid])
                    .stderr(Stdio::null())
                    .status();
            }
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The keepalived.conf of one VRRP instance (docs/ha.md has the operator's).
pub fn keepalived_conf(id: &str, check: &str, vrid: u8, priority: u8, vip: &str) -> String {
    format!(
        r#"global_defs {{
  router_id {id}
  script_user root
  vrrp_garp_master_repeat 3
  vrrp_garp_master_refresh 1
}}
vrrp_script tunwall_alive {{
  script "{check}"
  interval 1
  timeout 1
  fall 1
  rise 2
}}
vrrp_instance gateway {{
  state BACKUP
  nopreempt
  interface eth0
  virtual_router_id {vrid}
  priority {priority}
  advert_int 1
  virtual_ipaddress {{
    {vip}/24
  }}
  track_script {{
    tunwall_alive
  }}
}}
"#
    )
}

/// A TCP echo server.
pub const ECHO: &str = "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('198.18.2.20',7000))\ns.listen(4)\nwhile True:\n c,_=s.accept()\n while True:\n  d=c.recv(100)\n  if not d: break\n  c.sendall(d)\n";

/// The churn's server: answers each connection once, on port 7001, for 8 s.
pub const CHURN_SERVER: &str = "import socketserver,threading\nclass H(socketserver.BaseRequestHandler):\n def handle(self):\n  d=self.request.recv(4)\n  if d: self.request.sendall(d)\nsocketserver.ThreadingTCPServer.allow_reuse_address=True\nsocketserver.ThreadingTCPServer.daemon_threads=True\ns=socketserver.ThreadingTCPServer(('198.18.2.20',7001),H)\nthreading.Timer(8,s.shutdown).start()\ns.serve_forever()\n";

/// Connection churn for 5 s: short TCP connections to [`CHURN_SERVER`] and
/// one-datagram UDP flows; prints how many connections were made.
pub const CHURN: &str = "import socket,time\nt=time.time()\nn=0\nwhile time.time()-t<5:\n try:\n  s=socket.create_connection(('198.18.2.20',7001),timeout=0.5)\n  s.sendall(b'x')\n  s.recv(4)\n  s.close()\n  n+=1\n except Exception:\n  time.sleep(0.05)\n u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n u.sendto(b'x',('198.18.2.20',40000+n%20000))\n u.close()\nprint('connections',n,flush=True)\n";

/// An idle connection: one exchange per line on stdin, "ok N" or the error.
pub const IDLE: &str = "import socket,sys\ns=socket.create_connection(('198.18.2.20',7000),timeout=5)\nn=0\nwhile True:\n n+=1\n try:\n  s.sendall(b'ping')\n  print('ok',n if s.recv(16)==b'ping' else 'bad',flush=True)\n except Exception as e:\n  print('broken',type(e).__name__,flush=True)\n if not sys.stdin.readline(): break\n";

impl Pair {
    /// One exchange on the idle connection; returns its output so far.
    pub fn poke_idle(&mut self, idle: usize, out: &Path, expect: usize) -> String {
        use std::io::Write;
        let stdin = self.background[idle].stdin.as_mut().expect("stdin");
        stdin.write_all(b"\n").expect("poke");
        stdin.flush().expect("flush");
        let mut text = String::new();
        wait_until(
            "the idle connection's answer",
            Duration::from_secs(10),
            || {
                text = std::fs::read_to_string(out).unwrap_or_default();
                text.lines().count() >= expect
            },
        );
        text
    }

    /// A 6 s iperf3 transfer with the given node's tunwall killed 2 s in;
    /// returns the longest run of seconds without data.
    pub fn transfer_across_death(&mut self, victim: usize, survivor: usize, round: usize) -> f64 {
        let out = self.dir.join(format!("iperf{round}.json"));
        let iperf = self.spawn(
            "c",
            &[
                "iperf3",
                "-c",
                "198.18.2.20",
                "-t",
                "6",
                "-i",
                "0.2",
                "--json",
            ],
            &out,
        );
        // Connection churn beside the transfer (measured, not asserted):
        // short TCP connections and one-datagram UDP flows, as fast as one
        // client makes them.
        let churn_out = self.dir.join(format!("churn{round}.out"));
        let server_out = self.dir.join(format!("churn-server{round}.out"));
        self.spawn("s", &["python3", "-c", CHURN_SERVER], &server_out);
        std::thread::sleep(Duration::from_millis(300));
        self.spawn("c", &["python3", "-c", CHURN], &churn_out);
        // The replication lag on the active node while both run.
        let before = self.sync(victim);
        let started = Instant::now();
        let mut lags = Vec::new();
        while started.elapsed() < Duration::from_secs(2) {
            lags.push(self.sync(victim)["lag_ms"].as_u64().unwrap_or(0));
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            self.has_flow(survivor, 5201, true, Some("established")),
            "the standby holds the transfer's flow, marked synced"
        );
        let active = self.sync(victim);
        let mean = lags.iter().sum::<u64>() as f64 / lags.len().max(1) as f64;
        let seconds = started.elapsed().as_secs_f64();
        let rate = |k: &str| {
            (active[k].as_u64().unwrap_or(0) - before[k].as_u64().unwrap_or(0)) as f64 / seconds
        };
        eprintln!(
            "during the transfer and churn: lag_ms mean {mean:.1} max {} ({} samples); {:.0} datagrams/s, {:.0} bytes/s to the standby; {} flows on the active node",
            lags.iter().max().unwrap_or(&0),
            lags.len(),
            rate("sent"),
            rate("sent_bytes"),
            self.json(victim, &["stats", "--json"])["flows_active"],
        );
        self.kill(victim);
        wait_until(
            "the addresses on the survivor",
            Duration::from_secs(10),
            || self.holds_vips(survivor),
        );
        let child = &mut self.background[iperf];
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().expect("wait").is_none() {
            assert!(Instant::now() < deadline, "iperf3 did not finish");
            std::thread::sleep(Duration::from_millis(100));
        }
        let churned = std::fs::read_to_string(&churn_out).unwrap_or_default();
        eprintln!("churn over 5 s (across the failover): {}", churned.trim());
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        let report: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("iperf3 output ({e}): {text}\n{}", self.logs()));
        assert!(
            report.get("error").is_none(),
            "the transfer broke at failover: {}\n{}",
            report["error"],
            self.logs()
        );
        let received = report["end"]["sum_received"]["bytes"]
            .as_f64()
            .unwrap_or(0.0);
        assert!(received > 1e6, "{received} bytes");
        // The failover gap: the longest run of intervals without data.
        let (mut gap, mut run) = (0.0f64, 0.0f64);
        for i in report["intervals"].as_array().expect("intervals") {
            let sum = &i["sum"];
            if sum["bytes"].as_f64().unwrap_or(0.0) < 1.0 {
                run += sum["seconds"].as_f64().unwrap_or(0.0);
                gap = gap.max(run);
            } else {
                run = 0.0;
            }
        }
        let after = report["intervals"].as_array().unwrap().last().unwrap()["sum"]["bytes"]
            .as_f64()
            .unwrap_or(0.0);
        assert!(after > 0.0, "no data after the failover:\n{}", self.logs());
        gap
    }
}
