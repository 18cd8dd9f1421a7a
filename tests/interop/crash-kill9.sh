#!/usr/bin/env bash
# crash-kill9.sh - a conversion killed with SIGKILL at a random moment never
# leaves a half-written image under the destination's name.
#
# Each round converts a 96 MiB input and kills zcow with kill -9 after a
# random delay between 0 and a little more than a whole conversion takes
# (so that a kill may land after the rename), spread over the rounds.  Afterwards the destination is:
#   - absent, if there was none before;
#   - or the old destination, byte for byte, if there was one;
#   - or the new image, complete: qemu-img check and compare pass.
# SIGKILL cannot be caught, so the temporary file of a killed run stays;
# it must be recognisable by its name (DST.zcow-tmp-XXXXXX, six hex digits:
# docs/recovery.md tells users to remove such files), and a later
# conversion to the same destination must succeed regardless.
#
# KILL_ROUNDS (10) sets the number of rounds; TEST_SEED reproduces the
# delays (the timing of the machine still varies).
. "$(dirname "$0")/functions.sh"
requires qemu-img cmp
requires_zcow

rounds=${KILL_ROUNDS:-10}
RANDOM=$TEST_SEED

# 96 MiB: random (slow to compress), text, zeros, text again.
src=$work/src.raw
{
    head -c $((32 << 20)) /dev/urandom
    yes "zcow kill -9 test: the destination is never half written" | head -c $((32 << 20))
    head -c $((16 << 20)) /dev/zero
    seq 1 3000000 | head -c $((16 << 20))
} >"$src"
dst=$work/dst.qcow2
head -c $((2 << 20)) /dev/urandom >"$work/old.raw"
qemu-img convert -c -O qcow2 "$work/old.raw" "$work/old.qcow2" || exit 1

# How long a whole conversion takes here (ms, the faster of two), to
# spread the kills over it.
full_ms=
for _ in 1 2; do
    t0=$(date +%s%N)
    "$ZCOW" convert -q -j 2 "$src" "$dst" || { fail "a clean conversion failed"; finish; }
    t1=$(date +%s%N)
    ms=$(( (t1 - t0) / 1000000 ))
    [ -z "$full_ms" ] || [ "$ms" -lt "$full_ms" ] && full_ms=$ms
done
judge "$src" "$dst" "clean conversion" || finish
[ "$full_ms" -gt 0 ] || full_ms=1
rm -f "$dst"
echo "# a whole conversion takes ${full_ms} ms; $rounds rounds, kills at 0..$((full_ms * 6 / 5)) ms"

killed_before=0 killed_after=0 finished=0 stale=0
for ((i = 1; i <= rounds; i++)); do
    old=$((i % 2))
    rm -f "$dst"
    [ $old = 1 ] && cp "$work/old.qcow2" "$dst"
    # Spread evenly over the rounds, plus jitter: every phase gets a turn.
    delay=$(( (full_ms * 6 / 5) * (i - 1) / rounds + RANDOM % (full_ms / rounds + 1) ))
    before=$(temp_leftovers "$dst" | wc -l)
    "$ZCOW" convert -q -j 2 "$src" "$dst" 2>"$work/err.txt" &
    pid=$!
    sleep "$(awk -v ms="$delay" 'BEGIN { printf "%.3f", ms / 1000 }')"
    kill -9 "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    rc=$?
    label="round $i (kill at ${delay} ms, old destination: $old, exit $rc)"
    case $rc in
    0) finished=$((finished + 1)) ;;
    137) ;;
    *) fail "$label: $(head -2 "$work/err.txt" | tr '\n' ' ')"; continue ;;
    esac
    after=$(temp_leftovers "$dst" | wc -l)
    # Stale temporary files: named DST.zcow-tmp-XXXXXX, and only from a kill.
    while read -r t; do
        [ -n "$t" ] || continue
        case $(basename "$t") in
        "$(basename "$dst")".zcow-tmp-[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]) ;;
        *) fail "$label: temporary file with an unexpected name: $t" ;;
        esac
    done < <(temp_leftovers "$dst")
    [ $rc = 0 ] && [ "$after" -gt "$before" ] && fail "$label: exit 0, yet a temporary file was left"
    stale=$after

    if [ -e "$dst" ] && ! { [ $old = 1 ] && cmp -s "$work/old.qcow2" "$dst"; }; then
        # Not the old file: it must be the new image, whole.
        judge "$src" "$dst" "$label: the destination" || continue
        [ $rc = 137 ] && killed_after=$((killed_after + 1))
    else
        if [ $rc = 0 ]; then
            fail "$label: exit 0 but no new image"
            continue
        fi
        killed_before=$((killed_before + 1))
        pass
    fi
done
echo "# $rounds kill rounds: $killed_before killed before the rename (destination absent or" \
    "old), $killed_after after it (new image whole), $finished finished before the kill;" \
    "$stale stale temporary files"

# A later conversion to the same destination succeeds, stale files or not;
# then the advice of docs/recovery.md removes them.
rm -f "$dst"
cp "$work/old.qcow2" "$dst"
if "$ZCOW" convert -q -j 2 "$src" "$dst"; then
    judge "$src" "$dst" "conversion after $stale stale temporary files"
else
    fail "a conversion after the kills failed"
fi
[ "$(temp_leftovers "$dst" | wc -l)" -eq "$stale" ] ||
    fail "the stale temporary files changed: $stale before, $(temp_leftovers "$dst" | wc -l) now"
rm -f "$dst".zcow-tmp-*
[ -z "$(temp_leftovers "$dst")" ] || fail "rm DST.zcow-tmp-* left files"
finish
