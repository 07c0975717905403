//! Per-device interrupt domains (IOAPIC pins, PCI/MSI, PCI/MSI-X, IMS).
//!
//! A domain holds one descriptor per vector: the message the device's storage holds, the
//! mask and pending state, and, once the vector is first unmasked with a message, a CPU
//! vector (GSI + irqfd) whose route carries the remapped message. The device model supplies
//! only what is device specific (where messages and masks live); this type implements the
//! rules common to all of them:
//!
//! - a vector gets its GSI, route and irqfd lazily, when first unmasked with a message;
//! - a message change re-routes only that vector, in place;
//! - a fire while masked sets pending; unmasking delivers a pending interrupt exactly once;
//! - freeing one vector touches no other vector's route or irqfd.
//!
//! A domain may have an [`MsiChip`]: what Linux calls the domain's chip, the way a vector's
//! state reaches the storage behind it. Our emulated MSI/MSI-X tables and IMS need none; a
//! pass-through device's chip enables the host vector behind a guest vector when the guest
//! first unmasks it. A chip that is [host-signalled](MsiChip::host_signalled) means something
//! outside the VMM signals each vector's [trigger](DeviceDomain::trigger): while the vector is
//! active, unmasked and routed, the trigger is KVM's irqfd; otherwise the hierarchy's relay
//! thread watches it and applies the rules above (pending while masked, delivered once on
//! unmask), counting each such interrupt as relayed.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use log::warn;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::hierarchy::InterruptHierarchy;
use crate::msi::MsiMessage;
use crate::ratelimit::RateLimiter;
use crate::remap::{IrteRanges, RemapOutcome, RequesterId, RetranslateScope};
use crate::vector::{Gsi, Vector};
use crate::{error_ratelimited, warn_ratelimited, Error, Result};

/// Activation and delivery failures happen per interrupt request, which a guest controls.
static DELIVERY_FAILURES: LazyLock<RateLimiter> =
    LazyLock::new(|| RateLimiter::new(10, Duration::from_secs(1)));

/// The kind of per-device domain, named after the kernel's domains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DomainKind {
    /// IOAPIC redirection entries turned into messages.
    Ioapic,
    /// PCI MSI (capability with up to 32 messages).
    Msi,
    /// PCI MSI-X (table in a BAR).
    MsiX,
    /// Interrupt Message Store (device-defined message storage).
    Ims,
}

impl fmt::Display for DomainKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DomainKind::Ioapic => "IO-APIC",
            DomainKind::Msi => "PCI/MSI",
            DomainKind::MsiX => "PCI/MSI-X",
            DomainKind::Ims => "IMS",
        })
    }
}

/// An error reported by a domain's chip (the storage behind the vectors).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct ChipError(Box<dyn std::error::Error + Send + Sync>);

impl ChipError {
    /// Wraps any error (or message) of the chip's implementation.
    pub fn new(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self(e.into())
    }
}

/// How a domain's vectors reach the storage behind them (Linux: the domain's `irq_chip`).
///
/// Only activation and release call the chip: masking, message changes, affinity moves and
/// remapping invalidations are handled by the domain (KVM routes, the relay) alone.
pub trait MsiChip: Send + Sync {
    /// Short name for the hierarchy view (`"vfio-msix"`, `"vhost"`, ...).
    fn name(&self) -> &str;
    /// Whether something outside the VMM's device models signals the vectors' triggers
    /// (a host device through VFIO, a vhost worker, a device thread writing the eventfd).
    fn host_signalled(&self) -> bool {
        false
    }
    /// Vector `index` becomes active (first unmasked with a message): the storage behind it
    /// must start signalling `trigger`.
    fn startup(&self, _index: usize, _trigger: &EventFd) -> std::result::Result<(), ChipError> {
        Ok(())
    }
    /// Vector `index` is released: the storage behind it stops signalling.
    fn shutdown(&self, _index: usize) -> std::result::Result<(), ChipError> {
        Ok(())
    }
    /// Extra text for vector `index` in the hierarchy view.
    fn describe_vector(&self, _index: usize) -> Option<String> {
        None
    }
    /// Extra text for the domain in the hierarchy view (counters of the storage behind it).
    fn describe(&self) -> Option<String> {
        None
    }
}

#[derive(Default)]
struct VectorDesc {
    message: Option<MsiMessage>,
    masked: bool,
    pending: bool,
    remapped: Option<RemapOutcome>,
    vector: Option<Arc<Vector>>,
    fixed_gsi: Option<Gsi>,
    /// Host-signalled domains: the eventfd the producer signals (stable for the domain's life).
    trigger: Option<Arc<EventFd>>,
    /// The chip's `startup` ran for this vector (and `shutdown` has not).
    started: bool,
    fires: u64,
    deliveries: u64,
    dropped: u64,
    relayed: u64,
}

/// A read-only view of one vector, for the hierarchy view and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VectorSnapshot {
    /// Index of the vector in its domain.
    pub index: usize,
    /// Message programmed by the guest, if any.
    pub message: Option<MsiMessage>,
    /// Result of remapping, once the vector is active.
    pub remapped: Option<RemapOutcome>,
    /// GSI of the CPU vector, once active.
    pub gsi: Option<Gsi>,
    /// Mask state.
    pub masked: bool,
    /// Pending bit.
    pub pending: bool,
    /// Fires requested by the device.
    pub fires: u64,
    /// Interrupts handed to the CPU vector layer.
    pub deliveries: u64,
    /// Fires that could not be delivered (no valid message, or blocked by remapping).
    pub dropped: u64,
    /// Host-signalled vectors: signals the VMM's relay thread handled (the vector was
    /// masked, inactive, blocked or without a GSI when its trigger was signalled).
    pub relayed: u64,
    /// Host-signalled vectors: whether the trigger is bound to KVM (no VMM hop).
    pub attached: bool,
    /// The chip's `startup` ran for this vector.
    pub started: bool,
}

/// Told, under the domain's lock, when vector `index` starts taking the direct path (its
/// irqfd is routed and committed and the vector unmasked: `Some(irqfd)`) and when it stops
/// (`None`, before whatever ends it takes effect). A device uses it to let the guest signal
/// the irqfd itself, e.g. a doorbell registered as a KVM ioeventfd on it. It must not call
/// back into the domain.
pub type DirectListener = Box<dyn Fn(usize, Option<&Arc<EventFd>>) + Send + Sync>;

/// One device's interrupt domain.
pub struct DeviceDomain {
    name: String,
    kind: DomainKind,
    requester: RequesterId,
    hierarchy: Arc<InterruptHierarchy>,
    chip: Option<Arc<dyn MsiChip>>,
    /// `chip.host_signalled()`, read once (every fire asks).
    host_signalled: bool,
    me: Weak<DeviceDomain>,
    vectors: Mutex<Vec<VectorDesc>>,
    /// Per-vector state read without the lock by [`fire`](DeviceDomain::fire).
    fast: Box<[FastPath]>,
    /// See [`DirectListener`].
    direct_listener: OnceLock<DirectListener>,
}

/// What a fire needs to reach KVM without taking the domain's lock.
#[derive(Default)]
struct FastPath {
    /// The vector's eventfd: its irqfd (or a host-signalled vector's trigger). Created when
    /// the vector first gets a GSI and kept for the domain's life, so a lock-free fire never
    /// sees it change.
    eventfd: OnceLock<Arc<EventFd>>,
    /// Set under the lock once a fire has gone through with the vector unmasked and its
    /// route committed; cleared under the lock by anything that changes that (mask,
    /// re-route, release). While set, a fire is one counter increment and one eventfd write.
    direct: AtomicBool,
    /// Fires (all delivered) that took the lock-free path.
    fires: AtomicU64,
}

impl DeviceDomain {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        hierarchy: Arc<InterruptHierarchy>,
        name: String,
        kind: DomainKind,
        requester: RequesterId,
        size: usize,
        fixed_gsi_base: Option<Gsi>,
        chip: Option<Arc<dyn MsiChip>>,
        me: Weak<DeviceDomain>,
    ) -> Self {
        let vectors = (0..size)
            .map(|i| VectorDesc {
                masked: true,
                fixed_gsi: fixed_gsi_base.map(|b| b + i as Gsi),
                ..Default::default()
            })
            .collect();
        Self {
            name,
            kind,
            requester,
            hierarchy,
            host_signalled: chip.as_ref().is_some_and(|c| c.host_signalled()),
            chip,
            me,
            vectors: Mutex::new(vectors),
            fast: (0..size).map(|_| FastPath::default()).collect(),
            direct_listener: OnceLock::new(),
        }
    }

    /// Sets the domain's [`DirectListener`] (once; false if one was already set). Vectors
    /// already direct are reported to it first.
    pub fn set_direct_listener(&self, listener: DirectListener) -> bool {
        let _v = self.lock();
        if self.direct_listener.set(listener).is_err() {
            return false;
        }
        let l = self.direct_listener.get().expect("just set");
        for (index, fast) in self.fast.iter().enumerate() {
            if fast.direct.load(Ordering::Acquire) {
                l(index, fast.eventfd.get());
            }
        }
        true
    }

    /// Moves vector `index` on or off the direct path (under the lock), telling the
    /// listener about a change.
    fn set_direct(&self, index: usize, on: bool) {
        let fast = &self.fast[index];
        if fast.direct.swap(on, Ordering::AcqRel) != on {
            if let Some(l) = self.direct_listener.get() {
                l(index, if on { fast.eventfd.get() } else { None });
            }
        }
    }

    /// The domain's chip, if it has one.
    pub fn chip(&self) -> Option<&Arc<dyn MsiChip>> {
        self.chip.as_ref()
    }

    /// Whether the vectors are signalled from outside the VMM's device models (see
    /// [`MsiChip::host_signalled`]).
    pub fn is_host_signalled(&self) -> bool {
        self.host_signalled
    }

    /// The trigger of vector `index` of a host-signalled domain: the eventfd its producer
    /// signals, one write per interrupt. It is created on first use and stays the same for
    /// the domain's life, whatever the vector's state; KVM injects from it directly while the
    /// vector is active and unmasked.
    pub fn trigger(&self, index: usize) -> Result<Arc<EventFd>> {
        if !self.is_host_signalled() {
            return Err(Error::NotHostSignalled(self.name.clone()));
        }
        let mut v = self.lock();
        let d = self.desc(&mut v, index)?;
        self.ensure_trigger(index, d)
    }

    /// Signals the relay handled for vector `index` (0 for other domains).
    pub fn relayed(&self, index: usize) -> u64 {
        self.lock().get(index).map_or(0, |d| d.relayed)
    }

    /// Name of the domain (the device it belongs to).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Kind of the domain.
    pub fn kind(&self) -> DomainKind {
        self.kind
    }

    /// Requester ID used for remapping.
    pub fn requester(&self) -> RequesterId {
        self.requester
    }

    /// Number of vectors.
    pub fn size(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<VectorDesc>> {
        self.vectors.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn desc<'a>(&self, v: &'a mut [VectorDesc], index: usize) -> Result<&'a mut VectorDesc> {
        let size = v.len();
        v.get_mut(index).ok_or_else(|| Error::IndexOutOfRange {
            domain: self.name.clone(),
            index,
            size,
        })
    }

    /// Sets the message of vector `index` (`None`: storage holds no usable message).
    /// An active vector is re-routed in place; nothing else is touched.
    pub fn set_message(&self, index: usize, message: Option<MsiMessage>) -> Result<()> {
        let mut v = self.lock();
        let d = self.desc(&mut v, index)?;
        if d.message == message {
            return Ok(());
        }
        d.message = message;
        if d.vector.is_some() || !d.masked {
            self.route(index, d)?;
        }
        if self.is_host_signalled() {
            self.activate_host(index, d)?;
        }
        Ok(())
    }

    /// Masks or unmasks vector `index`. Unmasking activates the vector if needed and
    /// delivers a pending interrupt exactly once.
    pub fn set_masked(&self, index: usize, masked: bool) -> Result<()> {
        let mut v = self.lock();
        let d = self.desc(&mut v, index)?;
        if d.masked == masked {
            return Ok(());
        }
        d.masked = masked;
        if masked {
            self.set_direct(index, false);
        }
        if !masked && d.vector.is_none() && d.message.is_some() {
            self.route(index, d)?;
        }
        if self.is_host_signalled() {
            self.activate_host(index, d)?;
        }
        if !masked && d.pending {
            d.pending = false;
            self.deliver(index, d);
        }
        Ok(())
    }

    /// Fires vector `index`: delivered now if unmasked, else remembered as pending. On a
    /// host-signalled domain this is one write to the vector's trigger.
    pub fn fire(&self, index: usize) -> Result<()> {
        let fast = self.fast.get(index).ok_or_else(|| Error::IndexOutOfRange {
            domain: self.name.clone(),
            index,
            size: self.fast.len(),
        })?;
        let host = self.is_host_signalled();
        if host || fast.direct.load(Ordering::Acquire) {
            if let Some(fd) = fast.eventfd.get() {
                if !host {
                    fast.fires.fetch_add(1, Ordering::Relaxed);
                }
                return fd.write(1).map_err(|source| Error::Trigger {
                    domain: self.name.clone(),
                    index,
                    source,
                });
            }
        }
        if host {
            let trigger = self.trigger(index)?;
            return trigger.write(1).map_err(|source| Error::Trigger {
                domain: self.name.clone(),
                index,
                source,
            });
        }
        let mut v = self.lock();
        let d = self.desc(&mut v, index)?;
        d.fires += 1;
        if d.masked {
            d.pending = true;
        } else {
            self.deliver(index, d);
        }
        Ok(())
    }

    /// Whether vector `index` has an interrupt pending. For a host-signalled vector whose
    /// trigger is not bound to KVM, a signal the relay has not handled yet counts too.
    pub fn is_pending(&self, index: usize) -> bool {
        let mut v = self.lock();
        let Some(d) = v.get_mut(index) else {
            return false;
        };
        if d.masked && Self::take_signals(d) {
            d.relayed += 1;
            d.fires += 1;
            d.pending = true;
        }
        d.pending
    }

    /// Clears the pending bit of vector `index` without delivering.
    pub fn clear_pending(&self, index: usize) {
        if let Some(d) = self.lock().get_mut(index) {
            d.pending = false;
        }
    }

    /// Releases vector `index` (message, pending state and CPU vector); it starts over masked.
    pub fn release(&self, index: usize) -> Result<()> {
        let mut v = self.lock();
        let d = self.desc(&mut v, index)?;
        self.set_direct(index, false);
        if d.started {
            d.started = false;
            if let Some(chip) = &self.chip {
                chip.shutdown(index).map_err(|source| Error::Chip {
                    domain: self.name.clone(),
                    index,
                    source,
                })?;
            }
        }
        if let Some(vec) = d.vector.take() {
            self.hierarchy.vector_layer().free(vec)?;
        }
        let trigger = d.trigger.take();
        *d = VectorDesc {
            masked: true,
            fixed_gsi: d.fixed_gsi,
            fires: d.fires,
            deliveries: d.deliveries,
            dropped: d.dropped,
            relayed: d.relayed,
            trigger,
            ..Default::default()
        };
        if d.trigger.is_some() {
            // Released vectors are masked: the relay keeps the trigger's signals as pending.
            self.activate_host(index, d)?;
        }
        Ok(())
    }

    /// Releases every vector of the domain.
    pub fn release_all(&self) -> Result<()> {
        for i in 0..self.size() {
            self.release(i)?;
        }
        Ok(())
    }

    /// Re-translates the active vectors `scope` covers through the remap layer (after the
    /// remap layer's state changed); returns how many were re-routed. irqfds and GSIs are
    /// kept, so no interrupt fired meanwhile is lost.
    pub fn retranslate(&self, scope: RetranslateScope) -> Result<usize> {
        self.retranslate_where(|m| scope.covers(m))
    }

    /// Like [`retranslate`](Self::retranslate) for the vectors whose message selects an IRTE
    /// in `ranges` (exactly those: indices between the ranges are left alone).
    pub fn retranslate_irtes(&self, ranges: &IrteRanges) -> Result<usize> {
        self.retranslate_where(|m| ranges.covers(m))
    }

    fn retranslate_where(&self, covers: impl Fn(&MsiMessage) -> bool) -> Result<usize> {
        let mut v = self.lock();
        let mut n = 0;
        for (index, d) in v.iter_mut().enumerate() {
            let covered = d.vector.is_some() && d.message.is_some_and(|m| covers(&m));
            if covered {
                self.route(index, d)?;
                if d.trigger.is_some() {
                    self.activate_host(index, d)?;
                }
                n += 1;
            }
        }
        Ok(n)
    }

    /// Snapshot of every vector.
    pub fn snapshot(&self) -> Vec<VectorSnapshot> {
        self.lock()
            .iter()
            .enumerate()
            .map(|(index, d)| self.snap(index, d))
            .collect()
    }

    /// Snapshot of vector `index` alone (O(1)).
    pub fn vector_snapshot(&self, index: usize) -> Option<VectorSnapshot> {
        self.lock().get(index).map(|d| self.snap(index, d))
    }

    fn snap(&self, index: usize, d: &VectorDesc) -> VectorSnapshot {
        let fast = self.fast[index].fires.load(Ordering::Relaxed);
        VectorSnapshot {
            index,
            message: d.message,
            remapped: d.remapped,
            gsi: d.vector.as_ref().map(|v| v.gsi()),
            masked: d.masked,
            pending: d.pending,
            fires: d.fires + fast,
            deliveries: d.deliveries + fast,
            dropped: d.dropped,
            relayed: d.relayed,
            attached: d.vector.as_ref().is_some_and(|v| v.is_attached()) && d.trigger.is_some(),
            started: d.started,
        }
    }

    /// Host-signalled vector `index`: the eventfd, created (and handed to the relay, since a
    /// new trigger is never bound to KVM) on first use.
    fn ensure_trigger(&self, index: usize, d: &mut VectorDesc) -> Result<Arc<EventFd>> {
        if let Some(t) = &d.trigger {
            return Ok(t.clone());
        }
        let t = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd)?);
        d.trigger = Some(t.clone());
        let _ = self.fast[index].eventfd.set(t.clone());
        self.sync_trigger(index, d)?;
        Ok(t)
    }

    /// Host-signalled vector `index` after a state change: runs the chip's `startup` on
    /// first activation, then binds the trigger to KVM or hands it to the relay.
    fn activate_host(&self, index: usize, d: &mut VectorDesc) -> Result<()> {
        let trigger = self.ensure_trigger(index, d)?;
        if !d.started && !d.masked && d.message.is_some() {
            if let Some(chip) = &self.chip {
                chip.startup(index, &trigger)
                    .map_err(|source| Error::Chip {
                        domain: self.name.clone(),
                        index,
                        source,
                    })?;
            }
            d.started = true;
        }
        self.sync_trigger(index, d)?;
        // Signals found in the trigger as it attached are pending; an unmasked vector gets
        // them now, whoever called (an unmask, a message change, a re-translation).
        if !d.masked && d.pending {
            d.pending = false;
            self.deliver(index, d);
        }
        Ok(())
    }

    /// Binds the trigger to KVM when the vector can take the direct path (active, unmasked,
    /// routed), otherwise detaches it and lets the relay watch it. Signals that arrived while
    /// detached are kept as pending, to be delivered once by `activate_host`.
    fn sync_trigger(&self, index: usize, d: &mut VectorDesc) -> Result<()> {
        let Some(trigger) = d.trigger.clone() else {
            return Ok(());
        };
        let layer = self.hierarchy.vector_layer();
        let relay = self.hierarchy.relay().map_err(Error::EventFd)?;
        let direct = !d.masked && matches!(d.remapped, Some(RemapOutcome::Deliver(_)));
        match (&d.vector, direct) {
            (Some(v), true) if v.is_routed() => {
                // The route must be in KVM before the producer can inject through it.
                layer.commit()?;
                relay.unwatch(&trigger).map_err(Error::EventFd)?;
                if !v.is_attached() {
                    if Self::take_signals(d) {
                        d.relayed += 1;
                        d.fires += 1;
                        d.pending = true;
                    }
                    layer.set_attached(v, true)?;
                }
            }
            (v, _) => {
                if let Some(v) = v {
                    layer.set_attached(v, false)?;
                }
                relay
                    .watch(&trigger, self.me.clone(), index)
                    .map_err(Error::EventFd)?;
            }
        }
        Ok(())
    }

    /// Reads (and so clears) the signals waiting in a detached trigger.
    fn take_signals(d: &VectorDesc) -> bool {
        let detached = !d.vector.as_ref().is_some_and(|v| v.is_attached());
        match &d.trigger {
            Some(t) if detached => t.read().is_ok_and(|n| n > 0),
            _ => false,
        }
    }

    /// Called by the relay thread when the detached trigger of vector `index` is signalled.
    pub(crate) fn relay_signal(&self, index: usize) {
        let mut v = self.lock();
        let Some(d) = v.get_mut(index) else { return };
        if !Self::take_signals(d) {
            return; // attached meanwhile: KVM took it
        }
        d.relayed += 1;
        d.fires += 1;
        if d.masked {
            d.pending = true;
        } else {
            self.deliver(index, d);
        }
    }

    /// Computes the remapped message and installs it as the vector's route, allocating the
    /// CPU vector if needed. When no GSI is left the vector stays unrouted and deliveries take
    /// the slow path.
    fn route(&self, index: usize, d: &mut VectorDesc) -> Result<()> {
        self.set_direct(index, false);
        let outcome = d
            .message
            .map(|m| self.hierarchy.remap_layer().remap(self.requester, m))
            .unwrap_or(RemapOutcome::Blocked);
        let unchanged = d.remapped == Some(outcome);
        d.remapped = Some(outcome);
        if unchanged
            && d.vector
                .as_ref()
                .is_some_and(|v| v.is_routed() == matches!(outcome, RemapOutcome::Deliver(_)))
        {
            // Same translation, already installed: nothing to commit.
            return Ok(());
        }
        if d.vector.is_none() {
            let layer = self.hierarchy.vector_layer();
            let fast = &self.fast[index];
            let allocated = match (&d.trigger, fast.eventfd.get()) {
                (Some(t), _) => layer.allocate_external(d.fixed_gsi, t.clone()),
                (None, Some(fd)) => {
                    // A fire racing with the last release may have left a count behind.
                    let _ = fd.read();
                    layer.allocate_with_irqfd(d.fixed_gsi, fd.clone())
                }
                (None, None) => layer.allocate(d.fixed_gsi),
            };
            match allocated {
                Ok(v) => {
                    if d.trigger.is_none() {
                        let _ = fast.eventfd.set(v.shared_irqfd());
                    }
                    d.vector = Some(v);
                }
                Err(Error::GsiExhausted(limit)) => {
                    self.hierarchy.note_gsi_exhausted(limit);
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
        let vector = d.vector.as_ref().expect("allocated above");
        let route = match outcome {
            RemapOutcome::Deliver(m) => Some(m),
            RemapOutcome::Blocked => None,
        };
        self.hierarchy.vector_layer().set_route(vector, route);
        Ok(())
    }

    fn deliver(&self, index: usize, d: &mut VectorDesc) {
        if d.vector.is_none() && d.message.is_some() {
            if let Err(e) = self.route(index, d) {
                warn_ratelimited!(
                    DELIVERY_FAILURES,
                    "{}: cannot activate vector: {e}",
                    self.name
                );
            }
        }
        let layer = self.hierarchy.vector_layer();
        let result = match (&d.vector, d.remapped) {
            (Some(v), Some(RemapOutcome::Deliver(_))) => {
                let r = layer.fire(v);
                if r.is_ok() && !d.masked && d.trigger.is_none() {
                    // Route committed, vector unmasked: later fires need not lock.
                    self.set_direct(index, true);
                }
                r
            }
            // No GSI could be had: deliver through KVM_SIGNAL_MSI.
            (None, Some(RemapOutcome::Deliver(m))) => layer.signal_msi(m),
            _ => {
                d.dropped += 1;
                if let Some(m) = d.message {
                    self.hierarchy
                        .remap_layer()
                        .report_blocked(self.requester, m);
                }
                return;
            }
        };
        match result {
            Ok(()) => d.deliveries += 1,
            Err(e) => {
                d.dropped += 1;
                error_ratelimited!(
                    DELIVERY_FAILURES,
                    "{}: interrupt delivery failed: {e}",
                    self.name
                );
            }
        }
    }
}

impl Drop for DeviceDomain {
    fn drop(&mut self) {
        let layer = self.hierarchy.vector_layer().clone();
        let relay = self.hierarchy.relay().ok();
        for (index, d) in self.lock().iter_mut().enumerate() {
            if let (Some(t), Some(r)) = (&d.trigger, &relay) {
                let _ = r.unwatch(t);
            }
            if d.started {
                if let Some(chip) = &self.chip {
                    if let Err(e) = chip.shutdown(index) {
                        warn!("{}: vector {index}: cannot shut down: {e}", self.name);
                    }
                }
            }
            if let Some(v) = d.vector.take() {
                if let Err(e) = layer.free(v) {
                    warn!("{}: cannot free vector: {e}", self.name);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remap::NoRemap;
    use crate::vector::{KvmVectorLayer, RecordingBackend};
    use std::sync::atomic::Ordering;

    fn setup(max: Gsi) -> (Arc<RecordingBackend>, Arc<InterruptHierarchy>) {
        let b = Arc::new(RecordingBackend::default());
        let l = Arc::new(KvmVectorLayer::new(b.clone(), 24, max));
        (b, InterruptHierarchy::new(l, Arc::new(NoRemap)))
    }

    fn msg(v: u8) -> MsiMessage {
        MsiMessage::compose(0, false, v, 0, false)
    }

    #[test]
    fn vector_is_allocated_lazily_on_first_unmask_with_message() {
        let (b, h) = setup(4096);
        let d = h.create_domain("dev", DomainKind::MsiX, RequesterId(8), 4, None);
        d.set_message(0, Some(msg(0x40))).unwrap();
        assert_eq!(d.snapshot()[0].gsi, None);
        d.set_masked(1, false).unwrap(); // unmasked without message: nothing to route
        assert_eq!(d.snapshot()[1].gsi, None);
        d.set_masked(0, false).unwrap();
        assert_eq!(d.snapshot()[0].gsi, Some(24));
        assert_eq!(b.irqfds.lock().unwrap().len(), 1);
    }

    #[test]
    fn fire_while_masked_sets_pending_and_unmask_delivers_once() {
        let (_, h) = setup(4096);
        let d = h.create_domain("dev", DomainKind::MsiX, RequesterId(8), 1, None);
        d.set_message(0, Some(msg(0x40))).unwrap();
        d.fire(0).unwrap();
        d.fire(0).unwrap();
        assert!(d.is_pending(0));
        d.set_masked(0, false).unwrap();
        let s = &d.snapshot()[0];
        assert!(!s.pending);
        assert_eq!((s.fires, s.deliveries), (2, 1));
        d.set_masked(0, true).unwrap();
        d.set_masked(0, false).unwrap();
        assert_eq!(d.snapshot()[0].deliveries, 1);
    }

    #[test]
    fn message_change_reroutes_in_place_and_keeps_gsi() {
        let (b, h) = setup(4096);
        let d = h.create_domain("dev", DomainKind::MsiX, RequesterId(8), 2, None);
        for i in 0..2 {
            d.set_message(i, Some(msg(0x40 + i as u8))).unwrap();
            d.set_masked(i, false).unwrap();
        }
        d.fire(0).unwrap();
        let before = b.committed.lock().unwrap().clone();
        d.set_message(1, Some(msg(0x50))).unwrap();
        d.fire(1).unwrap();
        let after = b.committed.lock().unwrap().clone();
        assert_eq!(before[0], after[0]);
        assert_eq!(after[1], (25, msg(0x50)));
        assert_eq!(d.snapshot()[1].gsi, Some(25));
    }

    #[test]
    fn release_frees_only_that_vector() {
        let (b, h) = setup(4096);
        let d = h.create_domain("dev", DomainKind::MsiX, RequesterId(8), 2, None);
        for i in 0..2 {
            d.set_message(i, Some(msg(0x40 + i as u8))).unwrap();
            d.set_masked(i, false).unwrap();
        }
        d.release(0).unwrap();
        assert_eq!(*b.irqfds.lock().unwrap(), vec![25]);
        // The removal is committed with the next fire.
        d.fire(1).unwrap();
        assert_eq!(*b.committed.lock().unwrap(), vec![(25, msg(0x41))]);
        assert!(d.snapshot()[0].masked);
    }

    #[test]
    fn blocked_message_installs_no_route_and_counts_drop() {
        let (b, h) = setup(4096);
        let d = h.create_domain("dev", DomainKind::Msi, RequesterId(8), 1, None);
        d.set_message(0, Some(MsiMessage::new(0x1000, 0, 0x40)))
            .unwrap();
        d.set_masked(0, false).unwrap();
        d.fire(0).unwrap();
        assert_eq!(d.snapshot()[0].dropped, 1);
        assert!(b.committed.lock().unwrap().is_empty());
    }

    #[test]
    fn exhausted_gsis_fall_back_to_signal_msi() {
        let (b, h) = setup(25);
        let d = h.create_domain("dev", DomainKind::MsiX, RequesterId(8), 2, None);
        for i in 0..2 {
            d.set_message(i, Some(msg(0x40 + i as u8))).unwrap();
            d.set_masked(i, false).unwrap();
        }
        d.fire(1).unwrap();
        assert_eq!(*b.signalled.lock().unwrap(), vec![msg(0x41)]);
        assert_eq!(d.snapshot()[1].deliveries, 1);
        assert_eq!(h.vector_layer().stats().slow_path_signals, 1);
    }

    #[test]
    fn fixed_gsis_follow_the_base() {
        let (b, h) = setup(4096);
        let d = h.create_domain(
            "ioapic",
            DomainKind::Ioapic,
            RequesterId(0xf0f8),
            24,
            Some(0),
        );
        d.set_message(4, Some(msg(0x24))).unwrap();
        d.set_masked(4, false).unwrap();
        d.fire(4).unwrap();
        assert_eq!(*b.committed.lock().unwrap(), vec![(4, msg(0x24))]);
        assert_eq!(b.commits.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn out_of_range_index_is_an_error_not_a_panic() {
        let (_, h) = setup(4096);
        let d = h.create_domain("dev", DomainKind::MsiX, RequesterId(8), 2, None);
        assert!(matches!(d.fire(2), Err(Error::IndexOutOfRange { .. })));
        assert!(!d.is_pending(9));
    }

    /// A remap layer whose translation of remappable messages is "vector = base + index".
    struct ShiftRemap(std::sync::Mutex<u8>);
    impl crate::remap::RemapLayer for ShiftRemap {
        fn name(&self) -> &str {
            "shift"
        }
        fn remap(&self, _r: RequesterId, m: MsiMessage) -> RemapOutcome {
            match m.remap_index() {
                Some(i) => RemapOutcome::Deliver(msg(*self.0.lock().unwrap() + i as u8)),
                None => RemapOutcome::Blocked,
            }
        }
    }

    #[test]
    fn scoped_retranslation_reroutes_only_covered_vectors() {
        let b = Arc::new(RecordingBackend::default());
        let l = Arc::new(KvmVectorLayer::new(b.clone(), 24, 4096));
        let remap = Arc::new(ShiftRemap(std::sync::Mutex::new(0x40)));
        let h = InterruptHierarchy::new(l, remap.clone());
        let d = h.create_domain("dev", DomainKind::MsiX, RequesterId(8), 4, None);
        for i in 0..4 {
            d.set_message(i, Some(MsiMessage::remappable(i as u16)))
                .unwrap();
            d.set_masked(i, false).unwrap();
        }
        d.fire(0).unwrap();
        *remap.0.lock().unwrap() = 0x80;
        let n = h.retranslate(RetranslateScope::IrteRange { start: 1, count: 2 });
        assert_eq!(n, 2);
        d.fire(1).unwrap();
        let r: Vec<u8> = b
            .committed
            .lock()
            .unwrap()
            .iter()
            .map(|(_, m)| m.vector())
            .collect();
        assert_eq!(r, vec![0x40, 0x81, 0x82, 0x43]);
        assert_eq!(h.retranslate(RetranslateScope::All), 4);
        assert_eq!(b.irqfds.lock().unwrap().len(), 4);
    }

    #[test]
    fn unchanged_retranslation_causes_no_route_change() {
        let (b, h) = setup(4096);
        let d = h.create_domain("dev", DomainKind::MsiX, RequesterId(8), 2, None);
        d.set_message(0, Some(msg(0x40))).unwrap();
        d.set_masked(0, false).unwrap();
        d.fire(0).unwrap();
        let changes = h.vector_layer().stats().route_changes;
        assert_eq!(h.retranslate(RetranslateScope::All), 1);
        d.fire(0).unwrap();
        assert_eq!(h.vector_layer().stats().route_changes, changes);
        assert_eq!(b.commits.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn dropping_domain_frees_vectors() {
        let (_, h) = setup(4096);
        let d = h.create_domain("dev", DomainKind::MsiX, RequesterId(8), 2, None);
        d.set_message(0, Some(msg(0x40))).unwrap();
        d.set_masked(0, false).unwrap();
        assert_eq!(h.vector_layer().stats().allocated, 1);
        drop(d);
        assert_eq!(h.vector_layer().stats().allocated, 0);
    }

    /// A chip that records startups and shutdowns (and can be told to fail startup).
    #[derive(Default)]
    struct RecordingChip {
        started: Mutex<Vec<usize>>,
        stopped: Mutex<Vec<usize>>,
        fail_startup: std::sync::atomic::AtomicBool,
    }

    impl MsiChip for RecordingChip {
        fn name(&self) -> &str {
            "recording"
        }
        fn host_signalled(&self) -> bool {
            true
        }
        fn startup(&self, index: usize, _t: &EventFd) -> std::result::Result<(), ChipError> {
            if self.fail_startup.load(Ordering::Relaxed) {
                return Err(ChipError::new("host refused"));
            }
            self.started.lock().unwrap().push(index);
            Ok(())
        }
        fn shutdown(&self, index: usize) -> std::result::Result<(), ChipError> {
            self.stopped.lock().unwrap().push(index);
            Ok(())
        }
        fn describe_vector(&self, index: usize) -> Option<String> {
            Some(format!("host={index}"))
        }
    }

    fn host_domain(
        max: Gsi,
        size: usize,
    ) -> (
        Arc<RecordingBackend>,
        Arc<InterruptHierarchy>,
        Arc<RecordingChip>,
        Arc<DeviceDomain>,
    ) {
        let (b, h) = setup(max);
        let chip = Arc::new(RecordingChip::default());
        let d = h.create_domain_with_chip(
            "pt",
            DomainKind::MsiX,
            RequesterId(8),
            size,
            None,
            chip.clone(),
        );
        (b, h, chip, d)
    }

    /// Waits (bounded) for the relay thread to have handled something.
    fn wait_until(what: &str, f: impl Fn() -> bool) {
        for _ in 0..500 {
            if f() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("timed out waiting for {what}");
    }

    fn counter(t: &EventFd) -> u64 {
        t.read().unwrap_or(0)
    }

    #[derive(Default)]
    struct Listener {
        fd: OnceLock<Arc<EventFd>>,
        seen: std::sync::atomic::AtomicU64,
    }

    impl crate::SignalListener for Listener {
        fn signalled(&self) {
            if let Ok(n) = self.fd.get().unwrap().read() {
                self.seen.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    #[test]
    fn the_relay_calls_a_signal_listener_until_it_is_unwatched() {
        let (_b, h) = setup(4096);
        let fd = Arc::new(EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap());
        let l = Arc::new(Listener::default());
        let _ = l.fd.set(fd.clone());
        let dl: Arc<dyn crate::SignalListener> = l.clone();
        h.watch_signal(&fd, Arc::downgrade(&dl)).unwrap();
        assert_eq!(h.relay_watched(), 1);
        fd.write(3).unwrap();
        wait_until("the listener", || l.seen.load(Ordering::Relaxed) == 3);
        h.unwatch_signal(&fd).unwrap();
        assert_eq!(h.relay_watched(), 0);
        fd.write(1).unwrap();
        assert_eq!(counter(&fd), 1, "no longer read by the relay");
        // A dropped listener is forgotten at its next signal.
        h.watch_signal(&fd, Arc::downgrade(&dl)).unwrap();
        drop(dl);
        drop(l);
        fd.write(1).unwrap();
        wait_until("the relay to forget it", || h.relay_watched() == 0);
    }

    #[test]
    fn ordinary_domains_have_no_trigger() {
        let (_b, h) = setup(4096);
        let d = h.create_domain("dev", DomainKind::MsiX, RequesterId(8), 2, None);
        assert!(matches!(d.trigger(0), Err(Error::NotHostSignalled(_))));
        assert!(!d.is_host_signalled());
    }

    #[test]
    fn trigger_is_stable_and_starts_on_the_relay() {
        let (b, h, chip, d) = host_domain(4096, 4);
        let t = d.trigger(2).unwrap();
        assert!(Arc::ptr_eq(&t, &d.trigger(2).unwrap()));
        assert_eq!(h.relay_watched(), 1);
        assert!(b.irqfds.lock().unwrap().is_empty());
        assert!(chip.started.lock().unwrap().is_empty());
        assert!(matches!(d.trigger(4), Err(Error::IndexOutOfRange { .. })));
    }

    #[test]
    fn first_unmask_with_message_starts_the_host_vector_and_binds_the_trigger_to_kvm() {
        let (b, h, chip, d) = host_domain(4096, 4);
        let t = d.trigger(1).unwrap();
        d.set_masked(1, false).unwrap(); // no message yet: nothing to start
        assert!(chip.started.lock().unwrap().is_empty());
        d.set_message(1, Some(msg(0x41))).unwrap();
        assert_eq!(*chip.started.lock().unwrap(), vec![1]);
        let s = d.vector_snapshot(1).unwrap();
        assert!(s.attached && s.started);
        assert_eq!(*b.irqfds.lock().unwrap(), vec![s.gsi.unwrap()]);
        // The route is committed before the producer can signal.
        assert_eq!(b.committed.lock().unwrap().len(), 1);
        assert_eq!(h.relay_watched(), 0);
        // Masking and unmasking again never calls the chip.
        d.set_masked(1, true).unwrap();
        assert!(b.irqfds.lock().unwrap().is_empty());
        assert_eq!(h.relay_watched(), 1);
        d.set_masked(1, false).unwrap();
        assert_eq!(*chip.started.lock().unwrap(), vec![1]);
        assert!(d.vector_snapshot(1).unwrap().attached);
        assert_eq!(counter(&t), 0, "nothing was pending");
        let text = h.render();
        assert!(text.contains("chip recording"), "{text}");
        assert!(text.contains("trigger=kvm relayed=0 host=1"), "{text}");
    }

    #[test]
    fn signal_while_masked_is_pending_and_delivered_once_on_unmask() {
        let (b, _h, _chip, d) = host_domain(4096, 2);
        let t = d.trigger(0).unwrap();
        d.set_message(0, Some(msg(0x40))).unwrap();
        t.write(1).unwrap();
        t.write(1).unwrap();
        wait_until("the relay", || d.relayed(0) > 0);
        assert!(d.is_pending(0));
        d.set_masked(0, false).unwrap();
        let s = d.vector_snapshot(0).unwrap();
        assert!(!s.pending && s.attached);
        assert_eq!(s.deliveries, 1);
        // Delivered through the (now bound) trigger, once.
        assert_eq!(counter(&t), 1);
        assert!(b.signalled.lock().unwrap().is_empty());
    }

    #[test]
    fn pending_bit_reads_see_signals_the_relay_has_not_handled_yet() {
        let (_b, _h, _chip, d) = host_domain(4096, 1);
        let t = d.trigger(0).unwrap();
        d.set_message(0, Some(msg(0x40))).unwrap();
        // Take the relay out of the picture by reading state under the domain's lock.
        t.write(1).unwrap();
        // Either the relay or the read below takes the signal; pending either way.
        wait_until("pending", || d.is_pending(0));
        assert_eq!(d.relayed(0), 1);
    }

    #[test]
    fn signals_after_release_are_kept_pending_for_the_next_user() {
        let (b, _h, chip, d) = host_domain(4096, 1);
        let t = d.trigger(0).unwrap();
        d.set_message(0, Some(msg(0x40))).unwrap();
        d.set_masked(0, false).unwrap();
        d.release(0).unwrap();
        assert_eq!(*chip.stopped.lock().unwrap(), vec![0]);
        assert!(b.irqfds.lock().unwrap().is_empty());
        assert!(
            Arc::ptr_eq(&t, &d.trigger(0).unwrap()),
            "trigger survives release"
        );
        let s = d.vector_snapshot(0).unwrap();
        assert!(s.masked && !s.started && s.gsi.is_none());
    }

    #[test]
    fn failed_startup_is_an_error_and_retried_on_the_next_unmask() {
        let (_b, _h, chip, d) = host_domain(4096, 1);
        chip.fail_startup.store(true, Ordering::Relaxed);
        d.set_message(0, Some(msg(0x40))).unwrap();
        let e = d.set_masked(0, false).unwrap_err();
        assert!(e.to_string().contains("host refused"), "{e}");
        assert!(!d.vector_snapshot(0).unwrap().started);
        chip.fail_startup.store(false, Ordering::Relaxed);
        d.set_masked(0, true).unwrap();
        d.set_masked(0, false).unwrap();
        assert!(d.vector_snapshot(0).unwrap().started);
    }

    #[test]
    fn without_a_gsi_the_relay_delivers_through_signal_msi() {
        let (b, _h, _chip, d) = host_domain(24, 1); // no dynamic GSI at all
        let t = d.trigger(0).unwrap();
        d.set_message(0, Some(msg(0x40))).unwrap();
        d.set_masked(0, false).unwrap();
        assert!(!d.vector_snapshot(0).unwrap().attached);
        t.write(1).unwrap();
        wait_until("slow-path delivery", || {
            !b.signalled.lock().unwrap().is_empty()
        });
        assert_eq!(*b.signalled.lock().unwrap(), vec![msg(0x40)]);
        assert_eq!(d.relayed(0), 1);
    }

    /// Passes messages through unless told to block.
    #[derive(Default)]
    struct SwitchRemap {
        block: AtomicBool,
    }

    impl crate::remap::RemapLayer for SwitchRemap {
        fn name(&self) -> &str {
            "switch"
        }
        fn remap(&self, _r: RequesterId, m: MsiMessage) -> RemapOutcome {
            if self.block.load(Ordering::Relaxed) {
                RemapOutcome::Blocked
            } else {
                RemapOutcome::Deliver(m)
            }
        }
    }

    /// A host-signalled domain of one vector behind a [`SwitchRemap`], the vector unmasked
    /// with a message (so attached), and its trigger.
    #[allow(clippy::type_complexity)]
    fn switch_domain() -> (
        Arc<RecordingBackend>,
        Arc<InterruptHierarchy>,
        Arc<SwitchRemap>,
        Arc<DeviceDomain>,
        Arc<EventFd>,
    ) {
        let b = Arc::new(RecordingBackend::default());
        let l = Arc::new(KvmVectorLayer::new(b.clone(), 24, 4096));
        let remap = Arc::new(SwitchRemap::default());
        let h = InterruptHierarchy::new(l, remap.clone());
        let chip = Arc::new(RecordingChip::default());
        let d = h.create_domain_with_chip("pt", DomainKind::MsiX, RequesterId(8), 1, None, chip);
        let t = d.trigger(0).unwrap();
        d.set_message(0, Some(msg(0x40))).unwrap();
        d.set_masked(0, false).unwrap();
        (b, h, remap, d, t)
    }

    #[test]
    fn signals_found_as_a_trigger_attaches_are_delivered_not_left_pending() {
        let (_b, h, remap, d, t) = switch_domain();
        remap.block.store(true, Ordering::Relaxed);
        d.retranslate(RetranslateScope::All).unwrap();
        assert!(!d.vector_snapshot(0).unwrap().attached);
        // a signal the relay has not handled yet (it is not watching) when the vector,
        // still unmasked, is re-translated to a deliverable message and attaches
        h.relay().unwrap().unwatch(&t).unwrap();
        t.write(1).unwrap();
        remap.block.store(false, Ordering::Relaxed);
        d.retranslate(RetranslateScope::All).unwrap();
        let s = d.vector_snapshot(0).unwrap();
        assert!(s.attached);
        assert!(
            !s.pending,
            "an unmasked vector does not hold an interrupt pending"
        );
        assert_eq!((s.relayed, s.deliveries), (1, 1));
    }

    #[test]
    fn blocked_remap_detaches_and_the_relay_counts_the_drop() {
        let (b, _h, remap, d, t) = switch_domain();
        assert!(d.vector_snapshot(0).unwrap().attached);
        remap.block.store(true, Ordering::Relaxed);
        assert_eq!(d.retranslate(RetranslateScope::All).unwrap(), 1);
        assert!(!d.vector_snapshot(0).unwrap().attached);
        assert!(b.irqfds.lock().unwrap().is_empty());
        t.write(1).unwrap();
        wait_until("the drop", || d.vector_snapshot(0).unwrap().dropped == 1);
        remap.block.store(false, Ordering::Relaxed);
        d.retranslate(RetranslateScope::All).unwrap();
        assert!(d.vector_snapshot(0).unwrap().attached);
    }

    #[test]
    fn fire_on_a_host_signalled_domain_is_one_trigger_write() {
        let (_b, _h, _chip, d) = host_domain(4096, 1);
        let t = d.trigger(0).unwrap();
        d.set_message(0, Some(msg(0x40))).unwrap();
        d.set_masked(0, false).unwrap();
        d.fire(0).unwrap();
        assert_eq!(counter(&t), 1);
    }

    #[test]
    fn dropping_a_host_domain_shuts_down_started_vectors_and_stops_watching() {
        let (_b, h, chip, d) = host_domain(4096, 2);
        d.trigger(1).unwrap();
        d.set_message(0, Some(msg(0x40))).unwrap();
        d.set_masked(0, false).unwrap();
        assert_eq!(h.relay_watched(), 1);
        drop(d);
        assert_eq!(*chip.stopped.lock().unwrap(), vec![0]);
        assert_eq!(h.relay_watched(), 0);
    }

    #[test]
    fn the_direct_listener_hears_each_change_of_the_direct_path() {
        let (_b, h) = setup(4096);
        let d = h.create_domain("dev", DomainKind::MsiX, RequesterId(8), 2, None);
        d.set_message(0, Some(msg(0x40))).unwrap();
        d.set_masked(0, false).unwrap();
        d.fire(0).unwrap(); // direct before the listener exists: reported when it is set
        let heard: Arc<Mutex<Vec<(usize, bool)>>> = Arc::default();
        let log = heard.clone();
        let irqfd = d.fast[0].eventfd.get().unwrap().clone();
        assert!(d.set_direct_listener(Box::new(move |i, fd| {
            if let Some(fd) = fd {
                assert!(Arc::ptr_eq(fd, &irqfd), "the vector's own irqfd");
            }
            log.lock().unwrap().push((i, fd.is_some()));
        })));
        assert!(!d.set_direct_listener(Box::new(|_, _| {})), "set once");
        let take = || std::mem::take(&mut *heard.lock().unwrap());
        assert_eq!(take(), vec![(0, true)]);
        d.fire(0).unwrap();
        assert_eq!(take(), vec![], "no change, no call");
        d.set_masked(0, true).unwrap();
        assert_eq!(take(), vec![(0, false)]);
        d.fire(0).unwrap();
        d.set_masked(0, false).unwrap(); // the pending interrupt goes through
        assert_eq!(take(), vec![(0, true)]);
        d.set_message(0, Some(msg(0x41))).unwrap();
        d.fire(0).unwrap();
        assert_eq!(
            take(),
            vec![(0, false), (0, true)],
            "re-routed, then committed"
        );
        d.release(0).unwrap();
        assert_eq!(take(), vec![(0, false)]);
    }

    #[test]
    fn fires_after_the_first_take_the_lock_free_path_until_something_changes() {
        let (b, h) = setup(4096);
        let d = h.create_domain("dev", DomainKind::MsiX, RequesterId(8), 2, None);
        d.set_message(0, Some(msg(0x40))).unwrap();
        d.set_masked(0, false).unwrap();
        d.fire(0).unwrap(); // commits, then the vector is direct
        assert!(d.fast[0].direct.load(Ordering::Relaxed));
        let fd = d.fast[0].eventfd.get().unwrap().clone();
        let _ = fd.read();
        d.fire(0).unwrap();
        d.fire(0).unwrap();
        assert_eq!(fd.read().unwrap(), 2, "two eventfd writes");
        assert_eq!(d.fast[0].fires.load(Ordering::Relaxed), 2);
        let s = d.snapshot()[0].clone();
        assert_eq!((s.fires, s.deliveries), (3, 3));
        // A pending route change of another vector does not hold this one up...
        d.set_message(1, Some(msg(0x41))).unwrap();
        d.set_masked(1, false).unwrap();
        let commits = b.commits.load(Ordering::Relaxed);
        d.fire(0).unwrap();
        assert_eq!(b.commits.load(Ordering::Relaxed), commits);
        // ...but that vector's own first fire commits it.
        d.fire(1).unwrap();
        assert_eq!(b.commits.load(Ordering::Relaxed), commits + 1);
        // Masking, re-routing and release each send the next fire back under the lock.
        d.set_masked(0, true).unwrap();
        d.fire(0).unwrap();
        assert!(d.is_pending(0));
        d.set_masked(0, false).unwrap();
        d.fire(0).unwrap();
        assert!(d.fast[0].direct.load(Ordering::Relaxed));
        d.set_message(0, Some(msg(0x42))).unwrap();
        assert!(!d.fast[0].direct.load(Ordering::Relaxed));
        d.fire(0).unwrap();
        assert_eq!(b.committed.lock().unwrap()[0].1, msg(0x42));
        d.release(0).unwrap();
        assert!(!d.fast[0].direct.load(Ordering::Relaxed));
        d.fire(0).unwrap();
        assert!(d.is_pending(0), "a released vector is masked");
        // Reactivation reuses the same eventfd, drained of anything left behind.
        fd.write(5).unwrap();
        d.set_message(0, Some(msg(0x43))).unwrap();
        d.set_masked(0, false).unwrap();
        assert!(Arc::ptr_eq(&fd, d.fast[0].eventfd.get().unwrap()));
        assert_eq!(fd.read().unwrap(), 1, "only the pending interrupt");
    }
}
