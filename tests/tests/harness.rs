//! Self-tests of the boot-test harness with a shell stand-in for the vmm:
//! argument passing, output capture, typed input and exit status, directly and
//! (when the probe says so) through the nested QEMU harness.

use std::path::PathBuf;
use std::time::Duration;

use tests::{assets, boot_lock, probe_mode, GuestSession, Mode, SessionConfig, NESTED_START};

const STANDIN: &str = r#"#!/bin/sh
echo "standin: argc=$#"
for a in "$@"; do echo "standin: arg=[$a]"; done
if [ -c /dev/kvm ]; then echo "standin: kvm=yes"; else echo "standin: kvm=no"; fi
echo "standin: to stderr" >&2
printf 'standin prompt> '
read -r line
echo "standin: got [$line]"
exit 7
"#;

fn standin() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vmm-standin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("vmm-standin.sh");
    std::fs::write(&p, STANDIN).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

fn run_standin(mode: Mode, kernel: PathBuf, initramfs: PathBuf, timeout: Duration) {
    let cfg = SessionConfig {
        mode,
        vmm: standin(),
        kernel,
        initramfs,
        args: vec![
            "--cmdline".into(),
            "console=ttyS0 quiet".into(),
            "--memory".into(),
            "size=512M".into(),
        ],
        nested_args: vec![],
    };
    let mut s = GuestSession::start_with(&cfg).unwrap();
    s.wait_for("standin: argc=8", timeout).unwrap();
    s.wait_for("standin: arg=[console=ttyS0 quiet]", timeout)
        .unwrap();
    s.wait_for("standin: arg=[size=512M]", timeout).unwrap();
    let kvm = s.wait_for("standin: kvm=", timeout).unwrap();
    if mode == Mode::Nested {
        assert!(kvm.contains("kvm=yes"), "no /dev/kvm in L1: {kvm}");
        assert!(s.vmm_start_instant().is_some(), "{NESTED_START} not seen");
    }
    s.wait_for_prompt("standin prompt> ", timeout).unwrap();
    s.send_line("typed text with  spaces");
    s.wait_for("standin: got [typed text with  spaces]", timeout)
        .unwrap();
    assert_eq!(s.wait_exit(timeout).unwrap(), 7);
    // errors carry the output tail
    let err = s
        .wait_for("never printed", Duration::from_millis(10))
        .unwrap_err();
    assert!(err.contains("standin: got"), "{err}");
}

#[test]
fn harness_direct_standin() {
    let dir = std::env::temp_dir();
    run_standin(
        Mode::Direct,
        dir.join("k"),
        dir.join("i"),
        Duration::from_secs(10),
    );
}

#[test]
fn harness_nested_standin() {
    if probe_mode() != Mode::Nested {
        eprintln!("probe says direct: nested harness not needed here, skipping");
        return;
    }
    let _g = boot_lock();
    let a = assets();
    run_standin(
        Mode::Nested,
        a.kernel,
        a.initramfs,
        Duration::from_secs(120),
    );
}
