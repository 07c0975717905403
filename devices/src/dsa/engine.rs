//! Descriptor execution (runs on the worker thread).
//!
//! Every guest address goes through vm-memory: a range is usable only as far as it lies in
//! guest RAM, so an address outside RAM, in MMIO (the device's own portals included) or
//! wrapping past 2^64 ends the operation with a page fault (0x03) that reports the faulting
//! address and the partial progress.
//!
//! Work is bounded per step: data moves in chunks of at most [`CHUNK`] bytes through a host
//! buffer, and a batch runs one element at a time. Between steps the worker checks whether
//! the job's WQ was aborted (Abort WQ/All, Reset WQ/Device, halt, device drop), so an abort
//! takes effect after at most one chunk, whatever the transfer size (itself capped by the
//! WQ's max_xfer, at most 2^[`MAX_XFER_SHIFT`](super::MAX_XFER_SHIFT) bytes).

use std::sync::atomic::{fence, Ordering};

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::shared::{Job, Shared, SwError};
use super::spec::{desc, flag, opcode, record, status};

/// Bytes processed per step (between abort checks).
pub(crate) const CHUNK: usize = 64 * 1024;

/// Bytes of `[addr, addr + len)` that lie contiguously in guest RAM from `addr` on.
pub(crate) fn accessible(mem: &vm_memory::GuestMemoryMmap, addr: u64, len: u64) -> u64 {
    let mut done = 0u64;
    while done < len {
        let Some(a) = addr.checked_add(done) else {
            break;
        };
        let Some(region) = mem.find_region(GuestAddress(a)) else {
            break;
        };
        let start = region.start_addr().0;
        let end = start.saturating_add(region.len());
        done += (len - done).min(end - a);
    }
    done
}

/// Bytes usable at `base + off` (0 when the address wraps past 2^64).
fn avail(mem: &vm_memory::GuestMemoryMmap, base: u64, off: u64, len: u64) -> u64 {
    base.checked_add(off).map_or(0, |a| accessible(mem, a, len))
}

/// A decoded descriptor.
#[derive(Clone, Copy)]
struct Desc<'a> {
    raw: &'a [u8; 64],
    opcode: u8,
    flags: u32,
}

impl<'a> Desc<'a> {
    fn new(raw: &'a [u8; 64]) -> Self {
        let w = u32_at(raw, desc::FLAGS_OPCODE);
        Self {
            raw,
            opcode: (w >> 24) as u8,
            flags: w & 0xff_ffff,
        }
    }
    fn u64(&self, off: usize) -> u64 {
        u64::from_le_bytes(self.raw[off..off + 8].try_into().unwrap_or([0; 8]))
    }
    fn u32(&self, off: usize) -> u32 {
        u32_at(self.raw, off)
    }
    fn int_handle(&self) -> u16 {
        u16::from_le_bytes([self.raw[desc::INT_HANDLE], self.raw[desc::INT_HANDLE + 1]])
    }
    fn zero(&self, range: std::ops::Range<usize>) -> bool {
        self.raw[range].iter().all(|&b| b == 0)
    }
}

fn u32_at(raw: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([raw[off], raw[off + 1], raw[off + 2], raw[off + 3]])
}

/// What an operation produced, before it is written to the completion record.
#[derive(Clone, Copy, Default)]
struct Outcome {
    status: u8,
    result: u8,
    completed: u32,
    fault_addr: u64,
    write_fault: bool,
    op_specific: u32,
}

impl Outcome {
    fn status(status: u8) -> Self {
        Self {
            status,
            ..Default::default()
        }
    }
    fn fault(addr: u64, write: bool, completed: u64) -> Self {
        Self {
            status: status::PAGE_FAULT,
            fault_addr: addr,
            write_fault: write,
            completed: completed as u32,
            ..Default::default()
        }
    }
}

/// Executes one submitted descriptor.
pub(crate) fn execute(sh: &Shared, job: &Job) {
    if process(sh, job, &job.desc, None).is_none() {
        sh.counters.abandoned.fetch_add(1, Ordering::Relaxed);
    }
}

/// Processes a descriptor (top level, or batch element `batch_idx`): validation, the
/// operation, the completion record and the interrupt. Returns the final status, or `None`
/// when the WQ was aborted meanwhile (nothing is written then).
fn process(sh: &Shared, job: &Job, raw: &[u8; 64], batch_idx: Option<u16>) -> Option<u8> {
    let d = Desc::new(raw);
    let crav = d.flags & flag::CRAV != 0;
    let rcr = d.flags & flag::RCR != 0;
    let rci = d.flags & flag::RCI != 0;
    let cr_addr = d.u64(desc::COMPLETION_ADDR);
    let swerr = |code: u8, o: &Outcome| {
        sh.report_swerr(SwError {
            code,
            wq: Some(job.wq),
            opcode: Some(d.opcode),
            batch_idx,
            privileged: job.limits.privileged,
            write_fault: o.write_fault,
            fault_addr: o.fault_addr,
            invalid_flags: if code == status::INVALID_FLAGS {
                o.op_specific
            } else {
                0
            },
        })
    };
    if crav && !cr_addr.is_multiple_of(record::ALIGN) {
        swerr(
            status::CRA_ALIGN,
            &Outcome {
                fault_addr: cr_addr,
                ..Default::default()
            },
        );
        return Some(status::CRA_ALIGN);
    }
    let outcome = match validate(sh, job, &d, batch_idx.is_some()) {
        Err(o) => o,
        Ok(()) => run(sh, job, &d)?,
    };
    if sh.aborted(job) {
        return None;
    }
    let st = outcome.status;
    let ok = matches!(st, status::SUCCESS | status::SUCCESS_PRED);
    if crav && (rcr || !ok) {
        if !write_record(sh, cr_addr, &outcome) {
            swerr(
                status::CRA_XLAT,
                &Outcome {
                    fault_addr: cr_addr,
                    write_fault: true,
                    ..Default::default()
                },
            );
        }
    } else if !ok {
        swerr(st, &outcome);
    }
    if rci && st != status::INT_HANDLE_INVAL {
        sh.completion_interrupt(job.portal, d.int_handle());
    }
    sh.counters.completed.fetch_add(1, Ordering::Relaxed);
    Some(st)
}

/// Checks opcode, flags, reserved fields and the interrupt handle.
fn validate(sh: &Shared, job: &Job, d: &Desc, in_batch: bool) -> Result<(), Outcome> {
    let op = d.opcode;
    let supported = matches!(
        op,
        opcode::NOOP
            | opcode::BATCH
            | opcode::DRAIN
            | opcode::MEMMOVE
            | opcode::MEMFILL
            | opcode::COMPARE
            | opcode::COMPVAL
            | opcode::DUALCAST
            | opcode::CRCGEN
            | opcode::COPY_CRC
    );
    if !supported || (in_batch && matches!(op, opcode::BATCH | opcode::DRAIN)) {
        return Err(Outcome::status(status::BAD_OPCODE));
    }
    let mut allowed = flag::COMMON;
    match op {
        opcode::COMPARE | opcode::COMPVAL => allowed |= flag::CHECK_RESULT,
        opcode::CRCGEN | opcode::COPY_CRC => allowed |= flag::READ_CRC_SEED,
        _ => {}
    }
    let mut invalid = d.flags & !allowed;
    if d.flags & flag::RCR != 0 && d.flags & flag::CRAV == 0 {
        invalid |= flag::RCR;
    }
    if invalid != 0 {
        return Err(Outcome {
            status: status::INVALID_FLAGS,
            op_specific: invalid,
            ..Default::default()
        });
    }
    let reserved_ok = d.zero(desc::RSVD1..desc::RSVD1 + 2)
        && match op {
            opcode::NOOP | opcode::DRAIN => {
                d.zero(desc::SRC..desc::INT_HANDLE) && d.zero(desc::OP_SPECIFIC..64)
            }
            opcode::BATCH => d.zero(desc::DST..desc::SIZE_FIELD) && d.zero(desc::OP_SPECIFIC..64),
            opcode::MEMMOVE | opcode::MEMFILL => d.zero(desc::OP_SPECIFIC..64),
            opcode::COMPARE | opcode::COMPVAL => d.zero(desc::EXPECTED_RES + 1..64),
            opcode::DUALCAST => d.zero(desc::DEST2 + 8..64),
            opcode::CRCGEN => {
                d.zero(desc::DST..desc::SIZE_FIELD)
                    && d.zero(desc::CRC_SEED + 4..desc::CRC_SEED_ADDR)
                    && d.zero(desc::CRC_SEED_ADDR + 8..64)
            }
            _ => {
                d.zero(desc::CRC_SEED + 4..desc::CRC_SEED_ADDR)
                    && d.zero(desc::CRC_SEED_ADDR + 8..64)
            }
        };
    if !reserved_ok {
        return Err(Outcome::status(status::NONZERO_RESERVED));
    }
    if d.flags & flag::RCI != 0 && !sh.int_handle_valid(job.portal, d.int_handle()) {
        return Err(Outcome::status(status::INT_HANDLE_INVAL));
    }
    Ok(())
}

/// Runs a validated operation. `None`: aborted.
fn run(sh: &Shared, job: &Job, d: &Desc) -> Option<Outcome> {
    let size = u64::from(d.u32(desc::SIZE_FIELD));
    let src = d.u64(desc::SRC);
    let dst = d.u64(desc::DST);
    let sized = |f: &dyn Fn() -> Option<Outcome>| {
        if size == 0 || size > job.limits.max_xfer {
            Some(Outcome::status(status::XFER_ERANGE))
        } else {
            f()
        }
    };
    match d.opcode {
        opcode::NOOP | opcode::DRAIN => Some(Outcome::status(status::SUCCESS)),
        opcode::BATCH => run_batch(sh, job, d),
        opcode::MEMMOVE => sized(&|| memmove(sh, job, src, dst, size)),
        opcode::MEMFILL => sized(&|| memfill(sh, job, src.to_le_bytes(), dst, size)),
        opcode::COMPARE => sized(&|| {
            let o = compare(sh, job, Source::Mem(src), dst, size)?;
            Some(check_result(d, o))
        }),
        opcode::COMPVAL => sized(&|| {
            let o = compare(sh, job, Source::Pattern(src.to_le_bytes()), dst, size)?;
            Some(check_result(d, o))
        }),
        opcode::DUALCAST => sized(&|| {
            let dst2 = d.u64(desc::DEST2);
            if dst & 0xfff != dst2 & 0xfff {
                return Some(Outcome::status(status::DUALCAST));
            }
            if overlaps(src, dst, size) || overlaps(src, dst2, size) || overlaps(dst, dst2, size) {
                return Some(Outcome::status(status::OVERLAP));
            }
            copy_forward(sh, job, src, &[dst, dst2], size, None)
        }),
        opcode::CRCGEN | opcode::COPY_CRC => sized(&|| {
            let seed = if d.flags & flag::READ_CRC_SEED != 0 {
                let a = d.u64(desc::CRC_SEED_ADDR);
                if accessible(&sh.mem, a, 4) < 4 {
                    return Some(Outcome::fault(a, false, 0));
                }
                match sh.mem.read_obj::<u32>(GuestAddress(a)) {
                    Ok(v) => v,
                    Err(_) => return Some(Outcome::fault(a, false, 0)),
                }
            } else {
                d.u32(desc::CRC_SEED)
            };
            let mut crc = Crc32c::new(seed);
            let mut o = if d.opcode == opcode::COPY_CRC {
                if overlaps(src, dst, size) {
                    return Some(Outcome::status(status::OVERLAP));
                }
                copy_forward(sh, job, src, &[dst], size, Some(&mut crc))?
            } else {
                copy_forward(sh, job, src, &[], size, Some(&mut crc))?
            };
            o.op_specific = crc.value();
            Some(o)
        }),
        _ => Some(Outcome::status(status::BAD_OPCODE)),
    }
}

fn check_result(d: &Desc, mut o: Outcome) -> Outcome {
    if o.status == status::SUCCESS
        && d.flags & flag::CHECK_RESULT != 0
        && o.result != d.raw[desc::EXPECTED_RES] & 1
    {
        o.status = status::SUCCESS_PRED;
    }
    o
}

fn overlaps(a: u64, b: u64, len: u64) -> bool {
    let (a, b) = (u128::from(a), u128::from(b));
    let len = u128::from(len);
    a < b + len && b < a + len
}

fn run_batch(sh: &Shared, job: &Job, d: &Desc) -> Option<Outcome> {
    let list = d.u64(desc::SRC);
    let count = d.u32(desc::SIZE_FIELD);
    if count < 2 || count > job.limits.max_batch {
        return Some(Outcome::status(status::DESC_CNT_ERANGE));
    }
    if !list.is_multiple_of(64) {
        return Some(Outcome::status(status::DESCLIST_ALIGN));
    }
    let mut failed = false;
    for i in 0..count {
        if !sh.step(job) {
            return None;
        }
        let addr = list.wrapping_add(u64::from(i) * 64);
        let mut raw = [0u8; 64];
        if avail(&sh.mem, list, u64::from(i) * 64, 64) < 64
            || sh.mem.read_slice(&mut raw, GuestAddress(addr)).is_err()
        {
            return Some(Outcome {
                status: status::BATCH_PAGE_FAULT,
                fault_addr: addr,
                completed: i,
                ..Default::default()
            });
        }
        let sub = Desc::new(&raw);
        if failed && sub.flags & flag::FENCE != 0 {
            return Some(Outcome {
                status: status::BATCH_FAIL,
                completed: i,
                ..Default::default()
            });
        }
        let st = process(sh, job, &raw, Some(i as u16))?;
        failed |= st != status::SUCCESS;
    }
    Some(Outcome {
        status: if failed {
            status::BATCH_FAIL
        } else {
            status::SUCCESS
        },
        completed: count,
        ..Default::default()
    })
}

/// Writes the completion record, status byte last. False if the record is not in RAM.
fn write_record(sh: &Shared, addr: u64, o: &Outcome) -> bool {
    if accessible(&sh.mem, addr, record::SIZE as u64) < record::SIZE as u64 {
        return false;
    }
    let mut rec = [0u8; record::SIZE];
    rec[0] = o.status
        | if o.write_fault {
            record::STATUS_WRITE_FAULT
        } else {
            0
        };
    rec[record::RESULT] = o.result;
    rec[record::BYTES_COMPLETED..record::BYTES_COMPLETED + 4]
        .copy_from_slice(&o.completed.to_le_bytes());
    rec[record::FAULT_ADDR..record::FAULT_ADDR + 8].copy_from_slice(&o.fault_addr.to_le_bytes());
    rec[record::OP_SPECIFIC..record::OP_SPECIFIC + 4].copy_from_slice(&o.op_specific.to_le_bytes());
    if sh
        .mem
        .write_slice(&rec[1..], GuestAddress(addr + 1))
        .is_err()
    {
        return false;
    }
    fence(Ordering::Release);
    sh.mem.write_slice(&rec[..1], GuestAddress(addr)).is_ok()
}

/// Copies `size` bytes from `src` to every destination (none for CRC generation), feeding
/// the CRC if given, in ascending order.
fn copy_forward(
    sh: &Shared,
    job: &Job,
    src: u64,
    dsts: &[u64],
    size: u64,
    mut crc: Option<&mut Crc32c>,
) -> Option<Outcome> {
    let mut buf = vec![0u8; CHUNK.min(size as usize)];
    let mut done = 0u64;
    while done < size {
        if !sh.step(job) {
            return None;
        }
        let n = (size - done).min(CHUNK as u64);
        let s = src.wrapping_add(done);
        let mut m = avail(&sh.mem, src, done, n);
        let mut write_limit = None;
        for &d in dsts {
            let w = avail(&sh.mem, d, done, n);
            if w < m {
                m = w;
                write_limit = Some(d);
            }
        }
        let chunk = &mut buf[..m as usize];
        if m > 0 {
            if sh.mem.read_slice(chunk, GuestAddress(s)).is_err() {
                return Some(Outcome::fault(s, false, done));
            }
            for &d in dsts {
                if sh.mem.write_slice(chunk, GuestAddress(d + done)).is_err() {
                    return Some(Outcome::fault(d.wrapping_add(done), true, done));
                }
            }
            if let Some(c) = crc.as_deref_mut() {
                c.update(chunk);
            }
        }
        done += m;
        if m < n {
            return Some(match write_limit {
                Some(d) => Outcome::fault(d.wrapping_add(done), true, done),
                None => Outcome::fault(src.wrapping_add(done), false, done),
            });
        }
    }
    Some(Outcome::status(status::SUCCESS))
}

/// MEMMOVE: overlapping buffers are copied in the direction that preserves the source;
/// a fault during a descending copy reports result 1 and the bytes done from the top.
fn memmove(sh: &Shared, job: &Job, src: u64, dst: u64, size: u64) -> Option<Outcome> {
    if !(overlaps(src, dst, size) && dst > src) {
        return copy_forward(sh, job, src, &[dst], size, None);
    }
    let mut buf = vec![0u8; CHUNK.min(size as usize)];
    let mut done = 0u64;
    while done < size {
        if !sh.step(job) {
            return None;
        }
        let n = (size - done).min(CHUNK as u64);
        let off = size - done - n;
        let (s, d) = (src.wrapping_add(off), dst.wrapping_add(off));
        let (rs, rd) = (avail(&sh.mem, src, off, n), avail(&sh.mem, dst, off, n));
        let fault = if rs < n {
            Some((s.wrapping_add(rs), false))
        } else if rd < n {
            Some((d.wrapping_add(rd), true))
        } else {
            None
        };
        let chunk = &mut buf[..n as usize];
        let failed = fault.or_else(|| {
            if sh.mem.read_slice(chunk, GuestAddress(s)).is_err() {
                Some((s, false))
            } else if sh.mem.write_slice(chunk, GuestAddress(d)).is_err() {
                Some((d, true))
            } else {
                None
            }
        });
        if let Some((addr, write)) = failed {
            let mut o = Outcome::fault(addr, write, done);
            o.result = 1;
            return Some(o);
        }
        done += n;
    }
    Some(Outcome::status(status::SUCCESS))
}

fn memfill(sh: &Shared, job: &Job, pattern: [u8; 8], dst: u64, size: u64) -> Option<Outcome> {
    let len = CHUNK.min(size as usize);
    let buf: Vec<u8> = (0..len).map(|i| pattern[i % 8]).collect();
    let mut done = 0u64;
    while done < size {
        if !sh.step(job) {
            return None;
        }
        // CHUNK is a multiple of 8, so every chunk starts at pattern byte 0.
        let n = (size - done).min(CHUNK as u64);
        let d = dst.wrapping_add(done);
        let m = avail(&sh.mem, dst, done, n);
        if m > 0
            && sh
                .mem
                .write_slice(&buf[..m as usize], GuestAddress(d))
                .is_err()
        {
            return Some(Outcome::fault(d, true, done));
        }
        done += m;
        if m < n {
            return Some(Outcome::fault(dst.wrapping_add(done), true, done));
        }
    }
    Some(Outcome::status(status::SUCCESS))
}

enum Source {
    Mem(u64),
    Pattern([u8; 8]),
}

/// COMPARE / COMPARE PATTERN: result 0 if equal; otherwise result 1 and bytes completed
/// = offset of the first difference.
fn compare(sh: &Shared, job: &Job, a: Source, b: u64, size: u64) -> Option<Outcome> {
    let len = CHUNK.min(size as usize);
    let mut buf_a = vec![0u8; len];
    let mut buf_b = vec![0u8; len];
    if let Source::Pattern(p) = a {
        for (i, x) in buf_a.iter_mut().enumerate() {
            *x = p[i % 8];
        }
    }
    let mut done = 0u64;
    while done < size {
        if !sh.step(job) {
            return None;
        }
        let n = (size - done).min(CHUNK as u64);
        let mut m = n;
        let mut fault = None;
        if let Source::Mem(s) = a {
            let r = avail(&sh.mem, s, done, n);
            if r < m {
                m = r;
                fault = Some(s.wrapping_add(done).wrapping_add(r));
            }
        }
        let sb = b.wrapping_add(done);
        let r = avail(&sh.mem, b, done, n);
        if r < m {
            m = r;
            fault = Some(sb.wrapping_add(r));
        }
        let (ca, cb) = (&mut buf_a[..m as usize], &mut buf_b[..m as usize]);
        if m > 0 {
            if let Source::Mem(s) = a {
                if sh.mem.read_slice(ca, GuestAddress(s + done)).is_err() {
                    return Some(Outcome::fault(s + done, false, done));
                }
            }
            if sh.mem.read_slice(cb, GuestAddress(sb)).is_err() {
                return Some(Outcome::fault(sb, false, done));
            }
            if let Some(i) = ca.iter().zip(cb.iter()).position(|(x, y)| x != y) {
                return Some(Outcome {
                    status: status::SUCCESS,
                    result: 1,
                    completed: (done + i as u64) as u32,
                    ..Default::default()
                });
            }
        }
        done += m;
        if let Some(addr) = fault {
            return Some(Outcome::fault(addr, false, done));
        }
    }
    Some(Outcome::status(status::SUCCESS))
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) as DSA computes it with default
/// flags: the register starts at `!seed` and the result is inverted, so seed 0 gives the
/// standard CRC-32C and a previous result as seed continues a computation. This is the
/// `crc32c` crate's append convention; the crate uses SSE4.2 (or the Arm CRC extension)
/// when the host has it.
pub(crate) struct Crc32c(u32);

impl Crc32c {
    /// Starts a computation from `seed`.
    pub(crate) fn new(seed: u32) -> Self {
        Self(seed)
    }
    /// Feeds bytes.
    pub(crate) fn update(&mut self, data: &[u8]) {
        self.0 = crc32c::crc32c_append(self.0, data);
    }
    /// The CRC of the bytes fed so far.
    pub(crate) fn value(&self) -> u32 {
        self.0
    }
}
