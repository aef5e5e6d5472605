#!/usr/bin/env bash
# build-initramfs.sh - build the busybox initramfs for the VMM's Linux guests.
#
# Usage: build-initramfs.sh [--kernel minimal|debian|debian-generic] [--out PATH] [--force]
#   --kernel K   minimal (default): for build-kernel.sh's kernel, no modules.
#                debian: for fetch-debian-kernel.sh's (cloud) kernel; bundles
#                its virtio modules and loads them at boot (runs
#                fetch-debian-kernel.sh first if they are not cached yet).
#                debian-generic: the same for fetch-debian-kernel.sh
#                --flavor generic's kernel.
#   --out PATH   output file (default:
#                ${VMM_CACHE:-$HOME/.cache/vmm}/initramfs/initramfs-K.cpio)
#   --force      rebuild even if the output is current
#
# The archive is an UNCOMPRESSED newc cpio (the build host's guest kernel
# needs ~85 s to inflate 1 MB of gzip; a plain cpio unpacks at once), made
# reproducibly (sorted, fixed mtimes, owner 0:0, renumbered inodes).
# Contents: static busybox + applet symlinks, /dev/console and /dev/null,
# busybox init as PID 1 (/init -> /bin/busybox), /etc/inittab, /etc/rc,
# /etc/shutdown, /etc/profile. At boot /etc/rc writes boot-progress mark 1 to
# the VMM's boot probe (port 0x4f0) and prints VMM-GUEST-READY; poweroff and
# reboot write 0 to port 0x4f4, asking the VMM to exit with code 0.
#
# Rebuilt only when this script, busybox or the module set changes (the key
# is stored in PATH.key). The last line printed is the output path.
set -euo pipefail

PROG=$(basename "$0")
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib/common.sh
. "$HERE/lib/common.sh"

# Boot probe (devices/legacy/boot_probe.h, boot/x86_64/layout.h): an 8-byte
# window at I/O port 0x4f0 and, with the same layout, at MMIO 0xd0000000.
# Offset 0: 1-byte write = boot-progress mark. Offset 4: write = exit code.
PROBE_PORT=0x4f0
PROBE_MMIO=0xd0000000
MARK_OFF=0
EXIT_OFF=4
# Fixed timestamp for every archive member (reproducible output).
EPOCH=${SOURCE_DATE_EPOCH:-0}

usage() { sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0"; }

VARIANT=minimal
OUTPUT=
FORCE=0
while (($#)); do
  case $1 in
    --kernel) VARIANT=${2:-}; shift 2 || die "--kernel needs minimal, debian or debian-generic" ;;
    --kernel=*) VARIANT=${1#*=}; shift ;;
    --out) [[ -n ${2:-} ]] || die "--out needs a path"; OUTPUT=$2; shift 2 ;;
    --out=*) OUTPUT=${1#*=}; shift ;;
    --force) FORCE=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done
case $VARIANT in
  minimal) ;;
  debian) FLAVOR=cloud ;;
  debian-generic) FLAVOR=generic ;;
  *) die "--kernel must be minimal, debian or debian-generic, not '$VARIANT'" ;;
esac
OUTPUT=${OUTPUT:-$CACHE/initramfs/initramfs-$VARIANT.cpio}
[[ $OUTPUT == /* ]] || OUTPUT=$PWD/$OUTPUT

ensure_pkgs busybox-static cpio
BUSYBOX=/bin/busybox
[[ -x $BUSYBOX ]] || die "$BUSYBOX missing although busybox-static is installed"
LC_ALL=C readelf -l "$BUSYBOX" 2>/dev/null | grep -q 'Requesting program interpreter' &&
  die "$BUSYBOX is dynamically linked; install busybox-static (it replaces package busybox)"
BB_VER=$(pkg_version busybox-static)

# Modules for the debian variants.
KDIR=$CACHE/kernel/$VARIANT
MODSRC=$KDIR/modules
if [[ $VARIANT != minimal && ! -s $MODSRC/modules.load ]]; then
  log "no cached Debian kernel modules; running fetch-debian-kernel.sh --flavor $FLAVOR"
  "$HERE/fetch-debian-kernel.sh" --flavor "$FLAVOR" >/dev/null
  [[ -s $MODSRC/modules.load ]] || die "fetch-debian-kernel.sh did not produce $MODSRC/modules.load"
fi

KEY=$( {
  echo "variant=$VARIANT busybox=$BB_VER epoch=$EPOCH"
  sha256sum "$BUSYBOX" | cut -d' ' -f1
  cat "$0" "$HERE/lib/common.sh"
  if [[ $VARIANT != minimal ]]; then
    cat "$MODSRC/modules.load" "$KDIR/VERSION" 2>/dev/null || true
    (cd "$MODSRC" && sha256sum -- *.ko)
  fi
} | sha256_stdin)

report() {
  log "$(stat -c %s "$OUTPUT") bytes, $(cpio -it --quiet <"$OUTPUT" | wc -l) entries; first entries:"
  cpio -it --quiet <"$OUTPUT" | head -n 8 | sed 's/^/    /' >&2
  echo "$OUTPUT"
}
if ((FORCE == 0)) && [[ -s $OUTPUT && -f $OUTPUT.key && $(<"$OUTPUT.key") == "$KEY" ]]; then
  log "up to date ($VARIANT, busybox $BB_VER)"
  report
  exit 0
fi
[[ $(id -u) -eq 0 ]] || die "must run as root (creates /dev/console and /dev/null with mknod)"

mkdir -p "$(dirname "$OUTPUT")"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/initramfs.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
R=$WORK/root
mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,root,etc,mnt,run,var/log,lib/modules}
chmod 1777 "$R/tmp"
chmod 700 "$R/root"

# --- busybox and its applets ------------------------------------------------
cp "$BUSYBOX" "$R/bin/busybox"
chmod 755 "$R/bin/busybox"
while read -r applet; do
  case $applet in
    ''|linuxrc|bin/busybox) continue ;;
  esac
  [[ -e $R/$applet || -L $R/$applet ]] || ln -s /bin/busybox "$R/$applet"
done < <("$BUSYBOX" --list-full)
# PID 1: the kernel runs /init; busybox picks the applet from argv[0] = "init".
ln -s /bin/busybox "$R/init"

# --- device nodes the kernel needs before /etc/rc mounts devtmpfs -----------
mknod -m 600 "$R/dev/console" c 5 1
mknod -m 666 "$R/dev/null" c 1 3

# --- /etc ----------------------------------------------------------------------
cat >"$R/etc/inittab" <<'EOF'
# busybox init. cttyhack finds the real console (ttyS0) and makes it the
# shell's controlling tty, so job control and Ctrl-C work on the serial line.
::sysinit:/etc/rc
::respawn:/bin/cttyhack /bin/sh -l
::ctrlaltdel:/sbin/reboot
::shutdown:/etc/shutdown
EOF

# Shared helper: one-byte write to the boot probe. Prefers the port window
# via /dev/port (the kernel does the outb, like any port I/O); kernels built
# without CONFIG_DEVPORT (Debian's) use the MMIO window via /dev/mem instead
# (busybox devmem). @...@ placeholders are filled in below.
cat >"$R/etc/vmm-probe.sh" <<'EOF'
# Boot probe: 8-byte window at port @PROBE_PORT@ and MMIO @PROBE_MMIO@.
# vmm_probe_write OFFSET VALUE   OFFSET @MARK_OFF@: boot-progress mark,
#                                OFFSET @EXIT_OFF@: exit request (VALUE = code)
vmm_probe_write() {
  if [ -c /dev/port ] &&
     printf "\\$(printf %o "$2")" |
       dd of=/dev/port bs=1 seek=$((@PROBE_PORT@ + $1)) count=1 conv=notrunc 2>/dev/null; then
    return 0
  fi
  [ -c /dev/mem ] && devmem $((@PROBE_MMIO@ + $1)) 8 "$2" 2>/dev/null
}
EOF
sed -i -e "s/@PROBE_PORT@/$PROBE_PORT/g" -e "s/@PROBE_MMIO@/$PROBE_MMIO/g" \
  -e "s/@MARK_OFF@/$MARK_OFF/g" -e "s/@EXIT_OFF@/$EXIT_OFF/g" "$R/etc/vmm-probe.sh"

cat >"$R/etc/rc" <<'EOF'
#!/bin/sh
# sysinit: mount the basics, load modules (debian variant), tell the VMM
# we are up. Keep it short: every console byte is a VM exit.
. /etc/vmm-probe.sh
EOF
cat >>"$R/etc/rc" <<'EOF'
mount -t proc proc /proc
mount -t sysfs sysfs /sys
grep -q '^[^ ]* /dev ' /proc/mounts || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts 2>/dev/null
mount -t tmpfs -o mode=1777 tmpfs /tmp
hostname vmm-guest
ifconfig lo 127.0.0.1 up 2>/dev/null

# Bundled modules (debian variant): insmod in dependency order. Parameters
# given on the kernel command line as <module>.<param>=<value> are passed on.
if [ -f /lib/modules/modules.load ]; then
  cmdline=$(cat /proc/cmdline)
  while read -r ko; do
    case $ko in ''|'#'*) continue ;; esac
    mod=${ko%.ko}
    params=
    for arg in $cmdline; do
      case $arg in "$mod".*=*) params="$params ${arg#"$mod".}" ;; esac
    done
    # shellcheck disable=SC2086
    if ! insmod "/lib/modules/$ko" $params 2>/dev/null; then
      if [ -n "$params" ] && insmod "/lib/modules/$ko" 2>/dev/null; then
        echo "rc: $mod rejected parameters:$params (loaded without them)"
      else
        echo "rc: insmod $ko failed (ignored)"
      fi
    fi
  done </lib/modules/modules.load
fi

vmm_probe_write 0 1 || echo "rc: boot probe write failed (neither /dev/port nor /dev/mem usable)"
echo VMM-GUEST-READY
echo "busybox shell on the console; 'poweroff' or 'reboot' ends the VMM (exit code 0)"
EOF

cat >"$R/etc/shutdown" <<'EOF'
#!/bin/sh
# Run by busybox init on poweroff/reboot before it kills everything: flush
# the disks, then ask the VMM to exit with code 0 (write 0 to the boot
# probe's exit register: port 0x4f4, or MMIO 0xd0000004).
. /etc/vmm-probe.sh
sync
vmm_probe_write 4 0 || echo "shutdown: VMM exit request failed"
EOF
chmod 755 "$R/etc/rc" "$R/etc/shutdown"

cat >"$R/etc/profile" <<'EOF'
export PATH=/sbin:/usr/sbin:/bin:/usr/bin
export HOME=/root
cd "$HOME" 2>/dev/null
PS1='\w \$ '
EOF
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$R/etc/passwd"
printf 'root:x:0:\n' >"$R/etc/group"
printf 'vmm-guest\n' >"$R/etc/hostname"

# --- modules (debian variants) -------------------------------------------------
# verify_modules: offline proof that /etc/rc's insmod sequence can work. Every
# .ko must be built for the fetched kernel (vermagic), every dependency that
# modinfo names must be loaded before it (so the closure is complete and the
# order valid), and, when the real System.map is at hand, depmod must resolve
# every symbol the set imports from the kernel or from the set itself.
verify_modules() {
  local krel ko mod dep vermagic loaded=" " n=0 map dep_root out
  krel=$(sed -n 's/^release=//p' "$KDIR/VERSION" 2>/dev/null)
  [[ -n $krel ]] || die "no release= in $KDIR/VERSION; rerun fetch-debian-kernel.sh"
  need_cmd modinfo kmod
  while read -r ko; do
    [[ -z $ko || $ko == \#* ]] && continue
    [[ -s $MODSRC/$ko ]] || die "modules.load lists $ko, which is not in $MODSRC"
    mod=${ko%.ko}
    vermagic=$(modinfo -F vermagic "$MODSRC/$ko")
    [[ ${vermagic%% *} == "$krel" ]] || die "$ko is built for '${vermagic%% *}', not for $krel"
    for dep in $(modinfo -F depends "$MODSRC/$ko" | tr ',' ' '); do
      [[ $loaded == *" ${dep//-/_} "* ]] ||
        die "$ko depends on $dep, which modules.load does not load before it"
    done
    loaded+="$mod "
    n=$((n + 1))
  done <"$MODSRC/modules.load"
  map=$KDIR/System.map
  if grep -q '^system_map=stub' "$KDIR/VERSION" || [[ $(wc -l <"$map") -lt 1000 ]]; then
    log "module check: $n modules for $krel, dependency order ok; symbol check skipped (System.map is Debian's stub)"
    return 0
  fi
  dep_root=$WORK/depmod
  mkdir -p "$dep_root/lib/modules/$krel/kernel"
  cp "$MODSRC"/*.ko "$dep_root/lib/modules/$krel/kernel/"
  out=$(depmod -b "$dep_root" -e -F "$map" "$krel" 2>&1) || die "depmod failed: $out"
  if grep -q 'unknown symbol' <<<"$out"; then
    grep 'unknown symbol' <<<"$out" >&2
    die "the bundled modules import symbols that neither the kernel nor the set exports"
  fi
  log "module check: $n modules for $krel, dependency order ok, depmod resolves every symbol"
}
if [[ $VARIANT != minimal ]]; then
  verify_modules
  cp "$MODSRC/modules.load" "$R/lib/modules/"
  while read -r ko; do
    [[ -z $ko || $ko == \#* ]] && continue
    cp "$MODSRC/$ko" "$R/lib/modules/$ko"
  done <"$MODSRC/modules.load"
fi

# --- archive: sorted, fixed mtimes, root-owned, uncompressed -----------------
find "$R" -exec touch -h -d "@$EPOCH" {} +
(cd "$R" && find . -mindepth 1 -printf '%P\0' | LC_ALL=C sort -z |
  cpio --null -o -H newc -R 0:0 --reproducible --quiet) >"$WORK/out.cpio"
cpio -it --quiet <"$WORK/out.cpio" | grep -qx 'init' || die "archive lacks /init"
install_atomic "$WORK/out.cpio" "$OUTPUT"
echo "$KEY" >"$OUTPUT.key.tmp.$$"
mv -f "$OUTPUT.key.tmp.$$" "$OUTPUT.key"
log "built $VARIANT initramfs (busybox $BB_VER$([[ $VARIANT != minimal ]] && echo ", $(grep -c '\.ko$' "$MODSRC/modules.load") modules"))"
report
