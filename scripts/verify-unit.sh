#!/bin/sh
# `systemd-analyze verify` of packaging/tunwall.service, in a scratch root
# that holds the unit, the tunwall binary at /usr/bin/tunwall and its man
# pages (verify checks that ExecStart's program and the Documentation= page
# exist), beside a copy of the host's own units (for the targets the unit
# is ordered against). Never touches the real /usr or /etc.
#
# usage: scripts/verify-unit.sh [ROOT]
#   ROOT: an installed package's root (scripts/deb-test.sh); without it the
#   root is built from the debug binary target/debug/tunwall.
set -eu
cd "$(dirname "$0")/.."
scratch=$(mktemp -d /tmp/tunwall-unit.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
if [ $# -ge 1 ]; then
    cp -a "$1/." "$scratch/"
else
    mkdir -p "$scratch/usr/bin" "$scratch/usr/lib/systemd/system" "$scratch/usr/share/man/man1"
    cp target/debug/tunwall "$scratch/usr/bin/tunwall"
    cp packaging/tunwall.service "$scratch/usr/lib/systemd/system/"
    target/debug/tunwall man --dir "$scratch/usr/share/man/man1"
fi
# Debian's packages put units in /lib/systemd/system (usr-merged: /usr/lib).
mkdir -p "$scratch/usr/lib/systemd/system"
if [ -d "$scratch/lib" ] && [ ! -L "$scratch/lib" ]; then
    cp -a "$scratch/lib/." "$scratch/usr/lib/" && rm -rf "$scratch/lib"
fi
ln -sfn usr/lib "$scratch/lib"
for unit in /usr/lib/systemd/system/*; do
    [ -e "$scratch/usr/lib/systemd/system/$(basename "$unit")" ] || cp -a "$unit" "$scratch/usr/lib/systemd/system/"
done
test -f "$scratch/usr/lib/systemd/system/tunwall.service"
# Everything systemd-analyze says is a finding: the unit must be clean.
out=$(cd / && MANPATH="$scratch/usr/share/man" systemd-analyze verify --root="$scratch" tunwall.service 2>&1) || {
    echo "$out"; echo "verify-unit: systemd-analyze verify failed" >&2; exit 1; }
if [ -n "$out" ]; then
    echo "$out"; echo "verify-unit: systemd-analyze verify reported the above" >&2; exit 1
fi
echo "verify-unit: tunwall.service verified clean"
