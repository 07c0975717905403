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

use std::fmt;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::Duration;

use log::warn;

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

#[derive(Default)]
struct VectorDesc {
    message: Option<MsiMessage>,
    masked: bool,
    pending: bool,
    remapped: Option<RemapOutcome>,
    vector: Option<Arc<Vector>>,
    fixed_gsi: Option<Gsi>,
    fires: u64,
    deliveries: u64,
    dropped: u64,
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
}

/// One device's interrupt domain.
pub struct DeviceDomain {
    name: String,
    kind: DomainKind,
    requester: RequesterId,
    hierarchy: Arc<InterruptHierarchy>,
    vectors: Mutex<Vec<VectorDesc>>,
}

impl DeviceDomain {
    pub(crate) fn new(
        hierarchy: Arc<InterruptHierarchy>,
        name: String,
        kind: DomainKind,
        requester: RequesterId,
        size: usize,
        fixed_gsi_base: Option<Gsi>,
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
            vectors: Mutex::new(vectors),
        }
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
            self.route(d)?;
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
        if !masked {
            if d.vector.is_none() && d.message.is_some() {
                self.route(d)?;
            }
            if d.pending {
                d.pending = false;
                self.deliver(d);
            }
        }
        Ok(())
    }

    /// Fires vector `index`: delivered now if unmasked, else remembered as pending.
    pub fn fire(&self, index: usize) -> Result<()> {
        let mut v = self.lock();
        let d = self.desc(&mut v, index)?;
        d.fires += 1;
        if d.masked {
            d.pending = true;
        } else {
            self.deliver(d);
        }
        Ok(())
    }

    /// Whether vector `index` has an interrupt pending.
    pub fn is_pending(&self, index: usize) -> bool {
        self.lock().get(index).is_some_and(|d| d.pending)
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
        let (fires, deliveries, dropped, fixed) = (d.fires, d.deliveries, d.dropped, d.fixed_gsi);
        if let Some(vec) = d.vector.take() {
            self.hierarchy.vector_layer().free(vec)?;
        }
        *d = VectorDesc {
            masked: true,
            fixed_gsi: fixed,
            fires,
            deliveries,
            dropped,
            ..Default::default()
        };
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
        for d in v.iter_mut() {
            let covered = d.vector.is_some() && d.message.is_some_and(|m| covers(&m));
            if covered {
                self.route(d)?;
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
            .map(|(index, d)| Self::snap(index, d))
            .collect()
    }

    /// Snapshot of vector `index` alone (O(1)).
    pub fn vector_snapshot(&self, index: usize) -> Option<VectorSnapshot> {
        self.lock().get(index).map(|d| Self::snap(index, d))
    }

    fn snap(index: usize, d: &VectorDesc) -> VectorSnapshot {
        VectorSnapshot {
            index,
            message: d.message,
            remapped: d.remapped,
            gsi: d.vector.as_ref().map(|v| v.gsi()),
            masked: d.masked,
            pending: d.pending,
            fires: d.fires,
            deliveries: d.deliveries,
            dropped: d.dropped,
        }
    }

    /// Computes the remapped message and installs it as the vector's route, allocating the
    /// CPU vector if needed. When no GSI is left the vector stays unrouted and deliveries take
    /// the slow path.
    fn route(&self, d: &mut VectorDesc) -> Result<()> {
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
            match self.hierarchy.vector_layer().allocate(d.fixed_gsi) {
                Ok(v) => d.vector = Some(v),
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

    fn deliver(&self, d: &mut VectorDesc) {
        if d.vector.is_none() && d.message.is_some() {
            if let Err(e) = self.route(d) {
                warn_ratelimited!(
                    DELIVERY_FAILURES,
                    "{}: cannot activate vector: {e}",
                    self.name
                );
            }
        }
        let layer = self.hierarchy.vector_layer();
        let result = match (&d.vector, d.remapped) {
            (Some(v), Some(RemapOutcome::Deliver(_))) => layer.fire(v),
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
        for d in self.lock().iter_mut() {
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
        d.fire(0).unwrap();
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
        d.fire(0).unwrap();
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
}
