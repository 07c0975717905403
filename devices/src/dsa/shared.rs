//! State shared between the vCPU side (registers, commands, portals) and the worker thread
//! that executes descriptors: the work queue, per-WQ abort generations, the error
//! registers, the interrupt storage (MSI-X capability, MSIX_PERM, IMS) and counters.
//!
//! Lock order: `queue` and `errors` are never held while taking `msix` or the IMS table,
//! and the vCPU side holds no lock while it waits for the worker.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

use pci::MsixCapability;
use vm_memory::GuestMemoryMmap;

use super::ims::Ims;
use super::spec::{genctrl, intcause, msix_perm, swerr};

/// Which interrupt storage a portal's descriptors name with `int_handle`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PortalKind {
    /// MSI-X portals: an MSI-X table index, or a handle when handles are advertised.
    MsiX,
    /// IMS portals: an IMS table index.
    Ims,
}

/// Per-WQ limits captured when the WQ was enabled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WqLimits {
    /// Largest transfer size in bytes.
    pub max_xfer: u64,
    /// Largest batch descriptor count.
    pub max_batch: u32,
    /// WQ is privileged (recorded in SWERR).
    pub privileged: bool,
}

/// One submitted descriptor.
pub(crate) struct Job {
    pub wq: usize,
    pub generation: u64,
    pub desc: [u8; 64],
    pub portal: PortalKind,
    pub limits: WqLimits,
}

pub(crate) struct QueueState {
    pub jobs: VecDeque<Job>,
    /// Per WQ: queued plus executing descriptors.
    pub outstanding: Vec<u32>,
}

/// SWERR, INTCAUSE and GENCTRL: written by both sides.
pub(crate) struct ErrorState {
    pub swerr: [u64; 4],
    pub intcause: u32,
    pub genctrl: u32,
}

/// A software error to record in SWERR.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct SwError {
    pub code: u8,
    pub wq: Option<usize>,
    pub opcode: Option<u8>,
    pub batch_idx: Option<u16>,
    pub privileged: bool,
    pub write_fault: bool,
    pub fault_addr: u64,
    pub invalid_flags: u32,
}

/// Counters of the data path.
#[derive(Default)]
pub(crate) struct Counters {
    pub submitted: AtomicU64,
    pub dropped: AtomicU64,
    pub completed: AtomicU64,
    pub abandoned: AtomicU64,
    pub swerrs: AtomicU64,
}

pub(crate) struct Shared {
    pub mem: GuestMemoryMmap,
    pub msix: Mutex<MsixCapability>,
    pub msix_perm: Vec<AtomicU32>,
    pub ims: Ims,
    pub handles_enabled: bool,
    pub queue: Mutex<QueueState>,
    pub work: Condvar,
    pub idle: Condvar,
    pub generations: Vec<AtomicU64>,
    pub stopping: AtomicBool,
    pub errors: Mutex<ErrorState>,
    pub counters: Counters,
    /// Tests hold this to keep the worker from executing the job it took.
    #[cfg(test)]
    pub hold: Mutex<()>,
}

impl Shared {
    pub(crate) fn lock_queue(&self) -> MutexGuard<'_, QueueState> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn lock_errors(&self) -> MutexGuard<'_, ErrorState> {
        self.errors.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn lock_msix(&self) -> MutexGuard<'_, MsixCapability> {
        self.msix.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the job's WQ was aborted (or the device is going away) since submission.
    pub(crate) fn aborted(&self, job: &Job) -> bool {
        self.stopping.load(Ordering::Acquire)
            || self.generations[job.wq].load(Ordering::Acquire) != job.generation
    }

    /// Queues a descriptor unless the WQ already holds `size` of them. Returns whether
    /// it was accepted.
    pub(crate) fn enqueue(&self, job: Job, size: u32) -> bool {
        let mut q = self.lock_queue();
        if q.outstanding[job.wq] >= size {
            drop(q);
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        q.outstanding[job.wq] += 1;
        q.jobs.push_back(job);
        drop(q);
        self.counters.submitted.fetch_add(1, Ordering::Relaxed);
        self.work.notify_one();
        true
    }

    /// Outstanding descriptors of WQ `wq`.
    pub(crate) fn occupancy(&self, wq: usize) -> u32 {
        self.lock_queue().outstanding.get(wq).copied().unwrap_or(0)
    }

    /// Waits until the WQs selected by `wqs` have nothing outstanding.
    pub(crate) fn drain(&self, wqs: &[usize]) {
        let mut q = self.lock_queue();
        while wqs.iter().any(|&w| q.outstanding[w] != 0) {
            q = self.idle.wait(q).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Abandons everything queued or executing on the WQs `wqs` (no completion records,
    /// no interrupts), and waits until the worker has let go of them.
    pub(crate) fn abort(&self, wqs: &[usize]) {
        for &w in wqs {
            self.generations[w].fetch_add(1, Ordering::AcqRel);
        }
        let mut q = self.lock_queue();
        let before = q.jobs.len();
        let mut removed = vec![0u32; q.outstanding.len()];
        q.jobs.retain(|j| {
            let hit = wqs.contains(&j.wq);
            if hit {
                removed[j.wq] += 1;
            }
            !hit
        });
        for (o, r) in q.outstanding.iter_mut().zip(&removed) {
            *o -= r;
        }
        let n = before - q.jobs.len();
        drop(q);
        self.counters
            .abandoned
            .fetch_add(n as u64, Ordering::Relaxed);
        self.idle.notify_all();
        self.drain(wqs);
    }

    /// Records a software error in SWERR (or its overflow bit) and raises the software
    /// error interrupt on vector 0 if GENCTRL enables it.
    pub(crate) fn report_swerr(&self, e: SwError) {
        self.counters.swerrs.fetch_add(1, Ordering::Relaxed);
        let mut st = self.lock_errors();
        if st.swerr[0] & swerr::VALID != 0 {
            st.swerr[0] |= swerr::OVERFLOW;
        } else {
            let mut qw0 = swerr::VALID | (u64::from(e.code) << swerr::ERROR_SHIFT);
            if let Some(wq) = e.wq {
                qw0 |= swerr::WQ_IDX_VALID | ((wq as u64 & 0xff) << swerr::WQ_IDX_SHIFT);
            }
            if let Some(op) = e.opcode {
                qw0 |= swerr::DESC_VALID | (u64::from(op) << swerr::OPCODE_SHIFT);
            }
            let mut qw1 = u64::from(e.invalid_flags) << 32;
            if let Some(i) = e.batch_idx {
                qw0 |= swerr::BATCH;
                qw1 |= u64::from(i);
            }
            if e.write_fault {
                qw0 |= swerr::FAULT_RW;
            }
            if e.privileged {
                qw0 |= swerr::PRIV;
            }
            st.swerr = [qw0, qw1, e.fault_addr, 0];
        }
        let notify = st.genctrl & genctrl::SOFTERR_INT_EN != 0;
        if notify {
            st.intcause |= intcause::ERR;
        }
        drop(st);
        if notify {
            self.lock_msix().fire(0);
        }
    }

    /// Whether a completion interrupt through `handle` on a `portal` portal can be
    /// delivered (else the descriptor fails with 0x19).
    pub(crate) fn int_handle_valid(&self, portal: PortalKind, handle: u16) -> bool {
        let h = usize::from(handle);
        match portal {
            PortalKind::MsiX if self.handles_enabled => self.ims.is_handle(h),
            PortalKind::MsiX => h < self.msix_perm.len(),
            PortalKind::Ims => h < self.ims.len(),
        }
    }

    /// Raises the completion interrupt for `handle` on a `portal` portal.
    pub(crate) fn completion_interrupt(&self, portal: PortalKind, handle: u16) {
        let h = usize::from(handle);
        match portal {
            PortalKind::MsiX if self.handles_enabled => {
                if self.ims.is_handle(h) {
                    self.ims.fire(h);
                }
            }
            PortalKind::MsiX => {
                let perm = self
                    .msix_perm
                    .get(h)
                    .map_or(msix_perm::IGNORE, |p| p.load(Ordering::Relaxed));
                // No descriptor carries a PASID, so a PASID-restricted entry never matches.
                if perm & (msix_perm::IGNORE | msix_perm::PASID_EN) == 0 {
                    self.lock_msix().fire(h);
                }
            }
            PortalKind::Ims => {
                self.ims.fire(h);
            }
        }
    }
}

/// The worker thread: executes queued descriptors in order until told to stop.
pub(crate) fn worker_loop(shared: &Shared) {
    loop {
        let mut q = shared.lock_queue();
        let job = loop {
            if shared.stopping.load(Ordering::Acquire) {
                return;
            }
            if let Some(j) = q.jobs.pop_front() {
                break j;
            }
            q = shared.work.wait(q).unwrap_or_else(|e| e.into_inner());
        };
        drop(q);
        #[cfg(test)]
        let _hold = shared.hold.lock().unwrap_or_else(|e| e.into_inner());
        if shared.aborted(&job) {
            shared.counters.abandoned.fetch_add(1, Ordering::Relaxed);
        } else {
            super::engine::execute(shared, &job);
        }
        let mut q = shared.lock_queue();
        q.outstanding[job.wq] = q.outstanding[job.wq].saturating_sub(1);
        drop(q);
        shared.idle.notify_all();
    }
}
