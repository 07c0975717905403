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

/// A set of IRTE indices kept as sorted, disjoint half-open ranges: what a batch of
/// index-selective invalidations names, exactly. Ranges merge only when they overlap or
/// abut, so an entry between two invalidated ranges stays outside the set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IrteRanges {
    /// `(start, end)` pairs, sorted by start, non-overlapping and non-adjacent.
    ranges: Vec<(u64, u64)>,
}

impl IrteRanges {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds indices `start..start + count` (clamped to the 32-bit index space).
    pub fn insert(&mut self, start: u32, count: u32) {
        if count == 0 {
            return;
        }
        let (mut lo, mut hi) = (u64::from(start), u64::from(start) + u64::from(count));
        // First range that ends at or after `lo` (it may touch the new one).
        let first = self.ranges.partition_point(|&(_, e)| e < lo);
        let mut last = first;
        while last < self.ranges.len() && self.ranges[last].0 <= hi {
            lo = lo.min(self.ranges[last].0);
            hi = hi.max(self.ranges[last].1);
            last += 1;
        }
        self.ranges.splice(first..last, [(lo, hi)]);
    }

    /// Whether no index is in the set.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Whether IRTE `index` is in the set.
    pub fn contains(&self, index: u32) -> bool {
        let i = u64::from(index);
        let pos = self.ranges.partition_point(|&(_, e)| e <= i);
        self.ranges.get(pos).is_some_and(|&(s, _)| s <= i)
    }

    /// Whether a vector carrying `message` is affected: a remappable-format message whose
    /// IRTE index is in the set.
    pub fn covers(&self, message: &MsiMessage) -> bool {
        message.remap_index().is_some_and(|i| self.contains(i))
    }

    /// The ranges as `(start, count)`, in index order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.ranges
            .iter()
            .map(|&(s, e)| (s as u32, (e - s).min(u64::from(u32::MAX)) as u32))
    }

    /// Removes every index.
    pub fn clear(&mut self) {
        self.ranges.clear();
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

    fn ranges(r: &IrteRanges) -> Vec<(u32, u32)> {
        r.iter().collect()
    }

    #[test]
    fn irte_ranges_keep_disjoint_ranges_apart() {
        let mut r = IrteRanges::new();
        r.insert(0, 1);
        r.insert(2, 1);
        assert_eq!(ranges(&r), [(0, 1), (2, 1)]);
        assert!(r.contains(0) && !r.contains(1) && r.contains(2) && !r.contains(3));
        assert!(!r.covers(&MsiMessage::remappable(1)));
        assert!(r.covers(&MsiMessage::remappable(2)));
        assert!(!r.covers(&MsiMessage::compose(0, false, 0x30, 0, false)));
    }

    #[test]
    fn irte_ranges_merge_when_they_abut_or_overlap() {
        let mut r = IrteRanges::new();
        r.insert(8, 4);
        r.insert(12, 4); // abuts
        assert_eq!(ranges(&r), [(8, 8)]);
        r.insert(4, 5); // overlaps the start
        assert_eq!(ranges(&r), [(4, 12)]);
        r.insert(30, 2);
        r.insert(20, 2);
        assert_eq!(ranges(&r), [(4, 12), (20, 2), (30, 2)]);
        r.insert(16, 14); // bridges all three
        assert_eq!(ranges(&r), [(4, 28)]);
        r.insert(10, 1); // inside
        assert_eq!(ranges(&r), [(4, 28)]);
        r.insert(0, 0); // empty
        assert_eq!(ranges(&r), [(4, 28)]);
        r.clear();
        assert!(r.is_empty());
    }

    #[test]
    fn irte_ranges_insert_out_of_order_stays_sorted() {
        let mut r = IrteRanges::new();
        for i in [50u32, 10, 30, 70, 0] {
            r.insert(i, 2);
        }
        assert_eq!(ranges(&r), [(0, 2), (10, 2), (30, 2), (50, 2), (70, 2)]);
        r.insert(u32::MAX, u32::MAX);
        assert!(r.contains(u32::MAX));
        assert!(!r.contains(u32::MAX - 1));
    }

    #[test]
    fn requester_id_formats_as_bdf() {
        assert_eq!(RequesterId::pci(0, 3, 1).to_string(), "00:03.1");
        assert_eq!(RequesterId::pci(0, 3, 1).0, 0x19);
    }
}
