#!/usr/bin/env bash
# Configures and builds the VMM, its tests and the test guest.
# Usage: tools/build.sh [BUILD_DIR] [extra cmake args...]   (default BUILD_DIR=build)
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-build}"
shift || true
cmake -S . -B "$dir" -G Ninja "$@" >/dev/null
cmake --build "$dir" -j"$(nproc)"
