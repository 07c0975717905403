//! KVM integration tier for interrupt remapping: the emulated VT-d unit
//! (`interrupt::VtdUnit`) as the remap layer of the hierarchy, driven through its registers
//! the way Linux's `intel_irq_remapping` drives it (QI, IRTA with EIME, SIRTP, global IEC,
//! IRE), with its remapping table and invalidation queue in the test guest's RAM, and the
//! translated messages delivered as KVM routes to the real-mode guest of `common/`.
//!
//! Also here: the VMM's firmware-free reset stub (`vmm::boot::RESET_STUB`) run in a real-mode
//! vCPU.
//!
//! Faults: the unit records a fault per interrupt request that remapping blocks (routes are
//! computed silently). The fault tests fire each bad vector exactly once after unmasking and
//! expect one fault; `blocked_fires_after_invalidation_record_faults` checks that requests
//! blocked after an invalidation record one fault each.
//!
//! `VMM_SKIP_KVM_TESTS=1` reports every test as ignored.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Instant;

use common::{irte, max_vcpu_id, KvmGuest, VcpuHooks, VtdDriver, IOAPIC_PINS};
use devices::ioapic::{rte, Ioapic, IOAPIC_BASE, IOAPIC_REQUESTER_ID, IOAPIC_VERSION_20};
use interrupt::vtd::spec::{fsts, FaultRecord, Irte};
use interrupt::{
    DeviceDomain, DomainKind, InterruptHierarchy, MsiMessage, RemapOutcome, RequesterId,
};
use vm_device::bus::MmioAddress;
use vm_device::DeviceMmio;

/// The test device, 00:03.0.
const DEV: RequesterId = RequesterId(0x18);
/// Guest vector of the unit's fault event.
const FAULT_VECTOR: u8 = 0x70;

fn done(test: &str, start: Instant) {
    eprintln!("{test}: {:.3} s", start.elapsed().as_secs_f64());
}

/// The fixture with its vCPU running and a VT-d unit enabled like Linux does in x2APIC mode,
/// fault events going to [`FAULT_VECTOR`] on the vCPU.
fn remapping_guest(vcpu_id: u32) -> (KvmGuest, VtdDriver) {
    let mut g = KvmGuest::with_vcpu_id(vcpu_id);
    g.start(VcpuHooks::default());
    let mut v = VtdDriver::new(&g);
    v.enable(true, FAULT_VECTOR, g.apic_id());
    (g, v)
}

/// An MSI-X domain of `n` vectors on [`DEV`].
fn msix_domain(h: &Arc<InterruptHierarchy>, n: usize) -> Arc<DeviceDomain> {
    h.create_domain("kvm-remap-dev", DomainKind::MsiX, DEV, n, None)
}

/// Programs and unmasks vector `i` of `d` with `m`.
fn activate(d: &DeviceDomain, i: usize, m: MsiMessage) {
    d.set_message(i, Some(m)).unwrap();
    d.set_masked(i, false).unwrap();
}

/// The message the unit should install for a fixed, edge, physical interrupt.
fn fixed(dest: u32, vector: u8) -> RemapOutcome {
    RemapOutcome::Deliver(MsiMessage::compose(dest, false, vector, 0, false))
}

/// Linux's MSI-X message for IRTE block `handle`: remappable, SHV = 1, data = subhandle.
fn shv_message(handle: u16, subhandle: u16) -> MsiMessage {
    let address = 0xFEE0_0000 | (u32::from(handle & 0x7fff) << 5) | (1 << 4) | (1 << 3);
    MsiMessage::new(address, 0, u32::from(subhandle))
}

/// 1. A remappable MSI reaches the vector of its IRTE: 50 fires, exactly 50 interrupts on
///    that vector and nothing anywhere else; no fault.
fn remappable_msi_reaches_the_irte_vector() {
    const TEST: &str = "remappable_msi_reaches_the_irte_vector";
    const FIRES: u64 = 50;
    let t = Instant::now();
    let (g, mut v) = remapping_guest(0);
    v.set_irte(5, irte(0x41, 0, DEV));
    let d = msix_domain(&v.hierarchy, 1);
    activate(&d, 0, MsiMessage::remappable(5));
    let s = d.vector_snapshot(0).unwrap();
    assert_eq!(s.remapped, Some(fixed(0, 0x41)), "{s:?}");
    for i in 1..=FIRES {
        d.fire(0).unwrap();
        g.wait_count(0x41, i);
    }
    g.assert_counts(&[(0x41, FIRES)]);
    let s = d.vector_snapshot(0).unwrap();
    assert_eq!((s.fires, s.deliveries, s.dropped), (FIRES, FIRES, 0));
    assert_eq!(v.unit.fault_count(), 0);
    assert_eq!(v.fault_status() & (fsts::PPF | fsts::PFO | fsts::IQE), 0);
    let st = v.hierarchy.vector_layer().stats();
    assert_eq!((st.routes, st.slow_path_signals), (1, 0), "{st:?}");
    done(TEST, t);
}

/// Sets the flag when dropped (stops a firing thread however the scope ends).
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// 2. IRTE 5 (vector A) is re-pointed from 0x41 to 0x51 with an index-selective IEC while a
///    thread fires A continuously; IRTE 6 (vector B, Linux's SHV format: handle 4 +
///    subhandle 2) keeps 0x42. Every fire of A is counted once on 0x41 or 0x51, fires
///    started after the IEC returned all land on 0x51, and only A's route changed.
fn irte_change_with_selective_iec_reroutes_only_that_vector() {
    const TEST: &str = "irte_change_with_selective_iec_reroutes_only_that_vector";
    const MAX_FIRES: u64 = 100_000;
    let t = Instant::now();
    let (g, mut v) = remapping_guest(0);
    v.set_irte(5, irte(0x41, 0, DEV));
    v.set_irte(6, irte(0x42, 0, DEV));
    let d = msix_domain(&v.hierarchy, 2);
    activate(&d, 0, MsiMessage::remappable(5));
    activate(&d, 1, shv_message(4, 2));
    for i in 1..=10 {
        d.fire(0).unwrap();
        d.fire(1).unwrap();
        g.wait_count(0x41, i);
        g.wait_count(0x42, i);
    }
    g.assert_counts(&[(0x41, 10), (0x42, 10)]);
    let layer = v.hierarchy.vector_layer().clone();
    let stats_before = layer.stats();
    let a_before = d.vector_snapshot(0).unwrap();
    let b_before = d.vector_snapshot(1).unwrap();

    let stop = AtomicBool::new(false);
    let started = AtomicU64::new(0);
    let (fires, s0, s1) = thread::scope(|s| {
        let _stop = SetOnDrop(&stop);
        let firing = s.spawn(|| {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) && n < MAX_FIRES {
                started.store(n + 1, Ordering::SeqCst);
                d.fire(0).unwrap();
                n += 1;
                g.wait_until("vector A's fire to be counted on 0x41 or 0x51", |o| {
                    o.counts[0x41] + o.counts[0x51] >= 10 + n
                });
            }
            n
        });
        g.wait_until("20 fires of A on 0x41 before the change", |o| {
            o.counts[0x41] >= 30
        });
        let s0 = started.load(Ordering::SeqCst);
        v.set_irte(5, irte(0x51, 0, DEV));
        let s1 = started.load(Ordering::SeqCst);
        g.wait_until("20 fires of A on 0x51 after the change", |o| {
            o.counts[0x51] >= 20
        });
        stop.store(true, Ordering::SeqCst);
        let fires = firing.join().expect("the firing thread panicked");
        (fires, s0, s1)
    });
    let o = g.observed();
    let (old, new) = (o.counts[0x41] - 10, o.counts[0x51]);
    eprintln!(
        "{TEST}: {fires} fires of A, {old} on 0x41 and {new} on 0x51; fires started before \
         the change {s0}, when the IEC returned {s1}"
    );
    assert_eq!(old + new, fires, "every fire of A counted exactly once");
    assert!(
        s0 >= 1 && old + 1 >= s0 && old <= s1,
        "fires counted before the change must be on 0x41 ({old} >= {s0} - 1) and fires \
         started after the IEC returned on 0x51 ({old} <= {s1})"
    );
    let a = d.vector_snapshot(0).unwrap();
    let b = d.vector_snapshot(1).unwrap();
    assert_eq!(a.remapped, Some(fixed(0, 0x51)));
    assert_eq!(
        (a.gsi, a.fires, a.deliveries),
        (a_before.gsi, 10 + fires, 10 + fires)
    );
    assert_eq!(b, b_before, "B's vector is untouched");
    let stats = layer.stats();
    assert_eq!(
        (
            stats.route_changes - stats_before.route_changes,
            stats.commits - stats_before.commits,
            stats.routes
        ),
        (1, 1, 2),
        "the IEC re-routes A alone, committed once: before {stats_before:?}, after {stats:?}"
    );
    for i in 11..=15 {
        d.fire(1).unwrap();
        g.wait_count(0x42, i);
    }
    g.assert_counts(&[(0x41, 10 + old), (0x51, new), (0x42, 15)]);
    assert_eq!(v.unit.fault_count(), 0);
    done(TEST, t);
}

/// Reads fault record `slot` and FSTS, checks both against the expected fault, and services
/// the record as Linux does.
fn check_and_clear_fault(v: &VtdDriver, slot: usize, reason: u8, index: u16, sid: RequesterId) {
    let status = v.fault_status();
    assert_eq!(
        (
            status & fsts::PPF,
            status & fsts::PFO,
            (status >> fsts::FRI_SHIFT) & 0xff
        ),
        (fsts::PPF, 0, slot as u32),
        "FSTS {status:#x}: PPF, no overflow, FRI = {slot}"
    );
    let r = v.fault_record(slot);
    assert_eq!(
        (r.is_pending(), r.reason(), r.index(), r.source_id()),
        (true, reason, index, sid.0),
        "FRCD[{slot}] = {r:x?}: want reason {reason:#x}, index {index}, SID {sid}"
    );
    v.clear_fault(slot);
    assert!(!v.fault_record(slot).is_pending());
    assert_eq!(v.fault_status() & (fsts::PPF | fsts::PFO), 0);
}

/// 3. Bad IRTEs block the request and record the fault: P = 0 (0x22), a reserved bit
///    (0x24), a source-ID mismatch (0x26); each raises one fault event in the guest and
///    delivers nothing. With FPD = 1 a non-present entry blocks without a record. Repairing
///    an entry with an IEC makes its vector deliver.
fn bad_irtes_fault_with_reason_and_deliver_nothing() {
    const TEST: &str = "bad_irtes_fault_with_reason_and_deliver_nothing";
    let t = Instant::now();
    let (g, mut v) = remapping_guest(0);
    let good = irte(0x43, 0, DEV);
    let cases: [(&str, Irte, u8); 3] = [
        (
            "not present",
            Irte {
                lo: good.lo & !Irte::P,
                ..good
            },
            0x22,
        ),
        (
            "reserved bit 13",
            Irte {
                lo: good.lo | (1 << 13),
                ..good
            },
            0x24,
        ),
        (
            "SID of 00:04.0",
            irte(0x43, 0, RequesterId::pci(0, 4, 0)),
            0x26,
        ),
    ];
    let d = msix_domain(&v.hierarchy, cases.len() + 1);
    for (k, (what, entry, reason)) in cases.iter().enumerate() {
        let index = 10 + k as u16;
        v.set_irte(index, *entry);
        activate(&d, k, MsiMessage::remappable(index));
        d.fire(k).unwrap();
        g.wait_count(FAULT_VECTOR, k as u64 + 1);
        g.assert_counts(&[(FAULT_VECTOR, k as u64 + 1)]);
        let s = d.vector_snapshot(k).unwrap();
        assert_eq!(
            (s.remapped, s.fires, s.deliveries, s.dropped),
            (Some(RemapOutcome::Blocked), 1, 0, 1),
            "{what}: {s:?}"
        );
        assert_eq!(v.unit.fault_count(), k as u64 + 1, "{what}");
        check_and_clear_fault(&v, k, *reason, index, DEV);
    }
    // FPD: blocked, but neither recorded nor signalled.
    let fpd = Irte {
        lo: (good.lo & !Irte::P) | Irte::FPD,
        ..good
    };
    let k = cases.len();
    v.set_irte(20, fpd);
    activate(&d, k, MsiMessage::remappable(20));
    d.fire(k).unwrap();
    g.assert_counts(&[(FAULT_VECTOR, 3)]);
    assert_eq!(v.unit.fault_count(), 3);
    assert_eq!(v.fault_status() & (fsts::PPF | fsts::PFO), 0);
    assert_eq!(v.fault_record(k), FaultRecord::default());
    let s = d.vector_snapshot(k).unwrap();
    assert_eq!((s.deliveries, s.dropped), (0, 1));

    // Repairing each entry (IEC included) installs its route: one fire, one interrupt.
    for (i, index) in [10u16, 11, 12, 20].into_iter().enumerate() {
        v.set_irte(index, irte(0x50 + i as u8, 0, DEV));
        d.fire(i).unwrap();
        g.wait_count(0x50 + i as u8, 1);
    }
    g.assert_counts(&[
        (FAULT_VECTOR, 3),
        (0x50, 1),
        (0x51, 1),
        (0x52, 1),
        (0x53, 1),
    ]);
    assert_eq!(v.unit.fault_count(), 3);
    done(TEST, t);
}

/// Fault recording for requests blocked after an invalidation: a valid IRTE is made
/// non-present and invalidated, then the device fires three times. Each request is blocked
/// by a not-present entry, so the guest should find fault records (reason 0x22) and get a
/// fault event, as on hardware.
fn blocked_fires_after_invalidation_record_faults() {
    let (g, mut v) = remapping_guest(0);
    v.set_irte(5, irte(0x41, 0, DEV));
    let d = msix_domain(&v.hierarchy, 1);
    activate(&d, 0, MsiMessage::remappable(5));
    d.fire(0).unwrap();
    g.wait_count(0x41, 1);
    let gone = Irte {
        lo: irte(0x41, 0, DEV).lo & !Irte::P,
        ..irte(0x41, 0, DEV)
    };
    v.set_irte(5, gone);
    for _ in 0..3 {
        d.fire(0).unwrap();
    }
    g.flush();
    assert_eq!(g.count(0x41), 1, "blocked requests deliver nothing");
    assert_eq!(
        v.unit.fault_count(),
        3,
        "three requests hit a non-present IRTE: one fault each"
    );
    for slot in 0..3 {
        let r = v.fault_record(slot);
        assert_eq!(
            (r.is_pending(), r.reason(), r.index(), r.source_id()),
            (true, 0x22, 5, DEV.0),
            "FRCD[{slot}] = {r:x?}"
        );
    }
    for slot in 0..3 {
        v.clear_fault(slot);
    }
    assert_eq!(v.fault_status() & (fsts::PPF | fsts::PFO), 0);
}

/// Programs redirection entry `pin` through the IOAPIC's MMIO window (high half first).
fn program_rte(ioapic: &Ioapic, pin: u32, entry: u64) {
    let write = |offset: u64, value: u32| {
        ioapic.mmio_write(MmioAddress(IOAPIC_BASE), offset, &value.to_le_bytes());
    };
    write(0x00, 0x10 + 2 * pin + 1);
    write(0x10, (entry >> 32) as u32);
    write(0x00, 0x10 + 2 * pin);
    write(0x10, entry as u32);
}

/// A remappable-format RTE as Linux writes it: format bit 48, IRTE index in 63:49 (bit 15 of
/// the index in bit 11), the pin number in the vector field.
fn remappable_rte(index: u16, pin: u32, level: bool) -> u64 {
    rte::REMAPPABLE
        | (u64::from(index & 0x7fff) << rte::INDEX_SHIFT)
        | if index & 0x8000 != 0 {
            rte::INDEX_15
        } else {
            0
        }
        | if level { rte::LEVEL } else { 0 }
        | u64::from(pin)
}

/// The IOAPIC's EOI register (offset 0x40, version 0x20), written with the RTE's vector
/// field as Linux does under remapping.
fn eoi_register(ioapic: &Ioapic, value: u32) {
    ioapic.mmio_write(MmioAddress(IOAPIC_BASE), 0x40, &value.to_le_bytes());
}

/// 4. IOAPIC version 0x20, edge pin 4 with a remappable RTE (IRTE 40, SID = the IOAPIC's
///    source ID): ten pulses give exactly ten interrupts on the IRTE's vector (the RTE's
///    vector field, 4, would be a CPU exception in the guest).
fn remapped_ioapic_edge_pin_delivers_on_the_irte_vector() {
    const TEST: &str = "remapped_ioapic_edge_pin_delivers_on_the_irte_vector";
    const PIN: u32 = 4;
    let t = Instant::now();
    let (g, mut v) = remapping_guest(0);
    assert_eq!(
        interrupt::VtdConfig::default().ioapic_source_id,
        IOAPIC_REQUESTER_ID,
        "the unit's IOAPIC scope and the IOAPIC's requester ID must agree"
    );
    let ioapic = Ioapic::with_version(0, &v.hierarchy, IOAPIC_VERSION_20);
    v.set_irte(40, irte(0x44, 0, IOAPIC_REQUESTER_ID));
    program_rte(&ioapic, PIN, remappable_rte(40, PIN, false));
    let s = ioapic.domain().vector_snapshot(PIN as usize).unwrap();
    assert_eq!((s.remapped, s.gsi), (Some(fixed(0, 0x44)), Some(PIN)));
    for i in 1..=10 {
        ioapic.pulse(PIN as usize);
        g.wait_count(0x44, i);
    }
    g.assert_counts(&[(0x44, 10)]);
    assert_eq!(ioapic.delivered(PIN as usize), 10);
    assert_eq!(g.ioapic_eois(0x44), 0);
    assert_eq!(v.unit.fault_count(), 0);

    // The same pin with an IRTE expecting another source ID: blocked, fault 0x26 with the
    // IOAPIC's source ID.
    v.set_irte(41, irte(0x45, 0, RequesterId::pci(0xF0, 0x1E, 0)));
    program_rte(&ioapic, PIN, remappable_rte(41, PIN, false));
    ioapic.pulse(PIN as usize);
    g.wait_count(FAULT_VECTOR, 1);
    g.assert_counts(&[(0x44, 10), (FAULT_VECTOR, 1)]);
    check_and_clear_fault(&v, 0, 0x26, 41, IOAPIC_REQUESTER_ID);
    done(TEST, t);
}

/// 4b. Level pin 9 with a remappable RTE and Linux's IRTE (TM = 0): the LAPIC sees an edge,
///     so no KVM_EXIT_IOAPIC_EOI; remote IRR is cleared through the EOI register written
///     with the pin number (the RTE's vector field), which re-delivers a line still
///     asserted. An EOI with another value leaves remote IRR set.
fn remapped_ioapic_level_pin_uses_the_eoi_register() {
    const TEST: &str = "remapped_ioapic_level_pin_uses_the_eoi_register";
    const PIN: u32 = 9;
    const VECTOR: u8 = 0x46;
    let t = Instant::now();
    let (g, mut v) = remapping_guest(0);
    let ioapic = Ioapic::with_version(0, &v.hierarchy, IOAPIC_VERSION_20);
    v.set_irte(42, irte(VECTOR, 0, IOAPIC_REQUESTER_ID));
    program_rte(&ioapic, PIN, remappable_rte(42, PIN, true));
    let remote_irr = || ioapic.redirection_entry(PIN as usize).unwrap() & rte::REMOTE_IRR != 0;

    ioapic.set_irq(PIN as usize, true);
    g.wait_count(VECTOR, 1);
    g.assert_counts(&[(VECTOR, 1)]);
    assert!(remote_irr(), "delivered level pin sets remote IRR");
    // Still asserted: the EOI register re-delivers.
    eoi_register(&ioapic, PIN);
    g.wait_count(VECTOR, 2);
    g.assert_counts(&[(VECTOR, 2)]);
    assert!(remote_irr());
    // The real vector is not what the RTE holds: nothing happens.
    eoi_register(&ioapic, u32::from(VECTOR));
    g.assert_counts(&[(VECTOR, 2)]);
    assert!(
        remote_irr(),
        "EOI of another vector field must not clear remote IRR"
    );
    // Deassert, then EOI: remote IRR clears, nothing is delivered.
    ioapic.set_irq(PIN as usize, false);
    eoi_register(&ioapic, PIN);
    g.assert_counts(&[(VECTOR, 2)]);
    assert!(!remote_irr());
    // Asserting again delivers again.
    ioapic.set_irq(PIN as usize, true);
    g.wait_count(VECTOR, 3);
    g.assert_counts(&[(VECTOR, 3)]);
    assert_eq!(ioapic.delivered(PIN as usize), 3);
    assert_eq!(g.ioapic_eois(VECTOR), 0, "TM = 0 in the IRTE: no EOI exits");
    assert_eq!(v.unit.fault_count(), 0);
    done(TEST, t);
}

/// 5. With IRE = 1 and CFI = 0 a compatibility-format MSI is blocked with fault 0x25;
///    setting CFI re-translates and delivers it; clearing CFI blocks it again.
fn compatibility_format_needs_cfi_when_remapping() {
    const TEST: &str = "compatibility_format_needs_cfi_when_remapping";
    let t = Instant::now();
    let (g, mut v) = remapping_guest(0);
    let compat = MsiMessage::compose(0, false, 0x47, 0, false);
    let d = msix_domain(&v.hierarchy, 1);
    activate(&d, 0, compat);
    d.fire(0).unwrap();
    g.wait_count(FAULT_VECTOR, 1);
    g.assert_counts(&[(FAULT_VECTOR, 1)]);
    assert_eq!(v.unit.fault_count(), 1);
    check_and_clear_fault(&v, 0, 0x25, 0, DEV);

    v.set_cfi(true);
    assert_eq!(
        d.vector_snapshot(0).unwrap().remapped,
        Some(RemapOutcome::Deliver(compat))
    );
    d.fire(0).unwrap();
    g.wait_count(0x47, 1);
    g.assert_counts(&[(0x47, 1), (FAULT_VECTOR, 1)]);

    v.set_cfi(false);
    d.fire(0).unwrap();
    // Blocked again: the request records a second 0x25 fault and raises its event.
    g.wait_count(FAULT_VECTOR, 2);
    g.assert_counts(&[(0x47, 1), (FAULT_VECTOR, 2)]);
    let s = d.vector_snapshot(0).unwrap();
    assert_eq!(
        (s.remapped, s.fires, s.deliveries, s.dropped),
        (Some(RemapOutcome::Blocked), 3, 1, 2)
    );
    done(TEST, t);
}

/// 5b. xAPIC-format table (IRTA.EIME = 0): the destination is IRTE bits 47:40 and bits
///     39:32 are reserved. An entry for APIC 0 with vector 0x4c delivers; the same entry
///     with bit 32 set (destination 1 under EIME) faults 0x24 and delivers nothing.
fn xapic_format_irte_takes_destination_from_bits_47_40() {
    const TEST: &str = "xapic_format_irte_takes_destination_from_bits_47_40";
    let t = Instant::now();
    let mut g = KvmGuest::new();
    g.start(VcpuHooks::default());
    let mut v = VtdDriver::new(&g);
    v.enable(false, FAULT_VECTOR, 0);
    let good = irte(0x4c, 0, DEV);
    v.set_irte(8, good);
    v.set_irte(
        9,
        Irte {
            lo: good.lo | (1 << 32),
            ..good
        },
    );
    let d = msix_domain(&v.hierarchy, 2);
    activate(&d, 0, MsiMessage::remappable(8));
    for i in 1..=5 {
        d.fire(0).unwrap();
        g.wait_count(0x4c, i);
    }
    activate(&d, 1, MsiMessage::remappable(9));
    d.fire(1).unwrap();
    g.wait_count(FAULT_VECTOR, 1);
    g.assert_counts(&[(0x4c, 5), (FAULT_VECTOR, 1)]);
    check_and_clear_fault(&v, 0, 0x24, 9, DEV);
    done(TEST, t);
}

/// An APIC ID above 255 for the x2APIC tests: 300 when the host allows it, else the
/// largest vCPU id it allows above 255. Skips the test when the host allows none.
fn high_apic_id() -> u32 {
    let max = max_vcpu_id();
    let id = if max > 300 {
        300
    } else {
        max.saturating_sub(1)
    };
    if id <= 255 {
        tests::skip(format!(
            "KVM_CAP_MAX_VCPU_ID is {max}: KVM cannot create a vCPU with an id above 255"
        ));
    }
    id as u32
}

/// 6a. x2APIC destination 300 through an EIME IRTE: delivered to the vCPU with APIC ID 300
///     (created as KVM vCPU 300, in x2APIC mode); an IRTE naming APIC 44 (300 mod 256)
///     reaches nobody. The fault event, with destination bits 31:8 in FEUADDR, reaches
///     APIC 300 too.
fn eime_irte_reaches_x2apic_id_above_255() {
    const TEST: &str = "eime_irte_reaches_x2apic_id_above_255";
    let t = Instant::now();
    let id = high_apic_id();
    let (g, mut v) = remapping_guest(id);
    assert_eq!(g.apic_id(), id);
    v.set_irte(50, irte(0x48, id, DEV));
    v.set_irte(51, irte(0x49, id & 0xff, DEV));
    v.set_irte(52, Irte::default());
    let d = msix_domain(&v.hierarchy, 3);
    activate(&d, 0, MsiMessage::remappable(50));
    activate(&d, 1, MsiMessage::remappable(51));
    let s = d.vector_snapshot(0).unwrap();
    assert_eq!(s.remapped, Some(fixed(id, 0x48)));
    if let Some(RemapOutcome::Deliver(m)) = s.remapped {
        assert_eq!(m.address_hi(), id & !0xff, "{m}");
    }
    for i in 1..=10 {
        d.fire(0).unwrap();
        d.fire(1).unwrap();
        g.wait_count(0x48, i);
    }
    g.assert_counts(&[(0x48, 10)]);
    assert_eq!(d.vector_snapshot(1).unwrap().deliveries, 10);

    activate(&d, 2, MsiMessage::remappable(52));
    d.fire(2).unwrap();
    g.wait_count(FAULT_VECTOR, 1);
    g.assert_counts(&[(0x48, 10), (FAULT_VECTOR, 1)]);
    check_and_clear_fault(&v, 0, 0x22, 52, DEV);
    eprintln!(
        "{TEST}: APIC ID {id} (KVM_CAP_MAX_VCPU_ID {:?})",
        max_vcpu_id()
    );
    done(TEST, t);
}

/// 6b. Without remapping, a compatibility-format MSI for APIC ID 300 in KVM's x2APIC API
///     encoding (destination bits 31:8 in the upper address) reaches the vCPU with APIC ID
///     300; the same message without the high bits (APIC 44) reaches nobody.
fn compat_msi_with_high_destination_bits_reaches_apic_above_255() {
    const TEST: &str = "compat_msi_with_high_destination_bits_reaches_apic_above_255";
    let t = Instant::now();
    let id = high_apic_id();
    let mut g = KvmGuest::with_vcpu_id(id);
    g.start(VcpuHooks::default());
    let h = g.hierarchy(IOAPIC_PINS, 4096);
    let d = msix_domain(&h, 2);
    let m = MsiMessage::compose(id, false, 0x4a, 0, false);
    assert_eq!(m.address_hi(), id & !0xff);
    activate(&d, 0, m);
    activate(&d, 1, MsiMessage::compose(id & 0xff, false, 0x4b, 0, false));
    for i in 1..=10 {
        d.fire(0).unwrap();
        d.fire(1).unwrap();
        g.wait_count(0x4a, i);
    }
    g.assert_counts(&[(0x4a, 10)]);
    let s = d.snapshot();
    assert_eq!((s[0].deliveries, s[1].deliveries), (10, 10));
    done(TEST, t);
}

/// 6c. Without an IOMMU, a compatibility-format MSI for APIC ID 300 as a guest told
///     KVM_FEATURE_MSI_EXT_DEST_ID writes it (destination bits 7:0 in address bits 19:12,
///     bits 14:8 in address bits 11:5, upper address 0) reaches the vCPU with APIC ID 300;
///     so does an IOAPIC pin whose entry carries bits 14:8 in 55:49 (virt_destid_8_14).
fn ext_dest_id_msi_reaches_apic_above_255_without_iommu() {
    const TEST: &str = "ext_dest_id_msi_reaches_apic_above_255_without_iommu";
    const PIN: u32 = 6;
    let t = Instant::now();
    let id = high_apic_id();
    let mut g = KvmGuest::with_vcpu_id(id);
    g.start(VcpuHooks::default());
    let h = g.hierarchy(IOAPIC_PINS, 4096);
    let d = msix_domain(&h, 1);
    let address = 0xFEE0_0000 | ((id & 0xff) << 12) | (((id >> 8) & 0x7f) << 5);
    let m = MsiMessage::new(address, 0, 0x4c);
    assert_eq!(m.destination(), id);
    activate(&d, 0, m);
    for i in 1..=10 {
        d.fire(0).unwrap();
        g.wait_count(0x4c, i);
    }
    let ioapic = Ioapic::new(0, &h);
    let entry = (u64::from(id & 0xff) << rte::DEST_SHIFT)
        | (u64::from((id >> 8) & 0x7f) << rte::EXT_DEST_SHIFT)
        | 0x4d;
    program_rte(&ioapic, PIN, entry);
    for i in 1..=10 {
        ioapic.pulse(PIN as usize);
        g.wait_count(0x4d, i);
    }
    g.assert_counts(&[(0x4c, 10), (0x4d, 10)]);
    assert_eq!(d.vector_snapshot(0).unwrap().deliveries, 10);
    assert_eq!(ioapic.delivered(PIN as usize), 10);
    done(TEST, t);
}

/// The VMM's reset stub, placed at the reset vector (0xFFFF0) of a real-mode vCPU started
/// at F000:FFF0 like after a CPU reset: it writes 0xFE to port 0x64 (the i8042 reset
/// pulse), halts, and jumps back to the write if woken.
fn reset_stub_pulses_the_i8042_reset_line() {
    use kvm_ioctls::{Kvm, VcpuExit};
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
    const TEST: &str = "reset_stub_pulses_the_i8042_reset_line";
    let t = Instant::now();
    common::require_kvm_tests();
    let kvm = Kvm::new().expect("opening /dev/kvm");
    let vm = kvm.create_vm().expect("KVM_CREATE_VM");
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    for (slot, region) in mem.iter().enumerate() {
        let r = kvm_bindings::kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
            flags: 0,
        };
        // SAFETY: `mem` outlives the VM and its vCPU (all dropped at the end of this test,
        // the vCPU first).
        unsafe { vm.set_user_memory_region(r) }.expect("KVM_SET_USER_MEMORY_REGION");
    }
    assert_eq!(vmm::layout::RESET_VECTOR, 0xFFFF0);
    mem.write_slice(
        &vmm::boot::RESET_STUB,
        GuestAddress(vmm::layout::RESET_VECTOR),
    )
    .unwrap();
    let mut vcpu = vm.create_vcpu(0).expect("KVM_CREATE_VCPU");
    let mut sregs = vcpu.get_sregs().unwrap();
    sregs.cs.selector = 0xF000;
    sregs.cs.base = 0xF0000;
    sregs.cs.limit = 0xFFFF;
    sregs.cr0 &= !1;
    vcpu.set_sregs(&sregs).unwrap();
    let mut regs = vcpu.get_regs().unwrap();
    regs.rip = 0xFFF0;
    regs.rflags = 2;
    vcpu.set_regs(&regs).unwrap();

    let mut exits = Vec::new();
    for _ in 0..3 {
        let exit = match vcpu.run().expect("KVM_RUN") {
            VcpuExit::IoOut(port, data) => format!("out {port:#x} {data:02x?}"),
            VcpuExit::Hlt => "hlt".to_string(),
            other => format!("{other:?}"),
        };
        let rip = vcpu.get_regs().unwrap().rip;
        exits.push(format!("{exit} (ip {rip:#x})"));
    }
    assert_eq!(
        exits,
        [
            "out 0x64 [fe] (ip 0xfff4)",
            "hlt (ip 0xfff5)",
            "out 0x64 [fe] (ip 0xfff4)"
        ],
        "exits of the reset stub"
    );
    done(TEST, t);
}

tests::test_main!(
    remappable_msi_reaches_the_irte_vector,
    irte_change_with_selective_iec_reroutes_only_that_vector,
    bad_irtes_fault_with_reason_and_deliver_nothing,
    blocked_fires_after_invalidation_record_faults,
    remapped_ioapic_edge_pin_delivers_on_the_irte_vector,
    remapped_ioapic_level_pin_uses_the_eoi_register,
    compatibility_format_needs_cfi_when_remapping,
    xapic_format_irte_takes_destination_from_bits_47_40,
    eime_irte_reaches_x2apic_id_above_255,
    compat_msi_with_high_destination_bits_reaches_apic_above_255,
    ext_dest_id_msi_reaches_apic_above_255_without_iommu,
    reset_stub_pulses_the_i8042_reset_line,
);
