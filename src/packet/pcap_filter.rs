//! `tunwall capture --filter EXPR`: the part of pcap-filter(7) (tcpdump's
//! expression language) that means something on a TUN port, which carries
//! bare IP packets:
//!
//! ```text
//! expr      := and ( ("or" | "||") and )*
//! and       := not ( ("and" | "&&") not )*
//! not       := ("not" | "!") not | "(" expr ")" | primitive
//! primitive := [ip | ip6 | tcp | udp | icmp | icmp6]
//!              [src | dst | src or dst | src and dst]
//!              [host ADDR | net ADDR/LEN | port N | portrange N-M | proto P]
//! ```
//!
//! A protocol qualifier alone is a primitive (`tcp`, `ip6`); before a
//! primitive it is ANDed with it (`udp port 53`). A direction without a type
//! means `host`; a bare address means `host ADDR`. As in tcpdump, a bare
//! value after `and`/`or`/`not` repeats the previous primitive's qualifiers
//! (`host 198.18.1.1 or 198.18.1.2`, `port 53 or 123`). `port` matches TCP,
//! UDP and the other protocols with ports (SCTP, DCCP, UDP-Lite); a later
//! fragment has no ports. A packet that does not parse as IP matches nothing,
//! as a BPF program rejects a packet it cannot read.
//!
//! The expression is parsed into a tree once and evaluated on each packet a
//! worker would hand to the capture, before it is copied: a packet the filter
//! rejects costs the capture nothing.

use super::{IpVersion, Packet, RawAddr, proto, raw_addr};
use std::net::IpAddr;

/// The longest expression accepted.
const MAX_LEN: usize = 4096;
/// The deepest nesting of `not` and parentheses accepted.
const MAX_DEPTH: usize = 64;

/// A parsed capture filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaptureFilter {
    expr: Expr,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Expr {
    Or(Box<Expr>, Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    /// `ip`, `ip6`.
    Version(IpVersion),
    /// `tcp`, `icmp6`, `proto N` (with the family, if the name implies one).
    Protocol(u8, Option<IpVersion>),
    /// `host`, `net`: a prefix of one family.
    Net {
        dir: Dir,
        version: IpVersion,
        addr: RawAddr,
        len: u8,
    },
    /// `port`, `portrange`.
    Port {
        dir: Dir,
        lo: u16,
        hi: u16,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    Src,
    Dst,
    /// No direction, or `src or dst`.
    Either,
    /// `src and dst`.
    Both,
}

impl Dir {
    fn test<T>(self, src: T, dst: T, f: impl Fn(T) -> bool) -> bool {
        match self {
            Dir::Src => f(src),
            Dir::Dst => f(dst),
            Dir::Either => f(src) || f(dst),
            Dir::Both => f(src) && f(dst),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Host,
    Net,
    Port,
    PortRange,
    Proto,
}

/// The qualifiers of a primitive, repeated for a bare value that follows.
#[derive(Clone, Copy, Debug)]
struct Qualifiers {
    proto: Option<&'static str>,
    dir: Option<Dir>,
    kind: Kind,
}

const PROTOCOLS: [&str; 7] = ["ip", "ip6", "tcp", "udp", "icmp", "icmp6", "icmpv6"];
const KEYWORDS: [&str; 15] = [
    "and",
    "or",
    "not",
    "src",
    "dst",
    "host",
    "net",
    "port",
    "portrange",
    "proto",
    "&&",
    "||",
    "!",
    "(",
    ")",
];

fn is_value(word: &str) -> bool {
    !KEYWORDS.contains(&word) && !PROTOCOLS.contains(&word)
}

/// The expression a protocol qualifier stands for.
fn protocol_expr(name: &str) -> Expr {
    match name {
        "ip" => Expr::Version(IpVersion::V4),
        "ip6" => Expr::Version(IpVersion::V6),
        "tcp" => Expr::Protocol(proto::TCP, None),
        "udp" => Expr::Protocol(proto::UDP, None),
        "icmp" => Expr::Protocol(proto::ICMP, Some(IpVersion::V4)),
        _ => Expr::Protocol(proto::ICMPV6, Some(IpVersion::V6)),
    }
}

#[derive(Clone, Copy, Debug)]
struct Token<'a> {
    text: &'a str,
    /// Byte offset in the expression.
    at: usize,
}

fn tokenize(text: &str) -> Result<Vec<Token<'_>>, String> {
    let mut tokens = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c == b'(' || c == b')' || (c == b'!' && bytes.get(i + 1) != Some(&b'=')) {
            i += 1;
        } else if (c == b'&' || c == b'|') && bytes.get(i + 1) == Some(&c) {
            i += 2;
        } else if c.is_ascii_alphanumeric() || b".:/-_".contains(&c) {
            while i < bytes.len()
                && (bytes[i].is_ascii_alphanumeric() || b".:/-_".contains(&bytes[i]))
            {
                i += 1;
            }
        } else {
            let ch = text[i..].chars().next().unwrap_or('?');
            return Err(format!("column {}: unexpected \"{ch}\"", i + 1));
        }
        tokens.push(Token {
            text: &text[start..i],
            at: start,
        });
    }
    Ok(tokens)
}

struct Parser<'a> {
    tokens: Vec<Token<'a>>,
    next: usize,
    depth: usize,
    last: Option<Qualifiers>,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<&'a str> {
        self.tokens.get(self.next).map(|t| t.text)
    }

    fn peek_at(&self, ahead: usize) -> Option<&'a str> {
        self.tokens.get(self.next + ahead).map(|t| t.text)
    }

    fn eat(&mut self, words: &[&str]) -> Option<&'a str> {
        let word = self.peek().filter(|w| words.contains(w))?;
        self.next += 1;
        Some(word)
    }

    /// An error at the current token: `expected`, and what was found.
    fn error(&self, expected: &str) -> String {
        match self.tokens.get(self.next) {
            Some(t) => format!(
                "column {}: expected {expected}, found \"{}\"",
                t.at + 1,
                t.text
            ),
            None => format!("at the end: expected {expected}"),
        }
    }

    /// An error about the token before the current one.
    fn error_before(&self, what: &str) -> String {
        let t = self.tokens[self.next - 1];
        format!("column {}: \"{}\": {what}", t.at + 1, t.text)
    }

    fn deeper(&mut self) -> Result<(), String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error_before(&format!("nested deeper than {MAX_DEPTH}")));
        }
        Ok(())
    }

    fn or(&mut self) -> Result<Expr, String> {
        let mut left = self.and()?;
        while self.eat(&["or", "||"]).is_some() {
            left = Expr::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, String> {
        let mut left = self.not()?;
        while self.eat(&["and", "&&"]).is_some() {
            left = Expr::And(Box::new(left), Box::new(self.not()?));
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Expr, String> {
        if self.eat(&["not", "!"]).is_some() {
            self.deeper()?;
            let inner = self.not()?;
            self.depth -= 1;
            return Ok(Expr::Not(Box::new(inner)));
        }
        if self.eat(&["("]).is_some() {
            self.deeper()?;
            let inner = self.or()?;
            if self.eat(&[")"]).is_none() {
                return Err(self.error("\")\" or \"and\"/\"or\""));
            }
            self.depth -= 1;
            return Ok(inner);
        }
        self.primitive()
    }

    /// `src`, `dst`, `src or dst`, `src and dst`.
    fn direction(&mut self) -> Option<Dir> {
        let first = self.eat(&["src", "dst"])?;
        let other = if first == "src" { "dst" } else { "src" };
        let combined = match (self.peek(), self.peek_at(1)) {
            (Some("or"), Some(w)) if w == other => Some(Dir::Either),
            (Some("and"), Some(w)) if w == other => Some(Dir::Both),
            _ => None,
        };
        if let Some(dir) = combined {
            self.next += 2;
            return Some(dir);
        }
        Some(if first == "src" { Dir::Src } else { Dir::Dst })
    }

    fn primitive(&mut self) -> Result<Expr, String> {
        let proto = self
            .eat(&PROTOCOLS)
            .and_then(|p| PROTOCOLS.iter().find(|&&known| known == p).copied());
        let dir = self.direction();
        let kind = self
            .eat(&["host", "net", "port", "portrange", "proto"])
            .map(|k| match k {
                "host" => Kind::Host,
                "net" => Kind::Net,
                "port" => Kind::Port,
                "portrange" => Kind::PortRange,
                _ => Kind::Proto,
            });
        let qualifiers = match (proto, dir, kind) {
            (Some(p), None, None) => {
                self.last = None;
                return Ok(protocol_expr(p));
            }
            (None, None, None) => match self.peek() {
                // A bare value repeats the previous qualifiers.
                Some(w) if is_value(w) => self.last.unwrap_or(Qualifiers {
                    proto: None,
                    dir: None,
                    kind: Kind::Host,
                }),
                _ => return Err(self.error("a primitive (host, net, port, tcp, …) or \"(\"")),
            },
            (_, Some(_), Some(Kind::Proto)) => {
                return Err(self.error_before("src/dst apply to host, net, port and portrange"));
            }
            (proto, dir, kind) => Qualifiers {
                proto,
                dir,
                kind: kind.unwrap_or(Kind::Host),
            },
        };
        let expr = self.value(qualifiers)?;
        self.last = Some(qualifiers);
        Ok(match qualifiers.proto {
            Some(p) => Expr::And(Box::new(protocol_expr(p)), Box::new(expr)),
            None => expr,
        })
    }

    /// The value of a primitive with `q`.
    fn value(&mut self, q: Qualifiers) -> Result<Expr, String> {
        let expected = match q.kind {
            Kind::Host => "an address",
            Kind::Net => "a prefix ADDRESS/LENGTH",
            Kind::Port => "a port number",
            Kind::PortRange => "a port range N-M",
            Kind::Proto => "a protocol number or name",
        };
        let Some(word) = self.peek().filter(|w| is_value(w) || q.kind == Kind::Proto) else {
            return Err(self.error(expected));
        };
        self.next += 1;
        let dir = q.dir.unwrap_or(Dir::Either);
        let bad = |this: &Self| Err(this.error_before(&format!("expected {expected}")));
        let port = |w: &str| w.parse::<u16>().ok();
        Ok(match q.kind {
            Kind::Host | Kind::Net => {
                let (addr, len) = match word.split_once('/') {
                    Some(_) if q.kind == Kind::Host => {
                        return Err(
                            self.error_before("a host is one address; use net for a prefix")
                        );
                    }
                    Some((a, l)) => (a, l.parse::<u8>().ok()),
                    None => (word, None),
                };
                let Ok(addr) = addr.parse::<IpAddr>() else {
                    return bad(self);
                };
                let (version, raw) = raw_addr(addr);
                let width = if version == IpVersion::V4 { 32 } else { 128 };
                let len = match (q.kind, len) {
                    (Kind::Host, _) => width,
                    (_, Some(len)) if len <= width => len,
                    (_, None) if word.contains('/') => return bad(self),
                    (_, None) => width,
                    _ => return Err(self.error_before(&format!("a prefix length is 0 to {width}"))),
                };
                if masked(&raw, len) != raw {
                    return Err(self.error_before("host bits are set in the prefix"));
                }
                Expr::Net {
                    dir,
                    version,
                    addr: raw,
                    len,
                }
            }
            Kind::Port => match port(word) {
                Some(p) => Expr::Port { dir, lo: p, hi: p },
                None => return bad(self),
            },
            Kind::PortRange => match word.split_once('-').map(|(a, b)| (port(a), port(b))) {
                Some((Some(lo), Some(hi))) if lo <= hi => Expr::Port { dir, lo, hi },
                _ => return bad(self),
            },
            Kind::Proto => {
                let number = match word {
                    "tcp" => Some(proto::TCP),
                    "udp" => Some(proto::UDP),
                    "icmp" => Some(proto::ICMP),
                    "icmp6" | "icmpv6" => Some(proto::ICMPV6),
                    w => w.parse::<u8>().ok(),
                };
                let Some(number) = number else {
                    return bad(self);
                };
                let version = match q.proto {
                    Some("ip") => Some(IpVersion::V4),
                    Some("ip6") => Some(IpVersion::V6),
                    Some(p) => {
                        return Err(
                            self.error_before(&format!("proto applies to ip or ip6, not to {p}"))
                        );
                    }
                    None => None,
                };
                // `ip proto N` is one primitive: the qualifier is its family.
                return Ok(Expr::Protocol(number, version));
            }
        })
    }
}

/// `addr` with the bits after the first `len` cleared.
fn masked(addr: &RawAddr, len: u8) -> RawAddr {
    let mut out = [0u8; 16];
    for (i, byte) in addr.iter().enumerate() {
        let keep = (usize::from(len)).saturating_sub(i * 8).min(8);
        out[i] = if keep == 0 {
            0
        } else {
            byte & (0xffu8 << (8 - keep))
        };
    }
    out
}

impl CaptureFilter {
    /// Parses `text`; the error names the column and what was expected.
    pub fn parse(text: &str) -> Result<CaptureFilter, String> {
        let err = |e: String| format!("capture filter: {e}");
        if text.len() > MAX_LEN {
            return Err(err(format!("longer than {MAX_LEN} bytes")));
        }
        let mut parser = Parser {
            tokens: tokenize(text).map_err(err)?,
            next: 0,
            depth: 0,
            last: None,
        };
        if parser.tokens.is_empty() {
            return Err(err("empty expression".into()));
        }
        let expr = parser.or().map_err(err)?;
        if parser.next < parser.tokens.len() {
            return Err(err(parser.error("\"and\", \"or\" or the end")));
        }
        Ok(CaptureFilter { expr })
    }

    /// Whether the raw IP packet `bytes` passes the filter.
    pub fn matches(&self, bytes: &[u8]) -> bool {
        super::parse(bytes).is_ok_and(|p| eval(&self.expr, &p))
    }
}

fn eval(expr: &Expr, p: &Packet) -> bool {
    match expr {
        Expr::Or(a, b) => eval(a, p) || eval(b, p),
        Expr::And(a, b) => eval(a, p) && eval(b, p),
        Expr::Not(a) => !eval(a, p),
        Expr::Version(v) => p.version == *v,
        Expr::Protocol(n, v) => p.protocol == *n && v.is_none_or(|v| v == p.version),
        Expr::Net {
            dir,
            version,
            addr,
            len,
        } => p.version == *version && dir.test(&p.src, &p.dst, |a| masked(a, *len) == *addr),
        Expr::Port { dir, lo, hi } => p
            .ports()
            .is_some_and(|(s, d)| dir.test(s, d, |port| (*lo..=*hi).contains(&port))),
    }
}

#[cfg(test)]
#[path = "pcap_filter_tests.rs"]
mod tests;
