//! The VMSA (SEV-ES save area, AMD APM vol. 2 table B-4) as KVM builds it for an SNP guest.
//!
//! With KVM the VMM never writes a VMSA. At LAUNCH_FINISH (LAUNCH_UPDATE_VMSA for SEV-ES) KVM's
//! `sev_es_sync_vmsa()` fills each vCPU's VMSA page, which the firmware then measures as a VMSA
//! page at [`crate::VMSA_GPA`]:
//! - it copies the leading part of the vCPU's ordinary VMCB save area: segment registers
//!   (from KVM_SET_SREGS), EFER with SVME forced on, CR0 (KVM clears CD/NW under its default
//!   quirks), CR3, CR4 (with the host's MCE bit ORed in), DR7, RFLAGS, G_PAT (KVM's default
//!   PAT unless the VMM writes the PAT MSR);
//! - it copies the GPRs and RIP from KVM_SET_REGS, and XCR0, XSS, PKRU and DR6 from the vCPU;
//! - it sets SEV_FEATURES to the VMSA features chosen at KVM_SEV_INIT2;
//! - it copies the x87/SSE/AVX state (FCW, MXCSR, registers) from the guest FPU state.
//!
//! Everything else stays zero. [`Vmsa::to_page`] serializes exactly these fields at the
//! offsets of the architectural layout; the offsets are tested against `sev-snp-measure`'s
//! VMSA pages in the conformance tests.

use crate::page_info::PAGE_SIZE;

/// One segment register as stored in the VMCB/VMSA: selector, attributes, limit, base.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    pub selector: u16,
    pub attrib: u16,
    pub limit: u32,
    pub base: u64,
}

impl Segment {
    pub const fn new(selector: u16, attrib: u16, limit: u32, base: u64) -> Self {
        Self {
            selector,
            attrib,
            limit,
            base,
        }
    }

    fn write(&self, page: &mut [u8], offset: usize) {
        page[offset..offset + 2].copy_from_slice(&self.selector.to_le_bytes());
        page[offset + 2..offset + 4].copy_from_slice(&self.attrib.to_le_bytes());
        page[offset + 4..offset + 8].copy_from_slice(&self.limit.to_le_bytes());
        page[offset + 8..offset + 16].copy_from_slice(&self.base.to_le_bytes());
    }
}

/// Field offsets in the save area (APM vol. 2 table B-4; Linux `struct sev_es_save_area`).
mod offset {
    pub const ES: usize = 0x000;
    pub const CS: usize = 0x010;
    pub const SS: usize = 0x020;
    pub const DS: usize = 0x030;
    pub const FS: usize = 0x040;
    pub const GS: usize = 0x050;
    pub const GDTR: usize = 0x060;
    pub const LDTR: usize = 0x070;
    pub const IDTR: usize = 0x080;
    pub const TR: usize = 0x090;
    pub const CPL: usize = 0x0cb;
    pub const EFER: usize = 0x0d0;
    pub const XSS: usize = 0x140;
    pub const CR4: usize = 0x148;
    pub const CR3: usize = 0x150;
    pub const CR0: usize = 0x158;
    pub const DR7: usize = 0x160;
    pub const DR6: usize = 0x168;
    pub const RFLAGS: usize = 0x170;
    pub const RIP: usize = 0x178;
    pub const RSP: usize = 0x1d8;
    pub const RAX: usize = 0x1f8;
    pub const G_PAT: usize = 0x268;
    pub const PKRU: usize = 0x2e8;
    pub const RCX: usize = 0x308;
    pub const RDX: usize = 0x310;
    pub const RBX: usize = 0x318;
    pub const RBP: usize = 0x328;
    pub const RSI: usize = 0x330;
    pub const RDI: usize = 0x338;
    pub const R8: usize = 0x340;
    pub const SEV_FEATURES: usize = 0x3b0;
    pub const XCR0: usize = 0x3e8;
    pub const MXCSR: usize = 0x408;
    pub const X87_FCW: usize = 0x410;
}

/// KVM's power-on PAT value (APM vol. 2 section A.3).
pub const DEFAULT_G_PAT: u64 = 0x0007_0406_0007_0406;
/// The reset vector every x86 BSP starts at.
pub const RESET_EIP: u32 = 0xffff_fff0;

/// The register state KVM copies into a VMSA. Fields not listed are zero in every VMSA
/// KVM builds for a freshly created vCPU.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Vmsa {
    pub es: Segment,
    pub cs: Segment,
    pub ss: Segment,
    pub ds: Segment,
    pub fs: Segment,
    pub gs: Segment,
    pub gdtr: Segment,
    pub ldtr: Segment,
    pub idtr: Segment,
    pub tr: Segment,
    pub cpl: u8,
    pub efer: u64,
    pub xss: u64,
    pub cr4: u64,
    pub cr3: u64,
    pub cr0: u64,
    pub dr7: u64,
    pub dr6: u64,
    pub rflags: u64,
    pub rip: u64,
    pub rsp: u64,
    pub rax: u64,
    pub g_pat: u64,
    pub pkru: u32,
    pub rcx: u64,
    pub rdx: u64,
    pub rbx: u64,
    pub rbp: u64,
    pub rsi: u64,
    pub rdi: u64,
    /// r8..r15
    pub r8_15: [u64; 8],
    pub sev_features: u64,
    pub xcr0: u64,
    pub mxcsr: u32,
    pub x87_fcw: u16,
}

impl Vmsa {
    /// The VMSA KVM builds for a vCPU that QEMU left in its x86 reset state, about to execute
    /// at `eip` (the BSP at the reset vector, APs at the SEV-ES reset block's address):
    /// real-mode segments with CS based at `eip & 0xffff0000`, RDX = the CPUID signature,
    /// FPU reset values (FCW 0x37f, MXCSR 0x1f80), XCR0 = 1, EFER.SVME and CR4.MCE forced
    /// by KVM, CR0 = ET with CD/NW cleared by KVM.
    pub fn qemu_reset(eip: u32, sev_features: u64, vcpu_signature: u32) -> Self {
        let data = |attrib| Segment::new(0, attrib, 0xffff, 0);
        Self {
            es: data(0x93),
            cs: Segment::new(0xf000, 0x9b, 0xffff, u64::from(eip & 0xffff_0000)),
            ss: data(0x93),
            ds: data(0x93),
            fs: data(0x93),
            gs: data(0x93),
            gdtr: data(0),
            ldtr: data(0x82),
            idtr: data(0),
            tr: data(0x8b),
            efer: 0x1000,
            cr4: 0x40,
            cr0: 0x10,
            dr7: 0x400,
            dr6: 0xffff_0ff0,
            rflags: 0x2,
            rip: u64::from(eip & 0xffff),
            g_pat: DEFAULT_G_PAT,
            rdx: u64::from(vcpu_signature),
            sev_features,
            xcr0: 0x1,
            mxcsr: 0x1f80,
            x87_fcw: 0x37f,
            ..Self::default()
        }
    }

    /// The VMSA KVM builds from a vCPU loaded with these registers: KVM forces EFER.SVME,
    /// ORs the host's CR4.MCE into the guest CR4 (`svm_set_cr4`; set on every SNP host),
    /// (with its default quirks) clears CR0.CD/NW, takes CPL from SS.DPL (`svm_set_segment`),
    /// and keeps only base and a 16-bit limit of GDTR/IDTR (KVM_SET_SREGS carries no more).
    /// [`Vmsa::qemu_reset`] already has these applied.
    pub fn as_kvm_builds(&self) -> Self {
        const EFER_SVME: u64 = 1 << 12;
        const CR4_MCE: u64 = 1 << 6;
        const CR0_CD_NW: u64 = (1 << 30) | (1 << 29);
        let table = |t: &Segment| Segment::new(0, 0, t.limit & 0xffff, t.base);
        Self {
            efer: self.efer | EFER_SVME,
            cr4: self.cr4 | CR4_MCE,
            cr0: self.cr0 & !CR0_CD_NW,
            cpl: ((self.ss.attrib >> 5) & 3) as u8,
            gdtr: table(&self.gdtr),
            idtr: table(&self.idtr),
            ..self.clone()
        }
    }

    /// Serializes to the 4 KiB page the firmware measures.
    pub fn to_page(&self) -> Vec<u8> {
        use offset::*;
        let mut page = vec![0u8; PAGE_SIZE as usize];
        let segments = [
            (ES, &self.es),
            (CS, &self.cs),
            (SS, &self.ss),
            (DS, &self.ds),
            (FS, &self.fs),
            (GS, &self.gs),
            (GDTR, &self.gdtr),
            (LDTR, &self.ldtr),
            (IDTR, &self.idtr),
            (TR, &self.tr),
        ];
        for (at, seg) in segments {
            seg.write(&mut page, at);
        }
        page[CPL] = self.cpl;
        let mut put64 = |at: usize, v: u64| page[at..at + 8].copy_from_slice(&v.to_le_bytes());
        put64(EFER, self.efer);
        put64(XSS, self.xss);
        put64(CR4, self.cr4);
        put64(CR3, self.cr3);
        put64(CR0, self.cr0);
        put64(DR7, self.dr7);
        put64(DR6, self.dr6);
        put64(RFLAGS, self.rflags);
        put64(RIP, self.rip);
        put64(RSP, self.rsp);
        put64(RAX, self.rax);
        put64(G_PAT, self.g_pat);
        put64(RCX, self.rcx);
        put64(RDX, self.rdx);
        put64(RBX, self.rbx);
        put64(RBP, self.rbp);
        put64(RSI, self.rsi);
        put64(RDI, self.rdi);
        for (i, r) in self.r8_15.iter().enumerate() {
            put64(R8 + 8 * i, *r);
        }
        put64(SEV_FEATURES, self.sev_features);
        put64(XCR0, self.xcr0);
        page[PKRU..PKRU + 4].copy_from_slice(&self.pkru.to_le_bytes());
        page[MXCSR..MXCSR + 4].copy_from_slice(&self.mxcsr.to_le_bytes());
        page[X87_FCW..X87_FCW + 2].copy_from_slice(&self.x87_fcw.to_le_bytes());
        page
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u64_at(page: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(page[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn reset_state_fields_land_at_architectural_offsets() {
        let v = Vmsa::qemu_reset(0x0080_b004, 0x1, 0x0080_0f12);
        let page = v.to_page();
        assert_eq!(page.len(), 4096);
        // CS: selector 0xf000, attrib 0x9b, limit 0xffff, base 0x800000.
        assert_eq!(&page[0x10..0x14], &[0x00, 0xf0, 0x9b, 0x00]);
        assert_eq!(u64_at(&page, 0x18), 0x0080_0000);
        assert_eq!(u64_at(&page, 0x178), 0xb004);
        assert_eq!(u64_at(&page, 0x310), 0x0080_0f12);
        assert_eq!(u64_at(&page, 0x3b0), 1);
        assert_eq!(u64_at(&page, 0xd0), 0x1000);
        assert_eq!(&page[0x408..0x40c], &0x1f80u32.to_le_bytes());
        assert_eq!(&page[0x410..0x412], &0x37fu16.to_le_bytes());
        // Nothing is written past the FPU control words.
        assert!(page[0x412..].iter().all(|&b| b == 0));
    }

    #[test]
    fn kvm_forced_bits() {
        let reset = Vmsa::qemu_reset(RESET_EIP, 1, 0x00a0_0f11);
        assert_eq!(reset.as_kvm_builds(), reset);
        let long_mode = Vmsa {
            efer: 0x500,
            cr4: 0x20,
            cr0: 0x6000_0011 | 0x8000_0000,
            ..Vmsa::default()
        }
        .as_kvm_builds();
        assert_eq!(long_mode.efer, 0x1500);
        assert_eq!(long_mode.cr4, 0x60);
        assert_eq!(long_mode.cr0, 0x8000_0011);

        // CPL follows SS.DPL; descriptor tables keep base and a 16-bit limit only.
        let odd = Vmsa {
            cpl: 0,
            ss: Segment::new(0x2b, 0xc0f3, 0xffff_ffff, 0),
            gdtr: Segment::new(0x10, 0x82, 0x1_0fff, 0x1000),
            ..Vmsa::default()
        }
        .as_kvm_builds();
        assert_eq!(odd.cpl, 3);
        assert_eq!(odd.gdtr, Segment::new(0, 0, 0x0fff, 0x1000));
        assert_eq!(odd.idtr, Segment::default());
    }

    #[test]
    fn general_registers_are_distinct_slots() {
        let v = Vmsa {
            rax: 1,
            rbx: 2,
            rcx: 3,
            rdx: 4,
            rsp: 5,
            rbp: 6,
            rsi: 7,
            rdi: 8,
            r8_15: [9, 10, 11, 12, 13, 14, 15, 16],
            ..Vmsa::default()
        };
        let page = v.to_page();
        let at = [
            0x1f8, 0x318, 0x308, 0x310, 0x1d8, 0x328, 0x330, 0x338, 0x340, 0x348, 0x350, 0x358,
            0x360, 0x368, 0x370, 0x378,
        ];
        for (i, off) in at.iter().enumerate() {
            assert_eq!(
                u64_at(&page, *off),
                i as u64 + 1,
                "register {i} at {off:#x}"
            );
        }
    }
}
