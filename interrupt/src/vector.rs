//! The CPU vector layer: KVM GSI routes and irqfds.
//!
//! Each [`Vector`] owns a GSI and an irqfd registered on it. Its route (the MSI message KVM
//! delivers when the irqfd is signalled) is kept in one route table indexed by GSI. Changes
//! mark the table dirty; the table is committed with a single `KVM_SET_GSI_ROUTING` when
//! a vector is about to fire (or on an explicit [`VectorLayer::commit`]), so bringing up `n`
//! vectors one at a time costs one commit, not `n`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use kvm_bindings::{kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQ_ROUTING_MSI};
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::msi::MsiMessage;
use crate::{Error, Result};

/// A global system interrupt number: the index of a KVM route.
pub type Gsi = u32;

/// What the vector layer needs from the hypervisor. Implemented for KVM's [`VmFd`]; tests
/// use a recording fake.
pub trait RoutingBackend: Send + Sync {
    /// Replaces the whole route table.
    fn set_gsi_routing(&self, routes: &[kvm_irq_routing_entry]) -> Result<()>;
    /// Binds `fd` to `gsi`.
    fn register_irqfd(&self, fd: &EventFd, gsi: Gsi) -> Result<()>;
    /// Unbinds `fd` from `gsi`.
    fn unregister_irqfd(&self, fd: &EventFd, gsi: Gsi) -> Result<()>;
    /// Injects one MSI without a route (slow path).
    fn signal_msi(&self, msg: MsiMessage) -> Result<()>;
}

impl RoutingBackend for VmFd {
    fn set_gsi_routing(&self, routes: &[kvm_irq_routing_entry]) -> Result<()> {
        let table = KvmIrqRouting::from_entries(routes).map_err(|_| Error::SetGsiRouting {
            routes: routes.len(),
            source: kvm_ioctls::Error::new(libc::E2BIG),
        })?;
        VmFd::set_gsi_routing(self, &table).map_err(|source| Error::SetGsiRouting {
            routes: routes.len(),
            source,
        })
    }

    fn register_irqfd(&self, fd: &EventFd, gsi: Gsi) -> Result<()> {
        VmFd::register_irqfd(self, fd, gsi).map_err(|source| Error::Irqfd { gsi, source })
    }

    fn unregister_irqfd(&self, fd: &EventFd, gsi: Gsi) -> Result<()> {
        VmFd::unregister_irqfd(self, fd, gsi).map_err(|source| Error::Irqfd { gsi, source })
    }

    fn signal_msi(&self, msg: MsiMessage) -> Result<()> {
        let msi = kvm_bindings::kvm_msi {
            address_lo: msg.address_lo(),
            address_hi: msg.address_hi(),
            data: msg.data,
            ..Default::default()
        };
        VmFd::signal_msi(self, msi)
            .map(|_| ())
            .map_err(Error::SignalMsi)
    }
}

/// One allocated CPU-vector-layer interrupt: a GSI with its irqfd.
#[derive(Debug)]
pub struct Vector {
    gsi: Gsi,
    irqfd: Arc<EventFd>,
    attached: AtomicBool,
    routed: AtomicBool,
    fires: AtomicU64,
}

impl Vector {
    /// The GSI of this vector.
    pub fn gsi(&self) -> Gsi {
        self.gsi
    }

    /// The irqfd bound to the GSI (a kernel-side source may be handed a clone).
    pub fn irqfd(&self) -> &EventFd {
        &self.irqfd
    }

    /// Whether the irqfd is bound to the GSI in KVM (always, except for vectors allocated with
    /// [`VectorLayer::allocate_external`] while detached).
    pub fn is_attached(&self) -> bool {
        self.attached.load(Ordering::Acquire)
    }

    /// Whether a route is installed for this vector (otherwise fires are dropped by KVM).
    pub fn is_routed(&self) -> bool {
        self.routed.load(Ordering::Acquire)
    }

    /// How many times this vector was fired through its irqfd.
    pub fn fires(&self) -> u64 {
        self.fires.load(Ordering::Relaxed)
    }
}

/// Counters a user can read to see what the vector layer costs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VectorLayerStats {
    /// Number of `KVM_SET_GSI_ROUTING` calls made.
    pub commits: u64,
    /// Number of route changes (add, update, remove) requested.
    pub route_changes: u64,
    /// Routes currently installed (or pending commit).
    pub routes: usize,
    /// Vectors (GSIs) currently allocated.
    pub allocated: usize,
    /// Interrupts delivered with `KVM_SIGNAL_MSI` because no route could be had.
    pub slow_path_signals: u64,
}

/// The CPU vector layer of the hierarchy.
pub trait VectorLayer: Send + Sync {
    /// Allocates a vector, with the given GSI (`Some`, must be below the reserved limit) or any
    /// free one. The vector starts without a route.
    fn allocate(&self, fixed: Option<Gsi>) -> Result<Arc<Vector>>;
    /// Allocates a vector whose irqfd is `trigger`, an eventfd that something outside the VMM
    /// signals (a host device through VFIO, a vhost worker). It starts detached: the irqfd is
    /// bound to the GSI only by [`set_attached`](Self::set_attached).
    fn allocate_external(&self, fixed: Option<Gsi>, trigger: Arc<EventFd>) -> Result<Arc<Vector>>;
    /// Binds (`true`) or unbinds the vector's irqfd to its GSI. While unbound, signals stay
    /// in the eventfd's counter.
    fn set_attached(&self, vector: &Vector, attached: bool) -> Result<()>;
    /// Sets (`Some`) or removes (`None`) the vector's route. Takes effect at the next commit.
    fn set_route(&self, vector: &Vector, message: Option<MsiMessage>);
    /// Releases the vector: route removed, irqfd unbound, GSI returned.
    fn free(&self, vector: Arc<Vector>) -> Result<()>;
    /// Commits pending route changes, if any, with one `KVM_SET_GSI_ROUTING`.
    fn commit(&self) -> Result<()>;
    /// Signals the vector, committing pending route changes first.
    fn fire(&self, vector: &Vector) -> Result<()>;
    /// Delivers `message` once without a route (`KVM_SIGNAL_MSI`): the slow path of a
    /// device vector that could not get a GSI (counted in `slow_path_signals`).
    fn signal_msi(&self, message: MsiMessage) -> Result<()>;
    /// Delivers a platform message once (an IOMMU's fault or completion event), not counted
    /// as slow-path delivery.
    fn send_platform_msi(&self, message: MsiMessage) -> Result<()>;
    /// Current counters.
    fn stats(&self) -> VectorLayerStats;
}

struct RouteTable {
    /// Dense list of installed routes, in the order KVM receives them.
    entries: Vec<kvm_irq_routing_entry>,
    /// GSI -> position in `entries`.
    index: HashMap<Gsi, usize>,
    /// Allocation state per GSI.
    in_use: Vec<bool>,
    /// GSIs released and ready for reuse (above the reserved range).
    free: Vec<Gsi>,
    /// GSIs released whose route removal is not committed yet; reusable after the next
    /// commit, so a new vector never inherits a stale route.
    quarantine: Vec<Gsi>,
    /// Per GSI: a route was removed since the last commit (KVM may still hold it).
    removed: Vec<bool>,
    /// The GSIs flagged in `removed`, to clear them at commit.
    removed_list: Vec<Gsi>,
    /// Next never-used GSI above the reserved range.
    next: Gsi,
    allocated: usize,
}

impl RouteTable {
    fn upsert(&mut self, entry: kvm_irq_routing_entry) {
        match self.index.get(&entry.gsi) {
            Some(&pos) => self.entries[pos] = entry,
            None => {
                self.index.insert(entry.gsi, self.entries.len());
                self.entries.push(entry);
            }
        }
    }

    fn remove(&mut self, gsi: Gsi) -> bool {
        let Some(pos) = self.index.remove(&gsi) else {
            return false;
        };
        self.entries.swap_remove(pos);
        if let Some(moved) = self.entries.get(pos) {
            self.index.insert(moved.gsi, pos);
        }
        if !self.removed[gsi as usize] {
            self.removed[gsi as usize] = true;
            self.removed_list.push(gsi);
        }
        true
    }

    /// Whether KVM may still hold a route for `gsi` (installed, or removed but not
    /// committed).
    fn may_be_routed_in_kvm(&self, gsi: Gsi) -> bool {
        self.index.contains_key(&gsi) || self.removed[gsi as usize]
    }
}

/// The KVM implementation of the vector layer.
pub struct KvmVectorLayer {
    backend: Arc<dyn RoutingBackend>,
    table: Mutex<RouteTable>,
    dirty: AtomicBool,
    reserved: Gsi,
    max_gsi: Gsi,
    commits: AtomicU64,
    route_changes: AtomicU64,
    slow_path_signals: AtomicU64,
}

impl KvmVectorLayer {
    /// Creates the layer. GSIs `0..reserved` are only handed out on request by number (the
    /// split-irqchip IOAPIC pins, whose routes KVM scans for EOI tracking); dynamic
    /// allocation uses `reserved..max_gsi`.
    pub fn new(backend: Arc<dyn RoutingBackend>, reserved: Gsi, max_gsi: Gsi) -> Self {
        let max_gsi = max_gsi.max(reserved);
        Self {
            backend,
            table: Mutex::new(RouteTable {
                entries: Vec::new(),
                index: HashMap::new(),
                in_use: vec![false; max_gsi as usize],
                free: Vec::new(),
                quarantine: Vec::new(),
                removed: vec![false; max_gsi as usize],
                removed_list: Vec::new(),
                next: reserved,
                allocated: 0,
            }),
            dirty: AtomicBool::new(false),
            reserved,
            max_gsi,
            commits: AtomicU64::new(0),
            route_changes: AtomicU64::new(0),
            slow_path_signals: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, RouteTable> {
        // A poisoned lock only means another thread panicked mid-update; the table itself
        // stays structurally valid, so keep going.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn allocate_with(
        &self,
        fixed: Option<Gsi>,
        irqfd: Arc<EventFd>,
        attach: bool,
    ) -> Result<Arc<Vector>> {
        let mut t = self.lock();
        let gsi = match fixed {
            Some(g) if g < self.reserved && !t.in_use[g as usize] => g,
            Some(g) => return Err(Error::GsiUnavailable(g)),
            None => {
                if t.free.is_empty() && t.next >= self.max_gsi && !t.quarantine.is_empty() {
                    // Only released GSIs are left: commit their route removal to reuse them.
                    self.commit_locked(&mut t)?;
                }
                match t.free.pop() {
                    Some(g) => g,
                    None if t.next < self.max_gsi => {
                        t.next += 1;
                        t.next - 1
                    }
                    None => return Err(Error::GsiExhausted(self.max_gsi)),
                }
            }
        };
        if attach {
            if let Err(e) = self.backend.register_irqfd(&irqfd, gsi) {
                if gsi >= self.reserved {
                    t.free.push(gsi);
                }
                return Err(e);
            }
        }
        t.in_use[gsi as usize] = true;
        t.allocated += 1;
        Ok(Arc::new(Vector {
            gsi,
            irqfd,
            attached: AtomicBool::new(attach),
            routed: AtomicBool::new(false),
            fires: AtomicU64::new(0),
        }))
    }

    fn commit_locked(&self, table: &mut RouteTable) -> Result<()> {
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        if let Err(e) = self.backend.set_gsi_routing(&table.entries) {
            self.dirty.store(true, Ordering::Release);
            return Err(e);
        }
        self.commits.fetch_add(1, Ordering::Relaxed);
        let released = std::mem::take(&mut table.quarantine);
        table.free.extend(released);
        for g in std::mem::take(&mut table.removed_list) {
            table.removed[g as usize] = false;
        }
        Ok(())
    }
}

/// The KVM route for `msg` (in KVM's x2APIC API form: an extended destination ID in
/// address bits 11:5 is moved to the upper address, see [`MsiMessage::kvm_format`]).
fn msi_route(gsi: Gsi, msg: MsiMessage) -> kvm_irq_routing_entry {
    let msg = msg.kvm_format();
    let mut entry = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_MSI,
        ..Default::default()
    };
    entry.u.msi.address_lo = msg.address_lo();
    entry.u.msi.address_hi = msg.address_hi();
    entry.u.msi.data = msg.data;
    entry
}

impl VectorLayer for KvmVectorLayer {
    fn allocate(&self, fixed: Option<Gsi>) -> Result<Arc<Vector>> {
        let irqfd = EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd)?;
        self.allocate_with(fixed, Arc::new(irqfd), true)
    }

    fn allocate_external(&self, fixed: Option<Gsi>, trigger: Arc<EventFd>) -> Result<Arc<Vector>> {
        self.allocate_with(fixed, trigger, false)
    }

    fn set_attached(&self, vector: &Vector, attached: bool) -> Result<()> {
        let _t = self.lock();
        if vector.attached.load(Ordering::Acquire) == attached {
            return Ok(());
        }
        if attached {
            self.backend.register_irqfd(&vector.irqfd, vector.gsi)?;
        } else {
            self.backend.unregister_irqfd(&vector.irqfd, vector.gsi)?;
        }
        vector.attached.store(attached, Ordering::Release);
        Ok(())
    }

    fn set_route(&self, vector: &Vector, message: Option<MsiMessage>) {
        let mut t = self.lock();
        let changed = match message {
            Some(m) => {
                t.upsert(msi_route(vector.gsi, m));
                vector.routed.store(true, Ordering::Release);
                true
            }
            None => {
                vector.routed.store(false, Ordering::Release);
                t.remove(vector.gsi)
            }
        };
        if changed {
            self.route_changes.fetch_add(1, Ordering::Relaxed);
            self.dirty.store(true, Ordering::Release);
        }
    }

    fn free(&self, vector: Arc<Vector>) -> Result<()> {
        let mut t = self.lock();
        if t.remove(vector.gsi) {
            self.route_changes.fetch_add(1, Ordering::Relaxed);
            self.dirty.store(true, Ordering::Release);
        }
        let stale = t.may_be_routed_in_kvm(vector.gsi);
        // Unbinding the irqfd first means nothing can signal the GSI while its stale route
        // waits for the next commit; the GSI itself is reused only after that commit.
        if vector.attached.swap(false, Ordering::AcqRel) {
            if let Err(e) = self.backend.unregister_irqfd(&vector.irqfd, vector.gsi) {
                vector.attached.store(true, Ordering::Release);
                return Err(e);
            }
        }
        t.in_use[vector.gsi as usize] = false;
        t.allocated -= 1;
        match (vector.gsi >= self.reserved, stale) {
            (true, true) => t.quarantine.push(vector.gsi),
            (true, false) => t.free.push(vector.gsi),
            // Fixed GSIs are re-requested by number; commit so their stale route is gone.
            (false, true) => self.commit_locked(&mut t)?,
            (false, false) => {}
        }
        Ok(())
    }

    fn commit(&self) -> Result<()> {
        if !self.dirty.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut t = self.lock();
        self.commit_locked(&mut t)
    }

    fn fire(&self, vector: &Vector) -> Result<()> {
        // Hot path: one atomic load when nothing changed, then the eventfd write.
        if self.dirty.load(Ordering::Acquire) {
            self.commit()?;
        }
        vector.fires.fetch_add(1, Ordering::Relaxed);
        vector.irqfd.write(1).map_err(|source| Error::Signal {
            gsi: vector.gsi,
            source,
        })
    }

    fn signal_msi(&self, message: MsiMessage) -> Result<()> {
        self.slow_path_signals.fetch_add(1, Ordering::Relaxed);
        self.backend.signal_msi(message.kvm_format())
    }

    fn send_platform_msi(&self, message: MsiMessage) -> Result<()> {
        self.backend.signal_msi(message.kvm_format())
    }

    fn stats(&self) -> VectorLayerStats {
        let t = self.lock();
        VectorLayerStats {
            commits: self.commits.load(Ordering::Relaxed),
            route_changes: self.route_changes.load(Ordering::Relaxed),
            routes: t.entries.len(),
            allocated: t.allocated,
            slow_path_signals: self.slow_path_signals.load(Ordering::Relaxed),
        }
    }
}

/// A [`RoutingBackend`] that records calls instead of talking to KVM (for unit tests and
/// benchmarks of the bookkeeping alone).
#[derive(Default)]
pub struct RecordingBackend {
    /// Last committed table, as (gsi, message) pairs sorted by GSI.
    pub committed: Mutex<Vec<(Gsi, MsiMessage)>>,
    /// Number of `set_gsi_routing` calls.
    pub commits: AtomicU64,
    /// Currently bound irqfds by GSI.
    pub irqfds: Mutex<Vec<Gsi>>,
    /// Messages sent through `signal_msi`.
    pub signalled: Mutex<Vec<MsiMessage>>,
}

impl RoutingBackend for RecordingBackend {
    fn set_gsi_routing(&self, routes: &[kvm_irq_routing_entry]) -> Result<()> {
        let mut v: Vec<(Gsi, MsiMessage)> = routes
            .iter()
            .map(|r| {
                // SAFETY: the vector layer only installs MSI routes, so `msi` is the
                // initialised union member.
                let m = unsafe { r.u.msi };
                (r.gsi, MsiMessage::new(m.address_lo, m.address_hi, m.data))
            })
            .collect();
        v.sort_by_key(|e| e.0);
        *self.committed.lock().unwrap() = v;
        self.commits.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn register_irqfd(&self, _fd: &EventFd, gsi: Gsi) -> Result<()> {
        self.irqfds.lock().unwrap().push(gsi);
        Ok(())
    }

    fn unregister_irqfd(&self, _fd: &EventFd, gsi: Gsi) -> Result<()> {
        self.irqfds.lock().unwrap().retain(|&g| g != gsi);
        Ok(())
    }

    fn signal_msi(&self, msg: MsiMessage) -> Result<()> {
        self.signalled.lock().unwrap().push(msg);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(reserved: Gsi, max: Gsi) -> (Arc<RecordingBackend>, KvmVectorLayer) {
        let b = Arc::new(RecordingBackend::default());
        let l = KvmVectorLayer::new(b.clone(), reserved, max);
        (b, l)
    }

    fn msg(v: u8) -> MsiMessage {
        MsiMessage::compose(0, false, v, 0, false)
    }

    #[test]
    fn routes_and_signals_carry_the_extended_destination_in_the_upper_address() {
        let (b, l) = layer(0, 8);
        let v = l.allocate(None).unwrap();
        // APIC ID 300 as a guest with KVM_FEATURE_MSI_EXT_DEST_ID writes it: bits 7:0 in
        // address bits 19:12, bits 14:8 in address bits 11:5.
        let ext = MsiMessage::new(0xFEE2_C000 | (1 << 5), 0, 0x4041);
        l.set_route(&v, Some(ext));
        l.commit().unwrap();
        let routed = b.committed.lock().unwrap()[0].1;
        assert_eq!(
            (routed.address_lo(), routed.address_hi()),
            (0xFEE2_C000, 0x100)
        );
        assert_eq!(routed.destination(), 300);
        l.signal_msi(ext).unwrap();
        l.send_platform_msi(ext).unwrap();
        for m in b.signalled.lock().unwrap().iter() {
            assert_eq!((m.address_lo(), m.address_hi()), (0xFEE2_C000, 0x100));
        }
    }

    #[test]
    fn dynamic_allocation_skips_reserved_range() {
        let (_, l) = layer(24, 64);
        assert_eq!(l.allocate(None).unwrap().gsi(), 24);
        assert_eq!(l.allocate(Some(3)).unwrap().gsi(), 3);
    }

    #[test]
    fn fixed_gsi_cannot_be_taken_twice_or_outside_reserved() {
        let (_, l) = layer(24, 64);
        let _a = l.allocate(Some(4)).unwrap();
        assert!(matches!(l.allocate(Some(4)), Err(Error::GsiUnavailable(4))));
        assert!(matches!(
            l.allocate(Some(30)),
            Err(Error::GsiUnavailable(30))
        ));
    }

    #[test]
    fn exhaustion_is_an_error_and_freed_gsis_are_reused() {
        let (b, l) = layer(0, 2);
        let a = l.allocate(None).unwrap();
        let _b = l.allocate(None).unwrap();
        assert!(matches!(l.allocate(None), Err(Error::GsiExhausted(2))));
        let g = a.gsi();
        l.free(a).unwrap();
        assert_eq!(l.allocate(None).unwrap().gsi(), g);
        assert_eq!(b.irqfds.lock().unwrap().len(), 2);
    }

    #[test]
    fn many_route_changes_commit_once_at_fire() {
        let (b, l) = layer(0, 4096);
        let vs: Vec<_> = (0..100).map(|_| l.allocate(None).unwrap()).collect();
        for (i, v) in vs.iter().enumerate() {
            l.set_route(v, Some(msg(0x30 + i as u8)));
        }
        assert_eq!(b.commits.load(Ordering::Relaxed), 0);
        l.fire(&vs[7]).unwrap();
        assert_eq!(b.commits.load(Ordering::Relaxed), 1);
        l.fire(&vs[8]).unwrap();
        assert_eq!(b.commits.load(Ordering::Relaxed), 1);
        assert_eq!(b.committed.lock().unwrap().len(), 100);
        assert_eq!(vs[7].fires(), 1);
    }

    #[test]
    fn updating_a_route_keeps_other_routes_and_table_dense() {
        let (b, l) = layer(0, 16);
        let a = l.allocate(None).unwrap();
        let c = l.allocate(None).unwrap();
        let d = l.allocate(None).unwrap();
        l.set_route(&a, Some(msg(0x40)));
        l.set_route(&c, Some(msg(0x41)));
        l.set_route(&d, Some(msg(0x42)));
        l.set_route(&a, None);
        l.set_route(&d, Some(msg(0x52)));
        l.commit().unwrap();
        let t = b.committed.lock().unwrap().clone();
        assert_eq!(t, vec![(c.gsi(), msg(0x41)), (d.gsi(), msg(0x52))]);
        assert!(!a.is_routed());
        assert_eq!(l.stats().routes, 2);
    }

    #[test]
    fn commit_without_changes_is_free() {
        let (b, l) = layer(0, 16);
        l.commit().unwrap();
        let v = l.allocate(None).unwrap();
        l.set_route(&v, None);
        l.commit().unwrap();
        assert_eq!(b.commits.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn free_removes_route_before_gsi_reuse() {
        let (b, l) = layer(0, 16);
        let v = l.allocate(None).unwrap();
        let g = v.gsi();
        l.set_route(&v, Some(msg(0x40)));
        l.commit().unwrap();
        l.free(v).unwrap();
        assert_eq!(l.stats().allocated, 0);
        // Not reused before the removal is committed.
        let w = l.allocate(None).unwrap();
        assert_ne!(w.gsi(), g);
        l.commit().unwrap();
        assert!(b.committed.lock().unwrap().is_empty());
        assert_eq!(l.allocate(None).unwrap().gsi(), g);
    }

    #[test]
    fn gsi_whose_route_removal_is_uncommitted_is_not_reused() {
        let (b, l) = layer(0, 16);
        let v = l.allocate(None).unwrap();
        let g = v.gsi();
        l.set_route(&v, Some(msg(0x40)));
        l.commit().unwrap();
        l.set_route(&v, None); // removal not committed: KVM still routes g to 0x40
        l.free(v).unwrap();
        assert_ne!(l.allocate(None).unwrap().gsi(), g);
        l.commit().unwrap();
        assert!(b.committed.lock().unwrap().is_empty());
        assert_eq!(l.allocate(None).unwrap().gsi(), g);
    }

    #[test]
    fn max_below_reserved_is_clamped() {
        let (_, l) = layer(24, 4);
        assert!(l.allocate(Some(23)).is_ok());
        assert!(matches!(l.allocate(None), Err(Error::GsiExhausted(24))));
    }

    #[test]
    fn freeing_many_vectors_costs_one_commit() {
        let (b, l) = layer(0, 4096);
        let vs: Vec<_> = (0..2048).map(|_| l.allocate(None).unwrap()).collect();
        for v in &vs {
            l.set_route(v, Some(msg(0x40)));
        }
        l.commit().unwrap();
        for v in vs {
            l.free(v).unwrap();
        }
        l.commit().unwrap();
        assert_eq!(b.commits.load(Ordering::Relaxed), 2);
        assert!(b.committed.lock().unwrap().is_empty());
    }

    #[test]
    fn exhaustion_with_quarantined_gsis_commits_and_reuses() {
        let (b, l) = layer(0, 1);
        let v = l.allocate(None).unwrap();
        l.set_route(&v, Some(msg(0x40)));
        l.free(v).unwrap();
        let w = l.allocate(None).unwrap();
        assert_eq!(w.gsi(), 0);
        assert_eq!(b.commits.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn slow_path_is_counted() {
        let (b, l) = layer(0, 16);
        l.signal_msi(msg(0x33)).unwrap();
        assert_eq!(l.stats().slow_path_signals, 1);
        assert_eq!(b.signalled.lock().unwrap()[0], msg(0x33));
    }
}
