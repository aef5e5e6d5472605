#!/bin/busybox sh
# shellcheck shell=dash
# /init of the emulated SVM KVM host (L1) initramfs; build-l1.sh installs it.
# PID 1, busybox sh (busybox-static is the only binary in the initramfs).
#
# 1. proc/sys/devtmpfs; insmod the bundled modules (virtio-pci, 9p, overlay,
#    kvm, kvm_amd) in the order /etc/modules.load gives.
# 2. Mount the host's root filesystem, shared read-only by QEMU over
#    virtio-9p (mount_tag hostroot), and build the root for the job:
#      overlay  overlayfs, lowerdir = the 9p host root, upper = tmpfs
#               (everything writable, nothing reaches the host), or
#      ro       the 9p host root itself, read-only (fallback, or forced).
#    Both get fresh /proc /sys /dev /dev/pts /dev/shm and tmpfs on /tmp,
#    /run and /var/tmp.
# 3. Mount the writable per-run work share (mount_tag work) at /svm-work in
#    the overlay root (/run/svm-work in the ro root; $SVM_WORK says which).
# 4. In the new root: modprobe the "late" modules (tun, veth, ...) from the
#    host's copy of the kernel package, then run $SVM_WORK/job.sh with stdout
#    and stderr into the share, write its exit status to $SVM_WORK/status,
#    sync, and `poweroff -f`.
#
# Files this writes to the work share (read by run_l1.py):
#   init.log  this script's messages     started  uptime when the job starts
#   root-mode overlay or ro              finished uptime when the job ended
#   heartbeat uptime, rewritten every 5 s from job start on (heartbeat.pid)
#   stdout    the job's stdout           stderr   the job's stderr
#   status    the job's exit status, written last
#
# Kernel command line knobs (run_l1.py sets them):
#   svm.root=auto|overlay|ro  (auto: overlay, falling back to ro)
#   svm.hostcache=loose|mmap|none   9p cache mode of the read-only host root
#   svm.msize=BYTES                 9p message size of both shares

# Not `set -e`: PID 1 must never exit (the kernel would panic); every
# failure is logged, and fatal ones power L1 off without a status file.
PATH=/bin   # busybox applet links (build-l1.sh made them)
export PATH

CONF=/etc/svm-l1.conf   # KREL, KROOT, LATE_MODULES (written by build-l1.sh)
# shellcheck source=/dev/null
. "$CONF"
NEW=/newroot
HOST=/host
WORK_MNT=/work
LOG=                    # becomes $WORK_MNT/init.log once the share is up

log() {
  echo "svm-l1-init: $*" >/dev/console
  [ -n "$LOG" ] && echo "svm-l1-init: $*" >>"$LOG"
  return 0
}

# fail MSG: the job cannot run. Say so and power off without a status file,
# which run_l1.py reports as "L1 died before the job finished".
fail() {
  log "FATAL: $*"
  sync
  poweroff -f
  sleep 60
}

# cmdline_opt NAME DEFAULT: value of NAME=... on the kernel command line.
cmdline_opt() {
  v=$(tr ' ' '\n' </proc/cmdline | sed -n "s/^$1=//p" | tail -n 1)
  echo "${v:-$2}"
}

mount_early() {
  mount -t proc proc /proc
  mount -t sysfs sysfs /sys
  mount -t devtmpfs devtmpfs /dev 2>/dev/null || true
}

# insmod every .ko in /etc/modules.load order (comments: built-in modules).
load_bundled_modules() {
  grep -v '^#' /etc/modules.load | while read -r ko; do
    [ -n "$ko" ] || continue
    insmod "/lib/modules/$ko" || log "insmod $ko failed"
  done
}

# mount_9p TAG DIR OPTIONS
mount_9p() {
  mount -t 9p -o "trans=virtio,version=9p2000.L,msize=$MSIZE,$3" "$1" "$2"
}

# make_root MODE: build $NEW from the host root; prints the mode it got.
make_root() {
  mkdir -p "$NEW" /rw
  if [ "$1" != ro ]; then
    mount -t tmpfs -o mode=755 tmpfs /rw
    mkdir -p /rw/upper /rw/work
    if mount -t overlay overlay -o "lowerdir=$HOST,upperdir=/rw/upper,workdir=/rw/work" "$NEW"; then
      echo overlay
      return 0
    fi
    log "overlayfs over the 9p host root failed (dmesg: $(dmesg | grep -i overlay | tail -n 2 | tr '\n' ' '))"
    [ "$1" = overlay ] && return 1
    umount /rw
  fi
  mount --bind "$HOST" "$NEW" || return 1
  echo ro
}

# Fresh kernel filesystems inside the new root.
mount_in_root() {
  mount -t proc proc "$NEW/proc"
  mount -t sysfs sysfs "$NEW/sys"
  mount -t devtmpfs devtmpfs "$NEW/dev"
  mkdir -p "$NEW/dev/pts" "$NEW/dev/shm" 2>/dev/null || true
  mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts "$NEW/dev/pts"
  mount -t tmpfs -o mode=1777 tmpfs "$NEW/dev/shm"
  for d in /tmp /var/tmp; do mount -t tmpfs -o mode=1777 tmpfs "$NEW$d"; done
  mount -t tmpfs -o mode=755 tmpfs "$NEW/run"
  [ -d "$NEW/sys/fs/cgroup" ] && mount -t cgroup2 cgroup2 "$NEW/sys/fs/cgroup" 2>/dev/null
  return 0
}

# run_in_root CMD...: run CMD in the new root with a clean environment.
run_in_root() {
  chroot "$NEW" /usr/bin/env -i HOME=/root TERM=dumb LANG=C.UTF-8 \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    SVM_WORK="$SVM_WORK" "$@"
}

# --- 1. early mounts and bundled modules -------------------------------------
mount_early
MSIZE=$(cmdline_opt svm.msize 262144)
ROOT_MODE=$(cmdline_opt svm.root auto)
HOSTCACHE=$(cmdline_opt svm.hostcache loose)
log "up $(cut -d' ' -f1 /proc/uptime)s; loading bundled modules"
load_bundled_modules

# --- 2. work share first (so the log reaches the host), then the root ---------
mkdir -p "$WORK_MNT" "$HOST"
mount_9p work "$WORK_MNT" "rw,cache=none" || fail "cannot mount the 9p work share (mount_tag work)"
LOG=$WORK_MNT/init.log
log "work share mounted; uptime $(cut -d' ' -f1 /proc/uptime)s"
mount_9p hostroot "$HOST" "ro,cache=$HOSTCACHE" ||
  fail "cannot mount the 9p host root (mount_tag hostroot, cache=$HOSTCACHE)"
GOT=$(make_root "$ROOT_MODE") || fail "cannot make the root (svm.root=$ROOT_MODE)"
log "root: $GOT (svm.root=$ROOT_MODE, host root 9p cache=$HOSTCACHE, msize=$MSIZE)"
mount_in_root

# --- 3. the work share inside the new root ----------------------------------
if [ "$GOT" = overlay ]; then SVM_WORK=/svm-work; else SVM_WORK=/run/svm-work; fi
mkdir -p "$NEW$SVM_WORK"
mount --move "$WORK_MNT" "$NEW$SVM_WORK" || fail "cannot move the work share to $SVM_WORK"
LOG=$NEW$SVM_WORK/init.log
echo "$GOT" >"$NEW$SVM_WORK/root-mode"

# --- 4. late modules, network basics, the job --------------------------------
# The running kernel's modules where modprobe looks for them (/lib/modules/
# $KREL), so that jobs can load more with plain modprobe: a bind of the
# unpacked package's tree inside the overlay root (writes land in the overlay's
# upper layer, never on the host; the host has no such directory).
if [ "$GOT" = overlay ] && [ -d "$NEW$KROOT/lib/modules/$KREL" ]; then
  mkdir -p "$NEW/lib/modules/$KREL" &&
    mount --bind "$NEW$KROOT/lib/modules/$KREL" "$NEW/lib/modules/$KREL" ||
    log "cannot bind $KROOT/lib/modules/$KREL to /lib/modules/$KREL"
fi
if [ -n "$LATE_MODULES" ]; then
  # shellcheck disable=SC2086  # a word list on purpose
  run_in_root /sbin/modprobe -d "$KROOT" -a $LATE_MODULES >>"$LOG" 2>&1 ||
    log "modprobe -d $KROOT -a $LATE_MODULES failed (see above)"
fi
log "modules: $(cut -d' ' -f1 /proc/modules | sort | tr '\n' ' ')"
ip link set lo up 2>/dev/null || log "ip link set lo up failed"
hostname svm-l1

# Heartbeat: L1's uptime every 5 s, so run_l1.py can tell a hung L1 (no new
# beat) from a slow job. It runs outside the chroot, in /init's own tree.
heartbeat() {
  while :; do
    cut -d' ' -f1 /proc/uptime >"$1.tmp" && mv "$1.tmp" "$1"
    sleep 5
  done
}
heartbeat "$NEW$SVM_WORK/heartbeat" &
echo $! >"$NEW$SVM_WORK/heartbeat.pid"

# Written then renamed: run_l1.py takes the file's appearance as "job start".
cut -d' ' -f1 /proc/uptime >"$NEW$SVM_WORK/started.tmp"
mv "$NEW$SVM_WORK/started.tmp" "$NEW$SVM_WORK/started"
log "job start; uptime $(cat "$NEW$SVM_WORK/started")s"
run_in_root /bin/sh "$SVM_WORK/job.sh" \
  </dev/null >"$NEW$SVM_WORK/stdout" 2>"$NEW$SVM_WORK/stderr"
rc=$?
cut -d' ' -f1 /proc/uptime >"$NEW$SVM_WORK/finished"
log "job exited $rc; uptime $(cat "$NEW$SVM_WORK/finished")s"
sync
echo "$rc" >"$NEW$SVM_WORK/status.tmp"
mv "$NEW$SVM_WORK/status.tmp" "$NEW$SVM_WORK/status"
sync
poweroff -f
sleep 60
