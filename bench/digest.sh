#!/bin/bash
# What a content digest costs: zcow digest (sha256/64k) of W2, raw and as
# zcow's compressed qcow2, against the usual ways of hashing a disk, and
# the cost of the digest check at the end of a restore.
#
#   bench/digest.sh [--quick] [--runs N] [--workdir DIR] [--zcow PATH]
#                   [--label NAME]
#
#   --quick        a 256 MiB W2, 1 round (figures not for quoting)
#   --runs N       rounds (default 3); each figure is the median of N runs
#   --workdir DIR  inputs (default $ZCOW_BENCH_DIR or /var/tmp/zcow-bench)
#   --zcow PATH    the zcow binary (default build/zcow)
#   --label NAME   results in bench/results/DATE/digest-NAME.md
#
# The page cache is dropped before each command:
#   raw     zcow digest W2.raw
#           sha256sum W2.raw                  (reads every byte, holes too)
#           python3 tests/interop/blkhash.py W2.raw (the reference: one
#                                              thread, holes skipped)
#   qcow2   zcow digest W2.qcow2               (zcow convert's compressed image)
#           nbdcopy -- [ qemu-nbd -r -f qcow2 W2.qcow2 ] - | sha256sum
#                                             (QEMU decompresses, a stream)
#   restore zcow restore DIR OUT.raw           (the point's digest checked)
#           zcow restore --no-verify DIR OUT.raw
#           DIR: a backup directory of one full point, W2.qcow2, whose
#           digest is zcow digest's of it (checked against blkhash.py's of
#           W2.raw first).
# Every digest is compared with the reference's, every restore with W2.

set -u
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
. "$HERE/lib.sh"
. "$HERE/make-inputs.sh"

QUICK=0 RUNS='' LABEL=''
WORK=${ZCOW_BENCH_DIR:-/var/tmp/zcow-bench}
ZCOW=${ZCOW:-$ROOT/build/zcow}
usage() { sed -n '2,29p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --runs) RUNS=${2:?}; shift ;;
        --runs=*) RUNS=${1#*=} ;;
        --workdir) WORK=${2:?}; shift ;;
        --workdir=*) WORK=${1#*=} ;;
        --zcow) ZCOW=${2:?}; shift ;;
        --zcow=*) ZCOW=${1#*=} ;;
        --label) LABEL=${2:?}; shift ;;
        --label=*) LABEL=${1#*=} ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
[ -n "$RUNS" ] || { [ $QUICK = 1 ] && RUNS=1 || RUNS=3; }
case "$RUNS" in ''|*[!0-9]*|0) echo "--runs: a positive number" >&2; exit 2 ;; esac
CMDLINE="bench/digest.sh$([ $QUICK = 1 ] && echo ' --quick') --runs $RUNS${LABEL:+ --label $LABEL}"
if [ $QUICK = 1 ]; then
    W2=w2-256M
    export W2_TREE=${W2_TREE:-/usr/share/doc}
else
    W2=w2-4G
    export W2_TREE=${W2_TREE:-/usr/share}
fi
for t in qemu-img qemu-nbd nbdcopy sha256sum python3 /usr/bin/time mkfs.ext4; do
    command -v "$t" >/dev/null || { echo "missing $t: run scripts/install-deps.sh --bench" >&2; exit 1; }
done
"$ZCOW" digest --help >/dev/null 2>&1 || { echo "no $ZCOW digest (run make)" >&2; exit 1; }
mkdir -p "$WORK" || exit 1
WORK=$(cd "$WORK" && pwd)
DAY=$(date +%Y-%m-%d)
NAME=digest$([ $QUICK = 1 ] && echo -quick)${LABEL:+-$LABEL}
RESULTS=$HERE/results/$DAY
mkdir -p "$RESULTS"
B=$WORK/digest
LOGDIR=$WORK/logs-digest
mkdir -p "$LOGDIR"
RAW=$RESULTS/$NAME.tsv
: >"$RAW"
REPORT=$RESULTS/$NAME.md
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
trap 'rm -rf "$B"' EXIT
trap 'echo "interrupted" >&2; exit 130' INT TERM

make_one "$WORK" "$W2" || { echo "could not make input $W2" >&2; exit 1; }
SRC=$WORK/$W2.raw
rm -rf "$B" && mkdir -p "$B/dir/vda" || exit 1
QC=$B/dir/vda/000001.qcow2
log "zcow convert $SRC (the point's image)"
"$ZCOW" convert -q "$SRC" "$QC" || exit 1
REF=$(python3 "$ROOT/tests/interop/blkhash.py" "$SRC" | cut -d' ' -f1)
[ "$("$ZCOW" digest "$QC" | cut -d' ' -f1)" = "$REF" ] ||
    { echo "zcow digest of $QC is not blkhash.py's of $SRC" >&2; exit 1; }
python3 - "$B/dir" "$(stat -c %s "$SRC")" "$(stat -c %s "$QC")" "$REF" <<'EOF'
import json, sys, time
d, size, stored, ref = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
point = {"number": 1, "time": int(time.time()), "level": "full", "file": "vda/000001.qcow2",
         "virtual-size": size, "stored-bytes": stored, "digest": "sha256/64k:" + ref}
m = {"format": "zcow-backup", "version": 1, "prefix": "zcow-bench000",
     "disks": {"vda": {"bitmap": None, "points": [point]}}}
json.dump(m, open(d + "/zcow-backup.json", "w"), indent=2)
EOF

BAD=0
# digest_run KEY SRC CMD...: CMD prints a digest first; it must be WANT.
digest_run() {
    local key=$1 src=$2 want=$3 r got
    shift 3
    for r in $(seq 1 "$RUNS"); do
        measure_once "$key" "$r" "$src" - 0 "$@"
        got=$(grep -o '^[0-9a-f]\{64\}' "$LOGDIR/$(echo "$key" | tr -c 'A-Za-z0-9._=-' '_').$r.log" | head -n 1)
        [ "$got" = "$want" ] || { warn "$key: run $r printed '$got', not $want"; BAD=$((BAD + 1)); }
    done
}
SHA=$(sha256sum "$SRC" | cut -d' ' -f1)
log "raw"
digest_run zcow-raw "$SRC" "$REF" "$ZCOW" digest "$SRC"
digest_run sha256sum-raw "$SRC" "$SHA" sha256sum "$SRC"
digest_run blkhash.py-raw "$SRC" "$REF" python3 "$ROOT/tests/interop/blkhash.py" "$SRC"
log "qcow2"
digest_run zcow-qcow2 "$QC" "$REF" "$ZCOW" digest "$QC"
digest_run nbdcopy-qcow2 "$QC" "$SHA" bash -c \
    'nbdcopy -- [ qemu-nbd -r -f qcow2 "$1" ] - | sha256sum' - "$QC"
log "restore"
OUT=$B/out.raw
# Alternating which goes first: the first of a pair ran measurably slower
# on a loaded machine, whichever it was.
for r in $(seq 1 "$RUNS"); do
    order="verify no-verify"
    [ $((r % 2)) = 0 ] && order="no-verify verify"
    for v in $order; do
        flag=()
        [ $v = no-verify ] && flag=(--no-verify)
        measure_once "restore-$v" "$r" "$QC" "$OUT" 0 "$ZCOW" restore "${flag[@]}" "$B/dir" "$OUT"
        qemu-img compare -q -f raw -F raw "$SRC" "$OUT" || { warn "restore-$v: run $r differs"; BAD=$((BAD + 1)); }
        rm -f "$OUT"
    done
done

row() { # row LABEL KEY BASE: wall, cpu, rss, and wall and cpu ratios to BASE
    printf '| %s | %s | %s | %s | %s | %s |\n' "$1" "$(fmt_s "$(med "$2" wall)")" \
        "$(fmt_s "$(med "$2" cpu)")" "$(fmt_mib "$(med "$2" rss)" 1024)" \
        "$(ratio "$(med "$2" wall)" "$(med "$3" wall)")" "$(ratio "$(med "$2" cpu)" "$(med "$3" cpu)")"
}
{
    echo "# digest: zcow digest and the restore's digest check, $W2 ($(date -u '+%Y-%m-%d %H:%M UTC'))"
    echo
    echo "\`$CMDLINE\` on $(nproc) CPUs, zcow $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)," \
        "load before $LOAD0, after $(cut -d' ' -f1-3 /proc/loadavg); page cache dropped" \
        "$([ "$DROP_OK" = 1 ] && echo before each command || echo ': NOT (not root)');" \
        "medians of $RUNS. $SRC: $(numfmt --to=iec "$(stat -c %s "$SRC")")B, $(du -h "$SRC" | cut -f1) allocated;" \
        "$QC: $(du -h "$QC" | cut -f1). Outputs checked: $([ $BAD = 0 ] && echo 'every digest and restore right' || echo "$BAD WRONG")."
    echo
    echo "| command | wall s | CPU s | max RSS MiB | wall ÷ first of group | CPU ÷ first of group |"
    echo "|---|---|---|---|---|---|"
    row "zcow digest W2.raw" zcow-raw zcow-raw
    row "sha256sum W2.raw" sha256sum-raw zcow-raw
    row "python3 blkhash.py W2.raw" blkhash.py-raw zcow-raw
    row "zcow digest W2.qcow2" zcow-qcow2 zcow-qcow2
    row "nbdcopy -- [ qemu-nbd -r -f qcow2 W2.qcow2 ] - \\| sha256sum" nbdcopy-qcow2 zcow-qcow2
    row "zcow restore DIR OUT.raw (verified)" restore-verify restore-verify
    row "zcow restore --no-verify DIR OUT.raw" restore-no-verify restore-verify
    echo
    echo "Every run's figures: $NAME.tsv (lib.sh's columns)."
} >"$REPORT"
cat "$REPORT"
[ $BAD = 0 ]
