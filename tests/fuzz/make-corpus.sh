#!/usr/bin/env bash
# make-corpus.sh - (re)make the seed corpora of the fuzz targets from
# small real images made by qemu-img and qemu-io: 1 MiB virtual, 512 B to
# 16 KiB clusters (and one empty 64 KiB image), each seed under 200 KiB.
#
#   corpus/check, corpus/reader   whole images (and one with a data
#                                 cluster past the end of the file)
#   corpus/header                 the first 4 KiB of each (header and
#                                 extensions)
#   corpus/decompress             compressed streams taken from the
#                                 images: one type byte (0 zlib, 1 zstd),
#                                 then the stream
#   corpus/blkhash                block-hash files of small disks
#
# usage: tests/fuzz/make-corpus.sh   (from the top of the tree)
set -eu

for tool in qemu-img qemu-io python3; do
    command -v "$tool" >/dev/null || { echo "make-corpus: $tool is required" >&2; exit 1; }
done

out=tests/fuzz/corpus
tmp=$(mktemp -d /var/tmp/zcow-corpus.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

python3 - "$tmp/src.raw" <<'PY'
import random, sys
r = random.Random(3)
b = bytearray(1 << 20)
# 1 MiB, mostly zeros: runs, text and a little random data in 16 KiB pieces.
for n, i in enumerate((1, 2, 3, 9, 10, 17, 40, 63)):
    k = n % 3
    if k == 0:
        piece = bytes(r.randrange(4) for _ in range(16384))
    elif k == 1:
        piece = (b'seed %02d ' % i) * 2048
    else:
        piece = r.randbytes(2048) + bytes(14336)
    b[i * 16384:(i + 1) * 16384] = piece
open(sys.argv[1], 'wb').write(b)
PY

make_image() { # name, then qemu-img convert options
    local name=$1
    shift
    qemu-img convert -f raw -O qcow2 "$@" "$tmp/src.raw" "$tmp/$name.qcow2"
}

make_image zlib-4k -c -o cluster_size=4k
make_image zlib-512 -c -o cluster_size=512
make_image zstd-16k -c -o cluster_size=16k,compression_type=zstd
make_image plain-4k -o cluster_size=4k
make_image v2-4k -c -o cluster_size=4k,compat=0.10
make_image rc1-4k -c -o cluster_size=4k,refcount_bits=1
make_image rc64-4k -o cluster_size=4k,refcount_bits=64
make_image extl2-16k -c -o cluster_size=16k,extended_l2=on
qemu-io -f qcow2 -c "write -P 0x22 36k 4k" -c "write -z 100k 4k" "$tmp/extl2-16k.qcow2" >/dev/null
make_image snap-4k -c -o cluster_size=4k
qemu-img snapshot -c s1 "$tmp/snap-4k.qcow2"
qemu-io -f qcow2 -c "write -P 0x33 0 8k" -c "write -z 32k 4k" "$tmp/snap-4k.qcow2" >/dev/null
qemu-img snapshot -c s2 "$tmp/snap-4k.qcow2"
make_image bitmap-16k -c -o cluster_size=16k
qemu-img bitmap --add "$tmp/bitmap-16k.qcow2" b0
qemu-io -f qcow2 -c "write -P 0x44 0 16k" "$tmp/bitmap-16k.qcow2" >/dev/null
qemu-img create -q -f qcow2 -o cluster_size=64k "$tmp/empty-64k.qcow2" 1M
qemu-img create -q -f qcow2 -o cluster_size=4k -b zlib-4k.qcow2 -F qcow2 "$tmp/backing-4k.qcow2" 1M

rm -rf "$out/check" "$out/reader" "$out/header" "$out/decompress"
mkdir -p "$out/check" "$out/reader" "$out/header" "$out/decompress"
for f in "$tmp"/*.qcow2; do
    name=$(basename "$f" .qcow2)
    size=$(stat -c %s "$f")
    if [ "$size" -gt $((200 * 1024)) ]; then
        echo "make-corpus: $name is $size bytes, over 200 KiB: left out" >&2
        continue
    fi
    cp "$f" "$out/check/$name"
    cp "$f" "$out/reader/$name"
    head -c 4096 "$f" >"$out/header/$name"
done

# A data cluster far past the end of the file (its first L2 entry set to
# 2^55): the reader refuses to read it, zcow check reports it.
python3 - "$tmp/plain-4k.qcow2" "$out/reader/pasteof-4k" <<'PY'
import struct, sys
d = bytearray(open(sys.argv[1], 'rb').read())
l2 = struct.unpack('>Q', d[struct.unpack('>Q', d[40:48])[0]:][:8])[0] & 0x00fffffffffffe00
d[l2:l2 + 8] = struct.pack('>Q', (1 << 63) | (1 << 55))
open(sys.argv[2], 'wb').write(d)
PY
cp "$out/reader/pasteof-4k" "$out/check/pasteof-4k"

# Compressed streams as the images hold them (whole sectors, as a reader
# reads them), the first few of each compressed image.
python3 - "$out/decompress" "$tmp"/zlib-4k.qcow2 "$tmp"/zstd-16k.qcow2 "$tmp"/zlib-512.qcow2 <<'PY'
import struct, sys
outdir = sys.argv[1]
for path in sys.argv[2:]:
    d = open(path, 'rb').read()
    be64 = lambda o: struct.unpack('>Q', d[o:o + 8])[0]
    cb = struct.unpack('>I', d[20:24])[0]
    l1_size, l1 = struct.unpack('>I', d[36:40])[0], be64(40)
    ctype = d[104] if struct.unpack('>I', d[100:104])[0] > 104 else 0
    shift = 62 - (cb - 8)
    n = 0
    for i in range(l1_size):
        l2 = be64(l1 + 8 * i) & 0x00fffffffffffe00
        for j in range((1 << cb) // 8 if l2 else 0):
            e = be64(l2 + 8 * j)
            if not e & (1 << 62) or n >= 4:
                continue
            off = e & ((1 << shift) - 1)
            sectors = ((e & ~(3 << 62)) >> shift) + 1
            data = d[off:off + sectors * 512 - (off & 511)]
            name = '%s-%d' % (path.rsplit('/', 1)[1].replace('.qcow2', ''), n)
            open('%s/%s' % (outdir, name), 'wb').write(bytes([ctype]) + data)
            n += 1
PY
# Block-hash files (lib/digest.c's format, written here from its
# description): disks of 1 MiB of data, of 1 MiB with zero blocks, and of
# 100000 bytes (a short last block).
mkdir -p "$out/blkhash"
python3 - "$out/blkhash" <<'PY'
import hashlib, struct, sys
B = 65536
def save(name, disk):
    n = (len(disk) + B - 1) // B
    entries, outer = b'', hashlib.sha256()
    for i in range(n):
        block = disk[i * B:(i + 1) * B]
        zero = not any(block)
        entries += bytes(32) if zero else hashlib.sha256(block).digest()
        outer.update(hashlib.sha256(block).digest())
    head = b'ZCOWBLKH' + struct.pack('<IIQII', 1, B, len(disk), 32, 4096)
    head += b'sha256/64k'.ljust(16, b'\0') + outer.digest()
    open('%s/%s' % (sys.argv[1], name), 'wb').write(head.ljust(4096, b'\0') + entries)
save('data-1m', bytes((i * 7) & 255 for i in range(1 << 20)))
save('zeros-1m', bytes(B * 5) + b'x' * B + bytes(B * 10))
save('short-100000', b'y' * 100000)
PY
du -sh "$out"/*
