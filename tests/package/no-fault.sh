#!/usr/bin/env bash
# no-fault.sh - fault injection (lib/fault.h) is in test builds only: the
# shipped libzcow.so, libzcow.a and zcow hold no ZCOW_FAULT string and
# ignore ZCOW_FAULT and ZCOW_FAULT_STATS (a conversion succeeds and writes
# no counts), while the test build $FAULT_ZCOW obeys them (so that this
# test can tell the two apart).
. "$(dirname "$0")/../interop/functions.sh"
requires qemu-img strings
requires_zcow
requires_fault_zcow

bdir=$(dirname "$ZCOW")
for f in "$bdir/libzcow.so" "$bdir/libzcow.a" "$ZCOW"; do
    if [ ! -f "$f" ]; then
        fail "no $f: build first (make)"
    elif strings -a "$f" | grep ZCOW_FAULT >/dev/null; then
        fail "$f reads ZCOW_FAULT: $(strings -a "$f" | grep ZCOW_FAULT | sort -u | tr '\n' ' ')"
    else
        pass
    fi
done
if strings -a "$FAULT_ZCOW" | grep ZCOW_FAULT >/dev/null; then pass; else fail "$FAULT_ZCOW has no ZCOW_FAULT"; fi

head -c $((1 << 20)) /dev/urandom >"$work/src.raw"
stats=$work/stats.txt
if ZCOW_FAULT=write:1:EIO ZCOW_FAULT_STATS=$stats "$ZCOW" convert -q "$work/src.raw" "$work/a.qcow2"; then
    judge "$work/src.raw" "$work/a.qcow2" "zcow with ZCOW_FAULT=write:1:EIO"
else
    fail "zcow with ZCOW_FAULT=write:1:EIO failed: the shipped binary injects faults"
fi
[ -e "$stats" ] && fail "zcow wrote ZCOW_FAULT_STATS ($stats)"

if err=$(ZCOW_FAULT=write:1:EIO ZCOW_FAULT_STATS=$stats "$FAULT_ZCOW" convert -q "$work/src.raw" \
    "$work/b.qcow2" 2>&1); then
    fail "$FAULT_ZCOW with ZCOW_FAULT=write:1:EIO succeeded"
elif [[ $err != *"Input/output error"* ]]; then
    fail "$FAULT_ZCOW with ZCOW_FAULT=write:1:EIO: '$err'"
elif ! grep "^write [1-9]" "$stats" >/dev/null 2>/dev/null; then
    fail "$FAULT_ZCOW wrote no counts to ZCOW_FAULT_STATS"
else
    pass
fi
finish
