#!/usr/bin/env bash
# old-header.sh - programs built for zcow 0.1 and the library of today.
#
# A program built against 0.1 (tests/abi/v0_1.c with the 0.1 header,
# tests/abi/zcow-0.1.h: include/zcow.h as commit 85ec5a8, the first,
# released it) is linked as it was then: to a libzcow.so.0 whose symbols
# all carry the version node ZCOW_0.1, so that its calls record
# NAME@ZCOW_0.1 (a stand-in library made here from the program's own
# calls, soname libzcow.so.0).  Then it runs against the library of today
# ($ZCOW's build directory first in LD_LIBRARY_PATH).  Which outcome is
# right depends on the library's soname:
#   - libzcow.so.0, 0.1's: 0.1 is supported.  The program must load, bind
#     every call to a ZCOW_0.1 version, pass its own checks (structures
#     never written or read past their 0.1 size) and write images that
#     qemu-img judges;
#   - another (0.1 retired, the soname bumped in lib/libzcow.map): the
#     program must not load at all, for want of libzcow.so.0: it can never
#     call the new library with old structures.
# usage: old-header.sh [HEADER]   (default tests/abi/zcow-0.1.h)
. "$(dirname "$0")/../interop/functions.sh"
requires qemu-img cc nm readelf
requires_zcow

header=${1:-$ROOT/tests/abi/zcow-0.1.h}
bdir=$(dirname "$ZCOW")
so=$bdir/libzcow.so
[ -e "$so" ] || { fail "no $so (build first: make)"; finish; }
soname=$(readelf -d "$so" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')

# The stored 0.1 header is the released one (when the history is here).
if [ -z "${1:-}" ] && git -C "$ROOT" cat-file -e 85ec5a8:include/zcow.h 2>/dev/null; then
    if git -C "$ROOT" show 85ec5a8:include/zcow.h | cmp -s - "$header"; then
        pass
    else
        fail "$header differs from include/zcow.h of commit 85ec5a8 (0.1)"
    fi
fi

# The 0.1 header alone, in a directory of its own.
mkdir -p "$work/inc" "$work/old" "$work/out"
cp "$header" "$work/inc/zcow.h"
if ! out=$(cc -std=c99 -Wall -Wextra -Werror -I"$work/inc" -c "$ROOT/tests/abi/v0_1.c" -o "$work/v0_1.o" 2>&1); then
    fail "v0_1.c against $header: $out"
    finish
fi
# The 0.1 library as the program saw it when linked: its calls, under
# ZCOW_0.1, soname libzcow.so.0.
calls=$(nm -u "$work/v0_1.o" | awk '$2 ~ /^zcow_/ { print $2 }')
for n in $calls; do echo "void $n(void); void $n(void) {}"; done >"$work/old/stub.c"
printf 'ZCOW_0.1 {\n  global:\n    zcow_*;\n  local:\n    *;\n};\n' >"$work/old/libzcow.map"
if ! out=$(cc -shared -fPIC -o "$work/old/libzcow.so.0" "$work/old/stub.c" -Wl,-soname,libzcow.so.0 \
    -Wl,--version-script="$work/old/libzcow.map" 2>&1); then
    fail "the stand-in 0.1 library: $out"
    finish
fi
ln -s libzcow.so.0 "$work/old/libzcow.so"
if ! out=$(cc -o "$work/v0_1" "$work/v0_1.o" -L"$work/old" -lzcow 2>&1); then
    fail "linking v0_1 as 0.1's programs were: $out"
    finish
fi
bound=$(nm -D -u "$work/v0_1" | awk '$2 ~ /^zcow_/ { print $2 }')
unbound=$(grep -v '@ZCOW_0\.1$' <<<"$bound")
if [ -n "$unbound" ] || [ "$(grep -c . <<<"$bound")" -ne "$(grep -c . <<<"$calls")" ]; then
    fail "v0_1's calls are not all NAME@ZCOW_0.1: $(echo $bound)"
    finish
fi
echo "# v0_1 calls $(grep -c . <<<"$bound") entry points of 0.1, each @ZCOW_0.1; today's soname: $soname"

if [ "$soname" = libzcow.so.0 ]; then
    echo "# 0.1 supported (soname libzcow.so.0): the 0.1 program runs against $so"
    out=$(LD_LIBRARY_PATH=$bdir "$work/v0_1" "$work/out" 2>&1)
    rc=$?
    echo "$out" | sed 's/^/#   /'
    if [ $rc -ne 0 ]; then
        fail "the 0.1 program against $so: exit $rc: $(grep -m 5 -e FAIL -e 'symbol' -e 'version' <<<"$out" | tr '\n' '|')"
    else
        pass
        judge "$work/out/a.raw" "$work/out/a.qcow2" "a.qcow2, written through 0.1's zcow_create"
        judge "$work/out/src.raw" "$work/out/c.qcow2" "c.qcow2, written through 0.1's zcow_convert"
    fi
else
    echo "# 0.1 retired (soname $soname): the 0.1 program must not load"
    out=$(LD_LIBRARY_PATH=$bdir "$work/v0_1" "$work/out" 2>&1)
    rc=$?
    if [ $rc -eq 127 ] && [[ $out == *"libzcow.so.0"* ]]; then
        pass
    else
        fail "a 0.1 program ran against $so (soname $soname): exit $rc: $(echo "$out" | tail -2 | tr '\n' '|')"
    fi
    if [ -e "$bdir/libzcow.so.0" ]; then
        fail "$bdir/libzcow.so.0 exists beside a library of soname $soname"
    else
        pass
    fi
fi
finish
