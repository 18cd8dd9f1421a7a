#!/bin/bash
# zcow verify of W2's backup against restoring it, and against checking
# the same chain with qemu-img, in the same run.  See bench/README.md,
# "Verifying a backup".
#
#   bench/verify.sh [--quick] [--runs N] [--incs N] [--workdir DIR]
#                   [--zcow PATH] [--label NAME] [--no-qemu]
#
#   --quick        smoke test: a 256 MiB disk, 1 round (figures not for quoting)
#   --runs N       rounds (default 3); each figure is the median of N runs
#   --incs N       incrementals after the full (default 3)
#   --workdir DIR  inputs and outputs (default $ZCOW_BENCH_DIR or
#                  /var/tmp/zcow-bench); the W2 input is reused when present
#   --zcow PATH    the zcow binary (default build/zcow)
#   --label NAME   results in bench/results/DATE/verify-NAME.md
#   --no-qemu      verify and restore only (the qemu-img rows take minutes)
#
# The backup: bench/w2-backup.sh - zcow backup --qmp of a TCG QEMU whose
# disk is a qcow2 of W2: a full, then INCS incrementals, each after 1% of
# the disk is rewritten through the device.
#
# Each round, the page cache dropped before each command:
#   verify        zcow verify DIR                 every point
#   restore       zcow restore DIR OUT.raw        the latest point
#   qemu-all      qemu-img check of every image, then every point
#                 qemu-img convert -O raw to a file, sha256sum of it
#                 (the same checks by hand: structure, and the content of
#                 every point read and hashed)
#   qemu-latest   qemu-img check of every image, then the latest point
#                 converted and hashed
# The target (issue 11): verify takes at most 1.5x the restore.  Every
# verify must say all good; every restore equals the disk (qemu-img
# compare).

set -u
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
. "$HERE/lib.sh"
. "$HERE/make-inputs.sh"
. "$HERE/w2-backup.sh"

QUICK=0 RUNS='' LABEL='' INCS=3 QEMU=1
WORK=${ZCOW_BENCH_DIR:-/var/tmp/zcow-bench}
ZCOW=${ZCOW:-$ROOT/build/zcow}
usage() { sed -n '2,35p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --runs) RUNS=${2:?}; shift ;;
        --runs=*) RUNS=${1#*=} ;;
        --incs) INCS=${2:?}; shift ;;
        --incs=*) INCS=${1#*=} ;;
        --workdir) WORK=${2:?}; shift ;;
        --workdir=*) WORK=${1#*=} ;;
        --zcow) ZCOW=${2:?}; shift ;;
        --zcow=*) ZCOW=${1#*=} ;;
        --label) LABEL=${2:?}; shift ;;
        --label=*) LABEL=${1#*=} ;;
        --no-qemu) QEMU=0 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
[ -n "$RUNS" ] || { [ $QUICK = 1 ] && RUNS=1 || RUNS=3; }
case "$RUNS" in ''|*[!0-9]*|0) echo "--runs: a positive number" >&2; exit 2 ;; esac
case "$INCS" in ''|*[!0-9]*) echo "--incs: a number" >&2; exit 2 ;; esac
CMDLINE="bench/verify.sh$([ $QUICK = 1 ] && echo ' --quick') --runs $RUNS --incs $INCS${LABEL:+ --label $LABEL}$([ $QEMU = 0 ] && echo ' --no-qemu')"
if [ $QUICK = 1 ]; then
    W2=w2-256M
    export W2_TREE=${W2_TREE:-/usr/share/doc}
else
    W2=w2-4G
    export W2_TREE=${W2_TREE:-/usr/share}
fi
LIMIT=1200

for t in qemu-system-x86_64 qemu-img python3 sha256sum /usr/bin/time timeout tar split numfmt mkfs.ext4; do
    command -v "$t" >/dev/null || { echo "missing $t: run scripts/install-deps.sh --bench" >&2; exit 1; }
done
if ! [ -x "$ZCOW" ] || ! "$ZCOW" verify --help >/dev/null 2>&1; then
    echo "no $ZCOW verify (run make; backups need NBD)" >&2
    exit 1
fi
mkdir -p "$WORK" || exit 1
WORK=$(cd "$WORK" && pwd)
DAY=$(date +%Y-%m-%d)
NAME=verify$([ $QUICK = 1 ] && echo -quick)${LABEL:+-$LABEL}
RESULTS=$HERE/results/$DAY
mkdir -p "$RESULTS"
B=$WORK/verify # this benchmark's files; removed at the end
LOGDIR=$WORK/logs-verify
mkdir -p "$LOGDIR"
RAW=$RESULTS/$NAME.tsv
: >"$RAW"
REPORT=$RESULTS/$NAME.md
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)

# free space: W2 if still to make, its qcow2, DIR, a raw (each about W2's
# allocated size) and 1 GiB slack
need=$(bash "$HERE/make-inputs.sh" --need "$WORK" "$W2")
alloc=$(cost "$W2")
need=$((need + 4 * alloc + (1 << 30)))
avail=$(df -B1 --output=avail "$WORK" | tail -n 1 | tr -d ' ')
if [ "$avail" -lt "$need" ]; then
    echo "too little free disk space in $WORK: need $(numfmt --to=iec "$need")B," \
        "have $(numfmt --to=iec "$avail")B; use --workdir or --quick" >&2
    exit 1
fi
make_one "$WORK" "$W2" || { echo "could not make input $W2" >&2; exit 1; }
SRC=$WORK/$W2.raw
SIZE=$(stat -c %s "$SRC")

trap 'w2b_stop "$W2B_QPID"; rm -rf "$B"' EXIT
trap 'echo "interrupted" >&2; exit 130' INT TERM
rm -rf "$B"
mkdir -p "$B" || exit 1
w2_backup "$B" "$INCS" || exit 1
DIR=$W2B_DIR
DISK=$B/disk.qcow2
LATEST=$(ls "$DIR"/vda/*.qcow2 | tail -n 1)
NPOINTS=$((INCS + 1))

# The qemu-img way, as one command: check every image, then convert each
# point (every one, or the latest) to a raw file and hash it.
QEMU_WAY='set -e
dir=$1 tmp=$2 which=$3
for f in "$dir"/vda/*.qcow2; do qemu-img check -q "$f"; done
pts=$(ls "$dir"/vda/*.qcow2)
[ "$which" = latest ] && pts=$(echo "$pts" | tail -n 1)
for f in $pts; do
    qemu-img convert -O raw "$f" "$tmp"
    echo "$(basename "$f") $(sha256sum <"$tmp" | cut -d" " -f1)"
    rm -f "$tmp"
done'

# ---------------------------------------------------------------- runs
CHECKS=() BAD=0
ok_line() { # ok_line LABEL OK: a correctness line
    CHECKS+=("$1")
    [ "$2" = 0 ] || BAD=$((BAD + 1))
}
lastlog() { ls -t "$LOGDIR/$1"_.*.log 2>/dev/null | head -n 1; } # (measure_once names them KEY_.RUN.log)

log "$RUNS round(s), $NPOINTS points"
for r in $(seq 1 "$RUNS"); do
    if measure_once verify "$r" "$LATEST" - $LIMIT "$ZCOW" verify "$DIR"; then
        l=$(lastlog verify)
        n=$(grep -c ' ok$' "$l")
        ok_line "run $r, zcow verify: $n points ok, \"$(tail -n 1 "$l")\"" $((n != NPOINTS))
    else
        ok_line "run $r, zcow verify failed: $(tail -n 2 "$(lastlog verify)" | tr '\n' ' ')" 1
    fi
    if measure_once restore "$r" "$LATEST" "$B/out.raw" $LIMIT "$ZCOW" restore "$DIR" "$B/out.raw"; then
        qemu-img compare -q -f qcow2 -F raw "$DISK" "$B/out.raw" >>"$LOGDIR/compare.log" 2>&1
        m=$?
        ok_line "run $r, zcow restore of the latest point: qemu-img compare with the disk exit $m$([ $m = 0 ] && echo ' (identical)')" $m
    fi
    rm -f "$B/out.raw"
    for w in all latest; do
        [ $QEMU = 1 ] || continue
        measure_once qemu-$w "$r" "$LATEST" - $LIMIT bash -c "$QEMU_WAY" _ "$DIR" "$B/tmp.raw" $w
        ok_line "run $r, the qemu-img way ($w): exit $M_RC, $(grep -Ec "^[0-9]{6}\.qcow2 [0-9a-f]{64}$" "$(lastlog qemu-$w)") points hashed" $M_RC
        rm -f "$B/tmp.raw"
    done
done
LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- report
each() { awk -F'\t' -v k="$1" '$1 == k && $10 == 0 {printf "%s%s", (n++ ? ", " : ""), $3}' "$RAW"; }
label() {
    case $1 in
        verify) echo "\`zcow verify DIR\`: all $NPOINTS points" ;;
        restore) echo '`zcow restore DIR OUT.raw`: the latest point (hashing what it writes and comparing the digest with the recorded one, as restores do by default)' ;;
        qemu-all) echo "qemu-img way, all $NPOINTS points: \`qemu-img check\` of each image, then \`qemu-img convert -O raw POINT T.raw && sha256sum T.raw\` of each point" ;;
        qemu-latest) echo 'qemu-img way, the latest point: `qemu-img check` of each image, then `qemu-img convert -O raw LATEST T.raw && sha256sum T.raw`' ;;
    esac
}
V=$(med verify wall) R=$(med restore wall)
{
    echo "# zcow verify of W2's backup, $DAY $(date -u +%H:%M) UTC"
    echo
    echo "- machine: $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.0f GiB RAM", $2 / 1048576}' /proc/meminfo), kernel $(uname -r)"
    echo "- work dir: $WORK on $(df --output=source "$WORK" | tail -n 1)"
    echo "- $(qemu-img --version | head -n 1)"
    echo "- zcow: $ZCOW, git commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null) of the tree the script ran from"
    echo "- load average at start: $LOAD0; at end: $LOAD1 (2 CPUs shared with other work: the figures move with it)"
    echo "- command: $CMDLINE"
    echo "- caches dropped before each run: $([ "$DROP_OK" = 1 ] && echo yes || echo NO)"
    echo "- the backup (bench/w2-backup.sh): W2 ($W2: ext4 made with mkfs.ext4 -d $W2_TREE, $(numfmt --to=iec "$SIZE")B virtual) as the disk of a TCG QEMU (cache.direct=on); \`zcow backup --qmp\` full, then $INCS times $W2B_NW writes of 64 KiB (1% of the disk) through the device and \`zcow backup --qmp\` incremental: $NPOINTS points, $(du -sh "$DIR/vda" | cut -f1) in DIR ($(cd "$DIR/vda" && for f in *.qcow2; do printf '%s %s, ' "$f" "$(numfmt --to=iec "$(stat -c %s "$f")")B"; done | sed 's/, $//'))"
    echo "- raw per-run figures: $NAME.tsv (columns of bench/lib.sh: key run wall user sys rss_kib out_bytes src_pages out_pages rc wall_fine)"
    echo
    echo "### Verifying W2's backup: zcow verify against zcow restore and the qemu-img way"
    echo
    echo "| command | wall s | wall s, each run | CPU s | peak RSS MiB | time ÷ zcow restore | time ÷ zcow verify |"
    echo "|---|---|---|---|---|---|---|"
    for k in verify restore qemu-all qemu-latest; do
        w=$(med $k wall)
        [ -n "$w" ] || continue
        echo "| $(label $k) | $(fmt_s "$w") | $(each $k) | $(fmt_s "$(med $k cpu)") | $(fmt_mib "$(med $k rss)" 1024) | $(ratio "$w" "$R" 3) | $(ratio "$w" "$V" 3) |"
    done
    echo
    echo "Medians of $RUNS round(s); in each round the $([ $QEMU = 1 ] && echo four || echo two) commands ran one after the other in this order, the page cache dropped before each. Wall and CPU (user + sys): the whole command$([ $QEMU = 1 ] && echo "; for the qemu-img way the shell script running every qemu-img and sha256sum (\`bash -c\`, below), the children's CPU included"). zcow verify checks every image's structure (as zcow check), the chain's links and the manifest, reads every cluster each image holds once (compressed ones decompressed, exactly) and recomputes every point's digest; zcow restore reads the latest point's chain once, writes a sparse raw file through O_DIRECT and checks the digest of what it wrote.$([ $QEMU = 1 ] && echo " The qemu-img way reads each point's whole chain again for each point.")"
    echo
    if [ $QEMU = 1 ]; then
        echo "The qemu-img way, as run (\`bash -c SCRIPT _ DIR T.raw all|latest\`):"
        echo
        echo '```sh'
        echo "$QEMU_WAY"
        echo '```'
        echo
    fi
    echo "### Target (issue 11, point 2)"
    echo
    if le "$V" "$(awk -v r="$R" 'BEGIN{print 1.5 * r}')"; then
        echo "- PASS: zcow verify of all $NPOINTS points $(fmt_s "$V") s ≤ 1.5 × zcow restore of the latest point $(fmt_s "$R") s (ratio $(ratio "$V" "$R" 3))"
    else
        echo "- FAIL: zcow verify of all $NPOINTS points $(fmt_s "$V") s ≤ 1.5 × zcow restore of the latest point $(fmt_s "$R") s (ratio $(ratio "$V" "$R" 3))"
    fi
    echo
    echo "Correctness, every run:"
    echo
    for c in "${CHECKS[@]}"; do echo "- $c"; done
    echo
    echo "$([ $BAD = 0 ] && echo "Every verify said all good; every restore equals the disk." || echo "**$BAD check(s) failed.**")"
} >"$REPORT"
log "report: $REPORT"
cat "$REPORT"
