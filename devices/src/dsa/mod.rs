//! An emulated Intel Data Streaming Accelerator (DSA 1.0, PCI 8086:0b25) that Linux's
//! unmodified `idxd` driver probes, configures (sysfs / accel-config) and uses, with its
//! Interrupt Message Store as a per-device IMS interrupt domain.
//!
//! # Layout
//!
//! BAR0 (64-bit, at least 64 KiB; larger when the IMS table needs it):
//!
//! | offset   | content |
//! |----------|---------|
//! | `0x0000` | registers: VERSION, GENCAP, WQCAP, GRPCAP, ENGCAP, OPCAP, TABLE_OFFSETS, GENCFG, GENCTRL, GENSTS, INTCAUSE, CMD, CMDSTS, CMDCAP, SWERR, EVLCFG, EVLSTATUS |
//! | `0x0400` | GRPCFG, 64 bytes per group ([`GRPCFG_OFFSET`]) |
//! | `0x0800` | WQCFG, 32 bytes per WQ ([`WQCFG_OFFSET`]) |
//! | `0x1000` | MSIX_PERM, 8 bytes per MSI-X vector ([`MSIX_PERM_OFFSET`]) |
//! | `0x2000` | MSI-X table, `wqs + 1` entries ([`MSIX_TABLE_OFFSET`]) |
//! | `0x3000` | MSI-X PBA ([`MSIX_PBA_OFFSET`]) |
//! | `0x4000` | IMS table, 16 bytes per entry ([`IMS_OFFSET`]) |
//!
//! BAR2 (64-bit): portals, `0x4000` bytes per WQ: unlimited MSI-X portal at `+0x0000`,
//! limited MSI-X at `+0x1000`, unlimited IMS at `+0x2000`, limited IMS at `+0x3000`.
//!
//! # Behaviour
//!
//! - Commands that need no descriptor to finish complete inside the CMD write. Those that
//!   wait for in-flight descriptors (Disable Device, Drain All/PASID, Abort All, Reset
//!   Device, Disable/Drain/Abort/Reset WQ) complete asynchronously as on hardware: the CMD
//!   write does what the vCPU side can at once (stop accepting descriptors, abandon queued
//!   ones, clear the configuration), sets CMDSTS.active and returns; the thread that
//!   retires the last descriptor the command waits for writes CMDSTS. Either way CMDSTS
//!   (error, result, active clear) is set first, then INTCAUSE bit 1 and MSI-X vector 0 if
//!   `int_req` was set (Linux's `idxd_cmd_exec` sleeps until that interrupt; the probe
//!   reset polls CMDSTS.active). A CMD write while CMDSTS.active is set is ignored.
//! - The worker executes a descriptor in bounded steps (64 KiB chunks, one batch element),
//!   checking for an abort between steps. If it dies, the device halts (GENSTS halt,
//!   reset type "system reset", SWERR 0x20, halt interrupt) and a pending command fails
//!   with CMDSTS 0x03.
//! - Only dedicated WQs exist (no PASID, no ENQCMD); descriptors arrive as one 64-byte write
//!   or as eight 8-byte writes to one 64-byte slot of a portal, and run in order on one
//!   worker thread per device, `wq_size` outstanding per WQ at most (more are dropped).
//! - Completion interrupts: on MSI-X portals `int_handle` is an MSI-X index, or — when the
//!   device has IMS and so advertises CMDCAP bits 13/14 — an interrupt handle obtained with
//!   Request Interrupt Handle; on IMS portals it is an IMS index the guest programmed.
//! - Every DMA address is checked through vm-memory; see the `engine` module.
//! - Event log: GENCAP.evl_support = 1 (64-byte entries) with EVLCFG (RW while disabled),
//!   EVLSTATUS (head RW, tail RO, int_pending RW1C), GENCFG.evl_en and GENCTRL.evl_int_en.
//!   Enable Device with evl_en needs EVLCFG.size >= 64 entries (else 0x11) and no
//!   EVLCFG.pasid_en (else 0x13), and starts the log empty (head = tail = 0). The device
//!   never writes an entry (no shared WQs, PASIDs or page requests): errors keep going to
//!   SWERR, the tail never moves, INTCAUSE bit 5 is never raised. The log exists because
//!   Linux 6.12.95's idxd frees `idxd->evl` unconditionally when the device is unbound,
//!   which oopses on a device without one.

mod engine;
mod ims;
mod regs;
mod shared;
pub mod spec;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use interrupt::warn_ratelimited;
use interrupt::{DeviceDomain, DomainKind, InterruptHierarchy, MsiMessage, RequesterId};
use log::debug;
use pci::config::{command as pci_command, reg as pci_reg};
use pci::msix::{control as msix_control, MSIX_ENTRY_SIZE};
use pci::{Bar, BarKind, ConfigSpace, MsixCapability, PciDevice};
use vm_memory::GuestMemoryMmap;

use ims::Ims;
use regs::{ConfigRegs, Geometry};
use shared::{
    CommandDone, Counters, ErrorState, Finish, Job, PortalKind, QueueState, Shared, WqLimits,
};
use spec::{
    cmd, cmd_err, gencap, gencfg, genctrl, gensts, grpcap, grpcfg, intcause, msix_perm, portal,
    reg, wqcap, wqcfg, Command, CMDSTS_RESULT_SHIFT,
};

/// Offset of the GRPCFG table in BAR0.
pub const GRPCFG_OFFSET: u64 = 0x400;
/// Offset of the WQCFG table in BAR0.
pub const WQCFG_OFFSET: u64 = 0x800;
/// Offset of the MSIX_PERM table in BAR0.
pub const MSIX_PERM_OFFSET: u64 = 0x1000;
/// Offset of the MSI-X table in BAR0.
pub const MSIX_TABLE_OFFSET: u64 = 0x2000;
/// Offset of the MSI-X PBA in BAR0.
pub const MSIX_PBA_OFFSET: u64 = 0x3000;
/// Offset of the IMS table in BAR0.
pub const IMS_OFFSET: u64 = 0x4000;

/// Largest number of WQs (the WQCFG table must fit below MSIX_PERM).
pub const MAX_WQS: u8 = 64;
/// Largest number of engines (one GRPCFG engine bitmap qword).
pub const MAX_ENGINES: u8 = 64;
/// Largest number of groups (the GRPCFG table must fit below WQCFG).
pub const MAX_GROUPS: u8 = 16;
/// Largest IMS table (GENCAP.max_ims_mult is 6 bits).
pub const MAX_IMS: u16 = 63 * spec::ims::ENTRIES_PER_MULT;
/// WQ entries per WQ in WQCAP.total_wq_size.
pub const WQ_ENTRIES_PER_WQ: u32 = 32;
/// GRPCAP.total_rdbufs.
pub const TOTAL_RDBUFS: u32 = 64;
/// GENCAP.max_xfer_shift (2 MiB per descriptor).
pub const MAX_XFER_SHIFT: u32 = 21;
/// GENCAP.max_batch_shift (32 descriptors per batch).
pub const MAX_BATCH_SHIFT: u32 = 5;

/// Largest number of partially assembled portal slots kept at once.
const MAX_PARTIAL_SLOTS: usize = 1024;

/// Size and shape of the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DsaConfig {
    /// Work queues (1..=64).
    pub wqs: u8,
    /// Engines (1..=64).
    pub engines: u8,
    /// Groups (1..=16).
    pub groups: u8,
    /// IMS entries: 256 × GENCAP.max_ims_mult (0..=16128, a multiple of 256). Zero means no
    /// IMS: no IMS portals and no interrupt handles.
    pub ims: u16,
}

impl Default for DsaConfig {
    fn default() -> Self {
        Self {
            wqs: 4,
            engines: 4,
            groups: 4,
            ims: 256,
        }
    }
}

impl DsaConfig {
    /// Checks the ranges documented on each field.
    pub fn validate(&self) -> Result<(), DsaError> {
        if self.wqs == 0 || self.wqs > MAX_WQS {
            return Err(DsaError::Wqs(self.wqs));
        }
        if self.engines == 0 || self.engines > MAX_ENGINES {
            return Err(DsaError::Engines(self.engines));
        }
        if self.groups == 0 || self.groups > MAX_GROUPS {
            return Err(DsaError::Groups(self.groups));
        }
        if !self.ims.is_multiple_of(spec::ims::ENTRIES_PER_MULT) || self.ims > MAX_IMS {
            return Err(DsaError::Ims(self.ims));
        }
        Ok(())
    }

    /// MSI-X vectors: one for device events, one per WQ.
    pub fn msix_vectors(&self) -> usize {
        usize::from(self.wqs) + 1
    }

    /// Size of BAR0.
    pub fn bar0_size(&self) -> u64 {
        let end = IMS_OFFSET + u64::from(self.ims) * spec::ims::ENTRY_SIZE;
        end.next_power_of_two().max(0x1_0000)
    }

    /// Size of BAR2.
    pub fn bar2_size(&self) -> u64 {
        (u64::from(self.wqs) * portal::WQ_STRIDE).next_power_of_two()
    }
}

/// Errors creating the device (host-facing).
#[derive(Debug, thiserror::Error)]
pub enum DsaError {
    /// WQ count out of range.
    #[error("DSA: wqs must be 1..={MAX_WQS}, got {0}")]
    Wqs(u8),
    /// Engine count out of range.
    #[error("DSA: engines must be 1..={MAX_ENGINES}, got {0}")]
    Engines(u8),
    /// Group count out of range.
    #[error("DSA: groups must be 1..={MAX_GROUPS}, got {0}")]
    Groups(u8),
    /// IMS size not a multiple of 256 or too large.
    #[error("DSA: ims must be a multiple of 256 up to {MAX_IMS}, got {0}")]
    Ims(u16),
    /// PCI setup failed.
    #[error("DSA: {0}")]
    Pci(#[from] pci::Error),
    /// The worker thread could not be started.
    #[error("DSA: cannot start worker thread: {0}")]
    Worker(#[source] std::io::Error),
}

/// Data-path counters, for tests and for a person looking at the device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DsaStats {
    /// Descriptors accepted by a portal.
    pub submitted: u64,
    /// Portal writes dropped (WQ disabled or full, partial or malformed writes).
    pub dropped: u64,
    /// Descriptors (batch elements included) that completed.
    pub completed: u64,
    /// Descriptors abandoned by an abort, a reset or the device going away.
    pub abandoned: u64,
    /// Software errors recorded in SWERR.
    pub swerrs: u64,
}

/// What the vCPU side of a command leaves to do.
enum CommandStep {
    /// Complete now with this error code and result.
    Done(u8, u16),
    /// Complete (success) once the descriptors accepted so far on these WQs retired.
    Wait(Vec<usize>, Finish),
}

/// A partially written portal slot.
struct Partial {
    data: [u8; 64],
    mask: u8,
}

/// The DSA PCI function.
pub struct Dsa {
    name: String,
    cfg: DsaConfig,
    config: ConfigSpace,
    msix_cap: usize,
    shared: Arc<Shared>,
    worker: Option<JoinHandle<()>>,
    regs: ConfigRegs,
    state: u32,
    wq_limits: Vec<Option<WqLimits>>,
    partials: HashMap<u64, Partial>,
    msix_domain: Arc<DeviceDomain>,
}

impl Dsa {
    /// Creates the device at `requester`; its MSI-X and IMS domains are created in
    /// `hierarchy`, and descriptors access `mem`.
    pub fn new(
        hierarchy: &Arc<InterruptHierarchy>,
        requester: RequesterId,
        mem: GuestMemoryMmap,
        config: DsaConfig,
    ) -> Result<Dsa, DsaError> {
        config.validate()?;
        let name = format!("dsa {requester}");
        let mut cs = ConfigSpace::new(
            spec::PCI_VENDOR_INTEL,
            spec::PCI_DEVICE_DSA_SPR,
            spec::PCI_CLASS_SYSTEM,
            spec::PCI_SUBCLASS_OTHER,
            0,
            0,
        );
        cs.set_bar(
            spec::BAR_REGS,
            Bar {
                kind: BarKind::Memory64,
                size: config.bar0_size(),
                prefetchable: false,
            },
        )?;
        cs.set_bar(
            spec::BAR_PORTALS,
            Bar {
                kind: BarKind::Memory64,
                size: config.bar2_size(),
                prefetchable: false,
            },
        )?;
        let vectors = config.msix_vectors();
        let msix_domain =
            hierarchy.create_domain(&name, DomainKind::MsiX, requester, vectors, None);
        let msix = MsixCapability::new(
            &mut cs,
            vectors,
            spec::BAR_REGS,
            MSIX_TABLE_OFFSET,
            spec::BAR_REGS,
            MSIX_PBA_OFFSET,
            msix_domain.clone(),
        )?;
        let msix_cap = msix.offset();
        let ims_domain = (config.ims > 0).then(|| {
            hierarchy.create_domain(
                &format!("{name} ims"),
                DomainKind::Ims,
                requester,
                usize::from(config.ims),
                None,
            )
        });
        let wqs = usize::from(config.wqs);
        let shared = Arc::new(Shared {
            mem,
            msix: Mutex::new(msix),
            msix_perm: (0..vectors).map(|_| AtomicU32::new(0)).collect(),
            ims: Ims::new(ims_domain),
            handles_enabled: config.ims > 0,
            queue: Mutex::new(QueueState {
                jobs: Default::default(),
                accepted: vec![0; wqs],
                retired: vec![0; wqs],
                pending: None,
            }),
            work: Condvar::new(),
            idle: Condvar::new(),
            generations: (0..wqs).map(|_| AtomicU64::new(0)).collect(),
            stopping: AtomicBool::new(false),
            dead: AtomicBool::new(false),
            cmdsts: AtomicU32::new(0),
            errors: Mutex::new(ErrorState {
                swerr: [0; 4],
                intcause: 0,
                genctrl: 0,
            }),
            counters: Counters::default(),
            log_limit: interrupt::RateLimiter::new(shared::LOG_BURST, shared::LOG_INTERVAL),
            #[cfg(test)]
            hold: Mutex::new(()),
            #[cfg(test)]
            gate: Default::default(),
        });
        let worker_shared = shared.clone();
        let worker_name = format!("dsa-{:04x}", requester.0);
        let worker = std::thread::Builder::new()
            .name(worker_name.clone())
            .spawn(move || {
                crate::worker::thread_started(&worker_name);
                shared::worker_loop(&worker_shared)
            })
            .map_err(DsaError::Worker)?;
        let geo = Geometry {
            wqs,
            engines: usize::from(config.engines),
            groups: usize::from(config.groups),
            total_wq_size: (u32::from(config.wqs) * WQ_ENTRIES_PER_WQ).min(0xffff),
            total_rdbufs: TOTAL_RDBUFS,
            max_xfer_shift: MAX_XFER_SHIFT,
            max_batch_shift: MAX_BATCH_SHIFT,
        };
        Ok(Dsa {
            name,
            cfg: config,
            config: cs,
            msix_cap,
            shared,
            worker: Some(worker),
            regs: ConfigRegs::new(geo),
            state: gensts::DISABLED,
            wq_limits: vec![None; wqs],
            partials: HashMap::new(),
            msix_domain,
        })
    }

    /// The configuration the device was built with.
    pub fn dsa_config(&self) -> &DsaConfig {
        &self.cfg
    }

    /// The device's PCI/MSI-X domain (vector 0: device events; vector `n + 1`: WQ `n`).
    pub fn msix_domain(&self) -> &Arc<DeviceDomain> {
        &self.msix_domain
    }

    /// The device's IMS domain, if it has IMS.
    pub fn ims_domain(&self) -> Option<&Arc<DeviceDomain>> {
        self.shared.ims.domain()
    }

    /// Data-path counters.
    pub fn stats(&self) -> DsaStats {
        let c = &self.shared.counters;
        DsaStats {
            submitted: c.submitted.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            completed: c.completed.load(Ordering::Relaxed),
            abandoned: c.abandoned.load(Ordering::Relaxed),
            swerrs: c.swerrs.load(Ordering::Relaxed),
        }
    }

    /// Waits until every submitted descriptor has completed and no device command is
    /// pending, or the worker thread is dead (for tests and for a VMM that must quiesce the
    /// device; never called on a vCPU).
    pub fn wait_idle(&self) {
        self.shared.wait_quiet(&self.all_wqs());
    }

    /// Whether the worker thread died (the device is then halted for good).
    pub fn worker_dead(&self) -> bool {
        self.shared.dead.load(Ordering::Acquire)
    }

    /// Resets the device as a VM reset or FLR would: in-flight work is abandoned (this
    /// waits until the worker let go of it, at most one bounded step), a pending command
    /// is forgotten, the configuration, error state, IMS entries and interrupt handles are
    /// cleared. (The configuration space is the VMM's to reset.)
    pub fn reset(&mut self) {
        self.shared.cancel_command();
        self.reset_device();
        self.shared.wait_quiet(&self.all_wqs());
        self.shared.reset_shared();
        self.shared.cmdsts.store(0, Ordering::Release);
    }

    fn all_wqs(&self) -> Vec<usize> {
        (0..usize::from(self.cfg.wqs)).collect()
    }

    fn bus_master(&self) -> bool {
        self.config.u16_at(pci_reg::COMMAND) & pci_command::BUS_MASTER != 0
    }

    fn gencap(&self) -> u64 {
        gencap::OVERLAP_COPY
            | gencap::CACHE_CONTROL_MEM
            | gencap::CACHE_CONTROL_CACHE
            | gencap::CMD_CAP
            | (gencap::EVL_SUPPORT_DSA << gencap::EVL_SUPPORT_SHIFT)
            | (u64::from(MAX_XFER_SHIFT) << gencap::MAX_XFER_SHIFT_SHIFT)
            | (u64::from(MAX_BATCH_SHIFT) << gencap::MAX_BATCH_SHIFT_SHIFT)
            | (u64::from(self.cfg.ims / spec::ims::ENTRIES_PER_MULT) << gencap::MAX_IMS_MULT_SHIFT)
            | gencap::CONFIG_EN
    }

    fn wqcap(&self) -> u64 {
        u64::from(self.regs.geo.total_wq_size)
            | (u64::from(self.cfg.wqs) << wqcap::NUM_WQS_SHIFT)
            | wqcap::DEDICATED
            | wqcap::PRIORITY
            | wqcap::OCCUPANCY
    }

    fn grpcap(&self) -> u64 {
        u64::from(self.cfg.groups)
            | (u64::from(TOTAL_RDBUFS) << grpcap::TOTAL_RDBUFS_SHIFT)
            | grpcap::RDBUF_CTRL
            | grpcap::RDBUF_LIMIT
    }

    fn cmdcap(&self) -> u32 {
        spec::CMDCAP_BASE
            | if self.shared.handles_enabled {
                spec::CMDCAP_INT_HANDLES
            } else {
                0
            }
    }

    fn table_offsets(&self) -> [u64; 2] {
        let unit = spec::TABLE_MULT;
        let ims = if self.cfg.ims > 0 {
            IMS_OFFSET / unit
        } else {
            0
        };
        [
            (GRPCFG_OFFSET / unit)
                | ((WQCFG_OFFSET / unit) << 16)
                | ((MSIX_PERM_OFFSET / unit) << 32)
                | (ims << 48),
            0,
        ]
    }

    fn in_table(offset: u64, base: u64, len: u64) -> Option<u64> {
        offset.checked_sub(base).filter(|&o| o < len)
    }

    // ---- register file ------------------------------------------------------------

    fn read_reg32(&self, off: u64) -> u32 {
        let q = |v: u64| {
            if off.is_multiple_of(8) {
                v as u32
            } else {
                (v >> 32) as u32
            }
        };
        let geo = &self.regs.geo;
        if let Some(o) = Self::in_table(off, GRPCFG_OFFSET, geo.groups as u64 * grpcfg::SIZE) {
            let g = &self.regs.grpcfg[(o / grpcfg::SIZE) as usize];
            return q(g[((o % grpcfg::SIZE) / 8) as usize]);
        }
        if let Some(o) = Self::in_table(off, WQCFG_OFFSET, geo.wqs as u64 * wqcfg::SIZE) {
            let wq = (o / wqcfg::SIZE) as usize;
            let dw = ((o % wqcfg::SIZE) / 4) as usize;
            return match dw {
                6 => {
                    let occupancy = self.shared.occupancy(wq).min(0xffff);
                    let enabled = u32::from(self.wq_limits[wq].is_some());
                    occupancy | (enabled << wqcfg::STATE_SHIFT)
                }
                _ => self.regs.wqcfg[wq][dw],
            };
        }
        let vectors = self.cfg.msix_vectors() as u64;
        if let Some(o) = Self::in_table(off, MSIX_PERM_OFFSET, vectors * msix_perm::STRIDE) {
            if !o.is_multiple_of(msix_perm::STRIDE) {
                return 0;
            }
            return self.shared.msix_perm[(o / msix_perm::STRIDE) as usize].load(Ordering::Relaxed);
        }
        match off {
            reg::VERSION => spec::DSA_VERSION_1,
            0x10 | 0x14 => q(self.gencap()),
            0x20 | 0x24 => q(self.wqcap()),
            0x30 | 0x34 => q(self.grpcap()),
            0x38 | 0x3c => q(u64::from(self.cfg.engines)),
            0x40 | 0x44 => q(spec::OPCAP0),
            0x60..=0x6c => q(self.table_offsets()[((off - reg::TABLE_OFFSETS) / 8) as usize]),
            reg::GENCFG => self.regs.gencfg,
            reg::GENCTRL => self.shared.lock_errors().genctrl,
            reg::GENSTS => self.gensts(),
            reg::INTCAUSE => self.shared.lock_errors().intcause,
            reg::CMDSTS => self.shared.cmdsts.load(Ordering::Acquire),
            reg::CMDCAP => self.cmdcap(),
            0xc0..=0xdc => q(self.shared.lock_errors().swerr[((off - reg::SWERR) / 8) as usize]),
            0xe0..=0xec => q(self.regs.evl.cfg[((off - reg::EVLCFG) / 8) as usize]),
            0xf0 | 0xf4 => q(self.regs.evl.status()),
            _ => 0,
        }
    }

    fn write_reg32(&mut self, off: u64, v: u32) {
        let geo = self.regs.geo;
        if let Some(o) = Self::in_table(off, GRPCFG_OFFSET, geo.groups as u64 * grpcfg::SIZE) {
            if self.state != gensts::DISABLED {
                return;
            }
            let qi = ((o % grpcfg::SIZE) / 8) as usize;
            let mask = match qi {
                0..=4 => u64::MAX,
                5 => grpcfg::FLAGS_MASK,
                _ => 0,
            };
            let g = &mut self.regs.grpcfg[(o / grpcfg::SIZE) as usize][qi];
            let (shift, half) = if o.is_multiple_of(8) {
                (0, 0xffff_ffffu64)
            } else {
                (32, 0xffff_ffff << 32)
            };
            *g = (*g & !half) | ((u64::from(v) << shift) & half & mask);
            return;
        }
        if let Some(o) = Self::in_table(off, WQCFG_OFFSET, geo.wqs as u64 * wqcfg::SIZE) {
            let wq = (o / wqcfg::SIZE) as usize;
            if self.wq_limits[wq].is_some() {
                return;
            }
            let dw = ((o % wqcfg::SIZE) / 4) as usize;
            self.regs.wqcfg[wq][dw] = v & wqcfg::WMASK[dw];
            return;
        }
        let vectors = self.cfg.msix_vectors() as u64;
        if let Some(o) = Self::in_table(off, MSIX_PERM_OFFSET, vectors * msix_perm::STRIDE) {
            if o.is_multiple_of(msix_perm::STRIDE) {
                self.shared.msix_perm[(o / msix_perm::STRIDE) as usize]
                    .store(v & msix_perm::MASK, Ordering::Relaxed);
            }
            return;
        }
        match off {
            reg::GENCFG if self.state == gensts::DISABLED => self.regs.gencfg = v & gencfg::MASK,
            reg::GENCTRL => self.shared.lock_errors().genctrl = v & genctrl::MASK,
            reg::INTCAUSE => self.shared.lock_errors().intcause &= !(v & intcause::MASK),
            reg::CMD => self.command(v),
            reg::SWERR => {
                let mut e = self.shared.lock_errors();
                e.swerr[0] &= !u64::from(v & 0x3);
            }
            0xe0..=0xec if self.state == gensts::DISABLED => self
                .regs
                .evl
                .write_cfg(((off - reg::EVLCFG) / 4) as usize, v),
            0xf0 | 0xf4 => self
                .regs
                .evl
                .write_status(((off - reg::EVLSTATUS) / 4) as usize, v),
            _ => {}
        }
    }

    // ---- commands -----------------------------------------------------------------

    /// GENSTS: the vCPU-side state, or halted for good once the worker died.
    fn gensts(&self) -> u32 {
        if self.worker_dead() {
            gensts::HALT | (gensts::RESET_COLD << gensts::RESET_TYPE_SHIFT)
        } else {
            self.state
        }
    }

    fn command(&mut self, v: u32) {
        let operand = v & cmd::OPERAND_MASK;
        let code = (v >> cmd::CODE_SHIFT) & cmd::CODE_MASK;
        if self.shared.command_active() {
            debug!(
                "{}: command {code} ignored, the previous one is still active",
                self.name
            );
            return;
        }
        let step = match Command::from_code(code) {
            // A dead worker cannot be brought back: every command fails.
            Some(_) if self.worker_dead() => CommandStep::Done(cmd_err::HW_ERR, 0),
            // In the halt state only a reset is accepted.
            Some(c) if self.state == gensts::HALT && c != Command::ResetDevice => {
                CommandStep::Done(cmd_err::HW_ERR, 0)
            }
            Some(c) => self.run_command(c, operand),
            None => CommandStep::Done(cmd_err::INVAL_CMD, 0),
        };
        let int_req = v & cmd::INT_REQ != 0;
        match step {
            CommandStep::Done(err, result) => {
                debug!(
                    "{}: command {code} operand {operand:#x} -> err {err:#x} result {result:#x}",
                    self.name
                );
                self.shared.complete_command(CommandDone {
                    cmdsts: u32::from(err) | (u32::from(result) << CMDSTS_RESULT_SHIFT),
                    int_req,
                    finish: Finish::Status,
                });
            }
            CommandStep::Wait(wqs, finish) => {
                debug!(
                    "{}: command {code} operand {operand:#x} waits for WQs {wqs:?}",
                    self.name
                );
                let done = CommandDone {
                    cmdsts: u32::from(cmd_err::SUCCESS),
                    int_req,
                    finish,
                };
                self.shared.start_command(&wqs, done);
            }
        }
    }

    fn run_command(&mut self, c: Command, operand: u32) -> CommandStep {
        use CommandStep::{Done, Wait};
        let enabled = self.state == gensts::ENABLED;
        match c {
            Command::EnableDevice => {
                if enabled {
                    return Done(cmd_err::DEV_ENABLED, 0);
                }
                if !self.bus_master() {
                    return Done(cmd_err::BUSMASTER_EN, 0);
                }
                if let Err(e) = self.regs.check_device_enable() {
                    return Done(e, 0);
                }
                if self.regs.gencfg & gencfg::EVL_EN != 0 {
                    // The log starts empty.
                    let evl = &mut self.regs.evl;
                    (evl.head, evl.tail, evl.int_pending) = (0, 0, false);
                }
                self.state = gensts::ENABLED;
                Done(cmd_err::SUCCESS, 0)
            }
            Command::DisableDevice => {
                if !enabled {
                    return Done(cmd_err::DIS_DEV_EN, 0);
                }
                // No new descriptors; the accepted ones finish first.
                let all = self.all_wqs();
                self.disable_wqs(&all);
                self.state = gensts::DISABLED;
                Wait(all, Finish::Status)
            }
            // No descriptor carries a PASID, so draining a PASID drains everything.
            Command::DrainAll | Command::DrainPasid => Wait(self.all_wqs(), Finish::Status),
            Command::AbortAll => {
                let all = self.all_wqs();
                self.shared.abort_queued(&all);
                Wait(all, Finish::Status)
            }
            Command::AbortPasid => Done(cmd_err::SUCCESS, 0),
            Command::ResetDevice => {
                self.reset_device();
                Wait(self.all_wqs(), Finish::ResetDevice)
            }
            Command::EnableWq => {
                let wq = operand as usize;
                if wq >= usize::from(self.cfg.wqs) {
                    return Done(cmd_err::INVAL_WQIDX, 0);
                }
                if !enabled {
                    return Done(cmd_err::DEV_NOTEN, 0);
                }
                if self.wq_limits[wq].is_some() {
                    return Done(cmd_err::WQ_ENABLED, 0);
                }
                match self.regs.check_wq_enable(wq) {
                    Ok(l) => {
                        self.wq_limits[wq] = Some(l);
                        Done(cmd_err::SUCCESS, 0)
                    }
                    Err(e) => Done(e, 0),
                }
            }
            Command::DisableWq | Command::DrainWq | Command::AbortWq | Command::ResetWq => {
                let Some(wqs) = self.decode_wq_set(operand) else {
                    return Done(cmd_err::INVAL_WQIDX, 0);
                };
                if !enabled {
                    return Done(cmd_err::DEV_NOT_EN, 0);
                }
                match c {
                    Command::DisableWq => {
                        if wqs.iter().any(|&w| self.wq_limits[w].is_none()) {
                            return Done(cmd_err::DEV_NOT_EN, 0);
                        }
                        self.disable_wqs(&wqs);
                    }
                    Command::DrainWq => {}
                    Command::AbortWq => self.shared.abort_queued(&wqs),
                    _ => {
                        self.shared.abort_queued(&wqs);
                        self.disable_wqs(&wqs);
                        for &w in &wqs {
                            self.regs.wqcfg[w] = [0; wqcfg::DWORDS];
                        }
                    }
                }
                Wait(wqs, Finish::Status)
            }
            Command::RequestIntHandle => {
                let (err, result) = self.request_int_handle(operand);
                Done(err, result)
            }
            Command::ReleaseIntHandle => {
                if !self.shared.handles_enabled {
                    return Done(cmd_err::INVAL_CMD, 0);
                }
                let handle = (operand & 0xffff) as usize;
                if operand & cmd::INT_HANDLE_IMS != 0 || !self.shared.ims.release_handle(handle) {
                    return Done(cmd_err::INVAL_INT_IDX, 0);
                }
                Done(cmd_err::SUCCESS, 0)
            }
        }
    }

    /// WQ-set operand: bit n of 15:0 selects WQ `16 × operand[19:16] + n`.
    fn decode_wq_set(&self, operand: u32) -> Option<Vec<usize>> {
        let base = ((operand >> 16) & 0xf) as usize * 16;
        let wqs: Vec<usize> = (0..16)
            .filter(|b| operand & (1 << b) != 0)
            .map(|b| base + b)
            .collect();
        let ok = !wqs.is_empty() && wqs.iter().all(|&w| w < usize::from(self.cfg.wqs));
        ok.then_some(wqs)
    }

    fn disable_wqs(&mut self, wqs: &[usize]) {
        for &w in wqs {
            self.wq_limits[w] = None;
        }
        self.partials
            .retain(|&slot, _| !wqs.contains(&((slot / portal::WQ_STRIDE) as usize)));
    }

    fn request_int_handle(&mut self, operand: u32) -> (u8, u16) {
        if !self.shared.handles_enabled {
            return (cmd_err::INVAL_CMD, 0);
        }
        let index = (operand & 0xffff) as usize;
        if operand & cmd::INT_HANDLE_IMS != 0 || index == 0 || index >= self.cfg.msix_vectors() {
            return (cmd_err::INVAL_INT_IDX, 0);
        }
        let (message, masked) = self.msix_entry(index);
        match self.shared.ims.request_handle(index, message, masked) {
            Some(h) => (cmd_err::SUCCESS, h),
            None => (cmd_err::NO_HANDLE, 0),
        }
    }

    /// The vCPU side of a device reset: abandons all work (without waiting for the
    /// worker to let go of it) and clears the configuration. The shared part (error
    /// registers, MSIX_PERM, IMS) is cleared once the worker let go
    /// ([`Shared::reset_shared`]).
    fn reset_device(&mut self) {
        let all = self.all_wqs();
        self.shared.abort_queued(&all);
        self.disable_wqs(&all);
        self.partials.clear();
        self.regs.reset();
        self.state = gensts::DISABLED;
    }

    /// Bus mastering was turned off while the device was enabled: halt (software reset
    /// recovers), abandoning all work.
    fn halt(&mut self) {
        warn_ratelimited!(
            self.shared.log_limit,
            "{}: bus mastering disabled while enabled, halting",
            self.name
        );
        let all = self.all_wqs();
        self.shared.abort_queued(&all);
        self.disable_wqs(&all);
        self.state = gensts::HALT;
        let mut e = self.shared.lock_errors();
        if e.genctrl & genctrl::HALT_INT_EN != 0 {
            // The interrupt itself cannot be sent without bus mastering.
            e.intcause |= intcause::HALT;
        }
    }

    // ---- MSI-X entries followed by interrupt handles --------------------------------

    /// Message and effective mask of MSI-X entry `i`.
    fn msix_entry(&self, i: usize) -> (MsiMessage, bool) {
        let msix = self.shared.lock_msix();
        let base = MSIX_TABLE_OFFSET + i as u64 * MSIX_ENTRY_SIZE;
        let mut lo = [0u8; 8];
        let mut hi = [0u8; 8];
        msix.bar_read(spec::BAR_REGS, base, &mut lo);
        msix.bar_read(spec::BAR_REGS, base + 8, &mut hi);
        let (lo, hi) = (u64::from_le_bytes(lo), u64::from_le_bytes(hi));
        let message = MsiMessage::new(lo as u32, (lo >> 32) as u32, hi as u32);
        let ctrl = self.config.u16_at(self.msix_cap + 2);
        let masked =
            !msix.enabled() || ctrl & msix_control::FUNCTION_MASK != 0 || (hi >> 32) & 1 != 0;
        (message, masked)
    }

    fn follow_vector(&self, i: usize) {
        let (message, masked) = self.msix_entry(i);
        self.shared.ims.follow_vector(i, message, masked);
    }

    fn follow_all_vectors(&self) {
        for i in self.shared.ims.handle_sources() {
            self.follow_vector(i);
        }
    }

    // ---- portals --------------------------------------------------------------------

    fn portal_write(&mut self, offset: u64, data: &[u8]) {
        let wq = (offset / portal::WQ_STRIDE) as usize;
        let kind = match (offset % portal::WQ_STRIDE) / portal::PAGE {
            0 | 1 => PortalKind::MsiX,
            _ => PortalKind::Ims,
        };
        let slot = offset & !(portal::SLOT - 1);
        let within = offset % portal::SLOT;
        let ok_target =
            wq < usize::from(self.cfg.wqs) && (kind == PortalKind::MsiX || self.cfg.ims > 0);
        let desc = match (ok_target, data.len(), within) {
            (true, 64, 0) => {
                self.partials.remove(&slot);
                let mut d = [0u8; 64];
                d.copy_from_slice(data);
                Some(d)
            }
            (true, 8, w) if w % 8 == 0 => self.assemble(slot, (w / 8) as u8, data),
            _ => {
                self.drop_write();
                None
            }
        };
        if let Some(d) = desc {
            self.submit(wq, kind, d);
        }
    }

    fn drop_write(&self) {
        self.shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Collects qword `k` of slot `slot`; returns the descriptor once all eight arrived.
    /// Qword 0 starts a new descriptor; a repeated qword discards the partial one.
    fn assemble(&mut self, slot: u64, k: u8, data: &[u8]) -> Option<[u8; 64]> {
        if self.partials.len() >= MAX_PARTIAL_SLOTS && !self.partials.contains_key(&slot) {
            self.partials.clear();
        }
        let p = self.partials.entry(slot).or_insert(Partial {
            data: [0; 64],
            mask: 0,
        });
        if k == 0 || p.mask & (1 << k) != 0 {
            if p.mask != 0 {
                self.shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
            p.mask = 0;
        }
        let k = usize::from(k);
        p.data[k * 8..k * 8 + 8].copy_from_slice(data);
        p.mask |= 1 << k;
        if p.mask == 0xff {
            let d = p.data;
            self.partials.remove(&slot);
            return Some(d);
        }
        None
    }

    fn submit(&mut self, wq: usize, portal: PortalKind, desc: [u8; 64]) {
        let limits = match self.wq_limits[wq] {
            Some(l) if self.state == gensts::ENABLED && self.bus_master() => l,
            _ => {
                self.drop_write();
                return;
            }
        };
        let job = Job {
            wq,
            generation: self.shared.generations[wq].load(Ordering::Acquire),
            desc,
            portal,
            limits,
        };
        self.shared.enqueue(job, self.regs.wq_size(wq));
    }
}

impl PciDevice for Dsa {
    fn name(&self) -> &str {
        &self.name
    }

    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    fn write_config(&mut self, offset: usize, data: &[u8]) {
        if !self.config.guest_write(offset, data) {
            return;
        }
        if (self.msix_cap..self.msix_cap + 12).contains(&offset) {
            self.shared.lock_msix().update(&self.config);
            self.follow_all_vectors();
        }
        if self.state == gensts::ENABLED && !self.bus_master() {
            self.halt();
        }
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if bar != spec::BAR_REGS || offset >= self.cfg.bar0_size() {
            return;
        }
        if self.shared.lock_msix().bar_read(bar, offset, data) {
            return;
        }
        let ims_len = u64::from(self.cfg.ims) * spec::ims::ENTRY_SIZE;
        if let Some(o) = Self::in_table(offset, IMS_OFFSET, ims_len) {
            self.shared.ims.read(o, data);
            return;
        }
        match data.len() {
            4 if offset.is_multiple_of(4) => {
                data.copy_from_slice(&self.read_reg32(offset).to_le_bytes())
            }
            8 if offset.is_multiple_of(8) => {
                let lo = self.read_reg32(offset);
                let hi = self.read_reg32(offset + 4);
                data[..4].copy_from_slice(&lo.to_le_bytes());
                data[4..].copy_from_slice(&hi.to_le_bytes());
            }
            _ => {}
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if bar == spec::BAR_PORTALS {
            self.portal_write(offset, data);
            return;
        }
        if bar != spec::BAR_REGS || offset >= self.cfg.bar0_size() {
            return;
        }
        let table_len = self.cfg.msix_vectors() as u64 * MSIX_ENTRY_SIZE;
        let claimed = self.shared.lock_msix().bar_write(bar, offset, data);
        if claimed {
            if let Some(o) = Self::in_table(offset, MSIX_TABLE_OFFSET, table_len) {
                self.follow_vector((o / MSIX_ENTRY_SIZE) as usize);
            }
            return;
        }
        let ims_len = u64::from(self.cfg.ims) * spec::ims::ENTRY_SIZE;
        if let Some(o) = Self::in_table(offset, IMS_OFFSET, ims_len) {
            self.shared.ims.write(o, data);
            return;
        }
        match data.len() {
            4 if offset.is_multiple_of(4) => {
                let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
                self.write_reg32(offset, v);
            }
            8 if offset.is_multiple_of(8) => {
                let lo = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
                let hi = u32::from_le_bytes([data[4], data[5], data[6], data[7]]);
                self.write_reg32(offset, lo);
                self.write_reg32(offset + 4, hi);
            }
            _ => {}
        }
    }
}

impl Drop for Dsa {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::Release);
        // A test that failed while the worker was paused must not hang here.
        #[cfg(test)]
        self.shared.gate.release();
        // Wake the worker; the queue lock orders the flag before its next wait.
        drop(self.shared.lock_queue());
        self.shared.work.notify_all();
        self.shared.idle.notify_all();
        if let Some(w) = self.worker.take() {
            if w.join().is_err() {
                log::warn!("{}: worker thread panicked", self.name);
            }
        }
    }
}
