//! Fuzzes the VT-d interrupt-remapping unit (`interrupt::vtd::VtdUnit`) as the remap layer of
//! an `InterruptHierarchy` on a `RecordingBackend` (no KVM), with 1 MiB of guest RAM (one
//! region, two adjacent regions, or two with a hole) so tables, queues and status addresses
//! often point outside RAM.
//!
//! Operations: register reads/writes of any size (0..=16 bytes) at any offset (known
//! registers with any misalignment, fault recording registers, anywhere in or beyond the
//! page, any u64), raw and Linux-style GCMD commands, IQA/IRTA programming, Linux's enable
//! sequence, descriptor submission (IEC, wait with SW/IF/FN/PD and any status address,
//! context-cache/IOTLB, raw garbage, reserved bits), guest-memory writes (raw bytes,
//! structured or garbage IRTEs), `remap()`/`report_blocked()` with any requester and message
//! format, and device domains (create, drop, set_message, mask/unmask, fire, release) so
//! the hierarchy's re-translation paths run.
//!
//! Invariants checked after every operation:
//! - GSTS holds only RTPS/QIES/IRES/IRTPS/CFIS; GCMD reads 0; VER/CAP/ECAP never change;
//!   FSTS has no reserved/never-set bits, FRI < number of fault records, PPF is the OR of
//!   the records' F bits, every pending record has a reason 0x20..=0x26; FECTL/IECTL/ICS
//!   hold only their defined bits; IQH lies inside the latched queue;
//! - work per register write is bounded: descriptors executed <= touched lanes x queue
//!   size, at most two event interrupts per lane, only to the programmed event messages;
//!   reads and non-register operations execute no descriptor and send nothing;
//! - bytes beyond the register page read 0 and reads have no side effects;
//! - `remap()` has no side effects; a Deliver outcome targets the interrupt window, is never
//!   remappable, and a translated one has only architectural data bits and a valid delivery
//!   mode; `report_blocked()` records at most one fault and none for a deliverable message;
//! - every active domain vector's route is a Deliver in the interrupt window; after a
//!   change that re-translates everything (IRE/CFI toggle, SIRTP with IR on) or an executed
//!   IEC descriptor, every covered active vector carries exactly what `remap()` gives now;
//! - the vector layer's books balance, and tearing the domains down frees every vector.

#![no_main]

use std::collections::BTreeSet;
use std::sync::Arc;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use interrupt::vtd::spec::{cap, event_ctl, fsts, gcmd, gsts, ics, offset, FaultRecord};
use interrupt::{
    DeviceDomain, DomainKind, InterruptHierarchy, KvmVectorLayer, MsiMessage, RecordingBackend,
    RemapLayer, RemapOutcome, RequesterId, RetranslateScope, VtdConfig, VtdUnit,
};

const RAM_END: u64 = 0x10_0000;
const PAGE: u64 = 0x1000;
const RESERVED_GSIS: u32 = 24;
const MAX_DOMAINS: usize = 6;
const MAX_QUEUE: u64 = 1 << 15;
const GSTS_DEFINED: u32 = gsts::RTPS | gsts::QIES | gsts::IRES | gsts::IRTPS | gsts::CFIS;

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Layout {
    One,
    Split,
    Hole,
}

impl Layout {
    fn ranges(self) -> Vec<(GuestAddress, usize)> {
        match self {
            Layout::One => vec![(GuestAddress(0), RAM_END as usize)],
            Layout::Split => vec![
                (GuestAddress(0), 0x8_0000),
                (GuestAddress(0x8_0000), 0x8_0000),
            ],
            Layout::Hole => vec![
                (GuestAddress(0), 0x8_0000),
                (GuestAddress(0xC_0000), 0x4_0000),
            ],
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Size {
    B1,
    B2,
    B4,
    B8,
    Any(u8),
}

impl Size {
    fn len(self) -> usize {
        match self {
            Size::B1 => 1,
            Size::B2 => 2,
            Size::B4 => 4,
            Size::B8 => 8,
            Size::Any(n) => usize::from(n % 17),
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Reg {
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
    fn offset(self) -> u64 {
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
enum Off {
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
    fn get(self) -> u64 {
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
enum Addr {
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
enum Base {
    /// A 4 KiB page inside the first 1 MiB.
    Page(u8),
    /// Last page(s) of RAM, so big tables run off the end.
    Last(u8),
    Raw(u64),
}

impl Base {
    fn get(self) -> u64 {
        match self {
            Base::Page(p) => u64::from(p) << 12,
            Base::Last(n) => RAM_END - (u64::from(n % 4) + 1) * PAGE,
            Base::Raw(a) => a & !0xFFF,
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Dlm {
    Fixed,
    Lowest,
    Other(u8),
}

/// An IRTE as 128 bits.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum IrteSpec {
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
    fn bits(self) -> (u64, u64) {
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
enum MsgSpec {
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
    fn get(self) -> MsiMessage {
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
enum DescSpec {
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

/// Linux's CMD for a GCMD write: its shadow of the persistent bits plus one command.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Command {
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

#[derive(Arbitrary, Debug)]
enum Op {
    Read {
        off: Off,
        size: Size,
    },
    Write {
        off: Off,
        size: Size,
        value: u64,
        value_hi: u64,
    },
    /// A raw 32-bit GCMD write (any combination of bits).
    Gcmd(u32),
    /// GCMD the way Linux writes it.
    Linux(Command),
    SetIqa {
        base: Base,
        qs: u8,
        dw: bool,
        wide: bool,
    },
    SetIrta {
        base: Base,
        eime: bool,
        s: u8,
        wide: bool,
    },
    /// Linux's bring-up: clear faults, QI on, IRTA + SIRTP, global IEC + wait, IRE, events.
    EnableIr {
        queue: Base,
        qs: u8,
        table: Base,
        s: u8,
        eime: bool,
        mask_events: bool,
    },
    /// Places descriptors at the tail and writes IQT.
    Submit {
        descs: Vec<DescSpec>,
        wide: bool,
    },
    /// Writes the tail register alone (32-bit).
    SetTail(u32),
    /// Fills `count` slots from the tail with one descriptor, then (optionally) moves the
    /// tail past them: huge queues with thousands of valid descriptors per IQT write.
    Flood {
        desc: DescSpec,
        count: u16,
        move_tail: bool,
    },
    /// Linux's `dmar_fault`: read FSTS, clear pending records from FRI, clear FSTS.
    ServiceFaults,
    WriteMem {
        addr: Addr,
        bytes: Vec<u8>,
    },
    WriteIrte {
        index: u16,
        irte: IrteSpec,
    },
    Remap {
        requester: u16,
        msg: MsgSpec,
    },
    ReportBlocked {
        requester: u16,
        msg: MsgSpec,
        repeat: u8,
    },
    CreateDomain {
        requester: u16,
        size: u8,
        kind: u8,
    },
    DropDomain(u8),
    SetMessage {
        dom: u8,
        index: u8,
        msg: Option<MsgSpec>,
    },
    SetMasked {
        dom: u8,
        index: u8,
        masked: bool,
    },
    Fire {
        dom: u8,
        index: u8,
        count: u8,
    },
    Release {
        dom: u8,
        index: u8,
    },
    /// Programs a vector, unmasks it and fires it (`count` + 1 times).
    Activate {
        dom: u8,
        index: u8,
        msg: MsgSpec,
        count: u8,
    },
    /// What Linux does for one vector: write the IRTE, point the vector at it, unmask, and
    /// invalidate the entry (index-selective IEC + wait).
    ProgramVector {
        dom: u8,
        index: u8,
        irte_index: u16,
        irte: IrteSpec,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    layout: Layout,
    records: u8,
    ioapic_sid: u16,
    /// A domain that exists from the start (requester, size).
    first_domain: (u16, u8),
    /// Start from Linux's bring-up (`Op::EnableIr`) to reach translation sooner.
    preset: Option<(Base, u8, Base, u8, bool)>,
    ops: Vec<Op>,
}

/// Register values the harness compares across an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Regs {
    gsts: u32,
    fsts: u32,
    fectl: u32,
    iectl: u32,
    ics: u32,
    iqh: u64,
    iqt: u64,
    iqa: u64,
    irta: u64,
    fe_msg: MsiMessage,
    ie_msg: MsiMessage,
}

struct Fixture {
    mem: GuestMemoryMmap,
    backend: Arc<RecordingBackend>,
    hierarchy: Arc<InterruptHierarchy>,
    unit: Arc<VtdUnit>,
    domains: Vec<Arc<DeviceDomain>>,
    records: u64,
    ident: (u32, u64, u64),
    /// Queue the unit latched when QIE was last enabled: (base, entries).
    queue: Option<(u64, u64)>,
}

fn queue_from_iqa(iqa: u64) -> (u64, u64) {
    (iqa & !0xFFF, 1 << ((iqa & 7) + 8))
}

fn iec_scope(qw0: u64) -> RetranslateScope {
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

impl Fixture {
    fn new(input: &Input) -> Self {
        let mem = GuestMemoryMmap::from_ranges(&input.layout.ranges()).expect("guest memory");
        let backend = Arc::new(RecordingBackend::default());
        let layer = Arc::new(KvmVectorLayer::new(backend.clone(), RESERVED_GSIS, 4096));
        let unit = VtdUnit::new(
            mem.clone(),
            layer.clone(),
            VtdConfig {
                register_base: 0xFED9_0000,
                ioapic_source_id: RequesterId(input.ioapic_sid),
                num_fault_records: input.records,
            },
        );
        let hierarchy = InterruptHierarchy::new(layer, unit.clone());
        unit.set_hierarchy(Arc::downgrade(&hierarchy));
        let mut f = Self {
            mem,
            backend,
            hierarchy,
            unit,
            domains: Vec::new(),
            records: u64::from(input.records).clamp(1, cap::MAX_FAULT_RECORDS),
            ident: (0, 0, 0),
            queue: None,
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

    fn read(&self, off: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        self.unit.mmio_read(off, &mut b[..len]);
        u64::from_le_bytes(b)
    }

    fn read32(&self, off: u64) -> u32 {
        self.read(off, 4) as u32
    }

    fn read64(&self, off: u64) -> u64 {
        self.read(off, 8)
    }

    fn regs(&self) -> Regs {
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
    fn summary_field(&self, name: &str) -> u64 {
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

    fn descriptors(&self) -> u64 {
        self.summary_field("descriptors")
    }

    /// Base of the table latched by SIRTP (IRTA until then).
    fn table_base(&self) -> u64 {
        match self.summary_field("entries") {
            0 => self.read64(offset::IRTA) & !0xFFF,
            _ => self.summary_field("IRTA"),
        }
    }

    fn signalled(&self) -> usize {
        self.backend.signalled.lock().unwrap().len()
    }

    fn slow_path(&self) -> u64 {
        self.hierarchy.vector_layer().stats().slow_path_signals
    }

    /// A register write with the per-write bounds checked.
    fn write(&mut self, off: u64, data: &[u8]) {
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

    fn write32(&mut self, off: u64, v: u32) {
        self.write(off, &v.to_le_bytes());
    }

    fn write64(&mut self, off: u64, v: u64) {
        self.write(off, &v.to_le_bytes());
    }

    fn write_sized(&mut self, off: u64, v: u64, wide: bool) {
        if wide {
            self.write64(off, v);
        } else {
            self.write32(off, v as u32);
            self.write32(off + 4, (v >> 32) as u32);
        }
    }

    fn linux_gcmd(&mut self, command: Command) {
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

    fn addr(&self, a: Addr) -> u64 {
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

    fn write_mem(&self, addr: u64, bytes: &[u8]) {
        // Partly or wholly outside RAM is fine: vm-memory refuses what does not fit.
        let _ = self.mem.write_slice(bytes, GuestAddress(addr));
    }

    fn irte_addr(&self, index: u16) -> u64 {
        self.table_base().wrapping_add(u64::from(index) * 16)
    }

    fn write_irte(&self, index: u16, irte: IrteSpec) {
        let (lo, hi) = irte.bits();
        let a = self.irte_addr(index);
        // Two 64-bit stores, like Linux's modify_irte.
        self.write_mem(a, &lo.to_le_bytes());
        self.write_mem(a.wrapping_add(8), &hi.to_le_bytes());
    }

    fn desc_bits(&self, d: DescSpec) -> (u64, u64) {
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
    fn submit(&mut self, descs: &[DescSpec], wide: bool) {
        let (base, entries) = self
            .queue
            .unwrap_or_else(|| queue_from_iqa(self.read64(offset::IQA)));
        let tail = (self.read64(offset::IQT) >> 4) & 0x7FFF;
        let mut scopes = Vec::new();
        let mut slot = tail;
        for d in descs {
            let (qw0, qw1) = self.desc_bits(*d);
            if qw0 & 0xF == 4 && (qw0 >> 9) & 7 == 0 {
                scopes.push(iec_scope(qw0));
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

    fn service_faults(&mut self) {
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

    fn enable_ir(&mut self, queue: u64, qs: u8, table: u64, s: u8, eime: bool, mask: bool) {
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
        let status = DescSpec::Wait {
            sw: true,
            interrupt: false,
            fence: false,
            drain: false,
            data: 2,
            status: Addr::Ram(0x3000),
            low: 0,
        };
        self.submit(&[DescSpec::IecGlobal, status], false);
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

    // --- domains ---------------------------------------------------------------------

    fn domain(&self, dom: u8) -> Option<Arc<DeviceDomain>> {
        if self.domains.is_empty() {
            return None;
        }
        Some(self.domains[usize::from(dom) % self.domains.len()].clone())
    }

    /// Mostly valid indices, sometimes one past the end.
    fn index(d: &DeviceDomain, index: u8) -> usize {
        if index == 0xFF {
            d.size()
        } else {
            usize::from(index) % d.size()
        }
    }

    // --- checks ----------------------------------------------------------------------

    fn check_outcome(msg: &MsiMessage, outcome: RemapOutcome, ctx: &str) {
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
    fn check_retranslated(&self, scope: RetranslateScope, why: &str) {
        for d in &self.domains {
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

    fn check(&self) {
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

        // Domains, routes and the vector layer's books.
        let stats = self.hierarchy.vector_layer().stats();
        assert!(stats.routes <= stats.allocated, "{stats:?}");
        let mut gsis = BTreeSet::new();
        for d in &self.domains {
            for s in d.snapshot() {
                assert!(
                    s.deliveries + s.dropped <= s.fires,
                    "{}[{}]: {s:?}",
                    d.name(),
                    s.index
                );
                if let Some(g) = s.gsi {
                    assert!(gsis.insert(g), "GSI {g} used twice");
                    assert!(s.remapped.is_some(), "active vector without a translation");
                }
                if let (Some(m), Some(o)) = (s.message, s.remapped) {
                    Self::check_outcome(&m, o, "domain vector");
                }
            }
        }
        assert_eq!(
            gsis.len(),
            stats.allocated,
            "allocated vectors vs domain GSIs"
        );
        let irqfds: BTreeSet<u32> = self
            .backend
            .irqfds
            .lock()
            .unwrap()
            .iter()
            .copied()
            .collect();
        assert_eq!(irqfds, gsis, "irqfds vs allocated GSIs");
        for (gsi, m) in self.backend.committed.lock().unwrap().iter() {
            assert!(
                m.targets_interrupt_window() && !m.is_remappable(),
                "committed route of GSI {gsi} is {m}"
            );
        }
    }

    fn run(&mut self, op: &Op) {
        let descs = self.descriptors();
        let sig = self.signalled();
        let slow = self.slow_path();
        let mut register_write = true;
        match op {
            Op::Read { off, size } => {
                register_write = false;
                let off = off.get();
                let len = size.len();
                let mut a = vec![0u8; len];
                let mut b = vec![0xAAu8; len];
                self.unit.mmio_read(off, &mut a);
                self.unit.mmio_read(off, &mut b);
                assert_eq!(a, b, "reading {len} bytes at {off:#x} has side effects");
                for (i, byte) in a.iter().enumerate() {
                    if off.checked_add(i as u64).is_none_or(|o| o >= PAGE) {
                        assert_eq!(*byte, 0, "byte {i} of a read at {off:#x} beyond the page");
                    }
                }
            }
            Op::Write {
                off,
                size,
                value,
                value_hi,
            } => {
                let mut bytes = [0u8; 16];
                bytes[..8].copy_from_slice(&value.to_le_bytes());
                bytes[8..].copy_from_slice(&value_hi.to_le_bytes());
                self.write(off.get(), &bytes[..size.len()]);
            }
            Op::Gcmd(v) => self.write32(offset::GCMD, *v),
            Op::Linux(c) => self.linux_gcmd(*c),
            Op::SetIqa { base, qs, dw, wide } => {
                let v = base.get() | u64::from(qs & 7) | if *dw { 1 << 11 } else { 0 };
                // Sometimes garbage in the reserved bits 10:3.
                let v = v | if *qs >= 0x80 {
                    u64::from(*qs) << 3 & 0x7F8
                } else {
                    0
                };
                self.write_sized(offset::IQA, v, *wide);
            }
            Op::SetIrta {
                base,
                eime,
                s,
                wide,
            } => {
                let v = base.get() | u64::from(s & 0xF) | if *eime { 1 << 11 } else { 0 };
                let v = v | if *s >= 0x80 {
                    u64::from(*s) << 4 & 0x7F0
                } else {
                    0
                };
                self.write_sized(offset::IRTA, v, *wide);
            }
            Op::EnableIr {
                queue,
                qs,
                table,
                s,
                eime,
                mask_events,
            } => self.enable_ir(queue.get(), *qs, table.get(), *s, *eime, *mask_events),
            Op::Submit { descs, wide } => {
                let n = descs.len().min(64);
                self.submit(&descs[..n], *wide);
            }
            Op::SetTail(v) => self.write32(offset::IQT, *v),
            Op::Flood {
                desc,
                count,
                move_tail,
            } => {
                let (base, entries) = self
                    .queue
                    .unwrap_or_else(|| queue_from_iqa(self.read64(offset::IQA)));
                let tail = (self.read64(offset::IQT) >> 4) & 0x7FFF;
                let (qw0, qw1) = self.desc_bits(*desc);
                let mut bytes = [0u8; 16];
                bytes[..8].copy_from_slice(&qw0.to_le_bytes());
                bytes[8..].copy_from_slice(&qw1.to_le_bytes());
                let n = u64::from(*count) % entries;
                for i in 0..n {
                    let slot = (tail + i) % entries;
                    self.write_mem(base.wrapping_add(slot * 16), &bytes);
                }
                if *move_tail {
                    self.write32(offset::IQT, (((tail + n) % entries) << 4) as u32);
                }
            }
            Op::ServiceFaults => self.service_faults(),
            Op::WriteMem { addr, bytes } => {
                register_write = false;
                let n = bytes.len().min(256);
                self.write_mem(self.addr(*addr), &bytes[..n]);
            }
            Op::WriteIrte { index, irte } => {
                register_write = false;
                self.write_irte(*index, *irte);
            }
            Op::Remap { requester, msg } => {
                register_write = false;
                let m = msg.get();
                let r = RequesterId(*requester);
                let before = self.regs();
                let faults = self.unit.fault_count();
                let records: Vec<u64> = (0..self.records)
                    .map(|i| self.read64(offset::FRCD + i * 16 + 8))
                    .collect();
                let outcome = self.unit.remap(r, m);
                Self::check_outcome(&m, outcome, "remap");
                assert_eq!(self.unit.remap(r, m), outcome, "remap is not deterministic");
                assert_eq!(self.regs(), before, "remap changed registers");
                assert_eq!(self.unit.fault_count(), faults, "remap recorded a fault");
                let after: Vec<u64> = (0..self.records)
                    .map(|i| self.read64(offset::FRCD + i * 16 + 8))
                    .collect();
                assert_eq!(records, after, "remap changed fault records");
                let ir = before.gsts & gsts::IRES != 0;
                if !ir && m.is_remappable() {
                    assert_eq!(outcome, RemapOutcome::Blocked, "remappable {m} with IR off");
                }
                if !ir && m.targets_interrupt_window() && !m.is_remappable() {
                    assert_eq!(outcome, RemapOutcome::Deliver(m), "{m} with IR off");
                }
                if ir && !m.is_remappable() && before.gsts & gsts::CFIS == 0 {
                    assert_eq!(outcome, RemapOutcome::Blocked, "compatibility {m}, CFI off");
                }
            }
            Op::ReportBlocked {
                requester,
                msg,
                repeat,
            } => {
                register_write = false;
                let m = msg.get();
                let r = RequesterId(*requester);
                let deliverable = matches!(self.unit.remap(r, m), RemapOutcome::Deliver(_));
                for _ in 0..=(*repeat % 64) {
                    let faults = self.unit.fault_count();
                    let sig = self.signalled();
                    self.unit.report_blocked(r, m);
                    let recorded = self.unit.fault_count() - faults;
                    let sent = self.signalled() - sig;
                    assert!(recorded <= 1, "one request recorded {recorded} faults");
                    assert!(sent <= 1, "one request sent {sent} event interrupts");
                    if deliverable {
                        assert_eq!(recorded, 0, "fault recorded for deliverable {m}");
                        assert_eq!(sent, 0);
                    }
                    if sent == 1 {
                        assert_eq!(
                            self.backend.signalled.lock().unwrap().last().copied(),
                            Some(self.regs().fe_msg),
                            "fault event with the wrong message"
                        );
                    }
                }
            }
            Op::CreateDomain {
                requester,
                size,
                kind,
            } => {
                register_write = false;
                if self.domains.len() < MAX_DOMAINS {
                    let kind = match kind % 4 {
                        0 => DomainKind::Msi,
                        1 => DomainKind::MsiX,
                        2 => DomainKind::Ims,
                        _ => DomainKind::Ioapic,
                    };
                    let n = self.domains.len();
                    let d = self.hierarchy.create_domain(
                        &format!("dom{n}"),
                        kind,
                        RequesterId(*requester),
                        usize::from(size % 64) + 1,
                        None,
                    );
                    self.domains.push(d);
                }
            }
            Op::DropDomain(i) => {
                register_write = false;
                if !self.domains.is_empty() {
                    let n = self.domains.len();
                    self.domains.remove(usize::from(*i) % n);
                }
            }
            Op::SetMessage { dom, index, msg } => {
                register_write = false;
                if let Some(d) = self.domain(*dom) {
                    let i = Self::index(&d, *index);
                    let msg = msg.map(MsgSpec::get);
                    let changed = d.vector_snapshot(i).is_some_and(|s| s.message != msg);
                    let r = d.set_message(i, msg);
                    assert_eq!(r.is_ok(), i < d.size(), "set_message({i}): {r:?}");
                    // An unchanged message keeps its (possibly stale) translation.
                    if let Some(s) = d.vector_snapshot(i).filter(|_| changed) {
                        if let (Some(_), Some(m)) = (s.gsi, s.message) {
                            assert_eq!(
                                s.remapped,
                                Some(self.unit.remap(d.requester(), m)),
                                "set_message did not re-route"
                            );
                        }
                    }
                }
            }
            Op::SetMasked { dom, index, masked } => {
                register_write = false;
                if let Some(d) = self.domain(*dom) {
                    let i = Self::index(&d, *index);
                    let r = d.set_masked(i, *masked);
                    assert_eq!(r.is_ok(), i < d.size(), "set_masked({i}): {r:?}");
                }
            }
            Op::Fire { dom, index, count } => {
                register_write = false;
                if let Some(d) = self.domain(*dom) {
                    let i = Self::index(&d, *index);
                    for _ in 0..=(count % 8) {
                        let r = d.fire(i);
                        assert_eq!(r.is_ok(), i < d.size(), "fire({i}): {r:?}");
                    }
                }
            }
            Op::Activate {
                dom,
                index,
                msg,
                count,
            } => {
                register_write = false;
                if let Some(d) = self.domain(*dom) {
                    let i = usize::from(*index) % d.size();
                    let m = msg.get();
                    d.set_message(i, Some(m)).expect("index in range");
                    d.set_masked(i, false).expect("index in range");
                    let before = d.vector_snapshot(i).expect("index in range");
                    for _ in 0..=(count % 8) {
                        d.fire(i).expect("index in range");
                    }
                    let after = d.vector_snapshot(i).expect("index in range");
                    let n = u64::from(count % 8) + 1;
                    assert_eq!(after.fires - before.fires, n);
                    // An unmasked vector delivers exactly when its translation is Deliver.
                    match after.remapped {
                        Some(RemapOutcome::Deliver(_)) => {
                            assert_eq!(after.deliveries - before.deliveries, n, "{after:?}")
                        }
                        _ => assert_eq!(after.dropped - before.dropped, n, "{after:?}"),
                    }
                    assert!(!after.pending, "unmasked vector left pending: {after:?}");
                }
            }
            Op::Release { dom, index } => {
                register_write = false;
                if let Some(d) = self.domain(*dom) {
                    let i = Self::index(&d, *index);
                    let r = d.release(i);
                    assert_eq!(r.is_ok(), i < d.size(), "release({i}): {r:?}");
                }
            }
            Op::ProgramVector {
                dom,
                index,
                irte_index,
                irte,
            } => {
                if let Some(d) = self.domain(*dom) {
                    let i = usize::from(*index) % d.size();
                    self.write_irte(*irte_index, *irte);
                    let msg = MsgSpec::Linux(*irte_index).get();
                    d.set_message(i, Some(msg)).expect("index in range");
                    d.set_masked(i, false).expect("index in range");
                    let status = DescSpec::Wait {
                        sw: true,
                        interrupt: false,
                        fence: false,
                        drain: false,
                        data: 2,
                        status: Addr::Ram(0x3000),
                        low: 0,
                    };
                    self.submit(
                        &[
                            DescSpec::IecIndex {
                                mask: 0,
                                index: *irte_index,
                            },
                            status,
                        ],
                        false,
                    );
                }
            }
        }
        if !register_write {
            assert_eq!(self.descriptors(), descs, "{op:?} executed descriptors");
            // Only fault events may be sent, at most one per request (fires and reports).
            let sent = (self.signalled() - sig) as u64 - (self.slow_path() - slow);
            let bound = match op {
                Op::ReportBlocked { repeat, .. } => u64::from(*repeat % 64) + 1,
                Op::Fire { count, .. } | Op::Activate { count, .. } => u64::from(count % 8) + 1,
                Op::SetMasked { .. } => 1,
                _ => 0,
            };
            assert!(sent <= bound, "{op:?} sent {sent} event interrupts");
        }
    }
}

fuzz_target!(|input: Input| {
    let mut f = Fixture::new(&input);
    let (requester, size) = input.first_domain;
    f.run(&Op::CreateDomain {
        requester,
        size,
        kind: 1,
    });
    f.check();
    if let Some((queue, qs, table, s, eime)) = input.preset {
        f.run(&Op::EnableIr {
            queue,
            qs,
            table,
            s,
            eime,
            mask_events: false,
        });
        f.check();
    }
    for op in &input.ops {
        f.run(op);
        f.check();
    }
    // Tear the domains down: every vector goes back.
    let Fixture {
        backend,
        hierarchy,
        unit,
        domains,
        ..
    } = f;
    drop(domains);
    let stats = hierarchy.vector_layer().stats();
    assert_eq!(
        stats.allocated, 0,
        "vectors leaked after the domains went away"
    );
    assert_eq!(stats.routes, 0);
    assert!(backend.irqfds.lock().unwrap().is_empty());
    drop(hierarchy);
    drop(unit);
});
