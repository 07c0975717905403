//! Boot tests against the real vmm and the demo guest (resources/setup.sh).
//! Direct on hosts with VMX/SVM, nested (QEMU TCG L1) otherwise; see tests/src/lib.rs.
//! Guest boots are serialized with `boot_lock()`.

use std::process::Command;
use std::time::Duration;

use tests::{assets, boot_lock, boot_timeout, secs_between, standard_guest_args, try_assets};
use tests::{vmm_bin, with_l1_retry, GuestSession, Mode, SessionConfig};

const READY: &str = "Guest ready:";
const PROMPT: &str = "guest# ";
/// Exit status the vmm documents for a guest-initiated reboot.
const REBOOT_STATUS: i32 = 3;

fn cmd_timeout(s: &GuestSession) -> Duration {
    match s.mode() {
        Mode::Nested => Duration::from_secs(60),
        Mode::Direct => Duration::from_secs(20),
    }
}

/// Boots with the standard args and waits for the shell prompt.
fn boot() -> GuestSession {
    let s = GuestSession::start(&standard_guest_args());
    let t = boot_timeout(s.mode());
    let ready = s.wait_for_line(READY, t).unwrap_or_else(|e| panic!("{e}"));
    let start = s
        .vmm_start_instant()
        .expect("@@NESTED vmm-start precedes guest output");
    eprintln!(
        "L2 time to init: {:.2} s ({})",
        secs_between(start, ready.at),
        ready.text.trim()
    );
    s.wait_for_prompt(PROMPT, cmd_timeout(&s))
        .unwrap_or_else(|e| panic!("{e}"));
    s
}

/// The bzImage through its 64-bit entry point (after the kernel's own decompressor).
#[test]
fn boots_to_init() {
    with_l1_retry(|| boots_to_init_with(assets().bzimage, "bzImage"));
}

/// The ELF vmlinux through its PVH entry point (the kernel the other tests boot).
#[test]
fn boots_to_init_pvh() {
    let vmlinux = assets()
        .vmlinux
        .expect("no vmlinux in the guest assets: run resources/setup.sh (it extracts it)");
    with_l1_retry(|| boots_to_init_with(vmlinux.clone(), "vmlinux, PVH"));
}

fn boots_to_init_with(kernel: std::path::PathBuf, what: &str) {
    let _g = boot_lock();
    let mut cfg = SessionConfig::from_env(&standard_guest_args());
    cfg.kernel = kernel;
    let s = GuestSession::start_with(&cfg).unwrap_or_else(|e| panic!("{e}"));
    let ready = s
        .wait_for_line(READY, boot_timeout(s.mode()))
        .unwrap_or_else(|e| panic!("{e}"));
    let start = s.vmm_start_instant().expect("vmm start seen");
    assert!(
        ready.text.contains("2 CPUs"),
        "expected 2 CPUs: {}",
        ready.text
    );
    println!(
        "L2 time to init ({what}): {:.2} s",
        secs_between(start, ready.at)
    );
}

#[test]
fn two_cpus_online() {
    with_l1_retry(two_cpus_online_once);
}

fn two_cpus_online_once() {
    let _g = boot_lock();
    let mut s = boot();
    s.send_line("cat /sys/devices/system/cpu/online");
    // the echoed command line has no "0-"; the answer is a line of its own
    let l = s
        .wait_for("0-", cmd_timeout(&s))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(l.trim(), "0-1", "cpu online mask; output:\n{}", s.tail());
}

#[test]
fn serial_input_reaches_guest() {
    with_l1_retry(serial_input_reaches_guest_once);
}

fn serial_input_reaches_guest_once() {
    let _g = boot_lock();
    let mut s = boot();
    s.send_line("echo hello-$((6*7))");
    s.wait_for("hello-42", cmd_timeout(&s))
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn poweroff_exits_zero() {
    with_l1_retry(poweroff_exits_zero_once);
}

fn poweroff_exits_zero_once() {
    let _g = boot_lock();
    let mut s = boot();
    s.send_line("poweroff -f");
    let code = s
        .wait_exit(cmd_timeout(&s))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(code, 0, "vmm exit status after poweroff:\n{}", s.tail());
}

#[test]
fn reboot_exits_with_reboot_status() {
    with_l1_retry(reboot_exits_with_reboot_status_once);
}

fn reboot_exits_with_reboot_status_once() {
    let _g = boot_lock();
    let mut s = boot();
    s.send_line("reboot -f");
    let code = s
        .wait_exit(cmd_timeout(&s))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        code,
        REBOOT_STATUS,
        "vmm exit status after reboot:\n{}",
        s.tail()
    );
}

/// Runs the vmm on the host (no guest needed) and checks a clean CLI error.
fn expect_cli_error(args: &[&str]) {
    let vmm = vmm_bin();
    let out = Command::new(&vmm)
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("RUST_BACKTRACE")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run vmm");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_ne!(out.status.code(), Some(0), "vmm {args:?} succeeded");
    assert!(
        out.status.code().is_some(),
        "vmm {args:?} died by a signal: {}",
        out.status
    );
    assert!(
        lines.len() == 1 && lines[0].starts_with("error:"),
        "vmm {args:?}: expected exactly one stderr line starting with `error:`, got:\n{stderr}"
    );
}

#[test]
fn bad_cli_arguments() {
    let dir = std::env::temp_dir().join(format!("vmm-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let not_bzimage = dir.join("not-a-bzimage");
    std::fs::write(&not_bzimage, vec![0x5au8; 64 * 1024]).unwrap();
    let initrd = dir.join("initrd");
    std::fs::write(&initrd, b"070701").unwrap();
    // a real kernel if setup.sh ran, else any file: the memory size must be rejected first
    let kernel = try_assets()
        .map(|a| a.bzimage)
        .unwrap_or_else(|_| not_bzimage.clone());
    let k = kernel.to_str().unwrap();
    let i = initrd.to_str().unwrap();
    let nb = not_bzimage.to_str().unwrap();

    expect_cli_error(&["--kernel", k, "--initramfs", i, "--memory", "size=1K"]);
    expect_cli_error(&[
        "--kernel",
        nb,
        "--initramfs",
        i,
        "--cmdline",
        "console=ttyS0",
        "--memory",
        "size=512M",
    ]);
    let _ = std::fs::remove_dir_all(&dir);
}
