//! Tests of the VT-d unit, grouped by feature, on a shared fixture: a unit on 4 MiB of
//! guest RAM whose event interrupts and routes land in a [`RecordingBackend`].

mod dmar;
mod faults;
mod queued_invalidation;
mod registers;
mod retranslation;
mod translation;

use std::sync::{Arc, Mutex, OnceLock, Weak};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::spec::{desc, event_ctl, gcmd, gsts, irta, offset, FaultRecord, Irte};
use super::{VtdConfig, VtdUnit};
use crate::hierarchy::InterruptHierarchy;
use crate::msi::MsiMessage;
use crate::remap::{RemapLayer, RemapOutcome, RequesterId};
use crate::vector::{Gsi, KvmVectorLayer, RecordingBackend, Vector, VectorLayer, VectorLayerStats};

/// Guest RAM size.
pub(super) const RAM_SIZE: u64 = 0x40_0000;
/// Invalidation queue base (QS = 0: 256 entries, 4 KiB).
pub(super) const QUEUE_BASE: u64 = 0x1000;
/// Wait descriptor status address.
pub(super) const STATUS_ADDR: u64 = 0x3000;
/// Interrupt remapping table base (room for 2^16 entries).
pub(super) const IRT_BASE: u64 = 0x10_0000;
/// IOAPIC source ID used by the fixture.
pub(super) const IOAPIC_SID: RequesterId = RequesterId(0xF0F8);
/// A PCI requester.
pub(super) const DEV: RequesterId = RequesterId(0x0018); // 00:03.0
/// Fault event message programmed by the fixture (x2APIC destination 0x100 + vector 0x21).
pub(super) const FAULT_MSG: (u32, u32, u32) = (0xFEE0_0000, 0x100, 0x21);
/// Completion event message programmed by the fixture.
pub(super) const IE_MSG: (u32, u32, u32) = (0xFEE0_1000, 0, 0x22);
/// Status value Linux writes with its wait descriptors (QI_DONE).
pub(super) const QI_DONE: u32 = 2;

pub(super) struct Fixture {
    pub mem: GuestMemoryMmap,
    pub backend: Arc<RecordingBackend>,
    pub layer: Arc<KvmVectorLayer>,
    pub unit: Arc<VtdUnit>,
    pub hierarchy: Arc<InterruptHierarchy>,
    /// Next free queue slot (mirrors the driver's tail).
    pub tail: u32,
    /// Queue size in entries.
    pub queue_entries: u32,
    /// Queue base the unit latched (IQA at QIE enable).
    pub queue_base: u64,
}

impl Fixture {
    pub fn new() -> Self {
        Self::with_records(8)
    }

    pub fn with_records(num_fault_records: u8) -> Self {
        Self::build(num_fault_records, |layer| layer)
    }

    /// A fixture whose route updates and event messages go through an [`ObservingLayer`],
    /// which notes what the guest could see at each of them.
    pub fn observed() -> (Self, Arc<ObservingLayer>) {
        let mut observer = None;
        let f = Self::build(8, |layer| {
            let o = Arc::new(ObservingLayer {
                inner: layer,
                mem: OnceLock::new(),
                unit: OnceLock::new(),
                seen: Mutex::new(Vec::new()),
            });
            observer = Some(o.clone());
            o
        });
        let observer = observer.unwrap();
        observer.mem.set(f.mem.clone()).unwrap();
        observer.unit.set(Arc::downgrade(&f.unit)).unwrap();
        (f, observer)
    }

    /// The fixture, with the vector layer the unit and the hierarchy use made by `wrap`
    /// from the recording KVM layer.
    fn build(
        num_fault_records: u8,
        wrap: impl FnOnce(Arc<KvmVectorLayer>) -> Arc<dyn VectorLayer>,
    ) -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM_SIZE as usize)]).unwrap();
        let backend = Arc::new(RecordingBackend::default());
        let layer = Arc::new(KvmVectorLayer::new(backend.clone(), 24, 4096));
        let vectors = wrap(layer.clone());
        let unit = VtdUnit::new(
            mem.clone(),
            vectors.clone(),
            VtdConfig {
                register_base: 0xFED9_0000,
                ioapic_source_id: IOAPIC_SID,
                num_fault_records,
            },
        );
        let hierarchy = InterruptHierarchy::new(vectors, unit.clone());
        unit.set_hierarchy(Arc::downgrade(&hierarchy));
        Self {
            mem,
            backend,
            layer,
            unit,
            hierarchy,
            tail: 0,
            queue_entries: 256,
            queue_base: QUEUE_BASE,
        }
    }

    // --- register access -------------------------------------------------------------

    pub fn read(&self, off: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        self.unit.mmio_read(off, &mut b[..len]);
        u64::from_le_bytes(b)
    }

    pub fn read32(&self, off: u64) -> u32 {
        self.read(off, 4) as u32
    }

    pub fn read64(&self, off: u64) -> u64 {
        self.read(off, 8)
    }

    pub fn write(&self, off: u64, value: u64, len: usize) {
        self.unit.mmio_write(off, &value.to_le_bytes()[..len]);
    }

    pub fn write32(&self, off: u64, value: u32) {
        self.write(off, u64::from(value), 4);
    }

    pub fn write64(&self, off: u64, value: u64) {
        self.write(off, value, 8);
    }

    pub fn gsts(&self) -> u32 {
        self.read32(offset::GSTS)
    }

    /// Writes GCMD the way Linux does: its shadow of the persistent bits plus `command`.
    pub fn gcmd(&self, command: u32) {
        let shadow = self.gsts() & (gcmd::QIE | gcmd::IRE | gcmd::CFI | gcmd::TE);
        self.write32(offset::GCMD, shadow | command);
    }

    /// Clears persistent GCMD bits the way Linux does.
    pub fn gcmd_clear(&self, bits: u32) {
        let shadow = self.gsts() & (gcmd::QIE | gcmd::IRE | gcmd::CFI | gcmd::TE);
        self.write32(offset::GCMD, shadow & !bits);
    }

    // --- bring-up --------------------------------------------------------------------

    /// Linux's `dmar_enable_qi`: IQT = 0, IQA, QIE, poll QIES.
    pub fn enable_qi_at(&mut self, base: u64, qs: u64) {
        self.write32(offset::IQT, 0);
        self.write64(offset::IQA, base | qs);
        self.gcmd(gcmd::QIE);
        assert_ne!(self.gsts() & gsts::QIES, 0);
        self.tail = 0;
        self.queue_entries = 1 << (qs + 8);
        self.queue_base = base;
    }

    pub fn enable_qi(&mut self) {
        self.enable_qi_at(QUEUE_BASE, 0);
    }

    /// Programs IRTA (64-bit write) and sets the table pointer.
    pub fn set_table(&self, base: u64, eime: bool, s: u64) {
        let eime = if eime { irta::EIME } else { 0 };
        self.write64(offset::IRTA, base | eime | s);
        self.gcmd(gcmd::SIRTP);
        assert_ne!(self.gsts() & gsts::IRTPS, 0);
    }

    /// Programs the fault and completion event messages and unmasks both.
    pub fn program_events(&self) {
        self.write32(offset::FEDATA, FAULT_MSG.2);
        self.write32(offset::FEADDR, FAULT_MSG.0);
        self.write32(offset::FEUADDR, FAULT_MSG.1);
        self.write32(offset::FECTL, 0);
        self.write32(offset::IEDATA, IE_MSG.2);
        self.write32(offset::IEADDR, IE_MSG.0);
        self.write32(offset::IEUADDR, IE_MSG.1);
        self.write32(offset::IECTL, 0);
    }

    /// Linux 6.12's enable sequence in x2APIC mode (CAP.ESIRTPS = 0): clear stale faults,
    /// QI, SIRTP, global IEC + wait, IRE, fault event set-up.
    pub fn enable_ir(&mut self) {
        let _ = self.gsts();
        let _ = self.read32(offset::FSTS);
        self.write32(offset::FSTS, 0x83);
        self.enable_qi();
        self.set_table(IRT_BASE, true, 0xF);
        assert!(self.submit_sync(&[iec_global()]));
        self.gcmd(gcmd::IRE);
        assert_ne!(self.gsts() & gsts::IRES, 0);
        assert!(self.unit.is_enabled());
        self.program_events();
    }

    // --- queued invalidation ---------------------------------------------------------

    /// Places `descs` in the queue and writes IQT (32-bit, like Linux).
    pub fn submit(&mut self, descs: &[[u64; 2]]) {
        for d in descs {
            self.put_descriptor(self.tail, *d);
            self.tail = (self.tail + 1) % self.queue_entries;
        }
        self.write32(offset::IQT, self.tail << 4);
    }

    pub fn put_descriptor(&self, slot: u32, d: [u64; 2]) {
        let addr = self.queue_base + u64::from(slot) * 16;
        self.mem.write_obj(d[0], GuestAddress(addr)).unwrap();
        self.mem.write_obj(d[1], GuestAddress(addr + 8)).unwrap();
    }

    /// Submits `descs` plus a status-writing wait, like `qi_submit_sync`; returns whether
    /// the status was written.
    pub fn submit_sync(&mut self, descs: &[[u64; 2]]) -> bool {
        self.mem.write_obj(0u32, GuestAddress(STATUS_ADDR)).unwrap();
        let mut all = descs.to_vec();
        all.push(wait_sw(QI_DONE, STATUS_ADDR));
        self.submit(&all);
        self.status() == QI_DONE
    }

    pub fn status(&self) -> u32 {
        self.mem.read_obj(GuestAddress(STATUS_ADDR)).unwrap()
    }

    pub fn iqh(&self) -> u32 {
        (self.read64(offset::IQH) >> 4) as u32
    }

    // --- interrupt remapping table ---------------------------------------------------

    /// Writes IRTE `index` as two 64-bit stores, like Linux's `modify_irte`.
    pub fn write_irte(&self, index: u32, irte: Irte) {
        let addr = IRT_BASE + u64::from(index) * 16;
        self.mem.write_obj(irte.lo, GuestAddress(addr)).unwrap();
        self.mem.write_obj(irte.hi, GuestAddress(addr + 8)).unwrap();
    }

    /// Writes IRTE `index` and invalidates it (index-selective IEC + wait).
    pub fn program_irte(&mut self, index: u32, irte: Irte) {
        self.write_irte(index, irte);
        assert!(self.submit_sync(&[iec_index(index, 0)]));
    }

    /// An interrupt request as a device makes it: translate, and report the fault if the
    /// request is blocked (what `DeviceDomain::fire` does on a blocked vector).
    pub fn remap(&self, requester: RequesterId, msg: MsiMessage) -> RemapOutcome {
        let outcome = self.unit.remap(requester, msg);
        if outcome == RemapOutcome::Blocked {
            self.unit.report_blocked(requester, msg);
        }
        outcome
    }

    // --- observation -----------------------------------------------------------------

    /// Fault recording registers as read through MMIO.
    pub fn records(&self) -> Vec<FaultRecord> {
        let n = ((self.read64(offset::CAP) >> 40) & 0xFF) + 1;
        (0..n)
            .map(|i| FaultRecord {
                lo: self.read64(offset::FRCD + i * 16),
                hi: self.read64(offset::FRCD + i * 16 + 8),
            })
            .collect()
    }

    pub fn pending_records(&self) -> Vec<FaultRecord> {
        self.records()
            .into_iter()
            .filter(FaultRecord::is_pending)
            .collect()
    }

    /// Event messages sent through the vector layer's slow path.
    pub fn signalled(&self) -> Vec<MsiMessage> {
        self.backend.signalled.lock().unwrap().clone()
    }

    pub fn fault_events(&self) -> usize {
        let m = fault_msg();
        self.signalled().iter().filter(|s| **s == m).count()
    }

    pub fn completion_events(&self) -> usize {
        let m = ie_msg();
        self.signalled().iter().filter(|s| **s == m).count()
    }

    /// Committed routes after flushing pending changes.
    pub fn routes(&self) -> Vec<(Gsi, MsiMessage)> {
        self.layer.commit().unwrap();
        self.backend.committed.lock().unwrap().clone()
    }
}

/// Second wait-status address (for batches with two waits).
pub(super) const STATUS2_ADDR: u64 = 0x3008;

/// What the guest could observe when a vector's route changed or an event message was sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Observation {
    /// A route update in the vector layer (`None`: route removed), with the words at
    /// [`STATUS_ADDR`] and [`STATUS2_ADDR`] and ICS at that moment.
    Route {
        message: Option<MsiMessage>,
        status: [u32; 2],
        ics: u32,
    },
    /// An event message (fault or completion event), with the same status words.
    Event { msi: MsiMessage, status: [u32; 2] },
}

/// A vector layer that forwards to the recording KVM layer and notes, at every route update
/// and event message, the wait-status words in guest memory and ICS: the order in which the
/// new routes and the completion of an invalidation became visible.
pub(super) struct ObservingLayer {
    pub inner: Arc<KvmVectorLayer>,
    pub mem: OnceLock<GuestMemoryMmap>,
    pub unit: OnceLock<Weak<VtdUnit>>,
    pub seen: Mutex<Vec<Observation>>,
}

impl ObservingLayer {
    fn status(&self) -> [u32; 2] {
        let mem = self.mem.get().unwrap();
        [STATUS_ADDR, STATUS2_ADDR].map(|a| mem.read_obj(GuestAddress(a)).unwrap())
    }

    fn ics(&self) -> u32 {
        let mut ics = [0u8; 4];
        if let Some(unit) = self.unit.get().and_then(Weak::upgrade) {
            unit.mmio_read(offset::ICS, &mut ics);
        }
        u32::from_le_bytes(ics)
    }

    /// Observations so far, emptied.
    pub fn take(&self) -> Vec<Observation> {
        std::mem::take(&mut self.seen.lock().unwrap())
    }
}

impl VectorLayer for ObservingLayer {
    fn allocate(&self, fixed: Option<Gsi>) -> crate::Result<Arc<Vector>> {
        self.inner.allocate(fixed)
    }

    fn allocate_external(
        &self,
        fixed: Option<Gsi>,
        trigger: Arc<vmm_sys_util::eventfd::EventFd>,
    ) -> crate::Result<Arc<Vector>> {
        self.inner.allocate_external(fixed, trigger)
    }

    fn set_attached(&self, vector: &Vector, attached: bool) -> crate::Result<()> {
        self.inner.set_attached(vector, attached)
    }

    fn set_route(&self, vector: &Vector, message: Option<MsiMessage>) {
        self.inner.set_route(vector, message);
        let o = Observation::Route {
            message,
            status: self.status(),
            ics: self.ics(),
        };
        self.seen.lock().unwrap().push(o);
    }

    fn free(&self, vector: Arc<Vector>) -> crate::Result<()> {
        self.inner.free(vector)
    }

    fn commit(&self) -> crate::Result<()> {
        self.inner.commit()
    }

    fn fire(&self, vector: &Vector) -> crate::Result<()> {
        self.inner.fire(vector)
    }

    fn signal_msi(&self, message: MsiMessage) -> crate::Result<()> {
        self.inner.signal_msi(message)
    }

    fn send_platform_msi(&self, msi: MsiMessage) -> crate::Result<()> {
        self.inner.send_platform_msi(msi)?;
        let o = Observation::Event {
            msi,
            status: self.status(),
        };
        self.seen.lock().unwrap().push(o);
        Ok(())
    }

    fn stats(&self) -> VectorLayerStats {
        self.inner.stats()
    }
}

pub(super) fn fault_msg() -> MsiMessage {
    MsiMessage::new(FAULT_MSG.0, FAULT_MSG.1, FAULT_MSG.2)
}

pub(super) fn ie_msg() -> MsiMessage {
    MsiMessage::new(IE_MSG.0, IE_MSG.1, IE_MSG.2)
}

/// A present, remapped-format IRTE as Linux writes it in x2APIC mode: fixed delivery,
/// physical destination, edge, RH = 0, SVT = 01 SQ = 0 with `sid`.
pub(super) fn irte(dest: u32, vector: u8, sid: RequesterId) -> Irte {
    Irte {
        lo: Irte::P | (u64::from(vector) << 16) | (u64::from(dest) << 32),
        hi: u64::from(sid.0) | (1 << 18),
    }
}

pub(super) fn iec_global() -> [u64; 2] {
    [u64::from(desc::TYPE_IEC), 0]
}

pub(super) fn iec_index(index: u32, im: u32) -> [u64; 2] {
    [
        u64::from(desc::TYPE_IEC)
            | desc::IEC_INDEX_SELECTIVE
            | (u64::from(im) << 27)
            | (u64::from(index & 0xFFFF) << 32),
        0,
    ]
}

pub(super) fn wait_sw(data: u32, addr: u64) -> [u64; 2] {
    [
        u64::from(desc::TYPE_WAIT) | desc::WAIT_SW | (u64::from(data) << 32),
        addr,
    ]
}

pub(super) fn wait_if() -> [u64; 2] {
    [u64::from(desc::TYPE_WAIT) | desc::WAIT_IF, 0]
}

/// The message a remappable-format MSI-X entry holds for `index` (SHV = 1, subhandle 0),
/// as Linux composes it.
pub(super) fn msix_message(index: u16) -> MsiMessage {
    let mut m = MsiMessage::remappable(index);
    m.address |= 1 << 3;
    m
}

#[test]
fn unit_is_send_and_sync_and_named() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<VtdUnit>();
    let f = Fixture::new();
    assert_eq!(f.unit.name(), "vt-d");
    assert_eq!(f.hierarchy.remap_layer().name(), "vt-d");
}

#[test]
fn summary_shows_enable_bits_table_and_faults() {
    let mut f = Fixture::new();
    assert!(f.unit.summary().starts_with("IRE=0 EIME=0 CFI=0 QIE=0"));
    f.enable_ir();
    f.remap(DEV, MsiMessage::compose(0, false, 0x30, 0, false));
    let s = f.unit.summary();
    assert!(
        s.contains("IRE=1 EIME=1 CFI=0 QIE=1 IRTA=0x100000 entries=65536 faults=1"),
        "{s}"
    );
    assert!(f.hierarchy.render().contains("remap layer: vt-d IRE=1"));
}

#[test]
fn event_interrupts_start_masked() {
    let f = Fixture::new();
    assert_eq!(f.read32(offset::FECTL), event_ctl::IM);
    assert_eq!(f.read32(offset::IECTL), event_ctl::IM);
    assert_eq!(f.layer.stats().slow_path_signals, 0);
}
