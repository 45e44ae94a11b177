//! Policy benchmarks: new-flow authorization with 10, 1 000 and 10 000
//! filters, and the established-flow path with 10 and 10 000 filters (which
//! must not depend on the filter count: SPEC §8).
//!
//! Run with `cargo bench --bench policy`.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tunwall::config::Config;
use tunwall::engine::{Gateway, Verdict};
use tunwall::packet::{IpVersion, raw_addr};
use tunwall::policy::{Authorizer, CalloutRegistry, ClassifyFlags, ClassifyRequest, Layer, Policy};
use tunwall::testkit::{self, ep};
use tunwall::time::Instant;

/// A policy of `n` filters of the kinds operators write: per-host blocks and
/// permits (remote /32s and /24s), per-service port rules and ranges, a few
/// broad rules with no address or port, spread over three sublayers.
fn policy_text(n: usize) -> String {
    let mut t = String::from(
        r#"
[[port]]
name = "lan"
device = "bench-lan"
zone = "inside"
routes = ["198.18.0.0/16"]

[[port]]
name = "wan"
device = "bench-wan"
zone = "outside"
routes = ["0.0.0.0/0"]

[flows]
max_flows = 2000000

[[sublayer]]
name = "high"
weight = 200

[[sublayer]]
name = "mid"
weight = 100
"#,
    );
    for i in 0..n {
        let sub = ["high", "mid", "default"][i % 3];
        let (b, c) = ((i / 250) % 250, i % 250);
        let body = match i % 5 {
            0 => format!("protocol = \"tcp\"\nremote_address = \"198.19.{b}.{c}\""),
            1 => format!(
                "remote_address = \"198.19.{b}.0/24\"\nremote_port = {}",
                1000 + i % 50_000
            ),
            2 => format!(
                "protocol = \"udp\"\nremote_port = \"{}-{}\"",
                2000 + i % 40_000,
                2010 + i % 40_000
            ),
            3 => format!("local_port = {}", 10_000 + i % 50_000),
            _ if i % 1000 == 4 => "protocol = \"gre\"".to_string(),
            _ => format!(
                "remote_address = \"198.19.{b}.{c}-198.19.{b}.{}\"",
                c.max(1) + 3
            ),
        };
        let action = if i % 2 == 0 { "block" } else { "permit" };
        t.push_str(&format!(
            "\n[[filter]]\nname = \"f{i}\"\nlayer = \"auth_connect\"\nsublayer = \"{sub}\"\nweight = {}\naction = \"{action}\"\n{body}\n",
            i % 7
        ));
    }
    t
}

fn compile(n: usize) -> (Config, Policy) {
    let registry = CalloutRegistry::default();
    let config = Config::parse(Path::new("bench.toml"), &policy_text(n), &registry)
        .unwrap_or_else(|e| panic!("bench policy: {e}"));
    let policy = Policy::compile(&config.policy, &registry, None).expect("compile");
    (config, policy)
}

fn request(i: u32) -> ClassifyRequest {
    let remote = raw_addr(std::net::IpAddr::from([
        198,
        19,
        (i % 40) as u8,
        (i % 250) as u8,
    ]))
    .1;
    ClassifyRequest {
        layer: Layer::AuthConnect,
        version: IpVersion::V4,
        protocol: if i % 2 == 0 { 6 } else { 17 },
        local_addr: raw_addr(std::net::IpAddr::from([198, 18, 1, 10])).1,
        remote_addr: remote,
        local_port: 40_000 + (i % 1000) as u16,
        remote_port: 443,
        icmp: None,
        arrival_port: Some(0),
        source: None,
        flags: ClassifyFlags::empty(),
        original: None,
        now: Instant::ZERO,
        flow_id: None,
        completed: None,
    }
}

fn new_flow_authorization(c: &mut Criterion) {
    let mut group = c.benchmark_group("authorize_new_flow");
    group
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    for n in [10usize, 1_000, 10_000] {
        let (_, policy) = compile(n);
        let requests: Vec<ClassifyRequest> = (0..4096).map(request).collect();
        let mut events = Vec::new();
        let mut i = 0;
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                i = (i + 1) % requests.len();
                events.clear();
                black_box(policy.classify(black_box(&requests[i]), &mut events))
            })
        });
    }
    group.finish();
}

fn udp(sport: u16) -> Vec<u8> {
    testkit::udp(ep("198.18.1.10", sport), ep("198.19.77.7", 443), &[0u8; 64])
}

fn established_flow(c: &mut Criterion) {
    let mut group = c.benchmark_group("established_udp_by_filter_count");
    group
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    for n in [10usize, 10_000] {
        let (config, policy) = compile(n);
        let policy: Arc<dyn Authorizer> = Arc::new(policy);
        let gw = Gateway::new(config.gateway_config(), policy, 1);
        let mut engine = gw.engine(0);
        let mut packets: Vec<Vec<u8>> = (0..256).map(|i| udp(30_000 + i)).collect();
        for p in &mut packets {
            let verdict = engine.process(Instant::ZERO, 0, p);
            assert_eq!(verdict, Verdict::Forward(1), "the flow must be permitted");
        }
        let mut i = 0;
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                i = (i + 1) % packets.len();
                black_box(engine.process(Instant::from_millis(1), 0, &mut packets[i]))
            })
        });
        assert_eq!(engine.stats().discards_total(), 0);
        engine.drain_events().for_each(drop);
    }
    group.finish();
}

criterion_group!(benches, new_flow_authorization, established_flow);
criterion_main!(benches);
