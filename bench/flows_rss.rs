//! Peak memory of the daemon while it lists 1 000 000 flows (SPEC §12:
//! the listing is streamed). In-process, through the real control server:
//! a gateway is filled with 1 M UDP flows through its engine, a control
//! socket serves it, and a client reads `flows --json` from the socket and
//! throws the bytes away. The process's peak RSS (VmHWM, reset just before
//! the request through /proc/self/clear_refs) is printed above the RSS
//! held before the request, for two handlers:
//!
//! * `before`: the listing as main answered it until the streamed one: every
//!   flow snapshotted, turned into one JSON array value, then written;
//! * `after`: [`write_flows`], shard by shard through a bounded buffer.
//!
//! Each runs in a process of its own (this program re-runs itself), so
//! memory the allocator kept from one does not hide the other's peak.
//! Run with `cargo bench --bench flows_rss`.

use serde_json::{Value, json};
use std::io::{Read, Write};
use std::sync::Arc;
use tunwall::control::flows::{Listing, write_flows};
use tunwall::control::{ControlHandler, ControlServer};
use tunwall::engine::{Gateway, GatewayConfig, HostModel, Verdict};
use tunwall::flow::{FlowConfig, Zone};
use tunwall::policy::DefaultPolicy;
use tunwall::route::PortSpec;
use tunwall::testkit::{self, Ep};
use tunwall::time::Instant;

const FLOWS: usize = 1_000_000;

struct Handler {
    gw: Arc<Gateway>,
    streamed: bool,
}

impl ControlHandler for Handler {
    fn flows(&self, request: &Value, out: &mut dyn Write) -> std::io::Result<()> {
        let now = Instant::ZERO;
        if self.streamed {
            let listing = Listing::of_request(request, Default::default());
            return write_flows(&self.gw, now, &listing, out).map(|_| ());
        }
        let ports = self.gw.port_names();
        let all = Value::Array(
            self.gw
                .flows(now)
                .iter()
                .map(|f| tunwall::render::json::flow(f, &ports, now))
                .collect(),
        );
        writeln!(out, "{all}")
    }
    fn kill(&self, _: &Value) -> Value {
        json!({})
    }
    fn stats(&self) -> Value {
        json!({})
    }
    fn reload(&self) -> Value {
        json!({})
    }
    fn subscribe(&self, _: std::os::unix::net::UnixStream) {}
    fn capture(&self, _: std::os::unix::net::UnixStream, _: &Value) {}
    fn decide(&self, _: u64, _: tunwall::policy::Action) -> Value {
        json!({})
    }
    fn pending(&self) -> Value {
        json!([])
    }
}

fn status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn measure(streamed: bool) {
    let mut flows = FlowConfig::with_max_flows(FLOWS);
    flows.adaptive_start = FLOWS * 2;
    flows.adaptive_end = FLOWS * 3;
    let gw = Gateway::new(
        GatewayConfig {
            ports: vec![
                PortSpec::new("lan", Zone::Inside, &["198.18.0.0/16"]),
                PortSpec::new("wan", Zone::Outside, &["0.0.0.0/0"]),
            ],
            flows,
            host_model: HostModel::Weak,
            shards: None,
        },
        Arc::new(DefaultPolicy::default()),
        1,
    );
    let mut engine = gw.engine(0);
    for i in 0..FLOWS {
        let mut p = testkit::udp(
            Ep(
                [198, 18, (i >> 16) as u8, (i >> 8) as u8].into(),
                1024 + (i & 0xff) as u16,
            ),
            Ep([198, 19, 0, 1].into(), 53),
            b"0123456789abcdef",
        );
        assert_eq!(
            engine.process(Instant::ZERO, 0, &mut p),
            Verdict::Forward(1)
        );
        if i % 4096 == 0 {
            engine.drain_events().for_each(drop);
        }
    }
    engine.drain_events().for_each(drop);
    assert_eq!(gw.flows_active(), FLOWS);

    let dir = std::env::temp_dir().join(format!("tunwall-rss-{}", std::process::id()));
    let socket = dir.join("control.sock");
    let server = ControlServer::start(
        &socket,
        None,
        Arc::new(Handler {
            gw: Arc::clone(&gw),
            streamed,
        }),
    )
    .expect("control socket");
    let held = status_kb("VmRSS:");
    std::fs::write("/proc/self/clear_refs", "5").expect("reset VmHWM");
    let mut stream = tunwall::control::connect(&socket).expect("connect");
    writeln!(stream, "{}", json!({"command": "flows"})).expect("request");
    let mut buf = vec![0u8; 64 * 1024];
    let mut bytes = 0u64;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => bytes += n as u64,
            Err(e) => panic!("read: {e}"),
        }
    }
    let peak = status_kb("VmHWM:");
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "{:<8} {FLOWS} flows, {:.0} MiB of JSON: RSS before the request {:.0} MiB, peak {:.0} MiB, peak above it {:.1} MiB",
        if streamed { "after" } else { "before" },
        bytes as f64 / 1048576.0,
        held as f64 / 1024.0,
        peak as f64 / 1024.0,
        peak.saturating_sub(held) as f64 / 1024.0,
    );
}

fn main() {
    match std::env::var("TUNWALL_RSS_MODE").as_deref() {
        Ok("before") => measure(false),
        Ok("after") => measure(true),
        _ if !std::env::args().any(|a| a == "--bench") => {
            // `cargo test --all-targets` runs benches without --bench: too big for a test.
            println!("flows_rss: run with cargo bench --bench flows_rss");
        }
        _ => {
            let me = std::env::current_exe().expect("current exe");
            for mode in ["before", "after"] {
                let status = std::process::Command::new(&me)
                    .env("TUNWALL_RSS_MODE", mode)
                    .status()
                    .expect("run");
                assert!(status.success(), "{mode} failed");
            }
        }
    }
}
