//! Register layouts and constants from the virtio 1.2 specification.

/// PCI vendor ID of virtio devices (§4.1.2).
pub const VIRTIO_PCI_VENDOR: u16 = 0x1af4;
/// Modern device IDs are 0x1040 + virtio device type (§4.1.2.1).
pub const VIRTIO_PCI_DEVICE_BASE: u16 = 0x1040;
/// Revision ID of modern (non-transitional) devices (§4.1.2.1).
pub const VIRTIO_PCI_REVISION: u8 = 1;
/// Subsystem device ID for modern devices (at least 0x40, §4.1.2.1).
pub const VIRTIO_PCI_SUBSYSTEM: u16 = 0x40;

/// Vendor-specific capability ID carrying a `virtio_pci_cap` (§4.1.4).
pub const PCI_CAP_ID_VNDR: u8 = 0x09;

/// `cfg_type` of the virtio PCI capabilities (§4.1.4).
pub mod cap_type {
    /// Common configuration.
    pub const COMMON: u8 = 1;
    /// Notifications.
    pub const NOTIFY: u8 = 2;
    /// ISR status.
    pub const ISR: u8 = 3;
    /// Device-specific configuration.
    pub const DEVICE: u8 = 4;
}

/// Device status bits (§2.1).
pub mod status {
    /// The guest found the device.
    pub const ACKNOWLEDGE: u8 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u8 = 2;
    /// The driver is ready.
    pub const DRIVER_OK: u8 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u8 = 8;
    /// The device hit an error and needs a reset.
    pub const NEEDS_RESET: u8 = 64;
    /// The driver gave up on the device.
    pub const FAILED: u8 = 128;
}

/// Feature bits common to all devices (§6).
pub mod features {
    /// Indirect descriptors.
    pub const RING_INDIRECT_DESC: u64 = 1 << 28;
    /// used_event / avail_event notification suppression.
    pub const RING_EVENT_IDX: u64 = 1 << 29;
    /// Modern (virtio 1.x) device.
    pub const VERSION_1: u64 = 1 << 32;
}

/// "No MSI-X vector" in `msix_config` and `queue_msix_vector` (§4.1.5.1.2).
pub const VIRTIO_MSI_NO_VECTOR: u16 = 0xffff;

/// ISR status bits (§4.1.4.5).
pub mod isr {
    /// A used buffer notification.
    pub const QUEUE: u8 = 1;
    /// A configuration change notification.
    pub const CONFIG: u8 = 2;
}

/// Offsets in `struct virtio_pci_common_cfg` (§4.1.4.3).
pub mod common_cfg {
    /// u32, RW.
    pub const DEVICE_FEATURE_SELECT: u64 = 0x00;
    /// u32, RO.
    pub const DEVICE_FEATURE: u64 = 0x04;
    /// u32, RW.
    pub const DRIVER_FEATURE_SELECT: u64 = 0x08;
    /// u32, RW.
    pub const DRIVER_FEATURE: u64 = 0x0c;
    /// u16, RW.
    pub const MSIX_CONFIG: u64 = 0x10;
    /// u16, RO.
    pub const NUM_QUEUES: u64 = 0x12;
    /// u8, RW.
    pub const DEVICE_STATUS: u64 = 0x14;
    /// u8, RO.
    pub const CONFIG_GENERATION: u64 = 0x15;
    /// u16, RW.
    pub const QUEUE_SELECT: u64 = 0x16;
    /// u16, RW.
    pub const QUEUE_SIZE: u64 = 0x18;
    /// u16, RW.
    pub const QUEUE_MSIX_VECTOR: u64 = 0x1a;
    /// u16, RW.
    pub const QUEUE_ENABLE: u64 = 0x1c;
    /// u16, RO.
    pub const QUEUE_NOTIFY_OFF: u64 = 0x1e;
    /// u64, RW.
    pub const QUEUE_DESC: u64 = 0x20;
    /// u64, RW.
    pub const QUEUE_DRIVER: u64 = 0x28;
    /// u64, RW.
    pub const QUEUE_DEVICE: u64 = 0x30;
    /// u16, RO (VIRTIO_F_NOTIF_CONFIG_DATA).
    pub const QUEUE_NOTIFY_DATA: u64 = 0x38;
    /// u16, RW (VIRTIO_F_RING_RESET).
    pub const QUEUE_RESET: u64 = 0x3a;
    /// Size of the structure.
    pub const SIZE: u64 = 0x3c;
}
