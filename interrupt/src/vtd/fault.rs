//! Primary fault logging and the two event interrupts (fault event, invalidation
//! completion event).
//!
//! Fault recording follows the spec's primary fault logging (chapter 7, "Primary Fault
//! Logging"): records are written round-robin into the FRCD registers; a record whose F
//! bit is still set means the ring is full and FSTS.PFO is set instead. FSTS.FRI names the
//! first pending record when PPF goes from 0 to 1.
//!
//! Both events follow the same rule (§11.4.7 FECTL, §11.4.9 IECTL): an event condition
//! arises only when the status goes from "nothing pending" to "something pending"; it sets
//! IP, and if IM is clear the message is sent and IP cleared. Unmasking with IP set sends the
//! held message; clearing the status clears IP.

use crate::msi::MsiMessage;

use super::regs::State;
use super::spec::{event_ctl, fsts, ics, FaultReason, FaultRecord};
use super::Effects;

impl State {
    /// Whether any fault record holds an unserviced fault (FSTS.PPF).
    pub(super) fn any_fault_pending(&self) -> bool {
        self.frcd.iter().any(FaultRecord::is_pending)
    }

    /// Whether FSTS has any status that holds the fault event (PFO, PPF, IQE, ICE, ITE).
    fn fault_status_pending(&self) -> bool {
        self.fsts & (fsts::PFO | fsts::IQE | fsts::ICE | fsts::ITE) != 0 || self.any_fault_pending()
    }

    /// Records an interrupt-remapping fault and raises the fault event if it is the first
    /// pending status.
    pub(super) fn record_fault(
        &mut self,
        reason: FaultReason,
        index: u32,
        source_id: u16,
        fx: &mut Effects,
    ) {
        let was_pending = self.fault_status_pending();
        let had_ppf = self.any_fault_pending();
        self.faults_reported += 1;
        let slot = self.next_record;
        if self.frcd[slot].is_pending() {
            self.fsts |= fsts::PFO;
        } else {
            // The index field is 16 bits; larger computed indices (handle + subhandle)
            // are truncated in the record.
            self.frcd[slot] = FaultRecord::interrupt(reason, index as u16, source_id);
            if !had_ppf {
                self.fri = slot as u8;
            }
            self.next_record = (slot + 1) % self.frcd.len();
        }
        if !was_pending {
            self.fault_event(fx);
        }
    }

    /// Sets FSTS.IQE and raises the fault event if it is the first pending status.
    pub(super) fn queue_error(&mut self, fx: &mut Effects) {
        let was_pending = self.fault_status_pending();
        self.fsts |= fsts::IQE;
        if !was_pending {
            self.fault_event(fx);
        }
    }

    /// Called after software cleared fault status: a held event is dropped once nothing is
    /// pending any more.
    pub(super) fn fault_status_changed(&mut self) {
        if !self.fault_status_pending() {
            self.fectl &= !event_ctl::IP;
        }
    }

    fn fault_event_message(&self) -> MsiMessage {
        MsiMessage::new(self.feaddr, self.feuaddr, self.fedata)
    }

    fn completion_event_message(&self) -> MsiMessage {
        MsiMessage::new(self.ieaddr, self.ieuaddr, self.iedata)
    }

    fn fault_event(&mut self, fx: &mut Effects) {
        self.fectl |= event_ctl::IP;
        self.fault_event_unmasked(fx);
    }

    /// Sends a held fault event if the event is (now) unmasked.
    pub(super) fn fault_event_unmasked(&mut self, fx: &mut Effects) {
        if self.fectl & (event_ctl::IM | event_ctl::IP) == event_ctl::IP {
            self.fectl &= !event_ctl::IP;
            fx.msis.push(self.fault_event_message());
        }
    }

    /// Sets ICS.IWC; raises the invalidation completion event unless IWC was already set.
    pub(super) fn wait_completed(&mut self, fx: &mut Effects) {
        if self.ics & ics::IWC != 0 {
            return;
        }
        self.ics |= ics::IWC;
        self.iectl |= event_ctl::IP;
        self.completion_event_unmasked(fx);
    }

    /// Sends a held completion event if the event is (now) unmasked.
    pub(super) fn completion_event_unmasked(&mut self, fx: &mut Effects) {
        if self.iectl & (event_ctl::IM | event_ctl::IP) == event_ctl::IP {
            self.iectl &= !event_ctl::IP;
            fx.msis.push(self.completion_event_message());
        }
    }
}
