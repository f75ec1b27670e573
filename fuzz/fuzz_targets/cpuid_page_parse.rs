//! Firmware-written CPUID pages: parsing must not panic, and a parsed page must survive a
//! serialize/parse round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use veil_snp::cpuid_page::CpuidPage;

fuzz_target!(|data: &[u8]| {
    let Ok(page) = CpuidPage::parse(data) else {
        return;
    };
    let again = CpuidPage::parse(&page.to_page()).expect("a serialized page parses");
    assert_eq!(again, page, "CPUID page changed in a round trip");
    let _ = page.differences(&CpuidPage::default());
});
