#!/usr/bin/env bash
# compare-basic.sh - `zcow compare` says what `qemu-img compare` says.
#
# Identical images, a difference at a known offset (exit 1 and the
# offset printed), sizes differing with a zero tail (identical) and with a
# nonzero tail, strict mode, raw against qcow2 (compressed zlib and zstd,
# plain, 4K clusters), a missing file (exit 2), -q.  Each case checks the
# exit code and the output against qemu-img compare's.
#
# Exit 0 pass, 1 fail.  qemu-img and python3 are required (a missing one
# is a failure, not a skip).
. "$(dirname "$0")/functions.sh"
requires qemu-img python3
requires_zcow
tmp=$work

# Each case prints one line, as TAP does; functions.sh counts them.
ok() { pass; echo "ok - $*"; }
bad() { fail "$*"; echo "not ok - $*"; }

# 13 MiB of mixed data (bytes 0..2 and random ones; pokes write 0xAA etc.) (more than three 4 MiB compare blocks), with a
# zero stretch in the middle.
python3 - "$tmp/a.raw" <<'EOF'
import random, sys
r = random.Random(11)
out = bytearray()
for i in range(13 * 16):  # 64 KiB pieces
    k = i % 5
    if k == 0 or 60 <= i < 80:
        out += bytes(65536)
    elif k == 1:
        out += r.randbytes(65536)
    else:
        out += bytes(r.randrange(3) for _ in range(4096)) * 16
open(sys.argv[1], 'wb').write(out)
EOF

poke() { # file offset byte
    printf "\\x$(printf %02x "$3")" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}

cp "$tmp/a.raw" "$tmp/diff-early.raw" && poke "$tmp/diff-early.raw" 1000000 0xAA
cp "$tmp/a.raw" "$tmp/diff-late.raw" && poke "$tmp/diff-late.raw" $((12 * 1048576 + 4097)) 0xAA
cp "$tmp/a.raw" "$tmp/diff-zero.raw" && poke "$tmp/diff-zero.raw" $((65 * 65536 + 513)) 0xAA
# Two differences in different 4 MiB blocks: the first one counts.
cp "$tmp/a.raw" "$tmp/diff-two.raw" && poke "$tmp/diff-two.raw" $((9 * 1048576)) 0x5a &&
    poke "$tmp/diff-two.raw" $((5 * 1048576 + 7)) 0x5a
cp "$tmp/a.raw" "$tmp/longer.raw" && truncate -s +3M "$tmp/longer.raw"
cp "$tmp/longer.raw" "$tmp/longer-dirty.raw" && poke "$tmp/longer-dirty.raw" $((13 * 1048576 + 2 * 1048576 + 600)) 0x7f
head -c 5000000 "$tmp/a.raw" >"$tmp/short.raw"

for spec in "zlib:-c" "zstd:-c -o compression_type=zstd" "plain:" "zlib4k:-c -o cluster_size=4k"; do
    # shellcheck disable=SC2086
    qemu-img convert -f raw -O qcow2 ${spec#*:} "$tmp/a.raw" "$tmp/a-${spec%%:*}.qcow2" ||
        bad "cannot make the ${spec%%:*} qcow2 image"
done
qemu-img convert -f raw -O qcow2 -c "$tmp/diff-late.raw" "$tmp/diff-late.qcow2"

# Run both tools with the same arguments; exit code and stdout must match,
# and the exit code must be EXPECT.
same() {
    local name=$1 expect=$2
    shift 2
    local qrc zrc
    qemu-img compare "$@" >"$tmp/q.out" 2>"$tmp/q.err"
    qrc=$?
    "$ZCOW" compare "$@" >"$tmp/z.out" 2>"$tmp/z.err"
    zrc=$?
    if [ "$qrc" != "$expect" ]; then
        bad "$name: qemu-img compare exits $qrc, the case needs $expect (test broken?)"
    elif [ "$zrc" != "$qrc" ]; then
        bad "$name: zcow compare exits $zrc, qemu-img compare $qrc"
        sed 's/^/#   zcow: /' "$tmp/z.out" "$tmp/z.err" | head -5
    elif ! diff -u "$tmp/q.out" "$tmp/z.out" >"$tmp/diff"; then
        bad "$name: output differs from qemu-img's"
        sed 's/^/#   /' "$tmp/diff"
    else
        ok "$name (exit $zrc: $(head -1 "$tmp/z.out"))"
    fi
}

same "identical raw" 0 -f raw -F raw "$tmp/a.raw" "$tmp/a.raw"
same "differ early" 1 -f raw -F raw "$tmp/a.raw" "$tmp/diff-early.raw"
same "differ in the last block" 1 "$tmp/a.raw" "$tmp/diff-late.raw"
same "differ in a zero stretch" 1 "$tmp/diff-zero.raw" "$tmp/a.raw"
same "two differences, the first reported" 1 "$tmp/a.raw" "$tmp/diff-two.raw"
same "longer with a zero tail" 0 "$tmp/a.raw" "$tmp/longer.raw"
same "longer with a zero tail, reversed" 0 "$tmp/longer.raw" "$tmp/a.raw"
same "longer with a nonzero tail" 1 "$tmp/a.raw" "$tmp/longer-dirty.raw"
same "shorter, unaligned size, differs past it" 1 "$tmp/short.raw" "$tmp/a.raw"
same "strict, sizes differ" 1 -s "$tmp/a.raw" "$tmp/longer.raw"
same "strict, same size" 0 -s "$tmp/a.raw" "$tmp/a.raw"
for k in zlib zstd plain zlib4k; do
    same "raw vs qcow2 ($k)" 0 -f raw -F qcow2 "$tmp/a.raw" "$tmp/a-$k.qcow2"
    same "qcow2 ($k) vs raw, probed" 0 "$tmp/a-$k.qcow2" "$tmp/a.raw"
done
same "qcow2 vs qcow2" 0 "$tmp/a-zlib.qcow2" "$tmp/a-zstd.qcow2"
same "qcow2 differing from raw" 1 "$tmp/diff-late.qcow2" "$tmp/a.raw"
same "qcow2 differing from qcow2" 1 "$tmp/a-plain.qcow2" "$tmp/diff-late.qcow2"
same "quiet, identical" 0 -q "$tmp/a.raw" "$tmp/a-zlib.qcow2"
same "quiet, different" 1 -q "$tmp/a.raw" "$tmp/diff-early.raw"

# A missing file: exit 2 (messages differ in wording).
"$ZCOW" compare "$tmp/a.raw" "$tmp/missing.raw" >/dev/null 2>"$tmp/z.err"
rc=$?
if [ "$rc" = 2 ] && grep -q "missing.raw" "$tmp/z.err"; then
    ok "missing file (exit 2)"
else
    bad "missing file: exit $rc, $(head -1 "$tmp/z.err")"
fi

finish
