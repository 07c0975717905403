//! Fuzzes the vmm's Linux loader (`vmm::boot::load_linux`) with arbitrary kernel files —
//! raw bytes, or bytes with a fuzzed bzImage setup header (signature, protocol version,
//! setup sectors, load flags, xloadflags, init size, initrd limit) patched in — an optional
//! initramfs, any command line and an RSDP address, on guest memory from
//! `vmm::boot::create_memory` (64 MiB and up; no KVM).
//!
//! Also ELF vmlinux files (fuzzed program headers, with or without a PVH entry note) for the
//! PVH path.
//!
//! Invariants: nothing panics; an error is one line; a kernel the loader accepts boots at
//! its 64-bit entry (load address + 0x200) with a zero page that carries the boot-protocol
//! signatures, loader type, command line pointer and length, an e820 map that covers low RAM
//! below the guest size, the command line NUL-terminated in guest memory, and the initramfs
//! (when given) page aligned, above the kernel, below the guest size and the kernel's
//! initrd limit, holding exactly the file's bytes.

#![no_main]

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use vmm::boot::{create_memory, load_linux, BootInfo, BootProtocol, PVH_START_MAGIC};
use vmm::layout::{
    CMDLINE_ADDR, KERNEL_LOAD_ADDR, MMIO_HOLE_START, PVH_INFO_ADDR, ZERO_PAGE_ADDR,
};

/// Offsets in the zero page / bzImage (Documentation/arch/x86/boot.rst).
mod hdr {
    pub const SETUP_SECTS: usize = 0x1f1;
    pub const SYSSIZE: usize = 0x1f4;
    pub const BOOT_FLAG: usize = 0x1fe;
    pub const HEADER: usize = 0x202;
    pub const VERSION: usize = 0x206;
    pub const TYPE_OF_LOADER: usize = 0x210;
    pub const LOADFLAGS: usize = 0x211;
    pub const RAMDISK_IMAGE: usize = 0x218;
    pub const RAMDISK_SIZE: usize = 0x21c;
    pub const CMD_LINE_PTR: usize = 0x228;
    pub const INITRD_ADDR_MAX: usize = 0x22c;
    pub const KERNEL_ALIGNMENT: usize = 0x230;
    pub const RELOCATABLE: usize = 0x234;
    pub const XLOADFLAGS: usize = 0x236;
    pub const CMDLINE_SIZE: usize = 0x238;
    pub const PREF_ADDRESS: usize = 0x258;
    pub const INIT_SIZE: usize = 0x260;
    pub const END: usize = 0x268;
    pub const E820_ENTRIES: usize = 0x1e8;
    pub const E820_TABLE: usize = 0x2d0;
}

#[derive(Arbitrary, Debug, Clone, Copy)]
struct Header {
    setup_sects: u8,
    syssize: u32,
    boot_flag: bool,
    signature: bool,
    version: Option<u16>,
    loadflags: u8,
    initrd_addr_max: u32,
    kernel_alignment: u32,
    relocatable: u8,
    xloadflags: u16,
    pref_address: u64,
    init_size: u32,
}

impl Header {
    fn patch(self, k: &mut Vec<u8>) {
        if k.len() < hdr::END {
            k.resize(hdr::END, 0);
        }
        let mut put = |off: usize, b: &[u8]| k[off..off + b.len()].copy_from_slice(b);
        put(hdr::SETUP_SECTS, &[self.setup_sects]);
        put(hdr::SYSSIZE, &self.syssize.to_le_bytes());
        if self.boot_flag {
            put(hdr::BOOT_FLAG, &0xaa55u16.to_le_bytes());
        }
        if self.signature {
            put(hdr::HEADER, b"HdrS");
        }
        put(hdr::VERSION, &self.version.unwrap_or(0x020f).to_le_bytes());
        put(hdr::LOADFLAGS, &[self.loadflags]);
        put(hdr::INITRD_ADDR_MAX, &self.initrd_addr_max.to_le_bytes());
        put(hdr::KERNEL_ALIGNMENT, &self.kernel_alignment.to_le_bytes());
        put(hdr::RELOCATABLE, &[self.relocatable]);
        put(hdr::XLOADFLAGS, &self.xloadflags.to_le_bytes());
        put(hdr::PREF_ADDRESS, &self.pref_address.to_le_bytes());
        put(hdr::INIT_SIZE, &self.init_size.to_le_bytes());
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum MemSize {
    Min,
    MinPlusPage,
    Double,
}

impl MemSize {
    fn bytes(self) -> u64 {
        match self {
            MemSize::Min => 64 << 20,
            MemSize::MinPlusPage => (64 << 20) + 0x1000,
            MemSize::Double => 128 << 20,
        }
    }
}

/// An ELF vmlinux: program headers (type, file offset, physical address, file and memory
/// sizes) and an optional PVH entry note, patched over the fuzzed bytes.
#[derive(Arbitrary, Debug, Clone)]
struct ElfImage {
    phdrs: Vec<(u32, u16, u32, u16, u32)>,
    pvh_entry: Option<u32>,
}

impl ElfImage {
    fn build(&self, body: &[u8]) -> Vec<u8> {
        let phdrs: Vec<_> = self.phdrs.iter().take(8).collect();
        let mut note = Vec::new();
        if let Some(e) = self.pvh_entry {
            note.extend_from_slice(&4u32.to_le_bytes());
            note.extend_from_slice(&4u32.to_le_bytes());
            note.extend_from_slice(&18u32.to_le_bytes()); // XEN_ELFNOTE_PHYS32_ENTRY
            note.extend_from_slice(b"Xen\0");
            note.extend_from_slice(&e.to_le_bytes());
        }
        let phnum = phdrs.len() + 1;
        let note_off = 64 + 56 * phnum;
        let body_off = note_off + note.len();
        let mut f = vec![0u8; 64];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        f[6] = 1;
        f[0x10..0x12].copy_from_slice(&2u16.to_le_bytes());
        f[0x12..0x14].copy_from_slice(&0x3eu16.to_le_bytes());
        f[0x18..0x20].copy_from_slice(&0x100_0000u64.to_le_bytes());
        f[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        f[0x34..0x36].copy_from_slice(&64u16.to_le_bytes());
        f[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        f[0x38..0x3a].copy_from_slice(&(phnum as u16).to_le_bytes());
        let phdr = |t: u32, off: u64, addr: u64, filesz: u64, memsz: u64| {
            let mut p = vec![0u8; 56];
            p[0..4].copy_from_slice(&t.to_le_bytes());
            p[8..16].copy_from_slice(&off.to_le_bytes());
            p[24..32].copy_from_slice(&addr.to_le_bytes());
            p[32..40].copy_from_slice(&filesz.to_le_bytes());
            p[40..48].copy_from_slice(&memsz.to_le_bytes());
            p
        };
        for &&(t, off, addr, filesz, memsz) in &phdrs {
            f.extend(phdr(
                t % 5,
                (body_off + usize::from(off)) as u64,
                u64::from(addr),
                u64::from(filesz),
                u64::from(memsz),
            ));
        }
        f.extend(phdr(4, note_off as u64, 0, note.len() as u64, note.len() as u64));
        f.extend(note);
        f.extend_from_slice(body);
        f
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    header: Option<Header>,
    /// Build an ELF vmlinux instead (the PVH path); `header` is then ignored.
    elf: Option<ElfImage>,
    /// Pad the kernel to this many 512-byte sectors past the setup (so the protected-mode
    /// part exists).
    pad_sectors: u8,
    kernel: Vec<u8>,
    initramfs: Option<Vec<u8>>,
    cmdline: String,
    rsdp: Option<u64>,
    mem: MemSize,
}

thread_local! {
    static MEMORY: RefCell<HashMap<u64, GuestMemoryMmap>> = RefCell::new(HashMap::new());
}

fn scratch(name: &str) -> PathBuf {
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    dir.join(format!("vmm-fuzz-bzimage-{}-{name}", std::process::id()))
}

fn u16_at(m: &GuestMemoryMmap, a: u64) -> u16 {
    m.read_obj(GuestAddress(a)).expect("zero page in RAM")
}

fn u32_at(m: &GuestMemoryMmap, a: u64) -> u32 {
    m.read_obj(GuestAddress(a)).expect("zero page in RAM")
}

fuzz_target!(|input: Input| {
    let mut kernel = input.kernel.clone();
    if let Some(e) = &input.elf {
        kernel = e.build(&input.kernel);
    } else if let Some(h) = input.header {
        h.patch(&mut kernel);
        let setup = (usize::from(h.setup_sects.max(4)) + 1) * 512;
        let want = setup + usize::from(input.pad_sectors) * 512;
        if kernel.len() < want {
            kernel.resize(want, 0x90);
        }
    }
    let kpath = scratch("kernel");
    std::fs::write(&kpath, &kernel).expect("scratch kernel file");
    let ipath = scratch("initramfs");
    if let Some(i) = &input.initramfs {
        std::fs::write(&ipath, i).expect("scratch initramfs file");
    }
    let mem_size = input.mem.bytes();
    MEMORY.with(|cache| {
        let mut cache = cache.borrow_mut();
        let mem = cache
            .entry(mem_size)
            .or_insert_with(|| create_memory(mem_size).expect("guest memory"));
        // A stale zero page from an earlier input must not pass for this one.
        mem.write_slice(&[0u8; 0x1000], GuestAddress(ZERO_PAGE_ADDR))
            .expect("zero page in RAM");
        let result = load_linux(
            mem,
            mem_size,
            &kpath,
            input.initramfs.as_ref().map(|_| ipath.as_path()),
            &input.cmdline,
            input.rsdp,
        );
        let info = match result {
            Ok(info) => info,
            Err(e) => {
                let text = e.to_string();
                assert!(!text.contains('\n'), "multi-line error: {text:?}");
                return;
            }
        };
        if info.protocol == BootProtocol::Pvh {
            check_pvh(mem, mem_size, &info, &input);
            return;
        }
        assert_eq!(info.entry, KERNEL_LOAD_ADDR + 0x200, "64-bit entry");
        let zp = ZERO_PAGE_ADDR;
        let at = |o: usize| zp + o as u64;
        assert_eq!(u16_at(mem, at(hdr::BOOT_FLAG)), 0xaa55);
        assert_eq!(u32_at(mem, at(hdr::HEADER)), 0x5372_6448, "HdrS");
        let version = u16_at(mem, at(hdr::VERSION));
        assert!(version >= 0x020c, "booted protocol {version:#x}");
        assert_ne!(u16_at(mem, at(hdr::XLOADFLAGS)) & 1, 0, "XLF_KERNEL_64");
        let loader: u8 = mem.read_obj(GuestAddress(at(hdr::TYPE_OF_LOADER))).unwrap();
        assert_eq!(loader, 0xff);
        assert_eq!(u64::from(u32_at(mem, at(hdr::CMD_LINE_PTR))), CMDLINE_ADDR);
        // linux-loader stores the trimmed line; the zero page's size counts the line as
        // given (at least the stored length: the kernel stops at the NUL).
        let line = input.cmdline.trim();
        let size = u32_at(mem, at(hdr::CMDLINE_SIZE)) as usize;
        assert!(size >= line.len(), "cmdline_size {size} < {}", line.len());
        let mut cl = vec![0u8; line.len() + 1];
        mem.read_slice(&mut cl, GuestAddress(CMDLINE_ADDR)).unwrap();
        assert_eq!(&cl[..line.len()], line.as_bytes());
        assert_eq!(cl[line.len()], 0, "command line NUL-terminated");

        // e820: sorted, non-overlapping, low RAM inside the guest size.
        let n: u8 = mem.read_obj(GuestAddress(at(hdr::E820_ENTRIES))).unwrap();
        assert!((1..=128).contains(&n), "{n} e820 entries");
        let mut end = 0u64;
        for i in 0..u64::from(n) {
            let e = at(hdr::E820_TABLE) + i * 20;
            let addr: u64 = mem.read_obj(GuestAddress(e)).unwrap();
            let size: u64 = mem.read_obj(GuestAddress(e + 8)).unwrap();
            let kind: u32 = mem.read_obj(GuestAddress(e + 16)).unwrap();
            assert!(addr >= end, "e820 entry {i} overlaps or is unsorted");
            end = addr.checked_add(size).expect("e820 entry wraps");
            if kind == 1 && addr < MMIO_HOLE_START {
                assert!(
                    end <= mem_size.min(MMIO_HOLE_START),
                    "e820 RAM beyond guest"
                );
            }
        }

        // The initramfs.
        let image = u64::from(u32_at(mem, at(hdr::RAMDISK_IMAGE)));
        let size = u64::from(u32_at(mem, at(hdr::RAMDISK_SIZE)));
        match &input.initramfs {
            Some(data) => {
                assert_eq!(size, data.len() as u64);
                assert_eq!(image % 0x1000, 0, "initramfs at {image:#x}");
                assert!(image >= KERNEL_LOAD_ADDR, "initramfs below the kernel");
                let limit = u64::from(u32_at(mem, at(hdr::INITRD_ADDR_MAX))) + 1;
                assert!(
                    image + size <= mem_size.min(limit),
                    "initramfs {image:#x}+{size:#x} beyond {limit:#x}/{mem_size:#x}"
                );
                let init_size = u64::from(u32_at(mem, at(hdr::INIT_SIZE)));
                assert!(
                    image >= KERNEL_LOAD_ADDR + init_size,
                    "initramfs at {image:#x} inside the kernel's init_size {init_size:#x}"
                );
                let mut got = vec![0u8; data.len()];
                mem.read_slice(&mut got, GuestAddress(image)).unwrap();
                assert!(got == *data, "initramfs bytes");
            }
            None => assert_eq!((image, size), (0, 0), "ramdisk without initramfs"),
        }
    });
});

/// PVH: the entry lies in RAM above 1 MiB; `hvm_start_info` carries the magic, the command
/// line, the memory map and (with an initramfs) one module holding exactly the file's bytes,
/// page aligned, inside guest RAM.
fn check_pvh(mem: &GuestMemoryMmap, mem_size: u64, info: &BootInfo, input: &Input) {
    let low_end = mem_size.min(MMIO_HOLE_START);
    assert!(
        (KERNEL_LOAD_ADDR..low_end).contains(&info.entry),
        "PVH entry {:#x}",
        info.entry
    );
    let at = |o: u64| PVH_INFO_ADDR + o;
    assert_eq!(u32_at(mem, at(0)), PVH_START_MAGIC);
    assert_eq!(u32_at(mem, at(4)), 1, "start info version");
    let nr_modules = u32_at(mem, at(12));
    let cmdline: u64 = mem.read_obj(GuestAddress(at(24))).unwrap();
    assert_eq!(cmdline, CMDLINE_ADDR);
    let entries = u32_at(mem, at(48));
    assert!((1..=8).contains(&entries), "{entries} memory map entries");
    match &input.initramfs {
        Some(data) => {
            assert_eq!(nr_modules, 1);
            let list: u64 = mem.read_obj(GuestAddress(at(16))).unwrap();
            let paddr: u64 = mem.read_obj(GuestAddress(list)).unwrap();
            let size: u64 = mem.read_obj(GuestAddress(list + 8)).unwrap();
            assert_eq!(size, data.len() as u64);
            assert_eq!(paddr % 0x1000, 0);
            assert!(paddr >= KERNEL_LOAD_ADDR && paddr + size <= low_end);
            let mut got = vec![0u8; data.len()];
            mem.read_slice(&mut got, GuestAddress(paddr)).unwrap();
            assert!(got == *data, "initramfs bytes");
        }
        None => assert_eq!(nr_modules, 0),
    }
}
