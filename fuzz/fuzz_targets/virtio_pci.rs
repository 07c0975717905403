//! Fuzzes the virtio PCI transport with a virtio-blk device (2 queues, memfd image): common
//! configuration accesses of any size and offset (feature negotiation, queue setup, status
//! including reset), device configuration and ISR reads, notifications, MSI-X table and
//! config-space writes, plus a structured driver bring-up with fuzzed queue addresses, over
//! guest memory with holes. No KVM: interrupts go to a recording vector layer, notifications
//! arrive as MMIO writes (no ioeventfds).
//!
//! Invariants: no panic; FEATURES_OK is set only for an accepted subset of the offer that
//! includes VIRTIO_F_VERSION_1; the device is active only while DRIVER_OK is set; num_queues
//! reads 2; the interrupt books balance.

#![no_main]

use std::sync::Arc;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use interrupt::RequesterId;
use pci::PciDevice;
use virtio::spec::{common_cfg as cc, features, status};
use virtio::transport::{DEVICE_OFFSET, ISR_OFFSET, NOTIFY_OFFSET};
use virtio::{NoIoEvents, VirtioPciDevice};
use vmm_fuzz::{le_bytes, memfd_image, write_mem, Layout, Recording, Size};

const RAM: u64 = 0x4_0000;

#[derive(Arbitrary, Debug)]
enum Op {
    CommonWrite { off: u8, size: Size, value: u64 },
    CommonRead { off: u8, size: Size },
    DeviceRead { off: u8, size: Size },
    DeviceWrite { off: u8, size: Size, value: u64 },
    IsrRead,
    Notify { queue: u8 },
    BarWrite { off: u16, size: Size, value: u64 },
    BarRead { off: u16, size: Size },
    ConfigWrite { off: u8, size: Size, value: u32 },
    /// A driver's bring-up: features, queue 0/1 setup, MSI-X enable, DRIVER_OK.
    BringUp { features: u64, queues: [(u16, u16, u16, u16, u16); 2], msix: bool },
    Guest { at: u16, bytes: Vec<u8> },
    Reset,
}

#[derive(Arbitrary, Debug)]
struct Input {
    layout: Layout,
    readonly: bool,
    ops: Vec<Op>,
}

fuzz_target!(|input: Input| {
    let mem = input.layout.memory(RAM);
    let rec = Recording::no_remap(24, 4096);
    let (disk, _file) = memfd_image(64, input.readonly);
    let blk = virtio::blk::Block::new(disk, 2, "fuzz").unwrap();
    let mut d = VirtioPciDevice::new(
        Box::new(blk),
        &rec.hierarchy,
        RequesterId::pci(0, 3, 0),
        mem.clone(),
        Arc::new(NoIoEvents),
    )
    .unwrap();
    let offered = d.common().device_features();
    let w = |d: &mut VirtioPciDevice, off: u64, v: &[u8]| d.bar_write(0, off, v);
    for op in input.ops.iter().take(64) {
        match op {
            Op::CommonWrite { off, size, value } => {
                w(&mut d, u64::from(*off), &le_bytes(*value, *size, 8))
            }
            Op::CommonRead { off, size } => {
                let mut b = vec![0u8; size.len(8)];
                d.bar_read(0, u64::from(*off), &mut b);
            }
            Op::DeviceRead { off, size } => {
                let mut b = vec![0u8; size.len(8)];
                d.bar_read(0, DEVICE_OFFSET + u64::from(*off), &mut b);
            }
            Op::DeviceWrite { off, size, value } => w(
                &mut d,
                DEVICE_OFFSET + u64::from(*off),
                &le_bytes(*value, *size, 8),
            ),
            Op::IsrRead => {
                let mut b = [0u8; 1];
                d.bar_read(0, ISR_OFFSET, &mut b);
            }
            Op::Notify { queue } => w(
                &mut d,
                NOTIFY_OFFSET + 4 * u64::from(*queue % 4),
                &u16::from(*queue).to_le_bytes(),
            ),
            Op::BarWrite { off, size, value } => {
                w(&mut d, u64::from(*off), &le_bytes(*value, *size, 8))
            }
            Op::BarRead { off, size } => {
                let mut b = vec![0u8; size.len(8)];
                d.bar_read(0, u64::from(*off), &mut b);
            }
            Op::ConfigWrite { off, size, value } => {
                d.write_config(usize::from(*off), &le_bytes(u64::from(*value), *size, 4))
            }
            Op::BringUp {
                features: f,
                queues,
                msix,
            } => {
                w(&mut d, cc::DEVICE_STATUS, &[status::ACKNOWLEDGE | status::DRIVER]);
                for (sel, word) in [(0u32, *f as u32), (1, (*f >> 32) as u32)] {
                    w(&mut d, cc::DRIVER_FEATURE_SELECT, &sel.to_le_bytes());
                    w(&mut d, cc::DRIVER_FEATURE, &word.to_le_bytes());
                }
                let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
                w(&mut d, cc::DEVICE_STATUS, &[s]);
                for (i, (size, desc, avail, used, vector)) in queues.iter().enumerate() {
                    w(&mut d, cc::QUEUE_SELECT, &(i as u16).to_le_bytes());
                    w(&mut d, cc::QUEUE_SIZE, &size.to_le_bytes());
                    w(&mut d, cc::QUEUE_DESC, &(u64::from(*desc) * 16).to_le_bytes());
                    w(&mut d, cc::QUEUE_DRIVER, &(u64::from(*avail) * 2).to_le_bytes());
                    w(&mut d, cc::QUEUE_DEVICE, &(u64::from(*used) * 4).to_le_bytes());
                    w(&mut d, cc::QUEUE_MSIX_VECTOR, &(vector % 4).to_le_bytes());
                    w(&mut d, cc::QUEUE_ENABLE, &1u16.to_le_bytes());
                }
                if *msix {
                    // Message control of the MSI-X capability: enable.
                    if let Some(cap) = vmm_fuzz::find_capability(
                        |o| d.read_config(o),
                        pci::msix::MSIX_CAP_ID,
                    ) {
                        d.write_config(cap + 2, &0x8000u16.to_le_bytes());
                    }
                }
                w(&mut d, cc::DEVICE_STATUS, &[s | status::DRIVER_OK]);
            }
            Op::Guest { at, bytes } => write_mem(&mem, u64::from(*at) * 4, bytes),
            Op::Reset => w(&mut d, cc::DEVICE_STATUS, &[0]),
        }
        let c = d.common();
        if c.status() & status::FEATURES_OK != 0 {
            let f = c.driver_features();
            assert_eq!(f & !offered, 0, "FEATURES_OK with unoffered features {f:#x}");
            assert_ne!(f & features::VERSION_1, 0, "FEATURES_OK without VERSION_1");
        }
        if d.is_active() {
            assert_ne!(c.status() & status::DRIVER_OK, 0, "active without DRIVER_OK");
        }
        let mut nq = [0u8; 2];
        d.bar_read(0, cc::NUM_QUEUES, &mut nq);
        assert_eq!(u16::from_le_bytes(nq), 2);
        rec.check_books(&[d.domain().clone()]);
    }
});
