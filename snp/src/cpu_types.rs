//! vCPU models by name, as QEMU's `-cpu` knows them, and the CPUID signature (leaf 1 EAX)
//! each reports: KVM passes that signature to the guest in RDX at reset, so it is measured
//! in every VMSA.

/// Errors from naming a vCPU model.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CpuTypeError {
    #[error("unknown vCPU type {name:?}; known: {known}")]
    Unknown { name: String, known: String },
}

/// Computes the CPUID Fn0000_0001 EAX signature from family, model and stepping (AMD CPUID
/// specification #25481: family above 0xf spills into the extended-family field).
pub fn cpu_signature(family: u32, model: u32, stepping: u32) -> u32 {
    let (base_family, ext_family) = if family > 0xf {
        (0xf, (family - 0xf) & 0xff)
    } else {
        (family, 0)
    };
    (ext_family << 20)
        | (((model >> 4) & 0xf) << 16)
        | (base_family << 8)
        | ((model & 0xf) << 4)
        | (stepping & 0xf)
}

/// (QEMU model name, family, model, stepping) of the AMD EPYC models SNP guests use.
const MODELS: &[(&str, u32, u32, u32)] = &[
    ("EPYC", 23, 1, 2),
    ("EPYC-v1", 23, 1, 2),
    ("EPYC-v2", 23, 1, 2),
    ("EPYC-IBPB", 23, 1, 2),
    ("EPYC-v3", 23, 1, 2),
    ("EPYC-v4", 23, 1, 2),
    ("EPYC-Rome", 23, 49, 0),
    ("EPYC-Rome-v1", 23, 49, 0),
    ("EPYC-Rome-v2", 23, 49, 0),
    ("EPYC-Rome-v3", 23, 49, 0),
    ("EPYC-Milan", 25, 1, 1),
    ("EPYC-Milan-v1", 25, 1, 1),
    ("EPYC-Milan-v2", 25, 1, 1),
    ("EPYC-Genoa", 25, 17, 0),
    ("EPYC-Genoa-v1", 25, 17, 0),
    ("EPYC-Turin", 26, 0, 0),
    ("EPYC-Turin-v1", 26, 0, 0),
    ("EPYC-Turin-v2", 26, 0, 0),
];

/// The CPUID signature of a QEMU vCPU model name (case-sensitive, as QEMU spells it).
pub fn signature_of(name: &str) -> Result<u32, CpuTypeError> {
    MODELS
        .iter()
        .find(|(n, ..)| *n == name)
        .map(|&(_, f, m, s)| cpu_signature(f, m, s))
        .ok_or_else(|| CpuTypeError::Unknown {
            name: name.to_string(),
            known: MODELS
                .iter()
                .map(|(n, ..)| *n)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_signatures() {
        // Milan 19h model 01h stepping 1 reads as 0x00a00f11 in /proc/cpuinfo terms.
        assert_eq!(signature_of("EPYC-Milan").unwrap(), 0x00a0_0f11);
        // Naples/Rome family 17h: extended family 8.
        assert_eq!(signature_of("EPYC-v4").unwrap(), 0x0080_0f12);
        assert_eq!(signature_of("EPYC-Genoa").unwrap(), 0x00a1_0f10);
        assert_eq!(signature_of("EPYC-Turin").unwrap(), 0x00b0_0f00);
        assert_eq!(cpu_signature(6, 0x55, 4), 0x0005_0654);
    }

    #[test]
    fn unknown_model_lists_known_ones() {
        let err = signature_of("Skylake").unwrap_err().to_string();
        assert!(
            err.contains("Skylake") && err.contains("EPYC-Milan"),
            "{err}"
        );
    }
}
