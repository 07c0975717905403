use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::FromRawFd;
use std::path::Path;

use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use vm_memory::GuestMemoryMmap;

use super::*;

const MEM: u64 = 0x10_0000;

/// An image of `sectors` sectors whose byte i is i % 251, in a memfd.
fn image(sectors: u64, readonly: bool) -> (DiskImage, File) {
    // SAFETY: memfd_create with a valid C string.
    let fd = unsafe { libc::memfd_create(c"blk-test".as_ptr(), 0) };
    assert!(fd >= 0);
    // SAFETY: fresh descriptor owned by this File.
    let mut f = unsafe { File::from_raw_fd(fd) };
    let data: Vec<u8> = (0..sectors * 512).map(|i| (i % 251) as u8).collect();
    f.write_all(&data).unwrap();
    let disk =
        DiskImage::from_file(f.try_clone().unwrap(), Path::new("test.img"), readonly).unwrap();
    (disk, f)
}

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap()
}

fn header(mem: &GuestMemoryMmap, at: u64, kind: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&kind.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&h, GuestAddress(at)).unwrap();
}

fn r(addr: u64, len: u32) -> Descriptor {
    Descriptor::new(addr, len, 0, 0)
}
fn w(addr: u64, len: u32) -> Descriptor {
    Descriptor::new(addr, len, VRING_DESC_F_WRITE as u16, 0)
}

fn status(mem: &GuestMemoryMmap, at: u64) -> u8 {
    mem.read_obj(GuestAddress(at)).unwrap()
}

#[test]
fn read_fills_buffers_across_descriptors() {
    let (disk, _f) = image(8, false);
    let m = mem();
    header(&m, 0x1000, VIRTIO_BLK_T_IN, 1);
    let len = process(
        &disk,
        &m,
        &[r(0x1000, 16), w(0x2000, 300), w(0x3000, 212), w(0x4000, 1)],
    );
    assert_eq!(len, 513);
    assert_eq!(status(&m, 0x4000), VIRTIO_BLK_S_OK as u8);
    let mut a = [0u8; 300];
    m.read_slice(&mut a, GuestAddress(0x2000)).unwrap();
    assert_eq!(a[0], (512 % 251) as u8);
    assert_eq!(a[299], ((512 + 299) % 251) as u8);
}

#[test]
fn write_reaches_the_image() {
    let (disk, mut f) = image(8, false);
    let m = mem();
    header(&m, 0x1000, VIRTIO_BLK_T_OUT, 2);
    m.write_slice(&[0xab; 512], GuestAddress(0x2000)).unwrap();
    // Header and data in one descriptor, status in its own.
    m.write_slice(&[0xab; 512], GuestAddress(0x1010)).unwrap();
    let len = process(&disk, &m, &[r(0x1000, 16 + 512), w(0x4000, 1)]);
    assert_eq!(len, 1);
    assert_eq!(status(&m, 0x4000), 0);
    let mut b = [0u8; 512];
    f.seek(SeekFrom::Start(1024)).unwrap();
    f.read_exact(&mut b).unwrap();
    assert_eq!(b, [0xab; 512]);
}

#[test]
fn requests_past_the_end_of_the_image_fail_without_io() {
    let (disk, _f) = image(8, false);
    let m = mem();
    for (sector, len) in [
        (8u64, 512u32),
        (7, 1024),
        (u64::MAX, 512),
        (u64::MAX / 512, 512),
    ] {
        header(&m, 0x1000, VIRTIO_BLK_T_IN, sector);
        m.write_slice(&[0x5a; 16], GuestAddress(0x2000)).unwrap();
        process(&disk, &m, &[r(0x1000, 16), w(0x2000, len), w(0x4000, 1)]);
        assert_eq!(
            status(&m, 0x4000),
            VIRTIO_BLK_S_IOERR as u8,
            "sector {sector}"
        );
        let mut b = [0u8; 16];
        m.read_slice(&mut b, GuestAddress(0x2000)).unwrap();
        assert_eq!(b, [0x5a; 16]);
    }
}

#[test]
fn buffers_outside_guest_ram_fail() {
    let (disk, _f) = image(8, false);
    let m = mem();
    header(&m, 0x1000, VIRTIO_BLK_T_IN, 0);
    process(&disk, &m, &[r(0x1000, 16), w(MEM - 256, 512), w(0x4000, 1)]);
    assert_eq!(status(&m, 0x4000), VIRTIO_BLK_S_IOERR as u8);
    header(&m, 0x1000, VIRTIO_BLK_T_OUT, 0);
    process(
        &disk,
        &m,
        &[r(0x1000, 16), r(u64::MAX - 10, 512), w(0x4000, 1)],
    );
    assert_eq!(status(&m, 0x4000), VIRTIO_BLK_S_IOERR as u8);
    // Header outside RAM: IOERR in the status byte.
    assert_eq!(process(&disk, &m, &[r(MEM, 16), w(0x4000, 1)]), 1);
    assert_eq!(status(&m, 0x4000), VIRTIO_BLK_S_IOERR as u8);
    // Status outside RAM: nothing written, nothing reported.
    header(&m, 0x1000, VIRTIO_BLK_T_FLUSH, 0);
    assert_eq!(process(&disk, &m, &[r(0x1000, 16), w(MEM + 10, 1)]), 0);
}

#[test]
fn chains_without_a_status_byte_are_returned_empty() {
    let (disk, _f) = image(8, false);
    let m = mem();
    header(&m, 0x1000, VIRTIO_BLK_T_IN, 0);
    assert_eq!(process(&disk, &m, &[r(0x1000, 16)]), 0);
    assert_eq!(process(&disk, &m, &[]), 0);
    assert_eq!(process(&disk, &m, &[w(0x4000, 1), r(0x1000, 16)]), 0);
    assert_eq!(parse(&m, &[w(0x4000, 0)]), Err(ParseError::NoStatus));
}

#[test]
fn short_header_and_unaligned_lengths_are_errors() {
    let (disk, _f) = image(8, false);
    let m = mem();
    header(&m, 0x1000, VIRTIO_BLK_T_IN, 0);
    process(&disk, &m, &[r(0x1000, 8), w(0x4000, 1)]);
    assert_eq!(status(&m, 0x4000), VIRTIO_BLK_S_IOERR as u8);
    process(&disk, &m, &[r(0x1000, 16), w(0x2000, 100), w(0x4000, 1)]);
    assert_eq!(status(&m, 0x4000), VIRTIO_BLK_S_IOERR as u8);
}

#[test]
fn readonly_image_refuses_writes_discard_and_write_zeroes() {
    let (disk, _f) = image(8, true);
    let m = mem();
    for t in [
        VIRTIO_BLK_T_OUT,
        VIRTIO_BLK_T_DISCARD,
        VIRTIO_BLK_T_WRITE_ZEROES,
    ] {
        header(&m, 0x1000, t, 0);
        process(&disk, &m, &[r(0x1000, 16), r(0x2000, 512), w(0x4000, 1)]);
        assert_eq!(status(&m, 0x4000), VIRTIO_BLK_S_IOERR as u8);
    }
}

#[test]
fn get_id_writes_the_image_name() {
    let (disk, _f) = image(8, false);
    let m = mem();
    header(&m, 0x1000, VIRTIO_BLK_T_GET_ID, 0);
    assert_eq!(
        process(&disk, &m, &[r(0x1000, 16), w(0x2000, 20), w(0x4000, 1)]),
        21
    );
    let mut id = [0u8; 20];
    m.read_slice(&mut id, GuestAddress(0x2000)).unwrap();
    assert_eq!(&id[..9], b"test.img\0");
}

#[test]
fn flush_and_unknown_types() {
    let (disk, _f) = image(8, false);
    let m = mem();
    header(&m, 0x1000, VIRTIO_BLK_T_FLUSH, 0);
    process(&disk, &m, &[r(0x1000, 16), w(0x4000, 1)]);
    assert_eq!(status(&m, 0x4000), VIRTIO_BLK_S_OK as u8);
    header(&m, 0x1000, 99, 0);
    process(&disk, &m, &[r(0x1000, 16), w(0x4000, 1)]);
    assert_eq!(status(&m, 0x4000), VIRTIO_BLK_S_UNSUPP as u8);
}

fn dwz(m: &GuestMemoryMmap, at: u64, sector: u64, count: u32, flags: u32) {
    let mut s = [0u8; 16];
    s[..8].copy_from_slice(&sector.to_le_bytes());
    s[8..12].copy_from_slice(&count.to_le_bytes());
    s[12..].copy_from_slice(&flags.to_le_bytes());
    m.write_slice(&s, GuestAddress(at)).unwrap();
}

#[test]
fn write_zeroes_and_discard_zero_the_range() {
    let (disk, mut f) = image(8, false);
    let m = mem();
    for (t, flags, sector) in [
        (VIRTIO_BLK_T_WRITE_ZEROES, 0, 1u64),
        (VIRTIO_BLK_T_WRITE_ZEROES, 1, 3),
        (VIRTIO_BLK_T_DISCARD, 0, 5),
    ] {
        header(&m, 0x1000, t, 0);
        dwz(&m, 0x2000, sector, 1, flags);
        process(&disk, &m, &[r(0x1000, 16), r(0x2000, 16), w(0x4000, 1)]);
        assert_eq!(status(&m, 0x4000), VIRTIO_BLK_S_OK as u8);
        let mut b = [1u8; 512];
        f.seek(SeekFrom::Start(sector * 512)).unwrap();
        f.read_exact(&mut b).unwrap();
        assert_eq!(b, [0; 512]);
    }
    // Unmap on a discard and reserved flags are unsupported; ranges past the end fail.
    header(&m, 0x1000, VIRTIO_BLK_T_DISCARD, 0);
    dwz(&m, 0x2000, 0, 1, 1);
    process(&disk, &m, &[r(0x1000, 16), r(0x2000, 16), w(0x4000, 1)]);
    assert_eq!(status(&m, 0x4000), VIRTIO_BLK_S_UNSUPP as u8);
    dwz(&m, 0x2000, 7, 2, 0);
    process(&disk, &m, &[r(0x1000, 16), r(0x2000, 16), w(0x4000, 1)]);
    assert_eq!(status(&m, 0x4000), VIRTIO_BLK_S_IOERR as u8);
    // Two segments: more than max_discard_seg.
    process(&disk, &m, &[r(0x1000, 16), r(0x2000, 32), w(0x4000, 1)]);
    assert_eq!(status(&m, 0x4000), VIRTIO_BLK_S_IOERR as u8);
}
