//! `irqtest`: a PCI device for exercising interrupt delivery end to end.
//!
//! It has an MSI capability (up to 32 messages, 64-bit, per-vector masking) and an MSI-X
//! capability (1..=2048 vectors), and lets the guest fire any vector any number of times
//! and read per-vector counters back.
//!
//! BAR0 (4 KiB registers, all 32-bit):
//!
//! | off  | name         | access | meaning |
//! |------|--------------|--------|---------|
//! | 0x00 | MAGIC        | RO | `0x5451_5249` ("IRQT") |
//! | 0x04 | MSIX_VECTORS | RO | MSI-X table size |
//! | 0x08 | MSI_VECTORS  | RO | MSI messages supported |
//! | 0x0c | MODE         | RO | 0 none, 1 MSI, 2 MSI-X (what a fire uses) |
//! | 0x10 | FIRE         | WO | bits 15:0 vector, 31:16 count (0 means 1): fire that many times |
//! | 0x14 | SELECT       | RW | vector whose counters 0x18..0x24 show (in the current mode) |
//! | 0x18 | FIRES        | RO | fires accepted for the selected vector |
//! | 0x1c | DELIVERED    | RO | interrupts handed to the CPU vector layer |
//! | 0x20 | PENDING      | RO | 1 if the selected vector is pending |
//! | 0x24 | DROPPED      | RO | fires that could not be delivered (bad message) |
//! | 0x28 | REJECTED     | RO | FIRE writes refused (no mode, vector out of range) |
//!
//! BAR2 (64 KiB, 64-bit): MSI-X table at 0, PBA at 0x8000.

use std::sync::Arc;

use interrupt::{DeviceDomain, DomainKind, InterruptHierarchy, RequesterId};
use pci::msix::MSIX_MAX_VECTORS;
use pci::{Bar, BarKind, ConfigSpace, MsiCapability, MsixCapability, PciDevice};

/// PCI vendor ID of the test device.
pub const IRQTEST_VENDOR: u16 = 0x1b36;
/// PCI device ID of the test device.
pub const IRQTEST_DEVICE: u16 = 0x0110;
/// MAGIC register value.
pub const IRQTEST_MAGIC: u32 = 0x5451_5249;
/// MSI messages offered.
pub const IRQTEST_MSI_VECTORS: usize = 32;
/// Offset of the PBA in BAR2.
pub const IRQTEST_PBA_OFFSET: u64 = 0x8000;

/// Register offsets in BAR0.
pub mod regs {
    /// Magic.
    pub const MAGIC: u64 = 0x00;
    /// MSI-X table size.
    pub const MSIX_VECTORS: u64 = 0x04;
    /// MSI messages.
    pub const MSI_VECTORS: u64 = 0x08;
    /// Current mode.
    pub const MODE: u64 = 0x0c;
    /// Fire command.
    pub const FIRE: u64 = 0x10;
    /// Counter selector.
    pub const SELECT: u64 = 0x14;
    /// Fires of the selected vector.
    pub const FIRES: u64 = 0x18;
    /// Deliveries of the selected vector.
    pub const DELIVERED: u64 = 0x1c;
    /// Pending bit of the selected vector.
    pub const PENDING: u64 = 0x20;
    /// Drops of the selected vector.
    pub const DROPPED: u64 = 0x24;
    /// Rejected fire commands.
    pub const REJECTED: u64 = 0x28;
}

/// Errors creating the device.
#[derive(Debug, thiserror::Error)]
pub enum IrqTestError {
    /// Vector count outside 1..=2048.
    #[error("irqtest vectors must be 1..=2048, got {0}")]
    Vectors(usize),
    /// PCI setup failed.
    #[error("irqtest: {0}")]
    Pci(#[from] pci::Error),
}

/// The irqtest PCI function.
pub struct IrqTest {
    name: String,
    config: ConfigSpace,
    msi: MsiCapability,
    msix: MsixCapability,
    msi_domain: Arc<DeviceDomain>,
    msix_domain: Arc<DeviceDomain>,
    select: u32,
    rejected: u32,
}

/// Which capability a fire goes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Neither MSI nor MSI-X is enabled.
    None = 0,
    /// MSI.
    Msi = 1,
    /// MSI-X.
    MsiX = 2,
}

impl IrqTest {
    /// Creates the device at `requester` with `vectors` MSI-X vectors; its MSI and MSI-X
    /// domains are created in `hierarchy`.
    pub fn new(
        hierarchy: &Arc<InterruptHierarchy>,
        requester: RequesterId,
        vectors: usize,
    ) -> Result<Self, IrqTestError> {
        if vectors == 0 || vectors > MSIX_MAX_VECTORS {
            return Err(IrqTestError::Vectors(vectors));
        }
        let name = format!("irqtest {requester}");
        let mut config = ConfigSpace::new(IRQTEST_VENDOR, IRQTEST_DEVICE, 0xff, 0x00, 0, 1);
        config.set_bar(
            0,
            Bar {
                kind: BarKind::Memory32,
                size: 0x1000,
                prefetchable: false,
            },
        )?;
        config.set_bar(
            2,
            Bar {
                kind: BarKind::Memory64,
                size: 0x10000,
                prefetchable: false,
            },
        )?;
        let msi_domain =
            hierarchy.create_domain(&name, DomainKind::Msi, requester, IRQTEST_MSI_VECTORS, None);
        let msix_domain =
            hierarchy.create_domain(&name, DomainKind::MsiX, requester, vectors, None);
        let msi = MsiCapability::new(
            &mut config,
            IRQTEST_MSI_VECTORS,
            true,
            true,
            msi_domain.clone(),
        )?;
        let msix = MsixCapability::new(
            &mut config,
            vectors,
            2,
            0,
            2,
            IRQTEST_PBA_OFFSET,
            msix_domain.clone(),
        )?;
        Ok(Self {
            name,
            config,
            msi,
            msix,
            msi_domain,
            msix_domain,
            select: 0,
            rejected: 0,
        })
    }

    /// The mode fires currently use.
    pub fn mode(&self) -> Mode {
        if self.msix.enabled() {
            Mode::MsiX
        } else if self.msi.enabled() {
            Mode::Msi
        } else {
            Mode::None
        }
    }

    /// Fires `vector` `count` times through the enabled capability; false if refused.
    pub fn fire(&mut self, vector: usize, count: u32) -> bool {
        let ok = match self.mode() {
            Mode::MsiX if vector < self.msix.vectors() => {
                (0..count).all(|_| self.msix.fire(vector))
            }
            Mode::Msi if vector < self.msi.enabled_vectors(&self.config) => {
                (0..count).all(|_| self.msi.fire(&self.config, vector))
            }
            _ => false,
        };
        if !ok {
            self.rejected = self.rejected.wrapping_add(1);
        }
        ok
    }

    fn selected(&self) -> Option<interrupt::VectorSnapshot> {
        let d = match self.mode() {
            Mode::MsiX => &self.msix_domain,
            _ => &self.msi_domain,
        };
        d.vector_snapshot(self.select as usize)
    }

    fn read_reg(&self, offset: u64) -> u32 {
        let sel = || self.selected();
        match offset {
            regs::MAGIC => IRQTEST_MAGIC,
            regs::MSIX_VECTORS => self.msix.vectors() as u32,
            regs::MSI_VECTORS => IRQTEST_MSI_VECTORS as u32,
            regs::MODE => self.mode() as u32,
            regs::SELECT => self.select,
            regs::FIRES => sel().map_or(0, |s| s.fires as u32),
            regs::DELIVERED => sel().map_or(0, |s| s.deliveries as u32),
            regs::PENDING => sel().map_or(0, |s| u32::from(s.pending)),
            regs::DROPPED => sel().map_or(0, |s| s.dropped as u32),
            regs::REJECTED => self.rejected,
            _ => 0,
        }
    }
}

impl PciDevice for IrqTest {
    fn name(&self) -> &str {
        &self.name
    }

    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    fn read_config(&mut self, offset: usize) -> u32 {
        if self.msi.contains(offset) {
            return self.msi.read_dword(&self.config, offset);
        }
        self.config.read_dword(offset)
    }

    fn write_config(&mut self, offset: usize, data: &[u8]) {
        if !self.config.guest_write(offset, data) {
            return;
        }
        if self.msi.contains(offset) {
            self.msi.update(&self.config);
        }
        if self.msix.contains(offset) {
            self.msix.update(&self.config);
        }
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        if bar == 0 {
            data.fill(0);
            if data.len() == 4 && offset.is_multiple_of(4) {
                data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
            }
            return;
        }
        if !self.msix.bar_read(bar, offset, data) {
            data.fill(0);
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if bar == 0 {
            let Ok(b) = <[u8; 4]>::try_from(data) else {
                return;
            };
            let v = u32::from_le_bytes(b);
            match offset {
                regs::FIRE => {
                    let count = (v >> 16).max(1);
                    self.fire((v & 0xffff) as usize, count);
                }
                regs::SELECT => self.select = v,
                _ => {}
            }
            return;
        }
        self.msix.bar_write(bar, offset, data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use interrupt::{KvmVectorLayer, NoRemap, RecordingBackend};
    use pci::msix::control;

    fn setup(n: usize) -> (Arc<InterruptHierarchy>, IrqTest) {
        let h = InterruptHierarchy::new(
            Arc::new(KvmVectorLayer::new(
                Arc::new(RecordingBackend::default()),
                24,
                4096,
            )),
            Arc::new(NoRemap),
        );
        let d = IrqTest::new(&h, RequesterId::pci(0, 3, 0), n).unwrap();
        (h, d)
    }

    fn reg(d: &mut IrqTest, off: u64) -> u32 {
        let mut b = [0u8; 4];
        d.bar_read(0, off, &mut b);
        u32::from_le_bytes(b)
    }

    fn enable_msix(d: &mut IrqTest) {
        let off = d.msix.offset() + 2;
        d.write_config(off, &control::ENABLE.to_le_bytes());
    }

    #[test]
    fn identity_and_sizes() {
        let (_, mut d) = setup(2048);
        assert_eq!(d.config().u16_at(0), IRQTEST_VENDOR);
        assert_eq!(reg(&mut d, regs::MAGIC), IRQTEST_MAGIC);
        assert_eq!(reg(&mut d, regs::MSIX_VECTORS), 2048);
        assert!(IrqTest::new(&setup(1).0, RequesterId(0), 0).is_err());
        assert!(IrqTest::new(&setup(1).0, RequesterId(0), 2049).is_err());
    }

    #[test]
    fn fire_without_mode_is_rejected() {
        let (_, mut d) = setup(4);
        d.bar_write(0, regs::FIRE, &0u32.to_le_bytes());
        assert_eq!(reg(&mut d, regs::REJECTED), 1);
        assert_eq!(reg(&mut d, regs::MODE), 0);
    }

    #[test]
    fn msix_fire_counts_and_delivers() {
        let (_, mut d) = setup(4);
        enable_msix(&mut d);
        d.bar_write(2, 16, &0xfee0_0000u32.to_le_bytes());
        d.bar_write(2, 24, &0x41u32.to_le_bytes());
        d.bar_write(2, 28, &0u32.to_le_bytes());
        d.bar_write(0, regs::FIRE, &(1u32 | (5 << 16)).to_le_bytes());
        d.bar_write(0, regs::SELECT, &1u32.to_le_bytes());
        assert_eq!(reg(&mut d, regs::MODE), 2);
        assert_eq!(reg(&mut d, regs::FIRES), 5);
        assert_eq!(reg(&mut d, regs::DELIVERED), 5);
        d.bar_write(0, regs::FIRE, &7u32.to_le_bytes());
        assert_eq!(reg(&mut d, regs::REJECTED), 1);
    }

    #[test]
    fn garbage_register_accesses_are_harmless() {
        let (_, mut d) = setup(4);
        for off in [0u64, 3, 0x2c, 0xfff, 0x1000, u64::MAX] {
            d.bar_write(0, off, &[0xff; 4]);
            d.bar_write(0, off, &[0xff; 2]);
            let mut b = [0u8; 8];
            d.bar_read(0, off, &mut b);
            d.bar_read(2, off, &mut b);
            d.bar_write(2, off, &b);
        }
        d.bar_write(0, regs::SELECT, &u32::MAX.to_le_bytes());
        assert_eq!(reg(&mut d, regs::FIRES), 0);
    }
}
