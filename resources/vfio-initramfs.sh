#!/usr/bin/env bash
# Build the L2 guest initramfs of the VFIO pass-through tests (tests/tests/vfio.rs): the demo
# initramfs (resources/setup.sh) plus the stock drivers of the devices the nested harness
# passes through (nested-run.sh --vfio: QEMU's NVMe and e1000e), cached by content.
#
# Usage: resources/vfio-initramfs.sh [--force]
#
# Output: $ASSETS/guest/vfio-initramfs.cpio.gz (path printed on stdout) = the demo's gzip'd
# cpio followed by a second gzip'd cpio archive with:
#   /lib/modules-extra/*.ko        nvme, e1000e and every module they depend on
#                                  (modinfo -F depends, recursively; decompressed from .ko.xz)
#   /lib/modules-extra/TOP.order   for TOP in nvme, e1000e: the modules to insmod, deps first
#   /bin/load-driver TOP           insmods TOP.order's modules not yet loaded; exit status of
#                                  the failing insmod, 0 when all are loaded
# The tests write and read the NVMe with busybox dd oflag=direct / iflag=direct (O_DIRECT).
# $ASSETS = ${VMM_ASSETS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vmm-assets}
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LOG_TAG=vfio-initramfs
# shellcheck source=SCRIPTDIR/lib/common.sh
. "$HERE/lib/common.sh"

FORCE=0
for arg in "$@"; do
    case "$arg" in
        --force) FORCE=1 ;;
        -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$arg' (see --help)" ;;
    esac
done

DEMO="$GUEST_DIR/demo-initramfs.cpio.gz"
OUT="$GUEST_DIR/vfio-initramfs.cpio.gz"
TOP_MODULES=(nvme e1000e)

KVER="$(cat "$GUEST_DIR/version" 2>/dev/null || true)"
[ -n "$KVER" ] || die "no guest kernel in $GUEST_DIR (guest/version missing): run resources/setup.sh"
MODDIR="$GUEST_DIR/linux/lib/modules/$KVER"
[ -d "$MODDIR/kernel" ] || die "$MODDIR/kernel missing: run resources/setup.sh"
[ -f "$DEMO" ] || die "$DEMO missing: run resources/setup.sh"
for t in cpio modinfo xz; do
    command -v "$t" >/dev/null 2>&1 || die "$t not installed: run resources/setup.sh"
done

mkdir -p "$GUEST_DIR"
exec 9>"$GUEST_DIR/.vfio-initramfs.lock"
flock 9

# ---------------------------------------------------------------- modules
# module name (dashes and underscores are the same to the kernel) -> path of its .ko.xz
declare -A KO_PATH=()
while IFS= read -r -d '' f; do
    n="$(basename "$f")"; n="${n%.ko.xz}"; n="${n%.ko}"; n="${n//-/_}"
    KO_PATH[$n]="$f"
done < <(find "$MODDIR/kernel" \( -name '*.ko.xz' -o -name '*.ko' \) -print0)
builtin_names="$(sed -n 's|^.*/\([^/]*\)\.ko$|\1|p' "$MODDIR/modules.builtin" 2>/dev/null | tr - _)"

# depth-first, dependencies before the module itself; ORDER gets the modules of one top module
declare -A SEEN=()
ORDER=()
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
declare -A TOP_ORDER=()
ALL=()
for m in "${TOP_MODULES[@]}"; do
    SEEN=(); ORDER=()
    visit "$m"
    TOP_ORDER[$m]="${ORDER[*]}"
    for n in "${ORDER[@]}"; do
        [[ " ${ALL[*]-} " == *" $n "* ]] || ALL+=("$n")
    done
done

# ---------------------------------------------------------------- cache check
hash="$( {
    echo "layout-v1 $KVER"
    sha256sum < "$DEMO"
    for m in "${TOP_MODULES[@]}"; do echo "$m: ${TOP_ORDER[$m]}"; done
    for n in "${ALL[@]}"; do echo "$n"; sha256sum < "${KO_PATH[$n]}"; done
    sha256sum < "$0"
} | sha256sum | cut -d' ' -f1)"
if [ "$FORCE" -eq 0 ] && [ -f "$OUT" ] && [ "$(cat "$OUT.hash" 2>/dev/null || true)" = "$hash" ]; then
    log "vfio initramfs up to date"
    echo "$OUT"
    exit 0
fi

# ---------------------------------------------------------------- assemble
root="$(mktemp -d "$VMM_ASSETS_DIR/.vfio-extra.XXXXXX")"
trap 'rm -rf "$root" "$root.cpio.gz" "$OUT.tmp"' EXIT
mkdir -p "$root/lib/modules-extra" "$root/bin"
for n in "${ALL[@]}"; do
    src="${KO_PATH[$n]}"
    case "$src" in
        *.xz) xz -dc "$src" > "$root/lib/modules-extra/$n.ko" ;;
        *) cp "$src" "$root/lib/modules-extra/$n.ko" ;;
    esac
    chmod 644 "$root/lib/modules-extra/$n.ko"
done
for m in "${TOP_MODULES[@]}"; do
    # shellcheck disable=SC2086  # a space-separated list
    printf '%s.ko\n' ${TOP_ORDER[$m]} > "$root/lib/modules-extra/$m.order"
done
cat > "$root/bin/load-driver" <<'LOAD'
#!/bin/sh
# load-driver TOP: insmod the modules of /lib/modules-extra/TOP.order not yet loaded, in order
# (written by resources/vfio-initramfs.sh)
dir=/lib/modules-extra
[ -f "$dir/$1.order" ] || { echo "load-driver: no $dir/$1.order" >&2; exit 1; }
while read -r ko; do
    name="${ko%.ko}"
    [ -d "/sys/module/$name" ] && continue
    insmod "$dir/$ko" || { rc=$?; echo "load-driver: insmod $ko failed ($rc)" >&2; exit "$rc"; }
    echo "load-driver: loaded $name"
done < "$dir/$1.order"
LOAD
chmod 755 "$root/bin/load-driver"

(cd "$root" && find . -mindepth 1 -print0 | LC_ALL=C sort -z \
    | cpio --null -o -H newc --quiet --owner=0:0 | gzip -9n) > "$root.cpio.gz"

# sanity: the demo has /init, the extra archive has the modules and the loader
list_cpio() { gzip -dc "$1" | cpio -it --quiet 2>/dev/null || true; }
grep -qx 'init' <<<"$(list_cpio "$DEMO")" || die "$DEMO has no /init"
extra="$(list_cpio "$root.cpio.gz")"
for f in lib/modules-extra/nvme.ko lib/modules-extra/e1000e.ko lib/modules-extra/nvme.order \
         lib/modules-extra/e1000e.order bin/load-driver; do
    grep -qx "$f" <<<"$extra" || die "extra archive lacks $f"
done
cat "$DEMO" "$root.cpio.gz" > "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo "$hash" > "$OUT.hash"
log "built $OUT ($(du -k "$OUT" | cut -f1) KiB): nvme: ${TOP_ORDER[nvme]}; e1000e: ${TOP_ORDER[e1000e]}"
echo "$OUT"
