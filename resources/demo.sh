#!/usr/bin/env bash
# Boot the demo guest interactively: 2 vCPUs, 512 MiB, serial console on this terminal.
# Runs resources/setup.sh and `cargo build --release -p vmm` first.
# Directly on KVM with VMX/SVM; otherwise inside a QEMU TCG L1 (resources/nested-run.sh).
# In the guest: `poweroff -f` (or `exit`) ends the demo.
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

# The vmlinux (PVH entry, no decompressor) boots faster than the bzImage (resources/compare.sh).
KERNEL="$GUEST_DIR/vmlinux"
[ -f "$KERNEL" ] || KERNEL="$GUEST_DIR/vmlinuz"
INITRD="$GUEST_DIR/demo-initramfs.cpio.gz"
ARGS=(--cmdline "console=ttyS0 quiet" --cpus boot=2 --memory size=512M "$@")
MODE="$(vmm_probe_mode)"
log "mode: $MODE; guest kernel $(cat "$GUEST_DIR/version"); type 'poweroff -f' in the guest to quit"
set +e
if [ "$MODE" = direct ]; then
    "$VMM" --kernel "$KERNEL" --initramfs "$INITRD" "${ARGS[@]}"
else
    "$HERE/nested-run.sh" --vmm "$VMM" --kernel "$KERNEL" --initramfs "$INITRD" -- "${ARGS[@]}"
fi
rc=$?
set -e
log "vmm exited with status $rc"
exit "$rc"
