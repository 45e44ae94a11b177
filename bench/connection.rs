//! `connection/tcp_10_packets`: the engine's share of a short TCP
//! connection, the exchange `bench/connrate.rs` drives through the real
//! gateway (connect, a 32-byte request, a 64-byte answer, the server's
//! close): ten segments, each of a new flow's first packets or of a flow
//! going through its handshake and teardown states.

use super::{LAN, gateway, tcp4};
use criterion::{BatchSize, Criterion, Throughput};
use std::hint::black_box;
use std::time::Duration;
use tunwall::engine::{Engine, Verdict};
use tunwall::packet::tcp_flags::{ACK, FIN, PSH, SYN};
use tunwall::time::Instant;

const WAN: u8 = 1;
const CONNECTIONS: usize = 10_000;

/// The ten segments of one connection from client port `port`, with the
/// port each arrives on, in order.
fn connection(port: u16) -> Vec<(u8, Vec<u8>)> {
    let (c, s) = ([198, 18, 1, 10], [198, 19, 0, 1]);
    let out =
        |flags, seq, ack, payload: &[u8]| (LAN, tcp4(c, s, port, 8080, flags, seq, ack, payload));
    let back =
        |flags, seq, ack, payload: &[u8]| (WAN, tcp4(s, c, 8080, port, flags, seq, ack, payload));
    vec![
        out(SYN, 100, 0, b""),
        back(SYN | ACK, 5000, 101, b""),
        out(ACK, 101, 5001, b""),
        out(PSH | ACK, 101, 5001, &[0; 32]),
        back(ACK, 5001, 133, b""),
        back(PSH | ACK, 5001, 133, &[0; 64]),
        back(FIN | ACK, 5065, 133, b""),
        out(ACK, 133, 5066, b""),
        out(FIN | ACK, 133, 5066, b""),
        back(ACK, 5066, 134, b""),
    ]
}

/// The segments of `n` connections, one after the other.
pub fn connections(n: usize) -> Vec<(u8, Vec<u8>)> {
    (0..n)
        .flat_map(|i| connection(1024 + (i % 60_000) as u16))
        .collect()
}

/// Runs every segment through `e`; each must be forwarded. (Named for
/// the `*engine_loop*` toggle of `ENGINE_CALLGRIND=tcp_connection`.)
#[inline(never)]
pub fn engine_loop_connections(e: &mut Engine, segments: &mut [(u8, Vec<u8>)]) {
    for (port, p) in segments {
        let verdict = e.process(Instant::ZERO, *port, black_box(p));
        assert!(matches!(verdict, Verdict::Forward(_)), "{verdict:?}");
    }
}

pub fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("connection");
    g.measurement_time(Duration::from_secs(3));
    let segments = connections(CONNECTIONS);
    g.throughput(Throughput::Elements(CONNECTIONS as u64));
    g.bench_function("tcp_10_packets", |b| {
        b.iter_batched(
            || (gateway(CONNECTIONS), segments.clone()),
            |(gw, mut segments)| {
                let mut e = gw.engine(0);
                e.flow_events(false);
                engine_loop_connections(&mut e, &mut segments);
                // Freed after the measured time.
                (gw, e, segments)
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}
