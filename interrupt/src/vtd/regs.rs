//! The register file: storage, read decoding and the per-register write rules.
//!
//! Every access is decomposed into 32-bit lanes ([`State::read_dword`],
//! [`State::write_dword`] with a byte mask), so 1-, 2-, 4- and 8-byte accesses at any
//! alignment follow the same rules: 64-bit registers are two lanes, read-only and unknown
//! lanes ignore writes and unknown lanes read 0.

use super::spec::{
    cap, ecap, event_ctl, event_msg, fsts, gcmd, gsts, ics, iq, irta, offset, reg_inval,
    FaultRecord, Irte, REGISTER_PAGE_SIZE, VERSION,
};
use super::Effects;

/// The interrupt-remapping table latched by SIRTP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct IrTable {
    /// Guest-physical base address.
    pub base: u64,
    /// Extended interrupt mode: 32-bit destinations.
    pub eime: bool,
    /// Number of entries, `2^(S + 1)`.
    pub entries: u32,
}

impl IrTable {
    fn from_irta(value: u64) -> Self {
        Self {
            base: value & irta::BASE_MASK,
            eime: value & irta::EIME != 0,
            entries: 1 << ((value & irta::S_MASK) + 1),
        }
    }
}

/// The invalidation queue latched when QIE is enabled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Queue {
    /// Guest-physical base address.
    pub base: u64,
    /// Number of 128-bit entries, `2^(QS + 8)`.
    pub entries: u32,
}

impl Queue {
    fn from_iqa(value: u64) -> Self {
        Self {
            base: value & iq::IQA_BASE_MASK,
            entries: 1 << ((value & iq::IQA_QS_MASK) + 8),
        }
    }
}

/// Register and internal state of the unit (guarded by the unit's mutex).
pub(super) struct State {
    pub cap: u64,
    pub ecap: u64,
    pub gsts: u32,
    pub rtaddr: u64,
    pub ccmd: u64,
    /// Write-1-to-clear status bits of FSTS (PPF and FRI are derived).
    pub fsts: u32,
    /// FRI: index of the first pending fault record.
    pub fri: u8,
    pub fectl: u32,
    pub fedata: u32,
    pub feaddr: u32,
    pub feuaddr: u32,
    /// Queue head index.
    pub iqh: u32,
    /// Raw IQT value (only the index bits are kept).
    pub iqt: u64,
    pub iqa: u64,
    pub ics: u32,
    pub iectl: u32,
    pub iedata: u32,
    pub ieaddr: u32,
    pub ieuaddr: u32,
    pub irta: u64,
    pub iva: u64,
    pub iotlb: u64,
    /// Fault recording registers.
    pub frcd: Vec<FaultRecord>,
    /// Where the next fault is recorded.
    pub next_record: usize,
    /// Table latched by SIRTP.
    pub table: Option<IrTable>,
    /// Queue latched by enabling QIE.
    pub queue: Option<Queue>,
    /// Faults reported to the guest (recorded or lost to overflow).
    pub faults_reported: u64,
    /// Faults detected but not reported (FPD, or found while re-translating).
    pub faults_suppressed: u64,
    /// Descriptors executed.
    pub descriptors: u64,
}

/// Bits of `value` under `mask & writable` replace those of `old`.
fn merge32(old: u32, value: u32, mask: u32, writable: u32) -> u32 {
    let m = mask & writable;
    (old & !m) | (value & m)
}

/// Like [`merge32`] for the low (`high == false`) or high lane of a 64-bit register.
fn merge64(old: u64, high: bool, value: u32, mask: u32, writable: u64) -> u64 {
    let shift = if high { 32 } else { 0 };
    let m = (u64::from(mask) << shift) & writable;
    (old & !m) | ((u64::from(value) << shift) & m)
}

/// The low or high lane of a 64-bit value.
fn lane(value: u64, high: bool) -> u32 {
    if high {
        (value >> 32) as u32
    } else {
        value as u32
    }
}

/// Persistent GCMD bits (the others are one-shot commands).
const PERSISTENT: u32 = gcmd::TE | gcmd::EAFL | gcmd::QIE | gcmd::IRE | gcmd::CFI;

impl State {
    pub(super) fn new(num_fault_records: usize) -> Self {
        let nfr = num_fault_records as u64;
        let cap = (cap::FRO_VALUE << cap::FRO_SHIFT)
            | ((nfr - 1) << cap::NFR_SHIFT)
            | (cap::MGAW_VALUE << cap::MGAW_SHIFT);
        let ecap = ecap::C
            | ecap::QI
            | ecap::IR
            | ecap::EIM
            | (ecap::IRO_VALUE << ecap::IRO_SHIFT)
            | (ecap::MHMV_VALUE << ecap::MHMV_SHIFT);
        Self {
            cap,
            ecap,
            gsts: 0,
            rtaddr: 0,
            ccmd: 0,
            fsts: 0,
            fri: 0,
            fectl: event_ctl::IM,
            fedata: 0,
            feaddr: 0,
            feuaddr: 0,
            iqh: 0,
            iqt: 0,
            iqa: 0,
            ics: 0,
            iectl: event_ctl::IM,
            iedata: 0,
            ieaddr: 0,
            ieuaddr: 0,
            irta: 0,
            iva: 0,
            iotlb: 0,
            frcd: vec![FaultRecord::default(); num_fault_records],
            next_record: 0,
            table: None,
            queue: None,
            faults_reported: 0,
            faults_suppressed: 0,
            descriptors: 0,
        }
    }

    /// Whether interrupt remapping is enabled (GSTS.IRES).
    pub(super) fn ir_enabled(&self) -> bool {
        self.gsts & gsts::IRES != 0
    }

    /// The fault recording register window: `(first offset, end offset)`.
    fn frcd_window(&self) -> (u64, u64) {
        (
            offset::FRCD,
            offset::FRCD + self.frcd.len() as u64 * Irte::SIZE,
        )
    }

    /// FSTS as the guest reads it.
    pub(super) fn fsts_value(&self) -> u32 {
        let ppf = if self.any_fault_pending() {
            fsts::PPF
        } else {
            0
        };
        self.fsts | ppf | (u32::from(self.fri) << fsts::FRI_SHIFT)
    }

    /// Reads the 32-bit lane at 4-byte aligned `off` (below the page size).
    pub(super) fn read_dword(&self, off: u64) -> u32 {
        let high = off & 4 != 0;
        let (frcd_start, frcd_end) = self.frcd_window();
        match off & !7 {
            _ if (frcd_start..frcd_end).contains(&off) => {
                let rel = off - frcd_start;
                let rec = &self.frcd[(rel / 16) as usize];
                let qword = if rel & 8 != 0 { rec.hi } else { rec.lo };
                return lane(qword, high);
            }
            offset::CAP => return lane(self.cap, high),
            offset::ECAP => return lane(self.ecap, high),
            offset::RTADDR => return lane(self.rtaddr, high),
            offset::CCMD => return lane(self.ccmd, high),
            offset::IQH => return lane(u64::from(self.iqh) << iq::INDEX_SHIFT, high),
            offset::IQT => return lane(self.iqt, high),
            offset::IQA => return lane(self.iqa, high),
            offset::IRTA => return lane(self.irta, high),
            offset::IVA => return lane(self.iva, high),
            offset::IOTLB => return lane(self.iotlb, high),
            _ => {}
        }
        match off {
            offset::VER => VERSION,
            offset::GSTS => self.gsts,
            offset::FSTS => self.fsts_value(),
            offset::FECTL => self.fectl,
            offset::FEDATA => self.fedata,
            offset::FEADDR => self.feaddr,
            offset::FEUADDR => self.feuaddr,
            offset::ICS => self.ics,
            offset::IECTL => self.iectl,
            offset::IEDATA => self.iedata,
            offset::IEADDR => self.ieaddr,
            offset::IEUADDR => self.ieuaddr,
            // GCMD is write-only; everything else is reserved or unimplemented.
            _ => 0,
        }
    }

    /// Writes the bytes of `value` selected by `mask` to the 32-bit lane at 4-byte aligned
    /// `off` (below the page size), applying the register's rules.
    pub(super) fn write_dword(&mut self, off: u64, value: u32, mask: u32, fx: &mut Effects) {
        debug_assert!(off < REGISTER_PAGE_SIZE && off & 3 == 0);
        let high = off & 4 != 0;
        let (frcd_start, frcd_end) = self.frcd_window();
        if (frcd_start..frcd_end).contains(&off) {
            // Only F (bit 127, in the last lane) is writable: write 1 to clear.
            let rel = off - frcd_start;
            if rel % 16 == 12 && value & mask & (1 << 31) != 0 {
                self.frcd[(rel / 16) as usize].hi &= !FaultRecord::F;
                self.fault_status_changed();
            }
            return;
        }
        match off & !7 {
            offset::RTADDR => {
                self.rtaddr = merge64(self.rtaddr, high, value, mask, !0x3FF);
                return;
            }
            offset::CCMD => {
                self.ccmd = merge64(self.ccmd, high, value, mask, !0);
                if self.ccmd & reg_inval::CCMD_ICC != 0 {
                    // Nothing is cached without DMA remapping: complete at once with the
                    // requested granularity.
                    let cirg = (self.ccmd >> reg_inval::CCMD_CIRG_SHIFT) & 3;
                    self.ccmd &= !(reg_inval::CCMD_ICC | (3 << reg_inval::CCMD_CAIG_SHIFT));
                    self.ccmd |= cirg << reg_inval::CCMD_CAIG_SHIFT;
                }
                return;
            }
            offset::IVA => {
                self.iva = merge64(self.iva, high, value, mask, !0);
                return;
            }
            offset::IOTLB => {
                self.iotlb = merge64(self.iotlb, high, value, mask, !0);
                if self.iotlb & reg_inval::IOTLB_IVT != 0 {
                    let iirg = (self.iotlb >> reg_inval::IOTLB_IIRG_SHIFT) & 3;
                    self.iotlb &= !(reg_inval::IOTLB_IVT | (3 << reg_inval::IOTLB_IAIG_SHIFT));
                    self.iotlb |= iirg << reg_inval::IOTLB_IAIG_SHIFT;
                }
                return;
            }
            offset::IQT => {
                let writable = iq::INDEX_MASK << iq::INDEX_SHIFT;
                self.iqt = merge64(self.iqt, high, value, mask, writable);
                fx.drain_queue = true;
                return;
            }
            offset::IQA => {
                // DW is reserved without ECAP.SMTS: 128-bit descriptors only.
                let writable = iq::IQA_BASE_MASK | iq::IQA_QS_MASK;
                self.iqa = merge64(self.iqa, high, value, mask, writable);
                return;
            }
            offset::IRTA => {
                let writable = irta::BASE_MASK | irta::EIME | irta::S_MASK;
                self.irta = merge64(self.irta, high, value, mask, writable);
                return;
            }
            _ => {}
        }
        match off {
            offset::GCMD => {
                // Unwritten bytes keep the persistent bits as they are; one-shot commands
                // only act when written.
                let current = self.gsts & PERSISTENT;
                let command = (value & mask) | (current & !mask);
                self.global_command(command, fx);
            }
            offset::FSTS => {
                let clear = value & mask & fsts::W1C;
                let iqe_cleared = clear & fsts::IQE != 0 && self.fsts & fsts::IQE != 0;
                self.fsts &= !clear;
                self.fault_status_changed();
                if iqe_cleared {
                    // Resume from IQH (Linux rewrote the bad slot before clearing IQE).
                    fx.drain_queue = true;
                }
            }
            offset::FECTL => {
                self.fectl = merge32(self.fectl, value, mask, event_ctl::IM);
                self.fault_event_unmasked(fx);
            }
            offset::FEDATA => {
                self.fedata = merge32(self.fedata, value, mask, event_msg::DATA_MASK);
            }
            offset::FEADDR => {
                self.feaddr = merge32(self.feaddr, value, mask, event_msg::ADDR_MASK);
            }
            offset::FEUADDR => {
                self.feuaddr = merge32(self.feuaddr, value, mask, event_msg::UADDR_MASK);
            }
            offset::ICS if value & mask & ics::IWC != 0 => {
                self.ics &= !ics::IWC;
                // Clearing the status also clears a held completion event.
                self.iectl &= !event_ctl::IP;
            }
            offset::IECTL => {
                self.iectl = merge32(self.iectl, value, mask, event_ctl::IM);
                self.completion_event_unmasked(fx);
            }
            offset::IEDATA => {
                self.iedata = merge32(self.iedata, value, mask, event_msg::DATA_MASK);
            }
            offset::IEADDR => {
                self.ieaddr = merge32(self.ieaddr, value, mask, event_msg::ADDR_MASK);
            }
            offset::IEUADDR => {
                self.ieuaddr = merge32(self.ieuaddr, value, mask, event_msg::UADDR_MASK);
            }
            // VER, CAP, ECAP, GSTS, IQH and reserved lanes are read-only or unimplemented.
            _ => {}
        }
    }

    /// Executes a GCMD write: persistent bits act on their difference from GSTS, one-shot
    /// bits when set. Status is updated before the write returns.
    fn global_command(&mut self, command: u32, fx: &mut Effects) {
        // QIE first, so "QIE|..." combinations see the queue state they asked for.
        let want_qi = command & gcmd::QIE != 0;
        let have_qi = self.gsts & gsts::QIES != 0;
        if want_qi && !have_qi {
            self.queue = Some(Queue::from_iqa(self.iqa));
            self.iqh = 0;
            self.gsts |= gsts::QIES;
            fx.drain_queue = true;
        } else if !want_qi && have_qi {
            self.gsts &= !gsts::QIES;
        }

        if command & gcmd::SRTP != 0 {
            // Root table pointer latched for completeness; without SAGAW nothing uses it.
            self.gsts |= gsts::RTPS;
        }

        if command & gcmd::SIRTP != 0 {
            self.table = Some(IrTable::from_irta(self.irta));
            self.gsts |= gsts::IRTPS;
            if self.ir_enabled() {
                fx.retranslate_all();
            }
        }

        let want_ir = command & gcmd::IRE != 0;
        if want_ir != self.ir_enabled() {
            self.gsts ^= gsts::IRES;
            fx.retranslate_all();
        }

        let want_cfi = command & gcmd::CFI != 0;
        let have_cfi = self.gsts & gsts::CFIS != 0;
        if want_cfi != have_cfi {
            self.gsts ^= gsts::CFIS;
            if self.ir_enabled() {
                fx.retranslate_all();
            }
        }
        // TE, SFL, EAFL and WBF concern DMA remapping, advanced fault logging and write
        // buffers, none of which this unit reports (SAGAW = 0, AFL = 0, RWBF = 0).
    }
}
