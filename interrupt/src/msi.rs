//! MSI messages as seen by the x86 interrupt architecture.

use std::fmt;

/// Base of the x86 interrupt address window (`0xFEEx_xxxx`).
pub const MSI_ADDRESS_BASE: u64 = 0xFEE0_0000;
/// Mask selecting the interrupt address window from an MSI address.
pub const MSI_ADDRESS_WINDOW_MASK: u64 = 0xFFF0_0000;

/// Compatibility-format address bits 11:5: destination ID bits 14:8 when the guest uses the
/// extended destination ID (Linux's `virt_destid_8_14`, enabled by
/// `KVM_FEATURE_MSI_EXT_DEST_ID`). Reserved in the architectural format.
pub const EXT_DEST_ID_MASK: u64 = 0x7f << EXT_DEST_ID_SHIFT;
/// Position of [`EXT_DEST_ID_MASK`] in the address.
pub const EXT_DEST_ID_SHIFT: u32 = 5;

/// x86 delivery modes encoded in MSI data bits 10:8.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryMode {
    /// Fixed.
    Fixed,
    /// Lowest priority.
    LowestPriority,
    /// SMI.
    Smi,
    /// NMI.
    Nmi,
    /// INIT.
    Init,
    /// External interrupt.
    ExtInt,
    /// A reserved encoding.
    Reserved(u8),
}

/// An MSI message: the address/data pair a device writes to signal an interrupt.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MsiMessage {
    /// Full 64-bit message address.
    pub address: u64,
    /// Message data (only the low 16 bits are architectural for compatibility format).
    pub data: u32,
}

impl MsiMessage {
    /// Builds a message from its two address halves and data.
    pub fn new(address_lo: u32, address_hi: u32, data: u32) -> Self {
        Self {
            address: (u64::from(address_hi) << 32) | u64::from(address_lo),
            data,
        }
    }

    /// Composes a compatibility-format message targeting `dest` (an APIC ID; IDs above 255
    /// use KVM's x2APIC API encoding in address bits 63:40).
    pub fn compose(dest: u32, logical: bool, vector: u8, mode: u8, level: bool) -> Self {
        let address = MSI_ADDRESS_BASE
            | (u64::from(dest & 0xff) << 12)
            | (u64::from(logical) << 2)
            | (u64::from(dest & 0xffff_ff00) << 32);
        let data =
            u32::from(vector) | (u32::from(mode & 7) << 8) | (u32::from(level) << 15) | (1 << 14);
        Self { address, data }
    }

    /// Low 32 bits of the address.
    pub fn address_lo(&self) -> u32 {
        self.address as u32
    }

    /// High 32 bits of the address.
    pub fn address_hi(&self) -> u32 {
        (self.address >> 32) as u32
    }

    /// Whether the address lies in the x86 interrupt window `0xFEEx_xxxx` (high bits may
    /// only carry KVM's extended destination bits 63:40).
    pub fn targets_interrupt_window(&self) -> bool {
        (self.address & 0xff_ffff_ffff & !0xf_ffff) == MSI_ADDRESS_BASE
    }

    /// Whether this is a remappable-format message (address bit 4, Intel VT-d).
    pub fn is_remappable(&self) -> bool {
        self.address & (1 << 4) != 0
    }

    /// Interrupt-remapping table index of a remappable-format message (Intel VT-d):
    /// handle = address bits 19:5 plus bit 2 as bit 15; with SHV (address bit 3) the
    /// subhandle (data 15:0) is added. `None` for compatibility-format messages.
    pub fn remap_index(&self) -> Option<u32> {
        if !self.is_remappable() {
            return None;
        }
        let handle =
            ((self.address >> 5) & 0x7fff) as u32 | ((((self.address >> 2) & 1) as u32) << 15);
        let shv = self.address & (1 << 3) != 0;
        Some(if shv {
            handle + (self.data & 0xffff)
        } else {
            handle
        })
    }

    /// Composes a remappable-format message for IRTE `index` (SHV = 0).
    pub fn remappable(index: u16) -> Self {
        let address = MSI_ADDRESS_BASE
            | (u64::from(index & 0x7fff) << 5)
            | (1 << 4)
            | (u64::from(index >> 15) << 2);
        Self { address, data: 0 }
    }

    /// Destination APIC ID (compatibility format; includes KVM x2APIC high bits, or the
    /// extended destination ID bits 14:8 as [`kvm_format`](Self::kvm_format) decodes them).
    pub fn destination(&self) -> u32 {
        let m = self.kvm_format();
        (((m.address >> 12) & 0xff) as u32) | (((m.address >> 32) as u32) & 0xffff_ff00)
    }

    /// The message as KVM's x2APIC API (`KVM_X2APIC_API_USE_32BIT_IDS`) takes it: KVM reads
    /// destination bits 31:8 from address bits 63:40 only, so a compatibility-format message
    /// carrying the extended destination ID (bits 14:8 in address bits 11:5, as a guest told
    /// `KVM_FEATURE_MSI_EXT_DEST_ID` writes it) has those bits moved to address bits 46:40.
    ///
    /// Unchanged: remappable-format messages (bits 11:5 are the IRTE handle), writes outside
    /// the interrupt window, messages whose upper address is already set (the x2APIC API
    /// form wins and bits 11:5 are ignored, as KVM ignores them), and messages without
    /// extended bits.
    pub fn kvm_format(self) -> Self {
        let ext = (self.address & EXT_DEST_ID_MASK) >> EXT_DEST_ID_SHIFT;
        if ext == 0
            || self.is_remappable()
            || !self.targets_interrupt_window()
            || self.address_hi() != 0
        {
            return self;
        }
        Self {
            address: (self.address & !EXT_DEST_ID_MASK) | (ext << 40),
            data: self.data,
        }
    }

    /// Destination mode: true for logical.
    pub fn logical_destination(&self) -> bool {
        self.address & (1 << 2) != 0
    }

    /// Interrupt vector (data bits 7:0).
    pub fn vector(&self) -> u8 {
        self.data as u8
    }

    /// Delivery mode (data bits 10:8).
    pub fn delivery_mode(&self) -> DeliveryMode {
        match ((self.data >> 8) & 7) as u8 {
            0 => DeliveryMode::Fixed,
            1 => DeliveryMode::LowestPriority,
            2 => DeliveryMode::Smi,
            4 => DeliveryMode::Nmi,
            5 => DeliveryMode::Init,
            7 => DeliveryMode::ExtInt,
            r => DeliveryMode::Reserved(r),
        }
    }

    /// Trigger mode (data bit 15): true for level.
    pub fn level_triggered(&self) -> bool {
        self.data & (1 << 15) != 0
    }
}

impl fmt::Display for MsiMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "addr {:#x} data {:#06x}", self.address, self.data)?;
        if self.targets_interrupt_window() && !self.is_remappable() {
            write!(
                f,
                " (dest {}{} vec {:#04x} {:?}{})",
                self.destination(),
                if self.logical_destination() {
                    " logical"
                } else {
                    ""
                },
                self.vector(),
                self.delivery_mode(),
                if self.level_triggered() { " level" } else { "" }
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message as Linux composes it for `dest` < 0x8000 with the extended destination ID.
    fn ext_dest(dest: u32, vector: u8) -> MsiMessage {
        let address =
            MSI_ADDRESS_BASE | (u64::from(dest & 0xff) << 12) | (u64::from(dest >> 8 & 0x7f) << 5);
        MsiMessage::new(address as u32, 0, u32::from(vector))
    }

    #[test]
    fn ext_dest_id_moves_to_the_x2apic_api_high_bits() {
        let m = ext_dest(300, 0x41);
        assert_eq!(m.address, 0xFEE2_C020);
        let k = m.kvm_format();
        assert_eq!((k.address_lo(), k.address_hi()), (0xFEE2_C000, 0x100));
        assert_eq!(
            k.address,
            MsiMessage::compose(300, false, 0x41, 0, false).address
        );
        assert_eq!(k.data, 0x41);
        assert_eq!(m.destination(), 300);
        // The largest extended ID, 0x7fff.
        let k = ext_dest(0x7fff, 0x41).kvm_format();
        assert_eq!((k.address_lo(), k.address_hi()), (0xFEEF_F000, 0x7f00));
    }

    #[test]
    fn ext_dest_id_is_ignored_in_remappable_format() {
        // Bits 11:5 are the IRTE handle there.
        let m = MsiMessage::remappable(0x123);
        assert_eq!(m.kvm_format(), m);
    }

    #[test]
    fn ext_dest_id_is_ignored_when_the_upper_address_is_set() {
        let mut m = MsiMessage::compose(0x1_2345, false, 0x41, 0, false);
        m.address |= 0x7f << 5;
        assert_eq!(m.kvm_format(), m);
        assert_eq!(m.destination(), 0x1_2345);
    }

    #[test]
    fn ext_dest_id_is_ignored_outside_the_interrupt_window() {
        let m = MsiMessage::new(0x1000_0020, 0, 0x41);
        assert_eq!(m.kvm_format(), m);
    }

    #[test]
    fn messages_without_ext_bits_are_unchanged() {
        let m = MsiMessage::compose(7, true, 0x41, 1, true);
        assert_eq!(m.kvm_format(), m);
    }

    #[test]
    fn compose_roundtrips_fields() {
        let m = MsiMessage::compose(3, false, 0x41, 0, true);
        assert_eq!(m.address, 0xFEE0_3000);
        assert_eq!(m.vector(), 0x41);
        assert_eq!(m.destination(), 3);
        assert!(m.level_triggered());
        assert_eq!(m.delivery_mode(), DeliveryMode::Fixed);
        assert!(m.targets_interrupt_window());
    }

    #[test]
    fn x2apic_destination_uses_high_address_bits() {
        let m = MsiMessage::compose(0x1_2345, false, 0x30, 0, false);
        assert_eq!(m.address_hi(), 0x0001_2300);
        assert_eq!(m.destination(), 0x1_2345);
        assert!(m.targets_interrupt_window());
    }

    #[test]
    fn addresses_outside_window_are_detected() {
        assert!(!MsiMessage::new(0, 0, 0x30).targets_interrupt_window());
        assert!(!MsiMessage::new(0xFED0_0000, 0, 0x30).targets_interrupt_window());
        assert!(!MsiMessage::new(0xFEE0_0000, 0x1, 0x30).targets_interrupt_window());
    }

    #[test]
    fn remap_index_decodes_handle_and_subhandle() {
        assert_eq!(MsiMessage::remappable(0x8123).remap_index(), Some(0x8123));
        assert_eq!(MsiMessage::remappable(7).address, 0xFEE0_00F0);
        // SHV with subhandle 3.
        let m = MsiMessage::new(0xFEE0_0000 | (10 << 5) | 0x18, 0, 3);
        assert_eq!(m.remap_index(), Some(13));
        assert_eq!(
            MsiMessage::compose(0, false, 0x30, 0, false).remap_index(),
            None
        );
    }

    #[test]
    fn remappable_bit_is_bit_4() {
        assert!(MsiMessage::new(0xFEE0_0010, 0, 0).is_remappable());
        assert!(!MsiMessage::new(0xFEE0_0000, 0, 0).is_remappable());
    }
}
