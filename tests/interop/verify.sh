#!/usr/bin/env bash
# verify.sh - zcow verify on a backup directory made by zcow backup --qmp of
# a running TCG QEMU (two small disks, a full and two incrementals), and on
# copies of it damaged one way each.  Every damage is caught, with the
# point named and a non-zero exit; a good DIR verifies with one line per
# point; verify changes nothing in DIR.
#   good        every point ok, exit 0; --point N reports N only, --disk
#               one disk only, --point latest the latest of each disk;
#               each image read once (the bytes read from the disk); on
#               read-only media
#   compressed  a flipped byte inside a compressed cluster's stream: it
#               fails to decompress, or (with some seeds) decompresses to
#               other bytes, which the digest sees
#   longer      a stream that decompresses to more than a cluster, which
#               QEMU reads cut at the cluster's end
#   refcount    a refcount raised (a leak): only the structure check sees it
#   data        a bit flipped in a cluster stored uncompressed: only the
#               digest sees it, in every point that reads the cluster;
#               data-overwritten: in a cluster the next point rewrites,
#               so that point is good (its block hashes are recomputed
#               from the images, not taken from what was recorded)
#   truncated   an image cut short: it and the points above it are bad
#   missing     an image removed: the same
#   link        an incremental's backing file pointed at the wrong point
#               (qemu-img rebase -u); format: its backing format raw;
#               full-backing: a full given a backing file
#   size        the manifest's virtual size of a point edited
#   name        the manifest's file of a point pointing at another image
#   first       the manifest's first point of a disk removed: the next, an
#               incremental, has no point before it
#   digest      the manifest's digest of a point edited: it is bad, the
#               next good; blkhash: a point's block-hash file damaged;
#               no-digest: a point without one says "ok (no digest)"
#   chains      a second full and an incremental over it: each chain from
#               its full; a point of the second reads none of the first
#   bad input   no DIR, not a backup DIR, a manifest that is not JSON, no
#               such disk or point: exit 1 and one line
. "$(dirname "$0")/functions.sh"
. "$(dirname "$0")/backup-functions.sh"
requires qemu-img qemu-io qemu-system-x86_64 python3 sha256sum /usr/bin/time strace
requires_zcow
requires_nbd_support

QMP=$ROOT/tests/interop/qmp.py
qsock=$work/qmp.sock
msock=$work/mon.sock
VDA=/machine/peripheral/vda/virtio-backend
VDB=/machine/peripheral/vdb/virtio-backend

cleanup_fn qemu_stop

# ---- a backup directory: full, then two incrementals ------------------------
# vda: words (compressed clusters), random bytes (stored as they are), zeros.
python3 - "$work" "$TEST_SEED" <<'EOF'
import os, random, sys
d, rnd = sys.argv[1], random.Random(int(sys.argv[2]))
MiB = 1 << 20
words = [bytes(rnd.choice("etaoinshrdlu") * rnd.randint(1, 3), "ascii") for _ in range(300)]
text = b" ".join(rnd.choice(words) for _ in range(3 * MiB // 3))[:8 * MiB]
with open(os.path.join(d, "vda.raw"), "wb") as f:
    f.truncate(32 * MiB)
    f.write(text.ljust(8 * MiB, b"."))
    f.seek(16 * MiB)
    f.write(rnd.randbytes(4 * MiB))
with open(os.path.join(d, "vdb.raw"), "wb") as f:
    f.truncate(8 * MiB)
    f.write(b"vdb holds words " * (MiB // 16))
EOF
for d in vda vdb; do qemu-img convert -f raw -O qcow2 "$work/$d.raw" "$work/$d.qcow2"; done
qemu_start || { fail "cannot start QEMU"; finish; }

D=$work/dir
backup() { "$ZCOW" backup -j 2 --qmp "$qsock" "$D" >/dev/null 2>&1 || fail "backup $*"; }
backup full
python3 "$QMP" "$msock" write "$VDA" "write -P 0x61 1M 128k" "write -z 16M 64k" ||
    fail "write 1"
python3 "$QMP" "$msock" write "$VDB" "write -P 0x62 64k 64k" || fail "write 1b"
backup inc 2
python3 "$QMP" "$msock" write "$VDA" "write -P 0x63 2M 192k" "write -P 0x64 20M 64k" ||
    fail "write 2"
backup inc 3
qemu_stop
[ "$(ls "$D"/vda/*.qcow2 | wc -l)" = 3 ] || { fail "want 3 points of vda: $(ls "$D"/vda)"; finish; }

# verify_bad NAME DIR WANT [ARGS...]: exit 2, a BAD line matching WANT (a
# grep -E pattern), and the message naming the point.
verify_bad() {
    local name=$1 dir=$2 want=$3 out rc
    shift 3
    out=$("$ZCOW" verify "$@" "$dir" 2>&1)
    rc=$?
    if [ "$rc" = 2 ] && echo "$out" | grep -Eq "$want" &&
        echo "$out" | grep -q "^zcow: .* point [0-9]* is bad: "; then
        pass
    else
        fail "$name: exit $rc, want 2 and /$want/: $(echo "$out" | tr '\n' '|')"
    fi
}

# damaged NAME: a fresh copy of the good DIR to damage, $work/NAME.
damaged() {
    rm -rf "${work:?}/$1"
    cp -a "$D" "$work/$1"
    echo "$work/$1"
}

# ---- good -----------------------------------------------------------------------
sum_before=$(cd "$D" && find . -type f -print0 | sort -z | xargs -0 sha256sum)
out=$("$ZCOW" verify "$D" 2>&1)
rc=$?
want="vda 1 full ok
vda 2 inc ok
vda 3 inc ok
vdb 1 full ok
vdb 2 inc ok
vdb 3 inc ok
6 points of 2 disks verified: all good"
[ "$rc" = 0 ] && [ "$out" = "$want" ] && pass || fail "good DIR: exit $rc: $out"
out=$("$ZCOW" verify --point 2 --disk vda "$D" 2>&1)
[ "$?" = 0 ] && [ "$out" = "vda 2 inc ok
1 point of 1 disk verified: all good" ] && pass || fail "--point 2 --disk vda: $out"
out=$("$ZCOW" verify --point latest "$D" 2>&1)
[ "$?" = 0 ] && [ "$(echo "$out" | head -2 | tr '\n' ' ')" = "vda 3 inc ok vdb 3 inc ok " ] &&
    pass || fail "--point latest: $out"
# Each image is read once, not again under every point above it: a run
# after the first (which brought the program and the images' metadata into
# the page cache) reads from the disk (O_DIRECT) about the images' bytes.
# Up to three tries: another process dropping the page cache meanwhile
# makes a run read the program again.
total=$(cat "$D"/vd?/*.qcow2 | wc -c)
"$ZCOW" verify "$D" >/dev/null 2>&1
for try in 1 2 3; do
    inblocks=$(/usr/bin/time -f %I "$ZCOW" verify "$D" 2>&1 >/dev/null | tail -n 1)
    [ "$((inblocks * 512))" -le "$((total * 5 / 4))" ] && break
done
[ "$((inblocks * 512))" -le "$((total * 5 / 4))" ] && pass ||
    fail "verify read $((inblocks * 512)) bytes from the disk, the images hold $total"
# On read-only media (a read-only bind mount of DIR, as root): verified all
# the same, under a shared lock of its .lock.
if [ "$(id -u)" = 0 ] && mkdir -p "$work/ro" && mount --bind "$D" "$work/ro" 2>/dev/null; then
    cleanup_fn umount "$work/ro"
    if mount -o remount,bind,ro "$work/ro" 2>/dev/null && ! touch "$work/ro/x" 2>/dev/null; then
        out=$("$ZCOW" verify --point latest "$work/ro" 2>&1) && pass || fail "read-only DIR: $out"
    fi
fi
sum_after=$(cd "$D" && find . -type f -print0 | sort -z | xargs -0 sha256sum)
[ "$sum_before" = "$sum_after" ] && pass || fail "verify changed DIR"

# ---- a flipped byte in a compressed cluster's stream --------------------------------
# host_of IMAGE N: the host offset and length of the Nth compressed cluster
# of IMAGE (from its L1 and L2 tables).
compressed_at() {
    python3 - "$1" "$2" <<'EOF'
import struct, sys
f = open(sys.argv[1], "rb")
h = f.read(104)
cb, = struct.unpack(">I", h[20:24])
l1n, l1o = struct.unpack(">IQ", h[36:48])
cs = 1 << cb
f.seek(l1o)
l1 = struct.unpack(">%dQ" % l1n, f.read(8 * l1n))
want = int(sys.argv[2])
shift = 62 - (cb - 8)
for e in l1:
    l2o = e & 0x00fffffffffffe00
    if not l2o:
        continue
    f.seek(l2o)
    for (x,) in struct.iter_unpack(">Q", f.read(cs)):
        if x & (1 << 62):
            if want == 0:
                off = x & ((1 << shift) - 1)
                sectors = ((x >> shift) & ((1 << (cb - 8)) - 1)) + 1
                print(off, sectors * 512 - (off & 511))
                sys.exit(0)
            want -= 1
sys.exit(1)
EOF
}
flip() { # flip FILE OFFSET: invert the byte at OFFSET
    python3 -c 'import sys
f = open(sys.argv[1], "r+b"); f.seek(int(sys.argv[2])); b = f.read(1)
f.seek(int(sys.argv[2])); f.write(bytes([b[0] ^ 0xff]))' "$1" "$2"
}
x=$(damaged compressed)
read -r coff clen < <(compressed_at "$x/vda/000001.qcow2" 5) || fail "no compressed cluster"
flip "$x/vda/000001.qcow2" $((coff + 40))
verify_bad compressed "$x" "^vda 1 full BAD: .*(cannot decompress|its content.s digest is)"

# ---- a stream that decompresses to more than a cluster ------------------------------
# The first cluster's bytes and 100 more, in a stream no longer than the one
# it replaces: QEMU (and a plain reader) read the cluster right, cut at its
# end; only the exact decompression refuses it.
x=$(damaged longer)
for i in 0 1 2 3 4 5 6 7; do
    read -r coff clen < <(compressed_at "$x/vda/000001.qcow2" $i) || break
    python3 - "$x/vda/000001.qcow2" "$coff" "$clen" <<'EOF' && break
import sys, zlib
f = open(sys.argv[1], "r+b")
off, span = int(sys.argv[2]), int(sys.argv[3])
f.seek(off)
d = zlib.decompressobj(-12)
data = d.decompress(f.read(span), 65536)
old_len = span - len(d.unused_data)
c = zlib.compressobj(9, zlib.DEFLATED, -12)
new = c.compress(data + data[:100]) + c.flush()
if len(data) != 65536 or len(new) > old_len:
    sys.exit(1)
f.seek(off)
f.write(new)
EOF
done
if qemu-img compare -q "$D/vda/000001.qcow2" "$x/vda/000001.qcow2"; then
    verify_bad longer "$x" "^vda 1 full BAD: .*cannot decompress"
else
    fail "longer: the image reads differently to QEMU (or no cluster could be rewritten)"
fi

# ---- a refcount changed: only the structure check sees it -------------------------
x=$(damaged refcount)
python3 - "$x/vdb/000002.qcow2" <<'EOF'
import struct, sys
f = open(sys.argv[1], "r+b")
h = f.read(104)
rt_off, = struct.unpack(">Q", h[48:56])
order, = struct.unpack(">I", h[96:100])
assert order == 4
f.seek(rt_off)
rb_off, = struct.unpack(">Q", f.read(8))
f.seek(rb_off)   # the header's cluster: refcount 1 -> 2
f.write(struct.pack(">H", 2))
EOF
verify_bad refcount "$x" "^vdb 2 inc BAD: structure: 0 corruptions, 1 leaked clusters"

# ---- a flipped bit in a data cluster: only the digest sees it ------------------------
# vda's random bytes (16-20 MiB) are stored as they are: a bit flipped in
# the full's cluster at 17 MiB reads as other data, in every point (no
# incremental rewrites it); one at 16 MiB is in point 1 only (point 2
# zeroes that cluster): points 2 and 3 are then good, as their digests,
# recomputed from point 1's actual blocks, show.
normal_at() { # normal_at IMAGE GUEST: the host offset of GUEST in IMAGE
    qemu-img map --output=json -f qcow2 "$1" | python3 -c '
import json, sys
g = int(sys.argv[1])
for e in json.load(sys.stdin):
    if e["data"] and "offset" in e and e["start"] <= g < e["start"] + e["length"]:
        print(e["offset"] + g - e["start"])' "$2"
}
x=$(damaged data)
flip "$x/vda/000001.qcow2" "$(normal_at "$x/vda/000001.qcow2" $(((17 << 20) + 1000)))"
verify_bad data "$x" "^vda 1 full BAD: its content's digest is [0-9a-f]{64}, not the recorded [0-9a-f]{64}: 1 blocks of 64 KiB differ from its block-hash file's, the first at offset 17825792$"
verify_bad data-above "$x" "^vda 3 inc BAD: its content's digest is .* the first at offset 17825792$"
x=$(damaged data-overwritten)
flip "$x/vda/000001.qcow2" "$(normal_at "$x/vda/000001.qcow2" $(((16 << 20) + 1000)))"
verify_bad data-overwritten "$x" "^vda 1 full BAD: its content's digest"
out=$("$ZCOW" verify --point 2 --disk vda "$x" 2>&1) && pass ||
    fail "point 2 rewrote the damaged cluster of point 1, yet: $out"
# Under ThreadSanitizer (tests/run.sh's stage c: the check pool and the
# engine's digest tap at work) this is enough; the rest is single-threaded.
[ "${ZCOW_TEST_SANITIZER:-}" = thread ] && finish

# ---- a truncated image ----------------------------------------------------------------
x=$(damaged truncated)
truncate -s $(($(stat -c %s "$x/vda/000002.qcow2") / 2)) "$x/vda/000002.qcow2"
verify_bad truncated "$x" "^vda 2 inc BAD: "
verify_bad truncated-above "$x" "^vda 3 inc BAD: rests on point 2"
out=$("$ZCOW" verify --disk vdb "$x" 2>&1) && pass || fail "truncated vda spoils vdb: $out"

# ---- a missing image ---------------------------------------------------------------------
x=$(damaged missing)
rm "$x/vda/000002.qcow2"
verify_bad missing "$x" "^vda 2 inc BAD: image 'vda/000002.qcow2' is missing"
verify_bad missing-above "$x" "^vda 3 inc BAD: rests on point 2" --point 3
out=$("$ZCOW" verify --point 1 "$x" 2>&1) && pass || fail "missing 2 spoils point 1: $out"

# ---- a swapped link ----------------------------------------------------------------------
x=$(damaged link)
qemu-img rebase -u -f qcow2 -b 000001.qcow2 -F qcow2 "$x/vda/000003.qcow2"
verify_bad link "$x" "^vda 3 inc BAD: backing file '000001.qcow2', not point 2's '000002.qcow2'"
x=$(damaged format)
qemu-img rebase -u -f qcow2 -b 000002.qcow2 -F raw "$x/vda/000003.qcow2"
verify_bad format "$x" "^vda 3 inc BAD: backing format 'raw', not qcow2"
x=$(damaged full-backing)
qemu-img rebase -u -f qcow2 -b ../vda/000001.qcow2 -F qcow2 "$x/vdb/000001.qcow2"
verify_bad full-backing "$x" "^vdb 1 full BAD: a full point with a backing file"

# ---- the manifest changed -------------------------------------------------------------------
x=$(damaged size)
python3 - "$x/zcow-backup.json" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
m["disks"]["vdb"]["points"][1]["virtual-size"] += 65536
json.dump(m, open(sys.argv[1], "w"))
EOF
verify_bad size "$x" "^vdb 2 inc BAD: virtual size [0-9]*, the manifest says"
x=$(damaged name)
python3 - "$x/zcow-backup.json" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
m["disks"]["vdb"]["points"][2]["file"] = "vda/000003.qcow2"
json.dump(m, open(sys.argv[1], "w"))
EOF
verify_bad name "$x" "^vdb 3 inc BAD: the manifest names its image 'vda/000003.qcow2'"
x=$(damaged digest)
python3 - "$x/zcow-backup.json" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
p = m["disks"]["vda"]["points"][1]
p["digest"] = p["digest"][:-1] + ("0" if p["digest"][-1] != "0" else "1")
json.dump(m, open(sys.argv[1], "w"))
EOF
verify_bad digest "$x" "^vda 2 inc BAD: the recorded digest [0-9a-f]{64} is neither its content's nor its block-hash file's, [0-9a-f]{64}$"
out=$("$ZCOW" verify --point 3 "$x" 2>&1) && pass || fail "an edited digest of point 2 spoils point 3: $out"
x=$(damaged blkhash)
flip "$x/vda/000002.blkhash" 5000
verify_bad blkhash "$x" "^vda 2 inc BAD: .*000002\.blkhash"
x=$(damaged no-digest)
python3 - "$x/zcow-backup.json" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
for k in ("digest", "blkhash"):
    m["disks"]["vdb"]["points"][0].pop(k, None)
json.dump(m, open(sys.argv[1], "w"))
EOF
out=$("$ZCOW" verify --disk vdb "$x" 2>&1)
[ $? = 0 ] && echo "$out" | grep -q "^vdb 1 full ok (no digest)$" && echo "$out" | grep -q "^vdb 2 inc ok$" &&
    pass || fail "a point without a digest: $out"
x=$(damaged first)
python3 - "$x/zcow-backup.json" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
del m["disks"]["vdb"]["points"][0]
json.dump(m, open(sys.argv[1], "w"))
EOF
verify_bad first "$x" "^vdb 2 inc BAD: an incremental without a point before it"

# ---- bad input --------------------------------------------------------------------------------
x=$(damaged json)
echo "{" >>"$x/zcow-backup.json"
bad_input() {
    local name=$1 want=$2 out rc
    shift 2
    out=$("$ZCOW" verify "$@" 2>&1)
    rc=$?
    [ "$rc" = 1 ] && [ "$(echo "$out" | wc -l)" = 1 ] && echo "$out" | grep -q "^zcow: .*$want" &&
        pass || fail "$name: exit $rc: $out"
}
bad_input json "zcow-backup.json" "$x"
bad_input no-dir "No such file" "$work/none"
mkdir "$work/other" && touch "$work/other/file"
bad_input not-ours "not a zcow backup directory" "$work/other"
bad_input no-disk "no disk 'vdc'" --disk vdc "$D"
bad_input no-point "no disk has a point 9" --point 9 "$D"
bad_input bad-point "must be a point number" --point x "$D"

# ---- a second chain: a new full, and an incremental over it ---------------------------
# Each chain is verified from its own full; --point 5 reads points 4 and 5
# only (point 2 removed does not touch it), all points still verify but 2
# and 3.
qemu_start || fail "cannot restart QEMU"
"$ZCOW" backup --level full --qmp "$qsock" "$D" >/dev/null 2>&1 || fail "backup full 4"
python3 "$QMP" "$msock" write "$VDA" "write -P 0x65 3M 64k" || fail "write 4"
backup inc 5
qemu_stop
out=$("$ZCOW" verify --disk vda "$D" 2>&1)
[ $? = 0 ] && [ "$(echo "$out" | grep -c ' ok$')" = 5 ] && echo "$out" | grep -q "^vda 4 full ok$" &&
    pass || fail "two chains: $out"
x=$(damaged chains)
rm "$x/vda/000002.qcow2"
# (LeakSanitizer cannot run traced.)
out=$(ASAN_OPTIONS="${ASAN_OPTIONS:-}:detect_leaks=0" strace -f -qq -e trace=openat \
    -o "$work/strace.log" "$ZCOW" verify --point 5 --disk vda "$x" 2>&1) &&
    ! grep -q "vda/00000[123]\.qcow2" "$work/strace.log" && pass ||
    fail "point 5 of the second chain reads the first: $out $(grep -c qcow2 "$work/strace.log")"
verify_bad chains "$x" "^vda 3 inc BAD: rests on point 2" --disk vda
out=$("$ZCOW" verify --disk vda "$x" 2>&1)
echo "$out" | grep -q "^vda 5 inc ok$" && pass || fail "the second chain is spoilt by the first: $out"

finish
