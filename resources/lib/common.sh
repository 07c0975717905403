# shellcheck shell=bash
# Shared helpers for the resources/ scripts. Source it; do not execute.

VMM_ASSETS_DIR="${VMM_ASSETS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vmm-assets}"
# shellcheck disable=SC2034  # used by the scripts that source this
GUEST_DIR="$VMM_ASSETS_DIR/guest"

log() { printf '[%s] %s\n' "${LOG_TAG:-vmm}" "$*" >&2; }
die() { printf '[%s] error: %s\n' "${LOG_TAG:-vmm}" "$*" >&2; exit 1; }

# Run a command as root (directly when we are root, else through sudo).
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@" || die "'$*' needs root and 'sudo -n' failed"
    else
        die "'$*' needs root (no sudo available)"
    fi
}

# Paths inside the extracted guest kernel package tree for the 4 modules that give
# an L1 guest a working /dev/kvm on AMD-style nested SVM (QEMU TCG -cpu max), in load order.
kvm_module_paths() {
    local ver="$1"
    local base="lib/modules/$ver/kernel"
    printf '%s\n' \
        "$base/virt/lib/irqbypass.ko.xz" \
        "$base/arch/x86/kvm/kvm.ko.xz" \
        "$base/drivers/crypto/ccp/ccp.ko.xz" \
        "$base/arch/x86/kvm/kvm-amd.ko.xz"
}

# Paths (as above) of the modules that give L1 a tap and the vhost-net and vhost-vsock
# back-ends (/dev/net/tun, /dev/vhost-net, /dev/vhost-vsock), in load order
# (nested-run.sh --vhost).
vhost_module_paths() {
    local base="lib/modules/$1/kernel"
    printf '%s\n' \
        "$base/drivers/net/tun.ko.xz" \
        "$base/drivers/net/tap.ko.xz" \
        "$base/drivers/vhost/vhost_iotlb.ko.xz" \
        "$base/drivers/vhost/vhost.ko.xz" \
        "$base/drivers/vhost/vhost_net.ko.xz" \
        "$base/net/vmw_vsock/vsock.ko.xz" \
        "$base/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko.xz" \
        "$base/drivers/vhost/vhost_vsock.ko.xz"
}

# Paths of the L2 guest's virtio-net and virtio-vsock drivers (modules in Debian's 6.12
# config; VIRTIO_PCI is built in), in load order (resources/vhost-initramfs.sh).
virtio_guest_module_paths() {
    local base="lib/modules/$1/kernel"
    printf '%s\n' \
        "$base/net/core/failover.ko.xz" \
        "$base/drivers/net/net_failover.ko.xz" \
        "$base/drivers/net/virtio_net.ko.xz" \
        "$base/net/vmw_vsock/vsock.ko.xz" \
        "$base/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko.xz" \
        "$base/net/vmw_vsock/vmw_vsock_virtio_transport.ko.xz"
}

# The vfio-pci modules (paths as above) in load order, for an L1 that passes devices through
# (nested-run.sh --vfio); irqbypass comes with the kvm modules.
vfio_module_paths() {
    local base="lib/modules/$1/kernel/drivers/vfio"
    printf '%s\n' "$base/vfio.ko.xz" "$base/vfio_iommu_type1.ko.xz" \
        "$base/pci/vfio-pci-core.ko.xz" "$base/pci/vfio-pci.ko.xz"
}
