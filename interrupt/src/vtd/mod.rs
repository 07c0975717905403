//! An emulated Intel VT-d remapping unit that does interrupt remapping only, as the remap
//! layer of the interrupt hierarchy.
//!
//! The unit reports `CAP.SAGAW = 0`: Linux then logs "No supported address widths. Not
//! attempting DMA translation." and never enables DMA remapping on it, while interrupt
//! remapping (x2APIC mode, queued invalidation) works. Context-cache and IOTLB
//! invalidations are accepted and complete at once.
//!
//! - Registers ([`spec`] holds the layouts): 1/2/4/8-byte accesses at any alignment; the
//!   GCMD/GSTS handshake is synchronous (persistent bits act on differences, SIRTP latches
//!   IRTA, QIE latches IQA).
//! - Queued invalidation is processed synchronously on IQT writes; IEC descriptors
//!   re-translate exactly the vectors whose IRTEs they name, and a wait descriptor writes
//!   its status and raises the completion event only after the re-translation the
//!   invalidations before it caused is done (the new routes are in the vector layer).
//! - Translation ([`RemapLayer::remap`]) reads the IRTE from guest memory in one 16-byte
//!   access and reports faults 0x20–0x26 through the fault recording registers and the fault
//!   event MSI.
//!
//! Locking: the unit's state sits behind one mutex. The hierarchy calls [`VtdUnit::remap`]
//! with its own locks held, so the unit never calls into the hierarchy (re-translation) or
//! the vector layer (event MSIs) with its mutex held: work is collected as `Effects` under
//! the lock and carried out after releasing it. A second mutex, taken first, serialises
//! register writes with the work they trigger, so queue order holds across vCPUs.

mod dmar;
mod fault;
mod irte;
mod qi;
mod regs;
pub mod spec;

#[cfg(test)]
mod tests;

use std::sync::{Arc, LazyLock, Mutex, MutexGuard, Weak};
use std::time::Duration;
use vm_memory::GuestMemoryMmap;

use crate::hierarchy::InterruptHierarchy;
use crate::msi::MsiMessage;
use crate::ratelimit::RateLimiter;
use crate::remap::{IrteRanges, RemapLayer, RemapOutcome, RequesterId, RetranslateScope};
use crate::vector::VectorLayer;
use crate::warn_ratelimited;

use irte::Translation;
use regs::State;
use spec::{cap, REGISTER_PAGE_SIZE};

/// Default register base, as QEMU places its unit.
pub const DEFAULT_REGISTER_BASE: u64 = 0xFED9_0000;

/// Configuration of a [`VtdUnit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VtdConfig {
    /// Guest-physical address of the 4 KiB register page (0xFED9_0000 by convention).
    pub register_base: u64,
    /// Source ID the IOAPIC's requests carry (declared in the DMAR IOAPIC device scope).
    pub ioapic_source_id: RequesterId,
    /// Number of fault recording registers (clamped to 1..=224 so they fit the page).
    pub num_fault_records: u8,
}

impl Default for VtdConfig {
    /// Base 0xFED9_0000, IOAPIC at F0:1F.0 (the usual Intel chipset source ID), 8 records.
    fn default() -> Self {
        Self {
            register_base: DEFAULT_REGISTER_BASE,
            ioapic_source_id: RequesterId::pci(0xF0, 0x1F, 0),
            num_fault_records: 8,
        }
    }
}

/// Work decided under the state lock and carried out after releasing it.
#[derive(Debug, Default)]
struct Effects {
    /// Re-translate every vector (global invalidation, table pointer or enable changes).
    retranslate_all: bool,
    /// Re-translate exactly the vectors selecting these IRTEs (index-selective
    /// invalidations; ranges merge only when they overlap or abut).
    retranslate: IrteRanges,
    /// Event messages (fault, invalidation completion) to send.
    msis: Vec<MsiMessage>,
    /// The invalidation queue has work: drain it once the register write is done.
    drain_queue: bool,
}

impl Effects {
    fn retranslate_all(&mut self) {
        self.retranslate_all = true;
        self.retranslate.clear();
    }

    fn retranslate(&mut self, scope: RetranslateScope) {
        match scope {
            RetranslateScope::All => self.retranslate_all(),
            RetranslateScope::IrteRange { .. } if self.retranslate_all => {}
            RetranslateScope::IrteRange { start, count } => self.retranslate.insert(start, count),
        }
    }

    /// Whether re-translation is pending (a wait descriptor must not complete before it).
    fn retranslation_pending(&self) -> bool {
        self.retranslate_all || !self.retranslate.is_empty()
    }
}

/// Interrupt-remapping faults (info level; a guest can fault on every interrupt request).
static FAULT_LOG: LazyLock<RateLimiter> =
    LazyLock::new(|| RateLimiter::new(10, Duration::from_secs(1)));

/// Event-interrupt delivery failures (a guest can program an undeliverable event message
/// and trigger events in a loop).
static EVENT_FAILURES: LazyLock<RateLimiter> =
    LazyLock::new(|| RateLimiter::new(10, Duration::from_secs(1)));

/// An emulated VT-d unit doing interrupt remapping only. `Send + Sync`; all state is behind
/// an internal mutex.
pub struct VtdUnit {
    mem: GuestMemoryMmap,
    vectors: Arc<dyn VectorLayer>,
    config: VtdConfig,
    state: Mutex<State>,
    hierarchy: Mutex<Weak<InterruptHierarchy>>,
    /// Serialises register writes together with the work they trigger (queue draining,
    /// re-translation), so a wait descriptor submitted by one vCPU cannot complete while
    /// re-translation ordered before it is still running on another. Taken before `state`.
    writes: Mutex<()>,
}

impl VtdUnit {
    /// Creates the unit in its reset state (everything disabled, event interrupts masked).
    /// `mem` is where IRTEs, descriptors and wait status live; event interrupts go through
    /// `vectors`.
    pub fn new(
        mem: GuestMemoryMmap,
        vectors: Arc<dyn VectorLayer>,
        config: VtdConfig,
    ) -> Arc<Self> {
        let records = u64::from(config.num_fault_records).clamp(1, cap::MAX_FAULT_RECORDS);
        let config = VtdConfig {
            num_fault_records: records as u8,
            ..config
        };
        Arc::new(Self {
            mem,
            vectors,
            config,
            state: Mutex::new(State::new(records as usize)),
            hierarchy: Mutex::new(Weak::new()),
            writes: Mutex::new(()),
        })
    }

    /// Sets the hierarchy whose vectors are re-translated when the remapping state
    /// changes (invalidation, table pointer, enable bits).
    pub fn set_hierarchy(&self, hierarchy: Weak<InterruptHierarchy>) {
        *self.hierarchy.lock().unwrap_or_else(|e| e.into_inner()) = hierarchy;
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock means a panic elsewhere mid-update; registers stay well-formed.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads `data.len()` bytes at `offset` within the register page. Any size and
    /// alignment; bytes of unknown registers and beyond the page read 0.
    pub fn mmio_read(&self, offset: u64, data: &mut [u8]) {
        let state = self.lock();
        let mut cached: Option<(u64, u32)> = None;
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = 0;
            let Some(off) = offset.checked_add(i as u64) else {
                continue;
            };
            if off >= REGISTER_PAGE_SIZE {
                continue;
            }
            let aligned = off & !3;
            let dword = match cached {
                Some((o, v)) if o == aligned => v,
                _ => {
                    let v = state.read_dword(aligned);
                    cached = Some((aligned, v));
                    v
                }
            };
            *byte = (dword >> ((off & 3) * 8)) as u8;
        }
    }

    /// Writes `data` at `offset` within the register page. Any size and alignment; writes
    /// to read-only or unknown registers and beyond the page are ignored. Everything the
    /// write triggers (queue processing, status updates, re-translation, event interrupts)
    /// is done before this returns.
    pub fn mmio_write(&self, offset: u64, data: &[u8]) {
        let _serialised = self.writes.lock().unwrap_or_else(|e| e.into_inner());
        let mut fx = Effects::default();
        {
            let mut state = self.lock();
            let mut i = 0;
            while i < data.len() {
                let Some(off) = offset.checked_add(i as u64) else {
                    break;
                };
                if off >= REGISTER_PAGE_SIZE {
                    break;
                }
                let aligned = off & !3;
                let (mut value, mut mask) = (0u32, 0u32);
                while i < data.len() && offset.wrapping_add(i as u64) & !3 == aligned {
                    let shift = (offset.wrapping_add(i as u64) & 3) * 8;
                    value |= u32::from(data[i]) << shift;
                    mask |= 0xFF << shift;
                    i += 1;
                }
                state.write_dword(aligned, value, mask, &mut fx);
            }
        }
        let drain = fx.drain_queue;
        self.apply(fx);
        if drain {
            self.drain_queue();
        }
    }

    /// Drains the invalidation queue. Descriptors run in order under the state lock until a
    /// wait descriptor finds re-translation pending from the invalidations before it: the
    /// lock is released, the re-translation done (new routes in the vector layer), and only
    /// then does the wait run (status write, IWC, completion event). Bounded by the queue
    /// size: each pass executes at least one descriptor.
    fn drain_queue(&self) {
        loop {
            let mut fx = Effects::default();
            let stopped_at_wait = self.lock().process_queue(&self.mem, &mut fx);
            self.apply(fx);
            if !stopped_at_wait {
                break;
            }
        }
    }

    /// Builds the ACPI DMAR table for this unit: INTR_REMAP flag only, one DRHD with
    /// INCLUDE_PCI_ALL at the register base, and one IOAPIC device scope (enumeration ID
    /// `ioapic_id`, the MADT IOAPIC ID) whose start bus and single path entry give the
    /// configured IOAPIC source ID. Complete with header and checksum.
    pub fn dmar_table(&self, ioapic_id: u8, oem_id: [u8; 6], oem_table_id: [u8; 8]) -> Vec<u8> {
        dmar::build(
            self.config.register_base,
            ioapic_id,
            self.config.ioapic_source_id,
            oem_id,
            oem_table_id,
        )
    }

    /// Interrupt-remapping faults reported to the guest so far (recorded in a fault
    /// recording register or lost to overflow). Faults suppressed by FPD and translation
    /// failures found while re-translating are not counted.
    pub fn fault_count(&self) -> u64 {
        self.lock().faults_reported
    }

    /// Whether interrupt remapping is enabled (GSTS.IRES).
    pub fn is_enabled(&self) -> bool {
        self.lock().ir_enabled()
    }

    /// Carries out work collected under the lock. Re-translation comes first, so the new
    /// routes are in the vector layer (which commits them before any vector fires) before a
    /// completion event tells the guest an invalidation is done.
    fn apply(&self, fx: Effects) {
        if fx.retranslation_pending() {
            let hierarchy = self
                .hierarchy
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .upgrade();
            if let Some(h) = hierarchy {
                if fx.retranslate_all {
                    h.retranslate(RetranslateScope::All);
                } else {
                    h.retranslate_irtes(&fx.retranslate);
                }
            }
        }
        for msi in fx.msis {
            if let Err(e) = self.vectors.send_platform_msi(msi) {
                warn_ratelimited!(
                    EVENT_FAILURES,
                    "vt-d: cannot deliver event interrupt {msi}: {e}"
                );
            }
        }
    }
}

impl RemapLayer for VtdUnit {
    fn name(&self) -> &str {
        "vt-d"
    }

    fn remap(&self, requester: RequesterId, message: MsiMessage) -> RemapOutcome {
        match self.lock().translate(&self.mem, requester, message) {
            Translation::Deliver(m) => RemapOutcome::Deliver(m),
            Translation::Blocked | Translation::Fault { .. } => RemapOutcome::Blocked,
        }
    }

    fn report_blocked(&self, requester: RequesterId, message: MsiMessage) {
        let mut fx = Effects::default();
        {
            let mut state = self.lock();
            if let Translation::Fault { reason, index, fpd } =
                state.translate(&self.mem, requester, message)
            {
                if fpd && reason.qualified() {
                    state.faults_suppressed += 1;
                } else {
                    crate::log_ratelimited!(
                        log::Level::Info,
                        FAULT_LOG,
                        "vt-d: interrupt-remapping fault {:#x} ({reason:?}) index {index} from {requester}",
                        reason as u8
                    );
                    state.record_fault(reason, index, requester.0, &mut fx);
                }
            }
        }
        self.apply(fx);
    }

    fn summary(&self) -> String {
        let s = self.lock();
        let bit = |b: u32| u8::from(s.gsts & b != 0);
        let (irta, eime, entries) = s
            .table
            .map_or((0, false, 0), |t| (t.base, t.eime, t.entries));
        format!(
            "IRE={} EIME={} CFI={} QIE={} IRTA={irta:#x} entries={entries} faults={} suppressed={} descriptors={}",
            bit(spec::gsts::IRES),
            u8::from(eime),
            bit(spec::gsts::CFIS),
            bit(spec::gsts::QIES),
            s.faults_reported,
            s.faults_suppressed,
            s.descriptors,
        )
    }
}
