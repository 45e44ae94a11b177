//! `tunwall simulate`: the engine on a virtual clock, with no device.
//!
//! It plays the traffic of the README demo — a ping, a TCP transfer, a UDP
//! query, an unsolicited inbound connection — between an inside client and
//! an outside server under the default policy, so the flow semantics can be
//! seen without root. Every packet goes through the same `Engine::process`
//! the gateway uses.

use etherparse::{PacketBuilder, TcpOptionElement};
use std::process::ExitCode;
use std::sync::Arc;
use tunwall::engine::{Gateway, GatewayConfig, HostModel, Stats, Verdict};
use tunwall::event::EventKind;
use tunwall::flow::{FlowConfig, Zone};
use tunwall::io::worker::IoStats;
use tunwall::policy::DefaultPolicy;
use tunwall::render;
use tunwall::route::PortSpec;
use tunwall::time::Instant;

const CLIENT: [u8; 4] = [198, 18, 1, 10];
const SERVER: [u8; 4] = [198, 18, 2, 20];
const LAN: u8 = 0;
const WAN: u8 = 1;

struct Sim {
    engine: tunwall::engine::Engine,
    now: Instant,
    ports: Vec<String>,
}

impl Sim {
    fn send(&mut self, what: &str, port: u8, mut packet: Vec<u8>) {
        let verdict = self.engine.process(self.now, port, &mut packet);
        let shown = match verdict {
            Verdict::Forward(out) => format!("forwarded to {}", self.ports[usize::from(out)]),
            Verdict::Drop(reason) => format!("DROPPED ({reason})"),
        };
        println!(
            "  t={:>6} ms  {:<4} → {:<46} {}",
            self.now.as_millis(),
            self.ports[usize::from(port)],
            what,
            shown
        );
    }

    fn advance(&mut self, ms: u64) {
        self.now = Instant::from_millis(self.now.as_millis() + ms);
        self.engine.handle_timeout(self.now);
    }
}

fn tcp(
    from_client: bool,
    seq: u32,
    ack: Option<u32>,
    syn: bool,
    fin: bool,
    payload: &[u8],
) -> Vec<u8> {
    let (client, server) = ((CLIENT, 40000), (SERVER, 80));
    let (from, to) = if from_client {
        (client, server)
    } else {
        (server, client)
    };
    tcp_between(from, to, seq, ack, syn, fin, payload)
}

fn tcp_between(
    (src, sport): ([u8; 4], u16),
    (dst, dport): ([u8; 4], u16),
    seq: u32,
    ack: Option<u32>,
    syn: bool,
    fin: bool,
    payload: &[u8],
) -> Vec<u8> {
    let mut b = PacketBuilder::ipv4(src, dst, 64).tcp(sport, dport, seq, 64240);
    if syn {
        b = b.syn();
        b = b
            .options(&[
                TcpOptionElement::MaximumSegmentSize(1460),
                TcpOptionElement::WindowScale(7),
            ])
            .unwrap_or_else(|_| unreachable!("two options always fit"));
    }
    if let Some(ack) = ack {
        b = b.ack(ack);
    }
    if fin {
        b = b.fin();
    }
    let mut out = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut out, payload)
        .unwrap_or_else(|_| unreachable!("writing to a Vec cannot fail"));
    out
}

fn udp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ipv4(src, dst, 64).udp(sport, dport);
    let mut out = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut out, payload)
        .unwrap_or_else(|_| unreachable!("writing to a Vec cannot fail"));
    out
}

fn echo(src: [u8; 4], dst: [u8; 4], request: bool) -> Vec<u8> {
    let b = PacketBuilder::ipv4(src, dst, 64);
    let b = if request {
        b.icmpv4_echo_request(7, 1)
    } else {
        b.icmpv4_echo_reply(7, 1)
    };
    let mut out = Vec::new();
    b.write(&mut out, b"ping")
        .unwrap_or_else(|_| unreachable!("writing to a Vec cannot fail"));
    out
}

/// Runs the scripted exchange.
pub fn run(json: bool) -> ExitCode {
    let mut flows = FlowConfig::with_max_flows(1024);
    flows.udp_idle = std::time::Duration::from_secs(5);
    let config = GatewayConfig {
        ports: vec![
            PortSpec::new("lan", Zone::Inside, &["198.18.1.0/24"]),
            PortSpec::new("wan", Zone::Outside, &["0.0.0.0/0"]),
        ],
        flows,
        host_model: HostModel::Weak,
        shards: None,
    };
    let gw = Gateway::new(config, Arc::new(DefaultPolicy::default()), 1);
    let ports = gw.port_names();
    let mut sim = Sim {
        engine: gw.engine(0),
        now: Instant::ZERO,
        ports,
    };
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
    sim.send("SYN", LAN, tcp(true, c, None, true, false, b""));
    sim.advance(1);
    sim.send("SYN-ACK", WAN, tcp(false, s, Some(c + 1), true, false, b""));
    sim.send(
        "ACK (handshake complete)",
        LAN,
        tcp(true, c + 1, Some(s + 1), false, false, b""),
    );
    let body = [0x42u8; 1000];
    sim.send(
        "1000 bytes of data",
        LAN,
        tcp(true, c + 1, Some(s + 1), false, false, &body),
    );
    sim.advance(1);
    sim.send(
        "ACK",
        WAN,
        tcp(false, s + 1, Some(c + 1001), false, false, b""),
    );
    sim.send(
        "segment far outside the window",
        WAN,
        tcp(false, s + 50_000_000, Some(c + 1001), false, false, b"x"),
    );

    println!("\nUDP query and an unsolicited inbound datagram:");
    sim.send(
        "UDP client:5353 → server:53",
        LAN,
        udp(CLIENT, SERVER, 5353, 53, b"query"),
    );
    sim.send(
        "UDP server:53 → client:5353 (reply)",
        WAN,
        udp(SERVER, CLIENT, 53, 5353, b"answer"),
    );
    sim.send(
        "UDP server:9999 → client:7 (unsolicited)",
        WAN,
        udp(SERVER, CLIENT, 9999, 7, b"hi"),
    );

    println!("\nan inbound connection attempt:");
    sim.send(
        "SYN server:41000 → client:22",
        WAN,
        tcp_between((SERVER, 41000), (CLIENT, 22), 77, None, true, false, b""),
    );

    println!("\nthe client closes the connection:");
    sim.send(
        "FIN",
        LAN,
        tcp(true, c + 1001, Some(s + 1), false, true, b""),
    );
    sim.send(
        "FIN-ACK",
        WAN,
        tcp(false, s + 1, Some(c + 1002), false, true, b""),
    );
    sim.send(
        "ACK",
        LAN,
        tcp(true, c + 1002, Some(s + 2), false, false, b""),
    );

    print_flows(&gw, sim.now, &sim.ports, json);

    println!("\n6 s later (UDP idle timeout 5 s, TCP time_wait 30 s):");
    sim.advance(6_000);
    sim.send(
        "UDP server:53 → client:5353 (late reply)",
        WAN,
        udp(SERVER, CLIENT, 53, 5353, b"late"),
    );
    print_flows(&gw, sim.now, &sim.ports, json);

    sim.engine.close_all(sim.now, true);
    let events: Vec<_> = sim.engine.drain_events().collect();
    let created = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::FlowCreated(_)))
        .count();
    let closed = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::FlowClosed { .. }))
        .count();
    print_stats(sim.engine.stats(), &gw, json);
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

fn print_flows(gw: &Gateway, now: Instant, ports: &[String], json: bool) {
    let flows = serde_json::Value::Array(
        gw.flows(now)
            .iter()
            .map(|f| render::json::flow(f, ports, now))
            .collect(),
    );
    if json {
        println!("{flows}");
    } else {
        print!("\n{}", render::text::flows(&flows));
    }
}

fn print_stats(stats: &Stats, gw: &Gateway, json: bool) {
    let value = render::json::stats(stats, &IoStats::default(), gw, 1, 1);
    if json {
        println!("{value}");
    } else {
        print!("\n{}", render::text::stats(&value));
    }
}
