//! Fuzzes the userspace IOAPIC: MMIO accesses of any size and offset (IOREGSEL, IOWIN, the
//! EOI register), structured redirection-entry programming, line changes on any pin and
//! EOIs of any vector, on a `RecordingBackend` (no KVM).
//!
//! After every operation it checks:
//! - read-only RTE bits: delivery status is never set, remote IRR only on level entries;
//! - IOWIN reads back exactly the redirection entry; the version register is constant;
//! - each pin's domain vector has the entry's mask and message, is never pending (the IOAPIC
//!   only fires unmasked pins), and counts exactly the IOAPIC's deliveries;
//! - a pin delivered during the operation is unmasked and went out on GSI `pin` with its
//!   entry's message (in KVM's form: extended destination bits moved up), committed
//!   before the fire;
//! - a level pin whose remote IRR was set is not delivered again without an EOI of its
//!   vector, and an edge pin is delivered at most once per operation;
//! - the vector layer's books balance (GSIs = pins, one irqfd each, routes <= allocated).

#![no_main]

use std::sync::Arc;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

use devices::ioapic::{rte, Ioapic, IOAPIC_BASE, IOAPIC_VERSION_11, IOAPIC_VERSION_20, NUM_PINS};
use interrupt::{DeviceDomain, RemapOutcome};
use vm_device::bus::MmioAddress;
use vm_device::DeviceMmio;
use vmm_fuzz::{Recording, KVM_MAX_GSI};

const IOREGSEL: u64 = 0x00;
const IOWIN: u64 = 0x10;
const IOEOI: u64 = 0x40;

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Reg {
    Sel,
    Win,
    Eoi,
    Any(u16),
}

impl Reg {
    fn offset(self) -> u64 {
        match self {
            Reg::Sel => IOREGSEL,
            Reg::Win => IOWIN,
            Reg::Eoi => IOEOI,
            Reg::Any(o) => u64::from(o % 0x1000),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    MmioRead {
        reg: Reg,
        size: u8,
    },
    MmioWrite {
        reg: Reg,
        size: u8,
        value: u64,
    },
    /// IOREGSEL then IOWIN, one 32-bit write each.
    WriteRegister {
        index: u8,
        value: u32,
    },
    /// Both halves of a redirection entry, high half first.
    ProgramRte {
        pin: u8,
        vector: u8,
        mode: u8,
        logical: bool,
        active_low: bool,
        level: bool,
        masked: bool,
        dest: u8,
        /// Interrupt-format bit 48 (remappable on version 0x20) and index bits 55:49.
        remappable: bool,
        index: u8,
    },
    SetIrq {
        pin: u8,
        asserted: bool,
    },
    Pulse {
        pin: u8,
    },
    Eoi {
        vector: u8,
    },
    /// EOI of the vector of `pin`'s entry.
    EoiPin {
        pin: u8,
    },
}

impl Op {
    /// The vector this operation EOIs, if it is an EOI.
    fn eoi_vector(&self, entries: &[u64; NUM_PINS], version: u8) -> Option<u8> {
        match *self {
            Op::Eoi { vector } => Some(vector),
            Op::EoiPin { pin } => Some(entries[usize::from(pin) % NUM_PINS] as u8),
            // Only a version 0x20 IOAPIC has the EOI register.
            Op::MmioWrite { reg, size, value }
                if reg.offset() == IOEOI && size % 9 == 4 && version >= IOAPIC_VERSION_20 =>
            {
                Some(value as u8)
            }
            _ => None,
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// Version 0x20: EOI register and remappable entries (which `NoRemap` blocks).
    version_20: bool,
    ops: Vec<Op>,
}

fn pin_arg(pin: u8) -> usize {
    // Mostly real pins, sometimes nonexistent ones.
    if pin >= 0xf0 {
        usize::from(pin)
    } else {
        usize::from(pin) % NUM_PINS
    }
}

struct Fixture {
    rec: Recording,
    ioapic: Ioapic,
    domain: Arc<DeviceDomain>,
    version: u8,
}

#[derive(Clone)]
struct State {
    entries: [u64; NUM_PINS],
    delivered: [u64; NUM_PINS],
    /// Domain drop counters.
    dropped: [u64; NUM_PINS],
}

impl Fixture {
    fn write(&self, offset: u64, data: &[u8]) {
        self.ioapic
            .mmio_write(MmioAddress(IOAPIC_BASE), offset, data);
    }

    fn write32(&self, offset: u64, v: u32) {
        self.write(offset, &v.to_le_bytes());
    }

    fn read32(&self, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        self.ioapic
            .mmio_read(MmioAddress(IOAPIC_BASE), offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn state(&self) -> State {
        let mut s = State {
            entries: [0; NUM_PINS],
            delivered: [0; NUM_PINS],
            dropped: [0; NUM_PINS],
        };
        for (pin, v) in self.domain.snapshot().iter().enumerate() {
            s.dropped[pin] = v.dropped;
        }
        for pin in 0..NUM_PINS {
            s.entries[pin] = self.ioapic.redirection_entry(pin).expect("pin exists");
            s.delivered[pin] = self.ioapic.delivered(pin);
        }
        s
    }

    fn run(&self, op: &Op, before: &State) {
        match *op {
            Op::MmioRead { reg, size } => {
                let mut d = vec![0u8; usize::from(size % 9)];
                self.ioapic
                    .mmio_read(MmioAddress(IOAPIC_BASE), reg.offset(), &mut d);
            }
            Op::MmioWrite { reg, size, value } => {
                let d = value.to_le_bytes();
                self.write(reg.offset(), &d[..usize::from(size % 9)]);
            }
            Op::WriteRegister { index, value } => {
                self.write32(IOREGSEL, u32::from(index));
                self.write32(IOWIN, value);
            }
            Op::ProgramRte {
                pin,
                vector,
                mode,
                logical,
                active_low,
                level,
                masked,
                dest,
                remappable,
                index,
            } => {
                let pin = u32::from(pin) % NUM_PINS as u32;
                let mut lo = u32::from(vector) | (u32::from(mode & 7) << 8);
                lo |= u32::from(logical) << 11;
                lo |= u32::from(active_low) << 13;
                lo |= u32::from(level) << 15;
                lo |= u32::from(masked) << 16;
                self.write32(IOREGSEL, 0x10 + 2 * pin + 1);
                let hi = (u32::from(dest) << 24)
                    | (u32::from(index & 0x7f) << 17)
                    | (u32::from(remappable) << 16);
                self.write32(IOWIN, hi);
                self.write32(IOREGSEL, 0x10 + 2 * pin);
                self.write32(IOWIN, lo);
            }
            Op::SetIrq { pin, asserted } => self.ioapic.set_irq(pin_arg(pin), asserted),
            Op::Pulse { pin } => self.ioapic.pulse(pin_arg(pin)),
            Op::Eoi { vector } => self.ioapic.end_of_interrupt(vector),
            Op::EoiPin { pin } => {
                let v = before.entries[usize::from(pin) % NUM_PINS] as u8;
                self.ioapic.end_of_interrupt(v);
            }
        }
    }

    fn check(&self, before: &State, op: &Op) -> State {
        let after = self.state();
        let snap = self.domain.snapshot();
        let committed = self.rec.backend.committed.lock().unwrap().clone();
        let gsis = self.rec.check_books(std::slice::from_ref(&self.domain));
        assert!(committed.iter().all(|(g, _)| gsis.contains(g)));
        assert!(
            self.rec.backend.signalled.lock().unwrap().is_empty(),
            "pins never use the slow path"
        );

        // The version register and IOREGSEL-independent reads.
        let sel = self.read32(IOREGSEL);
        self.write32(IOREGSEL, 0x01);
        assert_eq!(
            self.read32(IOWIN),
            0x0017_0000 | u32::from(self.version),
            "version register"
        );
        self.write32(IOREGSEL, sel);
        assert_eq!(self.read32(IOREGSEL), sel);

        let eoi = op.eoi_vector(&before.entries, self.version);
        assert_eq!(snap.len(), NUM_PINS);
        for (pin, s) in snap.iter().enumerate() {
            let e = after.entries[pin];
            assert_eq!(
                e & rte::DELIVERY_STATUS,
                0,
                "pin {pin}: delivery status set"
            );
            if e & rte::LEVEL == 0 {
                assert_eq!(
                    e & rte::REMOTE_IRR,
                    0,
                    "pin {pin}: remote IRR on an edge entry"
                );
            }
            // IOWIN reads back the entry (restoring IOREGSEL afterwards).
            self.write32(IOREGSEL, 0x10 + 2 * pin as u32);
            let lo = self.read32(IOWIN);
            self.write32(IOREGSEL, 0x10 + 2 * pin as u32 + 1);
            let hi = self.read32(IOWIN);
            self.write32(IOREGSEL, sel);
            assert_eq!(
                (u64::from(hi) << 32) | u64::from(lo),
                e,
                "pin {pin}: IOWIN read-back"
            );

            assert_eq!(s.masked, e & rte::MASKED != 0, "pin {pin}: domain mask");
            assert!(!s.pending, "pin {pin}: IOAPIC domain vector pending");
            let m = Ioapic::entry_message(e, self.version);
            if s.message.is_some() || e != rte::MASKED {
                assert_eq!(s.message, Some(m), "pin {pin}: message");
            }
            assert_eq!(
                s.fires, after.delivered[pin],
                "pin {pin}: domain fires vs IOAPIC"
            );
            assert_eq!(s.deliveries + s.dropped, s.fires, "pin {pin}: {s:?}");
            if let Some(g) = s.gsi {
                assert_eq!(g as usize, pin, "pin {pin} on GSI {g}");
            }

            let delivered = after.delivered[pin] - before.delivered[pin];
            if delivered == 0 {
                continue;
            }
            assert_eq!(
                e & rte::MASKED,
                0,
                "pin {pin} delivered while masked ({op:?})"
            );
            let remappable = self.version >= IOAPIC_VERSION_20 && e & rte::REMAPPABLE != 0;
            if remappable {
                // No remap layer: a remappable-format entry is blocked and the fire dropped
                // (its old route is removed, but only committed with the next routed fire).
                assert_eq!(s.remapped, Some(RemapOutcome::Blocked), "pin {pin}: {s:?}");
                let d = before.dropped[pin];
                assert_eq!(
                    s.dropped - d,
                    delivered,
                    "pin {pin}: blocked fire not dropped"
                );
            } else {
                assert_eq!(s.remapped, Some(RemapOutcome::Deliver(m)));
                assert!(
                    committed.contains(&(pin as u32, m.kvm_format())),
                    "pin {pin} fired before its route {m} was committed: {committed:?}"
                );
            }
            let old = before.entries[pin];
            if old & rte::LEVEL != 0 && old & rte::REMOTE_IRR != 0 {
                assert_eq!(
                    eoi,
                    Some(old as u8),
                    "level pin {pin} re-delivered with remote IRR set and no EOI ({op:?})"
                );
            }
            assert_eq!(
                delivered, 1,
                "pin {pin} delivered {delivered} times by one {op:?}"
            );
            if e & rte::LEVEL != 0 {
                assert_ne!(
                    e & rte::REMOTE_IRR,
                    0,
                    "level pin {pin} delivered without IRR"
                );
            }
        }
        after
    }
}

fuzz_target!(|input: Input| {
    let rec = Recording::no_remap(NUM_PINS as u32, KVM_MAX_GSI);
    let version = if input.version_20 {
        IOAPIC_VERSION_20
    } else {
        IOAPIC_VERSION_11
    };
    let ioapic = Ioapic::with_version(0, &rec.hierarchy, version);
    let domain = ioapic.domain().clone();
    let f = Fixture {
        rec,
        ioapic,
        domain,
        version,
    };
    let mut state = f.state();
    for op in &input.ops {
        f.run(op, &state);
        state = f.check(&state, op);
    }
    let Fixture {
        rec,
        ioapic,
        domain,
        ..
    } = f;
    drop((ioapic, domain));
    rec.check_released();
});
