//! `tunwall-connrate`: complete TCP connections per second, for
//! bench/throughput.py (mode `connrate`).
//!
//! * `tunwall-connrate server ADDR:PORT [THREADS]` accepts, reads a request,
//!   answers 64 bytes and closes first (so TIME_WAIT stays on the server and
//!   the client's ports are free again at once); runs until killed.
//! * `tunwall-connrate client ADDR:PORT SECONDS [THREADS]`: every thread
//!   connects, sends a 32-byte request, reads the whole answer up to the
//!   server's FIN and closes, again and again; prints one JSON line with the
//!   connections completed, the failures and the rate.
//!
//! Blocking threads, one connection each at a time: on a small machine the
//! kernel's connect/accept dominate, not the generator.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const REQUEST: [u8; 32] = [b'r'; 32];
const RESPONSE: [u8; 64] = [b'a'; 64];

fn serve(listener: &TcpListener) {
    let mut buf = [0u8; 256];
    loop {
        let Ok((mut s, _)) = listener.accept() else {
            continue;
        };
        let mut got = 0;
        while got < REQUEST.len() {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        if got == REQUEST.len() {
            let _ = s.write_all(&RESPONSE);
        }
    }
}

/// One complete connection: connect, request, the whole answer, the FIN.
fn exchange(addr: SocketAddr) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_nodelay(true)?;
    s.write_all(&REQUEST)?;
    let mut answer = Vec::with_capacity(RESPONSE.len());
    s.read_to_end(&mut answer)?;
    if answer.len() != RESPONSE.len() {
        return Err(std::io::Error::other("short answer"));
    }
    Ok(())
}

fn client(addr: SocketAddr, seconds: f64, threads: usize) {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (stop, done, failed) = (stop.clone(), done.clone(), failed.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match exchange(addr) {
                        Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    for h in handles {
        let _ = h.join();
    }
    let n = done.load(Ordering::Relaxed);
    println!(
        "{{\"connections\": {n}, \"failed\": {}, \"seconds\": {elapsed:.3}, \"rate\": {:.1}}}",
        failed.load(Ordering::Relaxed),
        n as f64 / elapsed
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage =
        "usage: tunwall-connrate server ADDR:PORT [THREADS] | client ADDR:PORT SECONDS [THREADS]";
    let parsed = || -> Option<()> {
        let addr: SocketAddr = args.get(2)?.parse().ok()?;
        match args.get(1)?.as_str() {
            "server" => {
                let threads = args.get(3).map_or(Some(4), |t| t.parse().ok())?;
                let listener = Arc::new(TcpListener::bind(addr).ok()?);
                let workers: Vec<_> = (0..threads)
                    .map(|_| {
                        let l = listener.clone();
                        std::thread::spawn(move || serve(&l))
                    })
                    .collect();
                for w in workers {
                    let _ = w.join();
                }
                Some(())
            }
            "client" => {
                let seconds: f64 = args.get(3)?.parse().ok()?;
                let threads = args.get(4).map_or(Some(16), |t| t.parse().ok())?;
                client(addr, seconds, threads);
                Some(())
            }
            _ => None,
        }
    };
    if parsed().is_none() {
        eprintln!("{usage}");
        std::process::exit(2);
    }
}
