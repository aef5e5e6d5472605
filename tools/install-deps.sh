#!/usr/bin/env bash
# Installs the Debian packages this project needs to build, test and make its
# guests. Idempotent: does nothing when everything is present. Run as root.
set -euo pipefail

PKGS=(
  # build
  cmake ninja-build g++ clang lld python3
  libfmt-dev libspdlog-dev libcli11-dev libgtest-dev libfdt-dev nlohmann-json3-dev liburing-dev
  # guest images (guest-images/*.sh)
  busybox-static cpio lz4 xz-utils zstd linux-source-6.1 flex bison bc libelf-dev libssl-dev
  kmod e2fsprogs openssl
  # e2e tests: network namespace + TAP for the virtio-net test
  iproute2
  # benchmarks (tools/bench): the peer VMM
  qemu-system-x86
)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PKGS[@]} packages present"
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
