//! The interface between the PCI transport and a virtio device model.

use std::sync::Arc;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use crate::interrupt::VirtioInterrupt;
use crate::GuestMemory;

/// A queue the driver enabled, handed to the device at activation.
pub struct ActiveQueue {
    /// Index of the queue in the device.
    pub index: usize,
    /// The queue (addresses validated against guest memory, ready, event index set from the
    /// negotiated features).
    pub queue: Queue,
    /// The queue's notification eventfd: a KVM ioeventfd at the queue's notify address
    /// (the transport also writes it when a notification reaches it as an MMIO exit).
    /// Usable as a vhost kick fd.
    pub kick: Arc<EventFd>,
    /// The queue's used-buffer interrupt.
    pub interrupt: VirtioInterrupt,
}

/// Everything a device needs to start (the driver wrote DRIVER_OK).
pub struct Activation {
    /// Guest memory.
    pub mem: GuestMemory,
    /// Features the driver accepted (a subset of [`VirtioDevice::features`] plus
    /// VIRTIO_F_VERSION_1).
    pub features: u64,
    /// The enabled queues, by increasing index (queues the driver left disabled are absent).
    pub queues: Vec<ActiveQueue>,
    /// The configuration-change interrupt.
    pub config_interrupt: VirtioInterrupt,
}

/// Why a device refused to start.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver's queue setup does not fit the device (e.g. no request queue).
    #[error("bad queue setup: {0}")]
    Queues(String),
    /// A host resource failed.
    #[error("{0}")]
    Host(String),
}

/// A virtio device model behind the PCI transport.
///
/// The transport calls `activate` on the vCPU thread that wrote DRIVER_OK and `reset` on
/// the one that wrote 0 to device_status; both must return promptly (hand work to the
/// device's own threads). After `reset` returns the device must no longer touch guest
/// memory or signal interrupts of the old activation.
pub trait VirtioDevice: Send {
    /// Virtio device type (`virtio_ids`, e.g. 2 for block).
    fn device_type(&self) -> u32;
    /// Short name for logs and the interrupt hierarchy view (e.g. "virtio-blk").
    fn name(&self) -> &str;
    /// Maximum size of each queue (powers of two); the length is the number of queues.
    fn queue_max_sizes(&self) -> Vec<u16>;
    /// Feature bits the device offers (the transport adds VIRTIO_F_VERSION_1).
    fn features(&self) -> u64;
    /// PCI class, subclass (for lspci; 0xff/0 when none fits).
    fn pci_class(&self) -> (u8, u8) {
        (0xff, 0)
    }
    /// The chip of the device's MSI-X domain, for a device whose queue interrupts are
    /// signalled from outside the VMM (a vhost worker writing each vector's trigger eventfd,
    /// see [`VirtioInterrupt::eventfd`]); `None` (the default): the device fires its vectors.
    fn msi_chip(&self) -> Option<Arc<dyn interrupt::MsiChip>> {
        None
    }
    /// Reads the device configuration space at `offset`; bytes beyond it read as 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// A driver write to the device configuration space (ignored by default).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Starts the device with the driver's queues.
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError>;
    /// Stops the device (driver reset); it may be activated again afterwards.
    fn reset(&mut self);
}
