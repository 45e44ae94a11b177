#!/usr/bin/env python3
"""End-to-end throughput: tunwall beside a plain TUN copy and the kernel.

Builds, in network namespaces of its own (addresses from 198.18.0.0/15):

* tunwall   client ns --TUN--> tunwall (configs-like demo policy) --TUN--> server ns
* copy      the same, through `tunwall-copy`: tunwall's I/O path with no engine
* kernel    client ns --veth--> router ns (ip_forward, nftables conntrack:
            ct state established,related accept; new from the client side
            accept; policy drop) --veth--> server ns
* tunwall-1w  tunwall with one worker (TCP 4 streams only: worker scaling)
* tunwall-nat tunwall with the same policy plus a `bind_redirect` masquerade
            filter: the server sees the gateway's address 198.18.2.1 (SPEC §9)
* tunwall-plain, copy-plain  tunwall and the copy with TUNWALL_IO_URING=off:
            one write(2) per packet instead of a loop turn's writes batched
            through io_uring (src/io/uring.rs)

and measures, alternating the modes and repeating each at least 3 times:
iperf3 TCP 1 stream, TCP 4 streams, UDP 64-byte packets/s (`udp64`: an
unpaced flood; `udp64paced`: the same offered rate for every mode,
`--udp-pps`, default 100 000), and (`--tests
udpgso`, bench/udp_gso.py) UDP superframes: a UDP_SEGMENT sender against a
UDP_GRO receiver, in Gbit/s and datagrams lost, and (`--tests connrate`,
bench/connrate.rs) complete TCP connections per second. Before every
measurement it waits for an idle machine; a measurement whose wait timed out
is marked disturbed and left out of the medians. Prints medians, min-max and
the ratios tunwall/copy and tunwall/kernel, and writes everything as JSON.

Run as root: `python3 bench/throughput.py [--reps 3] [--seconds 5] [--json out.json]`
(`--modes tunwall,tunwall-nat` picks modes; `--tests tcp1` picks tests)
(`make bench-e2e` builds the binaries first).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TUNWALL = os.path.join(ROOT, "target", "release", "tunwall")
COPY = os.path.join(ROOT, "target", "release", "tunwall-copy")
CONNRATE = os.path.join(ROOT, "target", "release", "tunwall-connrate")
CLIENT, SERVER = "198.18.1.10", "198.18.2.20"
# The masquerade address of `tunwall-nat`: in the server's on-link prefix,
# so the server's kernel sends its answers into tunwall.
PUBLIC = "198.18.2.1"
MODES = ["tunwall", "copy", "kernel", "tunwall-1w", "tunwall-nat", "tunwall-plain", "copy-plain"]


def sh(*args, check=True, **kw):
    return subprocess.run(args, check=check, capture_output=True, text=True, **kw)


def cpu_idle_fraction(interval=0.5):
    def read():
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        return fields[3] + fields[4], sum(fields)

    idle1, total1 = read()
    time.sleep(interval)
    idle2, total2 = read()
    return (idle2 - idle1) / max(1, total2 - total1)


def wait_for_idle(threshold=0.85, timeout=20.0):
    """Waits until the machine is idle; False if it never became so."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cpu_idle_fraction() >= threshold:
            return True
    return False


class Topology:
    def __init__(self, mode, tag, offload=True, workers=2):
        self.mode, self.offload, self.workers = mode, offload, workers
        self.client, self.server = f"twb{tag}c", f"twb{tag}s"
        self.router = f"twb{tag}r"
        self.proc = None
        self.dir = tempfile.mkdtemp(prefix=f"tunwall-bench-{mode}-")
        self.log = None

    def netns(self):
        return [self.client, self.server] + ([self.router] if self.mode == "kernel" else [])

    def up(self):
        for ns in self.netns():
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        if self.mode == "kernel":
            self._kernel()
        else:
            self._tun()

    def _tun(self):
        tag = self.client[3:-1]
        config = os.path.join(self.dir, "bench.toml")
        with open(config, "w") as f:
            f.write(f"""
[gateway]
workers = {self.workers}
offload = {str(self.offload).lower()}
control_socket = "{self.dir}/control.sock"

[[port]]
name = "lan"
device = "twbl{tag}"
zone = "inside"
netns = "{self.client}"
addresses = ["{CLIENT}/24"]
kernel_routes = ["198.18.2.0/24"]
routes = ["198.18.1.0/24"]

[[port]]
name = "wan"
device = "twbw{tag}"
zone = "outside"
netns = "{self.server}"
addresses = ["{SERVER}/24"]
kernel_routes = ["198.18.1.0/24"]
routes = ["198.18.2.0/24"]

[[filter]]
name = "no-telnet"
layer = "auth_connect"
action = "block"
protocol = "tcp"
remote_port = [23, 2323]
""")
            if self.mode == "tunwall-nat":
                f.write(f"""
[[filter]]
name = "masquerade"
layer = "bind_redirect"
action = "redirect"
arrival_port = "lan"
to_address = "{PUBLIC}"
""")
        self.log = open(os.path.join(self.dir, "log"), "w")
        cmd = [TUNWALL, "run", "-c", config] if self.mode.startswith("tunwall") else [COPY, config]
        env = dict(os.environ)
        if self.mode.endswith("-plain"):
            env["TUNWALL_IO_URING"] = "off"
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.log, env=env)
        for _ in range(200):
            if sh("ip", "netns", "exec", self.client, "ping", "-c", "1", "-W", "1", SERVER, check=False).returncode == 0:
                if self.mode == "tunwall-nat":
                    self._check_masquerade()
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.mode} exited: " + open(os.path.join(self.dir, "log")).read())
            time.sleep(0.1)
        raise RuntimeError(f"{self.mode} did not come up")

    def _check_masquerade(self):
        """The ping went out translated: a port (ICMP id) is mapped."""
        out = sh(TUNWALL, "stats", "-s", f"{self.dir}/control.sock", "--json").stdout
        if json.loads(out).get("nat", {}).get("ports_in_use", 0) < 1:
            raise RuntimeError(f"tunwall-nat: nothing translated: {out}")

    def _kernel(self):
        c, s, r = self.client, self.server, self.router
        sh("ip", "link", "add", "c0", "netns", c, "type", "veth", "peer", "r0", "netns", r)
        sh("ip", "link", "add", "s0", "netns", s, "type", "veth", "peer", "r1", "netns", r)
        for ns, dev, addr in [(c, "c0", f"{CLIENT}/24"), (r, "r0", "198.18.1.1/24"), (r, "r1", "198.18.2.1/24"), (s, "s0", f"{SERVER}/24")]:
            sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", c, "route", "add", "198.18.2.0/24", "via", "198.18.1.1")
        sh("ip", "-n", s, "route", "add", "198.18.1.0/24", "via", "198.18.2.1")
        sh("ip", "netns", "exec", r, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        rules = """
table inet tunwall_bench {
  chain forward {
    type filter hook forward priority 0; policy drop;
    ct state established,related accept
    iifname "r0" ct state new accept
  }
}
"""
        subprocess.run(["ip", "netns", "exec", r, "nft", "-f", "-"], input=rules, text=True, check=True)

    def tun_drops(self):
        """Packets the kernel dropped because tunwall did not read them in time
        (TX drops of the TUN devices, in both namespaces)."""
        if self.mode == "kernel":
            return None
        total = 0
        for ns in [self.client, self.server]:
            out = sh("ip", "-n", ns, "-s", "-j", "link", "show", check=False).stdout
            for link in json.loads(out or "[]"):
                if link.get("ifname", "").startswith("twb"):
                    total += link.get("stats64", {}).get("tx", {}).get("dropped", 0)
        return total

    def pid(self):
        if self.mode == "kernel":
            return None
        return self.proc.pid

    def down(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        for ns in self.netns():
            sh("ip", "netns", "del", ns, check=False)
        if self.log:
            self.log.close()


def process_cpu_seconds(pid):
    if pid is None:
        return 0.0
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


GSO = os.path.join(ROOT, "bench", "udp_gso.py")


def measure_udp_gso(topo, seconds):
    """UDP superframes: a UDP_SEGMENT sender (48 000-byte writes of 1200-byte
    datagrams, as QUIC stacks send) against a UDP_GRO receiver; received
    bytes over the receiver's first-to-last datagram time."""
    server = subprocess.Popen(["ip", "netns", "exec", topo.server, "python3", GSO, "recv", SERVER, "5201", "--gro",
                               "--idle", "1.0"], stdout=subprocess.PIPE, text=True)
    time.sleep(0.3)
    cpu0 = process_cpu_seconds(topo.pid())
    drops0 = topo.tun_drops()
    sent = json.loads(sh("ip", "netns", "exec", topo.client, "python3", GSO, "send", SERVER, "5201",
                         "--segment", "1200", "--write", "48000", "--seconds", str(seconds)).stdout)
    cpu1 = process_cpu_seconds(topo.pid())
    drops = None if drops0 is None else topo.tun_drops() - drops0
    got = json.loads(server.communicate(timeout=seconds + 30)[0])
    value = got["bytes"] * 8 / max(got["seconds"], 1e-9) / 1e9
    return {"value": value, "unit": "Gbit/s", "datagrams_sent": sent["datagrams"], "datagrams_received": got["datagrams"],
            "lost_percent": 100.0 * (1 - got["datagrams"] / max(1, sent["datagrams"])), "cpu_seconds": cpu1 - cpu0,
            "tun_drops": drops}


def measure_connrate(topo, seconds):
    """Complete TCP connections per second (bench/connrate.rs): 16 client
    threads, each connect, a 32-byte request, a 64-byte answer, the server's
    close, over and over."""
    sh("ip", "netns", "exec", topo.client, "sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65000")
    server = subprocess.Popen(["ip", "netns", "exec", topo.server, CONNRATE, "server", f"{SERVER}:8080", "4"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        cpu0 = process_cpu_seconds(topo.pid())
        out = json.loads(sh("ip", "netns", "exec", topo.client, CONNRATE, "client", f"{SERVER}:8080", str(seconds),
                            "16").stdout)
        cpu1 = process_cpu_seconds(topo.pid())
    finally:
        server.kill()
        server.wait()
    return {"value": out["rate"], "unit": "connections/s", "failed": out["failed"],
            "cpu_us_per_connection": (cpu1 - cpu0) * 1e6 / max(1, out["connections"]) if topo.pid() else None}


def measure(topo, test, seconds, udp_pps):
    if test == "udpgso":
        return measure_udp_gso(topo, seconds)
    if test == "connrate":
        return measure_connrate(topo, seconds)
    server = subprocess.Popen(["ip", "netns", "exec", topo.server, "iperf3", "-s", "-1", "-B", SERVER],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    args = ["ip", "netns", "exec", topo.client, "iperf3", "-c", SERVER, "-t", str(seconds), "-J"]
    if test == "tcp4":
        args += ["-P", "4"]
    if test == "udp64":
        args += ["-u", "-l", "64", "-b", "0"]
    if test == "udp64paced":
        # The same offered load for every mode: the loss compares at a rate
        # the kernel carries, which an unpaced flood does not show (TUN
        # never pushes back on a sender, the kernel's forwarding path does).
        args += ["-u", "-l", "64", "-b", str(udp_pps * 64 * 8), "--pacing-timer", "100"]
    cpu0 = process_cpu_seconds(topo.pid())
    drops0 = topo.tun_drops()
    out = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 30)
    cpu1 = process_cpu_seconds(topo.pid())
    drops = None if drops0 is None else topo.tun_drops() - drops0
    server.wait(timeout=10)
    report = json.loads(out.stdout)
    if "error" in report:
        raise RuntimeError(f"iperf3 {test} through {topo.mode}: {report['error']}")
    end = report["end"]
    if test in ("udp64", "udp64paced"):
        s = end["sum"]
        received = s["packets"] - s["lost_packets"]
        value = received / s["seconds"]
        cpu_ns = (cpu1 - cpu0) * 1e9 / max(1, received) if topo.pid() else None
        return {"value": value, "unit": "packets/s", "lost_percent": s["lost_percent"], "cpu_ns_per_packet": cpu_ns,
                "tun_drops": drops}
    value = end["sum_received"]["bits_per_second"] / 1e9
    return {"value": value, "unit": "Gbit/s", "retransmits": end["sum_sent"].get("retransmits"),
            "cpu_seconds": cpu1 - cpu0, "tun_drops": drops}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--offload", choices=["on", "off"], default="on")
    ap.add_argument("--json", default=os.path.join(ROOT, "target", "throughput.json"))
    ap.add_argument("--tests", default="tcp1,tcp4,udp64")
    ap.add_argument("--udp-pps", type=int, default=100_000,
                    help="the offered rate of udp64paced, in 64-byte datagrams per second")
    ap.add_argument("--modes", default="tunwall,copy,kernel,tunwall-1w",
                    help="comma-separated, of: " + ", ".join(MODES))
    opts = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("throughput.py: run as root (it creates network namespaces)")
    # nft only for the kernel mode.
    for tool in ["iperf3", "ip"] + (["nft"] if "kernel" in opts.modes.split(",") else []):
        if sh("sh", "-c", f"command -v {tool}", check=False).returncode != 0:
            sys.exit(f"throughput.py: {tool} is missing (make deps installs it)")
    for binary in [TUNWALL, COPY, CONNRATE]:
        if not os.path.exists(binary):
            sys.exit(f"throughput.py: {binary} is missing: cargo build --release")
    offload = opts.offload == "on"
    tests = opts.tests.split(",")
    wanted = opts.modes.split(",")
    unknown = [m for m in wanted if m not in MODES]
    if unknown:
        sys.exit(f"throughput.py: unknown mode(s) {', '.join(unknown)}; known: {', '.join(MODES)}")
    tag = os.getpid() % 100000
    topos = {
        "tunwall": Topology("tunwall", f"{tag}a", offload),
        "copy": Topology("copy", f"{tag}b", offload),
        "kernel": Topology("kernel", f"{tag}k"),
        "tunwall-1w": Topology("tunwall-1w", f"{tag}w", offload, workers=1),
        "tunwall-nat": Topology("tunwall-nat", f"{tag}n", offload),
        "tunwall-plain": Topology("tunwall-plain", f"{tag}p", offload),
        "copy-plain": Topology("copy-plain", f"{tag}q", offload),
    }
    topos = {m: t for m, t in topos.items() if m in wanted}
    results = {m: {t: [] for t in tests} for m in topos}
    cc = open("/proc/sys/net/ipv4/tcp_congestion_control").read().strip()
    try:
        for t in topos.values():
            t.up()
        for rep in range(opts.reps):
            for test in tests:
                modes = [m for m in topos if m != "tunwall-1w" or test == "tcp4"]
                # Alternate the order so no mode always runs first.
                modes = modes[rep % len(modes):] + modes[:rep % len(modes)]
                for mode in modes:
                    calm = wait_for_idle()
                    r = measure(topos[mode], test, opts.seconds, opts.udp_pps)
                    r["disturbed"] = not calm
                    results[mode][test].append(r)
                    print(f"  rep {rep + 1} {test:<6} {mode:<11} {r['value']:>12.2f} {r['unit']}{'  (disturbed)' if not calm else ''}",
                          flush=True)
    finally:
        for t in topos.values():
            t.down()

    def summary(samples):
        values = [s["value"] for s in samples if not s["disturbed"]] or [s["value"] for s in samples]
        return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)} if values else None

    table = {m: {t: summary(results[m][t]) for t in tests if results[m][t]} for m in results}
    print(f"\ntunwall throughput (offload {opts.offload}, congestion control {cc}, {os.cpu_count()} CPUs, "
          f"{opts.reps} reps x {opts.seconds} s)")
    print(f"{'test':<7} {'mode':<11} {'median':>12} {'min':>12} {'max':>12}")
    for test in tests:
        for mode in table:
            s = table[mode].get(test)
            if s:
                unit = {"udp64": "pps", "udp64paced": "pps", "connrate": "conn/s"}.get(test, "Gbit/s")
                print(f"{test:<7} {mode:<11} {s['median']:>12.2f} {s['min']:>12.2f} {s['max']:>12.2f} {unit}")
    ratios = {}
    for test in tests:
        # Each ratio where both its modes ran.
        for mode, other in [("tunwall", "copy"), ("tunwall", "kernel"), ("tunwall-nat", "tunwall"),
                            ("tunwall", "tunwall-plain"), ("copy", "copy-plain"), ("tunwall-plain", "kernel")]:
            tw = table.get(mode, {}).get(test)
            o = table.get(other, {}).get(test)
            if tw and o and o["median"]:
                ratios[f"{test} {mode}/{other}"] = tw["median"] / o["median"]
    if "tcp4" in tests and table.get("tunwall-1w", {}).get("tcp4") and table.get("tunwall", {}).get("tcp4"):
        ratios["tcp4 workers 2/1"] = table["tunwall"]["tcp4"]["median"] / table["tunwall-1w"]["tcp4"]["median"]
    udp_cpu = [s["cpu_ns_per_packet"] for s in results.get("tunwall", {}).get("udp64", []) if s.get("cpu_ns_per_packet")]
    for mode in [m for m in topos if m != "kernel"]:
        drops = {t: sum(s.get("tun_drops") or 0 for s in results[mode][t]) for t in tests}
        print(f"TUN queue drops, {mode}: " + ", ".join(f"{t} {n}" for t, n in drops.items()))
    for mode in topos:
        for t in [t for t in ["udp64", "udp64paced", "udpgso"] if t in tests]:
            lost = [s["lost_percent"] for s in results[mode][t]]
            if lost:
                print(f"datagrams lost, {t} {mode}: median {statistics.median(lost):.2f} % "
                      f"(min {min(lost):.2f}, max {max(lost):.2f})")
    for mode in topos:
        for t, key in [("udp64", "cpu_ns_per_packet"), ("udp64paced", "cpu_ns_per_packet"),
                       ("connrate", "cpu_us_per_connection")]:
            v = [x[key] for x in results[mode].get(t, []) if x.get(key)]
            if v:
                print(f"{key}, {mode}: median {statistics.median(v):.1f} (min {min(v):.1f}, max {max(v):.1f})")
    print("\nratios (medians):")
    for k, v in ratios.items():
        print(f"  {k:<24} {v:.3f}")
    if udp_cpu:
        print(f"  tunwall CPU per UDP packet: {statistics.median(udp_cpu):.0f} ns (process CPU time / packets received)")
    doc = {"congestion_control": cc, "offload": opts.offload, "cpus": os.cpu_count(), "reps": opts.reps,
           "seconds": opts.seconds, "samples": results, "summary": table, "ratios": ratios,
           "tunwall_udp_cpu_ns_per_packet": statistics.median(udp_cpu) if udp_cpu else None,
           "kernel": os.uname().release, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    os.makedirs(os.path.dirname(opts.json), exist_ok=True)
    with open(opts.json, "w") as f:
        json.dump(doc, f, indent=2)
    print(f"\nresults: {opts.json}")


if __name__ == "__main__":
    main()
