//! Hardware definitions of Intel DSA 1.0 as the Linux `idxd` driver uses them: register
//! offsets and fields, commands and their status codes, descriptor and completion record
//! layouts. Behaviour lives in the sibling modules; this file only names things.
//!
//! Sources: Linux `drivers/dma/idxd/registers.h` and `include/uapi/linux/idxd.h` (6.x), and
//! `/work/shared/docs/dsa-idxd.md` §3 and §6. Items marked "(unverified)" follow the facts
//! sheet where no source confirmed them.

/// PCI vendor ID (Intel).
pub const PCI_VENDOR_INTEL: u16 = 0x8086;
/// PCI device ID of DSA 1.0 (Sapphire Rapids).
pub const PCI_DEVICE_DSA_SPR: u16 = 0x0b25;
/// PCI base class: system peripheral.
pub const PCI_CLASS_SYSTEM: u8 = 0x08;
/// PCI subclass: other system peripheral.
pub const PCI_SUBCLASS_OTHER: u8 = 0x80;

/// `VERSION` value of DSA 1.0.
pub const DSA_VERSION_1: u32 = 0x100;

/// BAR holding the registers (`IDXD_MMIO_BAR`).
pub const BAR_REGS: usize = 0;
/// BAR holding the portals (`IDXD_WQ_BAR`).
pub const BAR_PORTALS: usize = 2;

/// BAR0 register offsets (§3 of the facts sheet, `registers.h`).
pub mod reg {
    /// VERSION (32, RO).
    pub const VERSION: u64 = 0x00;
    /// GENCAP (64, RO).
    pub const GENCAP: u64 = 0x10;
    /// WQCAP (64, RO).
    pub const WQCAP: u64 = 0x20;
    /// GRPCAP (64, RO).
    pub const GRPCAP: u64 = 0x30;
    /// ENGCAP (64, RO).
    pub const ENGCAP: u64 = 0x38;
    /// OPCAP (4 × 64, RO).
    pub const OPCAP: u64 = 0x40;
    /// TABLE_OFFSETS (2 × 64, RO).
    pub const TABLE_OFFSETS: u64 = 0x60;
    /// GENCFG (32, RW while the device is disabled).
    pub const GENCFG: u64 = 0x80;
    /// GENCTRL (32, RW).
    pub const GENCTRL: u64 = 0x88;
    /// GENSTS (32, RO).
    pub const GENSTS: u64 = 0x90;
    /// INTCAUSE (32, RW1C).
    pub const INTCAUSE: u64 = 0x98;
    /// CMD (32, WO).
    pub const CMD: u64 = 0xa0;
    /// CMDSTS (32, RO).
    pub const CMDSTS: u64 = 0xa8;
    /// CMDCAP (32, RO).
    pub const CMDCAP: u64 = 0xb0;
    /// SWERR (4 × 64; QW0 bits 1:0 RW1C).
    pub const SWERR: u64 = 0xc0;
    /// EVLCFG (128, RW while the device is disabled).
    pub const EVLCFG: u64 = 0xe0;
    /// EVLSTATUS (64: head RW, tail RO, int_pending RW1C).
    pub const EVLSTATUS: u64 = 0xf0;
}

/// Unit of the TABLE_OFFSETS fields (`IDXD_TABLE_MULT`).
pub const TABLE_MULT: u64 = 0x100;

/// GENCAP fields.
pub mod gencap {
    /// Block on fault supported.
    pub const BLOCK_ON_FAULT: u64 = 1 << 0;
    /// Overlapping MEMMOVE supported.
    pub const OVERLAP_COPY: u64 = 1 << 1;
    /// Cache control (memory) supported.
    pub const CACHE_CONTROL_MEM: u64 = 1 << 2;
    /// Cache control (cache) supported.
    pub const CACHE_CONTROL_CACHE: u64 = 1 << 3;
    /// CMDCAP register present.
    pub const CMD_CAP: u64 = 1 << 4;
    /// Shift of evl_support (2 bits): 0 no event log, else entries of `32 << v` bytes.
    pub const EVL_SUPPORT_SHIFT: u32 = 13;
    /// evl_support value of DSA: 64-byte entries (`struct dsa_evl_entry`: a 32-byte
    /// `__evl_entry` followed by a 32-byte completion record; idxd's `evl_ent_size()`).
    pub const EVL_SUPPORT_DSA: u64 = 1;
    /// Shift of max_xfer_shift (5 bits).
    pub const MAX_XFER_SHIFT_SHIFT: u32 = 16;
    /// Shift of max_batch_shift (4 bits).
    pub const MAX_BATCH_SHIFT_SHIFT: u32 = 21;
    /// Shift of max_ims_mult (6 bits).
    pub const MAX_IMS_MULT_SHIFT: u32 = 25;
    /// Configuration is software-writable.
    pub const CONFIG_EN: u64 = 1 << 31;
}

/// WQCAP fields.
pub mod wqcap {
    /// Shift of num_wqs (8 bits).
    pub const NUM_WQS_SHIFT: u32 = 16;
    /// Shift of wqcfg_size (4 bits; bytes = 1 << (v + 5)).
    pub const WQCFG_SIZE_SHIFT: u32 = 24;
    /// Shared WQs supported.
    pub const SHARED: u64 = 1 << 48;
    /// Dedicated WQs supported.
    pub const DEDICATED: u64 = 1 << 49;
    /// WQ priority supported.
    pub const PRIORITY: u64 = 1 << 51;
    /// WQ occupancy reported.
    pub const OCCUPANCY: u64 = 1 << 52;
}

/// GRPCAP fields.
pub mod grpcap {
    /// Shift of total_rdbufs (8 bits).
    pub const TOTAL_RDBUFS_SHIFT: u32 = 8;
    /// Read-buffer control supported.
    pub const RDBUF_CTRL: u64 = 1 << 16;
    /// Global read-buffer limit supported.
    pub const RDBUF_LIMIT: u64 = 1 << 17;
}

/// GENCFG fields.
pub mod gencfg {
    /// rdbuf_limit (7:0).
    pub const RDBUF_LIMIT_MASK: u32 = 0xff;
    /// User interrupts enable.
    pub const USER_INT_EN: u32 = 1 << 12;
    /// Event log enable (Enable Device then checks EVLCFG).
    pub const EVL_EN: u32 = 1 << 13;
    /// Defined bits.
    pub const MASK: u32 = RDBUF_LIMIT_MASK | USER_INT_EN | EVL_EN;
}

/// GENCTRL fields.
pub mod genctrl {
    /// Software error interrupt enable.
    pub const SOFTERR_INT_EN: u32 = 1 << 0;
    /// Halt interrupt enable.
    pub const HALT_INT_EN: u32 = 1 << 1;
    /// Event log interrupt enable.
    pub const EVL_INT_EN: u32 = 1 << 2;
    /// Defined bits.
    pub const MASK: u32 = SOFTERR_INT_EN | HALT_INT_EN | EVL_INT_EN;
}

/// GENSTS device states (bits 1:0).
pub mod gensts {
    /// Disabled.
    pub const DISABLED: u32 = 0;
    /// Enabled.
    pub const ENABLED: u32 = 1;
    /// Halted; bits 3:2 say which reset recovers (0: software reset).
    pub const HALT: u32 = 3;
    /// Shift of the reset type (bits 3:2) that recovers a halted device.
    pub const RESET_TYPE_SHIFT: u32 = 2;
    /// Reset type: a system (cold) reset is needed (Linux: "idxd halted, need system reset").
    pub const RESET_COLD: u32 = 3;
}

/// INTCAUSE bits.
pub mod intcause {
    /// Software error.
    pub const ERR: u32 = 1 << 0;
    /// Command completed.
    pub const CMD: u32 = 1 << 1;
    /// Halt state entered.
    pub const HALT: u32 = 1 << 4;
    /// Event log entries written (never raised by this model, which writes none).
    pub const EVL: u32 = 1 << 5;
    /// Defined bits the guest can clear.
    pub const MASK: u32 = 0x8000_003f;
}

/// CMD register fields.
pub mod cmd {
    /// Operand (19:0).
    pub const OPERAND_MASK: u32 = 0xf_ffff;
    /// Command code shift (24:20).
    pub const CODE_SHIFT: u32 = 20;
    /// Command code mask after shifting.
    pub const CODE_MASK: u32 = 0x1f;
    /// Request a completion interrupt.
    pub const INT_REQ: u32 = 1 << 31;
    /// Operand bit of the interrupt-handle commands selecting IMS (else MSI-X).
    pub const INT_HANDLE_IMS: u32 = 1 << 16;
}

/// CMDSTS active bit.
pub const CMDSTS_ACTIVE: u32 = 1 << 31;
/// Shift of the CMDSTS result field (23:8).
pub const CMDSTS_RESULT_SHIFT: u32 = 8;

/// Command codes (`enum idxd_cmd`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Command {
    /// Enable device.
    EnableDevice = 1,
    /// Disable device.
    DisableDevice = 2,
    /// Drain all.
    DrainAll = 3,
    /// Abort all.
    AbortAll = 4,
    /// Reset device.
    ResetDevice = 5,
    /// Enable WQ.
    EnableWq = 6,
    /// Disable WQ.
    DisableWq = 7,
    /// Drain WQ.
    DrainWq = 8,
    /// Abort WQ.
    AbortWq = 9,
    /// Reset WQ.
    ResetWq = 10,
    /// Drain PASID.
    DrainPasid = 11,
    /// Abort PASID.
    AbortPasid = 12,
    /// Request interrupt handle.
    RequestIntHandle = 13,
    /// Release interrupt handle.
    ReleaseIntHandle = 14,
}

impl Command {
    /// Decodes a command code.
    pub fn from_code(code: u32) -> Option<Self> {
        use Command::*;
        Some(match code {
            1 => EnableDevice,
            2 => DisableDevice,
            3 => DrainAll,
            4 => AbortAll,
            5 => ResetDevice,
            6 => EnableWq,
            7 => DisableWq,
            8 => DrainWq,
            9 => AbortWq,
            10 => ResetWq,
            11 => DrainPasid,
            12 => AbortPasid,
            13 => RequestIntHandle,
            14 => ReleaseIntHandle,
            _ => return None,
        })
    }
}

/// CMDCAP: commands 1..=12.
pub const CMDCAP_BASE: u32 = 0x1ffe;
/// CMDCAP: request/release interrupt handle (commands 13 and 14).
pub const CMDCAP_INT_HANDLES: u32 = (1 << 13) | (1 << 14);

/// CMDSTS error codes (`enum idxd_cmdsts_err`).
pub mod cmd_err {
    /// Success.
    pub const SUCCESS: u8 = 0x00;
    /// Invalid command.
    pub const INVAL_CMD: u8 = 0x01;
    /// Invalid WQ index.
    pub const INVAL_WQIDX: u8 = 0x02;
    /// Hardware error (also: command refused in the halt state).
    pub const HW_ERR: u8 = 0x03;
    /// Enable device: already enabled.
    pub const DEV_ENABLED: u8 = 0x10;
    /// Enable device: general configuration error (GENCFG).
    pub const CONFIG: u8 = 0x11;
    /// Enable device: bus mastering disabled.
    pub const BUSMASTER_EN: u8 = 0x12;
    /// Enable device: PASID configuration.
    pub const PASID_INVAL: u8 = 0x13;
    /// Enable device: WQ sizes exceed the total.
    pub const WQ_SIZE_ERANGE: u8 = 0x14;
    /// Enable device: a group names WQs or engines that do not exist.
    pub const GRP_CONFIG: u8 = 0x15;
    /// Enable device: a WQ or engine is in more than one group.
    pub const GRP_CONFIG2: u8 = 0x16;
    /// Enable device: a group has WQs but no engines.
    pub const GRP_CONFIG3: u8 = 0x17;
    /// Enable device: invalid group flags (read buffers, progress limits).
    pub const GRP_CONFIG4: u8 = 0x18;
    /// Enable WQ: device not enabled.
    pub const DEV_NOTEN: u8 = 0x20;
    /// Enable WQ: already enabled.
    pub const WQ_ENABLED: u8 = 0x21;
    /// Enable WQ: size 0, not in a group, or sizes over the total.
    pub const WQ_SIZE: u8 = 0x22;
    /// Enable WQ: priority 0.
    pub const WQ_PRIOR: u8 = 0x23;
    /// Enable WQ: shared mode (unsupported).
    pub const WQ_MODE: u8 = 0x24;
    /// Enable WQ: block-on-fault without support.
    pub const BOF_EN: u8 = 0x25;
    /// Enable WQ: PASID enable without support.
    pub const PASID_EN: u8 = 0x26;
    /// Enable WQ: max batch shift over the device maximum.
    pub const MAX_BATCH_SIZE: u8 = 0x27;
    /// Enable WQ: max transfer shift over the device maximum.
    pub const MAX_XFER_SIZE: u8 = 0x28;
    /// Disable device: device not enabled.
    pub const DIS_DEV_EN: u8 = 0x31;
    /// Disable/drain/abort/reset WQ: device (or, for disable, the WQ) not enabled.
    pub const DEV_NOT_EN: u8 = 0x32;
    /// Request/release interrupt handle: invalid index or handle.
    pub const INVAL_INT_IDX: u8 = 0x41;
    /// Request interrupt handle: none available.
    pub const NO_HANDLE: u8 = 0x42;
}

/// GRPCFG layout: 64 bytes per group.
pub mod grpcfg {
    /// Bytes per group.
    pub const SIZE: u64 = 64;
    /// Offset of the engine bitmap.
    pub const ENGINES: u64 = 32;
    /// Offset of the flags.
    pub const FLAGS: u64 = 40;
    /// Defined bits of the flags qword.
    pub const FLAGS_MASK: u64 =
        0x3f | (1 << 7) | (0xff << 8) | (0xff << 20) | (0x3 << 32) | (0x3 << 36);
    /// use_rdbuf_limit.
    pub const USE_RDBUF_LIMIT: u64 = 1 << 7;
    /// rdbufs_reserved (15:8).
    pub const RDBUFS_RESERVED_SHIFT: u32 = 8;
    /// rdbufs_allowed (27:20).
    pub const RDBUFS_ALLOWED_SHIFT: u32 = 20;
    /// Progress limit fields (33:32, 37:36).
    pub const PROGRESS_LIMITS: u64 = (0x3 << 32) | (0x3 << 36);
}

/// WQCFG layout: 32 bytes (8 dwords) per WQ with wqcfg_size 0.
pub mod wqcfg {
    /// Bytes per WQ.
    pub const SIZE: u64 = 32;
    /// Dwords per WQ.
    pub const DWORDS: usize = 8;
    /// Writable bits per dword (dword 6 is read-only, 7 reserved).
    pub const WMASK: [u32; 8] = [0xffff, 0xffff, 0x3fff_ffff, 0x1ff, 0x1_ffff, 0x1_ffff, 0, 0];
    /// dw2: dedicated mode.
    pub const MODE_DEDICATED: u32 = 1 << 0;
    /// dw2: block on fault.
    pub const BOF: u32 = 1 << 1;
    /// dw2: priority shift (7:4).
    pub const PRIORITY_SHIFT: u32 = 4;
    /// dw2: PASID enable.
    pub const PASID_EN: u32 = 1 << 28;
    /// dw2: privileged.
    pub const PRIV: u32 = 1 << 29;
    /// dw3: max_batch_shift shift (8:5).
    pub const MAX_BATCH_SHIFT_SHIFT: u32 = 5;
    /// dw6: WQ state shift (31:30).
    pub const STATE_SHIFT: u32 = 30;
}

/// MSIX_PERM: one 32-bit entry every 8 bytes.
pub mod msix_perm {
    /// Stride between entries.
    pub const STRIDE: u64 = 8;
    /// Ignore: interrupts through this entry are suppressed.
    pub const IGNORE: u32 = 1 << 2;
    /// PASID enable: only requests with the entry's PASID may use it.
    pub const PASID_EN: u32 = 1 << 3;
    /// Defined bits (ignore, pasid_en, PASID 31:12).
    pub const MASK: u32 = 0xffff_f00c;
}

/// IMS entry layout: 16 bytes (addr_lo, addr_hi, data, ctrl).
pub mod ims {
    /// Bytes per entry.
    pub const ENTRY_SIZE: u64 = 16;
    /// Entries per unit of GENCAP.max_ims_mult.
    pub const ENTRIES_PER_MULT: u16 = 256;
    /// ctrl: masked.
    pub const CTRL_MASK: u32 = 1 << 0;
    /// ctrl: pending (read-only; unverified bit position).
    pub const CTRL_PENDING: u32 = 1 << 1;
    /// ctrl: PASID enable.
    pub const CTRL_PASID_EN: u32 = 1 << 3;
    /// ctrl: guest-writable bits (mask, PASID enable, PASID 31:12).
    pub const CTRL_WMASK: u32 = 0xffff_f009;
}

/// EVLCFG (128 bits, two qwords) fields, as `union evlcfg_reg`.
pub mod evlcfg {
    /// QW0: PASID enable.
    pub const PASID_EN: u64 = 1 << 0;
    /// QW0: privileged (with PASID).
    pub const PRIV: u64 = 1 << 1;
    /// QW0: base address (63:12, 4 KiB aligned).
    pub const BASE_MASK: u64 = !0xfff;
    /// QW0: defined bits.
    pub const QW0_MASK: u64 = BASE_MASK | PRIV | PASID_EN;
    /// QW1: size in entries (15:0).
    pub const SIZE_MASK: u64 = 0xffff;
    /// QW1: PASID shift (35:16).
    pub const PASID_SHIFT: u32 = 16;
    /// QW1: defined bits (size, PASID).
    pub const QW1_MASK: u64 = SIZE_MASK | (0xf_ffff << PASID_SHIFT);
    /// Smallest event log in entries (idxd's `IDXD_EVL_SIZE_MIN`; the driver never
    /// configures less, the device rejects less at Enable Device).
    pub const SIZE_MIN: u16 = 0x40;
}

/// EVLSTATUS (64 bits) fields, as `union evl_status_reg`.
pub mod evlstatus {
    /// Head (15:0): index of the next entry software reads; software-written.
    pub const HEAD_MASK: u64 = 0xffff;
    /// Tail shift (47:32): index of the next entry the device writes; read-only.
    pub const TAIL_SHIFT: u32 = 32;
    /// Interrupt pending (bit 62), write one to clear.
    pub const INT_PENDING: u64 = 1 << 62;
}

/// SWERR QW0 fields.
pub mod swerr {
    /// Valid.
    pub const VALID: u64 = 1 << 0;
    /// Overflow: another error happened while valid was set.
    pub const OVERFLOW: u64 = 1 << 1;
    /// Descriptor fields (opcode) valid.
    pub const DESC_VALID: u64 = 1 << 2;
    /// WQ index valid.
    pub const WQ_IDX_VALID: u64 = 1 << 3;
    /// Error was in a batch sub-descriptor.
    pub const BATCH: u64 = 1 << 4;
    /// The fault was on a write.
    pub const FAULT_RW: u64 = 1 << 5;
    /// Privileged descriptor.
    pub const PRIV: u64 = 1 << 6;
    /// Error code shift (15:8).
    pub const ERROR_SHIFT: u32 = 8;
    /// WQ index shift (23:16).
    pub const WQ_IDX_SHIFT: u32 = 16;
    /// Opcode shift (39:32).
    pub const OPCODE_SHIFT: u32 = 32;
}

/// Portal geometry in BAR2.
pub mod portal {
    /// Bytes per WQ (four 4 KiB portals).
    pub const WQ_STRIDE: u64 = 0x4000;
    /// Bytes per portal page.
    pub const PAGE: u64 = 0x1000;
    /// Bytes per descriptor slot.
    pub const SLOT: u64 = 64;
}

/// Descriptor opcodes (`enum dsa_opcode`).
pub mod opcode {
    /// No operation.
    pub const NOOP: u8 = 0x00;
    /// Batch.
    pub const BATCH: u8 = 0x01;
    /// Drain.
    pub const DRAIN: u8 = 0x02;
    /// Memory move.
    pub const MEMMOVE: u8 = 0x03;
    /// Memory fill.
    pub const MEMFILL: u8 = 0x04;
    /// Compare.
    pub const COMPARE: u8 = 0x05;
    /// Compare pattern.
    pub const COMPVAL: u8 = 0x06;
    /// Dualcast.
    pub const DUALCAST: u8 = 0x09;
    /// CRC generation.
    pub const CRCGEN: u8 = 0x10;
    /// Copy with CRC generation.
    pub const COPY_CRC: u8 = 0x11;
}

/// OPCAP bit set of the implemented opcodes (all below 64, so only OPCAP[0] is used).
pub const OPCAP0: u64 = (1 << opcode::NOOP)
    | (1 << opcode::BATCH)
    | (1 << opcode::DRAIN)
    | (1 << opcode::MEMMOVE)
    | (1 << opcode::MEMFILL)
    | (1 << opcode::COMPARE)
    | (1 << opcode::COMPVAL)
    | (1 << opcode::DUALCAST)
    | (1 << opcode::CRCGEN)
    | (1 << opcode::COPY_CRC);

/// Descriptor flags (`IDXD_OP_FLAG_*`, bits 23:0 of dword 1).
pub mod flag {
    /// Fence (batch sub-descriptors).
    pub const FENCE: u32 = 1 << 0;
    /// Block on fault.
    pub const BOF: u32 = 1 << 1;
    /// Completion record address valid.
    pub const CRAV: u32 = 1 << 2;
    /// Request completion record (also on success).
    pub const RCR: u32 = 1 << 3;
    /// Request completion interrupt.
    pub const RCI: u32 = 1 << 4;
    /// Check result (compare operations).
    pub const CHECK_RESULT: u32 = 1 << 7;
    /// Cache control.
    pub const CC: u32 = 1 << 8;
    /// Traffic-class selectors (12:9).
    pub const TCS: u32 = 0xf << 9;
    /// Strict ordering.
    pub const STRICT_ORDER: u32 = 1 << 13;
    /// CRC operations: read the seed from `seed_addr`.
    pub const READ_CRC_SEED: u32 = 1 << 16;
    /// Flags accepted on every implemented opcode.
    pub const COMMON: u32 = FENCE | CRAV | RCR | RCI | CC | TCS | STRICT_ORDER;
}

/// Descriptor field offsets (64-byte descriptor, little endian).
pub mod desc {
    /// Size of a descriptor.
    pub const SIZE: usize = 64;
    /// u32: flags (23:0) and opcode (31:24).
    pub const FLAGS_OPCODE: usize = 0x04;
    /// u64: completion record address.
    pub const COMPLETION_ADDR: usize = 0x08;
    /// u64: source / pattern / descriptor list address.
    pub const SRC: usize = 0x10;
    /// u64: destination / second source.
    pub const DST: usize = 0x18;
    /// u32: transfer size / descriptor count.
    pub const SIZE_FIELD: usize = 0x20;
    /// u16: interrupt handle.
    pub const INT_HANDLE: usize = 0x24;
    /// u16: reserved.
    pub const RSVD1: usize = 0x26;
    /// Start of the operation-specific bytes.
    pub const OP_SPECIFIC: usize = 0x28;
    /// u8: expected result (compare operations).
    pub const EXPECTED_RES: usize = 0x28;
    /// u64: second destination (dualcast).
    pub const DEST2: usize = 0x28;
    /// u32: CRC seed.
    pub const CRC_SEED: usize = 0x28;
    /// u64: CRC seed address (with `READ_CRC_SEED`).
    pub const CRC_SEED_ADDR: usize = 0x30;
}

/// Completion record (32 bytes for DSA).
pub mod record {
    /// Size of a record.
    pub const SIZE: usize = 32;
    /// Required alignment.
    pub const ALIGN: u64 = 32;
    /// u8 result.
    pub const RESULT: usize = 1;
    /// u32 bytes (or descriptors) completed.
    pub const BYTES_COMPLETED: usize = 4;
    /// u64 fault address.
    pub const FAULT_ADDR: usize = 8;
    /// u32 invalid flags (status 0x11) or CRC value.
    pub const OP_SPECIFIC: usize = 16;
    /// Status bit: the fault was on a write.
    pub const STATUS_WRITE_FAULT: u8 = 0x80;
}

/// Completion status codes (`enum dsa_completion_status`).
pub mod status {
    /// Success.
    pub const SUCCESS: u8 = 0x01;
    /// Success with false predicate (check result).
    pub const SUCCESS_PRED: u8 = 0x02;
    /// Page fault without block-on-fault.
    pub const PAGE_FAULT: u8 = 0x03;
    /// Batch: a descriptor failed or was abandoned.
    pub const BATCH_FAIL: u8 = 0x05;
    /// Batch: page fault reading the descriptor list.
    pub const BATCH_PAGE_FAULT: u8 = 0x06;
    /// Unsupported opcode.
    pub const BAD_OPCODE: u8 = 0x10;
    /// Invalid flags.
    pub const INVALID_FLAGS: u8 = 0x11;
    /// Non-zero reserved field.
    pub const NONZERO_RESERVED: u8 = 0x12;
    /// Transfer size out of range.
    pub const XFER_ERANGE: u8 = 0x13;
    /// Descriptor count out of range.
    pub const DESC_CNT_ERANGE: u8 = 0x14;
    /// Overlapping buffers.
    pub const OVERLAP: u8 = 0x16;
    /// Dualcast destinations differ in bits 11:0.
    pub const DUALCAST: u8 = 0x17;
    /// Misaligned descriptor list.
    pub const DESCLIST_ALIGN: u8 = 0x18;
    /// Invalid interrupt handle.
    pub const INT_HANDLE_INVAL: u8 = 0x19;
    /// Completion record address translation fault (SWERR only).
    pub const CRA_XLAT: u8 = 0x1a;
    /// Misaligned completion record address (SWERR only).
    pub const CRA_ALIGN: u8 = 0x1b;
    /// Hardware error (the model: the worker thread died).
    pub const HW_ERR1: u8 = 0x20;
}
