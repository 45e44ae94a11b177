#!/bin/bash
# Boots systemd as PID 1 of new PID, mount and cgroup namespaces on a
# scratch root (tmpfs overlays of the host's /usr and /etc, so the host is
# not written), with the unit under test, a drop-in and a configuration
# installed, and default unit tunwall-test.target (which wants the unit).
# The host's network namespace and /run/netns are shared.
#
# usage: boot.sh DIR BINARY UNIT DROPIN CONFIG
# DIR must exist; the root is DIR/root; the cgroup made is written to DIR/cgroup.
set -euo pipefail
DIR=$1 BIN=$2 UNIT=$3 DROPIN=$4 CONFIG=$5
# A cgroup v2 subtree of our own, which the cgroup namespace makes the
# container's root: the unit's cgroups land there, not in the host's.
if [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ]; then
    V2=/sys/fs/cgroup
elif [ -e /sys/fs/cgroup/unified/cgroup.procs ]; then
    V2=/sys/fs/cgroup/unified
else
    echo "no cgroup v2 hierarchy mounted" >&2
    exit 1
fi
CG=$V2/tunwall-systemd-$(basename "$DIR")
mkdir "$CG"
echo "$CG" > "$DIR/cgroup"
echo $$ > "$CG/cgroup.procs"
export DIR BIN UNIT DROPIN CONFIG
exec unshare --cgroup --pid --fork --mount --propagation private bash -euo pipefail -c '
R=$DIR/root W=$DIR/work
mkdir -p "$R" "$W"
mount -t tmpfs tmpfs "$W"
mkdir -p "$W/usr/upper" "$W/usr/work" "$W/etc/upper" "$W/etc/work"
mount -t tmpfs tmpfs "$R"
mkdir -p "$R"/{usr,etc,proc,sys,dev,run,tmp,var/log,var/lib,root}
mount -t overlay overlay -o "lowerdir=/usr,upperdir=$W/usr/upper,workdir=$W/usr/work" "$R/usr"
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$W/etc/upper,workdir=$W/etc/work" "$R/etc"
for l in bin lib lib64 sbin; do ln -s "usr/$l" "$R/$l"; done
mount -t proc proc "$R/proc"
mount --rbind /sys "$R/sys"
mount -t cgroup2 cgroup2 "$R/sys/fs/cgroup"
mount --rbind /dev "$R/dev"
mount -t tmpfs tmpfs "$R/run"
mkdir -p "$R/run/netns"
mount --rbind /run/netns "$R/run/netns"
mount -t tmpfs tmpfs "$R/tmp"
cp "$BIN" "$R/usr/bin/tunwall"
# Nothing of the host is started: only the target below and what it pulls.
rm -rf "$R"/etc/systemd/system/*.wants
cp "$UNIT" "$R/etc/systemd/system/tunwall.service"
mkdir -p "$R/etc/systemd/system/tunwall.service.d" "$R/etc/tunwall"
cp "$DROPIN" "$R/etc/systemd/system/tunwall.service.d/test.conf"
cp "$CONFIG" "$R/etc/tunwall/tunwall.toml"
printf "[Unit]\nDescription=tunwall under test\nWants=tunwall.service\nAfter=tunwall.service\n" \
    > "$R/etc/systemd/system/tunwall-test.target"
: > "$R/etc/machine-id"
export container=tunwall-test
exec chroot "$R" /lib/systemd/systemd --unit=tunwall-test.target
'
