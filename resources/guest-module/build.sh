#!/usr/bin/env bash
# Build irqtest_guest.ko for the cached guest kernel (resources/setup.sh), cached.
#
# Usage: resources/guest-module/build.sh [--force]
#
# - Kernel release from $ASSETS/guest/version (run resources/setup.sh first).
# - Headers: linux-headers-<ver>-amd64 and the linux-headers-*-common / linux-kbuild-*
#   packages it depends on (bookworm-backports), fetched with `apt-get download` and
#   unpacked with `dpkg-deb -x` into $ASSETS/guest/headers/ (never installed as packages;
#   the same layout `setup.sh --headers` produces, so either may fill it).
# - Output: $ASSETS/guest/irqtest_guest.ko (its path is printed on stdout) and
#   $ASSETS/guest/irqlat_guest.ko (the latency module, next to it), rebuilt only
#   when the sources, the kernel release or the headers change (or with --force).
#   The module's vermagic is checked against the kernel release.
# $ASSETS = ${VMM_ASSETS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vmm-assets}
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LOG_TAG=guest-module
# shellcheck source=SCRIPTDIR/../lib/common.sh
. "$HERE/../lib/common.sh"

FORCE=0
for arg in "$@"; do
    case "$arg" in
        --force) FORCE=1 ;;
        -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$arg' (see --help)" ;;
    esac
done

SOURCES=(irqtest_guest.c irqlat_guest.c Kbuild)
MODULE=irqtest_guest.ko
# built alongside: the interrupt-latency module (resources/irq-latency.sh)
LAT_MODULE=irqlat_guest.ko
LAT_OUT="$GUEST_DIR/$LAT_MODULE"
OUT="$GUEST_DIR/$MODULE"
HDIR="$GUEST_DIR/headers"

KVER="$(cat "$GUEST_DIR/version" 2>/dev/null || true)"
[ -n "$KVER" ] || die "no guest kernel in $GUEST_DIR (guest/version missing): run resources/setup.sh"
KDIR="$HDIR/usr/src/linux-headers-$KVER"

mkdir -p "$GUEST_DIR"
exec 9>"$GUEST_DIR/.irqtest-module.lock"
flock 9

export DEBIAN_FRONTEND=noninteractive
APT_QUIET=(-q -o Dpkg::Use-Pty=0)

pkg_installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = installed ]
}

# ---------------------------------------------------------------- build tools
need=()
command -v make >/dev/null 2>&1 || need+=(make)
command -v x86_64-linux-gnu-gcc-12 >/dev/null 2>&1 || command -v gcc-12 >/dev/null 2>&1 || need+=(gcc-12)
command -v modinfo >/dev/null 2>&1 || need+=(kmod)
command -v pahole >/dev/null 2>&1 || need+=(dwarves)
pkg_installed libelf-dev || need+=(libelf-dev)
command -v bc >/dev/null 2>&1 || need+=(bc)
if [ "${#need[@]}" -gt 0 ]; then
    log "installing module build tools: ${need[*]}"
    as_root apt-get "${APT_QUIET[@]}" install -y --no-install-recommends "${need[@]}" >&2 \
        || die "apt-get install ${need[*]} failed"
fi
# The headers' .kernelvariables ask for x86_64-linux-gnu-gcc-12 (what Debian built with).
CC_ARGS=()
if ! command -v x86_64-linux-gnu-gcc-12 >/dev/null 2>&1; then
    CC_ARGS=(CC=gcc-12)
fi

# ---------------------------------------------------------------- headers
backports_configured() {
    grep -rqsE '^[^#]*bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null
}

fetch_headers() {
    local main="linux-headers-$KVER" tmp deb l t pkgs=()
    if ! apt-cache show --no-all-versions "$main" >/dev/null 2>&1; then
        backports_configured \
            || die "bookworm-backports is not in the apt sources: run resources/setup.sh (it adds it)"
        log "apt-get update ($main not in the package lists)"
        as_root apt-get "${APT_QUIET[@]}" update >&2 || die "apt-get update failed"
        apt-cache show --no-all-versions "$main" >/dev/null 2>&1 \
            || die "$main is not in the archive (the guest kernel may be outdated): run resources/setup.sh"
    fi
    pkgs=("$main")
    # its linux-headers-<ver>-common and linux-kbuild-<ver> dependencies
    while read -r dep; do
        pkgs+=("$dep")
    done < <(apt-cache depends "$main" 2>/dev/null \
        | sed -n 's/^ *Depends: \(linux-\(headers\|kbuild\)-[^ <>]*\)$/\1/p' | sort -u)
    tmp="$(mktemp -d "$VMM_ASSETS_DIR/.dl.XXXXXX")"
    chmod 755 "$tmp"   # apt's download sandbox user must be able to write there
    log "downloading ${pkgs[*]}"
    if ! (cd "$tmp" && apt-get "${APT_QUIET[@]}" -o APT::Sandbox::User=root download "${pkgs[@]}" >&2); then
        rm -rf "$tmp"
        die "apt-get download ${pkgs[*]} failed"
    fi
    rm -rf "$HDIR.new"
    mkdir -p "$HDIR.new"
    for deb in "$tmp"/*.deb; do
        dpkg-deb -x "$deb" "$HDIR.new"
    done
    rm -rf "$tmp"
    [ -f "$HDIR.new/usr/src/linux-headers-$KVER/Makefile" ] \
        || die "$main did not provide usr/src/linux-headers-$KVER/Makefile"
    # absolute symlinks (/usr/src/..., /usr/lib/linux-kbuild-...) must point inside the tree
    while IFS= read -r -d '' l; do
        t="$(readlink "$l")"
        case "$t" in
            /*) if [ -e "$HDIR.new$t" ] || [ -L "$HDIR.new$t" ]; then
                    ln -sfn "$(realpath -m --relative-to="$(dirname "$l")" "$HDIR.new$t")" "$l"
                fi ;;
        esac
    done < <(find "$HDIR.new" -type l -print0)
    # the arch Makefile includes the -common tree by absolute path
    sed -i "s|^include /usr/src/|include $HDIR/usr/src/|" "$HDIR.new/usr/src/linux-headers-$KVER/Makefile"
    rm -rf "$HDIR"
    mv "$HDIR.new" "$HDIR"
}

headers_ok() {
    [ -f "$KDIR/Makefile" ] && [ -f "$KDIR/Module.symvers" ] && [ -f "$KDIR/.config" ] \
        && [ -e "$KDIR/scripts/Makefile.modpost" ] \
        && grep -q "^include $HDIR/usr/src/" "$KDIR/Makefile"
}

if ! headers_ok; then
    log "fetching headers for $KVER into $HDIR"
    fetch_headers
    headers_ok || die "headers in $KDIR are incomplete after extraction"
fi

# ---------------------------------------------------------------- build (cached)
hash="$( {
    for f in "${SOURCES[@]}"; do sha256sum < "$HERE/$f"; done
    echo "$KVER"
    sha256sum < "$KDIR/Module.symvers"
    echo "build-v2 ${CC_ARGS[*]+"${CC_ARGS[*]}"}"
} | sha256sum | cut -d' ' -f1)"

if [ "$FORCE" -eq 0 ] && [ -f "$OUT" ] && [ -f "$LAT_OUT" ] && [ "$(cat "$OUT.hash" 2>/dev/null || true)" = "$hash" ]; then
    log "$MODULE up to date"
    echo "$OUT"
    exit 0
fi

BUILD="$(mktemp -d "$VMM_ASSETS_DIR/.irqtest-build.XXXXXX")"
trap 'rm -rf "$BUILD"' EXIT
for f in "${SOURCES[@]}"; do cp "$HERE/$f" "$BUILD/"; done
log "building $MODULE against $KDIR"
start=$(date +%s.%N)
if ! make -C "$KDIR" M="$BUILD" "${CC_ARGS[@]+"${CC_ARGS[@]}"}" modules > "$BUILD/build.log" 2>&1; then
    cat "$BUILD/build.log" >&2
    die "module build failed"
fi
if grep -qiE '(warning|error):' "$BUILD/build.log"; then
    grep -iE -B2 -A4 '(warning|error):' "$BUILD/build.log" >&2 || true
    die "module build printed warnings (treated as errors)"
fi
[ -f "$BUILD/$MODULE" ] || die "make succeeded but produced no $MODULE"
vermagic="$(modinfo -F vermagic "$BUILD/$MODULE")"
[ "${vermagic%% *}" = "$KVER" ] || die "vermagic '$vermagic' does not match the guest kernel $KVER"
# debug info is of no use in the guest and would only grow the initramfs
strip --strip-debug -o "$OUT.tmp" "$BUILD/$MODULE"
mv "$OUT.tmp" "$OUT"
[ -f "$BUILD/$LAT_MODULE" ] || die "make succeeded but produced no $LAT_MODULE"
strip --strip-debug -o "$LAT_OUT.tmp" "$BUILD/$LAT_MODULE"
mv "$LAT_OUT.tmp" "$LAT_OUT"
echo "$hash" > "$OUT.hash"
log "built $OUT in $(echo "$(date +%s.%N) - $start" | bc | xargs printf '%.1f') s (vermagic: $vermagic)"
echo "$OUT"
