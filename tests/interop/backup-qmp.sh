#!/usr/bin/env bash
# backup-qmp.sh - zcow backup --qmp against a running QEMU (TCG, no guest
# OS: the test writes through the disks' devices with qemu-io on a second
# QMP socket, as a guest would, through any backup filter).
#
# Two disks (vda 256 MiB with 128 MiB of slowly compressing data, vdb
# 64 MiB).  Every write also goes to a raw model of each disk, and every
# point restored by zcow restore must equal the model as it was when the
# point was taken:
#   1. full, then incremental (auto), into DIR a: list, restore, chain;
#   2. point in time: a full into DIR b while the test writes during it;
#      the writes are not in that point, and DIR a's next incremental has
#      them (two DIRs, independent chains and bitmaps);
#   3. zcow killed (-9) during a backup: no new point, QEMU's leftovers
#      (job, export, nodes, bitmaps) removed by the next run, which is an
#      incremental holding every change since the last good point;
#   4. the export dropped during a backup: a clear error, no new point, the
#      next incremental still complete;
#   5. a resized disk starts a new full, with the reason said;
#   6. a full file system (loop-mounted ext4): ENOSPC, no point, no
#      temporary file;
#   7. QEMU killed during a backup: a clear error, no new point; restarted,
#      its bitmap is inconsistent and auto takes a full, saying so;
#   8. writes in ascending order to distinct places, from before a backup
#      to after its point: the point holds exactly a prefix of them;
#   9. a bitmap removed behind zcow's back: auto takes a full, saying why;
#  10. bad input: a socket that is not QEMU's, no socket, a node that is
#      not qcow2, a DIR holding other files, a DIR on a read-only file
#      system: one line, exit 1, nothing left.
. "$(dirname "$0")/functions.sh"
. "$(dirname "$0")/backup-functions.sh"
requires qemu-img qemu-io qemu-system-x86_64 python3
requires_zcow

QMP=$ROOT/tests/interop/qmp.py
qsock=$work/qmp.sock # zcow's
msock=$work/mon.sock # the test's
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

# QEMU holds nothing of DIR's but one bitmap per disk.
expect_clean_qemu() {
    local dir=$1 p jobs exports nodes
    p=$(prefix "$dir")
    jobs=$(python3 "$QMP" "$msock" run query-block-jobs)
    exports=$(python3 "$QMP" "$msock" run query-block-exports)
    nodes=$(python3 "$QMP" "$msock" run query-named-block-nodes)
    if echo "$jobs$exports" | grep -q "$p" || echo "$nodes" | grep -q "\"$p-fl"; then
        fail "$(basename "$dir"): QEMU keeps the backup's jobs, exports or nodes"
    else
        pass
    fi
    for d in a b; do
        local n
        n=$(python3 "$QMP" "$msock" bitmaps d$d | grep -c "^$p-vd$d-")
        [ "$n" = 1 ] && pass || fail "$(basename "$dir"): $n bitmaps of vd$d, want 1"
    done
}

# ---- the disks --------------------------------------------------------------
truncate -s 256M "$work/vda.model"
head -c $((96 << 20)) /dev/urandom | base64 -w 0 | head -c $((128 << 20)) |
    dd of="$work/vda.model" conv=notrunc status=none
truncate -s 64M "$work/vdb.model"
yes "vdb holds words" | head -c $((8 << 20)) | dd of="$work/vdb.model" conv=notrunc status=none
for d in vda vdb; do qemu-img convert -f raw -O qcow2 "$work/$d.model" "$work/$d.qcow2"; done
qemu_start || { fail "cannot start QEMU"; finish; }
A=$work/a
B=$work/b

# ---- 1. full, then incremental ----------------------------------------------
snap p1
out=$("$ZCOW" backup -j 2 --qmp "$qsock" "$A" 2>&1) || fail "full backup: $out"
echo "$out" | grep -q "vda: full backup: no previous point" && pass || fail "full: said $out"
expect_point "$A" vda 1 p1
expect_point "$A" vdb 1 p1
write vda "write -P 0x61 1M 64k" "write -z 8M 128k" "write -P 0x62 200M 3M"
write vdb "write -P 0x63 4k 4k"
snap p2
out=$("$ZCOW" backup --qmp "$qsock" "$A" 2>&1) || fail "incremental: $out"
echo "$out" | grep -q "vda: incremental over point 1" && pass || fail "inc: said $out"
# A backup leaves nothing of DIR in the page cache (before anything here
# reads DIR through it).
pages=$(find "$A" -type f -exec fincore -n -o PAGES {} + | awk '{s += $1} END {print s + 0}')
[ "$pages" = 0 ] && pass ||
    fail "$pages pages of DIR in the page cache: $(find "$A" -type f -exec fincore {} + | tr '\n' ' ')"
expect_point "$A" vda 2 p2
expect_point "$A" vdb 2 p2
expect_point "$A" vda 1 p1
[ "$(qemu-img info "$A/vda/000002.qcow2" | grep -c '^backing file: 000001.qcow2')" = 1 ] &&
    pass || fail "point 2 is not over point 1"
for f in "$A"/vd?/*.qcow2; do
    qemu-img check -q "$f" && pass || fail "qemu-img check $f"
done
"$ZCOW" list "$A" | grep -q "^vda  *2 .* inc " && pass || fail "list: $("$ZCOW" list "$A")"
expect_clean_qemu "$A"

# ---- 2. point in time, two DIRs ------------------------------------------------
snap p3
"$ZCOW" backup -j 1 --qmp "$qsock" "$B" >"$work/b.out" 2>&1 &
zpid=$!
for _ in $(seq 500); do [ -f "$B/zcow-backup.json" ] || [ -f "$B/.lock" ] && break; sleep 0.01; done
python3 "$QMP" "$msock" write-during "zcow-" "$VDA" "write -P 0x71 0 1M" "write -P 0x72 100M 1M"
during=$?
model vda "write -P 0x71 0 1M" "write -P 0x72 100M 1M"
wait "$zpid" || fail "full backup into b: $(cat "$work/b.out")"
[ "$during" = 0 ] && pass || fail "the writes did not fall inside the backup (qmp.py: $during)"
expect_point "$B" vda 1 p3
expect_point "$B" vdb 1 p3
snap p4
out=$("$ZCOW" backup --qmp "$qsock" "$A" 2>&1) || fail "incremental 3: $out"
expect_point "$A" vda 3 p4
expect_clean_qemu "$A"
expect_clean_qemu "$B"

# ---- 3. zcow killed --------------------------------------------------------------
"$ZCOW" backup -j 1 --level full --qmp "$qsock" "$B" >/dev/null 2>&1 &
zpid=$!
python3 "$QMP" "$msock" write-during "$(prefix "$B")" "$VDB" "write -P 0x81 1M 64k" &&
    kill -9 "$zpid"
wait "$zpid" 2>/dev/null
model vdb "write -P 0x81 1M 64k"
write vda "write -P 0x82 5M 64k"
snap p5
[ "$(npoints "$B")" = 2 ] && pass || fail "a killed backup left a point: $("$ZCOW" list "$B")"
out=$("$ZCOW" backup --qmp "$qsock" "$B" 2>&1) || fail "backup after a kill: $out"
echo "$out" | grep -q "vdb: incremental over point 1" && pass ||
    fail "after a kill: said $out"
expect_point "$B" vda 2 p5
expect_point "$B" vdb 2 p5
expect_clean_qemu "$B"
[ -z "$(find "$B" -name '*.zcow-tmp-*' -o -name '.scratch-*')" ] && pass ||
    fail "temporary files left in b: $(find "$B" -name '*.zcow-tmp-*' -o -name '.scratch-*')"

# ---- 4. the export dropped -------------------------------------------------------
"$ZCOW" backup -j 1 --level full --qmp "$qsock" "$A" >"$work/a.out" 2>&1 &
zpid=$!
pa=$(prefix "$A")
python3 "$QMP" "$msock" write-during "$pa" "$VDA" "write -P 0x91 2M 64k"
python3 "$QMP" "$msock" run block-export-del "{\"id\": \"$pa-vda\", \"mode\": \"hard\"}" \
    >/dev/null 2>&1
model vda "write -P 0x91 2M 64k"
if wait "$zpid"; then
    echo "# the backup ended before the export was dropped"
else
    grep -q "^zcow: .*nbd" "$work/a.out" && pass || fail "export dropped: $(cat "$work/a.out")"
fi
snap p6
n=$(npoints "$A")
out=$("$ZCOW" backup --qmp "$qsock" "$A" 2>&1) || fail "backup after a dropped export: $out"
expect_point "$A" vda $((n / 2 + 1)) p6
expect_clean_qemu "$A"

# ---- 5. a resized disk --------------------------------------------------------------
python3 "$QMP" "$msock" run block_resize '{"node-name": "db", "size": 100663296}' >/dev/null
truncate -s 96M "$work/vdb.model"
write vdb "write -P 0xa1 90M 64k"
snap p7
out=$("$ZCOW" backup --qmp "$qsock" "$A" 2>&1) || fail "backup after resize: $out"
echo "$out" | grep -q "vdb: full backup: the disk's size changed" && pass ||
    fail "resize: said $out"
echo "$out" | grep -q "vda: incremental" && pass || fail "resize: vda said $out"
expect_point "$A" vdb latest p7
expect_point "$A" vda latest p7

# ---- 6. a full file system -------------------------------------------------------------
if [ "$(id -u)" = 0 ] && command -v mkfs.ext4 >/dev/null; then
    truncate -s 16M "$work/fs.img"
    mkfs.ext4 -q "$work/fs.img" && mkdir -p "$work/mnt" &&
        mount -o loop "$work/fs.img" "$work/mnt" && cleanup_fn umount "$work/mnt"
    if mountpoint -q "$work/mnt"; then
        if out=$("$ZCOW" backup --qmp "$qsock" "$work/mnt/c" 2>&1); then
            fail "a backup into 16 MiB succeeded"
        else
            echo "$out" | grep -q "No space left on device" && pass || fail "ENOSPC: $out"
            { [ ! -f "$work/mnt/c/zcow-backup.json" ] || [ "$(npoints "$work/mnt/c")" = 0 ]; } &&
                pass || fail "ENOSPC left a point: $("$ZCOW" list "$work/mnt/c")"
            [ -z "$(find "$work/mnt/c" -name '*.zcow-tmp-*' -o -name '.scratch-*')" ] && pass ||
                fail "ENOSPC left temporary files"
        fi
    fi
fi

# ---- 7. QEMU killed --------------------------------------------------------------------
"$ZCOW" backup -j 1 --level full --qmp "$qsock" "$A" >"$work/a.out" 2>&1 &
zpid=$!
python3 "$QMP" "$msock" write-during "$pa" "$VDA" "write -P 0xb1 3M 64k" && qemu_stop
if wait "$zpid"; then
    fail "a backup of a killed QEMU succeeded"
else
    grep -q "^zcow: " "$work/a.out" && [ "$(grep -c . "$work/a.out")" -le 3 ] && pass ||
        fail "QEMU killed: $(cat "$work/a.out")"
fi
n=$(npoints "$A")
model vda "write -P 0xb1 3M 64k"
snap p8
qemu_start || fail "cannot restart QEMU"
out=$("$ZCOW" backup --qmp "$qsock" "$A" 2>&1) || fail "backup after QEMU was killed: $out"
echo "$out" | grep -q "vda: full backup: the dirty bitmap" && pass ||
    fail "after QEMU was killed: said $out"
[ "$(npoints "$A")" = $((n + 2)) ] && pass || fail "points: $("$ZCOW" list "$A")"
expect_point "$A" vda latest p8
expect_point "$A" vdb latest p8
# ---- 8. a stream of writes across the point ----------------------------------
BASE=$((130 << 20)) STEP=$((64 << 10)) N=1500
rm -f "$work/ready"
python3 "$QMP" "$msock" write-stream "$VDA" $BASE $STEP $N "$work/ready" &
spid=$!
for _ in $(seq 500); do [ -f "$work/ready" ] && break; sleep 0.01; done
out=$("$ZCOW" backup -j 2 --qmp "$qsock" "$A" 2>&1) || fail "backup under a write stream: $out"
wait "$spid" || fail "the write stream failed"
rm -f "$work/r.raw"
"$ZCOW" restore --disk vda "$A" "$work/r.raw" || fail "restore of the streamed point"
if k=$(python3 "$QMP" - prefix "$work/r.raw" "$work/vda.model" $BASE $STEP $N); then
    if [ "$k" -gt 20 ] && [ "$k" -lt "$N" ]; then
        pass
        echo "# the point holds the first $k of $N writes"
    else
        fail "the point holds $k of $N writes: the backup did not fall inside the stream"
    fi
else
    fail "the streamed point: $k"
fi
args=()
for ((i = 0; i < N; i++)); do args+=("write -P $((i % 255 + 1)) $((BASE + i * STEP)) 4k"); done
model vda "${args[@]}"

# ---- 9. a bitmap removed behind zcow's back --------------------------------------
snap p9
bm=$(python3 "$QMP" "$msock" bitmaps da | awk '{print $1}' | grep "^$pa-vda-")
python3 "$QMP" "$msock" run block-dirty-bitmap-remove "{\"node\": \"da\", \"name\": \"$bm\"}" \
    >/dev/null
out=$("$ZCOW" backup --qmp "$qsock" "$A" 2>&1) || fail "backup after a removed bitmap: $out"
echo "$out" | grep -q "vda: full backup: the dirty bitmap of the last point is gone" && pass ||
    fail "removed bitmap: said $out"
echo "$out" | grep -q "vdb: incremental" && pass || fail "removed bitmap: vdb said $out"
expect_point "$A" vda latest p9
expect_point "$A" vdb latest p9
out=$("$ZCOW" backup --level inc --qmp "$qsock" "$A" 2>&1) && pass || fail "inc after a full: $out"

# ---- 10. bad input ------------------------------------------------------------------
# expect_error LABEL PATTERN CMD...: one line naming the cause, exit 1.
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
python3 -c 'import socket,sys,os
s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(1)
if os.fork(): sys.exit(0)
c,_=s.accept(); c.sendall(b"220 not a monitor\r\n"); c.recv(100)' "$work/fake.sock"
expect_error "not QEMU's socket" "fake.sock" "$ZCOW" backup --qmp "$work/fake.sock" "$work/x"
expect_error "no socket" "cannot connect.*No such file" "$ZCOW" backup --qmp "$work/none.sock" "$work/x"
qemu-img create -q -f raw "$work/raw.img" 16M
python3 "$QMP" "$msock" run blockdev-add \
    "{\"driver\": \"raw\", \"node-name\": \"rawnode\", \"file\": {\"driver\": \"file\", \"filename\": \"$work/raw.img\"}}" >/dev/null
expect_error "a raw node" "'rawnode' is raw" "$ZCOW" backup --qmp "$qsock" --node rawnode "$work/x"
mkdir -p "$work/other" && echo "my notes" >"$work/other/notes.txt"
expect_error "a DIR of other files" "not a zcow backup directory" \
    "$ZCOW" backup --qmp "$qsock" "$work/other"
[ ! -e "$work/other/.lock" ] && [ ! -e "$work/other/zcow-backup.json" ] && pass ||
    fail "zcow wrote into a directory of other files"
expect_error "list of a DIR of other files" "not a zcow backup directory" "$ZCOW" list "$work/other"
if [ "$(id -u)" = 0 ]; then
    mkdir -p "$work/ro" && mount -t tmpfs -o ro,size=1m tmpfs "$work/ro" &&
        cleanup_fn umount "$work/ro"
    if mountpoint -q "$work/ro"; then
        expect_error "a read-only file system" "Read-only file system" \
            "$ZCOW" backup --qmp "$qsock" "$work/ro/c"
    fi
fi
expect_clean_qemu "$A"
finish
