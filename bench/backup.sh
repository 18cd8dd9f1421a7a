#!/bin/bash
# Backups of a running VM: zcow backup against QEMU's own compressed backup
# job, in the same run.  See bench/README.md, "Backups of a running VM".
#
#   bench/backup.sh [--quick] [--runs N] [--workdir DIR] [--zcow PATH]
#                   [--label NAME] [--vm-cache none|writeback]
#
#   --quick        smoke test: a 256 MiB disk, 1 round (figures not for quoting)
#   --runs N       rounds (default 3); each figure is the median of N runs
#   --workdir DIR  inputs and outputs (default $ZCOW_BENCH_DIR or
#                  /var/tmp/zcow-bench); the W2 input is reused when present
#   --zcow PATH    the zcow binary (default build/zcow)
#   --label NAME   results file DATE-HOST-backup-NAME.md
#   --vm-cache M   the VM's disk: none (cache.direct=on, default) or writeback
#
# A QEMU (TCG, no guest OS) runs with one virtio-blk disk, a qcow2 of W2.
# Each round, with the page cache dropped before each measured command:
#   1. QEMU's job: blockdev-backup sync=full compress=true to a qcow2 node
#      with cache.direct=on (bench/qmp-backup.py), then
#   2. the same with cache.direct=off;
#   3. zcow backup --qmp SOCK DIR                        (full, a new DIR)
#   4. 1% of the disk rewritten through the device (qemu-io over QMP),
#      then zcow backup --qmp SOCK DIR                   (incremental)
# The three full backups of a round copy the same disk.  The rewrites hit
# the same clusters every round (with other data), and once before the
# first round, so that every round starts from a disk of the same size.
# Every output is verified: zcow restore of the point (or QEMU's target)
# compared with the disk as it was (qemu-img compare -U, nothing writes
# meanwhile), and qemu-img check.

set -u
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
. "$HERE/lib.sh"
. "$HERE/make-inputs.sh"

QUICK=0 RUNS='' LABEL='' VMCACHE=none
LOAD0=$(cut -d" " -f1-3 /proc/loadavg)
WORK=${ZCOW_BENCH_DIR:-/var/tmp/zcow-bench}
ZCOW=${ZCOW:-$ROOT/build/zcow}
usage() { sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; }
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
        --vm-cache) VMCACHE=${2:?}; shift ;;
        --vm-cache=*) VMCACHE=${1#*=} ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
[ -n "$RUNS" ] || { [ $QUICK = 1 ] && RUNS=1 || RUNS=3; }
case "$RUNS" in ''|*[!0-9]*|0) echo "--runs: a positive number" >&2; exit 2 ;; esac
case "$VMCACHE" in none) VMDIRECT=on ;; writeback) VMDIRECT=off ;;
    *) echo "--vm-cache: none or writeback" >&2; exit 2 ;; esac

if [ $QUICK = 1 ]; then
    W2=w2-256M
    export W2_TREE=${W2_TREE:-/usr/share/doc}
else
    W2=w2-4G
    export W2_TREE=${W2_TREE:-/usr/share}
fi
ZLIMIT=600     # seconds a zcow backup may take
QLIMIT=1200    # seconds QEMU's job may take (then it is cancelled)

for t in qemu-system-x86_64 qemu-img python3 fincore /usr/bin/time timeout tar split numfmt mkfs.ext4; do
    command -v "$t" >/dev/null || { echo "missing $t: run scripts/install-deps.sh --bench" >&2; exit 1; }
done
if ! [ -x "$ZCOW" ] || ! "$ZCOW" backup --help >/dev/null 2>&1; then
    echo "no working $ZCOW backup (run make; backups need NBD)" >&2
    exit 1
fi
mkdir -p "$WORK" || exit 1
WORK=$(cd "$WORK" && pwd)
STAMP=$(date +%Y-%m-%d)-$(hostname -s)-backup
[ $QUICK = 1 ] && STAMP=$STAMP-quick
[ -n "$LABEL" ] && STAMP=$STAMP-$LABEL
RESULTS=$HERE/results
mkdir -p "$RESULTS"
B=$WORK/backup             # this benchmark's files; removed at the end
LOGDIR=$WORK/logs-backup
mkdir -p "$LOGDIR"
RAW=$RESULTS/$STAMP.tsv
: > "$RAW"
REPORT=$LOGDIR/report.md
: > "$REPORT"
rpt() { printf '%s\n' "$*" >> "$REPORT"; }

# free space: W2 if still to make, its qcow2, zcow's chain, QEMU's target,
# a restored raw (sparse: about the allocated size) and 1 GiB slack
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

# ---------------------------------------------------------------- the VM
QSOCK=$B/qmp.sock     # zcow's monitor
MSOCK=$B/mon.sock     # the benchmark's
DISK=$B/disk.qcow2
QDEV=/machine/peripheral/vda/virtio-backend
QMPPY=$ROOT/tests/interop/qmp.py
QB=$HERE/qmp-backup.py
QPID=

qemu_stop() {
    [ -n "$QPID" ] || return 0
    kill "$QPID" 2>/dev/null
    for _ in $(seq 50); do [ -d "/proc/$QPID" ] || break; sleep 0.1; done
    [ -d "/proc/$QPID" ] && kill -9 "$QPID" 2>/dev/null
    QPID=
}
cleanup() {
    qemu_stop
    rm -rf "$B"
}
trap cleanup EXIT
trap 'echo "interrupted" >&2; exit 130' INT TERM

rm -rf "$B"
mkdir -p "$B" || exit 1
log "the VM's disk: $DISK (qemu-img convert -O qcow2 of $SRC)"
qemu-img convert -f raw -O qcow2 "$SRC" "$DISK" || exit 1
qemu-system-x86_64 -nodefaults -display none -machine q35,accel=tcg -m 64 \
    -blockdev driver=file,filename="$DISK",node-name=f0,cache.direct=$VMDIRECT \
    -blockdev driver=qcow2,file=f0,node-name=d0,cache.direct=$VMDIRECT \
    -device virtio-blk-pci,drive=d0,id=vda \
    -qmp unix:"$QSOCK",server=on,wait=off -qmp unix:"$MSOCK",server=on,wait=off \
    -daemonize -pidfile "$B/qemu.pid" || { echo "cannot start QEMU" >&2; exit 1; }
QPID=$(cat "$B/qemu.pid")
for _ in $(seq 100); do [ -S "$MSOCK" ] && break; sleep 0.05; done
[ -S "$MSOCK" ] || { echo "QEMU's monitor did not appear" >&2; exit 1; }
CLK=$(getconf CLK_TCK)
qemu_ticks() { awk '{print $14 + $15}' "/proc/$QPID/stat" 2>/dev/null || echo 0; }

# ---------------------------------------------------------------- helpers
# dir_pages PATH: page-cache pages of a file, or of every file under a dir
dir_pages() {
    local t=0 f p
    while IFS= read -r f; do
        p=$(pages "$f"); isnum "$p" && t=$((t + p))
    done < <(find "$1" -type f 2>/dev/null)
    echo "$t"
}

# run_once KEY RUN SRC OUT ALL LIMIT CMD...: one measured run of CMD, after
# sync and a dropped page cache; appends a RAW row (lib.sh's columns, with
# OUT kept: QEMU's target must exist before its job, plus the QEMU
# process's CPU seconds during the run, the 1-minute load average before it
# and the pages of ALL: the whole backup directory or target).
run_once() {
    local key=$1 run=$2 src=$3 out=$4 all=$5 limit=$6; shift 6
    local tf=$LOGDIR/time.$$ lf load q0 q1 rc wall user sys rss t0 t1
    lf=$LOGDIR/$key.$run.log
    drop_caches
    load=$(cut -d' ' -f1 /proc/loadavg)
    echo "+ $* (load $load)" > "$lf"
    q0=$(qemu_ticks)
    t0=$EPOCHREALTIME
    /usr/bin/time -f '%e %U %S %M' -o "$tf" timeout "$limit" "$@" >>"$lf" 2>&1
    rc=$?
    t1=$EPOCHREALTIME
    q1=$(qemu_ticks)
    read -r wall user sys rss < <(tail -n 1 "$tf")
    case "$wall" in ''|*[!0-9.]*) wall=0; user=0; sys=0; rss=0 ;; esac
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$key" "$run" "$wall" "$user" "$sys" \
        "$rss" "$(fsize "$out")" "$(pages "$src")" "$(pages "$out")" "$rc" \
        "$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.4f", b - a}')" \
        "$(awk -v a="$q0" -v b="$q1" -v c="$CLK" 'BEGIN{printf "%.2f", (b - a) / c}')" \
        "$load" "$(dir_pages "$all")" >> "$RAW"
    rm -f "$tf"
    if [ "$rc" = 0 ]; then
        echo "   $key run $run: ${wall} s (load $load), $(tail -n 1 "$RAW" | cut -f 12) s of QEMU's CPU" >&2
    else
        warn "$key run $run failed (exit $rc): $(tail -n 3 "$lf" | tr '\n' ' ')"
    fi
    return "$rc"
}

CHECKS=() BAD=0
check_line() {   # check_line LABEL COMPARE_RC CHECK_RC
    CHECKS+=("$1: qemu-img compare exit $2$([ "$2" = 0 ] && echo ' (identical)'), qemu-img check exit $3$([ "$3" = 0 ] && echo ' (clean)')")
    [ "$2" = 0 ] && [ "$3" = 0 ] || BAD=$((BAD + 1))
}
# verify_point LABEL DIR N: zcow restore of point N equals the disk now
verify_point() {
    local c m r=$B/restored.raw img
    img=$2/vda/$(printf '%06d' "$3").qcow2
    rm -f "$r"
    if "$ZCOW" restore --disk vda --point "$3" "$2" "$r" >>"$LOGDIR/verify.log" 2>&1; then
        qemu-img compare -U -q -f qcow2 -F raw "$DISK" "$r" >>"$LOGDIR/verify.log" 2>&1; m=$?
    else
        m=restore-failed
    fi
    qemu-img check -q "$img" >>"$LOGDIR/verify.log" 2>&1; c=$?
    rm -f "$r"
    check_line "$1 (zcow restore --point $3, $(basename "$img"))" "$m" "$c"
}
# verify_target LABEL IMG: QEMU's target equals the disk now
verify_target() {
    local c m
    qemu-img compare -U -q -f qcow2 -F qcow2 "$DISK" "$2" >>"$LOGDIR/verify.log" 2>&1; m=$?
    qemu-img check -q "$2" >>"$LOGDIR/verify.log" 2>&1; c=$?
    check_line "$1" "$m" "$c"
}

# rewrite ROUND: 1% of the disk rewritten through the device, as a guest
# would, in 64 KiB writes spread evenly over the disk (the first cluster of
# each stride), with data from a tar of W2's tree (text, binaries,
# compressed files: as compressible as the disk; another stretch of the tar
# every round); then a flush, so that the image file holds the disk as the
# VM sees it.
CL=65536
NW=$(( (SIZE / 100 + CL - 1) / CL ))
STRIDE=$(( SIZE / NW / CL * CL ))
rewrite() {
    local round=$1 i d=$B/rw
    local -a cmds=()
    rm -rf "$d"; mkdir -p "$d"
    # (random bytes after the tree's end, should it be short)
    { tar -C "$W2_TREE" -cf - . 2>/dev/null | tail -c +$(( round * NW * CL + 1 )) |
        head -c $((NW * CL)); head -c $((NW * CL)) /dev/urandom; } | head -c $((NW * CL)) > "$d/data"
    split -b $CL -d -a 6 "$d/data" "$d/c."
    for i in $(seq 0 $((NW - 1))); do
        cmds+=("write -s $d/c.$(printf '%06d' "$i") $((i * STRIDE)) 64k")
    done
    cmds+=(flush)
    python3 "$QMPPY" "$MSOCK" write "$QDEV" "${cmds[@]}" || return 1
    rm -rf "$d"
}
prefix_of() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["prefix"])' "$1/zcow-backup.json"; }

# ---------------------------------------------------------------- rounds
log "VM: qemu-system-x86_64 pid $QPID, disk $(numfmt --to=iec "$SIZE")B, cache $VMCACHE; $RUNS round(s)"
log "rewrite per round: $NW writes of 64 KiB, one per $(numfmt --to=iec "$STRIDE")B"
rewrite 0 || { echo "the first rewrite through the VM failed" >&2; exit 1; }
FINCORE_INC=
for r in $(seq 1 "$RUNS"); do
    for dir in on off; do
        T=$B/target.qcow2
        rm -f "$T"
        qemu-img create -q -f qcow2 "$T" "$SIZE" || exit 1
        run_once qemu-$dir "$r" "$DISK" "$T" "$T" $((QLIMIT + 120)) python3 "$QB" "$MSOCK" job d0 "$T" "$dir" "$QLIMIT" &&
            verify_target "round $r, QEMU's job, cache.direct=$dir" "$T"
        rm -f "$T"
    done
    D=$B/dir
    rm -rf "$D"
    if run_once full "$r" "$DISK" "$D/vda/000001.qcow2" "$D" "$ZLIMIT" "$ZCOW" backup --qmp "$QSOCK" "$D"; then
        verify_point "round $r, zcow full" "$D" 1
        if rewrite "$r"; then
            if run_once inc "$r" "$DISK" "$D/vda/000002.qcow2" "$D" "$ZLIMIT" "$ZCOW" backup --qmp "$QSOCK" "$D"; then
                FINCORE_INC=$(cd "$D" && fincore -b zcow-backup.json vda/*.qcow2 2>&1)
                verify_point "round $r, zcow incremental" "$D" 2
            fi
        else
            warn "round $r: the rewrite failed"
        fi
    fi
    [ -f "$D/zcow-backup.json" ] && python3 "$QB" "$MSOCK" drop-bitmaps d0 "$(prefix_of "$D")-"
    rm -rf "$D"
done
LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- report
each() { awk -F'\t' -v k="$1" '$1 == k && $10 == 0 {printf "%s%s", (n++ ? ", " : ""), $3}' "$RAW"; }
loads() { awk -F'\t' -v k="$1" '$1 == k {printf "%s%s", (n++ ? ", " : ""), $13}' "$RAW"; }
cpu_all() {   # median over runs of the client's CPU + QEMU's
    awk -F'\t' -v k="$1" '$1 == k && $10 == 0 {a[n++] = $4 + $5 + $12}
        END { if (!n) exit; for (i = 1; i < n; i++) { x = a[i]; for (j = i - 1; j >= 0 && a[j] > x; j--) a[j+1] = a[j]; a[j+1] = x }
              print (n % 2) ? a[int(n/2)] : (a[n/2-1] + a[n/2]) / 2 }' "$RAW"
}
label() {
    case $1 in
        full) echo '`zcow backup --qmp SOCK DIR`: full' ;;
        inc) echo '`zcow backup --qmp SOCK DIR`: incremental, 1% rewritten' ;;
        qemu-on) echo 'QEMU `blockdev-backup sync=full compress=true`, target cache.direct=on' ;;
        qemu-off) echo 'QEMU `blockdev-backup sync=full compress=true`, target cache.direct=off' ;;
    esac
}
QON=$(med qemu-on wall) ZF=$(med full wall) ZI=$(med inc wall)
rpt ""
rpt "### Backups of a running VM: zcow backup against QEMU's compressed backup job"
rpt ""
rpt "| backup | wall s | wall s, each run | CPU s: client + QEMU | of which QEMU | output MiB | pages of the output (image / all files) | pages of the VM's disk | time ÷ QEMU direct=on | time ÷ zcow full | load (1 min) before each run |"
rpt "|---|---|---|---|---|---|---|---|---|---|---|"
for k in qemu-on qemu-off full inc; do
    w=$(med $k wall)
    [ -n "$w" ] || continue
    rpt "| $(label $k) | $(fmt_s "$w") | $(each $k) | $(fmt_s "$(cpu_all $k)") | $(fmt_s "$(med $k qemu_cpu)") |" \
        "$(fmt_mib "$(med $k out)" 1) | $(med $k out_pages) / $(med $k dir_pages) | $(med $k src_pages) |" \
        "$(ratio "$w" "$QON" 3) | $(ratio "$w" "$ZF" 3) | $(loads $k) |"
done
rpt ""
rpt "Medians of $RUNS round(s); in each round the four commands ran one after the other in this order" \
    "(the three full backups of one disk state, then the rewrite of 1%, then the incremental)," \
    "the page cache dropped before each. Wall: the whole command (zcow: from connecting to QEMU" \
    "to the point recorded and the VM cleaned up; QEMU's job: \`bench/qmp-backup.py\`, from" \
    "\`blockdev-add\` of the target to its \`blockdev-del\`, which flushes and closes it)." \
    "CPU: the client's user + sys (zcow, or the Python QMP client) plus the QEMU process's CPU" \
    "during the run (/proc/PID/stat), which is where QEMU's job does all its work and where" \
    "zcow's reads are served (NBD export of the fleecing node). Output: the point's image" \
    "(zcow: \`DIR/vda/00000N.qcow2\`) or QEMU's target. Pages: fincore after the run, of the" \
    "image and of all the files of the backup (zcow: the whole DIR, with its manifest)."
if [ -n "$FINCORE_INC" ]; then
    rpt ""
    rpt "Page cache after the last incremental, file by file (\`fincore -b\` in DIR):"
    rpt ""
    rpt '```'
    rpt "$FINCORE_INC"
    rpt '```'
fi
rpt ""
rpt "Correctness, every run:"
for c in "${CHECKS[@]}"; do rpt "- $c"; done
rpt ""
rpt "### Targets (issue 10, point 6), from this run"
rpt ""
PASSES=0 FAILS=0
verdict() { if [ "$1" = 1 ]; then rpt "- PASS: $2"; PASSES=$((PASSES + 1)); else rpt "- FAIL: $2"; FAILS=$((FAILS + 1)); fi; }
chk() { "$@" && echo 1 || echo 0; }
third=$(isnum "$QON" && awk -v q="$QON" 'BEGIN{printf "%.4f", q / 3}')
verdict "$(chk le "$ZF" "$third")" "full $(fmt_s "$ZF") s ≤ 1/3 of QEMU's job with cache.direct=on $(fmt_s "$QON") s (ratio $(ratio "$ZF" "$QON" 3); CPU ratio $(ratio "$(cpu_all full)" "$(cpu_all qemu-on)" 3))"
five=$(isnum "$ZF" && awk -v f="$ZF" 'BEGIN{printf "%.4f", f * 0.05}')
verdict "$(chk le "$ZI" "$five")" "incremental $(fmt_s "$ZI") s ≤ 5% of the full's $(fmt_s "$ZF") s (ratio $(ratio "$ZI" "$ZF" 3))"
for k in full inc; do
    op=$(awk -F'\t' -v k=$k '$1 == k && $10 == 0 && $9 > m {m = $9} END {print m + 0}' "$RAW")
    dp=$(awk -F'\t' -v k=$k '$1 == k && $10 == 0 && $14 > m {m = $14} END {print m + 0}' "$RAW")
    verdict "$(chk [ "$op" = 0 ])" "$k: $op pages of the image it wrote in the page cache after the run (the most of any run; target 0)"
    verdict "$(chk [ "$dp" = 0 ])" "$k: $dp pages of all the files of DIR in the page cache after the run (the most of any run; target 0)"
done
verdict "$(chk [ "$BAD" = 0 ])" "every output verified: $BAD of ${#CHECKS[@]} checks failed"
rpt ""
rpt "$PASSES passed, $FAILS failed"

commit=${ZCOW_COMMIT:-$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)}
dev=$(findmnt -no SOURCE -T "$WORK"); fstype=$(findmnt -no FSTYPE -T "$WORK")
bdev=$(basename "$(readlink -f "$dev" 2>/dev/null || echo "$dev")")
rot=$(cat "/sys/class/block/$bdev/queue/rotational" 2>/dev/null || echo "?")
FINAL=$RESULTS/$STAMP.md
{
    echo "# zcow backup benchmark, $(date '+%Y-%m-%d %H:%M %Z'), $(hostname -s)$( [ $QUICK = 1 ] && echo ' (quick smoke test: small disk, 1 round; not for quoting)')"
    echo ""
    echo "- machine: $(nproc) CPUs, $(lscpu | sed -n 's/^Model name: *//p' | head -n 1), $(free -g | awk '/^Mem:/{print $2}') GiB RAM, kernel $(uname -r)"
    echo "- work dir: $WORK on $dev ($fstype, rotational=$rot)"
    echo "- $(qemu-system-x86_64 --version | head -n 1); Python $(python3 -c 'import platform; print(platform.python_version())')"
    echo "- zcow: $ZCOW, git commit $commit"
    echo "- load average at start: $LOAD0; at end: $LOAD1 (2 CPUs shared with other work: the figures move with it)"
    echo "- command: bench/backup.sh$( [ $QUICK = 1 ] && echo ' --quick') --runs $RUNS$( [ -n "$LABEL" ] && echo " --label $LABEL")$( [ "$VMCACHE" != none ] && echo " --vm-cache $VMCACHE") --workdir $WORK"
    echo "- caches dropped before each run: $( [ "$DROP_OK" = 1 ] && echo yes || echo 'NO (not root?): warm-cache figures')"
    echo "- the VM: \`qemu-system-x86_64 -machine q35,accel=tcg -m 64\`, no guest OS, one \`virtio-blk-pci\` disk (id vda, node d0):" \
         "a qcow2 made by \`qemu-img convert -O qcow2\` of W2 ($W2: ext4 made with mkfs.ext4 -d $W2_TREE," \
         "$(numfmt --to=iec --suffix=B "$SIZE") virtual, $(numfmt --to=iec --suffix=B "$(stat -c %s "$DISK" 2>/dev/null || echo 0)") allocated in the qcow2 at the end)," \
         "cache.direct=$VMDIRECT (cache=$VMCACHE)"
    echo "- the incremental's writes: $NW writes of 64 KiB (1% of the disk), one in each $(numfmt --to=iec --suffix=B "$STRIDE") of the disk," \
         "\`qemu-io -d $QDEV \"write -s CHUNK OFF 64k\"\` through the monitor (HMP), data from \`tar -C $W2_TREE -cf - .\`, then a flush"
    echo "- zcow and QEMU's target: 64 KiB clusters, zlib (both defaults); QEMU's target made with \`qemu-img create -f qcow2 T $SIZE\` before the caches are dropped"
    echo "- raw per-run figures: $(basename "$RAW") (columns: key run wall user sys rss_kib out_bytes src_pages out_pages rc wall_fine qemu_cpu load1 dir_pages)"
    cat "$REPORT"
} > "$FINAL"
cat "$FINAL"
log "written $FINAL"
