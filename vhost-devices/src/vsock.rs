//! virtio-vsock (device ID 19) on vhost-vsock: the kernel moves the receive and transmit
//! queues between the guest and the host's AF_VSOCK sockets; the event queue stays with the
//! device, which never posts an event (no migration).

use std::sync::Arc;

use thiserror::Error;
use vhost::vhost_kern::vsock::Vsock;
use vhost::vsock::VhostVsock as _;
use vhost::VhostBackend;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vm_memory::GuestMemoryMmap;

use crate::backend::{self, step, VhostError, VringSetup};

/// virtio device ID of a socket device.
pub const VIRTIO_ID_VSOCK: u32 = 19;
/// Queues: 0 receive, 1 transmit (both on vhost), 2 event.
pub const VSOCK_QUEUES: usize = 3;
/// Queues vhost-vsock runs.
pub const VSOCK_VHOST_QUEUES: usize = 2;
/// Largest ring size offered per queue.
pub const VSOCK_QUEUE_SIZE: u16 = 256;
/// The vhost-vsock control device.
pub const VHOST_VSOCK_PATH: &str = "/dev/vhost-vsock";
/// `VIRTIO_VSOCK_F_SEQPACKET`.
pub const VIRTIO_VSOCK_F_SEQPACKET: u32 = 1;
/// Smallest CID a guest may have (0 hypervisor, 1 local, 2 host are reserved).
pub const MIN_GUEST_CID: u64 = 3;
/// Largest CID a guest may have (`VMADDR_CID_ANY` = 2^32-1 is reserved; vhost-vsock takes
/// 32-bit CIDs only).
pub const MAX_GUEST_CID: u64 = u32::MAX as u64 - 1;

const fn bit(b: u32) -> u64 {
    1u64 << b
}

const OFFERED: u64 = bit(VIRTIO_RING_F_EVENT_IDX)
    | bit(VIRTIO_RING_F_INDIRECT_DESC)
    | bit(VIRTIO_F_VERSION_1)
    | bit(VIRTIO_VSOCK_F_SEQPACKET);

/// Errors setting up the socket device (host-facing).
#[derive(Debug, Error)]
pub enum VsockError {
    /// The CID is reserved.
    #[error("vsock cid={0} is reserved: a guest CID is 3..=4294967294")]
    ReservedCid(u64),
    /// `/dev/vhost-vsock` cannot be opened.
    #[error("cannot open {VHOST_VSOCK_PATH}: {0} (is the vhost_vsock module loaded?)")]
    OpenVhost(#[source] std::io::Error),
    /// Another VM has this CID.
    #[error("vsock cid={0} is in use by another VM on this host")]
    CidInUse(u64),
    /// A vhost ioctl failed.
    #[error("vhost-vsock: {0}")]
    Vhost(#[from] VhostError),
    /// vhost-vsock lacks a feature the device needs.
    #[error("vhost-vsock does not offer VIRTIO_F_VERSION_1 (features {0:#x})")]
    NoVersion1(u64),
}

/// Checks that `cid` can be a guest's context ID.
pub fn check_cid(cid: u64) -> Result<u64, VsockError> {
    if (MIN_GUEST_CID..=MAX_GUEST_CID).contains(&cid) {
        Ok(cid)
    } else {
        Err(VsockError::ReservedCid(cid))
    }
}

/// A virtio-vsock device whose data path is vhost-vsock.
pub struct VhostVsockDevice {
    vhost: Vsock<Arc<GuestMemoryMmap>>,
    mem: GuestMemoryMmap,
    vhost_features: u64,
    features: u64,
    config: [u8; 8],
    cid: u64,
    active: bool,
}

impl VhostVsockDevice {
    /// Opens `/dev/vhost-vsock` and claims `cid` for this VM (so a CID in use is an error
    /// before the guest runs).
    pub fn new(cid: u64, mem: GuestMemoryMmap) -> Result<Self, VsockError> {
        check_cid(cid)?;
        let vhost = Vsock::new(Arc::new(mem.clone())).map_err(|e| match e {
            vhost::Error::VhostOpen(io) => VsockError::OpenVhost(io),
            other => VsockError::Vhost(VhostError {
                what: "open".into(),
                source: other,
            }),
        })?;
        step("VHOST_SET_OWNER", vhost.set_owner())?;
        let vhost_features = step("VHOST_GET_FEATURES", vhost.get_features())?;
        if vhost_features & bit(VIRTIO_F_VERSION_1) == 0 {
            return Err(VsockError::NoVersion1(vhost_features));
        }
        if let Err(e) = vhost.set_guest_cid(cid) {
            return Err(match &e {
                vhost::Error::IoctlError(io) if io.raw_os_error() == Some(libc::EADDRINUSE) => {
                    VsockError::CidInUse(cid)
                }
                vhost::Error::IoctlError(io) if io.raw_os_error() == Some(libc::EINVAL) => {
                    VsockError::ReservedCid(cid)
                }
                _ => VsockError::Vhost(VhostError {
                    what: "VHOST_VSOCK_SET_GUEST_CID".into(),
                    source: e,
                }),
            });
        }
        Ok(Self {
            vhost,
            mem,
            vhost_features,
            features: vhost_features & OFFERED,
            config: cid.to_le_bytes(),
            cid,
            active: false,
        })
    }

    /// The guest's context ID.
    pub fn cid(&self) -> u64 {
        self.cid
    }

    /// Features offered to the driver.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// The configuration space (`struct virtio_vsock_config`: the guest CID, 64-bit LE).
    pub fn config(&self) -> &[u8] {
        &self.config
    }

    /// Reads the configuration space (bytes past its end read as zero).
    pub fn read_config(&self, offset: u64, data: &mut [u8]) {
        backend::read_config(&self.config, offset, data)
    }

    /// DRIVER_OK: hands the receive and transmit rings to vhost-vsock and starts it. Rings
    /// with index 2 (event) or above stay with the device.
    pub fn activate(&mut self, acked: u64, vrings: &[VringSetup<'_>]) -> Result<(), VsockError> {
        self.active = true; // a failure part-way is undone by `reset`
        let acked = acked & self.features & self.vhost_features;
        let vhost_rings: Vec<VringSetup<'_>> = vrings
            .iter()
            .filter(|v| v.index < VSOCK_VHOST_QUEUES)
            .copied()
            .collect();
        backend::start_vrings(&self.vhost, acked, &self.mem, &vhost_rings)?;
        step("VHOST_VSOCK_SET_RUNNING 1", self.vhost.start())?;
        Ok(())
    }

    /// Device reset: vhost-vsock stops and the rings are released.
    pub fn reset(&mut self) {
        if !self.active {
            return;
        }
        if let Err(e) = self.vhost.stop() {
            log::debug!("VHOST_VSOCK_SET_RUNNING 0: {e}");
        }
        backend::stop_vrings(&self.vhost, VSOCK_VHOST_QUEUES);
        self.active = false;
    }
}

impl virtio::VirtioDevice for VhostVsockDevice {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn name(&self) -> &str {
        "virtio-vsock"
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![VSOCK_QUEUE_SIZE; VSOCK_QUEUES]
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn msi_chip(&self) -> Option<Arc<dyn interrupt::MsiChip>> {
        let what = format!("guest cid {}", self.cid);
        Some(Arc::new(backend::VhostChip::new("vhost-vsock", what)))
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        VhostVsockDevice::read_config(self, offset, data)
    }

    fn activate(&mut self, a: virtio::Activation) -> Result<(), virtio::ActivateError> {
        let rings = backend::vrings(&a, 0..VSOCK_VHOST_QUEUES)?;
        let setups: Vec<VringSetup<'_>> = rings.iter().map(|r| r.setup()).collect();
        VhostVsockDevice::activate(self, a.features, &setups).map_err(|e| {
            VhostVsockDevice::reset(self);
            virtio::ActivateError::Host(e.to_string())
        })
    }

    fn reset(&mut self) {
        VhostVsockDevice::reset(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_cids_are_refused() {
        for bad in [0, 1, 2, u32::MAX as u64, u32::MAX as u64 + 1, u64::MAX] {
            assert!(matches!(check_cid(bad), Err(VsockError::ReservedCid(c)) if c == bad));
        }
        for ok in [3, 1000, u32::MAX as u64 - 1] {
            assert_eq!(check_cid(ok).unwrap(), ok);
        }
    }

    #[test]
    fn reserved_cid_is_refused_before_opening_vhost() {
        let mem =
            GuestMemoryMmap::<()>::from_ranges(&[(vm_memory::GuestAddress(0), 1 << 20)]).unwrap();
        assert!(matches!(
            VhostVsockDevice::new(2, mem),
            Err(VsockError::ReservedCid(2))
        ));
    }
}
