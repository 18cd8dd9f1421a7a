#!/usr/bin/env bash
# nbd-optional.sh - `make NBD=no` builds zcow without libnbd, and it works:
#   - the build compiles no lib/source_nbd.c and links no -lnbd; neither
#     libzcow.so nor zcow needs libnbd, nor has an undefined nbd_ symbol;
#     zcow.pc does not require libnbd; no nbdkit plugin is built;
#   - `zcow --version` says -nbd (and +nbd for $ZCOW, the default build);
#   - an NBD URI is refused with one line, "NBD support was not built in",
#     and no destination;
#   - a few tests pass with it: the exported symbols, conversions
#     (convert-matrix smoke), errors (convert-errors), and nbd-convert.sh
#     skips (exit 77).
# The build goes to a scratch directory (BUILD=...), about 15 s on 2 cores.
. "$(dirname "$0")/../interop/functions.sh"
requires make readelf nm qemu-img
requires_zcow

b=$work/build-nbd-no
cd "$ROOT" || exit 1
if ! plan=$(make -n NBD=no BUILD="$b" all 2>&1); then
    fail "make -n NBD=no: $(echo "$plan" | tail -3)"
    finish
fi
if grep -e 'nbdkit-zcow-plugin' <<<"$plan" >/dev/null; then
    fail "make NBD=no builds the nbdkit plugin"
else
    pass
fi
if grep -e 'source_nbd\.c' -e '-lnbd\b' <<<"$plan" >/dev/null; then
    fail "make NBD=no compiles or links NBD: $(grep -e 'source_nbd\.c' -e '-lnbd\b' <<<"$plan" | head -2)"
else
    pass
fi
if ! out=$(make -j2 NBD=no BUILD="$b" all 2>&1); then
    fail "make NBD=no: $(echo "$out" | grep -m 5 -i error)"
    finish
fi
pass
z=$b/zcow

for f in "$b/libzcow.so" "$z"; do
    if readelf -d "$f" | grep 'NEEDED.*libnbd' >/dev/null; then
        fail "$f needs libnbd"
    elif nm -D -u "$f" | grep -w 'nbd_[a-z_]*' >/dev/null; then
        fail "$f has undefined nbd_ symbols"
    else
        pass
    fi
done
if grep '^Requires.*libnbd' "$b/zcow.pc" >/dev/null; then fail "$b/zcow.pc requires libnbd"; else pass; fi

v=$("$z" --version)
if [[ $v == *$'\nfeatures: -nbd'* ]]; then pass; else fail "zcow --version of the NBD=no build: '$v'"; fi
v=$("$ZCOW" --version)
if [[ $v == *$'\nfeatures: +nbd'* ]]; then pass; else fail "$ZCOW --version: '$v'"; fi

head -c $((1 << 20)) /dev/urandom >"$work/src.raw"
for uri in "nbd://localhost/disk" "nbds+unix:///disk?socket=$work/no.sock"; do
    for args in "" "--bitmap b0 -B $work/src.raw -F raw"; do
        # shellcheck disable=SC2086
        err=$("$z" convert $args "$uri" "$work/out.qcow2" 2>&1)
        rc=$?
        if [ $rc -ne 1 ] || [ "$err" != "zcow: '$uri': NBD support was not built in" ]; then
            fail "zcow convert $args $uri without NBD: exit $rc: '$err'"
        elif [ -e "$work/out.qcow2" ] || [ -n "$(temp_leftovers "$work/out.qcow2")" ]; then
            fail "zcow convert $args $uri without NBD left a destination"
        else
            pass
        fi
    done
done

for t in tests/abi/symbols.sh tests/interop/convert-errors.sh "MATRIX=smoke tests/interop/convert-matrix.sh" \
    "77 tests/interop/nbd-convert.sh"; do
    want=0 envs=()
    case $t in 77\ *) want=77 t=${t#77 } ;; esac
    case $t in MATRIX=*) envs=("${t%% *}") t=${t#* } ;; esac
    out=$(env "${envs[@]}" ZCOW="$z" bash "$t" 2>&1)
    rc=$?
    if [ $rc -eq $want ]; then
        pass
        echo "# ${envs[*]} $t with the NBD=no build: exit $rc"
    else
        fail "${envs[*]} $t with the NBD=no build: exit $rc, not $want: $(echo "$out" | tail -5 | tr '\n' '|')"
    fi
done
finish
