//! Drives a launch plan through any [`LaunchFirmware`]: the same sequence for KVM and the
//! insecure model, so the model's digest is the one real hardware would compute.

use super::plan::{LaunchPlan, PlanPage};
use crate::firmware::{FirmwareError, LaunchFinish, LaunchFirmware};
use crate::page_info::{PageType, PAGE_SIZE};
use crate::policy::GuestPolicy;
use crate::vmsa::Vmsa;

/// Largest range handed to one LAUNCH_UPDATE call: a plan's ZERO pages can cover all of RAM,
/// and the source buffer of a call is built in host memory.
const MAX_UPDATE_BYTES: usize = 16 << 20;

/// Runs LAUNCH_START with `policy`, LAUNCH_UPDATE for every plan page in order (contiguous
/// pages of one type in one call, up to [`MAX_UPDATE_BYTES`]), and LAUNCH_FINISH with the
/// vCPUs' state.
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
                if *kind == page.page_type
                    && *gpa + data.len() as u64 == page.gpa
                    && data.len() < MAX_UPDATE_BYTES =>
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmsa::Vmsa;

    /// Records each LAUNCH_UPDATE call as (GPA, type, length).
    #[derive(Default)]
    struct Recorder {
        updates: Vec<(u64, PageType, usize)>,
        finished: bool,
    }

    impl LaunchFirmware for Recorder {
        fn name(&self) -> &'static str {
            "recorder"
        }
        fn launch_start(&mut self, _: GuestPolicy) -> Result<(), FirmwareError> {
            Ok(())
        }
        fn launch_update(
            &mut self,
            gpa: u64,
            page_type: PageType,
            data: &mut [u8],
        ) -> Result<(), FirmwareError> {
            self.updates.push((gpa, page_type, data.len()));
            Ok(())
        }
        fn launch_finish(&mut self, _: &[Vmsa], _: &LaunchFinish) -> Result<(), FirmwareError> {
            self.finished = true;
            Ok(())
        }
    }

    fn zero_page(gpa: u64) -> PlanPage {
        PlanPage {
            gpa,
            page_type: PageType::Zero,
            data: Vec::new(),
        }
    }

    /// 40 MiB of ZERO pages, a gap, then one CPUID page: contiguous pages of one type are
    /// batched, but no call exceeds the cap, and every page goes through once, in order.
    #[test]
    fn long_ranges_are_split_and_covered_in_order() {
        let zero_pages = (40 << 20) / PAGE_SIZE;
        let mut pages: Vec<PlanPage> = (0..zero_pages).map(|i| zero_page(i * PAGE_SIZE)).collect();
        pages.push(PlanPage {
            gpa: 0x400_0000,
            page_type: PageType::Cpuid,
            data: Vec::new(),
        });
        let plan = LaunchPlan {
            policy: 0x30000,
            pages,
            shared_pages: Vec::new(),
            parameter_areas: Vec::new(),
            bsp: Vmsa::default(),
            sev_features: 1,
            required_memory: Vec::new(),
            id: None,
        };
        let mut fw = Recorder::default();
        let finish = LaunchFinish {
            id: None,
            author_key_enabled: false,
            host_data: [0; 32],
        };
        run_launch(
            &mut fw,
            &plan,
            GuestPolicy::new(0x30000, false).unwrap(),
            &mut |_| vec![0; PAGE_SIZE as usize],
            &mut |_, _| {},
            &[],
            &finish,
        )
        .unwrap();
        let mib = 1 << 20;
        assert_eq!(
            fw.updates,
            vec![
                (0, PageType::Zero, 16 * mib),
                (16 << 20, PageType::Zero, 16 * mib),
                (32 << 20, PageType::Zero, 8 * mib),
                (0x400_0000, PageType::Cpuid, PAGE_SIZE as usize),
            ]
        );
        assert!(fw.finished);
    }
}
