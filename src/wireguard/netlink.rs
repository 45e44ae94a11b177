//! The kernel's WireGuard interfaces over generic netlink: resolve the
//! `wireguard` family, then dump `WG_CMD_GET_DEVICE` for the interface and
//! collect each peer's public key and allowed-ips. A peer with many
//! allowed-ips spans several messages; the kernel repeats its key.
//!
//! The machines this was written on have no WireGuard module: the message
//! building and parsing are tested offline on crafted messages; the socket
//! exchange is not exercised by the test suite (docs/deviations.md).

use crate::policy::{Peer, PublicKey};
use ipnet::IpNet;
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, send,
    socket,
};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_DUMP: u16 = 0x300;
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const WG_CMD_GET_DEVICE: u8 = 0;
const WG_GENL_VERSION: u8 = 1;
const WGDEVICE_A_IFNAME: u16 = 2;
const WGDEVICE_A_PEERS: u16 = 8;
const WGPEER_A_PUBLIC_KEY: u16 = 1;
const WGPEER_A_ALLOWEDIPS: u16 = 9;
const WGALLOWEDIP_A_FAMILY: u16 = 1;
const WGALLOWEDIP_A_IPADDR: u16 = 2;
const WGALLOWEDIP_A_CIDR_MASK: u16 = 3;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
/// The attribute type bits (without NLA_F_NESTED / NLA_F_NET_BYTEORDER).
const NLA_TYPE_MASK: u16 = 0x3fff;
/// The most messages one dump may take (every loop has a bound).
const MAX_MESSAGES: usize = 1 << 16;

/// Asks the kernel for the peers of `interface` (in the caller's namespace).
pub fn get(interface: &str) -> Result<Vec<Peer>, String> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkGeneric,
    )
    .map_err(|e| format!("generic netlink socket: {e}"))?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(|e| format!("netlink bind: {e}"))?;
    let exchange = |request: Vec<u8>| -> Result<Vec<Vec<u8>>, String> {
        send(fd.as_raw_fd(), &request, MsgFlags::empty()).map_err(|e| format!("netlink: {e}"))?;
        let mut replies = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        for _ in 0..MAX_MESSAGES {
            let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty())
                .map_err(|e| format!("netlink: {e}"))?;
            let (done, messages) = split_messages(&buf[..n])?;
            replies.extend(messages);
            if done || n == 0 {
                return Ok(replies);
            }
        }
        Err("netlink: the dump does not end".into())
    };
    let family = exchange(family_request())?
        .iter()
        .find_map(|m| family_id(m))
        .ok_or("the kernel has no \"wireguard\" generic netlink family (no WireGuard module)")?;
    let messages = exchange(device_request(family, interface))?;
    Ok(parse_device(&messages))
}

fn header(kind: u16, flags: u16, cmd: u8, version: u8, attrs: &[u8]) -> Vec<u8> {
    let len = 16 + 4 + attrs.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&[cmd, version, 0, 0]);
    m.extend_from_slice(attrs);
    m
}

fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(4 + payload.len() + 3);
    a.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    a.extend_from_slice(&kind.to_ne_bytes());
    a.extend_from_slice(payload);
    while a.len() % 4 != 0 {
        a.push(0);
    }
    a
}

fn cstring(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// CTRL_CMD_GETFAMILY for "wireguard".
fn family_request() -> Vec<u8> {
    let attrs = attr(CTRL_ATTR_FAMILY_NAME, &cstring("wireguard"));
    header(
        GENL_ID_CTRL,
        NLM_F_REQUEST | NLM_F_ACK,
        CTRL_CMD_GETFAMILY,
        1,
        &attrs,
    )
}

/// WG_CMD_GET_DEVICE (a dump) for `interface`.
fn device_request(family: u16, interface: &str) -> Vec<u8> {
    let attrs = attr(WGDEVICE_A_IFNAME, &cstring(interface));
    header(
        family,
        NLM_F_REQUEST | NLM_F_DUMP,
        WG_CMD_GET_DEVICE,
        WG_GENL_VERSION,
        &attrs,
    )
}

/// Splits a datagram into the generic netlink payloads of its messages
/// (after the genl header); `true` once NLMSG_DONE or an ACK arrived.
fn split_messages(buf: &[u8]) -> Result<(bool, Vec<Vec<u8>>), String> {
    let mut out = Vec::new();
    let mut rest = buf;
    while rest.len() >= 16 {
        let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let kind = u16::from_ne_bytes([rest[4], rest[5]]);
        if len < 16 || len > rest.len() {
            return Err("netlink: a message with a bad length".into());
        }
        let body = &rest[16..len];
        match kind {
            NLMSG_DONE => return Ok((true, out)),
            NLMSG_ERROR => {
                let code = body
                    .get(..4)
                    .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                if code == 0 {
                    return Ok((true, out));
                }
                return Err(format!(
                    "netlink: {}",
                    std::io::Error::from_raw_os_error(-code)
                ));
            }
            _ => out.push(body.get(4..).unwrap_or_default().to_vec()),
        }
        rest = &rest[align(len).min(rest.len())..];
    }
    Ok((false, out))
}

fn align(n: usize) -> usize {
    (n + 3) & !3
}

/// The attributes of `buf` as (type, payload), malformed tails ignored.
fn attrs(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([rest[0], rest[1]]));
        let kind = u16::from_ne_bytes([rest[2], rest[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > rest.len() {
            return None;
        }
        let payload = &rest[4..len];
        rest = &rest[align(len).min(rest.len())..];
        Some((kind, payload))
    })
}

fn family_id(message: &[u8]) -> Option<u16> {
    attrs(message)
        .find(|(k, p)| *k == CTRL_ATTR_FAMILY_ID && p.len() >= 2)
        .map(|(_, p)| u16::from_ne_bytes([p[0], p[1]]))
}

/// The peers in a dump's messages; a peer continued in the next message
/// (same key) is merged.
fn parse_device(messages: &[Vec<u8>]) -> Vec<Peer> {
    let mut peers: Vec<Peer> = Vec::new();
    for message in messages {
        for (_, list) in attrs(message).filter(|(k, _)| *k == WGDEVICE_A_PEERS) {
            for (_, peer) in attrs(list) {
                let mut key: Option<PublicKey> = None;
                let mut allowed = Vec::new();
                for (kind, payload) in attrs(peer) {
                    match kind {
                        WGPEER_A_PUBLIC_KEY => key = payload.try_into().ok(),
                        WGPEER_A_ALLOWEDIPS => {
                            allowed.extend(attrs(payload).filter_map(|(_, a)| allowed_ip(a)))
                        }
                        _ => {}
                    }
                }
                let Some(key) = key else { continue };
                match peers.last_mut() {
                    Some(last) if last.key == key => last.allowed_ips.extend(allowed),
                    _ => peers.push(Peer {
                        key,
                        allowed_ips: allowed,
                    }),
                }
            }
        }
    }
    peers
}

fn allowed_ip(buf: &[u8]) -> Option<IpNet> {
    let (mut family, mut addr, mut mask) = (None, None, None);
    for (kind, p) in attrs(buf) {
        match kind {
            WGALLOWEDIP_A_FAMILY if p.len() >= 2 => family = Some(u16::from_ne_bytes([p[0], p[1]])),
            WGALLOWEDIP_A_IPADDR => addr = Some(p),
            WGALLOWEDIP_A_CIDR_MASK if !p.is_empty() => mask = Some(p[0]),
            _ => {}
        }
    }
    let (addr, mask) = (addr?, mask?);
    let net = match family? {
        AF_INET => IpNet::new(Ipv4Addr::from(<[u8; 4]>::try_from(addr).ok()?).into(), mask),
        AF_INET6 => IpNet::new(
            Ipv6Addr::from(<[u8; 16]>::try_from(addr).ok()?).into(),
            mask,
        ),
        _ => return None,
    };
    net.ok().map(|n| n.trunc())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(kind: u16, parts: &[Vec<u8>]) -> Vec<u8> {
        attr(kind | 0x8000, &parts.concat())
    }

    fn allowed(family: u16, addr: &[u8], mask: u8) -> Vec<u8> {
        nested(
            0,
            &[
                attr(WGALLOWEDIP_A_FAMILY, &family.to_ne_bytes()),
                attr(WGALLOWEDIP_A_IPADDR, addr),
                attr(WGALLOWEDIP_A_CIDR_MASK, &[mask]),
            ],
        )
    }

    fn peer(key: u8, ips: &[Vec<u8>]) -> Vec<u8> {
        nested(
            0,
            &[
                attr(WGPEER_A_PUBLIC_KEY, &[key; 32]),
                nested(WGPEER_A_ALLOWEDIPS, ips),
            ],
        )
    }

    /// A datagram as the kernel sends it: messages, then NLMSG_DONE.
    fn dump(family: u16, messages: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for attrs in messages {
            out.extend(header(family, 2, WG_CMD_GET_DEVICE, 1, attrs));
        }
        out.extend(header(NLMSG_DONE, 2, 0, 0, &[]));
        out
    }

    #[test]
    fn a_dump_split_across_messages_gives_each_peer_once() {
        let first = [
            attr(WGDEVICE_A_IFNAME, &cstring("wg0")),
            nested(
                WGDEVICE_A_PEERS,
                &[
                    peer(1, &[allowed(AF_INET, &[198, 18, 100, 2], 32)]),
                    peer(2, &[allowed(AF_INET, &[198, 18, 100, 3], 32)]),
                ],
            ),
        ]
        .concat();
        let second = nested(
            WGDEVICE_A_PEERS,
            &[peer(
                2,
                &[allowed(
                    AF_INET6,
                    &[0xfd, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9],
                    64,
                )],
            )],
        );
        let (done, messages) = split_messages(&dump(30, &[first, second])).unwrap();
        assert!(done);
        let peers = parse_device(&messages);
        assert_eq!(peers.len(), 2);
        assert_eq!(peers[0].key, [1; 32]);
        assert_eq!(
            peers[0].allowed_ips,
            vec!["198.18.100.2/32".parse().unwrap()]
        );
        assert_eq!(
            peers[1].allowed_ips,
            vec![
                "198.18.100.3/32".parse::<IpNet>().unwrap(),
                "fd00:1::/64".parse().unwrap()
            ]
        );
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1024)) {
            if let Ok((_, m)) = split_messages(&bytes) {
                let _ = parse_device(&m);
            }
            let _ = parse_device(std::slice::from_ref(&bytes));
            let _ = family_id(&bytes);
        }
    }

    #[test]
    fn family_resolution_errors_and_garbage() {
        let reply = header(
            GENL_ID_CTRL,
            0,
            1,
            1,
            &attr(CTRL_ATTR_FAMILY_ID, &30u16.to_ne_bytes()),
        );
        let (_, messages) = split_messages(&reply).unwrap();
        assert_eq!(family_id(&messages[0]), Some(30));
        let mut error = header(NLMSG_ERROR, 0, 0, 0, &[]);
        error.truncate(16);
        error.extend_from_slice(&(-19i32).to_ne_bytes());
        error[..4].copy_from_slice(&(20u32).to_ne_bytes());
        assert!(
            split_messages(&error)
                .unwrap_err()
                .contains("No such device")
        );
        assert!(split_messages(&[0xff; 40]).is_err());
        // Any bytes: parsed or refused, never a panic.
        let valid = dump(
            30,
            &[nested(
                WGDEVICE_A_PEERS,
                &[peer(3, &[allowed(AF_INET, &[198, 18, 0, 0], 15)])],
            )],
        );
        for n in 0..valid.len() {
            if let Ok((_, m)) = split_messages(&valid[..n]) {
                let _ = parse_device(&m);
            }
            let _ = parse_device(&[valid[n..].to_vec()]);
        }
        assert!(device_request(30, "wg0").len() % 4 == 0);
        assert_eq!(family_request().len(), 16 + 4 + 4 + 12);
    }
}
