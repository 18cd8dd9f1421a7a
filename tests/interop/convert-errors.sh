#!/usr/bin/env bash
# convert-errors.sh - bad input to zcow convert: each case must exit
# non-zero with one line on stderr that names the file or the option at
# fault, and leave nothing behind (no destination, no temporary file).
. "$(dirname "$0")/functions.sh"
requires qemu-img
requires_zcow

head -c $((1 << 20)) /dev/urandom >"$work/src.raw"
mkdir "$work/out"

# expect_error LABEL PATTERN DST -- ARGS...: zcow convert ARGS must fail,
# print exactly one line on stderr matching the extended regex PATTERN,
# and leave neither DST nor DST.zcow-tmp-* behind.
expect_error() {
    local label=$1 pattern=$2 dst=$3
    shift 4
    local err rc lines
    err=$(timeout 120 "$ZCOW" convert "$@" 2>&1 >/dev/null)
    rc=$?
    if [ $rc -eq 0 ]; then
        fail "$label: exit 0 (want an error)"
        rm -f "$dst"
        return
    fi
    if [ $rc -ge 124 ]; then
        fail "$label: exit $rc (timeout, crash or signal): $(echo "$err" | head -3 | tr '\n' ' ')"
        return
    fi
    lines=$(printf '%s' "$err" | grep -c '')
    if [ "$lines" -ne 1 ]; then
        fail "$label: $lines lines on stderr (want one): $(echo "$err" | head -4 | tr '\n' '|')"
    elif ! echo "$err" | grep -qE -- "$pattern"; then
        fail "$label: message does not name /$pattern/: '$err'"
    elif ! echo "$err" | grep -q '^zcow: '; then
        fail "$label: message does not start with 'zcow: ': '$err'"
    elif [ -e "$dst" ] && [ ! -d "$dst" ]; then
        fail "$label: '$dst' was created"
    elif [ -n "$(temp_leftovers "$dst")" ]; then
        fail "$label: temporary file left: $(temp_leftovers "$dst")"
    else
        pass
    fi
}

src=$work/src.raw
dst=$work/out/dst.qcow2

# Sources.
expect_error "missing source" "$work/nope.raw" "$dst" -- "$work/nope.raw" "$dst"
mkdir "$work/adir"
expect_error "directory as source" "$work/adir" "$dst" -- "$work/adir" "$dst"
if [ "$(id -u)" -ne 0 ]; then
    cp "$src" "$work/locked.raw" && chmod 000 "$work/locked.raw"
    expect_error "unreadable source" "$work/locked.raw" "$dst" -- "$work/locked.raw" "$dst"
else
    # root reads a mode-000 file; a read that fails is one it cannot bypass.
    # /proc/self/mem has size 0 and fails to read at offset 0.
    echo "# unreadable source (chmod 000): not testable as root"
fi
printf 'QFI\xfb\0\0\0\3garbage' >"$work/fake.qcow2"
expect_error "source that claims to be qcow2 but is not" "$work/fake.qcow2" "$dst" -- -f qcow2 "$work/fake.qcow2" "$dst"

# Destinations.
expect_error "destination in a missing directory" "$work/missing/dst.qcow2" "$work/missing/dst.qcow2" -- \
    "$src" "$work/missing/dst.qcow2"
expect_error "destination is a directory" "$work/out" "$work/out" -- "$src" "$work/out"
if [ "$(id -u)" -ne 0 ]; then
    mkdir "$work/ro" && chmod 555 "$work/ro"
    expect_error "destination in a read-only directory" "$work/ro/dst.qcow2" "$work/ro/dst.qcow2" -- \
        "$src" "$work/ro/dst.qcow2"
fi

# Option values out of range.
expect_error "cluster_size=1000" "cluster_size" "$dst" -- -o cluster_size=1000 "$src" "$dst"
expect_error "cluster_size=4M" "cluster_size" "$dst" -- -o cluster_size=4M "$src" "$dst"
expect_error "cluster_size=2k" "cluster_size" "$dst" -- -o cluster_size=2k "$src" "$dst"
expect_error "cluster_size=abc" "cluster_size" "$dst" -- -o cluster_size=abc "$src" "$dst"
expect_error "compression_type=lz4" "compression_type|lz4" "$dst" -- -o compression_type=lz4 "$src" "$dst"
expect_error "unknown -o option" "preallocation" "$dst" -- -o preallocation=full "$src" "$dst"
expect_error "-j 0" "-j|thread" "$dst" -- -j 0 "$src" "$dst"
expect_error "-j -3" "-j|thread" "$dst" -- -j -3 "$src" "$dst"
expect_error "-j x" "-j|thread" "$dst" -- -j x "$src" "$dst"
expect_error "-l 99" "level|-l" "$dst" -- -l 99 "$src" "$dst"
expect_error "-l 10 with zlib" "level|-l" "$dst" -- -l 10 "$src" "$dst"
expect_error "-l 0 with zstd" "level|-l" "$dst" -- -l 0 -o compression_type=zstd "$src" "$dst"
expect_error "-l 20 with zstd" "level|-l" "$dst" -- -l 20 -o compression_type=zstd "$src" "$dst"
expect_error "-t bogus" "-t|bogus" "$dst" -- -t bogus "$src" "$dst"
expect_error "-T bogus" "-T|bogus" "$dst" -- -T bogus "$src" "$dst"
expect_error "-O vmdk" "vmdk" "$dst" -- -O vmdk "$src" "$dst"
expect_error "-f vmdk" "vmdk" "$dst" -- -f vmdk "$src" "$dst"
expect_error "--write-cache=maybe" "write-cache|maybe" "$dst" -- --write-cache=maybe "$src" "$dst"
expect_error "--drop-pages with O_DIRECT" "drop-pages" "$dst" -- --drop-pages -t none "$src" "$dst"
expect_error "no destination" "destination|usage" "$dst" -- "$src"

# A source larger than the format allows: 4 KiB clusters reach 8 TiB (an
# L1 table of at most 32 MiB, as QEMU limits it).  A sparse 12 TiB file,
# where the file system takes one.
if truncate -s 12T "$work/huge.raw" 2>/dev/null; then
    expect_error "source beyond qcow2's limit" "limit|large|big|size" "$dst" -- \
        -o cluster_size=4096 "$work/huge.raw" "$dst"
    rm -f "$work/huge.raw"
else
    echo "# source beyond the limit: this file system takes no 12 TiB sparse file"
fi

finish
