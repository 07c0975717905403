//! `irqtest`: a PCI device for exercising interrupt delivery end to end.
//!
//! It has an MSI capability (up to 32 messages, 64-bit, per-vector masking) and an MSI-X
//! capability (1..=2048 vectors), and lets the guest fire any vector any number of times
//! and read per-vector counters back.
//!
//! BAR0 (4 KiB registers, all 32-bit):
//!
//! | off  | name         | access | meaning |
//! |------|--------------|--------|---------|
//! | 0x00 | MAGIC        | RO | `0x5451_5249` ("IRQT") |
//! | 0x04 | MSIX_VECTORS | RO | MSI-X table size |
//! | 0x08 | MSI_VECTORS  | RO | MSI messages supported |
//! | 0x0c | MODE         | RO | 0 none, 1 MSI, 2 MSI-X (what a fire uses) |
//! | 0x10 | FIRE         | WO | bits 15:0 vector, 31:16 count (0 means 1): fire that many times |
//! | 0x14 | SELECT       | RW | vector whose counters 0x18..0x24 show (in the current mode) |
//! | 0x18 | FIRES        | RO | fires accepted for the selected vector |
//! | 0x1c | DELIVERED    | RO | interrupts handed to the CPU vector layer |
//! | 0x20 | PENDING      | RO | 1 if the selected vector is pending |
//! | 0x24 | DROPPED      | RO | fires that could not be delivered (bad message) |
//! | 0x28 | REJECTED     | RO | FIRE writes refused (no mode, vector out of range) |
//! | 0x2c | IMS_ENTRIES  | RO | IMS table size (0: no IMS) |
//! | 0x30 | IMS_FIRE     | WO | bits 15:0 IMS entry, 31:16 count (0 means 1); IMS fires need no MSI/MSI-X mode |
//!
//! SELECT with bit 31 set ([`SELECT_IMS`]) selects IMS entry `SELECT & 0xffff` for the
//! counters instead of an MSI/MSI-X vector.
//!
//! BAR1 (32-bit, only with doorbells: [`IrqTest::enable_doorbells`], `doorbell=on`): one
//! doorbell per MSI-X vector, 4 bytes apart (4 KiB or `4 × vectors` rounded up to a power of
//! two). A write of any value and width to doorbell `v` fires vector `v` once, as FIRE would.
//! While vector `v` is on its domain's direct path (MSI-X enabled, entry unmasked, route
//! committed) the doorbell is a KVM ioeventfd on the vector's irqfd: the guest's write is
//! delivered by the kernel with no exit to the VMM, and is not counted in FIRES. Otherwise
//! (masked, not yet routed, MSI mode) the write exits and the device fires the vector, with
//! pending and counters as for FIRE. Reads return 0.
//!
//! BAR2 (64 KiB, 64-bit): MSI-X table at 0, PBA at 0x8000.
//!
//! BAR4 (64-bit, only with `ims > 0`): the Interrupt Message Store, `ims` entries of 16 bytes
//! (see [`ims`]): address low, address high, data, control (bit 0 mask, read-write, set at
//! reset; bit 1 pending, read-only). Every entry is a vector of the device's own IMS domain,
//! independent of MSI and MSI-X (Linux's IMS: device-specific storage, not limited to
//! MSI-X's 2048 entries). Accesses are 4 or 8 bytes, naturally aligned; anything else reads
//! zero and is ignored on write.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use log::warn;
use vmm_sys_util::eventfd::EventFd;

use interrupt::{
    warn_ratelimited, DeviceDomain, DomainKind, InterruptHierarchy, MsiMessage, RateLimiter,
    RequesterId,
};
use pci::msix::MSIX_MAX_VECTORS;
use pci::{Bar, BarKind, ConfigSpace, IoEventRegistry, MsiCapability, MsixCapability, PciDevice};

/// PCI vendor ID of the test device.
pub const IRQTEST_VENDOR: u16 = 0x1b36;
/// PCI device ID of the test device.
pub const IRQTEST_DEVICE: u16 = 0x0110;
/// MAGIC register value.
pub const IRQTEST_MAGIC: u32 = 0x5451_5249;
/// MSI messages offered.
pub const IRQTEST_MSI_VECTORS: usize = 32;
/// Offset of the PBA in BAR2.
pub const IRQTEST_PBA_OFFSET: u64 = 0x8000;

/// Register offsets in BAR0.
pub mod regs {
    /// Magic.
    pub const MAGIC: u64 = 0x00;
    /// MSI-X table size.
    pub const MSIX_VECTORS: u64 = 0x04;
    /// MSI messages.
    pub const MSI_VECTORS: u64 = 0x08;
    /// Current mode.
    pub const MODE: u64 = 0x0c;
    /// Fire command.
    pub const FIRE: u64 = 0x10;
    /// Counter selector.
    pub const SELECT: u64 = 0x14;
    /// Fires of the selected vector.
    pub const FIRES: u64 = 0x18;
    /// Deliveries of the selected vector.
    pub const DELIVERED: u64 = 0x1c;
    /// Pending bit of the selected vector.
    pub const PENDING: u64 = 0x20;
    /// Drops of the selected vector.
    pub const DROPPED: u64 = 0x24;
    /// Rejected fire commands.
    pub const REJECTED: u64 = 0x28;
    /// IMS table size.
    pub const IMS_ENTRIES: u64 = 0x2c;
    /// IMS fire command.
    pub const IMS_FIRE: u64 = 0x30;
}

/// BAR holding the doorbells.
pub const IRQTEST_DOORBELL_BAR: usize = 1;
/// Bytes between two doorbells.
pub const DOORBELL_STRIDE: u64 = 4;

/// The doorbells' KVM ioeventfds: one per vector on its domain's direct path, at the
/// doorbell's address while BAR1 decodes. Told about the direct path by the MSI-X domain's
/// listener (under the domain's lock), about BAR1 by config writes; never calls back into
/// the domain.
struct Doorbells {
    name: String,
    registry: Arc<dyn IoEventRegistry>,
    state: Mutex<DoorbellState>,
}

#[derive(Default)]
struct DoorbellState {
    /// BAR1's address while memory decoding is on.
    base: Option<u64>,
    /// Vectors on the direct path, with their irqfds.
    direct: BTreeMap<usize, Arc<EventFd>>,
    /// Vectors whose doorbell is registered at `base`.
    registered: std::collections::BTreeSet<usize>,
    /// A registration failed (KVM's limit of ioeventfds): said once.
    warned: bool,
}

impl Doorbells {
    fn bar_size(vectors: usize) -> u64 {
        (vectors as u64 * DOORBELL_STRIDE)
            .next_power_of_two()
            .max(0x1000)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DoorbellState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn register(&self, st: &mut DoorbellState, index: usize) {
        let (Some(base), Some(fd)) = (st.base, st.direct.get(&index)) else {
            return;
        };
        match self
            .registry
            .register_mmio(base + index as u64 * DOORBELL_STRIDE, fd)
        {
            Ok(()) => {
                st.registered.insert(index);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {}
            Err(e) => {
                if !st.warned {
                    st.warned = true;
                    warn!(
                        "{}: doorbell of vector {index} stays an MMIO exit (ioeventfd: {e}); further failures are not logged",
                        self.name
                    );
                }
            }
        }
    }

    fn unregister(&self, st: &mut DoorbellState, index: usize) {
        if !st.registered.remove(&index) {
            return;
        }
        let (Some(base), Some(fd)) = (st.base, st.direct.get(&index)) else {
            return;
        };
        if let Err(e) = self
            .registry
            .unregister_mmio(base + index as u64 * DOORBELL_STRIDE, fd)
        {
            warn!(
                "{}: removing the doorbell of vector {index}: {e}",
                self.name
            );
        }
    }

    /// The MSI-X domain's direct-path listener.
    fn set_direct(&self, index: usize, irqfd: Option<&Arc<EventFd>>) {
        let mut st = self.lock();
        self.unregister(&mut st, index);
        match irqfd {
            Some(fd) => {
                st.direct.insert(index, fd.clone());
                self.register(&mut st, index);
            }
            None => {
                st.direct.remove(&index);
            }
        }
    }

    /// Follows BAR1 (`None`: not decoding).
    fn move_to(&self, base: Option<u64>) {
        let mut st = self.lock();
        if st.base == base {
            return;
        }
        let registered: Vec<usize> = st.registered.iter().copied().collect();
        for i in registered {
            self.unregister(&mut st, i);
        }
        st.base = base;
        let direct: Vec<usize> = st.direct.keys().copied().collect();
        for i in direct {
            self.register(&mut st, i);
        }
    }

    fn registered(&self) -> usize {
        self.lock().registered.len()
    }
}

/// SELECT bit choosing an IMS entry for the counters.
pub const SELECT_IMS: u32 = 1 << 31;
/// Largest IMS table (`ims=N`).
pub const IRQTEST_MAX_IMS: usize = 65536;
/// BAR holding the IMS table.
pub const IRQTEST_IMS_BAR: usize = 4;

/// Layout of one IMS entry in BAR4.
pub mod ims {
    /// Bytes per entry.
    pub const ENTRY_SIZE: u64 = 16;
    /// Offset of the control dword in an entry.
    pub const CTRL: u64 = 12;
    /// Control: entry masked (read-write, set at reset).
    pub const CTRL_MASK: u32 = 1 << 0;
    /// Control: interrupt pending (read-only).
    pub const CTRL_PENDING: u32 = 1 << 1;
}

/// One IMS entry as the guest programmed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ImsEntry {
    addr_lo: u32,
    addr_hi: u32,
    data: u32,
    masked: bool,
}

impl Default for ImsEntry {
    fn default() -> Self {
        Self {
            addr_lo: 0,
            addr_hi: 0,
            data: 0,
            masked: true,
        }
    }
}

/// The IMS table: guest-facing storage of `domain.size()` entries backing an IMS domain.
pub struct ImsTable {
    entries: Vec<ImsEntry>,
    domain: Arc<DeviceDomain>,
    /// Domain errors follow guest programming: their warnings are rate-limited.
    log_limit: RateLimiter,
}

impl ImsTable {
    /// A table with one entry per vector of `domain`, every entry masked.
    pub fn new(domain: Arc<DeviceDomain>) -> Self {
        Self {
            entries: vec![ImsEntry::default(); domain.size()],
            domain,
            log_limit: RateLimiter::new(10, std::time::Duration::from_secs(1)),
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The IMS domain.
    pub fn domain(&self) -> &Arc<DeviceDomain> {
        &self.domain
    }

    /// Size of the BAR holding `entries` entries (a power of two, at least 4 KiB).
    pub fn bar_size(entries: usize) -> u64 {
        (entries as u64 * ims::ENTRY_SIZE)
            .next_power_of_two()
            .max(0x1000)
    }

    fn access(&self, offset: u64, len: usize) -> Option<(usize, usize)> {
        if !matches!(len, 4 | 8) || !offset.is_multiple_of(len as u64) {
            return None;
        }
        let i = usize::try_from(offset / ims::ENTRY_SIZE).ok()?;
        (i < self.entries.len()).then_some((i, ((offset % ims::ENTRY_SIZE) / 4) as usize))
    }

    /// Reads `data` (4 or 8 bytes, naturally aligned) at `offset`; other accesses and
    /// offsets past the table read zero.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some((i, w)) = self.access(offset, data.len()) else {
            return;
        };
        let e = &self.entries[i];
        let mut ctrl = if e.masked { ims::CTRL_MASK } else { 0 };
        if self.domain.is_pending(i) {
            ctrl |= ims::CTRL_PENDING;
        }
        let words = [e.addr_lo, e.addr_hi, e.data, ctrl];
        for (k, chunk) in data.chunks_exact_mut(4).enumerate() {
            chunk.copy_from_slice(&words[w + k].to_le_bytes());
        }
    }

    /// A guest write of `data` (4 or 8 bytes, naturally aligned) at `offset`; malformed
    /// accesses and offsets past the table are ignored. The entry's message and mask go to
    /// the domain (a vector is routed when first unmasked with a message; a pending
    /// interrupt is delivered once on unmask).
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        let Some((i, first)) = self.access(offset, data.len()) else {
            return;
        };
        let e = &mut self.entries[i];
        for (w, chunk) in (first..).zip(data.chunks_exact(4)) {
            let v = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            match w {
                0 => e.addr_lo = v & !0x3,
                1 => e.addr_hi = v,
                2 => e.data = v,
                _ => e.masked = v & ims::CTRL_MASK != 0,
            }
        }
        let e = *e;
        let d = &self.domain;
        // The domain ignores a write that changes nothing.
        let last = first + data.len() / 4 - 1;
        let r = (if first < 3 {
            d.set_message(i, Some(MsiMessage::new(e.addr_lo, e.addr_hi, e.data)))
        } else {
            Ok(())
        })
        .and_then(|_| {
            if last == 3 {
                d.set_masked(i, e.masked)
            } else {
                Ok(())
            }
        });
        if let Err(err) = r {
            warn_ratelimited!(self.log_limit, "irqtest IMS entry {i}: {err}");
        }
    }

    /// Fires entry `index` (delivered, or pending while masked); false if out of range.
    pub fn fire(&self, index: usize) -> bool {
        index < self.entries.len() && self.domain.fire(index).is_ok()
    }
}

/// Errors creating the device.
#[derive(Debug, thiserror::Error)]
pub enum IrqTestError {
    /// Vector count outside 1..=2048.
    #[error("irqtest vectors must be 1..=2048, got {0}")]
    Vectors(usize),
    /// IMS entry count above 65536.
    #[error("irqtest ims must be 0..=65536, got {0}")]
    Ims(usize),
    /// PCI setup failed.
    #[error("irqtest: {0}")]
    Pci(#[from] pci::Error),
}

/// The irqtest PCI function.
pub struct IrqTest {
    name: String,
    config: ConfigSpace,
    msi: MsiCapability,
    msix: MsixCapability,
    msi_domain: Arc<DeviceDomain>,
    msix_domain: Arc<DeviceDomain>,
    ims: Option<ImsTable>,
    doorbells: Option<Arc<Doorbells>>,
    select: u32,
    rejected: u32,
}

/// Which capability a fire goes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Neither MSI nor MSI-X is enabled.
    None = 0,
    /// MSI.
    Msi = 1,
    /// MSI-X.
    MsiX = 2,
}

impl IrqTest {
    /// Creates the device at `requester` with `vectors` MSI-X vectors; its MSI and MSI-X
    /// domains are created in `hierarchy`.
    pub fn new(
        hierarchy: &Arc<InterruptHierarchy>,
        requester: RequesterId,
        vectors: usize,
    ) -> Result<Self, IrqTestError> {
        Self::with_ims(hierarchy, requester, vectors, 0)
    }

    /// Like [`new`](Self::new), plus an IMS table of `ims` entries (0..=65536; 0: none) in
    /// BAR4 backing its own IMS domain.
    pub fn with_ims(
        hierarchy: &Arc<InterruptHierarchy>,
        requester: RequesterId,
        vectors: usize,
        ims: usize,
    ) -> Result<Self, IrqTestError> {
        if vectors == 0 || vectors > MSIX_MAX_VECTORS {
            return Err(IrqTestError::Vectors(vectors));
        }
        if ims > IRQTEST_MAX_IMS {
            return Err(IrqTestError::Ims(ims));
        }
        let name = format!("irqtest {requester}");
        let mut config = ConfigSpace::new(IRQTEST_VENDOR, IRQTEST_DEVICE, 0xff, 0x00, 0, 1);
        config.set_bar(
            0,
            Bar {
                kind: BarKind::Memory32,
                size: 0x1000,
                prefetchable: false,
            },
        )?;
        config.set_bar(
            2,
            Bar {
                kind: BarKind::Memory64,
                size: 0x10000,
                prefetchable: false,
            },
        )?;
        if ims > 0 {
            config.set_bar(
                IRQTEST_IMS_BAR,
                Bar {
                    kind: BarKind::Memory64,
                    size: ImsTable::bar_size(ims),
                    prefetchable: false,
                },
            )?;
        }
        let ims = (ims > 0).then(|| {
            ImsTable::new(hierarchy.create_domain(&name, DomainKind::Ims, requester, ims, None))
        });
        let msi_domain =
            hierarchy.create_domain(&name, DomainKind::Msi, requester, IRQTEST_MSI_VECTORS, None);
        let msix_domain =
            hierarchy.create_domain(&name, DomainKind::MsiX, requester, vectors, None);
        let msi = MsiCapability::new(
            &mut config,
            IRQTEST_MSI_VECTORS,
            true,
            true,
            msi_domain.clone(),
        )?;
        let msix = MsixCapability::new(
            &mut config,
            vectors,
            2,
            0,
            2,
            IRQTEST_PBA_OFFSET,
            msix_domain.clone(),
        )?;
        Ok(Self {
            name,
            config,
            msi,
            msix,
            msi_domain,
            msix_domain,
            ims,
            doorbells: None,
            select: 0,
            rejected: 0,
        })
    }

    /// Gives the device its doorbells (BAR1, see the module docs), registered as KVM
    /// ioeventfds through `registry`. Call before the guest sees the device.
    pub fn enable_doorbells(
        &mut self,
        registry: Arc<dyn IoEventRegistry>,
    ) -> Result<(), IrqTestError> {
        if self.doorbells.is_some() {
            return Ok(());
        }
        self.config.set_bar(
            IRQTEST_DOORBELL_BAR,
            Bar {
                kind: BarKind::Memory32,
                size: Doorbells::bar_size(self.msix.vectors()),
                prefetchable: false,
            },
        )?;
        let d = Arc::new(Doorbells {
            name: self.name.clone(),
            registry,
            state: Mutex::default(),
        });
        let listener = d.clone();
        self.msix_domain
            .set_direct_listener(Box::new(move |i, fd| listener.set_direct(i, fd)));
        self.doorbells = Some(d);
        Ok(())
    }

    /// Doorbells currently registered as KVM ioeventfds.
    pub fn doorbells_registered(&self) -> usize {
        self.doorbells.as_ref().map_or(0, |d| d.registered())
    }

    /// The mode fires currently use.
    pub fn mode(&self) -> Mode {
        if self.msix.enabled() {
            Mode::MsiX
        } else if self.msi.enabled() {
            Mode::Msi
        } else {
            Mode::None
        }
    }

    /// Fires `vector` `count` times through the enabled capability; false if refused.
    pub fn fire(&mut self, vector: usize, count: u32) -> bool {
        let ok = match self.mode() {
            Mode::MsiX if vector < self.msix.vectors() => {
                (0..count).all(|_| self.msix.fire(vector))
            }
            Mode::Msi if vector < self.msi.enabled_vectors(&self.config) => {
                (0..count).all(|_| self.msi.fire(&self.config, vector))
            }
            _ => false,
        };
        if !ok {
            self.rejected = self.rejected.wrapping_add(1);
        }
        ok
    }

    /// The IMS table, if the device has one.
    pub fn ims(&self) -> Option<&ImsTable> {
        self.ims.as_ref()
    }

    /// Fires IMS entry `index` `count` times; false (and counted as rejected) if the device
    /// has no such entry.
    pub fn fire_ims(&mut self, index: usize, count: u32) -> bool {
        let ok = self
            .ims
            .as_ref()
            .is_some_and(|t| (0..count).all(|_| t.fire(index)));
        if !ok {
            self.rejected = self.rejected.wrapping_add(1);
        }
        ok
    }

    fn selected(&self) -> Option<interrupt::VectorSnapshot> {
        if self.select & SELECT_IMS != 0 {
            let i = (self.select & 0xffff) as usize;
            return self.ims.as_ref()?.domain().vector_snapshot(i);
        }
        let d = match self.mode() {
            Mode::MsiX => &self.msix_domain,
            _ => &self.msi_domain,
        };
        d.vector_snapshot(self.select as usize)
    }

    fn read_reg(&self, offset: u64) -> u32 {
        let sel = || self.selected();
        match offset {
            regs::MAGIC => IRQTEST_MAGIC,
            regs::MSIX_VECTORS => self.msix.vectors() as u32,
            regs::MSI_VECTORS => IRQTEST_MSI_VECTORS as u32,
            regs::MODE => self.mode() as u32,
            regs::SELECT => self.select,
            regs::FIRES => sel().map_or(0, |s| s.fires as u32),
            regs::DELIVERED => sel().map_or(0, |s| s.deliveries as u32),
            regs::PENDING => sel().map_or(0, |s| u32::from(s.pending)),
            regs::DROPPED => sel().map_or(0, |s| s.dropped as u32),
            regs::REJECTED => self.rejected,
            regs::IMS_ENTRIES => self.ims.as_ref().map_or(0, |t| t.len() as u32),
            _ => 0,
        }
    }
}

impl PciDevice for IrqTest {
    fn name(&self) -> &str {
        &self.name
    }

    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    fn read_config(&mut self, offset: usize) -> u32 {
        if self.msi.contains(offset) {
            return self.msi.read_dword(&self.config, offset);
        }
        self.config.read_dword(offset)
    }

    fn write_config(&mut self, offset: usize, data: &[u8]) {
        if !self.config.guest_write(offset, data) {
            return;
        }
        if self.msi.contains(offset) {
            self.msi.update(&self.config);
        }
        if self.msix.contains(offset) {
            self.msix.update(&self.config);
        }
        if let Some(d) = &self.doorbells {
            d.move_to(self.config.bar_address(IRQTEST_DOORBELL_BAR));
        }
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        if bar == 0 {
            data.fill(0);
            if data.len() == 4 && offset.is_multiple_of(4) {
                data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
            }
            return;
        }
        if bar == IRQTEST_IMS_BAR {
            match &self.ims {
                Some(t) => t.read(offset, data),
                None => data.fill(0),
            }
            return;
        }
        if !self.msix.bar_read(bar, offset, data) {
            data.fill(0);
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if bar == 0 {
            let Ok(b) = <[u8; 4]>::try_from(data) else {
                return;
            };
            let v = u32::from_le_bytes(b);
            match offset {
                regs::FIRE => {
                    let count = (v >> 16).max(1);
                    self.fire((v & 0xffff) as usize, count);
                }
                regs::IMS_FIRE => {
                    let count = (v >> 16).max(1);
                    self.fire_ims((v & 0xffff) as usize, count);
                }
                regs::SELECT => self.select = v,
                _ => {}
            }
            return;
        }
        if bar == IRQTEST_IMS_BAR {
            if let Some(t) = &mut self.ims {
                t.write(offset, data);
            }
            return;
        }
        if bar == IRQTEST_DOORBELL_BAR {
            // the doorbell's MMIO exit: the vector is off the direct path (or KVM has no
            // ioeventfd for it), so this fire takes the domain's lock
            if self.doorbells.is_some() && offset.is_multiple_of(DOORBELL_STRIDE) {
                self.fire((offset / DOORBELL_STRIDE) as usize, 1);
            }
            return;
        }
        self.msix.bar_write(bar, offset, data);
    }
}

impl Drop for IrqTest {
    fn drop(&mut self) {
        if let Some(d) = &self.doorbells {
            d.move_to(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use interrupt::{KvmVectorLayer, NoRemap, RecordingBackend};
    use pci::msix::control;

    fn setup(n: usize) -> (Arc<InterruptHierarchy>, IrqTest) {
        let h = InterruptHierarchy::new(
            Arc::new(KvmVectorLayer::new(
                Arc::new(RecordingBackend::default()),
                24,
                4096,
            )),
            Arc::new(NoRemap),
        );
        let d = IrqTest::new(&h, RequesterId::pci(0, 3, 0), n).unwrap();
        (h, d)
    }

    fn reg(d: &mut IrqTest, off: u64) -> u32 {
        let mut b = [0u8; 4];
        d.bar_read(0, off, &mut b);
        u32::from_le_bytes(b)
    }

    fn enable_msix(d: &mut IrqTest) {
        let off = d.msix.offset() + 2;
        d.write_config(off, &control::ENABLE.to_le_bytes());
    }

    #[test]
    fn doorbells_are_ioeventfds_while_their_vector_is_direct_and_follow_bar1() {
        let (_, mut d) = setup(4);
        let rec = Arc::new(pci::RecordingIoEvents::default());
        d.enable_doorbells(rec.clone()).unwrap();
        let take = || rec.take();
        assert_eq!(d.config().bar(IRQTEST_DOORBELL_BAR).unwrap().size, 0x1000);
        enable_msix(&mut d);
        d.bar_write(2, 16, &0xfee0_0000u32.to_le_bytes());
        d.bar_write(2, 24, &0x41u32.to_le_bytes());
        d.bar_write(2, 28, &0u32.to_le_bytes());
        // the first ring exits (BAR1 not placed yet, the route not committed): a fire
        d.bar_write(IRQTEST_DOORBELL_BAR, 4, &1u32.to_le_bytes());
        d.bar_write(0, regs::SELECT, &1u32.to_le_bytes());
        assert_eq!(reg(&mut d, regs::FIRES), 1);
        assert_eq!(take(), vec![], "BAR1 does not decode yet");
        // placing BAR1 and turning decoding on registers vector 1's doorbell
        d.write_config(0x14, &0xc000_0000u32.to_le_bytes());
        d.write_config(0x04, &2u16.to_le_bytes());
        assert_eq!(take(), vec![(true, 0xc000_0004)]);
        assert_eq!(d.doorbells_registered(), 1);
        // moving BAR1 moves it
        d.write_config(0x14, &0xd000_0000u32.to_le_bytes());
        assert_eq!(take(), vec![(false, 0xc000_0004), (true, 0xd000_0004)]);
        // masking the entry removes it; a ring then exits and leaves the vector pending
        d.bar_write(2, 28, &1u32.to_le_bytes());
        assert_eq!(take(), vec![(false, 0xd000_0004)]);
        d.bar_write(IRQTEST_DOORBELL_BAR, 4, &1u32.to_le_bytes());
        assert_eq!(reg(&mut d, regs::PENDING), 1);
        // unmasking delivers it and puts the doorbell back
        d.bar_write(2, 28, &0u32.to_le_bytes());
        assert_eq!(reg(&mut d, regs::PENDING), 0);
        assert_eq!(take(), vec![(true, 0xd000_0004)]);
        // a doorbell past the vectors, or unaligned, is refused or ignored
        d.bar_write(IRQTEST_DOORBELL_BAR, 4 * 9, &1u32.to_le_bytes());
        assert_eq!(reg(&mut d, regs::REJECTED), 1);
        d.bar_write(IRQTEST_DOORBELL_BAR, 6, &1u16.to_le_bytes());
        assert_eq!(reg(&mut d, regs::REJECTED), 1);
        // memory decoding off, then the device goes away: nothing is left registered
        d.write_config(0x04, &0u16.to_le_bytes());
        assert_eq!(take(), vec![(false, 0xd000_0004)]);
        d.write_config(0x04, &2u16.to_le_bytes());
        assert_eq!(take(), vec![(true, 0xd000_0004)]);
        drop(d);
        assert_eq!(take(), vec![(false, 0xd000_0004)]);
    }

    #[test]
    fn identity_and_sizes() {
        let (_, mut d) = setup(2048);
        assert_eq!(d.config().u16_at(0), IRQTEST_VENDOR);
        assert_eq!(reg(&mut d, regs::MAGIC), IRQTEST_MAGIC);
        assert_eq!(reg(&mut d, regs::MSIX_VECTORS), 2048);
        assert!(IrqTest::new(&setup(1).0, RequesterId(0), 0).is_err());
        assert!(IrqTest::new(&setup(1).0, RequesterId(0), 2049).is_err());
    }

    #[test]
    fn fire_without_mode_is_rejected() {
        let (_, mut d) = setup(4);
        d.bar_write(0, regs::FIRE, &0u32.to_le_bytes());
        assert_eq!(reg(&mut d, regs::REJECTED), 1);
        assert_eq!(reg(&mut d, regs::MODE), 0);
    }

    #[test]
    fn msix_fire_counts_and_delivers() {
        let (_, mut d) = setup(4);
        enable_msix(&mut d);
        d.bar_write(2, 16, &0xfee0_0000u32.to_le_bytes());
        d.bar_write(2, 24, &0x41u32.to_le_bytes());
        d.bar_write(2, 28, &0u32.to_le_bytes());
        d.bar_write(0, regs::FIRE, &(1u32 | (5 << 16)).to_le_bytes());
        d.bar_write(0, regs::SELECT, &1u32.to_le_bytes());
        assert_eq!(reg(&mut d, regs::MODE), 2);
        assert_eq!(reg(&mut d, regs::FIRES), 5);
        assert_eq!(reg(&mut d, regs::DELIVERED), 5);
        d.bar_write(0, regs::FIRE, &7u32.to_le_bytes());
        assert_eq!(reg(&mut d, regs::REJECTED), 1);
    }

    #[test]
    fn garbage_register_accesses_are_harmless() {
        let (_, mut d) = setup(4);
        for off in [0u64, 3, 0x2c, 0xfff, 0x1000, u64::MAX] {
            d.bar_write(0, off, &[0xff; 4]);
            d.bar_write(0, off, &[0xff; 2]);
            let mut b = [0u8; 8];
            d.bar_read(0, off, &mut b);
            d.bar_read(2, off, &mut b);
            d.bar_write(2, off, &b);
        }
        d.bar_write(0, regs::SELECT, &u32::MAX.to_le_bytes());
        assert_eq!(reg(&mut d, regs::FIRES), 0);
    }

    fn ims_setup(n: usize) -> (Arc<RecordingBackend>, IrqTest) {
        let b = Arc::new(RecordingBackend::default());
        let h = InterruptHierarchy::new(
            Arc::new(KvmVectorLayer::new(b.clone(), 24, 64)),
            Arc::new(NoRemap),
        );
        (
            b,
            IrqTest::with_ims(&h, RequesterId::pci(0, 3, 0), 4, n).unwrap(),
        )
    }

    fn ims_program(d: &mut IrqTest, i: u64, vector: u32, masked: bool) {
        let base = i * ims::ENTRY_SIZE;
        d.bar_write(4, base, &0xfee0_0000u64.to_le_bytes());
        d.bar_write(4, base + 8, &vector.to_le_bytes());
        d.bar_write(4, base + ims::CTRL, &u32::from(masked).to_le_bytes());
    }

    fn ims_ctrl(d: &mut IrqTest, i: u64) -> u32 {
        let mut b = [0u8; 4];
        d.bar_read(4, i * ims::ENTRY_SIZE + ims::CTRL, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn ims_size_limits_and_bar() {
        let (_, mut d) = ims_setup(65536);
        assert_eq!(reg(&mut d, regs::IMS_ENTRIES), 65536);
        assert_eq!(
            d.config().bar(IRQTEST_IMS_BAR).map(|b| b.size),
            Some(1 << 20)
        );
        let (_, mut d) = setup(4);
        assert_eq!(reg(&mut d, regs::IMS_ENTRIES), 0);
        assert!(d.config().bar(IRQTEST_IMS_BAR).is_none());
        let h = setup(1).0;
        assert!(matches!(
            IrqTest::with_ims(&h, RequesterId(0), 4, 65537),
            Err(IrqTestError::Ims(65537))
        ));
        assert_eq!(ImsTable::bar_size(1), 0x1000);
        assert_eq!(ImsTable::bar_size(257), 0x2000);
    }

    #[test]
    fn ims_entries_read_back_and_start_masked() {
        let (_, mut d) = ims_setup(8);
        assert_eq!(ims_ctrl(&mut d, 7), ims::CTRL_MASK);
        d.bar_write(4, 16, &0xfee0_1003u32.to_le_bytes());
        d.bar_write(4, 20, &7u32.to_le_bytes());
        d.bar_write(4, 24, &0x4041u32.to_le_bytes());
        d.bar_write(4, 28, &0xffff_fffeu32.to_le_bytes());
        let mut b = [0u8; 8];
        d.bar_read(4, 16, &mut b);
        assert_eq!(
            u64::from_le_bytes(b),
            0x7_fee0_1000,
            "address bits 1:0 are reserved"
        );
        d.bar_read(4, 24, &mut b);
        assert_eq!(
            u64::from_le_bytes(b),
            0x4041,
            "control: only the mask bit is writable"
        );
        let s = d.ims().unwrap().domain().vector_snapshot(1).unwrap();
        assert_eq!(s.message, Some(MsiMessage::new(0xfee0_1000, 7, 0x4041)));
        assert!(!s.masked);
    }

    #[test]
    fn ims_fire_delivers_or_pends_and_unmask_delivers_once() {
        let (b, mut d) = ims_setup(4);
        ims_program(&mut d, 2, 0x45, true);
        d.bar_write(0, regs::IMS_FIRE, &(2u32 | (3 << 16)).to_le_bytes());
        assert_eq!(ims_ctrl(&mut d, 2), ims::CTRL_MASK | ims::CTRL_PENDING);
        d.bar_write(0, regs::SELECT, &(SELECT_IMS | 2).to_le_bytes());
        assert_eq!(reg(&mut d, regs::FIRES), 3);
        assert_eq!(reg(&mut d, regs::DELIVERED), 0);
        assert_eq!(reg(&mut d, regs::PENDING), 1);
        d.bar_write(4, 2 * 16 + ims::CTRL, &0u32.to_le_bytes());
        assert_eq!(ims_ctrl(&mut d, 2), 0);
        assert_eq!(reg(&mut d, regs::DELIVERED), 1);
        d.bar_write(0, regs::IMS_FIRE, &2u32.to_le_bytes());
        assert_eq!(reg(&mut d, regs::DELIVERED), 2);
        assert_eq!(
            b.irqfds.lock().unwrap().len(),
            1,
            "one GSI for the one active entry"
        );
        // IMS fires need neither MSI nor MSI-X; a missing entry is rejected.
        assert_eq!(reg(&mut d, regs::MODE), 0);
        d.bar_write(0, regs::IMS_FIRE, &4u32.to_le_bytes());
        assert_eq!(reg(&mut d, regs::REJECTED), 1);
    }

    #[test]
    fn ims_past_the_gsi_limit_uses_the_slow_path() {
        // 64 routes, 24 reserved: 40 entries get a GSI, the rest KVM_SIGNAL_MSI.
        let (b, mut d) = ims_setup(100);
        for i in 0..100 {
            ims_program(&mut d, i, 0x30 + i as u32, false);
        }
        for i in 0..100 {
            d.bar_write(0, regs::IMS_FIRE, &(i as u32).to_le_bytes());
        }
        let snap = d.ims().unwrap().domain().snapshot();
        assert!(snap
            .iter()
            .all(|s| s.fires == 1 && s.deliveries == 1 && s.dropped == 0));
        assert_eq!(snap.iter().filter(|s| s.gsi.is_some()).count(), 40);
        assert_eq!(b.signalled.lock().unwrap().len(), 60);
        assert_eq!(b.committed.lock().unwrap().len(), 40);
    }

    #[test]
    fn ims_garbage_accesses_are_harmless() {
        let (_, mut d) = ims_setup(4);
        for off in [2u64, 3, 6, 63, 64, 0x1000, u64::MAX - 3, u64::MAX] {
            for len in [1usize, 2, 3, 4, 8, 16] {
                d.bar_write(4, off, &vec![0u8; len]);
                let mut b = vec![0xffu8; len];
                d.bar_read(4, off, &mut b);
                assert!(b.iter().all(|&x| x == 0), "{off:#x}/{len}");
            }
        }
        assert!((0..4).all(|i| ims_ctrl(&mut d, i) == ims::CTRL_MASK));
        d.bar_write(0, regs::SELECT, &(SELECT_IMS | 0xffff).to_le_bytes());
        assert_eq!(reg(&mut d, regs::FIRES), 0);
        let (_, mut d) = setup(4);
        d.bar_write(4, 0, &[0u8; 4]);
        d.bar_write(0, regs::IMS_FIRE, &0u32.to_le_bytes());
        assert_eq!(reg(&mut d, regs::REJECTED), 1);
    }
}
