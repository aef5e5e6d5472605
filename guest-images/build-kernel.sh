#!/usr/bin/env bash
# build-kernel.sh - build the VMM's minimal Linux guest kernel from Debian's
# linux-source-6.1 plus guest-images/kernel/minimal.config.
#
# Usage: build-kernel.sh [--jobs N] [--force] [--verbose]
#   --jobs N    parallel make jobs (default: number of CPUs)
#   --force     rebuild even if outputs for this key already exist
#   --verbose   stream the kernel build output instead of only logging it
#
# Outputs (in ${VMM_CACHE:-$HOME/.cache/vmm}/kernel/minimal/):
#   vmlinux     ELF with the PVH entry note (load this directly)
#   bzImage     LZ4-compressed boot image (for the 64-bit boot protocol)
#   System.map  symbols for the VMM's rip sampler
#   config      the final .config
# The last lines printed are the paths of these four files.
#
# The build is keyed by sha256(fragment + linux-source version + gcc version
# + patches + recipe version); a rerun with an unchanged key prints the paths
# at once. A first build takes ~6-14 minutes with 2 jobs on the shared 2-core
# build host (plus ~1 minute to unpack the source once).
set -euo pipefail

PROG=$(basename "$0")
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib/common.sh
. "$HERE/lib/common.sh"

# Bump when the build steps below change in a way that changes the outputs.
RECIPE=1
SRC_PKG=linux-source-6.1
SRC_TARBALL=/usr/src/linux-source-6.1.tar.xz
FRAGMENT=$HERE/kernel/minimal.config
# Our patches to Debian's source, applied in name order (see each one's header).
PATCH_DIR=$HERE/kernel/patches
OUT=$CACHE/kernel/minimal
OUTPUTS=(vmlinux bzImage System.map config)
# Options that must be =y; reported (and checked) by name in addition to the
# line-by-line check of the whole fragment.
KEY_ON=(64BIT SMP X86_MPPARSE PRINTK TTY SERIAL_8250 SERIAL_8250_CONSOLE
  BLK_DEV_INITRD BINFMT_ELF BINFMT_SCRIPT PROC_FS SYSFS DEVTMPFS DEVTMPFS_MOUNT
  DEVMEM DEVPORT FUTEX EPOLL SIGNALFD TIMERFD EVENTFD SHMEM TMPFS MULTIUSER
  FILE_LOCKING POSIX_TIMERS PVH VIRTIO VIRTIO_MMIO VIRTIO_MMIO_CMDLINE_DEVICES
  VIRTIO_BLK VIRTIO_NET HW_RANDOM HW_RANDOM_VIRTIO BLOCK EXT4_FS NET INET
  NETDEVICES HZ_100 NO_HZ_IDLE HIGH_RES_TIMERS RD_GZIP RD_ZSTD CMDLINE_BOOL)
KEY_OFF=(MODULES PARAVIRT KVM_GUEST ACPI IPV6 SECURITY AUDIT
  RANDOMIZE_BASE CPU_MITIGATIONS PAGE_TABLE_ISOLATION RETPOLINE X86_X2APIC
  SCHED_INFO SCHEDSTATS TASKSTATS CPU_FREQ THERMAL MICROCODE MTRR SWAP
  JUMP_LABEL X86_MCE DEBUG_INFO)

usage() { sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0"; }

JOBS=$(nproc)
FORCE=0
VERBOSE=0
while (($#)); do
  case $1 in
    --jobs|-j) [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || die "--jobs needs a positive number"; JOBS=$2; shift 2 ;;
    --jobs=*) JOBS=${1#*=}; [[ $JOBS =~ ^[1-9][0-9]*$ ]] || die "--jobs needs a positive number"; shift ;;
    --force) FORCE=1; shift ;;
    --verbose|-v) VERBOSE=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done

print_outputs() { local f; for f in "${OUTPUTS[@]}"; do echo "$OUT/$f"; done; }

outputs_current() {
  [[ -f $OUT/KEY && $(<"$OUT/KEY") == "$KEY" ]] || return 1
  local f
  for f in "${OUTPUTS[@]}"; do [[ -s $OUT/$f ]] || return 1; done
}

[[ -f $FRAGMENT ]] || die "config fragment not found: $FRAGMENT"
# Work on a snapshot: the key, the merge and the verification must all see
# the same fragment even if someone edits it during the build.
FRAG=$(mktemp "${TMPDIR:-/tmp}/minimal.config.XXXXXX")
trap 'rm -f "$FRAG"' EXIT
cp "$FRAGMENT" "$FRAG"

# linux-source-6.1 is needed even to compute the key.
ensure_pkgs "$SRC_PKG"
[[ -f $SRC_TARBALL ]] || die "$SRC_TARBALL not found (package $SRC_PKG is installed?)"
SRC_VER=$(pkg_version "$SRC_PKG")
ensure_pkgs gcc
GCC_VER=$(gcc -dumpfullversion)
shopt -s nullglob
PATCHES=("$PATCH_DIR"/*.patch)
shopt -u nullglob
PATCH_SUM=$(cat /dev/null "${PATCHES[@]}" | sha256_stdin)
KEY=$( { echo "recipe=$RECIPE src=$SRC_PKG=$SRC_VER gcc=$GCC_VER patches=$PATCH_SUM"; cat "$FRAG"; } | sha256_stdin)

if ((FORCE == 0)) && outputs_current; then
  log "up to date (key ${KEY:0:16}, $SRC_PKG $SRC_VER)"
  print_outputs
  exit 0
fi

take_lock "$CACHE/kernel/.minimal.lock"
if ((FORCE == 0)) && outputs_current; then   # built by whoever held the lock
  log "up to date (key ${KEY:0:16}), built by a concurrent run"
  print_outputs
  exit 0
fi

# Build dependencies. lz4 compresses the bzImage payload (CONFIG_KERNEL_LZ4).
ensure_pkgs make gcc libc6-dev flex bison bc libelf-dev libssl-dev xz-utils lz4 binutils

# --- 1. Source tree, extracted once per linux-source version ---------------
SRC_ROOT=$CACHE/src/${SRC_PKG}_${SRC_VER//[^A-Za-z0-9.+~-]/_}
SRC=$SRC_ROOT/linux-source-6.1
if [[ ! -f $SRC_ROOT/.extracted ]]; then
  log "extracting $SRC_TARBALL ($SRC_VER) into $SRC_ROOT (~20 s)"
  rm -rf "$SRC_ROOT.tmp"
  mkdir -p "$SRC_ROOT.tmp"
  tar -xf "$SRC_TARBALL" -C "$SRC_ROOT.tmp"
  [[ -f $SRC_ROOT.tmp/linux-source-6.1/Makefile ]] || die "unexpected tarball layout in $SRC_TARBALL"
  rm -rf "$SRC_ROOT"
  touch "$SRC_ROOT.tmp/.extracted"
  mv "$SRC_ROOT.tmp" "$SRC_ROOT"
fi

# --- 1b. Our patches: the tree carries exactly the current set -------------
# Applied in place (not into a copy) so that the source path, and with it
# existing build directories, stays valid. The set that
# is applied is recorded, with copies of the patches, to be reversed later.
APPLIED=$SRC_ROOT/.vmm-patches
if [[ ! -f $APPLIED/SUM || $(<"$APPLIED/SUM") != "$PATCH_SUM" ]]; then
  if [[ -d $APPLIED ]]; then
    mapfile -t old < <(ls -r "$APPLIED"/*.patch 2>/dev/null || true)
    for p in "${old[@]}"; do
      log "reverting $(basename "$p")"
      patch -d "$SRC" -p1 -R -s <"$p" || die "cannot revert $p; delete $SRC_ROOT to start over"
    done
  fi
  rm -rf "$APPLIED"
  mkdir -p "$APPLIED.tmp"
  for p in "${PATCHES[@]}"; do
    log "applying $(basename "$p")"
    patch -d "$SRC" -p1 -N -s <"$p" || die "patch $p does not apply; delete $SRC_ROOT to start over"
    cp "$p" "$APPLIED.tmp/"
  done
  echo "$PATCH_SUM" >"$APPLIED.tmp/SUM"
  mv "$APPLIED.tmp" "$APPLIED"
fi

# --- 2. Out-of-tree build directory keyed by the build key ------------------
BUILD_ROOT=$CACHE/build
BUILD=$BUILD_ROOT/kernel-minimal-${KEY:0:16}
LAST=$BUILD_ROOT/kernel-minimal.last
mkdir -p "$BUILD_ROOT"
# A new key always starts from an empty directory. (Seeding it with a copy of
# the previous one does not save anything: kbuild rebuilds tools/objtool for
# the new path, and every object depends on objtool.)
mkdir -p "$BUILD"
echo "$SRC" >"$BUILD/.vmm-src"
LOGFILE=$BUILD/build.log
: >"$LOGFILE"

kmake() { nice -n 10 make -C "$SRC" O="$BUILD" "$@"; }

# verify_config: every assignment in the fragment must hold in .config
# (Kconfig silently drops options whose dependencies are unmet). Absent
# symbols count as "n".
verify_config() {
  local bad
  bad=$(awk '
    FNR == NR {
      if (match($0, /^CONFIG_[A-Za-z0-9_]+=/)) cfg[substr($0, 1, RLENGTH - 1)] = substr($0, RLENGTH + 1)
      else if ($0 ~ /^# CONFIG_[A-Za-z0-9_]+ is not set$/) cfg[$2] = "n"
      next
    }
    {
      want = ""
      if (match($0, /^CONFIG_[A-Za-z0-9_]+=/)) { k = substr($0, 1, RLENGTH - 1); want = substr($0, RLENGTH + 1) }
      else if ($0 ~ /^# CONFIG_[A-Za-z0-9_]+ is not set$/) { k = $2; want = "n" }
      if (want == "") next
      have = (k in cfg) ? cfg[k] : "n"
      if (have != want) printf "  %s: fragment wants %s, .config has %s%s\n", k, want, have, (k in cfg) ? "" : " (symbol absent: unmet dependency)"
    }' "$BUILD/.config" "$FRAG")
  local o v
  for o in "${KEY_ON[@]}"; do
    v=$(sed -n "s/^CONFIG_$o=//p" "$BUILD/.config")
    [[ $v == y ]] || bad+=$'\n'"  CONFIG_$o: must be y, .config has ${v:-n}"
  done
  for o in "${KEY_OFF[@]}"; do
    v=$(sed -n "s/^CONFIG_$o=//p" "$BUILD/.config")
    [[ -z $v || $v == n ]] || bad+=$'\n'"  CONFIG_$o: must be off, .config has $v"
  done
  bad=$(sed '/^$/d' <<<"$bad")
  if [[ -n $bad ]]; then
    printf '%s: error: %s did not stick after olddefconfig:\n%s\n' "$PROG" "$FRAGMENT" "$bad" >&2
    printf '%s: fix the fragment (enable the missing dependencies) and rerun; see %s\n' "$PROG" "$BUILD/.config" >&2
    exit 1
  fi
}

# --- 3. Configure: tinyconfig + fragment + olddefconfig, then verify --------
if [[ ! -f $BUILD/.vmm-config-ok ]]; then
  log "configuring in $BUILD (tinyconfig + $(basename "$FRAGMENT"))"
  {
    kmake tinyconfig
    "$SRC/scripts/kconfig/merge_config.sh" -m -O "$BUILD" "$BUILD/.config" "$FRAG"
    kmake olddefconfig
  } >>"$LOGFILE" 2>&1 || { tail -n 30 "$LOGFILE" >&2; die "kernel configuration failed; log: $LOGFILE"; }
  verify_config
  touch "$BUILD/.vmm-config-ok"
else
  verify_config
fi
cp "$FRAG" "$BUILD/.vmm-fragment"
log "config verified: all $(grep -cE '^(CONFIG_|# CONFIG_.* is not set)' "$FRAG") fragment assignments hold"

# --- 4. Build ---------------------------------------------------------------
log "building vmlinux + bzImage with -j$JOBS (nice 10; ~6-14 min on 2 shared cores); log: $LOGFILE"
start=$SECONDS
if ((VERBOSE)); then
  kmake -j"$JOBS" vmlinux bzImage 2>&1 | tee -a "$LOGFILE" ||
    die "kernel build failed; log: $LOGFILE"
else
  kmake -j"$JOBS" vmlinux bzImage >>"$LOGFILE" 2>&1 ||
    { tail -n 40 "$LOGFILE" >&2; die "kernel build failed; log: $LOGFILE"; }
fi
log "build finished in $((SECONDS - start)) s"

VMLINUX=$BUILD/vmlinux
BZIMAGE=$BUILD/arch/x86/boot/bzImage
for f in "$VMLINUX" "$BZIMAGE" "$BUILD/System.map"; do
  [[ -s $f ]] || die "build did not produce $f"
done
is_elf "$VMLINUX" || die "$VMLINUX is not a valid ELF file"
has_pvh_note "$VMLINUX" || die "$VMLINUX has no Xen PVH note (XEN_ELFNOTE_PHYS32_ENTRY); is CONFIG_PVH=y?"

# --- 5. Publish atomically: files first, KEY last ---------------------------
mkdir -p "$OUT"
rm -f "$OUT/KEY"
install_atomic "$VMLINUX" "$OUT/vmlinux"
install_atomic "$BZIMAGE" "$OUT/bzImage"
install_atomic "$BUILD/System.map" "$OUT/System.map"
install_atomic "$BUILD/.config" "$OUT/config"
{
  echo "key=$KEY"
  echo "source=$SRC_PKG $SRC_VER"
  echo "gcc=$GCC_VER"
  echo "release=$(cat "$BUILD/include/config/kernel.release" 2>/dev/null || echo unknown)"
  echo "build_dir=$BUILD"
  echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ) jobs=$JOBS seconds=$((SECONDS - start))"
} >"$OUT/.BUILD-INFO.tmp.$$"
mv -f "$OUT/.BUILD-INFO.tmp.$$" "$OUT/BUILD-INFO"
echo "$KEY" >"$OUT/.KEY.tmp.$$"
mv -f "$OUT/.KEY.tmp.$$" "$OUT/KEY"
ln -sfn "$(basename "$BUILD")" "$LAST"

# Keep the three most recent build directories (each is a few hundred MB).
find "$BUILD_ROOT" -maxdepth 1 -type d -name 'kernel-minimal-*' ! -name '*.tmp' -printf '%T@ %p\n' |
  sort -rn | tail -n +4 | cut -d' ' -f2- | while read -r old; do
    [[ $old == "$BUILD" ]] || { log "pruning old build dir $old"; rm -rf "$old"; }
  done

log "vmlinux $(stat -c %s "$OUT/vmlinux") bytes, bzImage $(stat -c %s "$OUT/bzImage") bytes, PVH note present"
print_outputs
