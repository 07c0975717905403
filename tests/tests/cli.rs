//! Command-line errors of the vmm binary, run on this host: every case fails before a guest
//! runs, so no KVM guest (and no nested harness) is needed. Each asserts the documented
//! exit status (2 usage error, 1 VMM error) and exactly one `error:` line on stderr.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tests::vmm_bin;

/// Exit status for a usage error (bad or unusable arguments).
const USAGE: i32 = 2;
/// Exit status for a VMM error.
const VMM_ERROR: i32 = 1;

/// Runs the vmm and returns its exit status and its single stderr line (asserted).
fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(vmm_bin())
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .output()
        .expect("run vmm");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let code = out
        .status
        .code()
        .unwrap_or_else(|| panic!("vmm {args:?} died by a signal: {}", out.status));
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(
        lines.len() == 1 && lines[0].starts_with("error: "),
        "vmm {args:?}: expected exactly one stderr line starting with `error: `, got:\n{stderr}"
    );
    (code, lines[0].to_string())
}

/// A scratch directory with a small file standing in for a kernel.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let d = std::env::temp_dir().join(format!("vmm-cli-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("kernel"), vec![0x5au8; 64 * 1024]).unwrap();
        Scratch(d)
    }
    fn path(&self, name: &str) -> String {
        self.0.join(name).to_str().unwrap().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn missing_kernel_names_the_argument() {
    assert_eq!(
        run(&[]),
        (
            USAGE,
            "error: the following required arguments were not provided: --kernel <PATH>".into()
        )
    );
}

#[test]
fn unknown_argument_is_a_usage_error() {
    let s = Scratch::new("unknown");
    assert_eq!(
        run(&["--kernel", &s.path("kernel"), "--bogus"]),
        (USAGE, "error: unexpected argument '--bogus' found".into())
    );
}

#[test]
fn initramfs_dev_zero_is_refused_without_reading() {
    let s = Scratch::new("zero");
    assert_eq!(
        run(&["--kernel", &s.path("kernel"), "--initramfs", "/dev/zero"]),
        (
            USAGE,
            "error: --initramfs /dev/zero: is a character device, not a regular file".into()
        )
    );
}

#[test]
fn kernel_directory_is_refused_naming_the_argument() {
    let s = Scratch::new("dir");
    let dir = s.0.to_str().unwrap().to_string();
    assert_eq!(
        run(&["--kernel", &dir]),
        (
            USAGE,
            format!("error: --kernel {dir}: is a directory, not a regular file")
        )
    );
}

#[test]
fn initramfs_fifo_is_refused_naming_the_argument() {
    let s = Scratch::new("fifo");
    let fifo = s.path("fifo");
    let c = std::ffi::CString::new(fifo.clone()).unwrap();
    // SAFETY: mkfifo on a NUL-terminated path in our scratch directory.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    assert_eq!(
        run(&["--kernel", &s.path("kernel"), "--initramfs", &fifo]),
        (
            USAGE,
            format!("error: --initramfs {fifo}: is a FIFO, not a regular file")
        )
    );
}

#[test]
fn missing_kernel_file_is_refused_naming_the_argument() {
    let (code, line) = run(&["--kernel", "/nonexistent/bzImage"]);
    assert_eq!(code, USAGE);
    assert!(
        line.starts_with("error: --kernel /nonexistent/bzImage: No such file"),
        "{line}"
    );
}

#[test]
fn kernel_larger_than_ram_says_so() {
    let s = Scratch::new("big");
    let big = s.path("big");
    // Sparse: nothing is written, and the vmm must not read it either.
    std::fs::File::create(&big)
        .unwrap()
        .set_len(128 << 20)
        .unwrap();
    let (code, line) = run(&["--kernel", &big, "--memory", "size=64M"]);
    assert_eq!(code, USAGE);
    assert_eq!(
        line,
        format!(
            "error: --kernel {big}: is larger than guest RAM (134217728 bytes, --memory is \
             67108864 bytes)"
        )
    );
}

#[test]
fn memory_not_a_page_multiple_is_rejected_not_rounded() {
    let s = Scratch::new("mem");
    assert_eq!(
        run(&["--kernel", &s.path("kernel"), "--memory", "size=100001K"]),
        (
            USAGE,
            "error: --memory size 102401024 bytes is not a multiple of 4 KiB: rejected (not \
             rounded); 102400000 bytes would be"
                .into()
        )
    );
}

#[test]
fn memory_too_small_is_a_usage_error() {
    let s = Scratch::new("small");
    let (code, line) = run(&["--kernel", &s.path("kernel"), "--memory", "size=1K"]);
    assert_eq!(code, USAGE);
    assert!(line.contains("too small"), "{line}");
}

#[test]
fn bad_option_values_are_usage_errors() {
    let s = Scratch::new("values");
    let k = s.path("kernel");
    for (args, expect) in [
        (
            vec!["--seccomp", "kill"],
            "error: invalid --seccomp 'kill': expected on, log or off",
        ),
        (
            vec!["--device", "dsa,movdir64b=maybe"],
            "error: invalid --device 'dsa,movdir64b=maybe'",
        ),
        (vec!["--cpus", "boot=0"], "error: invalid --cpus 'boot=0'"),
        (vec!["--serial", "pty"], "error: invalid --serial 'pty'"),
        (vec!["--iommu", "amd"], "error: invalid --iommu 'amd'"),
        (
            vec!["--net", "tap=t0,mac=52:54:00:12:34"],
            "error: invalid --net 'tap=t0,mac=52:54:00:12:34': invalid MAC address",
        ),
        (
            vec!["--net", "tap=t0,mac=01:00:5e:00:00:01"],
            "error: invalid --net 'tap=t0,mac=01:00:5e:00:00:01': invalid MAC address '01:00:5e:00:00:01': a multicast",
        ),
        (
            vec!["--net", "tap=a/b"],
            "error: invalid --net 'tap=a/b': invalid tap name",
        ),
        (
            vec!["--vsock", "cid=2"],
            "error: invalid --vsock 'cid=2': CIDs 0, 1, 2 and 4294967295 and above are reserved",
        ),
        (
            vec!["--vsock", "cid=4294967295"],
            "error: invalid --vsock 'cid=4294967295': CIDs 0, 1, 2",
        ),
        (vec!["--vsock", "port=3"], "error: invalid --vsock 'port=3': expected cid=N"),
    ] {
        let mut a = vec!["--kernel", k.as_str()];
        a.extend(args.iter().copied());
        let (code, line) = run(&a);
        assert_eq!(code, USAGE, "{args:?}: {line}");
        assert!(line.starts_with(expect), "{args:?}: {line}");
    }
}

/// A regular file that is not a bzImage passes the argument checks and fails when the VMM
/// loads it (or earlier, opening /dev/kvm): a VMM error, status 1.
#[test]
fn unbootable_kernel_is_a_vmm_error() {
    let s = Scratch::new("notbz");
    let (code, line) = run(&["--kernel", &s.path("kernel"), "--serial", "off"]);
    assert_eq!(code, VMM_ERROR, "{line}");
    let kvm_missing = !Path::new("/dev/kvm").exists();
    assert!(
        line.contains("is not a bzImage") || (kvm_missing && line.contains("/dev/kvm")),
        "{line}"
    );
}

#[test]
fn missing_disk_image_is_a_vmm_error() {
    let s = Scratch::new("disk-missing");
    let (code, line) = run(&[
        "--kernel",
        &s.path("kernel"),
        "--disk",
        &format!("path={}", s.path("nope.img")),
    ]);
    assert_eq!(code, VMM_ERROR, "{line}");
    assert!(
        line.contains("cannot open disk image") && line.contains("nope.img"),
        "{line}"
    );
}

#[test]
fn disk_directory_is_refused() {
    let s = Scratch::new("disk-dir");
    let (code, line) = run(&[
        "--kernel",
        &s.path("kernel"),
        "--disk",
        &format!("path={}", s.0.display()),
    ]);
    assert_eq!(code, VMM_ERROR, "{line}");
    assert!(line.contains("is not a regular file"), "{line}");
}

#[test]
fn read_only_image_asked_read_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let s = Scratch::new("disk-ro");
    let img = s.path("ro.img");
    std::fs::write(&img, vec![0u8; 4096]).unwrap();
    std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o444)).unwrap();
    let (code, line) = run(&[
        "--kernel",
        &s.path("kernel"),
        "--disk",
        &format!("path={img}"),
    ]);
    assert_eq!(code, VMM_ERROR, "{line}");
    assert!(
        line.contains("is read-only") && line.contains("readonly=on"),
        "{line}"
    );
}

/// An image another process has locked (as a running vmm does) is refused: read-write use
/// needs it unlocked, read-only use needs it not locked for writing.
#[test]
fn disk_image_in_use_is_refused() {
    use std::os::fd::AsRawFd;
    let s = Scratch::new("disk-locked");
    let img = s.path("busy.img");
    std::fs::write(&img, vec![0u8; 4096]).unwrap();
    let holder = std::fs::File::open(&img).unwrap();
    for (lock, readonly, refused) in [
        (libc::LOCK_SH, false, true),
        (libc::LOCK_SH, true, false),
        (libc::LOCK_EX, true, true),
    ] {
        // SAFETY: flock on a descriptor this test owns.
        assert_eq!(unsafe { libc::flock(holder.as_raw_fd(), lock) }, 0);
        let disk = format!("path={img}{}", if readonly { ",readonly=on" } else { "" });
        let (code, line) = run(&["--kernel", &s.path("kernel"), "--disk", &disk]);
        if refused {
            assert_eq!(code, VMM_ERROR, "{disk}: {line}");
            assert!(
                line.contains("is in use by another process"),
                "{disk}: {line}"
            );
        } else {
            // Past the disk: the (empty) kernel is what fails.
            assert!(!line.contains("in use"), "{disk}: {line}");
        }
    }
}

#[test]
fn unreadable_disk_image_is_a_vmm_error() {
    // Root reads anything: an empty image (no whole sector) stands in for an unusable one.
    let s = Scratch::new("disk-empty");
    let img = s.path("empty.img");
    std::fs::write(&img, b"").unwrap();
    let (code, line) = run(&[
        "--kernel",
        &s.path("kernel"),
        "--disk",
        &format!("path={img}"),
    ]);
    assert_eq!(code, VMM_ERROR, "{line}");
    assert!(line.contains("smaller than one 512-byte sector"), "{line}");
}

#[test]
fn bad_disk_option_is_a_usage_error() {
    let s = Scratch::new("disk-opt");
    let (code, line) = run(&[
        "--kernel",
        &s.path("kernel"),
        "--disk",
        "path=x,readonly=maybe",
    ]);
    assert_eq!(code, USAGE, "{line}");
    assert_eq!(
        line,
        "error: invalid --disk 'path=x,readonly=maybe': expected path=IMG[,readonly=on|off]"
    );
}

/// An ELF file without a PVH entry note (here: this host's own `vmm` binary, a dynamic
/// executable) is taken for a vmlinux by its magic and refused with the reason: status 1.
#[test]
fn elf_without_pvh_note_is_a_vmm_error() {
    let vmm = vmm_bin();
    let (code, line) = run(&["--kernel", vmm.to_str().unwrap(), "--serial", "off"]);
    assert_eq!(code, VMM_ERROR, "{line}");
    let kvm_missing = !Path::new("/dev/kvm").exists();
    assert!(
        line.contains("is not an ELF vmlinux the VMM can boot")
            || (kvm_missing && line.contains("/dev/kvm")),
        "{line}"
    );
}
