//! Fuzzes the guest-facing PCI path of an `irqtest` device behind a `PciRoot`: config
//! accesses of any size and offset through CF8/CFC and ECAM, BAR accesses (registers, MSI-X
//! table and PBA) directly and through the PCI MMIO window, fires of any vector, and
//! structured MSI/MSI-X programming, all on a `RecordingBackend` (no KVM).
//!
//! After every operation it checks invariants that hold for any guest input:
//! - the vector layer's books balance (routes <= allocated; GSIs unique, in range, each with
//!   exactly one irqfd; every committed route belongs to an allocated GSI);
//! - each domain vector's mask equals the effective mask the guest-visible registers define
//!   (MSI-X: enable, function mask, entry mask; MSI: enable, MME, per-vector mask);
//! - the MSI-X PBA and MSI pending register show exactly the domains' pending bits, and only
//!   masked vectors are pending;
//! - a vector delivered during the operation is unmasked, its capability enabled, and its
//!   interrupt went out with its current message (committed route, or KVM_SIGNAL_MSI);
//! - deliveries + drops never exceed fires; CF8/CFC and ECAM read the same dwords.

#![no_main]

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

use devices::irqtest::{regs, IrqTest, IRQTEST_MAGIC, IRQTEST_PBA_OFFSET, IRQTEST_VENDOR};
use interrupt::{
    DeviceDomain, InterruptHierarchy, RecordingBackend, RemapOutcome, RequesterId, VectorSnapshot,
};
use pci::msix::{control as msix_ctrl, MSIX_ENTRY_SIZE};
use pci::{PciConfigIo, PciDevice, PciEcam, PciMmioWindow, PciRoot};
use vm_allocator::AddressAllocator;
use vm_device::bus::{MmioAddress, PioAddress};
use vm_device::{DeviceMmio, DevicePio};
use vmm_fuzz::{cap_id, cf8_address, ecam_offset, find_capability, le_bytes, Recording, Size};

/// Reserved (IOAPIC) GSIs, as in the vmm.
const RESERVED: u32 = 24;
const MSIX_BAR: usize = 2;

#[derive(Arbitrary, Debug, Clone, Copy)]
enum VectorCount {
    One,
    Two,
    Three,
    Eight,
    SixtyFour,
    SixtyFive,
    Max,
    Other(u8),
}

impl VectorCount {
    fn get(self) -> usize {
        match self {
            VectorCount::One => 1,
            VectorCount::Two => 2,
            VectorCount::Three => 3,
            VectorCount::Eight => 8,
            VectorCount::SixtyFour => 64,
            VectorCount::SixtyFive => 65,
            VectorCount::Max => 2048,
            VectorCount::Other(n) => usize::from(n).max(1),
        }
    }
}

/// How many GSIs the vector layer has above the reserved ones (small limits exercise the
/// KVM_SIGNAL_MSI fallback).
#[derive(Arbitrary, Debug, Clone, Copy)]
enum GsiLimit {
    Kvm,
    None,
    Few(u8),
}

impl GsiLimit {
    fn get(self) -> u32 {
        match self {
            GsiLimit::Kvm => 4096,
            GsiLimit::None => RESERVED,
            GsiLimit::Few(n) => RESERVED + u32::from(n % 16),
        }
    }
}

/// Which function a config access addresses.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Target {
    Irqtest,
    HostBridge,
    Bdf { bus: u8, dev: u8, func: u8 },
}

impl Target {
    fn bdf(self, slot: u8) -> (u8, u8, u8) {
        match self {
            Target::Irqtest => (0, slot, 0),
            Target::HostBridge => (0, 0, 0),
            Target::Bdf { bus, dev, func } => (bus, dev & 0x1f, func & 7),
        }
    }
}

/// Where a BAR access lands.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Offset {
    /// Table entry `index`, byte `byte` (0..16) of it.
    Table {
        index: u16,
        byte: u8,
    },
    /// PBA byte.
    Pba(u16),
    /// Register block / anywhere in a 64 KiB BAR.
    Near(u16),
    Raw(u64),
}

impl Offset {
    fn get(self) -> u64 {
        match self {
            Offset::Table { index, byte } => {
                u64::from(index % 2048) * MSIX_ENTRY_SIZE + u64::from(byte % 16)
            }
            Offset::Pba(o) => IRQTEST_PBA_OFFSET + u64::from(o % 0x200),
            Offset::Near(o) => u64::from(o),
            Offset::Raw(o) => o,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    Cf8Read {
        target: Target,
        reg: u8,
        byte: u8,
        size: Size,
    },
    Cf8Write {
        target: Target,
        reg: u8,
        byte: u8,
        size: Size,
        value: u64,
    },
    PortRead {
        port: u8,
        size: Size,
    },
    PortWrite {
        port: u8,
        size: Size,
        value: u64,
    },
    EcamRead {
        target: Target,
        reg: u16,
        size: Size,
    },
    EcamWrite {
        target: Target,
        reg: u16,
        size: Size,
        value: u64,
    },
    /// Reads the same dword through CF8/CFC and ECAM.
    CompareAccessPaths {
        target: Target,
        reg: u8,
    },
    BarRead {
        bar: u8,
        offset: Offset,
        size: Size,
    },
    BarWrite {
        bar: u8,
        offset: Offset,
        size: Size,
        value: u64,
    },
    /// Through the PCI MMIO window, at the BAR's current guest address.
    WindowRead {
        bar: u8,
        offset: Offset,
        size: Size,
    },
    WindowWrite {
        bar: u8,
        offset: Offset,
        size: Size,
        value: u64,
    },
    WindowRaw {
        address: u64,
        size: Size,
        value: u64,
        write: bool,
    },
    /// Address, data, control of one entry as dword or qword writes.
    ProgramEntry {
        index: u16,
        dest: u8,
        vector: u8,
        bad_address: bool,
        masked: bool,
        qword: bool,
    },
    MaskEntry {
        index: u16,
        masked: bool,
    },
    MsixControl {
        enable: bool,
        function_mask: bool,
    },
    MsiControl {
        enable: bool,
        mme: u8,
    },
    MsiProgram {
        address: u32,
        address_hi: u32,
        data: u16,
        mask: u32,
    },
    FireRegister {
        vector: u16,
        count: u8,
    },
    FireDirect {
        vector: u16,
    },
    Select(u32),
    Render,
}

#[derive(Arbitrary, Debug)]
struct Input {
    vectors: VectorCount,
    gsis: GsiLimit,
    ops: Vec<Op>,
}

struct Fixture {
    rec: Recording,
    backend: Arc<RecordingBackend>,
    hierarchy: Arc<InterruptHierarchy>,
    dev: Arc<Mutex<IrqTest>>,
    msi: Arc<DeviceDomain>,
    msix: Arc<DeviceDomain>,
    io: PciConfigIo,
    ecam: PciEcam,
    window: PciMmioWindow,
    slot: u8,
    vectors: usize,
    msi_cap: usize,
    msix_cap: usize,
}

fn bytes(value: u64, size: Size) -> Vec<u8> {
    le_bytes(value, size, 8)
}

impl Fixture {
    fn new(input: &Input) -> Self {
        let vectors = input.vectors.get().min(2048);
        let max_gsi = input.gsis.get();
        let rec = Recording::no_remap(RESERVED, max_gsi);
        let (backend, hierarchy) = (rec.backend.clone(), rec.hierarchy.clone());
        let mut root = PciRoot::new();
        let slot = root.next_free_slot().expect("free slot");
        let irqtest =
            IrqTest::new(&hierarchy, RequesterId::pci(0, slot, 0), vectors).expect("valid irqtest");
        let dev = Arc::new(Mutex::new(irqtest));
        assert_eq!(root.add_device(dev.clone()).expect("add device"), slot);
        let mut m32 = AddressAllocator::new(0xc000_0000, 0x1000_0000).expect("allocator");
        let mut m64 = AddressAllocator::new(0x1_0000_0000, 0x1_0000_0000).expect("allocator");
        root.allocate_bars(&mut m32, &mut m64).expect("BARs fit");
        let root = Arc::new(root);
        // irqtest creates its MSI domain, then its MSI-X domain.
        let domains = hierarchy.domains();
        assert_eq!(domains.len(), 2);
        let (msi, msix) = (domains[0].clone(), domains[1].clone());
        assert_eq!(msix.size(), vectors);
        let mut f = Self {
            rec,
            backend,
            hierarchy,
            dev,
            msi,
            msix,
            io: PciConfigIo::new(root.clone()),
            ecam: PciEcam::new(root.clone()),
            window: PciMmioWindow::new(root),
            slot,
            vectors,
            msi_cap: 0,
            msix_cap: 0,
        };
        // Walk the capability list as a guest would.
        f.msi_cap = find_capability(|r| f.cfg_dword(r), cap_id::MSI).unwrap_or(0);
        f.msix_cap = find_capability(|r| f.cfg_dword(r), cap_id::MSIX).unwrap_or(0);
        assert!(f.msi_cap != 0 && f.msix_cap != 0, "capabilities listed");
        f
    }

    fn lock(&self) -> MutexGuard<'_, IrqTest> {
        self.dev.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn cfg_dword(&self, reg: usize) -> u32 {
        let mut b = [0u8; 4];
        self.ecam
            .mmio_read(MmioAddress(0), ecam_offset((0, self.slot, 0), reg), &mut b);
        u32::from_le_bytes(b)
    }

    fn cfg_write(&self, reg: usize, data: &[u8]) {
        self.ecam
            .mmio_write(MmioAddress(0), ecam_offset((0, self.slot, 0), reg), data);
    }

    fn bar_dword(&self, bar: usize, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        self.lock().bar_read(bar, offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn bar_write(&self, bar: usize, offset: u64, data: &[u8]) {
        self.lock().bar_write(bar, offset, data);
    }

    fn cf8_select(&self, bdf: (u8, u8, u8), reg: u8) {
        let addr = cf8_address(bdf, reg);
        self.io.pio_write(PioAddress(0xcf8), 0, &addr.to_le_bytes());
    }

    fn bar_base(&self, bar: usize) -> Option<u64> {
        self.lock().config().bar_address(bar)
    }

    fn run(&self, op: &Op) {
        match *op {
            Op::Cf8Read {
                target,
                reg,
                byte,
                size,
            } => {
                self.cf8_select(target.bdf(self.slot), reg);
                let mut d = vec![0u8; size.len(8)];
                self.io
                    .pio_read(PioAddress(0xcf8), 4 + u16::from(byte % 4), &mut d);
            }
            Op::Cf8Write {
                target,
                reg,
                byte,
                size,
                value,
            } => {
                self.cf8_select(target.bdf(self.slot), reg);
                self.io.pio_write(
                    PioAddress(0xcf8),
                    4 + u16::from(byte % 4),
                    &bytes(value, size),
                );
            }
            Op::PortRead { port, size } => {
                let mut d = vec![0u8; size.len(8)];
                self.io
                    .pio_read(PioAddress(0xcf8), u16::from(port % 8), &mut d);
            }
            Op::PortWrite { port, size, value } => {
                self.io
                    .pio_write(PioAddress(0xcf8), u16::from(port % 8), &bytes(value, size));
            }
            Op::EcamRead { target, reg, size } => {
                let mut d = vec![0u8; size.len(8)];
                let off = ecam_offset(target.bdf(self.slot), usize::from(reg % 0x1000));
                self.ecam.mmio_read(MmioAddress(0), off, &mut d);
            }
            Op::EcamWrite {
                target,
                reg,
                size,
                value,
            } => {
                let off = ecam_offset(target.bdf(self.slot), usize::from(reg % 0x1000));
                self.ecam
                    .mmio_write(MmioAddress(0), off, &bytes(value, size));
            }
            Op::CompareAccessPaths { target, reg } => {
                let bdf = target.bdf(self.slot);
                self.cf8_select(bdf, reg);
                let mut a = [0u8; 4];
                self.io.pio_read(PioAddress(0xcf8), 4, &mut a);
                let mut b = [0u8; 4];
                self.ecam.mmio_read(
                    MmioAddress(0),
                    ecam_offset(bdf, usize::from(reg & 0xfc)),
                    &mut b,
                );
                // The MSI pending dword is live state, but nothing fires between the reads.
                assert_eq!(a, b, "CF8/CFC and ECAM disagree at {bdf:?} reg {reg:#x}");
            }
            Op::BarRead { bar, offset, size } => {
                let mut d = vec![0u8; size.len(8)];
                self.lock()
                    .bar_read(usize::from(bar % 8), offset.get(), &mut d);
            }
            Op::BarWrite {
                bar,
                offset,
                size,
                value,
            } => {
                self.bar_write(usize::from(bar % 8), offset.get(), &bytes(value, size));
            }
            Op::WindowRead { bar, offset, size } => {
                let base = self.bar_base(usize::from(bar % 6)).unwrap_or(0);
                let mut d = vec![0u8; size.len(8)];
                self.window
                    .mmio_read(MmioAddress(0), base.wrapping_add(offset.get()), &mut d);
            }
            Op::WindowWrite {
                bar,
                offset,
                size,
                value,
            } => {
                let base = self.bar_base(usize::from(bar % 6)).unwrap_or(0);
                self.window.mmio_write(
                    MmioAddress(0),
                    base.wrapping_add(offset.get()),
                    &bytes(value, size),
                );
            }
            Op::WindowRaw {
                address,
                size,
                value,
                write,
            } => {
                if write {
                    self.window
                        .mmio_write(MmioAddress(0), address, &bytes(value, size));
                } else {
                    let mut d = vec![0u8; size.len(8)];
                    self.window.mmio_read(MmioAddress(0), address, &mut d);
                }
            }
            Op::ProgramEntry {
                index,
                dest,
                vector,
                bad_address,
                masked,
                qword,
            } => {
                let base = u64::from(index) % self.vectors as u64 * MSIX_ENTRY_SIZE;
                let addr: u64 = if bad_address {
                    0x1000
                } else {
                    0xfee0_0000 | (u64::from(dest) << 12)
                };
                let data = 0x4000 | u32::from(vector);
                let ctrl = u32::from(masked);
                if qword {
                    self.bar_write(MSIX_BAR, base, &addr.to_le_bytes());
                    let hi = (u64::from(ctrl) << 32) | u64::from(data);
                    self.bar_write(MSIX_BAR, base + 8, &hi.to_le_bytes());
                } else {
                    self.bar_write(MSIX_BAR, base, &(addr as u32).to_le_bytes());
                    self.bar_write(MSIX_BAR, base + 4, &((addr >> 32) as u32).to_le_bytes());
                    self.bar_write(MSIX_BAR, base + 8, &data.to_le_bytes());
                    self.bar_write(MSIX_BAR, base + 12, &ctrl.to_le_bytes());
                }
            }
            Op::MaskEntry { index, masked } => {
                let off = u64::from(index) % self.vectors as u64 * MSIX_ENTRY_SIZE + 12;
                self.bar_write(MSIX_BAR, off, &u32::from(masked).to_le_bytes());
            }
            Op::MsixControl {
                enable,
                function_mask,
            } => {
                let mut v = 0u16;
                if enable {
                    v |= msix_ctrl::ENABLE;
                }
                if function_mask {
                    v |= msix_ctrl::FUNCTION_MASK;
                }
                self.cfg_write(self.msix_cap + 2, &v.to_le_bytes());
            }
            Op::MsiControl { enable, mme } => {
                let v = u16::from(enable) | (u16::from(mme & 7) << 4);
                self.cfg_write(self.msi_cap + 2, &v.to_le_bytes());
            }
            Op::MsiProgram {
                address,
                address_hi,
                data,
                mask,
            } => {
                self.cfg_write(self.msi_cap + 4, &address.to_le_bytes());
                self.cfg_write(self.msi_cap + 8, &address_hi.to_le_bytes());
                self.cfg_write(self.msi_cap + 0xc, &u32::from(data).to_le_bytes());
                self.cfg_write(self.msi_cap + 0x10, &mask.to_le_bytes());
            }
            Op::FireRegister { vector, count } => {
                let v = u32::from(vector) | (u32::from(count) << 16);
                self.bar_write(0, regs::FIRE, &v.to_le_bytes());
            }
            Op::FireDirect { vector } => {
                self.lock().fire(usize::from(vector), 1);
            }
            Op::Select(v) => self.bar_write(0, regs::SELECT, &v.to_le_bytes()),
            Op::Render => {
                let text = self.hierarchy.render();
                assert!(text.contains("interrupt hierarchy"));
            }
        }
    }

    /// Effective MSI-X mask of every entry, from the guest-visible registers.
    fn msix_effective_masks(&self) -> Vec<bool> {
        let ctrl = (self.cfg_dword(self.msix_cap) >> 16) as u16;
        let enabled = ctrl & msix_ctrl::ENABLE != 0;
        let fmask = ctrl & msix_ctrl::FUNCTION_MASK != 0;
        (0..self.vectors)
            .map(|i| {
                let vc = self.bar_dword(MSIX_BAR, i as u64 * MSIX_ENTRY_SIZE + 12);
                assert_eq!(vc & !1, 0, "reserved vector-control bits read back");
                !enabled || fmask || vc & 1 != 0
            })
            .collect()
    }

    fn check(&self, before: &State, op: &Op) -> State {
        let after = State::take(self);
        let stats = self.hierarchy.vector_layer().stats();

        // Vector-layer bookkeeping.
        let unique = self.rec.check_books(&[self.msi.clone(), self.msix.clone()]);
        let committed = self.backend.committed.lock().unwrap().clone();
        // A freed GSI's route removal may wait for the next commit (the GSI is quarantined
        // meanwhile); GSIs freed before the last commit must be gone from the table.
        let freed: BTreeSet<u32> = before.gsis.difference(&unique).copied().collect();
        let committed_in_op = stats.commits != before.commits;
        let maybe_stale: BTreeSet<u32> = if committed_in_op {
            freed
        } else {
            before.maybe_stale.union(&freed).copied().collect()
        };
        assert!(
            committed
                .iter()
                .all(|(g, _)| unique.contains(g) || maybe_stale.contains(g)),
            "committed route of a GSI freed before the last commit: {committed:?} vs \
             allocated {unique:?}"
        );
        // A vector given a GSI during this operation must not inherit the committed route
        // of the GSI's previous owner.
        if !committed_in_op {
            for (o, n) in before
                .msi
                .iter()
                .chain(&before.msix)
                .zip(after.msi.iter().chain(&after.msix))
            {
                if let Some(g) = n.gsi.filter(|&g| o.gsi != Some(g)) {
                    assert!(
                        committed.iter().all(|&(c, _)| c != g),
                        "vector {} got GSI {g}, whose stale route is still committed: \
                         {committed:?} ({op:?})",
                        n.index
                    );
                }
            }
        }

        // MSI-X: domain mask == effective mask; PBA == pending; pending => masked.
        let eff = self.msix_effective_masks();
        let ctrl = (self.cfg_dword(self.msix_cap) >> 16) as u16;
        assert_eq!(
            usize::from(ctrl & msix_ctrl::TABLE_SIZE_MASK) + 1,
            self.vectors,
            "table size field"
        );
        let msix_enabled = ctrl & msix_ctrl::ENABLE != 0;
        let mut pba = 0;
        for (i, s) in after.msix.iter().enumerate() {
            assert_eq!(
                s.masked, eff[i],
                "MSI-X vector {i}: domain mask vs registers"
            );
            if i % 32 == 0 {
                pba = self.bar_dword(MSIX_BAR, IRQTEST_PBA_OFFSET + (i as u64 / 32) * 4);
            }
            assert_eq!(
                pba >> (i % 32) & 1 != 0,
                s.pending,
                "MSI-X vector {i}: PBA bit"
            );
            assert!(
                !s.pending || s.masked,
                "MSI-X vector {i} pending while unmasked"
            );
        }

        // MSI: domain mask == (disabled || beyond MME || mask bit); pending register.
        let mctrl = (self.cfg_dword(self.msi_cap) >> 16) as u16;
        let msi_enabled = mctrl & 1 != 0;
        let mme = 1usize << ((mctrl >> 4) & 7).min(5);
        let mask_bits = self.cfg_dword(self.msi_cap + 0x10);
        let pending_bits = self.cfg_dword(self.msi_cap + 0x14);
        for (i, s) in after.msi.iter().enumerate() {
            let eff = !msi_enabled || i >= mme || mask_bits >> i & 1 != 0;
            assert_eq!(s.masked, eff, "MSI vector {i}: domain mask vs registers");
            assert_eq!(
                pending_bits >> i & 1 != 0,
                s.pending,
                "MSI vector {i}: pending bit"
            );
            assert!(
                !s.pending || s.masked,
                "MSI vector {i} pending while unmasked"
            );
        }

        // Deliveries of this operation.
        let signalled_now = self.backend.signalled.lock().unwrap().len();
        let mut slow_deliveries = 0;
        for (name, enabled, old, new) in [
            ("MSI", msi_enabled, &before.msi, &after.msi),
            ("MSI-X", msix_enabled, &before.msix, &after.msix),
        ] {
            for (i, (o, n)) in old.iter().zip(new.iter()).enumerate() {
                assert!(
                    n.deliveries + n.dropped <= n.fires,
                    "{name} vector {i}: more deliveries than fires: {n:?}"
                );
                assert!(n.fires >= o.fires && n.deliveries >= o.deliveries);
                let delivered = n.deliveries - o.deliveries;
                if delivered == 0 {
                    continue;
                }
                assert!(
                    enabled,
                    "{name} vector {i} delivered while {name} is disabled"
                );
                assert!(
                    !n.masked,
                    "{name} vector {i} delivered while masked ({op:?})"
                );
                let Some(RemapOutcome::Deliver(m)) = n.remapped else {
                    panic!("{name} vector {i} delivered without a deliverable message: {n:?}");
                };
                assert_eq!(Some(m), n.message, "NoRemap passes messages unchanged");
                match n.gsi {
                    Some(g) => assert!(
                        committed.contains(&(g, m.kvm_format())),
                        "{name} vector {i} fired on GSI {g} before its route {m} was committed: \
                         {committed:?}"
                    ),
                    None => slow_deliveries += delivered as usize,
                }
            }
        }
        assert_eq!(
            signalled_now - before.signalled,
            slow_deliveries,
            "KVM_SIGNAL_MSI count vs deliveries of vectors without a GSI"
        );
        assert_eq!(self.bar_dword(0, regs::MAGIC), IRQTEST_MAGIC);
        State {
            maybe_stale,
            ..after
        }
    }
}

struct State {
    msi: Vec<VectorSnapshot>,
    msix: Vec<VectorSnapshot>,
    signalled: usize,
    commits: u64,
    /// GSIs allocated to some vector.
    gsis: BTreeSet<u32>,
    /// GSIs freed since the last commit (their committed route may still be there).
    maybe_stale: BTreeSet<u32>,
}

impl State {
    fn take(f: &Fixture) -> Self {
        let msi = f.msi.snapshot();
        let msix = f.msix.snapshot();
        let gsis = msi.iter().chain(&msix).filter_map(|s| s.gsi).collect();
        Self {
            msi,
            msix,
            signalled: f.backend.signalled.lock().unwrap().len(),
            commits: f.hierarchy.vector_layer().stats().commits,
            gsis,
            maybe_stale: BTreeSet::new(),
        }
    }
}

fuzz_target!(|input: Input| {
    let f = Fixture::new(&input);
    assert_eq!(f.cfg_dword(0) & 0xffff, u32::from(IRQTEST_VENDOR));
    let mut state = State::take(&f);
    for op in &input.ops {
        f.run(op);
        state = f.check(&state, op);
    }
    // Tear down like hot-unplug: everything the device held goes back.
    drop(state);
    let Fixture {
        rec,
        hierarchy,
        backend,
        dev,
        msi,
        msix,
        io,
        ecam,
        window,
        ..
    } = f;
    drop((dev, msi, msix, io, ecam, window, hierarchy, backend));
    rec.check_released();
});
