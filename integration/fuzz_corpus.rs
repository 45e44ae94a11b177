//! Replays the fuzz corpus (`fuzz/corpus/<target>/`) and every past crash
//! (`fuzz/regressions/<target>/`) through the fuzz harnesses, so that
//! `cargo test` checks them on a machine without cargo-fuzz. The harnesses
//! are `fuzz/src/lib.rs`, included here as a module: the libFuzzer targets
//! and this test run the same code. See docs/fuzzing.md.
//!
//! `cargo test --test fuzz_corpus -- --ignored write_seeds` rewrites the
//! hand-made seeds (`seed-*`) of the corpus from the packet builders of
//! `integration/common`, and the hand-made regression inputs; they are in
//! `fuzz_corpus/seeds.rs`, and this file keeps the replay and the checks
//! of the harness's own input encoding.

#[path = "../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod harness;

mod common;
#[path = "fuzz_corpus/seeds.rs"]
mod seeds;

use common::*;
use harness::{Op, Options, encode_engine};
use std::cell::RefCell;
use std::io::Write;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Once;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The input files of `fuzz/<kind>/<target>/` (hidden files and README
/// excluded), sorted; `None` if the directory does not exist.
fn inputs(kind: &str, target: &str) -> Option<Vec<PathBuf>> {
    let dir = fuzz_dir().join(kind).join(target);
    let entries = std::fs::read_dir(&dir).ok()?;
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("read_dir entry").path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            p.is_file() && !name.starts_with('.') && !name.starts_with("README")
        })
        .collect();
    files.sort();
    Some(files)
}

thread_local! {
    /// The file being replayed on this thread, for the panic hook.
    static CURRENT: RefCell<Option<PathBuf>> = const { RefCell::new(None) };
}

/// A panic hook that names the input being replayed, written straight to
/// stderr: a panic that aborts (an unsafe-precondition check, a panic in a
/// destructor) loses the test harness's captured output.
fn install_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if let Some(path) = CURRENT.with(|c| c.borrow().clone()) {
                let _ = writeln!(std::io::stderr(), "fuzz input {}: {info}", path.display());
            }
            default(info);
        }));
    });
}

/// Runs one input through the harness of `target`.
fn run(target: &str, data: &[u8]) {
    match target {
        "parse" => harness::parse(data),
        "engine" => harness::engine(data),
        "config" => harness::config(data),
        "state" => harness::state(data),
        "sync" => harness::sync(data),
        other => panic!("no fuzz target {other}"),
    }
}

/// The corpus: every file of `fuzz/corpus/<target>/` in this process.
/// The directory must exist and hold inputs.
fn replay_corpus(target: &str) {
    install_hook();
    let files =
        inputs("corpus", target).unwrap_or_else(|| panic!("fuzz/corpus/{target}/ is missing"));
    assert!(!files.is_empty(), "fuzz/corpus/{target}/ is empty");
    let mut failed = Vec::new();
    for path in &files {
        let data = std::fs::read(path).expect("read input");
        CURRENT.with(|c| *c.borrow_mut() = Some(path.clone()));
        if panic::catch_unwind(AssertUnwindSafe(|| run(target, &data))).is_err() {
            failed.push(path.display().to_string());
        }
        CURRENT.with(|c| *c.borrow_mut() = None);
    }
    assert!(
        failed.is_empty(),
        "{} of {} inputs of fuzz/corpus/{target}/ panicked:\n{}",
        failed.len(),
        files.len(),
        failed.join("\n")
    );
}

/// Set in a child process of [`replay_regressions`]: `target:path` of the
/// one input [`replay_one`] runs.
const REPLAY_ONE: &str = "TUNWALL_FUZZ_REPLAY_ONE";

/// Past crashes: every file of `fuzz/regressions/<target>/`, each in a
/// child process (this test binary running [`replay_one`]), so that an
/// input that aborts the process fails as itself. The directory must
/// exist; it may be empty.
fn replay_regressions(target: &str) {
    let files = inputs("regressions", target)
        .unwrap_or_else(|| panic!("fuzz/regressions/{target}/ is missing"));
    let exe = std::env::current_exe().expect("test binary");
    let mut failed = Vec::new();
    for path in &files {
        let out = std::process::Command::new(&exe)
            .args(["--exact", "replay_one", "--nocapture", "--test-threads=1"])
            .env(REPLAY_ONE, format!("{target}:{}", path.display()))
            .env("RUST_BACKTRACE", "0")
            .output()
            .expect("run the test binary");
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let why: Vec<&str> = stderr
                .lines()
                .filter(|l| !l.trim().is_empty() && !l.starts_with("note:"))
                .take(4)
                .collect();
            failed.push(format!(
                "{} ({}):\n    {}",
                path.display(),
                out.status,
                why.join("\n    ")
            ));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} past crashes of fuzz/regressions/{target}/ still fail:\n{}",
        failed.len(),
        files.len(),
        failed.join("\n")
    );
}

/// Runs the input named by [`REPLAY_ONE`]; does nothing without it.
#[test]
fn replay_one() {
    let Ok(spec) = std::env::var(REPLAY_ONE) else {
        return;
    };
    let (target, path) = spec.split_once(':').expect("target:path");
    install_hook();
    let path = PathBuf::from(path);
    let data = std::fs::read(&path).expect("read input");
    CURRENT.with(|c| *c.borrow_mut() = Some(path));
    run(target, &data);
}

#[test]
fn corpus_parse() {
    replay_corpus("parse");
}

#[test]
fn corpus_engine() {
    replay_corpus("engine");
}

#[test]
fn corpus_config() {
    replay_corpus("config");
}

#[test]
fn corpus_state() {
    replay_corpus("state");
}

#[test]
fn regressions_state() {
    replay_regressions("state");
}

#[test]
fn corpus_sync() {
    replay_corpus("sync");
}

#[test]
fn regressions_parse() {
    replay_regressions("parse");
}

#[test]
fn regressions_engine() {
    replay_regressions("engine");
}

#[test]
fn regressions_config() {
    replay_regressions("config");
}

/// The engine inputs round-trip through their encoding (the seeds below rely on it).
#[test]
fn engine_encoding_round_trips() {
    let options = Options {
        strong: true,
        loose_pickup: true,
        no_window_tracking: false,
        two_workers: true,
        shards: 3,
        policy: 2,
        max_flows: 17,
        sweep_budget: 5,
    };
    let ops = vec![
        Op::Packet {
            port: 2,
            worker: true,
            bytes: udp(ep(C4, 1), ep(S4, 2), b"x"),
        },
        Op::Derive {
            back: 1,
            port: 0,
            worker: false,
            reply: true,
            tcp_flags: SYN | ACK,
        },
        Op::Advance {
            unit: 3,
            amount: 65535,
        },
        Op::Timeout { worker: true },
        Op::Reload {
            permit_inbound: true,
        },
        Op::CloseOwned { worker: false },
    ];
    assert_eq!(
        harness::decode_engine(&encode_engine(&options, &ops)),
        (options, ops)
    );
}

/// Ports of the fuzzed gateway (`harness::ports`).
const F_LAN: u8 = 0;
const F_LAN2: u8 = 1;
const F_WAN: u8 = 2;
const F_WAN2: u8 = 3;

/// `Op::Derive` holds a real TCP conversation: a SYN, its reply (SYN+ACK)
/// and the reply's reply (ACK) establish the flow; a follow-up with data
/// and the answers to it stay in the window; FINs both ways and the last
/// ACK close it.
#[test]
fn derived_packets_hold_a_tcp_conversation() {
    use tunwall::engine::Verdict;
    use tunwall::event::EventKind;
    use tunwall::time::Instant;

    let options = Options {
        shards: 1,
        max_flows: 4,
        ..Options::default()
    };
    let (_gw, mut engines) = harness::gateway(&options);
    let engine = &mut engines[0];
    let mut last = TcpConn::new(ep(C4, 40000), ep(S4, 443)).syn();
    let mut send = |port: u8, bytes: &[u8]| {
        let mut copy = bytes.to_vec();
        engine.process(Instant::ZERO, port, &mut copy)
    };
    assert_eq!(send(F_LAN, &last), Verdict::Forward(F_WAN));
    let steps: [(u8, bool, u8, u8); 7] = [
        (F_WAN, true, SYN | ACK, F_LAN),
        (F_LAN, true, ACK, F_WAN),
        (F_LAN, false, ACK | 0x08, F_WAN), // data follows (same length as the ACK: none)
        (F_WAN, true, ACK, F_LAN),
        (F_WAN, false, FIN | ACK, F_LAN),
        (F_LAN, true, FIN | ACK, F_WAN),
        (F_WAN, true, ACK, F_LAN),
    ];
    for (port, reply, flags, egress) in steps {
        harness::derive(&mut last, reply, flags);
        assert_eq!(
            send(port, &last),
            Verdict::Forward(egress),
            "derived packet (reply {reply}, flags {flags:#x}) dropped"
        );
    }
    let events: Vec<_> = engine.drain_events().map(|e| e.kind).collect();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, EventKind::FlowEstablished(_))),
        "no flow_established in {events:#?}"
    );
}
