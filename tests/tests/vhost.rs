//! virtio-net on vhost-net and virtio-vsock on vhost-vsock (issue 11 items 3 and 4).
//!
//! Host tier (this machine, no guest): a tap the vmm would create is gone after a vhost
//! error; `Tap` creates a missing tap and leaves an existing one in place.
//!
//! Nested tier (one L1 boot, `nested-run.sh --vhost` loads tun, vhost_net and vhost_vsock
//! in L1; the L2 image is `resources/vhost-initramfs.sh`): over a tap that exists only in
//! L1 with link-local addresses, L1 and L2 ping each other and move data both ways over TCP
//! with matching SHA-256 sums; during the L1 -> L2 transfer no queue interrupt passes
//! through a VMM thread (the `relayed` counters of the vhost-net domain stay 0 in the
//! SIGUSR1 dumps while the vectors are unmasked and L2's queue interrupts grow); during the
//! L2 -> L1 transfer L2 moves the queue interrupts between its CPUs (each move masks and
//! rewrites the MSI-X entry) and nothing is lost; an L1 program connects to a vsock
//! listener in L2 and gets its reply; a second vmm asking for the same CID fails with one
//! `error:` line and status 1 and leaves no tap behind.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tests::{
    boot_lock, boot_timeout, build_initramfs, skip, standard_guest_args, vmm_bin, with_l1_retry,
    GuestSession, Mode, SessionConfig, PROMPT, READY,
};

/// The tap the vmm creates in L1.
const TAP: &str = "vmmtap0";
const MAC: &str = "52:54:00:12:34:56";
const CID: u32 = 42;
const L1_IP: &str = "169.254.0.1";
const L2_IP: &str = "169.254.0.2";
/// MiB moved L1 -> L2 (interrupt-path check) and L2 -> L1 (with affinity moves).
const MIB_IN: u32 = 16;
const MIB_OUT: u32 = 8;

tests::test_main!(
    host_vhost_net_missing_leaves_no_tap,
    host_vhost_vsock_missing,
    host_tap_created_then_removed,
    host_existing_tap_left_in_place,
    nested_net_and_vsock,
);

fn scratch_kernel() -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("vmm-vhost-k-{}", std::process::id()));
    std::fs::write(&p, vec![0u8; 64 * 1024]).unwrap();
    p
}

/// Runs the vmm on this host; returns its status and its stderr lines.
fn run_vmm(args: &[&str]) -> (i32, Vec<String>) {
    let out = Command::new(vmm_bin())
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run vmm");
    let err = String::from_utf8_lossy(&out.stderr);
    (
        out.status.code().unwrap_or(-1),
        err.lines().map(String::from).collect(),
    )
}

fn iface_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

fn host_vhost_net_missing_leaves_no_tap() {
    if Path::new("/dev/vhost-net").exists() {
        skip("/dev/vhost-net exists on this host (the nested test covers vhost-net)");
    }
    if !Path::new("/dev/kvm").exists() {
        skip("no /dev/kvm: the vmm stops before its devices");
    }
    let k = scratch_kernel();
    let tap = format!("vmmh{}", std::process::id() % 100000);
    let (code, lines) = run_vmm(&[
        "--kernel",
        k.to_str().unwrap(),
        "--net",
        &format!("tap={tap}"),
    ]);
    let _ = std::fs::remove_file(&k);
    assert_eq!(code, 1, "{lines:?}");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains("/dev/vhost-net"),
        "{lines:?}"
    );
    assert!(!iface_exists(&tap), "tap {tap} left behind");
}

fn host_vhost_vsock_missing() {
    if Path::new("/dev/vhost-vsock").exists() {
        skip("/dev/vhost-vsock exists on this host (the nested test covers vhost-vsock)");
    }
    if !Path::new("/dev/kvm").exists() {
        skip("no /dev/kvm: the vmm stops before its devices");
    }
    let k = scratch_kernel();
    let (code, lines) = run_vmm(&["--kernel", k.to_str().unwrap(), "--vsock", "cid=7"]);
    let _ = std::fs::remove_file(&k);
    assert_eq!(code, 1, "{lines:?}");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains("/dev/vhost-vsock"),
        "{lines:?}"
    );
}

/// Skips unless this process may create taps.
fn need_tun() {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
    {
        skip(format!("/dev/net/tun: {e}"));
    }
}

fn host_tap_created_then_removed() {
    need_tun();
    let name = format!("vmmc{}", std::process::id() % 100000);
    assert!(!iface_exists(&name));
    let tap = match vhost_devices::Tap::open(&name) {
        Ok(t) => t,
        Err(e @ vhost_devices::TapError::Attach { .. }) if e.to_string().contains("CAP_NET") => {
            skip(format!("cannot create taps here: {e}"))
        }
        Err(e) => panic!("{e}"),
    };
    assert!(tap.created());
    assert!(iface_exists(&name), "tap {name} not created");
    drop(tap);
    // The tap goes when its last descriptor closes: a child another test thread forks
    // meanwhile holds a copy (close-on-exec) until it execs, so allow a moment for that.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while iface_exists(&name) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(!iface_exists(&name), "tap {name} left behind");
}

fn host_existing_tap_left_in_place() {
    need_tun();
    let name = format!("vmme{}", std::process::id() % 100000);
    let ok = Command::new("ip")
        .args(["tuntap", "add", "dev", &name, "mode", "tap", "vnet_hdr"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        skip("`ip tuntap add` failed (no iproute2 or no CAP_NET_ADMIN)");
    }
    let r = vhost_devices::Tap::open(&name).map(|t| t.created());
    let still = iface_exists(&name);
    let _ = Command::new("ip").args(["link", "del", &name]).status();
    assert!(!r.unwrap(), "an existing tap is not ours");
    assert!(still, "existing tap {name} removed");
}

fn nested_net_and_vsock() {
    if tests::probe_mode() != Mode::Nested {
        skip("needs the nested harness (L1 loads vhost_net and vhost_vsock)");
    }
    with_l1_retry(nested_net_and_vsock_once)
}

/// `(relayed, trigger)` of each vector of the vhost-net domain in the last SIGUSR1 dump
/// printed after `from` lines.
fn net_vectors(s: &GuestSession, from: usize) -> Vec<(u64, String, bool)> {
    let lines = s.lines();
    let mut in_net = false;
    let mut v = Vec::new();
    for l in &lines[from..] {
        let t = l.text.trim();
        if t.starts_with("domain ") {
            in_net = t.contains("chip vhost-net");
            continue;
        }
        if in_net && t.starts_with('[') {
            let relayed = t
                .split_whitespace()
                .find_map(|w| w.strip_prefix("relayed="))
                .and_then(|n| n.parse().ok())
                .unwrap_or(u64::MAX);
            let trigger = t
                .split_whitespace()
                .find_map(|w| w.strip_prefix("trigger="))
                .unwrap_or("?")
                .to_string();
            v.push((relayed, trigger, t.contains(" unmasked")));
        } else if in_net && !t.starts_with('[') {
            in_net = false;
        }
    }
    v
}

/// Sum of L2's /proc/interrupts counts for the virtio-net queue interrupts.
fn l2_net_irqs(s: &mut GuestSession, tag: &str) -> u64 {
    let t = tests::cmd_timeout(s.mode());
    let lines = s.run_marked(
        "grep -E 'input\\.0|output\\.0' /proc/interrupts",
        &format!("irqs-{tag}-done"),
        t,
    );
    lines
        .iter()
        .filter(|l| l.contains("input.0") || l.contains("output.0"))
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .take_while(|w| w.chars().all(|c| c.is_ascii_digit()))
                .filter_map(|w| w.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

fn nested_net_and_vsock_once() {
    let _g = boot_lock();
    let initramfs = build_initramfs("vhost-initramfs.sh");
    let probe = tests::assets_dir().join("guest/vhost-probe");
    let mut args = standard_guest_args();
    args.extend(
        [
            "--net",
            &format!("tap={TAP},mac={MAC}"),
            "--vsock",
            &format!("cid={CID}"),
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let mut cfg = SessionConfig::from_env(&args);
    cfg.initramfs = initramfs;
    cfg.nested_args.extend([
        "--vhost".to_string(),
        "--file".to_string(),
        format!("{}:/bin/vhost-probe", probe.display()),
    ]);
    let mut s = GuestSession::start_controlled(&cfg, &[]).unwrap_or_else(|e| panic!("{e}"));
    let t = tests::cmd_timeout(s.mode());
    let long = Duration::from_secs(600);
    s.wait_for(READY, boot_timeout(s.mode()))
        .unwrap_or_else(|e| panic!("{e}"));
    s.wait_for_prompt(PROMPT, t)
        .unwrap_or_else(|e| panic!("{e}"));

    // L2: drivers, eth0 on 169.254.0.2, vsock listener; L1: the tap on 169.254.0.1
    s.send_line(". /vhost-setup.sh");
    let done = s
        .wait_for("@@L2 setup done", t)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(done.contains(&format!("mac={MAC}")), "{done}");
    s.l1_run(&format!(
        "ip addr add {L1_IP}/16 dev {TAP} && ip link set {TAP} up && echo @@L1 tap up"
    ));
    s.wait_for("@@L1 tap up", t)
        .unwrap_or_else(|e| panic!("{e}"));

    // ping both ways
    let out = s.run_marked(&format!("ping -c 3 -W 5 {L1_IP}"), "ping-l2-done", long);
    assert!(
        out.iter().any(|l| l.contains("3 packets received")),
        "L2 -> L1 ping: {out:?}"
    );
    s.l1_run(&format!(
        "if ping -c 3 -W 5 {L2_IP} >/dev/null; then echo @@L1 ping ok; else echo @@L1 ping failed; fi"
    ));
    let l = s
        .wait_for("@@L1 ping ", long)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(l.contains("@@L1 ping ok"), "L1 -> L2 ping: {l}");

    // vsock: L1 program -> L2 listener
    s.l1_run(&format!(
        "vhost-probe vsock-connect {CID} 1234 hello-from-l1 | sed 's/^/@@L1 vsock: /'"
    ));
    let l = s
        .wait_for("@@L1 vsock: ", long)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        l.contains(&format!("reply from CID {CID}: hello-from-l1")),
        "vsock answer: {l}"
    );

    // a second vmm asking for the same CID (and a tap of its own): one error line, status
    // 1, no tap left behind
    s.l1_run(
        "/vmm --kernel /l2/vmlinuz --serial off --net tap=vmmtap9 --vsock cid=42 >/tmp/second 2>&1; \
         rc=$?; sed 's/^/@@L1 second: /' /tmp/second; \
         if [ -e /sys/class/net/vmmtap9 ]; then left=yes; else left=no; fi; \
         echo \"@@L1 second-exit $rc lines=$(wc -l </tmp/second) tap-left=$left\"",
    );
    let l = s
        .wait_for("@@L1 second-exit", long)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(l.contains("second-exit 1 lines=1 tap-left=no"), "{l}");
    let err = s
        .lines()
        .into_iter()
        .find(|l| l.text.contains("@@L1 second: "))
        .map(|l| l.text)
        .unwrap_or_default();
    assert!(
        err.contains("error: ") && err.contains("cid=42 is in use"),
        "second vmm: {err}"
    );

    // L1 -> L2, no affinity moves: the vhost worker's signals never reach a VMM thread
    let before_irqs = l2_net_irqs(&mut s, "before");
    // The sums go to files and are printed only once both ends are done: L1's and L2's
    // console output (and the vmm's SIGUSR1 dump) share one console, so a line printed
    // while the other side prints can be cut in two.
    s.send_line(
        "(vhost-probe tcp-recv 5000 | sha256sum >/tmp/rx-in.sum; echo \"@@L2 rx\"\"-in-done\") &",
    );
    s.l1_run(&format!(
        "dd if=/dev/urandom of=/tmp/tx bs=1M count={MIB_IN} 2>/dev/null; \
         sha256sum </tmp/tx >/tmp/tx-in.sum; echo @@L1 tx-in-ready; \
         vhost-probe tcp-send {L2_IP} 5000 </tmp/tx"
    ));
    s.wait_for("@@L1 tx-in-ready", long)
        .unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    let dump_from = s.lines().len();
    std::thread::sleep(Duration::from_secs(2));
    s.signal("USR1"); // mid-transfer snapshot
    s.wait_for("@@L2 rx-in-done", long)
        .unwrap_or_else(|e| panic!("{e}"));
    let secs = started.elapsed().as_secs_f64();
    let sums = |s: &mut GuestSession, l2_file: &str, l1_file: &str| {
        s.send_line(&format!("echo \"@@L2 su\"\"m $(cut -c1-64 {l2_file})\""));
        let l2 = s.wait_for("@@L2 sum ", t).unwrap_or_else(|e| panic!("{e}"));
        s.l1_run(&format!("echo \"@@L1 sum $(cut -c1-64 {l1_file})\""));
        let l1 = s.wait_for("@@L1 sum ", t).unwrap_or_else(|e| panic!("{e}"));
        let hex = |l: &str, tag: &str| {
            l.split_once(tag)
                .map(|(_, r)| r.split_whitespace().next().unwrap_or("").to_string())
                .unwrap_or_default()
        };
        (hex(&l1, "@@L1 sum "), hex(&l2, "@@L2 sum "))
    };
    let (l1_sum, l2_sum) = sums(&mut s, "/tmp/rx-in.sum", "/tmp/tx-in.sum");
    assert_eq!(l1_sum.len(), 64, "L1 sum: {l1_sum}");
    assert_eq!(l1_sum, l2_sum, "L1 -> L2 checksum");
    eprintln!(
        "L1 -> L2: {MIB_IN} MiB in {secs:.1} s ({:.1} MiB/s, TCG nested)",
        f64::from(MIB_IN) / secs
    );
    let after_irqs = l2_net_irqs(&mut s, "after");
    let dump_at = s.lines().len();
    s.signal("USR1");
    s.wait_for("serial output: ", t)
        .unwrap_or_else(|e| panic!("{e}"));
    // the two dumps: mid-transfer and after
    for (what, from) in [("mid-transfer", dump_from), ("after", dump_at)] {
        let v = net_vectors(&s, from);
        assert!(
            !v.is_empty(),
            "{what}: no vhost-net domain in the dump:\n{}",
            s.tail()
        );
        for (relayed, trigger, unmasked) in &v {
            if *unmasked {
                assert_eq!(
                    *relayed, 0,
                    "{what}: a queue interrupt went through the VMM: {v:?}"
                );
                assert_eq!(trigger, "kvm", "{what}: {v:?}");
            }
        }
        assert!(v.iter().filter(|x| x.2).count() >= 2, "{what}: {v:?}");
    }
    assert!(
        after_irqs > before_irqs + 10,
        "L2 queue interrupts {before_irqs} -> {after_irqs}: the transfer raised too few"
    );
    eprintln!(
        "L2 virtio-net queue interrupts during the transfer: {}",
        after_irqs - before_irqs
    );

    // L2 -> L1 while L2 moves the queue interrupts between its two CPUs
    s.l1_run("vhost-probe tcp-recv 5001 | sha256sum >/tmp/rx-out.sum; echo @@L1 rx-out-done");
    // each round moves both queue interrupts to the other CPU and counts the writes that
    // took effect; it runs until the transfer is over
    s.send_line(
        "(rm -f /tmp/stop; n=0; i=0; while [ ! -e /tmp/stop ]; do i=$((i + 1)); \
         for q in $(grep -E 'input\\.0|output\\.0' /proc/interrupts | cut -d: -f1); \
         do echo $((i % 2 + 1)) > /proc/irq/$q/smp_affinity && n=$((n + 1)); done; \
         sleep 0.05; done; echo \"@@L2 mo\"\"ves $n\") &",
    );
    s.send_line(&format!(
        "dd if=/dev/urandom of=/tmp/tx bs=1M count={MIB_OUT} 2>/dev/null; \
         sha256sum </tmp/tx >/tmp/tx-out.sum; vhost-probe tcp-send {L1_IP} 5001 </tmp/tx"
    ));
    s.wait_for("@@L1 rx-out-done", long)
        .unwrap_or_else(|e| panic!("{e}"));
    s.send_line("touch /tmp/stop");
    let moves = s
        .wait_for("@@L2 moves ", t)
        .unwrap_or_else(|e| panic!("{e}"));
    let n: u64 = moves
        .split_once("@@L2 moves ")
        .and_then(|(_, r)| r.trim().parse().ok())
        .unwrap_or(0);
    assert!(n >= 4, "affinity moves during the transfer: {moves}");
    let (l1_sum, l2_sum) = sums(&mut s, "/tmp/tx-out.sum", "/tmp/rx-out.sum");
    assert_eq!(l2_sum.len(), 64, "L2 sum: {l2_sum}");
    assert_eq!(l1_sum, l2_sum, "L2 -> L1 checksum with affinity moves");
    eprintln!("L2 -> L1 with {n} queue-interrupt moves: checksums match");
    // and the link still works both ways after the moves
    let out = s.run_marked(&format!("ping -c 2 -W 5 {L1_IP}"), "ping-after-done", long);
    assert!(
        out.iter().any(|l| l.contains("2 packets received")),
        "ping after the moves: {out:?}"
    );
    // how many signals met a vector in the middle of a move (masked): relayed, not lost
    let last = s.lines().len();
    s.signal("USR1");
    s.wait_for("serial output: ", t)
        .unwrap_or_else(|e| panic!("{e}"));
    let v = net_vectors(&s, last);
    eprintln!("vhost-net vectors after the moves (relayed, trigger, unmasked): {v:?}");

    s.send_line("poweroff -f");
    let code = s.wait_exit(t).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(code, 0, "vmm exit status:\n{}", s.tail());
}
