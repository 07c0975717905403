//! The seccomp sandbox: one allow-list per thread kind (vCPU, device worker, main control
//! loop), built with `seccompiler` and applied by each thread to itself.
//!
//! `--seccomp on` (default) answers a syscall outside the list with `SECCOMP_RET_TRAP`: a
//! SIGSYS handler writes one line, `error: seccomp: thread NAME made forbidden syscall N`,
//! with write(2) and ends the VMM with `_exit(1)`, after putting back the terminal settings
//! if the console was in raw mode. `--seccomp log` lets the call through
//! and the host kernel logs it (`SECCOMP_RET_LOG`: an audit record `type=1326 ... syscall=N`
//! in the host's kernel log). `--seccomp off` installs nothing.
//!
//! The lists were built from the code paths of each thread and checked with Linux guests
//! (DSA with idxd, VT-d, irqtest) in the nested test tier.
//!
//! Test-only: `VMM_TEST_FORBIDDEN_SYSCALL=vcpu|main` makes that thread call getppid(2)
//! (on no list) right after its filter is applied, to show what a violation looks like.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::convert::TryInto;
use std::sync::OnceLock;

use kvm_bindings::{
    kvm_irq_routing, kvm_irqfd, kvm_msi, kvm_regs, kvm_sregs, kvm_translation,
    kvm_userspace_memory_region, kvm_vcpu_events,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use thiserror::Error;

use crate::config::SeccompMode;

/// Errors while building or applying a filter.
#[derive(Debug, Error)]
pub enum SeccompError {
    /// seccompiler rejected a filter.
    #[error("seccomp: cannot build the {thread} filter: {source}")]
    Build {
        /// Thread kind.
        thread: &'static str,
        /// Cause.
        #[source]
        source: seccompiler::BackendError,
    },
    /// The kernel refused the filter.
    #[error("seccomp: cannot apply the filter of thread {thread}: {source} (--seccomp off runs without filters)")]
    Apply {
        /// Thread name.
        thread: String,
        /// Cause.
        #[source]
        source: seccompiler::Error,
    },
    /// The SIGSYS handler could not be installed.
    #[error("seccomp: cannot install the SIGSYS handler: {0}")]
    Handler(#[source] std::io::Error),
}

/// The kinds of VMM threads, each with its own filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// A vCPU thread (`KVM_RUN` loop, device emulation on exits).
    Vcpu,
    /// A device worker (DSA descriptor processing).
    Worker,
    /// The main thread (event loop: console, signals, exit).
    Main,
    /// A virtio-blk queue worker (epoll on its ioeventfd, vectored I/O on the image).
    Block,
}

impl ThreadKind {
    fn name(self) -> &'static str {
        match self {
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Worker => "worker",
            ThreadKind::Main => "main",
            ThreadKind::Block => "block",
        }
    }
}

const KVMIO: u64 = 0xAE;

/// `_IOC(dir, KVMIO, nr, size)` as in `include/uapi/asm-generic/ioctl.h`.
const fn kvm_ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
}
const IOC_W: u64 = 1;
const IOC_R: u64 = 2;
const IOC_RW: u64 = 3;

/// KVM_RUN.
pub const KVM_RUN: u64 = kvm_ioc(0, 0x80, 0);
const KVM_GET_REGS: u64 = kvm_ioc(IOC_R, 0x81, std::mem::size_of::<kvm_regs>());
const KVM_SET_REGS: u64 = kvm_ioc(IOC_W, 0x82, std::mem::size_of::<kvm_regs>());
const KVM_GET_SREGS: u64 = kvm_ioc(IOC_R, 0x83, std::mem::size_of::<kvm_sregs>());
const KVM_TRANSLATE: u64 = kvm_ioc(IOC_RW, 0x85, std::mem::size_of::<kvm_translation>());
const KVM_GET_VCPU_EVENTS: u64 = kvm_ioc(IOC_R, 0x9f, std::mem::size_of::<kvm_vcpu_events>());
const KVM_SET_VCPU_EVENTS: u64 = kvm_ioc(IOC_W, 0xa0, std::mem::size_of::<kvm_vcpu_events>());
/// KVM_SET_GSI_ROUTING (vector-layer commits).
pub const KVM_SET_GSI_ROUTING: u64 = kvm_ioc(IOC_W, 0x6a, std::mem::size_of::<kvm_irq_routing>());
const KVM_IRQFD: u64 = kvm_ioc(IOC_W, 0x76, std::mem::size_of::<kvm_irqfd>());
const KVM_SIGNAL_MSI: u64 = kvm_ioc(IOC_W, 0xa5, std::mem::size_of::<kvm_msi>());
/// KVM_IOEVENTFD (virtio notify addresses follow BAR0 when the guest programs it).
const KVM_IOEVENTFD: u64 = kvm_ioc(
    IOC_W,
    0x79,
    std::mem::size_of::<kvm_bindings::kvm_ioeventfd>(),
);

/// KVM_SET_USER_MEMORY_REGION (pass-through BAR areas follow the guest's BAR placement).
const KVM_SET_USER_MEMORY_REGION: u64 = kvm_ioc(
    IOC_W,
    0x46,
    std::mem::size_of::<kvm_userspace_memory_region>(),
);
/// `VFIO_DEVICE_GET_INFO` (`_IO(';', 107)`: the reset flag before a reset).
const VFIO_DEVICE_GET_INFO: u64 = ((b';' as u64) << 8) | 107;

/// Pass-through devices on a vCPU's config or BAR access: a host vector enabled or
/// released as the guest unmasks or frees it, a BAR area moved.
const VFIO_VCPU_IOCTLS: [u64; 2] = [vfio::host::VFIO_DEVICE_SET_IRQS, KVM_SET_USER_MEMORY_REGION];

/// Pass-through devices at exit: host interrupts off, reset, BAR areas and DMA unmapped,
/// groups released.
const VFIO_EXIT_IOCTLS: [u64; 6] = [
    vfio::host::VFIO_DEVICE_SET_IRQS,
    vfio::host::VFIO_DEVICE_RESET,
    VFIO_DEVICE_GET_INFO,
    vfio::host::VFIO_IOMMU_UNMAP_DMA,
    vfio::host::VFIO_GROUP_UNSET_CONTAINER,
    KVM_SET_USER_MEMORY_REGION,
];

/// Terminal ioctls (raw mode on and off, isatty).
const TTY_IOCTLS: [u64; 5] = [
    libc::TCGETS,
    libc::TCSETS,
    libc::TCSETSW,
    libc::TCSETSF,
    libc::TIOCGWINSZ,
];

/// Interrupt delivery from any thread: route commits, irqfds, the MSI slow path.
const IRQ_IOCTLS: [u64; 3] = [KVM_SET_GSI_ROUTING, KVM_IRQFD, KVM_SIGNAL_MSI];

/// vCPU state access on exits (MOVDIR64B emulation, #UD injection, triple-fault RIP).
const VCPU_IOCTLS: [u64; 8] = [
    KVM_RUN,
    KVM_GET_REGS,
    KVM_SET_REGS,
    KVM_GET_SREGS,
    KVM_TRANSLATE,
    KVM_GET_VCPU_EVENTS,
    KVM_SET_VCPU_EVENTS,
    KVM_SIGNAL_MSI,
];

type Rules = BTreeMap<i64, Vec<SeccompRule>>;

fn cond(arg: u8, value: u64) -> SeccompCondition {
    // Only fails for argument indexes above 5.
    SeccompCondition::new(arg, SeccompCmpArgLen::Qword, SeccompCmpOp::Eq, value)
        .expect("argument index below 6")
}

fn rule(conds: Vec<SeccompCondition>) -> SeccompRule {
    SeccompRule::new(conds).expect("non-empty condition list")
}

fn allow(rules: &mut Rules, syscalls: &[libc::c_long]) {
    for &s in syscalls {
        rules.insert(s, Vec::new());
    }
}

/// Allows `syscall` when argument `arg` equals one of `values`.
fn allow_arg(rules: &mut Rules, syscall: libc::c_long, arg: u8, values: &[u64]) {
    let entry = rules.entry(syscall).or_default();
    for &v in values {
        if !entry.iter().any(|r| *r == rule(vec![cond(arg, v)])) {
            entry.push(rule(vec![cond(arg, v)]));
        }
    }
}

/// What every thread needs: memory allocation (never executable), locks, time, stderr
/// logging, eventfd signalling, thread and process exit, the SIGSYS report.
fn common_rules() -> Rules {
    let mut r = Rules::new();
    allow(
        &mut r,
        &[
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_writev,
            libc::SYS_close,
            libc::SYS_eventfd2,
            libc::SYS_futex,
            libc::SYS_sched_yield,
            libc::SYS_brk,
            libc::SYS_munmap,
            libc::SYS_mremap,
            libc::SYS_madvise,
            libc::SYS_clock_gettime,
            libc::SYS_getrandom,
            libc::SYS_gettid,
            libc::SYS_rt_sigprocmask,
            libc::SYS_rt_sigreturn,
            libc::SYS_sigaltstack,
            libc::SYS_exit,
            libc::SYS_exit_group,
        ],
    );
    let rw = (libc::PROT_READ | libc::PROT_WRITE) as u64;
    let none = libc::PROT_NONE as u64;
    allow_arg(&mut r, libc::SYS_mmap, 2, &[rw, none]);
    allow_arg(&mut r, libc::SYS_mprotect, 2, &[rw, none]);
    // Signals only to this process (abort, kicking a thread).
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() } as u64;
    allow_arg(&mut r, libc::SYS_tgkill, 0, &[pid]);
    // Rust's debug builds check that a descriptor is open before closing it.
    allow_arg(&mut r, libc::SYS_fcntl, 1, &[libc::F_GETFD as u64]);
    allow_arg(&mut r, libc::SYS_ioctl, 1, &TTY_IOCTLS);
    allow_arg(&mut r, libc::SYS_ioctl, 1, &IRQ_IOCTLS);
    r
}

/// vCPU threads: the `KVM_RUN` loop and vCPU state access on exits; device emulation on
/// PIO/MMIO exits (interrupt delivery, new eventfds for vectors the guest enables).
pub fn vcpu_rules() -> Rules {
    let mut r = common_rules();
    // Masking a host-signalled vector hands its trigger to the interrupt relay's epoll.
    allow(&mut r, &[libc::SYS_epoll_ctl]);
    allow_arg(&mut r, libc::SYS_ioctl, 1, &VCPU_IOCTLS);
    // virtio: ioeventfds placed at BAR0's notify addresses; vhost devices start and stop
    // their kernel back-end on DRIVER_OK and reset.
    allow_arg(&mut r, libc::SYS_ioctl, 1, &[KVM_IOEVENTFD]);
    allow_arg(
        &mut r,
        libc::SYS_ioctl,
        1,
        &vhost_devices::backend::activation_ioctls(),
    );
    // Pass-through devices: config space and trapped BAR parts are VFIO region reads and
    // writes at an offset of the device fd.
    allow(&mut r, &[libc::SYS_pread64, libc::SYS_pwrite64]);
    allow_arg(&mut r, libc::SYS_ioctl, 1, &VFIO_VCPU_IOCTLS);
    r
}

/// Device worker threads (DSA descriptor processing, the serial output writer, the
/// interrupt relay): guest memory is mapped already, so locks, interrupt delivery, logging
/// and waiting on their eventfds with epoll are all they need.
pub fn worker_rules() -> Rules {
    let mut r = common_rules();
    allow(
        &mut r,
        &[
            libc::SYS_epoll_wait,
            libc::SYS_epoll_pwait,
            libc::SYS_epoll_ctl,
        ],
    );
    r
}

/// virtio-blk queue workers: epoll over the control eventfd and the queue's ioeventfd,
/// vectored reads and writes of the image, flush, discard and write-zeroes (fallocate).
pub fn block_rules() -> Rules {
    let mut r = common_rules();
    allow(
        &mut r,
        &[
            libc::SYS_epoll_wait,
            libc::SYS_epoll_pwait,
            libc::SYS_epoll_ctl,
            libc::SYS_preadv,
            libc::SYS_pwritev,
            libc::SYS_pread64,
            libc::SYS_pwrite64,
            libc::SYS_fdatasync,
            libc::SYS_fallocate,
        ],
    );
    r
}

/// The main thread's control loop: epoll over the console, signals and the exit eventfd;
/// at exit, flushing output and tearing the VM down (closing fds, unmapping memory).
pub fn main_rules() -> Rules {
    let mut r = common_rules();
    allow(
        &mut r,
        &[
            libc::SYS_epoll_wait,
            libc::SYS_epoll_pwait,
            libc::SYS_epoll_ctl,
            libc::SYS_poll,
            libc::SYS_ppoll,
            libc::SYS_fsync,
        ],
    );
    allow_arg(&mut r, libc::SYS_ioctl, 1, &VFIO_EXIT_IOCTLS);
    r
}

/// The rules of one thread kind.
pub fn rules(kind: ThreadKind) -> Rules {
    match kind {
        ThreadKind::Vcpu => vcpu_rules(),
        ThreadKind::Worker => worker_rules(),
        ThreadKind::Main => main_rules(),
        ThreadKind::Block => block_rules(),
    }
}

/// Builds the BPF program of `kind`: a syscall outside its list gets `mismatch`.
pub fn filter(kind: ThreadKind, mismatch: SeccompAction) -> Result<BpfProgram, SeccompError> {
    let build = |source| SeccompError::Build {
        thread: kind.name(),
        source,
    };
    let arch: TargetArch = std::env::consts::ARCH.try_into().map_err(build)?;
    let f = SeccompFilter::new(rules(kind), mismatch, SeccompAction::Allow, arch).map_err(build)?;
    f.try_into().map_err(build)
}

/// Which thread makes a forbidden syscall on purpose (`VMM_TEST_FORBIDDEN_SYSCALL`, test-only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestTrigger {
    /// No trigger (the normal case).
    None,
    /// vCPU 0, right after its filter is applied.
    Vcpu,
    /// The main thread, right after its filter is applied.
    Main,
}

impl TestTrigger {
    /// Reads `VMM_TEST_FORBIDDEN_SYSCALL` (test-only; unknown values are ignored).
    pub fn from_env() -> Self {
        match std::env::var("VMM_TEST_FORBIDDEN_SYSCALL").as_deref() {
            Ok("vcpu") => TestTrigger::Vcpu,
            Ok("main") => TestTrigger::Main,
            _ => TestTrigger::None,
        }
    }
}

/// Compiled filters for every thread kind (none when seccomp is off).
#[derive(Clone, Debug)]
pub struct Sandbox {
    vcpu: Option<BpfProgram>,
    worker: Option<BpfProgram>,
    main: Option<BpfProgram>,
    block: Option<BpfProgram>,
    trigger: TestTrigger,
}

impl Sandbox {
    /// Compiles the filters for `mode` and, for `on`, installs the SIGSYS handler.
    pub fn new(mode: SeccompMode) -> Result<Self, SeccompError> {
        let action = match mode {
            SeccompMode::Off => {
                return Ok(Self {
                    vcpu: None,
                    worker: None,
                    main: None,
                    block: None,
                    trigger: TestTrigger::None,
                })
            }
            SeccompMode::On => {
                install_sigsys_handler()?;
                SeccompAction::Trap
            }
            SeccompMode::Log => SeccompAction::Log,
        };
        Ok(Self {
            vcpu: Some(filter(ThreadKind::Vcpu, action.clone())?),
            worker: Some(filter(ThreadKind::Worker, action.clone())?),
            main: Some(filter(ThreadKind::Main, action.clone())?),
            block: Some(filter(ThreadKind::Block, action)?),
            trigger: TestTrigger::from_env(),
        })
    }

    /// Applies the filter of `kind` to the calling thread, named `name` in reports.
    pub fn apply(&self, kind: ThreadKind, name: &str) -> Result<(), SeccompError> {
        let prog = match kind {
            ThreadKind::Vcpu => &self.vcpu,
            ThreadKind::Worker => &self.worker,
            ThreadKind::Main => &self.main,
            ThreadKind::Block => &self.block,
        };
        let Some(prog) = prog else { return Ok(()) };
        set_thread_name(name);
        seccompiler::apply_filter(prog).map_err(|source| SeccompError::Apply {
            thread: name.to_string(),
            source,
        })?;
        let fire = match (self.trigger, kind) {
            (TestTrigger::Vcpu, ThreadKind::Vcpu) => name == "vcpu0",
            (TestTrigger::Main, ThreadKind::Main) => true,
            _ => false,
        };
        if fire {
            // SAFETY: getppid has no preconditions; it is on no allow-list on purpose.
            unsafe { libc::syscall(libc::SYS_getppid) };
        }
        Ok(())
    }

    /// Registers the worker filter as the devices crate's thread-start hook, so device
    /// worker threads (and the interrupt relay) confine themselves when they start.
    pub fn install_worker_hook(self: &std::sync::Arc<Self>) {
        static INSTALLED: OnceLock<()> = OnceLock::new();
        if self.worker.is_some() {
            INSTALLED.get_or_init(|| {
                devices::worker::set_thread_start_hook(self.start_hook(ThreadKind::Worker));
            });
        }
    }

    /// Registers the block filter as the virtio crate's thread-start hook (virtio-blk queue
    /// workers confine themselves when they start).
    pub fn install_virtio_hook(self: &std::sync::Arc<Self>) {
        static INSTALLED: OnceLock<()> = OnceLock::new();
        if self.block.is_some() {
            INSTALLED.get_or_init(|| {
                virtio::thread::set_thread_start_hook(self.start_hook(ThreadKind::Block));
            });
        }
    }

    /// A thread-start hook applying `kind`'s filter: a worker must not run unconfined, so a
    /// failure ends the VMM.
    fn start_hook(
        self: &std::sync::Arc<Self>,
        kind: ThreadKind,
    ) -> interrupt::worker::ThreadStartHook {
        let me = self.clone();
        Box::new(move |name| {
            if let Err(e) = me.apply(kind, name) {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        })
    }
}

thread_local! {
    /// The thread's name for the SIGSYS report (fixed size: read from a signal handler).
    static THREAD_NAME: Cell<[u8; 16]> = const { Cell::new([0; 16]) };
}

fn set_thread_name(name: &str) {
    let mut buf = [0u8; 16];
    let n = name.len().min(buf.len());
    buf[..n].copy_from_slice(&name.as_bytes()[..n]);
    THREAD_NAME.with(|c| c.set(buf));
}

/// Offset of `si_syscall` in a SIGSYS `siginfo_t` on x86-64 (`_sigsys`: call address, then
/// the syscall number).
const SI_SYSCALL_OFFSET: usize = 24;

/// Formats the report line into `out`; returns its length. No allocation.
fn format_report(name: &[u8; 16], syscall: i32, out: &mut [u8; 160]) -> usize {
    let mut len = 0;
    let mut put = |b: &[u8]| {
        let n = b.len().min(out.len() - len);
        out[len..len + n].copy_from_slice(&b[..n]);
        len += n;
    };
    put(b"error: seccomp: thread ");
    let name_len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    put(if name_len == 0 {
        b"?"
    } else {
        &name[..name_len]
    });
    put(b" made forbidden syscall ");
    let mut digits = [0u8; 11];
    let mut i = digits.len();
    let neg = syscall < 0;
    let mut v = syscall.unsigned_abs();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if neg {
        put(b"-");
    }
    put(&digits[i..]);
    put(b" (rerun with --seccomp log to let it through)\n");
    len
}

extern "C" fn sigsys_handler(
    _sig: libc::c_int,
    info: *mut libc::siginfo_t,
    _ctx: *mut libc::c_void,
) {
    // SAFETY: the kernel passes a valid siginfo for SIGSYS; si_syscall is an int at a fixed
    // offset of the _sigsys member.
    let syscall =
        unsafe { std::ptr::read_unaligned(info.cast::<u8>().add(SI_SYSCALL_OFFSET).cast::<i32>()) };
    let name = THREAD_NAME.with(|c| c.get());
    let mut buf = [0u8; 160];
    let len = format_report(&name, syscall, &mut buf);
    crate::terminal::restore_from_signal_handler();
    // SAFETY: write(2) and _exit(2) are async-signal-safe and on every allow-list.
    unsafe {
        libc::write(2, buf.as_ptr().cast(), len);
        libc::_exit(1);
    }
}

fn install_sigsys_handler() -> Result<(), SeccompError> {
    // SAFETY: installs a handler that only uses async-signal-safe calls.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = sigsys_handler as *const () as libc::sighandler_t;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut()) != 0 {
            return Err(SeccompError::Handler(std::io::Error::last_os_error()));
        }
        // Threads created later inherit the mask: make sure SIGSYS is not blocked.
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGSYS);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(kind: ThreadKind, syscall: libc::c_long) -> bool {
        rules(kind).contains_key(&syscall)
    }

    fn ioctl_allowed(kind: ThreadKind, cmd: u64) -> bool {
        rules(kind)[&libc::SYS_ioctl]
            .iter()
            .any(|r| *r == rule(vec![cond(1, cmd)]))
    }

    #[test]
    fn ioctl_numbers_match_linux() {
        // From include/uapi/linux/kvm.h on x86-64.
        assert_eq!(KVM_RUN, 0xae80);
        assert_eq!(KVM_GET_REGS, 0x8090_ae81);
        assert_eq!(KVM_SET_REGS, 0x4090_ae82);
        assert_eq!(KVM_GET_SREGS, 0x8138_ae83);
        assert_eq!(KVM_TRANSLATE, 0xc018_ae85);
        assert_eq!(KVM_GET_VCPU_EVENTS, 0x8040_ae9f);
        assert_eq!(KVM_SET_VCPU_EVENTS, 0x4040_aea0);
        assert_eq!(KVM_SET_GSI_ROUTING, 0x4008_ae6a);
        assert_eq!(KVM_IRQFD, 0x4020_ae76);
        assert_eq!(KVM_SIGNAL_MSI, 0x4020_aea5);
        assert_eq!(KVM_IOEVENTFD, 0x4040_ae79);
    }

    #[test]
    fn vcpu_threads_may_start_and_stop_vhost_back_ends() {
        // VHOST_SET_VRING_CALL, VHOST_NET_SET_BACKEND, VHOST_VSOCK_SET_RUNNING
        for cmd in [0x4008_af21, 0x4008_af30, 0x4004_af61, KVM_IOEVENTFD] {
            assert!(ioctl_allowed(ThreadKind::Vcpu, cmd), "{cmd:#x}");
            assert!(!ioctl_allowed(ThreadKind::Worker, cmd), "{cmd:#x}");
        }
    }

    #[test]
    fn vfio_ioctl_numbers_match_linux() {
        // From include/uapi/linux/vfio.h and kvm.h on x86-64.
        assert_eq!(vfio::host::VFIO_DEVICE_SET_IRQS, 0x3b6e);
        assert_eq!(vfio::host::VFIO_DEVICE_RESET, 0x3b6f);
        assert_eq!(VFIO_DEVICE_GET_INFO, 0x3b6b);
        assert_eq!(vfio::host::VFIO_IOMMU_UNMAP_DMA, 0x3b72);
        assert_eq!(vfio::host::VFIO_GROUP_UNSET_CONTAINER, 0x3b69);
        assert_eq!(KVM_SET_USER_MEMORY_REGION, 0x4020_ae46);
    }

    #[test]
    fn pass_through_needs_set_irqs_on_vcpus_and_reset_only_at_exit() {
        assert!(ioctl_allowed(
            ThreadKind::Vcpu,
            vfio::host::VFIO_DEVICE_SET_IRQS
        ));
        assert!(allows(ThreadKind::Vcpu, libc::SYS_pread64));
        assert!(!ioctl_allowed(
            ThreadKind::Vcpu,
            vfio::host::VFIO_DEVICE_RESET
        ));
        assert!(ioctl_allowed(
            ThreadKind::Main,
            vfio::host::VFIO_DEVICE_RESET
        ));
        assert!(!ioctl_allowed(
            ThreadKind::Worker,
            vfio::host::VFIO_DEVICE_SET_IRQS
        ));
    }

    #[test]
    fn only_vcpu_threads_may_run_the_guest() {
        assert!(ioctl_allowed(ThreadKind::Vcpu, KVM_RUN));
        assert!(!ioctl_allowed(ThreadKind::Main, KVM_RUN));
        assert!(!ioctl_allowed(ThreadKind::Worker, KVM_RUN));
        for kind in [ThreadKind::Vcpu, ThreadKind::Worker, ThreadKind::Main] {
            assert!(ioctl_allowed(kind, KVM_IRQFD));
            assert!(ioctl_allowed(kind, KVM_SET_GSI_ROUTING));
        }
    }

    #[test]
    fn no_thread_may_open_files_exec_or_use_the_network() {
        for kind in [ThreadKind::Vcpu, ThreadKind::Worker, ThreadKind::Main] {
            for s in [
                libc::SYS_open,
                libc::SYS_openat,
                libc::SYS_execve,
                libc::SYS_socket,
                libc::SYS_connect,
                libc::SYS_clone,
                libc::SYS_clone3,
                libc::SYS_fork,
                libc::SYS_ptrace,
                libc::SYS_getppid,
            ] {
                assert!(!allows(kind, s), "{kind:?} allows {s}");
            }
        }
    }

    #[test]
    fn vcpus_never_wait_on_epoll() {
        // The main loop and the workers (interrupt relay, queue workers) wait on epoll; a
        // vCPU only adds and removes descriptors (a masked host-signalled vector's trigger).
        assert!(allows(ThreadKind::Main, libc::SYS_epoll_wait));
        assert!(allows(ThreadKind::Worker, libc::SYS_epoll_wait));
        assert!(!allows(ThreadKind::Vcpu, libc::SYS_epoll_wait));
        assert!(!allows(ThreadKind::Vcpu, libc::SYS_epoll_pwait));
        assert!(allows(ThreadKind::Vcpu, libc::SYS_epoll_ctl));
    }

    #[test]
    fn executable_mappings_are_refused() {
        let mm = &rules(ThreadKind::Vcpu)[&libc::SYS_mmap];
        let rwx = (libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) as u64;
        assert!(!mm.iter().any(|r| *r == rule(vec![cond(2, rwx)])));
        assert_eq!(mm.len(), 2);
    }

    #[test]
    fn filters_compile_for_every_kind_and_mode() {
        for kind in [ThreadKind::Vcpu, ThreadKind::Worker, ThreadKind::Main] {
            for action in [SeccompAction::Trap, SeccompAction::Log] {
                assert!(!filter(kind, action).unwrap().is_empty());
            }
        }
    }

    #[test]
    fn report_names_thread_and_syscall() {
        let mut name = [0u8; 16];
        name[..5].copy_from_slice(b"vcpu0");
        let mut buf = [0u8; 160];
        let n = format_report(&name, 110, &mut buf);
        assert_eq!(
            std::str::from_utf8(&buf[..n]).unwrap(),
            "error: seccomp: thread vcpu0 made forbidden syscall 110 (rerun with --seccomp log to let it through)\n"
        );
        let n = format_report(&[0; 16], 0, &mut buf);
        assert!(std::str::from_utf8(&buf[..n])
            .unwrap()
            .starts_with("error: seccomp: thread ? made forbidden syscall 0 "));
    }

    #[test]
    fn test_trigger_is_off_without_the_variable() {
        if std::env::var_os("VMM_TEST_FORBIDDEN_SYSCALL").is_none() {
            assert_eq!(TestTrigger::from_env(), TestTrigger::None);
        }
    }

    /// Runs in a child test process (see below): confines a thread like a vCPU thread,
    /// does ordinary work under the filter, then makes a forbidden syscall.
    #[test]
    fn child_confined_thread() {
        let Ok(mode) = std::env::var("VMM_SECCOMP_TEST_CHILD") else {
            return; // only meaningful in the child process
        };
        let forbidden = mode != "clean";
        let mode = if mode == "log" {
            SeccompMode::Log
        } else {
            SeccompMode::On
        };
        let sandbox = Sandbox::new(mode).unwrap();
        std::thread::Builder::new()
            .name("vcpu7".into())
            .spawn(move || {
                sandbox.apply(ThreadKind::Vcpu, "vcpu7").unwrap();
                // Allowed: allocation, locks, stderr, eventfds.
                let v: Vec<u8> = vec![1; 1 << 20];
                let m = std::sync::Mutex::new(v.len());
                let evt = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
                evt.write(1).unwrap();
                eprintln!("confined work done {}", *m.lock().unwrap());
                if forbidden {
                    // SAFETY: getppid has no preconditions; it is on no list.
                    unsafe { libc::syscall(libc::SYS_getppid) };
                }
                eprintln!("still running after the forbidden syscall");
            })
            .unwrap()
            .join()
            .unwrap();
    }

    fn run_child(mode: &str) -> std::process::Output {
        std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "seccomp::tests::child_confined_thread",
                "--nocapture",
            ])
            .env("VMM_SECCOMP_TEST_CHILD", mode)
            .output()
            .unwrap()
    }

    #[test]
    fn forbidden_syscall_ends_the_process_with_one_line() {
        let out = run_child("on");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("confined work done 1048576"), "{err}");
        let expected = format!(
            "error: seccomp: thread vcpu7 made forbidden syscall {} ",
            libc::SYS_getppid
        );
        assert_eq!(
            err.lines()
                .filter(|l| l.starts_with("error:"))
                .collect::<Vec<_>>()
                .len(),
            1,
            "{err}"
        );
        assert!(err.contains(&expected), "{err}");
        assert!(!err.contains("still running"), "{err}");
    }

    #[test]
    fn confined_thread_works_and_exits_cleanly() {
        let out = run_child("clean");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert!(err.contains("confined work done"), "{err}");
    }

    #[test]
    fn log_mode_lets_the_syscall_through() {
        let out = run_child("log");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert!(
            err.contains("still running after the forbidden syscall"),
            "{err}"
        );
    }
}
