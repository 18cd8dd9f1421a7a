#!/bin/bash
# push.sh - the upstream table with an unpatched QEMU (issue 12, point 2):
# QEMU's own backup job of a running VM's disk into
#   (a) a qcow2 target, compress=true, cache.direct=on,
#   (b) the same, cache.direct=off,
#   (c) an NBD target served by `nbdkit zcow` (cache=none);
# and, into the same plugin, (d) `qemu-img convert -n` and (e) `nbdcopy`.
# Disks: 1000 MiB of 0x01 (the upstream workload) and W2 (ext4 of
# /usr/share); targets on the local disk and on the emulated HDD of
# bench/hdd.sh (4 ms per request), the source always on the local disk.
#
#   bench/push.sh [--runs N] [--workdir DIR] [--w2 FILE] [--hdd-w2 FILE]
#                 [--timeout S] [--no-hdd] [--hdd-only] [--label NAME]
#
#   --runs N      rounds (default 1); in each the five rows run one after
#                 the other for each disk and place, the page cache dropped
#                 before each
#   --workdir DIR inputs and local targets (default /var/tmp/zcow-push-bench)
#   --w2 FILE     W2 on the local disk (default /var/tmp/zcow-bench/w2-4G.raw,
#                 made by bench/make-inputs.sh)
#   --hdd-w2 FILE W2 for the HDD (default .../w2-256M.raw: the HDD holds 2 GiB)
#   --timeout S   QEMU's job is cancelled after S seconds (default 600)
#   --no-hdd, --hdd-only   targets on the local disk only, or the HDD only
# Writes bench/results/DATE/push-LABEL.md (LABEL: host name) and its .tsv.
# Needs root (drop_caches, the HDD), qemu-system-x86_64, nbdkit with
# build/nbdkit-zcow-plugin.so, nbdcopy, fincore.

set -u
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
. "$HERE/lib.sh"
. "$HERE/hdd.sh"

RUNS=1 WORK=/var/tmp/zcow-push-bench W2=/var/tmp/zcow-bench/w2-4G.raw
HDD_W2=/var/tmp/zcow-bench/w2-256M.raw TIMEOUT=600 HDD=1 LOCAL=1 LABEL=$(hostname -s)
CMDLINE="bench/push.sh $*"
while [ $# -gt 0 ]; do
    case $1 in
    --runs) RUNS=$2; shift ;;
    --workdir) WORK=$2; shift ;;
    --w2) W2=$2; shift ;;
    --hdd-w2) HDD_W2=$2; shift ;;
    --timeout) TIMEOUT=$2; shift ;;
    --no-hdd) HDD=0 ;;
    --hdd-only) LOCAL=0 ;;
    --label) LABEL=$2; shift ;;
    -h | --help) sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "push.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
PLUGIN=$ROOT/build/nbdkit-zcow-plugin.so
for t in qemu-system-x86_64 qemu-img nbdkit nbdcopy fincore python3; do
    command -v $t >/dev/null || { echo "push.sh: missing $t" >&2; exit 1; }
done
[ -f "$PLUGIN" ] || { echo "push.sh: no $PLUGIN: make first" >&2; exit 1; }
mkdir -p "$WORK" || exit 1
LOGDIR=$WORK/logs
mkdir -p "$LOGDIR"
DATE=$(date -u +%Y-%m-%d)
RES=$ROOT/bench/results/$DATE
mkdir -p "$RES"
REPORT=$RES/push-$LABEL.md
RAW=$RES/push-$LABEL.tsv
: >"$RAW"
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)

ONES=$WORK/ones-1000M.raw
if [ ! -f "$ONES" ] || [ "$(fsize "$ONES")" != $((1000 << 20)) ]; then
    log "making $ONES"
    head -c $((1000 << 20)) /dev/zero | tr '\0' '\1' >"$ONES" || exit 1
fi

QSOCK=$WORK/qmp.sock
NSOCK=$WORK/nbd.sock
QPID=
NPID=
cleanup() {
    [ -n "$QPID" ] && kill "$QPID" 2>/dev/null
    [ -n "$NPID" ] && kill "$NPID" 2>/dev/null
    [ "$HDD" = 1 ] && hdd_down "$WORK/hdd" 2>/dev/null
}
trap cleanup EXIT

# vm_start SRC: a TCG QEMU, no guest, with SRC (raw, read-only, O_DIRECT)
# as its virtio disk, node d0.
vm_start() {
    rm -f "$QSOCK"
    qemu-system-x86_64 -nodefaults -display none -machine q35,accel=tcg -m 64 \
        -blockdev driver=file,filename="$1",node-name=f0,cache.direct=on,aio=native,read-only=on \
        -blockdev driver=raw,file=f0,node-name=d0,read-only=on \
        -device virtio-blk-pci,drive=d0,id=vda \
        -qmp unix:"$QSOCK",server=on,wait=off -daemonize -pidfile "$WORK/qemu.pid" || return 1
    QPID=$(cat "$WORK/qemu.pid")
    for _ in $(seq 100); do [ -S "$QSOCK" ] && return 0; sleep 0.05; done
    return 1
}
vm_stop() {
    [ -n "$QPID" ] && kill "$QPID" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$QPID" 2>/dev/null || break; sleep 0.05; done
    QPID=
}

# plugin_start OUT SIZE: nbdkit zcow in the background (exits by itself
# once its client has flushed and left).
plugin_start() {
    rm -f "$NSOCK"
    /usr/bin/time -o "$LOGDIR/nbdkit.cpu" -f '%U %S' \
        nbdkit -f -U "$NSOCK" "$PLUGIN" file="$1" size="$2" cache=none >"$LOGDIR/nbdkit.log" 2>&1 &
    NPID=$!
    for _ in $(seq 200); do [ -S "$NSOCK" ] && return 0; sleep 0.02; done
    return 1
}
plugin_wait() {
    wait "$NPID"
    local rc=$?
    NPID=
    return $rc
}

now() { date +%s.%N; }
qemu_ticks() { awk '{ print $14 + $15 }' "/proc/$QPID/stat" 2>/dev/null || echo 0; }
# cpu_of FILE...: the sum of the "USER SYS" lines of those FILEs that exist.
cpu_of() {
    local f
    for f in "$@"; do [ -s "$f" ] && cat "$f"; done | awk '{ s += $1 + $2 } END { printf "%.2f", s }'
}
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

# run_row KEY SRC OUT: one row, timed from its first command to the image
# complete on disk (QEMU's target closed by blockdev-del; nbdkit exited,
# which it does after renaming the image into place).  Appends to RAW:
# key run place disk wall job_s out_bytes out_pages check_rc compare_rc rc
run_row() {
    local key=$1 src=$2 out=$3 size t0 t1 rc job=- q0 q1 cpu
    size=$(fsize "$src")
    rm -f "$out" "$LOGDIR/nbdkit.cpu" "$LOGDIR/client.cpu"
    case $key in a | b) qemu-img create -q -f qcow2 "$out" "$size" ;; c | d | e) plugin_start "$out" "$size" ;; esac
    drop_caches
    q0=$(qemu_ticks)
    t0=$(now)
    case $key in
    a | b)
        python3 "$HERE/qmp-backup.py" "$QSOCK" job d0 "$out" "$([ $key = a ] && echo on || echo off)" \
            "$TIMEOUT" 2>"$LOGDIR/job.log"
        rc=$?
        ;;
    c)
        python3 "$HERE/qmp-backup.py" "$QSOCK" job d0 "$NSOCK" nbd "$TIMEOUT" 2>"$LOGDIR/job.log"
        rc=$?
        plugin_wait || rc=1
        ;;
    d)
        /usr/bin/time -o "$LOGDIR/client.cpu" -f '%U %S' qemu-img convert -n --target-is-zero -T none \
            -f raw -O raw "$src" "nbd+unix:///?socket=$NSOCK" 2>"$LOGDIR/job.log"
        rc=$?
        plugin_wait || rc=1
        ;;
    e)
        /usr/bin/time -o "$LOGDIR/client.cpu" -f '%U %S' nbdcopy --flush --target-is-zero "$src" \
            "nbd+unix:///?socket=$NSOCK" 2>"$LOGDIR/job.log"
        rc=$?
        plugin_wait || rc=1
        ;;
    esac
    t1=$(now)
    q1=$(qemu_ticks)
    # CPU: QEMU's during the row (its job, or nothing in d and e), nbdkit's
    # and the client's (qemu-img, nbdcopy); the QMP client's is negligible.
    cpu=$(awk -v q="$((q1 - q0))" -v t="$(getconf CLK_TCK)" -v o="$(cpu_of "$LOGDIR/nbdkit.cpu" "$LOGDIR/client.cpu")" \
        'BEGIN { printf "%.2f", q / t + o }')
    [ -s "$LOGDIR/job.log" ] && job=$(sed -n 's/.* after \([0-9.]*\) s.*/\1/p' "$LOGDIR/job.log" | head -n 1)
    local pg ck cm
    pg=$(pages "$out")
    qemu-img check -q "$out" >/dev/null 2>&1
    ck=$?
    qemu-img compare -q -T none -f raw -F qcow2 "$src" "$out" >/dev/null 2>&1
    cm=$?
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$key" "$RUN" "$PLACE" "$DISK" \
        "$(secs "$t0" "$t1")" "${job:--}" "$(fsize "$out")" "$pg" "$ck" "$cm" "$rc" "$cpu" \
        "$(cut -d' ' -f1 /proc/loadavg)" >>"$RAW"
    log "$PLACE $DISK $key: $(secs "$t0" "$t1") s (job ${job:--}, CPU $cpu s), rc $rc, check $ck, compare $cm, $pg pages"
    rm -f "$out"
}

places=()
[ "$LOCAL" = 1 ] && places=(local)
if [ "$HDD" = 1 ]; then
    if hdd_up "$WORK/hdd"; then places+=(hdd); else warn "no emulated HDD: local disk only"; fi
fi
for RUN in $(seq "$RUNS"); do
    for PLACE in "${places[@]}"; do
        dir=$WORK
        [ "$PLACE" = hdd ] && dir=$HDD_MNT
        for DISK in ones w2; do
            src=$ONES
            if [ $DISK = w2 ]; then src=$W2; [ "$PLACE" = hdd ] && src=$HDD_W2; fi
            vm_start "$src" || { warn "QEMU did not start"; exit 1; }
            for key in a b c d e; do
                run_row $key "$src" "$dir/target.qcow2"
            done
            vm_stop
        done
    done
done

# ---- the report ------------------------------------------------------------
med() { sort -n | awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
col() { awk -F'\t' -v k="$1" -v p="$2" -v d="$3" -v c="$4" '$1 == k && $3 == p && $4 == d { print $c }' "$RAW"; }
wall() { col "$1" "$2" "$3" 5 | med; }
ok_all() { awk -F'\t' -v k="$1" -v p="$2" -v d="$3" '$1 == k && $3 == p && $4 == d && ($9 != 0 || $10 != 0 || $11 != 0) { bad = 1 } END { print bad ? "NO" : "yes" }' "$RAW"; }
name_of() {
    case $1 in
    a) echo "(a) QEMU \`blockdev-backup sync=full compress=true\`, qcow2 target cache.direct=on" ;;
    b) echo "(b) the same, cache.direct=off" ;;
    c) echo "(c) QEMU \`blockdev-backup sync=full\` into \`nbdkit zcow\` (cache=none)" ;;
    d) echo "(d) \`qemu-img convert -n --target-is-zero -T none\` into \`nbdkit zcow\`" ;;
    e) echo "(e) \`nbdcopy --flush --target-is-zero\` into \`nbdkit zcow\`" ;;
    esac
}
{
    echo "# Push mode: QEMU's backup job into zcow (bench/push.sh), $(date -u '+%Y-%m-%d %H:%M') UTC"
    echo
    echo "- command: \`$CMDLINE\` ($RUNS round(s); figures are medians)"
    echo "- machine: $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM; load average at start $LOAD0, at end $(cut -d' ' -f1-3 /proc/loadavg) (shared with other work)"
    echo "- $(qemu-system-x86_64 --version | head -n 1); nbdkit $(nbdkit --version | awk '{print $2}'); $(nbdcopy --version | head -n 1)"
    echo "- zcow: git $(cd "$ROOT" && git rev-parse --short HEAD), build/nbdkit-zcow-plugin.so"
    echo "- the VM: \`qemu-system-x86_64 -machine q35,accel=tcg -m 64\`, no guest OS, one virtio-blk-pci disk: the raw file, \`driver=file,cache.direct=on,aio=native,read-only=on\` (as upstream's source); the job: \`bench/qmp-backup.py SOCK job d0 TARGET on|off|nbd\` (blockdev-add of the target, blockdev-backup sync=full job-id, wait for BLOCK_JOB_COMPLETED, blockdev-del, which flushes and closes it)"
    echo "- (a), (b): target made by \`qemu-img create -f qcow2 T SIZE\` (64 KiB clusters, zlib); (c)-(e): \`nbdkit -f -U SOCK build/nbdkit-zcow-plugin.so file=T size=SIZE cache=none\` (64 KiB clusters, zlib), which renames the image into place and exits when the client leaves"
    echo "- disks: ones = 1000 MiB of 0x01; W2 local = $(basename "$W2") ($(numfmt --to=iec "$(fsize "$W2")")B), W2 on the HDD = $(basename "$HDD_W2") ($(numfmt --to=iec "$(fsize "$HDD_W2")")B: the emulated HDD holds 2 GiB); targets in $WORK (local: $(findmnt -n -o SOURCE,FSTYPE -T "$WORK" | tr '\n' ' ')) or on the emulated HDD (bench/hdd.sh: nbdkit memory 2G, delay filter 4 ms per read and write, nbdfuse, loop device, ext4)"
    echo "- time: from the first command of the row (blockdev-add, qemu-img, nbdcopy) until the image is complete on disk (QEMU: blockdev-del returned; nbdkit zcow: exited after renaming the image); the page cache dropped before each row; \"job\": QEMU's own job time (blockdev-backup to BLOCK_JOB_COMPLETED), what upstream's table timed"
    echo "- CPU: the QEMU process's during the row (/proc/PID/stat: its job, its reads) plus nbdkit's and the client's (qemu-img, nbdcopy; /usr/bin/time); load average (1 min) after each row in the TSV"
    echo "- pages: \`fincore\` of the target after the row; every target judged by \`qemu-img check\` (exit 0) and \`qemu-img compare\` with the disk (exit 0)"
    echo
    for PLACE in "${places[@]}"; do
        for DISK in ones w2; do
            a=$(wall a "$PLACE" $DISK)
            echo "### $DISK, target on the $( [ "$PLACE" = hdd ] && echo "emulated HDD" || echo "local disk")"
            echo
            echo "| row | time s | each run | job s | time ÷ (a) | CPU s | CPU ÷ (a) | output MiB | pages of the output | check and compare clean |"
            echo "|---|---|---|---|---|---|---|---|---|---|"
            ca=$(col a "$PLACE" $DISK 12 | med)
            for key in a b c d e; do
                w=$(wall $key "$PLACE" $DISK)
                j=$(col $key "$PLACE" $DISK 6 | grep -v '^-$' | med)
                o=$(col $key "$PLACE" $DISK 7 | med)
                p=$(col $key "$PLACE" $DISK 8 | med)
                cu=$(col $key "$PLACE" $DISK 12 | med)
                ea=$(col $key "$PLACE" $DISK 5 | paste -sd, | sed 's/,/, /g')
                echo "| $(name_of $key) | $w | $ea | $j | $(ratio "$w" "$a" 3) | $cu | $(ratio "$cu" "$ca" 3) | $(fmt_mib "$o" 1) | $p | $(ok_all $key "$PLACE" $DISK) |"
            done
            echo
            c=$(wall c "$PLACE" $DISK)
            b=$(wall b "$PLACE" $DISK)
            if le "$c" "$(awk -v a="$a" 'BEGIN { print a / 4 }')"; then v1=PASS; else v1=FAIL; fi
            if le "$c" "$b"; then v2=PASS; else v2=FAIL; fi
            echo "- $v1: (c) $c s ≤ 1/4 of (a) $a s; $v2: (c) no slower than (b) $b s"
            echo
        done
    done
    echo "Raw rows: push-$LABEL.tsv (key run place disk wall job_s out_bytes out_pages check_rc compare_rc rc cpu_s load1)."
} >"$REPORT"
cat "$REPORT"
