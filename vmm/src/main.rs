//! `vmm`: boot a Linux guest on KVM from the command line.
//!
//! Exit status: 0 guest powered off, 1 VMM error (also a panic in any thread), 2 usage
//! error, 3 guest rebooted, 128+N ended by signal N (SIGHUP 129, SIGINT 130, SIGTERM 143),
//! 130 console escape Ctrl-A x.

use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::Parser;

use vmm::config::{Cli, VmConfig};
use vmm::lifecycle;
use vmm::vm::{ExitReason, Vm};

/// Exit status when the guest rebooted.
const EXIT_REBOOT: u8 = 3;
/// Exit status after the console escape Ctrl-A x (as for Ctrl-C: ended by the user).
const EXIT_QUIT: u8 = 130;

fn fail(code: u8, msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::from(code)
}

/// Raises the open-file soft limit to the hard limit: every interrupt vector owns an
/// eventfd, and a large MSI-X table would otherwise exhaust the default 1024.
fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit only read and write the struct we own.
    unsafe {
        let mut l: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

fn main() -> ExitCode {
    // First, while this is the only thread: every thread created later inherits the mask,
    // so the handled signals only ever arrive through the main loop's signalfd.
    if let Err(e) = lifecycle::block_handled_signals() {
        return fail(1, format_args!("cannot block signals: {e}"));
    }
    lifecycle::install_panic_hook();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp_millis()
        .init();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        // One line: clap's first paragraph (with the names of missing arguments).
        Err(e) => return fail(2, vmm::config::clap_error_line(&e)),
    };
    let config = match VmConfig::from_cli(cli) {
        Ok(c) => c,
        Err(e) => return fail(2, e),
    };
    raise_fd_limit();
    let started = std::time::Instant::now();
    let vm = match Vm::create(config) {
        Ok(vm) => vm,
        Err(e) => return fail(1, e),
    };
    log::debug!("VM created in {:?}", started.elapsed());
    let reason = vm.run();
    log::debug!("VM ended after {:?}: {reason:?}", started.elapsed());
    match reason {
        Ok(ExitReason::PowerOff) => ExitCode::SUCCESS,
        Ok(ExitReason::Reboot) => ExitCode::from(EXIT_REBOOT),
        Ok(ExitReason::Signal(s)) => ExitCode::from(128u8.saturating_add(s as u8)),
        Ok(ExitReason::Quit) => ExitCode::from(EXIT_QUIT),
        Ok(ExitReason::Error(msg)) => fail(1, msg),
        Err(e) => fail(1, e),
    }
}
