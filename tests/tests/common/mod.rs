//! Fixture of the KVM integration tier: a one-vCPU VM on the host's `/dev/kvm`, set up like
//! `vmm/src/vm.rs` does it (split irqchip with 24 IOAPIC pins, x2APIC API), running the
//! hand-assembled real-mode guest of [`guest`] on a vCPU thread.
//!
//! The guest counts every interrupt per vector and reports it on an I/O port; the vCPU thread
//! tallies the reports, so a test can wait for and assert exact per-vector counts. The thread
//! also handles `KVM_EXIT_IOAPIC_EOI` (handed to a hook, normally the userspace IOAPIC) and the
//! guest's threshold port (handed to another hook).
//!
//! Tests are skipped ([`tests::skip`]: reported as ignored, with the reason) when
//! `VMM_SKIP_KVM_TESTS=1`; otherwise a missing or unusable `/dev/kvm` fails them with a
//! message saying so.

// Shared by test binaries that each use part of it.
#![allow(dead_code)]

pub mod guest;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Once};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use interrupt::{InterruptHierarchy, KvmVectorLayer, NoRemap, RoutingBackend};
use kvm_bindings::{
    kvm_enable_cap, kvm_mp_state, kvm_msi, kvm_userspace_memory_region, KVM_CAP_SPLIT_IRQCHIP,
    KVM_CAP_X2APIC_API, KVM_MAX_CPUID_ENTRIES, KVM_MP_STATE_RUNNABLE,
    KVM_X2APIC_API_DISABLE_BROADCAST_QUIRK, KVM_X2APIC_API_USE_32BIT_IDS,
};
use kvm_ioctls::{Cap, Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use guest::{GuestImage, ListingLine};

/// Environment variable that, set to `1`, skips every KVM test (reported as ignored).
pub const SKIP_ENV: &str = "VMM_SKIP_KVM_TESTS";
/// Number of IOAPIC pins reserved in KVM's split irqchip (GSIs `0..24`), as in the vmm.
pub const IOAPIC_PINS: u32 = 24;
/// Vector of the sentinel interrupt [`KvmGuest::flush`] injects. It is the lowest-priority
/// vector the guest handles, so tests use vectors above 0x2f.
pub const SENTINEL_VECTOR: u8 = 0x20;
/// Default time limit of every wait (each test normally completes in well under a second).
pub const WAIT: Duration = Duration::from_secs(2);

/// Guest memory size: one slot at guest-physical 0.
const MEM_SIZE: usize = 1 << 20;
/// x2APIC support: CPUID leaf 1, ECX bit 21.
const CPUID_1_ECX_X2APIC: u32 = 1 << 21;

/// What the vCPU thread observed so far.
#[derive(Clone, Debug)]
pub struct Observed {
    /// Interrupts the guest counted and reported, per vector.
    pub counts: Vec<u64>,
    /// `KVM_EXIT_IOAPIC_EOI` exits, per vector.
    pub ioapic_eois: Vec<u64>,
    /// Vectors whose counter reached its threshold, in order.
    pub threshold_hits: Vec<u8>,
    /// Whether the guest reported that its x2APIC is enabled.
    pub ready: bool,
    /// Exception vectors the guest took (each one stops the guest).
    pub faults: Vec<u8>,
    /// Why the vCPU thread stopped, if it stopped on its own.
    pub error: Option<String>,
    /// Every guest event in order.
    pub events: Vec<GuestEvent>,
    /// Reports made while the LAPIC had the reported vector in service (architectural: the
    /// handler runs before its EOI).
    pub handled_in_service: u64,
    /// Reports made while the LAPIC did not have the vector in service: the interrupt was
    /// already EOI'd when the handler ran (seen on PVM hosts with real-mode guests).
    pub handled_not_in_service: u64,
}

/// One event the vCPU thread saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestEvent {
    /// The guest counted an interrupt of this vector.
    Interrupt(u8),
    /// `KVM_EXIT_IOAPIC_EOI` for this vector.
    IoapicEoi(u8),
    /// The guest's counter of this vector reached its threshold.
    Threshold(u8),
}

impl Default for Observed {
    fn default() -> Self {
        Self {
            counts: vec![0; 256],
            ioapic_eois: vec![0; 256],
            threshold_hits: Vec::new(),
            ready: false,
            faults: Vec::new(),
            error: None,
            events: Vec::new(),
            handled_in_service: 0,
            handled_not_in_service: 0,
        }
    }
}

impl Observed {
    /// Whether the host's LAPIC EOIs interrupts on delivery, before the guest's EOI write
    /// (a handler ran while its vector was not in service). KVM then reports
    /// `KVM_EXIT_IOAPIC_EOI` for a level vector at delivery time, not at the guest's EOI.
    pub fn eoi_on_delivery(&self) -> bool {
        self.handled_not_in_service > 0
    }

    /// Non-zero interrupt counts, sentinel excluded.
    pub fn nonzero_counts(&self) -> BTreeMap<u8, u64> {
        nonzero(&self.counts, Some(SENTINEL_VECTOR))
    }

    fn summary(&self) -> String {
        const LAST: usize = 40;
        let skip = self.events.len().saturating_sub(LAST);
        let events: Vec<String> = self.events[skip..]
            .iter()
            .map(|e| match e {
                GuestEvent::Interrupt(v) => format!("int {v:#04x}"),
                GuestEvent::IoapicEoi(v) => format!("eoi-exit {v:#04x}"),
                GuestEvent::Threshold(v) => format!("threshold {v:#04x}"),
            })
            .collect();
        format!(
            "guest ready: {}; interrupt counts: {}; sentinel count: {}; KVM_EXIT_IOAPIC_EOI \
             per vector: {}; threshold hits: {:x?}; guest exceptions: {:x?}; vCPU error: {}; \
             handlers run with the vector in service: {}, not in service: {}; \
             last {} of {} events: [{}]",
            self.ready,
            fmt_map(&self.nonzero_counts()),
            self.counts[usize::from(SENTINEL_VECTOR)],
            fmt_map(&nonzero(&self.ioapic_eois, None)),
            self.threshold_hits,
            self.faults,
            self.error.as_deref().unwrap_or("none"),
            self.handled_in_service,
            self.handled_not_in_service,
            events.len(),
            self.events.len(),
            events.join(", ")
        )
    }
}

fn nonzero(v: &[u64], skip: Option<u8>) -> BTreeMap<u8, u64> {
    v.iter()
        .enumerate()
        .filter(|&(i, &n)| n != 0 && Some(i as u8) != skip)
        .map(|(i, &n)| (i as u8, n))
        .collect()
}

fn fmt_map(m: &BTreeMap<u8, u64>) -> String {
    if m.is_empty() {
        return "{}".into();
    }
    let items: Vec<String> = m.iter().map(|(v, n)| format!("{v:#04x}: {n}")).collect();
    format!("{{{}}}", items.join(", "))
}

/// Callbacks the vCPU thread runs on guest events, before the guest continues.
#[derive(Default)]
pub struct VcpuHooks {
    /// Called with the vector of each `KVM_EXIT_IOAPIC_EOI` (normally
    /// `ioapic.end_of_interrupt`).
    pub ioapic_eoi: Option<Box<dyn Fn(u8) + Send>>,
    /// Called with the vector whose guest counter just reached its threshold (see
    /// [`KvmGuest::set_threshold`]); runs before the handler's report and its EOI write.
    pub threshold: Option<Box<dyn Fn(u8) + Send>>,
}

struct Shared {
    state: Mutex<Observed>,
    cv: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Observed> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut Observed)) {
        f(&mut self.lock());
        self.cv.notify_all();
    }
}

/// Skips the running test ([`tests::skip`]) when `VMM_SKIP_KVM_TESTS=1`.
pub fn require_kvm_tests() {
    if std::env::var(SKIP_ENV).is_ok_and(|v| v == "1") {
        tests::skip(format!("{SKIP_ENV}=1"));
    }
}

fn kvm_fail(what: &str, e: impl std::fmt::Display) -> ! {
    panic!(
        "KVM integration test setup: {what} failed: {e}. These tests need a usable /dev/kvm \
         with KVM_CAP_SPLIT_IRQCHIP, KVM_CAP_IRQFD, KVM_CAP_IRQ_ROUTING, KVM_CAP_SIGNAL_MSI and \
         KVM_CAP_X2APIC_API (set {SKIP_ENV}=1 to skip them)"
    )
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// The host's `KVM_CAP_MAX_VCPU_ID` (vCPU ids must be below it). Skips the test when the
/// KVM tests are skipped; fails it when `/dev/kvm` cannot be opened.
pub fn max_vcpu_id() -> usize {
    require_kvm_tests();
    Kvm::new()
        .unwrap_or_else(|e| kvm_fail("opening /dev/kvm", e))
        .get_max_vcpu_id()
}

/// Signal used to kick the vCPU thread out of `KVM_RUN` (the handler does nothing).
fn kick_signal() -> i32 {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        register_signal_handler(SIGRTMIN(), kick_handler)
            .unwrap_or_else(|e| panic!("installing the vCPU kick signal handler: {e}"));
    });
    SIGRTMIN()
}

/// A one-vCPU KVM VM running the test guest.
pub struct KvmGuest {
    vm: Arc<VmFd>,
    mem: GuestMemoryMmap,
    vcpu: Option<VcpuFd>,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    listing: Arc<Vec<ListingLine>>,
    apic_id: u32,
}

impl KvmGuest {
    /// Creates the VM and its vCPU with the guest loaded (not yet running). Skips the test
    /// when `VMM_SKIP_KVM_TESTS=1`; panics with a clear message when KVM is missing or
    /// unusable.
    pub fn new() -> Self {
        Self::with_vcpu_id(0)
    }

    /// Like [`Self::new`], with the vCPU created as KVM vCPU `vcpu_id`, which is also its
    /// APIC ID (the x2APIC ID in full; the guest runs in x2APIC mode). Panics when `vcpu_id`
    /// is not below the host's `KVM_CAP_MAX_VCPU_ID` (see [`max_vcpu_id`]).
    pub fn with_vcpu_id(vcpu_id: u32) -> Self {
        require_kvm_tests();
        let kvm = Kvm::new().unwrap_or_else(|e| kvm_fail("opening /dev/kvm", e));
        for (cap, name) in [
            (Cap::SplitIrqchip, "KVM_CAP_SPLIT_IRQCHIP"),
            (Cap::IrqRouting, "KVM_CAP_IRQ_ROUTING"),
            (Cap::Irqfd, "KVM_CAP_IRQFD"),
            (Cap::SignalMsi, "KVM_CAP_SIGNAL_MSI"),
            (Cap::X2ApicApi, "KVM_CAP_X2APIC_API"),
        ] {
            if !kvm.check_extension(cap) {
                kvm_fail("checking capabilities", format!("{name} is missing"));
            }
        }
        let vm = Arc::new(
            kvm.create_vm()
                .unwrap_or_else(|e| kvm_fail("KVM_CREATE_VM", e)),
        );
        // Only meaningful on Intel hosts (as in the vmm); harmless to fail elsewhere.
        let _ = vm.set_tss_address(0xfffb_d000);
        // The split irqchip must be enabled before any vCPU exists.
        let split = kvm_enable_cap {
            cap: KVM_CAP_SPLIT_IRQCHIP,
            args: [u64::from(IOAPIC_PINS), 0, 0, 0],
            ..Default::default()
        };
        vm.enable_cap(&split)
            .unwrap_or_else(|e| kvm_fail("enabling KVM_CAP_SPLIT_IRQCHIP", e));
        let x2apic = kvm_enable_cap {
            cap: KVM_CAP_X2APIC_API,
            args: [
                u64::from(KVM_X2APIC_API_USE_32BIT_IDS | KVM_X2APIC_API_DISABLE_BROADCAST_QUIRK),
                0,
                0,
                0,
            ],
            ..Default::default()
        };
        vm.enable_cap(&x2apic)
            .unwrap_or_else(|e| kvm_fail("enabling KVM_CAP_X2APIC_API", e));

        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)])
            .unwrap_or_else(|e| kvm_fail("mapping guest memory", e));
        for (slot, region) in mem.iter().enumerate() {
            let r = kvm_userspace_memory_region {
                slot: slot as u32,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
                flags: 0,
            };
            // SAFETY: the region is a live mapping owned by `mem`; the vCPU (the only user of
            // the slot) is stopped before `mem` is dropped, or `mem` is leaked (`stop_vcpu`).
            unsafe { vm.set_user_memory_region(r) }
                .unwrap_or_else(|e| kvm_fail("KVM_SET_USER_MEMORY_REGION", e));
        }
        let GuestImage { pieces, listing } = guest::build();
        for (addr, bytes) in &pieces {
            mem.write_slice(bytes, GuestAddress(*addr))
                .expect("guest image fits in guest memory");
        }

        let vcpu = vm
            .create_vcpu(u64::from(vcpu_id))
            .unwrap_or_else(|e| kvm_fail(&format!("KVM_CREATE_VCPU (vCPU id {vcpu_id})"), e));
        if vcpu_id != 0 {
            // With an in-kernel LAPIC only the boot vCPU (id 0) starts runnable; the others
            // wait for INIT/SIPI.
            let runnable = kvm_mp_state {
                mp_state: KVM_MP_STATE_RUNNABLE,
            };
            vcpu.set_mp_state(runnable)
                .unwrap_or_else(|e| kvm_fail("KVM_SET_MP_STATE", e));
        }
        let mut cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .unwrap_or_else(|e| kvm_fail("KVM_GET_SUPPORTED_CPUID", e));
        for e in cpuid.as_mut_slice().iter_mut().filter(|e| e.function == 1) {
            e.ecx |= CPUID_1_ECX_X2APIC;
        }
        vcpu.set_cpuid2(&cpuid)
            .unwrap_or_else(|e| kvm_fail("KVM_SET_CPUID2", e));
        // Real mode, every segment at base 0, IVT at 0.
        let mut sregs = vcpu
            .get_sregs()
            .unwrap_or_else(|e| kvm_fail("KVM_GET_SREGS", e));
        for seg in [
            &mut sregs.cs,
            &mut sregs.ds,
            &mut sregs.es,
            &mut sregs.fs,
            &mut sregs.gs,
            &mut sregs.ss,
        ] {
            seg.base = 0;
            seg.selector = 0;
            seg.limit = 0xffff;
        }
        sregs.idt.base = 0;
        sregs.idt.limit = 0x3ff;
        sregs.cr0 &= !1; // PE off
        vcpu.set_sregs(&sregs)
            .unwrap_or_else(|e| kvm_fail("KVM_SET_SREGS", e));
        let mut regs = vcpu
            .get_regs()
            .unwrap_or_else(|e| kvm_fail("KVM_GET_REGS", e));
        regs.rip = u64::from(guest::ENTRY);
        regs.rsp = u64::from(guest::STACK_TOP);
        regs.rflags = 2;
        vcpu.set_regs(&regs)
            .unwrap_or_else(|e| kvm_fail("KVM_SET_REGS", e));

        Self {
            vm,
            mem,
            vcpu: Some(vcpu),
            shared: Arc::new(Shared {
                state: Mutex::new(Observed::default()),
                cv: Condvar::new(),
            }),
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
            listing: Arc::new(listing),
            apic_id: vcpu_id,
        }
    }

    /// The vCPU's APIC ID (its KVM vCPU id).
    pub fn apic_id(&self) -> u32 {
        self.apic_id
    }

    /// The vCPU before [`Self::start`] (e.g. to queue an event for its first entry).
    pub fn vcpu(&self) -> Option<&VcpuFd> {
        self.vcpu.as_ref()
    }

    /// The guest memory (one slot of 1 MiB at guest-physical 0; the guest itself uses the
    /// first 32 KiB).
    pub fn mem(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// The VM (what the vector layer routes through).
    pub fn vm(&self) -> Arc<VmFd> {
        self.vm.clone()
    }

    /// A hierarchy as the vmm builds it — `KvmVectorLayer` on this VM with `reserved` IOAPIC
    /// GSIs and `max_gsi` routes, no remapping.
    pub fn hierarchy(&self, reserved: u32, max_gsi: u32) -> Arc<InterruptHierarchy> {
        let backend: Arc<dyn RoutingBackend> = self.vm();
        InterruptHierarchy::new(
            Arc::new(KvmVectorLayer::new(backend, reserved, max_gsi)),
            Arc::new(NoRemap),
        )
    }

    /// Makes the guest write `vector` to the threshold port when its counter reaches `n`
    /// (0 disables).
    pub fn set_threshold(&self, vector: u8, n: u32) {
        let addr = u64::from(guest::THRESHOLDS) + 4 * u64::from(vector);
        self.mem
            .write_obj(n, GuestAddress(addr))
            .expect("threshold table is in guest memory");
    }

    /// The guest's own counter of `vector` (read from guest memory).
    pub fn guest_counter(&self, vector: u8) -> u32 {
        let addr = u64::from(guest::COUNTERS) + 4 * u64::from(vector);
        self.mem
            .read_obj(GuestAddress(addr))
            .expect("counter table is in guest memory")
    }

    /// Starts the vCPU thread with `hooks` and waits until the guest's x2APIC is enabled.
    pub fn start(&mut self, hooks: VcpuHooks) {
        self.start_no_wait(hooks);
        self.wait_until("the guest to enable its x2APIC", |o| o.ready);
    }

    /// Starts the vCPU thread with `hooks` without waiting for the guest.
    pub fn start_no_wait(&mut self, hooks: VcpuHooks) {
        let vcpu = self.vcpu.take().expect("KvmGuest::start called twice");
        // Install the kick handler before the thread can be kicked.
        kick_signal();
        let (shared, stop, listing) =
            (self.shared.clone(), self.stop.clone(), self.listing.clone());
        self.thread = Some(
            thread::Builder::new()
                .name("test-vcpu0".into())
                .spawn(move || vcpu_loop(vcpu, &shared, &hooks, &stop, &listing))
                .expect("spawning the vCPU thread"),
        );
    }

    /// A copy of what was observed so far.
    pub fn observed(&self) -> Observed {
        self.shared.lock().clone()
    }

    /// Interrupts of `vector` the guest counted so far.
    pub fn count(&self, vector: u8) -> u64 {
        self.shared.lock().counts[usize::from(vector)]
    }

    /// `KVM_EXIT_IOAPIC_EOI` exits seen for `vector`.
    pub fn ioapic_eois(&self, vector: u8) -> u64 {
        self.shared.lock().ioapic_eois[usize::from(vector)]
    }

    /// Waits up to [`WAIT`] for `pred`; panics with `what` and the guest's state on timeout,
    /// guest exception or vCPU failure.
    pub fn wait_until(&self, what: &str, pred: impl FnMut(&Observed) -> bool) {
        self.wait_until_for(what, WAIT, pred)
    }

    /// [`Self::wait_until`] with an explicit time limit.
    pub fn wait_until_for(
        &self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&Observed) -> bool,
    ) {
        let start = Instant::now();
        let deadline = start + timeout;
        let mut o = self.shared.lock();
        loop {
            if pred(&o) {
                return;
            }
            let now = Instant::now();
            let why = if !o.faults.is_empty() {
                Some("the guest took an exception".to_string())
            } else if o.error.is_some() {
                Some("the vCPU stopped".to_string())
            } else if now >= deadline {
                Some(format!("timed out after {:.2} s", timeout.as_secs_f64()))
            } else {
                None
            };
            if let Some(why) = why {
                let summary = o.summary();
                drop(o);
                panic!("waiting for {what}: {why}; {summary}");
            }
            o = self
                .shared
                .cv
                .wait_timeout(o, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Waits until the guest counted at least `n` interrupts of `vector`.
    pub fn wait_count(&self, vector: u8, n: u64) {
        self.wait_until(&format!("{n} interrupt(s) on vector {vector:#04x}"), |o| {
            o.counts[usize::from(vector)] >= n
        });
    }

    /// Makes sure every interrupt already in the guest's LAPIC has been handled: injects the
    /// lowest-priority [`SENTINEL_VECTOR`] with `KVM_SIGNAL_MSI` (not through the crates under
    /// test) and waits for the guest to count it. The LAPIC delivers the highest pending vector
    /// first and the guest handles one interrupt at a time (IF is clear in a handler), so when
    /// the sentinel is counted every interrupt pending before it was injected has been counted,
    /// and the `KVM_EXIT_IOAPIC_EOI`s of those handlers have been processed.
    pub fn flush(&self) {
        let before = self.count(SENTINEL_VECTOR);
        // Physical destination: the vCPU's APIC ID, bits 31:8 in address_hi (x2APIC API).
        let msi = kvm_msi {
            address_lo: 0xFEE0_0000 | ((self.apic_id & 0xff) << 12),
            address_hi: self.apic_id & !0xff,
            data: u32::from(SENTINEL_VECTOR),
            ..Default::default()
        };
        self.vm
            .signal_msi(msi)
            .unwrap_or_else(|e| panic!("KVM_SIGNAL_MSI of the sentinel failed: {e}"));
        self.wait_until("the sentinel interrupt (flush)", |o| {
            o.counts[usize::from(SENTINEL_VECTOR)] > before
        });
    }

    /// Flushes, then asserts that the guest counted exactly `expected` (vector, count) pairs
    /// and nothing on any other vector, both in its reports and in its own counters.
    pub fn assert_counts(&self, expected: &[(u8, u64)]) {
        self.flush();
        let want: BTreeMap<u8, u64> = expected.iter().copied().filter(|e| e.1 != 0).collect();
        let o = self.observed();
        let got = o.nonzero_counts();
        assert_eq!(
            got,
            want,
            "per-vector interrupt counts differ: got {}, want {}; {}",
            fmt_map(&got),
            fmt_map(&want),
            o.summary()
        );
        for (v, n) in &got {
            assert_eq!(
                u64::from(self.guest_counter(*v)),
                *n,
                "guest counter of vector {v:#04x} disagrees with its reports"
            );
        }
    }

    fn stop_vcpu(&mut self) {
        let Some(t) = self.thread.take() else { return };
        self.stop.store(true, Ordering::Release);
        let signal = kick_signal();
        // A kick that lands outside KVM_RUN is lost, so repeat until the thread is gone.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !t.is_finished() {
            let _ = t.kill(signal);
            if Instant::now() > deadline {
                eprintln!("vCPU thread did not stop; leaving it and its guest memory behind");
                // The vCPU may still touch guest memory: never unmap it.
                std::mem::forget(self.mem.clone());
                return;
            }
            thread::sleep(Duration::from_millis(1));
        }
        let _ = t.join();
    }
}

impl Drop for KvmGuest {
    fn drop(&mut self) {
        self.stop_vcpu();
    }
}

/// A vCPU exit, copied out of `kvm_run` so the vCPU can be queried while handling it.
enum Exit {
    /// `out port, al`.
    Out(u16, u8),
    /// `KVM_EXIT_IOAPIC_EOI`.
    IoapicEoi(u8),
    /// Nothing to do (halt, signal, interrupt window).
    Nothing,
    /// The vCPU cannot continue.
    Stop(String),
}

/// Whether `vector` is set in the in-service register of the vCPU's LAPIC (`None` when the
/// LAPIC cannot be read).
fn in_service(vcpu: &VcpuFd, vector: u8) -> Option<bool> {
    let lapic = vcpu.get_lapic().ok()?;
    let reg = 0x100 + 0x10 * usize::from(vector / 32);
    let word = u32::from_le_bytes(std::array::from_fn(|i| lapic.regs[reg + i] as u8));
    Some(word & (1 << (vector % 32)) != 0)
}

fn vcpu_loop(
    mut vcpu: VcpuFd,
    shared: &Shared,
    hooks: &VcpuHooks,
    stop: &AtomicBool,
    listing: &[ListingLine],
) {
    loop {
        if stop.load(Ordering::Acquire) {
            return;
        }
        let exit = match vcpu.run() {
            Ok(VcpuExit::IoOut(port, data)) if data.len() == 1 => Exit::Out(port, data[0]),
            Ok(VcpuExit::IoapicEoi(vector)) => Exit::IoapicEoi(vector),
            Ok(VcpuExit::Hlt) | Ok(VcpuExit::Intr) | Ok(VcpuExit::IrqWindowOpen) => Exit::Nothing,
            Ok(VcpuExit::IoIn(port, data)) => {
                data.fill(0xff);
                Exit::Stop(format!("unexpected in from port {port:#x}"))
            }
            Ok(other) => Exit::Stop(format!("unexpected exit {other:?}")),
            // Kicked by `stop_vcpu` (or a spurious wake-up): look at the stop flag again.
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Exit::Nothing,
            Err(e) => Exit::Stop(format!("KVM_RUN failed: {e}")),
        };
        let why = match exit {
            Exit::Nothing => continue,
            Exit::Out(guest::REPORT_PORT, v) => {
                let isr = in_service(&vcpu, v);
                shared.update(|o| {
                    o.counts[usize::from(v)] += 1;
                    o.events.push(GuestEvent::Interrupt(v));
                    match isr {
                        Some(true) => o.handled_in_service += 1,
                        Some(false) => o.handled_not_in_service += 1,
                        None => {}
                    }
                });
                continue;
            }
            Exit::Out(guest::THRESHOLD_PORT, v) => {
                shared.update(|o| {
                    o.threshold_hits.push(v);
                    o.events.push(GuestEvent::Threshold(v));
                });
                if let Some(h) = &hooks.threshold {
                    h(v);
                }
                continue;
            }
            Exit::Out(guest::READY_PORT, _) => {
                shared.update(|o| o.ready = true);
                continue;
            }
            Exit::Out(guest::FAULT_PORT, v) => {
                shared.update(|o| o.faults.push(v));
                continue;
            }
            Exit::Out(port, v) => format!("unexpected out {v:#04x} to port {port:#x}"),
            Exit::IoapicEoi(vector) => {
                if let Some(h) = &hooks.ioapic_eoi {
                    h(vector);
                }
                shared.update(|o| {
                    o.ioapic_eois[usize::from(vector)] += 1;
                    o.events.push(GuestEvent::IoapicEoi(vector));
                });
                continue;
            }
            Exit::Stop(why) => why,
        };
        let rip = vcpu.get_regs().map(|r| r.rip).unwrap_or(u64::MAX);
        let msg = format!(
            "{why} at rip {rip:#x}\n{}",
            guest::listing_near(listing, rip)
        );
        shared.update(|o| o.error = Some(msg));
        return;
    }
}

/// Guest-physical layout of the VT-d structures a [`VtdDriver`] keeps in guest RAM, above
/// the guest's code, data and stack (which end at 0x8000).
pub mod vtd_layout {
    /// Interrupt-remapping table: 256 entries of 16 bytes (IRTA.S = 7).
    pub const IRT_BASE: u64 = 0x1_0000;
    /// IRTA.S of the table: `2^(S + 1)` = 256 entries.
    pub const IRT_S: u64 = 7;
    /// Invalidation queue: 256 descriptors of 16 bytes (IQA.QS = 0).
    pub const IQ_BASE: u64 = 0x2_0000;
    /// Number of descriptors in the queue.
    pub const IQ_ENTRIES: u32 = 256;
    /// Status dword written by invalidation wait descriptors.
    pub const WAIT_STATUS: u64 = 0x3_0000;
}

/// Status value Linux stores before submitting a wait descriptor (`QI_IN_USE`).
const QI_IN_USE: u32 = 1;
/// Status data Linux puts in its wait descriptors (`QI_DONE`).
const QI_DONE: u32 = 2;

/// Drives an [`interrupt::VtdUnit`] through its registers the way Linux's
/// `intel_irq_remapping` does, with the remapping table and invalidation queue in the
/// fixture's guest RAM (see [`vtd_layout`]). The unit is the remap layer of
/// [`VtdDriver::hierarchy`], whose vector layer routes on the fixture's VM.
pub struct VtdDriver {
    /// The emulated unit.
    pub unit: Arc<interrupt::VtdUnit>,
    /// The hierarchy the unit remaps for (vector layer on the fixture's VM).
    pub hierarchy: Arc<InterruptHierarchy>,
    mem: GuestMemoryMmap,
    /// Linux's shadow of the persistent GCMD bits (`iommu->gcmd`).
    gcmd: u32,
    /// Next free slot of the invalidation queue.
    tail: u32,
}

impl VtdDriver {
    /// A unit with the default configuration (IOAPIC source ID F0:1F.0), in reset state,
    /// stacked on a `KvmVectorLayer` of `g`'s VM (24 reserved GSIs, 4096 routes).
    pub fn new(g: &KvmGuest) -> Self {
        let backend: Arc<dyn RoutingBackend> = g.vm();
        let vectors: Arc<dyn interrupt::VectorLayer> =
            Arc::new(KvmVectorLayer::new(backend, IOAPIC_PINS, 4096));
        let unit = interrupt::VtdUnit::new(
            g.mem().clone(),
            vectors.clone(),
            interrupt::VtdConfig::default(),
        );
        let hierarchy = InterruptHierarchy::new(vectors, unit.clone());
        unit.set_hierarchy(Arc::downgrade(&hierarchy));
        Self {
            unit,
            hierarchy,
            mem: g.mem().clone(),
            gcmd: 0,
            tail: 0,
        }
    }

    /// Reads a 32-bit register.
    pub fn read32(&self, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        self.unit.mmio_read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    /// Reads a 64-bit register with one 8-byte access.
    pub fn read64(&self, offset: u64) -> u64 {
        let mut b = [0u8; 8];
        self.unit.mmio_read(offset, &mut b);
        u64::from_le_bytes(b)
    }

    /// Writes a 32-bit register.
    pub fn write32(&self, offset: u64, value: u32) {
        self.unit.mmio_write(offset, &value.to_le_bytes());
    }

    /// Writes a 64-bit register with one 8-byte access.
    pub fn write64(&self, offset: u64, value: u64) {
        self.unit.mmio_write(offset, &value.to_le_bytes());
    }

    /// GSTS.
    pub fn gsts(&self) -> u32 {
        self.read32(interrupt::vtd::spec::offset::GSTS)
    }

    /// Issues one GCMD command as Linux does (`writel(iommu->gcmd | cmd, GCMD)`) and checks
    /// that GSTS shows `status` afterwards (the handshake is synchronous: no polling).
    fn command(&mut self, cmd: u32, status: u32, set: bool) {
        use interrupt::vtd::spec::{gcmd, offset};
        let persistent = gcmd::QIE | gcmd::IRE | gcmd::CFI;
        let value = if set {
            self.gcmd | cmd
        } else {
            self.gcmd & !cmd
        };
        self.write32(offset::GCMD, value);
        if cmd & persistent != 0 {
            self.gcmd = value & persistent;
        }
        let gsts = self.gsts();
        assert_eq!(
            gsts & status != 0,
            set,
            "GCMD {value:#010x}: GSTS {gsts:#010x} does not show {status:#x} {}",
            if set { "set" } else { "clear" }
        );
    }

    /// Enables queued invalidation and interrupt remapping like Linux's
    /// `intel_enable_irq_remapping` (x2APIC mode when `eime`), then points the fault event
    /// at `fault_vector` on APIC `fault_dest` (FEUADDR holds destination bits 31:8) and
    /// unmasks it.
    pub fn enable(&mut self, eime: bool, fault_vector: u8, fault_dest: u32) {
        use interrupt::vtd::spec::{ecap, fsts, gcmd, gsts, irta, offset};
        let ecap_value = self.read64(offset::ECAP);
        for (bit, name) in [(ecap::QI, "QI"), (ecap::IR, "IR"), (ecap::EIM, "EIM")] {
            assert_ne!(ecap_value & bit, 0, "ECAP {ecap_value:#x} lacks {name}");
        }
        self.gcmd = self.gsts() & (gcmd::QIE | gcmd::IRE | gcmd::CFI);
        // dmar_fault(-1): nothing is pending yet; clear the status bits anyway.
        let status = self.read32(offset::FSTS);
        assert_eq!(status & fsts::PPF, 0, "fault pending at reset: {status:#x}");
        self.write32(offset::FSTS, fsts::PFO | fsts::PPF | fsts::PRO);
        // dmar_enable_qi: IQT = 0, IQA = base | QS 0, GCMD.QIE.
        self.tail = 0;
        self.write32(offset::IQT, 0);
        self.write64(offset::IQA, vtd_layout::IQ_BASE);
        self.command(gcmd::QIE, gsts::QIES, true);
        // iommu_set_irq_remapping: IRTA = base | EIME | S, GCMD.SIRTP, then a global IEC.
        let eime_bit = if eime { irta::EIME } else { 0 };
        self.write64(
            offset::IRTA,
            vtd_layout::IRT_BASE | eime_bit | vtd_layout::IRT_S,
        );
        self.command(gcmd::SIRTP, gsts::IRTPS, true);
        self.invalidate_all();
        // iommu_enable_irq_remapping: GCMD.IRE; CFI stays clear.
        self.command(gcmd::IRE, gsts::IRES, true);
        assert_eq!(self.gsts() & gsts::CFIS, 0, "CFI must start clear");
        assert!(self.unit.is_enabled());
        // dmar_set_interrupt: fault event message, then unmask.
        self.write32(offset::FEDATA, u32::from(fault_vector));
        self.write32(offset::FEADDR, 0xFEE0_0000 | ((fault_dest & 0xff) << 12));
        self.write32(offset::FEUADDR, fault_dest & !0xff);
        self.write32(offset::FECTL, 0);
    }

    /// Sets or clears GCMD.CFI (compatibility-format interrupts allowed).
    pub fn set_cfi(&mut self, on: bool) {
        use interrupt::vtd::spec::{gcmd, gsts};
        self.command(gcmd::CFI, gsts::CFIS, on);
    }

    /// Queues `descriptors` plus a wait descriptor with status write (like Linux's
    /// `qi_submit_sync`), moves the tail with one 32-bit IQT write and checks that the unit
    /// consumed everything synchronously: IQH caught up, no IQE, status written.
    pub fn submit_sync(&mut self, descriptors: &[[u64; 2]]) {
        use interrupt::vtd::spec::{desc, fsts, iq, offset};
        self.mem
            .write_obj(QI_IN_USE, GuestAddress(vtd_layout::WAIT_STATUS))
            .expect("wait status in guest RAM");
        let wait = [
            u64::from(desc::TYPE_WAIT)
                | desc::WAIT_SW
                | desc::WAIT_FN
                | (u64::from(QI_DONE) << desc::WAIT_STATUS_DATA_SHIFT),
            vtd_layout::WAIT_STATUS,
        ];
        for d in descriptors.iter().chain(std::iter::once(&wait)) {
            let at = vtd_layout::IQ_BASE + u64::from(self.tail) * iq::DESCRIPTOR_SIZE;
            self.mem
                .write_obj(d[0], GuestAddress(at))
                .expect("queue in guest RAM");
            self.mem
                .write_obj(d[1], GuestAddress(at + 8))
                .expect("queue in guest RAM");
            self.tail = (self.tail + 1) % vtd_layout::IQ_ENTRIES;
        }
        self.write32(offset::IQT, self.tail << iq::INDEX_SHIFT);
        let head = (self.read64(offset::IQH) >> iq::INDEX_SHIFT) as u32;
        let status = self.read32(offset::FSTS);
        let done: u32 = self
            .mem
            .read_obj(GuestAddress(vtd_layout::WAIT_STATUS))
            .expect("wait status in guest RAM");
        assert_eq!(
            (head, status & fsts::IQE, done),
            (self.tail, 0, QI_DONE),
            "invalidation queue: (IQH, FSTS.IQE, wait status) after IQT = {}",
            self.tail
        );
    }

    /// Global interrupt-entry-cache invalidation + wait.
    pub fn invalidate_all(&mut self) {
        use interrupt::vtd::spec::desc;
        self.submit_sync(&[[u64::from(desc::TYPE_IEC), 0]]);
    }

    /// Index-selective IEC of `2^mask` entries from `index` + wait (`qi_flush_iec`).
    pub fn invalidate(&mut self, index: u16, mask: u8) {
        use interrupt::vtd::spec::desc;
        let qw0 = u64::from(desc::TYPE_IEC)
            | desc::IEC_INDEX_SELECTIVE
            | (u64::from(mask) << desc::IEC_IM_SHIFT)
            | (u64::from(index) << desc::IEC_IIDX_SHIFT);
        self.submit_sync(&[[qw0, 0]]);
    }

    /// Stores IRTE `index` as Linux's `modify_irte` does (two 64-bit stores, high half
    /// last) and invalidates it.
    pub fn set_irte(&mut self, index: u16, irte: interrupt::vtd::spec::Irte) {
        self.write_irte_raw(index, irte);
        self.invalidate(index, 0);
    }

    /// Stores IRTE `index` without invalidating.
    pub fn write_irte_raw(&self, index: u16, irte: interrupt::vtd::spec::Irte) {
        let at = vtd_layout::IRT_BASE + u64::from(index) * interrupt::vtd::spec::Irte::SIZE;
        self.mem
            .write_obj(irte.lo, GuestAddress(at))
            .expect("IRTE in guest RAM");
        self.mem
            .write_obj(irte.hi, GuestAddress(at + 8))
            .expect("IRTE in guest RAM");
    }

    /// FSTS.
    pub fn fault_status(&self) -> u32 {
        self.read32(interrupt::vtd::spec::offset::FSTS)
    }

    /// Fault recording register `i`, read as two 64-bit halves.
    pub fn fault_record(&self, i: usize) -> interrupt::vtd::spec::FaultRecord {
        let at = interrupt::vtd::spec::offset::FRCD + 16 * i as u64;
        interrupt::vtd::spec::FaultRecord {
            lo: self.read64(at),
            hi: self.read64(at + 8),
        }
    }

    /// Services fault record `i` and the fault status like Linux's `dmar_fault`: writes 1
    /// to F (bit 31 of the record's last dword), then clears FSTS.
    pub fn clear_fault(&self, i: usize) {
        use interrupt::vtd::spec::{fsts, offset};
        self.write32(offset::FRCD + 16 * i as u64 + 12, 1 << 31);
        self.write32(offset::FSTS, fsts::PFO | fsts::PPF | fsts::PRO);
    }
}

/// A present, remapped-format IRTE as Linux writes it for a fixed, edge interrupt:
/// `vector` to physical destination `dest` (x2APIC ID under EIME), source validation
/// SVT = 01, SQ = 0 against `sid`.
pub fn irte(vector: u8, dest: u32, sid: interrupt::RequesterId) -> interrupt::vtd::spec::Irte {
    use interrupt::vtd::spec::Irte;
    Irte {
        lo: Irte::P
            | (u64::from(vector) << Irte::VECTOR_SHIFT)
            | (u64::from(dest) << Irte::DST_SHIFT),
        hi: u64::from(sid.0) | (1 << 18),
    }
}
