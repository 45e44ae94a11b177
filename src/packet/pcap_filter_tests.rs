use super::*;
use crate::testkit::{SYN, echo, ep, fragments, raw, tcp, udp};

fn f(text: &str) -> CaptureFilter {
    CaptureFilter::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn err(text: &str) -> String {
    CaptureFilter::parse(text).expect_err(text)
}

const A: &str = "198.18.1.10";
const B: &str = "198.18.2.20";

fn tcp4(sport: u16, dport: u16) -> Vec<u8> {
    tcp(ep(A, sport), ep(B, dport), SYN, 1, 0, 64240, None, &[])
}

fn udp4(sport: u16, dport: u16) -> Vec<u8> {
    udp(ep(A, sport), ep(B, dport), b"q")
}

fn udp6(sport: u16, dport: u16) -> Vec<u8> {
    udp(ep("fd00:1::10", sport), ep("fd00:2::20", dport), b"q")
}

#[test]
fn protocols_and_families() {
    let (t, u, u6) = (tcp4(5555, 22), udp4(5353, 53), udp6(5353, 53));
    let (ping, ping6) = (
        echo(A, B, true, 7, 1),
        echo("fd00:1::10", "fd00:2::20", true, 7, 1),
    );
    let gre = raw(A, B, 47);
    let cases: [(&str, [bool; 6]); 9] = [
        ("tcp", [true, false, false, false, false, false]),
        ("udp", [false, true, true, false, false, false]),
        ("icmp", [false, false, false, true, false, false]),
        ("icmp6", [false, false, false, false, true, false]),
        ("ip", [true, true, false, true, false, true]),
        ("ip6", [false, false, true, false, true, false]),
        ("proto 47", [false, false, false, false, false, true]),
        ("ip6 proto udp", [false, false, true, false, false, false]),
        (
            "not ip6 and not tcp",
            [false, true, false, true, false, true],
        ),
    ];
    for (text, want) in cases {
        let filter = f(text);
        let got = [&t, &u, &u6, &ping, &ping6, &gre].map(|p| filter.matches(p));
        assert_eq!(got, want, "{text}");
    }
}

#[test]
fn hosts_nets_and_directions() {
    let out = tcp4(5555, 22);
    let back = tcp(ep(B, 22), ep(A, 5555), SYN, 1, 0, 64240, None, &[]);
    let cases = [
        ("host 198.18.1.10", true, true),
        ("src host 198.18.1.10", true, false),
        ("dst 198.18.1.10", false, true),
        ("198.18.2.20", true, true),
        ("net 198.18.2.0/24", true, true),
        ("src net 198.18.0.0/15", true, true),
        ("src and dst net 198.18.0.0/15", true, true),
        ("src and dst net 198.18.1.0/24", false, false),
        ("src or dst net 198.18.1.0/24", true, true),
        ("net 198.19.0.0/16", false, false),
        ("host fd00:1::10", false, false),
        ("net ::/0", false, false),
        ("net 0.0.0.0/0", true, true),
    ];
    for (text, want_out, want_back) in cases {
        let filter = f(text);
        assert_eq!(
            (filter.matches(&out), filter.matches(&back)),
            (want_out, want_back),
            "{text}"
        );
    }
    assert!(f("src net fd00:1::/32").matches(&udp6(1, 2)));
    assert!(!f("dst net fd00:1::/32").matches(&udp6(1, 2)));
}

#[test]
fn ports_ranges_and_protocol_qualifiers() {
    let cases = [
        ("port 22", true, false),
        ("dst port 22", true, false),
        ("src port 22", false, false),
        ("tcp port 53", false, false),
        ("udp port 53", false, true),
        ("port 53 or 22", true, true),
        ("portrange 20-60", true, true),
        ("udp dst portrange 50-60", false, true),
        ("src portrange 5000-6000 and not tcp", false, true),
    ];
    let (t, u) = (tcp4(5555, 22), udp4(5353, 53));
    for (text, want_t, want_u) in cases {
        let filter = f(text);
        assert_eq!(
            (filter.matches(&t), filter.matches(&u)),
            (want_t, want_u),
            "{text}"
        );
    }
    // ICMP and later fragments have no ports.
    assert!(!f("port 0").matches(&echo(A, B, true, 0, 0)));
    let big = udp(ep(A, 5353), ep(B, 53), &[7u8; 200]);
    let frags = fragments(&big, 64, 9);
    assert!(f("udp port 53").matches(&frags[0]));
    assert!(!f("udp port 53").matches(&frags[1]));
    assert!(f("udp and host 198.18.2.20").matches(&frags[1]));
}

#[test]
fn precedence_parentheses_and_repeated_qualifiers() {
    let (t, u) = (tcp4(5555, 22), udp4(5353, 53));
    // and binds tighter than or; not tighter than and.
    let filter = f("udp or tcp and port 80");
    assert!(filter.matches(&u) && !filter.matches(&t));
    let filter = f("(udp or tcp) and port 22");
    assert!(!filter.matches(&u) && filter.matches(&t));
    let filter = f("! udp && ( port 22 || port 23 )");
    assert!(!filter.matches(&u) && filter.matches(&t));
    // A bare value repeats the last qualifiers, as tcpdump does.
    assert_eq!(
        f("host 198.18.9.9 or 198.18.1.10"),
        f("host 198.18.9.9 or host 198.18.1.10")
    );
    assert_eq!(
        f("tcp dst port 1 or 22"),
        f("tcp dst port 1 or tcp dst port 22")
    );
    assert_eq!(f("port 1 and not 2"), f("port 1 and not port 2"));
    assert!(f("tcp dst port 1 or 22").matches(&t));
}

#[test]
fn unparseable_packets_match_nothing() {
    let filter = f("not tcp");
    assert!(!filter.matches(&[]));
    assert!(!filter.matches(&[0x45, 0, 0]));
    assert!(!filter.matches(&[0x10; 40]));
}

#[test]
fn bad_expressions_name_the_column_and_what_was_expected() {
    let cases = [
        ("", "empty expression"),
        ("tcp and", "at the end: expected a primitive"),
        ("host", "at the end: expected an address"),
        (
            "host 198.18.1.300",
            "column 6: \"198.18.1.300\": expected an address",
        ),
        ("port 70000", "column 6: \"70000\": expected a port number"),
        (
            "port 22 udp",
            "column 9: expected \"and\", \"or\" or the end, found \"udp\"",
        ),
        ("(tcp or udp", "at the end: expected \")\""),
        ("tcp )", "column 5: expected \"and\", \"or\" or the end"),
        (
            "net 198.18.1.1/24",
            "column 5: \"198.18.1.1/24\": host bits are set",
        ),
        ("net 198.18.0.0/33", "a prefix length is 0 to 32"),
        ("host 198.18.0.0/16", "use net for a prefix"),
        ("portrange 60-50", "expected a port range N-M"),
        (
            "src proto 6",
            "src/dst apply to host, net, port and portrange",
        ),
        ("tcp proto 6", "proto applies to ip or ip6, not to tcp"),
        ("tcp or 80", "column 8: \"80\": expected an address"),
        ("port 22 = 3", "column 9: unexpected \"=\""),
        ("and tcp", "column 1: expected a primitive"),
    ];
    for (text, want) in cases {
        let e = err(text);
        assert!(e.starts_with("capture filter: "), "{text}: {e}");
        assert!(e.contains(want), "{text}: {e}");
    }
    let deep = format!("{}tcp", "not ".repeat(MAX_DEPTH + 1));
    assert!(err(&deep).contains("nested deeper than"));
    let deep = format!("{}tcp{}", "(".repeat(100), ")".repeat(100));
    assert!(err(&deep).contains("nested deeper than"));
    assert!(err(&"tcp or ".repeat(1000)).contains("longer than"));
}

proptest::proptest! {
    /// Whatever the input, parsing never panics, and an expression that
    /// parses never panics on any packet.
    #[test]
    fn arbitrary_text_and_packets_never_panic(
        text in "[ a-z0-9.:/()!&|-]{0,60}",
        packet in proptest::collection::vec(proptest::num::u8::ANY, 0..80),
    ) {
        if let Ok(filter) = CaptureFilter::parse(&text) {
            let _ = filter.matches(&packet);
            let _ = filter.matches(&tcp4(1, 2));
        }
    }
}
