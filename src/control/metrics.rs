//! `[metrics] listen = "ADDR:PORT"` (SPEC §12): `GET /metrics` answers the
//! Prometheus text of `stats --prometheus` over HTTP/1.x. A deliberately
//! small server on one thread: one request per connection, the request
//! head read up to 8 KiB within 2 s, `Connection: close`; anything else
//! gets 404 or 405. It holds at most one connection at a time.

use super::ControlHandler;
use crate::render::prometheus::prometheus;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tracing::info;

/// The largest request head read.
const MAX_HEAD: usize = 8 * 1024;

/// The metrics listener, bound but not yet serving (start-up binds it
/// before it touches a device).
pub struct MetricsListener {
    listener: TcpListener,
    addr: SocketAddr,
}

/// The running metrics server.
pub struct MetricsServer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MetricsListener {
    /// Binds `addr`; the error names it.
    pub fn bind(addr: SocketAddr) -> std::io::Result<MetricsListener> {
        let listener = TcpListener::bind(addr)
            .map_err(|e| std::io::Error::new(e.kind(), format!("[metrics] listen {addr}: {e}")))?;
        listener.set_nonblocking(true)?;
        Ok(MetricsListener { listener, addr })
    }

    /// A listener handed over by the process a `tunwall upgrade` replaces
    /// (SPEC §13): the same socket, so the port is never closed.
    pub fn adopt(listener: TcpListener) -> std::io::Result<MetricsListener> {
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        Ok(MetricsListener { listener, addr })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A descriptor of the listening socket, to hand over at an upgrade.
    pub fn handover_fd(&self) -> std::io::Result<std::os::fd::OwnedFd> {
        Ok(self.listener.try_clone()?.into())
    }

    /// Serves `handler`'s counters on a thread of its own.
    pub fn serve(self, handler: Arc<dyn ControlHandler>) -> std::io::Result<MetricsServer> {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let MetricsListener { listener, addr } = self;
        info!(%addr, "metrics at http://{addr}/metrics");
        let thread = std::thread::Builder::new()
            .name("tunwall-metrics".into())
            .spawn(move || {
                super::accept_until(
                    &stop2,
                    "metrics",
                    || listener.accept().map(|(s, _)| s),
                    |stream| answer(stream, &*handler),
                    || true,
                );
            })?;
        Ok(MetricsServer {
            stop,
            thread: Some(thread),
        })
    }
}

impl MetricsServer {
    /// Stops serving.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn answer(mut stream: TcpStream, handler: &dyn ControlHandler) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_HEAD {
            return respond(&mut stream, "431 Request Header Fields Too Large", "", "");
        }
    }
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => {
            let body = prometheus(&handler.stats());
            let body = if method == "HEAD" { "" } else { body.as_str() };
            respond(
                &mut stream,
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                body,
            )
        }
        (_, "/metrics") => respond(&mut stream, "405 Method Not Allowed", "", ""),
        _ => respond(
            &mut stream,
            "404 Not Found",
            "text/plain",
            "tunwall serves /metrics\n",
        ),
    }
}

fn respond(stream: &mut TcpStream, status: &str, kind: &str, body: &str) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if !kind.is_empty() {
        head.push_str(&format!("Content-Type: {kind}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}
