//! Engine seeds: whole conversations (handshakes, teardowns, fragments,
//! both IP versions, every port of the fuzzed gateway) that a random
//! input would take long to stumble on, to start the engine fuzzer deep in
//! the flow table's states.

use super::{derive, packet, secs};
use crate::common::*;
use crate::harness::{Op, Options};
use crate::{F_LAN, F_LAN2, F_WAN, F_WAN2};

/// A host behind `wan2` (198.18.128.0/17).
const S4_WAN2: &str = "198.18.200.1";
const S6_WAN2: &str = "fd00:8000::1";
/// Hand-made engine inputs: conversations the engine should see.
pub(super) fn engine_seeds() -> Vec<(&'static str, Options, Vec<Op>)> {
    let base = Options {
        shards: 1,
        max_flows: 64,
        ..Options::default()
    };
    let mut tcp4 = TcpConn::new(ep(C4, 40000), ep(S4, 443));
    let mut tcp4_ops = Vec::new();
    tcp4_ops.push(packet(F_LAN, tcp4.syn()));
    tcp4_ops.push(packet(F_WAN, tcp4.syn_ack()));
    tcp4_ops.push(packet(F_LAN, tcp4.ack()));
    tcp4.c_seq += 1;
    tcp4.s_seq += 1;
    tcp4_ops.push(packet(F_LAN, tcp4.client_data(100)));
    tcp4_ops.push(packet(F_WAN, tcp4.server_data(200)));
    tcp4_ops.push(packet(F_LAN, tcp4.client_ack()));
    tcp4_ops.push(packet(F_LAN, tcp4.client_fin()));
    tcp4_ops.push(packet(F_WAN, tcp4.server_fin()));
    tcp4_ops.push(packet(F_LAN, tcp4.client_ack()));
    tcp4_ops.push(secs(3));
    tcp4_ops.push(Op::Timeout { worker: false });

    let mut tcp6 = TcpConn::new(ep(C6, 40001), ep(S6_WAN2, 22));
    let mut tcp6_ops = vec![
        packet(F_LAN, tcp6.syn()),
        packet(F_WAN2, tcp6.syn_ack()),
        packet(F_LAN, tcp6.ack()),
    ];
    tcp6.c_seq += 1;
    tcp6.s_seq += 1;
    tcp6_ops.push(packet(F_LAN, tcp6.client_data(10)));
    tcp6_ops.push(packet(F_LAN, tcp6.client_rst()));
    tcp6_ops.push(secs(2));
    tcp6_ops.push(Op::Timeout { worker: false });

    // The same handshake made by Derive: SYN, its reply, the reply's reply, data.
    let derived = vec![
        packet(F_LAN, TcpConn::new(ep(C4, 40002), ep(S4_WAN2, 80)).syn()),
        derive(F_WAN2, true, SYN | ACK),
        derive(F_LAN, true, ACK),
        derive(F_LAN, false, ACK | 0x08),
        derive(F_WAN2, true, ACK),
        derive(F_WAN2, false, FIN | ACK),
        derive(F_LAN, true, FIN | ACK),
        derive(F_WAN2, true, ACK),
        secs(5),
        Op::Timeout { worker: false },
    ];

    let udp_icmp = vec![
        packet(F_LAN, udp(ep(C4, 5000), ep(S4, 53), b"query")),
        derive(F_WAN, true, 0),
        packet(F_LAN, echo(C6, S6, true, 9, 1)),
        derive(F_WAN, true, 0),
        packet(
            F_WAN,
            icmp_error(S4, C4, 3, &udp(ep(C4, 5000), ep(S4, 53), b"query")),
        ),
        packet(F_WAN, icmp_error(S6, C6, 255, &echo(C6, S6, true, 9, 1))),
        secs(4),
        Op::Timeout { worker: false },
        secs(2),
        Op::Timeout { worker: false },
    ];

    let big = udp(ep(C4, 5001), ep(S4, 9000), &[0x55; 100]);
    let big6 = udp(ep(C6, 5001), ep(S6, 9000), &[0x55; 100]);
    let mut frag_ops: Vec<Op> = fragments(&big, 32, 0x1234)
        .into_iter()
        .map(|f| packet(F_LAN, f))
        .collect();
    // Later fragments before their first one, then the first.
    let mut frags6 = fragments(&big6, 32, 0x5678);
    frags6.rotate_left(1);
    frag_ops.extend(frags6.into_iter().map(|f| packet(F_LAN, f)));
    frag_ops.push(secs(3));
    frag_ops.push(Op::Timeout { worker: false });

    // More flows than the table holds.
    let mut full = Vec::new();
    for i in 0..24u16 {
        full.push(packet(
            if i % 2 == 0 { F_LAN } else { F_LAN2 },
            udp(
                ep(if i % 2 == 0 { C4 } else { "198.18.3.7" }, 10000 + i),
                ep(S4, 53),
                b"q",
            ),
        ));
        if i % 5 == 0 {
            full.push(Op::Advance {
                unit: 0,
                amount: 700,
            });
        }
    }
    full.push(Op::Timeout { worker: false });

    // Inbound attempts, a reload that permits them, closes by worker.
    let inbound = vec![
        packet(F_WAN, TcpConn::new(ep(S4, 50000), ep(C4, 22)).syn()),
        packet(F_WAN, udp(ep(S6, 53), ep(C6, 5000), b"unsolicited")),
        Op::Reload {
            permit_inbound: true,
        },
        packet(F_WAN, TcpConn::new(ep(S4, 50001), ep(C4, 22)).syn()),
        derive(F_LAN, true, SYN | ACK),
        packet(F_LAN, udp(ep(C4, 6000), ep(S4, 53), b"q")),
        Op::Reload {
            permit_inbound: false,
        },
        derive(F_WAN, true, 0),
        Op::CloseOwned { worker: true },
        packet(F_LAN, udp(ep(C4, 6001), ep(S4, 53), b"q")),
    ];

    // A flow of lan seen again on lan2 (host model), multicast and loose pickup.
    let moves = vec![
        packet(F_LAN, udp(ep(C4, 7000), ep(S4, 53), b"q")),
        packet(F_LAN2, udp(ep(C4, 7000), ep(S4, 53), b"q")),
        packet(F_LAN, udp(ep(C4, 5353), ep("224.0.0.251", 5353), b"mdns")),
        packet(F_WAN, udp(ep(S4, 5353), ep(C4, 5353), b"answer")),
        packet(F_LAN, udp(ep(C6, 5353), ep("ff02::fb", 5353), b"mdns")),
        packet(F_LAN, udp(ep(C4, 68), ep("255.255.255.255", 67), b"dhcp")),
        packet(
            F_LAN,
            tcp(
                ep(C4, 41000),
                ep(S4, 443),
                ACK,
                5000,
                7000,
                500,
                None,
                b"mid",
            ),
        ),
        derive(F_WAN, true, ACK),
        packet(F_LAN, raw(C4, S4, 47)),
        derive(F_WAN, true, 0),
        packet(9, udp(ep(C4, 7001), ep(S4, 53), b"q")),
        secs(7),
        Op::Timeout { worker: false },
    ];

    let two = Options {
        two_workers: true,
        shards: 2,
        ..base
    };
    let mut parallel = Vec::new();
    for i in 0..8u16 {
        parallel.push(Op::Packet {
            port: F_LAN,
            worker: i % 3 == 0,
            bytes: udp(ep(C4, 20000 + i), ep(S4, 53), b"q"),
        });
        parallel.push(Op::Derive {
            back: 0,
            port: F_WAN,
            worker: i % 2 == 0,
            reply: true,
            tcp_flags: 0,
        });
    }
    parallel.push(Op::CloseOwned { worker: false });
    parallel.push(secs(6));
    parallel.push(Op::Timeout { worker: true });

    vec![
        ("tcp4-conversation", base, tcp4_ops.clone()),
        ("tcp6-wan2-rst", base, tcp6_ops),
        ("tcp4-derived", base, derived.clone()),
        (
            "tcp4-derived-strict",
            Options {
                no_window_tracking: false,
                strong: true,
                ..base
            },
            derived,
        ),
        ("udp-icmp", base, udp_icmp.clone()),
        (
            "udp-icmp-example-policy",
            Options { policy: 3, ..base },
            udp_icmp,
        ),
        ("fragments", base, frag_ops),
        (
            "table-full",
            Options {
                max_flows: 8,
                sweep_budget: 2,
                shards: 2,
                ..base
            },
            full,
        ),
        ("inbound-reload", Options { policy: 0, ..base }, inbound),
        (
            "moves-weak-loose",
            Options {
                loose_pickup: true,
                ..base
            },
            moves.clone(),
        ),
        (
            "moves-strong",
            Options {
                strong: true,
                policy: 1,
                ..base
            },
            moves,
        ),
        ("two-workers", two, parallel),
        (
            "tcp4-block-all",
            Options {
                policy: 2,
                max_flows: 1,
                ..base
            },
            tcp4_ops,
        ),
    ]
}
