//! In-guest DSA self-test without idxd: boots the demo guest plus `dsa_guest.ko`
//! (resources/dsa-module, packed by resources/dsa-module/initramfs.sh) with `--device dsa`,
//! without and with `--iommu intel`, loads the module and checks its `DSA-RESULT` line.
//!
//! The module binds its own pci_driver to the DSA (8086:0b25), configures group 0 / WQ 0
//! through GRPCFG and WQCFG, programs IMS entries with the messages of MSI-X vectors it
//! allocated after enable (remappable-format messages under `--iommu intel`), submits
//! descriptors as eight 8-byte stores through the MSI-X and IMS portals, and checks moved
//! data, completion records and exact per-vector interrupt counts, IMS entry masking
//! (nothing while masked, exactly one on unmask) and the status codes of hostile descriptors.

use std::collections::BTreeMap;
use std::time::Instant;

use tests::{
    boot_lock, boot_timeout, build_initramfs, cmd_timeout, module_timeout, parse_fields,
    secs_between, standard_guest_args, with_l1_retry, GuestSession, SessionConfig, PROMPT, READY,
};

const RESULT: &str = "DSA-RESULT ";
const MODULE: &str = "/lib/modules-extra/dsa_guest.ko";
/// Kernel messages that mean an interrupt went astray or the module crashed.
const BAD_KERNEL_MESSAGES: [&str; 5] = [
    "No irq handler for vector",
    "Call Trace",
    "nobody cared",
    "BUG: ",
    "INTR-REMAP",
];

/// Also checks the checker in the same boot: the module's `inject` parameter breaks one
/// check on purpose, and its result line must say so.
#[test]
fn dsa_module_self_test() {
    with_l1_retry(|| self_test(false));
}

/// The same with VT-d interrupt remapping: the module's vectors are IR-PCI-MSIX, the
/// messages it copies into IMS entries are remappable-format, and the device's IMS
/// messages go through the same remapping (with its requester ID) as its MSI-X messages.
#[test]
fn dsa_module_self_test_with_remapping() {
    with_l1_retry(|| self_test(true));
}

/// Boots a guest with `--device dsa` (and `--iommu intel`) and a shell ready for long lines;
/// returns the session and the seconds from spawn to `Guest ready`.
fn boot(iommu: bool) -> (GuestSession, f64) {
    let mut args = standard_guest_args();
    // MOVDIR64B in the CPUID on request (see dsa_guest.rs): the module submits with stores.
    args.extend(["--device".to_string(), "dsa,movdir64b=on".to_string()]);
    if iommu {
        args.extend(["--iommu".to_string(), "intel".to_string()]);
    }
    let mut cfg = SessionConfig::from_env(&args);
    cfg.initramfs = build_initramfs("dsa-module/initramfs.sh");
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
    // busybox's line editor wraps typed lines at the tty width (80 on a bare serial line)
    s.run_marked("stty cols 1024", "@@stty-done", ct);
    (s, booted)
}

fn self_test(iommu: bool) {
    let _g = boot_lock();
    let t0 = Instant::now();
    let (mut s, booted) = boot(iommu);
    let ct = cmd_timeout(s.mode());
    let mt = module_timeout(s.mode());

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
        "dmesg | grep -e 'dsa[_]guest' -e 'No irq[ ]handler' -e 'Call[ ]Trace' \
         -e 'nobody[ ]cared' -e 'BUG[:]' -e 'DMAR[-]IR' -e 'INTR[-]REMAP'",
        "@@dmesg-done",
        ct,
    );
    let interrupts = s.run_marked(
        "grep -e 'dsa_guest' /proc/interrupts; grep -E '^ *(ERR|MIS|SPU):' /proc/interrupts",
        "@@interrupts-done",
        ct,
    );
    let rmmod = s.run_marked("rmmod dsa_guest; echo rmmod-rc=$?", "@@rmmod-done", ct);
    let injected = (!iommu).then(|| run_injected_faults(&mut s));
    s.send_line("poweroff -f");
    let code = s.wait_exit(ct).unwrap_or_else(|e| panic!("{e}"));

    println!("module log:\n    {}", log.join("\n    "));
    println!("/proc/interrupts:\n    {}", interrupts.join("\n    "));
    let result = log.iter().find(|l| l.contains(RESULT)).cloned();
    println!(
        "result (iommu {}): {}",
        if iommu { "intel" } else { "none" },
        result.as_deref().unwrap_or("(no DSA-RESULT line)")
    );
    println!(
        "timing: spawn to `{READY}` {booted:.1} s, insmod self-test {:.1} s, total {:.1} s",
        self_test.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );

    assert!(insmod_ok, "insmod failed: {out:?}\n{}", s.tail());
    let result = result.unwrap_or_else(|| panic!("no {RESULT}line in dmesg:\n{}", s.tail()));
    let f = parse_fields(&result, RESULT);
    let field = |k: &str| f.get(k).map(String::as_str).unwrap_or("<missing>");
    assert_eq!(field("status"), "pass", "{result}\n{}", log.join("\n"));
    for k in ["data_ok", "ims_mask_ok", "hostile_ok", "counts_ok"] {
        assert_eq!(field(k), "1", "{k}: {result}");
    }
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
        interrupts.iter().any(|l| l.contains("dsa_guest-ims0")),
        "donor vectors missing from /proc/interrupts: {interrupts:#?}"
    );
    if iommu {
        assert!(
            log.iter()
                .any(|l| l.contains("DMAR-IR: Enabled IRQ remapping in x2apic mode")),
            "interrupt remapping not enabled in x2APIC mode:\n{}",
            log.join("\n")
        );
        assert!(
            interrupts.iter().any(|l| l.contains("IR-PCI-MSIX")),
            "DSA vectors are not remapped: {interrupts:#?}"
        );
        assert_eq!(
            field("remappable"),
            "1",
            "IMS entries should carry remappable messages: {result}"
        );
    } else {
        assert_eq!(field("remappable"), "0", "{result}");
    }
    assert!(
        rmmod.iter().any(|l| l.trim() == "rmmod-rc=0"),
        "rmmod failed: {rmmod:?}"
    );
    if let Some(injected) = injected {
        check_injected_faults(&injected);
    }
    assert_eq!(code, 0, "vmm exit status after poweroff:\n{}", s.tail());
}

/// Loads the module with `inject=1` and `inject=2` (one check broken on purpose each) and
/// returns the `DSA-RESULT` lines of those two runs.
fn run_injected_faults(s: &mut GuestSession) -> Vec<String> {
    let ct = cmd_timeout(s.mode());
    let mt = module_timeout(s.mode());
    s.run_marked("dmesg -c > /dev/null", "@@dmesg-cleared", ct);
    for inject in [1, 2] {
        let out = s.run_marked(
            &format!("insmod {MODULE} inject={inject}; echo insmod-rc=$?; rmmod dsa_guest"),
            "@@insmod-done",
            mt,
        );
        assert!(
            out.iter().any(|l| l.trim() == "insmod-rc=0"),
            "insmod inject={inject} failed: {out:?}"
        );
    }
    s.run_marked("dmesg | grep 'DSA[-]RESULT'", "@@dmesg-done", ct)
}

/// The checker caught both injected faults, and only them.
fn check_injected_faults(log: &[String]) {
    println!("injected-fault results:\n    {}", log.join("\n    "));
    assert_eq!(log.len(), 2, "expected two DSA-RESULT lines: {log:#?}");
    let r1 = parse_fields(&log[0], RESULT);
    let r2 = parse_fields(&log[1], RESULT);
    let get = |r: &BTreeMap<String, String>, k: &str| r.get(k).cloned().unwrap_or_default();
    assert_eq!(get(&r1, "status"), "fail", "inject=1: {}", log[0]);
    assert_eq!(get(&r1, "ims_mask_ok"), "0", "inject=1: {}", log[0]);
    assert_eq!(get(&r1, "data_ok"), "1", "inject=1: {}", log[0]);
    assert!(
        get(&r1, "reason").contains("interrupt_arrived_through_a_masked_IMS_entry"),
        "inject=1: {}",
        log[0]
    );
    assert_eq!(get(&r2, "status"), "fail", "inject=2: {}", log[1]);
    assert_eq!(get(&r2, "counts_ok"), "0", "inject=2: {}", log[1]);
    assert!(
        get(&r2, "reason").contains("dsa_guest-msix1_expected"),
        "inject=2: {}",
        log[1]
    );
    assert_eq!(get(&r2, "ims_mask_ok"), "1", "inject=2: {}", log[1]);
}
