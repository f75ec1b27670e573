//! Host-supplied IGVM files: parse the SNP view and, when that succeeds, measure the plan.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(plan) = veil_snp::igvm::load_igvm(data) {
        let _ = plan.takes_command_line();
        let _ = plan.measured_bytes();
        let _ = plan.launch_digest(2, 0x00a0_0f11);
    }
});
