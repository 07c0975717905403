//! The VFIO chip on the interrupt crate's domains (`MsiChip`).

use std::os::fd::AsRawFd;
use std::sync::Arc;

use interrupt::{ChipError, DeviceDomain, DomainKind, InterruptHierarchy, MsiChip, RequesterId};
use vmm_sys_util::eventfd::EventFd;

use crate::chip::VfioChip;

impl MsiChip for VfioChip {
    fn name(&self) -> &str {
        VfioChip::name(self)
    }

    /// The host device signals the triggers (KVM injects without the VMM).
    fn host_signalled(&self) -> bool {
        true
    }

    fn startup(&self, index: usize, trigger: &EventFd) -> Result<(), ChipError> {
        // The domain keeps `trigger` open and unchanged for its whole life (and owns us).
        VfioChip::startup(self, index, trigger.as_raw_fd()).map_err(ChipError::new)
    }

    fn shutdown(&self, index: usize) -> Result<(), ChipError> {
        VfioChip::shutdown(self, index).map_err(ChipError::new)
    }

    fn describe_vector(&self, index: usize) -> Option<String> {
        Some(VfioChip::describe_vector(self, index))
    }

    fn describe(&self) -> Option<String> {
        Some(VfioChip::describe(self))
    }
}

/// Creates a domain whose vectors' activation goes through `chip`.
pub fn create_domain(
    hierarchy: &Arc<InterruptHierarchy>,
    name: &str,
    kind: DomainKind,
    requester: RequesterId,
    size: usize,
    chip: Arc<VfioChip>,
) -> Arc<DeviceDomain> {
    hierarchy.create_domain_with_chip(name, kind, requester, size, None, chip)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chip::tests::FakeHost;
    use crate::chip::{HostIrqs, IrqMode, MSIX_INDEX};
    use interrupt::{KvmVectorLayer, MsiMessage, NoRemap, RoutingBackend};
    use kvm_bindings::kvm_irq_routing_entry;
    use std::sync::Mutex;

    /// Records which eventfd each irqfd registration binds.
    #[derive(Default)]
    struct FdBackend {
        irqfd_fds: Mutex<Vec<i32>>,
    }

    impl RoutingBackend for FdBackend {
        fn set_gsi_routing(&self, _r: &[kvm_irq_routing_entry]) -> interrupt::Result<()> {
            Ok(())
        }
        fn register_irqfd(&self, fd: &EventFd, _gsi: interrupt::Gsi) -> interrupt::Result<()> {
            self.irqfd_fds.lock().unwrap().push(fd.as_raw_fd());
            Ok(())
        }
        fn unregister_irqfd(&self, fd: &EventFd, _gsi: interrupt::Gsi) -> interrupt::Result<()> {
            self.irqfd_fds
                .lock()
                .unwrap()
                .retain(|&f| f != fd.as_raw_fd());
            Ok(())
        }
        fn signal_msi(&self, _m: MsiMessage) -> interrupt::Result<()> {
            Ok(())
        }
    }

    fn msg(v: u8) -> MsiMessage {
        MsiMessage::compose(0, false, v, 0, false)
    }

    #[test]
    fn first_unmask_with_message_starts_the_host_vector_once() {
        let b = Arc::new(FdBackend::default());
        let h = InterruptHierarchy::new(
            Arc::new(KvmVectorLayer::new(b.clone(), 24, 4096)),
            Arc::new(NoRemap),
        );
        let host = Arc::new(FakeHost::default());
        let irqs = HostIrqs::new("dev", host.clone(), IrqMode::Dynamic, 0, 8);
        let chip = Arc::new(VfioChip::new(irqs.clone(), MSIX_INDEX));
        let d = create_domain(&h, "dev", DomainKind::MsiX, RequesterId(8), 8, chip);
        d.set_message(3, Some(msg(0x43))).unwrap();
        d.set_masked(3, false).unwrap();
        // Mask, move, unmask: no host call.
        d.set_masked(3, true).unwrap();
        d.set_message(3, Some(msg(0x53))).unwrap();
        d.set_masked(3, false).unwrap();
        let t3 = d.trigger(3).unwrap().as_raw_fd();
        assert_eq!(*host.calls.lock().unwrap(), vec![format!("set 2 3 [{t3}]")]);
        // KVM listens to the very eventfd VFIO signals.
        assert_eq!(*b.irqfd_fds.lock().unwrap(), vec![t3]);
        assert!(irqs.enabled(MSIX_INDEX, 3));
        d.release(3).unwrap();
        assert!(!irqs.enabled(MSIX_INDEX, 3));
        assert_eq!(irqs.stats().set_irqs, 2);
        let view = h.render();
        assert!(
            view.contains(
                "chip vfio-msix vfio msix=dynamic: host SET_IRQS calls 2 (enable 0, bind 1, release 1), host MSI-X disables 0"
            ),
            "{view}"
        );
    }
}
