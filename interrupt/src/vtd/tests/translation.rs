//! Translation of compatibility- and remappable-format requests.

use super::*;

fn deliver(o: RemapOutcome) -> MsiMessage {
    match o {
        RemapOutcome::Deliver(m) => m,
        RemapOutcome::Blocked => panic!("blocked"),
    }
}

#[test]
fn ir_disabled_passes_compatibility_format_and_blocks_remappable() {
    let f = Fixture::new();
    let compat = MsiMessage::compose(0x1_0203, false, 0x41, 0, false);
    assert_eq!(f.remap(DEV, compat), RemapOutcome::Deliver(compat));
    assert_eq!(f.remap(DEV, msix_message(0)), RemapOutcome::Blocked);
    assert_eq!(
        f.remap(DEV, MsiMessage::new(0x1000, 0, 0x41)),
        RemapOutcome::Blocked
    );
    assert_eq!(f.unit.fault_count(), 0);
    assert!(!f.unit.is_enabled());
}

#[test]
fn linux_enable_sequence_then_per_irq_programming_translates() {
    let mut f = Fixture::new();
    f.enable_ir();
    assert_eq!(f.gsts(), gsts::QIES | gsts::IRES | gsts::IRTPS);
    f.program_irte(5, irte(3, 0x41, DEV));
    assert_eq!(
        f.remap(DEV, msix_message(5)),
        RemapOutcome::Deliver(MsiMessage::compose(3, false, 0x41, 0, false))
    );
    // Freeing: zero the entry, invalidate; the next request faults (P = 0).
    f.program_irte(5, Irte::default());
    assert_eq!(f.remap(DEV, msix_message(5)), RemapOutcome::Blocked);
    assert_eq!(f.pending_records()[0].reason(), 0x22);
}

#[test]
fn x2apic_destination_uses_kvm_encoding() {
    let mut f = Fixture::new();
    f.enable_ir();
    f.write_irte(1, irte(0x1234_5678, 0x30, DEV));
    let m = deliver(f.remap(DEV, msix_message(1)));
    assert_eq!(m.address_lo(), 0xFEE0_0000 | (0x78 << 12));
    assert_eq!(m.address_hi(), 0x1234_5600);
    assert_eq!(m.data, 0x30 | (1 << 14));
    assert_eq!(m.destination(), 0x1234_5678);
}

#[test]
fn redirection_hint_logical_mode_delivery_and_trigger_mode_are_carried() {
    let mut f = Fixture::new();
    f.enable_ir();
    let mut e = irte(0x0002_0001, 0xEC, DEV);
    e.lo |= Irte::RH | Irte::DM | Irte::TM | (1 << Irte::DLM_SHIFT);
    f.write_irte(2, e);
    let m = deliver(f.remap(DEV, msix_message(2)));
    assert_eq!(
        m.address_lo(),
        0xFEE0_0000 | (0x01 << 12) | (1 << 3) | (1 << 2)
    );
    assert_eq!(m.address_hi(), 0x0002_0000);
    assert_eq!(m.data, 0xEC | (1 << 8) | (1 << 14) | (1 << 15));
}

#[test]
fn smi_nmi_init_and_extint_delivery_modes_pass_through() {
    let mut f = Fixture::new();
    f.enable_ir();
    for dlm in [0b010u64, 0b100, 0b101, 0b111] {
        let mut e = irte(1, 0, DEV);
        e.lo |= dlm << Irte::DLM_SHIFT;
        f.write_irte(3, e);
        let m = deliver(f.remap(DEV, msix_message(3)));
        assert_eq!((m.data >> 8) & 7, dlm as u32);
    }
    assert_eq!(f.unit.fault_count(), 0);
}

#[test]
fn xapic_mode_takes_the_destination_from_bits_47_40() {
    let mut f = Fixture::new();
    f.enable_ir();
    f.set_table(IRT_BASE, false, 0xF);
    let mut e = irte(0, 0x51, DEV);
    e.lo |= 0x07 << 40;
    f.write_irte(4, e);
    let m = deliver(f.remap(DEV, msix_message(4)));
    assert_eq!(m, MsiMessage::compose(7, false, 0x51, 0, false));
    assert!(f.unit.summary().contains("EIME=0"));
}

#[test]
fn subhandle_is_added_to_the_handle_with_shv() {
    let mut f = Fixture::new();
    f.enable_ir();
    // Multi-MSI block at 32..40: the device puts the vector number in the data.
    for i in 0..8u32 {
        f.write_irte(32 + i, irte(0, 0x60 + i as u8, DEV));
    }
    let mut m = msix_message(32);
    m.data = 5;
    assert_eq!(deliver(f.remap(DEV, m)).vector(), 0x65);
    // Without SHV the data is ignored.
    let mut m = MsiMessage::remappable(32);
    m.data = 0xFFFF_0005;
    assert_eq!(deliver(f.remap(DEV, m)).vector(), 0x60);
}

#[test]
fn handle_bit_15_comes_from_address_bit_2() {
    let mut f = Fixture::new();
    f.enable_ir();
    f.write_irte(0x8001, irte(0, 0x77, DEV));
    let m = MsiMessage::remappable(0x8001);
    assert_ne!(m.address & 4, 0);
    assert_eq!(deliver(f.remap(DEV, m)).vector(), 0x77);
}

#[test]
fn ioapic_remappable_rte_message_translates_with_the_ioapic_source_id() {
    let mut f = Fixture::new();
    f.enable_ir();
    f.program_irte(9, irte(1, 0x39, IOAPIC_SID));
    // The IOAPIC presents index 9 with the pin's vector field in the data (SHV = 0).
    let mut m = MsiMessage::remappable(9);
    m.data = 4;
    assert_eq!(deliver(f.remap(IOAPIC_SID, m)).vector(), 0x39);
    assert_eq!(f.remap(DEV, m), RemapOutcome::Blocked, "wrong source");
}

#[test]
fn source_id_qualifiers_mask_function_bits() {
    let mut f = Fixture::new();
    f.enable_ir();
    let sid = RequesterId::pci(0, 4, 0); // 0x20
    for (sq, ok_funcs) in [
        (0u64, 0b0000_0001u8),
        (1, 0b0001_0001),
        (2, 0b0101_0101),
        (3, 0xFF),
    ] {
        let mut e = irte(0, 0x40, sid);
        e.hi |= sq << 16;
        f.write_irte(6, e);
        for func in 0..8u8 {
            let ok = ok_funcs & (1 << func) != 0;
            let got = f.remap(RequesterId::pci(0, 4, func), msix_message(6));
            assert_eq!(
                matches!(got, RemapOutcome::Deliver(_)),
                ok,
                "SQ {sq} func {func}"
            );
        }
    }
}

#[test]
fn bus_range_validation_checks_the_requester_bus() {
    let mut f = Fixture::new();
    f.enable_ir();
    let mut e = irte(0, 0x40, RequesterId(0x0305)); // buses 3..=5
    e.hi = (e.hi & !(3 << 18)) | (2 << 18);
    f.write_irte(7, e);
    for (bus, ok) in [(2u8, false), (3, true), (4, true), (5, true), (6, false)] {
        let got = f.remap(RequesterId::pci(bus, 1, 0), msix_message(7));
        assert_eq!(matches!(got, RemapOutcome::Deliver(_)), ok, "bus {bus}");
    }
}

#[test]
fn no_source_validation_accepts_any_requester() {
    let mut f = Fixture::new();
    f.enable_ir();
    let mut e = irte(0, 0x40, DEV);
    e.hi = 0;
    f.write_irte(8, e);
    assert!(matches!(
        f.remap(RequesterId(0xFFFF), msix_message(8)),
        RemapOutcome::Deliver(_)
    ));
}

#[test]
fn compatibility_format_passes_only_with_cfi() {
    let mut f = Fixture::new();
    f.enable_ir();
    let compat = MsiMessage::compose(2, false, 0x31, 0, false);
    assert_eq!(f.remap(DEV, compat), RemapOutcome::Blocked);
    f.gcmd(gcmd::CFI);
    assert_eq!(f.remap(DEV, compat), RemapOutcome::Deliver(compat));
}

#[test]
fn writes_outside_the_interrupt_window_are_not_interrupts() {
    let mut f = Fixture::new();
    f.enable_ir();
    for addr in [0x1000u32, 0xFED0_0010, 0xFEF0_0010] {
        assert_eq!(
            f.remap(DEV, MsiMessage::new(addr, 0, 0x30)),
            RemapOutcome::Blocked
        );
    }
    assert_eq!(f.unit.fault_count(), 0);
}

#[test]
fn sirtp_latches_irta_so_later_irta_writes_do_not_apply() {
    let mut f = Fixture::new();
    f.enable_ir();
    f.write_irte(1, irte(0, 0x41, DEV));
    // Point IRTA at empty memory without SIRTP: translation still uses the old table.
    f.write64(offset::IRTA, 0x30_0000 | irta::EIME | 0xF);
    assert!(matches!(
        f.remap(DEV, msix_message(1)),
        RemapOutcome::Deliver(_)
    ));
    f.gcmd(gcmd::SIRTP);
    assert_eq!(f.remap(DEV, msix_message(1)), RemapOutcome::Blocked);
}

#[test]
fn table_at_the_end_of_ram_reads_entries_inside_and_faults_beyond() {
    let mut f = Fixture::new();
    f.enable_ir();
    let base = RAM_SIZE - 0x1000; // 256 entries fit, S = 0xF asks for 65536
    f.set_table(base, true, 0xF);
    let e = irte(0, 0x42, DEV);
    f.mem
        .write_obj(e.lo, GuestAddress(base + 255 * 16))
        .unwrap();
    f.mem
        .write_obj(e.hi, GuestAddress(base + 255 * 16 + 8))
        .unwrap();
    assert!(matches!(
        f.remap(DEV, msix_message(255)),
        RemapOutcome::Deliver(_)
    ));
    assert_eq!(f.remap(DEV, msix_message(256)), RemapOutcome::Blocked);
    assert_eq!(f.pending_records()[0].reason(), 0x23);
}

#[test]
fn disabling_ir_returns_to_pass_through() {
    let mut f = Fixture::new();
    f.enable_ir();
    f.gcmd_clear(gcmd::IRE);
    assert!(!f.unit.is_enabled());
    let compat = MsiMessage::compose(2, false, 0x31, 0, false);
    assert_eq!(f.remap(DEV, compat), RemapOutcome::Deliver(compat));
    assert_eq!(f.remap(DEV, msix_message(1)), RemapOutcome::Blocked);
}
