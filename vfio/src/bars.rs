//! BARs of a pass-through function: their kind and size (from the host's BAR register and
//! VFIO's region info), and which parts of each go straight to the device (mmapped into the
//! guest as KVM memory slots) and which are trapped (MSI-X table and PBA pages, anything VFIO
//! does not let us mmap).

use pci::{Bar, BarKind, MsixLayout};

/// What VFIO says about one BAR region.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegionInfo {
    /// Region size in bytes (0: no BAR).
    pub size: u64,
    /// The region may be mmapped (`VFIO_REGION_INFO_FLAG_MMAP`).
    pub mmap: bool,
    /// Sparse-mmap capability: the only `(offset, size)` areas that may be mmapped.
    pub sparse: Option<Vec<(u64, u64)>>,
    /// `VFIO_REGION_INFO_CAP_MSIX_MAPPABLE`: the MSI-X table page may be mmapped too.
    pub msix_mappable: bool,
}

/// The BAR the guest sees for host BAR register value `raw` and region `size`; `None` for an
/// absent BAR, the upper half of a 64-bit BAR, or a size the PCI rules reject.
pub fn guest_bar(raw: u32, size: u64) -> Option<Bar> {
    if size == 0 {
        return None;
    }
    let kind = if raw & 1 != 0 {
        BarKind::Io
    } else if (raw >> 1) & 3 == 2 {
        BarKind::Memory64
    } else {
        BarKind::Memory32
    };
    let min = if kind == BarKind::Io { 4 } else { 16 };
    if !size.is_power_of_two() || size < min || (kind != BarKind::Memory64 && size > 1 << 31) {
        return None;
    }
    Some(Bar {
        kind,
        size,
        prefetchable: kind != BarKind::Io && raw & 8 != 0,
    })
}

/// Byte ranges `(offset, size)` of BAR `bar` that must be trapped for MSI-X emulation.
pub fn msix_ranges(bar: usize, msix: Option<&MsixLayout>) -> Vec<(u64, u64)> {
    let Some(m) = msix else { return Vec::new() };
    let mut r = Vec::new();
    if m.table_bar == bar {
        r.push((m.table_offset, m.table_size()));
    }
    if m.pba_bar == bar {
        r.push((m.pba_offset, m.pba_size()));
    }
    r
}

/// The page-aligned `(offset, size)` areas of a BAR to map into the guest: the mmappable
/// areas (the whole region, or its sparse-mmap areas) minus the pages holding a `trapped`
/// range, clipped to whole pages inside the region. Empty when the region cannot be mmapped
/// or is smaller than a page.
pub fn mmap_areas(region: &RegionInfo, trapped: &[(u64, u64)], page: u64) -> Vec<(u64, u64)> {
    if !region.mmap || region.size < page || !page.is_power_of_two() {
        return Vec::new();
    }
    let base: Vec<(u64, u64)> = match &region.sparse {
        Some(areas) => areas.clone(),
        None => vec![(0, region.size)],
    };
    // Pages holding the MSI-X table or PBA, as half-open [start, end).
    let mut holes: Vec<(u64, u64)> = trapped
        .iter()
        .filter(|&&(_, len)| len > 0)
        .map(|&(off, len)| {
            let start = off & !(page - 1);
            let end = off.saturating_add(len).saturating_add(page - 1) & !(page - 1);
            (start, end)
        })
        .collect();
    holes.sort_unstable();
    let mut out = Vec::new();
    for (off, len) in base {
        // Whole pages of the area, inside the region.
        let mut start = off.saturating_add(page - 1) & !(page - 1);
        let end = off.saturating_add(len).min(region.size) & !(page - 1);
        for &(hs, he) in &holes {
            if he <= start || hs >= end {
                continue;
            }
            if hs > start {
                out.push((start, hs - start));
            }
            start = start.max(he);
        }
        if end > start {
            out.push((start, end - start));
        }
    }
    out.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: u64 = 4096;

    fn layout(bar: usize, table: u64, pba: u64, vectors: usize) -> MsixLayout {
        MsixLayout {
            vectors,
            table_bar: bar,
            table_offset: table,
            pba_bar: bar,
            pba_offset: pba,
        }
    }

    #[test]
    fn bar_kinds_and_sizes_come_from_the_host() {
        let m64 = guest_bar(0xfebf_000c, 0x4000).unwrap();
        assert_eq!((m64.kind, m64.prefetchable), (BarKind::Memory64, true));
        let m32 = guest_bar(0xfebf_0000, 0x1000).unwrap();
        assert_eq!((m32.kind, m32.prefetchable), (BarKind::Memory32, false));
        let io = guest_bar(0xc001, 0x20).unwrap();
        assert_eq!(io.kind, BarKind::Io);
        assert_eq!(guest_bar(0, 0), None);
        assert_eq!(guest_bar(0, 0x1800), None, "not a power of two");
        assert_eq!(guest_bar(0, 8), None, "below 16 bytes");
        assert_eq!(guest_bar(0, 1 << 32), None, "32-bit BAR of 4 GiB");
        assert!(guest_bar(4, 1 << 32).is_some());
    }

    #[test]
    fn whole_region_minus_msix_pages() {
        let r = RegionInfo {
            size: 0x4000,
            mmap: true,
            ..Default::default()
        };
        let m = layout(0, 0x2000, 0x3000, 65);
        let areas = mmap_areas(&r, &msix_ranges(0, Some(&m)), PAGE);
        assert_eq!(areas, vec![(0, 0x2000)]);
        assert!(msix_ranges(1, Some(&m)).is_empty());
    }

    #[test]
    fn table_in_the_middle_splits_the_area() {
        let r = RegionInfo {
            size: 0x10000,
            mmap: true,
            msix_mappable: true,
            ..Default::default()
        };
        let m = layout(2, 0x8100, 0x9ff8, 4);
        let areas = mmap_areas(&r, &msix_ranges(2, Some(&m)), PAGE);
        assert_eq!(areas, vec![(0, 0x8000), (0xa000, 0x6000)]);
    }

    #[test]
    fn sparse_areas_are_honoured_and_clipped_to_pages() {
        let r = RegionInfo {
            size: 0x8000,
            mmap: true,
            sparse: Some(vec![(0, 0x2000), (0x3800, 0x2800), (0x7000, 0x4000)]),
            msix_mappable: false,
        };
        let areas = mmap_areas(&r, &[], PAGE);
        assert_eq!(areas, vec![(0, 0x2000), (0x4000, 0x2000), (0x7000, 0x1000)]);
    }

    #[test]
    fn unmappable_or_small_regions_are_all_trapped() {
        let r = RegionInfo {
            size: 0x4000,
            mmap: false,
            ..Default::default()
        };
        assert!(mmap_areas(&r, &[], PAGE).is_empty());
        let small = RegionInfo {
            size: 0x800,
            mmap: true,
            ..Default::default()
        };
        assert!(mmap_areas(&small, &[], PAGE).is_empty());
    }

    #[test]
    fn hostile_offsets_do_not_overflow() {
        let r = RegionInfo {
            size: 0x4000,
            mmap: true,
            sparse: Some(vec![(u64::MAX - 10, 100), (0, u64::MAX)]),
            msix_mappable: false,
        };
        let areas = mmap_areas(&r, &[(u64::MAX - 1, 16)], PAGE);
        assert_eq!(areas, vec![(0, 0x4000)]);
    }
}
