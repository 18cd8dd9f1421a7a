#!/usr/bin/env bash
# backup-digest.sh - the digests backups record (zcow backup --qmp of a
# running TCG QEMU, the test writing through the disks' devices), each
# checked against tests/interop/blkhash.py of a raw model of the disk as
# it was at the point:
#   1. a full, then incrementals (data over part of a 64 KiB block, zeros,
#      a discard, a write across blocks): each point's recorded digest is
#      blkhash.py's of the disk then, and zcow digest's of its image; each
#      has its block-hash file; zcow list shows the digest (text, JSON);
#   2. an incremental over a point whose block-hash file is damaged, and
#      over one without a digest (as made before zcow 0.3): said, the
#      previous point read instead, the new digest still right; the old
#      point lists "no digest", restores (not verified, said so);
#   3. restore: verified; with the recorded digest changed in the
#      manifest it fails naming the point and leaves no file (an existing
#      destination as it was); --no-verify restores it;
#   4. stray block-hash files (of a killed backup) are removed by the next
#      backup; a point whose images do not give its digest is no base for
#      an incremental.
. "$(dirname "$0")/functions.sh"
. "$(dirname "$0")/backup-functions.sh"
requires qemu-img qemu-io qemu-system-x86_64 python3
requires_zcow
requires_nbd_support

QMP=$ROOT/tests/interop/qmp.py
BLKHASH=$ROOT/tests/interop/blkhash.py
qsock=$work/qmp.sock
msock=$work/mon.sock
VDA=/machine/peripheral/vda/virtio-backend
VDB=/machine/peripheral/vdb/virtio-backend
cleanup_fn qemu_stop

# write DISK CMD...: as the guest would, and into the model.
write() {
    local disk=$1 qdev
    shift
    [ "$disk" = vda ] && qdev=$VDA || qdev=$VDB
    python3 "$QMP" "$msock" write "$qdev" "$@" || fail "write $disk $*"
    model "$disk" "$@"
}

# field DIR DISK N KEY...: the KEYs of point N (0: the latest) of DISK,
# from the manifest, on one line ("-" when absent).
field() {
    python3 - "$@" <<'EOF'
import json, sys
d, disk, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
pts = json.load(open(d + "/zcow-backup.json"))["disks"][disk]["points"]
p = pts[-1] if n == 0 else [p for p in pts if p["number"] == n][0]
print(" ".join(str(p.get(k, "-")) for k in sys.argv[4:]))
EOF
}

# edit DIR PYTHON: run PYTHON on the manifest m, then save it.
edit() {
    python3 - "$1" "$2" <<'EOF'
import json, sys
path = sys.argv[1] + "/zcow-backup.json"
m = json.load(open(path))
exec(sys.argv[2])
json.dump(m, open(path, "w"), indent=2)
EOF
}

# expect_digest DIR DISK N SNAP: the digest recorded for point N of DISK is
# blkhash.py's of the model kept as SNAP, and zcow digest's of the image.
expect_digest() {
    local dir=$1 disk=$2 n=$3 s=$4 got file hashes want
    read -r got file hashes <<<"$(field "$dir" "$disk" "$n" digest file blkhash)"
    want=sha256/64k:$(python3 "$BLKHASH" "$work/$disk.$s" | cut -d' ' -f1)
    [ "$got" = "$want" ] && pass || fail "$disk point $n: recorded '$got', the disk had $want"
    [ "sha256/64k:$("$ZCOW" digest "$dir/$file" | cut -d' ' -f1)" = "$want" ] && pass ||
        fail "$disk point $n: zcow digest of $dir/$file is not $want"
    [ -f "$dir/$hashes" ] && pass || fail "$disk point $n: no block-hash file '$hashes'"
}

backup() {
    local out
    out=$("$ZCOW" backup -j 2 --qmp "$qsock" "$D" 2>&1) || fail "backup ($*): $out"
    echo "$out"
}

# ---- the disks --------------------------------------------------------------
truncate -s 48M "$work/vda.model"
head -c $((6 << 20)) /dev/urandom | base64 -w 0 | head -c $((8 << 20)) |
    dd of="$work/vda.model" conv=notrunc status=none
head -c $((2 << 20)) /dev/urandom | dd of="$work/vda.model" bs=1M seek=30 conv=notrunc status=none
truncate -s $((16 << 20)) "$work/vdb.model"
yes "vdb holds words" | head -c $((4 << 20)) | dd of="$work/vdb.model" conv=notrunc status=none
for d in vda vdb; do qemu-img convert -f raw -O qcow2 "$work/$d.model" "$work/$d.qcow2"; done
qemu_start || { fail "cannot start QEMU"; finish; }
D=$work/dir

# ---- 1. full, then incrementals --------------------------------------------------
snap p1
backup full >/dev/null
expect_digest "$D" vda 1 p1
expect_digest "$D" vdb 1 p1
write vda "write -P 0x61 1028k 4k" "write -z 31M 64k" "write -P 0x62 47M 1M" \
    "write -P 0x63 $(((20 << 20) - 512)) 1k"
write vdb "write -P 0x64 4k 4k"
snap p2
backup inc 2 >/dev/null
expect_digest "$D" vda 2 p2
expect_digest "$D" vdb 2 p2
write vda "write -z 0 3M" "write -P 0x65 30M 8k"
snap p3
backup inc 3 >/dev/null
expect_digest "$D" vda 3 p3
read -r level hex bh <<<"$(field "$D" vda 3 level digest blkhash)"
[ "$level" = inc ] && pass || fail "point 3 is not an incremental"
"$ZCOW" list "$D" | grep -q "^vda  *3 .*${hex#sha256/64k:}" && pass ||
    fail "zcow list does not show the digest: $("$ZCOW" list "$D")"
"$ZCOW" list --output=json "$D" | grep -q "\"digest\": \"$hex\"" && pass ||
    fail "zcow list --output=json has no digest"

# ---- 2. a damaged block-hash file; a point without a digest ---------------------
bh=$D/$bh
printf '\x01' | dd of="$bh" bs=1 seek=$((4096 + 40 * 32 + 3)) conv=notrunc status=none
write vda "write -P 0x66 5M 64k"
snap p4
out=$(backup inc 4)
echo "$out" | grep -q "vda: '$bh' is damaged.*: reading point 3 for its block hashes" && pass ||
    fail "a damaged block-hash file: said '$out'"
expect_digest "$D" vda 4 p4
# Point 4 as a point made before digests.
edit "$D" 'p = m["disks"]["vda"]["points"][-1]; del p["digest"]; del p["blkhash"]'
write vda "write -P 0x67 6M 64k"
snap p5
out=$(backup inc 5)
echo "$out" | grep -q "vda: point 4 has no digest: reading it for its block hashes" && pass ||
    fail "a point without a digest: said '$out'"
expect_digest "$D" vda 5 p5
"$ZCOW" list "$D" | grep -q "^vda  *4 .*no digest" && pass ||
    fail "zcow list of a point without a digest: $("$ZCOW" list "$D")"
rm -f "$work/r4.raw"
if out=$("$ZCOW" restore --disk vda --point 4 "$D" "$work/r4.raw" 2>&1) &&
    qemu-img compare -q -f raw -F raw "$work/vda.p4" "$work/r4.raw"; then
    echo "$out" | grep -q "point 4 of disk 'vda' has no digest: not verified" && pass ||
        fail "restore of a point without a digest: said '$out'"
else
    fail "restore of a point without a digest: $out"
fi

# ---- 3. restore: verified, or refused --------------------------------------------
expect_point "$D" vda 5 p5
expect_point "$D" vdb 2 p2
cp "$D/zcow-backup.json" "$work/manifest.good"
good=$(field "$D" vda 5 digest)
bad=${good%?}$(printf '%x' $(((16#${good: -1} + 1) % 16)))
edit "$D" "m['disks']['vda']['points'][-1]['digest'] = '$bad'"
rm -f "$work/r.raw"
out=$("$ZCOW" restore --disk vda "$D" "$work/r.raw" 2>&1)
rc=$?
if [ "$rc" = 1 ] && [ "$(echo "$out" | grep -c .)" = 1 ] &&
    echo "$out" | grep -q "^zcow: .*point 5 of disk 'vda'.*damaged"; then
    pass
    echo "# tampered digest: $out"
else
    fail "restore with a tampered digest: exit $rc: $out"
fi
[ ! -e "$work/r.raw" ] && [ -z "$(temp_leftovers "$work/r.raw")" ] && pass ||
    fail "a restore that failed its digest left $(ls "$work"/r.raw*)"
echo "keep me" >"$work/r.raw"
"$ZCOW" restore --disk vda "$D" "$work/r.raw" >/dev/null 2>&1 && fail "restore over a file succeeded"
[ "$(cat "$work/r.raw")" = "keep me" ] && pass || fail "a failed restore replaced the destination"
rm -f "$work/r.raw"
out=$("$ZCOW" restore --no-verify --disk vda "$D" "$work/r.raw" 2>&1) &&
    qemu-img compare -q -f raw -F raw "$work/vda.p5" "$work/r.raw" && pass ||
    fail "restore --no-verify: $out"
cp "$work/manifest.good" "$D/zcow-backup.json"

# ---- 4. stray files; a base that does not hold its digest -------------------------
touch "$D/vda/000099.blkhash" "$D/vda/000006.blkhash.zcow-tmp-AbCdEf"
write vdb "write -P 0x68 8M 64k"
snap p6
backup inc 6 >/dev/null
[ ! -e "$D/vda/000099.blkhash" ] && [ ! -e "$D/vda/000006.blkhash.zcow-tmp-AbCdEf" ] && pass ||
    fail "stray block-hash files left: $(ls "$D/vda")"
expect_digest "$D" vdb 6 p6
# vdb's last point recorded with another digest and no block-hash file:
# its images do not give it, and an incremental over it is refused.
edit "$D" "p = m['disks']['vdb']['points'][-1]; p['digest'] = '$bad'; del p['blkhash']"
out=$("$ZCOW" backup --level inc --qmp "$qsock" "$D" 2>&1) &&
    fail "an incremental over a point that does not hold its digest: $out"
echo "$out" | grep -q "^zcow: disk 'vdb': point 6 does not hold what its digest says" && pass ||
    fail "a base that does not hold its digest: said '$out'"
finish
