//! Intel DSA guest tests: boots the demo guest plus the idxd modules and Debian's
//! `accel-config` (resources/dsa-initramfs.sh) with `--device dsa`, without and with
//! `--iommu intel`, and drives the real Linux 6.12 idxd driver through probe, the
//! minimal configuration of one dedicated kernel WQ (docs: dsa-idxd.md sections 4-5),
//! a WQ disable / re-enable cycle, a device disable / re-enable cycle and poweroff.
//!
//! The device-level cycle (`accel-config disable-device`) relies on the model advertising an
//! event log (GENCAP.evl_support): the Debian 6.12.95 guest kernel oopses in
//! `idxd_device_evl_free` when it unbinds any DSA without one (its backport of upstream's
//! "do not check evl_en before freeing" lacks the companion `if (!evl) return;`).
//!
//! Nothing here submits descriptors: the guest CPU cannot execute MOVDIR64B (the vmm only
//! advertises it in CPUID so that idxd.ko loads), so no dmaengine client may run.
//! Every guest command's output and exit status is printed; a non-zero status fails the
//! test after dumping the tail of dmesg.

use std::time::{Duration, Instant};

use tests::{
    boot_lock, boot_timeout, build_initramfs, secs_between, standard_guest_args, with_l1_retry,
    GuestSession, Mode, SessionConfig, PROMPT, READY,
};

/// Kernel messages that mean a crash, a warning splat or a stray interrupt.
const BAD_KERNEL_MESSAGES: [&str; 6] = [
    "Call Trace",
    "BUG: ",
    "WARNING: ",
    "No irq handler for vector",
    "nobody cared",
    "Device is HALTED",
];
/// The probe line of idxd 6.12 (`Intel(R) Accelerator Device (v100)` for DSA 1.0).
const PROBE_LINE: &str = "Intel(R) Accelerator Device";
/// Written to /dev/kmsg right before the modules load; dmesg after it is checked.
const KMSG_MARK: &str = "dsa-guest-test: loading idxd";

fn cmd_timeout(s: &GuestSession) -> Duration {
    match s.mode() {
        Mode::Nested => Duration::from_secs(120),
        Mode::Direct => Duration::from_secs(30),
    }
}

/// A booted DSA guest with a shell on its console.
struct Guest {
    s: GuestSession,
    seq: u32,
    timeout: Duration,
    /// Everything run, for the closing summary: (command, output, status).
    log: Vec<(String, Vec<String>, i32)>,
}

impl Guest {
    fn boot(iommu: bool) -> Guest {
        let t0 = Instant::now();
        let initramfs = build_initramfs("dsa-initramfs.sh");
        let mut args = standard_guest_args();
        // idxd needs MOVDIR64B in the CPUID; hosts without it (these tests run on such
        // CPUs) advertise it only on request, and the test submits no descriptors by it.
        args.extend(["--device".to_string(), "dsa,movdir64b=on".to_string()]);
        if iommu {
            args.extend(["--iommu".to_string(), "intel".to_string()]);
        }
        let mut cfg = SessionConfig::from_env(&args);
        cfg.initramfs = initramfs;
        let s = GuestSession::start_with(&cfg).unwrap_or_else(|e| panic!("{e}"));
        let ready = s
            .wait_for_line(READY, boot_timeout(s.mode()))
            .unwrap_or_else(|e| panic!("{e}"));
        println!(
            "boot: spawn to `{READY}` {:.1} s (initramfs build included: {:.1} s since test start)",
            secs_between(s.spawn_instant(), ready.at),
            t0.elapsed().as_secs_f64()
        );
        if let Some(start) = s.vmm_start_instant() {
            println!(
                "L2 time to init: {:.2} s ({})",
                secs_between(start, ready.at),
                ready.text.trim()
            );
        }
        let timeout = cmd_timeout(&s);
        s.wait_for_prompt(PROMPT, timeout)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut g = Guest {
            s,
            seq: 0,
            timeout,
            log: Vec::new(),
        };
        // busybox's line editor wraps typed lines at the tty width (80 on a bare serial line)
        g.ok("stty cols 1024");
        g
    }

    /// Types `cmd; echo <tag> rc=$?` and returns the output lines between the echoed
    /// command and the tag line, and the exit status. The tag is split with quotes in the
    /// typed line so that the console's echo of the command does not match it.
    fn run(&mut self, cmd: &str) -> (Vec<String>, i32) {
        self.seq += 1;
        let tag = format!("@@dsa{}", self.seq);
        let typed_tag = format!("\"@@\"\"dsa{}\"", self.seq);
        let marker = format!("{tag} rc=");
        let t = Instant::now();
        self.s.send_line(&format!("{cmd}; echo {typed_tag} rc=$?"));
        let done = self.s.wait_typed(cmd, &marker, self.timeout);
        let rc: i32 = done
            .split_once(&marker)
            .and_then(|(_, r)| r.trim().parse().ok())
            .unwrap_or_else(|| panic!("`{cmd}`: cannot parse the status from {done:?}"));
        let lines: Vec<String> = self.s.lines().into_iter().map(|l| l.text).collect();
        let end = lines
            .iter()
            .rposition(|l| l.contains(&marker) && !l.contains(&typed_tag))
            .expect("marker line seen");
        let start = lines[..end]
            .iter()
            .rposition(|l| l.contains(&typed_tag))
            .map_or(0, |i| i + 1);
        let out = lines[start..end].to_vec();
        println!(
            "guest# {cmd}    [rc={rc}, {:.1} s]\n    {}",
            t.elapsed().as_secs_f64(),
            out.join("\n    ")
        );
        self.log.push((cmd.to_string(), out.clone(), rc));
        (out, rc)
    }

    /// Runs `cmd` and fails the test (after printing the end of dmesg) unless it exits 0.
    fn ok(&mut self, cmd: &str) -> Vec<String> {
        let (out, rc) = self.run(cmd);
        if rc != 0 {
            let (dmesg, _) = self.run("dmesg | tail -n 40");
            panic!(
                "`{cmd}` exited {rc}:\n    {}\nend of dmesg:\n    {}",
                out.join("\n    "),
                dmesg.join("\n    ")
            );
        }
        out
    }

    /// Kernel messages since `KMSG_MARK`, with `<level>` prefixes (`dmesg -r`).
    fn dmesg_since_mark(&mut self) -> Vec<String> {
        self.ok(&format!(
            "dmesg -r | sed -n '/{}/,$p'",
            KMSG_MARK.replace(' ', "[ ]")
        ))
    }

    fn poweroff(mut self) {
        self.s.send_line("poweroff -f");
        let code = self
            .s
            .wait_exit(self.timeout)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            code,
            0,
            "vmm exit status after poweroff:\n{}",
            self.s.tail()
        );
    }
}

/// `<N>` syslog level prefix of a `dmesg -r` line (facility bits removed).
fn level(line: &str) -> Option<u32> {
    let rest = line.trim_start().strip_prefix('<')?;
    let (n, _) = rest.split_once('>')?;
    n.parse::<u32>().ok().map(|n| n & 7)
}

/// Asserts that no kernel message is an error (level <= 3) or a crash/warning splat.
fn assert_clean_kernel_log(what: &str, dmesg: &[String]) {
    let bad: Vec<&String> = dmesg
        .iter()
        .filter(|l| {
            level(l).is_some_and(|n| n <= 3) || BAD_KERNEL_MESSAGES.iter().any(|b| l.contains(b))
        })
        .collect();
    assert!(
        bad.is_empty(),
        "{what}: kernel errors:\n    {}\nfull log since the modules loaded:\n    {}",
        bad.iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n    "),
        dmesg.join("\n    ")
    );
}

fn idxd_interrupts(g: &mut Guest) -> Vec<String> {
    g.ok("grep -i idxd /proc/interrupts || true")
}

fn enable(g: &mut Guest) {
    g.ok("accel-config enable-device dsa0");
    g.ok("accel-config enable-wq dsa0/wq0.0");
    let state = g.ok("cat /sys/bus/dsa/devices/dsa0/state /sys/bus/dsa/devices/wq0.0/state");
    assert_eq!(
        state.iter().map(|l| l.trim()).collect::<Vec<_>>(),
        ["enabled", "enabled"],
        "dsa0 and wq0.0 state after enabling"
    );
}

/// Puts engine 0 into group 0.
fn config_engine(g: &mut Guest) {
    g.ok("accel-config config-engine dsa0/engine0.0 --group-id=0");
}

/// Configures wq0.0 as a dedicated kernel WQ for dmaengine in group 0.
fn config_wq(g: &mut Guest) {
    g.ok(
        "accel-config config-wq dsa0/wq0.0 --group-id=0 --mode=dedicated --wq-size=16 \
         --priority=10 --type=kernel --name=dmaengine --driver-name=dmaengine",
    );
}

/// After `disable-wq` on a configurable device the driver keeps wq0.0's size and group but
/// resets its mode, priority, type and name (idxd_wq_disable_cleanup); size and group can
/// only be written while the device is disabled (EPERM otherwise), so only the rest is set.
fn reconfig_wq(g: &mut Guest) {
    g.ok(
        "accel-config config-wq dsa0/wq0.0 --mode=dedicated --priority=10 --type=kernel \
         --name=dmaengine --driver-name=dmaengine",
    );
}

/// Checks the idxd vectors in /proc/interrupts: the misc vector and the WQ's vector, on the
/// remapped MSI-X domain with an IOMMU, the plain one without.
fn check_interrupts(lines: &[String], iommu: bool, wq_enabled: bool) {
    let want = if iommu { "IR-PCI-MSIX" } else { "PCI-MSIX" };
    let idxd: Vec<&String> = lines.iter().filter(|l| l.contains("idxd")).collect();
    assert!(
        !idxd.is_empty(),
        "no idxd vectors in /proc/interrupts: {lines:#?}"
    );
    for l in &idxd {
        assert!(l.contains(want), "idxd vector not on {want}: {l}");
        if !iommu {
            assert!(
                !l.contains("IR-PCI"),
                "remapped vector without --iommu: {l}"
            );
        }
    }
    assert!(
        idxd.iter().any(|l| l.contains("idxd-misc")),
        "no idxd-misc vector: {idxd:#?}"
    );
    if wq_enabled {
        assert!(
            idxd.iter().any(|l| l.contains("idxd-portal")),
            "no idxd-portal vector for the enabled WQ: {idxd:#?}"
        );
    }
}

/// Step a: loads idxd_bus + idxd and checks the probe (no kernel errors, `dsa0`, the probe
/// line, the misc vector on the right MSI-X domain).
fn load_idxd(g: &mut Guest, iommu: bool) -> Duration {
    if iommu {
        let ir = g.ok("dmesg | grep -e DMAR -e 'x2apic' || true");
        assert!(
            ir.iter().any(|l| l.contains("Enabled IRQ remapping")),
            "no \"Enabled IRQ remapping\" in dmesg with --iommu intel: {ir:#?}"
        );
    }
    g.ok("grep -o -w -m1 movdir64b /proc/cpuinfo");
    g.ok(&format!("echo '{KMSG_MARK}' > /dev/kmsg"));
    let t = Instant::now();
    g.ok("load-idxd");
    let took = t.elapsed();
    g.ok("ls /sys/bus/dsa/devices/ /sys/bus/dsa/drivers/");
    g.ok("test -e /sys/bus/dsa/devices/dsa0");
    let dmesg = g.dmesg_since_mark();
    assert_clean_kernel_log("after loading idxd", &dmesg);
    assert!(
        dmesg.iter().any(|l| l.contains(PROBE_LINE)),
        "no idxd probe line ({PROBE_LINE:?}) in dmesg:\n    {}",
        dmesg.join("\n    ")
    );
    g.ok(
        "cat /sys/bus/dsa/devices/dsa0/version /sys/bus/dsa/devices/dsa0/max_work_queues \
          /sys/bus/dsa/devices/dsa0/max_engines /sys/bus/dsa/devices/dsa0/max_groups \
          /sys/bus/dsa/devices/dsa0/state",
    );
    let irq = idxd_interrupts(g);
    check_interrupts(&irq, iommu, false);
    took
}

/// Step b: the minimal configuration with accel-config (one dedicated kernel WQ in group 0
/// with engine 0), enable the device and the WQ, check the vectors and the DMA channel.
fn configure_and_enable(g: &mut Guest, iommu: bool) -> Duration {
    g.ok("accel-config list -i");
    config_engine(g);
    config_wq(g);
    let t = Instant::now();
    enable(g);
    let took = t.elapsed();
    let list = g.ok("accel-config list");
    assert!(
        list.iter().any(|l| l.contains("\"dev\":\"dsa0\"")),
        "accel-config list does not show dsa0"
    );
    assert!(
        list.iter().any(|l| l.contains("\"dev\":\"wq0.0\"")),
        "accel-config list does not show the enabled wq0.0"
    );
    let irq = idxd_interrupts(g);
    check_interrupts(&irq, iommu, true);
    g.ok("ls /sys/class/dma/");
    g.ok("test -e /sys/class/dma/dma0chan0");
    let dmesg = g.dmesg_since_mark();
    assert_clean_kernel_log("after enabling dsa0/wq0.0", &dmesg);
    took
}

/// Prints the idxd kernel messages since the modules loaded, checks there is no error among
/// them and that no command failed.
fn closing_checks(g: &mut Guest, iommu: bool, what: &str) {
    let dmesg = g.dmesg_since_mark();
    assert_clean_kernel_log(what, &dmesg);
    let idxd_lines: Vec<&String> = dmesg
        .iter()
        .filter(|l| l.contains("idxd") || l.contains("dsa"))
        .collect();
    println!(
        "idxd kernel messages (--iommu intel: {iommu}):\n    {}",
        idxd_lines
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n    ")
    );
    let failed: Vec<&(String, Vec<String>, i32)> =
        g.log.iter().filter(|(_, _, rc)| *rc != 0).collect();
    assert!(failed.is_empty(), "commands failed: {failed:#?}");
}

/// a. probe, b. configure + enable, c. disable and re-enable the WQ, d. poweroff.
fn wq_scenario(iommu: bool) {
    let _g = boot_lock();
    let t0 = Instant::now();
    let mut g = Guest::boot(iommu);
    let t_boot = t0.elapsed();
    let t_load = load_idxd(&mut g, iommu);
    let t_enable = configure_and_enable(&mut g, iommu);

    // ---- c. disable and re-enable the WQ (drain, free the vector and handle, reset WQ)
    let t = Instant::now();
    g.ok("accel-config disable-wq dsa0/wq0.0");
    let state = g.ok("cat /sys/bus/dsa/devices/dsa0/state /sys/bus/dsa/devices/wq0.0/state");
    assert_eq!(
        state.iter().map(|l| l.trim()).collect::<Vec<_>>(),
        ["enabled", "disabled"],
        "dsa0 and wq0.0 state after disable-wq"
    );
    g.ok("test ! -e /sys/class/dma/dma0chan0");
    let irq = idxd_interrupts(&mut g);
    check_interrupts(&irq, iommu, false);
    assert!(
        !irq.iter().any(|l| l.contains("idxd-portal")),
        "the WQ vector survived disable-wq: {irq:#?}"
    );
    // the driver reset part of wq0.0's configuration (type none, no name): set it again
    g.ok("accel-config list -i");
    reconfig_wq(&mut g);
    g.ok("accel-config enable-wq dsa0/wq0.0");
    let t_cycle = t.elapsed();
    let state = g.ok("cat /sys/bus/dsa/devices/dsa0/state /sys/bus/dsa/devices/wq0.0/state");
    assert_eq!(
        state.iter().map(|l| l.trim()).collect::<Vec<_>>(),
        ["enabled", "enabled"],
        "dsa0 and wq0.0 state after enable-wq"
    );
    g.ok("test -e /sys/class/dma/dma0chan0");
    let irq = idxd_interrupts(&mut g);
    check_interrupts(&irq, iommu, true);
    g.ok("accel-config list");
    closing_checks(&mut g, iommu, "after the WQ disable/enable cycle");

    // ---- d. poweroff
    let t = Instant::now();
    g.poweroff();
    println!(
        "timing (--iommu intel: {iommu}): boot {:.1} s, load-idxd {:.1} s, enable {:.1} s, \
         WQ disable+enable {:.1} s, poweroff {:.1} s, total {:.1} s",
        t_boot.as_secs_f64(),
        t_load.as_secs_f64(),
        t_enable.as_secs_f64(),
        t_cycle.as_secs_f64(),
        t.elapsed().as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
}

/// a, b, then the device-level cycle: disable-wq, disable-device, enable-device, enable-wq.
fn device_cycle_scenario(iommu: bool) {
    let _g = boot_lock();
    let t0 = Instant::now();
    let mut g = Guest::boot(iommu);
    load_idxd(&mut g, iommu);
    configure_and_enable(&mut g, iommu);

    let t = Instant::now();
    g.ok("accel-config disable-wq dsa0/wq0.0");
    let (out, rc) = g.run("accel-config disable-device dsa0");
    if out.iter().any(|l| l.contains("idxd_device_evl_free")) {
        panic!(
            "guest kernel bug: unbinding dsa0 oopses in idxd_device_evl_free (NULL idxd->evl: \
             this kernel frees the event log of a device without one; a DSA that advertises \
             GENCAP.evl_support would avoid it). `accel-config disable-device dsa0` exited \
             {rc}:\n    {}",
            out.join("\n    ")
        );
    }
    assert_eq!(
        rc,
        0,
        "accel-config disable-device dsa0:\n    {}",
        out.join("\n    ")
    );
    let state = g.ok("cat /sys/bus/dsa/devices/dsa0/state /sys/bus/dsa/devices/wq0.0/state");
    assert_eq!(
        state.iter().map(|l| l.trim()).collect::<Vec<_>>(),
        ["disabled", "disabled"],
        "dsa0 and wq0.0 state after disabling"
    );
    g.ok("test ! -e /sys/class/dma/dma0chan0");
    g.ok("accel-config list -i");
    config_engine(&mut g);
    config_wq(&mut g);
    enable(&mut g);
    let t_cycle = t.elapsed();
    g.ok("test -e /sys/class/dma/dma0chan0");
    let irq = idxd_interrupts(&mut g);
    check_interrupts(&irq, iommu, true);
    g.ok("accel-config list");
    closing_checks(&mut g, iommu, "after the device disable/enable cycle");
    g.poweroff();
    println!(
        "timing (--iommu intel: {iommu}): device disable+enable {:.1} s, total {:.1} s",
        t_cycle.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
}

#[test]
fn dsa_idxd_accel_config_msix() {
    with_l1_retry(|| wq_scenario(false));
}

#[test]
fn dsa_idxd_accel_config_intel_iommu() {
    with_l1_retry(|| wq_scenario(true));
}

/// The device-level cycle without an IOMMU. It passes only because the DSA model advertises
/// an event log: the Debian 6.12.95 guest kernel's idxd oopses on every unbind of a DSA
/// without one (idxd_device_drv_remove -> idxd_device_evl_free -> mutex_lock(&NULL->lock)),
/// which `accel-config disable-device` does.
#[test]
fn dsa_device_disable_reenable_msix() {
    with_l1_retry(|| device_cycle_scenario(false));
}

/// The device-level cycle with `--iommu intel`; see `dsa_device_disable_reenable_msix`.
#[test]
fn dsa_device_disable_reenable_intel_iommu() {
    with_l1_retry(|| device_cycle_scenario(true));
}
