#!/usr/bin/env bash
# Build the DSA guest initramfs: the demo initramfs (resources/setup.sh) plus the idxd
# kernel modules and Debian's accel-config, cached by content.
#
# Usage: resources/dsa-initramfs.sh [--force]
#
# Output: $ASSETS/guest/dsa-initramfs.cpio.gz (path printed on stdout) = the demo's gzip'd
# cpio followed by a second gzip'd cpio archive with:
#   /lib/modules-extra/*.ko       idxd_bus.ko, idxd.ko and every module they depend on
#                                 (modinfo -F depends, recursively; decompressed from .ko.xz)
#   /lib/modules-extra/order      their names in load order (dependencies first)
#   /bin/load-idxd                insmods them in that order (resources/dsa-guest/load-idxd)
#   /usr/bin/accel-config         from Debian's accel-config + libaccel-config1 packages,
#                                 with exactly the shared libraries `ldd` lists and the
#                                 dynamic loader; /run and /etc/accel-config exist.
# $ASSETS = ${VMM_ASSETS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vmm-assets}
# The .deb files are cached in $ASSETS/guest/accel-config-debs/.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LOG_TAG=dsa-initramfs
# shellcheck source=SCRIPTDIR/lib/common.sh
. "$HERE/lib/common.sh"

FORCE=0
for arg in "$@"; do
    case "$arg" in
        --force) FORCE=1 ;;
        -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$arg' (see --help)" ;;
    esac
done

DEMO="$GUEST_DIR/demo-initramfs.cpio.gz"
OUT="$GUEST_DIR/dsa-initramfs.cpio.gz"
DEBS="$GUEST_DIR/accel-config-debs"
GUEST_SCRIPTS="$HERE/dsa-guest"
# the top-level modules; their dependencies are found with modinfo
TOP_MODULES=(idxd_bus idxd)
# Debian packages providing accel-config; their other non-libc6 dependencies are added
ACCEL_PKGS=(accel-config libaccel-config1)

KVER="$(cat "$GUEST_DIR/version" 2>/dev/null || true)"
[ -n "$KVER" ] || die "no guest kernel in $GUEST_DIR (guest/version missing): run resources/setup.sh"
MODDIR="$GUEST_DIR/linux/lib/modules/$KVER"
[ -d "$MODDIR/kernel" ] || die "$MODDIR/kernel missing: run resources/setup.sh"
[ -f "$DEMO" ] || die "$DEMO missing: run resources/setup.sh"

mkdir -p "$GUEST_DIR"
exec 9>"$GUEST_DIR/.dsa-initramfs.lock"
flock 9

export DEBIAN_FRONTEND=noninteractive
APT_QUIET=(-q -o Dpkg::Use-Pty=0)

# ---------------------------------------------------------------- tools
need=()
command -v cpio >/dev/null 2>&1 || need+=(cpio)
command -v modinfo >/dev/null 2>&1 || need+=(kmod)
command -v xz >/dev/null 2>&1 || need+=(xz-utils)
command -v ldd >/dev/null 2>&1 || need+=(libc-bin)
if [ "${#need[@]}" -gt 0 ]; then
    log "installing ${need[*]}"
    as_root apt-get "${APT_QUIET[@]}" install -y --no-install-recommends "${need[@]}" >&2 \
        || die "apt-get install ${need[*]} failed"
fi

# ---------------------------------------------------------------- modules
# module name (dashes and underscores are the same to the kernel) -> path of its .ko.xz
declare -A KO_PATH=()
while IFS= read -r -d '' f; do
    n="$(basename "$f")"; n="${n%.ko.xz}"; n="${n%.ko}"; n="${n//-/_}"
    KO_PATH[$n]="$f"
done < <(find "$MODDIR/kernel" \( -name '*.ko.xz' -o -name '*.ko' \) -print0)
builtin_names="$(sed -n 's|^.*/\([^/]*\)\.ko$|\1|p' "$MODDIR/modules.builtin" 2>/dev/null | tr - _)"

declare -A SEEN=()
ORDER=()
# depth-first: dependencies before the module itself
visit() {
    local n="${1//-/_}" deps d
    [ -z "${SEEN[$n]:-}" ] || return 0
    SEEN[$n]=1
    if [ -z "${KO_PATH[$n]:-}" ]; then
        grep -qx "$n" <<<"$builtin_names" && return 0
        die "module $n not found under $MODDIR/kernel and not built in"
    fi
    deps="$(modinfo -F depends "${KO_PATH[$n]}")" || die "modinfo ${KO_PATH[$n]} failed"
    for d in ${deps//,/ }; do visit "$d"; done
    ORDER+=("$n")
}
for m in "${TOP_MODULES[@]}"; do visit "$m"; done

# ---------------------------------------------------------------- accel-config debs
# Depends of a package, without libc6 (the build host's glibc and loader are used: the
# guest gets the very files ldd resolves) and without alternatives' second choices.
pkg_depends() {
    apt-cache depends --no-recommends --no-suggests --no-conflicts --no-breaks \
        --no-replaces --no-enhances "$1" 2>/dev/null \
        | sed -n 's/^ *Depends: \([^ <>]*\)$/\1/p' | grep -vx 'libc6' || true
}
fetch_debs() {
    local tmp pkgs=() queue=("${ACCEL_PKGS[@]}") p d
    declare -A have=()
    if ! apt-cache show --no-all-versions accel-config >/dev/null 2>&1; then
        log "apt-get update (accel-config not in the package lists)"
        as_root apt-get "${APT_QUIET[@]}" update >&2 || die "apt-get update failed"
        apt-cache show --no-all-versions accel-config >/dev/null 2>&1 \
            || die "accel-config is not in the apt sources"
    fi
    while [ "${#queue[@]}" -gt 0 ]; do
        p="${queue[0]}"; queue=("${queue[@]:1}")
        [ -z "${have[$p]:-}" ] || continue
        have[$p]=1
        pkgs+=("$p")
        while read -r d; do
            [ -n "$d" ] && queue+=("$d")
        done < <(pkg_depends "$p")
    done
    tmp="$(mktemp -d "$VMM_ASSETS_DIR/.dl.XXXXXX")"
    chmod 755 "$tmp"   # apt's download sandbox user must be able to write there
    log "downloading ${pkgs[*]}"
    if ! (cd "$tmp" && apt-get "${APT_QUIET[@]}" -o APT::Sandbox::User=root download "${pkgs[@]}" >&2); then
        rm -rf "$tmp"
        die "apt-get download ${pkgs[*]} failed"
    fi
    printf '%s\n' "${pkgs[@]}" > "$tmp/packages"
    rm -rf "$DEBS"
    mv "$tmp" "$DEBS"
}
debs_ok() {
    [ -f "$DEBS/packages" ] || return 1
    local p
    for p in "${ACCEL_PKGS[@]}"; do
        grep -qx "$p" "$DEBS/packages" || return 1
        compgen -G "$DEBS/${p}_*.deb" >/dev/null || return 1
    done
}
debs_ok || fetch_debs
debs_ok || die "accel-config packages missing in $DEBS after download"

# ---------------------------------------------------------------- cache check
hash="$( {
    echo "layout-v1 $KVER"
    sha256sum < "$DEMO"
    for n in "${ORDER[@]}"; do echo "$n"; sha256sum < "${KO_PATH[$n]}"; done
    for d in "$DEBS"/*.deb; do sha256sum < "$d"; done
    sha256sum < /lib64/ld-linux-x86-64.so.2
    sha256sum < "$(readlink -f /lib/x86_64-linux-gnu/libc.so.6)"
    find "$GUEST_SCRIPTS" -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sed "s|$GUEST_SCRIPTS/||"
    sha256sum < "$0"
} | sha256sum | cut -d' ' -f1)"
if [ "$FORCE" -eq 0 ] && [ -f "$OUT" ] && [ "$(cat "$OUT.hash" 2>/dev/null || true)" = "$hash" ]; then
    log "dsa initramfs up to date"
    echo "$OUT"
    exit 0
fi

# ---------------------------------------------------------------- assemble
root="$(mktemp -d "$VMM_ASSETS_DIR/.dsa-extra.XXXXXX")"
stage="$(mktemp -d "$VMM_ASSETS_DIR/.dsa-debs.XXXXXX")"
trap 'rm -rf "$root" "$root.cpio.gz" "$stage" "$OUT.tmp"' EXIT
LOADER_LIBS=()
mkdir -p "$root/lib/modules-extra" "$root/bin" "$root/usr/bin" "$root/run" "$root/var/run" "$root/etc"

: > "$root/lib/modules-extra/order"
for n in "${ORDER[@]}"; do
    src="${KO_PATH[$n]}"
    case "$src" in
        *.xz) xz -dc "$src" > "$root/lib/modules-extra/$n.ko" ;;
        *) cp "$src" "$root/lib/modules-extra/$n.ko" ;;
    esac
    chmod 644 "$root/lib/modules-extra/$n.ko"
    echo "$n.ko" >> "$root/lib/modules-extra/order"
done
install -m 755 "$GUEST_SCRIPTS/load-idxd" "$root/bin/load-idxd"

for d in "$DEBS"/*.deb; do dpkg-deb -x "$d" "$stage"; done
[ -x "$stage/usr/bin/accel-config" ] || die "accel-config package has no usr/bin/accel-config"
install -m 755 "$stage/usr/bin/accel-config" "$root/usr/bin/accel-config"
if [ -d "$stage/etc/accel-config" ]; then
    cp -a "$stage/etc/accel-config" "$root/etc/"
fi
# exactly what ldd lists (with the package libraries found first), plus the loader
STAGE_LIBPATH="$stage/usr/lib/x86_64-linux-gnu:$stage/lib/x86_64-linux-gnu"
ldd_out="$(LD_LIBRARY_PATH="$STAGE_LIBPATH" ldd "$stage/usr/bin/accel-config")" \
    || die "ldd accel-config failed"
if grep -q 'not found' <<<"$ldd_out"; then
    die "accel-config needs libraries that are neither in the packages nor on this host: $ldd_out"
fi
while read -r name path; do
    [ -n "$path" ] || continue
    case "$path" in
        "$stage"/*) dest="${path#"$stage"}" ;;
        *) dest="$path" ;;
    esac
    # keep the soname path ldd shows; copy the file it resolves to
    mkdir -p "$root$(dirname "$dest")"
    cp -L "$path" "$root$dest"
    LOADER_LIBS+=("$name")
done < <(sed -n -e 's/^[[:space:]]*\([^ ]*\) => \(\/[^ ]*\) .*$/\1 \2/p' \
             -e 's/^[[:space:]]*\(\/[^ ]*\) (.*$/\1 \1/p' <<<"$ldd_out")
[ -f "$root/lib64/ld-linux-x86-64.so.2" ] || die "the dynamic loader was not among ldd's output"
# the loader's default search path covers /lib/x86_64-linux-gnu and /usr/lib/x86_64-linux-gnu
# on Debian; make it explicit in case the guest's loader has no ld.so.cache
printf '%s\n' /lib/x86_64-linux-gnu /usr/lib/x86_64-linux-gnu > "$root/etc/ld.so.conf"

(cd "$root" && find . -mindepth 1 -print0 | LC_ALL=C sort -z \
    | cpio --null -o -H newc --quiet --owner=0:0 | gzip -9n) > "$root.cpio.gz"

# sanity: the demo has /init, the extra archive has the modules, the tool and the loader
list_cpio() { gzip -dc "$1" | cpio -it --quiet 2>/dev/null || true; }
grep -qx 'init' <<<"$(list_cpio "$DEMO")" || die "$DEMO has no /init"
extra="$(list_cpio "$root.cpio.gz")"
for f in lib/modules-extra/idxd_bus.ko lib/modules-extra/idxd.ko lib/modules-extra/order \
         bin/load-idxd usr/bin/accel-config lib64/ld-linux-x86-64.so.2; do
    grep -qx "$f" <<<"$extra" || die "extra archive lacks $f"
done
cat "$DEMO" "$root.cpio.gz" > "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo "$hash" > "$OUT.hash"
log "built $OUT ($(du -k "$OUT" | cut -f1) KiB): modules ${ORDER[*]}; accel-config with ${LOADER_LIBS[*]}"
echo "$OUT"
