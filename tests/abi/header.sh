#!/usr/bin/env bash
# header.sh - include/zcow.h stands alone: a file that includes nothing
# else compiles, warning-free (-Wall -Wextra -Werror, -pedantic-errors), as
# ISO C99 (gcc and clang) and as C++11 (g++ and clang++), and a program
# using its types and functions links against libzcow.so in each language.
. "$(dirname "$0")/../interop/functions.sh"
requires_zcow

bdir=$(dirname "$ZCOW")
inc=$ROOT/include

# The header alone, then the header used: its enums, structs and calls.
printf '#include <zcow.h>\n' >"$work/alone.c"
cat >"$work/use.c" <<'EOC'
#include <zcow.h>

int main(void)
{
    zcow_image *img = 0;
    int kind = ZCOW_CLUSTER_COMPRESSED + ZCOW_COMPRESSION_ZSTD + ZCOW_CACHE_WRITEBACK;
    const char *e = zcow_get_error();
    if (zcow_open("/nonexistent/zcow-header-test", 0, 0, &img) == 0)
        zcow_close(img);
    return (e == 0) + (kind != 5);
}
EOC
cp "$work/alone.c" "$work/alone.cpp"
cp "$work/use.c" "$work/use.cpp"

c_flags=(-std=c99 -pedantic-errors -Wall -Wextra -Werror -Wstrict-prototypes -Wmissing-prototypes
         -Wshadow -Wundef -Wc++-compat)
# (Not -Wshadow in C++: g++ warns that the function zcow_cluster_info hides
# the struct's name, which C++ code then spells struct zcow_cluster_info.)
cxx_flags=(-std=c++11 -pedantic-errors -Wall -Wextra -Werror -Wundef -Wold-style-cast)
n=0
for cc in gcc clang g++ clang++; do
    if ! command -v "$cc" >/dev/null; then
        # gcc and g++ come with build-essential; clang is for the fuzzers
        case $cc in clang*) echo "# $cc: not installed" && continue ;; esac
        fail "$cc is not installed"
        continue
    fi
    case $cc in *++) flags=("${cxx_flags[@]}") ext=cpp lang="C++11" ;; *) flags=("${c_flags[@]}") ext=c lang=C99 ;; esac
    if out=$("$cc" "${flags[@]}" -I"$inc" -c "$work/alone.$ext" -o "$work/alone.o" 2>&1); then
        pass
    else
        fail "include/zcow.h alone as $lang with $cc ${flags[*]}: $out"
    fi
    if ! out=$("$cc" "${flags[@]}" -I"$inc" "$work/use.$ext" -o "$work/use" -L"$bdir" -lzcow 2>&1); then
        fail "a $lang program using include/zcow.h, with $cc: $out"
    elif ! out=$(LD_LIBRARY_PATH=$bdir "$work/use" 2>&1); then
        fail "the $lang program built with $cc against $bdir/libzcow.so: exit $?: $out"
    else
        pass
        n=$((n + 1))
    fi
done
echo "# include/zcow.h: $n compilers of C99 and C++11 built and ran a program with it"
finish
