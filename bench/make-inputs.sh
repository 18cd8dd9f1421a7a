#!/bin/bash
# Inputs of the benchmark, made into a work dir and reused when present and
# correct (right size and a stamp file naming the recipe that made them).
#
#   bench/make-inputs.sh DIR NAME...      make the named inputs in DIR
#   bench/make-inputs.sh --need DIR NAME...  print the bytes still to write
#
# Names:
#   w1-SIZE   SIZE (e.g. 1000M, 200M, 1G, 8G) of 0x01 bytes (upstream's
#             "disk filled with ones"); no holes, every byte written
#   w2-SIZE   a raw image of SIZE holding ext4 made with
#             mkfs.ext4 -q -d /usr/share (or W2_TREE) -F FILE SIZE
#   w3-SIZE   SIZE of random bytes (/dev/urandom): incompressible
# Files are DIR/NAME.raw; the stamp is DIR/NAME.raw.ok.

set -u

# bytes SIZE: 1000M -> bytes
bytes() { numfmt --from=iec "$1"; }

recipe() {
    local name=$1 size=${1#*-}
    case "$name" in
        w1-*) echo "ones $size" ;;
        w2-*) echo "ext4 -d ${W2_TREE:-/usr/share} $size" ;;
        w3-*) echo "urandom $size" ;;
        *) return 1 ;;
    esac
}

is_ok() {
    local f=$1/$2.raw
    [ -f "$f" ] && [ -f "$f.ok" ] && [ "$(cat "$f.ok")" = "$(recipe "$2")" ] &&
        [ "$(stat -c %s "$f")" = "$(bytes "${2#*-}")" ]
}

# bytes of disk the input will take (W2: the tree's size, it is sparse)
cost() {
    local name=$1 size=${1#*-}
    case "$name" in
        w2-*) du -sb "${W2_TREE:-/usr/share}" 2>/dev/null | awk '{print int($1 * 1.1)}' ;;
        *) bytes "$size" ;;
    esac
}

make_one() {
    local dir=$1 name=$2 size=${2#*-} f=$1/$2.raw
    if is_ok "$dir" "$name"; then
        echo "input $name: reusing $f" >&2
        return 0
    fi
    rm -f "$f" "$f.ok" "$f.tmp"
    echo "input $name: making $f ($(recipe "$name"))" >&2
    case "$name" in
        w1-*) head -c "$(bytes "$size")" /dev/zero | tr '\0' '\001' > "$f.tmp" ;;
        w2-*) truncate -s "$size" "$f.tmp" &&
              mkfs.ext4 -q -d "${W2_TREE:-/usr/share}" -F "$f.tmp" "$size" ;;
        w3-*) head -c "$(bytes "$size")" /dev/urandom > "$f.tmp" ;;
        *) echo "unknown input $name" >&2; return 1 ;;
    esac || { echo "input $name: failed" >&2; rm -f "$f.tmp"; return 1; }
    [ "$(stat -c %s "$f.tmp")" = "$(bytes "$size")" ] ||
        { echo "input $name: wrong size" >&2; rm -f "$f.tmp"; return 1; }
    sync "$f.tmp" 2>/dev/null || sync
    mv "$f.tmp" "$f" && recipe "$name" > "$f.ok"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    if [ "${1:-}" = --need ]; then
        shift; dir=$1; shift; total=0
        for n in "$@"; do is_ok "$dir" "$n" || total=$((total + $(cost "$n"))); done
        echo "$total"
        exit 0
    fi
    dir=${1:?usage: $0 DIR NAME...}; shift
    mkdir -p "$dir" || exit 1
    for n in "$@"; do make_one "$dir" "$n" || exit 1; done
fi
