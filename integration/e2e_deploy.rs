//! End-to-end tests of tunwall as a service: devices configured over netlink
//! (no iproute2 in the gateway's PATH), errors naming device and operation,
//! systemd readiness, the event file reopened on SIGUSR1, plain logs, and
//! clients that end quietly on a closed pipe.

mod netns;

use netns::{SERVER4, Topology, tunwall_into_closed_pipe};
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

const FLOWS: &str = "max_flows = 10000";

/// A notify socket like systemd's, in the topology's directory.
fn notify_socket(t: &Topology) -> (UnixDatagram, String) {
    let path = t.dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    (socket, path.display().to_string())
}

fn receive(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).expect("a notification");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn readiness_is_sent_once_the_ports_are_up_reloads_are_announced_and_stopping_at_shutdown() {
    require_netns!();
    let mut t = Topology::prepare(true, false, FLOWS, "");
    let (socket, path) = notify_socket(&t);
    t.start_with_env(&[("NOTIFY_SOCKET", &path)]);
    let ready = receive(&socket);
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    // The devices were configured over netlink by a gateway that has no
    // `ip` in its PATH: the addresses and the kernel routes carry traffic.
    let out = t.in_client(&["ping", "-c", "1", "-W", "2", SERVER4]);
    assert!(out.status.success(), "{out:?}\n{}", t.log());
    assert!(!t.log().contains('\x1b'), "colour codes in a log file");
    // A reload is bracketed by RELOADING=1, stamped with CLOCK_MONOTONIC,
    // and READY=1 (sd_notify(3)), from `tunwall reload` and from SIGHUP,
    // and also when the file is refused (the old policy serves on).
    let monotonic = || {
        let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
        now.tv_sec() as u64 * 1_000_000 + now.tv_nsec() as u64 / 1_000
    };
    let reloads: [&dyn Fn(&Topology) -> bool; 3] = [
        &|t| t.cli(&["reload"]).status.success(),
        &|t| {
            Command::new("kill")
                .args(["-HUP", &t.pid().to_string()])
                .status()
                .expect("kill")
                .success()
        },
        &|t| {
            t.rewrite_config(|c| c + "\n[[filter]]\nname = \"broken\"\n");
            !t.cli(&["reload"]).status.success()
        },
    ];
    for reload in reloads {
        let before = monotonic();
        assert!(reload(&t), "{}", t.log());
        let reloading = receive(&socket);
        let after = monotonic();
        let mut lines = reloading.lines();
        assert_eq!(lines.next(), Some("RELOADING=1"), "{reloading:?}");
        let stamp: u64 = lines
            .next()
            .and_then(|l| l.strip_prefix("MONOTONIC_USEC="))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no MONOTONIC_USEC in {reloading:?}"));
        assert!(
            (before..=after).contains(&stamp),
            "{before} {stamp} {after}"
        );
        assert_eq!(receive(&socket), "READY=1");
    }
    assert!(t.stop().success());
    assert_eq!(receive(&socket), "STOPPING=1");
}

#[test]
fn a_device_the_kernel_refuses_is_named_with_the_operation_and_no_readiness_is_sent() {
    require_netns!();
    let t = Topology::prepare(true, false, FLOWS, "");
    // IPv6 off in the client's namespace: the kernel refuses the lan
    // device's IPv6 address.
    for key in ["all", "default"] {
        let out = t.exec(
            &t.client,
            &[
                "sysctl",
                "-q",
                "-w",
                &format!("net.ipv6.conf.{key}.disable_ipv6=1"),
            ],
        );
        assert!(out.status.success(), "{out:?}");
    }
    let (socket, path) = notify_socket(&t);
    let out = Command::new(env!("CARGO_BIN_EXE_tunwall"))
        .args(["run", "-c"])
        .arg(&t.config)
        .env("NOTIFY_SOCKET", &path)
        .env("PATH", "/nonexistent")
        .output()
        .expect("tunwall run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let expected = format!(
        "tunwall: port lan: adding address fd00:1::10/64 to {}: Permission denied",
        t.lan_dev
    );
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(!stderr.contains('\x1b'), "colour codes on a pipe: {stderr}");
    socket.set_nonblocking(true).expect("nonblocking");
    assert!(
        socket.recv(&mut [0u8; 64]).is_err(),
        "READY sent on failure"
    );
    assert!(
        !t.device_exists(&t.client, &t.lan_dev),
        "device left behind"
    );
}

#[test]
fn sigusr1_reopens_the_event_file_after_logrotate_moved_it() {
    require_netns!();
    let mut t = Topology::new(FLOWS, "");
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
    let out = t.in_client(&["ping", "-c", "1", "-W", "2", SERVER4]);
    assert!(out.status.success(), "{out:?}");
    t.wait_event("flow_created", |_| true);
    // logrotate's default: move the file away, then signal.
    let rotated = t.dir.join("events.jsonl.1");
    std::fs::rename(&t.events, &rotated).expect("rotate");
    let status = Command::new("kill")
        .args(["-USR1", &t.pid().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(5);
    while !t.events.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(t.events.exists(), "no new event file:\n{}", t.log());
    assert_eq!(mode(&t.events), 0o640);
    // A new flow's events land in the new file, not the moved one.
    let out = t.in_client(&["ping", "-c", "1", "-W", "2", SERVER4]);
    assert!(out.status.success());
    assert!(t.stop().success());
    let lines = |p: &std::path::Path| -> Vec<Value> {
        std::fs::read_to_string(p)
            .expect("events")
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    };
    let old = lines(&rotated);
    let new = lines(&t.events);
    assert!(old.iter().any(|e| e["event"] == "flow_created"), "{old:?}");
    assert!(
        new.iter()
            .any(|e| e["event"] == "flow_closed" && e["reason"] == "shutdown"),
        "{new:?}"
    );
    assert!(
        !old.iter().any(|e| e["event"] == "flow_closed"),
        "events after SIGUSR1 went to the moved file: {old:?}"
    );
}

#[test]
fn clients_end_quietly_when_the_reader_closes_the_pipe() {
    require_netns!();
    let t = Topology::new(FLOWS, "");
    let out = t.in_client(&["ping", "-c", "1", "-W", "2", SERVER4]);
    assert!(out.status.success());
    let socket = t.socket.display().to_string();
    for args in [
        vec!["flows", "-s", &socket],
        vec!["flows", "-s", &socket, "--json"],
        vec!["stats", "-s", &socket],
        vec!["stats", "-s", &socket, "--prometheus"],
    ] {
        let out = tunwall_into_closed_pipe(&args, None);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.is_empty(),
            "tunwall {args:?}: {:?} {stderr}",
            out.status
        );
    }
}

/// The capabilities `packaging/tunwall.service` bounds the service to, in
/// setpriv's spelling (`+net_admin,…`).
fn unit_capabilities() -> String {
    let unit = include_str!("../packaging/tunwall.service");
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("CapabilityBoundingSet in the unit");
    line.split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn the_units_capabilities_suffice_for_ports_in_the_gateways_namespace() {
    require_netns!();
    let t = Topology::prepare(true, false, FLOWS, "");
    // Both ports in the namespace the gateway itself runs in (the client's):
    // no `netns` keys, so no setns.
    let config = std::fs::read_to_string(&t.config)
        .expect("config")
        .lines()
        .filter(|l| !l.starts_with("netns") && !l.starts_with("kernel_routes"))
        .collect::<Vec<_>>()
        .join("\n");
    let local = t.dir.join("local.toml");
    std::fs::write(&local, config).expect("write config");
    let caps = unit_capabilities();
    assert_eq!(caps, "+net_admin");
    let (socket, path) = notify_socket(&t);
    let mut gateway = Command::new("ip")
        .args(["netns", "exec", &t.client, "setpriv", "--inh-caps=-all"])
        .arg(format!("--bounding-set=-all,{caps}"))
        .arg(env!("CARGO_BIN_EXE_tunwall"))
        .args(["run", "-c"])
        .arg(&local)
        .env("NOTIFY_SOCKET", &path)
        .stderr(std::fs::File::create(t.dir.join("tunwall.log")).expect("log"))
        .spawn()
        .expect("tunwall under setpriv");
    let ready = socket.recv(&mut [0u8; 64]);
    let addr = t.exec(&t.client, &["ip", "-6", "addr", "show", "dev", &t.wan_dev]);
    let _ = Command::new("kill")
        .args(["-TERM", &gateway.id().to_string()])
        .status();
    let status = gateway.wait().expect("wait");
    assert!(ready.is_ok(), "not ready with {caps}:\n{}", t.log());
    assert!(
        String::from_utf8_lossy(&addr.stdout).contains("fd00:2::20/64"),
        "{addr:?}"
    );
    assert!(status.success(), "{status}:\n{}", t.log());

    // A port in another namespace needs CAP_SYS_ADMIN for setns(2), which
    // the unit leaves out (see its comment): the error says so.
    let out = Command::new("setpriv")
        .arg("--inh-caps=-all")
        .arg(format!("--bounding-set=-all,{caps}"))
        .arg(env!("CARGO_BIN_EXE_tunwall"))
        .args(["run", "-c"])
        .arg(&t.config)
        .output()
        .expect("tunwall under setpriv");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains(&format!(
                "port lan: entering network namespace /run/netns/{}: EPERM",
                t.client
            )),
        "{stderr}"
    );
}

#[test]
fn a_device_name_taken_by_another_kind_of_device_is_explained() {
    require_netns!();
    let t = Topology::prepare(true, false, FLOWS, "");
    // A single-queue TUN device of the lan port's name.
    let out = t.exec(
        &t.client,
        &["ip", "tuntap", "add", "dev", &t.lan_dev, "mode", "tun"],
    );
    assert!(out.status.success(), "{out:?}");
    let out = Command::new(env!("CARGO_BIN_EXE_tunwall"))
        .args(["run", "-c"])
        .arg(&t.config)
        .output()
        .expect("tunwall run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!(
            "port lan: opening TUN device {}: Invalid argument (os error 22) (a device of this name exists and is not a multi-queue TUN device",
            t.lan_dev
        )),
        "{stderr}"
    );
    assert!(
        t.device_exists(&t.client, &t.lan_dev),
        "the operator's device stays"
    );
}
