#!/usr/bin/env bash
# read-qemu-images.sh - zcow reads what QEMU writes.
#
# Images made by qemu-img and qemu-io (compressed zlib and zstd, plain,
# zero clusters, discards, an internal snapshot, a backing chain of three,
# a raw backing file shorter than its overlay, extended L2, cluster sizes
# 4K..2M, refcount widths 1..64, compat=0.10) are restored with
# `zcow convert -O raw` and compared byte for byte with what
# `qemu-img convert -O raw` gives; `zcow info --output=json` is checked
# against `qemu-img info --output=json`.  Compressed clusters copied
# as they are into a new image (same type and cluster size) must give a
# clean `qemu-img check` and an identical `qemu-img compare`.
#
# Exit 0 pass, 1 fail.  qemu-img and qemu-io are required (a missing one
# is a failure, not a skip).
set -u

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
ZCOW=${ZCOW:-build/zcow}
case $ZCOW in /*) ;; *) ZCOW=$ROOT/$ZCOW ;; esac

for tool in qemu-img qemu-io python3 cmp; do
    if ! command -v "$tool" >/dev/null; then
        echo "FAIL: $tool is required and not found"
        exit 1
    fi
done
if [ ! -x "$ZCOW" ]; then
    echo "FAIL: $ZCOW is not built"
    exit 1
fi

tmp=$(mktemp -d /var/tmp/zcow-read-qemu.XXXXXX)
cleanup() { rm -rf "$tmp"; }
trap cleanup EXIT
trap 'exit 1' INT TERM

passed=0
failed=0
pass() { passed=$((passed + 1)); echo "ok - $*"; }
fail() { failed=$((failed + 1)); echo "not ok - $*"; }

qio() { qemu-io -f qcow2 "$@" >/dev/null || { echo "qemu-io $* failed"; return 1; }; }

# Compare zcow's restore and info with qemu-img's.  $1 image, $2 label,
# further arguments go to zcow convert.
check_image() {
    local img=$1 label=$2
    shift 2
    rm -f "$tmp/want.raw" "$tmp/got.raw"
    if ! qemu-img convert -O raw "$img" "$tmp/want.raw"; then
        fail "$label: qemu-img convert failed"
        return
    fi
    if ! "$ZCOW" convert -q -O raw "$@" "$img" "$tmp/got.raw" 2>"$tmp/err"; then
        fail "$label: zcow convert -O raw failed: $(cat "$tmp/err")"
        return
    fi
    if ! cmp -s "$tmp/want.raw" "$tmp/got.raw"; then
        fail "$label: restored bytes differ ($(cmp "$tmp/want.raw" "$tmp/got.raw" 2>&1 | head -1))"
        return
    fi
    if ! "$ZCOW" info --output=json "$img" >"$tmp/zinfo.json" 2>"$tmp/err"; then
        fail "$label: zcow info failed: $(cat "$tmp/err")"
        return
    fi
    qemu-img info --output=json "$img" >"$tmp/qinfo.json"
    local diff
    diff=$(python3 - "$tmp/zinfo.json" "$tmp/qinfo.json" <<'EOF'
import json, sys
z = json.load(open(sys.argv[1]))
q = json.load(open(sys.argv[2]))
bad = []
for k in ("virtual-size", "cluster-size", "format"):
    if z.get(k) != q.get(k):
        bad.append("%s: zcow %r, qemu %r" % (k, z.get(k), q.get(k)))
zd = z.get("format-specific", {}).get("data", {})
qd = q.get("format-specific", {}).get("data", {})
for k in ("compression-type", "compat", "refcount-bits", "extended-l2", "corrupt"):
    if k in qd and zd.get(k) != qd.get(k):
        bad.append("%s: zcow %r, qemu %r" % (k, zd.get(k), qd.get(k)))
if q.get("backing-filename") != z.get("backing-filename"):
    bad.append("backing-filename: zcow %r, qemu %r" % (z.get("backing-filename"), q.get("backing-filename")))
print("; ".join(bad))
EOF
)
    if [ -n "$diff" ]; then
        fail "$label: info differs: $diff"
        return
    fi
    pass "$label"
}

# Copy the compressed clusters as they are into a new image of the same
# type and cluster size; qemu-img must find it clean and identical.
check_copy() {
    local img=$1 label=$2 type=$3 cs=$4
    rm -f "$tmp/copy.qcow2"
    if ! "$ZCOW" convert -q -o "compression_type=$type,cluster_size=$cs" "$img" \
        "$tmp/copy.qcow2" 2>"$tmp/err"; then
        fail "$label: zcow convert failed: $(cat "$tmp/err")"
        return
    fi
    if ! qemu-img check "$tmp/copy.qcow2" >"$tmp/check.out" 2>&1; then
        fail "$label: qemu-img check: $(head -3 "$tmp/check.out")"
        return
    fi
    if ! qemu-img compare -q "$img" "$tmp/copy.qcow2"; then
        fail "$label: contents differ from the source"
        return
    fi
    pass "$label"
}

# The source data: random, text, zeros, a compressible pattern, and a size
# that is not a multiple of any cluster size.
base=$tmp/base.raw
python3 - "$base" <<'EOF'
import os, random, sys
r = random.Random(4)
size = 16 * 2**20 + 3 * 512
with open(sys.argv[1], "wb") as f:
    f.truncate(size)
    f.seek(0); f.write(os.urandom(3 * 2**20))
    with open("/usr/bin/qemu-img", "rb") as b:
        f.seek(5 * 2**20); f.write(b.read(4 * 2**20))
    f.seek(10 * 2**20); f.write(b"".join(b"line %d of a pattern\n" % i for i in range(200000))[:3 * 2**20])
    for _ in range(200):  # scattered small writes
        f.seek(r.randrange(0, size - 4096)); f.write(bytes([r.randrange(1, 256)]) * r.randrange(1, 4096))
    f.seek(size - 700); f.write(b"the end" * 100)
EOF

# ---- compressed, plain ------------------------------------------------------
qemu-img convert -c -O qcow2 "$base" "$tmp/zlib.qcow2"
check_image "$tmp/zlib.qcow2" "compressed zlib"
check_image "$tmp/zlib.qcow2" "compressed zlib, 1 thread, page cache source" -j 1 -T writeback
check_copy "$tmp/zlib.qcow2" "compressed zlib copied as is" zlib 64k
qemu-img convert -c -O qcow2 -o compression_type=zstd "$base" "$tmp/zstd.qcow2"
check_image "$tmp/zstd.qcow2" "compressed zstd"
check_copy "$tmp/zstd.qcow2" "compressed zstd copied as is" zstd 64k
check_copy "$tmp/zstd.qcow2" "compressed zstd recompressed to zlib" zlib 64k
qemu-img convert -O qcow2 "$base" "$tmp/plain.qcow2"
check_image "$tmp/plain.qcow2" "plain"

# ---- zero clusters and discards ---------------------------------------------
img=$tmp/zero.qcow2
qemu-img create -q -f qcow2 "$img" 16M
qio -c 'write -P 0xab 0 4M' -c 'write -z 1M 1M' -c 'write -z -u 3M 64k' \
    -c 'write -P 0xcd 8M 2M' -c 'write -z 9M 512k' -c 'write -z 12M 1M' "$img" &&
    check_image "$img" "zero clusters (allocated and not)"
img=$tmp/discard.qcow2
qemu-img convert -O qcow2 "$base" "$img"
qio -c 'discard 0 1M' -c 'discard 5M 2M' -c 'discard 12M 64k' "$img" &&
    check_image "$img" "discarded ranges"
img=$tmp/discard-c.qcow2
qemu-img convert -c -O qcow2 "$base" "$img"
qio -c 'discard 64k 1M' -c 'write -P 0x11 2M 100k' "$img" &&
    check_image "$img" "compressed with discards and rewrites"

# ---- an internal snapshot ---------------------------------------------------
img=$tmp/snap.qcow2
qemu-img convert -c -O qcow2 "$base" "$img"
qemu-img snapshot -c first "$img"
qio -c 'write -P 0x42 1M 3M' -c 'write -z 13M 1M' "$img" &&
    check_image "$img" "internal snapshot present"

# ---- a backing chain of three, relative names, read from elsewhere ---------
mkdir -p "$tmp/chain"
(
    cd "$tmp/chain" || exit 1
    qemu-img convert -c -O qcow2 -o cluster_size=64k "$base" base.qcow2 &&
        qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2 &&
        qio -c 'write -P 0x21 2M 1M' -c 'write -z 6M 1M' -c 'write -P 0x22 100k 7k' mid.qcow2 &&
        qemu-img create -q -f qcow2 -o compression_type=zstd -b mid.qcow2 -F qcow2 top.qcow2 &&
        qio -c 'write -P 0x31 2560k 1M' -c 'write -z 12M 1M' -c 'write -P 0x32 15M 64k' top.qcow2
) || fail "backing chain: making the chain failed"
check_image "$tmp/chain/top.qcow2" "backing chain of 3"
if "$ZCOW" info --output=json --backing-chain "$tmp/chain/top.qcow2" >"$tmp/chain.json" 2>"$tmp/err" &&
    python3 -c '
import json, sys
a = json.load(open(sys.argv[1]))
assert [i["filename"].split("/")[-1] for i in a] == ["top.qcow2", "mid.qcow2", "base.qcow2"], a
assert a[0]["backing-filename"] == "mid.qcow2" and a[0]["backing-filename-format"] == "qcow2"
assert a[0]["format-specific"]["data"]["compression-type"] == "zstd"
assert "backing-filename" not in a[2]
' "$tmp/chain.json"; then
    pass "info --backing-chain"
else
    fail "info --backing-chain: $(cat "$tmp/err")"
fi
"$ZCOW" info --backing-chain "$tmp/chain/top.qcow2" >"$tmp/chain.txt" 2>&1
if [ "$(grep -c '^image: ' "$tmp/chain.txt")" = 3 ] &&
    grep -q '^backing file: mid.qcow2' "$tmp/chain.txt"; then
    pass "info --backing-chain (human)"
else
    fail "info --backing-chain (human): $(cat "$tmp/chain.txt")"
fi

# A raw backing file shorter than its overlay: the rest reads as zero.
head -c $((5 * 1024 * 1024 + 512)) "$base" >"$tmp/short.raw"
img=$tmp/over-raw.qcow2
qemu-img create -q -f qcow2 -b short.raw -F raw "$img" 16M
qio -c 'write -P 0x77 4M 64k' "$img" && check_image "$img" "raw backing file shorter than the overlay"

# ---- extended L2 ------------------------------------------------------------
img=$tmp/extl2.qcow2
qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=64k "$img" 8M
qio -c 'write -P 0x51 0 2k' -c 'write -P 0x52 6k 2k' -c 'write -P 0x53 64k 64k' \
    -c 'write -z 66k 4k' -c 'write -z -u 200k 8k' -c 'write -P 0x54 1M 10k' "$img" &&
    check_image "$img" "extended l2"
qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=128k -b extl2.qcow2 -F qcow2 \
    "$tmp/extl2-top.qcow2"
qio -c 'write -P 0x61 4k 2k' -c 'write -z 1M 4k' -c 'write -P 0x62 2M 12k' "$tmp/extl2-top.qcow2" &&
    check_image "$tmp/extl2-top.qcow2" "extended l2 over extended l2 backing"
qemu-img convert -c -O qcow2 -o extended_l2=on "$base" "$tmp/extl2-c.qcow2"
check_image "$tmp/extl2-c.qcow2" "extended l2 compressed"

# ---- cluster sizes, refcount widths, compat=0.10 ----------------------------
for cs in 4k 16k 64k 1M 2M; do
    qemu-img convert -c -O qcow2 -o cluster_size=$cs "$base" "$tmp/cs.qcow2"
    check_image "$tmp/cs.qcow2" "cluster size $cs zlib"
done
for cs in 4k 512k 2M; do
    qemu-img convert -c -O qcow2 -o cluster_size=$cs,compression_type=zstd "$base" "$tmp/cs.qcow2"
    check_image "$tmp/cs.qcow2" "cluster size $cs zstd"
    check_copy "$tmp/cs.qcow2" "cluster size $cs zstd copied as is" zstd $cs
done
for rb in 1 2 4 8 16 32 64; do
    qemu-img convert -c -O qcow2 -o refcount_bits=$rb "$base" "$tmp/rb.qcow2"
    check_image "$tmp/rb.qcow2" "refcount_bits=$rb"
done
qemu-img convert -c -O qcow2 -o compat=0.10 "$base" "$tmp/v2.qcow2"
check_image "$tmp/v2.qcow2" "compat=0.10 compressed"
qemu-img create -q -f qcow2 -o compat=0.10 "$tmp/v2p.qcow2" 16M
qio -c 'write -P 0x13 0 3M' -c 'write -z 1M 1M' "$tmp/v2p.qcow2" && check_image "$tmp/v2p.qcow2" "compat=0.10 plain"

# ---- raw in, raw out ----------------------------------------------------------
if "$ZCOW" convert -q -f raw -O raw "$base" "$tmp/got.raw" 2>"$tmp/err" && cmp -s "$base" "$tmp/got.raw"; then
    pass "raw to raw"
else
    fail "raw to raw: $(cat "$tmp/err")"
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
