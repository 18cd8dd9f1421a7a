# functions.sh - shared helpers for zcow's interop tests (bash).
#
#   . "$(dirname "$0")/functions.sh"
#   requires qemu-img qemu-io       # required tools: missing = the test fails
#   requires_optional nbdkit        # optional peers: missing = skip (exit 77)
#   make_sources "$work"            # small test inputs, see below
#   judge "$work/ones.raw" "$work/ones.qcow2" "ones 64k"   # qemu-img check + compare
#   ...
#   finish                          # prints the summary, exits 0 or 1
#
# $work is a fresh temporary directory, removed at exit (set KEEP=1 to keep
# it); cleanup_fn CMD... registers more cleanup.  $ZCOW is the binary under
# test (default build/zcow, made absolute).  $FAULT_ZCOW is the same zcow
# with fault injection (ZCOW_FAULT, lib/fault.h), which only test builds
# have: tests/zcow-fault in $ZCOW's build directory (`make tests`); tests
# that inject faults call requires_fault_zcow and run it.  Each case reports
# with pass or fail MESSAGE; a script exits 1 if any case failed.

set -u
set -o pipefail

TEST_NAME=$(basename "$0" .sh)
_here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$_here/../.." && pwd)
ZCOW=${ZCOW:-$ROOT/build/zcow}
case $ZCOW in /*) ;; *) ZCOW=$ROOT/$ZCOW ;; esac
export ZCOW
FAULT_ZCOW=${FAULT_ZCOW:-$(dirname "$ZCOW")/tests/zcow-fault}
case $FAULT_ZCOW in /*) ;; *) FAULT_ZCOW=$ROOT/$FAULT_ZCOW ;; esac

# Seed for the generated data; printed so that a failure can be reproduced.
TEST_SEED=${TEST_SEED:-$(( $(date +%s) % 100000 ))}
export TEST_SEED

_passed=0
_failed=0
_cleanup_cmds=()

cleanup_fn() { _cleanup_cmds+=("$*"); }

_cleanup() {
    local i
    for ((i = ${#_cleanup_cmds[@]} - 1; i >= 0; i--)); do
        eval "${_cleanup_cmds[$i]}" || true
    done
    if [ -n "${work:-}" ] && [ -d "$work" ]; then
        if [ "${KEEP:-0}" = 1 ]; then
            echo "# $TEST_NAME: kept $work" >&2
        else
            chmod -R u+rwx "$work" 2>/dev/null
            rm -rf "$work"
        fi
    fi
}
trap _cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A real disk file system where possible: /tmp may be tmpfs, which refuses
# O_DIRECT (zcow falls back, which is tested separately).
work=$(mktemp -d "${TMPDIR:-/var/tmp}/zcow-$TEST_NAME.XXXXXX") || {
    echo "$TEST_NAME: cannot create a temporary directory" >&2
    exit 1
}

# requires TOOL...: tools the test cannot do without.  qemu-img, qemu-io and
# qemu-nbd are set-up dependencies (scripts/install-deps.sh): missing, the
# test fails rather than skips.
requires() {
    local t
    for t in "$@"; do
        if ! command -v "$t" >/dev/null 2>&1; then
            echo "$TEST_NAME: missing required tool '$t' (run scripts/install-deps.sh)" >&2
            exit 1
        fi
    done
}

# requires_optional TOOL...: optional peers; missing, the test is skipped.
requires_optional() {
    local t
    for t in "$@"; do
        if ! command -v "$t" >/dev/null 2>&1; then
            echo "$TEST_NAME: skipped: '$t' is not installed" >&2
            exit 77
        fi
    done
}

requires_zcow() {
    if [ ! -x "$ZCOW" ]; then
        echo "$TEST_NAME: no executable at '$ZCOW': build first (make)" >&2
        exit 1
    fi
}

# requires_nbd_support: the test reads NBD exports with $ZCOW, which a zcow
# built with `make NBD=no` cannot: then it is skipped (`zcow --version`
# says which).
requires_nbd_support() {
    if ! "$ZCOW" --version 2>/dev/null | grep '^features:.*+nbd' >/dev/null; then
        echo "$TEST_NAME: skipped: $ZCOW was built without NBD support (make NBD=no)" >&2
        exit 77
    fi
}

# requires_fault_zcow: the test injects faults, with $FAULT_ZCOW.
requires_fault_zcow() {
    if [ ! -x "$FAULT_ZCOW" ]; then
        echo "$TEST_NAME: no executable at '$FAULT_ZCOW' (zcow with fault injection): build it (make tests)" >&2
        exit 1
    fi
}

# alive PID: the process runs (a zombie, which a busy or absent reaper can
# leave behind a daemon for a while, does not count).
alive() {
    local state
    state=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
    case $state in Z*) return 1 ;; esac
}

# kill_wait PID: SIGKILL, then wait (up to 2 s) until it is gone.
kill_wait() {
    kill -9 "$1" 2>/dev/null
    for _ in $(seq 100); do
        alive "$1" || return 0
        sleep 0.02
    done
}

pass() { _passed=$((_passed + 1)); }
fail() {
    _failed=$((_failed + 1))
    echo "FAIL: $TEST_NAME: $*" >&2
}

# finish: the summary line; exit status 0 when every case passed.
finish() {
    echo "# $TEST_NAME: $_passed passed, $_failed failed (TEST_SEED=$TEST_SEED)"
    [ "$_failed" -eq 0 ] && [ "$_passed" -gt 0 ]
    exit $?
}

# make_sources DIR: small inputs of every shape the matrix covers.
#   ones.raw      4 MiB of 0x01 (the upstream workload, scaled down)
#   random.raw    2 MiB of random bytes (incompressible)
#   text.raw      3 MiB of words
#   zeroruns.raw  6 MiB: zero runs of 512 B .. 3 MiB between data runs
#   tail.raw      1 MiB + 12345 bytes (not a multiple of 512 or a cluster)
#   sparse.raw    8 MiB file with holes (SEEK_HOLE) and three data islands
#   mixed.raw     5 MiB: text, random, zeros and ones interleaved
make_sources() {
    local dir=$1
    python3 - "$dir" "$TEST_SEED" <<'EOF' || { echo "make_sources failed" >&2; exit 1; }
import os, random, sys
d, seed = sys.argv[1], int(sys.argv[2])
rnd = random.Random(seed)
MiB = 1 << 20
words = [bytes(rnd.choice("etaoinshrdlucmfw") * rnd.randint(1, 3) + rnd.choice("aeiou") * 2, "ascii")
         for _ in range(600)] + [b"qcow2", b"cluster", b"zcow", b"\n"]

def text(n):
    out = bytearray()
    while len(out) < n:
        out += b" ".join(rnd.choice(words) for _ in range(4096)) + b"\n"
    return bytes(out[:n])

def rand(n):
    return rnd.randbytes(n)

def write(name, data):
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)

write("ones.raw", b"\x01" * (4 * MiB))
write("random.raw", rand(2 * MiB))
write("text.raw", text(3 * MiB))

zr = bytearray()
for zlen, dlen in [(512, 7000), (4096, 65536), (65536, 1000), (3 * MiB, 100000),
                   (200000, 4096), (1234, 777)]:
    zr += b"\0" * zlen
    zr += text(dlen // 2) + rand(dlen - dlen // 2)
zr += b"\0" * (6 * MiB - len(zr)) if len(zr) < 6 * MiB else b""
write("zeroruns.raw", bytes(zr))

write("tail.raw", text(MiB // 2) + rand(MiB // 2) + text(12345))

with open(os.path.join(d, "sparse.raw"), "wb") as f:
    f.truncate(8 * MiB)
    for off, data in [(0, text(70000)), (3 * MiB + 512, rand(300000)), (8 * MiB - 4096, b"\x01" * 4096)]:
        f.seek(off)
        f.write(data)

mixed = bytearray()
kinds = [lambda n: text(n), rand, lambda n: b"\0" * n, lambda n: b"\x01" * n]
while len(mixed) < 5 * MiB:
    n = rnd.randint(1, 300000)
    mixed += kinds[rnd.randrange(4)](n)
write("mixed.raw", bytes(mixed[:5 * MiB]))
EOF
}

SHAPES="ones random text zeroruns tail sparse mixed"

# judge SRC IMG [LABEL]: qemu-img check must be clean (exit 0: no errors, no
# leaks) and qemu-img compare must find the guest contents identical to
# SRC.  Records a pass or a fail; returns non-zero on failure.
# The check's JSON report is kept in $JUDGE_JSON for check_json.
JUDGE_JSON=""
JUDGE_IMG=""
judge() {
    local src=$1 img=$2 label=${3:-$2} out
    JUDGE_IMG=""
    if ! JUDGE_JSON=$(qemu-img check -f qcow2 --output=json "$img" 2>&1); then
        out=$(qemu-img check -f qcow2 "$img" 2>&1)
        fail "$label: qemu-img check (exit $?): $(echo "$out" | head -5 | tr '\n' ' ')"
        return 1
    fi
    JUDGE_IMG=$img
    if ! out=$(qemu-img compare -f raw -F qcow2 "$src" "$img" 2>&1); then
        fail "$label: qemu-img compare: $(echo "$out" | head -3 | tr '\n' ' ')"
        return 1
    fi
    pass
}

# check_json IMG KEY: a count from `qemu-img check --output=json`, e.g.
# compressed-clusters, allocated-clusters; 0 when qemu-img leaves it out
# (it omits compressed-clusters when there are none).
check_json() {
    local v json=$JUDGE_JSON
    [ "$1" = "$JUDGE_IMG" ] || json=$(qemu-img check -f qcow2 --output=json "$1" 2>/dev/null)
    v=$(echo "$json" | sed -n "s/^ *\"$2\": *\([0-9][0-9]*\).*/\1/p" | head -n 1)
    echo "${v:-0}"
}

# info_field IMG KEY: the first value of KEY (a number or a string) in
# `qemu-img info --output=json`, e.g. cluster-size, compression-type.
info_field() {
    qemu-img info -f qcow2 --output=json "$1" 2>/dev/null |
        sed -n "s/^ *\"$2\": *\"\{0,1\}\([^\",]*\)\"\{0,1\},\{0,1\}$/\1/p" | head -n 1
}

# temp_leftovers DST: temporary files zcow left beside DST (names, or empty).
temp_leftovers() {
    local d
    d=$(dirname "$1")
    find "$d" -maxdepth 1 -name "$(basename "$1").zcow-tmp-*" 2>/dev/null
}

echo "# $TEST_NAME: TEST_SEED=$TEST_SEED ZCOW=$ZCOW work=$work"
