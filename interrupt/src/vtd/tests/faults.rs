//! Fault conditions 0x20–0x26, fault recording, overflow and the fault event.

use super::*;
use crate::vtd::spec::fsts;

/// Requests `msg` from `requester`, expects it blocked, and returns the single new record.
fn expect_fault(f: &Fixture, requester: RequesterId, msg: MsiMessage) -> FaultRecord {
    let before = f.pending_records().len();
    assert_eq!(f.remap(requester, msg), RemapOutcome::Blocked);
    let records = f.pending_records();
    assert_eq!(records.len(), before + 1, "one new record");
    *records.last().unwrap()
}

fn enabled() -> Fixture {
    let mut f = Fixture::new();
    f.enable_ir();
    f
}

#[test]
fn fault_0x20_upper_address_set_on_a_remappable_request() {
    let f = enabled();
    let mut m = msix_message(1);
    m.address |= 1 << 32;
    let r = expect_fault(&f, DEV, m);
    assert_eq!(r.reason(), 0x20);
    assert_eq!(r.index(), 1);
}

#[test]
fn fault_0x20_subhandle_data_bits_31_16_with_shv() {
    let f = enabled();
    let mut m = msix_message(1);
    m.data = 0x0001_0000;
    assert_eq!(expect_fault(&f, DEV, m).reason(), 0x20);
}

#[test]
fn fault_0x21_index_beyond_the_table_size() {
    let f = enabled();
    f.set_table(IRT_BASE, true, 3); // 16 entries
    let r = expect_fault(&f, DEV, msix_message(16));
    assert_eq!((r.reason(), r.index()), (0x21, 16));
    // handle + subhandle beyond 16 bits: recorded with the index truncated.
    f.set_table(IRT_BASE, true, 0xF);
    let mut m = msix_message(0xFFFF);
    m.data = 2;
    let r = expect_fault(&f, DEV, m);
    assert_eq!((r.reason(), r.index()), (0x21, 1));
}

#[test]
fn fault_0x22_entry_not_present() {
    let f = enabled();
    let mut e = irte(0, 0x40, DEV);
    e.lo &= !Irte::P;
    f.write_irte(3, e);
    let r = expect_fault(&f, DEV, msix_message(3));
    assert_eq!((r.reason(), r.index(), r.source_id()), (0x22, 3, DEV.0));
}

#[test]
fn fault_0x23_table_outside_ram() {
    for base in [RAM_SIZE, 0xFED9_0000, 0xFFFF_FFFF_FFFF_F000] {
        let f = enabled();
        f.set_table(base, true, 0xF);
        let r = expect_fault(&f, DEV, msix_message(0x200));
        assert_eq!(r.reason(), 0x23, "{base:#x}");
    }
}

#[test]
fn fault_0x23_when_ir_is_enabled_before_any_table_pointer() {
    let f = Fixture::new();
    f.gcmd(gcmd::IRE);
    assert!(f.unit.is_enabled());
    assert_eq!(expect_fault(&f, DEV, msix_message(0)).reason(), 0x23);
}

#[test]
fn fault_0x24_for_each_reserved_irte_field() {
    let base = irte(1, 0x40, DEV);
    let cases: [(&str, u64, u64); 8] = [
        ("lo 14:12", 1 << 12, 0),
        ("lo 31:24", 1 << 24, 0),
        ("posted (IM) without PI", Irte::IM, 0),
        ("DLM 011", 0b011 << Irte::DLM_SHIFT, 0),
        ("DLM 110", 0b110 << Irte::DLM_SHIFT, 0),
        ("hi 127:84", 0, 1 << 20),
        ("hi 127", 0, 1 << 63),
        ("lo 14", 1 << 14, 0),
    ];
    for (what, lo, hi) in cases {
        let f = enabled();
        f.write_irte(
            2,
            Irte {
                lo: base.lo | lo,
                hi: base.hi | hi,
            },
        );
        let r = expect_fault(&f, DEV, msix_message(2));
        assert_eq!(r.reason(), 0x24, "{what}");
    }
}

#[test]
fn fault_0x24_for_reserved_destination_bits_in_xapic_mode_only() {
    for (dest, reserved) in [
        (0x0000_0001u32, true),
        (0x0001_0000, true),
        (0x0000_0200, false),
    ] {
        let f = enabled();
        // x2APIC mode accepts any 32-bit destination.
        let mut e = irte(0, 0x40, DEV);
        e.lo |= u64::from(dest) << 32;
        f.write_irte(2, e);
        assert!(matches!(
            f.remap(DEV, msix_message(2)),
            RemapOutcome::Deliver(_)
        ));
        // xAPIC mode: only bits 47:40 (dest 15:8) may be set.
        f.set_table(IRT_BASE, false, 0xF);
        let got = f.remap(DEV, msix_message(2));
        assert_eq!(got == RemapOutcome::Blocked, reserved, "dest {dest:#x}");
    }
}

#[test]
fn fault_0x25_compatibility_format_blocked() {
    let f = enabled();
    let r = expect_fault(&f, DEV, MsiMessage::compose(1, false, 0x30, 0, false));
    assert_eq!((r.reason(), r.source_id()), (0x25, DEV.0));
}

#[test]
fn fault_0x26_source_id_mismatch_and_reserved_svt() {
    let f = enabled();
    f.write_irte(4, irte(0, 0x40, DEV));
    let other = RequesterId::pci(0, 4, 0);
    let r = expect_fault(&f, other, msix_message(4));
    assert_eq!((r.reason(), r.source_id()), (0x26, other.0));
    let mut e = irte(0, 0x40, DEV);
    e.hi |= 3 << 18;
    f.write_irte(4, e);
    assert_eq!(expect_fault(&f, DEV, msix_message(4)).reason(), 0x26);
}

#[test]
fn fpd_suppresses_only_qualified_faults() {
    let f = enabled();
    // 0x22 with FPD: not recorded.
    f.write_irte(
        1,
        Irte {
            lo: Irte::FPD,
            hi: 0,
        },
    );
    assert_eq!(f.remap(DEV, msix_message(1)), RemapOutcome::Blocked);
    // 0x24 and 0x26 with FPD: not recorded.
    f.write_irte(
        2,
        Irte {
            lo: irte(0, 0x40, DEV).lo | Irte::FPD | Irte::IM,
            hi: 0,
        },
    );
    assert_eq!(f.remap(DEV, msix_message(2)), RemapOutcome::Blocked);
    f.write_irte(
        3,
        Irte {
            lo: irte(0, 0x40, DEV).lo | Irte::FPD,
            hi: irte(0, 0x40, DEV).hi,
        },
    );
    assert_eq!(
        f.remap(RequesterId(0x99), msix_message(3)),
        RemapOutcome::Blocked
    );
    assert!(f.pending_records().is_empty());
    assert_eq!(f.unit.fault_count(), 0);
    assert!(f.unit.summary().contains("suppressed=3"));
    // Delivery still works with FPD set.
    assert!(matches!(
        f.remap(DEV, msix_message(3)),
        RemapOutcome::Deliver(_)
    ));
}

#[test]
fn fault_record_layout_matches_linux_decoding() {
    let f = enabled();
    f.write_irte(0x1234, Irte::default());
    f.remap(DEV, msix_message(0x1234));
    let r = f.pending_records()[0];
    // Linux: index = FRCD qword 0 >> 48; reason = dword 3 bits 7:0... of FR; SID dword 2.
    assert_eq!(r.lo, 0x1234u64 << 48);
    assert_eq!(f.read32(offset::FRCD + 8), u32::from(DEV.0));
    assert_eq!(f.read32(offset::FRCD + 12), 0x8000_0022);
}

#[test]
fn fri_names_the_first_pending_record_and_records_are_sequential() {
    let f = enabled();
    for i in 0..3 {
        f.remap(DEV, msix_message(100 + i)); // P = 0
    }
    let s = f.read32(offset::FSTS);
    assert_eq!(s, fsts::PPF, "FRI = 0, PPF");
    let idx: Vec<u16> = f.pending_records().iter().map(|r| r.index()).collect();
    assert_eq!(idx, vec![100, 101, 102]);
    // Service all three; the next fault lands in record 3 and FRI points there.
    for i in 0..3 {
        f.write32(offset::FRCD + i * 16 + 12, 1 << 31);
    }
    assert_eq!(f.read32(offset::FSTS) & fsts::PPF, 0);
    f.remap(DEV, msix_message(7));
    assert_eq!(f.read32(offset::FSTS), fsts::PPF | (3 << 8));
    assert_eq!(f.records()[3].index(), 7);
}

#[test]
fn a_full_ring_sets_pfo_and_drops_the_fault() {
    let f = enabled();
    for i in 0..9 {
        f.remap(DEV, msix_message(200 + i));
    }
    assert_eq!(f.pending_records().len(), 8);
    assert_ne!(f.read32(offset::FSTS) & fsts::PFO, 0);
    assert_eq!(
        f.unit.fault_count(),
        9,
        "the lost fault still counts as reported"
    );
    assert!(f.records().iter().all(|r| r.index() != 208));
}

#[test]
fn clearing_f_bits_clears_ppf_and_other_frcd_bits_are_read_only() {
    let f = enabled();
    f.remap(DEV, msix_message(200));
    f.write64(offset::FRCD, 0);
    f.write32(offset::FRCD + 8, 0);
    assert_eq!(f.records()[0].index(), 200);
    f.write(offset::FRCD + 15, 0x80, 1); // 1-byte write to bit 127
    assert!(f.pending_records().is_empty());
    assert_eq!(f.read32(offset::FSTS) & fsts::PPF, 0);
}

#[test]
fn fault_event_uses_fedata_feaddr_feuaddr() {
    let f = enabled();
    f.remap(DEV, msix_message(300));
    assert_eq!(f.signalled(), vec![fault_msg()]);
    assert_eq!(fault_msg().destination(), 0x100);
    assert_eq!(f.read32(offset::FECTL), 0, "IP cleared once sent");
}

#[test]
fn fault_event_fires_only_when_no_status_was_pending() {
    let f = enabled();
    f.remap(DEV, msix_message(300));
    f.remap(DEV, msix_message(301));
    assert_eq!(f.fault_events(), 1);
    // Linux's handler: clear each F from FRI, then FSTS.
    for i in 0..2 {
        f.write32(offset::FRCD + i * 16 + 12, 1 << 31);
    }
    f.write32(offset::FSTS, fsts::PFO | fsts::PPF | fsts::PRO);
    f.remap(DEV, msix_message(302));
    assert_eq!(f.fault_events(), 2);
}

#[test]
fn masked_fault_event_sets_ip_and_unmasking_delivers_once() {
    let f = enabled();
    f.write32(offset::FECTL, event_ctl::IM);
    f.remap(DEV, msix_message(300));
    assert_eq!(f.fault_events(), 0);
    assert_eq!(f.read32(offset::FECTL), event_ctl::IM | event_ctl::IP);
    f.write32(offset::FECTL, 0);
    assert_eq!(f.fault_events(), 1);
    f.write32(offset::FECTL, event_ctl::IM);
    f.write32(offset::FECTL, 0);
    assert_eq!(f.fault_events(), 1);
}

#[test]
fn servicing_faults_while_masked_drops_the_held_event() {
    let f = enabled();
    f.write32(offset::FECTL, event_ctl::IM);
    f.remap(DEV, msix_message(300));
    f.write32(offset::FRCD + 12, 1 << 31);
    assert_eq!(f.read32(offset::FECTL), event_ctl::IM);
    f.write32(offset::FECTL, 0);
    assert_eq!(f.fault_events(), 0);
}

#[test]
fn linux_dmar_fault_cleanup_at_boot_finds_nothing() {
    let f = Fixture::new();
    assert_eq!(f.read32(offset::FSTS), 0);
    f.write32(offset::FSTS, fsts::PFO | fsts::PPF | fsts::PRO);
    assert_eq!(f.read32(offset::FSTS), 0);
    assert!(f.signalled().is_empty());
}

#[test]
fn fault_storm_with_full_ring_and_masked_event_is_bounded() {
    let f = enabled();
    f.write32(offset::FECTL, event_ctl::IM);
    for i in 0..10_000u32 {
        f.remap(DEV, msix_message((i % 60_000) as u16 + 1000));
    }
    assert_eq!(f.pending_records().len(), 8);
    assert_eq!(f.unit.fault_count(), 10_000);
    assert!(f.signalled().is_empty());
    assert_eq!(
        f.read32(offset::FSTS) & (fsts::PFO | fsts::PPF),
        fsts::PFO | fsts::PPF
    );
}

#[test]
fn iqe_and_translation_faults_share_one_event() {
    let mut f = enabled();
    f.remap(DEV, msix_message(300));
    f.submit(&[[0xF, 0]]);
    assert_ne!(f.read32(offset::FSTS) & fsts::IQE, 0);
    assert_eq!(f.fault_events(), 1);
}
