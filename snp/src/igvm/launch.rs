//! Drives a launch plan through any [`LaunchFirmware`]: the same sequence for KVM and the
//! insecure model, so the model's digest is the one real hardware would compute.

use super::plan::{LaunchPlan, PlanPage};
use crate::firmware::{FirmwareError, LaunchFinish, LaunchFirmware};
use crate::page_info::{PageType, PAGE_SIZE};
use crate::policy::GuestPolicy;
use crate::vmsa::Vmsa;

/// Runs LAUNCH_START with `policy`, LAUNCH_UPDATE for every plan page in order (contiguous
/// pages of one type in a single call), and LAUNCH_FINISH with the vCPUs' state.
///
/// `contents` supplies each non-NORMAL page's bytes as the VMM prepared them in guest memory
/// (parameter areas, the CPUID page); NORMAL pages carry their data in the plan. The buffer
/// passed to the firmware is written back through `store` after each call, so a CPUID page
/// corrected by the firmware reaches guest memory.
pub fn run_launch(
    fw: &mut dyn LaunchFirmware,
    plan: &LaunchPlan,
    policy: GuestPolicy,
    contents: &mut dyn FnMut(&PlanPage) -> Vec<u8>,
    store: &mut dyn FnMut(u64, &[u8]),
    vcpus: &[Vmsa],
    finish: &LaunchFinish,
) -> Result<(), FirmwareError> {
    tracing::info!(
        "SNP launch through {}: {} pages, {} measured bytes",
        fw.name(),
        plan.pages.len(),
        plan.measured_bytes()
    );
    fw.launch_start(policy)?;
    let mut batch: Option<(u64, PageType, Vec<u8>)> = None;
    for page in &plan.pages {
        let mut bytes = if page.page_type == PageType::Normal {
            page.data.clone()
        } else {
            contents(page)
        };
        bytes.resize(PAGE_SIZE as usize, 0);
        match &mut batch {
            Some((gpa, kind, data))
                if *kind == page.page_type && *gpa + data.len() as u64 == page.gpa =>
            {
                data.extend_from_slice(&bytes)
            }
            _ => {
                if let Some((gpa, kind, mut data)) = batch.take() {
                    fw.launch_update(gpa, kind, &mut data)?;
                    store(gpa, &data);
                }
                batch = Some((page.gpa, page.page_type, bytes));
            }
        }
    }
    if let Some((gpa, kind, mut data)) = batch.take() {
        fw.launch_update(gpa, kind, &mut data)?;
        store(gpa, &data);
    }
    fw.launch_finish(vcpus, finish)
}
