//! `nat/*`: the established path of a masqueraded UDP flow, both ways,
//! beside the same untranslated packet, and the table of 1 000 000
//! masqueraded flows (bytes per flow, carried); `NAT_CALLGRIND` counts the
//! established cases' instructions.

use super::{LAN, LIVE, carry_1m, fill, gateway_with, policy, udp4};
use criterion::Criterion;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tunwall::engine::{Engine, Verdict};
use tunwall::packet::parse;
use tunwall::policy::Authorizer;
use tunwall::time::Instant;

/// Masquerade of everything from `lan` to 198.19.255.1 (the bench's ports
/// as configuration text).
pub fn masquerade() -> Arc<dyn Authorizer> {
    let text = r#"
[[port]]
name = "lan"
device = "tw-lan"
zone = "inside"
routes = ["198.18.0.0/16", "fd00:1::/64"]

[[port]]
name = "wan"
device = "tw-wan"
zone = "outside"
routes = ["0.0.0.0/0", "::/0"]

[[filter]]
name = "masquerade"
layer = "bind_redirect"
action = "redirect"
arrival_port = "lan"
to_address = "198.19.255.1"
"#;
    let registry = tunwall::policy::CalloutRegistry::default();
    let config =
        tunwall::config::Config::parse(std::path::Path::new("bench.toml"), text, &registry)
            .expect("config");
    Arc::new(tunwall::policy::Policy::compile(&config.policy, &registry, None).expect("policy"))
}

pub fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("nat");
    g.measurement_time(Duration::from_secs(3));
    for (name, policy) in [("untranslated", policy()), ("masquerade", masquerade())] {
        let gw = gateway_with(1024, 1, policy);
        let mut e = gw.engine(0);
        let out = udp4([198, 18, 1, 10], [198, 19, 0, 1], 5000, 53, 64);
        let mut p = out.clone();
        assert_eq!(e.process(Instant::ZERO, LAN, &mut p), Verdict::Forward(1));
        // The answer as it arrives on wan: to the address the flow left with.
        let mut back = udp4([198, 19, 0, 1], [p[12], p[13], p[14], p[15]], 53, 5000, 64);
        let back_template = back.clone();
        assert_eq!(
            e.process(Instant::ZERO, 1, &mut back),
            Verdict::Forward(LAN)
        );
        g.bench_function(format!("ipv4_udp_64B_out_{name}"), |b| {
            b.iter(|| {
                p.copy_from_slice(&out);
                black_box(e.process(Instant::ZERO, LAN, black_box(&mut p)))
            })
        });
        g.bench_function(format!("ipv4_udp_64B_in_{name}"), |b| {
            b.iter(|| {
                back.copy_from_slice(&back_template);
                black_box(e.process(Instant::ZERO, 1, black_box(&mut back)))
            })
        });
        assert_eq!(e.stats().discards_total(), 0);
    }
    // The rewrite alone: addresses, ports and both checksums, incrementally.
    let out = udp4([198, 18, 1, 10], [198, 19, 0, 1], 5000, 53, 64);
    let packet = parse(&out).expect("packet");
    let mut p = out.clone();
    let mut to = tunwall::packet::rewrite::Endpoints {
        src: packet.dst,
        dst: packet.src,
        ports: (2000, 53),
        icmp_id: 0,
    };
    g.bench_function("rewrite_ipv4_udp", |b| {
        b.iter(|| {
            to.ports.0 = to.ports.0.wrapping_add(1);
            tunwall::packet::rewrite::translate(black_box(&mut p), &packet, &to, false)
        })
    });
    g.finish();
}

/// Bytes per flow with 1 000 000 masqueraded UDP flows: 60 000 mappings
/// (3 750 hosts × 16 ports), each used towards 17 remotes.
pub fn million_translated(c: &mut Criterion) {
    const FLOWS: usize = 1_000_000;
    let before = LIVE.load(Ordering::Relaxed);
    let gw = gateway_with(FLOWS, 1, masquerade());
    let mut e = gw.engine(0);
    fill(&mut e, FLOWS, |i| {
        let (m, remote) = (i % 60_000, i / 60_000);
        let host = m / 16;
        udp4(
            [198, 18, (host >> 8) as u8, host as u8],
            [198, 19, 0, remote as u8 + 1],
            1024 + (m % 16) as u16,
            53,
            16,
        )
    });
    let after = LIVE.load(Ordering::Relaxed);
    assert_eq!(gw.flows_active(), FLOWS);
    assert_eq!(gw.nat().ports_in_use(), 60_000);
    println!(
        "memory/table_1m_masquerade: {:.1} bytes per flow (allocator: gateway, table, translations, aliases, mappings), {:.1} (table accounting incl. translations), {:.1} (aliases)",
        (after - before) as f64 / FLOWS as f64,
        gw.table().heap_bytes() as f64 / FLOWS as f64,
        gw.nat().aliases.heap_bytes() as f64 / FLOWS as f64,
    );
    carry_1m(c, &gw, "carry_1m_masquerade", || {
        gateway_with(FLOWS, 1, masquerade())
    });
}

/// `NAT_CALLGRIND=<case> [NAT_ITERS=n]`: instead of criterion, runs one
/// `nat/*` case n times inside `nat_loop`, for repeatable instruction
/// counts: `valgrind --tool=callgrind --collect-atstart=no
/// --toggle-collect=*nat_loop* target/release/deps/engine-*`.
pub fn callgrind(case: &str) {
    let iters: usize = std::env::var("NAT_ITERS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    let (policy, inbound) = match case {
        "out_untranslated" => (policy(), false),
        "out_masquerade" => (masquerade(), false),
        "in_untranslated" => (policy(), true),
        "in_masquerade" => (masquerade(), true),
        _ => panic!("NAT_CALLGRIND: one of out_/in_ untranslated/masquerade"),
    };
    let gw = gateway_with(1024, 1, policy);
    let mut e = gw.engine(0);
    let out = udp4([198, 18, 1, 10], [198, 19, 0, 1], 5000, 53, 64);
    let mut p = out.clone();
    assert_eq!(e.process(Instant::ZERO, LAN, &mut p), Verdict::Forward(1));
    let back = udp4([198, 19, 0, 1], [p[12], p[13], p[14], p[15]], 53, 5000, 64);
    let (template, port) = if inbound { (back, 1) } else { (out, LAN) };
    let mut buf = template.clone();
    nat_loop(&mut e, port, &template, &mut buf, iters);
    assert_eq!(e.stats().discards_total(), 0);
}

#[inline(never)]
fn nat_loop(e: &mut Engine, port: u8, template: &[u8], buf: &mut [u8], iters: usize) {
    for _ in 0..iters {
        buf.copy_from_slice(template);
        black_box(e.process(Instant::ZERO, port, black_box(&mut *buf)));
    }
}
