//! virtio-blk (virtio 1.2 §5.2) over a raw image.
//!
//! One request queue per vCPU (`VIRTIO_BLK_F_MQ`), each served by its own worker thread.
//! The workers are created with the device (before the VMM's threads are confined) and wait
//! on epoll: a control eventfd, and after activation their queue's notification eventfd
//! (the KVM ioeventfd), so a guest kick wakes the worker directly. A completion is one
//! signal of the queue's MSI-X vector from the worker.

pub mod disk;
pub mod request;
mod worker;

use std::sync::Arc;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ,
    VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;

use crate::device::{ActivateError, Activation, VirtioDevice};
use crate::spec::features::{RING_EVENT_IDX, RING_INDIRECT_DESC};
pub use disk::{DiskError, DiskImage};
use request::{MAX_DWZ_SECTORS, MAX_DWZ_SEGMENTS};
use worker::Worker;

/// Size of each request queue.
pub const QUEUE_SIZE: u16 = 256;

/// Errors creating the device (host-facing).
#[derive(Debug, thiserror::Error)]
pub enum BlkError {
    /// The image could not be opened.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// A worker thread or its eventfds could not be created.
    #[error("virtio-blk worker: {0}")]
    Worker(#[source] std::io::Error),
    /// Queue count outside 1..=1024.
    #[error("virtio-blk needs 1..=1024 queues, got {0}")]
    Queues(usize),
}

/// The virtio-blk device model.
pub struct Block {
    name: String,
    disk: Arc<DiskImage>,
    workers: Vec<Worker>,
}

impl Block {
    /// A block device over `disk` with `queues` request queues (one worker thread each);
    /// `label` names the workers (`<label>-q<N>`).
    pub fn new(disk: DiskImage, queues: usize, label: &str) -> Result<Self, BlkError> {
        if queues == 0 || queues > crate::transport::MAX_QUEUES {
            return Err(BlkError::Queues(queues));
        }
        let disk = Arc::new(disk);
        let workers = (0..queues)
            .map(|i| Worker::spawn(format!("{label}-q{i}"), disk.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(BlkError::Worker)?;
        Ok(Self {
            name: "virtio-blk".into(),
            disk,
            workers,
        })
    }

    /// The image.
    pub fn disk(&self) -> &DiskImage {
        &self.disk
    }

    /// The configuration space (`struct virtio_blk_config`, §5.2.4) up to the write-zeroes
    /// fields.
    fn config_bytes(&self) -> [u8; 60] {
        let mut c = [0u8; 60];
        let mut put = |off: usize, b: &[u8]| c[off..off + b.len()].copy_from_slice(b);
        put(0, &self.disk.sectors().to_le_bytes());
        // seg_max: the queue size minus header and status descriptors.
        put(12, &u32::from(QUEUE_SIZE - 2).to_le_bytes());
        put(20, &512u32.to_le_bytes());
        put(34, &(self.workers.len() as u16).to_le_bytes());
        put(36, &MAX_DWZ_SECTORS.to_le_bytes());
        put(40, &MAX_DWZ_SEGMENTS.to_le_bytes());
        put(44, &1u32.to_le_bytes());
        put(48, &MAX_DWZ_SECTORS.to_le_bytes());
        put(52, &MAX_DWZ_SEGMENTS.to_le_bytes());
        put(56, &[1]);
        c
    }
}

/// The chip of a virtio-blk MSI-X domain: the queue workers signal each vector's trigger
/// eventfd themselves (one write per completion batch), KVM injects from it.
struct BlkChip;

impl interrupt::MsiChip for BlkChip {
    fn name(&self) -> &str {
        "virtio-blk"
    }
    fn host_signalled(&self) -> bool {
        true
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE; self.workers.len()]
    }

    fn features(&self) -> u64 {
        let bit = |b: u32| 1u64 << b;
        let mut f = RING_EVENT_IDX
            | RING_INDIRECT_DESC
            | bit(VIRTIO_BLK_F_SEG_MAX)
            | bit(VIRTIO_BLK_F_BLK_SIZE)
            | bit(VIRTIO_BLK_F_FLUSH)
            | bit(VIRTIO_BLK_F_MQ);
        if self.disk.readonly() {
            f |= bit(VIRTIO_BLK_F_RO);
        } else {
            f |= bit(VIRTIO_BLK_F_DISCARD) | bit(VIRTIO_BLK_F_WRITE_ZEROES);
        }
        f
    }

    fn pci_class(&self) -> (u8, u8) {
        // Mass storage, other.
        (0x01, 0x80)
    }

    fn msi_chip(&self) -> Option<Arc<dyn interrupt::MsiChip>> {
        Some(Arc::new(BlkChip))
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let c = self.config_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            if let Some(v) = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|o| c.get(o))
            {
                *b = *v;
            }
        }
    }

    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        if a.queues.is_empty() {
            return Err(ActivateError::Queues("no request queue enabled".into()));
        }
        for q in a.queues {
            // The transport hands out indices of existing queues only.
            if let Some(w) = self.workers.get(q.index) {
                w.start(q, a.mem.clone());
            }
        }
        Ok(())
    }

    fn reset(&mut self) {
        for w in &self.workers {
            w.stop();
        }
    }
}

/// What one [`process_queue`] pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Served {
    /// Requests completed.
    pub requests: usize,
    /// The driver asked to be notified of these completions (`VIRTIO_RING_F_EVENT_IDX` or
    /// the ring flags).
    pub notify: bool,
    /// The budget ran out with requests still available: call again (after checking for
    /// a reset). A driver that keeps its ring full, or lays its rings over each other so
    /// that completions make new requests appear, cannot hold a worker forever.
    pub more: bool,
}

/// Serves up to `budget` available requests of `queue` against `disk`.
/// An error means the queue's rings are corrupt (e.g. an available index that runs ahead
/// by more than the queue size): the caller stops serving it until the driver resets.
pub fn process_queue(
    disk: &DiskImage,
    mem: &crate::GuestMemory,
    queue: &mut virtio_queue::Queue,
    budget: usize,
) -> Result<Served, virtio_queue::Error> {
    use virtio_queue::{QueueOwnedT, QueueT};
    let mut served = Served::default();
    // Each pass counts too: rings laid over each other can make the notification flag
    // writes themselves move the available index.
    let mut passes = 0;
    loop {
        passes += 1;
        if passes > budget {
            served.more = true;
            break;
        }
        queue.disable_notification(mem)?;
        // `iter` reports a bad available index as an error.
        while let Some(chain) = queue.iter(mem)?.next() {
            let head = chain.head_index();
            let descs: Vec<_> = chain.collect();
            let len = request::process(disk, mem, &descs);
            queue.add_used(mem, head, len)?;
            served.requests += 1;
            if served.requests + passes > budget {
                served.more = true;
                break;
            }
        }
        if served.more || !queue.enable_notification(mem)? {
            break;
        }
    }
    served.notify = served.requests > 0 && queue.needs_notification(mem)?;
    Ok(served)
}

/// Requests a worker serves before it looks at its control channel again.
pub const WORKER_BUDGET: usize = 4 * QUEUE_SIZE as usize;

#[cfg(test)]
mod tests;
