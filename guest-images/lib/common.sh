# shellcheck shell=bash
# Helpers shared by the guest-images/*.sh scripts. Source it; do not run it.
#
#   VMM_CACHE   cache root (default: $HOME/.cache/vmm). Nothing is written
#               into the repository.

# Name of the calling script, for messages.
# shellcheck disable=SC2034  # used by the sourcing scripts
PROG=${PROG:-$(basename "$0")}
# shellcheck disable=SC2034
CACHE=${VMM_CACHE:-${HOME:?HOME is not set}/.cache/vmm}

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }

# sha256 of stdin, hex only.
sha256_stdin() { sha256sum | cut -d' ' -f1; }

# Installed version of a Debian package, or nothing.
pkg_version() {
  dpkg-query -W -f='${db:Status-Status} ${Version}\n' "$1" 2>/dev/null |
    awk '$1 == "installed" { print $2 }'
}

# ensure_pkgs PKG...: apt-get install -y whatever is missing. Runs
# `apt-get update` once, only if a missing package has no install candidate.
_APT_UPDATED=0
ensure_pkgs() {
  local missing=() p
  for p in "$@"; do
    [[ -n "$(pkg_version "$p")" ]] || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  [[ $(id -u) -eq 0 ]] || die "missing Debian packages: ${missing[*]} (run as root, or: apt-get install -y ${missing[*]})"
  for p in "${missing[@]}"; do
    if ! apt-cache policy "$p" 2>/dev/null | grep -q 'Candidate: [^(]'; then
      if ((_APT_UPDATED == 0)); then
        log "no install candidate for $p; running apt-get update"
        apt-get update -q >&2 || die "apt-get update failed"
        _APT_UPDATED=1
      fi
    fi
  done
  log "installing missing packages: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 ||
    die "apt-get install ${missing[*]} failed"
}

# need_cmd CMD PKG: make sure CMD exists, installing PKG if it does not.
need_cmd() {
  command -v "$1" >/dev/null 2>&1 || ensure_pkgs "$2"
  command -v "$1" >/dev/null 2>&1 || die "command $1 still missing after installing $2"
}

# take_lock FILE: serialise concurrent runs on one cache entry (fd 9).
take_lock() {
  mkdir -p "$(dirname "$1")"
  exec 9>"$1"
  if ! flock -n 9; then
    log "waiting for another run holding $1"
    flock 9
  fi
}

# install_atomic SRC DST: copy SRC to a temp file next to DST, then rename.
install_atomic() {
  local tmp
  tmp="$(dirname "$2")/.$(basename "$2").tmp.$$"
  cp -f "$1" "$tmp"
  mv -f "$tmp" "$2"
}

# is_elf FILE: FILE is a complete, well-formed ELF (readelf reads its headers,
# program headers and section headers without complaint).
is_elf() {
  local out
  [[ -s "$1" ]] || return 1
  out=$(LC_ALL=C readelf -h -l -S -W "$1" 2>&1) || return 1
  grep -q '^ *Magic: *7f 45 4c 46' <<<"$out" || return 1
  ! grep -qiE '^readelf: (error|warning)' <<<"$out"
}

# has_pvh_note ELF: vmlinux carries XEN_ELFNOTE_PHYS32_ENTRY (type 18 = 0x12)
# in a "Xen" note, i.e. it can be entered directly through the PVH ABI.
# binutils 2.40 prints it as: Xen 0x00000008 Unknown note type: (0x00000012)
has_pvh_note() {
  LC_ALL=C readelf -n -W "$1" 2>/dev/null |
    awk '$1 == "Xen" && ($0 ~ /\(0x0*12\)/ || $0 ~ /PHYS32_ENTRY/) { found = 1 } END { exit !found }'
}

# pvh_entry ELF: the PVH 32-bit entry address (hex), from that note.
pvh_entry() {
  LC_ALL=C readelf -n -W "$1" 2>/dev/null | awk '
    $1 == "Xen" && ($0 ~ /\(0x0*12\)/ || $0 ~ /PHYS32_ENTRY/) {
      sub(/.*description data: */, ""); n = split($0, b, " "); v = ""
      for (i = n; i >= 1; i--) v = v b[i]
      sub(/^0+/, "", v); print "0x" v; exit
    }'
}
