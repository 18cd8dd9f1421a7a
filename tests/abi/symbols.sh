#!/usr/bin/env bash
# symbols.sh - libzcow exports what tests/abi/symbols.txt lists: nothing
# more, nothing less.
#   - libzcow.so: `nm -D --defined-only` (names with their versions, and
#     the version nodes) equals the list;
#   - libzcow.a: `nm -g --defined-only` equals the list's NAMEs of NAME@@NODE
#     lines (the current API; old versions are for the .so only): internal
#     names (source_open, zerr, ...) are local;
#   - the list itself holds only zcow_* names and ZCOW_X.Y nodes;
#   - the soname and its links: libzcow.so -> libzcow.so.N (the soname) ->
#     libzcow.so.N.MINOR.PATCH, the file, of zcow.pc's version, which no
#     version node of the library is newer than.
# Runs on the build of $ZCOW (default build/), after `make`.
. "$(dirname "$0")/../interop/functions.sh"
requires nm readelf pkg-config
requires_zcow

bdir=$(dirname "$ZCOW")
list=$ROOT/tests/abi/symbols.txt
so=$bdir/libzcow.so
a=$bdir/libzcow.a
for f in "$list" "$so" "$a" "$bdir/zcow.pc"; do
    [ -e "$f" ] || { fail "no $f (build first: make)"; finish; }
done
export LC_ALL=C

# same LABEL WANT GOT: the two sorted lists are equal; else one failure per
# extra or missing symbol.
same() {
    local label=$1 extra missing s
    extra=$(comm -13 <(echo "$2") <(echo "$3"))
    missing=$(comm -23 <(echo "$2") <(echo "$3"))
    if [ -z "$extra$missing" ]; then
        echo "# $label: $(echo "$3" | grep -c .) symbols, as listed"
        pass
        return
    fi
    for s in $extra; do fail "$label exports '$s', which $list does not list"; done
    for s in $missing; do fail "$label lacks '$s', which $list lists"; done
}

want_so=$(grep -v -e '^#' -e '^[[:space:]]*$' "$list" | sort)
want_a=$(echo "$want_so" | sed -n 's/@@.*//p' | sort -u)
bad=$(echo "$want_so" | grep -v -E '^(zcow_[a-z0-9_]+@@?)?ZCOW_[0-9]+\.[0-9]+$')
if [ -n "$bad" ]; then
    fail "$list: not a zcow_NAME@@ZCOW_X.Y, zcow_NAME@ZCOW_X.Y or ZCOW_X.Y line: $(echo $bad)"
else
    pass
fi

got_so=$(nm -D --defined-only -P "$so" | awk '{ print $1 }' | sort)
same "$so (nm -D --defined-only)" "$want_so" "$got_so"
got_a=$(nm -g --defined-only -P "$a" | awk 'NF >= 2 && $1 !~ /:$/ { print $1 }' | sort -u)
same "$a (nm -g --defined-only)" "$want_a" "$got_a"

# The soname and its links.
soname=$(readelf -d "$so" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
version=$(pkg-config --modversion "$bdir/zcow.pc")
file=$soname.${version#*.}
echo "# soname $soname, version $version: libzcow.so -> $(readlink "$so") -> $(readlink "$bdir/$soname")"
if [[ ! $soname =~ ^libzcow\.so\.[0-9]+$ ]]; then
    fail "$so: soname '$soname' is not libzcow.so.N"
elif [ "$(readlink "$so")" != "$soname" ]; then
    fail "$so is not a link to $soname: $(ls -l "$so")"
elif [ "$(readlink "$bdir/$soname")" != "$file" ]; then
    fail "$bdir/$soname is not a link to $file: $(ls -l "$bdir/$soname")"
elif [ ! -f "$bdir/$file" ] || [ -L "$bdir/$file" ]; then
    fail "$bdir/$file is not a file"
else
    pass
fi
newest=$(echo "$want_so" | grep -E '^ZCOW_[0-9.]+$' | sed 's/^ZCOW_//' | sort -V | tail -n 1)
if [ "$(printf '%s\n' "$newest" "${version%.*}" | sort -V | tail -n 1)" != "${version%.*}" ]; then
    fail "version node ZCOW_$newest is newer than the library's version $version (Makefile's VERSION)"
else
    pass
fi
finish
