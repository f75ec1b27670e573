//! Report verification: the ECDSA P-384 signature (against a known public key, or a VCEK
//! whose VCEK -> ASK -> ARK chain is checked with the AMD roots shipped in the `sev` crate)
//! and the expected measurement, HOST_DATA and policy. Every problem found is reported, not
//! only the first, so a tampered field is named even though the signature also fails.

use std::fmt;

use p384::ecdsa::signature::Verifier;
use p384::ecdsa::{Signature, VerifyingKey};
use sev::certs::snp::{builtin, ca, Certificate, Chain, Verifiable};

use super::AttestationReport;

/// AMD EPYC generations whose root keys are known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Generation {
    Milan,
    Genoa,
    Turin,
}

impl Generation {
    pub const ALL: [Generation; 3] = [Generation::Milan, Generation::Genoa, Generation::Turin];

    fn ca_chain(self) -> std::io::Result<ca::Chain> {
        let (ark, ask) = match self {
            Generation::Milan => (builtin::milan::ark()?, builtin::milan::ask()?),
            Generation::Genoa => (builtin::genoa::ark()?, builtin::genoa::ask()?),
            Generation::Turin => (builtin::turin::ark()?, builtin::turin::ask()?),
        };
        Ok(ca::Chain { ark, ask })
    }
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// What the verifier expects; `None` fields are not checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expected {
    pub measurement: Option<[u8; 48]>,
    pub host_data: Option<[u8; 32]>,
    pub policy: Option<u64>,
}

/// One reason a report is rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("signature: {0}")]
    Signature(String),
    #[error("measurement mismatch: expected {expected}, report has {actual}")]
    Measurement { expected: String, actual: String },
    #[error("host_data mismatch: expected {expected}, report has {actual}")]
    HostData { expected: String, actual: String },
    #[error("policy mismatch: expected {expected:#x}, report has {actual:#x}")]
    Policy { expected: u64, actual: u64 },
}

/// Errors from verification.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("attestation report rejected: {}", list(.0))]
    Rejected(Vec<Problem>),
    #[error("VCEK certificate is neither PEM nor DER: {0}")]
    BadCertificate(String),
    #[error("VCEK does not chain to the AMD root of {}", attempts(.0))]
    Chain(Vec<(Generation, String)>),
    #[error("VCEK public key is not a P-384 point: {0}")]
    BadVcekKey(String),
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

fn attempts(tried: &[(Generation, String)]) -> String {
    tried
        .iter()
        .map(|(g, why)| format!("{g} ({why})"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Loads a VCEK (PEM or DER), checks VCEK -> ASK -> ARK against the built-in AMD roots of
/// `generation` (or of every known generation when `None`), and returns its public key with
/// the generation that signed it.
pub fn vcek_verifying_key(
    vcek: &[u8],
    generation: Option<Generation>,
) -> Result<(VerifyingKey, Generation), VerifyError> {
    let cert = Certificate::from_pem(vcek)
        .or_else(|_| Certificate::from_der(vcek))
        .map_err(|e| VerifyError::BadCertificate(e.to_string()))?;
    let candidates: Vec<Generation> = match generation {
        Some(g) => vec![g],
        None => Generation::ALL.to_vec(),
    };
    let mut tried = Vec::new();
    for g in candidates {
        let outcome = g.ca_chain().and_then(|ca| {
            let chain = Chain {
                ca,
                vek: cert.clone(),
            };
            (&chain).verify().map(|_| ())
        });
        match outcome {
            Ok(()) => {
                let key = VerifyingKey::from_sec1_bytes(cert.public_key_sec1())
                    .map_err(|e| VerifyError::BadVcekKey(e.to_string()))?;
                return Ok((key, g));
            }
            Err(e) => tried.push((g, e.to_string())),
        }
    }
    Err(VerifyError::Chain(tried))
}

/// Verifies the signature with `key` and compares the expected fields; every problem is named.
pub fn verify_report(
    report: &AttestationReport,
    key: &VerifyingKey,
    expected: &Expected,
) -> Result<(), VerifyError> {
    let mut problems = Vec::new();
    if let Err(why) = check_signature(report, key) {
        problems.push(Problem::Signature(why));
    }
    if let Some(want) = expected.measurement {
        if want != report.measurement() {
            problems.push(Problem::Measurement {
                expected: hex::encode(want),
                actual: hex::encode(report.measurement()),
            });
        }
    }
    if let Some(want) = expected.host_data {
        if want != report.host_data() {
            problems.push(Problem::HostData {
                expected: hex::encode(want),
                actual: hex::encode(report.host_data()),
            });
        }
    }
    if let Some(want) = expected.policy {
        if want != report.policy() {
            problems.push(Problem::Policy {
                expected: want,
                actual: report.policy(),
            });
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(VerifyError::Rejected(problems))
    }
}

fn check_signature(report: &AttestationReport, key: &VerifyingKey) -> Result<(), String> {
    let (r_le, s_le) = report.signature_le();
    // P-384 scalars are 48 bytes; the upper 24 bytes of each 72-byte field must be zero.
    if r_le[48..].iter().chain(&s_le[48..]).any(|&b| b != 0) {
        return Err("R or S has non-zero bytes above the 48 a P-384 scalar uses".into());
    }
    let be = |le: &[u8; 72]| {
        let mut out = [0u8; 48];
        for (dst, src) in out.iter_mut().zip(le[..48].iter().rev()) {
            *dst = *src;
        }
        out
    };
    let signature = Signature::from_scalars(be(&r_le), be(&s_le))
        .map_err(|_| "R or S is not a valid P-384 scalar".to_string())?;
    key.verify(report.signed_bytes(), &signature)
        .map_err(|_| "does not verify over bytes 0..0x2a0 with the given key".to_string())
}
