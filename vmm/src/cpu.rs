//! vCPU configuration: CPUID (x2APIC, topology, KVM paravirt leaves), MSRs, FPU, LAPIC LVTs
//! and the boot vCPU's 64-bit entry state.

use kvm_bindings::{
    kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, CpuId, Msrs, KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
};
use kvm_ioctls::{Kvm, VcpuFd};
use thiserror::Error;

use crate::boot::{BootInfo, BootProtocol, GDT, PVH_GDT};
use crate::layout::*;

/// Errors while configuring a vCPU.
#[derive(Debug, Error)]
pub enum CpuError {
    /// A KVM vCPU ioctl failed.
    #[error("{what} failed for vCPU {cpu}: {source}")]
    Kvm {
        /// Which operation.
        what: &'static str,
        /// vCPU index.
        cpu: u32,
        /// Cause.
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// Leaf 1 ECX: x2APIC.
const CPUID_1_ECX_X2APIC: u32 = 1 << 21;
/// Leaf 1 ECX: TSC-deadline timer.
const CPUID_1_ECX_TSC_DEADLINE: u32 = 1 << 24;
/// Leaf 1 ECX: running under a hypervisor.
const CPUID_1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 EDX: HTT (EBX[23:16] is valid).
const CPUID_1_EDX_HTT: u32 = 1 << 28;
/// Leaf 7.0 ECX: MOVDIRI.
const CPUID_7_ECX_MOVDIRI: u32 = 1 << 27;
/// Leaf 7.0 ECX: MOVDIR64B.
const CPUID_7_ECX_MOVDIR64B: u32 = 1 << 28;

/// KVM paravirt features leaf (KVM_CPUID_FEATURES).
const CPUID_KVM_FEATURES: u32 = 0x4000_0001;
/// KVM_CPUID_FEATURES EAX: KVM_FEATURE_MSI_EXT_DEST_ID, the guest may put destination ID
/// bits 14:8 in MSI address bits 11:5 (the interrupt crate hands them to KVM).
const KVM_FEATURE_MSI_EXT_DEST_ID: u32 = 1 << 15;

/// Guest CPU features the VMM adds beyond what KVM reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExtraFeatures {
    /// Advertise MOVDIRI/MOVDIR64B. Linux's idxd driver refuses to load without MOVDIR64B;
    /// on CPUs without it the guest can load the driver and configure devices, but must
    /// submit descriptors with ordinary stores (a real MOVDIR64B would fault with #UD).
    pub movdir64b: bool,
}

/// Whether the guest CPUID reports MOVDIR64B.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Movdir64bDecision {
    /// Not reported.
    Hidden,
    /// Reported: the VMM emulates guest MOVDIR64B to the portals.
    Emulated,
    /// Reported on request although neither host nor VMM can run it to a portal: idxd
    /// loads, but its descriptor submission faults (#UD).
    ForcedWithoutSupport,
}

impl Movdir64bDecision {
    /// Decides from the devices' `movdir64b=` requests (`None` for a DSA without the
    /// option; empty without a DSA) and whether the VMM can emulate the instruction (host
    /// CPU has it and `KVM_CAP_EXIT_ON_EMULATION_FAILURE` is on). Any `off` hides it.
    pub fn decide(requests: &[Option<bool>], can_emulate: bool) -> Self {
        if requests.is_empty() || requests.contains(&Some(false)) {
            Movdir64bDecision::Hidden
        } else if can_emulate {
            Movdir64bDecision::Emulated
        } else if requests.contains(&Some(true)) {
            Movdir64bDecision::ForcedWithoutSupport
        } else {
            Movdir64bDecision::Hidden
        }
    }

    /// Whether the guest CPUID reports MOVDIR64B.
    pub fn advertised(self) -> bool {
        self != Movdir64bDecision::Hidden
    }

    /// The startup warning, if any.
    pub fn warning(self) -> Option<&'static str> {
        match self {
            Movdir64bDecision::ForcedWithoutSupport => Some(
                "--device dsa,movdir64b=on: the guest CPUID reports MOVDIR64B, which this host \
                 cannot execute or emulate to DSA portals: idxd loads, but its data path \
                 (descriptor submission with MOVDIR64B) will fault with #UD in the guest",
            ),
            _ => None,
        }
    }
}

fn cpu_err(what: &'static str, cpu: u32) -> impl FnOnce(kvm_ioctls::Error) -> CpuError {
    move |source| CpuError::Kvm { what, cpu, source }
}

/// Number of bits needed to hold IDs `0..n`.
fn id_bits(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// Builds the CPUID of vCPU `cpu` (APIC ID = `cpu`) out of KVM's supported CPUID.
/// Topology: one package, `ncpus` cores, one thread per core.
pub fn build_cpuid(base: &CpuId, cpu: u32, ncpus: u32, extra: ExtraFeatures) -> CpuId {
    let mut entries: Vec<_> = base.as_slice().to_vec();
    let core_bits = id_bits(ncpus);
    let max_basic = entries
        .iter()
        .find(|e| e.function == 0)
        .map_or(0, |e| e.eax);
    // Drop the topology leaves and rebuild them.
    entries.retain(|e| e.function != 0xb && e.function != 0x1f);
    for e in entries.iter_mut() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0xffff) | ((cpu & 0xff) << 24) | ((ncpus.min(255)) << 16);
                e.ecx |= CPUID_1_ECX_X2APIC | CPUID_1_ECX_HYPERVISOR | CPUID_1_ECX_TSC_DEADLINE;
                if ncpus > 1 {
                    e.edx |= CPUID_1_EDX_HTT;
                } else {
                    e.edx &= !CPUID_1_EDX_HTT;
                }
            }
            7 if e.index == 0 && extra.movdir64b => {
                e.ecx |= CPUID_7_ECX_MOVDIRI | CPUID_7_ECX_MOVDIR64B;
            }
            4 => {
                // Deterministic cache parameters: cores per package - 1 in EAX[31:26].
                e.eax = (e.eax & 0x03ff_ffff) | (((ncpus.min(64) - 1) & 0x3f) << 26);
            }
            0x8000_0008 => {
                // AMD: number of cores - 1 and APIC ID size.
                e.ecx = (e.ecx & !0xf0ff) | ((ncpus - 1).min(255)) | (core_bits.max(1) << 12);
            }
            // APIC IDs up to 32767 reachable by MSIs and IOAPIC pins without an IOMMU.
            CPUID_KVM_FEATURES => e.eax |= KVM_FEATURE_MSI_EXT_DEST_ID,
            0x8000_001e => {
                // AMD extended APIC ID, compute unit = core.
                e.eax = cpu;
                e.ebx = cpu & 0xff;
                e.ecx = 0;
            }
            _ => {}
        }
    }
    if max_basic >= 0xb {
        let level = |index: u32, eax: u32, ebx: u32, kind: u32| kvm_bindings::kvm_cpuid_entry2 {
            function: 0xb,
            index,
            flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
            eax,
            ebx,
            ecx: (kind << 8) | index,
            edx: cpu,
            ..Default::default()
        };
        entries.push(level(0, 0, 1, 1)); // SMT: 1 thread per core
        entries.push(level(1, core_bits, ncpus, 2)); // Core: ncpus per package
        entries.push(level(2, 0, 0, 0)); // invalid: end of levels
    }
    CpuId::from_entries(&entries).unwrap_or_else(|_| base.clone())
}

/// MSRs set on every vCPU, filtered by what KVM supports.
fn boot_msrs(supported: &[u32]) -> Vec<kvm_msr_entry> {
    const MSRS: &[(u32, u64)] = &[
        (0x174, 0),               // IA32_SYSENTER_CS
        (0x175, 0),               // IA32_SYSENTER_ESP
        (0x176, 0),               // IA32_SYSENTER_EIP
        (0xc000_0081, 0),         // STAR
        (0xc000_0083, 0),         // CSTAR
        (0xc000_0102, 0),         // KERNEL_GS_BASE
        (0xc000_0084, 0),         // SYSCALL_MASK
        (0xc000_0082, 0),         // LSTAR
        (0x10, 0),                // IA32_TSC
        (0x1a0, 1),               // IA32_MISC_ENABLE: fast strings
        (0x2ff, (1 << 11) | 0x6), // MTRRdefType: enabled, write-back
    ];
    MSRS.iter()
        .filter(|(i, _)| supported.contains(i))
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect()
}

/// Configures CPUID, MSRs, FPU and LAPIC of vCPU `cpu`.
pub fn configure_vcpu(
    kvm: &Kvm,
    vcpu: &VcpuFd,
    base_cpuid: &CpuId,
    cpu: u32,
    ncpus: u32,
    extra: ExtraFeatures,
) -> Result<(), CpuError> {
    vcpu.set_cpuid2(&build_cpuid(base_cpuid, cpu, ncpus, extra))
        .map_err(cpu_err("KVM_SET_CPUID2", cpu))?;
    let supported = kvm
        .get_msr_index_list()
        .map(|l| l.as_slice().to_vec())
        .unwrap_or_default();
    let entries = boot_msrs(&supported);
    let msrs = Msrs::from_entries(&entries).map_err(|_| CpuError::Kvm {
        what: "building MSR list",
        cpu,
        source: kvm_ioctls::Error::new(libc::E2BIG),
    })?;
    vcpu.set_msrs(&msrs).map_err(cpu_err("KVM_SET_MSRS", cpu))?;
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(cpu_err("KVM_SET_FPU", cpu))?;
    set_lint(vcpu, cpu)?;
    if needs_x2apic_at_boot(ncpus) {
        enable_x2apic(vcpu, cpu)?;
    }
    Ok(())
}

/// Whether vCPUs start with the x2APIC enabled, as firmware leaves them when an APIC ID
/// does not fit the xAPIC's 8 bits (0xFF is the xAPIC broadcast ID): Linux registers MADT
/// x2APIC entries with IDs of 255 and above only when it finds the x2APIC already enabled.
fn needs_x2apic_at_boot(ncpus: u32) -> bool {
    ncpus > 255
}

/// Switches the vCPU's local APIC to x2APIC mode (IA32_APIC_BASE EN | EXTD).
fn enable_x2apic(vcpu: &VcpuFd, cpu: u32) -> Result<(), CpuError> {
    const APIC_BASE_EXTD: u64 = 1 << 10;
    const APIC_BASE_EN: u64 = 1 << 11;
    let mut sregs = vcpu.get_sregs().map_err(cpu_err("KVM_GET_SREGS", cpu))?;
    sregs.apic_base |= APIC_BASE_EN | APIC_BASE_EXTD;
    vcpu.set_sregs(&sregs)
        .map_err(cpu_err("KVM_SET_SREGS", cpu))
}

/// LINT0 = ExtINT, LINT1 = NMI, as firmware leaves them.
fn set_lint(vcpu: &VcpuFd, cpu: u32) -> Result<(), CpuError> {
    const APIC_LVT0: usize = 0x350;
    const APIC_LVT1: usize = 0x360;
    let mut lapic = vcpu.get_lapic().map_err(cpu_err("KVM_GET_LAPIC", cpu))?;
    let regs = &mut lapic.regs;
    let rd = |r: &[i8], off: usize| {
        u32::from_le_bytes([
            r[off] as u8,
            r[off + 1] as u8,
            r[off + 2] as u8,
            r[off + 3] as u8,
        ])
    };
    let wr = |r: &mut [i8], off: usize, v: u32| {
        for (i, b) in v.to_le_bytes().iter().enumerate() {
            r[off + i] = *b as i8;
        }
    };
    let lvt0 = (rd(regs, APIC_LVT0) & !0x700) | (7 << 8);
    let lvt1 = (rd(regs, APIC_LVT1) & !0x700) | (4 << 8);
    wr(regs, APIC_LVT0, lvt0);
    wr(regs, APIC_LVT1, lvt1);
    vcpu.set_lapic(&lapic)
        .map_err(cpu_err("KVM_SET_LAPIC", cpu))
}

fn segment(selector: u16, gdt_entry: u64) -> kvm_segment {
    let base = ((gdt_entry >> 16) & 0xff_ffff) | ((gdt_entry >> 32) & 0xff00_0000);
    let limit = ((gdt_entry & 0xffff) | ((gdt_entry >> 32) & 0xf_0000)) as u32;
    let g = ((gdt_entry >> 55) & 1) as u8;
    kvm_segment {
        base,
        limit: if g == 1 { (limit << 12) | 0xfff } else { limit },
        selector,
        type_: ((gdt_entry >> 40) & 0xf) as u8,
        present: ((gdt_entry >> 47) & 1) as u8,
        dpl: ((gdt_entry >> 45) & 3) as u8,
        db: ((gdt_entry >> 54) & 1) as u8,
        s: ((gdt_entry >> 44) & 1) as u8,
        l: ((gdt_entry >> 53) & 1) as u8,
        g,
        avl: ((gdt_entry >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

/// Puts the boot vCPU at the kernel's entry in the state its boot protocol expects.
pub fn setup_boot_vcpu(vcpu: &VcpuFd, boot: &BootInfo) -> Result<(), CpuError> {
    let mut sregs = vcpu.get_sregs().map_err(cpu_err("KVM_GET_SREGS", 0))?;
    let gdt = match boot.protocol {
        BootProtocol::Linux64 => &GDT,
        BootProtocol::Pvh => &PVH_GDT,
    };
    let code = segment(0x08, gdt[1]);
    let data = segment(0x10, gdt[2]);
    let tss = segment(0x18, gdt[3]);
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (std::mem::size_of_val(gdt) - 1) as u16;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    let regs = match boot.protocol {
        BootProtocol::Linux64 => {
            sregs.cr3 = PML4_ADDR;
            sregs.cr4 |= 1 << 5; // PAE
            sregs.cr0 |= 1 | (1 << 31); // PE | PG
            sregs.efer |= (1 << 8) | (1 << 10); // LME | LMA
            kvm_regs {
                rflags: 0x2,
                rip: boot.entry,
                rsp: BOOT_STACK_POINTER,
                rbp: BOOT_STACK_POINTER,
                rsi: ZERO_PAGE_ADDR,
                ..Default::default()
            }
        }
        BootProtocol::Pvh => {
            // 32-bit protected mode, paging off, flat segments; EBX = hvm_start_info.
            sregs.cr0 = (sregs.cr0 | 1 | (1 << 4)) & !(1 << 31); // PE | ET, no PG
            sregs.cr4 = 0;
            sregs.efer = 0;
            kvm_regs {
                rflags: 0x2,
                rip: boot.entry,
                rbx: PVH_INFO_ADDR,
                ..Default::default()
            }
        }
    };
    vcpu.set_sregs(&sregs)
        .map_err(cpu_err("KVM_SET_SREGS", 0))?;
    vcpu.set_regs(&regs).map_err(cpu_err("KVM_SET_REGS", 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    fn base() -> CpuId {
        let e = |function, eax| kvm_cpuid_entry2 {
            function,
            eax,
            ..Default::default()
        };
        CpuId::from_entries(&[e(0, 0xd), e(1, 0), e(7, 0), e(0xb, 0), e(0x8000_0008, 0)]).unwrap()
    }

    fn find(c: &CpuId, f: u32, i: u32) -> kvm_cpuid_entry2 {
        *c.as_slice()
            .iter()
            .find(|e| e.function == f && e.index == i)
            .unwrap()
    }

    #[test]
    fn leaf1_reports_apic_id_and_x2apic() {
        let c = build_cpuid(&base(), 1, 2, ExtraFeatures::default());
        let l1 = find(&c, 1, 0);
        assert_eq!(l1.ebx >> 24, 1);
        assert_eq!((l1.ebx >> 16) & 0xff, 2);
        assert_ne!(l1.ecx & CPUID_1_ECX_X2APIC, 0);
        assert_ne!(l1.edx & CPUID_1_EDX_HTT, 0);
    }

    #[test]
    fn leaf_b_reports_full_x2apic_id_and_core_count() {
        let c = build_cpuid(&base(), 300, 400, ExtraFeatures::default());
        assert_eq!(find(&c, 0xb, 0).edx, 300);
        let core = find(&c, 0xb, 1);
        assert_eq!((core.eax, core.ebx, (core.ecx >> 8) & 0xff), (9, 400, 2));
        assert_eq!(find(&c, 0xb, 2).ecx >> 8 & 0xff, 0);
    }

    #[test]
    fn movdir64b_is_advertised_only_on_request() {
        let plain = build_cpuid(&base(), 0, 1, ExtraFeatures::default());
        assert_eq!(find(&plain, 7, 0).ecx & CPUID_7_ECX_MOVDIR64B, 0);
        let dsa = build_cpuid(&base(), 0, 1, ExtraFeatures { movdir64b: true });
        assert_ne!(find(&dsa, 7, 0).ecx & CPUID_7_ECX_MOVDIR64B, 0);
    }

    #[test]
    fn movdir64b_only_when_emulated_or_forced() {
        use Movdir64bDecision::*;
        // No DSA: never.
        assert_eq!(Movdir64bDecision::decide(&[], true), Hidden);
        // A DSA without the option: only when the VMM can emulate it.
        assert_eq!(Movdir64bDecision::decide(&[None], true), Emulated);
        assert_eq!(Movdir64bDecision::decide(&[None], false), Hidden);
        // On request: reported, with a warning when it cannot work.
        let forced = Movdir64bDecision::decide(&[Some(true)], false);
        assert_eq!(forced, ForcedWithoutSupport);
        assert!(forced.advertised());
        assert!(forced.warning().unwrap().contains("will fault"));
        assert_eq!(Movdir64bDecision::decide(&[Some(true)], true), Emulated);
        assert_eq!(
            Movdir64bDecision::decide(&[Some(true)], true).warning(),
            None
        );
        // off wins.
        assert_eq!(
            Movdir64bDecision::decide(&[Some(true), Some(false)], true),
            Hidden
        );
        assert!(!Hidden.advertised());
    }

    #[test]
    fn kvm_leaf_reports_msi_ext_dest_id() {
        let kvm = kvm_cpuid_entry2 {
            function: CPUID_KVM_FEATURES,
            eax: 1, // KVM_FEATURE_CLOCKSOURCE, kept
            ..Default::default()
        };
        let mut entries = base().as_slice().to_vec();
        entries.push(kvm);
        let c = build_cpuid(
            &CpuId::from_entries(&entries).unwrap(),
            300,
            400,
            ExtraFeatures::default(),
        );
        assert_eq!(find(&c, CPUID_KVM_FEATURES, 0).eax, 1 | (1 << 15));
    }

    #[test]
    fn x2apic_is_enabled_at_boot_only_when_an_apic_id_needs_it() {
        assert!(!needs_x2apic_at_boot(255)); // IDs 0..=254
        assert!(needs_x2apic_at_boot(256)); // ID 255 is the xAPIC broadcast ID
    }

    #[test]
    fn id_bits_rounds_up() {
        assert_eq!(id_bits(1), 0);
        assert_eq!(id_bits(2), 1);
        assert_eq!(id_bits(3), 2);
        assert_eq!(id_bits(256), 8);
        assert_eq!(id_bits(257), 9);
    }

    #[test]
    fn segments_decode_gdt() {
        let cs = segment(8, GDT[1]);
        assert_eq!((cs.l, cs.db, cs.present, cs.type_, cs.s), (1, 0, 1, 0xb, 1));
        assert_eq!(cs.limit, 0xffff_ffff);
        let ds = segment(0x10, GDT[2]);
        assert_eq!((ds.l, ds.db, ds.type_), (0, 1, 3));
        // PVH: 32-bit flat code and data, a present busy TSS.
        let cs = segment(8, PVH_GDT[1]);
        assert_eq!((cs.l, cs.db, cs.present, cs.type_, cs.s), (0, 1, 1, 0xb, 1));
        assert_eq!((cs.base, cs.limit), (0, 0xffff_ffff));
        let tr = segment(0x18, PVH_GDT[3]);
        assert_eq!((tr.present, tr.type_, tr.s, tr.limit), (1, 0xb, 0, 0x67));
    }
}
