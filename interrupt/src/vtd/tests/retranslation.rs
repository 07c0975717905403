//! Re-translation of hierarchy vectors when the remapping state changes: which vectors are
//! re-routed, and what a failed translation installs.

use super::*;
use crate::domain::{DeviceDomain, DomainKind};
use crate::vtd::spec::fsts;

/// The vector each domain vector's committed route delivers (None: no route).
fn routed(f: &Fixture, d: &DeviceDomain) -> Vec<Option<u8>> {
    let routes = f.routes();
    d.snapshot()
        .iter()
        .map(|v| {
            let gsi = v.gsi?;
            routes
                .iter()
                .find(|(g, _)| *g == gsi)
                .map(|(_, m)| m.vector())
        })
        .collect()
}

/// IR enabled, IRTEs 0..4 → vectors 0x40.., a 4-vector MSI-X domain using them, unmasked.
fn setup() -> (Fixture, Arc<DeviceDomain>) {
    let mut f = Fixture::new();
    f.enable_ir();
    for i in 0..4u32 {
        f.program_irte(i, irte(0, 0x40 + i as u8, DEV));
    }
    let d = f
        .hierarchy
        .create_domain("nic", DomainKind::MsiX, DEV, 4, None);
    for i in 0..4 {
        d.set_message(i, Some(msix_message(i as u16))).unwrap();
        d.set_masked(i, false).unwrap();
    }
    assert_eq!(
        routed(&f, &d),
        vec![Some(0x40), Some(0x41), Some(0x42), Some(0x43)]
    );
    (f, d)
}

fn rewrite_all(f: &Fixture, vector_base: u8) {
    for i in 0..4u32 {
        f.write_irte(i, irte(0, vector_base + i as u8, DEV));
    }
}

#[test]
fn irte_changes_take_effect_only_after_invalidation() {
    let (f, d) = setup();
    rewrite_all(&f, 0x80);
    assert_eq!(
        routed(&f, &d),
        vec![Some(0x40), Some(0x41), Some(0x42), Some(0x43)]
    );
}

#[test]
fn index_selective_iec_re_routes_only_the_covered_vectors() {
    let (mut f, d) = setup();
    rewrite_all(&f, 0x80);
    // Index 1 with mask 1 covers entries 0..2.
    assert!(f.submit_sync(&[iec_index(1, 1)]));
    assert_eq!(
        routed(&f, &d),
        vec![Some(0x80), Some(0x81), Some(0x42), Some(0x43)]
    );
    assert!(f.submit_sync(&[iec_index(3, 0)]));
    assert_eq!(
        routed(&f, &d),
        vec![Some(0x80), Some(0x81), Some(0x42), Some(0x83)]
    );
}

#[test]
fn global_iec_re_routes_every_vector() {
    let (mut f, d) = setup();
    rewrite_all(&f, 0x90);
    assert!(f.submit_sync(&[iec_global()]));
    assert_eq!(
        routed(&f, &d),
        vec![Some(0x90), Some(0x91), Some(0x92), Some(0x93)]
    );
}

#[test]
fn invalidations_in_one_batch_re_translate_exactly_the_named_entries() {
    let (mut f, d) = setup();
    rewrite_all(&f, 0xA0);
    let before = f.layer.stats().route_changes;
    assert!(f.submit_sync(&[iec_index(0, 0), iec_index(2, 0)]));
    // Entries 0 and 2 only: entry 1 lies between them and was rewritten without an
    // invalidation, so its vector keeps the old route; entry 3 likewise.
    assert_eq!(f.layer.stats().route_changes - before, 2);
    assert_eq!(
        routed(&f, &d),
        vec![Some(0xA0), Some(0x41), Some(0xA2), Some(0x43)]
    );
}

#[test]
fn abutting_and_overlapping_invalidations_re_translate_their_union_once() {
    let (mut f, d) = setup();
    rewrite_all(&f, 0xA0);
    let before = f.layer.stats().route_changes;
    // 0..2 (index 1, mask 1), 2, and 1 again: the union 0..3, each entry re-routed once.
    assert!(f.submit_sync(&[iec_index(1, 1), iec_index(2, 0), iec_index(1, 0)]));
    assert_eq!(f.layer.stats().route_changes - before, 3);
    assert_eq!(
        routed(&f, &d),
        vec![Some(0xA0), Some(0xA1), Some(0xA2), Some(0x43)]
    );
}

#[test]
fn global_invalidation_in_a_batch_re_translates_everything() {
    let (mut f, d) = setup();
    rewrite_all(&f, 0xA0);
    assert!(f.submit_sync(&[iec_index(1, 0), iec_global()]));
    assert_eq!(
        routed(&f, &d),
        vec![Some(0xA0), Some(0xA1), Some(0xA2), Some(0xA3)]
    );
}

#[test]
fn failed_translation_removes_the_route_and_records_no_fault() {
    let (mut f, d) = setup();
    f.program_irte(2, Irte::default()); // free IRTE 2: zero + selective IEC
    assert_eq!(
        routed(&f, &d),
        vec![Some(0x40), Some(0x41), None, Some(0x43)]
    );
    assert_eq!(d.snapshot()[2].remapped, Some(RemapOutcome::Blocked));
    // Re-translation is not an interrupt request: no fault for the guest to log.
    assert!(f.pending_records().is_empty());
    assert_eq!(f.unit.fault_count(), 0);
    // A fire on the blocked vector is dropped.
    d.fire(2).unwrap();
    assert_eq!(d.snapshot()[2].dropped, 1);
    // Re-programming restores it.
    f.program_irte(2, irte(0, 0x52, DEV));
    assert_eq!(routed(&f, &d)[2], Some(0x52));
}

#[test]
fn blocked_requests_are_reported_when_fired_not_when_routed() {
    let (f, d) = setup();
    // The device's message now selects an entry that is not present: routing blocks it
    // silently, the interrupt request records the fault.
    d.set_message(1, Some(msix_message(40))).unwrap();
    assert_eq!(routed(&f, &d)[1], None);
    assert!(f.pending_records().is_empty());
    d.fire(1).unwrap();
    let r = f.pending_records();
    assert_eq!((r.len(), r[0].reason(), r[0].index()), (1, 0x22, 40));
    assert_ne!(f.read32(offset::FSTS) & fsts::PPF, 0);
}

#[test]
fn ire_toggles_re_translate_compatibility_and_remappable_vectors() {
    let (f, d) = setup();
    let compat = f
        .hierarchy
        .create_domain("legacy", DomainKind::Msi, DEV, 1, None);
    compat
        .set_message(0, Some(MsiMessage::compose(0, false, 0x55, 0, false)))
        .unwrap();
    compat.set_masked(0, false).unwrap();
    assert_eq!(routed(&f, &compat), vec![None], "blocked while IR is on");
    f.gcmd_clear(gcmd::IRE);
    assert_eq!(routed(&f, &compat), vec![Some(0x55)]);
    assert_eq!(routed(&f, &d), vec![None; 4], "remappable need IR");
    f.gcmd(gcmd::IRE);
    assert_eq!(routed(&f, &compat), vec![None]);
    assert_eq!(
        routed(&f, &d),
        vec![Some(0x40), Some(0x41), Some(0x42), Some(0x43)]
    );
}

#[test]
fn cfi_toggles_re_translate_compatibility_vectors() {
    let (f, _d) = setup();
    let compat = f
        .hierarchy
        .create_domain("legacy", DomainKind::Msi, DEV, 1, None);
    compat
        .set_message(0, Some(MsiMessage::compose(0, false, 0x55, 0, false)))
        .unwrap();
    compat.set_masked(0, false).unwrap();
    f.gcmd(gcmd::CFI);
    assert_eq!(routed(&f, &compat), vec![Some(0x55)]);
    f.gcmd_clear(gcmd::CFI);
    assert_eq!(routed(&f, &compat), vec![None]);
}

#[test]
fn sirtp_while_enabled_re_translates_against_the_new_table() {
    let (f, d) = setup();
    let other = 0x30_0000;
    for i in 0..4u64 {
        let e = irte(0, 0xB0 + i as u8, DEV);
        f.mem.write_obj(e.lo, GuestAddress(other + i * 16)).unwrap();
        f.mem
            .write_obj(e.hi, GuestAddress(other + i * 16 + 8))
            .unwrap();
    }
    f.set_table(other, true, 3);
    assert_eq!(
        routed(&f, &d),
        vec![Some(0xB0), Some(0xB1), Some(0xB2), Some(0xB3)]
    );
}

#[test]
fn invalidation_while_ir_is_disabled_changes_no_route() {
    let (mut f, d) = setup();
    f.gcmd_clear(gcmd::IRE);
    let before = f.layer.stats().route_changes;
    assert!(f.submit_sync(&[iec_global()]));
    f.gcmd(gcmd::SIRTP);
    assert_eq!(f.layer.stats().route_changes, before);
    assert_eq!(routed(&f, &d), vec![None; 4]);
}

#[test]
fn ioapic_domain_with_fixed_gsis_follows_its_irtes() {
    let mut f = Fixture::new();
    f.enable_ir();
    let io = f
        .hierarchy
        .create_domain("ioapic", DomainKind::Ioapic, IOAPIC_SID, 24, Some(0));
    f.program_irte(10, irte(0, 0x34, IOAPIC_SID));
    let mut m = MsiMessage::remappable(10);
    m.data = 4; // pin number in the RTE vector field
    io.set_message(4, Some(m)).unwrap();
    io.set_masked(4, false).unwrap();
    io.fire(4).unwrap();
    assert_eq!(f.routes()[0].0, 4);
    assert_eq!(f.routes()[0].1.vector(), 0x34);
    f.program_irte(10, irte(0, 0x35, IOAPIC_SID));
    assert_eq!(f.routes()[0].1.vector(), 0x35);
}

#[test]
fn concurrent_register_writes_and_device_activity_do_not_deadlock() {
    let (f, d) = setup();
    let unit = f.unit.clone();
    let writer = std::thread::spawn(move || {
        for i in 0..500u32 {
            // Toggle CFI (re-translates everything) with the QIE/IRE shadow kept.
            let cfi = if i % 2 == 0 { gcmd::CFI } else { 0 };
            unit.mmio_write(offset::GCMD, &(gcmd::QIE | gcmd::IRE | cfi).to_le_bytes());
        }
    });
    for i in 0..500u16 {
        d.set_message(usize::from(i % 4), Some(msix_message(i % 8)))
            .unwrap();
        d.fire(usize::from(i % 4)).unwrap();
        let _ = f.unit.summary();
    }
    writer.join().unwrap();
    assert!(f.unit.is_enabled());
}
