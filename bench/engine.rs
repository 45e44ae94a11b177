//! Engine micro-benchmarks (SPEC §8, issue figures in docs/benchmarks.md):
//!
//! * `parse/*` — `packet::parse` alone;
//! * `established/*` — `Engine::process` of a packet of an existing flow:
//!   parse, key, shard lock, lookup, TCP window tracking, counters;
//! * `new_flow/udp` — creating flows;
//! * `connection/tcp_10_packets` — whole short TCP connections
//!   (bench/connection.rs);
//! * `table_1m/lookup` — an established-flow packet with 1 000 000 flows in the
//!   table, and (printed) the bytes each flow costs, table overhead included;
//! * `scaling/threads_{1,2}` — packets per second of 1 and 2 workers sharing
//!   one gateway;
//! * `nat/*` — the established path of a masqueraded UDP flow, both ways,
//!   beside the same untranslated packet (each iteration copies the packet
//!   in first, as a rewrite changes it), and (printed) the bytes per flow of
//!   1 000 000 masqueraded flows (bench/nat.rs).
//!
//! Run with `cargo bench --bench engine`.

use criterion::{BatchSize, Criterion, Throughput, criterion_group};
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tunwall::engine::{Engine, Gateway, GatewayConfig, HostModel, Verdict};
use tunwall::flow::{FlowConfig, Zone};
use tunwall::packet::parse;
use tunwall::policy::{Authorizer, DefaultPolicy};
use tunwall::route::PortSpec;
use tunwall::testkit::{self, Ep};
use tunwall::time::Instant;

/// Counts live heap bytes, to measure what the flow table really costs.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
/// The highest `LIVE` since it was last reset.
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn count_up(bytes: usize) {
    let live = LIVE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

// SAFETY: defers to the system allocator; only adds bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_up(layout.size());
        // SAFETY: the caller upholds GlobalAlloc's contract, passed through.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_up(new_size);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

mod connection;
mod nat;

const LAN: u8 = 0;

fn gateway(max_flows: usize) -> Arc<Gateway> {
    gateway_for(max_flows, 1)
}

/// A gateway whose flow table has one shard group per worker.
fn gateway_for(max_flows: usize, workers: usize) -> Arc<Gateway> {
    gateway_with(max_flows, workers, policy())
}

fn gateway_with(max_flows: usize, workers: usize, policy: Arc<dyn Authorizer>) -> Arc<Gateway> {
    let mut flows = FlowConfig::with_max_flows(max_flows);
    // Keep adaptive shrinking out of the way of a full benchmark table.
    flows.adaptive_start = max_flows * 2;
    flows.adaptive_end = max_flows * 3;
    Gateway::new(
        GatewayConfig {
            ports: vec![
                PortSpec::new("lan", Zone::Inside, &["198.18.0.0/16", "fd00:1::/64"]),
                PortSpec::new("wan", Zone::Outside, &["0.0.0.0/0", "::/0"]),
            ],
            flows,
            host_model: HostModel::Weak,
            shards: None,
        },
        policy,
        workers,
    )
}

/// Creates `n` flows through `e` from lan, with the packets `packet_for` builds.
fn fill(e: &mut Engine, n: usize, packet_for: impl Fn(usize) -> Vec<u8>) {
    for i in 0..n {
        let mut p = packet_for(i);
        assert_eq!(e.process(Instant::ZERO, LAN, &mut p), Verdict::Forward(1));
        if i % 4096 == 0 {
            e.drain_events().for_each(drop);
        }
    }
    e.drain_events().for_each(drop);
}

fn policy() -> Arc<dyn Authorizer> {
    Arc::new(DefaultPolicy::default())
}

/// A TCP segment from the test kit's builder (SYNs carry MSS and window scale 7).
#[allow(clippy::too_many_arguments)]
fn tcp4(
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    flags: u8,
    seq: u32,
    ack: u32,
    payload: &[u8],
) -> Vec<u8> {
    let wscale = (flags & testkit::SYN != 0).then_some(7);
    testkit::tcp(
        Ep(src.into(), sport),
        Ep(dst.into(), dport),
        flags,
        seq,
        ack,
        65535,
        wscale,
        payload,
    )
}

fn udp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, len: usize) -> Vec<u8> {
    testkit::udp(
        Ep(src.into(), sport),
        Ep(dst.into(), dport),
        &vec![0u8; len],
    )
}

fn parse_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse");
    g.measurement_time(Duration::from_secs(2));
    let syn = tcp4(
        [198, 18, 1, 10],
        [198, 19, 0, 1],
        40000,
        443,
        0x02,
        1,
        0,
        b"",
    );
    let v6 = testkit::tcp(
        testkit::ep("fd00:1::10", 40000),
        testkit::ep("fd00:2::20", 443),
        testkit::ACK,
        1,
        5,
        65535,
        None,
        &[0u8; 100],
    );
    let big = udp4([198, 18, 1, 10], [198, 19, 0, 1], 5000, 53, 1372);
    for (name, p) in [
        ("ipv4_tcp_syn", &syn),
        ("ipv6_tcp", &v6),
        ("ipv4_udp_1400B", &big),
    ] {
        g.bench_function(name, |b| b.iter(|| black_box(parse(black_box(p)))));
    }
    g.finish();
}

/// An engine with one established TCP flow; returns the segment buffer to
/// replay and the offset of its sequence number.
fn established_tcp() -> (Arc<Gateway>, Engine, Vec<u8>) {
    let gw = gateway(1024);
    let mut e = gw.engine(0);
    let (c, s) = ([198, 18, 1, 10], [198, 19, 0, 1]);
    let now = Instant::ZERO;
    for (port, mut p) in [
        (0, tcp4(c, s, 40000, 443, 0x02, 100, 0, b"")),
        (1, tcp4(s, c, 443, 40000, 0x12, 5000, 101, b"")),
        (0, tcp4(c, s, 40000, 443, 0x10, 101, 5001, b"")),
        // The server's first scaled window: 65535 << 7 bytes of room.
        (1, tcp4(s, c, 443, 40000, 0x10, 5001, 101, b"")),
    ] {
        assert!(matches!(e.process(now, port, &mut p), Verdict::Forward(_)));
    }
    let data = tcp4(c, s, 40000, 443, 0x10, 101, 5001, &[0u8; 64]);
    (gw, e, data)
}

fn established_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("established");
    g.measurement_time(Duration::from_secs(3));
    // TCP: every iteration sends the next 64 bytes, so the segment is always in window
    // (the server's window, scaled by 128, leaves room for ~8 MB before an ACK).
    let (_gw, mut e, mut data) = established_tcp();
    let mut seq = 101u32;
    let mut sent = 0u64;
    g.bench_function("ipv4_tcp_64B", |b| {
        b.iter(|| {
            data[24..28].copy_from_slice(&seq.to_be_bytes());
            seq = seq.wrapping_add(64);
            sent += 64;
            if sent > 4_000_000 {
                // Let the receiver acknowledge everything, outside the measured packet.
                let mut ack = tcp4(
                    [198, 19, 0, 1],
                    [198, 18, 1, 10],
                    443,
                    40000,
                    0x10,
                    5001,
                    seq,
                    b"",
                );
                e.process(Instant::ZERO, 1, &mut ack);
                sent = 0;
            }
            black_box(e.process(Instant::ZERO, LAN, black_box(&mut data)))
        })
    });
    assert_eq!(
        e.stats().discards_total(),
        0,
        "every benchmarked segment must pass"
    );

    let gw = gateway(1024);
    let mut e = gw.engine(0);
    let mut p = udp4([198, 18, 1, 10], [198, 19, 0, 1], 5000, 53, 64);
    assert_eq!(e.process(Instant::ZERO, LAN, &mut p), Verdict::Forward(1));
    g.bench_function("ipv4_udp_64B", |b| {
        b.iter(|| black_box(e.process(Instant::ZERO, LAN, black_box(&mut p))))
    });
    assert_eq!(e.stats().discards_total(), 0);
    g.finish();
}

/// The first packets of `n` UDP flows from lan.
fn new_flow_packets(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            udp4(
                [198, 18, (i >> 8) as u8, i as u8],
                [198, 19, 0, 1],
                1000 + (i % 60000) as u16,
                53,
                32,
            )
        })
        .collect()
}

fn new_flow_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("new_flow");
    g.measurement_time(Duration::from_secs(3));
    const N: usize = 50_000;
    let packets = new_flow_packets(N);
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("udp_50k_flows", |b| {
        b.iter_batched(
            || (gateway(N), packets.clone()),
            |(gw, mut packets)| {
                let mut e = gw.engine(0);
                for p in &mut packets {
                    black_box(e.process(Instant::ZERO, LAN, p));
                }
                assert_eq!(gw.flows_active(), N);
                e.drain_events().for_each(drop);
                // Returned, so criterion frees the table, the engine and the
                // packets after the measured time (not part of creating flows).
                (gw, e, packets)
            },
            BatchSize::PerIteration,
        )
    });
    // The daemon without an event file, subscriber or debug log: the flow
    // events are not built (the counters still count).
    g.bench_function("udp_50k_flows_no_event_taker", |b| {
        b.iter_batched(
            || (gateway(N), packets.clone()),
            |(gw, mut packets)| {
                let mut e = gw.engine(0);
                e.flow_events(false);
                for p in &mut packets {
                    black_box(e.process(Instant::ZERO, LAN, p));
                }
                assert_eq!(gw.flows_active(), N);
                e.drain_events().for_each(drop);
                // Returned, so criterion frees the table, the engine and the
                // packets after the measured time (not part of creating flows).
                (gw, e, packets)
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn million_flows(c: &mut Criterion) {
    const FLOWS: usize = 1_000_000;
    let packet_for = |i: usize| {
        udp4(
            [198, 18, (i >> 16) as u8, (i >> 8) as u8],
            [198, 19, 0, 1],
            1024 + (i & 0xff) as u16,
            53,
            16,
        )
    };
    let before = LIVE.load(Ordering::Relaxed);
    let gw = gateway(FLOWS);
    let mut e = gw.engine(0);
    fill(&mut e, FLOWS, packet_for);
    let after = LIVE.load(Ordering::Relaxed);
    assert_eq!(gw.flows_active(), FLOWS);
    println!(
        "memory/table_1m: {:.1} bytes per flow (allocator: gateway + table), {:.1} (table accounting), {} flows, {} bytes per entry",
        (after - before) as f64 / FLOWS as f64,
        gw.table().heap_bytes() as f64 / FLOWS as f64,
        FLOWS,
        std::mem::size_of::<tunwall::flow::FlowEntry>()
    );
    // Lookups of random existing flows.
    let mut state = 0x9e3779b97f4a7c15u64;
    let mut sample: Vec<Vec<u8>> = (0..65_536)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            packet_for((state % FLOWS as u64) as usize)
        })
        .collect();
    let mut i = 0;
    let mut g = c.benchmark_group("table_1m");
    g.measurement_time(Duration::from_secs(3));
    g.bench_function("lookup_udp", |b| {
        b.iter(|| {
            i = (i + 1) & 0xffff;
            black_box(e.process(Instant::ZERO, LAN, &mut sample[i]))
        })
    });
    g.finish();
    assert_eq!(e.stats().discards_total(), 0);
    assert_eq!(gw.flows_active(), FLOWS);
    carry_1m(c, &gw, "carry_1m", || gateway(FLOWS));
}

/// SPEC §13: the 1 M-flow table written as a state container (to a sink,
/// as to a file: one shard's records in memory at a time) and restored
/// into a `fresh` gateway (translations, aliases and mappings included).
fn carry_1m(c: &mut Criterion, gw: &Arc<Gateway>, name: &str, fresh: impl Fn() -> Arc<Gateway>) {
    use tunwall::state::{Container, Header};
    let header = gw.snapshot_header(Header::default());
    let live = LIVE.load(Ordering::Relaxed);
    PEAK.store(live, Ordering::Relaxed);
    let started = std::time::Instant::now();
    let mut size = CountingSink(0);
    size = gw.snapshot(Instant::ZERO, &header, size).expect("snapshot");
    let took = started.elapsed();
    println!(
        "{name}: snapshot of {} flows: {} bytes ({:.1} per flow) in {:.0} ms; {} KiB of heap beyond the table while writing",
        gw.flows_active(),
        size.0,
        size.0 as f64 / gw.flows_active() as f64,
        took.as_secs_f64() * 1000.0,
        (PEAK.load(Ordering::Relaxed) - live) / 1024
    );
    let bytes = gw
        .snapshot(Instant::ZERO, &header, Vec::with_capacity(size.0))
        .expect("snapshot");
    let mut g = c.benchmark_group(name);
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    g.bench_function("snapshot", |b| {
        b.iter(|| {
            black_box(
                gw.snapshot(Instant::ZERO, &header, CountingSink(0))
                    .expect("snapshot"),
            )
        })
    });
    g.bench_function("parse_and_restore", |b| {
        b.iter_batched(
            &fresh,
            |fresh| {
                let container = Container::parse(&bytes).expect("container");
                let done = fresh
                    .restore(Instant::from_secs(10), &container, Duration::ZERO)
                    .expect("restore");
                assert_eq!(done.flows, 1_000_000);
                assert_eq!(fresh.nat().ports_in_use(), gw.nat().ports_in_use());
                fresh
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

/// Counts what is written to it.
struct CountingSink(usize);

impl std::io::Write for CountingSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn scaling(c: &mut Criterion) {
    let mut g = c.benchmark_group("scaling");
    g.measurement_time(Duration::from_secs(3));
    const PER_THREAD: usize = 256;
    for threads in [1usize, 2] {
        let gw = gateway_for(4096, threads);
        let mut engines: Vec<(Engine, Vec<Vec<u8>>)> = (0..threads)
            .map(|t| {
                let mut e = gw.engine(t);
                let mut packets: Vec<Vec<u8>> = (0..PER_THREAD)
                    .map(|i| udp4([198, 18, t as u8, i as u8], [198, 19, 0, 1], 7000, 53, 64))
                    .collect();
                for p in &mut packets {
                    assert_eq!(e.process(Instant::ZERO, LAN, p), Verdict::Forward(1));
                }
                e.drain_events().for_each(drop);
                (e, packets)
            })
            .collect();
        g.throughput(Throughput::Elements(threads as u64));
        g.bench_function(format!("threads_{threads}"), |b| {
            b.iter_custom(|iters| {
                let start = std::time::Instant::now();
                std::thread::scope(|s| {
                    for (e, packets) in engines.iter_mut() {
                        s.spawn(move || {
                            for n in 0..iters as usize {
                                let k = n % PER_THREAD;
                                black_box(e.process(Instant::ZERO, LAN, &mut packets[k]));
                            }
                        });
                    }
                });
                start.elapsed()
            })
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    parse_benches,
    established_benches,
    new_flow_benches,
    connection::benches,
    million_flows,
    scaling,
    nat::benches,
    nat::million_translated
);
/// `ENGINE_CALLGRIND=<case> [ENGINE_ITERS=n]`: instead of criterion, runs
/// one engine case inside `engine_loop`, for repeatable instruction counts
/// per packet: `valgrind --tool=callgrind --collect-atstart=no
/// --toggle-collect=*engine_loop* target/release/deps/engine-*`, then divide
/// by n. Cases: `established_tcp` (in-window 64-byte segments of one
/// flow, as `established/ipv4_tcp_64B`), `established_udp`, and
/// `new_udp_no_event_taker` (n new UDP flows into a table sized for them,
/// as `new_flow/udp_50k_flows_no_event_taker`), and `tcp_connection` (n
/// whole connections of ten segments, as `connection/tcp_10_packets`:
/// divide by n for a connection).
fn engine_callgrind(case: &str) {
    let iters: usize = std::env::var("ENGINE_ITERS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(50_000);
    match case {
        "established_tcp" => {
            let (_gw, mut e, template) = established_tcp();
            // Each segment 64 bytes on; the window (65535 << 7) holds them all.
            let mut packets: Vec<Vec<u8>> = (0..iters as u32)
                .map(|i| {
                    let mut p = template.clone();
                    p[24..28].copy_from_slice(&(101 + i * 64).to_be_bytes());
                    p
                })
                .collect();
            engine_loop(&mut e, &mut packets);
            assert_eq!(e.stats().discards_total(), 0);
        }
        "established_udp" => {
            let gw = gateway(1024);
            let mut e = gw.engine(0);
            let p = udp4([198, 18, 1, 10], [198, 19, 0, 1], 5000, 53, 64);
            engine_loop(&mut e, &mut vec![p; iters]);
            assert_eq!(e.stats().discards_total(), 0);
        }
        "new_udp_no_event_taker" => {
            let gw = gateway(iters);
            let mut e = gw.engine(0);
            e.flow_events(false);
            let mut packets = new_flow_packets(iters);
            engine_loop(&mut e, &mut packets);
            assert_eq!(gw.flows_active(), iters);
        }
        "tcp_connection" => {
            let gw = gateway(iters);
            let mut e = gw.engine(0);
            e.flow_events(false);
            let mut segments = connection::connections(iters);
            connection::engine_loop_connections(&mut e, &mut segments);
        }
        _ => panic!(
            "ENGINE_CALLGRIND: established_tcp, established_udp, new_udp_no_event_taker or tcp_connection"
        ),
    }
}

#[inline(never)]
fn engine_loop(e: &mut Engine, packets: &mut [Vec<u8>]) {
    for p in packets {
        black_box(e.process(Instant::ZERO, LAN, black_box(p)));
    }
}

fn main() {
    if let Ok(case) = std::env::var("NAT_CALLGRIND") {
        nat::callgrind(&case);
        return;
    }
    if let Ok(case) = std::env::var("ENGINE_CALLGRIND") {
        engine_callgrind(&case);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
