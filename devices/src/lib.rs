//! Platform device models of the VMM.
//!
//! - [`ioapic::Ioapic`]: the userspace IOAPIC of a split-irqchip VM; each redirection entry
//!   is a vector of an `IO-APIC` interrupt domain, so pins end on KVM irqfd routes like MSIs.
//! - [`serial::SerialPort`]: a 16550A UART (vm-superio) on an IOAPIC pin.
//! - [`dsa::Dsa`]: an emulated Intel DSA 1.0 (8086:0b25) for Linux's `idxd` driver, with an
//!   MSI-X domain and its Interrupt Message Store as an IMS domain.
//! - [`irqtest::IrqTest`]: a PCI device with MSI and MSI-X whose vectors the guest can fire
//!   and count, for end-to-end interrupt tests.
//! - [`power::PowerManagement`]: the HW-reduced ACPI sleep-control/reset register and the
//!   legacy reset ports, turning guest requests into [`power::GuestEvent`]s.

pub mod dsa;
pub mod ioapic;
pub mod irqtest;
pub mod power;
pub mod serial;
pub mod worker;
