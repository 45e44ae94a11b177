//! Configuring a port's device over rtnetlink: link state, MTU, txqueuelen,
//! addresses and kernel routes — what `ip link/addr/route` would do, without
//! iproute2 at run time.
//!
//! A netlink socket talks to the network namespace of the thread that
//! created it, so a [`Link`] is made inside [`super::in_netns`]. Every
//! request asks for an acknowledgement and the kernel's error comes back
//! naming the operation and the device.

use ipnet::IpNet;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressHeaderFlags, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use std::io;

/// Acknowledgements are a header and an error code (plus the echoed request
/// when it fails): far below this.
const RECV_BUFFER: usize = 16 * 1024;

/// How long a request may wait for the kernel's acknowledgement.
const ACK_TIMEOUT_SECS: i64 = 5;

/// One device of the calling thread's network namespace, and a netlink
/// socket to configure it with.
pub struct Link {
    device: String,
    index: u32,
    socket: Socket,
    sequence: u32,
}

impl Link {
    /// Finds `device` in the current thread's namespace.
    pub fn open(device: &str) -> io::Result<Link> {
        let index = nix::net::if_::if_nametoindex(device).map_err(|e| {
            io::Error::new(
                io::Error::from(e).kind(),
                format!("looking up device {device}: {e}"),
            )
        })?;
        let mut socket = Socket::new(NETLINK_ROUTE)
            .map_err(|e| io::Error::new(e.kind(), format!("opening a netlink socket: {e}")))?;
        socket
            .bind_auto()
            .map_err(|e| io::Error::new(e.kind(), format!("binding a netlink socket: {e}")))?;
        socket.connect(&SocketAddr::new(0, 0))?;
        // The kernel acknowledges at once; never wait on it without bound.
        nix::sys::socket::setsockopt(
            &socket,
            nix::sys::socket::sockopt::ReceiveTimeout,
            &nix::sys::time::TimeVal::new(ACK_TIMEOUT_SECS, 0),
        )
        .map_err(|e| io::Error::other(format!("setting a netlink socket timeout: {e}")))?;
        Ok(Link {
            device: device.to_string(),
            index,
            socket,
            sequence: 0,
        })
    }

    /// Sets the administrative state up.
    pub fn set_up(&mut self) -> io::Result<()> {
        let mut msg = self.link_message();
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        self.request(RouteNetlinkMessage::SetLink(msg), 0)
            .map_err(|e| self.failed("setting up", e))
    }

    /// Sets the MTU.
    pub fn set_mtu(&mut self, mtu: u32) -> io::Result<()> {
        let mut msg = self.link_message();
        msg.attributes.push(LinkAttribute::Mtu(mtu));
        self.request(RouteNetlinkMessage::SetLink(msg), 0)
            .map_err(|e| self.failed(&format!("setting mtu {mtu} on"), e))
    }

    /// Sets the transmit queue length.
    pub fn set_txqueuelen(&mut self, len: u32) -> io::Result<()> {
        let mut msg = self.link_message();
        msg.attributes.push(LinkAttribute::TxQueueLen(len));
        self.request(RouteNetlinkMessage::SetLink(msg), 0)
            .map_err(|e| self.failed(&format!("setting txqueuelen {len} on"), e))
    }

    /// Adds `addr` to the device, replacing it if present (`ip addr replace`).
    pub fn replace_address(&mut self, addr: IpNet) -> io::Result<()> {
        let msg = self.address_message(addr);
        self.request(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map_err(|e| self.failed(&format!("adding address {addr} to"), e))
    }

    /// Removes `addr` from the device.
    pub fn delete_address(&mut self, addr: IpNet) -> io::Result<()> {
        let msg = self.address_message(addr);
        self.request(RouteNetlinkMessage::DelAddress(msg), 0)
            .map_err(|e| self.failed(&format!("removing address {addr} from"), e))
    }

    /// Routes `dst` into the device, replacing a route to the same prefix
    /// (`ip route replace DST dev DEVICE`).
    pub fn replace_route(&mut self, dst: IpNet) -> io::Result<()> {
        let msg = self.route_message(dst);
        self.request(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map_err(|e| self.failed(&format!("adding route {dst} via"), e))
    }

    /// Removes the route to `dst` through the device.
    pub fn delete_route(&mut self, dst: IpNet) -> io::Result<()> {
        let msg = self.route_message(dst);
        self.request(RouteNetlinkMessage::DelRoute(msg), 0)
            .map_err(|e| self.failed(&format!("removing route {dst} via"), e))
    }

    /// Deletes the device (`ip link del`): how a persistent TUN device
    /// goes, once no queue is open (SPEC §13).
    pub fn delete(&mut self) -> io::Result<()> {
        let msg = self.link_message();
        self.request(RouteNetlinkMessage::DelLink(msg), 0)
            .map_err(|e| self.failed("deleting", e))
    }

    fn failed(&self, operation: &str, e: io::Error) -> io::Error {
        io::Error::new(e.kind(), format!("{operation} {}: {e}", self.device))
    }

    fn link_message(&self) -> LinkMessage {
        let mut msg = LinkMessage::default();
        msg.header.index = self.index;
        msg
    }

    fn address_message(&self, addr: IpNet) -> AddressMessage {
        let mut msg = AddressMessage::default();
        msg.header.family = family(addr);
        msg.header.prefix_len = addr.prefix_len();
        msg.header.index = self.index;
        msg.header.flags = AddressHeaderFlags::Permanent;
        if addr.addr().is_ipv6() {
            // A TUN device has no link layer to detect duplicates on.
            msg.header.flags |= AddressHeaderFlags::Nodad;
        }
        msg.attributes.push(AddressAttribute::Local(addr.addr()));
        msg.attributes.push(AddressAttribute::Address(addr.addr()));
        msg
    }

    fn route_message(&self, dst: IpNet) -> RouteMessage {
        let dst = dst.trunc();
        let mut msg = RouteMessage::default();
        msg.header.address_family = family(dst);
        msg.header.destination_prefix_length = dst.prefix_len();
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::Boot;
        // No gateway: the destination is on the link, as `ip route` decides.
        msg.header.scope = RouteScope::Link;
        msg.header.kind = RouteType::Unicast;
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(dst.addr())));
        msg.attributes.push(RouteAttribute::Oif(self.index));
        msg
    }

    /// Sends one request and waits for its acknowledgement.
    fn request(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        self.sequence = self.sequence.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = self.sequence;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        packet.finalize();
        let mut out = vec![0; packet.buffer_len()];
        packet.serialize(&mut out);
        self.socket.send(&out, 0)?;
        loop {
            let mut buf = Vec::with_capacity(RECV_BUFFER);
            self.socket.recv(&mut buf, 0).map_err(|e| match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no answer from the kernel within 5 s",
                ),
                _ => e,
            })?;
            let mut rest = &buf[..];
            while !rest.is_empty() {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(rest)
                    .map_err(|e| io::Error::other(format!("unreadable netlink reply: {e}")))?;
                let len = (reply.header.length as usize).max(1);
                rest = rest.get(align(len)..).unwrap_or_default();
                if reply.header.sequence_number != self.sequence {
                    continue;
                }
                if let NetlinkPayload::Error(e) = reply.payload {
                    return match e.code {
                        None => Ok(()),
                        Some(code) => Err(os_error(code.get())),
                    };
                }
            }
        }
    }
}

fn family(net: IpNet) -> AddressFamily {
    match net {
        IpNet::V4(_) => AddressFamily::Inet,
        IpNet::V6(_) => AddressFamily::Inet6,
    }
}

/// The kernel's `-errno` as an error reading "Operation not permitted"
/// (without the "(os error 1)" that would follow it in a log line).
fn os_error(code: i32) -> io::Error {
    let errno = nix::errno::Errno::from_raw(code.saturating_abs());
    io::Error::new(io::Error::from(errno).kind(), errno.desc())
}

/// Netlink messages in one datagram start on 4-byte boundaries.
fn align(len: usize) -> usize {
    (len + 3) & !3
}
