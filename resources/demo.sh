#!/usr/bin/env bash
# Boot the demo guest interactively: 2 vCPUs, 512 MiB, serial console on this terminal.
# Runs resources/setup.sh and `cargo build --release -p vmm` first.
# Directly on KVM with VMX/SVM; otherwise inside a QEMU TCG L1 (resources/nested-run.sh).
#
#   resources/demo.sh [--initramfs] [vmm args...]
#
# Default: the root file system is an ext4 image on a virtio-blk disk (resources/rootfs-disk.sh
# builds it from Debian packages; an initramfs loads virtio_blk and ext4 and switch_roots into
# it). The run uses a fresh copy of the cached image; `exit` in the guest flushes it and powers
# off. --initramfs: the busybox initramfs alone (no disk); `poweroff -f` or `exit` ends it.
# Extra arguments are passed to the vmm (e.g. --cmdline "console=ttyS0 debug").
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
LOG_TAG=demo
# shellcheck source=lib/common.sh
. "$HERE/lib/common.sh"
# shellcheck source=lib/probe.sh
. "$HERE/lib/probe.sh"

"$HERE/setup.sh"

log "cargo build --release -p vmm"
(cd "$ROOT" && cargo build --release -p vmm) || die "building the vmm failed"
VMM="${CARGO_TARGET_DIR:-$ROOT/target}/release/vmm"
[ -x "$VMM" ] || die "no vmm binary at $VMM"

DISK=1
if [ "${1:-}" = --initramfs ]; then
    DISK=0
    shift
fi
# The vmlinux (PVH entry, no decompressor) boots faster than the bzImage (resources/compare.sh).
KERNEL="$GUEST_DIR/vmlinux"
[ -f "$KERNEL" ] || KERNEL="$GUEST_DIR/vmlinuz"
INITRD="$GUEST_DIR/demo-initramfs.cpio.gz"
ARGS=(--cmdline "console=ttyS0 quiet" --cpus boot=2 --memory size=512M "$@")
MODE="$(vmm_probe_mode)"
NESTED_FILES=()
if [ "$DISK" -eq 1 ]; then
    mapfile -t built < <("$HERE/rootfs-disk.sh")
    [ "${#built[@]}" -eq 2 ] || die "rootfs-disk.sh did not build the disk"
    INITRD="${built[1]}"
    RUN_IMG="$GUEST_DIR/rootfs-run.ext4"
    cp --sparse=always "${built[0]}" "$RUN_IMG"
    if [ "$MODE" = direct ]; then
        ARGS+=(--disk "path=$RUN_IMG")
    else
        NESTED_FILES=(--file "$RUN_IMG:/disk/rootfs.ext4")
        ARGS+=(--disk path=/disk/rootfs.ext4)
    fi
    log "root file system: virtio-blk disk ($RUN_IMG, a copy of ${built[0]}); 'exit' in the guest powers off"
fi
log "mode: $MODE; guest kernel $(cat "$GUEST_DIR/version"); type 'poweroff -f' in the guest to quit"
set +e
if [ "$MODE" = direct ]; then
    "$VMM" --kernel "$KERNEL" --initramfs "$INITRD" "${ARGS[@]}"
else
    "$HERE/nested-run.sh" --vmm "$VMM" --kernel "$KERNEL" --initramfs "$INITRD" \
        "${NESTED_FILES[@]+"${NESTED_FILES[@]}"}" -- "${ARGS[@]}"
fi
rc=$?
set -e
log "vmm exited with status $rc"
exit "$rc"
