//! The WireGuard cross-platform userspace API (wireguard-go, boringtun):
//! `get=1` over `/var/run/wireguard/<interface>.sock`, answered by
//! `key=value` lines — device keys, then one `public_key=` line per peer
//! followed by that peer's keys — an `errno=` line and an empty line.

use crate::policy::{Peer, PublicKey};
use ipnet::IpNet;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

/// Where wireguard-go and boringtun put their sockets. `/var/run` is not
/// per network namespace: one directory serves them all.
pub const SOCKET_DIR: &str = "/var/run/wireguard";

/// The largest answer read: ~100 bytes a line, enough for ~100 000 peers.
const MAX_ANSWER: u64 = 16 << 20;

/// The most allowed-ips kept for one interface (every queue has a bound).
const MAX_ALLOWED_IPS: usize = 1 << 20;

/// The socket of `interface`.
pub fn socket_path(interface: &str) -> PathBuf {
    PathBuf::from(SOCKET_DIR).join(format!("{interface}.sock"))
}

/// Asks the interface for its peers.
pub fn get(interface: &str, timeout: Duration) -> Result<Vec<Peer>, String> {
    let path = socket_path(interface);
    let mut stream = UnixStream::connect(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .and_then(|()| stream.write_all(b"get=1\n\n"))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 8192];
    let mut limited = (&mut stream).take(MAX_ANSWER);
    // The answer ends with an empty line; the server keeps the socket open.
    while !answer.ends_with(b"\n\n") {
        let n = limited
            .read(&mut buf)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
    }
    parse_get(&answer).map_err(|e| format!("{}: {e}", path.display()))
}

/// Parses the answer to `get=1`. Never panics, whatever the bytes.
pub fn parse_get(answer: &[u8]) -> Result<Vec<Peer>, String> {
    let text = std::str::from_utf8(answer).map_err(|_| "the answer is not UTF-8".to_string())?;
    let mut peers: Vec<Peer> = Vec::new();
    let mut allowed = 0usize;
    let mut errno = None;
    for line in text.split('\n') {
        if line.is_empty() {
            break;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("line without '=': \"{}\"", shorten(line)));
        };
        match key {
            "public_key" => peers.push(Peer {
                key: hex_key(value)
                    .ok_or_else(|| format!("bad public_key \"{}\"", shorten(value)))?,
                allowed_ips: Vec::new(),
            }),
            "allowed_ip" => {
                let peer = peers.last_mut().ok_or("allowed_ip before any public_key")?;
                let net: IpNet = value
                    .parse()
                    .map_err(|_| format!("bad allowed_ip \"{}\"", shorten(value)))?;
                allowed += 1;
                if allowed > MAX_ALLOWED_IPS {
                    return Err(format!("more than {MAX_ALLOWED_IPS} allowed-ips"));
                }
                peer.allowed_ips.push(net.trunc());
            }
            "errno" => {
                errno = Some(
                    value
                        .parse::<i64>()
                        .map_err(|_| format!("bad errno \"{}\"", shorten(value)))?,
                )
            }
            _ => {}
        }
    }
    match errno {
        Some(0) => Ok(peers),
        Some(n) => Err(format!("the interface answered errno={n}")),
        None => Err("the answer ended without errno (truncated?)".into()),
    }
}

fn hex_key(s: &str) -> Option<PublicKey> {
    let s = s.as_bytes();
    if s.len() != 64 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16);
    let mut key = [0u8; 32];
    for (i, pair) in s.chunks(2).enumerate() {
        key[i] = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
    }
    Some(key)
}

fn shorten(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER: &str = "private_key=e84b5a6d2717c1003a13b431570353dbaca9146cf150c5f8575680feba52027a\n\
listen_port=12912\n\
public_key=b85996fecc9c7f1fc6d2572a76eda11d59bcd20be8e543b15ce4bd85a8e75a33\n\
preshared_key=188515093e952f5f22e865cef3012e72f8b5f0b598ac0309d5dacce3b70fcf52\n\
allowed_ip=198.18.4.4/32\n\
endpoint=[fd00:23::33%2]:51820\n\
public_key=58402e695ba1772b1cc9309755f043251ea77fdcf10fbe63989ceb7e19321376\n\
tx_bytes=38333\n\
rx_bytes=2224\n\
allowed_ip=198.18.4.6/32\n\
allowed_ip=fd00:1::/64\n\
persistent_keepalive_interval=111\n\
protocol_version=1\n\
errno=0\n\n";

    #[test]
    fn the_documented_example_parses() {
        let peers = parse_get(ANSWER.as_bytes()).unwrap();
        assert_eq!(peers.len(), 2);
        assert_eq!(peers[0].key[0], 0xb8);
        assert_eq!(peers[0].key[31], 0x33);
        assert_eq!(peers[0].allowed_ips, vec!["198.18.4.4/32".parse().unwrap()]);
        assert_eq!(
            peers[1].allowed_ips,
            vec![
                "198.18.4.6/32".parse::<IpNet>().unwrap(),
                "fd00:1::/64".parse().unwrap()
            ]
        );
    }

    #[test]
    fn errors_truncation_and_garbage_are_refused_without_panic() {
        assert!(parse_get(b"errno=0\n\n").unwrap().is_empty());
        assert!(parse_get(b"errno=19\n\n").unwrap_err().contains("errno=19"));
        assert!(parse_get(b"public_key=00\n").is_err());
        assert!(parse_get(b"allowed_ip=198.18.0.0/15\nerrno=0\n\n").is_err());
        let truncated = &ANSWER.as_bytes()[..ANSWER.len() - 12];
        assert!(parse_get(truncated).is_err());
        assert!(parse_get(&[0xff, 0xfe]).is_err());
        assert!(parse_get(b"no equals sign\n").is_err());
        // Every prefix of a valid answer: an error or the full answer, never a panic.
        for n in 0..ANSWER.len() {
            let _ = parse_get(&ANSWER.as_bytes()[..n]);
        }
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_or_line_soup_never_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
            lines in proptest::collection::vec("(public_key|allowed_ip|errno|endpoint|)=[0-9a-f./:=]{0,70}", 0..24),
        ) {
            let _ = parse_get(&bytes);
            let _ = parse_get((lines.join("\n") + "\n\n").as_bytes());
        }
    }

    #[test]
    fn host_bits_of_allowed_ips_are_cleared() {
        let text = format!(
            "public_key={}\nallowed_ip=198.18.1.7/24\nerrno=0\n\n",
            "ab".repeat(32)
        );
        let peers = parse_get(text.as_bytes()).unwrap();
        assert_eq!(peers[0].allowed_ips, vec!["198.18.1.0/24".parse().unwrap()]);
    }
}
