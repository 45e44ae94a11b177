//! The hand-made seeds of the corpus and the hand-made regression inputs,
//! written by `write_seeds` (run by hand). They are built from the packet
//! builders of `integration/common` rather than kept only as opaque files,
//! so that a change of the input encodings can regenerate them. The engine
//! conversations, the bulk of them, are in `engine_seeds.rs`.

#[path = "engine_seeds.rs"]
mod engine;

use super::{F_LAN, F_WAN, fuzz_dir};
use crate::common::*;
use crate::harness::{Op, Options, encode_engine};
use engine::engine_seeds;
use std::path::Path;

fn write(kind: &str, target: &str, name: &str, data: &[u8]) {
    let dir = fuzz_dir().join(kind).join(target);
    std::fs::create_dir_all(&dir).expect("create dir");
    std::fs::write(dir.join(name), data).expect("write seed");
}

/// An IPv6 packet with a hop-by-hop and a destination-options header
/// (PadN only) before its UDP header.
fn udp6_with_extensions() -> Vec<u8> {
    let plain = udp(ep(C6, 5000), ep(S6, 53), b"query");
    let mut out = plain[..40].to_vec();
    out[6] = 0; // hop-by-hop
    out.extend_from_slice(&[60, 0, 1, 4, 0, 0, 0, 0]); // -> destination options
    out.extend_from_slice(&[17, 0, 1, 4, 0, 0, 0, 0]); // -> UDP
    out.extend_from_slice(&plain[40..]);
    let payload = (out.len() - 40) as u16;
    out[4..6].copy_from_slice(&payload.to_be_bytes());
    out
}

/// An IPv6 packet quoted in an ICMPv6 error, cut inside its extension
/// headers: a first fragment (offset 0, more fragments) whose fragment
/// header points at a destination-options header of which only four bytes
/// are left (the etherparse lax-parser bug found by fuzzing, fixed in
/// `packet::icmp`).
fn cut_ipv6_quote() -> Vec<u8> {
    let plain = udp(ep(C6, 5000), ep(S6, 53), b"query");
    let mut quote = plain[..40].to_vec();
    quote[6] = 44; // fragment
    quote[4..6].copy_from_slice(&200u16.to_be_bytes());
    quote.extend_from_slice(&[60, 0, 0, 1, 0, 0, 0, 1]); // fragment (offset 0, MF) -> destination options
    quote.extend_from_slice(&[17, 2, 1, 4]); // destination options, 24 bytes announced, 4 present
    quote
}

/// An ICMPv6 destination unreachable from `S6` to `C6` quoting `quote` whole.
fn icmp6_error_quoting(quote: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    etherparse::PacketBuilder::ipv6(
        S6.parse::<std::net::Ipv6Addr>().unwrap().octets(),
        C6.parse::<std::net::Ipv6Addr>().unwrap().octets(),
        64,
    )
    .icmpv6(etherparse::Icmpv6Type::DestinationUnreachable(
        etherparse::icmpv6::DestUnreachableCode::Port,
    ))
    .write(&mut out, quote)
    .expect("write");
    out
}

/// The hand-made packets of the parse corpus (also sent in engine seeds).
fn packets() -> Vec<(&'static str, Vec<u8>)> {
    let mut conn4 = TcpConn::new(ep(C4, 40000), ep(S4, 443));
    let mut conn6 = TcpConn::new(ep(C6, 40001), ep(S6, 443));
    let udp4 = udp(ep(C4, 5000), ep(S4, 53), b"query");
    let udp6 = udp(ep(C6, 5000), ep(S6, 53), b"query");
    let big4 = udp(ep(C4, 5001), ep(S4, 9000), &[0x55; 100]);
    let big6 = udp(ep(C6, 5001), ep(S6, 9000), &[0x55; 100]);
    let frags4 = fragments(&big4, 32, 0x1234);
    let frags6 = fragments(&big6, 32, 0x5678);
    let mut out = vec![
        ("tcp4-syn", conn4.syn()),
        ("tcp4-synack", conn4.syn_ack()),
        ("tcp4-ack", conn4.ack()),
        ("tcp4-data", {
            conn4.c_seq += 1;
            conn4.s_seq += 1;
            conn4.client_data(64)
        }),
        ("tcp4-fin", conn4.client_fin()),
        ("tcp4-rst", conn4.client_rst()),
        ("tcp6-syn", conn6.syn()),
        ("tcp6-synack", conn6.syn_ack()),
        ("tcp6-data", {
            conn6.c_seq += 1;
            conn6.s_seq += 1;
            conn6.server_data(32)
        }),
        ("udp4", udp4.clone()),
        ("udp6", udp6.clone()),
        ("udp6-ext", udp6_with_extensions()),
        (
            "udp4-bcast",
            udp(ep(C4, 68), ep("255.255.255.255", 67), b"dhcp"),
        ),
        (
            "udp4-mcast",
            udp(ep(C4, 5353), ep("224.0.0.251", 5353), b"mdns"),
        ),
        (
            "udp6-mcast",
            udp(ep(C6, 5353), ep("ff02::fb", 5353), b"mdns"),
        ),
        ("echo4-req", echo(C4, S4, true, 7, 1)),
        ("echo4-rep", echo(S4, C4, false, 7, 1)),
        ("echo6-req", echo(C6, S6, true, 7, 1)),
        ("echo6-rep", echo(S6, C6, false, 7, 1)),
        ("icmp4-unreach-udp", icmp_error(S4, C4, 3, &udp4)),
        ("icmp4-unreach-tcp", icmp_error(S4, C4, 3, &conn4.syn())),
        (
            "icmp4-unreach-echo",
            icmp_error(S4, C4, 1, &echo(C4, S4, true, 7, 1)),
        ),
        ("icmp6-unreach-udp", icmp_error(S6, C6, 4, &udp6)),
        ("icmp6-too-big-tcp", icmp_error(S6, C6, 255, &conn6.syn())),
        ("gre4", raw(C4, S4, 47)),
        ("gre6", raw(C6, S6, 47)),
        ("sctp4", {
            let mut p = raw(C4, S4, 132);
            p.truncate(20);
            p.extend_from_slice(&[0x13, 0x88, 0x00, 0x50, 0, 0, 0, 0]);
            p[2..4].copy_from_slice(&28u16.to_be_bytes());
            p
        }),
    ];
    for (i, f) in frags4.into_iter().enumerate() {
        out.push((["frag4-0", "frag4-1", "frag4-2", "frag4-3"][i.min(3)], f));
    }
    for (i, f) in frags6.into_iter().enumerate() {
        out.push((["frag6-0", "frag6-1", "frag6-2", "frag6-3"][i.min(3)], f));
    }
    out
}

fn packet(port: u8, bytes: Vec<u8>) -> Op {
    Op::Packet {
        port,
        worker: false,
        bytes,
    }
}

fn derive(port: u8, reply: bool, tcp_flags: u8) -> Op {
    Op::Derive {
        back: 0,
        port,
        worker: false,
        reply,
        tcp_flags,
    }
}

fn secs(amount: u16) -> Op {
    Op::Advance { unit: 1, amount }
}

/// Small configurations beside configs/*.toml: each section alone, and a
/// few errors.
const CONFIG_SEEDS: &[(&str, &str)] = &[
    (
        "minimal",
        "[[port]]\nname = \"lan\"\ndevice = \"tw0\"\nzone = \"inside\"\nroutes = [\"198.18.1.0/24\"]\n\n\
         [[port]]\nname = \"wan\"\ndevice = \"tw1\"\nzone = \"outside\"\nroutes = [\"0.0.0.0/0\", \"::/0\"]\n",
    ),
    (
        "filters",
        "[[port]]\nname = \"lan\"\ndevice = \"tw0\"\nzone = \"inside\"\nroutes = [\"fd00:1::/64\"]\n\n\
         [[port]]\nname = \"wan\"\ndevice = \"tw1\"\nzone = \"outside\"\nroutes = [\"::/0\"]\n\n\
         [identities]\nhosts = [\"fd00:1::10\", \"198.18.1.10-198.18.1.20\"]\n\n\
         [[sublayer]]\nname = \"s\"\nweight = 3\n\n\
         [[filter]]\nname = \"a\"\nlayer = \"auth_recv_accept\"\nsublayer = \"s\"\naction = \"callout\"\n\
         callout = \"rate_limit\"\nrate = \"2/s\"\nprotocol = \"tcp\"\nlocal_port = \"1000-2000\"\n\
         remote_identity = \"hosts\"\n\n\
         [[filter]]\nname = \"b\"\nlayer = \"icmp_error\"\naction = \"permit\"\nhard = false\nweight = 7\n",
    ),
    (
        "flows",
        "[flows]\nmax_flows = 64\nudp_idle = \"500ms\"\ntcp_established = \"1d\"\nadaptive_start = 10\n\
         adaptive_end = 20\ntcp_loose_pickup = true\nmax_fragments = 1\nfragment_timeout = \"2h\"\n\n\
         [gateway]\nworkers = \"auto\"\nhost_model = \"strong\"\noffload = false\n\n\
         [events]\ndiscard_rate = 0\n",
    ),
    (
        "bad-reference",
        "[[filter]]\nname = \"x\"\nlayer = \"auth_connect\"\naction = \"permit\"\nsublayer = \"nope\"\n\
         arrival_port = \"lan\"\n",
    ),
    (
        "bad-duration",
        "[flows]\nudp_idle = 60\ntcp_closed = \"10 parsecs\"\n",
    ),
    ("bad-toml", "[[port]\nname = \"lan\n"),
];

/// Carried flow tables (SPEC §13): empty, and one with TCP in several
/// states, UDP, ICMP, multicast state with a child, over IPv4 and IPv6.
fn state_seeds() -> Vec<(&'static str, Vec<u8>)> {
    use tunwall::flow::FlowConfig;
    use tunwall::policy::{Action, Decision, FnPolicy};
    let permit = std::sync::Arc::new(FnPolicy::new(1, |_: &tunwall::policy::ClassifyRequest| {
        Decision::default_action(Action::Permit)
    }));
    let mut h = Harness::with(
        FlowConfig::with_max_flows(64),
        tunwall::engine::HostModel::Weak,
        permit,
    );
    let empty = h.snapshot();
    h.now = tunwall::time::Instant::from_secs(100);
    let mut established = TcpConn::new(ep(C4, 40_000), ep(S4, 443));
    established.handshake(&mut h);
    let data = established.client_data(100);
    h.out(data);
    let opening = TcpConn::new(ep(C4, 40_001), ep(S4, 443));
    h.out(opening.syn());
    let mut closing = TcpConn::new(ep(C6, 40_002), ep(S6, 443));
    closing.handshake(&mut h);
    let fin = closing.client_fin();
    h.out(fin);
    h.out(udp(ep(C4, 5000), ep(S4, 53), b"q"));
    h.inb(udp(ep(S6, 6000), ep(C6, 6001), b"in"));
    h.out(echo(C4, S4, true, 9, 1));
    h.out(udp(ep(C4, 5353), ep("224.0.0.251", 5353), b"m"));
    h.inb(udp(ep("198.18.2.9", 5353), ep(C4, 5353), b"a"));
    h.advance_ms(1500);
    vec![
        ("empty", empty),
        ("mixed", h.snapshot()),
        ("translated", translated_seed()),
    ]
}

/// Translated flows (SPEC §9): masquerade of UDP, TCP and an echo with one
/// mapping shared by two flows, and a port forward.
fn translated_seed() -> Vec<u8> {
    let text = format!(
        "{PORTS_TOML}\n\
         [[filter]]\nname = \"masq\"\nlayer = \"bind_redirect\"\naction = \"redirect\"\n\
         arrival_port = \"lan\"\nto_address = [\"198.18.2.1\", \"fd00:2::1\"]\n\n\
         [[filter]]\nname = \"fwd\"\nlayer = \"bind_redirect\"\naction = \"redirect\"\n\
         arrival_port = \"wan\"\nlocal_port = 8080\nprotocol = \"tcp\"\nto_address = \"{C4}\"\n\
         to_port = 80\n\n\
         [[filter]]\nname = \"in\"\nlayer = \"auth_recv_accept\"\naction = \"permit\"\n\
         local_port = 80\nflags = [\"redirected\"]\n"
    );
    let registry = tunwall::policy::CalloutRegistry::default();
    let config = tunwall::config::Config::parse(Path::new("seed.toml"), &text, &registry)
        .unwrap_or_else(|e| panic!("{e}"));
    let policy = tunwall::policy::Policy::compile(&config.policy, &registry, None).expect("policy");
    let mut h = Harness::with(
        tunwall::flow::FlowConfig::with_max_flows(64),
        tunwall::engine::HostModel::Weak,
        std::sync::Arc::new(policy),
    );
    h.now = tunwall::time::Instant::from_secs(100);
    h.out(udp(ep(C4, 5000), ep(S4, 53), b"q"));
    h.out(udp(ep(C4, 5000), ep("198.18.2.21", 53), b"q"));
    h.out(udp(ep(C6, 5000), ep(S6, 53), b"q"));
    h.out(TcpConn::new(ep(C4, 40_000), ep(S4, 443)).syn());
    h.out(echo(C4, S4, true, 9, 1));
    h.inb(TcpConn::new(ep(S4, 3333), ep("198.18.2.1", 8080)).syn());
    assert_eq!(h.gw.nat().aliases.len(), 6, "every flow translated");
    h.snapshot()
}

/// Items of a sync message (SPEC §15) from the records of the state
/// seeds: every flow (a translated one followed by its translation), a
/// closure, a bulk resync around them.
fn sync_seeds() -> Vec<(&'static str, Vec<u8>)> {
    use tunwall::sync::wire::{BULK_BEGIN, BULK_END, CLOSE, FLOW, TRANSLATION, put_item};
    let seeds = state_seeds();
    let items = |name: &str| {
        let (_, bytes) = seeds.iter().find(|(n, _)| *n == name).expect("the seed");
        let container = tunwall::state::Container::parse(bytes).expect("the seed parses");
        let mut items = Vec::new();
        let mut first = None;
        for record in container.records() {
            let (kind, payload) = record.expect("record");
            match kind {
                tunwall::state::FLOW => {
                    first.get_or_insert_with(|| payload.to_vec());
                    put_item(FLOW, payload, &mut items);
                }
                tunwall::state::TRANSLATION => put_item(TRANSLATION, payload, &mut items),
                _ => {}
            }
        }
        (items, first.expect("a flow"))
    };
    let (flows, first) = items("mixed");
    let mut bulk = vec![BULK_BEGIN];
    bulk.extend_from_slice(&flows);
    put_item(CLOSE, &first, &mut bulk);
    bulk.push(BULK_END);
    let (translated, first) = items("translated");
    let mut closed = translated.clone();
    put_item(CLOSE, &first, &mut closed);
    vec![
        ("flows", flows),
        ("bulk", bulk),
        ("empty", Vec::new()),
        ("translated", translated),
        ("translated-closed", closed),
    ]
}

/// Writes the hand-made seeds into fuzz/corpus/ and the hand-made
/// regression inputs into fuzz/regressions/.
#[test]
#[ignore = "writes files: run by hand to refresh the seeds"]
fn write_seeds() {
    for (name, bytes) in packets() {
        write("corpus", "parse", &format!("seed-{name}"), &bytes);
    }
    for (name, options, ops) in engine_seeds() {
        write(
            "corpus",
            "engine",
            &format!("seed-{name}"),
            &encode_engine(&options, &ops),
        );
    }
    for (name, bytes) in state_seeds() {
        write("corpus", "state", &format!("seed-{name}"), &bytes);
    }
    for (name, bytes) in sync_seeds() {
        write("corpus", "sync", &format!("seed-{name}"), &bytes);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in ["demo.toml", "example.toml"] {
        let text = std::fs::read(root.join("configs").join(file)).expect("config");
        write("corpus", "config", &format!("seed-{file}"), &text);
    }
    for (name, text) in CONFIG_SEEDS {
        write(
            "corpus",
            "config",
            &format!("seed-{name}.toml"),
            text.as_bytes(),
        );
    }

    // The etherparse lax IPv6 extension-chain bug (fixed in packet::icmp).
    let quote = cut_ipv6_quote();
    let error = icmp6_error_quoting(&quote);
    write(
        "regressions",
        "parse",
        "etherparse-lax-ipv6-ext-icmpv6-error",
        &error,
    );
    // The cut header names another one, 1608 bytes long: without debug
    // assertions the iterator reads past the end of the packet (valgrind:
    // invalid read in `from_slice_unchecked`).
    let mut far = cut_ipv6_quote();
    let n = far.len();
    far[n - 4] = 60;
    far[n - 3] = 200;
    write(
        "regressions",
        "parse",
        "etherparse-lax-ipv6-ext-reads-past-the-packet",
        &icmp6_error_quoting(&far),
    );
    let mut hbh = cut_ipv6_quote();
    hbh.truncate(48);
    hbh[40] = 0; // fragment -> hop-by-hop, which may only come first
    write(
        "regressions",
        "parse",
        "etherparse-lax-ipv6-ext-hop-by-hop-not-first",
        &icmp6_error_quoting(&hbh),
    );
    write(
        "regressions",
        "engine",
        "etherparse-lax-ipv6-ext-icmpv6-error",
        &encode_engine(
            &Options {
                shards: 1,
                max_flows: 64,
                ..Options::default()
            },
            &[
                packet(F_LAN, udp(ep(C6, 5000), ep(S6, 53), b"query")),
                packet(F_WAN, error),
            ],
        ),
    );
}
