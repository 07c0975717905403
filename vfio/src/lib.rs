//! PCI pass-through with VFIO.
//!
//! A host PCI function bound to `vfio-pci` becomes a function on our root bus:
//!
//! - [`host`]: checks (bound to vfio-pci, IOMMU group viable, permissions, given once),
//!   the type1v2 container with all guest RAM mapped for DMA (IOVA = guest physical), the
//!   device fd (regions, mmap, `VFIO_DEVICE_SET_IRQS`, reset) — through rust-vmm's
//!   `vfio-ioctls`, with the single-vector SET_IRQS issued directly;
//! - [`config`]: the guest's view of config space (the device's registers, except BARs,
//!   expansion ROM, MSI/MSI-X and unsupported capabilities, which the VMM owns);
//! - [`bars`]: which parts of each BAR go straight to the device (KVM memory slots over the
//!   VFIO mmap) and which are trapped (MSI-X table and PBA pages, non-mmappable parts);
//! - [`chip`]: the chip of the device's MSI and MSI-X domains — a guest vector's activation
//!   binds the host vector to the vector's KVM irqfd, one vector at a time where the host
//!   allows it;
//! - [`intx`]: INTx as a level-triggered IOAPIC line through the VMM (relay thread on the
//!   host's trigger, the guest's EOI unmasks the host);
//! - [`device`]: the [`pci::PciDevice`] tying these together.

pub mod bars;
pub mod chip;
mod chip_glue;
pub mod config;
pub mod device;
pub mod fake;
pub mod host;
pub mod intx;

pub use chip::{HostIrqStats, HostIrqs, IrqMode, VfioChip};
pub use device::{DeviceError, MmioSlots, MsixPolicy, VfioPciDevice};
pub use host::{preflight, Bdf, Container, HostAccess, HostDevice, HostError};
pub use intx::{Intx, IntxLine};
