#!/usr/bin/env bash
# digest.sh - zcow digest against tests/interop/blkhash.py (an independent
# implementation of the sha256/64k construction, in Python's hashlib):
#   1. every input shape (make_sources), and all of them in one disk with
#      holes: the raw file, its qcow2 conversions (qemu-img's plain, zcow's
#      compressed, a zstd one of 4 KiB clusters), the raw file restored
#      from one, a qcow2 chain (a base and an overlay qemu-io wrote over)
#      and the NBD export of each (qemu-nbd, one connection and four): one
#      digest, blkhash.py's of the raw bytes;
#   2. a sparse disk of 2 GiB with 6 MiB of data (raw and qcow2): the same
#      digest as blkhash.py, reading little more than the data, in little
#      memory;
#   3. bad input: a missing file, an unknown format, a source that is not
#      qcow2 read as qcow2, TLS options without TLS: one line each, exit 1;
#      several sources, one bad: the good ones printed, exit 1.
. "$(dirname "$0")/functions.sh"
requires qemu-img qemu-io qemu-nbd python3
requires_zcow

BLKHASH=$ROOT/tests/interop/blkhash.py

# ref FILE: blkhash.py's digest of a raw FILE.
ref() { python3 "$BLKHASH" "$1" | cut -d' ' -f1; }

# expect_digest WANT LABEL ZCOW-DIGEST-ARGS...: zcow digest prints WANT.
expect_digest() {
    local want=$1 label=$2 out
    shift 2
    if ! out=$("$ZCOW" digest "$@" 2>&1); then
        fail "$label: zcow digest failed: $out"
        return 1
    fi
    if [ "${out%%  *}" = "$want" ] && [ "${out#*  }" = "${*: -1}" ]; then
        pass
    else
        fail "$label: '$out', want '$want  ${*: -1}'"
    fi
}

nbd_start() {
    local name=$1
    shift
    qemu-nbd --fork --pid-file="$work/$name.pid" -t -r "$@" || return 1
    cleanup_fn nbd_stop "$name"
}
nbd_stop() {
    local pidf=$work/$1.pid
    [ -f "$pidf" ] || return 0
    kill_wait "$(cat "$pidf")"
    rm -f "$pidf"
}

# ---- 1. every shape, every form -------------------------------------------------
make_sources "$work"
for s in $SHAPES; do
    f=$work/$s.raw
    want=$(ref "$f")
    expect_digest "$want" "$s raw" "$f"
    qemu-img convert -f raw -O qcow2 "$f" "$work/$s.qcow2"
    "$ZCOW" convert -q "$f" "$work/$s.z.qcow2" || fail "zcow convert $s"
    # qcow2 rounds the size up to 512: a disk of tail.raw's odd size is
    # another disk once converted.
    [ "$s" = tail ] && want=$(truncate -s %512 "$f" && ref "$f")
    expect_digest "$want" "$s qemu-img qcow2" "$work/$s.qcow2"
    expect_digest "$want" "$s zcow qcow2" "$work/$s.z.qcow2"
done

# All shapes in one disk with holes, and what is made of it.
src=$work/all.raw
truncate -s 16M "$src"
off=0
for s in $SHAPES; do
    dd if="$work/$s.raw" of="$src" bs=64k seek=$((off / 65536)) conv=notrunc,sparse status=none
    off=$(((off + $(stat -c %s "$work/$s.raw") + 2 * 65536) / 65536 * 65536))
done
truncate -s 40M "$src"
want=$(ref "$src")
echo "# all.raw: $want"
expect_digest "$want" "all raw" "$src"
expect_digest "$want" "all raw, -f raw -j 1" -f raw -j 1 "$src"
"$ZCOW" convert -q "$src" "$work/all.qcow2" || fail "zcow convert all"
"$ZCOW" convert -q -o cluster_size=4k,compression_type=zstd "$src" "$work/all4k.qcow2" ||
    fail "zcow convert all 4k zstd"
expect_digest "$want" "all zcow qcow2" "$work/all.qcow2"
expect_digest "$want" "all zcow qcow2 4k zstd, -j 3" -j 3 "$work/all4k.qcow2"
"$ZCOW" convert -q -O raw "$work/all4k.qcow2" "$work/restored.raw" || fail "restore to raw"
expect_digest "$want" "restored raw" "$work/restored.raw"
[ "$(ref "$work/restored.raw")" = "$want" ] && pass || fail "blkhash.py of the restored file"

# A chain: the base, and an overlay over it that qemu-io wrote into.
cp --sparse=always "$src" "$work/top.raw"
qemu-img create -q -f qcow2 -b all.qcow2 -F qcow2 "$work/top.qcow2"
for c in "write -P 0x5a 1M 100k" "write -z 3M 1M" "write -P 0x11 39M 1M" "discard 0 64k"; do
    qemu-io -f qcow2 -c "$c" "$work/top.qcow2" >/dev/null || fail "qemu-io $c"
done
qemu-img convert -f qcow2 -O raw "$work/top.qcow2" "$work/top.raw"
top=$(ref "$work/top.raw")
[ "$top" != "$want" ] && pass || fail "the overlay's writes did not change the digest"
expect_digest "$top" "chain" "$work/top.qcow2"
expect_digest "$top" "chain, -f qcow2" -f qcow2 "$work/top.qcow2"
# blkhash.py reading a pipe (no holes to skip) agrees with itself.
[ "$(python3 "$BLKHASH" - <"$work/top.raw" | cut -d' ' -f1)" = "$top" ] &&
    [ "$(cat "$work/top.raw" | python3 "$BLKHASH" - | cut -d' ' -f1)" = "$top" ] && pass ||
    fail "blkhash.py of a pipe"

# NBD exports of the raw file and of the chain.
if "$ZCOW" --version | grep -q '^features:.*+nbd'; then
    nbd_start raw -k "$work/raw.sock" -f raw "$src" || fail "qemu-nbd raw did not start"
    nbd_start top -k "$work/top.sock" -f qcow2 -e 4 "$work/top.qcow2" ||
        fail "qemu-nbd chain did not start"
    expect_digest "$want" "nbd raw" "nbd+unix:///?socket=$work/raw.sock"
    expect_digest "$top" "nbd chain, multi-conn" -j 4 "nbd+unix:///?socket=$work/top.sock"
else
    echo "# no NBD support in $ZCOW: NBD exports not digested"
fi

# ---- 2. a sparse disk of 2 GiB ----------------------------------------------------
big=$work/big.raw
truncate -s 2G "$big"
for at in 0 300 1024 2040; do
    head -c $((3 << 19)) "$work/random.raw" | dd of="$big" bs=1M seek=$at conv=notrunc status=none
done
printf 'end' | dd of="$big" bs=1 seek=$(((2 << 30) - 3)) conv=notrunc status=none
want=$(ref "$big")
qemu-img convert -f raw -O qcow2 "$big" "$work/big.qcow2"
for f in "$big" "$work/big.qcow2"; do
    # rchar of the shell counts its child's reads; maxrss is the child's.
    out=$(bash -c '/usr/bin/time -f "maxrss %M" "$0" digest "$1" 2>&1; grep ^rchar /proc/$$/io' \
        "$ZCOW" "$f")
    got=$(echo "$out" | sed -n 's/^\([0-9a-f]\{64\}\)  .*/\1/p')
    rchar=$(echo "$out" | sed -n 's/^rchar: //p')
    rss=$(echo "$out" | sed -n 's/^maxrss //p')
    echo "# $(basename "$f"): read $((rchar >> 20)) MiB, max RSS $((rss >> 10)) MiB"
    [ "$got" = "$want" ] && pass || fail "$(basename "$f"): $got, want $want"
    # 6 MiB of data (whole segments of it: 4 MiB reads) and the metadata.
    [ "$rchar" -lt $((48 << 20)) ] && pass || fail "$(basename "$f"): $rchar bytes read"
    limit=$((64 << 10))
    [ -n "${ZCOW_TEST_SANITIZER:-}" ] && limit=$((1 << 20))
    [ "$rss" -lt "$limit" ] && pass || fail "$(basename "$f"): max RSS $rss KiB"
done

# ---- 3. bad input -------------------------------------------------------------------
expect_error() {
    local label=$1 pattern=$2 out rc
    shift 2
    out=$("$@" 2>&1)
    rc=$?
    if [ "$rc" = 1 ] && [ "$(printf '%s\n' "$out" | grep -c .)" = 1 ] &&
        echo "$out" | grep -q "^zcow: .*$pattern"; then
        pass
        echo "# $label: $out"
    else
        fail "$label: exit $rc: $out"
    fi
}
expect_error "missing" "'$work/none.raw'.*No such file" "$ZCOW" digest "$work/none.raw"
expect_error "unknown format" "unknown source format 'vmdk'" "$ZCOW" digest -f vmdk "$src"
expect_error "raw as qcow2" "$work/text.raw" "$ZCOW" digest -f qcow2 "$work/text.raw"
expect_error "TLS without TLS" "TLS" "$ZCOW" digest --tls-psk-file "$work/k" "$src"
expect_error "no source" "needs a source" "$ZCOW" digest
out=$("$ZCOW" digest "$work/ones.raw" "$work/none.raw" "$work/text.raw" 2>"$work/err")
rc=$?
if [ "$rc" = 1 ] && [ "$(echo "$out" | grep -c .)" = 2 ] && grep -q none.raw "$work/err"; then
    pass
else
    fail "several sources, one missing: exit $rc, out '$out', err '$(cat "$work/err")'"
fi
finish
