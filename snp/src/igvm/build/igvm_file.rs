//! Serializing the launched pages, the RAM ranges and the BSP context as an IGVM file for
//! the SEV-SNP platform.

use std::collections::BTreeMap;

use igvm::{IgvmDirectiveHeader, IgvmFile, IgvmInitializationHeader, IgvmPlatformHeader};
use igvm_defs::{
    IgvmPageDataFlags, IgvmPageDataType, IgvmPlatformType, IGVM_SEV_SNP_PLATFORM_VERSION,
    IGVM_VHS_SUPPORTED_PLATFORM,
};

use super::bsp::{bsp_state, kvm_vmsa};
use super::layout::{E820Entry, E820Kind};
use super::{BuildError, BuildInput, Page};
use crate::page_info::VMSA_GPA;

const COMPATIBILITY_MASK: u32 = 1;
/// RequiredMemory sizes are 32-bit; larger ranges are split.
const REQUIRED_MEMORY_CHUNK: u64 = 1 << 31;

pub fn serialize(
    pages: BTreeMap<u64, Page>,
    map: &[E820Entry],
    input: &BuildInput<'_>,
    entry: u64,
) -> Result<Vec<u8>, BuildError> {
    let platform = IgvmPlatformHeader::SupportedPlatform(IGVM_VHS_SUPPORTED_PLATFORM {
        compatibility_mask: COMPATIBILITY_MASK,
        highest_vtl: 0,
        platform_type: IgvmPlatformType::SEV_SNP,
        platform_version: IGVM_SEV_SNP_PLATFORM_VERSION,
        shared_gpa_boundary: 0,
    });
    let policy = IgvmInitializationHeader::GuestPolicy {
        policy: input.policy,
        compatibility_mask: COMPATIBILITY_MASK,
    };
    let mut directives = Vec::with_capacity(pages.len() + 8);
    for e in map.iter().filter(|e| e.kind == E820Kind::Ram) {
        let mut gpa = e.addr;
        while gpa < e.addr + e.size {
            let len = (e.addr + e.size - gpa).min(REQUIRED_MEMORY_CHUNK);
            directives.push(IgvmDirectiveHeader::RequiredMemory {
                gpa,
                compatibility_mask: COMPATIBILITY_MASK,
                number_of_bytes: len as u32,
                vtl2_protectable: false,
            });
            gpa += len;
        }
    }
    for (gpa, page) in pages {
        let (data_type, data) = match page {
            Page::Normal(data) => (IgvmPageDataType::NORMAL, data),
            // No data: a NORMAL page of zeros, by the IGVM specification's rule.
            Page::Zero => (IgvmPageDataType::NORMAL, Vec::new()),
            Page::Secrets => (IgvmPageDataType::SECRETS, Vec::new()),
            Page::Cpuid => (IgvmPageDataType::CPUID_DATA, Vec::new()),
        };
        directives.push(IgvmDirectiveHeader::PageData {
            gpa,
            compatibility_mask: COMPATIBILITY_MASK,
            flags: IgvmPageDataFlags::new(),
            data_type,
            data,
        });
    }
    // Last, as KVM measures VMSAs after every page; at the GPA the firmware records for
    // every VMSA; holding the page KVM builds (see `bsp`).
    directives.push(IgvmDirectiveHeader::SnpVpContext {
        gpa: VMSA_GPA,
        compatibility_mask: COMPATIBILITY_MASK,
        vp_index: 0,
        vmsa: kvm_vmsa(&bsp_state(entry, input.c_bit)),
    });
    let file = IgvmFile::new(
        igvm::IgvmRevision::V1,
        vec![platform],
        vec![policy],
        directives,
    )
    .map_err(|e| BuildError::Igvm(e.to_string()))?;
    let mut out = Vec::new();
    file.serialize(&mut out)
        .map_err(|e| BuildError::Igvm(e.to_string()))?;
    Ok(out)
}
