//! Loading Linux: a bzImage for the 64-bit boot protocol (Documentation/arch/x86/boot.rst:
//! zero page with the e820 map, identity-mapped page tables and a 64-bit GDT), or an ELF
//! vmlinux for the PVH boot protocol (Documentation/arch/x86/pvh.rst: `hvm_start_info` with
//! the memory map and the initramfs as module 0, 32-bit flat segments, paging off). PVH skips
//! the bzImage's decompressor, which is most of a nested guest's boot time.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use linux_loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::{
    start_info::{hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info},
    Elf, PvhBootCapability,
};
use linux_loader::loader::{load_cmdline, Cmdline, KernelLoader};
use thiserror::Error;
use vm_memory::bitmap::BitmapSlice;
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, ReadVolatile,
    VolatileMemoryError, VolatileSlice,
};

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
    /// The kernel file is an ELF file the VMM cannot boot with PVH.
    #[error("{path} is not an ELF vmlinux the VMM can boot: {reason}")]
    NotBootableElf {
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

/// How the boot vCPU enters the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootProtocol {
    /// bzImage 64-bit entry: long mode on identity-mapped page tables, RSI = zero page.
    Linux64,
    /// PVH entry: 32-bit protected mode, paging off, EBX = `hvm_start_info`.
    Pvh,
}

/// Where and how the boot vCPU starts.
#[derive(Clone, Copy, Debug)]
pub struct BootInfo {
    /// Entry point (64-bit entry of a bzImage, PVH entry of a vmlinux).
    pub entry: u64,
    /// The boot protocol `entry` expects.
    pub protocol: BootProtocol,
}

fn mem_err<E: std::fmt::Display>(e: E) -> BootError {
    BootError::GuestMemory(e.to_string())
}

/// Loads kernel, initramfs and command line for the boot protocol the kernel file calls for
/// (see [`KernelFormat`]) and writes the boot structures: for a bzImage the zero page, page
/// tables and GDT of the 64-bit entry; for an ELF vmlinux the PVH start info, memory map and
/// module list and the GDT of the 32-bit PVH entry.
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
    let format = KernelFormat::detect(&mut kfile).map_err(open_err)?;
    let loaded = match format {
        KernelFormat::Elf => load_elf(mem, low_end, &kpath, &mut kfile)?,
        // Anything else is offered to the bzImage loader, which says what is wrong with it.
        KernelFormat::BzImage | KernelFormat::Unknown => {
            load_bzimage(mem, &kpath, &mut kfile, cmdline, rsdp)?
        }
    };

    // Command line.
    let mut cl = Cmdline::new(CMDLINE_MAX_SIZE).map_err(|e| BootError::Cmdline(e.to_string()))?;
    cl.insert_str(cmdline)
        .map_err(|e| BootError::Cmdline(e.to_string()))?;
    load_cmdline(mem, GuestAddress(CMDLINE_ADDR), &cl)
        .map_err(|e| BootError::Cmdline(e.to_string()))?;

    // Initramfs at the top of low RAM, below the kernel's limit and above its end.
    let ramdisk = match initramfs {
        Some(path) => Some(load_initramfs(
            mem,
            path,
            low_end.min(loaded.initrd_limit),
            loaded.kernel_top,
        )?),
        None => None,
    };

    let e820 = e820_map(mem_size);
    let entry = match loaded.protocol {
        BootProtocol::Linux64 => {
            let mut params = loaded.zero_page.unwrap_or_default();
            if let Some((addr, size)) = ramdisk {
                params.hdr.ramdisk_image = addr as u32;
                params.hdr.ramdisk_size = size as u32;
            }
            for (i, &(addr, size, r#type)) in e820.iter().enumerate() {
                params.e820_table[i] = boot_e820_entry { addr, size, r#type };
                params.e820_entries = (i + 1) as u8;
            }
            LinuxBootConfigurator::write_bootparams(
                &BootParams::new(&params, GuestAddress(ZERO_PAGE_ADDR)),
                mem,
            )
            .map_err(mem_err)?;
            write_page_tables(mem)?;
            write_gdt(mem, &GDT)?;
            loaded.entry
        }
        BootProtocol::Pvh => {
            write_pvh_start_info(mem, &e820, ramdisk, rsdp)?;
            write_gdt(mem, &PVH_GDT)?;
            loaded.entry
        }
    };
    write_reset_stub(mem)?;
    Ok(BootInfo {
        entry,
        protocol: loaded.protocol,
    })
}

/// Kernel file formats `--kernel` accepts, told apart by their magic numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFormat {
    /// A bzImage ("HdrS" at 0x202): booted through its 64-bit entry point after its own
    /// decompressor has run.
    BzImage,
    /// An uncompressed ELF vmlinux ("\x7fELF") with a PVH entry note (CONFIG_PVH): booted
    /// directly at the PVH entry, without a decompressor.
    Elf,
    /// Neither magic.
    Unknown,
}

impl KernelFormat {
    /// Reads the magic numbers of `file` (and rewinds it).
    pub fn detect<F: Read + Seek>(file: &mut F) -> std::io::Result<Self> {
        let mut head = [0u8; 0x206];
        file.rewind()?;
        let mut n = 0;
        while n < head.len() {
            match file.read(&mut head[n..])? {
                0 => break,
                k => n += k,
            }
        }
        file.rewind()?;
        Ok(Self::from_head(&head[..n]))
    }

    /// The format of a file starting with `head`.
    pub fn from_head(head: &[u8]) -> Self {
        if head.starts_with(b"\x7fELF") {
            KernelFormat::Elf
        } else if head.get(0x202..0x206) == Some(b"HdrS") {
            KernelFormat::BzImage
        } else {
            KernelFormat::Unknown
        }
    }
}

/// What a kernel loader leaves for the common part of [`load_linux`].
struct LoadedKernel {
    protocol: BootProtocol,
    entry: u64,
    /// End of the memory the kernel claims (its image and, for a bzImage, `init_size`).
    kernel_top: u64,
    /// Highest address + 1 an initramfs may reach.
    initrd_limit: u64,
    /// bzImage: the zero page prepared from its setup header.
    zero_page: Option<boot_params>,
}

fn load_bzimage(
    mem: &GuestMemoryMmap,
    kpath: &str,
    kfile: &mut File,
    cmdline: &str,
    rsdp: Option<u64>,
) -> Result<LoadedKernel, BootError> {
    let loaded =
        BzImage::load(mem, Some(GuestAddress(KERNEL_LOAD_ADDR)), kfile, None).map_err(|e| {
            BootError::NotBzImage {
                path: kpath.to_string(),
                reason: e.to_string(),
            }
        })?;
    let hdr = loaded.setup_header.ok_or_else(|| BootError::NotBzImage {
        path: kpath.to_string(),
        reason: "no setup header".into(),
    })?;
    if hdr.xloadflags & XLF_KERNEL_64 == 0 || hdr.version < 0x020c {
        return Err(BootError::NotBzImage {
            path: kpath.to_string(),
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
    Ok(LoadedKernel {
        protocol: BootProtocol::Linux64,
        entry: loaded.kernel_load.raw_value() + ENTRY_64_OFFSET,
        kernel_top: KERNEL_LOAD_ADDR
            + u64::from(hdr.init_size).max(loaded.kernel_end - KERNEL_LOAD_ADDR),
        initrd_limit: u64::from(hdr.initrd_addr_max) + 1,
        zero_page: Some(params),
    })
}

/// Loads an ELF vmlinux at its physical addresses; it must carry a PVH entry note.
fn load_elf(
    mem: &GuestMemoryMmap,
    low_end: u64,
    kpath: &str,
    kfile: &mut File,
) -> Result<LoadedKernel, BootError> {
    let not_elf = |reason: String| BootError::NotBootableElf {
        path: kpath.to_string(),
        reason,
    };
    // Every loaded segment must lie in low RAM above 1 MiB, checked before anything is read
    // (linux-loader would fail half-way, or write over the boot structures below 1 MiB).
    let segments = elf_load_segments(kfile).map_err(&not_elf)?;
    for &(paddr, memsz) in &segments {
        let end = paddr.saturating_add(memsz);
        if paddr < KERNEL_LOAD_ADDR || end > low_end {
            return Err(not_elf(format!(
                "a segment at {paddr:#x}..{end:#x} lies outside guest RAM {KERNEL_LOAD_ADDR:#x}..{low_end:#x}{}",
                if end > low_end { "; give the guest more memory" } else { "" }
            )));
        }
    }
    // Segments are copied out of prefaulted windows of a file mapping rather than with
    // read(2), which costs more on an emulated CPU (nested harness); one window at a time,
    // so the file's pages never add up in the VMM's resident set beside the guest's copy.
    let loaded = Elf::load(
        mem,
        None,
        &mut MappedFile::new(kfile).map_err(|e| not_elf(e.to_string()))?,
        Some(GuestAddress(KERNEL_LOAD_ADDR)),
    )
    .map_err(|e| not_elf(e.to_string()))?;
    let entry = match loaded.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(a) => a.raw_value(),
        _ => {
            return Err(not_elf(
                "no PVH entry note (a kernel built without CONFIG_PVH)".into(),
            ))
        }
    };
    if !(KERNEL_LOAD_ADDR..loaded.kernel_end).contains(&entry) {
        return Err(not_elf(format!(
            "PVH entry {entry:#x} lies outside the loaded kernel"
        )));
    }
    Ok(LoadedKernel {
        protocol: BootProtocol::Pvh,
        entry,
        kernel_top: loaded.kernel_end,
        initrd_limit: u64::MAX,
        zero_page: None,
    })
}

/// A file read through short-lived, prefaulted mappings of at most [`MappedFile::WINDOW`]
/// bytes (into guest memory) or pread(2) (small reads of headers and notes).
struct MappedFile<'a> {
    file: &'a File,
    len: u64,
    pos: u64,
}

impl<'a> MappedFile<'a> {
    /// Largest mapping held at once.
    const WINDOW: u64 = 2 << 20;

    fn new(file: &'a File) -> std::io::Result<Self> {
        Ok(MappedFile {
            file,
            len: file.metadata()?.len(),
            pos: 0,
        })
    }
}

impl Read for MappedFile<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for MappedFile<'_> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = pos.ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        Ok(self.pos)
    }
}

impl MappedFile<'_> {
    /// Copies from the window at the current position into `buf`; returns the bytes copied.
    fn copy_window<B: BitmapSlice>(
        &mut self,
        buf: &VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        use std::os::fd::AsRawFd;
        let page = 4096u64;
        let start = self.pos & !(page - 1);
        let skip = (self.pos - start) as usize;
        let map_len = (self.len - start).min(Self::WINDOW) as usize;
        let n = (map_len - skip).min(buf.len());
        // SAFETY: a new read-only private mapping of `map_len` bytes of the file at a
        // page-aligned offset below its end; nothing else refers to that address range.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_POPULATE,
                self.file.as_raw_fd(),
                start as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(VolatileMemoryError::IOError(std::io::Error::last_os_error()));
        }
        // SAFETY: `ptr` maps `map_len` readable bytes until the munmap below; `skip + n`
        // is within them. (The file shrinking meanwhile would raise SIGBUS: --kernel is the
        // user's own file.)
        let src = unsafe { std::slice::from_raw_parts(ptr.cast::<u8>().add(skip), n) };
        buf.copy_from(src);
        // SAFETY: unmaps exactly the mapping created above; `src` is not used any more.
        unsafe { libc::munmap(ptr, map_len) };
        self.pos += n as u64;
        Ok(n)
    }
}

impl ReadVolatile for MappedFile<'_> {
    fn read_volatile<B: BitmapSlice>(
        &mut self,
        buf: &mut VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        // Fills as much of `buf` as the file holds, window by window: the callers (linux-loader
        // through vm-memory) take a short read for an error.
        let mut done = 0;
        while done < buf.len() && self.pos < self.len {
            let n = self.copy_window(&buf.offset(done)?)?;
            done += n;
        }
        Ok(done)
    }
}

/// `(p_paddr, p_memsz)` of the PT_LOAD segments of a 64-bit little-endian ELF file.
fn elf_load_segments<F: Read + Seek>(file: &mut F) -> Result<Vec<(u64, u64)>, String> {
    const EHDR_SIZE: usize = 64;
    const PHDR_SIZE: usize = 56;
    const PT_LOAD: u32 = 1;
    const MAX_PHDRS: u16 = 64;
    let io = |e: std::io::Error| format!("reading the ELF headers: {e}");
    let mut ehdr = [0u8; EHDR_SIZE];
    file.rewind().map_err(io)?;
    file.read_exact(&mut ehdr).map_err(io)?;
    if ehdr[4] != 2 || ehdr[5] != 1 {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or([0; 4]));
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
    let phoff = u64_at(&ehdr, 0x20);
    let phentsize = u16_at(&ehdr, 0x36);
    let phnum = u16_at(&ehdr, 0x38);
    if usize::from(phentsize) != PHDR_SIZE || phnum == 0 || phnum > MAX_PHDRS {
        return Err(format!(
            "unusable program header table ({phnum} entries of {phentsize} bytes)"
        ));
    }
    file.seek(SeekFrom::Start(phoff)).map_err(io)?;
    let mut segments = Vec::new();
    for _ in 0..phnum {
        let mut ph = [0u8; PHDR_SIZE];
        file.read_exact(&mut ph).map_err(io)?;
        if u32_at(&ph, 0) == PT_LOAD && u64_at(&ph, 0x20) != 0 {
            let filesz = u64_at(&ph, 0x20);
            let memsz = u64_at(&ph, 0x28);
            segments.push((u64_at(&ph, 0x18), memsz.max(filesz)));
        }
    }
    file.rewind().map_err(io)?;
    if segments.is_empty() {
        return Err("no loadable segment".into());
    }
    Ok(segments)
}

/// Reads the initramfs to the top of `[kernel_top, limit)`, page aligned. Its size is checked
/// against the room before anything is read. Returns `(address, size)`.
fn load_initramfs(
    mem: &GuestMemoryMmap,
    path: &Path,
    limit: u64,
    kernel_top: u64,
) -> Result<(u64, u64), BootError> {
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
    let addr = limit.checked_sub(size).map(|a| a & !0xfff);
    match addr {
        Some(a) if a >= kernel_top => {
            // Straight from the file into guest memory: no bounce buffer in the VMM.
            let mut file = file;
            mem.read_exact_volatile_from(GuestAddress(a), &mut file, size as usize)
                .map_err(|e| {
                    read_err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("file shrank while being read? {e}"),
                    ))
                })?;
            Ok((a, size))
        }
        _ => Err(BootError::InitramfsTooLarge { size, limit }),
    }
}

/// The guest's memory map `(address, size, e820 type)`, sorted.
fn e820_map(mem_size: u64) -> Vec<(u64, u64, u32)> {
    let low_end = mem_size.min(MMIO_HOLE_START);
    let mut e820 = vec![
        (0, EBDA_START, E820_RAM),
        (EBDA_START, KERNEL_LOAD_ADDR - EBDA_START, E820_RESERVED),
        (KERNEL_LOAD_ADDR, low_end - KERNEL_LOAD_ADDR, E820_RAM),
        (PCI_ECAM_START, PCI_ECAM_SIZE, E820_RESERVED),
    ];
    if mem_size > MMIO_HOLE_START {
        e820.push((HIGH_RAM_START, mem_size - MMIO_HOLE_START, E820_RAM));
    }
    e820
}

/// PVH start info magic (xen/include/public/arch-x86/hvm/start_info.h).
pub const PVH_START_MAGIC: u32 = 0x336e_c578;

/// Writes `hvm_start_info` (version 1, with the memory map), its module list (the
/// initramfs) and the memory map for the PVH entry.
fn write_pvh_start_info(
    mem: &GuestMemoryMmap,
    e820: &[(u64, u64, u32)],
    ramdisk: Option<(u64, u64)>,
    rsdp: Option<u64>,
) -> Result<(), BootError> {
    let memmap: Vec<hvm_memmap_table_entry> = e820
        .iter()
        .map(|&(addr, size, type_)| hvm_memmap_table_entry {
            addr,
            size,
            type_,
            reserved: 0,
        })
        .collect();
    let info = hvm_start_info {
        magic: PVH_START_MAGIC,
        version: 1,
        nr_modules: u32::from(ramdisk.is_some()),
        modlist_paddr: if ramdisk.is_some() {
            PVH_MODLIST_ADDR
        } else {
            0
        },
        cmdline_paddr: CMDLINE_ADDR,
        rsdp_paddr: rsdp.unwrap_or(0),
        memmap_paddr: PVH_MEMMAP_ADDR,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    let mut params = BootParams::new(&info, GuestAddress(PVH_INFO_ADDR));
    params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_ADDR));
    if let Some((paddr, size)) = ramdisk {
        let module = hvm_modlist_entry {
            paddr,
            size,
            ..Default::default()
        };
        params.set_modules(&[module], GuestAddress(PVH_MODLIST_ADDR));
    }
    PvhBootConfigurator::write_bootparams(&params, mem).map_err(mem_err)
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

/// GDT of the PVH entry: null, 32-bit flat code (0x08), flat data (0x10), TSS (0x18).
pub const PVH_GDT: [u64; 4] = [
    0,
    0x00cf_9b00_0000_ffff,
    0x00cf_9300_0000_ffff,
    0x0000_8b00_0000_0067,
];

fn write_gdt(mem: &GuestMemoryMmap, gdt: &[u64; 4]) -> Result<(), BootError> {
    for (i, e) in gdt.iter().enumerate() {
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
        assert_eq!(gdt_entry(0xc09b, 0, 0xfffff), PVH_GDT[1]);
        assert_eq!(gdt_entry(0xc093, 0, 0xfffff), PVH_GDT[2]);
        assert_eq!(gdt_entry(0x008b, 0, 0x67), PVH_GDT[3]);
    }

    #[test]
    fn mapped_file_reads_across_windows() {
        let data: Vec<u8> = (0..(5u32 << 20) + 123)
            .map(|i| (i * 7 + i / 4099) as u8)
            .collect();
        let p = temp_file("mapped", &data);
        let file = File::open(&p).unwrap();
        let mut f = MappedFile::new(&file).unwrap();
        // Unaligned start, a span crossing two window boundaries, then the short tail.
        f.seek(SeekFrom::Start(4097)).unwrap();
        let mut out = vec![0u8; (4 << 20) + 5];
        let n = f
            .read_volatile(&mut VolatileSlice::from(&mut out[..]))
            .unwrap();
        assert_eq!(n, out.len());
        assert!(out[..] == data[4097..4097 + out.len()]);
        let mut head = [0u8; 16];
        f.seek(SeekFrom::Start(3)).unwrap();
        f.read_exact(&mut head).unwrap();
        assert_eq!(head[..], data[3..19]);
        f.seek(SeekFrom::End(-100)).unwrap();
        let mut tail = vec![0u8; 4096];
        let n = f
            .read_volatile(&mut VolatileSlice::from(&mut tail[..]))
            .unwrap();
        assert_eq!(n, 100);
        assert_eq!(tail[..100], data[data.len() - 100..]);
        assert_eq!(
            f.read_volatile(&mut VolatileSlice::from(&mut tail[..]))
                .unwrap(),
            0
        );
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn format_is_told_by_magic() {
        assert_eq!(
            KernelFormat::from_head(b"\x7fELF\x02\x01"),
            KernelFormat::Elf
        );
        let mut bz = vec![0u8; 0x210];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(KernelFormat::from_head(&bz), KernelFormat::BzImage);
        assert_eq!(
            KernelFormat::from_head(&[0u8; 0x300]),
            KernelFormat::Unknown
        );
        assert_eq!(KernelFormat::from_head(b"\x7fEL"), KernelFormat::Unknown);
    }

    /// A minimal 64-bit ELF: one PT_LOAD of `code` at `paddr`, and a PT_NOTE with a Xen
    /// PVH entry note (type 18) pointing at `entry` when given.
    fn tiny_elf(paddr: u64, code: &[u8], entry: Option<u32>) -> Vec<u8> {
        let mut note = Vec::new();
        if let Some(e) = entry {
            note.extend_from_slice(&4u32.to_le_bytes()); // namesz "Xen\0"
            note.extend_from_slice(&4u32.to_le_bytes()); // descsz
            note.extend_from_slice(&18u32.to_le_bytes()); // XEN_ELFNOTE_PHYS32_ENTRY
            note.extend_from_slice(b"Xen\0");
            note.extend_from_slice(&e.to_le_bytes());
        }
        let phnum = 2u16;
        let code_off = 64 + 56 * u64::from(phnum);
        let note_off = code_off + code.len() as u64;
        let mut f = vec![0u8; 64];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2; // 64-bit
        f[5] = 1; // little endian
        f[6] = 1;
        f[0x10..0x12].copy_from_slice(&2u16.to_le_bytes()); // EXEC
        f[0x12..0x14].copy_from_slice(&0x3eu16.to_le_bytes()); // x86-64
        f[0x18..0x20].copy_from_slice(&paddr.to_le_bytes()); // e_entry
        f[0x20..0x28].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        f[0x34..0x36].copy_from_slice(&64u16.to_le_bytes());
        f[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        f[0x38..0x3a].copy_from_slice(&phnum.to_le_bytes());
        let phdr = |t: u32, off: u64, addr: u64, size: u64| {
            let mut p = vec![0u8; 56];
            p[0..4].copy_from_slice(&t.to_le_bytes());
            p[8..16].copy_from_slice(&off.to_le_bytes());
            p[16..24].copy_from_slice(&addr.to_le_bytes());
            p[24..32].copy_from_slice(&addr.to_le_bytes());
            p[32..40].copy_from_slice(&size.to_le_bytes());
            p[40..48].copy_from_slice(&size.to_le_bytes());
            p
        };
        f.extend(phdr(1, code_off, paddr, code.len() as u64));
        f.extend(phdr(4, note_off, 0, note.len() as u64));
        f.extend_from_slice(code);
        f.extend(note);
        f
    }

    fn temp_file(name: &str, data: &[u8]) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("vmm-boot-{name}-{}", std::process::id()));
        std::fs::write(&p, data).unwrap();
        p
    }

    #[test]
    fn elf_with_pvh_note_boots_through_pvh() {
        let mem = create_memory(64 << 20).unwrap();
        let k = temp_file(
            "pvh-k",
            &tiny_elf(0x100_0000, &[0xf4; 0x100], Some(0x100_0010)),
        );
        let i = temp_file("pvh-i", &[0xab; 5000]);
        let info = load_linux(&mem, 64 << 20, &k, Some(&i), "console=ttyS0", Some(0xe0000));
        std::fs::remove_file(&k).unwrap();
        std::fs::remove_file(&i).unwrap();
        let info = info.unwrap();
        assert_eq!(info.protocol, BootProtocol::Pvh);
        assert_eq!(info.entry, 0x100_0010);
        let si: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_ADDR)).unwrap();
        assert_eq!(
            (si.magic, si.version, si.nr_modules),
            (PVH_START_MAGIC, 1, 1)
        );
        assert_eq!((si.cmdline_paddr, si.rsdp_paddr), (CMDLINE_ADDR, 0xe0000));
        assert_eq!(si.memmap_entries, 4);
        let m: hvm_modlist_entry = mem.read_obj(GuestAddress(si.modlist_paddr)).unwrap();
        assert_eq!(m.size, 5000);
        assert_eq!(m.paddr % 0x1000, 0);
        assert!(m.paddr >= 0x100_0100 && m.paddr + m.size <= 64 << 20);
        let b: u8 = mem.read_obj(GuestAddress(m.paddr + 4999)).unwrap();
        assert_eq!(b, 0xab);
        let ram: hvm_memmap_table_entry = mem
            .read_obj(GuestAddress(si.memmap_paddr + 2 * 24))
            .unwrap();
        assert_eq!(
            (ram.addr, ram.size, ram.type_),
            (KERNEL_LOAD_ADDR, (64 << 20) - KERNEL_LOAD_ADDR, 1)
        );
        let code: u8 = mem.read_obj(GuestAddress(0x100_0000)).unwrap();
        assert_eq!(code, 0xf4);
    }

    #[test]
    fn elf_without_pvh_note_or_outside_ram_is_rejected() {
        let mem = create_memory(64 << 20).unwrap();
        let k = temp_file("nopvh", &tiny_elf(0x100_0000, &[0x90; 16], None));
        let err = load_linux(&mem, 64 << 20, &k, None, "", None).unwrap_err();
        assert!(err.to_string().contains("no PVH entry note"), "{err}");
        // A segment beyond guest RAM is refused before anything is loaded.
        std::fs::write(&k, tiny_elf(0x3fff_f000, &[0x90; 16], Some(0x3fff_f000))).unwrap();
        let err = load_linux(&mem, 64 << 20, &k, None, "", None).unwrap_err();
        assert!(
            err.to_string().contains("give the guest more memory"),
            "{err}"
        );
        // Below 1 MiB (over the boot structures) too.
        std::fs::write(&k, tiny_elf(0x6000, &[0x90; 16], Some(0x6000))).unwrap();
        let err = load_linux(&mem, 64 << 20, &k, None, "", None).unwrap_err();
        assert!(matches!(err, BootError::NotBootableElf { .. }), "{err}");
        std::fs::remove_file(&k).unwrap();
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
