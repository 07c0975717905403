//! In-guest interrupt self-test: boots the demo guest plus `irqtest_guest.ko`
//! (resources/guest-module, packed by resources/test-initramfs.sh) with an `irqtest`
//! device, loads the module and checks its `IRQTEST-RESULT` line: MSI-X, post-enable
//! MSI-X allocation, affinity changes under load, entry/function masking with the PBA, and
//! MSI, each with exact per-vector counts (nothing lost, nothing duplicated). `spurious=` in
//! the result counts handler runs during affinity changes that carried no message from the
//! device (Linux's own retrigger when an MSI moves without interrupt remapping); they are
//! reported, not failed.

use std::time::Instant;

use tests::{
    boot_lock, boot_timeout, build_initramfs, cmd_timeout, module_timeout, parse_fields,
    secs_between, standard_guest_args, with_l1_retry, GuestSession, SessionConfig, PROMPT, READY,
};

const RESULT: &str = "IRQTEST-RESULT ";
const MODULE: &str = "/lib/modules-extra/irqtest_guest.ko";
/// Kernel messages that mean an interrupt went astray or the module crashed.
const BAD_KERNEL_MESSAGES: [&str; 4] = [
    "No irq handler for vector",
    "Call Trace",
    "nobody cared",
    "BUG: ",
];

#[test]
fn irqtest_guest_module_self_test() {
    with_l1_retry(|| self_test(false));
}

/// The same self-test with VT-d interrupt remapping: the guest must enable remapping in
/// x2APIC mode, the device's vectors appear as IR-PCI-MSI/MSIX, multi-message MSI is granted
/// (it needs remapping on x86), and affinity moves (IRTE rewrite + selective invalidation)
/// lose nothing.
#[test]
fn irqtest_guest_module_self_test_with_remapping() {
    with_l1_retry(|| self_test(true));
}

fn self_test(iommu: bool) {
    let _g = boot_lock();
    let t0 = Instant::now();
    let initramfs = build_initramfs("test-initramfs.sh");
    let built = t0.elapsed();

    let mut args = standard_guest_args();
    args.extend(["--device".to_string(), "irqtest,vectors=64".to_string()]);
    if iommu {
        args.extend(["--iommu".to_string(), "intel".to_string()]);
    }
    let mut cfg = SessionConfig::from_env(&args);
    cfg.initramfs = initramfs;
    let mut s = GuestSession::start_with(&cfg).unwrap_or_else(|e| panic!("{e}"));

    let ready = s
        .wait_for_line(READY, boot_timeout(s.mode()))
        .unwrap_or_else(|e| panic!("{e}"));
    let booted = secs_between(s.spawn_instant(), ready.at);
    if let Some(start) = s.vmm_start_instant() {
        eprintln!(
            "L2 time to init: {:.2} s ({})",
            secs_between(start, ready.at),
            ready.text.trim()
        );
    }
    s.wait_for_prompt(PROMPT, cmd_timeout(s.mode()))
        .unwrap_or_else(|e| panic!("{e}"));
    let ct = cmd_timeout(s.mode());
    let mt = module_timeout(s.mode());
    // busybox's line editor wraps typed lines at the tty width (80 on a bare serial line)
    s.run_marked("stty cols 1024", "@@stty-done", ct);

    let t_ins = Instant::now();
    let out = s.run_marked(
        &format!("insmod {MODULE}; echo insmod-rc=$?"),
        "@@insmod-done",
        mt,
    );
    let self_test = t_ins.elapsed();
    let insmod_ok = out.iter().any(|l| l.trim() == "insmod-rc=0");

    // bracketed patterns: the echoed command line must not match them itself
    let log = s.run_marked(
        "dmesg | grep -e 'irqtest[_]guest' -e 'No irq[ ]handler' -e 'Call[ ]Trace' \
         -e 'nobody[ ]cared' -e 'BUG[:]' -e 'DMAR[-]IR' -e 'INTR[-]REMAP'",
        "@@dmesg-done",
        ct,
    );
    let interrupts = s.run_marked(
        "grep -i msi /proc/interrupts; grep -E '^ *(ERR|MIS|SPU):' /proc/interrupts",
        "@@interrupts-done",
        ct,
    );
    let rmmod = s.run_marked("rmmod irqtest_guest; echo rmmod-rc=$?", "@@rmmod-done", ct);
    s.send_line("poweroff -f");
    let code = s.wait_exit(ct).unwrap_or_else(|e| panic!("{e}"));

    println!("module log:\n    {}", log.join("\n    "));
    println!("/proc/interrupts (MSI):\n    {}", interrupts.join("\n    "));
    let result = log.iter().find(|l| l.contains(RESULT)).cloned();
    println!(
        "result: {}",
        result.as_deref().unwrap_or("(no IRQTEST-RESULT line)")
    );
    println!(
        "timing: initramfs {:.1} s, spawn to `{READY}` {booted:.1} s, insmod self-test {:.1} s, total {:.1} s",
        built.as_secs_f64(),
        self_test.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );

    assert!(insmod_ok, "insmod failed: {out:?}\n{}", s.tail());
    let result = result.unwrap_or_else(|| panic!("no {RESULT}line in dmesg:\n{}", s.tail()));
    let f = parse_fields(&result, RESULT);
    let field = |k: &str| f.get(k).map(String::as_str).unwrap_or("<missing>");
    assert_eq!(field("lost"), "0", "interrupts lost: {result}");
    assert_eq!(field("dup"), "0", "interrupts duplicated: {result}");
    assert_eq!(field("expected"), field("received"), "{result}");
    assert_eq!(field("masked_pending_ok"), "1", "{result}");
    assert_eq!(field("status"), "pass", "{result}\n{}", log.join("\n"));
    let all = s.lines();
    for bad in BAD_KERNEL_MESSAGES {
        let hits: Vec<&str> = all
            .iter()
            .map(|l| l.text.as_str())
            .filter(|t| t.contains(bad))
            .collect();
        assert!(hits.is_empty(), "kernel reported {bad:?}: {hits:#?}");
    }
    assert!(
        interrupts.iter().any(|l| l.contains("irqtest-msi0")),
        "kept MSI vector missing from /proc/interrupts: {interrupts:#?}"
    );
    if iommu {
        assert!(
            log.iter()
                .any(|l| l.contains("DMAR-IR: Enabled IRQ remapping in x2apic mode")),
            "interrupt remapping not enabled in x2APIC mode:\n{}",
            log.join("\n")
        );
        assert!(
            interrupts.iter().any(|l| l.contains("IR-PCI-MSI")),
            "irqtest vectors are not remapped: {interrupts:#?}"
        );
        assert!(
            !log.iter().any(|l| l.contains("INTR-REMAP")),
            "the guest logged remapping faults:\n{}",
            log.join("\n")
        );
        let msi: u32 = field("msi_vectors").parse().unwrap_or(0);
        assert!(
            msi > 1,
            "multi-message MSI needs remapping and was not granted: {result}"
        );
        assert_eq!(
            field("migrate_ok"),
            "1",
            "affinity moves under remapping: {result}"
        );
    }
    assert!(
        rmmod.iter().any(|l| l.trim() == "rmmod-rc=0"),
        "rmmod failed: {rmmod:?}"
    );
    assert_eq!(code, 0, "vmm exit status after poweroff:\n{}", s.tail());
}
