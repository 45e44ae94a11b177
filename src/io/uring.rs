//! Batched TUN writes through io_uring (issue 15).
//!
//! A worker's writes used to be one `write(2)` each. Here the frames a loop
//! turn forwards are copied into a bounded set of slots and queued as
//! IORING_OP_WRITE entries; [`Writer::submit`] hands the whole turn's
//! writes to the kernel with one `io_uring_enter`. The TUN driver marks its
//! files FMODE_NOWAIT (since Linux 6.7), so each write runs inline during
//! that call, in submission order, exactly as the plain `write` would have
//! (delivery into the receiving namespace included): only the per-write
//! system call goes. Our queues are non-blocking, so a write the TUN could
//! not take completes with EAGAIN instead of being parked, and the wait for
//! the completions never blocks.
//!
//! Kernels before 6.4 did not mark TUN files FMODE_NOWAIT: io_uring would
//! punt every write to its worker threads, which may reorder them; there
//! the writer keeps plain writes.
//!
//! Frames larger than a slot (TCP superframes) are written directly, after
//! what is queued, so the order on a queue never changes. Without io_uring
//! (an old kernel, `kernel.io_uring_disabled`, a seccomp filter) or after the
//! ring fails, every frame is a plain `write`.

use super::Queue;
use io_uring::{IoUring, opcode, types};
use std::io;
use std::os::fd::AsRawFd;
use tracing::{debug, warn};

/// Writes queued before they must be submitted.
pub const SLOTS: usize = 128;
/// The largest frame copied into a slot: a full-MTU packet, or a UDP
/// superframe of small datagrams; larger frames are written directly.
pub const SLOT_BYTES: usize = 8 * 1024;

/// Whether the environment allows io_uring: `TUNWALL_IO_URING=off` keeps
/// one `write(2)` per frame (to compare, or where a kernel's io_uring
/// misbehaves).
pub fn allowed() -> bool {
    std::env::var_os("TUNWALL_IO_URING").is_none_or(|v| v != "off")
}

/// The write path of one worker.
pub struct Writer {
    /// `None`: plain writes.
    ring: Option<IoUring>,
    /// The queued frames, by slot (their addresses stay valid until the
    /// completions are reaped; a slot's capacity never exceeds SLOT_BYTES).
    slots: Vec<Vec<u8>>,
    /// Slots in use since the last submit.
    queued: usize,
}

impl Writer {
    /// A writer that batches through io_uring if `batched` and the kernel
    /// lets it, else writes each frame at once.
    pub fn new(batched: bool) -> Writer {
        let ring = if batched {
            match ring() {
                Ok(ring) => Some(ring),
                Err(e) => {
                    warn!(error = %e, "io_uring unavailable: one write per packet");
                    None
                }
            }
        } else {
            None
        };
        Writer {
            ring,
            slots: Vec::new(),
            queued: 0,
        }
    }

    /// Whether writes go through io_uring.
    pub fn batched(&self) -> bool {
        self.ring.is_some()
    }

    /// Writes `frame` to `queue`, now or at the next [`Writer::submit`].
    /// Failed writes are counted in `errors`.
    pub fn send(&mut self, queue: &Queue, frame: &[u8], errors: &mut u64) {
        if self.ring.is_none() || frame.len() > SLOT_BYTES {
            self.submit(errors);
            plain(queue, frame, errors);
            return;
        }
        if self.queued == SLOTS {
            self.submit(errors);
        }
        if self.slots.len() == self.queued {
            self.slots.push(Vec::with_capacity(SLOT_BYTES));
        }
        let slot = &mut self.slots[self.queued];
        slot.clear();
        slot.extend_from_slice(frame);
        let entry = opcode::Write::new(
            types::Fd(queue.as_raw_fd()),
            slot.as_ptr(),
            slot.len() as u32,
        )
        .build()
        .user_data(self.queued as u64);
        let Some(ring) = self.ring.as_mut() else {
            return;
        };
        // SAFETY: the slot's buffer is neither freed nor changed until the
        // completion of this entry is reaped (`submit` waits for all of
        // them before a slot is reused), and the queue's descriptor is open
        // for as long as the worker holds its queues.
        #[allow(unsafe_code)]
        let pushed = unsafe { ring.submission().push(&entry) };
        match pushed {
            Ok(()) => self.queued += 1,
            // The submission queue has SLOTS entries: never full here.
            Err(_) => plain(queue, frame, errors),
        }
    }

    /// Hands the queued writes to the kernel and reaps their completions.
    pub fn submit(&mut self, errors: &mut u64) {
        if self.queued == 0 {
            return;
        }
        let Some(ring) = self.ring.as_mut() else {
            return;
        };
        let want = self.queued;
        let result = loop {
            match ring.submit_and_wait(want) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        let mut done = 0;
        for cqe in ring.completion() {
            done += 1;
            if cqe.result() < 0 {
                *errors += 1;
                let e = io::Error::from_raw_os_error(-cqe.result());
                debug!(slot = cqe.user_data(), error = %e, "write");
            }
        }
        self.queued = 0;
        if let Err(e) = result {
            // The ring itself failed: what did not complete is lost, and
            // from now on each frame is written at once. Dropping the ring
            // cancels what it still holds; the slots stay allocated.
            *errors += want.saturating_sub(done) as u64;
            warn!(error = %e, "io_uring submit failed: one write per packet from now on");
            self.ring = None;
        }
    }
}

/// Linux 6.4 marks TUN files FMODE_NOWAIT. Before, io_uring hands every TUN
/// write to its worker threads, which may run them out of order.
const INLINE_TUN_WRITES: (u32, u32) = (6, 4);

/// A ring for SLOTS writes, submitted all at once even if one fails early,
/// on a kernel that runs TUN writes inline. Not single-issuer: the worker is
/// built on one thread and runs on another.
fn ring() -> io::Result<IoUring> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    if !release_at_least(&release, INLINE_TUN_WRITES) {
        return Err(io::Error::other(format!(
            "kernel {} runs TUN writes through io_uring's worker threads (before 6.4)",
            release.trim()
        )));
    }
    IoUring::builder().setup_submit_all().build(SLOTS as u32)
}

/// Whether a kernel release string ("6.18.0-1-amd64") is at least `min`.
fn release_at_least(release: &str, min: (u32, u32)) -> bool {
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(str::parse::<u32>);
    match (parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => (major, minor) >= min,
        _ => false,
    }
}

/// One plain write.
fn plain(queue: &Queue, frame: &[u8], errors: &mut u64) {
    if let Err(e) = queue.send(frame) {
        *errors += 1;
        debug!(error = %e, "write");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixDatagram;

    /// A queue whose writes arrive, datagram by datagram, at the returned socket.
    fn queue() -> (Queue, UnixDatagram) {
        let (ours, peer) = UnixDatagram::pair().unwrap();
        peer.set_nonblocking(true).unwrap();
        (Queue::from(OwnedFd::from(ours)), peer)
    }

    /// Everything waiting at `peer`.
    fn received(peer: &UnixDatagram) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 2 * SLOT_BYTES];
        while let Ok(n) = peer.recv(&mut buf) {
            out.push(buf[..n].to_vec());
        }
        out
    }

    /// Frames of varied sizes, one of them too large for a slot.
    fn frames(count: usize) -> Vec<Vec<u8>> {
        (0..count)
            .map(|i| {
                let len = if i == count / 2 {
                    SLOT_BYTES + 1
                } else {
                    60 + i % 1400
                };
                (0..len).map(|b| (b + i) as u8).collect()
            })
            .collect()
    }

    #[test]
    fn batched_writes_leave_at_submit_in_order_and_intact() {
        let mut w = Writer::new(true);
        assert!(w.batched(), "io_uring is available on the test machines");
        let (q, peer) = queue();
        let mut errors = 0;
        w.send(&q, b"first", &mut errors);
        w.send(&q, b"second", &mut errors);
        assert!(received(&peer).is_empty(), "queued until the submit");
        w.submit(&mut errors);
        assert_eq!(received(&peer), vec![b"first".to_vec(), b"second".to_vec()]);
        // More than the slots hold, with a frame written directly between.
        let sent = frames(SLOTS + SLOTS / 2 + 3);
        let mut got = Vec::new();
        for (i, f) in sent.iter().enumerate() {
            w.send(&q, f, &mut errors);
            // The socket buffer holds a few hundred datagrams only.
            if i % 100 == 99 {
                got.extend(received(&peer));
            }
        }
        w.submit(&mut errors);
        got.extend(received(&peer));
        assert_eq!(errors, 0);
        assert_eq!(got.len(), sent.len());
        assert!(got == sent, "the frames arrive as sent, in order");
    }

    #[test]
    fn only_kernels_that_write_tun_inline_get_a_ring() {
        for (release, ok) in [
            ("6.18.0-1-amd64\n", true),
            ("6.4.0", true),
            ("7.0-rc1", true),
            ("6.3.13-arch1", false),
            ("5.15.0-91-generic", false),
            ("", false),
            ("garbage", false),
        ] {
            assert_eq!(
                release_at_least(release, INLINE_TUN_WRITES),
                ok,
                "{release}"
            );
        }
    }

    #[test]
    fn plain_writes_leave_at_once() {
        let mut w = Writer::new(false);
        assert!(!w.batched());
        let (q, peer) = queue();
        let mut errors = 0;
        for f in frames(10) {
            w.send(&q, &f, &mut errors);
            assert_eq!(received(&peer), vec![f]);
        }
        w.submit(&mut errors);
        assert_eq!(errors, 0);
    }

    #[test]
    fn failed_writes_are_counted_in_both_modes() {
        for batched in [true, false] {
            let mut w = Writer::new(batched);
            let (q, peer) = queue();
            drop(peer);
            let mut errors = 0;
            for f in frames(5) {
                w.send(&q, &f, &mut errors);
            }
            w.submit(&mut errors);
            assert_eq!(errors, 5, "batched {batched}");
            // The writer still works afterwards.
            let (q, peer) = queue();
            w.send(&q, b"after", &mut errors);
            w.submit(&mut errors);
            assert_eq!(received(&peer), vec![b"after".to_vec()]);
            assert_eq!(w.batched(), batched);
        }
    }
}
