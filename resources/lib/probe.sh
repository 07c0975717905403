#!/usr/bin/env bash
# Decide how boot tests run a real Linux guest:
#   direct  - /dev/kvm is usable and backed by hardware virtualization (vmx/svm), not PVM
#   nested  - anything else: run the vmm inside an L1 Linux under QEMU TCG (resources/nested-run.sh)
# VMM_TEST_MODE=direct|nested overrides the probe.
# Executable (prints the mode) or sourceable (defines vmm_probe_mode).

vmm_probe_mode() {
    case "${VMM_TEST_MODE:-}" in
        direct|nested) echo "$VMM_TEST_MODE"; return 0 ;;
        "") ;;
        *) echo "probe: ignoring invalid VMM_TEST_MODE='$VMM_TEST_MODE' (want direct|nested)" >&2 ;;
    esac
    if [ ! -c /dev/kvm ] || [ ! -r /dev/kvm ] || [ ! -w /dev/kvm ]; then
        echo nested; return 0
    fi
    if ! grep -qwE 'vmx|svm' /proc/cpuinfo 2>/dev/null; then
        echo nested; return 0
    fi
    # PVM (kvm_pvm) cannot boot a stock kernel even if the flags were visible.
    if [ -d /sys/module/kvm_pvm ] || grep -qw '^kvm_pvm' /proc/modules 2>/dev/null; then
        echo nested; return 0
    fi
    echo direct
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    vmm_probe_mode
fi
