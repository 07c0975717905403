//! Fuzzes the VT-d interrupt-remapping unit (`interrupt::vtd::VtdUnit`) as the remap layer of
//! an `InterruptHierarchy` on a `RecordingBackend` (no KVM), with 1 MiB of guest RAM (one
//! region, two adjacent regions, or two with a hole) so tables, queues and status addresses
//! often point outside RAM.
//!
//! Operations: register reads/writes of any size (0..=16 bytes) at any offset (known
//! registers with any misalignment, fault recording registers, anywhere in or beyond the
//! page, any u64), raw and Linux-style GCMD commands, IQA/IRTA programming, Linux's enable
//! sequence, descriptor submission (IEC, wait with SW/IF/FN/PD and any status address,
//! context-cache/IOTLB, raw garbage, reserved bits), guest-memory writes (raw bytes,
//! structured or garbage IRTEs), `remap()`/`report_blocked()` with any requester and message
//! format, and device domains (create, drop, set_message, mask/unmask, fire, release) so
//! the hierarchy's re-translation paths run.
//!
//! Invariants checked after every operation:
//! - GSTS holds only RTPS/QIES/IRES/IRTPS/CFIS; GCMD reads 0; VER/CAP/ECAP never change;
//!   FSTS has no reserved/never-set bits, FRI < number of fault records, PPF is the OR of
//!   the records' F bits, every pending record has a reason 0x20..=0x26; FECTL/IECTL/ICS
//!   hold only their defined bits; IQH lies inside the latched queue;
//! - work per register write is bounded: descriptors executed <= touched lanes x queue
//!   size, at most two event interrupts per lane, only to the programmed event messages;
//!   reads and non-register operations execute no descriptor and send nothing;
//! - bytes beyond the register page read 0 and reads have no side effects;
//! - `remap()` has no side effects; a Deliver outcome targets the interrupt window, is never
//!   remappable, and a translated one has only architectural data bits and a valid delivery
//!   mode; `report_blocked()` records at most one fault and none for a deliverable message;
//! - every active domain vector's route is a Deliver in the interrupt window; after a
//!   change that re-translates everything (IRE/CFI toggle, SIRTP with IR on) or an executed
//!   IEC descriptor, every covered active vector carries exactly what `remap()` gives now;
//! - the vector layer's books balance, and tearing the domains down frees every vector.

#![no_main]

use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

use interrupt::vtd::spec::{gsts, offset};
use interrupt::{DeviceDomain, DomainKind, RemapLayer, RemapOutcome, RequesterId, VtdConfig};
use vmm_fuzz::vtd::{
    queue_from_iqa, Addr, Base, Command, DescSpec, Driver, IrteSpec, MsgSpec, Off, PAGE, RAM_END,
};
use vmm_fuzz::{Layout, Recording, Size};

const MAX_DOMAINS: usize = 6;

#[derive(Arbitrary, Debug)]
enum Op {
    Read {
        off: Off,
        size: Size,
    },
    Write {
        off: Off,
        size: Size,
        value: u64,
        value_hi: u64,
    },
    /// A raw 32-bit GCMD write (any combination of bits).
    Gcmd(u32),
    /// GCMD the way Linux writes it.
    Linux(Command),
    SetIqa {
        base: Base,
        qs: u8,
        dw: bool,
        wide: bool,
    },
    SetIrta {
        base: Base,
        eime: bool,
        s: u8,
        wide: bool,
    },
    /// Linux's bring-up: clear faults, QI on, IRTA + SIRTP, global IEC + wait, IRE, events.
    EnableIr {
        queue: Base,
        qs: u8,
        table: Base,
        s: u8,
        eime: bool,
        mask_events: bool,
    },
    /// Places descriptors at the tail and writes IQT.
    Submit {
        descs: Vec<DescSpec>,
        wide: bool,
    },
    /// Writes the tail register alone (32-bit).
    SetTail(u32),
    /// Fills `count` slots from the tail with one descriptor, then (optionally) moves the
    /// tail past them: huge queues with thousands of valid descriptors per IQT write.
    Flood {
        desc: DescSpec,
        count: u16,
        move_tail: bool,
    },
    /// Linux's `dmar_fault`: read FSTS, clear pending records from FRI, clear FSTS.
    ServiceFaults,
    WriteMem {
        addr: Addr,
        bytes: Vec<u8>,
    },
    WriteIrte {
        index: u16,
        irte: IrteSpec,
    },
    Remap {
        requester: u16,
        msg: MsgSpec,
    },
    ReportBlocked {
        requester: u16,
        msg: MsgSpec,
        repeat: u8,
    },
    CreateDomain {
        requester: u16,
        size: u8,
        kind: u8,
    },
    DropDomain(u8),
    SetMessage {
        dom: u8,
        index: u8,
        msg: Option<MsgSpec>,
    },
    SetMasked {
        dom: u8,
        index: u8,
        masked: bool,
    },
    Fire {
        dom: u8,
        index: u8,
        count: u8,
    },
    Release {
        dom: u8,
        index: u8,
    },
    /// Programs a vector, unmasks it and fires it (`count` + 1 times).
    Activate {
        dom: u8,
        index: u8,
        msg: MsgSpec,
        count: u8,
    },
    /// What Linux does for one vector: write the IRTE, point the vector at it, unmask, and
    /// invalidate the entry (index-selective IEC + wait).
    ProgramVector {
        dom: u8,
        index: u8,
        irte_index: u16,
        irte: IrteSpec,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    layout: Layout,
    records: u8,
    ioapic_sid: u16,
    /// A domain that exists from the start (requester, size).
    first_domain: (u16, u8),
    /// Start from Linux's bring-up (`Op::EnableIr`) to reach translation sooner.
    preset: Option<(Base, u8, Base, u8, bool)>,
    ops: Vec<Op>,
}

struct Fixture {
    rec: Recording,
    drv: Driver,
    domains: Vec<Arc<DeviceDomain>>,
}

impl Deref for Fixture {
    type Target = Driver;
    fn deref(&self) -> &Driver {
        &self.drv
    }
}

impl DerefMut for Fixture {
    fn deref_mut(&mut self) -> &mut Driver {
        &mut self.drv
    }
}

impl Fixture {
    fn new(input: &Input) -> Self {
        let mem = input.layout.memory(RAM_END);
        let rec = Recording::vtd(
            mem.clone(),
            VtdConfig {
                register_base: 0xFED9_0000,
                ioapic_source_id: RequesterId(input.ioapic_sid),
                num_fault_records: input.records,
            },
        );
        let drv = Driver::new(mem, &rec, input.records);
        Self {
            rec,
            drv,
            domains: Vec::new(),
        }
    }

    // --- domains ---------------------------------------------------------------------

    fn domain(&self, dom: u8) -> Option<Arc<DeviceDomain>> {
        if self.domains.is_empty() {
            return None;
        }
        Some(self.domains[usize::from(dom) % self.domains.len()].clone())
    }

    /// Mostly valid indices, sometimes one past the end.
    fn index(d: &DeviceDomain, index: u8) -> usize {
        if index == 0xFF {
            d.size()
        } else {
            usize::from(index) % d.size()
        }
    }

    // --- checks ----------------------------------------------------------------------

    fn check(&self) {
        self.drv.check();
        self.rec.check_books(&self.domains);
    }

    fn run(&mut self, op: &Op) {
        let descs = self.descriptors();
        let sig = self.signalled();
        let slow = self.slow_path();
        let mut register_write = true;
        match op {
            Op::Read { off, size } => {
                register_write = false;
                let off = off.get();
                let len = size.len(16);
                let mut a = vec![0u8; len];
                let mut b = vec![0xAAu8; len];
                self.unit.mmio_read(off, &mut a);
                self.unit.mmio_read(off, &mut b);
                assert_eq!(a, b, "reading {len} bytes at {off:#x} has side effects");
                for (i, byte) in a.iter().enumerate() {
                    if off.checked_add(i as u64).is_none_or(|o| o >= PAGE) {
                        assert_eq!(*byte, 0, "byte {i} of a read at {off:#x} beyond the page");
                    }
                }
            }
            Op::Write {
                off,
                size,
                value,
                value_hi,
            } => {
                let mut bytes = [0u8; 16];
                bytes[..8].copy_from_slice(&value.to_le_bytes());
                bytes[8..].copy_from_slice(&value_hi.to_le_bytes());
                self.write(off.get(), &bytes[..size.len(16)]);
            }
            Op::Gcmd(v) => self.write32(offset::GCMD, *v),
            Op::Linux(c) => self.linux_gcmd(*c),
            Op::SetIqa { base, qs, dw, wide } => {
                let v = base.get() | u64::from(qs & 7) | if *dw { 1 << 11 } else { 0 };
                // Sometimes garbage in the reserved bits 10:3.
                let v = v | if *qs >= 0x80 {
                    u64::from(*qs) << 3 & 0x7F8
                } else {
                    0
                };
                self.write_sized(offset::IQA, v, *wide);
            }
            Op::SetIrta {
                base,
                eime,
                s,
                wide,
            } => {
                let v = base.get() | u64::from(s & 0xF) | if *eime { 1 << 11 } else { 0 };
                let v = v | if *s >= 0x80 {
                    u64::from(*s) << 4 & 0x7F0
                } else {
                    0
                };
                self.write_sized(offset::IRTA, v, *wide);
            }
            Op::EnableIr {
                queue,
                qs,
                table,
                s,
                eime,
                mask_events,
            } => self.enable_ir(queue.get(), *qs, table.get(), *s, *eime, *mask_events),
            Op::Submit { descs, wide } => {
                let n = descs.len().min(64);
                self.submit(&descs[..n], *wide);
            }
            Op::SetTail(v) => self.write32(offset::IQT, *v),
            Op::Flood {
                desc,
                count,
                move_tail,
            } => {
                let (base, entries) = self
                    .queue
                    .unwrap_or_else(|| queue_from_iqa(self.read64(offset::IQA)));
                let tail = (self.read64(offset::IQT) >> 4) & 0x7FFF;
                let (qw0, qw1) = self.desc_bits(*desc);
                let mut bytes = [0u8; 16];
                bytes[..8].copy_from_slice(&qw0.to_le_bytes());
                bytes[8..].copy_from_slice(&qw1.to_le_bytes());
                let n = u64::from(*count) % entries;
                for i in 0..n {
                    let slot = (tail + i) % entries;
                    self.write_mem(base.wrapping_add(slot * 16), &bytes);
                }
                if *move_tail {
                    self.write32(offset::IQT, (((tail + n) % entries) << 4) as u32);
                }
            }
            Op::ServiceFaults => self.service_faults(),
            Op::WriteMem { addr, bytes } => {
                register_write = false;
                let n = bytes.len().min(256);
                self.write_mem(self.addr(*addr), &bytes[..n]);
            }
            Op::WriteIrte { index, irte } => {
                register_write = false;
                self.write_irte(*index, *irte);
            }
            Op::Remap { requester, msg } => {
                register_write = false;
                let m = msg.get();
                let r = RequesterId(*requester);
                let before = self.regs();
                let faults = self.unit.fault_count();
                let records: Vec<u64> = (0..self.records)
                    .map(|i| self.read64(offset::FRCD + i * 16 + 8))
                    .collect();
                let outcome = self.unit.remap(r, m);
                Driver::check_outcome(&m, outcome, "remap");
                assert_eq!(self.unit.remap(r, m), outcome, "remap is not deterministic");
                assert_eq!(self.regs(), before, "remap changed registers");
                assert_eq!(self.unit.fault_count(), faults, "remap recorded a fault");
                let after: Vec<u64> = (0..self.records)
                    .map(|i| self.read64(offset::FRCD + i * 16 + 8))
                    .collect();
                assert_eq!(records, after, "remap changed fault records");
                let ir = before.gsts & gsts::IRES != 0;
                if !ir && m.is_remappable() {
                    assert_eq!(outcome, RemapOutcome::Blocked, "remappable {m} with IR off");
                }
                if !ir && m.targets_interrupt_window() && !m.is_remappable() {
                    assert_eq!(outcome, RemapOutcome::Deliver(m), "{m} with IR off");
                }
                if ir && !m.is_remappable() && before.gsts & gsts::CFIS == 0 {
                    assert_eq!(outcome, RemapOutcome::Blocked, "compatibility {m}, CFI off");
                }
            }
            Op::ReportBlocked {
                requester,
                msg,
                repeat,
            } => {
                register_write = false;
                let m = msg.get();
                let r = RequesterId(*requester);
                let deliverable = matches!(self.unit.remap(r, m), RemapOutcome::Deliver(_));
                for _ in 0..=(*repeat % 64) {
                    let faults = self.unit.fault_count();
                    let sig = self.signalled();
                    self.unit.report_blocked(r, m);
                    let recorded = self.unit.fault_count() - faults;
                    let sent = self.signalled() - sig;
                    assert!(recorded <= 1, "one request recorded {recorded} faults");
                    assert!(sent <= 1, "one request sent {sent} event interrupts");
                    if deliverable {
                        assert_eq!(recorded, 0, "fault recorded for deliverable {m}");
                        assert_eq!(sent, 0);
                    }
                    if sent == 1 {
                        assert_eq!(
                            self.backend.signalled.lock().unwrap().last().copied(),
                            Some(self.regs().fe_msg),
                            "fault event with the wrong message"
                        );
                    }
                }
            }
            Op::CreateDomain {
                requester,
                size,
                kind,
            } => {
                register_write = false;
                if self.domains.len() < MAX_DOMAINS {
                    let kind = match kind % 4 {
                        0 => DomainKind::Msi,
                        1 => DomainKind::MsiX,
                        2 => DomainKind::Ims,
                        _ => DomainKind::Ioapic,
                    };
                    let n = self.domains.len();
                    let d = self.hierarchy.create_domain(
                        &format!("dom{n}"),
                        kind,
                        RequesterId(*requester),
                        usize::from(size % 64) + 1,
                        None,
                    );
                    self.domains.push(d);
                }
            }
            Op::DropDomain(i) => {
                register_write = false;
                if !self.domains.is_empty() {
                    let n = self.domains.len();
                    self.domains.remove(usize::from(*i) % n);
                }
            }
            Op::SetMessage { dom, index, msg } => {
                register_write = false;
                if let Some(d) = self.domain(*dom) {
                    let i = Self::index(&d, *index);
                    let msg = msg.map(MsgSpec::get);
                    let changed = d.vector_snapshot(i).is_some_and(|s| s.message != msg);
                    let r = d.set_message(i, msg);
                    assert_eq!(r.is_ok(), i < d.size(), "set_message({i}): {r:?}");
                    // An unchanged message keeps its (possibly stale) translation.
                    if let Some(s) = d.vector_snapshot(i).filter(|_| changed) {
                        if let (Some(_), Some(m)) = (s.gsi, s.message) {
                            assert_eq!(
                                s.remapped,
                                Some(self.unit.remap(d.requester(), m)),
                                "set_message did not re-route"
                            );
                        }
                    }
                }
            }
            Op::SetMasked { dom, index, masked } => {
                register_write = false;
                if let Some(d) = self.domain(*dom) {
                    let i = Self::index(&d, *index);
                    let r = d.set_masked(i, *masked);
                    assert_eq!(r.is_ok(), i < d.size(), "set_masked({i}): {r:?}");
                }
            }
            Op::Fire { dom, index, count } => {
                register_write = false;
                if let Some(d) = self.domain(*dom) {
                    let i = Self::index(&d, *index);
                    for _ in 0..=(count % 8) {
                        let r = d.fire(i);
                        assert_eq!(r.is_ok(), i < d.size(), "fire({i}): {r:?}");
                    }
                }
            }
            Op::Activate {
                dom,
                index,
                msg,
                count,
            } => {
                register_write = false;
                if let Some(d) = self.domain(*dom) {
                    let i = usize::from(*index) % d.size();
                    let m = msg.get();
                    d.set_message(i, Some(m)).expect("index in range");
                    d.set_masked(i, false).expect("index in range");
                    let before = d.vector_snapshot(i).expect("index in range");
                    for _ in 0..=(count % 8) {
                        d.fire(i).expect("index in range");
                    }
                    let after = d.vector_snapshot(i).expect("index in range");
                    let n = u64::from(count % 8) + 1;
                    assert_eq!(after.fires - before.fires, n);
                    // An unmasked vector delivers exactly when its translation is Deliver.
                    match after.remapped {
                        Some(RemapOutcome::Deliver(_)) => {
                            assert_eq!(after.deliveries - before.deliveries, n, "{after:?}")
                        }
                        _ => assert_eq!(after.dropped - before.dropped, n, "{after:?}"),
                    }
                    assert!(!after.pending, "unmasked vector left pending: {after:?}");
                }
            }
            Op::Release { dom, index } => {
                register_write = false;
                if let Some(d) = self.domain(*dom) {
                    let i = Self::index(&d, *index);
                    let r = d.release(i);
                    assert_eq!(r.is_ok(), i < d.size(), "release({i}): {r:?}");
                }
            }
            Op::ProgramVector {
                dom,
                index,
                irte_index,
                irte,
            } => {
                if let Some(d) = self.domain(*dom) {
                    let i = usize::from(*index) % d.size();
                    self.write_irte(*irte_index, *irte);
                    let msg = MsgSpec::Linux(*irte_index).get();
                    d.set_message(i, Some(msg)).expect("index in range");
                    d.set_masked(i, false).expect("index in range");
                    self.flush_iec(*irte_index);
                }
            }
        }
        if !register_write {
            assert_eq!(self.descriptors(), descs, "{op:?} executed descriptors");
            // Only fault events may be sent, at most one per request (fires and reports).
            let sent = (self.signalled() - sig) as u64 - (self.slow_path() - slow);
            let bound = match op {
                Op::ReportBlocked { repeat, .. } => u64::from(*repeat % 64) + 1,
                Op::Fire { count, .. } | Op::Activate { count, .. } => u64::from(count % 8) + 1,
                Op::SetMasked { .. } => 1,
                _ => 0,
            };
            assert!(sent <= bound, "{op:?} sent {sent} event interrupts");
        }
    }
}

fuzz_target!(|input: Input| {
    let mut f = Fixture::new(&input);
    let (requester, size) = input.first_domain;
    f.run(&Op::CreateDomain {
        requester,
        size,
        kind: 1,
    });
    f.check();
    if let Some((queue, qs, table, s, eime)) = input.preset {
        f.run(&Op::EnableIr {
            queue,
            qs,
            table,
            s,
            eime,
            mask_events: false,
        });
        f.check();
    }
    for op in &input.ops {
        f.run(op);
        f.check();
    }
    // Tear the domains down: every vector goes back.
    let Fixture { rec, drv, domains } = f;
    drop(domains);
    rec.check_released();
    drop(drv);
});
