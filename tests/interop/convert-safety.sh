#!/usr/bin/env bash
# convert-safety.sh - the destination never holds a half-written image.
#
# An existing destination is replaced only by the rename after success: a
# conversion that fails (missing source, an injected I/O fault in a read,
# a write, an fsync or the rename) or is interrupted (SIGINT, SIGTERM, SIGHUP)
# leaves the old file byte for byte as it was, and no DST.zcow-tmp-* file.
# Faults come from ZCOW_FAULT=OP:N:ERR (lib/fault.h), a switch only the test
# build $FAULT_ZCOW has.
. "$(dirname "$0")/functions.sh"
requires qemu-img cmp
requires_zcow
requires_fault_zcow

head -c $((3 << 20)) /dev/urandom >"$work/rnd.raw"
yes "zcow safety test line" | head -c $((3 << 20)) >"$work/text.raw"
cat "$work/rnd.raw" "$work/text.raw" >"$work/src.raw"
dst=$work/dst.qcow2
# The old destination: an image of other data, made by qemu-img.
qemu-img convert -c -O qcow2 "$work/text.raw" "$work/old.qcow2"
cp "$work/old.qcow2" "$work/old.copy"

restore_old() { cp "$work/old.copy" "$dst"; }

# old_intact LABEL: the old destination is untouched, no temporary left.
old_intact() {
    local label=$1 ok=1
    if ! cmp -s "$work/old.copy" "$dst"; then
        fail "$label: the old destination was changed or removed"
        ok=0
    fi
    if [ -n "$(temp_leftovers "$dst")" ]; then
        fail "$label: temporary file left: $(temp_leftovers "$dst" | tr '\n' ' ')"
        ok=0
    fi
    [ $ok = 1 ]
}

# 1. A failed run leaves the old destination as it was.
restore_old
if err=$("$ZCOW" convert -q "$work/missing.raw" "$dst" 2>&1); then
    fail "missing source: exit 0"
else
    old_intact "missing source" && pass
fi

# 2. Injected faults: each must fail the conversion with a message naming
#    the file, and leave the old destination.  The counts walk the first
#    few calls of each operation and the last ones (fsync and rename come
#    at the very end, after every data write).
stats=$work/stats.txt
restore_old
ZCOW_FAULT_STATS=$stats "$FAULT_ZCOW" convert -q -j 2 "$work/src.raw" "$work/count.qcow2" >/dev/null 2>&1 ||
    fail "counting run failed"
count() { sed -n "s/^$1 //p" "$stats"; }
writes=$(count write)
reads=$(count read)
fsyncs=$(count fsync)
renames=$(count rename)
echo "# a clean conversion: $reads reads, $writes writes, $fsyncs fsyncs, $renames renames"
faults="read:1:EIO read:2:EIO read:$reads:EIO write:1:EIO write:2:ENOSPC write:5:EIO
        write:$((writes / 2)):EIO write:$writes:EIO write:$writes:EDQUOT fsync:1:EIO
        fsync:$fsyncs:EIO rename:1:EIO rename:1:EACCES alloc:1:ENOMEM"
for f in $faults; do
    restore_old
    err=$(ZCOW_FAULT=$f timeout 120 "$FAULT_ZCOW" convert -q -j 2 "$work/src.raw" "$dst" 2>&1)
    rc=$?
    if [ $rc -eq 0 ]; then
        # A fault in a call that was not made this time (counts vary with
        # threads), or a read fault on a source read retried: only a fault
        # that was certainly hit must fail.  The result must still be good.
        case $f in
        write:1:* | write:2:* | fsync:1:* | rename:1:* | read:1:*)
            fail "ZCOW_FAULT=$f: exit 0" ;;
        *) judge "$work/src.raw" "$dst" "ZCOW_FAULT=$f (not hit)" ;;
        esac
        continue
    fi
    if [ $rc -ge 124 ]; then
        fail "ZCOW_FAULT=$f: exit $rc (timeout or crash): $(echo "$err" | tail -3 | tr '\n' ' ')"
        continue
    fi
    [ "$(printf '%s' "$err" | grep -c '')" -eq 1 ] ||
        fail "ZCOW_FAULT=$f: want one line on stderr: $(echo "$err" | head -3 | tr '\n' '|')"
    echo "$err" | grep -q -e "dst.qcow2" -e "src.raw" -e "'$work'" ||
        fail "ZCOW_FAULT=$f: message names no file: '$err'"
    if [ "$f" = "fsync:$fsyncs:EIO" ] && ! cmp -s "$work/old.copy" "$dst"; then
        # The last fsync is the directory's, after the rename: the new image
        # is complete under its name, only the rename's durability is in
        # doubt.  It must be whole, and the run must say it failed.
        judge "$work/src.raw" "$dst" "ZCOW_FAULT=$f (directory fsync after the rename)"
        [ -z "$(temp_leftovers "$dst")" ] || fail "ZCOW_FAULT=$f: temporary file left"
        continue
    fi
    old_intact "ZCOW_FAULT=$f" && pass
done

# 3. Success replaces the old destination with the new image.
restore_old
if "$ZCOW" convert -q "$work/src.raw" "$dst"; then
    judge "$work/src.raw" "$dst" "replacing an existing destination"
    [ -z "$(temp_leftovers "$dst")" ] || fail "replace: temporary file left"
else
    fail "replacing an existing destination: zcow failed"
fi

# 4. Interrupted mid-conversion: SIGINT, SIGTERM, SIGHUP.  A source slow to
#    convert (random data at zlib level 9 on one thread: zlib tries hard and
#    gets nowhere), interrupted once the temporary file holds data.
big=$work/big.raw
head -c $((96 << 20)) /dev/urandom >"$big"
for sig in INT TERM HUP; do
    restore_old
    "$ZCOW" convert -q -j 1 -l 9 "$big" "$dst" 2>"$work/sig.err" &
    pid=$!
    tmp=""
    for _ in $(seq 1 400); do
        tmp=$(temp_leftovers "$dst" | head -n 1)
        [ -n "$tmp" ] && [ "$(stat -c %s "$tmp" 2>/dev/null || echo 0)" -gt $((1 << 20)) ] && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    if ! kill -0 "$pid" 2>/dev/null; then
        wait "$pid"
        fail "SIG$sig: the conversion ended before it could be interrupted (exit $?; tmp '$tmp')"
        continue
    fi
    [ -n "$tmp" ] || echo "# SIG$sig: no temporary file with data seen; interrupting anyway"
    kill -s "$sig" "$pid"
    { wait "$pid"; } 2>/dev/null
    rc=$?
    case $sig in INT) want=130 ;; TERM) want=143 ;; HUP) want=129 ;; esac
    [ $rc -eq $want ] || fail "SIG$sig: exit $rc, want $want (killed by the signal)"
    old_intact "SIG$sig" && pass
done

finish
