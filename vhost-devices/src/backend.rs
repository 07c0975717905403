//! What vhost-net and vhost-vsock share: handing guest memory and the rings to a vhost
//! kernel back-end (rust-vmm `vhost`, `vhost-kern`).
//!
//! The kick of each ring is the transport's ioeventfd (KVM signals it on the guest's
//! notify write) and the call is the trigger eventfd of the queue's MSI-X vector: the
//! kernel's vhost worker reads the one and signals the other, no VMM thread in between.

use thiserror::Error;
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

/// A vhost ioctl that failed.
#[derive(Debug, Error)]
#[error("{what}: {source}")]
pub struct VhostError {
    /// Which step (e.g. "VHOST_SET_VRING_ADDR queue 1").
    pub what: String,
    /// Cause.
    #[source]
    pub source: vhost::Error,
}

pub(crate) fn step<T>(what: impl Into<String>, r: vhost::Result<T>) -> Result<T, VhostError> {
    r.map_err(|source| VhostError {
        what: what.into(),
        source,
    })
}

/// One ring as the guest configured it, with its notification eventfds.
#[derive(Clone, Copy, Debug)]
pub struct VringSetup<'a> {
    /// Queue index within the device.
    pub index: usize,
    /// Ring size the driver chose.
    pub size: u16,
    /// Largest size the device offered.
    pub max_size: u16,
    /// Guest-physical address of the descriptor table.
    pub desc: u64,
    /// Guest-physical address of the driver (available) ring.
    pub avail: u64,
    /// Guest-physical address of the device (used) ring.
    pub used: u64,
    /// Signalled by KVM when the guest notifies the queue (ioeventfd).
    pub kick: &'a EventFd,
    /// Signalled by the vhost worker to interrupt the guest (the vector's trigger).
    pub call: &'a EventFd,
}

/// The guest RAM regions as vhost's memory table (guest-physical to VMM-virtual).
pub fn memory_table(mem: &GuestMemoryMmap) -> Vec<VhostUserMemoryRegionInfo> {
    mem.iter()
        .map(|r| VhostUserMemoryRegionInfo {
            guest_phys_addr: r.start_addr().0,
            memory_size: r.len(),
            userspace_addr: r.as_ptr() as u64,
            mmap_offset: 0,
            mmap_handle: -1,
        })
        .collect()
}

/// Acknowledges `features`, installs the memory table and starts `vrings` on `backend`.
/// Ring addresses outside guest RAM are refused (`VHOST_SET_VRING_ADDR` is never issued).
pub(crate) fn start_vrings<B: VhostBackend>(
    backend: &B,
    features: u64,
    mem: &GuestMemoryMmap,
    vrings: &[VringSetup<'_>],
) -> Result<(), VhostError> {
    step("VHOST_SET_FEATURES", backend.set_features(features))?;
    step(
        "VHOST_SET_MEM_TABLE",
        backend.set_mem_table(&memory_table(mem)).map(|_| ()),
    )?;
    for v in vrings {
        let i = v.index;
        step(
            format!("VHOST_SET_VRING_NUM queue {i}"),
            backend.set_vring_num(i, v.size),
        )?;
        let addr = VringConfigData {
            queue_max_size: v.max_size,
            queue_size: v.size,
            flags: 0,
            desc_table_addr: v.desc,
            used_ring_addr: v.used,
            avail_ring_addr: v.avail,
            log_addr: None,
        };
        step(
            format!("VHOST_SET_VRING_ADDR queue {i}"),
            backend.set_vring_addr(i, &addr),
        )?;
        step(
            format!("VHOST_SET_VRING_BASE queue {i}"),
            backend.set_vring_base(i, 0),
        )?;
        step(
            format!("VHOST_SET_VRING_CALL queue {i}"),
            backend.set_vring_call(i, v.call),
        )?;
        step(
            format!("VHOST_SET_VRING_KICK queue {i}"),
            backend.set_vring_kick(i, v.kick),
        )?;
    }
    Ok(())
}

/// Stops `queues` rings (`VHOST_GET_VRING_BASE` stops a ring and returns its position).
pub(crate) fn stop_vrings<B: VhostBackend>(backend: &B, queues: usize) {
    for i in 0..queues {
        if let Err(e) = backend.get_vring_base(i) {
            log::debug!("VHOST_GET_VRING_BASE queue {i}: {e}");
        }
    }
}

/// Reads `data.len()` bytes at `offset` of a device configuration space `config`; bytes past
/// its end read as zero (a driver reading beyond the structure gets no host data).
pub fn read_config(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if start >= config.len() {
        return;
    }
    let n = data.len().min(config.len() - start);
    data[..n].copy_from_slice(&config[start..start + n]);
}

/// A ring taken from the transport's activation, owning its eventfds.
pub(crate) struct OwnedVring {
    index: usize,
    size: u16,
    max_size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    kick: std::sync::Arc<EventFd>,
    call: std::sync::Arc<EventFd>,
}

impl OwnedVring {
    pub(crate) fn setup(&self) -> VringSetup<'_> {
        VringSetup {
            index: self.index,
            size: self.size,
            max_size: self.max_size,
            desc: self.desc,
            avail: self.avail,
            used: self.used,
            kick: &self.kick,
            call: &self.call,
        }
    }
}

/// The rings `wanted` of an activation, each with its kick (the queue's ioeventfd) and its
/// call (the trigger eventfd of the queue's MSI-X vector). A wanted queue the driver did not
/// enable, or one without an MSI-X vector, refuses the activation.
pub(crate) fn vrings(
    a: &virtio::Activation,
    wanted: std::ops::Range<usize>,
) -> Result<Vec<OwnedVring>, virtio::ActivateError> {
    use virtio_queue::QueueT;
    wanted
        .map(|i| {
            let q = a.queues.iter().find(|q| q.index == i).ok_or_else(|| {
                virtio::ActivateError::Queues(format!("queue {i} is not enabled"))
            })?;
            let call = q.interrupt.eventfd().ok_or_else(|| {
                virtio::ActivateError::Queues(format!("queue {i} has no MSI-X vector"))
            })?;
            Ok(OwnedVring {
                index: i,
                size: q.queue.size(),
                max_size: q.queue.max_size(),
                desc: q.queue.desc_table(),
                avail: q.queue.avail_ring(),
                used: q.queue.used_ring(),
                kick: q.kick.clone(),
                call,
            })
        })
        .collect()
}

/// The chip of a vhost device's MSI-X domain: the vhost worker signals each vector's
/// trigger eventfd (its call fd) itself, so KVM injects with no VMM thread in between.
pub struct VhostChip {
    name: String,
    what: String,
}

impl VhostChip {
    /// A chip named `name` ("vhost-net", "vhost-vsock") described as `what` in the view.
    pub fn new(name: &str, what: String) -> Self {
        Self {
            name: name.to_string(),
            what,
        }
    }
}

impl interrupt::MsiChip for VhostChip {
    fn name(&self) -> &str {
        &self.name
    }
    fn host_signalled(&self) -> bool {
        true
    }
    fn describe(&self) -> Option<String> {
        Some(self.what.clone())
    }
}

/// The vhost ioctls a device makes after creation (activation and reset, on the vCPU
/// thread that writes DRIVER_OK or resets the device), for the seccomp allow-lists.
pub fn activation_ioctls() -> Vec<u64> {
    use vhost::vhost_kern::vhost_binding as b;
    [
        b::VHOST_SET_FEATURES(),
        b::VHOST_SET_MEM_TABLE(),
        b::VHOST_SET_VRING_NUM(),
        b::VHOST_SET_VRING_ADDR(),
        b::VHOST_SET_VRING_BASE(),
        b::VHOST_GET_VRING_BASE(),
        b::VHOST_SET_VRING_CALL(),
        b::VHOST_SET_VRING_KICK(),
        b::VHOST_NET_SET_BACKEND(),
        b::VHOST_VSOCK_SET_RUNNING(),
        libc::TUNSETOFFLOAD,
    ]
    .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    #[test]
    fn config_reads_past_the_end_are_zero() {
        let cfg = [1u8, 2, 3, 4];
        let mut b = [0xffu8; 4];
        read_config(&cfg, 2, &mut b);
        assert_eq!(b, [3, 4, 0, 0]);
        read_config(&cfg, 4, &mut b);
        assert_eq!(b, [0; 4]);
        read_config(&cfg, u64::MAX, &mut b);
        assert_eq!(b, [0; 4]);
        let mut one = [0u8; 1];
        read_config(&cfg, 0, &mut one);
        assert_eq!(one, [1]);
    }

    #[test]
    fn memory_table_maps_each_ram_region() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 1 << 20),
            (GuestAddress(1 << 32), 2 << 20),
        ])
        .unwrap();
        let t = memory_table(&mem);
        assert_eq!(t.len(), 2);
        assert_eq!((t[1].guest_phys_addr, t[1].memory_size), (1 << 32, 2 << 20));
        let host = mem.iter().nth(1).unwrap().as_ptr() as u64;
        assert_eq!(t[1].userspace_addr, host);
    }
}
