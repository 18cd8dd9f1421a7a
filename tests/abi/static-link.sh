#!/usr/bin/env bash
# static-link.sh - a program that defines every internal name of libzcow
# (source_open, reader_open, blk_create, zerr, ...: the global names of the
# test library build/tests/libzcow-test.a that are not zcow_*) links
# statically against libzcow.a without a clash and works: the program is
# tests/abi/readimg.c, which reads an image zcow wrote and compares it with
# its source.
. "$(dirname "$0")/../interop/functions.sh"
requires nm pkg-config cc
requires_zcow

bdir=$(dirname "$ZCOW")
a=$bdir/libzcow.a
testlib=$bdir/tests/libzcow-test.a
for f in "$a" "$testlib" "$bdir/zcow.pc"; do
    [ -f "$f" ] || { fail "no $f (build first: make tests)"; finish; }
done

# The internal names, each defined again by the program as a function
# returning a mark (data symbols too: the linker only sees the name).
names=$(nm -g --defined-only -P "$testlib" | awk 'NF >= 2 && $1 !~ /:$/ && $1 !~ /^zcow_/ { print $1 }' |
    LC_ALL=C sort -u)
count=$(echo "$names" | grep -c .)
if [ "$count" -lt 10 ]; then
    fail "only $count internal names in $testlib: is it the test library?"
    finish
fi
echo "# $count internal names of libzcow defined by the program too"
i=0
for n in $names; do
    i=$((i + 1))
    echo "int $n(void); int $n(void) { return $i; }"
done >"$work/defs.c"

# An image with compressed clusters, written by zcow, and its source.
{
    head -c $((1 << 20)) /dev/urandom
    yes "static link" | head -c $((2 << 20))
} >"$work/src.raw"
"$ZCOW" convert -q "$work/src.raw" "$work/img.qcow2" || { fail "zcow convert failed"; finish; }

# shellcheck disable=SC2046
if ! out=$(cc -std=c99 -I"$ROOT/include" -o "$work/prog" "$ROOT/tests/abi/readimg.c" "$work/defs.c" "$a" \
    $(pkg-config --libs $(sed -n 's/^Requires.private: *//p' "$bdir/zcow.pc")) -pthread 2>&1); then
    fail "static link against $a: $(echo "$out" | grep -m 5 -e 'multiple definition' -e error | tr '\n' ' ')"
    finish
fi
pass
if out=$("$work/prog" "$work/img.qcow2" "$work/src.raw" 2>&1); then
    pass
    echo "# $out"
else
    fail "the statically linked program: $out"
fi
finish
fi
pass
if out=$("$work/prog" "$work/img.qcow2" "$work/img.raw" 2>&1); then
    pass
    judge "$work/img.raw" "$work/img.qcow2" "image written by the statically linked program"
else
    fail "the statically linked program: $out"
fi
finish
