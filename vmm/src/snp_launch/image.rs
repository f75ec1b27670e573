//! Laying a launch plan out in guest memory the way the VMM hands it to LAUNCH_UPDATE: NORMAL
//! data, the CPUID page built from the vCPUs' CPUID, parameter areas filled in, and the
//! host-visible pages; ZERO and SECRETS pages stay zero (the firmware fills the secrets page).

use veil_snp::cpuid_page::CpuidPage;
use veil_snp::igvm::{LaunchPlan, ParameterUse};
use veil_snp::{PageType, PAGE_SIZE};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{GuestFacts, SnpLaunchError};
use crate::x86_64::layout::ram_regions;

/// Refuses a plan that puts anything outside the guest's RAM.
pub fn check_ram(plan: &LaunchPlan, mem_bytes: u64) -> Result<(), SnpLaunchError> {
    let regions = ram_regions(mem_bytes);
    let in_ram = |gpa: u64, size: u64| {
        regions
            .iter()
            .any(|&(start, len)| gpa >= start && gpa.saturating_add(size) <= start + len)
    };
    let pages = plan.pages.iter().map(|p| (p.gpa, PAGE_SIZE));
    let shared = plan
        .shared_pages
        .iter()
        .map(|(gpa, data)| (*gpa, data.len() as u64));
    for (gpa, size) in plan
        .required_memory
        .iter()
        .copied()
        .chain(pages)
        .chain(shared)
    {
        if !in_ram(gpa, size) {
            return Err(SnpLaunchError::OutsideRam {
                gpa,
                size,
                mib: mem_bytes >> 20,
            });
        }
    }
    Ok(())
}

/// Writes every page of the plan into `mem`.
pub fn write_image(
    mem: &GuestMemoryMmap,
    plan: &LaunchPlan,
    facts: &GuestFacts,
) -> Result<(), SnpLaunchError> {
    for page in &plan.pages {
        match page.page_type {
            PageType::Normal => mem.write_slice(&page.data, GuestAddress(page.gpa))?,
            PageType::Cpuid => {
                let entries: Vec<_> = facts.cpuid.as_slice().to_vec();
                let cpuid = CpuidPage::from_kvm(&entries)
                    .map_err(|e| SnpLaunchError::CpuidPage(e.to_string()))?;
                mem.write_slice(&cpuid.to_page(), GuestAddress(page.gpa))?;
            }
            _ => {}
        }
    }
    for (gpa, data) in &plan.shared_pages {
        mem.write_slice(data, GuestAddress(*gpa))?;
    }
    for area in &plan.parameter_areas {
        let Some(gpa) = area.insert_gpa else { continue };
        let mut bytes = area.initial_data.clone();
        bytes.resize(area.size as usize, 0);
        for &(what, offset) in &area.uses {
            let value =
                parameter_bytes(what, facts).ok_or(SnpLaunchError::UnsupportedParameter {
                    index: area.index,
                    what,
                })?;
            let start = offset as usize;
            let dest = bytes.get_mut(start..start + value.len()).ok_or(
                SnpLaunchError::ParameterTooSmall {
                    index: area.index,
                    what,
                },
            )?;
            dest.copy_from_slice(&value);
        }
        mem.write_slice(&bytes, GuestAddress(gpa))?;
    }
    Ok(())
}

/// The bytes of one parameter, in IGVM's formats.
fn parameter_bytes(what: ParameterUse, facts: &GuestFacts) -> Option<Vec<u8>> {
    match what {
        ParameterUse::VpCount => Some(facts.vcpus.to_le_bytes().to_vec()),
        ParameterUse::CommandLine => {
            let mut bytes = facts.cmdline.as_bytes().to_vec();
            bytes.push(0);
            Some(bytes)
        }
        ParameterUse::MemoryMap => {
            // IGVM_VHS_MEMORY_MAP_ENTRY: start page u64, page count u64, type u16 (0 = RAM),
            // flags u16, reserved u32; a zero-length entry ends the list.
            let mut map = Vec::new();
            for (start, len) in ram_regions(facts.mem_bytes).into_iter().chain([(0, 0)]) {
                map.extend((start / PAGE_SIZE).to_le_bytes());
                map.extend((len / PAGE_SIZE).to_le_bytes());
                map.extend([0u8; 8]);
            }
            Some(map)
        }
        _ => None,
    }
}
