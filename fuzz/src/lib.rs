//! The fuzz harnesses: one function per target, shared by the
//! libFuzzer targets in `fuzz_targets/` and by the main crate's corpus
//! replay test (`integration/fuzz_corpus.rs` includes this file as a module
//! with `#[path]`), so every corpus file and every past crash is checked by
//! `cargo test` on a machine without cargo-fuzz.
//!
//! This file only depends on `tunwall` and `std`.
//!
//! * [`parse`]: `tunwall::packet::parse` and `parse_quoted` on arbitrary bytes.
//! * [`engine`]: a small gateway driven by a sequence of operations decoded
//!   from the bytes ([`decode_engine`], [`Op`], docs/fuzzing.md); after
//!   every step the table holds at most `max_flows` flows and every
//!   `FlowClosed` names a flow created before and not closed yet; after
//!   `close_all` at the end every created flow was closed exactly once.
//! * [`config`]: `Config::parse` on arbitrary UTF-8, then `Policy::compile`.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tunwall::config::Config;
use tunwall::engine::{Engine, Gateway, GatewayConfig, HostModel};
use tunwall::event::EventKind;
use tunwall::flow::{FlowConfig, Zone};
use tunwall::packet::{IpVersion, Transport, parse_quoted};
use tunwall::policy::{
    Action, Authorizer, CalloutRegistry, Decision, DefaultPolicy, FnPolicy, Layer, Policy,
    PolicySpec,
};
use tunwall::route::PortSpec;
use tunwall::time::Instant;

// ---------------------------------------------------------------- parse --

/// The `parse` target: the packet parser and the ICMP-quote parser must never
/// panic, and what they return must lie inside the input.
pub fn parse(data: &[u8]) {
    if let Ok(packet) = tunwall::packet::parse(data) {
        assert!(packet.len as usize <= data.len(), "len beyond the input");
        assert!(
            usize::from(packet.l4_offset) <= data.len(),
            "l4_offset beyond the input"
        );
        let _ = packet.ports();
        let _ = packet.dst_is_multicast();
        let _ = packet.dst_is_limited_broadcast();
        if let Transport::Icmp { .. } = packet.transport {
            // What the engine does with an ICMP error: read the quote after the 8-byte header.
            let quote = data.get(usize::from(packet.l4_offset) + 8..).unwrap_or(&[]);
            let _ = parse_quoted(packet.version, quote);
        }
    }
    let _ = parse_quoted(IpVersion::V4, data);
    let _ = parse_quoted(IpVersion::V6, data);
}

// --------------------------------------------------------------- config --

/// The `config` target: any UTF-8 text either loads or is a located error,
/// and a loaded configuration compiles (or fails cleanly) and yields a
/// gateway configuration; nothing panics.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let registry = CalloutRegistry::default();
    match Config::parse(Path::new("fuzz.toml"), text, &registry) {
        Ok(config) => {
            let _ = config.gateway_config();
            if let Ok(policy) = Policy::compile(&config.policy, &registry, None) {
                // A recompile of the same spec must succeed too (reload path).
                assert!(
                    Policy::compile(&config.policy, &registry, Some(&policy)).is_ok(),
                    "a spec that compiled once fails to recompile"
                );
            }
        }
        Err(e) => {
            assert!(!e.message.is_empty(), "an error without a message");
            let _ = e.to_string();
        }
    }
}

// --------------------------------------------------------------- engine --

/// Ports of the fuzzed gateway: two inside, two outside. Index 4 and above
/// do not exist (`unknown_port`).
pub const PORTS: u8 = 4;

fn ports() -> Vec<PortSpec> {
    vec![
        PortSpec::new("lan", Zone::Inside, &["198.18.1.0/24", "fd00:1::/64"]),
        PortSpec::new("lan2", Zone::Inside, &["198.18.3.0/24", "fd00:3::/64"]),
        PortSpec::new("wan", Zone::Outside, &["0.0.0.0/0", "::/0"]),
        PortSpec::new(
            "wan2",
            Zone::Outside,
            &["198.18.128.0/17", "fd00:8000::/17"],
        ),
    ]
}

/// The gateway options the first three bytes of an engine input select.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// `HostModel::Strong` instead of weak.
    pub strong: bool,
    /// `tcp_loose_pickup`.
    pub loose_pickup: bool,
    /// `tcp_window_tracking = false`.
    pub no_window_tracking: bool,
    /// Two workers (two engines over one gateway) instead of one.
    pub two_workers: bool,
    /// Flow-table shards, 1 to 4.
    pub shards: u8,
    /// 0: defaults (permit out, block in), 1: permit all, 2: block all,
    /// 3: the policy of `configs/example.toml`.
    pub policy: u8,
    /// `max_flows`, 1 to 64.
    pub max_flows: u8,
    /// Sweep budget per `handle_timeout`; 0 keeps the default.
    pub sweep_budget: u8,
}

impl Options {
    /// The three header bytes.
    pub fn encode(&self) -> [u8; 3] {
        let flags = u8::from(self.strong)
            | u8::from(self.loose_pickup) << 1
            | u8::from(self.no_window_tracking) << 2
            | u8::from(self.two_workers) << 3
            | (self.shards.clamp(1, 4) - 1) << 4
            | (self.policy & 3) << 6;
        [flags, self.max_flows.clamp(1, 64) - 1, self.sweep_budget]
    }

    fn decode(b: [u8; 3]) -> Options {
        Options {
            strong: b[0] & 1 != 0,
            loose_pickup: b[0] & 2 != 0,
            no_window_tracking: b[0] & 4 != 0,
            two_workers: b[0] & 8 != 0,
            shards: (b[0] >> 4 & 3) + 1,
            policy: b[0] >> 6,
            max_flows: b[1] % 64 + 1,
            sweep_budget: b[2],
        }
    }
}

/// One operation of an engine input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// A packet arriving on `port` (>= [`PORTS`] is unknown), handled by
    /// worker `worker` (ignored with one worker).
    Packet {
        /// Arrival port.
        port: u8,
        /// Which engine.
        worker: bool,
        /// The raw IP packet (at most 65535 bytes).
        bytes: Vec<u8>,
    },
    /// Derives a packet from the `back`-th last packet sent (0 = the last)
    /// and sends it on `port`: `reply` swaps addresses and ports (and an
    /// ICMP echo request becomes a reply), the TCP sequence numbers follow
    /// the conversation (a reply acknowledges what it answers, a follow-up
    /// continues after it), and `tcp_flags`, when not 0, replaces the flags.
    Derive {
        /// Which earlier packet (from the end, modulo the history).
        back: u8,
        /// Arrival port.
        port: u8,
        /// Which engine.
        worker: bool,
        /// Swap the endpoints.
        reply: bool,
        /// New TCP flags, 0 to keep them.
        tcp_flags: u8,
    },
    /// Moves the clock by `amount` units: 0 ms, 1 s, 2 min, 3 h.
    Advance {
        /// The unit, 0 to 3.
        unit: u8,
        /// How many.
        amount: u16,
    },
    /// `handle_timeout(now)` on one worker.
    Timeout {
        /// Which engine.
        worker: bool,
    },
    /// A new policy generation on every engine: permit or block inbound.
    Reload {
        /// Whether inbound connections are permitted.
        permit_inbound: bool,
    },
    /// `close_all(now, false)` on one worker: its shards only.
    CloseOwned {
        /// Which engine.
        worker: bool,
    },
}

/// Opcodes (the low 3 bits of the op byte; the high bits carry small
/// arguments).
mod opcode {
    pub const PACKET: u8 = 0;
    pub const DERIVE: u8 = 1;
    pub const ADVANCE: u8 = 2;
    pub const TIMEOUT: u8 = 3;
    pub const RELOAD: u8 = 4;
    pub const CLOSE_OWNED: u8 = 5;
    // 6 and 7 are packets too: raw packets are the bulk of an input.
}

impl Op {
    /// Appends the op's encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Op::Packet {
                port,
                worker,
                bytes,
            } => {
                let len = bytes.len().min(usize::from(u16::MAX));
                out.push(opcode::PACKET | u8::from(*worker) << 3);
                out.push(*port);
                out.extend_from_slice(&(len as u16).to_be_bytes());
                out.extend_from_slice(&bytes[..len]);
            }
            Op::Derive {
                back,
                port,
                worker,
                reply,
                tcp_flags,
            } => {
                out.push(opcode::DERIVE | u8::from(*worker) << 3 | u8::from(*reply) << 4);
                out.extend_from_slice(&[*back, *port, *tcp_flags]);
            }
            Op::Advance { unit, amount } => {
                out.push(opcode::ADVANCE | (unit & 3) << 3);
                out.extend_from_slice(&amount.to_be_bytes());
            }
            Op::Timeout { worker } => out.push(opcode::TIMEOUT | u8::from(*worker) << 3),
            Op::Reload { permit_inbound } => {
                out.push(opcode::RELOAD | u8::from(*permit_inbound) << 3)
            }
            Op::CloseOwned { worker } => out.push(opcode::CLOSE_OWNED | u8::from(*worker) << 3),
        }
    }
}

/// Encodes a whole engine input: options, then ops.
pub fn encode_engine(options: &Options, ops: &[Op]) -> Vec<u8> {
    let mut out = options.encode().to_vec();
    for op in ops {
        op.encode(&mut out);
    }
    out
}

/// Reads an engine input back; a truncated last op is dropped.
pub fn decode_engine(data: &[u8]) -> (Options, Vec<Op>) {
    let mut header = [0u8; 3];
    let n = data.len().min(3);
    header[..n].copy_from_slice(&data[..n]);
    let options = Options::decode(header);
    let mut rest = data.get(3..).unwrap_or(&[]);
    let mut ops = Vec::new();
    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        let worker = op & 8 != 0;
        let decoded = match op & 7 {
            opcode::DERIVE => {
                let Some((args, tail)) = rest.split_first_chunk::<3>() else {
                    break;
                };
                rest = tail;
                Op::Derive {
                    back: args[0],
                    port: args[1],
                    worker,
                    reply: op & 16 != 0,
                    tcp_flags: args[2],
                }
            }
            opcode::ADVANCE => {
                let Some((amount, tail)) = rest.split_first_chunk::<2>() else {
                    break;
                };
                rest = tail;
                Op::Advance {
                    unit: op >> 3 & 3,
                    amount: u16::from_be_bytes(*amount),
                }
            }
            opcode::TIMEOUT => Op::Timeout { worker },
            opcode::RELOAD => Op::Reload {
                permit_inbound: worker,
            },
            opcode::CLOSE_OWNED => Op::CloseOwned { worker },
            _ => {
                let Some((&[port, hi, lo], tail)) = rest.split_first_chunk::<3>() else {
                    break;
                };
                let len = usize::from(u16::from_be_bytes([hi, lo])).min(tail.len());
                let (bytes, tail) = tail.split_at(len);
                rest = tail;
                Op::Packet {
                    port,
                    worker,
                    bytes: bytes.to_vec(),
                }
            }
        };
        ops.push(decoded);
    }
    (options, ops)
}

/// Most operations one input runs (longer inputs are cut).
const MAX_OPS: usize = 4096;
/// Packets remembered for [`Op::Derive`].
const HISTORY: usize = 16;

/// The flow settings: short lifetimes so that clock steps of seconds expire
/// flows, few fragment slots so that the fragment table fills too.
fn flow_config(options: &Options) -> FlowConfig {
    let mut flows = FlowConfig::with_max_flows(usize::from(options.max_flows));
    flows.udp_idle = Duration::from_secs(5);
    flows.icmp_idle = Duration::from_secs(3);
    flows.other_idle = Duration::from_secs(6);
    flows.mcast_bcast_lifetime = Duration::from_secs(2);
    flows.tcp_opening = Duration::from_secs(4);
    flows.tcp_established = Duration::from_secs(600);
    flows.tcp_closing = Duration::from_secs(4);
    flows.tcp_time_wait = Duration::from_secs(2);
    flows.tcp_closed = Duration::from_secs(1);
    flows.tcp_loose_pickup = options.loose_pickup;
    flows.tcp_window_tracking = !options.no_window_tracking;
    flows.max_fragments = 8;
    flows.fragment_timeout = Duration::from_secs(2);
    flows
}

/// The policy of `configs/example.toml`, parsed once.
fn example_spec() -> &'static PolicySpec {
    static SPEC: OnceLock<PolicySpec> = OnceLock::new();
    SPEC.get_or_init(|| {
        let text = include_str!("../../configs/example.toml");
        Config::parse(
            Path::new("configs/example.toml"),
            text,
            &CalloutRegistry::default(),
        )
        .expect("configs/example.toml loads")
        .policy
    })
}

fn fn_policy(generation: u32, permit_inbound: bool) -> Arc<dyn Authorizer> {
    Arc::new(FnPolicy::new(
        generation,
        move |req: &tunwall::policy::ClassifyRequest| {
            let inbound = req.layer == Layer::AuthRecvAccept;
            Decision::default_action(if inbound && !permit_inbound {
                Action::Block
            } else {
                Action::Permit
            })
        },
    ))
}

fn initial_policy(options: &Options) -> Arc<dyn Authorizer> {
    match options.policy {
        0 => Arc::new(DefaultPolicy::default()),
        1 => fn_policy(0, true),
        2 => Arc::new(FnPolicy::new(0, |_: &tunwall::policy::ClassifyRequest| {
            Decision::default_action(Action::Block)
        })),
        _ => Arc::new(
            // Compiled per input: the rate_limit callout keeps state.
            Policy::compile(example_spec(), &CalloutRegistry::default(), None)
                .expect("the example policy compiles"),
        ),
    }
}

/// Builds the fuzzed gateway and its engines. This is the one place that
/// constructs the engine: adapt it if the engine's constructors change.
pub fn gateway(options: &Options) -> (Arc<Gateway>, Vec<Engine>) {
    let workers = if options.two_workers { 2 } else { 1 };
    let gw = Gateway::new(
        GatewayConfig {
            ports: ports(),
            flows: flow_config(options),
            host_model: if options.strong {
                HostModel::Strong
            } else {
                HostModel::Weak
            },
            shards: Some(usize::from(options.shards)),
        },
        initial_policy(options),
        workers,
    );
    let engines = (0..workers)
        .map(|w| {
            let mut engine = gw.engine(w);
            if options.sweep_budget != 0 {
                engine.set_sweep_budget(usize::from(options.sweep_budget));
            }
            engine
        })
        .collect();
    (gw, engines)
}

/// Which flows were created and closed, from the drained events.
#[derive(Default)]
struct Ledger {
    created: HashSet<u64>,
    closed: HashSet<u64>,
}

impl Ledger {
    fn drain(&mut self, engine: &mut Engine) {
        for event in engine.drain_events() {
            match event.kind {
                EventKind::FlowCreated(flow) => {
                    assert!(
                        self.created.insert(flow.id),
                        "flow {} created twice",
                        flow.id
                    );
                }
                EventKind::FlowClosed { flow, reason } => {
                    assert!(
                        self.created.contains(&flow.id),
                        "flow {} closed ({reason:?}) but never created",
                        flow.id
                    );
                    assert!(
                        self.closed.insert(flow.id),
                        "flow {} closed twice ({reason:?})",
                        flow.id
                    );
                }
                _ => {}
            }
        }
    }
}

/// Rewrites `packet` (a copy of an earlier one) into its reply or its
/// follow-up. Packets the parser rejects, and fields beyond the buffer, are
/// left as they are.
pub fn derive(packet: &mut [u8], reply: bool, tcp_flags: u8) {
    let Ok(parsed) = tunwall::packet::parse(packet) else {
        return;
    };
    let l4 = usize::from(parsed.l4_offset);
    if reply {
        let (src, dst, n) = match parsed.version {
            IpVersion::V4 => (12, 16, 4),
            IpVersion::V6 => (8, 24, 16),
        };
        let (a, b) = packet.split_at_mut(dst);
        a[src..src + n].swap_with_slice(&mut b[..n]);
    }
    let Some(header) = packet.get_mut(l4..) else {
        return;
    };
    match parsed.transport {
        Transport::Tcp { segment, .. } if header.len() >= 20 => {
            let consumed = segment.payload_len
                + u32::from(segment.flags & 0x02 != 0)
                + u32::from(segment.flags & 0x01 != 0);
            let (seq, ack) = if reply {
                // The peer answers: its sequence is what the packet acknowledged
                // (or a fresh one for a SYN), it acknowledges what the packet carried.
                let seq = if segment.flags & 0x10 != 0 {
                    segment.ack
                } else {
                    segment.seq.rotate_left(13) ^ 0x5eed
                };
                (seq, segment.seq.wrapping_add(consumed))
            } else {
                (segment.seq.wrapping_add(consumed), segment.ack)
            };
            if reply {
                swap_ports(header);
            }
            header[4..8].copy_from_slice(&seq.to_be_bytes());
            header[8..12].copy_from_slice(&ack.to_be_bytes());
            if tcp_flags != 0 {
                header[13] = tcp_flags;
            }
        }
        Transport::Ports { .. } if reply && header.len() >= 4 => swap_ports(header),
        Transport::Icmp { icmp_type, .. } if reply && !header.is_empty() => {
            header[0] = match icmp_type {
                8 => 0,
                0 => 8,
                128 => 129,
                129 => 128,
                13 | 15 | 17 => icmp_type + 1,
                14 | 16 | 18 => icmp_type - 1,
                other => other,
            };
        }
        _ => {}
    }
}

fn swap_ports(header: &mut [u8]) {
    let (a, b) = header.split_at_mut(2);
    a.swap_with_slice(&mut b[..2]);
}

/// The `engine` target: runs the decoded operations and checks the
/// invariants after each, then closes everything and checks that every
/// created flow was closed exactly once.
pub fn engine(data: &[u8]) {
    let (options, ops) = decode_engine(data);
    let (gw, mut engines) = gateway(&options);
    let max_flows = usize::from(options.max_flows);
    let mut ledger = Ledger::default();
    let mut now = Instant::ZERO;
    let mut generation = 0u32;
    let mut history: Vec<Vec<u8>> = Vec::with_capacity(HISTORY);
    let workers = engines.len();
    let mut step = 0usize;
    for op in ops.into_iter().take(MAX_OPS) {
        match op {
            Op::Packet {
                port,
                worker,
                bytes,
            } => {
                let engine = &mut engines[usize::from(worker) % workers];
                let mut packet = bytes.clone();
                let _ = engine.process(now, port, &mut packet);
                remember(&mut history, bytes);
            }
            Op::Derive {
                back,
                port,
                worker,
                reply,
                tcp_flags,
            } => {
                if history.is_empty() {
                    continue;
                }
                let at = history.len() - 1 - usize::from(back) % history.len();
                let mut bytes = history[at].clone();
                derive(&mut bytes, reply, tcp_flags);
                let engine = &mut engines[usize::from(worker) % workers];
                let mut packet = bytes.clone();
                let _ = engine.process(now, port, &mut packet);
                remember(&mut history, bytes);
            }
            Op::Advance { unit, amount } => {
                let unit_ms: u64 = match unit {
                    0 => 1,
                    1 => 1_000,
                    2 => 60_000,
                    _ => 3_600_000,
                };
                now = now + Duration::from_millis(unit_ms * u64::from(amount));
            }
            Op::Timeout { worker } => engines[usize::from(worker) % workers].handle_timeout(now),
            Op::Reload { permit_inbound } => {
                generation += 1;
                // The reload puts the policy in force for the gateway; the
                // other workers load it as at their next batch.
                engines[0].set_policy(fn_policy(generation, permit_inbound));
                for engine in &mut engines[1..] {
                    engine.refresh_policy();
                }
            }
            Op::CloseOwned { worker } => {
                engines[usize::from(worker) % workers].close_all(now, false)
            }
        }
        for engine in &mut engines {
            ledger.drain(engine);
        }
        let active = gw.flows_active();
        assert!(
            active <= max_flows,
            "{active} flows in a table of {max_flows}"
        );
        step += 1;
        if step % 8 == 0 {
            // A snapshot walks every shard: not after every step.
            assert_eq!(
                gw.flows(now).len(),
                active,
                "the snapshot and the count disagree"
            );
        }
    }
    assert_eq!(
        gw.flows(now).len(),
        gw.flows_active(),
        "the snapshot and the count disagree"
    );
    engines[0].close_all(now, true);
    for engine in &mut engines {
        ledger.drain(engine);
    }
    assert_eq!(gw.flows_active(), 0, "flows left after close_all");
    let open: Vec<_> = ledger.created.difference(&ledger.closed).collect();
    assert!(open.is_empty(), "flows never closed: {open:?}");
}

fn remember(history: &mut Vec<Vec<u8>>, bytes: Vec<u8>) {
    if history.len() == HISTORY {
        history.remove(0);
    }
    history.push(bytes);
}

// ---------------------------------------------------------------- state --

/// The `state` target: a carried flow table (SPEC §13) from arbitrary
/// bytes. The bytes are tried as they are (the container must refuse a
/// bad magic, version, length or checksum) and again with the checksum
/// made right, so that mutations reach the header and the records. A
/// container that parses restores whole or not at all; the restored flows
/// are in the table and listed, are closed exactly once each, never
/// indicated as created, and a new flow gets an id none of them has.
pub fn state(data: &[u8]) {
    state_once(data);
    if data.len() >= 4 {
        let mut fixed = data.to_vec();
        let signed = fixed.len() - 4;
        let crc = tunwall::state::checksum(&fixed[..signed]);
        fixed[signed..].copy_from_slice(&crc.to_le_bytes());
        state_once(&fixed);
    }
}

fn state_once(data: &[u8]) {
    use tunwall::state::Container;
    let Ok(container) = Container::parse(data) else {
        return;
    };
    let records = container.records().count();
    let options = Options {
        max_flows: 32,
        shards: 2,
        ..Options::default()
    };
    let (gw, mut engines) = gateway(&options);
    let now = Instant::from_secs(1 << 30);
    let elapsed = Duration::from_millis(u64::from(data[data.len() / 2]) * 50);
    let done = match gw.restore(now, &container, elapsed) {
        Ok(done) => done,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            assert_eq!(gw.flows_active(), 0, "a refused container applied flows");
            return;
        }
    };
    assert!(done.flows + done.expired + done.refused <= records);
    assert_eq!(gw.flows_active(), done.flows);
    let flows = gw.flows(now);
    assert_eq!(flows.len(), done.flows);
    let restored: HashSet<u64> = flows.iter().map(|f| f.id).collect();
    assert_eq!(restored.len(), flows.len(), "a restored id twice");
    let engine = &mut engines[0];
    let mut packet = tunwall::testkit::udp(
        tunwall::testkit::ep("198.18.1.77", 4444),
        tunwall::testkit::ep("198.18.2.77", 4444),
        b"x",
    );
    engine.process(now, 0, &mut packet);
    engine.handle_timeout(now + Duration::from_secs(3600));
    engine.close_all(now + Duration::from_secs(3600), true);
    let mut closed = HashSet::new();
    for event in engine.drain_events() {
        match event.kind {
            EventKind::FlowCreated(f) => assert!(!restored.contains(&f.id), "id {} reused", f.id),
            EventKind::FlowClosed { flow, .. } => {
                assert!(closed.insert(flow.id), "flow {} closed twice", flow.id);
            }
            _ => {}
        }
    }
    assert!(restored.is_subset(&closed), "a restored flow never closed");
    assert_eq!(gw.flows_active(), 0);
    // Every restored translation went with its flow: no alias left, and
    // every port mapping released as often as it was taken again.
    assert_eq!(gw.nat().aliases.len(), 0, "an alias outlived its flow");
    assert_eq!(gw.nat().ports_in_use(), 0, "a restored port never released");
}

// ----------------------------------------------------------------- sync --

/// The fuzzed node's sync settings: node 1, its peer node 2.
fn sync_config(key: u8) -> tunwall::sync::SyncConfig {
    tunwall::sync::SyncConfig {
        listen: "198.18.9.1:7946".parse().expect("address"),
        peer: "198.18.9.2:7946".parse().expect("address"),
        key_file: "sync.key".into(),
        key: [key; 32],
        key_shared: false,
    }
}

/// The `sync` target: the HA sync decoder (SPEC §15). The bytes go to a
/// node as a datagram as they are (they must be refused: they carry no
/// valid tag, and nothing is applied), then sealed with the pair's key as
/// the items of the peer's first message, so that mutations reach the
/// item, flow-record and translation-record decoders and the table: what
/// is applied is marked synced, stays within `max_flows`, and is never
/// indicated as created or closed; the same datagram again is refused as
/// a replay; when every flow is gone, no alias or port mapping is left.
pub fn sync(data: &[u8]) {
    use tunwall::sync::replicator::Replicator;
    use tunwall::sync::wire::{self, Header, Key};
    let options = Options {
        max_flows: 32,
        shards: 2,
        ..Options::default()
    };
    let (gw, mut engines) = gateway(&options);
    let now = Instant::from_secs(1 << 20);
    let mut node = Replicator::new(&sync_config(5), Arc::clone(&gw), 1).expect("replicator");
    let status = |node: &Replicator| node.status(now);
    node.receive(now, &mut data.to_vec());
    assert_eq!(
        gw.flows_active(),
        0,
        "an unauthenticated datagram applied flows"
    );
    assert_eq!(status(&node)["rejected"], 1);
    let header = Header {
        node: 2,
        session: 7,
        counter: 1,
    };
    let mut sealed = Vec::new();
    wire::seal(&Key::new(&[5; 32]), header, 0, 1, 1, data, &mut sealed);
    node.receive(now, &mut sealed.clone());
    // Items that do not parse refuse the whole message (nothing applied).
    let accepted = status(&node)["rejected"] == 1;
    let flows = gw.flows(now);
    assert_eq!(flows.len(), gw.flows_active());
    assert!(flows.len() <= 32);
    assert!(
        flows.iter().all(|f| f.synced),
        "a replicated flow not marked"
    );
    let applied = flows.len();
    node.receive(now, &mut sealed);
    assert_eq!(
        gw.flows_active(),
        applied,
        "a replayed datagram applied flows"
    );
    if accepted {
        assert_eq!(status(&node)["rejected_by"]["replayed"], 1);
    } else {
        assert_eq!(applied, 0, "a refused message applied flows");
        assert_eq!(status(&node)["rejected_by"]["bad_body"], 2);
    }
    let engine = &mut engines[0];
    engine.handle_timeout(now + Duration::from_secs(3600));
    engine.close_all(now + Duration::from_secs(3600), true);
    for event in engine.drain_events() {
        assert!(
            !matches!(
                event.kind,
                EventKind::FlowCreated(_) | EventKind::FlowClosed { .. }
            ),
            "a replicated flow indicated: {event:?}"
        );
    }
    assert_eq!(gw.flows_active(), 0);
    // Every replicated translation gave back its alias and port.
    assert_eq!(gw.nat().aliases.len(), 0, "an alias outlived its flow");
    assert_eq!(
        gw.nat().ports_in_use(),
        0,
        "a replicated port never released"
    );
}
