#!/bin/bash
# chain.sh - the backup chains of Table E (restoring a backup chain), as a
# backup tool and as QEMU write them.  Sourced by bench/run.sh (--tables E);
# run alone it only makes the chains:
#
#   bench/chain.sh DIR W2.raw [ZCOW]     make DIR/backup and DIR/qemu16
#
# DIR/backup: W2's full backup and CHAIN_INCS (10) incrementals, each
# holding the clusters that CHAIN_PCT (1) % of the disk's clusters rewrite:
#   - the disk: a qcow2 copy of W2 (qemu-img convert) with a persistent dirty
#     bitmap (qemu-img bitmap --add -g 64k src.qcow2 b0);
#   - full.qcow2: zcow convert W2 full.qcow2;
#   - incremental k: qemu-io rewrites as many 64 KiB clusters as make 1% of
#     the disk, in runs of 1-16 clusters at random places (seeded:
#     CHAIN_SEED) spread over the data the full backup holds: files
#     rewritten in place, so every point holds as much data as the full
#     (CHAIN_OVER=disk: anywhere on the disk instead, mostly into free
#     space), with data cut from a tar of W2's tree (text, binaries,
#     compressed files, as W2 holds); then, as a pull-mode backup
#     tool does, qemu-nbd -r -B b0 exports the disk on a Unix socket and
#       zcow convert --bitmap b0 -B inc(k-1).qcow2 -F qcow2 nbd+unix://... inck.qcow2
#     (run in DIR/backup: each image names the previous one relatively),
#     the server stops and the bitmap is cleared (qemu-img bitmap --clear);
#   - p10.raw: the disk as it is after the last incremental (qemu-img
#     convert -O raw of the disk): what restoring inc10 must give.
# DIR/qemu16: issue 13's chain as QEMU writes it: c0 (1 GiB, 8 MiB at 0 and
# 4 MiB at 512 MiB) and c1..c16, each over the one before, each with the
# issue's three writes (64 KiB at 3 MiB, zeroes over 128 KiB at 5 MiB,
# 192 KiB at 601 MiB) in a pattern of its own.
#
# The chains are reused while DIR/chain.ok holds the same recipe; its second
# line names the zcow that wrote them.  DIR/chain.info describes them.

CHAIN_INCS=${CHAIN_INCS:-10}
CHAIN_PCT=${CHAIN_PCT:-1}
CHAIN_SEED=${CHAIN_SEED:-13}
CHAIN_OVER=${CHAIN_OVER:-data}
CHAIN_DEPTH=16

# chain_recipe W2RAW: what the chain is made of (the stamp)
chain_recipe() {
    echo "chain v1: $(basename "$1") ($(stat -c %s "$1") bytes, $(cat "$1.ok" 2>/dev/null)) + $CHAIN_INCS incrementals of $CHAIN_PCT% in 64k clusters over $CHAIN_OVER, seed $CHAIN_SEED; qemu chain depth $CHAIN_DEPTH"
}

# chain_runs SEED COUNT < EXTENTS: COUNT distinct clusters in runs of 1-16
# clusters at random places inside EXTENTS ("FIRST_CLUSTER CLUSTERS" lines),
# as "OFFSET LENGTH" lines in bytes
chain_runs() {
    awk -v seed="$1" -v want="$2" '
        { for (c = $1; c < $1 + $2; c++) idx[n++] = c }
        END {
            srand(seed); got = 0
            if (want > n) want = n
            while (got < want) {
                len = 1 + int(rand() * 16); if (len > want - got) len = want - got
                j = int(rand() * n); s = idx[j]
                if (s in used) continue
                for (k = 1; k < len && j + k < n && idx[j + k] == s + k && !((s + k) in used); k++) ;
                len = k
                for (c = s; c < s + len; c++) used[c] = 1
                got += len
                printf "%.0f %.0f\n", s * 65536, len * 65536
            }
        }'
}

# chain_extents FULL.qcow2: where the incrementals write, as
# "FIRST_CLUSTER CLUSTERS" lines: the full backup's data clusters
# (CHAIN_OVER=data, default: files rewritten in place), or the whole disk
# (CHAIN_OVER=disk: most writes then land in the file system's free space
# and the disk holds more data at each point)
chain_extents() {
    if [ "$CHAIN_OVER" = disk ]; then
        echo "0 $(($(qemu-img info --output=json "$1" | sed -n 's/^ *"virtual-size": *\([0-9]*\).*/\1/p' | head -n 1) / 65536))"
        return
    fi
    qemu-img map --output=json "$1" | python3 -c '
import json, sys
for e in json.load(sys.stdin):
    if e["data"] and e["depth"] == 0:
        print(e["start"] // 65536, e["length"] // 65536)'
}

# chain_nbd_stop PIDFILE: kill -9 the read-only qemu-nbd and wait for it
chain_nbd_stop() {
    local pid i
    [ -f "$1" ] || return 0
    pid=$(cat "$1")
    kill -9 "$pid" 2>/dev/null
    for i in $(seq 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.02; done
    rm -f "$1"
}

# chain_make DIR W2RAW ZCOW: make (or reuse) DIR/backup and DIR/qemu16
chain_make() {
    local dir=$1 w2=$2 zcow=$3 b q recipe k i n want pool poolsz off prev cmds
    b=$dir/backup q=$dir/qemu16
    recipe=$(chain_recipe "$w2")
    if [ -f "$dir/chain.ok" ] && [ "$(head -n 1 "$dir/chain.ok")" = "$recipe" ] &&
        [ -f "$b/inc$CHAIN_INCS.qcow2" ] && [ -f "$b/p$CHAIN_INCS.raw" ] && [ -f "$q/c$CHAIN_DEPTH.qcow2" ]; then
        echo "chain: reusing $dir ($(sed -n 2p "$dir/chain.ok"))" >&2
        return 0
    fi
    rm -rf "$b" "$q" "$dir/chain.ok" "$dir/chain.info"
    mkdir -p "$b" "$q" || return 1
    echo "chain: making $b: $recipe" >&2
    n=$(($(stat -c %s "$w2") / 65536))
    want=$(((n * CHAIN_PCT + 99) / 100))

    # data to write: a tar of W2's tree, enough for every incremental
    pool=$dir/pool.tmp
    tar -cf - -C "${W2_TREE:-/usr/share}" . 2>/dev/null | head -c $((CHAIN_INCS * want * 65536 + (1 << 20))) > "$pool"
    poolsz=$(stat -c %s "$pool")
    [ "$poolsz" -ge $((1 << 20)) ] || { echo "chain: could not cut data from a tar of ${W2_TREE:-/usr/share}" >&2; return 1; }

    qemu-img convert -f raw -O qcow2 "$w2" "$b/src.qcow2" &&
        qemu-img bitmap --add -g 64k "$b/src.qcow2" b0 || { echo "chain: the disk copy failed" >&2; return 1; }
    (cd "$b" && "$zcow" convert -q "$w2" full.qcow2) || { echo "chain: zcow convert of the full backup failed" >&2; return 1; }
    chain_extents "$b/full.qcow2" > "$b/extents" && [ -s "$b/extents" ] || return 1

    off=0 prev=full.qcow2
    for k in $(seq 1 "$CHAIN_INCS"); do
        cmds=() i=0
        mkdir -p "$b/w.tmp"
        while read -r o l; do
            [ $((off + l)) -le "$poolsz" ] || off=0
            dd if="$pool" of="$b/w.tmp/$i" iflag=skip_bytes,count_bytes skip="$off" count="$l" status=none
            cmds+=(-c "write -q -s $b/w.tmp/$i $o $l")
            off=$((off + l)) i=$((i + 1))
        done < <(chain_runs $((CHAIN_SEED * 1000 + k)) "$want" < "$b/extents")
        qemu-io -f qcow2 "${cmds[@]}" "$b/src.qcow2" > "$b/qemu-io.log" 2>&1 ||
            { echo "chain: qemu-io writes of incremental $k failed: $(tail -n 2 "$b/qemu-io.log")" >&2; return 1; }
        rm -rf "$b/w.tmp"
        qemu-nbd --fork --pid-file="$b/nbd.pid" -t -r -e 4 -k "$b/nbd.sock" -f qcow2 -B b0 "$b/src.qcow2" ||
            { echo "chain: qemu-nbd -B b0 did not start" >&2; return 1; }
        (cd "$b" && "$zcow" convert -q --bitmap b0 -B "$prev" -F qcow2 "nbd+unix:///?socket=$b/nbd.sock" "inc$k.qcow2")
        i=$?
        chain_nbd_stop "$b/nbd.pid"
        rm -f "$b/nbd.sock"
        [ $i = 0 ] || { echo "chain: zcow convert of incremental $k failed" >&2; return 1; }
        qemu-img bitmap --clear "$b/src.qcow2" b0 || return 1
        echo "chain: incremental $k: $(($(stat -c %s "$b/inc$k.qcow2") >> 10)) KiB" >&2
        prev=inc$k.qcow2
    done
    qemu-img convert -f qcow2 -O raw "$b/src.qcow2" "$b/p$CHAIN_INCS.raw" || return 1
    rm -f "$b/src.qcow2" "$pool" "$b/qemu-io.log" "$b/extents"

    # issue 13's chain as QEMU writes it
    qemu-img create -q -f qcow2 "$q/c0.qcow2" 1G &&
        qemu-io -f qcow2 -c 'write -q -P 0x11 0 8M' -c 'write -q -P 0x12 512M 4M' "$q/c0.qcow2" || return 1
    for k in $(seq 1 $CHAIN_DEPTH); do
        qemu-img create -q -f qcow2 -b "c$((k - 1)).qcow2" -F qcow2 "$q/c$k.qcow2" &&
            qemu-io -f qcow2 -c "write -q -P $((0x20 + k)) 3M 64k" -c 'write -q -z 5M 128k' \
                -c "write -q -P $((0x40 + k)) 601M 192k" "$q/c$k.qcow2" || return 1
    done

    # what the chain holds: each image's own clusters, and qemu-img check
    {
        echo "| image | file MiB | clusters of its own | qemu-img check |"
        echo "|---|---|---|---|"
        for k in full $(seq -f 'inc%g' 1 "$CHAIN_INCS"); do
            echo "| $k.qcow2 | $(awk -v s="$(stat -c %s "$b/$k.qcow2")" 'BEGIN{printf "%.1f", s / 1048576}') |" \
                "$(qemu-img map --output=json "$b/$k.qcow2" | python3 -c '
import json, sys
print(sum(e["length"] for e in json.load(sys.stdin) if e["depth"] == 0 and e["data"]) // 65536)') |" \
                "$(qemu-img check -q "$b/$k.qcow2" >/dev/null 2>&1 && echo clean || echo "exit $?") |"
        done
    } > "$dir/chain.info"
    { echo "$recipe"; echo "made by $zcow ($(git -C "$(dirname "$zcow")/.." rev-parse --short HEAD 2>/dev/null || echo '?')) on $(date '+%Y-%m-%d %H:%M')"; } > "$dir/chain.ok"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -u
    [ $# -ge 2 ] || { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
    chain_make "$1" "$2" "${3:-$(cd "$(dirname "$0")/.." && pwd)/build/zcow}" || exit 1
    cat "$1/chain.info"
fi
