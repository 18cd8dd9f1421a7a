#!/usr/bin/env bash
# static-link.sh - a program that defines every internal name of libzcow
# (source_open, reader_open, blk_create, zerr, ...: the global names of the
# test library build/tests/libzcow-test.a that are not zcow_*) links
# statically against libzcow.a without a clash and works: it writes an
# image with zcow_create/zcow_write/zcow_close, which qemu-img judges, and
# reads it back with zcow_open/zcow_read; its own definitions stay its own.
. "$(dirname "$0")/../interop/functions.sh"
requires qemu-img nm pkg-config cc
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
{
    echo "#include <zcow.h>"
    echo "#include <stdio.h>"
    echo "#include <stdlib.h>"
    echo "#include <string.h>"
    i=0
    for n in $names; do
        i=$((i + 1))
        echo "int $n(void); int $n(void) { return $i; }"
    done
    echo "static int (*const own[])(void) = {"
    for n in $names; do echo "    $n,"; done
    echo "};"
    cat <<'EOC'
#define CLUSTER 65536
#define CHECK(x) do { int r_ = (x); if (r_ < 0) { fprintf(stderr, "%s: %d: %s\n", #x, r_, zcow_get_error()); return 1; } } while (0)

int main(int argc, char **argv)
{
    static unsigned char buf[4 * CLUSTER], back[4 * CLUSTER];
    struct zcow_create_options o;
    zcow_image *img;
    FILE *raw;
    size_t i;
    (void)argc;
    for (i = 0; i < sizeof(own) / sizeof(own[0]); i++)
        if (own[i]() != (int)i + 1) {
            fprintf(stderr, "the program's definition number %zu is not its own\n", i + 1);
            return 1;
        }
    for (i = 0; i < sizeof(buf); i++)
        buf[i] = i < CLUSTER ? (unsigned char)(i * 7) : i < 2 * CLUSTER ? 0 : (unsigned char)(i / 1000);
    zcow_create_options_init(&o);
    o.virtual_size = sizeof(buf);
    o.cache_mode = ZCOW_CACHE_WRITEBACK;
    CHECK(zcow_create(argv[1], &o, &img));
    CHECK(zcow_write(img, 0, buf, sizeof(buf)));
    CHECK(zcow_close(img));
    CHECK(zcow_open(argv[1], "qcow2", 0, &img));
    CHECK(zcow_read(img, 0, back, sizeof(back)));
    CHECK(zcow_close(img));
    if (memcmp(buf, back, sizeof(buf))) {
        fprintf(stderr, "zcow_read differs from what was written\n");
        return 1;
    }
    raw = fopen(argv[2], "wb");
    if (!raw || fwrite(buf, 1, sizeof(buf), raw) != sizeof(buf) || fclose(raw))
        return 1;
    return 0;
}
EOC
} >"$work/prog.c"

# shellcheck disable=SC2046
if ! out=$(cc -std=c99 -I"$ROOT/include" -o "$work/prog" "$work/prog.c" "$a" \
    $(pkg-config --libs $(sed -n 's/^Requires.private: *//p' "$bdir/zcow.pc")) -pthread 2>&1); then
    fail "static link against $a: $(echo "$out" | grep -m 5 -e 'multiple definition' -e error | tr '\n' ' ')"
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
