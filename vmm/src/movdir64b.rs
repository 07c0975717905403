//! Emulation of guest MOVDIR64B to emulated MMIO (DSA portals).
//!
//! KVM's instruction emulator does not implement MOVDIR64B, so a guest that executes it on
//! an emulated portal makes `KVM_RUN` fail with an emulation error. With
//! `KVM_CAP_EXIT_ON_EMULATION_FAILURE` KVM reports the instruction bytes instead; the VMM
//! decodes `66 0F 38 F8 /r` (destination address in the register operand, ES-relative;
//! source = the 64-byte memory operand), reads the source, performs one 64-byte write to
//! the destination and advances RIP. This needs a host CPU with MOVDIR64B (otherwise the
//! guest's own instruction faults with #UD before any exit).

use kvm_bindings::kvm_regs;
use thiserror::Error;

/// Why instruction bytes are not an emulatable MOVDIR64B.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer bytes than the encoding needs.
    #[error("truncated instruction")]
    Truncated,
    /// Another instruction (or MOVDIR64B without its mandatory 0x66 prefix).
    #[error("not a MOVDIR64B instruction")]
    NotMovdir64b,
    /// ModRM selects a register source, which is #UD.
    #[error("MOVDIR64B with a register source operand")]
    RegisterSource,
    /// Longer than the 15 bytes an x86 instruction may have (#GP on hardware).
    #[error("instruction longer than 15 bytes")]
    TooLong,
}

/// A decoded MOVDIR64B.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Movdir64b {
    /// Guest virtual destination address (from the register operand).
    pub dst: u64,
    /// Guest virtual source address (the memory operand).
    pub src: u64,
    /// Instruction length in bytes.
    pub len: usize,
}

/// Segment override prefixes that matter in 64-bit mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Segment {
    /// FS.
    Fs,
    /// GS.
    Gs,
}

/// Size of the data MOVDIR64B moves.
pub const MOVDIR64B_SIZE: usize = 64;

/// Longest x86 instruction.
pub const MAX_INSN_LEN: usize = 15;

fn gpr(regs: &kvm_regs, n: u8) -> u64 {
    match n & 15 {
        0 => regs.rax,
        1 => regs.rcx,
        2 => regs.rdx,
        3 => regs.rbx,
        4 => regs.rsp,
        5 => regs.rbp,
        6 => regs.rsi,
        7 => regs.rdi,
        8 => regs.r8,
        9 => regs.r9,
        10 => regs.r10,
        11 => regs.r11,
        12 => regs.r12,
        13 => regs.r13,
        14 => regs.r14,
        _ => regs.r15,
    }
}

/// Decodes `bytes` (64-bit mode) as MOVDIR64B against `regs` (RIP = the instruction).
/// `segment_base` gives the FS/GS base for segment-override prefixes.
pub fn decode(
    bytes: &[u8],
    regs: &kvm_regs,
    segment_base: impl Fn(Segment) -> u64,
) -> Result<Movdir64b, DecodeError> {
    let mut i = 0;
    let next = |i: &mut usize| -> Result<u8, DecodeError> {
        let b = *bytes.get(*i).ok_or(DecodeError::Truncated)?;
        *i += 1;
        Ok(b)
    };
    let (mut opsize, mut addr32, mut seg) = (false, false, None);
    let mut b = next(&mut i)?;
    loop {
        match b {
            0x66 => opsize = true,
            0x67 => addr32 = true,
            0x26 | 0x2e | 0x36 | 0x3e => {}
            0x64 => seg = Some(Segment::Fs),
            0x65 => seg = Some(Segment::Gs),
            _ => break,
        }
        if i >= 14 {
            return Err(DecodeError::NotMovdir64b);
        }
        b = next(&mut i)?;
    }
    let rex = if (0x40..=0x4f).contains(&b) {
        let r = b;
        b = next(&mut i)?;
        r
    } else {
        0
    };
    if !opsize || b != 0x0f || next(&mut i)? != 0x38 || next(&mut i)? != 0xf8 {
        return Err(DecodeError::NotMovdir64b);
    }
    let modrm = next(&mut i)?;
    let md = modrm >> 6;
    if md == 3 {
        return Err(DecodeError::RegisterSource);
    }
    let reg = ((modrm >> 3) & 7) | ((rex & 4) << 1);
    let rm = modrm & 7;
    let mut addr: u64 = 0;
    let mut rip_relative = false;
    if rm == 4 {
        let sib = next(&mut i)?;
        let scale = 1u64 << (sib >> 6);
        let index = ((sib >> 3) & 7) | ((rex & 2) << 2);
        let base = (sib & 7) | ((rex & 1) << 3);
        if index != 4 {
            addr = addr.wrapping_add(gpr(regs, index).wrapping_mul(scale));
        }
        if !(sib & 7 == 5 && md == 0) {
            addr = addr.wrapping_add(gpr(regs, base));
        }
    } else if rm == 5 && md == 0 {
        rip_relative = true;
    } else {
        addr = gpr(regs, rm | ((rex & 1) << 3));
    }
    let disp32 = |i: &mut usize| -> Result<u64, DecodeError> {
        let d = bytes.get(*i..*i + 4).ok_or(DecodeError::Truncated)?;
        *i += 4;
        Ok(i32::from_le_bytes([d[0], d[1], d[2], d[3]]) as i64 as u64)
    };
    let no_base_sib = rm == 4 && md == 0 && bytes.get(i - 1).is_some_and(|s| s & 7 == 5);
    let disp = match md {
        1 => next(&mut i)? as i8 as i64 as u64,
        2 => disp32(&mut i)?,
        _ if rip_relative || no_base_sib => disp32(&mut i)?,
        _ => 0,
    };
    addr = addr.wrapping_add(disp);
    if rip_relative {
        addr = addr.wrapping_add(regs.rip.wrapping_add(i as u64));
    }
    if let Some(s) = seg {
        addr = addr.wrapping_add(segment_base(s));
    }
    if i > MAX_INSN_LEN {
        return Err(DecodeError::TooLong);
    }
    let mut dst = gpr(regs, reg);
    if addr32 {
        addr &= 0xffff_ffff;
        dst &= 0xffff_ffff;
    }
    Ok(Movdir64b {
        dst,
        src: addr,
        len: i,
    })
}

/// How one guest virtual address of a MOVDIR64B translated (from `KVM_TRANSLATE`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageAccess {
    /// Mapped.
    pub valid: bool,
    /// Writable.
    pub writeable: bool,
    /// Accessible from user mode (CPL 3).
    pub user: bool,
}

/// Why a MOVDIR64B that KVM could not emulate is not emulated by the VMM either; the guest
/// then gets #UD, as KVM does for emulation failures it does not report.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum Refusal {
    /// The destination is not 64-byte aligned.
    #[error("MOVDIR64B destination {0:#x} is not 64-byte aligned")]
    Misaligned(u64),
    /// An address is not mapped.
    #[error("MOVDIR64B address {0:#x} is not mapped")]
    Unmapped(u64),
    /// CPL 3 reached a supervisor-only page.
    #[error("MOVDIR64B from user mode to supervisor page {0:#x}")]
    SupervisorPage(u64),
    /// The destination page is read-only.
    #[error("MOVDIR64B destination {0:#x} is read-only")]
    ReadOnly(u64),
    /// The destination is guest RAM or no device: only portals (emulated MMIO) are emulated.
    #[error("MOVDIR64B destination {0:#x} is not an emulated portal")]
    NotPortal(u64),
}

/// Checks a decoded MOVDIR64B before the VMM performs it: `cpl` is the guest's privilege
/// level, `src` the translation of each page the source touches (with its address),
/// `dst` the destination's, `dst_is_portal` whether its physical address is emulated MMIO.
pub fn check_access(
    op: &Movdir64b,
    cpl: u8,
    src: &[(u64, PageAccess)],
    dst: PageAccess,
    dst_is_portal: bool,
) -> Result<(), Refusal> {
    if !op.dst.is_multiple_of(MOVDIR64B_SIZE as u64) {
        return Err(Refusal::Misaligned(op.dst));
    }
    let user = cpl == 3;
    for &(va, a) in src.iter().chain(std::iter::once(&(op.dst, dst))) {
        if !a.valid {
            return Err(Refusal::Unmapped(va));
        }
        if user && !a.user {
            return Err(Refusal::SupervisorPage(va));
        }
    }
    if !dst.writeable {
        return Err(Refusal::ReadOnly(op.dst));
    }
    if !dst_is_portal {
        return Err(Refusal::NotPortal(op.dst));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs() -> kvm_regs {
        kvm_regs {
            rax: 0x1000,
            rcx: 3,
            rbx: 0x2000,
            rdi: 0x3000,
            r8: 0x4000,
            r9: 0x5000,
            rip: 0x10_0000,
            ..Default::default()
        }
    }

    fn dec(b: &[u8]) -> Result<Movdir64b, DecodeError> {
        decode(b, &regs(), |s| {
            if s == Segment::Fs {
                0x7000_0000
            } else {
                0x8000_0000
            }
        })
    }

    #[test]
    fn register_indirect() {
        // movdir64b rax, [rdi]
        let m = dec(&[0x66, 0x0f, 0x38, 0xf8, 0x07]).unwrap();
        assert_eq!(
            m,
            Movdir64b {
                dst: 0x1000,
                src: 0x3000,
                len: 5
            }
        );
    }

    #[test]
    fn rex_extends_reg_and_rm() {
        // movdir64b r9, [r8]  (REX.R + REX.B)
        let m = dec(&[0x66, 0x45, 0x0f, 0x38, 0xf8, 0x08]).unwrap();
        assert_eq!((m.dst, m.src, m.len), (0x5000, 0x4000, 6));
    }

    #[test]
    fn sib_with_scale_and_disp8() {
        // movdir64b rax, [rbx + rcx*4 + 0x10]
        let m = dec(&[0x66, 0x0f, 0x38, 0xf8, 0x44, 0x8b, 0x10]).unwrap();
        assert_eq!((m.src, m.len), (0x2000 + 12 + 0x10, 7));
    }

    #[test]
    fn negative_disp32() {
        // movdir64b rax, [rdi - 0x100]
        let m = dec(&[0x66, 0x0f, 0x38, 0xf8, 0x87, 0x00, 0xff, 0xff, 0xff]).unwrap();
        assert_eq!((m.src, m.len), (0x2f00, 9));
    }

    #[test]
    fn rip_relative() {
        let m = dec(&[0x66, 0x0f, 0x38, 0xf8, 0x05, 0x10, 0, 0, 0]).unwrap();
        assert_eq!(m.src, 0x10_0000 + 9 + 0x10);
    }

    #[test]
    fn sib_without_base_uses_disp32() {
        // movdir64b rax, [rcx*8 + 0x100]
        let m = dec(&[0x66, 0x0f, 0x38, 0xf8, 0x04, 0xcd, 0x00, 0x01, 0, 0]).unwrap();
        assert_eq!((m.src, m.len), (24 + 0x100, 10));
    }

    #[test]
    fn segment_override_and_addr32() {
        let m = dec(&[0x64, 0x66, 0x0f, 0x38, 0xf8, 0x07]).unwrap();
        assert_eq!(m.src, 0x7000_3000);
        let mut r = regs();
        r.rdi = 0x1_0000_3000;
        r.rax = 0x2_0000_1000;
        let m = decode(&[0x67, 0x66, 0x0f, 0x38, 0xf8, 0x07], &r, |_| 0).unwrap();
        assert_eq!((m.dst, m.src), (0x1000, 0x3000));
    }

    #[test]
    fn other_instructions_are_rejected() {
        assert_eq!(
            dec(&[0x0f, 0x38, 0xf8, 0x07]),
            Err(DecodeError::NotMovdir64b)
        ); // no 66
        assert_eq!(
            dec(&[0xf3, 0x0f, 0x38, 0xf8, 0x07]),
            Err(DecodeError::NotMovdir64b)
        ); // ENQCMDS
        assert_eq!(
            dec(&[0x66, 0x0f, 0x38, 0xf9, 0x07]),
            Err(DecodeError::NotMovdir64b)
        );
        assert_eq!(
            dec(&[0x66, 0x0f, 0x38, 0xf8, 0xc7]),
            Err(DecodeError::RegisterSource)
        );
        assert_eq!(dec(&[0x66, 0x0f, 0x38]), Err(DecodeError::Truncated));
        assert_eq!(
            dec(&[0x66, 0x0f, 0x38, 0xf8, 0x87, 0x00]),
            Err(DecodeError::Truncated)
        );
        assert_eq!(dec(&[]), Err(DecodeError::Truncated));
        assert_eq!(dec(&[0x66; 20]), Err(DecodeError::NotMovdir64b));
    }

    fn ok() -> PageAccess {
        PageAccess {
            valid: true,
            writeable: true,
            user: true,
        }
    }

    #[test]
    fn access_check_allows_only_mapped_aligned_portal_writes() {
        let op = Movdir64b {
            dst: 0x1000,
            src: 0x2000,
            len: 5,
        };
        let src = [(0x2000, ok())];
        assert_eq!(check_access(&op, 0, &src, ok(), true), Ok(()));
        assert_eq!(check_access(&op, 3, &src, ok(), true), Ok(()));
        // Guest RAM or nothing at the destination: #UD.
        assert_eq!(
            check_access(&op, 0, &src, ok(), false),
            Err(Refusal::NotPortal(0x1000))
        );
        let mis = Movdir64b { dst: 0x1008, ..op };
        assert_eq!(
            check_access(&mis, 0, &src, ok(), true),
            Err(Refusal::Misaligned(0x1008))
        );
        let unmapped = PageAccess::default();
        assert_eq!(
            check_access(&op, 0, &[(0x2000, unmapped)], ok(), true),
            Err(Refusal::Unmapped(0x2000))
        );
        let ro = PageAccess {
            writeable: false,
            ..ok()
        };
        assert_eq!(
            check_access(&op, 0, &src, ro, true),
            Err(Refusal::ReadOnly(0x1000))
        );
    }

    #[test]
    fn user_mode_reaches_only_user_pages() {
        let op = Movdir64b {
            dst: 0x1000,
            src: 0x2fe0,
            len: 5,
        };
        let kernel_page = PageAccess {
            user: false,
            ..ok()
        };
        // The source's second page is supervisor-only.
        let src = [(0x2fe0, ok()), (0x3000, kernel_page)];
        assert_eq!(
            check_access(&op, 3, &src, ok(), true),
            Err(Refusal::SupervisorPage(0x3000))
        );
        assert_eq!(check_access(&op, 0, &src, ok(), true), Ok(()));
        assert_eq!(
            check_access(&op, 3, &[(0x2fe0, ok())], kernel_page, true),
            Err(Refusal::SupervisorPage(0x1000))
        );
    }

    #[test]
    fn instructions_longer_than_15_bytes_are_rejected() {
        // 13 prefixes + REX + 0F 38 F8 + ModRM = 18 bytes (found by the movdir64b fuzz target).
        let mut b = vec![0x65; 12];
        b.insert(2, 0x66);
        b.extend([0x42, 0x0f, 0x38, 0xf8, 0x1b]);
        assert_eq!(dec(&b), Err(DecodeError::TooLong));
        // 15 bytes still decode: 6 prefixes + 0F 38 F8 + ModRM + SIB + disp32.
        let mut b = vec![0x66; 6];
        b.extend([0x0f, 0x38, 0xf8, 0x84, 0x8b, 0x10, 0, 0, 0]);
        assert_eq!(b.len(), 15);
        assert_eq!(dec(&b).unwrap().len, 15);
    }
}
