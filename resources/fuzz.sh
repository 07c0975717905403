#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ (libFuzzer) for a while and reports executions.
#
#   resources/fuzz.sh [seconds-per-target] [target...]     (default 60 s, every target)
#
# Targets (fuzz/fuzz_targets/, shared code in fuzz/src/): pci_msix, ioapic, vtd, dsa (device
# models); dsa_pci (the DSA behind the PCI root: CF8/CFC, ECAM, BAR relocation, the MMIO
# window); vtd_ioapic_dsa (VT-d remapping the IOAPIC and the DSA with IMS); irqtest_ims (the
# irqtest device's IMS table and registers); vmm_config (the command line), bzimage (the
# Linux loader), movdir64b (the decoder, against iced-x86),
# vhost_config (virtio-net and virtio-vsock configuration spaces, MAC and CID parsing);
# virtio_pci (the virtio transport with virtio-blk), virtio_blk_queue (virtqueue processing
# of block requests over fuzzed rings and guest memory); vfio_config (a pass-through
# function on a device-less host: config space and BARs).
#
# Installs cargo-fuzz with `cargo install` when it is missing (it stays in ~/.cargo/bin for
# later runs). The machine has only a stable toolchain; cargo fuzz needs nightly flags
# (-Zsanitizer), so it runs with RUSTC_BOOTSTRAP=1. Corpora grow in fuzz/corpus/<target>,
# crashes land in fuzz/artifacts/<target>/ and logs in fuzz/artifacts/logs/ (all ignored
# by git). Exits non-zero when any target crashed (panic, failed invariant, sanitizer
# report, timeout or out-of-memory), printing the failing input and how to reproduce it.
set -euo pipefail

secs="${1:-60}"
if ! [[ "$secs" =~ ^[0-9]+$ ]] || [ "$secs" -lt 1 ]; then
    echo "usage: $0 [seconds-per-target] [target...]" >&2
    exit 2
fi
shift || true
CARGO_FUZZ_VERSION="0.13.2"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fuzz_dir="$root/fuzz"
log_dir="$fuzz_dir/artifacts/logs"
export RUSTC_BOOTSTRAP=1
export PATH="$HOME/.cargo/bin:$PATH"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi
echo "== $(cargo fuzz --version)"

cd "$fuzz_dir"
mkdir -p "$log_dir"
echo "== building fuzz targets (release, AddressSanitizer)"
cargo fuzz build

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi
if [ "${#targets[@]}" -eq 0 ]; then
    echo "no fuzz targets found in $fuzz_dir" >&2
    exit 1
fi

failed=()
summary=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    log="$log_dir/$t.log"
    echo "== fuzzing $t for ${secs}s (log: $log)"
    set +e
    cargo fuzz run "$t" -- \
        -max_total_time="$secs" -timeout=30 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1
    rc=$?
    set -e
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n1)
    cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+' "$log" | tail -n1 || true)
    if [ "$rc" -ne 0 ]; then
        failed+=("$t")
        summary+=("$(printf '%-16s CRASH  execs=%s %s' "$t" "${execs:-?}" "${cov:-}")")
        echo "!! $t failed (exit $rc):"
        grep -E -A3 "panicked at|ERROR: (libFuzzer|AddressSanitizer)|SUMMARY:" "$log" | head -n 30 || true
        grep -E "Test unit written to|Base64:" "$log" || true
        artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n1)
        if [ -n "$artifact" ]; then
            echo "   reproduce: (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run $t ${artifact#"$fuzz_dir"/})"
            echo "   minimize:  (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz tmin $t ${artifact#"$fuzz_dir"/})"
            echo "   as ops:    (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz fmt $t ${artifact#"$fuzz_dir"/})"
        fi
    else
        summary+=("$(printf '%-16s ok     execs=%s (%s/s) %s' "$t" "${execs:-?}" "${rate:-?}" "${cov:-}")")
    fi
done

echo "== fuzz summary (${secs}s per target)"
printf '   %s\n' "${summary[@]}"
if [ "${#failed[@]}" -ne 0 ]; then
    echo "== FAILED: ${failed[*]}"
    exit 1
fi
echo "== no crashes"
