#!/usr/bin/env bash
# Builds the VM test rig's guest from Debian packages alone: a Debian cloud
# kernel and a busybox-static initramfs holding the virtio/ext4 modules it
# needs, e2fsprogs (with its shared libraries and the loader from libc6), the
# guest init and the scenario library (vm-images/scenarios/).
#
#   vm-images/build.sh                 build (or reuse) and print the image directory
#   vm-images/build.sh --force         rebuild even if a cached image matches
#   REWIND_VM_PIN=old/packages.lock vm-images/build.sh    exact package versions of an earlier build
#
# Packages come from `apt-get download` (the host's apt sources), each checked
# against the archive's SHA256. Outputs go to
#   $REWIND_VM_CACHE (default ${XDG_CACHE_HOME:-~/.cache}/rewind-vm)/images/KEY/
#     vmlinuz  initrd.img  manifest.json  packages.lock
# where KEY hashes every input: the package names and versions, this script,
# and the files under vm-images/guest and vm-images/scenarios. The same inputs
# give byte-identical outputs (sorted cpio, fixed mtimes and owners, gzip -n).
# Only the last line of stdout is the image directory; progress goes to stderr.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${REWIND_VM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rewind-vm}"
FORCE=0
ARCH=amd64
MULTIARCH=x86_64-linux-gnu
EPOCH="${SOURCE_DATE_EPOCH:-0}"
# Kernel modules the guest loads (with their dependencies, in dependency
# order); the ones built into the kernel (modules.builtin) are skipped.
WANT_MODULES=(virtio_pci virtio_blk crc32c_generic ext4)
# e2fsprogs programs copied into the guest (with their libraries).
E2FS_PROGRAMS=(mke2fs e2fsck tune2fs dumpe2fs)
KERNEL_CMDLINE="console=ttyS0 quiet loglevel=4 panic=-1 rdinit=/init"

log() { echo "vm-images: $*" >&2; }
die() { echo "vm-images: error: $*" >&2; exit 1; }
# apt's package lists are missing or stale (a version gone from the mirror):
# exit 3, on which the outer invocation runs `apt-get update` once and retries.
die_apt() { echo "vm-images: error: $*" >&2; exit 3; }

if [ -z "${REWIND_VM_INNER:-}" ]; then
  rc=0
  REWIND_VM_INNER=1 bash "${BASH_SOURCE[0]}" "$@" || rc=$?
  [ "$rc" = 3 ] || exit "$rc"
  [ -z "${REWIND_VM_PIN:-}" ] || exit 3
  [ "$(id -u)" = 0 ] || die "run apt-get update (as root) and try again"
  log "refreshing apt's package lists (apt-get update) and retrying"
  apt-get update -q >&2 || die "apt-get update failed"
  REWIND_VM_INNER=1 exec bash "${BASH_SOURCE[0]}" "$@"
fi

while [ $# -gt 0 ]; do
  case "$1" in
    --force) FORCE=1 ;;
    --cache) CACHE="$2"; shift ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1" ;;
  esac
  shift
done

missing=()
for t in apt-get apt-cache dpkg-deb cpio gzip sha256sum flock find sort awk; do
  command -v "$t" >/dev/null 2>&1 || missing+=("$t")
done
[ ${#missing[@]} -eq 0 ] || die "missing tools: ${missing[*]} (Debian: apt-get install apt dpkg cpio gzip coreutils util-linux findutils gawk; see tools/install-system-deps.sh)"
[ "$(dpkg --print-architecture 2>/dev/null || echo "$ARCH")" = "$ARCH" ] || log "warning: host architecture is not $ARCH; fetching $ARCH packages"

mkdir -p "$CACHE/debs" "$CACHE/images"
exec 9>"$CACHE/lock"
flock 9

# ---------------------------------------------------------------- packages
# (apt-cache loads its whole cache on every call, ~0.5 s: ask for many at once.)
depends_of() { # NAMES... -> "NAME DEP" for each Depends/Pre-Depends (first alternative)
  apt-cache depends --no-recommends --no-suggests --no-conflicts --no-breaks --no-replaces --no-enhances "$@" 2>/dev/null |
    awk '/^[^ ]/ { pkg = $1 } $1 ~ /^(PreDepends|Depends):$/ { gsub(/[<>]/, "", $2); print pkg, $2 }'
}
candidates() { # NAMES... -> "NAME VERSION" (pinned, else apt's candidate)
  apt-cache policy "$@" 2>/dev/null | awk '/^[^ ]/ { sub(/:$/, "", $1); pkg = $1 } /^  Candidate:/ { print pkg, $2 }' |
    while read -r p v; do
      if [ -n "${REWIND_VM_PIN:-}" ]; then
        pv="$(awk -v p="$p" '$1 == p { print $2 }' "$REWIND_VM_PIN")"
        [ -z "$pv" ] || v="$pv"
      fi
      echo "$p $v"
    done
}

if [ -n "${REWIND_VM_KERNEL_PACKAGE:-}" ]; then
  KPKG="$REWIND_VM_KERNEL_PACKAGE"
elif [ -n "${REWIND_VM_PIN:-}" ] && grep -qE '^linux-image-[0-9].*-cloud-amd64 ' "$REWIND_VM_PIN"; then
  KPKG="$(grep -oE '^linux-image-[0-9][^ ]*-cloud-amd64' "$REWIND_VM_PIN" | head -n1)"
else
  KPKG=""
fi

# linux-image-cloud-amd64 is a metapackage: resolve it to the real image
# package. e2fsprogs and busybox-static bring the library packages they
# depend on (transitively, lib* only).
declare -A seen=()
LIBPKGS=()
level=(e2fsprogs busybox-static)
[ -n "$KPKG" ] || level+=(linux-image-cloud-amd64)
while [ ${#level[@]} -gt 0 ]; do
  next=()
  while read -r p d; do
    if [ "$p" = linux-image-cloud-amd64 ]; then
      [[ "$d" =~ ^linux-image-[0-9].*-cloud-amd64$ ]] && [ -z "$KPKG" ] && KPKG="$d"
      continue
    fi
    case "$d" in lib*) ;; *) continue ;; esac
    [ -n "${seen[$d]:-}" ] && continue
    seen[$d]=1; LIBPKGS+=("$d"); next+=("$d")
  done < <(depends_of "${level[@]}")
  level=("${next[@]}")
done
[ -n "$KPKG" ] || die_apt "cannot resolve linux-image-cloud-amd64 to a kernel package (apt-cache depends linux-image-cloud-amd64; apt-get update?)"
[ -n "${seen[libc6]:-}" ] || LIBPKGS+=(libc6)

PKGS=("$KPKG" busybox-static e2fsprogs $(printf '%s\n' "${LIBPKGS[@]}" | LC_ALL=C sort -u))
declare -A VER=()
while read -r p v; do VER[$p]="$v"; done < <(candidates "${PKGS[@]}")
LOCK=""
for p in "${PKGS[@]}"; do
  v="${VER[$p]:-}"
  [ -n "$v" ] && [ "$v" != "(none)" ] || die_apt "package $p has no installable version (apt-get update? apt sources?)"
  LOCK+="$p $v"$'\n'
done

# ---------------------------------------------------------------- cache key
inputs_hash() {
  {
    printf '%s' "$LOCK"
    printf 'modules %s\nprograms %s\ncmdline %s\nepoch %s\n' "${WANT_MODULES[*]}" "${E2FS_PROGRAMS[*]}" "$KERNEL_CMDLINE" "$EPOCH"
    sha256sum "$HERE/build.sh"
    (cd "$HERE" && find guest scenarios -type f | LC_ALL=C sort | xargs sha256sum)
  } | sha256sum | cut -c1-16
}
KEY="$(inputs_hash)"
OUT="$CACHE/images/$KEY"
if [ "$FORCE" = 0 ] && [ -f "$OUT/manifest.json" ]; then
  log "cached image $OUT"
  echo "$OUT"
  exit 0
fi

# ---------------------------------------------------------------- download
WORK="$(mktemp -d "$CACHE/build.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
declare -A DEB=() DEBSHA=() FN=()
while read -r p fn sha; do FN[$p]="$fn"; DEBSHA[$p]="$sha"; done < <(
  apt-cache show $(awk 'NF == 2 { print $1 "=" $2 }' <<<"$LOCK") 2>/dev/null |
    awk '/^Package:/ { p = $2 } /^Filename:/ { n = split($2, a, "/"); f = a[n] } /^SHA256:/ { s = $2 }
         /^$/ { if (p != "" && !(p in done)) { print p, f, s; done[p] = 1 } p = f = s = "" }
         END { if (p != "" && !(p in done)) print p, f, s }')
while read -r p v; do
  [ -n "$p" ] || continue
  fn="${FN[$p]:-}"; sha="${DEBSHA[$p]:-}"
  [ -n "$fn" ] && [ -n "$sha" ] || die_apt "apt-cache show $p=$v: no Filename/SHA256 (is that version still in the archive?)"
  f="$CACHE/debs/$fn"
  if [ ! -f "$f" ] || [ "$(sha256sum <"$f" | cut -d' ' -f1)" != "$sha" ]; then
    log "downloading $p=$v"
    rm -f "$WORK"/*.deb
    sandbox=(); [ "$(id -u)" != 0 ] || sandbox=(-o APT::Sandbox::User=root)
    (cd "$WORK" && apt-get download -q "${sandbox[@]}" "$p=$v" >&2 2>&1) || die_apt "apt-get download $p=$v failed"
    dl="$(ls "$WORK"/*.deb)"
    [ "$(sha256sum <"$dl" | cut -d' ' -f1)" = "$sha" ] || die "$fn: SHA256 differs from the archive's"
    mv "$dl" "$f"
  fi
  DEB[$p]="$f"
done <<<"$LOCK"

# ---------------------------------------------------------------- extract
X="$WORK/x"; mkdir -p "$X/kernel" "$X/user"
dpkg-deb -x "${DEB[$KPKG]}" "$X/kernel"
for p in "${PKGS[@]}"; do [ "$p" = "$KPKG" ] || dpkg-deb -x "${DEB[$p]}" "$X/user"; done

R="$WORK/root"
mkdir -p "$R"/{bin,sbin,etc/rewind,dev,proc,sys,tmp,run,mnt,lib/$MULTIARCH,lib64,scenarios}

# busybox and its applets
BB="$X/user/bin/busybox"
[ -x "$BB" ] || die "busybox-static did not provide bin/busybox"
cp "$BB" "$R/bin/busybox"
for a in $("$BB" --list | LC_ALL=C sort); do
  [ "$a" = busybox ] || ln -s busybox "$R/bin/$a"
done

# e2fsprogs programs, their libraries and the loader, all from the debs
find_in_x() { # NAME -> path of a file called NAME in the extracted user packages
  local f
  for d in sbin usr/sbin bin usr/bin; do f="$X/user/$d/$1"; [ -e "$f" ] && { echo "$f"; return; }; done
  return 1
}
LDSO="$X/user/lib/$MULTIARCH/ld-linux-x86-64.so.2"
[ -e "$LDSO" ] || LDSO="$X/user/usr/lib/$MULTIARCH/ld-linux-x86-64.so.2"
[ -e "$LDSO" ] || die "libc6 did not provide ld-linux-x86-64.so.2"
LIBPATH="$X/user/lib/$MULTIARCH:$X/user/usr/lib/$MULTIARCH"
declare -A LIBS=()
for prog in "${E2FS_PROGRAMS[@]}"; do
  src="$(find_in_x "$prog")" || die "e2fsprogs did not provide $prog"
  rm -f "$R/sbin/$prog"; cp -L "$src" "$R/sbin/$prog"; chmod 0755 "$R/sbin/$prog"
  while read -r soname path; do
    case "$path" in
      "$X/user/"*) LIBS[$soname]="$path" ;;
      *) die "$prog needs $soname, which the downloaded packages do not provide (resolved to ${path:-nothing})" ;;
    esac
  done < <("$LDSO" --inhibit-cache --library-path "$LIBPATH" --list "$src" |
           awk '$2 == "=>" && $1 !~ /^linux-vdso/ && $1 !~ /ld-linux/ { print $1, ($3 == "not" ? "" : $3) }')
done
for so in "${!LIBS[@]}"; do cp -L "${LIBS[$so]}" "$R/lib/$MULTIARCH/$so"; done
cp -L "$LDSO" "$R/lib/$MULTIARCH/ld-linux-x86-64.so.2"
ln -s "../lib/$MULTIARCH/ld-linux-x86-64.so.2" "$R/lib64/ld-linux-x86-64.so.2"
for l in mkfs.ext4:mke2fs mkfs.ext2:mke2fs fsck.ext4:e2fsck fsck.ext2:e2fsck; do
  rm -f "$R/sbin/${l%%:*}"; ln -s "${l##*:}" "$R/sbin/${l%%:*}"
done
[ -f "$X/user/etc/mke2fs.conf" ] && cp "$X/user/etc/mke2fs.conf" "$R/etc/mke2fs.conf"

# kernel and modules
KREL="$(ls "$X/kernel/lib/modules" 2>/dev/null | head -n1)"
[ -n "$KREL" ] || KREL="$(ls "$X/kernel/usr/lib/modules" | head -n1)"
MODROOT="$X/kernel/lib/modules/$KREL"; [ -d "$MODROOT" ] || MODROOT="$X/kernel/usr/lib/modules/$KREL"
[ -d "$MODROOT" ] || die "$KPKG: no modules directory"
VMLINUZ="$(ls "$X/kernel/boot/vmlinuz-"* | head -n1)"
[ -f "$VMLINUZ" ] || die "$KPKG: no boot/vmlinuz-*"
if [ ! -f "$MODROOT/modules.dep" ]; then
  # The package leaves modules.dep to depmod at install time; busybox's depmod
  # (from the downloaded busybox-static) computes it from the modules' own
  # depends= fields.
  if [ "$MODROOT" = "$X/kernel/lib/modules/$KREL" ]; then base="$X/kernel"; else base="$X/kernel/usr"; fi
  "$BB" depmod -b "$base" "$KREL" || die "depmod failed"
fi
modname() { # path/to/some-mod.ko[.xz] -> some_mod (in $MOD, no subshell)
  MOD="${1##*/}"; MOD="${MOD%%.ko*}"; MOD="${MOD//-/_}"
}
declare -A MODPATH=() MODDEPS=() BUILTIN=()
while IFS= read -r line; do
  [ -n "$line" ] || continue
  modname "${line%%:*}"
  MODPATH[$MOD]="${line%%:*}"; MODDEPS[$MOD]="${line#*:}"
done <"$MODROOT/modules.dep"
while IFS= read -r path; do
  modname "$path"; BUILTIN[$MOD]=1
done <"$MODROOT/modules.builtin"
ORDER=(); BUILTIN_USED=()
declare -A DONE=()
visit() { # depth first: dependencies before the module
  local m; modname "$1"; m="$MOD"
  [ -n "${DONE[$m]:-}" ] && return; DONE[$m]=1
  if [ -n "${BUILTIN[$m]:-}" ]; then BUILTIN_USED+=("$m"); return; fi
  [ -n "${MODPATH[$m]:-}" ] || die "kernel module $m: neither in modules.dep nor in modules.builtin of $KREL"
  local d
  for d in ${MODDEPS[$m]}; do visit "$d"; done
  ORDER+=("$m")
}
for m in "${WANT_MODULES[@]}"; do visit "$m"; done
mkdir -p "$R/lib/modules/$KREL"
: >"$R/etc/rewind/modules"
for m in "${ORDER[@]}"; do
  src="$MODROOT/${MODPATH[$m]}"
  case "$src" in
    *.ko) cp "$src" "$R/lib/modules/$KREL/$m.ko" ;;
    *.ko.xz) "$BB" xz -dc "$src" >"$R/lib/modules/$KREL/$m.ko" ;;
    *.ko.zst) command -v zstd >/dev/null || die "zstd needed to unpack $src"; zstd -qdc "$src" >"$R/lib/modules/$KREL/$m.ko" ;;
    *.ko.gz) gzip -dc "$src" >"$R/lib/modules/$KREL/$m.ko" ;;
    *) die "unknown module format: $src" ;;
  esac
  echo "$m" >>"$R/etc/rewind/modules"
done

# guest init, helpers, scenarios
install -m 0755 "$HERE/guest/init" "$R/init"
install -m 0644 "$HERE/guest/lib.sh" "$R/etc/rewind/lib.sh"
for s in "$HERE"/scenarios/*.sh; do install -m 0755 "$s" "$R/scenarios/$(basename "$s")"; done
echo "$KREL" >"$R/etc/rewind/kernel-release"
printf '%s' "$LOCK" >"$R/etc/rewind/packages.lock"
echo "root:x:0:0:root:/:/bin/sh" >"$R/etc/passwd"
echo "root:x:0:" >"$R/etc/group"

# ---------------------------------------------------------------- pack
STAGE="$WORK/out"; mkdir -p "$STAGE"
find "$R" -exec touch -h -d "@$EPOCH" {} +
(cd "$R" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet --reproducible -o -H newc -R 0:0) | gzip -9 -n >"$STAGE/initrd.img"
# Pad to 512 bytes so another (uncompressed) cpio can be appended at run time.
sz=$(stat -c %s "$STAGE/initrd.img"); pad=$(( (512 - sz % 512) % 512 ))
[ "$pad" -eq 0 ] || head -c "$pad" /dev/zero >>"$STAGE/initrd.img"
cp "$VMLINUZ" "$STAGE/vmlinuz"
printf '%s' "$LOCK" >"$STAGE/packages.lock"

sha() { sha256sum <"$1" | cut -d' ' -f1; }
jlist() { local first=1 x; printf '['; for x in "$@"; do [ $first = 1 ] || printf ', '; first=0; printf '"%s"' "$x"; done; printf ']'; }
{
  printf '{\n  "format": 1,\n  "key": "%s",\n  "arch": "%s",\n' "$KEY" "$ARCH"
  printf '  "kernel": {"file": "vmlinuz", "sha256": "%s", "release": "%s", "package": "%s"},\n' "$(sha "$STAGE/vmlinuz")" "$KREL" "$KPKG"
  printf '  "initrd": {"file": "initrd.img", "sha256": "%s", "bytes": %s},\n' "$(sha "$STAGE/initrd.img")" "$(stat -c %s "$STAGE/initrd.img")"
  printf '  "cmdline": "%s",\n' "$KERNEL_CMDLINE"
  printf '  "modules": %s,\n' "$(jlist "${ORDER[@]}")"
  printf '  "builtinModules": %s,\n' "$(jlist "${BUILTIN_USED[@]}")"
  printf '  "programs": %s,\n' "$(jlist "${E2FS_PROGRAMS[@]}")"
  printf '  "libraries": %s,\n' "$(jlist $(printf '%s\n' "${!LIBS[@]}" | LC_ALL=C sort))"
  printf '  "scenarios": %s,\n' "$(jlist $(cd "$HERE/scenarios" && ls *.sh | sed 's/\.sh$//'))"
  printf '  "sourceDateEpoch": %s,\n' "$EPOCH"
  printf '  "packages": [\n'
  n=0
  while read -r p v; do
    [ -n "$p" ] || continue
    [ $n = 0 ] || printf ',\n'; n=1
    printf '    {"name": "%s", "version": "%s", "deb": "%s", "sha256": "%s"}' "$p" "$v" "$(basename "${DEB[$p]}")" "${DEBSHA[$p]}"
  done <<<"$LOCK"
  printf '\n  ]\n}\n'
} >"$STAGE/manifest.json"

rm -rf "$OUT"
mv "$STAGE" "$OUT"
# Keep the 5 most recently built images (other checkouts may use older ones).
ls -1dt "$CACHE/images"/*/ 2>/dev/null | tail -n +6 | xargs -r rm -rf
log "built $OUT (kernel $KREL, initrd $(stat -c %s "$OUT/initrd.img") bytes, modules: ${ORDER[*]})"
echo "$OUT"
