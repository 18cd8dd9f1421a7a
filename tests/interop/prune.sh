#!/usr/bin/env bash
# prune.sh - zcow prune and zcow merge on a backup directory of 10 points
# taken by zcow backup --qmp from a running QEMU (TCG, no guest OS: the test
# writes through the disk's device with qemu-io on a second QMP socket, and
# into a raw model of the disk, kept as it was at each point).  Point 7 has
# 32 KiB clusters and point 9 zstd: a chain may mix them.
#   1. prune --keep 3: points 8-10 restore equal to the disk at each point
#      (zcow restore checks each point's recorded digest too), point 8's
#      merged image has the digest point 8 recorded (zcow digest),
#      qemu-img check clean on every image, point 8 a full (no backing
#      file, "full" in the manifest), the images of points 1-7 gone, point
#      7's clusters (another cluster size) compressed anew and said so;
#      a further backup is an incremental over point 10 and restores;
#   2. merge of point 5: qemu-img check clean, equal to the disk at point 5
#      and of the digest point 5 recorded (merge checks it before DEST),
#      no backing file, every cluster copied as it was;
#   3. kill -9 during prune and merge (KILL_ROUNDS of each, default 6, 3
#      under the sanitizers, with random delays, plus 8 at chosen steps
#      through the fault-injecting zcow, one in each state the prune or the
#      merge goes through): every point the manifest lists
#      still restores equal to its disk (the untouched ones byte for byte),
#      zcow verify finds every point good,
#      no merged image under DEST unless it is complete, and the next prune
#      finishes the job and leaves no leftover;
#   4. refused, nothing changed (checksums of DIR): a truncated image, a
#      missing backing file, a manifest whose level contradicts its image
#      (which --force prunes), a recorded digest the merged image does not
#      have (prune and merge; merge --no-verify writes it), a manifest
#      naming an image outside DIR (even
#      with --force), a DIR in use (-EBUSY), a DIR not made by
#      zcow, a damaged manifest, a merge into DIR; --keep N of N points
#      does nothing and says so.
. "$(dirname "$0")/functions.sh"
requires qemu-img qemu-io qemu-system-x86_64 python3 flock cmp md5sum
requires_zcow
requires_nbd_support
requires_fault_zcow

QMP=$ROOT/tests/interop/qmp.py
qsock=$work/qmp.sock # zcow's
msock=$work/mon.sock # the test's
VDA=/machine/peripheral/vda/virtio-backend
RANDOM=$TEST_SEED
# Fewer under the sanitizers, which run every interop test again.
rounds=${KILL_ROUNDS:-$([ -n "${ZCOW_TEST_SANITIZER:-}" ] && echo 3 || echo 6)}

qemu_stop() {
    [ -f "$work/qemu.pid" ] && kill_wait "$(cat "$work/qemu.pid")"
    rm -f "$work/qemu.pid"
}
cleanup_fn qemu_stop

# An 8 MiB disk holding 6 MiB of words.
truncate -s 8M "$work/vda.model"
python3 - "$work/vda.model" "$TEST_SEED" <<'EOF'
import random, sys
r = random.Random(int(sys.argv[2]))
words = [bytes(r.choice("etaoinshrd") * r.randint(1, 4), "ascii") for _ in range(400)]
data = b" ".join(r.choice(words) for _ in range(1500000))[: 6 << 20]
with open(sys.argv[1], "r+b") as f:
    f.write(data)
EOF
qemu-img convert -f raw -O qcow2 "$work/vda.model" "$work/vda.qcow2" || exit 1
qemu-system-x86_64 -nodefaults -display none -machine q35,accel=tcg -m 64 \
    -blockdev driver=file,filename="$work/vda.qcow2",node-name=fa \
    -blockdev driver=qcow2,file=fa,node-name=da -device virtio-blk-pci,drive=da,id=vda \
    -qmp unix:"$qsock",server=on,wait=off -qmp unix:"$msock",server=on,wait=off \
    -daemonize -pidfile "$work/qemu.pid" || { fail "cannot start QEMU"; finish; }

# write CMD...: through the device, as the guest would, and into the model.
write() {
    local args=() c
    python3 "$QMP" "$msock" write "$VDA" "$@" || fail "write $*"
    for c in "$@"; do args+=(-c "$c"); done
    qemu-io -f raw "${args[@]}" "$work/vda.model" >/dev/null || fail "model $*"
}

# backup N [OPTIONS]: take point N; snap.N is the disk at that point.
backup() {
    local n=$1 out
    shift
    out=$("$ZCOW" backup "$@" --qmp "$qsock" "$A" 2>&1) || fail "backup $n: $out"
    cp --sparse=always "$work/vda.model" "$work/snap.$n"
}

# restores DIR N LABEL: zcow restore of point N equals the disk at N.
restores() {
    local out
    rm -f "$work/r.raw"
    if out=$("$ZCOW" restore --point "$2" "$1" "$work/r.raw" 2>&1) &&
        out=$(cmp "$work/r.raw" "$work/snap.$2" 2>&1); then
        pass
    else
        fail "$3: point $2 does not restore to the disk at that point: $out"
    fi
}

# listed DIR: the point numbers the manifest lists.
listed() {
    python3 -c 'import json,sys
for p in json.load(open(sys.argv[1]))["disks"]["vda"]["points"]: print(p["number"])' \
        "$1/zcow-backup.json"
}

# sums DIR: a checksum of every file under DIR, with its name.
sums() { (cd "$1" && find . -type f -print0 | sort -z | xargs -0 md5sum | md5sum); }

# backing IMAGE: its backing file name, or nothing.
backing() { qemu-img info --output=json "$1" | sed -n 's/.*"backing-filename": "\(.*\)".*/\1/p'; }

img() { printf '%s/vda/%06d.qcow2' "$1" "$2"; }

# ---- ten points ------------------------------------------------------------------
A=$work/a
backup 1
for i in $(seq 2 10); do
    write "write -P $((i + 32)) $((i * 300))k 200k" "write -z $((i * 500 + 1000))k 64k"
    case $i in
    7) backup 7 -q -o cluster_size=32k ;;
    9) backup 9 -q -o compression_type=zstd ;;
    *) backup "$i" -q ;;
    esac
done
[ "$(listed "$A" | tr '\n' ' ')" = "1 2 3 4 5 6 7 8 9 10 " ] && pass ||
    fail "the backups made points $(listed "$A" | tr '\n' ' ')"
M=$work/master
cp -a "$A" "$M"

# digest DIR N: the digest the manifest records for point N ("HEX").
digest() {
    python3 -c 'import json,sys
for p in json.load(open(sys.argv[1]))["disks"]["vda"]["points"]:
    if p["number"] == int(sys.argv[2]): print(p.get("digest", "none").split(":")[-1])' \
        "$1/zcow-backup.json" "$2"
}
# digest_of IMAGE: zcow digest's of an image (with its chain).
digest_of() { "$ZCOW" digest "$1" | cut -d' ' -f1; }

# ---- 1. prune --keep 3 ---------------------------------------------------------
d8=$(digest "$A" 8)
[ "$d8" = "$(digest_of "$(img "$A" 8)")" ] && pass ||
    fail "point 8 records digest '$d8', its image's is $(digest_of "$(img "$A" 8)")"
out=$("$ZCOW" prune --keep 3 "$A" 2>&1) || fail "prune --keep 3: $out"
echo "$out" | grep -q "^vda: point 8 is now a full: [1-9][0-9]* compressed clusters copied as they were, [1-9][0-9]* compressed anew" &&
    pass || fail "prune said: $out"
echo "$out" | grep -q "^vda: dropped 7 points (1 to 7)$" && pass || fail "prune said: $out"
[ "$(listed "$A" | tr '\n' ' ')" = "8 9 10 " ] && pass || fail "kept $(listed "$A" | tr '\n' ' ')"
[ "$(ls "$A/vda" | tr '\n' ' ')" = "000008.blkhash 000008.qcow2 000009.blkhash 000009.qcow2 000010.blkhash 000010.qcow2 " ] && pass ||
    fail "left in vda/: $(ls "$A/vda" | tr '\n' ' ')"
for i in 8 9 10; do restores "$A" $i "prune"; done
for f in "$A"/vda/*.qcow2; do qemu-img check -q "$f" && pass || fail "qemu-img check $f"; done
[ -z "$(backing "$(img "$A" 8)")" ] && pass || fail "point 8 has backing file $(backing "$(img "$A" 8)")"
[ "$(backing "$(img "$A" 9)")" = 000008.qcow2 ] && pass || fail "point 9's backing file changed"
"$ZCOW" list "$A" | grep -q "^vda  *8 .* full " && pass || fail "list: $("$ZCOW" list "$A")"
# The merged full has the content, hence the digest, the point recorded.
[ "$(digest "$A" 8)" = "$d8" ] && [ "$(digest_of "$(img "$A" 8)")" = "$d8" ] && pass ||
    fail "point 8's digest: recorded $(digest "$A" 8), of its image $(digest_of "$(img "$A" 8)"), before $d8"
# The next backup is an incremental over the kept chain.
write "write -P 0x77 100k 64k"
out=$("$ZCOW" backup --qmp "$qsock" "$A" 2>&1) || fail "backup after prune: $out"
echo "$out" | grep -q "vda: incremental over point 10" && pass || fail "after prune: said $out"
cp --sparse=always "$work/vda.model" "$work/snap.11"
restores "$A" 11 "backup after prune"
restores "$A" 8 "backup after prune"
qemu_stop

# ---- 2. merge ----------------------------------------------------------------------
out=$("$ZCOW" merge --point 5 "$M" "$work/m5.qcow2" 2>&1) || fail "merge: $out"
echo "$out" | grep -q "[1-9][0-9]* compressed clusters copied as they were, 0 compressed anew" &&
    pass || fail "merge said: $out"
qemu-img check -q "$work/m5.qcow2" && pass || fail "qemu-img check of the merged point 5"
out=$(qemu-img compare -f qcow2 -F raw "$work/m5.qcow2" "$work/snap.5" 2>&1) && pass ||
    fail "merged point 5 is not the disk at point 5: $out"
[ -z "$(backing "$work/m5.qcow2")" ] && pass || fail "merged point 5 has a backing file"
[ "$(digest_of "$work/m5.qcow2")" = "$(digest "$M" 5)" ] && pass ||
    fail "merged point 5's digest $(digest_of "$work/m5.qcow2"), recorded $(digest "$M" 5)"
qemu-img info "$work/m5.qcow2" | grep -q "compression type: zlib" && pass ||
    fail "merged point 5: $(qemu-img info "$work/m5.qcow2")"

# ---- 3. kill -9 --------------------------------------------------------------------
# after_prune_kill DIR LABEL: every listed point restores (those the prune
# does not write, byte for byte as they were); the next prune finishes.
after_prune_kill() {
    local d=$1 label=$2 n out
    for n in $(listed "$d"); do
        if [ "$n" = 8 ] || [ "$n" = 10 ]; then
            restores "$d" "$n" "$label"
        elif [ "$n" = 9 ]; then
            continue # read through by point 10's restore
        else
            cmp -s "$(img "$d" "$n")" "$(img "$M" "$n")" && pass ||
                fail "$label: the image of point $n changed"
        fi
    done
    out=$("$ZCOW" prune -q --keep 3 "$d" 2>&1) || fail "$label: the next prune failed: $out"
    [ "$(listed "$d" | tr '\n' ' ')" = "8 9 10 " ] && pass ||
        fail "$label: after the next prune: points $(listed "$d" | tr '\n' ' ')"
    [ "$(ls -A "$d/vda" | tr '\n' ' ')" = "000008.blkhash 000008.qcow2 000009.blkhash 000009.qcow2 000010.blkhash 000010.qcow2 " ] && pass ||
        fail "$label: left in vda/: $(ls -A "$d/vda" | tr '\n' ' ')"
    [ -z "$(backing "$(img "$d" 8)")" ] && pass || fail "$label: point 8 is not a full"
    restores "$d" 8 "$label, finished"
    restores "$d" 10 "$label, finished"
}

# after_merge_kill DEST LABEL: DEST absent or complete; only DEST's own
# temporary files left, removed here.
after_merge_kill() {
    local dst=$1 label=$2 t out
    if [ -e "$dst" ]; then
        qemu-img check -q "$dst" && out=$(qemu-img compare -q -f qcow2 -F raw "$dst" "$work/snap.5" 2>&1) &&
            pass || fail "$label: '$dst' is there but incomplete: $out"
    fi
    for t in "$dst".*; do
        [ -e "$t" ] || continue
        case $(basename "$t") in
        m.qcow2.zcow-tmp-m[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f] | \
            m.qcow2.zcow-tmp-m[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f].zcow-tmp-[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f])
            rm -f "$t" ;;
        *) fail "$label: unexpected file $t" ;;
        esac
    done
    rm -f "$dst"
}

K=$work/k
# At chosen steps, one in each state DIR can be left in: the merged image
# half written (before its 4th write), complete under convert's temporary
# name (before the 1st rename), under the merge's, its digest checked
# (before the 2nd), renamed over point 8 (before the fsync of the
# directory, the 3rd), the manifest written (before the 3rd rename) and
# renamed (before the 5th fsync, of DIR: the images of points 1-7 still
# there).  The merge: half written, complete, checked, renamed to DEST.
for step in write:4 rename:1 rename:2 fsync:3 rename:3 fsync:5; do
    rm -rf "$K" && cp -a "$M" "$K"
    rc=$(ZCOW_FAULT="$step:kill" "$FAULT_ZCOW" prune -q --keep 3 "$K" >/dev/null 2>&1; echo $?)
    [ $rc = 137 ] && pass || fail "prune killed before $step: exit $rc"
    # zcow verify agrees: the point the manifest still calls "inc" may
    # already be a full.
    out=$("$ZCOW" verify "$K" 2>&1) && pass || fail "verify after a prune killed before $step: $out"
    after_prune_kill "$K" "prune killed before $step"
done
for step in write:3 rename:1 rename:2 fsync:3; do
    rc=$(ZCOW_FAULT="$step:kill" "$FAULT_ZCOW" merge -q --point 5 "$M" "$work/m.qcow2" >/dev/null 2>&1; echo $?)
    [ $rc = 137 ] && pass || fail "merge killed before $step: exit $rc"
    case $step in
    rename:2) [ ! -e "$work/m.qcow2" ] && pass || fail "merge killed before its rename left DEST" ;;
    fsync:3) [ -e "$work/m.qcow2" ] && pass || fail "merge killed after its rename left no DEST" ;;
    esac
    after_merge_kill "$work/m.qcow2" "merge killed before $step"
done

# At random moments: spread over how long each takes, and a little more.
t0=$(date +%s%N)
rm -rf "$K" && cp -a "$M" "$K" && "$ZCOW" prune -q --keep 3 "$K" || fail "a whole prune"
t1=$(date +%s%N)
"$ZCOW" merge -q --point 5 "$M" "$work/m.qcow2" || fail "a whole merge"
t2=$(date +%s%N)
prune_ms=$(((t1 - t0) / 1000000 + 1)) merge_ms=$(((t2 - t1) / 1000000 + 1))
rm -f "$work/m.qcow2"
echo "# a prune takes $prune_ms ms, a merge $merge_ms ms; $rounds rounds of each killed at random"
for ((i = 1; i <= rounds; i++)); do
    delay=$((RANDOM % (prune_ms * 6 / 5 + 1)))
    rm -rf "$K" && cp -a "$M" "$K"
    "$ZCOW" prune -q --keep 3 "$K" >/dev/null 2>&1 &
    pid=$!
    sleep "$(awk -v ms="$delay" 'BEGIN { printf "%.3f", ms / 1000 }')"
    kill -9 "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    after_prune_kill "$K" "prune killed at $delay ms (exit $?)"
    delay=$((RANDOM % (merge_ms * 6 / 5 + 1)))
    "$ZCOW" merge -q --point 5 "$M" "$work/m.qcow2" >/dev/null 2>&1 &
    pid=$!
    sleep "$(awk -v ms="$delay" 'BEGIN { printf "%.3f", ms / 1000 }')"
    kill -9 "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    after_merge_kill "$work/m.qcow2" "merge killed at $delay ms (exit $?)"
done
out=$("$ZCOW" merge -q --point 5 "$M" "$work/m.qcow2" 2>&1) &&
    qemu-img compare -q -f qcow2 -F raw "$work/m.qcow2" "$work/snap.5" && pass ||
    fail "merge after the kills: $out"

# ---- 4. refused, nothing changed ---------------------------------------------------
# refused LABEL DIR PATTERN CMD...: CMD fails with one line matching
# PATTERN, and DIR is as it was.
refused() {
    local label=$1 d=$2 pattern=$3 before out rc
    shift 3
    before=$(sums "$d")
    out=$("$@" 2>&1)
    rc=$?
    [ $rc = 1 ] && [ "$(echo "$out" | wc -l)" = 1 ] && echo "$out" | grep -q "^zcow: .*$pattern" &&
        pass || fail "$label: exit $rc, said: $out"
    [ "$(sums "$d")" = "$before" ] && pass || fail "$label: '$d' changed"
}
B=$work/b
rm -rf "$B" && cp -a "$M" "$B"
truncate -s 100k "$(img "$B" 5)"
refused "a truncated image" "$B" "000005.qcow2.*beyond the end of the file" \
    "$ZCOW" prune --keep 3 "$B"
rm -rf "$B" && cp -a "$M" "$B"
dd if=/dev/zero of="$(img "$B" 6)" bs=64k seek=3 count=1 conv=notrunc status=none
refused "a zeroed L1 table" "$B" "000006.qcow2.* does not check clean" "$ZCOW" prune --keep 3 "$B"
rm -rf "$B" && cp -a "$M" "$B"
rm "$(img "$B" 6)"
refused "a missing backing file" "$B" "000006.qcow2.*No such file" "$ZCOW" prune --keep 3 "$B"
rm -rf "$B" && cp -a "$M" "$B"
python3 - "$B/zcow-backup.json" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
m["disks"]["vda"]["points"][3]["level"] = "full"
json.dump(m, open(sys.argv[1], "w"))
EOF
refused "a full with a backing file" "$B" "000004.qcow2' is a full in the manifest but has a backing file" \
    "$ZCOW" prune --keep 3 "$B"
out=$("$ZCOW" prune --force --keep 3 "$B" 2>&1) && pass || fail "prune --force: $out"
for i in 8 10; do restores "$B" $i "prune --force"; done
# A size 100 bytes short rounds up to the image's: the check is exact, as
# verify's and restore's.
rm -rf "$B" && cp -a "$M" "$B"
python3 - "$B/zcow-backup.json" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
m["disks"]["vda"]["points"][5]["virtual-size"] -= 100
json.dump(m, open(sys.argv[1], "w"))
EOF
refused "a virtual size the image does not have" "$B" "000006.qcow2': virtual size [0-9]*, the manifest says" \
    "$ZCOW" prune --keep 3 "$B"
rm -rf "$B" && cp -a "$M" "$B"
sed -i 's|"vda/000002.qcow2"|"vda/../../x.qcow2"|' "$B/zcow-backup.json"
refused "an image outside DIR" "$B" "names the image of point 2 of disk 'vda' 'vda/../../x.qcow2'" \
    "$ZCOW" prune --force --keep 3 "$B"
# A merged image whose digest is not the one recorded is not put in place.
rm -rf "$B" && cp -a "$M" "$B"
sed -i "s|$(digest "$B" 8)|$(digest "$B" 7)|" "$B/zcow-backup.json"
refused "a wrong digest for point 8" "$B" "the digest of the merged image, .* is not the one recorded for point 8 of disk 'vda'" \
    "$ZCOW" prune --keep 3 "$B"
refused "a merge of a point with a wrong digest" "$B" "is not the one recorded for point 8" \
    "$ZCOW" merge --point 8 "$B" "$work/o.qcow2"
[ -z "$(ls "$work" | grep '^o\.qcow2')" ] && pass || fail "a refused merge left $(ls "$work" | grep '^o\.qcow2')"
out=$("$ZCOW" merge -q --no-verify --point 8 "$B" "$work/o.qcow2" 2>&1) && pass ||
    fail "merge --no-verify: $out"
rm -f "$work/o.qcow2"
rm -rf "$B" && cp -a "$M" "$B"
refused "a DIR in use" "$B" "in use by another zcow" flock "$B/.lock" "$ZCOW" prune --keep 3 "$B"
refused "a disk DIR does not hold" "$B" "holds no disk 'vdz'" "$ZCOW" prune --disk vdz --keep 3 "$B"
out=$("$ZCOW" prune --keep 10 "$B" 2>&1) && [ "$out" = "vda: 10 points, keeping 10: nothing to do" ] &&
    pass || fail "prune --keep 10 of 10 points: $out"
refused "a merge into DIR" "$B" "inside the backup directory" \
    "$ZCOW" merge --point 5 "$B" "$B/vda/m.qcow2"
mkdir -p "$work/other/vda"
echo "not a backup" >"$work/other/notes.txt"
cp "$(img "$M" 1)" "$work/other/vda/000001.qcow2"
refused "a DIR of another tool" "$work/other" "not a zcow backup directory" \
    "$ZCOW" prune --keep 1 "$work/other"
refused "a merge from a DIR of another tool" "$work/other" "not a zcow backup directory" \
    "$ZCOW" merge --point 1 "$work/other" "$work/o.qcow2"
[ ! -e "$work/other/.lock" ] && pass || fail "a lock file was made in a DIR of another tool"
head -c 200 "$M/zcow-backup.json" >"$B/zcow-backup.json"
refused "a damaged manifest" "$B" "cannot read .*zcow-backup.json" "$ZCOW" prune --keep 3 "$B"
refused "a merge of a damaged manifest" "$B" "cannot read .*zcow-backup.json" \
    "$ZCOW" merge --point 5 "$B" "$work/o.qcow2"
[ ! -e "$work/o.qcow2" ] && pass || fail "a refused merge wrote its destination"
finish
