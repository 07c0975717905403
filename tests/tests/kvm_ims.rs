//! KVM integration tier for IMS: the DSA model (`devices::dsa::Dsa`) with its Interrupt
//! Message Store as an IMS domain of the hierarchy, its completions delivered through real KVM
//! routes to the real-mode guest of `common/`.
//!
//! The device is driven through its registers as Linux's `idxd` driver does: bus master on,
//! one dedicated WQ configured in group 0, Enable Device, Enable WQ; IMS entries written in
//! BAR0's IMS table; NOOP descriptors with a completion record and a completion interrupt
//! (RCI) submitted through a WQ portal in BAR2; `Dsa::wait_idle` waits for completion.
//!
//! The `irqtest` device's own IMS table (`--device irqtest,ims=N`) is driven the same way,
//! beyond MSI-X's 2048-entry limit and KVM's 4096 routes.
//!
//! `VMM_SKIP_KVM_TESTS=1` reports every test as ignored.

mod common;

use std::sync::Arc;
use std::time::Instant;

use common::{irte, KvmGuest, VcpuHooks, VtdDriver, IOAPIC_PINS};
use devices::dsa::spec::{cmd, desc, flag, gensts, ims, opcode, portal, reg, status, Command};
use devices::dsa::WQCFG_OFFSET;
use devices::dsa::{Dsa, DsaConfig, DsaStats, GRPCFG_OFFSET, IMS_OFFSET, MSIX_TABLE_OFFSET};
use devices::irqtest::{ims as irqtest_ims, regs as irqtest_regs, IrqTest, IRQTEST_IMS_BAR};
use interrupt::{InterruptHierarchy, MsiMessage, RemapOutcome, RequesterId};
use pci::config::{command as pci_command, reg as pci_reg};
use pci::msix::{control as msix_control, MSIX_CAP_ID};
use pci::PciDevice;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// The DSA's PCI function, 00:04.0.
const DSA_BDF: RequesterId = RequesterId(0x20);
/// Guest-physical address of the completion record (32-byte aligned, above the guest).
const RECORD: u64 = 0x4_0000;
/// Offset of WQ 0's unlimited MSI-X portal in BAR2.
const MSIX_PORTAL: u64 = 0;
/// Offset of WQ 0's unlimited IMS portal in BAR2.
const IMS_PORTAL: u64 = 2 * portal::PAGE;

fn done(test: &str, start: Instant) {
    eprintln!("{test}: {:.3} s", start.elapsed().as_secs_f64());
}

/// The device plus the guest memory its descriptors write to.
struct Rig {
    dev: Dsa,
    mem: GuestMemoryMmap,
}

impl Rig {
    /// A DSA (default shape: 4 WQs, 4 engines, 256 IMS entries) at 00:04.0 on `h`, with
    /// WQ 0 enabled as Linux's idxd sets up a dedicated kernel WQ.
    fn new(g: &KvmGuest, h: &Arc<InterruptHierarchy>) -> Self {
        let dev =
            Dsa::new(h, DSA_BDF, g.mem().clone(), DsaConfig::default()).expect("creating the DSA");
        let mut rig = Self {
            dev,
            mem: g.mem().clone(),
        };
        let command = pci_command::MEMORY | pci_command::BUS_MASTER;
        rig.dev
            .write_config(pci_reg::COMMAND, &command.to_le_bytes());
        // WQCFG[0]: size 16; dedicated, priority 10, privileged; max transfer 2^21, batch
        // 2^5. GRPCFG[0]: WQ 0, engine 0, read buffers allowed.
        rig.w32(WQCFG_OFFSET, 16);
        rig.w32(WQCFG_OFFSET + 8, (1 << 0) | (10 << 4) | (1 << 29));
        rig.w32(WQCFG_OFFSET + 12, 21 | (5 << 5));
        rig.w64(GRPCFG_OFFSET, 1);
        rig.w64(GRPCFG_OFFSET + 32, 1);
        rig.w64(GRPCFG_OFFSET + 40, 0x9 | (64 << 20));
        assert_eq!(rig.command(Command::EnableDevice, 0), 0, "Enable Device");
        assert_eq!(rig.command(Command::EnableWq, 0), 0, "Enable WQ 0");
        assert_eq!(rig.r32(reg::GENSTS), gensts::ENABLED);
        rig
    }

    fn r32(&mut self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.dev.bar_read(0, off, &mut b);
        u32::from_le_bytes(b)
    }

    fn r64(&mut self, off: u64) -> u64 {
        let mut b = [0u8; 8];
        self.dev.bar_read(0, off, &mut b);
        u64::from_le_bytes(b)
    }

    fn w32(&mut self, off: u64, v: u32) {
        self.dev.bar_write(0, off, &v.to_le_bytes());
    }

    fn w64(&mut self, off: u64, v: u64) {
        self.dev.bar_write(0, off, &v.to_le_bytes());
    }

    /// Runs a command without a completion interrupt; returns CMDSTS.
    fn command(&mut self, c: Command, operand: u32) -> u32 {
        self.w32(reg::CMD, ((c as u32) << cmd::CODE_SHIFT) | operand);
        self.r32(reg::CMDSTS)
    }

    /// Writes IMS entry `i`: message (one 64-bit address write, then data), then control.
    fn program_ims(&mut self, i: u64, m: MsiMessage, masked: bool) {
        let base = IMS_OFFSET + i * ims::ENTRY_SIZE;
        self.w64(base, m.address);
        self.w32(base + 8, m.data);
        self.set_ims_masked(i, masked);
    }

    fn set_ims_masked(&mut self, i: u64, masked: bool) {
        let ctrl = if masked { ims::CTRL_MASK } else { 0 };
        self.w32(IMS_OFFSET + i * ims::ENTRY_SIZE + 12, ctrl);
    }

    fn ims_ctrl(&mut self, i: u64) -> u32 {
        self.r32(IMS_OFFSET + i * ims::ENTRY_SIZE + 12)
    }

    /// Submits a NOOP with a completion record (and a completion interrupt through
    /// `handle` when `rci`) at BAR2 `portal_offset` as one 64-byte write, waits until the
    /// device is idle, and checks the record says success.
    fn noop(&mut self, portal_offset: u64, handle: u16, rci: bool) {
        self.mem
            .write_slice(&[0u8; 32], GuestAddress(RECORD))
            .unwrap();
        let flags = flag::CRAV | flag::RCR | if rci { flag::RCI } else { 0 };
        let mut d = [0u8; desc::SIZE];
        let word = flags | (u32::from(opcode::NOOP) << 24);
        d[desc::FLAGS_OPCODE..desc::FLAGS_OPCODE + 4].copy_from_slice(&word.to_le_bytes());
        d[desc::COMPLETION_ADDR..desc::COMPLETION_ADDR + 8].copy_from_slice(&RECORD.to_le_bytes());
        d[desc::INT_HANDLE..desc::INT_HANDLE + 2].copy_from_slice(&handle.to_le_bytes());
        self.dev.bar_write(2, portal_offset, &d);
        self.dev.wait_idle();
        let st: u8 = self.mem.read_obj(GuestAddress(RECORD)).unwrap();
        assert_eq!(st, status::SUCCESS, "completion record status");
    }

    fn ims_snapshot(&self, i: usize) -> interrupt::VectorSnapshot {
        self.dev.ims_domain().unwrap().vector_snapshot(i).unwrap()
    }

    /// Offset of the MSI-X capability in configuration space.
    fn msix_cap(&self) -> usize {
        let c = self.dev.config();
        let mut at = usize::from(c.u16_at(pci_reg::CAPABILITIES) as u8);
        while at != 0 {
            let header = c.u16_at(at);
            if header as u8 == MSIX_CAP_ID {
                return at;
            }
            at = usize::from((header >> 8) as u8);
        }
        panic!("the DSA has no MSI-X capability");
    }
}

/// Fixed, edge, physical destination APIC 0.
fn msg(vector: u8) -> MsiMessage {
    MsiMessage::compose(0, false, vector, 0, false)
}

fn assert_stats(rig: &Rig, submitted: u64, completed: u64) {
    let s = rig.dev.stats();
    assert_eq!(
        s,
        DsaStats {
            submitted,
            completed,
            ..Default::default()
        }
    );
}

/// 1. A guest-managed IMS entry (3 -> vector 0x50): 20 NOOPs with RCI through WQ 0's IMS
///    portal give exactly 20 interrupts on 0x50, one per completion; a NOOP without RCI
///    gives none. Nothing goes through the MSI-X vectors.
fn ims_entry_delivers_one_interrupt_per_completion() {
    const TEST: &str = "ims_entry_delivers_one_interrupt_per_completion";
    const N: u64 = 20;
    let t = Instant::now();
    let mut g = KvmGuest::new();
    g.start(VcpuHooks::default());
    let h = g.hierarchy(IOAPIC_PINS, 4096);
    let mut rig = Rig::new(&g, &h);
    rig.program_ims(3, msg(0x50), false);
    assert_eq!(rig.r64(IMS_OFFSET + 3 * 16), 0xFEE0_0000);
    assert_eq!(
        (rig.r32(IMS_OFFSET + 3 * 16 + 8), rig.ims_ctrl(3)),
        (msg(0x50).data, 0)
    );
    for i in 1..=N {
        rig.noop(IMS_PORTAL, 3, true);
        g.wait_count(0x50, i);
    }
    g.assert_counts(&[(0x50, N)]);
    rig.noop(IMS_PORTAL, 3, false);
    g.assert_counts(&[(0x50, N)]);
    let s = rig.ims_snapshot(3);
    assert_eq!((s.fires, s.deliveries, s.dropped), (N, N, 0), "{s:?}");
    assert!(s.gsi.is_some(), "IMS entries deliver through a KVM route");
    assert!(rig
        .dev
        .msix_domain()
        .snapshot()
        .iter()
        .all(|v| v.fires == 0));
    assert_stats(&rig, N + 1, N + 1);
    assert_eq!(h.vector_layer().stats().slow_path_signals, 0);
    done(TEST, t);
}

/// 2. A masked IMS entry (5 -> 0x51) holds completions: three give no interrupt and set
///    the entry's pending bit; unmasking delivers exactly one; the next completion one more.
fn masked_ims_entry_delivers_once_on_unmask() {
    const TEST: &str = "masked_ims_entry_delivers_once_on_unmask";
    let t = Instant::now();
    let mut g = KvmGuest::new();
    g.start(VcpuHooks::default());
    let h = g.hierarchy(IOAPIC_PINS, 4096);
    let mut rig = Rig::new(&g, &h);
    rig.program_ims(5, msg(0x51), true);
    for _ in 0..3 {
        rig.noop(IMS_PORTAL, 5, true);
    }
    g.assert_counts(&[]);
    assert_eq!(rig.ims_ctrl(5), ims::CTRL_MASK | ims::CTRL_PENDING);
    let s = rig.ims_snapshot(5);
    assert_eq!((s.fires, s.deliveries, s.pending), (3, 0, true), "{s:?}");

    rig.set_ims_masked(5, false);
    g.wait_count(0x51, 1);
    g.assert_counts(&[(0x51, 1)]);
    assert_eq!(rig.ims_ctrl(5), 0);
    rig.noop(IMS_PORTAL, 5, true);
    g.wait_count(0x51, 2);
    g.assert_counts(&[(0x51, 2)]);
    let s = rig.ims_snapshot(5);
    assert_eq!((s.fires, s.deliveries, s.pending), (4, 2, false), "{s:?}");
    assert_stats(&rig, 4, 4);
    done(TEST, t);
}

/// 3. Linux's idxd flow with IMS: Request Interrupt Handle for MSI-X vector 1 (-> 0x52)
///    yields a device-backed IMS entry; a NOOP on the MSI-X portal naming the handle
///    interrupts on 0x52 through that IMS entry; retargeting the MSI-X entry to 0x53
///    retargets the handle.
fn interrupt_handle_follows_its_msix_entry() {
    const TEST: &str = "interrupt_handle_follows_its_msix_entry";
    let t = Instant::now();
    let mut g = KvmGuest::new();
    g.start(VcpuHooks::default());
    let h = g.hierarchy(IOAPIC_PINS, 4096);
    let mut rig = Rig::new(&g, &h);
    let cap = rig.msix_cap();
    rig.dev
        .write_config(cap + 2, &msix_control::ENABLE.to_le_bytes());
    let entry1 = MSIX_TABLE_OFFSET + 16;
    rig.w64(entry1, 0xFEE0_0000);
    rig.w32(entry1 + 8, 0x52);
    rig.w32(entry1 + 12, 0);
    let st = rig.command(Command::RequestIntHandle, 1);
    assert_eq!(st & 0xff, 0, "Request Interrupt Handle: CMDSTS {st:#x}");
    let handle = (st >> 8) as u16;
    assert_eq!(
        rig.ims_snapshot(usize::from(handle)).message,
        Some(MsiMessage::new(0xFEE0_0000, 0, 0x52))
    );
    for i in 1..=5 {
        rig.noop(MSIX_PORTAL, handle, true);
        g.wait_count(0x52, i);
    }
    g.assert_counts(&[(0x52, 5)]);
    rig.w32(entry1 + 8, 0x53);
    rig.noop(MSIX_PORTAL, handle, true);
    g.wait_count(0x53, 1);
    g.assert_counts(&[(0x52, 5), (0x53, 1)]);
    let s = rig.ims_snapshot(usize::from(handle));
    assert_eq!((s.fires, s.deliveries), (6, 6));
    assert_eq!(rig.dev.msix_domain().vector_snapshot(1).unwrap().fires, 0);
    eprintln!("{TEST}: handle {handle}");
    done(TEST, t);
}

/// 4. IMS under interrupt remapping: the IMS entry holds a remappable message for IRTE 60,
///    whose SID is the DSA's; completions arrive on the IRTE's vector (0x54).
fn remapped_ims_entry_delivers_on_the_irte_vector() {
    const TEST: &str = "remapped_ims_entry_delivers_on_the_irte_vector";
    let t = Instant::now();
    let mut g = KvmGuest::new();
    g.start(VcpuHooks::default());
    let mut v = VtdDriver::new(&g);
    v.enable(true, 0x70, 0);
    v.set_irte(60, irte(0x54, 0, DSA_BDF));
    let mut rig = Rig::new(&g, &v.hierarchy);
    rig.program_ims(7, MsiMessage::remappable(60), false);
    let s = rig.ims_snapshot(7);
    assert_eq!(s.remapped, Some(RemapOutcome::Deliver(msg(0x54))), "{s:?}");
    for i in 1..=10 {
        rig.noop(IMS_PORTAL, 7, true);
        g.wait_count(0x54, i);
    }
    g.assert_counts(&[(0x54, 10)]);
    assert_eq!(v.unit.fault_count(), 0);
    done(TEST, t);
}

/// Raises the soft open-file limit to the hard one: every routed vector owns an eventfd.
fn raise_fd_limit() {
    // SAFETY: plain syscalls on a local, initialised struct.
    unsafe {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

/// 5. IMS beyond MSI-X's limit: an irqtest device with 32768 IMS entries (requester
///    00:05.0). Every entry is programmed (64-bit address, data, then control = 0 to
///    unmask: three MMIO writes as a guest does them) with vector `0x30 + i % 192`, then
///    fired once through the device's IMS_FIRE register, 192 entries (distinct vectors, so
///    nothing coalesces in the LAPIC) at a time. All 32768 interrupts arrive exactly once:
///    the first entries unmasked get KVM's routes (4096 minus the 24 IOAPIC pins), the rest
///    go through `KVM_SIGNAL_MSI`, as the domain does when no GSI is left.
fn irqtest_ims_32768_entries_all_delivered() {
    const TEST: &str = "irqtest_ims_32768_entries_all_delivered";
    const N: usize = 32768;
    const VECTORS: usize = 192;
    let t = Instant::now();
    raise_fd_limit();
    let mut g = KvmGuest::new();
    g.start(VcpuHooks::default());
    let h = g.hierarchy(IOAPIC_PINS, 4096);
    let mut dev = IrqTest::with_ims(&h, RequesterId::pci(0, 5, 0), 1, N).expect("irqtest");
    let vector = |i: usize| 0x30 + (i % VECTORS) as u8;

    let t_up = Instant::now();
    for i in 0..N {
        let base = i as u64 * irqtest_ims::ENTRY_SIZE;
        let m = msg(vector(i));
        dev.bar_write(IRQTEST_IMS_BAR, base, &m.address.to_le_bytes());
        dev.bar_write(IRQTEST_IMS_BAR, base + 8, &m.data.to_le_bytes());
        dev.bar_write(
            IRQTEST_IMS_BAR,
            base + irqtest_ims::CTRL,
            &0u32.to_le_bytes(),
        );
    }
    let up = t_up.elapsed();

    let t_fire = Instant::now();
    let mut expected = [0u64; 256];
    for wave in (0..N).step_by(VECTORS) {
        let end = (wave + VECTORS).min(N);
        for i in wave..end {
            dev.bar_write(0, irqtest_regs::IMS_FIRE, &(i as u32).to_le_bytes());
            expected[usize::from(vector(i))] += 1;
        }
        g.wait_until(&format!("IMS entries {wave}..{end}"), |o| {
            (0x30..0x30 + VECTORS).all(|v| o.counts[v] >= expected[v])
        });
    }
    let fired = t_fire.elapsed();

    let want: Vec<(u8, u64)> = (0x30..0x30 + VECTORS)
        .map(|v| (v as u8, expected[v]))
        .collect();
    assert_eq!(want.iter().map(|w| w.1).sum::<u64>(), N as u64);
    g.assert_counts(&want);
    let snap = dev.ims().unwrap().domain().snapshot();
    let bad: Vec<_> = snap
        .iter()
        .filter(|s| (s.fires, s.deliveries, s.dropped) != (1, 1, 0))
        .take(5)
        .collect();
    assert!(
        bad.is_empty(),
        "entries not delivered exactly once: {bad:?}"
    );
    let routed = snap.iter().filter(|s| s.gsi.is_some()).count();
    let stats = h.vector_layer().stats();
    assert_eq!(routed, 4096 - IOAPIC_PINS as usize, "{stats:?}");
    assert_eq!(stats.slow_path_signals, (N - routed) as u64, "{stats:?}");
    let mut b = [0u8; 4];
    dev.bar_read(0, irqtest_regs::REJECTED, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0);
    eprintln!(
        "{TEST}: bring-up {:.1} ms ({:.2} us/entry), {} KVM routes + {} via KVM_SIGNAL_MSI, \
         firing and handling all {N}: {:.1} ms",
        up.as_secs_f64() * 1e3,
        up.as_secs_f64() * 1e6 / N as f64,
        routed,
        stats.slow_path_signals,
        fired.as_secs_f64() * 1e3
    );
    done(TEST, t);
}

tests::test_main!(
    ims_entry_delivers_one_interrupt_per_completion,
    masked_ims_entry_delivers_once_on_unmask,
    interrupt_handle_follows_its_msix_entry,
    remapped_ims_entry_delivers_on_the_irte_vector,
    irqtest_ims_32768_entries_all_delivered,
);
