//! A throwaway topology for end-to-end tests: a client namespace and a
//! server namespace joined only through a `tunwall run` process (the real
//! binary), in "bump in the wire" shape: the inside TUN lives in the client's
//! namespace, the outside TUN in the server's.
//!
//! Names are unique per test run and everything is torn down on drop, also
//! when the test fails: the gateway process, both namespaces (and with them
//! any leftover device), and the temporary directory.

#![allow(dead_code)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const CLIENT4: &str = "198.18.1.10";
pub const SERVER4: &str = "198.18.2.20";
pub const CLIENT6: &str = "fd00:1::10";
pub const SERVER6: &str = "fd00:2::20";

pub mod vpn;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Why this machine cannot run the end-to-end tests, if it cannot.
pub fn cannot_run() -> Option<String> {
    if !Path::new("/dev/net/tun").exists() {
        return Some("/dev/net/tun is missing".into());
    }
    // CAP_NET_ADMIN: creating a namespace needs it as much as a TUN does.
    let probe = format!(
        "twprobe{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let ok = Command::new("ip")
        .args(["netns", "add", &probe])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        return Some(
            "cannot create network namespaces (not root, or CAP_NET_ADMIN missing)".into(),
        );
    }
    let _ = Command::new("ip").args(["netns", "del", &probe]).status();
    None
}

/// Fails the calling test when the machine cannot run it: a green run must
/// mean the end-to-end tests ran (run `make test` as root).
#[macro_export]
macro_rules! require_netns {
    () => {
        if let Some(why) = $crate::netns::cannot_run() {
            panic!("end-to-end test cannot run: {why}");
        }
    };
}

pub struct Topology {
    pub client: String,
    pub server: String,
    pub lan_dev: String,
    pub wan_dev: String,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub events: PathBuf,
    child: Option<Child>,
    /// A gateway that took over from `child` (`tunwall upgrade`): not our
    /// child, so it is stopped by its pid.
    adopted: Option<u32>,
    background: Vec<Child>,
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

impl Topology {
    /// Builds the namespaces and writes a config with `extra` appended
    /// ([flows] settings, filters…). `flows` is the body of the [flows] table.
    pub fn new(flows: &str, extra: &str) -> Topology {
        Topology::with_offload(true, flows, extra)
    }

    /// As [`Topology::new`], choosing the I/O mode (`[gateway] offload`).
    pub fn with_offload(offload: bool, flows: &str, extra: &str) -> Topology {
        Topology::build(offload, false, "", flows, extra)
    }

    /// As [`Topology::new`], with `gateway` added to `[gateway]`; a
    /// `{dir}` in it stands for the topology's temporary directory.
    pub fn with_gateway(gateway: &str, flows: &str, extra: &str) -> Topology {
        Topology::build(true, false, gateway, flows, extra)
    }

    /// As [`Topology::new`], with the inside device created beforehand as a
    /// persistent multi-queue TUN device, so tunwall attaches to it.
    pub fn with_existing_lan_device(flows: &str, extra: &str) -> Topology {
        Topology::build(true, true, "", flows, extra)
    }

    fn build(
        offload: bool,
        existing_lan: bool,
        gateway: &str,
        flows: &str,
        extra: &str,
    ) -> Topology {
        let mut t = Topology::prepare_with(offload, existing_lan, gateway, flows, extra);
        t.start();
        t
    }

    /// The namespaces and the config of [`Topology::new`], with the gateway
    /// not started yet ([`Topology::start`]).
    pub fn prepare(offload: bool, existing_lan: bool, flows: &str, extra: &str) -> Topology {
        Topology::prepare_with(offload, existing_lan, "", flows, extra)
    }

    fn prepare_with(
        offload: bool,
        existing_lan: bool,
        gateway: &str,
        flows: &str,
        extra: &str,
    ) -> Topology {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}{}", std::process::id() % 100_000, n);
        let dir = std::env::temp_dir().join(format!("tunwall-e2e-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let t = Topology::at(
            dir,
            ["twc", "tws", "twl", "tww"].map(|p| format!("{p}{tag}")),
        );
        for ns in [&t.client, &t.server] {
            let out = run(Command::new("ip").args(["netns", "add", ns]));
            assert!(
                out.status.success(),
                "ip netns add {ns}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            run(Command::new("ip").args(["-n", ns, "link", "set", "lo", "up"]));
        }
        let config = format!(
            r#"
[gateway]
workers = 2
offload = {offload}
control_socket = "{socket}"
{gateway}

[[port]]
name = "lan"
device = "{lan}"
zone = "inside"
netns = "{client}"
addresses = ["{CLIENT4}/24", "{CLIENT6}/64"]
kernel_routes = ["198.18.2.0/24", "fd00:2::/64"]
routes = ["198.18.1.0/24", "fd00:1::/64"]

[[port]]
name = "wan"
device = "{wan}"
zone = "outside"
netns = "{server}"
addresses = ["{SERVER4}/24", "{SERVER6}/64"]
kernel_routes = ["198.18.1.0/24", "fd00:1::/64"]
routes = ["198.18.2.0/24", "fd00:2::/64"]

[flows]
{flows}

[events]
file = "{events}"
discard_rate = 1000

{extra}
"#,
            socket = t.socket.display(),
            lan = t.lan_dev,
            wan = t.wan_dev,
            client = t.client,
            server = t.server,
            events = t.events.display(),
            gateway = gateway.replace("{dir}", &t.dir.display().to_string()),
        );
        std::fs::write(&t.config, config).expect("write config");
        if existing_lan {
            let out = run(Command::new("ip").args([
                "-n",
                &t.client,
                "tuntap",
                "add",
                "dev",
                &t.lan_dev,
                "mode",
                "tun",
                "multi_queue",
            ]));
            assert!(
                out.status.success(),
                "ip tuntap add: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        t
    }

    /// A topology not yet started in `dir`: client and server namespaces,
    /// inside and outside devices.
    fn at(dir: PathBuf, [client, server, lan_dev, wan_dev]: [String; 4]) -> Topology {
        Topology {
            client,
            server,
            lan_dev,
            wan_dev,
            config: dir.join("tunwall.toml"),
            socket: dir.join("control.sock"),
            events: dir.join("events.jsonl"),
            dir,
            child: None,
            adopted: None,
            background: Vec::new(),
        }
    }

    /// tunwall alone, on namespaces the caller built: `body` is the
    /// configuration without `[gateway]` and `[events]`, which this adds
    /// (the control socket and event file in the run's directory).
    pub fn external(body: &str) -> Topology {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("tunwall-e2e-x{}{n}", std::process::id() % 100_000));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut t = Topology::at(dir, ["", "", "", ""].map(String::from));
        let config = format!(
            "[gateway]\ncontrol_socket = \"{}\"\n\n[events]\nfile = \"{}\"\ndiscard_rate = 1000\n\n{body}",
            t.socket.display(),
            t.events.display()
        );
        std::fs::write(&t.config, config).expect("write config");
        t.start();
        t
    }

    /// Starts `tunwall run` and waits until it answers on its socket.
    pub fn start(&mut self) {
        self.start_with_env(&[]);
    }

    /// As [`Topology::start`], with more environment variables.
    pub fn start_with_env(&mut self, env: &[(&str, &str)]) {
        let log = std::fs::File::create(self.dir.join("tunwall.log")).expect("log file");
        // The widest umask: the modes of what tunwall creates (socket 0600,
        // event file 0640) must not depend on the caller's. An empty PATH:
        // the gateway configures its devices itself, iproute2 is no
        // run-time dependency.
        let child = Command::new("sh")
            .args([
                "-c",
                "umask 000; PATH=/nonexistent exec \"$0\" run -c \"$1\"",
            ])
            .arg(env!("CARGO_BIN_EXE_tunwall"))
            .arg(&self.config)
            .env("RUST_LOG", "debug")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn tunwall");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.socket.exists() && self.cli(&["stats", "--json"]).status.success() {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("tunwall exited early ({status}):\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("tunwall did not come up:\n{}", self.log());
    }

    /// The gateway's process id.
    pub fn pid(&self) -> u32 {
        self.adopted
            .unwrap_or_else(|| self.child.as_ref().expect("running").id())
    }

    /// Runs `tunwall upgrade ARGS…`; when it succeeds, waits for the old
    /// process to exit 0 and follows the new one.
    pub fn upgrade(&mut self, args: &[&str]) -> Output {
        let mut all = vec!["upgrade"];
        all.extend_from_slice(args);
        let out = self.cli(&all);
        if !out.status.success() {
            return out;
        }
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let pid: u32 = stdout
            .split_whitespace()
            .skip_while(|w| *w != "pid")
            .nth(1)
            .and_then(|p| p.trim_end_matches(':').parse().ok())
            .unwrap_or_else(|| panic!("no pid in {stdout:?}"));
        if let Some(old) = self.adopted.replace(pid) {
            wait_gone(old);
        } else {
            let mut child = self.child.take().expect("running");
            let deadline = Instant::now() + Duration::from_secs(10);
            let status = loop {
                if let Some(status) = child.try_wait().expect("wait") {
                    break status;
                }
                assert!(
                    Instant::now() < deadline,
                    "the old gateway did not exit after the upgrade:\n{}",
                    self.log()
                );
                std::thread::sleep(Duration::from_millis(20));
            };
            assert!(
                status.success(),
                "the old gateway exited with {status}:\n{}",
                self.log()
            );
        }
        out
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("tunwall.log")).unwrap_or_default()
    }

    /// Runs a tunwall client command against this gateway.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tunwall"));
        cmd.arg(args[0])
            .arg("-s")
            .arg(&self.socket)
            .args(&args[1..]);
        run(&mut cmd)
    }

    pub fn flows(&self) -> Vec<Value> {
        let out = self.cli(&["flows", "--json"]);
        assert!(
            out.status.success(),
            "flows: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout)
            .expect("flows json")
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    pub fn stats(&self) -> Value {
        let out = self.cli(&["stats", "--json"]);
        assert!(
            out.status.success(),
            "stats: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("stats json")
    }

    pub fn discards(&self, reason: &str) -> u64 {
        self.stats()["discards"][reason].as_u64().unwrap_or(0)
    }

    /// The events written so far.
    pub fn events(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.events)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits until an event satisfying `pred` was written.
    pub fn wait_event(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(e) = self.events().into_iter().find(|e| pred(e)) {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} event; events:\n{:#?}\nlog:\n{}",
                self.events(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn exec(&self, ns: &str, args: &[&str]) -> Output {
        run(Command::new("ip").args(["netns", "exec", ns]).args(args))
    }

    pub fn in_client(&self, args: &[&str]) -> Output {
        self.exec(&self.client, args)
    }

    pub fn in_server(&self, args: &[&str]) -> Output {
        self.exec(&self.server, args)
    }

    /// Starts a long-running program in a namespace; killed on drop.
    pub fn spawn(&mut self, ns: &str, args: &[&str]) {
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        self.background.push(child);
    }

    /// Runs python code in a namespace.
    pub fn python(&self, ns: &str, code: &str) -> Output {
        self.exec(ns, &["python3", "-c", code])
    }

    /// Writes a new config (for reloads).
    pub fn rewrite_config(&self, f: impl FnOnce(String) -> String) {
        let text = std::fs::read_to_string(&self.config).expect("config");
        std::fs::write(&self.config, f(text)).expect("write config");
    }

    /// Sends SIGTERM to a gateway that took over and waits until it is gone.
    pub fn stop_adopted(&mut self) {
        let pid = self.adopted.take().expect("an upgraded gateway");
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        assert!(
            wait_gone(pid),
            "tunwall {pid} did not stop on SIGTERM:\n{}",
            self.log()
        );
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("tunwall did not stop on SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether a device exists in a namespace.
    pub fn device_exists(&self, ns: &str, dev: &str) -> bool {
        run(Command::new("ip").args(["-n", ns, "link", "show", dev]))
            .status
            .success()
    }
}

/// Waits up to 10 s until process `pid` (not a child of ours) is gone or
/// a zombie; returns whether it is.
fn wait_gone(pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return true,
            Ok(stat)
                if stat
                    .rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z')) =>
            {
                return true;
            }
            Ok(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    false
}

/// Runs `tunwall ARGS` (with `stdin` as its input) with its standard output a pipe nobody reads.
pub fn tunwall_into_closed_pipe(args: &[&str], stdin: Option<&str>) -> std::process::Output {
    let (read, write) = nix::unistd::pipe().expect("pipe");
    drop(read);
    let mut child = Command::new(env!("CARGO_BIN_EXE_tunwall"))
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::from(write))
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tunwall");
    if let (Some(text), Some(mut input)) = (stdin, child.stdin.take()) {
        use std::io::Write;
        input.write_all(text.as_bytes()).expect("stdin");
    }
    child.wait_with_output().expect("wait")
}

impl Drop for Topology {
    fn drop(&mut self) {
        for mut c in self.background.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(pid) = self.adopted.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
            if !wait_gone(pid) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in [&self.client, &self.server]
            .into_iter()
            .filter(|n| !n.is_empty())
        {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
        if std::thread::panicking() {
            eprintln!("tunwall log of the failed test:\n{}", self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
