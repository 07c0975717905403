#!/usr/bin/env bash
# Run the vmm inside an L1 Linux guest under QEMU TCG (-cpu max exposes SVM, L1 loads
# kvm-amd and gets a real /dev/kvm), for hosts whose own /dev/kvm cannot boot Linux.
#
# Usage:
#   nested-run.sh --vmm PATH --kernel L2_BZIMAGE --initramfs L2_INITRAMFS
#                 [--l1-mem MiB (default 3072)] [--l1-smp N (default 2)]
#                 [--file HOSTPATH:L1PATH]... [--env NAME=VALUE]... [--control SOCKET]
#                 [--vhost] [--vfio] [--l1-watchdog SECS (default 60)] [--keep]
#                 -- <remaining vmm args>
#
# Inside L1 this runs
#   /vmm --kernel /l2/vmlinuz --initramfs /l2/initramfs.cpio.gz <remaining vmm args>
# with stdin/stdout/stderr on L1's /dev/ttyS0, which is wired to this script's stdio.
# L1 prints "@@NESTED vmm-start" before and "@@NESTED vmm-exit <status>" after the vmm, and
# "@@NESTED tty restored" (or "tty changed") comparing ttyS0's settings before and after.
# --env sets a variable for the vmm. --control: QEMU listens on the unix socket SOCKET,
# wired to L1's ttyS1; L1 reads lines from it: "signal NAME" sends SIGNAME to the vmm,
# "follow L1PATH" copies the lines of that file to the console as "@@FILE <line>",
# "run COMMAND" runs the shell command in the background in L1 (stdin /dev/null, output on
# the console); "l1 COMMAND..." runs it in the foreground and prints its output lines as
# "@@L1 <line>" then "@@L1-END <status>".
# --vhost also loads tun, tap, vhost, vhost_net, vsock and vhost_vsock in L1
# (/dev/net/tun, /dev/vhost-net, /dev/vhost-vsock for --net and --vsock).
# --vfio: L0 becomes q35 with an Intel vIOMMU (intremap=on,eim=on), an NVMe on a fresh 64 MiB raw
# file and an e1000e without a network back-end; L1 boots with intel_iommu=on, loads vfio,
# vfio_iommu_type1, vfio-pci-core, vfio-pci and binds both devices to vfio-pci, then prints
# "@@NESTED vfio nvme=BDF nvme_group=N nic=BDF nic_group=M". Their BDFs replace @VFIO_NVME@
# and @VFIO_NIC@ in the vmm arguments and are set as VFIO_NVME / VFIO_NIC (and
# VFIO_NVME_GROUP / VFIO_NIC_GROUP) for the vmm; /tmp/l1-vfio-msix.log gets a line
# "t=<L1 uptime> <host vectors>" each time the set of L1's vfio-msix interrupts changes.
#
# --l1-watchdog: from just before the vmm starts, L1 writes a heartbeat byte every 2 s to
# an isa-debugcon port; when none arrives for SECS seconds L1 has stopped responding (a
# hung L1 kernel or QEMU vCPU): its CPU registers are dumped and QEMU is stopped, which
# counts as an L1 death ("L1 stopped responding ..."). 0 turns the watchdog off.
#
# Exit status: the vmm's exit status; 120 if L1 never started the vmm (boot failure, no
# /dev/kvm, ...); 121 if the vmm started but L1 died before reporting its exit status;
# 2 for usage errors. On 120/121 (unless L1's /init reported a setup error) it prints
# "[nested-run] L1 died: <reason>" and the tails of QEMU's log and the serial log.
# Needs resources/setup.sh to have run (cached L1 kernel + modules, qemu-system-x86).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LOG_TAG=nested-run
# shellcheck source=lib/common.sh
. "$HERE/lib/common.sh"

usage() { sed -n '2,42p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
bad() { printf '[nested-run] error: %s\n' "$*" >&2; exit 2; }

VMM=""; L2_KERNEL=""; L2_INITRD=""; L1_MEM=3072; L1_SMP=2; KEEP=0; CONTROL=""; VHOST=0; VFIO=0
WATCHDOG=60
FILES=(); ENVS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --vmm) [ $# -ge 2 ] || bad "--vmm needs a value"; VMM="$2"; shift 2 ;;
        --kernel) [ $# -ge 2 ] || bad "--kernel needs a value"; L2_KERNEL="$2"; shift 2 ;;
        --initramfs) [ $# -ge 2 ] || bad "--initramfs needs a value"; L2_INITRD="$2"; shift 2 ;;
        --l1-mem) [ $# -ge 2 ] || bad "--l1-mem needs a value"; L1_MEM="$2"; shift 2 ;;
        --l1-smp) [ $# -ge 2 ] || bad "--l1-smp needs a value"; L1_SMP="$2"; shift 2 ;;
        --file) [ $# -ge 2 ] || bad "--file needs a value"; FILES+=("$2"); shift 2 ;;
        --env) [ $# -ge 2 ] || bad "--env needs a value"; ENVS+=("$2"); shift 2 ;;
        --control) [ $# -ge 2 ] || bad "--control needs a value"; CONTROL="$2"; shift 2 ;;
        --l1-watchdog) [ $# -ge 2 ] || bad "--l1-watchdog needs a value"; WATCHDOG="$2"; shift 2 ;;
        --keep) KEEP=1; shift ;;
        --vhost) VHOST=1; shift ;;
        --vfio) VFIO=1; shift ;;
        --) shift; break ;;
        -h|--help) usage ;;
        *) bad "unknown argument '$1' (vmm arguments go after --)" ;;
    esac
done
VMM_ARGS=("$@")

[ -n "$VMM" ] || bad "--vmm is required"
[ -n "$L2_KERNEL" ] || bad "--kernel is required"
[ -n "$L2_INITRD" ] || bad "--initramfs is required"
[ -f "$VMM" ] && [ -x "$VMM" ] || bad "--vmm '$VMM' is not an executable file"
[ -f "$L2_KERNEL" ] || bad "--kernel '$L2_KERNEL' does not exist"
[ -f "$L2_INITRD" ] || bad "--initramfs '$L2_INITRD' does not exist"
[[ "$L1_MEM" =~ ^[0-9]+$ ]] || bad "--l1-mem must be a number of MiB"
[[ "$L1_SMP" =~ ^[0-9]+$ ]] || bad "--l1-smp must be a number"
[[ "$WATCHDOG" =~ ^[0-9]+$ ]] || bad "--l1-watchdog must be a number of seconds"
for a in "${VMM_ARGS[@]+"${VMM_ARGS[@]}"}" "${ENVS[@]+"${ENVS[@]}"}"; do
    case "$a" in *$'\n'*) bad "vmm arguments and --env values must not contain newlines" ;; esac
done
for e in "${ENVS[@]+"${ENVS[@]}"}"; do
    [[ "$e" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || bad "--env '$e' must be NAME=VALUE"
done

L1_KERNEL="$GUEST_DIR/vmlinuz"
KVER="$(cat "$GUEST_DIR/version" 2>/dev/null || true)"
[ -n "$KVER" ] && [ -f "$L1_KERNEL" ] || die "no cached L1 kernel in $GUEST_DIR: run resources/setup.sh"
QEMU="$(command -v qemu-system-x86_64 || true)"
[ -n "$QEMU" ] || die "qemu-system-x86_64 not found: run resources/setup.sh (installs it from bookworm-backports)"
BUSYBOX=/bin/busybox
[ -x "$BUSYBOX" ] || die "busybox-static not installed: run resources/setup.sh"
command -v cpio >/dev/null || die "cpio not installed: run resources/setup.sh"

# Remove work dirs left behind by runs that were killed (SIGKILL skips the EXIT trap).
for d in "${TMPDIR:-/tmp}"/nested-run.*; do
    [ -d "$d" ] && [ -f "$d/pid" ] || continue
    kill -0 "$(cat "$d/pid" 2>/dev/null || echo 0)" 2>/dev/null || rm -rf "$d"
done
WORK="$(mktemp -d "${TMPDIR:-/tmp}/nested-run.XXXXXX")"
echo $$ > "$WORK/pid"
cleanup() {
    # a kept dir loses its pid file, so later runs do not take it for a killed run's leftover
    if [ "$KEEP" -eq 1 ]; then rm -f "$WORK/pid"; log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT
ROOT="$WORK/root"
mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,l2,modules,etc}

# ---- busybox
cp "$BUSYBOX" "$ROOT/bin/busybox"
"$BUSYBOX" --list-full | while read -r applet; do
    [ -e "$ROOT/$applet" ] || ln -s /bin/busybox "$ROOT/$applet"
done

# ---- kvm modules (decompressed: busybox insmod does not do .xz)
i=0
: > "$ROOT/modules/order"
while read -r m; do
    src="$GUEST_DIR/linux/$m"
    [ -f "$src" ] || die "missing $src: run resources/setup.sh"
    name="$(basename "$m" .xz)"
    xz -dc "$src" > "$ROOT/modules/$name"
    echo "$name" >> "$ROOT/modules/order"
    i=$((i + 1))
done < <(kvm_module_paths "$KVER"; [ "$VHOST" -eq 0 ] || vhost_module_paths "$KVER")
if [ "$VFIO" -eq 1 ]; then
    # loaded by /init after the kvm modules when /modules/vfio.order exists
    : > "$ROOT/modules/vfio.order"
    while read -r m; do
        src="$GUEST_DIR/linux/$m"
        [ -f "$src" ] || die "missing $src: run resources/setup.sh"
        name="$(basename "$m" .xz)"
        xz -dc "$src" > "$ROOT/modules/$name"
        echo "$name" >> "$ROOT/modules/vfio.order"
    done < <(vfio_module_paths "$KVER")
fi

# ---- vmm + its shared libraries (incl. the dynamic loader)
cp "$VMM" "$ROOT/vmm"
chmod 755 "$ROOT/vmm"
copy_libs() {
    local bin="$1" lib
    # ldd prints "name => /path (addr)", "/lib64/ld-linux-x86-64.so.2 (addr)", or "not a dynamic executable"
    while read -r lib; do
        [ -n "$lib" ] || continue
        [ -e "$ROOT$lib" ] && continue
        mkdir -p "$ROOT$(dirname "$lib")"
        cp -L "$lib" "$ROOT$lib"
    done < <(ldd "$bin" 2>/dev/null | sed -n -e 's/^.*=> \(\/[^ ]*\) .*$/\1/p' -e 's/^[[:space:]]*\(\/[^ ]*\) (.*$/\1/p')
}
if head -c 2 "$VMM" | grep -q '^#!'; then
    # script stand-in: its interpreter has to work in L1 (busybox sh is /bin/sh there)
    :
else
    copy_libs "$VMM"
fi

# ---- L2 guest + extra files
cp "$L2_KERNEL" "$ROOT/l2/vmlinuz"
cp "$L2_INITRD" "$ROOT/l2/initramfs.cpio.gz"
for spec in "${FILES[@]+"${FILES[@]}"}"; do
    hp="${spec%%:*}"; lp="${spec#*:}"
    [ "$hp" != "$spec" ] && [ -n "$lp" ] || die "--file '$spec' must be HOSTPATH:L1PATH"
    case "$lp" in /*) ;; *) die "--file '$spec': L1PATH must be absolute" ;; esac
    [ -e "$hp" ] || die "--file '$spec': '$hp' does not exist"
    mkdir -p "$ROOT$(dirname "$lp")"
    # an L1PATH that is a busybox applet is a symlink to /bin/busybox: copying through it
    # would overwrite the host's busybox, so the link is replaced
    if [ -L "$ROOT$lp" ]; then rm -f "$ROOT$lp"; fi
    cp -rL "$hp" "$ROOT$lp"
    if [ -f "$hp" ] && [ -x "$hp" ] && ! head -c 2 "$hp" | grep -q '^#!'; then copy_libs "$hp"; fi
done

# ---- vmm argv: one per line, rebuilt by /init
printf '%s\n' /vmm --kernel /l2/vmlinuz --initramfs /l2/initramfs.cpio.gz \
    "${VMM_ARGS[@]+"${VMM_ARGS[@]}"}" > "$ROOT/vmm-args"
printf '%s\n' "${ENVS[@]+"${ENVS[@]}"}" > "$ROOT/vmm-env"
CTL_QEMU=()
if [ -n "$CONTROL" ]; then
    : > "$ROOT/control"
    CTL_QEMU=(-chardev "socket,id=ctl,path=$CONTROL,server=on,wait=off" -serial chardev:ctl)
fi

cat > "$ROOT/init" <<'INIT'
#!/bin/sh
# L1 /init (generated by resources/nested-run.sh)
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm && mount -t devpts devpts /dev/pts 2>/dev/null
mount -t tmpfs tmpfs /tmp 2>/dev/null
ln -sf /proc/self/fd /dev/fd 2>/dev/null
fail() {
    echo "@@NESTED l1-error: $*"
    poweroff -f
}
while read -r m; do
    insmod "/modules/$m" || fail "insmod $m failed"
done < /modules/order
n=0
while [ ! -c /dev/kvm ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n + 1)); done
[ -c /dev/kvm ] || fail "/dev/kvm did not appear after loading the kvm modules (no SVM in L1 CPU?)"
sampler=""
if [ -f /modules/vfio.order ]; then
    # --vfio: pass-through devices of L0 (QEMU's NVMe 1b36:0010, e1000e 8086:10d3) to vfio-pci
    while read -r m; do
        insmod "/modules/$m" || fail "insmod $m failed"
    done < /modules/vfio.order
    [ -n "$(ls /sys/class/iommu 2>/dev/null)" ] || fail "no IOMMU in L1 (intel_iommu=on on a q35 with intel-iommu expected)"
    vfio_bind() {   # $1 = vendor:device; sets BDF and GROUP
        BDF=""; GROUP=""
        for d in /sys/bus/pci/devices/*; do
            [ "$(cat "$d/vendor"):$(cat "$d/device")" = "$1" ] || continue
            BDF="${d##*/}"
            [ -e "$d/driver" ] && echo "$BDF" > "$d/driver/unbind"
            echo vfio-pci > "$d/driver_override"
            echo "$BDF" > /sys/bus/pci/drivers_probe
            [ "$(basename "$(readlink "$d/driver")")" = vfio-pci ] || fail "$1 ($BDF) did not bind to vfio-pci"
            GROUP="$(basename "$(readlink "$d/iommu_group")")"
            n=0
            while [ ! -c "/dev/vfio/$GROUP" ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n + 1)); done
            [ -c "/dev/vfio/$GROUP" ] || fail "/dev/vfio/$GROUP did not appear for $BDF"
            return 0
        done
        fail "no PCI device $1 in L1"
    }
    vfio_bind 0x1b36:0x0010; VFIO_NVME="$BDF"; VFIO_NVME_GROUP="$GROUP"
    vfio_bind 0x8086:0x10d3; VFIO_NIC="$BDF"; VFIO_NIC_GROUP="$GROUP"
    export VFIO_NVME VFIO_NVME_GROUP VFIO_NIC VFIO_NIC_GROUP
    echo "@@NESTED vfio nvme=$VFIO_NVME nvme_group=$VFIO_NVME_GROUP nic=$VFIO_NIC nic_group=$VFIO_NIC_GROUP"
    # the set of L1's host vectors of passed-through devices, one line per change
    : > /tmp/l1-vfio-msix.log
    (
        prev=none
        while :; do
            cur="$(grep -o 'vfio-msix\[[0-9]*\]([^)]*)' /proc/interrupts)"
            if [ "$cur" != "$prev" ]; then
                read -r up _ < /proc/uptime
                echo "t=$up" $cur >> /tmp/l1-vfio-msix.log
                prev="$cur"
            fi
            sleep 0.3
        done
    ) &
    sampler=$!
fi
set --
while IFS= read -r a; do
    case "$a" in
        *@VFIO_*) a="$(printf '%s\n' "$a" | sed -e "s/@VFIO_NVME@/${VFIO_NVME:-}/g" -e "s/@VFIO_NIC@/${VFIO_NIC:-}/g")" ;;
    esac
    set -- "$@" "$a"
done < /vmm-args
while IFS= read -r e; do [ -n "$e" ] && export "$e"; done < /vmm-env
# heartbeat for nested-run.sh's L1 watchdog: one byte every 2 s to the isa-debugcon port
# 0x4fe (/dev/port: no driver, no interrupt; not 0x402, where SeaBIOS logs); its pid is
# kept so a test can stop it
( while :; do printf h | dd of=/dev/port bs=1 seek=1278 count=1 2>/dev/null; sleep 2; done ) &
heartbeat=$!
echo "$heartbeat" > /tmp/heartbeat.pid
watcher=""
if [ -f /control ] && [ -c /dev/ttyS1 ]; then
    # control channel (--control): one command per line on ttyS1, kept open from here on
    # so nothing the host sends after "vmm-start" is lost to a port (re)initialisation
    exec 3</dev/ttyS1
    stty -echo <&3 2>/dev/null
    (
        while read -r cmd arg; do
            case "$cmd" in
                signal) [ -s /tmp/vmm.pid ] && kill -s "$arg" "$(cat /tmp/vmm.pid)" ;;
                follow) (tail -n +1 -F "$arg" 2>/dev/null | while IFS= read -r l; do
                            echo "@@FILE $l"; done >/dev/ttyS0) & ;;
                run) (sh -c "$arg" </dev/null >/dev/ttyS0 2>&1 &) ;;
                l1) out="$(sh -c "$arg" 2>&1)"; rc=$?
                    # a fresh line first: the vmm may have left a partial one (a prompt)
                    { echo; [ -z "$out" ] || printf '%s\n' "$out" | sed 's/^/@@L1 /'; echo "@@L1-END $rc"; } >/dev/ttyS0 ;;
            esac
        done <&3
    ) &
    watcher=$!
fi
tty_before="$(stty -g </dev/ttyS0 2>/dev/null)"
echo "@@NESTED vmm-start"
# in the foreground (a background job would start with SIGINT ignored); the pid is
# recorded for the control channel
sh -c 'echo $$ > /tmp/vmm.pid; exec "$0" "$@"' "$@" </dev/ttyS0 >/dev/ttyS0 2>&1 3<&-
rc=$?
tty_after="$(stty -g </dev/ttyS0 2>/dev/null)"
stty sane </dev/ttyS0 2>/dev/null
[ -n "$watcher" ] && kill "$watcher" 2>/dev/null
[ -n "$sampler" ] && kill "$sampler" 2>/dev/null
kill "$heartbeat" 2>/dev/null
echo
if [ "$tty_before" = "$tty_after" ]; then echo "@@NESTED tty restored"; else echo "@@NESTED tty changed"; fi
echo "@@NESTED vmm-exit $rc"
poweroff -f
INIT
chmod 755 "$ROOT/init"
if [ "$(id -u)" -eq 0 ]; then
    mknod -m 600 "$ROOT/dev/console" c 5 1
    mknod -m 666 "$ROOT/dev/null" c 1 3
fi
# uncompressed: decompressing in a TCG guest would cost more than it saves
(cd "$ROOT" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet --owner=0:0) \
    > "$WORK/l1-initramfs.cpio"

# --vfio: devices for L1 to pass through, behind an Intel vIOMMU with interrupt remapping
# (kernel-irqchip=split is what intremap needs under KVM; TCG ignores it; eim=on keeps L1
# in x2APIC mode as without --vfio); no network back-end at all
VFIO_QEMU=(); L1_APPEND=""
if [ "$VFIO" -eq 1 ]; then
    truncate -s 64M "$WORK/nvme.img"
    VFIO_QEMU=(-machine q35,kernel-irqchip=split -device intel-iommu,intremap=on,eim=on
        -drive "file=$WORK/nvme.img,if=none,id=vfionvme,format=raw"
        -device nvme,serial=vfio-nvme,drive=vfionvme -device e1000e -nic none)
    L1_APPEND=" intel_iommu=on"
fi
SERIAL_LOG="$WORK/serial.log"
# QEMU's own record of how L1 ended: guest errors and CPU resets (a "Triple fault" line
# and a register dump; TCG dumps only on a reset or INIT, so the file stays small: ~8 KB).
QEMU_LOG="$WORK/qemu.log"
QEMU_DEBUG=(-d guest_errors,cpu_reset -D "$QEMU_LOG")
# L1's heartbeat (see --l1-watchdog) and a human monitor to dump L1's registers on a hang
HB_LOG="$WORK/heartbeat"
MON="$WORK/monitor.sock"
: > "$HB_LOG"
HB_QEMU=(-chardev "file,id=hb,path=$HB_LOG" -device "isa-debugcon,iobase=0x4fe,chardev=hb"
    -monitor "unix:$MON,server=on,wait=off" -pidfile "$WORK/qemu.pid")

# Runs beside QEMU: once the heartbeat has started, a pause of $WATCHDOG seconds means L1
# stopped responding; then the registers of L1's CPUs go to $WORK/l1-registers, the
# reason to $WORK/hang, and QEMU is stopped.
l1_watchdog() {
    local size last=-1 since now
    since="$(date +%s)"
    while sleep 1; do
        [ -s "$WORK/qemu.pid" ] && kill -0 "$(cat "$WORK/qemu.pid")" 2>/dev/null || continue
        size="$(stat -c %s "$HB_LOG")"; now="$(date +%s)"
        if [ "$size" != "$last" ]; then last="$size"; since="$now"; continue; fi
        [ "$size" -gt 0 ] && [ $((now - since)) -ge "$WATCHDOG" ] || continue
        echo "L1 stopped responding (no heartbeat for $WATCHDOG s)" > "$WORK/hang"
        if command -v python3 >/dev/null; then
            python3 - "$MON" > "$WORK/l1-registers" 2>&1 <<'PY' || true
import socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.settimeout(5)
s.connect(sys.argv[1])
s.sendall(b"info registers -a\n")
out, end = b"", time.time() + 5
while time.time() < end:
    try:
        chunk = s.recv(65536)
    except socket.timeout:
        break
    if not chunk:
        break
    out += chunk
sys.stdout.write(out.decode(errors="replace").replace("\r", ""))
PY
        fi
        kill -TERM "$(cat "$WORK/qemu.pid")" 2>/dev/null
        return
    done
}
watchdog=""
if [ "$WATCHDOG" -gt 0 ]; then
    l1_watchdog &
    watchdog=$!
fi
log "booting L1 ($KVER, TCG, ${L1_SMP} vCPUs, ${L1_MEM} MiB, initramfs $(du -m "$WORK/l1-initramfs.cpio" | cut -f1) MiB)"
set +e
"$QEMU" \
    -accel tcg -cpu max -smp "$L1_SMP" -m "$L1_MEM" \
    -kernel "$L1_KERNEL" -initrd "$WORK/l1-initramfs.cpio" \
    -append "console=ttyS0 quiet loglevel=3 panic=-1 panic_print=0x20 rdinit=/init$L1_APPEND" \
    -chardev "stdio,id=c0,signal=off,logfile=$SERIAL_LOG" -serial chardev:c0 \
    "${CTL_QEMU[@]+"${CTL_QEMU[@]}"}" "${VFIO_QEMU[@]+"${VFIO_QEMU[@]}"}" \
    "${HB_QEMU[@]}" -display none -nodefaults -no-reboot "${QEMU_DEBUG[@]}"
qrc=$?
set -e
if [ -n "$watchdog" ]; then kill "$watchdog" 2>/dev/null || true; wait "$watchdog" 2>/dev/null || true; fi

# Why L1 ended without reporting the vmm's status: prints "L1 died: <reason>" (the line
# the test harness quotes when it retries) and the tails of the evidence, and keeps both
# logs in a directory that survives the run.
l1_death_evidence() {
    local qrc="$1" reason keep
    reason="$(tr -d '\r' < "$SERIAL_LOG" | grep -o 'Kernel panic - not syncing:.*' | tail -n1 || true)"
    if [ -s "$WORK/hang" ]; then
        reason="$(cat "$WORK/hang")"
    elif [ -n "$reason" ]; then
        reason="L1 $reason"
    elif grep -q 'Triple fault' "$QEMU_LOG" 2>/dev/null; then
        reason="L1 triple fault"
    else
        # a reboot request or an ACPI poweroff that L1's /init did not make
        reason="no L1 panic or triple fault recorded, L1 reset or powered off"
    fi
    keep="$(mktemp -d "${TMPDIR:-/tmp}/nested-l1-death.XXXXXX")"
    cp "$SERIAL_LOG" "$keep/serial.log" 2>/dev/null || true
    cp "$QEMU_LOG" "$keep/qemu.log" 2>/dev/null || true
    if [ -s "$WORK/l1-registers" ]; then
        cp "$WORK/l1-registers" "$keep/l1-registers"
        log "L1 CPUs when it stopped responding:"
        grep -E '^(CPU#|RIP=|EIP=)' "$WORK/l1-registers" | sed 's/^/[nested-run]   /' >&2 || true
    fi
    log "L1 serial log tail:"
    tr -d '\r' < "$SERIAL_LOG" | tail -n 8 | sed 's/^/[nested-run]   serial: /' >&2 || true
    # the events of QEMU's log (resets, triple fault, guest errors) without register dumps
    log "QEMU log events ($(wc -c < "$QEMU_LOG" 2>/dev/null || echo 0) bytes in all):"
    grep -v -E '^([A-Z][A-Z0-9]* *=|(ES|CS|SS|DS|FS|GS|LDT|TR|GDT|IDT) )' "$QEMU_LOG" 2>/dev/null \
        | tail -n 8 | sed 's/^/[nested-run]   qemu: /' >&2 || true
    log "evidence kept in $keep"
    log "L1 died: $reason (qemu exit $qrc)"
}

status="$(tr -d '\r' < "$SERIAL_LOG" | sed -n 's/^.*@@NESTED vmm-exit \([0-9][0-9]*\)$/\1/p' | tail -n1)"
if [ -n "$status" ]; then
    exit "$status"
fi
l1err="$(tr -d '\r' < "$SERIAL_LOG" | sed -n 's/^.*@@NESTED l1-error: //p' | tail -n1)"
if grep -q '@@NESTED vmm-start' "$SERIAL_LOG"; then
    l1_death_evidence "$qrc"
    log "error: the vmm started in L1 but L1 stopped before reporting its exit status (qemu exit $qrc)"
    exit 121
fi
if [ -n "$l1err" ]; then
    log "error: L1 setup failed: $l1err"
else
    l1_death_evidence "$qrc"
    log "error: L1 never started the vmm (qemu exit $qrc; L1 kernel panic or boot failure?)"
fi
exit 120
