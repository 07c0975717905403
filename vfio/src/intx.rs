//! INTx of a pass-through function: a level-triggered line through the VMM.
//!
//! KVM's resampling irqfd (`KVM_IRQFD_FLAG_RESAMPLE`) needs the in-kernel IOAPIC; with our
//! split irqchip the IOAPIC is in userspace, so the line goes through the VMM:
//!
//! 1. The host (vfio-pci) signals the INTx *trigger* eventfd on each interrupt and masks
//!    INTx on the host (automask).
//! 2. The interrupt crate's relay thread watches the trigger ([`Intx`] is its
//!    [`SignalListener`]) and asserts the guest's line (an IOAPIC level pin).
//! 3. The guest's EOI of that pin reaches [`Intx::end_of_interrupt`] (the IOAPIC's EOI
//!    listener): the line is deasserted and the host's INTx unmasked by a write to the
//!    *unmask* eventfd (`VFIO_IRQ_SET_ACTION_UNMASK`). If the device still asserts INTx, the
//!    host triggers again and the cycle repeats.
//!
//! INTx is *wanted* while the guest has neither MSI nor MSI-X enabled and has not set INTx
//! disable (command bit 10). Host INTx goes on when it is wanted and the guest has unmasked
//! the line's IOAPIC pin (a driver requested the interrupt), and off when it is no longer
//! wanted. Linux clears INTx disable whenever it frees MSI-X vectors (the nvme driver does
//! so between its admin vector and its queue vectors); waiting for the pin's unmask keeps
//! that moment from turning the host's MSI-X off for an INTx no driver uses.

use std::sync::{Arc, Mutex};

use interrupt::SignalListener;
use log::warn;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::chip::HostIrqs;

/// The guest's interrupt line an INTx drives (an IOAPIC pin in the VMM).
pub trait IntxLine: Send + Sync {
    /// Sets the line's level (true: asserted).
    fn set_level(&self, asserted: bool);
}

#[derive(Default)]
struct State {
    /// The guest's MSI/MSI-X enables and INTx disable bit allow INTx.
    wanted: bool,
    /// The guest unmasked the line's IOAPIC pin.
    pin_unmasked: bool,
    /// Host INTx is on and the guest's line follows it.
    active: bool,
    /// The line is asserted (a host interrupt the guest has not EOI'd yet).
    asserted: bool,
}

/// One pass-through function's INTx.
pub struct Intx {
    trigger: EventFd,
    unmask: EventFd,
    line: Arc<dyn IntxLine>,
    irqs: Arc<HostIrqs>,
    state: Mutex<State>,
}

impl Intx {
    /// INTx of the device whose host interrupts are `irqs`, driving `line`. The eventfds are
    /// registered with `irqs` (bound on the host when INTx is enabled).
    pub fn new(irqs: Arc<HostIrqs>, line: Arc<dyn IntxLine>) -> std::io::Result<Arc<Self>> {
        let intx = Arc::new(Self {
            trigger: EventFd::new(EFD_NONBLOCK)?,
            unmask: EventFd::new(EFD_NONBLOCK)?,
            line,
            irqs,
            state: Mutex::new(State::default()),
        });
        use std::os::fd::AsRawFd;
        intx.irqs
            .set_intx_fds(intx.trigger.as_raw_fd(), intx.unmask.as_raw_fd());
        Ok(intx)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The eventfd the host signals per interrupt (for the relay to watch).
    pub fn trigger(&self) -> &EventFd {
        &self.trigger
    }

    /// Whether the line is asserted now.
    pub fn asserted(&self) -> bool {
        self.lock().asserted
    }

    /// The guest's MSI/MSI-X enables and INTx disable bit allow INTx (`wanted`) or not.
    /// Turning host INTx off deasserts the line.
    pub fn set_wanted(&self, wanted: bool) {
        let mut s = self.lock();
        s.wanted = wanted;
        self.sync(&mut s);
    }

    /// The guest masked or unmasked the line's IOAPIC pin.
    pub fn pin_mask_changed(&self, masked: bool) {
        let mut s = self.lock();
        s.pin_unmasked = !masked;
        self.sync(&mut s);
    }

    fn sync(&self, s: &mut State) {
        let on = self.irqs.intx_enabled();
        let r = if !s.wanted && on {
            self.irqs.intx_disable()
        } else if s.wanted && s.pin_unmasked && !on {
            self.irqs.intx_enable().map(|_| ())
        } else {
            Ok(())
        };
        if let Err(e) = r {
            warn!("INTx: {e}");
        }
        s.active = s.wanted && self.irqs.intx_enabled();
        if !s.active && s.asserted {
            s.asserted = false;
            self.line.set_level(false);
        }
    }

    /// The guest EOI'd the line: deassert it and unmask the host's INTx (which triggers
    /// again if the device still asserts).
    pub fn end_of_interrupt(&self) {
        let mut s = self.lock();
        if !s.asserted {
            return;
        }
        s.asserted = false;
        self.line.set_level(false);
        if s.active {
            if let Err(e) = self.unmask.write(1) {
                warn!("INTx: cannot unmask the host interrupt: {e}");
            }
            self.irqs.count_intx_unmask();
        }
    }
}

impl SignalListener for Intx {
    /// The host signalled the trigger: assert the line (while INTx is active).
    fn signalled(&self) {
        if self.trigger.read().is_err() {
            return; // nothing there (spurious wakeup)
        }
        let mut s = self.lock();
        if !s.active {
            return; // a late signal from before INTx was turned off
        }
        self.irqs.count_intx_relayed();
        if !s.asserted {
            s.asserted = true;
            self.line.set_level(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chip::tests::FakeHost;
    use crate::chip::{IrqMode, MSIX_INDEX};

    #[derive(Default)]
    pub(crate) struct Line(pub Mutex<Vec<bool>>);

    impl IntxLine for Line {
        fn set_level(&self, asserted: bool) {
            self.0.lock().unwrap().push(asserted);
        }
    }

    fn setup() -> (Arc<FakeHost>, Arc<HostIrqs>, Arc<Line>, Arc<Intx>) {
        let h = Arc::new(FakeHost::default());
        let irqs = HostIrqs::new("dev", h.clone(), IrqMode::Dynamic, 1, 8);
        let line = Arc::new(Line::default());
        let intx = Intx::new(irqs.clone(), line.clone()).unwrap();
        (h, irqs, line, intx)
    }

    #[test]
    fn signal_asserts_eoi_deasserts_and_unmasks_the_host() {
        let (h, irqs, line, intx) = setup();
        intx.set_wanted(true);
        assert!(h.calls.lock().unwrap().is_empty(), "pin still masked");
        intx.pin_mask_changed(false);
        let (t, u) = {
            use std::os::fd::AsRawFd;
            (intx.trigger.as_raw_fd(), intx.unmask.as_raw_fd())
        };
        assert_eq!(
            *h.calls.lock().unwrap(),
            vec![format!("set 0 0 [{t}]"), format!("unmask 0 {u}")]
        );
        intx.trigger.write(1).unwrap();
        intx.signalled();
        assert!(intx.asserted());
        intx.end_of_interrupt();
        assert_eq!(*line.0.lock().unwrap(), vec![true, false]);
        assert_eq!(intx.unmask.read().unwrap(), 1, "host unmasked once");
        // An EOI with nothing asserted unmasks nothing.
        intx.end_of_interrupt();
        assert!(intx.unmask.read().is_err());
        let s = irqs.stats();
        assert_eq!((s.intx_enables, s.intx_relayed, s.intx_unmasks), (1, 1, 1));
        assert!(
            irqs.describe()
                .contains("INTx on: relayed 1, unmasks 1, enables 1, disables 0"),
            "{}",
            irqs.describe()
        );
    }

    #[test]
    fn a_spurious_wakeup_asserts_nothing() {
        let (_, _, line, intx) = setup();
        intx.set_wanted(true);
        intx.pin_mask_changed(false);
        intx.signalled();
        assert!(line.0.lock().unwrap().is_empty());
    }

    #[test]
    fn msix_enable_turns_host_intx_off_and_signals_while_off_are_dropped() {
        let (h, irqs, line, intx) = setup();
        intx.set_wanted(true);
        intx.pin_mask_changed(false);
        intx.trigger.write(1).unwrap();
        intx.signalled();
        // Linux sets INTx disable, then enables MSI-X: the line drops, host INTx goes off.
        intx.set_wanted(false);
        assert_eq!(*line.0.lock().unwrap(), vec![true, false]);
        assert!(!irqs.intx_enabled());
        intx.trigger.write(1).unwrap();
        intx.signalled();
        assert_eq!(line.0.lock().unwrap().len(), 2);
        irqs.guest_enabled(MSIX_INDEX).unwrap();
        assert_eq!(h.calls.lock().unwrap()[2..], ["disable 0", "set 2 0 [-1]"]);
        // Back to INTx (pin still unmasked): MSI-X off on the host first.
        intx.set_wanted(true);
        let calls = h.calls.lock().unwrap().clone();
        assert_eq!(calls[4], "disable 2");
        assert!(calls[5].starts_with("set 0 0 ["));
        let st = irqs.stats();
        assert_eq!(
            (st.type_switches, st.intx_enables, st.intx_disables),
            (1, 2, 1)
        );
        // MSI-X calls only in `set_irqs`: enable, then the switch's disable.
        assert_eq!(st.set_irqs, 2);
    }

    #[test]
    fn msix_freed_and_reallocated_with_the_pin_masked_leaves_the_host_alone() {
        // Linux's nvme probe: one MSI-X vector, freed (INTx disable cleared), then N.
        let (h, irqs, _, intx) = setup();
        irqs.guest_enabled(MSIX_INDEX).unwrap();
        intx.set_wanted(false);
        intx.set_wanted(true); // MSI-X disabled by the guest, INTx allowed, pin masked
        intx.set_wanted(false);
        assert!(
            !irqs.guest_enabled(MSIX_INDEX).unwrap(),
            "host MSI-X stayed on"
        );
        assert_eq!(*h.calls.lock().unwrap(), vec!["set 2 0 [-1]"]);
    }

    #[test]
    fn msix_activation_while_intx_is_on_switches_the_type() {
        let (h, irqs, _, intx) = setup();
        intx.set_wanted(true);
        intx.pin_mask_changed(false);
        irqs.startup(MSIX_INDEX, 0, 100).unwrap();
        assert_eq!(h.calls.lock().unwrap()[2..], ["disable 0", "set 2 0 [100]"]);
        assert!(!irqs.intx_enabled());
        assert_eq!(irqs.stats().intx_disables, 1);
        // The device notices at its next sync.
        intx.set_wanted(false);
        assert_eq!(h.calls.lock().unwrap().len(), 4);
    }
}
