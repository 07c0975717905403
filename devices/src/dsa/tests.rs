//! Unit tests of the DSA model, grouped by feature, on a recording interrupt hierarchy and
//! 4 MiB of guest RAM at address 0.

use std::sync::Arc;

use interrupt::{InterruptHierarchy, KvmVectorLayer, NoRemap, RecordingBackend, RequesterId};
use pci::config::{command as pci_command, reg as pci_reg};
use pci::msix::control as msix_control;
use pci::PciDevice;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::engine::Crc32c;
use super::spec::*;
use super::*;

const RAM: u64 = 4 << 20;
const REC: u64 = 0x1000;
const SRC: u64 = 0x10_0000;
const DST: u64 = 0x20_0000;

struct Fx {
    _b: Arc<RecordingBackend>,
    _h: Arc<InterruptHierarchy>,
    mem: GuestMemoryMmap,
    dev: Dsa,
}

fn fx_with(cfg: DsaConfig) -> Fx {
    let b = Arc::new(RecordingBackend::default());
    let h = InterruptHierarchy::new(
        Arc::new(KvmVectorLayer::new(b.clone(), 24, 4096)),
        Arc::new(NoRemap),
    );
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap();
    let dev = Dsa::new(&h, RequesterId::pci(0, 4, 0), mem.clone(), cfg).unwrap();
    Fx {
        _b: b,
        _h: h,
        mem,
        dev,
    }
}

fn fx() -> Fx {
    fx_with(DsaConfig::default())
}

/// Without IMS: no interrupt handles, int_handle is an MSI-X index.
fn fx_msix_only() -> Fx {
    fx_with(DsaConfig {
        ims: 0,
        ..Default::default()
    })
}

fn cmd_word(c: Command, operand: u32, int_req: bool) -> u32 {
    ((c as u32) << cmd::CODE_SHIFT) | operand | if int_req { cmd::INT_REQ } else { 0 }
}

fn wq_bit(wq: u32) -> u32 {
    (1 << (wq % 16)) | ((wq / 16) << 16)
}

impl Fx {
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
    /// Runs a command with int_req and returns CMDSTS.
    fn cmd(&mut self, c: Command, operand: u32) -> u32 {
        self.w32(reg::CMD, cmd_word(c, operand, true));
        self.r32(reg::CMDSTS)
    }
    fn bus_master(&mut self, on: bool) {
        let v = pci_command::MEMORY | if on { pci_command::BUS_MASTER } else { 0 };
        self.dev.write_config(pci_reg::COMMAND, &v.to_le_bytes());
    }
    fn msix_ctrl(&mut self, v: u16) {
        let off = self.dev.msix_cap + 2;
        self.dev.write_config(off, &v.to_le_bytes());
    }
    fn program_msix(&mut self, i: u64, vector: u32, masked: bool) {
        let base = MSIX_TABLE_OFFSET + i * 16;
        self.w32(base, 0xfee0_0000);
        self.w32(base + 4, 0);
        self.w32(base + 8, vector);
        self.w32(base + 12, u32::from(masked));
    }
    fn msix_delivered(&self, i: usize) -> u64 {
        self.dev
            .msix_domain()
            .vector_snapshot(i)
            .unwrap()
            .deliveries
    }
    fn ims_snapshot(&self, i: usize) -> interrupt::VectorSnapshot {
        self.dev.ims_domain().unwrap().vector_snapshot(i).unwrap()
    }
    /// Bus master, MSI-X enabled with every vector programmed and unmasked.
    fn pci_up(&mut self) {
        self.bus_master(true);
        self.msix_ctrl(msix_control::ENABLE);
        for i in 0..self.dev.cfg.msix_vectors() as u64 {
            self.program_msix(i, 0x40 + i as u32, false);
        }
    }
    fn wqcfg(&mut self, wq: u64, dw: u64, v: u32) {
        self.w32(WQCFG_OFFSET + wq * 32 + dw * 4, v);
    }
    /// What Linux writes for a dedicated kernel WQ of `size` entries in group 0.
    fn configure_wq(&mut self, wq: u64, size: u32) {
        self.wqcfg(wq, 0, size);
        self.wqcfg(wq, 2, wqcfg::MODE_DEDICATED | (10 << 4) | wqcfg::PRIV);
        self.wqcfg(wq, 3, 21 | (5 << 5));
        let bits = self.r64(GRPCFG_OFFSET) | (1 << wq);
        self.w64(GRPCFG_OFFSET, bits);
        self.w64(GRPCFG_OFFSET + 32, 1);
        self.w64(GRPCFG_OFFSET + 40, 0x9 | (64 << 20));
    }
    /// PCI up, WQ 0 of size 16 configured, device and WQ enabled.
    fn up(&mut self) {
        self.pci_up();
        self.configure_wq(0, 16);
        assert_eq!(self.cmd(Command::EnableDevice, 0), 0);
        assert_eq!(self.cmd(Command::EnableWq, 0), 0);
    }
    fn submit(&mut self, wq: u64, page: u64, d: &[u8; 64]) {
        self.dev.bar_write(2, wq * 0x4000 + page * 0x1000, d);
    }
    fn run(&mut self, d: &[u8; 64]) -> [u8; 32] {
        self.submit(0, 1, d);
        self.dev.wait_idle();
        self.record(REC)
    }
    fn record(&self, at: u64) -> [u8; 32] {
        let mut r = [0u8; 32];
        self.mem.read_slice(&mut r, GuestAddress(at)).unwrap();
        r
    }
    fn fill(&self, at: u64, data: &[u8]) {
        self.mem.write_slice(data, GuestAddress(at)).unwrap();
    }
    fn bytes(&self, at: u64, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.mem.read_slice(&mut v, GuestAddress(at)).unwrap();
        v
    }
    fn swerr(&mut self) -> [u64; 4] {
        [0, 8, 16, 24].map(|o| self.r64(reg::SWERR + o))
    }
}

/// Builds a descriptor.
#[derive(Clone, Copy)]
struct D([u8; 64]);

impl D {
    fn new(op: u8, flags: u32) -> Self {
        let mut d = [0u8; 64];
        d[4..8].copy_from_slice(&(flags | (u32::from(op) << 24)).to_le_bytes());
        D(d).u64(desc::COMPLETION_ADDR, REC)
    }
    fn u64(mut self, off: usize, v: u64) -> Self {
        self.0[off..off + 8].copy_from_slice(&v.to_le_bytes());
        self
    }
    fn u32(mut self, off: usize, v: u32) -> Self {
        self.0[off..off + 4].copy_from_slice(&v.to_le_bytes());
        self
    }
    fn handle(mut self, h: u16) -> Self {
        self.0[desc::INT_HANDLE..desc::INT_HANDLE + 2].copy_from_slice(&h.to_le_bytes());
        self
    }
    fn io(self, src: u64, dst: u64, size: u32) -> Self {
        self.u64(desc::SRC, src)
            .u64(desc::DST, dst)
            .u32(desc::SIZE_FIELD, size)
    }
}

const STD: u32 = flag::CRAV | flag::RCR | flag::RCI;

fn completed(r: &[u8; 32]) -> u32 {
    u32::from_le_bytes(r[4..8].try_into().unwrap())
}
fn fault_addr(r: &[u8; 32]) -> u64 {
    u64::from_le_bytes(r[8..16].try_into().unwrap())
}
fn op_specific(r: &[u8; 32]) -> u32 {
    u32::from_le_bytes(r[16..20].try_into().unwrap())
}

mod registers {
    use super::*;

    #[test]
    fn identity_bars_and_msix_table_size() {
        let f = fx();
        let c = f.dev.config();
        assert_eq!(c.u16_at(0), 0x8086);
        assert_eq!(c.u16_at(2), 0x0b25);
        assert_eq!(c.u32_at(8) >> 8, 0x08_8000);
        assert_eq!(c.bar(0).unwrap().size, 0x1_0000);
        assert_eq!(c.bar(0).unwrap().kind, pci::BarKind::Memory64);
        assert_eq!(c.bar(2).unwrap().size, 4 * 0x4000);
        let cap = f.dev.msix_cap;
        assert_eq!(c.u16_at(cap + 2) & 0x7ff, 4); // 5 vectors
        assert_eq!(c.u32_at(cap + 4), MSIX_TABLE_OFFSET as u32);
        assert_eq!(c.u32_at(cap + 8), MSIX_PBA_OFFSET as u32);
    }

    #[test]
    fn capability_registers_satisfy_checklist_a() {
        let mut f = fx();
        assert_eq!(f.r32(reg::VERSION), 0x100);
        let g = f.r64(reg::GENCAP);
        assert_ne!(g & gencap::CMD_CAP, 0);
        assert_ne!(g & gencap::CONFIG_EN, 0);
        assert_eq!(g & gencap::BLOCK_ON_FAULT, 0);
        assert_eq!((g >> 13) & 3, 1, "event log with 64-byte entries");
        let xfer = (g >> 16) & 0x1f;
        let batch = (g >> 21) & 0xf;
        assert!((21..=31).contains(&xfer) && (5..=10).contains(&batch));
        assert_eq!((g >> 25) & 0x3f, 1, "max_ims_mult");
        let wq = f.r64(reg::WQCAP);
        assert_eq!(wq & 0xffff, 128);
        assert_eq!((wq >> 16) & 0xff, 4);
        assert_eq!((wq >> 24) & 0xf, 0);
        assert_ne!(wq & wqcap::DEDICATED, 0);
        assert_eq!(wq & wqcap::SHARED, 0);
        let grp = f.r64(reg::GRPCAP);
        assert_eq!(grp & 0xff, 4);
        assert_ne!((grp >> 8) & 0xff, 0);
        assert_eq!(f.r64(reg::ENGCAP), 4);
        let op = f.r64(reg::OPCAP);
        for bit in [0, 1, 2, 3] {
            assert_ne!(op & (1 << bit), 0);
        }
        assert_eq!(f.r64(reg::OPCAP + 8), 0);
        let t = f.r64(reg::TABLE_OFFSETS);
        assert_eq!((t & 0xffff) * 0x100, GRPCFG_OFFSET);
        assert_eq!(((t >> 16) & 0xffff) * 0x100, WQCFG_OFFSET);
        assert_eq!(((t >> 32) & 0xffff) * 0x100, MSIX_PERM_OFFSET);
        assert_eq!(((t >> 48) & 0xffff) * 0x100, IMS_OFFSET);
        assert_eq!(f.r64(reg::TABLE_OFFSETS + 8), 0);
        assert_eq!(f.r32(reg::CMDCAP), 0x7ffe);
        assert_eq!(f.r32(reg::GENSTS), 0);
        // 32-bit halves of a 64-bit register read the same bits.
        assert_eq!(
            u64::from(f.r32(reg::GENCAP + 4)) << 32 | u64::from(f.r32(reg::GENCAP)),
            g
        );
    }

    #[test]
    fn without_ims_no_handle_commands_and_no_ims_table() {
        let mut f = fx_msix_only();
        assert_eq!(f.r32(reg::CMDCAP), 0x1ffe);
        assert_eq!((f.r64(reg::GENCAP) >> 25) & 0x3f, 0);
        assert_eq!(f.r64(reg::TABLE_OFFSETS) >> 48, 0);
        assert!(f.dev.ims_domain().is_none());
        assert_eq!(f.cmd(Command::RequestIntHandle, 1) & 0xff, 0x01);
    }

    #[test]
    fn config_validation_rejects_out_of_range_shapes() {
        let ok = DsaConfig::default();
        assert!(ok.validate().is_ok());
        for bad in [
            DsaConfig { wqs: 0, ..ok },
            DsaConfig { wqs: 65, ..ok },
            DsaConfig { engines: 0, ..ok },
            DsaConfig { groups: 17, ..ok },
            DsaConfig { ims: 100, ..ok },
            DsaConfig {
                ims: 64 * 256,
                ..ok
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        let big = DsaConfig { ims: MAX_IMS, ..ok };
        assert!(big.validate().is_ok());
        assert!(big.bar0_size().is_power_of_two());
        assert!(big.bar0_size() >= IMS_OFFSET + u64::from(MAX_IMS) * 16);
    }

    #[test]
    fn wqcfg_and_grpcfg_read_back_with_32_and_64_bit_accesses() {
        let mut f = fx();
        f.w32(WQCFG_OFFSET + 32 + 8, 0xffff_ffff);
        assert_eq!(f.r32(WQCFG_OFFSET + 32 + 8), 0x3fff_ffff);
        f.w64(WQCFG_OFFSET + 32, 0x0000_0003_0000_0010);
        assert_eq!(f.r64(WQCFG_OFFSET + 32), 0x0000_0003_0000_0010);
        f.w32(WQCFG_OFFSET + 32 + 24, 0xffff_ffff);
        assert_eq!(f.r32(WQCFG_OFFSET + 32 + 24), 0, "dword 6 is read-only");
        f.w64(GRPCFG_OFFSET + 64 + 32, 0xf);
        assert_eq!(f.r64(GRPCFG_OFFSET + 64 + 32), 0xf);
        f.w32(GRPCFG_OFFSET + 64 + 4, 0x8000_0000);
        assert_eq!(f.r32(GRPCFG_OFFSET + 64 + 4), 0x8000_0000);
        f.w64(GRPCFG_OFFSET + 64 + 40, u64::MAX);
        assert_eq!(f.r64(GRPCFG_OFFSET + 64 + 40), grpcfg::FLAGS_MASK);
        f.w64(GRPCFG_OFFSET + 64 + 48, u64::MAX);
        assert_eq!(f.r64(GRPCFG_OFFSET + 64 + 48), 0);
    }

    #[test]
    fn device_reset_clears_configuration() {
        let mut f = fx();
        f.w32(WQCFG_OFFSET + 8, 0x21);
        f.w64(GRPCFG_OFFSET, 1);
        f.w32(reg::GENCFG, 3 | gencfg::EVL_EN);
        f.w32(reg::GENCTRL, 7);
        f.w32(MSIX_PERM_OFFSET + 8, 4);
        f.w64(reg::EVLCFG, 0x1000);
        f.w64(reg::EVLCFG + 8, 64);
        f.w32(reg::EVLSTATUS, 5);
        f.w32(reg::CMD, cmd_word(Command::ResetDevice, 0, false));
        assert_eq!(f.r32(reg::CMDSTS), 0);
        for off in [
            WQCFG_OFFSET + 8,
            GRPCFG_OFFSET,
            reg::GENCFG,
            reg::GENCTRL,
            MSIX_PERM_OFFSET + 8,
            reg::EVLCFG,
            reg::EVLCFG + 8,
            reg::EVLSTATUS,
        ] {
            assert_eq!(f.r32(off), 0, "{off:#x}");
        }
    }

    #[test]
    fn intcause_is_write_one_to_clear_and_swerr_acks_low_bits() {
        let mut f = fx();
        f.pci_up();
        f.cmd(Command::DrainAll, 0);
        assert_eq!(f.r32(reg::INTCAUSE), intcause::CMD);
        f.w32(reg::INTCAUSE, 0);
        assert_eq!(f.r32(reg::INTCAUSE), intcause::CMD);
        f.w32(reg::INTCAUSE, intcause::CMD);
        assert_eq!(f.r32(reg::INTCAUSE), 0);
        f.dev.shared.report_swerr(shared::SwError {
            code: 0x10,
            ..Default::default()
        });
        f.dev.shared.report_swerr(shared::SwError::default());
        assert_eq!(f.r64(reg::SWERR) & 3, 3);
        f.w64(reg::SWERR, 3);
        assert_eq!(f.r64(reg::SWERR) & 3, 0);
        assert_eq!((f.r64(reg::SWERR) >> 8) & 0xff, 0x10);
    }

    #[test]
    fn garbage_accesses_of_any_size_and_offset_are_harmless() {
        let mut f = fx();
        f.up();
        for bar in [0usize, 1, 2, 3, 4, 5, 9] {
            for off in [
                0u64,
                1,
                3,
                0x9f,
                0xa0,
                0xa1,
                0x3fff,
                0x4001,
                0xffff,
                0x1_0000,
                u64::MAX - 3,
            ] {
                for len in [1usize, 2, 3, 4, 8, 16, 63, 64, 128] {
                    let mut b = vec![0x5au8; len];
                    f.dev.bar_read(bar, off, &mut b);
                    if !(bar == 0 && (0xa0..0xa8).contains(&off)) {
                        f.dev.bar_write(bar, off, &vec![0xffu8; len]);
                    }
                }
            }
        }
        let mut b = [0xaau8; 8];
        f.dev.bar_read(2, 0x1000, &mut b);
        assert_eq!(b, [0; 8], "portal reads are constant");
    }
}

mod commands {
    use super::*;

    #[test]
    fn probe_reset_completes_with_active_clear_and_no_interrupt() {
        let mut f = fx();
        f.pci_up();
        f.w32(reg::CMD, 0x0050_0000);
        assert_eq!(f.r32(reg::CMDSTS) & CMDSTS_ACTIVE, 0);
        assert_eq!(f.r32(reg::INTCAUSE), 0);
        assert_eq!(f.msix_delivered(0), 0);
    }

    #[test]
    fn int_req_sets_cmdsts_then_intcause_and_fires_vector_0() {
        let mut f = fx();
        f.pci_up();
        f.w32(reg::CMD, cmd_word(Command::EnableWq, 9, true));
        assert_eq!(f.r32(reg::CMDSTS), 0x02);
        assert_eq!(f.r32(reg::INTCAUSE), intcause::CMD);
        assert_eq!(f.msix_delivered(0), 1);
    }

    #[test]
    fn unknown_commands_are_invalid() {
        let mut f = fx();
        for code in [0u32, 15, 16, 31] {
            f.w32(reg::CMD, (code << 20) | cmd::INT_REQ);
            assert_eq!(f.r32(reg::CMDSTS), 0x01, "code {code}");
        }
    }

    #[test]
    fn enable_device_error_codes() {
        let mut f = fx();
        f.configure_wq(0, 16);
        assert_eq!(f.cmd(Command::EnableDevice, 0), 0x12, "bus master off");
        f.pci_up();
        f.w32(reg::GENCFG, gencfg::EVL_EN);
        assert_eq!(
            f.cmd(Command::EnableDevice, 0),
            0x11,
            "event log of 0 entries"
        );
        f.w32(reg::GENCFG, 65);
        assert_eq!(f.cmd(Command::EnableDevice, 0), 0x11, "rdbuf_limit over 64");
        f.w32(reg::GENCFG, 0);
        f.wqcfg(1, 0, 200);
        assert_eq!(f.cmd(Command::EnableDevice, 0), 0x14);
        f.wqcfg(1, 0, 0);
        f.w64(GRPCFG_OFFSET, 1 | (1 << 4));
        assert_eq!(f.cmd(Command::EnableDevice, 0), 0x15, "WQ 4 does not exist");
        f.w64(GRPCFG_OFFSET, 1);
        f.w64(GRPCFG_OFFSET + 32, 1 << 4);
        assert_eq!(
            f.cmd(Command::EnableDevice, 0),
            0x15,
            "engine 4 does not exist"
        );
        f.w64(GRPCFG_OFFSET + 32, 1);
        f.w64(GRPCFG_OFFSET + 64, 1);
        f.w64(GRPCFG_OFFSET + 64 + 32, 2);
        assert_eq!(f.cmd(Command::EnableDevice, 0), 0x16, "WQ 0 in two groups");
        f.w64(GRPCFG_OFFSET + 64, 2);
        f.w64(GRPCFG_OFFSET + 64 + 32, 0);
        assert_eq!(
            f.cmd(Command::EnableDevice, 0),
            0x17,
            "group 1 has a WQ, no engine"
        );
        f.w64(GRPCFG_OFFSET + 64, 0);
        f.w64(GRPCFG_OFFSET + 40, 200 << 20);
        assert_eq!(
            f.cmd(Command::EnableDevice, 0),
            0x18,
            "more read buffers than exist"
        );
        f.w64(GRPCFG_OFFSET + 40, 64 << 20);
        assert_eq!(f.cmd(Command::EnableDevice, 0), 0);
        assert_eq!(f.r32(reg::GENSTS), gensts::ENABLED);
        assert_eq!(f.cmd(Command::EnableDevice, 0), 0x10);
    }

    #[test]
    fn enable_wq_error_codes() {
        let mut f = fx();
        f.pci_up();
        f.configure_wq(0, 16);
        assert_eq!(f.cmd(Command::EnableWq, 0), 0x20, "device not enabled");
        f.configure_wq(1, 16);
        assert_eq!(f.cmd(Command::EnableDevice, 0), 0);
        assert_eq!(f.cmd(Command::EnableWq, 4), 0x02);
        assert_eq!(f.cmd(Command::EnableWq, 2), 0x22, "size 0, no group");
        let base = [16, 0, wqcfg::MODE_DEDICATED | (10 << 4), 21 | (5 << 5)];
        let cases: [(usize, u32, u32); 6] = [
            (2, wqcfg::MODE_DEDICATED, 0x23),
            (2, 10 << 4, 0x24),
            (2, wqcfg::MODE_DEDICATED | (10 << 4) | wqcfg::BOF, 0x25),
            (2, wqcfg::MODE_DEDICATED | (10 << 4) | wqcfg::PASID_EN, 0x26),
            (3, 21 | (6 << 5), 0x27),
            (3, 22 | (5 << 5), 0x28),
        ];
        for (dw, v, code) in cases {
            for (i, b) in base.iter().enumerate() {
                f.wqcfg(1, i as u64, *b);
            }
            f.wqcfg(1, dw as u64, v);
            assert_eq!(f.cmd(Command::EnableWq, 1), code, "{code:#x}");
        }
        for (i, b) in base.iter().enumerate() {
            f.wqcfg(1, i as u64, *b);
        }
        assert_eq!(f.cmd(Command::EnableWq, 1), 0);
        assert_eq!(f.r32(WQCFG_OFFSET + 32 + 24) >> 30, 1, "wq_state enabled");
        assert_eq!(f.cmd(Command::EnableWq, 1), 0x21);
    }

    #[test]
    fn wq_commands_error_codes() {
        let mut f = fx();
        f.pci_up();
        f.configure_wq(0, 16);
        for c in [
            Command::DisableWq,
            Command::DrainWq,
            Command::AbortWq,
            Command::ResetWq,
        ] {
            assert_eq!(f.cmd(c, wq_bit(0)), 0x32, "{c:?} with device disabled");
            assert_eq!(f.cmd(c, wq_bit(4)), 0x02, "{c:?} WQ 4");
            assert_eq!(f.cmd(c, 0), 0x02, "{c:?} empty set");
            assert_eq!(f.cmd(c, 1 << 16 | 1), 0x02, "{c:?} WQ 16");
        }
        assert_eq!(f.cmd(Command::DisableDevice, 0), 0x31);
        assert_eq!(f.cmd(Command::EnableDevice, 0), 0);
        assert_eq!(f.cmd(Command::DisableWq, wq_bit(0)), 0x32, "WQ not enabled");
        assert_eq!(f.cmd(Command::EnableWq, 0), 0);
        for c in [
            Command::DrainWq,
            Command::AbortWq,
            Command::DrainAll,
            Command::AbortAll,
        ] {
            assert_eq!(f.cmd(c, wq_bit(0)), 0, "{c:?}");
        }
        assert_eq!(f.cmd(Command::DrainPasid, 5), 0);
        assert_eq!(f.cmd(Command::AbortPasid, 5), 0);
        assert_eq!(f.cmd(Command::DisableWq, wq_bit(0)), 0);
        assert_eq!(f.r32(WQCFG_OFFSET + 24) >> 30, 0);
        assert_eq!(f.r32(WQCFG_OFFSET), 16, "disable keeps the configuration");
        assert_eq!(f.cmd(Command::EnableWq, 0), 0);
        assert_eq!(f.cmd(Command::ResetWq, wq_bit(0)), 0);
        assert_eq!(f.r32(WQCFG_OFFSET), 0, "reset clears the configuration");
        assert_eq!(f.r32(WQCFG_OFFSET + 8), 0);
        assert_eq!(f.cmd(Command::DisableDevice, 0), 0);
        assert_eq!(f.r32(reg::GENSTS), 0);
    }

    #[test]
    fn config_writes_are_ignored_while_enabled() {
        let mut f = fx();
        f.up();
        f.w64(GRPCFG_OFFSET + 32, 0xf);
        assert_eq!(f.r64(GRPCFG_OFFSET + 32), 1, "GRPCFG frozen while enabled");
        f.w32(WQCFG_OFFSET + 8, 0);
        assert_ne!(f.r32(WQCFG_OFFSET + 8), 0, "enabled WQ's WQCFG frozen");
        f.w32(reg::GENCFG, 5);
        assert_eq!(f.r32(reg::GENCFG), 0);
        // A disabled WQ stays configurable (Linux sets priv before enabling the WQ).
        f.wqcfg(1, 2, wqcfg::PRIV);
        assert_eq!(f.r32(WQCFG_OFFSET + 32 + 8), wqcfg::PRIV);
    }

    #[test]
    fn bus_master_off_while_enabled_halts_until_reset() {
        let mut f = fx();
        f.up();
        f.w32(reg::GENCTRL, 3);
        f.bus_master(false);
        assert_eq!(f.r32(reg::GENSTS) & 3, gensts::HALT);
        assert_ne!(f.r32(reg::INTCAUSE) & intcause::HALT, 0);
        assert_eq!(f.cmd(Command::EnableWq, 0), 0x03);
        f.bus_master(true);
        f.w32(reg::CMD, cmd_word(Command::ResetDevice, 0, false));
        assert_eq!(f.r32(reg::GENSTS), 0);
    }
}

/// The event log: advertised and configurable, never written (see `regs::EventLog`).
mod event_log {
    use super::*;

    const LOG: u64 = 0x30_0000;

    /// What idxd 6.12's `idxd_device_evl_setup` does before Enable Device: EVLCFG as two
    /// `iowrite64_lo_hi` (four dword writes), GENCTRL |= evl_int_en, GENCFG |= evl_en.
    fn linux_evl_setup(f: &mut Fx, size: u16) {
        let cfg = [LOG, u64::from(size)];
        for (i, q) in cfg.iter().enumerate() {
            let off = reg::EVLCFG + 8 * i as u64;
            f.w32(off, *q as u32);
            f.w32(off + 4, (*q >> 32) as u32);
        }
        let ctrl = f.r32(reg::GENCTRL);
        f.w32(reg::GENCTRL, ctrl | genctrl::EVL_INT_EN);
        let cfg = f.r32(reg::GENCFG);
        f.w32(reg::GENCFG, cfg | gencfg::EVL_EN);
    }

    /// What Debian 6.12.95's `idxd_device_evl_free` does after Disable Device and Reset
    /// Device: GENCFG = 0, GENCTRL &= !evl_int_en, EVLCFG = 0.
    fn linux_evl_free(f: &mut Fx) {
        f.w32(reg::GENCFG, 0);
        let ctrl = f.r32(reg::GENCTRL);
        f.w32(reg::GENCTRL, ctrl & !genctrl::EVL_INT_EN);
        for off in [0, 4, 8, 12] {
            f.w32(reg::EVLCFG + off, 0);
        }
    }

    #[test]
    fn evlcfg_reads_back_defined_bits_with_32_and_64_bit_accesses() {
        let mut f = fx();
        f.w64(reg::EVLCFG, u64::MAX);
        assert_eq!(f.r64(reg::EVLCFG), evlcfg::QW0_MASK);
        assert_eq!(f.r64(reg::EVLCFG), 0xffff_ffff_ffff_f003);
        f.w64(reg::EVLCFG + 8, u64::MAX);
        assert_eq!(f.r64(reg::EVLCFG + 8), 0xf_ffff_ffff, "size and PASID only");
        f.w32(reg::EVLCFG + 4, 0x12);
        assert_eq!(f.r32(reg::EVLCFG), 0xffff_f003, "low half untouched");
        assert_eq!(f.r32(reg::EVLCFG + 4), 0x12);
        f.w32(reg::EVLCFG + 8, 0x40);
        assert_eq!(f.r64(reg::EVLCFG + 8), 0xf_0000_0040);
    }

    #[test]
    fn evlstatus_head_is_rw_tail_ro_int_pending_w1c() {
        let mut f = fx();
        assert_eq!(f.r64(reg::EVLSTATUS), 0);
        f.w64(reg::EVLSTATUS, !evlstatus::INT_PENDING);
        assert_eq!(f.r64(reg::EVLSTATUS), 0xffff, "only the head is writable");
        f.w32(reg::EVLSTATUS, 0x1_0005);
        assert_eq!(f.r32(reg::EVLSTATUS), 5);
        assert_eq!(f.r32(reg::EVLSTATUS + 4), 0, "tail");
        f.dev.regs.evl.int_pending = true;
        f.dev.regs.evl.tail = 7;
        assert_eq!(
            f.r64(reg::EVLSTATUS),
            evlstatus::INT_PENDING | (7 << 32) | 5
        );
        // idxd's process_evl_entries: clear int_pending through the upper dword first.
        f.w32(reg::EVLSTATUS + 4, 0);
        assert!(f.dev.regs.evl.int_pending, "writing 0 keeps it");
        f.w32(reg::EVLSTATUS + 4, (evlstatus::INT_PENDING >> 32) as u32);
        assert_eq!(f.r64(reg::EVLSTATUS), (7 << 32) | 5);
    }

    #[test]
    fn genctrl_evl_int_en_and_intcause_evl_bit_are_defined() {
        let mut f = fx();
        f.w32(reg::GENCTRL, u32::MAX);
        assert_eq!(f.r32(reg::GENCTRL), 0x7);
        f.dev.shared.lock_errors().intcause = intcause::EVL | intcause::CMD;
        f.w32(reg::INTCAUSE, intcause::EVL);
        assert_eq!(f.r32(reg::INTCAUSE), intcause::CMD);
        f.w32(reg::GENCFG, u32::MAX);
        assert_eq!(
            f.r32(reg::GENCFG),
            0x30ff,
            "rdbuf_limit, user_int_en, evl_en"
        );
    }

    #[test]
    fn enable_device_checks_the_event_log_configuration() {
        let mut f = fx();
        f.pci_up();
        f.configure_wq(0, 16);
        f.w32(reg::GENCFG, gencfg::EVL_EN);
        assert_eq!(f.cmd(Command::EnableDevice, 0), 0x11, "size 0");
        linux_evl_setup(&mut f, evlcfg::SIZE_MIN - 1);
        assert_eq!(f.cmd(Command::EnableDevice, 0), 0x11, "size 63");
        linux_evl_setup(&mut f, evlcfg::SIZE_MIN);
        f.w32(reg::EVLCFG, (LOG | evlcfg::PASID_EN) as u32);
        assert_eq!(
            f.cmd(Command::EnableDevice, 0),
            0x13,
            "PASID without PASID cap"
        );
        // evl_en clear: EVLCFG is not looked at.
        f.w32(reg::GENCFG, 0);
        assert_eq!(f.cmd(Command::EnableDevice, 0), 0);
        assert_eq!(f.cmd(Command::DisableDevice, 0), 0);
        linux_evl_setup(&mut f, 0xffff);
        f.w32(reg::EVLSTATUS, 9);
        assert_eq!(f.cmd(Command::EnableDevice, 0), 0);
        assert_eq!(f.r64(reg::EVLSTATUS), 0, "the log starts empty");
    }

    #[test]
    fn linux_bind_unbind_rebind_cycle() {
        let mut f = fx();
        f.pci_up();
        f.w32(reg::CMD, cmd_word(Command::ResetDevice, 0, false));
        f.w32(reg::GENCTRL, genctrl::SOFTERR_INT_EN | genctrl::HALT_INT_EN);
        for round in 0..2 {
            // bind dsa0: configure, evl setup, enable device; bind wq0.0: enable WQ
            f.configure_wq(0, 16);
            linux_evl_setup(&mut f, evlcfg::SIZE_MIN);
            assert_eq!(f.r64(reg::EVLCFG), LOG, "round {round}");
            assert_eq!(f.r64(reg::EVLCFG + 8), 64);
            assert_ne!(f.r32(reg::GENCTRL) & genctrl::EVL_INT_EN, 0);
            assert_eq!(f.r32(reg::GENCFG), gencfg::EVL_EN);
            assert_eq!(f.cmd(Command::EnableDevice, 0), 0, "round {round}");
            assert_eq!(f.r32(reg::GENSTS), gensts::ENABLED);
            assert_eq!(f.cmd(Command::EnableWq, 0), 0);
            // Frozen while enabled.
            f.w64(reg::EVLCFG, 0x9000);
            f.w64(reg::EVLCFG + 8, 0x80);
            assert_eq!(f.r64(reg::EVLCFG), LOG);
            assert_eq!(f.r64(reg::EVLCFG + 8), 64);
            f.w32(reg::GENCFG, 0);
            assert_eq!(f.r32(reg::GENCFG), gencfg::EVL_EN);
            // unbind: reset WQ, disable device, reset device, evl free
            assert_eq!(f.cmd(Command::ResetWq, wq_bit(0)), 0);
            assert_eq!(f.cmd(Command::DisableDevice, 0), 0);
            assert_eq!(f.r32(reg::GENSTS), gensts::DISABLED);
            assert_eq!(f.cmd(Command::ResetDevice, 0), 0);
            linux_evl_free(&mut f);
            for off in [reg::GENCFG, reg::EVLCFG, reg::EVLCFG + 8, reg::EVLSTATUS] {
                assert_eq!(f.r64(off), 0, "{off:#x} after unbind");
            }
            assert_eq!(f.r32(reg::GENCTRL), 0);
        }
    }

    #[test]
    fn errors_still_go_to_swerr_with_the_event_log_enabled() {
        let mut f = fx_msix_only();
        f.pci_up();
        f.configure_wq(0, 16);
        linux_evl_setup(&mut f, evlcfg::SIZE_MIN);
        f.w32(reg::GENCTRL, genctrl::SOFTERR_INT_EN | genctrl::EVL_INT_EN);
        assert_eq!(f.cmd(Command::EnableDevice, 0), 0);
        assert_eq!(f.cmd(Command::EnableWq, 0), 0);
        f.w32(reg::INTCAUSE, u32::MAX);
        f.fill(LOG, &[0xa5; 64 * 64]);
        f.run(
            &D::new(opcode::NOOP, STD)
                .u64(desc::COMPLETION_ADDR, REC + 8)
                .0,
        );
        let e = f.swerr();
        assert_eq!(e[0] & 1, 1);
        assert_eq!((e[0] >> 8) & 0xff, u64::from(status::CRA_ALIGN));
        assert_eq!(f.r32(reg::INTCAUSE), intcause::ERR, "no EVL cause");
        assert_eq!(f.r64(reg::EVLSTATUS), 0, "no entry written");
        assert_eq!(f.bytes(LOG, 64 * 64), vec![0xa5; 64 * 64], "log untouched");
    }
}

mod data_path {
    use super::*;

    #[test]
    fn memmove_writes_data_then_record_and_interrupts_its_vector() {
        let mut f = fx_msix_only();
        f.up();
        let data: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        f.fill(SRC, &data);
        let r = f.run(&D::new(opcode::MEMMOVE, STD).io(SRC, DST, 5000).handle(1).0);
        assert_eq!(r[0], status::SUCCESS);
        assert_eq!(f.bytes(DST, 5000), data);
        assert_eq!(f.msix_delivered(1), 1);
        assert_eq!(f.dev.stats().completed, 1);
    }

    #[test]
    fn overlapping_memmove_preserves_the_source() {
        let mut f = fx_msix_only();
        f.up();
        let n = 200_000u32;
        let data: Vec<u8> = (0..n).map(|i| (i * 7) as u8).collect();
        f.fill(SRC, &data);
        let r = f.run(
            &D::new(opcode::MEMMOVE, STD)
                .io(SRC, SRC + 1000, n)
                .handle(1)
                .0,
        );
        assert_eq!(r[0], status::SUCCESS);
        assert_eq!(f.bytes(SRC + 1000, n as usize), data);
        f.fill(SRC, &data);
        f.run(
            &D::new(opcode::MEMMOVE, STD)
                .io(SRC + 1000, SRC, n)
                .handle(1)
                .0,
        );
        assert_eq!(f.bytes(SRC, n as usize)[..1000], data[1000..2000]);
    }

    #[test]
    fn memfill_repeats_the_pattern() {
        let mut f = fx_msix_only();
        f.up();
        let r = f.run(
            &D::new(opcode::MEMFILL, STD)
                .io(0x0807_0605_0403_0201, DST, 100_003)
                .0,
        );
        assert_eq!(r[0], status::SUCCESS);
        let got = f.bytes(DST, 100_003);
        assert!(got.iter().enumerate().all(|(i, &b)| b == (i % 8) as u8 + 1));
    }

    #[test]
    fn compare_reports_first_difference_and_check_result() {
        let mut f = fx_msix_only();
        f.up();
        f.fill(SRC, &[7u8; 4096]);
        f.fill(DST, &[7u8; 4096]);
        let r = f.run(&D::new(opcode::COMPARE, STD).io(SRC, DST, 4096).0);
        assert_eq!((r[0], r[1]), (status::SUCCESS, 0));
        f.fill(DST + 1234, &[8]);
        let r = f.run(&D::new(opcode::COMPARE, STD).io(SRC, DST, 4096).0);
        assert_eq!((r[0], r[1], completed(&r)), (status::SUCCESS, 1, 1234));
        let d = D::new(opcode::COMPARE, STD | flag::CHECK_RESULT).io(SRC, DST, 4096);
        let r = f.run(&d.0);
        assert_eq!(r[0], status::SUCCESS_PRED, "expected equal, got different");
        let mut d = d;
        d.0[desc::EXPECTED_RES] = 1;
        assert_eq!(f.run(&d.0)[0], status::SUCCESS);
    }

    #[test]
    fn compare_pattern_checks_against_eight_bytes() {
        let mut f = fx_msix_only();
        f.up();
        let pat = 0x1122_3344_5566_7788u64;
        let buf: Vec<u8> = (0..512).flat_map(|_| pat.to_le_bytes()).collect();
        f.fill(DST, &buf);
        let r = f.run(&D::new(opcode::COMPVAL, STD).io(pat, DST, 4096).0);
        assert_eq!((r[0], r[1]), (status::SUCCESS, 0));
        f.fill(DST + 9, &[0]);
        let r = f.run(&D::new(opcode::COMPVAL, STD).io(pat, DST, 4096).0);
        assert_eq!((r[1], completed(&r)), (1, 9));
    }

    #[test]
    fn dualcast_writes_both_and_checks_low_bits() {
        let mut f = fx_msix_only();
        f.up();
        f.fill(SRC, &[0xabu8; 3000]);
        let d = D::new(opcode::DUALCAST, STD).io(SRC, DST, 3000);
        let r = f.run(&d.u64(desc::DEST2, DST + 0x10000).0);
        assert_eq!(r[0], status::SUCCESS);
        assert_eq!(f.bytes(DST, 3000), vec![0xab; 3000]);
        assert_eq!(f.bytes(DST + 0x10000, 3000), vec![0xab; 3000]);
        let r = f.run(&d.u64(desc::DEST2, DST + 0x10008).0);
        assert_eq!(r[0], status::DUALCAST);
        let d = d.u32(desc::SIZE_FIELD, 5000);
        let r = f.run(&d.u64(desc::DEST2, DST + 0x1000).0);
        assert_eq!(r[0], status::OVERLAP);
    }

    /// Bitwise CRC-32C (reflected 0x82F63B78), the oracle for the crate-backed engine.
    fn crc32c_reference(seed: u32, data: &[u8]) -> u32 {
        let mut c = !seed;
        for &b in data {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0x82f6_3b78
                } else {
                    c >> 1
                };
            }
        }
        !c
    }

    #[test]
    fn crc32c_matches_rfc3720_vectors_and_the_bitwise_reference() {
        // RFC 3720 (iSCSI) B.4 test vectors.
        let zeros = [0u8; 32];
        let ones = [0xffu8; 32];
        let up: Vec<u8> = (0..32).collect();
        let down: Vec<u8> = (0..32).rev().collect();
        for (data, want) in [
            (&zeros[..], 0x8a91_36aa),
            (&ones[..], 0x62a8_ab43),
            (&up[..], 0x46dd_794e),
            (&down[..], 0x113f_db5c),
        ] {
            let mut c = Crc32c::new(0);
            c.update(data);
            assert_eq!(c.value(), want);
            assert_eq!(crc32c_reference(0, data), want);
        }
        // Any split, any seed: the same as the reference in one go.
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        for (split, seed) in [(0, 0), (1, 0x1234_5678), (333, 0xffff_ffff), (999, 7)] {
            let mut c = Crc32c::new(seed);
            c.update(&data[..split]);
            c.update(&data[split..]);
            assert_eq!(c.value(), crc32c_reference(seed, &data), "split {split}");
        }
    }

    #[test]
    fn crc_over_several_chunks_matches_the_reference() {
        let mut f = fx_msix_only();
        f.up();
        let n = 3 * engine::CHUNK + 12_345;
        let data: Vec<u8> = (0..n as u32).map(|i| (i ^ (i >> 9)) as u8).collect();
        f.fill(SRC, &data);
        let seed = 0xdead_beef;
        let d = D::new(opcode::COPY_CRC, STD).io(SRC, DST, n as u32);
        let r = f.run(&d.u32(desc::CRC_SEED, seed).0);
        assert_eq!(r[0], status::SUCCESS);
        assert_eq!(op_specific(&r), crc32c_reference(seed, &data));
        assert_eq!(f.bytes(DST, n), data);
    }

    #[test]
    fn crc_is_crc32c_with_seed_chaining_and_seed_from_memory() {
        let mut c = Crc32c::new(0);
        c.update(b"123456789");
        assert_eq!(c.value(), 0xe306_9283);
        let mut f = fx_msix_only();
        f.up();
        f.fill(SRC, b"123456789");
        let r = f.run(&D::new(opcode::CRCGEN, STD).io(SRC, 0, 9).0);
        assert_eq!((r[0], op_specific(&r)), (status::SUCCESS, 0xe306_9283));
        // A previous result as seed continues the computation.
        let r1 = f.run(&D::new(opcode::CRCGEN, STD).io(SRC, 0, 4).0);
        let d = D::new(opcode::CRCGEN, STD).io(SRC + 4, 0, 5);
        let r2 = f.run(&d.u32(desc::CRC_SEED, op_specific(&r1)).0);
        assert_eq!(op_specific(&r2), 0xe306_9283);
        f.fill(0x3000, &op_specific(&r1).to_le_bytes());
        let d = D::new(opcode::CRCGEN, STD | flag::READ_CRC_SEED).io(SRC + 4, 0, 5);
        let r3 = f.run(&d.u64(desc::CRC_SEED_ADDR, 0x3000).0);
        assert_eq!(op_specific(&r3), 0xe306_9283);
        let r4 = f.run(&D::new(opcode::COPY_CRC, STD).io(SRC, DST, 9).0);
        assert_eq!((r4[0], op_specific(&r4)), (status::SUCCESS, 0xe306_9283));
        assert_eq!(f.bytes(DST, 9), b"123456789");
    }

    #[test]
    fn noop_and_drain_complete() {
        let mut f = fx_msix_only();
        f.up();
        assert_eq!(
            f.run(&D::new(opcode::NOOP, STD).handle(1).0)[0],
            status::SUCCESS
        );
        assert_eq!(
            f.run(&D::new(opcode::DRAIN, STD).handle(1).0)[0],
            status::SUCCESS
        );
        assert_eq!(f.msix_delivered(1), 2);
    }

    #[test]
    fn success_without_rcr_writes_no_record_but_interrupts() {
        let mut f = fx_msix_only();
        f.up();
        f.fill(REC, &[0u8; 32]);
        let r = f.run(&D::new(opcode::NOOP, flag::CRAV | flag::RCI).handle(1).0);
        assert_eq!(r[0], 0);
        assert_eq!(f.msix_delivered(1), 1);
    }

    #[test]
    fn eight_qword_writes_assemble_one_descriptor() {
        let mut f = fx_msix_only();
        f.up();
        let d = D::new(opcode::NOOP, STD).handle(1).0;
        let slot = 0x1000 + 5 * 64;
        for k in [3usize, 0, 1, 2, 4, 5, 6, 7] {
            if k == 3 {
                // A qword before qword 0 is discarded by the restart at qword 0.
                f.dev.bar_write(2, slot + 24, &d[24..32]);
                continue;
            }
            f.dev
                .bar_write(2, slot + k as u64 * 8, &d[k * 8..k * 8 + 8]);
        }
        f.dev.wait_idle();
        assert_eq!(f.dev.stats().submitted, 0, "qword 3 missing");
        f.dev.bar_write(2, slot + 24, &d[24..32]);
        f.dev.wait_idle();
        assert_eq!(f.dev.stats().submitted, 1);
        assert_eq!(f.record(REC)[0], status::SUCCESS);
    }

    #[test]
    fn misuse_of_portals_is_dropped() {
        let mut f = fx_msix_only();
        f.up();
        let d = D::new(opcode::NOOP, STD).handle(1).0;
        f.dev.bar_write(2, 0x1000 + 8, &d); // unaligned 64-byte write
        f.dev.bar_write(2, 0x1000, &d[..32]); // 32-byte write
        f.dev.bar_write(2, 0x1000 + 4, &d[..8]); // unaligned qword
        f.submit(1, 1, &d); // WQ 1 not enabled
        f.submit(7, 1, &d); // WQ 7 does not exist
        f.submit(0, 2, &d); // IMS portal without IMS
        f.dev.wait_idle();
        let s = f.dev.stats();
        assert_eq!((s.submitted, s.dropped), (0, 6));
    }

    #[test]
    fn more_than_wq_size_outstanding_is_dropped() {
        let mut f = fx_msix_only();
        f.pci_up();
        f.configure_wq(0, 2);
        f.cmd(Command::EnableDevice, 0);
        f.cmd(Command::EnableWq, 0);
        let d = D::new(opcode::NOOP, STD).handle(1).0;
        let sh = f.dev.shared.clone();
        let hold = sh.hold.lock().unwrap();
        for _ in 0..5 {
            f.submit(0, 1, &d);
        }
        assert_eq!(f.r32(WQCFG_OFFSET + 24) & 0xffff, 2, "occupancy");
        drop(hold);
        f.dev.wait_idle();
        let s = f.dev.stats();
        assert_eq!((s.submitted, s.dropped, s.completed), (2, 3, 2));
    }

    #[test]
    fn abort_abandons_queued_work_without_records() {
        let mut f = fx_msix_only();
        f.up();
        f.fill(REC, &[0u8; 32]);
        let sh = f.dev.shared.clone();
        let hold = sh.hold.lock().unwrap();
        f.submit(0, 1, &D::new(opcode::NOOP, STD).handle(1).0);
        f.submit(0, 1, &D::new(opcode::NOOP, STD).handle(1).0);
        // The worker may or may not have taken the first one: either way the CMD write
        // returns at once and the command completes once the worker let go of it.
        let v0 = f.msix_delivered(0);
        f.w32(reg::CMD, cmd_word(Command::AbortWq, 1, true));
        drop(hold);
        f.dev.wait_idle();
        assert_eq!(f.r32(reg::CMDSTS), 0);
        assert_eq!(f.msix_delivered(0), v0 + 1);
        assert_eq!(f.record(REC)[0], 0);
        assert_eq!(f.dev.stats().abandoned, 2);
        assert_eq!(f.msix_delivered(1), 0);
    }

    #[test]
    fn dropping_the_device_with_work_in_flight_stops_the_worker() {
        let mut f = fx_msix_only();
        f.up();
        for _ in 0..16 {
            f.submit(0, 1, &D::new(opcode::MEMFILL, STD).io(1, 0, 2 << 20).0);
        }
        drop(f);
    }
}

mod batch {
    use super::*;

    const LIST: u64 = 0x8000;

    fn put(f: &Fx, i: u64, d: &D) {
        f.fill(LIST + i * 64, &d.0);
    }

    #[test]
    fn batch_runs_elements_and_counts_descriptors() {
        let mut f = fx_msix_only();
        f.up();
        f.fill(SRC, &[1u8; 64]);
        put(
            &f,
            0,
            &D::new(opcode::MEMMOVE, STD)
                .io(SRC, DST, 64)
                .u64(desc::COMPLETION_ADDR, 0x2000)
                .handle(1),
        );
        put(
            &f,
            1,
            &D::new(opcode::MEMFILL, flag::CRAV | flag::RCR)
                .io(0, DST + 64, 64)
                .u64(desc::COMPLETION_ADDR, 0x2020),
        );
        let r = f.run(&D::new(opcode::BATCH, STD).io(LIST, 0, 2).handle(1).0);
        assert_eq!((r[0], completed(&r)), (status::SUCCESS, 2));
        assert_eq!(f.record(0x2000)[0], status::SUCCESS);
        assert_eq!(f.record(0x2020)[0], status::SUCCESS);
        assert_eq!(f.bytes(DST, 64), vec![1; 64]);
        assert_eq!(f.msix_delivered(1), 2, "element and batch interrupts");
    }

    #[test]
    fn fence_after_failure_abandons_the_rest() {
        let mut f = fx_msix_only();
        f.up();
        put(
            &f,
            0,
            &D::new(opcode::MEMMOVE, STD)
                .io(RAM + 0x1000, DST, 64)
                .u64(desc::COMPLETION_ADDR, 0x2000),
        );
        put(
            &f,
            1,
            &D::new(opcode::NOOP, STD | flag::FENCE).u64(desc::COMPLETION_ADDR, 0x2020),
        );
        put(
            &f,
            2,
            &D::new(opcode::NOOP, STD).u64(desc::COMPLETION_ADDR, 0x2040),
        );
        let r = f.run(
            &D::new(opcode::BATCH, flag::CRAV | flag::RCR)
                .io(LIST, 0, 3)
                .0,
        );
        assert_eq!((r[0], completed(&r)), (status::BATCH_FAIL, 1));
        assert_eq!(f.record(0x2000)[0], status::PAGE_FAULT);
        assert_eq!(f.record(0x2020)[0], 0);
    }

    #[test]
    fn failure_without_fence_continues_and_fails_the_batch() {
        let mut f = fx_msix_only();
        f.up();
        put(&f, 0, &D::new(0x3f, STD).u64(desc::COMPLETION_ADDR, 0x2000));
        put(
            &f,
            1,
            &D::new(opcode::NOOP, STD).u64(desc::COMPLETION_ADDR, 0x2020),
        );
        let r = f.run(&D::new(opcode::BATCH, STD).io(LIST, 0, 2).0);
        assert_eq!((r[0], completed(&r)), (status::BATCH_FAIL, 2));
        assert_eq!(f.record(0x2000)[0], status::BAD_OPCODE);
        assert_eq!(f.record(0x2020)[0], status::SUCCESS);
    }

    #[test]
    fn count_alignment_nesting_and_list_faults() {
        let mut f = fx_msix_only();
        f.up();
        for n in [0, 1, 33] {
            let r = f.run(&D::new(opcode::BATCH, STD).io(LIST, 0, n).0);
            assert_eq!(r[0], status::DESC_CNT_ERANGE, "count {n}");
        }
        let r = f.run(&D::new(opcode::BATCH, STD).io(LIST + 32, 0, 2).0);
        assert_eq!(r[0], status::DESCLIST_ALIGN);
        put(
            &f,
            0,
            &D::new(opcode::BATCH, STD)
                .io(LIST, 0, 2)
                .u64(desc::COMPLETION_ADDR, 0x2000),
        );
        put(
            &f,
            1,
            &D::new(opcode::DRAIN, STD).u64(desc::COMPLETION_ADDR, 0x2020),
        );
        let r = f.run(&D::new(opcode::BATCH, STD).io(LIST, 0, 2).0);
        assert_eq!(r[0], status::BATCH_FAIL);
        assert_eq!(f.record(0x2000)[0], status::BAD_OPCODE);
        assert_eq!(f.record(0x2020)[0], status::BAD_OPCODE);
        let r = f.run(&D::new(opcode::BATCH, STD).io(RAM - 64, 0, 2).0);
        assert_eq!(
            (r[0], completed(&r), fault_addr(&r)),
            (status::BATCH_PAGE_FAULT, 1, RAM)
        );
    }
}

mod hostile {
    use super::*;

    #[test]
    fn dma_outside_ram_faults_with_address_and_partial_progress() {
        let mut f = fx_msix_only();
        f.up();
        let src = RAM - 100_000;
        let r = f.run(&D::new(opcode::MEMMOVE, STD).io(src, DST, 200_000).0);
        assert_eq!(r[0], status::PAGE_FAULT);
        assert_eq!((completed(&r), fault_addr(&r)), (100_000, RAM));
        let r = f.run(&D::new(opcode::MEMMOVE, STD).io(SRC, RAM - 10, 64).0);
        assert_eq!(r[0], status::PAGE_FAULT | record::STATUS_WRITE_FAULT);
        assert_eq!((completed(&r), fault_addr(&r)), (10, RAM));
        // Into the device's own portals (MMIO, not RAM).
        let r = f.run(&D::new(opcode::MEMFILL, STD).io(0, 0xe000_0000, 64).0);
        assert_eq!(
            (r[0] & 0x7f, fault_addr(&r)),
            (status::PAGE_FAULT, 0xe000_0000)
        );
    }

    #[test]
    fn wrapping_addresses_fault_instead_of_wrapping() {
        let mut f = fx_msix_only();
        f.up();
        let r = f.run(&D::new(opcode::MEMMOVE, STD).io(u64::MAX - 31, DST, 64).0);
        assert_eq!(r[0], status::PAGE_FAULT);
        assert_eq!(completed(&r), 0);
        let r = f.run(&D::new(opcode::MEMFILL, STD).io(0, u64::MAX - 7, 4096).0);
        assert_eq!(r[0] & 0x7f, status::PAGE_FAULT);
        assert_eq!(f.bytes(0, 8), vec![0; 8], "nothing written at address 0");
    }

    #[test]
    fn transfer_size_zero_or_over_the_wq_maximum() {
        let mut f = fx_msix_only();
        f.up();
        for n in [0, (2 << 20) + 1] {
            let r = f.run(&D::new(opcode::MEMMOVE, STD).io(SRC, DST, n).0);
            assert_eq!(r[0], status::XFER_ERANGE, "size {n}");
        }
    }

    #[test]
    fn bad_opcode_flags_and_reserved_fields() {
        let mut f = fx_msix_only();
        f.up();
        for op in [0x07, 0x08, 0x0a, 0x12, 0x20, 0xff] {
            assert_eq!(
                f.run(&D::new(op, STD).0)[0],
                status::BAD_OPCODE,
                "op {op:#x}"
            );
        }
        let r = f.run(&D::new(opcode::NOOP, STD | flag::BOF | (1 << 20)).0);
        assert_eq!(
            (r[0], op_specific(&r)),
            (status::INVALID_FLAGS, flag::BOF | (1 << 20))
        );
        let r = f.run(
            &D::new(opcode::MEMMOVE, STD | flag::CHECK_RESULT)
                .io(SRC, DST, 8)
                .0,
        );
        assert_eq!(r[0], status::INVALID_FLAGS);
        let r = f.run(&D::new(opcode::NOOP, STD).u32(desc::RSVD1, 1).0);
        assert_eq!(r[0], status::NONZERO_RESERVED);
        let r = f.run(&D::new(opcode::MEMMOVE, STD).io(SRC, DST, 8).u64(0x38, 1).0);
        assert_eq!(r[0], status::NONZERO_RESERVED);
    }

    #[test]
    fn invalid_interrupt_handle_fails_without_interrupt() {
        let mut f = fx_msix_only();
        f.up();
        let r = f.run(&D::new(opcode::NOOP, STD).handle(5).0);
        assert_eq!(r[0], status::INT_HANDLE_INVAL);
        let snap = f.dev.msix_domain().snapshot();
        assert!(
            snap[1..].iter().all(|v| v.fires == 0),
            "only command interrupts on vector 0"
        );
        // With handles advertised, an MSI-X index is not a handle.
        let mut g = fx();
        g.up();
        assert_eq!(
            g.run(&D::new(opcode::NOOP, STD).handle(1).0)[0],
            status::INT_HANDLE_INVAL
        );
    }

    #[test]
    fn record_faults_and_misalignment_go_to_swerr() {
        let mut f = fx_msix_only();
        f.up();
        f.w32(reg::GENCTRL, genctrl::SOFTERR_INT_EN);
        let d = D::new(opcode::NOOP, STD).u64(desc::COMPLETION_ADDR, REC + 8);
        f.run(&d.0);
        let e = f.swerr();
        assert_eq!(e[0] & 1, 1);
        assert_eq!((e[0] >> 8) & 0xff, u64::from(status::CRA_ALIGN));
        assert_eq!(e[2], REC + 8);
        assert_eq!(f.r32(reg::INTCAUSE) & intcause::ERR, intcause::ERR);
        assert_eq!(f.msix_delivered(0), 3, "2 commands + 1 error");
        f.w64(reg::SWERR, 3);
        f.run(&D::new(opcode::NOOP, STD).u64(desc::COMPLETION_ADDR, RAM).0);
        let e = f.swerr();
        assert_eq!((e[0] >> 8) & 0xff, u64::from(status::CRA_XLAT));
        assert_ne!(e[0] & swerr::WQ_IDX_VALID, 0);
        // An error without a record address: SWERR with the status, overflow on repeat.
        f.run(&D::new(0x3f, 0).0);
        assert_eq!(f.swerr()[0] & 2, 2, "overflow");
        f.w64(reg::SWERR, 3);
        f.run(&D::new(0x3f, 0).0);
        let e = f.swerr();
        assert_eq!((e[0] >> 8) & 0xff, u64::from(status::BAD_OPCODE));
        assert_eq!((e[0] >> 32) & 0xff, 0x3f);
    }

    #[test]
    fn msix_perm_ignore_suppresses_the_completion_interrupt() {
        let mut f = fx_msix_only();
        f.up();
        f.w32(MSIX_PERM_OFFSET + 8, msix_perm::IGNORE);
        assert_eq!(
            f.run(&D::new(opcode::NOOP, STD).handle(1).0)[0],
            status::SUCCESS
        );
        assert_eq!(f.msix_delivered(1), 0);
        f.w32(MSIX_PERM_OFFSET + 8, 0);
        f.run(&D::new(opcode::NOOP, STD).handle(1).0);
        assert_eq!(f.msix_delivered(1), 1);
    }
}

mod ims_and_handles {
    use super::*;

    fn program_ims(f: &mut Fx, i: u64, vector: u32, ctrl: u32) {
        let base = IMS_OFFSET + i * 16;
        f.w64(base, 0xfee0_0000);
        f.w32(base + 8, vector);
        f.w32(base + 12, ctrl);
    }

    #[test]
    fn guest_managed_ims_entry_masks_and_delivers_pending_once() {
        let mut f = fx();
        f.up();
        program_ims(&mut f, 3, 0x55, 1);
        assert_eq!(f.r64(IMS_OFFSET + 48), 0xfee0_0000);
        assert_eq!(f.r32(IMS_OFFSET + 56), 0x55);
        let d = D::new(opcode::NOOP, STD).handle(3).0;
        f.submit(0, 3, &d);
        f.submit(0, 2, &d);
        f.dev.wait_idle();
        let s = f.ims_snapshot(3);
        assert!(s.pending && s.masked);
        assert_eq!((s.fires, s.deliveries), (2, 0));
        assert_eq!(
            f.r32(IMS_OFFSET + 60),
            spec::ims::CTRL_MASK | spec::ims::CTRL_PENDING
        );
        f.w32(IMS_OFFSET + 60, 0);
        let s = f.ims_snapshot(3);
        assert_eq!((s.pending, s.deliveries), (false, 1));
        assert_eq!(f.r32(IMS_OFFSET + 60), 0);
        // Out-of-range IMS index.
        let r = f.run(&D::new(opcode::NOOP, STD).handle(256).0);
        assert_eq!(r[0], status::INT_HANDLE_INVAL);
    }

    #[test]
    fn pasid_restricted_ims_entry_drops_instead_of_faulting() {
        let mut f = fx();
        f.up();
        program_ims(&mut f, 4, 0x56, spec::ims::CTRL_PASID_EN | (7 << 12));
        f.submit(0, 2, &D::new(opcode::NOOP, STD).handle(4).0);
        f.dev.wait_idle();
        let s = f.ims_snapshot(4);
        assert_eq!((s.fires, s.deliveries, s.dropped), (1, 0, 1));
    }

    #[test]
    fn request_handle_errors_and_exhaustion() {
        let mut f = fx_with(DsaConfig {
            wqs: 1,
            ..Default::default()
        });
        f.pci_up();
        assert_eq!(f.cmd(Command::RequestIntHandle, 0), 0x41, "vector 0");
        assert_eq!(
            f.cmd(Command::RequestIntHandle, 2),
            0x41,
            "beyond the table"
        );
        assert_eq!(
            f.cmd(Command::RequestIntHandle, cmd::INT_HANDLE_IMS | 1),
            0x41
        );
        for i in 0..256u32 {
            let st = f.cmd(Command::RequestIntHandle, 1);
            assert_eq!(st & 0xff, 0);
            assert_eq!(st >> 8, 255 - i, "handles come from the top");
        }
        assert_eq!(f.cmd(Command::RequestIntHandle, 1), 0x42);
        assert_eq!(f.cmd(Command::ReleaseIntHandle, 17), 0);
        assert_eq!(
            f.cmd(Command::ReleaseIntHandle, 17),
            0x41,
            "already released"
        );
        assert_eq!(f.cmd(Command::RequestIntHandle, 1) >> 8, 17);
    }

    #[test]
    fn linux_flow_handle_follows_its_msix_entry_and_carries_completions() {
        let mut f = fx();
        f.up();
        let st = f.cmd(Command::RequestIntHandle, 1);
        assert_eq!(st & 0xff, 0);
        let h = (st >> 8) as u16;
        assert_eq!(h, 255);
        let ims = f.ims_snapshot(255);
        assert_eq!(ims.message.unwrap().vector(), 0x41);
        assert!(!ims.masked);
        // Guest writes to a device-backed entry are ignored.
        f.w32(IMS_OFFSET + 255 * 16 + 8, 0x99);
        assert_eq!(f.r32(IMS_OFFSET + 255 * 16 + 8), 0x41);
        // The completion goes through the IMS entry, not the MSI-X vector.
        let r = f.run(&D::new(opcode::NOOP, STD).handle(h).0);
        assert_eq!(r[0], status::SUCCESS);
        assert_eq!(f.ims_snapshot(255).deliveries, 1);
        assert_eq!(f.msix_delivered(1), 0);
        // Retargeting the MSI-X entry retargets the handle.
        f.w32(MSIX_TABLE_OFFSET + 16 + 8, 0x61);
        assert_eq!(f.ims_snapshot(255).message.unwrap().vector(), 0x61);
        // Masking it (entry mask, function mask, disable) masks the handle: fires pend.
        f.w32(MSIX_TABLE_OFFSET + 16 + 12, 1);
        assert!(f.ims_snapshot(255).masked);
        f.run(&D::new(opcode::NOOP, STD).handle(h).0);
        assert!(f.ims_snapshot(255).pending);
        f.w32(MSIX_TABLE_OFFSET + 16 + 12, 0);
        let s = f.ims_snapshot(255);
        assert_eq!((s.pending, s.deliveries), (false, 2));
        f.msix_ctrl(msix_control::ENABLE | msix_control::FUNCTION_MASK);
        assert!(f.ims_snapshot(255).masked);
        f.msix_ctrl(msix_control::ENABLE);
        assert!(!f.ims_snapshot(255).masked);
        // Release: the handle is gone and completions through it fail.
        f.w32(
            reg::CMD,
            cmd_word(Command::ReleaseIntHandle, u32::from(h), false),
        );
        assert_eq!(f.r32(reg::CMDSTS), 0);
        let r = f.run(&D::new(opcode::NOOP, STD).handle(h).0);
        assert_eq!(r[0], status::INT_HANDLE_INVAL);
        assert!(f.ims_snapshot(255).message.is_none());
    }

    #[test]
    fn device_reset_releases_every_handle() {
        let mut f = fx();
        f.up();
        let h = (f.cmd(Command::RequestIntHandle, 1) >> 8) as u16;
        f.cmd(Command::ResetDevice, 0);
        assert_eq!(f.cmd(Command::ReleaseIntHandle, u32::from(h)), 0x41);
        assert!(f.ims_snapshot(usize::from(h)).masked);
    }
}

/// Device commands that wait for descriptors complete asynchronously (CMDSTS.active), the
/// worker works in bounded steps an abort interleaves with, and a dead worker fails the
/// pending command and halts the device.
mod async_commands {
    use super::*;

    impl Fx {
        /// Clears INTCAUSE after bring-up; returns vector 0's deliveries so far.
        fn quiet(&mut self) -> u64 {
            self.w32(reg::INTCAUSE, intcause::MASK);
            self.msix_delivered(0)
        }
    }

    /// A MEMMOVE of `chunks` whole chunks from SRC to DST, with a record and an interrupt.
    fn big_move(chunks: usize) -> D {
        let n = (chunks * engine::CHUNK) as u32;
        D::new(opcode::MEMMOVE, STD).io(SRC, DST, n).handle(1)
    }

    #[test]
    fn drain_sets_active_then_completes_with_status_and_interrupt() {
        let mut f = fx_msix_only();
        f.up();
        let v0 = f.quiet();
        f.fill(REC, &[0u8; 32]);
        let gate = &f.dev.shared.clone().gate;
        // Steps: 1 job start, 2.. one per chunk. Stop before the second chunk.
        gate.arm(Some(3), None);
        f.submit(0, 1, &big_move(2).0);
        gate.wait_paused();
        f.w32(reg::CMD, cmd_word(Command::DrainWq, wq_bit(0), true));
        assert_eq!(f.r32(reg::CMDSTS), CMDSTS_ACTIVE, "drain still waiting");
        assert_eq!(f.r32(reg::INTCAUSE), 0);
        assert_eq!((f.msix_delivered(0) - v0), 0);
        // A command while one is active is ignored.
        f.w32(reg::CMD, cmd_word(Command::EnableWq, 9, true));
        assert_eq!(f.r32(reg::CMDSTS), CMDSTS_ACTIVE);
        assert_eq!(f.r32(WQCFG_OFFSET + 24) & 0xffff, 1, "occupancy");
        gate.release();
        f.dev.wait_idle();
        assert_eq!(f.r32(reg::CMDSTS), 0);
        assert_eq!(f.r32(reg::INTCAUSE), intcause::CMD);
        assert_eq!((f.msix_delivered(0) - v0), 1);
        // The drain completed after the descriptor: its record and interrupt are there.
        assert_eq!(f.record(REC)[0], status::SUCCESS);
        assert_eq!(f.msix_delivered(1), 1);
        assert_eq!(
            f.bytes(DST, 2 * engine::CHUNK),
            f.bytes(SRC, 2 * engine::CHUNK)
        );
    }

    #[test]
    fn disable_device_stops_accepting_at_once_and_completes_after_the_work() {
        let mut f = fx_msix_only();
        f.up();
        let v0 = f.quiet();
        let gate = &f.dev.shared.clone().gate;
        gate.arm(Some(2), None);
        f.submit(0, 1, &big_move(1).0);
        gate.wait_paused();
        f.w32(reg::CMD, cmd_word(Command::DisableDevice, 0, true));
        assert_eq!(f.r32(reg::CMDSTS), CMDSTS_ACTIVE);
        assert_eq!(f.r32(reg::GENSTS), gensts::DISABLED);
        f.submit(0, 1, &D::new(opcode::NOOP, STD).handle(1).0);
        assert_eq!(f.dev.stats().dropped, 1, "no descriptor while disabling");
        gate.release();
        f.dev.wait_idle();
        assert_eq!(f.r32(reg::CMDSTS), 0);
        assert_eq!((f.msix_delivered(0) - v0), 1);
        assert_eq!(f.dev.stats().completed, 1);
    }

    #[test]
    fn probe_style_reset_with_work_in_flight_is_polled_until_active_clears() {
        let mut f = fx_msix_only();
        f.up();
        let v0 = f.quiet();
        f.fill(REC, &[0u8; 32]);
        let gate = &f.dev.shared.clone().gate;
        gate.arm(Some(3), None);
        f.submit(0, 1, &big_move(4).0);
        gate.wait_paused();
        // Linux's idxd_device_init_reset: no int_req, spin on CMDSTS.active.
        f.w32(reg::CMD, 0x0050_0000);
        assert_eq!(f.r32(reg::CMDSTS), CMDSTS_ACTIVE);
        assert_eq!(f.r32(reg::GENSTS), gensts::DISABLED);
        assert_eq!(f.r32(WQCFG_OFFSET), 0, "configuration cleared at once");
        gate.release();
        f.dev.wait_idle();
        assert_eq!(f.r32(reg::CMDSTS), 0);
        assert_eq!((f.r32(reg::INTCAUSE), (f.msix_delivered(0) - v0)), (0, 0));
        assert_eq!(f.record(REC)[0], 0, "the aborted move writes no record");
        assert_eq!(f.dev.stats().abandoned, 1);
    }

    #[test]
    fn abort_interleaves_with_a_chunked_memmove() {
        let mut f = fx_msix_only();
        f.up();
        let v0 = f.quiet();
        f.fill(REC, &[0u8; 32]);
        let src: Vec<u8> = (0..4 * engine::CHUNK)
            .map(|i| (i % 251) as u8 + 1)
            .collect();
        f.fill(SRC, &src);
        let gate = &f.dev.shared.clone().gate;
        // Step 1 job start, step 2 chunk 0, step 3 chunk 1: stop with one chunk copied.
        gate.arm(Some(3), None);
        f.submit(0, 1, &big_move(4).0);
        gate.wait_paused();
        f.w32(reg::CMD, cmd_word(Command::AbortWq, wq_bit(0), true));
        assert_eq!(
            f.r32(reg::CMDSTS),
            CMDSTS_ACTIVE,
            "abort waits for the step"
        );
        gate.release();
        f.dev.wait_idle();
        assert_eq!(f.r32(reg::CMDSTS), 0);
        assert_eq!((f.msix_delivered(0) - v0), 1);
        let c = engine::CHUNK;
        assert_eq!(
            f.bytes(DST, c),
            src[..c].to_vec(),
            "the first chunk was copied"
        );
        assert_eq!(
            f.bytes(DST + c as u64, 3 * c),
            vec![0; 3 * c],
            "nothing after it"
        );
        assert_eq!(f.record(REC)[0], 0);
        assert_eq!(f.msix_delivered(1), 0);
        let s = f.dev.stats();
        assert_eq!((s.completed, s.abandoned), (0, 1));
        // The WQ stays enabled and works.
        let r = f.run(&D::new(opcode::NOOP, STD).handle(1).0);
        assert_eq!(r[0], status::SUCCESS);
    }

    #[test]
    fn abort_interleaves_with_a_batch_between_elements() {
        let mut f = fx_msix_only();
        f.up();
        f.quiet();
        const LIST: u64 = 0x8000;
        for i in 0..4u64 {
            let d = D::new(opcode::MEMFILL, STD)
                .io(0x1111_1111_1111_1111 * (i + 1), DST + i * 0x1000, 0x1000)
                .u64(desc::COMPLETION_ADDR, REC + 0x100 + i * 32)
                .handle(1);
            f.fill(LIST + i * 64, &d.0);
        }
        f.fill(REC, &[0u8; 0x200]);
        let gate = &f.dev.shared.clone().gate;
        // 1 job start; per element: 1 element step + 1 chunk step. Stop before element 2.
        gate.arm(Some(6), None);
        let batch = D::new(opcode::BATCH, STD).io(LIST, 0, 4).handle(1);
        f.submit(0, 1, &batch.0);
        gate.wait_paused();
        f.w32(reg::CMD, cmd_word(Command::AbortAll, 0, true));
        assert_eq!(f.r32(reg::CMDSTS), CMDSTS_ACTIVE);
        gate.release();
        f.dev.wait_idle();
        assert_eq!(f.r32(reg::CMDSTS), 0);
        let elements: Vec<u8> = (0..4).map(|i| f.record(REC + 0x100 + i * 32)[0]).collect();
        assert_eq!(elements, [status::SUCCESS, status::SUCCESS, 0, 0]);
        assert_eq!(f.bytes(DST + 0x2000, 0x2000), vec![0; 0x2000]);
        assert_eq!(f.record(REC)[0], 0, "no batch record");
    }

    #[test]
    fn worker_death_fails_the_pending_drain_and_halts_the_device() {
        let mut f = fx_msix_only();
        f.up();
        let v0 = f.quiet();
        f.w32(reg::GENCTRL, genctrl::SOFTERR_INT_EN | genctrl::HALT_INT_EN);
        let gate = &f.dev.shared.clone().gate;
        gate.arm(Some(2), Some(3));
        f.submit(0, 1, &big_move(2).0);
        f.submit(0, 1, &D::new(opcode::NOOP, STD).handle(1).0);
        gate.wait_paused();
        f.w32(reg::CMD, cmd_word(Command::DrainWq, wq_bit(0), true));
        assert_eq!(f.r32(reg::CMDSTS), CMDSTS_ACTIVE);
        gate.release(); // the worker panics at its next step
        f.dev.wait_idle(); // returns: the worker is dead
        assert!(f.dev.worker_dead());
        assert_eq!(
            f.r32(reg::CMDSTS),
            u32::from(cmd_err::HW_ERR),
            "drain failed"
        );
        assert_eq!(
            f.r32(reg::GENSTS),
            gensts::HALT | (gensts::RESET_COLD << gensts::RESET_TYPE_SHIFT)
        );
        let ic = f.r32(reg::INTCAUSE);
        assert_eq!(ic, intcause::ERR | intcause::CMD | intcause::HALT);
        let e = f.swerr();
        assert_eq!(e[0] & swerr::VALID, swerr::VALID);
        assert_eq!(
            (e[0] >> swerr::ERROR_SHIFT) & 0xff,
            u64::from(status::HW_ERR1)
        );
        assert_eq!(
            (f.msix_delivered(0) - v0),
            3,
            "software error, halt, command"
        );
        assert_eq!(f.r32(WQCFG_OFFSET + 24) & 0xffff, 0, "nothing outstanding");
        assert_eq!(f.dev.stats().abandoned, 2);
        // Nothing blocks afterwards: commands fail at once, descriptors are dropped.
        assert_eq!(f.cmd(Command::DrainAll, 0), u32::from(cmd_err::HW_ERR));
        assert_eq!(f.cmd(Command::ResetDevice, 0), u32::from(cmd_err::HW_ERR));
        let dropped = f.dev.stats().dropped;
        f.submit(0, 1, &D::new(opcode::NOOP, STD).handle(1).0);
        assert_eq!(f.dev.stats().dropped, dropped + 1);
        f.dev.reset();
        f.dev.wait_idle();
        assert_eq!(f.r32(reg::GENSTS) & 3, gensts::HALT, "still halted");
    }

    #[test]
    fn vm_reset_waits_for_the_worker_to_let_go_and_forgets_the_command() {
        let mut f = fx_msix_only();
        f.up();
        let v0 = f.quiet();
        let gate = &f.dev.shared.clone().gate;
        gate.arm(Some(3), None);
        f.submit(0, 1, &big_move(4).0);
        gate.wait_paused();
        f.w32(reg::CMD, cmd_word(Command::DrainAll, 0, true));
        assert_eq!(f.r32(reg::CMDSTS), CMDSTS_ACTIVE);
        let sh = f.dev.shared.clone();
        let generation = sh.generations[0].load(Ordering::Acquire);
        let dev = &mut f.dev;
        std::thread::scope(|s| {
            let t = s.spawn(|| dev.reset());
            // Let the worker go only once the reset aborted its job.
            while sh.generations[0].load(Ordering::Acquire) == generation {
                std::thread::yield_now();
            }
            sh.gate.release();
            t.join().unwrap();
        });
        assert_eq!(f.r32(reg::CMDSTS), 0);
        assert_eq!(f.r32(reg::GENSTS), gensts::DISABLED);
        assert_eq!(f.r32(WQCFG_OFFSET + 24) & 0xffff, 0);
        assert_eq!(
            (f.msix_delivered(0) - v0),
            0,
            "the forgotten command sends nothing"
        );
        assert_eq!(
            f.bytes(DST + 2 * engine::CHUNK as u64, 2 * engine::CHUNK),
            vec![0; 2 * engine::CHUNK]
        );
    }

    #[test]
    fn repeated_halts_are_logged_at_a_limited_rate() {
        let mut f = fx_msix_only();
        f.up();
        f.quiet();
        for _ in 0..100 {
            f.bus_master(false);
            f.bus_master(true);
            f.w32(reg::CMD, cmd_word(Command::ResetDevice, 0, false));
            f.configure_wq(0, 16);
            assert_eq!(f.cmd(Command::EnableDevice, 0), 0);
        }
        // 100 halts, 10 at once then one per 5 s: unless this loop took minutes, most
        // warnings were dropped (and counted).
        assert!(f.dev.shared.log_limit.suppressed() >= 50);
    }
}
