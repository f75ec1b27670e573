//! INSECURE software model of the SNP firmware, for development and tests only.
//!
//! It keeps the launch digest exactly as the firmware does (the same PAGE_INFO chain, VMSAs
//! at LAUNCH_FINISH), checks the ID block like the firmware, and signs attestation reports
//! with a P-384 key generated in this process. Nothing it produces proves anything about a
//! platform: there is no encryption, no RMP and no AMD key. It does not validate the
//! contents of CPUID pages.

use std::collections::HashSet;

use p384::ecdsa::signature::Signer;
use p384::ecdsa::{Signature, SigningKey, VerifyingKey};
use rand_core::OsRng;

use super::id_block::write_signature;
use super::{FirmwareError, LaunchFinish, LaunchFirmware};
use crate::digest::LaunchDigest;
use crate::page_info::{PageType, PAGE_SIZE};
use crate::policy::GuestPolicy;
use crate::report::{AttestationReport, ReportBody};
use crate::vmsa::Vmsa;

/// Report version the model produces.
const MODEL_REPORT_VERSION: u32 = 3;
/// Upper bound on the pages one launch may add (64 GiB), so a runaway caller cannot make
/// the model's page set grow without limit.
const MAX_PAGES: usize = 16 << 20;

#[derive(Debug)]
enum State {
    Init,
    Started {
        policy: GuestPolicy,
    },
    Finished {
        policy: GuestPolicy,
        finish: Box<FinishedInfo>,
    },
}

#[derive(Debug)]
struct FinishedInfo {
    host_data: [u8; 32],
    family_id: [u8; 16],
    image_id: [u8; 16],
    guest_svn: u32,
    id_key_digest: [u8; 48],
    author_key_digest: [u8; 48],
    author_key_enabled: bool,
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::Init => "INIT",
            State::Started { .. } => "LAUNCHING",
            State::Finished { .. } => "RUNNING",
        }
    }
}

/// The insecure software firmware model.
pub struct InsecureModelFirmware {
    key: SigningKey,
    digest: LaunchDigest,
    pages: HashSet<u64>,
    state: State,
    report_id: [u8; 32],
}

impl Default for InsecureModelFirmware {
    fn default() -> Self {
        Self::new()
    }
}

impl InsecureModelFirmware {
    /// Creates a model with a fresh random signing key.
    pub fn new() -> Self {
        Self::with_key(SigningKey::random(&mut OsRng))
    }

    /// Creates a model that signs with `key` (so a verifier can be given its public key).
    pub fn with_key(key: SigningKey) -> Self {
        tracing::warn!("using the INSECURE software SNP firmware model: nothing is encrypted or attested by hardware");
        let mut report_id = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut OsRng, &mut report_id);
        Self {
            key,
            digest: LaunchDigest::new(),
            pages: HashSet::new(),
            state: State::Init,
            report_id,
        }
    }

    /// The public key reports are signed with.
    pub fn verifying_key(&self) -> VerifyingKey {
        *self.key.verifying_key()
    }

    /// The public key as a PEM SubjectPublicKeyInfo, for `veil report verify --model-key`.
    pub fn public_key_pem(&self) -> Result<String, FirmwareError> {
        use p384::pkcs8::{EncodePublicKey, LineEnding};
        self.verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| FirmwareError::Signing(e.to_string()))
    }

    /// The launch digest accumulated so far.
    pub fn launch_digest(&self) -> &LaunchDigest {
        &self.digest
    }

    /// MSG_REPORT_REQ: a signed report carrying `report_data`, after LAUNCH_FINISH.
    pub fn attestation_report(
        &self,
        report_data: [u8; 64],
        vmpl: u32,
    ) -> Result<AttestationReport, FirmwareError> {
        let State::Finished { policy, finish } = &self.state else {
            return Err(FirmwareError::WrongState {
                step: "report request",
                state: self.state.name(),
            });
        };
        let body = ReportBody {
            version: MODEL_REPORT_VERSION,
            guest_svn: finish.guest_svn,
            policy: policy.raw(),
            family_id: finish.family_id,
            image_id: finish.image_id,
            vmpl,
            key_flags: u32::from(finish.author_key_enabled),
            report_data,
            measurement: self.digest.bytes(),
            host_data: finish.host_data,
            id_key_digest: finish.id_key_digest,
            author_key_digest: finish.author_key_digest,
            report_id: self.report_id,
            ..ReportBody::default()
        };
        let signed = body.to_signed_bytes();
        let signature: Signature = self.key.sign(&signed);
        let mut sig = [0u8; 144];
        write_signature(&mut sig, &signature);
        let r: [u8; 72] = sig[..72].try_into().unwrap_or([0; 72]);
        let s: [u8; 72] = sig[72..].try_into().unwrap_or([0; 72]);
        AttestationReport::from_parts(&body, &r, &s)
            .map_err(|e| FirmwareError::Signing(e.to_string()))
    }

    fn started_policy(&self, step: &'static str) -> Result<GuestPolicy, FirmwareError> {
        match self.state {
            State::Started { policy } => Ok(policy),
            _ => Err(FirmwareError::WrongState {
                step,
                state: self.state.name(),
            }),
        }
    }
}

impl LaunchFirmware for InsecureModelFirmware {
    fn name(&self) -> &'static str {
        "insecure-model"
    }

    fn launch_start(&mut self, policy: GuestPolicy) -> Result<(), FirmwareError> {
        if !matches!(self.state, State::Init) {
            return Err(FirmwareError::WrongState {
                step: "LAUNCH_START",
                state: self.state.name(),
            });
        }
        self.state = State::Started { policy };
        Ok(())
    }

    fn launch_update(
        &mut self,
        gpa: u64,
        page_type: PageType,
        data: &mut [u8],
    ) -> Result<(), FirmwareError> {
        self.started_policy("LAUNCH_UPDATE")?;
        if page_type == PageType::Vmsa {
            return Err(FirmwareError::VmsaUpdate(gpa));
        }
        let pages = data.len() as u64 / PAGE_SIZE;
        // Check everything before measuring anything, so a failed call changes nothing.
        let mut candidate = self.digest.clone();
        candidate.update(page_type, gpa, data)?;
        let new_gpas: Vec<u64> = (0..pages).map(|i| gpa + i * PAGE_SIZE).collect();
        if let Some(dup) = new_gpas.iter().find(|g| self.pages.contains(g)) {
            return Err(FirmwareError::PageAlreadyAdded(*dup));
        }
        if self.pages.len() + new_gpas.len() > MAX_PAGES {
            return Err(FirmwareError::Limit(format!(
                "the model accepts at most {MAX_PAGES} launch pages"
            )));
        }
        self.pages.extend(new_gpas);
        self.digest = candidate;
        if page_type == PageType::Zero {
            data.fill(0);
        }
        Ok(())
    }

    fn launch_finish(
        &mut self,
        vcpus: &[Vmsa],
        finish: &LaunchFinish,
    ) -> Result<(), FirmwareError> {
        let policy = self.started_policy("LAUNCH_FINISH")?;
        if vcpus.is_empty() {
            return Err(FirmwareError::NoVcpus);
        }
        let mut candidate = self.digest.clone();
        for vmsa in vcpus {
            candidate.update_vmsa(&vmsa.to_page())?;
        }
        let mut info = FinishedInfo {
            host_data: finish.host_data,
            family_id: [0; 16],
            image_id: [0; 16],
            guest_svn: 0,
            id_key_digest: [0; 48],
            author_key_digest: [0; 48],
            author_key_enabled: false,
        };
        if let Some((block, auth)) = &finish.id {
            if block.ld != candidate.bytes() {
                return Err(super::IdBlockError::Digest {
                    expected: hex::encode(block.ld),
                    actual: candidate.hex(),
                }
                .into());
            }
            if block.policy != policy.raw() {
                return Err(super::IdBlockError::Policy {
                    expected: block.policy,
                    actual: policy.raw(),
                }
                .into());
            }
            let (id_digest, author_digest) = auth.verify(block, finish.author_key_enabled)?;
            info.family_id = block.family_id;
            info.image_id = block.image_id;
            info.guest_svn = block.guest_svn;
            info.id_key_digest = id_digest;
            info.author_key_digest = author_digest;
            info.author_key_enabled = finish.author_key_enabled;
        }
        self.digest = candidate;
        self.state = State::Finished {
            policy,
            finish: Box::new(info),
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firmware::{IdAuthBlock, IdBlock};
    use crate::report::{verify_report, Expected};
    use crate::vmsa::RESET_EIP;

    fn launched(
        model: &mut InsecureModelFirmware,
        finish: &LaunchFinish,
    ) -> Result<(), FirmwareError> {
        model.launch_start(GuestPolicy::default())?;
        model.launch_update(0x1000, PageType::Normal, &mut [0x5a; 0x2000])?;
        model.launch_update(0x8000, PageType::Secrets, &mut [0; 0x1000])?;
        model.launch_update(0x9000, PageType::Cpuid, &mut [0; 0x1000])?;
        model.launch_finish(&[Vmsa::qemu_reset(RESET_EIP, 1, 0xa00f11)], finish)
    }

    fn expected_digest() -> [u8; 48] {
        let mut ld = LaunchDigest::new();
        ld.update_normal(0x1000, &[0x5a; 0x2000]).unwrap();
        ld.update_secrets(0x8000).unwrap();
        ld.update_cpuid(0x9000).unwrap();
        ld.update_vmsa(&Vmsa::qemu_reset(RESET_EIP, 1, 0xa00f11).to_page())
            .unwrap();
        ld.bytes()
    }

    #[test]
    fn digest_follows_the_firmware_sequence_and_report_verifies() {
        let mut model = InsecureModelFirmware::new();
        let finish = LaunchFinish {
            host_data: [9; 32],
            ..LaunchFinish::default()
        };
        launched(&mut model, &finish).unwrap();
        assert_eq!(model.launch_digest().bytes(), expected_digest());
        let report = model.attestation_report([4; 64], 0).unwrap();
        assert_eq!(report.measurement(), expected_digest());
        assert_eq!(report.host_data(), [9; 32]);
        assert_eq!(report.report_data(), [4; 64]);
        assert_eq!(report.policy(), 0x30000);
        let expected = Expected {
            measurement: Some(expected_digest()),
            host_data: Some([9; 32]),
            policy: Some(0x30000),
        };
        verify_report(&report, &model.verifying_key(), &expected).unwrap();
        // Another model's key does not verify it.
        let other = InsecureModelFirmware::new();
        assert!(verify_report(&report, &other.verifying_key(), &Expected::default()).is_err());
    }

    #[test]
    fn order_duplicates_and_vmsa_updates_are_rejected() {
        let mut model = InsecureModelFirmware::new();
        assert!(matches!(
            model.launch_update(0, PageType::Normal, &mut [0; 4096]),
            Err(FirmwareError::WrongState {
                step: "LAUNCH_UPDATE",
                state: "INIT"
            })
        ));
        assert!(model.attestation_report([0; 64], 0).is_err());
        model.launch_start(GuestPolicy::default()).unwrap();
        model
            .launch_update(0x1000, PageType::Zero, &mut [1; 4096])
            .unwrap();
        let before = model.launch_digest().clone();
        assert!(matches!(
            model.launch_update(0x0, PageType::Unmeasured, &mut [0; 0x2000]),
            Err(FirmwareError::PageAlreadyAdded(0x1000))
        ));
        assert!(matches!(
            model.launch_update(0x2000, PageType::Vmsa, &mut [0; 4096]),
            Err(FirmwareError::VmsaUpdate(0x2000))
        ));
        assert!(model
            .launch_update(0x2001, PageType::Normal, &mut [0; 4096])
            .is_err());
        assert_eq!(model.launch_digest(), &before);
        assert!(matches!(
            model.launch_finish(&[], &LaunchFinish::default()),
            Err(FirmwareError::NoVcpus)
        ));
    }

    #[test]
    fn zero_pages_are_zeroed() {
        let mut model = InsecureModelFirmware::new();
        model.launch_start(GuestPolicy::default()).unwrap();
        let mut page = [0xffu8; 4096];
        model.launch_update(0, PageType::Zero, &mut page).unwrap();
        assert!(page.iter().all(|&b| b == 0));
    }

    #[test]
    fn id_block_is_checked_and_reported() {
        let id_key = SigningKey::random(&mut OsRng);
        let block = IdBlock {
            ld: expected_digest(),
            family_id: [0xf; 16],
            image_id: [0xe; 16],
            version: 1,
            guest_svn: 5,
            policy: 0x30000,
        };
        let auth = IdAuthBlock::sign(&block, &id_key);
        let mut model = InsecureModelFirmware::new();
        let finish = LaunchFinish {
            id: Some((block, auth.clone())),
            ..LaunchFinish::default()
        };
        launched(&mut model, &finish).unwrap();
        let report = model.attestation_report([0; 64], 0).unwrap();
        assert_eq!(report.family_id(), [0xf; 16]);
        assert_eq!(report.image_id(), [0xe; 16]);
        assert_eq!(report.guest_svn(), 5);
        assert_ne!(report.id_key_digest(), [0; 48]);

        // An ID block for another digest stops the launch.
        let wrong = IdBlock {
            ld: [1; 48],
            ..block
        };
        let mut model = InsecureModelFirmware::new();
        let finish = LaunchFinish {
            id: Some((wrong, IdAuthBlock::sign(&wrong, &id_key))),
            ..LaunchFinish::default()
        };
        let err = launched(&mut model, &finish).unwrap_err().to_string();
        assert!(err.contains("launch digest"), "{err}");
    }

    #[test]
    fn public_key_pem_is_spki() {
        let pem = InsecureModelFirmware::new().public_key_pem().unwrap();
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"), "{pem}");
    }
}
