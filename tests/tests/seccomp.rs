//! The seccomp sandbox with a real Linux guest (direct, or nested in a QEMU TCG L1).
//!
//! The vmm is started through a small shell wrapper that sets the test-only
//! `VMM_TEST_FORBIDDEN_SYSCALL=vcpu|main`: that thread calls getppid(2), which no filter
//! allows, right after confining itself. With `--seccomp on` (the default) the VMM must end
//! with status 1 and one line naming the thread and syscall; with `--seccomp log` the call
//! goes through and the guest keeps running. Ordinary boots with the default filters are
//! covered by every other boot test (boot.rs, dsa_*.rs, guest_module.rs, remap_guest.rs).

use std::path::PathBuf;

use tests::{boot_lock, boot_timeout, cmd_timeout, standard_guest_args, vmm_bin};
use tests::{GuestSession, Mode, SessionConfig};

/// getppid on x86-64.
const SYS_GETPPID: u32 = 110;

/// A session config whose vmm is a wrapper exporting `VMM_TEST_FORBIDDEN_SYSCALL=which`.
fn config_with_trigger(which: &str, args: &[&str]) -> (SessionConfig, PathBuf) {
    let mut all = standard_guest_args();
    all.extend(args.iter().map(|s| s.to_string()));
    let mut cfg = SessionConfig::from_env(&all);
    let dir = std::env::temp_dir().join(format!("vmm-seccomp-{which}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let wrapper = dir.join("vmm-wrapper.sh");
    // Nested: the real binary travels to L1 as /vmm-real (busybox sh runs the wrapper).
    let real = match cfg.mode {
        Mode::Direct => vmm_bin().to_str().unwrap().to_string(),
        Mode::Nested => {
            cfg.nested_args.extend([
                "--file".to_string(),
                format!("{}:/vmm-real", vmm_bin().display()),
            ]);
            "/vmm-real".to_string()
        }
    };
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\nVMM_TEST_FORBIDDEN_SYSCALL={which} exec {real} \"$@\"\n"),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    cfg.vmm = wrapper;
    (cfg, dir)
}

/// Runs the vmm with a forbidden syscall in `which` under `--seccomp on` and checks the
/// status and the report line.
fn violation_ends_vmm(which: &str, thread: &str) {
    let _g = boot_lock();
    let (cfg, dir) = config_with_trigger(which, &[]);
    let mut s = GuestSession::start_with(&cfg).unwrap_or_else(|e| panic!("{e}"));
    let expected = format!("error: seccomp: thread {thread} made forbidden syscall {SYS_GETPPID} ");
    let code = s
        .wait_exit(boot_timeout(s.mode()))
        .unwrap_or_else(|e| panic!("{e}"));
    let _ = std::fs::remove_dir_all(&dir);
    let lines = s.lines();
    let errors: Vec<_> = lines
        .iter()
        .filter(|l| l.text.contains("error: "))
        .map(|l| l.text.trim().to_string())
        .collect();
    assert_eq!(code, 1, "vmm exit status; output:\n{}", s.tail());
    assert_eq!(errors.len(), 1, "one error line expected:\n{}", s.tail());
    assert!(
        errors[0].starts_with(&expected),
        "expected `{expected}...`, got `{}`",
        errors[0]
    );
    assert!(
        !lines.iter().any(|l| l.text.contains("Guest ready:")),
        "the guest ran although the VMM should have ended first:\n{}",
        s.tail()
    );
}

#[test]
fn forbidden_syscall_on_vcpu_ends_vmm_with_one_line() {
    tests::with_l1_retry(forbidden_syscall_on_vcpu_ends_vmm_with_one_line_once)
}

fn forbidden_syscall_on_vcpu_ends_vmm_with_one_line_once() {
    violation_ends_vmm("vcpu", "vcpu0");
}

#[test]
fn forbidden_syscall_on_main_thread_ends_vmm_with_one_line() {
    tests::with_l1_retry(forbidden_syscall_on_main_thread_ends_vmm_with_one_line_once)
}

fn forbidden_syscall_on_main_thread_ends_vmm_with_one_line_once() {
    violation_ends_vmm("main", "main");
}

#[test]
fn log_mode_lets_the_guest_run() {
    tests::with_l1_retry(log_mode_lets_the_guest_run_once)
}

fn log_mode_lets_the_guest_run_once() {
    let _g = boot_lock();
    let (cfg, dir) = config_with_trigger("vcpu", &["--seccomp", "log"]);
    let mut s = GuestSession::start_with(&cfg).unwrap_or_else(|e| panic!("{e}"));
    let t = boot_timeout(s.mode());
    s.wait_for_line("Guest ready:", t)
        .unwrap_or_else(|e| panic!("{e}"));
    s.wait_for_prompt("guest# ", cmd_timeout(s.mode()))
        .unwrap_or_else(|e| panic!("{e}"));
    s.send_line("echo alive-$((6*7))");
    s.wait_for("alive-42", cmd_timeout(s.mode()))
        .unwrap_or_else(|e| panic!("{e}"));
    s.send_line("poweroff -f");
    let code = s
        .wait_exit(cmd_timeout(s.mode()))
        .unwrap_or_else(|e| panic!("{e}"));
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(code, 0, "vmm exit status after poweroff:\n{}", s.tail());
    assert!(
        !s.lines().iter().any(|l| l.text.contains("error: seccomp")),
        "log mode reported a violation as an error:\n{}",
        s.tail()
    );
}

/// Guards the constant against a typo: the filter tests use the libc value.
#[test]
fn getppid_number() {
    assert_eq!(i64::from(SYS_GETPPID), libc::SYS_getppid);
}
