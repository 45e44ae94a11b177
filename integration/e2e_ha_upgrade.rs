//! End to end, SPEC §13 with §15: `tunwall upgrade` of a node of an HA
//! pair. The new process cannot bind `[sync] listen` while the old one
//! holds it, so the sync socket is handed over with the TUN queues; the
//! sync goes on (the peer sees a new session and resyncs it), an idle
//! connection through the node keeps working, and a flow made after the
//! upgrade reaches the peer. The pair of integration/e2e_ha.rs, without
//! keepalived: node A holds the gateway addresses.

#[path = "ha_pair.rs"]
mod ha_pair;
mod netns;

use ha_pair::*;
use std::process::Command;
use std::time::Duration;

#[test]
fn an_upgraded_node_keeps_its_sync_socket_and_its_peer() {
    require_netns!();
    let mut p = Pair::build();
    sh(&format!(
        "ip -n {} addr add 198.18.1.1/24 dev eth0; ip -n {} addr add 198.18.2.1/24 dev eth0",
        p.ns("ai"),
        p.ns("ao")
    ));
    p.start(0);
    p.start(1);
    wait_until("the sync link up", Duration::from_secs(10), || {
        p.sync(0)["state"] == "up" && p.sync(1)["state"] == "up"
    });
    p.spawn("s", &["python3", "-c", ECHO], &p.dir.join("echo.log"));
    std::thread::sleep(Duration::from_millis(500));
    let idle_out = p.dir.join("idle.out");
    let idle = p.spawn("c", &["python3", "-c", IDLE], &idle_out);
    wait_until("the idle connection", Duration::from_secs(5), || {
        std::fs::read_to_string(&idle_out).is_ok_and(|t| t.starts_with("ok 1"))
    });
    wait_until("B holding the connection", Duration::from_secs(5), || {
        p.has_flow(1, 7000, true, None)
    });
    let resyncs = p.sync(1)["bulk_sent"].as_u64().unwrap_or(0);

    let out = p.cli(0, &["upgrade"]);
    assert!(
        out.status.success(),
        "upgrade: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        p.logs()
    );
    // The old process hands over and exits 0; the new one (in the same
    // namespace, ended by the pair's teardown) serves the same socket.
    let mut old = p.tunwall[0].take().expect("A");
    let status = old.wait().expect("the old process");
    assert!(status.success(), "the old process: {status}");
    wait_until(
        "A's new process in sync with B",
        Duration::from_secs(10),
        || {
            let (a, b) = (p.sync(0), p.sync(1));
            a["state"] == "up"
                && a["received"].as_u64() > Some(0)
                && b["bulk_sent"].as_u64() > Some(resyncs)
        },
    );
    let log = std::fs::read_to_string(p.dir.join("a.log")).unwrap_or_default();
    assert!(!log.contains("Address already in use"), "{log}");

    // The connection goes on through the new process; a new flow made by
    // it reaches B.
    let text = p.poke_idle(idle, &idle_out, 2);
    assert!(
        text.ends_with("ok 2\n"),
        "the idle connection after the upgrade: {text}"
    );
    let send = "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.sendto(b'x',('198.18.2.20',5556))\n";
    let out = run(Command::new("ip").args(["netns", "exec", &p.ns("c"), "python3", "-c", send]));
    assert!(out.status.success());
    wait_until("the new flow on B", Duration::from_secs(5), || {
        p.has_flow(1, 5556, true, None)
    });
    assert!(
        p.has_flow(1, 7000, true, None),
        "B still holds the connection"
    );
    let a = p.sync(0);
    assert_eq!(a["rejected"], 0, "{a}");
}
