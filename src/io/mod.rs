//! The I/O shell: network namespaces, TUN ports and their queues.
//!
//! tun-rs has no namespace support, and a TUN device is created in the
//! namespace of the thread that opens `/dev/net/tun`. So a port that lives in
//! a namespace is opened on a short-lived thread that first calls `setns`;
//! the file descriptors work from any thread afterwards. Addresses, MTU,
//! txqueuelen and kernel routes are set over netlink ([`netlink`]) from such
//! a thread too.

pub mod capture;
pub mod clock;
pub mod coalesce;
pub mod netlink;
pub mod notify;
pub mod processor;
pub mod uring;
pub mod worker;

use crate::config::PortConfig;
use ipnet::IpNet;
use netlink::Link;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use tracing::{info, warn};
use tun_rs::DeviceBuilder;

/// One TUN queue: a plain file descriptor (read one packet, write one
/// packet), so that a queue handed over from another process (SPEC §13)
/// is the same thing as one opened here.
pub struct Queue(File);

impl Queue {
    /// Reads one packet.
    #[inline]
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.0).read(buf)
    }

    /// Writes one packet.
    #[inline]
    pub fn send(&self, buf: &[u8]) -> io::Result<usize> {
        (&self.0).write(buf)
    }
}

impl From<OwnedFd> for Queue {
    fn from(fd: OwnedFd) -> Queue {
        Queue(File::from(fd))
    }
}

impl AsFd for Queue {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl AsRawFd for Queue {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// The txqueuelen tunwall sets on its devices: the default 500 overflows
/// under a single TCP stream at TUN speed and costs retransmissions.
pub const TX_QUEUE_LEN: u32 = 10_000;

/// Runs `f` on a thread that has entered network namespace `netns`
/// (`/run/netns/NAME`), or on a plain thread when `netns` is `None`.
pub fn in_netns<T: Send + 'static>(
    netns: Option<&str>,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let path = netns.map(|ns| format!("/run/netns/{ns}"));
    std::thread::spawn(move || {
        if let Some(path) = path {
            let file = std::fs::File::open(&path)
                .map_err(|e| io::Error::new(e.kind(), format!("network namespace {path}: {e}")))?;
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| io::Error::other(format!("entering network namespace {path}: {e}")))?;
        }
        f()
    })
    .join()
    .unwrap_or_else(|_| Err(io::Error::other("network namespace thread panicked")))
}

/// What tunwall added to a device it did not create, to take away at exit.
#[derive(Clone, Copy)]
enum Added {
    Address(IpNet),
    Route(IpNet),
}

/// Takes away, newest first, what tunwall added to a device.
fn undo(link: &mut Link, added: Vec<Added>) {
    for item in added.into_iter().rev() {
        let result = match item {
            Added::Address(a) => link.delete_address(a),
            Added::Route(r) => link.delete_route(r),
        };
        if let Err(e) = result {
            warn!(error = %e, "cleanup");
        }
    }
}

/// An open port: one TUN queue per worker.
pub struct Port {
    /// The port's configuration.
    pub config: PortConfig,
    /// Queue `i` belongs to worker `i`.
    pub queues: Vec<Queue>,
    /// Whether tunwall created the device (it disappears when the last queue
    /// closes, unless it is persistent).
    pub created: bool,
    /// Whether tunwall made the device persistent (`state_file`: it outlives
    /// a clean stop, SPEC §13); [`Port::close`] deletes it.
    pub persistent: bool,
    /// Whether the queues carry a virtio-net header (offload on): reads
    /// return GSO superframes behind it, and writes must carry one.
    pub vnet_hdr: bool,
    /// Whether the kernel also took UDP segmentation offload (TUN_F_USO4/6,
    /// Linux 6.2+): a sender's UDP_SEGMENT superframes then reach tunwall
    /// whole (virtio gso_type UDP_L4) and are classified once, like TCP's.
    /// Without it the sender's kernel splits them before the device.
    pub udp_gso: bool,
    /// Addresses and routes tunwall added to a device it did not create,
    /// removed again at shutdown.
    added: Vec<Added>,
}

impl Port {
    /// Opens (creating if absent) the port's device with `queues` queues
    /// and configures it. With `offload`, the device is asked for the virtio
    /// header with TSO/USO and checksum offload; [`Port::vnet_hdr`] says
    /// whether the kernel granted it. With `persist`, a device tunwall
    /// creates is made persistent.
    pub fn open(
        config: &PortConfig,
        queues: usize,
        offload: bool,
        persist: bool,
    ) -> io::Result<Port> {
        let device = config.device.clone();
        let netns = config.netns.clone();
        let (devices, created, vnet_hdr, udp_gso) = in_netns(netns.as_deref(), move || {
            let existed = nix::net::if_::if_nametoindex(device.as_str()).is_ok();
            let first = DeviceBuilder::new()
                .name(&device)
                .multi_queue(true)
                .packet_information(false)
                .offload(offload)
                .inherit_enable_state()
                .build_sync()
                .map_err(|e| {
                    // The kernel's EINVAL/EBUSY alone do not tell the operator
                    // that the name is taken.
                    let hint = match e.raw_os_error() {
                        Some(nix::libc::EINVAL) if existed => {
                            " (a device of this name exists and is not a multi-queue TUN device: remove it or choose another name)"
                        }
                        Some(nix::libc::EBUSY) => {
                            " (the device is in use by another process, e.g. another tunwall)"
                        }
                        _ => "",
                    };
                    io::Error::new(e.kind(), format!("opening TUN device {device}: {e}{hint}"))
                })?;
            let mut devices = Vec::with_capacity(queues);
            for _ in 1..queues {
                devices.push(first.try_clone().map_err(|e| {
                    io::Error::new(e.kind(), format!("opening another queue of {device}: {e}"))
                })?);
            }
            devices.insert(0, first);
            for d in &devices {
                d.set_nonblocking(true)?;
            }
            let vnet_hdr = offload && devices[0].tcp_gso();
            // tun-rs asks for USO after TSO and keeps TSO alone when the
            // kernel refuses it (TUNSETOFFLOAD EINVAL before 6.2).
            let udp_gso = vnet_hdr && devices[0].udp_gso();
            if persist && !existed {
                devices[0].persist().map_err(|e| {
                    io::Error::new(e.kind(), format!("making {device} persistent: {e}"))
                })?;
            }
            // The queues continue as plain descriptors (the same open files).
            let queues = devices
                .iter()
                .map(|d| d.as_fd().try_clone_to_owned().map(Queue::from))
                .collect::<io::Result<Vec<Queue>>>()?;
            Ok((queues, !existed, vnet_hdr, udp_gso))
        })?;
        let mut port = Port {
            config: config.clone(),
            queues: devices,
            created,
            persistent: persist && created,
            vnet_hdr,
            udp_gso,
            added: Vec::new(),
        };
        port.configure()?;
        info!(
            port = %config.name,
            device = %config.device,
            netns = config.netns.as_deref().unwrap_or("-"),
            queues,
            created,
            offload = vnet_hdr,
            udp_offload = udp_gso,
            "port open"
        );
        if vnet_hdr && !udp_gso {
            warn!(
                port = %config.name,
                "the kernel refused UDP segmentation offload (TUN_F_USO4/6, Linux 6.2+): UDP superframes are split before tunwall"
            );
        }
        Ok(port)
    }

    /// The offloads the kernel granted, as `stats` shows them per port:
    /// `tcp+udp`, `tcp` (UDP segmentation refused) or `off`.
    pub fn offload(&self) -> &'static str {
        match (self.vnet_hdr, self.udp_gso) {
            (true, true) => "tcp+udp",
            (true, false) => "tcp",
            (false, _) => "off",
        }
    }

    /// Brings the device up with tunwall's txqueuelen, the MTU, addresses
    /// and kernel routes of its configuration, inside its namespace.
    fn configure(&mut self) -> io::Result<()> {
        let config = self.config.clone();
        let created = self.created;
        self.added = in_netns(config.netns.as_deref(), move || {
            let mut link = Link::open(&config.device)?;
            link.set_txqueuelen(TX_QUEUE_LEN)?;
            if let Some(mtu) = config.mtu {
                link.set_mtu(mtu)?;
            }
            link.set_up()?;
            let mut added = Vec::new();
            let all = config
                .addresses
                .iter()
                .map(|&a| Added::Address(a))
                .chain(config.kernel_routes.iter().map(|&r| Added::Route(r)));
            for item in all {
                let result = match item {
                    Added::Address(a) => link.replace_address(a),
                    Added::Route(r) => link.replace_route(r),
                };
                if let Err(e) = result {
                    if !created {
                        undo(&mut link, added);
                    }
                    return Err(e);
                }
                added.push(item);
            }
            // A device tunwall created takes its addresses and routes with it.
            Ok(if created { Vec::new() } else { added })
        })?;
        Ok(())
    }

    /// A port whose open queues came from another process (SPEC §13): the
    /// device is already configured.
    pub fn adopt(
        config: &PortConfig,
        queues: Vec<Queue>,
        created: bool,
        persistent: bool,
        vnet_hdr: bool,
        udp_gso: bool,
    ) -> Port {
        Port {
            config: config.clone(),
            queues,
            created,
            persistent,
            vnet_hdr,
            udp_gso,
            added: Vec::new(),
        }
    }

    /// Closes the queues and leaves the device as it is, with its addresses
    /// and routes: another process carries on with it.
    pub fn keep(self) {}

    /// Closes the queues; removes what tunwall added to a device it did not
    /// create (a device it created vanishes with its last queue, a
    /// persistent one is deleted).
    pub fn close(mut self) {
        self.queues.clear();
        let added = std::mem::take(&mut self.added);
        let persistent = self.persistent;
        if added.is_empty() && !persistent {
            return;
        }
        let device = self.config.device.clone();
        let undone = in_netns(self.config.netns.as_deref(), move || {
            let mut link = Link::open(&device)?;
            if persistent {
                link.delete()
            } else {
                undo(&mut link, added);
                Ok(())
            }
        });
        if let Err(e) = undone {
            warn!(port = %self.config.name, error = %e, "cleanup");
        }
    }
}

/// Opens every port with `queues` queues: all with offload, or, if any device
/// refuses it (or `offload` is false), all without.
///
/// Offload passes GSO superframes from port to port whole, never split, which
/// is only right when no port has a smaller MTU than another: with differing
/// MTUs the ports are opened without offload.
pub fn open_ports(
    ports: &[PortConfig],
    queues: usize,
    offload: bool,
    persist: bool,
) -> io::Result<Vec<Port>> {
    let offload = offload
        && {
            let equal = ports.windows(2).all(|w| w[0].mtu == w[1].mtu);
            if !equal {
                warn!(
                    "offload needs the same MTU on every port (superframes pass unsplit); using one packet per read and write"
                );
            }
            equal
        };
    let open_all = |offload: bool| -> io::Result<Vec<Port>> {
        let mut open: Vec<Port> = Vec::new();
        for p in ports {
            match Port::open(p, queues, offload, persist) {
                Ok(port) => open.push(port),
                Err(e) => {
                    for port in open {
                        port.close();
                    }
                    return Err(io::Error::new(e.kind(), format!("port {}: {e}", p.name)));
                }
            }
        }
        Ok(open)
    };
    let open = open_all(offload)?;
    if open.iter().all(|p| p.vnet_hdr == open[0].vnet_hdr) {
        return Ok(open);
    }
    warn!("offload is available on some ports only; using one packet per read and write on all");
    for port in open {
        port.close();
    }
    open_all(false)
}

/// The offloads a worker's queues have: what every port was granted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offload {
    /// A virtio-net header in front of every packet (TCP superframes).
    pub vnet_hdr: bool,
    /// UDP superframes too (TUN_F_USO4/6): the workers also merge the
    /// datagrams they forward into superframes ([`coalesce`]).
    pub udp_gso: bool,
}

impl Offload {
    /// What all of `ports` have.
    pub fn of(ports: &[Port]) -> Offload {
        Offload {
            vnet_hdr: !ports.is_empty() && ports.iter().all(|p| p.vnet_hdr),
            udp_gso: !ports.is_empty() && ports.iter().all(|p| p.udp_gso),
        }
    }
}

/// Takes the queues out of `ports`: entry `i` holds worker `i`'s queue of
/// every port, in port order.
/// Each worker's queues are copies of the port's descriptors (the same open
/// queues); the ports keep theirs to hand them over (SPEC §13).
pub fn queues_by_worker(ports: &[Port], workers: usize) -> io::Result<Vec<Vec<Queue>>> {
    let mut by_worker: Vec<Vec<Queue>> = (0..workers).map(|_| Vec::new()).collect();
    for port in ports {
        for (i, q) in port.queues.iter().enumerate().take(workers) {
            by_worker[i].push(Queue::from(q.as_fd().try_clone_to_owned()?));
        }
    }
    Ok(by_worker)
}
