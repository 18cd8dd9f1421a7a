#!/usr/bin/env bash
# chain-depth.sh - deep backing chains over a 1 GiB disk, as QEMU writes
# them and as zcow writes them (incrementals from dirty bitmaps over NBD).
#
# Each layer k writes a few stretches spread over the disk: data over
# holes, data over an older layer's data, zeroes (write -z) and discards
# over older data, with a cluster size that changes from layer to layer.
# The same writes go to a QEMU chain c0 <- c1 <- ... and to one image with
# a persistent dirty bitmap, from which zcow takes an incremental per layer
# (z0 <- z1 <- ...).  At depths 1, 2, 8 and 32 every chain is restored
# (zcow convert -O raw) and flattened (zcow convert to qcow2), and judged
# against qemu-img convert -O raw of the same chain; zcow compare and
# zcow info --backing-chain walk it too.  Each walk took time exponential
# in the depth once; the L2 lookups are counted in tests/unit/test_chain.c,
# here the times are printed for the log.
. "$(dirname "$0")/functions.sh"
requires qemu-img qemu-io qemu-nbd
requires_zcow
requires_nbd_support

DEPTHS="1 2 8 32"
MAX_DEPTH=32
SIZES=(65536 4096 16384 131072 8192 65536 32768)
src=$work/src.qcow2
sock=$work/nbd.sock
uri="nbd+unix:///?socket=$sock"

nbd_stop() {
    local pid
    [ -f "$work/nbd.pid" ] || return 0
    pid=$(cat "$work/nbd.pid")
    kill_wait "$pid"
    rm -f "$work/nbd.pid"
}
cleanup_fn nbd_stop

# layer_cmds K: the qemu-io commands of layer K, in the array CMDS.  Offsets
# in MiB spread over the disk, moved by the seed; K > 0 also writes over
# layer K-1's stretch (data over data), zeroes part of it and discards
# part of layer K-2's: whole clusters of every layer (128k at a MiB), since
# a discard of part of a cluster is a no-op that only some layers make.
mib() { echo $(( (($1 * 37 + TEST_SEED) % 1000) )); }
layer_cmds() {
    local k=$1 a b
    a=$(mib "$k")
    CMDS=(-c "write -P $((k % 250 + 1)) $((a))M 192k"
          -c "write -P $((k % 250 + 2)) $(( (a + 500) % 1020 ))M 12k")
    if [ "$k" -gt 0 ]; then
        b=$(mib $((k - 1)))
        CMDS+=(-c "write -P $((k % 250 + 3)) $((b * 1048576 + 65536)) 8k"
               -c "write -z $((b * 1048576 + 131072)) 64k")
    fi
    if [ "$k" -gt 1 ]; then
        b=$(mib $((k - 2)))
        CMDS+=(-c "discard $((b * 1048576)) 128k")
    fi
}

# judge_chain NAME TOP: restore and flatten TOP, judged against qemu-img.
judge_chain() {
    local name=$1 top=$2 t0 t1 t2 out
    rm -f "$work/q.raw" "$work/r.raw" "$work/f.qcow2"
    qemu-img convert -O raw "$top" "$work/q.raw"
    t0=$(date +%s.%N)
    if out=$("$ZCOW" convert -q -O raw "$top" "$work/r.raw" 2>&1) &&
        qemu-img compare -q -f raw -F raw "$work/q.raw" "$work/r.raw"; then
        pass
    else
        fail "$name: restore differs from qemu-img's: $out"
    fi
    t1=$(date +%s.%N)
    if out=$("$ZCOW" convert -q "$top" "$work/f.qcow2" 2>&1); then
        judge "$work/q.raw" "$work/f.qcow2" "$name: flattened" || true
        [ -z "$(qemu-img info "$work/f.qcow2" | grep '^backing file')" ] && pass ||
            fail "$name: the flattened image has a backing file"
    else
        fail "$name: flatten: $out"
    fi
    t2=$(date +%s.%N)
    if out=$("$ZCOW" compare "$top" "$work/f.qcow2" 2>&1); then pass; else
        fail "$name: zcow compare with the flattened image: $out"
    fi
    local n
    n=$("$ZCOW" info --backing-chain --output=json "$top" | grep -c '"virtual-size"')
    [ "$n" = "$DEPTH_NOW" ] && pass || fail "$name: info --backing-chain shows $n images"
    awk -v n="$name" -v a="$t0" -v b="$t1" -v c="$t2" \
        'BEGIN { printf "# %s: restore %.2f s, flatten %.2f s\n", n, b - a, c - b }'
}

# The source of the zcow chain: the disk with a dirty bitmap per layer.
qemu-img create -q -f qcow2 "$src" 1G
for ((k = 0; k < MAX_DEPTH; k++)); do
    DEPTH_NOW=$((k + 1))
    cs=${SIZES[$((k % ${#SIZES[@]}))]}
    layer_cmds "$k"
    # QEMU's chain.
    if [ "$k" -eq 0 ]; then
        qemu-img create -q -f qcow2 -o cluster_size="$cs" "$work/c0.qcow2" 1G
    else
        qemu-img create -q -f qcow2 -o cluster_size="$cs" -b "c$((k - 1)).qcow2" -F qcow2 \
            "$work/c$k.qcow2"
    fi
    qemu-io -f qcow2 "${CMDS[@]}" "$work/c$k.qcow2" >/dev/null || fail "qemu-io c$k"
    # zcow's chain: the same writes, recorded by bitmap b$k, exported and
    # taken as an incremental over the previous point.
    [ "$k" -gt 0 ] && qemu-img bitmap --add -g 4k "$src" "b$k"
    qemu-io -f qcow2 "${CMDS[@]}" "$src" >/dev/null || fail "qemu-io src $k"
    export_args=()
    convert_args=()
    if [ "$k" -gt 0 ]; then
        export_args=(-B "b$k")
        convert_args=(--bitmap "b$k" -B "z$((k - 1)).qcow2" -F qcow2)
    fi
    qemu-nbd --fork --pid-file="$work/nbd.pid" -t -r -k "$sock" -f qcow2 \
        ${export_args[@]+"${export_args[@]}"} "$src"
    out=$(cd "$work" && "$ZCOW" convert -q -o cluster_size="$cs" \
        ${convert_args[@]+"${convert_args[@]}"} "$uri" "z$k.qcow2" 2>&1) ||
        fail "zcow incremental $k: $out"
    nbd_stop
    [ "$k" -gt 0 ] && qemu-img bitmap --remove "$src" "b$k"
    qemu-img check -q "$work/z$k.qcow2" || fail "qemu-img check z$k"

    case " $DEPTHS " in
    *" $DEPTH_NOW "*)
        judge_chain "qemu chain, depth $DEPTH_NOW" "$work/c$k.qcow2"
        judge_chain "zcow chain, depth $DEPTH_NOW" "$work/z$k.qcow2"
        # Both chains hold the same disk.
        if qemu-img compare -q "$work/c$k.qcow2" "$work/z$k.qcow2"; then pass; else
            fail "depth $DEPTH_NOW: zcow's chain differs from QEMU's"
        fi
        ;;
    esac
done
finish
