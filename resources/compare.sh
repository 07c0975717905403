#!/usr/bin/env bash
# Boot the same L2 kernel and initramfs (busybox /init that prints its uptime and powers off
# at once) with this project's vmm and with Debian's QEMU, side by side in one L1 (nested
# QEMU TCG harness) or directly on a host with VMX/SVM, interleaved, N rounds; print the
# medians of wall time (VMM start to exit), L2 uptime at /init and the VMM's peak RSS, and
# the ratios of the vmm against each peer. 2 vCPUs, 512 MiB, same command line for all.
#
# Usage: resources/compare.sh [--rounds N (default 3)] [--vmm PATH] [--peers LIST]
#                             [--append STRING] [--dmesg] [--logs DIR]
#   --peers   comma-separated subset of: vmm-vmlinux,vmm-bzimage,microvm-vmlinux,
#             microvm-bzimage,q35-bzimage (default: all)
#   --append  extra kernel command line for every peer (e.g. "initcall_debug")
#   --dmesg   the guest /init prints dmesg before powering off (for --logs; slows the run)
#   --logs    keep each run's console output in DIR/<peer>.<round>.log
# Needs resources/setup.sh (kernel, vmlinux, harness) and a release vmm
# (`cargo build --release -p vmm`; the default --vmm is target/release/vmm).
# A peer that cannot run (QEMU missing, KVM refuses) is reported as SKIPPED on its own line,
# never left out silently. Exit status: 0 when every vmm run powered off cleanly, 1 otherwise,
# 2 for usage errors.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
LOG_TAG=compare
# shellcheck source=lib/common.sh
. "$HERE/lib/common.sh"
# shellcheck source=lib/probe.sh
. "$HERE/lib/probe.sh"

ALL_PEERS="vmm-vmlinux,vmm-bzimage,microvm-vmlinux,microvm-bzimage,q35-bzimage"
ROUNDS=3
VMM="${CARGO_TARGET_DIR:-$ROOT/target}/release/vmm"
PEERS="$ALL_PEERS"
APPEND=""
DMESG=0
LOGS=""
usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
bad() { printf '[compare] error: %s\n' "$*" >&2; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) [ $# -ge 2 ] || bad "--rounds needs a value"; ROUNDS="$2"; shift 2 ;;
        --vmm) [ $# -ge 2 ] || bad "--vmm needs a value"; VMM="$2"; shift 2 ;;
        --peers) [ $# -ge 2 ] || bad "--peers needs a value"; PEERS="$2"; shift 2 ;;
        --append) [ $# -ge 2 ] || bad "--append needs a value"; APPEND="$2"; shift 2 ;;
        --dmesg) DMESG=1; shift ;;
        --logs) [ $# -ge 2 ] || bad "--logs needs a value"; LOGS="$2"; shift 2 ;;
        -h|--help) usage ;;
        *) bad "unknown argument '$1'" ;;
    esac
done
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || bad "--rounds must be a positive number"
for p in ${PEERS//,/ }; do
    case ",$ALL_PEERS," in *",$p,"*) ;; *) bad "unknown peer '$p' (known: $ALL_PEERS)" ;; esac
done
case "$APPEND" in *[\'\"\\$\`]*|*$'\n'*) bad "--append must not contain quotes, \\, \$, \` or newlines" ;; esac
[ -x "$VMM" ] || die "no vmm binary at $VMM: run 'cargo build --release -p vmm'"
BZIMAGE="$GUEST_DIR/vmlinuz"
VMLINUX="$GUEST_DIR/vmlinux"
[ -f "$BZIMAGE" ] && [ -f "$VMLINUX" ] || die "guest kernel or vmlinux missing in $GUEST_DIR: run resources/setup.sh"
command -v cpio >/dev/null || die "cpio not installed: run resources/setup.sh"
GNU_TIME=/usr/bin/time
"$GNU_TIME" -f %M true 2>/dev/null >&2 || die "GNU time ($GNU_TIME) not installed: run resources/setup.sh"

# ---------------------------------------------------------------- the L2 initramfs (cached)
read -r -d '' L2_INIT <<'INIT' || true
#!/bin/sh
# compare.sh guest /init: report the uptime, power off at once
/bin/busybox mount -t proc proc /proc
read -r up _ < /proc/uptime
echo "@@UPTIME $up"
case " $(/bin/busybox cat /proc/cmdline) " in *" compare.dmesg "*) /bin/busybox dmesg ;; esac
/bin/busybox poweroff -f
INIT
BUSYBOX=/bin/busybox
[ -x "$BUSYBOX" ] || die "busybox-static not installed: run resources/setup.sh"
IRD="$GUEST_DIR/poweroff-initramfs.cpio.gz"
ird_hash="$( { printf '%s\n' "$L2_INIT"; sha256sum < "$BUSYBOX"; echo v1; } | sha256sum | cut -d' ' -f1)"
if [ ! -f "$IRD" ] || [ "$(cat "$IRD.hash" 2>/dev/null || true)" != "$ird_hash" ]; then
    log "building $IRD"
    r="$(mktemp -d "$VMM_ASSETS_DIR/.poweroff.XXXXXX")"
    mkdir -p "$r"/{bin,proc,dev}
    cp "$BUSYBOX" "$r/bin/busybox"
    ln -s busybox "$r/bin/sh"
    printf '%s\n' "$L2_INIT" > "$r/init"
    chmod 755 "$r/init"
    (cd "$r" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet --owner=0:0 \
        | gzip -9n) > "$IRD.tmp"
    rm -rf "$r"
    mv "$IRD.tmp" "$IRD"
    echo "$ird_hash" > "$IRD.hash"
fi

# ---------------------------------------------------------------- the runner (POSIX sh)
# Runs in L1 (busybox) or on the host. Args: --kernel BZIMAGE --initramfs INITRAMFS. Env:
# ROUNDS, PEERS, CMDLINE, VMM_BIN, QEMU_BIN, GNU_TIME, VMLINUX, SHOW_CONSOLE. Prints one
# "@@RESULT" line per run.
WORK="$(mktemp -d "${TMPDIR:-/tmp}/compare.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
cat > "$WORK/runner.sh" <<'RUNNER'
#!/bin/sh
# compare.sh runner (generated): interleaved boots, one @@RESULT line per run
while [ $# -gt 0 ]; do
    case "$1" in
        --kernel) BZ="$2"; shift 2 ;;
        --initramfs) IRD="$2"; shift 2 ;;
        *) shift ;;
    esac
done
: "${VMLINUX:=/l2/vmlinux}"
T=/tmp/compare-run
mkdir -p "$T"
QEMU_OK=1
if ! "$QEMU_BIN" --version >/dev/null 2>&1; then
    QEMU_OK=0
    echo "@@SKIP qemu: $QEMU_BIN does not run here"
fi
QEMU_COMMON="-accel kvm -cpu host -smp 2 -m 512M -nodefaults -no-user-config -display none -serial stdio -monitor none -no-reboot"
r=1
while [ "$r" -le "$ROUNDS" ]; do
    for p in $(echo "$PEERS" | tr ',' ' '); do
        case "$p" in
            vmm-vmlinux) set -- "$VMM_BIN" --kernel "$VMLINUX" ;;
            vmm-bzimage) set -- "$VMM_BIN" --kernel "$BZ" ;;
            microvm-vmlinux) set -- "$QEMU_BIN" -M microvm $QEMU_COMMON -kernel "$VMLINUX" ;;
            microvm-bzimage) set -- "$QEMU_BIN" -M microvm $QEMU_COMMON -kernel "$BZ" ;;
            q35-bzimage) set -- "$QEMU_BIN" -M q35 $QEMU_COMMON -kernel "$BZ" ;;
        esac
        case "$p" in
            vmm-*) set -- "$@" --initramfs "$IRD" --cmdline "$CMDLINE" --cpus boot=2 --memory size=512M ;;
            *) [ "$QEMU_OK" = 1 ] || continue
               set -- "$@" -initrd "$IRD" -append "$CMDLINE" ;;
        esac
        # GNU time: wall seconds and peak RSS (ru_maxrss) of the VMM process (busybox's
        # time reports ru_maxrss as if it were pages, 4x too high)
        rm -f "$T/time"
        "$GNU_TIME" -o "$T/time" -f "wall=%e rss_kb=%M" timeout 300 "$@" </dev/null >"$T/console" 2>&1
        st=$?
        up="$(sed -n 's/^.*@@UPTIME \([0-9.]*\).*$/\1/p' "$T/console" | head -n1)"
        wall="$(sed -n 's/^.*wall=\([0-9.]*\).*$/\1/p' "$T/time" | head -n1)"
        rss="$(sed -n 's/^.*rss_kb=\([0-9]*\).*$/\1/p' "$T/time" | head -n1)"
        echo "@@RESULT peer=$p round=$r status=$st wall=${wall:-?} uptime=${up:-?} rss_kb=${rss:-?}"
        if [ "$SHOW_CONSOLE" = 1 ] || [ -z "$up" ]; then
            tr -d '\r' < "$T/console" | sed "s/^/@@CONSOLE $p $r: /"
        fi
    done
    r=$((r + 1))
done
RUNNER
chmod 755 "$WORK/runner.sh"

CMDLINE="console=ttyS0 quiet${APPEND:+ $APPEND}"
[ "$DMESG" -eq 1 ] && CMDLINE="$CMDLINE compare.dmesg"
SHOW_CONSOLE=0
[ -n "$LOGS" ] && SHOW_CONSOLE=1
MODE="$(vmm_probe_mode)"
QEMU_HOST="$(command -v qemu-system-x86_64 || true)"
log "mode $MODE, $ROUNDS round(s), peers $PEERS, cmdline '$CMDLINE'"
OUT="$WORK/out"
set +e
if [ "$MODE" = direct ]; then
    ROUNDS="$ROUNDS" PEERS="$PEERS" CMDLINE="$CMDLINE" VMM_BIN="$VMM" \
        QEMU_BIN="${QEMU_HOST:-qemu-system-x86_64}" SHOW_CONSOLE="$SHOW_CONSOLE" VMLINUX="$VMLINUX" \
        GNU_TIME="$GNU_TIME" sh "$WORK/runner.sh" --kernel "$BZIMAGE" --initramfs "$IRD" > "$OUT"
    rc=$?
else
    [ -n "$QEMU_HOST" ] || die "qemu-system-x86_64 not found: run resources/setup.sh"
    # QEMU's binary (its libraries follow through ldd) and data files go into L1.
    bash "$HERE/nested-run.sh" --vmm "$WORK/runner.sh" \
        --kernel "$BZIMAGE" --initramfs "$IRD" \
        --file "$VMM:/bin/vmm" --file "$VMLINUX:/l2/vmlinux" \
        --file "$QEMU_HOST:/usr/bin/qemu-system-x86_64" --file "$GNU_TIME:/usr/local/bin/gnu-time" \
        --file /usr/share/qemu:/usr/share/qemu --file /usr/share/seabios:/usr/share/seabios \
        --env GNU_TIME=/usr/local/bin/gnu-time \
        --env "ROUNDS=$ROUNDS" --env "PEERS=$PEERS" --env "CMDLINE=$CMDLINE" \
        --env VMM_BIN=/bin/vmm --env QEMU_BIN=/usr/bin/qemu-system-x86_64 \
        --env "SHOW_CONSOLE=$SHOW_CONSOLE" --env VMLINUX=/l2/vmlinux --env "RUST_LOG=${RUST_LOG:-warn}" < /dev/null > "$OUT"
    rc=$?
fi
set -e
tr -d '\r' < "$OUT" > "$OUT.clean"
if [ -n "$LOGS" ]; then
    mkdir -p "$LOGS"
    for p in ${PEERS//,/ }; do
        for r in $(seq 1 "$ROUNDS"); do
            sed -n "s/^@@CONSOLE $p $r: //p" "$OUT.clean" > "$LOGS/$p.$r.log"
        done
    done
    log "console logs in $LOGS"
fi
if ! grep -q '^@@RESULT ' "$OUT.clean"; then
    tail -n 30 "$OUT.clean" >&2
    die "no result (runner status $rc)"
fi

# ---------------------------------------------------------------- medians and ratios
label() {
    case "$1" in
        vmm-vmlinux) echo "vmm (vmlinux, PVH)" ;;
        vmm-bzimage) echo "vmm (bzImage)" ;;
        microvm-vmlinux) echo "QEMU microvm (vmlinux, PVH)" ;;
        microvm-bzimage) echo "QEMU microvm (bzImage)" ;;
        q35-bzimage) echo "QEMU q35 + SeaBIOS (bzImage)" ;;
    esac
}
qemu_ver="$( { "$QEMU_HOST" --version 2>/dev/null || true; } | head -n1 | sed 's/^QEMU emulator version //')"
where="one nested L1 (QEMU TCG, 2 vCPUs)"
[ "$MODE" = direct ] && where="this host"
echo
echo "L2 boot to poweroff: $(cat "$GUEST_DIR/version"), busybox /init that powers off at once,"
echo "2 vCPUs, 512 MiB, in $where, interleaved, median of $ROUNDS round(s); QEMU ${qemu_ver:-?}"
printf '%-30s %10s %16s %12s %s\n' "VMM" "wall" "uptime at init" "peak RSS" "runs ok"
failed=0
declare -A WALL UP RSS
for p in ${PEERS//,/ }; do
    lines="$(grep "^@@RESULT peer=$p " "$OUT.clean" || true)"
    if [ -z "$lines" ]; then
        why="$(sed -n 's/^@@SKIP //p' "$OUT.clean" | head -n1)"
        printf '%-30s SKIPPED: %s\n' "$(label "$p")" "${why:-did not run}"
        continue
    fi
    ok="$(awk '/ status=0 / && / uptime=[0-9]/' <<<"$lines" | wc -l)"
    n="$(wc -l <<<"$lines")"
    if [ "$ok" -lt "$n" ] && [[ "$p" == vmm-* ]]; then failed=1; fi
    stats="$(awk '/ status=0 / && / uptime=[0-9]/ {
            for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
            print v["wall"], v["uptime"], v["rss_kb"]
        }' <<<"$lines")"
    if [ -z "$stats" ]; then
        printf '%-30s FAILED: %s\n' "$(label "$p")" "$(head -n1 <<<"$lines" | sed 's/^@@RESULT //')"
        continue
    fi
    median() { sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
    WALL[$p]="$(awk '{ print $1 }' <<<"$stats" | median)"
    UP[$p]="$(awk '{ print $2 }' <<<"$stats" | median)"
    RSS[$p]="$(awk '{ print $3 }' <<<"$stats" | median)"
    printf '%-30s %8.2f s %14.2f s %9.1f MB %s/%s\n' "$(label "$p")" "${WALL[$p]}" "${UP[$p]}" \
        "$(awk -v k="${RSS[$p]}" 'BEGIN { print k / 1024 }')" "$ok" "$n"
done
grep '^@@SKIP ' "$OUT.clean" | sed 's/^@@SKIP /SKIPPED: /' || true

echo
echo "ratios (vmm / peer; below 1.00 = the vmm is faster or smaller):"
printf '%-22s %-30s %8s %8s %8s\n' "vmm" "peer" "wall" "uptime" "RSS"
for ours in vmm-vmlinux vmm-bzimage; do
    [ -n "${WALL[$ours]:-}" ] || continue
    for p in ${PEERS//,/ }; do
        [[ "$p" == vmm-* ]] && continue
        if [ -z "${WALL[$p]:-}" ]; then
            printf '%-22s %-30s SKIPPED (peer did not run)\n' "$(label "$ours" | sed 's/^vmm //')" "$(label "$p")"
            continue
        fi
        printf '%-22s %-30s %7.2fx %7.2fx %7.2fx\n' "$(label "$ours" | sed 's/^vmm //')" "$(label "$p")" \
            "$(awk -v a="${WALL[$ours]}" -v b="${WALL[$p]}" 'BEGIN { print a / b }')" \
            "$(awk -v a="${UP[$ours]}" -v b="${UP[$p]}" 'BEGIN { print a / b }')" \
            "$(awk -v a="${RSS[$ours]}" -v b="${RSS[$p]}" 'BEGIN { print a / b }')"
    done
done
if [ "$rc" -ne 0 ]; then
    log "error: the run ended with status $rc"
    exit 1
fi
exit "$failed"
