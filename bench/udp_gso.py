#!/usr/bin/env python3
"""A UDP GSO sender and a counting receiver (as QUIC stacks send).

  udp_gso.py send DST PORT [--segment 1200] [--write 48000] [--count N | --seconds S] [--pace-us U]
  udp_gso.py send DST PORT --segment 0 [--write 100] [--count N] [--burst B --pace-us U]
  udp_gso.py recv ADDR PORT [--idle 1.0] [--timeout 30] [--gro] [--check]

`send` sets UDP_SEGMENT so that each write of `--write` bytes leaves the
socket as one superframe of `--write / --segment` datagrams (the last one
shorter if it does not divide). `recv` counts datagrams and bytes until no
datagram came for `--idle` seconds; with `--gro` the socket accepts
coalesced datagrams (UDP_GRO) and counts the segments of each. Both print
one JSON line. Used by the end-to-end test of UDP superframes and by
bench/throughput.py (mode udp-gso).

With `--segment 0` the sender writes plain numbered datagrams of `--write`
bytes (every 7th half as long), `--burst` at a time between pauses, as a
flood of small datagrams arrives; `recv --check` then counts those that
arrive out of order or with other bytes than were sent (the end-to-end test
of coalescing on write).
"""

import argparse
import json
import socket
import struct
import time

SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
SO_RCVBUFFORCE = 33


def family(addr):
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def numbered(seq, size):
    """Datagram `seq` of `size` bytes: its number, then bytes that depend on it."""
    head = struct.pack("!I", seq)
    return head + bytes((seq + i) & 0xFF for i in range(max(0, size - len(head))))


def send_numbered(s, o):
    sent = 0
    while sent < o.count:
        for _ in range(min(o.burst, o.count - sent)):
            while True:
                try:
                    s.send(numbered(sent, o.write // 2 if sent % 7 == 6 else o.write))
                    break
                except (ConnectionRefusedError, BlockingIOError):
                    continue
            sent += 1
        if o.pace_us:
            time.sleep(o.pace_us / 1e6)
    print(json.dumps({"writes": sent, "datagrams": sent}))


def send(o):
    s = socket.socket(family(o.addr), socket.SOCK_DGRAM)
    if o.segment == 0:
        s.connect((o.addr, o.port))
        return send_numbered(s, o)
    s.setsockopt(SOL_UDP, UDP_SEGMENT, o.segment)
    s.connect((o.addr, o.port))
    payload = b"q" * o.write
    per_write = -(-o.write // o.segment)
    writes = 0
    end = time.time() + o.seconds if o.seconds else None
    while (end is None and writes < o.count) or (end is not None and time.time() < end):
        try:
            s.send(payload)
        except (ConnectionRefusedError, BlockingIOError):
            continue
        writes += 1
        if o.pace_us:
            time.sleep(o.pace_us / 1e6)
    print(json.dumps({"writes": writes, "datagrams": writes * per_write, "bytes": writes * o.write}))


def recv(o):
    s = socket.socket(family(o.addr), socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 << 20)
    if o.gro:
        s.setsockopt(SOL_UDP, UDP_GRO, 1)
    s.bind((o.addr, o.port))
    s.settimeout(o.timeout)
    datagrams = total = out_of_order = corrupt = 0
    expected = 0
    sizes = {}
    first = last = None
    while True:
        try:
            data, anc, _, _ = s.recvmsg(65535, 64)
        except socket.timeout:
            break
        last = time.time()
        if first is None:
            first = last
            s.settimeout(o.idle)
        segment = len(data)
        for level, kind, value in anc:
            if level == SOL_UDP and kind == UDP_GRO:
                segment = struct.unpack("i", value[:4])[0]
        n = -(-len(data) // segment) if segment else 1
        datagrams += n
        total += len(data)
        if not o.gro:
            sizes[len(data)] = sizes.get(len(data), 0) + 1
        if o.check and len(data) >= 4:
            seq = struct.unpack("!I", data[:4])[0]
            out_of_order += seq < expected
            expected = max(expected, seq + 1)
            corrupt += data != numbered(seq, len(data))
        elif o.check:
            corrupt += 1
    print(json.dumps({"datagrams": datagrams, "bytes": total, "sizes": sizes,
                      "out_of_order": out_of_order, "corrupt": corrupt,
                      "seconds": (last - first) if first else 0.0}))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("send")
    a.add_argument("addr")
    a.add_argument("port", type=int)
    a.add_argument("--segment", type=int, default=1200)
    a.add_argument("--write", type=int, default=48000)
    a.add_argument("--count", type=int, default=100)
    a.add_argument("--seconds", type=float, default=0.0)
    a.add_argument("--pace-us", type=float, default=0.0)
    a.add_argument("--burst", type=int, default=1)
    b = sub.add_parser("recv")
    b.add_argument("addr")
    b.add_argument("port", type=int)
    b.add_argument("--idle", type=float, default=1.0)
    b.add_argument("--timeout", type=float, default=30.0)
    b.add_argument("--gro", action="store_true")
    b.add_argument("--check", action="store_true")
    o = ap.parse_args()
    send(o) if o.cmd == "send" else recv(o)


if __name__ == "__main__":
    main()
