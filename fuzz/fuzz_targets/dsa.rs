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
//! - GENSTS is 0, 1 or 3 (never draining); CMDSTS.active (a command waiting for descriptors)
//!   is clear after `wait_idle()`; CMDSTS holds a known error code; INTCAUSE has only defined bits; clearing
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

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use vm_memory::GuestMemoryMmap;

use devices::dsa::spec::{cmd, desc, flag, gensts, intcause, opcode, reg, status, wqcfg};
use devices::dsa::{Dsa, DsaConfig, DsaStats, WQCFG_OFFSET};
use interrupt::RequesterId;
use pci::msix::control as msix_control;
use pci::PciDevice;
use vmm_fuzz::dsa::{
    portal_offset, wq_index, Addr, Bar0Off, Check, CmdCode, Delivery, DescSpec, DsaPort, Operand,
    Shape, RAM_END,
};
use vmm_fuzz::{crc32c, read_mem, threads, write_mem, Layout, Recording, Size, RESERVED_GSIS};

/// Buffers of the checked operations (always in RAM).
const CHECK_SRC: u64 = 0x1_0000;
const CHECK_DST: u64 = 0x4_0000;
const CHECK_REC: u64 = 0x8_0000;
const CHECK_MAX: u64 = 0x3_0000;

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
    rec: Recording,
    mem: GuestMemoryMmap,
    dev: Dsa,
    cfg: DsaConfig,
    stats: DsaStats,
}

impl DsaPort for Fixture {
    fn bar_read(&mut self, bar: usize, off: u64, data: &mut [u8]) {
        self.dev.bar_read(bar, off, data);
    }

    fn bar_write(&mut self, bar: usize, off: u64, data: &[u8]) {
        self.dev.bar_write(bar, off, data);
    }

    fn cfg_read(&mut self, reg: usize) -> u32 {
        self.dev.read_config(reg)
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
}

impl Fixture {
    fn new(input: &Input) -> Self {
        let mem = input.layout.memory(RAM_END);
        let rec = Recording::no_remap(RESERVED_GSIS, vmm_fuzz::KVM_MAX_GSI);
        let cfg = input.shape.config();
        let dev = Dsa::new(&rec.hierarchy, RequesterId::pci(0, 4, 0), mem.clone(), cfg)
            .expect("valid DSA shape");
        let mut f = Self {
            rec,
            mem,
            dev,
            cfg,
            stats: DsaStats::default(),
        };
        // The capability list leads to MSI-X (walked as a guest would).
        f.msix_cap();
        f
    }

    fn write_mem(&self, addr: u64, bytes: &[u8]) {
        write_mem(&self.mem, addr, bytes);
    }

    fn read_mem(&self, addr: u64, len: usize) -> Vec<u8> {
        read_mem(&self.mem, addr, len)
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
        let offset = portal_offset(wq, 0, seed);
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
                let mut b = vec![0xA5u8; size.len(16)];
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
                self.dev.bar_write(0, off, &bytes[..size.len(16)]);
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
                let wq = wq_index(&self.cfg, *wq);
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
                let cfg = self.cfg;
                self.bring_up(&cfg, u64::from(wq % cfg.wqs), u32::from(size % 32) + 1);
            }
            Op::ImsEntry {
                index,
                address,
                data,
                ctrl,
                wide,
            } => {
                self.program_ims(*index % 520, *address, *data, *ctrl, *wide);
            }
            Op::Submit {
                wq,
                page,
                slot,
                desc,
                how,
            } => {
                data_path = true;
                let wq = wq_index(&self.cfg, *wq);
                let offset = portal_offset(wq, *page, *slot);
                self.submit(offset, &desc.bytes(), *how);
            }
            Op::Burst {
                wq,
                page,
                count,
                desc,
            } => {
                data_path = true;
                let wq = wq_index(&self.cfg, *wq);
                let d = desc.bytes();
                for i in 0..=*count {
                    let offset = portal_offset(wq, *page, i);
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
                assert_eq!(
                    sts & (1 << 31),
                    0,
                    "CMDSTS.active after wait_idle: {sts:#x}"
                );
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

        self.rec.check_books(&vmm_fuzz::dsa::domains(&self.dev));
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
    let Fixture { rec, dev, .. } = f;
    drop(dev);
    rec.check_released();
    let now = threads();
    assert!(
        now <= baseline + 4,
        "threads grew from {baseline} to {now}: DSA workers not joined"
    );
});
