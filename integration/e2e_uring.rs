//! End-to-end: batched TUN writes through io_uring (issue 15). The real
//! binary writes each loop turn's packets with one `io_uring_enter`; with
//! `TUNWALL_IO_URING=off` (what a kernel without io_uring gets too) it
//! writes each with `write(2)`. Both carry complete TCP connections, every
//! answer whole, without a failed write.

mod netns;

use netns::{SERVER4, Topology};
use serde_json::Value;
use std::time::Duration;

const CONNRATE: &str = env!("CARGO_BIN_EXE_tunwall-connrate");

/// The io_uring instances the gateway process holds open.
fn rings(t: &Topology) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", t.pid()))
        .expect("the gateway's descriptors")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().contains("io_uring"))
        .count()
}

/// Short TCP connections from client to server for two seconds: each
/// connect, a request, the whole answer and the close pass through tunwall.
fn connections_pass(t: &mut Topology) {
    let server = format!("{SERVER4}:8080");
    let ns = t.server.clone();
    t.spawn(&ns, &[CONNRATE, "server", &server, "2"]);
    let listening = (0..50).any(|_| {
        let out = t.in_server(&["ss", "-Hltn"]);
        let found = String::from_utf8_lossy(&out.stdout).contains(":8080 ");
        if !found {
            std::thread::sleep(Duration::from_millis(100));
        }
        found
    });
    assert!(listening, "the server does not listen");
    let out = t.in_client(&[CONNRATE, "client", &server, "2", "4"]);
    let got: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "client output ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(got["failed"], 0, "{got}");
    assert!(got["connections"].as_u64().unwrap_or(0) >= 100, "{got}");
    let stats = t.stats();
    assert_eq!(stats["write_errors"], 0, "{stats}");
}

#[test]
fn writes_go_through_io_uring_and_connections_pass() {
    require_netns!();
    let mut t = Topology::new("max_flows = 100000", "");
    assert_eq!(rings(&t), 2, "one ring per worker:\n{}", t.log());
    connections_pass(&mut t);
}

#[test]
fn with_io_uring_off_each_packet_is_a_plain_write_and_connections_pass() {
    require_netns!();
    let mut t = Topology::prepare(true, false, "max_flows = 100000", "");
    t.start_with_env(&[("TUNWALL_IO_URING", "off")]);
    assert_eq!(rings(&t), 0, "no ring:\n{}", t.log());
    connections_pass(&mut t);
}
