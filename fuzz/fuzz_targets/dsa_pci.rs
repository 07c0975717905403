//! Fuzzes a DSA reached the way the guest reaches it: through the PCI root (`PciRoot` with
//! the host bridge and the DSA, `PciConfigIo` for CF8/CFC, `PciEcam`, `PciMmioWindow` for the
//! BARs, wired as in vm.rs) on a recording vector layer (no KVM) and 2 MiB of guest RAM.
//!
//! Operations: configuration reads/writes of any size through CF8/CFC or ECAM to any
//! function, BAR sizing and relocation (any address, 32- or 64-bit halves in either order),
//! command-register writes (memory decode, bus mastering, anything), MMIO of any size at any
//! address of the window or relative to a BAR's current address (registers, MSI-X table,
//! IMS, portals), Linux's bring-up and descriptors submitted through the window, checked
//! MEMMOVEs, `wait_idle()`.
//!
//! Invariants, after every operation:
//! - CF8/CFC and ECAM read the same dwords; BAR sizing reads back the BAR's size mask and
//!   type bits; the address a guest reads from the BAR registers is where the window
//!   decodes the BAR while memory decode is on, and nothing decodes while it is off;
//! - BAR0 registers read through the window equal the device's own (relocation keeps the
//!   device), VERSION reads the same before and after any relocation;
//! - a MEMMOVE submitted through a relocated portal copies its data;
//! - the vector layer's books balance; dropping the bus joins the DSA worker and frees
//!   every vector.

#![no_main]

use std::sync::{Arc, Mutex, OnceLock};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use vm_allocator::AddressAllocator;
use vm_device::bus::{MmioAddress, PioAddress};
use vm_device::{DeviceMmio, DevicePio};
use vm_memory::GuestMemoryMmap;

use devices::dsa::spec::{desc, flag, gensts, opcode, reg, status};
use devices::dsa::{Dsa, DsaConfig, MSIX_TABLE_OFFSET};
use interrupt::RequesterId;
use pci::config::{command as pci_command, reg as pci_reg};
use pci::{PciConfigIo, PciDevice, PciEcam, PciMmioWindow, PciRoot};
use vmm_fuzz::dsa::{
    portal_offset, wq_index, Bar0Off, Delivery, DescSpec, DsaPort, Shape, RAM_END,
};
use vmm_fuzz::{
    cf8_address, ecam_offset, le_bytes, read_mem, threads, write_mem, Layout, Recording, Size,
    KVM_MAX_GSI, RESERVED_GSIS,
};

const MMIO32: (u64, u64) = (0xc000_0000, 0x2000_0000);
const MMIO64: (u64, u64) = (0x1_0000_0000, 0x10_0000_0000);

/// Which function a configuration access addresses.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Target {
    Dsa,
    HostBridge,
    Bdf { bus: u8, dev: u8, func: u8 },
}

/// Where a BAR is moved.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Place {
    /// Naturally aligned slot `n` of the 32-bit window.
    Low(u16),
    /// Naturally aligned slot `n` of the 64-bit window.
    High(u32),
    /// Onto the other BAR.
    Overlap,
    Raw(u64),
}

/// A window address: relative to a BAR's current address, or anywhere.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Where {
    Bar0(Bar0Off),
    Portal { wq: u8, page: u8, slot: u8 },
    Raw(u64),
}

#[derive(Arbitrary, Debug)]
enum Op {
    CfgRead {
        target: Target,
        reg: u16,
        size: Size,
        ecam: bool,
    },
    CfgWrite {
        target: Target,
        reg: u16,
        size: Size,
        value: u32,
        ecam: bool,
    },
    /// Writes all ones to the BAR's registers and checks the size read back, then restores.
    SizeBar {
        bar: u8,
    },
    MoveBar {
        which: bool,
        place: Place,
        high_first: bool,
        /// Memory decode off around the move, as Linux does.
        decode_off: bool,
    },
    Command(u16),
    Decode {
        memory: bool,
        bus_master: bool,
    },
    Read {
        at: Where,
        size: Size,
    },
    Write {
        at: Where,
        size: Size,
        value: u64,
        value_hi: u64,
    },
    Up {
        wq: u8,
        size: u8,
    },
    ProgramMsix {
        index: u8,
        vector: u8,
        masked: bool,
    },
    Submit {
        wq: u8,
        page: u8,
        slot: u8,
        desc: DescSpec,
        how: Delivery,
    },
    CheckedMove {
        wq: u8,
        len: u16,
        seed: u8,
    },
    WaitIdle,
}

#[derive(Arbitrary, Debug)]
struct Input {
    layout: Layout,
    shape: Shape,
    ops: Vec<Op>,
}

struct Fixture {
    rec: Recording,
    mem: GuestMemoryMmap,
    dev: Arc<Mutex<Dsa>>,
    cfg: DsaConfig,
    io: PciConfigIo,
    ecam: PciEcam,
    window: PciMmioWindow,
    slot: u8,
    version: u32,
}

/// The guest's path: configuration through ECAM, BARs through the window at the address
/// the BAR registers hold.
impl DsaPort for Fixture {
    fn bar_read(&mut self, bar: usize, off: u64, data: &mut [u8]) {
        let base = self.guest_bar(bar);
        self.window
            .mmio_read(MmioAddress(0), base.wrapping_add(off), data);
    }

    fn bar_write(&mut self, bar: usize, off: u64, data: &[u8]) {
        let base = self.guest_bar(bar);
        self.window
            .mmio_write(MmioAddress(0), base.wrapping_add(off), data);
    }

    fn cfg_read(&mut self, reg: usize) -> u32 {
        self.cfg_dword((0, self.slot, 0), reg, true)
    }

    fn cfg_write(&mut self, reg: usize, data: &[u8]) {
        self.ecam
            .mmio_write(MmioAddress(0), ecam_offset((0, self.slot, 0), reg), data);
    }
}

impl Fixture {
    fn new(input: &Input) -> Self {
        let mem = input.layout.memory(RAM_END);
        let rec = Recording::no_remap(RESERVED_GSIS, KVM_MAX_GSI);
        let cfg = input.shape.config();
        let mut root = PciRoot::new();
        let slot = root.next_free_slot().expect("free slot");
        let dsa = Dsa::new(
            &rec.hierarchy,
            RequesterId::pci(0, slot, 0),
            mem.clone(),
            cfg,
        )
        .expect("valid DSA shape");
        let dev = Arc::new(Mutex::new(dsa));
        assert_eq!(root.add_device(dev.clone()).expect("add device"), slot);
        let mut m32 = AddressAllocator::new(MMIO32.0, MMIO32.1).expect("allocator");
        let mut m64 = AddressAllocator::new(MMIO64.0, MMIO64.1).expect("allocator");
        root.allocate_bars(&mut m32, &mut m64).expect("BARs fit");
        let root = Arc::new(root);
        let mut f = Self {
            rec,
            mem,
            dev,
            cfg,
            io: PciConfigIo::new(root.clone()),
            ecam: PciEcam::new(root.clone()),
            window: PciMmioWindow::new(root),
            slot,
            version: 0,
        };
        f.version = f.r32(reg::VERSION);
        assert_ne!(f.version, u32::MAX, "BAR0 decoded after allocation");
        f
    }

    fn bdf(&self, t: Target) -> (u8, u8, u8) {
        match t {
            Target::Dsa => (0, self.slot, 0),
            Target::HostBridge => (0, 0, 0),
            Target::Bdf { bus, dev, func } => (bus, dev & 0x1f, func & 7),
        }
    }

    fn cfg_dword(&self, bdf: (u8, u8, u8), reg: usize, ecam: bool) -> u32 {
        let mut b = [0u8; 4];
        if ecam {
            self.ecam
                .mmio_read(MmioAddress(0), ecam_offset(bdf, reg & 0xffc), &mut b);
        } else {
            let a = cf8_address(bdf, reg as u8);
            self.io.pio_write(PioAddress(0xcf8), 0, &a.to_le_bytes());
            self.io.pio_read(PioAddress(0xcf8), 4, &mut b);
        }
        u32::from_le_bytes(b)
    }

    /// The address the guest reads from the BAR registers (memory BARs are 64-bit pairs).
    fn guest_bar(&self, bar: usize) -> u64 {
        let bdf = (0, self.slot, 0);
        let lo = self.cfg_dword(bdf, pci_reg::BAR0 + 4 * bar, true);
        let hi = self.cfg_dword(bdf, pci_reg::BAR0 + 4 * bar + 4, true);
        (u64::from(hi) << 32) | u64::from(lo & !0xf)
    }

    fn decoding(&self) -> bool {
        let cmd = self.cfg_dword((0, self.slot, 0), pci_reg::COMMAND, true) as u16;
        cmd & pci_command::MEMORY != 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Dsa> {
        self.dev.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bar_size(&self, bar: usize) -> u64 {
        match bar {
            0 => self.cfg.bar0_size(),
            _ => self.cfg.bar2_size(),
        }
    }

    fn window_addr(&self, at: Where) -> u64 {
        match at {
            Where::Bar0(o) => self.guest_bar(0).wrapping_add(o.get()),
            Where::Portal { wq, page, slot } => {
                self.guest_bar(2)
                    .wrapping_add(portal_offset(wq_index(&self.cfg, wq), page, slot))
            }
            Where::Raw(a) => a,
        }
    }

    fn set_command(&mut self, v: u16) {
        self.cfg_write(pci_reg::COMMAND, &v.to_le_bytes());
    }

    fn run(&mut self, op: &Op) {
        match op {
            Op::CfgRead {
                target,
                reg,
                size,
                ecam,
            } => {
                let bdf = self.bdf(*target);
                let mut d = vec![0u8; size.len(4)];
                let reg = usize::from(reg % 0x1000);
                if *ecam {
                    self.ecam
                        .mmio_read(MmioAddress(0), ecam_offset(bdf, reg), &mut d);
                } else {
                    let a = cf8_address(bdf, reg as u8);
                    self.io.pio_write(PioAddress(0xcf8), 0, &a.to_le_bytes());
                    self.io
                        .pio_read(PioAddress(0xcf8), 4 + (reg as u16 & 3), &mut d);
                }
            }
            Op::CfgWrite {
                target,
                reg,
                size,
                value,
                ecam,
            } => {
                let bdf = self.bdf(*target);
                let d = le_bytes(u64::from(*value), *size, 4);
                let reg = usize::from(reg % 0x1000);
                if *ecam {
                    self.ecam
                        .mmio_write(MmioAddress(0), ecam_offset(bdf, reg), &d);
                } else {
                    let a = cf8_address(bdf, reg as u8);
                    self.io.pio_write(PioAddress(0xcf8), 0, &a.to_le_bytes());
                    self.io
                        .pio_write(PioAddress(0xcf8), 4 + (reg as u16 & 3), &d);
                }
            }
            Op::SizeBar { bar } => {
                let bar = usize::from(bar % 6);
                let off = pci_reg::BAR0 + 4 * bar;
                let old = self.cfg_read(off);
                self.cfg_write(off, &u32::MAX.to_le_bytes());
                let got = self.cfg_read(off);
                self.cfg_write(off, &old.to_le_bytes());
                assert_eq!(self.cfg_read(off), old, "BAR{bar} restored");
                let want = match bar {
                    0 | 2 => (!(self.bar_size(bar) - 1) as u32 & !0xf) | 0x4,
                    1 | 3 => (!(self.bar_size(bar - 1) - 1) >> 32) as u32,
                    _ => 0,
                };
                // Prefetchable (bit 3 of a lower half) is the device's choice.
                let got = if bar % 2 == 0 { got & !0x8 } else { got };
                assert_eq!(got, want, "BAR{bar} sizing read {got:#x}");
            }
            Op::MoveBar {
                which,
                place,
                high_first,
                decode_off,
            } => {
                let bar = if *which { 2 } else { 0 };
                let size = self.bar_size(bar);
                let addr = match place {
                    Place::Low(n) => MMIO32.0 + (u64::from(*n) * size) % MMIO32.1,
                    Place::High(n) => MMIO64.0 + (u64::from(*n) * size) % MMIO64.1,
                    Place::Overlap => self.guest_bar(2 - bar),
                    Place::Raw(a) => *a,
                };
                let cmd = self.cfg_read(pci_reg::COMMAND) as u16;
                if *decode_off {
                    self.set_command(cmd & !pci_command::MEMORY);
                }
                let off = pci_reg::BAR0 + 4 * bar;
                let (lo, hi) = (addr as u32, (addr >> 32) as u32);
                if *high_first {
                    self.cfg_write(off + 4, &hi.to_le_bytes());
                    self.cfg_write(off, &lo.to_le_bytes());
                } else {
                    self.cfg_write(off, &lo.to_le_bytes());
                    self.cfg_write(off + 4, &hi.to_le_bytes());
                }
                if *decode_off {
                    self.set_command(cmd);
                }
                assert_eq!(
                    self.guest_bar(bar),
                    addr & !(size - 1),
                    "BAR{bar} moved to {addr:#x}"
                );
            }
            Op::Command(v) => self.set_command(*v),
            Op::Decode { memory, bus_master } => {
                let mut v = self.cfg_read(pci_reg::COMMAND) as u16;
                v &= !(pci_command::MEMORY | pci_command::BUS_MASTER);
                if *memory {
                    v |= pci_command::MEMORY;
                }
                if *bus_master {
                    v |= pci_command::BUS_MASTER;
                }
                self.set_command(v);
            }
            Op::Read { at, size } => {
                let a = self.window_addr(*at);
                let mut d = vec![0u8; size.len(16)];
                self.window.mmio_read(MmioAddress(0), a, &mut d);
            }
            Op::Write {
                at,
                size,
                value,
                value_hi,
            } => {
                let a = self.window_addr(*at);
                let mut d = value.to_le_bytes().to_vec();
                d.extend(value_hi.to_le_bytes());
                d.truncate(size.len(16));
                self.window.mmio_write(MmioAddress(0), a, &d);
            }
            Op::Up { wq, size } => {
                let cfg = self.cfg;
                self.bring_up(&cfg, u64::from(wq % cfg.wqs), u32::from(size % 32) + 1);
            }
            Op::ProgramMsix {
                index,
                vector,
                masked,
            } => {
                let i = u64::from(*index) % self.cfg.msix_vectors() as u64;
                self.program_msix(i, 0xFEE0_0000, u32::from(*vector), *masked);
            }
            Op::Submit {
                wq,
                page,
                slot,
                desc,
                how,
            } => {
                let off = portal_offset(wq_index(&self.cfg, *wq), *page, *slot);
                self.submit(off, &desc.bytes(), *how);
            }
            Op::CheckedMove { wq, len, seed } => self.checked_move(*wq, *len, *seed),
            Op::WaitIdle => self.lock().wait_idle(),
        }
    }

    /// A MEMMOVE through the portal at BAR2's current address; checks the copy when the
    /// device, the WQ and bus mastering are on.
    fn checked_move(&mut self, wq: u8, len: u16, seed: u8) {
        const SRC: u64 = 0x1_0000;
        const DST: u64 = 0x4_0000;
        const REC: u64 = 0x8_0000;
        let wq = u64::from(wq % self.cfg.wqs);
        let len = u64::from(len) % 0x2000 + 1;
        self.lock().wait_idle();
        let data: Vec<u8> = (0..len)
            .map(|i| (i as u8).wrapping_mul(37).wrapping_add(seed))
            .collect();
        write_mem(&self.mem, SRC, &data);
        write_mem(&self.mem, DST, &vec![!seed; len as usize]);
        write_mem(&self.mem, REC, &[0u8; 32]);
        let mut d = [0u8; 64];
        let w = flag::CRAV | flag::RCR | (u32::from(opcode::MEMMOVE) << 24);
        d[desc::FLAGS_OPCODE..desc::FLAGS_OPCODE + 4].copy_from_slice(&w.to_le_bytes());
        d[desc::COMPLETION_ADDR..desc::COMPLETION_ADDR + 8].copy_from_slice(&REC.to_le_bytes());
        d[desc::SRC..desc::SRC + 8].copy_from_slice(&SRC.to_le_bytes());
        d[desc::DST..desc::DST + 8].copy_from_slice(&DST.to_le_bytes());
        d[desc::SIZE_FIELD..desc::SIZE_FIELD + 4].copy_from_slice(&(len as u32).to_le_bytes());
        let decoding = self.decoding();
        let ready = decoding
            && self.gensts() == gensts::ENABLED
            && self.bus_master_on()
            && self.wq_enabled(wq);
        let xfer_shift = self.r32(devices::dsa::WQCFG_OFFSET + wq * 32 + 12) & 0x1F;
        // BAR2 must not be shadowed by BAR0 (an overlap the guest made).
        let portal = self.guest_bar(2) + portal_offset(wq, 0, seed);
        let shadowed = self.guest_bar(0) <= portal && portal - self.guest_bar(0) < self.bar_size(0);
        self.bar_write(2, portal_offset(wq, 0, seed), &d);
        self.lock().wait_idle();
        let rec = read_mem(&self.mem, REC, 32);
        if !ready || shadowed {
            return;
        }
        if len > 1 << xfer_shift {
            assert_eq!(rec[0], status::XFER_ERANGE, "len {len}: {rec:?}");
            return;
        }
        assert_eq!(
            rec[0],
            status::SUCCESS,
            "MEMMOVE through the window: {rec:?}"
        );
        assert_eq!(read_mem(&self.mem, DST, len as usize), data, "MEMMOVE data");
    }

    fn check(&mut self) {
        let bdf = (0, self.slot, 0);
        for r in (0..0x100).step_by(4) {
            let (a, b) = (self.cfg_dword(bdf, r, true), self.cfg_dword(bdf, r, false));
            assert_eq!(a, b, "CF8/CFC and ECAM disagree at {r:#x}");
        }
        let decoding = self.decoding();
        let dev_bars: Vec<Option<u64>> = (0..6)
            .map(|i| self.lock().config().bar_address(i))
            .collect();
        for bar in [0usize, 2] {
            let guest = self.guest_bar(bar);
            assert_eq!(
                dev_bars[bar],
                decoding.then_some(guest),
                "BAR{bar}: the device decodes {:?}, the guest programmed {guest:#x} (decode {decoding})",
                dev_bars[bar]
            );
        }
        let base0 = self.guest_bar(0);
        let mut via_window = [0u8; 4];
        self.window.mmio_read(
            MmioAddress(0),
            base0.wrapping_add(reg::VERSION),
            &mut via_window,
        );
        if decoding {
            let mut direct = [0u8; 4];
            self.lock().bar_read(0, reg::VERSION, &mut direct);
            assert_eq!(
                via_window, direct,
                "VERSION through the window at {base0:#x}"
            );
            assert_eq!(u32::from_le_bytes(direct), self.version, "VERSION changed");
            let mut a = [0u8; 8];
            let mut b = [0u8; 8];
            self.window.mmio_read(
                MmioAddress(0),
                base0.wrapping_add(MSIX_TABLE_OFFSET),
                &mut a,
            );
            self.lock().bar_read(0, MSIX_TABLE_OFFSET, &mut b);
            assert_eq!(a, b, "MSI-X table entry 0 through the window");
        } else {
            assert_eq!(via_window, [0xff; 4], "BAR0 decoded with memory decode off");
        }
        let domains = vmm_fuzz::dsa::domains(&self.lock());
        self.rec.check_books(&domains);
    }
}

static BASELINE_THREADS: OnceLock<usize> = OnceLock::new();

fuzz_target!(|input: Input| {
    let baseline = *BASELINE_THREADS.get_or_init(threads);
    let mut f = Fixture::new(&input);
    f.check();
    for op in input.ops.iter().take(256) {
        f.run(op);
        f.check();
    }
    let Fixture {
        rec,
        dev,
        io,
        ecam,
        window,
        ..
    } = f;
    drop((dev, io, ecam, window));
    rec.check_released();
    let now = threads();
    assert!(
        now <= baseline + 4,
        "threads grew from {baseline} to {now}: DSA workers not joined"
    );
});
