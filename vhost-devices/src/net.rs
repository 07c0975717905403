//! virtio-net (device ID 1) on vhost-net: one receive and one transmit queue moved by the
//! kernel between the guest's rings and a tap interface.

use std::sync::Arc;

use thiserror::Error;
use vhost::net::VhostNet as _;
use vhost::vhost_kern::net::Net;
use vhost::VhostBackend;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::*;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vm_memory::GuestMemoryMmap;

use crate::backend::{self, step, VhostError, VringSetup};
use crate::mac::MacAddress;
use crate::tap::{Tap, TapError};

/// virtio device ID of a network card.
pub const VIRTIO_ID_NET: u32 = 1;
/// Queues: 0 receive, 1 transmit (no control queue, one pair).
pub const NET_QUEUES: usize = 2;
/// Largest ring size offered per queue.
pub const NET_QUEUE_SIZE: u16 = 256;
/// The vhost-net control device.
pub const VHOST_NET_PATH: &str = "/dev/vhost-net";

const fn bit(b: u32) -> u64 {
    1u64 << b
}

/// Ring features vhost-net implements and the device passes on when the kernel has them.
const RING_FEATURES: u64 =
    bit(VIRTIO_RING_F_EVENT_IDX) | bit(VIRTIO_RING_F_INDIRECT_DESC) | bit(VIRTIO_F_VERSION_1);

/// Offloads the tap performs for the device (checksum and TCP segmentation both ways,
/// mergeable receive buffers handled by vhost-net).
const NET_FEATURES: u64 = bit(VIRTIO_NET_F_CSUM)
    | bit(VIRTIO_NET_F_GUEST_CSUM)
    | bit(VIRTIO_NET_F_GUEST_TSO4)
    | bit(VIRTIO_NET_F_GUEST_TSO6)
    | bit(VIRTIO_NET_F_GUEST_ECN)
    | bit(VIRTIO_NET_F_HOST_TSO4)
    | bit(VIRTIO_NET_F_HOST_TSO6)
    | bit(VIRTIO_NET_F_HOST_ECN)
    | bit(VIRTIO_NET_F_MRG_RXBUF);

/// Errors setting up the network device (host-facing).
#[derive(Debug, Error)]
pub enum NetError {
    /// `/dev/vhost-net` cannot be opened.
    #[error("cannot open {VHOST_NET_PATH}: {0} (is the vhost_net module loaded?)")]
    OpenVhost(#[source] std::io::Error),
    /// The tap cannot be used.
    #[error(transparent)]
    Tap(#[from] TapError),
    /// A vhost ioctl failed.
    #[error("vhost-net: {0}")]
    Vhost(#[from] VhostError),
    /// vhost-net lacks a feature the device needs.
    #[error("vhost-net does not offer VIRTIO_F_VERSION_1 (features {0:#x})")]
    NoVersion1(u64),
}

/// The `TUN_F_*` offloads matching the guest's acknowledged receive features.
pub fn tap_offloads(acked: u64) -> u32 {
    let mut f = 0;
    if acked & bit(VIRTIO_NET_F_GUEST_CSUM) != 0 {
        f |= libc::TUN_F_CSUM;
        if acked & bit(VIRTIO_NET_F_GUEST_TSO4) != 0 {
            f |= libc::TUN_F_TSO4;
        }
        if acked & bit(VIRTIO_NET_F_GUEST_TSO6) != 0 {
            f |= libc::TUN_F_TSO6;
        }
        if acked & bit(VIRTIO_NET_F_GUEST_ECN) != 0
            && f & (libc::TUN_F_TSO4 | libc::TUN_F_TSO6) != 0
        {
            f |= libc::TUN_F_TSO_ECN;
        }
    }
    f
}

/// The device configuration space (`struct virtio_net_config` up to `status`).
pub fn net_config(mac: Option<MacAddress>) -> [u8; 8] {
    let mut c = [0u8; 8];
    if let Some(m) = mac {
        c[..6].copy_from_slice(&m.octets());
    }
    c[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
    c
}

/// A virtio-net device whose data path is vhost-net over a tap.
pub struct VhostNetDevice {
    tap: Tap,
    vhost: Net<Arc<GuestMemoryMmap>>,
    mem: GuestMemoryMmap,
    vhost_features: u64,
    features: u64,
    config: [u8; 8],
    active: bool,
}

impl VhostNetDevice {
    /// Opens `/dev/vhost-net` (first: it creates nothing) and then the tap `tap_name`
    /// (created if absent). On error nothing is left behind: a tap created here is not
    /// persistent and goes away with its descriptor.
    pub fn new(
        tap_name: &str,
        mac: Option<MacAddress>,
        mem: GuestMemoryMmap,
    ) -> Result<Self, NetError> {
        let vhost = Net::new(Arc::new(mem.clone())).map_err(|e| match e {
            vhost::Error::VhostOpen(io) => NetError::OpenVhost(io),
            other => NetError::Vhost(VhostError {
                what: "open".into(),
                source: other,
            }),
        })?;
        step("VHOST_SET_OWNER", vhost.set_owner())?;
        let vhost_features = step("VHOST_GET_FEATURES", vhost.get_features())?;
        if vhost_features & bit(VIRTIO_F_VERSION_1) == 0 {
            return Err(NetError::NoVersion1(vhost_features));
        }
        let tap = Tap::open(tap_name)?;
        let mut features = NET_FEATURES | (vhost_features & RING_FEATURES);
        if mac.is_some() {
            features |= bit(VIRTIO_NET_F_MAC);
        }
        Ok(Self {
            tap,
            vhost,
            mem,
            vhost_features,
            features,
            config: net_config(mac),
            active: false,
        })
    }

    /// The tap behind the device.
    pub fn tap(&self) -> &Tap {
        &self.tap
    }

    /// Features offered to the driver.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// The configuration space.
    pub fn config(&self) -> &[u8] {
        &self.config
    }

    /// Reads the configuration space (bytes past its end read as zero).
    pub fn read_config(&self, offset: u64, data: &mut [u8]) {
        backend::read_config(&self.config, offset, data)
    }

    /// DRIVER_OK: hands the rings to vhost-net with the tap as back-end.
    pub fn activate(&mut self, acked: u64, vrings: &[VringSetup<'_>]) -> Result<(), NetError> {
        self.active = true; // a failure part-way is undone by `reset`
        let acked = acked & self.features;
        self.tap.set_offload(tap_offloads(acked))?;
        // the tap consumes the 12-byte header (VHOST_NET_F_VIRTIO_NET_HDR not acked)
        let vhost_acked = acked & self.vhost_features;
        backend::start_vrings(&self.vhost, vhost_acked, &self.mem, vrings)?;
        for v in vrings {
            step(
                format!("VHOST_NET_SET_BACKEND queue {}", v.index),
                self.vhost.set_backend(v.index, Some(self.tap.file())),
            )?;
        }
        Ok(())
    }

    /// Device reset: the rings are detached from the tap and stopped.
    pub fn reset(&mut self) {
        if !self.active {
            return;
        }
        for i in 0..NET_QUEUES {
            if let Err(e) = self.vhost.set_backend(i, None) {
                log::debug!("VHOST_NET_SET_BACKEND queue {i} off: {e}");
            }
        }
        backend::stop_vrings(&self.vhost, NET_QUEUES);
        self.active = false;
    }
}

impl virtio::VirtioDevice for VhostNetDevice {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn name(&self) -> &str {
        "virtio-net"
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![NET_QUEUE_SIZE; NET_QUEUES]
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn pci_class(&self) -> (u8, u8) {
        (0x02, 0x00) // network controller, Ethernet
    }

    fn msi_chip(&self) -> Option<Arc<dyn interrupt::MsiChip>> {
        let what = format!("tap {}", self.tap.name());
        Some(Arc::new(backend::VhostChip::new("vhost-net", what)))
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        VhostNetDevice::read_config(self, offset, data)
    }

    fn activate(&mut self, a: virtio::Activation) -> Result<(), virtio::ActivateError> {
        let rings = backend::vrings(&a, 0..NET_QUEUES)?;
        let setups: Vec<VringSetup<'_>> = rings.iter().map(|r| r.setup()).collect();
        VhostNetDevice::activate(self, a.features, &setups).map_err(|e| {
            // leave nothing half-started
            VhostNetDevice::reset(self);
            virtio::ActivateError::Host(e.to_string())
        })
    }

    fn reset(&mut self) {
        VhostNetDevice::reset(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_offloads_follow_guest_receive_features() {
        assert_eq!(tap_offloads(0), 0);
        // segmentation offloads need the checksum offload
        assert_eq!(tap_offloads(bit(VIRTIO_NET_F_GUEST_TSO4)), 0);
        let all = bit(VIRTIO_NET_F_GUEST_CSUM)
            | bit(VIRTIO_NET_F_GUEST_TSO4)
            | bit(VIRTIO_NET_F_GUEST_TSO6)
            | bit(VIRTIO_NET_F_GUEST_ECN);
        assert_eq!(
            tap_offloads(all),
            libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN
        );
        assert_eq!(
            tap_offloads(bit(VIRTIO_NET_F_GUEST_CSUM) | bit(VIRTIO_NET_F_GUEST_ECN)),
            libc::TUN_F_CSUM
        );
    }

    #[test]
    fn config_space_has_mac_and_link_up() {
        let m = "52:54:00:12:34:56".parse().unwrap();
        assert_eq!(net_config(Some(m)), [0x52, 0x54, 0, 0x12, 0x34, 0x56, 1, 0]);
        assert_eq!(net_config(None), [0, 0, 0, 0, 0, 0, 1, 0]);
    }
}
