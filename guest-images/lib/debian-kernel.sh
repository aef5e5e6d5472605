# shellcheck shell=bash
# Helpers for scripts that take Debian's binary kernel packages apart
# (guest-images/fetch-debian-kernel.sh, tests/svm-host/build-l1.sh). Source it
# after lib/common.sh (it uses CACHE, log, die, need_cmd); do not run it.
#
# Packages are downloaded, never installed: .deb files go to $CACHE/debs,
# unpacked trees to wherever the caller says (fetch-debian-kernel.sh uses
# $CACHE/src/<package>_<version>).

# candidate_version PKG: the version apt would download, or nothing.
candidate_version() {
  apt-cache policy "$1" 2>/dev/null | awk '$1 == "Candidate:" && $2 != "(none)" { print $2 }'
}

# download_deb PKG VER [WHAT]: `apt-get download` PKG=VER into $CACHE/debs
# unless a readable copy is there; prints the .deb's path. WHAT (e.g. the
# size) only goes into the progress message.
download_deb() {
  local debs=$CACHE/debs deb
  deb=$debs/${1}_${2//:/%3a}_amd64.deb
  mkdir -p "$debs"
  if [[ ! -s $deb ]] || ! dpkg-deb -I "$deb" >/dev/null 2>&1; then
    log "downloading $1 $2${3:+ ($3)}"
    rm -f "$deb"
    # Root's apt drops privileges to _apt for downloads; a cache dir under
    # $HOME may not be writable for it, so download as the calling user.
    (cd "$debs" && apt-get download -q -o APT::Sandbox::User="$(id -un)" "$1=$2" >&2) ||
      die "apt-get download $1=$2 failed (try apt-get update)"
    [[ -s $deb ]] || deb=$(find "$debs" -maxdepth 1 -name "${1}_*_amd64.deb" | sort -V | tail -n 1)
    [[ -n $deb && -s $deb ]] || die "apt-get download did not produce ${1}_${2}_amd64.deb in $debs"
  fi
  echo "$deb"
}

# extract_deb DEB DIR: `dpkg-deb -x` DEB into DIR once (DIR.tmp, then a
# rename; DIR/.extracted marks a complete tree). Does nothing if DIR is
# complete already.
extract_deb() {
  local deb=$1 dir=$2
  [[ -f $dir/.extracted ]] && return 0
  log "unpacking $(basename "$deb") into $dir"
  rm -rf "$dir.tmp"
  mkdir -p "$dir.tmp"
  dpkg-deb -x "$deb" "$dir.tmp" || die "dpkg-deb -x $deb failed"
  touch "$dir.tmp/.extracted"
  rm -rf "$dir"
  mv "$dir.tmp" "$dir"
}

# --- kernel modules -----------------------------------------------------------
# Module names are normalised the way lsmod spells them ('-' -> '_').
declare -A KMOD_FILE=()     # name -> module file in the tree (.ko, .ko.xz ...)
declare -A KMOD_BUILTIN=()  # name -> 1 if built into the kernel
declare -A KMOD_STATE=()    # name -> visiting|done, during kmod_closure
KMOD_ORDER=()               # kmod_closure's result, dependencies first

# kmod_tools: install what kmod_closure runs (modinfo, xz, zstd) if missing.
kmod_tools() {
  need_cmd modinfo kmod
  need_cmd xz xz-utils
  need_cmd zstd zstd
}

# kmod_index MODDIR: index the modules of one kernel (MODDIR =
# <root>/lib/modules/<release>): KMOD_FILE from every *.ko{,.xz,.zst,.gz}
# below MODDIR/kernel, KMOD_BUILTIN from MODDIR/modules.builtin.
kmod_index() {
  local f n
  KMOD_FILE=() KMOD_BUILTIN=() KMOD_STATE=() KMOD_ORDER=()
  [[ -d $1/kernel ]] || die "no kernel modules in $1"
  while IFS= read -r -d '' f; do
    n=$(basename "$f"); n=${n%.ko*}
    KMOD_FILE[${n//-/_}]=$f
  done < <(find "$1/kernel" -type f \( -name '*.ko' -o -name '*.ko.xz' -o -name '*.ko.zst' -o -name '*.ko.gz' \) -print0)
  if [[ -f $1/modules.builtin ]]; then
    while IFS= read -r f; do n=$(basename "$f" .ko); KMOD_BUILTIN[${n//-/_}]=1; done <"$1/modules.builtin"
  fi
}

# kmod_known NAME: NAME is a module file or built in (after kmod_index).
kmod_known() {
  local n=${1//-/_}
  [[ -n ${KMOD_FILE[$n]:-} || -n ${KMOD_BUILTIN[$n]:-} ]]
}

# kmod_decompress SRC DST: copy a module file, decompressing it if Debian did.
kmod_decompress() {
  case $1 in
    *.ko.xz) xz -dc "$1" >"$2" ;;
    *.ko.zst) zstd -dcq "$1" >"$2" ;;
    *.ko.gz) gzip -dc "$1" >"$2" ;;
    *) cp "$1" "$2" ;;
  esac
}

# kmod_closure DESTDIR NAME...: copy each named module and everything it
# depends on (`modinfo -F depends`, what depmod writes to modules.dep)
# decompressed into DESTDIR as <name>.ko, and append them to KMOD_ORDER
# depth-first, each after its dependencies: "<name>.ko", or
# "# <name>: built-in" for one built into the kernel. A module already placed
# by an earlier call is not repeated. Dies on a cycle or an unknown module.
kmod_closure() {
  local dst=$1 m
  shift
  for m in "$@"; do _kmod_visit "${m//-/_}" "$dst"; done
}
_kmod_visit() {
  local name=$1 dst=$2 dep deps
  if [[ -n ${KMOD_STATE[$name]:-} ]]; then
    [[ ${KMOD_STATE[$name]} == "done" ]] || die "module dependency cycle at $name"
    return 0
  fi
  KMOD_STATE[$name]=visiting
  if [[ -n ${KMOD_FILE[$name]:-} ]]; then
    kmod_decompress "${KMOD_FILE[$name]}" "$dst/$name.ko"
    deps=$(modinfo -F depends "$dst/$name.ko")
    for dep in ${deps//,/ }; do _kmod_visit "${dep//-/_}" "$dst"; done
    KMOD_ORDER+=("$name.ko")
  elif [[ -n ${KMOD_BUILTIN[$name]:-} ]]; then
    KMOD_ORDER+=("# $name: built-in")
  else
    die "module $name is neither a module file of this kernel nor in its modules.builtin"
  fi
  KMOD_STATE[$name]="done"
}

# kmod_write_load FILE HEADER: write "# HEADER" and KMOD_ORDER, one a line.
kmod_write_load() {
  { echo "# $2"; printf '%s\n' "${KMOD_ORDER[@]}"; } >"$1"
}
