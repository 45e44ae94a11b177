//! Test kit for engine scenarios: packet builders and a harness with a
//! virtual clock. Port 0 is `lan` (inside, 198.18.1.0/24, fd00:1::/64), port
//! 1 is `wan` (outside, default routes), port 2 is `lan2` (inside,
//! 198.18.3.0/24) for arrival-interface changes.

#![allow(dead_code)]

use etherparse::{Icmpv4Type, Icmpv6Type, PacketBuilder, TcpOptionElement};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tunwall::engine::{Engine, Gateway, GatewayConfig, HostModel, Verdict};
use tunwall::event::{Event, EventKind, FlowInfo};
use tunwall::flow::{FlowConfig, Zone};
use tunwall::policy::{Authorizer, DefaultPolicy};
use tunwall::reason::{CloseReason, DropReason};
use tunwall::route::PortSpec;
use tunwall::time::Instant;

pub const LAN: u8 = 0;
pub const WAN: u8 = 1;
pub const LAN2: u8 = 2;
/// A second outside port (198.19.2.0/24, fd00:9::/64) for outside↔outside flows.
pub const WAN2: u8 = 3;

pub const C4: &str = "198.18.1.10";
pub const S4: &str = "198.18.2.20";
pub const C6: &str = "fd00:1::10";
pub const S6: &str = "fd00:2::20";

/// An endpoint: address and port.
#[derive(Clone, Copy, Debug)]
pub struct Ep(pub IpAddr, pub u16);

pub fn ep(addr: &str, port: u16) -> Ep {
    Ep(addr.parse().expect("address"), port)
}

fn ip(src: IpAddr, dst: IpAddr) -> etherparse::PacketBuilderStep<etherparse::IpHeaders> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => PacketBuilder::ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => PacketBuilder::ipv6(s.octets(), d.octets(), 64),
        _ => panic!("mixed address families"),
    }
}

/// TCP flag bits.
pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;
pub const FIN: u8 = 0x01;
pub const RST: u8 = 0x04;

/// A TCP segment with the given flags; `wscale` adds MSS + window-scale options.
#[allow(clippy::too_many_arguments)]
pub fn tcp(
    from: Ep,
    to: Ep,
    flags: u8,
    seq: u32,
    ack: u32,
    window: u16,
    wscale: Option<u8>,
    payload: &[u8],
) -> Vec<u8> {
    let mut b = ip(from.0, to.0).tcp(from.1, to.1, seq, window);
    if flags & SYN != 0 {
        b = b.syn();
    }
    if flags & ACK != 0 {
        b = b.ack(ack);
    }
    if flags & FIN != 0 {
        b = b.fin();
    }
    if flags & RST != 0 {
        b = b.rst();
    }
    if let Some(s) = wscale {
        b = b
            .options(&[
                TcpOptionElement::MaximumSegmentSize(1460),
                TcpOptionElement::WindowScale(s),
            ])
            .expect("options fit");
    }
    let mut out = Vec::new();
    b.write(&mut out, payload).expect("write");
    out
}

pub fn udp(from: Ep, to: Ep, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    ip(from.0, to.0)
        .udp(from.1, to.1)
        .write(&mut out, payload)
        .expect("write");
    out
}

/// An ICMP(v6) echo request or reply.
pub fn echo(from: &str, to: &str, request: bool, id: u16, seq: u16) -> Vec<u8> {
    let (src, dst): (IpAddr, IpAddr) = (from.parse().unwrap(), to.parse().unwrap());
    let b = ip(src, dst);
    let mut out = Vec::new();
    match (src.is_ipv4(), request) {
        (true, true) => b.icmpv4_echo_request(id, seq).write(&mut out, b"ping"),
        (true, false) => b.icmpv4_echo_reply(id, seq).write(&mut out, b"ping"),
        (false, true) => b.icmpv6_echo_request(id, seq).write(&mut out, b"ping"),
        (false, false) => b.icmpv6_echo_reply(id, seq).write(&mut out, b"ping"),
    }
    .expect("write");
    out
}

/// An ICMP error from `from` to `to` quoting the first bytes of `quoted`.
/// IPv4: destination unreachable with `code` (3 = port unreachable);
/// IPv6: `code` 255 means packet too big (MTU 1280), else destination unreachable.
pub fn icmp_error(from: &str, to: &str, code: u8, quoted: &[u8]) -> Vec<u8> {
    let (src, dst): (IpAddr, IpAddr) = (from.parse().unwrap(), to.parse().unwrap());
    let b = ip(src, dst);
    let quote = &quoted[..quoted.len().min(if src.is_ipv4() { 28 } else { 48 })];
    let mut out = Vec::new();
    if src.is_ipv4() {
        let ty = Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::from_values(code, 0).expect("code"),
        );
        b.icmpv4(ty).write(&mut out, quote).expect("write");
    } else {
        let ty = if code == 255 {
            Icmpv6Type::PacketTooBig { mtu: 1280 }
        } else {
            Icmpv6Type::DestinationUnreachable(
                etherparse::icmpv6::DestUnreachableCode::from_u8(code).expect("code"),
            )
        };
        b.icmpv6(ty).write(&mut out, quote).expect("write");
    }
    out
}

/// A packet of another protocol (no ports), e.g. GRE = 47.
pub fn raw(from: &str, to: &str, protocol: u8) -> Vec<u8> {
    let (src, dst): (IpAddr, IpAddr) = (from.parse().unwrap(), to.parse().unwrap());
    let payload = b"raw!";
    let mut out = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            etherparse::Ipv4Header::new(
                payload.len() as u16,
                64,
                etherparse::IpNumber(protocol),
                s.octets(),
                d.octets(),
            )
            .expect("header")
            .write(&mut out)
            .expect("write");
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            etherparse::Ipv6Header {
                payload_length: payload.len() as u16,
                next_header: etherparse::IpNumber(protocol),
                hop_limit: 64,
                source: s.octets(),
                destination: d.octets(),
                ..Default::default()
            }
            .write(&mut out)
            .expect("write");
        }
        _ => panic!("mixed families"),
    }
    out.extend_from_slice(payload);
    out
}

/// Splits a full IP packet into fragments carrying `chunk` bytes of IP
/// payload each (a multiple of 8), with fragment identification `id`.
pub fn fragments(packet: &[u8], chunk: usize, id: u32) -> Vec<Vec<u8>> {
    assert_eq!(chunk % 8, 0);
    let v4 = packet[0] >> 4 == 4;
    let header_len = if v4 {
        usize::from(packet[0] & 0x0f) * 4
    } else {
        40
    };
    let payload = &packet[header_len..];
    let mut out = Vec::new();
    let mut offset = 0;
    while offset < payload.len() {
        let end = (offset + chunk).min(payload.len());
        let more = end < payload.len();
        let data = &payload[offset..end];
        let mut f = Vec::new();
        if v4 {
            let mut h = etherparse::Ipv4HeaderSlice::from_slice(packet)
                .expect("v4")
                .to_header();
            h.identification = id as u16;
            h.more_fragments = more;
            h.fragment_offset =
                etherparse::IpFragOffset::try_new((offset / 8) as u16).expect("offset");
            h.set_payload_len(data.len()).expect("len");
            h.header_checksum = h.calc_header_checksum();
            h.write(&mut f).expect("write");
        } else {
            let mut h = etherparse::Ipv6HeaderSlice::from_slice(packet)
                .expect("v6")
                .to_header();
            let next = h.next_header;
            h.next_header = etherparse::IpNumber::IPV6_FRAGMENTATION_HEADER;
            h.payload_length = (data.len() + 8) as u16;
            h.write(&mut f).expect("write");
            let frag = etherparse::Ipv6FragmentHeader::new(
                next,
                etherparse::IpFragOffset::try_new((offset / 8) as u16).expect("offset"),
                more,
                id,
            );
            f.extend_from_slice(&frag.to_bytes());
        }
        f.extend_from_slice(data);
        out.push(f);
        offset = end;
    }
    out
}

/// A gateway, one engine and a virtual clock, collecting every event.
pub struct Harness {
    pub gw: Arc<Gateway>,
    pub engine: Engine,
    pub now: Instant,
    pub events: Vec<Event>,
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
        }
    }

    pub fn send(&mut self, port: u8, mut packet: Vec<u8>) -> Verdict {
        let verdict = self.engine.process(self.now, port, &mut packet);
        self.events.extend(self.engine.drain_events());
        verdict
    }

    /// A packet arriving on the inside port.
    pub fn out(&mut self, packet: Vec<u8>) -> Verdict {
        self.send(LAN, packet)
    }

    /// A packet arriving on the outside port.
    pub fn inb(&mut self, packet: Vec<u8>) -> Verdict {
        self.send(WAN, packet)
    }

    /// Moves the clock and runs expiry.
    pub fn advance(&mut self, d: Duration) {
        self.now = self.now + d;
        self.engine.handle_timeout(self.now);
        self.events.extend(self.engine.drain_events());
    }

    pub fn advance_ms(&mut self, ms: u64) {
        self.advance(Duration::from_millis(ms));
    }

    pub fn flows(&self) -> Vec<FlowInfo> {
        self.gw.flows(self.now)
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
