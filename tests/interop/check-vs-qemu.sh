#!/usr/bin/env bash
# check-vs-qemu.sh - `zcow check` agrees with `qemu-img check`.
#
# On clean images made by qemu-img and qemu-io (compressed zlib and zstd,
# plain, zero clusters, discards, internal snapshots, persistent bitmaps,
# refcount widths 1..64, cluster sizes 512..2M, extended L2, compat=0.10)
# and on images damaged on purpose by a small python script (a leaked
# cluster, a refcount too low, L2 entries past the end of the file, the
# corrupt bit, reserved bits, a wrong COPIED flag, a truncated file, bad
# tables), both tools must give the same exit code and, when the check
# completes, the same JSON (corruptions, leaks, cluster counts, image end
# offset).  `zcow check --decompress` must also pass on the clean images.
#
# Exit 0 pass, 1 fail.  qemu-img, qemu-io and python3 are required (a
# missing one is a failure, not a skip).
. "$(dirname "$0")/functions.sh"
requires qemu-img qemu-io python3
requires_zcow
tmp=$work

# Each case prints one line, as TAP does; functions.sh counts them.
ok() { pass; echo "ok - $*"; }
bad() { fail "$*"; echo "not ok - $*"; }

# The damage tool: edits qcow2 metadata in place.
cat >"$tmp/edit.py" <<'EOF'
import struct, sys

path, op = sys.argv[1], sys.argv[2]
f = open(path, 'r+b')

def rd(off, n):
    f.seek(off)
    b = f.read(n)
    return b + bytes(n - len(b))

def wr(off, b):
    f.seek(off)
    f.write(b)

def be64(off): return struct.unpack('>Q', rd(off, 8))[0]
def be32(off): return struct.unpack('>I', rd(off, 4))[0]
def put64(off, v): wr(off, struct.pack('>Q', v))

version = be32(4)
cb = be32(20)
cs = 1 << cb
l1_size, l1_off = be32(36), be64(40)
rt_off, rt_clusters = be64(48), be32(56)
incompat = be64(72) if version == 3 else 0
order = be32(96) if version == 3 else 4
esize = 16 if incompat & 16 else 8
OFF = 0x00fffffffffffe00
file_len = f.seek(0, 2)

def refcount_addr(k):
    per_block = (cs * 8) >> order
    rb = be64(rt_off + 8 * (k // per_block)) & ~0x1ff
    assert rb, 'cluster %d has no refcount block' % k
    bit = (k % per_block) << order
    return rb + bit // 8, bit % 8

def get_rc(k):
    byte, shift = refcount_addr(k)
    bits = 1 << order
    if bits < 8:
        return (rd(byte, 1)[0] >> shift) & ((1 << bits) - 1)
    return int.from_bytes(rd(byte, bits // 8), 'big')

def set_rc(k, v):
    byte, shift = refcount_addr(k)
    bits = 1 << order
    if bits < 8:
        mask = ((1 << bits) - 1) << shift
        old = rd(byte, 1)[0]
        wr(byte, bytes([(old & ~mask) | ((v << shift) & mask)]))
    else:
        wr(byte, v.to_bytes(bits // 8, 'big'))

def l1_entries():
    for i in range(l1_size):
        e = be64(l1_off + 8 * i)
        if e:
            yield l1_off + 8 * i, e

def l2_entries(kind):
    """(address, entry) of the L2 entries of KIND: normal or compressed."""
    for _, e1 in l1_entries():
        l2 = e1 & OFF
        for i in range(cs // esize):
            e = be64(l2 + esize * i)
            if kind == 'compressed' and e & (1 << 62):
                yield l2 + esize * i, e
            if kind == 'normal' and not e & (1 << 62) and e & OFF:
                yield l2 + esize * i, e

def first(gen, what):
    for x in gen:
        return x
    sys.exit('no %s in %s' % (what, path))

if op == 'leak':
    # One more cluster at the end of the file, marked used by nobody.
    k = (file_len + cs - 1) // cs
    wr(k * cs, bytes(cs))
    set_rc(k, 1)
elif op == 'low':
    # The first L2 table loses its reference: refcount 1 -> 0.
    _, e = first(l1_entries(), 'L1 entry')
    set_rc((e & OFF) >> cb, get_rc((e & OFF) >> cb) - 1)
elif op == 'bump':
    # A data cluster's refcount one too high (a leak, and COPIED wrong).
    _, e = first(l2_entries('normal'), 'normal cluster')
    k = (e & OFF) >> cb
    set_rc(k, get_rc(k) + 1)
elif op == 'eof':
    # A normal L2 entry pointing 16 clusters past the end of the file.
    addr, e = first(l2_entries('normal'), 'normal cluster')
    put64(addr, (e & ~OFF) | (((file_len + 16 * cs) // cs * cs) & OFF))
elif op == 'ceof':
    # A compressed entry whose data lies 16 clusters past the end.
    addr, e = first(l2_entries('compressed'), 'compressed cluster')
    shift = 62 - (cb - 8)
    put64(addr, (e & ~((1 << shift) - 1)) | (file_len + 16 * cs))
elif op == 'ccopied':
    addr, e = first(l2_entries('compressed'), 'compressed cluster')
    put64(addr, e | (1 << 63))
elif op == 'copied':
    addr, e = first(l2_entries('normal'), 'normal cluster')
    put64(addr, e ^ (1 << 63))
elif op == 'l1reserved':
    addr, e = first(l1_entries(), 'L1 entry')
    put64(addr, e | 2)
elif op == 'l2reserved':
    addr, e = first(l2_entries('normal'), 'normal cluster')
    put64(addr, e | 4)
elif op == 'l2unaligned':
    addr, e = first(l2_entries('normal'), 'normal cluster')
    put64(addr, e + 512)
elif op == 'corrupt':
    put64(72, be64(72) | 2)
elif op == 'dirty':
    put64(72, be64(72) | 1)
elif op == 'truncate':
    f.truncate(file_len - 3 * cs // 2)
elif op == 'refblock_twice':
    put64(rt_off + 8, be64(rt_off))
elif op == 'refblock_unaligned':
    put64(rt_off, be64(rt_off) + 512)
elif op == 'reftable_reserved':
    put64(rt_off, be64(rt_off) | 1)
elif op == 'subcluster_bitmap':
    # Extended L2: a subcluster both allocated and zero.
    addr, e = first(l2_entries('normal'), 'normal cluster')
    put64(addr + 8, be64(addr + 8) | (1 << 32) | 1)
elif op == 'snap_l1_unaligned':
    snap = be64(64)
    put64(snap, be64(snap) + 512)
elif op == 'magic':
    wr(0, b'QFI\0')
elif op == 'l1_too_small':
    wr(36, struct.pack('>I', 0))
elif op == 'snap_unaligned':
    put64(64, be64(64) + 8)
else:
    sys.exit('unknown edit ' + op)
f.close()
EOF

# Deterministic source data: zeros, compressible runs, random bytes.
python3 - "$tmp/src.raw" <<'EOF'
import random, sys
r = random.Random(7)
out = bytearray()
for i in range(96):  # 6 MiB in 64 KiB pieces
    k = i % 4
    if k == 0:
        out += bytes(65536)
    elif k == 1:
        out += bytes(r.randrange(4) for _ in range(65536))
    elif k == 2:
        out += r.randbytes(65536)
    else:
        out += (b'zcow check %d ' % i) * (65536 // 16) + bytes(65536 % 16)
open(sys.argv[1], 'wb').write(out[:6 << 20])
EOF

# Compare the two tools on IMAGE; EXPECT is the exit code the case needs.
agree() {
    local name=$1 img=$2 expect=$3
    local qrc zrc
    qemu-img check -f qcow2 --output=json "$img" >"$tmp/q.json" 2>"$tmp/q.err"
    qrc=$?
    "$ZCOW" check --output=json "$img" >"$tmp/z.json" 2>"$tmp/z.err"
    zrc=$?
    if [ "$qrc" != "$expect" ]; then
        bad "$name: qemu-img check exits $qrc, the case needs $expect (test broken?)"
        sed 's/^/#   qemu: /' "$tmp/q.err" | head -5
        return
    fi
    if [ "$zrc" != "$qrc" ]; then
        bad "$name: zcow check exits $zrc, qemu-img check $qrc"
        sed 's/^/#   zcow: /' "$tmp/z.err" | head -10
        sed 's/^/#   qemu: /' "$tmp/q.err" | head -10
        return
    fi
    if [ "$qrc" != 1 ] && ! diff -u "$tmp/q.json" "$tmp/z.json" >"$tmp/diff"; then
        bad "$name: JSON differs from qemu-img's"
        sed 's/^/#   /' "$tmp/diff"
        sed 's/^/#   zcow: /' "$tmp/z.err" | head -10
        sed 's/^/#   qemu: /' "$tmp/q.err" | head -10
        return
    fi
    ok "$name (exit $zrc)"
}

# --decompress on a clean image: every compressed cluster must inflate.
decompresses() {
    local name=$1 img=$2
    if "$ZCOW" check --decompress -q "$img" 2>"$tmp/z.err"; then
        ok "$name: --decompress"
    else
        bad "$name: --decompress failed"
        sed 's/^/#   /' "$tmp/z.err" | head -5
    fi
}

qio() { qemu-io -f qcow2 "$@" >/dev/null; }

# ---- Clean images -----------------------------------------------------------

n=0
clean=()
mk() { # name, then qemu-img convert options
    local name=$1
    shift
    n=$((n + 1))
    local img="$tmp/c$n.qcow2"
    if ! qemu-img convert -f raw -O qcow2 "$@" "$tmp/src.raw" "$img" 2>"$tmp/mk.err"; then
        bad "cannot make $name: $(head -1 "$tmp/mk.err")"
        return 1
    fi
    clean+=("$name|$img")
}

for cs in 512 4k 64k 2M; do
    mk "zlib cluster_size=$cs" -c -o cluster_size=$cs
done
for cs in 4k 64k 1M; do
    mk "zstd cluster_size=$cs" -c -o cluster_size=$cs,compression_type=zstd
done
for bits in 1 2 4 8 16 32 64; do
    mk "compressed refcount_bits=$bits" -c -o refcount_bits=$bits,cluster_size=4k
done
for bits in 1 64; do
    mk "plain refcount_bits=$bits" -o refcount_bits=$bits
done
mk "plain 64k"
mk "plain compat=0.10" -o compat=0.10
mk "compressed compat=0.10" -c -o compat=0.10
mk "extended_l2 64k plain" -o extended_l2=on
mk "extended_l2 32k compressed" -c -o extended_l2=on,cluster_size=32k
mk "preallocation=metadata" -o preallocation=metadata

# Rewritten, zeroed, discarded: normal, zero-alloc and zero clusters.
mk "plain, then rewritten" -o cluster_size=4k && img=${clean[-1]#*|} &&
    qio -c "write -P 0x55 100k 300k" -c "write -z 1M 128k" -c "write -z -u 2M 64k" \
        -c "discard 3M 256k" "$img"
mk "compressed, then rewritten" -c && img=${clean[-1]#*|} &&
    qio -c "write -P 0x66 32k 200k" -c "write -z 2M 64k" "$img"
mk "extended_l2, subcluster writes" -o extended_l2=on,cluster_size=128k && img=${clean[-1]#*|} &&
    qio -c "write -P 0x11 4k 4k" -c "write -z 200k 8k" -c "discard 512k 64k" "$img"

# Internal snapshots: shared clusters, refcounts above one, COPIED clear.
mk "snapshots" -c && img=${clean[-1]#*|} && {
    qemu-img snapshot -c s1 "$img" && qio -c "write -P 0x77 0 256k" "$img" &&
        qemu-img snapshot -c s2 "$img" && qio -c "write -P 0x78 128k 1M" "$img" &&
        qemu-img snapshot -c s3 "$img" && qemu-img snapshot -d s2 "$img"
} || bad "cannot make the snapshot image"
mk "snapshots, refcount_bits=2" -o refcount_bits=2,cluster_size=4k && img=${clean[-1]#*|} && {
    qemu-img snapshot -c s1 "$img" && qemu-img snapshot -c s2 "$img" &&
        qio -c "write -P 0x79 0 64k" "$img"
} || bad "cannot make the snapshot image with 2-bit refcounts"

# Persistent dirty bitmaps: directory, bitmap tables and data clusters.
mk "bitmaps" -o cluster_size=64k && img=${clean[-1]#*|} && {
    qemu-img bitmap --add "$img" b0 && qemu-img bitmap --add -g 512 "$img" b1 &&
        qio -c "write -P 0x21 0 1M" "$img"
} || bad "cannot make the bitmap image"

for c in "${clean[@]}"; do
    agree "${c%%|*}" "${c#*|}" 0
done
for c in "${clean[@]}"; do
    case ${c%%|*} in
    zlib*|zstd*|compressed*|snapshots) decompresses "${c%%|*}" "${c#*|}" ;;
    esac
done

# ---- Damaged images ---------------------------------------------------------

damage() { # name, base image name, edit, expected exit
    local name=$1 base=$2 op=$3 expect=$4 src=
    for c in "${clean[@]}"; do
        [ "${c%%|*}" = "$base" ] && src=${c#*|}
    done
    if [ -z "$src" ]; then
        bad "$name: no base image '$base'"
        return
    fi
    local img="$tmp/damaged.qcow2"
    cp "$src" "$img"
    if ! python3 "$tmp/edit.py" "$img" "$op" 2>"$tmp/edit.err"; then
        bad "$name: edit '$op' failed: $(tail -1 "$tmp/edit.err")"
        return
    fi
    agree "$name" "$img" "$expect"
}

damage "leak, plain" "plain 64k" leak 3
damage "leak, compressed 4k" "zlib cluster_size=4k" leak 3
damage "leak, refcount_bits=1" "compressed refcount_bits=1" leak 3
damage "leak, refcount_bits=64" "compressed refcount_bits=64" leak 3
damage "refcount too low, plain" "plain 64k" low 2
damage "refcount too low, zstd" "zstd cluster_size=64k" low 2
damage "refcount too low, refcount_bits=2" "compressed refcount_bits=2" low 2
damage "refcount too high on data" "plain 64k" bump 2
damage "L2 entry past EOF" "plain 64k" eof 2
damage "L2 entry past EOF, extended_l2" "extended_l2 64k plain" eof 2
damage "compressed entry past EOF" "zlib cluster_size=64k" ceof 2
damage "compressed entry past EOF, 2M" "zlib cluster_size=2M" ceof 2
damage "COPIED on compressed" "zlib cluster_size=64k" ccopied 2
damage "COPIED flag wrong" "plain 64k" copied 2
damage "L1 reserved bit" "zlib cluster_size=64k" l1reserved 2
damage "L2 reserved bit" "plain 64k" l2reserved 2
damage "L2 offset unaligned" "plain 64k" l2unaligned 2
damage "corrupt bit" "zlib cluster_size=64k" corrupt 0
damage "dirty bit" "zlib cluster_size=64k" dirty 0
damage "truncated" "plain 64k" truncate 2
damage "truncated compressed" "zlib cluster_size=4k" truncate 2
damage "refcount table entry twice" "compressed refcount_bits=1" refblock_twice 2
damage "refcount block unaligned" "bitmaps" refblock_unaligned 1
damage "refcount table reserved bit" "zlib cluster_size=64k" reftable_reserved 2
damage "subcluster allocated and zero" "extended_l2, subcluster writes" subcluster_bitmap 2
damage "snapshot L1 unaligned" "snapshots" snap_l1_unaligned 2
damage "bad magic" "plain 64k" magic 1
damage "L1 table too small" "plain 64k" l1_too_small 1
damage "snapshot table unaligned" "snapshots" snap_unaligned 1
damage "leak with snapshots" "snapshots" leak 3
damage "refcount too low with snapshots" "snapshots" low 2

finish
