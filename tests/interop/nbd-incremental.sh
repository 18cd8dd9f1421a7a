#!/usr/bin/env bash
# nbd-incremental.sh - incremental backups from a dirty bitmap over NBD.
#
# The source is a qcow2 image with a persistent dirty bitmap b0 (qemu-img
# bitmap --add), changed by writes through qemu-io and exported with
# qemu-nbd -B b0.  The flow a backup tool runs:
#   full backup (no bitmap) -> writes -> incremental 1 (--bitmap b0
#   -B full.qcow2 -F qcow2) -> clear b0 -> writes -> incremental 2
#   (-B inc1.qcow2)
# with a raw copy of the source kept at each point (made while the server
# is stopped).  Then every point is restored, by zcow convert -O raw and by
# qemu-img convert -O raw, and compared with its copy; qemu-img check must
# be clean on every image of the chain; each incremental must hold exactly
# the clusters the writes touched (a cluster partly written whole, zeroes
# written as zero clusters) and nothing else; zcow convert flattens the
# chain into one image without a backing file.
. "$(dirname "$0")/functions.sh"
requires qemu-img qemu-io qemu-nbd cmp
requires_zcow
requires_nbd_support

CL=65536
src=$work/src.qcow2
sock=$work/nbd.sock
uri="nbd+unix:///?socket=$sock"

nbd_start() {
    qemu-nbd --fork --pid-file="$work/nbd.pid" -t -r -k "$sock" -f qcow2 "$@" "$src"
}
nbd_stop() {
    local pid
    [ -f "$work/nbd.pid" ] || return 0
    pid=$(cat "$work/nbd.pid")
    # Read-only: nothing to flush, and SIGTERM takes qemu-nbd ~2 s.
    kill_wait "$pid"
    rm -f "$work/nbd.pid"
}
cleanup_fn nbd_stop

# The source: 64 MiB, data of every shape in the first 20 MiB and at 40 MiB.
make_sources "$work"
truncate -s 64M "$work/base.raw"
off=0
for s in $SHAPES; do
    dd if="$work/$s.raw" of="$work/base.raw" bs=64k seek=$((off / CL)) conv=notrunc,sparse status=none
    off=$(( (off + $(stat -c %s "$work/$s.raw") + CL) / CL * CL ))
done
dd if="$work/text.raw" of="$work/base.raw" bs=1M seek=40 conv=notrunc status=none
qemu-img convert -f raw -O qcow2 "$work/base.raw" "$src"
qemu-img bitmap --add -g 64k "$src" b0 || { fail "qemu-img bitmap --add"; finish; }

# writes "OFF LEN [zero|discard|PATTERN]"...: qemu-io writes to the
# stopped source; every cluster they touch is added to $work/touched.N.
writes() {
    local n=$1
    shift
    local cmds=() w off len kind c
    for w in "$@"; do
        read -r off len kind <<<"$w"
        case $kind in
        zero) cmds+=(-c "write -z $off $len") ;;
        discard) cmds+=(-c "discard $off $len") ;;
        *) cmds+=(-c "write -P $kind $off $len") ;;
        esac
        for ((c = off / CL; c <= (off + len - 1) / CL; c++)); do
            echo "$c"
        done >>"$work/touched.$n"
    done
    qemu-io -f qcow2 "${cmds[@]}" "$src" >/dev/null || fail "qemu-io writes $n"
}

# snapshot N: the source as it is now, as raw.
snapshot() { qemu-img convert -f qcow2 -O raw "$src" "$work/p$1.raw"; }

# top_clusters IMG: clusters held by IMG itself (not its backing files).
top_clusters() {
    qemu-img map --output=json "$1" | python3 -c '
import json, sys
print(sum(e["length"] for e in json.load(sys.stdin) if e["depth"] == 0) // 65536)'
}

# 0. Full backup.
snapshot 0
nbd_start || fail "qemu-nbd did not start"
out=$("$ZCOW" convert -q -j 2 "$uri" "$work/full.qcow2" 2>&1) || fail "full backup: $out"
nbd_stop

# 1. Writes, then incremental 1 over the full backup (relative names, as a
#    backup tool stores them, run from the backup directory).
writes 1 "$((1 << 20)) $CL 0x33" "$((5 * 1048576 + 512)) 512 0x44" "0 131072 zero" \
    "$((40 << 20)) $((2 * 1048576 + 4096)) 0x55" "$((12 << 20)) $CL discard" \
    "$((64 * 1048576 - 4096)) 4096 0x66" "$((30 << 20)) 100000 0x67"
snapshot 1
nbd_start -B b0 -e 4 || fail "qemu-nbd -B b0 did not start"
out=$(cd "$work" && "$ZCOW" convert -q -j 2 --bitmap b0 -B full.qcow2 -F qcow2 "$uri" inc1.qcow2 2>&1) ||
    fail "incremental 1: $out"
# The same from another directory: -B is relative to the new image's.
mkdir -p "$work/sub"
out=$("$ZCOW" convert -q -j 1 --bitmap b0 -B ../full.qcow2 "$uri" "$work/sub/inc1.qcow2" 2>&1) ||
    fail "incremental 1 in sub/: $out"
nbd_stop
qemu-img bitmap --clear "$src" b0 || fail "qemu-img bitmap --clear"

# 2. More writes (some over clusters incremental 1 holds), incremental 2.
writes 2 "$(((1 << 20) + 4096)) 4096 0x77" "$((40 << 20)) $((1 << 20)) zero" \
    "$((20 << 20)) 100000 0x88" "$((50 << 20)) $((3 << 20)) 0x99" "$((5 << 20)) 1 0xaa"
snapshot 2
nbd_start -B b0 -e 4 || fail "qemu-nbd -B b0 did not start"
out=$(cd "$work" && "$ZCOW" convert -q -j 4 --bitmap b0 -B inc1.qcow2 -F qcow2 -o compression_type=zstd \
    "$uri" inc2.qcow2 2>&1) || fail "incremental 2: $out"
nbd_stop

# 3. Every image of the chain is clean; each incremental holds exactly the
#    touched clusters and names its backing file as given.
for img in full inc1 sub/inc1 inc2; do
    if out=$(qemu-img check "$work/$img.qcow2" 2>&1); then pass; else
        fail "qemu-img check $img: $(echo "$out" | head -3 | tr '\n' ' ')"
    fi
done
for n in 1 2; do
    want=$(sort -un "$work/touched.$n" | wc -l)
    got=$(top_clusters "$work/inc$n.qcow2")
    if [ "$got" = "$want" ]; then pass; else
        fail "inc$n holds $got clusters, the writes touched $want"
    fi
done
[ "$(info_field "$work/inc1.qcow2" backing-filename)" = full.qcow2 ] && pass ||
    fail "inc1: backing file name is not 'full.qcow2'"
[ "$(info_field "$work/sub/inc1.qcow2" backing-filename)" = ../full.qcow2 ] && pass ||
    fail "sub/inc1: backing file name is not '../full.qcow2'"
[ "$(info_field "$work/inc2.qcow2" backing-filename)" = inc1.qcow2 ] && pass ||
    fail "inc2: backing file name is not 'inc1.qcow2'"

# 4. Restore each point with zcow and with qemu-img, and compare.
restore() { # N IMG
    local n=$1 img=$2 out
    if out=$("$ZCOW" convert -q -O raw "$work/$img.qcow2" "$work/r$n.raw" 2>&1) &&
        cmp -s "$work/p$n.raw" "$work/r$n.raw"; then pass; else
        fail "zcow restore of $img differs from point $n: $out"
    fi
    if qemu-img convert -O raw "$work/$img.qcow2" "$work/q$n.raw" &&
        cmp -s "$work/p$n.raw" "$work/q$n.raw"; then pass; else
        fail "qemu-img restore of $img differs from point $n"
    fi
    if out=$(qemu-img compare -f raw "$work/p$n.raw" "$work/$img.qcow2" 2>&1); then pass; else
        fail "qemu-img compare point $n, $img: $out"
    fi
}
restore 0 full
restore 1 inc1
restore 1 sub/inc1
restore 2 inc2

# 5. zcow convert flattens the chain (the reader follows it).
if out=$("$ZCOW" convert -q "$work/inc2.qcow2" "$work/flat.qcow2" 2>&1); then
    judge "$work/p2.raw" "$work/flat.qcow2" "flattened chain"
    [ -z "$(info_field "$work/flat.qcow2" backing-filename)" ] && pass ||
        fail "the flattened image has a backing file"
else
    fail "flatten: $out"
fi

finish
