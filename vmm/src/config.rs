//! Command-line configuration: cloud-hypervisor style `key=value` flags.

use std::path::{Path, PathBuf};

use clap::Parser;
use thiserror::Error;

/// Smallest memory size accepted.
pub const MIN_MEMORY: u64 = 64 << 20;
/// Most vCPUs accepted (the MADT and CPUID topology support x2APIC IDs beyond 255).
pub const MAX_VCPUS: u32 = 1024;
/// Guest memory is mapped in pages of this size: `--memory` must be a multiple of it.
pub const PAGE_SIZE: u64 = 4096;

/// Errors in command-line values.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    /// `--cpus` could not be parsed.
    #[error("invalid --cpus '{0}': expected boot=N with N >= 1")]
    Cpus(String),
    /// `--memory` could not be parsed.
    #[error("invalid --memory '{0}': expected size=N[K|M|G]")]
    Memory(String),
    /// Memory size below the minimum.
    #[error("--memory size {0} bytes is too small: at least 64M is needed")]
    MemoryTooSmall(u64),
    /// Memory size not a multiple of the page size (rejected, not rounded).
    #[error("--memory size {0} bytes is not a multiple of 4 KiB: rejected (not rounded); {1} bytes would be")]
    MemoryNotPageAligned(u64, u64),
    /// `--device` could not be parsed.
    #[error("invalid --device '{0}': expected irqtest[,vectors=N,ims=N,doorbell=on|off] (vectors 1..=2048, ims 0..=65536), dsa[,wqs=N,engines=N,groups=N,ims=N,movdir64b=on|off] or vfio,host=DDDD:BB:DD.F[,msix=dynamic|reenable]")]
    Device(String),
    /// `--seccomp` could not be parsed.
    #[error("invalid --seccomp '{0}': expected on, log or off")]
    Seccomp(String),
    /// A `--kernel`/`--initramfs` path cannot be used.
    #[error("{arg} {path}: {reason}")]
    File {
        /// The argument (`--kernel` or `--initramfs`).
        arg: &'static str,
        /// The path given.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// `--disk` could not be parsed.
    #[error("invalid --disk '{0}': expected path=IMG[,readonly=on|off]")]
    Disk(String),
    /// `--iommu` could not be parsed.
    #[error("invalid --iommu '{0}': expected intel")]
    Iommu(String),
    /// `--serial` could not be parsed.
    #[error("invalid --serial '{0}': expected tty, off or file=PATH")]
    Serial(String),
    /// `--net` could not be parsed.
    #[error("invalid --net '{spec}': {reason}")]
    Net {
        /// The value given.
        spec: String,
        /// What is wrong.
        reason: String,
    },
    /// `--vsock` could not be parsed or names a reserved CID.
    #[error("invalid --vsock '{spec}': {reason}")]
    Vsock {
        /// The value given.
        spec: String,
        /// What is wrong.
        reason: String,
    },
}

/// A network card added with `--net tap=NAME[,mac=MAC]` (virtio-net on vhost-net).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// The tap interface (created if absent).
    pub tap: String,
    /// The card's MAC address; absent: the guest driver picks a random one.
    pub mac: Option<vhost_devices::MacAddress>,
}

impl NetConfig {
    /// Parses `tap=NAME[,mac=MAC]`.
    pub fn parse(spec: &str) -> Result<Self, ConfigError> {
        let bad = |reason: String| ConfigError::Net {
            spec: spec.to_string(),
            reason,
        };
        let (mut tap, mut mac) = (None, None);
        for part in spec.split(',') {
            match part.split_once('=') {
                Some(("tap", v)) if tap.is_none() => {
                    if !vhost_devices::tap::valid_name(v) {
                        return Err(bad(vhost_devices::TapError::Name(v.into()).to_string()));
                    }
                    tap = Some(v.to_string());
                }
                Some(("mac", v)) if mac.is_none() => {
                    mac = Some(
                        v.parse()
                            .map_err(|e: vhost_devices::MacError| bad(e.to_string()))?,
                    )
                }
                _ => return Err(bad("expected tap=NAME[,mac=MAC]".into())),
            }
        }
        let tap = tap.ok_or_else(|| bad("expected tap=NAME[,mac=MAC]".into()))?;
        Ok(NetConfig { tap, mac })
    }
}

/// The socket device added with `--vsock cid=N` (virtio-vsock on vhost-vsock).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's context ID (3..=2^32-2).
    pub cid: u64,
}

impl VsockConfig {
    /// Parses `cid=N`.
    pub fn parse(spec: &str) -> Result<Self, ConfigError> {
        let bad = |reason: String| ConfigError::Vsock {
            spec: spec.to_string(),
            reason,
        };
        let cid = single_key(spec, "cid")
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| bad("expected cid=N".into()))?;
        vhost_devices::vsock::check_cid(cid).map_err(|_| {
            bad(
                "CIDs 0, 1, 2 and 4294967295 and above are reserved: a guest CID is 3..=4294967294"
                    .into(),
            )
        })?;
        Ok(VsockConfig { cid })
    }
}

/// Where the guest's serial console goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SerialMode {
    /// stdin/stdout of the VMM (raw mode when stdin is a terminal).
    Tty,
    /// Output appended to a file; no input.
    File(PathBuf),
    /// No serial port.
    Off,
}

/// A device added with `--device`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceConfig {
    /// The interrupt test device with this many MSI-X vectors.
    IrqTest {
        /// MSI-X table size.
        vectors: usize,
        /// IMS table size (0: no IMS).
        ims: usize,
        /// `doorbell=on`: per-vector doorbells in BAR1 that KVM delivers without an exit.
        doorbell: bool,
    },
    /// An Intel DSA (idxd) device.
    Dsa {
        /// Work queues (1..=16).
        wqs: u8,
        /// Engines (1..=16).
        engines: u8,
        /// Groups (1..=16).
        groups: u8,
        /// IMS entries (multiple of 256, 256..=2048).
        ims: u16,
        /// `movdir64b=on|off`: advertise MOVDIR64B in the guest CPUID regardless of the host
        /// (on) or never (off); absent: only when the VMM can emulate it to the portals.
        movdir64b: Option<bool>,
    },
    /// A host PCI function passed through with VFIO.
    Vfio {
        /// Host address.
        host: vfio::Bdf,
        /// How host MSI-X vectors are added (`msix=`; absent: dynamic where the host allows).
        msix: vfio::MsixPolicy,
    },
}

/// What a syscall outside a thread's seccomp filter does (`--seccomp`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SeccompMode {
    /// The VMM ends with one `error:` line naming the thread and syscall (status 1).
    #[default]
    On,
    /// The syscall runs and the host kernel logs it.
    Log,
    /// No filters.
    Off,
}

/// The IOMMU added with `--iommu`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IommuKind {
    /// An Intel VT-d unit with interrupt remapping (no DMA translation).
    Intel,
}

/// Default MSI-X vectors of an irqtest device.
pub const IRQTEST_DEFAULT_VECTORS: usize = 32;

impl DeviceConfig {
    /// The DSA model's configuration of a `dsa` device; `None` for other devices.
    pub fn dsa_config(&self) -> Option<devices::dsa::DsaConfig> {
        match *self {
            DeviceConfig::Dsa {
                wqs,
                engines,
                groups,
                ims,
                ..
            } => Some(devices::dsa::DsaConfig {
                wqs,
                engines,
                groups,
                ims,
            }),
            _ => None,
        }
    }

    /// Parses `irqtest[,vectors=N,ims=N,doorbell=on|off]` or `dsa[,...]`.
    pub fn parse(spec: &str) -> Result<Self, ConfigError> {
        let bad = || ConfigError::Device(spec.to_string());
        let mut parts = spec.split(',');
        match parts.next() {
            Some("irqtest") => {
                let mut vectors = IRQTEST_DEFAULT_VECTORS;
                let mut ims = 0;
                let mut doorbell = false;
                for p in parts {
                    match p.split_once('=') {
                        Some(("doorbell", "on")) => doorbell = true,
                        Some(("doorbell", "off")) => doorbell = false,
                        Some(("ims", v)) => {
                            ims = v
                                .parse()
                                .ok()
                                .filter(|n| *n <= devices::irqtest::IRQTEST_MAX_IMS)
                                .ok_or_else(bad)?
                        }
                        Some(("vectors", v)) => {
                            vectors = v
                                .parse()
                                .ok()
                                .filter(|n| (1..=2048).contains(n))
                                .ok_or_else(bad)?
                        }
                        _ => return Err(bad()),
                    }
                }
                Ok(DeviceConfig::IrqTest {
                    vectors,
                    ims,
                    doorbell,
                })
            }
            Some("dsa") => {
                let (mut wqs, mut engines, mut groups, mut ims) = (4u8, 4u8, 4u8, 256u16);
                let mut movdir64b = None;
                for p in parts {
                    let (k, v) = p.split_once('=').ok_or_else(bad)?;
                    let small = || {
                        v.parse::<u8>()
                            .ok()
                            .filter(|n| (1..=16).contains(n))
                            .ok_or_else(bad)
                    };
                    match k {
                        "wqs" => wqs = small()?,
                        "engines" => engines = small()?,
                        "groups" => groups = small()?,
                        "ims" => {
                            ims = v
                                .parse::<u16>()
                                .ok()
                                .filter(|n| (256..=2048).contains(n) && n % 256 == 0)
                                .ok_or_else(bad)?
                        }
                        "movdir64b" => {
                            movdir64b = Some(match v {
                                "on" => true,
                                "off" => false,
                                _ => return Err(bad()),
                            })
                        }
                        _ => return Err(bad()),
                    }
                }
                Ok(DeviceConfig::Dsa {
                    wqs,
                    engines,
                    groups,
                    ims,
                    movdir64b,
                })
            }
            Some("vfio") => {
                let (mut host, mut msix) = (None, vfio::MsixPolicy::Auto);
                for p in parts {
                    match p.split_once('=').ok_or_else(bad)? {
                        ("host", v) if host.is_none() => {
                            host = Some(v.parse::<vfio::Bdf>().map_err(|_| bad())?)
                        }
                        ("msix", "dynamic") => msix = vfio::MsixPolicy::Dynamic,
                        ("msix", "reenable") => msix = vfio::MsixPolicy::Reenable,
                        _ => return Err(bad()),
                    }
                }
                Ok(DeviceConfig::Vfio {
                    host: host.ok_or_else(bad)?,
                    msix,
                })
            }
            _ => Err(bad()),
        }
    }
}

/// Command-line interface of `vmm`.
#[derive(Debug, Parser)]
#[command(
    name = "vmm",
    version,
    about = "Boot a Linux guest on KVM",
    after_help = "Exit status: 0 guest powered off, 1 VMM error (or a panic), 2 usage error, \
                  3 guest rebooted, 129 SIGHUP, 130 SIGINT or console escape Ctrl-A x, \
                  143 SIGTERM.\nSIGUSR1 prints the interrupt hierarchy to stderr.\n\
                  Console on a terminal: Ctrl-C goes to the guest; Ctrl-A x ends the VMM, \
                  Ctrl-A Ctrl-A sends Ctrl-A."
)]
pub struct Cli {
    /// Linux kernel: a bzImage, or an ELF vmlinux with a PVH entry note (booted directly at
    /// its PVH entry, no decompressor); told apart by their magic numbers.
    #[arg(long, value_name = "PATH")]
    pub kernel: PathBuf,
    /// Initramfs (cpio archive, compressed or not).
    #[arg(long, value_name = "PATH")]
    pub initramfs: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, default_value = "console=ttyS0", value_name = "STRING")]
    pub cmdline: String,
    /// vCPUs: boot=N.
    #[arg(long, default_value = "boot=1", value_name = "boot=N")]
    pub cpus: String,
    /// Guest memory: size=N[K|M|G].
    #[arg(long, default_value = "size=512M", value_name = "size=N")]
    pub memory: String,
    /// Serial console: tty, off or file=PATH.
    #[arg(long, default_value = "tty", value_name = "MODE")]
    pub serial: String,
    /// Add a device: irqtest[,vectors=N,ims=N,doorbell=on|off], dsa[,wqs=N,engines=N,groups=N,ims=N] or
    /// vfio,host=DDDD:BB:DD.F[,msix=dynamic|reenable] (repeatable).
    #[arg(long = "device", value_name = "SPEC")]
    pub devices: Vec<String>,
    /// Add a virtio-blk disk over a raw image: path=IMG[,readonly=on] (repeatable).
    #[arg(long = "disk", value_name = "path=IMG[,readonly=on]")]
    pub disks: Vec<String>,
    /// Add a network card on vhost-net: tap=NAME[,mac=MAC] (the tap is created if absent;
    /// repeatable).
    #[arg(long = "net", value_name = "tap=NAME[,mac=MAC]")]
    pub nets: Vec<String>,
    /// Add a socket device on vhost-vsock: cid=N (the guest's context ID, 3..=4294967294).
    #[arg(long, value_name = "cid=N")]
    pub vsock: Option<String>,
    /// Add an IOMMU: intel (VT-d interrupt remapping, x2APIC mode).
    #[arg(long, value_name = "KIND")]
    pub iommu: Option<String>,
    /// Print the interrupt hierarchy to stderr when the VMM exits.
    #[arg(long)]
    pub print_interrupts: bool,
    /// Seccomp filters per thread: on (a forbidden syscall ends the VMM), log, or off.
    #[arg(long, default_value = "on", value_name = "on|log|off")]
    pub seccomp: String,
}

/// Validated VM configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmConfig {
    /// Kernel image.
    pub kernel: PathBuf,
    /// Optional initramfs.
    pub initramfs: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// Memory in bytes.
    pub memory: u64,
    /// Serial console mode.
    pub serial: SerialMode,
    /// Devices to add.
    pub devices: Vec<DeviceConfig>,
    /// virtio-blk disks.
    pub disks: Vec<DiskConfig>,
    /// Network cards (`--net`).
    pub nets: Vec<NetConfig>,
    /// Socket device (`--vsock`).
    pub vsock: Option<VsockConfig>,
    /// IOMMU, if any.
    pub iommu: Option<IommuKind>,
    /// Print the hierarchy at exit.
    pub print_interrupts: bool,
    /// Seccomp filters.
    pub seccomp: SeccompMode,
}

/// A virtio-blk disk added with `--disk`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskConfig {
    /// Raw image.
    pub path: PathBuf,
    /// Refuse writes (and open the image read-only).
    pub readonly: bool,
}

impl DiskConfig {
    /// Parses `path=IMG[,readonly=on|off]` (the image itself is opened when the VM is built).
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        let err = || ConfigError::Disk(s.to_string());
        let mut path = None;
        let mut readonly = None;
        for part in s.split(',') {
            match part.split_once('=').ok_or_else(err)? {
                ("path", p) if path.is_none() && !p.is_empty() => path = Some(PathBuf::from(p)),
                ("readonly", v) if readonly.is_none() => {
                    readonly = Some(match v {
                        "on" => true,
                        "off" => false,
                        _ => return Err(err()),
                    })
                }
                _ => return Err(err()),
            }
        }
        Ok(Self {
            path: path.ok_or_else(err)?,
            readonly: readonly.unwrap_or(false),
        })
    }
}

/// Splits `key=value[,key=value]` and returns the value of `key`, rejecting other keys.
fn single_key<'a>(s: &'a str, key: &str) -> Option<&'a str> {
    let mut found = None;
    for part in s.split(',') {
        let (k, v) = part.split_once('=')?;
        if k != key || found.is_some() {
            return None;
        }
        found = Some(v);
    }
    found
}

/// Parses a size with an optional K/M/G suffix (binary units).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, shift) = match s.chars().last()? {
        'k' | 'K' => (&s[..s.len() - 1], 10),
        'm' | 'M' => (&s[..s.len() - 1], 20),
        'g' | 'G' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    let n: u64 = num.parse().ok()?;
    n.checked_mul(1u64 << shift)
}

impl VmConfig {
    /// Validates the parsed command line.
    pub fn from_cli(cli: Cli) -> Result<Self, ConfigError> {
        let vcpus = single_key(&cli.cpus, "boot")
            .and_then(|v| v.parse::<u32>().ok())
            .filter(|&n| (1..=MAX_VCPUS).contains(&n))
            .ok_or_else(|| ConfigError::Cpus(cli.cpus.clone()))?;
        let memory = single_key(&cli.memory, "size")
            .and_then(parse_size)
            .ok_or_else(|| ConfigError::Memory(cli.memory.clone()))?;
        if memory < MIN_MEMORY {
            return Err(ConfigError::MemoryTooSmall(memory));
        }
        if memory % PAGE_SIZE != 0 {
            return Err(ConfigError::MemoryNotPageAligned(
                memory,
                memory - memory % PAGE_SIZE,
            ));
        }
        let serial = match cli.serial.as_str() {
            "tty" => SerialMode::Tty,
            "off" => SerialMode::Off,
            s => match s.strip_prefix("file=") {
                Some(p) if !p.is_empty() => SerialMode::File(PathBuf::from(p)),
                _ => return Err(ConfigError::Serial(cli.serial.clone())),
            },
        };
        let devices = cli
            .devices
            .iter()
            .map(|d| DeviceConfig::parse(d))
            .collect::<Result<Vec<_>, _>>()?;
        let disks = cli
            .disks
            .iter()
            .map(|d| DiskConfig::parse(d))
            .collect::<Result<Vec<_>, _>>()?;
        let nets = cli
            .nets
            .iter()
            .map(|n| NetConfig::parse(n))
            .collect::<Result<Vec<_>, _>>()?;
        let vsock = cli.vsock.as_deref().map(VsockConfig::parse).transpose()?;
        let iommu = match cli.iommu.as_deref() {
            None => None,
            Some("intel") => Some(IommuKind::Intel),
            Some(other) => return Err(ConfigError::Iommu(other.to_string())),
        };
        let seccomp = match cli.seccomp.as_str() {
            "on" => SeccompMode::On,
            "log" => SeccompMode::Log,
            "off" => SeccompMode::Off,
            other => return Err(ConfigError::Seccomp(other.to_string())),
        };
        // Files last: everything above is pure parsing.
        check_input_file("--kernel", &cli.kernel, memory)?;
        if let Some(p) = &cli.initramfs {
            check_input_file("--initramfs", p, memory)?;
        }
        Ok(Self {
            seccomp,
            iommu,
            devices,
            disks,
            nets,
            vsock,
            kernel: cli.kernel,
            initramfs: cli.initramfs,
            cmdline: cli.cmdline,
            vcpus,
            memory,
            serial,
            print_interrupts: cli.print_interrupts,
        })
    }
}

/// Checks that `path` (given as `arg`) is a regular file no larger than guest RAM, without
/// reading it. Directories, FIFOs and devices (`/dev/zero`) are refused.
pub fn check_input_file(arg: &'static str, path: &Path, memory: u64) -> Result<u64, ConfigError> {
    let err = |reason: String| ConfigError::File {
        arg,
        path: path.display().to_string(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    let ft = meta.file_type();
    if !ft.is_file() {
        use std::os::unix::fs::FileTypeExt;
        let kind = if ft.is_dir() {
            "a directory"
        } else if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_char_device() {
            "a character device"
        } else if ft.is_block_device() {
            "a block device"
        } else if ft.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        };
        return Err(err(format!("is {kind}, not a regular file")));
    }
    let size = meta.len();
    if size >= memory {
        return Err(err(format!(
            "is larger than guest RAM ({size} bytes, --memory is {memory} bytes)"
        )));
    }
    Ok(size)
}

/// One line for a clap error: its first paragraph (the message and any argument list or
/// possible values that follow it), without clap's "error: " prefix, lines joined by spaces.
pub fn clap_error_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let line = text
        .lines()
        .take_while(|l| !l.trim().is_empty() && !l.starts_with("Usage:"))
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ");
    let line = line.trim_start_matches("error: ").to_string();
    if line.is_empty() {
        "invalid arguments".to_string()
    } else {
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small regular file standing in for a kernel.
    fn kernel_file() -> PathBuf {
        static K: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
        K.get_or_init(|| {
            let p = std::env::temp_dir().join(format!("vmm-config-k-{}", std::process::id()));
            std::fs::write(&p, [0u8; 512]).unwrap();
            p
        })
        .clone()
    }

    fn cli(args: &[&str]) -> Result<VmConfig, ConfigError> {
        let k = kernel_file();
        let mut v = vec!["vmm", "--kernel", k.to_str().unwrap()];
        v.extend_from_slice(args);
        VmConfig::from_cli(Cli::try_parse_from(v).unwrap())
    }

    #[test]
    fn defaults() {
        let c = cli(&[]).unwrap();
        assert_eq!((c.vcpus, c.memory), (1, 512 << 20));
        assert_eq!(c.serial, SerialMode::Tty);
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("512M"), Some(512 << 20));
        assert_eq!(parse_size("2G"), Some(2 << 30));
        assert_eq!(parse_size("64k"), Some(64 << 10));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size(""), None);
        assert_eq!(parse_size("99999999999999999G"), None);
    }

    #[test]
    fn cpus_must_be_boot_n_positive() {
        assert_eq!(cli(&["--cpus", "boot=2"]).unwrap().vcpus, 2);
        for bad in [
            "boot=0",
            "2",
            "boot=",
            "max=2",
            "boot=2,boot=3",
            "boot=-1",
            "boot=100000",
        ] {
            assert!(
                matches!(cli(&["--cpus", bad]), Err(ConfigError::Cpus(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn memory_limits() {
        assert!(matches!(
            cli(&["--memory", "size=1K"]),
            Err(ConfigError::MemoryTooSmall(1024))
        ));
        assert!(matches!(
            cli(&["--memory", "1G"]),
            Err(ConfigError::Memory(_))
        ));
        assert_eq!(cli(&["--memory", "size=4G"]).unwrap().memory, 4 << 30);
    }

    #[test]
    fn disks_parse() {
        let c = cli(&["--disk", "path=/a.img", "--disk", "readonly=on,path=b"]).unwrap();
        assert_eq!(
            c.disks,
            vec![
                DiskConfig {
                    path: "/a.img".into(),
                    readonly: false
                },
                DiskConfig {
                    path: "b".into(),
                    readonly: true
                }
            ]
        );
        for bad in [
            "",
            "/a.img",
            "path=",
            "path=a,path=b",
            "path=a,readonly=yes",
            "path=a,ro=on",
            "readonly=on",
        ] {
            assert_eq!(
                cli(&["--disk", bad]).unwrap_err(),
                ConfigError::Disk(bad.into()),
                "{bad}"
            );
        }
    }

    #[test]
    fn devices_parse() {
        let c = cli(&[
            "--device",
            "irqtest",
            "--device",
            "irqtest,vectors=2048",
            "--device",
            "irqtest,ims=65536,vectors=4",
            "--device",
            "irqtest,doorbell=on",
        ])
        .unwrap();
        assert_eq!(
            c.devices,
            vec![
                DeviceConfig::IrqTest {
                    vectors: IRQTEST_DEFAULT_VECTORS,
                    ims: 0,
                    doorbell: false,
                },
                DeviceConfig::IrqTest {
                    vectors: 2048,
                    ims: 0,
                    doorbell: false,
                },
                DeviceConfig::IrqTest {
                    vectors: 4,
                    ims: 65536,
                    doorbell: false,
                },
                DeviceConfig::IrqTest {
                    vectors: IRQTEST_DEFAULT_VECTORS,
                    ims: 0,
                    doorbell: true,
                }
            ]
        );
        for bad in [
            "irqtest,vectors=0",
            "irqtest,vectors=2049",
            "irqtest,ims=65537",
            "irqtest,ims=-1",
            "irqtest,x=1",
            "irqtest,doorbell=yes",
            "nvme",
            "",
            "vfio",
            "vfio,host=00:03.0",
            "vfio,host=0000:00:03.0,msix=sometimes",
            "vfio,host=0000:00:03.0,host=0000:00:04.0",
            "vfio,msix=dynamic",
        ] {
            assert!(
                matches!(cli(&["--device", bad]), Err(ConfigError::Device(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn vfio_devices_parse() {
        let c = cli(&[
            "--device",
            "vfio,host=0000:00:03.0",
            "--device",
            "vfio,msix=reenable,host=0000:01:00.1",
        ])
        .unwrap();
        assert_eq!(
            c.devices,
            vec![
                DeviceConfig::Vfio {
                    host: "0000:00:03.0".parse().unwrap(),
                    msix: vfio::MsixPolicy::Auto
                },
                DeviceConfig::Vfio {
                    host: "0000:01:00.1".parse().unwrap(),
                    msix: vfio::MsixPolicy::Reenable
                }
            ]
        );
    }

    #[test]
    fn iommu_kinds() {
        assert_eq!(
            cli(&["--iommu", "intel"]).unwrap().iommu,
            Some(IommuKind::Intel)
        );
        assert_eq!(cli(&[]).unwrap().iommu, None);
        assert!(matches!(
            cli(&["--iommu", "amd"]),
            Err(ConfigError::Iommu(_))
        ));
    }

    #[test]
    fn serial_modes() {
        assert_eq!(cli(&["--serial", "off"]).unwrap().serial, SerialMode::Off);
        assert_eq!(
            cli(&["--serial", "file=/tmp/x"]).unwrap().serial,
            SerialMode::File("/tmp/x".into())
        );
        assert!(cli(&["--serial", "file="]).is_err());
        assert!(cli(&["--serial", "pty"]).is_err());
    }

    #[test]
    fn memory_not_page_aligned_is_rejected_not_rounded() {
        let e = cli(&["--memory", "size=67108865"]).unwrap_err();
        assert_eq!(e, ConfigError::MemoryNotPageAligned(67108865, 67108864));
        assert!(e.to_string().contains("rejected (not rounded)"), "{e}");
        assert_eq!(
            cli(&["--memory", "size=65540K"]).unwrap().memory,
            65540 << 10
        );
        assert!(matches!(
            cli(&["--memory", "size=65537K"]),
            Err(ConfigError::MemoryNotPageAligned(..))
        ));
    }

    fn file_err(arg: &str, path: &str) -> String {
        let k = kernel_file();
        let mut v = vec!["vmm", "--kernel", k.to_str().unwrap()];
        if arg == "--kernel" {
            v[2] = path;
        } else {
            v.extend_from_slice(&[arg, path]);
        }
        match VmConfig::from_cli(Cli::try_parse_from(v).unwrap()) {
            Err(e @ ConfigError::File { .. }) => e.to_string(),
            other => panic!("{arg} {path}: expected a file error, got {other:?}"),
        }
    }

    #[test]
    fn inputs_must_be_regular_files() {
        let e = file_err("--initramfs", "/dev/zero");
        assert_eq!(
            e,
            "--initramfs /dev/zero: is a character device, not a regular file"
        );
        let dir = std::env::temp_dir();
        let e = file_err("--kernel", dir.to_str().unwrap());
        assert!(e.starts_with("--kernel ") && e.ends_with("is a directory, not a regular file"));
        let fifo = dir.join(format!("vmm-config-fifo-{}", std::process::id()));
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo on a NUL-terminated path we own.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = file_err("--initramfs", fifo.to_str().unwrap());
        std::fs::remove_file(&fifo).unwrap();
        assert!(e.ends_with("is a FIFO, not a regular file"), "{e}");
        let e = file_err("--kernel", "/nonexistent/bzImage");
        assert!(
            e.starts_with("--kernel /nonexistent/bzImage: No such file"),
            "{e}"
        );
    }

    #[test]
    fn inputs_larger_than_ram_are_refused_before_reading() {
        let big = std::env::temp_dir().join(format!("vmm-config-big-{}", std::process::id()));
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(64 << 20).unwrap(); // sparse: nothing is written or read
        let k = kernel_file();
        let r = |arg: &str| {
            let mut v = vec![
                "vmm",
                "--kernel",
                k.to_str().unwrap(),
                "--memory",
                "size=64M",
            ];
            if arg == "--kernel" {
                v[2] = big.to_str().unwrap();
            } else {
                v.extend_from_slice(&[arg, big.to_str().unwrap()]);
            }
            VmConfig::from_cli(Cli::try_parse_from(v).unwrap())
        };
        let ek = r("--kernel").unwrap_err().to_string();
        let ei = r("--initramfs").unwrap_err().to_string();
        std::fs::remove_file(&big).unwrap();
        assert!(
            ek.starts_with("--kernel ") && ek.contains("is larger than guest RAM"),
            "{ek}"
        );
        assert!(
            ei.starts_with("--initramfs ") && ei.contains("is larger than guest RAM"),
            "{ei}"
        );
    }

    #[test]
    fn seccomp_modes() {
        assert_eq!(cli(&[]).unwrap().seccomp, SeccompMode::On);
        assert_eq!(
            cli(&["--seccomp", "log"]).unwrap().seccomp,
            SeccompMode::Log
        );
        assert_eq!(
            cli(&["--seccomp", "off"]).unwrap().seccomp,
            SeccompMode::Off
        );
        assert_eq!(
            cli(&["--seccomp", "kill"]),
            Err(ConfigError::Seccomp("kill".into()))
        );
    }

    #[test]
    fn net_options() {
        let c = cli(&["--net", "tap=tap0", "--net", "tap=t1,mac=52:54:00:12:34:56"]).unwrap();
        assert_eq!(
            c.nets[0],
            NetConfig {
                tap: "tap0".into(),
                mac: None
            }
        );
        assert_eq!(c.nets[1].mac.unwrap().to_string(), "52:54:00:12:34:56");
        for (bad, why) in [
            ("tap=t,mac=52:54:00:12:34", "invalid MAC address"),
            ("tap=t,mac=01:00:5e:00:00:01", "multicast"),
            ("tap=t,mac=00:00:00:00:00:00", "all-zero"),
            ("tap=a/b", "invalid tap name"),
            ("tap=0123456789abcdef", "invalid tap name"),
            ("tap=", "invalid tap name"),
            ("mac=52:54:00:12:34:56", "expected tap=NAME"),
            ("tap=t,tap=u", "expected tap=NAME"),
            ("tap=t,speed=10", "expected tap=NAME"),
        ] {
            let e = cli(&["--net", bad]).unwrap_err();
            assert!(matches!(e, ConfigError::Net { .. }), "{bad}");
            assert!(e.to_string().contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn vsock_cid_range() {
        assert_eq!(cli(&[]).unwrap().vsock, None);
        assert_eq!(
            cli(&["--vsock", "cid=3"]).unwrap().vsock,
            Some(VsockConfig { cid: 3 })
        );
        assert_eq!(
            cli(&["--vsock", "cid=4294967294"]).unwrap().vsock,
            Some(VsockConfig { cid: 4294967294 })
        );
        for bad in [
            "cid=0",
            "cid=1",
            "cid=2",
            "cid=4294967295",
            "cid=4294967296",
        ] {
            let e = cli(&["--vsock", bad]).unwrap_err();
            assert!(e.to_string().contains("reserved"), "{bad}: {e}");
        }
        for bad in ["cid=", "cid=-3", "3", "port=3", "cid=3,cid=4"] {
            let e = cli(&["--vsock", bad]).unwrap_err();
            assert!(e.to_string().contains("expected cid=N"), "{bad}: {e}");
        }
    }

    #[test]
    fn dsa_movdir64b_option() {
        let get = |spec: &str| match DeviceConfig::parse(spec) {
            Ok(DeviceConfig::Dsa { movdir64b, .. }) => Ok(movdir64b),
            other => Err(other),
        };
        assert_eq!(get("dsa"), Ok(None));
        assert_eq!(get("dsa,movdir64b=on"), Ok(Some(true)));
        assert_eq!(get("dsa,wqs=2,movdir64b=off"), Ok(Some(false)));
        assert!(get("dsa,movdir64b=yes").is_err());
        assert!(get("dsa,movdir64b").is_err());
    }

    #[test]
    fn missing_kernel_names_the_argument_in_one_line() {
        let e = Cli::try_parse_from(["vmm"]).unwrap_err();
        let line = clap_error_line(&e);
        assert!(!line.contains('\n'));
        assert!(
            line.starts_with("the following required arguments were not provided:")
                && line.contains("--kernel <PATH>"),
            "{line}"
        );
        let e = Cli::try_parse_from(["vmm", "--kernel", "k", "--bogus"]).unwrap_err();
        assert_eq!(clap_error_line(&e), "unexpected argument '--bogus' found");
    }
}
