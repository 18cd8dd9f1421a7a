#!/usr/bin/env bash
# nbd-convert.sh - zcow convert from NBD exports served by qemu-nbd.
#
# qemu-nbd serves raw and qcow2 images on a Unix socket (one connection,
# and multi-conn with -e 4) and on a loopback TCP port; zcow converts each
# export to compressed qcow2, judged by qemu-img check and compare, and
# restores one to raw.  Then the errors: no server, a missing export, a
# bitmap the server does not have, --bitmap without -B, a backing file
# that does not open, -f qcow2 over NBD: each one clear line naming the
# URI or file, a non-zero exit and no image left.
. "$(dirname "$0")/functions.sh"
requires qemu-img qemu-io qemu-nbd cmp
requires_zcow
requires_nbd_support

# nbd_start NAME QEMU-NBD-ARGS...: a read-only persistent qemu-nbd in the
# background (--fork returns once it listens); stopped at exit.
nbd_start() {
    local name=$1
    shift
    qemu-nbd --fork --pid-file="$work/$name.pid" -t -r "$@" || return 1
    cleanup_fn nbd_stop "$name"
}

# nbd_stop NAME: stop that server and wait until it is gone.
nbd_stop() {
    local pidf=$work/$1.pid pid
    [ -f "$pidf" ] || return 0
    pid=$(cat "$pidf")
    # Read-only: nothing to flush, and SIGTERM takes qemu-nbd ~2 s.
    kill_wait "$pid"
    rm -f "$pidf"
}

make_sources "$work"
# One 16 MiB input of every shape, with holes between them.
src=$work/all.raw
truncate -s 16M "$src"
off=0
for s in $SHAPES; do
    dd if="$work/$s.raw" of="$src" bs=64k seek=$((off / 65536)) conv=notrunc,sparse status=none
    off=$(( (off + $(stat -c %s "$work/$s.raw") + 2 * 65536) / 65536 * 65536 ))
done
truncate -s 48M "$src"
qemu-img convert -f raw -O qcow2 -o cluster_size=65536 "$src" "$work/all.qcow2"

# convert_and_judge URI DST LABEL ARGS...
convert_and_judge() {
    local uri=$1 dst=$2 label=$3 out
    shift 3
    if ! out=$(/usr/bin/time -f "%e s" "$ZCOW" convert -q "$@" "$uri" "$dst" 2>&1); then
        fail "$label: zcow convert failed: $out"
        return 1
    fi
    echo "# $label: $out"; judge "$src" "$dst" "$label"
}

# 1. Unix socket: raw and qcow2 images, one connection and multi-conn.
nbd_start raw -k "$work/raw.sock" -f raw "$src" || fail "qemu-nbd raw did not start"
nbd_start qcow2 -k "$work/qcow2.sock" -f qcow2 -e 4 "$work/all.qcow2" ||
    fail "qemu-nbd qcow2 did not start"
raw_uri="nbd+unix:///?socket=$work/raw.sock"
qcow2_uri="nbd+unix:///?socket=$work/qcow2.sock"
convert_and_judge "$raw_uri" "$work/a1.qcow2" "raw export, -j 1" -j 1
convert_and_judge "$raw_uri" "$work/a4.qcow2" "raw export, -j 4 (one connection)" -j 4
convert_and_judge "$qcow2_uri" "$work/b1.qcow2" "qcow2 export, -j 1" -j 1
convert_and_judge "$qcow2_uri" "$work/b4.qcow2" "qcow2 export, -j 4 (multi-conn)" -j 4
# More workers than the server's 4 connections: the fifth is never
# answered while the others are open; zcow goes on with four.
convert_and_judge "$qcow2_uri" "$work/b8.qcow2" "qcow2 export, -j 8 (server allows 4)" -j 8
convert_and_judge "$qcow2_uri" "$work/bz.qcow2" "qcow2 export, zstd 4k clusters" -j 3 \
    -o compression_type=zstd,cluster_size=4k
# Holes were skipped, not read into data clusters: as few clusters as
# qemu-img's own compressed copy of the file has.
ours=$(check_json "$work/b4.qcow2" allocated-clusters)
qemu-img convert -c -O qcow2 "$src" "$work/ref.qcow2"
theirs=$(check_json "$work/ref.qcow2" allocated-clusters)
if [ "$ours" -le "$theirs" ]; then pass; else
    fail "holes: $ours allocated clusters against qemu-img's $theirs"
fi

# 2. Restore from NBD straight to raw.
if out=$("$ZCOW" convert -q -O raw "$qcow2_uri" "$work/restored.raw" 2>&1) &&
    cmp -s "$src" "$work/restored.raw"; then
    pass
else
    fail "-O raw from NBD: ${out:-content differs}"
fi

# 3. Loopback TCP, on a free port: try ports from a random base.
base=$((20000 + RANDOM % 30000))
port=
for p in $(seq "$base" $((base + 40))); do
    if qemu-nbd --fork --pid-file="$work/tcp.pid" -t -r -b 127.0.0.1 -p "$p" -x disk \
        -f qcow2 "$work/all.qcow2" 2>/dev/null; then
        port=$p
        cleanup_fn nbd_stop tcp
        break
    fi
done
if [ -z "$port" ]; then
    fail "qemu-nbd found no free TCP port from $base"
else
    convert_and_judge "nbd://127.0.0.1:$port/disk" "$work/tcp.qcow2" "TCP port $port" -j 2
fi

# 4. Errors: one line naming the URI, non-zero exit, no image left.
# expect_error LABEL PATTERN ARGS...: zcow convert ARGS must fail with a
# message matching PATTERN and leave no $work/err.qcow2.
expect_error() {
    local label=$1 pattern=$2 out
    shift 2
    rm -f "$work/err.qcow2"
    if out=$("$ZCOW" convert -q "$@" 2>&1); then
        fail "$label: exit 0"
        return 1
    fi
    if [ "$(printf '%s\n' "$out" | wc -l)" -ne 1 ] || ! printf '%s' "$out" | grep -q -- "$pattern"; then
        fail "$label: unexpected message: $out"
        return 1
    fi
    if [ -e "$work/err.qcow2" ] || [ -n "$(temp_leftovers "$work/err.qcow2")" ]; then
        fail "$label: an image was left"
        return 1
    fi
    echo "# $label: $out"
    pass
}
expect_error "no server" "cannot connect to 'nbd+unix:///?socket=$work/none.sock'.*No such file" \
    "nbd+unix:///?socket=$work/none.sock" "$work/err.qcow2"
expect_error "TCP connection refused" "cannot connect to 'nbd://127.0.0.1:1/'.*refused" \
    "nbd://127.0.0.1:1/" "$work/err.qcow2"
expect_error "missing export" "cannot connect to .*no export named 'nope'" \
    "nbd+unix:///nope?socket=$work/raw.sock" "$work/err.qcow2"
expect_error "missing bitmap" "does not export dirty bitmap 'b9'" \
    --bitmap b9 -B a1.qcow2 "$raw_uri" "$work/err.qcow2"
expect_error "--bitmap without -B" "needs -B PREVIOUS" \
    --bitmap b0 "$raw_uri" "$work/err.qcow2"
expect_error "--bitmap from a file" "needs an NBD source" \
    --bitmap b0 -B a1.qcow2 "$src" "$work/err.qcow2"
expect_error "missing backing file" "cannot open backing file 'gone.qcow2'" \
    -B gone.qcow2 -F qcow2 "$raw_uri" "$work/err.qcow2"
expect_error "-f qcow2 over NBD" "read as raw" -f qcow2 "$raw_uri" "$work/err.qcow2"
expect_error "-O raw with -B" "cannot have a backing file" \
    -O raw -B a1.qcow2 "$raw_uri" "$work/err.qcow2"

# 5. -B without --bitmap: a full copy over a backing file of other data.
#    Holes of the source must read as zero, not as the backing file.
truncate -s 48M "$work/other.raw"
qemu-io -f raw -c "write -P 0x5a 0 48M" "$work/other.raw" >/dev/null
qemu-img convert -O qcow2 "$work/other.raw" "$work/other.qcow2"
if out=$("$ZCOW" convert -q -B other.qcow2 -F qcow2 "$raw_uri" "$work/over.qcow2" 2>&1); then
    judge "$src" "$work/over.qcow2" "full copy over a backing file"
    if [ "$(info_field "$work/over.qcow2" backing-filename)" = other.qcow2 ]; then pass; else
        fail "backing file name not stored as given"
    fi
else
    fail "full copy over a backing file: $out"
fi
# The same from the file: its holes reach far past a segment.
if out=$("$ZCOW" convert -q -B other.qcow2 "$src" "$work/over2.qcow2" 2>&1); then
    judge "$src" "$work/over2.qcow2" "full copy of a file over a backing file"
else
    fail "full copy of a file over a backing file: $out"
fi

finish
