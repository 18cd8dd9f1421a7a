#!/bin/sh
# Install the Debian packages zcow builds, tests and benchmarks with.
# Only what is missing is installed; needs root (or sudo) when anything is.
set -e
pkgs="build-essential pkg-config zlib1g-dev libzstd-dev libisal-dev libnbd-dev libssl-dev
      qemu-utils python3 util-linux e2fsprogs clang libclang-rt-dev
      valgrind nbdkit nbdkit-plugin-dev libnbd-bin python3-libnbd openssl procps man-db groff-base
      libjansson-dev libvirt-dev libxml2-dev qemu-system-x86
      libvirt-daemon-system libvirt-clients strace"
[ "${1:-}" = "--bench" ] && pkgs="$pkgs gnuplot-nox nbdkit libnbd-bin fuse3 linux-perf"
missing=""
for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "installing:$missing" >&2
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# shellcheck disable=SC2086
$sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
