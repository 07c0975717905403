#!/usr/bin/env bash
# Build dsa_guest.ko for the cached guest kernel (resources/setup.sh), cached.
#
# Usage: resources/dsa-module/build.sh [--force]
#
# - Kernel release from $ASSETS/guest/version (run resources/setup.sh first).
# - Headers: the Debian headers tree resources/guest-module/build.sh keeps in
#   $ASSETS/guest/headers/ (that script is run to fetch them when they are missing).
# - Output: $ASSETS/guest/dsa_guest.ko (its path is printed on stdout), rebuilt only when
#   the sources, the kernel release or the headers change (or with --force). Compiler
#   warnings fail the build; the vermagic is checked against the kernel release.
# $ASSETS = ${VMM_ASSETS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vmm-assets}
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LOG_TAG=dsa-module
# shellcheck source=SCRIPTDIR/../lib/common.sh
. "$HERE/../lib/common.sh"

FORCE=0
for arg in "$@"; do
    case "$arg" in
        --force) FORCE=1 ;;
        -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$arg' (see --help)" ;;
    esac
done

SOURCES=(dsa_guest.c Kbuild)
MODULE=dsa_guest.ko
OUT="$GUEST_DIR/$MODULE"
HDIR="$GUEST_DIR/headers"

KVER="$(cat "$GUEST_DIR/version" 2>/dev/null || true)"
[ -n "$KVER" ] || die "no guest kernel in $GUEST_DIR (guest/version missing): run resources/setup.sh"
KDIR="$HDIR/usr/src/linux-headers-$KVER"

headers_ok() {
    [ -f "$KDIR/Makefile" ] && [ -f "$KDIR/Module.symvers" ] && [ -f "$KDIR/.config" ] \
        && [ -e "$KDIR/scripts/Makefile.modpost" ] \
        && grep -q "^include $HDIR/usr/src/" "$KDIR/Makefile"
}

# The irqtest module's build fetches the headers (and the build tools) when needed.
if ! headers_ok || ! command -v make >/dev/null 2>&1 || ! command -v modinfo >/dev/null 2>&1; then
    log "headers or build tools missing: running guest-module/build.sh to fetch them"
    bash "$HERE/../guest-module/build.sh" >/dev/null
    headers_ok || die "headers in $KDIR are incomplete"
fi
CC_ARGS=()
if ! command -v x86_64-linux-gnu-gcc-12 >/dev/null 2>&1; then
    CC_ARGS=(CC=gcc-12)
fi

mkdir -p "$GUEST_DIR"
exec 9>"$GUEST_DIR/.dsa-module.lock"
flock 9

hash="$( {
    for f in "${SOURCES[@]}"; do sha256sum < "$HERE/$f"; done
    echo "$KVER"
    sha256sum < "$KDIR/Module.symvers"
    echo "build-v1 ${CC_ARGS[*]+"${CC_ARGS[*]}"}"
} | sha256sum | cut -d' ' -f1)"

if [ "$FORCE" -eq 0 ] && [ -f "$OUT" ] && [ "$(cat "$OUT.hash" 2>/dev/null || true)" = "$hash" ]; then
    log "$MODULE up to date"
    echo "$OUT"
    exit 0
fi

BUILD="$(mktemp -d "$VMM_ASSETS_DIR/.dsa-module-build.XXXXXX")"
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
strip --strip-debug -o "$OUT.tmp" "$BUILD/$MODULE"
mv "$OUT.tmp" "$OUT"
echo "$hash" > "$OUT.hash"
log "built $OUT in $(echo "$(date +%s.%N) - $start" | bc | xargs printf '%.1f') s (vermagic: $vermagic)"
echo "$OUT"
