//! The root bus (segment 0, bus 0) and its three access paths: the legacy configuration
//! mechanism #1 ports (CF8/CFC), ECAM (memory-mapped configuration), and BAR decoding in the
//! PCI MMIO windows.

use std::sync::{Arc, Mutex, MutexGuard};

use log::debug;
use vm_allocator::{AddressAllocator, AllocPolicy};
use vm_device::bus::{MmioAddress, PioAddress};
use vm_device::{DeviceMmio, DevicePio};

use crate::config::BarKind;
use crate::device::PciDevice;
use crate::host_bridge::HostBridge;
use crate::Error;

/// Number of device slots on the bus.
pub const NUM_SLOTS: usize = 32;
/// First port of configuration mechanism #1.
pub const CONFIG_IO_PORT: u16 = 0xcf8;
/// Size of the CF8/CFC port range.
pub const CONFIG_IO_SIZE: u16 = 8;

/// A device on the bus.
pub type SharedDevice = Arc<Mutex<dyn PciDevice>>;

fn lock(d: &SharedDevice) -> MutexGuard<'_, dyn PciDevice + 'static> {
    d.lock().unwrap_or_else(|e| e.into_inner())
}

/// Bus 0 of segment 0. Only function 0 of each slot is populated.
pub struct PciRoot {
    slots: Vec<Option<SharedDevice>>,
}

impl Default for PciRoot {
    fn default() -> Self {
        Self::new()
    }
}

impl PciRoot {
    /// A bus with the host bridge at 00:00.0.
    pub fn new() -> Self {
        let mut slots: Vec<Option<SharedDevice>> = vec![None; NUM_SLOTS];
        slots[0] = Some(Arc::new(Mutex::new(HostBridge::default())));
        Self { slots }
    }

    /// The slot [`PciRoot::add_device`] will use next, if any is free.
    pub fn next_free_slot(&self) -> Option<u8> {
        self.slots.iter().position(Option::is_none).map(|s| s as u8)
    }

    /// Plugs `device` into the first free slot; returns the slot (device number).
    pub fn add_device(&mut self, device: SharedDevice) -> Result<u8, Error> {
        let slot = self
            .slots
            .iter()
            .position(Option::is_none)
            .ok_or(Error::NoFreeSlot)?;
        self.slots[slot] = Some(device);
        Ok(slot as u8)
    }

    /// The device in `slot`.
    pub fn device(&self, slot: u8) -> Option<&SharedDevice> {
        self.slots.get(usize::from(slot)).and_then(Option::as_ref)
    }

    fn function(&self, bus: u8, dev: u8, func: u8) -> Option<&SharedDevice> {
        if bus != 0 || func != 0 {
            return None;
        }
        self.device(dev)
    }

    /// Reads `data.len()` (1, 2 or 4) bytes of configuration space at `offset`; absent
    /// functions and malformed accesses read as all ones.
    pub fn config_read(&self, bus: u8, dev: u8, func: u8, offset: usize, data: &mut [u8]) {
        data.fill(0xff);
        if !matches!(data.len(), 1 | 2 | 4) || !offset.is_multiple_of(data.len()) {
            return;
        }
        if let Some(d) = self.function(bus, dev, func) {
            let dword = lock(d).read_config(offset & !3).to_le_bytes();
            let start = offset & 3;
            data.copy_from_slice(&dword[start..start + data.len()]);
        }
    }

    /// Writes `data` (1, 2 or 4 bytes, naturally aligned) to configuration space.
    pub fn config_write(&self, bus: u8, dev: u8, func: u8, offset: usize, data: &[u8]) {
        if !matches!(data.len(), 1 | 2 | 4) || !offset.is_multiple_of(data.len()) {
            return;
        }
        if let Some(d) = self.function(bus, dev, func) {
            lock(d).write_config(offset, data);
        }
    }

    /// Places every BAR of every device: 64-bit memory BARs in `mmio64`, 32-bit ones in
    /// `mmio32`, naturally aligned, and enables decoding as firmware would.
    pub fn allocate_bars(
        &self,
        mmio32: &mut AddressAllocator,
        mmio64: &mut AddressAllocator,
    ) -> Result<(), Error> {
        for d in self.slots.iter().flatten() {
            let mut dev = lock(d);
            let name = dev.name().to_string();
            let mut any_mem = false;
            for i in 0..6 {
                let Some(bar) = dev.config().bar(i) else {
                    continue;
                };
                let alloc = match bar.kind {
                    BarKind::Memory64 => &mut *mmio64,
                    BarKind::Memory32 => &mut *mmio32,
                    BarKind::Io => continue, // No I/O BARs are assigned by the VMM.
                };
                let range = alloc
                    .allocate(bar.size, bar.size, AllocPolicy::FirstMatch)
                    .map_err(|source| Error::BarAllocation {
                        device: name.clone(),
                        bar: i,
                        size: bar.size,
                        source,
                    })?;
                debug!(
                    "pci: {name} BAR{i} at {:#x} size {:#x}",
                    range.start(),
                    bar.size
                );
                dev.config_mut().set_bar_address(i, range.start());
                any_mem = true;
            }
            if any_mem {
                let cfg = dev.config_mut();
                let cmd = cfg.u16_at(crate::config::reg::COMMAND) | crate::config::command::MEMORY;
                cfg.set_u16(crate::config::reg::COMMAND, cmd);
            }
        }
        Ok(())
    }

    /// Finds the device and BAR decoding `addr` (memory space).
    pub fn find_bar(&self, addr: u64) -> Option<(SharedDevice, usize, u64)> {
        for d in self.slots.iter().flatten() {
            let dev = lock(d);
            for i in 0..6 {
                let Some(bar) = dev.config().bar(i) else {
                    continue;
                };
                if bar.kind == BarKind::Io {
                    continue;
                }
                let Some(base) = dev.config().bar_address(i) else {
                    continue;
                };
                if addr >= base && addr - base < bar.size {
                    return Some((d.clone(), i, addr - base));
                }
            }
        }
        None
    }
}

/// Configuration mechanism #1: address register at 0xCF8, data window at 0xCFC..0xCFF.
pub struct PciConfigIo {
    root: Arc<PciRoot>,
    address: Mutex<u32>,
}

impl PciConfigIo {
    /// Port device for `root`.
    pub fn new(root: Arc<PciRoot>) -> Self {
        Self {
            root,
            address: Mutex::new(0),
        }
    }

    /// Decodes the address register: (bus, dev, func, register offset) if enabled.
    fn target(&self) -> Option<(u8, u8, u8, usize)> {
        let a = *self.address.lock().unwrap_or_else(|e| e.into_inner());
        if a & 0x8000_0000 == 0 {
            return None;
        }
        Some((
            (a >> 16) as u8,
            ((a >> 11) & 0x1f) as u8,
            ((a >> 8) & 7) as u8,
            (a & 0xfc) as usize,
        ))
    }
}

impl DevicePio for PciConfigIo {
    fn pio_read(&self, _base: PioAddress, offset: u16, data: &mut [u8]) {
        data.fill(0xff);
        match offset {
            0 if data.len() == 4 => {
                let a = *self.address.lock().unwrap_or_else(|e| e.into_inner());
                data.copy_from_slice(&a.to_le_bytes());
            }
            4..=7 => {
                let byte = usize::from(offset - 4);
                if byte + data.len() > 4 {
                    return;
                }
                if let Some((b, d, f, reg)) = self.target() {
                    self.root.config_read(b, d, f, reg + byte, data);
                }
            }
            _ => {}
        }
    }

    fn pio_write(&self, _base: PioAddress, offset: u16, data: &[u8]) {
        match offset {
            0 if data.len() == 4 => {
                let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
                *self.address.lock().unwrap_or_else(|e| e.into_inner()) = v & 0x80ff_fffc;
            }
            4..=7 => {
                let byte = usize::from(offset - 4);
                if byte + data.len() > 4 {
                    return;
                }
                if let Some((b, d, f, reg)) = self.target() {
                    self.root.config_write(b, d, f, reg + byte, data);
                }
            }
            _ => {}
        }
    }
}

/// ECAM: one 4 KiB configuration page per function at `base + (bus << 20 | dev << 15 | fn << 12)`.
pub struct PciEcam {
    root: Arc<PciRoot>,
}

impl PciEcam {
    /// ECAM window for `root`.
    pub fn new(root: Arc<PciRoot>) -> Self {
        Self { root }
    }
}

fn ecam_decode(offset: u64) -> (u8, u8, u8, usize) {
    (
        ((offset >> 20) & 0xff) as u8,
        ((offset >> 15) & 0x1f) as u8,
        ((offset >> 12) & 7) as u8,
        (offset & 0xfff) as usize,
    )
}

impl DeviceMmio for PciEcam {
    fn mmio_read(&self, _base: MmioAddress, offset: u64, data: &mut [u8]) {
        let (b, d, f, reg) = ecam_decode(offset);
        if reg >= crate::config::CONFIG_SPACE_SIZE {
            // No extended capabilities: the extended space reads as zero.
            data.fill(0);
            return;
        }
        self.root.config_read(b, d, f, reg, data);
    }

    fn mmio_write(&self, _base: MmioAddress, offset: u64, data: &[u8]) {
        let (b, d, f, reg) = ecam_decode(offset);
        self.root.config_write(b, d, f, reg, data);
    }
}

/// A PCI MMIO window: accesses are routed to the BAR that decodes them.
pub struct PciMmioWindow {
    root: Arc<PciRoot>,
}

impl PciMmioWindow {
    /// Window dispatching to `root`'s BARs.
    pub fn new(root: Arc<PciRoot>) -> Self {
        Self { root }
    }
}

impl DeviceMmio for PciMmioWindow {
    fn mmio_read(&self, base: MmioAddress, offset: u64, data: &mut [u8]) {
        match self.root.find_bar(base.0 + offset) {
            Some((d, bar, off)) => lock(&d).bar_read(bar, off, data),
            None => data.fill(0xff),
        }
    }

    fn mmio_write(&self, base: MmioAddress, offset: u64, data: &[u8]) {
        if let Some((d, bar, off)) = self.root.find_bar(base.0 + offset) {
            lock(&d).bar_write(bar, off, data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Bar, ConfigSpace};

    struct Dummy {
        cfg: ConfigSpace,
        last_write: Option<(usize, u64, Vec<u8>)>,
    }
    impl PciDevice for Dummy {
        fn name(&self) -> &str {
            "dummy"
        }
        fn config(&self) -> &ConfigSpace {
            &self.cfg
        }
        fn config_mut(&mut self) -> &mut ConfigSpace {
            &mut self.cfg
        }
        fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
            data.fill((bar as u8) << 4 | offset as u8);
        }
        fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
            self.last_write = Some((bar, offset, data.to_vec()));
        }
    }

    fn root_with_dummy() -> (Arc<PciRoot>, Arc<Mutex<Dummy>>) {
        let mut cfg = ConfigSpace::new(0x1234, 0x5678, 0xff, 0, 0, 0);
        cfg.set_bar(
            0,
            Bar {
                kind: BarKind::Memory32,
                size: 0x1000,
                prefetchable: false,
            },
        )
        .unwrap();
        cfg.set_bar(
            2,
            Bar {
                kind: BarKind::Memory64,
                size: 0x4000,
                prefetchable: false,
            },
        )
        .unwrap();
        let d = Arc::new(Mutex::new(Dummy {
            cfg,
            last_write: None,
        }));
        let mut root = PciRoot::new();
        assert_eq!(root.add_device(d.clone()).unwrap(), 1);
        let mut m32 = AddressAllocator::new(0xc000_0000, 0x1000_0000).unwrap();
        let mut m64 = AddressAllocator::new(0x1_0000_0000, 0x1_0000_0000).unwrap();
        root.allocate_bars(&mut m32, &mut m64).unwrap();
        (Arc::new(root), d)
    }

    fn cf8(io: &PciConfigIo, dev: u32, reg: u32) {
        io.pio_write(
            PioAddress(0xcf8),
            0,
            &(0x8000_0000 | dev << 11 | reg).to_le_bytes(),
        );
    }

    #[test]
    fn cf8_reads_host_bridge_identity() {
        let (root, _) = root_with_dummy();
        let io = PciConfigIo::new(root);
        cf8(&io, 0, 0);
        let mut b = [0u8; 4];
        io.pio_read(PioAddress(0xcf8), 4, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x0d57_8086);
        let mut w = [0u8; 2];
        io.pio_read(PioAddress(0xcf8), 6, &mut w);
        assert_eq!(u16::from_le_bytes(w), 0x0d57);
    }

    #[test]
    fn absent_function_reads_all_ones() {
        let (root, _) = root_with_dummy();
        let io = PciConfigIo::new(root.clone());
        cf8(&io, 7, 0);
        let mut b = [0u8; 4];
        io.pio_read(PioAddress(0xcf8), 4, &mut b);
        assert_eq!(b, [0xff; 4]);
        let mut b = [0u8; 4];
        root.config_read(0, 1, 3, 0, &mut b);
        assert_eq!(b, [0xff; 4]);
    }

    #[test]
    fn disabled_address_register_reads_all_ones() {
        let (root, _) = root_with_dummy();
        let io = PciConfigIo::new(root);
        io.pio_write(PioAddress(0xcf8), 0, &0u32.to_le_bytes());
        let mut b = [0u8; 4];
        io.pio_read(PioAddress(0xcf8), 4, &mut b);
        assert_eq!(b, [0xff; 4]);
    }

    #[test]
    fn ecam_and_cf8_see_the_same_space() {
        let (root, _) = root_with_dummy();
        let ecam = PciEcam::new(root.clone());
        let mut b = [0u8; 4];
        ecam.mmio_read(MmioAddress(0), 1 << 15, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x5678_1234);
        ecam.mmio_read(MmioAddress(0), (1 << 15) | 0x100, &mut b);
        assert_eq!(b, [0; 4]);
    }

    #[test]
    fn bars_are_allocated_aligned_and_decoded() {
        let (root, d) = root_with_dummy();
        let mut b = [0u8; 4];
        root.config_read(0, 1, 0, 0x10, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0xc000_0000);
        root.config_read(0, 1, 0, 0x18, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x0000_0004);
        root.config_read(0, 1, 0, 0x1c, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x1);
        let win = PciMmioWindow::new(root.clone());
        let mut r = [0u8; 1];
        win.mmio_read(MmioAddress(0xc000_0000), 0x10, &mut r);
        assert_eq!(r[0], 0x10);
        win.mmio_write(MmioAddress(0x1_0000_0000), 8, &[1, 2]);
        assert_eq!(d.lock().unwrap().last_write, Some((2, 8, vec![1, 2])));
        win.mmio_read(MmioAddress(0xd000_0000), 0, &mut r);
        assert_eq!(r[0], 0xff);
    }

    #[test]
    fn disabling_memory_decode_hides_bars() {
        let (root, _) = root_with_dummy();
        root.config_write(0, 1, 0, 4, &[0, 0]);
        assert!(root.find_bar(0xc000_0000).is_none());
    }

    #[test]
    fn misaligned_and_odd_accesses_are_ignored() {
        let (root, _) = root_with_dummy();
        let mut b = [0u8; 4];
        root.config_read(0, 1, 0, 2, &mut b);
        assert_eq!(b, [0xff; 4]);
        let mut b3 = [0u8; 3];
        root.config_read(0, 1, 0, 0, &mut b3);
        root.config_write(0, 1, 0, 0x11, &[0xff, 0xff]);
        let io = PciConfigIo::new(root);
        io.pio_write(PioAddress(0xcf8), 0, &[1, 2]);
        let mut b2 = [0u8; 2];
        io.pio_read(PioAddress(0xcf8), 7, &mut b2);
        assert_eq!(b2, [0xff; 2]);
    }
}
