//! How a device signals the driver: one MSI-X vector of the device's PCI/MSI-X domain.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use interrupt::DeviceDomain;
use vmm_sys_util::eventfd::EventFd;

/// A used-buffer (per queue) or configuration-change interrupt.
///
/// Cloneable and `Send`: a device worker keeps its own copy. Delivery is one signal of the
/// vector chosen by the driver (`queue_msix_vector` / `msix_config`); the domain applies the
/// MSI-X rules (pending while masked, remapping). The ISR status bit is set as well, for
/// drivers that read it.
#[derive(Clone)]
pub struct VirtioInterrupt {
    domain: Arc<DeviceDomain>,
    vector: Option<u16>,
    isr: Arc<AtomicU8>,
    isr_bit: u8,
}

impl VirtioInterrupt {
    /// An interrupt on `vector` of `domain` (`None`: the driver chose no vector).
    pub fn new(
        domain: Arc<DeviceDomain>,
        vector: Option<u16>,
        isr: Arc<AtomicU8>,
        isr_bit: u8,
    ) -> Self {
        Self {
            domain,
            vector,
            isr,
            isr_bit,
        }
    }

    /// Signals the driver.
    pub fn trigger(&self) {
        self.isr.fetch_or(self.isr_bit, Ordering::AcqRel);
        if let Some(v) = self.vector {
            signal_vector(&self.domain, usize::from(v));
        }
    }

    /// The MSI-X vector, if the driver assigned one.
    pub fn vector(&self) -> Option<u16> {
        self.vector
    }

    /// The device's interrupt domain.
    pub fn domain(&self) -> &Arc<DeviceDomain> {
        &self.domain
    }

    /// The eventfd an external producer (a vhost worker) writes to raise this interrupt:
    /// the vector's stable trigger of a host-signalled domain. `None` without a vector or
    /// while the domain has no host-signalled triggers.
    pub fn eventfd(&self) -> Option<Arc<EventFd>> {
        let v = self.vector?;
        if !self.domain.is_host_signalled() {
            return None;
        }
        self.domain.trigger(usize::from(v)).ok()
    }
}

/// One interrupt on `index` of `domain`.
fn signal_vector(domain: &DeviceDomain, index: usize) {
    // Errors (index beyond the table) are the guest's choice of vector; nothing to deliver.
    let _ = domain.fire(index);
}
