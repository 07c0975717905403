//! Boot-test harness: runs the `vmm` binary against a real Linux guest, either directly
//! on a host with hardware virtualization or inside an L1 Linux under QEMU TCG
//! (`resources/nested-run.sh`) where the host `/dev/kvm` cannot boot Linux (PVM).
//!
//! The mode comes from `resources/lib/probe.sh` (`VMM_TEST_MODE=direct|nested` overrides).
//! Assets (guest kernel, demo initramfs) come from `resources/setup.sh`'s cache.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::env;
use std::fmt;
use std::io::{Read, Write};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Marker printed by the L1 /init right before it starts the vmm.
pub const NESTED_START: &str = "@@NESTED vmm-start";
/// Marker printed by the L1 /init after the vmm exited, followed by its exit status.
pub const NESTED_EXIT: &str = "@@NESTED vmm-exit ";

/// Line nested-run.sh prints on stderr when L1 ended without reporting the vmm's status,
/// followed by the reason.
pub const L1_DIED: &str = "[nested-run] L1 died: ";
/// The vmm's warning when a vCPU triple faults under nested SVM (which resets the vCPU
/// before reporting the shutdown, hence the reset vector).
pub const L2_TRIPLE_FAULT: &str = "triple fault (rip 0xfff0)";
/// nested-run.sh exit statuses of a harness-level L1 death: L1 never started the vmm (120)
/// or stopped before reporting its exit status (121).
pub const L1_DEATH_STATUSES: [i32; 2] = [120, 121];

/// How many trailing output lines an error message includes.
const TAIL_LINES: usize = 40;

/// How the vmm is run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `<vmm> --kernel K --initramfs I <args>` on this host.
    Direct,
    /// Through `resources/nested-run.sh` (QEMU TCG L1 with nested SVM).
    Nested,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Direct => "direct",
            Mode::Nested => "nested",
        })
    }
}

/// The workspace root (parent of the `tests` crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate has a parent directory")
        .to_path_buf()
}

/// `resources/` in the workspace.
pub fn resources_dir() -> PathBuf {
    workspace_root().join("resources")
}

/// `${VMM_ASSETS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vmm-assets}` (same rule as setup.sh).
pub fn assets_dir() -> PathBuf {
    if let Some(d) = env::var_os("VMM_ASSETS_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let cache = env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache")
        });
    cache.join("vmm-assets")
}

/// The guest assets produced by `resources/setup.sh`.
#[derive(Clone, Debug)]
pub struct Assets {
    /// The kernel the boot tests use: the ELF vmlinux (PVH boot, no decompressor: the faster
    /// boot, see resources/compare.sh) when setup.sh extracted it, else the bzImage.
    pub kernel: PathBuf,
    /// bzImage of the Debian 6.12 kernel.
    pub bzimage: PathBuf,
    /// The ELF vmlinux out of that bzImage (setup.sh), if present.
    pub vmlinux: Option<PathBuf>,
    /// The demo initramfs (prints `Guest ready: ...`, then a shell on ttyS0).
    pub initramfs: PathBuf,
    /// Kernel release, e.g. `6.12.95+deb12-amd64`.
    pub kernel_version: String,
}

/// The cached guest assets, or an error telling to run setup.sh.
pub fn try_assets() -> Result<Assets, String> {
    let guest = assets_dir().join("guest");
    let bzimage = guest.join("vmlinuz");
    let vmlinux = Some(guest.join("vmlinux")).filter(|p| p.is_file());
    let initramfs = guest.join("demo-initramfs.cpio.gz");
    let version = std::fs::read_to_string(guest.join("version")).unwrap_or_default();
    if !bzimage.is_file() || !initramfs.is_file() || version.trim().is_empty() {
        return Err(format!(
            "guest assets missing in {}: run resources/setup.sh",
            guest.display()
        ));
    }
    Ok(Assets {
        kernel: vmlinux.clone().unwrap_or_else(|| bzimage.clone()),
        bzimage,
        vmlinux,
        initramfs,
        kernel_version: version.trim().to_string(),
    })
}

/// The cached guest assets; panics with a hint to run setup.sh when they are missing.
pub fn assets() -> Assets {
    try_assets().unwrap_or_else(|e| panic!("{e}"))
}

/// The vmm binary: `$VMM_BIN`, else `target/release/vmm`, else `target/debug/vmm`
/// (under `$CARGO_TARGET_DIR` or `<workspace>/target`). Panics when none exists.
pub fn vmm_bin() -> PathBuf {
    if let Some(p) = env::var_os("VMM_BIN").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "VMM_BIN={} does not exist", p.display());
        return p;
    }
    let mut targets = Vec::new();
    if let Some(t) = env::var_os("CARGO_TARGET_DIR").filter(|t| !t.is_empty()) {
        targets.push(PathBuf::from(t));
    }
    targets.push(workspace_root().join("target"));
    for t in &targets {
        for profile in ["release", "debug"] {
            let p = t.join(profile).join("vmm");
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "vmm binary not found (looked in {:?} for release/vmm and debug/vmm): \
         run `cargo build --release -p vmm` or set VMM_BIN",
        targets
    );
}

/// Direct or nested, from `resources/lib/probe.sh` (honours `VMM_TEST_MODE`).
pub fn probe_mode() -> Mode {
    static MODE: OnceLock<Mode> = OnceLock::new();
    *MODE.get_or_init(|| {
        let script = resources_dir().join("lib/probe.sh");
        let out = Command::new("bash")
            .arg(&script)
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        match String::from_utf8_lossy(&out.stdout).trim() {
            "direct" => Mode::Direct,
            "nested" => Mode::Nested,
            other => panic!(
                "{} printed {other:?}, expected direct|nested",
                script.display()
            ),
        }
    })
}

/// The standard vmm arguments for booting the demo guest.
pub fn standard_guest_args() -> Vec<String> {
    [
        "--cmdline",
        "console=ttyS0 quiet",
        "--cpus",
        "boot=2",
        "--memory",
        "size=512M",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A generous timeout for one guest boot (TCG in nested mode is slow).
pub fn boot_timeout(mode: Mode) -> Duration {
    match mode {
        Mode::Nested => Duration::from_secs(180),
        Mode::Direct => Duration::from_secs(60),
    }
}

/// Serializes guest boots within one test binary (TCG on 2 cores cannot take two at once).
/// Poison-tolerant: a failed test does not fail the following ones.
pub fn boot_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Which pipe an output line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One line of output with the time it was read.
#[derive(Clone, Debug)]
pub struct Line {
    pub at: Instant,
    pub stream: Stream,
    pub text: String,
}

#[derive(Default)]
struct Output {
    lines: Vec<Line>,
    /// Per line: bytes at its start already consumed by a `wait_for` match on the
    /// unterminated tail it was before.
    line_skip: Vec<usize>,
    /// Unterminated tail of each stream (e.g. a shell prompt), [stdout, stderr].
    partial: [String; 2],
    /// Bytes of each partial consumed by a match.
    partial_skip: [usize; 2],
    /// Readers that reached EOF.
    closed: usize,
    /// `wait_for` searches lines from this index on.
    cursor: usize,
}

type Shared = Arc<(Mutex<Output>, Condvar)>;

/// What to run; `GuestSession::start` fills it from the environment.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    pub mode: Mode,
    pub vmm: PathBuf,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    /// Extra vmm arguments (after `--kernel K --initramfs I`).
    pub args: Vec<String>,
    /// Nested mode only: extra nested-run.sh options (e.g. `--file`, `--l1-mem`), placed
    /// before `--`. `from_env` takes them from `$VMM_NESTED_ARGS` (split on whitespace).
    pub nested_args: Vec<String>,
}

impl SessionConfig {
    /// Probe mode, `vmm_bin()`, cached assets, the given vmm args.
    pub fn from_env(args: &[String]) -> Self {
        let a = assets();
        SessionConfig {
            mode: probe_mode(),
            vmm: vmm_bin(),
            kernel: a.kernel,
            initramfs: a.initramfs,
            args: args.to_vec(),
            nested_args: env::var("VMM_NESTED_ARGS")
                .unwrap_or_default()
                .split_whitespace()
                .map(String::from)
                .collect(),
        }
    }

    fn command(&self) -> Command {
        let mut cmd = match self.mode {
            Mode::Direct => {
                let mut c = Command::new(&self.vmm);
                c.arg("--kernel").arg(&self.kernel);
                c.arg("--initramfs").arg(&self.initramfs);
                c
            }
            Mode::Nested => {
                let mut c = Command::new("bash");
                c.arg(resources_dir().join("nested-run.sh"));
                c.arg("--vmm").arg(&self.vmm);
                c.arg("--kernel").arg(&self.kernel);
                c.arg("--initramfs").arg(&self.initramfs);
                c.args(&self.nested_args);
                c.arg("--");
                c
            }
        };
        cmd.args(&self.args);
        cmd
    }
}

/// A running vmm (direct or nested) with its console on pipes.
pub struct GuestSession {
    mode: Mode,
    child: Child,
    stdin: Option<ChildStdin>,
    out: Shared,
    spawned: Instant,
    readers: Vec<JoinHandle<()>>,
    exit: Option<i32>,
    /// The control socket and its connection (nested mode, and `start_controlled`).
    control: Option<(PathBuf, Option<std::os::unix::net::UnixStream>)>,
    /// Set when the nested harness reported an L1 death (exit 120/121).
    l1_death: Option<L1Death>,
}

impl GuestSession {
    /// Boots the demo guest with the given vmm args (see `standard_guest_args`).
    pub fn start(args: &[String]) -> GuestSession {
        let cfg = SessionConfig::from_env(args);
        Self::start_with(&cfg).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts the vmm as described by `cfg`. In nested mode the session gets a control
    /// channel (see [`start_controlled`](Self::start_controlled)), which a timed-out
    /// [`run_marked`](Self::run_marked) uses to show what the vmm's threads are doing.
    pub fn start_with(cfg: &SessionConfig) -> Result<GuestSession, String> {
        match cfg.mode {
            Mode::Nested => Self::start_controlled(cfg, &[]),
            Mode::Direct => Self::spawn(cfg),
        }
    }

    fn spawn(cfg: &SessionConfig) -> Result<GuestSession, String> {
        let mut cmd = cfg.command();
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // own process group, so Drop can kill nested-run.sh and its qemu together
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        eprintln!("[harness] mode {}: {:?}", cfg.mode, cmd);
        let spawned = Instant::now();
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {:?}: {e}", cmd.get_program()))?;
        let out: Shared = Arc::new((Mutex::new(Output::default()), Condvar::new()));
        let mut readers = Vec::new();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        readers.push(spawn_reader(stdout, Stream::Stdout, out.clone(), spawned));
        readers.push(spawn_reader(stderr, Stream::Stderr, out.clone(), spawned));
        Ok(GuestSession {
            mode: cfg.mode,
            stdin: child.stdin.take(),
            child,
            out,
            spawned,
            readers,
            exit: None,
            control: None,
            l1_death: None,
        })
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// When the process was spawned.
    pub fn spawn_instant(&self) -> Instant {
        self.spawned
    }

    /// When the vmm started: the `@@NESTED vmm-start` line in nested mode (None until
    /// it was seen), the spawn time in direct mode.
    pub fn vmm_start_instant(&self) -> Option<Instant> {
        match self.mode {
            Mode::Direct => Some(self.spawned),
            Mode::Nested => {
                let o = self.out.0.lock().unwrap_or_else(|e| e.into_inner());
                o.lines
                    .iter()
                    .find(|l| l.text.contains(NESTED_START))
                    .map(|l| l.at)
            }
        }
    }

    /// Waits for a complete output line containing `needle` after the previous match;
    /// returns the line (without `\r`/`\n`). Stdout and stderr are both searched.
    /// The error tells why and includes the last ~40 lines of output.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Result<String, String> {
        self.wait_for_line(needle, timeout).map(|l| l.text)
    }

    /// Like `wait_for`, returning the line with its timestamp.
    pub fn wait_for_line(&self, needle: &str, timeout: Duration) -> Result<Line, String> {
        self.wait_impl(needle, timeout, false)
    }

    /// Like `wait_for`, but also matches the unterminated tail of the output (a shell
    /// prompt waiting for input); returns what was printed of that line so far.
    pub fn wait_for_prompt(&self, needle: &str, timeout: Duration) -> Result<String, String> {
        self.wait_impl(needle, timeout, true).map(|l| l.text)
    }

    fn wait_impl(&self, needle: &str, timeout: Duration, partial: bool) -> Result<Line, String> {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.out;
        let mut o = lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(i) = (o.cursor..o.lines.len())
                .find(|&i| o.lines[i].text[o.line_skip[i]..].contains(needle))
            {
                o.cursor = i + 1;
                return Ok(o.lines[i].clone());
            }
            for s in [Stream::Stdout, Stream::Stderr] {
                if !partial {
                    break;
                }
                let k = s as usize;
                let from = o.partial_skip[k];
                if let Some(pos) = o.partial[k][from..].find(needle) {
                    // the rest of this partial line stays searchable once it is terminated
                    o.partial_skip[k] = from + pos + needle.len();
                    o.cursor = o.lines.len();
                    return Ok(Line {
                        at: Instant::now(),
                        stream: s,
                        text: o.partial[k].clone(),
                    });
                }
            }
            let now = Instant::now();
            let why = if o.closed == 2 {
                Some("the process closed its output")
            } else if now >= deadline {
                Some("timed out")
            } else {
                None
            };
            if let Some(why) = why {
                return Err(format!(
                    "waiting for {needle:?}: {why} after {:.1}s; last output lines:\n{}",
                    self.spawned.elapsed().as_secs_f64(),
                    tail(&o)
                ));
            }
            o = cv
                .wait_timeout(o, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Types a line (a newline is appended) into the guest console.
    pub fn send_line(&mut self, s: &str) {
        eprintln!("[{:7.2}s] >>> {s}", self.spawned.elapsed().as_secs_f64());
        let stdin = self.stdin.as_mut().expect("stdin already closed");
        stdin
            .write_all(format!("{s}\n").as_bytes())
            .and_then(|_| stdin.flush())
            .unwrap_or_else(|e| panic!("writing to the vmm's stdin: {e}"));
    }

    /// Closes the console input (EOF).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// A copy of all output lines so far.
    pub fn lines(&self) -> Vec<Line> {
        let o = self.out.0.lock().unwrap_or_else(|e| e.into_inner());
        o.lines.clone()
    }

    /// The last ~40 lines of output, for error messages.
    pub fn tail(&self) -> String {
        tail(&self.out.0.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Waits for the vmm to exit; returns its exit status (nested mode: parsed from
    /// `@@NESTED vmm-exit N`, direct mode: the process status; a signal is an error).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<i32, String> {
        if let Some(c) = self.exit {
            return Ok(c);
        }
        let deadline = Instant::now() + timeout;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(st)) => {
                    self.reaped(st);
                    break st;
                }
                Ok(None) if Instant::now() >= deadline => {
                    return Err(format!(
                        "vmm did not exit within {timeout:?}; last output lines:\n{}",
                        self.tail()
                    ))
                }
                Ok(None) => thread::sleep(Duration::from_millis(50)),
                Err(e) => return Err(format!("waiting for the vmm: {e}")),
            }
        };
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let code = match self.mode {
            Mode::Direct => status.code().ok_or_else(|| {
                format!(
                    "vmm killed by a signal ({status}); last output lines:\n{}",
                    self.tail()
                )
            })?,
            Mode::Nested => {
                let parsed = self.lines().iter().rev().find_map(|l| {
                    l.text
                        .split_once(NESTED_EXIT)
                        .and_then(|(_, n)| n.trim().parse::<i32>().ok())
                });
                match parsed {
                    Some(c) => c,
                    None => {
                        let death = self.l1_death.as_ref().map_or(String::new(), |d| {
                            format!(
                                " (nested harness: L1 died, exit {}: {})",
                                d.status, d.reason
                            )
                        });
                        return Err(format!(
                            "nested run ended ({status}) without a `{NESTED_EXIT}N` line{death}; \
                             last output lines:\n{}",
                            self.tail()
                        ));
                    }
                }
            }
        };
        self.exit = Some(code);
        Ok(code)
    }
}

impl Drop for GuestSession {
    fn drop(&mut self) {
        self.stdin = None;
        if self.output_closed() {
            // the run is ending by itself (e.g. L1 died): let it finish to learn its status
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                thread::sleep(Duration::from_millis(50));
            }
        }
        if let Ok(Some(st)) = self.child.try_wait() {
            self.reaped(st);
        }
        if let Ok(None) = self.child.try_wait() {
            // the whole process group (nested-run.sh + qemu): TERM lets nested-run.sh
            // remove its work dir, KILL whatever is left
            let group = format!("-{}", self.child.id());
            let signal = |sig: &str| {
                let _ = Command::new("kill")
                    .args([sig, "--", &group])
                    .stderr(Stdio::null())
                    .status();
            };
            signal("-TERM");
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                thread::sleep(Duration::from_millis(50));
            }
            signal("-KILL");
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        if let Some(dir) = self.control.as_ref().and_then(|(p, _)| p.parent()) {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl GuestSession {
    /// Whether both output pipes reached EOF.
    fn output_closed(&self) -> bool {
        self.out.0.lock().unwrap_or_else(|e| e.into_inner()).closed == 2
    }

    /// Records how the process ended; a nested-harness L1 death is remembered for
    /// [`with_l1_retry`] (once per session).
    fn reaped(&mut self, st: ExitStatus) {
        if self.mode != Mode::Nested || self.l1_death.is_some() {
            return;
        }
        // Under QEMU TCG's nested SVM the L2 guest, like L1 itself, occasionally triple
        // faults right as serial input arrives (measured in the closing note of issue 8);
        // SVM resets the vCPU on that exit, so the vmm reports it at the reset vector.
        if st.code() == Some(3)
            && self
                .lines()
                .iter()
                .any(|l| l.text.contains(L2_TRIPLE_FAULT))
        {
            let death = L1Death {
                status: 3,
                reason: "L2 triple fault under the nested TCG harness".into(),
            };
            L1_DEATHS.with(|d| d.borrow_mut().push(death.clone()));
            self.l1_death = Some(death);
            return;
        }
        let Some(status) = st.code().filter(|c| L1_DEATH_STATUSES.contains(c)) else {
            return;
        };
        // nested-run.sh prints no `L1 died:` line when L1's /init reported a setup error
        // (no /dev/kvm, insmod failed): that is a broken harness, not a death to retry
        let Some(reason) = self.lines().iter().rev().find_map(|l| {
            (l.stream == Stream::Stderr)
                .then(|| l.text.strip_prefix(L1_DIED))
                .flatten()
                .map(|r| r.trim().to_string())
        }) else {
            return;
        };
        let death = L1Death { status, reason };
        L1_DEATHS.with(|d| d.borrow_mut().push(death.clone()));
        self.l1_death = Some(death);
    }

    /// The L1 death this nested run ended with, if any (known once it was reaped:
    /// after `wait_exit`).
    pub fn l1_death(&self) -> Option<&L1Death> {
        self.l1_death.as_ref()
    }
}

/// A harness-level death of the nested L1 (QEMU TCG): nested-run.sh exited 120/121 and
/// said why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct L1Death {
    /// nested-run.sh's exit status (120 or 121).
    pub status: i32,
    /// The reason nested-run.sh gave (kernel panic line, triple fault, or none recorded).
    pub reason: String,
}

thread_local! {
    /// L1 deaths of the sessions this thread ran since the last `take_l1_deaths`.
    static L1_DEATHS: RefCell<Vec<L1Death>> = const { RefCell::new(Vec::new()) };
}

/// The L1 deaths recorded on this thread (by sessions that were waited for or dropped)
/// since the current [`with_l1_retry`] attempt started.
pub fn l1_deaths() -> Vec<L1Death> {
    L1_DEATHS.with(|d| d.borrow().clone())
}

fn take_l1_deaths() -> Vec<L1Death> {
    L1_DEATHS.with(|d| std::mem::take(&mut *d.borrow_mut()))
}

/// How many times [`with_l1_retry`] runs a body whose attempts end in harness deaths.
pub const NESTED_ATTEMPTS: usize = 3;

/// Runs a nested test body; when it fails and one of its sessions ended in an L1 death
/// (nested-run.sh exit 120/121 with an `L1 died:` reason: an L1 panic, triple fault or hang)
/// or in an L2 triple fault at the reset vector (vmm exit 3 in nested mode), prints
/// `nested harness: L1 died (exit N: reason), retrying (attempt 2 of 3)` (or
/// `L2 triple fault …`) and runs the body again, up to [`NESTED_ATTEMPTS`] times in all.
/// Any other failure (a VMM error, a wrong exit status, a timeout) is not retried, nor is
/// the last attempt. The body must start its sessions itself, so it can run again.
pub fn with_l1_retry<T>(body: impl Fn() -> T) -> T {
    for attempt in 1.. {
        take_l1_deaths();
        let result = panic::catch_unwind(AssertUnwindSafe(&body));
        let deaths = take_l1_deaths();
        let p = match result {
            Ok(v) => return v,
            Err(p) => p,
        };
        let Some(d) = deaths.first().filter(|_| attempt < NESTED_ATTEMPTS) else {
            panic::resume_unwind(p)
        };
        // straight to fd 2, past the test runner's output capture: a retry that
        // passed must still be seen
        let what = if d.status == 3 {
            "L2 triple fault"
        } else {
            "L1 died"
        };
        let _ = writeln!(
            std::io::stderr(),
            "nested harness: {what} (exit {}: {}), retrying (attempt {} of {NESTED_ATTEMPTS})",
            d.status,
            d.reason,
            attempt + 1
        );
    }
    unreachable!("the loop returns or unwinds")
}

fn tail(o: &Output) -> String {
    let start = o.lines.len().saturating_sub(TAIL_LINES);
    let mut s = String::new();
    for l in &o.lines[start..] {
        s.push_str("    ");
        s.push_str(&l.text);
        s.push('\n');
    }
    for p in &o.partial {
        if !p.is_empty() {
            s.push_str("    ");
            s.push_str(p);
            s.push_str(" (no newline)\n");
        }
    }
    s
}

fn spawn_reader<R: Read + Send + 'static>(
    mut r: R,
    stream: Stream,
    out: Shared,
    t0: Instant,
) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut pending: Vec<u8> = Vec::new();
        let tag = if stream == Stream::Stderr { "!" } else { " " };
        loop {
            let n = match r.read(&mut buf) {
                Ok(0) | Err(_) => 0,
                Ok(n) => n,
            };
            let (lock, cv) = &*out;
            let mut o = lock.lock().unwrap_or_else(|e| e.into_inner());
            if n == 0 {
                if !pending.is_empty() {
                    let text = clean(&pending);
                    eprintln!("[{:7.2}s]{tag}{text}", t0.elapsed().as_secs_f64());
                    push_line(&mut o, stream, text);
                }
                o.partial[stream as usize].clear();
                o.closed += 1;
                cv.notify_all();
                return;
            }
            pending.extend_from_slice(&buf[..n]);
            while let Some(pos) = pending.iter().position(|&b| b == b'\n') {
                let text = clean(&pending[..pos]);
                pending.drain(..=pos);
                eprintln!("[{:7.2}s]{tag}{text}", t0.elapsed().as_secs_f64());
                push_line(&mut o, stream, text);
            }
            o.partial[stream as usize] = clean(&pending);
            cv.notify_all();
        }
    })
}

fn push_line(o: &mut Output, stream: Stream, text: String) {
    let k = stream as usize;
    // a consumed prefix of the partial carries over to the line it became
    let skip = std::mem::take(&mut o.partial_skip[k]).min(text.len());
    let skip = if text.is_char_boundary(skip) { skip } else { 0 };
    o.line_skip.push(skip);
    o.lines.push(Line {
        at: Instant::now(),
        stream,
        text,
    });
}

/// Lossy UTF-8 with carriage returns removed.
fn clean(b: &[u8]) -> String {
    String::from_utf8_lossy(b).replace('\r', "")
}

/// Seconds between two instants (negative if `b` is before `a`).
pub fn secs_between(a: Instant, b: Instant) -> f64 {
    if b >= a {
        (b - a).as_secs_f64()
    } else {
        -((a - b).as_secs_f64())
    }
}

/// Readiness line the demo and test initramfs images print from /init.
pub const READY: &str = "Guest ready:";
/// Shell prompt of the guest images.
pub const PROMPT: &str = "guest# ";

/// Timeout for one typed shell command.
pub fn cmd_timeout(mode: Mode) -> Duration {
    match mode {
        Mode::Nested => Duration::from_secs(60),
        Mode::Direct => Duration::from_secs(20),
    }
}

/// Timeout for a guest module whose self-test runs inside `insmod`.
pub fn module_timeout(mode: Mode) -> Duration {
    match mode {
        Mode::Nested => Duration::from_secs(300),
        Mode::Direct => Duration::from_secs(120),
    }
}

/// Runs `resources/<script>`, which builds (or reuses) a cached initramfs and prints its
/// path on the last line of stdout; returns that path.
pub fn build_initramfs(script: &str) -> PathBuf {
    let script = resources_dir().join(script);
    let out = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed ({}); run resources/setup.sh first if the guest assets are missing",
        script.display(),
        out.status
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let path = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
    assert!(
        path.is_file(),
        "{} printed {stdout:?}, not an initramfs path",
        script.display()
    );
    path
}

/// The `key=value` fields that follow `prefix` in `line` (a module's result line).
pub fn parse_fields(line: &str, prefix: &str) -> BTreeMap<String, String> {
    let rest = line.split_once(prefix).map_or("", |(_, r)| r);
    rest.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl GuestSession {
    /// Types `cmd; echo <marker>` and returns the output lines between the echoed command
    /// and the marker. The marker is split with quotes in the typed command, so the echoed
    /// command line itself cannot match it. Panics with the session tail on timeout.
    pub fn run_marked(&mut self, cmd: &str, marker: &str, timeout: Duration) -> Vec<String> {
        let (a, b) = marker.split_at(marker.len() / 2);
        let echo_tag = format!("\"{a}\"\"{b}\"");
        self.send_line(&format!("{cmd}; echo {echo_tag}"));
        self.wait_typed(cmd, marker, timeout);
        let lines: Vec<String> = self.lines().into_iter().map(|l| l.text).collect();
        let end = lines
            .iter()
            .rposition(|l| l.contains(marker) && !l.contains(&echo_tag))
            .expect("marker line seen");
        let start = lines[..end]
            .iter()
            .rposition(|l| l.contains(&echo_tag))
            .map_or(0, |i| i + 1);
        lines[start..end].to_vec()
    }
}

/// Marker of a line copied from a followed file (`GuestSession::follow_file`).
pub const FILE_LINE: &str = "@@FILE ";
/// Marker of an output line of a command run in L1 (`GuestSession::run_in_l1`).
pub const L1_LINE: &str = "@@L1 ";
/// Line that ends an L1 command's output, followed by its exit status.
const L1_END: &str = "@@L1-END ";

impl GuestSession {
    /// Like `start_with`, with `env` set for the vmm and a way to signal it
    /// (`signal`) and follow files it writes (`follow_file`): in nested mode through
    /// nested-run.sh's `--env` and `--control` socket, in direct mode through a wrapper
    /// script that execs the vmm (same pid) and the host file system.
    pub fn start_controlled(
        cfg: &SessionConfig,
        env: &[(&str, &str)],
    ) -> Result<GuestSession, String> {
        static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = env::temp_dir().join(format!("vmm-ctl-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut cfg = cfg.clone();
        let control = dir.join("ctl.sock");
        match cfg.mode {
            Mode::Nested => {
                for (k, v) in env {
                    cfg.nested_args.push("--env".into());
                    cfg.nested_args.push(format!("{k}={v}"));
                }
                cfg.nested_args.push("--control".into());
                cfg.nested_args.push(control.to_string_lossy().into_owned());
            }
            Mode::Direct if !env.is_empty() => {
                let mut script = String::from("#!/bin/sh\n");
                for (k, v) in env {
                    script.push_str(&format!("export {k}='{v}'\n"));
                }
                script.push_str(&format!("exec '{}' \"$@\"\n", cfg.vmm.display()));
                let wrapper = dir.join("vmm-env.sh");
                std::fs::write(&wrapper, script).map_err(|e| e.to_string())?;
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))
                    .map_err(|e| e.to_string())?;
                cfg.vmm = wrapper;
            }
            Mode::Direct => {}
        }
        let mut s = Self::spawn(&cfg)?;
        s.control = Some((control, None));
        Ok(s)
    }

    fn control_line(&mut self, line: &str) {
        let (path, stream) = self
            .control
            .as_mut()
            .expect("session started with start_controlled");
        if stream.is_none() {
            // L1 reads the channel from before it starts the vmm; what is sent earlier
            // could be lost while L1 boots.
            let deadline = Instant::now() + boot_timeout(Mode::Nested);
            let (lock, cv) = &*self.out;
            let mut o = lock.lock().unwrap_or_else(|e| e.into_inner());
            while !o.lines.iter().any(|l| l.text.contains(NESTED_START)) {
                let now = Instant::now();
                assert!(
                    now < deadline && o.closed < 2,
                    "no `{NESTED_START}` before a control command; last output lines:\n{}",
                    tail(&o)
                );
                o = cv
                    .wait_timeout(o, deadline - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            drop(o);
            let deadline = Instant::now() + Duration::from_secs(60);
            let c = loop {
                match std::os::unix::net::UnixStream::connect(&*path) {
                    Ok(c) => break c,
                    Err(e) if Instant::now() >= deadline => {
                        panic!("control socket {}: {e}", path.display())
                    }
                    Err(_) => thread::sleep(Duration::from_millis(100)),
                }
            };
            *stream = Some(c);
        }
        let c = stream.as_mut().expect("connected");
        c.write_all(format!("{line}\n").as_bytes())
            .and_then(|_| c.flush())
            .unwrap_or_else(|e| panic!("writing to the control socket: {e}"));
    }

    /// Sends signal `name` (e.g. "USR1", "TERM") to the vmm process.
    pub fn signal(&mut self, name: &str) {
        eprintln!(
            "[{:7.2}s] >>> (signal {name})",
            self.spawned.elapsed().as_secs_f64()
        );
        match self.mode {
            Mode::Nested => self.control_line(&format!("signal {name}")),
            Mode::Direct => {
                let ok = Command::new("kill")
                    .args(["-s", name, &self.child.id().to_string()])
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false);
                assert!(ok, "kill -s {name} {} failed", self.child.id());
            }
        }
    }

    /// Nested mode: runs shell `cmd` in the background in L1, beside the vmm (stdin
    /// /dev/null, output on the console), through nested-run.sh's control channel.
    pub fn l1_run(&mut self, cmd: &str) {
        assert_eq!(self.mode, Mode::Nested, "l1_run needs the nested harness");
        assert!(!cmd.contains('\n'), "one line only");
        eprintln!(
            "[{:7.2}s] >>> (L1) {cmd}",
            self.spawned.elapsed().as_secs_f64()
        );
        self.control_line(&format!("run {cmd}"));
    }

    /// Copies the lines of `path` (a file the vmm writes; in nested mode a path inside L1)
    /// into the session output as `@@FILE <line>`, from its start and as it grows.
    pub fn follow_file(&mut self, path: &str) {
        match self.mode {
            Mode::Nested => self.control_line(&format!("follow {path}")),
            Mode::Direct => {
                let out = self.out.clone();
                let path = PathBuf::from(path);
                let t0 = self.spawned;
                thread::spawn(move || {
                    let mut done = 0usize;
                    let mut pending = Vec::new();
                    loop {
                        let closed = out.0.lock().map(|o| o.closed == 2).unwrap_or(true);
                        let data = std::fs::read(&path).unwrap_or_default();
                        if data.len() > done {
                            pending.extend_from_slice(&data[done..]);
                            done = data.len();
                            let (lock, cv) = &*out;
                            let mut o = lock.lock().unwrap_or_else(|e| e.into_inner());
                            while let Some(pos) = pending.iter().position(|&b| b == b'\n') {
                                let text = format!("{FILE_LINE}{}", clean(&pending[..pos]));
                                pending.drain(..=pos);
                                eprintln!("[{:7.2}s] {text}", t0.elapsed().as_secs_f64());
                                push_line(&mut o, Stream::Stdout, text);
                            }
                            cv.notify_all();
                        }
                        if closed {
                            return;
                        }
                        thread::sleep(Duration::from_millis(100));
                    }
                });
            }
        }
    }

    /// Nested mode: runs the shell command `cmd` in L1 (beside the vmm) and returns its
    /// output lines (stdout and stderr) and exit status.
    pub fn run_in_l1(&mut self, cmd: &str, timeout: Duration) -> (Vec<String>, i32) {
        self.try_run_in_l1(cmd, timeout)
            .unwrap_or_else(|e| panic!("L1 command `{cmd}`: {e}"))
    }

    fn try_run_in_l1(
        &mut self,
        cmd: &str,
        timeout: Duration,
    ) -> Result<(Vec<String>, i32), String> {
        assert_eq!(
            self.mode,
            Mode::Nested,
            "run_in_l1 needs the nested harness"
        );
        assert!(!cmd.contains('\n'), "one line only: {cmd:?}");
        eprintln!(
            "[{:7.2}s] >>> (L1) {cmd}",
            self.spawned.elapsed().as_secs_f64()
        );
        let from = self.lines().len();
        self.control_line(&format!("l1 {cmd}"));
        let end = self.wait_for(L1_END, timeout)?;
        let rc = end
            .split_once(L1_END)
            .and_then(|(_, r)| r.trim().parse().ok())
            .ok_or_else(|| format!("no status in {end:?}"))?;
        let lines = self.lines();
        let out = lines[from.min(lines.len())..]
            .iter()
            .take_while(|l| !l.text.contains(L1_END))
            .filter_map(|l| l.text.split_once(L1_LINE).map(|(_, t)| t.to_string()))
            .collect();
        Ok((out, rc))
    }

    /// Waits for the line with `needle` that typed command `cmd` prints (see `wait_for`);
    /// on failure panics naming `cmd`, with what the vmm's threads are doing when L1 can
    /// still tell (nested mode).
    pub fn wait_typed(&mut self, cmd: &str, needle: &str, timeout: Duration) -> String {
        match self.wait_for(needle, timeout) {
            Ok(line) => line,
            Err(e) => {
                let threads = self.vmm_threads();
                panic!("`{cmd}`: {e}{threads}")
            }
        }
    }

    /// After a timeout in nested mode, while L1 still runs: each vmm thread's name, state,
    /// wait channel and kernel stack, read in L1 (a thread asleep in `futex_wait` waits for
    /// a lock; `R` in KVM_RUN is the guest running). Empty when there is nothing to ask.
    fn vmm_threads(&mut self) -> String {
        if self.mode != Mode::Nested || self.control.is_none() || self.output_closed() {
            return String::new();
        }
        const CMD: &str = "p=$(cat /tmp/vmm.pid); for t in /proc/$p/task/*; do \
            echo \"$(cat $t/comm) state=$(cut -d' ' -f3 $t/stat) wchan=$(cat $t/wchan)\"; \
            head -n 6 $t/stack | sed 's/^/    /'; done; cat /proc/loadavg";
        match self.try_run_in_l1(CMD, Duration::from_secs(30)) {
            Ok((lines, _)) => format!("\nthe vmm's threads in L1:\n    {}", lines.join("\n    ")),
            Err(e) => format!("\n(L1 did not answer about the vmm's threads: {e})"),
        }
    }

    /// Writes raw bytes (no newline added) into the guest console, e.g. control keys.
    pub fn send_bytes(&mut self, b: &[u8]) {
        eprintln!(
            "[{:7.2}s] >>> (bytes {b:02x?})",
            self.spawned.elapsed().as_secs_f64()
        );
        let stdin = self.stdin.as_mut().expect("stdin already closed");
        stdin
            .write_all(b)
            .and_then(|_| stdin.flush())
            .unwrap_or_else(|e| panic!("writing to the vmm's stdin: {e}"));
    }
}

/// Panic payload of [`skip`]: the test did not run, for this reason.
#[derive(Clone, Debug)]
pub struct Skip(pub String);

/// Ends the running test as skipped: [`run_tests`] reports it as `ignored (<reason>)` and
/// counts it among the ignored tests, never as passed. Only for test binaries whose `main`
/// is [`test_main!`].
pub fn skip(reason: impl Into<String>) -> ! {
    panic::panic_any(Skip(reason.into()))
}

/// The `main` of a `harness = false` test binary: runs the listed test functions with
/// libtest-mimic (same command-line options and output as libtest), reporting a test that
/// called [`skip`] as ignored with its reason.
///
/// ```text
/// tests::test_main!(first_test, second_test);
/// ```
#[macro_export]
macro_rules! test_main {
    ($($name:ident),+ $(,)?) => {
        fn main() -> std::process::ExitCode {
            $crate::run_tests(&[$((stringify!($name), $name as fn())),+])
        }
    };
}

/// Runs `tests` (name, function) with libtest-mimic; see [`test_main!`].
pub fn run_tests(tests: &[(&'static str, fn())]) -> std::process::ExitCode {
    use libtest_mimic::{Arguments, Completion, Failed, Trial};
    // a skip is not a failure: no panic message for it
    let default_hook = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        if !info.payload().is::<Skip>() {
            default_hook(info);
        }
    }));
    let trials = tests
        .iter()
        .map(|&(name, f)| {
            Trial::ignorable_test(name, move || match panic::catch_unwind(f) {
                Ok(()) => Ok(Completion::Completed),
                Err(p) => match p.downcast::<Skip>() {
                    Ok(skip) => Ok(Completion::ignored_with(skip.0)),
                    Err(p) => Err(Failed::from(panic_message(&*p))),
                },
            })
        })
        .collect();
    libtest_mimic::run(&Arguments::from_args(), trials).exit_code()
}

/// The message of a panic payload (`panic!` gives a `&str` or a `String`).
fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "test panicked".to_string())
}

#[cfg(test)]
mod unit {
    /// `#[test]` compiles to nothing in a `harness = false` binary: a test written that way
    /// in one of them would never run. Every such file must list its tests in `test_main!`.
    #[test]
    fn no_test_attribute_in_harness_false_binaries() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        let mut checked = 0;
        for section in manifest.split("[[test]]").skip(1) {
            let section = section.split("\n[").next().unwrap_or_default();
            if !section.contains("harness = false") {
                continue;
            }
            let name = section
                .lines()
                .find_map(|l| l.trim().strip_prefix("name = "))
                .map(|n| n.trim_matches('"'))
                .expect("[[test]] without a name");
            let file = dir.join("tests").join(format!("{name}.rs"));
            let src = std::fs::read_to_string(&file).unwrap();
            let bad: Vec<&str> = src
                .lines()
                .filter(|l| l.trim_start().starts_with("#[test]"))
                .collect();
            assert!(
                bad.is_empty(),
                "{}: `#[test]` does nothing in a harness = false binary; list the \
                 function in its `tests::test_main!` instead",
                file.display()
            );
            assert!(
                src.contains("test_main!("),
                "{}: no tests::test_main!",
                file.display()
            );
            checked += 1;
        }
        assert!(checked >= 4, "found only {checked} harness = false tests");
    }
}
