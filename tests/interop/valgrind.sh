#!/usr/bin/env bash
# valgrind.sh - zcow under valgrind memcheck: no invalid access, no use of
# uninitialised bytes, no definite or indirect leak, on the paths that
# succeed and on the paths that fail.
#
#   a conversion with -j 2 (O_DIRECT, write cache on), one with -t writeback
#   and the write cache off, one to zstd from a qcow2 source, a restore
#   (-O raw) with -j 2; zcow info, check, compare and digest;
#   conversions and a restore failing on injected faults (ZCOW_FAULT, with
#   $FAULT_ZCOW, the test build with fault injection): the error paths free
#   what they took too.
#
# Memcheck cannot run a sanitizer build: under one (ZCOW_TEST_SANITIZER set
# by tests/run.sh, or ZCOW in a build-*/ directory) the test is skipped;
# stage a runs it on build/zcow.
. "$(dirname "$0")/functions.sh"
requires qemu-img cmp
requires_zcow
requires_fault_zcow
requires_optional valgrind
if [ -n "${ZCOW_TEST_SANITIZER:-}" ] || [[ $ZCOW = */build-*/zcow ]]; then
    echo "$TEST_NAME: skipped: $ZCOW is a sanitizer build; memcheck runs on build/zcow" >&2
    exit 77
fi

vg=(valgrind -q --error-exitcode=99 --leak-check=full
    --errors-for-leak-kinds=definite,indirect --show-leak-kinds=definite,indirect
    --track-fds=no)

src=$work/src.raw
{
    yes "valgrind checks zcow" | head -c $((1 << 20))
    head -c $((512 << 10)) /dev/urandom
    head -c $((512 << 10)) /dev/zero
    head -c 12345 /dev/urandom
} >"$src"
log=$work/vg.log

# vgrun WANT LABEL ARGS...: zcow ARGS under memcheck must exit WANT (0, or
# 1 for an injected fault); exit 99 is memcheck's own verdict.  With
# ZCOW_FAULT set, the test build $FAULT_ZCOW runs.
vgrun() {
    local want=$1 label=$2 rc bin=$ZCOW
    shift 2
    [ -n "${ZCOW_FAULT:-}" ] && bin=$FAULT_ZCOW
    "${vg[@]}" --log-file="$log" "$bin" "$@" >/dev/null 2>"$work/err.txt"
    rc=$?
    if [ $rc -eq 99 ] || [ -s "$log" ]; then
        fail "$label: memcheck: $(grep -m 8 -e 'ERROR SUMMARY' -e 'lost' -e 'Invalid' \
            -e 'uninitialised' -e '   at ' "$log" | tr '\n' '|')"
        cat "$log" >&2
        return 1
    fi
    if [ $rc -ne "$want" ]; then
        fail "$label: exit $rc, want $want: $(head -3 "$work/err.txt" | tr '\n' ' ')"
        return 1
    fi
    return 0
}

img=$work/img.qcow2
vgrun 0 "convert -j 2" convert -q -j 2 "$src" "$img" && judge "$src" "$img" "convert -j 2"
vgrun 0 "convert -t writeback --write-cache=off" convert -q -j 2 -t writeback \
    --write-cache=off -o cluster_size=4k "$src" "$work/wb.qcow2" &&
    judge "$src" "$work/wb.qcow2" "convert -t writeback --write-cache=off"
vgrun 0 "convert qcow2 to zstd" convert -q -j 2 -o compression_type=zstd "$img" "$work/zstd.qcow2" &&
    judge "$src" "$work/zstd.qcow2" "convert qcow2 to zstd"
if vgrun 0 "restore -j 2" convert -q -j 2 -O raw "$img" "$work/back.raw"; then
    if qemu-img compare -q -f raw -F raw "$src" "$work/back.raw"; then pass; else fail "restore differs"; fi
fi
vgrun 0 "info" info --output=json "$img" && pass
vgrun 0 "check" check "$img" && pass
vgrun 0 "compare" compare "$src" "$img" && pass
vgrun 0 "digest -j 2" digest -j 2 "$src" "$img" && pass
ZCOW_FAULT=read:3:EIO vgrun 1 "digest with ZCOW_FAULT=read:3:EIO" digest -j 2 "$img" && pass

# Error paths: each fails, cleanly, with nothing leaked.
for f in read:1:EIO write:2:EIO rename:1:EIO; do
    rm -f "$work/f.qcow2"
    ZCOW_FAULT=$f vgrun 1 "convert with ZCOW_FAULT=$f" convert -q -j 2 "$src" "$work/f.qcow2" &&
        pass
done
ZCOW_FAULT=read:3:EIO vgrun 1 "restore with ZCOW_FAULT=read:3:EIO" \
    convert -q -j 2 -O raw "$img" "$work/f.raw" && pass
vgrun 1 "convert of a missing source" convert -q "$work/missing.raw" "$work/f.qcow2" && pass

finish
