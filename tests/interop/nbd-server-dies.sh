#!/usr/bin/env bash
# nbd-server-dies.sh - the NBD server dies while zcow reads from it.
#
# 1. qemu-nbd serves a 256 MiB image; zcow -j 1 -l 9 converts it (slowly
#    enough); once --progress-fd says it has begun, the server is killed.
# 2. The same with nbdkit's delay filter (every read 100 ms late), if
#    nbdkit is installed (an optional peer: this case is skipped without it),
#    killed once zcow has begun.
# Each must end with a non-zero exit, one clear line naming the URI, and
# neither the destination nor a temporary file left.  A second conversion
# of an existing destination must leave the old file as it was.
. "$(dirname "$0")/functions.sh"
requires qemu-img qemu-nbd cmp
requires_zcow
requires_nbd_support

dst=$work/out.qcow2

# killed_mid_run LABEL PIDFILE URI ARGS...: run zcow -j 1 ARGS, kill the
# server with SIGKILL once zcow reports progress, and judge the outcome.
killed_mid_run() {
    local label=$1 pidf=$2 uri=$3 rc zpid
    shift 3
    rm -f "$work/progress" "$work/err.txt"
    "$ZCOW" convert -q -j 1 "$@" --progress-fd=3 "$uri" "$dst" 3>"$work/progress" \
        2>"$work/err.txt" &
    zpid=$!
    # Reading is under way once progress passes 0%.
    for _ in $(seq 500); do
        grep -q '^[1-9]' "$work/progress" 2>/dev/null && break
        kill -0 "$zpid" 2>/dev/null || break
        sleep 0.02
    done
    kill -9 "$(cat "$pidf")" 2>/dev/null
    wait "$zpid"
    rc=$?
    local msg
    msg=$(cat "$work/err.txt")
    echo "# $label: exit $rc: $msg"
    if [ "$rc" -eq 0 ]; then
        fail "$label: zcow exited 0 although the server died"
    elif ! printf '%s' "$msg" | grep -qF "'$uri'"; then
        fail "$label: the message does not name the URI: $msg"
    elif [ "$(printf '%s\n' "$msg" | wc -l)" -ne 1 ]; then
        fail "$label: more than one line: $msg"
    elif [ -e "$dst" ] || [ -n "$(temp_leftovers "$dst")" ]; then
        fail "$label: an image was left: $(ls "$work")"
    else
        pass
    fi
}

# 1. qemu-nbd, 256 MiB of base64 text: compressible, slow at level 9.
base64 -w 0 /dev/urandom 2>/dev/null | head -c $((256 << 20)) >"$work/big.raw"
sock=$work/qemu.sock
qemu-nbd --fork --pid-file="$work/qemu.pid" -t -r -k "$sock" -f raw "$work/big.raw" ||
    fail "qemu-nbd did not start"
cleanup_fn 'kill -9 $(cat "$work/qemu.pid" 2>/dev/null) 2>/dev/null'
killed_mid_run "qemu-nbd killed" "$work/qemu.pid" "nbd+unix:///?socket=$sock" -l 9

# 2. nbdkit with a delay filter (optional): every read 100 ms late.
if ! command -v nbdkit >/dev/null 2>&1; then
    echo "# nbdkit is not installed: the delay-filter case is skipped"
else
    sock2=$work/kit.sock
    nbdkit -U "$sock2" -P "$work/kit.pid" --filter=delay pattern size=64M rdelay=100ms ||
        fail "nbdkit did not start"
    cleanup_fn 'kill -9 $(cat "$work/kit.pid" 2>/dev/null) 2>/dev/null'
    for _ in $(seq 100); do [ -S "$sock2" ] && break; sleep 0.05; done
    killed_mid_run "nbdkit killed" "$work/kit.pid" "nbd+unix:///?socket=$sock2"
fi

# 3. An existing destination survives a server that dies.
qemu-img create -f qcow2 "$dst" 1M >/dev/null
cp "$dst" "$work/old.copy"
qemu-nbd --fork --pid-file="$work/qemu.pid" -t -r -k "$sock" -f raw "$work/big.raw" ||
    fail "qemu-nbd did not start again"
"$ZCOW" convert -q -j 1 -l 9 "nbd+unix:///?socket=$sock" "$dst" 2>/dev/null &
zpid=$!
sleep 0.5
kill -9 "$(cat "$work/qemu.pid")"
if wait "$zpid"; then
    fail "old destination: zcow exited 0 although the server died"
elif ! cmp -s "$dst" "$work/old.copy" || [ -n "$(temp_leftovers "$dst")" ]; then
    fail "old destination: changed, or a temporary file left"
else
    pass
fi

finish
