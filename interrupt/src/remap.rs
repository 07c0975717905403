//! The interrupt-remapping layer: the optional middle of the hierarchy.
//!
//! A remap layer turns the message a device wrote into the message the CPU vector layer
//! should deliver, or blocks it. Without an IOMMU the [`NoRemap`] layer passes messages in
//! the x86 interrupt window through unchanged.

use std::fmt;

use crate::msi::MsiMessage;

/// Source of an interrupt request: PCI bus/device/function (`bus << 8 | dev << 3 | fn`), or
/// a platform source ID (an IOAPIC's, as declared in the DMAR device scope).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequesterId(pub u16);

impl RequesterId {
    /// Builds the ID of PCI function `bus:dev.func`.
    pub fn pci(bus: u8, dev: u8, func: u8) -> Self {
        Self((u16::from(bus) << 8) | (u16::from(dev & 0x1f) << 3) | u16::from(func & 7))
    }
}

impl fmt::Display for RequesterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02x}:{:02x}.{}",
            self.0 >> 8,
            (self.0 >> 3) & 0x1f,
            self.0 & 7
        )
    }
}

/// What the remap layer made of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemapOutcome {
    /// Deliver this message.
    Deliver(MsiMessage),
    /// Deliver nothing (a fault was recorded where the layer has fault reporting).
    Blocked,
}

/// The remap layer of the hierarchy.
pub trait RemapLayer: Send + Sync {
    /// Short name shown in the hierarchy view (e.g. "none", "vt-d").
    fn name(&self) -> &str;
    /// Translates the message `requester` wrote, to install as a route. No side effects:
    /// routes are computed ahead of interrupt requests and again on every invalidation.
    fn remap(&self, requester: RequesterId, message: MsiMessage) -> RemapOutcome;
    /// Called when `requester` actually requests an interrupt with `message` and
    /// [`RemapLayer::remap`] blocked it: the layer records a fault where it has fault
    /// reporting (the slow path; the fast path never gets here).
    fn report_blocked(&self, _requester: RequesterId, _message: MsiMessage) {}
    /// One line of state for the hierarchy view (enable bits, fault counts...).
    fn summary(&self) -> String {
        String::new()
    }
}

/// Which vectors a remap-layer state change affects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetranslateScope {
    /// Every active vector (global invalidation, table pointer or enable changes).
    All,
    /// Vectors whose remappable-format message selects an IRTE index in
    /// `start..start + count` (index-selective invalidation).
    IrteRange {
        /// First index.
        start: u32,
        /// Number of indices.
        count: u32,
    },
}

impl RetranslateScope {
    /// Whether a vector carrying `message` is affected. Compatibility-format messages are
    /// only affected by [`RetranslateScope::All`].
    pub fn covers(&self, message: &MsiMessage) -> bool {
        match self {
            RetranslateScope::All => true,
            RetranslateScope::IrteRange { start, count } => message
                .remap_index()
                .is_some_and(|i| i >= *start && i - start < *count),
        }
    }
}

/// The pass-through layer used when no IOMMU is configured.
#[derive(Debug, Default)]
pub struct NoRemap;

impl RemapLayer for NoRemap {
    fn name(&self) -> &str {
        "none"
    }

    fn remap(&self, _requester: RequesterId, message: MsiMessage) -> RemapOutcome {
        // Without remapping, a write outside the interrupt window is an ordinary memory
        // write, not an interrupt; remappable-format messages mean nothing either.
        if message.targets_interrupt_window() && !message.is_remappable() {
            RemapOutcome::Deliver(message)
        } else {
            RemapOutcome::Blocked
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_remap_passes_interrupt_window_messages() {
        let m = MsiMessage::compose(1, false, 0x40, 0, false);
        assert_eq!(NoRemap.remap(RequesterId(8), m), RemapOutcome::Deliver(m));
    }

    #[test]
    fn no_remap_blocks_other_writes() {
        let r = RequesterId::pci(0, 3, 0);
        assert_eq!(
            NoRemap.remap(r, MsiMessage::new(0x1000, 0, 0x40)),
            RemapOutcome::Blocked
        );
        assert_eq!(
            NoRemap.remap(r, MsiMessage::new(0xFEE0_0010, 0, 0)),
            RemapOutcome::Blocked
        );
    }

    #[test]
    fn scope_covers_only_its_irte_range() {
        let s = RetranslateScope::IrteRange { start: 8, count: 4 };
        assert!(s.covers(&MsiMessage::remappable(8)));
        assert!(s.covers(&MsiMessage::remappable(11)));
        assert!(!s.covers(&MsiMessage::remappable(12)));
        assert!(!s.covers(&MsiMessage::compose(0, false, 0x30, 0, false)));
        assert!(RetranslateScope::All.covers(&MsiMessage::compose(0, false, 0x30, 0, false)));
    }

    #[test]
    fn requester_id_formats_as_bdf() {
        assert_eq!(RequesterId::pci(0, 3, 1).to_string(), "00:03.1");
        assert_eq!(RequesterId::pci(0, 3, 1).0, 0x19);
    }
}
