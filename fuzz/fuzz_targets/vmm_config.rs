//! Fuzzes the vmm's command line: an argv built from the input (known flags, `--flag value`
//! or `--flag=value`, values shaped like the real ones or arbitrary strings, unknown flags)
//! through `vmm::config::Cli::try_parse_from` and `VmConfig::from_cli`, and arbitrary
//! strings through `DeviceConfig::parse`.
//!
//! Invariants: nothing panics; a configuration the VMM accepts is one it can build (vCPUs in
//! 1..=MAX_VCPUS, memory at least MIN_MEMORY, one device per `--device`, every DSA shape
//! passes `DsaConfig::validate`, irqtest vectors in 1..=2048, ims at most 65536); a parsed device spec written
//! back in canonical form parses to the same device; every `ConfigError` is one line
//! (unless the value it quotes has a line break).

#![no_main]

use arbitrary::Arbitrary;
use clap::Parser;
use libfuzzer_sys::fuzz_target;

use vmm::config::{Cli, DeviceConfig, VmConfig, MAX_VCPUS, MIN_MEMORY};

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Flag {
    Kernel,
    Initramfs,
    Cmdline,
    Cpus,
    Memory,
    Serial,
    Device,
    Iommu,
    PrintInterrupts,
    Seccomp,
    Help,
    Version,
}

impl Flag {
    fn name(self) -> &'static str {
        match self {
            Flag::Kernel => "--kernel",
            Flag::Initramfs => "--initramfs",
            Flag::Cmdline => "--cmdline",
            Flag::Cpus => "--cpus",
            Flag::Memory => "--memory",
            Flag::Serial => "--serial",
            Flag::Device => "--device",
            Flag::Iommu => "--iommu",
            Flag::PrintInterrupts => "--print-interrupts",
            Flag::Seccomp => "--seccomp",
            Flag::Help => "--help",
            Flag::Version => "--version",
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Word {
    Irqtest,
    Dsa,
    Intel,
    Tty,
    Off,
    File,
    Boot,
    Size,
    Vectors,
    Wqs,
    Engines,
    Groups,
    Ims,
    Movdir64b,
    On,
    Log,
    Vfio,
    Host,
    Msix,
    Dynamic,
    Reenable,
    Bdf,
}

impl Word {
    fn text(self) -> &'static str {
        match self {
            Word::Irqtest => "irqtest",
            Word::Dsa => "dsa",
            Word::Intel => "intel",
            Word::Tty => "tty",
            Word::Off => "off",
            Word::File => "file",
            Word::Boot => "boot",
            Word::Size => "size",
            Word::Vectors => "vectors",
            Word::Wqs => "wqs",
            Word::Engines => "engines",
            Word::Groups => "groups",
            Word::Ims => "ims",
            Word::Movdir64b => "movdir64b",
            Word::On => "on",
            Word::Log => "log",
            Word::Vfio => "vfio",
            Word::Host => "host",
            Word::Msix => "msix",
            Word::Dynamic => "dynamic",
            Word::Reenable => "reenable",
            Word::Bdf => "0000:00:03.0",
        }
    }
}

#[derive(Arbitrary, Debug, Clone)]
enum Number {
    Small(u8),
    Any(u64),
    Negative(i32),
    Suffixed(u32, u8),
    Text(String),
}

impl Number {
    fn text(&self) -> String {
        match self {
            Number::Small(n) => n.to_string(),
            Number::Any(n) => n.to_string(),
            Number::Negative(n) => n.to_string(),
            Number::Suffixed(n, s) => {
                let suffix = ["K", "M", "G", "k", "m", "g", "", "T", " ", "KM"];
                format!("{n}{}", suffix[usize::from(*s) % suffix.len()])
            }
            Number::Text(s) => s.clone(),
        }
    }
}

/// A value shaped like the real ones: `word[,key=number]...`, or anything.
#[derive(Arbitrary, Debug, Clone)]
enum Value {
    Spec {
        head: Option<Word>,
        pairs: Vec<(Word, Option<Number>)>,
    },
    Raw(String),
}

impl Value {
    fn text(&self) -> String {
        match self {
            Value::Spec { head, pairs } => {
                let mut parts: Vec<String> = head.iter().map(|w| w.text().to_string()).collect();
                for (k, v) in pairs.iter().take(8) {
                    match v {
                        Some(n) => parts.push(format!("{}={}", k.text(), n.text())),
                        None => parts.push(k.text().to_string()),
                    }
                }
                parts.join(",")
            }
            Value::Raw(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug, Clone)]
enum Arg {
    /// `--flag value` (or `--flag=value` when `joined`).
    Flag {
        flag: Flag,
        value: Option<Value>,
        joined: bool,
    },
    Raw(String),
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// Put `--kernel k` first so most inputs get past the required argument.
    kernel: bool,
    args: Vec<Arg>,
    specs: Vec<Value>,
}

/// A parsed device's canonical spec.
fn canonical(d: &DeviceConfig) -> String {
    match d {
        DeviceConfig::IrqTest {
            vectors,
            ims,
            doorbell,
        } => {
            let d = if *doorbell { ",doorbell=on" } else { "" };
            format!("irqtest,vectors={vectors},ims={ims}{d}")
        }
        DeviceConfig::Dsa {
            wqs,
            engines,
            groups,
            ims,
            movdir64b,
        } => {
            let m = match movdir64b {
                None => "",
                Some(true) => ",movdir64b=on",
                Some(false) => ",movdir64b=off",
            };
            format!("dsa,wqs={wqs},engines={engines},groups={groups},ims={ims}{m}")
        }
        DeviceConfig::Vfio { host, msix } => {
            let m = match msix {
                vfio::MsixPolicy::Auto => "",
                vfio::MsixPolicy::Dynamic => ",msix=dynamic",
                vfio::MsixPolicy::Reenable => ",msix=reenable",
            };
            format!("vfio,host={host}{m}")
        }
    }
}

/// What the VMM does with a parsed device must work.
fn check_device(spec: &str, d: &DeviceConfig) {
    match d {
        DeviceConfig::IrqTest { vectors, ims, .. } => {
            assert!((1..=2048).contains(vectors), "{spec:?} -> {d:?}");
            assert!(*ims <= 65536, "{spec:?} -> {d:?}")
        }
        DeviceConfig::Dsa { .. } => {
            let cfg = d
                .dsa_config()
                .expect("a dsa device has a DSA configuration");
            if let Err(e) = cfg.validate() {
                panic!("{spec:?} accepted as {d:?}, which the DSA rejects: {e}");
            }
        }
        DeviceConfig::Vfio { host, .. } => {
            assert!(host.device < 32 && host.function < 8, "{spec:?} -> {d:?}")
        }
    }
    let again = canonical(d);
    assert_eq!(
        DeviceConfig::parse(&again).as_ref(),
        Ok(d),
        "{spec:?} -> {d:?} -> {again:?}"
    );
}

/// An error is one line, unless it echoes a value that has a line break itself (the
/// messages quote the value as given; reported, left to the config owner).
fn check_error<S: AsRef<str>>(e: &impl std::fmt::Display, inputs: &[S]) {
    let text = e.to_string();
    assert!(!text.is_empty(), "empty error");
    if !inputs.iter().any(|s| s.as_ref().contains(['\n', '\r'])) {
        assert!(!text.contains('\n'), "{text:?}");
    }
}

/// A small regular file standing in for the kernel.
fn kernel_file() -> String {
    static K: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    K.get_or_init(|| {
        let p = std::env::temp_dir().join(format!("vmm-fuzz-config-k-{}", std::process::id()));
        std::fs::write(&p, [0u8; 512]).expect("scratch kernel file");
        p.to_string_lossy().into_owned()
    })
    .clone()
}

fuzz_target!(|input: Input| {
    for spec in input.specs.iter().take(8) {
        let s = spec.text();
        match DeviceConfig::parse(&s) {
            Ok(d) => check_device(&s, &d),
            Err(e) => check_error(&e, &[&s]),
        }
    }

    let mut argv = vec!["vmm".to_string()];
    if input.kernel {
        // `from_cli` checks the file (regular, smaller than RAM): give it a real one.
        argv.extend(["--kernel".to_string(), kernel_file()]);
    }
    for a in input.args.iter().take(24) {
        match a {
            Arg::Flag {
                flag,
                value,
                joined,
            } => match (value, joined) {
                (Some(v), true) => argv.push(format!("{}={}", flag.name(), v.text())),
                (Some(v), false) => argv.extend([flag.name().to_string(), v.text()]),
                (None, _) => argv.push(flag.name().to_string()),
            },
            Arg::Raw(s) => argv.push(s.clone()),
        }
    }
    let Ok(cli) = Cli::try_parse_from(&argv) else {
        return;
    };
    let devices = cli.devices.clone();
    match VmConfig::from_cli(cli) {
        Ok(c) => {
            assert!((1..=MAX_VCPUS).contains(&c.vcpus), "{argv:?} -> {c:?}");
            assert!(c.memory >= MIN_MEMORY, "{argv:?} -> {c:?}");
            assert_eq!(c.devices.len(), devices.len(), "{argv:?}");
            for (spec, d) in devices.iter().zip(&c.devices) {
                check_device(spec, d);
            }
        }
        Err(e) => check_error(&e, &argv),
    }
});
