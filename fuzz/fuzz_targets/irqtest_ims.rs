//! Fuzzes the `irqtest` device's IMS table (BAR4) and its IMS registers: BAR4 reads and
//! writes of any size and offset, structured entry programming, IMS_FIRE and SELECT
//! commands of any value, and doorbell (BAR1) writes and reads of any size and offset, on a
//! `RecordingBackend` with a small GSI limit (so entries past the routes take the
//! `KVM_SIGNAL_MSI` slow path), without KVM.
//!
//! After every operation it checks invariants that hold for any guest input:
//! - the vector layer's books balance (`Recording::check_books`);
//! - each IMS vector's mask equals the entry's mask bit, and its message the entry's
//!   address (bits 1:0 clear) and data once written;
//! - the control dword's pending bit is exactly the domain's pending bit, and only masked
//!   entries are pending;
//! - a delivered IMS interrupt went out with the entry's message (committed route or
//!   `KVM_SIGNAL_MSI`); deliveries + drops never exceed fires;
//! - accesses that are not 4 or 8 bytes, naturally aligned, inside the table read zero;
//! - the doorbells read zero, and a doorbell write fires nothing but MSI-X (off here: it is
//!   refused, counted in REJECTED, when it is aligned).
//!
//! When the device goes away, no vector, route or irqfd is left.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

use devices::irqtest::{
    ims, regs, IrqTest, DOORBELL_STRIDE, IRQTEST_DOORBELL_BAR, IRQTEST_IMS_BAR, SELECT_IMS,
};
use interrupt::{MsiMessage, RequesterId};
use pci::PciDevice;
use vmm_fuzz::{le_bytes, Recording, Size};

const RESERVED: u32 = 24;

#[derive(Arbitrary, Debug)]
enum Op {
    /// Raw BAR4 write.
    Write { offset: u64, size: Size, value: u64 },
    /// Raw BAR4 read (anything that is not a whole, aligned access must read zero).
    Read { offset: u64, size: Size },
    /// An entry programmed the way a driver does it (optionally with one 64-bit address
    /// write, optionally unmasking last).
    Program {
        index: u16,
        address: u64,
        data: u32,
        ctrl: u32,
        wide: bool,
    },
    Fire(u32),
    /// Raw BAR1 (doorbell) write, then a read of the same place.
    Doorbell { offset: u64, size: Size, value: u64 },
    Select(u32),
    ReadRegs,
}

#[derive(Arbitrary, Debug)]
struct Input {
    entries: u16,
    gsis: u8,
    ops: Vec<Op>,
}

fn r32(d: &mut IrqTest, bar: usize, off: u64) -> u32 {
    let mut b = [0u8; 4];
    d.bar_read(bar, off, &mut b);
    u32::from_le_bytes(b)
}

fuzz_target!(|input: Input| {
    let n = usize::from(input.entries % 600) + 1;
    let rec = Recording::no_remap(RESERVED, RESERVED + u32::from(input.gsis % 32));
    let mut dev = IrqTest::with_ims(&rec.hierarchy, RequesterId::pci(0, 3, 0), 1, n)
        .expect("valid irqtest");
    dev.enable_doorbells(std::sync::Arc::new(pci::NoIoEvents))
        .expect("doorbells");
    let domain = dev.ims().expect("IMS table").domain().clone();
    let bar_size = devices::irqtest::ImsTable::bar_size(n);
    let mut written = vec![false; n];
    for op in input.ops.iter().take(256) {
        let before = domain.snapshot();
        let signalled_before = rec.signalled();
        match op {
            Op::Write {
                offset,
                size,
                value,
            } => {
                let bytes = le_bytes(*value, *size, 16);
                let off = offset % (bar_size + 64);
                dev.bar_write(IRQTEST_IMS_BAR, off, &bytes);
                let i = (off / ims::ENTRY_SIZE) as usize;
                if matches!(bytes.len(), 4 | 8)
                    && off.is_multiple_of(bytes.len() as u64)
                    && i < n
                    && off % ims::ENTRY_SIZE < ims::CTRL
                {
                    written[i] = true;
                }
            }
            Op::Read { offset, size } => {
                let len = size.len(16);
                let off = offset % (bar_size + 64);
                let mut b = vec![0xa5u8; len];
                dev.bar_read(IRQTEST_IMS_BAR, off, &mut b);
                let whole = matches!(len, 4 | 8)
                    && off.is_multiple_of(len as u64)
                    && ((off / ims::ENTRY_SIZE) as usize) < n;
                if !whole {
                    assert!(b.iter().all(|&x| x == 0), "{off:#x}/{len}: {b:?}");
                }
            }
            Op::Program {
                index,
                address,
                data,
                ctrl,
                wide,
            } => {
                let i = usize::from(*index) % n;
                let base = i as u64 * ims::ENTRY_SIZE;
                if *wide {
                    dev.bar_write(IRQTEST_IMS_BAR, base, &address.to_le_bytes());
                } else {
                    dev.bar_write(IRQTEST_IMS_BAR, base, &(*address as u32).to_le_bytes());
                    let hi = (*address >> 32) as u32;
                    dev.bar_write(IRQTEST_IMS_BAR, base + 4, &hi.to_le_bytes());
                }
                dev.bar_write(IRQTEST_IMS_BAR, base + 8, &data.to_le_bytes());
                dev.bar_write(IRQTEST_IMS_BAR, base + ims::CTRL, &ctrl.to_le_bytes());
                written[i] = true;
            }
            Op::Fire(v) => dev.bar_write(0, regs::IMS_FIRE, &v.to_le_bytes()),
            Op::Doorbell {
                offset,
                size,
                value,
            } => {
                let bytes = le_bytes(*value, *size, 16);
                let off = offset % 0x1040;
                let rejected = r32(&mut dev, 0, regs::REJECTED);
                dev.bar_write(IRQTEST_DOORBELL_BAR, off, &bytes);
                let counted = u32::from(off.is_multiple_of(DOORBELL_STRIDE));
                assert_eq!(
                    r32(&mut dev, 0, regs::REJECTED),
                    rejected.wrapping_add(counted),
                    "doorbell write at {off:#x} with MSI-X off"
                );
                let mut back = vec![0xAAu8; bytes.len()];
                dev.bar_read(IRQTEST_DOORBELL_BAR, off, &mut back);
                assert!(back.iter().all(|&b| b == 0), "doorbells read zero");
            }
            Op::Select(v) => {
                dev.bar_write(0, regs::SELECT, &(v | SELECT_IMS).to_le_bytes());
                let i = (v & 0xffff) as usize;
                let fires = r32(&mut dev, 0, regs::FIRES);
                let want = domain.vector_snapshot(i).map_or(0, |s| s.fires as u32);
                assert_eq!(fires, want, "FIRES of IMS entry {i}");
            }
            Op::ReadRegs => {
                assert_eq!(r32(&mut dev, 0, regs::IMS_ENTRIES) as usize, n);
            }
        }

        rec.check_books(std::slice::from_ref(&domain));
        let committed = rec.backend.committed.lock().unwrap().clone();
        let signalled = rec.backend.signalled.lock().unwrap().clone();
        let after = domain.snapshot();
        for (i, s) in after.iter().enumerate() {
            let base = i as u64 * ims::ENTRY_SIZE;
            let ctrl = r32(&mut dev, IRQTEST_IMS_BAR, base + ims::CTRL);
            assert_eq!(ctrl & !(ims::CTRL_MASK | ims::CTRL_PENDING), 0);
            assert_eq!(s.masked, ctrl & ims::CTRL_MASK != 0, "entry {i} mask");
            assert_eq!(
                s.pending,
                ctrl & ims::CTRL_PENDING != 0,
                "entry {i} pending"
            );
            assert!(!s.pending || s.masked, "entry {i} pending while unmasked");
            let lo = r32(&mut dev, IRQTEST_IMS_BAR, base);
            let hi = r32(&mut dev, IRQTEST_IMS_BAR, base + 4);
            let data = r32(&mut dev, IRQTEST_IMS_BAR, base + 8);
            assert_eq!(lo & 3, 0);
            let entry = MsiMessage::new(lo, hi, data);
            if written[i] {
                assert_eq!(s.message, Some(entry), "entry {i} message");
            }
            let delivered = s.deliveries - before[i].deliveries;
            if delivered > 0 {
                assert!(!s.masked, "entry {i} delivered while masked");
                let m = entry.kvm_format();
                match s.gsi {
                    Some(g) => assert!(
                        committed.iter().any(|&(cg, cm)| cg == g && cm == m),
                        "entry {i}: delivered on GSI {g} without its route {m:?}"
                    ),
                    None => assert!(
                        signalled[signalled_before..].contains(&m),
                        "entry {i}: slow-path delivery without its message"
                    ),
                }
            }
        }
    }
    drop(dev);
    drop(domain);
    rec.check_released();
});
