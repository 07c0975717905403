//! The host side: checking a device is ready for pass-through, opening it through VFIO
//! (type1v2 container, group, device fd) with the rust-vmm `vfio-ioctls` crate, DMA mapping
//! of guest RAM, region access and mmap, interrupt ioctls, reset.
//!
//! `vfio-ioctls` 0.10 can only set a whole range of vectors from 0 (`enable_irq`), so
//! `VFIO_DEVICE_SET_IRQS` for one vector (start = i, count = 1) is issued here directly.

use std::collections::HashSet;
use std::fmt;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use log::{info, warn};
use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_FLAGS_RESET, VFIO_IRQ_INFO_NORESIZE, VFIO_IRQ_SET_ACTION_TRIGGER,
    VFIO_IRQ_SET_ACTION_UNMASK, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE,
    VFIO_PCI_CONFIG_REGION_INDEX, VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ,
    VFIO_REGION_INFO_FLAG_WRITE,
};
use vfio_ioctls::{VfioContainer, VfioDevice, VfioRegionInfoCap};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::bars::RegionInfo;
use crate::chip::{IrqHost, MSIX_INDEX, MSI_INDEX};
use crate::config::ConfigIo;

const VFIO_TYPE: u64 = b';' as u64;
const VFIO_BASE: u64 = 100;
/// `VFIO_DEVICE_SET_IRQS` (`_IO(';', 110)`).
pub const VFIO_DEVICE_SET_IRQS: u64 = (VFIO_TYPE << 8) | (VFIO_BASE + 10);
/// `VFIO_DEVICE_RESET` (`_IO(';', 111)`).
pub const VFIO_DEVICE_RESET: u64 = (VFIO_TYPE << 8) | (VFIO_BASE + 11);
/// `VFIO_GROUP_UNSET_CONTAINER` (`_IO(';', 105)`).
pub const VFIO_GROUP_UNSET_CONTAINER: u64 = (VFIO_TYPE << 8) | (VFIO_BASE + 5);
/// `VFIO_IOMMU_UNMAP_DMA` (`_IO(';', 114)`).
pub const VFIO_IOMMU_UNMAP_DMA: u64 = (VFIO_TYPE << 8) | (VFIO_BASE + 14);

/// A PCI address on the host: domain, bus, device, function (`DDDD:BB:DD.F`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Bdf {
    /// PCI domain (segment).
    pub domain: u16,
    /// Bus.
    pub bus: u8,
    /// Device (0..=31).
    pub device: u8,
    /// Function (0..=7).
    pub function: u8,
}

impl FromStr for Bdf {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let (dom, rest) = s.split_once(':').ok_or(())?;
        let (bus, rest) = rest.split_once(':').ok_or(())?;
        let (dev, func) = rest.split_once('.').ok_or(())?;
        let hex = |t: &str, n: usize| {
            (t.len() == n && t.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| u32::from_str_radix(t, 16).ok())
                .flatten()
                .ok_or(())
        };
        let (domain, bus, device, function) =
            (hex(dom, 4)?, hex(bus, 2)?, hex(dev, 2)?, hex(func, 1)?);
        if device > 31 || function > 7 {
            return Err(());
        }
        Ok(Bdf {
            domain: domain as u16,
            bus: bus as u8,
            device: device as u8,
            function: function as u8,
        })
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

impl Bdf {
    /// The device's sysfs directory under `root` (normally `/sys/bus/pci/devices`).
    pub fn sysfs(&self, root: &Path) -> PathBuf {
        root.join(self.to_string())
    }
}

/// Why a device cannot be passed through (each one line, naming the device).
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The same device was given twice.
    #[error("vfio {0}: the same device is given twice")]
    Duplicate(Bdf),
    /// No such PCI device.
    #[error("vfio {0}: no such PCI device on this host ({1} is missing)")]
    NoDevice(Bdf, PathBuf),
    /// Not bound to vfio-pci.
    #[error("vfio {bdf}: bound to {driver}, not vfio-pci (unbind it, write vfio-pci to its driver_override and the address to /sys/bus/pci/drivers_probe)")]
    NotVfio {
        /// Device.
        bdf: Bdf,
        /// Its driver ("no driver" when unbound).
        driver: String,
    },
    /// No IOMMU group: the host has no (enabled) IOMMU.
    #[error("vfio {0}: the device has no IOMMU group: the host's IOMMU is off (boot with intel_iommu=on / amd_iommu=on) or absent")]
    NoIommu(Bdf),
    /// VFIO is not available.
    #[error("vfio {0}: /dev/vfio/vfio is missing: load the vfio-pci module")]
    NoVfio(Bdf),
    /// Another device of the group is bound to a host driver.
    #[error("vfio {bdf}: IOMMU group {group} is not viable: {other} in the same group is bound to {driver} (bind every device of the group to vfio-pci)")]
    NotViable {
        /// Device.
        bdf: Bdf,
        /// Group number.
        group: u32,
        /// The offending device.
        other: String,
        /// Its driver.
        driver: String,
    },
    /// The group or container cannot be opened.
    #[error("vfio {bdf}: cannot open {path}: {source}")]
    Open {
        /// Device.
        bdf: Bdf,
        /// Path.
        path: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// VFIO refused the device (group status, container, device fd, device info).
    #[error("vfio {0}: {1}")]
    Vfio(Bdf, String),
    /// The VFIO container could not be set up.
    #[error("vfio: cannot open the VFIO container /dev/vfio/vfio: {0}")]
    Container(String),
    /// Guest RAM could not be mapped for DMA.
    #[error("vfio: mapping guest RAM for device DMA (VFIO_IOMMU_MAP_DMA) failed: {0} (is RLIMIT_MEMLOCK large enough?)")]
    DmaMap(String),
    /// A BAR could not be mmapped.
    #[error("vfio {bdf}: mmap of BAR {bar}: {source}")]
    Mmap {
        /// Device.
        bdf: Bdf,
        /// BAR.
        bar: usize,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

fn link_name(p: &Path) -> Option<String> {
    std::fs::read_link(p)
        .ok()?
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
}

/// Checks, without claiming anything, that every device can be passed through: given once,
/// present, bound to vfio-pci, in an IOMMU group whose other members are bound to vfio-pci
/// (or to no driver, pci-stub, or pcieport), and that `/dev/vfio/vfio` and the group file can
/// be opened. `sysfs` is normally `/sys`, `dev` normally `/dev`.
pub fn preflight(bdfs: &[Bdf], sysfs: &Path, dev: &Path) -> Result<(), HostError> {
    let mut seen = HashSet::new();
    for &bdf in bdfs {
        if !seen.insert(bdf) {
            return Err(HostError::Duplicate(bdf));
        }
    }
    let devices = sysfs.join("bus/pci/devices");
    for &bdf in bdfs {
        let path = bdf.sysfs(&devices);
        if !path.exists() {
            return Err(HostError::NoDevice(bdf, path));
        }
        let driver = link_name(&path.join("driver")).unwrap_or_else(|| "no driver".into());
        if driver != "vfio-pci" {
            return Err(HostError::NotVfio { bdf, driver });
        }
        let group: u32 = link_name(&path.join("iommu_group"))
            .and_then(|g| g.parse().ok())
            .ok_or(HostError::NoIommu(bdf))?;
        let members = sysfs.join(format!("kernel/iommu_groups/{group}/devices"));
        if let Ok(entries) = std::fs::read_dir(&members) {
            for e in entries.flatten() {
                let other = e.file_name().to_string_lossy().into_owned();
                let Some(d) = link_name(&e.path().join("driver")) else {
                    continue;
                };
                if !matches!(d.as_str(), "vfio-pci" | "pci-stub" | "pcieport") {
                    return Err(HostError::NotViable {
                        bdf,
                        group,
                        other,
                        driver: d,
                    });
                }
            }
        }
        let container = dev.join("vfio/vfio");
        if !container.exists() {
            return Err(HostError::NoVfio(bdf));
        }
        for p in [container, dev.join(format!("vfio/{group}"))] {
            // Opening and closing claims nothing; it shows permission problems now.
            if let Err(source) = OpenOptions::new().read(true).write(true).open(&p) {
                return Err(HostError::Open {
                    bdf,
                    path: p.display().to_string(),
                    source,
                });
            }
        }
    }
    Ok(())
}

/// The VFIO container shared by all pass-through devices of the VM (one IOMMU domain).
pub struct Container {
    inner: Arc<VfioContainer>,
    mapped: std::sync::Mutex<Vec<(u64, u64)>>,
}

impl Container {
    /// Opens `/dev/vfio/vfio` (type1v2 is set when the first group joins).
    pub fn new() -> Result<Self, HostError> {
        let inner = VfioContainer::new(None).map_err(|e| HostError::Container(e.to_string()))?;
        Ok(Self {
            inner: Arc::new(inner),
            mapped: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Maps every region of `mem` for device DMA at IOVA = guest physical address.
    pub fn map_guest_memory<M: GuestMemoryBackend>(&self, mem: &M) -> Result<(), HostError> {
        for r in mem.iter() {
            let (gpa, len) = (r.start_addr().0, r.len());
            let host = r
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(|e| HostError::DmaMap(e.to_string()))?;
            // SAFETY: the region is guest RAM, mapped for the VM's whole life (the VMM keeps
            // it until exit, and unmaps DMA in `Drop` first); guest memory is only accessed
            // through volatile accessors, which is what the device's DMA requires.
            unsafe { self.inner.vfio_dma_map(gpa, len as usize, host) }
                .map_err(|e| HostError::DmaMap(e.to_string()))?;
            self.mapped
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((gpa, len));
        }
        Ok(())
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        for (gpa, len) in self
            .mapped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            if let Err(e) = self.inner.vfio_dma_unmap(gpa, len as usize) {
                warn!("vfio: unmapping DMA at {gpa:#x}: {e}");
            }
        }
    }
}

/// What a pass-through function needs from its host device: config space, BAR regions,
/// interrupts and reset. [`HostDevice`] is VFIO's; [`crate::fake::FakeHost`] stands in for a
/// device in tests and fuzzing.
pub trait HostAccess: ConfigIo + IrqHost + Send + Sync {
    /// The device's address.
    fn bdf(&self) -> Bdf;
    /// The 256 bytes of conventional config space.
    fn read_config_space(&self) -> Result<[u8; 256], HostError>;
    /// Region info of BAR `bar`.
    fn region(&self, bar: u32) -> RegionInfo;
    /// Reads from region `index` at `offset`; false on failure or outside the region.
    fn region_read(&self, index: u32, offset: u64, data: &mut [u8]) -> bool;
    /// Writes to region `index` at `offset`; false on failure or outside the region.
    fn region_write(&self, index: u32, offset: u64, data: &[u8]) -> bool;
    /// Maps `size` bytes of BAR `bar` at `offset` (shared, read/write; the caller unmaps).
    fn mmap(&self, bar: u32, offset: u64, size: u64) -> Result<*mut u8, HostError>;
    /// Vector count of interrupt `index` and whether MSI-X can grow while enabled.
    fn irq_info(&self, index: u32) -> (u32, bool);
    /// Resets the device; false when it has no reset method.
    fn reset(&self) -> bool;
}

/// An opened pass-through device.
pub struct HostDevice {
    bdf: Bdf,
    device: VfioDevice,
    fd: RawFd,
}

impl HostDevice {
    /// Opens `bdf` in `container` and resets it.
    pub fn open(bdf: Bdf, container: &Container, sysfs: &Path) -> Result<Self, HostError> {
        let path = bdf.sysfs(&sysfs.join("bus/pci/devices"));
        let device = VfioDevice::new(&path, container.inner.clone(), false)
            .map_err(|e| HostError::Vfio(bdf, e.to_string()))?;
        let fd = device.as_raw_fd();
        let d = Self { bdf, device, fd };
        if !d.reset() {
            info!("vfio {bdf}: the device has no reset method");
        }
        Ok(d)
    }

    /// The device's address.
    pub fn bdf(&self) -> Bdf {
        self.bdf
    }

    /// `VFIO_DEVICE_RESET` when the device supports it; false otherwise.
    pub fn reset(&self) -> bool {
        let flags = self.device_flags();
        if flags & VFIO_DEVICE_FLAGS_RESET == 0 {
            return false;
        }
        // SAFETY: an argument-less ioctl on our device fd.
        let r = unsafe { libc::ioctl(self.fd, VFIO_DEVICE_RESET as _) };
        if r < 0 {
            warn!("vfio {}: reset: {}", self.bdf, io::Error::last_os_error());
        }
        r >= 0
    }

    fn device_flags(&self) -> u32 {
        // vfio-ioctls keeps the device info flags private; the reset flag is all we need,
        // and VfioDevice::reset checks it. Ask the kernel.
        let mut info = vfio_bindings::bindings::vfio::vfio_device_info {
            argsz: std::mem::size_of::<vfio_bindings::bindings::vfio::vfio_device_info>() as u32,
            ..Default::default()
        };
        const GET_INFO: u64 = (VFIO_TYPE << 8) | (VFIO_BASE + 7);
        // SAFETY: the kernel writes at most argsz bytes into `info`, which we own.
        let r = unsafe { libc::ioctl(self.fd, GET_INFO as _, &mut info) };
        if r < 0 {
            0
        } else {
            info.flags
        }
    }

    /// The host's vector count and whether it can add MSI-X vectors while enabled
    /// (no `VFIO_IRQ_INFO_NORESIZE`), for `index`.
    pub fn irq_info(&self, index: u32) -> (u32, bool) {
        match self.device.get_irq_info(index) {
            Some(i) => (i.count, i.flags & VFIO_IRQ_INFO_NORESIZE == 0),
            None => (0, false),
        }
    }

    /// Region info of BAR `bar`.
    pub fn region(&self, bar: u32) -> RegionInfo {
        let flags = self.device.get_region_flags(bar);
        if flags & VFIO_REGION_INFO_FLAG_READ == 0 {
            return RegionInfo::default();
        }
        let mut r = RegionInfo {
            size: self.device.get_region_size(bar),
            mmap: flags & VFIO_REGION_INFO_FLAG_MMAP != 0,
            ..Default::default()
        };
        for cap in self.device.get_region_caps(bar) {
            match cap {
                VfioRegionInfoCap::SparseMmap(s) => {
                    r.sparse = Some(s.areas.iter().map(|a| (a.offset, a.size)).collect())
                }
                VfioRegionInfoCap::MsixMappable => r.msix_mappable = true,
                _ => {}
            }
        }
        r
    }

    /// Reads `data.len()` bytes of region `index` at `offset`; false on failure or when
    /// the access leaves the region.
    pub fn region_read(&self, index: u32, offset: u64, data: &mut [u8]) -> bool {
        let size = self.device.get_region_size(index);
        if offset
            .checked_add(data.len() as u64)
            .is_none_or(|e| e > size)
        {
            return false;
        }
        let at = self.device.get_region_offset(index) + offset;
        // SAFETY: reads into our own buffer of data.len() bytes.
        let n = unsafe { libc::pread64(self.fd, data.as_mut_ptr().cast(), data.len(), at as i64) };
        n == data.len() as isize
    }

    /// Writes `data` to region `index` at `offset`; false on failure.
    pub fn region_write(&self, index: u32, offset: u64, data: &[u8]) -> bool {
        let size = self.device.get_region_size(index);
        let writable = self.device.get_region_flags(index) & VFIO_REGION_INFO_FLAG_WRITE != 0;
        if !writable
            || offset
                .checked_add(data.len() as u64)
                .is_none_or(|e| e > size)
        {
            return false;
        }
        let at = self.device.get_region_offset(index) + offset;
        // SAFETY: writes from our own buffer of data.len() bytes.
        let n = unsafe { libc::pwrite64(self.fd, data.as_ptr().cast(), data.len(), at as i64) };
        n == data.len() as isize
    }

    /// The 256 bytes of conventional config space.
    pub fn read_config_space(&self) -> Result<[u8; 256], HostError> {
        let mut raw = [0u8; 256];
        if !self.region_read(VFIO_PCI_CONFIG_REGION_INDEX, 0, &mut raw) {
            return Err(HostError::Vfio(
                self.bdf,
                format!("cannot read config space: {}", io::Error::last_os_error()),
            ));
        }
        Ok(raw)
    }

    /// mmaps `size` bytes of BAR `bar` at `offset` (shared, read/write).
    pub fn mmap(&self, bar: u32, offset: u64, size: u64) -> Result<*mut u8, HostError> {
        let at = self.device.get_region_offset(bar) + offset;
        // SAFETY: a fresh shared mapping of the device fd; nothing else is placed there.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.fd,
                at as i64,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(HostError::Mmap {
                bdf: self.bdf,
                bar: bar as usize,
                source: io::Error::last_os_error(),
            });
        }
        Ok(p.cast())
    }

    fn set_irqs(&self, flags: u32, index: u32, start: u32, fds: &[RawFd]) -> io::Result<()> {
        // struct vfio_irq_set { argsz, flags, index, start, count; u8 data[] }.
        let mut buf: Vec<u32> = vec![0; 5 + fds.len()];
        buf[0] = (20 + 4 * fds.len()) as u32;
        buf[1] = flags;
        buf[2] = index;
        buf[3] = start;
        buf[4] = fds.len() as u32;
        for (d, &fd) in buf[5..].iter_mut().zip(fds) {
            *d = fd as u32;
        }
        // SAFETY: `buf` holds a complete vfio_irq_set of argsz bytes; the kernel only reads it.
        let r = unsafe { libc::ioctl(self.fd, VFIO_DEVICE_SET_IRQS as _, buf.as_ptr()) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl HostAccess for HostDevice {
    fn bdf(&self) -> Bdf {
        HostDevice::bdf(self)
    }
    fn read_config_space(&self) -> Result<[u8; 256], HostError> {
        HostDevice::read_config_space(self)
    }
    fn region(&self, bar: u32) -> RegionInfo {
        HostDevice::region(self, bar)
    }
    fn region_read(&self, index: u32, offset: u64, data: &mut [u8]) -> bool {
        HostDevice::region_read(self, index, offset, data)
    }
    fn region_write(&self, index: u32, offset: u64, data: &[u8]) -> bool {
        HostDevice::region_write(self, index, offset, data)
    }
    fn mmap(&self, bar: u32, offset: u64, size: u64) -> Result<*mut u8, HostError> {
        HostDevice::mmap(self, bar, offset, size)
    }
    fn irq_info(&self, index: u32) -> (u32, bool) {
        HostDevice::irq_info(self, index)
    }
    fn reset(&self) -> bool {
        HostDevice::reset(self)
    }
}

impl IrqHost for HostDevice {
    fn set_triggers(&self, index: u32, start: u32, fds: &[RawFd]) -> io::Result<()> {
        self.set_irqs(
            VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
            index,
            start,
            fds,
        )
    }

    fn set_unmask(&self, index: u32, fd: RawFd) -> io::Result<()> {
        self.set_irqs(
            VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_UNMASK,
            index,
            0,
            &[fd],
        )
    }

    fn disable(&self, index: u32) -> io::Result<()> {
        // count = 0 with DATA_NONE: the whole index off.
        let buf = [
            20u32,
            VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
            index,
            0,
            0,
        ];
        // SAFETY: a complete vfio_irq_set header without data.
        let r = unsafe { libc::ioctl(self.fd, VFIO_DEVICE_SET_IRQS as _, buf.as_ptr()) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn signal(&self, fd: RawFd) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: an 8-byte write to an eventfd the caller vouches for.
        unsafe { libc::write(fd, one.as_ptr().cast(), 8) };
    }
}

impl ConfigIo for HostDevice {
    fn read(&self, offset: usize, data: &mut [u8]) -> bool {
        self.region_read(VFIO_PCI_CONFIG_REGION_INDEX, offset as u64, data)
    }
    fn write(&self, offset: usize, data: &[u8]) -> bool {
        self.region_write(VFIO_PCI_CONFIG_REGION_INDEX, offset as u64, data)
    }
}

/// Both interrupt indexes, for describing the host's capabilities in logs.
pub fn irq_summary(d: &dyn HostAccess) -> String {
    let (msi, _) = d.irq_info(MSI_INDEX);
    let (msix, dynamic) = d.irq_info(MSIX_INDEX);
    format!(
        "MSI {msi} vectors, MSI-X {msix} vectors ({})",
        if dynamic { "dynamic" } else { "NORESIZE" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bdf_parses_the_canonical_form_only() {
        let b: Bdf = "0000:00:03.0".parse().unwrap();
        assert_eq!((b.domain, b.bus, b.device, b.function), (0, 0, 3, 0));
        assert_eq!(b.to_string(), "0000:00:03.0");
        let b: Bdf = "00ab:ff:1f.7".parse().unwrap();
        assert_eq!(b.to_string(), "00ab:ff:1f.7");
        for bad in [
            "00:03.0",
            "0000:00:20.0",
            "0000:00:03.8",
            "0000:0:03.0",
            "x000:00:03.0",
            "0000:00:03",
            "+000:00:03.0",
        ] {
            assert!(bad.parse::<Bdf>().is_err(), "{bad}");
        }
    }

    fn fake_sysfs(driver: Option<&str>, group: Option<u32>) -> tempdir::Dir {
        let d = tempdir::Dir::new();
        let dev = d.0.join("sys/bus/pci/devices/0000:00:03.0");
        std::fs::create_dir_all(&dev).unwrap();
        if let Some(drv) = driver {
            let p = d.0.join("sys/bus/pci/drivers").join(drv);
            std::fs::create_dir_all(&p).unwrap();
            std::os::unix::fs::symlink(&p, dev.join("driver")).unwrap();
        }
        if let Some(g) = group {
            let gp = d.0.join(format!("sys/kernel/iommu_groups/{g}"));
            std::fs::create_dir_all(gp.join("devices")).unwrap();
            std::os::unix::fs::symlink(&gp, dev.join("iommu_group")).unwrap();
            std::os::unix::fs::symlink(&dev, gp.join("devices/0000:00:03.0")).unwrap();
        }
        std::fs::create_dir_all(d.0.join("dev/vfio")).unwrap();
        d
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Self {
                use std::sync::atomic::{AtomicU32, Ordering};
                static N: AtomicU32 = AtomicU32::new(0);
                let p = std::env::temp_dir().join(format!(
                    "vfio-test-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::create_dir_all(&p).unwrap();
                Self(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    fn check(d: &tempdir::Dir, bdfs: &[&str]) -> Result<(), HostError> {
        let b: Vec<Bdf> = bdfs.iter().map(|s| s.parse().unwrap()).collect();
        preflight(&b, &d.0.join("sys"), &d.0.join("dev"))
    }

    #[test]
    fn preflight_names_each_problem() {
        let d = fake_sysfs(Some("nvme"), Some(5));
        let e = check(&d, &["0000:00:04.0"]).unwrap_err();
        assert!(matches!(e, HostError::NoDevice(..)), "{e}");
        let e = check(&d, &["0000:00:03.0"]).unwrap_err();
        assert!(e.to_string().contains("bound to nvme, not vfio-pci"), "{e}");
        let e = check(&d, &["0000:00:03.0", "0000:00:03.0"]).unwrap_err();
        assert!(matches!(e, HostError::Duplicate(_)), "{e}");
        let d = fake_sysfs(None, Some(5));
        let e = check(&d, &["0000:00:03.0"]).unwrap_err();
        assert!(e.to_string().contains("bound to no driver"), "{e}");
        let d = fake_sysfs(Some("vfio-pci"), None);
        let e = check(&d, &["0000:00:03.0"]).unwrap_err();
        assert!(matches!(e, HostError::NoIommu(_)), "{e}");
        let d = fake_sysfs(Some("vfio-pci"), Some(5));
        let e = check(&d, &["0000:00:03.0"]).unwrap_err();
        assert!(matches!(e, HostError::NoVfio(_)), "{e}");
        std::fs::write(d.0.join("dev/vfio/vfio"), b"").unwrap();
        let e = check(&d, &["0000:00:03.0"]).unwrap_err();
        assert!(e.to_string().contains("cannot open"), "{e}");
        std::fs::write(d.0.join("dev/vfio/5"), b"").unwrap();
        check(&d, &["0000:00:03.0"]).unwrap();
    }

    #[test]
    fn preflight_reports_a_group_that_is_not_viable() {
        let d = fake_sysfs(Some("vfio-pci"), Some(5));
        let other = d.0.join("sys/bus/pci/devices/0000:00:03.1");
        std::fs::create_dir_all(&other).unwrap();
        let drv = d.0.join("sys/bus/pci/drivers/e1000e");
        std::fs::create_dir_all(&drv).unwrap();
        std::os::unix::fs::symlink(&drv, other.join("driver")).unwrap();
        std::os::unix::fs::symlink(
            &other,
            d.0.join("sys/kernel/iommu_groups/5/devices/0000:00:03.1"),
        )
        .unwrap();
        let e = check(&d, &["0000:00:03.0"]).unwrap_err();
        assert!(
            e.to_string()
                .contains("group 5 is not viable: 0000:00:03.1")
                && e.to_string().contains("e1000e"),
            "{e}"
        );
    }
}
