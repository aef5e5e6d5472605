#!/usr/bin/env bash
# make-disk-image.sh - make a raw ext4 disk image with known content, for
# virtio-blk tests (vmm --disk path=OUT.img).
#
# Usage: make-disk-image.sh OUT.img [--size 64M] [--data-size 4M] [--seed S]
#   OUT.img        output file (replaced atomically if it exists)
#   --size N       image size (default 64M); suffixes K, M, G (powers of 2)
#   --data-size N  size of data.bin (default 4M; 0 allowed)
#   --seed S       seed of data.bin's pseudo-random content (default vmm-disk)
#
# The image's root directory holds:
#   data.bin    N pseudo-random bytes: the AES-128-CTR keystream (openssl)
#               with key = first 16 bytes of sha256(S), IV 0, so the same
#               seed and size always give the same bytes
#   SHA256SUMS  "<sha256>  data.bin", as sha256sum -c expects
#   lost+found
# The file system is made by `mkfs.ext4 -d` from a staging directory (no
# mount, no root needed except to install e2fsprogs/openssl if missing),
# with a fixed UUID, label "vmm-data" and directory hash seed, and file
# mtimes of SOURCE_DATE_EPOCH (default 0). The file content is deterministic;
# the image is not bit-identical between runs (mkfs stamps the current time
# into the superblock and root directory).
#
# Prints "<sha256>  data.bin" and then, on the last line, the image path.
# Read files back on the host without mounting: debugfs -R 'cat /data.bin' OUT.img
set -euo pipefail

PROG=$(basename "$0")
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib/common.sh
. "$HERE/lib/common.sh"

# Fixed identity, so two runs give the same superblock fields.
FS_UUID=5c0f1d7e-7a11-4c3b-9d2e-766d6d000001
FS_LABEL=vmm-data
EPOCH=${SOURCE_DATE_EPOCH:-0}

usage() { sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0"; }

# to_bytes N: "64M" -> 67108864 (K/M/G = 2^10/2^20/2^30; plain = bytes).
to_bytes() {
  local n=${1^^}
  n=${n%B}
  [[ $n =~ ^([0-9]+)([KMG]?)$ ]] || return 1
  local v=${BASH_REMATCH[1]} u=${BASH_REMATCH[2]}
  case $u in
    K) v=$((v << 10)) ;;
    M) v=$((v << 20)) ;;
    G) v=$((v << 30)) ;;
  esac
  echo "$v"
}

OUTPUT=
SIZE=64M
DATA_SIZE=4M
SEED=vmm-disk
while (($#)); do
  case $1 in
    --size) [[ -n ${2:-} ]] || die "--size needs a value"; SIZE=$2; shift 2 ;;
    --size=*) SIZE=${1#*=}; shift ;;
    --data-size) [[ -n ${2:-} ]] || die "--data-size needs a value"; DATA_SIZE=$2; shift 2 ;;
    --data-size=*) DATA_SIZE=${1#*=}; shift ;;
    --seed) [[ -n ${2:-} ]] || die "--seed needs a value"; SEED=$2; shift 2 ;;
    --seed=*) SEED=${1#*=}; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) die "unknown option: $1 (see --help)" ;;
    *) [[ -z $OUTPUT ]] || die "only one output file, got '$OUTPUT' and '$1'"; OUTPUT=$1; shift ;;
  esac
done
[[ -n $OUTPUT ]] || die "no output file given (see --help)"
SIZE_B=$(to_bytes "$SIZE") || die "bad --size '$SIZE' (e.g. 64M)"
DATA_B=$(to_bytes "$DATA_SIZE") || die "bad --data-size '$DATA_SIZE' (e.g. 4M)"
((SIZE_B >= 1 << 20)) || die "--size must be at least 1M"
# ext4 metadata (inode tables, journal: 4 MiB from 64 MiB up) needs room too.
((DATA_B + DATA_B / 16 + (1 << 20) <= SIZE_B)) ||
  die "--data-size $DATA_SIZE does not fit in a --size $SIZE ext4 image; make the image larger"

need_cmd mkfs.ext4 e2fsprogs
need_cmd debugfs e2fsprogs
need_cmd openssl openssl
{ mkfs.ext4 -h 2>&1 || true; } | grep -q -- '-d root-directory' ||
  die "this mkfs.ext4 has no -d (populate from a directory); e2fsprogs >= 1.43 needed"

OUTDIR=$(dirname "$OUTPUT")
[[ -d $OUTDIR ]] || die "directory $OUTDIR does not exist"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/disk-image.XXXXXX")
TMPIMG=$OUTDIR/.$(basename "$OUTPUT").tmp.$$
trap 'rm -rf "$WORK"; rm -f "$TMPIMG"' EXIT
STAGE=$WORK/root
mkdir -p "$STAGE"

# --- content ------------------------------------------------------------------
KEY_HEX=$(printf '%s' "$SEED" | sha256_stdin | cut -c1-32)
head -c "$DATA_B" /dev/zero |
  openssl enc -aes-128-ctr -nosalt -K "$KEY_HEX" -iv 00000000000000000000000000000000 >"$STAGE/data.bin"
[[ $(stat -c %s "$STAGE/data.bin") -eq $DATA_B ]] || die "openssl produced a data.bin of the wrong size"
(cd "$STAGE" && sha256sum data.bin >SHA256SUMS)
chmod 644 "$STAGE/data.bin" "$STAGE/SHA256SUMS"
chmod 755 "$STAGE"
find "$STAGE" -exec touch -h -d "@$EPOCH" {} +

# --- file system ------------------------------------------------------------
rm -f "$TMPIMG"
truncate -s "$SIZE_B" "$TMPIMG"
if ! mkfs.ext4 -q -F -t ext4 -L "$FS_LABEL" -U "$FS_UUID" \
     -E "root_owner=0:0,hash_seed=$FS_UUID" -d "$STAGE" "$TMPIMG" >"$WORK/mkfs.log" 2>&1; then
  cat "$WORK/mkfs.log" >&2
  die "mkfs.ext4 failed"
fi
# Read it back through e2fsprogs (not a mount): the data must be there intact.
WANT=$(cut -d' ' -f1 "$STAGE/SHA256SUMS")
HAVE=$(debugfs -R 'cat /data.bin' "$TMPIMG" 2>/dev/null | sha256_stdin)
[[ $HAVE == "$WANT" ]] || die "data.bin read back from the image has sha256 $HAVE, expected $WANT"
mv -f "$TMPIMG" "$OUTPUT"

log "$OUTPUT: ext4, $SIZE_B bytes, data.bin $DATA_B bytes (seed '$SEED')"
cat "$STAGE/SHA256SUMS"
echo "$OUTPUT"
