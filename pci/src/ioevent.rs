//! KVM ioeventfds at addresses inside a device's BARs: a guest write there signals an
//! eventfd in the kernel, without an exit to the VMM.

use vmm_sys_util::eventfd::EventFd;

/// Registers KVM ioeventfds (the VMM implements it over `KVM_IOEVENTFD`).
pub trait IoEventRegistry: Send + Sync {
    /// Makes a guest write of any width to `addr` signal `fd` in the kernel.
    fn register_mmio(&self, addr: u64, fd: &EventFd) -> std::io::Result<()>;
    /// Undoes [`register_mmio`](Self::register_mmio).
    fn unregister_mmio(&self, addr: u64, fd: &EventFd) -> std::io::Result<()>;
}

/// No ioeventfds (unit tests, fuzzing): every such write is an MMIO exit.
pub struct NoIoEvents;

impl IoEventRegistry for NoIoEvents {
    fn register_mmio(&self, _addr: u64, _fd: &EventFd) -> std::io::Result<()> {
        Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
    }
    fn unregister_mmio(&self, _addr: u64, _fd: &EventFd) -> std::io::Result<()> {
        Ok(())
    }
}

/// Accepts every registration and records it (unit tests): `(registered, address)` in order.
#[derive(Default)]
pub struct RecordingIoEvents(std::sync::Mutex<Vec<(bool, u64)>>);

impl RecordingIoEvents {
    /// The (un)registrations recorded since the last call.
    pub fn take(&self) -> Vec<(bool, u64)> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl IoEventRegistry for RecordingIoEvents {
    fn register_mmio(&self, addr: u64, _fd: &EventFd) -> std::io::Result<()> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((true, addr));
        Ok(())
    }
    fn unregister_mmio(&self, addr: u64, _fd: &EventFd) -> std::io::Result<()> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((false, addr));
        Ok(())
    }
}
