//! The VFIO chip on the interrupt crate's domains.

use std::sync::Arc;

use interrupt::{DeviceDomain, DomainKind, InterruptHierarchy, RequesterId};

use crate::chip::VfioChip;

/// Creates a domain whose vectors' activation goes through `chip`.
pub fn create_domain(
    hierarchy: &Arc<InterruptHierarchy>,
    name: &str,
    kind: DomainKind,
    requester: RequesterId,
    size: usize,
    chip: Arc<VfioChip>,
) -> Arc<DeviceDomain> {
    // Until the interrupt crate has host-signalled vectors, the chip is not wired.
    let _ = chip;
    hierarchy.create_domain(name, kind, requester, size, None)
}
