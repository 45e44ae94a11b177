//! The packaged unit under a real systemd: systemd runs as PID 1 of its own
//! PID, mount and cgroup namespaces on a scratch root
//! (`integration/systemd/boot.sh`) and starts `packaging/tunwall.service`
//! with the README's drop-in for ports in namespaces. The unit must reach
//! active with its hardening in force (seccomp filter, capability bounding
//! set, no new privileges), forward, reload (and refuse a broken file while
//! staying up), and stop, removing its devices.

mod netns;

use netns::SERVER4;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A systemd booted by boot.sh; powered off and cleaned up on drop.
struct Booted {
    dir: PathBuf,
    child: Child,
    /// systemd's pid in the host's PID namespace.
    pid1: u32,
    client: String,
    server: String,
}

impl Booted {
    fn boot(dir: &Path, client: &str, server: &str, config: &str) -> Booted {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        std::fs::write(dir.join("tunwall.toml"), config).expect("config");
        std::fs::write(
            dir.join("dropin.conf"),
            "[Service]\nCapabilityBoundingSet=CAP_NET_ADMIN CAP_SYS_ADMIN\n",
        )
        .expect("drop-in");
        let log = std::fs::File::create(dir.join("boot.log")).expect("log");
        let child = Command::new("bash")
            .arg(manifest.join("integration/systemd/boot.sh"))
            .arg(dir)
            .arg(env!("CARGO_BIN_EXE_tunwall"))
            .arg(manifest.join("packaging/tunwall.service"))
            .arg(dir.join("dropin.conf"))
            .arg(dir.join("tunwall.toml"))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("boot.sh");
        let mut booted = Booted {
            dir: dir.to_path_buf(),
            pid1: 0,
            child,
            client: client.into(),
            server: server.into(),
        };
        // unshare's one child becomes systemd (bash exec'd chroot, which
        // exec'd it). Before boot.sh has exec'd unshare, its children are
        // short-lived commands (stat, mkdir): only a child whose name is
        // systemd is the one.
        let children = format!("/proc/{0}/task/{0}/children", booted.child.id());
        let deadline = Instant::now() + Duration::from_secs(10);
        while booted.pid1 == 0 {
            if let Some(status) = booted.child.try_wait().expect("wait") {
                panic!("boot.sh ended ({status}):\n{}", booted.log());
            }
            assert!(Instant::now() < deadline, "no systemd:\n{}", booted.log());
            booted.pid1 = std::fs::read_to_string(&children)
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|pid| pid.parse::<u32>().ok())
                .find(|pid| {
                    std::fs::read_to_string(format!("/proc/{pid}/comm"))
                        .is_ok_and(|comm| comm.trim() == "systemd")
                })
                .unwrap_or(0);
            std::thread::sleep(Duration::from_millis(50));
        }
        booted
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("boot.log")).unwrap_or_default()
    }

    /// Runs a command inside the container (its mounts, PIDs and root).
    fn inside(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .args(["-t", &self.pid1.to_string(), "-m", "-p", "chroot"])
            .arg(self.dir.join("root"))
            .args(args)
            .output()
            .expect("nsenter")
    }

    fn show(&self, property: &str) -> String {
        let out = self.inside(&["systemctl", "show", "-p", property, "--value", "tunwall"]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn journal(&self) -> String {
        text(&self.inside(&["journalctl", "-u", "tunwall", "--no-pager"]))
    }

    /// Waits until the unit is active (or failed), up to 60 s.
    fn wait_active(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if !Path::new(&format!("/proc/{}", self.pid1)).exists() {
                return format!("systemd (pid {}) ended", self.pid1);
            }
            let out = self.inside(&["systemctl", "is-active", "tunwall"]);
            let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if state == "active" || state == "failed" || Instant::now() > deadline {
                return state;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Booted {
    fn drop(&mut self) {
        if self.pid1 != 0 {
            let _ = self.inside(&["systemctl", "poweroff"]);
            let deadline = Instant::now() + Duration::from_secs(15);
            while Path::new(&format!("/proc/{}", self.pid1)).exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            // PID 1 gone, the kernel kills the rest of its namespace.
            let _ = Command::new("kill")
                .args(["-KILL", &self.pid1.to_string()])
                .output();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Ok(cgroup) = std::fs::read_to_string(self.dir.join("cgroup")) {
            // Deepest first; a cgroup with no process left can be removed.
            let _ = Command::new("find")
                .args([
                    cgroup.trim(),
                    "-depth",
                    "-type",
                    "d",
                    "-exec",
                    "rmdir",
                    "{}",
                    ";",
                ])
                .output();
        }
        for ns in [&self.client, &self.server] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn the_packaged_unit_runs_under_systemd_hardened_forwards_reloads_and_stops() {
    require_netns!();
    let tag = std::process::id() % 100_000;
    let (client, server) = (format!("twsdc{tag}"), format!("twsds{tag}"));
    let (lan, wan) = (format!("twsdl{tag}"), format!("twsdw{tag}"));
    let dir = std::env::temp_dir().join(format!("tunwall-systemd-{tag}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    for ns in [&client, &server] {
        let out = Command::new("ip")
            .args(["netns", "add", ns])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        Command::new("ip")
            .args(["-n", ns, "link", "set", "lo", "up"])
            .output()
            .unwrap();
    }
    let config = format!(
        r#"
[[port]]
name = "lan"
device = "{lan}"
zone = "inside"
netns = "{client}"
addresses = ["198.18.1.10/24"]
kernel_routes = ["198.18.2.0/24"]
routes = ["198.18.1.0/24"]

[[port]]
name = "wan"
device = "{wan}"
zone = "outside"
netns = "{server}"
addresses = ["{SERVER4}/24"]
kernel_routes = ["198.18.1.0/24"]
routes = ["198.18.2.0/24"]
"#
    );
    let sd = Booted::boot(&dir, &client, &server, &config);
    let state = sd.wait_active();
    assert_eq!(state, "active", "{}\n{}", sd.log(), sd.journal());
    // READY=1 came with the status line.
    assert_eq!(sd.show("StatusText"), "forwarding");

    // The unit's hardening is in force on the running gateway.
    let main = sd.show("MainPID");
    let status = text(&sd.inside(&["cat", &format!("/proc/{main}/status")]));
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(field("Seccomp:"), "2", "SystemCallFilter: {status}");
    assert_eq!(field("NoNewPrivs:"), "1", "{status}");
    // CAP_NET_ADMIN (12) and, from the drop-in, CAP_SYS_ADMIN (21).
    assert_eq!(field("CapBnd:"), "0000000000201000", "{status}");
    // The filter (@system-service holds @aio) lets the workers batch
    // their writes through io_uring.
    let fds = text(&sd.inside(&["ls", "-l", &format!("/proc/{main}/fd")]));
    assert!(
        fds.contains("io_uring"),
        "no io_uring ring under the unit's filter: {fds}\n{}",
        sd.journal()
    );

    let ping = |who: &str| {
        Command::new("ip")
            .args(["netns", "exec", who, "ping", "-c", "1", "-W", "2", SERVER4])
            .output()
            .unwrap()
    };
    let out = ping(&client);
    assert!(out.status.success(), "{}\n{}", text(&out), sd.journal());

    // systemctl reload runs ExecReload (tunwall reload) and waits for it.
    let out = sd.inside(&["systemctl", "reload", "tunwall"]);
    assert!(out.status.success(), "{}\n{}", text(&out), sd.journal());
    assert!(sd.journal().contains("policy reloaded generation=2"));
    // A broken file: the reload fails, the service stays up on the old policy.
    let out = sd.inside(&["sh", "-c", "echo '[[filter]]' >> /etc/tunwall/tunwall.toml"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = sd.inside(&["systemctl", "reload", "tunwall"]);
    assert!(!out.status.success(), "a broken file reloaded");
    assert_eq!(sd.show("ActiveState"), "active");
    assert!(ping(&client).status.success());

    // A stop closes everything and removes the devices tunwall created.
    let out = sd.inside(&["systemctl", "stop", "tunwall"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(sd.show("ActiveState"), "inactive");
    let out = Command::new("ip")
        .args(["-n", &client, "link", "show", &lan])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{lan} left behind");
}
