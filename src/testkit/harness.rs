//! A gateway with one engine on a virtual clock that collects every event,
//! and a TCP conversation with correct sequence numbers. Port 0 is `lan`
//! (inside, 198.18.1.0/24, fd00:1::/64), port 1 is `wan` (outside, default
//! routes), port 2 is `lan2` (inside, 198.18.3.0/24), port 3 is `wan2`
//! (outside, 198.19.2.0/24, fd00:9::/64).

use super::packets::{ACK, Ep, FIN, RST, SYN, tcp};
use crate::engine::{Engine, Gateway, GatewayConfig, HostModel, Verdict};
use crate::event::{Event, EventKind, FlowInfo, ReauthTrigger};
use crate::flow::{FlowConfig, Zone};
use crate::policy::{Action, Authorizer, CalloutRegistry, DefaultPolicy, Policy};
use crate::reason::{CloseReason, DropReason};
use crate::route::PortSpec;
use crate::time::Instant;
use std::sync::Arc;
use std::time::Duration;

pub const LAN: u8 = 0;
pub const WAN: u8 = 1;
pub const LAN2: u8 = 2;
/// The second outside port (198.19.2.0/24, fd00:9::/64) for outside↔outside flows.
pub const WAN2: u8 = 3;

pub const C4: &str = "198.18.1.10";
pub const S4: &str = "198.18.2.20";
pub const C6: &str = "fd00:1::10";
pub const S6: &str = "fd00:2::20";

/// The harness's ports as configuration text, for tests that compile a
/// policy from a file: port names mean the same indices as [`ports`].
pub const PORTS_TOML: &str = r#"
[[port]]
name = "lan"
device = "tw-lan"
zone = "inside"
routes = ["198.18.1.0/24", "fd00:1::/64"]

[[port]]
name = "wan"
device = "tw-wan"
zone = "outside"
routes = ["0.0.0.0/0", "::/0"]

[[port]]
name = "lan2"
device = "tw-lan2"
zone = "inside"
routes = ["198.18.3.0/24"]

[[port]]
name = "wan2"
device = "tw-wan2"
zone = "outside"
routes = ["198.19.2.0/24", "fd00:9::/64"]
"#;

/// The policy of `filters` (configuration text) over the harness's ports,
/// with the built-in callouts; `previous` carries counters and generations
/// over as a reload does.
pub fn compile_policy(filters: &str, previous: Option<&Policy>) -> Policy {
    let registry = CalloutRegistry::default();
    let text = format!("{PORTS_TOML}\n{filters}");
    let config = crate::config::Config::parse(std::path::Path::new("test.toml"), &text, &registry)
        .unwrap_or_else(|e| panic!("{e}"));
    Policy::compile(&config.policy, &registry, previous).expect("compile")
}

/// A `bind_redirect` filter named "masq" masquerading everything that
/// arrives on `lan` to `to_address`, with ports from `to_port` when given.
pub fn masquerade_filter(to_address: &[&str], to_port: Option<&str>) -> String {
    let to_port = to_port.map_or(String::new(), |r| format!("to_port = \"{r}\"\n"));
    format!(
        "[[filter]]\nname = \"masq\"\nlayer = \"bind_redirect\"\naction = \"redirect\"\n\
         arrival_port = \"lan\"\nto_address = {to_address:?}\n{to_port}"
    )
}

/// A gateway, one engine and a virtual clock, collecting every event.
pub struct Harness {
    pub gw: Arc<Gateway>,
    pub engine: Engine,
    pub now: Instant,
    pub events: Vec<Event>,
    /// Packets of pending flows the engine released, as (egress port, frame).
    pub released: Vec<(u8, Vec<u8>)>,
}

pub fn ports() -> Vec<PortSpec> {
    vec![
        PortSpec::new("lan", Zone::Inside, &["198.18.1.0/24", "fd00:1::/64"]),
        PortSpec::new("wan", Zone::Outside, &["0.0.0.0/0", "::/0"]),
        PortSpec::new("lan2", Zone::Inside, &["198.18.3.0/24"]),
        PortSpec::new("wan2", Zone::Outside, &["198.19.2.0/24", "fd00:9::/64"]),
    ]
}

impl Harness {
    pub fn new(flows: FlowConfig) -> Harness {
        Harness::with(flows, HostModel::Weak, Arc::new(DefaultPolicy::default()))
    }

    pub fn default_flows() -> Harness {
        Harness::new(FlowConfig::with_max_flows(1024))
    }

    pub fn with(flows: FlowConfig, host_model: HostModel, policy: Arc<dyn Authorizer>) -> Harness {
        let gw = Gateway::new(
            GatewayConfig {
                ports: ports(),
                flows,
                host_model,
                shards: Some(1),
            },
            policy,
            1,
        );
        let engine = gw.engine(0);
        Harness {
            gw,
            engine,
            now: Instant::ZERO,
            events: Vec::new(),
            released: Vec::new(),
        }
    }

    pub fn send(&mut self, port: u8, mut packet: Vec<u8>) -> Verdict {
        let verdict = self.engine.process(self.now, port, &mut packet);
        self.events.extend(self.engine.drain_events());
        verdict
    }

    /// Sends a packet and returns the verdict with the packet as it leaves
    /// (rewritten if its flow is translated).
    pub fn pass(&mut self, port: u8, mut packet: Vec<u8>) -> (Verdict, Vec<u8>) {
        let verdict = self.engine.process(self.now, port, &mut packet);
        self.events.extend(self.engine.drain_events());
        (verdict, packet)
    }

    /// A packet arriving on the inside port.
    pub fn out(&mut self, packet: Vec<u8>) -> Verdict {
        self.send(LAN, packet)
    }

    /// A packet arriving on the outside port.
    pub fn inb(&mut self, packet: Vec<u8>) -> Verdict {
        self.send(WAN, packet)
    }

    /// Moves the clock and runs expiry (pend timeouts and completions
    /// included), collecting released packets.
    pub fn advance(&mut self, d: Duration) {
        self.now = self.now + d;
        self.engine.handle_timeout(self.now);
        self.collect();
    }

    /// Applies completed pending flows as a woken worker does, collecting
    /// released packets.
    pub fn apply_completions(&mut self) {
        self.engine.apply_completions(self.now);
        self.collect();
    }

    fn collect(&mut self) {
        self.events.extend(self.engine.drain_events());
        let released = &mut self.released;
        self.engine
            .drain_released(|port, frame| released.push((port, frame.to_vec())));
    }

    /// The events named `name`.
    pub fn named(&self, name: &str) -> Vec<&Event> {
        self.events.iter().filter(|e| e.name() == name).collect()
    }

    pub fn advance_ms(&mut self, ms: u64) {
        self.advance(Duration::from_millis(ms));
    }

    pub fn flows(&self) -> Vec<FlowInfo> {
        self.gw.flows(self.now)
    }

    /// The flow table as a state container (SPEC §13), taken now.
    pub fn snapshot(&self) -> Vec<u8> {
        let header = self.gw.snapshot_header(crate::state::Header::default());
        self.gw
            .snapshot(self.now, &header, Vec::new())
            .expect("writing to memory")
    }

    pub fn only_flow(&self) -> FlowInfo {
        let flows = self.flows();
        assert_eq!(flows.len(), 1, "expected one flow, have {flows:#?}");
        flows[0].clone()
    }

    pub fn created(&self) -> Vec<u64> {
        self.events
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::FlowCreated(f) => Some(f.id),
                _ => None,
            })
            .collect()
    }

    pub fn established(&self) -> Vec<u64> {
        self.events
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::FlowEstablished(f) => Some(f.id),
                _ => None,
            })
            .collect()
    }

    pub fn closed(&self) -> Vec<(u64, CloseReason)> {
        self.events
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::FlowClosed { flow, reason } => Some((flow.id, *reason)),
                _ => None,
            })
            .collect()
    }

    /// The reauthorizations so far: trigger and result.
    pub fn reauthorizations(&self) -> Vec<(ReauthTrigger, Action)> {
        self.events
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::FlowReauthorized {
                    trigger, result, ..
                } => Some((*trigger, *result)),
                _ => None,
            })
            .collect()
    }

    pub fn discards(&self, reason: DropReason) -> u64 {
        self.engine.stats().discarded(reason)
    }
}

/// Plays a TCP conversation with correct sequence numbers.
pub struct TcpConn {
    pub client: Ep,
    pub server: Ep,
    pub c_seq: u32,
    pub s_seq: u32,
    pub wscale: Option<u8>,
}

impl TcpConn {
    pub fn new(client: Ep, server: Ep) -> TcpConn {
        TcpConn {
            client,
            server,
            c_seq: 1000,
            s_seq: 900_000,
            wscale: Some(7),
        }
    }

    pub fn syn(&self) -> Vec<u8> {
        tcp(
            self.client,
            self.server,
            SYN,
            self.c_seq,
            0,
            64240,
            self.wscale,
            b"",
        )
    }

    pub fn syn_ack(&self) -> Vec<u8> {
        tcp(
            self.server,
            self.client,
            SYN | ACK,
            self.s_seq,
            self.c_seq + 1,
            65160,
            self.wscale,
            b"",
        )
    }

    pub fn ack(&self) -> Vec<u8> {
        tcp(
            self.client,
            self.server,
            ACK,
            self.c_seq + 1,
            self.s_seq + 1,
            502,
            None,
            b"",
        )
    }

    /// Runs the handshake through `h` (client inside, server outside) and
    /// moves the sequence numbers past the SYNs.
    pub fn handshake(&mut self, h: &mut Harness) {
        assert!(matches!(h.out(self.syn()), Verdict::Forward(WAN)));
        assert!(matches!(h.inb(self.syn_ack()), Verdict::Forward(LAN)));
        assert!(matches!(h.out(self.ack()), Verdict::Forward(WAN)));
        self.c_seq += 1;
        self.s_seq += 1;
    }

    /// Client data (advances the client's sequence).
    pub fn client_data(&mut self, len: usize) -> Vec<u8> {
        let p = tcp(
            self.client,
            self.server,
            ACK,
            self.c_seq,
            self.s_seq,
            502,
            None,
            &vec![0x61; len],
        );
        self.c_seq = self.c_seq.wrapping_add(len as u32);
        p
    }

    /// Server data (advances the server's sequence).
    pub fn server_data(&mut self, len: usize) -> Vec<u8> {
        let p = tcp(
            self.server,
            self.client,
            ACK,
            self.s_seq,
            self.c_seq,
            509,
            None,
            &vec![0x62; len],
        );
        self.s_seq = self.s_seq.wrapping_add(len as u32);
        p
    }

    pub fn client_ack(&self) -> Vec<u8> {
        tcp(
            self.client,
            self.server,
            ACK,
            self.c_seq,
            self.s_seq,
            502,
            None,
            b"",
        )
    }

    pub fn server_ack(&self) -> Vec<u8> {
        tcp(
            self.server,
            self.client,
            ACK,
            self.s_seq,
            self.c_seq,
            509,
            None,
            b"",
        )
    }

    pub fn client_fin(&mut self) -> Vec<u8> {
        let p = tcp(
            self.client,
            self.server,
            FIN | ACK,
            self.c_seq,
            self.s_seq,
            502,
            None,
            b"",
        );
        self.c_seq += 1;
        p
    }

    pub fn server_fin(&mut self) -> Vec<u8> {
        let p = tcp(
            self.server,
            self.client,
            FIN | ACK,
            self.s_seq,
            self.c_seq,
            509,
            None,
            b"",
        );
        self.s_seq += 1;
        p
    }

    pub fn client_rst(&self) -> Vec<u8> {
        tcp(
            self.client,
            self.server,
            RST | ACK,
            self.c_seq,
            self.s_seq,
            0,
            None,
            b"",
        )
    }

    /// A full close: client FIN, server FIN+ACK, client ACK.
    pub fn close(&mut self, h: &mut Harness) {
        let fin = self.client_fin();
        assert!(matches!(h.out(fin), Verdict::Forward(WAN)));
        let fin = self.server_fin();
        assert!(matches!(h.inb(fin), Verdict::Forward(LAN)));
        let ack = self.client_ack();
        assert!(matches!(h.out(ack), Verdict::Forward(WAN)));
    }
}
