//! Linux boot test with VT-d interrupt remapping (`--iommu intel`): the guest enables
//! remapping in x2APIC mode, the serial port's IOAPIC pin is remapped (IR-IO-APIC), and
//! writing `/proc/irq/N/smp_affinity` moves its interrupts to the other CPU (an IRTE rewrite
//! plus an index-selective invalidation in the VMM) without losing any: every typed line is
//! still answered, and the new interrupts are counted on CPU1 only.

use tests::{
    boot_lock, boot_timeout, cmd_timeout, standard_guest_args, with_l1_retry, GuestSession, PROMPT,
    READY,
};

/// Types `cmd` and returns its output (see [`GuestSession::run_marked`]).
fn run(s: &mut GuestSession, cmd: &str, marker: &str) -> Vec<String> {
    let t = cmd_timeout(s.mode());
    s.run_marked(cmd, marker, t)
}

/// (irq number, per-CPU counts) of the ttyS0 line in /proc/interrupts.
fn serial_irq(s: &mut GuestSession, marker: &str) -> (u32, Vec<u64>, String) {
    let out = run(s, "grep ttyS0 /proc/interrupts", marker);
    let line = out
        .iter()
        .find(|l| l.contains("ttyS0"))
        .unwrap_or_else(|| panic!("no ttyS0 in /proc/interrupts: {out:?}"))
        .clone();
    let mut fields = line.split_whitespace();
    let irq = fields
        .next()
        .and_then(|f| f.trim_end_matches(':').parse().ok())
        .unwrap_or_else(|| panic!("cannot parse irq in {line:?}"));
    let counts = fields.take(2).map(|c| c.parse().unwrap_or(0)).collect();
    (irq, counts, line)
}

#[test]
fn serial_interrupt_affinity_moves_under_remapping() {
    with_l1_retry(serial_interrupt_affinity_moves_under_remapping_once);
}

fn serial_interrupt_affinity_moves_under_remapping_once() {
    let _g = boot_lock();
    let mut args = standard_guest_args();
    args.extend(["--iommu".to_string(), "intel".to_string()]);
    let mut s = GuestSession::start(&args);
    s.wait_for_line(READY, boot_timeout(s.mode()))
        .unwrap_or_else(|e| panic!("{e}"));
    s.wait_for_prompt(PROMPT, cmd_timeout(s.mode()))
        .unwrap_or_else(|e| panic!("{e}"));

    let dmar = run(
        &mut s,
        "dmesg | grep -e 'DMAR[-]IR' -e 'INTR[-]REMAP'",
        "@@dmar-done",
    );
    println!("guest DMAR lines:\n    {}", dmar.join("\n    "));
    assert!(
        dmar.iter()
            .any(|l| l.contains("DMAR-IR: Enabled IRQ remapping in x2apic mode")),
        "remapping not enabled in x2APIC mode: {dmar:#?}"
    );
    assert!(
        !dmar.iter().any(|l| l.contains("INTR-REMAP")),
        "guest logged remapping faults: {dmar:#?}"
    );

    let (irq, before, line) = serial_irq(&mut s, "@@irq-before");
    println!("before: {line}");
    assert!(
        line.contains("IR-IO-APIC"),
        "serial pin not remapped: {line}"
    );
    run(
        &mut s,
        &format!("echo 2 > /proc/irq/{irq}/smp_affinity; cat /proc/irq/{irq}/smp_affinity"),
        "@@affinity-set",
    );
    // Every line below needs serial interrupts in both directions; a lost interrupt stalls
    // the console and the marker never arrives.
    for i in 0..20 {
        let want = format!("line-{}", i * 7);
        let out = run(&mut s, &format!("echo line-$(({i}*7))"), &format!("@@l{i}"));
        assert!(
            out.iter().any(|l| l.trim() == want),
            "{want} missing: {out:?}"
        );
    }
    let (_, mid, line_mid) = serial_irq(&mut s, "@@irq-mid");
    let (_, after, line_after) = serial_irq(&mut s, "@@irq-after");
    println!("after move: {line_mid}\nlater:      {line_after}");
    assert!(
        mid[1] > before[1],
        "no serial interrupt reached CPU1 after the affinity change: {line} -> {line_mid}"
    );
    assert_eq!(
        after[0], mid[0],
        "serial interrupts still arrive on CPU0 after the move: {line_mid} -> {line_after}"
    );
    assert!(after[1] > mid[1], "{line_mid} -> {line_after}");

    s.send_line("poweroff -f");
    let code = s
        .wait_exit(cmd_timeout(s.mode()))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(code, 0, "exit status after poweroff:\n{}", s.tail());
}
