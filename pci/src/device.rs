//! The trait every PCI function implements.

use crate::config::ConfigSpace;

/// A PCI function on the root bus.
///
/// Configuration accesses arrive already split per dword-contained access; BAR accesses
/// arrive with the BAR index and the offset inside it. Implementations must accept any
/// guest input: malformed accesses are ignored (writes) or read as all ones (reads).
pub trait PciDevice: Send {
    /// Human-readable name (used in logs and the interrupt hierarchy view).
    fn name(&self) -> &str;
    /// The function's configuration space.
    fn config(&self) -> &ConfigSpace;
    /// Mutable configuration space (for BAR placement by the VMM).
    fn config_mut(&mut self) -> &mut ConfigSpace;
    /// Reads the dword at `offset` (dword aligned). The default reads the config space.
    fn read_config(&mut self, offset: usize) -> u32 {
        self.config().read_dword(offset)
    }
    /// A guest write of `data` at `offset`. The default applies the write masks; devices with
    /// capabilities override it to react (then call the config space themselves).
    fn write_config(&mut self, offset: usize, data: &[u8]) {
        self.config_mut().guest_write(offset, data);
    }
    /// Reads from BAR `bar` at `offset`.
    fn bar_read(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    /// Writes to BAR `bar` at `offset`.
    fn bar_write(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}
}
