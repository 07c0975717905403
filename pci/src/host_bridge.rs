//! The host bridge at 00:00.0.

use crate::config::ConfigSpace;
use crate::device::PciDevice;

/// Vendor ID of the host bridge (Intel).
pub const HOST_BRIDGE_VENDOR: u16 = 0x8086;
/// Device ID of the host bridge.
pub const HOST_BRIDGE_DEVICE: u16 = 0x0d57;

/// A host bridge function with no BARs (class 06/00).
pub struct HostBridge {
    config: ConfigSpace,
}

impl Default for HostBridge {
    fn default() -> Self {
        Self {
            config: ConfigSpace::new(HOST_BRIDGE_VENDOR, HOST_BRIDGE_DEVICE, 0x06, 0x00, 0, 0),
        }
    }
}

impl PciDevice for HostBridge {
    fn name(&self) -> &str {
        "host-bridge"
    }
    fn config(&self) -> &ConfigSpace {
        &self.config
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }
}
