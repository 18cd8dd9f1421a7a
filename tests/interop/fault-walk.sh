#!/usr/bin/env bash
# fault-walk.sh - every I/O call of a small conversion and a restore fails
# once, in turn, and zcow handles each failure.
#
# For each case below, a first run with ZCOW_FAULT_STATS counts the calls of
# each operation (lib/fault.h); then, for every operation and every N from 1
# to its count, the case runs again with ZCOW_FAULT="OP:N:ERR":
#   open, fsync, rename: EIO
#   read:  EIO, and EINTR and "short" (retried: the run must succeed)
#   write: EIO, ENOSPC, and "short" (half written: retried, must succeed)
#   alloc: ENOMEM (aligned buffers; most are taken at the start, so N walks
#          the first 4, the last 8 and every (count/12)th between; in the
#          cases j2, cache-off, qcow2-copy and restore-4k)
# A run that fails must: exit 1 (no crash, no hang); print exactly one line
# on stderr, "zcow: ...", naming the operation and a file ("out of memory"
# need not name one); leave no
# DST.zcow-tmp-* file; leave no destination, or the old destination byte for
# byte (every other run starts with an old destination in place).  The one
# exception is the fsync of the directory after the rename: the new image is
# then complete under its name and must be whole.
# A run that succeeds (the fault hit a call whose failure is retried or
# harmless, or a call the run did not make: counts vary a little between
# -j 2 runs) must leave an image that passes qemu-img check and compare.
# A failed write, fsync or rename that was hit must never give exit 0.
#
# FAULT_WALK_CASES limits the cases (e.g. "j1 restore"); FAULT_WALK_STEP=K
# walks every Kth N only (for slow sanitizer builds; default 1, or 2 when
# $ZCOW is a sanitizer build).  The faulty runs and the counting runs use
# $FAULT_ZCOW, the test build of $ZCOW with fault injection.
. "$(dirname "$0")/functions.sh"
requires qemu-img cmp timeout
requires_zcow
requires_fault_zcow

# src.raw: 3 MiB + 12345 bytes: random, text, zeros, ones, random again,
# an odd tail.  small.raw: 1 MiB + 12345 bytes of the same kinds, for the
# cases that make many calls.
python3 - "$work" "$TEST_SEED" <<'EOF' || { echo "cannot make the sources" >&2; exit 1; }
import random, sys
rnd = random.Random(int(sys.argv[2]))
KiB = 1024
words = [bytes(rnd.choice("etaoinshrdlu") * rnd.randint(1, 4), "ascii") for _ in range(300)]
text = b" ".join(rnd.choice(words) for _ in range(300000))
data = (rnd.randbytes(768 * KiB) + text[:1024 * KiB] + b"\0" * (512 * KiB) +
        b"\x01" * (256 * KiB) + rnd.randbytes(512 * KiB) + text[:12345])
open(sys.argv[1] + "/src.raw", "wb").write(data)
small = (rnd.randbytes(256 * KiB) + text[-512 * KiB:] + b"\0" * (128 * KiB) +
         b"\x01" * (128 * KiB) + text[:12345])
open(sys.argv[1] + "/small.raw", "wb").write(small)
EOF
src=$work/src.raw
small=$work/small.raw
# zcow-made images of them: the sources of the restore and qcow2 cases.
img=$work/img.qcow2
img_small=$work/small.qcow2
img_small4k=$work/small4k.qcow2
for args in "$src $img" "$small $img_small" "-o cluster_size=4k $small $img_small4k"; do
    # shellcheck disable=SC2086
    "$ZCOW" convert -q -j 2 $args || { echo "cannot make an image: $args" >&2; exit 1; }
done
# An old destination of other data, for the runs that replace one.
head -c $((1 << 20)) /dev/urandom >"$work/old.raw"
qemu-img convert -c -O qcow2 "$work/old.raw" "$work/old.qcow2" || exit 1

# name|output format|source (raw data)|converted from|zcow convert arguments
# With -j 1, and for raw output, the output is always the same bytes: a run
# that survives its fault is compared with the counting run's output
# (judged by qemu-img once); with -j 2, each is judged by qemu-img.
CASES="j1|qcow2|$src|$src|-j 1
j2|qcow2|$src|$src|-j 2
writeback|qcow2|$small|$small|-j 1 -t writeback
cache-off|qcow2|$small|$small|-j 2 --write-cache=off
qcow2-copy|qcow2|$small|$img_small|-j 2
restore|raw|$src|$img|-j 2 -O raw -T writeback
restore-4k|raw|$small|$img_small4k|-j 1 -O raw"

step=${FAULT_WALK_STEP:-1}
if [ -n "${ZCOW_TEST_SANITIZER:-}" ] || [[ $ZCOW = */build-*/zcow ]]; then
    step=${FAULT_WALK_STEP:-2}
fi

total=0 failed_clean=0 survived_hit=0 not_hit=0 dir_fsync=0
stats=$work/stats.txt
errf=$work/err.txt

# verify FORMAT DATA DST LABEL [REF]: the output's guest contents equal
# the raw DATA (qemu-img check and compare), or DST equals REF byte for byte.
verify() {
    local fmt=$1 data=$2 dst=$3 label=$4 ref=${5:-} out
    if [ -n "$ref" ]; then
        if ! cmp -s "$ref" "$dst"; then
            fail "$label: the output differs from a clean run's"
            return 1
        fi
        pass
        return
    fi
    if [ "$fmt" = qcow2 ]; then
        judge "$data" "$dst" "$label" >/dev/null
        return
    fi
    if ! out=$(qemu-img compare -f raw -F raw "$data" "$dst" 2>&1); then
        fail "$label: qemu-img compare: $(echo "$out" | head -3 | tr '\n' ' ')"
        return 1
    fi
    pass
}

# count OP [FILE]: calls of OP in a run's stats (default: the last run's).
count() { sed -n "s/^$1 //p" "${2:-$stats}"; }

# one CASE FMT DATA SRC ARGS OP N ERR OLD REF: one run with one fault.
one() {
    local name=$1 fmt=$2 data=$3 from=$4 args=$5 op=$6 n=$7 err=$8 old=$9 ref=${10}
    local dst=$work/dst.$fmt label="$name ZCOW_FAULT=$op:$n:$err" rc msg hit
    rm -f "$dst" "$dst".zcow-tmp-*
    [ "$old" = 1 ] && cp "$work/old.qcow2" "$dst"
    total=$((total + 1))
    rm -f "$stats" # a run that crashes writes none
    # shellcheck disable=SC2086
    ZCOW_FAULT=$op:$n:$err ZCOW_FAULT_STATS=$stats timeout -k 5 60 \
        "$FAULT_ZCOW" convert -q $args "$from" "$dst" 2>"$errf" >/dev/null
    rc=$?
    hit=0
    [ "$(count "$op")" -ge "$n" ] 2>/dev/null && hit=1
    msg=$(cat "$errf")
    echo "$label: exit $rc, hit $hit: $msg" >>"$work/runs.log"
    if [ -n "$(temp_leftovers "$dst")" ]; then
        fail "$label: temporary file left: $(temp_leftovers "$dst" | tr '\n' ' ')"
        return
    fi
    if [ $rc -eq 0 ]; then
        if [ $hit = 1 ]; then
            case $op:$err in
            read:EINTR | read:short | write:short) ;;
            write:* | fsync:* | rename:*)
                fail "$label: the fault was hit, yet exit 0"
                return ;;
            esac
            survived_hit=$((survived_hit + 1))
        else
            not_hit=$((not_hit + 1))
        fi
        [ -z "$msg" ] || { fail "$label: exit 0 with a message: $msg"; return; }
        verify "$fmt" "$data" "$dst" "$label" "$ref"
        return
    fi
    case $op:$err in
    read:EINTR | read:short | write:short)
        fail "$label: must be retried, got exit $rc: $msg"
        return ;;
    esac
    if [ $rc -ne 1 ]; then
        fail "$label: exit $rc (crash, signal or timeout): $(echo "$msg" | tail -3 | tr '\n' '|')"
        return
    fi
    if [ "$(printf '%s\n' "$msg" | grep -c '')" -ne 1 ] || [ "${msg#zcow: }" = "$msg" ]; then
        fail "$label: want one line 'zcow: ...' on stderr, got: $(echo "$msg" | head -3 | tr '\n' '|')"
        return
    fi
    local word=$op
    case $op in
    open) word='open\|create' ;;
    write) word='write\|No space' ;;
    alloc) word='out of memory' ;;
    esac
    if ! echo "$msg" | grep -q "$word"; then
        fail "$label: message does not name the operation ($op): $msg"
        return
    fi
    if [ "$op" != alloc ] && ! echo "$msg" | grep -q -e "'$dst'" -e "'$from'" -e "'$work'"; then
        fail "$label: message names no file: $msg"
        return
    fi
    if [ "$op" = fsync ] && echo "$msg" | grep -q 'fsync directory'; then
        # After the rename: the new image is in place, only its name's
        # durability is in doubt.
        dir_fsync=$((dir_fsync + 1))
        verify "$fmt" "$data" "$dst" "$label (directory fsync after the rename)" "$ref"
        return
    fi
    if [ "$old" = 1 ]; then
        cmp -s "$work/old.qcow2" "$dst" || { fail "$label: the old destination was changed"; return; }
    elif [ -e "$dst" ]; then
        fail "$label: a destination was left behind"
        return
    fi
    failed_clean=$((failed_clean + 1))
    pass
}

start=$(date +%s)
while IFS='|' read -r name fmt data from args; do
    if [ -n "${FAULT_WALK_CASES:-}" ] && [[ " $FAULT_WALK_CASES " != *" $name "* ]]; then
        continue
    fi
    dst=$work/dst.$fmt
    counts=$work/counts.$name
    rm -f "$dst" "$counts"
    # shellcheck disable=SC2086
    if ! ZCOW_FAULT_STATS=$counts "$FAULT_ZCOW" convert -q $args "$from" "$dst"; then
        fail "$name: the counting run failed"
        continue
    fi
    verify "$fmt" "$data" "$dst" "$name: counting run" || continue
    ref=
    if [ "$fmt" = raw ] || [[ " $args " = *" -j 1 "* ]]; then
        ref=$work/ref.$name
        mv "$dst" "$ref"
    fi
    echo "# $name: $(tr '\n' ' ' <"$counts")"
    runs=0
    for op in open read write fsync rename alloc; do
        c=$(count $op "$counts")
        case $op in
        read) errs="EIO EINTR short" ;;
        write) errs="EIO ENOSPC short" ;;
        alloc) errs="ENOMEM" ;;
        *) errs="EIO" ;;
        esac
        # Allocations: in the cases whose allocations differ (the others
        # take the same buffers in the same order).
        [ $op = alloc ] && [[ " j1 writeback restore " = *" $name "* ]] && continue
        # Walk every STRIDEth call, and always the last; allocations: also
        # the first 4 and the last 8.
        stride=$step first=1 last=1
        if [ $op = alloc ]; then
            [ $((c / 12)) -gt "$stride" ] && stride=$((c / 12))
            first=4 last=8
        fi
        for ((n = 1; n <= ${c:-0}; n++)); do
            [ $(( (n - 1) % stride )) -eq 0 ] || [ $n -le $first ] || [ $n -gt $((c - last)) ] ||
                continue
            for err in $errs; do
                one "$name" "$fmt" "$data" "$from" "$args" "$op" "$n" "$err" \
                    $(( (total + n) % 2 )) "$ref"
                runs=$((runs + 1))
            done
        done
    done
    echo "# $name: $runs faults injected"
done <<<"$CASES"

echo "# $((failed_clean + survived_hit + not_hit + dir_fsync)) of $total injected faults survived: $failed_clean failed cleanly," \
    "$survived_hit hit and recovered (retried or harmless), $not_hit not hit this run," \
    "$dir_fsync directory-fsync failures after the rename ($(( $(date +%s) - start )) s)"
finish
