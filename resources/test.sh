#!/usr/bin/env bash
# Set up (idempotent, cached) and run the whole test suite:
#   formatting and lints, unit tests (no KVM), KVM integration tests on /dev/kvm with tiny
#   project-written guests, and Linux boot tests (directly on KVM with VMX/SVM, otherwise in
#   the nested QEMU TCG harness), plus the guest kernel module tests.
# Usage: resources/test.sh [extra cargo test args, e.g. a test name filter]
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

if [ -f "$HERE/guest-module/build.sh" ]; then
    step "guest test module and test initramfs"
    bash "$HERE/guest-module/build.sh"
    bash "$HERE/test-initramfs.sh"
fi

step "cargo test (unit, KVM integration, Linux boot)"
cargo test --workspace "$@"

step "done in $(( $(date +%s) - start )) s"
