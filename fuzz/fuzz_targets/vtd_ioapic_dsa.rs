//! Fuzzes VT-d interrupt remapping with real devices on it: a `VtdUnit` is the remap layer of
//! the hierarchy (recording vector layer, no KVM), and a version-0x20 IOAPIC and a DSA (with
//! IMS) sit on it, sharing 2 MiB of guest RAM with the unit's tables and queue.
//!
//! Operations interleave VT-d register writes (any, or Linux's GCMD sequence and bring-up),
//! queued invalidations (IEC global/index, waits), IRTE writes in guest memory, IOAPIC RTE
//! programming (compatibility or remappable format), line changes and EOIs, DSA bring-up,
//! MSI-X and IMS entries pointing at IRTEs (Linux's flow: IRTE, entry, IEC + wait), DSA
//! register writes, descriptors with completion interrupts through the portals, and
//! `wait_idle()`. With `settle` the harness waits for the DSA after every operation;
//! otherwise the DSA's worker fires while the unit is reprogrammed.
//!
//! Invariants: the VT-d register invariants and per-write bounds of `vmm_fuzz::vtd::Driver`
//! (bounded work; with `settle`, no fault and no device interrupt from a register write);
//! every active vector of the three devices carries a deliverable translation, and after
//! a global re-translation or an IEC exactly what the unit translates now; an IOAPIC RTE
//! never shows delivery status, and its domain vector's mask follows the RTE; the vector
//! layer's books balance (checked when the DSA is idle); tearing down frees every vector
//! and joins the DSA worker.

#![no_main]

use std::sync::{Arc, OnceLock};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

use devices::dsa::spec::opcode;
use devices::dsa::{Dsa, DsaConfig};
use devices::ioapic::{rte, Ioapic, IOAPIC_BASE, IOAPIC_VERSION_20, NUM_PINS};
use interrupt::vtd::spec::offset;
use interrupt::{DeviceDomain, RequesterId, VtdConfig};
use pci::PciDevice;
use vm_device::bus::MmioAddress;
use vm_device::DeviceMmio;
use vmm_fuzz::dsa::{
    portal_offset, wq_index, Addr as DsaAddr, Bar0Off, Delivery, DescSpec, DsaPort, Opcode, Shape,
    Xfer, RAM_END,
};
use vmm_fuzz::vtd::{Base, Command, DescSpec as VtdDesc, Driver, IrteSpec, MsgSpec, Off};
use vmm_fuzz::{threads, Layout, Recording, Size};

/// The IOAPIC's source ID as the vmm's DMAR table declares it (00:1f.0).
const IOAPIC_SID: u16 = 0xf8;

#[derive(Arbitrary, Debug)]
enum Op {
    // --- VT-d ---
    VtdWrite {
        off: Off,
        size: Size,
        value: u64,
    },
    Gcmd(Command),
    EnableIr {
        queue: Base,
        qs: u8,
        table: Base,
        s: u8,
        eime: bool,
    },
    Invalidate(Vec<VtdDesc>),
    ServiceFaults,
    WriteIrte {
        index: u16,
        irte: IrteSpec,
    },
    // --- IOAPIC ---
    Rte {
        pin: u8,
        vector: u8,
        level: bool,
        masked: bool,
        /// Remappable format with this IRTE index.
        remap: Option<u16>,
        dest: u8,
    },
    /// Linux's flow for a pin: IRTE, remappable RTE, IEC index + wait.
    RemapPin {
        pin: u8,
        index: u16,
        irte: IrteSpec,
        level: bool,
    },
    Line {
        pin: u8,
        asserted: bool,
    },
    Pulse(u8),
    Eoi(u8),
    // --- DSA ---
    DsaUp {
        wq: u8,
        size: u8,
    },
    /// Linux's flow for an MSI-X (or IMS) vector: IRTE, entry with the remappable message,
    /// IEC index + wait.
    RemapVector {
        ims: bool,
        entry: u16,
        index: u16,
        irte: IrteSpec,
    },
    /// An MSI-X or IMS entry with any message.
    DsaEntry {
        ims: bool,
        entry: u16,
        msg: MsgSpec,
        masked: bool,
    },
    DsaReg {
        off: Bar0Off,
        size: Size,
        value: u64,
    },
    /// A no-op descriptor with a completion interrupt on handle `handle` (an MSI-X index,
    /// or an IMS entry with `ims`), `count` times.
    Interrupt {
        wq: u8,
        handle: u16,
        count: u8,
    },
    Submit {
        wq: u8,
        slot: u8,
        desc: DescSpec,
    },
    WaitIdle,
}

#[derive(Arbitrary, Debug)]
struct Input {
    layout: Layout,
    shape: Shape,
    records: u8,
    settle: bool,
    /// Start from Linux's VT-d bring-up and the DSA's.
    preset: Option<(Base, u8, Base, u8)>,
    ops: Vec<Op>,
}

struct Fixture {
    rec: Recording,
    drv: Driver,
    ioapic: Ioapic,
    dsa: Dsa,
    cfg: DsaConfig,
    settle: bool,
}

/// The DSA, driven directly (BARs and configuration space).
struct DsaDirect<'a>(&'a mut Dsa);

impl DsaPort for DsaDirect<'_> {
    fn bar_read(&mut self, bar: usize, off: u64, data: &mut [u8]) {
        self.0.bar_read(bar, off, data);
    }
    fn bar_write(&mut self, bar: usize, off: u64, data: &[u8]) {
        self.0.bar_write(bar, off, data);
    }
    fn cfg_read(&mut self, reg: usize) -> u32 {
        self.0.read_config(reg)
    }
    fn cfg_write(&mut self, reg: usize, data: &[u8]) {
        self.0.write_config(reg, data);
    }
}

impl Fixture {
    fn new(input: &Input) -> Self {
        let mem = input.layout.memory(RAM_END);
        let rec = Recording::vtd(
            mem.clone(),
            VtdConfig {
                register_base: 0xFED9_0000,
                ioapic_source_id: RequesterId(IOAPIC_SID),
                num_fault_records: input.records,
            },
        );
        let mut drv = Driver::new(mem.clone(), &rec, input.records);
        drv.concurrent = !input.settle;
        let ioapic = Ioapic::with_version(0, &rec.hierarchy, IOAPIC_VERSION_20);
        let mut cfg = input.shape.config();
        cfg.ims = cfg.ims.max(256);
        let dsa =
            Dsa::new(&rec.hierarchy, RequesterId::pci(0, 4, 0), mem, cfg).expect("valid DSA shape");
        Self {
            rec,
            drv,
            ioapic,
            dsa,
            cfg,
            settle: input.settle,
        }
    }

    fn port(&mut self) -> DsaDirect<'_> {
        DsaDirect(&mut self.dsa)
    }

    fn ioapic_write(&self, reg: u32, v: u32) {
        let base = MmioAddress(IOAPIC_BASE);
        self.ioapic.mmio_write(base, 0, &reg.to_le_bytes());
        self.ioapic.mmio_write(base, 0x10, &v.to_le_bytes());
    }

    fn program_rte(&self, pin: usize, lo: u32, hi: u32) {
        let r = 0x10 + 2 * pin as u32;
        self.ioapic_write(r + 1, hi);
        self.ioapic_write(r, lo);
    }

    fn entry_base(&self, ims: bool, entry: u16) -> u64 {
        if ims {
            devices::dsa::IMS_OFFSET + u64::from(entry % 512) * 16
        } else {
            let n = self.cfg.msix_vectors() as u64;
            devices::dsa::MSIX_TABLE_OFFSET + u64::from(entry) % n * 16
        }
    }

    fn set_entry(&mut self, ims: bool, entry: u16, address: u64, data: u32, masked: bool) {
        let base = self.entry_base(ims, entry);
        let mut p = self.port();
        p.w32(base + 12, 1);
        p.w32(base, address as u32);
        p.w32(base + 4, (address >> 32) as u32);
        p.w32(base + 8, data);
        p.w32(base + 12, u32::from(masked));
    }

    fn run(&mut self, op: &Op) {
        match op {
            Op::VtdWrite { off, size, value } => {
                let d = vmm_fuzz::le_bytes(*value, *size, 8);
                self.drv.write(off.get(), &d);
            }
            Op::Gcmd(c) => self.drv.linux_gcmd(*c),
            Op::EnableIr {
                queue,
                qs,
                table,
                s,
                eime,
            } => self
                .drv
                .enable_ir(queue.get(), *qs, table.get(), *s, *eime, false),
            Op::Invalidate(descs) => {
                let n = descs.len().min(16);
                self.drv.submit(&descs[..n], false);
            }
            Op::ServiceFaults => self.drv.service_faults(),
            Op::WriteIrte { index, irte } => self.drv.write_irte(*index, *irte),
            Op::Rte {
                pin,
                vector,
                level,
                masked,
                remap,
                dest,
            } => {
                let pin = usize::from(*pin) % NUM_PINS;
                let mut lo =
                    u32::from(*vector) | (u32::from(*level) << 15) | (u32::from(*masked) << 16);
                let hi = match remap {
                    Some(i) => {
                        lo |= u32::from(i >> 15) << 11;
                        (1 << 16) | (u32::from(i & 0x7fff) << 17)
                    }
                    None => u32::from(*dest) << 24,
                };
                self.program_rte(pin, lo, hi);
            }
            Op::RemapPin {
                pin,
                index,
                irte,
                level,
            } => {
                let pin = usize::from(*pin) % NUM_PINS;
                self.drv.write_irte(*index, *irte);
                let lo = (u32::from(*level) << 15) | (u32::from(index >> 15) << 11) | 0x30;
                let hi = (1 << 16) | (u32::from(index & 0x7fff) << 17);
                self.program_rte(pin, lo, hi);
                self.drv.flush_iec(*index);
            }
            Op::Line { pin, asserted } => {
                self.ioapic.set_irq(usize::from(*pin) % NUM_PINS, *asserted)
            }
            Op::Pulse(pin) => self.ioapic.pulse(usize::from(*pin) % NUM_PINS),
            Op::Eoi(v) => self.ioapic.end_of_interrupt(*v),
            Op::DsaUp { wq, size } => {
                let cfg = self.cfg;
                self.port()
                    .bring_up(&cfg, u64::from(wq % cfg.wqs), u32::from(size % 32) + 1);
            }
            Op::RemapVector {
                ims,
                entry,
                index,
                irte,
            } => {
                self.drv.write_irte(*index, *irte);
                let m = MsgSpec::Linux(*index).get();
                self.set_entry(*ims, *entry, m.address, m.data, false);
                self.drv.flush_iec(*index);
            }
            Op::DsaEntry {
                ims,
                entry,
                msg,
                masked,
            } => {
                let m = msg.get();
                self.set_entry(*ims, *entry, m.address, m.data, *masked);
            }
            Op::DsaReg { off, size, value } => {
                let d = vmm_fuzz::le_bytes(*value, *size, 8);
                self.dsa.bar_write(0, off.get(), &d);
            }
            Op::Interrupt { wq, handle, count } => {
                let wq = wq_index(&self.cfg, *wq);
                let desc = DescSpec::Clean {
                    opcode: Opcode::Noop,
                    completion: DsaAddr::Aligned(0x100),
                    src: DsaAddr::Raw(0),
                    dst: DsaAddr::Raw(0),
                    size: Xfer::Zero,
                    interrupt: Some(*handle),
                    fence: false,
                    extra: None,
                };
                let d = desc.bytes();
                assert_eq!(d[3], opcode::NOOP);
                for i in 0..=(count % 8) {
                    let off = portal_offset(wq, 0, i);
                    self.port().submit(off, &d, Delivery::Whole);
                }
            }
            Op::Submit { wq, slot, desc } => {
                let off = portal_offset(wq_index(&self.cfg, *wq), 0, *slot);
                self.port().submit(off, &desc.bytes(), Delivery::Whole);
            }
            Op::WaitIdle => self.dsa.wait_idle(),
        }
    }

    fn domains(&self) -> Vec<Arc<DeviceDomain>> {
        let mut d = vmm_fuzz::dsa::domains(&self.dsa);
        d.push(self.ioapic.domain().clone());
        d
    }

    fn check(&mut self) {
        if self.settle {
            self.dsa.wait_idle();
        }
        self.drv.check();
        let snap = self.ioapic.domain().snapshot();
        for (pin, s) in snap.iter().enumerate() {
            let e = self.ioapic.redirection_entry(pin).expect("pin exists");
            assert_eq!(e & rte::DELIVERY_STATUS, 0, "pin {pin}: delivery status");
            assert_eq!(s.masked, e & rte::MASKED != 0, "pin {pin}: domain mask");
            assert_eq!(s.fires, self.ioapic.delivered(pin), "pin {pin}: fires");
        }
        if self.settle {
            self.rec.check_books(&self.domains());
        }
        let v = self.drv.read32(offset::VER);
        assert_eq!(v, self.drv.ident.0);
    }
}

static BASELINE_THREADS: OnceLock<usize> = OnceLock::new();

fuzz_target!(|input: Input| {
    let baseline = *BASELINE_THREADS.get_or_init(threads);
    let mut f = Fixture::new(&input);
    f.check();
    if let Some((queue, qs, table, s)) = input.preset {
        f.run(&Op::EnableIr {
            queue,
            qs,
            table,
            s,
            eime: true,
        });
        f.run(&Op::DsaUp { wq: 0, size: 8 });
        f.check();
    }
    for op in input.ops.iter().take(256) {
        f.run(op);
        f.check();
    }
    f.dsa.wait_idle();
    f.settle = true;
    f.check();
    let Fixture {
        rec,
        drv,
        ioapic,
        dsa,
        ..
    } = f;
    drop((dsa, ioapic));
    rec.check_released();
    drop(drv);
    let now = threads();
    assert!(
        now <= baseline + 4,
        "threads grew from {baseline} to {now}: DSA workers not joined"
    );
});
