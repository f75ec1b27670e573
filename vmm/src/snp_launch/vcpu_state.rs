//! Loading a vCPU with the state of a VMSA.
//!
//! Under SEV-SNP the VMM never writes a VMSA: at LAUNCH_FINISH KVM builds each vCPU's VMSA
//! from the state the VMM loaded with the ordinary ioctls, and the firmware measures it. So the
//! VMM loads every field KVM copies (`veil_snp::vmsa` lists them) from the VMSA the launch
//! digest was computed with: segments and control registers (KVM_SET_SREGS), general
//! registers (KVM_SET_REGS), x87/SSE control words (KVM_SET_XSAVE), XCR0 (KVM_SET_XCRS), PAT and
//! XSS (KVM_SET_MSRS), DR6/DR7 (KVM_SET_DEBUGREGS). The model backend uses the same loader for
//! its unencrypted run.

use kvm_bindings::{kvm_msr_entry, kvm_regs, kvm_segment, kvm_xcrs, kvm_xsave, Msrs};
use kvm_ioctls::VcpuFd;
use veil_snp::vmsa::{Segment, Vmsa};

const MSR_IA32_CR_PAT: u32 = 0x277;
const MSR_IA32_XSS: u32 = 0xda0;
/// The bits of DR7 that always read as one: KVM refuses to encrypt a VMSA with any other.
const DR7_FIXED_1: u64 = 0x400;

/// Errors while loading VMSA state into a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuStateError {
    #[error("KVM refused to {action} for vCPU {vcpu}: {source}")]
    Kvm {
        vcpu: u32,
        action: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {vcpu}: KVM does not launch SEV-SNP guests with {field} = {value:#x} (it must be {must:#x})")]
    NotLaunchable {
        vcpu: u32,
        field: &'static str,
        value: u64,
        must: u64,
    },
}

/// Refuses VMSA values KVM cannot reproduce: it encrypts a VMSA only with DR7 at its reset
/// value, and Veil does not load PKRU (KVM copies it from the XSAVE state, zero at reset).
pub fn check_launchable(vcpu: u32, vmsa: &Vmsa) -> Result<(), VcpuStateError> {
    let refuse = |field, value, must| {
        Err(VcpuStateError::NotLaunchable {
            vcpu,
            field,
            value,
            must,
        })
    };
    if vmsa.dr7 != DR7_FIXED_1 {
        return refuse("DR7", vmsa.dr7, DR7_FIXED_1);
    }
    if vmsa.pkru != 0 {
        return refuse("PKRU", u64::from(vmsa.pkru), 0);
    }
    Ok(())
}

/// XSAVE legacy-area offsets (in u32 words of `kvm_xsave.region`): FCW in the low half of
/// word 0, MXCSR word 6, XSTATE_BV's low half word 128 (byte 512).
const XSAVE_FCW_WORD: usize = 0;
const XSAVE_MXCSR_WORD: usize = 6;
const XSAVE_XSTATE_BV_WORD: usize = 128;
/// XSTATE_BV bits of the x87 and SSE components.
const XFEATURE_FP_SSE: u32 = 0b11;

/// Puts FCW and MXCSR into an XSAVE image and marks x87 and SSE present so KVM loads them.
fn set_x87_sse_controls(xsave: &mut kvm_xsave, fcw: u16, mxcsr: u32) {
    let word = &mut xsave.region[XSAVE_FCW_WORD];
    *word = (*word & !0xffff) | u32::from(fcw);
    xsave.region[XSAVE_MXCSR_WORD] = mxcsr;
    xsave.region[XSAVE_XSTATE_BV_WORD] |= XFEATURE_FP_SSE;
}

/// A VMSA segment (attributes packed as in the VMCB) in KVM's form.
fn kvm_segment_of(seg: &Segment) -> kvm_segment {
    let a = seg.attrib;
    let present = (a >> 7) & 1;
    kvm_segment {
        base: seg.base,
        limit: seg.limit,
        selector: seg.selector,
        type_: (a & 0xf) as u8,
        s: ((a >> 4) & 1) as u8,
        dpl: ((a >> 5) & 3) as u8,
        present: present as u8,
        avl: ((a >> 8) & 1) as u8,
        l: ((a >> 9) & 1) as u8,
        db: ((a >> 10) & 1) as u8,
        g: ((a >> 11) & 1) as u8,
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// Loads `vmsa` into `vcpu` (created, with its CPUID set: KVM checks XCR0 against it).
pub fn load_vmsa(vcpu: &VcpuFd, id: u32, vmsa: &Vmsa) -> Result<(), VcpuStateError> {
    let kvm = |action: &'static str| {
        move |source| VcpuStateError::Kvm {
            vcpu: id,
            action,
            source,
        }
    };
    let mut sregs = vcpu.get_sregs().map_err(kvm("report special registers"))?;
    sregs.cs = kvm_segment_of(&vmsa.cs);
    sregs.ds = kvm_segment_of(&vmsa.ds);
    sregs.es = kvm_segment_of(&vmsa.es);
    sregs.fs = kvm_segment_of(&vmsa.fs);
    sregs.gs = kvm_segment_of(&vmsa.gs);
    sregs.ss = kvm_segment_of(&vmsa.ss);
    sregs.tr = kvm_segment_of(&vmsa.tr);
    sregs.ldt = kvm_segment_of(&vmsa.ldtr);
    sregs.gdt.base = vmsa.gdtr.base;
    sregs.gdt.limit = vmsa.gdtr.limit as u16;
    sregs.idt.base = vmsa.idtr.base;
    sregs.idt.limit = vmsa.idtr.limit as u16;
    sregs.cr0 = vmsa.cr0;
    sregs.cr3 = vmsa.cr3;
    sregs.cr4 = vmsa.cr4;
    sregs.efer = vmsa.efer;
    vcpu.set_sregs(&sregs)
        .map_err(kvm("set special registers"))?;

    let [r8, r9, r10, r11, r12, r13, r14, r15] = vmsa.r8_15;
    let regs = kvm_regs {
        rax: vmsa.rax,
        rbx: vmsa.rbx,
        rcx: vmsa.rcx,
        rdx: vmsa.rdx,
        rsi: vmsa.rsi,
        rdi: vmsa.rdi,
        rsp: vmsa.rsp,
        rbp: vmsa.rbp,
        r8,
        r9,
        r10,
        r11,
        r12,
        r13,
        r14,
        r15,
        rip: vmsa.rip,
        // Bit 1 of RFLAGS always reads as one.
        rflags: vmsa.rflags | 0x2,
    };
    vcpu.set_regs(&regs).map_err(kvm("set registers"))?;

    // FCW and MXCSR go through the XSAVE image: KVM_SET_FPU does not carry MXCSR, and KVM
    // takes legacy-area values only for the components marked present in XSTATE_BV.
    let mut xsave = vcpu.get_xsave().map_err(kvm("report the XSAVE state"))?;
    set_x87_sse_controls(&mut xsave, vmsa.x87_fcw, vmsa.mxcsr);
    // SAFETY: `xsave` is the full KVM_GET_XSAVE image of this vCPU with only its legacy
    // control words and XSTATE_BV changed, so its size is the one KVM_SET_XSAVE expects.
    unsafe { vcpu.set_xsave(&xsave) }.map_err(kvm("set the x87/SSE control words"))?;

    let mut xcrs = kvm_xcrs {
        nr_xcrs: 1,
        ..Default::default()
    };
    xcrs.xcrs[0].xcr = 0;
    xcrs.xcrs[0].value = vmsa.xcr0;
    vcpu.set_xcrs(&xcrs).map_err(kvm("set XCR0"))?;

    let mut msrs = vec![kvm_msr_entry {
        index: MSR_IA32_CR_PAT,
        data: vmsa.g_pat,
        ..Default::default()
    }];
    // XSS is writable only when the vCPU's CPUID has XSAVES; zero is its reset value.
    if vmsa.xss != 0 {
        msrs.push(kvm_msr_entry {
            index: MSR_IA32_XSS,
            data: vmsa.xss,
            ..Default::default()
        });
    }
    let wanted = msrs.len();
    let msrs = Msrs::from_entries(&msrs).expect("two entries fit");
    let written = vcpu.set_msrs(&msrs).map_err(kvm("set PAT/XSS"))?;
    if written != wanted {
        return Err(VcpuStateError::Kvm {
            vcpu: id,
            action: "set PAT/XSS",
            source: kvm_ioctls::Error::new(libc::EINVAL),
        });
    }

    let mut debug = vcpu
        .get_debug_regs()
        .map_err(kvm("report debug registers"))?;
    debug.dr6 = vmsa.dr6;
    debug.dr7 = vmsa.dr7;
    vcpu.set_debug_regs(&debug)
        .map_err(kvm("set debug registers"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
    use kvm_ioctls::Kvm;
    use veil_snp::vmsa::{DEFAULT_G_PAT, RESET_EIP};

    fn segment_of(s: &kvm_segment) -> Segment {
        let attrib = u16::from(s.type_)
            | u16::from(s.s) << 4
            | u16::from(s.dpl) << 5
            | u16::from(s.present) << 7
            | u16::from(s.avl) << 8
            | u16::from(s.l) << 9
            | u16::from(s.db) << 10
            | u16::from(s.g) << 11;
        Segment::new(s.selector, attrib, s.limit, s.base)
    }

    /// Reads back every field KVM copies into a VMSA, the way `sev_es_sync_vmsa` gathers them.
    fn read_back(vcpu: &VcpuFd, sev_features: u64) -> Vmsa {
        let sregs = vcpu.get_sregs().unwrap();
        let regs = vcpu.get_regs().unwrap();
        let xsave = vcpu.get_xsave().unwrap();
        let xcrs = vcpu.get_xcrs().unwrap();
        let debug = vcpu.get_debug_regs().unwrap();
        let mut msrs = Msrs::from_entries(&[
            kvm_msr_entry {
                index: MSR_IA32_CR_PAT,
                ..Default::default()
            },
            kvm_msr_entry {
                index: MSR_IA32_XSS,
                ..Default::default()
            },
        ])
        .unwrap();
        assert_eq!(vcpu.get_msrs(&mut msrs).unwrap(), 2);
        let msr = |i: usize| msrs.as_slice()[i].data;
        let table = |t: &kvm_bindings::kvm_dtable| Segment::new(0, 0, u32::from(t.limit), t.base);
        Vmsa {
            es: segment_of(&sregs.es),
            cs: segment_of(&sregs.cs),
            ss: segment_of(&sregs.ss),
            ds: segment_of(&sregs.ds),
            fs: segment_of(&sregs.fs),
            gs: segment_of(&sregs.gs),
            gdtr: table(&sregs.gdt),
            ldtr: segment_of(&sregs.ldt),
            idtr: table(&sregs.idt),
            tr: segment_of(&sregs.tr),
            cpl: sregs.ss.dpl,
            efer: sregs.efer,
            xss: msr(1),
            cr4: sregs.cr4,
            cr3: sregs.cr3,
            cr0: sregs.cr0,
            dr7: debug.dr7,
            dr6: debug.dr6,
            rflags: regs.rflags,
            rip: regs.rip,
            rsp: regs.rsp,
            rax: regs.rax,
            g_pat: msr(0),
            pkru: 0,
            rcx: regs.rcx,
            rdx: regs.rdx,
            rbx: regs.rbx,
            rbp: regs.rbp,
            rsi: regs.rsi,
            rdi: regs.rdi,
            r8_15: [
                regs.r8, regs.r9, regs.r10, regs.r11, regs.r12, regs.r13, regs.r14, regs.r15,
            ],
            sev_features,
            xcr0: xcrs.xcrs[..xcrs.nr_xcrs as usize]
                .iter()
                .find(|x| x.xcr == 0)
                .map_or(0, |x| x.value),
            mxcsr: xsave.region[XSAVE_MXCSR_WORD],
            x87_fcw: xsave.region[XSAVE_FCW_WORD] as u16,
        }
    }

    fn fresh_vcpu() -> (kvm_ioctls::VmFd, VcpuFd) {
        let kvm = Kvm::new().expect("/dev/kvm");
        let vm = kvm.create_vm().unwrap();
        vm.create_irq_chip().unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        let cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).unwrap();
        vcpu.set_cpuid2(&cpuid).unwrap();
        (vm, vcpu)
    }

    /// A 64-bit BSP with every copied field distinct: after loading it, the state KVM holds
    /// (and would copy into the VMSA) is what the expected measurement assumes.
    #[test]
    fn long_mode_bsp_state_reaches_kvm_field_by_field() {
        let code = Segment::new(0x10, 0xa9b, 0xffff_ffff, 0);
        let data = Segment::new(0x18, 0xc93, 0xffff_ffff, 0);
        let vmsa = Vmsa {
            cs: code,
            ds: data,
            es: data,
            ss: data,
            fs: Segment::new(0x18, 0xc93, 0xffff_ffff, 0x7000),
            gs: Segment::new(0x18, 0xc93, 0xffff_ffff, 0x8000),
            gdtr: Segment::new(0, 0, 0x2f, 0x1000),
            idtr: Segment::new(0, 0, 0, 0),
            ldtr: Segment::new(0, 0x82, 0xffff, 0),
            tr: Segment::new(0, 0x8b, 0xffff, 0),
            efer: 0x500,
            cr0: 0x8000_0031,
            cr3: 0x9000,
            cr4: 0x20,
            dr6: 0xffff_0ff0,
            dr7: DR7_FIXED_1,
            rflags: 0x2,
            rip: 0x100_0000,
            rsp: 0x8ff0,
            rax: 1,
            rbx: 2,
            rcx: 3,
            rdx: 4,
            rbp: 5,
            rsi: 0x7000,
            rdi: 7,
            r8_15: [8, 9, 10, 11, 12, 13, 14, 15],
            g_pat: DEFAULT_G_PAT,
            xcr0: 1,
            // Not the reset values, so the test sees them arrive.
            mxcsr: 0x1fa0,
            x87_fcw: 0x27f,
            sev_features: 1,
            ..Vmsa::default()
        };
        check_launchable(0, &vmsa).unwrap();
        let (_vm, vcpu) = fresh_vcpu();
        load_vmsa(&vcpu, 0, &vmsa).unwrap();
        assert_eq!(read_back(&vcpu, 1).as_kvm_builds(), vmsa.as_kvm_builds());
    }

    /// An AP as the launch measures it (x86 reset state, RDX = CPUID signature): loading it
    /// over KVM's own reset state (whose segment attributes differ) gives exactly that VMSA.
    #[test]
    fn ap_reset_state_reaches_kvm_field_by_field() {
        let ap = Vmsa::qemu_reset(RESET_EIP, 1, 0x00a0_0f11);
        let (_vm, vcpu) = fresh_vcpu();
        load_vmsa(&vcpu, 1, &ap).unwrap();
        assert_eq!(read_back(&vcpu, 1).as_kvm_builds(), ap);
    }

    #[test]
    fn state_kvm_cannot_encrypt_is_refused_by_name() {
        let mut v = Vmsa::qemu_reset(RESET_EIP, 1, 0);
        assert!(check_launchable(0, &v).is_ok());
        v.dr7 = 0x401;
        let msg = check_launchable(2, &v).unwrap_err().to_string();
        assert!(
            msg.contains("vCPU 2") && msg.contains("DR7 = 0x401"),
            "{msg}"
        );
        v.dr7 = DR7_FIXED_1;
        v.pkru = 0x5555_5554;
        let msg = check_launchable(0, &v).unwrap_err().to_string();
        assert!(msg.contains("PKRU"), "{msg}");
    }
}
