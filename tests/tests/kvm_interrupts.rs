//! KVM integration tier: the `interrupt` hierarchy and the userspace IOAPIC of `devices`
//! against the host's real `/dev/kvm` (split irqchip, GSI routes, irqfds, KVM_SIGNAL_MSI,
//! KVM_EXIT_IOAPIC_EOI), observed by a tiny real-mode guest that counts interrupts per
//! vector (see `common/`).
//!
//! Edge-triggered interrupts of one vector coalesce while that vector is pending in the
//! LAPIC's IRR, so a test that wants exact counts fires a vector again only after the guest
//! counted its previous interrupt (different vectors may be in flight together).
//!
//! `VMM_SKIP_KVM_TESTS=1` reports every test as ignored.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Instant;

use common::{GuestEvent, KvmGuest, VcpuHooks, IOAPIC_PINS};
use devices::ioapic::{rte, Ioapic, IOAPIC_BASE};
use interrupt::{DeviceDomain, DomainKind, InterruptHierarchy, MsiMessage, RequesterId};
use vm_device::bus::MmioAddress;
use vm_device::DeviceMmio;

/// Fixed, edge-triggered, physical destination APIC 0.
fn msg(vector: u8) -> MsiMessage {
    MsiMessage::compose(0, false, vector, 0, false)
}

/// An MSI-X domain of `n` vectors on device 00:03.0.
fn msix_domain(h: &Arc<InterruptHierarchy>, n: usize) -> Arc<DeviceDomain> {
    h.create_domain(
        "kvm-test-dev",
        DomainKind::MsiX,
        RequesterId::pci(0, 3, 0),
        n,
        None,
    )
}

/// Programs redirection entry `pin` through the IOAPIC's MMIO window (high half first, so the
/// entry is complete when the low half unmasks it).
fn program_rte(ioapic: &Ioapic, pin: u32, entry: u64) {
    let write = |offset: u64, value: u32| {
        ioapic.mmio_write(MmioAddress(IOAPIC_BASE), offset, &value.to_le_bytes());
    };
    write(0x00, 0x10 + 2 * pin + 1); // IOREGSEL = RTE[pin] high
    write(0x10, (entry >> 32) as u32); // IOWIN
    write(0x00, 0x10 + 2 * pin); // IOREGSEL = RTE[pin] low
    write(0x10, entry as u32); // IOWIN
}

/// Reads redirection entry `pin` back through the MMIO window.
fn read_rte(ioapic: &Ioapic, pin: u32) -> u64 {
    let read = |reg: u32| {
        ioapic.mmio_write(MmioAddress(IOAPIC_BASE), 0x00, &reg.to_le_bytes());
        let mut b = [0u8; 4];
        ioapic.mmio_read(MmioAddress(IOAPIC_BASE), 0x10, &mut b);
        u64::from(u32::from_le_bytes(b))
    };
    (read(0x10 + 2 * pin + 1) << 32) | read(0x10 + 2 * pin)
}

fn done(test: &str, start: Instant) {
    eprintln!("{test}: {:.3} s", start.elapsed().as_secs_f64());
}

/// 1. One MSI-X vector fired 200 times: the guest counts exactly 200, and bringing the
///    vector up cost one KVM_SET_GSI_ROUTING.
fn msix_vector_delivers_every_fire() {
    const TEST: &str = "msix_vector_delivers_every_fire";
    const FIRES: u64 = 200;
    let t = Instant::now();
    let mut g = KvmGuest::new();
    let h = g.hierarchy(IOAPIC_PINS, 4096);
    let d = msix_domain(&h, 4);
    d.set_message(0, Some(msg(0x40))).unwrap();
    d.set_masked(0, false).unwrap();
    g.start(VcpuHooks::default());
    for i in 1..=FIRES {
        d.fire(0).unwrap();
        g.wait_count(0x40, i);
    }
    g.assert_counts(&[(0x40, FIRES)]);
    let s = &d.snapshot()[0];
    assert_eq!((s.fires, s.deliveries, s.dropped), (FIRES, FIRES, 0));
    assert_eq!(s.gsi, Some(IOAPIC_PINS), "the first dynamic GSI");
    let st = h.vector_layer().stats();
    assert_eq!(st.commits, 1, "bring-up costs one commit: {st:?}");
    assert_eq!((st.routes, st.allocated, st.slow_path_signals), (1, 1, 0));
    done(TEST, t);
}

/// 2. Eight vectors of one domain with guest vectors 0x40..0x47, fired in bursts with a
///    different rate each: every guest vector counts exactly its own fires.
fn several_vectors_count_separately() {
    const TEST: &str = "several_vectors_count_separately";
    const N: usize = 8;
    const ROUNDS: u64 = 24;
    let t = Instant::now();
    let mut g = KvmGuest::new();
    let h = g.hierarchy(IOAPIC_PINS, 4096);
    let d = msix_domain(&h, N);
    for i in 0..N {
        d.set_message(i, Some(msg(0x40 + i as u8))).unwrap();
        d.set_masked(i, false).unwrap();
    }
    g.start(VcpuHooks::default());
    // Vector i fires in every round divisible by i + 1: each ends with a different count.
    let mut expected = [0u64; N];
    for round in 0..ROUNDS {
        let burst: Vec<usize> = (0..N)
            .filter(|&i| round.is_multiple_of(i as u64 + 1))
            .collect();
        for &i in &burst {
            d.fire(i).unwrap();
            expected[i] += 1;
        }
        for &i in &burst {
            g.wait_count(0x40 + i as u8, expected[i]);
        }
    }
    let want: Vec<(u8, u64)> = (0..N).map(|i| (0x40 + i as u8, expected[i])).collect();
    g.assert_counts(&want);
    for (i, s) in d.snapshot().iter().enumerate() {
        assert_eq!((s.fires, s.deliveries), (expected[i], expected[i]), "{s:?}");
    }
    let st = h.vector_layer().stats();
    assert_eq!(
        st.commits, 1,
        "8 vectors brought up before the first fire: {st:?}"
    );
    assert_eq!((st.routes, st.allocated), (N, N));
    done(TEST, t);
}

/// 3. Fires of a masked vector are held as one pending interrupt, delivered exactly once on
///    unmask — for an active (routed) vector and for one never unmasked before.
fn masked_fires_deliver_once_on_unmask() {
    const TEST: &str = "masked_fires_deliver_once_on_unmask";
    let t = Instant::now();
    let mut g = KvmGuest::new();
    let h = g.hierarchy(IOAPIC_PINS, 4096);
    let d = msix_domain(&h, 2);
    d.set_message(0, Some(msg(0x40))).unwrap();
    d.set_masked(0, false).unwrap();
    d.set_message(1, Some(msg(0x41))).unwrap(); // stays masked: no GSI yet
    g.start(VcpuHooks::default());

    d.fire(0).unwrap();
    g.wait_count(0x40, 1);
    d.set_masked(0, true).unwrap();
    for _ in 0..5 {
        d.fire(0).unwrap();
        d.fire(1).unwrap();
    }
    g.assert_counts(&[(0x40, 1)]);
    let s = d.snapshot();
    assert!(s[0].pending && s[1].pending, "{s:?}");
    assert_eq!(s[1].gsi, None, "a never-unmasked vector has no GSI");

    d.set_masked(0, false).unwrap();
    d.set_masked(1, false).unwrap();
    g.wait_count(0x40, 2);
    g.wait_count(0x41, 1);
    g.assert_counts(&[(0x40, 2), (0x41, 1)]);
    let s = d.snapshot();
    assert_eq!((s[0].fires, s[0].deliveries, s[0].pending), (6, 2, false));
    assert_eq!((s[1].fires, s[1].deliveries, s[1].pending), (5, 1, false));
    assert!(s[1].gsi.is_some());
    done(TEST, t);
}

/// 4. Vector A fires continuously from a thread while vectors B (1..8) are added, fired once
///    and released in a loop, alternating their guest vectors between rounds so a reused GSI
///    with a stale route would show. A's count equals its fires; B's counts are exact.
fn vectors_come_and_go_while_another_fires() {
    const TEST: &str = "vectors_come_and_go_while_another_fires";
    const ROUNDS: u64 = 12;
    const B: usize = 7;
    /// Bound of A's fires, in case the churn never ends.
    const MAX_A_FIRES: u64 = 100_000;
    let t = Instant::now();
    let mut g = KvmGuest::new();
    let h = g.hierarchy(IOAPIC_PINS, 4096);
    let d = msix_domain(&h, 1 + B);
    d.set_message(0, Some(msg(0x40))).unwrap();
    d.set_masked(0, false).unwrap();
    g.start(VcpuHooks::default());

    let b_vector = |round: u64, j: usize| -> u8 {
        let base = if round.is_multiple_of(2) { 0x50 } else { 0x60 };
        base + j as u8
    };
    let stop = AtomicBool::new(false);
    let a_fires = AtomicU64::new(0);
    let during_churn = thread::scope(|s| {
        // Stops the firing thread however this closure ends (a failed assertion included),
        // so that the scope can join it.
        let _stop_on_exit = SetOnDrop(&stop);
        let firing = s.spawn(|| {
            let mut n = 0;
            while !stop.load(Ordering::Acquire) && n < MAX_A_FIRES {
                d.fire(0).unwrap();
                n += 1;
                g.wait_count(0x40, n);
            }
            a_fires.store(n, Ordering::Release);
        });
        let a_before = g.count(0x40);
        for round in 0..ROUNDS {
            for j in 1..=B {
                d.set_message(j, Some(msg(b_vector(round, j)))).unwrap();
                d.set_masked(j, false).unwrap();
            }
            for j in 1..=B {
                d.fire(j).unwrap();
            }
            for j in 1..=B {
                g.wait_count(b_vector(round, j), round / 2 + 1);
            }
            // Make sure A fires while B's vectors are live in every round.
            let a_now = g.count(0x40);
            g.wait_until("vector A to keep firing during the churn", |o| {
                o.counts[0x40] > a_now
            });
            for j in 1..=B {
                d.release(j).unwrap();
            }
        }
        let a_during = g.count(0x40) - a_before;
        stop.store(true, Ordering::Release);
        firing.join().expect("the firing thread panicked");
        a_during
    });
    let a = a_fires.load(Ordering::Acquire);
    assert!(
        during_churn >= ROUNDS,
        "A fired only {during_churn} times during {ROUNDS} rounds: no real overlap"
    );
    let mut want = vec![(0x40, a)];
    for j in 1..=B {
        want.push((b_vector(0, j), ROUNDS.div_ceil(2)));
        want.push((b_vector(1, j), ROUNDS / 2));
    }
    g.assert_counts(&want);
    let s = d.snapshot();
    assert_eq!((s[0].fires, s[0].deliveries, s[0].dropped), (a, a, 0));
    for v in &s[1..] {
        assert_eq!((v.fires, v.deliveries, v.dropped), (ROUNDS, ROUNDS, 0));
        assert!(v.masked && v.gsi.is_none() && v.message.is_none(), "{v:?}");
    }
    let st = h.vector_layer().stats();
    assert_eq!((st.routes, st.allocated), (1, 1), "{st:?}");
    eprintln!("{TEST}: A fired {a} times ({during_churn} during the churn); {st:?}");
    done(TEST, t);
}

/// Sets the flag when dropped.
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// 5. IOAPIC edge pin 4 -> vector 0x41: ten pulses give exactly ten interrupts and no
///    KVM_EXIT_IOAPIC_EOI; pulses of the masked pin give none.
fn ioapic_edge_pin_delivers_each_pulse() {
    const TEST: &str = "ioapic_edge_pin_delivers_each_pulse";
    const PIN: u32 = 4;
    let t = Instant::now();
    let mut g = KvmGuest::new();
    let h = g.hierarchy(IOAPIC_PINS, 4096);
    let ioapic = Arc::new(Ioapic::new(0, &h));
    let entry = 0x41; // fixed, physical, active high, edge, unmasked, destination 0
    program_rte(&ioapic, PIN, entry);
    assert_eq!(read_rte(&ioapic, PIN), entry);
    let io = ioapic.clone();
    g.start(VcpuHooks {
        ioapic_eoi: Some(Box::new(move |v| io.end_of_interrupt(v))),
        ..Default::default()
    });
    for i in 1..=10 {
        ioapic.pulse(PIN as usize);
        g.wait_count(0x41, i);
    }
    g.assert_counts(&[(0x41, 10)]);
    assert_eq!(ioapic.delivered(PIN as usize), 10);
    assert_eq!(
        ioapic.domain().snapshot()[PIN as usize].gsi,
        Some(PIN),
        "IOAPIC pins use their fixed GSI"
    );

    program_rte(&ioapic, PIN, entry | rte::MASKED);
    for _ in 0..5 {
        ioapic.pulse(PIN as usize);
    }
    g.assert_counts(&[(0x41, 10)]);
    assert_eq!(ioapic.delivered(PIN as usize), 10);
    assert_eq!(
        g.ioapic_eois(0x41),
        0,
        "edge vectors must not cause EOI exits"
    );
    done(TEST, t);
}

/// 6. IOAPIC level pin 9 -> vector 0x42 held asserted: each EOI of the vector comes back as
///    KVM_EXIT_IOAPIC_EOI, which is handed to `end_of_interrupt` and re-delivers the line
///    while it is asserted; the guest deasserts the line (through its threshold port) in its
///    5th handler, before its EOI. Remote IRR ends clear, and asserting again delivers again.
///
///    Exact expectation: the IOAPIC delivers once on assertion plus once per EOI exit taken
///    while the line was still asserted, and the guest counts every delivery. On an
///    architectural LAPIC the guest's EOI follows its deassert, so that is exactly 5. On a PVM
///    host a real-mode guest's interrupts are EOI'd on delivery (the handler runs with the
///    vector not in service), so the EOI exit of the 5th interrupt may precede the guest's
///    deassert and deliver a 6th: allowed there, and only there.
fn ioapic_level_pin_redelivers_until_deasserted() {
    const TEST: &str = "ioapic_level_pin_redelivers_until_deasserted";
    const PIN: u32 = 9;
    const VECTOR: u8 = 0x42;
    const M: u64 = 5;
    let t = Instant::now();
    let mut g = KvmGuest::new();
    let h = g.hierarchy(IOAPIC_PINS, 4096);
    let ioapic = Arc::new(Ioapic::new(0, &h));
    let entry = rte::LEVEL | u64::from(VECTOR); // fixed, physical, active high, unmasked, dest 0
    program_rte(&ioapic, PIN, entry);
    g.set_threshold(VECTOR, M as u32);
    let (eoi_io, line_io) = (ioapic.clone(), ioapic.clone());
    g.start(VcpuHooks {
        ioapic_eoi: Some(Box::new(move |v| eoi_io.end_of_interrupt(v))),
        threshold: Some(Box::new(move |v| {
            if v == VECTOR {
                line_io.set_irq(PIN as usize, false);
            }
        })),
    });

    // Phase 1: assert and hold until the guest's 5th handler deasserts.
    ioapic.set_irq(PIN as usize, true);
    g.wait_count(VECTOR, M);
    let n1 = check_level_phase(&g, &ioapic, PIN, VECTOR, 0, 0, M);

    // Phase 2: asserting again delivers again (remote IRR really was clear); the guest
    // deasserts in its first handler.
    let from = g.observed().events.len();
    g.set_threshold(VECTOR, n1 as u32 + 1);
    ioapic.set_irq(PIN as usize, true);
    g.wait_count(VECTOR, n1 + 1);
    let n2 = check_level_phase(&g, &ioapic, PIN, VECTOR, from, n1, 1);
    assert_eq!(g.observed().threshold_hits, vec![VECTOR, VECTOR]);
    let o = g.observed();
    eprintln!(
        "{TEST}: {} + {} interrupts, {} KVM_EXIT_IOAPIC_EOI; handlers with the vector in service: \
         {}, not in service: {}",
        n1,
        n2 - n1,
        g.ioapic_eois(VECTOR),
        o.handled_in_service,
        o.handled_not_in_service
    );
    done(TEST, t);
}

/// Checks one phase of the level test: the line was asserted once with `before` interrupts
/// counted and events from index `from` on belong to this phase; the guest deasserts in its
/// `m`-th handler of the phase. Returns the total count.
fn check_level_phase(
    g: &KvmGuest,
    ioapic: &Ioapic,
    pin: u32,
    vector: u8,
    from: usize,
    before: u64,
    m: u64,
) -> u64 {
    g.flush();
    let o = g.observed();
    let events = &o.events[from..];
    let deassert = events
        .iter()
        .position(|e| *e == GuestEvent::Threshold(vector))
        .unwrap_or_else(|| panic!("the guest never deasserted the line: {events:?}"));
    let eois_while_asserted = events[..deassert]
        .iter()
        .filter(|e| **e == GuestEvent::IoapicEoi(vector))
        .count() as u64;
    let expected = before + 1 + eois_while_asserted;
    g.assert_counts(&[(vector, expected)]);
    assert_eq!(
        ioapic.delivered(pin as usize),
        expected,
        "IOAPIC deliveries vs guest interrupts"
    );
    assert_eq!(
        g.ioapic_eois(vector),
        expected,
        "one KVM_EXIT_IOAPIC_EOI per handled interrupt"
    );
    let e = read_rte(ioapic, pin);
    assert_eq!(e & rte::REMOTE_IRR, 0, "remote IRR still set: {e:#x}");
    let this_phase = expected - before;
    if o.eoi_on_delivery() {
        assert!(
            this_phase == m || this_phase == m + 1,
            "{this_phase} interrupts in this phase, want {m} (or {} with EOI on delivery)",
            m + 1
        );
    } else {
        assert_eq!(
            this_phase, m,
            "the guest deasserts before its EOI, so exactly {m} interrupts (events: {events:?})"
        );
    }
    expected
}

/// 7. With only two dynamic GSIs (24 and 25), a domain of four unmasked vectors delivers two
///    through routes and two through KVM_SIGNAL_MSI; every guest vector counts exactly once.
fn exhausted_gsis_fall_back_to_signal_msi() {
    const TEST: &str = "exhausted_gsis_fall_back_to_signal_msi";
    let t = Instant::now();
    let mut g = KvmGuest::new();
    let h = g.hierarchy(IOAPIC_PINS, IOAPIC_PINS + 2);
    let d = msix_domain(&h, 4);
    for i in 0..4 {
        d.set_message(i, Some(msg(0x40 + i as u8))).unwrap();
        d.set_masked(i, false).unwrap();
    }
    g.start(VcpuHooks::default());
    for i in 0..4 {
        d.fire(i).unwrap();
    }
    for i in 0..4 {
        g.wait_count(0x40 + i as u8, 1);
    }
    g.assert_counts(&[(0x40, 1), (0x41, 1), (0x42, 1), (0x43, 1)]);
    let st = h.vector_layer().stats();
    assert_eq!(st.slow_path_signals, 2, "{st:?}");
    assert_eq!((st.allocated, st.routes), (2, 2), "{st:?}");
    let s = d.snapshot();
    let gsis: Vec<_> = s.iter().map(|v| v.gsi).collect();
    assert_eq!(gsis, vec![Some(24), Some(25), None, None]);
    assert!(
        s.iter().all(|v| v.deliveries == 1 && v.dropped == 0),
        "{s:?}"
    );
    done(TEST, t);
}

/// A chip standing for a host producer (VFIO host vector, vhost worker): it records which
/// vectors were started and keeps their triggers, which a "host" thread signals directly.
#[derive(Default)]
struct HostProducer {
    triggers: std::sync::Mutex<Vec<(usize, Arc<vmm_sys_util::eventfd::EventFd>)>>,
}

impl interrupt::MsiChip for HostProducer {
    fn name(&self) -> &str {
        "test-host"
    }
    fn host_signalled(&self) -> bool {
        true
    }
}

/// 8. Host-signalled vectors against real KVM: a thread standing for the host device writes
///    the vector's trigger; while unmasked KVM injects with no relay (relayed stays 0, the
///    domain sees no fire); signals while masked become one pending interrupt delivered once
///    on unmask; with no GSI left the relay delivers through KVM_SIGNAL_MSI.
fn host_signalled_vectors_bypass_the_vmm_and_keep_pending_while_masked() {
    const TEST: &str = "host_signalled_vectors_bypass_the_vmm_and_keep_pending_while_masked";
    const FIRES: u64 = 100;
    let t = Instant::now();
    let mut g = KvmGuest::new();
    // One dynamic GSI: vector 0 gets it, vector 1 takes the slow path.
    let h = g.hierarchy(IOAPIC_PINS, IOAPIC_PINS + 1);
    let chip = Arc::new(HostProducer::default());
    let d = h.create_domain_with_chip(
        "kvm-test-passthrough",
        DomainKind::MsiX,
        RequesterId::pci(0, 4, 0),
        2,
        None,
        chip.clone(),
    );
    let t0 = d.trigger(0).unwrap();
    let t1 = d.trigger(1).unwrap();
    chip.triggers
        .lock()
        .unwrap()
        .extend([(0, t0.clone()), (1, t1.clone())]);
    d.set_message(0, Some(msg(0x40))).unwrap();
    d.set_masked(0, false).unwrap();
    d.set_message(1, Some(msg(0x41))).unwrap();
    d.set_masked(1, false).unwrap();
    g.start(VcpuHooks::default());

    let host = {
        let t0 = t0.clone();
        thread::spawn(move || t0.write(1).unwrap())
    };
    host.join().unwrap();
    g.wait_count(0x40, 1);
    for i in 2..=FIRES {
        t0.write(1).unwrap();
        g.wait_count(0x40, i);
    }
    let s = d.vector_snapshot(0).unwrap();
    assert!(s.attached, "{s:?}");
    assert_eq!((s.relayed, s.fires), (0, 0), "KVM injected alone: {s:?}");

    d.set_masked(0, true).unwrap();
    for _ in 0..5 {
        t0.write(1).unwrap();
    }
    // The relay turns the masked signals into one pending interrupt.
    let start = Instant::now();
    while !d.is_pending(0) {
        assert!(start.elapsed().as_secs() < 10, "no pending bit");
        thread::sleep(std::time::Duration::from_millis(5));
    }
    g.assert_counts(&[(0x40, FIRES)]);
    d.set_masked(0, false).unwrap();
    g.wait_count(0x40, FIRES + 1);

    // Vector 1 has no GSI: its signal goes through the relay and KVM_SIGNAL_MSI.
    t1.write(1).unwrap();
    g.wait_count(0x41, 1);
    g.flush();
    g.assert_counts(&[(0x40, FIRES + 1), (0x41, 1)]);
    let s1 = d.vector_snapshot(1).unwrap();
    assert!(!s1.attached && s1.relayed == 1, "{s1:?}");
    assert_eq!(h.vector_layer().stats().slow_path_signals, 1);
    done(TEST, t);
}

/// A pass-through function's INTx line (vfio's `Intx`, on a device-less fake host).
struct IntxPin(Arc<Ioapic>, usize);

impl vfio::IntxLine for IntxPin {
    fn set_level(&self, asserted: bool) {
        self.0.set_irq(self.1, asserted);
    }
}

/// The IOAPIC's EOI and mask listener of the INTx pin.
struct IntxEoi(Arc<vfio::Intx>);

impl devices::ioapic::EoiListener for IntxEoi {
    fn end_of_interrupt(&self, _pin: usize) {
        self.0.end_of_interrupt();
    }
    fn mask_changed(&self, _pin: usize, masked: bool) {
        self.0.pin_mask_changed(masked);
    }
}

/// 8. INTx through the vmm: each signal of a function's INTx trigger eventfd is picked up by
///    the interrupt relay thread and asserts IOAPIC level pin 17 (active low, as a PCI _PRT
///    entry makes it); the guest's EOI comes back as KVM_EXIT_IOAPIC_EOI and reaches the
///    pin's EOI listener, which deasserts the line and unmasks the host — so exactly one
///    guest interrupt, one relay and one unmask per signal, and no re-delivery. The guest's
///    unmask of the pin is what turns host INTx on.
fn intx_relayed_level_line_is_unmasked_by_the_guests_eoi() {
    const TEST: &str = "intx_relayed_level_line_is_unmasked_by_the_guests_eoi";
    const PIN: usize = 17;
    const VECTOR: u8 = 0x43;
    const N: u64 = 5;
    let t = Instant::now();
    let mut g = KvmGuest::new();
    let h = g.hierarchy(IOAPIC_PINS, 4096);
    let ioapic = Arc::new(Ioapic::new(0, &h));
    let host = Arc::new(vfio::fake::FakeHost::new([0; 256], Vec::new(), 0, 0, false));
    let irqs = vfio::HostIrqs::new("kvm-test-vfio", host.clone(), vfio::IrqMode::Dynamic, 0, 0);
    let intx = vfio::Intx::new(irqs.clone(), Arc::new(IntxPin(ioapic.clone(), PIN))).unwrap();
    let listener: Arc<dyn interrupt::SignalListener> = intx.clone();
    h.watch_signal(intx.trigger(), Arc::downgrade(&listener))
        .unwrap();
    assert!(ioapic.set_eoi_listener(PIN, Arc::new(IntxEoi(intx.clone()))));
    intx.set_wanted(true);
    assert!(!irqs.intx_enabled(), "pin still masked");
    program_rte(
        &ioapic,
        PIN as u32,
        rte::LEVEL | rte::POLARITY_LOW | u64::from(VECTOR),
    );
    assert!(irqs.intx_enabled(), "the pin's unmask turns host INTx on");
    let eoi_io = ioapic.clone();
    g.start(VcpuHooks {
        ioapic_eoi: Some(Box::new(move |v| eoi_io.end_of_interrupt(v))),
        threshold: None,
    });
    for k in 1..=N {
        intx.trigger().write(1).unwrap();
        g.wait_count(VECTOR, k);
        // The next signal only after the host was unmasked (as vfio-pci's automask wants).
        let mut waited = 0;
        while irqs.stats().intx_unmasks < k {
            assert!(waited < 1000, "no unmask after interrupt {k}");
            thread::sleep(std::time::Duration::from_millis(10));
            waited += 1;
        }
    }
    g.assert_counts(&[(VECTOR, N)]);
    assert_eq!(
        ioapic.delivered(PIN),
        N,
        "no re-delivery of the deasserted line"
    );
    let s = irqs.stats();
    assert_eq!((s.intx_relayed, s.intx_unmasks), (N, N));
    assert!(!ioapic.line(PIN));
    assert_eq!(read_rte(&ioapic, PIN as u32) & rte::REMOTE_IRR, 0);
    assert_eq!(
        g.ioapic_eois(VECTOR),
        N,
        "one KVM_EXIT_IOAPIC_EOI per interrupt"
    );
    assert_eq!(
        *host.calls.lock().unwrap(),
        vec!["set 0 0 1".to_string(), "unmask 0".to_string()]
    );
    done(TEST, t);
}

tests::test_main!(
    host_signalled_vectors_bypass_the_vmm_and_keep_pending_while_masked,
    msix_vector_delivers_every_fire,
    several_vectors_count_separately,
    masked_fires_deliver_once_on_unmask,
    vectors_come_and_go_while_another_fires,
    ioapic_edge_pin_delivers_each_pulse,
    ioapic_level_pin_redelivers_until_deasserted,
    exhausted_gsis_fall_back_to_signal_msi,
    intx_relayed_level_line_is_unmasked_by_the_guests_eoi,
);
