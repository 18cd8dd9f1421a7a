#!/usr/bin/env bash
# deps.sh - the build's dependencies, both ways:
#   - each object depends on the headers its source includes (-MMD -MP),
#     not on every header: `make -n -W HEADER OBJ` (as if HEADER had
#     changed, without touching it) rebuilds lib/codec.o for lib/codec.h,
#     and not for lib/fault.h or tests/unit/unit.h, which it does not
#     include;
#   - every library the build links is used: each package of zcow.pc's
#     Requires.private gives a NEEDED entry of libzcow.so (the linker drops
#     unused ones under --as-needed, Debian's default), and `ldd -u` finds
#     no unused direct dependency of libzcow.so or zcow (without it).
# Runs on the build of $ZCOW (default build/), after `make`.
. "$(dirname "$0")/../interop/functions.sh"
requires make readelf ldd pkg-config
requires_zcow

bdir=$(dirname "$ZCOW")
bdir=${bdir#"$ROOT"/} # the .d files name objects relative to the root
cd "$ROOT" || exit 1

# rebuilds HEADER OBJ: would `make` rebuild OBJ if HEADER changed?
rebuilds() {
    local out
    out=$(make -s -n -W "$1" BUILD="$bdir" "$2" 2>&1) || {
        fail "make -n -W $1 $2: $out"
        return 2
    }
    [[ $out == *" -c lib/codec.c "* ]]
}

obj=$bdir/lib/codec.o
if [ ! -f "$obj" ] || [ ! -f "${obj%.o}.d" ]; then
    fail "no $obj or ${obj%.o}.d: build first (make)"
else
    if rebuilds lib/codec.h "$obj"; then pass; else fail "$obj is not rebuilt when lib/codec.h changes"; fi
    for h in lib/fault.h tests/unit/unit.h; do
        rebuilds "$h" "$obj"
        case $? in
        0) fail "$obj is rebuilt when $h, which lib/codec.c does not include, changes" ;;
        1) pass ;;
        esac
    done
fi

so=$bdir/libzcow.so
pc=$bdir/zcow.pc
needed=$(readelf -d "$so" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
echo "# NEEDED by $so: $(echo $needed)"
pkgs=$(sed -n 's/^Requires.private: *//p' "$pc" | tr ',' ' ')
[ -n "$pkgs" ] || fail "$pc has no Requires.private line"
for p in $pkgs; do
    for l in $(pkg-config --libs-only-l "$p"); do
        l=${l#-l}
        if grep -qx "lib$l\.so.*" <<<"$needed"; then
            pass
        else
            fail "package '$p' of $pc: -l$l is linked but unused (no lib$l.so in NEEDED of $so)"
        fi
    done
done
for f in "$so" "$ZCOW"; do
    out=$(ldd -u "$f" 2>&1)
    if [ -z "$out" ]; then pass; else fail "ldd -u $f: $(echo "$out" | tr '\n' ' ')"; fi
done
finish
