//! CPU templates: named CPUID masks applied on top of the CPUID the VMM builds from the host.
//!
//! A template only ever removes features, so a guest never sees something the host's KVM
//! cannot run; it exists to hide features a guest would otherwise use but that a particular
//! host runs badly (or not at all).

use kvm_bindings::CpuId;

use super::cpuid::{clear_bits, hide_leaf, Reg};

/// Bits to clear in one register of one CPUID leaf (`index` = subleaf, `None` for all).
#[derive(Debug, Clone, Copy)]
pub struct CpuidMask {
    pub leaf: u32,
    pub index: Option<u32>,
    pub reg: Reg,
    pub clear: u32,
}

/// A named set of CPUID masks.
#[derive(Debug)]
pub struct CpuTemplate {
    pub name: &'static str,
    pub description: &'static str,
    pub masks: &'static [CpuidMask],
    /// Leaves removed entirely (the guest reads zeros).
    pub hidden_leaves: &'static [u32],
}

const fn mask(leaf: u32, index: Option<u32>, reg: Reg, clear: u32) -> CpuidMask {
    CpuidMask {
        leaf,
        index,
        reg,
        clear,
    }
}

impl CpuTemplate {
    /// Everything the host's KVM supports (after the VMM's own filtering).
    pub const HOST: CpuTemplate = CpuTemplate {
        name: "host",
        description: "the host's KVM-supported features (default)",
        masks: &[],
        hidden_leaves: &[],
    };

    /// Hides what a software (instruction-emulating) KVM backend cannot execute: the XSAVE
    /// family and everything that needs it, CMPXCHG16B, POPCNT, SMEP and SMAP.
    pub const SOFT_KVM: CpuTemplate = CpuTemplate {
        name: "soft-kvm",
        description: "hides XSAVE/AVX, CX16, POPCNT, SMEP, SMAP for software KVM backends",
        masks: &[
            // Leaf 1 ECX: FMA(12) CX16(13) POPCNT(23) XSAVE(26) OSXSAVE(27) AVX(28) F16C(29).
            mask(
                1,
                None,
                Reg::Ecx,
                (1 << 12) | (1 << 13) | (1 << 23) | (1 << 26) | (1 << 27) | (1 << 28) | (1 << 29),
            ),
            // Leaf 7.0 EBX: AVX2(5) SMEP(7) AVX512F(16) AVX512DQ(17) SMAP(20) AVX512IFMA(21)
            // AVX512PF(26) AVX512ER(27) AVX512CD(28) AVX512BW(30) AVX512VL(31).
            mask(
                7,
                Some(0),
                Reg::Ebx,
                (1 << 5)
                    | (1 << 7)
                    | (1 << 16)
                    | (1 << 17)
                    | (1 << 20)
                    | (1 << 21)
                    | (0xb << 26)
                    | (0x3 << 30),
            ),
            // Leaf 7.0 ECX: AVX512VBMI(1) PKU(3) OSPKE(4) AVX512VBMI2(6) VAES(9) VPCLMULQDQ(10)
            // AVX512VNNI(11) AVX512BITALG(12) AVX512VPOPCNTDQ(14).
            mask(
                7,
                Some(0),
                Reg::Ecx,
                (1 << 1) | (1 << 3) | (1 << 4) | (1 << 6) | (0xf << 9) | (1 << 14),
            ),
            // Leaf 7.0 EDX: AVX512 4VNNIW/4FMAPS(2,3), AVX512_VP2INTERSECT(8), AMX(22,24,25),
            // AVX512_FP16(23).
            mask(7, Some(0), Reg::Edx, (0x3 << 2) | (1 << 8) | (0xf << 22)),
            // Leaf 7.1 EAX: AVX-VNNI(4) AVX512_BF16(5).
            mask(7, Some(1), Reg::Eax, (1 << 4) | (1 << 5)),
        ],
        // XSAVE state enumeration.
        hidden_leaves: &[0xd],
    };

    /// Every template, for `--help` and lookups.
    pub const ALL: [&'static CpuTemplate; 2] = [&CpuTemplate::HOST, &CpuTemplate::SOFT_KVM];

    /// The template called `name`.
    pub fn by_name(name: &str) -> Option<&'static CpuTemplate> {
        Self::ALL.into_iter().find(|t| t.name == name)
    }

    /// Applies the template's masks.
    pub fn apply(&self, cpuid: &mut CpuId) {
        for m in self.masks {
            clear_bits(cpuid, m.leaf, m.index, m.reg, m.clear);
        }
        for &leaf in self.hidden_leaves {
            hide_leaf(cpuid, leaf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn soft_kvm_hides_the_unemulated_features() {
        let all = kvm_cpuid_entry2 {
            eax: !0,
            ebx: !0,
            ecx: !0,
            edx: !0,
            ..Default::default()
        };
        let mut cpuid = CpuId::from_entries(&[
            kvm_cpuid_entry2 { function: 1, ..all },
            kvm_cpuid_entry2 {
                function: 7,
                index: 0,
                ..all
            },
            kvm_cpuid_entry2 {
                function: 0xd,
                index: 0,
                ..all
            },
            kvm_cpuid_entry2 {
                function: 0xd,
                index: 1,
                ..all
            },
        ])
        .unwrap();
        CpuTemplate::by_name("soft-kvm").unwrap().apply(&mut cpuid);
        let leaf = |f: u32| *cpuid.as_slice().iter().find(|e| e.function == f).unwrap();
        for bit in [13, 23, 26, 27, 28] {
            assert_eq!(leaf(1).ecx & (1 << bit), 0, "leaf 1 ECX bit {bit}");
        }
        assert_ne!(leaf(1).ecx & (1 << 0), 0, "SSE3 stays");
        for bit in [7, 20, 5] {
            assert_eq!(leaf(7).ebx & (1 << bit), 0, "leaf 7 EBX bit {bit}");
        }
        assert!(cpuid.as_slice().iter().all(|e| e.function != 0xd));
    }

    #[test]
    fn lookup_by_name() {
        assert_eq!(CpuTemplate::by_name("host").unwrap().name, "host");
        assert!(CpuTemplate::by_name("t2s").is_none());
    }
}
