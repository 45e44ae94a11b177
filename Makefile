# tunwall — the README's two commands are `make demo` and `make test`.
# Both install what they need on a fresh Debian machine (run as root).

CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

# Programs the demo and the end-to-end tests drive, and their Debian packages.
TOOLS := ip:iproute2 ss:iproute2 ping:iputils-ping iperf3:iperf3 nc:netcat-openbsd python3:python3

.PHONY: all build release test lint unit bench demo deps deps-build clean

all: build

deps-build:
	@command -v $(CARGO) >/dev/null || { echo "make: cargo not found: install a Rust toolchain (rustup)" >&2; exit 1; }
	$(CARGO) fetch --locked

# Installs the missing tools with apt-get (needs root; skipped if all are present).
deps:
	@missing=""; for t in $(TOOLS); do command -v $${t%%:*} >/dev/null || missing="$$missing $${t##*:}"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
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
test: deps deps-build lint unit

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

unit:
	$(CARGO) test --locked --all-targets

# Criterion micro-benchmarks of the engine and the policy (figures in docs/benchmarks.md).
bench: deps-build
	$(CARGO) bench --locked --bench engine --bench policy

# Two namespaces joined only through tunwall: ping, a TCP transfer, refused
# telnet and inbound attempts, `tunwall flows`, `tunwall stats`, teardown.
demo: deps release
	./scripts/demo.sh

clean:
	$(CARGO) clean
