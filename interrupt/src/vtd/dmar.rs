//! The ACPI DMAR table describing the unit (§8.1, §8.3, §8.3.1).

use crate::remap::RequesterId;

use super::spec::dmar;

/// Builds a complete, checksummed DMAR table: INTR_REMAP only, one DRHD with
/// INCLUDE_PCI_ALL at `register_base`, one IOAPIC device scope whose single path entry
/// gives `ioapic_source_id`.
pub(super) fn build(
    register_base: u64,
    ioapic_id: u8,
    ioapic_source_id: RequesterId,
    oem_id: [u8; 6],
    oem_table_id: [u8; 8],
) -> Vec<u8> {
    let sid = ioapic_source_id.0;
    let drhd_len = dmar::DRHD_LEN + dmar::SCOPE_LEN_ONE_PATH;
    let total = dmar::STRUCTURES_OFFSET + drhd_len;

    let mut t = Vec::with_capacity(total);
    // Standard ACPI header.
    t.extend_from_slice(&dmar::SIGNATURE);
    t.extend_from_slice(&(total as u32).to_le_bytes());
    t.push(dmar::REVISION);
    t.push(0); // checksum, fixed below
    t.extend_from_slice(&oem_id);
    t.extend_from_slice(&oem_table_id);
    t.extend_from_slice(&dmar::OEM_REVISION.to_le_bytes());
    t.extend_from_slice(&dmar::CREATOR_ID);
    t.extend_from_slice(&dmar::CREATOR_REVISION.to_le_bytes());
    debug_assert_eq!(t.len(), dmar::HEADER_LEN);
    // DMAR fields: host address width, flags (x2APIC opt-out left clear), reserved.
    t.push(dmar::HOST_ADDRESS_WIDTH);
    t.push(dmar::FLAG_INTR_REMAP);
    t.extend_from_slice(&[0; 10]);
    debug_assert_eq!(t.len(), dmar::STRUCTURES_OFFSET);
    // DRHD: every PCI device on segment 0, one register page.
    t.extend_from_slice(&dmar::TYPE_DRHD.to_le_bytes());
    t.extend_from_slice(&(drhd_len as u16).to_le_bytes());
    t.push(dmar::DRHD_INCLUDE_PCI_ALL);
    t.push(0); // size: 2^0 pages
    t.extend_from_slice(&0u16.to_le_bytes()); // segment
    t.extend_from_slice(&register_base.to_le_bytes());
    // IOAPIC device scope: start bus and one (device, function) path entry.
    t.push(dmar::SCOPE_IOAPIC);
    t.push(dmar::SCOPE_LEN_ONE_PATH as u8);
    t.extend_from_slice(&0u16.to_le_bytes());
    t.push(ioapic_id);
    t.push((sid >> 8) as u8);
    t.push(((sid >> 3) & 0x1F) as u8);
    t.push((sid & 7) as u8);
    debug_assert_eq!(t.len(), total);

    let sum = t.iter().fold(0u8, |acc, b| acc.wrapping_add(*b));
    t[9] = 0u8.wrapping_sub(sum);
    t
}
