//! `tunwall-copy`: a plain TUN-to-TUN copy over exactly tunwall's I/O path
//! (same ports, queues, workers, batching and offload mode) with no engine:
//! every packet read on one port is written to the other. Comparing tunwall
//! with it isolates the cost of the firewall. Used by bench/throughput.py.
//!
//! Usage: `tunwall-copy CONFIG.toml` (a tunwall config with two ports);
//! runs until SIGINT or SIGTERM.

use std::sync::Arc;
use tunwall::config::Config;
use tunwall::engine::Verdict;
use tunwall::io::worker::{Clock, Control, Processor, Worker, WorkerHandle};
use tunwall::policy::CalloutRegistry;
use tunwall::time::Instant;

struct Copy;

impl Processor for Copy {
    fn process(&mut self, _now: Instant, port: u8, _packet: &mut [u8]) -> Verdict {
        Verdict::Forward(1 - port)
    }
}

fn main() -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: tunwall-copy CONFIG.toml"))?;
    let config = Config::load(path.as_ref(), &CalloutRegistry::default())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    anyhow::ensure!(
        config.ports.len() == 2,
        "tunwall-copy needs exactly two ports"
    );
    let workers = config.gateway.workers.count();
    let signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])?;
    let ports = tunwall::io::open_ports(&config.ports, workers, config.gateway.offload, false)?;
    let offload = tunwall::io::Offload::of(&ports);
    let by_worker = tunwall::io::queues_by_worker(&ports, workers)?;
    let clock = Clock::start();
    let (events, _events_rx) = tunwall::control::queue::event_queue(1);
    let mut handles = Vec::new();
    for queues in by_worker {
        let (poll, waker) = Worker::poll_and_waker()?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let worker = Worker::new(Copy, queues, poll, rx, events.clone(), clock, offload);
        let thread = std::thread::spawn(move || {
            if let Err(e) = worker.run() {
                eprintln!("tunwall-copy: worker: {e}");
            }
        });
        handles.push(WorkerHandle {
            control: tx,
            waker: Arc::clone(&waker),
            thread: Some(thread),
        });
    }
    eprintln!("tunwall-copy: running, {workers} workers, offload {offload:?}");
    let mut signals = signals;
    let _ = signals.forever().next();
    for h in &handles {
        h.send(Control::Shutdown);
    }
    for mut h in handles {
        if let Some(t) = h.thread.take() {
            let _ = t.join();
        }
    }
    for port in ports {
        port.close();
    }
    Ok(())
}
