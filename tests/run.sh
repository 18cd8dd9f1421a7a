#!/usr/bin/env bash
# run.sh - zcow's whole test suite (`make check`).
#
# Stages (the sanitizer builds run while stage a's tests do; the tests of
# b, c and d then run together, the longest first by the last run's times):
#   a. `make` and `make tests` (build/, -O2): every unit test, every
#      tests/interop/*.sh (valgrind.sh: memcheck on conversions and a
#      restore), the build's own tests (tests/abi/*.sh: exported symbols,
#      the public header; tests/package/*.sh: dependencies, installation)
#      and ../shared/acceptance/quick.sh when present;
#   b. the same unit and interop tests built with ASan+UBSan
#      (build-address-undefined/);
#   c. the concurrent parts under ThreadSanitizer (build-thread/): the write
#      cache, table cache and writer tests, the 32-thread stress test, the copy
#      engine (and its digest tap), pool and digest tests, the nbdkit plugin,
#      restores into NBD exports over several connections (restore-dest.sh),
#      zcow verify and a conversion with -j 4;
#   d. `make fuzz-quick`, a few seconds of each fuzz target, when the
#      Makefile has it.
# Any sanitizer report fails the test that produced it (reports are written
# to files with log_path and looked for after each test).
#
# Each test runs under a timeout, TEST_JOBS at a time (3: most tests wait on
# the disk more than they compute), and prints one line:
# `ok`, `not ok` or `skip` (exit 77: an optional peer is missing).  The last
# line is `N passed, N failed`; skips are listed on the line before.  The
# exit status is 0 only when nothing failed.  Logs: build/test-logs/.
#
# Environment: JOBS (2, make's -j), TEST_JOBS (3), TEST_TIMEOUT (600 s per
# test), TEST_SEED (passed on to every randomised test), STAGES (default
# "a b c d", e.g. STAGES=a).  Tests see ZCOW_TEST_SANITIZER=address,undefined
# or thread in stages b and c: a test may run fewer rounds there.
set -u

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1

# ---- one test (run by xargs, in parallel) ---------------------------------
if [ "${1:-}" = --one ]; then
    id=$2
    dir=$RUN_LOGDIR
    start=$(date +%s.%N)
    mkdir -p "$dir/$id.san"
    timeout -k 10 "$RUN_TIMEOUT" bash "$dir/$id.spec" >"$dir/$id.log" 2>&1 </dev/null
    rc=$?
    secs=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')
    name=$(cat "$dir/$id.name")
    note=""
    if [ -n "$(ls -A "$dir/$id.san" 2>/dev/null)" ]; then
        {
            echo "---- sanitizer reports ----"
            cat "$dir/$id.san"/*
        } >>"$dir/$id.log"
        note=" # sanitizer report"
        rc=99
    fi
    case $rc in
    0) result=ok ;;
    77) result=skip ;;
    124 | 137) result="not ok"; note=" # timeout after ${RUN_TIMEOUT}s" ;;
    *) result="not ok"; [ -n "$note" ] || note=" # exit $rc" ;;
    esac
    echo "$result" >"$dir/$id.result"
    echo "$id $secs" >>"$dir/times"
    printf '%-6s %s (%ss)%s\n' "$result" "$name" "$secs" "$note"
    exit 0
fi

JOBS=${JOBS:-2}
TEST_JOBS=${TEST_JOBS:-3}
TEST_TIMEOUT=${TEST_TIMEOUT:-600}
STAGES=${STAGES:-a b c d}
LOGDIR=$ROOT/build/test-logs
TIMES=$ROOT/build/test-times
rm -rf "$LOGDIR"
mkdir -p "$LOGDIR" || exit 1
export RUN_LOGDIR=$LOGDIR RUN_TIMEOUT=$TEST_TIMEOUT
export TEST_SEED=${TEST_SEED:-$(( ($(date +%s) ^ $$) % 1000000 ))}

passed=0
failed=0
skipped=()
t_start=$(date +%s)

echo "# zcow tests: TEST_SEED=$TEST_SEED JOBS=$JOBS TEST_JOBS=$TEST_JOBS logs in $LOGDIR"

# tally ID...: count results; print the log tail of every failure.
tally() {
    local id r
    for id in "$@"; do
        r=$(cat "$LOGDIR/$id.result" 2>/dev/null || echo "not ok")
        case $r in
        ok) passed=$((passed + 1)) ;;
        skip) skipped+=("$(cat "$LOGDIR/$id.name")") ;;
        *)
            failed=$((failed + 1))
            echo "# --- $(cat "$LOGDIR/$id.name"): last lines of $LOGDIR/$id.log"
            tail -n 25 "$LOGDIR/$id.log" | sed 's/^/#   /'
            ;;
        esac
    done
}

# build ID NAME MAKE-ARGS...: a build step, counted as a test (tally it).
build() {
    local id=$1 name=$2
    shift 2
    local start rc
    start=$(date +%s)
    echo "$name" >"$LOGDIR/$id.name"
    make -j"$JOBS" "$@" >"$LOGDIR/$id.log" 2>&1
    rc=$?
    if [ $rc -eq 0 ]; then
        echo ok >"$LOGDIR/$id.result"
        printf '%-6s %s (%ss)\n' ok "$name" $(($(date +%s) - start))
    else
        echo "not ok" >"$LOGDIR/$id.result"
        printf '%-6s %s (%ss) # exit %s\n' "not ok" "$name" $(($(date +%s) - start)) $rc
    fi
    return $rc
}
built() { [ "$(cat "$LOGDIR/$1.result" 2>/dev/null)" = ok ]; }

# add ID NAME ENV CMD...: queue a test; ENV is a string of exports.
queue=()
add() {
    local id=$1 name=$2 env=$3
    shift 3
    echo "$name" >"$LOGDIR/$id.name"
    {
        echo "cd '$ROOT' || exit 1"
        echo "export RUN_SAN_DIR='$LOGDIR/$id.san'"
        [ -n "$env" ] && echo "$env"
        printf '%q ' "$@"
        echo
    } >"$LOGDIR/$id.spec"
    queue+=("$id")
}

# run_queue: run the queued tests, TEST_JOBS at a time, the longest first (by
# the last run's times; a new test counts as long), then count them.
run_queue() {
    [ ${#queue[@]} -eq 0 ] && return
    local id t
    for id in "${queue[@]}"; do
        t=$(awk -v id="$id" '$1 == id { t = $2 } END { print t == "" ? 60 : t }' "$TIMES" 2>/dev/null)
        echo "${t:-60} $id"
    done | sort -rn | awk '{ print $2 }' |
        xargs -P "$TEST_JOBS" -I{} bash "$ROOT/tests/run.sh" --one {}
    tally "${queue[@]}"
    queue=()
}

interop_tests() { ls tests/interop/*.sh | grep -v 'functions\.sh$'; }
build_tests() { ls tests/abi/*.sh tests/package/*.sh 2>/dev/null; }
# The unit test programs (not their .d files, nor other files there).
unit_tests() { find "$1/tests" -maxdepth 1 -name 'test_*' -type f -perm -u+x 2>/dev/null | sort; }

# Sanitizer options: reports go to files in the test's own directory.
san_env='export ZCOW_TEST_SANITIZER=address,undefined
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:log_path=$RUN_SAN_DIR/asan"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:log_path=$RUN_SAN_DIR/ubsan"
export LSAN_OPTIONS="log_path=$RUN_SAN_DIR/lsan"'
tsan_env='export ZCOW_TEST_SANITIZER=thread
export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:log_path=$RUN_SAN_DIR/tsan"'

has_stage() { case " $STAGES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
has_target() { grep -q "^$1:" Makefile; }

# The builds of stages b, c and d, one after the other.
later_builds() {
    if has_stage b; then
        build b-build "make SANITIZE=address,undefined tests" SANITIZE=address,undefined tests
    fi
    if has_stage c; then
        build c-build "make SANITIZE=thread tests" SANITIZE=thread tests
    fi
    if has_stage d && has_target fuzz-quick && has_target fuzz-build; then
        build d-build "make fuzz-build" fuzz-build
    fi
}
later_ids() {
    local s
    for s in b c d; do
        [ -e "$LOGDIR/$s-build.name" ] && echo "$s-build"
    done
}

# ---- a. normal build, its tests; the other builds meanwhile ------------------
if has_stage a; then
    echo "# stage a: build/ (-O2): unit, interop and acceptance tests"
    if build a-build "make (build/)" all && build a-build-tests "make tests (build/)" tests; then
        for t in $(unit_tests build); do
            add "a-$(basename "$t")" "$(basename "$t")" "" "$t"
        done
        for t in $(interop_tests); do
            add "a-$(basename "$t" .sh)" "$(basename "$t" .sh)" "export ZCOW='$ROOT/build/zcow'" bash "$t"
        done
        for t in $(build_tests); do
            n=$(basename "$(dirname "$t")")/$(basename "$t" .sh)
            add "a-${n/\//-}" "$n" "export ZCOW='$ROOT/build/zcow'" bash "$t"
        done
        if [ -f ../shared/acceptance/quick.sh ]; then
            add a-quick "acceptance quick.sh" "export ZCOW='$ROOT/build/zcow'" \
                bash ../shared/acceptance/quick.sh
        fi
    fi
    tally a-build
    [ -e "$LOGDIR/a-build-tests.result" ] && tally a-build-tests
    echo "# (meanwhile: the sanitizer and fuzz builds)"
    later_builds &
    builds_pid=$!
    run_queue
    wait "$builds_pid"
else
    later_builds
fi
tally $(later_ids)

# ---- b. ASan + UBSan ------------------------------------------------------------
if has_stage b && built b-build; then
    for t in $(unit_tests build-address-undefined); do
        add "b-$(basename "$t")" "$(basename "$t") [asan,ubsan]" "$san_env" "$t"
    done
    for t in $(interop_tests); do
        add "b-$(basename "$t" .sh)" "$(basename "$t" .sh) [asan,ubsan]" \
            "$san_env
export ZCOW='$ROOT/build-address-undefined/zcow'" bash "$t"
    done
fi

# ---- c. ThreadSanitizer ------------------------------------------------------------
if has_stage c && built c-build; then
    add c-test_cwcache "test_cwcache [tsan]" "$tsan_env" build-thread/tests/test_cwcache
    add c-test_qcow2_cache "test_qcow2_cache [tsan]" "$tsan_env" build-thread/tests/test_qcow2_cache
    # The writer: rewrites from many threads, reads meanwhile.
    add c-test_writer "test_writer [tsan]" "$tsan_env" build-thread/tests/test_writer
    if [ -x build-thread/tests/test_stress ]; then
        add c-test_stress "test_stress [tsan]" "$tsan_env" build-thread/tests/test_stress
    fi
    # The copy engine and its pool: read-ahead, direct and copy modes.
    add c-test_engine "test_engine [tsan]" "$tsan_env" build-thread/tests/test_engine
    add c-test_pool "test_pool [tsan]" "$tsan_env" build-thread/tests/test_pool
    # Block hashes given by several threads at once.
    add c-test_digest "test_digest [tsan]" "$tsan_env" build-thread/tests/test_digest
    # The nbdkit plugin: four connections writing one image at once.
    add c-nbdkit-plugin "nbdkit-plugin [tsan]" "$tsan_env
export ZCOW='$ROOT/build-thread/zcow'" bash tests/interop/nbdkit-plugin.sh
    # Restores into NBD exports over several connections (the NBD client's
    # pool), block devices and uncompressed qcow2 (~30 s).
    add c-restore-dest "restore-dest [tsan]" "$tsan_env
export ZCOW='$ROOT/build-thread/zcow'" bash tests/interop/restore-dest.sh
    # zcow verify: the structure checks on a pool, the engine's digest tap.
    add c-verify "verify [tsan]" "$tsan_env
export ZCOW='$ROOT/build-thread/zcow'" bash tests/interop/verify.sh
    add c-convert "convert-matrix MATRIX=smoke -j 4 [tsan]" "$tsan_env
export MATRIX=smoke ZCOW='$ROOT/build-thread/zcow'" bash tests/interop/convert-matrix.sh
fi

# ---- d. fuzz targets, briefly ---------------------------------------------------------
if has_stage d; then
    if has_target fuzz-quick && { ! has_target fuzz-build || built d-build; }; then
        add d-fuzz "make fuzz-quick" "" make -j"$JOBS" fuzz-quick
    elif ! has_target fuzz-quick; then
        echo "# stage d: no fuzz-quick target in the Makefile"
    fi
fi

if [ ${#queue[@]} -gt 0 ]; then
    echo "# stages b, c, d: ASan+UBSan, TSan, fuzz-quick"
    run_queue
fi

# Keep this run's times for ordering the next (merged with older ones).
if [ -f "$LOGDIR/times" ]; then
    cat "$TIMES" "$LOGDIR/times" 2>/dev/null |
        awk '{ t[$1] = $2 } END { for (k in t) print k, t[k] }' >"$TIMES.new" && mv "$TIMES.new" "$TIMES"
fi

echo "# $(( $(date +%s) - t_start )) s in all; logs in $LOGDIR"
if [ ${#skipped[@]} -gt 0 ]; then
    echo "# ${#skipped[@]} skipped: ${skipped[*]}"
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
