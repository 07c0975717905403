//! Guest physical address layout.
//!
//! ```text
//! 0x0000_0000  RAM (real-mode area; boot structures below)
//! 0x0009_FC00  reserved (EBDA, ACPI tables at 0xE0000, BIOS area)
//! 0x0010_0000  RAM: kernel at 1 MiB ... initramfs at the top of low RAM
//! 0xC000_0000  32-bit PCI MMIO window (512 MiB)
//! 0xE000_0000  PCI ECAM (bus 0: 1 MiB)
//! 0xFEC0_0000  IOAPIC
//! 0xFEE0_0000  LAPIC
//! 0x1_0000_0000 RAM above 4 GiB (memory beyond 3 GiB)
//! then         64-bit PCI MMIO window
//! ```

/// GDT location.
pub const GDT_ADDR: u64 = 0x500;
/// IDT location (empty IDT).
pub const IDT_ADDR: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_INFO_ADDR: u64 = 0x6000;
/// PVH module list (the initramfs).
pub const PVH_MODLIST_ADDR: u64 = 0x6040;
/// PVH memory map (up to 64 entries of 24 bytes).
pub const PVH_MEMMAP_ADDR: u64 = 0x6080;
/// Linux zero page (`struct boot_params`).
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// PML4 of the boot page tables.
pub const PML4_ADDR: u64 = 0x9000;
/// PDPT of the boot page tables.
pub const PDPT_ADDR: u64 = 0xa000;
/// Page directory of the boot page tables (maps the first GiB with 2 MiB pages).
pub const PD_ADDR: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_ADDR: u64 = 0x20000;
/// Maximum kernel command line length, including the terminating NUL.
pub const CMDLINE_MAX_SIZE: usize = 0x10000;
/// End of the first RAM range (start of the EBDA).
pub const EBDA_START: u64 = 0x9fc00;
/// RSDP location (in the BIOS read-only area Linux also scans).
pub const RSDP_ADDR: u64 = 0xe0000;
/// ACPI tables after the RSDP.
pub const ACPI_TABLES_ADDR: u64 = 0xe0040;
/// End of the ACPI table area.
pub const ACPI_TABLES_END: u64 = 0xf0000;
/// The x86 reset vector (real mode f000:fff0), where a reset stub is placed.
pub const RESET_VECTOR: u64 = 0xffff0;
/// Where the kernel's protected-mode part is loaded (1 MiB).
pub const KERNEL_LOAD_ADDR: u64 = 0x100000;
/// Start of the 32-bit MMIO hole (RAM stops here).
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// 32-bit PCI MMIO window.
pub const PCI_MMIO32_START: u64 = 0xc000_0000;
/// Size of the 32-bit PCI MMIO window.
pub const PCI_MMIO32_SIZE: u64 = 0x2000_0000;
/// PCI ECAM base.
pub const PCI_ECAM_START: u64 = 0xe000_0000;
/// Last bus number decoded by ECAM.
pub const PCI_ECAM_END_BUS: u8 = 0;
/// ECAM size (1 MiB per bus).
pub const PCI_ECAM_SIZE: u64 = (PCI_ECAM_END_BUS as u64 + 1) << 20;
/// Intel VT-d register page (one DRHD).
pub const VTD_BASE: u64 = 0xfed9_0000;
/// Size of the VT-d register page.
pub const VTD_SIZE: u64 = 0x1000;
/// LAPIC base.
pub const LAPIC_START: u64 = 0xfee0_0000;
/// Start of RAM above 4 GiB.
pub const HIGH_RAM_START: u64 = 0x1_0000_0000;
/// Size of the 64-bit PCI MMIO window.
pub const PCI_MMIO64_SIZE: u64 = 64 << 30;
/// TSS address KVM needs on Intel hosts (three pages below the IOAPIC's neighbour area).
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;
/// I/O port of the ACPI sleep-control/reset register.
pub const ACPI_PM_PORT: u16 = 0x3c0;

/// Guest RAM ranges `(start, size)` for `mem_size` bytes of memory.
pub fn ram_ranges(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_HOLE_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, MMIO_HOLE_START),
            (HIGH_RAM_START, mem_size - MMIO_HOLE_START),
        ]
    }
}

/// Start of the 64-bit PCI MMIO window: above all RAM, 1 GiB aligned.
pub fn pci_mmio64_start(mem_size: u64) -> u64 {
    let ram_end = ram_ranges(mem_size)
        .last()
        .map_or(HIGH_RAM_START, |(s, l)| s + l)
        .max(HIGH_RAM_START);
    (ram_end + (1 << 30) - 1) & !((1 << 30) - 1)
}

// The fixed regions must not overlap.
const _: () = {
    assert!(PCI_MMIO32_START + PCI_MMIO32_SIZE <= PCI_ECAM_START);
    assert!(PCI_ECAM_START + PCI_ECAM_SIZE <= devices::ioapic::IOAPIC_BASE);
    assert!(devices::ioapic::IOAPIC_BASE + devices::ioapic::IOAPIC_SIZE <= VTD_BASE);
    assert!(VTD_BASE + VTD_SIZE <= LAPIC_START);
    assert!(PD_ADDR + 0x1000 <= CMDLINE_ADDR);
    assert!(GDT_ADDR + 0x100 <= PVH_INFO_ADDR);
    assert!(PVH_INFO_ADDR + 56 <= PVH_MODLIST_ADDR);
    assert!(PVH_MODLIST_ADDR + 32 <= PVH_MEMMAP_ADDR);
    assert!(PVH_MEMMAP_ADDR + 64 * 24 <= ZERO_PAGE_ADDR);
    assert!(CMDLINE_ADDR + CMDLINE_MAX_SIZE as u64 <= EBDA_START);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_memory_is_one_range() {
        assert_eq!(ram_ranges(512 << 20), vec![(0, 512 << 20)]);
        assert_eq!(pci_mmio64_start(512 << 20), HIGH_RAM_START);
    }

    #[test]
    fn large_memory_splits_around_the_hole() {
        let r = ram_ranges(4 << 30);
        assert_eq!(r, vec![(0, 3 << 30), (HIGH_RAM_START, 1 << 30)]);
        assert_eq!(pci_mmio64_start(4 << 30), 5 << 30);
    }
}
