//! End to end, SPEC §15: an active/standby pair of real `tunwall run`
//! processes with keepalived (VRRP) moving the gateway's addresses.
//!
//! ```text
//!  client ─ lan-in bridge ─┬─ node A inside ns (tunwall A, keepalived) ── TUN ┐
//!  198.18.1.10             └─ node B inside ns (tunwall B, keepalived) ── TUN ┐│
//!  gw 198.18.1.1 (VIP)                                                        ││
//!  server ─ lan-out bridge ─┬─ node A outside ns (keepalived) ─────────── TUN ┘│
//!  198.18.2.20              └─ node B outside ns (keepalived) ─────────── TUN ─┘
//!  gw 198.18.2.1 (VIP)
//! ```
//!
//! Each node runs two keepalived instances (one per LAN namespace), both
//! with `nopreempt` and a track script on `tunwall stats` of their node, so
//! the two addresses move together when a node's tunwall dies. The sync
//! link runs over the inside LAN. Everything is torn down on drop.

#[path = "ha_pair.rs"]
mod ha_pair;
mod netns;

use ha_pair::*;
use std::process::Command;
use std::time::Duration;

#[test]
fn a_transfer_and_an_idle_connection_survive_failover_both_ways_with_keepalived() {
    require_netns!();
    let keepalived = Command::new("keepalived").arg("--version").output();
    assert!(
        keepalived.is_ok_and(|o| o.status.success() || !o.stderr.is_empty()),
        "keepalived is missing (make deps installs it)"
    );
    let mut p = Pair::build();
    p.start(0);
    p.start_keepalived(0);
    wait_until("A holding the addresses", Duration::from_secs(15), || {
        p.holds_vips(0)
    });
    p.start(1);
    p.start_keepalived(1);
    wait_until("the sync link up", Duration::from_secs(10), || {
        p.sync(0)["state"] == "up" && p.sync(1)["state"] == "up"
    });
    let server_log = p.dir.join("servers.log");
    p.spawn("s", &["python3", "-c", ECHO], &server_log);
    p.spawn("s", &["iperf3", "-s"], &p.dir.join("iperf3-server.log"));
    std::thread::sleep(Duration::from_millis(500));
    let idle_out = p.dir.join("idle.out");
    let idle = p.spawn("c", &["python3", "-c", IDLE], &idle_out);
    wait_until("the idle connection", Duration::from_secs(5), || {
        std::fs::read_to_string(&idle_out).is_ok_and(|t| t.starts_with("ok 1"))
    });

    // A dies: B takes the addresses and the connections.
    let gap = p.transfer_across_death(0, 1, 1);
    assert!(!p.holds_vips(0));
    let text = p.poke_idle(idle, &idle_out, 2);
    assert!(
        text.ends_with("ok 2\n"),
        "the idle connection after failover: {text}"
    );
    assert!(
        p.has_flow(1, 7000, false, None),
        "B has seen the idle connection's packets"
    );

    // A comes back, resyncs, and stays standby (nopreempt).
    p.start(0);
    wait_until("A resynced", Duration::from_secs(10), || {
        let s = p.sync(0);
        s["state"] == "up" && s["bulk_received"].as_u64() >= Some(1)
    });
    assert!(
        p.has_flow(0, 7000, true, None),
        "A holds the idle connection again"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert!(p.holds_vips(1), "A must not take the addresses back");

    // B dies: back to A, nothing lost either.
    let gap_back = p.transfer_across_death(1, 0, 2);
    let text = p.poke_idle(idle, &idle_out, 3);
    assert!(
        text.ends_with("ok 3\n"),
        "the idle connection after failing back: {text}"
    );
    let status = p.sync(0);
    assert_eq!(status["state"], "down", "{status}");
    eprintln!("failover gaps: A→B {gap:.1} s, B→A {gap_back:.1} s");

    // B is down: 20 000 new flows on A overflow its bounded send queue
    // (oldest messages dropped, a bulk resync marked) instead of growing.
    let rss = |p: &Pair| {
        let pid = p.tunwall[0].as_ref().unwrap().id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS"))
            .map(str::to_string)
            .unwrap_or_default()
    };
    let before = rss(&p);
    let flood = "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nfor i in range(20000): s.sendto(b'x',('198.18.2.20',20000+i))\n";
    let out = run(Command::new("ip").args(["netns", "exec", &p.ns("c"), "python3", "-c", flood]));
    assert!(out.status.success());
    wait_until("the queue overflowing", Duration::from_secs(10), || {
        p.sync(0)["overflowed"].as_u64() > Some(0)
    });
    let s = p.sync(0);
    assert!(s["queued"].as_u64() <= s["queue_limit"].as_u64(), "{s}");
    eprintln!(
        "A with its peer down, 20 000 new flows: {s}; {before} -> {}",
        rss(&p)
    );

    // A peer with the wrong key: its datagrams are refused and counted.
    let config = std::fs::read_to_string(p.dir.join("b.toml")).unwrap();
    std::fs::write(
        p.dir.join("b.toml"),
        config.replace("sync.key", "wrong.key"),
    )
    .unwrap();
    p.start(1);
    wait_until("the wrong key refused", Duration::from_secs(10), || {
        p.sync(0)["rejected_by"]["unauthenticated"].as_u64() >= Some(3)
    });
    assert_eq!(p.sync(0)["state"], "down");
    assert_eq!(p.sync(1)["state"], "down");
    assert!(
        p.json(1, &["flows", "--json"])
            .as_array()
            .unwrap()
            .is_empty()
    );
}
