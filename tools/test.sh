#!/usr/bin/env bash
# The project's test command (what CI runs): installs dependencies, builds,
# prepares the guests, and runs every test label that fits the budget.
#
#   tools/test.sh            unit + kvm + fuzz smoke + ASan/UBSan unit + e2e + svm (CI set)
#   tools/test.sh --quick    unit + kvm only (seconds)
#   tools/test.sh --full-e2e also the long Linux E2E tests (manual: see docs/linux-boot.md)
#   tools/test.sh --no-svm   without the emulated normal KVM host (svm label)
#
# Guest images are cached under ${VMM_CACHE:-~/.cache/vmm}; builds under build*/.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
full_e2e=0
svm=1
for a in "$@"; do
  case "$a" in
    --quick) quick=1 ;;
    --full-e2e) full_e2e=1 ;;
    --no-svm) svm=0 ;;
    *) echo "unknown option $a" >&2; exit 2 ;;
  esac
done

step() { printf '\n=== %s (%s) ===\n' "$1" "$(date +%H:%M:%S)"; }

step "dependencies"
tools/install-deps.sh

step "build"
tools/build.sh build

step "unit + kvm tests"
(cd build && ctest -L 'unit|kvm' --output-on-failure -j2)

[ "$quick" -eq 1 ] && exit 0

step "ASan/UBSan build: unit + kvm tests"
tools/build.sh build-asan -DVMM_SANITIZE=ON
(cd build-asan && ctest -L 'unit|kvm' --output-on-failure -j2)

if [ -x tools/run-fuzz.sh ]; then
  step "fuzz smoke (bounded)"
  tools/run-fuzz.sh "${VMM_FUZZ_SECONDS:-15}"
fi

step "guest images"
guest-images/build-kernel.sh --jobs "$(nproc)"
guest-images/build-initramfs.sh --kernel minimal
guest-images/fetch-debian-kernel.sh
guest-images/build-initramfs.sh --kernel debian
guest-images/fetch-debian-kernel.sh --flavor generic --no-symbols
guest-images/build-initramfs.sh --kernel debian-generic

step "e2e tests"
labels='^e2e$'
[ "$full_e2e" -eq 1 ] && labels='^e2e$|^e2e-slow$'
(cd build && ctest -L "$labels" --output-on-failure)

[ "$svm" -eq 1 ] || exit 0
step "svm: the emulated normal (AMD-SVM) KVM host"
tests/svm-host/build-l1.sh >/dev/null
(cd build && ctest -L '^svm$' --output-on-failure)
