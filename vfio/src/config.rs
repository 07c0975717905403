//! The guest's view of a pass-through function's configuration space.
//!
//! The guest sees the host function's own registers (read and written through VFIO's config
//! region), except what the VMM must own:
//!
//! - the BARs (sized from VFIO's region info, placed in our PCI windows) and the expansion
//!   ROM (absent);
//! - the MSI and MSI-X capabilities, emulated by the `pci` crate at the host's offsets on the
//!   device's own interrupt domains;
//! - the capability list itself: capabilities the VMM cannot support are unlinked and read as
//!   zero;
//! - identity and interrupt-line/pin registers (constant or VMM-assigned).
//!
//! Command-register writes go to the device and to the shadow (which decides BAR decoding);
//! status, cache line, latency, BIST, the kept capabilities and bytes outside any capability
//! are the device's. Every guest access is checked here: malformed ones are ignored (writes)
//! or read as all ones.

use pci::config::{reg, ConfigSpace, CONFIG_SPACE_SIZE, STATUS_CAP_LIST};
use pci::msi::MSI_CAP_ID;
use pci::msix::{MsixLayout, MSIX_CAP_ID};

/// Power management capability.
pub const CAP_ID_PM: u8 = 0x01;
/// Vendor-specific capability.
pub const CAP_ID_VENDOR: u8 = 0x09;
/// PCI Express capability.
pub const CAP_ID_PCIE: u8 = 0x10;

/// Access to the host function's configuration space (VFIO's config region).
pub trait ConfigIo: Send {
    /// Reads `data.len()` bytes at `offset`; false on failure.
    fn read(&self, offset: usize, data: &mut [u8]) -> bool;
    /// Writes `data` at `offset`; false on failure.
    fn write(&self, offset: usize, data: &[u8]) -> bool;
}

/// What the VMM does with a host capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CapPolicy {
    /// The device's registers, read and written through VFIO.
    Passthrough,
    /// MSI, emulated on the device's PCI/MSI domain.
    EmulatedMsi,
    /// MSI-X, emulated on the device's PCI/MSI-X domain.
    EmulatedMsix,
    /// Unlinked from the list and read as zero (not supported by the VMM).
    Hidden,
}

/// The policy for capability `id`: PM, PCI Express and vendor-specific capabilities pass
/// through, MSI and MSI-X are emulated, everything else is hidden.
pub fn cap_policy(id: u8) -> CapPolicy {
    match id {
        CAP_ID_PM | CAP_ID_PCIE | CAP_ID_VENDOR => CapPolicy::Passthrough,
        MSI_CAP_ID => CapPolicy::EmulatedMsi,
        MSIX_CAP_ID => CapPolicy::EmulatedMsix,
        _ => CapPolicy::Hidden,
    }
}

/// One capability of the host function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostCap {
    /// Capability ID.
    pub id: u8,
    /// Offset in config space.
    pub offset: u8,
    /// Bytes it covers (known length, clipped to the next capability).
    pub len: usize,
    /// What the VMM does with it.
    pub policy: CapPolicy,
}

/// Length of the MSI capability described by message control `ctrl`.
pub fn msi_cap_len(ctrl: u16) -> usize {
    let addr64 = ctrl & pci::msi::control::ADDR64 != 0;
    let pvm = ctrl & pci::msi::control::PER_VECTOR_MASK != 0;
    10 + if addr64 { 4 } else { 0 } + if pvm { 10 } else { 0 }
}

fn known_len(id: u8, raw: &[u8; CONFIG_SPACE_SIZE], off: usize) -> Option<usize> {
    let u16_at = |o: usize| u16::from_le_bytes([raw[o], raw[(o + 1).min(255)]]);
    match id {
        CAP_ID_PM => Some(8),
        MSIX_CAP_ID => Some(12),
        MSI_CAP_ID => Some(msi_cap_len(u16_at((off + 2).min(254)))),
        CAP_ID_PCIE => Some(0x3c),
        CAP_ID_VENDOR => Some(usize::from(raw[(off + 2).min(255)]).max(3)),
        _ => None,
    }
}

/// Walks the host's capability list: at most 48 entries, offsets at 0x40 or above (low two
/// bits ignored, as Linux does), each visited once. A capability's length is its known
/// length, clipped to the start of the next capability and to the end of the space.
pub fn walk_capabilities(raw: &[u8; CONFIG_SPACE_SIZE]) -> Vec<HostCap> {
    let mut found: Vec<(u8, u8)> = Vec::new();
    if u16::from_le_bytes([raw[reg::STATUS], raw[reg::STATUS + 1]]) & STATUS_CAP_LIST == 0 {
        return Vec::new();
    }
    let mut ptr = raw[reg::CAPABILITIES] & !3;
    while ptr >= 0x40 && found.len() < 48 && !found.iter().any(|&(_, o)| o == ptr) {
        let id = raw[usize::from(ptr)];
        if id == 0xff {
            break;
        }
        found.push((id, ptr));
        ptr = raw[usize::from(ptr) + 1] & !3;
    }
    let mut offsets: Vec<usize> = found.iter().map(|&(_, o)| usize::from(o)).collect();
    offsets.sort_unstable();
    found
        .iter()
        .map(|&(id, offset)| {
            let off = usize::from(offset);
            let next = offsets
                .iter()
                .copied()
                .find(|&o| o > off)
                .unwrap_or(CONFIG_SPACE_SIZE);
            let len = known_len(id, raw, off)
                .unwrap_or(next - off)
                .min(next - off);
            HostCap {
                id,
                offset,
                len: len.max(2),
                policy: cap_policy(id),
            }
        })
        .collect()
}

/// Who answers for a config-space byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// The VMM's shadow (emulated, identity, BARs, list links, hidden bytes).
    Shadow,
    /// The host device through VFIO.
    Device,
    /// Both: reads from the shadow, writes to the shadow and the device (command).
    Command,
}

/// Which bytes belong to whom, and the capabilities the guest sees.
#[derive(Clone, Debug)]
pub struct ConfigLayout {
    owner: Vec<Owner>,
    /// The host's capabilities with their policies, in list order.
    pub caps: Vec<HostCap>,
}

impl ConfigLayout {
    /// The layout for a host function whose config space reads as `raw`.
    pub fn new(raw: &[u8; CONFIG_SPACE_SIZE]) -> Self {
        let mut owner = vec![Owner::Device; CONFIG_SPACE_SIZE];
        for (o, w) in owner.iter_mut().enumerate().take(0x40) {
            *w = match o {
                0x04 | 0x05 => Owner::Command,
                // Status, cache line size, latency timer, BIST.
                0x06 | 0x07 | 0x0c | 0x0d | 0x0f => Owner::Device,
                _ => Owner::Shadow,
            };
        }
        let caps = walk_capabilities(raw);
        for c in &caps {
            let start = usize::from(c.offset);
            let end = (start + c.len).min(CONFIG_SPACE_SIZE);
            match c.policy {
                CapPolicy::Passthrough => owner[start + 1] = Owner::Shadow,
                _ => owner[start..end].fill(Owner::Shadow),
            }
        }
        Self { owner, caps }
    }

    /// Owner of byte `offset` (bytes beyond the space belong to the shadow, which reads 0).
    pub fn owner(&self, offset: usize) -> Owner {
        self.owner.get(offset).copied().unwrap_or(Owner::Shadow)
    }

    /// The capabilities the guest sees, in list order.
    pub fn visible(&self) -> impl Iterator<Item = &HostCap> {
        self.caps.iter().filter(|c| c.policy != CapPolicy::Hidden)
    }

    /// The host capability with `policy`, if any.
    pub fn find(&self, policy: CapPolicy) -> Option<&HostCap> {
        self.caps.iter().find(|c| c.policy == policy)
    }

    /// Writes the guest-visible list into `shadow`: the capability pointer, each visible
    /// capability's next pointer, zeros over hidden ones, and the status cap-list bit.
    pub fn link(&self, shadow: &mut ConfigSpace) {
        for c in self.caps.iter().filter(|c| c.policy == CapPolicy::Hidden) {
            let start = usize::from(c.offset);
            shadow.set_bytes(start, &vec![0; c.len.min(CONFIG_SPACE_SIZE - start)]);
        }
        let visible: Vec<u8> = self.visible().map(|c| c.offset).collect();
        shadow.set_bytes(reg::CAPABILITIES, &[visible.first().copied().unwrap_or(0)]);
        for (i, &off) in visible.iter().enumerate() {
            let next = visible.get(i + 1).copied().unwrap_or(0);
            shadow.set_bytes(usize::from(off) + 1, &[next]);
        }
        let status = shadow.u16_at(reg::STATUS) & !STATUS_CAP_LIST;
        let bit = if visible.is_empty() {
            0
        } else {
            STATUS_CAP_LIST
        };
        shadow.set_u16(reg::STATUS, status | bit);
    }

    /// Whether the guest sees a capability list.
    pub fn has_caps(&self) -> bool {
        self.visible().next().is_some()
    }
}

/// The MSI-X capability registers of the host function at `offset`.
pub fn host_msix_layout(raw: &[u8; CONFIG_SPACE_SIZE], offset: u8) -> Option<MsixLayout> {
    let o = usize::from(offset);
    if o + 12 > CONFIG_SPACE_SIZE {
        return None;
    }
    let u32_at = |i: usize| u32::from_le_bytes([raw[i], raw[i + 1], raw[i + 2], raw[i + 3]]);
    let ctrl = u16::from_le_bytes([raw[o + 2], raw[o + 3]]);
    let l = MsixLayout::decode(ctrl, u32_at(o + 4), u32_at(o + 8));
    (l.table_bar <= 5 && l.pba_bar <= 5).then_some(l)
}

/// The MSI capability of the host function at `offset`: (vectors, 64-bit, per-vector mask).
pub fn host_msi_info(raw: &[u8; CONFIG_SPACE_SIZE], offset: u8) -> Option<(usize, bool, bool)> {
    let o = usize::from(offset);
    if o + 4 > CONFIG_SPACE_SIZE {
        return None;
    }
    let ctrl = u16::from_le_bytes([raw[o + 2], raw[o + 3]]);
    let mmc = (ctrl >> pci::msi::control::MMC_SHIFT) & 7;
    let vectors = 1usize << mmc.min(5);
    Some((
        vectors,
        ctrl & pci::msi::control::ADDR64 != 0,
        ctrl & pci::msi::control::PER_VECTOR_MASK != 0,
    ))
}

/// Checks a guest config access: 1, 2 or 4 bytes, naturally aligned, inside the space.
pub fn access_ok(offset: usize, len: usize) -> bool {
    matches!(len, 1 | 2 | 4) && offset.is_multiple_of(len) && offset + len <= CONFIG_SPACE_SIZE
}

/// Splits a guest write by owner: forwards device bytes (as one access when the whole write
/// is the device's), applies shadow bytes to `shadow`, and both for the command register.
/// Returns false when the access was malformed and ignored.
pub fn route_write(
    layout: &ConfigLayout,
    shadow: &mut ConfigSpace,
    io: &dyn ConfigIo,
    offset: usize,
    data: &[u8],
) -> bool {
    if !access_ok(offset, data.len()) {
        return false;
    }
    let owners: Vec<Owner> = (offset..offset + data.len())
        .map(|o| layout.owner(o))
        .collect();
    if owners.iter().all(|&o| o == Owner::Device) {
        io.write(offset, data);
        return true;
    }
    if owners.iter().all(|&o| o != Owner::Device) {
        shadow.guest_write(offset, data);
    } else {
        for (i, (&b, &o)) in data.iter().zip(&owners).enumerate() {
            if o != Owner::Device {
                shadow.guest_write(offset + i, &[b]);
            }
        }
    }
    // Command bytes and device bytes of a mixed access reach the device.
    let mut i = 0;
    while i < data.len() {
        if owners[i] == Owner::Shadow {
            i += 1;
            continue;
        }
        let start = i;
        while i < data.len() && owners[i] != Owner::Shadow {
            i += 1;
        }
        let (o, d) = (offset + start, &data[start..i]);
        if access_ok(o, d.len()) {
            io.write(o, d);
        } else {
            for (k, b) in d.iter().enumerate() {
                io.write(o + k, std::slice::from_ref(b));
            }
        }
    }
    true
}

/// Reads the dword at `offset` (aligned down) as the guest sees it: the shadow dword
/// `shadow_dword` with the device's bytes spliced in (all ones where VFIO fails), and the
/// status cap-list bit following the visible list.
pub fn route_read(
    layout: &ConfigLayout,
    io: &dyn ConfigIo,
    offset: usize,
    shadow_dword: u32,
) -> u32 {
    let base = offset & !3;
    if base >= CONFIG_SPACE_SIZE {
        return 0;
    }
    let mut bytes = shadow_dword.to_le_bytes();
    if (base..base + 4).any(|o| layout.owner(o) == Owner::Device) {
        let mut dev = [0xffu8; 4];
        if !io.read(base, &mut dev) {
            dev = [0xff; 4];
        }
        for (i, b) in bytes.iter_mut().enumerate() {
            if layout.owner(base + i) == Owner::Device {
                *b = dev[i];
            }
        }
    }
    if base == reg::COMMAND {
        // The cap-list bit is bit 4 of the status register's low byte (offset 6).
        if layout.has_caps() {
            bytes[2] |= STATUS_CAP_LIST as u8;
        } else {
            bytes[2] &= !(STATUS_CAP_LIST as u8);
        }
    }
    u32::from_le_bytes(bytes)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A fake host config region: 256 bytes, writes recorded.
    pub(crate) struct FakeConfig {
        pub bytes: Mutex<[u8; 256]>,
        pub writes: Mutex<Vec<(usize, Vec<u8>)>>,
        pub fail: bool,
    }

    impl FakeConfig {
        pub fn new(bytes: [u8; 256]) -> Self {
            Self {
                bytes: Mutex::new(bytes),
                writes: Mutex::new(Vec::new()),
                fail: false,
            }
        }
    }

    impl ConfigIo for FakeConfig {
        fn read(&self, offset: usize, data: &mut [u8]) -> bool {
            if self.fail {
                return false;
            }
            let b = self.bytes.lock().unwrap();
            data.copy_from_slice(&b[offset..offset + data.len()]);
            true
        }
        fn write(&self, offset: usize, data: &[u8]) -> bool {
            self.writes.lock().unwrap().push((offset, data.to_vec()));
            true
        }
    }

    /// NVMe-like host: PM at 0x40 -> MSI-X at 0x50 -> SATA (hidden) at 0x60 -> PCIe at 0x80
    /// -> MSI at 0xc0.
    pub(crate) fn host_raw() -> [u8; 256] {
        let mut r = [0u8; 256];
        r[0..4].copy_from_slice(&0x0010_1b36u32.to_le_bytes());
        r[6] = STATUS_CAP_LIST as u8;
        r[0x0b] = 0x01;
        r[0x0e] = 0x80; // multifunction bit: hidden
        r[0x10..0x14].copy_from_slice(&0xfebf_0004u32.to_le_bytes());
        r[0x34] = 0x40;
        r[0x3d] = 1;
        r[0x40] = CAP_ID_PM;
        r[0x41] = 0x50;
        r[0x50] = MSIX_CAP_ID;
        r[0x51] = 0x60;
        r[0x52..0x54].copy_from_slice(&64u16.to_le_bytes()); // 65 vectors
        r[0x54..0x58].copy_from_slice(&0x2000u32.to_le_bytes()); // table BAR0 + 0x2000
        r[0x58..0x5c].copy_from_slice(&0x3000u32.to_le_bytes()); // PBA BAR0 + 0x3000
        r[0x60] = 0x12;
        r[0x61] = 0x80;
        r[0x62] = 0xaa;
        r[0x80] = CAP_ID_PCIE;
        r[0x81] = 0xc0;
        r[0x82] = 0x02;
        r[0xc0] = MSI_CAP_ID;
        r[0xc1] = 0;
        r[0xc2..0xc4].copy_from_slice(&((5u16 << 1) | 0x180).to_le_bytes());
        r
    }

    #[test]
    fn capability_walk_finds_every_entry_with_lengths() {
        let caps = walk_capabilities(&host_raw());
        let ids: Vec<(u8, u8, usize)> = caps.iter().map(|c| (c.id, c.offset, c.len)).collect();
        assert_eq!(
            ids,
            vec![
                (1, 0x40, 8),
                (0x11, 0x50, 12),
                (0x12, 0x60, 0x20),
                (0x10, 0x80, 0x3c),
                (5, 0xc0, 24)
            ]
        );
    }

    #[test]
    fn capability_walk_survives_loops_and_bad_pointers() {
        let mut r = host_raw();
        r[0x81] = 0x40; // loop back
        assert_eq!(walk_capabilities(&r).len(), 4);
        r[0x34] = 0x10; // points into the header
        assert!(walk_capabilities(&r).is_empty());
        let mut r = host_raw();
        r[6] = 0; // no list
        assert!(walk_capabilities(&r).is_empty());
        let mut r = host_raw();
        r[0x41] = 0xfe; // unaligned, last byte of the space
        r[0xfc] = 0x09;
        r[0xfd] = 0;
        r[0xfe] = 0xff;
        let caps = walk_capabilities(&r);
        assert_eq!(caps.last().unwrap().offset, 0xfc);
        assert!(caps.iter().all(|c| usize::from(c.offset) + c.len <= 256));
    }

    #[test]
    fn unsupported_capabilities_are_unlinked_and_read_zero() {
        let raw = host_raw();
        let layout = ConfigLayout::new(&raw);
        let mut shadow = ConfigSpace::new(0x1b36, 0x10, 1, 8, 2, 0);
        shadow.set_bytes(0x60, &raw[0x60..0x80]);
        layout.link(&mut shadow);
        assert_eq!(shadow.u16_at(0x34) & 0xff, 0x40);
        assert_eq!(shadow.u16_at(0x40) >> 8, 0x50);
        assert_eq!(shadow.u16_at(0x50) >> 8, 0x80, "SATA skipped");
        assert_eq!(shadow.u16_at(0x80) >> 8, 0xc0);
        assert_eq!(shadow.u16_at(0xc0) >> 8, 0);
        assert_eq!(shadow.u32_at(0x60), 0);
        assert_eq!(layout.owner(0x62), Owner::Shadow);
    }

    #[test]
    fn kept_capabilities_are_the_devices_except_their_next_pointer() {
        let layout = ConfigLayout::new(&host_raw());
        assert_eq!(layout.owner(0x40), Owner::Device);
        assert_eq!(layout.owner(0x41), Owner::Shadow);
        assert_eq!(layout.owner(0x44), Owner::Device);
        assert_eq!(layout.owner(0x82), Owner::Device);
        assert_eq!(layout.owner(0x52), Owner::Shadow, "MSI-X emulated");
        assert_eq!(layout.owner(0xc4), Owner::Shadow, "MSI emulated");
        assert_eq!(layout.owner(0xe0), Owner::Device, "outside any capability");
    }

    #[test]
    fn header_ownership() {
        let layout = ConfigLayout::new(&host_raw());
        for o in [0x00, 0x0e, 0x10, 0x27, 0x30, 0x34, 0x3c, 0x3d] {
            assert_eq!(layout.owner(o), Owner::Shadow, "{o:#x}");
        }
        for o in [0x06, 0x07, 0x0c, 0x0d, 0x0f] {
            assert_eq!(layout.owner(o), Owner::Device, "{o:#x}");
        }
        assert_eq!(layout.owner(0x04), Owner::Command);
    }

    #[test]
    fn command_writes_reach_device_and_shadow() {
        let raw = host_raw();
        let layout = ConfigLayout::new(&raw);
        let io = FakeConfig::new(raw);
        let mut shadow = ConfigSpace::new(0x1b36, 0x10, 1, 8, 2, 0);
        assert!(route_write(
            &layout,
            &mut shadow,
            &io,
            4,
            &0x0006u16.to_le_bytes()
        ));
        assert_eq!(shadow.u16_at(4), 6);
        assert_eq!(*io.writes.lock().unwrap(), vec![(4, vec![6, 0])]);
    }

    #[test]
    fn status_rw1c_write_goes_to_the_device_only() {
        let raw = host_raw();
        let layout = ConfigLayout::new(&raw);
        let io = FakeConfig::new(raw);
        let mut shadow = ConfigSpace::new(0x1b36, 0x10, 1, 8, 2, 0);
        // A dword write at 4 covers command (both) and status (device): one device access.
        route_write(&layout, &mut shadow, &io, 4, &0x8000_0002u32.to_le_bytes());
        assert_eq!(
            *io.writes.lock().unwrap(),
            vec![(4, 0x8000_0002u32.to_le_bytes().to_vec())]
        );
        assert_eq!(shadow.u16_at(4), 2);
    }

    #[test]
    fn bar_and_rom_writes_never_reach_the_device() {
        let raw = host_raw();
        let layout = ConfigLayout::new(&raw);
        let io = FakeConfig::new(raw);
        let mut shadow = ConfigSpace::new(0x1b36, 0x10, 1, 8, 2, 0);
        route_write(&layout, &mut shadow, &io, 0x10, &[0xff; 4]);
        route_write(&layout, &mut shadow, &io, 0x30, &[0xff; 4]);
        assert!(io.writes.lock().unwrap().is_empty());
        assert_eq!(shadow.u32_at(0x30), 0, "no expansion ROM");
    }

    #[test]
    fn mixed_write_splits_next_pointer_from_device_bytes() {
        let raw = host_raw();
        let layout = ConfigLayout::new(&raw);
        let io = FakeConfig::new(raw);
        let mut shadow = ConfigSpace::new(0x1b36, 0x10, 1, 8, 2, 0);
        layout.link(&mut shadow);
        route_write(&layout, &mut shadow, &io, 0x40, &[0x77, 0x00, 0x03, 0x00]);
        let w = io.writes.lock().unwrap().clone();
        assert_eq!(w, vec![(0x40, vec![0x77]), (0x42, vec![0x03, 0x00])]);
        assert_eq!(shadow.u16_at(0x40) >> 8, 0x50, "next pointer is read-only");
    }

    #[test]
    fn reads_splice_device_bytes_and_fix_the_cap_list_bit() {
        let mut raw = host_raw();
        raw[0x44] = 0x08; // PMCSR on the device
        raw[6] = 0x10 | 0x08; // status on the device: interrupt status + cap list
        let layout = ConfigLayout::new(&raw);
        let io = FakeConfig::new(raw);
        let mut shadow = ConfigSpace::new(0x1b36, 0x10, 1, 8, 2, 0);
        layout.link(&mut shadow);
        let v = route_read(&layout, &io, 0x44, shadow.read_dword(0x44));
        assert_eq!(v & 0xff, 0x08);
        let v = route_read(&layout, &io, 0x40, shadow.read_dword(0x40));
        assert_eq!(v & 0xffff, 0x5001);
        let v = route_read(&layout, &io, 4, shadow.read_dword(4));
        assert_eq!((v >> 16) as u16, 0x18);
        io.bytes.lock().unwrap()[6] = 0; // device lost the bit: we still show our list
        let v = route_read(&layout, &io, 4, shadow.read_dword(4));
        assert_eq!((v >> 16) as u16 & STATUS_CAP_LIST, STATUS_CAP_LIST);
    }

    #[test]
    fn failed_device_reads_are_all_ones() {
        let raw = host_raw();
        let layout = ConfigLayout::new(&raw);
        let mut io = FakeConfig::new(raw);
        io.fail = true;
        let shadow = ConfigSpace::new(0x1b36, 0x10, 1, 8, 2, 0);
        assert_eq!(route_read(&layout, &io, 0x44, shadow.read_dword(0x44)), !0);
    }

    #[test]
    fn malformed_accesses_are_ignored() {
        let raw = host_raw();
        let layout = ConfigLayout::new(&raw);
        let io = FakeConfig::new(raw);
        let mut shadow = ConfigSpace::new(0x1b36, 0x10, 1, 8, 2, 0);
        assert!(!route_write(&layout, &mut shadow, &io, 0x41, &[0; 2]));
        assert!(!route_write(&layout, &mut shadow, &io, 0xfe, &[0; 4]));
        assert!(!route_write(&layout, &mut shadow, &io, 0x40, &[0; 3]));
        assert!(io.writes.lock().unwrap().is_empty());
        assert_eq!(route_read(&layout, &io, 0x100, 0), 0);
    }

    #[test]
    fn host_msix_and_msi_registers_decode() {
        let raw = host_raw();
        let l = host_msix_layout(&raw, 0x50).unwrap();
        assert_eq!((l.vectors, l.table_bar, l.table_offset), (65, 0, 0x2000));
        assert_eq!((l.pba_bar, l.pba_offset), (0, 0x3000));
        assert_eq!(host_msi_info(&raw, 0xc0), Some((32, true, true)));
        let mut bad = raw;
        bad[0x54] = 7; // BIR 7 is reserved
        assert!(host_msix_layout(&bad, 0x50).is_none());
        assert!(host_msix_layout(&raw, 0xf8).is_none());
    }
}
