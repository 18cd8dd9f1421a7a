#!/bin/bash
# Helpers for bench/run.sh: measurement of one command, medians, formatting.
# Sourced, not run.  Uses: RUNS, RAW (TSV of every run), LOGDIR, DROP_OK.
#
# RAW columns (tab separated):
#   key run wall user sys rss_kib out_bytes src_pages out_pages rc wall_fine
# wall: /usr/bin/time's (10 ms steps); wall_fine: the same run timed by the
# shell around /usr/bin/time (0.1 ms steps, ~1 ms of fork and exec more).
# bench/backup.sh's rows have three more:
#   qemu_cpu (s of the running QEMU's CPU during the run) load1 dir_pages

log()  { echo "== $*" >&2; }
warn() { echo "!! $*" >&2; }

# drop_caches: sync and drop the page cache; remembers a failure (not root,
# read-only /proc) in DROP_OK=0, warns once and goes on.
DROP_OK=${DROP_OK:-1}
_drop_warned=0
drop_caches() {
    sync
    if ! { echo 3 > /proc/sys/vm/drop_caches; } 2>/dev/null; then
        DROP_OK=0
        if [ $_drop_warned = 0 ]; then
            warn "cannot drop caches (sync; echo 3 > /proc/sys/vm/drop_caches needs root):" \
                 "figures are measured with warm caches"
            _drop_warned=1
        fi
    fi
}

# pages FILE: page-cache pages of FILE resident now (empty if no file)
pages() {
    [ -e "$1" ] || { echo "-"; return; }
    fincore -n -o PAGES "$1" 2>/dev/null | awk 'NR==1{print $1+0}' || echo "?"
}

# fsize FILE: bytes of FILE ("-" if missing)
fsize() { stat -c %s "$1" 2>/dev/null || echo "-"; }

# forget KEY: drop earlier runs of KEY from RAW (a rerun in the same RAW)
forget() {
    if [ -s "$RAW" ]; then
        awk -F'\t' -v k="$1" '$1 != k' "$RAW" > "$RAW.tmp" && mv "$RAW.tmp" "$RAW"
    fi
}

# measure_once KEY RUN SRC OUT LIMIT CMD...
#   One run of CMD: OUT deleted, caches dropped (unless NO_DROP=1), CMD timed as a whole
#   process with /usr/bin/time (LIMIT: seconds before `timeout` kills it,
#   0 = none), a row appended to RAW.  Sets M_RC (CMD's exit status, 124 =
#   timed out), M_WALL, M_USER, M_SYS, M_RSS.
measure_once() {
    local key=$1 r=$2 src=$3 out=$4 limit=$5; shift 5
    local tf lf t0 t1
    local -a pre=()
    [ "$limit" != 0 ] && pre=(timeout "$limit")
    LIMIT_OF[$key]=$limit
    [ "$out" != - ] && rm -f "$out"
    if [ "${NO_DROP:-0}" = 1 ]; then sync; else drop_caches; fi
    tf=$LOGDIR/time.$$
    lf=$LOGDIR/$(echo "$key" | tr -c 'A-Za-z0-9._=-' '_').$r.log
    echo "+ $*" > "$lf"
    t0=$EPOCHREALTIME
    /usr/bin/time -f '%e %U %S %M' -o "$tf" "${pre[@]}" "$@" >>"$lf" 2>&1
    M_RC=$?
    t1=$EPOCHREALTIME
    read -r M_WALL M_USER M_SYS M_RSS < <(tail -n 1 "$tf")
    rm -f "$tf"
    # /usr/bin/time prefixes "Command exited with non-zero status N"
    case "$M_WALL" in ''|*[!0-9.]*) M_WALL=0; M_USER=0; M_SYS=0; M_RSS=0 ;; esac
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$key" "$r" "$M_WALL" "$M_USER" "$M_SYS" "$M_RSS" \
        "$( [ "$out" != - ] && fsize "$out" || echo -)" \
        "$( [ "$src" != - ] && pages "$src" || echo -)" \
        "$( [ "$out" != - ] && pages "$out" || echo -)" "$M_RC" \
        "$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.4f", b - a}')" >> "$RAW"
    if [ "$M_RC" = 124 ] && [ "$limit" != 0 ]; then
        echo "   $key: run $r > ${limit} s (timed out)" >&2
    elif [ "$M_RC" != 0 ]; then
        warn "$key: run $r failed (exit $M_RC): $(tail -n 3 "$lf" | tr '\n' ' ')"
    else
        echo "   $key: run $r: ${M_WALL} s, cpu $(awk -v a="$M_USER" -v b="$M_SYS" 'BEGIN{print a+b}') s, rss ${M_RSS} KiB" >&2
    fi
    return "$M_RC"
}

# measure KEY SRC OUT LIMIT CMD...
#   Runs CMD RUNS times with measure_once: before each run OUT is deleted
#   and the caches dropped; after it the size of OUT and the page-cache
#   pages of SRC and OUT are recorded.  SRC / OUT may be "-" (none).  A run
#   that hits LIMIT is recorded as rc 124 and no further runs of KEY are
#   made (a slow cell is measured once, as simplebench does); so is a run
#   longer than SLOW s when SLOW is set.
#   Returns 0 if at least one run succeeded.
measure() {
    local key=$1 src=$2 out=$3 limit=$4; shift 4
    local r ok=1
    forget "$key"
    for r in $(seq 1 "$RUNS"); do
        measure_once "$key" "$r" "$src" "$out" "$limit" "$@"
        if [ "$M_RC" = 124 ] && [ "$limit" != 0 ]; then
            echo "   $key: not repeated" >&2
            break
        elif [ "$M_RC" = 0 ]; then
            ok=0
            if [ "${SLOW:-0}" != 0 ] && [ "$r" -lt "$RUNS" ] &&
                awk -v w="$M_WALL" -v s="$SLOW" 'BEGIN{exit !(w > s)}'; then
                echo "   $key: run $r: ${M_WALL} s > ${SLOW} s: slow, not repeated" >&2
                break
            fi
        fi
    done
    return $ok
}

# med KEY FIELD: median of FIELD over the successful runs of KEY.
#   FIELD: wall user sys cpu rss out src_pages out_pages wall_fine, and
#   backup.sh's qemu_cpu load1 dir_pages (columns 12-14)
#   Prints ">LIMIT" if KEY timed out, "FAIL" if no run succeeded, "" if KEY
#   was never measured.
med() {
    local key=$1 field=$2
    [ -s "$RAW" ] || { echo ""; return; }
    awk -F'\t' -v k="$key" -v f="$field" -v lim="${LIMIT_OF[$1]:-0}" '
        $1 == k {
            seen = 1
            if ($10 == 124 && lim > 0) { timedout = 1; next }
            if ($10 != 0) next
            if (f == "wall") v = $3; else if (f == "user") v = $4
            else if (f == "sys") v = $5; else if (f == "cpu") v = $4 + $5
            else if (f == "rss") v = $6; else if (f == "out") v = $7
            else if (f == "src_pages") v = $8; else if (f == "out_pages") v = $9
            else if (f == "wall_fine") v = ($11 == "" ? "-" : $11)
            else if (f == "qemu_cpu") v = $12; else if (f == "load1") v = $13
            else if (f == "dir_pages") v = $14
            if (v == "-") { dash = 1; next }
            a[n++] = v + 0
        }
        END {
            if (!seen) { print ""; exit }
            if (timedout && f == "wall") { print ">" lim; exit }
            if (n == 0) { print (dash ? "-" : (timedout ? "-" : "FAIL")); exit }
            # insertion sort, n is small
            for (i = 1; i < n; i++) { x = a[i]; for (j = i - 1; j >= 0 && a[j] > x; j--) a[j+1] = a[j]; a[j+1] = x }
            m = (n % 2) ? a[int(n/2)] : (a[n/2-1] + a[n/2]) / 2
            print m
        }' "$RAW"
}

declare -A LIMIT_OF

# isnum X: X is a plain number
isnum() { case "$1" in ''|*[!0-9.]*) return 1 ;; *) return 0 ;; esac; }

# fmt_s X: seconds with 2-3 significant digits
fmt_s() {
    isnum "$1" || { echo "${1:-n/a}${1:+ s}" | sed 's/^>\(.*\) s$/>\1 s/'; return; }
    awk -v x="$1" 'BEGIN{ if (x >= 100) printf "%.0f", x; else if (x >= 10) printf "%.1f", x; else printf "%.2f", x }'
}
# fmt_mib BYTES_OR_KIB UNIT(1=bytes,1024=KiB)
fmt_mib() {
    isnum "$1" || { echo "${1:-n/a}"; return; }
    awk -v x="$1" -v u="$2" 'BEGIN{ m = x * u / 1048576; if (m >= 100) printf "%.0f", m; else if (m >= 1) printf "%.1f", m; else printf "%.3f", m }'
}
# ratio A B [DIGITS]: A/B, "n/a" if either is not a number or B is 0
ratio() {
    if isnum "$1" && isnum "$2" && awk -v b="$2" 'BEGIN{exit !(b > 0)}'; then
        awk -v a="$1" -v b="$2" -v d="${3:-2}" 'BEGIN{ printf "%.*f", d, a / b }'
    elif [ "${1#>}" != "$1" ] && isnum "$2"; then
        # A timed out: a lower bound
        awk -v a="${1#>}" -v b="$2" -v d="${3:-2}" 'BEGIN{ printf ">%.*f", d, a / b }'
    else
        echo "n/a"
    fi
}
# le A B: A <= B (numbers); false if either is not a number
le() { isnum "$1" && isnum "$2" && awk -v a="$1" -v b="$2" 'BEGIN{exit !(a <= b)}'; }
