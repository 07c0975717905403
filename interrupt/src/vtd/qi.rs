//! Queued invalidation (§6.5.2): the queue is drained synchronously, from IQH to IQT, on
//! every IQT write, when QIE is enabled and when IQE is cleared. A wait descriptor is a
//! barrier: draining pauses before it while invalidations ahead of it still have vectors to
//! re-translate, so its status write and IWC come after the new routes are in place.
//!
//! Work per call is bounded by the queue size (head and tail are both below it). A
//! descriptor that cannot be read, has an unknown type or reserved bits set, or a wait
//! whose status write fails, sets FSTS.IQE and stops with IQH on that descriptor
//! (§6.5.2.10).

use std::fmt;

use log::debug;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::remap::RetranslateScope;

use super::regs::{Queue, State};
use super::spec::{desc, fsts, gsts, iq};
use super::Effects;

/// Why queue processing stopped with IQE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum QueueError {
    /// IQT points at or beyond the end of the queue.
    TailOutOfRange(u32),
    /// The descriptor is not in guest RAM.
    ReadFailed(u64),
    /// Unknown or unsupported descriptor type.
    UnknownType(u8),
    /// Reserved bits set in a descriptor of this type.
    ReservedBits(u8),
    /// The wait descriptor's status address is not in guest RAM.
    StatusWriteFailed(u64),
}

impl fmt::Display for QueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueueError::TailOutOfRange(t) => write!(f, "tail {t} beyond the queue"),
            QueueError::ReadFailed(a) => write!(f, "descriptor at {a:#x} not readable"),
            QueueError::UnknownType(t) => write!(f, "unsupported descriptor type {t}"),
            QueueError::ReservedBits(t) => write!(f, "reserved bits in type-{t} descriptor"),
            QueueError::StatusWriteFailed(a) => write!(f, "status address {a:#x} not writable"),
        }
    }
}

/// What became of the descriptor at IQH.
enum Step {
    /// Executed; IQH moves on.
    Done,
    /// A wait descriptor that must wait for pending re-translation; IQH stays on it.
    Barrier,
}

impl State {
    /// Runs descriptors from IQH towards IQT if the queue is enabled and not stopped by an
    /// error. Returns `true` when it stopped early, with IQH on a wait descriptor, because
    /// re-translation collected in `fx` must be carried out before that wait may complete:
    /// the caller applies `fx` and calls again.
    pub(super) fn process_queue(&mut self, mem: &GuestMemoryMmap, fx: &mut Effects) -> bool {
        if self.gsts & gsts::QIES == 0 || self.fsts & fsts::IQE != 0 {
            return false;
        }
        let Some(queue) = self.queue else {
            return false;
        };
        let tail = ((self.iqt >> iq::INDEX_SHIFT) & iq::INDEX_MASK) as u32;
        if tail >= queue.entries {
            self.stop_queue(QueueError::TailOutOfRange(tail), fx);
            return false;
        }
        while self.iqh != tail {
            let result = Self::read_descriptor(mem, queue, self.iqh).and_then(|(qw0, qw1)| {
                if desc::type_of(qw0) == desc::TYPE_WAIT && fx.retranslation_pending() {
                    return Ok(Step::Barrier);
                }
                self.execute(qw0, qw1, mem, fx).map(|()| Step::Done)
            });
            match result {
                Ok(Step::Done) => {}
                Ok(Step::Barrier) => return true,
                Err(e) => {
                    self.stop_queue(e, fx);
                    return false;
                }
            }
            self.descriptors += 1;
            self.iqh = (self.iqh + 1) % queue.entries;
        }
        false
    }

    fn stop_queue(&mut self, error: QueueError, fx: &mut Effects) {
        debug!(
            "vt-d: invalidation queue error at head {}: {error}",
            self.iqh
        );
        self.queue_error(fx);
    }

    fn read_descriptor(
        mem: &GuestMemoryMmap,
        queue: Queue,
        index: u32,
    ) -> Result<(u64, u64), QueueError> {
        let addr = queue
            .base
            .checked_add(u64::from(index) * iq::DESCRIPTOR_SIZE)
            .ok_or(QueueError::ReadFailed(queue.base))?;
        let mut buf = [0u8; 16];
        mem.read_slice(&mut buf, GuestAddress(addr))
            .map_err(|_| QueueError::ReadFailed(addr))?;
        let (lo, hi) = buf.split_at(8);
        let qword = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or_default());
        Ok((qword(lo), qword(hi)))
    }

    fn execute(
        &mut self,
        qw0: u64,
        qw1: u64,
        mem: &GuestMemoryMmap,
        fx: &mut Effects,
    ) -> Result<(), QueueError> {
        match desc::type_of(qw0) {
            // Context-cache and IOTLB invalidations only concern DMA remapping, which this
            // unit does not do: nothing is cached, so they complete at once.
            desc::TYPE_CONTEXT_CACHE | desc::TYPE_IOTLB => Ok(()),
            desc::TYPE_IEC => {
                if qw0 & desc::IEC_QW0_RESERVED != 0 || qw1 != 0 {
                    return Err(QueueError::ReservedBits(desc::TYPE_IEC));
                }
                // With IR disabled every remappable message is blocked whatever the table
                // says, so an invalidation changes no route.
                if self.ir_enabled() {
                    fx.retranslate(iec_scope(qw0));
                }
                Ok(())
            }
            desc::TYPE_WAIT => {
                if qw0 & desc::WAIT_QW0_RESERVED != 0 {
                    return Err(QueueError::ReservedBits(desc::TYPE_WAIT));
                }
                // Everything before this descriptor is complete: earlier invalidations'
                // re-translation was carried out before this wait ran (see
                // `process_queue`), so FN and PD need no action.
                if qw0 & desc::WAIT_SW != 0 {
                    let addr = qw1 & desc::WAIT_STATUS_ADDR_MASK;
                    let data = (qw0 >> desc::WAIT_STATUS_DATA_SHIFT) as u32;
                    mem.write_slice(&data.to_le_bytes(), GuestAddress(addr))
                        .map_err(|_| QueueError::StatusWriteFailed(addr))?;
                }
                if qw0 & desc::WAIT_IF != 0 {
                    self.wait_completed(fx);
                }
                Ok(())
            }
            t => Err(QueueError::UnknownType(t)),
        }
    }
}

/// The IRTE range an interrupt-entry-cache invalidation covers.
pub(super) fn iec_scope(qw0: u64) -> RetranslateScope {
    if qw0 & desc::IEC_INDEX_SELECTIVE == 0 {
        return RetranslateScope::All;
    }
    let im = ((qw0 >> desc::IEC_IM_SHIFT) & 0x1F) as u32;
    let index = ((qw0 >> desc::IEC_IIDX_SHIFT) & 0xFFFF) as u32;
    // Masks beyond the 16-bit index space cover every entry.
    let count = 1u32 << im.min(16);
    RetranslateScope::IrteRange {
        start: index & !(count - 1),
        count,
    }
}
