//! Translation of interrupt requests through the interrupt-remapping table (§5.1.4,
//! "Interrupt-Remapping Hardware Operation").
//!
//! The translated message uses KVM's x2APIC API encoding (32-bit destinations, IDs above
//! 255 in address bits 63:40): address `0xFEE00000 | dst[7:0] << 12 | RH << 3 | DM << 2`,
//! upper address `dst & 0xFFFFFF00`, data `vector | DLM << 8 | 1 << 14 | TM << 15`.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::msi::MsiMessage;
use crate::remap::RequesterId;

use super::regs::State;
use super::spec::{gsts, request, FaultReason, Irte, SourceValidation};

/// What translation made of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Translation {
    /// Deliver this message.
    Deliver(MsiMessage),
    /// Not an interrupt (or IR disabled and remappable): drop without a fault.
    Blocked,
    /// Drop and report a fault (unless FPD suppresses a qualified one).
    Fault {
        /// Fault reason.
        reason: FaultReason,
        /// Interrupt index computed from the request.
        index: u32,
        /// The IRTE's FPD bit (false when no IRTE was read).
        fpd: bool,
    },
}

impl Translation {
    fn fault(reason: FaultReason, index: u32) -> Self {
        Translation::Fault {
            reason,
            index,
            fpd: false,
        }
    }
}

/// Source-ID verification (§9.10, SVT/SQ fields).
fn source_id_matches(irte: &Irte, requester: RequesterId) -> bool {
    let sid = irte.source_id();
    match irte.source_validation() {
        SourceValidation::None => true,
        SourceValidation::RequesterId => {
            let mask: u16 = match irte.source_qualifier() {
                0 => 0xFFFF,
                1 => 0xFFFB,
                2 => 0xFFF9,
                _ => 0xFFF8,
            };
            requester.0 & mask == sid & mask
        }
        SourceValidation::BusRange => {
            let bus = requester.0 >> 8;
            (sid >> 8) <= bus && bus <= (sid & 0xFF)
        }
        SourceValidation::Reserved => false,
    }
}

impl State {
    /// Translates `message` written by `requester`. Reads the IRTE from guest memory in one
    /// 16-byte access; never mutates state (fault recording is up to the caller).
    pub(super) fn translate(
        &self,
        mem: &GuestMemoryMmap,
        requester: RequesterId,
        message: MsiMessage,
    ) -> Translation {
        if !self.ir_enabled() {
            // Like no IOMMU: compatibility-format interrupts pass, the rest is no interrupt.
            return if message.targets_interrupt_window() && !message.is_remappable() {
                Translation::Deliver(message)
            } else {
                Translation::Blocked
            };
        }
        if message.address & request::WINDOW_MASK != request::WINDOW {
            // Not an interrupt request at all, but an ordinary memory write.
            return Translation::Blocked;
        }
        let Some(index) = message.remap_index() else {
            if self.gsts & gsts::CFIS == 0 {
                return Translation::fault(FaultReason::CompatibilityBlocked, 0);
            }
            return if message.targets_interrupt_window() {
                Translation::Deliver(message)
            } else {
                Translation::Blocked
            };
        };
        let shv = message.address & request::SHV != 0;
        if message.address_hi() != 0 || (shv && message.data & request::SHV_DATA_RESERVED != 0) {
            return Translation::fault(FaultReason::ReservedRequest, index);
        }
        let Some(table) = self.table else {
            // IRE without SIRTP: there is no table to read.
            return Translation::fault(FaultReason::TableReadFailed, index);
        };
        if index >= table.entries {
            return Translation::fault(FaultReason::IndexOutOfRange, index);
        }
        let Some(addr) = table
            .base
            .checked_add(u64::from(index) * Irte::SIZE)
            .map(GuestAddress)
        else {
            return Translation::fault(FaultReason::TableReadFailed, index);
        };
        let mut raw = [0u8; 16];
        if mem.read_slice(&mut raw, addr).is_err() {
            return Translation::fault(FaultReason::TableReadFailed, index);
        }
        let irte = Irte::from_bytes(raw);
        let fpd = irte.fault_processing_disabled();
        let fault = |reason| Translation::Fault { reason, index, fpd };
        if !irte.present() {
            return fault(FaultReason::NotPresent);
        }
        // Posted format needs CAP.PI, which this unit does not report.
        if irte.has_reserved_bits(table.eime) || irte.posted() || irte.delivery_mode_reserved() {
            return fault(FaultReason::ReservedIrte);
        }
        if !source_id_matches(&irte, requester) {
            return fault(FaultReason::SourceIdMismatch);
        }
        let mut out = MsiMessage::compose(
            irte.destination(table.eime),
            irte.logical(),
            irte.vector(),
            irte.delivery_mode(),
            irte.level(),
        );
        if irte.redirection_hint() {
            out.address |= 1 << 3;
        }
        Translation::Deliver(out)
    }
}
