//! Type-0 configuration space with per-byte write masks (PCI Local Bus 3.0, ch. 6).
//!
//! The space is stored as bytes with a write mask and a write-1-to-clear mask per byte, so
//! every register rule (read-only fields, BAR size masks, RW1C status bits) is data, not code.

use crate::Error;

/// Size of the conventional configuration space.
pub const CONFIG_SPACE_SIZE: usize = 256;
/// Offset where capabilities start.
pub const CAPABILITIES_START: u8 = 0x40;

/// Standard register offsets.
pub mod reg {
    /// Vendor ID (16 bits).
    pub const VENDOR_ID: usize = 0x00;
    /// Device ID (16 bits).
    pub const DEVICE_ID: usize = 0x02;
    /// Command (16 bits).
    pub const COMMAND: usize = 0x04;
    /// Status (16 bits).
    pub const STATUS: usize = 0x06;
    /// Revision ID.
    pub const REVISION: usize = 0x08;
    /// Programming interface.
    pub const PROG_IF: usize = 0x09;
    /// Subclass.
    pub const SUBCLASS: usize = 0x0a;
    /// Base class.
    pub const CLASS: usize = 0x0b;
    /// Header type.
    pub const HEADER_TYPE: usize = 0x0e;
    /// First BAR.
    pub const BAR0: usize = 0x10;
    /// Subsystem vendor ID.
    pub const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
    /// Subsystem ID.
    pub const SUBSYSTEM_ID: usize = 0x2e;
    /// Capabilities pointer.
    pub const CAPABILITIES: usize = 0x34;
    /// Interrupt line.
    pub const INTERRUPT_LINE: usize = 0x3c;
    /// Interrupt pin.
    pub const INTERRUPT_PIN: usize = 0x3d;
}

/// Command register bits.
pub mod command {
    /// I/O space decode enable.
    pub const IO: u16 = 1 << 0;
    /// Memory space decode enable.
    pub const MEMORY: u16 = 1 << 1;
    /// Bus master enable.
    pub const BUS_MASTER: u16 = 1 << 2;
    /// INTx disable.
    pub const INTX_DISABLE: u16 = 1 << 10;
}

/// Status register bit: capabilities list present.
pub const STATUS_CAP_LIST: u16 = 1 << 4;

/// Kind of a BAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    /// 32-bit memory BAR.
    Memory32,
    /// 64-bit memory BAR (uses two BAR slots).
    Memory64,
    /// I/O BAR.
    Io,
}

/// A BAR a device exposes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar {
    /// Kind.
    pub kind: BarKind,
    /// Size in bytes (power of two; memory ≥ 16, I/O ≥ 4).
    pub size: u64,
    /// Prefetchable (memory only).
    pub prefetchable: bool,
}

/// A type-0 configuration space.
#[derive(Clone)]
pub struct ConfigSpace {
    bytes: [u8; CONFIG_SPACE_SIZE],
    wmask: [u8; CONFIG_SPACE_SIZE],
    w1c: [u8; CONFIG_SPACE_SIZE],
    bars: [Option<Bar>; 6],
    last_cap: Option<u8>,
    next_cap_offset: u8,
}

impl ConfigSpace {
    /// A type-0 header for the given identity. Command bits IO, MEMORY, BUS_MASTER and
    /// INTX_DISABLE are writable; status error bits are RW1C.
    pub fn new(
        vendor: u16,
        device: u16,
        class: u8,
        subclass: u8,
        prog_if: u8,
        revision: u8,
    ) -> Self {
        let mut c = Self {
            bytes: [0; CONFIG_SPACE_SIZE],
            wmask: [0; CONFIG_SPACE_SIZE],
            w1c: [0; CONFIG_SPACE_SIZE],
            bars: [None; 6],
            last_cap: None,
            next_cap_offset: CAPABILITIES_START,
        };
        c.set_u16(reg::VENDOR_ID, vendor);
        c.set_u16(reg::DEVICE_ID, device);
        c.bytes[reg::REVISION] = revision;
        c.bytes[reg::PROG_IF] = prog_if;
        c.bytes[reg::SUBCLASS] = subclass;
        c.bytes[reg::CLASS] = class;
        let cmd_mask = command::IO | command::MEMORY | command::BUS_MASTER | command::INTX_DISABLE;
        c.set_wmask_u16(reg::COMMAND, cmd_mask);
        // Status: master/target abort, parity error bits are RW1C.
        c.w1c[reg::STATUS + 1] = 0xf9;
        c.wmask[reg::INTERRUPT_LINE] = 0xff;
        c
    }

    /// Reads `N` bytes at `offset` (out-of-range bytes read as 0xff).
    fn get<const N: usize>(&self, offset: usize) -> [u8; N] {
        let mut out = [0xff; N];
        for (i, b) in out.iter_mut().enumerate() {
            if let Some(v) = self.bytes.get(offset + i) {
                *b = *v;
            }
        }
        out
    }

    /// Reads a 16-bit register.
    pub fn u16_at(&self, offset: usize) -> u16 {
        u16::from_le_bytes(self.get(offset))
    }

    /// Reads a 32-bit register.
    pub fn u32_at(&self, offset: usize) -> u32 {
        u32::from_le_bytes(self.get(offset))
    }

    /// Sets a 16-bit value as the device (ignores write masks).
    pub fn set_u16(&mut self, offset: usize, v: u16) {
        self.set_bytes(offset, &v.to_le_bytes());
    }

    /// Sets a 32-bit value as the device (ignores write masks).
    pub fn set_u32(&mut self, offset: usize, v: u32) {
        self.set_bytes(offset, &v.to_le_bytes());
    }

    /// Sets raw bytes as the device (ignores write masks). Out-of-range bytes are ignored.
    pub fn set_bytes(&mut self, offset: usize, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            if let Some(dst) = self.bytes.get_mut(offset + i) {
                *dst = *b;
            }
        }
    }

    /// Sets the guest-writable bits of a 16-bit register.
    pub fn set_wmask_u16(&mut self, offset: usize, mask: u16) {
        self.set_wmask(offset, &mask.to_le_bytes());
    }

    /// Sets the guest-writable bits of bytes starting at `offset`.
    pub fn set_wmask(&mut self, offset: usize, mask: &[u8]) {
        for (i, m) in mask.iter().enumerate() {
            if let Some(dst) = self.wmask.get_mut(offset + i) {
                *dst = *m;
            }
        }
    }

    /// Reads the dword containing `offset` (aligned down). Offsets beyond the conventional
    /// space read as 0 (no extended capabilities).
    pub fn read_dword(&self, offset: usize) -> u32 {
        let aligned = offset & !3;
        if aligned >= CONFIG_SPACE_SIZE {
            return 0;
        }
        self.u32_at(aligned)
    }

    /// A guest write of `data` (1, 2 or 4 bytes) at `offset`, honouring write masks and
    /// RW1C bits. Returns false when the access was malformed and ignored.
    pub fn guest_write(&mut self, offset: usize, data: &[u8]) -> bool {
        if !matches!(data.len(), 1 | 2 | 4) || offset + data.len() > CONFIG_SPACE_SIZE {
            return false;
        }
        for (i, &v) in data.iter().enumerate() {
            let o = offset + i;
            let m = self.wmask[o];
            let c = self.w1c[o];
            self.bytes[o] = (self.bytes[o] & !m) | (v & m);
            self.bytes[o] &= !(v & c);
        }
        true
    }

    /// Declares BAR `index`. A 64-bit BAR also occupies `index + 1`.
    pub fn set_bar(&mut self, index: usize, bar: Bar) -> Result<(), Error> {
        let max = if bar.kind == BarKind::Memory64 { 5 } else { 6 };
        if index >= max {
            return Err(Error::InvalidBar {
                bar: index,
                reason: "index out of range",
            });
        }
        let min = if bar.kind == BarKind::Io { 4 } else { 16 };
        if !bar.size.is_power_of_two() || bar.size < min {
            return Err(Error::InvalidBar {
                bar: index,
                reason: "size must be a power of two of at least 16 (4 for I/O)",
            });
        }
        if bar.kind != BarKind::Memory64 && bar.size > 1 << 31 {
            return Err(Error::InvalidBar {
                bar: index,
                reason: "too large for a 32-bit BAR",
            });
        }
        let off = reg::BAR0 + 4 * index;
        let addr_mask = !(bar.size - 1);
        let (type_bits, low_mask) = match bar.kind {
            BarKind::Io => (0x1u32, (addr_mask as u32) & 0xffff_fffc),
            BarKind::Memory32 => (
                u32::from(bar.prefetchable) << 3,
                (addr_mask as u32) & 0xffff_fff0,
            ),
            BarKind::Memory64 => (
                (u32::from(bar.prefetchable) << 3) | 0x4,
                (addr_mask as u32) & 0xffff_fff0,
            ),
        };
        self.set_u32(off, type_bits);
        self.set_wmask(off, &low_mask.to_le_bytes());
        if bar.kind == BarKind::Memory64 {
            self.set_u32(off + 4, 0);
            self.set_wmask(off + 4, &((addr_mask >> 32) as u32).to_le_bytes());
        }
        self.bars[index] = Some(bar);
        Ok(())
    }

    /// The BAR declared at `index`, if any.
    pub fn bar(&self, index: usize) -> Option<Bar> {
        self.bars.get(index).copied().flatten()
    }

    /// Programs BAR `index`'s address as firmware would.
    pub fn set_bar_address(&mut self, index: usize, address: u64) {
        let Some(bar) = self.bar(index) else { return };
        let off = reg::BAR0 + 4 * index;
        let type_bits = self.u32_at(off) & if bar.kind == BarKind::Io { 0x3 } else { 0xf };
        self.set_u32(off, (address as u32 & !(type_bits | 0xf)) | type_bits);
        if bar.kind == BarKind::Memory64 {
            self.set_u32(off + 4, (address >> 32) as u32);
        }
    }

    /// The address BAR `index` decodes at, or `None` if the BAR is absent or its decode
    /// (command register) is disabled.
    pub fn bar_address(&self, index: usize) -> Option<u64> {
        let bar = self.bar(index)?;
        let cmd = self.u16_at(reg::COMMAND);
        let off = reg::BAR0 + 4 * index;
        let lo = self.u32_at(off);
        match bar.kind {
            BarKind::Io if cmd & command::IO != 0 => Some(u64::from(lo & !0x3)),
            BarKind::Memory32 if cmd & command::MEMORY != 0 => Some(u64::from(lo & !0xf)),
            BarKind::Memory64 if cmd & command::MEMORY != 0 => {
                Some((u64::from(self.u32_at(off + 4)) << 32) | u64::from(lo & !0xf))
            }
            _ => None,
        }
    }

    /// Writes a capability with ID `id`, body `body` and write mask `wmask` at `offset`
    /// without linking it into the list (its next pointer is left as it is): for functions
    /// whose capabilities keep offsets given by someone else (pass-through devices).
    pub fn place_capability(
        &mut self,
        offset: u8,
        id: u8,
        body: &[u8],
        wmask: &[u8],
    ) -> Result<(), Error> {
        let len = 2 + body.len();
        let off = usize::from(offset);
        if off < usize::from(CAPABILITIES_START) || off + len > CONFIG_SPACE_SIZE {
            return Err(Error::CapabilitySpace { id, len });
        }
        self.bytes[off] = id;
        self.set_bytes(off + 2, body);
        self.set_wmask(off + 2, &wmask[..wmask.len().min(body.len())]);
        Ok(())
    }

    /// Appends a capability with ID `id` and body `body` (the bytes after the ID/next
    /// pointer), with guest write mask `wmask` over the body. Returns the capability offset.
    pub fn add_capability(&mut self, id: u8, body: &[u8], wmask: &[u8]) -> Result<u8, Error> {
        let off = self.next_cap_offset;
        self.place_capability(off, id, body, wmask)?;
        self.bytes[usize::from(off) + 1] = 0;
        let end = usize::from(off) + 2 + body.len();
        match self.last_cap {
            None => {
                self.bytes[reg::CAPABILITIES] = off;
                let st = self.u16_at(reg::STATUS) | STATUS_CAP_LIST;
                self.set_u16(reg::STATUS, st);
            }
            Some(prev) => self.bytes[usize::from(prev) + 1] = off,
        }
        self.last_cap = Some(off);
        // Capabilities are dword aligned.
        self.next_cap_offset = ((end + 3) & !3).min(CONFIG_SPACE_SIZE) as u8;
        Ok(off)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> ConfigSpace {
        ConfigSpace::new(0x1af4, 0x1234, 0xff, 0, 0, 1)
    }

    #[test]
    fn identity_registers_are_read_only() {
        let mut c = dev();
        assert!(c.guest_write(0, &[0xff, 0xff, 0xff, 0xff]));
        assert_eq!(c.read_dword(0), 0x1234_1af4);
    }

    #[test]
    fn command_register_keeps_only_writable_bits() {
        let mut c = dev();
        c.guest_write(reg::COMMAND, &0xffffu16.to_le_bytes());
        assert_eq!(c.u16_at(reg::COMMAND), 0x0407);
    }

    #[test]
    fn status_error_bits_are_write_one_to_clear() {
        let mut c = dev();
        c.set_u16(reg::STATUS, 0x8000 | STATUS_CAP_LIST);
        c.guest_write(reg::STATUS, &0x8000u16.to_le_bytes());
        assert_eq!(c.u16_at(reg::STATUS), STATUS_CAP_LIST);
    }

    #[test]
    fn bar_sizing_reads_back_size_mask() {
        let mut c = dev();
        c.set_bar(
            0,
            Bar {
                kind: BarKind::Memory32,
                size: 0x1000,
                prefetchable: false,
            },
        )
        .unwrap();
        c.guest_write(reg::BAR0, &[0xff; 4]);
        assert_eq!(c.read_dword(reg::BAR0), 0xffff_f000);
    }

    #[test]
    fn bar64_sizing_uses_both_dwords() {
        let mut c = dev();
        c.set_bar(
            2,
            Bar {
                kind: BarKind::Memory64,
                size: 0x1_0000_0000,
                prefetchable: true,
            },
        )
        .unwrap();
        c.guest_write(reg::BAR0 + 8, &[0xff; 4]);
        c.guest_write(reg::BAR0 + 12, &[0xff; 4]);
        assert_eq!(c.read_dword(reg::BAR0 + 8), 0x0000_000c);
        assert_eq!(c.read_dword(reg::BAR0 + 12), 0xffff_ffff);
    }

    #[test]
    fn bar_address_requires_decode_enable() {
        let mut c = dev();
        c.set_bar(
            0,
            Bar {
                kind: BarKind::Memory64,
                size: 0x4000,
                prefetchable: false,
            },
        )
        .unwrap();
        c.set_bar_address(0, 0x1_2345_8000);
        assert_eq!(c.bar_address(0), None);
        c.guest_write(reg::COMMAND, &command::MEMORY.to_le_bytes());
        assert_eq!(c.bar_address(0), Some(0x1_2345_8000));
    }

    #[test]
    fn io_bar_sizing() {
        let mut c = dev();
        c.set_bar(
            1,
            Bar {
                kind: BarKind::Io,
                size: 0x20,
                prefetchable: false,
            },
        )
        .unwrap();
        c.guest_write(reg::BAR0 + 4, &[0xff; 4]);
        assert_eq!(c.read_dword(reg::BAR0 + 4), 0xffff_ffe1);
    }

    #[test]
    fn invalid_bars_are_rejected() {
        let mut c = dev();
        let bad = Bar {
            kind: BarKind::Memory32,
            size: 0x1001,
            prefetchable: false,
        };
        assert!(c.set_bar(0, bad).is_err());
        let b64 = Bar {
            kind: BarKind::Memory64,
            size: 0x1000,
            prefetchable: false,
        };
        assert!(c.set_bar(5, b64).is_err());
        let big = Bar {
            kind: BarKind::Memory32,
            size: 1 << 32,
            prefetchable: false,
        };
        assert!(c.set_bar(0, big).is_err());
    }

    #[test]
    fn capability_list_is_linked() {
        let mut c = dev();
        let a = c.add_capability(0x05, &[0; 10], &[]).unwrap();
        let b = c.add_capability(0x11, &[0; 10], &[]).unwrap();
        assert_eq!(a, 0x40);
        assert_eq!(b, 0x4c);
        assert_eq!(c.read_dword(reg::CAPABILITIES) & 0xff, 0x40);
        assert_eq!(c.u16_at(reg::STATUS) & STATUS_CAP_LIST, STATUS_CAP_LIST);
        assert_eq!(c.read_dword(0x40) & 0xffff, 0x4c05);
        assert_eq!(c.read_dword(0x4c) & 0xffff, 0x0011);
    }

    #[test]
    fn placed_capability_keeps_its_offset_and_next_pointer() {
        let mut c = dev();
        c.set_bytes(0x81, &[0x90]);
        c.place_capability(0x80, 0x11, &[1, 2], &[0xff, 0]).unwrap();
        assert_eq!(c.read_dword(0x80), 0x0201_9011);
        c.guest_write(0x82, &[0xaa, 0xaa]);
        assert_eq!(c.u16_at(0x82), 0x02aa);
        assert!(c.place_capability(0x20, 0x11, &[], &[]).is_err());
        assert!(c.place_capability(0xfe, 0x11, &[0; 2], &[]).is_err());
    }

    #[test]
    fn capability_overflow_is_an_error() {
        let mut c = dev();
        assert!(c.add_capability(0x09, &[0; 250], &[]).is_err());
    }

    #[test]
    fn malformed_guest_writes_are_ignored() {
        let mut c = dev();
        assert!(!c.guest_write(0xfe, &[0; 4]));
        assert!(!c.guest_write(0x10, &[0; 3]));
        assert_eq!(c.read_dword(0x1000), 0);
    }
}
