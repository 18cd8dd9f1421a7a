#!/usr/bin/env bash
# check-mutations.sh - `zcow check` agrees with `qemu-img check` on images
# damaged at random.
#
# Each seed image of tests/fuzz/corpus/check is mutated MUTATIONS times
# (default 10) by a seeded python script: 8-byte words of its metadata
# (header, refcount table and blocks, L1 and L2 tables, snapshot table)
# set to interesting values, bits flipped, the file cut short.  Both tools
# must give the same exit code and, when the check completes, the same
# JSON.  Images that qemu-img cannot open because their backing file name
# was damaged, or because it wants an encryption key (zcow checks
# encrypted images without one), are not compared.  The seed is printed
# and taken from TEST_SEED to reproduce a failure; the failing image is
# kept in build/check-mutations/ for a look.
#
# Exit 0 pass, 1 fail.  qemu-img and python3 are required (a missing one
# is a failure, not a skip).
. "$(dirname "$0")/functions.sh"
requires qemu-img python3
requires_zcow
tmp=$work
MUTATIONS=${MUTATIONS:-10}
SEED=$TEST_SEED
seeds=$ROOT/tests/fuzz/corpus/check
if [ ! -d "$seeds" ]; then
    echo "$TEST_NAME: no seed images in $seeds" >&2
    exit 1
fi
keep=$ROOT/build/check-mutations
skipped=0

echo "# check-mutations: seed $SEED (reproduce with TEST_SEED=$SEED)"

# Seeds keep their names with a .qcow2 suffix, so that the image whose
# backing file is "zlib-4k.qcow2" finds it.
for f in "$seeds"/*; do
    cp "$f" "$tmp/$(basename "$f").qcow2"
done

cat >"$tmp/mutate.py" <<'EOF'
import random, struct, sys

def mutate(d, r):
    be64 = lambda o: struct.unpack('>Q', bytes(d[o:o + 8]).ljust(8, b'\0'))[0]
    be32 = lambda o: struct.unpack('>I', bytes(d[o:o + 4]).ljust(4, b'\0'))[0]
    cs = 1 << be32(20)
    OFF = 0x00fffffffffffe00

    # Where the metadata is: header, reftable, refblocks, L1, L2, snapshots.
    regions = [(0, 112)]
    rt, rtc = be64(48), be32(56)
    regions.append((rt, rtc * cs))
    for i in range(min(rtc * cs // 8, 64)):
        rb = be64(rt + 8 * i) & ~0x1ff
        if rb and rb < len(d):
            regions.append((rb, cs))
    l1, l1n = be64(40), be32(36)
    regions.append((l1, l1n * 8))
    for i in range(min(l1n, 64)):
        l2 = be64(l1 + 8 * i) & OFF
        if l2 and l2 < len(d):
            regions.append((l2, cs))
    if be32(60):
        regions.append((be64(64), 512))
    regions = [(o, min(n, len(d) - o)) for o, n in regions if 0 <= o < len(d) and n > 0]

    interesting = [0, 1, 0x200, cs, cs - 1, len(d), len(d) + cs, 1 << 40, (1 << 63) | cs,
                   1 << 62, 0xffffffffffffffff, 0x7fffffffc0000000]
    for _ in range(r.randint(1, 4)):
        o, n = r.choice(regions)
        pos = o + (r.randrange(max(n, 8)) & ~7)
        if pos + 8 > len(d):
            continue
        k = r.randrange(4)
        if k == 0:
            v = r.choice(interesting)
        elif k == 1:
            v = be64(pos) ^ (1 << r.randrange(64))
        elif k == 2:
            v = (be64(pos) & ~OFF) | (r.choice(interesting) & OFF)
        else:
            v = be64(pos) + r.choice([-1, 1, -512, 512, -cs, cs])
        d[pos:pos + 8] = struct.pack('>Q', v & 0xffffffffffffffff)
    if r.randrange(8) == 0:
        del d[r.randrange(len(d)):]


src, dst, first, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
orig = open(src, 'rb').read()
for seed in range(first, first + count):
    r = random.Random(seed)
    d = bytearray(orig)
    mutate(d, r)
    open('%s-%d.qcow2' % (dst, seed), 'wb').write(d)
EOF

n=0
for f in "$tmp"/*.qcow2; do
    base=$(basename "$f" .qcow2)
    # Mutants beside the seeds, where the backing file name resolves.
    if ! python3 "$tmp/mutate.py" "$f" "$tmp/m-$base" $((SEED + n)) "$MUTATIONS"; then
        fail "cannot mutate $base"
        continue
    fi
    n=$((n + MUTATIONS))
    for img in "$tmp/m-$base"-*.qcow2; do
        timeout 60 qemu-img check -f qcow2 --output=json "$img" >"$tmp/q.json" 2>"$tmp/q.err"
        qrc=$?
        if grep -q -e "Could not open backing file" -e "key-secret" "$tmp/q.err"; then
            skipped=$((skipped + 1))
            continue
        fi
        timeout 60 "$ZCOW" check --output=json "$img" >"$tmp/z.json" 2>"$tmp/z.err"
        zrc=$?
        if [ "$qrc" = "$zrc" ] && { [ "$qrc" = 1 ] || cmp -s "$tmp/q.json" "$tmp/z.json"; }; then
            pass
            continue
        fi
        mkdir -p "$keep"
        name=$(basename "$img")
        cp "$img" "$keep/$name"
        fail "$name: zcow exits $zrc, qemu-img $qrc; kept as $keep/$name"
        diff "$tmp/q.json" "$tmp/z.json" | sed 's/^/#   /' | head -8
    done
    rm -f "$tmp/m-$base"-*.qcow2
done

echo "# check-mutations: $skipped skipped (backing file or key damaged)"
finish
