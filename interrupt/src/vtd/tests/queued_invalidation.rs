//! Queued invalidation: descriptor types, wait semantics, errors and bounds.

use super::*;
use crate::vtd::spec::{fsts, ics};

fn iqe(f: &Fixture) -> bool {
    f.read32(offset::FSTS) & fsts::IQE != 0
}

#[test]
fn wait_with_sw_writes_four_status_bytes_to_qw1_without_low_bits() {
    let mut f = Fixture::new();
    f.enable_qi();
    f.mem
        .write_obj(0xAAAA_AAAA_AAAA_AAAAu64, GuestAddress(0x5000))
        .unwrap();
    f.submit(&[wait_sw(0x1234_5678, 0x5004 | 3)]);
    let v: u64 = f.mem.read_obj(GuestAddress(0x5000)).unwrap();
    assert_eq!(v, 0x1234_5678_AAAA_AAAA);
    assert_eq!(f.iqh(), 1);
    assert_eq!(f.read32(offset::ICS), 0, "no IF, no IWC");
}

#[test]
fn wait_with_if_sets_iwc_and_sends_the_completion_event() {
    let mut f = Fixture::new();
    f.enable_qi();
    f.program_events();
    f.submit(&[wait_if()]);
    assert_eq!(f.read32(offset::ICS), ics::IWC);
    assert_eq!(f.completion_events(), 1);
    assert_eq!(f.read32(offset::IECTL), 0, "IP cleared once sent");
}

#[test]
fn wait_with_if_while_iwc_set_sends_no_new_event() {
    let mut f = Fixture::new();
    f.enable_qi();
    f.program_events();
    f.submit(&[wait_if(), wait_if()]);
    f.submit(&[wait_if()]);
    assert_eq!(f.completion_events(), 1);
    f.write32(offset::ICS, ics::IWC);
    f.submit(&[wait_if()]);
    assert_eq!(f.completion_events(), 2);
}

#[test]
fn masked_completion_event_is_held_and_sent_on_unmask() {
    let mut f = Fixture::new();
    f.enable_qi();
    f.program_events();
    f.write32(offset::IECTL, event_ctl::IM);
    f.submit(&[wait_if()]);
    assert_eq!(f.completion_events(), 0);
    assert_eq!(f.read32(offset::IECTL), event_ctl::IM | event_ctl::IP);
    f.write32(offset::IECTL, 0);
    assert_eq!(f.completion_events(), 1);
    assert_eq!(f.read32(offset::IECTL), 0);
}

#[test]
fn clearing_iwc_drops_a_held_completion_event() {
    let mut f = Fixture::new();
    f.enable_qi();
    f.program_events();
    f.write32(offset::IECTL, event_ctl::IM);
    f.submit(&[wait_if()]);
    f.write32(offset::ICS, ics::IWC);
    assert_eq!(f.read32(offset::IECTL), event_ctl::IM);
    f.write32(offset::IECTL, 0);
    assert_eq!(f.completion_events(), 0);
}

#[test]
fn wait_with_sw_and_if_does_both() {
    let mut f = Fixture::new();
    f.enable_qi();
    f.program_events();
    let mut w = wait_sw(QI_DONE, STATUS_ADDR);
    w[0] |= desc::WAIT_IF | desc::WAIT_FN;
    f.submit(&[w]);
    assert_eq!(f.status(), QI_DONE);
    assert_eq!(f.completion_events(), 1);
}

#[test]
fn context_cache_and_iotlb_descriptors_complete_as_no_ops() {
    let mut f = Fixture::new();
    f.enable_qi();
    let cc = [
        u64::from(desc::TYPE_CONTEXT_CACHE) | (1 << 4) | (5 << 16),
        0,
    ];
    let iotlb = [
        u64::from(desc::TYPE_IOTLB) | (3 << 4) | (1 << 6) | (1 << 7),
        0x1234_5000 | 0x41,
    ];
    assert!(f.submit_sync(&[cc, iotlb]));
    assert!(!iqe(&f));
    assert_eq!(f.iqh(), 3);
}

#[test]
fn unknown_descriptor_types_raise_iqe() {
    for t in [0u64, 3, 6, 7, 8, 0xF, 0x204, 0xE05] {
        let mut f = Fixture::new();
        f.enable_qi();
        assert!(!f.submit_sync(&[[t, 0]]), "type {t:#x}");
        assert!(iqe(&f), "type {t:#x}");
        assert_eq!(f.iqh(), 0);
    }
}

#[test]
fn reserved_bits_in_iec_and_wait_descriptors_raise_iqe() {
    let bad = [
        [iec_global()[0] | (1 << 12), 0],
        [iec_global()[0] | (1 << 5), 0],
        [iec_global()[0] | (1 << 48), 0],
        [iec_global()[0], 1],
        [wait_sw(0, STATUS_ADDR)[0] | (1 << 8), STATUS_ADDR],
        [wait_sw(0, STATUS_ADDR)[0] | (1 << 20), STATUS_ADDR],
    ];
    for d in bad {
        let mut f = Fixture::new();
        f.enable_qi();
        f.submit(&[d]);
        assert!(iqe(&f), "{d:x?}");
    }
}

#[test]
fn iqe_stops_with_head_on_the_bad_descriptor_and_raises_the_fault_event() {
    let mut f = Fixture::new();
    f.enable_qi();
    f.program_events();
    f.mem.write_obj(0u32, GuestAddress(STATUS_ADDR)).unwrap();
    f.submit(&[iec_global(), [0x9, 0], wait_sw(QI_DONE, STATUS_ADDR)]);
    assert!(iqe(&f));
    assert_eq!(f.iqh(), 1);
    assert_eq!(f.status(), 0, "descriptors after the bad one are not run");
    assert_eq!(f.fault_events(), 1);
    // Further tail writes do nothing while IQE is set.
    f.submit(&[]);
    assert_eq!(f.iqh(), 1);
    assert_eq!(f.fault_events(), 1);
}

#[test]
fn linux_iqe_recovery_resumes_from_the_rewritten_slot() {
    let mut f = Fixture::new();
    f.enable_qi();
    f.mem.write_obj(0u32, GuestAddress(STATUS_ADDR)).unwrap();
    f.submit(&[[0x9, 0], wait_sw(QI_DONE, STATUS_ADDR)]);
    assert!(iqe(&f));
    // qi_check_fault: copy the wait descriptor over the bad one, clear IQE.
    let head = f.iqh();
    f.put_descriptor(head, wait_sw(7, 0x6000));
    f.write32(offset::FSTS, fsts::IQE);
    assert!(!iqe(&f));
    assert_eq!(f.iqh(), 2);
    assert_eq!(f.status(), QI_DONE);
    let v: u32 = f.mem.read_obj(GuestAddress(0x6000)).unwrap();
    assert_eq!(v, 7);
}

#[test]
fn tail_beyond_the_queue_raises_iqe() {
    let mut f = Fixture::new();
    f.enable_qi(); // 256 entries
    f.write32(offset::IQT, 256 << 4);
    assert!(iqe(&f));
    assert_eq!(f.iqh(), 0);
}

#[test]
fn queue_outside_ram_raises_iqe() {
    for base in [RAM_SIZE, 0xFED9_0000, 0xFFFF_FFFF_FFFF_F000] {
        let mut f = Fixture::new();
        f.enable_qi_at(base, 0);
        f.write32(offset::IQT, 1 << 4);
        assert!(iqe(&f), "{base:#x}");
        assert_eq!(f.iqh(), 0);
    }
}

#[test]
fn status_address_outside_ram_raises_iqe() {
    for addr in [
        RAM_SIZE,
        0xFED9_0000,
        0xFFFF_FFFF_FFFF_FFFC,
        RAM_SIZE + 0x1000 - 2,
    ] {
        let mut f = Fixture::new();
        f.enable_qi();
        f.submit(&[wait_sw(QI_DONE, addr)]);
        assert!(iqe(&f), "{addr:#x}");
        assert_eq!(f.iqh(), 0);
    }
}

#[test]
fn the_queue_wraps_around() {
    let mut f = Fixture::new();
    f.enable_qi();
    for _ in 0..300 {
        assert!(f.submit_sync(&[iec_global()]));
    }
    assert_eq!(f.iqh(), (600 % 256) as u32);
    assert!(!iqe(&f));
}

#[test]
fn one_tail_write_covering_the_largest_queue_is_bounded() {
    let mut f = Fixture::new();
    f.enable_ir();
    // Re-enable QI with QS = 7: 32768 entries, 512 KiB at 0x20_0000.
    f.gcmd_clear(gcmd::QIE);
    f.enable_qi_at(0x20_0000, 7);
    let descs = vec![iec_global(); 32_767];
    f.submit(&descs);
    assert!(!iqe(&f));
    assert_eq!(f.iqh(), 32_767);
    assert!(
        f.unit.summary().contains("descriptors=32769"),
        "{}",
        f.unit.summary()
    );
}

#[test]
fn enabling_qi_with_a_nonzero_tail_processes_the_queue() {
    let f = Fixture::new();
    f.write64(offset::IQA, QUEUE_BASE);
    f.put_descriptor(0, wait_sw(QI_DONE, STATUS_ADDR));
    f.write32(offset::IQT, 1 << 4);
    assert_eq!(f.status(), 0, "not processed while QI is off");
    f.gcmd(gcmd::QIE);
    assert_eq!(f.status(), QI_DONE);
    assert_eq!(f.iqh(), 1);
}

#[test]
fn iec_scope_aligns_index_down_to_the_mask() {
    use crate::remap::RetranslateScope::IrteRange;
    let s = crate::vtd::qi::iec_scope(iec_index(13, 2)[0]);
    assert_eq!(
        s,
        IrteRange {
            start: 12,
            count: 4
        }
    );
    // A mask beyond the index space covers everything from 0.
    let s = crate::vtd::qi::iec_scope(iec_index(0xFFFF, 31)[0]);
    assert_eq!(
        s,
        IrteRange {
            start: 0,
            count: 1 << 16
        }
    );
}

#[test]
fn iec_invalidations_in_one_batch_collect_exactly_their_entries() {
    let mut fx = crate::vtd::Effects::default();
    fx.retranslate(crate::vtd::qi::iec_scope(iec_index(13, 2)[0]));
    fx.retranslate(crate::vtd::qi::iec_scope(iec_index(40, 0)[0]));
    // No hull: 12..16 and 40 stay apart, entry 20 is not covered.
    assert_eq!(
        fx.retranslate.iter().collect::<Vec<_>>(),
        [(12, 4), (40, 1)]
    );
    assert!(!fx.retranslate.contains(20));
    // Abutting ranges merge.
    fx.retranslate(crate::vtd::qi::iec_scope(iec_index(16, 0)[0]));
    assert_eq!(
        fx.retranslate.iter().collect::<Vec<_>>(),
        [(12, 5), (40, 1)]
    );
    assert!(!fx.retranslate_all);
    // A global invalidation covers everything.
    fx.retranslate(crate::vtd::qi::iec_scope(iec_global()[0]));
    assert!(fx.retranslate_all);
    fx.retranslate(crate::vtd::qi::iec_scope(iec_index(3, 0)[0]));
    assert!(fx.retranslate.is_empty(), "nothing to add to a global one");
}

// --- ordering: a wait completes only after the re-translation ahead of it ---------------

/// IR on, IRTEs 0..4 → vectors 0x40.., a 4-vector MSI-X domain on them; observations start
/// empty.
fn observed_setup() -> (
    Fixture,
    Arc<ObservingLayer>,
    Arc<crate::domain::DeviceDomain>,
) {
    let (mut f, obs) = Fixture::observed();
    f.enable_ir();
    for i in 0..4u32 {
        f.program_irte(i, irte(0, 0x40 + i as u8, DEV));
    }
    let d = f
        .hierarchy
        .create_domain("nic", crate::domain::DomainKind::MsiX, DEV, 4, None);
    for i in 0..4 {
        d.set_message(i, Some(msix_message(i as u16))).unwrap();
        d.set_masked(i, false).unwrap();
    }
    for addr in [STATUS_ADDR, STATUS2_ADDR] {
        f.mem.write_obj(0u32, GuestAddress(addr)).unwrap();
    }
    obs.take();
    (f, obs, d)
}

/// Position of the first route update to `vector`, with what the guest saw then.
fn route_to(seen: &[Observation], vector: u8) -> Option<(usize, [u32; 2], u32)> {
    seen.iter().enumerate().find_map(|(i, o)| match o {
        Observation::Route {
            message: Some(m),
            status,
            ics,
        } if m.vector() == vector => Some((i, *status, *ics)),
        _ => None,
    })
}

#[test]
fn wait_status_is_written_after_the_invalidated_routes_are_updated() {
    let (mut f, obs, _d) = observed_setup();
    f.write_irte(1, irte(0, 0x81, DEV));
    f.submit(&[iec_index(1, 0), wait_sw(QI_DONE, STATUS_ADDR)]);
    let seen = obs.take();
    let (_, status, _) = route_to(&seen, 0x81).expect("route updated before the wait returned");
    assert_eq!(
        status,
        [0, 0],
        "status written before the new route: {seen:?}"
    );
    assert_eq!(f.status(), QI_DONE);
    // The committed route follows at the next fire or commit.
    assert!(f.routes().iter().any(|(_, m)| m.vector() == 0x81));
}

#[test]
fn iwc_and_completion_event_come_after_the_invalidated_routes_are_updated() {
    let (mut f, obs, _d) = observed_setup();
    f.write_irte(2, irte(0, 0x82, DEV));
    f.submit(&[iec_global(), wait_if()]);
    let seen = obs.take();
    let (route, _, ics_then) = route_to(&seen, 0x82).expect("route updated");
    let event = seen
        .iter()
        .position(|o| matches!(o, Observation::Event { msi, .. } if *msi == ie_msg()))
        .expect("completion event sent");
    assert!(route < event, "{seen:?}");
    assert_eq!(ics_then & ics::IWC, 0, "IWC set before the new route");
    assert_eq!(f.read32(offset::ICS), ics::IWC);
}

#[test]
fn each_wait_in_a_batch_follows_only_the_invalidations_before_it() {
    let (mut f, obs, d) = observed_setup();
    f.write_irte(1, irte(0, 0x81, DEV));
    f.write_irte(2, irte(0, 0x82, DEV));
    f.submit(&[
        iec_index(1, 0),
        wait_sw(1, STATUS_ADDR),
        iec_index(2, 0),
        wait_sw(2, STATUS2_ADDR),
    ]);
    let seen = obs.take();
    // Entry 1's route before either status; entry 2's after the first wait and before the
    // second.
    assert_eq!(route_to(&seen, 0x81).map(|r| r.1), Some([0, 0]), "{seen:?}");
    assert_eq!(route_to(&seen, 0x82).map(|r| r.1), Some([1, 0]), "{seen:?}");
    let status2: u32 = f.mem.read_obj(GuestAddress(STATUS2_ADDR)).unwrap();
    assert_eq!([f.status(), status2], [1, 2]);
    let delivered: Vec<_> = d
        .snapshot()
        .iter()
        .map(|v| match v.remapped {
            Some(RemapOutcome::Deliver(m)) => Some(m.vector()),
            _ => None,
        })
        .collect();
    assert_eq!(delivered, [Some(0x40), Some(0x81), Some(0x82), Some(0x43)]);
    assert_eq!(f.iqh(), f.tail);
}

#[test]
fn a_wait_with_nothing_to_re_translate_changes_no_route() {
    let (mut f, obs, _d) = observed_setup();
    assert!(f.submit_sync(&[]));
    let seen = obs.take();
    assert!(
        seen.iter().all(|o| !matches!(o, Observation::Route { .. })),
        "{seen:?}"
    );
}

#[test]
fn a_full_queue_of_invalidations_each_followed_by_a_wait_completes_in_one_write() {
    let (mut f, obs, _d) = observed_setup();
    f.gcmd_clear(gcmd::QIE);
    f.enable_qi_at(0x20_0000, 7); // 32768 entries
    let mut descs = Vec::new();
    for i in 0..16_383u32 {
        descs.push(iec_index(i % 4, 0));
        descs.push(wait_sw(i + 1, STATUS_ADDR));
    }
    f.submit(&descs);
    assert_eq!(f.iqh(), 32_766);
    assert_eq!(f.status(), 16_383);
    assert_eq!(f.read32(offset::FSTS) & crate::vtd::spec::fsts::IQE, 0);
    // Translations did not change, so no route was touched.
    assert!(obs.take().is_empty());
}
