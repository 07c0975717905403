//! Userspace IOAPIC (82093AA register model) for KVM's split irqchip.
//!
//! Each of the 24 pins owns vector `pin` of an `IO-APIC` [`DeviceDomain`] with fixed GSI
//! `pin`: KVM scans MSI routes of GSIs below the split-irqchip pin count to learn which
//! vectors are level-triggered IOAPIC vectors, and reports their EOIs with
//! `KVM_EXIT_IOAPIC_EOI`, which [`Ioapic::end_of_interrupt`] handles (remote IRR, re-delivery of
//! a still-asserted level line).

use std::sync::{Arc, Mutex, MutexGuard};

use std::time::Duration;

use interrupt::msi::EXT_DEST_ID_SHIFT;
use interrupt::{
    warn_ratelimited, DeviceDomain, DomainKind, InterruptHierarchy, MsiMessage, RateLimiter,
    RequesterId,
};
use log::debug;
use vm_device::bus::MmioAddress;
use vm_device::DeviceMmio;

/// Number of redirection entries (pins).
pub const NUM_PINS: usize = 24;
/// Guest-physical base of the IOAPIC register window.
pub const IOAPIC_BASE: u64 = 0xFEC0_0000;
/// Size of the register window.
pub const IOAPIC_SIZE: u64 = 0x1000;
/// Requester (source) ID the IOAPIC uses for remapping.
pub const IOAPIC_REQUESTER_ID: RequesterId = RequesterId(0xF0F8);
/// Version register value of the classic IOAPIC (no EOI register).
pub const IOAPIC_VERSION_11: u8 = 0x11;
/// Version register value of an IOAPIC with the EOI register and remappable RTEs, used
/// with interrupt remapping (Linux then EOIs level pins through the EOI register).
pub const IOAPIC_VERSION_20: u8 = 0x20;

const IOREGSEL: u64 = 0x00;
const IOWIN: u64 = 0x10;
const IOEOI: u64 = 0x40;
const REG_ID: u32 = 0x00;
const REG_VER: u32 = 0x01;
const REG_ARB: u32 = 0x02;
const REG_REDTBL: u32 = 0x10;

/// Redirection table entry bits.
pub mod rte {
    /// Vector (7:0).
    pub const VECTOR: u64 = 0xff;
    /// Delivery mode (10:8).
    pub const DELIVERY_MODE_SHIFT: u32 = 8;
    /// Destination mode (11): logical when set.
    pub const DEST_LOGICAL: u64 = 1 << 11;
    /// Delivery status (12), read-only.
    pub const DELIVERY_STATUS: u64 = 1 << 12;
    /// Polarity (13): active low when set.
    pub const POLARITY_LOW: u64 = 1 << 13;
    /// Remote IRR (14), read-only.
    pub const REMOTE_IRR: u64 = 1 << 14;
    /// Trigger mode (15): level when set.
    pub const LEVEL: u64 = 1 << 15;
    /// Mask (16).
    pub const MASKED: u64 = 1 << 16;
    /// Destination (63:56).
    pub const DEST_SHIFT: u32 = 56;
    /// Extended destination ID (55:49, Linux's `virt_destid_8_14`): destination bits 14:8
    /// of a compatibility-format entry when the guest uses `KVM_FEATURE_MSI_EXT_DEST_ID`.
    pub const EXT_DEST_SHIFT: u32 = 49;
    /// Interrupt format (48): remappable when set (version 0x20 with remapping).
    pub const REMAPPABLE: u64 = 1 << 48;
    /// Remappable format: interrupt index bits 14:0 (63:49).
    pub const INDEX_SHIFT: u32 = 49;
    /// Remappable format: interrupt index bit 15 (11).
    pub const INDEX_15: u64 = 1 << 11;
    /// Bits the guest may write.
    pub const WRITABLE: u64 = 0xffff_0000_0001_afff;
}

struct State {
    id: u8,
    version: u8,
    ioregsel: u32,
    rtes: [u64; NUM_PINS],
    /// Current input line levels (true = asserted).
    lines: [bool; NUM_PINS],
    /// Interrupts handed to the domain, per pin.
    delivered: [u64; NUM_PINS],
}

/// Told when the guest EOIs a level-triggered pin (a pass-through device's INTx: the EOI
/// deasserts the line and unmasks the host interrupt) and when it masks or unmasks the pin.
/// Called with no IOAPIC lock held: a listener may drive the pin's line.
pub trait EoiListener: Send + Sync {
    /// The guest ended the interrupt of level pin `pin` (its remote IRR is clear).
    fn end_of_interrupt(&self, pin: usize);
    /// The guest masked (`masked`) or unmasked pin `pin`'s redirection entry.
    fn mask_changed(&self, _pin: usize, _masked: bool) {}
}

/// A userspace IOAPIC whose pins are delivered through the interrupt hierarchy.
pub struct Ioapic {
    state: Mutex<State>,
    /// Per pin, who hears of EOIs of that pin (called with no IOAPIC lock held).
    eoi_listeners: Mutex<Vec<Option<Arc<dyn EoiListener>>>>,
    domain: Arc<DeviceDomain>,
    /// Delivery and programming errors follow guest RTE writes (and recur on every
    /// interrupt of the pin): their warnings are rate-limited.
    log_limit: RateLimiter,
}

impl Ioapic {
    /// Creates a version 0x11 IOAPIC with APIC ID `id`, its domain on GSIs `0..NUM_PINS` of
    /// `hierarchy`.
    pub fn new(id: u8, hierarchy: &Arc<InterruptHierarchy>) -> Self {
        Self::with_version(id, hierarchy, IOAPIC_VERSION_11)
    }

    /// Creates an IOAPIC reporting `version` (0x11, or 0x20 for remappable RTEs and the
    /// EOI register).
    pub fn with_version(id: u8, hierarchy: &Arc<InterruptHierarchy>, version: u8) -> Self {
        let domain = hierarchy.create_domain(
            "ioapic",
            DomainKind::Ioapic,
            IOAPIC_REQUESTER_ID,
            NUM_PINS,
            Some(0),
        );
        Self {
            state: Mutex::new(State {
                id,
                version,
                ioregsel: 0,
                rtes: [rte::MASKED; NUM_PINS],
                lines: [false; NUM_PINS],
                delivered: [0; NUM_PINS],
            }),
            eoi_listeners: Mutex::new(vec![None; NUM_PINS]),
            domain,
            log_limit: RateLimiter::new(10, Duration::from_secs(5)),
        }
    }

    /// Has `listener` told of every EOI of level pin `pin` (replacing any earlier one).
    /// Returns false for a nonexistent pin.
    pub fn set_eoi_listener(&self, pin: usize, listener: Arc<dyn EoiListener>) -> bool {
        let mut l = self.eoi_listeners.lock().unwrap_or_else(|e| e.into_inner());
        match l.get_mut(pin) {
            Some(slot) => {
                *slot = Some(listener);
                true
            }
            None => false,
        }
    }

    /// The IOAPIC's interrupt domain.
    pub fn domain(&self) -> &Arc<DeviceDomain> {
        &self.domain
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads redirection entry `pin` (for tests and the hierarchy view).
    pub fn redirection_entry(&self, pin: usize) -> Option<u64> {
        self.lock().rtes.get(pin).copied()
    }

    /// Sets input line `pin` to `asserted`. Edge pins deliver on a rising edge; level pins
    /// deliver while asserted, once per EOI (remote IRR).
    pub fn set_irq(&self, pin: usize, asserted: bool) {
        let mut s = self.lock();
        let Some(&old) = s.lines.get(pin) else {
            warn_ratelimited!(self.log_limit, "ioapic: input on nonexistent pin {pin}");
            return;
        };
        s.lines[pin] = asserted;
        let entry = s.rtes[pin];
        if entry & rte::LEVEL != 0 {
            if asserted {
                self.try_deliver_level(&mut s, pin);
            }
        } else if asserted && !old && entry & rte::MASKED == 0 {
            self.deliver(&mut s, pin);
        }
    }

    /// Raises and lowers an edge-triggered line.
    pub fn pulse(&self, pin: usize) {
        self.set_irq(pin, true);
        self.set_irq(pin, false);
    }

    /// Handles the guest's EOI of `vector` (from `KVM_EXIT_IOAPIC_EOI` or the EOI register):
    /// clears remote IRR of level pins on that vector, tells their EOI listeners (which may
    /// deassert the line) and re-delivers lines still asserted after that.
    pub fn end_of_interrupt(&self, vector: u8) {
        let mut eoied = [false; NUM_PINS];
        let mut s = self.lock();
        for (pin, hit) in eoied.iter_mut().enumerate() {
            let e = s.rtes[pin];
            if (e & rte::VECTOR) as u8 != vector || e & rte::REMOTE_IRR == 0 {
                continue;
            }
            s.rtes[pin] &= !rte::REMOTE_IRR;
            *hit = e & rte::LEVEL != 0;
        }
        drop(s);
        let listeners: Vec<(usize, Arc<dyn EoiListener>)> = {
            let l = self.eoi_listeners.lock().unwrap_or_else(|e| e.into_inner());
            (0..NUM_PINS)
                .filter(|&p| eoied[p])
                .filter_map(|p| l[p].clone().map(|x| (p, x)))
                .collect()
        };
        for (pin, l) in listeners {
            l.end_of_interrupt(pin);
        }
        let mut s = self.lock();
        for (pin, _) in eoied.iter().enumerate().filter(|(_, &hit)| hit) {
            if s.lines[pin] {
                self.try_deliver_level(&mut s, pin);
            }
        }
    }

    /// Current level of input line `pin` (false for a nonexistent pin).
    pub fn line(&self, pin: usize) -> bool {
        self.lock().lines.get(pin).copied().unwrap_or(false)
    }

    fn try_deliver_level(&self, s: &mut State, pin: usize) {
        let e = s.rtes[pin];
        if e & (rte::MASKED | rte::REMOTE_IRR) == 0 {
            s.rtes[pin] |= rte::REMOTE_IRR;
            self.deliver(s, pin);
        }
    }

    fn deliver(&self, s: &mut State, pin: usize) {
        s.delivered[pin] += 1;
        if let Err(e) = self.domain.fire(pin) {
            warn_ratelimited!(self.log_limit, "ioapic: pin {pin}: {e}");
        }
    }

    /// The message a redirection entry describes. A remappable-format entry (version 0x20)
    /// becomes the remappable MSI for its interrupt index, carrying the entry's vector field;
    /// the remap layer translates it.
    pub fn entry_message(entry: u64, version: u8) -> MsiMessage {
        if version >= IOAPIC_VERSION_20 && entry & rte::REMAPPABLE != 0 {
            let index = ((entry >> rte::INDEX_SHIFT) & 0x7fff) as u16
                | (u16::from(entry & rte::INDEX_15 != 0) << 15);
            let mut m = MsiMessage::remappable(index);
            m.data = (entry & rte::VECTOR) as u32;
            return m;
        }
        let mut m = MsiMessage::compose(
            (entry >> rte::DEST_SHIFT) as u32,
            entry & rte::DEST_LOGICAL != 0,
            (entry & rte::VECTOR) as u8,
            ((entry >> rte::DELIVERY_MODE_SHIFT) & 7) as u8,
            entry & rte::LEVEL != 0,
        );
        // Destination bits 14:8 go where the MSI carries them (the vector layer hands
        // them to KVM in its x2APIC form).
        m.address |= ((entry >> rte::EXT_DEST_SHIFT) & 0x7f) << EXT_DEST_ID_SHIFT;
        m
    }

    /// Writes entry `pin`; returns whether its mask bit changed.
    fn write_rte(&self, s: &mut State, pin: usize, value: u64) -> bool {
        let old = s.rtes[pin];
        let mut new = (old & !rte::WRITABLE) | (value & rte::WRITABLE);
        if new & rte::LEVEL == 0 {
            new &= !rte::REMOTE_IRR;
        }
        s.rtes[pin] = new;
        let masked = new & rte::MASKED != 0;
        if let Err(e) = self
            .domain
            .set_message(pin, Some(Self::entry_message(new, s.version)))
            .and_then(|_| self.domain.set_masked(pin, masked))
        {
            warn_ratelimited!(self.log_limit, "ioapic: pin {pin}: {e}");
        }
        debug!("ioapic: pin {pin} rte {new:#018x}");
        // Unmasking a level line that is still asserted delivers it.
        if !masked && new & rte::LEVEL != 0 && s.lines[pin] {
            self.try_deliver_level(s, pin);
        }
        (old ^ new) & rte::MASKED != 0
    }

    fn read_register(&self, s: &State) -> u32 {
        match s.ioregsel {
            REG_ID | REG_ARB => u32::from(s.id & 0xf) << 24,
            REG_VER => ((NUM_PINS as u32 - 1) << 16) | u32::from(s.version),
            r if (REG_REDTBL..REG_REDTBL + 2 * NUM_PINS as u32).contains(&r) => {
                let pin = ((r - REG_REDTBL) / 2) as usize;
                let e = s.rtes[pin];
                if r % 2 == 0 {
                    e as u32
                } else {
                    (e >> 32) as u32
                }
            }
            _ => 0,
        }
    }

    /// Writes the selected register; returns `(pin, masked)` when an entry's mask changed.
    fn write_register(&self, s: &mut State, value: u32) -> Option<(usize, bool)> {
        match s.ioregsel {
            REG_ID => {
                s.id = ((value >> 24) & 0xf) as u8;
            }
            r if (REG_REDTBL..REG_REDTBL + 2 * NUM_PINS as u32).contains(&r) => {
                let pin = ((r - REG_REDTBL) / 2) as usize;
                let old = s.rtes[pin];
                let new = if r % 2 == 0 {
                    (old & !0xffff_ffff) | u64::from(value)
                } else {
                    (old & 0xffff_ffff) | (u64::from(value) << 32)
                };
                if self.write_rte(s, pin, new) {
                    return Some((pin, new & rte::MASKED != 0));
                }
            }
            _ => {} // VER, ARB and unknown registers are read-only / ignored.
        }
        None
    }

    /// Interrupts delivered per pin (for the hierarchy view and tests).
    pub fn delivered(&self, pin: usize) -> u64 {
        self.lock().delivered.get(pin).copied().unwrap_or(0)
    }
}

impl DeviceMmio for Ioapic {
    fn mmio_read(&self, _base: MmioAddress, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if data.len() != 4 {
            return; // Only 32-bit accesses are defined.
        }
        let s = self.lock();
        let v = match offset {
            IOREGSEL => s.ioregsel,
            IOWIN => self.read_register(&s),
            _ => 0,
        };
        data.copy_from_slice(&v.to_le_bytes());
    }

    fn mmio_write(&self, _base: MmioAddress, offset: u64, data: &[u8]) {
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return;
        };
        let v = u32::from_le_bytes(bytes);
        let mut s = self.lock();
        match offset {
            IOREGSEL => s.ioregsel = v & 0xff,
            IOWIN => {
                if let Some((pin, masked)) = self.write_register(&mut s, v) {
                    drop(s);
                    let l =
                        self.eoi_listeners.lock().unwrap_or_else(|e| e.into_inner())[pin].clone();
                    if let Some(l) = l {
                        l.mask_changed(pin, masked);
                    }
                }
            }
            IOEOI if s.version >= IOAPIC_VERSION_20 => {
                drop(s);
                self.end_of_interrupt(v as u8);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use interrupt::{KvmVectorLayer, NoRemap, RecordingBackend};

    fn setup() -> (Arc<RecordingBackend>, Ioapic) {
        let b = Arc::new(RecordingBackend::default());
        let h = InterruptHierarchy::new(
            Arc::new(KvmVectorLayer::new(b.clone(), 24, 4096)),
            Arc::new(NoRemap),
        );
        (b, Ioapic::new(0, &h))
    }

    fn wr(io: &Ioapic, off: u64, v: u32) {
        io.mmio_write(MmioAddress(IOAPIC_BASE), off, &v.to_le_bytes());
    }

    fn rd(io: &Ioapic, off: u64) -> u32 {
        let mut b = [0u8; 4];
        io.mmio_read(MmioAddress(IOAPIC_BASE), off, &mut b);
        u32::from_le_bytes(b)
    }

    fn program(io: &Ioapic, pin: u32, lo: u32, hi: u32) {
        wr(io, IOREGSEL, REG_REDTBL + 2 * pin + 1);
        wr(io, IOWIN, hi);
        wr(io, IOREGSEL, REG_REDTBL + 2 * pin);
        wr(io, IOWIN, lo);
    }

    #[test]
    fn version_register_reports_24_pins() {
        let (_, io) = setup();
        wr(&io, IOREGSEL, REG_VER);
        assert_eq!(rd(&io, IOWIN), 0x0017_0011);
    }

    #[test]
    fn entries_start_masked_and_read_only_bits_ignore_writes() {
        let (_, io) = setup();
        assert_eq!(io.redirection_entry(3), Some(rte::MASKED));
        program(&io, 3, 0x0001_5031, 0x0100_0000); // tries to set delivery status + remote IRR
        let e = io.redirection_entry(3).unwrap();
        assert_eq!(e & (rte::DELIVERY_STATUS | rte::REMOTE_IRR), 0);
        assert_eq!(e >> 56, 1);
    }

    #[test]
    fn edge_pin_delivers_on_rising_edge_only_when_unmasked() {
        let (b, io) = setup();
        io.pulse(4); // masked: lost
        program(&io, 4, 0x24, 0);
        io.pulse(4);
        io.set_irq(4, true);
        io.set_irq(4, true); // no new edge
        assert_eq!(io.delivered(4), 2);
        let routes = b.committed.lock().unwrap().clone();
        assert_eq!(
            routes,
            vec![(4, MsiMessage::compose(0, false, 0x24, 0, false))]
        );
    }

    #[test]
    fn level_pin_sets_remote_irr_and_redelivers_after_eoi_while_asserted() {
        let (_, io) = setup();
        program(&io, 9, 0x8000 | 0x39, 0);
        io.set_irq(9, true);
        assert_eq!(io.delivered(9), 1);
        assert_ne!(io.redirection_entry(9).unwrap() & rte::REMOTE_IRR, 0);
        io.set_irq(9, true); // remote IRR blocks
        assert_eq!(io.delivered(9), 1);
        io.end_of_interrupt(0x39);
        assert_eq!(io.delivered(9), 2);
        io.set_irq(9, false);
        io.end_of_interrupt(0x39);
        assert_eq!(io.delivered(9), 2);
        assert_eq!(io.redirection_entry(9).unwrap() & rte::REMOTE_IRR, 0);
    }

    #[test]
    fn unmasking_asserted_level_line_delivers() {
        let (_, io) = setup();
        program(&io, 10, 0x1_8000 | 0x3a, 0);
        io.set_irq(10, true);
        assert_eq!(io.delivered(10), 0);
        program(&io, 10, 0x8000 | 0x3a, 0);
        assert_eq!(io.delivered(10), 1);
    }

    #[test]
    fn level_route_carries_trigger_bit_for_kvm_eoi_tracking() {
        let (b, io) = setup();
        program(&io, 9, 0x8000 | 0x39, 0x0200_0000);
        io.set_irq(9, true);
        let routes = b.committed.lock().unwrap().clone();
        assert_eq!(routes.len(), 1);
        assert!(routes[0].1.level_triggered());
        assert_eq!(routes[0].1.destination(), 2);
    }

    #[test]
    fn extended_destination_bits_reach_the_route_in_x2apic_form() {
        // APIC ID 300 as Linux writes it with KVM_FEATURE_MSI_EXT_DEST_ID: 300 & 0xff in
        // 63:56, 300 >> 8 in 55:49 (virt_destid_8_14).
        let (b, io) = setup();
        let hi = (44u32 << 24) | (1 << (rte::EXT_DEST_SHIFT - 32));
        program(&io, 5, 0x35, hi);
        io.pulse(5);
        let routes = b.committed.lock().unwrap().clone();
        assert_eq!(routes.len(), 1);
        let m = routes[0].1;
        assert_eq!((m.address_lo(), m.address_hi()), (0xFEE2_C000, 0x100));
        assert_eq!((m.destination(), m.vector()), (300, 0x35));
        // Remappable entries keep bits 63:49 as the IRTE index.
        let e = rte::REMAPPABLE | (0x7fu64 << rte::EXT_DEST_SHIFT);
        assert_eq!(
            Ioapic::entry_message(e, IOAPIC_VERSION_20).remap_index(),
            Some(0x7f)
        );
    }

    #[test]
    fn eoi_register_clears_remote_irr_on_version_20() {
        let b = Arc::new(RecordingBackend::default());
        let h = InterruptHierarchy::new(
            Arc::new(KvmVectorLayer::new(b, 24, 4096)),
            Arc::new(NoRemap),
        );
        let io = Ioapic::with_version(0, &h, IOAPIC_VERSION_20);
        wr(&io, IOREGSEL, REG_VER);
        assert_eq!(rd(&io, IOWIN) & 0xff, 0x20);
        program(&io, 9, 0x8000 | 0x39, 0);
        io.set_irq(9, true);
        io.set_irq(9, false);
        wr(&io, IOEOI, 0x39);
        assert_eq!(io.redirection_entry(9).unwrap() & rte::REMOTE_IRR, 0);
    }

    #[test]
    fn version_11_has_no_eoi_register() {
        let (_, io) = setup();
        program(&io, 9, 0x8000 | 0x39, 0);
        io.set_irq(9, true);
        io.set_irq(9, false);
        wr(&io, IOEOI, 0x39);
        assert_ne!(io.redirection_entry(9).unwrap() & rte::REMOTE_IRR, 0);
    }

    #[test]
    fn remappable_entry_becomes_remappable_message() {
        // Index 0x8005: bits 14:0 in 63:49, bit 15 in bit 11; vector field = pin 3.
        let e = (5u64 << rte::INDEX_SHIFT) | rte::REMAPPABLE | rte::INDEX_15 | rte::LEVEL | 3;
        let m = Ioapic::entry_message(e, IOAPIC_VERSION_20);
        assert_eq!(m.remap_index(), Some(0x8005));
        assert_eq!(m.data, 3);
        // The same bits on a version 0x11 IOAPIC mean a compatibility message.
        assert_eq!(
            Ioapic::entry_message(e, IOAPIC_VERSION_11).remap_index(),
            None
        );
    }

    #[derive(Default)]
    struct Deassert {
        io: std::sync::OnceLock<Arc<Ioapic>>,
        eois: Mutex<Vec<usize>>,
        masks: Mutex<Vec<(usize, bool)>>,
    }

    impl EoiListener for Deassert {
        fn end_of_interrupt(&self, pin: usize) {
            self.eois.lock().unwrap().push(pin);
            // Re-entering the IOAPIC from the listener must not deadlock.
            self.io.get().unwrap().set_irq(pin, false);
        }
        fn mask_changed(&self, pin: usize, masked: bool) {
            self.masks.lock().unwrap().push((pin, masked));
            let _ = self.io.get().unwrap().line(pin);
        }
    }

    #[test]
    fn eoi_listener_hears_level_eois_and_a_deasserted_line_is_not_redelivered() {
        let (_, io) = setup();
        let io = Arc::new(io);
        let l = Arc::new(Deassert::default());
        let _ = l.io.set(io.clone());
        assert!(io.set_eoi_listener(16, l.clone()));
        assert!(!io.set_eoi_listener(NUM_PINS, l.clone()));
        program(
            &io,
            16,
            rte::LEVEL as u32 | rte::POLARITY_LOW as u32 | 0x51,
            0,
        );
        io.set_irq(16, true);
        assert_eq!(io.delivered(16), 1);
        io.end_of_interrupt(0x51);
        assert_eq!(*l.eois.lock().unwrap(), vec![16]);
        assert!(!io.line(16), "the listener deasserted the line");
        assert_eq!(io.delivered(16), 1, "no re-delivery of a deasserted line");
        assert_eq!(io.redirection_entry(16).unwrap() & rte::REMOTE_IRR, 0);
        // The device asserts again (the host re-triggered): delivered at once.
        io.set_irq(16, true);
        assert_eq!(io.delivered(16), 2);
        // An EOI of another vector, or of an edge pin, is not heard.
        program(&io, 5, 0x52, 0);
        assert!(io.set_eoi_listener(5, l.clone()));
        io.pulse(5);
        io.end_of_interrupt(0x52);
        io.end_of_interrupt(0x53);
        assert_eq!(*l.eois.lock().unwrap(), vec![16]);
        program(&io, 16, rte::MASKED as u32 | rte::LEVEL as u32 | 0x51, 0);
        program(&io, 16, rte::MASKED as u32 | rte::LEVEL as u32 | 0x51, 0);
        assert_eq!(
            l.masks.lock().unwrap()[1..],
            [(16, true)],
            "only changes are heard"
        );
    }

    #[test]
    fn without_a_listener_an_asserted_level_line_is_still_redelivered() {
        let (_, io) = setup();
        program(&io, 17, rte::LEVEL as u32 | 0x61, 0);
        io.set_irq(17, true);
        io.end_of_interrupt(0x61);
        assert_eq!(io.delivered(17), 2);
    }

    #[test]
    fn garbage_accesses_do_not_panic() {
        let (_, io) = setup();
        for sel in [0u32, 1, 2, 3, 0x0f, 0x3f, 0x40, 0xff, 0xffff_ffff] {
            wr(&io, IOREGSEL, sel);
            wr(&io, IOWIN, 0xffff_ffff);
            let _ = rd(&io, IOWIN);
        }
        io.mmio_write(MmioAddress(IOAPIC_BASE), 0x10, &[1, 2]);
        let mut b = [0u8; 8];
        io.mmio_read(MmioAddress(IOAPIC_BASE), 0x10, &mut b);
        io.set_irq(1000, true);
        io.end_of_interrupt(0xff);
    }
}
