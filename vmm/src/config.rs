//! Command-line configuration: cloud-hypervisor style `key=value` flags.

use std::path::PathBuf;

use clap::Parser;
use thiserror::Error;

/// Smallest memory size accepted.
pub const MIN_MEMORY: u64 = 64 << 20;
/// Most vCPUs accepted (the MADT and CPUID topology support x2APIC IDs beyond 255).
pub const MAX_VCPUS: u32 = 1024;

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
    /// `--device` could not be parsed.
    #[error("invalid --device '{0}': expected irqtest[,vectors=N] (N in 1..=2048) or dsa[,wqs=N,engines=N,groups=N,ims=N]")]
    Device(String),
    /// `--iommu` could not be parsed.
    #[error("invalid --iommu '{0}': expected intel")]
    Iommu(String),
    /// `--serial` could not be parsed.
    #[error("invalid --serial '{0}': expected tty, off or file=PATH")]
    Serial(String),
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
    },
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
    /// Parses `irqtest[,vectors=N]`.
    pub fn parse(spec: &str) -> Result<Self, ConfigError> {
        let bad = || ConfigError::Device(spec.to_string());
        let mut parts = spec.split(',');
        match parts.next() {
            Some("irqtest") => {
                let mut vectors = IRQTEST_DEFAULT_VECTORS;
                for p in parts {
                    match p.split_once('=') {
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
                Ok(DeviceConfig::IrqTest { vectors })
            }
            Some("dsa") => {
                let (mut wqs, mut engines, mut groups, mut ims) = (4u8, 4u8, 4u8, 256u16);
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
                        _ => return Err(bad()),
                    }
                }
                Ok(DeviceConfig::Dsa {
                    wqs,
                    engines,
                    groups,
                    ims,
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
    /// Linux kernel (bzImage).
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
    /// Add a device: irqtest[,vectors=N] or dsa[,wqs=N,engines=N,groups=N,ims=N] (repeatable).
    #[arg(long = "device", value_name = "SPEC")]
    pub devices: Vec<String>,
    /// Add an IOMMU: intel (VT-d interrupt remapping, x2APIC mode).
    #[arg(long, value_name = "KIND")]
    pub iommu: Option<String>,
    /// Print the interrupt hierarchy to stderr when the VMM exits.
    #[arg(long)]
    pub print_interrupts: bool,
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
    /// IOMMU, if any.
    pub iommu: Option<IommuKind>,
    /// Print the hierarchy at exit.
    pub print_interrupts: bool,
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
        let iommu = match cli.iommu.as_deref() {
            None => None,
            Some("intel") => Some(IommuKind::Intel),
            Some(other) => return Err(ConfigError::Iommu(other.to_string())),
        };
        Ok(Self {
            iommu,
            devices,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Result<VmConfig, ConfigError> {
        let mut v = vec!["vmm", "--kernel", "k"];
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
    fn devices_parse() {
        let c = cli(&["--device", "irqtest", "--device", "irqtest,vectors=2048"]).unwrap();
        assert_eq!(
            c.devices,
            vec![
                DeviceConfig::IrqTest {
                    vectors: IRQTEST_DEFAULT_VECTORS
                },
                DeviceConfig::IrqTest { vectors: 2048 }
            ]
        );
        for bad in [
            "irqtest,vectors=0",
            "irqtest,vectors=2049",
            "irqtest,x=1",
            "nvme",
            "",
        ] {
            assert!(
                matches!(cli(&["--device", bad]), Err(ConfigError::Device(_))),
                "{bad}"
            );
        }
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
}
