//! VFIO pass-through against real devices and the stock Linux 6.12 drivers (issue 9).
//!
//! Nested mode (`resources/nested-run.sh --vfio`): L0 QEMU gives L1 a q35 with an Intel
//! vIOMMU (intremap=on), an NVMe on a fresh 64 MiB raw file and an e1000e without a network
//! back-end; L1 boots with `intel_iommu=on`, binds both to vfio-pci and runs the vmm with
//! `--device vfio,host=<BDF>`. L2 is the demo guest plus the nvme and e1000e drivers
//! (`resources/vfio-initramfs.sh`), loaded by the test with `load-driver`.
//!
//! Direct mode (a host with hardware virtualization) runs the same tests on devices the user
//! bound to vfio-pci and names in `VMM_TEST_VFIO_NVME` (a scratch NVMe: the test overwrites
//! 1 MiB at offset 1 MiB of its first namespace) and `VMM_TEST_VFIO_NIC` (an e1000e); a
//! test whose device is not named is skipped (reported as ignored, with the reason).
//!
//! What the host side saw comes from the vmm's hierarchy view (SIGUSR1, `--print-interrupts`:
//! per device the host SET_IRQS calls and host MSI-X disables, per vector whether its host
//! vector is enabled and how many interrupts the vmm relayed in userspace) and from the host's
//! (L1's) `/proc/interrupts`, where vfio-pci names each host vector `vfio-msix[i](BDF)`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use tests::{
    boot_lock, boot_timeout, build_initramfs, probe_mode, secs_between, standard_guest_args,
    with_l1_retry, GuestSession, Mode, SessionConfig, PROMPT, READY,
};

// ---- the vmm's hierarchy view of a pass-through device (vfio/src/chip.rs, interrupt's render):
//   domain vfio 0000:00:01.0 00:04.0 [PCI/MSI-X] requester 00:04.0 vectors=65 chip vfio-msix
//       vfio msix=dynamic: host SET_IRQS calls 3, host MSI-X disables 0, host type switches 0
//     [   0] ... unmasked fires=0 delivered=0 dropped=0 trigger=kvm relayed=0 host vector enabled
/// First line of the hierarchy dump.
const DUMP_HEADER: &str = "interrupt hierarchy";
/// Line after the SIGUSR1 dump.
const USR1_END: &str = "serial output: ";
/// Kind of the domain whose vectors are the device's MSI-X table entries.
const MSIX_KIND: &str = "[PCI/MSI-X]";
/// Per device: host `VFIO_DEVICE_SET_IRQS` calls (a number follows).
const KEY_SET_IRQS: &str = "host SET_IRQS calls";
/// Per device: host MSI-X disables (the disable/re-enable fallback; a number follows).
const KEY_HOST_DISABLES: &str = "host MSI-X disables";
/// Per vector: interrupts the vmm relayed in userspace (`relayed=N`).
const KEY_RELAYED: &str = "relayed";
/// Per vector: its host vector is enabled.
const HOST_ENABLED: &str = "host vector enabled";

/// L1's line naming the passed-through devices (nested-run.sh --vfio).
const NESTED_VFIO: &str = "@@NESTED vfio ";
/// L1's record of its vfio-msix host vectors, one line per change (nested-run.sh --vfio).
const L1_MSIX_LOG: &str = "/tmp/l1-vfio-msix.log";
/// Direct mode: a scratch NVMe bound to vfio-pci on this host.
const ENV_NVME: &str = "VMM_TEST_VFIO_NVME";
/// Direct mode: an e1000e bound to vfio-pci on this host.
const ENV_NIC: &str = "VMM_TEST_VFIO_NIC";

/// Kernel messages that mean an NVMe command timed out or was aborted, a crash or a splat.
const BAD_KERNEL_MESSAGES: [&str; 9] = [
    "timeout",
    "abort",
    "I/O error",
    "reset controller",
    "Call Trace",
    "BUG: ",
    "WARNING: ",
    "No irq handler for vector",
    "nobody cared",
];
/// Written to /dev/kmsg before the driver loads; the checked log starts there.
const KMSG_MARK: &str = "vfio-test: loading driver";

/// The pass-through devices of this run, as `--device vfio,host=` values.
#[derive(Clone, Debug)]
struct Devices {
    nvme: Option<String>,
    nic: Option<String>,
}

/// The devices to pass through, or a skip when there are none for what the test needs.
fn devices(need_nvme: bool, need_nic: bool) -> Devices {
    match probe_mode() {
        // nested-run.sh --vfio substitutes the BDFs it bound in L1
        Mode::Nested => Devices {
            nvme: Some("@VFIO_NVME@".into()),
            nic: Some("@VFIO_NIC@".into()),
        },
        Mode::Direct => {
            let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
            let d = Devices {
                nvme: get(ENV_NVME),
                nic: get(ENV_NIC),
            };
            if need_nvme && d.nvme.is_none() {
                tests::skip(format!(
                    "direct mode and no pass-through NVMe: bind a scratch NVMe to vfio-pci \
                     and set {ENV_NVME}=DDDD:BB:DD.F"
                ));
            }
            if need_nic && d.nic.is_none() {
                tests::skip(format!(
                    "direct mode and no pass-through e1000e: bind one to vfio-pci and set \
                     {ENV_NIC}=DDDD:BB:DD.F"
                ));
            }
            d
        }
    }
}

/// The session config: nested runs get `--vfio`, L2 the vfio initramfs.
fn vfio_config(args: &[String]) -> SessionConfig {
    let mut cfg = SessionConfig::from_env(args);
    cfg.initramfs = build_initramfs("vfio-initramfs.sh");
    if cfg.mode == Mode::Nested {
        cfg.nested_args.push("--vfio".into());
    }
    cfg
}

fn cmd_timeout(mode: Mode) -> Duration {
    match mode {
        Mode::Nested => Duration::from_secs(180),
        Mode::Direct => Duration::from_secs(60),
    }
}

/// One vector line of a domain in the hierarchy dump.
#[derive(Clone, Debug, Default)]
struct VectorDump {
    text: String,
    fields: BTreeMap<String, String>,
}

impl VectorDump {
    fn num(&self, key: &str) -> Option<u64> {
        self.fields.get(key).and_then(|v| v.parse().ok())
    }
    fn host_enabled(&self) -> bool {
        self.text.contains(HOST_ENABLED)
    }
    fn unmasked(&self) -> bool {
        self.text.split_whitespace().any(|w| w == "unmasked")
    }
}

/// A domain block of the hierarchy dump.
#[derive(Clone, Debug, Default)]
struct DomainDump {
    lines: Vec<String>,
    /// key=value fields of the domain's own lines (header and descriptions).
    fields: BTreeMap<String, String>,
    vectors: BTreeMap<usize, VectorDump>,
}

impl DomainDump {
    fn num(&self, key: &str) -> Option<u64> {
        self.fields.get(key).and_then(|v| v.parse().ok())
    }
    /// The number after `key` (`key=N` or `key N`) in the domain's own lines.
    fn need(&self, key: &str) -> u64 {
        if let Some(n) = self.num(key) {
            return n;
        }
        self.lines
            .iter()
            .filter(|l| !l.starts_with('['))
            .find_map(|l| {
                let rest = l.split_once(key)?.1;
                let digits: String = rest
                    .trim_start_matches([' ', '=', ':'])
                    .chars()
                    .take_while(|c| c.is_ascii_digit())
                    .collect();
                digits.parse().ok()
            })
            .unwrap_or_else(|| {
                panic!(
                    "no number after `{key}` for the pass-through domain in the hierarchy \
                     view:\n    {}",
                    self.text()
                )
            })
    }
    fn host_enabled(&self) -> BTreeSet<usize> {
        self.vectors
            .iter()
            .filter(|(_, v)| v.host_enabled())
            .map(|(&i, _)| i)
            .collect()
    }
    fn text(&self) -> String {
        self.lines.join("\n    ")
    }
}

fn kv_fields(line: &str) -> BTreeMap<String, String> {
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_end_matches([',', ';']).to_string()))
        .collect()
}

/// The domains of the last hierarchy dump in `lines` (from its header to the SIGUSR1 end
/// line, or to the end of the output for the exit dump).
fn parse_dump(lines: &[String]) -> Vec<DomainDump> {
    let start = lines
        .iter()
        .rposition(|l| l.contains(DUMP_HEADER))
        .unwrap_or_else(|| panic!("no `{DUMP_HEADER}` in the output"));
    let mut domains: Vec<DomainDump> = Vec::new();
    for l in &lines[start + 1..] {
        if l.contains(USR1_END) || l.contains("@@NESTED") {
            break;
        }
        let t = l.trim_start();
        if t.starts_with("domain ") {
            domains.push(DomainDump {
                lines: vec![t.to_string()],
                fields: kv_fields(t),
                ..Default::default()
            });
        } else if let Some(d) = domains.last_mut() {
            d.lines.push(t.to_string());
            let index = t
                .strip_prefix('[')
                .and_then(|r| r.split_once(']'))
                .and_then(|(n, _)| n.trim().parse::<usize>().ok());
            match index {
                Some(i) => {
                    d.vectors.insert(
                        i,
                        VectorDump {
                            text: t.to_string(),
                            fields: kv_fields(t),
                        },
                    );
                }
                None => d.fields.extend(kv_fields(t)),
            }
        }
    }
    domains
}

/// The MSI-X domain of the pass-through device whose host BDF is `bdf` (its header names
/// vfio and, where there are several, the host BDF).
fn vfio_domain(domains: &[DomainDump], bdf: &str) -> DomainDump {
    let vfio: Vec<&DomainDump> = domains
        .iter()
        .filter(|d| d.lines[0].contains("vfio") && d.lines[0].contains(MSIX_KIND))
        .collect();
    let pick = match vfio.as_slice() {
        [one] => Some(*one),
        many => many
            .iter()
            .find(|d| d.lines.iter().any(|l| l.contains(bdf)))
            .copied(),
    };
    pick.cloned().unwrap_or_else(|| {
        panic!(
            "no pass-through domain for {bdf} in the hierarchy view:\n    {}",
            domains
                .iter()
                .map(|d| d.text())
                .collect::<Vec<_>>()
                .join("\n    ")
        )
    })
}

/// One line of L2's /proc/interrupts.
#[derive(Clone, Debug)]
struct IrqLine {
    irq: u32,
    counts: Vec<u64>,
    chip: String,
    /// The hardware IRQ number: the MSI-X table index for PCI-MSIX lines.
    hwirq: usize,
    name: String,
    text: String,
}

impl IrqLine {
    fn total(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// Lines of /proc/interrupts output whose name contains `needle`.
fn parse_interrupts(out: &[String], needle: &str) -> Vec<IrqLine> {
    out.iter()
        .filter(|l| l.contains(needle))
        .filter_map(|l| {
            let mut f = l.split_whitespace().peekable();
            let irq = f.next()?.trim_end_matches(':').parse().ok()?;
            let mut counts = Vec::new();
            while let Some(c) = f.peek().and_then(|c| c.parse::<u64>().ok()) {
                counts.push(c);
                f.next();
            }
            let chip = f.next()?.to_string();
            let hwirq = f.next()?.split('-').next()?.parse().ok()?;
            let name = f.collect::<Vec<_>>().join(" ");
            Some(IrqLine {
                irq,
                counts,
                chip,
                hwirq,
                name,
                text: l.clone(),
            })
        })
        .collect()
}

/// Host vectors of `bdf` in a /proc/interrupts listing: index -> total count.
fn host_msix(out: &[String], bdf: &str) -> BTreeMap<usize, u64> {
    let tag = format!("]({bdf})");
    out.iter()
        .filter(|l| l.contains("vfio-msix[") && l.contains(&tag))
        .filter_map(|l| {
            let idx = l
                .split_once("vfio-msix[")?
                .1
                .split_once(']')?
                .0
                .parse()
                .ok()?;
            let total = l
                .split_whitespace()
                .skip(1)
                .map_while(|c| c.parse::<u64>().ok())
                .sum();
            Some((idx, total))
        })
        .collect()
}

/// A booted L2 guest with pass-through devices and a shell on its console.
struct Guest {
    s: GuestSession,
    seq: u32,
    timeout: Duration,
    /// Host BDFs (as the host names them) of the passed-through NVMe and NIC.
    nvme_bdf: String,
    nic_bdf: String,
}

impl Guest {
    /// Boots L2 with `extra` vmm arguments (after the standard ones and `--print-interrupts`).
    fn boot(extra: &[String]) -> Guest {
        let mut args = standard_guest_args();
        args.push("--print-interrupts".into());
        args.extend(extra.iter().cloned());
        last_cmdline_only(&mut args);
        let cfg = vfio_config(&args);
        let env: Vec<(&str, &str)> = Vec::new();
        let s = GuestSession::start_controlled(&cfg, &env).unwrap_or_else(|e| panic!("{e}"));
        let (nvme_bdf, nic_bdf) = match s.mode() {
            Mode::Nested => {
                let l = s
                    .wait_for(NESTED_VFIO, boot_timeout(Mode::Nested))
                    .unwrap_or_else(|e| panic!("L1 did not bind the vfio devices: {e}"));
                let f = tests::parse_fields(&l, NESTED_VFIO);
                (f["nvme"].clone(), f["nic"].clone())
            }
            Mode::Direct => (
                std::env::var(ENV_NVME).unwrap_or_default(),
                std::env::var(ENV_NIC).unwrap_or_default(),
            ),
        };
        let ready = s
            .wait_for_line(READY, boot_timeout(s.mode()))
            .unwrap_or_else(|e| panic!("{e}"));
        if let Some(start) = s.vmm_start_instant() {
            println!(
                "L2 up {:.1} s after the vmm started ({})",
                secs_between(start, ready.at),
                ready.text.trim()
            );
        }
        let timeout = cmd_timeout(s.mode());
        s.wait_for_prompt(PROMPT, timeout)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut g = Guest {
            s,
            seq: 0,
            timeout,
            nvme_bdf,
            nic_bdf,
        };
        // busybox's line editor wraps typed lines at the tty width (80 on a bare serial line)
        g.ok("stty cols 1024");
        g
    }

    /// Types `cmd; echo <tag> rc=$?`; returns the output lines and the exit status.
    fn run(&mut self, cmd: &str) -> (Vec<String>, i32) {
        self.seq += 1;
        let tag = format!("@@vfio{}", self.seq);
        let typed_tag = format!("\"@@\"\"vfio{}\"", self.seq);
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
        let out: Vec<String> = lines[start..end]
            .iter()
            .filter(|l| !l.contains(tests::L1_LINE) && !l.contains("@@L1-END"))
            .cloned()
            .collect();
        println!(
            "guest# {cmd}    [rc={rc}, {:.1} s]\n    {}",
            t.elapsed().as_secs_f64(),
            out.join("\n    ")
        );
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

    /// Runs `cmd` on the host side: L1 in nested mode, this machine in direct mode.
    fn host(&mut self, cmd: &str) -> Vec<String> {
        let (out, rc) = match self.s.mode() {
            Mode::Nested => self.s.run_in_l1(cmd, self.timeout),
            Mode::Direct => {
                let o = Command::new("sh")
                    .args(["-c", cmd])
                    .output()
                    .expect("run sh");
                let mut text = String::from_utf8_lossy(&o.stdout).into_owned();
                text.push_str(&String::from_utf8_lossy(&o.stderr));
                (
                    text.lines().map(String::from).collect(),
                    o.status.code().unwrap_or(-1),
                )
            }
        };
        println!("host$ {cmd}    [rc={rc}]\n    {}", out.join("\n    "));
        assert_eq!(rc, 0, "host command `{cmd}` failed: {out:?}");
        out
    }

    /// The hierarchy view now (SIGUSR1).
    fn dump(&mut self) -> Vec<DomainDump> {
        let from = self.s.lines().len();
        self.s.signal("USR1");
        self.s
            .wait_for(USR1_END, self.timeout)
            .unwrap_or_else(|e| panic!("SIGUSR1 dump: {e}"));
        let lines: Vec<String> = self.s.lines()[from..]
            .iter()
            .map(|l| l.text.clone())
            .collect();
        parse_dump(&lines)
    }

    /// L2's /proc/interrupts lines named `needle`.
    fn interrupts(&mut self, needle: &str) -> Vec<IrqLine> {
        let out = self.ok("cat /proc/interrupts");
        parse_interrupts(&out, needle)
    }

    /// Loads `driver` (load-driver, after a kmsg mark).
    fn load(&mut self, driver: &str) {
        self.ok(&format!(
            "echo '{KMSG_MARK}' > /dev/kmsg; load-driver {driver}"
        ));
    }

    /// Waits (in the guest) until `path` exists.
    fn wait_path(&mut self, path: &str, secs: u32) {
        self.ok(&format!(
            "i=0; while [ ! -e {path} ] && [ $i -lt {} ]; do sleep 0.2; i=$((i+1)); done; \
             [ -e {path} ] || {{ echo '{path} did not appear'; exit 1 2>/dev/null; false; }}",
            secs * 5
        ));
    }

    /// Writes 1 MiB of random data at offset 1 MiB of /dev/nvme0n1 with O_DIRECT, reads it
    /// back with O_DIRECT and compares.
    fn nvme_pattern(&mut self, tag: &str) {
        self.ok(&format!(
            "dd if=/dev/urandom of=/tmp/pat-{tag} bs=4096 count=256 2>/dev/null && \
             dd if=/tmp/pat-{tag} of=/dev/nvme0n1 bs=4096 seek=256 count=256 oflag=direct \
             conv=fsync 2>&1 | tail -n1 && \
             dd if=/dev/nvme0n1 of=/tmp/back-{tag} bs=4096 skip=256 count=256 iflag=direct \
             2>&1 | tail -n1 && cmp /tmp/pat-{tag} /tmp/back-{tag} && \
             sha256sum /tmp/pat-{tag} /tmp/back-{tag}; rm -f /tmp/back-{tag}"
        ));
    }

    /// Kernel messages since the mark, checked for timeouts, aborts and crashes.
    fn assert_clean_dmesg(&mut self, what: &str) {
        let log = self.ok(&format!(
            "dmesg | sed -n '/{}/,$p'",
            KMSG_MARK.replace(' ', "[ ]")
        ));
        let bad: Vec<&String> = log
            .iter()
            .filter(|l| {
                let low = l.to_lowercase();
                BAD_KERNEL_MESSAGES
                    .iter()
                    .any(|b| low.contains(&b.to_lowercase()))
            })
            .collect();
        assert!(
            bad.is_empty(),
            "{what}: kernel log has timeouts, aborts or crashes:\n    {}\nfull log:\n    {}",
            bad.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n    "),
            log.join("\n    ")
        );
    }

    /// Powers L2 off; asserts exit 0 and returns the vmm's exit dump (`--print-interrupts`).
    fn poweroff(mut self) -> Vec<DomainDump> {
        let from = self.s.lines().len();
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
        let lines: Vec<String> = self.s.lines()[from..]
            .iter()
            .map(|l| l.text.clone())
            .collect();
        parse_dump(&lines)
    }
}

/// A pass-through device's host interrupt calls, from its line in the hierarchy view
/// (`host SET_IRQS calls N (enable E, bind B, release R), host MSI-X disables D, host type
/// switches S`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct HostCalls {
    set_irqs: u64,
    /// The guest enabled MSI-X and the host's was turned on with no vector bound.
    enables: u64,
    /// Host vectors bound to their trigger: one per guest activation (a vector the guest
    /// frees and allocates again counts twice).
    binds: u64,
    /// Host vectors released (the guest freed them).
    releases: u64,
    /// Host MSI-X disables of the re-enable fallback.
    disables: u64,
    type_switches: u64,
}

impl HostCalls {
    fn of(dom: &DomainDump) -> HostCalls {
        HostCalls {
            set_irqs: dom.need(KEY_SET_IRQS),
            enables: dom.need("(enable"),
            binds: dom.need("bind"),
            releases: dom.need("release"),
            disables: dom.need(KEY_HOST_DISABLES),
            type_switches: dom.need("host type switches"),
        }
    }

    /// With msix=dynamic and a guest whose driver allocated the vectors `used` (and may have
    /// freed and re-allocated some, as Linux's nvme does with its admin vector during
    /// probe): one call turned host MSI-X on, every other call bound or released one vector,
    /// the binds minus the releases are exactly the guest's vectors, and MSI-X was never
    /// disabled on the host. With `host_enabled` (the vectors whose host vector the view
    /// shows enabled) equal to `used`, no call touched a vector the guest did not use.
    fn assert_dynamic(&self, used: &BTreeSet<usize>, host_enabled: &BTreeSet<usize>) {
        println!("guest vectors {used:?}, host vectors enabled {host_enabled:?}");
        self.assert_dynamic_counts(used.len());
        assert_eq!(
            host_enabled, used,
            "vectors with their host vector enabled vs vectors the guest uses"
        );
    }

    /// The counter half of [`HostCalls::assert_dynamic`] for a guest using `used` vectors.
    fn assert_dynamic_counts(&self, used: usize) {
        println!(
            "host calls: SET_IRQS {} = enable {} + bind {} + release {}; MSI-X disables {}, \
             type switches {}; guest vectors {used}",
            self.set_irqs,
            self.enables,
            self.binds,
            self.releases,
            self.disables,
            self.type_switches
        );
        assert_eq!(self.disables, 0, "host MSI-X disables: {self:?}");
        assert_eq!(self.type_switches, 0, "host type switches: {self:?}");
        assert_eq!(self.enables, 1, "host MSI-X enables: {self:?}");
        assert_eq!(
            self.set_irqs,
            self.enables + self.binds + self.releases,
            "SET_IRQS calls that neither enabled nor bound/released one vector: {self:?}"
        );
        assert!(
            self.binds >= self.releases && self.binds - self.releases == used as u64,
            "binds - releases vs the guest's {used} vectors: {self:?}"
        );
    }
}

/// The NVMe's vectors in L2's /proc/interrupts (nvme0q0 = admin, nvme0qN = I/O queue N).
fn nvme_irqs(g: &mut Guest) -> Vec<IrqLine> {
    let v = g.interrupts("nvme0q");
    assert!(!v.is_empty(), "no nvme0q* interrupts in L2");
    v
}

fn show_irqs(what: &str, v: &[IrqLine]) {
    println!(
        "{what}:\n    {}",
        v.iter()
            .map(|l| l.text.as_str())
            .collect::<Vec<_>>()
            .join("\n    ")
    );
}

/// Sets of host vectors over time from L1's vfio-msix log (nested mode).
fn l1_msix_history(g: &mut Guest) -> Vec<BTreeSet<usize>> {
    if g.s.mode() != Mode::Nested {
        return Vec::new();
    }
    let log = g.host(&format!("cat {L1_MSIX_LOG}"));
    let tag = format!("]({})", g.nvme_bdf);
    log.iter()
        .map(|l| {
            l.split_whitespace()
                .filter(|w| w.contains(&tag))
                .filter_map(|w| {
                    w.strip_prefix("vfio-msix[")?
                        .split(']')
                        .next()?
                        .parse()
                        .ok()
                })
                .collect()
        })
        .collect()
}

// ------------------------------------------------------------------------------------------
// tests

/// The harness half: with `--vfio`, L1 has an IOMMU with interrupt remapping, both devices
/// are bound to vfio-pci in their own groups, /dev/vfio/N exists, and the BDFs reach the
/// vmm's arguments and environment. Runs a shell stand-in instead of the vmm.
fn harness_l1_binds_vfio_devices() {
    if probe_mode() != Mode::Nested {
        tests::skip("direct mode: the nested --vfio harness is not used on this host");
    }
    with_l1_retry(harness_l1_binds_vfio_devices_once)
}

const STANDIN: &str = r#"#!/bin/sh
echo "standin: args $*"
echo "standin: env $VFIO_NVME $VFIO_NVME_GROUP $VFIO_NIC $VFIO_NIC_GROUP"
for b in "$VFIO_NVME" "$VFIO_NIC"; do
    d=/sys/bus/pci/devices/$b
    g=$(basename "$(readlink $d/iommu_group)")
    [ -c /dev/vfio/$g ] && c=char || c=missing
    echo "standin: dev $b $(cat $d/vendor):$(cat $d/device) driver=$(basename "$(readlink $d/driver)") group=$g node=$c msix=$(grep -c . $d/msi_irqs 2>/dev/null || echo 0)"
done
[ -c /dev/vfio/vfio ] && echo "standin: container node"
dmesg | grep -e 'DMAR-IR: Enabled' -e 'DMAR: IOMMU enabled' | sed 's/^/standin: /'
ls /sys/class/iommu | sed 's/^/standin: iommu /'
echo "standin: done"
"#;

fn harness_l1_binds_vfio_devices_once() {
    let _g = boot_lock();
    let dir = std::env::temp_dir().join(format!("vmm-vfio-standin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let standin = dir.join("standin.sh");
    std::fs::write(&standin, STANDIN).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&standin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut cfg = vfio_config(&[
        "--device".into(),
        "vfio,host=@VFIO_NVME@".into(),
        "--device".into(),
        "vfio,host=@VFIO_NIC@".into(),
    ]);
    cfg.vmm = standin;
    let mut s = GuestSession::start_with(&cfg).unwrap_or_else(|e| panic!("{e}"));
    let t = boot_timeout(Mode::Nested);
    let line = s.wait_for(NESTED_VFIO, t).unwrap_or_else(|e| panic!("{e}"));
    let f = tests::parse_fields(&line, NESTED_VFIO);
    let (nvme, nic) = (f["nvme"].clone(), f["nic"].clone());
    assert_ne!(nvme, nic);
    assert_ne!(f["nvme_group"], f["nic_group"], "{line}");
    let args = s.wait_for("standin: args", t).unwrap();
    assert!(
        args.contains(&format!("vfio,host={nvme} --device vfio,host={nic}")),
        "BDFs not substituted: {args}"
    );
    let env = s.wait_for("standin: env", t).unwrap();
    assert!(
        env.ends_with(&format!(
            "{nvme} {} {nic} {}",
            f["nvme_group"], f["nic_group"]
        )),
        "{env}"
    );
    let dev_nvme = s.wait_for(&format!("standin: dev {nvme}"), t).unwrap();
    assert!(
        dev_nvme.contains("0x1b36:0x0010 driver=vfio-pci"),
        "{dev_nvme}"
    );
    assert!(dev_nvme.contains("node=char"), "{dev_nvme}");
    let dev_nic = s.wait_for(&format!("standin: dev {nic}"), t).unwrap();
    assert!(
        dev_nic.contains("0x8086:0x10d3 driver=vfio-pci"),
        "{dev_nic}"
    );
    assert!(dev_nic.contains("node=char"), "{dev_nic}");
    s.wait_for("standin: container node", t).unwrap();
    s.wait_for("standin: done", t).unwrap();
    assert_eq!(s.wait_exit(t).unwrap(), 0);
    let all: Vec<String> = s.lines().into_iter().map(|l| l.text).collect();
    assert!(
        all.iter()
            .any(|l| l.contains("DMAR-IR: Enabled IRQ remapping in x2apic mode")),
        "L1 has no interrupt remapping in x2APIC mode"
    );
    assert!(
        all.iter().any(|l| l.contains("standin: iommu dmar")),
        "no /sys/class/iommu/dmar* in L1"
    );
}

/// The stock nvme driver on the pass-through NVMe: the namespace appears, an O_DIRECT
/// pattern reads back identical, every queue's interrupts count in L2; the host enabled one
/// host vector per vector the guest uses (one SET_IRQS each after the one that entered MSI-X
/// mode at the guest's MSI-X enable; no MSI-X disable), and during
/// sustained I/O on both queues the vmm relays none of their interrupts.
fn nvme_stock_driver_dynamic_msix() {
    let d = devices(true, false);
    with_l1_retry(|| nvme_stock_driver_once(&d))
}

fn nvme_stock_driver_once(d: &Devices) {
    let _g = boot_lock();
    let nvme = d.nvme.clone().unwrap();
    let mut g = Guest::boot(&["--device".into(), format!("vfio,host={nvme}")]);
    let before = vfio_domain(&g.dump(), &g.nvme_bdf.clone());
    println!("before the driver:\n    {}", before.text());
    assert_eq!(
        before.need(KEY_SET_IRQS),
        0,
        "host vectors set up before the guest enabled any"
    );

    g.load("nvme");
    g.wait_path("/dev/nvme0n1", 120);
    g.ok("cat /sys/block/nvme0n1/size /sys/class/nvme/nvme0/model");
    g.nvme_pattern("a");
    let irqs1 = nvme_irqs(&mut g);
    show_irqs("L2 nvme interrupts after the pattern", &irqs1);
    for l in &irqs1 {
        assert!(
            l.chip.contains("PCI-MSIX"),
            "nvme vector not on MSI-X: {}",
            l.text
        );
    }
    let guest_vectors: BTreeSet<usize> = irqs1.iter().map(|l| l.hwirq).collect();

    let mid = vfio_domain(&g.dump(), &g.nvme_bdf.clone());
    println!("after bring-up:\n    {}", mid.text());
    let host_l1 = g.host("cat /proc/interrupts");
    let host1 = host_msix(&host_l1, &g.nvme_bdf.clone());
    println!("host vectors of {}: {host1:?}", g.nvme_bdf);

    // sustained I/O on both CPUs (each has its own queue and vector)
    let io = g.ok(
        "end=$(( $(cut -d. -f1 /proc/uptime) + 15 )); for c in 1 2; do \
         ( n=0; while [ $(cut -d. -f1 /proc/uptime) -lt $end ]; do \
           taskset $c dd if=/dev/nvme0n1 of=/dev/null bs=64k count=64 iflag=direct 2>/dev/null \
           || exit 1; n=$((n+1)); done; echo cpu-mask-$c reads=$n ) & done; wait",
    );
    assert_eq!(
        io.iter().filter(|l| l.contains("reads=")).count(),
        2,
        "{io:?}"
    );
    let irqs2 = nvme_irqs(&mut g);
    show_irqs("L2 nvme interrupts after sustained I/O", &irqs2);
    let after = vfio_domain(&g.dump(), &g.nvme_bdf.clone());
    println!("after sustained I/O:\n    {}", after.text());
    let host2 = host_msix(&g.host("cat /proc/interrupts"), &g.nvme_bdf.clone());
    println!("host vectors of {} after I/O: {host2:?}", g.nvme_bdf);
    let history = l1_msix_history(&mut g);
    println!("L1 host vector sets over time: {history:?}");
    g.assert_clean_dmesg("nvme");

    // L2: every I/O queue vector counted interrupts, more after the sustained I/O
    let io_queues: Vec<&IrqLine> = irqs2.iter().filter(|l| l.name != "nvme0q0").collect();
    assert!(!io_queues.is_empty(), "no I/O queue vectors: {irqs2:?}");
    for l in &irqs2 {
        let prev = irqs1
            .iter()
            .find(|p| p.irq == l.irq)
            .map_or(0, |p| p.total());
        assert!(l.total() > 0, "no interrupts on {}", l.text);
        if l.name != "nvme0q0" {
            assert!(
                l.total() > prev,
                "{}: no new interrupts during sustained I/O ({prev} before)",
                l.text
            );
        }
    }
    // host: exactly the vectors the guest uses are enabled, one SET_IRQS per activation or
    // release, no disable
    HostCalls::of(&after).assert_dynamic(&guest_vectors, &after.host_enabled());
    // the host's own view (L1 /proc/interrupts): the same vectors, and they fired
    if g.s.mode() == Mode::Nested {
        assert_eq!(
            host2.keys().copied().collect::<BTreeSet<_>>(),
            guest_vectors,
            "L1's vfio-msix vectors vs the guest's"
        );
        for (i, n) in &host2 {
            assert!(*n > 0, "host vector {i} never fired: {host2:?}");
        }
        // the host never had a vector the guest did not use (never all 65); it may lose one
        // for a moment when the guest's driver frees and re-allocates it
        assert!(history.len() >= 2, "{history:?}");
        for h in &history {
            assert!(
                h.is_subset(&guest_vectors),
                "L1 had host vectors the guest never used: {history:?}"
            );
        }
        assert_eq!(history.last(), Some(&guest_vectors), "{history:?}");
    }
    // no pass-through interrupt relayed by the vmm during sustained I/O
    for l in &io_queues {
        let a = after.vectors.get(&l.hwirq).unwrap_or_else(|| {
            panic!(
                "vector {} not in the hierarchy view:\n    {}",
                l.hwirq,
                after.text()
            )
        });
        assert!(a.unmasked() && a.host_enabled(), "{}", a.text);
        let r0 = mid.vectors.get(&l.hwirq).and_then(|v| v.num(KEY_RELAYED));
        let r1 = a.num(KEY_RELAYED);
        assert!(r1.is_some(), "no `{KEY_RELAYED}=` in {}", a.text);
        assert_eq!(
            r1.unwrap_or(0) - r0.unwrap_or(0),
            0,
            "vector {} relayed in userspace during sustained I/O: {}",
            l.hwirq,
            a.text
        );
    }

    let bdf = g.nvme_bdf.clone();
    let exit = vfio_domain(&g.poweroff(), &bdf);
    println!("exit dump:\n    {}", exit.text());
    assert_eq!(
        exit.need(KEY_HOST_DISABLES),
        0,
        "host MSI-X disables at exit"
    );
}

/// Guest unbind/rebind of nvme and interrupt moves of its queues: the admin vector by
/// smp_affinity, the managed I/O-queue vectors by taking CPU1 offline and online again
/// (their affinity cannot be written). I/O keeps working, no timeout or abort.
fn nvme_rebind_and_affinity(iommu: bool) {
    let _g = boot_lock();
    let d = devices(true, false);
    let nvme = d.nvme.clone().unwrap();
    let mut extra = vec!["--device".to_string(), format!("vfio,host={nvme}")];
    if iommu {
        extra.extend(["--iommu".to_string(), "intel".to_string()]);
    }
    let mut g = Guest::boot(&extra);
    g.load("nvme");
    g.wait_path("/dev/nvme0n1", 120);
    g.nvme_pattern("a");
    let irqs = nvme_irqs(&mut g);
    show_irqs("L2 nvme interrupts", &irqs);
    let want_chip = if iommu { "IR-PCI-MSIX" } else { "PCI-MSIX" };
    for l in &irqs {
        assert!(
            l.chip.starts_with(want_chip),
            "nvme vector chip {} (want {want_chip}): {}",
            l.chip,
            l.text
        );
    }
    let n_vectors = irqs.len();

    // unbind and rebind: the driver frees and re-allocates its vectors (MSI-X disable and
    // enable in the guest)
    let pci = g
        .ok("basename $(readlink /sys/class/nvme/nvme0/device)")
        .last()
        .cloned()
        .unwrap_or_default();
    let pci = pci.trim().to_string();
    for round in 0..2 {
        g.ok(&format!("echo {pci} > /sys/bus/pci/drivers/nvme/unbind"));
        g.ok("[ ! -e /dev/nvme0n1 ] && ! grep -q nvme0q /proc/interrupts");
        g.ok(&format!("echo {pci} > /sys/bus/pci/drivers/nvme/bind"));
        g.wait_path("/dev/nvme0n1", 120);
        g.nvme_pattern(&format!("rebind{round}"));
        let again = nvme_irqs(&mut g);
        assert_eq!(
            again.len(),
            n_vectors,
            "vectors after rebind {round}: {again:?}"
        );
    }

    // the admin vector is not managed: move it with smp_affinity and make it fire (a
    // rescan sends admin commands)
    let irqs = nvme_irqs(&mut g);
    let admin = irqs
        .iter()
        .find(|l| l.name == "nvme0q0")
        .unwrap_or_else(|| panic!("no nvme0q0: {irqs:?}"))
        .clone();
    for cpu_mask in [2, 1, 2] {
        g.ok(&format!(
            "echo {cpu_mask} > /proc/irq/{}/smp_affinity && cat /proc/irq/{}/effective_affinity && \
             echo 1 > /sys/class/nvme/nvme0/rescan_controller && sleep 1",
            admin.irq, admin.irq
        ));
    }
    let moved = nvme_irqs(&mut g);
    let admin2 = moved.iter().find(|l| l.irq == admin.irq).unwrap();
    show_irqs("after admin vector moves", &moved);
    assert!(
        admin2.counts.get(1).copied().unwrap_or(0) > admin.counts.get(1).copied().unwrap_or(0),
        "admin vector fired nothing on CPU1 after moving there: {} -> {}",
        admin.text,
        admin2.text
    );
    // the I/O queue vectors are managed: writes are refused, CPU hotplug moves them
    let (_, rc) = g.run(&format!(
        "echo 1 > /proc/irq/{}/smp_affinity",
        moved.iter().find(|l| l.name != "nvme0q0").unwrap().irq
    ));
    println!("smp_affinity write on a managed queue vector: rc={rc} (the kernel refuses those)");
    g.ok("echo 0 > /sys/devices/system/cpu/cpu1/online; cat /sys/devices/system/cpu/online");
    g.nvme_pattern("cpu1-off");
    g.ok("echo 1 > /sys/devices/system/cpu/cpu1/online; cat /sys/devices/system/cpu/online");
    g.ok(
        "for c in 1 2; do taskset $c dd if=/dev/nvme0n1 of=/dev/null bs=64k count=64 \
          iflag=direct 2>&1 | tail -n1; done",
    );
    g.nvme_pattern("cpu1-on");
    let end = nvme_irqs(&mut g);
    show_irqs("after CPU1 offline/online", &end);
    for l in end.iter().filter(|l| l.name != "nvme0q0") {
        let prev = moved
            .iter()
            .find(|p| p.irq == l.irq)
            .map_or(0, |p| p.total());
        assert!(
            l.total() > prev,
            "no interrupts on {} after the moves",
            l.text
        );
    }
    g.assert_clean_dmesg("rebind and moves");
    let dump = g.dump();
    let dom = vfio_domain(&dump, &g.nvme_bdf.clone());
    println!("hierarchy view:\n    {}", dom.text());
    let host = host_msix(&g.host("cat /proc/interrupts"), &g.nvme_bdf.clone());
    println!("host vectors: {host:?}");
    assert_eq!(dom.need(KEY_HOST_DISABLES), 0, "host MSI-X disables");
    g.poweroff();
}

fn nvme_rebind_and_affinity_no_iommu() {
    devices(true, false);
    with_l1_retry(|| nvme_rebind_and_affinity(false))
}

fn nvme_rebind_and_affinity_iommu_intel() {
    devices(true, false);
    with_l1_retry(|| nvme_rebind_and_affinity(true))
}

/// The stock e1000e driver probes the pass-through e1000e with MSI-X, and its vectors count
/// interrupts (link state changes; the L0 NIC has no network back-end).
fn e1000e_probes_with_msix() {
    let d = devices(false, true);
    with_l1_retry(|| e1000e_once(&d))
}

fn e1000e_once(d: &Devices) {
    let _g = boot_lock();
    let nic = d.nic.clone().unwrap();
    let mut g = Guest::boot(&["--device".into(), format!("vfio,host={nic}")]);
    g.load("e1000e");
    g.wait_path("/sys/class/net/eth0", 60);
    g.ok(
        "ip link set eth0 up; sleep 3; ip link show eth0; cat /sys/class/net/eth0/carrier || true",
    );
    g.ok("ip link set eth0 down; sleep 1; ip link set eth0 up; sleep 3");
    let irqs = g.interrupts("eth0");
    show_irqs("L2 e1000e interrupts", &irqs);
    assert!(
        irqs.len() >= 2,
        "e1000e did not use MSI-X (expects rx, tx and other vectors): {irqs:?}"
    );
    for l in &irqs {
        assert!(l.chip.contains("PCI-MSIX"), "not MSI-X: {}", l.text);
    }
    let total: u64 = irqs.iter().map(|l| l.total()).sum();
    assert!(total > 0, "no e1000e interrupt counted: {irqs:?}");
    g.assert_clean_dmesg("e1000e");
    let dom = vfio_domain(&g.dump(), &g.nic_bdf.clone());
    println!("hierarchy view:\n    {}", dom.text());
    let used: BTreeSet<usize> = irqs.iter().map(|l| l.hwirq).collect();
    HostCalls::of(&dom).assert_dynamic(&used, &dom.host_enabled());
    g.poweroff();
}

/// A wrapper run instead of the vmm: runs it once per case, each between markers, so that
/// one L1 boot checks them all. `$VMM_REAL` is the vmm, "$@" its base arguments.
const BAD_INPUT_WRAPPER: &str = r#"#!/bin/sh
run() {
    name=$1; shift
    echo "@@CASE $name"
    timeout 120 "$@" </dev/null 2>&1
    echo "@@CASE-END $name rc=$?"
}
notbound=""
for d in /sys/bus/pci/devices/*; do
    [ "$(basename "$(readlink "$d/driver" 2>/dev/null)")" = vfio-pci ] || notbound=${d##*/}
done
missing=0000:00:1e.7
[ -e /sys/bus/pci/devices/$missing ] && missing=0000:7f:1f.7
run not-bound "$VMM_REAL" "$@" --device vfio,host=$notbound
run nonexistent "$VMM_REAL" "$@" --device vfio,host=$missing
run twice "$VMM_REAL" "$@" --device vfio,host=$VFIO_NVME --device vfio,host=$VFIO_NVME
if [ "$(id -u)" = 0 ] && grep -q '^nobody:' /etc/passwd 2>/dev/null; then
    chmod 666 /dev/kvm
    # su takes one command string: quote every argument (the cmdline has a space)
    q=""
    for a in "$VMM_REAL" "$@" --device "vfio,host=$VFIO_NVME"; do
        q="$q '$(printf '%s' "$a" | sed "s/'/'\\\\''/g")'"
    done
    run no-permission su -s /bin/sh nobody -c "exec $q"
fi
echo "@@CASES done"
"#;

/// Bad input: a device not bound to vfio-pci, a BDF that does not exist, the same device
/// twice, no permission on /dev/vfio/N: each one `error:` line, exit 1, no panic.
fn bad_input_one_error_line_exit_1() {
    let d = devices(true, false);
    with_l1_retry(|| bad_input_once(&d))
}

fn bad_input_once(d: &Devices) {
    let _g = boot_lock();
    let dir = std::env::temp_dir().join(format!("vmm-vfio-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let wrapper = dir.join("bad-input.sh");
    std::fs::write(&wrapper, BAD_INPUT_WRAPPER).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let passwd = dir.join("passwd");
    std::fs::write(
        &passwd,
        "root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n",
    )
    .unwrap();
    let group = dir.join("group");
    std::fs::write(&group, "root:x:0:\nnogroup:x:65534:\n").unwrap();

    // smaller guest RAM (less to map for DMA per case); --memory may be given only once
    let mut args = standard_guest_args();
    let mem = args
        .iter()
        .position(|a| a == "--memory")
        .expect("standard args set --memory");
    args[mem + 1] = "size=256M".into();
    let mut cfg = vfio_config(&args);
    let vmm = cfg.vmm.clone();
    cfg.vmm = wrapper;
    let real = match cfg.mode {
        Mode::Nested => {
            cfg.nested_args.extend([
                "--file".into(),
                format!("{}:/vmm-real", vmm.display()),
                "--file".into(),
                format!("{}:/etc/passwd", passwd.display()),
                "--file".into(),
                format!("{}:/etc/group", group.display()),
            ]);
            "/vmm-real".to_string()
        }
        Mode::Direct => vmm.display().to_string(),
    };
    let nvme = d.nvme.clone().unwrap();
    let env = [("VMM_REAL", real.as_str()), ("VFIO_NVME", nvme.as_str())];
    let env: Vec<(&str, &str)> = match cfg.mode {
        Mode::Nested => env[..1].to_vec(),
        Mode::Direct => env.to_vec(),
    };
    let mut s = GuestSession::start_controlled(&cfg, &env).unwrap_or_else(|e| panic!("{e}"));
    s.wait_for("@@CASES done", Duration::from_secs(900))
        .unwrap_or_else(|e| panic!("{e}"));
    let _ = s.wait_exit(Duration::from_secs(60));
    let lines: Vec<String> = s.lines().into_iter().map(|l| l.text).collect();
    let mut seen = Vec::new();
    let mut failures = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let Some(name) = l.trim().strip_prefix("@@CASE ") else {
            continue;
        };
        let end = lines[i..]
            .iter()
            .position(|e| e.contains("@@CASE-END "))
            .map(|p| i + p)
            .unwrap_or_else(|| panic!("case {name} did not end"));
        let rc: i32 = lines[end]
            .rsplit_once("rc=")
            .and_then(|(_, r)| r.trim().parse().ok())
            .unwrap_or(-1);
        let out = &lines[i + 1..end];
        let errors: Vec<&String> = out
            .iter()
            .filter(|o| o.trim_start().starts_with("error:"))
            .collect();
        let panicked = out.iter().any(|o| o.contains("panicked"));
        println!(
            "case {name}: rc={rc}\n    {}",
            out.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n    ")
        );
        seen.push(name.to_string());
        if rc != 1 || errors.len() != 1 || panicked {
            failures.push(format!(
                "{name}: exit {rc} (want 1), {} `error:` lines (want 1), panic: {panicked}",
                errors.len()
            ));
        }
    }
    let mut want = vec!["not-bound", "nonexistent", "twice"];
    if cfg.mode == Mode::Nested {
        want.push("no-permission");
    } else {
        println!("direct mode: the no-permission case needs root and a `nobody` user; not run");
    }
    assert_eq!(seen, want, "cases run");
    assert!(
        failures.is_empty(),
        "bad input cases:\n  {}",
        failures.join("\n  ")
    );
}

/// A wrapper that runs the vmm once per MSI-X mode on the same L1 (same host device).
/// The vmm runs as a job of its own (given the console explicitly: a job's stdin is
/// /dev/null otherwise) so that the SIGUSR1 the test sends to this wrapper reaches it: the
/// trap runs while `wait` waits, and `wait` is repeated until the vmm is gone.
const BENCH_WRAPPER: &str = r#"#!/bin/sh
exec 3<&0
child=""
trap '[ -n "$child" ] && kill -USR1 "$child"' USR1
for m in dynamic reenable; do
    echo "@@BENCH start $m"
    "$VMM_REAL" "$@" --device vfio,host=$VFIO_NVME,msix=$m <&3 &
    child=$!
    while :; do
        wait "$child"
        rc=$?
        kill -0 "$child" 2>/dev/null || break
    done
    child=""
    echo "@@BENCH end $m rc=$rc"
done
"#;

/// Benchmark (figures only, no timed assertion): the guest's bring-up of the NVMe's vectors
/// with dynamic host MSI-X allocation vs the forced disable/re-enable fallback, on the same
/// L1 and device: host SET_IRQS calls, host MSI-X disables, and the time from loading the
/// nvme driver to its last queue vector appearing (L2 uptime).
fn bench_nvme_vector_bringup_dynamic_vs_reenable() {
    let d = devices(true, false);
    with_l1_retry(|| bench_once(&d))
}

fn bench_once(d: &Devices) {
    let _g = boot_lock();
    let dir = std::env::temp_dir().join(format!("vmm-vfio-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let wrapper = dir.join("bench.sh");
    std::fs::write(&wrapper, BENCH_WRAPPER).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut args = standard_guest_args();
    args.push("--print-interrupts".into());
    let mut cfg = vfio_config(&args);
    let vmm: PathBuf = cfg.vmm.clone();
    cfg.vmm = wrapper;
    let real = match cfg.mode {
        Mode::Nested => {
            cfg.nested_args
                .extend(["--file".into(), format!("{}:/vmm-real", vmm.display())]);
            "/vmm-real".to_string()
        }
        Mode::Direct => vmm.display().to_string(),
    };
    let nvme = d.nvme.clone().unwrap();
    let mut env = vec![("VMM_REAL", real.as_str())];
    if cfg.mode == Mode::Direct {
        env.push(("VFIO_NVME", nvme.as_str()));
    }
    let s = GuestSession::start_controlled(&cfg, &env).unwrap_or_else(|e| panic!("{e}"));
    let timeout = cmd_timeout(s.mode());
    let mut g = Guest {
        s,
        seq: 0,
        timeout,
        nvme_bdf: String::new(),
        nic_bdf: String::new(),
    };
    let mut rows = Vec::new();
    for mode in ["dynamic", "reenable"] {
        g.s.wait_for(&format!("@@BENCH start {mode}"), boot_timeout(g.s.mode()))
            .unwrap_or_else(|e| panic!("{e}"));
        g.s.wait_for(READY, boot_timeout(g.s.mode()))
            .unwrap_or_else(|e| panic!("{e}"));
        g.s.wait_for_prompt(PROMPT, timeout)
            .unwrap_or_else(|e| panic!("{e}"));
        g.ok("stty cols 1024");
        // L2 uptime (ms) at driver load and when the last queue vector is there: each I/O
        // queue is created after its vector was requested, so all vectors are up when the
        // namespace appears
        let out = g.ok(
            "t0=$(cut -d' ' -f1 /proc/uptime); load-driver nvme >/dev/null; i=0; \
             while [ ! -e /dev/nvme0n1 ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; \
             t1=$(cut -d' ' -f1 /proc/uptime); echo bringup t0=$t0 t1=$t1 \
             vectors=$(grep -c nvme0q /proc/interrupts)",
        );
        let f = out
            .iter()
            .find_map(|l| {
                l.contains("bringup t0=")
                    .then(|| tests::parse_fields(l, "bringup"))
            })
            .unwrap_or_else(|| panic!("no bring-up line: {out:?}"));
        let secs = f["t1"].parse::<f64>().unwrap_or(0.0) - f["t0"].parse::<f64>().unwrap_or(0.0);
        let vectors: u64 = f["vectors"].parse().unwrap_or(0);
        g.nvme_pattern(mode);
        // the host calls of the bring-up (the exit dump adds the releases of the teardown)
        let dom = vfio_domain(&g.dump(), &nvme);
        println!("{mode}: after bring-up:\n    {}", dom.text());
        assert_eq!(
            dom.host_enabled().len() as u64,
            vectors,
            "{mode}: host vectors enabled vs the guest's {vectors}"
        );
        rows.push((mode, HostCalls::of(&dom), vectors, secs));
        let from = g.s.lines().len();
        g.s.send_line("poweroff -f");
        let end =
            g.s.wait_for(&format!("@@BENCH end {mode} rc="), timeout)
                .unwrap_or_else(|e| panic!("{e}"));
        assert!(end.ends_with("rc=0"), "vmm ({mode}) exit: {end}");
        let lines: Vec<String> = g.s.lines()[from..].iter().map(|l| l.text.clone()).collect();
        let dom = vfio_domain(&parse_dump(&lines), &nvme);
        println!("{mode}: exit dump:\n    {}", dom.text());
    }
    g.s.wait_exit(timeout).unwrap_or_else(|e| panic!("{e}"));
    println!("NVMe vector bring-up (nested: L2 on the vmm in L1 under QEMU TCG; one run each)");
    println!(
        "{:<10} {:>14} {:>26} {:>14} {:>14} {:>22}",
        "msix",
        "host SET_IRQS",
        "(enable, bind, release)",
        "host disables",
        "guest vectors",
        "driver load to disk"
    );
    for (mode, c, vectors, secs) in &rows {
        let parts = format!("({}, {}, {})", c.enables, c.binds, c.releases);
        println!(
            "{mode:<10} {:>14} {parts:>26} {:>14} {vectors:>14} {secs:>20.2} s",
            c.set_irqs, c.disables
        );
    }
    let (dynamic, reenable) = (&rows[0], &rows[1]);
    println!(
        "reenable/dynamic: SET_IRQS calls {:.2}x, bring-up time {:.2}x",
        reenable.1.set_irqs as f64 / dynamic.1.set_irqs.max(1) as f64,
        reenable.3 / dynamic.3.max(1e-9)
    );
    // what the modes are (counters, not times)
    dynamic.1.assert_dynamic_counts(dynamic.2 as usize);
    assert!(
        reenable.1.disables > 0,
        "the forced fallback never disabled MSI-X on the host"
    );
}

/// `--cmdline` may be given once: a later one (from a test's extra arguments) replaces the
/// standard one.
fn last_cmdline_only(args: &mut Vec<String>) {
    let at: Vec<usize> = (0..args.len())
        .filter(|&i| args[i] == "--cmdline")
        .collect();
    for &i in at.iter().rev().skip(1) {
        args.drain(i..(i + 2).min(args.len()));
    }
}

/// INTx: L2 boots with `pci=nomsi`, so the stock nvme driver takes the pass-through NVMe's
/// legacy interrupt — an I/O APIC level line (`IO-APIC 16-fasteoi nvme0q0`) that the vmm
/// drives from the host's INTx trigger and that the guest's EOI unmasks on the host. The
/// namespace appears, an O_DIRECT pattern reads back identical, the line counts interrupts
/// in L2 and the vmm's INTx counters (relayed, unmasks) move; no MSI/MSI-X host call.
fn nvme_intx_with_pci_nomsi() {
    let d = devices(true, false);
    with_l1_retry(|| nvme_intx_once(&d))
}

fn nvme_intx_once(d: &Devices) {
    let _g = boot_lock();
    let nvme = d.nvme.clone().unwrap();
    let mut g = Guest::boot(&[
        "--cmdline".into(),
        "console=ttyS0 quiet pci=nomsi".into(),
        "--device".into(),
        format!("vfio,host={nvme}"),
    ]);
    g.load("nvme");
    g.wait_path("/dev/nvme0n1", 120);
    g.ok("cat /sys/block/nvme0n1/size /sys/class/nvme/nvme0/model");
    g.nvme_pattern("intx");
    let irqs = g.interrupts("nvme0q0");
    show_irqs("L2 nvme interrupts", &irqs);
    assert_eq!(irqs.len(), 1, "{irqs:?}");
    let line = &irqs[0];
    assert!(
        line.chip.contains("IO-APIC") && line.text.contains("fasteoi"),
        "nvme not on a level I/O APIC line: {}",
        line.text
    );
    assert!(
        (16..24).contains(&line.hwirq),
        "not the pin the _PRT gives: {}",
        line.text
    );
    assert!(line.total() > 0, "no interrupts on {}", line.text);
    let dom = vfio_domain(&g.dump(), &g.nvme_bdf.clone());
    println!(
        "hierarchy view:
    {}",
        dom.text()
    );
    assert!(dom.text().contains("INTx on"), "{}", dom.text());
    let relayed = dom.need("INTx on: relayed");
    let unmasks = dom.need("unmasks");
    assert!(relayed > 0 && unmasks > 0, "{}", dom.text());
    assert!(
        unmasks <= relayed && relayed - unmasks <= 1,
        "each relayed INTx is unmasked after the guest's EOI: {}",
        dom.text()
    );
    assert_eq!(dom.need(KEY_SET_IRQS), 0, "MSI/MSI-X host calls");
    if g.s.mode() == Mode::Nested {
        let host = g.host("cat /proc/interrupts");
        let tag = format!("vfio-intx({})", g.nvme_bdf);
        assert!(
            host.iter().any(|l| l.contains(&tag)),
            "no {tag} in L1's /proc/interrupts"
        );
    }
    g.assert_clean_dmesg("nvme over INTx");
    g.poweroff();
}

tests::test_main!(
    harness_l1_binds_vfio_devices,
    nvme_stock_driver_dynamic_msix,
    nvme_rebind_and_affinity_no_iommu,
    nvme_rebind_and_affinity_iommu_intel,
    e1000e_probes_with_msix,
    bad_input_one_error_line_exit_1,
    bench_nvme_vector_bringup_dynamic_vs_reenable,
    nvme_intx_with_pci_nomsi,
);
