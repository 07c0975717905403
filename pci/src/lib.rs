//! PCI emulation: type-0 configuration space with per-register write masks, the capability
//! list, BARs, and a root bus reachable through the legacy CF8/CFC ports and ECAM.

pub mod bus;
pub mod config;
pub mod device;
pub mod host_bridge;
pub mod ioevent;
pub mod msi;
pub mod msix;
#[cfg(test)]
mod testutil;

pub use bus::{PciConfigIo, PciEcam, PciMmioWindow, PciRoot};
pub use config::{Bar, BarKind, ConfigSpace};
pub use device::PciDevice;
pub use host_bridge::HostBridge;
pub use ioevent::{IoEventRegistry, NoIoEvents, RecordingIoEvents};
pub use msi::MsiCapability;
pub use msix::{MsixCapability, MsixLayout};

/// Errors of the PCI layer (host-facing).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No free device slot on the bus.
    #[error("no free PCI slot on bus 0")]
    NoFreeSlot,
    /// A BAR could not be placed in the MMIO windows.
    #[error("cannot allocate {size:#x} bytes for BAR {bar} of {device}: {source}")]
    BarAllocation {
        /// Device name.
        device: String,
        /// BAR index.
        bar: usize,
        /// BAR size.
        size: u64,
        /// Allocator error.
        #[source]
        source: vm_allocator::Error,
    },
    /// The BAR description is invalid (size not a power of two, too small, bad index).
    #[error("invalid BAR {bar}: {reason}")]
    InvalidBar {
        /// BAR index.
        bar: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// A capability's parameters are invalid.
    #[error("invalid capability: {0}")]
    InvalidCapability(&'static str),
    /// A capability does not fit in the 256-byte configuration space.
    #[error("capability {id:#x} of {len} bytes does not fit in config space")]
    CapabilitySpace {
        /// Capability ID.
        id: u8,
        /// Capability length.
        len: usize,
    },
}
