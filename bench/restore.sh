#!/bin/bash
# Restores of a backup point to each kind of destination: zcow restore
# against qemu-img convert doing the same, in the same run.  See
# bench/README.md, "Restores to each destination".
#
#   bench/restore.sh [--quick] [--runs N] [--workdir DIR] [--zcow PATH]
#                    [--label NAME]
#
#   --quick        smoke test: a 256 MiB disk, 1 round (figures not for quoting)
#   --runs N       rounds (default 3); each figure is the median of N runs
#   --workdir DIR  inputs and outputs (default $ZCOW_BENCH_DIR or
#                  /var/tmp/zcow-bench); the W2 input is reused when present
#   --zcow PATH    the zcow binary (default build/zcow)
#   --label NAME   results in bench/results/DATE/restore-NAME.md
#
# The backup (bench/w2-backup.sh): a QEMU (TCG, no guest OS) runs with a
# qcow2 of W2 as its disk; zcow backup --qmp takes a full, 1% of the disk is
# rewritten through the device (64 KiB writes spread evenly, data from a
# tar of W2's tree, as bench/backup.sh does), and zcow backup takes an
# incremental: point 2, a chain of two compressed images
# (DIR/vda/000001.qcow2 <- 000002.qcow2).  QEMU is stopped; its disk is then
# what every restore must give.
#
# Each round restores point 2, the page cache dropped before each command:
#   raw    zcow restore DIR OUT.raw            qemu-img convert -O raw TOP OUT.raw
#                                              (and -T none -t none)
#   qcow2  zcow restore -O qcow2 DIR OUT.qcow2 qemu-img convert -O qcow2 TOP OUT.qcow2
#          (uncompressed)                      (and -T none -t none)
#   NBD    zcow restore DIR nbd+unix://...     qemu-img convert -n -O raw TOP nbd+unix://...
#          into a fresh qcow2 exported by qemu-nbd -f qcow2 --shared=4 (a new
#          VM's disk; multi-conn), started before each run and stopped after
#          it; its CPU during the run is recorded too.
# Every output is compared with the disk (qemu-img compare) and the qcow2
# ones checked (qemu-img check), every run.

set -u
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
. "$HERE/lib.sh"
. "$HERE/make-inputs.sh"
. "$HERE/w2-backup.sh"

QUICK=0 RUNS='' LABEL=''
WORK=${ZCOW_BENCH_DIR:-/var/tmp/zcow-bench}
ZCOW=${ZCOW:-$ROOT/build/zcow}
usage() { sed -n '2,32p' "$0" | sed 's/^# \{0,1\}//'; }
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
CMDLINE="bench/restore.sh$([ $QUICK = 1 ] && echo ' --quick') --runs $RUNS${LABEL:+ --label $LABEL}"
if [ $QUICK = 1 ]; then
    W2=w2-256M
    export W2_TREE=${W2_TREE:-/usr/share/doc}
else
    W2=w2-4G
    export W2_TREE=${W2_TREE:-/usr/share}
fi
LIMIT=600

for t in qemu-system-x86_64 qemu-img qemu-nbd python3 /usr/bin/time timeout tar split numfmt mkfs.ext4; do
    command -v "$t" >/dev/null || { echo "missing $t: run scripts/install-deps.sh --bench" >&2; exit 1; }
done
if ! [ -x "$ZCOW" ] || ! "$ZCOW" restore --help 2>/dev/null | grep -q -- -O; then
    echo "no $ZCOW restore with -O (run make)" >&2
    exit 1
fi
mkdir -p "$WORK" || exit 1
WORK=$(cd "$WORK" && pwd)
DAY=$(date +%Y-%m-%d)
NAME=restore$([ $QUICK = 1 ] && echo -quick)${LABEL:+-$LABEL}
RESULTS=$HERE/results/$DAY
mkdir -p "$RESULTS"
B=$WORK/restore # this benchmark's files; removed at the end
LOGDIR=$WORK/logs-restore
mkdir -p "$LOGDIR"
RAW=$RESULTS/$NAME.tsv
: >"$RAW"
REPORT=$RESULTS/$NAME.md
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)

# free space: W2 if still to make, its qcow2, DIR, a raw, a qcow2 and an
# NBD target (each about W2's allocated size) and 1 GiB slack
need=$(bash "$HERE/make-inputs.sh" --need "$WORK" "$W2")
alloc=$(cost "$W2")
need=$((need + 5 * alloc + (1 << 30)))
avail=$(df -B1 --output=avail "$WORK" | tail -n 1 | tr -d ' ')
if [ "$avail" -lt "$need" ]; then
    echo "too little free disk space in $WORK: need $(numfmt --to=iec "$need")B," \
        "have $(numfmt --to=iec "$avail")B; use --workdir or --quick" >&2
    exit 1
fi
make_one "$WORK" "$W2" || { echo "could not make input $W2" >&2; exit 1; }
SRC=$WORK/$W2.raw
SIZE=$(stat -c %s "$SRC")

# ---------------------------------------------------------------- the backup
DISK=$B/disk.qcow2
NPID=
stop_pid() { # stop_pid PID: SIGTERM (qemu-nbd flushes), then -9 after 10 s
    [ -n "$1" ] || return 0
    kill "$1" 2>/dev/null
    for _ in $(seq 100); do [ -d "/proc/$1" ] || return 0; sleep 0.1; done
    kill -9 "$1" 2>/dev/null
}
cleanup() {
    w2b_stop "$W2B_QPID"
    stop_pid "$NPID"
    rm -rf "$B"
}
trap cleanup EXIT
trap 'echo "interrupted" >&2; exit 130' INT TERM

rm -rf "$B"
mkdir -p "$B" || exit 1
w2_backup "$B" 1 || exit 1
DIR=$W2B_DIR NW=$W2B_NW
TOP=$DIR/vda/000002.qcow2
[ -f "$TOP" ] || { echo "no point 2 in $DIR" >&2; exit 1; }
log "point 2: $(du -sh "$DIR/vda" | cut -f1) in DIR; the disk: $(du -sh "$DISK" | cut -f1)"

# ---------------------------------------------------------------- runs
CHECKS=() BAD=0
# verify LABEL IMG FMT: IMG equals the disk; qcow2 checks clean
verify() {
    local m c=0
    qemu-img compare -q -f qcow2 -F "$3" "$DISK" "$2" >>"$LOGDIR/verify.log" 2>&1
    m=$?
    [ "$3" = qcow2 ] && { qemu-img check -q "$2" >>"$LOGDIR/verify.log" 2>&1; c=$?; }
    CHECKS+=("$1: qemu-img compare exit $m$([ $m = 0 ] && echo ' (identical)')$([ "$3" = qcow2 ] && echo ", qemu-img check exit $c$([ $c = 0 ] && echo ' (clean)')")")
    [ $m = 0 ] && [ $c = 0 ] || BAD=$((BAD + 1))
}

# file_run KEY RUN OUT FMT CMD...: one run into a file
file_run() {
    local key=$1 r=$2 out=$3 fmt=$4
    shift 4
    measure_once "$key" "$r" "$TOP" "$out" $LIMIT "$@" && verify "run $r, $key" "$out" "$fmt"
    rm -f "$out"
}

# nbd_run KEY RUN CMD...: one run into a fresh qcow2 exported by qemu-nbd
# (the URI is $URI); the server's CPU during the run goes to NBD_CPU.
declare -A NBD_CPU
CLK=$(getconf CLK_TCK)
T=$B/target.qcow2
URI="nbd+unix:///?socket=$B/nbd.sock"
nbd_run() {
    local key=$1 r=$2 t0 t1
    shift 2
    rm -f "$T"
    qemu-img create -q -f qcow2 "$T" "$SIZE" || return 1
    qemu-nbd --fork --pid-file="$B/nbd.pid" -t --shared=4 -k "$B/nbd.sock" -f qcow2 "$T" || return 1
    NPID=$(cat "$B/nbd.pid")
    t0=$(awk '{print $14 + $15}' "/proc/$NPID/stat")
    measure_once "$key" "$r" "$TOP" - $LIMIT "$@"
    local rc=$?
    t1=$(awk '{print $14 + $15}' "/proc/$NPID/stat")
    NBD_CPU[$key]+="$(awk -v a="$t0" -v b="$t1" -v c="$CLK" 'BEGIN{printf "%.2f", (b - a) / c}') "
    stop_pid "$NPID"
    NPID=
    [ $rc = 0 ] && verify "run $r, $key" "$T" qcow2
    rm -f "$T"
}

log "$RUNS round(s)"
for r in $(seq 1 "$RUNS"); do
    file_run raw.zcow "$r" "$B/out.raw" raw "$ZCOW" restore "$DIR" "$B/out.raw"
    file_run raw.qemu "$r" "$B/out.raw" raw qemu-img convert -O raw "$TOP" "$B/out.raw"
    file_run raw.qemunone "$r" "$B/out.raw" raw qemu-img convert -O raw -T none -t none "$TOP" "$B/out.raw"
    file_run qcow2.zcow "$r" "$B/out.qcow2" qcow2 "$ZCOW" restore -O qcow2 "$DIR" "$B/out.qcow2"
    file_run qcow2.qemu "$r" "$B/out.qcow2" qcow2 qemu-img convert -O qcow2 "$TOP" "$B/out.qcow2"
    file_run qcow2.qemunone "$r" "$B/out.qcow2" qcow2 qemu-img convert -O qcow2 -T none -t none "$TOP" "$B/out.qcow2"
    nbd_run nbd.zcow "$r" "$ZCOW" restore "$DIR" "$URI"
    nbd_run nbd.qemu "$r" qemu-img convert -n -O raw "$TOP" "$URI"
done
LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- report
each() { awk -F'\t' -v k="$1" '$1 == k && $10 == 0 {printf "%s%s", (n++ ? ", " : ""), $3}' "$RAW"; }
medlist() { echo "$1" | tr ' ' '\n' | grep . | sort -n | awk '{a[n++] = $1} END {if (n) print (n % 2) ? a[int(n/2)] : (a[n/2-1] + a[n/2]) / 2}'; }
label() {
    case $1 in
        raw.zcow) echo '`zcow restore DIR OUT.raw`' ;;
        raw.qemu) echo '`qemu-img convert -O raw TOP OUT.raw`' ;;
        raw.qemunone) echo '`qemu-img convert -O raw -T none -t none TOP OUT.raw`' ;;
        qcow2.zcow) echo '`zcow restore -O qcow2 DIR OUT.qcow2` (uncompressed)' ;;
        qcow2.qemu) echo '`qemu-img convert -O qcow2 TOP OUT.qcow2`' ;;
        qcow2.qemunone) echo '`qemu-img convert -O qcow2 -T none -t none TOP OUT.qcow2`' ;;
        nbd.zcow) echo '`zcow restore DIR nbd+unix:///?socket=S`' ;;
        nbd.qemu) echo '`qemu-img convert -n -O raw TOP nbd+unix:///?socket=S`' ;;
    esac
}
{
    echo "# zcow restore to each destination, $DAY $(date -u +%H:%M) UTC"
    echo
    echo "- machine: $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.0f GiB RAM", $2 / 1048576}' /proc/meminfo), kernel $(uname -r)"
    echo "- work dir: $WORK on $(df --output=source "$WORK" | tail -n 1)"
    echo "- $(qemu-img --version | head -n 1)"
    echo "- zcow: $ZCOW, git commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)"
    echo "- load average at start: $LOAD0; at end: $LOAD1 (2 CPUs shared with other work: the figures move with it)"
    echo "- command: $CMDLINE"
    echo "- caches dropped before each run: $([ "$DROP_OK" = 1 ] && echo yes || echo NO)"
    echo "- the backup: W2 ($W2: ext4 made with mkfs.ext4 -d $W2_TREE, $(numfmt --to=iec "$SIZE")B virtual) as the disk of a TCG QEMU (cache.direct=on), \`zcow backup --qmp\` full, then $NW writes of 64 KiB (1% of the disk) through the device, then \`zcow backup --qmp\` incremental: point 2, TOP = DIR/vda/000002.qcow2 over 000001.qcow2, $(du -sh "$DIR/vda" | cut -f1) in DIR"
    echo "- NBD target: \`qemu-img create -f qcow2 T $SIZE\`, \`qemu-nbd --fork -t --shared=4 -k S -f qcow2 T\` (multi-conn, cache writeback), fresh before each run, stopped (SIGTERM) after it"
    echo "- raw per-run figures: $NAME.tsv (columns of bench/lib.sh: key run wall user sys rss_kib out_bytes src_pages out_pages rc wall_fine)"
    echo
    echo "### Restore of point 2 of W2's backup: zcow restore against qemu-img convert"
    echo
    echo "| destination | command | wall s | wall s, each run | CPU s (client) | qemu-nbd CPU s | peak RSS MiB | output MiB | time ÷ qemu-img (default cache) | time ÷ qemu-img -T none -t none |"
    echo "|---|---|---|---|---|---|---|---|---|---|"
    for dest in raw qcow2 nbd; do
        q=$(med $dest.qemu wall) qn=$(med $dest.qemunone wall)
        for k in $dest.zcow $dest.qemu $dest.qemunone; do
            w=$(med $k wall)
            [ -n "$w" ] || continue
            n=-
            [ $dest = nbd ] && n=$(fmt_s "$(medlist "${NBD_CPU[$k]:-}")")
            # (not med's: awk prints 4 GiB as 4.29497e+09)
            o=$(awk -F'\t' -v k=$k '$1 == k && $10 == 0 {printf "%.0f", $7 / 1048576; exit}' "$RAW")
            [ $dest = nbd ] && o=-
            echo "| $dest | $(label $k) | $(fmt_s "$w") | $(each $k) | $(fmt_s "$(med $k cpu)") | $n | $(fmt_mib "$(med $k rss)" 1024) | $o | $(ratio "$w" "$q" 3) | $([ -n "$qn" ] && ratio "$w" "$qn" 3 || echo -) |"
        done
    done
    echo
    echo "Medians of $RUNS round(s); in each round the eight commands ran one after the other in this order, the page cache dropped before each. Wall: the whole command (zcow: opening DIR's manifest, the chain, the destination, the copy, the commit: fsync and rename, or the export's flush). CPU: the client's user + sys; for NBD, the qemu-nbd process's CPU during the run is in its own column (it writes the qcow2). Output: the file's size (raw: apparent size; its allocation follows the data)."
    echo
    echo "Durability differs: zcow writes through O_DIRECT and ends with fsync and a rename (a file) or an NBD flush (an export); qemu-img convert's default target cache is \\`unsafe\\`: it never flushes, so the data may still be in the page cache when it exits (and over NBD it sends no flush: qemu-nbd flushes when stopped, after the timing). \\`-T none -t none\\` is qemu-img with O_DIRECT and flushes, zcow's own settings."
    echo
    echo "Correctness, every run:"
    echo
    for c in "${CHECKS[@]}"; do echo "- $c"; done
    echo
    echo "$([ $BAD = 0 ] && echo "All outputs equal the disk." || echo "**$BAD output(s) differ from the disk or do not check clean.**")"
} >"$REPORT"
log "report: $REPORT"
cat "$REPORT"
