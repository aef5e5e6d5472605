#!/usr/bin/env bash
# build-l1.sh - build (once, cached) the boot files of the emulated "normal
# AMD-SVM KVM host" (L1) that run_l1.py boots under QEMU/TCG.
#
# Usage: build-l1.sh [--package linux-image-6.1.0-N-amd64] [--force]
#   --package P   use this concrete kernel package instead of the one
#                 linux-image-amd64 currently depends on (passed on to
#                 fetch-debian-kernel.sh, whose generic outputs then hold P)
#   --force       rebuild even if the cached outputs are current (the kernel
#                 is not fetched again)
#
# Everything comes from Debian packages; nothing is installed except, when
# missing, the tools busybox-static, cpio, kmod (apt-get install):
#   - Debian's GENERIC kernel, from `guest-images/fetch-debian-kernel.sh
#     --flavor generic --no-symbols` (the same kernel the L2 tests boot):
#     linux-image-amd64 resolved to linux-image-6.1.0-N-amd64, downloaded,
#     not installed, unpacked into <cache>/src/<pkg>_<ver>/ (the root= line
#     of its VERSION file). build-l1.sh runs `depmod -b` on that tree (once:
#     again only if modules.dep is missing or older than the unpacking). L1
#     sees the tree through the 9p share of the host root and modprobes the
#     "late" modules from it.
#   - an uncompressed initramfs: busybox-static, init.sh as /init, the
#     "initramfs" modules of modules.list with their dependencies
#     (decompressed, in load order; guest-images/lib/debian-kernel.sh) and
#     /etc/svm-l1.conf (KREL, KROOT, LATE_MODULES).
#
# Outputs, in ${VMM_CACHE:-$HOME/.cache/vmm}/svm-host/<key>/, where key is a
# sha256 of: package name and version, busybox-static version, this script,
# init.sh, modules.list, fetch-debian-kernel.sh and guest-images/lib/*.sh:
#   vmlinuz          the kernel (bzImage)
#   initramfs.cpio   the initramfs (newc cpio, uncompressed, reproducible)
#   modules.load     what /init insmods, in order (built-in ones commented)
#   VERSION          package, version, release, key
# The last lines printed are those four paths (run_l1.py reads them). A
# build removes the outputs of other keys (and the old svm-host/kernel/ trees
# of the layout before fetch-debian-kernel.sh unpacked the kernel).
# A rerun with unchanged inputs only runs the cached fetch (~2 s: it asks apt
# for the current version).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PROG=$(basename "$0")
# shellcheck source=SCRIPTDIR/../../guest-images/lib/common.sh
. "$REPO/guest-images/lib/common.sh"
# shellcheck source=SCRIPTDIR/../../guest-images/lib/debian-kernel.sh
. "$REPO/guest-images/lib/debian-kernel.sh"

FETCH=$REPO/guest-images/fetch-debian-kernel.sh
INIT_SCRIPT=$HERE/init.sh
MODULE_LIST=$HERE/modules.list
EPOCH=${SOURCE_DATE_EPOCH:-0}
BUSYBOX=/bin/busybox

usage() { sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0"; }

PKG=
FORCE=0
while (($#)); do
  case $1 in
    --package) [[ -n ${2:-} ]] || die "--package needs a package name"; PKG=$2; shift 2 ;;
    --package=*) PKG=${1#*=}; shift ;;
    --force) FORCE=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done

# fetch_kernel: run fetch-debian-kernel.sh for the generic kernel and set
# PKG, VER, KREL and KROOT (the unpacked package) from its VERSION file.
fetch_kernel() {
  local args=(--flavor generic --no-symbols) out version
  [[ -z $PKG ]] || args+=(--package "$PKG")
  out=$("$FETCH" "${args[@]}") || die "fetch-debian-kernel.sh ${args[*]} failed"
  version=$(tail -n 1 <<<"$out")
  [[ $(basename "$version") == VERSION && -s $version ]] ||
    die "fetch-debian-kernel.sh printed no VERSION file last"
  PKG=$(sed -n 's/^package=//p' "$version")
  VER=$(sed -n 's/^version=//p' "$version")
  KREL=$(sed -n 's/^release=//p' "$version")
  KROOT=$(sed -n 's/^root=//p' "$version")
  [[ -n $PKG && -n $VER && -n $KREL && -n $KROOT ]] ||
    die "$version lacks package=, version=, release= or root="
  [[ -f $KROOT/.extracted && -s $KROOT/boot/vmlinuz-$KREL ]] ||
    die "$KROOT (root= of $version) is not a complete unpacked $PKG"
}

# depmod_current: the tree's modules.dep exists and is newer than the unpacking.
depmod_current() {
  local dep=$KROOT/lib/modules/$KREL/modules.dep
  [[ -s $dep && ! $dep -ot $KROOT/.extracted ]]
}

# depmod_tree: `depmod -b` the unpacked tree unless done already; modprobe -d
# in L1 needs modules.dep, modules.softdep, modules.alias...
depmod_tree() {
  depmod_current && return 0
  log "depmod -b $KROOT $KREL"
  depmod -b "$KROOT" "$KREL" || die "depmod -b $KROOT $KREL failed"
}

# read_modules STAGE: the module names of that stage in modules.list.
read_modules() {
  awk -v s="$1" '$1 == s { print $2 }' "$MODULE_LIST"
}

# check_late_modules: each late module exists (file or built-in) in $KREL.
check_late_modules() {
  local m
  for m in "${LATE[@]}"; do
    kmod_known "$m" || die "late module $m is neither a module of $KREL nor built in"
  done
}

# make_tree ROOTDIR KROOT: lay out the initramfs contents.
make_tree() {
  local r=$1 kroot=$2 applet
  mkdir -p "$r"/{bin,dev,etc,proc,sys,lib/modules,newroot,host,work,rw}
  cp "$BUSYBOX" "$r/bin/busybox"
  chmod 755 "$r/bin/busybox"
  while read -r applet; do
    applet=/bin/${applet##*/}
    [[ $applet == /bin/busybox || -e $r$applet || -L $r$applet ]] || ln -s busybox "$r$applet"
  done < <("$BUSYBOX" --list-full)
  install -m 755 "$INIT_SCRIPT" "$r/init"
  # The kernel opens /dev/console for /init before devtmpfs is mounted.
  mknod -m 600 "$r/dev/console" c 5 1
  mknod -m 666 "$r/dev/null" c 1 3

  kmod_closure "$r/lib/modules" "${EARLY[@]}"
  kmod_write_load "$r/etc/modules.load" "insmod order for $KREL (generated by $PROG from modules.list)"
  {
    echo "# generated by $PROG"
    printf 'KREL=%q\nKROOT=%q\nLATE_MODULES=%q\n' "$KREL" "$kroot" "${LATE[*]}"
  } >"$r/etc/svm-l1.conf"
}

# write_cpio ROOTDIR OUT: sorted, fixed mtimes, root-owned, uncompressed.
write_cpio() {
  find "$1" -exec touch -h -d "@$EPOCH" {} +
  (cd "$1" && find . -mindepth 1 -printf '%P\0' | LC_ALL=C sort -z |
    cpio --null -o -H newc -R 0:0 --reproducible --quiet) >"$2"
}

# prune_old: drop outputs of other keys (an L1 still running from them has
# its kernel and initramfs in memory already) and svm-host/kernel/, where
# build-l1.sh unpacked the kernel itself before fetch-debian-kernel.sh did.
# The trees under <cache>/src/ are fetch-debian-kernel.sh's; they stay.
prune_old() {
  local d
  for d in "$CACHE"/svm-host/*; do
    [[ -d $d && $(basename "$d") =~ ^[0-9a-f]{64}$ && $d != "$OUT" ]] || continue
    log "removing old outputs $d"
    rm -rf "$d"
  done
  if [[ -d $CACHE/svm-host/kernel ]]; then
    log "removing the old kernel trees in $CACHE/svm-host/kernel"
    rm -rf "$CACHE/svm-host/kernel"
  fi
}

print_outputs() {
  local f
  for f in vmlinuz initramfs.cpio modules.load VERSION; do echo "$OUT/$f"; done
}

# --- main --------------------------------------------------------------------
[[ $(id -u) -eq 0 ]] || die "must run as root (mknod for /dev/console)"
ensure_pkgs busybox-static cpio kmod
LC_ALL=C readelf -l "$BUSYBOX" 2>/dev/null | grep -q 'Requesting program interpreter' &&
  die "$BUSYBOX is dynamically linked; install busybox-static"
mapfile -t EARLY < <(read_modules initramfs)
mapfile -t LATE < <(read_modules late)
((${#EARLY[@]})) || die "modules.list lists no initramfs modules"
fetch_kernel

KEY=$( { echo "pkg=$PKG=$VER busybox-static=$(pkg_version busybox-static) epoch=$EPOCH"
         cat "$0" "$INIT_SCRIPT" "$MODULE_LIST" "$FETCH" \
           "$REPO/guest-images/lib/common.sh" "$REPO/guest-images/lib/debian-kernel.sh"; } | sha256_stdin)
OUT=$CACHE/svm-host/$KEY
if ((FORCE == 0)) && [[ -f $OUT/.complete ]] && depmod_current; then
  log "up to date: $PKG $VER (key ${KEY:0:12})"
  print_outputs
  exit 0
fi
take_lock "$CACHE/svm-host/.build.lock"
depmod_tree
if ((FORCE == 0)) && [[ -f $OUT/.complete ]]; then
  log "up to date: $PKG $VER (key ${KEY:0:12}; built by a concurrent run or depmod redone)"
  print_outputs
  exit 0
fi

kmod_tools
kmod_index "$KROOT/lib/modules/$KREL"
check_late_modules

STAGE=$(mktemp -d "$CACHE/svm-host/.stage.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
make_tree "$STAGE/root" "$KROOT"
write_cpio "$STAGE/root" "$STAGE/initramfs.cpio"
cpio -it --quiet <"$STAGE/initramfs.cpio" | grep -qx init || die "initramfs lacks /init"
cp "$KROOT/boot/vmlinuz-$KREL" "$STAGE/vmlinuz"
cp "$STAGE/root/etc/modules.load" "$STAGE/modules.load"
printf 'package=%s\nversion=%s\nrelease=%s\nkroot=%s\nkey=%s\n' \
  "$PKG" "$VER" "$KREL" "$KROOT" "$KEY" >"$STAGE/VERSION"
rm -rf "$STAGE/root"
touch "$STAGE/.complete"
rm -rf "$OUT"
mv "$STAGE" "$OUT"
trap - EXIT
prune_old

log "built for $KREL ($PKG $VER): initramfs $(stat -c %s "$OUT/initramfs.cpio") bytes;" \
  "insmod order: $(grep -v '^# insmod' "$OUT/modules.load" | tr '\n' ' ')"
log "late modules (modprobe -d $KROOT in L1): ${LATE[*]}"
print_outputs
