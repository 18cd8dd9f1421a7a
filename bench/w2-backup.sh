# w2-backup.sh - W2's backup, as bench/restore.sh and bench/verify.sh read
# it.  Sourced after lib.sh, with ROOT, ZCOW, SRC (W2's raw), SIZE, W2_TREE
# and LOGDIR set.
#
#   w2_backup B INCS [DIR]
#
# A QEMU (TCG, no guest OS, cache.direct=on) runs with B/disk.qcow2, a
# qcow2 of W2, as its disk vda; zcow backup --qmp takes a full into DIR
# (default B/dir),
# then INCS times: 1% of the disk is rewritten through the device (64 KiB
# writes spread evenly, data from a tar of W2's tree, another stretch each
# time, as bench/backup.sh does) and zcow backup takes an incremental.
# QEMU is stopped: B/disk.qcow2 is then the disk at the last point.  Sets
# W2B_DIR (DIR), W2B_NW (writes per rewrite) and W2B_STRIDE; returns
# non-zero after a message when a step fails.  W2B_QPID is QEMU's pid
# while it runs: a caller's exit trap calls w2b_stop "$W2B_QPID".

w2b_stop() { # w2b_stop PID: SIGTERM, then -9 after 10 s
    [ -n "$1" ] || return 0
    kill "$1" 2>/dev/null
    for _ in $(seq 100); do [ -d "/proc/$1" ] || return 0; sleep 0.1; done
    kill -9 "$1" 2>/dev/null
}

W2B_QPID=
w2_backup() {
    local b=$1 incs=$2 k i d cl=65536
    local qsock=$b/qmp.sock msock=$b/mon.sock disk=$b/disk.qcow2
    local qdev=/machine/peripheral/vda/virtio-backend
    W2B_DIR=${3:-$b/dir}
    W2B_NW=$(((SIZE / 100 + cl - 1) / cl))
    W2B_STRIDE=$((SIZE / W2B_NW / cl * cl))
    log "the VM's disk: $disk (qemu-img convert -O qcow2 of $SRC)"
    qemu-img convert -f raw -O qcow2 "$SRC" "$disk" || return 1
    qemu-system-x86_64 -nodefaults -display none -machine q35,accel=tcg -m 64 \
        -blockdev driver=file,filename="$disk",node-name=f0,cache.direct=on \
        -blockdev driver=qcow2,file=f0,node-name=d0,cache.direct=on \
        -device virtio-blk-pci,drive=d0,id=vda \
        -qmp unix:"$qsock",server=on,wait=off -qmp unix:"$msock",server=on,wait=off \
        -daemonize -pidfile "$b/qemu.pid" || { echo "cannot start QEMU" >&2; return 1; }
    W2B_QPID=$(cat "$b/qemu.pid")
    for _ in $(seq 100); do [ -S "$msock" ] && break; sleep 0.05; done
    log "zcow backup --qmp: full"
    if ! "$ZCOW" backup --qmp "$qsock" "$W2B_DIR" >"$LOGDIR/backup.log" 2>&1; then
        echo "full backup failed: $(tail -n 3 "$LOGDIR/backup.log")" >&2
        w2b_stop "$W2B_QPID"
        return 1
    fi
    for k in $(seq 1 "$incs"); do
        log "rewrite $k: $W2B_NW writes of 64 KiB, one per $(numfmt --to=iec "$W2B_STRIDE")B; incremental"
        d=$b/rw
        rm -rf "$d"
        mkdir -p "$d"
        # (random bytes after the tree's end, should it be short)
        { tar -C "$W2_TREE" -cf - . 2>/dev/null | tail -c +$(((k - 1) * W2B_NW * cl + 1)) |
            head -c $((W2B_NW * cl)); head -c $((W2B_NW * cl)) /dev/urandom; } |
            head -c $((W2B_NW * cl)) >"$d/data"
        split -b $cl -d -a 6 "$d/data" "$d/c."
        local -a cmds=()
        for i in $(seq 0 $((W2B_NW - 1))); do
            cmds+=("write -s $d/c.$(printf '%06d' "$i") $((i * W2B_STRIDE)) 64k")
        done
        cmds+=(flush)
        if ! python3 "$ROOT/tests/interop/qmp.py" "$msock" write "$qdev" "${cmds[@]}" ||
            ! "$ZCOW" backup --qmp "$qsock" "$W2B_DIR" >>"$LOGDIR/backup.log" 2>&1; then
            echo "rewrite or incremental $k failed: $(tail -n 3 "$LOGDIR/backup.log")" >&2
            w2b_stop "$W2B_QPID"
            return 1
        fi
        rm -rf "$d"
    done
    w2b_stop "$W2B_QPID"
    W2B_QPID=
    log "W2's backup: $(du -sh "$W2B_DIR/vda" | cut -f1) in $W2B_DIR, $((incs + 1)) points"
}
