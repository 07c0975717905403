//! The interactive console on stdin: raw mode (restored on drop, on panic and on every
//! exit path) and the escape sequence that ends the VMM.

use std::os::fd::RawFd;
use std::sync::{Mutex, OnceLock};

/// The settings to put back: the terminal in raw mode and its saved termios. A process has
/// one stdin, so one slot is enough; the panic hook restores it through [`restore_saved`].
static SAVED: Mutex<Option<(RawFd, libc::termios)>> = Mutex::new(None);

/// The first settings saved by [`RawTerminal::enter`], readable without a lock, for signal
/// handlers that end the process (see [`restore_from_signal_handler`]).
static SAVED_FOR_SIGNALS: OnceLock<(RawFd, libc::termios)> = OnceLock::new();

/// The raw-mode settings derived from `saved`: no echo, no line editing, no signal keys
/// (Ctrl-C, Ctrl-Z, Ctrl-\ go to the guest, as in QEMU and cloud-hypervisor), but output
/// processing kept (`OPOST | ONLCR`) so host-side text such as logs and the SIGUSR1 dump
/// does not staircase.
pub fn raw_termios(saved: &libc::termios) -> libc::termios {
    let mut raw = *saved;
    // SAFETY: cfmakeraw only edits the struct we pass.
    unsafe { libc::cfmakeraw(&mut raw) };
    raw.c_lflag &= !libc::ISIG;
    raw.c_oflag |= libc::OPOST | libc::ONLCR;
    raw
}

/// Puts a terminal in raw mode (see [`raw_termios`]) and restores the saved settings when
/// dropped.
pub struct RawTerminal {
    fd: RawFd,
    saved: libc::termios,
}

impl RawTerminal {
    /// Enters raw mode on `fd` if it is a terminal; `None` otherwise.
    pub fn enter(fd: RawFd) -> Option<Self> {
        // SAFETY: isatty/tcgetattr/tcsetattr only read or write the termios struct we own.
        unsafe {
            if libc::isatty(fd) != 1 {
                return None;
            }
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(fd, &mut saved) != 0 {
                return None;
            }
            // Registered and changed under the slot's lock: a concurrent panic either
            // restores after the change or keeps the change from happening.
            let mut slot = SAVED.lock().unwrap_or_else(|e| e.into_inner());
            let raw = raw_termios(&saved);
            if libc::tcsetattr(fd, libc::TCSANOW, &raw) != 0 {
                return None;
            }
            *slot = Some((fd, saved));
            let _ = SAVED_FOR_SIGNALS.set((fd, saved));
            Some(Self { fd, saved })
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let mut slot = SAVED.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: restores the settings saved in `enter` on the same descriptor.
        unsafe {
            libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved);
        }
        *slot = None;
    }
}

/// The lock on the saved terminal settings, held by [`restore_saved`]'s caller.
pub type SavedTerminalGuard = std::sync::MutexGuard<'static, Option<(RawFd, libc::termios)>>;

/// Restores the terminal a live [`RawTerminal`] changed, if any, for the panic hook (which
/// ends the process without running destructors). Returns the lock on the saved settings:
/// while it is held no other thread can enter raw mode again, so the hook keeps it until
/// the process ends.
pub fn restore_saved() -> SavedTerminalGuard {
    let slot = SAVED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((fd, saved)) = *slot {
        // SAFETY: writes back settings read from the same descriptor.
        unsafe {
            libc::tcsetattr(fd, libc::TCSANOW, &saved);
        }
    }
    slot
}

/// Puts back the terminal settings saved when raw mode was first entered, if it ever was.
/// Async-signal-safe (an atomic load and `tcsetattr`): for handlers that end the process,
/// such as the seccomp SIGSYS report. Restoring settings already in force is harmless.
pub fn restore_from_signal_handler() {
    if let Some((fd, saved)) = SAVED_FOR_SIGNALS.get() {
        // SAFETY: tcsetattr is async-signal-safe; the struct is immutable once set.
        unsafe {
            libc::tcsetattr(*fd, libc::TCSANOW, saved);
        }
    }
}

/// The escape key: Ctrl-A, as in QEMU's `-serial mon:stdio`.
pub const ESCAPE_KEY: u8 = 0x01;
/// After [`ESCAPE_KEY`]: end the VMM.
pub const ESCAPE_QUIT: u8 = b'x';

/// What the console input contained besides bytes for the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EscapeAction {
    /// Only input for the guest.
    None,
    /// The user typed Ctrl-A x: end the VMM.
    Quit,
}

/// Finds the escape sequences in terminal input: Ctrl-A x ends the VMM, Ctrl-A Ctrl-A sends
/// one Ctrl-A to the guest, Ctrl-A followed by any other byte sends both. A Ctrl-A at the
/// end of one read is held until the next.
#[derive(Debug, Default)]
pub struct EscapeParser {
    after_escape: bool,
}

impl EscapeParser {
    /// Appends the guest's share of `input` to `out`. On [`EscapeAction::Quit`] the bytes
    /// after the sequence are left out.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> EscapeAction {
        for &b in input {
            if self.after_escape {
                self.after_escape = false;
                match b {
                    ESCAPE_QUIT => return EscapeAction::Quit,
                    ESCAPE_KEY => out.push(ESCAPE_KEY),
                    other => out.extend_from_slice(&[ESCAPE_KEY, other]),
                }
            } else if b == ESCAPE_KEY {
                self.after_escape = true;
            } else {
                out.push(b);
            }
        }
        EscapeAction::None
    }
}

/// Host input waiting for the guest's receive FIFO, bounded: when it is full the console
/// stops reading stdin (back-pressure) instead of buffering without limit.
#[derive(Debug)]
pub struct InputQueue {
    pending: std::collections::VecDeque<u8>,
    limit: usize,
    /// Present when stdin is an interactive terminal.
    escape: Option<EscapeParser>,
}

impl InputQueue {
    /// An empty queue holding at most about `limit` bytes; `escape` enables the escape
    /// sequence.
    pub fn new(limit: usize, escape: bool) -> Self {
        Self {
            pending: std::collections::VecDeque::new(),
            limit,
            escape: escape.then(EscapeParser::default),
        }
    }

    /// How many bytes to read from stdin now (0: stop polling stdin).
    pub fn room(&self) -> usize {
        self.limit.saturating_sub(self.pending.len())
    }

    /// Queues bytes read from stdin (at most `room()` of them), filtering the escape
    /// sequence. A Ctrl-A pair split over reads can exceed the limit by one byte.
    pub fn accept(&mut self, input: &[u8]) -> EscapeAction {
        match &mut self.escape {
            Some(parser) => {
                let mut out = Vec::with_capacity(input.len() + 1);
                let action = parser.feed(input, &mut out);
                self.pending.extend(out);
                action
            }
            None => {
                self.pending.extend(input);
                EscapeAction::None
            }
        }
    }

    /// The queued bytes as one contiguous slice (the front of the queue).
    pub fn front(&mut self) -> &[u8] {
        self.pending.make_contiguous()
    }

    /// Removes `n` bytes the guest took from the front.
    pub fn consume(&mut self, n: usize) {
        self.pending.drain(..n.min(self.pending.len()));
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(p: &mut EscapeParser, input: &[u8]) -> (Vec<u8>, EscapeAction) {
        let mut out = Vec::new();
        let a = p.feed(input, &mut out);
        (out, a)
    }

    #[test]
    fn plain_input_passes_through() {
        let mut p = EscapeParser::default();
        assert_eq!(
            feed(&mut p, b"ls\x03\r"),
            (b"ls\x03\r".to_vec(), EscapeAction::None)
        );
    }

    #[test]
    fn ctrl_a_x_quits_and_drops_the_rest() {
        let mut p = EscapeParser::default();
        assert_eq!(
            feed(&mut p, b"ab\x01xcd"),
            (b"ab".to_vec(), EscapeAction::Quit)
        );
    }

    #[test]
    fn ctrl_a_ctrl_a_sends_one_ctrl_a() {
        let mut p = EscapeParser::default();
        assert_eq!(
            feed(&mut p, b"\x01\x01x"),
            (b"\x01x".to_vec(), EscapeAction::None)
        );
    }

    #[test]
    fn ctrl_a_other_key_sends_both() {
        let mut p = EscapeParser::default();
        assert_eq!(
            feed(&mut p, b"\x01b"),
            (b"\x01b".to_vec(), EscapeAction::None)
        );
    }

    #[test]
    fn escape_split_across_reads() {
        let mut p = EscapeParser::default();
        assert_eq!(feed(&mut p, b"a\x01"), (b"a".to_vec(), EscapeAction::None));
        assert_eq!(feed(&mut p, b"x"), (Vec::new(), EscapeAction::Quit));
        let mut p = EscapeParser::default();
        assert_eq!(feed(&mut p, b"\x01"), (Vec::new(), EscapeAction::None));
        assert_eq!(
            feed(&mut p, b"\x01"),
            (b"\x01".to_vec(), EscapeAction::None)
        );
    }

    #[test]
    fn input_queue_is_bounded_and_drains() {
        let mut q = InputQueue::new(8, false);
        assert_eq!(q.room(), 8);
        assert_eq!(q.accept(b"abcdef"), EscapeAction::None);
        assert_eq!(q.room(), 2);
        q.accept(b"gh");
        assert_eq!(q.room(), 0, "full: stdin is not read");
        assert_eq!(q.front(), b"abcdefgh");
        q.consume(3);
        assert_eq!(q.room(), 3);
        assert_eq!(q.front(), b"defgh");
        q.consume(100);
        assert!(q.is_empty());
        // Without a terminal the escape byte is ordinary input.
        assert_eq!(q.accept(b"\x01x"), EscapeAction::None);
        assert_eq!(q.front(), b"\x01x");
    }

    #[test]
    fn input_queue_on_a_terminal_filters_the_escape() {
        let mut q = InputQueue::new(8, true);
        assert_eq!(q.accept(b"ls\x01\x01"), EscapeAction::None);
        assert_eq!(q.front(), b"ls\x01");
        assert_eq!(q.accept(b"\x01x"), EscapeAction::Quit);
        assert_eq!(q.front(), b"ls\x01");
    }

    struct Pty {
        master: RawFd,
        slave: RawFd,
    }

    impl Pty {
        fn open() -> Pty {
            let (mut master, mut slave) = (-1, -1);
            // SAFETY: openpty writes two descriptors; the name/termios/winsize are unused.
            let r = unsafe {
                libc::openpty(
                    &mut master,
                    &mut slave,
                    std::ptr::null_mut(),
                    std::ptr::null(),
                    std::ptr::null(),
                )
            };
            assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
            Pty { master, slave }
        }

        fn termios(&self) -> libc::termios {
            // SAFETY: reads the slave's settings into a struct we own.
            unsafe {
                let mut t: libc::termios = std::mem::zeroed();
                assert_eq!(libc::tcgetattr(self.slave, &mut t), 0);
                t
            }
        }
    }

    impl Drop for Pty {
        fn drop(&mut self) {
            // SAFETY: closes the descriptors openpty gave us.
            unsafe {
                libc::close(self.slave);
                libc::close(self.master);
            }
        }
    }

    fn same(a: &libc::termios, b: &libc::termios) -> bool {
        a.c_iflag == b.c_iflag
            && a.c_oflag == b.c_oflag
            && a.c_cflag == b.c_cflag
            && a.c_lflag == b.c_lflag
            && a.c_cc == b.c_cc
    }

    // One test for everything that uses the process-wide SAVED slot (tests run in
    // parallel threads).
    #[test]
    fn raw_mode_on_a_pty_is_restored_on_drop_and_by_restore_saved() {
        let pty = Pty::open();
        let before = pty.termios();
        assert!(
            before.c_lflag & libc::ICANON != 0,
            "a new pty starts cooked"
        );

        let raw = RawTerminal::enter(pty.slave).expect("a pty is a terminal");
        let t = pty.termios();
        assert_eq!(t.c_lflag & (libc::ICANON | libc::ECHO | libc::ISIG), 0);
        assert_eq!(
            t.c_oflag & (libc::OPOST | libc::ONLCR),
            libc::OPOST | libc::ONLCR,
            "output processing stays on"
        );
        drop(raw);
        assert!(same(&pty.termios(), &before), "drop restores the settings");

        // The panic hook's path: restore while the RawTerminal is still alive.
        let raw = RawTerminal::enter(pty.slave).unwrap();
        assert!(!same(&pty.termios(), &before));
        let guard = restore_saved();
        assert!(same(&pty.termios(), &before), "restore_saved restores");
        drop(guard);
        drop(raw);
        assert!(same(&pty.termios(), &before));
        // Nothing registered any more: restore_saved changes nothing.
        drop(restore_saved());
        assert!(same(&pty.termios(), &before));
    }

    #[test]
    fn not_a_terminal_is_left_alone() {
        let fd = std::fs::File::open("/dev/null").unwrap();
        assert!(RawTerminal::enter(std::os::fd::AsRawFd::as_raw_fd(&fd)).is_none());
    }
}
