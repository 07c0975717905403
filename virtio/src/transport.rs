//! The virtio PCI transport (virtio 1.2 §4.1, modern devices only).
//!
//! BAR0 (64-bit memory) holds, at fixed offsets:
//!
//! | offset | region |
//! |--------|--------|
//! | 0x0000 | common configuration (`virtio_pci_common_cfg`) |
//! | 0x1000 | ISR status (read clears) |
//! | 0x2000 | device configuration |
//! | 0x3000 | notifications: queue `i` at `0x3000 + 4 * i` (`notify_off_multiplier` 4) |
//! | after  | MSI-X table (one vector per queue plus the configuration vector), then PBA |
//!
//! Each queue's notify address carries a KVM ioeventfd (any access width, no data match)
//! while BAR0 decodes, re-registered when the guest moves the BAR: a kick is one eventfd
//! signal that wakes the device's worker directly. A notification that still arrives as an
//! MMIO exit (before the BAR decodes, or if registration failed) signals the same eventfd.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use interrupt::{
    warn_ratelimited, DeviceDomain, DomainKind, InterruptHierarchy, RateLimiter, RequesterId,
};
use log::warn;
use pci::config::reg;
use pci::{Bar, BarKind, ConfigSpace, MsixCapability, PciDevice};
use virtio_queue::QueueT;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::common::{Action, CommonConfig};
use crate::device::{Activation, ActiveQueue, VirtioDevice};
use crate::interrupt::VirtioInterrupt;
use crate::spec::{self, cap_type, isr, status, VIRTIO_MSI_NO_VECTOR};
use crate::GuestMemory;

/// Offset of the common configuration in BAR0.
pub const COMMON_OFFSET: u64 = 0x0000;
/// Offset of the ISR status byte in BAR0.
pub const ISR_OFFSET: u64 = 0x1000;
/// Offset of the device configuration in BAR0.
pub const DEVICE_OFFSET: u64 = 0x2000;
/// Size of the device configuration window.
pub const DEVICE_SIZE: u64 = 0x1000;
/// Offset of the notification area in BAR0.
pub const NOTIFY_OFFSET: u64 = 0x3000;
/// Bytes between two queues' notify addresses.
pub const NOTIFY_MULTIPLIER: u32 = 4;
/// Most queues a device may have (one MSI-X vector each plus the configuration vector).
pub const MAX_QUEUES: usize = 1024;

/// Guest-triggered warnings (bad queue setup at DRIVER_OK) are rate-limited.
static GUEST_ERRORS: LazyLock<RateLimiter> =
    LazyLock::new(|| RateLimiter::new(10, Duration::from_secs(1)));

pub use pci::{IoEventRegistry, NoIoEvents};

/// Errors creating a transport (host-facing).
#[derive(Debug, thiserror::Error)]
pub enum VirtioPciError {
    /// The device declares no queue or too many.
    #[error("{0}: a virtio device needs 1..=1024 queues, has {1}")]
    Queues(String, usize),
    /// PCI setup failed.
    #[error("{0}: {1}")]
    Pci(String, #[source] pci::Error),
    /// An eventfd could not be created.
    #[error("{0}: eventfd: {1}")]
    EventFd(String, #[source] std::io::Error),
}

/// Layout of BAR0 for `queues` queues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarLayout {
    /// MSI-X table offset.
    pub table: u64,
    /// PBA offset.
    pub pba: u64,
    /// BAR size (power of two).
    pub size: u64,
}

impl BarLayout {
    /// The layout for `queues` queues (vectors = queues + 1).
    pub fn new(queues: usize) -> Self {
        let page = |n: u64| n.div_ceil(0x1000) * 0x1000;
        let vectors = queues as u64 + 1;
        let table = NOTIFY_OFFSET + page(queues as u64 * u64::from(NOTIFY_MULTIPLIER));
        let pba = table + page(vectors * 16);
        let end = pba + page(vectors.div_ceil(64) * 8);
        Self {
            table,
            pba,
            size: end.next_power_of_two(),
        }
    }
}

/// A virtio device on the PCI bus.
pub struct VirtioPciDevice {
    name: String,
    config: ConfigSpace,
    msix: MsixCapability,
    domain: Arc<DeviceDomain>,
    common: CommonConfig,
    device: Box<dyn VirtioDevice>,
    mem: GuestMemory,
    isr: Arc<AtomicU8>,
    notify: Vec<Arc<EventFd>>,
    ioevents: Arc<dyn IoEventRegistry>,
    /// BAR0 address the ioeventfds are registered at.
    registered: Option<u64>,
    active: bool,
}

impl VirtioPciDevice {
    /// Puts `device` behind a virtio PCI function at `requester`; its MSI-X domain is created
    /// in `hierarchy`.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        hierarchy: &Arc<InterruptHierarchy>,
        requester: RequesterId,
        mem: GuestMemory,
        ioevents: Arc<dyn IoEventRegistry>,
    ) -> Result<Self, VirtioPciError> {
        let name = format!("{} {requester}", device.name());
        let sizes = device.queue_max_sizes();
        if sizes.is_empty() || sizes.len() > MAX_QUEUES {
            return Err(VirtioPciError::Queues(name, sizes.len()));
        }
        let pci_err = |e| VirtioPciError::Pci(name.clone(), e);
        let (class, subclass) = device.pci_class();
        let mut config = ConfigSpace::new(
            spec::VIRTIO_PCI_VENDOR,
            spec::VIRTIO_PCI_DEVICE_BASE + device.device_type() as u16,
            class,
            subclass,
            0,
            spec::VIRTIO_PCI_REVISION,
        );
        config.set_u16(reg::SUBSYSTEM_VENDOR_ID, spec::VIRTIO_PCI_VENDOR);
        config.set_u16(reg::SUBSYSTEM_ID, spec::VIRTIO_PCI_SUBSYSTEM);
        let layout = BarLayout::new(sizes.len());
        config
            .set_bar(
                0,
                Bar {
                    kind: BarKind::Memory64,
                    size: layout.size,
                    prefetchable: false,
                },
            )
            .map_err(pci_err)?;
        let queues = sizes.len() as u32;
        for (ty, offset, len) in [
            (
                cap_type::COMMON,
                COMMON_OFFSET,
                spec::common_cfg::SIZE as u32,
            ),
            (cap_type::ISR, ISR_OFFSET, 1),
            (cap_type::DEVICE, DEVICE_OFFSET, DEVICE_SIZE as u32),
        ] {
            config
                .add_capability(
                    spec::PCI_CAP_ID_VNDR,
                    &virtio_cap(ty, offset, len, None),
                    &[],
                )
                .map_err(pci_err)?;
        }
        config
            .add_capability(
                spec::PCI_CAP_ID_VNDR,
                &virtio_cap(
                    cap_type::NOTIFY,
                    NOTIFY_OFFSET,
                    queues * NOTIFY_MULTIPLIER,
                    Some(NOTIFY_MULTIPLIER),
                ),
                &[],
            )
            .map_err(pci_err)?;
        let vectors = sizes.len() + 1;
        let domain = match device.msi_chip() {
            Some(chip) => hierarchy.create_domain_with_chip(
                &name,
                DomainKind::MsiX,
                requester,
                vectors,
                None,
                chip,
            ),
            None => hierarchy.create_domain(&name, DomainKind::MsiX, requester, vectors, None),
        };
        let msix = MsixCapability::new(
            &mut config,
            vectors,
            0,
            layout.table,
            0,
            layout.pba,
            domain.clone(),
        )
        .map_err(pci_err)?;
        let notify = (0..sizes.len())
            .map(|_| EventFd::new(EFD_NONBLOCK).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| VirtioPciError::EventFd(name.clone(), e))?;
        Ok(Self {
            name,
            config,
            msix,
            domain,
            common: CommonConfig::new(device.features(), &sizes),
            device,
            mem,
            isr: Arc::new(AtomicU8::new(0)),
            notify,
            ioevents,
            registered: None,
            active: false,
        })
    }

    /// The device's MSI-X domain.
    pub fn domain(&self) -> &Arc<DeviceDomain> {
        &self.domain
    }

    /// The common configuration (device status, negotiated features, queue setup).
    pub fn common(&self) -> &CommonConfig {
        &self.common
    }

    /// Whether the device is running (DRIVER_OK accepted and activation succeeded).
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// Queue `index`'s notification eventfd.
    pub fn notify_eventfd(&self, index: usize) -> Option<&Arc<EventFd>> {
        self.notify.get(index)
    }

    /// Registers the ioeventfds where BAR0 now decodes (and removes them from where it did).
    fn sync_ioevents(&mut self) {
        let now = self.config.bar_address(0);
        if now == self.registered {
            return;
        }
        if let Some(old) = self.registered.take() {
            for (i, fd) in self.notify.iter().enumerate() {
                if let Err(e) = self.ioevents.unregister_mmio(notify_addr(old, i), fd) {
                    warn!("{}: removing ioeventfd of queue {i}: {e}", self.name);
                }
            }
        }
        let Some(base) = now else { return };
        for (i, fd) in self.notify.iter().enumerate() {
            if let Err(e) = self.ioevents.register_mmio(notify_addr(base, i), fd) {
                if e.kind() != std::io::ErrorKind::Unsupported {
                    warn!("{}: ioeventfd of queue {i}: {e}", self.name);
                }
                for (j, fd) in self.notify.iter().enumerate().take(i) {
                    let _ = self.ioevents.unregister_mmio(notify_addr(base, j), fd);
                }
                return;
            }
        }
        self.registered = Some(base);
    }

    fn interrupt(&self, vector: u16, isr_bit: u8) -> VirtioInterrupt {
        let v = (vector != VIRTIO_MSI_NO_VECTOR && usize::from(vector) < self.msix.vectors())
            .then_some(vector);
        VirtioInterrupt::new(self.domain.clone(), v, self.isr.clone(), isr_bit)
    }

    fn activate(&mut self) {
        let features = self.common.driver_features();
        let event_idx = features & spec::features::RING_EVENT_IDX != 0;
        let mut queues = Vec::new();
        for (index, qc) in self.common.queues().iter().enumerate() {
            if !qc.enabled {
                continue;
            }
            let queue = match qc.to_queue(event_idx) {
                Ok(q) if q.is_valid(&self.mem) => q,
                r => {
                    warn_ratelimited!(
                        GUEST_ERRORS,
                        "{}: queue {index} setup is invalid ({:?}): device needs reset",
                        self.name,
                        r.err()
                    );
                    self.common.set_status_bits(status::NEEDS_RESET);
                    return;
                }
            };
            queues.push(ActiveQueue {
                index,
                queue,
                kick: self.notify[index].clone(),
                interrupt: self.interrupt(qc.msix_vector, isr::QUEUE),
            });
        }
        let activation = Activation {
            mem: self.mem.clone(),
            features,
            queues,
            config_interrupt: self.interrupt(self.common.msix_config(), isr::CONFIG),
        };
        match self.device.activate(activation) {
            Ok(()) => self.active = true,
            Err(e) => {
                warn_ratelimited!(GUEST_ERRORS, "{}: cannot start: {e}", self.name);
                self.common.set_status_bits(status::NEEDS_RESET);
            }
        }
    }

    fn reset(&mut self) {
        if self.active {
            self.device.reset();
            self.active = false;
        }
        self.common.reset();
        self.isr.store(0, Ordering::Release);
    }
}

fn notify_addr(base: u64, queue: usize) -> u64 {
    base + NOTIFY_OFFSET + queue as u64 * u64::from(NOTIFY_MULTIPLIER)
}

/// The body of a `virtio_pci_cap` (after the capability ID and next pointer).
fn virtio_cap(cfg_type: u8, offset: u64, length: u32, multiplier: Option<u32>) -> Vec<u8> {
    let cap_len = if multiplier.is_some() { 20 } else { 16 };
    let mut b = vec![cap_len, cfg_type, 0, 0, 0, 0];
    b.extend_from_slice(&(offset as u32).to_le_bytes());
    b.extend_from_slice(&length.to_le_bytes());
    if let Some(m) = multiplier {
        b.extend_from_slice(&m.to_le_bytes());
    }
    b
}

impl PciDevice for VirtioPciDevice {
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
        if self.msix.contains(offset) {
            self.msix.update(&self.config);
        }
        // BAR moves and decode changes move the ioeventfds.
        self.sync_ioevents();
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if bar != 0 || self.msix.bar_read(bar, offset, data) {
            return;
        }
        match offset {
            o if o < ISR_OFFSET => self.common.read(o - COMMON_OFFSET, data),
            ISR_OFFSET if data.len() == 1 => data[0] = self.isr.swap(0, Ordering::AcqRel),
            o if (DEVICE_OFFSET..DEVICE_OFFSET + DEVICE_SIZE).contains(&o) => {
                self.device.read_config(o - DEVICE_OFFSET, data)
            }
            _ => {}
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if bar != 0 || self.msix.bar_write(bar, offset, data) {
            return;
        }
        self.sync_ioevents();
        match offset {
            o if o < ISR_OFFSET => match self.common.write(o - COMMON_OFFSET, data) {
                Action::None => {}
                Action::Reset => self.reset(),
                Action::Activate => self.activate(),
            },
            o if (DEVICE_OFFSET..DEVICE_OFFSET + DEVICE_SIZE).contains(&o) => {
                self.device.write_config(o - DEVICE_OFFSET, data)
            }
            o if o >= NOTIFY_OFFSET => {
                let q = (o - NOTIFY_OFFSET) / u64::from(NOTIFY_MULTIPLIER);
                if let Some(fd) = usize::try_from(q).ok().and_then(|q| self.notify.get(q)) {
                    let _ = fd.write(1);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;
