//! A launch plan: what the VMM puts through LAUNCH_UPDATE, in order, and the vCPU state,
//! read from the SEV-SNP view of an IGVM file.
//!
//! Mapping of IGVM directives (only those whose compatibility mask includes the file's SNP
//! platform):
//! - PageData NORMAL with contents -> NORMAL page; without contents (file offset 0) -> a
//!   NORMAL page of zeros, as the IGVM specification says (`IGVM_VHS_PAGE_DATA`: "treat this
//!   page ... as a normal private page with zeros as contents"), which is also what QEMU
//!   launches and what `igvmmeasure` measures by default. Veil never turns an IGVM page into
//!   the firmware's native ZERO type: the file alone must fix the digest;
//! - PageData flagged unmeasured -> UNMEASURED; SECRETS -> SECRETS; CPUID_DATA/CPUID_XF ->
//!   CPUID (the VMM fills it from the VM's CPUID);
//! - PageData flagged shared -> loaded into shared memory, not measured;
//! - ParameterArea + ParameterInsert -> UNMEASURED pages at the insert GPA, filled by the
//!   VMM (memory map, vCPU count, command line, ...);
//! - SnpVpContext for VP 0 -> the BSP's registers. With KVM the VMSA is not taken from the
//!   file: the VMM loads these registers into the vCPU and KVM builds the VMSA from them
//!   ([`Vmsa::as_kvm_builds`]); APs start in the x86 reset state.

use std::collections::BTreeMap;

use igvm::snp_defs::SevVmsa;
use igvm::{
    IgvmDirectiveHeader, IgvmFile, IgvmInitializationHeader, IgvmPlatformHeader, IsolationType,
};
use igvm_defs::{IgvmPageDataType, IgvmPlatformType};

use crate::digest::{DigestError, LaunchDigest};
use crate::firmware::{IdAuthBlock, IdBlock, ID_AUTH_SIZE};
use crate::page_info::{PageType, DIGEST_SIZE, PAGE_SIZE};
use crate::vmsa::{Segment, Vmsa, RESET_EIP};

/// Largest IGVM file accepted.
pub const MAX_IGVM_SIZE: usize = 1 << 30;
/// Largest parameter area accepted (parameter areas hold tables and command lines).
const MAX_PARAMETER_AREA: u64 = 16 << 20;
/// Guest physical addresses are at most 52 bits.
const MAX_GPA: u64 = 1 << 52;

/// Errors from reading an IGVM file.
#[derive(Debug, thiserror::Error)]
pub enum IgvmError {
    #[error("IGVM file is {0} bytes, more than the {MAX_IGVM_SIZE} accepted")]
    TooLarge(usize),
    #[error("not a valid IGVM file: {0}")]
    Parse(String),
    #[error("not a valid IGVM file: {0}")]
    Layout(String),
    #[error("IGVM file declares no SEV-SNP platform")]
    NoSnpPlatform,
    #[error("IGVM file has no SNP guest policy")]
    NoPolicy,
    #[error("IGVM page at GPA {gpa:#x}: {why}")]
    BadPage { gpa: u64, why: &'static str },
    #[error("IGVM parameter area {index}: {why}")]
    BadParameterArea { index: u32, why: &'static str },
    #[error("IGVM VP context for VP {0}: Veil starts only VP 0 from the file; other VPs start in reset state")]
    ApContext(u16),
    #[error("IGVM file has no VP context for VP 0")]
    NoBspContext,
    #[error(
        "the VP 0 context's SEV_FEATURES {0:#x} lacks SNP_ACTIVE (bit 0): not an SEV-SNP VMSA"
    )]
    NotSnpVmsa(u64),
    #[error("measuring the plan: {0}")]
    Digest(#[from] DigestError),
}

/// One measured (or firmware-handled) page, in launch order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanPage {
    pub gpa: u64,
    pub page_type: PageType,
    /// 4096 bytes for NORMAL pages with contents; empty for a NORMAL page of zeros and for
    /// the other types.
    pub data: Vec<u8>,
}

/// What the VMM writes into a parameter area.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParameterUse {
    VpCount,
    MemoryMap,
    CommandLine,
    EnvironmentInfo,
    Madt,
    Srat,
    Slit,
    Pptt,
    MmioRanges,
    DeviceTree,
}

/// A parameter area: its size, initial contents, where it is inserted and what goes in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParameterArea {
    pub index: u32,
    pub size: u64,
    pub initial_data: Vec<u8>,
    pub insert_gpa: Option<u64>,
    /// (what, byte offset) pairs.
    pub uses: Vec<(ParameterUse, u32)>,
}

/// Everything Veil needs from an IGVM file to launch it as an SNP guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchPlan {
    pub policy: u64,
    /// Pages for LAUNCH_UPDATE in file order (parameter areas included as UNMEASURED).
    pub pages: Vec<PlanPage>,
    /// Host-visible pages the VMM copies into shared memory (not measured).
    pub shared_pages: Vec<(u64, Vec<u8>)>,
    pub parameter_areas: Vec<ParameterArea>,
    /// The BSP's register state as the VMM must load it.
    pub bsp: Vmsa,
    /// SEV_FEATURES requested by the file (passed to KVM_SEV_INIT2).
    pub sev_features: u64,
    /// (GPA, size) ranges the guest requires as RAM.
    pub required_memory: Vec<(u64, u64)>,
    /// The ID block and its authentication for LAUNCH_FINISH, when the file has one.
    pub id: Option<PlanIdBlock>,
}

/// An ID block carried by the file, converted to the firmware's structures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanIdBlock {
    pub block: IdBlock,
    pub auth: IdAuthBlock,
    pub author_key_enabled: bool,
}

/// Offsets in the firmware's ID authentication structure (see `firmware::id_block`).
const AUTH_ID_BLOCK_SIG: usize = 0x40;
const AUTH_ID_KEY: usize = 0x240;
const AUTH_ID_KEY_SIG: usize = 0x680;
const AUTH_AUTHOR_KEY: usize = 0x880;

fn put_signature(auth: &mut [u8], at: usize, sig: &igvm_defs::IGVM_VHS_SNP_ID_BLOCK_SIGNATURE) {
    auth[at..at + 72].copy_from_slice(&sig.r_comp);
    auth[at + 72..at + 144].copy_from_slice(&sig.s_comp);
}

/// The firmware's key layout has QX right after the curve; IGVM's has a reserved word between.
fn put_key(auth: &mut [u8], at: usize, key: &igvm_defs::IGVM_VHS_SNP_ID_BLOCK_PUBLIC_KEY) {
    auth[at..at + 4].copy_from_slice(&key.curve.to_le_bytes());
    auth[at + 4..at + 76].copy_from_slice(&key.qx);
    auth[at + 76..at + 148].copy_from_slice(&key.qy);
}

fn segment(s: &igvm::snp_defs::SevSelector) -> Segment {
    Segment::new(s.selector, s.attrib, s.limit, s.base)
}

/// The registers the VMM loads into the BSP from an IGVM VMSA (fields KVM does not copy
/// into its VMSA are ignored).
fn vmsa_from_igvm(v: &SevVmsa) -> Vmsa {
    Vmsa {
        es: segment(&v.es),
        cs: segment(&v.cs),
        ss: segment(&v.ss),
        ds: segment(&v.ds),
        fs: segment(&v.fs),
        gs: segment(&v.gs),
        gdtr: segment(&v.gdtr),
        ldtr: segment(&v.ldtr),
        idtr: segment(&v.idtr),
        tr: segment(&v.tr),
        cpl: v.cpl,
        efer: v.efer,
        xss: v.xss,
        cr4: v.cr4,
        cr3: v.cr3,
        cr0: v.cr0,
        dr7: v.dr7,
        dr6: v.dr6,
        rflags: v.rflags,
        rip: v.rip,
        rsp: v.rsp,
        rax: v.rax,
        g_pat: v.pat,
        pkru: 0,
        rcx: v.rcx,
        rdx: v.rdx,
        rbx: v.rbx,
        rbp: v.rbp,
        rsi: v.rsi,
        rdi: v.rdi,
        r8_15: [v.r8, v.r9, v.r10, v.r11, v.r12, v.r13, v.r14, v.r15],
        sev_features: u64::from(v.sev_features),
        xcr0: v.xcr0,
        mxcsr: v.mxcsr,
        x87_fcw: v.x87_fcw,
    }
}

/// Reads the SNP view of an IGVM file.
pub fn load_igvm(bytes: &[u8]) -> Result<LaunchPlan, IgvmError> {
    if bytes.len() > MAX_IGVM_SIZE {
        return Err(IgvmError::TooLarge(bytes.len()));
    }
    super::offsets::check_section_bounds(bytes)?;
    let file = IgvmFile::new_from_binary(bytes, Some(IsolationType::Snp))
        .map_err(|e| IgvmError::Parse(e.to_string()))?;
    let mask = file
        .platforms()
        .iter()
        .find_map(|p| match p {
            IgvmPlatformHeader::SupportedPlatform(p)
                if p.platform_type == IgvmPlatformType::SEV_SNP =>
            {
                Some(p.compatibility_mask)
            }
            _ => None,
        })
        .ok_or(IgvmError::NoSnpPlatform)?;
    let applies = |m: u32| m & mask == mask;
    let policy = file
        .initializations()
        .iter()
        .find_map(|h| match h {
            IgvmInitializationHeader::GuestPolicy {
                policy,
                compatibility_mask,
            } if applies(*compatibility_mask) => Some(*policy),
            _ => None,
        })
        .ok_or(IgvmError::NoPolicy)?;

    let mut pages = Vec::new();
    let mut shared_pages = Vec::new();
    let mut areas: BTreeMap<u32, ParameterArea> = BTreeMap::new();
    let mut bsp = None;
    let mut required_memory = Vec::new();
    let mut id = None;
    for header in file.directives() {
        if header.compatibility_mask().is_some_and(|m| !applies(m)) {
            continue;
        }
        match header {
            IgvmDirectiveHeader::PageData {
                gpa,
                flags,
                data_type,
                data,
                ..
            } => {
                let gpa = *gpa;
                if gpa % PAGE_SIZE != 0 || gpa >= MAX_GPA {
                    return Err(IgvmError::BadPage {
                        gpa,
                        why: "not page aligned below 2^52",
                    });
                }
                if flags.is_2mb_page() {
                    return Err(IgvmError::BadPage {
                        gpa,
                        why: "2 MiB pages are not supported",
                    });
                }
                if data.len() > PAGE_SIZE as usize {
                    return Err(IgvmError::BadPage {
                        gpa,
                        why: "data larger than a page",
                    });
                }
                let mut page = data.clone();
                if !page.is_empty() {
                    page.resize(PAGE_SIZE as usize, 0);
                }
                if flags.shared() {
                    shared_pages.push((gpa, page));
                    continue;
                }
                let (page_type, data) = match *data_type {
                    IgvmPageDataType::SECRETS => (PageType::Secrets, Vec::new()),
                    IgvmPageDataType::CPUID_DATA | IgvmPageDataType::CPUID_XF => {
                        (PageType::Cpuid, Vec::new())
                    }
                    _ if flags.unmeasured() => (PageType::Unmeasured, Vec::new()),
                    // Empty `page` = a NORMAL page of zeros, see the module comment.
                    _ => (PageType::Normal, page),
                };
                pages.push(PlanPage {
                    gpa,
                    page_type,
                    data,
                });
            }
            IgvmDirectiveHeader::ParameterArea {
                number_of_bytes,
                parameter_area_index,
                initial_data,
            } => {
                let index = *parameter_area_index;
                if *number_of_bytes == 0
                    || *number_of_bytes > MAX_PARAMETER_AREA
                    || number_of_bytes % PAGE_SIZE != 0
                {
                    return Err(IgvmError::BadParameterArea {
                        index,
                        why: "size is not a whole number of pages up to 16 MiB",
                    });
                }
                areas.insert(
                    index,
                    ParameterArea {
                        index,
                        size: *number_of_bytes,
                        initial_data: initial_data.clone(),
                        insert_gpa: None,
                        uses: Vec::new(),
                    },
                );
            }
            IgvmDirectiveHeader::ParameterInsert(insert) => {
                let index = insert.parameter_area_index;
                let area = areas.get_mut(&index).ok_or(IgvmError::BadParameterArea {
                    index,
                    why: "inserted before it was declared",
                })?;
                let in_range = insert.gpa % PAGE_SIZE == 0
                    && insert
                        .gpa
                        .checked_add(area.size)
                        .is_some_and(|end| end <= MAX_GPA);
                if !in_range {
                    return Err(IgvmError::BadParameterArea {
                        index,
                        why: "inserted at an unaligned GPA or beyond 2^52",
                    });
                }
                area.insert_gpa = Some(insert.gpa);
                for i in 0..area.size / PAGE_SIZE {
                    pages.push(PlanPage {
                        gpa: insert.gpa + i * PAGE_SIZE,
                        page_type: PageType::Unmeasured,
                        data: Vec::new(),
                    });
                }
            }
            IgvmDirectiveHeader::SnpVpContext { vp_index, vmsa, .. } => {
                if *vp_index != 0 {
                    return Err(IgvmError::ApContext(*vp_index));
                }
                let vmsa = vmsa_from_igvm(vmsa);
                // KVM sets SNP_ACTIVE in every SNP VMSA; a file without it would be measured
                // differently from what it asks for.
                if vmsa.sev_features & 1 == 0 {
                    return Err(IgvmError::NotSnpVmsa(vmsa.sev_features));
                }
                bsp = Some(vmsa);
            }
            IgvmDirectiveHeader::SnpIdBlock {
                author_key_enabled,
                ld,
                family_id,
                image_id,
                version,
                guest_svn,
                id_key_algorithm,
                author_key_algorithm,
                id_key_signature,
                id_public_key,
                author_key_signature,
                author_public_key,
                ..
            } => {
                let mut auth = vec![0u8; ID_AUTH_SIZE];
                auth[0..4].copy_from_slice(&id_key_algorithm.to_le_bytes());
                auth[4..8].copy_from_slice(&author_key_algorithm.to_le_bytes());
                put_signature(&mut auth, AUTH_ID_BLOCK_SIG, id_key_signature);
                put_key(&mut auth, AUTH_ID_KEY, id_public_key);
                put_signature(&mut auth, AUTH_ID_KEY_SIG, author_key_signature);
                put_key(&mut auth, AUTH_AUTHOR_KEY, author_public_key);
                id = Some(PlanIdBlock {
                    block: IdBlock {
                        ld: *ld,
                        family_id: *family_id,
                        image_id: *image_id,
                        version: *version,
                        guest_svn: *guest_svn,
                        policy,
                    },
                    auth: IdAuthBlock::parse(&auth).map_err(|e| IgvmError::Parse(e.to_string()))?,
                    author_key_enabled: *author_key_enabled != 0,
                });
            }
            IgvmDirectiveHeader::RequiredMemory {
                gpa,
                number_of_bytes,
                ..
            } => required_memory.push((*gpa, u64::from(*number_of_bytes))),
            other => {
                if let Some((kind, param)) = parameter_use(other) {
                    let index = param.parameter_area_index;
                    let area = areas.get_mut(&index).ok_or(IgvmError::BadParameterArea {
                        index,
                        why: "used before it was declared",
                    })?;
                    if u64::from(param.byte_offset) >= area.size {
                        return Err(IgvmError::BadParameterArea {
                            index,
                            why: "parameter offset beyond the area",
                        });
                    }
                    area.uses.push((kind, param.byte_offset));
                }
            }
        }
    }
    let bsp = bsp.ok_or(IgvmError::NoBspContext)?;
    Ok(LaunchPlan {
        policy,
        sev_features: bsp.sev_features,
        pages,
        shared_pages,
        parameter_areas: areas.into_values().collect(),
        bsp,
        required_memory,
        id,
    })
}

fn parameter_use(
    header: &IgvmDirectiveHeader,
) -> Option<(ParameterUse, igvm_defs::IGVM_VHS_PARAMETER)> {
    Some(match header {
        IgvmDirectiveHeader::VpCount(p) => (ParameterUse::VpCount, *p),
        IgvmDirectiveHeader::MemoryMap(p) => (ParameterUse::MemoryMap, *p),
        IgvmDirectiveHeader::CommandLine(p) => (ParameterUse::CommandLine, *p),
        IgvmDirectiveHeader::EnvironmentInfo(p) => (ParameterUse::EnvironmentInfo, *p),
        IgvmDirectiveHeader::Madt(p) => (ParameterUse::Madt, *p),
        IgvmDirectiveHeader::Srat(p) => (ParameterUse::Srat, *p),
        IgvmDirectiveHeader::Slit(p) => (ParameterUse::Slit, *p),
        IgvmDirectiveHeader::Pptt(p) => (ParameterUse::Pptt, *p),
        IgvmDirectiveHeader::MmioRanges(p) => (ParameterUse::MmioRanges, *p),
        IgvmDirectiveHeader::DeviceTree(p) => (ParameterUse::DeviceTree, *p),
        _ => return None,
    })
}

impl LaunchPlan {
    /// Whether the file takes a command line from the VMM (an inserted parameter area with a
    /// CommandLine parameter); otherwise the guest's command line is the file's own.
    pub fn takes_command_line(&self) -> bool {
        self.parameter_areas.iter().any(|area| {
            area.insert_gpa.is_some()
                && area
                    .uses
                    .iter()
                    .any(|&(what, _)| what == ParameterUse::CommandLine)
        })
    }

    /// Bytes put through LAUNCH_UPDATE with their contents measured (NORMAL pages).
    pub fn measured_bytes(&self) -> u64 {
        self.pages
            .iter()
            .filter(|p| p.page_type == PageType::Normal)
            .count() as u64
            * PAGE_SIZE
    }

    /// The VMSA of each vCPU as KVM builds it: the BSP from the file, APs in reset state
    /// with RDX = `vcpu_signature` (CPUID leaf 1 EAX the VMM gives the vCPUs).
    pub fn vcpu_vmsas(&self, vcpus: u32, vcpu_signature: u32) -> Vec<Vmsa> {
        let ap = Vmsa::qemu_reset(RESET_EIP, self.sev_features, vcpu_signature);
        let mut bsp = self.bsp.as_kvm_builds();
        bsp.sev_features = self.sev_features;
        std::iter::once(bsp)
            .chain(std::iter::repeat_n(ap, vcpus.saturating_sub(1) as usize))
            .collect()
    }

    /// The launch digest Veil's KVM launch of this plan produces with `vcpus` vCPUs.
    pub fn launch_digest(
        &self,
        vcpus: u32,
        vcpu_signature: u32,
    ) -> Result<[u8; DIGEST_SIZE], IgvmError> {
        Ok(self.finish_digest(self.pages_digest()?, vcpus, vcpu_signature)?)
    }

    /// The launch digests for several (vCPUs, signature) configurations: the pages are
    /// measured once, only the VMSAs differ.
    pub fn launch_digests(
        &self,
        configs: &[(u32, u32)],
    ) -> Result<Vec<[u8; DIGEST_SIZE]>, IgvmError> {
        let pages = self.pages_digest()?;
        configs
            .iter()
            .map(|&(vcpus, sig)| Ok(self.finish_digest(pages.clone(), vcpus, sig)?))
            .collect()
    }

    /// Adds the vCPUs' VMSAs to the digest of the pages.
    fn finish_digest(
        &self,
        mut ld: LaunchDigest,
        vcpus: u32,
        vcpu_signature: u32,
    ) -> Result<[u8; DIGEST_SIZE], DigestError> {
        for vmsa in self.vcpu_vmsas(vcpus.max(1), vcpu_signature) {
            ld.update_vmsa(&vmsa.to_page())?;
        }
        Ok(ld.bytes())
    }

    /// The digest after every page, before the VMSAs.
    fn pages_digest(&self) -> Result<LaunchDigest, IgvmError> {
        let mut ld = LaunchDigest::new();
        // Consecutive NORMAL pages are measured as one range so they hash in parallel.
        let mut run: Option<(u64, Vec<u8>)> = None;
        for page in &self.pages {
            if page.page_type == PageType::Normal && !page.data.is_empty() {
                match &mut run {
                    Some((start, data)) if *start + data.len() as u64 == page.gpa => {
                        data.extend_from_slice(&page.data)
                    }
                    _ => {
                        if let Some((start, data)) = run.take() {
                            ld.update_normal(start, &data)?;
                        }
                        run = Some((page.gpa, page.data.clone()));
                    }
                }
                continue;
            }
            if let Some((start, data)) = run.take() {
                ld.update_normal(start, &data)?;
            }
            if page.page_type == PageType::Normal {
                ld.update_normal_zeros(page.gpa, PAGE_SIZE)?;
            } else {
                ld.update_by_gpa(page.page_type, page.gpa, PAGE_SIZE)?;
            }
        }
        if let Some((start, data)) = run.take() {
            ld.update_normal(start, &data)?;
        }
        Ok(ld)
    }
}
