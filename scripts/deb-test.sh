#!/bin/sh
# Tests the package `make deb` built: installs it into a scratch root with
# `dpkg -x` (the machine's own packages stay untouched), checks what it
# holds and marks as conffiles, runs the INSTALLED binary's `check` on the
# INSTALLED configuration, and verifies the installed unit.
set -eu
cd "$(dirname "$0")/.."
deb=$(ls -t target/debian/tunwall_*.deb 2>/dev/null | head -n 1)
[ -n "$deb" ] || { echo "deb-test: no target/debian/tunwall_*.deb (make deb)" >&2; exit 1; }
root=$(mktemp -d /tmp/tunwall-deb.XXXXXX)
trap 'rm -rf "$root"' EXIT
fail() { echo "deb-test: $*" >&2; exit 1; }

dpkg -x "$deb" "$root"
for f in usr/bin/tunwall etc/tunwall/tunwall.toml etc/logrotate.d/tunwall \
    usr/lib/systemd/system/tunwall.service usr/share/man/man1/tunwall.1.gz \
    usr/share/man/man1/tunwall-run.1.gz usr/share/bash-completion/completions/tunwall \
    usr/share/zsh/vendor-completions/_tunwall usr/share/fish/vendor_completions.d/tunwall.fish; do
    [ -s "$root/$f" ] || fail "missing /$f"
done
[ ! -e "$root/usr/bin/tunwall-copy" ] || fail "the benchmark's tunwall-copy is packaged"
dpkg-deb -I "$deb" conffiles | grep -qx /etc/tunwall/tunwall.toml || fail "tunwall.toml is not a conffile"
dpkg-deb -f "$deb" Depends | grep -q libc6 || fail "no libc6 dependency"
gzip -dc "$root/usr/share/man/man1/tunwall.1.gz" | grep -q 'tunwall\\-flows(1)' || fail "the man page lacks the commands"
grep -q 'flows' "$root/usr/share/bash-completion/completions/tunwall" || fail "bash completion lacks the commands"

"$root/usr/bin/tunwall" --version
out=$("$root/usr/bin/tunwall" check -c "$root/etc/tunwall/tunwall.toml" 2>&1) || { echo "$out"; fail "installed check failed"; }
echo "$out" | head -n 1
case "$out" in *warning*) echo "$out"; fail "the default configuration has warnings";; esac

./scripts/verify-unit.sh "$root"
echo "deb-test: $(basename "$deb") ($(du -k "$deb" | cut -f1) KiB) ok"
