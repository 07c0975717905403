//! The MSI-X capability (PCI Local Bus 3.0 §6.8.2): a table of up to 2048 entries and a
//! pending bit array in BARs, function mask and per-entry mask.
//!
//! The table holds exactly what the guest wrote (it is the device's message storage); the
//! device's PCI/MSI-X [`DeviceDomain`] is kept in line after every write: entry `i` carries
//! its message and is masked while MSI-X is disabled, the function is masked, or the entry's
//! mask bit is set. A fire while masked sets the pending bit, which the PBA reports, and is
//! delivered exactly once on unmask. Entries can be unmasked and remasked at any time after
//! MSI-X is enabled (Linux's post-enable `pci_msix_alloc_irq_at`) without touching others.

use std::sync::Arc;

use interrupt::{DeviceDomain, MsiMessage};
use log::warn;

use crate::config::ConfigSpace;
use crate::Error;

/// Capability ID of MSI-X.
pub const MSIX_CAP_ID: u8 = 0x11;
/// Largest table the capability can describe.
pub const MSIX_MAX_VECTORS: usize = 2048;
/// Size of one table entry.
pub const MSIX_ENTRY_SIZE: u64 = 16;

/// Message control bits.
pub mod control {
    /// Table size minus one (10:0).
    pub const TABLE_SIZE_MASK: u16 = 0x7ff;
    /// Function mask.
    pub const FUNCTION_MASK: u16 = 1 << 14;
    /// MSI-X enable.
    pub const ENABLE: u16 = 1 << 15;
}

/// Vector control: entry masked.
pub const ENTRY_MASKED: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    addr_lo: u32,
    addr_hi: u32,
    data: u32,
    control: u32,
}

impl Default for Entry {
    fn default() -> Self {
        Self {
            addr_lo: 0,
            addr_hi: 0,
            data: 0,
            control: ENTRY_MASKED,
        }
    }
}

/// Where an MSI-X table and PBA live (the capability's table size, BIRs and offsets).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixLayout {
    /// Table entries (1..=2048).
    pub vectors: usize,
    /// BAR holding the table.
    pub table_bar: usize,
    /// Offset of the table in its BAR (8-byte aligned).
    pub table_offset: u64,
    /// BAR holding the PBA.
    pub pba_bar: usize,
    /// Offset of the PBA in its BAR (8-byte aligned).
    pub pba_offset: u64,
}

impl MsixLayout {
    /// Decodes the capability registers: message control, table and PBA offset/BIR.
    pub fn decode(control: u16, table: u32, pba: u32) -> Self {
        Self {
            vectors: usize::from(control & control::TABLE_SIZE_MASK) + 1,
            table_bar: (table & 7) as usize,
            table_offset: u64::from(table & !7),
            pba_bar: (pba & 7) as usize,
            pba_offset: u64::from(pba & !7),
        }
    }

    /// Bytes of the table.
    pub fn table_size(&self) -> u64 {
        self.vectors as u64 * MSIX_ENTRY_SIZE
    }

    /// Bytes of the PBA (whole qwords).
    pub fn pba_size(&self) -> u64 {
        self.vectors.div_ceil(64) as u64 * 8
    }
}

/// The MSI-X capability with its table and PBA.
pub struct MsixCapability {
    offset: usize,
    table: Vec<Entry>,
    table_bar: usize,
    table_offset: u64,
    pba_bar: usize,
    pba_offset: u64,
    enabled: bool,
    function_masked: bool,
    domain: Arc<DeviceDomain>,
}

impl MsixCapability {
    /// Adds an MSI-X capability with `vectors` entries to `config`. The table lives in BAR
    /// `table_bar` at `table_offset`, the PBA in `pba_bar` at `pba_offset` (both 8-byte
    /// aligned); `domain` must have at least `vectors` vectors.
    pub fn new(
        config: &mut ConfigSpace,
        vectors: usize,
        table_bar: usize,
        table_offset: u64,
        pba_bar: usize,
        pba_offset: u64,
        domain: Arc<DeviceDomain>,
    ) -> Result<Self, Error> {
        let layout = MsixLayout {
            vectors,
            table_bar,
            table_offset,
            pba_bar,
            pba_offset,
        };
        Self::build(config, None, layout, domain)
    }

    /// Like [`new`](Self::new), with the capability written at `offset` and left out of
    /// the list's linking (a pass-through function keeps its host's capability offsets).
    pub fn new_at(
        config: &mut ConfigSpace,
        offset: u8,
        layout: MsixLayout,
        domain: Arc<DeviceDomain>,
    ) -> Result<Self, Error> {
        Self::build(config, Some(offset), layout, domain)
    }

    fn build(
        config: &mut ConfigSpace,
        at: Option<u8>,
        layout: MsixLayout,
        domain: Arc<DeviceDomain>,
    ) -> Result<Self, Error> {
        let MsixLayout {
            vectors,
            table_bar,
            table_offset,
            pba_bar,
            pba_offset,
        } = layout;
        if vectors == 0 || vectors > MSIX_MAX_VECTORS || domain.size() < vectors {
            return Err(Error::InvalidCapability(
                "MSI-X table size must be 1..=2048",
            ));
        }
        if table_bar > 5
            || pba_bar > 5
            || !table_offset.is_multiple_of(8)
            || !pba_offset.is_multiple_of(8)
        {
            return Err(Error::InvalidCapability(
                "MSI-X BIR must be 0..=5, offsets 8-byte aligned",
            ));
        }
        let ctrl = (vectors - 1) as u16;
        let mut body = Vec::new();
        body.extend_from_slice(&ctrl.to_le_bytes());
        body.extend_from_slice(&((table_offset as u32) | table_bar as u32).to_le_bytes());
        body.extend_from_slice(&((pba_offset as u32) | pba_bar as u32).to_le_bytes());
        let mut wmask = vec![0u8; body.len()];
        wmask[..2].copy_from_slice(&(control::ENABLE | control::FUNCTION_MASK).to_le_bytes());
        let offset = usize::from(match at {
            None => config.add_capability(MSIX_CAP_ID, &body, &wmask)?,
            Some(off) => {
                config.place_capability(off, MSIX_CAP_ID, &body, &wmask)?;
                off
            }
        });
        Ok(Self {
            offset,
            table: vec![Entry::default(); vectors],
            table_bar,
            table_offset,
            pba_bar,
            pba_offset,
            enabled: false,
            function_masked: false,
            domain,
        })
    }

    /// Offset of the capability in config space.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Whether `offset` (a config-space byte) falls inside this capability.
    pub fn contains(&self, offset: usize) -> bool {
        (self.offset..self.offset + 12).contains(&offset)
    }

    /// Number of table entries.
    pub fn vectors(&self) -> usize {
        self.table.len()
    }

    /// Whether MSI-X is enabled.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Size in bytes of the table.
    pub fn table_size(&self) -> u64 {
        self.table.len() as u64 * MSIX_ENTRY_SIZE
    }

    /// Size in bytes of the PBA (whole qwords).
    pub fn pba_size(&self) -> u64 {
        self.table.len().div_ceil(64) as u64 * 8
    }

    fn entry_masked(&self, i: usize) -> bool {
        !self.enabled || self.function_masked || self.table[i].control & ENTRY_MASKED != 0
    }

    fn sync_entry(&self, i: usize) {
        let e = self.table[i];
        let msg = MsiMessage::new(e.addr_lo, e.addr_hi, e.data);
        if let Err(e) = self
            .domain
            .set_message(i, Some(msg))
            .and_then(|_| self.domain.set_masked(i, self.entry_masked(i)))
        {
            warn!("MSI-X vector {i}: {e}");
        }
    }

    /// Applies message control after a guest config write.
    pub fn update(&mut self, config: &ConfigSpace) {
        let ctrl = config.u16_at(self.offset + 2);
        let enable = ctrl & control::ENABLE != 0;
        let fmask = ctrl & control::FUNCTION_MASK != 0;
        if enable == self.enabled && fmask == self.function_masked {
            return;
        }
        let was_enabled = self.enabled;
        self.enabled = enable;
        self.function_masked = fmask;
        if !enable && was_enabled {
            if let Err(e) = self.domain.release_all() {
                warn!("MSI-X disable: {e}");
            }
            return;
        }
        for i in 0..self.table.len() {
            self.sync_entry(i);
        }
    }

    /// Whether (`bar`, `offset`) addresses the table; returns the table-relative offset.
    fn in_table(&self, bar: usize, offset: u64) -> Option<u64> {
        (bar == self.table_bar)
            .then(|| offset.checked_sub(self.table_offset))
            .flatten()
            .filter(|&o| o < self.table_size())
    }

    fn in_pba(&self, bar: usize, offset: u64) -> Option<u64> {
        (bar == self.pba_bar)
            .then(|| offset.checked_sub(self.pba_offset))
            .flatten()
            .filter(|&o| o < self.pba_size())
    }

    /// Handles a BAR read if it targets the table or PBA; returns false otherwise.
    pub fn bar_read(&self, bar: usize, offset: u64, data: &mut [u8]) -> bool {
        if let Some(o) = self.in_table(bar, offset) {
            data.fill(0);
            if !matches!(data.len(), 4 | 8) || !o.is_multiple_of(data.len() as u64) {
                return true;
            }
            let e = &self.table[(o / MSIX_ENTRY_SIZE) as usize];
            let words = [e.addr_lo, e.addr_hi, e.data, e.control];
            let w = ((o % MSIX_ENTRY_SIZE) / 4) as usize;
            data[..4].copy_from_slice(&words[w].to_le_bytes());
            if data.len() == 8 {
                data[4..].copy_from_slice(&words[w + 1].to_le_bytes());
            }
            return true;
        }
        if let Some(o) = self.in_pba(bar, offset) {
            data.fill(0);
            if !matches!(data.len(), 4 | 8) || !o.is_multiple_of(data.len() as u64) {
                return true;
            }
            let first = (o * 8) as usize;
            let mut bits = 0u64;
            for i in first..(first + data.len() * 8).min(self.table.len()) {
                if self.domain.is_pending(i) {
                    bits |= 1 << (i - first);
                }
            }
            data.copy_from_slice(&bits.to_le_bytes()[..data.len()]);
            return true;
        }
        false
    }

    /// Handles a BAR write if it targets the table or PBA; returns false otherwise.
    pub fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) -> bool {
        if let Some(o) = self.in_table(bar, offset) {
            if !matches!(data.len(), 4 | 8) || !o.is_multiple_of(data.len() as u64) {
                return true;
            }
            let i = (o / MSIX_ENTRY_SIZE) as usize;
            let first = ((o % MSIX_ENTRY_SIZE) / 4) as usize;
            for (w, chunk) in (first..).zip(data.chunks_exact(4)) {
                let v = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
                let e = &mut self.table[i];
                match w {
                    0 => e.addr_lo = v & !0x3,
                    1 => e.addr_hi = v,
                    2 => e.data = v,
                    _ => e.control = v & ENTRY_MASKED,
                }
            }
            self.sync_entry(i);
            return true;
        }
        // The PBA is read-only.
        self.in_pba(bar, offset).is_some()
    }

    /// Signals vector `index`: delivered, or left pending while masked. Ignored while
    /// MSI-X is disabled or for an index beyond the table.
    pub fn fire(&self, index: usize) -> bool {
        if !self.enabled || index >= self.table.len() {
            return false;
        }
        self.domain.fire(index).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{domain, routes};
    use interrupt::{DomainKind, InterruptHierarchy, RecordingBackend};

    struct T {
        c: ConfigSpace,
        m: MsixCapability,
        b: Arc<RecordingBackend>,
        h: Arc<InterruptHierarchy>,
    }

    const PBA: u64 = 0x8000;

    fn setup(n: usize) -> T {
        let (b, h, d) = domain(DomainKind::MsiX, n);
        let mut c = ConfigSpace::new(1, 2, 0xff, 0, 0, 0);
        let m = MsixCapability::new(&mut c, n, 2, 0, 2, PBA, d).unwrap();
        T { c, m, b, h }
    }

    impl T {
        fn ctrl(&mut self, v: u16) {
            self.c.guest_write(self.m.offset() + 2, &v.to_le_bytes());
            self.m.update(&self.c);
        }
        fn w(&mut self, off: u64, v: u32) {
            assert!(self.m.bar_write(2, off, &v.to_le_bytes()));
        }
        fn r(&self, off: u64) -> u32 {
            let mut b = [0u8; 4];
            assert!(self.m.bar_read(2, off, &mut b));
            u32::from_le_bytes(b)
        }
        fn program(&mut self, i: u64, vector: u32, masked: bool) {
            self.w(i * 16, 0xfee0_0000);
            self.w(i * 16 + 4, 0);
            self.w(i * 16 + 8, vector);
            self.w(i * 16 + 12, u32::from(masked));
        }
        fn delivered(&self, i: usize) -> u64 {
            self.h.domains()[0].snapshot()[i].deliveries
        }
    }

    #[test]
    fn control_reports_table_size_and_bir_read_only() {
        let mut t = setup(2048);
        assert_eq!(t.c.u16_at(t.m.offset() + 2), 0x7ff);
        t.ctrl(0xffff);
        assert_eq!(t.c.u16_at(t.m.offset() + 2), 0xc7ff);
        assert_eq!(t.c.u32_at(t.m.offset() + 4), 2);
        assert_eq!(t.c.u32_at(t.m.offset() + 8), 0x8002);
        assert_eq!(t.m.pba_size(), 256);
    }

    #[test]
    fn entries_start_masked_and_reserved_bits_read_zero() {
        let mut t = setup(4);
        assert_eq!(t.r(12), ENTRY_MASKED);
        t.w(12, 0xffff_fffe);
        assert_eq!(t.r(12), 0);
        t.w(0, 0xfee0_0003);
        assert_eq!(t.r(0), 0xfee0_0000);
    }

    #[test]
    fn table_reads_back_what_was_written_including_qwords() {
        let mut t = setup(4);
        assert!(t
            .m
            .bar_write(2, 16, &0x0000_0001_fee0_1000u64.to_le_bytes()));
        let mut q = [0u8; 8];
        assert!(t.m.bar_read(2, 16, &mut q));
        assert_eq!(u64::from_le_bytes(q), 0x0000_0001_fee0_1000);
        assert_eq!(t.r(20), 1);
    }

    #[test]
    fn fire_while_entry_masked_sets_pba_and_unmask_delivers_once() {
        let mut t = setup(70);
        t.ctrl(control::ENABLE);
        t.program(65, 0x41, true);
        assert!(t.m.fire(65));
        assert!(t.m.fire(65));
        assert_eq!(t.r(PBA + 8), 0b10);
        t.w(65 * 16 + 12, 0);
        assert_eq!(t.r(PBA + 8), 0);
        assert_eq!(t.delivered(65), 1);
    }

    #[test]
    fn function_mask_holds_all_vectors_pending() {
        let mut t = setup(4);
        t.ctrl(control::ENABLE | control::FUNCTION_MASK);
        t.program(0, 0x40, false);
        t.program(1, 0x41, false);
        t.m.fire(0);
        t.m.fire(1);
        assert_eq!(t.r(PBA), 0b11);
        t.ctrl(control::ENABLE);
        assert_eq!((t.delivered(0), t.delivered(1)), (1, 1));
        assert_eq!(t.r(PBA), 0);
    }

    #[test]
    fn disabled_msix_does_not_signal() {
        let mut t = setup(4);
        t.program(0, 0x40, false);
        assert!(!t.m.fire(0));
        assert!(routes(&t.b, &t.h).is_empty());
    }

    #[test]
    fn post_enable_allocation_leaves_other_vectors_alone() {
        let mut t = setup(8);
        t.ctrl(control::ENABLE);
        t.program(0, 0x40, false);
        t.m.fire(0);
        let before = routes(&t.b, &t.h);
        let irqfds_before = t.b.irqfds.lock().unwrap().clone();
        t.program(5, 0x45, false);
        t.m.fire(5);
        let after = routes(&t.b, &t.h);
        assert_eq!(after[0], before[0]);
        assert_eq!(after.len(), 2);
        assert!(t.b.irqfds.lock().unwrap().starts_with(&irqfds_before));
        // Freeing vector 5 (masking it is what Linux does before freeing) keeps vector 0.
        t.w(5 * 16 + 12, 1);
        t.m.fire(0);
        assert_eq!(t.delivered(0), 2);
    }

    #[test]
    fn unmasking_one_entry_at_a_time_costs_one_commit_per_burst() {
        let mut t = setup(2048);
        t.ctrl(control::ENABLE);
        for i in 0..2048 {
            t.program(i, 0x40 + (i as u32 % 100), false);
        }
        assert_eq!(t.h.vector_layer().stats().commits, 0);
        t.m.fire(2047);
        assert_eq!(t.h.vector_layer().stats().commits, 1);
        assert_eq!(t.h.vector_layer().stats().routes, 2048);
    }

    #[test]
    fn disable_releases_every_vector() {
        let mut t = setup(4);
        t.ctrl(control::ENABLE);
        t.program(0, 0x40, false);
        t.program(1, 0x41, false);
        t.ctrl(0);
        assert_eq!(t.h.vector_layer().stats().allocated, 0);
        assert!(routes(&t.b, &t.h).is_empty());
    }

    #[test]
    fn pba_is_read_only_and_outside_accesses_are_not_claimed() {
        let mut t = setup(4);
        assert!(t.m.bar_write(2, PBA, &u64::MAX.to_le_bytes()));
        assert_eq!(t.r(PBA), 0);
        let mut b = [0u8; 4];
        assert!(!t.m.bar_read(2, PBA + 8, &mut b));
        assert!(!t.m.bar_read(0, 0, &mut b));
        assert!(!t.m.bar_read(2, 4 * 16, &mut b));
    }

    #[test]
    fn odd_sized_or_misaligned_accesses_are_ignored() {
        let mut t = setup(4);
        assert!(t.m.bar_write(2, 1, &[1, 2, 3, 4]));
        assert!(t.m.bar_write(2, 0, &[1, 2]));
        assert!(t.m.bar_write(2, 4, &[0xff; 8]));
        assert_eq!(t.r(0), 0);
        let mut b = [0xaau8; 2];
        assert!(t.m.bar_read(2, 0, &mut b));
        assert_eq!(b, [0, 0]);
    }

    #[test]
    fn invalid_parameters_are_rejected() {
        let (_, _, d) = domain(DomainKind::MsiX, 4);
        let mut c = ConfigSpace::new(1, 2, 0xff, 0, 0, 0);
        assert!(MsixCapability::new(&mut c, 0, 0, 0, 0, 0x100, d.clone()).is_err());
        assert!(MsixCapability::new(&mut c, 8, 0, 0, 0, 0x100, d.clone()).is_err());
        assert!(MsixCapability::new(&mut c, 4, 6, 0, 0, 0x100, d.clone()).is_err());
        assert!(MsixCapability::new(&mut c, 4, 0, 4, 0, 0x100, d).is_err());
    }
}
