#!/usr/bin/env bash
# Build the virtio-blk test guest initramfs: the test initramfs (resources/test-initramfs.sh)
# plus the guest kernel's virtio_blk and ext4 modules (=m in Debian's 6.12 config),
# decompressed, under /lib/modules-blk, and /bin/load-blk, which loads them in dependency
# order. Cached by content.
#
# Usage: resources/blk-initramfs.sh
#
# Output: $ASSETS/guest/blk-initramfs.cpio.gz (path printed on stdout).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LOG_TAG=blk-initramfs
# shellcheck source=SCRIPTDIR/lib/common.sh
. "$HERE/lib/common.sh"

BASE="$(bash "$HERE/test-initramfs.sh" | tail -n1)"
OUT="$GUEST_DIR/blk-initramfs.cpio.gz"
KVER="$(cat "$GUEST_DIR/version")"
MODDIR="$GUEST_DIR/linux/lib/modules/$KVER/kernel"
# ext4's dependencies first (modinfo depends= of the 6.12 modules).
MODULES=(lib/crc16 fs/mbcache fs/jbd2/jbd2 crypto/crc32c_generic fs/ext4/ext4
         drivers/block/virtio_blk)

hash="$( { sha256sum < "$BASE"; for m in "${MODULES[@]}"; do sha256sum < "$MODDIR/$m.ko.xz"; done
          echo "layout-v1"; } | sha256sum | cut -d' ' -f1)"
if [ -f "$OUT" ] && [ "$(cat "$OUT.hash" 2>/dev/null || true)" = "$hash" ]; then
    log "blk initramfs up to date"
    echo "$OUT"
    exit 0
fi

root="$(mktemp -d "$VMM_ASSETS_DIR/.blk.XXXXXX")"
trap 'rm -rf "$root" "$root.cpio.gz" "$OUT.tmp"' EXIT
mkdir -p "$root/lib/modules-blk" "$root/bin"
: > "$root/lib/modules-blk/order"
for m in "${MODULES[@]}"; do
    name="$(basename "$m").ko"
    xz -dc "$MODDIR/$m.ko.xz" > "$root/lib/modules-blk/$name"
    echo "$name" >> "$root/lib/modules-blk/order"
done
cat > "$root/bin/load-blk" <<'SH'
#!/bin/sh
# Load virtio_blk and ext4 (and their dependencies) in order.
while read -r m; do
    grep -q "^${m%.ko} " /proc/modules || insmod "/lib/modules-blk/$m" || exit 1
done < /lib/modules-blk/order
SH
chmod 755 "$root/bin/load-blk"
(cd "$root" && find . -mindepth 1 -print0 | LC_ALL=C sort -z \
    | cpio --null -o -H newc --quiet --owner=0:0 | gzip -9n) > "$root.cpio.gz"
cat "$BASE" "$root.cpio.gz" > "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo "$hash" > "$OUT.hash"
log "built $OUT ($(du -k "$OUT" | cut -f1) KiB)"
echo "$OUT"
