//! Fuzzes virtqueue processing of virtio-blk: a split queue whose descriptor table,
//! available ring and request headers come from the input (any addresses, lengths, flags,
//! next indices, indirect tables, ring indices), served by `virtio::blk::process_queue`
//! (chains walked by `virtio-queue`, requests parsed and executed against a memfd image)
//! over guest memory with holes.
//!
//! Invariants: no panic (nor any access outside guest RAM: vm-memory would fault under ASan);
//! the image never grows; a read-only image is never modified. (The used ring itself is not
//! checked: a hostile driver may point data buffers at it, so its contents are the guest's.)

#![no_main]

use std::io::{Read, Seek, SeekFrom};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_fuzz::{memfd_image, write_mem, Layout};

const RAM: u64 = 0x4_0000;
const SECTORS: u64 = 64;

#[derive(Arbitrary, Debug)]
struct Desc {
    addr: u32,
    len: u16,
    flags: u8,
    next: u8,
}

#[derive(Arbitrary, Debug)]
struct Header {
    at: u16,
    kind: u8,
    sector: u8,
    /// A discard / write-zeroes segment after the header.
    seg_sector: u8,
    seg_count: u8,
    seg_flags: u8,
}

#[derive(Arbitrary, Debug)]
struct Input {
    layout: Layout,
    readonly: bool,
    event_idx: bool,
    size_log2: u8,
    /// Ring addresses: page-ish offsets in RAM, or anything.
    desc_at: u16,
    avail_at: u16,
    used_at: u16,
    descs: Vec<Desc>,
    heads: Vec<u8>,
    avail_idx: Option<u16>,
    headers: Vec<Header>,
    rounds: u8,
}

fn addr(x: u32) -> u64 {
    // Mostly inside RAM (and the hole), sometimes past its end.
    if x & 0x8000_0000 != 0 {
        u64::from(x) << 8
    } else {
        u64::from(x) % (RAM + 0x1000)
    }
}

fuzz_target!(|input: Input| {
    let mem = input.layout.memory(RAM);
    let (disk, mut file) = memfd_image(SECTORS, input.readonly);
    let before = {
        let mut v = Vec::new();
        file.seek(SeekFrom::Start(0)).unwrap();
        file.read_to_end(&mut v).unwrap();
        v
    };
    let size: u16 = 1 << (input.size_log2 % 9);
    let desc_table = u64::from(input.desc_at) * 16;
    let avail = u64::from(input.avail_at) * 2;
    let used = u64::from(input.used_at) * 4;
    for (i, d) in input.descs.iter().take(usize::from(size)).enumerate() {
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&addr(d.addr).to_le_bytes());
        raw[8..12].copy_from_slice(&u32::from(d.len).to_le_bytes());
        // NEXT, WRITE, INDIRECT.
        raw[12..14].copy_from_slice(&u16::from(d.flags & 7).to_le_bytes());
        raw[14..16].copy_from_slice(&u16::from(d.next).to_le_bytes());
        write_mem(&mem, desc_table + 16 * i as u64, &raw);
    }
    for h in &input.headers {
        let mut raw = [0u8; 32];
        raw[..4].copy_from_slice(&u32::from(h.kind % 16).to_le_bytes());
        raw[8..16].copy_from_slice(&u64::from(h.sector).to_le_bytes());
        raw[16..24].copy_from_slice(&u64::from(h.seg_sector).to_le_bytes());
        raw[24..28].copy_from_slice(&u32::from(h.seg_count).to_le_bytes());
        raw[28..32].copy_from_slice(&u32::from(h.seg_flags & 3).to_le_bytes());
        write_mem(&mem, u64::from(h.at) * 4, &raw);
    }
    let n = input.heads.len().min(usize::from(size));
    for (i, &h) in input.heads.iter().take(n).enumerate() {
        write_mem(&mem, avail + 4 + 2 * i as u64, &u16::from(h).to_le_bytes());
    }
    let offered = input.avail_idx.unwrap_or(n as u16);
    write_mem(&mem, avail + 2, &offered.to_le_bytes());

    let Ok(mut q) = Queue::new(size) else { return };
    if q.try_set_desc_table_address(GuestAddress(desc_table)).is_err()
        || q.try_set_avail_ring_address(GuestAddress(avail)).is_err()
        || q.try_set_used_ring_address(GuestAddress(used)).is_err()
    {
        return;
    }
    q.set_event_idx(input.event_idx);
    q.set_ready(true);
    if !q.is_valid(&mem) {
        return;
    }
    for _ in 0..=(input.rounds % 3) {
        if virtio::blk::process_queue(&disk, &mem, &mut q, 64).is_err() {
            break;
        }
    }
    let mut after = Vec::new();
    file.seek(SeekFrom::Start(0)).unwrap();
    file.read_to_end(&mut after).unwrap();
    assert_eq!(after.len(), before.len(), "the image changed size");
    if input.readonly {
        assert!(after == before, "a read-only image was modified");
    }
});
