//! Interrupt-path benchmark on the host's `/dev/kvm` (`harness = false`, prints tables).
//!
//! ```text
//! cargo bench -p tests --bench interrupts              # full run (< 60 s)
//! cargo bench -p tests --bench interrupts -- --quick   # smaller counts, for CI
//! ```
//!
//! The VM is created as `vmm/src/vm.rs` does it (split irqchip with 24 IOAPIC pins enabled
//! before one vCPU is created); the vCPU never runs, so injected interrupts only set bits in
//! its LAPIC.
//!
//! Part A, MSI-X bring-up: a PCI function with an MSI-X capability of `n` vectors (functions
//! of at most 2048 entries, the largest table MSI-X can describe: 4096 vectors use two
//! functions of 2048) is enabled, each table entry is programmed the way a guest does it
//! (address, data, then vector control = 0, one MMIO write each), then every vector is fired
//! once. "batched" is the vector layer as implemented (route changes are committed with one
//! `KVM_SET_GSI_ROUTING` when a changed vector fires); "per-change" calls
//! `VectorLayer::commit` after every unmask write, which is what a VMM that rewrites the
//! route table on every change does. KVM has 4096 routes, the first 24 reserved for the
//! IOAPIC pins, so at 4096 vectors the last ones go through the `KVM_SIGNAL_MSI` slow path.
//!
//! Part B, interrupt rate: fires per second through each layer of the hierarchy, against a
//! raw `eventfd` write on a KVM irqfd bound to the same routed GSI.
//!
//! Part C, IMS beyond MSI-X's limit: an `irqtest` device with an IMS table of `n` entries
//! (up to 65536) is programmed and unmasked entry by entry through its BAR (address, data,
//! control: three MMIO writes), then every entry is fired once through its IMS_FIRE
//! register. The first 4072 entries get KVM routes, the rest go through `KVM_SIGNAL_MSI`;
//! bring-up per entry should not grow with `n`, and the VMM's resident memory growth per
//! entry is reported.
//!
//! A host without a usable `/dev/kvm` prints `SKIPPED: <why>` and exits 0. A fire that a
//! domain dropped or did not deliver (a lost interrupt) ends the run with status 1, after
//! the tables.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use devices::irqtest::{ims as ims_layout, regs, IrqTest, IRQTEST_IMS_BAR};
use interrupt::{
    DeviceDomain, DomainKind, InterruptHierarchy, KvmVectorLayer, MsiMessage, NoRemap, RequesterId,
    RoutingBackend, VectorLayerStats,
};
use kvm_bindings::{kvm_enable_cap, kvm_irq_routing_entry, KVM_CAP_SPLIT_IRQCHIP};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use pci::msix::{control, MSIX_ENTRY_SIZE, MSIX_MAX_VECTORS};
use pci::{ConfigSpace, MsixCapability, PciDevice};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// IOAPIC pins reserved in the split irqchip (GSIs `0..24`), as in the vmm.
const IOAPIC_PINS: u32 = 24;
/// BAR holding the MSI-X table (offset 0) and PBA.
const TABLE_BAR: usize = 2;
const PBA_OFFSET: u64 = 0x8000;

// ---------------------------------------------------------------------------------------
// KVM set-up
// ---------------------------------------------------------------------------------------

/// A VM with a split irqchip and one (never run) vCPU.
struct BenchVm {
    vm: Arc<VmFd>,
    _vcpu: VcpuFd,
    /// Routes KVM accepts (`KVM_CAP_IRQ_ROUTING`), normally 4096.
    max_routes: u32,
}

fn create_vm(kvm: &Kvm) -> Result<BenchVm, String> {
    for (cap, name) in [
        (Cap::SplitIrqchip, "KVM_CAP_SPLIT_IRQCHIP"),
        (Cap::IrqRouting, "KVM_CAP_IRQ_ROUTING"),
        (Cap::Irqfd, "KVM_CAP_IRQFD"),
        (Cap::SignalMsi, "KVM_CAP_SIGNAL_MSI"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(format!("{name} is not supported"));
        }
    }
    let vm = kvm.create_vm().map_err(|e| format!("KVM_CREATE_VM: {e}"))?;
    let split = kvm_enable_cap {
        cap: KVM_CAP_SPLIT_IRQCHIP,
        args: [u64::from(IOAPIC_PINS), 0, 0, 0],
        ..Default::default()
    };
    vm.enable_cap(&split)
        .map_err(|e| format!("enabling KVM_CAP_SPLIT_IRQCHIP: {e}"))?;
    let vcpu = vm
        .create_vcpu(0)
        .map_err(|e| format!("KVM_CREATE_VCPU: {e}"))?;
    let max_routes = kvm
        .check_extension_int(Cap::IrqRouting)
        .max(IOAPIC_PINS as i32 + 1) as u32;
    Ok(BenchVm {
        vm: Arc::new(vm),
        _vcpu: vcpu,
        max_routes,
    })
}

/// Raises the soft open-file limit to the hard one: every vector owns an eventfd.
fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local, properly initialised struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

/// The real KVM backend, counting what crosses into the kernel. With `teardown` set, route
/// and irqfd changes are skipped (the VM is about to be closed, which drops them all).
struct CountingBackend {
    vm: Arc<VmFd>,
    set_routing_calls: AtomicU64,
    entries_copied: AtomicU64,
    teardown: AtomicBool,
}

impl CountingBackend {
    fn new(vm: Arc<VmFd>) -> Arc<Self> {
        Arc::new(Self {
            vm,
            set_routing_calls: AtomicU64::new(0),
            entries_copied: AtomicU64::new(0),
            teardown: AtomicBool::new(false),
        })
    }

    fn counters(&self) -> (u64, u64) {
        (
            self.set_routing_calls.load(Ordering::Relaxed),
            self.entries_copied.load(Ordering::Relaxed),
        )
    }
}

impl RoutingBackend for CountingBackend {
    fn set_gsi_routing(&self, routes: &[kvm_irq_routing_entry]) -> interrupt::Result<()> {
        if self.teardown.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.set_routing_calls.fetch_add(1, Ordering::Relaxed);
        self.entries_copied
            .fetch_add(routes.len() as u64, Ordering::Relaxed);
        RoutingBackend::set_gsi_routing(&*self.vm, routes)
    }

    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> interrupt::Result<()> {
        RoutingBackend::register_irqfd(&*self.vm, fd, gsi)
    }

    fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> interrupt::Result<()> {
        if self.teardown.load(Ordering::Relaxed) {
            return Ok(());
        }
        RoutingBackend::unregister_irqfd(&*self.vm, fd, gsi)
    }

    fn signal_msi(&self, msg: MsiMessage) -> interrupt::Result<()> {
        RoutingBackend::signal_msi(&*self.vm, msg)
    }
}

fn hierarchy(vm: &BenchVm) -> (Arc<CountingBackend>, Arc<InterruptHierarchy>) {
    let backend = CountingBackend::new(vm.vm.clone());
    let layer = Arc::new(KvmVectorLayer::new(
        backend.clone(),
        IOAPIC_PINS,
        vm.max_routes,
    ));
    (backend, InterruptHierarchy::new(layer, Arc::new(NoRemap)))
}

/// Fixed, edge, physical destination APIC 0, vector `0x30..=0xef`.
fn msg(i: usize) -> MsiMessage {
    MsiMessage::compose(0, false, 0x30 + (i % 0xc0) as u8, 0, false)
}

// ---------------------------------------------------------------------------------------
// Part A: MSI-X bring-up
// ---------------------------------------------------------------------------------------

/// One PCI function's MSI-X state, driven like a guest would drive it.
struct MsixFunction {
    config: ConfigSpace,
    msix: MsixCapability,
    domain: Arc<DeviceDomain>,
}

impl MsixFunction {
    fn new(h: &Arc<InterruptHierarchy>, slot: u8, vectors: usize) -> Self {
        let mut config = ConfigSpace::new(0x1b36, 0x0110, 0xff, 0, 0, 1);
        let domain = h.create_domain(
            &format!("bench-{slot}"),
            DomainKind::MsiX,
            RequesterId::pci(0, slot, 0),
            vectors,
            None,
        );
        let msix = MsixCapability::new(
            &mut config,
            vectors,
            TABLE_BAR,
            0,
            TABLE_BAR,
            PBA_OFFSET,
            domain.clone(),
        )
        .expect("valid MSI-X capability");
        Self {
            config,
            msix,
            domain,
        }
    }

    fn set_control(&mut self, ctrl: u16) {
        let off = self.msix.offset() + 2;
        assert!(self.config.guest_write(off, &ctrl.to_le_bytes()));
        self.msix.update(&self.config);
    }

    fn write_table(&mut self, offset: u64, value: u32) {
        assert!(self.msix.bar_write(TABLE_BAR, offset, &value.to_le_bytes()));
    }

    /// Address, data, then vector control = 0: one 32-bit MMIO write each.
    fn program_and_unmask(&mut self, i: usize, m: MsiMessage) {
        let base = i as u64 * MSIX_ENTRY_SIZE;
        self.write_table(base, m.address_lo());
        self.write_table(base + 4, m.address_hi());
        self.write_table(base + 8, m.data);
        self.write_table(base + 12, 0);
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Commit {
    Batched,
    PerChange,
}

impl Commit {
    fn name(self) -> &'static str {
        match self {
            Commit::Batched => "batched",
            Commit::PerChange => "per-change",
        }
    }
}

#[derive(Clone, Copy, Default)]
struct BringUp {
    /// Enable + program/unmask every entry.
    unmask: Duration,
    /// First fire of every vector.
    fire: Duration,
    /// `KVM_SET_GSI_ROUTING` calls (`stats().commits`).
    commits: u64,
    /// Route entries handed to the kernel over all those calls.
    entries: u64,
    stats: VectorLayerStats,
    deliveries: u64,
    dropped: u64,
    /// MSI-X disable (every vector released): time and routing calls.
    disable: Option<(Duration, u64)>,
}

impl BringUp {
    fn total(&self) -> Duration {
        self.unmask + self.fire
    }
}

fn bring_up(kvm: &Kvm, n: usize, mode: Commit, measure_disable: bool) -> Result<BringUp, String> {
    let vm = create_vm(kvm)?;
    let (backend, h) = hierarchy(&vm);
    let layer = h.vector_layer().clone();
    let mut funcs: Vec<MsixFunction> = (0..n.div_ceil(MSIX_MAX_VECTORS))
        .map(|k| {
            let size = (n - k * MSIX_MAX_VECTORS).min(MSIX_MAX_VECTORS);
            MsixFunction::new(&h, 3 + k as u8, size)
        })
        .collect();

    let t0 = Instant::now();
    for f in &mut funcs {
        f.set_control(control::ENABLE);
    }
    let mut global = 0;
    for f in &mut funcs {
        for i in 0..f.msix.vectors() {
            f.program_and_unmask(i, msg(global));
            global += 1;
            if mode == Commit::PerChange {
                layer.commit().map_err(|e| e.to_string())?;
            }
        }
    }
    let t1 = Instant::now();
    for f in &funcs {
        for i in 0..f.msix.vectors() {
            if !f.msix.fire(i) {
                return Err(format!("MSI-X fire of vector {i} was refused"));
            }
        }
    }
    let t2 = Instant::now();

    let stats = layer.stats();
    let (calls, entries) = backend.counters();
    assert_eq!(
        calls, stats.commits,
        "every commit is one KVM_SET_GSI_ROUTING"
    );
    let (mut deliveries, mut dropped) = (0, 0);
    for f in &funcs {
        for s in f.domain.snapshot() {
            deliveries += s.deliveries;
            dropped += s.dropped;
        }
    }
    let mut r = BringUp {
        unmask: t1 - t0,
        fire: t2 - t1,
        commits: stats.commits,
        entries,
        stats,
        deliveries,
        dropped,
        disable: None,
    };
    if measure_disable {
        let before = backend.counters().0;
        let t = Instant::now();
        for f in &mut funcs {
            f.set_control(0);
        }
        r.disable = Some((t.elapsed(), backend.counters().0 - before));
    }
    // Closing the VM drops routes and irqfds wholesale; skip the per-vector teardown.
    backend.teardown.store(true, Ordering::Relaxed);
    drop(funcs);
    Ok(r)
}

fn median_by_time(mut runs: Vec<BringUp>) -> BringUp {
    runs.sort_by_key(BringUp::total);
    runs[runs.len() / 2]
}

fn fmt_dur(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1_000.0 {
        format!("{us:.1} us")
    } else if us < 1_000_000.0 {
        format!("{:.2} ms", us / 1e3)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

fn part_a(kvm: &Kvm, quick: bool) -> Result<(), String> {
    let sizes: &[usize] = if quick {
        &[1, 64, 1024]
    } else {
        &[1, 64, 1024, 4096]
    };
    let reps = if quick { 1 } else { 3 };
    println!("A. MSI-X bring-up: enable, program + unmask one entry at a time (4 MMIO writes");
    println!("   per entry), fire every vector once. Median of {reps} run(s), a fresh VM each.");
    println!();
    println!(
        "{:>5}  {:<10} {:>10} {:>10} {:>12} {:>9} {:>11} {:>11} {:>9}",
        "n", "commit", "unmask", "fire", "bring-up", "/vector", "SET_GSI_RT", "entries", "slow-MSI"
    );
    let mut batched: Vec<(usize, BringUp)> = Vec::new();
    let mut per_change: Vec<(usize, BringUp)> = Vec::new();
    let mut notes = String::new();
    let mut lost = Vec::new();
    for &n in sizes {
        for mode in [Commit::Batched, Commit::PerChange] {
            let runs = (0..reps)
                .map(|rep| bring_up(kvm, n, mode, mode == Commit::Batched && rep == 0))
                .collect::<Result<Vec<_>, _>>()?;
            let disable = runs[0].disable;
            let mut r = median_by_time(runs);
            r.disable = disable;
            println!(
                "{:>5}  {:<10} {:>10} {:>10} {:>12} {:>9} {:>11} {:>11} {:>9}",
                n,
                mode.name(),
                fmt_dur(r.unmask),
                fmt_dur(r.fire),
                fmt_dur(r.total()),
                fmt_dur(r.total() / n as u32),
                r.commits,
                r.entries,
                r.stats.slow_path_signals
            );
            if r.deliveries != n as u64 || r.dropped != 0 {
                lost.push(format!(
                    "n={n} {}: {} of {n} fires delivered, {} dropped",
                    mode.name(),
                    r.deliveries,
                    r.dropped
                ));
            }
            if let Some((t, calls)) = r.disable {
                let _ = writeln!(
                    notes,
                    "   n={n}: MSI-X disable (release every vector) took {} and {calls} \
                     KVM_SET_GSI_ROUTING call(s){}",
                    fmt_dur(t),
                    if calls == 0 {
                        " (route removal waits for the next commit)"
                    } else {
                        ""
                    }
                );
            }
            match mode {
                Commit::Batched => batched.push((n, r)),
                Commit::PerChange => per_change.push((n, r)),
            }
        }
    }
    println!();
    let max_routes = create_vm(kvm)?.max_routes;
    let routable = max_routes.saturating_sub(IOAPIC_PINS) as usize;
    for (n, r) in &batched {
        if *n > routable {
            println!(
                "   n={n}: KVM has {max_routes} routes, {IOAPIC_PINS} reserved for the IOAPIC: \
                 {} vectors routed (irqfd), {} delivered with KVM_SIGNAL_MSI (expected {})",
                r.stats.routes,
                r.stats.slow_path_signals,
                n - routable
            );
        }
    }
    print!("{notes}");

    // Scaling: per-vector cost relative to n = 64 (1.0x means linear growth).
    let reference = |v: &[(usize, BringUp)]| v.iter().find(|(n, _)| *n == 64).map(|(_, r)| *r);
    println!();
    println!("   scaling vs n=64 (bring-up time ratio; linear growth = n/64):");
    for (label, v) in [("batched", &batched), ("per-change", &per_change)] {
        let Some(base) = reference(v) else { continue };
        let mut line = format!("   {label:<10}");
        for (n, r) in v.iter().filter(|(n, _)| *n > 64) {
            let ratio = r.total().as_secs_f64() / base.total().as_secs_f64();
            let _ = write!(
                line,
                "  n={n}: {ratio:.1}x (linear {}x, per-vector {:.2}x)",
                n / 64,
                ratio * 64.0 / *n as f64
            );
        }
        println!("{line}");
    }
    if let (Some((n, b)), Some((_, p))) = (batched.last(), per_change.last()) {
        println!(
            "   at n={n}: per-change is {:.1}x slower than batched ({} vs {} routing calls, \
             {} vs {} route entries copied into KVM)",
            p.total().as_secs_f64() / b.total().as_secs_f64(),
            p.commits,
            b.commits,
            p.entries,
            b.entries
        );
    }
    if !lost.is_empty() {
        return Err(format!("interrupts lost: {}", lost.join("; ")));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Part B: interrupt rate
// ---------------------------------------------------------------------------------------

/// One measured path of part B.
struct Rate {
    name: &'static str,
    iters: u64,
    /// Wall-clock ns per fire, median over rounds.
    ns: f64,
    /// User-mode CPU ns per fire (the VMM's own share), over all rounds.
    user_ns: f64,
}

/// User-mode CPU time of the calling thread.
fn thread_user_time() -> Duration {
    // SAFETY: getrusage fills the zero-initialised struct it is given.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut ru);
        ru
    };
    Duration::new(ru.ru_utime.tv_sec as u64, ru.ru_utime.tv_usec as u32 * 1000)
}

type Path<'a> = (&'static str, u64, Box<dyn FnMut() + 'a>);

/// Runs every path in `ROUNDS` interleaved rounds (so frequency ramps and noise hit them
/// alike) after a short warm-up, and reports the median round of each.
fn measure_interleaved(paths: &mut [Path<'_>]) -> Vec<Rate> {
    const ROUNDS: u64 = 7;
    let mut ns: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
    let mut user = vec![Duration::ZERO; paths.len()];
    for (_, iters, f) in paths.iter_mut() {
        for _ in 0..(*iters / 100).min(10_000) {
            f();
        }
    }
    for _ in 0..ROUNDS {
        for (k, (_, iters, f)) in paths.iter_mut().enumerate() {
            let n = *iters / ROUNDS;
            let u = thread_user_time();
            let t = Instant::now();
            for _ in 0..n {
                f();
            }
            ns[k].push(t.elapsed().as_secs_f64() * 1e9 / n as f64);
            user[k] += thread_user_time().saturating_sub(u);
        }
    }
    paths
        .iter()
        .zip(ns.iter_mut().zip(user))
        .map(|((name, iters, _), (v, u))| {
            v.sort_by(f64::total_cmp);
            let n = *iters / ROUNDS * ROUNDS;
            Rate {
                name,
                iters: n,
                ns: v[v.len() / 2],
                user_ns: u.as_secs_f64() * 1e9 / n as f64,
            }
        })
        .collect()
}

fn part_b(kvm: &Kvm, quick: bool) -> Result<(), String> {
    let iters: u64 = if quick { 100_000 } else { 1_000_000 };
    let slow_iters = iters / 10;
    let vm = create_vm(kvm)?;
    let (_backend, h) = hierarchy(&vm);
    let layer = h.vector_layer().clone();
    let e = |e: interrupt::Error| e.to_string();

    // A domain vector, routed and committed by its first fire.
    let d = h.create_domain("rate", DomainKind::MsiX, RequesterId::pci(0, 3, 0), 1, None);
    d.set_message(0, Some(msg(0))).map_err(e)?;
    d.set_masked(0, false).map_err(e)?;
    d.fire(0).map_err(e)?;
    let gsi = d.snapshot()[0].gsi.ok_or("domain vector got no GSI")?;

    // A raw irqfd of our own on the same (routed) GSI.
    let raw = EventFd::new(EFD_NONBLOCK).map_err(|e| format!("eventfd: {e}"))?;
    vm.vm
        .register_irqfd(&raw, gsi)
        .map_err(|e| format!("KVM_IRQFD: {e}"))?;

    // A bare vector of the vector layer.
    let v = layer.allocate(None).map_err(e)?;
    layer.set_route(&v, Some(msg(1)));
    layer.commit().map_err(e)?;

    // An MSI-X capability with one unmasked entry.
    let mut f = MsixFunction::new(&h, 4, 1);
    f.set_control(control::ENABLE);
    f.program_and_unmask(0, msg(2));

    // The irqtest device, driven through its config space and BARs like a guest.
    let mut irqtest = IrqTest::new(&h, RequesterId::pci(0, 5, 0), 4).map_err(|e| e.to_string())?;
    let cap = (0x40..0x100)
        .step_by(4)
        .find(|&o| irqtest.read_config(o) & 0xff == 0x11)
        .ok_or("irqtest has no MSI-X capability")?;
    irqtest.write_config(cap + 2, &control::ENABLE.to_le_bytes());
    for (off, val) in [
        (0u64, msg(3).address_lo()),
        (4, 0),
        (8, msg(3).data),
        (12, 0),
    ] {
        irqtest.bar_write(TABLE_BAR, off, &val.to_le_bytes());
    }
    let fire_cmd = 0u32.to_le_bytes(); // vector 0, count 1

    let slow = msg(4);
    let mut paths: Vec<Path<'_>> = vec![
        (
            "raw eventfd write (KVM irqfd)",
            iters,
            Box::new(|| raw.write(1).expect("irqfd write")),
        ),
        (
            "VectorLayer::fire",
            iters,
            Box::new(|| layer.fire(&v).expect("vector fire")),
        ),
        (
            "DeviceDomain::fire",
            iters,
            Box::new(|| d.fire(0).expect("domain fire")),
        ),
        (
            "MsixCapability::fire",
            iters,
            Box::new(|| assert!(f.msix.fire(0))),
        ),
        (
            "irqtest FIRE register (BAR0 write)",
            iters,
            Box::new(|| irqtest.bar_write(0, regs::FIRE, &fire_cmd)),
        ),
        (
            "KVM_SIGNAL_MSI slow path (no route)",
            slow_iters,
            Box::new(|| layer.signal_msi(slow).expect("KVM_SIGNAL_MSI")),
        ),
    ];
    let rows = measure_interleaved(&mut paths);
    drop(paths);

    // Every fire of every domain (the bare vector has none) was delivered: nothing dropped
    // or lost on the way to KVM.
    for dom in h.domains() {
        for s in dom.snapshot() {
            if s.fires == 0 {
                continue;
            }
            if s.dropped != 0 || s.deliveries != s.fires {
                return Err(format!(
                    "interrupts lost: domain {:?} vector {}: {} fires, {} delivered, {} dropped",
                    dom.name(),
                    s.index,
                    s.fires,
                    s.deliveries,
                    s.dropped
                ));
            }
        }
    }
    let mut b = [0u8; 4];
    irqtest.bar_read(0, regs::REJECTED, &mut b);
    if u32::from_le_bytes(b) != 0 {
        return Err("irqtest rejected FIRE writes".into());
    }

    println!("B. Interrupt rate: one vector fired in a loop (the vCPU does not run, so KVM");
    println!("   sets the vector in the LAPIC IRR each time; repeats coalesce there). Paths run");
    println!("   interleaved in 7 rounds; ns/fire is the median round, user ns/fire the VMM's");
    println!("   own (user-mode, tick-sampled) CPU time per fire; the rest is the kernel's.");
    println!();
    println!(
        "   {:<38} {:>9} {:>9} {:>11} {:>8} {:>10}",
        "path", "iters", "ns/fire", "fires/s", "vs raw", "user ns"
    );
    let raw_ns = rows[0].ns;
    for r in &rows {
        println!(
            "   {:<38} {:>9} {:>9.0} {:>11.0} {:>7.2}x {:>10.0}",
            r.name,
            r.iters,
            r.ns,
            1e9 / r.ns,
            r.ns / raw_ns,
            r.user_ns
        );
    }
    println!();
    println!(
        "   DeviceDomain::fire vs raw irqfd write: {:+.0} ns/fire wall ({:+.1}%), {:+.0} ns/fire \
         user-mode CPU",
        rows[2].ns - raw_ns,
        (rows[2].ns / raw_ns - 1.0) * 100.0,
        rows[2].user_ns - rows[0].user_ns
    );
    vm.vm
        .unregister_irqfd(&raw, gsi)
        .map_err(|e| format!("KVM_IRQFD deassign: {e}"))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Part C: IMS beyond MSI-X's limit
// ---------------------------------------------------------------------------------------

/// Resident set size of this process, in bytes (`VmRSS` of /proc/self/status).
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

struct ImsRun {
    n: usize,
    program: Duration,
    /// Firing the routed entries, and the entries past the routes.
    fire_routed: (Duration, usize),
    fire_slow: (Duration, usize),
    commits: u64,
    slow: u64,
    rss_per_entry: f64,
    delivered: u64,
    dropped: u64,
}

fn ims_bring_up(kvm: &Kvm, n: usize) -> Result<ImsRun, String> {
    let vm = create_vm(kvm)?;
    let (backend, h) = hierarchy(&vm);
    let rss0 = rss_bytes();
    let mut dev =
        IrqTest::with_ims(&h, RequesterId::pci(0, 6, 0), 1, n).map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    for i in 0..n {
        let base = i as u64 * ims_layout::ENTRY_SIZE;
        let m = msg(i);
        dev.bar_write(IRQTEST_IMS_BAR, base, &m.address.to_le_bytes());
        dev.bar_write(IRQTEST_IMS_BAR, base + 8, &m.data.to_le_bytes());
        dev.bar_write(
            IRQTEST_IMS_BAR,
            base + ims_layout::CTRL,
            &0u32.to_le_bytes(),
        );
    }
    let program = t0.elapsed();
    let routed = h.vector_layer().stats().allocated;
    let fire = |dev: &mut IrqTest, range: std::ops::Range<usize>| {
        let t = Instant::now();
        for i in range.clone() {
            dev.bar_write(0, regs::IMS_FIRE, &(i as u32).to_le_bytes());
        }
        (t.elapsed(), range.len())
    };
    let fire_routed = fire(&mut dev, 0..routed.min(n));
    let fire_slow = fire(&mut dev, routed.min(n)..n);
    let rss1 = rss_bytes();
    let stats = h.vector_layer().stats();
    let (mut delivered, mut dropped) = (0, 0);
    for s in dev
        .ims()
        .ok_or("irqtest has no IMS table")?
        .domain()
        .snapshot()
    {
        delivered += s.deliveries;
        dropped += s.dropped;
    }
    backend.teardown.store(true, Ordering::Relaxed);
    drop(dev);
    Ok(ImsRun {
        n,
        program,
        fire_routed,
        fire_slow,
        commits: stats.commits,
        slow: stats.slow_path_signals,
        rss_per_entry: rss1.saturating_sub(rss0) as f64 / n as f64,
        delivered,
        dropped,
    })
}

fn part_c(kvm: &Kvm, quick: bool) -> Result<(), String> {
    let sizes: &[usize] = if quick {
        &[4096, 32768]
    } else {
        &[1024, 4096, 16384, 32768, 65536]
    };
    println!("C. IMS (irqtest ims=n): program + unmask every entry (3 MMIO writes each), then");
    println!("   fire each once; entries past KVM's routes are delivered with KVM_SIGNAL_MSI.");
    println!();
    println!(
        "{:>6} {:>10} {:>9} {:>7} {:>9} {:>11} {:>7} {:>10} {:>10} {:>10}",
        "n",
        "bring-up",
        "/entry",
        "routed",
        "slow-MSI",
        "SET_GSI_RT",
        "fire",
        "ns/routed",
        "ns/slow",
        "RSS/entry"
    );
    let mut runs = Vec::new();
    for &n in sizes {
        let r = ims_bring_up(kvm, n)?;
        let per = |(d, k): (Duration, usize)| {
            if k == 0 {
                "-".to_string()
            } else {
                format!("{:.0}", d.as_secs_f64() * 1e9 / k as f64)
            }
        };
        println!(
            "{:>6} {:>10} {:>9} {:>7} {:>9} {:>11} {:>7} {:>10} {:>10} {:>8.0} B",
            n,
            fmt_dur(r.program),
            fmt_dur(r.program / n as u32),
            r.fire_routed.1,
            r.slow,
            r.commits,
            fmt_dur(r.fire_routed.0 + r.fire_slow.0),
            per(r.fire_routed),
            per(r.fire_slow),
            r.rss_per_entry
        );
        runs.push(r);
    }
    if let Some(base) = runs.iter().find(|r| r.n == 4096) {
        let per = |r: &ImsRun| r.program.as_secs_f64() / r.n as f64;
        for r in runs.iter().filter(|r| r.n > 4096) {
            println!(
                "   n={}: bring-up per entry {:.2}x that of n=4096 (1.0x = linear growth)",
                r.n,
                per(r) / per(base)
            );
        }
    }
    let lost: Vec<String> = runs
        .iter()
        .filter(|r| r.delivered != r.n as u64 || r.dropped != 0)
        .map(|r| {
            format!(
                "n={}: {} of {} delivered, {} dropped",
                r.n, r.delivered, r.n, r.dropped
            )
        })
        .collect();
    if !lost.is_empty() {
        return Err(format!("IMS interrupts lost: {}", lost.join("; ")));
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("usage: cargo bench -p tests --bench interrupts [-- --quick]");
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let start = Instant::now();
    println!(
        "interrupt benchmark ({} mode)",
        if quick { "quick" } else { "full" }
    );

    let kvm = match Kvm::new() {
        Ok(k) => k,
        Err(e) => {
            println!("SKIPPED: /dev/kvm is not usable ({e}); no interrupt benchmark was run.");
            return;
        }
    };
    if let Err(e) = create_vm(&kvm) {
        println!("SKIPPED: cannot create a split-irqchip VM on /dev/kvm ({e}); no benchmark run.");
        return;
    }
    let fds = raise_fd_limit();
    if fds < 4096 + 256 {
        println!("note: open-file limit {fds} is below the 4096 eventfds of the largest case");
    }
    println!();

    if let Err(e) = part_a(&kvm, quick) {
        eprintln!("bring-up benchmark failed: {e}");
        std::process::exit(1);
    }
    println!();
    if let Err(e) = part_b(&kvm, quick) {
        eprintln!("rate benchmark failed: {e}");
        std::process::exit(1);
    }
    println!();
    if let Err(e) = part_c(&kvm, quick) {
        eprintln!("IMS benchmark failed: {e}");
        std::process::exit(1);
    }
    println!();
    println!("done in {:.1} s", start.elapsed().as_secs_f64());
}
