#!/usr/bin/env bash
# fetch-debian-kernel.sh - get Debian's stock kernel (cloud or generic) for
# use as a VMM guest, WITHOUT installing it on the host.
#
# Usage: fetch-debian-kernel.sh [--flavor cloud|generic]
#                               [--package linux-image-6.1.0-N-cloud-amd64]
#                               [--no-symbols] [--force]
#   --flavor F    cloud (default): linux-image-cloud-amd64, the small kernel
#                 for VMs; generic: linux-image-amd64, what a Debian desktop
#                 or server runs (also the emulated SVM host's L1 kernel)
#   --package P   use this concrete kernel package instead of the one
#                 the flavor's meta package currently depends on
#   --no-symbols  skip the -dbg package: System.map is then Debian's stub
#                 (outputs made earlier with the real System.map are kept)
#   --force       redo everything even if the outputs are current
#
# Steps: resolve the meta package (linux-image-cloud-amd64 ->
# linux-image-6.1.0-N-cloud-amd64, linux-image-amd64 -> linux-image-6.1.0-N-amd64),
# `apt-get download` it, `dpkg-deb -x` it into
# ${VMM_CACHE:-$HOME/.cache/vmm}/src/<package>_<version>/ (kept: other
# scripts use the whole tree, see root= below), decompress vmlinuz's payload
# into an ELF vmlinux with extract-vmlinux.sh, and collect the virtio modules
# and their dependencies (decompressed) plus a load-order list. The apt and
# module steps are lib/debian-kernel.sh's.
#
# Outputs (in ${VMM_CACHE:-$HOME/.cache/vmm}/kernel/debian/ for cloud,
# kernel/debian-generic/ for generic):
#   vmlinuz      the stock compressed image (bzImage)
#   vmlinux      ELF decompressed from vmlinuz (enter via PVH: no in-guest
#                decompression)
#   System.map   the real symbol map, from linux-image-...-dbg (downloaded
#                once, 283 MB; the image package only ships a stub)
#   config
#   modules/     *.ko for virtio(-mmio/-blk/-net/-rng) + dependencies, and
#                modules/modules.load: the .ko files in a valid load order
#                (built-in modules appear as "# name: built-in" comments)
#   VERSION      key=value lines: release (uname -r), package, version,
#                pvh_note, virtio_mmio_cmdline_devices, system_map (stub or
#                the -dbg package) and root (the unpacked package: boot/,
#                lib/modules/<release>/ with every module, usr/)
# The last lines printed are these paths.
set -euo pipefail

PROG=$(basename "$0")
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib/common.sh
. "$HERE/lib/common.sh"
# shellcheck source=lib/debian-kernel.sh
. "$HERE/lib/debian-kernel.sh"

FLAVOR=cloud
# Modules the initramfs loads (module names, as in lsmod); their dependencies
# (modinfo -F depends, what depmod writes to modules.dep) are added
# automatically. ext4 (and with it jbd2, mbcache, crc16, crc32c) is built
# into Debian's cloud kernel; it is listed so that modules.load records that,
# and so that a kernel which builds it as a module gets it bundled.
WANT_MODULES=(virtio virtio_ring virtio_mmio virtio_blk virtio_net net_failover failover virtio_rng ext4)

usage() { sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0"; }

PKG=
FORCE=0
SYMBOLS=1
while (($#)); do
  case $1 in
    --flavor) FLAVOR=${2:-}; shift 2 || die "--flavor needs cloud or generic" ;;
    --flavor=*) FLAVOR=${1#*=}; shift ;;
    --package) [[ -n ${2:-} ]] || die "--package needs a package name"; PKG=$2; shift 2 ;;
    --package=*) PKG=${1#*=}; shift ;;
    --force) FORCE=1; shift ;;
    --no-symbols) SYMBOLS=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done

case $FLAVOR in
  cloud) META_PKG=linux-image-cloud-amd64; SUFFIX=cloud-amd64; OUT=$CACHE/kernel/debian; DEB_SIZE="~27 MB" ;;
  generic) META_PKG=linux-image-amd64; SUFFIX=amd64; OUT=$CACHE/kernel/debian-generic; DEB_SIZE="~70 MB" ;;
  *) die "--flavor must be cloud or generic, not '$FLAVOR'" ;;
esac

print_outputs() {
  local f
  for f in vmlinuz vmlinux System.map config modules VERSION; do echo "$OUT/$f"; done
}

# --- 1. Resolve the concrete kernel package ---------------------------------
# resolve_meta: the meta package's concrete kernel dependency (for generic:
# linux-image-6.1.0-N-amd64, not -cloud-amd64 or -rt-amd64).
resolve_meta() {
  apt-cache depends "$META_PKG" 2>/dev/null |
    sed -n "s/^ *Depends: \\(linux-image-[0-9][0-9.]*-[0-9][0-9]*-$SUFFIX\\)\$/\\1/p" | head -n 1
}
if [[ -z $PKG ]]; then
  PKG=$(resolve_meta)
  if [[ -z $PKG && -z $(candidate_version "$META_PKG") ]]; then
    [[ $(id -u) -eq 0 ]] || die "$META_PKG has no install candidate; run apt-get update (as root)"
    log "$META_PKG has no install candidate; running apt-get update"
    apt-get update -q >&2 || die "apt-get update failed"
    PKG=$(resolve_meta)
  fi
  if [[ -z $PKG ]]; then
    # Fallback: the newest linux-image-6.1.*-$SUFFIX apt knows about.
    PKG=$(apt-cache search --names-only "^linux-image-6\\.1\\.[0-9.]+-[0-9]+-$SUFFIX\$" |
      cut -d' ' -f1 | sort -V | tail -n 1)
  fi
  [[ -n $PKG ]] || die "cannot resolve the kernel package behind $META_PKG"
fi
VER=$(candidate_version "$PKG")
[[ -n $VER ]] || die "package $PKG has no download candidate (apt-get update?)"
KREL=${PKG#linux-image-}   # uname -r, e.g. 6.1.0-56-cloud-amd64
ROOT=$CACHE/src/${PKG}_${VER//[^A-Za-z0-9.+~-]/_}   # the unpacked package

# fetch_key SYMBOLS: the outputs' key for that --no-symbols setting.
fetch_key() {
  { echo "pkg=$PKG=$VER modules=${WANT_MODULES[*]} symbols=$1"
    cat "$0" "$HERE/extract-vmlinux.sh" "$HERE/lib/common.sh" "$HERE/lib/debian-kernel.sh"; } | sha256_stdin
}
KEY=$(fetch_key "$SYMBOLS")
# With --no-symbols, outputs that already have the real System.map will do.
KEY_TOO=$KEY
((SYMBOLS)) || KEY_TOO=$(fetch_key 1)
outputs_current() {
  [[ -f $OUT/KEY ]] || return 1
  [[ $(<"$OUT/KEY") == "$KEY" || $(<"$OUT/KEY") == "$KEY_TOO" ]] || return 1
  local f
  for f in vmlinuz vmlinux System.map config VERSION modules/modules.load; do
    [[ -s $OUT/$f ]] || return 1
  done
  # VERSION names the unpacked tree; other scripts use it, so it must exist.
  [[ -f $ROOT/.extracted ]]
}
if ((FORCE == 0)) && outputs_current; then
  log "up to date: $PKG $VER"
  print_outputs
  exit 0
fi
take_lock "$CACHE/kernel/.debian.lock"
if ((FORCE == 0)) && outputs_current; then
  log "up to date: $PKG $VER (fetched by a concurrent run)"
  print_outputs
  exit 0
fi

need_cmd dpkg-deb dpkg
kmod_tools

# --- 2. Download (not install) and unpack -----------------------------------
DEB=$(download_deb "$PKG" "$VER" "$DEB_SIZE")
extract_deb "$DEB" "$ROOT"
MODDIR=$ROOT/lib/modules/$KREL
for f in "$ROOT/boot/vmlinuz-$KREL" "$ROOT/boot/System.map-$KREL" "$ROOT/boot/config-$KREL"; do
  [[ -s $f ]] || die "$(basename "$DEB") does not contain ${f#"$ROOT"}"
done
[[ -d $MODDIR/kernel ]] || die "$(basename "$DEB") has no lib/modules/$KREL/kernel"

# --- 3. Stage everything in a temp dir next to OUT, then swap it in ---------
mkdir -p "$(dirname "$OUT")"
STAGE=$(mktemp -d "$(dirname "$OUT")/.debian.stage.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
cp "$ROOT/boot/vmlinuz-$KREL" "$STAGE/vmlinuz"
# The image package's System.map is a one-line stub ("The real System.map
# is in the linux-image-<version>-dbg package"). The rip sampler needs the
# real one: take just that member out of the -dbg package (283 MB download,
# once; the 590 MB debug vmlinux is not unpacked).
SYMSRC=stub
if ((SYMBOLS)); then
  DBG_PKG=$PKG-dbg
  DBG_VER=$(candidate_version "$DBG_PKG")
  MAP=$CACHE/src/${DBG_PKG}_${VER//[^A-Za-z0-9.+~-]/_}/System.map
  if [[ -s $MAP ]]; then
    SYMSRC=$DBG_PKG
  elif [[ $DBG_VER != "$VER" ]]; then
    log "WARNING: $DBG_PKG $VER not available (candidate: ${DBG_VER:-none}); System.map stays a stub"
  else
    DBG_DEB=$(download_deb "$DBG_PKG" "$VER" "~283 MB, for System.map")
    log "extracting System.map-$KREL from $(basename "$DBG_DEB") (reads the whole archive, ~1 min)"
    mkdir -p "$(dirname "$MAP")"
    dpkg-deb --fsys-tarfile "$DBG_DEB" | tar -xOf - "./usr/lib/debug/boot/System.map-$KREL" >"$MAP.tmp" ||
      die "$(basename "$DBG_DEB") has no usr/lib/debug/boot/System.map-$KREL"
    mv -f "$MAP.tmp" "$MAP"
    SYMSRC=$DBG_PKG
  fi
fi
if [[ $SYMSRC == stub ]]; then
  cp "$ROOT/boot/System.map-$KREL" "$STAGE/System.map"
else
  cp "$MAP" "$STAGE/System.map"
fi
cp "$ROOT/boot/config-$KREL" "$STAGE/config"
log "extracting vmlinux from vmlinuz"
"$HERE/extract-vmlinux.sh" "$STAGE/vmlinuz" "$STAGE/vmlinux" >/dev/null
if has_pvh_note "$STAGE/vmlinux"; then PVH="yes (entry $(pvh_entry "$STAGE/vmlinux"))"; else PVH=no; fi
# Debian builds virtio_mmio without command-line device support, so
# `virtio_mmio.device=` does nothing with this kernel: say so loudly.
MMIO_CMDLINE=$(sed -n 's/^CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=//p' "$STAGE/config")
MMIO_CMDLINE=${MMIO_CMDLINE:-n}

# --- 4. Virtio modules + dependencies, in load order ------------------------
mkdir -p "$STAGE/modules"
kmod_index "$MODDIR"
kmod_closure "$STAGE/modules" "${WANT_MODULES[@]}"
kmod_write_load "$STAGE/modules/modules.load" \
  "Load order for $KREL (generated by $PROG): insmod each .ko in turn."
printf 'release=%s\npackage=%s\nversion=%s\npvh_note=%s\nvirtio_mmio_cmdline_devices=%s\nsystem_map=%s\nroot=%s\n' \
  "$KREL" "$PKG" "$VER" "$PVH" "$MMIO_CMDLINE" "$SYMSRC" "$ROOT" >"$STAGE/VERSION"
echo "$KEY" >"$STAGE/KEY"

# Swap the staged directory in (rename is atomic; the old copy goes away).
if [[ -d $OUT ]]; then
  mv "$OUT" "$STAGE.old"
  mv "$STAGE" "$OUT"
  rm -rf "$STAGE.old"
else
  mv "$STAGE" "$OUT"
fi
trap - EXIT

log "kernel $KREL ($PKG $VER); vmlinux $(stat -c %s "$OUT/vmlinux") bytes; PVH note: $PVH; System.map: $SYMSRC"
[[ $MMIO_CMDLINE == y ]] ||
  log "WARNING: this kernel has CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=$MMIO_CMDLINE: virtio_mmio cannot take devices from the command line / module parameters"
log "modules ($(grep -c '\.ko$' "$OUT/modules/modules.load") files): $(grep -v '^# Load' "$OUT/modules/modules.load" | tr '\n' ' ')"
print_outputs
