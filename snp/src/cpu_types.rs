//! vCPU models by name, as QEMU's `-cpu` knows them, and the CPUID signature (leaf 1 EAX)
//! each reports: KVM passes that signature to the guest in RDX at reset, so it is measured
//! in every VMSA.

use sev::measurement::vcpu_types::CpuType;

/// Errors from naming a vCPU model.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CpuTypeError {
    #[error("unknown vCPU type {name:?}; known: {known}")]
    Unknown { name: String, known: String },
}

/// The QEMU model names [`signature_of`] accepts, for the error message; the `sev` crate's
/// `CpuType`, which maps them to family/model/stepping, cannot list its names itself.
const KNOWN: &[&str] = &[
    "EPYC",
    "EPYC-v1",
    "EPYC-v2",
    "EPYC-IBPB",
    "EPYC-v3",
    "EPYC-v4",
    "EPYC-Rome",
    "EPYC-Rome-v1",
    "EPYC-Rome-v2",
    "EPYC-Rome-v3",
    "EPYC-Milan",
    "EPYC-Milan-v1",
    "EPYC-Milan-v2",
    "EPYC-Genoa",
    "EPYC-Genoa-v1",
    "EPYC-Turin",
    "EPYC-Turin-v1",
    "EPYC-Turin-v2",
];

/// The CPUID signature of a QEMU vCPU model name (the `sev` crate's table; it also accepts
/// the names in lower case).
pub fn signature_of(name: &str) -> Result<u32, CpuTypeError> {
    CpuType::try_from(name)
        // The signature is a 32-bit register value the crate hands out as i32.
        .map(|cpu| cpu.sig() as u32)
        .map_err(|_| CpuTypeError::Unknown {
            name: name.to_string(),
            known: KNOWN.join(", "),
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
    }

    #[test]
    fn every_listed_name_is_known_by_its_qemu_spelling() {
        for name in KNOWN {
            let cpu = CpuType::try_from(*name).unwrap();
            assert_eq!(cpu.to_string(), *name);
            assert_eq!(signature_of(name).unwrap(), cpu.sig() as u32);
        }
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
