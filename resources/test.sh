#!/usr/bin/env bash
# Set up (idempotent, cached) and run the whole test suite:
#   formatting and lints, unit tests (no KVM), KVM integration tests on /dev/kvm with tiny
#   project-written guests, and Linux boot tests (directly on KVM with VMX/SVM, otherwise in
#   the nested QEMU TCG harness), the guest kernel module tests, a quick run of the interrupt
#   benchmark and one round of the in-guest latency comparison with QEMU (print figures), a
#   short fuzzing pass over every fuzz target and one round of the boot comparison against
#   QEMU (resources/compare.sh, prints its table).
# Usage: resources/test.sh [extra cargo test args, e.g. a test name filter]
# Env: FUZZ_SECONDS (per target, default 20; 0 skips fuzzing), SKIP_BENCH=1,
#      VMM_SKIP_KVM_TESTS=1 (KVM tier reported as ignored).
# Ends with a summary of every skipped test (ignored, with its reason), a skipped benchmark
# and nested-harness retries after an L1 death; on a host with /dev/kvm there must be none.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
cd "$ROOT"
step() { printf '\n==> %s\n' "$*" >&2; }
start=$(date +%s)
mkdir -p "$ROOT/target"
BENCH_LOG="$ROOT/target/test-sh-bench.log"
TEST_LOG="$ROOT/target/test-sh-cargo-test.log"
COMPARE_LOG="$ROOT/target/test-sh-compare.log"
: > "$BENCH_LOG"

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
bash "$HERE/vfio-initramfs.sh"
bash "$HERE/dsa-module/build.sh"
bash "$HERE/dsa-module/initramfs.sh"
if [ -f "$HERE/dsa-initramfs.sh" ]; then
    bash "$HERE/dsa-initramfs.sh"
fi

if [ "${SKIP_BENCH:-0}" != 1 ]; then
    step "interrupt benchmark (quick)"
    cargo bench -p tests --bench interrupts -- --quick 2>&1 | tee "$BENCH_LOG"
    step "in-guest interrupt latency against QEMU (one round)"
    cargo bench -p tests --bench irq_latency 2>&1 | tee -a "$BENCH_LOG"
fi

if [ "${FUZZ_SECONDS:-20}" -gt 0 ]; then
    step "fuzzing every target for ${FUZZ_SECONDS:-20} s"
    bash "$HERE/fuzz.sh" "${FUZZ_SECONDS:-20}"
fi

step "cargo test (unit, KVM integration, Linux boot)"
set +e
cargo test --workspace "$@" 2>&1 | tee "$TEST_LOG"
rc=$?
set -e

step "boot comparison against QEMU (resources/compare.sh, one round)"
set +e
bash "$HERE/compare.sh" --rounds 1 2>&1 | tee "$COMPARE_LOG"
compare_rc=${PIPESTATUS[0]}
set -e
[ "$compare_rc" -eq 0 ] || echo "compare.sh failed (status $compare_rc)" >&2

step "skipped tests and retries"
skipped="$(grep -E '^test .* \.\.\. ignored' "$TEST_LOG" || true)"
bench_skip="$(grep -E '^SKIPPED:' "$BENCH_LOG" || true)"
compare_skip="$(grep -E 'SKIPPED|FAILED' "$COMPARE_LOG" || true)"
[ "$compare_rc" -eq 0 ] || compare_skip="${compare_skip:+$compare_skip
}compare.sh did not finish (status $compare_rc)"
retries="$(grep -h -E 'nested harness: (L1 died|L2 triple fault) .*retrying' "$TEST_LOG" "$BENCH_LOG" || true)"
if [ -z "$skipped$bench_skip$compare_skip" ]; then
    echo "no test skipped" >&2
else
    echo "SKIPPED ($(printf '%s\n' "$skipped" | grep -c . ) test(s)):" >&2
    [ -z "$skipped" ] || printf '%s\n' "$skipped" | sed 's/^/    /' >&2
    [ -z "$bench_skip" ] || echo "    benchmark: $bench_skip" >&2
    [ -z "$compare_skip" ] || printf '%s\n' "$compare_skip" | sed 's/^/    compare: /' >&2
fi
if [ -n "$retries" ]; then
    # harness_nested_standin crashes L1 (sysrq) and stops its heartbeat (watchdog 8 s) on
    # purpose to prove the retries work
    echo "nested-harness retries after an L1 death or an L2 triple fault:" >&2
    printf '%s\n' "$retries" | sed -e 's/^/    /' \
        -e '/sysrq triggered crash/s/$/   [expected: the harness self-test crashes L1 on purpose]/' \
        -e '/no heartbeat for 8 s/s/$/   [expected: the harness self-test stops the heartbeat on purpose]/' >&2
fi

step "done in $(( $(date +%s) - start )) s (cargo test status $rc)"
exit "$rc"
