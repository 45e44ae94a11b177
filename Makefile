# tunwall — the README's two commands are `make demo` and `make test`.
# Both install what they need on a fresh Debian machine (run as root).

CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

# Programs the demo and the end-to-end tests drive, and their Debian packages.
# (`ip` builds the tests' namespaces; the gateway itself needs no iproute2.)
TOOLS := ip:iproute2 ss:iproute2 ping:iputils-ping iperf3:iperf3 nc:netcat-openbsd python3:python3 \
	sysctl:procps setpriv:util-linux unshare:util-linux nsenter:util-linux systemd-analyze:systemd dpkg-shlibdeps:dpkg-dev \
	wireguard-go:wireguard-go wg:wireguard-tools jq:jq tcpdump:tcpdump tshark:tshark curl:curl \
	keepalived:keepalived
# What bench/throughput.py drives besides TOOLS (not needed by `make test`).
BENCH_TOOLS := nft:nftables

.PHONY: all build release test lint unit unit-verify bench bench-e2e deps-bench demo demo-vpn demo-ha deps deps-build clean fuzz fuzz-cmin deb deb-test

all: build

deps-build:
	@command -v $(CARGO) >/dev/null || { echo "make: cargo not found: install a Rust toolchain (rustup)" >&2; exit 1; }
	$(CARGO) fetch --locked

# Installs the missing tools with apt-get (needs root; skipped if all are present).
deps:
	@missing=""; for t in $(TOOLS); do command -v $${t%%:*} >/dev/null || missing="$$missing $${t##*:}"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

build: deps-build
	$(CARGO) build --locked

release: deps-build
	$(CARGO) build --locked --release

# Every test: formatting, lints, unit tests, engine scenarios, property tests,
# policy tests and the end-to-end tests in network namespaces (these skip
# with a message without /dev/net/tun or CAP_NET_ADMIN).
test: deps deps-build lint unit unit-verify

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

unit:
	$(CARGO) test --locked --all-targets

# `systemd-analyze verify` of packaging/tunwall.service in a scratch root
# with the debug binary (seconds; part of `make test`).
unit-verify: build
	./scripts/verify-unit.sh

# The Debian package: tunwall (not tunwall-copy), its unit, man pages,
# completions (bash, zsh, fish), /etc/tunwall/tunwall.toml (a conffile) and a
# logrotate rule, in target/debian/. A release build (minutes), so not part
# of `make test`: `make deb-test` builds and tests it.
DEB_EXTRA := target/deb-extra

deb: deps deps-build
	@command -v cargo-deb >/dev/null || $(CARGO) install cargo-deb --locked
	$(CARGO) build --locked --release --bin tunwall
	rm -rf $(DEB_EXTRA) && mkdir -p $(DEB_EXTRA)/man $(DEB_EXTRA)/completions
	target/release/tunwall man --dir $(DEB_EXTRA)/man
	gzip -9n $(DEB_EXTRA)/man/*.1
	target/release/tunwall completions bash > $(DEB_EXTRA)/completions/tunwall.bash
	target/release/tunwall completions zsh > $(DEB_EXTRA)/completions/_tunwall
	target/release/tunwall completions fish > $(DEB_EXTRA)/completions/tunwall.fish
	$(CARGO) deb --no-build --locked --strip -o target/debian/

# Installs the package into a scratch root (dpkg -x), checks its contents,
# runs the installed `tunwall check` on the installed config and verifies
# the installed unit.
deb-test: deb
	./scripts/deb-test.sh

# Criterion micro-benchmarks of the engine and the policy (figures in docs/benchmarks.md).
bench: deps-build
	$(CARGO) bench --locked --bench engine --bench policy

deps-bench:
	$(MAKE) deps TOOLS="$(TOOLS) $(BENCH_TOOLS)"

# The end-to-end benchmark (bench/throughput.py: tunwall, the plain copy and
# the kernel with nftables conntrack, side by side; as root). Pass options
# with ARGS, e.g. ARGS="--tests udpgso --reps 5".
bench-e2e: deps-bench release
	python3 bench/throughput.py $(ARGS)

# Two namespaces joined only through tunwall: ping, a TCP transfer, refused
# telnet and inbound attempts, `tunwall flows`, `tunwall stats`, teardown.
demo: deps release
	./scripts/demo.sh

# An HA pair with keepalived in namespaces (docs/ha.md): an iperf3 transfer
# and an idle TCP connection survive SIGKILL of the active node's tunwall,
# then of the other after the first came back; prints the failover gaps.
demo-ha: deps deps-build
	$(CARGO) test --locked --release --test e2e_ha -- --nocapture

# tunwall as a VPN gateway behind wireguard-go (configs/vpn-gateway.toml):
# identities from WireGuard peers, permitted and refused traffic per
# identity, iperf3, `tunwall identities` and `tunwall flows`, a peer
# removed live, teardown (README "Deploying as a VPN gateway").
demo-vpn: deps release
	./scripts/demo-vpn.sh

# Coverage-guided fuzzing with cargo-fuzz/libFuzzer (docs/fuzzing.md): runs
# each of FUZZ_TARGETS for FUZZ_SECONDS and prints libFuzzer's executions.
# Not part of `make test`, which replays fuzz/corpus and fuzz/regressions.
# On the stable toolchain: `--sanitizer none` (AddressSanitizer needs a
# nightly -Zsanitizer; no RUSTC_BOOTSTRAP is needed without it); cargo fuzz
# keeps debug assertions on, so Rust's UB checks still abort on bad unsafe
# code. New inputs go into fuzz/corpus/<target>; `make fuzz-cmin` shrinks it.
# A crash stops its target: the input is in fuzz/artifacts/<target>/ and
# the log in fuzz/artifacts/<target>.log.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= parse engine config state sync
FUZZ_FLAGS ?= --sanitizer none

fuzz:
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	@cd fuzz && mkdir -p artifacts && status=0 && for t in $(FUZZ_TARGETS); do \
		case $$t in parse) len=2048;; engine) len=4096;; *) len=16384;; esac; \
		echo "fuzz: $$t for $(FUZZ_SECONDS) s"; \
		if $(CARGO) fuzz run $(FUZZ_FLAGS) $$t corpus/$$t -- \
			-max_total_time=$(FUZZ_SECONDS) -max_len=$$len -timeout=10 -print_final_stats=1 \
			>artifacts/$$t.log 2>&1; then \
			execs=$$(sed -n 's/^stat::number_of_executed_units: *//p' artifacts/$$t.log); \
			echo "fuzz: $$t: $$execs executions in $(FUZZ_SECONDS) s, corpus $$(ls corpus/$$t | wc -l) files"; \
		else \
			status=1; tail -n 60 artifacts/$$t.log; echo "fuzz: $$t FAILED (log: fuzz/artifacts/$$t.log)"; \
		fi; \
	done; exit $$status

# Minimizes each target's corpus to inputs that keep its edge coverage
# (hit counts ignored: a few hundred files), then writes the hand-made
# seed-* inputs back.
fuzz-cmin:
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	cd fuzz && for t in $(FUZZ_TARGETS); do \
		$(CARGO) fuzz cmin $(FUZZ_FLAGS) $$t corpus/$$t -- -use_counters=0 || exit 1; \
	done
	$(CARGO) test --locked --test fuzz_corpus -- --ignored --exact seeds::write_seeds

clean:
	$(CARGO) clean
