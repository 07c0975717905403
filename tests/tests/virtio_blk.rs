//! virtio-blk in a real guest (nested harness on this machine): the guest loads virtio_blk
//! and ext4 (modules in Debian's 6.12, packed by resources/blk-initramfs.sh), mounts an ext4
//! image, writes files, reads them back after dropping its caches with identical checksums,
//! and powers off; `e2fsck -fn` on the image afterwards (in L1, where the image lives, or on
//! the host in direct mode) finds it clean. A `readonly=on` disk refuses writes. With 2 vCPUs
//! the device has 2 request queues whose vectors count in /proc/interrupts; with
//! `--iommu intel` they are IR-PCI-MSIX.

use std::path::{Path, PathBuf};
use std::process::Command;

use tests::{
    boot_lock, boot_timeout, build_initramfs, cmd_timeout, standard_guest_args, with_l1_retry,
    GuestSession, Mode, SessionConfig, PROMPT, READY,
};

/// Marker the L1 wrapper prints per image after the vmm exits: `@@FSCK <image> <status>`.
const FSCK: &str = "@@FSCK ";

/// A fresh ext4 image of `mib` MiB in `dir`.
fn ext4_image(dir: &Path, name: &str, mib: u64) -> PathBuf {
    let p = dir.join(name);
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(mib << 20).unwrap();
    let st = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"])
        .arg(&p)
        .status()
        .expect("mkfs.ext4 (e2fsprogs) is needed");
    assert!(st.success(), "mkfs.ext4 {}", p.display());
    p
}

struct Setup {
    cfg: SessionConfig,
    /// Image paths as the vmm sees them, and on the host.
    images: Vec<(String, PathBuf)>,
    _dir: TempDir,
}

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The session: a read-write image (vda) and a read-only one (vdb), a wrapper that runs
/// e2fsck on both after the vmm in nested mode.
fn setup(extra: &[&str]) -> Setup {
    let dir = std::env::temp_dir().join(format!("virtio-blk-test.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let rw = ext4_image(&dir, "rw.img", 64);
    let ro = ext4_image(&dir, "ro.img", 16);
    let mut args = standard_guest_args();
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut cfg = SessionConfig::from_env(&args);
    cfg.initramfs = build_initramfs("blk-initramfs.sh");
    let images = match cfg.mode {
        Mode::Direct => vec![
            (rw.display().to_string(), rw.clone()),
            (ro.display().to_string(), ro.clone()),
        ],
        Mode::Nested => {
            let wrapper = dir.join("vmm-wrapper.sh");
            std::fs::write(
                &wrapper,
                "#!/bin/sh\n/vmm-real \"$@\"\nrc=$?\n\
                 for i in /disk/rw.img /disk/ro.img; do e2fsck -fn \"$i\" >/dev/null 2>&1; \
                 echo \"@@FSCK $i $?\"; done\nexit $rc\n",
            )
            .unwrap();
            std::fs::set_permissions(
                &wrapper,
                std::os::unix::fs::PermissionsExt::from_mode(0o755),
            )
            .unwrap();
            let e2fsck = which("e2fsck");
            cfg.nested_args.extend([
                "--file".into(),
                format!("{}:/vmm-real", cfg.vmm.display()),
                "--file".into(),
                format!("{}:/bin/e2fsck", e2fsck.display()),
                "--file".into(),
                format!("{}:/disk/rw.img", rw.display()),
                "--file".into(),
                format!("{}:/disk/ro.img", ro.display()),
            ]);
            cfg.vmm = wrapper;
            vec![
                ("/disk/rw.img".to_string(), rw.clone()),
                ("/disk/ro.img".to_string(), ro.clone()),
            ]
        }
    };
    cfg.args.extend([
        "--disk".into(),
        format!("path={}", images[0].0),
        "--disk".into(),
        format!("path={},readonly=on", images[1].0),
    ]);
    Setup {
        cfg,
        images,
        _dir: TempDir(dir),
    }
}

fn which(name: &str) -> PathBuf {
    for d in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        let p = Path::new(d).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("{name} not found");
}

fn boot(cfg: &SessionConfig) -> GuestSession {
    let mut s = GuestSession::start_with(cfg).unwrap_or_else(|e| panic!("{e}"));
    s.wait_for_line(READY, boot_timeout(s.mode()))
        .unwrap_or_else(|e| panic!("{e}"));
    s.wait_for_prompt(PROMPT, cmd_timeout(s.mode()))
        .unwrap_or_else(|e| panic!("{e}"));
    let ct = cmd_timeout(s.mode());
    s.run_marked("stty cols 1024", "@@stty-done", ct);
    let out = s.run_marked("load-blk; echo load-rc=$?", "@@load-done", ct);
    assert!(
        out.iter().any(|l| l.contains("load-rc=0")),
        "loading virtio_blk/ext4 failed: {out:?}\n{}",
        s.tail()
    );
    s
}

/// Per request queue of the first virtio device: (name, total count) from /proc/interrupts.
fn queue_interrupts(s: &mut GuestSession) -> Vec<(String, u64, String)> {
    let ct = cmd_timeout(s.mode());
    let out = s.run_marked("grep virtio0-req /proc/interrupts", "@@irq-done", ct);
    out.iter()
        .filter(|l| l.contains("virtio0-req."))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let counts: u64 = f
                .iter()
                .skip(1)
                .take_while(|x| x.chars().all(|c| c.is_ascii_digit()))
                .map(|x| x.parse::<u64>().unwrap_or(0))
                .sum();
            (f.last().unwrap_or(&"").to_string(), counts, l.clone())
        })
        .collect()
}

/// Reads 100 blocks of vda from each CPU (page cache dropped first), so each queue serves
/// requests.
fn read_from_each_cpu(s: &mut GuestSession) {
    let ct = cmd_timeout(s.mode());
    s.run_marked(
        "echo 3 > /proc/sys/vm/drop_caches; for c in 0 1; do taskset -c $c dd if=/dev/vda \
         of=/dev/null bs=4096 count=100 skip=$((1000 + c * 1000)) 2>/dev/null; done",
        "@@read-done",
        ct,
    );
}

fn mount_write_read_fsck() {
    let _g = boot_lock();
    let setup = setup(&[]);
    let mut s = boot(&setup.cfg);
    let ct = cmd_timeout(s.mode());

    // Two request queues, both used, each with its own vector.
    let out = s.run_marked("ls /sys/block/vda/mq", "@@mq-done", ct);
    let queues: Vec<&str> = out.iter().flat_map(|l| l.split_whitespace()).collect();
    assert_eq!(queues, ["0", "1"], "request queues of vda");

    let out = s.run_marked(
        "mkdir -p /mnt && mount -t ext4 /dev/vda /mnt && echo mount-ok",
        "@@mount-done",
        ct,
    );
    assert!(out.iter().any(|l| l == "mount-ok"), "mount: {out:?}");
    let out = s.run_marked(
        "dd if=/dev/urandom of=/mnt/big bs=65536 count=128 2>/dev/null && \
         mkdir -p /mnt/d && for i in $(seq 1 50); do echo file $i > /mnt/d/f$i; done && \
         cp /bin/busybox /mnt/bb && sha256sum /mnt/big /mnt/bb /mnt/d/f1 /mnt/d/f50 > /sums && \
         sync && umount /mnt && echo 3 > /proc/sys/vm/drop_caches && \
         mount -t ext4 /dev/vda /mnt && sha256sum -c /sums && ls /mnt/d | wc -l",
        "@@write-done",
        ct * 3,
    );
    let oks = out.iter().filter(|l| l.ends_with(": OK")).count();
    assert_eq!(oks, 4, "checksums after remount: {out:?}");
    assert!(out.iter().any(|l| l.trim() == "50"), "files: {out:?}");
    s.run_marked("umount /mnt", "@@umount-done", ct);

    // The read-only disk: the kernel sees it read-only and writes fail.
    let out = s.run_marked(
        "cat /sys/block/vdb/ro; dd if=/dev/zero of=/dev/vdb bs=512 count=1 conv=fsync \
         2>/dev/null; echo dd-rc=$?; mkdir -p /ro; mount -t ext4 /dev/vdb /ro 2>/dev/null; \
         echo x > /ro/new 2>/dev/null; echo write-rc=$?",
        "@@ro-done",
        ct,
    );
    assert!(out.iter().any(|l| l.trim() == "1"), "vdb ro flag: {out:?}");
    assert!(
        !out.iter().any(|l| l == "dd-rc=0") && !out.iter().any(|l| l == "write-rc=0"),
        "the read-only disk accepted a write: {out:?}"
    );

    read_from_each_cpu(&mut s);
    let irqs = queue_interrupts(&mut s);
    assert_eq!(irqs.len(), 2, "request queue vectors: {irqs:?}");
    for (name, count, line) in &irqs {
        eprintln!("{line}");
        assert!(*count > 0, "no interrupts on {name}: {line}");
    }

    s.send_line("poweroff -f");
    let rc = s
        .wait_exit(boot_timeout(s.mode()))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rc, 0, "vmm exit status; output:\n{}", s.tail());
    match s.mode() {
        Mode::Nested => {
            let fsck: Vec<String> = s
                .lines()
                .into_iter()
                .filter(|l| l.text.contains(FSCK))
                .map(|l| l.text)
                .collect();
            for (img, _) in &setup.images {
                assert!(
                    fsck.iter().any(|l| l.contains(&format!("{FSCK}{img} 0"))),
                    "e2fsck -fn {img} not clean: {fsck:?}"
                );
            }
        }
        Mode::Direct => {
            for (_, host) in &setup.images {
                let st = Command::new("e2fsck")
                    .arg("-fn")
                    .arg(host)
                    .status()
                    .unwrap();
                assert!(st.success(), "e2fsck -fn {} not clean", host.display());
            }
        }
    }
}

fn multiqueue_vectors_are_remapped_with_iommu() {
    let _g = boot_lock();
    let setup = setup(&["--iommu", "intel"]);
    let mut s = boot(&setup.cfg);
    read_from_each_cpu(&mut s);
    let irqs = queue_interrupts(&mut s);
    assert_eq!(irqs.len(), 2, "request queue vectors: {irqs:?}");
    for (name, count, line) in &irqs {
        eprintln!("{line}");
        assert!(line.contains("IR-PCI-MSIX"), "{name} not remapped: {line}");
        assert!(*count > 0, "no interrupts on {name}: {line}");
    }
    s.send_line("poweroff -f");
    let rc = s
        .wait_exit(boot_timeout(s.mode()))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rc, 0, "vmm exit status; output:\n{}", s.tail());
}

/// The demo's boot (resources/demo.sh): root file system on a virtio-blk disk built from
/// Debian packages, an initramfs that loads virtio_blk + ext4 and switch_roots; the guest's
/// `exit` flushes the disk and powers off.
fn demo_root_on_disk() {
    let _g = boot_lock();
    let out = Command::new("bash")
        .arg(tests::resources_dir().join("rootfs-disk.sh"))
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("run rootfs-disk.sh");
    assert!(out.status.success(), "rootfs-disk.sh failed");
    let paths: Vec<PathBuf> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(PathBuf::from)
        .collect();
    assert_eq!(paths.len(), 2, "rootfs-disk.sh output: {paths:?}");
    let dir = std::env::temp_dir().join(format!("virtio-blk-demo.{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _dir = TempDir(dir.clone());
    let img = dir.join("rootfs.ext4");
    std::fs::copy(&paths[0], &img).unwrap();
    let mut cfg = SessionConfig::from_env(&standard_guest_args());
    cfg.initramfs = paths[1].clone();
    let disk = match cfg.mode {
        Mode::Direct => img.display().to_string(),
        Mode::Nested => {
            cfg.nested_args.extend([
                "--file".into(),
                format!("{}:/disk/rootfs.ext4", img.display()),
            ]);
            "/disk/rootfs.ext4".into()
        }
    };
    cfg.args.extend(["--disk".into(), format!("path={disk}")]);
    let mut s = GuestSession::start_with(&cfg).unwrap_or_else(|e| panic!("{e}"));
    let ready = s
        .wait_for(READY, boot_timeout(s.mode()))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        ready.contains("root /dev/vda ext4") && ready.contains("Debian"),
        "not booted from the disk: {ready}"
    );
    let ct = cmd_timeout(s.mode());
    s.wait_for_prompt(PROMPT, ct)
        .unwrap_or_else(|e| panic!("{e}"));
    let out = s.run_marked(
        "echo hello > /root/note && cat /root/note && cat /etc/hostname",
        "@@note-done",
        ct,
    );
    assert!(out.iter().any(|l| l == "hello"), "{out:?}");
    assert!(out.iter().any(|l| l == "rootfs"), "{out:?}");
    s.send_line("exit");
    let rc = s
        .wait_exit(boot_timeout(s.mode()))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rc, 0, "vmm exit status; output:\n{}", s.tail());
}

fn demo_test() {
    with_l1_retry(demo_root_on_disk);
}

/// One benchmark figure: (vmm, round, mode) -> (iops, MB/s).
type BenchFigures = Vec<(String, String, f64, f64)>;

/// Parses `@@BENCH <vmm> round N` markers and the `BLKBENCH mode=...` lines after them.
fn bench_figures(lines: &[String]) -> BenchFigures {
    let mut who = String::new();
    let mut out = Vec::new();
    for l in lines {
        if let Some(rest) = l.split("@@BENCH ").nth(1) {
            who = rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
        } else if l.contains("BLKBENCH mode=") && !who.is_empty() {
            let f = tests::parse_fields(l, "BLKBENCH ");
            let num = |k: &str| f.get(k).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            out.push((
                who.clone(),
                f.get("mode").cloned().unwrap_or_default(),
                num("iops"),
                num("mbps"),
            ));
        }
    }
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => 0.0,
        n if n % 2 == 0 => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        n => v[n / 2],
    }
}

/// virtio-blk beside QEMU's on the same image in the same L1 (QEMU's binary, libraries and
/// firmware copied into L1): 4 KiB random reads at queue depth 32 (IOPS) and 1 MiB sequential
/// reads at queue depth 4 (MB/s), O_DIRECT in the guest (`resources/blkbench`), 2 vCPUs and
/// 2 request queues each, the image read-only; rounds interleaved, medians printed as
/// ratios. No speed is asserted; both must produce figures.
fn benchmark_against_qemu() {
    let _g = boot_lock();
    let mut cfg = SessionConfig::from_env(&standard_guest_args());
    if cfg.mode != Mode::Nested {
        tests::skip("the QEMU comparison runs in the nested harness (QEMU copied into L1)");
    }
    let qemu = which("qemu-system-x86_64");
    cfg.initramfs = build_initramfs("blkbench-initramfs.sh");
    let dir = std::env::temp_dir().join(format!("virtio-blk-bench.{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _dir = TempDir(dir.clone());
    // 128 MiB of non-zero data (holes would read faster than data).
    let img = dir.join("bench.img");
    let mut data = vec![0u8; 128 << 20];
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for c in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes());
    }
    std::fs::write(&img, &data).unwrap();
    drop(data);
    let rounds = 2;
    let secs = 5;
    let wrapper = dir.join("bench.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh
             for r in $(seq 1 {rounds}); do
             echo \"@@BENCH vmm round $r\"
             /vmm-real \"$@\" </dev/null
             echo \"@@BENCH qemu round $r\"
             /bin/qemu-system-x86_64 -accel kvm -cpu host -M q35 -m 512 -smp 2 -nodefaults              -nographic -serial stdio -kernel /l2/vmlinuz -initrd /l2/initramfs.cpio.gz              -append 'console=ttyS0 quiet blkbench.secs={secs}'              -drive file=/disk/bench.img,if=none,id=d0,format=raw,readonly=on              -device virtio-blk-pci,drive=d0,num-queues=2 </dev/null
             done
exit 0
"
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    cfg.nested_args.extend([
        "--file".into(),
        format!("{}:/vmm-real", cfg.vmm.display()),
        "--file".into(),
        format!("{}:/bin/qemu-system-x86_64", qemu.display()),
        "--file".into(),
        "/usr/share/qemu:/usr/share/qemu".into(),
        "--file".into(),
        "/usr/share/seabios:/usr/share/seabios".into(),
        "--file".into(),
        format!("{}:/disk/bench.img", img.display()),
    ]);
    cfg.vmm = wrapper;
    cfg.args = vec![
        "--cmdline".into(),
        format!("console=ttyS0 quiet blkbench.secs={secs}"),
        "--cpus".into(),
        "boot=2".into(),
        "--memory".into(),
        "size=512M".into(),
        "--disk".into(),
        "path=/disk/bench.img,readonly=on".into(),
    ];
    let mut s = GuestSession::start_with(&cfg).unwrap_or_else(|e| panic!("{e}"));
    let rc = s
        .wait_exit(boot_timeout(s.mode()) * 6)
        .unwrap_or_else(|e| panic!("{e}"));
    let lines: Vec<String> = s.lines().into_iter().map(|l| l.text).collect();
    assert_eq!(rc, 0, "benchmark wrapper status; output:\n{}", s.tail());
    let figs = bench_figures(&lines);
    for l in lines.iter().filter(|l| l.contains("BLKBENCH")) {
        eprintln!("{l}");
    }
    let pick = |who: &str, mode: &str, iops: bool| {
        median(
            figs.iter()
                .filter(|f| f.0 == who && f.1 == mode)
                .map(|f| if iops { f.2 } else { f.3 })
                .collect(),
        )
    };
    let (vr, qr) = (
        pick("vmm", "randread", true),
        pick("qemu", "randread", true),
    );
    let (vs, qs) = (
        pick("vmm", "seqread", false),
        pick("qemu", "seqread", false),
    );
    for (name, v) in [
        ("vmm randread", vr),
        ("qemu randread", qr),
        ("vmm seqread", vs),
        ("qemu seqread", qs),
    ] {
        assert!(v > 0.0, "no {name} figure; output:\n{}", s.tail());
    }
    println!(
        "virtio-blk vs QEMU (same image, same L1, medians of {rounds}): \
         4 KiB random reads QD32: vmm {vr:.0} IOPS, QEMU {qr:.0} IOPS, ratio {:.2}; \
         1 MiB sequential reads QD4: vmm {vs:.1} MB/s, QEMU {qs:.1} MB/s, ratio {:.2}",
        vr / qr,
        vs / qs
    );
}

fn benchmark_test() {
    with_l1_retry(benchmark_against_qemu);
}

fn mount_write_read_fsck_test() {
    with_l1_retry(mount_write_read_fsck);
}

fn iommu_test() {
    with_l1_retry(multiqueue_vectors_are_remapped_with_iommu);
}

tests::test_main!(
    mount_write_read_fsck_test,
    iommu_test,
    demo_test,
    benchmark_test
);
