#!/usr/bin/env bash
# restore-dest.sh - zcow restore to every kind of destination, each
# compared with the disk as it was at the point (a raw model kept beside
# the disk, as backup-qmp.sh keeps one):
#   - a sparse raw file (it stays sparse);
#   - a loop device filled with garbage first (its holes must be zeroed),
#     and with --target-is-zero (zeroed first: equal; garbage: the holes
#     keep it, so the option does skip them); a 4Kn device; disks that end
#     mid-sector (zcow convert of odd sizes, on 4Kn and 512-byte sectors):
#     the disk written, the garbage after it kept;
#   - an uncompressed qcow2 image: through O_DIRECT (none of it in the page
#     cache), qemu-img check clean, no compressed cluster, holes
#     unallocated, and QEMU writes to it afterwards;
#   - NBD exports by qemu-nbd: a fresh qcow2 (a new VM's disk, --shared=4:
#     multi-conn) over a Unix socket and a raw file of garbage over TCP;
#     qemu-nbd is killed (-9) right after each restore, so that what zcow
#     did not flush would be lost; and nbdkit without write-zeroes (zeros
#     written), logging its connections (several: multi-conn);
# each for the full (point 1) and the top of a three-point chain (point 3).
# zcow convert to an export and to a device, once.  Bad destinations: one
# line, exit 1, nothing changed (an export or a device too small, a
# read-only export, no server, --target-is-zero with a file, -O qcow2 to an
# export); an existing file is replaced, as always, and kept when the
# restore fails; a write that fails halfway says the export is left partly
# written.
#
# DIR is made by zcow backup --qmp from a TCG QEMU with no guest (the test
# writes through the device with qemu-io on a second QMP socket); its disk
# vda is restored (vdb, 1 MiB, is there because qemu_start has it).  Loop
# devices need root: without them those cases are skipped, not failed.
. "$(dirname "$0")/functions.sh"
. "$(dirname "$0")/backup-functions.sh"
requires qemu-img qemu-io qemu-nbd qemu-system-x86_64 python3 cmp fincore strace
requires_zcow
requires_nbd_support

QMP=$ROOT/tests/interop/qmp.py
qsock=$work/qmp.sock
msock=$work/mon.sock
VDA=/machine/peripheral/vda/virtio-backend
SIZE=$((32 << 20))
DIR=$work/dir

cleanup_fn qemu_stop

write() {
    python3 "$QMP" "$msock" write "$VDA" "$@" || fail "write $*"
    model vda "$@"
}

# ---- DIR: a full and two incrementals of one 32 MiB disk --------------------------
truncate -s $SIZE "$work/vda.model"
head -c $((6 << 20)) /dev/urandom | base64 -w 0 | head -c $((8 << 20)) |
    dd of="$work/vda.model" bs=1M seek=1 conv=notrunc status=none
head -c $((2 << 20)) /dev/urandom | dd of="$work/vda.model" bs=1M seek=20 conv=notrunc status=none
truncate -s 1M "$work/vdb.model"
for d in vda vdb; do qemu-img convert -f raw -O qcow2 "$work/$d.model" "$work/$d.qcow2"; done
qemu_start || { fail "cannot start QEMU"; finish; }
snap p1
"$ZCOW" backup --qmp "$qsock" "$DIR" >/dev/null || fail "full backup"
# A zeroed stretch over data, data in a hole, a small write: point 2.
write "write -P 0x61 1M 64k" "write -z 2M 1M" "write -P 0x62 25M 2M"
snap p2
"$ZCOW" backup --qmp "$qsock" "$DIR" >/dev/null || fail "incremental 2"
write "write -P 0x63 4M 4k" "write -z 20M 512k"
snap p3
"$ZCOW" backup --qmp "$qsock" "$DIR" >/dev/null || fail "incremental 3"
qemu_stop
[ "$(npoints "$DIR")" = 6 ] || { fail "DIR has $(npoints "$DIR") points, want 3 of 2 disks"; finish; }

# same LABEL POINT FILE [FMT]: FILE (raw, or FMT) holds exactly the disk at
# POINT (a device: its first SIZE bytes).
same() {
    local label=$1 p=$2 f=$3 fmt=${4:-raw} out
    if [ -b "$f" ]; then
        out=$(cmp -n $SIZE "$work/vda.p$p" "$f" 2>&1)
    else
        out=$(qemu-img compare -q -f raw -F "$fmt" "$work/vda.p$p" "$f" 2>&1)
    fi
    [ $? = 0 ] && pass || fail "$label: not the disk at point $p: ${out:-differs}"
}

# restore LABEL ARGS...: zcow restore ARGS must succeed.
restore() {
    local label=$1 out
    shift
    out=$("$ZCOW" restore --disk vda "$@" 2>&1) || fail "$label: $out"
}

# garbage FILE [BYTES]: fill FILE (a device, an export) with 0xa5.
garbage() { qemu-io -f raw -c "write -P 0xa5 0 ${2:-$SIZE}" "$1" >/dev/null || fail "garbage $1"; }

# ---- 1. a sparse raw file --------------------------------------------------------
for p in 1 3; do
    restore "raw file, point $p" --point $p "$DIR" "$work/r$p.raw"
    same "raw file" $p "$work/r$p.raw"
    # As sparse as the model (holes found by SEEK_HOLE: cp --sparse=always).
    got=$(du -k "$work/r$p.raw" | cut -f1)
    want=$(du -k "$work/vda.p$p" | cut -f1)
    [ "$got" -le $((want + 64)) ] && pass ||
        fail "raw file, point $p: $got KiB allocated, the disk has $want KiB of data"
done
# An existing file is replaced (the restore writes a new one and renames
# it over); a restore that fails leaves it as it was.
echo "old contents" >"$work/exists.raw"
restore "existing file" --point 2 "$DIR" "$work/exists.raw"
same "existing file replaced" 2 "$work/exists.raw"
echo "old contents" >"$work/exists.raw"
out=$("$ZCOW" restore --disk vda --point 9 "$DIR" "$work/exists.raw" 2>&1) && fail "point 9 restored"
[ "$(cat "$work/exists.raw")" = "old contents" ] && [ -z "$(temp_leftovers "$work/exists.raw")" ] &&
    pass || fail "a failed restore changed an existing file ($out)"

# ---- 2. an uncompressed qcow2 image ------------------------------------------------
for p in 1 3; do
    # The default for a name ending in .qcow2; -O qcow2 says it too.
    [ $p = 1 ] && args=() || args=(-O qcow2)
    restore "qcow2, point $p" "${args[@]}" --point $p "$DIR" "$work/q$p.qcow2"
    q=$work/q$p.qcow2
    # Written through O_DIRECT: nothing of it in the page cache.
    pages=$(fincore -n -o PAGES "$q" | awk '{print $1 + 0}')
    [ "$pages" = 0 ] && pass || fail "qcow2, point $p: $pages pages in the page cache"
    out=$(qemu-img check "$q" 2>&1) && pass || fail "qcow2, point $p: qemu-img check: $out"
    same "qcow2" $p "$q" qcow2
    # No compressed cluster (qemu-img check counts them).
    [[ $out == *" 0.00% compressed clusters"* ]] && pass ||
        fail "qcow2, point $p: compressed clusters in an image to run a VM from: $out"
    map=$(qemu-img map --output=json "$q")
    # Holes stay unallocated: no more data clusters than the disk has data.
    alloc=$(echo "$map" | python3 -c 'import json,sys; print(sum(e["length"] for e in json.load(sys.stdin) if e["data"]))')
    [ "$alloc" -le $(($(du -k "$work/vda.p$p" | cut -f1) * 1024 + (1 << 20))) ] && pass ||
        fail "qcow2, point $p: $alloc bytes of data clusters"
    [ -z "$(temp_leftovers "$q")" ] && pass || fail "qcow2, point $p: $(temp_leftovers "$q") left"
done
# QEMU runs from it: a write, then the image checks clean and reads back.
q=$work/q3.qcow2
if qemu-io -f qcow2 -c "write -P 0x77 3M 192k" -c "write -z 21M 64k" "$q" >/dev/null &&
    out=$(qemu-img check "$q" 2>&1) &&
    qemu-io -f qcow2 -c "read -P 0x77 3M 192k" -c "read -P 0 21M 64k" "$q" | grep -q "^read"; then
    pass
else
    fail "qcow2 written by QEMU after the restore: $out"
fi

# ---- 3. a block device (loop) ---------------------------------------------------------
# loop_detach FILE: detach the loop devices on FILE (cleanup may find none).
loop_detach() {
    local d
    for d in $(losetup -n -O NAME -j "$1"); do losetup -d "$d"; done
}
# odd SECTOR DEVBYTES BYTES END: zcow convert of a raw disk of BYTES (END:
# data to its end, or zero from 64 KiB on) to a loop device of DEVBYTES in
# SECTOR-byte logical blocks, full of garbage: the device must then hold
# the disk and, after it, the garbage.
odd() {
    local sec=$1 devb=$2 n=$3 end=$4 l out
    local label="$n bytes ($end at the end) to a device of $devb in $sec-byte sectors"
    rm -f "$work/odd.img" "$work/odd.raw"
    truncate -s "$devb" "$work/odd.img"
    garbage "$work/odd.img" "$devb"
    if [ "$end" = data ]; then
        head -c "$n" /dev/urandom >"$work/odd.raw"
    else
        head -c 65536 /dev/urandom >"$work/odd.raw"
        truncate -s "$n" "$work/odd.raw"
    fi
    cp "$work/odd.img" "$work/odd.want"
    dd if="$work/odd.raw" of="$work/odd.want" conv=notrunc status=none
    l=$(losetup -f --show --sector-size "$sec" "$work/odd.img") || {
        fail "$label: losetup"
        return
    }
    cleanup_fn loop_detach "$work/odd.img"
    # Zeros at the end: those up to the last whole sector by BLKZEROOUT,
    # not written, as strace sees (LeakSanitizer cannot run traced).
    local trace=() z="BLKZEROOUT, [65536, $((n / sec * sec - 65536))]"
    [ "$end" = zero ] && trace=(env ASAN_OPTIONS="${ASAN_OPTIONS:-}:detect_leaks=0"
        strace -f -qq -e trace=ioctl -o "$work/odd.strace")
    out=$("${trace[@]}" "$ZCOW" convert -O raw -q "$work/odd.raw" "$l" 2>&1) &&
        out=$(cmp "$work/odd.want" "$l" 2>&1) && pass || fail "$label: ${out:-differs}"
    loop_detach "$work/odd.img"
    [ "$end" = data ] || grep -qF "$z" "$work/odd.strace" && pass ||
        fail "$label: no $z: $(grep -F BLKZEROOUT "$work/odd.strace")"
}
loop=
if truncate -s $SIZE "$work/loop.img" && loop=$(losetup -f --show "$work/loop.img" 2>/dev/null); then
    cleanup_fn losetup -d "$loop"
    for p in 1 3; do
        garbage "$loop"
        restore "device, point $p" --point $p "$DIR" "$loop"
        same "device over garbage" $p "$loop"
    done
    # --target-is-zero: a zeroed device ends equal; over garbage the holes
    # keep it (they were skipped).
    qemu-io -f raw -c "write -z 0 $SIZE" "$loop" >/dev/null
    restore "device, --target-is-zero" --target-is-zero "$DIR" "$loop"
    same "device, --target-is-zero" 3 "$loop"
    garbage "$loop"
    restore "device with garbage, --target-is-zero" --target-is-zero "$DIR" "$loop"
    cmp -s -n $SIZE "$work/vda.p3" "$loop" && fail "--target-is-zero zeroed the holes" || pass
    # zcow convert to a device, once.
    qemu-img convert -f raw -O qcow2 "$work/vda.p2" "$work/p2.qcow2"
    garbage "$loop"
    out=$("$ZCOW" convert -O raw -q "$work/p2.qcow2" "$loop" 2>&1) || fail "convert to a device: $out"
    same "convert to a device" 2 "$loop"
    # A device too small: one line, nothing written.
    truncate -s $((SIZE / 2)) "$work/small.img"
    if small=$(losetup -f --show "$work/small.img"); then
        cleanup_fn losetup -d "$small"
        garbage "$work/small.img" $((SIZE / 2))
        sum=$(md5sum <"$work/small.img")
        out=$("$ZCOW" restore --disk vda "$DIR" "$small" 2>&1) && fail "restored to a device too small"
        [ "$(echo "$out" | wc -l)" = 1 ] && [[ $out == *"is smaller than the image"* ]] &&
            [ "$(md5sum <"$work/small.img")" = "$sum" ] && pass ||
            fail "device too small: '$out'"
    fi
    # The disk restored onto a 4Kn device (logical blocks of 4 KiB).
    truncate -s $SIZE "$work/4kn.img"
    if l4=$(losetup -f --show --sector-size 4096 "$work/4kn.img"); then
        cleanup_fn loop_detach "$work/4kn.img"
        garbage "$l4"
        restore "4Kn device" --point 3 "$DIR" "$l4"
        same "4Kn device" 3 "$l4"
        loop_detach "$work/4kn.img"
    fi
    # A disk that ends mid-sector (O_DIRECT takes whole sectors): the last
    # one is read, overlaid and written back; the bytes after the disk keep
    # the device's garbage.  Its end data, or zero (BLKZEROOUT then the
    # rest); on 4Kn, and on 512-byte sectors with the device ending
    # mid-4 KiB right after the disk.
    odd 4096 $((2 << 20)) $(((1 << 20) + 512)) data
    odd 4096 $((2 << 20)) $(((1 << 20) + 512)) zero
    odd 512 $(((1 << 20) + 512)) $(((1 << 20) + 100)) data
    odd 512 $(((1 << 20) + 512)) $(((1 << 20) + 100)) zero
    odd 512 $((1 << 20)) 1000 data
else
    echo "# no loop device here: the block device cases are skipped"
fi

# ---- 4. NBD exports ---------------------------------------------------------------
# nbd_up NAME ARGS...: a writable persistent qemu-nbd; nbd_kill NAME.
nbd_up() {
    local name=$1
    shift
    qemu-nbd --fork --pid-file="$work/$name.pid" -t "$@" || return 1
    cleanup_fn nbd_kill "$name"
}
nbd_kill() {
    [ -f "$work/$1.pid" ] || return 0
    kill_wait "$(cat "$work/$1.pid")"
    rm -f "$work/$1.pid"
}
# A new VM's disk: a fresh qcow2 over a Unix socket, multi-conn.
for p in 1 3; do
    qemu-img create -q -f qcow2 "$work/vm$p.qcow2" $SIZE
    nbd_up vm$p -k "$work/vm$p.sock" -f qcow2 --shared=4 "$work/vm$p.qcow2" ||
        fail "qemu-nbd vm$p did not start"
    restore "NBD qcow2, point $p" -j 4 --point $p "$DIR" "nbd+unix:///?socket=$work/vm$p.sock"
    nbd_kill vm$p # -9: only what zcow flushed is in the file
    out=$(qemu-img check "$work/vm$p.qcow2" 2>&1) && pass || fail "NBD qcow2, point $p: $out"
    same "NBD qcow2 (unix)" $p "$work/vm$p.qcow2" qcow2
    # Holes left alone: no zero clusters, no data clusters for them.
    alloc=$(qemu-img map --output=json "$work/vm$p.qcow2" | python3 -c 'import json,sys; print(sum(e["length"] for e in json.load(sys.stdin) if e["data"] or e["zero"] and e["present"]))')
    [ "$alloc" -le $(($(du -k "$work/vda.p$p" | cut -f1) * 1024 + (1 << 20))) ] && pass ||
        fail "NBD qcow2, point $p: $alloc bytes allocated"
done
# A raw file of garbage over TCP: its holes must be zeroed.
base=$((20000 + RANDOM % 30000))
port=
for p in $(seq "$base" $((base + 40))); do
    truncate -s $SIZE "$work/tcp.raw"
    garbage "$work/tcp.raw"
    if nbd_up tcp -b 127.0.0.1 -p "$p" -x disk -f raw --shared=4 "$work/tcp.raw" 2>/dev/null; then
        port=$p
        break
    fi
done
if [ -z "$port" ]; then
    fail "qemu-nbd found no free TCP port from $base"
else
    for p in 1 3; do
        garbage "nbd://127.0.0.1:$port/disk"
        restore "NBD raw over TCP, point $p" --point $p "$DIR" "nbd://127.0.0.1:$port/disk"
        same "NBD raw (TCP)" $p "nbd://127.0.0.1:$port/disk"
    done
    # zcow convert to an export, once (raw without -O).
    garbage "nbd://127.0.0.1:$port/disk"
    out=$("$ZCOW" convert -q "$work/vda.p2" "nbd://127.0.0.1:$port/disk" 2>&1) ||
        fail "convert to NBD: $out"
    same "convert to NBD" 2 "nbd://127.0.0.1:$port/disk"
    # A read-only export.
    nbd_kill tcp
    nbd_up ro -r -k "$work/ro.sock" -f raw "$work/tcp.raw"
    out=$("$ZCOW" restore --disk vda "$DIR" "nbd+unix:///?socket=$work/ro.sock" 2>&1) &&
        fail "restored to a read-only export"
    [[ $out == *"the export is read-only"* ]] && pass || fail "read-only export: '$out'"
fi

# nbdkit without write-zeroes (zcow writes zeros), logging its connections.
if command -v nbdkit >/dev/null; then
    rm -f "$work/kit.log"
    if nbdkit -U "$work/kit.sock" -P "$work/kit.pid" --filter=log --filter=nozero \
        memory $SIZE logfile="$work/kit.log" 2>/dev/null; then
        cleanup_fn nbd_kill kit
        uri="nbd+unix:///?socket=$work/kit.sock"
        garbage "$uri"
        restore "nbdkit without write-zeroes" -j 4 "$DIR" "$uri"
        same "nbdkit without write-zeroes" 3 "$uri"
        grep -q "Zero" "$work/kit.log" && fail "nbdkit got write-zeroes through nozero" || pass
        conns=$(grep -o 'connection=[0-9]* Connect' "$work/kit.log" | sort -u | wc -l)
        [ "$conns" -ge 3 ] && pass || fail "multi-conn: $conns connections (the check and zcow's 2+)"
        # A write the server fails halfway: the export is left partly written.
        nbd_kill kit
        if nbdkit -U "$work/err.sock" -P "$work/err.pid" --filter=error memory $SIZE \
            error-pwrite=EIO error-pwrite-rate=100% 2>/dev/null; then
            cleanup_fn nbd_kill err
            out=$("$ZCOW" restore --disk vda "$DIR" "nbd+unix:///?socket=$work/err.sock" 2>&1) &&
                fail "a failing export took the restore"
            [ "$(echo "$out" | wc -l)" = 1 ] && [[ $out == *"is left partly written"* ]] && pass ||
                fail "failed writes: '$out'"
        fi
    fi
fi

# ---- 5. bad destinations ----------------------------------------------------------------
# expect_error LABEL PATTERN ARGS...: zcow restore ARGS fails with one line
# matching PATTERN.
expect_error() {
    local label=$1 pat=$2 out
    shift 2
    if out=$("$ZCOW" restore --disk vda "$@" 2>&1); then
        fail "$label: restored"
    elif [ "$(echo "$out" | wc -l)" = 1 ] && [[ $out == zcow:*$pat* ]]; then
        echo "# $label: $out"
        pass
    else
        fail "$label: '$out'"
    fi
}
truncate -s $((SIZE / 2)) "$work/half.raw"
garbage "$work/half.raw" $((SIZE / 2))
sum=$(md5sum <"$work/half.raw")
nbd_up half -k "$work/half.sock" -f raw "$work/half.raw"
expect_error "export too small" "the export ($((SIZE / 2)) bytes) is smaller than the image" \
    "$DIR" "nbd+unix:///?socket=$work/half.sock"
nbd_kill half
[ "$(md5sum <"$work/half.raw")" = "$sum" ] && pass || fail "the export too small was written"
expect_error "no server" "cannot connect to 'nbd://127.0.0.1:1/'" "$DIR" nbd://127.0.0.1:1/
expect_error "no socket" "cannot connect" "$DIR" "nbd+unix:///?socket=$work/none.sock"
expect_error "--target-is-zero with a file" "target-is-zero is for a block device or an NBD export" \
    --target-is-zero "$DIR" "$work/tz.raw"
expect_error "-O qcow2 to an export" "an NBD export is written as raw" -O qcow2 "$DIR" \
    nbd://127.0.0.1:1/
expect_error "-O vmdk" "output format 'vmdk'" -O vmdk "$DIR" "$work/x.vmdk"
# strtoull reads "-1" as the largest number: digits only.
expect_error "--point -1" "--point '-1' must be a point number or latest" --point -1 "$DIR" \
    "$work/tz.raw"
[ ! -e "$work/tz.raw" ] && [ -z "$(temp_leftovers "$work/tz.raw")" ] && pass ||
    fail "a refused restore left a file"

finish
