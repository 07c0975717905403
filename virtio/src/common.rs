//! The common configuration structure (`struct virtio_pci_common_cfg`, virtio 1.2 §4.1.4.3):
//! feature negotiation, queue setup and device status, as a guest-facing parser.
//!
//! Every access is checked: fields are read and written only at their own width (64-bit
//! queue addresses also as two 32-bit halves, as Linux does); other accesses read as 0 and
//! are ignored when written. A queue's setup is frozen once it is enabled, the driver's
//! features once FEATURES_OK is accepted.

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;

use crate::spec::{common_cfg as reg, features, status, VIRTIO_MSI_NO_VECTOR};

/// What the transport must do after a common-configuration write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing.
    None,
    /// The driver wrote 0 to device_status: reset the device.
    Reset,
    /// The driver set DRIVER_OK (with FEATURES_OK accepted): start the device.
    Activate,
}

/// The driver's setup of one queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    /// Largest size the device supports.
    pub max_size: u16,
    /// Size chosen by the driver.
    pub size: u16,
    /// MSI-X vector for used-buffer notifications.
    pub msix_vector: u16,
    /// queue_enable.
    pub enabled: bool,
    /// Descriptor table address.
    pub desc: u64,
    /// Driver (available) ring address.
    pub driver: u64,
    /// Device (used) ring address.
    pub device: u64,
}

impl QueueConfig {
    fn new(max_size: u16) -> Self {
        Self {
            max_size,
            size: max_size,
            msix_vector: VIRTIO_MSI_NO_VECTOR,
            enabled: false,
            desc: 0,
            driver: 0,
            device: 0,
        }
    }

    /// Builds the `virtio-queue` queue from this setup (size and alignment checked by
    /// `virtio-queue`; the caller checks the rings against guest memory with `is_valid`).
    pub fn to_queue(&self, event_idx: bool) -> Result<Queue, virtio_queue::Error> {
        let mut q = Queue::new(self.max_size)?;
        q.try_set_size(self.size)?;
        q.try_set_desc_table_address(GuestAddress(self.desc))?;
        q.try_set_avail_ring_address(GuestAddress(self.driver))?;
        q.try_set_used_ring_address(GuestAddress(self.device))?;
        q.set_event_idx(event_idx);
        q.set_ready(true);
        Ok(q)
    }
}

/// The common configuration state of one device.
#[derive(Clone, Debug)]
pub struct CommonConfig {
    device_features: u64,
    driver_features: u64,
    device_feature_select: u32,
    driver_feature_select: u32,
    msix_config: u16,
    status: u8,
    config_generation: u8,
    queue_select: u16,
    queues: Vec<QueueConfig>,
}

impl CommonConfig {
    /// A device offering `device_features` (VIRTIO_F_VERSION_1 is added) with queues of the
    /// given maximum sizes.
    pub fn new(device_features: u64, queue_max_sizes: &[u16]) -> Self {
        Self {
            device_features: device_features | features::VERSION_1,
            driver_features: 0,
            device_feature_select: 0,
            driver_feature_select: 0,
            msix_config: VIRTIO_MSI_NO_VECTOR,
            status: 0,
            config_generation: 0,
            queue_select: 0,
            queues: queue_max_sizes
                .iter()
                .map(|&m| QueueConfig::new(m))
                .collect(),
        }
    }

    /// Back to the state after power-on (device reset); the generation counter moves on.
    pub fn reset(&mut self) {
        let sizes: Vec<u16> = self.queues.iter().map(|q| q.max_size).collect();
        let generation = self.config_generation.wrapping_add(1);
        *self = Self::new(self.device_features, &sizes);
        self.config_generation = generation;
    }

    /// Device status.
    pub fn status(&self) -> u8 {
        self.status
    }

    /// Sets status bits on the device's side (NEEDS_RESET).
    pub fn set_status_bits(&mut self, bits: u8) {
        self.status |= bits;
    }

    /// Features the device offers.
    pub fn device_features(&self) -> u64 {
        self.device_features
    }

    /// Features the driver accepted.
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    /// Configuration-change MSI-X vector.
    pub fn msix_config(&self) -> u16 {
        self.msix_config
    }

    /// The queues' setup.
    pub fn queues(&self) -> &[QueueConfig] {
        &self.queues
    }

    fn selected(&self) -> Option<&QueueConfig> {
        self.queues.get(usize::from(self.queue_select))
    }

    fn selected_mut(&mut self) -> Option<&mut QueueConfig> {
        // Setup is frozen once the queue is enabled (or the driver is running).
        let frozen = self.status & status::DRIVER_OK != 0;
        self.queues
            .get_mut(usize::from(self.queue_select))
            .filter(|q| !q.enabled && !frozen)
    }

    /// Reads `data.len()` bytes at `offset`.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some(v) = self.read_field(offset, data.len()) else {
            return;
        };
        let n = data.len();
        data.copy_from_slice(&v.to_le_bytes()[..n]);
    }

    fn read_field(&self, offset: u64, len: usize) -> Option<u64> {
        let q = self.selected();
        let half = |v: u64, hi: bool| if hi { v >> 32 } else { v & 0xffff_ffff };
        let v = match (offset, len) {
            (reg::DEVICE_FEATURE_SELECT, 4) => u64::from(self.device_feature_select),
            (reg::DEVICE_FEATURE, 4) => match self.device_feature_select {
                0 => self.device_features & 0xffff_ffff,
                1 => self.device_features >> 32,
                _ => 0,
            },
            (reg::DRIVER_FEATURE_SELECT, 4) => u64::from(self.driver_feature_select),
            (reg::DRIVER_FEATURE, 4) => match self.driver_feature_select {
                0 => self.driver_features & 0xffff_ffff,
                1 => self.driver_features >> 32,
                _ => 0,
            },
            (reg::MSIX_CONFIG, 2) => u64::from(self.msix_config),
            (reg::NUM_QUEUES, 2) => self.queues.len() as u64,
            (reg::DEVICE_STATUS, 1) => u64::from(self.status),
            (reg::CONFIG_GENERATION, 1) => u64::from(self.config_generation),
            (reg::QUEUE_SELECT, 2) => u64::from(self.queue_select),
            // An absent queue reads size 0.
            (reg::QUEUE_SIZE, 2) => q.map_or(0, |q| u64::from(q.size)),
            (reg::QUEUE_MSIX_VECTOR, 2) => q.map_or(u64::from(VIRTIO_MSI_NO_VECTOR), |q| {
                u64::from(q.msix_vector)
            }),
            (reg::QUEUE_ENABLE, 2) => q.map_or(0, |q| u64::from(q.enabled)),
            (reg::QUEUE_NOTIFY_OFF, 2) => u64::from(self.queue_select),
            (o @ (reg::QUEUE_DESC | reg::QUEUE_DRIVER | reg::QUEUE_DEVICE), 8) => {
                q.map_or(0, |q| queue_addr(q, o))
            }
            (o, 4) if is_queue_addr(o) => {
                let base = o & !7;
                q.map_or(0, |q| half(queue_addr(q, base), o != base))
            }
            (reg::QUEUE_NOTIFY_DATA, 2) => u64::from(self.queue_select),
            (reg::QUEUE_RESET, 2) => 0,
            _ => return None,
        };
        Some(v)
    }

    /// A driver write of `data` at `offset`; tells the transport what follows from it.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Action {
        let mut raw = [0u8; 8];
        let Some(dst) = raw.get_mut(..data.len()) else {
            return Action::None;
        };
        dst.copy_from_slice(data);
        let v = u64::from_le_bytes(raw);
        match (offset, data.len()) {
            (reg::DEVICE_FEATURE_SELECT, 4) => self.device_feature_select = v as u32,
            (reg::DRIVER_FEATURE_SELECT, 4) => self.driver_feature_select = v as u32,
            // Frozen once FEATURES_OK is accepted.
            (reg::DRIVER_FEATURE, 4) if self.status & status::FEATURES_OK == 0 => {
                match self.driver_feature_select {
                    0 => {
                        self.driver_features =
                            (self.driver_features & !0xffff_ffff) | (v & 0xffff_ffff)
                    }
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | ((v & 0xffff_ffff) << 32)
                    }
                    _ => {}
                }
            }
            (reg::MSIX_CONFIG, 2) => self.msix_config = v as u16,
            (reg::DEVICE_STATUS, 1) => return self.write_status(v as u8),
            (reg::QUEUE_SELECT, 2) => self.queue_select = v as u16,
            (reg::QUEUE_SIZE, 2) => {
                if let Some(q) = self.selected_mut() {
                    q.size = v as u16;
                }
            }
            (reg::QUEUE_MSIX_VECTOR, 2) => {
                if let Some(q) = self.selected_mut() {
                    q.msix_vector = v as u16;
                }
            }
            // Only 1 is meaningful; disabling goes through a device reset.
            (reg::QUEUE_ENABLE, 2) if v == 1 => {
                if let Some(q) = self.selected_mut() {
                    q.enabled = true;
                }
            }
            (o @ (reg::QUEUE_DESC | reg::QUEUE_DRIVER | reg::QUEUE_DEVICE), 8) => {
                if let Some(q) = self.selected_mut() {
                    *queue_addr_mut(q, o) = v;
                }
            }
            (o, 4) if is_queue_addr(o) => {
                let base = o & !7;
                if let Some(q) = self.selected_mut() {
                    let a = queue_addr_mut(q, base);
                    *a = if o == base {
                        (*a & !0xffff_ffff) | (v & 0xffff_ffff)
                    } else {
                        (*a & 0xffff_ffff) | ((v & 0xffff_ffff) << 32)
                    };
                }
            }
            _ => {}
        }
        Action::None
    }

    fn write_status(&mut self, v: u8) -> Action {
        if v == 0 {
            return Action::Reset;
        }
        let old = self.status;
        let mut new = v | (old & status::NEEDS_RESET);
        if new & status::FEATURES_OK != 0 && old & status::FEATURES_OK == 0 {
            // Accept only a subset of the offer that includes VERSION_1 (§3.1.1, §6.1).
            let ok = self.driver_features & !self.device_features == 0
                && self.driver_features & features::VERSION_1 != 0;
            if !ok {
                new &= !status::FEATURES_OK;
            }
        }
        // DRIVER_OK without accepted features is a driver error: leave it unset.
        if new & status::FEATURES_OK == 0 {
            new &= !status::DRIVER_OK;
        }
        self.status = new;
        if new & status::DRIVER_OK != 0 && old & status::DRIVER_OK == 0 {
            Action::Activate
        } else {
            Action::None
        }
    }
}

fn is_queue_addr(o: u64) -> bool {
    (reg::QUEUE_DESC..reg::QUEUE_DEVICE + 8).contains(&o) && o.is_multiple_of(4)
}

fn queue_addr(q: &QueueConfig, base: u64) -> u64 {
    match base {
        reg::QUEUE_DESC => q.desc,
        reg::QUEUE_DRIVER => q.driver,
        _ => q.device,
    }
}

fn queue_addr_mut(q: &mut QueueConfig, base: u64) -> &mut u64 {
    match base {
        reg::QUEUE_DESC => &mut q.desc,
        reg::QUEUE_DRIVER => &mut q.driver,
        _ => &mut q.device,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w32(c: &mut CommonConfig, o: u64, v: u32) -> Action {
        c.write(o, &v.to_le_bytes())
    }
    fn w16(c: &mut CommonConfig, o: u64, v: u16) -> Action {
        c.write(o, &v.to_le_bytes())
    }
    fn r32(c: &CommonConfig, o: u64) -> u32 {
        let mut b = [0; 4];
        c.read(o, &mut b);
        u32::from_le_bytes(b)
    }
    fn r16(c: &CommonConfig, o: u64) -> u16 {
        let mut b = [0; 2];
        c.read(o, &mut b);
        u16::from_le_bytes(b)
    }

    fn negotiate(c: &mut CommonConfig, f: u64) -> u8 {
        c.write(reg::DEVICE_STATUS, &[status::ACKNOWLEDGE | status::DRIVER]);
        w32(c, reg::DRIVER_FEATURE_SELECT, 0);
        w32(c, reg::DRIVER_FEATURE, f as u32);
        w32(c, reg::DRIVER_FEATURE_SELECT, 1);
        w32(c, reg::DRIVER_FEATURE, (f >> 32) as u32);
        c.write(
            reg::DEVICE_STATUS,
            &[status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK],
        );
        c.status()
    }

    #[test]
    fn device_features_include_version_1_in_the_high_word() {
        let mut c = CommonConfig::new(1 << 9, &[128]);
        assert_eq!(r32(&c, reg::DEVICE_FEATURE), 1 << 9);
        w32(&mut c, reg::DEVICE_FEATURE_SELECT, 1);
        assert_eq!(r32(&c, reg::DEVICE_FEATURE), 1);
        w32(&mut c, reg::DEVICE_FEATURE_SELECT, 2);
        assert_eq!(r32(&c, reg::DEVICE_FEATURE), 0);
    }

    #[test]
    fn features_ok_is_refused_without_version_1_or_with_unoffered_bits() {
        let mut c = CommonConfig::new(1 << 9, &[128]);
        assert_eq!(negotiate(&mut c, 1 << 9) & status::FEATURES_OK, 0);
        let mut c = CommonConfig::new(1 << 9, &[128]);
        assert_eq!(
            negotiate(&mut c, features::VERSION_1 | 1 << 3) & status::FEATURES_OK,
            0
        );
        let mut c = CommonConfig::new(1 << 9, &[128]);
        let s = negotiate(&mut c, features::VERSION_1 | 1 << 9);
        assert_ne!(s & status::FEATURES_OK, 0);
        // Frozen afterwards.
        w32(&mut c, reg::DRIVER_FEATURE_SELECT, 0);
        w32(&mut c, reg::DRIVER_FEATURE, 0);
        assert_eq!(c.driver_features(), features::VERSION_1 | 1 << 9);
    }

    #[test]
    fn driver_ok_activates_once_and_zero_resets() {
        let mut c = CommonConfig::new(0, &[128]);
        negotiate(&mut c, features::VERSION_1);
        let all = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        assert_eq!(
            c.write(reg::DEVICE_STATUS, &[all | status::DRIVER_OK]),
            Action::Activate
        );
        assert_eq!(
            c.write(reg::DEVICE_STATUS, &[all | status::DRIVER_OK]),
            Action::None
        );
        assert_eq!(c.write(reg::DEVICE_STATUS, &[0]), Action::Reset);
        let g = r16(&c, reg::DEVICE_STATUS);
        c.reset();
        assert_eq!(c.status(), 0);
        assert_eq!(c.read_field(reg::CONFIG_GENERATION, 1), Some(1));
        let _ = g;
    }

    #[test]
    fn driver_ok_without_features_ok_is_ignored() {
        let mut c = CommonConfig::new(0, &[128]);
        assert_eq!(
            c.write(reg::DEVICE_STATUS, &[status::DRIVER | status::DRIVER_OK]),
            Action::None
        );
        assert_eq!(c.status() & status::DRIVER_OK, 0);
    }

    #[test]
    fn queue_setup_in_halves_and_frozen_once_enabled() {
        let mut c = CommonConfig::new(0, &[256, 256]);
        assert_eq!(r16(&c, reg::NUM_QUEUES), 2);
        w16(&mut c, reg::QUEUE_SELECT, 1);
        w16(&mut c, reg::QUEUE_SIZE, 64);
        w32(&mut c, reg::QUEUE_DESC, 0x1000);
        w32(&mut c, reg::QUEUE_DESC + 4, 0x2);
        c.write(reg::QUEUE_DRIVER, &0x3000u64.to_le_bytes());
        w16(&mut c, reg::QUEUE_MSIX_VECTOR, 2);
        w16(&mut c, reg::QUEUE_ENABLE, 1);
        w16(&mut c, reg::QUEUE_SIZE, 32);
        let q = &c.queues()[1];
        assert_eq!(
            (q.size, q.desc, q.driver, q.msix_vector),
            (64, 0x2_0000_1000, 0x3000, 2)
        );
        assert!(q.enabled);
        assert_eq!(r32(&c, reg::QUEUE_DESC + 4), 2);
        assert_eq!(r16(&c, reg::QUEUE_NOTIFY_OFF), 1);
    }

    #[test]
    fn absent_queue_reads_size_zero_and_ignores_writes() {
        let mut c = CommonConfig::new(0, &[256]);
        w16(&mut c, reg::QUEUE_SELECT, 7);
        assert_eq!(r16(&c, reg::QUEUE_SIZE), 0);
        w16(&mut c, reg::QUEUE_ENABLE, 1);
        assert!(!c.queues()[0].enabled);
    }

    #[test]
    fn wrong_width_accesses_are_ignored() {
        let mut c = CommonConfig::new(0, &[256]);
        c.write(reg::QUEUE_SELECT, &[1, 0, 0, 0]);
        c.write(reg::DEVICE_STATUS, &[1, 0]);
        c.write(0x3b, &[1]);
        c.write(0x1000, &[1; 9]);
        assert_eq!(c.status(), 0);
        assert_eq!(r32(&c, reg::NUM_QUEUES), 0);
    }

    #[test]
    fn invalid_queue_size_fails_to_build() {
        let mut c = CommonConfig::new(0, &[256]);
        w16(&mut c, reg::QUEUE_SIZE, 100);
        assert!(c.queues()[0].to_queue(false).is_err());
        w16(&mut c, reg::QUEUE_SIZE, 128);
        assert!(c.queues()[0].to_queue(false).is_ok());
    }
}
