# tunwall — the README's two commands are `make demo` and `make test`.
# Both install what they need on a fresh Debian machine (run as root).

CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: all build release test lint unit bench demo deps-build clean

all: build

# Rust is the machine's toolchain; the crates come from the registry via cargo.
deps-build:
	@command -v $(CARGO) >/dev/null || { echo "make: cargo not found: install a Rust toolchain (rustup)" >&2; exit 1; }
	$(CARGO) fetch --locked

build: deps-build
	$(CARGO) build --locked

release: deps-build
	$(CARGO) build --locked --release

# Every test: formatting, lints, unit tests, engine scenarios, property tests.
test: deps-build lint unit

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

unit:
	$(CARGO) test --locked --all-targets

# Criterion micro-benchmarks of the engine (figures in the README).
bench: deps-build
	$(CARGO) bench --locked --bench engine

# The engine on a virtual clock: ping, a TCP transfer, a UDP query, an
# inbound attempt that is refused, then the flow table and the counters.
demo: release
	./target/release/tunwall simulate

clean:
	$(CARGO) clean
