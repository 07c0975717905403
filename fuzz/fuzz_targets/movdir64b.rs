//! Fuzzes the vmm's MOVDIR64B decoder (`vmm::movdir64b::decode`) with the instruction bytes
//! KVM reports on an emulation failure (at most 15; sometimes fewer or more), any register
//! file, RIP and FS/GS bases, and compares it with a reference x86 decoder (iced-x86, 64-bit
//! mode).
//!
//! Invariants: nothing panics; the decoder accepts exactly the byte strings the reference
//! decodes as MOVDIR64B (`66 [REX] 0F 38 F8 /r` with a memory operand, any prefixes) and
//! then agrees on the length, the destination register's value and the source address
//! (base + index * scale + displacement, RIP-relative after the instruction, FS/GS base,
//! 32-bit truncation with 0x67); decoding depends only on the instruction's own bytes.

#![no_main]

use arbitrary::Arbitrary;
use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Register};
use kvm_bindings::kvm_regs;
use libfuzzer_sys::fuzz_target;

use vmm::movdir64b::{decode, DecodeError, Segment};

/// Longest x86 instruction.
const MAX_INSN: usize = 15;

#[derive(Arbitrary, Debug)]
enum Bytes {
    /// Prefixes, then the MOVDIR64B opcode, then ModRM/SIB/displacement bytes.
    Shaped {
        prefixes: Vec<u8>,
        rex: Option<u8>,
        modrm: u8,
        tail: [u8; 6],
        cut: u8,
    },
    Raw(Vec<u8>),
}

impl Bytes {
    fn get(&self) -> Vec<u8> {
        match self {
            Bytes::Shaped {
                prefixes,
                rex,
                modrm,
                tail,
                cut,
            } => {
                const P: [u8; 10] = [0x66, 0x67, 0x64, 0x65, 0x26, 0x2e, 0x36, 0x3e, 0xf2, 0xf3];
                let mut v: Vec<u8> = prefixes
                    .iter()
                    .take(MAX_INSN)
                    .map(|p| P[usize::from(*p) % P.len()])
                    .collect();
                v.extend(rex.map(|r| 0x40 | (r & 0xf)));
                v.extend([0x0f, 0x38, 0xf8, *modrm]);
                v.extend(tail);
                let keep = v.len() - usize::from(*cut) % 4;
                v.truncate(keep);
                v
            }
            Bytes::Raw(b) => b.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    bytes: Bytes,
    /// Hand the decoder at most 15 bytes, as KVM does.
    kvm_limit: bool,
    gprs: [u64; 16],
    rip: u64,
    fs: u64,
    gs: u64,
}

fn regs(g: &[u64; 16], rip: u64) -> kvm_regs {
    kvm_regs {
        rax: g[0],
        rcx: g[1],
        rdx: g[2],
        rbx: g[3],
        rsp: g[4],
        rbp: g[5],
        rsi: g[6],
        rdi: g[7],
        r8: g[8],
        r9: g[9],
        r10: g[10],
        r11: g[11],
        r12: g[12],
        r13: g[13],
        r14: g[14],
        r15: g[15],
        rip,
        ..Default::default()
    }
}

/// Value of a general-purpose register as iced names it (any width).
fn gpr(g: &[u64; 16], r: Register) -> u64 {
    let full = r.full_register();
    let n = match full {
        Register::RAX => 0,
        Register::RCX => 1,
        Register::RDX => 2,
        Register::RBX => 3,
        Register::RSP => 4,
        Register::RBP => 5,
        Register::RSI => 6,
        Register::RDI => 7,
        Register::R8 => 8,
        Register::R9 => 9,
        Register::R10 => 10,
        Register::R11 => 11,
        Register::R12 => 12,
        Register::R13 => 13,
        Register::R14 => 14,
        Register::R15 => 15,
        other => panic!("unexpected register {other:?}"),
    };
    let v = g[n];
    if r.size() == 4 {
        v & 0xffff_ffff
    } else {
        v
    }
}

/// Source address the reference computes.
fn reference_src(insn: &Instruction, g: &[u64; 16], fs: u64, gs: u64) -> u64 {
    let mut a = insn.memory_displacement64();
    if insn.memory_base() != Register::None && insn.memory_base() != Register::RIP {
        if insn.memory_base() == Register::EIP {
            // Already absolute in the displacement.
        } else {
            a = a.wrapping_add(gpr(g, insn.memory_base()));
        }
    }
    if insn.memory_index() != Register::None {
        a = a.wrapping_add(
            gpr(g, insn.memory_index()).wrapping_mul(u64::from(insn.memory_index_scale())),
        );
    }
    match insn.segment_prefix() {
        Register::FS => a = a.wrapping_add(fs),
        Register::GS => a = a.wrapping_add(gs),
        _ => {}
    }
    if insn.code() == Code::Movdir64b_r32_m512 {
        a &= 0xffff_ffff;
    }
    a
}

fuzz_target!(|input: Input| {
    let mut bytes = input.bytes.get();
    if input.kvm_limit {
        bytes.truncate(MAX_INSN);
    }
    let r = regs(&input.gprs, input.rip);
    let seg = |s: Segment| match s {
        Segment::Fs => input.fs,
        Segment::Gs => input.gs,
    };
    let ours = decode(&bytes, &r, seg);
    assert_eq!(decode(&bytes, &r, seg), ours, "decode is not deterministic");

    let mut decoder = Decoder::with_ip(64, &bytes, input.rip, DecoderOptions::NONE);
    let insn = decoder.decode();
    let is_movdir64b = matches!(
        insn.code(),
        Code::Movdir64b_r64_m512 | Code::Movdir64b_r32_m512
    );
    match (&ours, is_movdir64b) {
        (Ok(m), true) => {
            assert_eq!(m.len, insn.len(), "length of {bytes:02x?}");
            let dst = gpr(&input.gprs, insn.op0_register());
            assert_eq!(m.dst, dst, "destination of {bytes:02x?} ({insn:?})");
            let src = reference_src(&insn, &input.gprs, input.fs, input.gs);
            assert_eq!(m.src, src, "source of {bytes:02x?} ({insn:?})");
            // Only the instruction's bytes matter.
            assert_eq!(decode(&bytes[..m.len], &r, seg).as_ref(), Ok(m));
        }
        (Ok(m), false) => panic!(
            "{bytes:02x?} decoded as {m:?}; the reference says {:?} ({insn:?})",
            insn.code()
        ),
        (Err(e), true) => {
            // The reference needs all the bytes too.
            assert!(bytes.len() >= insn.len(), "reference decoded past the end");
            panic!("{bytes:02x?} is MOVDIR64B ({insn:?}) but was rejected: {e}");
        }
        (Err(e), false) => {
            if insn.code() == Code::INVALID && bytes.len() < MAX_INSN {
                // Either decoder may stop early on truncated input; ours must say so or
                // reject the opcode.
                assert!(
                    matches!(
                        e,
                        DecodeError::Truncated
                            | DecodeError::NotMovdir64b
                            | DecodeError::RegisterSource
                            | DecodeError::TooLong
                    ),
                    "{e:?}"
                );
            }
        }
    }
});
