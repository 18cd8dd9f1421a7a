#!/usr/bin/env bash
# convert-matrix.sh - zcow convert over cluster sizes, compression types,
# data shapes, thread counts and cache modes; qemu-img judges every image
# (check: no errors, no leaks; compare: identical to the source).
#
# Not the full cross product (336 conversions): every (cluster size,
# compression type, cache mode) triple, every (shape, cluster size) pair
# with the rest rotating, and three more: every value of every dimension,
# and every pair of values of any two dimensions, is covered.
#
# MATRIX=smoke runs two conversions only (-j 4, cache on and off): the
# ThreadSanitizer stage of tests/run.sh uses it.
. "$(dirname "$0")/functions.sh"
requires qemu-img qemu-io python3
requires_zcow

make_sources "$work"
read -r -a shapes <<<"$SHAPES"
sizes=(4096 64k 2M)
types=(zlib zstd)
modes=("-t none" "-t writeback" "--write-cache=off" "-t writeback --drop-pages")
threads=(1 4)

# convert_case SHAPE SIZE TYPE J MODE [EXTRA...]: convert, judge, and check
# what the shape implies about the clusters.
n=0
convert_case() {
    local shape=$1 size=$2 type=$3 j=$4 mode=$5
    shift 5
    n=$((n + 1))
    local src=$work/$shape.raw dst=$work/case$n.qcow2 err
    local label="$shape cluster_size=$size type=$type -j $j $mode $*"
    # shellcheck disable=SC2086
    if ! err=$(timeout 300 "$ZCOW" convert -q -c -O qcow2 -o "cluster_size=$size,compression_type=$type" \
            -j "$j" $mode "$@" "$src" "$dst" 2>&1); then
        fail "$label: zcow convert failed: $(echo "$err" | tail -3 | tr '\n' ' ')"
        return
    fi
    # -t none on a file system without O_DIRECT gives one notice; nothing else.
    if [ -n "$err" ] && ! echo "$err" | grep -q "refuses O_DIRECT"; then
        fail "$label: unexpected output on stderr: $(echo "$err" | head -3 | tr '\n' ' ')"
    fi
    judge "$src" "$dst" "$label" || return
    [ -z "$(temp_leftovers "$dst")" ] || fail "$label: temporary file left beside the image"

    local compressed allocated
    compressed=$(check_json "$dst" compressed-clusters)
    allocated=$(check_json "$dst" allocated-clusters)
    case $shape in
    ones | text | mixed | zeroruns)
        [ "${compressed:-0}" -gt 0 ] || fail "$label: no compressed clusters ($compressed)" ;;
    random)
        [ "${compressed:-1}" -eq 0 ] && [ "${allocated:-0}" -gt 0 ] ||
            fail "$label: random data: $compressed compressed of $allocated clusters (want 0: stored as they are)" ;;
    sparse)
        # Three data islands in 8 MiB: the holes stay unallocated.
        local cs=$size
        case $size in *k) cs=$(( ${size%k} << 10 )) ;; *M) cs=$(( ${size%M} << 20 )) ;; esac
        [ $(( ${allocated:-0} * cs )) -lt $((8 << 20)) ] ||
            fail "$label: holes were allocated ($allocated clusters of $cs bytes)" ;;
    esac
    if [ "$shape" = ones ]; then
        local out
        out=$(qemu-io -f qcow2 -r -c 'read -P 1 0 64k' -c 'read -P 1 4032k 64k' "$dst" 2>&1)
        if [ $? -ne 0 ] || echo "$out" | grep -qi "fail\|error"; then
            fail "$label: qemu-io read -P 1: $(echo "$out" | head -3 | tr '\n' ' ')"
        fi
    fi
    # The header's compression type, as qemu-img reads it (byte 104).
    local got_type
    got_type=$(od -A n -t u1 -j 104 -N 1 "$dst" | tr -d ' ')
    [ "$got_type" = "$([ "$type" = zstd ] && echo 1 || echo 0)" ] ||
        fail "$label: compression type byte is $got_type"
}

if [ "${MATRIX:-full}" = smoke ]; then
    convert_case mixed 64k zlib 4 "-t none"
    convert_case mixed 4096 zstd 4 "--write-cache=off"
    finish
fi

# 1. Every cluster size x type x cache mode (24), shape and -j rotating.
i=0
for size in "${sizes[@]}"; do
    for type in "${types[@]}"; do
        for mode in "${modes[@]}"; do
            convert_case "${shapes[i % 7]}" "$size" "$type" "${threads[(i / 4 + i) % 2]}" "$mode"
            i=$((i + 1))
        done
    done
done

# 2. Every shape x cluster size (21), type, -j and mode rotating.
i=0
for shape in "${shapes[@]}"; do
    for size in "${sizes[@]}"; do
        convert_case "$shape" "$size" "${types[(i / 3 + i) % 2]}" "${threads[i % 2]}" "${modes[(i / 2) % 4]}"
        i=$((i + 1))
    done
done

# The three (shape, mode) pairs 1 and 2 miss: with them every pair of
# values of any two dimensions is covered.
convert_case mixed 64k zstd 4 "-t writeback --drop-pages"
convert_case sparse 4096 zlib 1 "--write-cache=off"
convert_case tail 2M zstd 4 "-t writeback"

# 3. Levels at their ends, and the uncached path through the page cache.
convert_case text 64k zlib 4 "-t none" -l 0
convert_case text 64k zlib 4 "-t none" -l 1
convert_case text 64k zlib 2 "-t none" -l 9
convert_case text 64k zstd 4 "-t none" -l 1
convert_case text 4096 zstd 2 "-t none" -l 19
convert_case mixed 64k zlib 4 "-t writeback --write-cache=off"
convert_case zeroruns 2M zlib 4 "-t none" -T writeback

# 4. Defaults: no -o at all gives 64 KiB clusters, zlib; the summary line.
out=$("$ZCOW" convert "$work/text.raw" "$work/default.qcow2" 2>&1)
if [ $? -eq 0 ]; then
    judge "$work/text.raw" "$work/default.qcow2" "defaults"
    cs=$(info_field "$work/default.qcow2" cluster-size)
    ct=$(info_field "$work/default.qcow2" compression-type)
    [ "$cs" = 65536 ] && [ "$ct" = zlib ] || fail "defaults: cluster size $cs, type $ct (want 65536, zlib)"
    # One summary line: bytes in, bytes out, ratio, time, rate.
    [ "$(echo "$out" | wc -l)" -eq 1 ] && echo "$out" | grep -q "in, .* out, ratio .* s, .*/s" ||
        fail "defaults: summary line: '$out'"
else
    fail "defaults: zcow convert failed: $out"
fi

# -q: nothing on stdout.  --progress-fd: N/100 lines ending at 100/100.
out=$("$ZCOW" convert -q --progress-fd=3 "$work/mixed.raw" "$work/progress.qcow2" 3>"$work/progress.txt" 2>&1)
if [ $? -eq 0 ]; then
    [ -z "$out" ] || fail "-q: output '$out'"
    last=$(tail -n 1 "$work/progress.txt")
    bad=$(grep -cvE '^[0-9]+/100$' "$work/progress.txt")
    [ "$last" = "100/100" ] && [ "$bad" -eq 0 ] ||
        fail "--progress-fd: last line '$last', $bad malformed lines"
    sort -n -c -t/ -k1,1 "$work/progress.txt" 2>/dev/null || fail "--progress-fd: not increasing"
    judge "$work/mixed.raw" "$work/progress.qcow2" "--progress-fd"
else
    fail "--progress-fd: zcow convert failed: $out"
fi

# -p on a pipe: qemu-img's style, and the image is still right.
if out=$("$ZCOW" convert -p -f raw -O qcow2 -c "$work/ones.raw" "$work/p.qcow2" 2>&1) &&
    echo "$out" | grep -q "100.00/100%"; then
    judge "$work/ones.raw" "$work/p.qcow2" "-p"
else
    fail "-p: $(echo "$out" | tail -2 | tr '\r\n' '  ')"
fi

# A file system that refuses O_DIRECT (tmpfs before Linux 6.6): one
# notice, a good image.  Where tmpfs takes O_DIRECT, no notice at all.
shm=$(mktemp -d /dev/shm/zcow-matrix.XXXXXX 2>/dev/null) && cleanup_fn rm -rf "$shm"
if [ -n "${shm:-}" ]; then
    notices=1
    dd if=/dev/zero of="$shm/probe" bs=4096 count=1 oflag=direct status=none 2>/dev/null && notices=0
    err=$("$ZCOW" convert -q -t none "$work/text.raw" "$shm/t.qcow2" 2>&1)
    if [ $? -eq 0 ]; then
        [ "$(echo "$err" | grep -c "O_DIRECT")" -eq "$notices" ] ||
            fail "$(stat -f -c %T "$shm"): want $notices notice(s) about O_DIRECT on stderr, got '$err'"
        judge "$work/text.raw" "$shm/t.qcow2" "-t none on $(stat -f -c %T "$shm")"
    else
        fail "zcow convert -t none to $shm failed: $err"
    fi
fi

finish
