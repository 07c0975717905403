//! The configuration registers (GENCFG, EVLCFG/EVLSTATUS, GRPCFG, WQCFG) and the checks
//! Enable Device and Enable WQ apply to them. Pure state: no interrupts, no guest memory.

use super::shared::WqLimits;
use super::spec::{cmd_err, evlcfg, evlstatus, gencfg, grpcfg, wqcfg};

/// Device geometry advertised in the capability registers.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Geometry {
    pub wqs: usize,
    pub engines: usize,
    pub groups: usize,
    pub total_wq_size: u32,
    pub total_rdbufs: u32,
    pub max_xfer_shift: u32,
    pub max_batch_shift: u32,
}

/// The event log registers.
///
/// The device advertises an event log (GENCAP.evl_support) and accepts its configuration,
/// but never writes an entry: it has no shared WQs, no PASIDs and no page-request support,
/// so nothing needs the log, and every error it reports goes to SWERR (and completion
/// records) as before. The tail therefore stays where Enable Device put it (0), the log
/// stays empty and EVLSTATUS.int_pending / INTCAUSE.evl are never raised.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct EventLog {
    /// EVLCFG qwords (defined bits only).
    pub cfg: [u64; 2],
    /// EVLSTATUS.head (software-written).
    pub head: u16,
    /// EVLSTATUS.tail (device-written; always 0 here).
    pub tail: u16,
    /// EVLSTATUS.int_pending.
    pub int_pending: bool,
}

impl EventLog {
    /// Configured size in entries.
    pub(crate) fn size(&self) -> u16 {
        (self.cfg[1] & evlcfg::SIZE_MASK) as u16
    }

    /// EVLSTATUS as the guest reads it.
    pub(crate) fn status(&self) -> u64 {
        u64::from(self.head)
            | (u64::from(self.tail) << evlstatus::TAIL_SHIFT)
            | if self.int_pending {
                evlstatus::INT_PENDING
            } else {
                0
            }
    }

    /// Writes dword `dw` (0: low, 1: high) of EVLSTATUS: the head is read-write, the
    /// tail read-only, int_pending write-one-to-clear.
    pub(crate) fn write_status(&mut self, dw: usize, v: u32) {
        if dw == 0 {
            self.head = (u64::from(v) & evlstatus::HEAD_MASK) as u16;
        } else if (u64::from(v) << 32) & evlstatus::INT_PENDING != 0 {
            self.int_pending = false;
        }
    }

    /// Writes dword `dw` (0..4) of EVLCFG, keeping only defined bits.
    pub(crate) fn write_cfg(&mut self, dw: usize, v: u32) {
        let (q, shift) = (dw / 2, 32 * (dw % 2) as u32);
        let mask = [evlcfg::QW0_MASK, evlcfg::QW1_MASK][q];
        let half = 0xffff_ffffu64 << shift;
        self.cfg[q] = (self.cfg[q] & !half) | ((u64::from(v) << shift) & half & mask);
    }
}

/// The software-written configuration.
pub(crate) struct ConfigRegs {
    pub geo: Geometry,
    pub gencfg: u32,
    pub evl: EventLog,
    /// Per WQ, 8 dwords.
    pub wqcfg: Vec<[u32; wqcfg::DWORDS]>,
    /// Per group, 8 qwords: 0..4 WQ bitmap, 4 engines, 5 flags, 6..8 reserved.
    pub grpcfg: Vec<[u64; 8]>,
}

impl ConfigRegs {
    pub(crate) fn new(geo: Geometry) -> Self {
        Self {
            geo,
            gencfg: 0,
            evl: EventLog::default(),
            wqcfg: vec![[0; wqcfg::DWORDS]; geo.wqs],
            grpcfg: vec![[0; 8]; geo.groups],
        }
    }

    /// Device reset: everything back to zero.
    pub(crate) fn reset(&mut self) {
        self.gencfg = 0;
        self.evl = EventLog::default();
        self.wqcfg.iter_mut().for_each(|w| *w = [0; wqcfg::DWORDS]);
        self.grpcfg.iter_mut().for_each(|g| *g = [0; 8]);
    }

    /// WQ size field.
    pub(crate) fn wq_size(&self, wq: usize) -> u32 {
        self.wqcfg[wq][0] & 0xffff
    }

    fn wq_in_group(&self, g: &[u64; 8], wq: usize) -> bool {
        g[wq / 64] & (1 << (wq % 64)) != 0
    }

    /// Checks made by Enable Device (in the order of their codes).
    pub(crate) fn check_device_enable(&self) -> Result<(), u8> {
        let geo = &self.geo;
        let evl_en = self.gencfg & gencfg::EVL_EN != 0;
        if self.gencfg & gencfg::RDBUF_LIMIT_MASK > geo.total_rdbufs
            || (evl_en && self.evl.size() < evlcfg::SIZE_MIN)
        {
            return Err(cmd_err::CONFIG);
        }
        // The device has no PASID capability: the event log cannot be tagged with one.
        if evl_en && self.evl.cfg[0] & evlcfg::PASID_EN != 0 {
            return Err(cmd_err::PASID_INVAL);
        }
        let total: u32 = (0..geo.wqs).map(|w| self.wq_size(w)).sum();
        if total > geo.total_wq_size {
            return Err(cmd_err::WQ_SIZE_ERANGE);
        }
        // Bits naming WQs or engines that do not exist.
        for g in &self.grpcfg {
            let wq_bits_ok = (0..256).all(|b| b < geo.wqs || !self.wq_in_group(g, b));
            let eng_ok = geo.engines >= 64 || g[4] >> geo.engines == 0;
            if !wq_bits_ok || !eng_ok {
                return Err(cmd_err::GRP_CONFIG);
            }
        }
        // A WQ or an engine in more than one group.
        for wq in 0..geo.wqs {
            if self
                .grpcfg
                .iter()
                .filter(|g| self.wq_in_group(g, wq))
                .count()
                > 1
            {
                return Err(cmd_err::GRP_CONFIG2);
            }
        }
        for e in 0..geo.engines {
            if self.grpcfg.iter().filter(|g| g[4] & (1 << e) != 0).count() > 1 {
                return Err(cmd_err::GRP_CONFIG2);
            }
        }
        // A group with WQs but no engine.
        if self
            .grpcfg
            .iter()
            .any(|g| g[..4].iter().any(|&w| w != 0) && g[4] == 0)
        {
            return Err(cmd_err::GRP_CONFIG3);
        }
        // Group flags: read buffers within the total, no progress limits (not supported).
        let mut reserved = 0u32;
        for g in &self.grpcfg {
            let f = g[5];
            let res = ((f >> grpcfg::RDBUFS_RESERVED_SHIFT) & 0xff) as u32;
            let allowed = ((f >> grpcfg::RDBUFS_ALLOWED_SHIFT) & 0xff) as u32;
            reserved += res;
            if allowed > geo.total_rdbufs
                || (allowed != 0 && allowed < res)
                || f & grpcfg::PROGRESS_LIMITS != 0
            {
                return Err(cmd_err::GRP_CONFIG4);
            }
        }
        if reserved > geo.total_rdbufs {
            return Err(cmd_err::GRP_CONFIG4);
        }
        Ok(())
    }

    /// Checks made by Enable WQ `wq` once the device is enabled; the limits the WQ runs
    /// with on success.
    pub(crate) fn check_wq_enable(&self, wq: usize) -> Result<WqLimits, u8> {
        let geo = &self.geo;
        let cfg = &self.wqcfg[wq];
        let grouped = self.grpcfg.iter().any(|g| self.wq_in_group(g, wq));
        let total: u32 = (0..geo.wqs).map(|w| self.wq_size(w)).sum();
        if self.wq_size(wq) == 0 || !grouped || total > geo.total_wq_size {
            return Err(cmd_err::WQ_SIZE);
        }
        if (cfg[2] >> wqcfg::PRIORITY_SHIFT) & 0xf == 0 {
            return Err(cmd_err::WQ_PRIOR);
        }
        if cfg[2] & wqcfg::MODE_DEDICATED == 0 {
            return Err(cmd_err::WQ_MODE);
        }
        if cfg[2] & wqcfg::BOF != 0 {
            return Err(cmd_err::BOF_EN);
        }
        if cfg[2] & wqcfg::PASID_EN != 0 {
            return Err(cmd_err::PASID_EN);
        }
        let batch_shift = (cfg[3] >> wqcfg::MAX_BATCH_SHIFT_SHIFT) & 0xf;
        if batch_shift > geo.max_batch_shift {
            return Err(cmd_err::MAX_BATCH_SIZE);
        }
        let xfer_shift = cfg[3] & 0x1f;
        if xfer_shift > geo.max_xfer_shift {
            return Err(cmd_err::MAX_XFER_SIZE);
        }
        Ok(WqLimits {
            max_xfer: 1 << xfer_shift,
            max_batch: 1 << batch_shift,
            privileged: cfg[2] & wqcfg::PRIV != 0,
        })
    }
}
