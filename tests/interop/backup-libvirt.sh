#!/usr/bin/env bash
# backup-libvirt.sh - zcow backup --domain against a real libvirtd, which
# the test starts on a private socket, and a transient TCG domain with two
# qcow2 disks (no guest OS: the test writes through the disks' devices
# with qemu-io, via virsh qemu-monitor-command, as a guest would).
#
# Every write also goes to a raw model of each disk; every point restored
# must equal the model as it was when the point was taken:
#   1. full, then incremental (auto), list, restore, checkpoints;
#   2. one disk alone (--disk), then both again: each disk's incremental
#      comes from its own last point;
#   3. a point in time under writes, into a second DIR (independent
#      checkpoints);
#   4. zcow killed during a backup: no new point, the job aborted and the
#      failed checkpoint deleted by the next run, whose incremental has
#      every change since the last good point;
#   5. the transient domain stopped and started again (libvirt forgets its
#      checkpoints, the images keep their bitmaps): the checkpoint is
#      redefined from DIR and the next backup is still incremental;
#   6. bad input: a domain that does not exist, a raw disk named with
#      --disk (a raw disk is skipped, saying so, when none is named).
# libvirtd runs as root with system paths: one such test at a time on a
# machine (a lock), and it needs root.
. "$(dirname "$0")/functions.sh"
. "$(dirname "$0")/backup-functions.sh"
requires qemu-img qemu-io qemu-system-x86_64 python3
requires_zcow
[ "$(id -u)" = 0 ] || { echo "$TEST_NAME: skipped: libvirtd needs root" >&2; exit 77; }
requires libvirtd virsh virtlogd flock

exec 9>/var/tmp/zcow-libvirt-test.lock
flock 9

# libvirt probes QEMU as root and checks the result as the QEMU user: a
# /dev/kvm only root may open (a machine without udev's rule for it) makes
# it probe again on every call, a minute each.  0660 root:kvm is Debian's.
if [ -c /dev/kvm ] && [ "$(stat -c %a /dev/kvm)" = 600 ] && getent group kvm >/dev/null; then
    chgrp kvm /dev/kvm && chmod 660 /dev/kvm
fi

chmod 755 "$work" # the domain's QEMU runs as libvirt-qemu
mkdir -p "$work/sock" /var/log/libvirt
cat >"$work/libvirtd.conf" <<EOF
unix_sock_dir = "$work/sock"
unix_sock_rw_perms = "0700"
auth_unix_rw = "none"
auth_unix_ro = "none"
EOF
URI="qemu:///system?socket=$work/sock/libvirt-sock"
V() { timeout 60 virsh -q -c "$URI" "$@"; }
if ! pgrep -x virtlogd >/dev/null; then
    virtlogd -d && cleanup_fn pkill -x virtlogd
fi
libvirtd -d --config "$work/libvirtd.conf" --pid-file "$work/libvirtd.pid" ||
    { fail "cannot start libvirtd"; finish; }
cleanup_fn 'kill "$(cat "$work/libvirtd.pid")" 2>/dev/null'
for _ in $(seq 200); do [ -S "$work/sock/libvirt-sock" ] && break; sleep 0.05; done

cat >"$work/dom.xml" <<EOF
<domain type='qemu'>
  <name>zcow-test-$$</name>
  <memory unit='MiB'>64</memory>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='$work/vda.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='$work/vdb.qcow2'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='$work/vdc.raw'/>
      <target dev='vdc' bus='virtio'/>
    </disk>
  </devices>
</domain>
EOF
DOM=zcow-test-$$
dom_start() { V create "$work/dom.xml" >/dev/null; }
cleanup_fn 'V destroy "$DOM" >/dev/null 2>&1'

# write DISK CMD...: as the guest would, and into the model.
write() {
    local disk=$1 dev c
    shift
    [ "$disk" = vda ] && dev=virtio-disk0 || dev=virtio-disk1
    for c in "$@"; do
        out=$(V qemu-monitor-command "$DOM" --hmp \
            "qemu-io -d /machine/peripheral/$dev/virtio-backend \"$c\"")
        [ -z "$out" ] || fail "write $disk $c: $out"
    done
    model "$disk" "$@"
}
backup() { "$ZCOW" backup --connect "$URI" --domain "$DOM" "$@"; }
# The domain holds no backup job, and of DIR's checkpoints just the one
# its manifest names.
expect_clean() {
    local dir=$1 p n
    p=$(prefix "$dir")
    V backup-dumpxml "$DOM" >/dev/null 2>&1 && fail "$(basename "$dir"): a backup job is left"
    n=$(V checkpoint-list "$DOM" --name | grep -c "^$p-")
    [ "$n" = 1 ] && pass || fail "$(basename "$dir"): $n checkpoints, want 1: $(V checkpoint-list "$DOM" --name | tr '\n' ' ')"
}

truncate -s 128M "$work/vda.model"
head -c $((48 << 20)) /dev/urandom | base64 -w 0 | head -c $((64 << 20)) |
    dd of="$work/vda.model" conv=notrunc status=none
truncate -s 32M "$work/vdb.model"
yes "vdb holds words" | head -c $((4 << 20)) | dd of="$work/vdb.model" conv=notrunc status=none
for d in vda vdb; do qemu-img convert -f raw -O qcow2 "$work/$d.model" "$work/$d.qcow2"; done
truncate -s 8M "$work/vdc.raw"
dom_start || { fail "cannot start the domain: $(tail -3 /var/log/libvirt/libvirtd.log)"; finish; }
A=$work/a
B=$work/b

# ---- 1. full, then incremental ----------------------------------------------
snap p1
out=$(backup -j 2 "$A" 2>&1) || fail "full: $out"
echo "$out" | grep -q "vda: full backup: no previous point" && pass || fail "full: said $out"
echo "$out" | grep -q "vdc: skipped: raw" && pass || fail "full: the raw disk: said $out"
expect_point "$A" vda 1 p1
expect_point "$A" vdb 1 p1
write vda "write -P 0x61 1M 64k" "write -z 8M 128k" "write -P 0x62 100M 3M"
write vdb "write -P 0x63 4k 4k"
snap p2
out=$(backup "$A" 2>&1) || fail "incremental: $out"
echo "$out" | grep -q "vda: incremental over point 1" && pass || fail "inc: said $out"
expect_point "$A" vda 2 p2
expect_point "$A" vdb 2 p2
for f in "$A"/vd?/*.qcow2; do qemu-img check -q "$f" && pass || fail "qemu-img check $f"; done
expect_clean "$A"

# ---- 2. one disk alone --------------------------------------------------------
write vdb "write -P 0x64 1M 64k"
write vda "write -P 0x65 2M 64k"
snap p3
out=$(backup --disk vdb "$A" 2>&1) || fail "vdb alone: $out"
echo "$out" | grep -q "vda" && fail "vdb alone also did vda: $out"
expect_point "$A" vdb 3 p3
write vda "write -P 0x66 3M 64k"
snap p4
out=$(backup "$A" 2>&1) || fail "both again: $out"
echo "$out" | grep -q "vda: incremental over point 2" && pass || fail "vda after vdb alone: $out"
expect_point "$A" vda 3 p4
expect_point "$A" vdb 4 p4

# ---- 3. a point in time under writes, a second DIR ----------------------------
snap p5
backup -j 1 "$B" >"$work/b.out" 2>&1 &
zpid=$!
for _ in $(seq 1000); do V backup-dumpxml "$DOM" >/dev/null 2>&1 && break; sleep 0.01; done
write vda "write -P 0x71 0 1M" "write -P 0x72 50M 1M"
V backup-dumpxml "$DOM" >/dev/null 2>&1 && pass || echo "# the writes may have come after the backup"
wait "$zpid" || fail "full into b: $(cat "$work/b.out")"
expect_point "$B" vda 1 p5
expect_point "$B" vdb 1 p5
snap p6
out=$(backup "$A" 2>&1) || fail "a after b: $out"
echo "$out" | grep -q "vda: incremental" && pass || fail "a after b: $out"
expect_point "$A" vda 4 p6
expect_clean "$A"
expect_clean "$B"

# ---- 4. zcow killed -------------------------------------------------------------
# (zcow itself in the background: killing a subshell would leave it running)
"$ZCOW" backup --connect "$URI" --domain "$DOM" -j 1 --level full "$B" >/dev/null 2>&1 &
zpid=$!
for _ in $(seq 1000); do V backup-dumpxml "$DOM" >/dev/null 2>&1 && break; sleep 0.01; done
write vdb "write -P 0x81 1M 64k"
kill -9 "$zpid"
wait "$zpid" 2>/dev/null
write vda "write -P 0x82 5M 64k"
snap p7
[ "$("$ZCOW" list --output=json "$B" | grep -c '"number"')" = 2 ] && pass ||
    fail "a killed backup left a point: $("$ZCOW" list "$B")"
out=$(backup "$B" 2>&1) || fail "after a kill: $out"
echo "$out" | grep -q "vdb: incremental over point 1" && pass || fail "after a kill: $out"
expect_point "$B" vda 2 p7
expect_point "$B" vdb 2 p7
expect_clean "$B"

# ---- 5. the transient domain started again --------------------------------------
V destroy "$DOM" >/dev/null
dom_start || fail "cannot restart the domain"
write vda "write -P 0x91 7M 64k"
snap p8
out=$(backup "$A" 2>&1) || fail "after a restart: $out"
echo "$out" | grep -q "vda: incremental over point 4" && pass || fail "after a restart: $out"
expect_point "$A" vda latest p8
expect_point "$A" vdb latest p8
# ---- 6. bad input ---------------------------------------------------------------
out=$("$ZCOW" backup --connect "$URI" --domain no-such-domain "$work/x" 2>&1)
[ $? = 1 ] && [ "$(echo "$out" | grep -c .)" = 1 ] && echo "$out" | grep -q "no-such-domain" &&
    pass || fail "a domain that does not exist: $out"
out=$(backup --disk vdc "$work/x" 2>&1)
[ $? = 1 ] && echo "$out" | grep -q "^zcow: .*'vdc' is raw" && pass || fail "a raw disk named: $out"
[ ! -e "$work/x/zcow-backup.json" ] && pass || fail "a failed first backup left a manifest"
finish
