//! Drives a launch plan through any [`LaunchFirmware`]: the same sequence for KVM and the
//! insecure model, so the model's digest is the one real hardware would compute.

use super::plan::{LaunchPlan, PlanPage};
use crate::firmware::{FirmwareError, LaunchFinish, LaunchFirmware};
use crate::page_info::{PageType, PAGE_SIZE};
use crate::policy::GuestPolicy;
use crate::vmsa::Vmsa;

/// Largest range handed to one LAUNCH_UPDATE call: a plan's pages of zeros can cover all of RAM,
/// and the source buffer of a call is built in host memory.
const MAX_UPDATE_BYTES: usize = 16 << 20;

/// Runs LAUNCH_START with `policy`, LAUNCH_UPDATE for every plan page in order (contiguous
/// pages of one type in one call, up to [`MAX_UPDATE_BYTES`]), and LAUNCH_FINISH with the
/// vCPUs' state.
///
/// `contents` supplies the bytes of each page that is neither NORMAL (whose data is in the
/// plan, or zeros) nor ZERO (whose contents neither KVM nor the firmware read): parameter
/// areas and the CPUID page as the VMM prepared them in guest memory. The buffer passed to
/// the firmware is written back through `store` after each call, so a CPUID page corrected by
/// the firmware (or a SECRETS page the model fills) reaches guest memory; ranges of zeros
/// (ZERO pages, NORMAL pages without data) get their own calls and are not stored, so
/// launching them touches no guest memory on the host.
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
    let mut batch: Option<Batch> = None;
    for page in &plan.pages {
        if let Some(b) = batch.as_mut().filter(|b| b.extends_to(page)) {
            b.push(page, contents);
            continue;
        }
        if let Some(b) = batch.take() {
            b.update(fw, store)?;
        }
        let mut b = Batch::new(page);
        b.push(page, contents);
        batch = Some(b);
    }
    if let Some(b) = batch {
        b.update(fw, store)?;
    }
    fw.launch_finish(vcpus, finish)
}

/// Contiguous pages of one type for one LAUNCH_UPDATE call.
struct Batch {
    gpa: u64,
    kind: PageType,
    /// ZERO pages, or NORMAL pages without data: the source is all zeros.
    zeros: bool,
    pages: usize,
    /// The pages' bytes; left empty when `zeros`.
    data: Vec<u8>,
}

/// Whether a page's launch source is all zeros without anything to copy.
fn is_zeros(page: &PlanPage) -> bool {
    page.page_type == PageType::Zero || (page.page_type == PageType::Normal && page.data.is_empty())
}

impl Batch {
    fn new(first: &PlanPage) -> Self {
        Self {
            gpa: first.gpa,
            kind: first.page_type,
            zeros: is_zeros(first),
            pages: 0,
            data: Vec::new(),
        }
    }

    fn len(&self) -> usize {
        self.pages * PAGE_SIZE as usize
    }

    fn extends_to(&self, page: &PlanPage) -> bool {
        self.kind == page.page_type
            && self.zeros == is_zeros(page)
            && self.gpa + self.len() as u64 == page.gpa
            && self.len() < MAX_UPDATE_BYTES
    }

    fn push(&mut self, page: &PlanPage, contents: &mut dyn FnMut(&PlanPage) -> Vec<u8>) {
        self.pages += 1;
        if self.zeros {
            return;
        }
        let mut bytes = match page.page_type {
            PageType::Normal => page.data.clone(),
            _ => contents(page),
        };
        bytes.resize(PAGE_SIZE as usize, 0);
        self.data.extend_from_slice(&bytes);
    }

    fn update(
        mut self,
        fw: &mut dyn LaunchFirmware,
        store: &mut dyn FnMut(u64, &[u8]),
    ) -> Result<(), FirmwareError> {
        if self.zeros {
            // Freshly allocated zeroed memory, never written: the allocator maps it lazily.
            // Guest memory there is still untouched, so nothing needs storing.
            let mut zeros = vec![0u8; self.len()];
            return fw.launch_update(self.gpa, self.kind, &mut zeros);
        }
        fw.launch_update(self.gpa, self.kind, &mut self.data)?;
        store(self.gpa, &self.data);
        Ok(())
    }
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

    /// NORMAL pages of zeros (no data) and with data are launched in separate calls, both as
    /// NORMAL, and only the ones with data are stored back.
    #[test]
    fn pages_of_zeros_are_normal_and_not_stored() {
        let normal = |gpa, data: Vec<u8>| PlanPage {
            gpa,
            page_type: PageType::Normal,
            data,
        };
        let plan = LaunchPlan {
            policy: 0x30000,
            pages: vec![
                normal(0x1000, Vec::new()),
                normal(0x2000, Vec::new()),
                normal(0x3000, vec![7; PAGE_SIZE as usize]),
                normal(0x4000, Vec::new()),
            ],
            shared_pages: Vec::new(),
            parameter_areas: Vec::new(),
            bsp: Vmsa::default(),
            sev_features: 1,
            required_memory: Vec::new(),
            id: None,
        };
        let mut fw = Recorder::default();
        let mut stored = Vec::new();
        run_launch(
            &mut fw,
            &plan,
            GuestPolicy::new(0x30000, false).unwrap(),
            &mut |_| unreachable!("NORMAL pages need no contents from the VMM"),
            &mut |gpa, data| stored.push((gpa, data.len())),
            &[],
            &LaunchFinish::default(),
        )
        .unwrap();
        let page = PAGE_SIZE as usize;
        assert_eq!(
            fw.updates,
            vec![
                (0x1000, PageType::Normal, 2 * page),
                (0x3000, PageType::Normal, page),
                (0x4000, PageType::Normal, page),
            ]
        );
        assert_eq!(stored, vec![(0x3000, page)]);
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
