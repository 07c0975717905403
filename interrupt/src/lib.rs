//! The VMM side of Linux's MSI interrupt hierarchy.
//!
//! Linux (since 6.2) stacks per-device MSI domains on an optional interrupt-remapping
//! domain, which sits on the CPU vector domain:
//!
//! ```text
//! [per-device PCI/MSI | PCI/MSI-X | IMS | IOAPIC]  -> DeviceDomain  (this crate: domain.rs)
//!            -> [IOMMU interrupt remapping]        -> RemapLayer    (remap.rs)
//!            -> [CPU vector]                        -> VectorLayer   (vector.rs, KVM GSI routes + irqfds)
//! ```
//!
//! Every interrupt source of the VMM ends on a KVM irqfd bound to a GSI whose route carries the
//! (remapped) MSI message, so firing an interrupt is one `eventfd` write with no userspace hop
//! in KVM. Route changes are collected by the vector layer and committed with one
//! `KVM_SET_GSI_ROUTING` just before a changed vector can fire.

pub mod domain;
pub mod error;
pub mod hierarchy;
pub mod msi;
pub mod ratelimit;
mod relay;
pub mod remap;
pub mod vector;
pub mod vtd;
pub mod worker;

pub use domain::{ChipError, DeviceDomain, DirectListener, DomainKind, MsiChip, VectorSnapshot};
pub use error::Error;
pub use hierarchy::InterruptHierarchy;
pub use msi::MsiMessage;
pub use ratelimit::RateLimiter;
pub use relay::SignalListener;
pub use remap::{IrteRanges, NoRemap, RemapLayer, RemapOutcome, RequesterId, RetranslateScope};
pub use vector::{
    Gsi, KvmVectorLayer, RecordingBackend, RoutingBackend, Vector, VectorLayer, VectorLayerStats,
};
pub use vtd::{VtdConfig, VtdUnit};

#[doc(hidden)]
pub use log as __log;

/// Convenience result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;
