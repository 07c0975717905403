#!/usr/bin/env bash
# Build the DSA module test initramfs: the demo initramfs (resources/setup.sh) plus
# /lib/modules-extra/dsa_guest.ko (resources/dsa-module/build.sh), cached by content.
# No idxd modules are in it: dsa_guest.ko binds the DSA function itself.
#
# Usage: resources/dsa-module/initramfs.sh [--force]
#
# Output: $ASSETS/guest/dsa-module-initramfs.cpio.gz (path printed on stdout) = the demo's
# gzip'd cpio followed by a second gzip'd cpio archive with the module; the kernel unpacks
# concatenated archives in order.
# $ASSETS = ${VMM_ASSETS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vmm-assets}
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LOG_TAG=dsa-module-initramfs
# shellcheck source=SCRIPTDIR/../lib/common.sh
. "$HERE/../lib/common.sh"

FORCE=()
for arg in "$@"; do
    case "$arg" in
        --force) FORCE=(--force) ;;
        -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$arg' (see --help)" ;;
    esac
done

DEMO="$GUEST_DIR/demo-initramfs.cpio.gz"
OUT="$GUEST_DIR/dsa-module-initramfs.cpio.gz"
[ -f "$DEMO" ] || die "$DEMO missing: run resources/setup.sh"
command -v cpio >/dev/null 2>&1 || die "cpio not installed: run resources/setup.sh"

KO="$(bash "$HERE/build.sh" "${FORCE[@]+"${FORCE[@]}"}" | tail -n1)"
[ -f "$KO" ] || die "dsa-module/build.sh did not produce a module"

exec 9>"$GUEST_DIR/.dsa-module-initramfs.lock"
flock 9
hash="$( { sha256sum < "$DEMO"; sha256sum < "$KO"; echo "layout-v1"; } | sha256sum | cut -d' ' -f1)"
if [ "${#FORCE[@]}" -eq 0 ] && [ -f "$OUT" ] && [ "$(cat "$OUT.hash" 2>/dev/null || true)" = "$hash" ]; then
    log "DSA module initramfs up to date"
    echo "$OUT"
    exit 0
fi

root="$(mktemp -d "$VMM_ASSETS_DIR/.dsa-extra.XXXXXX")"
trap 'rm -rf "$root" "$root.cpio.gz" "$OUT.tmp"' EXIT
mkdir -p "$root/lib/modules-extra"
cp "$KO" "$root/lib/modules-extra/dsa_guest.ko"
chmod 644 "$root/lib/modules-extra/dsa_guest.ko"
(cd "$root" && find . -mindepth 1 -print0 | LC_ALL=C sort -z \
    | cpio --null -o -H newc --quiet --owner=0:0 | gzip -9n) > "$root.cpio.gz"
list_cpio() { gzip -dc "$1" | cpio -it --quiet 2>/dev/null || true; }
grep -qx 'init' <<<"$(list_cpio "$DEMO")" || die "$DEMO has no /init"
grep -qx 'lib/modules-extra/dsa_guest.ko' <<<"$(list_cpio "$root.cpio.gz")" \
    || die "extra archive lacks the module"
cat "$DEMO" "$root.cpio.gz" > "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo "$hash" > "$OUT.hash"
log "built $OUT ($(du -k "$OUT" | cut -f1) KiB)"
echo "$OUT"
