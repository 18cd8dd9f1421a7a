#!/bin/bash
# nbd.sh - the NBD row of the benchmark: zcow convert from an NBD export
# against qemu-img convert -c from the same export.
#
#   bench/nbd.sh [--runs N] [--zcow PATH] [-j N] [--no-header] INPUT
#
# qemu-nbd serves INPUT (raw, or qcow2 when it is one) read-only on a Unix
# socket in a temporary directory, with --shared=8 so that it allows
# multi-conn; both tools read the same URI (nbd+unix:///?socket=...) and
# write a compressed qcow2 beside INPUT's temporary directory (the work dir:
# $ZCOW_BENCH_DIR or /var/tmp/zcow-bench).  Commands:
#   zcow convert -q [-j N] URI OUT              (O_DIRECT target)
#   qemu-img convert -c -O qcow2 -t none URI OUT
#   qemu-img convert -c -O qcow2 -t writeback URI OUT
#   qemu-img convert -c -O qcow2 -m 16 -W -t none URI OUT
# Each runs --runs times (default 3); the median wall time is shown, and
# the output size of the last run.  Before each run the page cache is
# dropped when possible (root), as bench/run.sh does.
#
# Prints a Markdown table: a header (unless --no-header) and one row.
# Perf figures only: the exit status says whether every command ran, not
# whether zcow was faster.
set -u

RUNS=3
ZCOW=
JOBS=
HEADER=1
while [ $# -gt 0 ]; do
    case $1 in
    --runs) RUNS=$2; shift 2 ;;
    --zcow) ZCOW=$2; shift 2 ;;
    -j) JOBS=$2; shift 2 ;;
    --no-header) HEADER=0; shift ;;
    -h | --help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "nbd.sh: unknown option '$1'" >&2; exit 2 ;;
    *) break ;;
    esac
done
if [ $# -ne 1 ] || [ ! -f "$1" ]; then
    echo "usage: bench/nbd.sh [--runs N] [--zcow PATH] [-j N] [--no-header] INPUT" >&2
    exit 2
fi
INPUT=$1
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ZCOW=${ZCOW:-$ROOT/build/zcow}
for t in qemu-img qemu-nbd /usr/bin/time "$ZCOW"; do
    command -v "$t" >/dev/null || { echo "nbd.sh: missing '$t'" >&2; exit 1; }
done

WORK=${ZCOW_BENCH_DIR:-/var/tmp/zcow-bench}
mkdir -p "$WORK" || exit 1
tmp=$(mktemp -d "$WORK/nbd.XXXXXX") || exit 1
pidf=$tmp/qemu-nbd.pid
stop_server() {
    [ -f "$pidf" ] && kill -9 "$(cat "$pidf")" 2>/dev/null
    rm -rf "$tmp"
}
trap stop_server EXIT
trap 'exit 130' INT TERM

fmt=raw
[ "$(head -c 4 "$INPUT" | od -An -tx1 | tr -d ' ')" = 514649fb ] && fmt=qcow2
qemu-nbd --fork --pid-file="$pidf" -t -r --shared=8 -k "$tmp/nbd.sock" -f "$fmt" "$INPUT" || {
    echo "nbd.sh: qemu-nbd did not start" >&2
    exit 1
}
URI="nbd+unix:///?socket=$tmp/nbd.sock"

drop_caches() {
    sync
    { echo 3 >/proc/sys/vm/drop_caches; } 2>/dev/null || true
}

# run NAME CMD...: RUNS times; sets WALL_<NAME> (median s) and SIZE_<NAME>
# (MiB of the output of the last run).  The command writes $tmp/out.qcow2.
failed=0
run() {
    local name=$1 r t
    shift
    local walls=()
    for r in $(seq "$RUNS"); do
        rm -f "$tmp/out.qcow2"
        drop_caches
        if ! /usr/bin/time -f %e -o "$tmp/time" "$@" >"$tmp/log" 2>&1; then
            echo "nbd.sh: $name failed: $(tail -n 3 "$tmp/log")" >&2
            failed=1
            printf -v "WALL_$name" '%s' "-"
            printf -v "SIZE_$name" '%s' "-"
            return
        fi
        t=$(tail -n 1 "$tmp/time")
        walls+=("$t")
    done
    printf -v "WALL_$name" '%s' "$(printf '%s\n' "${walls[@]}" | sort -n |
        awk '{ v[NR] = $1 } END { printf "%.2f", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }')"
    printf -v "SIZE_$name" '%s' "$(stat -c %s "$tmp/out.qcow2" | awk '{ printf "%.1f", $1 / 1048576 }')"
}

jarg=()
[ -n "$JOBS" ] && jarg=(-j "$JOBS")
run zcow "$ZCOW" convert -q "${jarg[@]}" "$URI" "$tmp/out.qcow2"
run qnone qemu-img convert -c -O qcow2 -t none "$URI" "$tmp/out.qcow2"
run qwb qemu-img convert -c -O qcow2 -t writeback "$URI" "$tmp/out.qcow2"
run qW qemu-img convert -c -O qcow2 -m 16 -W -t none "$URI" "$tmp/out.qcow2"

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a + 0 > 0 && b + 0 > 0) printf "%.1f", a / b; else print "-" }'; }
insize=$(qemu-img info -f "$fmt" --output=json "$INPUT" |
    sed -n 's/^ *"virtual-size": *\([0-9]*\).*/\1/p' | head -n 1 | awk '{ printf "%.0f", $1 / 1048576 }')
label="$(basename "$INPUT") (${insize} MiB, $fmt) via qemu-nbd, Unix socket"
if [ "$HEADER" = 1 ]; then
    echo "| NBD source | zcow${JOBS:+ -j $JOBS} s | zcow MiB | qemu-img -c \`-t none\` s | qemu-img -c \`-t writeback\` s | qemu-img -c \`-m 16 -W -t none\` s | qemu-img MiB | qemu-img \`-t none\` ÷ zcow | qemu-img \`-t writeback\` ÷ zcow |"
    echo "|---|---|---|---|---|---|---|---|---|"
fi
echo "| $label | $WALL_zcow | $SIZE_zcow | $WALL_qnone | $WALL_qwb | $WALL_qW | $SIZE_qnone | $(ratio "$WALL_qnone" "$WALL_zcow") | $(ratio "$WALL_qwb" "$WALL_zcow") |"
exit $failed
