#!/usr/bin/env bash
# Prepare everything the boot tests and the demo need, cached and idempotent:
#   - apt: bookworm-backports, busybox-static cpio zstd xz-utils kmod time
#          (+ qemu-system-x86 from backports when the nested harness is needed)
#   - the current Debian 6.12 kernel (bookworm-backports), extracted, never installed,
#     and the ELF vmlinux taken out of its bzImage (PVH boot)
#   - the demo guest initramfs
#   - the probe result (direct|nested)
#
# Usage: resources/setup.sh [--headers] [--force-kernel]
#   --headers       also fetch+extract linux-headers-<ver>-amd64 (+ -common, kbuild) into the cache
#   --force-kernel  re-download the kernel even if the cached version is current
# Cache dir: ${VMM_ASSETS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vmm-assets}
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LOG_TAG=setup
# shellcheck source=lib/common.sh
. "$HERE/lib/common.sh"
# shellcheck source=lib/probe.sh
. "$HERE/lib/probe.sh"

WANT_HEADERS=0
FORCE_KERNEL=0
for arg in "$@"; do
    case "$arg" in
        --headers) WANT_HEADERS=1 ;;
        --force-kernel) FORCE_KERNEL=1 ;;
        -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$arg' (see --help)" ;;
    esac
done

export DEBIAN_FRONTEND=noninteractive
APT_QUIET=(-q -o Dpkg::Use-Pty=0)
mkdir -p "$GUEST_DIR"

MODE="$(vmm_probe_mode)"
log "test mode (probe): $MODE"

# ---------------------------------------------------------------- apt sources
backports_configured() {
    grep -rqsE '^[^#]*bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null
}

NEED_UPDATE=0
if ! backports_configured; then
    log "adding bookworm-backports to apt sources"
    as_root tee /etc/apt/sources.list.d/bookworm-backports.sources >/dev/null <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    NEED_UPDATE=1
fi

# Update when the backports lists are missing or older than a day.
bp_release="$(ls -t /var/lib/apt/lists/*bookworm-backports_InRelease 2>/dev/null | head -n1 || true)"
if [ -z "$bp_release" ]; then
    NEED_UPDATE=1
elif [ -n "$(find "$bp_release" -mmin +1440 2>/dev/null)" ]; then
    NEED_UPDATE=1
fi
APT_UPDATED=0
apt_update() {
    log "apt-get update"
    as_root apt-get "${APT_QUIET[@]}" update >&2 || die "apt-get update failed"
    APT_UPDATED=1
}
[ "$NEED_UPDATE" -eq 1 ] && apt_update

# ---------------------------------------------------------------- packages
pkg_installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = installed ]
}

missing=()
for p in busybox-static cpio zstd xz-utils kmod time; do
    pkg_installed "$p" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing: ${missing[*]}"
    as_root apt-get "${APT_QUIET[@]}" install -y --no-install-recommends "${missing[@]}" >&2 \
        || die "apt-get install ${missing[*]} failed"
fi

if [ "$MODE" = nested ]; then
    if ! command -v qemu-system-x86_64 >/dev/null 2>&1; then
        log "installing qemu-system-x86 from bookworm-backports (nested harness)"
        as_root apt-get "${APT_QUIET[@]}" install -y --no-install-recommends \
            -t bookworm-backports qemu-system-x86 >&2 \
            || die "apt-get install -t bookworm-backports qemu-system-x86 failed"
    fi
    qemu_ver="$(qemu-system-x86_64 --version | head -n1)"
    log "qemu: $qemu_ver"
fi

BUSYBOX=/bin/busybox
[ -x "$BUSYBOX" ] || BUSYBOX="$(command -v busybox || true)"
[ -n "$BUSYBOX" ] && [ -x "$BUSYBOX" ] || die "busybox not found after installing busybox-static"
if ldd "$BUSYBOX" >/dev/null 2>&1; then
    die "$BUSYBOX is dynamically linked; busybox-static is required"
fi

# ---------------------------------------------------------------- kernel
resolve_kernel_version() {
    # linux-image-amd64 (backports) depends on linux-image-6.12.N+debNN-amd64
    apt-cache depends linux-image-amd64/bookworm-backports 2>/dev/null \
        | sed -n 's/^ *Depends: linux-image-\(6\.12\.[^ ]*-amd64\)$/\1/p' | head -n1
}

KVER="$(resolve_kernel_version || true)"
if [ -z "$KVER" ] && [ "$APT_UPDATED" -eq 0 ]; then
    apt_update
    KVER="$(resolve_kernel_version || true)"
fi
CACHED_KVER="$(cat "$GUEST_DIR/version" 2>/dev/null || true)"
if [ -z "$KVER" ]; then
    if [ -n "$CACHED_KVER" ] && [ -f "$GUEST_DIR/vmlinuz" ]; then
        log "warning: could not resolve the current 6.12 kernel via apt; keeping cached $CACHED_KVER"
        KVER="$CACHED_KVER"
    else
        die "could not resolve linux-image-6.12.*-amd64 from 'apt-cache depends linux-image-amd64/bookworm-backports'"
    fi
fi
log "guest kernel: $KVER"

if [ "$FORCE_KERNEL" -eq 0 ] && [ "$CACHED_KVER" = "$KVER" ] \
    && [ -f "$GUEST_DIR/vmlinuz" ] && [ -d "$GUEST_DIR/linux/lib/modules/$KVER" ]; then
    log "kernel $KVER already cached"
else
    pkg="linux-image-$KVER-unsigned"
    tmp="$(mktemp -d "$VMM_ASSETS_DIR/.dl.XXXXXX")"
    trap 'rm -rf "$tmp"' EXIT
    chmod 755 "$tmp"
    log "downloading $pkg"
    (cd "$tmp" && apt-get "${APT_QUIET[@]}" -o APT::Sandbox::User=root download "$pkg" >&2) \
        || die "apt-get download $pkg failed"
    deb="$(ls "$tmp"/*.deb)"
    log "extracting $(basename "$deb")"
    rm -rf "$GUEST_DIR/linux.new"
    mkdir -p "$GUEST_DIR/linux.new"
    dpkg-deb -x "$deb" "$GUEST_DIR/linux.new"
    [ -f "$GUEST_DIR/linux.new/boot/vmlinuz-$KVER" ] || die "package $pkg has no boot/vmlinuz-$KVER"
    rm -rf "$GUEST_DIR/linux" "$GUEST_DIR/headers"
    mv "$GUEST_DIR/linux.new" "$GUEST_DIR/linux"
    cp "$GUEST_DIR/linux/boot/vmlinuz-$KVER" "$GUEST_DIR/vmlinuz.tmp"
    mv "$GUEST_DIR/vmlinuz.tmp" "$GUEST_DIR/vmlinuz"
    echo "$KVER" > "$GUEST_DIR/version"
    rm -rf "$tmp"
    trap - EXIT
fi
while read -r m; do
    [ -f "$GUEST_DIR/linux/$m" ] || die "kernel package lacks $m"
done < <(kvm_module_paths "$KVER")

# ---------------------------------------------------------------- vmlinux (PVH boot)
# The ELF vmlinux inside the bzImage: its payload (setup header payload_offset/length) is a
# zstd frame followed by the 4-byte decompressed size. The vmm and QEMU boot it through its
# PVH entry note, without the bzImage's decompressor.
VMLINUX="$GUEST_DIR/vmlinux"
if [ -f "$VMLINUX" ] && [ "$(cat "$VMLINUX.version" 2>/dev/null || true)" = "$KVER" ]; then
    log "vmlinux $KVER already extracted"
else
    bz="$GUEST_DIR/vmlinuz"
    le32() { od -An -tu4 -j "$2" -N4 "$1" | tr -d ' '; }
    setup_sects="$(od -An -tu1 -j $((0x1f1)) -N1 "$bz" | tr -d ' ')"
    [ "$setup_sects" -eq 0 ] && setup_sects=4
    payload_off="$(( (setup_sects + 1) * 512 + $(le32 "$bz" $((0x248))) ))"
    payload_len="$(le32 "$bz" $((0x24c)))"
    [ "$(od -An -tx1 -j "$payload_off" -N4 "$bz" | tr -d ' ')" = 28b52ffd ] \
        || die "$bz: the payload at $payload_off is not zstd"
    want="$(le32 "$bz" $((payload_off + payload_len - 4)))"
    log "extracting vmlinux ($want bytes) from the bzImage's zstd payload"
    dd if="$bz" iflag=skip_bytes,count_bytes skip="$payload_off" count=$((payload_len - 4)) \
        bs=1M status=none | zstd -dcq > "$VMLINUX.tmp" \
        || die "decompressing the bzImage payload failed"
    [ "$(stat -c %s "$VMLINUX.tmp")" = "$want" ] || die "vmlinux has $(stat -c %s "$VMLINUX.tmp") bytes, expected $want"
    [ "$(head -c 4 "$VMLINUX.tmp" | od -An -tx1 | tr -d ' ')" = 7f454c46 ] || die "extracted payload is not an ELF file"
    mv "$VMLINUX.tmp" "$VMLINUX"
    echo "$KVER" > "$VMLINUX.version"
fi

# ---------------------------------------------------------------- headers (optional)
if [ "$WANT_HEADERS" -eq 1 ]; then
    HDIR="$GUEST_DIR/headers"
    # module builds need a compiler, make, bc and pahole (BTF)
    hmissing=()
    for p in gcc make bc dwarves libelf-dev; do pkg_installed "$p" || hmissing+=("$p"); done
    if [ "${#hmissing[@]}" -gt 0 ]; then
        log "installing module build tools: ${hmissing[*]}"
        as_root apt-get "${APT_QUIET[@]}" install -y --no-install-recommends "${hmissing[@]}" >&2 \
            || die "apt-get install ${hmissing[*]} failed"
    fi
    if [ -d "$HDIR/usr/src/linux-headers-$KVER" ]; then
        log "headers for $KVER already cached"
    else
        tmp="$(mktemp -d "$VMM_ASSETS_DIR/.dl.XXXXXX")"
        trap 'rm -rf "$tmp"' EXIT
        chmod 755 "$tmp"
        # linux-headers-<ver>-amd64 plus its linux-headers-*-common and linux-kbuild-* deps
        hpkgs=("linux-headers-$KVER")
        while read -r dep; do
            hpkgs+=("$dep")
        done < <(apt-cache depends "linux-headers-$KVER" 2>/dev/null \
            | sed -n 's/^ *Depends: \(linux-\(headers\|kbuild\)-[^ ]*\)$/\1/p')
        log "downloading ${hpkgs[*]}"
        (cd "$tmp" && apt-get "${APT_QUIET[@]}" -o APT::Sandbox::User=root download "${hpkgs[@]}" >&2) \
            || die "apt-get download ${hpkgs[*]} failed"
        rm -rf "$HDIR.new"
        mkdir -p "$HDIR.new"
        for deb in "$tmp"/*.deb; do dpkg-deb -x "$deb" "$HDIR.new"; done
        # Make absolute symlinks (/usr/src/..., /usr/lib/linux-kbuild-...) point inside the tree.
        while IFS= read -r -d '' l; do
            t="$(readlink "$l")"
            case "$t" in
                /*) if [ -e "$HDIR.new$t" ] || [ -L "$HDIR.new$t" ]; then
                        ln -sfn "$(realpath -m --relative-to="$(dirname "$l")" "$HDIR.new$t")" "$l"
                    fi ;;
            esac
        done < <(find "$HDIR.new" -type l -print0)
        # The arch Makefile includes the -common tree by absolute path.
        sed -i "s|^include /usr/src/|include $HDIR/usr/src/|" "$HDIR.new/usr/src/linux-headers-$KVER/Makefile"
        rm -rf "$HDIR"
        mv "$HDIR.new" "$HDIR"
        rm -rf "$tmp"
        trap - EXIT
    fi
    log "headers: $HDIR/usr/src/linux-headers-$KVER (make -C <that> M=\$PWD modules)"
fi

# ---------------------------------------------------------------- demo initramfs
read -r -d '' DEMO_INIT <<'INIT' || true
#!/bin/sh
# demo guest /init (generated by resources/setup.sh)
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
read -r up _ < /proc/uptime
echo "Guest ready: Linux $(uname -r), $(nproc) CPUs, uptime ${up}s"
export HOME=/root PS1='guest# '
if [ -c /dev/ttyS0 ]; then
    # new session; opening ttyS0 makes it the controlling tty -> job control works
    # (our child is not a process-group leader, so busybox setsid execs without forking
    # and this script waits for the shell)
    setsid sh -c 'exec sh -i </dev/ttyS0 >/dev/ttyS0 2>&1'
else
    setsid cttyhack sh -i
fi
poweroff -f
INIT

bb_ver="$("$BUSYBOX" 2>&1 | head -n1 || true)"
init_hash="$( { printf '%s\n' "$DEMO_INIT"; echo "$bb_ver"; echo "layout-v1"; } | sha256sum | cut -d' ' -f1)"
DEMO_IRD="$GUEST_DIR/demo-initramfs.cpio.gz"
if [ -f "$DEMO_IRD" ] && [ "$(cat "$DEMO_IRD.hash" 2>/dev/null || true)" = "$init_hash" ]; then
    log "demo initramfs up to date"
else
    log "building demo initramfs ($bb_ver)"
    root="$(mktemp -d "$VMM_ASSETS_DIR/.root.XXXXXX")"
    trap 'rm -rf "$root"' EXIT
    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,root,etc}
    cp "$BUSYBOX" "$root/bin/busybox"
    "$BUSYBOX" --list-full | while read -r applet; do
        [ -e "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
    done
    printf '%s\n' "$DEMO_INIT" > "$root/init"
    chmod 755 "$root/init"
    if [ "$(id -u)" -eq 0 ]; then
        mknod -m 600 "$root/dev/console" c 5 1
        mknod -m 666 "$root/dev/null" c 1 3
    fi
    (cd "$root" && find . -print0 | LC_ALL=C sort -z \
        | cpio --null -o -H newc --quiet --owner=0:0 | gzip -9n) > "$DEMO_IRD.tmp"
    mv "$DEMO_IRD.tmp" "$DEMO_IRD"
    echo "$init_hash" > "$DEMO_IRD.hash"
    rm -rf "$root"
    trap - EXIT
fi

# ---------------------------------------------------------------- demo root disk
"$HERE/rootfs-disk.sh" >/dev/null

# ---------------------------------------------------------------- summary
echo "$MODE" > "$VMM_ASSETS_DIR/mode"
log "done"
cat >&2 <<SUM
  cache dir : $VMM_ASSETS_DIR
  kernel    : $KVER
  vmlinuz   : $GUEST_DIR/vmlinuz
  vmlinux   : $VMLINUX (PVH)
  modules   : $GUEST_DIR/linux/lib/modules/$KVER
  initramfs : $DEMO_IRD
  mode      : $MODE (written to $VMM_ASSETS_DIR/mode; VMM_TEST_MODE=direct|nested overrides)
SUM
