//! Pieces every fuzz target shares: access sizes, guest RAM layouts, the interrupt hierarchy
//! on a recording vector layer (no KVM) with its bookkeeping checks, PCI configuration
//! addressing, and the operation vocabularies of the DSA (`dsa`) and VT-d (`vtd`) models.

use std::collections::BTreeSet;
use std::sync::Arc;

use arbitrary::Arbitrary;
use interrupt::{
    DeviceDomain, InterruptHierarchy, KvmVectorLayer, NoRemap, RecordingBackend, VtdConfig, VtdUnit,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub mod dsa;
pub mod vtd;

/// GSIs the vmm reserves for the IOAPIC pins (the dynamic range starts above them).
pub const RESERVED_GSIS: u32 = 24;
/// The GSI limit of a KVM with the default routing table.
pub const KVM_MAX_GSI: u32 = 4096;

/// The size of an MMIO, PIO or register access: mostly the natural ones, sometimes anything
/// up to the target's limit.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Size {
    /// One byte.
    B1,
    /// Two bytes.
    B2,
    /// Four bytes.
    B4,
    /// Eight bytes.
    B8,
    /// Any length from 0 to the target's maximum.
    Any(u8),
}

impl Size {
    /// The length in bytes, at most `max`.
    pub fn len(self, max: usize) -> usize {
        match self {
            Size::B1 => 1,
            Size::B2 => 2,
            Size::B4 => 4,
            Size::B8 => 8,
            Size::Any(n) => usize::from(n) % (max + 1),
        }
        .min(max)
    }
}

/// The first `size.len(max)` bytes of the little-endian `value` (zero-padded past 8).
pub fn le_bytes(value: u64, size: Size, max: usize) -> Vec<u8> {
    let mut v = value.to_le_bytes().to_vec();
    v.resize(size.len(max), 0);
    v
}

/// How guest RAM of `end` bytes is laid out: one region, two adjacent halves, or a hole in
/// the third quarter (so tables, buffers and status addresses often fall outside RAM).
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Layout {
    /// `[0, end)`.
    One,
    /// `[0, end/2)` and `[end/2, end)`.
    Split,
    /// `[0, end/2)` and `[3*end/4, end)`.
    Hole,
}

impl Layout {
    /// The RAM ranges for `end` bytes of address space.
    pub fn ranges(self, end: u64) -> Vec<(GuestAddress, usize)> {
        let half = end / 2;
        match self {
            Layout::One => vec![(GuestAddress(0), end as usize)],
            Layout::Split => vec![
                (GuestAddress(0), half as usize),
                (GuestAddress(half), (end - half) as usize),
            ],
            Layout::Hole => vec![
                (GuestAddress(0), half as usize),
                (GuestAddress(hole_end(end)), (end - hole_end(end)) as usize),
            ],
        }
    }

    /// Guest memory with this layout.
    pub fn memory(self, end: u64) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&self.ranges(end)).expect("guest memory")
    }
}

/// End of the hole of [`Layout::Hole`] (it starts at `end / 2`).
pub fn hole_end(end: u64) -> u64 {
    end / 2 + end / 4
}

/// A guest write that may fall partly or wholly outside RAM (vm-memory refuses what does not
/// fit; that is what a hostile guest's pointers do).
pub fn write_mem(mem: &GuestMemoryMmap, addr: u64, bytes: &[u8]) {
    let _ = mem.write_slice(bytes, GuestAddress(addr));
}

/// Reads `len` bytes the harness placed in RAM itself.
pub fn read_mem(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    mem.read_slice(&mut v, GuestAddress(addr))
        .expect("harness buffers are in RAM");
    v
}

/// The interrupt hierarchy on a [`RecordingBackend`] (the mock of KVM's routing table,
/// irqfds and `KVM_SIGNAL_MSI`).
pub struct Recording {
    /// What the vector layer asked "KVM" for.
    pub backend: Arc<RecordingBackend>,
    /// The hierarchy.
    pub hierarchy: Arc<InterruptHierarchy>,
    /// The VT-d unit, when it is the remap layer.
    pub vtd: Option<Arc<VtdUnit>>,
    reserved: u32,
    max_gsi: u32,
}

impl Recording {
    /// A hierarchy without remapping, with GSIs `reserved..max_gsi` for device vectors.
    pub fn no_remap(reserved: u32, max_gsi: u32) -> Self {
        let backend = Arc::new(RecordingBackend::default());
        let hierarchy = InterruptHierarchy::new(
            Arc::new(KvmVectorLayer::new(backend.clone(), reserved, max_gsi)),
            Arc::new(NoRemap),
        );
        Self {
            backend,
            hierarchy,
            vtd: None,
            reserved,
            max_gsi,
        }
    }

    /// A hierarchy whose remap layer is a VT-d unit reading its tables from `mem`, wired as
    /// the vmm wires it.
    pub fn vtd(mem: GuestMemoryMmap, config: VtdConfig) -> Self {
        let backend = Arc::new(RecordingBackend::default());
        let layer = Arc::new(KvmVectorLayer::new(
            backend.clone(),
            RESERVED_GSIS,
            KVM_MAX_GSI,
        ));
        let unit = VtdUnit::new(mem, layer.clone(), config);
        let hierarchy = InterruptHierarchy::new(layer, unit.clone());
        unit.set_hierarchy(Arc::downgrade(&hierarchy));
        Self {
            backend,
            hierarchy,
            vtd: Some(unit),
            reserved: RESERVED_GSIS,
            max_gsi: KVM_MAX_GSI,
        }
    }

    /// Messages sent through the `KVM_SIGNAL_MSI` slow path so far.
    pub fn signalled(&self) -> usize {
        self.backend.signalled.lock().unwrap().len()
    }

    /// Checks the vector layer's books against `domains` (all domains holding vectors):
    /// routes <= allocated; deliveries + drops <= fires; every GSI in the dynamic range and
    /// held by one vector; one irqfd per allocated GSI. Returns the allocated GSIs.
    pub fn check_books(&self, domains: &[Arc<DeviceDomain>]) -> BTreeSet<u32> {
        let stats = self.hierarchy.vector_layer().stats();
        assert!(stats.routes <= stats.allocated, "{stats:?}");
        let mut gsis = BTreeSet::new();
        for d in domains {
            for v in d.snapshot() {
                assert!(
                    v.deliveries + v.dropped <= v.fires,
                    "{}[{}]: more deliveries than fires: {v:?}",
                    d.name(),
                    v.index
                );
                if let Some(g) = v.gsi {
                    assert!(gsis.insert(g), "GSI {g} used twice");
                    assert!(
                        (self.reserved..self.max_gsi).contains(&g)
                            || d.kind() == interrupt::DomainKind::Ioapic,
                        "GSI {g} outside the dynamic range ({})",
                        d.name()
                    );
                }
            }
        }
        assert_eq!(
            gsis.len(),
            stats.allocated,
            "allocated vectors vs domain GSIs"
        );
        let irqfds = self.backend.irqfds.lock().unwrap().clone();
        let irqfd_set: BTreeSet<u32> = irqfds.iter().copied().collect();
        assert_eq!(irqfds.len(), irqfd_set.len(), "duplicate irqfd binding");
        assert_eq!(irqfd_set, gsis, "irqfds vs allocated GSIs");
        gsis
    }

    /// After every device went away: no vector, route or irqfd is left.
    pub fn check_released(&self) {
        let stats = self.hierarchy.vector_layer().stats();
        assert_eq!(
            stats.allocated, 0,
            "vectors leaked after the devices went away"
        );
        assert_eq!(stats.routes, 0);
        assert!(self.backend.irqfds.lock().unwrap().is_empty());
    }
}

/// ECAM offset of register `reg` of function `bdf`.
pub fn ecam_offset(bdf: (u8, u8, u8), reg: usize) -> u64 {
    (u64::from(bdf.0) << 20) | (u64::from(bdf.1) << 15) | (u64::from(bdf.2) << 12) | reg as u64
}

/// The CF8 address-register value selecting dword `reg` of function `bdf`.
pub fn cf8_address(bdf: (u8, u8, u8), reg: u8) -> u32 {
    0x8000_0000
        | (u32::from(bdf.0) << 16)
        | (u32::from(bdf.1 & 0x1f) << 11)
        | (u32::from(bdf.2 & 7) << 8)
        | u32::from(reg & 0xfc)
}

/// Walks the capability list as a guest would (`dword` reads configuration dwords) and
/// returns the offset of capability `id`, if listed. Stops after 48 entries (a loop).
pub fn find_capability(mut dword: impl FnMut(usize) -> u32, id: u8) -> Option<usize> {
    let mut ptr = ((dword(0x34) & 0xfc) as u8) as usize;
    for _ in 0..48 {
        if ptr == 0 {
            return None;
        }
        let hdr = dword(ptr);
        if hdr & 0xff == u32::from(id) {
            return Some(ptr);
        }
        ptr = ((hdr >> 8) & 0xfc) as usize;
    }
    None
}

/// PCI capability IDs the targets look for.
pub mod cap_id {
    /// MSI.
    pub const MSI: u8 = 0x05;
    /// MSI-X.
    pub const MSIX: u8 = 0x11;
}

/// Threads of this process (device workers must be joined when a device is dropped).
pub fn threads() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// CRC-32C (Castagnoli, reflected), bit by bit: the reference the DSA's CRC results are
/// compared with (independent of the crate the device uses).
pub fn crc32c(seed: u32, data: &[u8]) -> u32 {
    let mut c = !seed;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82F6_3B78
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// A raw disk image of `sectors` sectors in a memfd, byte i = i % 251 (for the virtio-blk
/// targets: no file system is touched).
pub fn memfd_image(sectors: u64, readonly: bool) -> (virtio::blk::DiskImage, std::fs::File) {
    use std::io::Write;
    use std::os::fd::FromRawFd;
    // SAFETY: memfd_create with a valid C string.
    let fd = unsafe { libc::memfd_create(c"fuzz-disk".as_ptr(), 0) };
    assert!(fd >= 0, "memfd_create");
    // SAFETY: a fresh descriptor owned by this File.
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    let data: Vec<u8> = (0..sectors * 512).map(|i| (i % 251) as u8).collect();
    f.write_all(&data).expect("memfd write");
    let disk = virtio::blk::DiskImage::from_file(
        f.try_clone().expect("dup"),
        std::path::Path::new("fuzz.img"),
        readonly,
    )
    .expect("image");
    (disk, f)
}
