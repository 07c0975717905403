//! The block device behind the PCI transport, driven like a guest driver would.

use std::fs::File;
use std::io::Write;
use std::os::fd::FromRawFd;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use interrupt::{InterruptHierarchy, KvmVectorLayer, NoRemap, RecordingBackend, RequesterId};
use pci::PciDevice;
use virtio_bindings::virtio_blk::{VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Address, Bytes, GuestAddress};

use super::*;
use crate::spec::{common_cfg as cc, features, status};
use crate::transport::{DEVICE_OFFSET, NOTIFY_OFFSET};
use crate::{GuestMemory, NoIoEvents, VirtioPciDevice};

fn memfd_image(sectors: u64) -> DiskImage {
    // SAFETY: memfd_create with a valid C string.
    let fd = unsafe { libc::memfd_create(c"blk".as_ptr(), 0) };
    assert!(fd >= 0);
    // SAFETY: fresh descriptor owned by this File.
    let mut f = unsafe { File::from_raw_fd(fd) };
    f.write_all(&vec![0x11; (sectors * 512) as usize]).unwrap();
    DiskImage::from_file(f, Path::new("x.img"), false).unwrap()
}

#[test]
fn config_space_reports_capacity_and_queues() {
    let b = Block::new(memfd_image(16), 3, "t").unwrap();
    let mut c = [0u8; 8];
    b.read_config(0, &mut c);
    assert_eq!(u64::from_le_bytes(c), 16);
    let mut q = [0u8; 2];
    b.read_config(34, &mut q);
    assert_eq!(u16::from_le_bytes(q), 3);
    let mut far = [0xffu8; 4];
    b.read_config(u64::MAX - 1, &mut far);
    assert_eq!(far, [0; 4]);
    assert_eq!(b.queue_max_sizes(), vec![QUEUE_SIZE; 3]);
    assert!(Block::new(memfd_image(1), 0, "t").is_err());
}

#[test]
fn requests_through_the_transport_complete_on_the_worker() {
    let h = InterruptHierarchy::new(
        Arc::new(KvmVectorLayer::new(
            Arc::new(RecordingBackend::default()),
            24,
            4096,
        )),
        Arc::new(NoRemap),
    );
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
    let blk = Block::new(memfd_image(64), 2, "t").unwrap();
    let mut d = VirtioPciDevice::new(
        Box::new(blk),
        &h,
        RequesterId::pci(0, 4, 0),
        mem.clone(),
        Arc::new(NoIoEvents),
    )
    .unwrap();
    let mock = MockSplitQueue::create(&mem, GuestAddress(0x10000), 16);
    let w = |d: &mut VirtioPciDevice, o: u64, v: &[u8]| d.bar_write(0, o, v);
    let f = d.common().device_features();
    assert_ne!(f & features::VERSION_1, 0);
    w(
        &mut d,
        cc::DEVICE_STATUS,
        &[status::ACKNOWLEDGE | status::DRIVER],
    );
    w(&mut d, cc::DRIVER_FEATURE_SELECT, &1u32.to_le_bytes());
    w(&mut d, cc::DRIVER_FEATURE, &1u32.to_le_bytes());
    w(
        &mut d,
        cc::DEVICE_STATUS,
        &[status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK],
    );
    w(&mut d, cc::QUEUE_SELECT, &1u16.to_le_bytes());
    w(&mut d, cc::QUEUE_SIZE, &16u16.to_le_bytes());
    w(
        &mut d,
        cc::QUEUE_DESC,
        &mock.desc_table_addr().0.to_le_bytes(),
    );
    w(&mut d, cc::QUEUE_DRIVER, &mock.avail_addr().0.to_le_bytes());
    w(&mut d, cc::QUEUE_DEVICE, &mock.used_addr().0.to_le_bytes());
    w(&mut d, cc::QUEUE_ENABLE, &1u16.to_le_bytes());
    let all = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;
    w(&mut d, cc::DEVICE_STATUS, &[all]);
    assert!(d.is_active());
    let mut cap = [0u8; 8];
    d.bar_read(0, DEVICE_OFFSET, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 64);

    // A write of one sector, then a read of it back.
    let hdr = |t: u32, s: u64| {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&t.to_le_bytes());
        h[8..].copy_from_slice(&s.to_le_bytes());
        h
    };
    mem.write_slice(&hdr(VIRTIO_BLK_T_OUT, 5), GuestAddress(0x100000))
        .unwrap();
    mem.write_slice(&[0xcd; 512], GuestAddress(0x101000))
        .unwrap();
    mem.write_slice(&hdr(VIRTIO_BLK_T_IN, 5), GuestAddress(0x102000))
        .unwrap();
    let wf = VRING_DESC_F_WRITE as u16;
    let chain = |a: u64, data_flags: u16| {
        [
            RawDescriptor::from(Descriptor::new(a, 16, 0, 0)),
            RawDescriptor::from(Descriptor::new(
                a + 0x1000 + (a & 0x2000),
                512,
                data_flags,
                0,
            )),
            RawDescriptor::from(Descriptor::new(a + 0x800, 1, wf, 0)),
        ]
    };
    mock.build_desc_chain(&chain(0x100000, 0)).unwrap();
    w(&mut d, NOTIFY_OFFSET + 4, &1u16.to_le_bytes());
    let used_idx =
        |mem: &GuestMemory| -> u16 { mem.read_obj(mock.used_addr().unchecked_add(2)).unwrap() };
    let wait = |n: u16| {
        let start = Instant::now();
        while used_idx(&mem) < n {
            assert!(start.elapsed() < Duration::from_secs(10), "no completion");
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    wait(1);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(0x100800)).unwrap(), 0);
    let c2 = chain(0x102000, wf);
    let descs: Vec<RawDescriptor> = c2.to_vec();
    mock.add_desc_chains(
        &descs
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let s = Descriptor::from(*d);
                let (fl, nx) = if i < 2 {
                    (s.flags() | 1, 3 + i as u16 + 1)
                } else {
                    (s.flags(), 0)
                };
                RawDescriptor::from(Descriptor::new(s.addr().0, s.len(), fl, nx))
            })
            .collect::<Vec<_>>(),
        3,
    )
    .unwrap();
    w(&mut d, NOTIFY_OFFSET + 4, &1u16.to_le_bytes());
    wait(2);
    let mut back = [0u8; 512];
    mem.read_slice(&mut back, GuestAddress(0x105000)).unwrap();
    assert_eq!(back, [0xcd; 512]);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(0x102800)).unwrap(), 0);
    // Reset stops the worker; the queue's state is gone.
    w(&mut d, cc::DEVICE_STATUS, &[0]);
    assert!(!d.is_active());
}
