//! Register file rules: capability values, read-only and reserved bits, access sizes, the
//! GCMD/GSTS handshake and latching.

use super::*;
use crate::vtd::spec::{cap, ecap, fsts, ics, iq, REGISTER_PAGE_SIZE, VERSION};

#[test]
fn version_is_1_0() {
    let f = Fixture::new();
    assert_eq!(f.read32(offset::VER), 0x10);
    assert_eq!(VERSION, 0x10);
}

#[test]
fn cap_describes_an_ir_only_unit_with_fault_records() {
    let f = Fixture::new();
    let c = f.read64(offset::CAP);
    assert_eq!(c, 0x0000_0700_202F_0000);
    assert_eq!((c >> 8) & 0x1F, 0, "SAGAW = 0: no DMA remapping");
    assert_eq!(c & cap::PI, 0, "no posted interrupts");
    assert_eq!(c & cap::ESIRTPS, 0);
    assert_eq!(((c >> 24) & 0x3FF) * 16, offset::FRCD);
    assert_eq!(((c >> 40) & 0xFF) + 1, 8);
}

#[test]
fn ecap_reports_qi_ir_eim_mhmv_and_iotlb_offset() {
    let f = Fixture::new();
    let e = f.read64(offset::ECAP);
    assert_eq!(e, 0x0000_0000_00F0_101B);
    for bit in [ecap::QI, ecap::IR, ecap::EIM, ecap::C] {
        assert_ne!(e & bit, 0);
    }
    assert_eq!(e & (ecap::DT | ecap::SMTS), 0);
    assert_eq!((e >> 20) & 0xF, 0xF);
    assert_eq!(((e >> 8) & 0x3FF) * 16, offset::IVA);
}

#[test]
fn fault_record_count_is_clamped_to_the_page() {
    let f = Fixture::with_records(0);
    assert_eq!(f.records().len(), 1);
    let f = Fixture::with_records(255);
    assert_eq!(f.records().len(), 224);
    assert_eq!(offset::FRCD + 224 * 16, REGISTER_PAGE_SIZE);
}

#[test]
fn gcmd_reads_zero() {
    let mut f = Fixture::new();
    f.enable_qi();
    assert_eq!(f.read32(offset::GCMD), 0);
    assert_ne!(f.gsts(), 0);
}

#[test]
fn read_only_registers_ignore_writes() {
    let mut f = Fixture::new();
    f.enable_qi();
    let before: Vec<u64> = [offset::VER, offset::CAP, offset::ECAP, offset::IQH]
        .iter()
        .map(|&o| f.read64(o))
        .collect();
    let gsts_before = f.gsts();
    for o in [offset::VER, offset::CAP, offset::ECAP, offset::IQH] {
        f.write64(o, !0);
    }
    f.write32(offset::GSTS, !0);
    let after: Vec<u64> = [offset::VER, offset::CAP, offset::ECAP, offset::IQH]
        .iter()
        .map(|&o| f.read64(o))
        .collect();
    assert_eq!(before, after);
    assert_eq!(f.gsts(), gsts_before);
}

#[test]
fn unknown_offsets_read_zero_and_ignore_writes() {
    let f = Fixture::new();
    for o in [
        0x4, 0x30, 0x48, 0x4C, 0x58, 0x5C, 0x64, 0xB0, 0xB4, 0xC0, 0x118, 0xFFC,
    ] {
        f.write32(o, !0);
        assert_eq!(f.read32(o), 0, "offset {o:#x}");
    }
    for o in [0x1F8, 0xFF8, 0x1000, !7] {
        f.write64(o, !0);
        assert_eq!(f.read64(o), 0, "offset {o:#x}");
    }
    // Beyond the last fault record (8 records end at 0x280).
    f.write64(0x280, !0);
    assert_eq!(f.read64(0x280), 0);
    // A read straddling the end of the page returns the in-page bytes only.
    let mut b = [0xAAu8; 8];
    f.unit.mmio_read(0xFFC, &mut b);
    assert_eq!(b, [0; 8]);
}

#[test]
fn every_access_size_and_alignment_reads_the_same_bytes() {
    let f = Fixture::new();
    let mut reference = [0u8; 0x30];
    f.unit.mmio_read(0, &mut reference);
    for len in [1usize, 2, 4, 8] {
        for start in 0..(0x30 - len) {
            let mut b = vec![0u8; len];
            f.unit.mmio_read(start as u64, &mut b);
            assert_eq!(b, &reference[start..start + len], "len {len} at {start:#x}");
        }
    }
    assert_eq!(
        u64::from_le_bytes(reference[8..16].try_into().unwrap()),
        f.read64(offset::CAP)
    );
}

#[test]
fn misaligned_write_spanning_two_registers_updates_both() {
    let f = Fixture::new();
    // 8 bytes at 0x3E: FEDATA bytes 2..3 (reserved), FEADDR, FEUADDR bytes 0..1.
    f.write64(0x3E, 0x1122_FEE0_2000_ABCD);
    assert_eq!(f.read32(offset::FEDATA), 0);
    assert_eq!(f.read32(offset::FEADDR), 0xFEE0_2000);
    assert_eq!(f.read32(offset::FEUADDR), 0x1122);
    // One byte into the middle of FEADDR.
    f.write(offset::FEADDR + 1, 0x30, 1);
    assert_eq!(f.read32(offset::FEADDR), 0xFEE0_3000);
}

#[test]
fn event_message_registers_keep_only_defined_bits() {
    let f = Fixture::new();
    f.write32(offset::FEDATA, 0xFFFF_FFFF);
    f.write32(offset::FEADDR, 0xFFFF_FFFF);
    f.write32(offset::FEUADDR, 0xFFFF_FF00);
    assert_eq!(f.read32(offset::FEDATA), 0xFFFF);
    assert_eq!(f.read32(offset::FEADDR), 0xFFFF_FFFC);
    assert_eq!(f.read32(offset::FEUADDR), 0xFFFF_FF00, "x2APIC dest 31:8");
    f.write32(offset::IEDATA, 0xFFFF_FFFF);
    f.write32(offset::IEADDR, 0xFFFF_FFFF);
    f.write32(offset::IEUADDR, 0x1200);
    assert_eq!(f.read32(offset::IEDATA), 0xFFFF);
    assert_eq!(f.read32(offset::IEADDR), 0xFFFF_FFFC);
    assert_eq!(f.read32(offset::IEUADDR), 0x1200);
    f.write32(offset::FECTL, 0x7FFF_FFFF);
    assert_eq!(
        f.read32(offset::FECTL),
        0,
        "only IM is writable; IP is read-only"
    );
}

#[test]
fn irta_keeps_base_eime_and_size_in_64_and_32_bit_writes() {
    let f = Fixture::new();
    f.write64(offset::IRTA, 0x1234_5678_9ABC_DFFF);
    assert_eq!(f.read64(offset::IRTA), 0x1234_5678_9ABC_D80F);
    f.write32(offset::IRTA, 0x0010_0800);
    f.write32(offset::IRTA + 4, 0);
    assert_eq!(f.read64(offset::IRTA), 0x0010_0800);
}

#[test]
fn iqa_dw_bit_is_reserved_without_scalable_mode() {
    let f = Fixture::new();
    f.write64(offset::IQA, 0x8_0000 | iq::IQA_DW | 0xFF);
    assert_eq!(f.read64(offset::IQA), 0x8_0007);
}

#[test]
fn iqt_keeps_only_the_index_field() {
    let f = Fixture::new();
    f.write64(offset::IQT, !0);
    assert_eq!(f.read64(offset::IQT), 0x7FFF0);
}

#[test]
fn qie_latches_iqa_and_resets_iqh() {
    let mut f = Fixture::new();
    f.enable_qi();
    assert!(f.submit_sync(&[]));
    assert_eq!(f.iqh(), 1);
    // Changing IQA while enabled does not move the queue.
    f.write64(offset::IQA, 0x20_0000);
    assert!(f.submit_sync(&[]));
    assert_eq!(f.iqh(), 2);
    // Re-enabling latches the new IQA and restarts at 0.
    f.gcmd_clear(gcmd::QIE);
    assert_eq!(f.gsts() & gsts::QIES, 0);
    f.write32(offset::IQT, 0);
    f.gcmd(gcmd::QIE);
    f.tail = 0;
    f.queue_base = 0x20_0000;
    assert_eq!(f.iqh(), 0);
    assert!(f.submit_sync(&[]));
    assert_eq!(f.iqh(), 1);
}

#[test]
fn persistent_bits_act_only_on_differences() {
    let mut f = Fixture::new();
    f.enable_qi();
    assert!(f.submit_sync(&[]));
    // Rewriting QIE (as Linux's shadow does with every command) must not reset IQH.
    f.gcmd(0);
    f.gcmd(gcmd::QIE);
    assert_eq!(f.iqh(), 1);
}

#[test]
fn sirtp_is_one_shot_and_irtps_stays_set() {
    let f = Fixture::new();
    f.set_table(IRT_BASE, true, 3);
    f.gcmd(0);
    assert_ne!(f.gsts() & gsts::IRTPS, 0);
    assert_eq!(f.gsts() & gcmd::SIRTP, gsts::IRTPS);
}

#[test]
fn partial_gcmd_write_keeps_unwritten_persistent_bits() {
    let mut f = Fixture::new();
    f.enable_qi();
    f.set_table(IRT_BASE, true, 3);
    // One-byte write of bits 31:24 with IRE only: QIE (bit 26) is in the same byte and
    // cleared, so QI goes off; CFI (bit 23, other byte) is untouched.
    f.write32(offset::GCMD, gcmd::QIE | gcmd::CFI);
    assert_ne!(f.gsts() & gsts::CFIS, 0);
    f.write(offset::GCMD + 3, u64::from(gcmd::IRE >> 24), 1);
    let s = f.gsts();
    assert_ne!(s & gsts::IRES, 0);
    assert_eq!(s & gsts::QIES, 0);
    assert_ne!(s & gsts::CFIS, 0, "byte 2 was not written");
}

#[test]
fn several_gcmd_bits_at_once_are_all_executed() {
    let f = Fixture::new();
    f.write64(offset::IQA, QUEUE_BASE);
    f.write64(offset::IRTA, IRT_BASE | irta::EIME | 0xF);
    f.write32(
        offset::GCMD,
        gcmd::QIE | gcmd::SIRTP | gcmd::IRE | gcmd::CFI | gcmd::TE | gcmd::WBF | gcmd::SRTP,
    );
    let s = f.gsts();
    let want = gsts::QIES | gsts::IRTPS | gsts::IRES | gsts::CFIS | gsts::RTPS;
    assert_eq!(s, want, "TE and WBF are not supported and stay clear");
    assert!(f.unit.summary().contains("entries=65536"));
}

#[test]
fn ccmd_and_iotlb_registers_complete_immediately() {
    let f = Fixture::new();
    // Context command: ICC | CIRG = global (01).
    f.write64(offset::CCMD, (1 << 63) | (1 << 61));
    let c = f.read64(offset::CCMD);
    assert_eq!(c >> 63, 0, "ICC cleared");
    assert_eq!((c >> 59) & 3, 1, "CAIG = CIRG");
    // IOTLB: IVT | IIRG = domain (10), written as two dwords high first.
    f.write32(offset::IOTLB + 4, (1 << 31) | (2 << 28));
    let t = f.read64(offset::IOTLB);
    assert_eq!(t >> 63, 0);
    assert_eq!((t >> 57) & 3, 2);
    f.write64(offset::IVA, 0x1234_5000);
    assert_eq!(f.read64(offset::IVA), 0x1234_5000);
}

#[test]
fn fsts_status_bits_are_write_one_to_clear_and_ppf_read_only() {
    let mut f = Fixture::new();
    f.enable_qi();
    f.submit(&[[0, 0]]); // type 0: IQE
    assert_ne!(f.read32(offset::FSTS) & fsts::IQE, 0);
    f.write32(offset::FSTS, 0);
    assert_ne!(
        f.read32(offset::FSTS) & fsts::IQE,
        0,
        "writing 0 changes nothing"
    );
    // Clearing IQE resumes at IQH, so repair the slot first (as Linux does).
    f.put_descriptor(0, [u64::from(desc::TYPE_WAIT), 0]);
    f.write32(offset::FSTS, fsts::PPF | fsts::IQE);
    assert_eq!(f.read32(offset::FSTS), 0);
}

#[test]
fn ics_iwc_is_write_one_to_clear() {
    let mut f = Fixture::new();
    f.enable_qi();
    f.submit(&[wait_if()]);
    assert_eq!(f.read32(offset::ICS), ics::IWC);
    f.write32(offset::ICS, 0);
    assert_eq!(f.read32(offset::ICS), ics::IWC);
    f.write(offset::ICS, 1, 1);
    assert_eq!(f.read32(offset::ICS), 0);
}

#[test]
fn cfi_sets_and_clears_cfis() {
    let f = Fixture::new();
    f.gcmd(gcmd::CFI);
    assert_eq!(f.gsts(), gsts::CFIS);
    f.gcmd_clear(gcmd::CFI);
    assert_eq!(f.gsts(), 0);
}

#[test]
fn clearing_qie_stops_queue_processing() {
    let mut f = Fixture::new();
    f.enable_qi();
    f.gcmd_clear(gcmd::QIE);
    f.mem.write_obj(0u32, GuestAddress(STATUS_ADDR)).unwrap();
    f.submit(&[wait_sw(QI_DONE, STATUS_ADDR)]);
    assert_eq!(f.status(), 0);
    assert_eq!(f.iqh(), 0);
}

#[test]
fn random_writes_everywhere_do_not_panic() {
    let mut f = Fixture::new();
    f.enable_ir();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..20_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let off = (x >> 8) % 0x1010;
        let len = [1usize, 2, 4, 8][(x & 3) as usize];
        let value = x.rotate_left(29);
        // Keep the queue and table pointers inside RAM most of the time, but not always.
        f.write(off, value, len);
        let mut b = [0u8; 8];
        f.unit.mmio_read(off, &mut b[..len]);
        f.remap(
            DEV,
            MsiMessage::new(0xFEE0_0010 | ((x as u32) & 0xFFFF0), 0, 0),
        );
    }
    // Bounded memory: the event message list never grows past a couple of entries per
    // access, and fault records stay fixed.
    assert_eq!(f.records().len(), 8);
}
