#!/usr/bin/env bash
# install.sh - `make install DESTDIR=... PREFIX=/usr` installs what a user
# needs, and it works from there:
#   - bin/zcow, include/zcow.h, lib/libzcow.so -> libzcow.so.N ->
#     libzcow.so.N.MINOR.PATCH (relative links), lib/libzcow.a,
#     lib/pkgconfig/zcow.pc with prefix=/usr (not /usr/local), and every
#     man page of man/ (zcow.1 and libzcow.3 at least) under share/man/manN,
#     nbdkit-zcow-plugin.so in nbdkit's plugin directory under PREFIX;
#   - a program (tests/abi/readimg.c) built with pkg-config against the
#     installed files (PKG_CONFIG_PATH and PKG_CONFIG_SYSROOT_DIR into
#     DESTDIR), linked to the installed .so and, with --static, to the .a,
#     reads an image the installed zcow wrote;
#   - `man --warnings -l` renders every installed page without a warning;
#   - without PREFIX, the files go under /usr/local and zcow.pc says so.
# Uses the build of $ZCOW (default build/).
. "$(dirname "$0")/../interop/functions.sh"
requires make pkg-config cc readelf man
requires_zcow

bdir=$(dirname "$ZCOW")
bdir=${bdir#"$ROOT"/}
cd "$ROOT" || exit 1
root=$work/root

# inst PREFIX DESTDIR: make install (PREFIX "": make's default).
inst() {
    local out args=(install BUILD="$bdir" DESTDIR="$2")
    [ -n "$1" ] && args+=(PREFIX="$1")
    if ! out=$(make -s "${args[@]}" 2>&1); then
        fail "make install PREFIX=$1 DESTDIR=$2: $(echo "$out" | tail -3 | tr '\n' ' ')"
        finish
    fi
}

inst /usr "$root"
u=$root/usr
soname=$(readelf -d "$u/lib/libzcow.so" 2>/dev/null | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
file=$(readlink "$u/lib/$soname")
echo "# installed: $(cd "$root" && find . \( -type f -o -type l \) | sort | tr '\n' ' ')"
for f in bin/zcow include/zcow.h lib/libzcow.a lib/pkgconfig/zcow.pc "lib/$file"; do
    if [ -f "$u/$f" ] && [ ! -L "$u/$f" ]; then pass; else fail "no file $u/$f"; fi
done
if [ "$(readlink "$u/lib/libzcow.so")" = "$soname" ] && [[ $file == "$soname".* ]]; then
    pass
else
    fail "links: libzcow.so -> $(readlink "$u/lib/libzcow.so"), $soname -> $file"
fi
[ -x "$u/bin/zcow" ] && "$u/bin/zcow" --version >/dev/null && pass || fail "$u/bin/zcow does not run"
cmp -s include/zcow.h "$u/include/zcow.h" && pass || fail "$u/include/zcow.h is not include/zcow.h"

pc=$u/lib/pkgconfig/zcow.pc
if grep -qx 'prefix=/usr' "$pc" && ! grep /usr/local "$pc" >/dev/null; then
    pass
else
    fail "$pc: $(tr '\n' ' ' <"$pc")"
fi

pages=(man/*.[1-8])
for m in man/zcow.1 man/libzcow.3; do
    [ -f "$m" ] || fail "no $m"
done
for m in "${pages[@]}"; do
    im=$u/share/man/man${m##*.}/${m#man/}
    if [ ! -f "$im" ]; then
        fail "$m is not installed as $im"
    elif out=$(man --warnings -l "$im" 2>&1 >/dev/null) && [ -z "$out" ]; then
        pass
    else
        fail "man --warnings -l $im: $(echo "$out" | head -5 | tr '\n' ' ')"
    fi
done

# The nbdkit plugin (not with NBD=no): in nbdkit's plugin directory moved
# under PREFIX, loadable by nbdkit from there.
plugindir=$(pkg-config --variable=plugindir nbdkit 2>/dev/null)
plugindir=/usr/${plugindir#"$(pkg-config --variable=prefix nbdkit)"/}
if [ -f "$bdir/nbdkit-zcow-plugin.so" ] && [ -n "$plugindir" ]; then
    ip=$root$plugindir/nbdkit-zcow-plugin.so
    if [ ! -f "$ip" ]; then
        fail "the plugin is not installed as $ip"
    elif ! out=$(nbdkit "$ip" --dump-plugin 2>&1) || ! grep -qx 'name=zcow' <<<"$out"; then
        fail "nbdkit $ip --dump-plugin: $(echo "$out" | head -3 | tr '\n' ' ')"
    else
        pass
    fi
fi

# A program built against the installed files only.
export PKG_CONFIG_PATH=$u/lib/pkgconfig PKG_CONFIG_SYSROOT_DIR=$root
cflags= libs= slibs=
cflags=$(pkg-config --cflags zcow) && libs=$(pkg-config --libs zcow) &&
    slibs=$(pkg-config --static --libs zcow) || fail "pkg-config zcow failed"
echo "# pkg-config --cflags --libs zcow: $cflags $libs"
[[ " $cflags " == *" -I$u/include "* ]] || fail "pkg-config --cflags zcow: '$cflags'"
{
    head -c $((1 << 20)) /dev/urandom
    yes "installed" | head -c $((2 << 20))
} >"$work/src.raw"
"$u/bin/zcow" convert -q "$work/src.raw" "$work/img.qcow2" || fail "the installed zcow failed"
# shellcheck disable=SC2086
if ! out=$(cc $cflags -o "$work/dyn" tests/abi/readimg.c $libs 2>&1); then
    fail "cc \$(pkg-config --cflags --libs zcow): $out"
elif ! ldd_out=$(LD_LIBRARY_PATH=$u/lib ldd "$work/dyn") ||
    ! grep "$soname => $u/lib/$soname" <<<"$ldd_out" >/dev/null; then
    fail "the program does not load $u/lib/$soname: $ldd_out"
elif ! out=$(LD_LIBRARY_PATH=$u/lib "$work/dyn" "$work/img.qcow2" "$work/src.raw" 2>&1); then
    fail "the program linked to the installed .so: $out"
else
    pass
    echo "# dynamic: $out"
fi
# shellcheck disable=SC2086
if ! out=$(cc $cflags -o "$work/static" tests/abi/readimg.c ${slibs/-lzcow/-l:libzcow.a} 2>&1); then
    fail "cc \$(pkg-config --static --cflags --libs zcow), libzcow.a: $out"
elif readelf -d "$work/static" | grep 'NEEDED.*libzcow' >/dev/null; then
    fail "the static program needs libzcow.so"
elif ! out=$("$work/static" "$work/img.qcow2" "$work/src.raw" 2>&1); then
    fail "the program linked to the installed .a: $out"
else
    pass
    echo "# static: $out"
fi
unset PKG_CONFIG_PATH PKG_CONFIG_SYSROOT_DIR

# The default prefix.
inst "" "$work/root2"
if [ -x "$work/root2/usr/local/bin/zcow" ] && grep -qx 'prefix=/usr/local' "$work/root2/usr/local/lib/pkgconfig/zcow.pc" &&
    { [ ! -f "$bdir/nbdkit-zcow-plugin.so" ] ||
        [ -f "$work/root2/usr/local/${plugindir#/usr/}/nbdkit-zcow-plugin.so" ]; }; then
    pass
else
    fail "make install without PREFIX: $(cd "$work/root2" && find . -type f | tr '\n' ' ')"
fi
finish
