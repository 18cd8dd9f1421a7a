#!/usr/bin/env bash
# enospc.sh - a conversion that runs out of space fails clearly and leaves
# nothing behind.
#
# 1. A real full file system (as root, where `mount -o loop` works): an
#    8 MiB ext4 mounted in the test's directory, filled by the conversion
#    of 64 MiB of random data (incompressible), with -t none (O_DIRECT) and
#    -t writeback, and by a restore (-O raw) of such an image; also over an
#    old destination.  Each must exit 1 with one line naming the file and
#    "No space left on device", leave no DST.zcow-tmp-* and no new
#    destination (an old one byte for byte), and give the space back: a
#    conversion that fits succeeds on the same file system afterwards.
# 2. Always (the fallback where loop mounts are not possible): a file size
#    limit, `ulimit -f`, with SIGXFSZ ignored, so that the write fails with
#    EFBIG ("File too large"), with -t none and -t writeback.
. "$(dirname "$0")/functions.sh"
requires qemu-img cmp
requires_zcow

big=$work/random.raw
head -c $((64 << 20)) /dev/urandom >"$big"
small=$work/small.raw
yes "a small compressible source fits" | head -c $((4 << 20)) >"$small"
head -c $((1 << 20)) /dev/urandom >"$work/old.raw"
qemu-img convert -c -O qcow2 "$work/old.raw" "$work/old.qcow2" || exit 1

# expect_clean LABEL DST RC ERRFILE PATTERN OLD: the run failed as it should.
expect_clean() {
    local label=$1 dst=$2 rc=$3 errf=$4 pattern=$5 old=$6 msg
    msg=$(cat "$errf")
    if [ "$rc" -ne 1 ]; then
        fail "$label: exit $rc, want 1: $(echo "$msg" | head -3 | tr '\n' '|')"
        return 1
    fi
    if [ "$(printf '%s\n' "$msg" | grep -c '')" -ne 1 ] || [ "${msg#zcow: }" = "$msg" ]; then
        fail "$label: want one line 'zcow: ...': $(echo "$msg" | head -3 | tr '\n' '|')"
        return 1
    fi
    echo "$msg" | grep -q "$pattern" || { fail "$label: no '$pattern' in: $msg"; return 1; }
    echo "$msg" | grep -q "'$dst'" || { fail "$label: the message names no file: $msg"; return 1; }
    if [ -n "$(temp_leftovers "$dst")" ]; then
        fail "$label: temporary file left: $(temp_leftovers "$dst" | tr '\n' ' ')"
        return 1
    fi
    if [ "$old" = 1 ]; then
        cmp -s "$work/old.qcow2" "$dst" || { fail "$label: the old destination changed"; return 1; }
    elif [ -e "$dst" ]; then
        fail "$label: a destination was left"
        return 1
    fi
    echo "# $label: $msg"
    pass
}

# ---- 1. a full ext4 on a loop device ---------------------------------------
mnt=$work/mnt
loop_ok=0
if [ "$(id -u)" = 0 ] && command -v mkfs.ext4 >/dev/null; then
    truncate -s 8M "$work/fs.img"
    mkdir -p "$mnt"
    if mkfs.ext4 -q -F "$work/fs.img" >/dev/null 2>&1 &&
        mount -o loop "$work/fs.img" "$mnt" 2>/dev/null; then
        loop_ok=1
        cleanup_fn "umount '$mnt' 2>/dev/null || umount -l '$mnt'"
    fi
fi
if [ $loop_ok = 1 ]; then
    qemu-img convert -O qcow2 "$big" "$work/random.qcow2" || exit 1
    free_before=$(df --output=avail -B1 "$mnt" | tail -1)
    dst=$mnt/dst.qcow2
    for t in none writeback; do
        for old in 0 1; do
            rm -f "$dst"
            [ $old = 1 ] && cp "$work/old.qcow2" "$dst"
            "$ZCOW" convert -q -j 2 -t "$t" "$big" "$dst" 2>"$work/err.txt"
            expect_clean "ext4 8 MiB, -t $t, old destination $old" "$dst" $? "$work/err.txt" \
                "No space left on device" $old
        done
        rm -f "$mnt/back.raw"
        "$ZCOW" convert -q -j 2 -t "$t" -O raw "$work/random.qcow2" "$mnt/back.raw" 2>"$work/err.txt"
        expect_clean "ext4 8 MiB, restore -t $t" "$mnt/back.raw" $? "$work/err.txt" \
            "No space left on device" 0
    done
    rm -f "$dst"
    free_after=$(df --output=avail -B1 "$mnt" | tail -1)
    # The space comes back (a little may go to the journal or directories).
    if [ "$free_after" -lt $((free_before - (256 << 10))) ]; then
        fail "ext4: $free_before bytes free before, $free_after after: space not given back"
    else
        pass
    fi
    if "$ZCOW" convert -q -j 2 "$small" "$dst"; then
        judge "$small" "$dst" "ext4: a conversion that fits, after the failures"
    else
        fail "ext4: a conversion that fits failed after the failures"
    fi
else
    echo "# no loop mount here (not root, or no loop devices): file size limit only"
fi

# ---- 2. a file size limit (RLIMIT_FSIZE) ------------------------------------------
dst=$work/limited.qcow2
for t in none writeback; do
    for old in 0 1; do
        rm -f "$dst"
        [ $old = 1 ] && cp "$work/old.qcow2" "$dst"
        # 8 MiB in 1 KiB blocks; SIGXFSZ ignored, so write(2) fails with EFBIG.
        (
            trap '' XFSZ
            ulimit -f 8192
            exec "$ZCOW" convert -q -j 2 -t "$t" "$big" "$dst"
        ) 2>"$work/err.txt"
        expect_clean "ulimit -f 8 MiB, -t $t, old destination $old" "$dst" $? "$work/err.txt" \
            "File too large" $old
    done
done

finish
