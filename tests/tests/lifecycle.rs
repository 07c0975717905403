//! The vmm's lifecycle against a real Linux guest (direct or nested, see tests/src/lib.rs):
//! signals with a DSA worker thread present, exit statuses, the console escape, serial
//! modes, `--print-interrupts` and the panic policy. Boots are serialized with
//! `boot_lock()`; each test is one boot, short where the guest need not come up.
//!
//! In nested mode the vmm runs in L1: signals go through nested-run.sh's control channel,
//! and L1 reports whether ttyS0's settings after the vmm equal those before it
//! (`@@NESTED tty restored`), which is how "terminal restored" is checked here.

use tests::{
    boot_lock, boot_timeout, cmd_timeout, standard_guest_args, GuestSession, Mode, SessionConfig,
    FILE_LINE, PROMPT, READY,
};

/// First line of the interrupt-hierarchy dump (SIGUSR1, `--print-interrupts`).
const DUMP_HEADER: &str = "interrupt hierarchy";
/// A line only the SIGUSR1 dump has.
const USR1_ONLY: &str = "serial output: ";
/// The DSA's IMS domain in the dump.
const DSA_IMS: &str = "ims [IMS]";
/// L1's verdict on ttyS0 after the vmm.
const TTY_RESTORED: &str = "@@NESTED tty restored";

fn args(extra: &[&str]) -> Vec<String> {
    let mut a = standard_guest_args();
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn start(args: &[String], env: &[(&str, &str)]) -> GuestSession {
    let cfg = SessionConfig::from_env(args);
    GuestSession::start_controlled(&cfg, env).unwrap_or_else(|e| panic!("{e}"))
}

fn boot_to_prompt(s: &GuestSession) {
    s.wait_for(READY, boot_timeout(s.mode()))
        .unwrap_or_else(|e| panic!("{e}"));
    s.wait_for_prompt(PROMPT, cmd_timeout(s.mode()))
        .unwrap_or_else(|e| panic!("{e}"));
}

fn expect(s: &GuestSession, needle: &str) -> String {
    s.wait_for(needle, cmd_timeout(s.mode()))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn expect_exit(s: &mut GuestSession, want: i32, what: &str) {
    let code = s
        .wait_exit(cmd_timeout(s.mode()))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(code, want, "{what}: exit status; output:\n{}", s.tail());
}

/// Nested mode: the vmm left ttyS0 as it found it (direct mode: stdin is a pipe here).
fn expect_tty_restored(s: &GuestSession) {
    if s.mode() == Mode::Nested {
        assert!(
            s.lines().iter().any(|l| l.text.contains(TTY_RESTORED)),
            "terminal settings not restored; output:\n{}",
            s.tail()
        );
    }
}

/// `error:` lines in the whole output (the vmm's stderr shares L1's console in nested mode).
fn error_lines(s: &GuestSession) -> Vec<String> {
    s.lines()
        .into_iter()
        .map(|l| l.text)
        .filter(|t| t.trim_start().starts_with("error:"))
        .collect()
}

/// Issue 8 item 1: with a DSA (whose worker thread exists before the main loop) SIGUSR1
/// prints the hierarchy and the guest keeps running; Ctrl-C typed on the console reaches
/// the guest; SIGINT ends the vmm with 130, the `--print-interrupts` dump and the terminal
/// restored.
fn dsa_sigusr1_dump_ctrl_c_to_guest_then_sigint_130() {
    tests::with_l1_retry(dsa_sigusr1_dump_ctrl_c_to_guest_then_sigint_130_once)
}

fn dsa_sigusr1_dump_ctrl_c_to_guest_then_sigint_130_once() {
    let _g = boot_lock();
    let mut s = start(&args(&["--device", "dsa", "--print-interrupts"]), &[]);
    boot_to_prompt(&s);

    s.signal("USR1");
    expect(&s, DUMP_HEADER);
    expect(&s, DSA_IMS);
    expect(&s, USR1_ONLY);
    s.send_line("echo alive-$((6*7))");
    expect(&s, "alive-42");

    // Ctrl-C interrupts the guest's foreground command instead of ending the vmm.
    // The marker comes from the foreground job itself, which then becomes the sleep: a ^C
    // sent once it is seen cannot reach the shell between its echo and the sleep's fork.
    s.send_line("sh -c 'echo sleeping-$((3*3)); exec sleep 1000'");
    expect(&s, "sleeping-9");
    s.send_bytes(b"\x03");
    // The guest's tty discards input queued behind the ^C when it signals: type the next
    // line only once the shell is back at its prompt.
    s.wait_for_prompt(PROMPT, cmd_timeout(s.mode()))
        .unwrap_or_else(|e| panic!("no prompt after Ctrl-C: {e}"));
    s.send_line("echo after-$((1+1))");
    expect(&s, "after-2");

    s.signal("INT");
    // The exit dump (--print-interrupts) shows the vmm ended through its own exit path.
    expect(&s, DUMP_HEADER);
    expect_exit(&mut s, 130, "SIGINT");
    expect_tty_restored(&s);
    assert!(error_lines(&s).is_empty(), "{:?}", error_lines(&s));
}

/// Issue 8 item 12: `--serial file=PATH` puts guest output in the file (and not on
/// stdout); SIGTERM ends the vmm with 143 after the `--print-interrupts` dump.
fn serial_file_gets_guest_output_then_sigterm_143() {
    tests::with_l1_retry(serial_file_gets_guest_output_then_sigterm_143_once)
}

fn serial_file_gets_guest_output_then_sigterm_143_once() {
    let _g = boot_lock();
    let mode = tests::probe_mode();
    let host_dir = std::env::temp_dir().join(format!("vmm-serial-file-{}", std::process::id()));
    let path = match mode {
        Mode::Nested => "/tmp/serial.log".to_string(),
        Mode::Direct => {
            std::fs::create_dir_all(&host_dir).unwrap();
            host_dir.join("serial.log").to_string_lossy().into_owned()
        }
    };
    let mut s = start(
        &args(&["--serial", &format!("file={path}"), "--print-interrupts"]),
        &[],
    );
    s.follow_file(&path);
    let ready = s
        .wait_for(&format!("{FILE_LINE}{READY}"), boot_timeout(s.mode()))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(ready.contains("2 CPUs"), "{ready}");
    let direct: Vec<String> = s
        .lines()
        .into_iter()
        .map(|l| l.text)
        .filter(|t| t.contains(READY) && !t.contains(FILE_LINE))
        .collect();
    assert!(direct.is_empty(), "guest output also on stdout: {direct:?}");

    s.signal("TERM");
    expect(&s, DUMP_HEADER);
    expect_exit(&mut s, 143, "SIGTERM");
    assert!(error_lines(&s).is_empty(), "{:?}", error_lines(&s));
    let _ = std::fs::remove_dir_all(&host_dir);
}

/// Issue 8 item 12: `--serial off` has no console (the kernel's boot messages go nowhere)
/// and the guest still runs: its /init powers off at once, status 0.
fn serial_off_runs_guest_silently() {
    tests::with_l1_retry(serial_off_runs_guest_silently_once)
}

fn serial_off_runs_guest_silently_once() {
    let _g = boot_lock();
    let mut s = start(
        &[
            "--cmdline".to_string(),
            "console=ttyS0 rdinit=/sbin/poweroff -- -f".to_string(),
            "--memory".to_string(),
            "size=512M".to_string(),
            "--serial".to_string(),
            "off".to_string(),
        ],
        &[],
    );
    let code = s
        .wait_exit(boot_timeout(s.mode()))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(code, 0, "poweroff with --serial off; output:\n{}", s.tail());
    let guest: Vec<String> = s
        .lines()
        .into_iter()
        .map(|l| l.text)
        .filter(|t| t.contains("Linux version") || t.contains("Command line:"))
        .collect();
    assert!(guest.is_empty(), "guest console output seen: {guest:?}");
}

/// Issue 8 item 6: Ctrl-A x on the console terminal ends the vmm with 130 and restores the
/// terminal (the escape is active when stdin is a terminal, as in nested mode's L1 ttyS0).
fn escape_ctrl_a_x_ends_vmm_130() {
    tests::with_l1_retry(escape_ctrl_a_x_ends_vmm_130_once)
}

fn escape_ctrl_a_x_ends_vmm_130_once() {
    let _g = boot_lock();
    let mut s = start(&standard_guest_args(), &[]);
    if s.mode() == Mode::Direct {
        // stdin is a pipe here: no terminal, so no escape sequence.
        tests::skip("the console is not a terminal in direct mode (stdin is a pipe)");
    }
    boot_to_prompt(&s);
    // Ctrl-A Ctrl-A is a literal Ctrl-A for the guest: the vmm keeps running.
    s.send_bytes(b"\x01\x01");
    s.send_line("");
    s.send_line("echo still-$((2+3))");
    expect(&s, "still-5");
    s.send_bytes(b"\x01x");
    expect_exit(&mut s, 130, "Ctrl-A x");
    expect_tty_restored(&s);
    assert!(error_lines(&s).is_empty(), "{:?}", error_lines(&s));
}

/// Issue 8 item 3: a panic ends the vmm with exactly one `error:` line naming the thread,
/// status 1 and the terminal restored.
fn panic_is_one_error_line(site: &str, thread: &str) {
    let _g = boot_lock();
    let mut s = start(&standard_guest_args(), &[("VMM_TEST_PANIC", site)]);
    let code = s
        .wait_exit(boot_timeout(s.mode()))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(code, 1, "panic in {thread}; output:\n{}", s.tail());
    let errors = error_lines(&s);
    assert_eq!(errors.len(), 1, "one error line; output:\n{}", s.tail());
    assert!(
        errors[0].contains(&format!("error: {thread} panicked: VMM_TEST_PANIC={site}")),
        "{errors:?}"
    );
    assert!(errors[0].contains(" at vmm/src/"), "{errors:?}");
    expect_tty_restored(&s);
}

fn vcpu_panic_ends_vmm_with_one_error_line() {
    tests::with_l1_retry(vcpu_panic_ends_vmm_with_one_error_line_once)
}

fn vcpu_panic_ends_vmm_with_one_error_line_once() {
    panic_is_one_error_line("vcpu", "vcpu0");
}

fn main_thread_panic_ends_vmm_with_one_error_line() {
    tests::with_l1_retry(main_thread_panic_ends_vmm_with_one_error_line_once)
}

fn main_thread_panic_ends_vmm_with_one_error_line_once() {
    panic_is_one_error_line("main", "main");
}

tests::test_main!(
    dsa_sigusr1_dump_ctrl_c_to_guest_then_sigint_130,
    serial_file_gets_guest_output_then_sigterm_143,
    serial_off_runs_guest_silently,
    escape_ctrl_a_x_ends_vmm_130,
    vcpu_panic_ends_vmm_with_one_error_line,
    main_thread_panic_ends_vmm_with_one_error_line,
);
