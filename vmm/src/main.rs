//! `vmm`: boot a Linux guest on KVM from the command line.
//!
//! Exit status: 0 guest powered off, 1 VMM error, 2 usage error, 3 guest rebooted,
//! 128+N terminated by signal N (SIGINT, SIGTERM).

use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::Parser;

use vmm::config::{Cli, VmConfig};
use vmm::vm::{ExitReason, Vm};

/// Exit status when the guest rebooted.
const EXIT_REBOOT: u8 = 3;

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
    let vm = match Vm::create(config) {
        Ok(vm) => vm,
        Err(e) => return fail(1, e),
    };
    match vm.run() {
        Ok(ExitReason::PowerOff) => ExitCode::SUCCESS,
        Ok(ExitReason::Reboot) => ExitCode::from(EXIT_REBOOT),
        Ok(ExitReason::Signal(s)) => ExitCode::from(128u8.saturating_add(s as u8)),
        Ok(ExitReason::Error(msg)) => fail(1, msg),
        Err(e) => fail(1, e),
    }
}
