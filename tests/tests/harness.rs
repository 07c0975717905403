//! Self-tests of the boot-test harness with a shell stand-in for the vmm:
//! argument passing, output capture, typed input and exit status, directly and
//! (when the probe says so; skipped otherwise) through the nested QEMU harness.

use std::path::PathBuf;
use std::time::Duration;

use std::cell::Cell;
use std::panic;

use tests::{
    assets, boot_lock, l1_deaths, probe_mode, with_l1_retry, GuestSession, L1Death, Mode,
    SessionConfig, NESTED_START,
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

/// A stand-in that makes L1 look hung to nested-run.sh's watchdog: it stops L1's
/// heartbeat (the effect of a hung L1 kernel or QEMU vCPU, which cannot be caused on
/// purpose) and waits.
const HANG_L1: &str = r#"#!/bin/sh
echo "standin: stopping the L1 heartbeat"
kill -STOP "$(cat /tmp/heartbeat.pid)"
sleep 600
"#;

/// A stand-in that never answers what is typed (its process is `sleep`).
const SILENT: &str = r#"#!/bin/sh
echo "standin: not listening"
exec sleep 600
"#;

/// The watchdog of the hang attempt (test.sh marks a retry with this figure as expected).
const HANG_WATCHDOG_SECS: &str = "8";

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
/// and exit status through L1; a first attempt whose stand-in crashes L1 reports the death
/// (exit 121, the kernel's panic line as the reason) and is retried; a second attempt whose
/// L1 stops its heartbeat is stopped by the watchdog (exit 121, "L1 stopped responding",
/// L1's registers dumped) and is retried too; the third attempt passes.
fn harness_nested_standin() {
    if probe_mode() != Mode::Nested {
        tests::skip("the probe says direct: this host does not use the nested harness");
    }
    let _g = boot_lock();
    let a = assets();
    let timeout = Duration::from_secs(120);
    let attempts = Cell::new(0);
    // a failed check in an early attempt would be retried away: remember that they passed
    let checked = Cell::new(0);
    let died =
        |standin: &str, text: &str, printed: &str, nested_args: &[&str]| -> (L1Death, String) {
            let script = write_standin(standin, text);
            let mut cfg =
                standin_config(Mode::Nested, script, a.bzimage.clone(), a.initramfs.clone());
            cfg.nested_args = nested_args.iter().map(|s| s.to_string()).collect();
            let s = GuestSession::start_with(&cfg).unwrap();
            s.wait_for(printed, timeout).unwrap();
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
            assert_eq!(deaths[0].status, 121, "{:?}", deaths[0]);
            (deaths[0].clone(), err)
        };
    with_l1_retry(|| {
        attempts.set(attempts.get() + 1);
        match attempts.get() {
            1 => {
                let (death, _) = died("crash-l1.sh", CRASH_L1, "standin: crashing L1", &[]);
                assert!(
                    death
                        .reason
                        .contains("Kernel panic - not syncing: sysrq triggered crash"),
                    "the panic line is the reason: {death:?}"
                );
                checked.set(1);
                panic!("L1 crashed on purpose");
            }
            2 => {
                let (death, err) = died(
                    "hang-l1.sh",
                    HANG_L1,
                    "standin: stopping the L1 heartbeat",
                    &["--l1-watchdog", HANG_WATCHDOG_SECS],
                );
                let expected =
                    format!("L1 stopped responding (no heartbeat for {HANG_WATCHDOG_SECS} s)");
                assert!(death.reason.starts_with(&expected), "{death:?}");
                assert!(
                    err.contains("L1 CPUs when it stopped responding:") && err.contains("RIP="),
                    "L1's registers are dumped: {err}"
                );
                checked.set(2);
                panic!("L1 heartbeat stopped on purpose");
            }
            _ => run_standin(
                Mode::Nested,
                a.bzimage.clone(),
                a.initramfs.clone(),
                timeout,
            ),
        }
    });
    assert_eq!(checked.get(), 2, "the checks of the L1 deaths failed");
    assert_eq!(
        attempts.get(),
        3,
        "the two L1 deaths were not retried exactly twice"
    );
}

/// A typed command that times out while L1 still answers ends its failure with what the
/// vmm's threads are doing, as L1 sees them.
fn nested_timeout_shows_vmm_threads() {
    if probe_mode() != Mode::Nested {
        tests::skip("the probe says direct: this host does not use the nested harness");
    }
    let _g = boot_lock();
    let a = assets();
    with_l1_retry(|| {
        let script = write_standin("silent.sh", SILENT);
        let cfg = standin_config(Mode::Nested, script, a.bzimage.clone(), a.initramfs.clone());
        let mut s = GuestSession::start_with(&cfg).unwrap();
        s.wait_for("standin: not listening", Duration::from_secs(120))
            .unwrap();
        let r = panic::catch_unwind(panic::AssertUnwindSafe(|| {
            s.run_marked("true", "@@never-answered", Duration::from_secs(5))
        }));
        let msg = r
            .err()
            .and_then(|p| p.downcast_ref::<String>().cloned())
            .expect("the command timed out with a message");
        assert!(msg.contains("timed out"), "{msg}");
        assert!(msg.contains("the vmm's threads in L1:"), "{msg}");
        assert!(msg.contains("sleep state=S wchan="), "{msg}");
    });
}

tests::test_main!(
    harness_direct_standin,
    l1_retry_only_after_an_l1_death,
    harness_nested_standin,
    nested_timeout_shows_vmm_threads,
);
