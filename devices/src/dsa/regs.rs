//! The configuration registers (GENCFG, GRPCFG, WQCFG) and the checks Enable Device and
//! Enable WQ apply to them. Pure state: no interrupts, no guest memory.

use super::shared::WqLimits;
use super::spec::{cmd_err, gencfg, grpcfg, wqcfg};

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

/// The software-written configuration.
pub(crate) struct ConfigRegs {
    pub geo: Geometry,
    pub gencfg: u32,
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
            wqcfg: vec![[0; wqcfg::DWORDS]; geo.wqs],
            grpcfg: vec![[0; 8]; geo.groups],
        }
    }

    /// Device reset: everything back to zero.
    pub(crate) fn reset(&mut self) {
        self.gencfg = 0;
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
        if self.gencfg & gencfg::EVL_EN != 0
            || self.gencfg & gencfg::RDBUF_LIMIT_MASK > geo.total_rdbufs
        {
            return Err(cmd_err::CONFIG);
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
