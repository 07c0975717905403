//! Fuzzes the DSA device model (`devices::dsa::Dsa`) the way a hostile guest drives it,
//! on a `RecordingBackend` hierarchy (no KVM) and 2 MiB of guest RAM (one region, or two
//! with a hole), so descriptor, list, CRC-seed and completion-record addresses often fall
//! outside RAM.
//!
//! Operations: config-space reads/writes (any dword-contained access; bus master, MSI-X
//! control), BAR0 accesses of any size at any offset (registers, commands with arbitrary
//! operands, GRPCFG, WQCFG, MSIX_PERM, MSI-X table and PBA, IMS table, beyond the BAR),
//! Linux-like bring-up and WQ configuration with fuzzed fields, portal writes (whole 64-byte
//! descriptors, eight 8-byte pieces in any order with repeats and gaps, raw writes of any
//! size at any offset of any BAR), descriptors with any opcode, flags, addresses, sizes,
//! handles and reserved bytes, batch lists in guest memory, guest-memory writes,
//! `wait_idle()`, device reset, and checked operations (MEMMOVE, MEMFILL, COMPARE, CRCGEN
//! on RAM buffers) whose results are compared with the expected data.
//!
//! Invariants, after every operation:
//! - GENSTS is 0, 1 or 3 (never draining); CMDSTS.active (a command waiting for
//!   descriptors) is clear after `wait_idle()`; CMDSTS holds a known error code; INTCAUSE has only defined bits; clearing
//!   bus mastering while enabled halts;
//! - portal (BAR2) and other-BAR reads return zeros, BAR0 reads beyond the BAR return zeros;
//! - descriptors are only accepted while the device and the WQ are enabled with bus
//!   mastering; occupancy never exceeds the WQ size and is 0 after `wait_idle()`;
//! - data-path counters never go back; every vector's deliveries + drops <= fires; the
//!   vector layer's books balance;
//! - a checked operation submitted to an enabled WQ completes with the right status and
//!   result (copy/fill data, compare result and offset, CRC-32C);
//! - dropping the device joins its worker (no thread leak across inputs) and frees every
//!   vector it held. Hangs (drain, abort, wait_idle) are caught by libFuzzer's -timeout.

#![no_main]

use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use devices::dsa::spec::{
    cmd, cmd_err, desc, flag, gensts, intcause, opcode, reg, status, wqcfg, Command,
};
use devices::dsa::{
    Dsa, DsaConfig, DsaStats, GRPCFG_OFFSET, IMS_OFFSET, MSIX_PBA_OFFSET, MSIX_PERM_OFFSET,
    MSIX_TABLE_OFFSET, WQCFG_OFFSET,
};
use interrupt::{InterruptHierarchy, KvmVectorLayer, NoRemap, RecordingBackend, RequesterId};
use pci::config::{command as pci_command, reg as pci_reg};
use pci::msix::control as msix_control;
use pci::PciDevice;

const RAM_END: u64 = 0x20_0000;
const HOLE: (u64, u64) = (0x10_0000, 0x18_0000);
/// Buffers of the checked operations (always in RAM).
const CHECK_SRC: u64 = 0x1_0000;
const CHECK_DST: u64 = 0x4_0000;
const CHECK_REC: u64 = 0x8_0000;
const CHECK_MAX: u64 = 0x3_0000;
const WQ_STRIDE: u64 = 0x4000;

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Layout {
    One,
    Hole,
}

impl Layout {
    fn ranges(self) -> Vec<(GuestAddress, usize)> {
        match self {
            Layout::One => vec![(GuestAddress(0), RAM_END as usize)],
            Layout::Hole => vec![
                (GuestAddress(0), HOLE.0 as usize),
                (GuestAddress(HOLE.1), (RAM_END - HOLE.1) as usize),
            ],
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
struct Shape {
    wqs: u8,
    engines: u8,
    groups: u8,
    ims: u8,
}

impl Shape {
    fn config(self) -> DsaConfig {
        DsaConfig {
            wqs: match self.wqs {
                0xFF => 64,
                w => w % 8 + 1,
            },
            engines: match self.engines {
                0xFF => 64,
                e => e % 8 + 1,
            },
            groups: match self.groups {
                0xFF => 16,
                g => g % 4 + 1,
            },
            ims: match self.ims % 4 {
                0 => 0,
                3 => 512,
                _ => 256,
            },
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
    Version,
    Gencap,
    Wqcap,
    Grpcap,
    Engcap,
    Opcap,
    TableOffsets,
    Gencfg,
    Genctrl,
    Gensts,
    Intcause,
    Cmd,
    Cmdsts,
    Cmdcap,
    Swerr,
    Evlcfg,
    Evlstatus,
}

impl Reg {
    fn offset(self) -> u64 {
        match self {
            Reg::Version => reg::VERSION,
            Reg::Gencap => reg::GENCAP,
            Reg::Wqcap => reg::WQCAP,
            Reg::Grpcap => reg::GRPCAP,
            Reg::Engcap => reg::ENGCAP,
            Reg::Opcap => reg::OPCAP,
            Reg::TableOffsets => reg::TABLE_OFFSETS,
            Reg::Gencfg => reg::GENCFG,
            Reg::Genctrl => reg::GENCTRL,
            Reg::Gensts => reg::GENSTS,
            Reg::Intcause => reg::INTCAUSE,
            Reg::Cmd => reg::CMD,
            Reg::Cmdsts => reg::CMDSTS,
            Reg::Cmdcap => reg::CMDCAP,
            Reg::Swerr => reg::SWERR,
            Reg::Evlcfg => reg::EVLCFG,
            Reg::Evlstatus => reg::EVLSTATUS,
        }
    }
}

/// Where a BAR0 access lands.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Bar0Off {
    Reg { reg: Reg, skew: u8 },
    Grpcfg { group: u8, byte: u8 },
    Wqcfg { wq: u8, byte: u8 },
    MsixPerm { index: u8, byte: u8 },
    MsixTable { index: u8, byte: u8 },
    Pba(u8),
    Ims { index: u16, byte: u8 },
    Any(u16),
    Raw(u64),
}

impl Bar0Off {
    fn get(self) -> u64 {
        match self {
            Bar0Off::Reg { reg, skew } => reg.offset() + u64::from(skew % 16),
            Bar0Off::Grpcfg { group, byte } => {
                GRPCFG_OFFSET + u64::from(group % 17) * 64 + u64::from(byte % 64)
            }
            Bar0Off::Wqcfg { wq, byte } => {
                WQCFG_OFFSET + u64::from(wq % 65) * 32 + u64::from(byte % 32)
            }
            Bar0Off::MsixPerm { index, byte } => {
                MSIX_PERM_OFFSET + u64::from(index % 66) * 8 + u64::from(byte % 8)
            }
            Bar0Off::MsixTable { index, byte } => {
                MSIX_TABLE_OFFSET + u64::from(index % 66) * 16 + u64::from(byte % 16)
            }
            Bar0Off::Pba(b) => MSIX_PBA_OFFSET + u64::from(b % 32),
            Bar0Off::Ims { index, byte } => {
                IMS_OFFSET + u64::from(index % 520) * 16 + u64::from(byte % 16)
            }
            Bar0Off::Any(o) => u64::from(o),
            Bar0Off::Raw(o) => o,
        }
    }
}

/// A guest-physical address for the data path.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Addr {
    Ram(u32),
    /// 64-byte aligned in RAM (batch lists, records).
    Aligned(u16),
    /// Just below the end of RAM or of the first region (so ranges run off the end).
    NearEnd {
        hole: bool,
        back: u16,
    },
    /// Inside the hole (in the Hole layout) or just past the end of RAM.
    Outside(u16),
    /// Wrapping past 2^64.
    Wrap(u16),
    /// MMIO-looking addresses (the device's own BARs would live here).
    Mmio(u16),
    Raw(u64),
}

impl Addr {
    fn get(self) -> u64 {
        match self {
            Addr::Ram(a) => u64::from(a) % RAM_END,
            Addr::Aligned(i) => (u64::from(i) * 64) % RAM_END,
            Addr::NearEnd { hole, back } => {
                let end = if hole { HOLE.0 } else { RAM_END };
                end - 1 - u64::from(back % 0x1000)
            }
            Addr::Outside(o) => {
                if o & 1 == 0 {
                    HOLE.0 + u64::from(o)
                } else {
                    RAM_END + u64::from(o)
                }
            }
            Addr::Wrap(o) => u64::MAX - u64::from(o),
            Addr::Mmio(o) => 0xFE00_0000 + (u64::from(o) << 4),
            Addr::Raw(a) => a,
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Opcode {
    Noop,
    Batch,
    Drain,
    Memmove,
    Memfill,
    Compare,
    Compval,
    Dualcast,
    Crcgen,
    CopyCrc,
    Other(u8),
}

impl Opcode {
    fn get(self) -> u8 {
        match self {
            Opcode::Noop => opcode::NOOP,
            Opcode::Batch => opcode::BATCH,
            Opcode::Drain => opcode::DRAIN,
            Opcode::Memmove => opcode::MEMMOVE,
            Opcode::Memfill => opcode::MEMFILL,
            Opcode::Compare => opcode::COMPARE,
            Opcode::Compval => opcode::COMPVAL,
            Opcode::Dualcast => opcode::DUALCAST,
            Opcode::Crcgen => opcode::CRCGEN,
            Opcode::CopyCrc => opcode::COPY_CRC,
            Opcode::Other(o) => o,
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Xfer {
    Zero,
    Small(u16),
    Pages(u8),
    /// 2^n bytes, n <= 31, around the WQ limits.
    Pow2(u8),
    Raw(u32),
}

impl Xfer {
    fn get(self) -> u32 {
        match self {
            Xfer::Zero => 0,
            Xfer::Small(n) => u32::from(n),
            Xfer::Pages(n) => u32::from(n) << 12,
            Xfer::Pow2(n) => 1 << (n % 32),
            Xfer::Raw(n) => n,
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum OpSpecific {
    Zero,
    ExpectedResult(u8),
    Dest2(Addr),
    CrcSeed { seed: u32, addr: Addr },
    Raw([u64; 3]),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
struct Flags {
    fence: bool,
    crav: bool,
    rcr: bool,
    rci: bool,
    check_result: bool,
    cache_control: bool,
    strict: bool,
    read_seed: bool,
    extra: Option<u32>,
}

impl Flags {
    fn get(self) -> u32 {
        let b = |on: bool, f: u32| if on { f } else { 0 };
        b(self.fence, flag::FENCE)
            | b(self.crav, flag::CRAV)
            | b(self.rcr, flag::RCR)
            | b(self.rci, flag::RCI)
            | b(self.check_result, flag::CHECK_RESULT)
            | b(self.cache_control, flag::CC)
            | b(self.strict, flag::STRICT_ORDER)
            | b(self.read_seed, flag::READ_CRC_SEED)
            | self.extra.unwrap_or(0) & 0xFF_FFFF
    }
}

/// A descriptor: mostly well-formed ones (so the operations run), or anything.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum DescSpec {
    /// Valid flags (record requested, optionally an interrupt), reserved fields zero.
    Clean {
        opcode: Opcode,
        completion: Addr,
        src: Addr,
        dst: Addr,
        size: Xfer,
        interrupt: Option<u16>,
        fence: bool,
        /// COMPARE/COMPVAL expected result, DUALCAST second destination, CRC seed.
        extra: Option<(u8, Addr, u32)>,
    },
    /// A batch of `count` descriptors at `list`.
    Batch {
        list: Addr,
        count: u8,
        completion: Addr,
        interrupt: Option<u16>,
    },
    Any(DescFields),
}

impl DescSpec {
    fn bytes(self) -> [u8; 64] {
        match self {
            DescSpec::Clean {
                opcode,
                completion,
                src,
                dst,
                size,
                interrupt,
                fence,
                extra,
            } => {
                let op = opcode.get();
                let op_specific = match (op, extra) {
                    (_, None) => OpSpecific::Zero,
                    (opcode::COMPARE | opcode::COMPVAL, Some((r, _, _))) => {
                        OpSpecific::ExpectedResult(r & 1)
                    }
                    (opcode::DUALCAST, Some((_, a, _))) => OpSpecific::Dest2(a),
                    (opcode::CRCGEN | opcode::COPY_CRC, Some((_, a, seed))) => {
                        OpSpecific::CrcSeed { seed, addr: a }
                    }
                    _ => OpSpecific::Zero,
                };
                let read_seed = matches!(op, opcode::CRCGEN | opcode::COPY_CRC)
                    && extra.is_some_and(|(r, _, _)| r & 2 != 0);
                let check_result = matches!(op, opcode::COMPARE | opcode::COMPVAL)
                    && extra.is_some_and(|(r, _, _)| r & 2 != 0);
                DescFields {
                    opcode,
                    flags: Flags {
                        fence,
                        crav: true,
                        rcr: true,
                        rci: interrupt.is_some(),
                        check_result,
                        cache_control: false,
                        strict: false,
                        read_seed,
                        extra: None,
                    },
                    completion,
                    src,
                    // CRCGEN has no destination.
                    dst: if op == opcode::CRCGEN {
                        Addr::Raw(0)
                    } else {
                        dst
                    },
                    size,
                    handle: interrupt.unwrap_or(0),
                    op_specific,
                    junk: None,
                }
                .bytes()
            }
            DescSpec::Batch {
                list,
                count,
                completion,
                interrupt,
            } => DescFields {
                opcode: Opcode::Batch,
                flags: Flags {
                    fence: false,
                    crav: true,
                    rcr: true,
                    rci: interrupt.is_some(),
                    check_result: false,
                    cache_control: false,
                    strict: false,
                    read_seed: false,
                    extra: None,
                },
                completion,
                src: list,
                dst: Addr::Raw(0),
                size: Xfer::Small(u16::from(count % 40)),
                handle: interrupt.unwrap_or(0),
                op_specific: OpSpecific::Zero,
                junk: None,
            }
            .bytes(),
            DescSpec::Any(f) => f.bytes(),
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
struct DescFields {
    opcode: Opcode,
    flags: Flags,
    completion: Addr,
    src: Addr,
    dst: Addr,
    size: Xfer,
    handle: u16,
    op_specific: OpSpecific,
    /// Garbage in the PASID word and the reserved bytes 0x26..0x28.
    junk: Option<(u32, u16)>,
}

impl DescFields {
    fn bytes(self) -> [u8; 64] {
        let mut d = [0u8; 64];
        let put64 = |d: &mut [u8; 64], off: usize, v: u64| {
            d[off..off + 8].copy_from_slice(&v.to_le_bytes())
        };
        let w = self.flags.get() | (u32::from(self.opcode.get()) << 24);
        d[desc::FLAGS_OPCODE..desc::FLAGS_OPCODE + 4].copy_from_slice(&w.to_le_bytes());
        put64(&mut d, desc::COMPLETION_ADDR, self.completion.get());
        put64(&mut d, desc::SRC, self.src.get());
        put64(&mut d, desc::DST, self.dst.get());
        d[desc::SIZE_FIELD..desc::SIZE_FIELD + 4].copy_from_slice(&self.size.get().to_le_bytes());
        d[desc::INT_HANDLE..desc::INT_HANDLE + 2].copy_from_slice(&self.handle.to_le_bytes());
        match self.op_specific {
            OpSpecific::Zero => {}
            OpSpecific::ExpectedResult(r) => d[desc::EXPECTED_RES] = r,
            OpSpecific::Dest2(a) => put64(&mut d, desc::DEST2, a.get()),
            OpSpecific::CrcSeed { seed, addr } => {
                d[desc::CRC_SEED..desc::CRC_SEED + 4].copy_from_slice(&seed.to_le_bytes());
                put64(&mut d, desc::CRC_SEED_ADDR, addr.get());
            }
            OpSpecific::Raw(v) => {
                for (i, q) in v.iter().enumerate() {
                    put64(&mut d, desc::OP_SPECIFIC + 8 * i, *q);
                }
            }
        }
        if let Some((pasid, rsvd)) = self.junk {
            d[0..4].copy_from_slice(&pasid.to_le_bytes());
            d[desc::RSVD1..desc::RSVD1 + 2].copy_from_slice(&rsvd.to_le_bytes());
        }
        d
    }
}

/// How a descriptor reaches a portal.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Delivery {
    /// One 64-byte write (MOVDIR64B).
    Whole,
    /// Eight 8-byte writes in the order the seed permutes them.
    Qwords(u32),
    /// Qword writes, some repeated or missing.
    Pieces([u8; 10]),
    /// The 64 bytes at a misaligned offset.
    Misaligned(u8),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum CmdCode {
    Known(u8),
    Raw(u8),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Operand {
    Wq(u8),
    WqSet { bits: u16, base: u8 },
    Handle { index: u16, ims: bool },
    Raw(u32),
}

impl Operand {
    fn get(self) -> u32 {
        match self {
            Operand::Wq(w) => u32::from(w % 70),
            Operand::WqSet { bits, base } => u32::from(bits) | (u32::from(base & 0xF) << 16),
            Operand::Handle { index, ims } => {
                u32::from(index) | if ims { cmd::INT_HANDLE_IMS } else { 0 }
            }
            Operand::Raw(v) => v & cmd::OPERAND_MASK,
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Check {
    Move,
    Fill(u64),
    Compare { differ_at: Option<u16> },
    Crc(u32),
}

#[derive(Arbitrary, Debug)]
enum Op {
    CfgRead {
        reg: u16,
    },
    CfgWrite {
        reg: u16,
        size: u8,
        value: u32,
    },
    BusMaster(bool),
    MsixControl {
        enable: bool,
        function_mask: bool,
    },
    ProgramMsix {
        index: u8,
        vector: u8,
        dest: u8,
        masked: bool,
        bad_address: bool,
    },
    RegRead {
        bar: u8,
        off: Bar0Off,
        size: Size,
    },
    RegWrite {
        off: Bar0Off,
        size: Size,
        value: u64,
        value_hi: u64,
    },
    Command {
        code: CmdCode,
        operand: Operand,
        int_req: bool,
    },
    ConfigureWq {
        wq: u8,
        size: u8,
        priority: u8,
        mode: u8,
        xfer_shift: u8,
        batch_shift: u8,
        group: u8,
        engines: u64,
        group_flags: u64,
    },
    /// Linux's bring-up of one WQ: PCI up, WQ configured in group 0, device and WQ enabled.
    Up {
        wq: u8,
        size: u8,
    },
    ImsEntry {
        index: u16,
        address: u32,
        data: u32,
        ctrl: u32,
        wide: bool,
    },
    Submit {
        wq: u8,
        page: u8,
        slot: u8,
        desc: DescSpec,
        how: Delivery,
    },
    /// The same descriptor `count` times, as fast as possible (fills the WQ, RCI floods).
    Burst {
        wq: u8,
        page: u8,
        count: u8,
        desc: DescSpec,
    },
    PortalWrite {
        bar: u8,
        offset: u64,
        data: Vec<u8>,
    },
    WriteMem {
        addr: Addr,
        bytes: Vec<u8>,
    },
    /// Writes a batch list (64 bytes per descriptor) at `addr`.
    WriteList {
        addr: Addr,
        descs: Vec<DescSpec>,
    },
    WaitIdle,
    Reset,
    /// A checked operation on RAM buffers through WQ `wq`.
    Checked {
        wq: u8,
        check: Check,
        src_off: u16,
        dst_off: u16,
        len: u16,
        seed: u8,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    layout: Layout,
    shape: Shape,
    /// Start from Linux's bring-up of a WQ (`Op::Up`) to reach the data path sooner.
    preset: Option<(u8, u8)>,
    ops: Vec<Op>,
}

struct Fixture {
    backend: Arc<RecordingBackend>,
    hierarchy: Arc<InterruptHierarchy>,
    mem: GuestMemoryMmap,
    dev: Dsa,
    cfg: DsaConfig,
    msix_cap: usize,
    stats: DsaStats,
}

const KNOWN_CMD_ERRORS: &[u8] = &[
    cmd_err::SUCCESS,
    cmd_err::INVAL_CMD,
    cmd_err::INVAL_WQIDX,
    cmd_err::HW_ERR,
    cmd_err::DEV_ENABLED,
    cmd_err::CONFIG,
    cmd_err::BUSMASTER_EN,
    cmd_err::WQ_SIZE_ERANGE,
    cmd_err::GRP_CONFIG,
    cmd_err::GRP_CONFIG2,
    cmd_err::GRP_CONFIG3,
    cmd_err::GRP_CONFIG4,
    cmd_err::DEV_NOTEN,
    cmd_err::WQ_ENABLED,
    cmd_err::WQ_SIZE,
    cmd_err::WQ_PRIOR,
    cmd_err::WQ_MODE,
    cmd_err::BOF_EN,
    cmd_err::PASID_EN,
    cmd_err::MAX_BATCH_SIZE,
    cmd_err::MAX_XFER_SIZE,
    cmd_err::DIS_DEV_EN,
    cmd_err::DEV_NOT_EN,
    cmd_err::INVAL_INT_IDX,
    cmd_err::NO_HANDLE,
];

fn crc32c(seed: u32, data: &[u8]) -> u32 {
    let mut c = !seed;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82F6_3B78
            } else {
                c >> 1
            };
        }
    }
    !c
}

fn threads() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

impl Fixture {
    fn new(input: &Input) -> Self {
        let mem = GuestMemoryMmap::from_ranges(&input.layout.ranges()).expect("guest memory");
        let backend = Arc::new(RecordingBackend::default());
        let hierarchy = InterruptHierarchy::new(
            Arc::new(KvmVectorLayer::new(backend.clone(), 24, 4096)),
            Arc::new(NoRemap),
        );
        let cfg = input.shape.config();
        let dev = Dsa::new(&hierarchy, RequesterId::pci(0, 4, 0), mem.clone(), cfg)
            .expect("valid DSA shape");
        // Walk the capability list as a guest would.
        let mut msix_cap = 0;
        let mut ptr = usize::from(dev.config().u16_at(pci_reg::CAPABILITIES) as u8 & 0xFC);
        let mut seen = 0;
        while ptr != 0 && seen < 48 {
            let hdr = dev.config().read_dword(ptr);
            if hdr & 0xFF == 0x11 {
                msix_cap = ptr;
            }
            ptr = ((hdr >> 8) & 0xFC) as usize;
            seen += 1;
        }
        assert_ne!(msix_cap, 0, "MSI-X capability listed");
        Self {
            backend,
            hierarchy,
            mem,
            dev,
            cfg,
            msix_cap,
            stats: DsaStats::default(),
        }
    }

    fn r32(&mut self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.dev.bar_read(0, off, &mut b);
        u32::from_le_bytes(b)
    }

    fn r64(&mut self, off: u64) -> u64 {
        let mut b = [0u8; 8];
        self.dev.bar_read(0, off, &mut b);
        u64::from_le_bytes(b)
    }

    fn w32(&mut self, off: u64, v: u32) {
        self.dev.bar_write(0, off, &v.to_le_bytes());
    }

    fn w64(&mut self, off: u64, v: u64) {
        self.dev.bar_write(0, off, &v.to_le_bytes());
    }

    fn gensts(&mut self) -> u32 {
        self.r32(reg::GENSTS)
    }

    fn bus_master_on(&self) -> bool {
        self.dev.config().u16_at(pci_reg::COMMAND) & pci_command::BUS_MASTER != 0
    }

    fn cfg_write(&mut self, offset: usize, data: &[u8]) {
        let was_enabled = self.gensts() == gensts::ENABLED;
        self.dev.write_config(offset, data);
        if was_enabled && !self.bus_master_on() {
            assert_eq!(
                self.gensts(),
                gensts::HALT,
                "bus mastering cleared while enabled must halt"
            );
        }
    }

    fn bus_master(&mut self, on: bool) {
        let v = pci_command::MEMORY | if on { pci_command::BUS_MASTER } else { 0 };
        self.cfg_write(pci_reg::COMMAND, &v.to_le_bytes());
    }

    fn msix_ctrl(&mut self, v: u16) {
        let off = self.msix_cap + 2;
        self.cfg_write(off, &v.to_le_bytes());
    }

    fn program_msix(&mut self, i: u64, address: u32, data: u32, masked: bool) {
        let base = MSIX_TABLE_OFFSET + i * 16;
        self.w32(base, address);
        self.w32(base + 4, 0);
        self.w32(base + 8, data);
        self.w32(base + 12, u32::from(masked));
    }

    /// Runs a command word; checks CMDSTS afterwards.
    fn command(&mut self, word: u32) -> u32 {
        // Commands that wait for descriptors complete asynchronously: like idxd, wait for
        // the previous one before writing CMD (a CMD write while active is ignored).
        if self.r32(reg::CMDSTS) & (1 << 31) != 0 {
            self.dev.wait_idle();
        }
        self.w32(reg::CMD, word);
        if self.r32(reg::CMDSTS) & (1 << 31) != 0 {
            self.dev.wait_idle();
        }
        let sts = self.r32(reg::CMDSTS);
        assert_eq!(sts & (1 << 31), 0, "CMDSTS.active after command {word:#x}");
        let err = (sts & 0xFF) as u8;
        assert!(
            KNOWN_CMD_ERRORS.contains(&err),
            "command {word:#x}: unknown CMDSTS error {err:#x}"
        );
        let code = (word >> cmd::CODE_SHIFT) & cmd::CODE_MASK;
        if err == cmd_err::SUCCESS {
            let st = self.gensts();
            match Command::from_code(code) {
                Some(Command::EnableDevice) => assert_eq!(st, gensts::ENABLED),
                Some(Command::DisableDevice) | Some(Command::ResetDevice) => {
                    assert_eq!(st, gensts::DISABLED)
                }
                None => panic!("unknown command {code} succeeded"),
                _ => {}
            }
        }
        sts
    }

    fn cmd(&mut self, c: Command, operand: u32) -> u32 {
        self.command(((c as u32) << cmd::CODE_SHIFT) | operand)
    }

    fn pci_up(&mut self) {
        self.bus_master(true);
        self.msix_ctrl(msix_control::ENABLE);
        for i in 0..self.cfg.msix_vectors() as u64 {
            self.program_msix(i, 0xFEE0_0000, 0x40 + i as u32, false);
        }
    }

    fn wq_index(&self, wq: u8) -> u64 {
        // Mostly real WQs, sometimes one past the end.
        if wq == 0xFF {
            u64::from(self.cfg.wqs)
        } else {
            u64::from(wq % self.cfg.wqs)
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn configure_wq(
        &mut self,
        wq: u64,
        size: u32,
        dw2: u32,
        dw3: u32,
        group: u64,
        engines: u64,
        flags: u64,
    ) {
        let base = WQCFG_OFFSET + wq * 32;
        self.w32(base, size);
        self.w32(base + 8, dw2);
        self.w32(base + 12, dw3);
        let g = GRPCFG_OFFSET + group * 64;
        let q = g + (wq / 64) * 8;
        let bits = self.r64(q) | (1 << (wq % 64));
        self.w64(q, bits);
        self.w64(g + 32, engines);
        self.w64(g + 40, flags);
    }

    fn wq_enabled(&mut self, wq: u64) -> bool {
        self.r32(WQCFG_OFFSET + wq * 32 + 24) & (1 << wqcfg::STATE_SHIFT) != 0
    }

    fn occupancy(&mut self, wq: u64) -> u32 {
        self.r32(WQCFG_OFFSET + wq * 32 + 24) & 0xFFFF
    }

    fn portal_offset(&self, wq: u64, page: u8, slot: u8) -> u64 {
        wq * WQ_STRIDE + u64::from(page % 4) * 0x1000 + u64::from(slot % 64) * 64
    }

    fn submit(&mut self, offset: u64, d: &[u8; 64], how: Delivery) {
        match how {
            Delivery::Whole => self.dev.bar_write(2, offset, d),
            Delivery::Qwords(seed) => {
                let mut order = [0usize, 1, 2, 3, 4, 5, 6, 7];
                let mut s = seed;
                for i in (1..8).rev() {
                    order.swap(i, (s % (i as u32 + 1)) as usize);
                    s /= i as u32 + 1;
                }
                for k in order {
                    self.dev
                        .bar_write(2, offset + k as u64 * 8, &d[k * 8..k * 8 + 8]);
                }
            }
            Delivery::Pieces(ks) => {
                for k in ks {
                    let k = usize::from(k % 8);
                    self.dev
                        .bar_write(2, offset + k as u64 * 8, &d[k * 8..k * 8 + 8]);
                }
            }
            Delivery::Misaligned(m) => {
                let m = u64::from(m % 63) + 1;
                self.dev.bar_write(2, offset + m, d);
            }
        }
    }

    fn write_mem(&self, addr: u64, bytes: &[u8]) {
        // Partly or wholly outside RAM is fine: vm-memory refuses what does not fit.
        let _ = self.mem.write_slice(bytes, GuestAddress(addr));
    }

    fn read_mem(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem
            .read_slice(&mut v, GuestAddress(addr))
            .expect("checked buffers are in RAM");
        v
    }

    /// A checked operation: buffers in RAM, record requested; compares the outcome.
    fn checked(&mut self, wq: u8, check: Check, src_off: u16, dst_off: u16, len: u16, seed: u8) {
        let wq = u64::from(wq % self.cfg.wqs);
        let len = u64::from(len) % 0x2000 + 1;
        let src = CHECK_SRC + u64::from(src_off) % (CHECK_MAX - len);
        let dst = CHECK_DST + u64::from(dst_off) % (CHECK_MAX - len);
        // Nothing else may touch the buffers while this runs.
        self.dev.wait_idle();
        let data: Vec<u8> = (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect();
        self.write_mem(src, &data);
        self.write_mem(dst, &vec![!seed; len as usize]);
        if matches!(check, Check::Compare { .. }) {
            self.write_mem(dst, &data);
        }
        let mut diff = None;
        if let Check::Compare {
            differ_at: Some(at),
        } = check
        {
            let at = u64::from(at) % len;
            self.write_mem(dst + at, &[data[at as usize] ^ 0x5A]);
            diff = Some(at);
        }
        self.write_mem(CHECK_REC, &[0u8; 32]);
        let (op, src_field, dst_field) = match check {
            Check::Move => (opcode::MEMMOVE, src, dst),
            Check::Fill(p) => (opcode::MEMFILL, p, dst),
            Check::Compare { .. } => (opcode::COMPARE, src, dst),
            Check::Crc(_) => (opcode::CRCGEN, src, 0),
        };
        let mut d = [0u8; 64];
        let w = flag::CRAV | flag::RCR | (u32::from(op) << 24);
        d[desc::FLAGS_OPCODE..desc::FLAGS_OPCODE + 4].copy_from_slice(&w.to_le_bytes());
        d[desc::COMPLETION_ADDR..desc::COMPLETION_ADDR + 8]
            .copy_from_slice(&CHECK_REC.to_le_bytes());
        d[desc::SRC..desc::SRC + 8].copy_from_slice(&src_field.to_le_bytes());
        d[desc::DST..desc::DST + 8].copy_from_slice(&dst_field.to_le_bytes());
        d[desc::SIZE_FIELD..desc::SIZE_FIELD + 4].copy_from_slice(&(len as u32).to_le_bytes());
        if let Check::Crc(s) = check {
            d[desc::CRC_SEED..desc::CRC_SEED + 4].copy_from_slice(&s.to_le_bytes());
        }
        let ready = self.gensts() == gensts::ENABLED && self.bus_master_on() && self.wq_enabled(wq);
        let xfer_shift = self.r32(WQCFG_OFFSET + wq * 32 + 12) & 0x1F;
        let offset = self.portal_offset(wq, 0, seed);
        // A slot half-written by an earlier op would swallow the qwords: write whole.
        self.dev.bar_write(2, offset, &d);
        self.dev.wait_idle();
        let rec = self.read_mem(CHECK_REC, 32);
        let st = rec[0];
        if !ready {
            assert_eq!(st, 0, "descriptor ran on a WQ that was not ready: {rec:?}");
            return;
        }
        if len > 1 << xfer_shift {
            assert_eq!(
                st,
                status::XFER_ERANGE,
                "len {len} > 2^{xfer_shift}: {rec:?}"
            );
            return;
        }
        assert_eq!(st, status::SUCCESS, "{check:?} len {len}: record {rec:?}");
        let completed = u32::from_le_bytes(rec[4..8].try_into().unwrap());
        match check {
            Check::Move => {
                assert_eq!(self.read_mem(dst, len as usize), data, "MEMMOVE data");
            }
            Check::Fill(p) => {
                let want: Vec<u8> = (0..len as usize).map(|i| p.to_le_bytes()[i % 8]).collect();
                assert_eq!(self.read_mem(dst, len as usize), want, "MEMFILL data");
            }
            Check::Compare { .. } => match diff {
                None => assert_eq!(rec[1], 0, "COMPARE of equal buffers: {rec:?}"),
                Some(at) => {
                    assert_eq!(rec[1], 1, "COMPARE of differing buffers: {rec:?}");
                    assert_eq!(u64::from(completed), at, "COMPARE first difference");
                }
            },
            Check::Crc(s) => {
                let crc = u32::from_le_bytes(rec[16..20].try_into().unwrap());
                assert_eq!(crc, crc32c(s, &data), "CRCGEN value (seed {s:#x})");
            }
        }
    }

    fn run(&mut self, op: &Op) {
        let st_before = self.gensts();
        let submitted_before = self.dev.stats().submitted;
        let mut data_path = false;
        match op {
            Op::CfgRead { reg } => {
                let _ = self.dev.read_config(usize::from(reg % 0x400) & !3);
            }
            Op::CfgWrite { reg, size, value } => {
                let reg = usize::from(reg % 0x400);
                let len = [1usize, 2, 4, 3][usize::from(size % 4)];
                // Dword-contained, as the PCI root hands them over.
                let len = len.min(4 - reg % 4);
                self.cfg_write(reg, &value.to_le_bytes()[..len]);
            }
            Op::BusMaster(on) => self.bus_master(*on),
            Op::MsixControl {
                enable,
                function_mask,
            } => {
                let v = if *enable { msix_control::ENABLE } else { 0 }
                    | if *function_mask {
                        msix_control::FUNCTION_MASK
                    } else {
                        0
                    };
                self.msix_ctrl(v);
            }
            Op::ProgramMsix {
                index,
                vector,
                dest,
                masked,
                bad_address,
            } => {
                let i = u64::from(*index) % self.cfg.msix_vectors() as u64;
                let addr = if *bad_address {
                    0x1000
                } else {
                    0xFEE0_0000 | (u32::from(*dest) << 12)
                };
                self.program_msix(i, addr, u32::from(*vector), *masked);
            }
            Op::RegRead { bar, off, size } => {
                let bar = usize::from(bar % 8);
                let off = off.get();
                let mut b = vec![0xA5u8; size.len()];
                self.dev.bar_read(bar, off, &mut b);
                if bar != 0 || off >= self.cfg.bar0_size() {
                    assert!(
                        b.iter().all(|&x| x == 0),
                        "BAR{bar} read at {off:#x} beyond the registers: {b:?}"
                    );
                }
            }
            Op::RegWrite {
                off,
                size,
                value,
                value_hi,
            } => {
                let mut bytes = [0u8; 16];
                bytes[..8].copy_from_slice(&value.to_le_bytes());
                bytes[8..].copy_from_slice(&value_hi.to_le_bytes());
                let off = off.get();
                self.dev.bar_write(0, off, &bytes[..size.len()]);
            }
            Op::Command {
                code,
                operand,
                int_req,
            } => {
                let code = match code {
                    CmdCode::Known(c) => u32::from(c % 14) + 1,
                    CmdCode::Raw(c) => u32::from(*c) & cmd::CODE_MASK,
                };
                let word = (code << cmd::CODE_SHIFT)
                    | operand.get()
                    | if *int_req { cmd::INT_REQ } else { 0 };
                self.command(word);
            }
            Op::ConfigureWq {
                wq,
                size,
                priority,
                mode,
                xfer_shift,
                batch_shift,
                group,
                engines,
                group_flags,
            } => {
                let wq = self.wq_index(*wq);
                let dw2 = u32::from(mode & 0xF)
                    | (u32::from(priority & 0xF) << wqcfg::PRIORITY_SHIFT)
                    | if mode & 0x10 != 0 { wqcfg::PRIV } else { 0 }
                    | if mode & 0x20 != 0 { wqcfg::PASID_EN } else { 0 };
                let dw3 = u32::from(xfer_shift & 0x1F)
                    | (u32::from(batch_shift & 0xF) << wqcfg::MAX_BATCH_SHIFT_SHIFT);
                let group = u64::from(group % (self.cfg.groups + 1));
                self.configure_wq(
                    wq,
                    u32::from(*size),
                    dw2,
                    dw3,
                    group,
                    *engines,
                    *group_flags,
                );
            }
            Op::Up { wq, size } => {
                let wq = u64::from(wq % self.cfg.wqs);
                self.pci_up();
                let size = u32::from(size % 32) + 1;
                let engines = if self.cfg.engines >= 64 {
                    u64::MAX
                } else {
                    (1u64 << self.cfg.engines) - 1
                };
                if self.gensts() == gensts::DISABLED {
                    self.configure_wq(
                        wq,
                        size,
                        wqcfg::MODE_DEDICATED | (10 << wqcfg::PRIORITY_SHIFT) | wqcfg::PRIV,
                        21 | (5 << wqcfg::MAX_BATCH_SHIFT_SHIFT),
                        0,
                        engines,
                        0x9 | (64 << 20),
                    );
                    self.cmd(Command::EnableDevice, 0);
                }
                self.cmd(Command::EnableWq, wq as u32);
            }
            Op::ImsEntry {
                index,
                address,
                data,
                ctrl,
                wide,
            } => {
                let base = IMS_OFFSET + u64::from(*index % 520) * 16;
                if *wide {
                    self.w64(base, u64::from(*address));
                    self.w64(base + 8, u64::from(*data) | (u64::from(*ctrl) << 32));
                } else {
                    self.w32(base, *address);
                    self.w32(base + 4, 0);
                    self.w32(base + 8, *data);
                    self.w32(base + 12, *ctrl);
                }
            }
            Op::Submit {
                wq,
                page,
                slot,
                desc,
                how,
            } => {
                data_path = true;
                let wq = self.wq_index(*wq);
                let offset = self.portal_offset(wq, *page, *slot);
                self.submit(offset, &desc.bytes(), *how);
            }
            Op::Burst {
                wq,
                page,
                count,
                desc,
            } => {
                data_path = true;
                let wq = self.wq_index(*wq);
                let d = desc.bytes();
                for i in 0..=*count {
                    let offset = self.portal_offset(wq, *page, i);
                    self.dev.bar_write(2, offset, &d);
                }
            }
            Op::PortalWrite { bar, offset, data } => {
                data_path = true;
                let bar = if bar % 4 == 0 { 0 } else { 2 };
                let n = data.len().min(256);
                let off = if *offset >= 1 << 40 {
                    *offset
                } else {
                    offset % self.cfg.bar2_size().max(1)
                };
                if bar == 0 {
                    // Raw BAR0 write at a portal-like offset.
                    self.dev
                        .bar_write(0, off % self.cfg.bar0_size(), &data[..n]);
                } else {
                    self.dev.bar_write(2, off, &data[..n]);
                }
            }
            Op::WriteMem { addr, bytes } => {
                let n = bytes.len().min(512);
                self.write_mem(addr.get(), &bytes[..n]);
            }
            Op::WriteList { addr, descs } => {
                let a = addr.get();
                for (i, d) in descs.iter().take(40).enumerate() {
                    self.write_mem(a.wrapping_add(i as u64 * 64), &d.bytes());
                }
            }
            Op::WaitIdle => {
                self.dev.wait_idle();
                let sts = self.r32(reg::CMDSTS);
                assert_eq!(sts & (1 << 31), 0, "CMDSTS.active after wait_idle: {sts:#x}");
                for wq in 0..u64::from(self.cfg.wqs) {
                    assert_eq!(self.occupancy(wq), 0, "WQ {wq} busy after wait_idle");
                }
            }
            Op::Reset => {
                self.dev.reset();
                assert_eq!(self.gensts(), gensts::DISABLED);
                for wq in 0..u64::from(self.cfg.wqs) {
                    assert!(!self.wq_enabled(wq), "WQ {wq} enabled after reset");
                    assert_eq!(self.occupancy(wq), 0, "WQ {wq} busy after reset");
                }
            }
            Op::Checked {
                wq,
                check,
                src_off,
                dst_off,
                len,
                seed,
            } => self.checked(*wq, *check, *src_off, *dst_off, *len, *seed),
        }
        if data_path && st_before != gensts::ENABLED {
            assert_eq!(
                self.dev.stats().submitted,
                submitted_before,
                "descriptor accepted while the device was not enabled ({st_before})"
            );
        }
    }

    fn check(&mut self) {
        let st = self.gensts();
        assert!(
            matches!(st, gensts::DISABLED | gensts::ENABLED | gensts::HALT),
            "GENSTS {st:#x}"
        );
        let ic = self.r32(reg::INTCAUSE);
        assert_eq!(ic & !intcause::MASK, 0, "INTCAUSE {ic:#x}");
        let mut b = [0xAAu8; 8];
        self.dev.bar_read(2, 0x40, &mut b);
        assert_eq!(b, [0; 8], "portal reads are constant");
        for wq in 0..u64::from(self.cfg.wqs).min(8) {
            let dw6 = self.r32(WQCFG_OFFSET + wq * 32 + 24);
            let size = self.r32(WQCFG_OFFSET + wq * 32) & 0xFFFF;
            let occ = dw6 & 0xFFFF;
            if dw6 & (1 << wqcfg::STATE_SHIFT) != 0 {
                assert!(occ <= size, "WQ {wq}: occupancy {occ} > size {size}");
                assert_eq!(st, gensts::ENABLED, "WQ {wq} enabled while device is {st}");
            }
        }
        let s = self.dev.stats();
        let p = self.stats;
        assert!(
            s.submitted >= p.submitted
                && s.dropped >= p.dropped
                && s.completed >= p.completed
                && s.abandoned >= p.abandoned
                && s.swerrs >= p.swerrs,
            "counters went back: {p:?} -> {s:?}"
        );
        self.stats = s;

        let stats = self.hierarchy.vector_layer().stats();
        assert!(stats.routes <= stats.allocated, "{stats:?}");
        let mut gsis = BTreeSet::new();
        let domains = [
            Some(self.dev.msix_domain().clone()),
            self.dev.ims_domain().cloned(),
        ];
        for d in domains.iter().flatten() {
            for v in d.snapshot() {
                assert!(v.deliveries + v.dropped <= v.fires, "{}: {v:?}", d.name());
                if let Some(g) = v.gsi {
                    assert!(gsis.insert(g), "GSI {g} used twice");
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
    }
}

static BASELINE_THREADS: OnceLock<usize> = OnceLock::new();

fuzz_target!(|input: Input| {
    let baseline = *BASELINE_THREADS.get_or_init(threads);
    let mut f = Fixture::new(&input);
    f.check();
    if let Some((wq, size)) = input.preset {
        f.run(&Op::Up { wq, size });
        f.check();
    }
    for op in &input.ops {
        f.run(op);
        f.check();
    }
    // Drop the device with whatever is in flight: the worker must stop and be joined, and
    // every vector the device held goes back.
    let Fixture {
        backend,
        hierarchy,
        dev,
        ..
    } = f;
    drop(dev);
    let stats = hierarchy.vector_layer().stats();
    assert_eq!(
        stats.allocated, 0,
        "vectors leaked after the device went away"
    );
    assert_eq!(stats.routes, 0);
    assert!(backend.irqfds.lock().unwrap().is_empty());
    let now = threads();
    assert!(
        now <= baseline + 4,
        "threads grew from {baseline} to {now}: DSA workers not joined"
    );
});
