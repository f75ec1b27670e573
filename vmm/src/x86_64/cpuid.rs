//! The CPUID a vCPU sees: KVM's supported set, shaped into one socket of N single-threaded
//! cores, with the features the VMM does not provide removed, then a CPU template on top.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

use super::cpu_template::CpuTemplate;

/// Which register of a CPUID leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reg {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

fn reg_mut(entry: &mut kvm_cpuid_entry2, reg: Reg) -> &mut u32 {
    match reg {
        Reg::Eax => &mut entry.eax,
        Reg::Ebx => &mut entry.ebx,
        Reg::Ecx => &mut entry.ecx,
        Reg::Edx => &mut entry.edx,
    }
}

/// Applies `f` to every entry of `leaf` (all subleaves).
fn for_leaf(cpuid: &mut CpuId, leaf: u32, mut f: impl FnMut(&mut kvm_cpuid_entry2)) {
    cpuid
        .as_mut_slice()
        .iter_mut()
        .filter(|e| e.function == leaf)
        .for_each(&mut f);
}

/// Clears `bits` of `reg` in every entry of `leaf` (subleaf `index`, or all when `None`).
pub fn clear_bits(cpuid: &mut CpuId, leaf: u32, index: Option<u32>, reg: Reg, bits: u32) {
    for_leaf(cpuid, leaf, |e| {
        if index.is_none_or(|i| i == e.index) {
            *reg_mut(e, reg) &= !bits;
        }
    });
}

fn remove_leaf(cpuid: &mut CpuId, leaf: u32) {
    let kept: Vec<kvm_cpuid_entry2> = cpuid
        .as_slice()
        .iter()
        .filter(|e| e.function != leaf)
        .copied()
        .collect();
    *cpuid = CpuId::from_entries(&kept).expect("fewer entries than before");
}

/// Replaces all subleaves of `leaf` with `entries`.
fn replace_leaf(cpuid: &mut CpuId, leaf: u32, entries: &[kvm_cpuid_entry2]) {
    let mut kept: Vec<kvm_cpuid_entry2> = cpuid
        .as_slice()
        .iter()
        .filter(|e| e.function != leaf)
        .copied()
        .collect();
    kept.extend_from_slice(entries);
    // KVM_MAX_CPUID_ENTRIES (80) bounds the FAM; topology adds at most three entries to a
    // leaf KVM already reported, well within it.
    *cpuid = CpuId::from_entries(&kept).expect("CPUID entries within KVM's limit");
}

fn has_leaf(cpuid: &CpuId, leaf: u32) -> bool {
    cpuid.as_slice().iter().any(|e| e.function == leaf)
}

/// The CPU vendor as CPUID leaf 0 spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    Intel,
    Amd,
    Other,
}

pub fn vendor(cpuid: &CpuId) -> Vendor {
    let Some(leaf0) = cpuid.as_slice().iter().find(|e| e.function == 0) else {
        return Vendor::Other;
    };
    let mut name = [0u8; 12];
    name[..4].copy_from_slice(&leaf0.ebx.to_le_bytes());
    name[4..8].copy_from_slice(&leaf0.edx.to_le_bytes());
    name[8..].copy_from_slice(&leaf0.ecx.to_le_bytes());
    match &name {
        b"GenuineIntel" => Vendor::Intel,
        b"AuthenticAMD" => Vendor::Amd,
        _ => Vendor::Other,
    }
}

// Leaf 1 ECX.
const ECX_DTES64: u32 = 1 << 2;
const ECX_MONITOR: u32 = 1 << 3;
const ECX_DS_CPL: u32 = 1 << 4;
const ECX_VMX: u32 = 1 << 5;
const ECX_SMX: u32 = 1 << 6;
const ECX_EST: u32 = 1 << 7;
const ECX_TM2: u32 = 1 << 8;
const ECX_PDCM: u32 = 1 << 15;
const ECX_HYPERVISOR: u32 = 1 << 31;
// Leaf 1 EDX.
const EDX_DS: u32 = 1 << 21;
const EDX_ACPI: u32 = 1 << 22;
const EDX_HTT: u32 = 1 << 28;
const EDX_TM: u32 = 1 << 29;
const EDX_PBE: u32 = 1 << 31;
// Leaf 0x8000_0001 ECX.
const ECX_CMP_LEGACY: u32 = 1 << 1;

/// Number of bits needed to hold an id in `0..count`.
fn id_bits(count: u32) -> u32 {
    if count <= 1 {
        0
    } else {
        32 - (count - 1).leading_zeros()
    }
}

/// Builds the CPUID of vCPU `cpu` (also its APIC id) in a VM of `count` vCPUs.
pub fn vcpu_cpuid(supported: &CpuId, cpu: u32, count: u32, template: &CpuTemplate) -> CpuId {
    let mut cpuid = supported.clone();
    let vendor = vendor(&cpuid);

    for_leaf(&mut cpuid, 1, |e| {
        // EBX: [31:24] initial APIC id, [23:16] logical processors in the package.
        e.ebx = (e.ebx & 0xffff) | (cpu << 24) | ((count.min(255)) << 16);
        e.ecx &= !(ECX_DTES64
            | ECX_MONITOR
            | ECX_DS_CPL
            | ECX_VMX
            | ECX_SMX
            | ECX_EST
            | ECX_TM2
            | ECX_PDCM);
        e.ecx |= ECX_HYPERVISOR;
        e.edx &= !(EDX_DS | EDX_ACPI | EDX_TM | EDX_PBE | EDX_HTT);
        if count > 1 {
            e.edx |= EDX_HTT;
        }
    });

    // Thermal/power management and architectural PMU: the VMM offers neither.
    for leaf in [0x6, 0xa] {
        for_leaf(&mut cpuid, leaf, |e| {
            let arat = if leaf == 0x6 { e.eax & (1 << 2) } else { 0 };
            *e = kvm_cpuid_entry2 {
                function: e.function,
                index: e.index,
                flags: e.flags,
                eax: arat,
                ..Default::default()
            };
        });
    }

    if vendor == Vendor::Intel {
        // Deterministic cache parameters: [31:26] cores per package - 1,
        // [25:14] logical processors sharing the cache - 1 (only the L3 is shared).
        for_leaf(&mut cpuid, 0x4, |e| {
            let level = (e.eax >> 5) & 0x7;
            let sharing = if level >= 3 { count - 1 } else { 0 };
            e.eax = (e.eax & 0x3fff) | ((sharing & 0xfff) << 14) | (((count - 1) & 0x3f) << 26);
        });
    }

    // Extended topology: an SMT level of one thread, a core level of `count` cores.
    for leaf in [0xb, 0x1f] {
        if has_leaf(&cpuid, leaf) || (leaf == 0xb && vendor == Vendor::Intel) {
            replace_leaf(&mut cpuid, leaf, &topology_leaf(leaf, cpu, count));
        }
    }

    if vendor == Vendor::Amd {
        for_leaf(&mut cpuid, 0x8000_0001, |e| {
            e.ecx &= !ECX_CMP_LEGACY;
            if count > 1 {
                e.ecx |= ECX_CMP_LEGACY;
            }
        });
        // [7:0] cores - 1, [15:12] bits of the APIC id that number the core.
        for_leaf(&mut cpuid, 0x8000_0008, |e| {
            e.ecx = (e.ecx & !0xf0ff) | ((count - 1) & 0xff) | (id_bits(count) << 12);
        });
        for_leaf(&mut cpuid, 0x8000_001e, |e| {
            e.eax = cpu;
            e.ebx = cpu & 0xff; // core id; threads per core - 1 = 0
            e.ecx = 0; // node 0, one node per package
        });
    }

    template.apply(&mut cpuid);
    cpuid
}

fn topology_leaf(leaf: u32, cpu: u32, count: u32) -> [kvm_cpuid_entry2; 3] {
    const LEVEL_SMT: u32 = 1;
    const LEVEL_CORE: u32 = 2;
    let entry = |index: u32, eax: u32, ebx: u32, ecx: u32| kvm_cpuid_entry2 {
        function: leaf,
        index,
        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        eax,
        ebx,
        ecx,
        edx: cpu,
        ..Default::default()
    };
    [
        entry(0, 0, 1, LEVEL_SMT << 8),
        entry(1, id_bits(count), count, (LEVEL_CORE << 8) | 1),
        entry(2, 0, 0, 2),
    ]
}

/// Removes every subleaf of `leaf`.
pub fn hide_leaf(cpuid: &mut CpuId, leaf: u32) {
    remove_leaf(cpuid, leaf);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(
        function: u32,
        index: u32,
        eax: u32,
        ebx: u32,
        ecx: u32,
        edx: u32,
    ) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        }
    }

    /// A host that calls itself GenuineIntel with a few features set.
    fn intel_host() -> CpuId {
        CpuId::from_entries(&[
            entry(
                0,
                0,
                0x1f,
                u32::from_le_bytes(*b"Genu"),
                u32::from_le_bytes(*b"ntel"),
                u32::from_le_bytes(*b"ineI"),
            ),
            entry(
                1,
                0,
                0x906ea,
                0x0800,
                ECX_VMX | ECX_PDCM | (1 << 23),
                EDX_ACPI | (1 << 0),
            ),
            entry(4, 0, 0x121, 0, 0, 0),
            entry(4, 3, 0x163, 0, 0, 0),
            entry(6, 0, 0x77, 0x2, 0x9, 0),
        ])
        .unwrap()
    }

    fn find(cpuid: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap()
    }

    #[test]
    fn leaf1_carries_apic_id_count_and_hypervisor_bit() {
        let cpuid = vcpu_cpuid(&intel_host(), 3, 4, &CpuTemplate::HOST);
        let leaf1 = find(&cpuid, 1, 0);
        assert_eq!(leaf1.ebx >> 24, 3);
        assert_eq!((leaf1.ebx >> 16) & 0xff, 4);
        assert_eq!(leaf1.ebx & 0xffff, 0x0800, "CLFLUSH size kept");
        assert_ne!(leaf1.ecx & ECX_HYPERVISOR, 0);
        assert_eq!(leaf1.ecx & (ECX_VMX | ECX_PDCM), 0);
        assert_ne!(
            leaf1.ecx & (1 << 23),
            0,
            "POPCNT passes through the host template"
        );
        assert_eq!(leaf1.edx & EDX_ACPI, 0);
        assert_ne!(leaf1.edx & EDX_HTT, 0);
    }

    #[test]
    fn extended_topology_describes_n_cores() {
        let cpuid = vcpu_cpuid(&intel_host(), 5, 6, &CpuTemplate::HOST);
        let smt = find(&cpuid, 0xb, 0);
        let core = find(&cpuid, 0xb, 1);
        assert_eq!((smt.ebx, smt.ecx >> 8, smt.edx), (1, 1, 5));
        assert_eq!((core.eax, core.ebx, core.ecx >> 8, core.edx), (3, 6, 2, 5));
        assert_eq!(
            find(&cpuid, 0xb, 2).ecx >> 8,
            0,
            "level 2 terminates the list"
        );
        assert_eq!(find(&cpuid, 4, 0).eax >> 26, 5);
        assert_eq!(
            (find(&cpuid, 4, 3).eax >> 14) & 0xfff,
            5,
            "L3 shared by all cores"
        );
        assert_eq!((find(&cpuid, 4, 0).eax >> 14) & 0xfff, 0, "L1 private");
    }

    #[test]
    fn power_management_leaves_are_emptied_but_arat_kept() {
        let cpuid = vcpu_cpuid(&intel_host(), 0, 1, &CpuTemplate::HOST);
        let leaf6 = find(&cpuid, 6, 0);
        assert_eq!((leaf6.eax, leaf6.ebx, leaf6.ecx), (0x4, 0, 0));
        assert_eq!(find(&cpuid, 1, 0).edx & EDX_HTT, 0, "one vCPU: no HTT");
    }

    #[test]
    fn id_bits_rounds_up() {
        assert_eq!([1, 2, 3, 4, 5, 8, 9].map(id_bits), [0, 1, 2, 2, 3, 3, 4]);
    }
}
