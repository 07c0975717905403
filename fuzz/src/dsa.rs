//! The DSA operation vocabulary (register offsets, guest addresses, descriptors, commands,
//! portal deliveries) and a guest-driver helper ([`DsaPort`]) that programs a DSA the way
//! Linux's idxd driver does, over whatever path reaches it (the device directly, or the PCI
//! root's configuration mechanisms and MMIO window).

use arbitrary::Arbitrary;

use devices::dsa::spec::{cmd, cmd_err, desc, flag, gensts, opcode, reg, wqcfg, Command};
use devices::dsa::{
    DsaConfig, GRPCFG_OFFSET, IMS_OFFSET, MSIX_PBA_OFFSET, MSIX_PERM_OFFSET, MSIX_TABLE_OFFSET,
    WQCFG_OFFSET,
};
use pci::config::{command as pci_command, reg as pci_reg};
use pci::msix::control as msix_control;

/// Guest RAM the DSA targets give the device (2 MiB, see [`crate::Layout`]).
pub const RAM_END: u64 = 0x20_0000;
/// The hole of [`crate::Layout::Hole`] in that RAM.
pub const HOLE: (u64, u64) = (RAM_END / 2, RAM_END / 2 + RAM_END / 4);
/// Bytes between two WQs' portals in BAR2.
pub const WQ_STRIDE: u64 = 0x4000;
/// Polls of CMDSTS before a command counts as hung.
const COMMAND_POLLS: usize = 200_000;

#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct Shape {
    wqs: u8,
    engines: u8,
    groups: u8,
    ims: u8,
}

impl Shape {
    pub fn config(self) -> DsaConfig {
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
pub enum Reg {
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
    pub fn offset(self) -> u64 {
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
pub enum Bar0Off {
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
    pub fn get(self) -> u64 {
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
pub enum Addr {
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
    pub fn get(self) -> u64 {
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
pub enum Opcode {
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
    pub fn get(self) -> u8 {
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
pub enum Xfer {
    Zero,
    Small(u16),
    Pages(u8),
    /// 2^n bytes, n <= 31, around the WQ limits.
    Pow2(u8),
    Raw(u32),
}

impl Xfer {
    pub fn get(self) -> u32 {
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
pub enum OpSpecific {
    Zero,
    ExpectedResult(u8),
    Dest2(Addr),
    CrcSeed { seed: u32, addr: Addr },
    Raw([u64; 3]),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct Flags {
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
    pub fn get(self) -> u32 {
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
pub enum DescSpec {
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
    pub fn bytes(self) -> [u8; 64] {
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
pub struct DescFields {
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
    pub fn bytes(self) -> [u8; 64] {
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
pub enum Delivery {
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
pub enum CmdCode {
    Known(u8),
    Raw(u8),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Operand {
    Wq(u8),
    WqSet { bits: u16, base: u8 },
    Handle { index: u16, ims: bool },
    Raw(u32),
}

impl Operand {
    pub fn get(self) -> u32 {
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
pub enum Check {
    Move,
    Fill(u64),
    Compare { differ_at: Option<u16> },
    Crc(u32),
}

pub const KNOWN_CMD_ERRORS: &[u8] = &[
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

/// A path to one DSA function: its BARs and its configuration space. The provided methods
/// are what a guest driver does over that path; [`DsaPort::command`] checks every command's
/// outcome.
pub trait DsaPort {
    /// Reads `data.len()` bytes of BAR `bar` at `off`.
    fn bar_read(&mut self, bar: usize, off: u64, data: &mut [u8]);
    /// Writes `data` to BAR `bar` at `off`.
    fn bar_write(&mut self, bar: usize, off: u64, data: &[u8]);
    /// Reads the configuration dword at `reg` (dword aligned).
    fn cfg_read(&mut self, reg: usize) -> u32;
    /// Writes `data` (dword-contained) to configuration space at `reg`.
    fn cfg_write(&mut self, reg: usize, data: &[u8]);

    /// A 32-bit BAR0 read.
    fn r32(&mut self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.bar_read(0, off, &mut b);
        u32::from_le_bytes(b)
    }

    /// A 64-bit BAR0 read.
    fn r64(&mut self, off: u64) -> u64 {
        let mut b = [0u8; 8];
        self.bar_read(0, off, &mut b);
        u64::from_le_bytes(b)
    }

    /// A 32-bit BAR0 write.
    fn w32(&mut self, off: u64, v: u32) {
        self.bar_write(0, off, &v.to_le_bytes());
    }

    /// A 64-bit BAR0 write.
    fn w64(&mut self, off: u64, v: u64) {
        self.bar_write(0, off, &v.to_le_bytes());
    }

    /// GENSTS.
    fn gensts(&mut self) -> u32 {
        self.r32(reg::GENSTS)
    }

    /// The offset of the MSI-X capability (the DSA always lists one).
    fn msix_cap(&mut self) -> usize {
        crate::find_capability(|r| self.cfg_read(r), crate::cap_id::MSIX)
            .expect("DSA lists an MSI-X capability")
    }

    /// Whether the command register enables bus mastering.
    fn bus_master_on(&mut self) -> bool {
        self.cfg_read(pci_reg::COMMAND) as u16 & pci_command::BUS_MASTER != 0
    }

    /// Sets the command register to memory decode plus (or without) bus mastering.
    fn bus_master(&mut self, on: bool) {
        let v = pci_command::MEMORY | if on { pci_command::BUS_MASTER } else { 0 };
        self.cfg_write(pci_reg::COMMAND, &v.to_le_bytes());
    }

    /// Writes the MSI-X message control word.
    fn msix_ctrl(&mut self, v: u16) {
        let off = self.msix_cap() + 2;
        self.cfg_write(off, &v.to_le_bytes());
    }

    /// Programs MSI-X table entry `i` with four dword writes.
    fn program_msix(&mut self, i: u64, address: u32, data: u32, masked: bool) {
        let base = MSIX_TABLE_OFFSET + i * 16;
        self.w32(base, address);
        self.w32(base + 4, 0);
        self.w32(base + 8, data);
        self.w32(base + 12, u32::from(masked));
    }

    /// Programs IMS entry `index` (any index: beyond the table is ignored by the device).
    fn program_ims(&mut self, index: u16, address: u32, data: u32, ctrl: u32, wide: bool) {
        let base = IMS_OFFSET + u64::from(index) * 16;
        if wide {
            self.w64(base, u64::from(address));
            self.w64(base + 8, u64::from(data) | (u64::from(ctrl) << 32));
        } else {
            self.w32(base, address);
            self.w32(base + 4, 0);
            self.w32(base + 8, data);
            self.w32(base + 12, ctrl);
        }
    }

    /// Runs a command word and waits for it (CMDSTS.active clear, bounded); checks that
    /// CMDSTS holds a known error code and that a successful enable/disable/reset left the
    /// device in the state it names. Returns CMDSTS.
    fn command(&mut self, word: u32) -> u32 {
        self.w32(reg::CMD, word);
        let mut sts = self.r32(reg::CMDSTS);
        if sts == u32::MAX {
            // BAR0 is not decoded on this path (memory decode off): nothing ran.
            return sts;
        }
        let mut polls = 0;
        while sts & (1 << 31) != 0 {
            polls += 1;
            assert!(polls < COMMAND_POLLS, "command {word:#x} never completes");
            std::thread::yield_now();
            sts = self.r32(reg::CMDSTS);
        }
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

    /// Runs command `c` with `operand`.
    fn cmd(&mut self, c: Command, operand: u32) -> u32 {
        self.command(((c as u32) << cmd::CODE_SHIFT) | operand)
    }

    /// Bus mastering and MSI-X on, every MSI-X entry programmed and unmasked.
    fn pci_up(&mut self, cfg: &DsaConfig) {
        self.bus_master(true);
        self.msix_ctrl(msix_control::ENABLE);
        for i in 0..cfg.msix_vectors() as u64 {
            self.program_msix(i, 0xFEE0_0000, 0x40 + i as u32, false);
        }
    }

    /// Writes WQCFG of `wq` and adds it (with `engines` and `flags`) to group `group`.
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

    /// Linux's bring-up of one WQ: PCI up, the WQ (`size` entries, dedicated, 2 MiB
    /// transfers, batches of 32) in group 0 with every engine, device and WQ enabled.
    fn bring_up(&mut self, cfg: &DsaConfig, wq: u64, size: u32) {
        self.pci_up(cfg);
        let engines = if cfg.engines >= 64 {
            u64::MAX
        } else {
            (1u64 << cfg.engines) - 1
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

    /// Whether WQ `wq` is enabled (WQCFG state).
    fn wq_enabled(&mut self, wq: u64) -> bool {
        self.r32(WQCFG_OFFSET + wq * 32 + 24) & (1 << wqcfg::STATE_SHIFT) != 0
    }

    /// Occupancy of WQ `wq`.
    fn occupancy(&mut self, wq: u64) -> u32 {
        self.r32(WQCFG_OFFSET + wq * 32 + 24) & 0xFFFF
    }

    /// Delivers descriptor `d` to the portal at BAR2 `offset` in the manner `how`.
    fn submit(&mut self, offset: u64, d: &[u8; 64], how: Delivery) {
        match how {
            Delivery::Whole => self.bar_write(2, offset, d),
            Delivery::Qwords(seed) => {
                let mut order = [0usize, 1, 2, 3, 4, 5, 6, 7];
                let mut s = seed;
                for i in (1..8).rev() {
                    order.swap(i, (s % (i as u32 + 1)) as usize);
                    s /= i as u32 + 1;
                }
                for k in order {
                    self.bar_write(2, offset + k as u64 * 8, &d[k * 8..k * 8 + 8]);
                }
            }
            Delivery::Pieces(ks) => {
                for k in ks {
                    let k = usize::from(k % 8);
                    self.bar_write(2, offset + k as u64 * 8, &d[k * 8..k * 8 + 8]);
                }
            }
            Delivery::Misaligned(m) => {
                let m = u64::from(m % 63) + 1;
                self.bar_write(2, offset + m, d);
            }
        }
    }
}

/// WQ index for `wq`: mostly real WQs, sometimes one past the end.
pub fn wq_index(cfg: &DsaConfig, wq: u8) -> u64 {
    if wq == 0xFF {
        u64::from(cfg.wqs)
    } else {
        u64::from(wq % cfg.wqs)
    }
}

/// BAR2 offset of portal slot `slot` of page `page` of WQ `wq`.
pub fn portal_offset(wq: u64, page: u8, slot: u8) -> u64 {
    wq * WQ_STRIDE + u64::from(page % 4) * 0x1000 + u64::from(slot % 64) * 64
}

/// The interrupt domains of `dev` (MSI-X, and IMS when it has one).
pub fn domains(dev: &devices::dsa::Dsa) -> Vec<std::sync::Arc<interrupt::DeviceDomain>> {
    let mut v = vec![dev.msix_domain().clone()];
    v.extend(dev.ims_domain().cloned());
    v
}
