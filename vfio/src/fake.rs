//! A device-less host for tests and fuzzing: config space in memory, BARs as anonymous
//! memory, every interrupt call recorded.

use std::os::fd::RawFd;
use std::sync::Mutex;

use crate::bars::RegionInfo;
use crate::chip::IrqHost;
use crate::config::ConfigIo;
use crate::host::{Bdf, HostAccess, HostError};

/// A fake host function.
pub struct FakeHost {
    /// Its config space (the device's writes land here, unfiltered).
    pub config: Mutex<[u8; 256]>,
    /// BAR regions.
    pub regions: Vec<RegionInfo>,
    /// `(count, dynamic)` for MSI and MSI-X.
    pub msi: (u32, bool),
    /// MSI-X vectors and whether they can be added while enabled.
    pub msix: (u32, bool),
    /// INTx interrupts (1 for a function with a pin, 0 without).
    pub intx: u32,
    /// Interrupt calls, in order (`set INDEX START [fds]`, `unmask INDEX`, `disable INDEX`).
    pub calls: Mutex<Vec<String>>,
    /// Region writes `(index, offset, bytes)`.
    pub region_writes: Mutex<Vec<(u32, u64, Vec<u8>)>>,
}

impl FakeHost {
    /// A host with config space `config`, BAR regions `regions`, `msi` MSI and `msix` MSI-X
    /// vectors (`dynamic`: MSI-X without NORESIZE).
    pub fn new(
        config: [u8; 256],
        regions: Vec<RegionInfo>,
        msi: u32,
        msix: u32,
        dynamic: bool,
    ) -> Self {
        Self {
            config: Mutex::new(config),
            regions,
            msi: (msi, false),
            msix: (msix, dynamic),
            intx: 1,
            calls: Mutex::new(Vec::new()),
            region_writes: Mutex::new(Vec::new()),
        }
    }
}

impl ConfigIo for FakeHost {
    fn read(&self, offset: usize, data: &mut [u8]) -> bool {
        let c = self.config.lock().unwrap_or_else(|e| e.into_inner());
        match c.get(offset..offset + data.len()) {
            Some(s) => {
                data.copy_from_slice(s);
                true
            }
            None => false,
        }
    }
    fn write(&self, offset: usize, data: &[u8]) -> bool {
        let mut c = self.config.lock().unwrap_or_else(|e| e.into_inner());
        match c.get_mut(offset..offset + data.len()) {
            Some(s) => {
                s.copy_from_slice(data);
                true
            }
            None => false,
        }
    }
}

impl IrqHost for FakeHost {
    fn set_triggers(&self, index: u32, start: u32, fds: &[RawFd]) -> std::io::Result<()> {
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(format!("set {index} {start} {}", fds.len()));
        Ok(())
    }
    fn set_unmask(&self, index: u32, _fd: RawFd) -> std::io::Result<()> {
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(format!("unmask {index}"));
        Ok(())
    }
    fn disable(&self, index: u32) -> std::io::Result<()> {
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(format!("disable {index}"));
        Ok(())
    }
    fn signal(&self, _fd: RawFd) {}
}

impl HostAccess for FakeHost {
    fn bdf(&self) -> Bdf {
        Bdf {
            domain: 0,
            bus: 0,
            device: 3,
            function: 0,
        }
    }
    fn read_config_space(&self) -> Result<[u8; 256], HostError> {
        Ok(*self.config.lock().unwrap_or_else(|e| e.into_inner()))
    }
    fn region(&self, bar: u32) -> RegionInfo {
        self.regions.get(bar as usize).cloned().unwrap_or_default()
    }
    fn region_read(&self, index: u32, offset: u64, data: &mut [u8]) -> bool {
        let size = self.region(index).size;
        if offset
            .checked_add(data.len() as u64)
            .is_none_or(|e| e > size)
        {
            return false;
        }
        data.fill(0x5a);
        true
    }
    fn region_write(&self, index: u32, offset: u64, data: &[u8]) -> bool {
        let size = self.region(index).size;
        if offset
            .checked_add(data.len() as u64)
            .is_none_or(|e| e > size)
        {
            return false;
        }
        self.region_writes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((index, offset, data.to_vec()));
        true
    }
    fn mmap(&self, bar: u32, _offset: u64, size: u64) -> Result<*mut u8, HostError> {
        // SAFETY: a fresh anonymous mapping.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(HostError::Mmap {
                bdf: self.bdf(),
                bar: bar as usize,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(p.cast())
    }
    fn irq_info(&self, index: u32) -> (u32, bool) {
        if index == crate::chip::MSIX_INDEX {
            self.msix
        } else if index == crate::chip::MSI_INDEX {
            self.msi
        } else if index == crate::chip::INTX_INDEX {
            (self.intx, false)
        } else {
            (0, false)
        }
    }
    fn reset(&self) -> bool {
        true
    }
}
