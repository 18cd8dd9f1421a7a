#!/bin/bash
# zcow benchmark: `make bench` runs this.  See bench/README.md.
#
#   bench/run.sh [--quick] [--runs N] [--tables A,B,C,D,E] [--workdir DIR]
#                [--zcow PATH] [--no-hdd] [--no-deps] [--no-chart]
#                [--workloads W1,W2,W3] [--label NAME]
#
#   --quick        smoke test: 1 run, small inputs, no 8 GiB input (~5 min)
#   --runs N       runs per figure (median), default 3 (quick: 1)
#   --tables LIST  which tables: A (upstream comparison), B (zcow against
#                  qemu-img), C (memory and scaling), D (restore), E (restoring
#                  a backup chain); default all
#   --workdir DIR  inputs and outputs (default $ZCOW_BENCH_DIR or
#                  /var/tmp/zcow-bench); inputs are reused when present
#   --zcow PATH    the zcow binary (default build/zcow)
#   --no-hdd       skip Table A's emulated-HDD target
#   --no-deps      do not run scripts/install-deps.sh --bench
#   --no-chart     no PNG
#   --workloads L  Table B only on these of W1,W2,W3 (default all)
#   --label NAME   results file DATE-HOST-NAME.md (e.g. for a partial rerun)
# Prints the tables as Markdown on stdout and writes them to
# bench/results/DATE-HOST.md (quick: DATE-HOST-quick.md) with a PNG chart.

set -u
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
. "$HERE/lib.sh"
. "$HERE/hdd.sh"
. "$HERE/chain.sh"
. "$HERE/make-inputs.sh"

QUICK=0 RUNS= TABLES=A,B,C,D,E HDD=1 DEPS=1 CHART=1 WLS=W1,W2,W3 LABEL=
LOAD0=$(cut -d" " -f1-3 /proc/loadavg)
WORK=${ZCOW_BENCH_DIR:-/var/tmp/zcow-bench}
ZCOW=${ZCOW:-$ROOT/build/zcow}
usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --runs) RUNS=${2:?}; shift ;;
        --runs=*) RUNS=${1#*=} ;;
        --tables) TABLES=${2:?}; shift ;;
        --tables=*) TABLES=${1#*=} ;;
        --workdir) WORK=${2:?}; shift ;;
        --workdir=*) WORK=${1#*=} ;;
        --zcow) ZCOW=${2:?}; shift ;;
        --zcow=*) ZCOW=${1#*=} ;;
        --no-hdd) HDD=0 ;;
        --no-deps) DEPS=0 ;;
        --no-chart) CHART=0 ;;
        --workloads) WLS=${2:?}; shift ;;
        --workloads=*) WLS=${1#*=} ;;
        --label) LABEL=${2:?}; shift ;;
        --label=*) LABEL=${1#*=} ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
[ -n "$RUNS" ] || { [ $QUICK = 1 ] && RUNS=1 || RUNS=3; }
case "$RUNS" in ''|*[!0-9]*|0) echo "--runs: a positive number" >&2; exit 2 ;; esac
TABLES=$(echo "$TABLES" | tr 'a-z' 'A-Z')
want() { case ",$TABLES," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
WLS=$(echo "$WLS" | tr 'a-z' 'A-Z')
wl() { case ",$WLS," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

# ---------------------------------------------------------------- sizes
if [ $QUICK = 1 ]; then
    W1=w1-64M W2=w2-256M W3=w3-64M HW1=w1-32M CSMALL=w1-64M CLARGE=w1-1G
    export W2_TREE=${W2_TREE:-/usr/share/doc}
    HDD_LIMIT=60 SLOW_HDD=20
else
    W1=w1-1000M W2=w2-4G W3=w3-1G HW1=w1-200M CSMALL=w1-1G CLARGE=w1-8G
    export W2_TREE=${W2_TREE:-/usr/share}
    HDD_LIMIT=150 SLOW_HDD=60
fi
LOCAL_LIMIT=600          # no run on the local disk may take longer than this

# ---------------------------------------------------------------- set-up
if [ $DEPS = 1 ]; then
    "$ROOT/scripts/install-deps.sh" --bench || warn "scripts/install-deps.sh --bench failed; going on with what is installed"
fi
for t in qemu-img fincore /usr/bin/time timeout numfmt mkfs.ext4 \
         $(want E && echo qemu-io qemu-nbd python3 tar); do
    command -v "$t" >/dev/null || { echo "missing $t: run scripts/install-deps.sh --bench" >&2; exit 1; }
done
HAVE_ZCOW=1
if ! [ -x "$ZCOW" ] || ! "$ZCOW" convert --help >/dev/null 2>&1; then
    warn "no working $ZCOW convert (run make): zcow rows are skipped"
    HAVE_ZCOW=0
fi
mkdir -p "$WORK" || exit 1
WORK=$(cd "$WORK" && pwd)
STAMP=$(date +%Y-%m-%d)-$(hostname -s)
[ $QUICK = 1 ] && STAMP=$STAMP-quick
[ -n "$LABEL" ] && STAMP=$STAMP-$LABEL
RESULTS=$HERE/results
mkdir -p "$RESULTS"
LOGDIR=$WORK/logs
mkdir -p "$LOGDIR"
RAW=$RESULTS/$STAMP.tsv
: > "$RAW"
REPORT=$LOGDIR/report.md
: > "$REPORT"
OUT=$WORK/out.qcow2
SLOW=0

rpt() { printf '%s\n' "$*" >> "$REPORT"; }

cleanup() {
    hdd_down "$WORK/hdd" 2>/dev/null
    rm -f "$WORK/out.qcow2" "$WORK/out.raw" "$WORK"/*.tmp "$WORK/e-zcow.raw" "$WORK/e-zcow16.raw" "$WORK/e-qemu.raw" "$WORK/e-qemunone.raw"
}
trap cleanup EXIT
trap 'echo "interrupted" >&2; exit 130' INT TERM

# inputs needed by the chosen tables
inputs=()
want A && inputs+=("$W1")
want A && [ $HDD = 1 ] && inputs+=("$HW1")
want B && { wl W1 && inputs+=("$W1"); wl W2 && inputs+=("$W2"); wl W3 && inputs+=("$W3"); }
want C && inputs+=("$CSMALL" "$CLARGE" "$W2")
want D && inputs+=("$W2")
want E && inputs+=("$W2")
inputs=($(printf '%s\n' "${inputs[@]}" | awk '!s[$0]++'))

# free space: the inputs still to make, plus the largest outputs at once
# (W3's qcow2 or dd copy, W2's restore, W2's zcow image) and 1 GiB slack
need=$(bash "$HERE/make-inputs.sh" --need "$WORK" "${inputs[@]}")
need=$((need + 2 * $(bytes "${W3#*-}") + $(cost "$W2") * 2 + (1 << 30)))
# Table E: the chain (a full backup, incrementals, the last point as raw)
# and three restores at once
want E && need=$((need + $(cost "$W2") * 5))
avail=$(df -B1 --output=avail "$WORK" | tail -n 1 | tr -d ' ')
if [ "$avail" -lt "$need" ]; then
    echo "too little free disk space in $WORK: need $(numfmt --to=iec "$need")B," \
         "have $(numfmt --to=iec "$avail")B (inputs: ${inputs[*]}); use --workdir or --quick" >&2
    exit 1
fi
log "work dir $WORK: $(numfmt --to=iec "$avail")B free, about $(numfmt --to=iec "$need")B needed"
for n in "${inputs[@]}"; do make_one "$WORK" "$n" || { echo "could not make input $n" >&2; exit 1; }; done
IN() { echo "$WORK/$1.raw"; }

# ---------------------------------------------------------------- helpers
# nruns KEY: successful (or timed-out) runs of KEY
nruns() { awk -F'\t' -v k="$1" '$1 == k && ($10 == 0 || $10 == 124) {n++} END {print n+0}' "$RAW"; }
# cell KEY: "wall s (P p)" for Table A; † = fewer runs than RUNS
cell() {
    local w p mark=""
    w=$(med "$1" wall)
    [ -z "$w" ] && { echo "n/a"; return; }
    [ "$(nruns "$1")" -lt "$RUNS" ] && [ "$w" != FAIL ] && mark="†"
    p=$(med "$1" out_pages)
    if [ "${w#>}" != "$w" ]; then echo "${w} s${mark}"; return; fi
    echo "$(fmt_s "$w") s (${p} p)${mark}"
}

zc() { "$ZCOW" convert "$@"; }

# ---------------------------------------------------------------- Table A
# tableA NAME DIR SRC LIMIT_OFF_NONE
tableA_measure() {
    local name=$1 dir=$2 src=$3 lim=$4 j t wc key out=$2/out.qcow2 l
    local -a targ
    for j in 8 64; do
        for t in none writeback drop; do
            case $t in
                none) targ=(-t none) ;;
                writeback) targ=(-t writeback) ;;
                drop) targ=(-t writeback --drop-pages) ;;
            esac
            for wc in off on; do
                key=A.$name.j$j.$t.$wc
                l=$LOCAL_LIMIT
                [ "$t" = none ] && [ "$wc" = off ] && l=$lim
                [ $HAVE_ZCOW = 1 ] &&
                    measure "$key" "$src" "$out" "$l" "$ZCOW" convert -q -o cluster_size=65536,compression_type=zlib \
                        -j "$j" "${targ[@]}" --write-cache=$wc "$src" "$out"
            done
        done
    done
    measure A.$name.qemu.none "$src" "$out" "$lim" qemu-img convert -c -O qcow2 -T none -t none "$src" "$out"
    measure A.$name.qemu.writeback "$src" "$out" "$LOCAL_LIMIT" qemu-img convert -c -O qcow2 -T none -t writeback "$src" "$out"
    rm -f "$out"
}

tableA_report() {
    local name=$1 title=$2
    rpt ""
    rpt "#### $title"
    rpt ""
    rpt "| target cache | cache off, -j 8 | cache on, -j 8 | cache off, -j 64 | cache on, -j 64 |"
    rpt "|---|---|---|---|---|"
    local t label
    for t in none writeback drop; do
        case $t in none) label='`-t none` (O_DIRECT)' ;; writeback) label='`-t writeback`' ;;
                   drop) label='`-t writeback --drop-pages`' ;; esac
        rpt "| $label | $(cell A.$name.j8.$t.off) | $(cell A.$name.j8.$t.on) | $(cell A.$name.j64.$t.off) | $(cell A.$name.j64.$t.on) |"
    done
    rpt "| qemu-img \`-t none\` | $(cell A.$name.qemu.none) | | | |"
    rpt "| qemu-img \`-t writeback\` | $(cell A.$name.qemu.writeback) | | | |"
    rpt ""
    # upstream's two comparisons, with 64 writers as QEMU's backup job
    local dn dc wn wc
    dn=$(med A.$name.j64.none.off wall); dc=$(med A.$name.j64.none.on wall)
    wn=$(med A.$name.j64.writeback.off wall); wc=$(med A.$name.j64.writeback.on wall)
    rpt "Upstream's shape (-j 64): O_DIRECT $(fmt_s "$dn") s -> $(fmt_s "$dc") s with the cache" \
        "(x$(ratio "$dn" "$dc" 1) faster); page cache $(fmt_s "$wn") s -> $(fmt_s "$wc") s" \
        "(x$(ratio "$wn" "$wc" 2)); O_DIRECT with the cache against the page cache without it:" \
        "$(ratio "$dc" "$wn" 2) of the time. Upstream: 300 s -> 4.4 s and 5.7 s -> 5.4 s; 4.4/5.7 = 0.77."
}

if want A; then
    log "Table A, local disk: $W1"
    tableA_measure local "$WORK" "$(IN "$W1")" "$LOCAL_LIMIT"
    tableA_report local "Local disk ($(findmnt -no SOURCE,FSTYPE -T "$WORK" | tr ' ' ' '), $W1)"
    if [ $HDD = 1 ]; then
        log "Table A, emulated HDD: setting up nbdkit (delay $HDD_DELAY) + nbdfuse + loop + ext4"
        if hdd_up "$WORK/hdd"; then
            SLOW=$SLOW_HDD
            tableA_measure hdd "$HDD_MNT" "$(IN "$HW1")" "$HDD_LIMIT"
            SLOW=0
            hdd_down "$WORK/hdd"
            tableA_report hdd "Emulated HDD (ext4 on loop on nbdfuse on nbdkit memory + delay ${HDD_DELAY}), $HW1 (smaller than W1: every request costs ~${HDD_DELAY})"
        else
            warn "Table A: emulated HDD could not be set up (see above): its part is skipped"
            rpt ""
            rpt "#### Emulated HDD: skipped (could not set up nbdkit/nbdfuse/loop/ext4; see the log)"
        fi
    fi
    rpt ""
    rpt "Cells: median wall time, (page-cache pages of the output left after the run)." \
        "'>N s': killed by timeout after N s. †: measured once (slower than ${SLOW_HDD} s on the HDD, not repeated)."
fi

# ---------------------------------------------------------------- Table B
CHECKS=()
verify_out() {   # verify_out LABEL SRC IMG: qemu-img check and compare of zcow's output
    local c m
    [ -e "$3" ] || { CHECKS+=("$1: no output to verify"); return; }
    qemu-img check -q "$3" >/dev/null 2>&1; c=$?
    qemu-img compare -q -f raw -F qcow2 "$2" "$3" >/dev/null 2>&1; m=$?
    CHECKS+=("$1: qemu-img check exit $c$([ $c = 0 ] && echo ' (clean)'), qemu-img compare exit $m$([ $m = 0 ] && echo ' (identical)')")
}

B_ROWS="qnone qwb qfastnone qfastwb zlib zstd ddr ddrw"
B_label() {
    case $1 in
        qnone) echo 'qemu-img `-c -O qcow2 -T none -t none`' ;;
        qwb) echo 'qemu-img `-c -O qcow2 -T none -t writeback`' ;;
        qfastnone) echo 'qemu-img `-c -O qcow2 -m 16 -W -T none -t none`' ;;
        qfastwb) echo 'qemu-img `-c -O qcow2 -m 16 -W -T none -t writeback`' ;;
        zlib) echo 'zcow (defaults: zlib)' ;;
        zstd) echo 'zcow `-o compression_type=zstd`' ;;
        ddr) echo 'dd read `iflag=direct bs=4M`' ;;
        ddrw) echo 'dd read+write `iflag=direct oflag=direct bs=4M`' ;;
    esac
}
tableB_measure() {
    local w=$1 src
    src=$(IN "$2")
    measure B.$w.ddr "$src" - "$LOCAL_LIMIT" dd if="$src" of=/dev/null iflag=direct bs=4M
    [ "$w" = W3 ] &&
        measure B.$w.ddrw "$src" "$WORK/out.raw" "$LOCAL_LIMIT" dd if="$src" of="$WORK/out.raw" iflag=direct oflag=direct bs=4M
    rm -f "$WORK/out.raw"
    measure B.$w.qnone "$src" "$OUT" "$LOCAL_LIMIT" qemu-img convert -c -O qcow2 -T none -t none "$src" "$OUT"
    measure B.$w.qwb "$src" "$OUT" "$LOCAL_LIMIT" qemu-img convert -c -O qcow2 -T none -t writeback "$src" "$OUT"
    measure B.$w.qfastnone "$src" "$OUT" "$LOCAL_LIMIT" qemu-img convert -c -O qcow2 -m 16 -W -T none -t none "$src" "$OUT"
    measure B.$w.qfastwb "$src" "$OUT" "$LOCAL_LIMIT" qemu-img convert -c -O qcow2 -m 16 -W -T none -t writeback "$src" "$OUT"
    if [ $HAVE_ZCOW = 1 ]; then
        measure B.$w.zlib "$src" "$OUT" "$LOCAL_LIMIT" "$ZCOW" convert "$src" "$OUT" &&
            verify_out "$w zcow zlib" "$src" "$OUT"
        measure B.$w.zstd "$src" "$OUT" "$LOCAL_LIMIT" "$ZCOW" convert -o compression_type=zstd "$src" "$OUT" &&
            verify_out "$w zcow zstd" "$src" "$OUT"
    fi
    rm -f "$OUT"
}
tableB_report() {
    local w=$1 in=$2 r qn qs dr drw wl
    qn=$(med B.$w.qnone wall); qs=$(med B.$w.qnone out)
    dr=$(med B.$w.ddr wall); drw=$(med B.$w.ddrw wall)
    rpt ""
    rpt "#### $w: $in ($(numfmt --to=iec --suffix=B "$(fsize "$(IN "$in")")"))"
    rpt ""
    rpt "| command | wall s | CPU s | peak RSS MiB | output MiB | src pages | out pages | time ÷ qemu-img -t none | time ÷ dd read | time ÷ dd r+w | size ÷ qemu-img |"
    rpt "|---|---|---|---|---|---|---|---|---|---|---|"
    for r in $B_ROWS; do
        wl=$(med B.$w.$r wall)
        [ -n "$wl" ] || continue
        rpt "| $(B_label $r) | $(fmt_s "$wl") | $(fmt_s "$(med B.$w.$r cpu)") | $(fmt_mib "$(med B.$w.$r rss)" 1024) |" \
            "$(fmt_mib "$(med B.$w.$r out)" 1) | $(med B.$w.$r src_pages) | $(med B.$w.$r out_pages) |" \
            "$(ratio "$wl" "$qn" 3) | $(ratio "$wl" "$dr") | $( [ -n "$drw" ] && ratio "$wl" "$drw" || echo -) |" \
            "$( isnum "$(med B.$w.$r out)" && ratio "$(med B.$w.$r out)" "$qs" 3 || echo -) |"
    done
}

PASSES=0 FAILS=0
verdict() {   # verdict OK TEXT
    if [ "$1" = 1 ]; then rpt "- PASS: $2"; PASSES=$((PASSES + 1))
    else rpt "- FAIL: $2"; FAILS=$((FAILS + 1)); fi
}
chk() { "$@" && echo 1 || echo 0; }
mul() { isnum "$1" && awk -v a="$1" -v b="$2" 'BEGIN{printf "%.4f", a * b}' || echo "$1"; }

if want B; then
    for w in W1 W2 W3; do wl $w && tableB_measure $w "${!w}"; done
    rpt ""
    rpt "### Table B: zcow against qemu-img ($(qemu-img --version | head -n 1 | awk '{print $3}'))"
    for w in W1 W2 W3; do wl $w && tableB_report $w "${!w}"; done
    rpt ""
    rpt "Medians of $RUNS run(s). CPU = user + sys. Pages: page-cache pages (4 KiB) of the source and the output left after the run (fincore)."
    if [ ${#CHECKS[@]} -gt 0 ]; then
        rpt ""
        rpt "Correctness of zcow's outputs (last run of each):"
        for c in "${CHECKS[@]}"; do rpt "- $c"; done
    fi
fi

# ---------------------------------------------------------------- Table C
if want C && [ $HAVE_ZCOW = 1 ]; then
    measure C.small "$(IN "$CSMALL")" "$OUT" "$LOCAL_LIMIT" "$ZCOW" convert "$(IN "$CSMALL")" "$OUT"
    measure C.large "$(IN "$CLARGE")" "$OUT" "$LOCAL_LIMIT" "$ZCOW" convert "$(IN "$CLARGE")" "$OUT"
    measure C.j1 "$(IN "$W2")" "$OUT" "$LOCAL_LIMIT" "$ZCOW" convert -j 1 "$(IN "$W2")" "$OUT"
    measure C.j2 "$(IN "$W2")" "$OUT" "$LOCAL_LIMIT" "$ZCOW" convert -j 2 "$(IN "$W2")" "$OUT"
    NP=$(nproc)
    [ "$NP" -gt 2 ] && measure C.jN "$(IN "$W2")" "$OUT" "$LOCAL_LIMIT" "$ZCOW" convert -j "$NP" "$(IN "$W2")" "$OUT"
    rm -f "$OUT"
    rpt ""
    rpt "### Table C: memory as the image grows, and scaling with threads"
    rpt ""
    rpt "| run | wall s | CPU s | peak RSS MiB | output MiB | src pages | out pages |"
    rpt "|---|---|---|---|---|---|---|"
    for k in small:"zcow, $CSMALL of 0x01" large:"zcow, $CLARGE of 0x01" j1:"zcow -j 1, $W2" j2:"zcow -j 2, $W2" jN:"zcow -j $NP, $W2"; do
        key=C.${k%%:*}
        [ -n "$(med $key wall)" ] || continue
        rpt "| ${k#*:} | $(fmt_s "$(med $key wall)") | $(fmt_s "$(med $key cpu)") | $(fmt_mib "$(med $key rss)" 1024) |" \
            "$(fmt_mib "$(med $key out)" 1) | $(med $key src_pages) | $(med $key out_pages) |"
    done
    rpt ""
    rpt "Peak RSS $CLARGE ÷ $CSMALL: $(ratio "$(med C.large rss)" "$(med C.small rss)"); speed-up -j 2 ÷ -j 1 on $W2: $(ratio "$(med C.j1 wall)" "$(med C.j2 wall)") (CPU -j 1: $(fmt_s "$(med C.j1 cpu)") s over $(fmt_s "$(med C.j1 wall)") s wall = $(ratio "$(med C.j1 cpu)" "$(med C.j1 wall)") cores busy)."
fi

# ---------------------------------------------------------------- Table D
RESTORE_NOTE=""
if want D && [ $HAVE_ZCOW = 1 ]; then
    # does this zcow restore?  a 1 MiB image from qemu-img, byte for byte
    t=$WORK/restore-probe
    head -c 1M /dev/urandom > "$t.raw"
    qemu-img convert -q -c -O qcow2 "$t.raw" "$t.qcow2" 2>/dev/null
    if "$ZCOW" convert -q -O raw "$t.qcow2" "$t.out" >/dev/null 2>&1 && cmp -s "$t.raw" "$t.out"; then
        W2Q=$WORK/$W2.zcow.qcow2
        log "Table D: making $W2Q with zcow (defaults)"
        rm -f "$W2Q"
        "$ZCOW" convert -q "$(IN "$W2")" "$W2Q"
        RO=$WORK/out.raw
        declare -A DALLOC
        measure D.zcow "$W2Q" "$RO" "$LOCAL_LIMIT" "$ZCOW" convert -O raw "$W2Q" "$RO" &&
            { DALLOC[zcow]=$(du -B1 "$RO" | cut -f1)
              cmp -s "$(IN "$W2")" "$RO" && RESTORE_NOTE="zcow's restore is identical to $W2 (cmp)" ||
              RESTORE_NOTE="zcow's restore DIFFERS from $W2 (cmp)"; }
        measure D.qemu "$W2Q" "$RO" "$LOCAL_LIMIT" qemu-img convert -O raw "$W2Q" "$RO" &&
            DALLOC[qemu]=$(du -B1 "$RO" | cut -f1)
        measure D.qemunone "$W2Q" "$RO" "$LOCAL_LIMIT" qemu-img convert -O raw -T none -t none "$W2Q" "$RO" &&
            DALLOC[qemunone]=$(du -B1 "$RO" | cut -f1)
        rm -f "$RO" "$W2Q"
        rpt ""
        rpt "### Table D: restore of zcow's $W2 image to raw"
        rpt ""
        rpt "| command | wall s | CPU s | peak RSS MiB | src pages | out pages | allocated MiB | speed-up of zcow |"
        rpt "|---|---|---|---|---|---|---|---|"
        for k in zcow:'zcow `convert -O raw`' qemu:'qemu-img `convert -O raw`' qemunone:'qemu-img `convert -O raw -T none -t none`'; do
            key=D.${k%%:*}
            rpt "| ${k#*:} | $(fmt_s "$(med $key wall)") | $(fmt_s "$(med $key cpu)") | $(fmt_mib "$(med $key rss)" 1024) |" \
                "$(med $key src_pages) | $(med $key out_pages) | $(fmt_mib "${DALLOC[${k%%:*}]:-}" 1) |" \
                "$(ratio "$(med $key wall)" "$(med D.zcow wall)") |"
        done
        [ -n "$RESTORE_NOTE" ] && { rpt ""; rpt "$RESTORE_NOTE."; }
    else
        rpt ""
        rpt "### Table D: skipped (\`zcow convert -O raw\` does not restore a qemu-img image correctly yet)"
    fi
    rm -f "$t.raw" "$t.qcow2" "$t.out"
fi


# ---------------------------------------------------------------- Table E
# Restoring a backup chain (issue 13): W2's full backup and 10 incrementals
# taken over NBD from a dirty bitmap (bench/chain.sh), and issue 13's
# 16-deep chain as QEMU writes it.  The commands run side by side: each
# round runs every row once (zcow first in odd rounds, qemu-img first in
# even ones), RUNS rounds; the 16-deep rows E_D16_REPS times a round.
# After each pair, zcow's output is compared with qemu-img's of the same
# image and with what the image must read as (qemu-img compare: holes and
# written zeros read alike).
E_D16_REPS=3
ECH=$WORK/chain-$W2      # the chains, one set per size of W2 (--quick has its own)
E_CHECKS=() E_LOADS=() E_BAD=0 E_NCMP=0
e_same() {   # e_same LABEL A B: qemu-img compare of two raw files
    local out
    E_NCMP=$((E_NCMP + 1))
    if [ ! -e "$2" ] || [ ! -e "$3" ]; then
        E_BAD=$((E_BAD + 1)); E_CHECKS+=("$1: missing output ($(basename "$2") or $(basename "$3"))"); return
    fi
    if ! out=$(qemu-img compare -f raw -F raw "$2" "$3" 2>&1); then
        E_BAD=$((E_BAD + 1)); E_CHECKS+=("$1: DIFFERS: $(echo "$out" | head -n 2 | tr '\n' ' ')")
    fi
}
E_label() {
    case $1 in
        top.zcow) echo "zcow \`convert -O raw inc$CHAIN_INCS.qcow2\` (1)" ;;
        top.zcowj16) echo "zcow \`convert -O raw -j 16 inc$CHAIN_INCS.qcow2\` (16 reads in flight, not 4)" ;;
        top.qemu) echo "qemu-img \`convert -O raw inc$CHAIN_INCS.qcow2\` (2)" ;;
        top.qemunone) echo "qemu-img \`convert -O raw -T none -t none inc$CHAIN_INCS.qcow2\`" ;;
        full.zcow) echo 'zcow `convert -O raw full.qcow2` (3)' ;;
        full.qemu) echo 'qemu-img `convert -O raw full.qcow2`' ;;
        d16.zcow) echo "zcow \`convert -O raw c$CHAIN_DEPTH.qcow2\`" ;;
        d16.qemu) echo "qemu-img \`convert -O raw c$CHAIN_DEPTH.qcow2\`" ;;
        d16w.zcow) echo "zcow \`convert -O raw c$CHAIN_DEPTH.qcow2\`, warm cache" ;;
        d16w.qemu) echo "qemu-img \`convert -O raw c$CHAIN_DEPTH.qcow2\`, warm cache" ;;
        d16w.zcowwb) echo "zcow \`convert -O raw -T writeback -t writeback c$CHAIN_DEPTH.qcow2\`, warm cache" ;;
    esac
}
# e_run KEY RUN IMG OUT CMD...: one timed run; remembers the allocated bytes
declare -A EALLOC
e_run() {
    local key=$1 r=$2 img=$3 out=$4; shift 4
    measure_once "E.$key" "$r" "$img" "$out" "$LOCAL_LIMIT" "$@" &&
        EALLOC[$key]=$(du -B1 "$out" | cut -f1)
}
tableE_measure() {
    local r i order k EB=$ECH/backup EQ=$ECH/qemu16
    local EZ=$WORK/e-zcow.raw EZ16=$WORK/e-zcow16.raw EQR=$WORK/e-qemu.raw EQN=$WORK/e-qemunone.raw
    local top=$EB/inc$CHAIN_INCS.qcow2 truth=$EB/p$CHAIN_INCS.raw d16=$EQ/c$CHAIN_DEPTH.qcow2
    for k in top.zcow top.zcowj16 top.qemu top.qemunone full.zcow full.qemu d16.zcow d16.qemu d16w.zcow d16w.qemu d16w.zcowwb; do forget "E.$k"; done
    for r in $(seq 1 "$RUNS"); do
        E_LOADS+=("$(cut -d' ' -f1 /proc/loadavg)")
        log "Table E: round $r of $RUNS (load $(cut -d' ' -f1-3 /proc/loadavg))"
        if [ $((r % 2)) = 1 ]; then order="zcow qemu"; else order="qemu zcow"; fi
        for k in $order; do
            case $k in
                zcow) e_run top.zcow "$r" "$top" "$EZ" "$ZCOW" convert -O raw "$top" "$EZ"
                      e_run top.zcowj16 "$r" "$top" "$EZ16" "$ZCOW" convert -O raw -j 16 "$top" "$EZ16" ;;
                qemu) e_run top.qemu "$r" "$top" "$EQR" qemu-img convert -O raw "$top" "$EQR"
                      e_run top.qemunone "$r" "$top" "$EQN" qemu-img convert -O raw -T none -t none "$top" "$EQN" ;;
            esac
        done
        e_same "round $r: zcow restore of inc$CHAIN_INCS against qemu-img's" "$EZ" "$EQR"
        e_same "round $r: zcow restore of inc$CHAIN_INCS against qemu-img -T none -t none's" "$EZ" "$EQN"
        e_same "round $r: zcow restore of inc$CHAIN_INCS against the disk at that point" "$EZ" "$truth"
        e_same "round $r: zcow -j 16 restore of inc$CHAIN_INCS against qemu-img's" "$EZ16" "$EQR"
        rm -f "$EZ16"
        [ "$r" = 1 ] && e_same "qemu-img restore of inc$CHAIN_INCS against the disk at that point" "$EQR" "$truth"
        for k in $order; do
            case $k in
                zcow) e_run full.zcow "$r" "$EB/full.qcow2" "$EZ" "$ZCOW" convert -O raw "$EB/full.qcow2" "$EZ" ;;
                qemu) e_run full.qemu "$r" "$EB/full.qcow2" "$EQR" qemu-img convert -O raw "$EB/full.qcow2" "$EQR" ;;
            esac
        done
        e_same "round $r: zcow restore of full against qemu-img's" "$EZ" "$EQR"
        e_same "round $r: zcow restore of full against $W2" "$EZ" "$(IN "$W2")"
        for i in $(seq 1 $E_D16_REPS); do
            for k in $order; do
                case $k in
                    zcow) e_run d16.zcow "$r.$i" "$d16" "$EZ" "$ZCOW" convert -O raw "$d16" "$EZ" ;;
                    qemu) e_run d16.qemu "$r.$i" "$d16" "$EQR" qemu-img convert -O raw "$d16" "$EQR" ;;
                esac
            done
            e_same "round $r.$i: zcow restore of c$CHAIN_DEPTH against qemu-img's" "$EZ" "$EQR"
        done
        # the same with the chain and both programs in the page cache (the
        # runs above read them): what the chain walk itself costs
        for i in $(seq 1 $E_D16_REPS); do
            for k in $order; do
                case $k in
                    zcow) NO_DROP=1 e_run d16w.zcow "$r.$i" "$d16" "$EZ" "$ZCOW" convert -O raw "$d16" "$EZ" ;;
                    qemu) NO_DROP=1 e_run d16w.qemu "$r.$i" "$d16" "$EQR" qemu-img convert -O raw "$d16" "$EQR" ;;
                esac
            done
            e_same "round $r.$i: zcow restore of c$CHAIN_DEPTH (warm) against qemu-img's" "$EZ" "$EQR"
            # zcow through the page cache, as qemu-img reads and writes
            NO_DROP=1 e_run d16w.zcowwb "$r.$i" "$d16" "$EZ" "$ZCOW" convert -O raw -T writeback -t writeback "$d16" "$EZ"
            e_same "round $r.$i: zcow -T writeback -t writeback restore of c$CHAIN_DEPTH (warm) against qemu-img's" "$EZ" "$EQR"
        done
    done
    E_LOADS+=("$(cut -d' ' -f1 /proc/loadavg)")
    rm -f "$EZ" "$EQR" "$EQN"
}
tableE_report() {
    local k wl n lo hi
    rpt ""
    rpt "### Table E: restoring a backup chain (issue 13)"
    rpt ""
    rpt "Chain: \`zcow convert $W2.raw full.qcow2\`, then $CHAIN_INCS incrementals, each after qemu-io has rewritten" \
        "${CHAIN_PCT}% of the disk (64 KiB clusters in runs of 1-16, random places over the full's data, seed $CHAIN_SEED," \
        "data from a tar of $W2_TREE): \`qemu-nbd -r -B b0\` of the disk on a Unix socket," \
        "\`zcow convert --bitmap b0 -B inc(k-1).qcow2 -F qcow2 nbd+unix://... inck.qcow2\`, bitmap cleared" \
        "(bench/chain.sh; $(sed -n 2p "$ECH/chain.ok"))." \
        "16-deep: issue 13's QEMU chain, c0 (1 GiB: 8 MiB at 0, 4 MiB at 512 MiB) and c1..c$CHAIN_DEPTH, each with 64 KiB at 3 MiB," \
        "\`write -z\` of 128 KiB at 5 MiB and 192 KiB at 601 MiB."
    rpt ""
    while IFS= read -r k; do rpt "$k"; done < "$ECH/chain.info"
    rpt ""
    rpt "| command | runs | wall s | wall s, each run | CPU s | peak RSS MiB | out pages | allocated MiB | time ÷ zcow (1); 16-deep: ÷ zcow |"
    rpt "|---|---|---|---|---|---|---|---|---|"
    local ref
    ref=$(med E.top.zcow wall_fine)
    for k in top.zcow top.zcowj16 top.qemu top.qemunone full.zcow full.qemu d16.zcow d16.qemu d16w.zcow d16w.qemu d16w.zcowwb; do
        wl=$(med E.$k wall_fine)
        [ -n "$wl" ] || continue
        case $k in d16.*) ref=$(med E.d16.zcow wall_fine) ;; d16w.*) ref=$(med E.d16w.zcow wall_fine) ;; esac
        n=$(nruns E.$k)
        rpt "| $(E_label $k) | $n | $(E_fmt "$wl") | $(E_each E.$k) | $(fmt_s "$(med E.$k cpu)") | $(fmt_mib "$(med E.$k rss)" 1024) |" \
            "$(med E.$k out_pages) | $(fmt_mib "${EALLOC[$k]:-}" 1) | $(ratio "$wl" "$ref") |"
    done
    lo=$(printf '%s\n' "${E_LOADS[@]}" | sort -n | head -n 1); hi=$(printf '%s\n' "${E_LOADS[@]}" | sort -n | tail -n 1)
    rpt ""
    rpt "Wall: median of the runs, timed by the shell (0.1 ms steps; /usr/bin/time's 10 ms steps are too coarse for the" \
        "16-deep chain); page cache dropped before each run but the warm-cache ones; the 16-deep rows ran $E_D16_REPS times a round" \
        "each (cold, the program and the chain read from disk; warm, both in the page cache: the chain walk itself)." \
        "CPU = user + sys; out pages: page-cache pages of the output left after the run (qemu-img's restore has not reached" \
        "the disk when it exits); allocated: \`du\` of the sparse output."
    rpt "Ratios: (1) ÷ (2) = $(ratio "$(med E.top.zcow wall_fine)" "$(med E.top.qemu wall_fine)") (CPU" \
        "$(ratio "$(med E.top.zcow cpu)" "$(med E.top.qemu cpu)")); (1) ÷ (3) = $(ratio "$(med E.top.zcow wall_fine)" "$(med E.full.zcow wall_fine)")" \
        "(CPU $(ratio "$(med E.top.zcow cpu)" "$(med E.full.zcow cpu)")); qemu-img's own chain ÷ full:" \
        "$(ratio "$(med E.top.qemu wall_fine)" "$(med E.full.qemu wall_fine)"); 16-deep, zcow ÷ qemu-img:" \
        "$(ratio "$(med E.d16.zcow wall_fine)" "$(med E.d16.qemu wall_fine)") (warm cache:" \
        "$(ratio "$(med E.d16w.zcow wall_fine)" "$(med E.d16w.qemu wall_fine)"); through the page cache as qemu-img:" \
        "$(ratio "$(med E.d16w.zcowwb wall_fine)" "$(med E.d16w.qemu wall_fine)"))."
    rpt "Load average (1 min) at the start of each round and at the end: ${E_LOADS[*]} (min $lo, max $hi, on $(nproc) CPUs)."
    rpt ""
    if [ "$E_BAD" = 0 ]; then
        rpt "Outputs: all $E_NCMP comparisons identical (every zcow restore against qemu-img's restore of the same image," \
            "inc$CHAIN_INCS's also against the disk as it was, the full's against $W2; \`qemu-img compare -f raw -F raw\`)."
    else
        rpt "Outputs: $E_BAD of $E_NCMP comparisons FAILED:"
        for k in "${E_CHECKS[@]}"; do rpt "- $k"; done
    fi
}
# E_fmt S: seconds, 3 significant digits (4 decimals below 0.1 s)
E_AWKFMT='function f(x) { return x >= 10 ? sprintf("%.1f", x) : x >= 0.1 ? sprintf("%.2f", x) : sprintf("%.4f", x) }'
E_fmt() {
    isnum "$1" || { echo "${1:-n/a}"; return; }
    awk -v x="$1" "$E_AWKFMT"' BEGIN { print f(x) }'
}
# E_each KEY: every run's wall time, in run order
E_each() {
    awk -F'\t' -v k="$1" "$E_AWKFMT"' $1 == k && $10 == 0 { printf "%s%s", (n++ ? " " : ""), f($11) } END { print "" }' "$RAW"
}

if want E && [ $HAVE_ZCOW = 1 ]; then
    log "Table E: backup chains in $ECH (bench/chain.sh)"
    if chain_make "$ECH" "$(IN "$W2")" "$ZCOW"; then
        tableE_measure
        tableE_report
    else
        rpt ""
        rpt "### Table E: skipped (the chains could not be made; see the log)"
    fi
fi

# ---------------------------------------------------------------- targets
rpt ""
rpt "### Targets (issue 3; Table E: issue 13), from this run"
rpt ""
if want B && [ $HAVE_ZCOW = 1 ]; then
  if wl W1; then
    z=$(med B.W1.zlib wall); q=$(med B.W1.qnone wall); d=$(med B.W1.ddr wall)
    verdict "$(chk le "$z" "$(mul "$q" 0.1)")" "W1: zcow $(fmt_s "$z") s ≤ 1/10 of qemu-img -t none $(fmt_s "$q") s (ratio $(ratio "$z" "$q" 3))"
    verdict "$(chk le "$z" "$(mul "$d" 1.3)")" "W1: zcow $(fmt_s "$z") s ≤ 1.3 × dd read $(fmt_s "$d") s (ratio $(ratio "$z" "$d"))"
  fi
  if wl W2; then
    z=$(med B.W2.zlib wall); s=$(med B.W2.zstd wall); q=$(med B.W2.qnone wall)
    zo=$(med B.W2.zlib out); so=$(med B.W2.zstd out); qo=$(med B.W2.qnone out)
    verdict "$(chk le "$z" "$(mul "$q" 0.125)")" "W2: zcow zlib $(fmt_s "$z") s ≤ 1/8 of qemu-img -t none $(fmt_s "$q") s (ratio $(ratio "$z" "$q" 3))"
    verdict "$(chk le "$zo" "$(mul "$qo" 1.05)")" "W2: zcow zlib output $(fmt_mib "$zo" 1) MiB ≤ 1.05 × qemu-img's $(fmt_mib "$qo" 1) MiB (ratio $(ratio "$zo" "$qo" 3))"
    verdict "$(chk le "$s" "$(mul "$q" 0.125)")" "W2: zcow zstd $(fmt_s "$s") s ≤ 1/8 of qemu-img -t none (ratio $(ratio "$s" "$q" 3))"
    verdict "$(chk le "$so" "$qo")" "W2: zcow zstd output $(fmt_mib "$so" 1) MiB ≤ qemu-img's zlib output $(fmt_mib "$qo" 1) MiB (ratio $(ratio "$so" "$qo" 3))"
  fi
  if wl W3; then
    z=$(med B.W3.zlib wall); d=$(med B.W3.ddrw wall)
    verdict "$(chk le "$z" "$(mul "$d" 1.5)")" "W3: zcow $(fmt_s "$z") s ≤ 1.5 × dd read+write $(fmt_s "$d") s (ratio $(ratio "$z" "$d"))"
  fi
    for w in W1 W2 W3; do
        wl $w || continue
        sp=$(med B.$w.zlib src_pages); op=$(med B.$w.zlib out_pages)
        verdict "$(chk [ "$sp" = 0 -a "$op" = 0 ])" "$w: page-cache pages after zcow's default run: source $sp, output $op (target 0 and 0)"
    done
    maxrss=0
    for w in W1 W2 W3; do wl $w || continue; r=$(med B.$w.zlib rss); isnum "$r" && [ "${r%.*}" -gt "$maxrss" ] && maxrss=${r%.*}; done
    verdict "$(chk le "$maxrss" 65536)" "peak RSS at the default settings (W1-W3): $(fmt_mib "$maxrss" 1024) MiB ≤ 64 MiB"
fi
if want C && [ $HAVE_ZCOW = 1 ]; then
    a=$(med C.small rss); b=$(med C.large rss)
    verdict "$(chk le "$b" "$(mul "$a" 1.1)")" "memory flat: peak RSS $CLARGE $(fmt_mib "$b" 1024) MiB ≤ 1.1 × $CSMALL $(fmt_mib "$a" 1024) MiB"
    r=$(ratio "$(med C.j1 wall)" "$(med C.j2 wall)")
    verdict "$(chk le 1.7 "$r")" "scaling: -j 2 ÷ -j 1 speed-up on $W2 $r ≥ 1.7"
fi
if want D && [ -n "$(med D.zcow wall)" ]; then
    r=$(ratio "$(med D.qemu wall)" "$(med D.zcow wall)")
    verdict "$(chk le 4 "$r")" "restore: zcow $r× faster than qemu-img convert -O raw (target ≥ 4×)"
fi
if want E && [ -n "$(med E.top.zcow wall_fine)" ]; then
    z=$(med E.top.zcow wall_fine); q=$(med E.top.qemu wall_fine); f=$(med E.full.zcow wall_fine)
    verdict "$(chk le "$z" "$(mul "$q" 0.5)")" "chain: zcow restores inc$CHAIN_INCS in $(E_fmt "$z") s ≤ 1/2 of qemu-img's $(E_fmt "$q") s (ratio $(ratio "$z" "$q"))"
    verdict "$(chk le "$z" "$(mul "$f" 1.2)")" "chain: zcow restores inc$CHAIN_INCS in $(E_fmt "$z") s ≤ 1.2 × the full alone $(E_fmt "$f") s (ratio $(ratio "$z" "$f"))"
    z=$(med E.d16.zcow wall_fine); q=$(med E.d16.qemu wall_fine)
    verdict "$(chk le "$z" "$q")" "chain: zcow restores the 16-deep QEMU chain in $(E_fmt "$z") s ≤ qemu-img's $(E_fmt "$q") s (ratio $(ratio "$z" "$q"))"
    z=$(med E.d16w.zcow wall_fine); q=$(med E.d16w.qemu wall_fine)
    verdict "$(chk le "$z" "$q")" "chain: the same with a warm page cache, $(E_fmt "$z") s ≤ qemu-img's $(E_fmt "$q") s (ratio $(ratio "$z" "$q"))"
    verdict "$(chk [ "$E_BAD" = 0 ])" "chain: every zcow restore identical to qemu-img's ($((E_NCMP - E_BAD)) of $E_NCMP comparisons)"
fi
rpt ""
rpt "$PASSES passed, $FAILS failed"

# ---------------------------------------------------------------- chart
PNG=""
if [ $CHART = 1 ] && want B && command -v gnuplot >/dev/null; then
    DAT=$LOGDIR/tableB.dat
    {
        printf 'workload'
        for r in qnone qwb qfastnone qfastwb zlib zstd ddr; do printf '\t"%s"' "$(B_label $r | tr -d '`' | sed 's/qemu-img -c -O qcow2 /qemu-img /; s/ iflag=direct bs=4M//')"; done
        printf '\n'
        for w in W1 W2 W3; do
            printf '%s' "$w"
            for r in qnone qwb qfastnone qfastwb zlib zstd ddr; do v=$(med B.$w.$r wall); isnum "$v" || v=NaN; printf '\t%s' "$v"; done
            printf '\n'
        done
    } > "$DAT"
    PNG=$RESULTS/$STAMP.png
    gnuplot -e "datafile='$DAT'; outfile='$PNG'; titletext='zcow vs qemu-img: wall time, median of $RUNS run(s), $(hostname -s), $(nproc) CPUs'" \
        "$HERE/plot.gp" 2>"$LOGDIR/gnuplot.err" || { warn "gnuplot failed: $(head -c 300 "$LOGDIR/gnuplot.err")"; PNG=""; }
fi

# ---------------------------------------------------------------- report
if [ -n "${ZCOW_COMMIT:-}" ]; then
    commit=$ZCOW_COMMIT     # e.g. a binary built elsewhere from a known commit
else
    commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
    dirty=$(git -C "$ROOT" status --porcelain -- lib cli include Makefile 2>/dev/null | wc -l)
    [ "$dirty" -gt 0 ] && commit="$commit (+ uncommitted changes in $dirty files of lib/ cli/ include/)"
fi
dev=$(findmnt -no SOURCE -T "$WORK"); fstype=$(findmnt -no FSTYPE -T "$WORK")
bdev=$(basename "$(readlink -f "$dev" 2>/dev/null || echo "$dev")")
rot=$(cat "/sys/class/block/$bdev/queue/rotational" 2>/dev/null || echo "?")
FINAL=$RESULTS/$STAMP.md
{
    echo "# zcow benchmark, $(date '+%Y-%m-%d %H:%M %Z'), $(hostname -s)$( [ $QUICK = 1 ] && echo ' (quick smoke test: small inputs, 1 run; not for quoting)')"
    echo ""
    echo "- machine: $(nproc) CPUs, $(lscpu | sed -n 's/^Model name: *//p' | head -n 1), $(free -g | awk '/^Mem:/{print $2}') GiB RAM, kernel $(uname -r)"
    echo "- work dir: $WORK on $dev ($fstype, rotational=$rot), $(numfmt --to=iec --suffix=B "$avail") free at start"
    echo "- $(qemu-img --version | head -n 1); $(dd --version | head -n 1)"
    echo "- zcow: $ZCOW, git commit $commit"
    echo "- load average at start: $LOAD0; at end: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine distorts the figures)"
    echo "- command: bench/run.sh$( [ $QUICK = 1 ] && echo ' --quick') --runs $RUNS --tables $TABLES$( [ "$WLS" != W1,W2,W3 ] && echo " --workloads $WLS")$( [ $HDD = 0 ] && echo ' --no-hdd')"
    echo "- caches dropped before each run: $( [ "$DROP_OK" = 1 ] && echo yes || echo 'NO (not root?): warm-cache figures')"
    echo "- inputs: W1 = $W1 of 0x01, W2 = $W2 raw ext4 made with mkfs.ext4 -d $W2_TREE, W3 = $W3 of random bytes; HDD: $HW1 of 0x01; C: $CSMALL, $CLARGE of 0x01$(want E && echo "; E: $W2's full backup + $CHAIN_INCS incrementals of ${CHAIN_PCT}% (bench/chain.sh), issue 13's 16-deep QEMU chain")"
    echo "- raw per-run figures: $(basename "$RAW")$( [ -n "$PNG" ] && echo "; chart: $(basename "$PNG")")"
    if want A; then
        echo ""
        echo "### Table A: the upstream comparison (64 KiB clusters, zlib)"
    fi
    cat "$REPORT"
    [ -n "$PNG" ] && { echo ""; echo "![Table B wall times]($(basename "$PNG"))"; }
} > "$FINAL"
cat "$FINAL"
log "written $FINAL${PNG:+ and $PNG}"
