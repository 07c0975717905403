//! The tiny real-mode guest of the KVM integration tests, assembled by hand.
//!
//! Memory map (guest-physical = linear, every segment base is 0):
//!
//! ```text
//! 0x0000..0x0400  IVT: 256 real-mode vectors (offset:segment), written by the host
//! 0x0500..0x0900  per-vector 32-bit interrupt counters, incremented by the guest
//! 0x0900..0x0D00  per-vector 32-bit thresholds (0 = none), written by the host
//! 0x1000          entry: enable the x2APIC, report ready, then `sti; hlt` forever
//! 0x1100          common interrupt handler
//! 0x2000..0x3000  one 16-byte stub per vector (exception stubs for 0x00..0x1f)
//! ..0x8000        stack (grows down from 0x8000)
//! ```
//!
//! The interrupt handler of vector `v` increments `counter[v]`; when the new value equals
//! `threshold[v]` it writes `v` to [`THRESHOLD_PORT`]; then it writes `v` to [`REPORT_PORT`]
//! and only then EOIs the x2APIC (MSR 0x80B). The host therefore sees the threshold write
//! before the report, and the report before the EOI (and its `KVM_EXIT_IOAPIC_EOI`, for
//! level-triggered IOAPIC vectors).

/// `out` port the handler writes the vector number to after counting an interrupt.
pub const REPORT_PORT: u16 = 0xE0;
/// `out` port the handler writes the vector number to when its counter reaches the threshold.
pub const THRESHOLD_PORT: u16 = 0xE1;
/// `out` port the guest writes once the x2APIC is enabled, right before its `sti; hlt` loop.
pub const READY_PORT: u16 = 0xE2;
/// `out` port an exception stub writes its vector to before halting for good.
pub const FAULT_PORT: u16 = 0xE3;

/// Guest-physical address of the 32-bit counter array.
pub const COUNTERS: u16 = 0x0500;
/// Guest-physical address of the 32-bit threshold array.
pub const THRESHOLDS: u16 = 0x0900;
/// Guest-physical address of the entry point.
pub const ENTRY: u16 = 0x1000;
/// Guest-physical address of the common interrupt handler.
const COMMON: u16 = 0x1100;
/// Guest-physical address of the stub of vector 0.
const STUBS: u16 = 0x2000;
/// Size of one stub slot.
const STUB_SIZE: u16 = 16;
/// Initial stack pointer.
pub const STACK_TOP: u16 = 0x8000;
/// Vectors below this are CPU exceptions: their stubs report a fault and stop.
const FIRST_INTERRUPT_VECTOR: u16 = 0x20;

/// x2APIC MSRs and values used by the guest.
const MSR_APIC_BASE: u32 = 0x1B;
const APIC_BASE_ENABLE_X2APIC: u32 = (1 << 11) | (1 << 10);
const MSR_X2APIC_SVR: u32 = 0x80F;
const SVR_ENABLE_SPURIOUS_FF: u32 = 0x1FF;
const MSR_X2APIC_EOI: u32 = 0x80B;

/// One assembled instruction, kept for a readable listing in failure messages.
#[derive(Clone, Debug)]
pub struct ListingLine {
    /// Guest-physical address of the instruction.
    pub addr: u16,
    /// Its encoding.
    pub bytes: Vec<u8>,
    /// Its mnemonic.
    pub text: String,
}

/// A piece of 16-bit code placed at a fixed address.
struct Asm {
    origin: u16,
    bytes: Vec<u8>,
    listing: Vec<ListingLine>,
}

impl Asm {
    fn new(origin: u16) -> Self {
        Self {
            origin,
            bytes: Vec::new(),
            listing: Vec::new(),
        }
    }

    /// Address of the next instruction.
    fn here(&self) -> u16 {
        self.origin + self.bytes.len() as u16
    }

    /// Appends one instruction's `bytes`, documented by `text`.
    fn op(&mut self, bytes: &[u8], text: impl Into<String>) {
        self.listing.push(ListingLine {
            addr: self.here(),
            bytes: bytes.to_vec(),
            text: text.into(),
        });
        self.bytes.extend_from_slice(bytes);
    }

    /// `mov ecx, imm32`: 66 (32-bit operand in 16-bit code) B9 id.
    fn mov_ecx(&mut self, imm: u32) {
        let i = imm.to_le_bytes();
        self.op(
            &[0x66, 0xB9, i[0], i[1], i[2], i[3]],
            format!("mov ecx, {imm:#x}"),
        );
    }

    /// `jmp rel16` to `target`: E9 cw, relative to the end of the instruction.
    fn jmp_near(&mut self, target: u16) {
        let rel = target.wrapping_sub(self.here() + 3).to_le_bytes();
        self.op(&[0xE9, rel[0], rel[1]], format!("jmp {target:#06x}"));
    }
}

/// The assembled guest: code pieces at their addresses plus the IVT.
pub struct GuestImage {
    /// `(guest-physical address, bytes)` to copy into guest memory.
    pub pieces: Vec<(u64, Vec<u8>)>,
    /// Every instruction, in address order per piece.
    pub listing: Vec<ListingLine>,
}

/// Entry code: set up segments and stack, enable the x2APIC, report ready, wait for
/// interrupts with `sti; hlt` forever.
fn entry() -> Asm {
    let mut a = Asm::new(ENTRY);
    a.op(&[0xFA], "cli");
    a.op(&[0x31, 0xC0], "xor ax, ax"); // 31 /r, modrm 11 000 000
    a.op(&[0x8E, 0xD8], "mov ds, ax"); // 8E /r, sreg ds = 3
    a.op(&[0x8E, 0xC0], "mov es, ax"); // sreg es = 0
    a.op(&[0x8E, 0xD0], "mov ss, ax"); // sreg ss = 2
    let sp = STACK_TOP.to_le_bytes();
    a.op(&[0xBC, sp[0], sp[1]], format!("mov sp, {STACK_TOP:#x}"));
    // IA32_APIC_BASE |= EN | EXTD: switch the (enabled) xAPIC to x2APIC mode.
    a.mov_ecx(MSR_APIC_BASE);
    a.op(&[0x0F, 0x32], "rdmsr");
    let en = APIC_BASE_ENABLE_X2APIC.to_le_bytes();
    a.op(
        &[0x66, 0x0D, en[0], en[1], en[2], en[3]],
        format!("or eax, {APIC_BASE_ENABLE_X2APIC:#x}"),
    );
    a.op(&[0x0F, 0x30], "wrmsr");
    // Spurious-interrupt vector register: APIC software enable (bit 8), spurious vector 0xFF.
    a.mov_ecx(MSR_X2APIC_SVR);
    let svr = SVR_ENABLE_SPURIOUS_FF.to_le_bytes();
    a.op(
        &[0x66, 0xB8, svr[0], svr[1], svr[2], svr[3]],
        format!("mov eax, {SVR_ENABLE_SPURIOUS_FF:#x}"),
    );
    a.op(&[0x66, 0x31, 0xD2], "xor edx, edx"); // 31 /r, modrm 11 010 010
    a.op(&[0x0F, 0x30], "wrmsr");
    a.op(
        &[0xE6, READY_PORT as u8],
        format!("out {READY_PORT:#x}, al"),
    );
    // The STI shadow makes `sti; hlt` atomic: no interrupt slips in between.
    let top = a.here();
    a.op(&[0xFB], "sti");
    a.op(&[0xF4], "hlt");
    let rel = top.wrapping_sub(a.here() + 2) as u8;
    a.op(&[0xEB, rel], format!("jmp {top:#06x}"));
    a
}

/// Common handler, entered from a stub with eax, ecx, edx and si pushed, `si = 4 * vector`
/// and `al = vector`.
fn common_handler() -> Asm {
    let mut a = Asm::new(COMMON);
    let c = COUNTERS.to_le_bytes();
    let t = THRESHOLDS.to_le_bytes();
    // modrm 0x84 = mod 10 (disp16), reg 000 (/0), rm 100 ([si]).
    a.op(
        &[0x66, 0xFF, 0x84, c[0], c[1]],
        format!("inc dword [si + {COUNTERS:#x}]"),
    );
    // modrm 0x94 = mod 10, reg 010 (edx), rm 100 ([si]).
    a.op(
        &[0x66, 0x8B, 0x94, c[0], c[1]],
        format!("mov edx, [si + {COUNTERS:#x}]"),
    );
    a.op(
        &[0x66, 0x3B, 0x94, t[0], t[1]],
        format!("cmp edx, [si + {THRESHOLDS:#x}]"),
    );
    a.op(&[0x75, 0x02], "jne +2 (skip the threshold report)");
    a.op(
        &[0xE6, THRESHOLD_PORT as u8],
        format!("out {THRESHOLD_PORT:#x}, al"),
    );
    a.op(
        &[0xE6, REPORT_PORT as u8],
        format!("out {REPORT_PORT:#x}, al"),
    );
    // EOI: wrmsr(0x80B, 0).
    a.mov_ecx(MSR_X2APIC_EOI);
    a.op(&[0x66, 0x31, 0xC0], "xor eax, eax");
    a.op(&[0x66, 0x31, 0xD2], "xor edx, edx");
    a.op(&[0x0F, 0x30], "wrmsr");
    a.op(&[0x5E], "pop si");
    a.op(&[0x66, 0x5A], "pop edx");
    a.op(&[0x66, 0x59], "pop ecx");
    a.op(&[0x66, 0x58], "pop eax");
    a.op(&[0xCF], "iret");
    a
}

/// The stub of interrupt `vector` (>= 0x20): save registers, load its arguments, jump to
/// the common handler.
fn interrupt_stub(vector: u16) -> Asm {
    let mut a = Asm::new(STUBS + vector * STUB_SIZE);
    a.op(&[0x66, 0x50], "push eax");
    a.op(&[0x66, 0x51], "push ecx");
    a.op(&[0x66, 0x52], "push edx");
    a.op(&[0x56], "push si");
    let off = (vector * 4).to_le_bytes();
    a.op(
        &[0xBE, off[0], off[1]],
        format!("mov si, {:#x}", vector * 4),
    );
    a.op(&[0xB0, vector as u8], format!("mov al, {vector:#x}"));
    a.jmp_near(COMMON);
    assert!(a.bytes.len() <= STUB_SIZE as usize);
    a
}

/// The stub of exception `vector` (< 0x20): report it and stop with interrupts off (returning
/// would re-execute the faulting instruction forever).
fn exception_stub(vector: u16) -> Asm {
    let mut a = Asm::new(STUBS + vector * STUB_SIZE);
    a.op(&[0xB0, vector as u8], format!("mov al, {vector:#x}"));
    a.op(
        &[0xE6, FAULT_PORT as u8],
        format!("out {FAULT_PORT:#x}, al"),
    );
    a.op(&[0xFA], "cli");
    let hlt = a.here();
    a.op(&[0xF4], "hlt");
    let rel = hlt.wrapping_sub(a.here() + 2) as u8;
    a.op(&[0xEB, rel], format!("jmp {hlt:#06x}"));
    a
}

/// Assembles the whole guest.
pub fn build() -> GuestImage {
    let mut pieces = Vec::new();
    let mut listing = Vec::new();
    // IVT entry n = offset (low word), segment (high word); segment 0, offset = stub.
    let mut ivt = Vec::with_capacity(1024);
    for v in 0..256u16 {
        ivt.extend_from_slice(&(STUBS + v * STUB_SIZE).to_le_bytes());
        ivt.extend_from_slice(&0u16.to_le_bytes());
    }
    pieces.push((0, ivt));
    let mut code = vec![entry(), common_handler()];
    code.extend((0..256u16).map(|v| {
        if v < FIRST_INTERRUPT_VECTOR {
            exception_stub(v)
        } else {
            interrupt_stub(v)
        }
    }));
    assert!(code[0].here() <= COMMON, "entry code overlaps the handler");
    assert!(code[1].here() <= STUBS, "handler overlaps the stubs");
    for a in code {
        pieces.push((u64::from(a.origin), a.bytes));
        listing.extend(a.listing);
    }
    GuestImage { pieces, listing }
}

/// Renders the listing lines around `addr` (e.g. a vCPU's rip) for failure messages.
pub fn listing_near(listing: &[ListingLine], addr: u64) -> String {
    let mut out = String::new();
    for l in listing
        .iter()
        .filter(|l| u64::from(l.addr).abs_diff(addr) <= 16)
    {
        let bytes: Vec<String> = l.bytes.iter().map(|b| format!("{b:02x}")).collect();
        let mark = if u64::from(l.addr) == addr {
            "=>"
        } else {
            "  "
        };
        out.push_str(&format!(
            "{mark} {:04x}: {:<20} {}\n",
            l.addr,
            bytes.join(" "),
            l.text
        ));
    }
    out
}
