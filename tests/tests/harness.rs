//! Self-tests of the boot-test harness with a shell stand-in for the vmm:
//! argument passing, output capture, typed input and exit status, directly and
//! (when the probe says so; skipped otherwise) through the nested QEMU harness.

use std::path::PathBuf;
use std::time::Duration;

use std::cell::Cell;
use std::panic;

use tests::{
    assets, boot_lock, l1_deaths, probe_mode, with_l1_retry, GuestSession, Mode, SessionConfig,
    NESTED_START,
};

const STANDIN: &str = r#"#!/bin/sh
echo "standin: argc=$#"
for a in "$@"; do echo "standin: arg=[$a]"; done
if [ -c /dev/kvm ]; then echo "standin: kvm=yes"; else echo "standin: kvm=no"; fi
echo "standin: to stderr" >&2
printf 'standin prompt> '
read -r line
echo "standin: got [$line]"
exit 7
"#;

/// A stand-in that crashes L1 (sysrq `c` panics the kernel; L1 boots with `panic=-1` under
/// QEMU `-no-reboot`, so QEMU exits 0 and nested-run.sh 121).
const CRASH_L1: &str = r#"#!/bin/sh
echo "standin: crashing L1"
echo c > /proc/sysrq-trigger
sleep 60
"#;

fn standin() -> PathBuf {
    write_standin("vmm-standin.sh", STANDIN)
}

fn write_standin(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vmm-standin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

fn standin_config(mode: Mode, vmm: PathBuf, kernel: PathBuf, initramfs: PathBuf) -> SessionConfig {
    SessionConfig {
        mode,
        vmm,
        kernel,
        initramfs,
        args: vec![
            "--cmdline".into(),
            "console=ttyS0 quiet".into(),
            "--memory".into(),
            "size=512M".into(),
        ],
        nested_args: vec![],
    }
}

fn run_standin(mode: Mode, kernel: PathBuf, initramfs: PathBuf, timeout: Duration) {
    let cfg = standin_config(mode, standin(), kernel, initramfs);
    let mut s = GuestSession::start_with(&cfg).unwrap();
    s.wait_for("standin: argc=8", timeout).unwrap();
    s.wait_for("standin: arg=[console=ttyS0 quiet]", timeout)
        .unwrap();
    s.wait_for("standin: arg=[size=512M]", timeout).unwrap();
    let kvm = s.wait_for("standin: kvm=", timeout).unwrap();
    if mode == Mode::Nested {
        assert!(kvm.contains("kvm=yes"), "no /dev/kvm in L1: {kvm}");
        assert!(s.vmm_start_instant().is_some(), "{NESTED_START} not seen");
    }
    s.wait_for_prompt("standin prompt> ", timeout).unwrap();
    s.send_line("typed text with  spaces");
    s.wait_for("standin: got [typed text with  spaces]", timeout)
        .unwrap();
    assert_eq!(s.wait_exit(timeout).unwrap(), 7);
    // errors carry the output tail
    let err = s
        .wait_for("never printed", Duration::from_millis(10))
        .unwrap_err();
    assert!(err.contains("standin: got"), "{err}");
}

fn harness_direct_standin() {
    let dir = std::env::temp_dir();
    run_standin(
        Mode::Direct,
        dir.join("k"),
        dir.join("i"),
        Duration::from_secs(10),
    );
}

/// A failure without an L1 death is not retried.
fn l1_retry_only_after_an_l1_death() {
    let runs = Cell::new(0);
    let r = panic::catch_unwind(panic::AssertUnwindSafe(|| {
        with_l1_retry(|| {
            runs.set(runs.get() + 1);
            panic!("an ordinary test failure");
        })
    }));
    assert!(r.is_err(), "the failure must propagate");
    assert_eq!(runs.get(), 1, "an ordinary failure was retried");
    assert!(l1_deaths().is_empty());
}

/// The nested harness end to end: a stand-in vmm gets its arguments, output, typed input
/// and exit status through L1; and a first attempt whose stand-in crashes L1 reports the
/// death (exit 121, the kernel's panic line as the reason) and is retried once.
fn harness_nested_standin() {
    if probe_mode() != Mode::Nested {
        tests::skip("the probe says direct: this host does not use the nested harness");
    }
    let _g = boot_lock();
    let a = assets();
    let timeout = Duration::from_secs(120);
    let attempts = Cell::new(0);
    // a failed check in the first attempt would be retried away: remember that they passed
    let first_checked = Cell::new(false);
    with_l1_retry(|| {
        attempts.set(attempts.get() + 1);
        if attempts.get() == 1 {
            let crash = write_standin("crash-l1.sh", CRASH_L1);
            let cfg = standin_config(Mode::Nested, crash, a.bzimage.clone(), a.initramfs.clone());
            let s = GuestSession::start_with(&cfg).unwrap();
            s.wait_for("standin: crashing L1", timeout).unwrap();
            // as in a real test: a wait fails because the output ended, the session is
            // dropped (which waits for nested-run.sh and records the death)
            let err = s.wait_for("never printed", timeout).unwrap_err();
            assert!(err.contains("closed its output"), "{err}");
            assert!(
                err.contains("L1 died: "),
                "the reason is in the tail: {err}"
            );
            drop(s);
            let deaths = l1_deaths();
            assert_eq!(deaths.len(), 1, "{deaths:?}");
            let death = &deaths[0];
            assert_eq!(death.status, 121, "{death:?}");
            assert!(
                death
                    .reason
                    .contains("Kernel panic - not syncing: sysrq triggered crash"),
                "the panic line is the reason: {death:?}"
            );
            first_checked.set(true);
            panic!("L1 crashed on purpose");
        }
        run_standin(
            Mode::Nested,
            a.bzimage.clone(),
            a.initramfs.clone(),
            timeout,
        );
    });
    assert!(first_checked.get(), "the checks of the L1 death failed");
    assert_eq!(
        attempts.get(),
        2,
        "the L1 death was not retried exactly once"
    );
}

tests::test_main!(
    harness_direct_standin,
    l1_retry_only_after_an_l1_death,
    harness_nested_standin,
);
