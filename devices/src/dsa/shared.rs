//! State shared between the vCPU side (registers, commands, portals) and the worker thread
//! that executes descriptors: the work queue, per-WQ abort generations, the error
//! registers, the interrupt storage (MSI-X capability, MSIX_PERM, IMS) and counters.
//!
//! Device commands that wait for descriptors (drain, abort, disable, reset) complete
//! asynchronously: the CMD write records a [`PendingCommand`] and sets CMDSTS.active, and
//! whoever retires the last descriptor the command waits for (the worker, or the vCPU that
//! removed queued descriptors) writes CMDSTS and raises the completion interrupt. No vCPU
//! ever waits for the worker.
//!
//! If the worker thread dies (a panic), [`worker_loop`]'s guard retires everything it
//! owned, fails the pending command with CMDSTS 0x03 and halts the device, so nothing
//! waits for it forever.
//!
//! Lock order: `queue` and `errors` are never held while taking `msix` or the IMS table.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use interrupt::RateLimiter;
use log::error;
use pci::MsixCapability;
use vm_memory::GuestMemoryMmap;

use super::ims::Ims;
use super::spec::{cmd_err, genctrl, intcause, msix_perm, status, swerr, CMDSTS_ACTIVE};

/// Guest-triggerable warnings of one device: this many at once, then one per
/// [`LOG_INTERVAL`].
pub(crate) const LOG_BURST: u32 = 10;
/// See [`LOG_BURST`].
pub(crate) const LOG_INTERVAL: Duration = Duration::from_secs(5);

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
    /// Per WQ: descriptors accepted so far.
    pub accepted: Vec<u64>,
    /// Per WQ: descriptors retired so far (completed or abandoned). Descriptors of one WQ
    /// retire in submission order, so `accepted - retired` are queued or executing.
    pub retired: Vec<u64>,
    /// The device command waiting for descriptors to retire (at most one: CMD writes are
    /// ignored while CMDSTS.active is set).
    pub pending: Option<PendingCommand>,
}

impl QueueState {
    /// Queued plus executing descriptors of WQ `wq`.
    pub(crate) fn outstanding(&self, wq: usize) -> u64 {
        self.accepted[wq] - self.retired[wq]
    }

    /// Retires `n` descriptors of WQ `wq`; returns the pending command if that was the
    /// last thing it waited for (the caller completes it after dropping the lock).
    fn retire(&mut self, wq: usize, n: u64) -> Option<CommandDone> {
        self.retired[wq] += n;
        self.take_ready()
    }

    /// The pending command, if everything it waits for has retired.
    fn take_ready(&mut self) -> Option<CommandDone> {
        let p = self.pending.as_mut()?;
        let ready = !p.completing
            && p.targets
                .iter()
                .all(|&(w, target)| self.retired[w] >= target);
        if !ready {
            return None;
        }
        p.completing = true;
        Some(p.done)
    }
}

/// What a device command does once everything it waited for has retired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Finish {
    /// Only CMDSTS and the interrupt.
    Status,
    /// Reset Device: also clear SWERR, INTCAUSE, GENCTRL, MSIX_PERM and the IMS table
    /// (after the aborted descriptors let go of them).
    ResetDevice,
}

/// The completion of a device command.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CommandDone {
    /// CMDSTS without the active bit.
    pub cmdsts: u32,
    /// CMD.int_req: set INTCAUSE.cmd and fire MSI-X vector 0.
    pub int_req: bool,
    pub finish: Finish,
}

/// A device command waiting for descriptors.
pub(crate) struct PendingCommand {
    /// `(wq, n)`: done when WQ `wq` has retired `n` descriptors (those accepted before the
    /// command).
    pub targets: Vec<(usize, u64)>,
    pub done: CommandDone,
    /// A thread is completing it (taken out of the wait, not yet written).
    pub completing: bool,
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
    /// The worker thread died: the device is halted for good.
    pub dead: AtomicBool,
    /// CMDSTS (written by whoever completes a command).
    pub cmdsts: AtomicU32,
    pub errors: Mutex<ErrorState>,
    pub counters: Counters,
    /// Guest-triggerable warnings (halts, IMS programming errors).
    pub log_limit: RateLimiter,
    /// Tests hold this to keep the worker from executing the job it took.
    #[cfg(test)]
    pub hold: Mutex<()>,
    /// Tests pause or kill the worker at a given step.
    #[cfg(test)]
    pub gate: TestGate,
}

/// Test hook: counts worker steps (one per job start, data chunk and batch element) and
/// pauses the worker at step `pause_at` or panics it at step `panic_at`.
#[cfg(test)]
#[derive(Default)]
pub(crate) struct TestGate {
    pub state: Mutex<GateState>,
    pub cv: Condvar,
}

#[cfg(test)]
#[derive(Default)]
pub(crate) struct GateState {
    pub steps: u64,
    pub pause_at: Option<u64>,
    pub paused: bool,
    pub panic_at: Option<u64>,
}

#[cfg(test)]
impl TestGate {
    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Called by the worker at every step.
    fn step(&self) {
        let mut g = self.lock();
        g.steps += 1;
        let n = g.steps;
        if g.panic_at == Some(n) {
            drop(g);
            panic!("DSA test hook: worker panics at step {n}");
        }
        if g.pause_at == Some(n) {
            g.paused = true;
            self.cv.notify_all();
            while g.pause_at == Some(n) {
                g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner());
            }
            g.paused = false;
        }
    }

    /// Makes the worker stop at its `n`th step from now (`pause`) and/or panic at its
    /// `m`th step from now.
    pub(crate) fn arm(&self, pause: Option<u64>, panic: Option<u64>) {
        let mut g = self.lock();
        let base = g.steps;
        g.pause_at = pause.map(|n| base + n);
        g.panic_at = panic.map(|m| base + m);
    }

    /// Waits until the worker stopped at the armed step.
    pub(crate) fn wait_paused(&self) {
        let mut g = self.lock();
        while !g.paused {
            g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Lets a paused worker go on.
    pub(crate) fn release(&self) {
        self.lock().pause_at = None;
        self.cv.notify_all();
    }
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
        if q.outstanding(job.wq) >= u64::from(size) || self.dead.load(Ordering::Acquire) {
            drop(q);
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        q.accepted[job.wq] += 1;
        q.jobs.push_back(job);
        drop(q);
        self.counters.submitted.fetch_add(1, Ordering::Relaxed);
        self.work.notify_one();
        true
    }

    /// Outstanding descriptors of WQ `wq`.
    pub(crate) fn occupancy(&self, wq: usize) -> u32 {
        let q = self.lock_queue();
        if wq < q.accepted.len() {
            u32::try_from(q.outstanding(wq)).unwrap_or(u32::MAX)
        } else {
            0
        }
    }

    /// Whether CMDSTS.active is set (a command is pending).
    pub(crate) fn command_active(&self) -> bool {
        self.cmdsts.load(Ordering::Acquire) & CMDSTS_ACTIVE != 0
    }

    /// Starts a device command that completes with `done` once every descriptor accepted
    /// on the WQs `wqs` so far has retired: at once if none is outstanding, else later
    /// on whichever thread retires the last one (CMDSTS.active meanwhile).
    pub(crate) fn start_command(&self, wqs: &[usize], done: CommandDone) {
        let mut q = self.lock_queue();
        let targets: Vec<(usize, u64)> = wqs
            .iter()
            .filter(|&&w| q.outstanding(w) != 0)
            .map(|&w| (w, q.accepted[w]))
            .collect();
        if targets.is_empty() || self.dead.load(Ordering::Acquire) {
            drop(q);
            return self.complete_command(done);
        }
        self.cmdsts.store(CMDSTS_ACTIVE, Ordering::Release);
        q.pending = Some(PendingCommand {
            targets,
            done,
            completing: false,
        });
    }

    /// Writes a command's result: the deferred part of the command, then CMDSTS (active
    /// clear), then INTCAUSE.cmd and MSI-X vector 0 if the guest asked for an interrupt.
    pub(crate) fn complete_command(&self, done: CommandDone) {
        if done.finish == Finish::ResetDevice {
            self.reset_shared();
        }
        self.cmdsts.store(done.cmdsts, Ordering::Release);
        if done.int_req {
            self.lock_errors().intcause |= intcause::CMD;
            self.lock_msix().fire(0);
        }
        let mut q = self.lock_queue();
        if q.pending.as_ref().is_some_and(|p| p.completing) {
            q.pending = None;
        }
        drop(q);
        self.idle.notify_all();
    }

    /// Completes the pending command if `done` says it is ready.
    fn complete_ready(&self, done: Option<CommandDone>) {
        if let Some(d) = done {
            self.complete_command(d);
        }
    }

    /// Forgets a pending command that nobody is completing yet (VM reset), and waits for
    /// one that somebody is.
    pub(crate) fn cancel_command(&self) {
        let mut q = self.lock_queue();
        if q.pending.as_ref().is_some_and(|p| !p.completing) {
            q.pending = None;
        }
        while q.pending.is_some() && !self.dead.load(Ordering::Acquire) {
            q = self.idle.wait(q).unwrap_or_else(|e| e.into_inner());
        }
        q.pending = None;
        self.cmdsts.store(0, Ordering::Release);
    }

    /// Device state owned by this shared part, cleared by Reset Device.
    pub(crate) fn reset_shared(&self) {
        {
            let mut e = self.lock_errors();
            e.swerr = [0; 4];
            e.intcause = 0;
            e.genctrl = 0;
        }
        for p in &self.msix_perm {
            p.store(0, Ordering::Relaxed);
        }
        self.ims.reset();
    }

    /// Waits until the WQs selected by `wqs` have nothing outstanding and no command is
    /// pending, or the worker is dead. Only for the VMM and tests: never on a vCPU.
    pub(crate) fn wait_quiet(&self, wqs: &[usize]) {
        let mut q = self.lock_queue();
        while !self.dead.load(Ordering::Acquire)
            && (q.pending.is_some() || wqs.iter().any(|&w| q.outstanding(w) != 0))
        {
            q = self.idle.wait(q).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Abandons everything queued on the WQs `wqs` and tells the worker to let go of the
    /// descriptor it executes there (it checks between bounded steps). Does not wait.
    pub(crate) fn abort_queued(&self, wqs: &[usize]) {
        for &w in wqs {
            self.generations[w].fetch_add(1, Ordering::AcqRel);
        }
        let mut q = self.lock_queue();
        let before = q.jobs.len();
        let mut removed = vec![0u64; q.accepted.len()];
        q.jobs.retain(|j| {
            let hit = wqs.contains(&j.wq);
            if hit {
                removed[j.wq] += 1;
            }
            !hit
        });
        let mut done = None;
        for (w, &r) in removed.iter().enumerate() {
            if r != 0 {
                done = done.or(q.retire(w, r));
            }
        }
        let n = before - q.jobs.len();
        drop(q);
        self.counters
            .abandoned
            .fetch_add(n as u64, Ordering::Relaxed);
        self.complete_ready(done);
        self.idle.notify_all();
    }

    /// The worker died: nothing it owned will ever retire, so retire it all, fail the
    /// pending command (CMDSTS 0x03, a hardware error) and halt the device (GENSTS, SWERR
    /// and the halt interrupt).
    fn worker_died(&self) {
        let mut q = self.lock_queue();
        self.dead.store(true, Ordering::Release);
        let abandoned: u64 = (0..q.accepted.len()).map(|w| q.outstanding(w)).sum();
        q.jobs.clear();
        q.retired = q.accepted.clone();
        let (pending, mid_completion) = match &mut q.pending {
            Some(p) if !p.completing => {
                p.completing = true;
                (Some(p.done), false)
            }
            Some(_) => (None, true),
            None => (None, false),
        };
        drop(q);
        if mid_completion {
            // The worker may have died completing it: never leave CMDSTS.active set (a
            // vCPU completing it meanwhile overwrites this with its result).
            let _ = self
                .cmdsts
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                    (v & CMDSTS_ACTIVE != 0).then_some(u32::from(cmd_err::HW_ERR))
                });
        }
        self.counters
            .abandoned
            .fetch_add(abandoned, Ordering::Relaxed);
        error!("DSA worker thread died: device halted, {abandoned} descriptors abandoned");
        self.report_swerr(SwError {
            code: status::HW_ERR1,
            ..Default::default()
        });
        let halt_int = {
            let mut e = self.lock_errors();
            let on = e.genctrl & genctrl::HALT_INT_EN != 0;
            if on {
                e.intcause |= intcause::HALT;
            }
            on
        };
        if halt_int {
            self.lock_msix().fire(0);
        }
        if let Some(d) = pending {
            self.complete_command(CommandDone {
                cmdsts: u32::from(cmd_err::HW_ERR),
                finish: Finish::Status,
                ..d
            });
        }
        self.idle.notify_all();
    }

    /// One bounded step of the worker (a job's start, a data chunk, a batch element).
    /// False when the job was aborted and must be let go.
    pub(crate) fn step(&self, job: &Job) -> bool {
        #[cfg(test)]
        self.gate.step();
        !self.aborted(job)
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

/// Halts the device if the worker thread unwinds.
struct DeathWatch<'a>(&'a Shared);

impl Drop for DeathWatch<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.worker_died();
        }
    }
}

/// The worker thread: executes queued descriptors in order until told to stop.
pub(crate) fn worker_loop(shared: &Shared) {
    let _watch = DeathWatch(shared);
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
        let hold = shared.hold.lock().unwrap_or_else(|e| e.into_inner());
        #[cfg(test)]
        drop(hold);
        if !shared.step(&job) {
            shared.counters.abandoned.fetch_add(1, Ordering::Relaxed);
        } else {
            super::engine::execute(shared, &job);
        }
        let done = shared.lock_queue().retire(job.wq, 1);
        shared.complete_ready(done);
        shared.idle.notify_all();
    }
}
