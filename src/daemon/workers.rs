//! The worker threads of a running gateway: one per queue set, each with a
//! watch that stops the whole gateway if it dies.

use crate::control::queue::EventSender;
use crate::engine::Gateway;
use crate::io::Port;
use crate::io::capture::CaptureTap;
use crate::io::worker::{Clock, Worker, WorkerHandle};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing::{error, warn};

/// Notices a worker thread that ends other than by shutdown (an error or a
/// panic) and stops the whole gateway: a gateway missing a worker would
/// silently drop the flows steered to its queues.
struct WorkerWatch {
    worker: usize,
    failed: Arc<AtomicBool>,
    done: bool,
}

impl Drop for WorkerWatch {
    fn drop(&mut self) {
        if !self.done {
            error!(worker = self.worker, "worker died; stopping the gateway");
            self.failed.store(true, Ordering::Relaxed);
            let _ = signal_hook::low_level::raise(signal_hook::consts::SIGTERM);
        }
    }
}

/// Starts one worker thread per queue set of `ports`, each with the
/// gateway's engine of its index. `failed` is set if one dies.
pub(super) fn spawn(
    gateway: &Arc<Gateway>,
    ports: &[Port],
    workers: usize,
    events: &EventSender,
    clock: Clock,
    tap: &Arc<CaptureTap>,
    failed: &Arc<AtomicBool>,
) -> anyhow::Result<Vec<WorkerHandle>> {
    let offload = crate::io::Offload::of(ports);
    let queues_by_worker = crate::io::queues_by_worker(ports, workers)?;
    let mut handles = Vec::new();
    for (i, queues) in queues_by_worker.into_iter().enumerate() {
        let (poll, waker) = Worker::poll_and_waker()?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let engine = gateway.engine(i);
        let wake = Arc::clone(&waker);
        gateway.set_waker(i, move || {
            if let Err(e) = wake.wake() {
                warn!(error = %e, "waking a worker");
            }
        });
        let worker = Worker::new(engine, queues, poll, rx, events.clone(), clock, offload)
            .with_capture(Arc::clone(tap));
        let watch = WorkerWatch {
            worker: i,
            failed: Arc::clone(failed),
            done: false,
        };
        let thread = std::thread::Builder::new()
            .name(format!("tunwall-worker-{i}"))
            .spawn(move || {
                let mut watch = watch;
                match worker.run() {
                    Ok(()) => watch.done = true,
                    Err(e) => error!(worker = i, error = %e, "worker stopped"),
                }
            })?;
        handles.push(WorkerHandle {
            control: tx,
            waker,
            thread: Some(thread),
        });
    }
    Ok(handles)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_that_dies_stops_the_gateway_and_one_that_finishes_does_not() {
        // The gateway's main thread waits for SIGTERM; here a flag stands in.
        let term = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(signal_hook::consts::SIGTERM, Arc::clone(&term))
            .expect("SIGTERM handler");
        let failed = Arc::new(AtomicBool::new(false));
        let finishing = WorkerWatch {
            worker: 0,
            failed: Arc::clone(&failed),
            done: true,
        };
        drop(finishing);
        assert!(!failed.load(Ordering::Relaxed) && !term.load(Ordering::Relaxed));
        let dying = WorkerWatch {
            worker: 1,
            failed: Arc::clone(&failed),
            done: false,
        };
        let worker = std::thread::spawn(move || {
            let _watch = dying;
            panic!("a bug in a worker");
        });
        assert!(worker.join().is_err());
        assert!(failed.load(Ordering::Relaxed), "the gateway exits 1");
        assert!(term.load(Ordering::Relaxed), "the gateway is asked to stop");
    }
}
