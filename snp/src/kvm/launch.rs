//! The SNP launch through KVM: KVM_SEV_INIT2, then SNP_LAUNCH_START / UPDATE / FINISH as
//! KVM_MEMORY_ENCRYPT_OP sub-commands carrying the `/dev/sev` fd.
//!
//! LAUNCH_UPDATE may process only part of a range: KVM then advances `gfn_start`/`uaddr` and
//! lowers `len`, and the call is repeated until `len == 0`. EAGAIN means "try again". A
//! rejected CPUID page is written back corrected by the firmware (via KVM) into the source
//! buffer; it is submitted once more with the corrected values.

use std::fs::File;
use std::os::fd::AsRawFd;

use kvm_bindings::{
    kvm_memory_attributes, kvm_sev_cmd, kvm_sev_init, kvm_sev_snp_launch_finish,
    kvm_sev_snp_launch_start, kvm_sev_snp_launch_update, sev_cmd_id_KVM_SEV_INIT2,
    sev_cmd_id_KVM_SEV_SNP_LAUNCH_FINISH, sev_cmd_id_KVM_SEV_SNP_LAUNCH_START,
    sev_cmd_id_KVM_SEV_SNP_LAUNCH_UPDATE, KVM_MEMORY_ATTRIBUTE_PRIVATE,
};
use kvm_ioctls::VmFd;

use super::uapi::SVM_SEV_FEAT_SNP_ACTIVE;
use crate::cpuid_page::CpuidPage;
use crate::digest::DigestError;
use crate::firmware::{FirmwareError, LaunchFinish, LaunchFirmware};
use crate::page_info::{PageType, PAGE_SIZE};
use crate::policy::GuestPolicy;
use crate::vmsa::Vmsa;

/// Upper bound on consecutive EAGAIN answers or zero-progress rounds before giving up, so a
/// misbehaving kernel cannot hang the launch.
const MAX_RETRIES: u32 = 1000;

/// An ioctl failure: errno and the firmware's error code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SevOpError {
    pub errno: i32,
    pub fw_error: u32,
}

/// The commands a launch issues; implemented by [`KvmSevVm`] and by fakes in tests.
pub trait SevCommands {
    fn sev_init2(&mut self, init: &mut kvm_sev_init) -> Result<(), SevOpError>;
    fn launch_start(&mut self, start: &mut kvm_sev_snp_launch_start) -> Result<(), SevOpError>;
    /// Issues LAUNCH_UPDATE once; the kernel updates `update` to show its progress.
    fn launch_update(&mut self, update: &mut kvm_sev_snp_launch_update) -> Result<(), SevOpError>;
    fn launch_finish(&mut self, finish: &mut kvm_sev_snp_launch_finish) -> Result<(), SevOpError>;
    fn set_memory_attributes(&mut self, attrs: &kvm_memory_attributes) -> Result<(), SevOpError>;
}

/// A KVM SNP VM (created with type [`KVM_X86_SNP_VM`]) and the SEV device.
pub struct KvmSevVm<'a> {
    vm: &'a VmFd,
    sev: File,
}

impl<'a> KvmSevVm<'a> {
    /// `sev` is `/dev/sev` opened read-write.
    pub fn new(vm: &'a VmFd, sev: File) -> Self {
        Self { vm, sev }
    }

    fn op<T>(&self, id: u32, data: &mut T) -> Result<(), SevOpError> {
        let mut cmd = kvm_sev_cmd {
            id,
            data: data as *mut T as u64,
            sev_fd: self.sev.as_raw_fd() as u32,
            ..kvm_sev_cmd::default()
        };
        // `data` points at a live, exclusively borrowed structure of the type the sub-command
        // `id` expects (the callers pair them), which outlives the ioctl: the kernel reads and
        // writes only within it and within `cmd`.
        let result = self.vm.encrypt_op_sev(&mut cmd);
        result.map_err(|e| SevOpError {
            errno: e.errno(),
            fw_error: cmd.error,
        })
    }
}

impl SevCommands for KvmSevVm<'_> {
    fn sev_init2(&mut self, init: &mut kvm_sev_init) -> Result<(), SevOpError> {
        self.op(sev_cmd_id_KVM_SEV_INIT2, init)
    }
    fn launch_start(&mut self, start: &mut kvm_sev_snp_launch_start) -> Result<(), SevOpError> {
        self.op(sev_cmd_id_KVM_SEV_SNP_LAUNCH_START, start)
    }
    fn launch_update(&mut self, update: &mut kvm_sev_snp_launch_update) -> Result<(), SevOpError> {
        self.op(sev_cmd_id_KVM_SEV_SNP_LAUNCH_UPDATE, update)
    }
    fn launch_finish(&mut self, finish: &mut kvm_sev_snp_launch_finish) -> Result<(), SevOpError> {
        self.op(sev_cmd_id_KVM_SEV_SNP_LAUNCH_FINISH, finish)
    }
    fn set_memory_attributes(&mut self, attrs: &kvm_memory_attributes) -> Result<(), SevOpError> {
        let attr = kvm_bindings::kvm_memory_attributes {
            address: attrs.address,
            size: attrs.size,
            attributes: attrs.attributes,
            flags: attrs.flags,
        };
        self.vm.set_memory_attributes(attr).map_err(|e| SevOpError {
            errno: e.errno(),
            fw_error: 0,
        })
    }
}

/// The KVM launch backend over any [`SevCommands`].
pub struct KvmSnpFirmware<C: SevCommands> {
    cmds: C,
    started: bool,
}

fn ioctl_error(op: &'static str, e: SevOpError) -> FirmwareError {
    FirmwareError::Ioctl {
        op,
        errno: e.errno,
        fw_error: e.fw_error,
    }
}

impl<C: SevCommands> KvmSnpFirmware<C> {
    pub fn new(cmds: C) -> Self {
        Self {
            cmds,
            started: false,
        }
    }

    /// KVM_SEV_INIT2 with the VMSA features (SEV_FEATURES) every vCPU will get; must run
    /// before any vCPU is created. SNP_ACTIVE is implied by the VM type and not passed.
    pub fn init(&mut self, vmsa_features: u64) -> Result<(), FirmwareError> {
        let mut init = kvm_sev_init {
            vmsa_features: vmsa_features & !SVM_SEV_FEAT_SNP_ACTIVE,
            ..kvm_sev_init::default()
        };
        self.cmds
            .sev_init2(&mut init)
            .map_err(|e| ioctl_error("KVM_SEV_INIT2", e))
    }

    pub fn commands(&self) -> &C {
        &self.cmds
    }

    fn update_loop(&mut self, update: &mut kvm_sev_snp_launch_update) -> Result<(), FirmwareError> {
        let mut stalls = 0;
        let mut cpuid_retried = false;
        while update.len != 0 {
            let before = update.len;
            match self.cmds.launch_update(update) {
                Ok(()) => {}
                Err(e) if e.errno == libc::EAGAIN => {}
                Err(e)
                    if update.type_ == PageType::Cpuid as u8
                        && e.errno == libc::EIO
                        && !cpuid_retried =>
                {
                    // The firmware wrote the values it accepts into the source page.
                    tracing::warn!(
                        "SNP firmware rejected the CPUID page at GFN {:#x} (firmware error {:#x}); retrying once with its corrections",
                        update.gfn_start,
                        e.fw_error
                    );
                    cpuid_retried = true;
                    continue;
                }
                Err(e) => return Err(ioctl_error("KVM_SEV_SNP_LAUNCH_UPDATE", e)),
            }
            if update.len > before {
                return Err(FirmwareError::Limit(format!(
                    "KVM_SEV_SNP_LAUNCH_UPDATE grew the remaining length from {before:#x} to {:#x}",
                    update.len
                )));
            }
            stalls = if update.len == before { stalls + 1 } else { 0 };
            if stalls > MAX_RETRIES {
                return Err(FirmwareError::Limit(format!(
                    "KVM_SEV_SNP_LAUNCH_UPDATE made no progress at GFN {:#x} after {MAX_RETRIES} tries",
                    update.gfn_start
                )));
            }
        }
        Ok(())
    }
}

/// Page-aligned copy of a launch source buffer (a whole number of pages).
struct AlignedPages(Vec<AlignedPage>);

#[repr(C, align(4096))]
#[derive(Clone, Copy)]
struct AlignedPage([u8; PAGE_SIZE as usize]);

impl AlignedPages {
    fn copy_of(data: &[u8]) -> Self {
        let mut pages = Self(vec![
            AlignedPage([0; PAGE_SIZE as usize]);
            data.len() / PAGE_SIZE as usize
        ]);
        pages.as_mut_bytes().copy_from_slice(data);
        pages
    }

    fn as_mut_bytes(&mut self) -> &mut [u8] {
        let len = self.0.len() * PAGE_SIZE as usize;
        // SAFETY: AlignedPage is exactly PAGE_SIZE plain bytes with no padding (size equals
        // alignment), so the Vec's elements are `len` contiguous, initialized bytes that this
        // exclusive borrow covers.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_mut_ptr().cast::<u8>(), len) }
    }
}

/// Logs which CPUID values the firmware changed, page by page.
fn log_cpuid_corrections(asked: &[u8], accepted: &[u8]) {
    let page = PAGE_SIZE as usize;
    for (before, after) in asked.chunks(page).zip(accepted.chunks(page)) {
        if before == after {
            continue;
        }
        match (CpuidPage::parse(before), CpuidPage::parse(after)) {
            (Ok(b), Ok(a)) => {
                for change in b.differences(&a) {
                    tracing::warn!("SNP firmware corrected CPUID {change}");
                }
            }
            _ => tracing::warn!("SNP firmware rewrote a CPUID page that does not parse"),
        }
    }
}

impl<C: SevCommands> LaunchFirmware for KvmSnpFirmware<C> {
    fn name(&self) -> &'static str {
        "kvm"
    }

    fn launch_start(&mut self, policy: GuestPolicy) -> Result<(), FirmwareError> {
        let mut start = kvm_sev_snp_launch_start {
            policy: policy.raw(),
            ..kvm_sev_snp_launch_start::default()
        };
        self.cmds
            .launch_start(&mut start)
            .map_err(|e| ioctl_error("KVM_SEV_SNP_LAUNCH_START", e))?;
        self.started = true;
        Ok(())
    }

    fn launch_update(
        &mut self,
        gpa: u64,
        page_type: PageType,
        data: &mut [u8],
    ) -> Result<(), FirmwareError> {
        if !self.started {
            return Err(FirmwareError::WrongState {
                step: "LAUNCH_UPDATE",
                state: "INIT",
            });
        }
        if page_type == PageType::Vmsa {
            return Err(FirmwareError::VmsaUpdate(gpa));
        }
        let len = data.len() as u64;
        if !gpa.is_multiple_of(PAGE_SIZE) {
            return Err(DigestError::UnalignedGpa { gpa, page_type }.into());
        }
        if !len.is_multiple_of(PAGE_SIZE) || len == 0 {
            return Err(DigestError::UnalignedLength {
                gpa,
                len,
                page_type,
            }
            .into());
        }
        // Pages must be private before the firmware can take them.
        let attrs = kvm_memory_attributes {
            address: gpa,
            size: len,
            attributes: u64::from(KVM_MEMORY_ATTRIBUTE_PRIVATE),
            flags: 0,
        };
        self.cmds
            .set_memory_attributes(&attrs)
            .map_err(|e| ioctl_error("KVM_SET_MEMORY_ATTRIBUTES", e))?;
        // KVM reads no source for ZERO pages (uaddr is ignored: 0 here). Otherwise it reads
        // the source a page at a time and newer kernels pin it as whole pages, so it is
        // staged page-aligned; what the firmware writes back (a corrected CPUID page) is
        // copied back into `data`.
        let mut staging = (page_type != PageType::Zero).then(|| AlignedPages::copy_of(data));
        let mut update = kvm_sev_snp_launch_update {
            gfn_start: gpa / PAGE_SIZE,
            uaddr: staging
                .as_mut()
                .map_or(0, |s| s.as_mut_bytes().as_mut_ptr() as u64),
            len,
            type_: page_type as u8,
            ..kvm_sev_snp_launch_update::default()
        };
        self.update_loop(&mut update)?;
        if let Some(staging) = staging.as_mut() {
            if page_type == PageType::Cpuid {
                log_cpuid_corrections(data, staging.as_mut_bytes());
            }
            data.copy_from_slice(staging.as_mut_bytes());
        }
        Ok(())
    }

    /// KVM measures each vCPU's VMSA from its own register state; `vcpus` is not used here
    /// (the expected-measurement calculators model what KVM writes).
    fn launch_finish(
        &mut self,
        _vcpus: &[Vmsa],
        finish: &LaunchFinish,
    ) -> Result<(), FirmwareError> {
        if !self.started {
            return Err(FirmwareError::WrongState {
                step: "LAUNCH_FINISH",
                state: "INIT",
            });
        }
        // Kept alive until the ioctl returns: KVM reads them through the addresses.
        let id_block = finish.id.as_ref().map(|(b, _)| b.to_bytes());
        let id_auth = finish.id.as_ref().map(|(_, a)| a.clone());
        let mut args = kvm_sev_snp_launch_finish {
            host_data: finish.host_data,
            ..kvm_sev_snp_launch_finish::default()
        };
        if let (Some(block), Some(auth)) = (&id_block, &id_auth) {
            args.id_block_uaddr = block.as_ptr() as u64;
            args.id_auth_uaddr = auth.as_bytes().as_ptr() as u64;
            args.id_block_en = 1;
            args.auth_key_en = u8::from(finish.author_key_enabled);
        }
        self.cmds
            .launch_finish(&mut args)
            .map_err(|e| ioctl_error("KVM_SEV_SNP_LAUNCH_FINISH", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kvm::uapi::SVM_SEV_FEAT_DEBUG_SWAP;
    use std::collections::VecDeque;

    /// Scripted answers for LAUNCH_UPDATE: how many pages to process, or an errno.
    #[derive(Clone, Copy, Debug)]
    enum Answer {
        Process(u64),
        Fail(i32),
    }

    #[derive(Default)]
    struct FakeKvm {
        answers: VecDeque<Answer>,
        /// (gfn, page type, first byte of the source page) per processed page.
        processed: Vec<(u64, u8, u8)>,
        attributes: Vec<kvm_memory_attributes>,
        starts: Vec<u64>,
        finishes: Vec<kvm_sev_snp_launch_finish>,
        init: Option<kvm_sev_init>,
        /// Value the fake firmware writes into a rejected CPUID page.
        cpuid_correction: u8,
    }

    impl SevCommands for FakeKvm {
        fn sev_init2(&mut self, init: &mut kvm_sev_init) -> Result<(), SevOpError> {
            self.init = Some(*init);
            Ok(())
        }
        fn launch_start(&mut self, start: &mut kvm_sev_snp_launch_start) -> Result<(), SevOpError> {
            self.starts.push(start.policy);
            Ok(())
        }
        fn launch_update(&mut self, u: &mut kvm_sev_snp_launch_update) -> Result<(), SevOpError> {
            let answer = self
                .answers
                .pop_front()
                .unwrap_or(Answer::Process(u64::MAX));
            match answer {
                Answer::Fail(errno) => {
                    if errno == libc::EIO && u.type_ == PageType::Cpuid as u8 {
                        // SAFETY: the test passes a live buffer of at least one page at uaddr.
                        unsafe { *(u.uaddr as *mut u8) = self.cpuid_correction };
                    }
                    Err(SevOpError {
                        errno,
                        fw_error: 0x16,
                    })
                }
                Answer::Process(pages) => {
                    let zero = u.type_ == PageType::Zero as u8;
                    assert_eq!(u.uaddr % PAGE_SIZE, 0, "source not page-aligned");
                    assert_eq!(zero, u.uaddr == 0, "a source only for non-ZERO pages");
                    let pages = pages.min(u.len / PAGE_SIZE);
                    for _ in 0..pages {
                        // SAFETY: uaddr..uaddr+len is the live test buffer (none for ZERO).
                        let first = if zero {
                            0
                        } else {
                            unsafe { *(u.uaddr as *const u8) }
                        };
                        self.processed.push((u.gfn_start, u.type_, first));
                        u.gfn_start += 1;
                        if !zero {
                            u.uaddr += PAGE_SIZE;
                        }
                        u.len -= PAGE_SIZE;
                    }
                    Ok(())
                }
            }
        }
        fn launch_finish(&mut self, f: &mut kvm_sev_snp_launch_finish) -> Result<(), SevOpError> {
            self.finishes.push(*f);
            Ok(())
        }
        fn set_memory_attributes(&mut self, a: &kvm_memory_attributes) -> Result<(), SevOpError> {
            self.attributes.push(*a);
            Ok(())
        }
    }

    fn pages(n: usize) -> Vec<u8> {
        (0..n * 4096).map(|i| (i / 4096) as u8 + 1).collect()
    }

    fn started(fake: FakeKvm) -> KvmSnpFirmware<FakeKvm> {
        let mut fw = KvmSnpFirmware::new(fake);
        fw.launch_start(GuestPolicy::default()).unwrap();
        fw
    }

    /// ZERO pages carry no source (uaddr 0: KVM ignores it) and still go private and through
    /// LAUNCH_UPDATE page by page, with partial progress.
    #[test]
    fn zero_pages_go_through_without_a_source() {
        let fake = FakeKvm {
            answers: [Answer::Process(2), Answer::Process(8)].into(),
            ..FakeKvm::default()
        };
        let mut fw = started(fake);
        let mut data = vec![0u8; 3 * 4096];
        fw.launch_update(0x20_0000, PageType::Zero, &mut data)
            .unwrap();
        let fake = fw.commands();
        let gfns: Vec<(u64, u8)> = fake.processed.iter().map(|p| (p.0, p.1)).collect();
        let zero = PageType::Zero as u8;
        assert_eq!(gfns, vec![(0x200, zero), (0x201, zero), (0x202, zero)]);
        assert_eq!(fake.attributes.len(), 1);
        assert_eq!(fake.attributes[0].size, 0x3000);
    }

    #[test]
    fn partial_progress_and_eagain_loop_until_done() {
        let fake = FakeKvm {
            answers: [
                Answer::Process(1),
                Answer::Fail(libc::EAGAIN),
                Answer::Process(0),
                Answer::Process(2),
                Answer::Fail(libc::EAGAIN),
                Answer::Process(5),
            ]
            .into(),
            ..FakeKvm::default()
        };
        let mut fw = started(fake);
        let mut data = pages(4);
        fw.launch_update(0x10_0000, PageType::Normal, &mut data)
            .unwrap();
        let fake = fw.commands();
        assert_eq!(fake.starts, vec![0x30000]);
        let gfns: Vec<u64> = fake.processed.iter().map(|p| p.0).collect();
        assert_eq!(gfns, vec![0x100, 0x101, 0x102, 0x103]);
        let firsts: Vec<u8> = fake.processed.iter().map(|p| p.2).collect();
        assert_eq!(firsts, vec![1, 2, 3, 4]);
        assert_eq!(
            fake.attributes,
            vec![kvm_memory_attributes {
                address: 0x10_0000,
                size: 0x4000,
                attributes: u64::from(KVM_MEMORY_ATTRIBUTE_PRIVATE),
                flags: 0
            }]
        );
    }

    #[test]
    fn rejected_cpuid_page_is_retried_once_with_corrections() {
        let fake = FakeKvm {
            answers: [Answer::Fail(libc::EIO), Answer::Process(1)].into(),
            cpuid_correction: 0xc0,
            ..FakeKvm::default()
        };
        let mut fw = started(fake);
        let mut page = pages(1);
        fw.launch_update(0x8000, PageType::Cpuid, &mut page)
            .unwrap();
        assert_eq!(page[0], 0xc0);
        assert_eq!(
            fw.commands().processed,
            vec![(8, PageType::Cpuid as u8, 0xc0)]
        );

        // A second rejection is final.
        let fake = FakeKvm {
            answers: [Answer::Fail(libc::EIO), Answer::Fail(libc::EIO)].into(),
            ..FakeKvm::default()
        };
        let mut fw = started(fake);
        let err = fw
            .launch_update(0x8000, PageType::Cpuid, &mut pages(1))
            .unwrap_err();
        assert!(matches!(
            err,
            FirmwareError::Ioctl {
                op: "KVM_SEV_SNP_LAUNCH_UPDATE",
                errno: libc::EIO,
                fw_error: 0x16
            }
        ));
        // Other page types are not retried.
        let fake = FakeKvm {
            answers: [Answer::Fail(libc::EIO), Answer::Process(1)].into(),
            ..FakeKvm::default()
        };
        let mut fw = started(fake);
        assert!(fw
            .launch_update(0, PageType::Normal, &mut pages(1))
            .is_err());
        assert!(fw.commands().processed.is_empty());
    }

    #[test]
    fn endless_no_progress_gives_up() {
        let fake = FakeKvm {
            answers: std::iter::repeat_n(Answer::Process(0), 2000).collect(),
            ..FakeKvm::default()
        };
        let mut fw = started(fake);
        let err = fw
            .launch_update(0, PageType::Normal, &mut pages(1))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no progress"), "{err}");
    }

    #[test]
    fn order_and_arguments_are_checked() {
        let mut fw = KvmSnpFirmware::new(FakeKvm::default());
        assert!(matches!(
            fw.launch_update(0, PageType::Normal, &mut pages(1)),
            Err(FirmwareError::WrongState { .. })
        ));
        fw.init(0x1 | SVM_SEV_FEAT_DEBUG_SWAP).unwrap();
        assert_eq!(
            fw.commands().init.unwrap().vmsa_features,
            SVM_SEV_FEAT_DEBUG_SWAP
        );
        fw.launch_start(GuestPolicy::default()).unwrap();
        assert!(matches!(
            fw.launch_update(0, PageType::Vmsa, &mut pages(1)),
            Err(FirmwareError::VmsaUpdate(0))
        ));
        assert!(matches!(
            fw.launch_update(0x800, PageType::Normal, &mut pages(1)),
            Err(FirmwareError::Digest(DigestError::UnalignedGpa {
                gpa: 0x800,
                ..
            }))
        ));
        assert!(fw.launch_update(0, PageType::Normal, &mut []).is_err());
        assert!(fw.commands().attributes.is_empty());
    }

    #[test]
    fn finish_passes_host_data_and_id_block() {
        use crate::firmware::{IdAuthBlock, IdBlock};
        let mut fw = started(FakeKvm::default());
        fw.launch_finish(
            &[],
            &LaunchFinish {
                host_data: [7; 32],
                ..LaunchFinish::default()
            },
        )
        .unwrap();
        let f = fw.commands().finishes[0];
        assert_eq!(f.host_data, [7; 32]);
        assert_eq!(
            (f.id_block_en, f.id_block_uaddr, f.id_auth_uaddr),
            (0, 0, 0)
        );

        let key = p384::ecdsa::SigningKey::random(&mut rand_core::OsRng);
        let block = IdBlock {
            ld: [1; 48],
            family_id: [0; 16],
            image_id: [0; 16],
            version: 1,
            guest_svn: 0,
            policy: 0x30000,
        };
        let auth = IdAuthBlock::sign(&block, &key);
        let mut fw = started(FakeKvm::default());
        fw.launch_finish(
            &[],
            &LaunchFinish {
                id: Some((block, auth)),
                ..LaunchFinish::default()
            },
        )
        .unwrap();
        let f = fw.commands().finishes[0];
        assert_eq!(f.id_block_en, 1);
        assert_ne!(f.id_block_uaddr, 0);
        assert_ne!(f.id_auth_uaddr, 0);
    }
}
