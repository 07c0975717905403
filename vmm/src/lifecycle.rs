//! Process lifecycle: the signals the VMM handles, the panic policy and test hooks.
//!
//! Signals: [`block_handled_signals`] runs first thing in `main`, before any thread exists,
//! so every thread (vCPUs, device workers, the serial writer) inherits a mask that blocks
//! them and the kernel can only deliver them through the main loop's [`SignalFd`].
//!
//! Panics: [`install_panic_hook`] makes a panic in any thread end the process with one
//! `error:` line and status 1, after restoring the terminal.

use std::io::Write;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use crate::terminal;

/// Signals the main loop handles: SIGINT, SIGTERM and SIGHUP end the VM (status 128+N),
/// SIGUSR1 prints the interrupt hierarchy. SIGQUIT keeps its default action (core dump),
/// the way to stop a wedged VMM for debugging.
pub const HANDLED_SIGNALS: [i32; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGUSR1];

/// Exit status of a panic anywhere in the VMM.
pub const EXIT_PANIC: i32 = 1;

fn handled_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a sigset we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in HANDLED_SIGNALS {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Blocks [`HANDLED_SIGNALS`] in the calling thread. Call before any other thread exists:
/// threads inherit the mask. A signal the VMM was started with ignored (`nohup`, a
/// non-interactive shell's background job for SIGINT) stays ignored, as is the Unix custom.
pub fn block_handled_signals() -> std::io::Result<()> {
    let set = handled_set();
    // SAFETY: plain libc calls with a sigset we own.
    unsafe {
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Whether every signal in [`HANDLED_SIGNALS`] is blocked in the calling thread.
pub fn handled_signals_blocked() -> bool {
    // SAFETY: queries the calling thread's mask into a sigset we own.
    unsafe {
        let mut cur: libc::sigset_t = std::mem::zeroed();
        if libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut cur) != 0 {
            return false;
        }
        HANDLED_SIGNALS
            .iter()
            .all(|&s| libc::sigismember(&cur, s) == 1)
    }
}

/// A non-blocking signalfd for [`HANDLED_SIGNALS`] (already blocked by
/// [`block_handled_signals`]).
pub struct SignalFd {
    fd: RawFd,
}

impl SignalFd {
    /// Creates the signalfd; blocks the signals in the calling thread too (harmless if
    /// they already are).
    pub fn new() -> std::io::Result<Self> {
        let set = handled_set();
        // SAFETY: plain libc calls on a sigset we own; the fd is owned by the returned value.
        unsafe {
            if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let fd = libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(Self { fd })
        }
    }

    /// The descriptor to poll.
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// The next pending signal, if any.
    pub fn read(&self) -> Option<i32> {
        // SAFETY: reads one siginfo record into a zeroed struct of the right size.
        unsafe {
            let mut info: libc::signalfd_siginfo = std::mem::zeroed();
            let n = libc::read(
                self.fd,
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                std::mem::size_of::<libc::signalfd_siginfo>(),
            );
            (n == std::mem::size_of::<libc::signalfd_siginfo>() as isize)
                .then_some(info.ssi_signo as i32)
        }
    }
}

impl Drop for SignalFd {
    fn drop(&mut self) {
        // SAFETY: closes the descriptor this value owns.
        unsafe {
            libc::close(self.fd);
        }
    }
}

/// The one line a panic prints: `<thread> panicked: <message> at <file>:<line>`.
pub fn panic_message(thread: &str, info: &std::panic::PanicHookInfo<'_>) -> String {
    let payload = info.payload();
    let msg = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(non-string panic payload)");
    let place = info
        .location()
        .map(|l| format!(" at {}:{}", l.file(), l.line()))
        .unwrap_or_default();
    format!("{thread} panicked: {msg}{place}")
}

/// Makes a panic in any thread end the VMM: the terminal is restored, one
/// `error: <thread> panicked: <message> at <file>:<line>` line is printed (only for the
/// first panic) and the process exits with [`EXIT_PANIC`] without unwinding further, so
/// no thread is left waiting on a dead one.
pub fn install_panic_hook() {
    static PANICKED: AtomicBool = AtomicBool::new(false);
    std::panic::set_hook(Box::new(|info| {
        if PANICKED.swap(true, Ordering::SeqCst) {
            // A second panic (another thread, or inside this hook): the first one exits.
            loop {
                std::thread::park();
            }
        }
        // Held until _exit: no thread can put the terminal back into raw mode.
        let _terminal = terminal::restore_saved();
        let t = std::thread::current();
        let line = format!(
            "error: {}\n",
            panic_message(t.name().unwrap_or("unnamed thread"), info)
        );
        // stderr is unbuffered; write it whole, then leave without running exit handlers
        // that could wait on locks the dead thread holds.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
        // SAFETY: _exit ends the process; nothing is used afterwards.
        unsafe { libc::_exit(EXIT_PANIC) }
    }));
}

/// Name of the environment variable of the test-only panic hook (see [`test_panic`]).
pub const TEST_PANIC_ENV: &str = "VMM_TEST_PANIC";

/// Test-only: panics when `VMM_TEST_PANIC` (read once) names `site` (`vcpu`: the first
/// vCPU thread as it starts; `main`: the main loop before it polls). Proves the panic
/// policy in tests; not a user feature.
#[track_caller]
pub fn test_panic(site: &str) {
    static SITE: OnceLock<Option<String>> = OnceLock::new();
    let wanted = SITE.get_or_init(|| std::env::var(TEST_PANIC_ENV).ok());
    if wanted.as_deref() == Some(site) {
        panic!("{TEST_PANIC_ENV}={site} (test-only panic)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocked_mask_is_inherited_by_new_threads() {
        // Run in a fresh thread so the test harness's own threads are unaffected.
        std::thread::spawn(|| {
            block_handled_signals().unwrap();
            assert!(handled_signals_blocked());
            let child = std::thread::spawn(handled_signals_blocked).join().unwrap();
            assert!(child, "a thread created after blocking inherits the mask");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn signalfd_reports_a_blocked_signal() {
        std::thread::spawn(|| {
            let sfd = SignalFd::new().unwrap();
            assert_eq!(sfd.read(), None);
            // SAFETY: sends SIGUSR1 to this thread only, where it is blocked.
            unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGUSR1) };
            assert_eq!(sfd.read(), Some(libc::SIGUSR1));
        })
        .join()
        .unwrap();
    }

    #[test]
    fn panic_message_names_thread_message_and_place() {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let s = seen.clone();
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            *s.lock().unwrap() = panic_message("vcpu0", info);
        }));
        let r = std::thread::spawn(|| panic!("boom {}", 7)).join();
        std::panic::set_hook(prev);
        assert!(r.is_err());
        let m = seen.lock().unwrap().clone();
        assert!(
            m.starts_with("vcpu0 panicked: boom 7 at vmm/src/lifecycle.rs:"),
            "{m}"
        );
    }
}
