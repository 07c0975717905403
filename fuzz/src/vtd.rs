//! The VT-d operation vocabulary (registers, addresses, IRTEs, interrupt messages,
//! invalidation descriptors, Linux's GCMD writes) and a guest-driver helper ([`Driver`]) that
//! programs a `VtdUnit` the way Linux's intel-iommu/irq_remapping code does, checking the
//! per-write bounds (work, event interrupts) and the registers' invariants.

use std::collections::BTreeSet;
use std::sync::Arc;

use arbitrary::Arbitrary;
use vm_memory::GuestMemoryMmap;

use interrupt::vtd::spec::{cap, event_ctl, fsts, gcmd, gsts, ics, offset, FaultRecord};
use interrupt::{
    InterruptHierarchy, MsiMessage, RecordingBackend, RemapLayer, RemapOutcome, RetranslateScope,
    VtdUnit,
};

/// Guest RAM the VT-d target gives the unit (1 MiB, see [`crate::Layout`]).
pub const RAM_END: u64 = 0x10_0000;
/// The register page.
pub const PAGE: u64 = 0x1000;
/// Largest invalidation queue (entries).
pub const MAX_QUEUE: u64 = 1 << 15;
/// GSTS bits the unit may set.
pub const GSTS_DEFINED: u32 = gsts::RTPS | gsts::QIES | gsts::IRES | gsts::IRTPS | gsts::CFIS;

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Reg {
    Ver,
    Cap,
    Ecap,
    Gcmd,
    Gsts,
    Rtaddr,
    Ccmd,
    Fsts,
    Fectl,
    Fedata,
    Feaddr,
    Feuaddr,
    Iqh,
    Iqt,
    Iqa,
    Ics,
    Iectl,
    Iedata,
    Ieaddr,
    Ieuaddr,
    Irta,
    Iva,
    Iotlb,
}

impl Reg {
    pub fn offset(self) -> u64 {
        match self {
            Reg::Ver => offset::VER,
            Reg::Cap => offset::CAP,
            Reg::Ecap => offset::ECAP,
            Reg::Gcmd => offset::GCMD,
            Reg::Gsts => offset::GSTS,
            Reg::Rtaddr => offset::RTADDR,
            Reg::Ccmd => offset::CCMD,
            Reg::Fsts => offset::FSTS,
            Reg::Fectl => offset::FECTL,
            Reg::Fedata => offset::FEDATA,
            Reg::Feaddr => offset::FEADDR,
            Reg::Feuaddr => offset::FEUADDR,
            Reg::Iqh => offset::IQH,
            Reg::Iqt => offset::IQT,
            Reg::Iqa => offset::IQA,
            Reg::Ics => offset::ICS,
            Reg::Iectl => offset::IECTL,
            Reg::Iedata => offset::IEDATA,
            Reg::Ieaddr => offset::IEADDR,
            Reg::Ieuaddr => offset::IEUADDR,
            Reg::Irta => offset::IRTA,
            Reg::Iva => offset::IVA,
            Reg::Iotlb => offset::IOTLB,
        }
    }
}

/// Where a register access lands.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Off {
    /// A known register, possibly misaligned by up to 7 bytes (either direction).
    Reg {
        reg: Reg,
        skew: i8,
    },
    /// Fault recording register `index`, byte `byte` (0..16).
    Frcd {
        index: u8,
        byte: u8,
    },
    /// Anywhere in the page.
    Page(u16),
    /// Around the end of the page.
    End(u8),
    Raw(u64),
}

impl Off {
    pub fn get(self) -> u64 {
        match self {
            Off::Reg { reg, skew } => reg.offset().wrapping_add_signed(i64::from(skew % 8)),
            Off::Frcd { index, byte } => {
                offset::FRCD + u64::from(index) * 16 + u64::from(byte % 16)
            }
            Off::Page(o) => u64::from(o) % PAGE,
            Off::End(o) => PAGE - 16 + u64::from(o % 48),
            Off::Raw(o) => o,
        }
    }
}

/// A guest-physical address, often relative to what the unit currently uses.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Addr {
    Ram(u32),
    /// IRTE `index` of the table IRTA names, byte `byte`.
    Irte {
        index: u16,
        byte: u8,
    },
    /// Slot `slot` of the latched queue, byte `byte`.
    Queue {
        slot: u16,
        byte: u8,
    },
    /// Just below the end of RAM (or the hole).
    NearEnd(u16),
    Hole(u16),
    Raw(u64),
}

/// Base of a table or queue.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Base {
    /// A 4 KiB page inside the first 1 MiB.
    Page(u8),
    /// Last page(s) of RAM, so big tables run off the end.
    Last(u8),
    Raw(u64),
}

impl Base {
    pub fn get(self) -> u64 {
        match self {
            Base::Page(p) => u64::from(p) << 12,
            Base::Last(n) => RAM_END - (u64::from(n % 4) + 1) * PAGE,
            Base::Raw(a) => a & !0xFFF,
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Dlm {
    Fixed,
    Lowest,
    Other(u8),
}

/// An IRTE as 128 bits.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum IrteSpec {
    /// What Linux writes: P, RH, DM per APIC mode, vector, destination, SVT=01 SQ=0.
    Linux {
        vector: u8,
        dest: u32,
        /// x2APIC: full 32-bit destination; else the xAPIC ID in bits 47:40.
        x2apic: bool,
        logical: bool,
        sid: u16,
        verify: bool,
    },
    Fields {
        present: bool,
        fpd: bool,
        dm: bool,
        rh: bool,
        tm: bool,
        dlm: Dlm,
        avail: u8,
        posted: bool,
        vector: u8,
        dest: u32,
        sid: u16,
        sq: u8,
        svt: u8,
        /// Garbage OR-ed into the reserved bits (lo 14:12 and 31:24, hi 127:84).
        reserved: Option<(u16, u64)>,
    },
    Raw(u64, u64),
}

impl IrteSpec {
    pub fn bits(self) -> (u64, u64) {
        match self {
            IrteSpec::Linux {
                vector,
                dest,
                x2apic,
                logical,
                sid,
                verify,
            } => {
                let dest = if x2apic { dest } else { (dest & 0xFF) << 8 };
                let lo = 1
                    | (u64::from(logical) << 2)
                    | (1 << 3)
                    | (u64::from(vector) << 16)
                    | (u64::from(dest) << 32);
                let hi = u64::from(sid) | if verify { 1 << 18 } else { 0 };
                (lo, hi)
            }
            IrteSpec::Fields {
                present,
                fpd,
                dm,
                rh,
                tm,
                dlm,
                avail,
                posted,
                vector,
                dest,
                sid,
                sq,
                svt,
                reserved,
            } => {
                let dlm = match dlm {
                    Dlm::Fixed => 0,
                    Dlm::Lowest => 1,
                    Dlm::Other(d) => u64::from(d & 7),
                };
                let mut lo = u64::from(present)
                    | (u64::from(fpd) << 1)
                    | (u64::from(dm) << 2)
                    | (u64::from(rh) << 3)
                    | (u64::from(tm) << 4)
                    | (dlm << 5)
                    | (u64::from(avail & 0xF) << 8)
                    | (u64::from(posted) << 15)
                    | (u64::from(vector) << 16)
                    | (u64::from(dest) << 32);
                let mut hi =
                    u64::from(sid) | (u64::from(sq & 3) << 16) | (u64::from(svt & 3) << 18);
                if let Some((r_lo, r_hi)) = reserved {
                    lo |= (u64::from(r_lo & 7) << 12) | (u64::from(r_lo >> 8) << 24);
                    hi |= r_hi << 20;
                }
                (lo, hi)
            }
            IrteSpec::Raw(lo, hi) => (lo, hi),
        }
    }
}

/// An interrupt request message.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum MsgSpec {
    Remappable {
        handle: u16,
        shv: bool,
        subhandle: u16,
        /// Garbage in data 31:16 (reserved with SHV).
        data_hi: Option<u16>,
        /// Upper address (must be 0).
        addr_hi: Option<u32>,
        /// Address bits 1:0.
        low: u8,
    },
    /// IRTE index as Linux composes it (SHV=1, subhandle 0).
    Linux(u16),
    Compat {
        dest: u32,
        logical: bool,
        vector: u8,
        mode: u8,
        level: bool,
    },
    Raw {
        address: u64,
        data: u32,
    },
}

impl MsgSpec {
    pub fn get(self) -> MsiMessage {
        match self {
            MsgSpec::Remappable {
                handle,
                shv,
                subhandle,
                data_hi,
                addr_hi,
                low,
            } => {
                let lo = 0xFEE0_0000u32
                    | (u32::from(handle & 0x7FFF) << 5)
                    | (1 << 4)
                    | (u32::from(shv) << 3)
                    | (u32::from(handle >> 15) << 2)
                    | u32::from(low & 3);
                let data = u32::from(subhandle) | (u32::from(data_hi.unwrap_or(0)) << 16);
                MsiMessage::new(lo, addr_hi.unwrap_or(0), data)
            }
            MsgSpec::Linux(index) => {
                let mut m = MsiMessage::remappable(index);
                m.address |= 1 << 3;
                m
            }
            MsgSpec::Compat {
                dest,
                logical,
                vector,
                mode,
                level,
            } => MsiMessage::compose(dest, logical, vector, mode, level),
            MsgSpec::Raw { address, data } => MsiMessage { address, data },
        }
    }
}

/// An invalidation descriptor.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum DescSpec {
    IecGlobal,
    IecIndex {
        mask: u8,
        index: u16,
    },
    Wait {
        sw: bool,
        interrupt: bool,
        fence: bool,
        drain: bool,
        data: u32,
        status: Addr,
        low: u8,
    },
    ContextCache(u64),
    Iotlb(u64, u64),
    /// A well-formed descriptor with garbage OR-ed into qw0/qw1.
    Dirty {
        base: u8,
        qw0: u64,
        qw1: u64,
    },
    Raw(u64, u64),
}

impl DescSpec {
    /// The wait descriptor Linux queues after an invalidation: status write of 2 to RAM.
    pub const STATUS_WAIT: DescSpec = DescSpec::Wait {
        sw: true,
        interrupt: false,
        fence: false,
        drain: false,
        data: 2,
        status: Addr::Ram(0x3000),
        low: 0,
    };
}

/// Linux's CMD for a GCMD write: its shadow of the persistent bits plus one command.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Command {
    SetQie(bool),
    SetIre(bool),
    SetCfi(bool),
    Sirtp,
    Srtp,
    Wbf,
    Sfl,
    SetTe(bool),
    SetEafl(bool),
}

/// Register values compared across an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Regs {
    /// Register gsts.
    pub gsts: u32,
    /// Register fsts.
    pub fsts: u32,
    /// Register fectl.
    pub fectl: u32,
    /// Register iectl.
    pub iectl: u32,
    /// Register ics.
    pub ics: u32,
    /// Register iqh.
    pub iqh: u64,
    /// Register iqt.
    pub iqt: u64,
    /// Register iqa.
    pub iqa: u64,
    /// Register irta.
    pub irta: u64,
    /// Register fe_msg.
    pub fe_msg: MsiMessage,
    /// Register ie_msg.
    pub ie_msg: MsiMessage,
}

/// The driver of one VT-d unit: its registers, the guest memory holding its tables, and
/// the hierarchy it remaps.
pub struct Driver {
    /// Guest RAM (tables, queue, status writes).
    pub mem: GuestMemoryMmap,
    /// The recording vector layer under the hierarchy.
    pub backend: Arc<RecordingBackend>,
    /// The hierarchy whose remap layer the unit is.
    pub hierarchy: Arc<InterruptHierarchy>,
    /// The unit.
    pub unit: Arc<VtdUnit>,
    /// Fault recording registers.
    pub records: u64,
    /// VER, CAP, ECAP at creation.
    pub ident: (u32, u64, u64),
    /// Queue the unit latched when QIE was last enabled: (base, entries).
    pub queue: Option<(u64, u64)>,
    /// Devices may fire on their own threads (a DSA worker): skip the per-write checks
    /// that assume the harness is the only source of interrupts and faults.
    pub concurrent: bool,
}

pub fn queue_from_iqa(iqa: u64) -> (u64, u64) {
    (iqa & !0xFFF, 1 << ((iqa & 7) + 8))
}

pub fn iec_scope(qw0: u64) -> RetranslateScope {
    if qw0 & (1 << 4) == 0 {
        return RetranslateScope::All;
    }
    let im = ((qw0 >> 27) & 0x1F) as u32;
    let index = ((qw0 >> 32) & 0xFFFF) as u32;
    let count = 1u32 << im.min(16);
    RetranslateScope::IrteRange {
        start: index & !(count - 1),
        count,
    }
}

impl Driver {
    /// The driver of `rec`'s VT-d unit with `records` fault records (as configured).
    pub fn new(mem: GuestMemoryMmap, rec: &crate::Recording, records: u8) -> Self {
        let unit = rec.vtd.clone().expect("a VT-d hierarchy");
        let mut f = Self {
            mem,
            backend: rec.backend.clone(),
            hierarchy: rec.hierarchy.clone(),
            unit,
            records: u64::from(records).clamp(1, cap::MAX_FAULT_RECORDS),
            ident: (0, 0, 0),
            queue: None,
            concurrent: false,
        };
        f.ident = (
            f.read32(offset::VER),
            f.read64(offset::CAP),
            f.read64(offset::ECAP),
        );
        assert_eq!(
            (f.ident.1 >> 40) & 0xFF,
            f.records - 1,
            "CAP.NFR vs configured records"
        );
        assert_eq!(f.ident.1 & (0x1F << 8), 0, "SAGAW must stay 0");
        f
    }

    // --- register access -------------------------------------------------------------

    /// Reads `len` (at most 8) bytes of the register page at `off`.
    pub fn read(&self, off: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        self.unit.mmio_read(off, &mut b[..len]);
        u64::from_le_bytes(b)
    }

    pub fn read32(&self, off: u64) -> u32 {
        self.read(off, 4) as u32
    }

    pub fn read64(&self, off: u64) -> u64 {
        self.read(off, 8)
    }

    pub fn regs(&self) -> Regs {
        Regs {
            gsts: self.read32(offset::GSTS),
            fsts: self.read32(offset::FSTS),
            fectl: self.read32(offset::FECTL),
            iectl: self.read32(offset::IECTL),
            ics: self.read32(offset::ICS),
            iqh: self.read64(offset::IQH),
            iqt: self.read64(offset::IQT),
            iqa: self.read64(offset::IQA),
            irta: self.read64(offset::IRTA),
            fe_msg: MsiMessage::new(
                self.read32(offset::FEADDR),
                self.read32(offset::FEUADDR),
                self.read32(offset::FEDATA),
            ),
            ie_msg: MsiMessage::new(
                self.read32(offset::IEADDR),
                self.read32(offset::IEUADDR),
                self.read32(offset::IEDATA),
            ),
        }
    }

    /// A numeric field of the unit's summary line (`name=value`, decimal or 0x-hex).
    pub fn summary_field(&self, name: &str) -> u64 {
        let s = self.unit.summary();
        let v = s
            .split_whitespace()
            .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("summary lists {name}: {s}"));
        match v.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16),
            None => v.parse(),
        }
        .unwrap_or_else(|e| panic!("summary field {name}={v}: {e}"))
    }

    pub fn descriptors(&self) -> u64 {
        self.summary_field("descriptors")
    }

    /// Base of the table latched by SIRTP (IRTA until then).
    pub fn table_base(&self) -> u64 {
        match self.summary_field("entries") {
            0 => self.read64(offset::IRTA) & !0xFFF,
            _ => self.summary_field("IRTA"),
        }
    }

    /// Guest-physical bytes of the interrupt remapping table in use.
    pub fn table_range(&self) -> std::ops::Range<u64> {
        let entries = match self.summary_field("entries") {
            0 => 2u64 << (self.read64(offset::IRTA) & 0xF),
            n => n,
        };
        let base = self.table_base();
        base..base.saturating_add(entries * 16)
    }

    pub fn signalled(&self) -> usize {
        self.backend.signalled.lock().unwrap().len()
    }

    pub fn slow_path(&self) -> u64 {
        self.hierarchy.vector_layer().stats().slow_path_signals
    }

    /// A register write with the per-write bounds checked.
    pub fn write(&mut self, off: u64, data: &[u8]) {
        let before = self.regs();
        let descs = self.descriptors();
        let sig = self.signalled();
        let slow = self.slow_path();
        let faults = self.unit.fault_count();

        self.unit.mmio_write(off, data);

        let after = self.regs();
        let lanes: BTreeSet<u64> = (0..data.len() as u64)
            .filter_map(|i| off.checked_add(i))
            .take_while(|&o| o < PAGE)
            .map(|o| o & !3)
            .collect();
        let lanes = lanes.len() as u64;
        let gcmd_written = lanes > 0
            && (0..data.len() as u64)
                .filter_map(|i| off.checked_add(i))
                .any(|o| (offset::GCMD..offset::GCMD + 4).contains(&o));
        if before.gsts & gsts::QIES == 0 && after.gsts & gsts::QIES != 0 {
            self.queue = Some(queue_from_iqa(before.iqa));
        }
        // Bounded work.
        let executed = self.descriptors() - descs;
        let entries = match self.queue {
            Some((_, n)) if after.gsts & gsts::QIES != 0 || before.gsts & gsts::QIES != 0 => n,
            _ => 0,
        };
        assert!(
            executed <= lanes * entries,
            "{executed} descriptors for one {}-byte write at {off:#x} (queue {:?})",
            data.len(),
            self.queue
        );
        assert!(executed <= 3 * MAX_QUEUE);
        // Only the harness fires (no device thread): a register write records no fault,
        // fires no device vector and sends only event interrupts.
        if !self.concurrent {
            assert_eq!(
                self.unit.fault_count(),
                faults,
                "a register write recorded an interrupt fault"
            );
            assert_eq!(
                self.slow_path(),
                slow,
                "register write fired a device vector"
            );
            let sent: Vec<MsiMessage> = self.backend.signalled.lock().unwrap()[sig..].to_vec();
            assert!(
                sent.len() as u64 <= 2 * lanes,
                "{} event interrupts for one write at {off:#x}: {sent:?}",
                sent.len()
            );
            for m in &sent {
                assert!(
                    [before.fe_msg, after.fe_msg, before.ie_msg, after.ie_msg].contains(m),
                    "event interrupt {m} is neither event message ({before:?} -> {after:?})"
                );
            }
            // An event masked before and after the write was masked throughout (FECTL/IECTL
            // are one lane each), so it cannot have been sent.
            let is = |m: &MsiMessage, a: MsiMessage, b: MsiMessage| *m == a || *m == b;
            for m in &sent {
                let fault = is(m, before.fe_msg, after.fe_msg);
                let completion = is(m, before.ie_msg, after.ie_msg);
                if before.fectl & after.fectl & event_ctl::IM != 0 {
                    assert!(completion, "fault event {m} sent while masked");
                }
                if before.iectl & after.iectl & event_ctl::IM != 0 {
                    assert!(fault, "completion event {m} sent while masked");
                }
            }
        }
        // Changes that re-translate every active vector.
        if gcmd_written {
            let ir_toggled = (before.gsts ^ after.gsts) & gsts::IRES != 0;
            let cfi_toggled = (before.gsts ^ after.gsts) & gsts::CFIS != 0;
            let ir = (before.gsts | after.gsts) & gsts::IRES != 0;
            let sirtp = (0..data.len())
                .filter(|&i| off.checked_add(i as u64) == Some(offset::GCMD + 3))
                .any(|i| data[i] & 1 != 0);
            if ir_toggled || (cfi_toggled && after.gsts & gsts::IRES != 0) || (sirtp && ir) {
                self.check_retranslated(RetranslateScope::All, "GCMD");
            }
        }
    }

    pub fn write32(&mut self, off: u64, v: u32) {
        self.write(off, &v.to_le_bytes());
    }

    pub fn write64(&mut self, off: u64, v: u64) {
        self.write(off, &v.to_le_bytes());
    }

    pub fn write_sized(&mut self, off: u64, v: u64, wide: bool) {
        if wide {
            self.write64(off, v);
        } else {
            self.write32(off, v as u32);
            self.write32(off + 4, (v >> 32) as u32);
        }
    }

    pub fn linux_gcmd(&mut self, command: Command) {
        let persistent = gcmd::QIE | gcmd::IRE | gcmd::CFI | gcmd::TE;
        let shadow = self.read32(offset::GSTS) & persistent;
        let set = |bit: u32, on: bool| if on { shadow | bit } else { shadow & !bit };
        let v = match command {
            Command::SetQie(on) => set(gcmd::QIE, on),
            Command::SetIre(on) => set(gcmd::IRE, on),
            Command::SetCfi(on) => set(gcmd::CFI, on),
            Command::SetTe(on) => set(gcmd::TE, on),
            Command::SetEafl(on) => set(gcmd::EAFL, on),
            Command::Sirtp => shadow | gcmd::SIRTP,
            Command::Srtp => shadow | gcmd::SRTP,
            Command::Wbf => shadow | gcmd::WBF,
            Command::Sfl => shadow | gcmd::SFL,
        };
        self.write32(offset::GCMD, v);
    }

    // --- guest memory ----------------------------------------------------------------

    pub fn addr(&self, a: Addr) -> u64 {
        match a {
            Addr::Ram(x) => u64::from(x) % RAM_END,
            Addr::Irte { index, byte } => self
                .table_base()
                .wrapping_add(u64::from(index) * 16 + u64::from(byte % 16)),
            Addr::Queue { slot, byte } => {
                let (base, _) = self
                    .queue
                    .unwrap_or_else(|| queue_from_iqa(self.read64(offset::IQA)));
                base.wrapping_add(u64::from(slot) * 16 + u64::from(byte % 16))
            }
            Addr::NearEnd(x) => RAM_END.wrapping_sub(u64::from(x % 64)),
            Addr::Hole(x) => 0x8_0000u64.wrapping_sub(32).wrapping_add(u64::from(x % 64)),
            Addr::Raw(x) => x,
        }
    }

    pub fn write_mem(&self, addr: u64, bytes: &[u8]) {
        crate::write_mem(&self.mem, addr, bytes);
    }

    pub fn irte_addr(&self, index: u16) -> u64 {
        self.table_base().wrapping_add(u64::from(index) * 16)
    }

    pub fn write_irte(&self, index: u16, irte: IrteSpec) {
        let (lo, hi) = irte.bits();
        let a = self.irte_addr(index);
        // Two 64-bit stores, like Linux's modify_irte.
        self.write_mem(a, &lo.to_le_bytes());
        self.write_mem(a.wrapping_add(8), &hi.to_le_bytes());
    }

    pub fn desc_bits(&self, d: DescSpec) -> (u64, u64) {
        match d {
            DescSpec::IecGlobal => (4, 0),
            DescSpec::IecIndex { mask, index } => (
                4 | (1 << 4) | (u64::from(mask & 0x1F) << 27) | (u64::from(index) << 32),
                0,
            ),
            DescSpec::Wait {
                sw,
                interrupt,
                fence,
                drain,
                data,
                status,
                low,
            } => (
                5 | (u64::from(interrupt) << 4)
                    | (u64::from(sw) << 5)
                    | (u64::from(fence) << 6)
                    | (u64::from(drain) << 7)
                    | (u64::from(data) << 32),
                self.addr(status) | u64::from(low & 3),
            ),
            DescSpec::ContextCache(qw0) => ((qw0 & !0xF & !(7 << 9)) | 1, 0),
            DescSpec::Iotlb(qw0, qw1) => ((qw0 & !0xF & !(7 << 9)) | 2, qw1),
            DescSpec::Dirty { base, qw0, qw1 } => {
                let (a, b) = match base % 3 {
                    0 => (4, 0),
                    1 => (4 | (1 << 4), 0),
                    _ => (5 | (1 << 5), 0x1000),
                };
                (a | qw0, b | qw1)
            }
            DescSpec::Raw(a, b) => (a, b),
        }
    }

    /// Writes `descs` at the tail of the latched queue and moves the tail past them. Checks
    /// the IEC descriptors' re-translation when the whole batch executed with IR on.
    pub fn submit(&mut self, descs: &[DescSpec], wide: bool) {
        let (base, entries) = self
            .queue
            .unwrap_or_else(|| queue_from_iqa(self.read64(offset::IQA)));
        let tail = (self.read64(offset::IQT) >> 4) & 0x7FFF;
        let mut scopes = Vec::new();
        let mut slot = tail;
        let table = self.table_range();
        for d in descs {
            let (qw0, qw1) = self.desc_bits(*d);
            if qw0 & 0xF == 4 && (qw0 >> 9) & 7 == 0 {
                scopes.push(iec_scope(qw0));
            }
            // A status write landing in the table changes IRTEs after the invalidations
            // before it: hardware keeps serving its cached entries until the next one, so
            // what those invalidations translated is no longer what the table says.
            let status = qw1 & !3;
            let status_write = qw0 & 0xF == 5 && qw0 & (1 << 5) != 0;
            if status_write && status < table.end && status.saturating_add(4) > table.start {
                scopes.clear();
            }
            let a = base.wrapping_add(slot * 16);
            self.write_mem(a, &qw0.to_le_bytes());
            self.write_mem(a.wrapping_add(8), &qw1.to_le_bytes());
            slot = (slot + 1) % entries.max(1);
        }
        let before = self.regs();
        let executed = self.descriptors();
        let new_tail = slot << 4;
        if wide {
            self.write64(offset::IQT, new_tail);
        } else {
            self.write32(offset::IQT, new_tail as u32);
        }
        let after = self.regs();
        let executed = self.descriptors() - executed;
        let all_done = !descs.is_empty()
            && executed >= descs.len() as u64
            && after.fsts & fsts::IQE == 0
            && after.iqh == new_tail
            && before.gsts & after.gsts & gsts::IRES != 0;
        if all_done {
            for s in scopes {
                self.check_retranslated(s, "IEC descriptor");
            }
        }
    }

    pub fn service_faults(&mut self) {
        let fsts_v = self.read32(offset::FSTS);
        if fsts_v & fsts::PPF != 0 {
            let mut i = u64::from((fsts_v >> fsts::FRI_SHIFT) & 0xFF);
            for _ in 0..self.records {
                let hi = self.read64(offset::FRCD + i * 16 + 8);
                if hi & FaultRecord::F == 0 {
                    break;
                }
                self.write32(offset::FRCD + i * 16 + 12, 1 << 31);
                i = (i + 1) % self.records;
            }
        }
        self.write32(offset::FSTS, fsts::PFO | fsts::PPF | fsts::PRO);
    }

    pub fn enable_ir(&mut self, queue: u64, qs: u8, table: u64, s: u8, eime: bool, mask: bool) {
        let _ = self.read32(offset::GSTS);
        self.service_faults();
        if self.read32(offset::GSTS) & gsts::QIES != 0 {
            self.linux_gcmd(Command::SetQie(false));
        }
        self.write32(offset::IQT, 0);
        self.write64(offset::IQA, queue | u64::from(qs & 7));
        self.linux_gcmd(Command::SetQie(true));
        if self.read32(offset::GSTS) & gsts::IRES != 0 {
            self.linux_gcmd(Command::SetIre(false));
        }
        self.write64(
            offset::IRTA,
            table | if eime { 1 << 11 } else { 0 } | u64::from(s & 0xF),
        );
        self.linux_gcmd(Command::Sirtp);
        self.submit(&[DescSpec::IecGlobal, DescSpec::STATUS_WAIT], false);
        self.linux_gcmd(Command::SetIre(true));
        if self.read32(offset::GSTS) & gsts::CFIS != 0 {
            self.linux_gcmd(Command::SetCfi(false));
        }
        self.write32(offset::FEDATA, 0x21);
        self.write32(offset::FEADDR, 0xFEE0_0000);
        self.write32(offset::FEUADDR, 0x100);
        self.write32(offset::IEDATA, 0x22);
        self.write32(offset::IEADDR, 0xFEE0_1000);
        self.write32(offset::IEUADDR, 0);
        let ctl = if mask { event_ctl::IM } else { 0 };
        self.write32(offset::FECTL, ctl);
        self.write32(offset::IECTL, ctl);
    }

    /// Index-selective IEC of `index` and a status wait, as Linux's `qi_flush_iec`.
    pub fn flush_iec(&mut self, index: u16) {
        self.submit(
            &[DescSpec::IecIndex { mask: 0, index }, DescSpec::STATUS_WAIT],
            false,
        );
    }

    pub fn check_outcome(msg: &MsiMessage, outcome: RemapOutcome, ctx: &str) {
        if let RemapOutcome::Deliver(m) = outcome {
            assert!(
                m.targets_interrupt_window(),
                "{ctx}: {msg} delivered outside the interrupt window as {m}"
            );
            assert!(
                !m.is_remappable(),
                "{ctx}: {msg} delivered remappable as {m}"
            );
            assert_eq!(m.address_hi() & 0xFF, 0, "{ctx}: KVM rejects addr_hi[7:0]");
            if msg.is_remappable() {
                assert_eq!(
                    m.data & !0xC7FF,
                    0,
                    "{ctx}: translated {msg} has non-architectural data bits: {m}"
                );
                let dlm = (m.data >> 8) & 7;
                assert!(
                    dlm != 3 && dlm != 6,
                    "{ctx}: translated {msg} has a reserved delivery mode: {m}"
                );
                assert_ne!(m.data & (1 << 14), 0, "{ctx}: assert bit clear in {m}");
            }
        }
    }

    /// Every active vector covered by `scope` carries what the unit translates now.
    pub fn check_retranslated(&self, scope: RetranslateScope, why: &str) {
        for d in &self.hierarchy.domains() {
            for s in d.snapshot() {
                let (Some(_), Some(m)) = (s.gsi, s.message) else {
                    continue;
                };
                if !scope.covers(&m) {
                    continue;
                }
                let fresh = self.unit.remap(d.requester(), m);
                assert_eq!(
                    s.remapped,
                    Some(fresh),
                    "{}[{}] ({m}) not re-translated after {why} ({scope:?})",
                    d.name(),
                    s.index
                );
            }
        }
    }

    /// The registers' invariants and the translations of every domain's vectors (the
    /// vector layer's books are [`crate::Recording::check_books`]).
    pub fn check(&self) {
        // Global status and identification.
        let g = self.read32(offset::GSTS);
        assert_eq!(g & !GSTS_DEFINED, 0, "GSTS {g:#x} has undefined bits");
        assert_eq!(self.read32(offset::GCMD), 0, "GCMD is write-only");
        assert_eq!(
            (
                self.read32(offset::VER),
                self.read64(offset::CAP),
                self.read64(offset::ECAP)
            ),
            self.ident,
            "identification registers changed"
        );
        assert_eq!(self.unit.is_enabled(), g & gsts::IRES != 0);

        // Fault status and records.
        let f = self.read32(offset::FSTS);
        let fri = u64::from((f >> fsts::FRI_SHIFT) & 0xFF);
        assert!(
            fri < self.records,
            "FSTS.FRI {fri} >= {} records",
            self.records
        );
        assert_eq!(
            f & !(fsts::PFO | fsts::PPF | fsts::IQE | (0xFF << fsts::FRI_SHIFT)),
            0,
            "FSTS {f:#x} has reserved or never-set bits"
        );
        let mut any = false;
        for i in 0..self.records {
            let lo = self.read64(offset::FRCD + i * 16);
            let hi = self.read64(offset::FRCD + i * 16 + 8);
            let rec = FaultRecord { lo, hi };
            if rec.is_pending() {
                any = true;
                assert!(
                    (0x20..=0x26).contains(&rec.reason()),
                    "FRCD[{i}] reason {:#x}",
                    rec.reason()
                );
                assert_eq!(lo & 0xFFFF_FFFF_FFFF, 0, "FRCD[{i}] lo {lo:#x}");
                assert_eq!(hi & 0x7FFF_FF00_FFFF_0000, 0, "FRCD[{i}] hi {hi:#x}");
            }
        }
        assert_eq!(f & fsts::PPF != 0, any, "FSTS.PPF vs FRCD F bits ({f:#x})");
        // A record window beyond the configured records reads zero.
        if self.records < cap::MAX_FAULT_RECORDS {
            assert_eq!(self.read64(offset::FRCD + self.records * 16 + 8), 0);
        }

        // Event and completion registers.
        let fectl = self.read32(offset::FECTL);
        let iectl = self.read32(offset::IECTL);
        assert_eq!(
            fectl & !(event_ctl::IM | event_ctl::IP),
            0,
            "FECTL {fectl:#x}"
        );
        assert_eq!(
            iectl & !(event_ctl::IM | event_ctl::IP),
            0,
            "IECTL {iectl:#x}"
        );
        if fectl & event_ctl::IM == 0 {
            assert_eq!(fectl & event_ctl::IP, 0, "fault event held while unmasked");
        }
        if iectl & event_ctl::IM == 0 {
            assert_eq!(
                iectl & event_ctl::IP,
                0,
                "completion event held while unmasked"
            );
        }
        let ics_v = self.read32(offset::ICS);
        assert_eq!(ics_v & !ics::IWC, 0, "ICS {ics_v:#x}");
        if iectl & event_ctl::IP != 0 {
            assert_ne!(ics_v & ics::IWC, 0, "completion event pending without IWC");
        }

        // The queue head stays inside the latched queue.
        let iqh = self.read64(offset::IQH);
        assert_eq!(iqh & !(0x7FFF << 4), 0, "IQH {iqh:#x}");
        match self.queue {
            Some((_, n)) => assert!((iqh >> 4) < n, "IQH {} beyond {n} entries", iqh >> 4),
            None => assert_eq!(iqh, 0),
        }

        // Every active vector has a translation, and what it delivers is deliverable.
        for d in &self.hierarchy.domains() {
            for s in d.snapshot() {
                if s.gsi.is_some() {
                    assert!(s.remapped.is_some(), "active vector without a translation");
                }
                if let (Some(m), Some(o)) = (s.message, s.remapped) {
                    Self::check_outcome(&m, o, "domain vector");
                }
            }
        }
        for (gsi, m) in self.backend.committed.lock().unwrap().iter() {
            assert!(
                m.targets_interrupt_window() && !m.is_remappable(),
                "committed route of GSI {gsi} is {m}"
            );
        }
    }
}
