#!/usr/bin/env bash
# extract-vmlinux.sh - recover the ELF vmlinux from a compressed kernel image
# (bzImage / vmlinuz) on the host, so the VMM can enter it through PVH and
# skip the in-guest decompressor (60-80 s on the build host).
#
# Usage: extract-vmlinux.sh IMAGE OUTPUT
#
# Candidates, tried in this order, first valid ELF wins:
#   1. the payload the x86 boot header declares (payload_offset/length,
#      boot protocol >= 2.08), with the kernel's 4-byte size trailer removed;
#   2. every offset where a compressed-stream magic occurs:
#        LZ4 legacy frame 02 21 4c 18  -> lz4 -dc
#        gzip             1f 8b 08     -> gzip -dc
#        xz               fd 37 7a 58 5a 00 -> xz -dc --single-stream
#        zstd             28 b5 2f fd  -> zstd -dc
# Decompressors may complain about the bytes that follow the stream; only
# the result counts: it must be an ELF that readelf reads completely.
# An IMAGE that already is an ELF is copied as is.
# Prints OUTPUT on success.
set -euo pipefail

PROG=$(basename "$0")
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib/common.sh
. "$HERE/lib/common.sh"

MAX_PER_FORMAT=16   # bound the work on images with many false magic hits

(($# == 2)) || die "usage: $PROG IMAGE OUTPUT"
IMG=$1
OUTPUT=$2
[[ -f $IMG && -r $IMG ]] || die "cannot read $IMG"

need_cmd readelf binutils
need_cmd lz4 lz4
need_cmd xz xz-utils
need_cmd zstd zstd
need_cmd gzip gzip

TMPD=$(mktemp -d "${TMPDIR:-/tmp}/extract-vmlinux.XXXXXX")
trap 'rm -rf "$TMPD"' EXIT

publish() {
  mkdir -p "$(dirname "$OUTPUT")"
  install_atomic "$1" "$OUTPUT"
  echo "$OUTPUT"
  exit 0
}

if is_elf "$IMG"; then
  log "$IMG is already an ELF file; copying it"
  publish "$IMG"
fi

# decompressor_for FORMAT -> command (as words) reading stdin, writing stdout.
decompress() {
  case $1 in
    lz4) lz4 -dc ;;
    gzip) gzip -dc ;;
    xz) xz -dc --single-stream ;;
    zstd) zstd -dc -q ;;
    *) return 1 ;;
  esac
}

# try FORMAT OFFSET [LENGTH]: decompress IMG[OFFSET, OFFSET+LENGTH) (or to EOF).
try() {
  local fmt=$1 off=$2 len=${3:-} cand=$TMPD/cand
  if [[ -n $len ]]; then
    tail -c +"$((off + 1))" "$IMG" | head -c "$len" | decompress "$fmt" >"$cand" 2>/dev/null || true
  else
    tail -c +"$((off + 1))" "$IMG" | decompress "$fmt" >"$cand" 2>/dev/null || true
  fi
  if is_elf "$cand"; then
    log "found $fmt-compressed vmlinux at offset $off ($(stat -c %s "$cand") bytes)"
    publish "$cand"
  fi
  return 1
}

# format_at OFFSET: which compressed format starts at OFFSET, if any.
format_at() {
  local m
  m=$(od -An -tx1 -j "$1" -N 6 "$IMG" | tr -d ' \n')
  case $m in
    02214c18*) echo lz4 ;;
    1f8b08*) echo gzip ;;
    fd377a585a00) echo xz ;;
    28b52ffd*) echo zstd ;;
    *) return 1 ;;
  esac
}

u8() { od -An -tu1 -j "$1" -N 1 "$IMG" | tr -d ' '; }
u16() { od -An -tu2 -j "$1" -N 2 "$IMG" | tr -d ' '; }
u32() { od -An -tu4 -j "$1" -N 4 "$IMG" | tr -d ' '; }

# 1. The payload declared by the x86 boot protocol header ("HdrS" at 0x202).
size=$(stat -c %s "$IMG")
if ((size > 0x250)) && [[ $(od -An -c -j $((0x202)) -N 4 "$IMG" | tr -d ' ') == HdrS ]] &&
   (($(u16 $((0x206))) >= 0x208)); then
  setup_sects=$(u8 $((0x1f1)))
  ((setup_sects == 0)) && setup_sects=4
  poff=$(( (setup_sects + 1) * 512 + $(u32 $((0x248))) ))
  plen=$(u32 $((0x24c)))
  if ((plen > 4 && poff + plen <= size)) && fmt=$(format_at "$poff"); then
    log "boot header: $fmt payload at offset $poff, $plen bytes"
    # gzip carries its own length; the other formats get a 4-byte size appended.
    if [[ $fmt == gzip ]]; then try "$fmt" "$poff" "$plen" || true
    else try "$fmt" "$poff" "$((plen - 4))" || true; fi
    log "boot-header payload did not decompress to an ELF; scanning for magics"
  fi
fi

# 2. Generic scan for compressed-stream magics, in file order.
scan() { # PATTERN FORMAT
  LC_ALL=C grep -obUaP "$1" "$IMG" 2>/dev/null | cut -d: -f1 | head -n "$MAX_PER_FORMAT" |
    sed "s/\$/ $2/" || true
}
{
  scan '\x02\x21\x4c\x18' lz4
  scan '\x1f\x8b\x08' gzip
  scan '\xfd\x37\x7a\x58\x5a\x00' xz
  scan '\x28\xb5\x2f\xfd' zstd
} | sort -n >"$TMPD/candidates"
[[ -s $TMPD/candidates ]] || die "no compressed payload magic (lz4/gzip/xz/zstd) found in $IMG"
while read -r off fmt; do
  try "$fmt" "$off" || true
done <"$TMPD/candidates"
die "none of the $(wc -l <"$TMPD/candidates") candidate payloads in $IMG decompressed to a valid ELF"
