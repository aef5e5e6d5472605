#!/usr/bin/env bash
# qemu-smoke-test.sh - check the guest images independently of our VMM: boot
# kernel + initramfs in QEMU with TCG (pure software emulation; this host's
# nested KVM cannot run stock kernels under QEMU), wait for VMM-GUEST-READY,
# run a few commands on the serial shell, then `poweroff`.
#
# Usage: qemu-smoke-test.sh [--kernel minimal|debian] [--image vmlinux|bzImage]
#                           [--smp N] [--timeout SECONDS] [--append ARGS]
#   --kernel   which build to boot (default minimal; expects the outputs of
#              build-kernel.sh / fetch-debian-kernel.sh and build-initramfs.sh)
#   --image    vmlinux (default: PVH entry, as our VMM does) or bzImage
#   --smp N    vCPUs (default 2: exercises the MP table / SMP bring-up)
#
# Machine: QEMU microvm with virtio-blk (an ext4 image from
# make-disk-image.sh, mounted read-only and data.bin's sha256 checked),
# virtio-net and virtio-rng on virtio-mmio. minimal: acpi=off, QEMU passes the devices as
# virtio_mmio.device= on the command line (as our VMM does); debian: acpi=on,
# because Debian's virtio_mmio lacks command-line device support. The boot
# probe's exit register is emulated with isa-debug-exit at port 0x4f4
# (QEMU exits with (value << 1) | 1, so a clean poweroff gives status 1).
# Passes if the marker, the command output and the exit request all show up.
# Under TCG the kernel cannot calibrate the TSC against the PIT; Debian's
# kernel then hangs, so pass e.g. --append "tsc_early_khz=2000000 tsc=reliable".
# The serial log is kept in ${VMM_CACHE:-$HOME/.cache/vmm}/smoke/.
set -euo pipefail

PROG=$(basename "$0")
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib/common.sh
. "$HERE/lib/common.sh"

usage() { sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0"; }

VARIANT=minimal
IMAGE=vmlinux
SMP=2
TIMEOUT=600
APPEND=
while (($#)); do
  case $1 in
    --kernel) VARIANT=${2:-}; shift 2 || die "--kernel needs minimal or debian" ;;
    --image) IMAGE=${2:-}; shift 2 || die "--image needs vmlinux or bzImage" ;;
    --smp) SMP=${2:-}; shift 2 || die "--smp needs a number" ;;
    --timeout) TIMEOUT=${2:-}; shift 2 || die "--timeout needs seconds" ;;
    --append) APPEND=${2:-}; shift 2 || die "--append needs arguments" ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done
[[ $VARIANT == minimal || $VARIANT == debian ]] || die "--kernel must be minimal or debian"
[[ $IMAGE == vmlinux || $IMAGE == bzImage ]] || die "--image must be vmlinux or bzImage"
[[ $SMP =~ ^[1-8]$ ]] || die "--smp must be 1..8"
[[ $TIMEOUT =~ ^[0-9]+$ ]] || die "--timeout must be a number of seconds"

KIMG=$CACHE/kernel/$VARIANT/$IMAGE
[[ $VARIANT == debian && $IMAGE == bzImage ]] && KIMG=$CACHE/kernel/debian/vmlinuz
INITRD=$CACHE/initramfs/initramfs-$VARIANT.cpio
[[ -s $KIMG ]] || die "$KIMG missing; run $( [[ $VARIANT == minimal ]] && echo build-kernel.sh || echo fetch-debian-kernel.sh) first"
[[ -s $INITRD ]] || die "$INITRD missing; run build-initramfs.sh --kernel $VARIANT first"
need_cmd qemu-system-x86_64 qemu-system-x86

SMOKE=$CACHE/smoke
mkdir -p "$SMOKE"
RUN=$(mktemp -d "$SMOKE/run.XXXXXX")
LOG=$SMOKE/$VARIANT-$IMAGE.log
QPID=
cleanup() {
  [[ -z $QPID ]] || kill "$QPID" 2>/dev/null || true
  exec 3>&- 2>/dev/null || true
  rm -rf "$RUN"
}
trap cleanup EXIT

DATA_SUM=$("$HERE/make-disk-image.sh" "$RUN/disk.raw" --size 16M --data-size 1M 2>/dev/null |
  sed -n 's/  data\.bin$//p')
[[ $DATA_SUM =~ ^[0-9a-f]{64}$ ]] || die "make-disk-image.sh failed"
mkfifo "$RUN/in"
exec 3<>"$RUN/in"

if [[ $VARIANT == minimal ]]; then ACPI=off; else ACPI=on; fi
CMDLINE="console=ttyS0 panic=-1 $APPEND"
log "booting $KIMG + $(basename "$INITRD") in QEMU/TCG (microvm, acpi=$ACPI, $SMP vCPUs); serial log: $LOG"
start=$SECONDS
qemu-system-x86_64 -accel tcg -M "microvm,acpi=$ACPI,rtc=on,isa-serial=on" -cpu max \
  -smp "$SMP" -m 256 -no-reboot -display none -monitor none -serial stdio \
  -kernel "$KIMG" -initrd "$INITRD" -append "$CMDLINE" \
  -drive "id=d0,file=$RUN/disk.raw,format=raw,if=none" -device virtio-blk-device,drive=d0 \
  -netdev user,id=n0 -device virtio-net-device,netdev=n0 \
  -device virtio-rng-device \
  -device isa-debug-exit,iobase=0x4f4,iosize=0x04 \
  <&3 >"$LOG" 2>&1 &
QPID=$!

wait_for() { # PATTERN SECONDS
  local deadline=$((SECONDS + $2))
  while ((SECONDS < deadline)); do
    grep -qa -- "$1" "$LOG" && return 0
    kill -0 "$QPID" 2>/dev/null || return 1
    sleep 1
  done
  return 1
}

if ! wait_for VMM-GUEST-READY "$TIMEOUT"; then
  tail -n 30 "$LOG" >&2
  die "no VMM-GUEST-READY within ${TIMEOUT}s"
fi
log "VMM-GUEST-READY after $((SECONDS - start)) s (wall clock, TCG)"
sleep 2   # let the shell print its prompt
# shellcheck disable=SC2016  # the guest shell expands these
printf '%s\n' \
  'echo SMOKE-BEGIN; uname -r; grep -c ^processor /proc/cpuinfo; ls /sys/block /sys/class/net; cat /sys/class/misc/hw_random/rng_current 2>/dev/null; ls /dev/port /dev/mem; echo probe-mmio-read: $(devmem 0xd0000004 32); mount -t ext4 -o ro /dev/vda /mnt && sha256sum /mnt/data.bin && umount /mnt; sleep 1 & jobs; echo SMOKE-$((6*7))' >&3
wait_for SMOKE-42 60 || { tail -n 30 "$LOG" >&2; die "shell did not run the test commands"; }
sleep 1
printf 'poweroff\n' >&3
rc=0
for _ in $(seq 60); do kill -0 "$QPID" 2>/dev/null || break; sleep 1; done
if kill -0 "$QPID" 2>/dev/null; then
  tail -n 20 "$LOG" >&2
  die "QEMU still running 60 s after poweroff: the exit request (port 0x4f4) did not arrive"
fi
wait "$QPID" || rc=$?
QPID=
sed -n '/SMOKE-BEGIN/,/SMOKE-42/p' "$LOG" | tr -d '\r' | sed 's/^/    /' >&2
fail=0
grep -qa 'vda' "$LOG" || { log "FAIL: no virtio-blk disk (vda)"; fail=1; }
grep -qa "$DATA_SUM  /mnt/data.bin" "$LOG" || { log "FAIL: ext4 on vda: data.bin missing or wrong sha256"; fail=1; }
grep -qa 'eth0' "$LOG" || { log "FAIL: no virtio-net interface (eth0)"; fail=1; }
grep -qa 'virtio_rng' "$LOG" || { log "FAIL: virtio-rng is not the current hwrng"; fail=1; }
grep -qa 'exit request failed' "$LOG" && { log "FAIL: the guest could not write the exit request"; fail=1; }
if grep -qa '/dev/port: No such file' "$LOG"; then
  # No /dev/port (Debian's kernel): the exit request goes to the MMIO window
  # at 0xd0000004, which QEMU does not have; expect a normal power-off.
  log "guest has no /dev/port: exit request went to MMIO 0xd0000004 (not emulated by QEMU)"
  if ((rc != 0)) || ! grep -qa 'reboot: Power down' "$LOG"; then
    log "FAIL: QEMU exit status $rc / no clean power-off"; fail=1
  fi
else
  ((rc == 1)) || { log "FAIL: QEMU exit status $rc, want 1 (= exit code 0 written to port 0x4f4)"; fail=1; }
fi
((fail == 0)) || die "smoke test failed; serial log: $LOG"
log "PASS ($VARIANT/$IMAGE): ready, shell, vda + ext4 data.bin, eth0, virtio_rng, poweroff -> exit request; $((SECONDS - start)) s"
echo "$LOG"
