//! `tunwall simulate`: the engine on a virtual clock, with no device.
//!
//! It plays the traffic of the README demo — a ping, a TCP transfer, a UDP
//! query, an unsolicited inbound connection — between an inside client and
//! an outside server under the default policy, so the flow semantics can be
//! seen without root. Every packet goes through the same `Engine::process`
//! the gateway uses.

use std::process::ExitCode;
use std::sync::Arc;
use tunwall::engine::{HostModel, Stats, Verdict};
use tunwall::event::EventKind;
use tunwall::flow::FlowConfig;
use tunwall::io::worker::IoStats;
use tunwall::policy::DefaultPolicy;
use tunwall::render;
use tunwall::testkit::{ACK, Ep, FIN, Harness, LAN, SYN, WAN, ep, udp};

const CLIENT: &str = "198.18.1.10";
const SERVER: &str = "198.18.2.20";

/// The test kit's harness, printing every packet's fate.
struct Sim {
    h: Harness,
    ports: Vec<String>,
}

impl Sim {
    fn send(&mut self, what: &str, port: u8, packet: Vec<u8>) {
        let verdict = self.h.send(port, packet);
        let shown = match verdict {
            Verdict::Forward(out) => format!("forwarded to {}", self.ports[usize::from(out)]),
            Verdict::Drop(reason) => format!("DROPPED ({reason})"),
            Verdict::Held => "held (pending)".to_string(),
        };
        println!(
            "  t={:>6} ms  {:<4} → {:<46} {}",
            self.h.now.as_millis(),
            self.ports[usize::from(port)],
            what,
            shown
        );
    }

    fn advance(&mut self, ms: u64) {
        self.h.advance_ms(ms);
    }
}

/// A segment of the demo connection (client:40000 ↔ server:80).
fn tcp(from_client: bool, flags: u8, seq: u32, ack: u32, payload: &[u8]) -> Vec<u8> {
    let (client, server) = (ep(CLIENT, 40000), ep(SERVER, 80));
    let (from, to) = if from_client {
        (client, server)
    } else {
        (server, client)
    };
    tcp_between(from, to, flags, seq, ack, payload)
}

fn tcp_between(from: Ep, to: Ep, flags: u8, seq: u32, ack: u32, payload: &[u8]) -> Vec<u8> {
    let wscale = (flags & SYN != 0).then_some(7);
    tunwall::testkit::tcp(from, to, flags, seq, ack, 64240, wscale, payload)
}

fn echo(from: &str, to: &str, request: bool) -> Vec<u8> {
    tunwall::testkit::echo(from, to, request, 7, 1)
}

/// Runs the scripted exchange.
pub fn run(json: bool) -> ExitCode {
    let mut flows = FlowConfig::with_max_flows(1024);
    flows.udp_idle = std::time::Duration::from_secs(5);
    let h = Harness::with(flows, HostModel::Weak, Arc::new(DefaultPolicy::default()));
    let ports = h.gw.port_names();
    let mut sim = Sim { h, ports };
    println!(
        "policy: auth_connect permit, auth_recv_accept block, icmp_error block (the defaults)"
    );
    println!("client 198.18.1.10 on lan (inside), server 198.18.2.20 via wan (outside)\n");

    println!("ping:");
    sim.send(
        "ICMP echo request client → server",
        LAN,
        echo(CLIENT, SERVER, true),
    );
    sim.advance(1);
    sim.send(
        "ICMP echo reply server → client",
        WAN,
        echo(SERVER, CLIENT, false),
    );
    sim.send(
        "ICMP echo request server → client",
        WAN,
        echo(SERVER, CLIENT, true),
    );

    println!("\nTCP transfer (client:40000 → server:80):");
    let (c, s) = (1_000u32, 5_000u32);
    sim.send("SYN", LAN, tcp(true, SYN, c, 0, b""));
    sim.advance(1);
    sim.send("SYN-ACK", WAN, tcp(false, SYN | ACK, s, c + 1, b""));
    sim.send(
        "ACK (handshake complete)",
        LAN,
        tcp(true, ACK, c + 1, s + 1, b""),
    );
    let body = [0x42u8; 1000];
    sim.send(
        "1000 bytes of data",
        LAN,
        tcp(true, ACK, c + 1, s + 1, &body),
    );
    sim.advance(1);
    sim.send("ACK", WAN, tcp(false, ACK, s + 1, c + 1001, b""));
    sim.send(
        "segment far outside the window",
        WAN,
        tcp(false, ACK, s + 50_000_000, c + 1001, b"x"),
    );

    println!("\nUDP query and an unsolicited inbound datagram:");
    sim.send(
        "UDP client:5353 → server:53",
        LAN,
        udp(ep(CLIENT, 5353), ep(SERVER, 53), b"query"),
    );
    sim.send(
        "UDP server:53 → client:5353 (reply)",
        WAN,
        udp(ep(SERVER, 53), ep(CLIENT, 5353), b"answer"),
    );
    sim.send(
        "UDP server:9999 → client:7 (unsolicited)",
        WAN,
        udp(ep(SERVER, 9999), ep(CLIENT, 7), b"hi"),
    );

    println!("\nan inbound connection attempt:");
    sim.send(
        "SYN server:41000 → client:22",
        WAN,
        tcp_between(ep(SERVER, 41000), ep(CLIENT, 22), SYN, 77, 0, b""),
    );

    println!("\nthe client closes the connection:");
    sim.send("FIN", LAN, tcp(true, FIN | ACK, c + 1001, s + 1, b""));
    sim.send("FIN-ACK", WAN, tcp(false, FIN | ACK, s + 1, c + 1002, b""));
    sim.send("ACK", LAN, tcp(true, ACK, c + 1002, s + 2, b""));

    print_flows(&sim, json);

    println!("\n6 s later (UDP idle timeout 5 s, TCP time_wait 30 s):");
    sim.advance(6_000);
    sim.send(
        "UDP server:53 → client:5353 (late reply)",
        WAN,
        udp(ep(SERVER, 53), ep(CLIENT, 5353), b"late"),
    );
    print_flows(&sim, json);

    sim.h.engine.close_all(sim.h.now, true);
    sim.h.events.extend(sim.h.engine.drain_events());
    let events = &sim.h.events;
    let created = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::FlowCreated(_)))
        .count();
    let closed = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::FlowClosed { .. }))
        .count();
    print_stats(&sim, json);
    println!(
        "\nevents: {} in all, {created} flows created, {closed} closed",
        events.len()
    );
    if created == closed {
        ExitCode::SUCCESS
    } else {
        eprintln!("tunwall simulate: {created} flows created but {closed} closed");
        ExitCode::FAILURE
    }
}

fn print_flows(sim: &Sim, json: bool) {
    let now = sim.h.now;
    let flows = serde_json::Value::Array(
        sim.h
            .flows()
            .iter()
            .map(|f| render::json::flow(f, &sim.ports, now))
            .collect(),
    );
    if json {
        println!("{flows}");
    } else {
        print!("\n{}", render::text::flows(&flows));
    }
}

fn print_stats(sim: &Sim, json: bool) {
    let stats: &Stats = sim.h.engine.stats();
    let value = render::json::stats(stats, &IoStats::default(), &sim.h.gw, 1, 1, &[]);
    if json {
        println!("{value}");
    } else {
        print!("\n{}", render::text::stats(&value));
    }
}
