//! Intel VT-d hardware definitions used by the interrupt-remapping emulator: register
//! offsets and bits, invalidation descriptors, the interrupt-remapping table entry, fault
//! reasons and the ACPI DMAR structures.
//!
//! Section numbers refer to the *Intel Virtualization Technology for Directed I/O
//! Architecture Specification*, revision 4.x (chapter 5 interrupt remapping, §6.5.2 queued
//! invalidation, chapter 7 fault reporting, chapter 8 ACPI DMAR, chapter 9 translation
//! structures, §11.4 registers). Only the subset an interrupt-remapping-only unit needs is
//! defined; behaviour lives in the sibling modules.

/// Size of the register page (one 4 KiB page, DRHD size field 0).
pub const REGISTER_PAGE_SIZE: u64 = 0x1000;

/// Register offsets within the remapping unit's register page (§11.4, Table "Register
/// Address Map").
pub mod offset {
    /// Version register, 32 bits (§11.4.1).
    pub const VER: u64 = 0x00;
    /// Capability register, 64 bits (§11.4.2).
    pub const CAP: u64 = 0x08;
    /// Extended capability register, 64 bits (§11.4.3).
    pub const ECAP: u64 = 0x10;
    /// Global command register, 32 bits, write-only (§11.4.4).
    pub const GCMD: u64 = 0x18;
    /// Global status register, 32 bits, read-only (§11.4.5).
    pub const GSTS: u64 = 0x1C;
    /// Root table address register, 64 bits (§11.4.6, DMA remapping only).
    pub const RTADDR: u64 = 0x20;
    /// Context command register, 64 bits (§11.4.6, DMA remapping only).
    pub const CCMD: u64 = 0x28;
    /// Fault status register, 32 bits (§11.4.7, fault logging registers).
    pub const FSTS: u64 = 0x34;
    /// Fault event control register, 32 bits (§11.4.7).
    pub const FECTL: u64 = 0x38;
    /// Fault event data register, 32 bits (§11.4.7).
    pub const FEDATA: u64 = 0x3C;
    /// Fault event address register, 32 bits (§11.4.7).
    pub const FEADDR: u64 = 0x40;
    /// Fault event upper address register, 32 bits (§11.4.7).
    pub const FEUADDR: u64 = 0x44;
    /// Invalidation queue head register, 64 bits (§11.4.9, invalidation queue registers).
    pub const IQH: u64 = 0x80;
    /// Invalidation queue tail register, 64 bits (§11.4.9).
    pub const IQT: u64 = 0x88;
    /// Invalidation queue address register, 64 bits (§11.4.9).
    pub const IQA: u64 = 0x90;
    /// Invalidation completion status register, 32 bits (§11.4.9).
    pub const ICS: u64 = 0x9C;
    /// Invalidation event control register, 32 bits (§11.4.9).
    pub const IECTL: u64 = 0xA0;
    /// Invalidation event data register, 32 bits (§11.4.9).
    pub const IEDATA: u64 = 0xA4;
    /// Invalidation event address register, 32 bits (§11.4.9).
    pub const IEADDR: u64 = 0xA8;
    /// Invalidation event upper address register, 32 bits (§11.4.9).
    pub const IEUADDR: u64 = 0xAC;
    /// Interrupt remapping table address register, 64 bits (§11.4.10).
    pub const IRTA: u64 = 0xB8;
    /// Invalidate address register of the IOTLB register pair, at `ECAP.IRO * 16`
    /// (§11.4.8).
    pub const IVA: u64 = super::ecap::IRO_VALUE * 16;
    /// IOTLB invalidate register, 8 bytes after IVA (§11.4.8).
    pub const IOTLB: u64 = IVA + 8;
    /// First fault recording register, at `CAP.FRO * 16`; each is 16 bytes (§11.4.7).
    pub const FRCD: u64 = super::cap::FRO_VALUE * 16;
}

/// Version register value: architecture version 1.0 (§11.4.1; major in 7:4, minor in 3:0).
pub const VERSION: u32 = 0x10;

/// Capability register fields (§11.4.2).
pub mod cap {
    /// ND (2:0): number of domains supported, `2^(4 + 2*ND)`.
    pub const ND_SHIFT: u32 = 0;
    /// SAGAW (12:8): supported adjusted guest address widths; 0 = no DMA remapping.
    pub const SAGAW_SHIFT: u32 = 8;
    /// MGAW (21:16): maximum guest address width minus one.
    pub const MGAW_SHIFT: u32 = 16;
    /// FRO (33:24): offset of the first fault recording register in 16-byte units.
    pub const FRO_SHIFT: u32 = 24;
    /// NFR (47:40): number of fault recording registers minus one.
    pub const NFR_SHIFT: u32 = 40;
    /// PI (bit 59): posted interrupts supported.
    pub const PI: u64 = 1 << 59;
    /// ESIRTPS (bit 62): SIRTP also invalidates the interrupt entry cache.
    pub const ESIRTPS: u64 = 1 << 62;
    /// FRO value of this unit: fault recording registers start at offset 0x200.
    pub const FRO_VALUE: u64 = 0x20;
    /// MGAW value of this unit (48-bit guest addresses; unused without SAGAW).
    pub const MGAW_VALUE: u64 = 47;
    /// Highest number of fault recording registers that fit in the register page after
    /// [`FRO_VALUE`].
    pub const MAX_FAULT_RECORDS: u64 = (super::REGISTER_PAGE_SIZE - FRO_VALUE * 16) / 16;
}

/// Extended capability register fields (§11.4.3).
pub mod ecap {
    /// C (bit 0): page-walk coherency (hardware reads the IRTE table coherently).
    pub const C: u64 = 1 << 0;
    /// QI (bit 1): queued invalidation supported.
    pub const QI: u64 = 1 << 1;
    /// DT (bit 2): device-TLB (ATS) supported.
    pub const DT: u64 = 1 << 2;
    /// IR (bit 3): interrupt remapping supported.
    pub const IR: u64 = 1 << 3;
    /// EIM (bit 4): extended interrupt mode (32-bit x2APIC destinations) supported.
    pub const EIM: u64 = 1 << 4;
    /// IRO (17:8): offset of the IOTLB register pair in 16-byte units.
    pub const IRO_SHIFT: u32 = 8;
    /// MHMV (23:20): maximum handle mask value for index-selective IEC invalidation.
    pub const MHMV_SHIFT: u32 = 20;
    /// SMTS (bit 43): scalable mode translation supported (enables 256-bit descriptors).
    pub const SMTS: u64 = 1 << 43;
    /// IRO value of this unit: IVA at 0x100, IOTLB at 0x108.
    pub const IRO_VALUE: u64 = 0x10;
    /// MHMV value of this unit: masks up to 2^15 entries (multi-MSI blocks need >= 5).
    pub const MHMV_VALUE: u64 = 0xF;
}

/// Global command register bits (§11.4.4). Bits 31, 30, 29, 28, 27 concern DMA remapping.
pub mod gcmd {
    /// TE: translation enable (DMA remapping, persistent).
    pub const TE: u32 = 1 << 31;
    /// SRTP: set root table pointer (DMA remapping, one-shot).
    pub const SRTP: u32 = 1 << 30;
    /// SFL: set fault log (advanced fault logging, one-shot).
    pub const SFL: u32 = 1 << 29;
    /// EAFL: enable advanced fault logging (persistent).
    pub const EAFL: u32 = 1 << 28;
    /// WBF: write buffer flush (one-shot).
    pub const WBF: u32 = 1 << 27;
    /// QIE: queued invalidation enable (persistent).
    pub const QIE: u32 = 1 << 26;
    /// IRE: interrupt remapping enable (persistent).
    pub const IRE: u32 = 1 << 25;
    /// SIRTP: set interrupt remapping table pointer (one-shot; latches IRTA).
    pub const SIRTP: u32 = 1 << 24;
    /// CFI: compatibility format interrupts allowed (persistent).
    pub const CFI: u32 = 1 << 23;
}

/// Global status register bits, at the same positions as their commands (§11.4.5).
pub mod gsts {
    /// TES: translation enabled.
    pub const TES: u32 = 1 << 31;
    /// RTPS: root table pointer set.
    pub const RTPS: u32 = 1 << 30;
    /// QIES: queued invalidation enabled.
    pub const QIES: u32 = 1 << 26;
    /// IRES: interrupt remapping enabled.
    pub const IRES: u32 = 1 << 25;
    /// IRTPS: interrupt remapping table pointer set.
    pub const IRTPS: u32 = 1 << 24;
    /// CFIS: compatibility format interrupts allowed.
    pub const CFIS: u32 = 1 << 23;
}

/// Fault status register bits (§11.4.7, Fault Status Register).
pub mod fsts {
    /// PFO: primary fault overflow (RW1C).
    pub const PFO: u32 = 1 << 0;
    /// PPF: primary pending fault (RO, OR of every FRCD.F).
    pub const PPF: u32 = 1 << 1;
    /// IQE: invalidation queue error (RW1C).
    pub const IQE: u32 = 1 << 4;
    /// ICE: invalidation completion error (RW1C; device-TLB only, never set here).
    pub const ICE: u32 = 1 << 5;
    /// ITE: invalidation time-out error (RW1C; device-TLB only, never set here).
    pub const ITE: u32 = 1 << 6;
    /// PRO: page request overflow (RW1C; page requests unsupported, never set here).
    pub const PRO: u32 = 1 << 7;
    /// FRI (15:8): index of the first pending fault record.
    pub const FRI_SHIFT: u32 = 8;
    /// Status bits that are write-1-to-clear.
    pub const W1C: u32 = PFO | IQE | ICE | ITE | PRO;
}

/// Bits of the fault event and invalidation event control registers (§11.4.7 FECTL,
/// §11.4.9 IECTL).
pub mod event_ctl {
    /// IM: interrupt mask (reset value 1).
    pub const IM: u32 = 1 << 31;
    /// IP: interrupt pending (RO).
    pub const IP: u32 = 1 << 30;
}

/// Event message registers: writable bits of the data, address and upper address
/// registers (§11.4.7, §11.4.9).
pub mod event_msg {
    /// Data register: interrupt data in 15:0 (extended data 31:16 not supported).
    pub const DATA_MASK: u32 = 0xFFFF;
    /// Address register: message address 31:2.
    pub const ADDR_MASK: u32 = !3;
    /// Upper address register: all bits (x2APIC destination 31:8 under KVM's encoding).
    pub const UADDR_MASK: u32 = !0;
}

/// Invalidation completion status register (§11.4.9).
pub mod ics {
    /// IWC: invalidation wait descriptor complete (RW1C).
    pub const IWC: u32 = 1 << 0;
}

/// Invalidation queue registers (§11.4.9).
pub mod iq {
    /// IQH/IQT: queue index in 18:4 (128-bit descriptors).
    pub const INDEX_SHIFT: u32 = 4;
    /// IQH/IQT: mask of the index field (after shifting).
    pub const INDEX_MASK: u64 = 0x7FFF;
    /// IQA: queue base address 63:12.
    pub const IQA_BASE_MASK: u64 = !0xFFF;
    /// IQA: DW (bit 11), 256-bit descriptors; reserved without ECAP.SMTS.
    pub const IQA_DW: u64 = 1 << 11;
    /// IQA: QS (2:0), queue size `2^(QS + 8)` 128-bit entries.
    pub const IQA_QS_MASK: u64 = 7;
    /// Size of one 128-bit descriptor.
    pub const DESCRIPTOR_SIZE: u64 = 16;
}

/// Interrupt remapping table address register (§11.4.10).
pub mod irta {
    /// IRTA: table base 63:12.
    pub const BASE_MASK: u64 = !0xFFF;
    /// EIME (bit 11): extended interrupt mode (32-bit destinations).
    pub const EIME: u64 = 1 << 11;
    /// S (3:0): table size `2^(S + 1)` entries.
    pub const S_MASK: u64 = 0xF;
}

/// Register-based invalidation commands (§11.4.6 CCMD, §11.4.8 IOTLB). Only completed
/// immediately: a unit without DMA remapping has nothing to invalidate.
pub mod reg_inval {
    /// CCMD.ICC (bit 63): invalidate context cache (cleared by hardware on completion).
    pub const CCMD_ICC: u64 = 1 << 63;
    /// CCMD.CIRG (62:61): requested granularity.
    pub const CCMD_CIRG_SHIFT: u32 = 61;
    /// CCMD.CAIG (60:59): actual granularity.
    pub const CCMD_CAIG_SHIFT: u32 = 59;
    /// IOTLB.IVT (bit 63): invalidate IOTLB (cleared by hardware on completion).
    pub const IOTLB_IVT: u64 = 1 << 63;
    /// IOTLB.IIRG (61:60): requested granularity.
    pub const IOTLB_IIRG_SHIFT: u32 = 60;
    /// IOTLB.IAIG (58:57): actual granularity.
    pub const IOTLB_IAIG_SHIFT: u32 = 57;
}

/// A fault recording register (§11.4.7, Fault Recording Registers; 128 bits).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultRecord {
    /// Bits 63:0: FI; for interrupt-remapping faults the interrupt index is in 63:48.
    pub lo: u64,
    /// Bits 127:64: SID 15:0, FR 39:32, F 63.
    pub hi: u64,
}

impl FaultRecord {
    /// F (bit 127): fault recorded; write 1 to clear.
    pub const F: u64 = 1 << 63;
    /// FR (bits 103:96): fault reason, at 39:32 of the high qword.
    pub const FR_SHIFT: u32 = 32;
    /// FI interrupt index position in the low qword (bits 63:48).
    pub const INDEX_SHIFT: u32 = 48;

    /// A record for an interrupt-remapping fault.
    pub fn interrupt(reason: FaultReason, index: u16, source_id: u16) -> Self {
        Self {
            lo: u64::from(index) << Self::INDEX_SHIFT,
            hi: u64::from(source_id) | (u64::from(reason as u8) << Self::FR_SHIFT) | Self::F,
        }
    }

    /// Whether the record holds an unserviced fault.
    pub fn is_pending(&self) -> bool {
        self.hi & Self::F != 0
    }

    /// The fault reason code.
    pub fn reason(&self) -> u8 {
        (self.hi >> Self::FR_SHIFT) as u8
    }

    /// The source ID of the faulting request.
    pub fn source_id(&self) -> u16 {
        self.hi as u16
    }

    /// The interrupt index of the faulting request.
    pub fn index(&self) -> u16 {
        (self.lo >> Self::INDEX_SHIFT) as u16
    }
}

/// Interrupt-remapping fault reasons (table "Interrupt Remapping Fault Conditions", chapter 7;
/// §5.1.4.1 in revisions before 3.0). Qualified faults are not recorded when the IRTE has
/// FPD = 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FaultReason {
    /// 0x20: reserved field set in the interrupt request (unqualified).
    ReservedRequest = 0x20,
    /// 0x21: interrupt index beyond the table size `2^(S+1)` (unqualified).
    IndexOutOfRange = 0x21,
    /// 0x22: IRTE present bit clear (qualified).
    NotPresent = 0x22,
    /// 0x23: the IRTE could not be read (unqualified).
    TableReadFailed = 0x23,
    /// 0x24: reserved field set in a present IRTE (qualified).
    ReservedIrte = 0x24,
    /// 0x25: compatibility-format request blocked (IRE = 1, CFI = 0; unqualified).
    CompatibilityBlocked = 0x25,
    /// 0x26: source-ID verification failed (qualified).
    SourceIdMismatch = 0x26,
}

impl FaultReason {
    /// Whether FPD in the IRTE suppresses recording of this fault.
    pub fn qualified(self) -> bool {
        matches!(
            self,
            FaultReason::NotPresent | FaultReason::ReservedIrte | FaultReason::SourceIdMismatch
        )
    }
}

/// Remappable-format interrupt request fields (§5.1.2.2, "Interrupt Requests in
/// Remappable Format").
pub mod request {
    /// Address bit 4: interrupt format (1 = remappable).
    pub const REMAPPABLE: u64 = 1 << 4;
    /// Address bit 3: SHV, subhandle valid (index = handle + data 15:0).
    pub const SHV: u64 = 1 << 3;
    /// Address 31:20 must be 0xFEE for an interrupt request.
    pub const WINDOW_MASK: u64 = 0xFFF0_0000;
    /// Interrupt window base.
    pub const WINDOW: u64 = 0xFEE0_0000;
    /// With SHV, data 31:16 are reserved.
    pub const SHV_DATA_RESERVED: u32 = 0xFFFF_0000;
}

/// Source-validation type of an IRTE (§9.10, IRTE SVT field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceValidation {
    /// 00: no verification.
    None,
    /// 01: compare the requester ID with SID under the SQ mask.
    RequesterId,
    /// 10: the requester's bus must lie in `SID[15:8]..=SID[7:0]`.
    BusRange,
    /// 11: reserved.
    Reserved,
}

/// An interrupt-remapping table entry in remapped format (§9.10, "Interrupt Remapping
/// Table Entry (IRTE) for Remapped Interrupts"; 128 bits).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Irte {
    /// Bits 63:0.
    pub lo: u64,
    /// Bits 127:64.
    pub hi: u64,
}

impl Irte {
    /// Size of one entry in bytes.
    pub const SIZE: u64 = 16;
    /// P (bit 0): present.
    pub const P: u64 = 1 << 0;
    /// FPD (bit 1): fault processing disable.
    pub const FPD: u64 = 1 << 1;
    /// DM (bit 2): destination mode, 1 = logical.
    pub const DM: u64 = 1 << 2;
    /// RH (bit 3): redirection hint.
    pub const RH: u64 = 1 << 3;
    /// TM (bit 4): trigger mode, 1 = level.
    pub const TM: u64 = 1 << 4;
    /// DLM (7:5): delivery mode.
    pub const DLM_SHIFT: u32 = 5;
    /// IM (bit 15): IRTE mode, 1 = posted (only with CAP.PI).
    pub const IM: u64 = 1 << 15;
    /// V (23:16): vector.
    pub const VECTOR_SHIFT: u32 = 16;
    /// DST (63:32): destination.
    pub const DST_SHIFT: u32 = 32;
    /// Reserved bits of the low qword independent of EIME: 14:12 and 31:24.
    pub const LO_RESERVED: u64 = 0x0000_0000_FF00_7000;
    /// Reserved destination bits in xAPIC mode (EIME = 0): 39:32 and 63:48.
    pub const LO_RESERVED_XAPIC: u64 = 0xFFFF_00FF_0000_0000;
    /// Reserved bits of the high qword: 127:84.
    pub const HI_RESERVED: u64 = 0xFFFF_FFFF_FFF0_0000;

    /// Decodes an entry from its 16 little-endian bytes.
    pub fn from_bytes(b: [u8; 16]) -> Self {
        let mut lo = [0u8; 8];
        let mut hi = [0u8; 8];
        lo.copy_from_slice(&b[..8]);
        hi.copy_from_slice(&b[8..]);
        Self {
            lo: u64::from_le_bytes(lo),
            hi: u64::from_le_bytes(hi),
        }
    }

    /// P: the entry is present.
    pub fn present(&self) -> bool {
        self.lo & Self::P != 0
    }

    /// FPD: qualified faults are not recorded.
    pub fn fault_processing_disabled(&self) -> bool {
        self.lo & Self::FPD != 0
    }

    /// DM: logical destination mode.
    pub fn logical(&self) -> bool {
        self.lo & Self::DM != 0
    }

    /// RH: redirection hint.
    pub fn redirection_hint(&self) -> bool {
        self.lo & Self::RH != 0
    }

    /// TM: level-triggered.
    pub fn level(&self) -> bool {
        self.lo & Self::TM != 0
    }

    /// DLM: delivery mode (000 fixed, 001 lowest priority, 010 SMI, 100 NMI, 101 INIT,
    /// 111 ExtINT; 011 and 110 reserved).
    pub fn delivery_mode(&self) -> u8 {
        ((self.lo >> Self::DLM_SHIFT) & 7) as u8
    }

    /// Whether the delivery mode encoding is reserved.
    pub fn delivery_mode_reserved(&self) -> bool {
        matches!(self.delivery_mode(), 0b011 | 0b110)
    }

    /// IM: posted-format entry.
    pub fn posted(&self) -> bool {
        self.lo & Self::IM != 0
    }

    /// V: the vector.
    pub fn vector(&self) -> u8 {
        (self.lo >> Self::VECTOR_SHIFT) as u8
    }

    /// Destination: the full 32-bit x2APIC ID when `eime`, else the 8-bit xAPIC ID in
    /// bits 47:40.
    pub fn destination(&self, eime: bool) -> u32 {
        if eime {
            (self.lo >> Self::DST_SHIFT) as u32
        } else {
            ((self.lo >> 40) & 0xFF) as u32
        }
    }

    /// Whether any reserved bit is set (posted mode counts as reserved without CAP.PI).
    pub fn has_reserved_bits(&self, eime: bool) -> bool {
        self.lo & Self::LO_RESERVED != 0
            || self.hi & Self::HI_RESERVED != 0
            || (!eime && self.lo & Self::LO_RESERVED_XAPIC != 0)
    }

    /// SID (79:64): expected source ID.
    pub fn source_id(&self) -> u16 {
        self.hi as u16
    }

    /// SQ (81:80): source-ID qualifier.
    pub fn source_qualifier(&self) -> u8 {
        ((self.hi >> 16) & 3) as u8
    }

    /// SVT (83:82): source validation type.
    pub fn source_validation(&self) -> SourceValidation {
        match (self.hi >> 18) & 3 {
            0 => SourceValidation::None,
            1 => SourceValidation::RequesterId,
            2 => SourceValidation::BusRange,
            _ => SourceValidation::Reserved,
        }
    }
}

/// Invalidation descriptor types and fields (§6.5.2, 128-bit descriptors). The type is
/// qw0 3:0 with the extension 11:9 above it.
pub mod desc {
    /// Type field low part (qw0 3:0).
    pub const TYPE_LO_MASK: u64 = 0xF;
    /// Type field high part (qw0 11:9), shifted down to type bits 6:4.
    pub const TYPE_HI_SHIFT: u32 = 9;
    /// Context-cache invalidate descriptor (§6.5.2.1).
    pub const TYPE_CONTEXT_CACHE: u8 = 1;
    /// IOTLB invalidate descriptor (§6.5.2.3).
    pub const TYPE_IOTLB: u8 = 2;
    /// Device-TLB invalidate descriptor (§6.5.2.5; needs ECAP.DT).
    pub const TYPE_DEVICE_TLB: u8 = 3;
    /// Interrupt entry cache invalidate descriptor (§6.5.2.7).
    pub const TYPE_IEC: u8 = 4;
    /// Invalidation wait descriptor (§6.5.2.8).
    pub const TYPE_WAIT: u8 = 5;

    /// IEC qw0 bit 4: granularity, 1 = index-selective (0 = global).
    pub const IEC_INDEX_SELECTIVE: u64 = 1 << 4;
    /// IEC qw0 31:27: index mask, `2^IM` entries.
    pub const IEC_IM_SHIFT: u32 = 27;
    /// IEC qw0 47:32: interrupt index.
    pub const IEC_IIDX_SHIFT: u32 = 32;
    /// IEC qw0 reserved bits: 8:5, 26:12 and 63:48 (11:9 are the type extension).
    pub const IEC_QW0_RESERVED: u64 = 0xFFFF_0000_07FF_F1E0;

    /// Wait qw0 bit 4: IF, raise an invalidation completion event.
    pub const WAIT_IF: u64 = 1 << 4;
    /// Wait qw0 bit 5: SW, write the status data.
    pub const WAIT_SW: u64 = 1 << 5;
    /// Wait qw0 bit 6: FN, fence (ordering only; always satisfied here).
    pub const WAIT_FN: u64 = 1 << 6;
    /// Wait qw0 bit 7: PD, page-request drain (nothing to drain here).
    pub const WAIT_PD: u64 = 1 << 7;
    /// Wait qw0 63:32: status data.
    pub const WAIT_STATUS_DATA_SHIFT: u32 = 32;
    /// Wait qw0 reserved bits: 8 and 31:12 (11:9 are the type extension).
    pub const WAIT_QW0_RESERVED: u64 = 0x0000_0000_FFFF_F100;
    /// Wait qw1: status address 63:2 (bits 1:0 ignored).
    pub const WAIT_STATUS_ADDR_MASK: u64 = !3;

    /// Full descriptor type (qw0 3:0 and 11:9).
    pub fn type_of(qw0: u64) -> u8 {
        ((qw0 & TYPE_LO_MASK) | (((qw0 >> TYPE_HI_SHIFT) & 7) << 4)) as u8
    }
}

/// ACPI DMAR table layout (§8.1 "DMA Remapping Reporting Structure", §8.3 "DMA Remapping
/// Hardware Unit Definition Structure", §8.3.1 "Device Scope Structure").
pub mod dmar {
    /// Table signature.
    pub const SIGNATURE: [u8; 4] = *b"DMAR";
    /// Table revision.
    pub const REVISION: u8 = 1;
    /// Length of the standard ACPI header.
    pub const HEADER_LEN: usize = 36;
    /// Offset of the first remapping structure (after HAW, flags, 10 reserved bytes).
    pub const STRUCTURES_OFFSET: usize = 48;
    /// Host address width minus one (48-bit).
    pub const HOST_ADDRESS_WIDTH: u8 = 47;
    /// Flags bit 0: INTR_REMAP, interrupt remapping supported.
    pub const FLAG_INTR_REMAP: u8 = 1 << 0;
    /// Flags bit 1: X2APIC_OPT_OUT (left clear).
    pub const FLAG_X2APIC_OPT_OUT: u8 = 1 << 1;
    /// Remapping structure type 0: DRHD.
    pub const TYPE_DRHD: u16 = 0;
    /// Length of a DRHD without device scopes.
    pub const DRHD_LEN: usize = 16;
    /// DRHD flags bit 0: INCLUDE_PCI_ALL.
    pub const DRHD_INCLUDE_PCI_ALL: u8 = 1 << 0;
    /// Device scope type 3: IOAPIC.
    pub const SCOPE_IOAPIC: u8 = 3;
    /// Length of a device scope with a single path entry.
    pub const SCOPE_LEN_ONE_PATH: usize = 8;
    /// ACPI creator ID (shared with the rest of the VMM's tables).
    pub const CREATOR_ID: [u8; 4] = *b"RVAT";
    /// ACPI creator revision.
    pub const CREATOR_REVISION: u32 = 1;
    /// OEM revision.
    pub const OEM_REVISION: u32 = 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_windows_fit_the_page() {
        assert_eq!(offset::FRCD, 0x200);
        assert_eq!(offset::IVA, 0x100);
        assert_eq!(cap::MAX_FAULT_RECORDS, 224);
    }

    const _: () = assert!(offset::IOTLB + 8 <= offset::FRCD);

    #[test]
    fn descriptor_type_includes_extension_bits() {
        assert_eq!(desc::type_of(0x4), 4);
        assert_eq!(desc::type_of(0x200 | 0x4), 0x14);
    }

    #[test]
    fn reserved_masks_do_not_overlap_defined_fields() {
        let defined_lo: u64 = 0xFFFF_FFFF_0000_0000 | 0xFF_0000 | 0x8FFF;
        assert_eq!(Irte::LO_RESERVED & defined_lo, 0);
        assert_eq!(desc::IEC_QW0_RESERVED & 0x0000_FFFF_F800_0E1F, 0);
        assert_eq!(desc::WAIT_QW0_RESERVED & 0xFFFF_FFFF_0000_0EFF, 0);
    }
}
