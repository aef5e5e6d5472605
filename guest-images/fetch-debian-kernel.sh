#!/usr/bin/env bash
# fetch-debian-kernel.sh - get Debian's stock cloud kernel for use as a VMM
# guest, WITHOUT installing it on the host.
#
# Usage: fetch-debian-kernel.sh [--package linux-image-6.1.0-N-cloud-amd64]
#                               [--no-symbols] [--force]
#   --package P   use this concrete kernel package instead of the one
#                 linux-image-cloud-amd64 currently depends on
#   --no-symbols  skip the -dbg package: System.map is then Debian's stub
#   --force       redo everything even if the outputs are current
#
# Steps: resolve linux-image-cloud-amd64 -> linux-image-6.1.0-N-cloud-amd64,
# `apt-get download` it, `dpkg-deb -x` it, decompress vmlinuz's payload into
# an ELF vmlinux with extract-vmlinux.sh, and collect the virtio modules and
# their dependencies (decompressed) plus a load-order list.
#
# Outputs (in ${VMM_CACHE:-$HOME/.cache/vmm}/kernel/debian/):
#   vmlinuz      the stock compressed image (bzImage)
#   vmlinux      ELF decompressed from vmlinuz (enter via PVH: no in-guest
#                decompression)
#   System.map   the real symbol map, from linux-image-...-dbg (downloaded
#                once, 283 MB; the image package only ships a stub)
#   config
#   modules/     *.ko for virtio(-mmio/-blk/-net/-rng) + dependencies, and
#                modules/modules.load: the .ko files in a valid load order
#                (built-in modules appear as "# name: built-in" comments)
#   VERSION      kernel release (uname -r) and package version
# The last lines printed are these paths.
set -euo pipefail

PROG=$(basename "$0")
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib/common.sh
. "$HERE/lib/common.sh"

META_PKG=linux-image-cloud-amd64
# Modules the initramfs loads (module names, as in lsmod); their dependencies
# (modinfo -F depends, what depmod writes to modules.dep) are added
# automatically. ext4 (and with it jbd2, mbcache, crc16, crc32c) is built
# into Debian's cloud kernel; it is listed so that modules.load records that,
# and so that a kernel which builds it as a module gets it bundled.
WANT_MODULES=(virtio virtio_ring virtio_mmio virtio_blk virtio_net net_failover failover virtio_rng ext4)
OUT=$CACHE/kernel/debian

usage() { sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0"; }

PKG=
FORCE=0
SYMBOLS=1
while (($#)); do
  case $1 in
    --package) [[ -n ${2:-} ]] || die "--package needs a package name"; PKG=$2; shift 2 ;;
    --package=*) PKG=${1#*=}; shift ;;
    --force) FORCE=1; shift ;;
    --no-symbols) SYMBOLS=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done

print_outputs() {
  local f
  for f in vmlinuz vmlinux System.map config modules VERSION; do echo "$OUT/$f"; done
}

# candidate_version PKG: the version apt would download, or nothing.
candidate_version() {
  apt-cache policy "$1" 2>/dev/null | awk '$1 == "Candidate:" && $2 != "(none)" { print $2 }'
}

# --- 1. Resolve the concrete kernel package ---------------------------------
resolve_meta() {
  apt-cache depends "$META_PKG" 2>/dev/null |
    sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-cloud-amd64\)$/\1/p' | head -n 1
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
    # Fallback: the newest linux-image-6.1.*-cloud-amd64 apt knows about.
    PKG=$(apt-cache search --names-only '^linux-image-6\.1\.[0-9.]+-[0-9]+-cloud-amd64$' |
      cut -d' ' -f1 | sort -V | tail -n 1)
  fi
  [[ -n $PKG ]] || die "cannot resolve the kernel package behind $META_PKG"
fi
VER=$(candidate_version "$PKG")
[[ -n $VER ]] || die "package $PKG has no download candidate (apt-get update?)"
KREL=${PKG#linux-image-}   # uname -r, e.g. 6.1.0-56-cloud-amd64

KEY=$( { echo "pkg=$PKG=$VER modules=${WANT_MODULES[*]} symbols=$SYMBOLS"
         cat "$0" "$HERE/extract-vmlinux.sh" "$HERE/lib/common.sh"; } | sha256_stdin)
outputs_current() {
  [[ -f $OUT/KEY && $(<"$OUT/KEY") == "$KEY" ]] || return 1
  local f
  for f in vmlinuz vmlinux System.map config VERSION modules/modules.load; do
    [[ -s $OUT/$f ]] || return 1
  done
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
need_cmd modinfo kmod
need_cmd xz xz-utils
need_cmd zstd zstd

# --- 2. Download (not install) and unpack -----------------------------------
DEBS=$CACHE/debs
mkdir -p "$DEBS"
# download_deb PKG VER WHAT: fetch PKG=VER into $DEBS once; prints the path.
download_deb() {
  local deb=$DEBS/${1}_${2//:/%3a}_amd64.deb
  if [[ ! -s $deb ]] || ! dpkg-deb -I "$deb" >/dev/null 2>&1; then
    log "downloading $1 $2 ($3)"
    rm -f "$deb"
    # Root's apt drops privileges to _apt for downloads; a cache dir under
    # $HOME may not be writable for it, so download as the calling user.
    (cd "$DEBS" && apt-get download -q -o APT::Sandbox::User="$(id -un)" "$1=$2" >&2) ||
      die "apt-get download $1=$2 failed"
    [[ -s $deb ]] || deb=$(find "$DEBS" -maxdepth 1 -name "${1}_*_amd64.deb" | sort -V | tail -n 1)
    [[ -n $deb && -s $deb ]] || die "apt-get download did not produce ${1}_${2}_amd64.deb in $DEBS"
  fi
  echo "$deb"
}
DEB=$(download_deb "$PKG" "$VER" "~27 MB")

ROOT=$CACHE/src/${PKG}_${VER//[^A-Za-z0-9.+~-]/_}
if [[ ! -f $ROOT/.extracted ]]; then
  log "unpacking $(basename "$DEB") into $ROOT"
  rm -rf "$ROOT.tmp"
  mkdir -p "$ROOT.tmp"
  dpkg-deb -x "$DEB" "$ROOT.tmp"
  rm -rf "$ROOT"
  touch "$ROOT.tmp/.extracted"
  mv "$ROOT.tmp" "$ROOT"
fi
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
# Index every module file by module name (dashes become underscores).
declare -A MODFILE=()
while IFS= read -r -d '' f; do
  n=$(basename "$f")
  n=${n%.ko*}
  MODFILE[${n//-/_}]=$f
done < <(find "$MODDIR/kernel" -type f \( -name '*.ko' -o -name '*.ko.xz' -o -name '*.ko.zst' -o -name '*.ko.gz' \) -print0)
declare -A BUILTIN=()
if [[ -f $MODDIR/modules.builtin ]]; then
  while IFS= read -r f; do n=$(basename "$f" .ko); BUILTIN[${n//-/_}]=1; done <"$MODDIR/modules.builtin"
fi

mkdir -p "$STAGE/modules"
declare -A STATE=()   # name -> visiting|done
ORDER=()
# visit NAME: depth-first, dependencies before dependents.
visit() {
  local name=${1//-/_} dep src deps
  [[ -z ${STATE[$name]:-} ]] || {
    [[ ${STATE[$name]} == "done" ]] || die "module dependency cycle at $name"
    return 0
  }
  STATE[$name]=visiting
  if [[ -n ${MODFILE[$name]:-} ]]; then
    src=${MODFILE[$name]}
    case $src in
      *.ko.xz) xz -dc "$src" >"$STAGE/modules/$name.ko" ;;
      *.ko.zst) zstd -dcq "$src" >"$STAGE/modules/$name.ko" ;;
      *.ko.gz) gzip -dc "$src" >"$STAGE/modules/$name.ko" ;;
      *) cp "$src" "$STAGE/modules/$name.ko" ;;
    esac
    deps=$(modinfo -F depends "$STAGE/modules/$name.ko")
    for dep in ${deps//,/ }; do visit "$dep"; done
    ORDER+=("$name.ko")
  elif [[ -n ${BUILTIN[$name]:-} ]]; then
    ORDER+=("# $name: built-in")
  else
    die "module $name is neither in $MODDIR/kernel nor in modules.builtin"
  fi
  STATE[$name]="done"
}
for m in "${WANT_MODULES[@]}"; do visit "$m"; done
{
  echo "# Load order for $KREL (generated by $PROG): insmod each .ko in turn."
  printf '%s\n' "${ORDER[@]}"
} >"$STAGE/modules/modules.load"
printf 'release=%s\npackage=%s\nversion=%s\npvh_note=%s\nvirtio_mmio_cmdline_devices=%s\nsystem_map=%s\n' \
  "$KREL" "$PKG" "$VER" "$PVH" "$MMIO_CMDLINE" "$SYMSRC" >"$STAGE/VERSION"
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
