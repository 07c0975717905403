//! virtio-blk requests (virtio 1.2 §5.2.6): parsing a descriptor chain into a request and
//! executing it against a [`DiskImage`].
//!
//! The chain is walked by `virtio-queue`; this module only splits its buffers. A request is
//! a 16-byte header (type, reserved, sector) in device-readable buffers, data, and a status
//! byte: the last byte of the device-writable buffers. Every data buffer is resolved through
//! vm-memory before any I/O, so a request can only touch guest RAM, and sector ranges are
//! checked against the image's capacity: a request that fails either check gets
//! `VIRTIO_BLK_S_IOERR` and moves no data.

use std::io;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES,
};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::disk::{DiskImage, SECTOR_SIZE};

/// Size of the request header.
pub const HEADER_SIZE: usize = 16;
/// Size of one discard / write-zeroes segment (`virtio_blk_discard_write_zeroes`).
pub const DWZ_SEGMENT_SIZE: usize = 16;
/// Discard / write-zeroes segments accepted per request (`max_*_seg`).
pub const MAX_DWZ_SEGMENTS: u32 = 1;
/// Largest discard / write-zeroes range in sectors (`max_*_sectors`).
pub const MAX_DWZ_SECTORS: u32 = 1 << 22;
/// `VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP`.
const FLAG_UNMAP: u32 = 1;
/// Length of the GET_ID string.
pub const ID_LEN: usize = 20;

/// A guest buffer: `len` bytes at `addr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest physical address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
}

/// The request types this device serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestType {
    /// Read sectors into the guest.
    In,
    /// Write sectors from the guest.
    Out,
    /// Make written data durable.
    Flush,
    /// Return the device ID string.
    GetId,
    /// Deallocate sector ranges.
    Discard,
    /// Zero sector ranges.
    WriteZeroes,
    /// Anything else (answered with `VIRTIO_BLK_S_UNSUPP`).
    Unsupported(u32),
}

impl From<u32> for RequestType {
    fn from(t: u32) -> Self {
        match t {
            VIRTIO_BLK_T_IN => Self::In,
            VIRTIO_BLK_T_OUT => Self::Out,
            VIRTIO_BLK_T_FLUSH => Self::Flush,
            VIRTIO_BLK_T_GET_ID => Self::GetId,
            VIRTIO_BLK_T_DISCARD => Self::Discard,
            VIRTIO_BLK_T_WRITE_ZEROES => Self::WriteZeroes,
            t => Self::Unsupported(t),
        }
    }
}

/// A parsed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Type from the header.
    pub kind: RequestType,
    /// First sector from the header.
    pub sector: u64,
    /// Device-readable buffers after the header (write data, discard segments).
    pub readable: Vec<Segment>,
    /// Device-writable buffers before the status byte (read data, the ID).
    pub writable: Vec<Segment>,
    /// Where the status byte goes.
    pub status: u64,
}

/// Why a chain is not a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// No device-writable byte for the status (or a readable buffer after a writable one):
    /// nothing can be reported; the chain is returned with 0 bytes written.
    NoStatus,
    /// The header is short or outside guest RAM: the status byte at this address gets
    /// `VIRTIO_BLK_S_IOERR`.
    BadHeader(u64),
}

/// Removes `n` bytes from the front of `segs`, returning them.
fn split_front(segs: &mut Vec<Segment>, mut n: u64) -> Option<Vec<Segment>> {
    let mut front = Vec::new();
    while n > 0 {
        let first = segs.first_mut()?;
        let take = u64::from(first.len).min(n);
        front.push(Segment {
            addr: first.addr,
            len: take as u32,
        });
        n -= take;
        if take == u64::from(first.len) {
            segs.remove(0);
        } else {
            first.addr = first.addr.checked_add(take)?;
            first.len -= take as u32;
        }
    }
    Some(front)
}

/// Total bytes of `segs`.
pub fn total_len(segs: &[Segment]) -> u64 {
    segs.iter().map(|s| u64::from(s.len)).sum()
}

/// Reads `out.len()` bytes from the start of `segs`; false if outside guest RAM.
fn gather<M: GuestMemoryBackend>(mem: &M, segs: &[Segment], out: &mut [u8]) -> bool {
    let mut done = 0;
    for s in segs {
        if done == out.len() {
            break;
        }
        let n = (s.len as usize).min(out.len() - done);
        if mem
            .read_slice(&mut out[done..done + n], GuestAddress(s.addr))
            .is_err()
        {
            return false;
        }
        done += n;
    }
    done == out.len()
}

/// Splits a chain's descriptors (as `virtio-queue` yields them) into a request.
pub fn parse<M: GuestMemoryBackend>(mem: &M, descs: &[Descriptor]) -> Result<Request, ParseError> {
    let first_w = descs
        .iter()
        .position(|d| d.is_write_only())
        .unwrap_or(descs.len());
    if descs[first_w..].iter().any(|d| !d.is_write_only()) {
        return Err(ParseError::NoStatus);
    }
    let seg = |d: &Descriptor| Segment {
        addr: d.addr().0,
        len: d.len(),
    };
    let mut readable: Vec<Segment> = descs[..first_w]
        .iter()
        .map(seg)
        .filter(|s| s.len > 0)
        .collect();
    let mut writable: Vec<Segment> = descs[first_w..]
        .iter()
        .map(seg)
        .filter(|s| s.len > 0)
        .collect();
    // The status byte: the last writable byte.
    let last = writable.last_mut().ok_or(ParseError::NoStatus)?;
    let status = last
        .addr
        .checked_add(u64::from(last.len) - 1)
        .ok_or(ParseError::NoStatus)?;
    last.len -= 1;
    if last.len == 0 {
        writable.pop();
    }
    let header_segs =
        split_front(&mut readable, HEADER_SIZE as u64).ok_or(ParseError::BadHeader(status))?;
    let mut header = [0u8; HEADER_SIZE];
    if !gather(mem, &header_segs, &mut header) {
        return Err(ParseError::BadHeader(status));
    }
    let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let mut sector = [0u8; 8];
    sector.copy_from_slice(&header[8..16]);
    Ok(Request {
        kind: RequestType::from(kind),
        sector: u64::from_le_bytes(sector),
        readable,
        writable,
        status,
    })
}

/// Resolves `segs` to host iovecs; `None` if any byte is outside guest RAM.
fn iovecs<M: GuestMemoryBackend>(mem: &M, segs: &[Segment]) -> Option<Vec<libc::iovec>> {
    let mut out = Vec::with_capacity(segs.len());
    for s in segs {
        for slice in mem.get_slices(GuestAddress(s.addr), s.len as usize) {
            let slice = slice.ok()?;
            out.push(libc::iovec {
                iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                iov_len: slice.len(),
            });
        }
    }
    Some(out)
}

/// The byte range of `sectors` sectors at `sector`, if inside the image.
fn range(disk: &DiskImage, sector: u64, bytes: u64) -> Option<u64> {
    let end_sector = sector.checked_add(bytes.div_ceil(SECTOR_SIZE))?;
    (end_sector <= disk.sectors()).then(|| sector * SECTOR_SIZE)
}

/// Executes `req`; returns the status and the bytes written into the guest's data
/// buffers (without the status byte).
pub fn execute<M: GuestMemoryBackend>(disk: &DiskImage, mem: &M, req: &Request) -> (u8, u32) {
    let ioerr = (VIRTIO_BLK_S_IOERR as u8, 0);
    let ok = VIRTIO_BLK_S_OK as u8;
    match req.kind {
        RequestType::In | RequestType::Out => {
            let write = req.kind == RequestType::Out;
            if write && disk.readonly() {
                return ioerr;
            }
            let segs = if write { &req.readable } else { &req.writable };
            let len = total_len(segs);
            if !len.is_multiple_of(SECTOR_SIZE) {
                return ioerr;
            }
            let Some(offset) = range(disk, req.sector, len) else {
                return ioerr;
            };
            let Some(mut iov) = iovecs(mem, segs) else {
                return ioerr;
            };
            let r = if write {
                disk.write_vectored_at(&mut iov, offset)
            } else {
                disk.read_vectored_at(&mut iov, offset)
            };
            match r {
                Ok(()) if write => (ok, 0),
                Ok(()) => (ok, len as u32),
                Err(_) => ioerr,
            }
        }
        RequestType::Flush => match disk.flush() {
            Ok(()) => (ok, 0),
            Err(_) => ioerr,
        },
        RequestType::GetId => {
            let id = disk.id();
            let n = (total_len(&req.writable) as usize).min(ID_LEN);
            let mut done = 0;
            for s in &req.writable {
                if done == n {
                    break;
                }
                let k = (s.len as usize).min(n - done);
                if mem
                    .write_slice(&id[done..done + k], GuestAddress(s.addr))
                    .is_err()
                {
                    return ioerr;
                }
                done += k;
            }
            (ok, n as u32)
        }
        RequestType::Discard | RequestType::WriteZeroes => {
            if disk.readonly() {
                return ioerr;
            }
            match discard_write_zeroes(disk, mem, req) {
                Ok(status) => (status, 0),
                Err(_) => ioerr,
            }
        }
        RequestType::Unsupported(_) => (VIRTIO_BLK_S_UNSUPP as u8, 0),
    }
}

fn discard_write_zeroes<M: GuestMemoryBackend>(
    disk: &DiskImage,
    mem: &M,
    req: &Request,
) -> io::Result<u8> {
    let bad = || io::Error::from(io::ErrorKind::InvalidInput);
    let len = total_len(&req.readable);
    if len == 0
        || !len.is_multiple_of(DWZ_SEGMENT_SIZE as u64)
        || len / DWZ_SEGMENT_SIZE as u64 > u64::from(MAX_DWZ_SEGMENTS)
    {
        return Err(bad());
    }
    let mut segs = req.readable.clone();
    while !segs.is_empty() {
        let one = split_front(&mut segs, DWZ_SEGMENT_SIZE as u64).ok_or_else(bad)?;
        let mut raw = [0u8; DWZ_SEGMENT_SIZE];
        if !gather(mem, &one, &mut raw) {
            return Err(bad());
        }
        let sector = u64::from_le_bytes(raw[0..8].try_into().map_err(|_| bad())?);
        let count = u32::from_le_bytes(raw[8..12].try_into().map_err(|_| bad())?);
        let flags = u32::from_le_bytes(raw[12..16].try_into().map_err(|_| bad())?);
        let unmap = flags & FLAG_UNMAP != 0;
        // Reserved flag bits, or unmap on a discard (§5.2.6.2): unsupported.
        if flags & !FLAG_UNMAP != 0 || (unmap && req.kind == RequestType::Discard) {
            return Ok(VIRTIO_BLK_S_UNSUPP as u8);
        }
        if count > MAX_DWZ_SECTORS {
            return Err(bad());
        }
        let bytes = u64::from(count) * SECTOR_SIZE;
        let offset = range(disk, sector, bytes).ok_or_else(bad)?;
        if req.kind == RequestType::Discard {
            disk.discard(offset, bytes)?;
        } else {
            disk.write_zeroes(offset, bytes, unmap)?;
        }
    }
    Ok(VIRTIO_BLK_S_OK as u8)
}

/// Handles one chain: parse, execute, write the status. Returns the used length (bytes
/// written into the chain's device-writable buffers, status byte included).
pub fn process<M: GuestMemoryBackend>(disk: &DiskImage, mem: &M, descs: &[Descriptor]) -> u32 {
    let (status_addr, status, written) = match parse(mem, descs) {
        Ok(req) => {
            let (s, w) = execute(disk, mem, &req);
            (req.status, s, w)
        }
        Err(ParseError::BadHeader(at)) => (at, VIRTIO_BLK_S_IOERR as u8, 0),
        Err(ParseError::NoStatus) => return 0,
    };
    if mem.write_obj(status, GuestAddress(status_addr)).is_err() {
        return written;
    }
    written + 1
}

#[cfg(test)]
mod tests;
