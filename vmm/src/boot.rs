//! Loading a Linux bzImage for the 64-bit boot protocol (Documentation/arch/x86/boot.rst):
//! kernel, initramfs, command line, zero page with the e820 map, and the identity-mapped page
//! tables and GDT the 64-bit entry point expects.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use linux_loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::{load_cmdline, Cmdline, KernelLoader};
use thiserror::Error;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::layout::*;

/// e820 RAM type.
const E820_RAM: u32 = 1;
/// e820 reserved type.
const E820_RESERVED: u32 = 2;
/// "HdrS" boot protocol signature.
const HDR_MAGIC: u32 = 0x5372_6448;
/// Boot flag signature.
const BOOT_FLAG: u16 = 0xaa55;
/// Loader type "undefined" (0xff).
const LOADER_TYPE: u8 = 0xff;
/// xloadflags: kernel has the 64-bit entry point at +0x200.
const XLF_KERNEL_64: u16 = 1;
/// Offset of the 64-bit entry from the protected-mode kernel start.
const ENTRY_64_OFFSET: u64 = 0x200;

/// Errors while preparing the guest to boot. These describe bad user input (files) or
/// memory too small for them.
#[derive(Debug, Error)]
pub enum BootError {
    /// The kernel file cannot be opened.
    #[error("cannot open kernel {path}: {source}")]
    OpenKernel {
        /// Path given.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The kernel file is not a usable bzImage.
    #[error("{path} is not a bzImage the VMM can boot: {reason}")]
    NotBzImage {
        /// Path given.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The initramfs cannot be read.
    #[error("cannot read initramfs {path}: {source}")]
    ReadInitramfs {
        /// Path given.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A kernel or initramfs path is not a regular file (a directory, FIFO or device).
    #[error("{arg} {path} is not a regular file")]
    NotRegularFile {
        /// `--kernel` or `--initramfs`.
        arg: &'static str,
        /// Path given.
        path: String,
    },
    /// The kernel is larger than the guest RAM it is loaded into.
    #[error("kernel {path} ({size} bytes) is larger than the guest RAM above {load:#x} ({room} bytes); give the guest more memory")]
    KernelTooLarge {
        /// Path given.
        path: String,
        /// File size.
        size: u64,
        /// Load address.
        load: u64,
        /// Bytes of RAM from the load address to the end of low memory.
        room: u64,
    },
    /// The initramfs does not fit in low memory above the kernel.
    #[error("initramfs of {size} bytes does not fit in guest memory below {limit:#x} above the kernel; give the guest more memory")]
    InitramfsTooLarge {
        /// Initramfs size.
        size: u64,
        /// Highest address usable.
        limit: u64,
    },
    /// The command line is invalid or too long.
    #[error("invalid kernel command line: {0}")]
    Cmdline(String),
    /// Writing boot structures to guest memory failed.
    #[error("cannot write boot structures to guest memory: {0}")]
    GuestMemory(String),
}

/// Where the boot vCPU starts.
#[derive(Clone, Copy, Debug)]
pub struct BootInfo {
    /// 64-bit entry point.
    pub entry: u64,
}

fn mem_err<E: std::fmt::Display>(e: E) -> BootError {
    BootError::GuestMemory(e.to_string())
}

/// Loads kernel, initramfs and command line and writes the zero page, page tables and GDT.
pub fn load_linux(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    kernel: &Path,
    initramfs: Option<&Path>,
    cmdline: &str,
    rsdp: Option<u64>,
) -> Result<BootInfo, BootError> {
    let kpath = kernel.display().to_string();
    let open_err = |source| BootError::OpenKernel {
        path: kpath.clone(),
        source,
    };
    let mut kfile = File::open(kernel).map_err(open_err)?;
    let kmeta = kfile.metadata().map_err(open_err)?;
    if !kmeta.is_file() {
        return Err(BootError::NotRegularFile {
            arg: "--kernel",
            path: kpath,
        });
    }
    let low_end = mem_size.min(MMIO_HOLE_START);
    let room = low_end.saturating_sub(KERNEL_LOAD_ADDR);
    if kmeta.len() > room {
        return Err(BootError::KernelTooLarge {
            path: kpath,
            size: kmeta.len(),
            load: KERNEL_LOAD_ADDR,
            room,
        });
    }
    let loaded = BzImage::load(mem, Some(GuestAddress(KERNEL_LOAD_ADDR)), &mut kfile, None)
        .map_err(|e| BootError::NotBzImage {
            path: kpath.clone(),
            reason: e.to_string(),
        })?;
    let hdr = loaded.setup_header.ok_or_else(|| BootError::NotBzImage {
        path: kpath.clone(),
        reason: "no setup header".into(),
    })?;
    if hdr.xloadflags & XLF_KERNEL_64 == 0 || hdr.version < 0x020c {
        return Err(BootError::NotBzImage {
            path: kpath,
            reason: format!(
                "boot protocol {}.{:02} without a 64-bit entry point",
                hdr.version >> 8,
                hdr.version & 0xff
            ),
        });
    }

    let mut params = boot_params {
        hdr,
        ..Default::default()
    };
    params.hdr.type_of_loader = LOADER_TYPE;
    params.hdr.boot_flag = BOOT_FLAG;
    params.hdr.header = HDR_MAGIC;
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = cmdline.len() as u32;
    if let Some(rsdp) = rsdp {
        params.acpi_rsdp_addr = rsdp;
    }

    // Command line.
    let mut cl = Cmdline::new(CMDLINE_MAX_SIZE).map_err(|e| BootError::Cmdline(e.to_string()))?;
    cl.insert_str(cmdline)
        .map_err(|e| BootError::Cmdline(e.to_string()))?;
    load_cmdline(mem, GuestAddress(CMDLINE_ADDR), &cl)
        .map_err(|e| BootError::Cmdline(e.to_string()))?;

    // Initramfs at the top of low RAM, below the kernel's limit. Its size is checked
    // against the room left before anything is read.
    if let Some(path) = initramfs {
        let ipath = path.display().to_string();
        let read_err = |source| BootError::ReadInitramfs {
            path: ipath.clone(),
            source,
        };
        let file = File::open(path).map_err(read_err)?;
        let meta = file.metadata().map_err(read_err)?;
        if !meta.is_file() {
            return Err(BootError::NotRegularFile {
                arg: "--initramfs",
                path: ipath,
            });
        }
        let size = meta.len();
        let limit = low_end.min(u64::from(hdr.initrd_addr_max) + 1);
        let kernel_top =
            KERNEL_LOAD_ADDR + u64::from(hdr.init_size).max(loaded.kernel_end - KERNEL_LOAD_ADDR);
        let addr = limit.checked_sub(size).map(|a| a & !0xfff);
        match addr {
            Some(a) if a >= kernel_top => {
                let mut data = Vec::with_capacity(size as usize);
                file.take(size).read_to_end(&mut data).map_err(read_err)?;
                if data.len() as u64 != size {
                    return Err(read_err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "file shrank while being read",
                    )));
                }
                mem.write_slice(&data, GuestAddress(a)).map_err(mem_err)?;
                params.hdr.ramdisk_image = a as u32;
                params.hdr.ramdisk_size = size as u32;
            }
            _ => return Err(BootError::InitramfsTooLarge { size, limit }),
        }
    }

    // e820 map.
    let mut e820 = vec![
        (0, EBDA_START, E820_RAM),
        (EBDA_START, KERNEL_LOAD_ADDR - EBDA_START, E820_RESERVED),
        (KERNEL_LOAD_ADDR, low_end - KERNEL_LOAD_ADDR, E820_RAM),
        (PCI_ECAM_START, PCI_ECAM_SIZE, E820_RESERVED),
    ];
    if mem_size > MMIO_HOLE_START {
        e820.push((HIGH_RAM_START, mem_size - MMIO_HOLE_START, E820_RAM));
    }
    for (i, (addr, size, r#type)) in e820.into_iter().enumerate() {
        params.e820_table[i] = boot_e820_entry { addr, size, r#type };
        params.e820_entries = (i + 1) as u8;
    }
    LinuxBootConfigurator::write_bootparams(
        &BootParams::new(&params, GuestAddress(ZERO_PAGE_ADDR)),
        mem,
    )
    .map_err(mem_err)?;

    write_page_tables(mem)?;
    write_gdt(mem)?;
    write_reset_stub(mem)?;
    Ok(BootInfo {
        entry: loaded.kernel_load.raw_value() + ENTRY_64_OFFSET,
    })
}

/// Identity-maps the first GiB with 2 MiB pages.
fn write_page_tables(mem: &GuestMemoryMmap) -> Result<(), BootError> {
    mem.write_obj(PDPT_ADDR | 0x3, GuestAddress(PML4_ADDR))
        .map_err(mem_err)?;
    mem.write_obj(PD_ADDR | 0x3, GuestAddress(PDPT_ADDR))
        .map_err(mem_err)?;
    for i in 0..512u64 {
        mem.write_obj((i << 21) | 0x83, GuestAddress(PD_ADDR + i * 8))
            .map_err(mem_err)?;
    }
    Ok(())
}

/// Builds a GDT descriptor from flags, base and limit.
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    (u64::from(base & 0xff00_0000) << 32)
        | (u64::from(flags & 0xf0ff) << 40)
        | (u64::from(limit & 0x000f_0000) << 32)
        | (u64::from(base & 0x00ff_ffff) << 16)
        | u64::from(limit & 0xffff)
}

/// GDT: null, 64-bit code (0x08), data (0x10), TSS (0x18).
pub const GDT: [u64; 4] = [
    0,
    0x00af_9b00_0000_ffff,
    0x00cf_9300_0000_ffff,
    0x008f_8b00_0000_ffff,
];

fn write_gdt(mem: &GuestMemoryMmap) -> Result<(), BootError> {
    for (i, e) in GDT.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(GDT_ADDR + 8 * i as u64))
            .map_err(mem_err)?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_ADDR))
        .map_err(mem_err)?;
    Ok(())
}

/// Firmware-free reset: a guest that restarts through the BIOS reset vector (Linux's
/// `reboot=bios` path, taken when the ACPI and keyboard-controller resets are skipped)
/// lands here and pulses the i8042 reset line, which the VMM turns into a reboot.
pub const RESET_STUB: [u8; 7] = [
    0xb0, 0xfe, // mov al, 0xfe
    0xe6, 0x64, // out 0x64, al
    0xf4, // hlt
    0xeb, 0xf9, // jmp -7 (back to mov)
];

fn write_reset_stub(mem: &GuestMemoryMmap) -> Result<(), BootError> {
    mem.write_slice(&RESET_STUB, GuestAddress(RESET_VECTOR))
        .map_err(mem_err)
}

/// Creates guest memory for `mem_size` bytes.
pub fn create_memory(mem_size: u64) -> Result<GuestMemoryMmap, BootError> {
    let ranges: Vec<(GuestAddress, usize)> = ram_ranges(mem_size)
        .into_iter()
        .map(|(s, l)| (GuestAddress(s), l as usize))
        .collect();
    let mem = GuestMemoryMmap::from_ranges(&ranges).map_err(mem_err)?;
    debug_assert_eq!(mem.num_regions(), ranges.len());
    Ok(mem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_match_constants() {
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), GDT[1]);
        assert_eq!(gdt_entry(0xc093, 0, 0xfffff), GDT[2]);
        assert_eq!(gdt_entry(0x808b, 0, 0xfffff), GDT[3]);
    }

    #[test]
    fn non_bzimage_is_rejected_with_path() {
        let mem = create_memory(64 << 20).unwrap();
        let dir = std::env::temp_dir().join(format!("vmm-boot-test-{}", std::process::id()));
        std::fs::write(&dir, vec![0u8; 8192]).unwrap();
        let err = load_linux(&mem, 64 << 20, &dir, None, "console=ttyS0", None).unwrap_err();
        std::fs::remove_file(&dir).unwrap();
        assert!(matches!(err, BootError::NotBzImage { .. }), "{err}");
        assert!(err.to_string().contains("is not a bzImage"));
    }

    #[test]
    fn missing_kernel_is_an_open_error() {
        let mem = create_memory(64 << 20).unwrap();
        let err =
            load_linux(&mem, 64 << 20, Path::new("/nonexistent/k"), None, "", None).unwrap_err();
        assert!(matches!(err, BootError::OpenKernel { .. }));
    }

    #[test]
    fn kernel_must_be_a_regular_file() {
        let mem = create_memory(64 << 20).unwrap();
        let err = load_linux(&mem, 64 << 20, Path::new("/dev/zero"), None, "", None).unwrap_err();
        assert_eq!(err.to_string(), "--kernel /dev/zero is not a regular file");
        let dir = std::env::temp_dir();
        let err = load_linux(&mem, 64 << 20, &dir, None, "", None).unwrap_err();
        assert!(matches!(
            err,
            BootError::NotRegularFile {
                arg: "--kernel",
                ..
            }
        ));
    }

    #[test]
    fn kernel_larger_than_ram_says_so_before_reading() {
        let mem = create_memory(64 << 20).unwrap();
        let p = std::env::temp_dir().join(format!("vmm-boot-big-{}", std::process::id()));
        std::fs::File::create(&p)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        let err = load_linux(&mem, 64 << 20, &p, None, "", None).unwrap_err();
        std::fs::remove_file(&p).unwrap();
        assert!(matches!(err, BootError::KernelTooLarge { .. }), "{err}");
        assert!(err.to_string().contains("is larger than the guest RAM"));
    }

    #[test]
    fn page_tables_identity_map_first_gib() {
        let mem = create_memory(64 << 20).unwrap();
        write_page_tables(&mem).unwrap();
        let pde: u64 = mem.read_obj(GuestAddress(PD_ADDR + 8 * 3)).unwrap();
        assert_eq!(pde, (3 << 21) | 0x83);
    }
}
