#!/usr/bin/env bash
# run.sh - run every fuzz target for SECONDS each (default 60) from its
# seed corpus (tests/fuzz/corpus/TARGET), with the targets built by
# `make fuzz-build` in build-fuzz/.  New inputs go to a scratch corpus,
# never into the committed seeds; a crash leaves its input in
# build-fuzz/artifacts/ and makes this script exit 1.
#
# usage: tests/fuzz/run.sh [SECONDS] [TARGET...]
set -u

secs=${1:-60}
shift || true
bin=${FUZZ_BUILD:-build-fuzz}
targets=("$@")
if [ ${#targets[@]} = 0 ]; then
    for f in tests/fuzz/fuzz_*.c; do
        t=${f##*/}
        targets+=("${t%.c}")
    done
fi

mkdir -p "$bin/artifacts"
scratch=$(mktemp -d /var/tmp/zcow-fuzz.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
trap 'exit 1' INT TERM

failed=0
for t in "${targets[@]}"; do
    if [ ! -x "$bin/$t" ]; then
        echo "not ok - $t: $bin/$t is not built (make fuzz-build)"
        failed=$((failed + 1))
        continue
    fi
    seeds=tests/fuzz/corpus/${t#fuzz_}
    mkdir -p "$scratch/$t"
    log=$bin/$t.log
    # -timeout: a single input taking this long is a bug (bounded time);
    # -rss_limit_mb: so is memory beyond 2 GiB.
    "$bin/$t" -max_total_time="$secs" -timeout=20 -rss_limit_mb=2048 \
        -artifact_prefix="$bin/artifacts/$t-" -print_final_stats=1 \
        "$scratch/$t" $( [ -d "$seeds" ] && echo "$seeds") >"$log" 2>&1
    rc=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    if [ "$rc" = 0 ]; then
        echo "ok - $t: ${runs:-?} runs in ${secs}s"
    else
        echo "not ok - $t: exit $rc after ${runs:-?} runs; see $log"
        grep -m5 -E "ERROR|SUMMARY|Test unit written" "$log" | sed 's/^/#   /'
        failed=$((failed + 1))
    fi
done
[ "$failed" = 0 ]
