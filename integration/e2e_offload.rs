//! End-to-end: UDP superframes (SPEC §8, issue 15). A sender using
//! UDP_SEGMENT, as QUIC stacks do, writes 41 datagrams at a time; with UDP
//! segmentation offload on the TUN devices each write reaches tunwall as one
//! superframe (virtio gso_type UDP_L4), is classified once and leaves whole,
//! and the receiver's kernel splits it: every datagram arrives, at its size.

mod netns;

use netns::{SERVER4, SERVER6, Topology};
use serde_json::Value;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/udp_gso.py");
/// Per write: 40 datagrams of 1200 bytes and one of 500.
const SEGMENT: usize = 1200;
const WRITE: usize = 40 * SEGMENT + 500;
const WRITES: usize = 100;

/// Starts the counting receiver in the server namespace and waits until it listens.
fn receiver(t: &Topology, addr: &str, port: u16) -> Child {
    receiver_with(t, addr, port, &[])
}

/// [`receiver`] with more of udp_gso.py's `recv` options.
fn receiver_with(t: &Topology, addr: &str, port: u16, options: &[&str]) -> Child {
    let child = Command::new("ip")
        .args(["netns", "exec", &t.server, "python3", SCRIPT, "recv", addr])
        .arg(port.to_string())
        .args(["--idle", "1.5", "--timeout", "10"])
        .args(options)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn receiver");
    let listening = (0..50).any(|_| {
        let out = t.in_server(&["ss", "-Hlun"]);
        let found = String::from_utf8_lossy(&out.stdout).contains(&format!(":{port} "));
        if !found {
            std::thread::sleep(Duration::from_millis(100));
        }
        found
    });
    assert!(listening, "the receiver does not listen on {port}");
    child
}

/// Sends `writes` writes of [`WRITE`] bytes from the client, paced (1 ms a
/// write) so the receiver's socket never overflows: a loss must be tunwall's.
/// Returns the receiver's count.
fn send_and_count(t: &Topology, receiver: Child, addr: &str, port: u16, writes: usize) -> Value {
    let sent = t.in_client(&[
        "python3",
        SCRIPT,
        "send",
        addr,
        &port.to_string(),
        "--segment",
        &SEGMENT.to_string(),
        "--write",
        &WRITE.to_string(),
        "--count",
        &writes.to_string(),
        "--pace-us",
        "1000",
    ]);
    assert!(
        sent.status.success(),
        "sender: {}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let out = receiver.wait_with_output().expect("receiver");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "receiver output ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn superframes_arrive_whole(t: &Topology, server: &str, port: u16) {
    let rx = receiver(t, server, port);
    let rx_before = t.stats()["ports"]["lan"]["rx_packets"]
        .as_u64()
        .unwrap_or(0);
    let got = send_and_count(t, rx, server, port, WRITES);
    assert_eq!(got["datagrams"], WRITES * 41, "datagrams received: {got}");
    assert_eq!(got["bytes"], WRITES * WRITE, "bytes received: {got}");
    assert_eq!(got["sizes"]["1200"], WRITES * 40, "sizes: {got}");
    assert_eq!(got["sizes"]["500"], WRITES, "sizes: {got}");
    // What tunwall read: one packet per write, not one per datagram.
    let stats = t.stats();
    let read = stats["ports"]["lan"]["rx_packets"].as_u64().unwrap_or(0) - rx_before;
    assert!(
        (WRITES as u64..WRITES as u64 * 2).contains(&read),
        "tunwall read {read} packets for {WRITES} superframes: they were split before it; stats {stats}"
    );
    // Classified once and counted once per superframe.
    let flow = t
        .flows()
        .into_iter()
        .find(|f| f["protocol"] == "udp" && f["remote_port"] == port)
        .unwrap_or_else(|| panic!("no flow to port {port}: {:?}", t.flows()));
    assert_eq!(flow["packets_out"], WRITES, "{flow}");
    assert_eq!(
        flow["bytes_out"].as_u64(),
        Some(flow_bytes(server)),
        "{flow}"
    );
}

/// The bytes of [`WRITES`] superframes as IP packets: one IP and UDP header each.
fn flow_bytes(server: &str) -> u64 {
    let headers = if server.contains(':') { 48 } else { 28 };
    (WRITES * (WRITE + headers)) as u64
}

#[test]
fn udp_superframes_pass_whole_and_every_datagram_arrives() {
    require_netns!();
    let t = Topology::new("max_flows = 10000", "");
    let stats = t.stats();
    for port in ["lan", "wan"] {
        assert_eq!(
            stats["ports"][port]["offload"], "tcp+udp",
            "the kernel must grant UDP segmentation offload (TUN_F_USO4/6, Linux 6.2+): {stats}"
        );
    }
    superframes_arrive_whole(&t, SERVER4, 5500);
    superframes_arrive_whole(&t, SERVER6, 5501);
}

#[test]
fn without_offload_the_same_datagrams_arrive_one_by_one() {
    require_netns!();
    let t = Topology::with_offload(false, "max_flows = 10000", "");
    assert_eq!(t.stats()["ports"]["lan"]["offload"], "off");
    let rx = receiver(&t, SERVER4, 5502);
    let got = send_and_count(&t, rx, SERVER4, 5502, 20);
    assert_eq!(got["datagrams"], 20 * 41, "{got}");
    let read = t.stats()["ports"]["lan"]["rx_packets"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        read >= 20 * 41,
        "one read per datagram without offload: {read}"
    );
}

/// A burst of small datagrams (plain writes, no UDP_SEGMENT): tunwall reads
/// them one by one and writes each run of a flow as one superframe; the
/// receiver gets every datagram, in order, with the bytes sent, at its size.
fn small_datagrams_arrive_coalesced(t: &Topology, server: &str, port: u16) {
    const COUNT: usize = 14_000;
    const SIZE: usize = 100;
    let before = t.stats()["coalesced"].clone();
    let rx = receiver_with(t, server, port, &["--check"]);
    // Bursts of 500 back to back, 5 ms apart: the queue holds a batch's
    // worth when tunwall reads, without overflowing.
    let sent = t.in_client(&[
        "python3",
        SCRIPT,
        "send",
        server,
        &port.to_string(),
        "--segment",
        "0",
        "--write",
        &SIZE.to_string(),
        "--count",
        &COUNT.to_string(),
        "--burst",
        "500",
        "--pace-us",
        "5000",
    ]);
    assert!(
        sent.status.success(),
        "sender: {}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let out = rx.wait_with_output().expect("receiver");
    let got: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "receiver output ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let stats = t.stats();
    let short = COUNT / 7;
    assert_eq!(
        got["datagrams"], COUNT,
        "every datagram: {got}; stats {stats}"
    );
    assert_eq!(got["out_of_order"], 0, "{got}");
    assert_eq!(got["corrupt"], 0, "{got}");
    assert_eq!(got["sizes"][SIZE.to_string()], COUNT - short, "{got}");
    assert_eq!(got["sizes"][(SIZE / 2).to_string()], short, "{got}");
    let delta = |k: &str| stats["coalesced"][k].as_u64().unwrap() - before[k].as_u64().unwrap();
    let (superframes, datagrams) = (delta("superframes"), delta("datagrams"));
    eprintln!("{server}: {datagrams} datagrams left in {superframes} superframes");
    assert!(
        superframes > 0 && datagrams >= 2 * superframes,
        "the bursts left as superframes: {superframes} superframes of {datagrams} datagrams"
    );
    assert_eq!(stats["write_errors"], 0, "{stats}");
}

#[test]
fn small_datagrams_are_coalesced_on_write_and_arrive_intact_in_order() {
    require_netns!();
    let t = Topology::new("max_flows = 10000", "");
    small_datagrams_arrive_coalesced(&t, SERVER4, 5510);
    small_datagrams_arrive_coalesced(&t, SERVER6, 5511);
    let out = t.cli(&["stats", "--prometheus"]);
    let m = String::from_utf8_lossy(&out.stdout);
    assert!(m.contains("tunwall_coalesced_datagrams_total"), "{m}");
}
