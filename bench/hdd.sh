#!/bin/bash
# Emulated HDD for bench/run.sh (Table A, second target):
#   nbdkit memory 2G --filter=delay rdelay=4ms wdelay=4ms   (Unix socket)
#   -> nbdfuse exposes it as a file on a FUSE mount point
#   -> losetup attaches the file as a loop device
#   -> mkfs.ext4, mounted on $HDD_DIR/mnt
# Every request to the "disk" costs ~4 ms, like a seek on a spinning disk.
#
# Sourced (functions hdd_up / hdd_down) or run directly:
#   bench/hdd.sh up DIR     set up under DIR, print the mount point
#   bench/hdd.sh down DIR   tear down what `up` made under DIR
# Needs root, /dev/fuse, a free loop device, nbdkit, nbdfuse (libnbd-bin).

HDD_SIZE=${HDD_SIZE:-2G}
HDD_DELAY=${HDD_DELAY:-4ms}

_hdd_log() { echo "hdd: $*" >&2; }

# hdd_up DIR: sets HDD_MNT (ext4 mount point) on success; returns 1 with a
# message on the first failing step, after undoing what was done.
hdd_up() {
    local dir=$1 i
    HDD_STATE=$dir
    HDD_MNT=""
    mkdir -p "$dir/fuse" "$dir/mnt" || return 1
    hdd_down "$dir" 2>/dev/null          # leftovers of an interrupted run
    if [ "$(id -u)" -ne 0 ]; then _hdd_log "not root: cannot attach loop devices or mount"; return 1; fi
    if [ ! -c /dev/fuse ]; then _hdd_log "no /dev/fuse"; return 1; fi
    for t in nbdkit nbdfuse losetup mkfs.ext4 fusermount3; do
        command -v $t >/dev/null || { _hdd_log "missing $t (scripts/install-deps.sh --bench)"; return 1; }
    done
    nbdkit -P "$dir/nbdkit.pid" -U "$dir/nbd.sock" \
        memory "$HDD_SIZE" --filter=delay rdelay="$HDD_DELAY" wdelay="$HDD_DELAY" \
        || { _hdd_log "nbdkit failed to start"; hdd_down "$dir"; return 1; }
    for i in $(seq 50); do [ -S "$dir/nbd.sock" ] && break; sleep 0.1; done
    # nbdfuse stays in the foreground until unmounted: run it in the background
    nbdfuse -P "$dir/nbdfuse.pid" "$dir/fuse/disk" --unix "$dir/nbd.sock" \
        </dev/null >"$dir/nbdfuse.log" 2>&1 &
    for i in $(seq 50); do [ -e "$dir/fuse/disk" ] && break; sleep 0.1; done
    [ -e "$dir/fuse/disk" ] || { _hdd_log "nbdfuse file did not appear"; hdd_down "$dir"; return 1; }
    local loop
    loop=$(losetup -f --show "$dir/fuse/disk" 2>&1) \
        || { _hdd_log "losetup failed: $loop"; hdd_down "$dir"; return 1; }
    echo "$loop" > "$dir/loopdev"
    mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0,nodiscard "$loop" >/dev/null 2>&1 \
        || { _hdd_log "mkfs.ext4 on $loop failed"; hdd_down "$dir"; return 1; }
    mount -o nodiscard "$loop" "$dir/mnt" \
        || { _hdd_log "mount of $loop failed"; hdd_down "$dir"; return 1; }
    touch "$dir/mounted"
    HDD_MNT=$dir/mnt
    return 0
}

hdd_down() {
    local dir=${1:-$HDD_STATE}
    [ -n "$dir" ] || return 0
    local n=0
    while mountpoint -q "$dir/mnt" 2>/dev/null && [ $n -lt 5 ]; do
        umount "$dir/mnt" 2>/dev/null || umount -l "$dir/mnt" 2>/dev/null
        n=$((n + 1))
    done
    rm -f "$dir/mounted"
    if [ -s "$dir/loopdev" ]; then
        losetup -d "$(cat "$dir/loopdev")" 2>/dev/null
        rm -f "$dir/loopdev"
    fi
    if mountpoint -q "$dir/fuse" 2>/dev/null; then
        fusermount3 -u "$dir/fuse" 2>/dev/null || umount -l "$dir/fuse" 2>/dev/null
    fi
    local pf pid
    for pf in "$dir/nbdfuse.pid" "$dir/nbdkit.pid"; do
        if [ -s "$pf" ]; then
            pid=$(cat "$pf")
            kill "$pid" 2>/dev/null
            for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            rm -f "$pf"
        fi
    done
    rm -f "$dir/nbd.sock"
    HDD_MNT=""
    return 0
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    case "${1:-}" in
        up)   hdd_up "${2:?DIR}" && echo "$HDD_MNT" ;;
        down) hdd_down "${2:?DIR}" ;;
        *)    echo "usage: $0 up|down DIR" >&2; exit 2 ;;
    esac
fi
