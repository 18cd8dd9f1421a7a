# backup-functions.sh - what backup-qmp.sh, backup-libvirt.sh and
# verify.sh share: a raw model of each disk (every write the test makes
# through the VM also goes to $work/DISK.model), kept as it was at each
# point, and the check that a restored point equals it and records its
# digest; a TCG QEMU with two disks.  Sourced after functions.sh.

# qemu_start: QEMU (TCG, no guest) with $work/vda.qcow2 and vdb.qcow2 as
# virtio disks vda and vdb (nodes da, db), and two QMP sockets: $qsock
# (zcow's) and $msock (the test's).  qemu_stop: kill it.
qemu_start() {
    rm -f "$qsock" "$msock"
    qemu-system-x86_64 -nodefaults -display none -machine q35,accel=tcg -m 64 \
        -blockdev driver=file,filename="$work/vda.qcow2",node-name=fa \
        -blockdev driver=qcow2,file=fa,node-name=da -device virtio-blk-pci,drive=da,id=vda \
        -blockdev driver=file,filename="$work/vdb.qcow2",node-name=fb \
        -blockdev driver=qcow2,file=fb,node-name=db -device virtio-blk-pci,drive=db,id=vdb \
        -qmp unix:"$qsock",server=on,wait=off -qmp unix:"$msock",server=on,wait=off \
        -daemonize -pidfile "$work/qemu.pid" || return 1
    for _ in $(seq 100); do
        [ -S "$msock" ] && return 0
        sleep 0.02
    done
    return 1
}
qemu_stop() {
    [ -f "$work/qemu.pid" ] && kill_wait "$(cat "$work/qemu.pid")"
    rm -f "$work/qemu.pid"
}

# model DISK CMD...: qemu-io commands on the model of DISK.
model() {
    local disk=$1 args=() c
    shift
    for c in "$@"; do args+=(-c "$c"); done
    qemu-io -f raw "${args[@]}" "$work/$disk.model" >/dev/null || fail "model $disk"
}

# snap NAME: keep the models of vda and vdb as they are now, for a point.
snap() { for d in vda vdb; do cp --sparse=always "$work/$d.model" "$work/$d.$1"; done; }

# expect_point DIR DISK N SNAP: zcow restore of point N (or latest) of DISK
# equals the model kept as SNAP, and the digest the point records (zcow
# list's last column) is blkhash.py's of it.
expect_point() {
    local dir=$1 disk=$2 n=$3 s=$4 out got want
    rm -f "$work/r.raw"
    if out=$("$ZCOW" restore --disk "$disk" --point "$n" "$dir" "$work/r.raw" 2>&1) &&
        out=$(qemu-img compare -q -f raw -F raw "$work/$disk.$s" "$work/r.raw" 2>&1); then
        pass
    else
        fail "$(basename "$dir") $disk point $n is not the disk at $s: $out"
    fi
    got=$("$ZCOW" list "$dir" | awk -v d="$disk" -v n="$n" \
        '$1 == d && (n == "latest" || $2 == n) { h = $NF } END { print h }')
    want=$(python3 "$(dirname "${BASH_SOURCE[0]}")/blkhash.py" "$work/$disk.$s" | cut -d' ' -f1)
    [ "$got" = "$want" ] && pass ||
        fail "$(basename "$dir") $disk point $n records digest '$got', the disk at $s had $want"
}

# npoints DIR: the points of every disk in DIR.
npoints() { "$ZCOW" list --output=json "$1" | grep -c '"number"'; }

# prefix DIR: the prefix of DIR's names in the VM.
prefix() {
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["prefix"])' \
        "$1/zcow-backup.json"
}
