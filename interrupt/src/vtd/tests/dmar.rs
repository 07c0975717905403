//! The ACPI DMAR table.

use super::*;

fn table() -> Vec<u8> {
    let f = Fixture::new();
    f.unit.dmar_table(2, *b"RUSTVM", *b"RUSTVMM ")
}

#[test]
fn dmar_table_bytes() {
    let t = table();
    let mut want = Vec::new();
    want.extend_from_slice(b"DMAR");
    want.extend_from_slice(&72u32.to_le_bytes());
    want.push(1); // revision
    want.push(t[9]); // checksum, checked separately
    want.extend_from_slice(b"RUSTVM");
    want.extend_from_slice(b"RUSTVMM ");
    want.extend_from_slice(&1u32.to_le_bytes());
    want.extend_from_slice(b"RVAT");
    want.extend_from_slice(&1u32.to_le_bytes());
    want.push(47); // HAW: 48-bit
    want.push(0x01); // INTR_REMAP only
    want.extend_from_slice(&[0; 10]);
    // DRHD: type 0, length 24, INCLUDE_PCI_ALL, size 0, segment 0, base.
    want.extend_from_slice(&[0, 0, 24, 0, 0x01, 0, 0, 0]);
    want.extend_from_slice(&0xFED9_0000u64.to_le_bytes());
    // IOAPIC scope: type 3, length 8, reserved, enumeration ID 2, bus 0xF0, path (31, 0).
    want.extend_from_slice(&[3, 8, 0, 0, 2, 0xF0, 0x1F, 0]);
    assert_eq!(t, want);
}

#[test]
fn dmar_checksum_sums_to_zero() {
    let t = table();
    assert_eq!(t.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
    assert_ne!(t[9], 0);
}

#[test]
fn dmar_scope_path_encodes_any_source_id() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
    let layer = Arc::new(KvmVectorLayer::new(
        Arc::new(RecordingBackend::default()),
        0,
        16,
    ));
    let unit = VtdUnit::new(
        mem,
        layer as Arc<dyn VectorLayer>,
        VtdConfig {
            register_base: 0xFEDA_0000,
            ioapic_source_id: RequesterId(0xFF00),
            num_fault_records: 4,
        },
    );
    let t = unit.dmar_table(0, *b"OEMID0", *b"TABLEID0");
    assert_eq!(&t[56..64], &0xFEDA_0000u64.to_le_bytes());
    assert_eq!(&t[64..72], &[3, 8, 0, 0, 0, 0xFF, 0, 0]);
    assert_eq!(t.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
}

#[test]
fn default_config_matches_the_conventional_placement() {
    let c = VtdConfig::default();
    assert_eq!(c.register_base, 0xFED9_0000);
    assert_eq!(c.ioapic_source_id, RequesterId(0xF0F8));
    assert_eq!(c.num_fault_records, 8);
}
