//! Shared fixture for capability tests: a recording interrupt hierarchy.

use std::sync::Arc;

use interrupt::{
    DeviceDomain, DomainKind, InterruptHierarchy, KvmVectorLayer, MsiMessage, NoRemap,
    RecordingBackend, RequesterId,
};

/// A hierarchy on a recording backend and one domain of `size` vectors.
pub fn domain(
    kind: DomainKind,
    size: usize,
) -> (
    Arc<RecordingBackend>,
    Arc<InterruptHierarchy>,
    Arc<DeviceDomain>,
) {
    let b = Arc::new(RecordingBackend::default());
    let h = InterruptHierarchy::new(
        Arc::new(KvmVectorLayer::new(b.clone(), 24, 4096)),
        Arc::new(NoRemap),
    );
    let d = h.create_domain("test", kind, RequesterId::pci(0, 3, 0), size, None);
    (b, h, d)
}

/// Committed routes, after forcing a commit.
pub fn routes(b: &RecordingBackend, h: &InterruptHierarchy) -> Vec<(u32, MsiMessage)> {
    h.vector_layer().commit().unwrap();
    b.committed.lock().unwrap().clone()
}
