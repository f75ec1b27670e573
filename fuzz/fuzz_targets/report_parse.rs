//! Attestation reports from the firmware or a peer: parsing must not panic, and a parsed
//! report must serialize back to exactly its input, also when rebuilt from its fields.
#![no_main]

use libfuzzer_sys::fuzz_target;
use veil_snp::report::{AttestationReport, SIGNED_LEN};

fuzz_target!(|data: &[u8]| {
    let Ok(report) = AttestationReport::parse(data) else {
        return;
    };
    assert_eq!(
        &report.as_bytes()[..],
        data,
        "serialized report differs from input"
    );
    let _ = format!("{report:?}");
    let _ = report.cpuid_fms();
    // Rebuilding from the named fields keeps every named field (reserved bytes become zero).
    let (r, s) = report.signature_le();
    let rebuilt = AttestationReport::from_parts(&report.body(), &r, &s)
        .expect("a body read from a valid report is valid");
    assert_eq!(
        rebuilt.body(),
        report.body(),
        "fields changed in a round trip"
    );
    assert_eq!(rebuilt.signature_le(), (r, s));
    assert_eq!(rebuilt.signed_bytes().len(), SIGNED_LEN);
});
