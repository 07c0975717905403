//! Fuzzes the guest-facing side of a pass-through function (`vfio::VfioPciDevice`) on a
//! device-less host (`vfio::fake::FakeHost`): a host config space with an arbitrary
//! capability list (loops, overlaps, bad pointers included), then guest config reads and
//! writes of any size and offset and BAR accesses (MSI-X table, PBA, the rest), on a
//! recording interrupt hierarchy (no KVM).
//!
//! Invariants after every operation:
//! - the host's BARs, expansion ROM and identity are never written by the guest, and neither
//!   are the MSI/MSI-X capabilities (emulated) or the bytes of hidden capabilities;
//! - the guest always reads the host's vendor/device ID;
//! - direct BAR areas are mapped only inside the PCI windows, never overlapping, and only
//!   while memory decoding is on;
//! - with a dynamic host, no host MSI-X disable ever happens; every host vector bound to a
//!   trigger is within the host's count.

#![no_main]

use std::sync::{Arc, Mutex};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

use interrupt::{InterruptHierarchy, KvmVectorLayer, NoRemap, RecordingBackend, RequesterId};
use pci::PciDevice;
use vfio::bars::RegionInfo;
use vfio::chip::MSIX_INDEX;
use vfio::config::{ConfigLayout, Owner};
use vfio::fake::FakeHost;
use vfio::{MmioSlots, MsixPolicy, VfioPciDevice};
use vmm_fuzz::{le_bytes, Size};

const WINDOWS: [(u64, u64); 2] = [(0xc000_0000, 0x2000_0000), (0x1_0000_0000, 1 << 36)];

#[derive(Arbitrary, Debug)]
enum Op {
    ReadConfig { offset: u8 },
    WriteConfig { offset: u8, size: Size, value: u32 },
    /// A write at the MSI-X capability's message control (enable, function mask).
    MsixControl { value: u16 },
    /// A table entry, written as a driver does.
    MsixEntry { entry: u8, vector: u8, masked: bool },
    BarRead { bar: u8, offset: u16, size: Size },
    BarWrite { bar: u8, offset: u16, size: Size, value: u64 },
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// Host config space bytes 0x34.. (the capability area and pointer).
    caps: Vec<u8>,
    msix_at: u8,
    msix_vectors: u16,
    dynamic: bool,
    reenable: bool,
    ops: Vec<Op>,
}

#[derive(Default)]
struct Slots {
    live: Mutex<Vec<(u32, u64, u64)>>,
    next: Mutex<u32>,
}

impl MmioSlots for Slots {
    unsafe fn map(&self, gpa: u64, size: u64, _host: *mut u8) -> std::io::Result<u32> {
        let mut n = self.next.lock().unwrap();
        *n += 1;
        let mut live = self.live.lock().unwrap();
        for &(_, g, s) in live.iter() {
            assert!(gpa + size <= g || g + s <= gpa, "overlapping slots");
        }
        assert!(
            WINDOWS
                .iter()
                .any(|&(w, l)| gpa >= w && gpa + size <= w + l),
            "slot outside the PCI windows: {gpa:#x}+{size:#x}"
        );
        live.push((*n, gpa, size));
        Ok(*n)
    }
    fn unmap(&self, slot: u32) {
        self.live.lock().unwrap().retain(|&(s, _, _)| s != slot);
    }
}

fn host_config(input: &Input) -> [u8; 256] {
    let mut r = [0u8; 256];
    r[0..4].copy_from_slice(&0x0010_1b36u32.to_le_bytes());
    r[6] = 0x10;
    r[0x0b] = 1;
    r[0x10..0x14].copy_from_slice(&4u32.to_le_bytes()); // BAR0: 64-bit memory
    r[0x18..0x1c].copy_from_slice(&0xc001u32.to_le_bytes()); // BAR2: I/O
    for (d, s) in r[0x34..].iter_mut().zip(&input.caps) {
        *d = *s;
    }
    // Usually a well-formed MSI-X capability somewhere in the list.
    let at = usize::from(input.msix_at.max(0x40) & !3).min(0xf0);
    if input.caps.len() < 4 {
        r[0x34] = at as u8;
        r[at] = 0x11;
        r[at + 1] = 0;
    }
    if r[at] == 0x11 {
        // Mostly small tables (each vector owns an eventfd); sometimes up to 2048.
        let n = if input.msix_vectors & 0x8000 != 0 {
            input.msix_vectors % 2048
        } else {
            input.msix_vectors % 128
        };
        r[at + 2..at + 4].copy_from_slice(&n.to_le_bytes());
        r[at + 4..at + 8].copy_from_slice(&0x2000u32.to_le_bytes());
        r[at + 8..at + 12].copy_from_slice(&0x3000u32.to_le_bytes());
    }
    r
}

fuzz_target!(|input: Input| {
    let raw = host_config(&input);
    let regions = vec![
        RegionInfo {
            size: 0x8000,
            mmap: true,
            ..Default::default()
        },
        RegionInfo::default(),
        RegionInfo {
            size: 0x20,
            ..Default::default()
        },
    ];
    let host = Arc::new(FakeHost::new(raw, regions, 4, 2048, input.dynamic));
    let h = InterruptHierarchy::new(
        Arc::new(KvmVectorLayer::new(
            Arc::new(RecordingBackend::default()),
            24,
            4096,
        )),
        Arc::new(NoRemap),
    );
    let slots = Arc::new(Slots::default());
    let policy = if input.reenable {
        MsixPolicy::Reenable
    } else {
        MsixPolicy::Auto
    };
    let Ok(mut d) = VfioPciDevice::new(
        host.clone(),
        &h,
        RequesterId::pci(0, 3, 0),
        policy,
        slots.clone(),
        WINDOWS.to_vec(),
    ) else {
        return;
    };
    let layout = ConfigLayout::new(&raw);
    let msix_cap = layout
        .caps
        .iter()
        .find(|c| c.id == 0x11)
        .map(|c| usize::from(c.offset));
    for op in &input.ops {
        match *op {
            Op::ReadConfig { offset } => {
                let _ = d.read_config(usize::from(offset));
            }
            Op::WriteConfig {
                offset,
                size,
                value,
            } => d.write_config(usize::from(offset), &le_bytes(u64::from(value), size, 4)),
            Op::MsixControl { value } => {
                if let Some(at) = msix_cap {
                    d.write_config(at + 2, &value.to_le_bytes());
                }
            }
            Op::MsixEntry {
                entry,
                vector,
                masked,
            } => {
                let e = 0x2000 + u64::from(entry) * 16;
                d.bar_write(0, e, &0xfee0_0000u32.to_le_bytes());
                d.bar_write(0, e + 8, &u32::from(vector).to_le_bytes());
                d.bar_write(0, e + 12, &u32::from(masked).to_le_bytes());
            }
            Op::BarRead { bar, offset, size } => {
                let mut b = vec![0u8; size.len(16)];
                d.bar_read(usize::from(bar % 8), u64::from(offset), &mut b);
            }
            Op::BarWrite {
                bar,
                offset,
                size,
                value,
            } => d.bar_write(
                usize::from(bar % 8),
                u64::from(offset),
                &le_bytes(value, size, 16),
            ),
        }
        // The host's registers the VMM owns are never written by the guest.
        let now = *host.config.lock().unwrap();
        for o in 0..256 {
            if layout.owner(o) == Owner::Shadow {
                assert_eq!(now[o], raw[o], "guest wrote host byte {o:#x}");
            }
        }
        assert_eq!(d.read_config(0), 0x0010_1b36);
        // Direct areas only while decoding.
        if d.read_config(4) & 2 == 0 {
            assert!(slots.live.lock().unwrap().is_empty());
        }
        let irqs = d.host_irqs();
        if input.dynamic && !input.reenable {
            assert_eq!(irqs.stats().msix_disables, 0);
        }
        assert!(irqs.enabled_count(MSIX_INDEX) <= 2048);
    }
});
