#!/usr/bin/env bash
# read-hostile.sh - broken and hostile images: `zcow info` and
# `zcow convert -O raw` (and `zcow digest` where asked) must fail with one
# clear line on stderr naming the file, exit 1 (not a signal), and leave
# no output or temporary file.
#
# Exit 0 pass, 1 fail.  qemu-img and qemu-io are required.
set -u

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
ZCOW=${ZCOW:-build/zcow}
case $ZCOW in /*) ;; *) ZCOW=$ROOT/$ZCOW ;; esac

for tool in qemu-img qemu-io python3; do
    if ! command -v "$tool" >/dev/null; then
        echo "FAIL: $tool is required and not found"
        exit 1
    fi
done
if [ ! -x "$ZCOW" ]; then
    echo "FAIL: $ZCOW is not built"
    exit 1
fi

tmp=$(mktemp -d /var/tmp/zcow-read-hostile.XXXXXX)
cleanup() { rm -rf "$tmp"; }
trap cleanup EXIT
trap 'exit 1' INT TERM
cd "$tmp" || exit 1

passed=0
failed=0
pass() { passed=$((passed + 1)); echo "ok - $*"; }
fail() { failed=$((failed + 1)); echo "not ok - $*"; }

# Overwrite bytes of FILE at OFFSET with a big-endian integer of WIDTH bytes.
poke() {
    python3 - "$@" <<'EOF'
import sys
path, off, width, val = sys.argv[1], int(sys.argv[2], 0), int(sys.argv[3]), int(sys.argv[4], 0)
with open(path, "r+b") as f:
    f.seek(off); f.write(val.to_bytes(width, "big"))
EOF
}

# A small valid image: 64 KiB clusters, data in the first 2 MiB.
fresh() {
    rm -f "$1"
    qemu-img create -q -f qcow2 "$1" 16M
    qemu-io -f qcow2 -c 'write -P 0x5a 0 2M' "$1" >/dev/null
}

# expect_fail LABEL NEEDLE [FORMAT-ARGS...] IMAGE: both commands fail
# cleanly and the message holds NEEDLE.
expect_fail() {
    local label=$1 needle=$2
    shift 2
    local img=${*: -1} ok=1 rc lines
    for cmd in ${ONLY:-info convert}; do
        rm -f out.raw out.raw.zcow-tmp-*
        if [ $cmd = info ]; then
            "$ZCOW" info --output=json "$@" >/dev/null 2>err
        elif [ $cmd = digest ]; then
            "$ZCOW" digest "$@" >/dev/null 2>err
        else
            "$ZCOW" convert -q -O raw "$@" out.raw >/dev/null 2>err
        fi
        rc=$?
        lines=$(wc -l <err)
        if [ $rc -ne 1 ]; then
            fail "$label: zcow $cmd exited $rc: $(head -c 300 err)"
            ok=0
        elif [ "$lines" -ne 1 ]; then
            fail "$label: zcow $cmd printed $lines lines: $(head -c 300 err)"
            ok=0
        elif ! grep -q "^zcow: .*$needle" err; then
            fail "$label: zcow $cmd said '$(cat err)', expected '$needle'"
            ok=0
        elif ! grep -qF "'$img'" err && ! grep -qF "$(basename "$img")'" err; then
            fail "$label: zcow $cmd does not name the file: $(cat err)"
            ok=0
        elif ls out.raw out.raw.zcow-tmp-* >/dev/null 2>&1; then
            fail "$label: zcow $cmd left an output file behind"
            ok=0
        fi
    done
    [ $ok = 1 ] && pass "$label"
}

printf 'plain text, not an image\n' >text.txt
expect_fail "text file as -f qcow2" "not a qcow2 image" -f qcow2 text.txt
expect_fail "missing file" "No such file" missing.qcow2

fresh t.qcow2
truncate -s 50 t.qcow2
expect_fail "truncated inside the header" "too short" t.qcow2

fresh t.qcow2
truncate -s $((0x30000 + 4)) t.qcow2 # QEMU puts the L1 table at 0x30000
expect_fail "truncated inside the l1 table" "l1 table" t.qcow2

fresh t.qcow2
poke t.qcow2 40 8 $((1 << 44))
expect_fail "l1 offset beyond the file" "beyond the end of the file" t.qcow2

fresh t.qcow2
poke t.qcow2 40 8 $((0x30000 + 512))
expect_fail "l1 offset not aligned" "not cluster aligned" t.qcow2

fresh t.qcow2
poke t.qcow2 36 4 0xffffffff
expect_fail "huge l1_size" "too large" t.qcow2

fresh t.qcow2
poke t.qcow2 36 4 0
expect_fail "l1 too small for the size" "too small" t.qcow2

fresh t.qcow2
poke t.qcow2 24 8 0xffffffffffffff00
expect_fail "huge virtual size" "too large" t.qcow2

fresh t.qcow2
poke t.qcow2 72 8 $((1 << 9))
expect_fail "unknown incompatible feature" "unsupported qcow2 feature" t.qcow2

fresh t.qcow2
poke t.qcow2 72 8 4
expect_fail "external data file bit" "external data files are not supported" t.qcow2

fresh t.qcow2
poke t.qcow2 32 4 1
expect_fail "encryption" "encrypted images are not supported" t.qcow2

fresh t.qcow2
poke t.qcow2 20 4 33
expect_fail "cluster bits 33" "cluster size out of range" t.qcow2

fresh t.qcow2
poke t.qcow2 4 4 7
expect_fail "version 7" "unsupported qcow2 version" t.qcow2

fresh t.qcow2
poke t.qcow2 116 4 0x7fffffff # the first extension's length
expect_fail "extension longer than the cluster" "header extension" t.qcow2

fresh t.qcow2
poke t.qcow2 8 8 4096
poke t.qcow2 16 4 2000
expect_fail "backing name too long" "too long" t.qcow2

# An L2 offset past the end: opening works, reading fails.
fresh t.qcow2
poke t.qcow2 $((0x30000)) 8 0x8000010000000000
expect_fail "l2 table beyond the file" "beyond the end of the file" t.qcow2

# A corrupt compressed stream (info reads only metadata: it succeeds).
rm -f c.qcow2
head -c 1M /usr/bin/qemu-img >c.raw
qemu-img convert -q -c -O qcow2 c.raw c.qcow2
python3 - c.qcow2 <<'EOF'
import sys
# Garble the first compressed stream: the L2 table's first entry names it.
with open(sys.argv[1], "r+b") as f:
    f.seek(0x30000); l1 = int.from_bytes(f.read(8), "big") & 0x00fffffffffffe00
    f.seek(l1); e = int.from_bytes(f.read(8), "big")
    off = e & ((1 << 54) - 1)
    f.seek(off); f.write(b"\xff" * 64)
EOF
ONLY=convert expect_fail "corrupt compressed stream" "cannot decompress" c.qcow2

# A data cluster far past the end of the file (QEMU reads it as zeros):
# reading it fails, as for a compressed one (info reads only metadata).
fresh t.qcow2
python3 - t.qcow2 <<'EOF'
import sys
# The first L2 entry (guest offset 0) points at 2^55.
with open(sys.argv[1], "r+b") as f:
    f.seek(0x30000); l2 = int.from_bytes(f.read(8), "big") & 0x00fffffffffffe00
    f.seek(l2); f.write(((1 << 63) | (1 << 55)).to_bytes(8, "big"))
EOF
ONLY="convert digest" expect_fail "data cluster beyond the file" \
    "data cluster at offset 0x80000000000000 is beyond the end of the file" t.qcow2

# Backing files: missing, a loop a -> b -> a, a loop onto itself.
qemu-img create -q -f qcow2 -b gone.qcow2 -F qcow2 -u orphan.qcow2 16M
expect_fail "missing backing file" "cannot open backing file.*No such file" orphan.qcow2
qemu-img create -q -f qcow2 a.qcow2 16M
qemu-img create -q -f qcow2 -b a.qcow2 -F qcow2 b.qcow2
qemu-img rebase -q -u -b b.qcow2 -F qcow2 a.qcow2
expect_fail "backing loop a -> b -> a" "loop" a.qcow2
qemu-img create -q -f qcow2 s.qcow2 16M
qemu-img rebase -q -u -b s.qcow2 -F qcow2 s.qcow2
expect_fail "backing file is itself" "loop" s.qcow2
qemu-img create -q -f qcow2 v.qcow2 16M
qemu-img create -q -f qcow2 -b v.qcow2 -F vmdk -u w.qcow2 16M
expect_fail "backing format not supported" "backing format 'vmdk'" w.qcow2

# Random damage in the header: never a crash or a hang.
fresh t.qcow2
python3 - t.qcow2 <<'EOF'
import random, sys
orig = open(sys.argv[1], "rb").read()
for i in range(1, 151):
    r = random.Random(i)
    b = bytearray(orig)
    for _ in range(r.randrange(1, 6)):
        b[r.randrange(0, 256)] = r.randrange(256)
    open("damaged-%d.qcow2" % i, "wb").write(b)
EOF
crashes=0
for i in $(seq 1 150); do
    timeout 20 "$ZCOW" info "damaged-$i.qcow2" >/dev/null 2>&1
    rc1=$?
    rm -f out.raw
    timeout 20 "$ZCOW" convert -q -O raw "damaged-$i.qcow2" out.raw >/dev/null 2>&1
    rc2=$?
    if [ $rc1 -gt 1 ] || [ $rc2 -gt 1 ]; then
        crashes=$((crashes + 1))
        echo "# damage seed $i: info exit $rc1, convert exit $rc2"
    fi
    rm -f "damaged-$i.qcow2"
done
if [ $crashes -eq 0 ]; then pass "150 randomly damaged headers"; else fail "$crashes damaged headers crashed or hung"; fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
