//! virtio 1.x devices over PCI.
//!
//! A device model implements [`VirtioDevice`] (type, features, configuration space,
//! `activate` with its queues, `reset`); the PCI transport ([`VirtioPciDevice`]) owns the
//! virtio capabilities, the common configuration (feature negotiation, queue setup, device
//! status, reset), the MSI-X table on the device's per-device interrupt domain, and one KVM
//! ioeventfd per queue at that queue's notify address, so a guest kick wakes the device's
//! worker without any VMM thread in between. Queues are rust-vmm `virtio-queue` queues.
//!
//! - `spec`: register layouts from the virtio 1.2 specification (§4.1 Virtio Over PCI Bus);
//! - `common`: the common configuration structure, a guest-facing parser;
//! - `transport`: the PCI function;
//! - `blk`: virtio-blk over a raw image, one worker thread per request queue.

pub mod blk;
pub mod common;
pub mod device;
pub mod interrupt;
pub mod spec;
pub mod thread;
pub mod transport;

pub use device::{ActivateError, Activation, ActiveQueue, VirtioDevice};
pub use interrupt::VirtioInterrupt;
pub use transport::{IoEventRegistry, NoIoEvents, VirtioPciDevice, VirtioPciError};

/// Guest memory as the VMM maps it.
pub type GuestMemory = vm_memory::GuestMemoryMmap;
