#!/bin/bash
# Pruning a backup chain: zcow prune (and zcow merge) against the same work
# done with qemu-img, in the same run.  See bench/README.md, "Pruning a
# backup chain".
#
#   bench/prune.sh [--quick] [--runs N] [--workdir DIR] [--zcow PATH]
#                  [--label NAME]
#
#   --quick        smoke test: a 256 MiB disk, 1 round (figures not for quoting)
#   --runs N       rounds (default 3); each figure is the median of N runs
#   --workdir DIR  inputs and outputs (default $ZCOW_BENCH_DIR or
#                  /var/tmp/zcow-bench); the W2 input is reused when present
#   --zcow PATH    the zcow binary (default build/zcow)
#   --label NAME   results file results/DATE/HOST-prune-NAME.md
#
# The chain: a backup directory M made by zcow backup --qmp of a running
# TCG QEMU whose disk is a qcow2 of W2: point 1 a full, point 2 an
# incremental after 1% of the disk was rewritten through the device (as
# bench/backup.sh does).  Each round, the page cache dropped before each
# measured command (the copies it works on are made before):
#   prune        zcow prune --keep 1 D        (D a copy of M: point 2 made a
#                                              full, point 1 removed)
#   merge        zcow merge --point 2 M OUT   (the same copy and digest
#                                              check, no structural check,
#                                              manifest or removal)
#   merge-nv     zcow merge --no-verify ...   (the copy alone)
#   q-convert    qemu-img convert -c -O qcow2 M/vda/000002.qcow2 OUT
#                                             (the chain read and
#                                              recompressed in one pass)
#   q-convert-direct   the same with -T none -t none (O_DIRECT both sides)
#   q-commit     qemu-img commit of a copy of the chain (point 2's clusters
#                written into point 1, uncompressed), then qemu-img
#                convert -c -O qcow2 of point 1 to OUT: the issue's recipe
# Every output: qemu-img check, and qemu-img compare with M's point 2.

set -u
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
. "$HERE/lib.sh"
. "$HERE/make-inputs.sh"
. "$HERE/w2-backup.sh"

QUICK=0 RUNS='' LABEL=''
LOAD0=$(cut -d" " -f1-3 /proc/loadavg)
WORK=${ZCOW_BENCH_DIR:-/var/tmp/zcow-bench}
ZCOW=${ZCOW:-$ROOT/build/zcow}
usage() { sed -n '2,31p' "$0" | sed 's/^# \{0,1\}//'; }
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
if [ $QUICK = 1 ]; then
    W2=w2-256M
    export W2_TREE=${W2_TREE:-/usr/share/doc}
else
    W2=w2-4G
    export W2_TREE=${W2_TREE:-/usr/share}
fi
LIMIT=1200

for t in qemu-system-x86_64 qemu-img python3 fincore /usr/bin/time timeout tar split numfmt mkfs.ext4; do
    command -v "$t" >/dev/null || { echo "missing $t: run scripts/install-deps.sh --bench" >&2; exit 1; }
done
if ! [ -x "$ZCOW" ] || ! "$ZCOW" prune --help >/dev/null 2>&1; then
    echo "no working $ZCOW prune (run make; backups need NBD)" >&2
    exit 1
fi
mkdir -p "$WORK" || exit 1
WORK=$(cd "$WORK" && pwd)
DAY=$(date +%Y-%m-%d)
STAMP=$(hostname -s)-prune
[ $QUICK = 1 ] && STAMP=$STAMP-quick
[ -n "$LABEL" ] && STAMP=$STAMP-$LABEL
RESULTS=$HERE/results/$DAY
mkdir -p "$RESULTS"
B=$WORK/prune              # this benchmark's files; removed at the end
LOGDIR=$WORK/logs-prune
mkdir -p "$LOGDIR"
RAW=$RESULTS/$STAMP.tsv
: > "$RAW"
REPORT=$LOGDIR/report.md
: > "$REPORT"
rpt() { printf '%s\n' "$*" >> "$REPORT"; }

# free space: W2 if still to make, the VM's qcow2, M, a copy of M, the
# chain copy for qemu-img commit, an output, and 1 GiB slack
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

# ---------------------------------------------------------------- the chain
DISK=$B/disk.qcow2 QDEV=/machine/peripheral/vda/virtio-backend
cleanup() { w2b_stop "$W2B_QPID"; rm -rf "$B"; }
trap cleanup EXIT
trap 'echo "interrupted" >&2; exit 130' INT TERM

rm -rf "$B"
mkdir -p "$B" || exit 1
M=$B/m
log "the chain: zcow backup --qmp of a TCG QEMU whose disk is a qcow2 of $SRC, then 1% rewritten, then an incremental"
w2_backup "$B" 1 "$M" || exit 1
NW=$W2B_NW STRIDE=$W2B_STRIDE
P1=$M/vda/000001.qcow2 P2=$M/vda/000002.qcow2
[ "$(qemu-img info --output=json "$P2" | sed -n 's/.*"backing-filename": "\(.*\)".*/\1/p')" = 000001.qcow2 ] ||
    { echo "point 2 is not an incremental over point 1" >&2; exit 1; }
CHAIN_INFO=$("$ZCOW" list "$M")
log "$(echo "$CHAIN_INFO" | tr '\n' ' ')"

# ---------------------------------------------------------------- helpers
# dir_pages PATH...: page-cache pages of files, or of every file under dirs
dir_pages() {
    local t=0 f p
    while IFS= read -r f; do
        p=$(pages "$f"); isnum "$p" && t=$((t + p))
    done < <(find "$@" -type f 2>/dev/null)
    echo "$t"
}

# run_once KEY RUN OUT INPUTS CMD...: one measured run of CMD after sync
# and a dropped page cache; a RAW row: key run wall user sys rss_kib
# out_bytes out_pages in_pages rc wall_fine load1 (OUT: the image made;
# INPUTS: a file or directory whose files the run read)
run_once() {
    local key=$1 run=$2 out=$3 in=$4; shift 4
    local tf=$LOGDIR/time.$$ lf load rc wall user sys rss t0 t1
    lf=$LOGDIR/$key.$run.log
    drop_caches
    load=$(cut -d' ' -f1 /proc/loadavg)
    echo "+ $* (load $load)" > "$lf"
    t0=$EPOCHREALTIME
    /usr/bin/time -f '%e %U %S %M' -o "$tf" timeout "$LIMIT" "$@" >>"$lf" 2>&1
    rc=$?
    t1=$EPOCHREALTIME
    read -r wall user sys rss < <(tail -n 1 "$tf")
    case "$wall" in ''|*[!0-9.]*) wall=0; user=0; sys=0; rss=0 ;; esac
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$key" "$run" "$wall" "$user" "$sys" \
        "$rss" "$(fsize "$out")" "$(pages "$out")" "$(dir_pages "$in")" "$rc" \
        "$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.4f", b - a}')" "$load" >> "$RAW"
    rm -f "$tf"
    if [ "$rc" = 0 ]; then
        echo "   $key run $run: ${wall} s (load $load)" >&2
    else
        warn "$key run $run failed (exit $rc): $(tail -n 3 "$lf" | tr '\n' ' ')"
    fi
    return "$rc"
}
# rmed KEY FIELD: median of a RAW column over the successful runs
rmed() {
    awk -F'\t' -v k="$1" -v c="$2" '$1 == k && $10 == 0 {a[n++] = (c == "cpu") ? $4 + $5 : $c}
        END { if (!n) { print "FAIL"; exit }
              for (i = 1; i < n; i++) { x = a[i]; for (j = i - 1; j >= 0 && a[j] > x; j--) a[j+1] = a[j]; a[j+1] = x }
              print (n % 2) ? a[int(n/2)] : (a[n/2-1] + a[n/2]) / 2 }' "$RAW"
}
each() { awk -F'\t' -v k="$1" '$1 == k && $10 == 0 {printf "%s%s", (n++ ? ", " : ""), $3}' "$RAW"; }
loads() { awk -F'\t' -v k="$1" '$1 == k {printf "%s%s", (n++ ? ", " : ""), $12}' "$RAW"; }

CHECKS=() BAD=0
# verify LABEL IMG: qemu-img check clean, and the same content as M's point 2
verify() {
    local c m
    qemu-img check -q "$2" >>"$LOGDIR/verify.log" 2>&1; c=$?
    qemu-img compare -q -f qcow2 -F qcow2 "$P2" "$2" >>"$LOGDIR/verify.log" 2>&1; m=$?
    CHECKS+=("$1: qemu-img check exit $c$([ "$c" = 0 ] && echo ' (clean)'), qemu-img compare with point 2 exit $m$([ "$m" = 0 ] && echo ' (identical)')")
    [ "$c" = 0 ] && [ "$m" = 0 ] || BAD=$((BAD + 1))
}

# ---------------------------------------------------------------- rounds
D=$B/d C=$B/c OUT=$B/out.qcow2
PRUNE_SAID=
for r in $(seq 1 "$RUNS"); do
    rm -rf "$D" && cp -a "$M" "$D" || exit 1
    if run_once prune "$r" "$D/vda/000002.qcow2" "$D" "$ZCOW" prune --keep 1 "$D"; then
        PRUNE_SAID=$(grep -v '^+ ' "$LOGDIR/prune.$r.log")
        PRUNE_FINCORE=$(cd "$D" && fincore -b zcow-backup.json vda/*.qcow2 2>&1)
        verify "round $r, zcow prune (point 2 after)" "$D/vda/000002.qcow2"
        [ "$(ls "$D/vda" | tr "\n" " ")" = "000002.blkhash 000002.qcow2 " ] || { CHECKS+=("round $r, zcow prune: left $(ls "$D/vda" | tr '\n' ' ')"); BAD=$((BAD + 1)); }
    fi
    rm -rf "$D"

    rm -f "$OUT"
    run_once merge "$r" "$OUT" "$M" "$ZCOW" merge --point 2 "$M" "$OUT" &&
        verify "round $r, zcow merge" "$OUT"
    rm -f "$OUT"
    run_once merge-nv "$r" "$OUT" "$M" "$ZCOW" merge --no-verify --point 2 "$M" "$OUT" &&
        verify "round $r, zcow merge --no-verify" "$OUT"
    rm -f "$OUT"
    run_once q-convert "$r" "$OUT" "$M" qemu-img convert -c -f qcow2 -O qcow2 "$P2" "$OUT" &&
        verify "round $r, qemu-img convert -c" "$OUT"
    rm -f "$OUT"
    run_once q-convert-direct "$r" "$OUT" "$M" qemu-img convert -c -T none -t none -f qcow2 -O qcow2 "$P2" "$OUT" &&
        verify "round $r, qemu-img convert -c -T none -t none" "$OUT"
    rm -f "$OUT"
    rm -rf "$C" && mkdir -p "$C" && cp "$P1" "$P2" "$C/" || exit 1
    run_once q-commit "$r" "$OUT" "$C" sh -c "qemu-img commit -q -f qcow2 '$C/000002.qcow2' && qemu-img convert -c -f qcow2 -O qcow2 '$C/000001.qcow2' '$OUT'" &&
        verify "round $r, qemu-img commit, then convert -c" "$OUT"
    rm -rf "$C" "$OUT"
done
LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- report
label() {
    case $1 in
        prune) echo '`zcow prune --keep 1 D`' ;;
        merge) echo '`zcow merge --point 2 M OUT`' ;;
        merge-nv) echo '`zcow merge --no-verify --point 2 M OUT`' ;;
        q-convert) echo '`qemu-img convert -c -O qcow2 P2 OUT`' ;;
        q-convert-direct) echo '`qemu-img convert -c -T none -t none -O qcow2 P2 OUT`' ;;
        q-commit) echo '`qemu-img commit P2` then `qemu-img convert -c -O qcow2 P1 OUT`' ;;
    esac
}
ZP=$(rmed prune 3) QC=$(rmed q-convert 3) QK=$(rmed q-commit 3)
rpt ""
rpt "### Pruning a backup chain: a full and one incremental of W2 made one compressed full"
rpt ""
rpt "| command | wall s | wall s, each run | CPU s | peak RSS MiB | output MiB | pages of the output | pages of the chain read | time ÷ qemu-img convert -c | time ÷ qemu-img commit + convert -c | CPU ÷ qemu-img convert -c | load (1 min) before each run |"
rpt "|---|---|---|---|---|---|---|---|---|---|---|---|"
for k in prune merge merge-nv q-convert q-convert-direct q-commit; do
    w=$(rmed $k 3)
    rpt "| $(label $k) | $(fmt_s "$w") | $(each $k) | $(fmt_s "$(rmed $k cpu)") | $(fmt_mib "$(rmed $k 6)" 1024) |" \
        "$(fmt_mib "$(rmed $k 7)" 1) | $(rmed $k 8) | $(rmed $k 9) |" \
        "$(ratio "$w" "$QC" 3) | $(ratio "$w" "$QK" 3) | $(ratio "$(rmed $k cpu)" "$(rmed q-convert cpu)" 3) | $(loads $k) |"
done
rpt ""
rpt "Medians of $RUNS round(s); in each round the six commands ran one after the other in this" \
    "order, the page cache dropped before each (copies of the chain made before). P1, P2: M's" \
    "\`vda/000001.qcow2\` (the full) and \`vda/000002.qcow2\` (the incremental over it). Output:" \
    "prune's point 2 image after it, or OUT. Pages (fincore after the run): of the output, and of" \
    "all the files of the chain the command read (prune: its whole DIR, manifest included;" \
    "merge and qemu-img convert: M; commit: the copy of P1 and P2). CPU: user + sys of the" \
    "whole command."
rpt ""
rpt "Chain M (\`zcow list\`):"
rpt ""
rpt '```'
rpt "$CHAIN_INFO"
rpt '```'
rpt ""
rpt "What zcow prune said (last run):"
rpt ""
rpt '```'
rpt "$PRUNE_SAID"
rpt '```'
rpt ""
rpt "Page cache right after the last prune, file by file (\`fincore -b\` in D):"
rpt ""
rpt '```'
rpt "$PRUNE_FINCORE"
rpt '```'
rpt ""
rpt "Correctness, every run:"
for c in "${CHECKS[@]}"; do rpt "- $c"; done
rpt ""
rpt "$BAD of ${#CHECKS[@]} checks failed"

commit=${ZCOW_COMMIT:-$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)}
dev=$(findmnt -no SOURCE -T "$WORK"); fstype=$(findmnt -no FSTYPE -T "$WORK")
bdev=$(basename "$(readlink -f "$dev" 2>/dev/null || echo "$dev")")
rot=$(cat "/sys/class/block/$bdev/queue/rotational" 2>/dev/null || echo "?")
FINAL=$RESULTS/$STAMP.md
{
    echo "# zcow prune benchmark, $(date '+%Y-%m-%d %H:%M %Z'), $(hostname -s)$( [ $QUICK = 1 ] && echo ' (quick smoke test: small disk, 1 round; not for quoting)')"
    echo ""
    echo "- machine: $(nproc) CPUs, $(lscpu | sed -n 's/^Model name: *//p' | head -n 1), $(free -g | awk '/^Mem:/{print $2}') GiB RAM, kernel $(uname -r)"
    echo "- work dir: $WORK on $dev ($fstype, rotational=$rot)"
    echo "- $(qemu-img --version | head -n 1)"
    echo "- zcow: $ZCOW, git commit $commit"
    echo "- load average at start: $LOAD0; at end: $LOAD1 (2 CPUs shared with other work: the figures move with it)"
    echo "- command: bench/prune.sh$( [ $QUICK = 1 ] && echo ' --quick') --runs $RUNS$( [ -n "$LABEL" ] && echo " --label $LABEL") --workdir $WORK"
    echo "- caches dropped before each run: $( [ "$DROP_OK" = 1 ] && echo yes || echo 'NO (not root?): warm-cache figures')"
    echo "- the chain: \`zcow backup --qmp\` of a TCG QEMU (\`-machine q35,accel=tcg\`, no guest OS) whose disk is a qcow2 of W2" \
         "($W2: ext4 made with mkfs.ext4 -d $W2_TREE, $(numfmt --to=iec --suffix=B "$SIZE") virtual): point 1 full, then" \
         "$NW writes of 64 KiB (1% of the disk, one in each $(numfmt --to=iec --suffix=B "$STRIDE")) through the device" \
         "(\`qemu-io -d $QDEV\` over the monitor, data from \`tar -C $W2_TREE -cf - .\`), then point 2, incremental;" \
         "64 KiB clusters, zlib (zcow's and qemu-img's defaults)"
    echo "- raw per-run figures: $(basename "$RAW") (columns: key run wall user sys rss_kib out_bytes out_pages in_pages rc wall_fine load1)"
    cat "$REPORT"
} > "$FINAL"
cat "$FINAL"
log "written $FINAL"
