#!/usr/bin/env bash
# Set up (idempotent, cached) and run the whole test suite:
#   formatting and lints, unit tests (no KVM), KVM integration tests on /dev/kvm with tiny
#   project-written guests, and Linux boot tests (directly on KVM with VMX/SVM, otherwise in
#   the nested QEMU TCG harness), the guest kernel module tests, a quick run of the interrupt
#   benchmark (prints figures) and a short fuzzing pass over every fuzz target.
# Usage: resources/test.sh [extra cargo test args, e.g. a test name filter]
# Env: FUZZ_SECONDS (per target, default 20; 0 skips fuzzing), SKIP_BENCH=1.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
cd "$ROOT"
step() { printf '\n==> %s\n' "$*" >&2; }
start=$(date +%s)

step "setup (guest kernel, headers, harness)"
bash "$HERE/setup.sh" --headers

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "build vmm (release)"
cargo build --release -p vmm

step "guest test modules and initramfs images"
bash "$HERE/guest-module/build.sh"
bash "$HERE/test-initramfs.sh"
bash "$HERE/dsa-module/build.sh"
bash "$HERE/dsa-module/initramfs.sh"
if [ -f "$HERE/dsa-initramfs.sh" ]; then
    bash "$HERE/dsa-initramfs.sh"
fi

if [ "${SKIP_BENCH:-0}" != 1 ]; then
    step "interrupt benchmark (quick)"
    cargo bench -p tests --bench interrupts -- --quick
fi

if [ "${FUZZ_SECONDS:-20}" -gt 0 ]; then
    step "fuzzing every target for ${FUZZ_SECONDS:-20} s"
    bash "$HERE/fuzz.sh" "${FUZZ_SECONDS:-20}"
fi

step "cargo test (unit, KVM integration, Linux boot)"
cargo test --workspace "$@"

step "done in $(( $(date +%s) - start )) s"
