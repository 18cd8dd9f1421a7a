#!/usr/bin/env bash
# demo.sh - zcow's main job on a built-in sample: make a 256 MiB disk image
# (an ext4 file system holding /usr/share/doc, the rest free space), convert
# it to a compressed qcow2 with progress, and show what came out: zcow's
# summary line, `zcow info`, and qemu-img's verdict on the image.
#
# Run by `make demo` after the build.  Files go to build/demo/ (DEMO_DIR).
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
ZCOW=${ZCOW:-$ROOT/build/zcow}
DIR=${DEMO_DIR:-$ROOT/build/demo}
SIZE_MIB=${DEMO_SIZE_MIB:-256}
raw=$DIR/disk.raw
img=$DIR/disk.qcow2

[ -x "$ZCOW" ] || { echo "demo: no zcow at '$ZCOW': run 'make' first" >&2; exit 1; }
command -v qemu-img >/dev/null || { echo "demo: qemu-img is missing: run scripts/install-deps.sh" >&2; exit 1; }
mkdir -p "$DIR"
rm -f "$raw" "$img"

step() { printf '\n== %s\n' "$*"; }

# ---- 1. the sample disk --------------------------------------------------
step "1. a sample disk: $SIZE_MIB MiB"
made=""
if command -v mkfs.ext4 >/dev/null; then
    for src in /usr/share/doc /usr/share/man; do
        [ -d "$src" ] || continue
        rm -f "$raw"
        truncate -s "${SIZE_MIB}M" "$raw"
        if mkfs.ext4 -q -F -L zcow-demo -d "$src" "$raw" >"$DIR/mkfs.log" 2>&1; then
            made="an ext4 file system holding $src ($(du -sh "$src" 2>/dev/null | cut -f1)), the rest free space"
            break
        fi
    done
fi
if [ -z "$made" ]; then
    # No mkfs.ext4 (e2fsprogs), or the files did not fit: a synthetic disk
    # of the same character - text, binary-like bytes, zero runs.
    command -v python3 >/dev/null || { echo "demo: needs mkfs.ext4 (e2fsprogs) or python3" >&2; exit 1; }
    python3 - "$raw" "$SIZE_MIB" <<'EOF'
import random, sys
path, mib = sys.argv[1], int(sys.argv[2])
rnd = random.Random(1)
words = [bytes(rnd.choice("etaoinshrdlu") * rnd.randint(1, 4), "ascii") for _ in range(500)]
with open(path, "wb") as f:
    f.truncate(mib << 20)
    for i in range(0, mib, 4):           # every 4 MiB: 1 MiB text, 1 MiB random
        f.seek(i << 20)
        f.write(b" ".join(rnd.choice(words) for _ in range(400000))[: 1 << 20])
        f.write(rnd.randbytes(1 << 20))
EOF
    made="synthetic: text, random bytes and zero space"
fi
echo "$raw: $made"
ls -l "$raw" | awk '{ printf "%s bytes\n", $5 }'

# ---- 2. convert ---------------------------------------------------------------
step "2. zcow convert -p (O_DIRECT in and out, all cores)"
echo "\$ zcow convert -p $raw $img"
"$ZCOW" convert -p "$raw" "$img"
if command -v fincore >/dev/null; then
    # O_DIRECT: the new image is not in the page cache (qemu-img's reads
    # below will bring it in).
    echo "page cache holding the new image right after the conversion:"
    fincore "$img" || true
fi

# ---- 3. what came out ------------------------------------------------------------
step "3. zcow info"
"$ZCOW" info "$img"

step "4. qemu-img check and compare: does QEMU accept it?"
if qemu-img check -f qcow2 "$img"; then
    verdict="qemu-img check: clean (no errors, no leaks)"
else
    verdict="qemu-img check: FAILED (exit $?)"
fi
if qemu-img compare -f raw -F qcow2 "$raw" "$img" >/dev/null; then
    verdict="$verdict; qemu-img compare: identical to the source"
else
    verdict="$verdict; qemu-img compare: DIFFERS"
fi

step "verdict"
echo "$verdict"
case $verdict in *FAILED* | *DIFFERS*) exit 1 ;; esac
