// SPDX-License-Identifier: Apache-2.0

//! ACPI table builder for an x86_64 Linux guest.
//!
//! The generated firmware tables describe a *hardware-reduced* ACPI platform
//! (no PM1 event/control blocks, no SCI, no GPEs, no legacy 8259 PIC):
//!
//! * **RSDP** (revision 2) pointing at the XSDT.
//! * **XSDT** listing the FADT, MADT, MCFG and any caller-supplied extra tables.
//! * **FADT** (ACPI 6.5 layout) with `HW_REDUCED_ACPI`, a reset register and
//!   the sleep control/status registers, all at the I/O port
//!   [`AcpiConfig::pm_port`], and `X_DSDT` pointing at the DSDT.
//! * **MADT** with one Local APIC (type 0) or Local x2APIC (type 9) entry per
//!   vCPU, one I/O APIC, an ISA IRQ0 -> GSI2 interrupt source override and
//!   LINT1 NMI entries.
//! * **MCFG** with one ECAM allocation for PCI segment 0.
//! * **DSDT** (AML) with the PCIe host bridge `\_SB.PCI0`, a `PNP0C02`
//!   motherboard-resource device reserving the ECAM window, optional COM1,
//!   one `ACPI0007` processor device per vCPU and the `\_S5_` sleep object.
//!
//! # Power-off and reset protocol (for the device model at `pm_port`)
//!
//! Every register in the FADT is the single 8-bit I/O port `pm_port`. Linux
//! (ACPICA, hardware-reduced mode) performs these 1-byte writes:
//!
//! | value written                                   | meaning                                   |
//! |-------------------------------------------------|-------------------------------------------|
//! | [`ACPI_RESET_VALUE`]                            | reset (FADT `RESET_REG`/`RESET_VALUE`)    |
//! | `0x80` ([`ACPI_WAK_STS`])                       | clear WAK_STS before sleeping - ignore    |
//! | `(ACPI_S5_SLP_TYP << 2) \| ACPI_SLP_EN` (`0x34`) | enter S5 = power off                      |
//!
//! A write is a sleep request iff bit 5 ([`ACPI_SLP_EN`]) is set; the
//! requested state is `(value >> ACPI_SLP_TYP_SHIFT) & 0x7`. After the sleep
//! write ACPICA polls the port (sleep status register) until bit 7 (WAK_STS)
//! reads as 1, so the vCPU must be stopped on the S5 write; reads should
//! return 0 otherwise.

use acpi_tables::aml::{
    self, AddressSpace as AmlAddressSpace, AddressSpaceCacheable, Device, EISAName, Memory32Fixed,
    Method, Name, Package, ResourceTemplate, Return, Scope, IO,
};
use acpi_tables::fadt::{FADTBuilder, Flags as FadtFlags};
use acpi_tables::gas::{AccessSize, AddressSpace as GasAddressSpace, GAS};
use acpi_tables::mcfg::MCFG;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{Aml, AmlSink};
use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

/// Value the guest writes to [`AcpiConfig::pm_port`] to request a reset.
///
/// This is the FADT `RESET_VALUE`; the FADT `RESET_REG` is the 8-bit I/O port
/// `pm_port` (`RESET_REG_SUP` is set). Linux's `acpi_reboot()` (the default
/// first reboot method on x86) performs a single `outb(ACPI_RESET_VALUE,
/// pm_port)`. Bit 5 ([`ACPI_SLP_EN`]) is clear, so a reset write can never be
/// confused with a sleep request written to the same port.
pub const ACPI_RESET_VALUE: u8 = 0x01;

/// SLP_TYP for S5 (soft-off) as declared by the DSDT's `\_S5_` package
/// (`Package { ACPI_S5_SLP_TYP, 0, 0, 0 }`).
///
/// On a hardware-reduced platform Linux powers off by writing
/// `(ACPI_S5_SLP_TYP << 2) | (1 << 5)` (= `0x34`, i.e. SLP_TYP in bits 4:2 and
/// SLP_EN in bit 5) to the FADT `SLEEP_CONTROL_REG`, which is the 8-bit I/O
/// port [`AcpiConfig::pm_port`]. See the module documentation for the full
/// decoding rules.
pub const ACPI_S5_SLP_TYP: u8 = 5;

/// SLP_EN bit of the hardware-reduced sleep control register (bit 5).
///
/// A byte written to [`AcpiConfig::pm_port`] with this bit set is a sleep
/// request for state `(value >> ACPI_SLP_TYP_SHIFT) & 0x7`.
pub const ACPI_SLP_EN: u8 = 1 << 5;

/// Bit position of SLP_TYP (3 bits wide) in the hardware-reduced sleep control
/// register.
pub const ACPI_SLP_TYP_SHIFT: u8 = 2;

/// WAK_STS bit of the hardware-reduced sleep status register (bit 7).
///
/// Linux writes this value to [`AcpiConfig::pm_port`] (write-1-to-clear)
/// right before a sleep request; the device model should ignore that write.
pub const ACPI_WAK_STS: u8 = 1 << 7;

/// Maximum number of vCPUs that can be described (DSDT processor device
/// names are `C000`..`CFFF`).
pub const ACPI_MAX_CPUS: u32 = 4096;

const OEM_ID: [u8; 6] = *b"RUSTVM";
const OEM_TABLE_ID: [u8; 8] = *b"RUSTVMM ";
const OEM_REVISION: u32 = 1;

/// Size of the standard ACPI system description table header.
const SDT_HEADER_LEN: usize = 36;
/// Alignment applied to every table placed in the table area.
const TABLE_ALIGN: u64 = 8;
/// Size of the (revision 2) RSDP structure.
const RSDP_LEN: u64 = 36;

/// IA-PC boot architecture flag: "VGA Not Present" (FADT `IAPC_BOOT_ARCH` bit 2).
/// Bits 0 (LEGACY_DEVICES) and 1 (8042) are left clear, so Linux skips the
/// i8042 probe.
const IAPC_BOOT_ARCH_VGA_NOT_PRESENT: u16 = 1 << 2;
/// IA-PC boot architecture flag: "CMOS RTC Not Present" (bit 5); the VMM has no RTC.
const IAPC_BOOT_ARCH_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;

/// Everything the ACPI tables describe about the machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcpiConfig {
    /// Number of vCPUs. Their APIC IDs (x2APIC IDs) are `0..num_cpus` and are
    /// also used as ACPI processor UIDs. IDs below 255 get an MADT Local APIC
    /// entry, IDs >= 255 a Local x2APIC entry. Must be in `1..=ACPI_MAX_CPUS`.
    pub num_cpus: u32,
    /// I/O APIC ID.
    pub ioapic_id: u8,
    /// I/O APIC MMIO base address (normally `0xFEC0_0000`).
    pub ioapic_addr: u32,
    /// First GSI handled by the I/O APIC (normally 0).
    pub ioapic_gsi_base: u32,
    /// Local APIC MMIO base address (normally `0xFEE0_0000`).
    pub lapic_addr: u32,
    /// PCI ECAM (MCFG) base address for bus 0 of segment 0. Must be 1 MiB
    /// aligned. The range `ecam_base .. ecam_base + (ecam_end_bus + 1) MiB` is
    /// also reserved through a `PNP0C02` device in the DSDT.
    pub ecam_base: u64,
    /// Last PCI bus number decoded by the ECAM window and the host bridge
    /// (0 for a single bus).
    pub ecam_end_bus: u8,
    /// `(base, size)` of the 32-bit PCI MMIO window; must lie below 4 GiB.
    /// A size of 0 omits the window.
    pub pci_mmio32: (u64, u64),
    /// `(base, size)` of the 64-bit PCI MMIO window. A size of 0 omits the
    /// window.
    pub pci_mmio64: (u64, u64),
    /// I/O port of the combined sleep control / sleep status / reset register
    /// (normally `0x3c0`). See the module documentation for how to decode
    /// writes to it.
    pub pm_port: u16,
    /// Describe COM1 (`PNP0501`, I/O `0x3F8`-`0x3FF`, ISA IRQ 4) in the DSDT.
    pub serial_com1: bool,
    /// PCI INTx routing on bus 0: `(slot, gsi)` for each function whose pin INTA is wired
    /// to I/O APIC input `gsi` (a `_PRT` entry with a static GSI, which Linux programs
    /// level-triggered, active-low). Empty: no `_PRT`.
    pub pci_intx: Vec<(u8, u32)>,
    /// Additional, complete and already-checksummed tables (e.g. a DMAR) to
    /// place in guest memory and list in the XSDT. Each must start with a
    /// standard 36-byte header whose length field equals the vector length.
    pub extra_tables: Vec<Vec<u8>>,
}

/// Errors returned by [`create_acpi_tables`].
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// A field of [`AcpiConfig`] (or an address argument) is out of range.
    #[error("invalid ACPI configuration: {0}")]
    InvalidConfig(String),
    /// An entry of [`AcpiConfig::extra_tables`] is not a well-formed table.
    #[error("extra ACPI table #{index} is malformed: {reason}")]
    InvalidExtraTable {
        /// Index into `extra_tables`.
        index: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The tables do not fit between `tables_addr` and `tables_end`.
    #[error(
        "ACPI tables need {needed:#x} bytes at {start:#x} but only {available:#x} bytes are available"
    )]
    TablesTooLarge {
        /// Start of the table area.
        start: u64,
        /// Bytes required (including alignment padding).
        needed: u64,
        /// Bytes available (`tables_end - tables_addr`).
        available: u64,
    },
    /// The RSDP would overlap the tables written to the table area.
    #[error("RSDP at {rsdp:#x} overlaps the ACPI tables at {start:#x}..{end:#x}")]
    RsdpOverlap {
        /// RSDP address.
        rsdp: u64,
        /// Start of the used table area.
        start: u64,
        /// End (exclusive) of the used table area.
        end: u64,
    },
    /// Writing a table to guest memory failed.
    #[error("failed to write ACPI table {table} to guest memory at {addr:#x}: {source}")]
    GuestMemory {
        /// Signature (or name) of the table being written.
        table: String,
        /// Guest physical address of the write.
        addr: u64,
        /// Underlying guest memory error.
        #[source]
        source: GuestMemoryError,
    },
}

/// Raw, already encoded AML bytes.
struct RawAml(Vec<u8>);

impl Aml for RawAml {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(&self.0);
    }
}

/// ASL `IRQNoFlags () { irq }`: small IRQ descriptor (edge, active high,
/// exclusive) for an ISA IRQ.
struct IrqNoFlags(u8);

impl Aml for IrqNoFlags {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.byte(0x22); // IRQ descriptor, 2 bytes of payload (no flags byte)
        sink.word(1u16 << self.0);
    }
}

/// ASL `QWordMemory (ResourceConsumer, PosDecode, MinFixed, MaxFixed,
/// NonCacheable, ReadWrite, ...)` (the `acpi_tables` address-space descriptor
/// is always a producer).
struct QWordMemoryConsumer {
    base: u64,
    len: u64,
}

impl Aml for QWordMemoryConsumer {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.byte(0x8a); // QWord Address Space Descriptor
        sink.word(43); // length of the rest of the descriptor
        sink.byte(0); // resource type: memory
        sink.byte((1 << 3) | (1 << 2) | 1); // MaxFixed | MinFixed | ResourceConsumer
        sink.byte(1); // ReadWrite, non-cacheable
        sink.qword(0); // granularity
        sink.qword(self.base); // minimum
        sink.qword(self.base + self.len - 1); // maximum
        sink.qword(0); // translation offset
        sink.qword(self.len); // length
    }
}

fn to_bytes(aml: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    aml.to_aml_bytes(&mut v);
    v
}

fn new_sdt(signature: [u8; 4], length: usize, revision: u8) -> Sdt {
    Sdt::new(
        signature,
        length as u32,
        revision,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    )
}

fn ecam_size(cfg: &AcpiConfig) -> u64 {
    (u64::from(cfg.ecam_end_bus) + 1) << 20
}

fn validate(cfg: &AcpiConfig, rsdp_addr: GuestAddress) -> Result<(), AcpiError> {
    let invalid = |msg: String| Err(AcpiError::InvalidConfig(msg));
    if cfg.num_cpus == 0 || cfg.num_cpus > ACPI_MAX_CPUS {
        return invalid(format!(
            "num_cpus {} not in 1..={ACPI_MAX_CPUS}",
            cfg.num_cpus
        ));
    }
    if cfg.ecam_base & ((1 << 20) - 1) != 0 {
        return invalid(format!(
            "ECAM base {:#x} is not 1 MiB aligned",
            cfg.ecam_base
        ));
    }
    if cfg.ecam_base.checked_add(ecam_size(cfg)).is_none() {
        return invalid("ECAM window overflows the address space".into());
    }
    let (base32, size32) = cfg.pci_mmio32;
    if size32 != 0
        && (size32 >= 1 << 32 || base32.checked_add(size32).is_none_or(|end| end > 1 << 32))
    {
        return invalid(format!(
            "32-bit PCI MMIO window {base32:#x}+{size32:#x} does not fit below 4 GiB"
        ));
    }
    let (base64, size64) = cfg.pci_mmio64;
    if size64 != 0 && base64.checked_add(size64 - 1).is_none() {
        return invalid(format!(
            "64-bit PCI MMIO window {base64:#x}+{size64:#x} overflows"
        ));
    }
    if cfg.pm_port == 0 {
        return invalid("pm_port must not be 0".into());
    }
    if rsdp_addr.0 & 0xf != 0 {
        return invalid(format!(
            "RSDP address {:#x} is not 16-byte aligned",
            rsdp_addr.0
        ));
    }
    for (index, t) in cfg.extra_tables.iter().enumerate() {
        let bad = |reason| Err(AcpiError::InvalidExtraTable { index, reason });
        if t.len() < SDT_HEADER_LEN {
            return bad("shorter than an ACPI table header");
        }
        let len = u32::from_le_bytes([t[4], t[5], t[6], t[7]]) as usize;
        if len != t.len() {
            return bad("header length does not match the buffer length");
        }
        if t.iter().fold(0u8, |a, b| a.wrapping_add(*b)) != 0 {
            return bad("checksum does not sum to zero");
        }
    }
    Ok(())
}

/// Builds the DSDT (header + AML).
fn build_dsdt(cfg: &AcpiConfig) -> Sdt {
    // \_SB.PCI0: PCIe host bridge for segment 0.
    let bus_range = AmlAddressSpace::<u16>::new_bus_number(0, u16::from(cfg.ecam_end_bus));
    let cfg_io = IO::new(0xcf8, 0xcf8, 1, 8);
    let io_low = AmlAddressSpace::<u16>::new_io(0x0000, 0x0cf7, None);
    let io_high = AmlAddressSpace::<u16>::new_io(0x0d00, 0xffff, None);
    let (base32, size32) = cfg.pci_mmio32;
    let mem32 = AmlAddressSpace::<u32>::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        base32 as u32,
        (base32 + size32).wrapping_sub(1) as u32,
        None,
    );
    let (base64, size64) = cfg.pci_mmio64;
    let mem64 = AmlAddressSpace::<u64>::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        base64,
        base64.wrapping_add(size64).wrapping_sub(1),
        None,
    );
    let mut pci_res: Vec<&dyn Aml> = vec![&bus_range, &cfg_io, &io_low, &io_high];
    if size32 != 0 {
        pci_res.push(&mem32);
    }
    if size64 != 0 {
        pci_res.push(&mem64);
    }
    let pci_crs = ResourceTemplate::new(pci_res);
    // _PRT: Package { Address (slot << 16 | 0xFFFF), Pin (0 = INTA), Source (0: the index is
    // a GSI), SourceIndex (GSI) } per INTx function.
    let prt_addrs: Vec<u32> = cfg
        .pci_intx
        .iter()
        .map(|&(slot, _)| (u32::from(slot) << 16) | 0xffff)
        .collect();
    let prt_entries: Vec<Package> = cfg
        .pci_intx
        .iter()
        .zip(&prt_addrs)
        .map(|((_, gsi), addr)| Package::new(vec![addr, &aml::ZERO, &aml::ZERO, gsi]))
        .collect();
    let prt_package = Package::new(prt_entries.iter().map(|p| p as &dyn Aml).collect());
    let prt = Name::new("_PRT".into(), &prt_package);
    let hid = Name::new("_HID".into(), &EISAName::new("PNP0A08"));
    let cid = Name::new("_CID".into(), &EISAName::new("PNP0A03"));
    let adr = Name::new("_ADR".into(), &aml::ZERO);
    let seg = Name::new("_SEG".into(), &aml::ZERO);
    let uid = Name::new("_UID".into(), &aml::ZERO);
    let bbn = Name::new("_BBN".into(), &aml::ZERO);
    let crs = Name::new("_CRS".into(), &pci_crs);
    let mut pci0_children: Vec<&dyn Aml> = vec![&hid, &cid, &adr, &seg, &uid, &bbn, &crs];
    if !cfg.pci_intx.is_empty() {
        pci0_children.push(&prt);
    }
    let pci0 = RawAml(to_bytes(&Device::new("PCI0".into(), pci0_children)));

    // \_SB.MBRD: motherboard resources, reserves the ECAM window so Linux
    // accepts the MCFG region even if the E820 map does not reserve it.
    let ecam_len = ecam_size(cfg);
    let ecam_res: Box<dyn Aml> = if cfg.ecam_base + ecam_len <= 1 << 32 {
        Box::new(Memory32Fixed::new(
            true,
            cfg.ecam_base as u32,
            ecam_len as u32,
        ))
    } else {
        Box::new(QWordMemoryConsumer {
            base: cfg.ecam_base,
            len: ecam_len,
        })
    };
    let mbrd_crs = ResourceTemplate::new(vec![ecam_res.as_ref()]);
    let mbrd = RawAml(to_bytes(&Device::new(
        "MBRD".into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0C02")),
            &Name::new("_UID".into(), &aml::ZERO),
            &Name::new("_CRS".into(), &mbrd_crs),
        ],
    )));

    // \_SB.COM1: 16550 UART at 0x3F8, ISA IRQ 4.
    let com1_io = IO::new(0x3f8, 0x3f8, 1, 8);
    let com1_irq = IrqNoFlags(4);
    let com1_crs = ResourceTemplate::new(vec![&com1_io, &com1_irq]);
    let com1 = RawAml(to_bytes(&Device::new(
        "COM1".into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0501")),
            &Name::new("_UID".into(), &aml::ONE),
            &Name::new("_CRS".into(), &com1_crs),
        ],
    )));

    // \_SB.Cxxx: one processor device per vCPU; _UID = APIC ID = MADT UID.
    let sta_present: u8 = 0x0f;
    let sta = RawAml(to_bytes(&Method::new(
        "_STA".into(),
        0,
        false,
        vec![&Return::new(&sta_present)],
    )));
    let mut cpus = Vec::new();
    for id in 0..cfg.num_cpus {
        let name = format!("C{id:03X}");
        Device::new(
            name.as_str().into(),
            vec![
                &Name::new("_HID".into(), &"ACPI0007"),
                &Name::new("_UID".into(), &id),
                &sta,
            ],
        )
        .to_aml_bytes(&mut cpus);
    }
    let cpus = RawAml(cpus);

    let mut sb_children: Vec<&dyn Aml> = vec![&cpus, &pci0, &mbrd];
    if cfg.serial_com1 {
        sb_children.push(&com1);
    }
    let sb = Scope::new("\\_SB_".into(), sb_children);

    // \_S5_: soft-off. SLP_TYPa, SLP_TYPb, reserved, reserved.
    let s5_typ = ACPI_S5_SLP_TYP;
    let s5 = Name::new(
        "\\_S5_".into(),
        &Package::new(vec![&s5_typ, &aml::ZERO, &aml::ZERO, &aml::ZERO]),
    );

    let mut dsdt = new_sdt(*b"DSDT", SDT_HEADER_LEN, 6);
    let mut body = Vec::new();
    sb.to_aml_bytes(&mut body);
    s5.to_aml_bytes(&mut body);
    dsdt.append_slice(&body);
    dsdt
}

/// Builds the FADT (ACPI 6.5, hardware-reduced).
fn build_fadt(cfg: &AcpiConfig, dsdt_addr: u64) -> Vec<u8> {
    let pm_reg = GAS::new(
        GasAddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(cfg.pm_port),
    );
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(FadtFlags::HwReducedAcpi)
        .flag(FadtFlags::ResetRegSup)
        // No fixed-feature power/sleep buttons exist on a HW-reduced platform.
        .flag(FadtFlags::PwrButton)
        .flag(FadtFlags::SlpButton);
    fadt.iapc_boot_arch =
        (IAPC_BOOT_ARCH_VGA_NOT_PRESENT | IAPC_BOOT_ARCH_CMOS_RTC_NOT_PRESENT).into();
    fadt.reset_reg = pm_reg;
    fadt.reset_value = ACPI_RESET_VALUE;
    fadt.sleep_control_reg = pm_reg;
    fadt.sleep_status_reg = pm_reg;
    to_bytes(&fadt.finalize())
}

/// Builds the MADT.
fn build_madt(cfg: &AcpiConfig) -> Sdt {
    let mut madt = new_sdt(*b"APIC", SDT_HEADER_LEN + 8, 5);
    madt.write_u32(36, cfg.lapic_addr);
    madt.write_u32(40, 0); // flags: no PCAT_COMPAT (no 8259 pair)

    let mut e = Vec::new();
    let mut has_x2apic = false;
    for id in 0..cfg.num_cpus {
        if id < 255 {
            // Processor Local APIC: type, len, ACPI processor UID, APIC ID, flags.
            e.extend_from_slice(&[0, 8, id as u8, id as u8]);
            e.extend_from_slice(&1u32.to_le_bytes()); // enabled
        } else {
            // Processor Local x2APIC: type, len, reserved, x2APIC ID, flags, UID.
            has_x2apic = true;
            e.extend_from_slice(&[9, 16, 0, 0]);
            e.extend_from_slice(&id.to_le_bytes());
            e.extend_from_slice(&1u32.to_le_bytes()); // enabled
            e.extend_from_slice(&id.to_le_bytes());
        }
    }
    // I/O APIC: type, len, ID, reserved, address, GSI base.
    e.extend_from_slice(&[1, 12, cfg.ioapic_id, 0]);
    e.extend_from_slice(&cfg.ioapic_addr.to_le_bytes());
    e.extend_from_slice(&cfg.ioapic_gsi_base.to_le_bytes());
    // Interrupt Source Override: ISA IRQ 0 -> GSI 2, flags 0 (conforms to ISA).
    e.extend_from_slice(&[2, 10, 0, 0]);
    e.extend_from_slice(&2u32.to_le_bytes());
    e.extend_from_slice(&0u16.to_le_bytes());
    // Local APIC NMI: all processors (UID 0xFF), flags 0, LINT1.
    e.extend_from_slice(&[4, 6, 0xff, 0, 0, 1]);
    if has_x2apic {
        // Local x2APIC NMI: flags 0, all processors (UID 0xFFFFFFFF), LINT1.
        e.extend_from_slice(&[0x0a, 12, 0, 0]);
        e.extend_from_slice(&u32::MAX.to_le_bytes());
        e.extend_from_slice(&[1, 0, 0, 0]);
    }
    madt.append_slice(&e);
    madt
}

/// Builds the MCFG.
fn build_mcfg(cfg: &AcpiConfig) -> Vec<u8> {
    let mut mcfg = MCFG::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    mcfg.add_ecam(cfg.ecam_base, 0, 0, cfg.ecam_end_bus);
    to_bytes(&mcfg)
}

fn align_up(v: u64) -> u64 {
    v.div_ceil(TABLE_ALIGN) * TABLE_ALIGN
}

/// Sequential allocator for the table area.
struct Placer {
    start: u64,
    next: u64,
    end: u64,
}

impl Placer {
    /// Reserves `len` bytes; the error is reported by [`Placer::check`].
    fn place(&mut self, len: usize) -> u64 {
        let addr = align_up(self.next);
        self.next = addr.saturating_add(len as u64);
        addr
    }

    fn check(&self) -> Result<(), AcpiError> {
        if self.next > self.end {
            return Err(AcpiError::TablesTooLarge {
                start: self.start,
                needed: self.next - self.start,
                available: self.end.saturating_sub(self.start),
            });
        }
        Ok(())
    }
}

/// Writes RSDP at `rsdp_addr` and all other tables starting at `tables_addr`
/// (must stay below `tables_end`, exclusive). Returns the RSDP address.
///
/// Layout in the table area (each table 8-byte aligned): DSDT, FADT, MADT,
/// MCFG, the extra tables in order, XSDT. Nothing is written to guest memory
/// unless everything fits. `rsdp_addr` must be 16-byte aligned and must not
/// overlap the used part of the table area; if the kernel is not told the
/// RSDP address through `boot_params.acpi_rsdp_addr`, it has to lie in the
/// BIOS area `0xE0000..0x100000` where Linux scans for it.
pub fn create_acpi_tables(
    mem: &GuestMemoryMmap,
    rsdp_addr: GuestAddress,
    tables_addr: GuestAddress,
    tables_end: GuestAddress,
    cfg: &AcpiConfig,
) -> Result<GuestAddress, AcpiError> {
    validate(cfg, rsdp_addr)?;

    let mut placer = Placer {
        start: tables_addr.0,
        next: tables_addr.0,
        end: tables_end.0,
    };
    let mut tables: Vec<(String, u64, Vec<u8>)> = Vec::new();

    let dsdt = build_dsdt(cfg);
    let dsdt_addr = placer.place(dsdt.len());
    tables.push(("DSDT".into(), dsdt_addr, dsdt.as_slice().to_vec()));

    let fadt = build_fadt(cfg, dsdt_addr);
    let fadt_addr = placer.place(fadt.len());
    tables.push(("FACP".into(), fadt_addr, fadt));

    let madt = build_madt(cfg);
    let madt_addr = placer.place(madt.len());
    tables.push(("APIC".into(), madt_addr, madt.as_slice().to_vec()));

    let mcfg = build_mcfg(cfg);
    let mcfg_addr = placer.place(mcfg.len());
    tables.push(("MCFG".into(), mcfg_addr, mcfg));

    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    xsdt.add_entry(mcfg_addr);
    for t in &cfg.extra_tables {
        let addr = placer.place(t.len());
        xsdt.add_entry(addr);
        let sig = String::from_utf8_lossy(&t[0..4]).into_owned();
        tables.push((sig, addr, t.clone()));
    }

    let xsdt = to_bytes(&xsdt);
    let xsdt_addr = placer.place(xsdt.len());
    tables.push(("XSDT".into(), xsdt_addr, xsdt));

    placer.check()?;
    let used_end = placer.next;
    if rsdp_addr.0 < used_end && tables_addr.0 < rsdp_addr.0.saturating_add(RSDP_LEN) {
        return Err(AcpiError::RsdpOverlap {
            rsdp: rsdp_addr.0,
            start: tables_addr.0,
            end: used_end,
        });
    }

    let rsdp = to_bytes(&Rsdp::new(OEM_ID, xsdt_addr));
    tables.push(("RSDP".into(), rsdp_addr.0, rsdp));

    for (table, addr, bytes) in &tables {
        log::debug!("ACPI: {table} at {addr:#x}, {:#x} bytes", bytes.len());
        mem.write_slice(bytes, GuestAddress(*addr))
            .map_err(|source| AcpiError::GuestMemory {
                table: table.clone(),
                addr: *addr,
                source,
            })?;
    }
    log::info!(
        "ACPI: RSDP at {:#x}, tables at {:#x}..{used_end:#x}",
        rsdp_addr.0,
        tables_addr.0
    );
    Ok(rsdp_addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSDP_ADDR: u64 = 0xe_0000;
    const TABLES_ADDR: u64 = 0xe_0040;
    const TABLES_END: u64 = 0x10_0000;
    const MEM_SIZE: usize = 0x20_0000;

    fn config(num_cpus: u32) -> AcpiConfig {
        AcpiConfig {
            num_cpus,
            ioapic_id: 0,
            ioapic_addr: 0xfec0_0000,
            ioapic_gsi_base: 0,
            lapic_addr: 0xfee0_0000,
            ecam_base: 0xe000_0000,
            ecam_end_bus: 0,
            pci_mmio32: (0xc000_0000, 0x2000_0000),
            pci_mmio64: (0x100_0000_0000, 0x10_0000_0000),
            pm_port: 0x3c0,
            serial_com1: true,
            pci_intx: Vec::new(),
            extra_tables: Vec::new(),
        }
    }

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
    }

    fn build(cfg: &AcpiConfig) -> GuestMemoryMmap {
        let mem = memory();
        let rsdp = create_acpi_tables(
            &mem,
            GuestAddress(RSDP_ADDR),
            GuestAddress(TABLES_ADDR),
            GuestAddress(TABLES_END),
            cfg,
        )
        .unwrap();
        assert_eq!(rsdp, GuestAddress(RSDP_ADDR));
        mem
    }

    fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    fn u16_at(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    /// Reads a whole table (header length) at `addr` and checks its checksum.
    fn read_table(mem: &GuestMemoryMmap, addr: u64) -> Vec<u8> {
        let hdr = read(mem, addr, SDT_HEADER_LEN);
        let t = read(mem, addr, u32_at(&hdr, 4) as usize);
        assert_eq!(sum(&t), 0, "bad checksum for {:?}", &t[0..4]);
        t
    }

    /// Returns (XSDT, list of tables referenced by the XSDT).
    fn tables(mem: &GuestMemoryMmap) -> (Vec<u8>, Vec<Vec<u8>>) {
        let rsdp = read(mem, RSDP_ADDR, RSDP_LEN as usize);
        let xsdt = read_table(mem, u64_at(&rsdp, 24));
        assert_eq!(&xsdt[0..4], b"XSDT");
        let entries = (SDT_HEADER_LEN..xsdt.len())
            .step_by(8)
            .map(|off| read_table(mem, u64_at(&xsdt, off)))
            .collect();
        (xsdt, entries)
    }

    fn find<'a>(tables: &'a [Vec<u8>], sig: &[u8; 4]) -> &'a [u8] {
        tables.iter().find(|t| &t[0..4] == sig).unwrap()
    }

    /// Returns (type, bytes) of each MADT interrupt controller structure.
    fn madt_entries(madt: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut off = 44;
        let mut out = Vec::new();
        while off < madt.len() {
            let len = madt[off + 1] as usize;
            assert!(len >= 2);
            out.push((madt[off], madt[off..off + len].to_vec()));
            off += len;
        }
        assert_eq!(off, madt.len());
        out
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn rsdp_signature_and_checksums() {
        let mem = build(&config(2));
        let rsdp = read(&mem, RSDP_ADDR, RSDP_LEN as usize);
        assert_eq!(&rsdp[0..8], b"RSD PTR ");
        assert_eq!(rsdp[15], 2, "revision");
        assert_eq!(sum(&rsdp[0..20]), 0, "ACPI 1.0 checksum");
        assert_eq!(u32_at(&rsdp, 20), 36, "length");
        assert_eq!(sum(&rsdp), 0, "extended checksum");
        let xsdt_addr = u64_at(&rsdp, 24);
        assert!((TABLES_ADDR..TABLES_END).contains(&xsdt_addr));
    }

    #[test]
    fn all_tables_checksum_and_xsdt_entries() {
        let mut cfg = config(2);
        // A minimal fake extra table (e.g. what a DMAR would look like).
        let mut extra = new_sdt(*b"DMAR", SDT_HEADER_LEN + 12, 1);
        extra.write_u8(SDT_HEADER_LEN, 39);
        cfg.extra_tables.push(extra.as_slice().to_vec());
        let mem = build(&cfg);
        let (_, entries) = tables(&mem);
        let sigs: Vec<&[u8]> = entries.iter().map(|t| &t[0..4]).collect();
        assert_eq!(sigs, vec![b"FACP", b"APIC", b"MCFG", b"DMAR"]);
        assert_eq!(find(&entries, b"DMAR"), extra.as_slice());

        // DSDT is reached through the FADT; read_table checks its checksum.
        let fadt = find(&entries, b"FACP");
        let dsdt = read_table(&mem, u64_at(fadt, 140));
        assert_eq!(&dsdt[0..4], b"DSDT");

        // Every table lies inside the table area, without overlaps.
        let rsdp = read(&mem, RSDP_ADDR, RSDP_LEN as usize);
        let xsdt_addr = u64_at(&rsdp, 24);
        let xsdt = read_table(&mem, xsdt_addr);
        let mut ranges: Vec<(u64, u64)> = (SDT_HEADER_LEN..xsdt.len())
            .step_by(8)
            .map(|off| u64_at(&xsdt, off))
            .chain([xsdt_addr, u64_at(fadt, 140)])
            .map(|a| (a, a + u64::from(u32_at(&read(&mem, a, 8), 4))))
            .collect();
        ranges.sort();
        assert_eq!(ranges.len(), 6);
        assert!(ranges[0].0 >= TABLES_ADDR && ranges[5].1 <= TABLES_END);
        assert!(ranges.windows(2).all(|w| w[0].1 <= w[1].0));
    }

    #[test]
    fn fadt_fields() {
        let mem = build(&config(2));
        let (_, entries) = tables(&mem);
        let fadt = find(&entries, b"FACP");
        assert_eq!(fadt.len(), 276);
        assert_eq!(fadt[8], 6, "major revision");
        assert_eq!(fadt[131], 5, "minor revision");
        let flags = u32_at(fadt, 112);
        assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
        assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
        assert_eq!(u16_at(fadt, 109) & 0b11, 0, "no legacy devices / 8042");
        assert_ne!(u16_at(fadt, 109) & (1 << 2), 0, "VGA not present");
        assert_eq!(u32_at(fadt, 40), 0, "32-bit DSDT");
        assert_eq!(u32_at(fadt, 36), 0, "FIRMWARE_CTRL");
        assert_eq!(u64_at(fadt, 132), 0, "X_FIRMWARE_CTRL");

        // RESET_REG: GAS at 116, RESET_VALUE at 128.
        let io_gas = [1u8, 8, 0, 1, 0xc0, 0x03, 0, 0, 0, 0, 0, 0];
        assert_eq!(&fadt[116..128], &io_gas);
        assert_eq!(fadt[128], ACPI_RESET_VALUE);
        // SLEEP_CONTROL_REG at 244, SLEEP_STATUS_REG at 256.
        assert_eq!(&fadt[244..256], &io_gas);
        assert_eq!(&fadt[256..268], &io_gas);
        // Legacy PM blocks are all absent.
        assert!(fadt[56..88].iter().all(|b| *b == 0));
        assert!(fadt[148..244].iter().all(|b| *b == 0));
    }

    fn check_madt(num_cpus: u32, want_lapic: usize, want_x2apic: usize) {
        let cfg = config(num_cpus);
        let mem = build(&cfg);
        let (_, entries) = tables(&mem);
        let madt = find(&entries, b"APIC");
        assert_eq!(u32_at(madt, 36), 0xfee0_0000);
        assert_eq!(u32_at(madt, 40), 0, "no PCAT_COMPAT");
        let e = madt_entries(madt);
        let lapic: Vec<_> = e.iter().filter(|(t, _)| *t == 0).collect();
        let x2apic: Vec<_> = e.iter().filter(|(t, _)| *t == 9).collect();
        assert_eq!(lapic.len(), want_lapic);
        assert_eq!(x2apic.len(), want_x2apic);
        for (i, (_, b)) in lapic.iter().enumerate() {
            assert_eq!(b.len(), 8);
            assert_eq!(b[2] as usize, i, "UID");
            assert_eq!(b[3] as usize, i, "APIC ID");
            assert_eq!(u32_at(b, 4), 1, "enabled");
        }
        for (i, (_, b)) in x2apic.iter().enumerate() {
            assert_eq!(b.len(), 16);
            assert_eq!(u32_at(b, 4) as usize, 255 + i, "x2APIC ID");
            assert_eq!(u32_at(b, 8), 1, "enabled");
            assert_eq!(u32_at(b, 12) as usize, 255 + i, "UID");
        }
        let ioapic: Vec<_> = e.iter().filter(|(t, _)| *t == 1).collect();
        assert_eq!(ioapic.len(), 1);
        assert_eq!(u32_at(&ioapic[0].1, 4), 0xfec0_0000);
        let iso: Vec<_> = e.iter().filter(|(t, _)| *t == 2).collect();
        assert_eq!(iso.len(), 1);
        assert_eq!(iso[0].1[3], 0, "source IRQ");
        assert_eq!(u32_at(&iso[0].1, 4), 2, "GSI");
        assert_eq!(e.iter().filter(|(t, _)| *t == 4).count(), 1);
        let x2nmi = e.iter().filter(|(t, _)| *t == 0x0a).count();
        assert_eq!(x2nmi, usize::from(want_x2apic > 0));
    }

    #[test]
    fn madt_two_cpus() {
        check_madt(2, 2, 0);
    }

    #[test]
    fn madt_300_cpus() {
        check_madt(300, 255, 45);
    }

    #[test]
    fn mcfg_allocation() {
        let mut cfg = config(1);
        cfg.ecam_end_bus = 3;
        let mem = build(&cfg);
        let (_, entries) = tables(&mem);
        let mcfg = find(&entries, b"MCFG");
        assert_eq!(mcfg.len(), 44 + 16);
        assert_eq!(u64_at(mcfg, 44), 0xe000_0000);
        assert_eq!(u16_at(mcfg, 52), 0, "segment");
        assert_eq!(mcfg[54], 0, "start bus");
        assert_eq!(mcfg[55], 3, "end bus");
    }

    #[test]
    fn dsdt_names() {
        let mem = build(&config(300));
        let (_, entries) = tables(&mem);
        let dsdt = read_table(&mem, u64_at(find(&entries, b"FACP"), 140));
        for name in [
            &b"_S5_"[..],
            b"PCI0",
            b"_SB_",
            b"MBRD",
            b"COM1",
            b"C000",
            b"C12B",
            b"ACPI0007",
        ] {
            assert!(contains(&dsdt, name), "{}", String::from_utf8_lossy(name));
        }
        assert!(!contains(&dsdt, b"C12C"));
        // \_S5_ package: Package(4) { 5, 0, 0, 0 }.
        assert!(contains(
            &dsdt,
            &[
                b'_',
                b'S',
                b'5',
                b'_',
                0x12,
                0x07,
                0x04,
                0x0a,
                ACPI_S5_SLP_TYP,
                0,
                0,
                0
            ]
        ));

        let mut cfg = config(1);
        cfg.serial_com1 = false;
        let mem = build(&cfg);
        let (_, entries) = tables(&mem);
        let dsdt = read_table(&mem, u64_at(find(&entries, b"FACP"), 140));
        assert!(!contains(&dsdt, b"COM1"));
    }

    #[test]
    fn prt_routes_inta_of_each_intx_slot_to_its_gsi() {
        let mem = build(&config(1));
        let (_, entries) = tables(&mem);
        let dsdt = read_table(&mem, u64_at(find(&entries, b"FACP"), 140));
        assert!(!contains(&dsdt, b"_PRT"), "no INTx function, no _PRT");
        let mut cfg = config(1);
        cfg.pci_intx = vec![(3, 16), (5, 17)];
        let mem = build(&cfg);
        let (_, entries) = tables(&mem);
        let dsdt = read_table(&mem, u64_at(find(&entries, b"FACP"), 140));
        assert!(contains(&dsdt, b"_PRT"));
        // Package(4) { DWord 0x0003FFFF, Zero, Zero, 16 (byte) }.
        let entry = |slot: u8, gsi: u8| {
            vec![
                0x12, 0x0b, 0x04, 0x0c, 0xff, 0xff, slot, 0x00, 0x00, 0x00, 0x0a, gsi,
            ]
        };
        assert!(contains(&dsdt, &entry(3, 16)), "{dsdt:x?}");
        assert!(contains(&dsdt, &entry(5, 17)));
    }

    #[test]
    fn tables_too_large() {
        let mem = memory();
        let cfg = config(300);
        let err = create_acpi_tables(
            &mem,
            GuestAddress(RSDP_ADDR),
            GuestAddress(TABLES_ADDR),
            GuestAddress(TABLES_ADDR + 0x400),
            &cfg,
        )
        .unwrap_err();
        assert!(matches!(err, AcpiError::TablesTooLarge { .. }), "{err}");
        // Nothing was written.
        assert!(read(&mem, RSDP_ADDR, 0x400).iter().all(|b| *b == 0));
    }

    #[test]
    fn invalid_inputs() {
        let mem = memory();
        let run = |cfg: &AcpiConfig, rsdp: u64| {
            create_acpi_tables(
                &mem,
                GuestAddress(rsdp),
                GuestAddress(TABLES_ADDR),
                GuestAddress(TABLES_END),
                cfg,
            )
        };
        assert!(matches!(
            run(&config(0), RSDP_ADDR),
            Err(AcpiError::InvalidConfig(_))
        ));
        assert!(matches!(
            run(&config(2), RSDP_ADDR + 8),
            Err(AcpiError::InvalidConfig(_))
        ));
        assert!(matches!(
            run(&config(2), TABLES_ADDR + 0x10),
            Err(AcpiError::RsdpOverlap { .. })
        ));
        let mut cfg = config(2);
        cfg.pci_mmio32 = (0xf000_0000, 0x2000_0000);
        assert!(matches!(
            run(&cfg, RSDP_ADDR),
            Err(AcpiError::InvalidConfig(_))
        ));
        let mut cfg = config(2);
        cfg.extra_tables.push(vec![0u8; 10]);
        assert!(matches!(
            run(&cfg, RSDP_ADDR),
            Err(AcpiError::InvalidExtraTable { index: 0, .. })
        ));
        let mut cfg = config(2);
        let mut bad = new_sdt(*b"DMAR", SDT_HEADER_LEN, 1).as_slice().to_vec();
        bad[20] ^= 1;
        cfg.extra_tables.push(bad);
        assert!(matches!(
            run(&cfg, RSDP_ADDR),
            Err(AcpiError::InvalidExtraTable { index: 0, .. })
        ));
        // Table area outside guest memory.
        let cfg = config(2);
        let err = create_acpi_tables(
            &mem,
            GuestAddress(RSDP_ADDR),
            GuestAddress(MEM_SIZE as u64),
            GuestAddress(MEM_SIZE as u64 + 0x10000),
            &cfg,
        )
        .unwrap_err();
        assert!(matches!(err, AcpiError::GuestMemory { .. }), "{err}");
    }

    #[test]
    fn ecam_above_4g_and_no_windows() {
        let mut cfg = config(2);
        cfg.ecam_base = 0x40_0000_0000;
        cfg.pci_mmio32 = (0, 0);
        cfg.pci_mmio64 = (0, 0);
        let mem = build(&cfg);
        let (_, entries) = tables(&mem);
        let dsdt = read_table(&mem, u64_at(find(&entries, b"FACP"), 140));
        // QWordMemory consumer descriptor for the ECAM window.
        assert!(contains(&dsdt, &[0x8a, 43, 0, 0, 0x0d, 1]));
    }
}
