#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz/) with clang and runs each for a while.
#
#   tools/run-fuzz.sh [SECONDS]      SECONDS per target, default 20
#
# Environment:
#   BUILD_FUZZ    build directory (default build-fuzz; relative paths are taken
#                 from the repository root). Configured with CC=clang
#                 CXX=clang++ -DVMM_FUZZ=ON if it has no CMakeCache.txt yet.
#   FUZZ_TARGETS  space-separated subset of targets (default: all seven)
#   FUZZ_JOBS     parallel build jobs (default: nproc)
#   FUZZ_WORKDIR  where the corpus copies, logs and crash inputs go (default: a
#                 new mktemp -d directory; removed on success unless FUZZ_KEEP=1)
#
# Each target fuzzes a COPY of tests/fuzz/corpus/<target>/ (the repository is never
# written), with -max_total_time=SECONDS -rss_limit_mb=2048 -timeout=25, and
# UBSan made fatal (halt_on_error). Exits non-zero if any target crashed,
# leaked, timed out or ran out of memory, after printing the crash input path
# and a reproduction command.
set -euo pipefail

secs=${1:-20}
if ! [[ $secs =~ ^[0-9]+$ ]] || (( secs < 1 )); then
  echo "usage: $0 [SECONDS]   (SECONDS: a positive integer)" >&2
  exit 2
fi

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${BUILD_FUZZ:-build-fuzz}
[[ $build = /* ]] || build="$root/$build"
targets=${FUZZ_TARGETS:-"fuzz_kernel_loader fuzz_serial fuzz_symbols fuzz_virtio fuzz_snapshot fuzz_migration fuzz_device_state"}
jobs=${FUZZ_JOBS:-$(nproc)}

# ---------------------------------------------------------------- build --
if [[ ! -f $build/CMakeCache.txt ]]; then
  echo "== configuring $build (clang, VMM_FUZZ=ON)"
  CC=clang CXX=clang++ cmake -S "$root" -B "$build" -G Ninja -DVMM_FUZZ=ON
else
  if ! grep -q '^CMAKE_CXX_COMPILER:.*clang' "$build/CMakeCache.txt"; then
    echo "error: $build is not configured with clang; remove it or set BUILD_FUZZ" >&2
    exit 2
  fi
  if ! grep -q '^VMM_FUZZ:BOOL=ON' "$build/CMakeCache.txt"; then
    echo "== enabling VMM_FUZZ in $build"
    cmake -S "$root" -B "$build" -DVMM_FUZZ=ON
  fi
fi
echo "== building fuzz targets in $build (-j$jobs)"
# shellcheck disable=SC2086
cmake --build "$build" -j "$jobs" --target $targets

# ------------------------------------------------------------------ run --
work=${FUZZ_WORKDIR:-$(mktemp -d "${TMPDIR:-/tmp}/vmm-fuzz.XXXXXX")}
mkdir -p "$work"
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=0:detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}

failed=()
summary=()
for t in $targets; do
  bin="$build/tests/fuzz/$t"
  corpus="$work/corpus/$t"
  art="$work/artifacts/$t"
  log="$work/$t.log"
  rm -rf "$corpus" "$art"
  mkdir -p "$corpus" "$art"
  if [[ -d $root/tests/fuzz/corpus/$t ]]; then
    cp -R "$root/tests/fuzz/corpus/$t/." "$corpus/"
  fi
  seeds=$(find "$corpus" -type f | wc -l)
  echo "== $t: ${secs}s on a copy of $seeds seed(s) -> $corpus"
  rc=0
  "$bin" -max_total_time="$secs" -rss_limit_mb=2048 -timeout=25 -print_final_stats=1 \
    -artifact_prefix="$art/" "$corpus" >"$log" 2>&1 || rc=$?

  done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n1 || true)
  [[ -n $done_line ]] || done_line=$(grep -E '^#[0-9]+' "$log" | tail -n1 || true)
  execs=$(sed -n 's/^stat::number_of_executed_units:[[:space:]]*//p' "$log" | tail -n1)
  eps=$(sed -n 's/^stat::average_exec_per_sec:[[:space:]]*//p' "$log" | tail -n1)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$done_line")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$done_line")
  corp=$(sed -n 's/.* corp: \([0-9]*\/[0-9a-zA-Z]*\).*/\1/p' <<<"$done_line")
  crashes=$(find "$art" -type f | sort)
  line=$(printf '%-20s execs=%-9s exec/s=%-7s cov=%-6s ft=%-6s corpus=%s' "$t" "${execs:-?}" \
         "${eps:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}")
  if (( rc != 0 )) || [[ -n $crashes ]]; then
    line+="  FAILED (exit $rc)"
    failed+=("$t")
    echo "!! $t failed (exit $rc); log: $log"
    grep -E 'ERROR: |runtime error:|invariant failed|SUMMARY:|Test unit written to' "$log" \
      | head -n 20 | sed 's/^/   /' || true
    for c in $crashes; do
      echo "   crash input: $c"
      echo "   reproduce:   UBSAN_OPTIONS=$UBSAN_OPTIONS $bin $c"
    done
  fi
  summary+=("$line")
done

echo "== summary (${secs}s per target)"
printf '%s\n' "${summary[@]}"
if (( ${#failed[@]} > 0 )); then
  echo "FAILED: ${failed[*]} (inputs, logs and corpora kept in $work)"
  exit 1
fi
if [[ -z ${FUZZ_WORKDIR:-} && ${FUZZ_KEEP:-0} != 1 ]]; then
  rm -rf "$work"
else
  echo "logs and corpora in $work"
fi
echo "OK: no crashes"
