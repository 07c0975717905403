//! Linux guest with more than 255 vCPUs and no IOMMU: the CPUID reports
//! KVM_FEATURE_MSI_EXT_DEST_ID, so Linux enables x2APIC without interrupt remapping and
//! puts destination ID bits 14:8 in MSI address bits 11:5 (IOAPIC RTE bits 55:49), which the
//! VMM hands to KVM in its x2APIC API form. Every vCPU comes online, and the serial port's
//! IOAPIC pin, moved to the vCPU with APIC ID 256, still answers every typed line with its
//! interrupts counted on that CPU.

use tests::{
    boot_lock, boot_timeout, cmd_timeout, standard_guest_args, GuestSession, PROMPT, READY,
};

/// vCPUs of the guest: one above the 8-bit APIC ID space.
const CPUS: u32 = 257;

fn run(s: &mut GuestSession, cmd: &str, marker: &str) -> Vec<String> {
    let t = cmd_timeout(s.mode()) * 2;
    s.run_marked(cmd, marker, t)
}

/// (irq number, count on CPU `cpu`, whole line) of the ttyS0 line in /proc/interrupts.
fn serial_irq(s: &mut GuestSession, cpu: usize, marker: &str) -> (u32, u64, String) {
    let out = run(s, "grep ttyS0 /proc/interrupts", marker);
    let line = out
        .iter()
        .find(|l| l.contains("ttyS0"))
        .unwrap_or_else(|| panic!("no ttyS0 in /proc/interrupts: {out:?}"))
        .clone();
    let fields: Vec<&str> = line.split_whitespace().collect();
    let irq = fields[0]
        .trim_end_matches(':')
        .parse()
        .unwrap_or_else(|_| panic!("cannot parse irq in {line:?}"));
    let count = fields
        .get(1 + cpu)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no count for CPU{cpu} in {line:?}"));
    (irq, count, line)
}

/// Ignored by default: in the nested harness (QEMU TCG L1 with 2 vCPUs) the 257-vCPU guest
/// starts ("x2apic: enabled by BIOS", "Allowing 257 present CPUs", "physical x2apic") but AP
/// bring-up stalls with L1 soft lockups on L2 vCPU threads (64 vCPUs reach init in 32 s), so
/// this runs where the vmm gets VMX/SVM directly:
/// `cargo test -p tests --test x2apic_guest -- --ignored`. The host-KVM tier covers the
/// same delivery path (`kvm_remap::ext_dest_id_msi_reaches_apic_above_255_without_iommu`).
#[test]
#[ignore = "257 vCPUs do not boot in time on the 2-vCPU TCG L1; run with --ignored on a VMX/SVM host"]
fn cpus_above_255_online_without_iommu() {
    let _g = boot_lock();
    let mut args = standard_guest_args();
    for a in args.iter_mut() {
        if a.starts_with("boot=") {
            *a = format!("boot={CPUS}");
        }
        if a.starts_with("console=") {
            // Skip the per-AP TSC synchronisation spin: 257 vCPUs share the nested L1's two.
            a.push_str(" tsc=reliable");
        }
    }
    let mut s = GuestSession::start(&args);
    // Bringing up 257 vCPUs takes longer than the standard 2.
    let boot = boot_timeout(s.mode()) * 6;
    let ready = s
        .wait_for_line(READY, boot)
        .unwrap_or_else(|e| panic!("{e}"));
    println!("{}", ready.text.trim());
    s.wait_for_prompt(PROMPT, cmd_timeout(s.mode()))
        .unwrap_or_else(|e| panic!("{e}"));

    let online = run(&mut s, "cat /sys/devices/system/cpu/online", "@@online");
    let want = format!("0-{}", CPUS - 1);
    assert!(
        online.iter().any(|l| l.trim() == want),
        "cpu online mask is not {want}: {online:?}"
    );
    let apic = run(
        &mut s,
        "dmesg | grep -i -e x2apic -e 'remapping' -e 'APIC ID'",
        "@@apic",
    );
    println!("guest APIC lines:\n    {}", apic.join("\n    "));

    // The serial line to the vCPU with APIC ID 256: its RTE needs the extended destination.
    let last = (CPUS - 1) as usize;
    let (irq, before, line) = serial_irq(&mut s, last, "@@irq-before");
    println!(
        "before: {}",
        line.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    run(
        &mut s,
        &format!("echo {last} > /proc/irq/{irq}/smp_affinity_list; cat /proc/irq/{irq}/effective_affinity_list"),
        "@@affinity-set",
    );
    for i in 0..10 {
        let want = format!("line-{}", i * 7);
        let out = run(&mut s, &format!("echo line-$(({i}*7))"), &format!("@@l{i}"));
        assert!(
            out.iter().any(|l| l.trim() == want),
            "{want} missing: {out:?}"
        );
    }
    let (_, after, _) = serial_irq(&mut s, last, "@@irq-after");
    println!("serial interrupts on CPU{last}: {before} -> {after}");
    assert!(
        after > before + 10,
        "serial interrupts did not reach CPU{last}: {before} -> {after}"
    );
}
